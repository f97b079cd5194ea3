/*
 * Host side of the agent protocol (engine/guest/ is the guest side;
 * docs/protocol.md the contract): one JSON object per line over a byte
 * stream, a line with "bin": N followed by N raw bytes. Calls are
 * multiplexed by "id"; a reader thread hands each reply to the call waiting
 * for it, or to the callback of an asynchronous call.
 */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>

#include "internal.h"

#define AGENT_MAX_LINE (64u << 20) /* 2 x 16 MiB of output, base64 */

struct pending {
	uint64_t id;
	json_object *resp;
	uint8_t *data; /* the reply's binary payload */
	size_t data_len;
	bool done;
	agent_async_fn cb; /* asynchronous: called instead of waking a waiter */
	void *arg;
	struct pending *next;
};

struct agent_client {
	int fd;
	pthread_t reader;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_mutex_t write_lock;
	uint64_t next_id;	 /* protected by lock */
	struct pending *pending; /* protected by lock */
	bool broken;		 /* protected by lock */
	bool reader_done;	 /* protected by lock */
	/*
	 * The owner's, the reader thread's (it may outlive every other user:
	 * an asynchronous callback can drop the last outside reference), and one
	 * per call in flight on another thread. The last one frees.
	 */
	atomic_int refs;
	uint64_t session; /* names this connection to the guest in an attach */
	agent_event_fn event_fn; /* protected by lock */
	void *event_arg;
	uint64_t event_tag;
};

static void unlink_pending(struct agent_client *c, struct pending *p)
{
	for (struct pending **pp = &c->pending; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
}

/* 0 for "ok": true, else the reply's errno (negative). */
static int reply_result(json_object *resp)
{
	json_object *okv, *ev;
	int e;

	if (json_object_object_get_ex(resp, "ok", &okv) && json_object_get_boolean(okv))
		return 0;
	e = json_object_object_get_ex(resp, "errno", &ev) ? json_object_get_int(ev) : EIO;
	log_debug("agent: call failed: %s", json_object_to_json_string(resp));
	return -(e > 0 && e < 4096 ? e : EIO);
}

static void async_finish(struct pending *p, int r)
{
	if (r == 0)
		r = reply_result(p->resp);
	p->cb(p->arg, r, r == 0 ? p->resp : NULL, r == 0 ? p->data : NULL, r == 0 ? p->data_len : 0);
	json_object_put(p->resp);
	free(p->data);
	free(p);
}

/* Takes o and data. */
static void deliver(struct agent_client *c, json_object *o, uint8_t *data, size_t len)
{
	struct pending *async = NULL;
	json_object *idv;
	uint64_t id;

	if (!json_object_object_get_ex(o, "id", &idv)) {
		/* unsolicited: "ready" after a cold boot, "changed" for files the host has open */
		agent_event_fn fn;
		void *arg;
		uint64_t tag;

		pthread_mutex_lock(&c->lock);
		fn = c->event_fn;
		arg = c->event_arg;
		tag = c->event_tag;
		pthread_mutex_unlock(&c->lock);
		if (fn && json_object_is_type(o, json_type_object))
			fn(arg, tag, o);
		json_object_put(o);
		free(data);
		return;
	}
	id = (uint64_t)json_object_get_int64(idv);
	pthread_mutex_lock(&c->lock);
	for (struct pending *p = c->pending; p; p = p->next)
		if (p->id == id && !p->done) {
			p->resp = TAKE_PTR(o);
			p->data = TAKE_PTR(data);
			p->data_len = len;
			p->done = true;
			if (p->cb) {
				unlink_pending(c, p);
				async = p;
			} else {
				pthread_cond_broadcast(&c->cond);
			}
			break;
		}
	pthread_mutex_unlock(&c->lock);
	if (async)
		async_finish(async, 0);
	if (o)
		json_object_put(o);
	free(data);
}

/* The payload length a line announces: 0 without "bin", -1 if out of range. */
static ssize_t line_bin(json_object *o)
{
	json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(o, "bin", &v))
		return 0;
	n = json_object_get_int64(v);
	return json_object_is_type(v, json_type_int) && n >= 0 && n <= (int64_t)AGENT_BIN_MAX ? (ssize_t)n : -1;
}

