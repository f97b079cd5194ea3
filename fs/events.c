/*
 * MOUNT/events and poll on status files.
 *
 * Every open of `events` is a subscriber with its own queue of JSON lines
 * (one per engine event, from the open on); a read returns what is queued
 * and parks while nothing is, like `tail -f`. A subscriber that does not
 * read keeps at most EVENTS_QUEUE_MAX bytes; later events are counted and
 * reported as one {"type":"lost","count":N} line once it reads again.
 *
 * poll() on a sandbox's status: the poll handle is kept until the
 * sandbox's next state change, which notifies it (see fh_poll).
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "fs_internal.h"

#define EVENTS_QUEUE_MAX (1u << 20)

struct sub {
	struct open_handle oh; /* first */
	struct events *ev;
	char *buf;
	size_t len;
	uint64_t lost;
	fuse_req_t req; /* a parked read */
	size_t req_size;
	struct fuse_pollhandle *ph;
	int refs; /* ev->lock: the open file, a parked read */
	struct sub *next;
};

struct spoll {
	uint64_t sb;
	struct fuse_pollhandle *ph;
	struct spoll *next;
};

struct events {
	pthread_mutex_t lock;
	struct fs *f;
	bool detached; /* the engine's hook cleared: it may be gone */
	struct sub *subs;
	struct spoll *polls;
};

static void sub_unref_locked(struct events *ev, struct sub *s)
{
	if (--s->refs > 0)
		return;
	for (struct sub **pp = &ev->subs; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	if (s->ph)
		fuse_pollhandle_destroy(s->ph);
	free(s->buf);
	free(s);
}

static int sub_append(struct sub *s, const char *line, size_t n)
{
	char *nb;

	if (s->len + n + 1 > EVENTS_QUEUE_MAX)
		return -ENOBUFS;
	nb = realloc(s->buf, s->len + n + 1);
	if (!nb)
		return -ENOMEM;
	s->buf = nb;
	memcpy(s->buf + s->len, line, n);
	s->buf[s->len + n] = '\n';
	s->len += n + 1;
	return 0;
}

/* The "lost" line goes first once there is room again; then whole lines, as many as fit in size. */
static size_t sub_take(struct sub *s, size_t size, char **out)
{
	size_t n = 0;

	if (s->lost) {
		char line[80];
		int k = snprintf(line, sizeof(line), "{\"type\":\"lost\",\"count\":%llu}", (unsigned long long)s->lost);
		char *nb = malloc(s->len + (size_t)k + 1);

		if (nb) {
			memcpy(nb, line, (size_t)k);
			nb[k] = '\n';
			memcpy(nb + k + 1, s->buf, s->len);
			free(s->buf);
			s->buf = nb;
			s->len += (size_t)k + 1;
			s->lost = 0;
		}
	}
	while (n < s->len && n < size) {
		char *nl = memchr(s->buf + n, '\n', s->len - n);
		size_t end = nl ? (size_t)(nl - s->buf) + 1 : s->len;

		if (end > size && n > 0)
			break;
		n = end > size ? size : end; /* a line longer than the read is split */
	}
	*out = malloc(n ? n : 1);
	if (!*out)
		return 0;
	memcpy(*out, s->buf, n);
	memmove(s->buf, s->buf + n, s->len - n);
	s->len -= n;
	return n;
}

/* lock held: answers a parked read if there is anything. */
static void sub_serve(struct events *ev, struct sub *s)
{
	char *out = NULL;
	size_t n;
	fuse_req_t req;

	if (!s->req || (!s->len && !s->lost))
		return;
	req = TAKE_PTR(s->req);
	n = sub_take(s, s->req_size, &out);
	fuse_reply_buf(req, out, n);
	free(out);
	sub_unref_locked(ev, s);
}

static void on_event(void *arg, uint64_t id, const char *line)
{
	struct events *ev = arg;
	size_t n = strlen(line);

	follow_kick(ev->f); /* a bake that ended ends its log's readers */
	pthread_mutex_lock(&ev->lock);
	for (struct sub *s = ev->subs, *next; s; s = next) {
		next = s->next;
		if (s->lost || sub_append(s, line, n) < 0)
			s->lost++;
		if (s->ph) {
			fuse_lowlevel_notify_poll(s->ph);
			fuse_pollhandle_destroy(TAKE_PTR(s->ph));
		}
		sub_serve(ev, s);
	}
	for (struct spoll **pp = &ev->polls; *pp;) {
		struct spoll *p = *pp;

		if (p->sb != id) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		fuse_lowlevel_notify_poll(p->ph);
		fuse_pollhandle_destroy(p->ph);
		free(p);
	}
	pthread_mutex_unlock(&ev->lock);
}

int events_init(struct fs *f)
{
	struct events *ev = calloc(1, sizeof(*ev));

	if (!ev)
		return -ENOMEM;
	pthread_mutex_init(&ev->lock, NULL);
	ev->f = f;
	f->events = ev;
	engine_set_event_fn(f->e, on_event, ev);
	return 0;
}

void events_detach(struct fs *f)
{
	if (f->events && !f->events->detached) {
		engine_set_event_fn(f->e, NULL, NULL);
		f->events->detached = true;
	}
}

void events_free(struct fs *f)
{
	struct events *ev = f->events;

	if (!ev)
		return;
	events_detach(f); /* no-op after fs_release_handles: the engine may be freed by now */
	/* subscribers whose file was released but whose read was still parked */
	pthread_mutex_lock(&ev->lock);
	while (ev->subs) {
		struct sub *s = ev->subs;

		if (s->req) {
			fuse_reply_err(TAKE_PTR(s->req), EINTR);
			s->refs--;
		}
		s->refs = 1;
		sub_unref_locked(ev, s);
	}
	pthread_mutex_unlock(&ev->lock);
	while (ev->polls) {
		struct spoll *p = ev->polls;

		ev->polls = p->next;
		fuse_pollhandle_destroy(p->ph);
		free(p);
	}
	pthread_mutex_destroy(&ev->lock);
	free(ev);
	f->events = NULL;
}

void status_poll_add(struct fs *f, uint64_t sandbox_id, struct fuse_pollhandle *ph)
{
	struct events *ev = f->events;
	struct spoll *p = calloc(1, sizeof(*p));

	if (!p) {
		fuse_pollhandle_destroy(ph);
		return;
	}
	p->sb = sandbox_id;
	p->ph = ph;
	pthread_mutex_lock(&ev->lock);
	p->next = ev->polls;
	ev->polls = p;
	pthread_mutex_unlock(&ev->lock);
}

/* ---- the events file ---- */

static void sub_release_open(struct open_handle *oh)
{
	struct sub *s = (struct sub *)oh;
	struct events *ev = s->ev;

	pthread_mutex_lock(&ev->lock);
	sub_unref_locked(ev, s);
	pthread_mutex_unlock(&ev->lock);
}

bool events_is(struct fuse_file_info *fi)
{
	return fi->fh & 1; /* a struct sub pointer, tagged */
}

static struct sub *sub_of(struct fuse_file_info *fi)
{
	return (struct sub *)(uintptr_t)(fi->fh & ~(uint64_t)1);
}

void events_open(struct fs *f, fuse_req_t req, struct fuse_file_info *fi)
{
	struct events *ev = f->events;
	struct sub *s;

	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EACCES);
		return;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	s->ev = ev;
	s->refs = 1;
	pthread_mutex_lock(&ev->lock);
	s->next = ev->subs;
	ev->subs = s;
	pthread_mutex_unlock(&ev->lock);
	fs_handle_add(f, &s->oh, sub_release_open);
	fi->fh = (uint64_t)(uintptr_t)s | 1;
	fi->direct_io = 1;
	fi->nonseekable = 1;
	fuse_reply_open(req, fi);
}

