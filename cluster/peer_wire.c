/* The host-to-host protocol's encoding (peer_wire.h); the format is described in peer_server.c. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "peer_wire.h"

static const struct {
	const char *name;
	unsigned uri_numbers; /* decimal segments after the op: handle, off, size */
	bool json;
} ops[PEER_OP__N] = {
	[PEER_OP_STAT] = {"stat", 0, true},	    [PEER_OP_READDIR] = {"readdir", 0, true},
	[PEER_OP_OPEN] = {"open", 0, true},	    [PEER_OP_READ] = {"read", 3, false},
	[PEER_OP_WRITE] = {"write", 2, false},	    [PEER_OP_FSYNC] = {"fsync", 1, false},
	[PEER_OP_RELEASE] = {"release", 1, false},  [PEER_OP_MKDIR] = {"mkdir", 0, true},
	[PEER_OP_RMDIR] = {"rmdir", 0, true},	    [PEER_OP_UNLINK] = {"unlink", 0, true},
	[PEER_OP_RENAME] = {"rename", 0, true},	    [PEER_OP_SYMLINK] = {"symlink", 0, true},
	[PEER_OP_READLINK] = {"readlink", 0, true}, [PEER_OP_TRUNCATE] = {"truncate", 0, true},
	[PEER_OP_CHMOD] = {"chmod", 0, true},	    [PEER_OP_CREATE] = {"create", 0, true},
	[PEER_OP_FLUSH] = {"flush", 1, false},	    [PEER_OP_DESTROY] = {"destroy", 0, true},
};

const char *peer_op_name(enum peer_op op)
{
	return op < PEER_OP__N ? ops[op].name : "?";
}

bool peer_wire_op_has_json(enum peer_op op)
{
	return op < PEER_OP__N && ops[op].json;
}

void peer_wire_mac(const void *secret, size_t secret_len, const char *host, const char *method, const char *uri,
		   const char *time, const uint8_t body_sha[SHA256_LEN], char out[SHA256_HEX_LEN + 1])
{
	char hex[SHA256_HEX_LEN + 1];
	uint8_t mac[SHA256_LEN];
	_cleanup_free_ char *msg = NULL;
	int n;

	sha256_hex(body_sha, hex);
	n = asprintf(&msg, "%s\n%s\n%s\n%s\n%s", host, method, uri, time, hex);
	if (n < 0) {
		/* no memory: a MAC that matches nothing (all zero digits never come out of HMAC in practice) */
		memset(out, '0', SHA256_HEX_LEN);
		out[SHA256_HEX_LEN] = 0;
		msg = NULL;
		return;
	}
	hmac_sha256(secret, secret_len, msg, (size_t)n, mac);
	sha256_hex(mac, out);
}

