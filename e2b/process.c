/*
 * envd's process.Process service (Connect RPC, JSON) on the mount's
 * procs/ID/ slots (docs/interface.md "Processes"; docs/e2b.md "Processes").
 *
 * Start makes a slot e2b-<ms>-<n>, writes its cmd as JSON and reads the
 * guest pid from its status. Every process a stream follows has one "tap":
 * two threads that are the only readers of the slot's stdout and stderr
 * (two readers of one stream would get alternate chunks) and fan each chunk
 * out to the streams attached at that moment; with none attached the chunk
 * is dropped, as envd does, and the process runs on. A third thread waits
 * for the exit in status (at once after the EOF of both outputs, else by
 * polling: a child left in the background may hold them open), then sends
 * the end event and the end-stream envelope to every stream; the slot, if
 * the tap made it, is removed once its outputs reached EOF (a sandbox has
 * at most 256). A stream whose client vanishes is only detached.
 *
 * The taps are in tap.c; this file maps each call onto the slots and them.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/common.h"
#include "connect.h"
#include "http.h"
#include "mountc.h"
#include "tap.h"

#define STREAM_QUEUE_MAX (4u << 20)
#define INPUT_MAX (16u << 20)
#define KEEPALIVE_MSG "{\"event\":{\"keepalive\":{}}}"

static unsigned slot_seq; /* atomic */

