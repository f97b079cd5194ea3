/*
 * Connect RPC (connectrpc.com) with the JSON codec over HTTP/1.1, as the E2B
 * SDK speaks it to envd.
 *
 * Streaming calls carry envelopes: 1 flag byte, a 4-byte big-endian length,
 * then that many bytes of JSON. The request of a server-streaming call is
 * exactly one envelope; the response is any number of message envelopes
 * (flag 0x00) and ends with one end-stream envelope (flag 0x02) holding `{}`
 * or `{"error": {"code": "not_found", "message": "..."}}`. Errors of a
 * stream always travel in that last envelope with HTTP 200: the client
 * derives only a bare code from any other status.
 *
 * connect.c is the codec (no HTTP, no threads: the unit tests and the fuzz
 * target link it alone); cstream.c is the response stream.
 */
#pragma once

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CONNECT_FLAG_COMPRESSED 0x01u
#define CONNECT_FLAG_END_STREAM 0x02u
#define CONNECT_HEADER_LEN 5u
/* The largest request message taken: the process calls' requests are small. */
#define CONNECT_REQUEST_MAX (1u << 20)

/*
 * The single envelope of a streaming request, body[0..len) whole. On
 * success *ret is the message parsed as a JSON object (the caller owns it).
 * Errors, each with a reason in *why (malloc'd, may be NULL):
 * -EINVAL  the header is cut, the length runs past the body, bytes follow
 *          the envelope, a flag bit is unknown or says end-stream, or the
 *          message is not one JSON object;
 * -EMSGSIZE the length is over max;
 * -ENOTSUP the compressed flag (no compression is negotiated).
 */
int connect_request_parse(const void *body, size_t len, size_t max, json_object **ret, char **why);

/* The Connect code ("invalid_argument", ...) for connect_request_parse's errors. */
const char *connect_request_code(int err);

/* One envelope around msg: a malloc'd buffer of CONNECT_HEADER_LEN + len bytes; NULL on ENOMEM. */
uint8_t *connect_frame(uint8_t flags, const char *msg, size_t len, size_t *ret_len);

/* A message envelope holding o serialized (compact). NULL on ENOMEM. */
uint8_t *connect_frame_json(json_object *o, size_t *ret_len);

/*
 * The end-stream envelope: `{}` when code is NULL, else
 * `{"error": {"code": code, "message": message}}`. NULL on ENOMEM.
 */
uint8_t *connect_frame_end(const char *code, const char *message, size_t *ret_len);

/* ---- response streams (cstream.c) ---- */

struct req;
struct cstream;

/*
 * A server-streaming response that producers on any thread feed and the
 * connection's thread drains. Reference counted: connect_stream_new returns
 * one reference for the caller; connect_stream_reply hands a second to the
 * HTTP layer, dropped when the response is over.
 *
 * keepalive_ms: a `{"event":{"keepalive":{}}}`-style message (keepalive_msg)
 * goes out when the stream was idle that long (0: never).
 * queue_max: connect_stream_push blocks while this many bytes wait unsent
 * (back-pressure to the producer), until the client read them or vanished.
 */
struct cstream *connect_stream_new(unsigned keepalive_ms, const char *keepalive_msg, size_t queue_max);
void connect_stream_unref(struct cstream *s);
struct cstream *connect_stream_ref(struct cstream *s);

/*
 * Called once, from the connection's thread, when the response ended for any
 * reason (end sent, or the client went away). Set before connect_stream_reply.
 */
void connect_stream_on_gone(struct cstream *s, void (*fn)(void *ctx), void *ctx);

/*
 * Queue one message (o is serialized, not taken). Blocks while the queue is
 * full. 0, -EPIPE (the client is gone or the stream was ended: nothing was
 * queued), -ENOMEM.
 */
int connect_stream_push(struct cstream *s, json_object *o);
/* The same with a whole envelope made by connect_frame*: _frame takes f (freed on error too), _copy copies it. */
int connect_stream_push_frame(struct cstream *s, uint8_t *f, size_t len);
int connect_stream_push_copy(struct cstream *s, const uint8_t *frame, size_t len);

/*
 * Queue the end-stream envelope (code NULL: success) after what is queued.
 * Later pushes and ends answer -EPIPE. Never blocks.
 */
int connect_stream_end(struct cstream *s, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * How often the connection's thread looks for a hang-up of the client's
 * socket while it waits, in ms (0: the default, CONNECT_HANGUP_MS). A
 * producer that polls (WatchDir) sets its own interval, so that a client
 * that hangs up is seen, and the producer stopped, within one interval.
 */
#define CONNECT_HANGUP_MS 1000u
void connect_stream_set_hangup_ms(struct cstream *s, unsigned ms);

/* Is the client gone (the HTTP layer's done ran)? */
int connect_stream_gone(struct cstream *s);

/*
 * Answer r with s: 200, application/connect+json. The connection's thread
 * stays in the read callback until the end-stream envelope was sent or the
 * client vanished (it checks the socket for a hang-up every second, or as
 * connect_stream_set_hangup_ms says).
 */
int connect_stream_reply(struct req *r, struct cstream *s);

/*
 * The read callback connect_stream_reply gives the HTTP layer, exposed for
 * the unit tests: copies queued bytes, blocks while there are none, returns
 * 0 after the end-stream envelope went out, -1 when the client is gone.
 */
ssize_t connect_stream_read(void *ctx, char *buf, size_t max);
void connect_stream_done(void *ctx);

/* A stream that answers only an error: the usual reply to a bad streaming request. */
int connect_stream_reply_error(struct req *r, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The Keepalive-Ping-Interval header in ms (else cfg.keepalive_s; 0 off), capped at an hour. */
unsigned connect_keepalive_ms(struct req *r);