bool peer_wire_host_ok(const char *host)
{
	size_t n = host ? strlen(host) : 0;

	return n > 0 && n <= PEER_HOST_MAX &&
	       strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* Decimal digits only, at most 20 of them, no overflow. */
static int parse_u64(const char *s, size_t len, uint64_t *ret)
{
	uint64_t v = 0;

	if (len == 0 || len > 20)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*ret = v;
	return 0;
}

int peer_wire_auth_check(const void *secret, size_t secret_len, const char *host, const char *method,
			 const char *uri, const char *time, const char *mac, const uint8_t body_sha[SHA256_LEN],
			 int64_t now, const char **reason)
{
	char want[SHA256_HEX_LEN + 1];
	uint64_t t;
	unsigned char d = 0;

	if (!host || !time || !mac || !method || !uri) {
		*reason = "the request lacks " PEER_HDR_HOST ", " PEER_HDR_TIME " or " PEER_HDR_MAC;
		return -EACCES;
	}
	if (!peer_wire_host_ok(host)) {
		*reason = "bad " PEER_HDR_HOST;
		return -EACCES;
	}
	if (parse_u64(time, strlen(time), &t) < 0 || t > INT64_MAX) {
		*reason = "bad " PEER_HDR_TIME;
		return -EACCES;
	}
	if ((int64_t)t < now - PEER_SKEW_S || (int64_t)t > now + PEER_SKEW_S) {
		*reason = "the request's time is more than 30 s away from the server's clock";
		return -EACCES;
	}
	if (strlen(mac) != SHA256_HEX_LEN) {
		*reason = "bad " PEER_HDR_MAC;
		return -EACCES;
	}
	peer_wire_mac(secret, secret_len, host, method, uri, time, body_sha, want);
	/* no early exit: the time taken says nothing about where they differ */
	for (size_t i = 0; i < SHA256_HEX_LEN; i++)
		d |= (unsigned char)(want[i] ^ mac[i]);
	if (d) {
		*reason = "the request's MAC does not match (a different secret, or the request was changed)";
		return -EACCES;
	}
	return 0;
}

int peer_wire_path_check(const char *path, size_t len)
{
	size_t i = 0;

	if (len > PEER_PATH_MAX || memchr(path, 0, len))
		return -EINVAL;
	if (len == 0)
		return 0; /* the root */
	while (i <= len) {
		const char *c = path + i, *slash = memchr(c, '/', len - i);
		size_t n = slash ? (size_t)(slash - c) : len - i;

		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return -EINVAL;
		i += n + 1;
	}
	return 0;
}

/* The wire's open flag bits: the access mode in the low two bits, as open(2) on every Linux. */
static const struct {
	uint32_t wire;
	int flag;
} flag_bits[] = {
	{1u << 2, O_CREAT},	{1u << 3, O_EXCL},	{1u << 4, O_TRUNC},	{1u << 5, O_APPEND},
	{1u << 6, O_NONBLOCK},	{1u << 7, O_DIRECTORY}, {1u << 8, O_NOFOLLOW},	{1u << 9, O_NOCTTY},
	{1u << 10, O_CLOEXEC}, {1u << 11, O_NOATIME},	{1u << 12, O_DSYNC},	{1u << 13, O_SYNC},
};

uint32_t peer_wire_flags_encode(int flags)
{
	uint32_t w = (uint32_t)(flags & O_ACCMODE);

	for (size_t i = 0; i < ARRAY_SIZE(flag_bits); i++)
		/* O_SYNC includes O_DSYNC's bit: compare the whole value */
		if ((flags & flag_bits[i].flag) == flag_bits[i].flag)
			w |= flag_bits[i].wire;
	return w;
}

int peer_wire_flags_decode(uint32_t wire, int *ret_flags)
{
	int flags = (int)(wire & 3);
	uint32_t known = 3;

	if (flags == 3)
		return -EINVAL;
	for (size_t i = 0; i < ARRAY_SIZE(flag_bits); i++) {
		known |= flag_bits[i].wire;
		if (wire & flag_bits[i].wire)
			flags |= flag_bits[i].flag;
	}
	if (wire & ~known)
		return -EINVAL;
	*ret_flags = flags;
	return 0;
}

/* ---- request decoding ---- */

static int get_string(json_object *o, const char *key, bool want, const char **ret, size_t *ret_len)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return want ? -EINVAL : 0;
	if (!want || !json_object_is_type(v, json_type_string))
		return -EINVAL;
	*ret = json_object_get_string(v);
	*ret_len = (size_t)json_object_get_string_len(v);
	return 0;
}

static int get_u64(json_object *o, const char *key, bool want, uint64_t max, uint64_t *ret)
{
	json_object *v;
	int64_t i;

	if (!json_object_object_get_ex(o, key, &v))
		return want ? -EINVAL : 0;
	if (!want || !json_object_is_type(v, json_type_int))
		return -EINVAL;
	errno = 0;
	i = json_object_get_int64(v);
	/* json-c clamps what does not fit: a clamped value is refused */
	if (i < 0 || (uint64_t)i > max || errno == ERANGE || i == INT64_MAX)
		return -EINVAL;
	*ret = (uint64_t)i;
	return 0;
}

/* Which JSON keys each op takes (every other key is refused: a typo never goes unseen). */
enum { K_CRED = 1, K_PATH = 2, K_TO = 4, K_TARGET = 8, K_MODE = 16, K_FLAGS = 32, K_SIZE = 64, K_CREATE = 128 };
static const unsigned op_keys[PEER_OP__N] = {
	[PEER_OP_STAT] = K_CRED | K_PATH,
	[PEER_OP_READDIR] = K_CRED | K_PATH,
	[PEER_OP_OPEN] = K_CRED | K_PATH | K_FLAGS | K_MODE,
	[PEER_OP_MKDIR] = K_CRED | K_PATH | K_MODE,
	[PEER_OP_RMDIR] = K_CRED | K_PATH,
	[PEER_OP_UNLINK] = K_CRED | K_PATH,
	[PEER_OP_RENAME] = K_CRED | K_PATH | K_TO,
	[PEER_OP_SYMLINK] = K_CRED | K_PATH | K_TARGET,
	[PEER_OP_READLINK] = K_CRED | K_PATH,
	[PEER_OP_TRUNCATE] = K_CRED | K_PATH | K_SIZE,
	[PEER_OP_CHMOD] = K_CRED | K_PATH | K_MODE,
	[PEER_OP_CREATE] = K_CRED | K_CREATE,
	[PEER_OP_DESTROY] = K_CRED | K_CREATE, /* json: {"name": N} */
};

