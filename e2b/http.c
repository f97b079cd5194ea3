/*
 * emberfs-e2b's HTTP layer on libmicrohttpd (docs/architecture.md says why
 * that library): one thread per connection, so a route may block (a Connect
 * stream waits for its process's output), routing by method and path
 * pattern, authentication before any route runs, bodies buffered up to the
 * route's limit or streamed to it, and the reply helpers of http.h.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "common/common.h"
#include "http.h"
#include "mountc.h"

struct e2b_config cfg = {.mount = NULL, .domain = "localhost", .keepalive_s = 50};

#define MAX_PARAMS 4
#define THREAD_STACK (256 * 1024)

struct req {
	struct MHD_Connection *conn;
	const char *method;
	char *path;
	const struct route *route;
	const char *param_name[MAX_PARAMS]; /* into the route's pattern: the text after "{" */
	size_t param_name_len[MAX_PARAMS];   /* up to the "}" */
	char *param_val[MAX_PARAMS];
	size_t n_params;
	char sandbox[NAME_MAX_LEN + 1];
	/* buffered body */
	char *body;
	size_t body_len, body_cap;
	/* streamed upload */
	void *upload_ctx;
	bool upload_begun;
	bool replied; /* a response is queued: what else arrives is dropped */
	/*
	 * An answer decided while the body still arrives (too large, a failed
	 * upload): libmicrohttpd 0.9.75 spins on a connection answered
	 * mid-body, and fetch clients take an early answer as a network error,
	 * so the rest is read and dropped, and the answer goes at the end.
	 */
	unsigned late_status;
	char *late_message;
	size_t dropped;
};

/* A body this far past what its route takes is not read to its end: the connection is closed. */
#define DROP_MAX (64u << 20)

/* ---- request accessors ---- */

const char *req_method(struct req *r)
{
	return r->method;
}

const char *req_path(struct req *r)
{
	return r->path;
}

const char *req_query(struct req *r, const char *key)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *req_header(struct req *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *req_param(struct req *r, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i < r->n_params; i++)
		if (r->param_name_len[i] == n && strncmp(r->param_name[i], name, n) == 0)
			return r->param_val[i];
	return NULL;
}

const char *req_sandbox(struct req *r)
{
	return r->sandbox;
}

const char *req_body(struct req *r, size_t *len)
{
	if (len)
		*len = r->body_len;
	return r->body ? r->body : "";
}

json_object *req_json_object(struct req *r, int *replied)
{
	json_tokener *tok;
	json_object *o;
	enum json_tokener_error jerr;

	*replied = 0;
	if (!r->body_len) {
		*replied = 1;
		reply_api_error(r, 400, "the request has no body: a JSON object is expected");
		return NULL;
	}
	tok = json_tokener_new();
	if (!tok) {
		*replied = 1;
		reply_api_error(r, 500, "out of memory");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, r->body, (int)r->body_len);
	jerr = json_tokener_get_error(tok);
	if (o && (jerr != json_tokener_success || (size_t)json_tokener_get_parse_end(tok) != r->body_len)) {
		json_object_put(o);
		o = NULL;
		if (jerr == json_tokener_success)
			jerr = json_tokener_error_parse_unexpected;
	}
	json_tokener_free(tok);
	if (!o) {
		*replied = 1;
		reply_api_error(r, 400, "the body is not valid JSON: %s",
				jerr == json_tokener_continue ? "it ends too early" : json_tokener_error_desc(jerr));
		return NULL;
	}
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		*replied = 1;
		reply_api_error(r, 400, "the body must be a JSON object");
		return NULL;
	}
	return o;
}

struct MHD_Connection *req_conn(struct req *r)
{
	return r->conn;
}

/* ---- replies ---- */

static int queue(struct req *r, unsigned status, struct MHD_Response *resp, const char *content_type)
{
	enum MHD_Result ok;

	if (!resp)
		return -1;
	if (r->replied) {
		MHD_destroy_response(resp);
		log_warn("e2b: %s %s: a second reply dropped", r->method, r->path);
		return -1;
	}
	if (content_type)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	ok = MHD_queue_response(r->conn, status, resp);
	MHD_destroy_response(resp);
	r->replied = true;
	return ok == MHD_YES ? 0 : -1;
}