/* dir/file into buf (PATH_MAX bytes): 0 or -ENAMETOOLONG (not inlined: gcc would warn at every use). */
static __attribute__((noinline)) int join(char *buf, const char *dir, const char *file)
{
	return snprintf(buf, PATH_MAX, "%s/%s", dir, file) >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* ---- request parsing ---- */

/* A unary request's JSON object body, or NULL after replying. */
static json_object *unary_body(struct req *r)
{
	size_t len;
	const char *b = req_body(r, &len);
	json_tokener *tok;
	json_object *o;

	if (!len)
		return json_object_new_object(); /* protobuf JSON: an empty message may come as no body */
	tok = json_tokener_new();
	if (!tok) {
		reply_connect_error(r, "resource_exhausted", "out of memory");
		return NULL;
	}
	o = json_tokener_parse_ex(tok, b, (int)len);
	if (o && (json_tokener_get_parse_end(tok) != len || !json_object_is_type(o, json_type_object))) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	if (!o)
		reply_connect_error(r, "invalid_argument", "the request body is not one JSON object");
	return o;
}

/* The first key of o not in allowed (NULL-terminated), or NULL. */
static const char *unknown_key(json_object *o, const char *const *allowed)
{
	json_object_object_foreach(o, k, v)
	{
		bool ok = false;

		(void)v;
		for (const char *const *a = allowed; *a; a++)
			if (strcmp(*a, k) == 0)
				ok = true;
		if (!ok)
			return k;
	}
	return NULL;
}

/* A uint32 as protobuf JSON writes it: a number or a decimal string. */
static bool get_u32(json_object *v, uint32_t *out)
{
	int64_t n;

	if (json_object_is_type(v, json_type_int)) {
		n = json_object_get_int64(v);
	} else if (json_object_is_type(v, json_type_string)) {
		const char *s = json_object_get_string(v);
		char *end;

		errno = 0;
		n = strtoll(s, &end, 10);
		if (errno || end == s || *end)
			return false;
	} else {
		return false;
	}
	if (n < 0 || n > UINT32_MAX)
		return false;
	*out = (uint32_t)n;
	return true;
}

struct selector {
	uint32_t pid;
	const char *tag; /* NULL: by pid */
};

/* msg's "process" selector: 0, or -EINVAL with the reason in why. */
static int parse_selector(json_object *msg, struct selector *sel, char *why, size_t whylen)
{
	static const char *const keys[] = {"pid", "tag", NULL};
	json_object *p, *v;
	const char *bad;

	memset(sel, 0, sizeof(*sel));
	if (!json_object_object_get_ex(msg, "process", &p) || !json_object_is_type(p, json_type_object)) {
		snprintf(why, whylen, "process: a ProcessSelector object {pid} or {tag} is required");
		return -EINVAL;
	}
	if ((bad = unknown_key(p, keys))) {
		snprintf(why, whylen, "process.%s: unknown field", bad);
		return -EINVAL;
	}
	if (json_object_object_get_ex(p, "tag", &v)) {
		if (!json_object_is_type(v, json_type_string)) {
			snprintf(why, whylen, "process.tag: a string is expected");
			return -EINVAL;
		}
		sel->tag = json_object_get_string(v);
		return 0;
	}
	if (!json_object_object_get_ex(p, "pid", &v) || !get_u32(v, &sel->pid)) {
		snprintf(why, whylen, "process.pid: a process id is expected");
		return -EINVAL;
	}
	return 0;
}

/* ---- the sandbox's slots ---- */

static void closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

/* "/bin/sh -c LINE" or a JSON cmd (as the mount takes it) as a ProcessConfig. */
static json_object *config_from_cmd(const char *cmd)
{
	json_object *c = json_object_new_object(), *args = json_object_new_array(), *envs = NULL;
	_cleanup_json_ json_object *o = NULL;
	json_object *v;

	if (cmd && cmd[0] == '{' && (o = json_tokener_parse(cmd)) && json_object_is_type(o, json_type_object)) {
		if (json_object_object_get_ex(o, "argv", &v) && json_object_is_type(v, json_type_array) &&
		    json_object_array_length(v) > 0) {
			json_object_object_add(c, "cmd", json_object_get(json_object_array_get_idx(v, 0)));
			for (size_t i = 1; i < json_object_array_length(v); i++)
				json_object_array_add(args, json_object_get(json_object_array_get_idx(v, i)));
		} else if (json_object_object_get_ex(o, "sh", &v)) {
			json_object_object_add(c, "cmd", json_object_new_string("/bin/sh"));
			json_object_array_add(args, json_object_new_string("-c"));
			json_object_array_add(args, json_object_get(v));
		}
		if (json_object_object_get_ex(o, "env", &v) && json_object_is_type(v, json_type_object))
			envs = json_object_get(v);
		if (json_object_object_get_ex(o, "cwd", &v) && json_object_is_type(v, json_type_string))
			json_object_object_add(c, "cwd", json_object_get(v));
	} else if (cmd) {
		size_t n = strlen(cmd);

		while (n && cmd[n - 1] == '\n')
			n--;
		json_object_object_add(c, "cmd", json_object_new_string("/bin/sh"));
		json_object_array_add(args, json_object_new_string("-c"));
		json_object_array_add(args, json_object_new_string_len(cmd, (int)n));
	}
	if (!json_object_object_get_ex(c, "cmd", NULL))
		json_object_object_add(c, "cmd", json_object_new_string(""));
	json_object_object_add(c, "args", args);
	json_object_object_add(c, "envs", envs ? envs : json_object_new_object());
	return c;
}

static bool state_running(json_object *st)
{
	json_object *v;
	const char *s;

	if (!json_object_object_get_ex(st, "state", &v) || !(s = json_object_get_string(v)))
		return false;
	return strcmp(s, "running") == 0 || strcmp(s, "starting") == 0;
}

/*
 * Calls fn for each slot of the sandbox with its status (fn returns
 * nonzero to stop; that value is returned). 0 when all were seen, -errno
 * when procs/ cannot be read.
 */
static int slots_foreach(const struct sbx *sb, int (*fn)(const char *slot, json_object *st, void *ctx), void *ctx)
{
	_cleanup_(closedirp) DIR *d = NULL;
	char path[PATH_MAX];
	struct dirent *de;

	if (snprintf(path, sizeof(path), "%s/procs", sb->dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	d = opendir(path);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		char sp[PATH_MAX];
		json_object *st;
		int r;

		if (de->d_name[0] == '.')
			continue;
		if (snprintf(sp, sizeof(sp), "%s/%s/status", path, de->d_name) >= (int)sizeof(sp))
			continue;
		st = mnt_read_json(sp);
		if (!st)
			continue; /* gone meanwhile */
		r = fn(de->d_name, st, ctx);
		json_object_put(st);
		if (r)
			return r;
	}
	return 0;
}

struct slot_match {
	uint32_t pid;
	char slot[NAME_MAX_LEN + 1];
	json_object *config;
};

static int match_pid(const char *slot, json_object *st, void *ctx)
{
	struct slot_match *m = ctx;
	json_object *v;
	uint32_t pid;

	if (!state_running(st) || !json_object_object_get_ex(st, "pid", &v) || !get_u32(v, &pid) || pid != m->pid)
		return 0;
	snprintf(m->slot, sizeof(m->slot), "%s", slot);
	m->config = config_from_cmd(json_object_object_get_ex(st, "cmd", &v) ? json_object_get_string(v) : NULL);
	return 1;
}

/*
 * The slot directory of the running process sel names: from its tap, else
 * from procs/ (by pid). 0, -ENOENT, -errno.
 */
static int slot_dir_of(const struct sbx *sb, const struct selector *sel, char dir[PATH_MAX])
{
	struct slot_match m = {.pid = sel->pid};
	struct tap *t = tap_find(sb->id, sel->pid, sel->tag);
	int r;

	if (t) {
		snprintf(dir, PATH_MAX, "%s", t->dir);
		tap_unref(t);
		return 0;
	}
	if (sel->tag)
		return -ENOENT;
	r = slots_foreach(sb, match_pid, &m);
	json_object_put(m.config);
	if (r != 1)
		return r < 0 ? r : -ENOENT;
	return snprintf(dir, PATH_MAX, "%s/procs/%s", sb->dir, m.slot) >= PATH_MAX ? -ENAMETOOLONG : 0;
}


/*
 * The tap of the process sel names in sandbox sb, made for a running slot
 * that has none (one started through the mount, or before emberfs-e2b
 * restarted; by pid only: tags live in taps). NULL with -ENOENT in *err.
 */
static struct tap *tap_get(const struct sbx *sb, const struct selector *sel, int *err)
{
	struct slot_match m = {.pid = sel->pid};
	struct tap *t, *old;
	int r;

	t = tap_find(sb->id, sel->pid, sel->tag);
	if (t || sel->tag) {
		*err = t ? 0 : -ENOENT;
		return t;
	}
	r = slots_foreach(sb, match_pid, &m);
	if (r != 1) {
		*err = r < 0 ? r : -ENOENT;
		return NULL;
	}
	t = tap_new(sb, m.slot, m.pid, m.config, NULL, strncmp(m.slot, "e2b-", 4) == 0);
	json_object_put(m.config);
	if (!t) {
		*err = -ENOMEM;
		return NULL;
	}
	old = tap_register(t);
	if (old) {
		tap_unref(t);
		return old;
	}
	/* a tap always reads: so it sees the end and leaves the table */
	tap_run(t);
	*err = 0;
	return t;
}

/* When this run of emberfs-e2b began (realtime ms): slots named for earlier times are not this run's. */
static uint64_t run_started_ms;

static void __attribute__((constructor)) run_started(void)
{
	run_started_ms = realtime_ms();
}

/*
 * Ended slots of ours left by an earlier run of emberfs-e2b (which would
 * have removed them): removed when the sandbox is out of slots. This run's
 * own are never touched (one may be between its mkdir and its tap).
 */
static int sweep_one(const char *slot, json_object *st, void *ctx)
{
	const struct sbx *sb = ctx;
	char path[PATH_MAX];
	unsigned long long ms;
	json_object *v;
	const char *state;
	struct tap *t;
	bool tapped;

	if (sscanf(slot, "e2b-%llx-", &ms) != 1 || ms >= run_started_ms ||
	    !json_object_object_get_ex(st, "state", &v) || !(state = json_object_get_string(v)) ||
	    (strcmp(state, "exited") != 0 && strcmp(state, "lost") != 0 && strcmp(state, "new") != 0))
		return 0;
	t = tap_find_slot(sb->id, slot);
	tapped = t != NULL;
	tap_unref(t);
	if (!tapped && snprintf(path, sizeof(path), "%s/procs/%s", sb->dir, slot) < (int)sizeof(path) &&
	    rmdir(path) == 0)
		log_debug("e2b: removed the ended slot %s of %s", slot, sb->id);
	return 0;
}

/* ---- Start ---- */

struct start_req {
	json_object *cmd;    /* the JSON written to the slot's cmd */
	json_object *config; /* ProcessConfig as received (normalized) */
	const char *tag;
	bool stdin_open;
};

static int parse_start(json_object *msg, const char *user, struct start_req *out, const char **code, char *why,
		       size_t whylen)
{
	static const char *const top[] = {"process", "pty", "tag", "stdin", NULL};
	static const char *const proc[] = {"cmd", "args", "envs", "cwd", NULL};
	json_object *p, *v, *argv, *env;
	const char *bad;

	*code = "invalid_argument";
	if ((bad = unknown_key(msg, top))) {
		snprintf(why, whylen, "%s: unknown field of StartRequest", bad);
		return -EINVAL;
	}
	if (json_object_object_get_ex(msg, "pty", &v) && !json_object_is_type(v, json_type_null)) {
		*code = "unimplemented";
		snprintf(why, whylen, "pty: emberfs-e2b runs processes without a terminal (procs/ has no pty)");
		return -ENOTSUP;
	}
	if (!json_object_object_get_ex(msg, "process", &p) || !json_object_is_type(p, json_type_object)) {
		snprintf(why, whylen, "process: a ProcessConfig object is required");
		return -EINVAL;
	}
	if ((bad = unknown_key(p, proc))) {
		snprintf(why, whylen, "process.%s: unknown field of ProcessConfig", bad);
		return -EINVAL;
	}
	if (!json_object_object_get_ex(p, "cmd", &v) || !json_object_is_type(v, json_type_string) ||
	    !*json_object_get_string(v)) {
		snprintf(why, whylen, "process.cmd: a command is required");
		return -EINVAL;
	}
	argv = json_object_new_array();
	json_object_array_add(argv, json_object_get(v));
	if (json_object_object_get_ex(p, "args", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_array))
			goto bad_args;
		for (size_t i = 0; i < json_object_array_length(v); i++) {
			json_object *a = json_object_array_get_idx(v, i);

			if (!json_object_is_type(a, json_type_string))
				goto bad_args;
			json_object_array_add(argv, json_object_get(a));
		}
	}
	env = json_object_new_object();
	if (json_object_object_get_ex(p, "envs", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_object)) {
			json_object_put(env);
			json_object_put(argv);
			snprintf(why, whylen, "process.envs: an object of strings is expected");
			return -EINVAL;
		}
		json_object_object_foreach(v, k, e)
		{
			if (!json_object_is_type(e, json_type_string)) {
				snprintf(why, whylen, "process.envs.%.64s: a string is expected", k);
				json_object_put(env);
				json_object_put(argv);
				return -EINVAL;
			}
			json_object_object_add(env, k, json_object_get(e));
		}
	}
	out->cmd = json_object_new_object();
	out->config = json_object_new_object();
	json_object_object_add(out->cmd, "argv", argv);
	json_object_object_add(out->cmd, "env", json_object_get(env));
	json_object_object_add(out->config, "cmd", json_object_get(json_object_array_get_idx(argv, 0)));
	{
		json_object *args = json_object_new_array();

		for (size_t i = 1; i < json_object_array_length(argv); i++)
			json_object_array_add(args, json_object_get(json_object_array_get_idx(argv, i)));
		json_object_object_add(out->config, "args", args);
	}
	json_object_object_add(out->config, "envs", env);
	if (json_object_object_get_ex(p, "cwd", &v) && json_object_is_type(v, json_type_string) &&
	    *json_object_get_string(v)) {
		json_object_object_add(out->cmd, "cwd", json_object_get(v));
		json_object_object_add(out->config, "cwd", json_object_get(v));
	}
	if (user)
		json_object_object_add(out->cmd, "user", json_object_new_string(user));
	out->tag = NULL;
	if (json_object_object_get_ex(msg, "tag", &v) && json_object_is_type(v, json_type_string))
		out->tag = json_object_get_string(v);
	/* envd: stdin stays open unless the request says false */
	out->stdin_open = !json_object_object_get_ex(msg, "stdin", &v) || json_object_get_boolean(v);
	return 0;
bad_args:
	json_object_put(argv);
	snprintf(why, whylen, "process.args: an array of strings is expected");
	return -EINVAL;
}