static int args_decode(json_object *o, struct peer_wire_req *r, const char **reason)
{
	unsigned k = op_keys[r->op];
	uint64_t uid = 0, gid = 0, mode = 0, flags = 0, size = 0;
	size_t n_keys = 0, len = 0, tlen = 0;

	/* each key at most once (json-c keeps the last of duplicates): count what was taken */
	json_object_object_foreach(o, key, val)
	{
		(void)key;
		(void)val;
		n_keys++;
	}
	*reason = "bad arguments";
	if (get_u64(o, "uid", k & K_CRED, (uid_t)-2, &uid) < 0 || get_u64(o, "gid", k & K_CRED, (gid_t)-2, &gid) < 0 ||
	    get_u64(o, "mode", k & K_MODE, 07777, &mode) < 0 || get_u64(o, "flags", k & K_FLAGS, UINT32_MAX, &flags) < 0 ||
	    get_u64(o, "size", k & K_SIZE, INT64_MAX, &size) < 0 ||
	    get_string(o, "path", k & K_PATH, &r->path, &len) < 0 ||
	    (r->path && peer_wire_path_check(r->path, len) < 0) ||
	    get_string(o, "to", k & K_TO, &r->to, &len) < 0 || (r->to && peer_wire_path_check(r->to, len) < 0) ||
	    get_string(o, "target", k & K_TARGET, &r->target, &tlen) < 0 ||
	    (r->target && (tlen == 0 || tlen > PEER_PATH_MAX || memchr(r->target, 0, tlen))) ||
	    get_string(o, "tpl", k & K_CREATE, &r->tpl, &len) < 0 || (r->tpl && name_validate(r->tpl) < 0) ||
	    get_string(o, "json", k & K_CREATE, &r->json, &r->json_len) < 0)
		return -EINVAL;
	if (n_keys != (size_t)!!(k & K_CRED) * 2 + !!(k & K_PATH) + !!(k & K_TO) + !!(k & K_TARGET) + !!(k & K_MODE) +
			      !!(k & K_FLAGS) + !!(k & K_SIZE) + !!(k & K_CREATE) * 2) {
		*reason = "unknown or missing arguments";
		return -EINVAL;
	}
	if ((k & K_FLAGS) && peer_wire_flags_decode((uint32_t)flags, &r->flags) < 0) {
		*reason = "open flags the protocol does not carry";
		return -EINVAL;
	}
	r->uid = (uid_t)uid;
	r->gid = (gid_t)gid;
	r->mode = (mode_t)mode;
	r->size = size;
	return 0;
}

int peer_wire_req_decode(const char *uri, const char *body, size_t len, struct peer_wire_req *ret,
			 const char **reason)
{
	const char *p, *slash;
	size_t n;
	uint64_t nums[3] = {0};
	unsigned op, i;
	json_tokener *tok;

	memset(ret, 0, sizeof(*ret));
	*reason = "no such operation";
	if (strncmp(uri, "/v1/", 4) != 0)
		return -ENOSYS;
	p = uri + 4;
	slash = strchr(p, '/');
	n = slash ? (size_t)(slash - p) : strlen(p);
	for (op = 0; op < PEER_OP__N; op++)
		if (strlen(ops[op].name) == n && memcmp(ops[op].name, p, n) == 0)
			break;
	if (op == PEER_OP__N)
		return -ENOSYS;
	ret->op = (enum peer_op)op;
	*reason = "bad URI";
	for (i = 0, p += n; i < ops[op].uri_numbers; i++) {
		if (*p != '/')
			return -EINVAL;
		p++;
		n = strcspn(p, "/");
		if (parse_u64(p, n, &nums[i]) < 0)
			return -EINVAL;
		p += n;
	}
	if (*p)
		return -EINVAL;
	ret->handle = nums[0];
	ret->off = nums[1];
	ret->size = nums[2];
	if (ret->off > INT64_MAX)
		return -EINVAL;
	if (!ops[op].json) {
		/* write's body is its data; the others take none */
		*reason = "this operation takes no body";
		return op == PEER_OP_WRITE || len == 0 ? 0 : -EINVAL;
	}
	*reason = "the body is not a JSON object";
	if (len == 0 || len > PEER_JSON_MAX || !(tok = json_tokener_new()))
		return -EINVAL;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	ret->obj = json_tokener_parse_ex(tok, body, (int)len);
	if (!ret->obj || json_tokener_get_error(tok) != json_tokener_success ||
	    (size_t)json_tokener_get_parse_end(tok) != len || !json_object_is_type(ret->obj, json_type_object)) {
		json_tokener_free(tok);
		return -EINVAL;
	}
	json_tokener_free(tok);
	return args_decode(ret->obj, ret, reason);
}

void peer_wire_req_done(struct peer_wire_req *r)
{
	json_object_put(r->obj);
	memset(r, 0, sizeof(*r));
}