static void *reader_main(void *arg)
{
	struct agent_client *c = arg;
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	json_object *held = NULL; /* a line whose payload is still arriving */
	size_t want = 0;

	while (buf) {
		char *nl;
		ssize_t n;

		if (len == cap) {
			char *nb = cap >= AGENT_MAX_LINE ? NULL : realloc(buf, cap * 2);

			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		n = read(c->fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		for (;;) {
			json_object *o;
			ssize_t bin;
			uint8_t *data = NULL;

			if (held) {
				if (len < want)
					break;
				data = want ? malloc(want) : NULL;
				if (want && !data)
					goto out;
				memcpy(data, buf, want);
				len -= want;
				memmove(buf, buf + want, len);
				deliver(c, TAKE_PTR(held), data, want);
				continue;
			}
			if (!(nl = memchr(buf, '\n', len)))
				break;
			*nl = '\0';
			o = json_tokener_parse(buf);
			len -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, len);
			if (!o)
				continue;
			bin = line_bin(o);
			if (bin < 0) {
				log_warn("agent: a reply announced an out-of-range payload; dropping the connection");
				json_object_put(o);
				goto out;
			}
			if (bin == 0) {
				deliver(c, o, NULL, 0);
				continue;
			}
			held = o;
			want = (size_t)bin;
		}
	}
out:
	json_object_put(held);
	free(buf);
	pthread_mutex_lock(&c->lock);
	c->broken = true;
	pthread_cond_broadcast(&c->cond);
	for (;;) {
		struct pending *p = NULL;

		for (struct pending *q = c->pending; q; q = q->next)
			if (q->cb) {
				p = q;
				break;
			}
		if (!p)
			break;
		unlink_pending(c, p);
		pthread_mutex_unlock(&c->lock);
		async_finish(p, -ECONNRESET);
		pthread_mutex_lock(&c->lock);
	}
	c->reader_done = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	agent_unref(c);
	return NULL;
}

int agent_connect(const char *path, unsigned timeout_ms, const atomic_bool *cancel, struct agent_client **ret)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_close_ int fd = -1;
	int r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != ENOENT && errno != ECONNREFUSED)
			return -errno;
		if ((cancel && atomic_load(cancel)) || now_ns() > deadline)
			return cancel && atomic_load(cancel) ? -ECANCELED : -ETIMEDOUT;
		poll(NULL, 0, 1);
	}
	/* a guest that stops reading must not block a sender forever */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &(struct timeval){ .tv_sec = 10 }, sizeof(struct timeval));
	r = agent_client_from_fd(fd, ret);
	if (r == 0)
		fd = -1; /* the client's now */
	return r;
}

int agent_client_from_fd(int fd, struct agent_client **ret)
{
	struct agent_client *c;
	pthread_attr_t attr;
	int r;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	/*
	 * Ids start at random: a guest that took a previous connection's last
	 * requests for this one's answers with ids this client never sent.
	 */
	if (getrandom(&c->next_id, sizeof(c->next_id), GRND_NONBLOCK) != sizeof(c->next_id))
		c->next_id = (uint64_t)now_ns();
	c->next_id = (c->next_id >> 12) | 1; /* well within JSON's exact integers (2^53) */
	if (getrandom(&c->session, sizeof(c->session), GRND_NONBLOCK) != sizeof(c->session))
		c->session = (uint64_t)now_ns() ^ (uint64_t)(uintptr_t)c;
	c->session = (c->session >> 12) | 1;
	atomic_init(&c->refs, 2);
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->write_lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	r = thread_create(&c->reader, &attr, reader_main, c);
	pthread_attr_destroy(&attr);
	if (r) {
		pthread_mutex_destroy(&c->lock);
		pthread_mutex_destroy(&c->write_lock);
		pthread_cond_destroy(&c->cond);
		free(c);
		return -EAGAIN;
	}
	*ret = c;
	return 0;
}

