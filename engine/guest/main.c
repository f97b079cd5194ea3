/*
 * emberfs-agent: the in-guest agent of an emberfs microVM, and its /init.
 *
 * As PID 1 it mounts the kernel filesystems, loads the virtio modules named
 * in /etc/emberfs/modules, switches to the root disk given by emberfs.root=,
 * opens the virtio-serial port named by emberfs.port= (or, with
 * emberfs.transport=vsock, listens on vsock port emberfs.port=) and then
 * serves the host over it forever.
 *
 * Protocol (version 3, docs/protocol.md is the contract): one JSON object
 * per '\n'-terminated line in each direction; a line with "bin": N is
 * followed by N raw bytes of payload (file data, process output and input).
 * The first line is {"event":"ready","version":3,"boot_ms":N}.  Every
 * request {"id":N,"op":"..."} gets exactly one reply with its id and "ok",
 * failures {"ok":false,"errno":E,"error":"text"}; some replies are deferred
 * (exec, out, in, wait).  Ops: ping, exec, attach; file ops on guest paths
 * and per-connection file handles; streaming processes (spawn, out, in,
 * signal, status, wait, release).  Replies only go to the connection that
 * carried the request; a hangup closes that connection's file handles; its
 * spawned processes run on until the next host's attach keeps them (by
 * handle) or releases them.  Memory stays bounded: requests are not read
 * while the output queue is full, process output is not read while its
 * buffer is full (back-pressure onto the process).
 *
 * The modules (agent.h declares what they share):
 *   main.c        setup and the event loop
 *   init.c        PID 1 duties: mounts, modules, root switch, network
 *   transport.h   the transport interface, chosen by emberfs.transport=
 *   transport_virtio.c  the virtio-serial port (the default)
 *   transport_vsock.c   a listening vsock socket, one host at a time
 *   framing.c     lines, "bin" payloads, the output queue and flow control
 *   dispatch.c    request fields, op lookup through struct agent_ops, replies
 *   optable.c     the op table and how an op runs (as its "cred")
 *   attach.c      ping, attach, configure, probe, sync
 *   fileops.c     file ops on guest paths and handles, watches
 *   procs.c       exec, spawn, out, in, signal, status, wait, release
 *   util.c        logging, clocks, buffers, base64, JSON field access
 *
 * Build: engine/guest/meson.build (a static binary, -O2 -Wall -Wextra -Werror,
 * every module, -ljson-c).
 */
#include "agent.h"

/* ------------------------------------------------------------------ */
/* Event loop                                                           */

enum { SLOT_STDOUT, SLOT_STDERR, SLOT_STDIN };

struct poll_slot {
	struct job *job;
	int what;
};

static int poll_timeout(struct agent *a)
{
	uint64_t now = clock_ms(CLOCK_MONOTONIC);
	int64_t best = -1;

	best = a->tp.ops->timeout(&a->tp);
	if (a->in_len && !outq_full(a))
		return 0;

	for (size_t i = 0; i < JOB_SLOTS; i++) {
		struct job *j = a->jobs[i];
		uint64_t at = 0;

		if (!j)
			continue;
		if (!j->exited && !j->timed_out && j->deadline_ms)
			at = j->deadline_ms;
		else if (j->exited && j->timed_out)
			at = j->grace_ms;
		if (!at)
			continue;
		if (at <= now)
			return 0;
		if (best < 0 || (int64_t)(at - now) < best)
			best = (int64_t)MIN(at - now, (uint64_t)INT_MAX);
	}
	return (int)best;
}

#define POLL_FIXED 3 /* the transport, signals, inotify */

static size_t poll_fill(struct agent *a, struct pollfd *pfd, struct poll_slot *slot)
{
	size_t n = POLL_FIXED;

	/* No reading while unparsed input waits for room in the output queue. */
	pfd[0] = a->tp.ops->poll(&a->tp, (a->in_len || outq_full(a) ? 0 : POLLIN) |
					 (outq_pending(a) ? POLLOUT : 0));
	pfd[1] = (struct pollfd){ .fd = a->sig_fd, .events = POLLIN };
	pfd[2] = (struct pollfd){ .fd = a->ino_fd, .events = POLLIN };
	for (size_t i = 0; i < JOB_SLOTS; i++) {
		struct job *j = a->jobs[i];

		if (!j)
			continue;
		for (int s = 0; s < 2; s++) {
			if (j->out[s].fd < 0 || (j->spawned && j->out[s].buf.len >= SPAWN_BUF_HIGH))
				continue;
			pfd[n] = (struct pollfd){ .fd = j->out[s].fd, .events = POLLIN };
			slot[n++] = (struct poll_slot){ j, s };
		}
		if (j->in_fd >= 0 && (!j->spawned || j->in_pending)) {
			pfd[n] = (struct pollfd){ .fd = j->in_fd, .events = POLLOUT };
			slot[n++] = (struct poll_slot){ j, SLOT_STDIN };
		}
	}
	return n;
}

