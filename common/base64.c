/* Base64, standard alphabet with padding: the agent protocol carries bytes this way. */
#include <string.h>
#include <sys/types.h>

#include "common.h"

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *base64_encode(const void *data, size_t len)
{
	const uint8_t *p = data;
	char *out = malloc(4 * ((len + 2) / 3) + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < len)
			v |= p[i + 2];
		*o++ = B64[(v >> 18) & 63];
		*o++ = B64[(v >> 12) & 63];
		*o++ = i + 1 < len ? B64[(v >> 6) & 63] : '=';
		*o++ = i + 2 < len ? B64[v & 63] : '=';
	}
	*o = '\0';
	return out;
}

static int b64_val(char c)
{
	const char *p = c ? strchr(B64, c) : NULL;

	return p ? (int)(p - B64) : -1;
}

ssize_t base64_decode(const char *in, size_t inlen, uint8_t **ret)
{
	_cleanup_free_ uint8_t *out = NULL;
	size_t o = 0;

	if (inlen % 4)
		return -EINVAL;
	out = malloc(inlen / 4 * 3 + 1);
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < inlen; i += 4) {
		int v[4];
		int pad = 0;

		for (int j = 0; j < 4; j++) {
			if (in[i + j] == '=' && i + 4 == inlen && j >= 2) {
				v[j] = 0;
				pad++;
				continue;
			}
			if (pad)
				return -EINVAL;
			v[j] = b64_val(in[i + j]);
			if (v[j] < 0)
				return -EINVAL;
		}
		uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		out[o++] = (uint8_t)(x >> 16);
		if (pad < 2)
			out[o++] = (uint8_t)(x >> 8);
		if (pad < 1)
			out[o++] = (uint8_t)x;
	}
	*ret = TAKE_PTR(out);
	return (ssize_t)o;
}
