/*
 * The fake VMM: a process that speaks the driver contract (engine/driver.h)
 * without a guest, for the unit tests' fake driver (driver.c). It gets the
 * descriptors at the fixed layout as any VMM does (FD_INCOMING, FD_MEM,
 * FD_CONSOLE, FD_CONTROL and FD_AGENT listening, ...) and serves:
 *
 * - the control socket: one line per command, one line per answer
 *   ("ok[ TEXT]" or "error ERRNO TEXT"), a greeting "fakevmm 1 STATE" at
 *   each connection (one at a time: a restarted daemon connects again):
 *     restore   load FD_INCOMING (a state this VMM's snapshot wrote); runs
 *     query     "ok STATE": inmigrate, running or paused
 *     pause, resume
 *     snapshot  pauses; "ok STATE-TEXT": the device state, one line
 * - the guest agent on FD_AGENT, with the real agent's framing and dispatch
 *   (engine/guest/) and a small op table in place of the guest's: ping,
 *   attach, configure, probe, sync and exec. While the "guest" does not run
 *   (paused, or a restore not done) requests wait, as in a stopped VM.
 *
 * The "guest's" one piece of state is a marker in its RAM (FD_MEM, mapped
 * shared, as QEMU maps mem_path): exec "mark TEXT" sets it, exec "mark"
 * prints it. So a restore, a fork or a wake shows whether RAM came along.
 *
 * Faults: --fail WHERE makes it fail at one point (the tests' injection; the
 * engine's own code has no test path): start (exits at once), connect
 * (exits at the control connection), restore (refuses it), running (exits
 * while "loading"), agent (exits at the agent connection), ping and attach
 * (those ops fail with EIO), pause, resume, snapshot (refused).
 */
#include <sys/mman.h>

#include "agent.h"
#include "driver.h"

#define MARK_MAX 63
#define STATE_MAGIC "fakevmm-state 1"

struct fake {
	int ctl_listen, ctl;
	char cbuf[512];
	size_t clen;
	char state[16];
	const char *fail;
	char *mem; /* the guest's RAM: MARK_MAX + 1 bytes of it hold the marker */
	struct agent a;
};

static struct fake F = { .ctl = -1 };

static bool failing(const char *where)
{
	return F.fail && strcmp(F.fail, where) == 0;
}

static void __attribute__((noreturn)) die(const char *where)
{
	fprintf(stderr, "fakevmm: exiting at %s (injected)\n", where);
	_exit(1);
}

/* ---- the guest agent's ops ---- */

static int fake_exec(struct agent *a, struct request *rq, struct json_object *reply)
{
	const char *sh = NULL;
	size_t n = 0;
	char out[MARK_MAX + 2] = "", b64[2 * sizeof(out) + 4] = "";
	int code = 0;

	(void)a;
	if (json_get_str(rq->msg, "sh", &sh, &n) < 0)
		return request_fail(rq, EINVAL, "fake: exec needs \"sh\"");
	if (strncmp(sh, "mark ", 5) == 0) {
		snprintf(F.mem, MARK_MAX + 1, "%s", sh + 5);
	} else if (strcmp(sh, "mark") == 0) {
		snprintf(out, sizeof(out), "%.*s\n", MARK_MAX, F.mem);
	} else if (strncmp(sh, "exit ", 5) == 0) {
		code = atoi(sh + 5);
	}
	b64_encode((const unsigned char *)out, strlen(out), b64);
	json_object_object_add(reply, "exit_code", json_object_new_int(code));
	json_object_object_add(reply, "signal", json_object_new_int(0));
	json_object_object_add(reply, "stdout", json_object_new_string(b64));
	json_object_object_add(reply, "stderr", json_object_new_string(""));
	json_object_object_add(reply, "truncated", json_object_new_boolean(false));
	json_object_object_add(reply, "timed_out", json_object_new_boolean(false));
	json_object_object_add(reply, "duration_ms", json_object_new_double(0));
	return 0;
}