int reply_bytes(struct req *r, unsigned status, const char *content_type, void *data, size_t len)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);

	if (!resp)
		free(data);
	return queue(r, status, resp, content_type);
}

int reply_json_header(struct req *r, unsigned status, json_object *o, const char *name, const char *value)
{
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	char *copy = s ? strdup(s) : NULL;
	struct MHD_Response *resp;

	json_object_put(o);
	if (!copy)
		return -1;
	resp = MHD_create_response_from_buffer(strlen(copy), copy, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(copy);
		return -1;
	}
	if (name && MHD_add_response_header(resp, name, value) != MHD_YES) {
		MHD_destroy_response(resp);
		return -1;
	}
	return queue(r, status, resp, "application/json");
}

int reply_json(struct req *r, unsigned status, json_object *o)
{
	return reply_json_header(r, status, o, NULL, NULL);
}

int reply_empty(struct req *r, unsigned status)
{
	return queue(r, status, MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT), NULL);
}

static char *vfmt(const char *fmt, va_list ap)
{
	char *m = NULL;

	if (vasprintf(&m, fmt, ap) < 0)
		return NULL;
	return m;
}

int reply_api_error(struct req *r, unsigned status, const char *fmt, ...)
{
	json_object *o = json_object_new_object();
	_cleanup_free_ char *m = NULL;
	va_list ap;

	va_start(ap, fmt);
	m = vfmt(fmt, ap);
	va_end(ap);
	json_object_object_add(o, "code", json_object_new_int((int)status));
	json_object_object_add(o, "message", json_object_new_string(m ? m : "error"));
	return reply_json(r, status, o);
}

/* Connect's codes and the HTTP status each maps to (connectrpc.com/docs/protocol, "Error Codes"). */
static const struct {
	const char *code;
	unsigned status;
} connect_codes[] = {
	{"canceled", 499},	     {"unknown", 500},		   {"invalid_argument", 400}, {"deadline_exceeded", 504},
	{"not_found", 404},	     {"already_exists", 409},	   {"permission_denied", 403}, {"resource_exhausted", 429},
	{"failed_precondition", 400}, {"aborted", 409},	   {"out_of_range", 400},      {"unimplemented", 501},
	{"internal", 500},	     {"unavailable", 503},	   {"data_loss", 500},	       {"unauthenticated", 401},
};

static unsigned connect_status(const char *code)
{
	for (size_t i = 0; i < ARRAY_SIZE(connect_codes); i++)
		if (strcmp(connect_codes[i].code, code) == 0)
			return connect_codes[i].status;
	return 500;
}

int reply_connect_error(struct req *r, const char *code, const char *fmt, ...)
{
	json_object *o = json_object_new_object();
	_cleanup_free_ char *m = NULL;
	va_list ap;

	va_start(ap, fmt);
	m = vfmt(fmt, ap);
	va_end(ap);
	json_object_object_add(o, "code", json_object_new_string(code));
	json_object_object_add(o, "message", json_object_new_string(m ? m : code));
	return reply_json(r, connect_status(code), o);
}

const char *connect_code_errno(int err)
{
	switch (err < 0 ? -err : err) {
	case ENOENT:
	case ENOTDIR:
		return "not_found";
	case EEXIST:
	case ENOTEMPTY:
		return "already_exists";
	case EACCES:
	case EPERM:
	case EROFS:
		return "permission_denied";
	case EINVAL:
	case EISDIR:
	case ENAMETOOLONG:
	case ELOOP:
		return "invalid_argument";
	case ENOSPC:
	case EDQUOT:
	case EMFILE:
	case ENFILE:
	case ENOMEM:
		return "resource_exhausted";
	case EBUSY:
	case EAGAIN:
		return "unavailable";
	case ETIMEDOUT:
		return "deadline_exceeded";
	case EINTR:
		return "canceled";
	default:
		return "internal";
	}
}

