/*
 * The E2B control plane (REST, X-API-KEY, checked by the HTTP core before
 * any handler here runs), as a client of the mount: a create is a mkdir of
 * templates/T/sandboxes/ID with its settings written, a kill its rmdir,
 * pause and connect are ctl verbs, the timeout, metadata and egress are the
 * sandbox's own files. docs/e2b.md, "Control plane (REST)", is the contract;
 * the pure mappings are in control_map.c.
 */
#include <dirent.h>
#include <inttypes.h>
#include <stdarg.h>
#include <microhttpd.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "auth.h"
#include "common/common.h"
#include "control.h"
#include "http.h"
#include "mountc.h"

#define BODY_MAX_CREATE (1024 * 1024) /* 1024 env variables and 64 metadata pairs fit */
#define BODY_MAX_SMALL (64 * 1024)
#define CREATE_ID_TRIES 4

static void closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

/* ---- reading the mount ---- */

static const char *jstr(json_object *o, const char *k)
{
	json_object *v;

	return o && json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string) ?
		       json_object_get_string(v) :
		       NULL;
}

static int64_t jint(json_object *o, const char *k)
{
	json_object *v;

	return o && json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_int) ?
		       json_object_get_int64(v) :
		       0;
}

static json_object *sbx_read_json(const struct sbx *s, const char *file)
{
	char path[PATH_MAX];

	if (sbx_path(s, file, path, sizeof(path)) < 0) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	return mnt_read_json(path);
}

static int sbx_write(const struct sbx *s, const char *file, const char *text)
{
	char path[PATH_MAX];
	int r = sbx_path(s, file, path, sizeof(path));

	return r < 0 ? r : mnt_write(path, text, strlen(text));
}

/* A sandbox whose template and name are known (no search). */
static int sbx_at(const char *tpl, const char *id, struct sbx *s)
{
	memset(s, 0, sizeof(*s));
	if (strlen(tpl) >= sizeof(s->tpl) || strlen(id) >= sizeof(s->id))
		return -EINVAL;
	strcpy(s->tpl, tpl);
	strcpy(s->id, id);
	if (snprintf(s->dir, sizeof(s->dir), "%s/templates/%s/sandboxes/%s", cfg.mount, tpl, id) >= (int)sizeof(s->dir) ||
	    snprintf(s->live, sizeof(s->live), "%s/live/%s", cfg.mount, id) >= (int)sizeof(s->live))
		return -ENAMETOOLONG;
	return 0;
}

/* What the template gives each of its sandboxes (config: vcpus, mem_mib, disk_mib, net). */
struct tplinfo {
	char name[65];
	int vcpus, mem_mib, disk_mib;
	bool net;
	bool valid;
};

static void tplinfo_read(const char *tpl, struct tplinfo *t)
{
	_cleanup_json_ json_object *c = NULL, *st = NULL;
	char path[PATH_MAX];
	const char *disk;
	struct stat sb;
	json_object *v;

	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", tpl);
	t->vcpus = 1;	  /* the config's defaults (docs/interface.md, "Templates") */
	t->mem_mib = 256;
	snprintf(path, sizeof(path), "%s/templates/%s/config", cfg.mount, tpl);
	if (!(c = mnt_read_json(path)))
		return;
	t->valid = true;
	if (jint(c, "vcpus") > 0)
		t->vcpus = (int)jint(c, "vcpus");
	if (jint(c, "mem_mib") > 0)
		t->mem_mib = (int)jint(c, "mem_mib");
	t->net = json_object_object_get_ex(c, "net", &v) && json_object_get_boolean(v);
	if (jint(c, "disk_mib") > 0) {
		t->disk_mib = (int)jint(c, "disk_mib");
		return;
	}
	/* otherwise the root disk's size: the built one (status "build": {"disk": PATH}), else the config's rootfs */
	snprintf(path, sizeof(path), "%s/templates/%s/status", cfg.mount, tpl);
	if ((st = mnt_read_json(path)) && json_object_object_get_ex(st, "build", &v) && jstr(v, "disk"))
		disk = jstr(v, "disk");
	else
		disk = jstr(c, "rootfs");
	if (disk && stat(disk, &sb) == 0)
		t->disk_mib = (int)(sb.st_size >> 20);
}

/* A small per-request cache: a list reads each template's config once. */
struct tplcache {
	struct tplinfo t[16];
	size_t n, next;
};

static const struct tplinfo *tplcache_get(struct tplcache *c, const char *tpl)
{
	struct tplinfo *t;

	for (size_t i = 0; i < c->n; i++)
		if (!strcmp(c->t[i].name, tpl))
			return &c->t[i];
	t = &c->t[c->n < ARRAY_SIZE(c->t) ? c->n++ : (c->next++ % ARRAY_SIZE(c->t))];
	tplinfo_read(tpl, t);
	return t;
}

/* The sandbox's timeout file: its deadline (0: none) and the action at it. */
static void sbx_timeout(const struct sbx *s, int64_t *deadline_ms, char act[16])
{
	_cleanup_json_ json_object *t = sbx_read_json(s, "timeout");
	const char *a = jstr(t, "on_timeout");

	*deadline_ms = jint(t, "deadline_unix_ms");
	snprintf(act, 16, "%s", a && !strcmp(a, "hibernate") ? "hibernate" : "destroy");
}

/* Sets the deadline to now + secs, keeping the action at it (a bare "N" would reset it to the template's). */
static int sbx_set_timeout(const struct sbx *s, int64_t secs)
{
	char act[16], text[64];
	int64_t deadline;

	sbx_timeout(s, &deadline, act);
	snprintf(text, sizeof(text), "%" PRId64 " %s", secs, act);
	return sbx_write(s, "timeout", text);
}

