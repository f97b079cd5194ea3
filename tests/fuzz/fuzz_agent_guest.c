/*
 * libFuzzer: the guest agent's side of the protocol reading what the host
 * sends: line splitting, "bin" payloads, oversized lines, JSON, ids and op
 * names (engine/guest's modules but main.c, linked by contrib/fuzz.sh). Its
 * struct agent_ops has the agent's op table and answers every op without running it:
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

/* the agent's own table (names, which take a payload: set at the first input), so a new op is fuzzed as known */
static struct agent_ops fuzz_ops = {
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
		fuzz_ops.table = agent_ops_guest.table;
		fuzz_ops.n_table = agent_ops_guest.n_table;
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
