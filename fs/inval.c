/*
 * Kernel cache invalidations: one queue and one thread (docs/architecture.md
 * "FUSE"). A notification can block in the kernel until page locks are
 * released, and those may wait for replies a FUSE thread must send: so no
 * FUSE handler and no engine thread calls the kernel itself.
 *
 * A getattr may wait for its invalidation (live.c: a read(2) that follows
 * must not be served the pages the guest changed). That wait is safe: the
 * kernel asks getattr with no page of the inode locked, and whatever holds
 * one (a read or write of the inode in flight) is answered by another FUSE
 * thread. It is bounded all the same.
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "fs_internal.h"

#define INVAL_WAIT_MS 5000

struct item {
	fuse_ino_t ino;
	bool attr_only;
	uint64_t due_ns;		/* not before (monotonic) */
	inval_check_fn check;		/* asked when due; NULL: always */
	void *ctx;
	bool done;     /* protected by lock */
	unsigned refs; /* protected by lock: the queue's, and a waiter's */
	struct item *next;
};

struct inval {
	struct fuse_session *se;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* work for the thread */
	pthread_cond_t done;	/* an item done */
	struct item *head;	/* lock: by due time */
	bool stop;		/* lock */
};

/* lock held */
static void item_put(struct item *it)
{
	if (--it->refs == 0)
		free(it);
}

/* lock held: in due order, after the items due at the same time */
static void insert(struct inval *iv, struct item *it)
{
	struct item **pp = &iv->head;

	while (*pp && (*pp)->due_ns <= it->due_ns)
		pp = &(*pp)->next;
	it->next = *pp;
	*pp = it;
	pthread_cond_signal(&iv->cond);
}

static struct timespec abs_time(uint64_t mono_ns)
{
	struct timespec ts = { .tv_sec = (time_t)(mono_ns / 1000000000), .tv_nsec = (long)(mono_ns % 1000000000) };

	return ts;
}

static void *inval_main(void *arg)
{
	struct inval *iv = arg;

	pthread_mutex_lock(&iv->lock);
	for (;;) {
		struct item *it = iv->head;
		uint64_t later = 0;

		if (!it && iv->stop)
			break;
		if (!it) {
			pthread_cond_wait(&iv->cond, &iv->lock);
			continue;
		}
		if (it->due_ns > now_ns() && !iv->stop) {
			struct timespec until = abs_time(it->due_ns);

			pthread_cond_timedwait(&iv->cond, &iv->lock, &until);
			continue;
		}
		iv->head = it->next;
		pthread_mutex_unlock(&iv->lock);
		/* -ENOENT: the kernel forgot the inode, nothing is cached */
		if (!it->check || it->check(it->ctx, it->ino, &later))
			fuse_lowlevel_notify_inval_inode(iv->se, it->ino, it->attr_only ? -1 : 0, 0);
		pthread_mutex_lock(&iv->lock);
		if (later && !iv->stop) {
			it->due_ns = later;
			insert(iv, it);
			continue;
		}
		it->done = true;
		pthread_cond_broadcast(&iv->done);
		item_put(it);
	}
	pthread_mutex_unlock(&iv->lock);
	return NULL;
}

int inval_new(struct fuse_session *se, struct inval **ret)
{
	struct inval *iv = calloc(1, sizeof(*iv));
	pthread_condattr_t ca;
	int r;

	if (!iv)
		return -ENOMEM;
	iv->se = se;
	pthread_mutex_init(&iv->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* due times are now_ns()'s */
	pthread_cond_init(&iv->cond, &ca);
	pthread_cond_init(&iv->done, &ca);
	pthread_condattr_destroy(&ca);
	r = thread_create(&iv->thread, NULL, inval_main, iv);
	if (r < 0) {
		pthread_cond_destroy(&iv->done);
		pthread_cond_destroy(&iv->cond);
		pthread_mutex_destroy(&iv->lock);
		free(iv);
		return r;
	}
	*ret = iv;
	return 0;
}

/* Stops the thread once what is due is done; later items are dropped. */
void inval_free(struct inval *iv)
{
	if (!iv)
		return;
	pthread_mutex_lock(&iv->lock);
	iv->stop = true;
	pthread_cond_broadcast(&iv->cond);
	pthread_mutex_unlock(&iv->lock);
	pthread_join(iv->thread, NULL);
	pthread_cond_destroy(&iv->done);
	pthread_cond_destroy(&iv->cond);
	pthread_mutex_destroy(&iv->lock);
	free(iv);
}

static void queue_item(struct inval *iv, fuse_ino_t ino, bool attr_only, uint64_t due_ns, inval_check_fn check,
		       void *ctx, bool wait)
{
	struct item *it;
	struct timespec until;

	if (!iv || !(it = calloc(1, sizeof(*it))))
		return;
	*it = (struct item){ .ino = ino, .attr_only = attr_only, .due_ns = due_ns, .check = check, .ctx = ctx,
			     .refs = wait ? 2 : 1 };
	until = abs_time(now_ns() + INVAL_WAIT_MS * 1000000ull);
	pthread_mutex_lock(&iv->lock);
	if (iv->stop) {
		free(it);
		pthread_mutex_unlock(&iv->lock);
		return;
	}
	insert(iv, it);
	while (wait && !it->done)
		if (pthread_cond_timedwait(&iv->done, &iv->lock, &until) == ETIMEDOUT)
			break;
	if (wait)
		item_put(it);
	pthread_mutex_unlock(&iv->lock);
}

void inval_inode(struct inval *iv, fuse_ino_t ino, bool wait)
{
	queue_item(iv, ino, false, 0, NULL, NULL, wait);
}

void inval_attr(struct inval *iv, fuse_ino_t ino)
{
	queue_item(iv, ino, true, 0, NULL, NULL, true);
}

void inval_inode_at(struct inval *iv, fuse_ino_t ino, uint64_t due_ns, inval_check_fn check, void *ctx)
{
	queue_item(iv, ino, false, due_ns, check, ctx, false);
}