/* ---- replies ---- */

static const char *sbx_token(const char *id, char out[65])
{
	auth_sandbox_token(id, out);
	return out;
}

/* Sandbox: what create and connect answer. */
static json_object *sandbox_json(const struct sbx *s)
{
	json_object *o = json_object_new_object();
	char tok[65];

	json_object_object_add(o, "sandboxID", json_object_new_string(s->id));
	json_object_object_add(o, "templateID", json_object_new_string(s->tpl));
	json_object_object_add(o, "clientID", json_object_new_string(E2B_CLIENT_ID));
	json_object_object_add(o, "envdVersion", json_object_new_string(E2B_ENVD_VERSION));
	json_object_object_add(o, "envdAccessToken", json_object_new_string(sbx_token(s->id, tok)));
	json_object_object_add(o, "domain", cfg.domain ? json_object_new_string(cfg.domain) : NULL);
	return o;
}

/*
 * endAt: the deadline; without one, the moment it went to sleep (a paused
 * sandbox), else the far future (no timeout: it runs until killed).
 */
static void end_at(const struct sbx *s, json_object *status, int64_t deadline, char *buf, size_t size)
{
	int64_t since = jint(status, "sleeping_since_unix_ms");

	if (deadline)
		e2b_time_format(deadline, buf, size);
	else if (since)
		e2b_time_format(since, buf, size);
	else
		snprintf(buf, size, "9999-12-31T23:59:59.999Z");
}

/* ListedSandbox, or with detail SandboxDetail. */
static json_object *listed_json(const struct sbx *s, json_object *status, const struct tplinfo *t, bool detail)
{
	json_object *o = json_object_new_object(), *meta = sbx_read_json(s, "metadata");
	enum e2b_state st = e2b_state_of(jstr(status, "state"));
	char when[40], act[16], tok[65];
	int64_t deadline;

	sbx_timeout(s, &deadline, act);
	json_object_object_add(o, "sandboxID", json_object_new_string(s->id));
	json_object_object_add(o, "templateID", json_object_new_string(s->tpl));
	json_object_object_add(o, "clientID", json_object_new_string(E2B_CLIENT_ID));
	json_object_object_add(o, "envdVersion", json_object_new_string(E2B_ENVD_VERSION));
	e2b_time_format(jint(status, "created_at_unix_ms"), when, sizeof(when));
	json_object_object_add(o, "startedAt", json_object_new_string(when));
	end_at(s, status, deadline, when, sizeof(when));
	json_object_object_add(o, "endAt", json_object_new_string(when));
	json_object_object_add(o, "cpuCount", json_object_new_int(t->vcpus));
	json_object_object_add(o, "memoryMB", json_object_new_int(t->mem_mib));
	json_object_object_add(o, "diskSizeMB", json_object_new_int(t->disk_mib));
	if (!meta || !json_object_is_type(meta, json_type_object)) {
		json_object_put(meta);
		meta = json_object_new_object();
	}
	json_object_object_add(o, "metadata", meta);
	json_object_object_add(o, "state", json_object_new_string(e2b_state_name(st) ?: "running"));
	if (!detail)
		return o;
	json_object_object_add(o, "envdAccessToken", json_object_new_string(sbx_token(s->id, tok)));
	json_object_object_add(o, "domain", cfg.domain ? json_object_new_string(cfg.domain) : NULL);
	{
		json_object *lc = json_object_new_object();

		json_object_object_add(lc, "onTimeout", json_object_new_string(strcmp(act, "hibernate") ? "kill" : "pause"));
		/* a request to a paused sandbox resumes it (the mount wakes it for any access) */
		json_object_object_add(lc, "autoResume", json_object_new_boolean(true));
		json_object_object_add(o, "lifecycle", lc);
	}
	return o;
}

static int reply_json_next(struct req *r, json_object *o, const char *next)
{
	return next ? reply_json_header(r, 200, o, "X-Next-Token", next) : reply_json(r, 200, o);
}

static int reply_not_found(struct req *r, const char *id)
{
	return reply_api_error(r, 404, "sandbox \"%s\" not found", id);
}

/*
 * The sandbox of the route's {id} and its status: 0, or 1 with the reply
 * made (404: no such sandbox, or one E2B would not show: failed or being
 * destroyed; a DELETE still removes those).
 */
static int lookup(struct req *r, struct sbx *s, json_object **ret_status)
{
	const char *id = req_param(r, "id");
	json_object *st;
	const char *state;

	if (!id || sbx_lookup(id, s) < 0 || !(st = sbx_read_json(s, "status"))) {
		reply_not_found(r, id ? id : "");
		return 1;
	}
	state = jstr(st, "state");
	if (e2b_state_of(state) == E2B_STATE_NONE) {
		if (state && !strcmp(state, "failed"))
			reply_api_error(r, 404, "sandbox \"%s\" not found: it failed (%s); DELETE it to free its name", id,
					jstr(st, "error") ?: "no reason recorded");
		else
			reply_not_found(r, id);
		json_object_put(st);
		return 1;
	}
	*ret_status = st;
	return 0;
}

/* The body as a JSON object; an empty body is {} (the optional bodies of connect and pause). */
static json_object *body_object(struct req *r, int *replied)
{
	size_t len;

	req_body(r, &len);
	*replied = 0;
	if (len == 0)
		return json_object_new_object();
	return req_json_object(r, replied);
}

