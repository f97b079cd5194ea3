/*
 * libFuzzer: the guest agent's side of the protocol reading what the host
 * sends: line splitting, "bin" payloads, oversized lines, JSON, ids and op
 * names (engine/guest's framing, dispatch and util modules, linked by
 * contrib/fuzz.sh). Its struct agent_ops answers every known op without running it:
 * the ops themselves would touch the fuzzing host's files and processes.
 * Replies go to /dev/null.
 */
#include "agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_run(struct agent *a, const struct agent_op *op, struct request *rq,
		    struct json_object *reply)
{
	(void)a;
	(void)op;
	(void)rq;
	(void)reply;
	return 0;
}

static void fuzz_hangup(struct agent *a)
{
	(void)a;
}

/* The agent's op names and which take a payload (optable.c); none runs. */
static const struct agent_op fuzz_table[] = {
	{ "ping", NULL, false, false },
	{ "exec", NULL, false, false },
	{ "attach", NULL, false, false },
	{ "configure", NULL, false, false },
	{ "probe", NULL, false, false },
	{ "sync", NULL, false, false },
	{ "lstat", NULL, false, true },
	{ "readdir", NULL, false, true },
	{ "open", NULL, false, true },
	{ "read", NULL, false, true },
	{ "write", NULL, true, true },
	{ "close", NULL, false, false },
	{ "fsync", NULL, false, false },
	{ "fstat", NULL, false, false },
	{ "ftruncate", NULL, false, true },
	{ "truncate", NULL, false, true },
	{ "chmod", NULL, false, true },
	{ "chown", NULL, false, true },
	{ "utimens", NULL, false, true },
	{ "unlink", NULL, false, true },
	{ "mkdir", NULL, false, true },
	{ "mknod", NULL, false, true },
	{ "rmdir", NULL, false, true },
	{ "rename", NULL, false, true },
	{ "symlink", NULL, false, true },
	{ "link", NULL, false, true },
	{ "readlink", NULL, false, true },
	{ "realpath", NULL, false, true },
	{ "statfs", NULL, false, true },
	{ "spawn", NULL, false, false },
	{ "out", NULL, false, false },
	{ "in", NULL, true, false },
	{ "signal", NULL, false, false },
	{ "status", NULL, false, false },
	{ "wait", NULL, false, false },
	{ "release", NULL, false, false },
};

static const struct agent_ops fuzz_ops = {
	.table = fuzz_table,
	.n_table = sizeof(fuzz_table) / sizeof(fuzz_table[0]),
	.run = fuzz_run,
	.hangup = fuzz_hangup,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct agent a;
	static bool ready;

	if (!ready) {
		int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

		if (fd < 0)
			abort();
		a = (struct agent){ .ops = &fuzz_ops, .sig_fd = -1, .ino_fd = -1 };
		transport_virtio_init(&a.tp, fd);
		a.tok = json_tokener_new();
		if (!a.tok)
			abort();
		ready = true;
	}
	/* every input is a new connection: nothing of the last one carries over */
	port_hangup(&a);
	port_connected(&a);
	for (size_t off = 0; off < size;) {
		size_t took = lines_feed(&a, (const char *)data + off, size - off);

		outq_flush(&a);
		outq_reset(&a); /* /dev/null took it */
		if (took == 0)
			break;
		off += took;
	}
	return 0;
}
