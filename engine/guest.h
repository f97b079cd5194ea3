/*
 * Inside a sandbox: calls into its guest agent for the live filesystem
 * (live/NAME) and streaming processes (procs/ID). See docs/protocol.md for
 * the ops and docs/interface.md for the files built on them.
 *
 * Every access that needs the guest waits for readiness, and resumes a
 * paused or wakes a hibernated sandbox first (as exec does); a failed,
 * stopped or vanishing sandbox answers EIO.
 */
#pragma once

#include <json-c/json.h>

#include "engine.h"

#define GUEST_CALL_TIMEOUT_MS 30000
#define GUEST_BIN_MAX (1u << 20) /* the largest payload of one call (AGENT_BIN_MAX) */

struct agent_client;

/*
 * Pins the sandbox's guest connection for a run of calls: resumes or wakes
 * the sandbox if it sleeps and holds it awake (no hibernate, no idle timeout)
 * until guest_conn_put. 0 or -EIO.
 */
struct guest_conn {
	struct sandbox *s;
	struct agent_client *agent;
};
int guest_conn_get(struct sandbox *s, struct guest_conn *c);
void guest_conn_put(struct guest_conn *c);

/*
 * One call on a pinned connection: req gets "op"; bin (bin_len bytes) is its
 * payload, a reply's payload is returned in *data (malloc'd) if data is given.
 * The guest's errno comes back negated; a connection that ended: -EIO.
 */
int guest_call(struct guest_conn *c, const char *op, json_object *req, const void *bin, size_t bin_len,
	       json_object **resp, uint8_t **data, size_t *data_len);
/*
 * Asynchronous: cb(arg, 0 or -errno, reply, payload, payload length) runs
 * once from the connection's reader thread (-EIO when the connection ends
 * first); it must not block. If this fails, cb never runs.
 */
typedef void (*guest_async_fn)(void *arg, int result, json_object *resp, const uint8_t *data, size_t len);
int guest_call_async(struct guest_conn *c, const char *op, json_object *req, guest_async_fn cb, void *arg);
/* The same, pinning and unpinning around one call. */
int sandbox_guest_call(struct sandbox *s, const char *op, json_object *req, const void *bin, size_t bin_len,
		       json_object **resp, uint8_t **data, size_t *data_len);

/* ---- processes (procs/ID) ---- */
struct proc;

/* Names: the sandbox naming rule. -EEXIST, -EINVAL, -ENOSPC (at most 256 per sandbox). */
int sandbox_proc_create(struct sandbox *s, const char *name, struct proc **ret);
struct proc *sandbox_proc_get(struct sandbox *s, const char *name); /* ref'd or NULL */
struct proc *engine_proc_by_id(struct engine *e, uint64_t id);	    /* ref'd or NULL */
char **sandbox_proc_list(struct sandbox *s);			    /* strv_free */
/* rmdir: kills the process if it runs and frees it; -ENOENT. */
int sandbox_proc_remove(struct sandbox *s, const char *name);
void proc_unref(struct proc *p);
uint64_t proc_id(const struct proc *p);
struct sandbox *proc_sandbox(const struct proc *p); /* not ref'd: valid while p is */

/*
 * Starts the process: text is a shell command line (run with /bin/sh -c, a
 * trailing newline dropped) or a JSON object {"argv":[..]|"sh":..,"env":{..},
 * "cwd":..}. -EBUSY if already started, -EINVAL for bad input, -EIO.
 */
int proc_start(struct proc *p, const char *text, size_t len);
char *proc_render_status(struct proc *p);
/* A signal name (TERM, SIGTERM, term) or number. -EINVAL, -ESRCH (not running), -EIO. */
int proc_signal(struct proc *p, const char *text, size_t len);

/*
 * Reads stdout (stream 1) or stderr (2): cb(arg, 0, data, len) as soon as
 * anything is available (len 0: end of the stream, everything read), or
 * cb(arg, -errno, NULL, 0). Called at once from this thread if decided, else
 * later from another thread. The token cancels a read not yet answered
 * (nothing is lost: the data stays for the next read).
 */
typedef void (*proc_read_fn)(void *arg, int result, const uint8_t *data, size_t len);
int proc_read(struct proc *p, int stream, size_t max, proc_read_fn cb, void *arg, uint64_t *token);
bool proc_read_cancel(struct proc *p, uint64_t token);
/* stdin: cb(arg, written or -errno) once every byte is in the pipe; eof closes it after. */
typedef void (*proc_write_fn)(void *arg, ssize_t result);
int proc_write(struct proc *p, const void *data, size_t len, bool eof, proc_write_fn cb, void *arg);

/* All of a sandbox's processes go with it (destroy). */
void sandbox_procs_free(struct sandbox *s);

/*
 * Over a daemon restart and a wake (guest.c): the record's "procs" (e->lock
 * held); the processes rebuilt from it; the jobs an attach keeps; what its
 * answer on connection ac means for them; a sandbox left without a guest.
 */
json_object *sandbox_procs_json(struct sandbox *s);
void sandbox_procs_from_json(struct sandbox *s, json_object *arr);
struct start_info;
void sandbox_procs_add_start(struct sandbox *s, const struct start_info *si);
json_object *sandbox_procs_keep(struct sandbox *s);
void sandbox_procs_attached(struct sandbox *s, struct agent_client *ac, json_object *resp);
void sandbox_procs_settle(struct sandbox *s);