/* Fields of a small body: each must be in allowed[] (NULL-ended), else a 400 naming it. */
static int only_fields(struct req *r, json_object *body, const char *const *allowed)
{
	_cleanup_free_ char *bad = NULL;

	json_object_object_foreach(body, k, v) {
		bool ok = false;

		(void)v;
		for (size_t i = 0; allowed[i] && !ok; i++)
			ok = !strcmp(k, allowed[i]);
		if (!ok) {
			char *n = NULL;

			if (asprintf(&n, "%s%s%s", bad ? bad : "", bad ? ", " : "", k) < 0)
				break;
			free(bad);
			bad = n;
		}
	}
	if (!bad)
		return 0;
	reply_api_error(r, 400, "not implemented by emberfs: %s", bad);
	return 1;
}

/* An optional whole-seconds field: 0 (absent: *secs unchanged), or 1 with a 400 made. */
static int timeout_field(struct req *r, json_object *body, const char *name, int64_t *secs)
{
	json_object *v;

	if (!json_object_object_get_ex(body, name, &v) || json_object_is_type(v, json_type_null))
		return 0;
	if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 1 ||
	    json_object_get_int64(v) > E2B_TIMEOUT_MAX_S) {
		reply_api_error(r, 400, "%s must be a whole number of seconds from 1 to %d", name, E2B_TIMEOUT_MAX_S);
		return 1;
	}
	*secs = json_object_get_int64(v);
	return 0;
}

/* ---- create ---- */