struct stream {
	stream_read_fn read;
	stream_done_fn done;
	void *ctx;
};

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct stream *st = cls;
	ssize_t n = st->read(st->ctx, buf, max);

	if (n > 0)
		return n;
	return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls)
{
	struct stream *st = cls;

	if (st->done)
		st->done(st->ctx);
	free(st);
}

int reply_stream(struct req *r, unsigned status, const char *content_type, stream_read_fn read, stream_done_fn done,
		 void *ctx)
{
	struct stream *st = calloc(1, sizeof(*st));
	struct MHD_Response *resp;

	if (!st) {
		if (done)
			done(ctx);
		return -1;
	}
	st->read = read;
	st->done = done;
	st->ctx = ctx;
	/* unknown size: chunked; the reader may block (one thread per connection) */
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, stream_reader, st, stream_free);
	if (!resp) {
		stream_free(st);
		return -1;
	}
	return queue(r, status, resp, content_type);
}

/* ---- routing ---- */


/* pattern "/a/{x}/b" against path: params into r. */
static bool route_match(const char *pattern, const char *path, struct req *r)
{
	const char *p = pattern, *s = path;

	r->n_params = 0;
	while (*p && *s) {
		if (*p == '{') {
			const char *pe = strchr(p, '}'), *se = strchr(s, '/');
			size_t n = se ? (size_t)(se - s) : strlen(s);

			if (!pe || n == 0 || r->n_params == MAX_PARAMS)
				return false;
			free(r->param_val[r->n_params]);
			r->param_val[r->n_params] = strndup(s, n);
			if (!r->param_val[r->n_params])
				return false;
			/* the name is the pattern's text between the braces: kept as a pointer into a static table */
			r->param_name[r->n_params] = p + 1;
			r->param_name_len[r->n_params++] = (size_t)(pe - p - 1);
			p = pe + 1;
			s += n;
			continue;
		}
		if (*p != *s)
			return false;
		p++;
		s++;
	}
	return *p == 0 && *s == 0;
}

static const struct route *route_find(const struct route *table, struct req *r, bool *path_known)
{
	for (const struct route *rt = table; rt->method; rt++)
		if (route_match(rt->pattern, r->path, r)) {
			*path_known = true;
			if (strcmp(rt->method, r->method) == 0)
				return rt;
		}
	r->n_params = 0;
	return NULL;
}

/*
 * The sandbox a request is for: the E2b-Sandbox-Id header (single-URL
 * mode), else a Host "PORT-ID.domain". Returns false when it is a control
 * plane request; *port gets the port asked for (0 if none said).
 */