static int send_all(int fd, struct iovec *iov, int n)
{
	while (n > 0) {
		ssize_t w = sendmsg(fd, &(struct msghdr){ .msg_iov = iov, .msg_iovlen = (size_t)n }, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

/* The request line, then its payload, as one unit on the stream. */
static int send_request(struct agent_client *c, json_object *req, const void *bin, size_t bin_len)
{
	const char *s;
	struct iovec iov[3];
	int r;

	if (bin)
		json_object_object_add(req, "bin", json_object_new_int64((int64_t)bin_len));
	s = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	iov[0] = (struct iovec){ (void *)s, strlen(s) };
	iov[1] = (struct iovec){ (void *)"\n", 1 };
	iov[2] = (struct iovec){ (void *)bin, bin ? bin_len : 0 };
	pthread_mutex_lock(&c->write_lock);
	r = send_all(c->fd, iov, bin && bin_len ? 3 : 2);
	if (r < 0)
		shutdown(c->fd, SHUT_RDWR); /* a frame cut short: the stream cannot be resynchronised */
	pthread_mutex_unlock(&c->write_lock);
	return r;
}

static int wait_reply(struct agent_client *c, struct pending *p, unsigned timeout_ms)
{
	struct timespec ts;
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	while (!p->done && !c->broken && r == 0)
		r = pthread_cond_timedwait(&c->cond, &c->lock, &ts);
	if (p->done)
		return 0;
	return c->broken ? -ECONNRESET : -ETIMEDOUT;
}

static int register_pending(struct agent_client *c, struct pending *p)
{
	pthread_mutex_lock(&c->lock);
	if (c->broken) {
		pthread_mutex_unlock(&c->lock);
		return -ECONNRESET;
	}
	p->id = c->next_id++;
	p->next = c->pending;
	c->pending = p;
	pthread_mutex_unlock(&c->lock);
	return 0;
}

int agent_call(struct agent_client *c, json_object *req, unsigned timeout_ms, json_object **ret_resp)
{
	return agent_call_full(c, req, NULL, 0, timeout_ms, NULL, NULL, ret_resp, NULL, NULL);
}

int agent_call_then(struct agent_client *c, json_object *req, unsigned timeout_ms, int (*then)(void *arg),
		    void *arg, json_object **ret_resp)
{
	return agent_call_full(c, req, NULL, 0, timeout_ms, then, arg, ret_resp, NULL, NULL);
}

int agent_call_full(struct agent_client *c, json_object *req, const void *bin, size_t bin_len, unsigned timeout_ms,
		    int (*then)(void *arg), void *arg, json_object **ret_resp, uint8_t **ret_data, size_t *ret_len)
{
	struct pending p = { 0 };
	int r;

	if (bin && bin_len > AGENT_BIN_MAX)
		return -EMSGSIZE;
	r = register_pending(c, &p);
	if (r < 0)
		return r;
	json_object_object_add(req, "id", json_object_new_int64((int64_t)p.id));
	r = send_request(c, req, bin, bin_len);
	if (r == 0 && then)
		r = then(arg);

	pthread_mutex_lock(&c->lock);
	if (r == 0)
		r = wait_reply(c, &p, timeout_ms);
	unlink_pending(c, &p);
	pthread_mutex_unlock(&c->lock);
	if (r == 0)
		r = reply_result(p.resp);
	/* a failed request's reply too (NULL if none came): its "error" says why */
	if (ret_resp)
		*ret_resp = TAKE_PTR(p.resp);
	if (r == 0 && ret_data) {
		*ret_data = TAKE_PTR(p.data);
		*ret_len = p.data_len;
	}
	json_object_put(p.resp);
	free(p.data);
	return r;
}

/* Waits (c->lock held) until one of p[0..n) is answered or @until_ns (CLOCK_MONOTONIC) passes: its index, or -errno. */
static int wait_any(struct agent_client *c, struct pending *p, size_t n, uint64_t until_ns)
{
	for (;;) {
		struct timespec ts;
		uint64_t now = now_ns();

		for (size_t i = 0; i < n; i++)
			if (p[i].done)
				return (int)i;
		if (c->broken)
			return -ECONNRESET;
		if (now >= until_ns)
			return -ETIMEDOUT;
		/* the condition variable keeps CLOCK_REALTIME: wait at most the rest, from now */
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)((until_ns - now) / 1000000000u);
		ts.tv_nsec += (long)((until_ns - now) % 1000000000u);
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&c->cond, &c->lock, &ts);
	}
}

int agent_call_resend(struct agent_client *c, json_object *(*build)(void *arg), void *arg, unsigned timeout_ms,
		      int (*then)(void *arg), void *then_arg, json_object **ret_resp)
{
	struct pending p[AGENT_RESEND_COPIES] = { 0 };
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
	uint64_t wait_ms = AGENT_RESEND_FIRST_MS, waited_ms = 0;
	size_t n = 0;
	int r = 0, won = -1;

	while (won < 0 && n < AGENT_RESEND_COPIES) {
		json_object *req = build(arg), *op;
		uint64_t until;

		if (n > 0)
			log_info("agent: %s not answered within %" PRIu64 " ms: sent again (copy %zu of at most %d)",
				 req && json_object_object_get_ex(req, "op", &op) ? json_object_get_string(op) : "a request",
				 waited_ms, n + 1, AGENT_RESEND_COPIES);
		if (!req) {
			r = -ENOMEM;
			break;
		}
		r = register_pending(c, &p[n]);
		if (r == 0) {
			json_object_object_add(req, "id", json_object_new_int64((int64_t)p[n].id));
			n++;
			r = send_request(c, req, NULL, 0);
		}
		json_object_put(req);
		if (r == 0 && n == 1 && then)
			r = then(then_arg);
		if (r < 0)
			break;
		until = now_ns() + wait_ms * 1000000u;
		if (n == AGENT_RESEND_COPIES || until > deadline)
			until = deadline;
		pthread_mutex_lock(&c->lock);
		won = wait_any(c, p, n, until);
		pthread_mutex_unlock(&c->lock);
		if (won == -ECONNRESET || (won == -ETIMEDOUT && now_ns() >= deadline)) {
			r = won;
			break;
		}
		waited_ms = wait_ms;
		wait_ms *= 2;
	}
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < n; i++)
		unlink_pending(c, &p[i]);
	pthread_mutex_unlock(&c->lock);
	if (won >= 0)
		r = reply_result(p[won].resp);
	if (won >= 0 && n > 1)
		log_info("agent: copy %d of %zu answered first: %s", won + 1, n,
			 won > 0 ? "the guest dropped the answer before it (copies are answered in order)"
				 : "it was slow, not lost");
	if (ret_resp)
		*ret_resp = won >= 0 ? TAKE_PTR(p[won].resp) : NULL;
	for (size_t i = 0; i < n; i++) {
		json_object_put(p[i].resp);
		free(p[i].data);
	}
	return r;
}

