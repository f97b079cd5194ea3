/*
 * The store's client and the host's chunk cache (objstore.h).
 *
 * HTTP with libcurl: a pool of easy handles (each keeps its connection
 * alive), timeouts, retries with backoff for what may pass (a connection
 * refused or reset, a 5xx), none for what will not (404, a bad digest).
 * The cache: one file per chunk under cache_dir/chunks, named by its
 * digest, written to a temporary name and renamed once its digest matched;
 * an index in memory with LRU order (a file's mtime carries it across
 * restarts); the bytes kept within limit_bytes. A chunk found on disk at
 * start is checked again at its first use in this run.
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "objstore.h"
#include "objstore_internal.h"

#define TOUCH_EVERY_NS (30ull * 1000000000ull) /* a chunk's mtime follows its use this coarsely */
#define HASH_BUCKETS 4096u

enum centry_state { CE_PRESENT, CE_BUSY };

struct centry {
	char digest[OBJSTORE_DIGEST_HEX + 1];
	enum centry_state state;
	bool verified;	  /* checked in this run */
	uint64_t size;
	uint64_t touched_ns; /* the last mtime update */
	struct centry *hnext;
	struct centry *older, *newer; /* LRU: s->newest ... s->oldest */
};

/* ---- digests ---- */

int objstore_digest(const void *data, size_t len, char out[OBJSTORE_DIGEST_HEX + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (!EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) || n != SHA256_LEN)
		return -EIO;
	sha256_hex(md, out);
	return 0;
}

/* ---- the index (s->lock held) ---- */

static unsigned bucket(const char *d)
{
	return (unsigned)strtoul((char[9]){ d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], 0 }, NULL, 16) %
	       HASH_BUCKETS;
}

static struct centry *find(struct objstore *s, const char *d)
{
	for (struct centry *e = s->buckets[bucket(d)]; e; e = e->hnext)
		if (strcmp(e->digest, d) == 0)
			return e;
	return NULL;
}

static void lru_unlink(struct objstore *s, struct centry *e)
{
	if (e->older)
		e->older->newer = e->newer;
	else
		s->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		s->newest = e->older;
	e->older = e->newer = NULL;
}

static void lru_front(struct objstore *s, struct centry *e)
{
	if (s->newest == e)
		return;
	if (e->older || e->newer || s->oldest == e)
		lru_unlink(s, e);
	e->older = s->newest;
	if (s->newest)
		s->newest->newer = e;
	s->newest = e;
	if (!s->oldest)
		s->oldest = e;
}

static struct centry *insert(struct objstore *s, const char *d, enum centry_state st)
{
	struct centry *e = calloc(1, sizeof(*e));
	unsigned b;

	if (!e)
		return NULL;
	memcpy(e->digest, d, sizeof(e->digest));
	e->state = st;
	b = bucket(d);
	e->hnext = s->buckets[b];
	s->buckets[b] = e;
	lru_front(s, e);
	return e;
}

static void drop(struct objstore *s, struct centry *e)
{
	struct centry **pp = &s->buckets[bucket(e->digest)];

	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = e->hnext;
	lru_unlink(s, e);
	if (e->state == CE_PRESENT) {
		s->st.used_bytes -= e->size;
		s->st.chunks--;
	}
	free(e);
}

static char *chunk_path(const struct objstore *s, const char *d)
{
	return strjoin(s->chunk_dir, "/", d, NULL);
}

/* Oldest first, what nobody is writing or checking, until the cache fits. */
static void evict(struct objstore *s)
{
	struct centry *e = s->oldest;

	while (e && s->st.used_bytes > s->o.limit_bytes) {
		struct centry *next = e->newer;

		if (e->state == CE_PRESENT) {
			_cleanup_free_ char *p = chunk_path(s, e->digest);

			if (p)
				unlink(p);
			s->st.evictions++;
			drop(s, e);
		}
		e = next;
	}
}

static void note_error(struct objstore *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_error(struct objstore *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->st.last_error, sizeof(s->st.last_error), fmt, ap);
	va_end(ap);
	s->st.errors++;
}

/* ---- HTTP ---- */

struct membuf {
	char *p;
	size_t len, max;
	bool too_big;
};