static bool sandbox_target(struct req *r, char id[NAME_MAX_LEN + 1], unsigned *port)
{
	const char *h = req_header(r, "E2b-Sandbox-Id"), *p = req_header(r, "E2b-Sandbox-Port");

	*port = 0;
	if (h) {
		snprintf(id, NAME_MAX_LEN + 1, "%s", h);
		if (strlen(h) > NAME_MAX_LEN)
			id[0] = 0; /* no such name: answered as unknown */
		if (p)
			*port = (unsigned)strtoul(p, NULL, 10);
		return true;
	}
	h = req_header(r, MHD_HTTP_HEADER_HOST);
	if (h && isdigit((unsigned char)*h)) {
		char *end;
		unsigned long n = strtoul(h, &end, 10);
		size_t len;

		if (*end != '-')
			return false;
		end++;
		len = strspn(end, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_");
		if (len == 0 || end[len] != '.' || len > NAME_MAX_LEN)
			return false;
		memcpy(id, end, len);
		id[len] = 0;
		*port = (unsigned)n;
		return true;
	}
	return false;
}

#define ENVD_PORT 49983

/* Picks the route and checks the caller may use it: 0, or 1 with the reply made. */
static int dispatch(struct req *r)
{
	char id[NAME_MAX_LEN + 1];
	unsigned port;
	bool known = false;
	struct sbx s;
	int k;

	if (!sandbox_target(r, id, &port)) {
		const char *key = req_header(r, "X-API-KEY");

		r->route = route_find(control_routes, r, &known);
		if (!r->route)
			return known ? reply_api_error(r, 405, "%s is not allowed on %s", r->method, r->path), 1
				     : (reply_api_error(r, 404, "no route %s %s", r->method, r->path), 1);
		if (!key || !*key) {
			reply_api_error(r, 401, "missing API key: send it in the X-API-KEY header");
			return 1;
		}
		if (!auth_api_key_ok(key)) {
			reply_api_error(r, 401, "Invalid API key");
			return 1;
		}
		return 0;
	}
	if (port && port != ENVD_PORT) {
		reply_api_error(r, 502, "port %u of sandbox %s is not served: emberfs-e2b answers the sandbox API (port %u) only",
				port, id, ENVD_PORT);
		return 1;
	}
	r->route = route_find(process_routes, r, &known);
	if (!r->route)
		r->route = route_find(filesystem_routes, r, &known);
	if (!r->route) {
		if (strncmp(r->path, "/process.", 9) == 0 || strncmp(r->path, "/filesystem.", 12) == 0)
			reply_connect_error(r, "unimplemented", "%s is not implemented by emberfs-e2b", r->path);
		else
			reply_api_error(r, known ? 405 : 404, "no route %s %s", r->method, r->path);
		return 1;
	}
	k = id[0] ? sbx_lookup(id, &s) : -ENOENT;
	if (k < 0) {
		/* as E2B's edge answers for a sandbox it does not know: the SDK reads 502 as "not running" */
		json_object *o = json_object_new_object();

		json_object_object_add(o, "code", json_object_new_int(502));
		json_object_object_add(o, "message", json_object_new_string("The sandbox was not found"));
		json_object_object_add(o, "sandboxId", json_object_new_string(id));
		reply_json(r, 502, o);
		return 1;
	}
	if (strcmp(r->path, "/health") != 0) {
		const char *tok = req_header(r, "X-Access-Token");

		if (!tok || !auth_sandbox_token_ok(id, tok)) {
			if (strncmp(r->path, "/process.", 9) == 0 || strncmp(r->path, "/filesystem.", 12) == 0)
				reply_connect_error(r, "unauthenticated", "%s X-Access-Token for sandbox %s",
						    tok ? "wrong" : "missing", id);
			else
				reply_api_error(r, 401, "%s X-Access-Token for sandbox %s", tok ? "wrong" : "missing", id);
			return 1;
		}
	}
	memcpy(r->sandbox, id, sizeof(r->sandbox));
	return 0;
}

static void req_free(struct req *r)
{
	if (!r)
		return;
	if (r->route && r->route->upload_free && r->upload_begun)
		r->route->upload_free(r->upload_ctx);
	for (size_t i = 0; i < MAX_PARAMS; i++)
		free(r->param_val[i]);
	free(r->path);
	free(r->body);
	free(r->late_message);
	free(r);
}

static void late_error(struct req *r, unsigned status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void late_error(struct req *r, unsigned status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	free(r->late_message);
	r->late_message = vfmt(fmt, ap);
	va_end(ap);
	r->late_status = status;
}

static int body_append(struct req *r, const char *data, size_t len)
{
	if (r->body_len + len > r->route->max_body)
		return -EFBIG;
	if (r->body_len + len + 1 > r->body_cap) {
		size_t cap = r->body_cap ? r->body_cap : 4096;
		char *n;

		while (cap < r->body_len + len + 1)
			cap *= 2;
		if (!(n = realloc(r->body, cap)))
			return -ENOMEM;
		r->body = n;
		r->body_cap = cap;
	}
	memcpy(r->body + r->body_len, data, len);
	r->body_len += len;
	r->body[r->body_len] = 0;
	return 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			       const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	struct req *r = *con_cls;

	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r || !(r->path = strdup(url))) {
			free(r);
			return MHD_NO;
		}
		r->conn = conn;
		r->method = method;
		*con_cls = r;
		if (dispatch(r) == 0 && r->route->upload_begin) {
			int k = r->route->upload_begin(r, &r->upload_ctx);

			r->upload_begun = true;
			if (k != 0 && !r->replied)
				reply_api_error(r, 500, "the upload could not start");
		}
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		int k;

		*upload_data_size = 0;
		if (r->replied || r->late_status) {
			/* answered, or to be: the rest is dropped, up to a bound */
			r->dropped += n;
			return r->dropped > DROP_MAX ? MHD_NO : MHD_YES;
		}
		if (r->route->upload_data) {
			if (r->route->upload_data(r, r->upload_ctx, upload_data, n) < 0 && !r->replied)
				late_error(r, 500, "the upload failed");
		} else if ((k = body_append(r, upload_data, n)) < 0) {
			if (k == -ENOMEM)
				late_error(r, 500, "out of memory");
			else if (r->route->max_body == 0)
				late_error(r, 400, "%s %s takes no body", r->method, r->path);
			else
				late_error(r, 413, "the body is larger than %zu bytes", r->route->max_body);
		}
		return MHD_YES;
	}
	if (r->replied)
		return MHD_YES;
	if (r->late_status) {
		const char *p = r->path;

		if (strncmp(p, "/process.", 9) == 0 || strncmp(p, "/filesystem.", 12) == 0)
			reply_connect_error(r,
					    r->late_status == 413   ? "resource_exhausted" :
					    r->late_status == 400 ? "invalid_argument" :
								    "internal",
					    "%s", r->late_message ? r->late_message : "error");
		else
			reply_api_error(r, r->late_status, "%s", r->late_message ? r->late_message : "error");
		return MHD_YES;
	}
	if (r->route->upload_end)
		r->route->upload_end(r, r->upload_ctx);
	else if (r->route->handle)
		r->route->handle(r);
	if (!r->replied) {
		log_warn("e2b: %s %s: no reply made", r->method, r->path);
		reply_api_error(r, 500, "internal error: no reply");
	}
	return MHD_YES;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	req_free(*con_cls);
	*con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	_cleanup_free_ char *m = vfmt(fmt, ap);
	size_t n = m ? strlen(m) : 0;

	while (n && m[n - 1] == '\n')
		m[--n] = 0;
	log_info("e2b: http: %s", m ? m : fmt);
}

