/*
 * Connect server-streaming responses (connect.h): a queue of envelopes that
 * producer threads fill and the connection's thread drains through the HTTP
 * layer's blocking read callback.
 *
 * Threads: any number of producers call push/end; exactly one connection
 * thread calls read and then done. Everything below the lock is protected by
 * s->lock. The connection thread wakes at least once a second (or every
 * hangup_ns) to look for a hang-up of the client's socket (libmicrohttpd notices a vanished client
 * only when a write fails, and an idle stream writes only its keepalives).
 */
#include "connect.h"

#include <errno.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "http.h"

struct frame {
	struct frame *next;
	size_t len, off;
	uint8_t *data;
};

struct cstream {
	pthread_mutex_t lock;
	pthread_cond_t readable; /* the reader waits: a frame, the end, a keepalive due */
	pthread_cond_t room;	 /* producers wait: the queue drained, or the client went */
	int refs;		 /* atomic */
	struct frame *head, **tail;
	size_t queued;	 /* bytes queued: protected by lock */
	size_t queue_max;
	bool ended;	 /* the end-stream envelope is queued: protected by lock */
	bool gone;	 /* the HTTP response is over: protected by lock */
	bool gone_told;
	unsigned keepalive_ms;
	uint8_t *keepalive;
	size_t keepalive_len;
	uint64_t last_ns; /* when bytes last went out: protected by lock */
	uint64_t hup_checked_ns; /* when the socket was last checked for a hang-up: protected by lock */
	uint64_t hangup_ns;	 /* how often it is checked: protected by lock */
	int fd;		  /* the client's socket (not ours), -1 if unknown */
	void (*on_gone)(void *ctx);
	void *gone_ctx;
};

static void frame_free(struct frame *f)
{
	if (f) {
		free(f->data);
		free(f);
	}
}

struct cstream *connect_stream_new(unsigned keepalive_ms, const char *keepalive_msg, size_t queue_max)
{
	struct cstream *s = calloc(1, sizeof(*s));
	pthread_condattr_t ca;

	if (!s)
		return NULL;
	if (keepalive_ms && keepalive_msg) {
		s->keepalive = connect_frame(0, keepalive_msg, strlen(keepalive_msg), &s->keepalive_len);
		if (!s->keepalive) {
			free(s);
			return NULL;
		}
		s->keepalive_ms = keepalive_ms;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->readable, &ca);
	pthread_cond_init(&s->room, &ca);
	pthread_condattr_destroy(&ca);
	s->refs = 1;
	s->tail = &s->head;
	s->queue_max = queue_max ? queue_max : 1;
	s->last_ns = s->hup_checked_ns = now_ns();
	s->hangup_ns = CONNECT_HANGUP_MS * 1000000ull;
	s->fd = -1;
	return s;
}

struct cstream *connect_stream_ref(struct cstream *s)
{
	if (s)
		__atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
	return s;
}

