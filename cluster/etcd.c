/*
 * etcd v3 over its JSON gateway (etcd.h): requests are proto3 JSON
 * (bytes as base64, int64 as decimal strings, fields at their default
 * values omitted in answers), sent with a pooled curl easy handle so a
 * call reuses a kept-alive connection. The watch runs on its own thread
 * with its own multi handle, which etcd_watch_stop wakes.
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "etcd.h"
#include "etcd_internal.h"

/* etcd's --max-request-bytes default, and its --max-txn-ops. */
#define ETCD_MAX_REQUEST (3u << 19)
#define ETCD_MAX_TXN_OPS 128
/* Easy handles kept for reuse (each keeps its connection). */
#define POOL_MAX 16
/* One attempt of a request that may be sent again: a quarter of the timeout, at least 500 ms. */
#define RETRY_ATTEMPT_MS(e) ((e)->timeout_ms / 4 > 500 ? (e)->timeout_ms / 4 : 500)
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 1000

struct etcd {
	char **urls;
	size_t n_urls;
	unsigned timeout_ms;
	atomic_size_t good; /* the member that answered last */
	struct curl_slist *headers;
	pthread_mutex_t lock;
	CURL *pool[POOL_MAX]; /* protected by lock */
	size_t n_pool;	      /* protected by lock */
};

static __thread char tl_error[512];

const char *etcd_error(void)
{
	return tl_error;
}

static int set_error(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int set_error(int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(tl_error, sizeof(tl_error), fmt, ap);
	va_end(ap);
	return r;
}

static void json_putp(json_object **o)
{
	json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(json_putp)

/* ---- values ---- */

void etcd_kv_clear(struct etcd_kv *kv)
{
	if (!kv)
		return;
	free(kv->key);
	free(kv->value);
	*kv = (struct etcd_kv){ 0 };
}

void etcd_kvs_free(struct etcd_kv *kvs, size_t n)
{
	for (size_t i = 0; kvs && i < n; i++)
		etcd_kv_clear(&kvs[i]);
	free(kvs);
}

static void event_clear(struct etcd_event *ev)
{
	etcd_kv_clear(&ev->kv);
	etcd_kv_clear(&ev->prev);
}

/* An int64 field: absent is 0 (proto3 omits defaults), a decimal string or a JSON integer. */
static int json_int64(json_object *o, const char *field, int64_t *ret)
{
	json_object *v;
	const char *s;
	char *end;
	long long x;

	if (!json_object_object_get_ex(o, field, &v) || json_object_is_type(v, json_type_null)) {
		*ret = 0;
		return 0;
	}
	if (json_object_is_type(v, json_type_int)) {
		*ret = json_object_get_int64(v);
		return 0;
	}
	if (!json_object_is_type(v, json_type_string))
		return -EPROTO;
	s = json_object_get_string(v);
	if (!*s || (*s != '-' && (*s < '0' || *s > '9')))
		return -EPROTO;
	errno = 0;
	x = strtoll(s, &end, 10);
	if (errno || *end)
		return -EPROTO;
	*ret = x;
	return 0;
}

static bool jget_bool(json_object *o, const char *field)
{
	json_object *v;

	return json_object_object_get_ex(o, field, &v) && json_object_is_type(v, json_type_boolean) &&
	       json_object_get_boolean(v);
}

/* A bytes field: absent is empty; the result is NUL-terminated. */
static int json_bytes(json_object *o, const char *field, uint8_t **ret, size_t *ret_len)
{
	json_object *v;
	uint8_t *p;
	ssize_t n;

	if (!json_object_object_get_ex(o, field, &v) || json_object_is_type(v, json_type_null)) {
		p = calloc(1, 1);
		if (!p)
			return -ENOMEM;
		*ret = p;
		*ret_len = 0;
		return 0;
	}
	if (!json_object_is_type(v, json_type_string))
		return -EPROTO;
	n = base64_decode(json_object_get_string(v), (size_t)json_object_get_string_len(v), &p);
	if (n == -ENOMEM)
		return -ENOMEM;
	if (n < 0)
		return -EPROTO;
	p[n] = 0;
	*ret = p;
	*ret_len = (size_t)n;
	return 0;
}

static int decode_kv(json_object *o, struct etcd_kv *ret)
{
	_cleanup_free_ uint8_t *key = NULL, *value = NULL;
	struct etcd_kv kv = { 0 };
	size_t klen;
	int r;

	if (!json_object_is_type(o, json_type_object))
		return -EPROTO;
	r = json_bytes(o, "key", &key, &klen);
	if (r < 0)
		return r;
	r = json_bytes(o, "value", &value, &kv.value_len);
	if (r < 0)
		return r;
	if (json_int64(o, "create_revision", &kv.create_rev) < 0 || json_int64(o, "mod_revision", &kv.mod_rev) < 0 ||
	    json_int64(o, "lease", &kv.lease) < 0)
		return -EPROTO;
	kv.key = (char *)TAKE_PTR(key);
	kv.value = TAKE_PTR(value);
	*ret = kv;
	return 0;
}

static int header_revision(json_object *o, int64_t *ret)
{
	json_object *h;

	if (!json_object_object_get_ex(o, "header", &h) || !json_object_is_type(h, json_type_object))
		return -EPROTO;
	return json_int64(h, "revision", ret);
}

static json_object *jbytes(const void *p, size_t n)
{
	_cleanup_free_ char *s = base64_encode(p, n);

	return s ? json_object_new_string(s) : NULL;
}

static json_object *jint64(int64_t v)
{
	char s[24];

	snprintf(s, sizeof(s), "%" PRId64, v);
	return json_object_new_string(s);
}

/* Adds val (consumed, may be NULL from a failed allocation) to o. */
static int jadd(json_object *o, const char *field, json_object *val)
{
	if (!val)
		return -ENOMEM;
	if (json_object_object_add(o, field, val) < 0) {
		json_object_put(val);
		return -ENOMEM;
	}
	return 0;
}

/* Appends val (consumed, may be NULL) to the array a. */
static int jpush(json_object *a, json_object *val)
{
	if (!val)
		return -ENOMEM;
	if (json_object_array_add(a, val) < 0) {
		json_object_put(val);
		return -ENOMEM;
	}
	return 0;
}

/*
 * JSON only (no comments, no single quotes, ...): json-c's default eats a
 * comment after an object as whitespace, which would hold a complete
 * message back until more bytes come; what follows an object is ours.
 */
#define TOKENER_FLAGS (JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS)

/* Parses one whole JSON object from body (trailing whitespace allowed). */
static int parse_body(const char *body, size_t len, json_object **ret)
{
	json_tokener *tok;
	json_object *o;
	size_t end;

	if (len > INT_MAX)
		return -E2BIG;
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, TOKENER_FLAGS);
	o = json_tokener_parse_ex(tok, body, (int)len);
	end = json_tokener_get_parse_end(tok);
	if (!o || json_tokener_get_error(tok) != json_tokener_success) {
		json_tokener_free(tok);
		json_object_put(o);
		return -EPROTO;
	}
	json_tokener_free(tok);
	for (; end < len; end++)
		if (!strchr(" \t\r\n", body[end]))
			break;
	if (end < len || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return -EPROTO;
	}
	*ret = o;
	return 0;
}

static int range_from_json(json_object *o, struct etcd_kv **ret_kvs, size_t *ret_n, int64_t *ret_rev)
{
	json_object *arr;
	struct etcd_kv *kvs = NULL;
	size_t n = 0;
	int64_t rev;
	int r;

	if (header_revision(o, &rev) < 0)
		return -EPROTO;
	if (json_object_object_get_ex(o, "kvs", &arr)) {
		if (!json_object_is_type(arr, json_type_array))
			return -EPROTO;
		n = json_object_array_length(arr);
	}
	kvs = calloc(n ? n : 1, sizeof(*kvs));
	if (!kvs)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		r = decode_kv(json_object_array_get_idx(arr, i), &kvs[i]);
		if (r < 0) {
			etcd_kvs_free(kvs, i);
			return r;
		}
	}
	*ret_kvs = kvs;
	*ret_n = n;
	if (ret_rev)
		*ret_rev = rev;
	return 0;
}