static struct MHD_Daemon *daemon_;

int http_start(const char *listen)
{
	struct sockaddr_storage ss = {0};
	_cleanup_free_ char *host = NULL;
	const char *colon = strrchr(listen, ':');
	unsigned long port;
	char *end;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
			 MHD_USE_ERROR_LOG;

	if (!colon || colon == listen) {
		log_error("e2b: --listen %s: expected ADDR:PORT", listen);
		return -EINVAL;
	}
	port = strtoul(colon + 1, &end, 10);
	if (*end || port == 0 || port > 65535) {
		log_error("e2b: --listen %s: bad port", listen);
		return -EINVAL;
	}
	host = strndup(listen, (size_t)(colon - listen));
	if (!host)
		return -ENOMEM;
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		host[strlen(host) - 1] = 0;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) {
			log_error("e2b: --listen %s: bad IPv6 address", listen);
			return -EINVAL;
		}
		flags |= MHD_USE_IPv6;
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
			log_error("e2b: --listen %s: bad IPv4 address", listen);
			return -EINVAL;
		}
	}
	daemon_ = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, handler, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
				   NULL, MHD_OPTION_SOCK_ADDR,
				   (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
				   MHD_OPTION_THREAD_STACK_SIZE, (size_t)THREAD_STACK, MHD_OPTION_CONNECTION_LIMIT,
				   (unsigned)4096, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)0,
				   MHD_OPTION_END);
	if (!daemon_) {
		log_error("e2b: cannot listen on %s (in use, or not an address of this host)", listen);
		return -EADDRINUSE;
	}
	return 0;
}

void http_stop(void)
{
	if (daemon_)
		MHD_stop_daemon(daemon_);
	daemon_ = NULL;
}