static size_t on_body(char *data, size_t sz, size_t n, void *arg)
{
	struct membuf *b = arg;
	size_t len = sz * n;
	char *p;

	if (b->len + len > b->max) {
		b->too_big = true;
		return 0;
	}
	if (!(p = realloc(b->p, b->len + len + 1)))
		return 0;
	b->p = p;
	memcpy(b->p + b->len, data, len);
	b->len += len;
	b->p[b->len] = '\0';
	return len;
}

struct upload {
	const char *p;
	size_t len, off;
};

static size_t on_upload(char *dst, size_t sz, size_t n, void *arg)
{
	struct upload *u = arg;
	size_t len = sz * n < u->len - u->off ? sz * n : u->len - u->off;

	memcpy(dst, u->p + u->off, len);
	u->off += len;
	return len;
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	struct objstore *s = arg;

	return atomic_load(&s->stopping) ? 1 : 0; /* non-zero: curl aborts the transfer */
}

void objstore_stop(struct objstore *s)
{
	if (s)
		atomic_store(&s->stopping, true);
}

static CURL *handle_take(struct objstore *s)
{
	CURL *c = NULL;

	pthread_mutex_lock(&s->lock);
	if (s->n_idle)
		c = s->idle[--s->n_idle];
	pthread_mutex_unlock(&s->lock);
	return c ? c : curl_easy_init();
}

static void handle_give(struct objstore *s, CURL *c)
{
	pthread_mutex_lock(&s->lock);
	if (s->n_idle < ARRAY_SIZE(s->idle)) {
		s->idle[s->n_idle++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&s->lock);
	if (c)
		curl_easy_cleanup(c);
}

/*
 * One request with retries. GET (data NULL) fills *body up to max bytes;
 * PUT sends data. -ENOENT for a 404, -EFBIG for a body over max; why says
 * what failed last.
 */
static int http(struct objstore *s, const char *key, const void *data, size_t len, size_t max, struct membuf *body,
		char **why)
{
	_cleanup_free_ char *url = strjoin(s->o.url, key, NULL);
	char err[CURL_ERROR_SIZE];
	CURL *c;
	int r = -EIO;

	if (!url)
		return -ENOMEM;
	if (!(c = handle_take(s)))
		return -ENOMEM;
	for (unsigned attempt = 0; attempt <= s->o.retries; attempt++) {
		struct upload u = { .p = data, .len = len };
		long code = 0;
		CURLcode cr;

		if (atomic_load(&s->stopping)) {
			error_set(why, "store: %s: the daemon is stopping", key);
			r = -ECANCELED;
			break;
		}
		if (attempt) /* 50, 200, 800 ms */
			usleep((useconds_t)(50000u << (2 * (attempt - 1))));
		if (body) {
			free(body->p);
			*body = (struct membuf){ .max = max };
		}
		curl_easy_reset(c);
		err[0] = '\0';
		curl_easy_setopt(c, CURLOPT_URL, url);
		curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
		curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)s->o.timeout_ms);
		curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
		curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
		if (data) {
			curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
			curl_easy_setopt(c, CURLOPT_READFUNCTION, on_upload);
			curl_easy_setopt(c, CURLOPT_READDATA, &u);
			curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
		} else {
			curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
			curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
		}
		cr = curl_easy_perform(c);
		if (cr == CURLE_OK)
			curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
		if (cr == CURLE_OK && code >= 200 && code < 300) {
			r = 0;
			break;
		}
		if (cr == CURLE_OK && code == 404) {
			r = -ENOENT;
			error_set(why, "store: %s: not found (HTTP 404)", key);
			break;
		}
		if (body && body->too_big) {
			r = -EFBIG;
			error_set(why, "store: %s: larger than %zu bytes", key, max);
			break;
		}
		if (cr == CURLE_OK)
			error_set(why, "store: %s %s: HTTP %ld", data ? "PUT" : "GET", key, code);
		else
			error_set(why, "store: %s %s: %s", data ? "PUT" : "GET", key, err[0] ? err : curl_easy_strerror(cr));
		r = -EIO;
		if (cr == CURLE_OK && code >= 400 && code < 500 && code != 408 && code != 429)
			break; /* the request itself is wrong: trying again changes nothing */
	}
	handle_give(s, c);
	return r;
}