static void random_id(char id[21])
{
	static const char set[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	unsigned char b[64];
	size_t n = 1, i = 0;

	id[0] = 'i'; /* a letter first: a valid name whatever follows */
	while (n < 20) {
		if (i == 0 && getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
			continue;
		if (b[i] < 252) /* 252 = 7 * 36: no bias */
			id[n++] = set[b[i] % 36];
		i = (i + 1) % sizeof(b);
	}
	id[20] = 0;
}

/* After a failed create: the reason from its status, and the name freed. */
static int create_failed(struct req *r, const struct sbx *s, int err)
{
	_cleanup_json_ json_object *st = sbx_read_json(s, "status");
	_cleanup_free_ char *why = strdup(jstr(st, "error") ?: strerror(-err));

	if (rmdir(s->dir) < 0 && errno != ENOENT)
		log_warn("e2b: create %s/%s failed, and its rmdir too: %m", s->tpl, s->id);
	return reply_api_error(r, 500, "the sandbox failed to start: %s", why ? why : "unknown");
}

static int create(struct req *r, bool v2)
{
	_cleanup_json_ json_object *body = NULL, *settings = NULL;
	_cleanup_free_ char *why = NULL;
	struct e2b_create c;
	struct tplinfo t;
	struct sbx s;
	char id[21];
	int replied, k;

	if (!(body = req_json_object(r, &replied)))
		return 0;
	if ((k = e2b_create_parse(body, v2, &c, &why)) < 0)
		return reply_api_error(r, 400, "%s", why ? why : "bad request");
	if (name_validate(c.tpl) < 0) {
		e2b_create_done(&c);
		return reply_api_error(r, 400, "templateID \"%s\" is not a valid emberfs template name", c.tpl);
	}
	tplinfo_read(c.tpl, &t);
	if (!t.valid) {
		e2b_create_done(&c);
		return reply_api_error(r, 404, "template \"%s\" not found", c.tpl);
	}
	if (c.egress && !t.net) {
		/* no network at all: denying is what it has; allowing cannot be honoured */
		if (c.egress_allows) {
			e2b_create_done(&c);
			return reply_api_error(r, 400,
					       "network.allowOut: template \"%s\" has no network (its config has no \"net\": true)",
					       c.tpl);
		}
		free(c.egress);
		c.egress = NULL;
	}
	settings = e2b_create_settings(&c);
	e2b_create_done(&c);
	if (!settings)
		return reply_api_error(r, 500, "out of memory");
	k = -EEXIST;
	for (int i = 0; i < CREATE_ID_TRIES && k == -EEXIST; i++) {
		random_id(id);
		free(why);
		why = NULL;
		k = mnt_create(t.name, id, settings, &why);
	}
	switch (k) {
	case 0:
		break;
	case -ENOENT:
		return reply_api_error(r, 404, "template \"%s\" not found", t.name);
	case -EINVAL:
		return reply_api_error(r, 400, "%s", why ? why : "invalid sandbox settings");
	case -ENOSPC:
		/* E2B answers its concurrency limit with 429 */
		return reply_api_error(r, 429, "the sandbox limit of this emberfs is reached (--max-sandboxes)");
	default:
		return reply_api_error(r, 500, "creating the sandbox failed: %s", why ? why : strerror(-k));
	}
	if ((k = sbx_at(t.name, id, &s)) < 0)
		return reply_api_error(r, 500, "%s", strerror(-k));
	if ((k = sbx_wait_ready(&s)) < 0)
		return create_failed(r, &s, k);
	return reply_json(r, 201, sandbox_json(&s));
}

static int create_v2(struct req *r)
{
	return create(r, true);
}

static int create_v1(struct req *r)
{
	return create(r, false);
}

/* ---- connect, resume ---- */

/* The ctl verb that makes a sandbox in state st run, or NULL (ready, creating, or gone). */
static const char *wake_verb(const char *st)
{
	if (!strcmp(st, "paused") || !strcmp(st, "hibernated"))
		return "resume";
	if (!strcmp(st, "stopped"))
		return "start"; /* paused without memory: a cold boot from its own disk */
	return NULL;
}

/*
 * Makes the sandbox run: resumes or starts it, or waits for its create.
 * 0 once it is ready (*ret_resumed: this request woke it), or 1 with the
 * reply made. A verb refused with EBUSY means another request moved it:
 * its state is read again.
 */
static int wake(struct req *r, const struct sbx *s, json_object *status, bool memory, bool *ret_resumed)
{
	_cleanup_json_ json_object *cur = json_object_get(status);
	const char *st = jstr(cur, "state") ?: "";
	int k;

	*ret_resumed = false;
	for (int tries = 0; tries < 4 && strcmp(st, "ready"); tries++) {
		const char *verb = wake_verb(st);

		if (!strcmp(st, "creating")) {
			if ((k = sbx_wait_ready(s)) < 0)
				return reply_api_error(r, 500, "the sandbox failed to start: %s", strerror(-k)), 1;
		} else if (!verb) {
			return reply_not_found(r, s->id), 1; /* failed or being destroyed meanwhile */
		} else if (!memory && strcmp(verb, "start")) {
			reply_api_error(r, 400,
					"memory false (resume from disk only) is not implemented by emberfs: sandbox %s has "
					"its memory saved and resumes with it",
					s->id);
			return 1;
		} else if ((k = sbx_write(s, "ctl", verb)) == 0) {
			*ret_resumed = true;
		} else if (k == -ENOENT) {
			return reply_not_found(r, s->id), 1;
		} else if (k != -EBUSY) {
			_cleanup_json_ json_object *now = sbx_read_json(s, "status");

			reply_api_error(r, 500, "%s of sandbox %s failed: %s", verb, s->id,
					jstr(now, "ctl_error") ?: jstr(now, "error") ?: strerror(-k));
			return 1;
		}
		json_object_put(cur);
		if (!(cur = sbx_read_json(s, "status")))
			return reply_not_found(r, s->id), 1;
		st = jstr(cur, "state") ?: "";
	}
	if (strcmp(st, "ready"))
		return reply_api_error(r, 409, "sandbox %s is %s", s->id, *st ? st : "changing"), 1;
	return 0;
}

/*
 * A connect's timeout: only extended for a sandbox that was running (E2B:
 * "TTL is only extended"; one without a deadline keeps none), set for one
 * resumed (its pause cleared it). 0, or 1 with the reply made.
 */
static int connect_timeout(struct req *r, const struct sbx *s, int64_t secs, bool resumed)
{
	int64_t deadline, now = (int64_t)realtime_ms();
	char act[16];
	int k;

	sbx_timeout(s, &deadline, act);
	if (!resumed && (!deadline || deadline >= now + secs * 1000))
		return 0;
	if ((k = sbx_set_timeout(s, secs)) < 0)
		return reply_api_error(r, 500, "setting the timeout of %s failed: %s", s->id, strerror(-k)), 1;
	return 0;
}

/* POST /v2/sandboxes/{id}/connect, /sandboxes/{id}/connect, /sandboxes/{id}/resume. */
static int connect_common(struct req *r, int64_t secs, bool timeout_required, bool resume_route,
			  const char *const *fields)
{
	_cleanup_json_ json_object *body = NULL, *status = NULL;
	json_object *v;
	bool memory = true, resumed;
	struct sbx s;
	int replied;

	if (!(body = body_object(r, &replied)))
		return replied ? 0 : reply_api_error(r, 500, "out of memory");
	if (only_fields(r, body, fields) || timeout_field(r, body, "timeout", &secs))
		return 0;
	if (timeout_required && !json_object_object_get_ex(body, "timeout", NULL))
		return reply_api_error(r, 400, "timeout is required");
	if (json_object_object_get_ex(body, "memory", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean))
			return reply_api_error(r, 400, "memory must be a boolean");
		memory = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(body, "autoPause", &v) && json_object_get_boolean(v))
		return reply_api_error(r, 400, "not implemented by emberfs: autoPause on resume (set it at create)");
	if (lookup(r, &s, &status))
		return 0;
	if (resume_route && e2b_state_of(jstr(status, "state")) == E2B_STATE_RUNNING)
		return reply_api_error(r, 409, "sandbox \"%s\" is already running", s.id);
	if (wake(r, &s, status, memory, &resumed) || connect_timeout(r, &s, secs, resumed))
		return 0;
	return reply_json(r, resumed ? 201 : 200, sandbox_json(&s));
}

static int connect_v2(struct req *r)
{
	static const char *const f[] = {"timeout", "memory", NULL};

	return connect_common(r, E2B_TIMEOUT_DEFAULT_V2, false, false, f);
}

static int connect_v1(struct req *r)
{
	static const char *const f[] = {"timeout", "memory", NULL};

	return connect_common(r, E2B_TIMEOUT_DEFAULT_V2, true, false, f);
}

static int resume_v1(struct req *r)
{
	static const char *const f[] = {"timeout", "autoPause", "memory", NULL};

	return connect_common(r, E2B_TIMEOUT_DEFAULT_V1, false, true, f);
}

/* ---- pause ---- */

static int pause_(struct req *r)
{
	static const char *const f[] = {"memory", NULL};
	_cleanup_json_ json_object *body = NULL, *status = NULL;
	const char *st, *verb;
	char act[16], text[64];
	bool memory = true;
	int64_t deadline;
	json_object *v;
	struct sbx s;
	int replied, k;

	if (!(body = body_object(r, &replied)))
		return replied ? 0 : reply_api_error(r, 500, "out of memory");
	if (only_fields(r, body, f))
		return 0;
	if (json_object_object_get_ex(body, "memory", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean))
			return reply_api_error(r, 400, "memory must be a boolean");
		memory = json_object_get_boolean(v);
	}
	if (lookup(r, &s, &status))
		return 0;
	st = jstr(status, "state");
	if (e2b_state_of(st) == E2B_STATE_PAUSED)
		return reply_api_error(r, 409, "sandbox \"%s\" is already paused", s.id);
	if (!strcmp(st, "creating") && (k = sbx_wait_ready(&s)) < 0)
		return reply_api_error(r, 500, "the sandbox failed to start: %s", strerror(-k));
	/*
	 * With memory: hibernate (the memory saved to disk and freed). It is
	 * refused while a process runs or a file is open in the guest; then a
	 * plain pause (vCPUs stopped, memory kept resident) keeps the same
	 * promise. Without memory: stop (the disk kept; a connect cold-boots).
	 */
	verb = memory ? "hibernate" : "stop";
	k = sbx_write(&s, "ctl", verb);
	if (k == -EBUSY && memory) {
		verb = "pause";
		k = sbx_write(&s, "ctl", verb);
	}
	if (k == -ENOENT)
		return reply_not_found(r, s.id);
	if (k < 0) {
		_cleanup_json_ json_object *now = sbx_read_json(&s, "status");

		if (k == -EBUSY && e2b_state_of(jstr(now, "state")) == E2B_STATE_PAUSED)
			return reply_api_error(r, 409, "sandbox \"%s\" is already paused", s.id);
		return reply_api_error(r, 500, "%s of sandbox %s failed: %s", verb, s.id,
				       jstr(now, "ctl_error") ?: strerror(-k));
	}
	/* a paused E2B sandbox waits for its connect: its deadline is cleared (the action at it kept) */
	sbx_timeout(&s, &deadline, act);
	snprintf(text, sizeof(text), "0 %s", act);
	if ((k = sbx_write(&s, "timeout", text)) < 0)
		log_warn("e2b: pause %s: clearing its timeout failed: %s", s.id, strerror(-k));
	return reply_empty(r, 204);
}

