/*
 * Reads that follow a growing file (templates/T/build.log while its bake
 * runs), like `tail -f`: a read at the end parks here and is answered by one
 * thread when the file grows (inotify IN_MODIFY on the file read, whoever
 * writes it: the engine, skopeo, a build step's output) or when the engine
 * reports an event of the object the reader belongs to (the bake ended:
 * then the end of the file is the end).
 *
 * The watch is added on the open file's own inode (through /proc/self/fd),
 * so a new bake's log (a new file renamed over the old) never wakes readers
 * of the old one. Watches are not removed: the kernel drops one with its
 * inode (IN_IGNORED), and a template has one log at a time.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>

#include "fs_internal.h"

struct follow {
	pthread_mutex_t lock;
	struct follower head; /* parked reads; protected by lock */
	atomic_int parked;    /* how many: no wake-ups for engine events while none */
	int ifd;	      /* inotify */
	int kick[2];	      /* a byte: re-check (an engine event), or stop */
	pthread_t thread;
	bool running, stopping;
};

static void list_del(struct follower *w)
{
	atomic_fetch_sub(&w->fl->parked, 1);
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->prev = w->next = w;
}

/*
 * lock held. Answers w's parked read if the file has bytes at its offset,
 * or it has stopped growing (0 bytes: the end); else it stays parked.
 */
static void try_serve(struct follower *w)
{
	char *buf = malloc(w->size ? w->size : 1);
	ssize_t n = buf ? pread(w->fd, buf, w->size, w->off) : -1;
	fuse_req_t req;

	if (n == 0 && w->live(w))
		goto out;
	if (n == 0 && buf) /* it stopped growing after that read: what it wrote last is there now */
		n = pread(w->fd, buf, w->size, w->off);
	req = TAKE_PTR(w->req);
	list_del(w);
	if (n < 0)
		fuse_reply_err(req, buf ? errno : ENOMEM);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	w->done(w); /* may free w */
out:
	free(buf);
}

static void serve_all(struct follow *fl)
{
	pthread_mutex_lock(&fl->lock);
	for (struct follower *w = fl->head.next, *next; w != &fl->head; w = next) {
		next = w->next;
		try_serve(w);
	}
	pthread_mutex_unlock(&fl->lock);
}

static void *follow_main(void *arg)
{
	struct follow *fl = arg;
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

	for (;;) {
		struct pollfd p[2] = { { .fd = fl->ifd, .events = POLLIN }, { .fd = fl->kick[0], .events = POLLIN } };

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[0].revents & POLLIN)
			while (read(fl->ifd, buf, sizeof(buf)) > 0) {
				/* which file moved matters little: parked reads are few, each re-checks its own */
			}
		if (p[1].revents & POLLIN)
			while (read(fl->kick[0], buf, sizeof(buf)) > 0) {
			}
		pthread_mutex_lock(&fl->lock);
		if (fl->stopping) {
			pthread_mutex_unlock(&fl->lock);
			break;
		}
		pthread_mutex_unlock(&fl->lock);
		serve_all(fl);
	}
	return NULL;
}

int follow_init(struct fs *f)
{
	struct follow *fl = calloc(1, sizeof(*fl));

	if (!fl)
		return -ENOMEM;
	pthread_mutex_init(&fl->lock, NULL);
	fl->head.prev = fl->head.next = &fl->head;
	fl->kick[0] = fl->kick[1] = -1;
	fl->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (fl->ifd < 0 || pipe2(fl->kick, O_NONBLOCK | O_CLOEXEC) < 0 ||
	    thread_create(&fl->thread, NULL, follow_main, fl) != 0) {
		int r = -errno;

		if (fl->ifd >= 0)
			close(fl->ifd);
		if (fl->kick[0] >= 0) {
			close(fl->kick[0]);
			close(fl->kick[1]);
		}
		pthread_mutex_destroy(&fl->lock);
		free(fl);
		return r < 0 ? r : -EAGAIN;
	}
	fl->running = true;
	f->follow = fl;
	return 0;
}

/* Lock-free (called with the engine's lock held): only wakes the thread. */
void follow_kick(struct fs *f)
{
	if (f->follow && atomic_load(&f->follow->parked) > 0 && write(f->follow->kick[1], "k", 1) < 0) {
		/* the pipe is full: a wake-up is pending anyway */
	}
}

void follow_read(struct fs *f, struct follower *w, fuse_req_t req, size_t size, off_t off)
{
	struct follow *fl = f->follow;
	char path[64];
	bool interrupted;

	if (!w->watched) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", w->fd);
		w->watched = inotify_add_watch(fl->ifd, path, IN_MODIFY) >= 0;
		if (!w->watched)
			log_warn("build log: no inotify watch (%s): reads end at the end of what is written",
				 strerror(errno));
	}
	fuse_req_interrupt_func(req, follow_interrupt, w);
	pthread_mutex_lock(&fl->lock);
	w->req = req;
	w->size = size;
	w->off = off;
	w->fl = fl;
	w->next = &fl->head;
	w->prev = fl->head.prev;
	fl->head.prev->next = w;
	fl->head.prev = w;
	atomic_fetch_add(&fl->parked, 1);
	interrupted = fuse_req_interrupted(req);
	if (interrupted || !w->watched) {
		/* without a watch nothing would wake it: no waiting */
		if (interrupted) {
			list_del(w);
			fuse_reply_err(TAKE_PTR(w->req), EINTR);
			w->done(w);
		} else {
			try_serve(w);
			if (w->req) {
				list_del(w);
				fuse_reply_buf(TAKE_PTR(w->req), NULL, 0);
				w->done(w);
			}
		}
	} else {
		try_serve(w); /* registered first: a change from here on wakes it */
	}
	pthread_mutex_unlock(&fl->lock);
}

void follow_interrupt(fuse_req_t req, void *arg)
{
	struct follower *w = arg;
	struct follow *fl = w->fl;

	if (!fl)
		return;
	pthread_mutex_lock(&fl->lock);
	if (w->req == req) {
		list_del(w);
		w->req = NULL;
		fuse_reply_err(req, EINTR);
		w->done(w);
	}
	pthread_mutex_unlock(&fl->lock);
}

/* Before the engine goes: the thread ends, parked reads get EINTR. */
void follow_stop(struct fs *f)
{
	struct follow *fl = f->follow;

	if (!fl || !fl->running)
		return;
	pthread_mutex_lock(&fl->lock);
	fl->stopping = true;
	pthread_mutex_unlock(&fl->lock);
	if (write(fl->kick[1], "s", 1) < 0) {
		/* full: the thread has a wake-up pending */
	}
	pthread_join(fl->thread, NULL);
	fl->running = false;
	pthread_mutex_lock(&fl->lock);
	while (fl->head.next != &fl->head) {
		struct follower *w = fl->head.next;

		list_del(w);
		fuse_reply_err(TAKE_PTR(w->req), EINTR);
		w->done(w);
	}
	pthread_mutex_unlock(&fl->lock);
}

void follow_free(struct fs *f)
{
	struct follow *fl = f->follow;

	if (!fl)
		return;
	follow_stop(f);
	close(fl->ifd);
	close(fl->kick[0]);
	close(fl->kick[1]);
	pthread_mutex_destroy(&fl->lock);
	free(fl);
	f->follow = NULL;
}
