/*
 * libFuzzer: the guest agent's side of the protocol reading what the host
 * sends: line splitting, "bin" payloads, oversized lines, JSON, ids and op
 * names. Its struct agent_ops answers every known op without running it:
 * the ops themselves would touch the fuzzing host's files and processes.
 * Replies go to /dev/null.
 */
#define main agent_main
#include "../../engine/guest/agent.c"
#undef main

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

static const struct agent_ops fuzz_ops = {
	.table = agent_op_table,
	.n_table = sizeof(agent_op_table) / sizeof(agent_op_table[0]),
	.run = fuzz_run,
	.hangup = fuzz_hangup,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct agent a;
	static bool ready;

	if (!ready) {
		int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

		if (fd < 0 || agent_setup(&a, &fuzz_ops, fd) < 0)
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