/* ---- fork ---- */

#define FORK_MAX 64

static json_object *fork_error(unsigned code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_object *fork_error(unsigned code, const char *fmt, ...)
{
	json_object *o = json_object_new_object(), *e = json_object_new_object();
	char *m = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	va_end(ap);
	json_object_object_add(e, "code", json_object_new_int((int)code));
	json_object_object_add(e, "message", json_object_new_string(m ? m : "error"));
	free(m);
	json_object_object_add(o, "error", e);
	return o;
}

/* One fork of parent named into id: 0, or an error entry in *ret_err. */
static int fork_one(const struct sbx *parent, char id[21], json_object **ret_err)
{
	char verb[32];
	int k = -EEXIST;

	for (int i = 0; i < CREATE_ID_TRIES && k == -EEXIST; i++) {
		random_id(id);
		snprintf(verb, sizeof(verb), "fork %.20s", id);
		k = sbx_write(parent, "ctl", verb);
	}
	if (k == 0)
		return 0;
	if (k == -ENOSPC)
		*ret_err = fork_error(429, "the sandbox limit of this emberfs is reached (--max-sandboxes)");
	else {
		_cleanup_json_ json_object *now = sbx_read_json(parent, "status");

		*ret_err = fork_error(500, "fork of %s failed: %s", parent->id, jstr(now, "ctl_error") ?: strerror(-k));
	}
	return k;
}

/*
 * POST /sandboxes/{id}/fork: "fork NEW" to the parent's ctl for each of
 * count (the parent's state is saved once per fork: emberfs has no shared
 * checkpoint), then each child's timeout, then its readiness. One entry per
 * fork: {"sandbox": Sandbox} or {"error": {code, message}}.
 */
static int fork_(struct req *r)
{
	static const char *const f[] = {"timeout", "count", NULL};
	_cleanup_json_ json_object *body = NULL, *status = NULL;
	char ids[FORK_MAX][21];
	json_object *arr, *entries[FORK_MAX] = {0}, *v;
	int64_t secs = E2B_TIMEOUT_DEFAULT_V1, count = 1;
	const char *st;
	struct sbx s;
	int replied, k;

	if (!(body = body_object(r, &replied)))
		return replied ? 0 : reply_api_error(r, 500, "out of memory");
	if (only_fields(r, body, f) || timeout_field(r, body, "timeout", &secs))
		return 0;
	if (json_object_object_get_ex(body, "count", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 1 ||
		    json_object_get_int64(v) > FORK_MAX)
			return reply_api_error(r, 400, "count must be a whole number from 1 to %d", FORK_MAX);
		count = json_object_get_int64(v);
	}
	if (lookup(r, &s, &status))
		return 0;
	st = jstr(status, "state");
	if (!strcmp(st, "creating") && (k = sbx_wait_ready(&s)) < 0)
		return reply_api_error(r, 500, "the sandbox failed to start: %s", strerror(-k));
	if (e2b_state_of(st) != E2B_STATE_RUNNING)
		return reply_api_error(r, 409, "sandbox \"%s\" is paused: only a running sandbox is forked", s.id);
	for (int64_t i = 0; i < count; i++) {
		struct sbx c;

		if (fork_one(&s, ids[i], &entries[i]) < 0)
			continue;
		if (sbx_at(s.tpl, ids[i], &c) < 0 || sbx_set_timeout(&c, secs) < 0)
			entries[i] = fork_error(500, "setting the timeout of fork %s failed", ids[i]);
	}
	arr = json_object_new_array();
	for (int64_t i = 0; i < count; i++) {
		struct sbx c;

		if (!entries[i] && sbx_at(s.tpl, ids[i], &c) == 0) {
			if ((k = sbx_wait_ready(&c)) < 0) {
				_cleanup_json_ json_object *cst = sbx_read_json(&c, "status");

				entries[i] = fork_error(500, "fork %s failed to start: %s", c.id, jstr(cst, "error") ?: strerror(-k));
				if (rmdir(c.dir) < 0 && errno != ENOENT)
					log_warn("e2b: fork %s failed, and its rmdir too: %m", c.id);
			} else {
				entries[i] = json_object_new_object();
				json_object_object_add(entries[i], "sandbox", sandbox_json(&c));
			}
		}
		json_object_array_add(arr, entries[i]);
	}
	return reply_json(r, 201, arr);
}

/* ---- kill, info, timeout, metrics ---- */

static int kill_(struct req *r)
{
	const char *id = req_param(r, "id");
	struct sbx s;

	if (!id || sbx_lookup(id, &s) < 0)
		return reply_not_found(r, id ? id : "");
	if (rmdir(s.dir) < 0) {
		if (errno == ENOENT)
			return reply_not_found(r, id);
		return reply_api_error(r, 500, "killing sandbox %s failed: %m", id);
	}
	return reply_empty(r, 204);
}

static int info(struct req *r)
{
	_cleanup_json_ json_object *status = NULL;
	struct tplinfo t;
	struct sbx s;

	if (lookup(r, &s, &status))
		return 0;
	tplinfo_read(s.tpl, &t);
	return reply_json(r, 200, listed_json(&s, status, &t, true));
}

static int set_timeout(struct req *r)
{
	static const char *const f[] = {"timeout", NULL};
	_cleanup_json_ json_object *body = NULL, *status = NULL;
	int64_t secs = -1;
	struct sbx s;
	int replied, k;

	if (!(body = req_json_object(r, &replied)))
		return 0;
	if (only_fields(r, body, f) || timeout_field(r, body, "timeout", &secs))
		return 0;
	if (secs < 0)
		return reply_api_error(r, 400, "timeout is required");
	if (lookup(r, &s, &status))
		return 0;
	if ((k = sbx_set_timeout(&s, secs)) == -ENOENT)
		return reply_not_found(r, s.id);
	if (k < 0)
		return reply_api_error(r, 500, "setting the timeout of %s failed: %s", s.id, strerror(-k));
	return reply_empty(r, 204);
}

static int query_int(struct req *r, const char *name, int64_t lo, int64_t hi, int64_t *ret, int *replied)
{
	const char *q = req_query(r, name);
	char *end;
	long long v;

	*replied = 0;
	if (!q)
		return 0;
	errno = 0;
	v = strtoll(q, &end, 10);
	if (!*q || *end || errno || v < lo || v > hi) {
		*replied = 1;
		return reply_api_error(r, 400, "%s must be a whole number from %" PRId64 " to %" PRId64, name, lo, hi);
	}
	*ret = v;
	return 1;
}

static int metrics(struct req *r)
{
	_cleanup_json_ json_object *status = NULL, *usage = NULL, *m = NULL;
	int64_t start = 0, end = INT64_MAX / 1000, ts;
	json_object *arr;
	struct tplinfo t;
	struct sbx s;
	int replied;

	query_int(r, "start", 0, INT64_MAX / 1000, &start, &replied);
	if (!replied)
		query_int(r, "end", 0, INT64_MAX / 1000, &end, &replied);
	if (replied)
		return 0;
	if (lookup(r, &s, &status))
		return 0;
	tplinfo_read(s.tpl, &t);
	arr = json_object_new_array();
	if (!(usage = sbx_read_json(&s, "usage")))
		return json_object_put(arr), reply_api_error(r, 500, "reading the usage of %s failed: %m", s.id);
	/* one sample: the guest's last (usage never wakes a paused sandbox); none yet: [] */
	if ((m = e2b_metric_from_usage(usage, t.vcpus)) && (ts = jint(m, "timestampUnix")) >= start && ts <= end)
		json_object_array_add(arr, TAKE_PTR(m));
	return reply_json(r, 200, arr);
}

/* ---- network ---- */

/* The reason the mount gave for a refused policy: the first line of the egress file says it. */
static char *egress_refusal(const struct sbx *s)
{
	static const char mark[] = "# the last write was refused: ";
	char path[PATH_MAX];
	_cleanup_free_ char *text = NULL;
	char *p, *nl;

	if (sbx_path(s, "egress", path, sizeof(path)) < 0 || mnt_read(path, &text, NULL) < 0 ||
	    !(p = strstr(text, mark)))
		return NULL;
	p += sizeof(mark) - 1;
	if ((nl = strchr(p, '\n')))
		*nl = 0;
	return strdup(p);
}

static int network(struct req *r)
{
	_cleanup_json_ json_object *body = NULL, *status = NULL;
	_cleanup_free_ char *policy = NULL, *why = NULL;
	int replied, internet = -1, k;
	bool allows = false;
	json_object *v;
	struct sbx s;

	if (!(body = req_json_object(r, &replied)))
		return 0;
	if (json_object_object_get_ex(body, "allow_internet_access", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_boolean))
			return reply_api_error(r, 400, "allow_internet_access must be a boolean");
		internet = json_object_get_boolean(v);
	}
	if ((k = e2b_egress_from(body, internet, true, &policy, &allows, &why)) < 0)
		return reply_api_error(r, 400, "%s", why ? why : "bad network config");
	if (lookup(r, &s, &status))
		return 0;
	/* "omitting a field clears it": the whole policy is replaced (empty: the template's default) */
	k = sbx_write(&s, "egress", policy ? policy : "");
	if (k == -ENOENT) { /* no egress file: the sandbox has no network */
		if (allows)
			return reply_api_error(r, 400, "allowOut: sandbox %s has no network (its template has no \"net\": true)",
					       s.id);
		return reply_empty(r, 204);
	}
	if (k == -EINVAL) {
		_cleanup_free_ char *m = egress_refusal(&s);

		return reply_api_error(r, 400, "the egress policy was refused: %s", m ? m : "invalid");
	}
	if (k < 0)
		return reply_api_error(r, 500, "writing the egress policy of %s failed: %s", s.id, strerror(-k));
	return reply_empty(r, 204);
}