static int fake_run(struct agent *a, const struct agent_op *op, struct request *rq, struct json_object *reply)
{
	if ((strcmp(op->name, "ping") == 0 && failing("ping")) || (strcmp(op->name, "attach") == 0 && failing("attach")))
		return request_fail(rq, EIO, "fake: %s failed (injected)", op->name);
	if (strcmp(op->name, "ping") == 0)
		json_object_object_add(reply, "op", json_object_new_string("pong"));
	else if (strcmp(op->name, "attach") == 0)
		json_object_object_add(reply, "jobs", json_object_new_array());
	else if (strcmp(op->name, "exec") == 0)
		return fake_exec(a, rq, reply);
	return 0; /* configure, probe, sync: done */
}

static void fake_hangup(struct agent *a)
{
	(void)a;
}

static const struct agent_op fake_table[] = {
	{ "ping", NULL, false, false },	     { "attach", NULL, false, false }, { "configure", NULL, false, false },
	{ "probe", NULL, false, false },     { "sync", NULL, false, false },   { "exec", NULL, false, false },
};

static const struct agent_ops fake_agent_ops = {
	.table = fake_table,
	.n_table = sizeof(fake_table) / sizeof(fake_table[0]),
	.run = fake_run,
	.hangup = fake_hangup,
};

/* ---- the control socket ---- */

static void answer(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void answer(const char *fmt, ...)
{
	char line[600];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= (int)sizeof(line) - 1)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	if (write(F.ctl, line, (size_t)n) != n)
		fprintf(stderr, "fakevmm: short write on the control socket\n");
}

static void cmd_restore(void)
{
	char buf[256];
	ssize_t n;

	if (strcmp(F.state, "inmigrate") != 0)
		return answer("error %d not started for a restore", EINVAL);
	if (failing("restore"))
		return answer("error %d restore refused (injected)", EIO);
	n = pread(FD_INCOMING, buf, sizeof(buf) - 1, 0);
	if (n < (ssize_t)strlen(STATE_MAGIC) || strncmp(buf, STATE_MAGIC, strlen(STATE_MAGIC)) != 0)
		return answer("error %d the incoming state is not a fake VMM's", EIO);
	answer("ok");
	if (failing("running"))
		die("running");
	snprintf(F.state, sizeof(F.state), "running");
}

static void command(const char *c)
{
	if (strcmp(c, "restore") == 0) {
		cmd_restore();
	} else if (strcmp(c, "query") == 0) {
		answer("ok %s", F.state);
	} else if (strcmp(c, "pause") == 0 || strcmp(c, "resume") == 0 || strcmp(c, "snapshot") == 0) {
		if (failing(c))
			return answer("error %d %s refused (injected)", EIO, c);
		if (strcmp(F.state, "inmigrate") == 0)
			return answer("error %d no guest loaded", EBUSY);
		snprintf(F.state, sizeof(F.state), "%s", c[0] == 'r' ? "running" : "paused");
		if (c[0] != 's')
			return answer("ok");
		/* the guest's RAM is the file: on disk before the state says it is complete */
		msync(F.mem, MARK_MAX + 1, MS_SYNC);
		answer("ok " STATE_MAGIC " pid %d", (int)getpid());
	} else {
		answer("error %d unknown command", EINVAL);
	}
}

static void control_read(void)
{
	ssize_t n = read(F.ctl, F.cbuf + F.clen, sizeof(F.cbuf) - 1 - F.clen);
	char *nl;

	if (n <= 0) { /* the daemon went: wait for the next one */
		close(F.ctl);
		F.ctl = -1;
		F.clen = 0;
		return;
	}
	F.clen += (size_t)n;
	while ((nl = memchr(F.cbuf, '\n', F.clen))) {
		*nl = '\0';
		command(F.cbuf);
		F.clen -= (size_t)(nl + 1 - F.cbuf);
		memmove(F.cbuf, nl + 1, F.clen);
	}
	if (F.clen == sizeof(F.cbuf) - 1)
		F.clen = 0; /* no command is that long */
}

