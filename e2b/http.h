/*
 * emberfs-e2b's HTTP layer (libmicrohttpd, one thread per connection): the
 * request a route handler sees, and the replies it can make. Every handler
 * makes exactly one reply (or returns -1: the connection is closed).
 *
 * Two route tables: the control plane (REST, X-API-KEY) and the in-sandbox
 * "envd" routes (Connect RPC, /files, /health; X-Access-Token), told apart by
 * the E2b-Sandbox-Id header, else a Host of the form PORT-ID.domain.
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct req;
struct MHD_Connection;

/* Server-wide configuration, set once by main before the listener starts. */
struct e2b_config {
	const char *mount;	 /* the emberfs mount point */
	const char *domain;	 /* the "domain" answered in Sandbox objects */
	unsigned keepalive_s;	 /* Connect stream keepalive interval when the client sends none */
};
extern struct e2b_config cfg;

/* ---- the request ---- */
const char *req_method(struct req *r);
const char *req_path(struct req *r);			/* the URL path, decoded, without the query */
const char *req_query(struct req *r, const char *key);	/* a query argument, decoded; NULL if absent */
const char *req_header(struct req *r, const char *name); /* NULL if absent */
const char *req_param(struct req *r, const char *name);	/* a {name} segment of the route's pattern */
/* In-sandbox routes: the sandbox's id (checked: it exists, and the access token matched). */
const char *req_sandbox(struct req *r);
/* Buffered routes: the whole body (NUL-terminated; len without the NUL). */
const char *req_body(struct req *r, size_t *len);
/* The body parsed as JSON: NULL after replying 400 (and *replied set) when it is not a JSON object. */
json_object *req_json_object(struct req *r, int *replied);
struct MHD_Connection *req_conn(struct req *r);

/* ---- replies ---- */
int reply_json(struct req *r, unsigned status, json_object *o); /* takes o */
int reply_empty(struct req *r, unsigned status);		 /* no body, Content-Length: 0 */
/* reply_json with one more header (a list's X-Next-Token). */
int reply_json_header(struct req *r, unsigned status, json_object *o, const char *name, const char *value);
int reply_bytes(struct req *r, unsigned status, const char *content_type, void *data, size_t len); /* takes data (malloc'd) */
/* Control plane error: {"code": status, "message": "..."} as E2B's API answers. */
int reply_api_error(struct req *r, unsigned status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Connect unary error: {"code": "not_found", "message": ...} with the HTTP status Connect maps the code to. */
int reply_connect_error(struct req *r, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The Connect code for an errno (ENOENT -> not_found, EEXIST -> already_exists, EACCES -> permission_denied, ...). */
const char *connect_code_errno(int err);

/*
 * A streamed body (chunked). read blocks until it has bytes for buf (at most
 * max), returns how many, or 0 at the end, or -1 on error (the connection is
 * cut). done runs once when the response ends for any reason, the client
 * vanishing mid-stream included.
 */
typedef ssize_t (*stream_read_fn)(void *ctx, char *buf, size_t max);
typedef void (*stream_done_fn)(void *ctx);
int reply_stream(struct req *r, unsigned status, const char *content_type, stream_read_fn read, stream_done_fn done,
		 void *ctx);

/* ---- routes ---- */
enum route_scope { SCOPE_CONTROL, SCOPE_SANDBOX };
struct route {
	const char *method;
	const char *pattern; /* "/sandboxes/{id}/timeout": a {name} matches one non-empty segment */
	enum route_scope scope;
	size_t max_body;     /* buffered routes: a larger body is 413; 0: no body accepted */
	int (*handle)(struct req *r);
	/*
	 * Streamed uploads instead of a buffered body (handle is NULL): begin
	 * sees the headers and may reply at once (an error; return 1); data gets
	 * each piece of the body; end replies. free always runs last.
	 */
	int (*upload_begin)(struct req *r, void **ctx);
	int (*upload_data)(struct req *r, void *ctx, const char *data, size_t len); /* <0: reply made, stop */
	int (*upload_end)(struct req *r, void *ctx);
	void (*upload_free)(void *ctx);
};
/* Each route file defines one table, ended by an entry with method NULL. */
extern const struct route control_routes[];	/* e2b/control.c */
extern const struct route process_routes[];	/* e2b/process.c */
extern const struct route filesystem_routes[];	/* e2b/filesystem.c */

/* Listener: "ADDR:PORT" (IPv4 or [IPv6]). 0, or -errno with a message logged. */
int http_start(const char *listen);
void http_stop(void);
