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
	bool done;    /* protected by lock */
	unsigned refs; /* protected by lock: the queue's, and a waiter's */
	struct item *next;
};

struct inval {
	struct fuse_session *se;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* work for the thread */
	pthread_cond_t done;	/* an item done */
	struct item *head, *tail; /* lock */
	bool stop;		  /* lock */
};

/* lock held */
static void item_put(struct item *it)
{
	if (--it->refs == 0)
		free(it);
}

static void *inval_main(void *arg)
{
	struct inval *iv = arg;

	pthread_mutex_lock(&iv->lock);
	for (;;) {
		struct item *it;

		while (!iv->head && !iv->stop)
			pthread_cond_wait(&iv->cond, &iv->lock);
		if (!iv->head)
			break;
		it = iv->head;
		iv->head = it->next;
		if (!iv->head)
			iv->tail = NULL;
		pthread_mutex_unlock(&iv->lock);
		/* -ENOENT: the kernel forgot the inode, nothing is cached */
		fuse_lowlevel_notify_inval_inode(iv->se, it->ino, 0, 0);
		pthread_mutex_lock(&iv->lock);
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
	int r;

	if (!iv)
		return -ENOMEM;
	iv->se = se;
	pthread_mutex_init(&iv->lock, NULL);
	pthread_cond_init(&iv->cond, NULL);
	pthread_cond_init(&iv->done, NULL);
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

/* Stops the thread once the queue is empty; nothing is queued after. */
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

void inval_inode(struct inval *iv, fuse_ino_t ino, bool wait)
{
	struct item *it;
	struct timespec until;

	if (!iv || !(it = calloc(1, sizeof(*it))))
		return;
	it->ino = ino;
	it->refs = wait ? 2 : 1;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += INVAL_WAIT_MS / 1000;
	pthread_mutex_lock(&iv->lock);
	if (iv->stop) {
		free(it);
		pthread_mutex_unlock(&iv->lock);
		return;
	}
	it->next = NULL;
	if (iv->tail)
		iv->tail->next = it;
	else
		iv->head = it;
	iv->tail = it;
	pthread_cond_signal(&iv->cond);
	while (wait && !it->done)
		if (pthread_cond_timedwait(&iv->done, &iv->lock, &until) == ETIMEDOUT)
			break;
	if (wait)
		item_put(it);
	pthread_mutex_unlock(&iv->lock);
}
