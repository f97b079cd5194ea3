/*
 * libFuzzer: the peer server's request decoding (cluster/peer_wire.c), what
 * another host, or anyone who reaches the port, sends: the URI and the body
 * (input "URI\nBODY"), and the authentication of a request (input
 * "A" "HOST\nMETHOD\nURI\nTIME\nMAC\nBODY"). A decoded request must hold
 * only checked paths; the authentication must refuse what it did not sign
 * and take what it did.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peer_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t key[] = "fuzz-secret";
#define NOW 1700000000

static void check_path(const char *p)
{
	if (p && peer_wire_path_check(p, strlen(p)) != 0)
		abort();
}

static void decode(const char *in, size_t size)
{
	const char *nl = memchr(in, '\n', size);
	size_t ulen = nl ? (size_t)(nl - in) : size;
	char *uri = strndup(in, ulen);
	const char *body = nl ? nl + 1 : "", *why = NULL;
	size_t blen = nl ? size - ulen - 1 : 0;
	struct peer_wire_req r;
	int k;

	if (!uri)
		return;
	k = peer_wire_req_decode(uri, body, blen, &r, &why);
	if (k < 0) {
		if (!why || (k != -EINVAL && k != -ENOSYS))
			abort();
	} else {
		if (r.op >= PEER_OP__N || r.off > INT64_MAX)
			abort();
		/* create and destroy name a template and carry JSON ({"name": N}); every other JSON op a path */
		bool by_tpl = r.op == PEER_OP_CREATE || r.op == PEER_OP_DESTROY;

		if (peer_wire_op_has_json(r.op) && !by_tpl && !r.path)
			abort();
		check_path(r.path);
		check_path(r.to);
		if (by_tpl && (!r.tpl || !r.json || name_validate(r.tpl) != 0))
			abort();
		if (r.op == PEER_OP_OPEN && peer_wire_flags_decode(peer_wire_flags_encode(r.flags), &k) != 0)
			abort();
	}
	peer_wire_req_done(&r);
	free(uri);
}

static void auth(const char *in, size_t size)
{
	char *copy = malloc(size + 1), *f[5], *p, mac[SHA256_HEX_LEN + 1];
	const char *why;
	uint8_t sha[SHA256_LEN];
	struct sha256_ctx c;
	int k;

	if (!copy)
		return;
	memcpy(copy, in, size);
	copy[size] = 0;
	p = copy;
	for (int i = 0; i < 5; i++) {
		f[i] = p;
		p = strchr(p, '\n');
		if (!p) {
			free(copy);
			return;
		}
		*p++ = 0;
	}
	sha256_init(&c);
	sha256_update(&c, p, strlen(p));
	sha256_final(&c, sha);
	k = peer_wire_auth_check(key, sizeof(key), f[0], f[1], f[2], f[3], f[4], sha, NOW, &why);
	if (k != 0 && (k != -EACCES || !why))
		abort();
	/* signed right, it passes exactly when the name and time are good */
	peer_wire_mac(key, sizeof(key), f[0], f[1], f[2], f[3], sha, mac);
	k = peer_wire_auth_check(key, sizeof(key), f[0], f[1], f[2], f[3], mac, sha, NOW, &why);
	if (k == 0 && (!peer_wire_host_ok(f[0]) || strtoll(f[3], NULL, 10) < NOW - PEER_SKEW_S ||
		       strtoll(f[3], NULL, 10) > NOW + PEER_SKEW_S))
		abort();
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size && data[0] == 'A')
		auth((const char *)data + 1, size - 1);
	else
		decode((const char *)data, size);
	return 0;
}
