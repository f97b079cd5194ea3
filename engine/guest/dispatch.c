/* emberfs-agent: requests: their fields, the op table lookup, replies. */
#include "agent.h"

/* Record why @rq failed; returns -@err for the handler to pass up. */
int request_fail(struct request *rq, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rq->error, sizeof(rq->error), fmt, ap);
	va_end(ap);
	return -err;
}

void reply_error(struct agent *a, unsigned int gen, uint64_t id, int err,
			const char *msg)
{
	_cleanup_json_ struct json_object *o = json_object_new_object();

	if (!o)
		return;
	json_object_object_add(o, "id", json_object_new_uint64(id));
	json_object_object_add(o, "ok", json_object_new_boolean(false));
	json_object_object_add(o, "errno", json_object_new_int(err));
	json_object_object_add(o, "error", json_object_new_string(msg && *msg ? msg : strerror(err)));
	outq_json(a, gen, o);
}

/* ------------------------------------------------------------------ */
/* Request fields                                                       */

/* An absolute guest path: starts with '/', no NUL, at most PATH_BYTES_MAX bytes. */
int req_path(struct request *rq, const char *key, const char **ret)
{
	size_t len;

	if (json_get_str(rq->msg, key, ret, &len) < 0 || len == 0 || len > PATH_BYTES_MAX ||
	    (*ret)[0] != '/')
		return request_fail(rq, EINVAL, "\"%s\" must be an absolute path of at most %d bytes",
				    key, PATH_BYTES_MAX);
	return 0;
}

int req_u64(struct request *rq, const char *key, uint64_t min, uint64_t max, uint64_t *ret)
{
	if (json_get_u64(rq->msg, key, ret) < 0 || *ret < min || *ret > max)
		return request_fail(rq, EINVAL, "\"%s\" must be an integer %" PRIu64 "..%" PRIu64,
				    key, min, max);
	return 0;
}

/* The same when the field may be absent: then @def. */
int req_u64_opt(struct request *rq, const char *key, uint64_t max, uint64_t def, uint64_t *ret)
{
	if (!json_field(rq->msg, key)) {
		*ret = def;
		return 0;
	}
	return req_u64(rq, key, 0, max, ret);
}

int req_i64(struct request *rq, const char *key, int64_t min, int64_t max, int64_t *ret)
{
	struct json_object *v = json_field(rq->msg, key);

	if (!v || !json_object_is_type(v, json_type_int) ||
	    (*ret = json_object_get_int64(v)) < min || *ret > max)
		return request_fail(rq, EINVAL, "\"%s\" must be an integer %" PRId64 "..%" PRId64,
				    key, min, max);
	return 0;
}

int req_bool_opt(struct request *rq, const char *key, bool *ret)
{
	struct json_object *v = json_field(rq->msg, key);

	*ret = false;
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return request_fail(rq, EINVAL, "\"%s\" must be a boolean", key);
	*ret = json_object_get_boolean(v);
	return 0;
}

/* An array of @n unsigned integers, each at most @max. */
static int json_u64s(struct json_object *v, size_t n, uint64_t max, uint64_t *out)
{
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != n)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		struct json_object *x = json_object_array_get_idx(v, i);

		if (!json_object_is_type(x, json_type_int) || json_object_get_int64(x) < 0 ||
		    json_object_get_uint64(x) > max)
			return -EINVAL;
		out[i] = json_object_get_uint64(x);
	}
	return 0;
}

/* A uid or gid: 0..2^32 - 2 (-1 means "none" to the kernel). */
int json_u64s_one(struct json_object *x, uint64_t *out)
{
	if (!json_object_is_type(x, json_type_int) || json_object_get_int64(x) < 0 ||
	    json_object_get_int64(x) >= (int64_t)UINT32_MAX)
		return -EINVAL;
	*out = json_object_get_uint64(x);
	return 0;
}

/* A guest file's identity [dev, ino], if the field is there. */
int req_id_opt(struct request *rq, const char *key, bool *has, uint64_t id[2])
{
	struct json_object *v = json_field(rq->msg, key);

	*has = v != NULL;
	if (v && json_u64s(v, 2, UINT64_MAX, id) < 0)
		return request_fail(rq, EINVAL, "\"%s\" must be [dev, ino]", key);
	return 0;
}

/* A failed system call: errno goes back to the host. */
int sys_fail(struct request *rq, const char *what, const char *path)
{
	int e = errno;

	return request_fail(rq, e, "%s %.200s: %s", what, path, strerror(e));
}

static const struct agent_op *op_find(const struct agent_ops *ops, const char *name)
{
	for (size_t i = 0; i < ops->n_table; i++)
		if (!strcmp(ops->table[i].name, name))
			return &ops->table[i];
	return NULL;
}

bool all_space(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
			return false;
	return true;
}

/* One whole object and nothing but whitespace around it. */
struct json_object *request_parse(struct agent *a, const char *line, size_t len)
{
	struct json_object *o;

	json_tokener_reset(a->tok);
	o = json_tokener_parse_ex(a->tok, line, (int)len);
	if (!o)
		return NULL;
	if (json_tokener_get_error(a->tok) != json_tokener_success ||
	    !json_object_is_type(o, json_type_object) ||
	    !all_space(line + json_tokener_get_parse_end(a->tok),
			len - json_tokener_get_parse_end(a->tok))) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

void request_dispatch(struct agent *a, struct request *rq)
{
	_cleanup_json_ struct json_object *reply = NULL;
	const struct agent_op *op;
	const char *name;
	int r;

	if (json_get_u64(rq->msg, "id", &rq->id) < 0) {
		rq->id = 0;
		reply_error(a, rq->gen, 0, EINVAL, "missing or invalid \"id\"");
		return;
	}
	if (json_get_str(rq->msg, "op", &name, NULL) < 0) {
		reply_error(a, rq->gen, rq->id, EINVAL, "missing or invalid \"op\"");
		return;
	}
	op = op_find(a->ops, name);
	if (!op) {
		request_fail(rq, EINVAL, "unknown op \"%.64s\"", name);
		reply_error(a, rq->gen, rq->id, EINVAL, rq->error);
		return;
	}
	if (rq->has_bin && !op->bin) {
		reply_error(a, rq->gen, rq->id, EINVAL, "this op takes no \"bin\" payload");
		return;
	}
	reply = json_object_new_object();
	if (!reply)
		return;
	json_object_object_add(reply, "id", json_object_new_uint64(rq->id));
	json_object_object_add(reply, "ok", json_object_new_boolean(true));
	r = a->ops->run(a, op, rq, reply);
	if (r < 0)
		reply_error(a, rq->gen, rq->id, -r, rq->error);
	else if (r == 0)
		outq_json(a, rq->gen, reply);
}
