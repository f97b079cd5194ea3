/*
 * A client of etcd v3's JSON gateway (etcd-server 3.4: /v3/...), with
 * libcurl. Keys and values are bytes (base64 on the wire, done here);
 * int64 fields are strings on the wire. Every call tries the endpoints in
 * turn (the last one that answered first) and is bounded by the timeout
 * given to etcd_new. Returns 0 or a negative errno:
 *   -EAGAIN     no endpoint answered (unreachable, quorum lost, timeout);
 *               etcd_error() says why
 *   -EEXIST     etcd_create: the key exists
 *   -ESTALE     a fenced call: the key's mod revision is not the one given
 *               (or the key is gone)
 *   -ENOENT     a lease that does not exist (expired or revoked)
 *   -E2BIG      a request beyond etcd's limits (1.5 MiB, 128 ops per txn)
 *   -EPROTO     an answer that is not what the gateway sends
 * Thread-safe: each call uses its own curl handle from a small pool, so
 * connections are kept alive between calls.
 * Every request asks for a leader (gRPC metadata "hasleader", passed on by
 * the gateway): a member without one (an election, or quorum lost) refuses
 * at once and the next member is asked; while every member refused so
 * (or could not be reached), the round is tried again until the timeout
 * (a read, a put, a delete, a grant, a keepalive: whatever went wrong).
 * After a member timed out the request may have been done: a read, a
 * put, a delete, a grant or a keepalive goes on to the next member; a txn
 * (create, the fenced calls, etcd_txn) or a revoke does not (done twice,
 * it would fail the second time: -EEXIST for the caller's own key) and
 * answers -EAGAIN, as etcd's own client does.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct etcd;

/* urls: comma-separated "http://HOST:PORT" of the members; timeout_ms bounds each call. */
int etcd_new(const char *urls, unsigned timeout_ms, struct etcd **ret);
void etcd_free(struct etcd *e); /* after every watch of it is stopped */
/* The reason of the calling thread's last -EAGAIN/-EPROTO (thread-local; never NULL). */
const char *etcd_error(void);

int etcd_lease_grant(struct etcd *e, unsigned ttl_s, int64_t *ret_id);
/* -ENOENT once the lease is gone (the gateway answers 200 without a TTL then). */
int etcd_lease_keepalive(struct etcd *e, int64_t id, int64_t *ret_ttl);
int etcd_lease_revoke(struct etcd *e, int64_t id);

struct etcd_kv {
	char *key;
	uint8_t *value; /* NUL-terminated too (value[value_len] == 0) */
	size_t value_len;
	int64_t create_rev, mod_rev, lease;
};
void etcd_kv_clear(struct etcd_kv *kv);
void etcd_kvs_free(struct etcd_kv *kvs, size_t n);

/* lease 0: none. *ret_rev (may be NULL): the revision of the write. */
int etcd_put(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t *ret_rev);
/* Create-if-absent: a txn comparing CREATE revision == 0. -EEXIST if present. */
int etcd_create(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t *ret_rev);
/* A put fenced by MOD revision == mod_rev (-ESTALE otherwise). */
int etcd_put_fenced(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t mod_rev,
		    int64_t *ret_rev);
/*
 * A transaction: if every comparison holds (key's CREATE or MOD revision
 * EQUAL to rev; a CREATE revision of 0: the key is absent), every op is
 * done, atomically. -ESTALE if a comparison failed (nothing done);
 * -E2BIG beyond 128 comparisons or operations, or 1.5 MiB, before
 * anything is sent. *ret_rev (may be NULL): the revision of the txn.
 */
enum etcd_cmp_target { ETCD_CMP_CREATE, ETCD_CMP_MOD };
struct etcd_cmp {
	const char *key;
	enum etcd_cmp_target target;
	int64_t rev;
};
enum etcd_op_type { ETCD_OP_PUT, ETCD_OP_DELETE };
struct etcd_op {
	enum etcd_op_type type;
	const char *key;
	const void *val; /* PUT only */
	size_t len;
	int64_t lease;	 /* PUT only; 0: none */
};
int etcd_txn(struct etcd *e, const struct etcd_cmp *cmps, size_t n_cmps, const struct etcd_op *ops, size_t n_ops,
	     int64_t *ret_rev);
/* Deletes key (0 even if it was absent); *ret_deleted (may be NULL): how many. */
int etcd_delete(struct etcd *e, const char *key, int64_t *ret_deleted);
/* A delete fenced by MOD revision == mod_rev (-ESTALE otherwise). */
int etcd_delete_fenced(struct etcd *e, const char *key, int64_t mod_rev);
/* One key: -ENOENT if absent. */
int etcd_get(struct etcd *e, const char *key, struct etcd_kv *ret);
/* Every key under prefix (sorted by key), and the store's revision of the read. */
int etcd_range_prefix(struct etcd *e, const char *prefix, struct etcd_kv **ret_kvs, size_t *ret_n, int64_t *ret_rev);

/*
 * A watch of every key under prefix, on its own thread: first a range read
 * handed to reset(kvs, n, rev) (the whole state), then every change from
 * rev + 1 on as event(). The stream (newline-delimited JSON whose chunks
 * are not message boundaries) is parsed incrementally with json-c. On a
 * broken stream, an unreachable cluster or a compaction past the watch's
 * revision, it says so (state(ctx, false, reason)), retries with backoff
 * (at most 1 s apart), and starts again with a range read and reset();
 * state(ctx, true, NULL) when a watch is established again.
 * Callbacks run on the watch's thread; kvs are the callee's to keep
 * (etcd_kvs_free) or not: they are freed after the call returns.
 */
enum etcd_ev_type { ETCD_EV_PUT, ETCD_EV_DELETE };
struct etcd_event {
	enum etcd_ev_type type;
	struct etcd_kv kv;	/* DELETE: key and mod_rev only */
	struct etcd_kv prev;	/* DELETE: the value before (prev_kv), if the server sent it; else zeroed */
};
struct etcd_watch_cb {
	void (*reset)(void *ctx, const struct etcd_kv *kvs, size_t n, int64_t rev);
	void (*event)(void *ctx, const struct etcd_event *ev);
	void (*state)(void *ctx, bool connected, const char *reason);
	void *ctx;
};
struct etcd_watch;
int etcd_watch_start(struct etcd *e, const char *prefix, const struct etcd_watch_cb *cb, struct etcd_watch **ret);
/* Stops the thread (bounded: the stream is aborted), no callback after it returns. Not from a callback. */
void etcd_watch_stop(struct etcd_watch *w);

/*
 * etcd_watch_start for a caller that already has the state at rev (> 0):
 * no first range read, events from rev + 1 on. If the store was compacted
 * past rev, it falls back to a range read and reset() (after state(false)).
 */
int etcd_watch_start_from(struct etcd *e, const char *prefix, int64_t rev, const struct etcd_watch_cb *cb,
			  struct etcd_watch **ret);
