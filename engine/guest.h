/*
 * Inside the engine: calls into a sandbox's guest agent, on which the typed
 * calls for the live filesystem (guestfs.h) and streaming processes
 * (procs.h) are built. See docs/protocol.md for the ops and
 * docs/interface.md for the files built on them.
 *
 * Every access that needs the guest waits for readiness, and resumes a
 * paused or wakes a hibernated sandbox first (as exec does); a failed,
 * stopped or vanishing sandbox answers EIO.
 */
#pragma once

#include <json-c/json.h>

#include "engine.h"

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