int etcd_decode_range(const char *body, size_t len, struct etcd_kv **ret_kvs, size_t *ret_n, int64_t *ret_rev)
{
	_cleanup_json_ json_object *o = NULL;
	int r;

	r = parse_body(body, len, &o);
	if (r < 0)
		return r;
	return range_from_json(o, ret_kvs, ret_n, ret_rev);
}

int etcd_prefix_end(const char *prefix, size_t len, char **ret, size_t *ret_len)
{
	char *end = malloc(len + 1);

	if (!end)
		return -ENOMEM;
	memcpy(end, prefix, len);
	while (len > 0 && (uint8_t)end[len - 1] == 0xff)
		len--;
	if (len == 0) {
		end[0] = 0; /* no upper bound: "\0" means every key from the start */
		*ret = end;
		*ret_len = 1;
		return 0;
	}
	end[len - 1] = (char)((uint8_t)end[len - 1] + 1);
	end[len] = 0;
	*ret = end;
	*ret_len = len;
	return 0;
}

/* ---- the watch stream decoder ---- */

int etcd_wdec_init(struct etcd_wdec *d, void (*event)(void *ctx, const struct etcd_event *ev), void *ctx)
{
	*d = (struct etcd_wdec){ .event = event, .ctx = ctx };
	d->tok = json_tokener_new();
	if (!d->tok)
		return -ENOMEM;
	json_tokener_set_flags(d->tok, TOKENER_FLAGS);
	return 0;
}

void etcd_wdec_done(struct etcd_wdec *d)
{
	if (d->tok)
		json_tokener_free(d->tok);
	d->tok = NULL;
}

