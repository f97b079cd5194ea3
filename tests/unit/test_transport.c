/*
 * The guest agent's transports (engine/guest/transport.h) with its framing
 * and dispatch over them, an op table that answers without running: vsock
 * over a unix listening socket (the accept, one host at a time, the hangup),
 * vsock over real loopback vsock when the kernel has it (skipped otherwise),
 * virtio-serial over a socketpair (the hangup, the rest, O_ASYNC).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/un.h>
#include <linux/vm_sockets.h>
#include <cmocka.h>

#include "agent.h"

static int hangups;

/* "echo" sends its payload back; anything else answers with "op": "pong". */
static int test_run(struct agent *a, const struct agent_op *op, struct request *rq,
		    struct json_object *reply)
{
	char head[128];
	int hn;

	if (!strcmp(op->name, "echo")) {
		hn = snprintf(head, sizeof(head), "{\"id\":%" PRIu64 ",\"ok\":true,\"bin\":%zu}\n", rq->id,
			      rq->bin_len);
		return outq_bin(a, rq->gen, head, (size_t)hn, rq->bin, rq->bin_len) < 0 ? -ENOMEM : 1;
	}
	json_object_object_add(reply, "op", json_object_new_string("pong"));
	return 0;
}

static void test_hangup(struct agent *a)
{
	(void)a;
	hangups++;
}

static const struct agent_op test_table[] = {
	{ "ping", NULL, false, false },
	{ "echo", NULL, true, false },
};

static const struct agent_ops test_ops = {
	.table = test_table,
	.n_table = 2,
	.run = test_run,
	.hangup = test_hangup,
};

/* As main.c's agent_setup and agent_ready, without signals, inotify or ops. */
static void agent_start(struct agent *a, const struct transport *tp)
{
	struct json_object *ready;
	size_t before;

	*a = (struct agent){ .ops = &test_ops, .tp = *tp, .sig_fd = -1, .ino_fd = -1 };
	a->tok = json_tokener_new();
	assert_non_null(a->tok);
	hangups = 0;
	before = a->out.len;
	ready = json_object_new_object();
	json_object_object_add(ready, "event", json_object_new_string("ready"));
	outq_json(a, a->gen, ready);
	json_object_put(ready);
	a->ready_len = a->out.len - before;
	outq_flush(a);
}

static void agent_stop(struct agent *a)
{
	json_tokener_free(a->tok);
	buf_free(&a->out);
	buf_free(&a->line);
	buf_free(&a->pend);
	json_object_put(a->pend_msg);
	if (a->tp.fd >= 0)
		close(a->tp.fd);
	if (a->tp.listen_fd >= 0)
		close(a->tp.listen_fd);
}

/* One turn of main.c's agent_loop, for the transport alone. */
static void turn(struct agent *a)
{
	int t = a->tp.ops->timeout(&a->tp);
	struct pollfd p = a->tp.ops->poll(&a->tp, (a->in_len || outq_full(a) ? 0 : POLLIN) |
						  (outq_pending(a) ? POLLOUT : 0));

	if (poll(&p, 1, t >= 0 && t < 10 ? t : 10) > 0 && p.revents)
		port_service(a, p.revents);
	if (outq_pending(a))
		outq_flush(a);
	if (a->in_len && !outq_full(a))
		input_drain(a);
	if (outq_pending(a))
		outq_flush(a);
}

static void send_all(int fd, const char *s, size_t n)
{
	assert_int_equal(write(fd, s, n), (ssize_t)n);
}

/* Turn the agent until @n bytes came to @fd (non-blocking); they must be @want. */
static void expect(struct agent *a, int fd, const char *want)
{
	size_t n = strlen(want), got = 0;
	char buf[4096];

	assert_true(n < sizeof(buf));
	for (int i = 0; i < 500 && got < n; i++) {
		ssize_t r;

		turn(a);
		r = read(fd, buf + got, n - got);
		if (r > 0)
			got += (size_t)r;
	}
	buf[got] = '\0';
	assert_string_equal(buf, want);
}

