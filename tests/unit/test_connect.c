/*
 * The Connect envelope codec (e2b/connect.c) and the response stream
 * (e2b/cstream.c) without HTTP: the stream's read and done callbacks are
 * called as the HTTP layer would; the few http.h functions cstream.c uses
 * are stubbed here.
 */
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/common.h"
#include "connect.h"
#include "http.h"

/* ---- stubs of the HTTP layer ---- */
struct e2b_config cfg = {.keepalive_s = 50};
/* >= 0: the client's socket the replies see, and reply_stream keeps done for the test to call */
static int client_fd = -1;
static stream_done_fn kept_done;
static void *kept_ctx;

const char *req_header(struct req *r, const char *name)
{
	return NULL;
}
struct MHD_Connection *req_conn(struct req *r)
{
	return client_fd >= 0 ? (struct MHD_Connection *)&client_fd : NULL;
}
const union MHD_ConnectionInfo *MHD_get_connection_info(struct MHD_Connection *c, enum MHD_ConnectionInfoType type,
							 ...)
{
	static union MHD_ConnectionInfo ci;

	ci.connect_fd = client_fd;
	return type == MHD_CONNECTION_INFO_CONNECTION_FD ? &ci : NULL;
}
int reply_stream(struct req *r, unsigned status, const char *content_type, stream_read_fn read, stream_done_fn done,
		 void *ctx)
{
	if (client_fd >= 0) {
		kept_done = done;
		kept_ctx = ctx;
		return 0;
	}
	done(ctx);
	return 0;
}

/* ---- the request envelope ---- */

static int parse(const void *b, size_t len, size_t max, json_object **o)
{
	char *why = NULL;
	int r = connect_request_parse(b, len, max, o, &why);

	if (r < 0)
		assert_non_null(why); /* every refusal says why */
	free(why);
	return r;
}

static void test_parse_ok(void **state)
{
	static const uint8_t b[] = "\x00\x00\x00\x00\x0d{\"pid\": 42}  ";
	json_object *o = NULL, *v;

	assert_int_equal(parse(b, sizeof(b) - 1, 1024, &o), 0);
	assert_true(json_object_object_get_ex(o, "pid", &v));
	assert_int_equal(json_object_get_int(v), 42);
	json_object_put(o);
	/* the empty message */
	assert_int_equal(parse("\x00\x00\x00\x00\x02{}", 7, 1024, &o), 0);
	json_object_put(o);
}

static void test_parse_truncated_header(void **state)
{
	static const uint8_t b[] = "\x00\x00\x00\x00\x02{}";
	json_object *o = NULL;

	for (size_t n = 0; n < CONNECT_HEADER_LEN; n++)
		assert_int_equal(parse(b, n, 1024, &o), -EINVAL);
	assert_null(o);
}