static int wdec_fail(struct etcd_wdec *d, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int wdec_fail(struct etcd_wdec *d, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(d->why, sizeof(d->why), fmt, ap);
	va_end(ap);
	etcd_wdec_done(d); /* nothing more is decoded */
	return r;
}

static int decode_event(json_object *o, struct etcd_event *ev)
{
	json_object *t, *kv, *prev;
	int r;

	*ev = (struct etcd_event){ .type = ETCD_EV_PUT };
	if (!json_object_is_type(o, json_type_object))
		return -EPROTO;
	if (json_object_object_get_ex(o, "type", &t)) {
		const char *s = json_object_get_string(t);

		if (!json_object_is_type(t, json_type_string))
			return -EPROTO;
		if (!strcmp(s, "DELETE"))
			ev->type = ETCD_EV_DELETE;
		else if (strcmp(s, "PUT"))
			return -EPROTO;
	}
	if (!json_object_object_get_ex(o, "kv", &kv))
		return -EPROTO;
	r = decode_kv(kv, &ev->kv);
	if (r < 0)
		return r;
	if (json_object_object_get_ex(o, "prev_kv", &prev)) {
		r = decode_kv(prev, &ev->prev);
		if (r < 0) {
			event_clear(ev);
			return r;
		}
	}
	return 0;
}

/* One message of the stream. */
static int wdec_message(struct etcd_wdec *d, json_object *msg)
{
	json_object *res, *err, *events;
	int64_t rev, compact;
	size_t n;
	int r;

	if (!json_object_is_type(msg, json_type_object))
		return wdec_fail(d, -EPROTO, "etcd watch: a message that is no object");
	if (json_object_object_get_ex(msg, "error", &err)) {
		json_object *m = NULL;

		if (json_object_is_type(err, json_type_object))
			json_object_object_get_ex(err, "message", &m);
		return wdec_fail(d, -EIO, "etcd watch: %s", json_object_get_string(m ? m : err));
	}
	if (!json_object_object_get_ex(msg, "result", &res) || !json_object_is_type(res, json_type_object))
		return wdec_fail(d, -EPROTO, "etcd watch: a message without result");
	if (header_revision(res, &rev) < 0 || json_int64(res, "compact_revision", &compact) < 0)
		return wdec_fail(d, -EPROTO, "etcd watch: a result with a bad header");
	if (compact != 0) {
		d->compact_rev = compact;
		return wdec_fail(d, -ESTALE, "etcd watch: compacted up to revision %" PRId64, compact);
	}
	if (jget_bool(res, "canceled")) {
		json_object *why = NULL;

		json_object_object_get_ex(res, "cancel_reason", &why);
		return wdec_fail(d, -ECANCELED, "etcd watch: canceled by the server%s%s", why ? ": " : "",
				 why ? json_object_get_string(why) : "");
	}
	if (jget_bool(res, "created"))
		d->created = true;
	if (rev > d->rev)
		d->rev = rev;
	if (!json_object_object_get_ex(res, "events", &events))
		return 0;
	if (!json_object_is_type(events, json_type_array))
		return wdec_fail(d, -EPROTO, "etcd watch: events that are no array");
	n = json_object_array_length(events);
	for (size_t i = 0; i < n; i++) {
		struct etcd_event ev;

		r = decode_event(json_object_array_get_idx(events, i), &ev);
		if (r == -ENOMEM)
			return wdec_fail(d, r, "etcd watch: out of memory");
		if (r < 0)
			return wdec_fail(d, r, "etcd watch: a malformed event");
		if (d->event)
			d->event(d->ctx, &ev);
		event_clear(&ev);
	}
	return 0;
}

int etcd_watch_feed(struct etcd_wdec *d, const void *data, size_t len)
{
	const char *p = data;

	if (!d->tok)
		return -EPROTO; /* failed before */
	while (len > 0) {
		size_t chunk = len > INT_MAX / 2 ? INT_MAX / 2 : len, used;
		json_object *msg;
		enum json_tokener_error jerr;
		int r;

		/* whitespace between messages is no message (nor part of one) */
		if (d->pending == 0 && strchr(" \t\r\n", *p) && *p) {
			p++;
			len--;
			continue;
		}
		/* every message is an object (json-c ends a bare number differently by chunk) */
		if (d->pending == 0 && *p != '{')
			return wdec_fail(d, -EPROTO, "etcd watch: a message that is no object");
		msg = json_tokener_parse_ex(d->tok, p, (int)chunk);
		jerr = json_tokener_get_error(d->tok);
		used = json_tokener_get_parse_end(d->tok);
		if (used > chunk)
			used = chunk;
		if (jerr == json_tokener_continue) {
			d->pending += chunk;
			if (d->pending > ETCD_MAX_ANSWER)
				return wdec_fail(d, -E2BIG, "etcd watch: a message beyond %u bytes", ETCD_MAX_ANSWER);
			p += chunk;
			len -= chunk;
			continue;
		}
		if (jerr != json_tokener_success || !msg) {
			json_object_put(msg);
			return wdec_fail(d, -EPROTO, "etcd watch: not JSON (%s)", json_tokener_error_desc(jerr));
		}
		if (used == 0)
			used = 1; /* always progress */
		json_tokener_reset(d->tok);
		d->pending = 0;
		p += used;
		len -= used;
		r = wdec_message(d, msg);
		json_object_put(msg);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- requests ---- */

struct buf {
	char *data;
	size_t len, cap;
};

static size_t buf_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct buf *b = ud;
	size_t n = size * nmemb;

	if (n > ETCD_MAX_ANSWER - b->len)
		return 0; /* CURLE_WRITE_ERROR */
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		char *d;

		while (cap < b->len + n + 1)
			cap *= 2;
		d = realloc(b->data, cap);
		if (!d)
			return 0;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = 0;
	return n;
}

static CURL *pool_get(struct etcd *e)
{
	CURL *h = NULL;

	pthread_mutex_lock(&e->lock);
	if (e->n_pool > 0)
		h = e->pool[--e->n_pool];
	pthread_mutex_unlock(&e->lock);
	return h ? h : curl_easy_init();
}

static void pool_put(struct etcd *e, CURL *h)
{
	pthread_mutex_lock(&e->lock);
	if (e->n_pool < POOL_MAX) {
		e->pool[e->n_pool++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	if (h)
		curl_easy_cleanup(h);
}

/* The options of one POST (the handle keeps its connection between them). */
static int request_setup(struct etcd *e, CURL *h, const char *url, const char *body, size_t len, unsigned timeout_ms,
			 curl_write_callback write, void *ud)
{
	if (curl_easy_setopt(h, CURLOPT_URL, url) || curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) ||
	    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L) || curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L) ||
	    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") ||
	    curl_easy_setopt(h, CURLOPT_HTTPHEADER, e->headers) || curl_easy_setopt(h, CURLOPT_POST, 1L) ||
	    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body) ||
	    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len) ||
	    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms) ||
	    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write) || curl_easy_setopt(h, CURLOPT_WRITEDATA, ud))
		return -EINVAL;
	return 0;
}

/* The errno of a gRPC status the gateway passed on. */
static int grpc_errno(int64_t code, const char *msg)
{
	switch (code) {
	case 3: /* INVALID_ARGUMENT */
		return strstr(msg, "too large") || strstr(msg, "too many") ? -E2BIG : -EINVAL;
	case 4:	 /* DEADLINE_EXCEEDED */
	case 8:	 /* RESOURCE_EXHAUSTED: too many requests */
	case 14: /* UNAVAILABLE: no leader, request timed out, stopped */
		return -EAGAIN;
	case 5: /* NOT_FOUND: the lease */
		return -ENOENT;
	case 7:	 /* PERMISSION_DENIED */
	case 16: /* UNAUTHENTICATED */
		return -EACCES;
	case 11: /* OUT_OF_RANGE: compacted */
		return -ESTALE;
	default:
		return -EIO;
	}
}

/*
 * An answer: 200 with a JSON object, or an error object
 * {"error","message","code"} (or, from a stream, {"error":{...}}).
 */
