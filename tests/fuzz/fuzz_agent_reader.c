/*
 * libFuzzer: the host side of the agent protocol reading what a guest sends
 * (engine/agent_client.c). The guest is untrusted: any bytes — broken JSON,
 * lying "bin" lengths, replies to calls never made, a hangup in the middle of
 * a payload — must end with every call answered and nothing leaked. An
 * asynchronous call (id 1) and the stream of fuzz bytes meet over a
 * socketpair.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_reply(void *arg, int result, json_object *resp, const uint8_t *d, size_t len)
{
	int *calls = arg;

	(void)result;
	(void)resp;
	if (len && !d)
		abort();
	(*calls)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct agent_client *c;
	json_object *req;
	int sv[2], calls = 0;
	size_t off = 0;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return 0;
	if (agent_client_from_fd(sv[0], &c) < 0) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	req = json_object_new_object();
	json_object_object_add(req, "op", json_object_new_string("ping"));
	if (agent_call_async(c, req, NULL, 0, on_reply, &calls) < 0)
		calls = 1;
	json_object_put(req);
	while (off < size) {
		ssize_t n = write(sv[1], data + off, size - off);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	close(sv[1]); /* the guest hangs up: the reader ends and fails what is owed */
	agent_free(c);
	if (calls != 1)
		abort(); /* answered exactly once: by a reply, or by the hangup */
	return 0;
}
