/*
 * Objects by their 64-bit id (templates, sandboxes, processes: what a FUSE
 * inode names), in O(1) instead of a scan of every template's sandboxes.
 * Open addressing with linear probing; not thread-safe (the engine's tables
 * are used under e->lock).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct idtable {
	struct idslot {
		uint64_t id; /* 0: empty; IDTABLE_GONE: removed */
		void *obj;
	} *v;
	size_t cap;  /* a power of two, or 0 */
	size_t n;    /* ids present */
	size_t used; /* slots not empty (present + removed) */
};
#define IDTABLE_GONE UINT64_MAX

/* Adds or replaces id (neither 0 nor IDTABLE_GONE); -ENOMEM leaves the table as it was. */
int idtable_put(struct idtable *t, uint64_t id, void *obj);
/* The object, or NULL. */
void *idtable_get(const struct idtable *t, uint64_t id);
/* Removes id if present. */
void idtable_del(struct idtable *t, uint64_t id);
void idtable_free(struct idtable *t);