void connect_stream_unref(struct cstream *s)
{
	struct frame *f;

	if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	while ((f = s->head)) {
		s->head = f->next;
		frame_free(f);
	}
	free(s->keepalive);
	pthread_cond_destroy(&s->readable);
	pthread_cond_destroy(&s->room);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void connect_stream_on_gone(struct cstream *s, void (*fn)(void *ctx), void *ctx)
{
	pthread_mutex_lock(&s->lock);
	s->on_gone = fn;
	s->gone_ctx = ctx;
	pthread_mutex_unlock(&s->lock);
}

void connect_stream_set_hangup_ms(struct cstream *s, unsigned ms)
{
	pthread_mutex_lock(&s->lock);
	s->hangup_ns = (uint64_t)(ms ? ms : CONNECT_HANGUP_MS) * 1000000ull;
	pthread_cond_signal(&s->readable); /* a reader asleep for the old period */
	pthread_mutex_unlock(&s->lock);
}

/* Appends a frame (takes data): lock held. */
static int enqueue_locked(struct cstream *s, uint8_t *data, size_t len)
{
	struct frame *f = calloc(1, sizeof(*f));

	if (!f) {
		free(data);
		return -ENOMEM;
	}
	f->data = data;
	f->len = len;
	*s->tail = f;
	s->tail = &f->next;
	s->queued += len;
	pthread_cond_signal(&s->readable);
	return 0;
}

int connect_stream_push(struct cstream *s, json_object *o)
{
	size_t len;
	uint8_t *f = connect_frame_json(o, &len);

	if (!f)
		return -ENOMEM;
	return connect_stream_push_frame(s, f, len);
}

int connect_stream_push_copy(struct cstream *s, const uint8_t *frame, size_t len)
{
	uint8_t *f = malloc(len);

	if (!f)
		return -ENOMEM;
	memcpy(f, frame, len);
	return connect_stream_push_frame(s, f, len);
}

int connect_stream_push_frame(struct cstream *s, uint8_t *f, size_t len)
{
	int r;

	pthread_mutex_lock(&s->lock);
	while (!s->gone && !s->ended && s->queued >= s->queue_max)
		pthread_cond_wait(&s->room, &s->lock);
	if (s->gone || s->ended) {
		pthread_mutex_unlock(&s->lock);
		free(f);
		return -EPIPE;
	}
	r = enqueue_locked(s, f, len);
	pthread_mutex_unlock(&s->lock);
	return r;
}

int connect_stream_end(struct cstream *s, const char *code, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	uint8_t *f;
	size_t len;
	int r;

	if (code && fmt) {
		va_list ap;

		va_start(ap, fmt);
		if (vasprintf(&msg, fmt, ap) < 0)
			msg = NULL;
		va_end(ap);
	}
	f = connect_frame_end(code, msg, &len);
	if (!f)
		return -ENOMEM;
	pthread_mutex_lock(&s->lock);
	if (s->gone || s->ended) {
		pthread_mutex_unlock(&s->lock);
		free(f);
		return -EPIPE;
	}
	r = enqueue_locked(s, f, len);
	if (r == 0)
		s->ended = true;
	pthread_cond_broadcast(&s->room); /* producers blocked on a full queue: it is over */
	pthread_mutex_unlock(&s->lock);
	return r;
}

int connect_stream_gone(struct cstream *s)
{
	int g;

	pthread_mutex_lock(&s->lock);
	g = s->gone;
	pthread_mutex_unlock(&s->lock);
	return g;
}

/* Queued bytes into buf: lock held, head not NULL. */
static size_t copy_out_locked(struct cstream *s, char *buf, size_t max)
{
	size_t n = 0;

	while (s->head && n < max) {
		struct frame *f = s->head;
		size_t k = f->len - f->off;

		if (k > max - n)
			k = max - n;
		memcpy(buf + n, f->data + f->off, k);
		f->off += k;
		n += k;
		s->queued -= k;
		if (f->off == f->len) {
			s->head = f->next;
			if (!s->head)
				s->tail = &s->head;
			frame_free(f);
		}
	}
	s->last_ns = now_ns();
	pthread_cond_broadcast(&s->room);
	return n;
}

static bool client_hung_up(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLRDHUP };

	if (fd < 0)
		return false;
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

ssize_t connect_stream_read(void *ctx, char *buf, size_t max)
{
	struct cstream *s = ctx;
	ssize_t n;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		uint64_t now = now_ns(), wake = now + s->hangup_ns;
		struct timespec ts;

		if (s->gone) {
			n = -1;
			break;
		}
		if (now - s->hup_checked_ns >= s->hangup_ns) {
			/* also while data flows: a client that went (or a server stopping) is seen within a period */
			int fd = s->fd;
			bool hup;

			s->hup_checked_ns = now;
			pthread_mutex_unlock(&s->lock);
			hup = client_hung_up(fd);
			pthread_mutex_lock(&s->lock);
			if (hup) {
				n = -1;
				break;
			}
			continue;
		}
		if (s->head) {
			n = (ssize_t)copy_out_locked(s, buf, max);
			break;
		}
		if (s->ended) {
			n = 0;
			break;
		}
		if (s->keepalive) {
			uint64_t due = s->last_ns + (uint64_t)s->keepalive_ms * 1000000ull;
			uint8_t *k;

			if (due <= now) {
				k = malloc(s->keepalive_len);
				if (k) {
					memcpy(k, s->keepalive, s->keepalive_len);
					enqueue_locked(s, k, s->keepalive_len);
				}
				s->last_ns = now; /* no retry storm when malloc fails */
				continue;
			}
			if (due < wake)
				wake = due;
		}
		ts.tv_sec = (time_t)(wake / 1000000000ull);
		ts.tv_nsec = (long)(wake % 1000000000ull);
		pthread_cond_timedwait(&s->readable, &s->lock, &ts);
	}
	pthread_mutex_unlock(&s->lock);
	return n;
}

void connect_stream_done(void *ctx)
{
	struct cstream *s = ctx;
	void (*fn)(void *) = NULL;
	void *arg = NULL;

	pthread_mutex_lock(&s->lock);
	s->gone = true;
	s->fd = -1;
	if (!s->gone_told) {
		s->gone_told = true;
		fn = s->on_gone;
		arg = s->gone_ctx;
	}
	pthread_cond_broadcast(&s->room);
	pthread_cond_broadcast(&s->readable);
	pthread_mutex_unlock(&s->lock);
	if (fn)
		fn(arg);
	connect_stream_unref(s);
}

int connect_stream_reply(struct req *r, struct cstream *s)
{
	struct MHD_Connection *c = req_conn(r);
	const union MHD_ConnectionInfo *ci = c ? MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD) : NULL;

	pthread_mutex_lock(&s->lock);
	s->fd = ci ? ci->connect_fd : -1;
	s->last_ns = now_ns();
	pthread_mutex_unlock(&s->lock);
	return reply_stream(r, 200, "application/connect+json", connect_stream_read, connect_stream_done,
			    connect_stream_ref(s));
}

int connect_stream_reply_error(struct req *r, const char *code, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	struct cstream *s;
	va_list ap;
	int ret;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	s = connect_stream_new(0, NULL, 1);
	if (!s)
		return -1;
	connect_stream_end(s, code, "%s", msg ? msg : code);
	ret = connect_stream_reply(r, s);
	connect_stream_unref(s);
	return ret;
}

unsigned connect_keepalive_ms(struct req *r)
{
	const char *h = req_header(r, "Keepalive-Ping-Interval");
	unsigned long v = cfg.keepalive_s;
	char *end;

	if (h && *h) {
		errno = 0;
		v = strtoul(h, &end, 10);
		if (errno || *end || end == h)
			v = cfg.keepalive_s;
	}
	if (v > 3600)
		v = 3600;
	return (unsigned)v * 1000u;
}