/* ---- list ---- */

struct entry {
	struct e2b_cursor c;
	char tpl[65];
	json_object *status;
};

struct listing {
	struct entry *v;
	size_t n, cap;
};

static void listing_free(struct listing *l)
{
	for (size_t i = 0; i < l->n; i++)
		json_object_put(l->v[i].status);
	free(l->v);
}

static int entry_cmp(const void *a, const void *b, void *asc)
{
	int c = e2b_cursor_cmp(&((const struct entry *)a)->c, &((const struct entry *)b)->c);

	return *(bool *)asc ? c : -c;
}

struct filter {
	unsigned states;
	json_object *meta; /* NULL: none */
	int64_t started_after;
	const char *tpl;
};

/* One sandbox against the filter: added to l when it passes. */
static int consider(struct listing *l, const struct filter *f, const char *tpl, const char *id)
{
	_cleanup_json_ json_object *st = NULL;
	struct sbx s;
	int64_t started;

	if (sbx_at(tpl, id, &s) < 0 || !(st = sbx_read_json(&s, "status")))
		return 0; /* gone meanwhile */
	if (!(e2b_state_of(jstr(st, "state")) & f->states))
		return 0;
	started = jint(st, "created_at_unix_ms");
	if (started < f->started_after)
		return 0;
	if (f->meta) {
		_cleanup_json_ json_object *m = sbx_read_json(&s, "metadata");

		if (!e2b_metadata_match(f->meta, m))
			return 0;
	}
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct entry *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n].c.started_ms = started;
	snprintf(l->v[l->n].c.id, sizeof(l->v[l->n].c.id), "%s", id);
	snprintf(l->v[l->n].tpl, sizeof(l->v[l->n].tpl), "%s", tpl);
	l->v[l->n++].status = TAKE_PTR(st);
	return 0;
}

