/* The store's parts (store.c: HTTP and the chunk cache; lazyfs.c: the lazy files' mount). */
#pragma once

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>

#include "objstore.h"

struct centry;
struct lazyfs;

struct objstore {
	struct objstore_options o;
	char *url;	 /* with its trailing '/' */
	char *chunk_dir; /* cache_dir/chunks */
	pthread_mutex_t lock; /* the index, the stats, the idle handles */
	pthread_cond_t cond;  /* an entry stopped being busy */
	struct centry *buckets[4096];
	struct centry *newest, *oldest;
	struct objstore_stats st;
	CURL *idle[32];
	unsigned n_idle;
	struct lazyfs *lazy;
	atomic_bool stopping; /* objstore_stop: requests end at once, none is tried again */
};

/* SHA-256 of data as lower-case hex (OpenSSL's, with the CPU's SHA extensions where it has them). */
int objstore_digest(const void *data, size_t len, char out[OBJSTORE_DIGEST_HEX + 1]);

int lazyfs_start(struct objstore *s, const char *dir, char **ret_error);
void lazyfs_stop(struct objstore *s);