static void events_interrupt(fuse_req_t req, void *arg)
{
	struct sub *s = arg;
	struct events *ev = s->ev;

	pthread_mutex_lock(&ev->lock);
	if (s->req == req) {
		s->req = NULL;
		fuse_reply_err(req, EINTR);
		sub_unref_locked(ev, s);
	}
	pthread_mutex_unlock(&ev->lock);
}

void events_read(fuse_req_t req, size_t size, struct fuse_file_info *fi)
{
	struct sub *s = sub_of(fi);
	struct events *ev = s->ev;
	int r = 0;

	/* before the request is published: once it is, an event may answer (and free) it */
	fuse_req_interrupt_func(req, events_interrupt, s);
	pthread_mutex_lock(&ev->lock);
	if (s->req) {
		r = EBUSY;
	} else if (fuse_req_interrupted(req)) {
		r = EINTR;
	} else {
		s->req = req;
		s->req_size = size;
		s->refs++;
		sub_serve(ev, s);
	}
	pthread_mutex_unlock(&ev->lock);
	if (r)
		fuse_reply_err(req, r);
}

void events_poll(fuse_req_t req, struct fuse_file_info *fi, struct fuse_pollhandle *ph)
{
	struct sub *s = sub_of(fi);
	struct events *ev = s->ev;
	unsigned revents;

	pthread_mutex_lock(&ev->lock);
	revents = s->len || s->lost ? POLLIN | POLLRDNORM : 0;
	if (ph) {
		if (s->ph)
			fuse_pollhandle_destroy(s->ph);
		s->ph = ph;
	}
	pthread_mutex_unlock(&ev->lock);
	fuse_reply_poll(req, revents);
}

void events_release(fuse_req_t req, struct fuse_file_info *fi)
{
	struct sub *s = sub_of(fi);
	struct events *ev = s->ev;

	fs_handle_del(ev->f, &s->oh);
	pthread_mutex_lock(&ev->lock);
	sub_unref_locked(ev, s);
	pthread_mutex_unlock(&ev->lock);
	fuse_reply_err(req, 0);
}
