/*
 * A tap follows one process of a sandbox for emberfs-e2b's streams
 * (docs/e2b.md, "Processes"): two threads are the only readers of its
 * slot's stdout and stderr and send each chunk to every stream attached at
 * that moment (none: dropped, the process runs on); a third waits for the
 * exit in the slot's status, then sends the end event and the end-stream
 * envelope to every stream and takes the tap out of the table. A slot the
 * tap made (ours) is removed once its outputs closed. One tap per slot, in
 * a table of every sandbox's.
 *
 * Threads: any. A tap is reference counted; the functions returning one
 * give a reference the caller drops with tap_unref.
 */
#pragma once

#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/common.h"

struct cstream;
struct sbx;
struct sub;

/* The fields above lock are set at tap_new and never change (but next, refs, deadline_ns). */
struct tap {
	struct tap *next; /* protected by taps_lock */
	int refs;	  /* atomic: the table's, each reader's, each sub's, each caller's */
	char sandbox[NAME_MAX_LEN + 1];
	char slot[NAME_MAX_LEN + 1];
	char dir[PATH_MAX]; /* MOUNT/templates/T/sandboxes/ID/procs/SLOT */
	uint32_t pid;
	json_object *config; /* ProcessConfig as List answers it */
	char *tag;
	bool ours;	   /* we made the slot: removed once the process ended */
	uint64_t deadline_ns; /* Connect-Timeout-Ms of its Start: KILL then (0: none); protected by taps_lock */

	pthread_mutex_t lock;
	pthread_cond_t cond; /* a reader ended: the waiter wakes (CLOCK_MONOTONIC) */
	struct sub *subs;  /* protected by lock */
	int readers;	   /* reader threads running: protected by lock */
	/*
	 * Per output (stdout, stderr): since when its reader waits in a read()
	 * that returned nothing yet (0: not in one), and whether it reached EOF.
	 * The waiter ends a stream after the exit only once every open output
	 * had a read, issued after the exit, wait EXIT_QUIET (tap.c).
	 */
	uint64_t in_read_since[2];
	bool out_eof[2];
	bool reading;	   /* the threads were started: protected by lock */
	bool ended;	   /* the end went out (no more subscribers): protected by lock, set under fanout_lock too */
	bool removed;	   /* the slot was removed: protected by lock */
	pthread_mutex_t fanout_lock; /* held around each fan-out and the end: their order in every stream */

	pthread_mutex_t stdin_lock;
	int stdin_fd;	   /* protected by stdin_lock; -1 when not open */
	bool stdin_closed; /* protected by stdin_lock */
};

/* A tap of sb's slot (not yet in the table): config and tag are copied/referenced. NULL on ENOMEM. */
struct tap *tap_new(const struct sbx *sb, const char *slot, uint32_t pid, json_object *config, const char *tag,
		    bool ours);
struct tap *tap_ref(struct tap *t);
void tap_unref(struct tap *t); /* NULL is fine */

/*
 * Puts t in the table, unless a tap for the same slot is there already:
 * then returns that one (a reference) and t is left out. NULL: t is in.
 */
struct tap *tap_register(struct tap *t);
/* The tap of sandbox id's process pid (or of tag when not NULL); of its slot. NULL if none. */
struct tap *tap_find(const char *id, uint32_t pid, const char *tag);
struct tap *tap_find_slot(const char *id, const char *slot);

/* A file of the tap's slot into buf (PATH_MAX bytes). */
void tap_path(const struct tap *t, const char *file, char buf[PATH_MAX]);

/* Attaches s with the start event first: 0, -ESRCH (the process ended), -ENOMEM. */
int tap_attach(struct tap *t, struct cstream *s);
/* Starts the threads, once (later calls do nothing). 0 or -errno (then the tap ended). */
int tap_run(struct tap *t);
/* KILL to the process timeout_ms from now (Connect-Timeout-Ms of its Start, as envd). */
void tap_set_deadline(struct tap *t, uint64_t timeout_ms);
