/*
 * The host side of the agent protocol (engine/agent_client.c): a new
 * connection's first request sent again while no copy is answered
 * (agent_call_resend). The test plays the guest on the other end of a
 * socketpair: it reads the copies and answers the one it chooses.
 */
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include "internal.h"

struct call {
	struct agent_client *c;
	unsigned timeout_ms;
	atomic_int builds, thens;
	int r;
	json_object *resp;
	uint64_t took_ms;
	pthread_t th;
};

static json_object *build(void *arg)
{
	struct call *k = arg;
	json_object *req = json_object_new_object();

	json_object_object_add(req, "op", json_object_new_string("attach"));
	json_object_object_add(req, "copy", json_object_new_int(atomic_fetch_add(&k->builds, 1) + 1));
	return req;
}

static int then(void *arg)
{
	struct call *k = arg;

	atomic_fetch_add(&k->thens, 1);
	return 0;
}

static void *call_main(void *arg)
{
	struct call *k = arg;
	uint64_t t0 = now_ns();

	k->r = agent_call_resend(k->c, build, k, k->timeout_ms, then, k, &k->resp);
	k->took_ms = (now_ns() - t0) / 1000000;
	return NULL;
}

static void call_start(struct call *k, int fd, unsigned timeout_ms)
{
	*k = (struct call){ .timeout_ms = timeout_ms };
	assert_int_equal(agent_client_from_fd(fd, &k->c), 0);
	assert_int_equal(pthread_create(&k->th, NULL, call_main, k), 0);
}

static void call_end(struct call *k)
{
	assert_int_equal(pthread_join(k->th, NULL), 0);
	agent_free(k->c);
}

/* The guest's side: the next request line within @ms (NULL: none came). */
static json_object *next_request(int fd, int ms)
{
	static char buf[4096];
	static size_t len;
	uint64_t until = now_ns() + (uint64_t)ms * 1000000u;

	for (;;) {
		char *nl = memchr(buf, '\n', len);
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (nl) {
			json_object *o;

			*nl = '\0';
			o = json_tokener_parse(buf);

			len -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, len);
			assert_non_null(o);
			return o;
		}
		if (now_ns() >= until || poll(&p, 1, (int)((until - now_ns()) / 1000000u) + 1) <= 0)
			return NULL;
		n = read(fd, buf + len, sizeof(buf) - len);
		if (n <= 0)
			return NULL;
		len += (size_t)n;
	}
}

static int64_t field(json_object *o, const char *name)
{
	json_object *v;

	assert_true(json_object_object_get_ex(o, name, &v));
	return json_object_get_int64(v);
}

static void answer(int fd, json_object *req, const char *said)
{
	char line[256];
	int n = snprintf(line, sizeof(line), "{\"id\":%" PRId64 ",\"ok\":true,\"said\":\"%s\"}\n", field(req, "id"), said);

	assert_int_equal(write(fd, line, (size_t)n), n);
}

static const char *said(json_object *resp)
{
	json_object *v;

	return resp && json_object_object_get_ex(resp, "said", &v) ? json_object_get_string(v) : "(none)";
}

/* The first copy answered at once: one copy, then ran once. */
static void answered_at_once(void **state)
{
	struct call k;
	json_object *r1;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	call_start(&k, sv[0], 10000);
	assert_non_null(r1 = next_request(sv[1], 2000));
	assert_int_equal(field(r1, "copy"), 1);
	answer(sv[1], r1, "one");
	call_end(&k);
	assert_int_equal(k.r, 0);
	assert_string_equal(said(k.resp), "one");
	assert_int_equal(atomic_load(&k.builds), 1);
	assert_int_equal(atomic_load(&k.thens), 1);
	assert_null(next_request(sv[1], 100));
	json_object_put(k.resp);
	json_object_put(r1);
	close(sv[1]);
}

/* A call started on a new socketpair, and its first two copies as the guest reads them: the second not too soon. */
static void two_copies(struct call *k, int sv[2], json_object **r1, json_object **r2)
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	call_start(k, sv[0], 10000);
	assert_non_null(*r1 = next_request(sv[1], 2000));
	assert_null(next_request(sv[1], AGENT_RESEND_FIRST_MS - 300));
	assert_non_null(*r2 = next_request(sv[1], 1000));
	assert_int_equal(field(*r1, "copy"), 1);
	assert_int_equal(field(*r2, "copy"), 2); /* built anew */
	assert_true(field(*r2, "id") != field(*r1, "id"));
}

static void two_copies_done(struct call *k, int sv[2], json_object *r1, json_object *r2)
{
	json_object_put(k->resp);
	json_object_put(r1);
	json_object_put(r2);
	close(sv[1]);
}

/* The first copy's answer lost (the guest took it for the last connection's): the second's is the reply. */
static void second_copy_answered(void **state)
{
	struct call k;
	json_object *r1, *r2;
	int sv[2];

	(void)state;
	two_copies(&k, sv, &r1, &r2);
	answer(sv[1], r2, "two");
	call_end(&k);
	assert_int_equal(k.r, 0);
	assert_string_equal(said(k.resp), "two");
	assert_int_equal(atomic_load(&k.thens), 1); /* after the first copy only */
	assert_true(k.took_ms >= AGENT_RESEND_FIRST_MS);
	two_copies_done(&k, sv, r1, r2);
}

/* A copy answered late is still the reply, when it comes first. */
static void late_first_copy_taken(void **state)
{
	struct call k;
	json_object *r1, *r2;
	int sv[2];

	(void)state;
	two_copies(&k, sv, &r1, &r2);
	answer(sv[1], r1, "one");
	answer(sv[1], r2, "two"); /* after the first: nobody waits for it, the reader drops it */
	call_end(&k);
	assert_int_equal(k.r, 0);
	assert_string_equal(said(k.resp), "one");
	two_copies_done(&k, sv, r1, r2);
}

/* Never answered: ETIMEDOUT at the timeout, the copies AGENT_RESEND_FIRST_MS, then twice that ... apart */
static void never_answered(void **state)
{
	const unsigned timeout = AGENT_RESEND_FIRST_MS * 3 / 2;
	struct call k;
	json_object *r;
	int sv[2], copies = 0;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	call_start(&k, sv[0], timeout);
	while ((r = next_request(sv[1], (int)timeout + 1000))) {
		copies++;
		json_object_put(r);
	}
	call_end(&k);
	assert_int_equal(k.r, -ETIMEDOUT);
	assert_int_equal(copies, 2); /* at 0 and at AGENT_RESEND_FIRST_MS (the next would be at 3 times that) */
	assert_true(k.took_ms >= timeout && k.took_ms < timeout + 1500);
	close(sv[1]);
}

/* The connection ends: ECONNRESET at once, not at the timeout. */
static void connection_ends(void **state)
{
	struct call k;
	json_object *r;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	call_start(&k, sv[0], 10000);
	assert_non_null(r = next_request(sv[1], 2000));
	close(sv[1]);
	call_end(&k);
	assert_int_equal(k.r, -ECONNRESET);
	assert_true(k.took_ms < 2000);
	json_object_put(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(answered_at_once),
		cmocka_unit_test(second_copy_answered),
		cmocka_unit_test(late_first_copy_taken),
		cmocka_unit_test(never_answered),
		cmocka_unit_test(connection_ends),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