static int answer_decode(const char *url, long status, struct buf *b, json_object **ret)
{
	_cleanup_json_ json_object *o = NULL;
	json_object *err, *m = NULL;
	int64_t code = 0;

	if (parse_body(b->data ? b->data : "", b->len, &o) < 0)
		return set_error(-EPROTO, "etcd: %s answered HTTP %ld with no JSON object", url, status);
	if (json_object_object_get_ex(o, "error", &err)) {
		json_object *src = json_object_is_type(err, json_type_object) ? err : o;
		const char *msg;

		if (!json_object_object_get_ex(src, "message", &m))
			m = err;
		if (json_int64(src, "code", &code) < 0 || (code == 0 && json_int64(src, "grpc_code", &code) < 0))
			return set_error(-EPROTO, "etcd: %s answered an error without a code", url);
		msg = json_object_get_string(m);
		return set_error(grpc_errno(code, msg ? msg : ""), "etcd: %s: %s", url, msg ? msg : "(no message)");
	}
	if (status != 200)
		return set_error(-EPROTO, "etcd: %s answered HTTP %ld without an error", url, status);
	*ret = TAKE_PTR(o);
	return 0;
}

/* Appends "; url: what" (url may be NULL) to the reasons of a round (truncated, never overrun). */
static void reason_add(char *buf, size_t size, size_t *len, const char *url, const char *what)
{
	int n = snprintf(buf + *len, size - *len, "%s%s%s%s", *len ? "; " : "", url ? url : "", url ? ": " : "", what);

	if (n > 0)
		*len = *len + (size_t)n >= size ? size - 1 : *len + (size_t)n;
}

/*
 * One POST of body to one member, within share_ms. Returns what
 * answer_decode does, or -EAGAIN when the member did not answer
 * (*ret_unsent: and the request surely was not executed: no connection,
 * or a member without a leader, which refuses before anything).
 */
static int call_one(struct etcd *e, CURL *h, size_t idx, const char *path, const char *body, size_t len,
		    unsigned share_ms, json_object **ret, char *reasons, size_t rsize, size_t *rlen, bool *ret_unsent)
{
	_cleanup_free_ char *url = strjoin(e->urls[idx], path, NULL);
	struct buf b = { 0 };
	long status = 0;
	CURLcode cc;
	int r;

	if (!url)
		return -ENOMEM;
	if (request_setup(e, h, url, body, len, share_ms, buf_write, &b) < 0)
		return set_error(-EINVAL, "etcd: curl refused the options of %s", url);
	cc = curl_easy_perform(h);
	if (cc == CURLE_WRITE_ERROR) {
		free(b.data);
		return set_error(-EPROTO, "etcd: %s answered more than %u bytes", e->urls[idx], ETCD_MAX_ANSWER);
	}
	if (cc != CURLE_OK) {
		free(b.data);
		*ret_unsent = cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST;
		reason_add(reasons, rsize, rlen, e->urls[idx], curl_easy_strerror(cc));
		return -EAGAIN;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	r = answer_decode(e->urls[idx], status, &b, ret);
	free(b.data);
	if (r == -EAGAIN) {
		/* answer_decode said "etcd: URL: why" (maybe truncated) */
		size_t skip = strlen("etcd: ") + strlen(e->urls[idx]) + 2, have = strlen(tl_error);
		const char *why = tl_error + (skip < have ? skip : have);

		*ret_unsent = strstr(why, "no leader") != NULL;
		reason_add(reasons, rsize, rlen, e->urls[idx], why);
	}
	return r;
}

/*
 * POSTs req to path on the members in turn, from the last good one, each
 * given its share of what is left of the timeout. While every member
 * failed in a way that surely left the request undone (no connection, no
 * leader: an election), or the request is retry_safe, the round is tried
 * again until the timeout; after a timeout (the request may have been
 * done) a request that is not retry_safe is not, and a
 * request that is not retry_safe (a txn: done twice, its comparison
 * fails the second time) goes to no other member either, as etcd's own
 * client does. -EAGAIN when no member answered, etcd_error() listing why
 * for each.
 */
static int etcd_call(struct etcd *e, const char *path, json_object *req, size_t raw_size, bool retry_safe,
		     json_object **ret)
{
	uint64_t deadline = now_ns() + (uint64_t)e->timeout_ms * 1000000u;
	char reasons[sizeof(tl_error)] = "";
	size_t len, rl = 0;
	bool again = true;
	const char *body;
	CURL *h;
	int r = -EAGAIN;

	if (raw_size > ETCD_MAX_REQUEST)
		return set_error(-E2BIG, "etcd: a request of %zu bytes (the limit is %u)", raw_size, ETCD_MAX_REQUEST);
	body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	if (!body)
		return -ENOMEM;
	len = strlen(body);
	h = pool_get(e);
	if (!h)
		return -ENOMEM;
	for (unsigned round = 0; again && r == -EAGAIN; round++) {
		size_t start = atomic_load(&e->good);
		uint64_t now = now_ns();

		if (round > 0) {
			/* an election takes about a second: look again soon */
			if (now + 50000000u >= deadline)
				break;
			usleep(50000);
		}
		rl = 0;
		reasons[0] = 0;
		for (size_t i = 0; i < e->n_urls && r == -EAGAIN; i++) {
			size_t idx = (start + i) % e->n_urls;
			bool unsent = false;
			unsigned share;

			now = now_ns();
			if (now >= deadline) {
				again = false;
				break;
			}
			share = (unsigned)((deadline - now) / 1000000u / (e->n_urls - i));
			/*
			 * A request a follower forwarded to a leader that just
			 * died is lost: it hangs to etcd's own timeout (7 s).
			 * What may be sent again is, after a shorter wait.
			 */
			if (retry_safe && share > RETRY_ATTEMPT_MS(e))
				share = RETRY_ATTEMPT_MS(e);
			r = call_one(e, h, idx, path, body, len, share ? share : 1, ret, reasons, sizeof(reasons), &rl,
				     &unsent);
			if (r != -EAGAIN) {
				atomic_store(&e->good, idx);
				break;
			}
			/* the next call starts with the next member */
			size_t expect = idx;
			atomic_compare_exchange_strong(&e->good, &expect, (idx + 1) % e->n_urls);
			/* a request that may be done twice is tried until the timeout */
			again = again && (unsent || retry_safe);
			if (!unsent && !retry_safe) {
				reason_add(reasons, sizeof(reasons), &rl, NULL,
					   "not sent again: the member may have done it");
				break;
			}
		}
	}
	pool_put(e, h);
	if (r == -EAGAIN)
		set_error(-EAGAIN, "etcd: no member answered within %u ms (%s)", e->timeout_ms,
			  rl ? reasons : "no time left");
	return r;
}

int etcd_new(const char *urls, unsigned timeout_ms, struct etcd **ret)
{
	_cleanup_free_ char *copy = NULL;
	struct etcd *e;
	char *save = NULL;
	size_t n = 0;

	if (!urls || !*urls || timeout_ms == 0)
		return -EINVAL;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	/* from here on etcd_free undoes it all (it calls curl_global_cleanup) */
	pthread_mutex_init(&e->lock, NULL);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		pthread_mutex_destroy(&e->lock);
		free(e);
		return -ENOMEM;
	}
	e->timeout_ms = timeout_ms;
	copy = strdup(urls);
	if (!copy)
		goto fail_nomem;
	for (const char *p = urls; *p; p++)
		n += *p == ',';
	e->urls = calloc(n + 1, sizeof(*e->urls));
	if (!e->urls)
		goto fail_nomem;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		size_t l;

		while (*t == ' ')
			t++;
		l = strlen(t);
		while (l > 0 && (t[l - 1] == ' ' || t[l - 1] == '/'))
			t[--l] = 0;
		if (!*t)
			continue;
		if (strncmp(t, "http://", 7) && strncmp(t, "https://", 8)) {
			etcd_free(e);
			return set_error(-EINVAL, "etcd: %s is no http:// or https:// URL", t);
		}
		e->urls[e->n_urls] = strdup(t);
		if (!e->urls[e->n_urls])
			goto fail_nomem;
		e->n_urls++;
	}
	if (e->n_urls == 0) {
		etcd_free(e);
		return set_error(-EINVAL, "etcd: no member URL in \"%s\"", urls);
	}
	e->headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (!e->headers)
		goto fail_nomem;
	/*
	 * no 100-continue round trip for big bodies; and the gateway passes
	 * Grpc-Metadata-* on as gRPC metadata: "hasleader" makes a member
	 * that has no leader (lost quorum) say so (UNAVAILABLE) instead of
	 * holding the request, and cancel a watch it serves once it loses it
	 */
	if (!curl_slist_append(e->headers, "Expect:") ||
	    !curl_slist_append(e->headers, "Grpc-Metadata-hasleader: true"))
		goto fail_nomem;
	*ret = e;
	return 0;