int objstore_get(struct objstore *s, const char *key, size_t max, char **ret, size_t *ret_len, char **why)
{
	struct membuf b = { .max = max };
	int r = http(s, key, NULL, 0, max, &b, why);

	if (r < 0) {
		free(b.p);
		return r;
	}
	if (!b.p && !(b.p = calloc(1, 1)))
		return -ENOMEM;
	*ret = b.p;
	if (ret_len)
		*ret_len = b.len;
	return 0;
}

int objstore_put(struct objstore *s, const char *key, const void *data, size_t len, char **why)
{
	return http(s, key, data ? data : "", len, 0, NULL, why);
}

/* ---- the cache ---- */

/* data (its digest checked by the caller) as the cache's file for d. */
static int cache_write(struct objstore *s, const char *d, const void *data, size_t len)
{
	_cleanup_free_ char *p = chunk_path(s, d);
	char tmp[PATH_MAX];
	int fd, r;

	if (!p)
		return -ENOMEM;
	snprintf(tmp, sizeof(tmp), "%s/.%s.%d.%lu.tmp", s->chunk_dir, d, (int)getpid(), (unsigned long)pthread_self());
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		return -errno;
	r = write_all(fd, data, len);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r == 0 && rename(tmp, p) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

static int file_digest_matches(struct objstore *s, const char *d)
{
	_cleanup_free_ char *p = chunk_path(s, d), *data = NULL;
	char got[OBJSTORE_DIGEST_HEX + 1];
	size_t len = 0;
	int r;

	if (!p)
		return -ENOMEM;
	if ((r = read_file(p, OBJSTORE_CHUNK_MAX, &data, &len)) < 0)
		return r;
	if ((r = objstore_digest(data, len, got)) < 0)
		return r;
	return strcmp(got, d) == 0 ? 0 : -EBADMSG;
}

/* A chunk that passed its digest (fetched or published) into the cache, the index updated. */
static int cache_store(struct objstore *s, struct centry *e, const void *data, size_t len)
{
	int r = cache_write(s, e->digest, data, len);

	pthread_mutex_lock(&s->lock);
	if (r == 0) {
		e->state = CE_PRESENT;
		e->verified = true;
		e->size = len;
		e->touched_ns = now_ns();
		s->st.used_bytes += len;
		s->st.chunks++;
		lru_front(s, e);
		evict(s);
	} else {
		note_error(s, "cache: chunk %s: %s", e->digest, strerror(-r));
		drop(s, e);
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return r;
}

static int fetch_chunk(struct objstore *s, struct centry *e, char **why)
{
	_cleanup_free_ char *key = strjoin("chunks/", e->digest, NULL);
	char got[OBJSTORE_DIGEST_HEX + 1];
	struct membuf b = { 0 };
	int r;

	if (!key)
		return -ENOMEM;
	r = http(s, key, NULL, 0, OBJSTORE_CHUNK_MAX, &b, why);
	if (r == -ENOENT)
		r = -ENODATA; /* a chunk a record names and the store lost (-ENOENT is "no such record") */
	if (r == 0 && (r = objstore_digest(b.p ? b.p : "", b.len, got)) == 0 && strcmp(got, e->digest) != 0) {
		error_set(why, "store: chunk %s: digest mismatch (the store's copy is corrupt: it hashes to %s)", e->digest,
			  got);
		r = -EBADMSG;
	}
	if (r == 0) {
		r = cache_store(s, e, b.p ? b.p : "", b.len);
		pthread_mutex_lock(&s->lock);
		if (r == 0) {
			s->st.fetched_bytes += b.len;
			s->st.fetched_chunks++;
		}
		pthread_mutex_unlock(&s->lock);
		if (r < 0)
			error_set(why, "cache: chunk %s: %s", e->digest, strerror(-r));
	} else {
		pthread_mutex_lock(&s->lock);
		note_error(s, "%s", why && *why ? *why : "store: fetch failed");
		drop(s, e);
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	}
	free(b.p);
	return r;
}

/* d present in the cache and checked in this run: fetched if it was not. */
static int ensure(struct objstore *s, const char *d, char **why)
{
	struct centry *e;
	int r;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		if (!(e = find(s, d)))
			break;
		if (e->state == CE_BUSY) {
			pthread_cond_wait(&s->cond, &s->lock);
			continue;
		}
		s->st.hits++;
		lru_front(s, e);
		if (now_ns() - e->touched_ns > TOUCH_EVERY_NS) {
			_cleanup_free_ char *p = chunk_path(s, d);

			e->touched_ns = now_ns();
			if (p)
				utimensat(AT_FDCWD, p, NULL, 0);
		}
		if (e->verified) {
			pthread_mutex_unlock(&s->lock);
			return 0;
		}
		/* from an earlier run: checked once before it is read */
		e->state = CE_BUSY;
		pthread_mutex_unlock(&s->lock);
		r = file_digest_matches(s, d);
		pthread_mutex_lock(&s->lock);
		e->state = CE_PRESENT;
		if (r == 0) {
			e->verified = true;
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
			return 0;
		}
		note_error(s, "cache: chunk %s failed its check (%s): fetched again", d, strerror(-r));
		{
			_cleanup_free_ char *p = chunk_path(s, d);

			if (p)
				unlink(p);
		}
		s->st.hits--;
		drop(s, e);
		pthread_cond_broadcast(&s->cond);
		break;
	}
	s->st.misses++;
	e = insert(s, d, CE_BUSY);
	pthread_mutex_unlock(&s->lock);
	if (!e)
		return -ENOMEM;
	return fetch_chunk(s, e, why);
}

static int read_chunk(struct objstore *s, const char *d, uint64_t off, void *buf, size_t len, char **why)
{
	_cleanup_free_ char *p = chunk_path(s, d);
	int r = -ENOENT;

	if (!p)
		return -ENOMEM;
	/* evicted between the check and the open: once more */
	for (int attempt = 0; attempt < 3 && r == -ENOENT; attempt++) {
		_cleanup_close_ int fd = -1;
		ssize_t n;

		if ((r = ensure(s, d, why)) < 0)
			break;
		if ((fd = open(p, O_RDONLY | O_CLOEXEC)) < 0) {
			r = -errno;
			continue;
		}
		n = pread(fd, buf, len, (off_t)off);
		r = n < 0 ? -errno : (size_t)n == len ? 0 : -EIO;
	}
	if (r < 0 && why && !*why)
		error_set(why, "cache: chunk %s: %s", d, strerror(-r));
	return r;
}

int objstore_read_chunk(struct objstore *s, const char *d, uint64_t off, void *buf, size_t len)
{
	_cleanup_free_ char *why = NULL;
	int r = read_chunk(s, d, off, buf, len, &why);

	if (r < 0)
		log_error("objstore: %s", why ? why : strerror(-r));
	return r;
}

size_t objstore_missing(struct objstore *s, const struct manifest *m, const char ***ret)
{
	const char **v = calloc(m->n ? m->n : 1, sizeof(*v));
	size_t n = 0;

	*ret = v;
	if (!v)
		return 0;
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < m->n; i++) {
		const char *d = m->digests[i];
		bool seen = false;

		if (!d[0] || find(s, d))
			continue;
		for (size_t k = 0; k < n && !seen; k++)
			seen = strcmp(v[k], d) == 0;
		if (!seen)
			v[n++] = d;
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* ---- parallel work ---- */

struct job {
	struct objstore *s;
	size_t n;
	atomic_size_t next;
	int (*one)(struct job *j, size_t i, char **why);
	const void *arg;
	void *out;
	pthread_mutex_t lock;
	int r;
	char *why; /* the first failure's */
};

static void *job_main(void *arg)
{
	struct job *j = arg;
	size_t i;

	while ((i = atomic_fetch_add(&j->next, 1)) < j->n) {
		char *why = NULL;
		int r;

		pthread_mutex_lock(&j->lock);
		r = j->r;
		pthread_mutex_unlock(&j->lock);
		if (r < 0)
			break; /* one failed: the rest is not needed */
		r = j->one(j, i, &why);
		pthread_mutex_lock(&j->lock);
		if (r < 0 && j->r == 0) {
			j->r = r;
			j->why = TAKE_PTR(why);
		}
		pthread_mutex_unlock(&j->lock);
		free(why);
	}
	return NULL;
}

static int run_parallel(struct objstore *s, size_t n, int (*one)(struct job *, size_t, char **), const void *arg,
			void *out, char **why)
{
	struct job j = { .s = s, .n = n, .one = one, .arg = arg, .out = out };
	unsigned workers = n < s->o.parallel ? (unsigned)n : s->o.parallel;
	pthread_t t[64];
	unsigned started = 0;

	if (n == 0)
		return 0;
	pthread_mutex_init(&j.lock, NULL);
	atomic_init(&j.next, 0);
	for (unsigned i = 1; i < workers && i < ARRAY_SIZE(t); i++)
		if (thread_create(&t[started], NULL, job_main, &j) == 0)
			started++;
	job_main(&j); /* the caller's thread is one of them */
	for (unsigned i = 0; i < started; i++)
		pthread_join(t[i], NULL);
	pthread_mutex_destroy(&j.lock);
	if (j.r < 0) {
		if (why && !*why)
			*why = TAKE_PTR(j.why);
		free(j.why);
	}
	return j.r;
}

static int fetch_one(struct job *j, size_t i, char **why)
{
	const char *const *d = j->arg;

	return ensure(j->s, d[i], why);
}

int objstore_fetch(struct objstore *s, const char *const *digests, size_t n, char **why)
{
	return run_parallel(s, n, fetch_one, digests, NULL, why);
}

int objstore_prefetch(struct objstore *s, const struct manifest *m, char **why)
{
	_cleanup_free_ const char **d = NULL;
	size_t n = 0;

	if (!s->o.prefetch || !m->n_hot)
		return 0;
	if (!(d = calloc(m->n_hot, sizeof(*d))))
		return -ENOMEM;
	for (size_t i = 0; i < m->n_hot; i++)
		if (m->hot[i] < m->n && m->digests[m->hot[i]][0])
			d[n++] = m->digests[m->hot[i]];
	return objstore_fetch(s, d, n, why);
}

/* ---- publish ---- */

struct publish {
	int fd;
	struct manifest *m;
};

static int publish_one(struct job *j, size_t i, char **why)
{
	const struct publish *p = j->arg;
	struct objstore *s = j->s;
	const uint32_t ck = p->m->chunk;
	size_t len = i + 1 < p->m->n ? ck : (size_t)(p->m->size - (uint64_t)i * ck);
	_cleanup_free_ uint8_t *buf = malloc(ck);
	_cleanup_free_ char *key = NULL;
	char d[OBJSTORE_DIGEST_HEX + 1];
	struct centry *e;
	ssize_t got;
	int r;

	if (!buf)
		return -ENOMEM;
	if ((got = pread(p->fd, buf, len, (off_t)i * ck)) != (ssize_t)len) {
		error_set(why, "publish: read of chunk %zu: %s", i, got < 0 ? strerror(errno) : "short read");
		return got < 0 ? -errno : -EIO;
	}
	if (mem_is_zero(buf, len))
		return 0; /* never stored */
	if ((r = objstore_digest(buf, len, d)) < 0)
		return r;
	if (!(key = strjoin("chunks/", d, NULL)))
		return -ENOMEM;
	/* always sent: a copy the store lost or corrupted is replaced */
	if ((r = objstore_put(s, key, buf, len, why)) < 0)
		return r;
	memcpy(p->m->digests[i], d, sizeof(d));
	/* kept here too (best effort: a failure is in the stats): this host restores without fetching */
	pthread_mutex_lock(&s->lock);
	e = find(s, d) ? NULL : insert(s, d, CE_BUSY);
	pthread_mutex_unlock(&s->lock);
	if (e)
		cache_store(s, e, buf, len);
	return 0;
}

int objstore_publish_file(struct objstore *s, const char *path, struct manifest *m, char **why)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct publish p = { .fd = fd, .m = m };
	struct manifest r = { .chunk = s->o.chunk };
	struct stat st;
	int rc;

	if (fd < 0 || fstat(fd, &st) < 0) {
		error_set(why, "publish: %s: %s", path, strerror(errno));
		return -errno;
	}
	r.size = (uint64_t)st.st_size;
	r.n = (size_t)((r.size + r.chunk - 1) / r.chunk);
	if (r.n && !(r.digests = calloc(r.n, sizeof(*r.digests))))
		return -ENOMEM;
	p.m = &r;
	if ((rc = run_parallel(s, r.n, publish_one, &p, NULL, why)) < 0) {
		manifest_clear(&r);
		return rc;
	}
	*m = r;
	return 0;
}

/* ---- assemble ---- */

struct assemble {
	const struct manifest *m;
	int fd;
};

static int assemble_one(struct job *j, size_t i, char **why)
{
	const struct assemble *a = j->arg;
	const struct manifest *m = a->m;
	size_t len = i + 1 < m->n ? m->chunk : (size_t)(m->size - (uint64_t)i * m->chunk);
	_cleanup_free_ uint8_t *buf = NULL;
	int r;

	if (!m->digests[i][0])
		return 0;
	if (!(buf = malloc(len)))
		return -ENOMEM;
	if ((r = read_chunk(j->s, m->digests[i], 0, buf, len, why)) < 0)
		return r;
	if (pwrite(a->fd, buf, len, (off_t)i * m->chunk) != (ssize_t)len) {
		error_set(why, "assemble: write: %s", strerror(errno));
		return -EIO;
	}
	return 0;
}

int objstore_assemble(struct objstore *s, const struct manifest *m, const char *path, char **why)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	struct assemble a = { .m = m, .fd = fd };
	int r;

	if (fd < 0 || ftruncate(fd, (off_t)m->size) < 0) {
		error_set(why, "assemble: %s: %s", path, strerror(errno));
		return -errno;
	}
	if ((r = run_parallel(s, m->n, assemble_one, &a, NULL, why)) < 0)
		unlink(path);
	return r;
}

