/* The Connect envelope codec: see connect.h. Takes bytes from the network: fuzzed (tests/fuzz/fuzz_connect.c). */
#include "connect.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* The header's checks: 0 with *ret_msg_len set, or -errno with the reason. */
static int envelope_check(const uint8_t *b, size_t len, size_t max, size_t *ret_msg_len, char **why)
{
	uint32_t n;

	if (len < CONNECT_HEADER_LEN) {
		error_set(why, "truncated Connect envelope: %zu of %u header bytes", len, CONNECT_HEADER_LEN);
		return -EINVAL;
	}
	if (b[0] & CONNECT_FLAG_COMPRESSED) {
		error_set(why, "compressed Connect envelope, but no compression was negotiated");
		return -ENOTSUP;
	}
	if (b[0] & ~CONNECT_FLAG_COMPRESSED) {
		error_set(why, "Connect envelope flags 0x%02x not allowed in a request", b[0]);
		return -EINVAL;
	}
	n = be32(b + 1);
	if (n > max) {
		error_set(why, "Connect message of %u bytes is over the limit of %zu", n, max);
		return -EMSGSIZE;
	}
	if (n > len - CONNECT_HEADER_LEN) {
		error_set(why, "truncated Connect envelope: %zu of %u message bytes", len - CONNECT_HEADER_LEN, n);
		return -EINVAL;
	}
	if (n < len - CONNECT_HEADER_LEN) {
		error_set(why, "%zu bytes after the request's one Connect envelope", len - CONNECT_HEADER_LEN - n);
		return -EINVAL;
	}
	*ret_msg_len = n;
	return 0;
}

static bool only_space(const char *s, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		if (!strchr(" \t\r\n", s[i]))
			return false;
	return true;
}

int connect_request_parse(const void *body, size_t len, size_t max, json_object **ret, char **why)
{
	const uint8_t *b = body;
	json_tokener *tok;
	json_object *o;
	size_t n;
	int r;

	r = envelope_check(b, len, max, &n, why);
	if (r < 0)
		return r;
	if (memchr(b + CONNECT_HEADER_LEN, '\0', n)) {
		error_set(why, "the Connect message holds a NUL byte");
		return -EINVAL;
	}
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	o = json_tokener_parse_ex(tok, (const char *)b + CONNECT_HEADER_LEN, (int)n);
	/* json-c needs the end of the input to finish a bare number: parse the empty rest. */
	if (!o && json_tokener_get_error(tok) == json_tokener_continue)
		o = json_tokener_parse_ex(tok, "", 1);
	if (o && (!only_space((const char *)b + CONNECT_HEADER_LEN, json_tokener_get_parse_end(tok), n) ||
		  !json_object_is_type(o, json_type_object))) {
		json_object_put(o);
		o = NULL;
		error_set(why, "the Connect message is not one JSON object");
	} else if (!o) {
		error_set(why, "the Connect message is not JSON: %s",
			  json_tokener_error_desc(json_tokener_get_error(tok)));
	}
	json_tokener_free(tok);
	if (!o)
		return -EINVAL;
	*ret = o;
	return 0;
}

const char *connect_request_code(int err)
{
	switch (err) {
	case -EMSGSIZE:
		return "resource_exhausted";
	case -ENOTSUP:
		return "unimplemented";
	case -ENOMEM:
		return "resource_exhausted";
	default:
		return "invalid_argument";
	}
}

uint8_t *connect_frame(uint8_t flags, const char *msg, size_t len, size_t *ret_len)
{
	uint8_t *f;

	if (len > UINT32_MAX)
		return NULL;
	f = malloc(CONNECT_HEADER_LEN + len);
	if (!f)
		return NULL;
	f[0] = flags;
	f[1] = (uint8_t)(len >> 24);
	f[2] = (uint8_t)(len >> 16);
	f[3] = (uint8_t)(len >> 8);
	f[4] = (uint8_t)len;
	if (len)
		memcpy(f + CONNECT_HEADER_LEN, msg, len);
	*ret_len = CONNECT_HEADER_LEN + len;
	return f;
}

static uint8_t *frame_of(uint8_t flags, json_object *o, size_t *ret_len)
{
	size_t n;
	const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
							  &n);

	return s ? connect_frame(flags, s, n, ret_len) : NULL;
}

uint8_t *connect_frame_json(json_object *o, size_t *ret_len)
{
	return frame_of(0, o, ret_len);
}

uint8_t *connect_frame_end(const char *code, const char *message, size_t *ret_len)
{
	json_object *o, *e;
	uint8_t *f;

	if (!code)
		return connect_frame(CONNECT_FLAG_END_STREAM, "{}", 2, ret_len);
	o = json_object_new_object();
	e = json_object_new_object();
	if (!o || !e) {
		json_object_put(o);
		json_object_put(e);
		return NULL;
	}
	json_object_object_add(e, "code", json_object_new_string(code));
	if (message)
		json_object_object_add(e, "message", json_object_new_string(message));
	json_object_object_add(o, "error", e);
	f = frame_of(CONNECT_FLAG_END_STREAM, o, ret_len);
	json_object_put(o);
	return f;
}