/*
 * The user of `Authorization: Basic base64(user:)` (the SDK's way of
 * naming it); NULL when absent (the image's user). -EINVAL when malformed.
 */
static int auth_user(struct req *r, char **ret)
{
	const char *h = req_header(r, "Authorization");
	_cleanup_free_ uint8_t *dec = NULL;
	ssize_t n;
	char *colon;

	*ret = NULL;
	if (!h)
		return 0;
	if (strncasecmp(h, "Basic ", 6) != 0)
		return -EINVAL;
	h += 6;
	while (*h == ' ')
		h++;
	n = base64_decode(h, strlen(h), &dec);
	if (n <= 0 || memchr(dec, 0, (size_t)n))
		return -EINVAL;
	colon = memchr(dec, ':', (size_t)n);
	if (!colon || colon == (char *)dec)
		return -EINVAL;
	*ret = strndup((char *)dec, (size_t)(colon - (char *)dec));
	if (!*ret)
		return -ENOMEM;
	/* names and uid[:gid] as the mount takes them: nothing that could mean more */
	for (const char *c = *ret; *c; c++)
		if (!(c[0] >= 'a' && c[0] <= 'z') && !(c[0] >= 'A' && c[0] <= 'Z') && !(c[0] >= '0' && c[0] <= '9') &&
		    !strchr("._-$", *c)) {
			free(*ret);
			*ret = NULL;
			return -EINVAL;
		}
	return 0;
}

