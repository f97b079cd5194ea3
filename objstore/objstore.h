/*
 * The snapshot store (docs/architecture.md, "Snapshots that travel"): an
 * HTTP object store every host shares (--store URL: PUT and GET, e.g.
 * Debian's nginx with its WebDAV module), a per-host chunk cache with a size
 * limit and LRU eviction, and a private FUSE mount (lazyfs.c) whose files are
 * snapshot memory assembled from chunks fetched as they are read.
 *
 * Layout in the store:
 *   URL/chunks/<sha256>        a chunk (at most OBJSTORE_CHUNK_MAX bytes), named by its digest
 *   URL/bakes/<identity>.json  a template's bake record: manifests of its files
 * A file is a manifest: its size, its chunk size (a power of two) and the
 * digest of each piece of that size, "" for a piece that is all zeros (never stored, never fetched).
 * Every chunk is checked against its digest before anything reads it.
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#define OBJSTORE_CHUNK_MIN (4u << 10)
#define OBJSTORE_CHUNK_MAX (4u << 20)
#define OBJSTORE_CHUNK_DEFAULT (256u << 10) /* measured: docs/benchmarks.md, "Snapshots that travel" */
#define OBJSTORE_DIGEST_HEX 64

struct manifest {
	uint64_t size;
	uint32_t chunk;		  /* bytes per piece: a power of two, OBJSTORE_CHUNK_MIN..MAX */
	size_t n;		  /* pieces: ceil(size / chunk) */
	char (*digests)[OBJSTORE_DIGEST_HEX + 1]; /* "" for all zeros */
	uint32_t *hot;		  /* pieces a restore reads first (prefetched), ascending */
	size_t n_hot;
};

void manifest_clear(struct manifest *m);
int manifest_copy(const struct manifest *src, struct manifest *dst);
/* {"size", "chunk", "chunks": [digest or null...], "hot": [index...]}; refuses anything else with why */
int manifest_from_json(json_object *o, struct manifest *m, char **why);
json_object *manifest_json(const struct manifest *m);
/* Bytes of pieces that are not all zeros. */
uint64_t manifest_data_bytes(const struct manifest *m);
/* Whether s is 64 lower-case hex digits. */
bool objstore_digest_valid(const char *s);

struct objstore_options {
	const char *url;       /* the store: "http://host:port/prefix/" (a trailing '/' is added) */
	const char *cache_dir; /* chunks/ under it */
	const char *lazy_dir;  /* the private FUSE mount of lazy files */
	uint64_t limit_bytes;  /* the cache's size limit */
	bool prefetch;	       /* restores fetch a manifest's hot list first */
	unsigned parallel;     /* fetches or uploads at once (default 8) */
	uint32_t chunk;	       /* what publish cuts files into (0: OBJSTORE_CHUNK_DEFAULT) */
	unsigned timeout_ms;   /* one request (default 10000) */
	unsigned retries;      /* further tries of a request that failed (default 3) */
};

struct objstore_stats {
	uint64_t limit_bytes, used_bytes, chunks;
	uint64_t hits, misses, fetched_bytes, fetched_chunks, evictions, errors;
	char last_error[256];
};

struct objstore;

/* Scans the cache (kept across restarts) and mounts lazy_dir. */
int objstore_new(const struct objstore_options *o, struct objstore **ret, char **ret_error);
/* Ends requests in flight and refuses new ones (a shutdown: a bake waiting on a store that hangs stops now). */
void objstore_stop(struct objstore *s);
/* Unmounts lazy_dir (files still mapped then fail), stops the workers. */
void objstore_free(struct objstore *s);
const char *objstore_url(const struct objstore *s);
bool objstore_prefetching(const struct objstore *s);
void objstore_get_stats(struct objstore *s, struct objstore_stats *st);
json_object *objstore_stats_json(struct objstore *s);

/* Small objects by key ("bakes/ID.json"): -ENOENT when the store has none. */
int objstore_get(struct objstore *s, const char *key, size_t max, char **ret, size_t *ret_len, char **why);
int objstore_put(struct objstore *s, const char *key, const void *data, size_t len, char **why);

/*
 * Publishes path: its pieces hashed, every piece that is not all zeros
 * uploaded (parallel) and kept in the cache, *m filled (no hot list).
 */
int objstore_publish_file(struct objstore *s, const char *path, struct manifest *m, char **why);
/* Every digest in the cache (fetched in parallel, checked); why names the first that failed. */
int objstore_fetch(struct objstore *s, const char *const *digests, size_t n, char **why);
/* The manifest's hot pieces into the cache (a no-op with prefetch off). */
int objstore_prefetch(struct objstore *s, const struct manifest *m, char **why);
/* Writes the file m describes at path (sparse: zero pieces are holes); its pieces fetched first. */
int objstore_assemble(struct objstore *s, const struct manifest *m, const char *path, char **why);
/* The manifest's stored pieces this cache does not hold (their digests, each once); 0 when it holds them all. */
size_t objstore_missing(struct objstore *s, const struct manifest *m, const char ***ret);
/* One chunk's bytes [off, off+len) into buf, fetched first if needed. */
int objstore_read_chunk(struct objstore *s, const char *digest, uint64_t off, void *buf, size_t len);

/*
 * A lazy file: m served read-only at lazy_dir/NAME, opened; its reads fetch pieces as they come. The
 * name stays until objstore_free; a new registration under a name replaces
 * the manifest and clears what was read. *ret_fd: O_RDONLY, close-on-exec.
 */
int objstore_lazy_open(struct objstore *s, const char *name, const struct manifest *m, int *ret_fd, char **why);
/* The pieces of NAME read since it was registered, ascending. */
int objstore_lazy_touched(struct objstore *s, const char *name, uint32_t **ret, size_t *ret_n);