/*
 * The candidates of a metadata filter: its first pair's directory under
 * sandboxes-by/ (the mount keeps that index), or every sandbox when the pair
 * has no name there (too long). Returns 1 when the index was used.
 */
static int scan_index(struct listing *l, const struct filter *f)
{
	char k[256], v[256], path[PATH_MAX];
	_cleanup_(closedirp) DIR *d = NULL;
	struct dirent *de;

	json_object_object_foreach(f->meta, key, val) {
		if (meta_name_encode(key, k) < 0 || meta_name_encode(json_object_get_string(val), v) < 0)
			return 0;
		break;
	}
	if (snprintf(path, sizeof(path), "%s/sandboxes-by/%s/%s", cfg.mount, k, v) >= (int)sizeof(path))
		return 0;
	if (!(d = opendir(path)))
		return errno == ENOENT ? 1 : 0; /* no sandbox has the pair */
	while ((de = readdir(d))) {
		char target[PATH_MAX], link[PATH_MAX + 300];
		char *tpl, *slash;
		ssize_t n;

		if (de->d_name[0] == '.')
			continue;
		/* ../../../templates/T/sandboxes/NAME */
		snprintf(link, sizeof(link), "%s/%s", path, de->d_name);
		if ((n = readlink(link, target, sizeof(target) - 1)) < 0)
			continue;
		target[n] = 0;
		if (!(tpl = strstr(target, "templates/")))
			continue;
		tpl += strlen("templates/");
		if (!(slash = strchr(tpl, '/')))
			continue;
		*slash = 0;
		if (f->tpl && strcmp(f->tpl, tpl))
			continue;
		if (consider(l, f, tpl, de->d_name) < 0)
			return -ENOMEM;
	}
	return 1;
}

static int scan_all(struct listing *l, const struct filter *f)
{
	_cleanup_(closedirp) DIR *td = NULL;
	char path[PATH_MAX];
	struct dirent *t;

	snprintf(path, sizeof(path), "%s/templates", cfg.mount);
	if (!(td = opendir(path)))
		return -errno;
	while ((t = readdir(td))) {
		_cleanup_(closedirp) DIR *sd = NULL;
		struct dirent *de;

		if (t->d_name[0] == '.' || (f->tpl && strcmp(f->tpl, t->d_name)))
			continue;
		snprintf(path, sizeof(path), "%s/templates/%s/sandboxes", cfg.mount, t->d_name);
		if (!(sd = opendir(path)))
			continue;
		while ((de = readdir(sd)))
			if (de->d_name[0] != '.' && consider(l, f, t->d_name, de->d_name) < 0)
				return -ENOMEM;
	}
	return 0;
}

struct states_arg {
	unsigned mask;
	int bad;
	bool seen;
};

static enum MHD_Result state_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	struct states_arg *a = cls;
	unsigned m;

	if (strcmp(key, "state") || !value || !*value) /* "state=": no filter, as when absent */
		return MHD_YES;
	a->seen = true;
	if (e2b_state_filter_parse(value, &m) < 0)
		a->bad = 1;
	else
		a->mask |= m;
	return MHD_YES;
}

