/*
 * The host-to-host protocol, calling side (peer.h; the wire format is at
 * the top of peer_server.c): libcurl, one easy handle per request in
 * flight, kept in a pool by peer address so its connection stays open
 * (keepalive) for the next call.
 *
 * Timeouts: a connect gives up after 2 s; there is no total timeout (a read
 * may block for minutes on the peer: a process's output, wait), and no
 * low-speed limit; TCP keepalive finds a peer host that died under a
 * blocked call.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "peer.h"
#include "peer_wire.h"

#define CONNECT_TIMEOUT_MS 2000L
/* idle connections are closed before the server's 120 s idle timeout would */
#define MAX_IDLE_AGE_S 60L
#define POOL_MAX_IDLE 64
/* the largest answer that is not a read's bytes (a readdir of a big directory) */
#define REPLY_MAX (64u << 20)

struct pooled {
	char *addr;
	CURL *easy;
	struct pooled *next;
};

struct peer_client {
	char *self;
	uint8_t *secret;
	size_t secret_len;
	pthread_mutex_t lock;
	struct pooled *idle; /* protected by lock */
	unsigned n_idle;     /* protected by lock */
	atomic_bool aborted; /* peer_client_abort: every call ends */
};

/* libcurl calls this at least once a second while a transfer waits: an aborted client ends it. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	struct peer_client *pc = arg;

	(void)dt, (void)dn, (void)ut, (void)un;
	return atomic_load(&pc->aborted) ? 1 : 0;
}

void peer_client_abort(struct peer_client *pc)
{
	atomic_store(&pc->aborted, true);
}

static __thread char last_error[256];

const char *peer_error(void)
{
	return last_error;
}

static int fail(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return r;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void curl_init(void)
{
	curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int peer_client_new(const char *self, const void *secret, size_t secret_len, struct peer_client **ret)
{
	struct peer_client *pc;

	if (!peer_wire_host_ok(self) || secret_len == 0)
		return -EINVAL;
	pthread_once(&curl_once, curl_init);
	if (curl_init_result != CURLE_OK)
		return -ENOMEM;
	if (!(pc = calloc(1, sizeof(*pc))))
		return -ENOMEM;
	pthread_mutex_init(&pc->lock, NULL);
	if (!(pc->self = strdup(self)) || !(pc->secret = malloc(secret_len))) {
		peer_client_free(pc);
		return -ENOMEM;
	}
	memcpy(pc->secret, secret, secret_len);
	pc->secret_len = secret_len;
	*ret = pc;
	return 0;
}

static void pooled_free(struct pooled *p)
{
	if (!p)
		return;
	if (p->easy)
		curl_easy_cleanup(p->easy);
	free(p->addr);
	free(p);
}

void peer_client_free(struct peer_client *pc)
{
	struct pooled *p, *next;

	if (!pc)
		return;
	for (p = pc->idle; p; p = next) {
		next = p->next;
		pooled_free(p);
	}
	pthread_mutex_destroy(&pc->lock);
	free(pc->self);
	free(pc->secret);
	free(pc);
}

/* ---- the pool ---- */

static struct pooled *pool_take(struct peer_client *pc, const char *addr)
{
	struct pooled **pp, *p = NULL;
	CURL *e;

	pthread_mutex_lock(&pc->lock);
	for (pp = &pc->idle; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->addr, addr) == 0) {
			p = *pp;
			*pp = p->next;
			pc->n_idle--;
			break;
		}
	pthread_mutex_unlock(&pc->lock);
	if (p)
		return p;
	if (!(p = calloc(1, sizeof(*p))) || !(p->addr = strdup(addr)) || !(p->easy = e = curl_easy_init())) {
		pooled_free(p);
		return NULL;
	}
	/* what every request of this handle shares */
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 10L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 5L);
	curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, MAX_IDLE_AGE_S);
	curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(e, CURLOPT_PROXY, ""); /* never through an http_proxy of the environment */
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	return p;
}

/* Back to the pool after a complete exchange (its connection is good), or freed. */
static void pool_give(struct peer_client *pc, struct pooled *p, bool reuse)
{
	if (reuse) {
		pthread_mutex_lock(&pc->lock);
		if (pc->n_idle < POOL_MAX_IDLE) {
			p->next = pc->idle;
			pc->idle = p;
			pc->n_idle++;
			p = NULL;
		}
		pthread_mutex_unlock(&pc->lock);
	}
	pooled_free(p);
}

/* ---- one exchange ---- */