int agent_call_async(struct agent_client *c, json_object *req, const void *bin, size_t bin_len, agent_async_fn cb,
		     void *arg)
{
	struct pending *p;
	uint64_t id;
	int r;

	if (bin && bin_len > AGENT_BIN_MAX)
		return -EMSGSIZE;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->cb = cb;
	p->arg = arg;
	r = register_pending(c, p);
	if (r < 0) {
		free(p);
		return r;
	}
	id = p->id; /* p may be finished and freed by the reader as soon as the request is out */
	json_object_object_add(req, "id", json_object_new_int64((int64_t)id));
	r = send_request(c, req, bin, bin_len);
	if (r < 0) {
		bool mine = false;

		pthread_mutex_lock(&c->lock);
		for (struct pending *q = c->pending; q; q = q->next)
			if (q->id == id && q->cb) {
				unlink_pending(c, q);
				mine = true;
				break;
			}
		pthread_mutex_unlock(&c->lock);
		if (mine) {
			free(p);
			return r;
		}
		/* the reader failed it already (the callback ran): done */
	}
	return 0;
}

void agent_shutdown(struct agent_client *c)
{
	if (c)
		shutdown(c->fd, SHUT_RDWR);
}

void agent_set_event_fn(struct agent_client *c, agent_event_fn fn, void *arg, uint64_t tag)
{
	pthread_mutex_lock(&c->lock);
	c->event_fn = fn;
	c->event_arg = arg;
	c->event_tag = tag;
	pthread_mutex_unlock(&c->lock);
}

uint64_t agent_session(const struct agent_client *c)
{
	return c->session;
}

struct agent_client *agent_ref(struct agent_client *c)
{
	if (c)
		atomic_fetch_add(&c->refs, 1);
	return c;
}

/* Also waits for the reader to end (every asynchronous callback has run), unless called from one. */
void agent_free(struct agent_client *c)
{
	if (!c)
		return;
	shutdown(c->fd, SHUT_RDWR);
	if (!pthread_equal(pthread_self(), c->reader)) {
		pthread_mutex_lock(&c->lock);
		while (!c->reader_done)
			pthread_cond_wait(&c->cond, &c->lock);
		pthread_mutex_unlock(&c->lock);
	}
	agent_unref(c);
}

void agent_unref(struct agent_client *c)
{
	if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	close(c->fd);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->write_lock);
	pthread_cond_destroy(&c->cond);
	free(c);
}