/* ---- lifetime, stats ---- */

struct scanned {
	char digest[OBJSTORE_DIGEST_HEX + 1];
	uint64_t size;
	int64_t mtime_ns;
};

static int by_mtime(const void *a, const void *b)
{
	const struct scanned *x = a, *y = b;

	return x->mtime_ns < y->mtime_ns ? -1 : x->mtime_ns > y->mtime_ns;
}

/* What an earlier run left: temporary files go, chunks enter the index oldest first. */
static int scan(struct objstore *s)
{
	DIR *d = opendir(s->chunk_dir);
	struct scanned *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		struct stat st;

		if (de->d_name[0] == '.') {
			if (strstr(de->d_name, ".tmp"))
				unlinkat(dirfd(d), de->d_name, 0);
			continue;
		}
		if (!objstore_digest_valid(de->d_name) || fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode) || st.st_size > OBJSTORE_CHUNK_MAX) {
			log_warn("objstore: %s/%s is not a chunk: removed", s->chunk_dir, de->d_name);
			unlinkat(dirfd(d), de->d_name, 0);
			continue;
		}
		if (n == cap) {
			struct scanned *nv = realloc(v, (cap = cap ? cap * 2 : 256) * sizeof(*v));

			if (!nv) {
				free(v);
				closedir(d);
				return -ENOMEM;
			}
			v = nv;
		}
		memcpy(v[n].digest, de->d_name, sizeof(v[n].digest));
		v[n].size = (uint64_t)st.st_size;
		v[n].mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
		n++;
	}
	closedir(d);
	if (n)
		qsort(v, n, sizeof(*v), by_mtime);
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < n; i++) {
		struct centry *e = insert(s, v[i].digest, CE_PRESENT);

		if (!e)
			break;
		e->size = v[i].size;
		e->touched_ns = now_ns();
		s->st.used_bytes += e->size;
		s->st.chunks++;
	}
	evict(s); /* a smaller limit than last time */
	pthread_mutex_unlock(&s->lock);
	free(v);
	return 0;
}