/* A new slot of ours: its name in slot. 0 or -errno (ENOSPC after a sweep too). */
static int slot_make(const struct sbx *sb, char slot[NAME_MAX_LEN + 1], char dir[PATH_MAX])
{
	bool swept = false;

	for (int tries = 0; tries < 8; tries++) {
		unsigned n = __atomic_add_fetch(&slot_seq, 1, __ATOMIC_RELAXED);

		snprintf(slot, NAME_MAX_LEN + 1, "e2b-%llx-%u", (unsigned long long)realtime_ms(), n);
		if (snprintf(dir, PATH_MAX, "%s/procs/%s", sb->dir, slot) >= PATH_MAX)
			return -ENAMETOOLONG;
		if (mkdir(dir, 0755) == 0)
			return 0;
		if (errno == ENOSPC && !swept) {
			slots_foreach(sb, sweep_one, (void *)sb);
			swept = true;
			continue;
		}
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

/* Why the cmd write failed, from the slot's status error if it has one. */
static void start_failure(const char *dir, int err, char *why, size_t whylen)
{
	char path[PATH_MAX];
	json_object *st, *v;

	join(path, dir, "status");
	st = mnt_read_json(path);
	if (st && json_object_object_get_ex(st, "error", &v) && json_object_get_string(v))
		snprintf(why, whylen, "error starting process: %s", json_object_get_string(v));
	else
		snprintf(why, whylen, "error starting process: %s", strerror(-err));
	json_object_put(st);
}

/* The pid in the slot's status once the cmd was written: 0 or -errno. */
static int slot_pid(const char *dir, uint32_t *pid)
{
	char path[PATH_MAX];
	json_object *st, *v;
	bool ok;

	join(path, dir, "status");
	st = mnt_read_json(path);
	if (!st)
		return -errno;
	ok = json_object_object_get_ex(st, "pid", &v) && get_u32(v, pid) && *pid;
	json_object_put(st);
	return ok ? 0 : -ESRCH;
}

static uint64_t timeout_header_ms(struct req *r)
{
	const char *h = req_header(r, "Connect-Timeout-Ms");
	unsigned long long v;
	char *end;

	if (!h || !*h)
		return 0;
	errno = 0;
	v = strtoull(h, &end, 10);
	return errno || *end ? 0 : v;
}

static int process_start(struct req *r)
{
	_cleanup_json_ json_object *msg = NULL;
	_cleanup_free_ char *user = NULL, *perr = NULL;
	struct start_req sr = {0};
	char slot[NAME_MAX_LEN + 1], dir[PATH_MAX], why[512], path[PATH_MAX];
	const char *code, *body;
	struct cstream *s = NULL;
	struct tap *t = NULL;
	uint64_t timeout_ms;
	uint32_t pid;
	struct sbx sb;
	size_t len;
	int k, ret;

	body = req_body(r, &len);
	k = connect_request_parse(body, len, CONNECT_REQUEST_MAX, &msg, &perr);
	if (k < 0)
		return connect_stream_reply_error(r, connect_request_code(k), "%s", perr ? perr : "bad request");
	if (auth_user(r, &user) < 0)
		return connect_stream_reply_error(r, "invalid_argument", "Authorization: expected Basic base64(user:)");
	if (parse_start(msg, user, &sr, &code, why, sizeof(why)) < 0)
		return connect_stream_reply_error(r, code, "%s", why);
	k = sbx_lookup(req_sandbox(r), &sb);
	if (k < 0) {
		ret = connect_stream_reply_error(r, "not_found", "sandbox %s: %s", req_sandbox(r), strerror(-k));
		goto out;
	}
	k = slot_make(&sb, slot, dir);
	if (k < 0) {
		ret = connect_stream_reply_error(r, k == -ENOSPC ? "resource_exhausted" : "internal",
						 "a process slot for sandbox %s: %s%s", sb.id, strerror(-k),
						 k == -ENOSPC ? " (at most 256 processes per sandbox)" : "");
		goto out;
	}
	join(path, dir, "cmd");
	{
		const char *text = json_object_to_json_string_ext(sr.cmd, JSON_C_TO_STRING_PLAIN |
									     JSON_C_TO_STRING_NOSLASHESCAPE);

		k = mnt_write(path, text, strlen(text));
	}
	if (k == 0)
		k = slot_pid(dir, &pid);
	if (k < 0) {
		start_failure(dir, k, why, sizeof(why));
		rmdir(dir);
		ret = connect_stream_reply_error(r, k == -EIO ? "unavailable" : "invalid_argument", "%s", why);
		goto out;
	}
	if (!sr.stdin_open) {
		/* envd gives such a process no stdin: close the slot's at once */
		int fd;

		join(path, dir, "stdin");
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd >= 0)
			close(fd);
	}
	t = tap_new(&sb, slot, pid, sr.config, sr.tag, true);
	s = connect_stream_new(connect_keepalive_ms(r), KEEPALIVE_MSG, STREAM_QUEUE_MAX);
	if (!t || !s) {
		/* nobody could follow it: the process goes, as a failed start */
		rmdir(dir);
		ret = connect_stream_reply_error(r, "resource_exhausted", "out of memory");
		goto out;
	}
	t->stdin_closed = !sr.stdin_open;
	tap_unref(tap_register(t)); /* a fresh slot: no tap can be there */
	tap_attach(t, s);
	timeout_ms = timeout_header_ms(r);
	if (timeout_ms)
		tap_set_deadline(t, timeout_ms);
	tap_run(t);
	ret = connect_stream_reply(r, s);
out:
	connect_stream_unref(s);
	tap_unref(t);
	json_object_put(sr.cmd);
	json_object_put(sr.config);
	return ret;
}

/* ---- Connect ---- */

static int process_connect(struct req *r)
{
	static const char *const top[] = {"process", NULL};
	_cleanup_json_ json_object *msg = NULL;
	_cleanup_free_ char *perr = NULL;
	struct selector sel;
	struct cstream *s;
	struct tap *t;
	char why[256];
	const char *body, *bad;
	struct sbx sb;
	size_t len;
	int k, ret;

	body = req_body(r, &len);
	k = connect_request_parse(body, len, CONNECT_REQUEST_MAX, &msg, &perr);
	if (k < 0)
		return connect_stream_reply_error(r, connect_request_code(k), "%s", perr ? perr : "bad request");
	if ((bad = unknown_key(msg, top)))
		return connect_stream_reply_error(r, "invalid_argument", "%s: unknown field of ConnectRequest", bad);
	if (parse_selector(msg, &sel, why, sizeof(why)) < 0)
		return connect_stream_reply_error(r, "invalid_argument", "%s", why);
	k = sbx_lookup(req_sandbox(r), &sb);
	if (k < 0)
		return connect_stream_reply_error(r, "not_found", "sandbox %s: %s", req_sandbox(r), strerror(-k));
	t = tap_get(&sb, &sel, &k);
	if (!t) {
		if (sel.tag)
			return connect_stream_reply_error(r, "not_found", "process with tag %s not found", sel.tag);
		return connect_stream_reply_error(r, "not_found", "process with pid %u not found", sel.pid);
	}
	s = connect_stream_new(connect_keepalive_ms(r), KEEPALIVE_MSG, STREAM_QUEUE_MAX);
	if (!s) {
		tap_unref(t);
		return connect_stream_reply_error(r, "resource_exhausted", "out of memory");
	}
	k = tap_attach(t, s);
	if (k < 0) {
		connect_stream_unref(s);
		tap_unref(t);
		return connect_stream_reply_error(r, "not_found", "process with pid %u not found", sel.pid);
	}
	tap_run(t);
	ret = connect_stream_reply(r, s);
	connect_stream_unref(s);
	tap_unref(t);
	return ret;
}

/* ---- List ---- */

struct list_ctx {
	const struct sbx *sb;
	json_object *procs;
};

static int list_one(const char *slot, json_object *st, void *ctx)
{
	struct list_ctx *l = ctx;
	json_object *info, *v;
	struct tap *t;
	uint32_t pid;

	if (!state_running(st) || !json_object_object_get_ex(st, "pid", &v) || !get_u32(v, &pid))
		return 0;
	info = json_object_new_object();
	t = tap_find_slot(l->sb->id, slot);
	if (t) {
		json_object_object_add(info, "config", json_object_get(t->config));
		if (t->tag)
			json_object_object_add(info, "tag", json_object_new_string(t->tag));
		tap_unref(t);
	}
	if (!t)
		json_object_object_add(info, "config",
				       config_from_cmd(json_object_object_get_ex(st, "cmd", &v) ?
							       json_object_get_string(v) :
							       NULL));
	json_object_object_add(info, "pid", json_object_new_int64(pid));
	json_object_array_add(l->procs, info);
	return 0;
}

static int process_list(struct req *r)
{
	static const char *const top[] = {NULL};
	_cleanup_json_ json_object *msg = unary_body(r);
	json_object *o, *procs;
	struct list_ctx l;
	const char *bad;
	struct sbx sb;
	int k;

	if (!msg)
		return 0;
	if ((bad = unknown_key(msg, top)))
		return reply_connect_error(r, "invalid_argument", "%s: unknown field of ListRequest", bad);
	k = sbx_lookup(req_sandbox(r), &sb);
	if (k < 0)
		return reply_connect_error(r, "not_found", "sandbox %s: %s", req_sandbox(r), strerror(-k));
	procs = json_object_new_array();
	l = (struct list_ctx){.sb = &sb, .procs = procs};
	k = slots_foreach(&sb, list_one, &l);
	if (k < 0) {
		json_object_put(procs);
		return reply_connect_error(r, connect_code_errno(k), "the processes of %s: %s", sb.id, strerror(-k));
	}
	o = json_object_new_object();
	json_object_object_add(o, "processes", procs);
	return reply_json(r, 200, o);
}

/* ---- SendSignal, SendInput, CloseStdin ---- */

/* The unary calls' common part: the body, its selector, the sandbox. NULL after replying. */
static json_object *unary_target(struct req *r, const char *const *keys, const char *what, struct selector *sel,
				 struct sbx *sb)
{
	json_object *msg = unary_body(r);
	const char *bad;
	char why[256];
	int k;

	if (!msg)
		return NULL;
	if ((bad = unknown_key(msg, keys))) {
		reply_connect_error(r, "invalid_argument", "%s: unknown field of %s", bad, what);
		goto fail;
	}
	if (parse_selector(msg, sel, why, sizeof(why)) < 0) {
		reply_connect_error(r, "invalid_argument", "%s", why);
		goto fail;
	}
	k = sbx_lookup(req_sandbox(r), sb);
	if (k < 0) {
		reply_connect_error(r, "not_found", "sandbox %s: %s", req_sandbox(r), strerror(-k));
		goto fail;
	}
	return msg;
fail:
	json_object_put(msg);
	return NULL;
}

static int reply_no_process(struct req *r, const struct selector *sel)
{
	if (sel->tag)
		return reply_connect_error(r, "not_found", "process with tag %s not found", sel->tag);
	return reply_connect_error(r, "not_found", "process with pid %u not found", sel->pid);
}

static int process_send_signal(struct req *r)
{
	static const char *const keys[] = {"process", "signal", NULL};
	_cleanup_json_ json_object *msg = NULL;
	struct selector sel;
	struct sbx sb;
	json_object *v = NULL;
	const char *sig = NULL;
	char dir[PATH_MAX], path[PATH_MAX];
	int k;

	msg = unary_target(r, keys, "SendSignalRequest", &sel, &sb);
	if (!msg)
		return 0;
	if (json_object_object_get_ex(msg, "signal", &v)) {
		const char *s = json_object_get_string(v);
		int n = json_object_is_type(v, json_type_int) ? json_object_get_int(v) : 0;

		if (n == 9 || (s && strcmp(s, "SIGNAL_SIGKILL") == 0))
			sig = "KILL";
		else if (n == 15 || (s && strcmp(s, "SIGNAL_SIGTERM") == 0))
			sig = "TERM";
	}
	if (!sig)
		return reply_connect_error(r, "unimplemented", "invalid signal: %s",
					   v ? json_object_get_string(v) : "SIGNAL_UNSPECIFIED");
	k = slot_dir_of(&sb, &sel, dir);
	if (k < 0)
		return k == -ENOENT ? reply_no_process(r, &sel) :
				      reply_connect_error(r, connect_code_errno(k), "%s", strerror(-k));
	join(path, dir, "signal");
	k = mnt_write(path, sig, strlen(sig));
	if (k == -ESRCH || k == -ENOENT)
		return reply_no_process(r, &sel);
	if (k < 0)
		return reply_connect_error(r, "internal", "error sending signal: %s", strerror(-k));
	return reply_json(r, 200, json_object_new_object());
}

/* Opens the tap's stdin for writing if it is not: stdin_lock held. 0 or -errno. */
static int stdin_open_locked(struct tap *t)
{
	char path[PATH_MAX];

	if (t->stdin_fd >= 0)
		return 0;
	if (t->stdin_closed)
		return -EPIPE;
	tap_path(t, "stdin", path);
	t->stdin_fd = open(path, O_WRONLY | O_CLOEXEC);
	return t->stdin_fd < 0 ? -errno : 0;
}

static int process_send_input(struct req *r)
{
	static const char *const keys[] = {"process", "input", NULL};
	_cleanup_json_ json_object *msg = NULL;
	_cleanup_free_ uint8_t *data = NULL;
	struct selector sel;
	struct sbx sb;
	struct tap *t;
	json_object *in, *v;
	ssize_t n;
	int k = 0;

	msg = unary_target(r, keys, "SendInputRequest", &sel, &sb);
	if (!msg)
		return 0;
	if (!json_object_object_get_ex(msg, "input", &in) || !json_object_is_type(in, json_type_object))
		return reply_connect_error(r, "invalid_argument", "input: a ProcessInput object is required");
	if (json_object_object_get_ex(in, "pty", NULL))
		return reply_connect_error(r, "unimplemented", "input.pty: emberfs-e2b runs processes without a terminal");
	if (!json_object_object_get_ex(in, "stdin", &v) || !json_object_is_type(v, json_type_string))
		return reply_connect_error(r, "invalid_argument", "input.stdin: base64 bytes are expected");
	n = json_object_get_string_len(v) ? base64_decode(json_object_get_string(v),
							  (size_t)json_object_get_string_len(v), &data) :
					    0;
	if (n < 0)
		return reply_connect_error(r, "invalid_argument", "input.stdin: not base64");
	t = tap_get(&sb, &sel, &k);
	if (!t)
		return k == -ENOENT ? reply_no_process(r, &sel) :
				      reply_connect_error(r, connect_code_errno(k), "%s", strerror(-k));
	pthread_mutex_lock(&t->stdin_lock);
	k = stdin_open_locked(t);
	for (ssize_t off = 0; k == 0 && off < n;) {
		ssize_t w = write(t->stdin_fd, data + off, (size_t)(n - off));

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			k = -errno;
		else
			off += w;
	}
	pthread_mutex_unlock(&t->stdin_lock);
	tap_unref(t);
	if (k == -ESRCH || k == -ENOENT)
		return reply_no_process(r, &sel);
	if (k < 0)
		return reply_connect_error(r, "internal", "error writing to stdin: %s",
					   k == -EPIPE ? "stdin not enabled or closed" : strerror(-k));
	return reply_json(r, 200, json_object_new_object());
}

static int process_close_stdin(struct req *r)
{
	static const char *const keys[] = {"process", NULL};
	_cleanup_json_ json_object *msg = NULL;
	struct selector sel;
	struct sbx sb;
	struct tap *t;
	int k = 0;

	msg = unary_target(r, keys, "CloseStdinRequest", &sel, &sb);
	if (!msg)
		return 0;
	t = tap_find(sb.id, sel.pid, sel.tag);
	if (!t) {
		char dir[PATH_MAX], path[PATH_MAX];
		int fd;

		/* nobody here holds its stdin: a handle opened and closed is the EOF */
		k = slot_dir_of(&sb, &sel, dir);
		if (k < 0)
			return k == -ENOENT ? reply_no_process(r, &sel) :
					      reply_connect_error(r, connect_code_errno(k), "%s", strerror(-k));
		join(path, dir, "stdin");
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd >= 0)
			close(fd);
		return reply_json(r, 200, json_object_new_object());
	}
	pthread_mutex_lock(&t->stdin_lock);
	if (!t->stdin_closed) {
		/* closing a handle opened for writing is the EOF: open one if none is */
		k = stdin_open_locked(t);
		if (t->stdin_fd >= 0 && close(t->stdin_fd) < 0 && k == 0 && errno != EPIPE)
			k = -errno;
		t->stdin_fd = -1;
		t->stdin_closed = true;
	}
	pthread_mutex_unlock(&t->stdin_lock);
	tap_unref(t);
	if (k == -ESRCH || k == -ENOENT)
		return reply_no_process(r, &sel);
	if (k < 0 && k != -EPIPE)
		return reply_connect_error(r, "unknown", "error closing stdin: %s", strerror(-k));
	return reply_json(r, 200, json_object_new_object());
}

