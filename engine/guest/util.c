/* emberfs-agent: logging, clocks, buffers, string vectors, base64, JSON field access. */
#include "agent.h"

int agent_console_fd = -1;

/* One write() per line so lines from the agent never interleave. */
void agent_log(const char *fmt, ...)
{
	static const char prefix[] = "emberfs-agent: ";
	char line[512];
	size_t n = sizeof(prefix) - 1;
	va_list ap;
	int r;

	memcpy(line, prefix, n);
	va_start(ap, fmt);
	r = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (r > 0)
		n += MIN((size_t)r, sizeof(line) - n - 2);
	line[n++] = '\n';
	if (write(agent_console_fd >= 0 ? agent_console_fd : STDERR_FILENO, line, n) < 0)
		return;
}

uint64_t clock_ms(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ------------------------------------------------------------------ */
/* Growable byte buffers and string vectors                            */

void buf_free(struct buf *b)
{
	free(b->data);
	*b = (struct buf){ 0 };
}

/* Make room for @extra more bytes; never grows the buffer past @limit. */
int buf_reserve(struct buf *b, size_t extra, size_t limit)
{
	size_t want = b->len + extra;
	size_t cap;
	char *p;

	if (want <= b->cap)
		return 0;
	if (want > limit)
		return -ENOBUFS;
	cap = b->cap ? b->cap : 4096;
	while (cap < want)
		cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
	cap = MIN(cap, limit);
	p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

int buf_append(struct buf *b, const void *p, size_t n, size_t limit)
{
	int r = buf_reserve(b, n, limit);

	if (r < 0)
		return r;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

void strv_free(struct strv *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	*s = (struct strv){ 0 };
}

/* Takes ownership of @str, also on failure. */
int strv_push(struct strv *s, char *str)
{
	char **v;

	if (!str)
		return -ENOMEM;
	v = realloc(s->v, (s->n + 2) * sizeof(*v));
	if (!v) {
		free(str);
		return -ENOMEM;
	}
	v[s->n++] = str;
	v[s->n] = NULL;
	s->v = v;
	return 0;
}

/* Set KEY=VALUE, replacing an earlier entry of the same key. */
static int env_set(struct strv *env, const char *key, size_t klen, const char *val)
{
	char *kv;

	if (asprintf(&kv, "%.*s=%s", (int)klen, key, val) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < env->n; i++) {
		if (!strncmp(env->v[i], kv, klen + 1)) {
			free(env->v[i]);
			env->v[i] = kv;
			return 0;
		}
	}
	return strv_push(env, kv);
}

/* Apply entries "K=V" of @from onto @env. */
int env_merge(struct strv *env, const struct strv *from)
{
	for (size_t i = 0; i < from->n; i++) {
		const char *eq = strchr(from->v[i], '=');
		int r;

		if (!eq)
			continue;
		r = env_set(env, from->v[i], eq - from->v[i], eq + 1);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Base64 (RFC 4648, standard alphabet, padded on output)              */

static const char b64_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t b64_encoded_len(size_t n)
{
	return (n + 2) / 3 * 4;
}

void b64_encode(const unsigned char *in, size_t n, char *out)
{
	size_t i;

	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = in[i] << 16 | in[i + 1] << 8 | in[i + 2];

		*out++ = b64_chars[v >> 18];
		*out++ = b64_chars[(v >> 12) & 63];
		*out++ = b64_chars[(v >> 6) & 63];
		*out++ = b64_chars[v & 63];
	}
	if (i < n) {
		uint32_t v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0);

		*out++ = b64_chars[v >> 18];
		*out++ = b64_chars[(v >> 12) & 63];
		*out++ = i + 1 < n ? b64_chars[(v >> 6) & 63] : '=';
		*out++ = '=';
	}
}

static int b64_value(unsigned char c)
{
	const char *p = c ? strchr(b64_chars, c) : NULL;

	return p ? (int)(p - b64_chars) : -1;
}

/* Accepts padded and unpadded input; anything else is -EINVAL. */
static int b64_decode(const char *in, size_t n, unsigned char **ret, size_t *ret_len)
{
	_cleanup_free_ unsigned char *out = NULL;
	uint32_t acc = 0;
	size_t len = 0, bits = 0;

	while (n > 0 && in[n - 1] == '=' && n % 4 != 1)
		n--;
	if (n % 4 == 1)
		return -EINVAL;
	out = malloc(n / 4 * 3 + 3);
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		int v = b64_value(in[i]);

		if (v < 0)
			return -EINVAL;
		acc = acc << 6 | v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[len++] = acc >> bits;
		}
	}
	*ret = out;
	out = NULL;
	*ret_len = len;
	return 0;
}

/*
 * Devices appear asynchronously after their module loads: retry @probe
 * every millisecond until it stops saying -EAGAIN or @timeout_ms passes.
 */
int wait_until(int (*probe)(void *ctx), void *ctx, unsigned int timeout_ms)
{
	uint64_t deadline = clock_ms(CLOCK_MONOTONIC) + timeout_ms;
	int r;

	for (;;) {
		r = probe(ctx);
		if (r != -EAGAIN || clock_ms(CLOCK_MONOTONIC) >= deadline)
			return r;
		sleep_ms(1);
	}
}

/* ------------------------------------------------------------------ */
/* JSON field access                                                    */

struct json_object *json_field(struct json_object *o, const char *key)
{
	struct json_object *v = NULL;

	if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
		return NULL;
	return v;
}

/* -ENOENT when absent (or null), -EINVAL when not a non-negative integer. */
int json_get_u64(struct json_object *o, const char *key, uint64_t *ret)
{
	struct json_object *v = json_field(o, key);

	if (!v)
		return -ENOENT;
	if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0)
		return -EINVAL;
	*ret = json_object_get_uint64(v);
	return 0;
}

/* Strings with embedded NULs are refused: they cannot reach the kernel. */
int json_get_str(struct json_object *o, const char *key, const char **ret, size_t *ret_len)
{
	struct json_object *v = json_field(o, key);
	size_t len;

	if (!v)
		return -ENOENT;
	if (!json_object_is_type(v, json_type_string))
		return -EINVAL;
	len = json_object_get_string_len(v);
	*ret = json_object_get_string(v);
	if (strlen(*ret) != len)
		return -EINVAL;
	if (ret_len)
		*ret_len = len;
	return 0;
}

/* An {"K":"V"} object as "K=V" strings. */
int json_get_env(struct json_object *o, const char *key, struct strv *ret)
{
	struct json_object *v = json_field(o, key);
	struct strv env = { 0 };

	if (!v)
		return -ENOENT;
	if (!json_object_is_type(v, json_type_object))
		return -EINVAL;
	json_object_object_foreach(v, k, val) {
		const char *s;
		int r = -EINVAL;

		if (json_object_is_type(val, json_type_string)) {
			s = json_object_get_string(val);
			if (k[0] && !strchr(k, '=') && strlen(s) == (size_t)json_object_get_string_len(val))
				r = env_set(&env, k, strlen(k), s);
		}
		if (r < 0) {
			strv_free(&env);
			return r;
		}
	}
	strv_free(ret);
	*ret = env;
	return 0;
}

int json_get_b64(struct json_object *o, const char *key, unsigned char **ret, size_t *ret_len)
{
	const char *s;
	size_t len;
	int r = json_get_str(o, key, &s, &len);

	if (r < 0)
		return r;
	return b64_decode(s, len, ret, ret_len);
}
