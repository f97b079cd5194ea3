/*
 * The decoders of etcd.c, for its unit test and fuzz target: they take
 * bytes from the network (an etcd member or whatever answers on its
 * port), so they are what the fuzzer feeds.
 */
#pragma once

#include <json-c/json.h>

#include "etcd.h"

/*
 * The watch stream's decoder: newline-delimited {"result":{...}} objects
 * (or one {"error":...}) in chunks that are not message boundaries,
 * parsed incrementally with one json_tokener. Each event is handed to
 * event(ctx, ev) and freed after it returns.
 */
struct etcd_wdec {
	json_tokener *tok;
	size_t pending;	    /* bytes of the message being parsed */
	void (*event)(void *ctx, const struct etcd_event *ev);
	void *ctx;
	bool created;	    /* the server said the watch is established */
	int64_t rev;	    /* the newest revision a result carried */
	int64_t compact_rev; /* != 0: the store was compacted past the start */
	char why[256];	    /* why etcd_watch_feed failed */
};
int etcd_wdec_init(struct etcd_wdec *d, void (*event)(void *ctx, const struct etcd_event *ev), void *ctx);
void etcd_wdec_done(struct etcd_wdec *d);
/*
 * Feeds the next bytes of the stream. Returns 0 (go on), -ESTALE (the
 * store was compacted past the watch's start: compact_rev says to
 * where), -ECANCELED (the server canceled the watch), -EIO (the server
 * sent an error), -EPROTO (not what the gateway sends) or -E2BIG (one
 * message beyond ETCD_MAX_ANSWER). After an error, nothing more is
 * decoded; why says what happened.
 */
int etcd_watch_feed(struct etcd_wdec *d, const void *data, size_t len);

/* The largest answer (or watch message) taken from a member. */
#define ETCD_MAX_ANSWER (64u << 20)

/* A range answer's kvs and header revision (-EPROTO if malformed). */
int etcd_decode_range(const char *body, size_t len, struct etcd_kv **ret_kvs, size_t *ret_n, int64_t *ret_rev);

/*
 * The range_end of every key starting with prefix[0..len): the prefix
 * with its last byte below 0xff incremented (0xff bytes after it
 * dropped); "\0" (every key) if there is none. *ret_len: its length.
 */
int etcd_prefix_end(const char *prefix, size_t len, char **ret, size_t *ret_len);