/*
 * The state filter: the JS SDK sends state=running,paused, the Python SDK
 * repeats the argument (state=running&state=paused); req_query sees only
 * the first of those, so every one is read here. 0, or -EINVAL.
 */
static int state_filter(struct req *r, unsigned *mask)
{
	struct states_arg a = {0};

	MHD_get_connection_values(req_conn(r), MHD_GET_ARGUMENT_KIND, state_arg, &a);
	if (a.bad)
		return -EINVAL;
	if (a.seen)
		*mask = a.mask;
	return 0;
}

/* GET /v2/sandboxes (paged) and GET /sandboxes (v1: running ones, one page). */
static int list(struct req *r, bool v2)
{
	_cleanup_json_ json_object *meta = NULL;
	_cleanup_(listing_free) struct listing l = {0};
	struct filter f = {.states = v2 ? E2B_STATE_RUNNING | E2B_STATE_PAUSED : E2B_STATE_RUNNING};
	struct e2b_cursor after;
	bool have_after = false, asc = false;
	struct tplcache *tc;
	const char *q;
	int64_t limit = v2 ? E2B_LIST_LIMIT_MAX : INT64_MAX;
	char next[128];
	json_object *arr;
	size_t i, taken = 0;
	int replied, k;

	if ((q = req_query(r, "metadata")) && *q) {
		if (e2b_metadata_filter_parse(q, &meta) < 0)
			return reply_api_error(r, 400, "metadata must be a URL-encoded query like \"user=abc&app=prod\"");
		if (json_object_object_length(meta))
			f.meta = meta;
	}
	if (v2) {
		if (state_filter(r, &f.states) < 0)
			return reply_api_error(r, 400, "state must be running, paused or both (comma-separated)");
		query_int(r, "limit", 1, E2B_LIST_LIMIT_MAX, &limit, &replied);
		if (replied)
			return 0;
		if ((q = req_query(r, "nextToken")) && *q) {
			if (e2b_cursor_parse(q, &after) < 0)
				return reply_api_error(r, 400, "nextToken is not one this server made");
			have_after = true;
		}
		if ((q = req_query(r, "order")) && strcmp(q, "asc") && strcmp(q, "desc"))
			return reply_api_error(r, 400, "order must be asc or desc");
		asc = q && !strcmp(q, "asc");
		if ((q = req_query(r, "startedAfter")) && e2b_time_parse(q, &f.started_after) < 0)
			return reply_api_error(r, 400, "startedAfter must be an RFC 3339 date-time");
		if ((q = req_query(r, "template")) && *q)
			f.tpl = q;
	}
	k = f.meta ? scan_index(&l, &f) : 0;
	if (k == 0)
		k = scan_all(&l, &f);
	if (k < 0)
		return reply_api_error(r, 500, "listing the sandboxes failed: %s", strerror(-k));
	if (l.n)
		qsort_r(l.v, l.n, sizeof(*l.v), entry_cmp, &asc);
	i = 0;
	if (have_after) /* the first entry after the cursor, in this order */
		while (i < l.n && (asc ? e2b_cursor_cmp(&l.v[i].c, &after) <= 0 : e2b_cursor_cmp(&l.v[i].c, &after) >= 0))
			i++;
	if (!(arr = json_object_new_array()) || !(tc = calloc(1, sizeof(*tc)))) {
		json_object_put(arr);
		return reply_api_error(r, 500, "out of memory");
	}
	for (; i < l.n && (int64_t)taken < limit; i++, taken++) {
		struct sbx s;

		if (sbx_at(l.v[i].tpl, l.v[i].c.id, &s) == 0)
			json_object_array_add(arr, listed_json(&s, l.v[i].status, tplcache_get(tc, s.tpl), false));
	}
	free(tc);
	if (i < l.n && taken > 0) {
		e2b_cursor_format(&l.v[i - 1].c, next, sizeof(next));
		return reply_json_next(r, arr, next);
	}
	return reply_json(r, 200, arr);
}

static int list_v2(struct req *r)
{
	return list(r, true);
}

static int list_v1(struct req *r)
{
	return list(r, false);
}

#define ROUTE(m, p, max, h) {.method = m, .pattern = p, .scope = SCOPE_CONTROL, .max_body = max, .handle = h}

const struct route control_routes[] = {
	ROUTE("POST", "/v2/sandboxes", BODY_MAX_CREATE, create_v2),
	ROUTE("GET", "/v2/sandboxes", 0, list_v2),
	ROUTE("POST", "/v2/sandboxes/{id}/connect", BODY_MAX_SMALL, connect_v2),
	ROUTE("POST", "/sandboxes", BODY_MAX_CREATE, create_v1),
	ROUTE("GET", "/sandboxes", 0, list_v1),
	ROUTE("GET", "/sandboxes/{id}", 0, info),
	ROUTE("DELETE", "/sandboxes/{id}", 0, kill_),
	ROUTE("POST", "/sandboxes/{id}/connect", BODY_MAX_SMALL, connect_v1),
	ROUTE("POST", "/sandboxes/{id}/resume", BODY_MAX_SMALL, resume_v1),
	ROUTE("POST", "/sandboxes/{id}/pause", BODY_MAX_SMALL, pause_),
	ROUTE("POST", "/sandboxes/{id}/fork", BODY_MAX_SMALL, fork_),
	ROUTE("POST", "/sandboxes/{id}/timeout", BODY_MAX_SMALL, set_timeout),
	ROUTE("GET", "/sandboxes/{id}/metrics", 0, metrics),
	ROUTE("PUT", "/sandboxes/{id}/network", BODY_MAX_SMALL, network),
	{.method = NULL},
};