struct reply {
	CURL *easy;
	long status;
	/* a read's bytes go straight into the caller's buffer */
	char *fixed;
	size_t fixed_cap;
	/* anything else (JSON; an error) */
	char *buf;
	size_t len, cap;
	bool overflow;
};

static size_t on_data(char *data, size_t size, size_t nmemb, void *arg)
{
	struct reply *r = arg;
	size_t n = size * nmemb;

	if (!r->status)
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
	if (r->fixed && r->status == 200) {
		if (n > r->fixed_cap - r->len) {
			r->overflow = true;
			return 0;
		}
		memcpy(r->fixed + r->len, data, n);
		r->len += n;
		return n;
	}
	if (r->len + n > REPLY_MAX) {
		r->overflow = true;
		return 0;
	}
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 1024;
		char *b;

		while (cap < r->len + n + 1)
			cap *= 2;
		if (!(b = realloc(r->buf, cap)))
			return 0;
		r->buf = b;
		r->cap = cap;
	}
	memcpy(r->buf + r->len, data, n);
	r->len += n;
	r->buf[r->len] = 0;
	return n;
}

static json_object *json_parse(const char *s, size_t len)
{
	json_tokener *tok = json_tokener_new();
	json_object *o;

	if (!tok)
		return NULL;
	o = json_tokener_parse_ex(tok, s, (int)len);
	if (o && (json_tokener_get_error(tok) != json_tokener_success ||
		  (size_t)json_tokener_get_parse_end(tok) != len || !json_object_is_type(o, json_type_object))) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

/* A non-200 answer: the server's errno (its text in peer_error()), or -EHOSTUNREACH when it says none. */
static int answer_error(const char *addr, const char *uri, struct reply *r, char **ret_reason)
{
	_cleanup_(peer_json_putp) json_object *o = r->buf ? json_parse(r->buf, r->len) : NULL;
	json_object *e, *t;
	int64_t n;

	if (!o || !json_object_object_get_ex(o, "errno", &e) || !json_object_is_type(e, json_type_int) ||
	    (n = json_object_get_int64(e)) <= 0 || n > 4095)
		return fail(-EHOSTUNREACH, "%s: %s: HTTP %ld without an errno", addr, uri, r->status);
	t = json_object_object_get_ex(o, "error", &t) && json_object_is_type(t, json_type_string) ? t : NULL;
	fail(-(int)n, "%s: %s: %s", addr, uri, t ? json_object_get_string(t) : strerror((int)n));
	if (ret_reason && t)
		*ret_reason = strdup(json_object_get_string(t));
	return -(int)n;
}

/*
 * POSTs body to addr's uri, signed. 0 with r filled on a 200 answer; the
 * server's -errno; -EHOSTUNREACH when no answer came (peer_error() says why).
 */
static int exchange(struct peer_client *pc, const char *addr, const char *uri, const void *body, size_t blen,
		    struct reply *r, char **ret_reason)
{
	char url[512], tstr[24], mac[SHA256_HEX_LEN + 1], h[3][PEER_HOST_MAX + 64], errbuf[CURL_ERROR_SIZE] = "";
	/* "Expect:" off: no wait for a 100 Continue before a large write's body */
	const char *lines[] = {h[0], h[1], h[2], "Expect:", "Content-Type: application/octet-stream"};
	struct curl_slist *hdrs = NULL, *l;
	struct sha256_ctx c;
	uint8_t sha[SHA256_LEN];
	struct pooled *p;
	CURLcode cc;

	if (atomic_load(&pc->aborted))
		return fail(-ESHUTDOWN, "%s: %s: this host is stopping", addr ? addr : "", uri);
	/* HOST:PORT or [V6]:PORT, nothing that would make another URL (a user, a path) */
	if (!addr || !*addr || addr[strspn(addr, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:[]")])
		return fail(-EINVAL, "%s: not HOST:PORT", addr ? addr : "(null)");
	if (snprintf(url, sizeof(url), "http://%s%s", addr, uri) >= (int)sizeof(url))
		return fail(-EINVAL, "%s: the address is too long", addr);
	snprintf(tstr, sizeof(tstr), "%lld", (long long)time(NULL));
	sha256_init(&c);
	if (blen)
		sha256_update(&c, body, blen);
	sha256_final(&c, sha);
	peer_wire_mac(pc->secret, pc->secret_len, pc->self, "POST", uri, tstr, sha, mac);
	snprintf(h[0], sizeof(h[0]), PEER_HDR_HOST ": %s", pc->self);
	snprintf(h[1], sizeof(h[1]), PEER_HDR_TIME ": %s", tstr);
	snprintf(h[2], sizeof(h[2]), PEER_HDR_MAC ": %s", mac);
	for (size_t i = 0; i < ARRAY_SIZE(lines); i++) {
		if (!(l = curl_slist_append(hdrs, lines[i]))) {
			curl_slist_free_all(hdrs);
			return fail(-ENOMEM, "out of memory");
		}
		hdrs = l;
	}
	if (!(p = pool_take(pc, addr))) {
		curl_slist_free_all(hdrs);
		return fail(-ENOMEM, "out of memory");
	}
	r->easy = p->easy;
	curl_easy_setopt(p->easy, CURLOPT_URL, url);
	curl_easy_setopt(p->easy, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(p->easy, CURLOPT_POSTFIELDS, blen ? body : "");
	curl_easy_setopt(p->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
	curl_easy_setopt(p->easy, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(p->easy, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(p->easy, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(p->easy, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(p->easy, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(p->easy, CURLOPT_XFERINFODATA, pc);
	cc = curl_easy_perform(p->easy);
	curl_easy_setopt(p->easy, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(p->easy, CURLOPT_ERRORBUFFER, NULL);
	curl_slist_free_all(hdrs);
	if (cc == CURLE_OK)
		curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &r->status);
	pool_give(pc, p, cc == CURLE_OK);
	r->easy = NULL;
	if (r->overflow)
		return fail(-EHOSTUNREACH, "%s: %s: the answer is larger than asked for", addr, uri);
	if (cc == CURLE_ABORTED_BY_CALLBACK)
		return fail(-ESHUTDOWN, "%s: %s: this host is stopping", addr, uri);
	if (cc != CURLE_OK)
		return fail(-EHOSTUNREACH, "%s: %s: %s", addr, uri, errbuf[0] ? errbuf : curl_easy_strerror(cc));
	if (r->status != 200)
		return answer_error(addr, uri, r, ret_reason);
	return 0;
}

static void reply_done(struct reply *r)
{
	free(r->buf);
	r->buf = NULL;
}

/*
 * A JSON op: args (taken) gets the caller's credentials; on success
 * *ret (may be NULL) is the answer's object.
 */
static int call_json(struct peer_client *pc, const char *addr, enum peer_op op, const struct peer_cred *cr,
		     json_object *args, json_object **ret, char **ret_reason)
{
	_cleanup_(peer_json_putp) json_object *a = args;
	struct reply r = {0};
	char uri[32];
	const char *s;
	json_object *o;
	int k;

	if (!a || !cr)
		return fail(a ? -EINVAL : -ENOMEM, "%s", a ? "no credentials" : "out of memory");
	json_object_object_add(a, "uid", json_object_new_int64(cr->uid));
	json_object_object_add(a, "gid", json_object_new_int64(cr->gid));
	if (!(s = json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN)))
		return fail(-ENOMEM, "out of memory");
	snprintf(uri, sizeof(uri), "/v1/%s", peer_op_name(op));
	k = exchange(pc, addr, uri, s, strlen(s), &r, ret_reason);
	if (k == 0 && ret) {
		if (!(o = r.buf ? json_parse(r.buf, r.len) : NULL))
			k = fail(-EHOSTUNREACH, "%s: %s: the answer is not a JSON object", addr, uri);
		else
			*ret = o;
	}
	reply_done(&r);
	return k;
}

/* {"path": path} plus one more key (NULL: none). A NULL path goes as null: the server's EINVAL. */
static json_object *args_path(const char *path, const char *key, json_object *val)
{
	json_object *a = json_object_new_object();

	if (!a || json_object_object_add(a, "path", path ? json_object_new_string(path) : NULL) < 0) {
		json_object_put(a);
		json_object_put(val);
		return NULL;
	}
	if (key && json_object_object_add(a, key, val) < 0) {
		json_object_put(a);
		return NULL;
	}
	return a;
}

static int get_i64(json_object *o, const char *key, int64_t *ret)
{
	json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return -EHOSTUNREACH;
	*ret = json_object_get_int64(v);
	return 0;
}

int peer_stat(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, struct stat *st)
{
	_cleanup_(peer_json_putp) json_object *o = NULL;
	int64_t v[11];
	static const char *const keys[] = {"mode",  "size",	"nlink", "uid",	  "gid",      "atime",
					   "atime_ns", "mtime", "mtime_ns", "ctime", "ctime_ns"};
	int k = call_json(pc, addr, PEER_OP_STAT, cr, args_path(path, NULL, NULL), &o, NULL);

	if (k < 0)
		return k;
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		if (get_i64(o, keys[i], &v[i]) < 0)
			return fail(-EHOSTUNREACH, "%s: stat: the answer lacks %s", addr, keys[i]);
	memset(st, 0, sizeof(*st));
	st->st_mode = (mode_t)v[0];
	st->st_size = (off_t)v[1];
	st->st_nlink = (nlink_t)v[2];
	st->st_uid = (uid_t)v[3];
	st->st_gid = (gid_t)v[4];
	st->st_atim = (struct timespec){.tv_sec = (time_t)v[5], .tv_nsec = (long)v[6]};
	st->st_mtim = (struct timespec){.tv_sec = (time_t)v[7], .tv_nsec = (long)v[8]};
	st->st_ctim = (struct timespec){.tv_sec = (time_t)v[9], .tv_nsec = (long)v[10]};
	return 0;
}

void peer_dirents_free(struct peer_dirent *d, size_t n)
{
	if (!d)
		return;
	for (size_t i = 0; i < n; i++)
		free(d[i].name);
	free(d);
}

int peer_readdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path,
		 struct peer_dirent **ret, size_t *ret_n)
{
	_cleanup_(peer_json_putp) json_object *o = NULL;
	json_object *a, *e, *name;
	struct peer_dirent *d;
	size_t n;
	int64_t mode;
	int k = call_json(pc, addr, PEER_OP_READDIR, cr, args_path(path, NULL, NULL), &o, NULL);

	if (k < 0)
		return k;
	if (!json_object_object_get_ex(o, "entries", &a) || !json_object_is_type(a, json_type_array))
		return fail(-EHOSTUNREACH, "%s: readdir: the answer lacks entries", addr);
	n = json_object_array_length(a);
	if (!(d = calloc(n ? n : 1, sizeof(*d))))
		return fail(-ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		e = json_object_array_get_idx(a, i);
		if (!json_object_is_type(e, json_type_object) || !json_object_object_get_ex(e, "name", &name) ||
		    !json_object_is_type(name, json_type_string) || get_i64(e, "mode", &mode) < 0) {
			peer_dirents_free(d, i);
			return fail(-EHOSTUNREACH, "%s: readdir: a bad entry in the answer", addr);
		}
		d[i].mode = (mode_t)mode;
		if (!(d[i].name = strdup(json_object_get_string(name)))) {
			peer_dirents_free(d, i);
			return fail(-ENOMEM, "out of memory");
		}
	}
	*ret = d;
	*ret_n = n;
	return 0;
}

int peer_open(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, int flags,
	      mode_t mode, uint64_t *ret_handle)
{
	_cleanup_(peer_json_putp) json_object *o = NULL;
	json_object *a = args_path(path, "flags", json_object_new_int64(peer_wire_flags_encode(flags)));
	int64_t h;
	int k;

	if (a && json_object_object_add(a, "mode", json_object_new_int64(mode & 07777)) < 0) {
		json_object_put(a);
		a = NULL;
	}
	k = call_json(pc, addr, PEER_OP_OPEN, cr, a, &o, NULL);
	if (k < 0)
		return k;
	if (get_i64(o, "handle", &h) < 0)
		return fail(-EHOSTUNREACH, "%s: open: the answer lacks the handle", addr);
	*ret_handle = (uint64_t)h;
	return 0;
}

ssize_t peer_read(struct peer_client *pc, const char *addr, uint64_t handle, off_t off, void *buf, size_t size)
{
	struct reply r = {.fixed = buf, .fixed_cap = size};
	char uri[96];
	int k;

	if (off < 0)
		return fail(-EINVAL, "a negative offset");
	if (size > PEER_BODY_MAX)
		size = r.fixed_cap = PEER_BODY_MAX; /* a short read, as read(2) may give */
	snprintf(uri, sizeof(uri), "/v1/read/%" PRIu64 "/%lld/%zu", handle, (long long)off, size);
	k = exchange(pc, addr, uri, NULL, 0, &r, NULL);
	reply_done(&r);
	return k < 0 ? k : (ssize_t)r.len;
}

ssize_t peer_write(struct peer_client *pc, const char *addr, uint64_t handle, off_t off, const void *buf, size_t size)
{
	_cleanup_(peer_json_putp) json_object *o = NULL;
	struct reply r = {0};
	char uri[96];
	int64_t n = 0;
	int k;

	if (off < 0)
		return fail(-EINVAL, "a negative offset");
	snprintf(uri, sizeof(uri), "/v1/write/%" PRIu64 "/%lld", handle, (long long)off);
	k = exchange(pc, addr, uri, buf, size, &r, NULL);
	if (k == 0 && (!(o = r.buf ? json_parse(r.buf, r.len) : NULL) || get_i64(o, "n", &n) < 0 || n < 0 ||
		       (uint64_t)n > size))
		k = fail(-EHOSTUNREACH, "%s: write: the answer lacks a count", addr);
	reply_done(&r);
	return k < 0 ? k : (ssize_t)n;
}

static int call_handle(struct peer_client *pc, const char *addr, enum peer_op op, uint64_t handle)
{
	struct reply r = {0};
	char uri[64];
	int k;

	snprintf(uri, sizeof(uri), "/v1/%s/%" PRIu64, peer_op_name(op), handle);
	k = exchange(pc, addr, uri, NULL, 0, &r, NULL);
	reply_done(&r);
	return k;
}

int peer_fsync(struct peer_client *pc, const char *addr, uint64_t handle)
{
	return call_handle(pc, addr, PEER_OP_FSYNC, handle);
}

int peer_flush(struct peer_client *pc, const char *addr, uint64_t handle)
{
	return call_handle(pc, addr, PEER_OP_FLUSH, handle);
}

int peer_release(struct peer_client *pc, const char *addr, uint64_t handle)
{
	return call_handle(pc, addr, PEER_OP_RELEASE, handle);
}

int peer_mkdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, mode_t mode)
{
	return call_json(pc, addr, PEER_OP_MKDIR, cr, args_path(path, "mode", json_object_new_int64(mode & 07777)),
			 NULL, NULL);
}

int peer_rmdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path)
{
	return call_json(pc, addr, PEER_OP_RMDIR, cr, args_path(path, NULL, NULL), NULL, NULL);
}

int peer_unlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path)
{
	return call_json(pc, addr, PEER_OP_UNLINK, cr, args_path(path, NULL, NULL), NULL, NULL);
}

int peer_rename(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *from, const char *to)
{
	return call_json(pc, addr, PEER_OP_RENAME, cr, args_path(from, "to", to ? json_object_new_string(to) : NULL),
			 NULL, NULL);
}

int peer_symlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *target,
		 const char *path)
{
	return call_json(pc, addr, PEER_OP_SYMLINK, cr,
			 args_path(path, "target", target ? json_object_new_string(target) : NULL), NULL, NULL);
}

int peer_readlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path,
		  char **ret_target)
{
	_cleanup_(peer_json_putp) json_object *o = NULL;
	json_object *t;
	char *s;
	int k = call_json(pc, addr, PEER_OP_READLINK, cr, args_path(path, NULL, NULL), &o, NULL);

	if (k < 0)
		return k;
	if (!json_object_object_get_ex(o, "target", &t) || !json_object_is_type(t, json_type_string))
		return fail(-EHOSTUNREACH, "%s: readlink: the answer lacks the target", addr);
	if (!(s = strdup(json_object_get_string(t))))
		return fail(-ENOMEM, "out of memory");
	*ret_target = s;
	return 0;
}

int peer_truncate(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, off_t size)
{
	if (size < 0)
		return fail(-EINVAL, "a negative size");
	return call_json(pc, addr, PEER_OP_TRUNCATE, cr, args_path(path, "size", json_object_new_int64(size)), NULL,
			 NULL);
}

int peer_chmod(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, mode_t mode)
{
	return call_json(pc, addr, PEER_OP_CHMOD, cr, args_path(path, "mode", json_object_new_int64(mode & 07777)),
			 NULL, NULL);
}

int peer_destroy(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *tpl,
		 const char *name)
{
	json_object *a = json_object_new_object(), *j = json_object_new_object();
	int r;

	json_object_object_add(j, "name", json_object_new_string(name));
	json_object_object_add(a, "tpl", json_object_new_string(tpl));
	json_object_object_add(a, "json", json_object_new_string(json_object_to_json_string_ext(j, JSON_C_TO_STRING_PLAIN)));
	json_object_put(j);
	r = call_json(pc, addr, PEER_OP_DESTROY, cr, a, NULL, NULL);
	return r;
}

int peer_create(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *tpl,
		const char *json, size_t len, char **ret_reason)
{
	json_object *a;

	if (len > PEER_JSON_MAX / 2)
		return fail(-E2BIG, "the settings are larger than %u bytes", PEER_JSON_MAX / 2);
	a = json_object_new_object();
	if (a && (!tpl || !json || json_object_object_add(a, "tpl", json_object_new_string(tpl)) < 0 ||
		  json_object_object_add(a, "json", json_object_new_string_len(json, (int)len)) < 0)) {
		json_object_put(a);
		return fail(-EINVAL, "no template or settings");
	}
	return call_json(pc, addr, PEER_OP_CREATE, cr, a, NULL, ret_reason);
}