int objstore_new(const struct objstore_options *o, struct objstore **ret, char **ret_error)
{
	struct objstore *s = calloc(1, sizeof(*s));
	size_t ul;
	int r;

	if (!s)
		return -ENOMEM;
	s->o = *o;
	ul = strlen(o->url);
	if (strncmp(o->url, "http://", 7) != 0 && strncmp(o->url, "https://", 8) != 0) {
		error_set(ret_error, "--store %s: not an http:// or https:// URL", o->url);
		free(s);
		return -EINVAL;
	}
	s->o.url = s->url = ul && o->url[ul - 1] == '/' ? strdup(o->url) : strjoin(o->url, "/", NULL);
	s->chunk_dir = strjoin(o->cache_dir, "/chunks", NULL);
	if (!s->o.parallel)
		s->o.parallel = 8;
	if (!s->o.chunk)
		s->o.chunk = OBJSTORE_CHUNK_DEFAULT;
	if (s->o.chunk < OBJSTORE_CHUNK_MIN || s->o.chunk > OBJSTORE_CHUNK_MAX || (s->o.chunk & (s->o.chunk - 1))) {
		error_set(ret_error, "chunk size %u: not a power of two from 4 KiB to 4 MiB", s->o.chunk);
		free(s);
		return -EINVAL;
	}
	if (!s->o.timeout_ms)
		s->o.timeout_ms = 10000;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	atomic_init(&s->stopping, false);
	s->st.limit_bytes = o->limit_bytes;
	if (!s->url || !s->chunk_dir) {
		objstore_free(s);
		return -ENOMEM;
	}
	if ((r = mkdir_p(s->chunk_dir, 0700)) < 0 || (r = scan(s)) < 0) {
		error_set(ret_error, "chunk cache %s: %s", s->chunk_dir, strerror(-r));
		objstore_free(s);
		return r;
	}
	if ((r = lazyfs_start(s, o->lazy_dir, ret_error)) < 0) {
		objstore_free(s);
		return r;
	}
	*ret = s;
	return 0;
}