static void test_parse_length_past_body(void **state)
{
	json_object *o = NULL;

	assert_int_equal(parse("\x00\x00\x00\x00\x03{}", 7, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x01", 5, 1024, &o), -EINVAL);
	/* the largest length: over any max, refused before anything is read */
	assert_int_equal(parse("\x00\xff\xff\xff\xff{}", 7, 1024, &o), -EMSGSIZE);
	assert_null(o);
}

static void test_parse_trailing(void **state)
{
	json_object *o = NULL;

	/* a request is one envelope: a second one (or any byte) after it is refused */
	assert_int_equal(parse("\x00\x00\x00\x00\x02{}\x00\x00\x00\x00\x02{}", 14, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x02{}x", 8, 1024, &o), -EINVAL);
	assert_null(o);
}

static void test_parse_oversized(void **state)
{
	size_t n = 2000;
	uint8_t *b = calloc(1, CONNECT_HEADER_LEN + n);
	json_object *o = NULL;

	b[3] = (uint8_t)(n >> 8);
	b[4] = (uint8_t)n;
	b[5] = '{';
	memset(b + 6, ' ', n - 2);
	b[CONNECT_HEADER_LEN + n - 1] = '}';
	assert_int_equal(parse(b, CONNECT_HEADER_LEN + n, 1999, &o), -EMSGSIZE);
	assert_int_equal(parse(b, CONNECT_HEADER_LEN + n, 2000, &o), 0);
	json_object_put(o);
	free(b);
	assert_string_equal(connect_request_code(-EMSGSIZE), "resource_exhausted");
}

static void test_parse_flags(void **state)
{
	json_object *o = NULL;

	assert_int_equal(parse("\x01\x00\x00\x00\x02{}", 7, 1024, &o), -ENOTSUP);
	assert_string_equal(connect_request_code(-ENOTSUP), "unimplemented");
	assert_int_equal(parse("\x02\x00\x00\x00\x02{}", 7, 1024, &o), -EINVAL); /* end-stream in a request */
	assert_int_equal(parse("\x80\x00\x00\x00\x02{}", 7, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x03\x00\x00\x00\x02{}", 7, 1024, &o), -ENOTSUP);
	assert_string_equal(connect_request_code(-EINVAL), "invalid_argument");
	assert_null(o);
}

static void test_parse_not_object(void **state)
{
	json_object *o = NULL;

	assert_int_equal(parse("\x00\x00\x00\x00\x02[]", 7, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x02" "42", 7, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x02{x", 7, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x01{", 6, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x00", 5, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x04{}{}", 9, 1024, &o), -EINVAL);
	assert_int_equal(parse("\x00\x00\x00\x00\x03{\x00}", 8, 1024, &o), -EINVAL);
	assert_null(o);
}

/* ---- frames ---- */

static void test_frames(void **state)
{
	size_t len;
	uint8_t *f = connect_frame(0, "{\"a\":1}", 7, &len);
	json_object *o;

	assert_int_equal(len, 12);
	assert_memory_equal(f, "\x00\x00\x00\x00\x07{\"a\":1}", 12);
	free(f);
	f = connect_frame_end(NULL, NULL, &len);
	assert_int_equal(len, 7);
	assert_memory_equal(f, "\x02\x00\x00\x00\x02{}", 7);
	free(f);
	f = connect_frame_end("not_found", "process with pid 7 not found", &len);
	assert_int_equal(f[0], CONNECT_FLAG_END_STREAM);
	assert_int_equal(((size_t)f[1] << 24 | (size_t)f[2] << 16 | (size_t)f[3] << 8 | f[4]) + 5, len);
	{
		char *s = strndup((char *)f + 5, len - 5);

		assert_string_equal(s, "{\"error\":{\"code\":\"not_found\",\"message\":\"process with pid 7 not found\"}}");
		free(s);
	}
	free(f);
	o = json_object_new_object();
	json_object_object_add(o, "path", json_object_new_string("/a/b"));
	f = connect_frame_json(o, &len);
	assert_memory_equal(f, "\x00\x00\x00\x00\x0f{\"path\":\"/a/b\"}", len); /* no "\/" */
	json_object_put(o);
	free(f);
}

/* ---- streams ---- */

/* Everything the stream gives until its end (0) or -1, read max bytes at a time. */
static char *drain(struct cstream *s, size_t max, size_t *len, ssize_t *last)
{
	char *out = NULL, *buf = malloc(max);
	size_t n = 0;
	ssize_t k;

	while ((k = connect_stream_read(s, buf, max)) > 0) {
		out = realloc(out, n + (size_t)k);
		memcpy(out + n, buf, (size_t)k);
		n += (size_t)k;
	}
	free(buf);
	*len = n;
	*last = k;
	return out;
}

static void test_stream_order_and_end(void **state)
{
	struct cstream *s = connect_stream_new(0, NULL, 1 << 20);
	json_object *a = json_tokener_parse("{\"event\":{\"start\":{\"pid\":1}}}");
	json_object *b = json_tokener_parse("{\"event\":{\"data\":{\"stdout\":\"aGkK\"}}}");
	static const char want[] = "\x00\x00\x00\x00\x1d{\"event\":{\"start\":{\"pid\":1}}}"
				   "\x00\x00\x00\x00\x24{\"event\":{\"data\":{\"stdout\":\"aGkK\"}}}"
				   "\x02\x00\x00\x00\x02{}";
	size_t len;
	ssize_t last;
	char *got;

	assert_int_equal(connect_stream_push(s, a), 0);
	assert_int_equal(connect_stream_push(s, b), 0);
	assert_int_equal(connect_stream_end(s, NULL, NULL), 0);
	assert_int_equal(connect_stream_push(s, a), -EPIPE); /* after the end: refused */
	assert_int_equal(connect_stream_end(s, "internal", "again"), -EPIPE);
	got = drain(s, 3, &len, &last); /* reads cut frames anywhere */
	assert_int_equal(last, 0);
	assert_int_equal(len, sizeof(want) - 1);
	assert_memory_equal(got, want, len);
	free(got);
	json_object_put(a);
	json_object_put(b);
	connect_stream_unref(s);
}

static void test_stream_error_end(void **state)
{
	struct cstream *s = connect_stream_new(0, NULL, 1 << 20);
	static const char want[] = "\x02\x00\x00\x00\x38{\"error\":{\"code\":\"invalid_argument\",\"message\":\"bad: 7\"}}";
	size_t len;
	ssize_t last;
	char *got;

	assert_int_equal(connect_stream_end(s, "invalid_argument", "bad: %d", 7), 0);
	got = drain(s, 4096, &len, &last);
	assert_int_equal(last, 0);
	assert_int_equal(len, sizeof(want) - 1);
	assert_memory_equal(got, want, len);
	free(got);
	connect_stream_unref(s);
}

static void test_stream_keepalive(void **state)
{
	struct cstream *s = connect_stream_new(50, "{\"event\":{\"keepalive\":{}}}", 1 << 20);
	static const char want[] = "\x00\x00\x00\x00\x1a{\"event\":{\"keepalive\":{}}}";
	char buf[256];
	uint64_t t0 = now_ns();
	ssize_t k = connect_stream_read(s, buf, sizeof(buf));

	/* idle: the read blocks about the interval, then a keepalive message comes */
	assert_int_equal(k, sizeof(want) - 1);
	assert_memory_equal(buf, want, (size_t)k);
	assert_true(now_ns() - t0 >= 45000000ull);
	assert_true(now_ns() - t0 < 2000000000ull);
	connect_stream_unref(s);
}

static int gone_calls;
static void on_gone(void *ctx)
{
	gone_calls++;
	assert_ptr_equal(ctx, &gone_calls);
}

struct pusher {
	struct cstream *s;
	int pushed, result;
};

static void *push_many(void *arg)
{
	struct pusher *p = arg;
	json_object *o = json_tokener_parse("{\"event\":{\"data\":{\"stdout\":\"AAAAAAAAAAAAAAAAAAAA\"}}}");

	for (p->pushed = 0; p->pushed < 1000; p->pushed++) {
		p->result = connect_stream_push(p->s, o);
		if (p->result < 0)
			break;
	}
	json_object_put(o);
	return NULL;
}

static void test_stream_backpressure_and_gone(void **state)
{
	struct cstream *s = connect_stream_new(0, NULL, 256);
	struct pusher p = {.s = s};
	struct timespec ts = {0, 50 * 1000000};
	char buf[64];
	pthread_t th;
	int seen;

	connect_stream_on_gone(s, on_gone, &gone_calls);
	pthread_create(&th, NULL, push_many, &p);
	nanosleep(&ts, NULL);
	/* the queue holds at most 256 bytes (plus one message): the producer waits */
	seen = __atomic_load_n(&p.pushed, __ATOMIC_SEQ_CST);
	assert_true(seen < 10);
	assert_true(connect_stream_read(s, buf, sizeof(buf)) > 0);
	nanosleep(&ts, NULL);
	assert_true(__atomic_load_n(&p.pushed, __ATOMIC_SEQ_CST) >= seen);
	/* the client vanishes: the blocked producer gets EPIPE, on_gone runs once */
	connect_stream_ref(s);
	connect_stream_done(s);
	pthread_join(th, NULL);
	assert_int_equal(p.result, -EPIPE);
	assert_true(p.pushed < 1000);
	assert_int_equal(gone_calls, 1);
	assert_int_equal(connect_stream_gone(s), 1);
	assert_int_equal(connect_stream_read(s, buf, sizeof(buf)), -1);
	connect_stream_unref(s);
}

static void test_stream_hangup_period(void **state)
{
	struct cstream *s = connect_stream_new(0, NULL, 1024);
	char buf[64];
	uint64_t t0;
	int sv[2];

	/* a producer that polls every 100 ms sees a client that hung up within that, not the default second */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	client_fd = sv[0];
	connect_stream_set_hangup_ms(s, 100);
	assert_int_equal(connect_stream_reply(NULL, s), 0);
	close(sv[1]);
	t0 = now_ns();
	assert_int_equal(connect_stream_read(s, buf, sizeof(buf)), -1);
	assert_true(now_ns() - t0 < CONNECT_HANGUP_MS * 1000000ull / 2);
	kept_done(kept_ctx); /* as the HTTP layer, after the read failed */
	assert_int_equal(connect_stream_gone(s), 1);
	client_fd = -1;
	close(sv[0]);
	connect_stream_unref(s);
}

static void test_stream_reply_error(void **state)
{
	/* the stub reply_stream ends it at once: nothing leaks (ASan/valgrind runs) */
	assert_int_equal(connect_stream_reply_error(NULL, "not_found", "no %s", "process"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_ok),
		cmocka_unit_test(test_parse_truncated_header),
		cmocka_unit_test(test_parse_length_past_body),
		cmocka_unit_test(test_parse_trailing),
		cmocka_unit_test(test_parse_oversized),
		cmocka_unit_test(test_parse_flags),
		cmocka_unit_test(test_parse_not_object),
		cmocka_unit_test(test_frames),
		cmocka_unit_test(test_stream_order_and_end),
		cmocka_unit_test(test_stream_error_end),
		cmocka_unit_test(test_stream_keepalive),
		cmocka_unit_test(test_stream_backpressure_and_gone),
		cmocka_unit_test(test_stream_hangup_period),
		cmocka_unit_test(test_stream_reply_error),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
