/* Name validation: an allowlist, checked before any path is built. */
#include <string.h>

#include "common.h"

static bool name_char_ok(char c, bool first)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return !first && (c == '_' || c == '-');
}

/*
 * The mount's own entry names: an object never has one, so no directory ever
 * holds an object and an attribute file of the same name, and no flat view
 * can confuse them.
 */
static const char *const reserved[] = {
	"README", "version", "metrics", "events", "live", "templates", "sandboxes", "slots", "config", "identity",
	"status", "ctl", "pool", "stats", "wait", "exec", "console", "timings", "procs", "root", "cmd", "stdin",
	"stdout", "stderr", "signal",
};

int name_validate(const char *name)
{
	size_t n;

	if (!name)
		return -EINVAL;
	n = strnlen(name, 256);
	if (n > 255)
		return -ENAMETOOLONG;
	if (n == 0 || n > NAME_MAX_LEN)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!name_char_ok(name[i], i == 0))
			return -EINVAL;
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
		if (strcmp(name, reserved[i]) == 0)
			return -EINVAL;
	return 0;
}

static bool meta_escaped(unsigned char c)
{
	return c == '%' || c == '/' || c < 0x20 || c == 0x7f;
}

int meta_name_encode(const char *s, char out[static 256])
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
		const char *w = !*s ? "%00" : s[1] ? "%2E%2E" : "%2E";

		strcpy(out, w);
		return 0;
	}
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (o + (meta_escaped(*p) ? 3 : 1) > 255)
			return -ENAMETOOLONG;
		if (meta_escaped(*p)) {
			out[o++] = '%';
			out[o++] = hex[*p >> 4];
			out[o++] = hex[*p & 15];
		} else {
			out[o++] = (char)*p;
		}
	}
	out[o] = '\0';
	return 0;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int meta_name_decode(const char *name, char *out, size_t out_size)
{
	char again[256];
	size_t o = 0;

	if (strcmp(name, "%00") == 0) {
		if (out_size < 1)
			return -EINVAL;
		out[0] = '\0';
		return 0;
	}
	for (const char *p = name; *p; p++) {
		int c = (unsigned char)*p;

		if (*p == '%') {
			int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);

			if (lo < 0)
				return -EINVAL;
			c = hi << 4 | lo;
			p += 2;
		}
		if (c == 0 || o + 1 >= out_size)
			return -EINVAL;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	/* only the one spelling encode gives names a value */
	if (meta_name_encode(out, again) < 0 || strcmp(again, name))
		return -EINVAL;
	return 0;
}