void objstore_free(struct objstore *s)
{
	struct centry *e, *next;

	if (!s)
		return;
	lazyfs_stop(s);
	for (e = s->newest; e; e = next) {
		next = e->older;
		free(e);
	}
	for (unsigned i = 0; i < s->n_idle; i++)
		curl_easy_cleanup(s->idle[i]);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s->url);
	free(s->chunk_dir);
	free(s);
}

const char *objstore_url(const struct objstore *s)
{
	return s->url;
}

bool objstore_prefetching(const struct objstore *s)
{
	return s->o.prefetch;
}

void objstore_get_stats(struct objstore *s, struct objstore_stats *st)
{
	pthread_mutex_lock(&s->lock);
	*st = s->st;
	st->limit_bytes = s->o.limit_bytes;
	pthread_mutex_unlock(&s->lock);
}

json_object *objstore_stats_json(struct objstore *s)
{
	json_object *o = json_object_new_object();
	struct objstore_stats st;
	uint64_t lookups;

	objstore_get_stats(s, &st);
	lookups = st.hits + st.misses;
	json_object_object_add(o, "store", json_object_new_string(s->url));
	json_object_object_add(o, "prefetch", json_object_new_boolean(s->o.prefetch));
	json_object_object_add(o, "limit_bytes", json_object_new_int64((int64_t)st.limit_bytes));
	json_object_object_add(o, "used_bytes", json_object_new_int64((int64_t)st.used_bytes));
	json_object_object_add(o, "chunks", json_object_new_int64((int64_t)st.chunks));
	json_object_object_add(o, "hits", json_object_new_int64((int64_t)st.hits));
	json_object_object_add(o, "misses", json_object_new_int64((int64_t)st.misses));
	json_object_object_add(o, "hit_rate", json_object_new_double(lookups ? (double)st.hits / (double)lookups : 0));
	json_object_object_add(o, "fetched_bytes", json_object_new_int64((int64_t)st.fetched_bytes));
	json_object_object_add(o, "fetched_chunks", json_object_new_int64((int64_t)st.fetched_chunks));
	json_object_object_add(o, "evictions", json_object_new_int64((int64_t)st.evictions));
	json_object_object_add(o, "errors", json_object_new_int64((int64_t)st.errors));
	json_object_object_add(o, "last_error", st.last_error[0] ? json_object_new_string(st.last_error) : NULL);
	return o;
}