static void __attribute__((noreturn)) agent_loop(struct agent *a)
{
	static struct pollfd pfd[POLL_FIXED + 3 * JOB_SLOTS];
	static struct poll_slot slot[POLL_FIXED + 3 * JOB_SLOTS];

	for (;;) {
		/* the timeout first: the transport's poll ends a rest (virtio) */
		int r = poll_timeout(a);
		size_t n = poll_fill(a, pfd, slot);

		r = poll(pfd, n, r);
		if (r < 0 && errno != EINTR) {
			agent_log("poll: %m");
			sleep_ms(1);
			continue;
		}
		if (r > 0 && pfd[1].revents)
			signals_read(a);
		if (r > 0 && pfd[2].revents)
			watch_drain(a);
		for (size_t i = POLL_FIXED; r > 0 && i < n; i++) {
			struct job *j = slot[i].job;

			if (!pfd[i].revents)
				continue;
			if (slot[i].what == SLOT_STDIN && j->spawned)
				spawn_feed_stdin(a, j);
			else if (slot[i].what == SLOT_STDIN)
				job_feed_stdin(j);
			else
				stream_read(j, &j->out[slot[i].what]);
		}
		if (r > 0 && pfd[0].revents)
			port_service(a, pfd[0].revents);
		/* Room made in the queue goes to waiting input and output first. */
		if (outq_pending(a))
			outq_flush(a);
		if (a->in_len && !outq_full(a))
			input_drain(a);
		jobs_tick(a);
		if (a->connected)
			watch_push(a);
		if (outq_pending(a))
			outq_flush(a);
	}
}

/*
 * emberfs.transport= picks the transport (transport.h): virtio (the
 * default) or vsock; emberfs.port= is the virtio-serial port's name or the
 * vsock port's number. Waits until it can serve: PID 1 must stay.
 */
static void transport_open(struct transport *t)
{
	char kind[32] = "virtio", port[256] = "";
	unsigned long n = AGENT_VSOCK_DEFAULT_PORT;
	char *end;

	cmdline_get("emberfs.transport", kind, sizeof(kind));
	cmdline_get("emberfs.port", port, sizeof(port));
	if (!strcmp(kind, "vsock")) {
		if (*port) {
			errno = 0;
			n = strtoul(port, &end, 10);
			if (errno || *end || n > UINT32_MAX) {
				agent_log("emberfs.port=%s: not a vsock port, using %d", port,
					  AGENT_VSOCK_DEFAULT_PORT);
				n = AGENT_VSOCK_DEFAULT_PORT;
			}
		}
		transport_vsock_open(t, (unsigned int)n);
		return;
	}
	if (strcmp(kind, "virtio"))
		agent_log("emberfs.transport=%s: unknown, using virtio", kind);
	transport_virtio_open(t, *port ? port : AGENT_DEFAULT_PORT);
}

static int agent_setup(struct agent *a, const struct agent_ops *ops, const struct transport *tp)
{
	sigset_t mask;

	*a = (struct agent){ .ops = ops, .tp = *tp, .sig_fd = -1 };
	for (size_t i = 0; i < MAX_FH; i++) {
		a->fh[i] = -1;
		a->fh_watch[i] = -1;
		a->watch[i].wd = -1;
	}
	a->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (a->ino_fd < 0)
		agent_log("inotify: %m (changes to open files are not pushed)");
	caps_save();
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGIO);
	a->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (a->sig_fd < 0)
		return -errno;
	a->tok = json_tokener_new();
	if (!a->tok)
		return -ENOMEM;
	return 0;
}

static void agent_ready(struct agent *a)
{
	_cleanup_json_ struct json_object *o = json_object_new_object();
	uint64_t boot_ms = clock_ms(CLOCK_BOOTTIME);
	size_t before = a->out.len;

	json_object_object_add(o, "event", json_object_new_string("ready"));
	json_object_object_add(o, "version", json_object_new_int(AGENT_PROTO_VERSION));
	json_object_object_add(o, "boot_ms", json_object_new_uint64(boot_ms));
	outq_json(a, a->gen, o);
	a->ready_len = a->out.len - before;
	outq_flush(a);
	agent_log("ready in %" PRIu64 " ms", boot_ms);
}

int main(void)
{
	static struct agent agent;
	sigset_t mask;
	struct transport tp;
	int r;

	/* SIGCHLD and SIGIO are read from a signalfd: never delivered. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGIO);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	init_early();
	init_modules();
	cmdline_read();
	init_root();
	r = net_lo_up();
	if (r < 0)
		agent_log("loopback: %s", strerror(-r));
	r = net_eth0_setup();
	if (r < 0)
		agent_log("eth0: %s", strerror(-r));
	nofile_raise();
	transport_open(&tp);
	r = agent_setup(&agent, &agent_ops_guest, &tp);
	if (r < 0) {
		agent_log("setup: %s", strerror(-r));
		exit(EXIT_FAILURE);
	}
	agent_ready(&agent);
	agent_loop(&agent);
}