/* Nothing more comes to @fd over a few turns. */
static void expect_nothing(struct agent *a, int fd)
{
	char c;

	for (int i = 0; i < 5; i++)
		turn(a);
	assert_int_equal(read(fd, &c, 1), -1);
	assert_int_equal(errno, EAGAIN);
}

static void ping_echo(struct agent *a, int fd, unsigned id)
{
	char req[64], rep[64];

	snprintf(req, sizeof(req), "{\"id\":%u,\"op\":\"ping\"}\n", id);
	snprintf(rep, sizeof(rep), "{\"id\":%u,\"ok\":true,\"op\":\"pong\"}\n", id);
	send_all(fd, req, strlen(req));
	expect(a, fd, rep);
	/* a payload in two pieces, the second after a turn */
	snprintf(req, sizeof(req), "{\"id\":%u,\"op\":\"echo\",\"bin\":6}\nabc", id + 1);
	send_all(fd, req, strlen(req));
	turn(a);
	send_all(fd, "def", 3);
	snprintf(rep, sizeof(rep), "{\"id\":%u,\"ok\":true,\"bin\":6}\nabcdef", id + 1);
	expect(a, fd, rep);
}

static int connect_unix(const struct sockaddr_un *sa, socklen_t len)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (const struct sockaddr *)sa, len), 0);
	return fd;
}

/* The vsock transport's accept, serve and hangup, on a unix listening socket. */
static void vsock_over_unix(void **state)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 +
			(socklen_t)snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "emberfs-test-%d", getpid());
	struct transport tp;
	struct agent a;
	int lfd, c1, c2, first;

	(void)state;
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, len), 0);
	assert_int_equal(listen(lfd, 8), 0);
	transport_vsock_init(&tp, lfd);
	assert_string_equal(tp.ops->name, "vsock");
	agent_start(&a, &tp);
	/* no host yet: the ready line waits */
	turn(&a);
	assert_int_equal(a.tp.fd, -1);
	assert_true(outq_pending(&a));

	c1 = connect_unix(&sa, len);
	expect(&a, c1, "{\"event\":\"ready\"}\n");
	first = a.tp.fd;
	assert_true(first >= 0);
	ping_echo(&a, c1, 1);

	/* a second host waits while the first is served */
	c2 = connect_unix(&sa, len);
	expect_nothing(&a, c2);
	assert_int_equal(a.tp.fd, first);
	ping_echo(&a, c1, 3);

	/* the first hangs up: forgotten, and the second is served (no second ready line) */
	close(c1);
	for (int i = 0; i < 20 && !hangups; i++)
		turn(&a);
	assert_int_equal(hangups, 1);
	assert_int_equal(a.gen, 1);
	ping_echo(&a, c2, 5);
	assert_true(a.tp.fd >= 0);
	close(c2);
	for (int i = 0; i < 20 && a.tp.fd >= 0; i++)
		turn(&a);
	assert_int_equal(a.tp.fd, -1);
	assert_int_equal(hangups, 2);
	agent_stop(&a);
}

/* The same over loopback vsock (VMADDR_CID_LOCAL), where the kernel has it. */
static void vsock_loopback(void **state)
{
	unsigned int port = 20000 + (unsigned int)getpid() % 20000;
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	struct transport tp;
	struct agent a;
	int fd, c;

	(void)state;
	/* transport_vsock_open waits for vsock forever: look first */
	fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		print_message("skipped: no vsock here (%m)\n");
		if (fd >= 0)
			close(fd);
		skip();
	}
	close(fd);
	transport_vsock_open(&tp, port);
	agent_start(&a, &tp);
	c = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c >= 0);
	sa.svm_cid = VMADDR_CID_LOCAL;
	if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		print_message("skipped: no loopback vsock here (%m)\n");
		close(c);
		agent_stop(&a);
		skip();
	}
	assert_int_equal(fcntl(c, F_SETFL, O_NONBLOCK), 0);
	expect(&a, c, "{\"event\":\"ready\"}\n");
	ping_echo(&a, c, 1);
	close(c);
	for (int i = 0; i < 20 && a.tp.fd >= 0; i++)
		turn(&a);
	assert_int_equal(hangups, 1);
	agent_stop(&a);
}