fail_nomem:
	etcd_free(e);
	return -ENOMEM;
}

void etcd_free(struct etcd *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->n_pool; i++)
		curl_easy_cleanup(e->pool[i]);
	for (size_t i = 0; e->urls && i < e->n_urls; i++)
		free(e->urls[i]);
	free(e->urls);
	curl_slist_free_all(e->headers);
	pthread_mutex_destroy(&e->lock);
	free(e);
	curl_global_cleanup();
}

/* ---- leases ---- */

static json_object *lease_request(int64_t id, unsigned ttl_s)
{
	json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	if ((id && jadd(o, "ID", jint64(id)) < 0) || (ttl_s && jadd(o, "TTL", jint64(ttl_s)) < 0)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

int etcd_lease_grant(struct etcd *e, unsigned ttl_s, int64_t *ret_id)
{
	_cleanup_json_ json_object *req = lease_request(0, ttl_s), *ans = NULL;
	json_object *err;
	int64_t id, ttl;
	int r;

	if (ttl_s == 0)
		return -EINVAL;
	if (!req)
		return -ENOMEM;
	r = etcd_call(e, "/v3/lease/grant", req, 32, true, &ans);
	if (r < 0)
		return r;
	if (json_object_object_get_ex(ans, "error", &err))
		return set_error(-EIO, "etcd: lease grant: %s", json_object_get_string(err));
	if (json_int64(ans, "ID", &id) < 0 || json_int64(ans, "TTL", &ttl) < 0 || id == 0 || ttl <= 0)
		return set_error(-EPROTO, "etcd: a lease grant answer without ID and TTL");
	*ret_id = id;
	return 0;
}

int etcd_lease_keepalive(struct etcd *e, int64_t id, int64_t *ret_ttl)
{
	_cleanup_json_ json_object *req = lease_request(id, 0), *ans = NULL;
	json_object *res;
	int64_t ttl;
	int r;

	if (id == 0)
		return -EINVAL;
	if (!req)
		return -ENOMEM;
	r = etcd_call(e, "/v3/lease/keepalive", req, 32, true, &ans);
	if (r < 0)
		return r;
	/* a stream of one message: {"result":{"header","ID","TTL"}} */
	if (!json_object_object_get_ex(ans, "result", &res) || !json_object_is_type(res, json_type_object) ||
	    json_int64(res, "TTL", &ttl) < 0)
		return set_error(-EPROTO, "etcd: a keepalive answer without a result");
	if (ttl <= 0)
		return -ENOENT;
	if (ret_ttl)
		*ret_ttl = ttl;
	return 0;
}

int etcd_lease_revoke(struct etcd *e, int64_t id)
{
	_cleanup_json_ json_object *req = lease_request(id, 0), *ans = NULL;

	if (id == 0)
		return -EINVAL;
	if (!req)
		return -ENOMEM;
	return etcd_call(e, "/v3/lease/revoke", req, 32, false, &ans);
}

/* ---- keys ---- */

static json_object *put_op(const char *key, const void *val, size_t len, int64_t lease)
{
	json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	if (jadd(o, "key", jbytes(key, strlen(key))) < 0 || jadd(o, "value", jbytes(val, len)) < 0 ||
	    (lease && jadd(o, "lease", jint64(lease)) < 0)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

static json_object *key_op(const char *key)
{
	json_object *o = json_object_new_object();

	if (o && jadd(o, "key", jbytes(key, strlen(key))) < 0) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

int etcd_put(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t *ret_rev)
{
	_cleanup_json_ json_object *req = NULL, *ans = NULL;
	int64_t rev;
	int r;

	if (!*key)
		return -EINVAL;
	req = put_op(key, val, len, lease);
	if (!req)
		return -ENOMEM;
	r = etcd_call(e, "/v3/kv/put", req, strlen(key) + len + 32, true, &ans);
	if (r < 0)
		return r;
	if (header_revision(ans, &rev) < 0)
		return set_error(-EPROTO, "etcd: a put answer without a revision");
	if (ret_rev)
		*ret_rev = rev;
	return 0;
}

static json_object *cmp_json(const struct etcd_cmp *c)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	bool create = c->target == ETCD_CMP_CREATE;

	if (!o || !c->key || !*c->key || (c->target != ETCD_CMP_CREATE && c->target != ETCD_CMP_MOD))
		return NULL;
	if (jadd(o, "key", jbytes(c->key, strlen(c->key))) < 0 ||
	    jadd(o, "result", json_object_new_string("EQUAL")) < 0 ||
	    jadd(o, "target", json_object_new_string(create ? "CREATE" : "MOD")) < 0 ||
	    jadd(o, create ? "create_revision" : "mod_revision", jint64(c->rev)) < 0)
		return NULL;
	return TAKE_PTR(o);
}

static json_object *op_json(const struct etcd_op *op)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	json_object *inner;

	if (!o || !op->key || !*op->key)
		return NULL;
	switch (op->type) {
	case ETCD_OP_PUT:
		inner = put_op(op->key, op->val, op->len, op->lease);
		return jadd(o, "request_put", inner) < 0 ? NULL : TAKE_PTR(o);
	case ETCD_OP_DELETE:
		inner = key_op(op->key);
		return jadd(o, "request_delete_range", inner) < 0 ? NULL : TAKE_PTR(o);
	}
	return NULL;
}

/* What the request weighs in protobuf, about (etcd's limit is on that, not on the JSON). */
static size_t txn_raw_size(const struct etcd_cmp *cmps, size_t n_cmps, const struct etcd_op *ops, size_t n_ops)
{
	size_t raw = 16;

	for (size_t i = 0; i < n_cmps; i++)
		raw += (cmps[i].key ? strlen(cmps[i].key) : 0) + 24;
	for (size_t i = 0; i < n_ops; i++)
		raw += (ops[i].key ? strlen(ops[i].key) : 0) + (ops[i].type == ETCD_OP_PUT ? ops[i].len : 0) + 24;
	return raw;
}

int etcd_txn(struct etcd *e, const struct etcd_cmp *cmps, size_t n_cmps, const struct etcd_op *ops, size_t n_ops,
	     int64_t *ret_rev)
{
	_cleanup_json_ json_object *req = json_object_new_object(), *ans = NULL;
	json_object *arr;
	int64_t rev;
	int r;

	if (n_cmps > ETCD_MAX_TXN_OPS || n_ops > ETCD_MAX_TXN_OPS)
		return set_error(-E2BIG, "etcd: a txn of %zu comparisons and %zu operations (the limit is %u each)",
				 n_cmps, n_ops, ETCD_MAX_TXN_OPS);
	if (!req)
		return -ENOMEM;
	if (n_cmps) {
		arr = json_object_new_array();
		if (jadd(req, "compare", arr) < 0)
			return -ENOMEM;
		for (size_t i = 0; i < n_cmps; i++)
			if (jpush(arr, cmp_json(&cmps[i])) < 0)
				return -EINVAL; /* or ENOMEM: the bad comparison is the likelier */
	}
	if (n_ops) {
		arr = json_object_new_array();
		if (jadd(req, "success", arr) < 0)
			return -ENOMEM;
		for (size_t i = 0; i < n_ops; i++)
			if (jpush(arr, op_json(&ops[i])) < 0)
				return -EINVAL;
	}
	r = etcd_call(e, "/v3/kv/txn", req, txn_raw_size(cmps, n_cmps, ops, n_ops), false, &ans);
	if (r < 0)
		return r;
	if (header_revision(ans, &rev) < 0)
		return set_error(-EPROTO, "etcd: a txn answer without a revision");
	if (!jget_bool(ans, "succeeded"))
		return -ESTALE;
	if (ret_rev)
		*ret_rev = rev;
	return 0;
}

int etcd_create(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t *ret_rev)
{
	int r;

	if (!*key)
		return -EINVAL;
	r = etcd_txn(e, &(struct etcd_cmp){ key, ETCD_CMP_CREATE, 0 }, 1,
		     &(struct etcd_op){ ETCD_OP_PUT, key, val, len, lease }, 1, ret_rev);
	return r == -ESTALE ? -EEXIST : r;
}

int etcd_put_fenced(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t mod_rev,
		    int64_t *ret_rev)
{
	if (!*key)
		return -EINVAL;
	return etcd_txn(e, &(struct etcd_cmp){ key, ETCD_CMP_MOD, mod_rev }, 1,
			&(struct etcd_op){ ETCD_OP_PUT, key, val, len, lease }, 1, ret_rev);
}

int etcd_delete(struct etcd *e, const char *key, int64_t *ret_deleted)
{
	_cleanup_json_ json_object *req = NULL, *ans = NULL;
	int64_t n;
	int r;

	if (!*key)
		return -EINVAL;
	req = key_op(key);
	if (!req)
		return -ENOMEM;
	r = etcd_call(e, "/v3/kv/deleterange", req, strlen(key) + 16, true, &ans);
	if (r < 0)
		return r;
	if (json_int64(ans, "deleted", &n) < 0 || n < 0)
		return set_error(-EPROTO, "etcd: a delete answer with a bad count");
	if (ret_deleted)
		*ret_deleted = n;
	return 0;
}

int etcd_delete_fenced(struct etcd *e, const char *key, int64_t mod_rev)
{
	if (!*key)
		return -EINVAL;
	return etcd_txn(e, &(struct etcd_cmp){ key, ETCD_CMP_MOD, mod_rev }, 1,
			&(struct etcd_op){ ETCD_OP_DELETE, key, NULL, 0, 0 }, 1, NULL);
}

/* A range request's body: key alone, or [key, end) when end is given. */
static json_object *range_request(const char *key, size_t klen, const char *end, size_t elen)
{
	json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	if (jadd(o, "key", jbytes(key, klen)) < 0 || (end && jadd(o, "range_end", jbytes(end, elen)) < 0)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

/* Runs a range request and decodes its answer. */
static int range_call(struct etcd *e, json_object *req, size_t raw, struct etcd_kv **ret_kvs, size_t *ret_n,
		      int64_t *ret_rev)
{
	_cleanup_json_ json_object *ans = NULL;
	int r;

	r = etcd_call(e, "/v3/kv/range", req, raw, true, &ans);
	if (r < 0)
		return r;
	r = range_from_json(ans, ret_kvs, ret_n, ret_rev);
	if (r == -EPROTO)
		return set_error(r, "etcd: a malformed range answer");
	return r;
}

int etcd_get(struct etcd *e, const char *key, struct etcd_kv *ret)
{
	_cleanup_json_ json_object *req = NULL;
	struct etcd_kv *kvs = NULL;
	size_t n = 0;
	int r;

	if (!*key)
		return -EINVAL;
	req = range_request(key, strlen(key), NULL, 0);
	if (!req)
		return -ENOMEM;
	r = range_call(e, req, strlen(key) + 16, &kvs, &n, NULL);
	if (r < 0)
		return r;
	if (n != 1 || strcmp(kvs[0].key, key)) {
		etcd_kvs_free(kvs, n);
		return n == 0 ? -ENOENT : set_error(-EPROTO, "etcd: a get answered another key");
	}
	*ret = kvs[0];
	free(kvs);
	return 0;
}

static json_object *prefix_request(const char *prefix)
{
	_cleanup_free_ char *end = NULL;
	size_t elen, plen = strlen(prefix);

	if (etcd_prefix_end(prefix, plen, &end, &elen) < 0)
		return NULL;
	/* the empty prefix: every key, from "\0" */
	return plen ? range_request(prefix, plen, end, elen) : range_request("", 1, end, elen);
}

int etcd_range_prefix(struct etcd *e, const char *prefix, struct etcd_kv **ret_kvs, size_t *ret_n, int64_t *ret_rev)
{
	_cleanup_json_ json_object *req = prefix_request(prefix);

	if (!req)
		return -ENOMEM;
	return range_call(e, req, 2 * strlen(prefix) + 16, ret_kvs, ret_n, ret_rev);
}

/* ---- the watch ---- */

struct etcd_watch {
	struct etcd *e;
	char *prefix;
	struct etcd_watch_cb cb;
	int64_t start_rev; /* etcd_watch_start_from: the state the caller has (0: none) */
	CURLM *multi;	   /* woken by etcd_watch_stop */
	CURL *h;
	atomic_bool stop;
	pthread_t thread;
	/* the rest is the watch thread's own */
	struct etcd_wdec dec;
	bool connected;
	char why[512];
};

static void watch_say(struct etcd_watch *w, bool connected, const char *why)
{
	w->connected = connected;
	if (w->cb.state)
		w->cb.state(w->cb.ctx, connected, why);
}

static void watch_event(void *ctx, const struct etcd_event *ev)
{
	struct etcd_watch *w = ctx;

	if (w->dec.created && !w->connected)
		watch_say(w, true, NULL);
	if (w->cb.event)
		w->cb.event(w->cb.ctx, ev);
}

static size_t watch_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct etcd_watch *w = ud;
	size_t n = size * nmemb;

	if (etcd_watch_feed(&w->dec, ptr, n) < 0)
		return 0; /* aborts the transfer: dec.why says why */
	if (w->dec.created && !w->connected)
		watch_say(w, true, NULL);
	return n;
}

/* Runs h on the watch's multi handle until it is done or the watch is stopped (-ECANCELED). */
static int watch_perform(struct etcd_watch *w, CURLcode *ret)
{
	CURLcode res = CURLE_OK;
	int running = 1, r = 0;

	if (curl_multi_add_handle(w->multi, w->h) != CURLM_OK)
		return -ENOMEM;
	for (;;) {
		CURLMsg *msg;
		int left;

		if (atomic_load(&w->stop)) {
			r = -ECANCELED;
			break;
		}
		if (curl_multi_perform(w->multi, &running) != CURLM_OK) {
			res = CURLE_OUT_OF_MEMORY;
			break;
		}
		if (!running) {
			while ((msg = curl_multi_info_read(w->multi, &left)))
				if (msg->msg == CURLMSG_DONE)
					res = msg->data.result;
			break;
		}
		curl_multi_poll(w->multi, NULL, 0, 1000, NULL);
	}
	curl_multi_remove_handle(w->multi, w->h);
	*ret = res;
	return r;
}

/* Sleeps ms, or less if the watch is stopped. */
static void watch_sleep(struct etcd_watch *w, unsigned ms)
{
	uint64_t end = now_ns() + (uint64_t)ms * 1000000u;

	for (uint64_t now; !atomic_load(&w->stop) && (now = now_ns()) < end;)
		curl_multi_poll(w->multi, NULL, 0, (int)((end - now) / 1000000u) + 1, NULL);
}

/* The range read that starts a watch: reset() with the whole state. */
static int watch_range(struct etcd_watch *w, const char *url, int64_t *ret_rev)
{
	_cleanup_json_ json_object *req = prefix_request(w->prefix), *ans = NULL;
	_cleanup_free_ char *u = strjoin(url, "/v3/kv/range", NULL);
	struct buf b = { 0 };
	struct etcd_kv *kvs;
	const char *body;
	long status = 0;
	CURLcode cc;
	size_t n;
	int64_t rev;
	int r;

	body = req ? json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN) : NULL;
	if (!body || !u)
		return -ENOMEM;
	if (request_setup(w->e, w->h, u, body, strlen(body), w->e->timeout_ms, buf_write, &b) < 0)
		return -EINVAL;
	r = watch_perform(w, &cc);
	if (r == 0 && cc != CURLE_OK) {
		snprintf(w->why, sizeof(w->why), "etcd watch: %s: %s", url, curl_easy_strerror(cc));
		r = -EAGAIN;
	} else if (r == 0) {
		curl_easy_getinfo(w->h, CURLINFO_RESPONSE_CODE, &status);
		r = answer_decode(url, status, &b, &ans);
		if (r == 0)
			r = range_from_json(ans, &kvs, &n, &rev);
		if (r < 0)
			snprintf(w->why, sizeof(w->why), "etcd watch: %s", r == -EPROTO ? "a malformed range answer" : etcd_error());
	}
	free(b.data);
	if (r < 0)
		return r;
	if (w->cb.reset)
		w->cb.reset(w->cb.ctx, kvs, n, rev);
	etcd_kvs_free(kvs, n);
	*ret_rev = rev;
	return 0;
}

static json_object *watch_request(const char *prefix, int64_t start_rev)
{
	_cleanup_json_ json_object *range = prefix_request(prefix), *o = json_object_new_object(),
				   *top = json_object_new_object();
	json_object *key, *end;

	if (!range || !o || !top || !json_object_object_get_ex(range, "key", &key) ||
	    !json_object_object_get_ex(range, "range_end", &end) || jadd(o, "key", json_object_get(key)) < 0 ||
	    jadd(o, "range_end", json_object_get(end)) < 0 || jadd(o, "start_revision", jint64(start_rev)) < 0 ||
	    jadd(o, "prev_kv", json_object_new_boolean(1)) < 0 || jadd(top, "create_request", TAKE_PTR(o)) < 0)
		return NULL;
	return TAKE_PTR(top);
}

/*
 * The stream of events after rev, until it breaks. Returns -ESTALE when
 * the store was compacted past rev (the decoder says to where), another
 * negative errno otherwise (w->why says why; -ECANCELED: stopped).
 */
static int watch_stream(struct etcd_watch *w, const char *url, int64_t *rev)
{
	_cleanup_json_ json_object *req = watch_request(w->prefix, *rev + 1);
	_cleanup_free_ char *u = strjoin(url, "/v3/watch", NULL);
	const char *body;
	CURLcode cc;
	int r;

	body = req ? json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN) : NULL;
	if (!body || !u)
		return -ENOMEM;
	r = etcd_wdec_init(&w->dec, watch_event, w);
	if (r < 0)
		return r;
	/* no overall timeout: the stream lasts; connecting is bounded */
	if (request_setup(w->e, w->h, u, body, strlen(body), 0, watch_write, w) < 0 ||
	    curl_easy_setopt(w->h, CURLOPT_CONNECTTIMEOUT_MS, (long)w->e->timeout_ms) ||
	    curl_easy_setopt(w->h, CURLOPT_TCP_KEEPIDLE, 5L) || curl_easy_setopt(w->h, CURLOPT_TCP_KEEPINTVL, 2L)) {
		etcd_wdec_done(&w->dec);
		return -EINVAL;
	}
	r = watch_perform(w, &cc);
	if (w->dec.rev > *rev)
		*rev = w->dec.rev;
	if (r == 0 && cc == CURLE_WRITE_ERROR) {
		r = w->dec.compact_rev ? -ESTALE : -EPROTO;
		snprintf(w->why, sizeof(w->why), "%s (%s)", w->dec.why, url);
	} else if (r == 0) {
		r = -EAGAIN;
		snprintf(w->why, sizeof(w->why), "etcd watch: %s: %s", url,
			 cc == CURLE_OK ? "the stream ended" : curl_easy_strerror(cc));
	}
	etcd_wdec_done(&w->dec);
	return r;
}

static void *watch_main(void *arg)
{
	struct etcd_watch *w = arg;
	struct etcd *e = w->e;
	size_t idx = atomic_load(&e->good);
	unsigned backoff = BACKOFF_MIN_MS;
	int64_t rev = w->start_rev;
	bool need_reset = rev == 0, said = false, compacted = false;

	while (!atomic_load(&w->stop)) {
		const char *url = e->urls[idx % e->n_urls];
		int r = 0;

		if (need_reset)
			r = watch_range(w, url, &rev);
		if (r == 0) {
			need_reset = false;
			r = watch_stream(w, url, &rev);
		}
		if (r == -ECANCELED && atomic_load(&w->stop))
			break;
		if (w->connected)
			backoff = BACKOFF_MIN_MS; /* it worked for a while */
		if (w->connected || !said)
			watch_say(w, false, w->why);
		said = true;
		need_reset = true;
		/* compacted: read the state again now (once: a member that says so again waits) */
		if (r == -ESTALE && !compacted) {
			compacted = true;
			continue;
		}
		compacted = false;
		idx++;
		watch_sleep(w, backoff);
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
	}
	return NULL;
}

static void watch_free(struct etcd_watch *w)
{
	if (!w)
		return;
	if (w->h)
		curl_easy_cleanup(w->h);
	if (w->multi)
		curl_multi_cleanup(w->multi);
	free(w->prefix);
	free(w);
}

int etcd_watch_start_from(struct etcd *e, const char *prefix, int64_t rev, const struct etcd_watch_cb *cb,
			  struct etcd_watch **ret)
{
	struct etcd_watch *w;
	int r;

	if (rev < 0)
		return -EINVAL;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->e = e;
	w->cb = *cb;
	w->start_rev = rev;
	w->prefix = strdup(prefix);
	w->multi = curl_multi_init();
	w->h = curl_easy_init();
	if (!w->prefix || !w->multi || !w->h) {
		watch_free(w);
		return -ENOMEM;
	}
	r = thread_create(&w->thread, NULL, watch_main, w);
	if (r) {
		watch_free(w);
		return -r;
	}
	*ret = w;
	return 0;
}

int etcd_watch_start(struct etcd *e, const char *prefix, const struct etcd_watch_cb *cb, struct etcd_watch **ret)
{
	return etcd_watch_start_from(e, prefix, 0, cb, ret);
}

void etcd_watch_stop(struct etcd_watch *w)
{
	if (!w)
		return;
	atomic_store(&w->stop, true);
	curl_multi_wakeup(w->multi);
	pthread_join(w->thread, NULL);
	watch_free(w);
}