static void control_accept(void)
{
	F.ctl = accept4(F.ctl_listen, NULL, NULL, SOCK_CLOEXEC);
	if (F.ctl < 0)
		return;
	if (failing("connect"))
		die("connect");
	answer("fakevmm 1 %s", F.state);
}

/* ---- start ---- */

static void agent_start(bool cold)
{
	struct transport tp;

	fcntl(FD_AGENT, F_SETFL, O_NONBLOCK);
	fcntl(FD_AGENT, F_SETFD, FD_CLOEXEC);
	transport_vsock_init(&tp, FD_AGENT);
	F.a = (struct agent){ .ops = &fake_agent_ops, .tp = tp, .sig_fd = -1, .ino_fd = -1 };
	F.a.tok = json_tokener_new();
	if (!F.a.tok)
		die("start (no memory)");
	if (cold) { /* a booted guest says so; a restored one was ready before its snapshot */
		struct json_object *ready = json_object_new_object();
		size_t before = F.a.out.len;

		json_object_object_add(ready, "event", json_object_new_string("ready"));
		json_object_object_add(ready, "version", json_object_new_int(AGENT_PROTO_VERSION));
		outq_json(&F.a, F.a.gen, ready);
		json_object_put(ready);
		F.a.ready_len = F.a.out.len - before;
	}
}

static void mem_map(void)
{
	struct stat st;

	if (fstat(FD_MEM, &st) < 0 || st.st_size < MARK_MAX + 1)
		die("start (no guest RAM at FD_MEM)");
	F.mem = mmap(NULL, MARK_MAX + 1, PROT_READ | PROT_WRITE, MAP_SHARED, FD_MEM, 0);
	if (F.mem == MAP_FAILED)
		die("start (cannot map guest RAM)");
	F.mem[MARK_MAX] = '\0';
}

static void args(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i++)
		if (strcmp(argv[i], "--fail") == 0)
			F.fail = argv[i + 1];
}

int main(int argc, char **argv)
{
	bool restore = fcntl(FD_INCOMING, F_GETFD) >= 0;
	static const char booted[] = "fakevmm: booted\n", waiting[] = "fakevmm: waiting for the incoming state\n";

	args(argc, argv);
	if (failing("start"))
		die("start");
	mem_map();
	F.ctl_listen = FD_CONTROL;
	fcntl(F.ctl_listen, F_SETFD, FD_CLOEXEC);
	snprintf(F.state, sizeof(F.state), "%s", restore ? "inmigrate" : "running");
	if (write(FD_CONSOLE, restore ? waiting : booted, restore ? sizeof(waiting) - 1 : sizeof(booted) - 1) < 0)
		fprintf(stderr, "fakevmm: no console\n");
	agent_start(!restore);
	for (;;) {
		bool runs = strcmp(F.state, "running") == 0;
		struct pollfd p[2] = { { .fd = F.ctl >= 0 ? F.ctl : F.ctl_listen, .events = POLLIN }, { .fd = -1 } };
		int t = runs ? F.a.tp.ops->timeout(&F.a.tp) : -1;

		/* a stopped guest reads nothing: requests wait in the socket */
		if (runs)
			p[1] = F.a.tp.ops->poll(&F.a.tp, (short)((F.a.in_len || outq_full(&F.a) ? 0 : POLLIN) |
								 (outq_pending(&F.a) ? POLLOUT : 0)));
		if (poll(p, 2, t >= 0 && t < 100 ? t : 100) < 0 && errno != EINTR)
			die("poll");
		if (p[0].revents)
			F.ctl >= 0 ? control_read() : control_accept();
		if (!runs)
			continue;
		if (p[1].revents) {
			port_service(&F.a, p[1].revents);
			if (failing("agent") && F.a.tp.fd >= 0)
				die("agent");
		}
		if (outq_pending(&F.a))
			outq_flush(&F.a);
		if (F.a.in_len && !outq_full(&F.a))
			input_drain(&F.a);
		if (outq_pending(&F.a))
			outq_flush(&F.a);
	}
}