/* virtio-serial over a socketpair: serve, then the hangup arms SIGIO and rests the port. */
static void virtio_over_socketpair(void **state)
{
	struct transport tp;
	struct agent a;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	transport_virtio_init(&tp, sv[0]);
	assert_string_equal(tp.ops->name, "virtio-serial");
	agent_start(&a, &tp);
	expect(&a, sv[1], "{\"event\":\"ready\"}\n");
	assert_true(a.connected);
	ping_echo(&a, sv[1], 1);
	assert_int_equal(tp.ops->timeout(&a.tp), -1);

	close(sv[1]);
	for (int i = 0; i < 20 && !a.tp.idle; i++)
		turn(&a);
	assert_int_equal(hangups, 1);
	assert_int_equal(a.gen, 1);
	assert_false(a.connected);
	/* the port stays open; SIGIO armed, so the recheck is the slow one */
	assert_int_equal(a.tp.fd, sv[0]);
	assert_true(a.tp.async);
	assert_true(fcntl(sv[0], F_GETFL) & O_ASYNC);
	assert_int_equal(a.tp.ops->timeout(&a.tp), PORT_RECHECK_ASYNC_MS);
	agent_stop(&a);
}

/*
 * A restore as the guest sees it: the snapshot's host leaves, the next one
 * comes, and its first request can be read before the port hears that it
 * came. The port reports the hangup with the request readable, then the
 * same hangup again while the reply cannot be written yet; only then does
 * it report room. The reply must reach the new host: the repeated hangup
 * is not a second one. (The port's two states are played by hand here: a
 * socketpair has no "host not there yet".)
 */
static void virtio_hangup_reported_twice(void **state)
{
	static const char req[] = "{\"id\":7,\"op\":\"ping\"}\n";
	static const char rep[] = "{\"id\":7,\"ok\":true,\"op\":\"pong\"}\n";
	struct transport tp;
	struct agent a;
	char junk[4096], got[sizeof(rep)];
	size_t filled = 0;
	int sv[2], sndbuf = 4096;
	ssize_t n;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	transport_virtio_init(&tp, sv[0]);
	agent_start(&a, &tp);
	expect(&a, sv[1], "{\"event\":\"ready\"}\n");
	assert_true(a.connected);

	/* the port takes no writes (the new host is not there yet for the guest) */
	assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	memset(junk, 'x', sizeof(junk));
	while ((n = write(sv[0], junk, sizeof(junk))) > 0 || (n < 0 && errno == EINTR))
		filled += n > 0 ? (size_t)n : 0;
	assert_int_equal(errno, EAGAIN);

	/* the old host's hangup with the new host's request readable */
	send_all(sv[1], req, sizeof(req) - 1);
	port_service(&a, POLLHUP | POLLIN);
	assert_int_equal(hangups, 1);
	assert_int_equal(a.gen, 1);
	outq_flush(&a);
	assert_true(outq_pending(&a)); /* the reply waits */
	assert_false(a.connected);

	/* the same hangup, reported again before the port hears of the new host */
	port_service(&a, POLLHUP);
	assert_int_equal(hangups, 1);
	assert_int_equal(a.gen, 1);
	assert_true(outq_pending(&a));

	/* the new host is there: the reply comes after what filled the port */
	while (filled > 0) {
		n = read(sv[1], junk, filled < sizeof(junk) ? filled : sizeof(junk));
		assert_true(n > 0);
		filled -= (size_t)n;
	}
	port_service(&a, POLLOUT);
	assert_true(a.connected);
	outq_flush(&a);
	assert_false(outq_pending(&a));
	assert_int_equal(read(sv[1], got, sizeof(got)), (ssize_t)sizeof(rep) - 1);
	assert_memory_equal(got, rep, sizeof(rep) - 1);
	agent_stop(&a);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(vsock_over_unix),
		cmocka_unit_test(vsock_loopback),
		cmocka_unit_test(virtio_over_socketpair),
		cmocka_unit_test(virtio_hangup_reported_twice),
	};
	sigset_t mask;

	/* as the agent: SIGIO (O_ASYNC on the virtio port) is never delivered */
	sigemptyset(&mask);
	sigaddset(&mask, SIGIO);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
