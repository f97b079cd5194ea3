/*
 * The host-to-host protocol's encoding, shared by peer_client.c and
 * peer_server.c (the wire format is described at the top of peer_server.c):
 * the request MAC, the URI grammar, the JSON arguments, path checks and the
 * portable open flags. Pure functions, no I/O: the fuzz target
 * (tests/fuzz/fuzz_peer.c) drives the server's decoding through them.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>

#include "common/common.h"

static inline void peer_json_putp(json_object **o)
{
	json_object_put(*o);
}

#define PEER_HDR_HOST "X-Peer-Host"
#define PEER_HDR_TIME "X-Peer-Time"
#define PEER_HDR_MAC "X-Peer-Mac"
#define PEER_SKEW_S 30
#define PEER_PATH_MAX 4096
#define PEER_HOST_MAX 255
/* the largest request body (a write); a read asks for at most as much */
#define PEER_BODY_MAX (8u << 20)
/* the largest JSON argument body (paths, a create's settings) */
#define PEER_JSON_MAX (1u << 20)

enum peer_op {
	PEER_OP_STAT,
	PEER_OP_READDIR,
	PEER_OP_OPEN,
	PEER_OP_READ,
	PEER_OP_WRITE,
	PEER_OP_FSYNC,
	PEER_OP_RELEASE,
	PEER_OP_MKDIR,
	PEER_OP_RMDIR,
	PEER_OP_UNLINK,
	PEER_OP_RENAME,
	PEER_OP_SYMLINK,
	PEER_OP_READLINK,
	PEER_OP_TRUNCATE,
	PEER_OP_CHMOD,
	PEER_OP_CREATE,
	PEER_OP_FLUSH,
	PEER_OP_DESTROY,
	PEER_OP__N,
};

/* "stat", "readdir", ...: the URI's op segment. */
const char *peer_op_name(enum peer_op op);

/*
 * The request MAC: HMAC-SHA256 under secret over
 * "host\nmethod\nuri\ntime\n" + hex(body_sha), as 64 hex digits + NUL.
 */
void peer_wire_mac(const void *secret, size_t secret_len, const char *host, const char *method, const char *uri,
		   const char *time, const uint8_t body_sha[SHA256_LEN], char out[SHA256_HEX_LEN + 1]);

/*
 * The server's authentication of a request (any argument may be NULL: a
 * missing header): the host name's shape, the time within PEER_SKEW_S of
 * now, the MAC compared in constant time. 0 or -EACCES with *reason.
 */
int peer_wire_auth_check(const void *secret, size_t secret_len, const char *host, const char *method,
			 const char *uri, const char *time, const char *mac, const uint8_t body_sha[SHA256_LEN],
			 int64_t now, const char **reason);

/* A host name on the wire: 1..255 bytes of [A-Za-z0-9._-]. */
bool peer_wire_host_ok(const char *host);

/*
 * A relative path as the server takes it (len bytes, not necessarily
 * NUL-terminated): at most PEER_PATH_MAX bytes, no NUL, no leading "/", no
 * empty, "." or ".." component. "" is the root itself. 0 or -EINVAL.
 */
int peer_wire_path_check(const char *path, size_t len);

/* open(2) flags to and from the wire's own bits (O_* values differ between architectures). */
uint32_t peer_wire_flags_encode(int flags);
/* -EINVAL for bits the protocol does not carry (O_PATH, O_TMPFILE, ...). */
int peer_wire_flags_decode(uint32_t wire, int *ret_flags);

/* A decoded request: strings point into the JSON object, valid until peer_wire_req_done. */
struct peer_wire_req {
	enum peer_op op;
	/* from the URI: read, write, fsync, release */
	uint64_t handle;
	uint64_t off;  /* read, write */
	uint64_t size; /* read; truncate (from the body) */
	/* from the JSON body: every other op */
	uid_t uid;
	gid_t gid;
	const char *path; /* all path ops */
	const char *to;   /* rename */
	const char *target; /* symlink (any bytes but NUL, at most PEER_PATH_MAX) */
	const char *tpl;  /* create */
	const char *json; /* create */
	size_t json_len;
	int flags;   /* open */
	mode_t mode; /* open, mkdir, chmod */
	json_object *obj;
};

/*
 * Decodes uri ("/v1/OP[/N...]") and, for the ops that take one, the JSON
 * body. 0, -ENOSYS (no such op), or -EINVAL with *reason (static text).
 * ret is zeroed first and must be passed to peer_wire_req_done either way.
 */
int peer_wire_req_decode(const char *uri, const char *body, size_t len, struct peer_wire_req *ret,
			 const char **reason);
void peer_wire_req_done(struct peer_wire_req *r);

/* Whether op's arguments are in a JSON body (else in the URI, and write's body is its data). */
bool peer_wire_op_has_json(enum peer_op op);