/* ---- what is not implemented ---- */

static int process_update(struct req *r)
{
	return reply_connect_error(r, "unimplemented",
				   "Update (pty resize): emberfs-e2b runs processes without a terminal");
}

static int process_stream_input(struct req *r)
{
	return connect_stream_reply_error(r, "unimplemented",
					  "StreamInput: use SendInput (client streaming needs HTTP/2; the SDK sends SendInput)");
}

const struct route process_routes[] = {
	{.method = "POST", .pattern = "/process.Process/Start", .scope = SCOPE_SANDBOX, .max_body = CONNECT_REQUEST_MAX + CONNECT_HEADER_LEN, .handle = process_start},
	{.method = "POST", .pattern = "/process.Process/Connect", .scope = SCOPE_SANDBOX, .max_body = CONNECT_REQUEST_MAX + CONNECT_HEADER_LEN, .handle = process_connect},
	{.method = "POST", .pattern = "/process.Process/List", .scope = SCOPE_SANDBOX, .max_body = 64 * 1024, .handle = process_list},
	{.method = "POST", .pattern = "/process.Process/SendInput", .scope = SCOPE_SANDBOX, .max_body = INPUT_MAX, .handle = process_send_input},
	{.method = "POST", .pattern = "/process.Process/SendSignal", .scope = SCOPE_SANDBOX, .max_body = 64 * 1024, .handle = process_send_signal},
	{.method = "POST", .pattern = "/process.Process/CloseStdin", .scope = SCOPE_SANDBOX, .max_body = 64 * 1024, .handle = process_close_stdin},
	{.method = "POST", .pattern = "/process.Process/Update", .scope = SCOPE_SANDBOX, .max_body = 64 * 1024, .handle = process_update},
	{.method = "POST", .pattern = "/process.Process/StreamInput", .scope = SCOPE_SANDBOX, .max_body = CONNECT_REQUEST_MAX, .handle = process_stream_input},
	{.method = NULL},
};
