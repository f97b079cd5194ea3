/*
 * envd's filesystem service over the mount: the Connect RPC
 * filesystem.Filesystem unary methods (JSON), GET and POST /files, and
 * /health. Every guest path is MOUNT/live/ID/<path> (docs/interface.md,
 * "The guest's files"): the mount does the work, this file only maps the
 * E2B calls onto plain system calls.
 *
 * "As the user": the guest checks permissions as the calling host uid,
 * gid and groups, so each operation runs with the thread's fsuid, fsgid
 * and supplementary groups switched to the E2B user's, resolved through
 * the guest's own /etc/passwd and /etc/group. The switch is per thread
 * (setfsuid/setfsgid and the raw setgroups system call; glibc's setgroups
 * would change every thread) and is undone before the handler returns:
 * libmicrohttpd runs each connection on its own thread, and nothing else
 * runs on it meanwhile.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/common.h"
#include "connect.h"
#include "fsutil.h"
#include "http.h"
#include "mountc.h"

#define RPC_MAX_BODY (64 * 1024)
#define MAX_GROUPS 64
#define LIST_MAX_ENTRIES 100000
#define UPLOAD_PP_BUFFER (64 * 1024)
#define UPLOAD_BUF (1024 * 1024)

/* ---- who the caller is in the guest ---- */

struct who {
	struct sbx sbx;
	char root[PATH_MAX]; /* realpath of live/ID: symlink targets are shown below it */
	struct e2bfs_ids ids;
	struct e2bfs_user user;
	gid_t groups[MAX_GROUPS];
	size_t n_groups;
};

static void fclosep_(FILE **f)
{
	if (*f)
		fclose(*f);
}

static void who_free(struct who *w)
{
	e2bfs_ids_free(&w->ids);
	free(w->user.name);
	free(w->user.home);
	w->user.name = w->user.home = NULL;
}

static FILE *guest_fopen(const struct who *w, const char *file, int *err)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s%s", w->sbx.live, file);
	f = fopen(path, "re");
	if (!f && errno != ENOENT)
		*err = -errno;
	return f;
}

/*
 * Without a user named, envd uses its default user; emberfs's processes run
 * as the image's user, else root (docs/interface.md, exec): files do the
 * same, so a file a command makes and one the SDK writes have one owner.
 */
static void default_user(const struct sbx *s, char out[static 64])
{
	char path[PATH_MAX];
	json_object *o, *b, *u;

	snprintf(out, 64, "root");
	snprintf(path, sizeof(path), "%s/templates/%s/status", cfg.mount, s->tpl);
	if (!(o = mnt_read_json(path)))
		return;
	if (json_object_object_get_ex(o, "build", &b) && json_object_object_get_ex(b, "user", &u) &&
	    json_object_is_type(u, json_type_string) && json_object_get_string_len(u) > 0) {
		const char *v = json_object_get_string(u);
		size_t n = strcspn(v, ":");

		if (n > 0 && n < 64) {
			memcpy(out, v, n);
			out[n] = 0;
		}
	}
	json_object_put(o);
}

/*
 * The sandbox of r and the user username (NULL: the default user) in its
 * guest. 0, or -errno with *why set: -ENOENT the sandbox is gone, -ESRCH no
 * such user, or the mount's error reading the guest's files.
 */
static int who_load(struct req *r, const char *username, struct who *w, char why[static 256])
{
	_cleanup_(fclosep_) FILE *pw = NULL, *gr = NULL;
	char def[64];
	const struct e2bfs_user *u;
	int k = 0;

	memset(w, 0, sizeof(*w));
	if ((k = sbx_lookup(req_sandbox(r), &w->sbx)) < 0) {
		snprintf(why, 256, "sandbox %s: %s", req_sandbox(r), strerror(-k));
		return k;
	}
	if (!realpath(w->sbx.live, w->root)) {
		k = -errno;
		snprintf(why, 256, "sandbox %s: its files: %s", w->sbx.id, strerror(errno));
		return k;
	}
	if (!username || !*username) {
		default_user(&w->sbx, def);
		username = def;
	}
	pw = guest_fopen(w, "/etc/passwd", &k);
	gr = guest_fopen(w, "/etc/group", &k);
	if (k < 0) {
		snprintf(why, 256, "reading the guest's /etc/passwd and /etc/group: %s", strerror(-k));
		return k;
	}
	if ((k = e2bfs_ids_load(&w->ids, pw, gr)) < 0) {
		snprintf(why, 256, "out of memory");
		return k;
	}
	u = e2bfs_ids_user(&w->ids, username);
	if (u) {
		w->user = (struct e2bfs_user){.name = strdup(u->name), .uid = u->uid, .gid = u->gid, .home = strdup(u->home)};
		w->n_groups = e2bfs_ids_groups(&w->ids, u, w->groups, MAX_GROUPS);
	} else if (strcmp(username, "root") == 0 || strspn(username, "0123456789") == strlen(username)) {
		/* root, or a number, with no passwd line: as exec takes them (uid N, group 0, home /) */
		unsigned long id = strtoul(username, NULL, 10);

		w->user = (struct e2bfs_user){.name = strdup(username), .uid = (uid_t)id, .gid = 0,
					      .home = strdup(id == 0 ? "/root" : "/")};
		w->groups[0] = 0;
		w->n_groups = 1;
	} else {
		snprintf(why, 256, "invalid username: '%.64s' is not a user in the guest's /etc/passwd", username);
		return -ESRCH;
	}
	if (!w->user.name || !w->user.home) {
		snprintf(why, 256, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

struct creds {
	uid_t fsuid;
	gid_t fsgid;
	gid_t groups[MAX_GROUPS * 4];
	int n_groups;
	bool switched;
};

/* This thread acts as w's user until creds_leave. 0 or -errno. */
static int creds_enter(const struct who *w, struct creds *c)
{
	c->switched = false;
	if (geteuid() != 0) {
		/* unprivileged server: it can act only as itself */
		return w->user.uid == geteuid() ? 0 : -EPERM;
	}
	c->n_groups = getgroups((int)ARRAY_SIZE(c->groups), c->groups);
	if (c->n_groups < 0)
		return -errno;
	if (syscall(SYS_setgroups, w->n_groups, w->groups) < 0)
		return -errno;
	c->fsgid = (gid_t)setfsgid(w->user.gid);
	c->fsuid = (uid_t)setfsuid(w->user.uid);
	c->switched = true;
	return 0;
}

static void creds_leave(struct creds *c)
{
	if (!c->switched)
		return;
	/* fsuid back to 0 first: it gives back the capabilities setgroups needs */
	setfsuid(c->fsuid);
	setfsgid(c->fsgid);
	syscall(SYS_setgroups, (size_t)c->n_groups, c->groups);
	c->switched = false;
}

/* ---- paths and entries ---- */

/* guest: the normalised guest path of path; host: live/ID + it. 0, -EINVAL, -ENAMETOOLONG, -ENOMEM. */
static int resolve(const struct who *w, const char *path, char **guest, char **host)
{
	_cleanup_free_ char *g = NULL;
	int k = e2bfs_guest_path(path ? path : "", w->user.home, &g);

	if (k < 0)
		return k;
	if (asprintf(host, "%s%s", w->sbx.live, strcmp(g, "/") == 0 ? "" : g) < 0)
		return -ENOMEM;
	*guest = TAKE_PTR(g);
	return 0;
}

static bool below_root(const struct who *w, const char *real)
{
	size_t n = strlen(w->root);

	return strncmp(real, w->root, n) == 0 && (!real[n] || real[n] == '/');
}

/* The guest path of a host path below w->root, or NULL (outside, or ENOMEM). */
static char *guest_of(const struct who *w, const char *real)
{
	size_t n = strlen(w->root);

	if (!below_root(w, real))
		return NULL;
	return strdup(real[n] ? real + n : "/");
}

/* EntryInfo of one file, as envd's entryInfo. NULL with *err: the lstat's errno, or -ENOMEM. */
static json_object *entry_at(const struct who *w, const char *guest, const char *host, int *err)
{
	_cleanup_free_ char *real = NULL, *target = NULL;
	struct stat st, tst;
	char owner[64], group[64];
	struct e2bfs_entry e = {.name = e2bfs_base(guest), .path = guest, .st = &st, .owner = owner, .group = group};
	json_object *o;

	if (lstat(host, &st) < 0) {
		*err = -errno;
		return NULL;
	}
	if (S_ISLNK(st.st_mode)) {
		/* envd: the fully resolved path, or the link itself when it cannot be resolved */
		real = realpath(host, NULL);
		target = real ? guest_of(w, real) : NULL;
		if (target && stat(host, &tst) == 0)
			e.target = &tst;
		if (!target)
			target = strdup(guest);
		if (!target) {
			*err = -ENOMEM;
			return NULL;
		}
		e.symlink_target = target;
	}
	e2bfs_ids_owner(&w->ids, st.st_uid, owner);
	e2bfs_ids_group(&w->ids, st.st_gid, group);
	if (!(o = e2bfs_entry_json(&e)))
		*err = -ENOMEM;
	return o;
}

/*
 * mkdir -p of guest directory dir as envd's EnsureDirs: each missing
 * component made 0755 (the caller's, as the thread's fsuid makes it); a
 * component that is not a directory: -ENOTDIR. why says which.
 */
static int ensure_dirs(const struct who *w, const char *dir, char why[static 256])
{
	_cleanup_free_ char *host = NULL;
	size_t base = strlen(w->sbx.live);
	struct stat st;

	if (asprintf(&host, "%s%s", w->sbx.live, dir) < 0)
		return -ENOMEM;
	for (char *p = host + base + 1;; p++) {
		bool last = !*p;

		if (*p && *p != '/')
			continue;
		*p = 0;
		if (stat(host, &st) < 0) {
			if (errno != ENOENT || (mkdir(host, 0755) < 0 && errno != EEXIST)) {
				int k = -errno;

				snprintf(why, 256, "cannot make directory %.200s: %s", host + base, strerror(errno));
				return k;
			}
		} else if (!S_ISDIR(st.st_mode)) {
			snprintf(why, 256, "path is a file: %.200s", host + base);
			return -ENOTDIR;
		}
		if (last)
			return 0;
		*p = '/';
	}
}

/* The parent of a normalised guest path ("/" for "/x"), malloc'd. */
static char *guest_dirname(const char *guest)
{
	const char *s = strrchr(guest, '/');

	return s == guest ? strdup("/") : strndup(guest, (size_t)(s - guest));
}

/* ---- Connect unary calls ---- */

/* The first key of o not in allowed (NULL-terminated), or NULL: unknown fields are refused, never ignored. */
static const char *unknown_field(json_object *o, const char *const *allowed)
{
	json_object_object_foreach(o, key, val)
	{
		bool ok = false;

		(void)val;
		for (const char *const *a = allowed; *a; a++)
			ok |= strcmp(*a, key) == 0;
		if (!ok)
			return key;
	}
	return NULL;
}

/*
 * The request message: a JSON object with only the fields named in allowed
 * (NULL-terminated). NULL after replying (invalid_argument naming what is
 * wrong).
 */
static json_object *rpc_message(struct req *r, const char *const *allowed)
{
	size_t len;
	const char *body = req_body(r, &len);
	const char *ct = req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE), *bad;
	json_tokener *tok;
	json_object *o;

	if (ct && strncmp(ct, "application/json", 16) != 0) {
		reply_connect_error(r, "unimplemented", "content type %s: emberfs-e2b speaks Connect with JSON only", ct);
		return NULL;
	}
	if (len == 0)
		return json_object_new_object();
	if (!(tok = json_tokener_new())) {
		reply_connect_error(r, "resource_exhausted", "out of memory");
		return NULL;
	}
	o = json_tokener_parse_ex(tok, body, (int)len);
	if (o && (json_tokener_get_error(tok) != json_tokener_success || (size_t)json_tokener_get_parse_end(tok) != len)) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	if (!o || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		reply_connect_error(r, "invalid_argument", "the request is not a JSON object");
		return NULL;
	}
	if ((bad = unknown_field(o, allowed))) {
		reply_connect_error(r, "invalid_argument", "%s: field \"%s\" is not implemented by emberfs-e2b",
				    req_path(r), bad);
		json_object_put(o);
		return NULL;
	}
	return o;
}

/* A string field ("" when absent or null); NULL after replying when it is not a string. */
static const char *rpc_string(struct req *r, json_object *msg, const char *key)
{
	json_object *v;

	if (!json_object_object_get_ex(msg, key, &v) || !v)
		return "";
	if (!json_object_is_type(v, json_type_string) ||
	    strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v)) {
		reply_connect_error(r, "invalid_argument", "field \"%s\" must be a string without NUL", key);
		return NULL;
	}
	return json_object_get_string(v);
}

/* The caller of a Connect call: Authorization: Basic base64(user:), else the default user. 0 or replied. */
static int rpc_who(struct req *r, struct who *w)
{
	_cleanup_free_ char *user = NULL;
	char why[256];
	int k = e2bfs_basic_user(req_header(r, MHD_HTTP_HEADER_AUTHORIZATION), &user);

	if (k < 0 && k != -ENOENT) {
		reply_connect_error(r, "invalid_argument", "the Authorization header is not Basic base64(user:)");
		return -1;
	}
	if ((k = who_load(r, user, w, why)) < 0) {
		reply_connect_error(r, k == -ESRCH ? "invalid_argument" : connect_code_errno(k), "%s", why);
		return -1;
	}
	return 0;
}

static int rpc_errno(struct req *r, int err, const char *what, const char *guest)
{
	if (err == -ENOENT)
		return reply_connect_error(r, "not_found", "%s: %s does not exist", what, guest);
	if (err == -E2BIG)
		return reply_connect_error(r, "resource_exhausted", "%s: %s has more than %d entries at that depth",
					   what, guest, LIST_MAX_ENTRIES);
	return reply_connect_error(r, connect_code_errno(err), "%s: %s: %s", what, guest, strerror(-err));
}

/* Replies {"entry": EntryInfo of guest}. */
static int rpc_reply_entry(struct req *r, const struct who *w, const char *what, const char *guest, const char *host)
{
	int err = 0;
	json_object *e = entry_at(w, guest, host, &err), *o;

	if (!e)
		return rpc_errno(r, err, what, guest);
	o = json_object_new_object();
	json_object_object_add(o, "entry", e);
	return reply_json(r, 200, o);
}

/*
 * The shared start of every call: the message (fields allowed), the
 * caller, the path in field key resolved. 0, or -1 when replied.
 */
struct call {
	json_object *msg;
	struct who who;
	char *guest, *host;
	struct creds creds;
};

static void call_done(struct call *c)
{
	creds_leave(&c->creds);
	json_object_put(c->msg);
	who_free(&c->who);
	free(c->guest);
	free(c->host);
}

static int call_path(struct req *r, struct call *c, const char *key, char **guest, char **host)
{
	const char *p = rpc_string(r, c->msg, key);
	int k;

	if (!p)
		return -1;
	if ((k = resolve(&c->who, p, guest, host)) < 0) {
		reply_connect_error(r, "invalid_argument", "%s \"%.200s\": %s", key, p,
				    k == -EINVAL ? "cannot expand another user's home directory" : strerror(-k));
		return -1;
	}
	return 0;
}

static int call_begin(struct req *r, struct call *c, const char *const *allowed, const char *key)
{
	int k;

	if (!(c->msg = rpc_message(r, allowed)))
		return -1;
	if (rpc_who(r, &c->who) < 0)
		return -1;
	if (key && call_path(r, c, key, &c->guest, &c->host) < 0)
		return -1;
	if ((k = creds_enter(&c->who, &c->creds)) < 0) {
		reply_connect_error(r, "permission_denied", "cannot act as user %s: %s", c->who.user.name, strerror(-k));
		return -1;
	}
	return 0;
}

static int fs_stat(struct req *r)
{
	static const char *const allowed[] = {"path", NULL};
	_cleanup_(call_done) struct call c = {0};

	if (call_begin(r, &c, allowed, "path") < 0)
		return 0;
	return rpc_reply_entry(r, &c.who, "stat", c.guest, c.host);
}

static int fs_make_dir(struct req *r)
{
	static const char *const allowed[] = {"path", NULL};
	_cleanup_(call_done) struct call c = {0};
	char why[256];
	struct stat st;
	int k;

	if (call_begin(r, &c, allowed, "path") < 0)
		return 0;
	if (stat(c.host, &st) == 0)
		return S_ISDIR(st.st_mode)
			       ? reply_connect_error(r, "already_exists", "directory already exists: %s", c.guest)
			       : reply_connect_error(r, "invalid_argument",
						     "path already exists but it is not a directory: %s", c.guest);
	if (errno != ENOENT)
		return rpc_errno(r, -errno, "make_dir", c.guest);
	if ((k = ensure_dirs(&c.who, c.guest, why)) < 0)
		return reply_connect_error(r, k == -ENOTDIR ? "invalid_argument" : connect_code_errno(k), "%s", why);
	return rpc_reply_entry(r, &c.who, "make_dir", c.guest, c.host);
}

static int fs_move(struct req *r)
{
	static const char *const allowed[] = {"source", "destination", NULL};
	_cleanup_(call_done) struct call c = {0};
	_cleanup_free_ char *dst_guest = NULL, *dst_host = NULL, *parent = NULL;
	char why[256];
	int k;

	if (call_begin(r, &c, allowed, "source") < 0 || call_path(r, &c, "destination", &dst_guest, &dst_host) < 0)
		return 0;
	if (strcmp(c.guest, "/") == 0 || strcmp(dst_guest, "/") == 0)
		return reply_connect_error(r, "invalid_argument", "move: / cannot be moved or replaced");
	if (!(parent = guest_dirname(dst_guest)))
		return reply_connect_error(r, "resource_exhausted", "out of memory");
	if ((k = ensure_dirs(&c.who, parent, why)) < 0)
		return reply_connect_error(r, k == -ENOTDIR ? "invalid_argument" : connect_code_errno(k), "%s", why);
	if (rename(c.host, dst_host) < 0) {
		if (errno == ENOENT)
			return reply_connect_error(r, "not_found", "source file not found: %s", c.guest);
		return reply_connect_error(r, connect_code_errno(errno), "move %s to %s: %s", c.guest, dst_guest,
					   strerror(errno));
	}
	return rpc_reply_entry(r, &c.who, "move", dst_guest, dst_host);
}

static int fs_remove(struct req *r)
{
	static const char *const allowed[] = {"path", NULL};
	_cleanup_(call_done) struct call c = {0};
	int k;

	if (call_begin(r, &c, allowed, "path") < 0)
		return 0;
	/* rm -rf of the guest's / would end with rmdir of live/ID itself */
	if (strcmp(c.guest, "/") == 0)
		return reply_connect_error(r, "invalid_argument", "remove: / cannot be removed");
	/* as os.RemoveAll: recursive, without following symlinks; already gone is success */
	if ((k = rm_rf(c.host)) < 0)
		return rpc_errno(r, k, "remove", c.guest);
	return reply_json(r, 200, json_object_new_object());
}

/* ---- ListDir ---- */

struct walk {
	const struct who *w;
	json_object *entries;
	size_t n;
};

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void strvp(char ***v)
{
	for (char **p = *v; p && *p; p++)
		free(*p);
	free(*v);
}

/* The names in host directory, sorted as Go's os.ReadDir sorts (bytes). NULL-terminated, or NULL with *err. */
static char **dir_names(const char *host, int *err)
{
	DIR *d = opendir(host);
	struct dirent *de;
	char **v = NULL;
	size_t n = 0, cap = 0;

	if (!d) {
		*err = -errno;
		return NULL;
	}
	errno = 0;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n + 2 > cap) {
			char **nv = reallocarray(v, cap = cap ? 2 * cap : 32, sizeof(*v));

			if (!nv)
				goto oom;
			v = nv;
		}
		if (!(v[n] = strdup(de->d_name)))
			goto oom;
		v[++n] = NULL;
		if (n > LIST_MAX_ENTRIES) {
			*err = -E2BIG;
			goto fail;
		}
	}
	if (errno) {
		*err = -errno;
		goto fail;
	}
	closedir(d);
	if (!v && !(v = calloc(1, sizeof(*v)))) {
		*err = -ENOMEM;
		return NULL;
	}
	qsort(v, n, sizeof(*v), name_cmp);
	return v;
oom:
	*err = -ENOMEM;
fail:
	closedir(d);
	strvp(&v);
	return NULL;
}

/* envd's walkDir: depth-first, each directory's entries by name, symlinks not followed. */
static int walk_dir(struct walk *wk, const char *guest, const char *host, unsigned depth)
{
	int err = 0;
	_cleanup_(strvp) char **names = dir_names(host, &err);

	if (!names)
		return err;
	for (char **n = names; *n; n++) {
		_cleanup_free_ char *cg = NULL, *ch = NULL;
		json_object *e;
		struct stat st;

		if (asprintf(&cg, "%s/%s", strcmp(guest, "/") ? guest : "", *n) < 0 ||
		    asprintf(&ch, "%s/%s", host, *n) < 0)
			return -ENOMEM;
		if (!(e = entry_at(wk->w, cg, ch, &err))) {
			if (err == -ENOENT)
				continue; /* gone since the readdir, as envd skips it */
			return err;
		}
		if (++wk->n > LIST_MAX_ENTRIES) {
			json_object_put(e);
			return -E2BIG;
		}
		json_object_array_add(wk->entries, e);
		if (depth > 1 && lstat(ch, &st) == 0 && S_ISDIR(st.st_mode) && (err = walk_dir(wk, cg, ch, depth - 1)) < 0)
			return err;
	}
	return 0;
}

static int fs_list_dir(struct req *r)
{
	static const char *const allowed[] = {"path", "depth", NULL};
	_cleanup_(call_done) struct call c = {0};
	struct walk wk = {0};
	json_object *v, *o;
	struct stat st;
	int64_t depth = 1;
	int k;

	if (call_begin(r, &c, allowed, "path") < 0)
		return 0;
	if (json_object_object_get_ex(c.msg, "depth", &v) && v) {
		/* uint32: a number, or a string of one as protobuf JSON allows */
		errno = 0;
		depth = json_object_get_int64(v);
		if ((!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_string)) || errno ||
		    depth < 0 || depth > UINT32_MAX)
			return reply_connect_error(r, "invalid_argument", "field \"depth\" must be a uint32");
	}
	if (depth == 0)
		depth = 1;
	if (stat(c.host, &st) < 0)
		return errno == ENOENT ? reply_connect_error(r, "not_found", "directory not found: %s", c.guest)
				       : rpc_errno(r, -errno, "list_dir", c.guest);
	if (!S_ISDIR(st.st_mode))
		return reply_connect_error(r, "invalid_argument", "path is not a directory: %s", c.guest);
	wk.w = &c.who;
	if (!(wk.entries = json_object_new_array()))
		return reply_connect_error(r, "resource_exhausted", "out of memory");
	/* the host path of a directory always ends in a name or is live/ID: never a trailing '/' */
	if ((k = walk_dir(&wk, c.guest, c.host, (unsigned)depth)) < 0) {
		json_object_put(wk.entries);
		return rpc_errno(r, k, "list_dir", c.guest);
	}
	o = json_object_new_object();
	json_object_object_add(o, "entries", wk.entries);
	return reply_json(r, 200, o);
}

/* ---- watchers: not implemented ---- */

static int fs_unimplemented(struct req *r)
{
	return reply_connect_error(r, "unimplemented",
				   "%s is not implemented by emberfs-e2b (the polled watchers CreateWatcher, "
				   "GetWatcherEvents, RemoveWatcher; WatchDir is)",
				   req_path(r));
}

/*
 * WatchDir, a server stream, by polling: the mount has no notification of
 * the guest's file changes (and envd itself refuses to watch a FUSE mount
 * with inotify), so the directory is listed every WATCH_POLL_MS as the
 * user and each listing compared with the one before (e2bfs_snap_diff).
 * Through the mount's 1 s attribute and name cache, an event shows within
 * about 1.5 s. The stream ends at the client's Connect-Timeout-Ms, when the
 * directory goes, or when the sandbox stops running: a watch never wakes a
 * paused sandbox.
 *
 * The polling runs on a thread of its own that owns the struct watch and
 * pushes into a Connect response stream (connect.h): keepalives,
 * back-pressure and a client that hangs up are the stream's. The stream
 * looks for a hang-up every WATCH_POLL_MS, and the thread stops at its next
 * poll once the client is gone.
 */
#define WATCH_POLL_MS 500
#define WATCH_MAX_ENTRIES 10000
#define WATCH_QUEUE_MAX (256 * 1024)
#define WATCH_STACK (256 * 1024)
#define WATCH_KEEPALIVE_MSG "{\"keepalive\":{}}"

struct watch {
	struct cstream *s; /* a reference */
	struct who who;
	char *guest, *host;
	bool recursive;
	struct e2bfs_snap snap;
	uint64_t deadline_ns; /* 0: none */
};

static void watch_free(struct watch *w)
{
	if (!w)
		return;
	connect_stream_unref(w->s);
	who_free(&w->who);
	e2bfs_snap_free(&w->snap);
	free(w->guest);
	free(w->host);
	free(w);
}

static void watch_freep(struct watch **w)
{
	watch_free(*w);
}

/* One listing of the watched tree into ret. 0 or -errno (-E2BIG past WATCH_MAX_ENTRIES). */
static int watch_scan_dir(struct e2bfs_snap *s, const char *host, const char *rel, bool recursive)
{
	int err = 0;
	_cleanup_(strvp) char **names = dir_names(host, &err);

	if (!names)
		return err;
	for (char **n = names; *n; n++) {
		_cleanup_free_ char *h = NULL, *name = NULL;
		struct e2bfs_snap_ent *e;
		struct stat st;

		if (asprintf(&h, "%s/%s", host, *n) < 0 || asprintf(&name, "%s%s%s", rel, *rel ? "/" : "", *n) < 0)
			return -ENOMEM;
		if (lstat(h, &st) < 0)
			continue; /* gone since the readdir: the next listing tells */
		if (s->n >= WATCH_MAX_ENTRIES)
			return -E2BIG;
		if (!(s->n & (s->n + 1)) || !s->v) {
			/* grow at 0, 1, 3, 7, ...: capacity n + 1 doubled */
			e = reallocarray(s->v, 2 * (s->n + 1), sizeof(*s->v));
			if (!e)
				return -ENOMEM;
			s->v = e;
		}
		e = &s->v[s->n++];
		*e = (struct e2bfs_snap_ent){.name = TAKE_PTR(name), .ino = st.st_ino, .mode = st.st_mode,
					     .uid = st.st_uid, .gid = st.st_gid, .size = st.st_size, .mtime = st.st_mtim};
		if (recursive && S_ISDIR(st.st_mode) && (err = watch_scan_dir(s, h, e->name, true)) < 0)
			return err;
	}
	return 0;
}

static int watch_scan(struct watch *w, struct e2bfs_snap *ret)
{
	struct e2bfs_snap s = {0};
	struct creds c;
	int k;

	if ((k = creds_enter(&w->who, &c)) < 0)
		return k;
	k = watch_scan_dir(&s, w->host, "", w->recursive);
	creds_leave(&c);
	if (k < 0) {
		e2bfs_snap_free(&s);
		return k;
	}
	e2bfs_snap_sort(&s);
	*ret = s;
	return 0;
}

/* One change, pushed as it comes: 0, -EPIPE (the stream is over: the diff stops), -ENOMEM. */
static int watch_event(void *ctx, const char *name, enum e2bfs_event ev)
{
	struct watch *w = ctx;
	_cleanup_(json_object_putp) json_object *o = json_object_new_object();
	json_object *f = json_object_new_object();

	if (!o || !f) {
		json_object_put(f);
		return -ENOMEM;
	}
	json_object_object_add(f, "name", json_object_new_string(name));
	json_object_object_add(f, "type", json_object_new_string(e2bfs_event_name(ev)));
	json_object_object_add(o, "filesystem", f);
	return connect_stream_push(w->s, o);
}

/* Whether the sandbox still runs (its status read: no guest needed, nothing woken). */
static bool watch_sandbox_running(struct watch *w, char state[static 32])
{
	char path[PATH_MAX];
	json_object *o, *v;
	bool running = false;

	snprintf(state, 32, "gone");
	if (sbx_path(&w->who.sbx, "status", path, sizeof(path)) < 0 || !(o = mnt_read_json(path)))
		return false;
	if (json_object_object_get_ex(o, "state", &v) && json_object_is_type(v, json_type_string)) {
		snprintf(state, 32, "%s", json_object_get_string(v));
		running = strcmp(state, "ready") == 0;
	}
	json_object_put(o);
	return running;
}

/* One poll: the changes pushed, or the end. false once the stream is over (ended here, or the client gone). */
static bool watch_step(struct watch *w)
{
	struct e2bfs_snap s;
	char state[32];
	int k;

	if (w->deadline_ns && now_ns() >= w->deadline_ns) {
		connect_stream_end(w->s, "deadline_exceeded", "the watch of %s reached its Connect-Timeout-Ms",
				   w->guest);
		return false;
	}
	if (!watch_sandbox_running(w, state)) {
		connect_stream_end(w->s, "unavailable", "sandbox %s is %s: the watch of %s ends", w->who.sbx.id, state,
				   w->guest);
		return false;
	}
	if ((k = watch_scan(w, &s)) < 0) {
		if (k == -ENOENT || k == -ENOTDIR)
			connect_stream_end(w->s, "not_found", "the watched directory %s is gone", w->guest);
		else if (k == -E2BIG)
			connect_stream_end(w->s, "resource_exhausted",
					   "more than %d entries below %s: watch a smaller tree", WATCH_MAX_ENTRIES,
					   w->guest);
		else
			connect_stream_end(w->s, connect_code_errno(k), "watching %s: %s", w->guest, strerror(-k));
		return false;
	}
	k = e2bfs_snap_diff(&w->snap, &s, watch_event, w);
	e2bfs_snap_free(&w->snap);
	w->snap = s;
	if (k < 0 && k != -EPIPE)
		connect_stream_end(w->s, "resource_exhausted", "out of memory");
	return k == 0;
}

/*
 * The watch's thread: a poll every WATCH_POLL_MS after the baseline (the
 * last one at the deadline) until the stream is over.
 */
static void *watch_main(void *arg)
{
	_cleanup_(watch_freep) struct watch *w = arg;

	do {
		uint64_t now = now_ns(), sleep_ns = WATCH_POLL_MS * 1000000ull;

		if (w->deadline_ns && w->deadline_ns < now + sleep_ns)
			sleep_ns = w->deadline_ns > now ? w->deadline_ns - now : 0;
		usleep((useconds_t)(sleep_ns / 1000));
	} while (!connect_stream_gone(w->s) && watch_step(w));
	return NULL;
}

/* Starts w's thread, which takes w. 0 or -errno (w is freed). */
static int watch_run(struct watch *w)
{
	pthread_attr_t attr;
	pthread_t th;
	int e;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, WATCH_STACK);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	e = thread_create(&th, &attr, watch_main, w);
	pthread_attr_destroy(&attr);
	if (e)
		watch_free(w);
	return -e;
}

static bool json_bool_field(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* The reason a watch is refused into why: -1. */
static int watch_refuse(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int watch_refuse(char *why, size_t n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, n, fmt, ap);
	va_end(ap);
	return -1;
}

/*
 * The request's message, its user and the watched directory's first
 * listing into w. 0, or -1 with the Connect code and the reason to answer.
 */
static int watch_setup(struct req *r, struct watch *w, const char **code, char *why, size_t n)
{
	static const char *const allowed[] = {"path", "recursive", "includeEntry", "include_entry",
					      "allowNetworkMounts", "allow_network_mounts", NULL};
	_cleanup_(json_object_putp) json_object *msg = NULL;
	_cleanup_free_ char *user = NULL, *perr = NULL;
	const char *body, *path = "", *bad;
	json_object *v;
	struct stat st;
	size_t len;
	int k;

	*code = "invalid_argument";
	body = req_body(r, &len);
	if ((k = connect_request_parse(body, len, CONNECT_REQUEST_MAX, &msg, &perr)) < 0) {
		*code = connect_request_code(k);
		return watch_refuse(why, n, "%s", perr ? perr : "bad request");
	}
	if ((bad = unknown_field(msg, allowed)))
		return watch_refuse(why, n, "%s: field \"%s\" is not implemented by emberfs-e2b", req_path(r), bad);
	if (json_bool_field(msg, "includeEntry") || json_bool_field(msg, "include_entry")) {
		*code = "unimplemented";
		return watch_refuse(why, n, "WatchDir: includeEntry is not implemented by emberfs-e2b");
	}
	if (json_object_object_get_ex(msg, "path", &v) && v) {
		if (!json_object_is_type(v, json_type_string) ||
		    strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
			return watch_refuse(why, n, "field \"path\" must be a string without NUL");
		path = json_object_get_string(v);
	}
	k = e2bfs_basic_user(req_header(r, MHD_HTTP_HEADER_AUTHORIZATION), &user);
	if (k < 0 && k != -ENOENT)
		return watch_refuse(why, n, "the Authorization header is not Basic base64(user:)");
	if ((k = who_load(r, user, &w->who, why)) < 0) {
		*code = k == -ESRCH ? "invalid_argument" : connect_code_errno(k);
		return -1;
	}
	if ((k = resolve(&w->who, path, &w->guest, &w->host)) < 0)
		return watch_refuse(why, n, "path \"%.200s\": %s", path,
				    k == -EINVAL ? "cannot expand another user's home directory" : strerror(-k));
	w->recursive = json_bool_field(msg, "recursive");
	k = stat(w->host, &st) < 0 ? -errno : S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	if (k == -ENOENT) {
		*code = "not_found";
		return watch_refuse(why, n, "path %s not found", path);
	}
	if (k < 0)
		return watch_refuse(why, n, "path %s not a directory", path);
	/* the first listing is the baseline: only changes after the start are reported */
	if ((k = watch_scan(w, &w->snap)) < 0) {
		*code = k == -E2BIG ? "resource_exhausted" : connect_code_errno(k);
		if (k == -E2BIG)
			return watch_refuse(why, n, "more than %d entries below %s: watch a smaller tree",
					    WATCH_MAX_ENTRIES, path);
		return watch_refuse(why, n, "watching %s: %s", path, strerror(-k));
	}
	return 0;
}

static int fs_watch_dir(struct req *r)
{
	_cleanup_(watch_freep) struct watch *w = calloc(1, sizeof(*w));
	_cleanup_(json_object_putp) json_object *start = json_object_new_object();
	const char *code, *h;
	struct cstream *s;
	char why[512];
	int ret, k;

	if (!w || !start)
		return connect_stream_reply_error(r, "resource_exhausted", "out of memory");
	if (watch_setup(r, w, &code, why, sizeof(why)) < 0)
		return connect_stream_reply_error(r, code, "%s", why);
	if ((h = req_header(r, "Connect-Timeout-Ms")) && strtoull(h, NULL, 10) > 0)
		w->deadline_ns = now_ns() + strtoull(h, NULL, 10) * 1000000ull;
	json_object_object_add(start, "start", json_object_new_object());
	w->s = connect_stream_new(connect_keepalive_ms(r), WATCH_KEEPALIVE_MSG, WATCH_QUEUE_MAX);
	if (!w->s || connect_stream_push(w->s, start) < 0)
		return connect_stream_reply_error(r, "resource_exhausted", "out of memory");
	connect_stream_set_hangup_ms(w->s, WATCH_POLL_MS);
	s = connect_stream_ref(w->s);
	ret = connect_stream_reply(r, s);
	/* after the reply (a failed one ended the stream: the thread stops at once) */
	if ((k = watch_run(TAKE_PTR(w))) < 0)
		connect_stream_end(s, "resource_exhausted", "cannot start the watch: %s", strerror(-k));
	connect_stream_unref(s);
	return ret;
}

/* ---- /files ---- */

/* The HTTP status envd answers on /files for an errno. */
static unsigned files_status(int err)
{
	switch (err < 0 ? -err : err) {
	case ENOENT:
		return 404;
	case EACCES:
	case EPERM:
	case EROFS:
		return 403;
	case ENOTDIR:
	case EISDIR:
	case EINVAL:
	case ENAMETOOLONG:
	case ELOOP:
	case ESRCH: /* no such user */
		return 400;
	case ENOSPC:
	case EDQUOT:
		return 507;
	default:
		return 500;
	}
}

/* Signed /files URLs (envd's signature, signature_expiration) are not implemented: refused, never ignored. */
static bool files_signed(struct req *r)
{
	if (!req_query(r, "signature") && !req_query(r, "signature_expiration"))
		return false;
	reply_api_error(r, 400, "signed file URLs (signature, signature_expiration) are not implemented by emberfs-e2b");
	return true;
}

static int files_who(struct req *r, struct who *w)
{
	char why[256];
	int k = who_load(r, req_query(r, "username"), w, why);

	if (k < 0)
		reply_api_error(r, files_status(k), "%s", why);
	return k;
}

/* A download: read from the mount DOWNLOAD_BUF bytes at a time, handed out in the pieces the HTTP layer asks for. */
#define DOWNLOAD_BUF (1024 * 1024)
struct download {
	int fd;
	size_t off, len;
	char buf[DOWNLOAD_BUF];
};

static ssize_t download_read(void *ctx, char *buf, size_t max)
{
	struct download *d = ctx;

	while (d->off == d->len) {
		ssize_t n = read(d->fd, d->buf, sizeof(d->buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n;
		d->off = 0;
		d->len = (size_t)n;
	}
	if (max > d->len - d->off)
		max = d->len - d->off;
	memcpy(buf, d->buf + d->off, max);
	d->off += max;
	return (ssize_t)max;
}

static void download_done(void *ctx)
{
	struct download *d = ctx;

	close(d->fd);
	free(d);
}

static int files_get(struct req *r)
{
	_cleanup_(who_free) struct who w = {0};
	_cleanup_free_ char *guest = NULL, *host = NULL;
	_cleanup_close_ int fd = -1;
	struct creds c;
	struct download *d;
	struct stat st;
	int k;

	if (files_signed(r) || files_who(r, &w) < 0)
		return 0;
	if ((k = resolve(&w, req_query(r, "path"), &guest, &host)) < 0)
		return reply_api_error(r, 400, "error expanding and resolving path '%s': %s", req_query(r, "path"),
				       k == -EINVAL ? "cannot expand another user's home directory" : strerror(-k));
	if ((k = creds_enter(&w, &c)) < 0)
		return reply_api_error(r, 403, "cannot act as user %s: %s", w.user.name, strerror(-k));
	/* O_NONBLOCK: a FIFO put there since must not park the thread in open */
	fd = open(host, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	k = fd < 0 ? -errno : fstat(fd, &st) < 0 ? -errno : 0;
	creds_leave(&c);
	if (k == -ENOENT || k == -ENOTDIR)
		return reply_api_error(r, 404, "path '%s' does not exist", guest);
	if (k == -EISDIR || (k == 0 && S_ISDIR(st.st_mode)))
		return reply_api_error(r, 400, "path '%s' is a directory", guest);
	if (k < 0)
		return reply_api_error(r, files_status(k), "error opening file '%s': %s", guest, strerror(-k));
	if (!S_ISREG(st.st_mode))
		return reply_api_error(r, 400, "path '%s' is not a regular file", guest);
	if (fcntl(fd, F_SETFL, 0) < 0)
		return reply_api_error(r, 500, "error opening file '%s': %s", guest, strerror(errno));
	if (st.st_size == 0) /* Content-Length: 0, which the SDK reads as empty */
		return reply_bytes(r, 200, "application/octet-stream", NULL, 0);
	if (!(d = malloc(sizeof(*d))))
		return reply_api_error(r, 500, "out of memory");
	d->fd = TAKE_FD(fd);
	d->off = d->len = 0;
	/* streamed, chunked: a file of any size costs one buffer */
	return reply_stream(r, 200, "application/octet-stream", download_read, download_done, d);
}

static int health(struct req *r)
{
	return reply_empty(r, 204);
}

/*
 * POST /files: one upload, multipart (each "file" part a file, its path the
 * query's path or the part's filename) or a raw body. Each file is written
 * to a temporary name in its directory and renamed over the target when
 * complete, so a failed upload never leaves half a file.
 */
struct upload {
	struct req *r;
	struct who who;
	struct MHD_PostProcessor *pp;
	bool multipart;
	/* the file being written */
	int fd;
	char *guest;  /* its guest path, as answered */
	char *target; /* the host path renamed over (a symlink's target when the path is one) */
	char *tmp;    /* the temporary file, while it exists */
	uint64_t written;
	char *buf; /* UPLOAD_BUF bytes not written yet */
	size_t buf_len;
	char *part_filename; /* the multipart part being written */
	json_object *done;   /* [{"name","type","path"}] */
	/*
	 * The first failure, answered once the body has been read: libmicrohttpd
	 * 0.9.75 spins on a connection answered in the middle of its body, and
	 * fetch clients still sending take an early answer as a network error.
	 */
	bool failed;
	unsigned fail_status;
	char *fail_msg;
};

static int upload_fail(struct upload *up, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int upload_fail(struct upload *up, int err, const char *fmt, ...)
{
	va_list ap;

	if (up->failed)
		return -1;
	up->failed = true;
	up->fail_status = files_status(err);
	va_start(ap, fmt);
	if (vasprintf(&up->fail_msg, fmt, ap) < 0)
		up->fail_msg = NULL;
	va_end(ap);
	return -1;
}

/* Drops the file being written (its temporary file removed). */
static void upload_drop(struct upload *up)
{
	struct creds c;

	if (up->fd >= 0)
		close(up->fd);
	up->fd = -1;
	up->buf_len = 0;
	if (up->tmp && creds_enter(&up->who, &c) == 0) {
		unlink(up->tmp);
		creds_leave(&c);
	}
	free(up->tmp);
	free(up->target);
	free(up->guest);
	up->tmp = up->target = up->guest = NULL;
}

/* Starts the file at request path path: parents made, a temporary file open. 0 or -1 (replied). */
static int upload_open(struct upload *up, const char *path)
{
	_cleanup_free_ char *host = NULL, *parent = NULL, *real = NULL, *dir = NULL;
	size_t n = json_object_array_length(up->done);
	struct creds c;
	struct stat st;
	char why[256];
	bool keep_mode = false;
	int k;

	if ((k = resolve(&up->who, path, &up->guest, &host)) < 0)
		return upload_fail(up, k, "error resolving path '%s': %s", path,
				   k == -EINVAL ? "cannot expand another user's home directory" : strerror(-k));
	for (size_t i = 0; i < n; i++) {
		json_object *p;

		if (json_object_object_get_ex(json_object_array_get_idx(up->done, i), "path", &p) &&
		    strcmp(json_object_get_string(p), up->guest) == 0)
			return upload_fail(up, EINVAL,
					   "you cannot upload multiple files to the same path '%s' in one upload request, "
					   "only the first specified file was uploaded",
					   up->guest);
	}
	if (strcmp(up->guest, "/") == 0)
		return upload_fail(up, EISDIR, "path is a directory: /");
	if (!(parent = guest_dirname(up->guest)))
		return upload_fail(up, ENOMEM, "out of memory");
	if ((k = creds_enter(&up->who, &c)) < 0)
		return upload_fail(up, k, "cannot act as user %s: %s", up->who.user.name, strerror(-k));
	if ((k = ensure_dirs(&up->who, parent, why)) < 0) {
		creds_leave(&c);
		return upload_fail(up, k == -ENOTDIR ? EINVAL : k, "error ensuring directories: %s", why);
	}
	/* writing to a symlink writes its target, as envd's open does */
	if (lstat(host, &st) == 0 && S_ISLNK(st.st_mode) && (real = realpath(host, NULL)) && below_root(&up->who, real)) {
		free(host);
		host = TAKE_PTR(real);
	}
	if (stat(host, &st) == 0) {
		if (S_ISDIR(st.st_mode)) {
			creds_leave(&c);
			return upload_fail(up, EISDIR, "path is a directory: %s", up->guest);
		}
		keep_mode = true;
	}
	if (!(dir = strndup(host, (size_t)(strrchr(host, '/') - host))) ||
	    asprintf(&up->tmp, "%s/.e2b-upload-XXXXXX", dir) < 0) {
		up->tmp = NULL;
		creds_leave(&c);
		return upload_fail(up, ENOMEM, "out of memory");
	}
	up->fd = mkostemp(up->tmp, O_CLOEXEC);
	k = up->fd < 0 ? -errno : 0;
	/* the mode the file had, else envd's 0666 less the usual umask */
	if (k == 0 && fchmod(up->fd, keep_mode ? st.st_mode & 07777 : 0644) < 0)
		k = -errno;
	creds_leave(&c);
	if (up->fd < 0) {
		free(up->tmp);
		up->tmp = NULL;
	}
	if (k < 0)
		return upload_fail(up, k, "error opening file '%s': %s", up->guest, strerror(-k));
	up->target = TAKE_PTR(host);
	up->written = 0;
	return 0;
}

/* Writes all of data to the file. 0 or -1 (failed). */
static int upload_flush_bytes(struct upload *up, const char *data, size_t len)
{
	while (len) {
		ssize_t n = write(up->fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int e = errno;

			return e == ENOSPC ? upload_fail(up, e, "not enough disk space available writing '%s'", up->guest)
					   : upload_fail(up, e, "error writing file '%s': %s", up->guest, strerror(e));
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static int upload_flush(struct upload *up)
{
	size_t n = up->buf_len;

	up->buf_len = 0;
	return n ? upload_flush_bytes(up, up->buf, n) : 0;
}

/*
 * The body arrives in pieces of a few KiB: gathered into UPLOAD_BUF bytes
 * so each write to the mount (a round trip to the guest) carries a lot.
 */
static int upload_write(struct upload *up, const char *data, size_t len)
{
	up->written += len;
	while (len) {
		size_t n = UPLOAD_BUF - up->buf_len;

		if (n > len)
			n = len;
		memcpy(up->buf + up->buf_len, data, n);
		up->buf_len += n;
		data += n;
		len -= n;
		if (up->buf_len == UPLOAD_BUF && upload_flush(up) < 0)
			return -1;
	}
	return 0;
}

/* The file is complete: closed, renamed over its target, answered. 0 or -1 (replied). */
static int upload_commit(struct upload *up)
{
	json_object *e;
	struct creds c;
	int fd = up->fd, k;

	if (upload_flush(up) < 0) {
		close(fd);
		up->fd = -1;
		return -1;
	}
	up->fd = -1;
	/* close reports what the guest could not store (FUSE flush) */
	if (close(fd) < 0 && errno != EINTR) {
		int ce = errno;

		return upload_fail(up, ce, "error writing file '%s': %s", up->guest, strerror(ce));
	}
	if ((k = creds_enter(&up->who, &c)) < 0)
		return upload_fail(up, k, "cannot act as user %s: %s", up->who.user.name, strerror(-k));
	k = rename(up->tmp, up->target) < 0 ? -errno : 0;
	creds_leave(&c);
	if (k < 0)
		return upload_fail(up, k, "error writing file '%s': %s", up->guest, strerror(-k));
	free(up->tmp);
	up->tmp = NULL;
	if (!(e = json_object_new_object()))
		return upload_fail(up, ENOMEM, "out of memory");
	json_object_object_add(e, "name", json_object_new_string(e2bfs_base(up->guest)));
	json_object_object_add(e, "type", json_object_new_string("file"));
	json_object_object_add(e, "path", json_object_new_string(up->guest));
	json_object_array_add(up->done, e);
	free(up->target);
	free(up->guest);
	up->target = up->guest = NULL;
	return 0;
}

/*
 * libmicrohttpd's multipart parser calls this with each piece of each part.
 * A part's first call has off 0 (and may have no data); a call with off 0
 * after data, or naming another file, starts the next part.
 */
static enum MHD_Result upload_part(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
				   const char *content_type, const char *transfer_encoding, const char *data,
				   uint64_t off, size_t size)
{
	struct upload *up = cls;
	const char *path = req_query(up->r, "path");
	bool same_name;

	if (up->failed)
		return MHD_NO;
	if (strcmp(key, "file") != 0) {
		/* envd skips other fields; one ends the file part before it */
		if (up->fd >= 0 && upload_commit(up) < 0)
			return MHD_NO;
		return MHD_YES;
	}
	same_name = filename && up->part_filename ? strcmp(filename, up->part_filename) == 0
						  : !filename && !up->part_filename;
	if (up->fd < 0 || (off == 0 && (up->written > 0 || !same_name))) {
		if (up->fd >= 0 && upload_commit(up) < 0)
			return MHD_NO;
		if (!path && !filename)
			return upload_fail(up, EINVAL, "filename not found in Content-Disposition header"), MHD_NO;
		free(up->part_filename);
		up->part_filename = filename ? strdup(filename) : NULL;
		if (upload_open(up, path ? path : filename) < 0)
			return MHD_NO;
	}
	return size && upload_write(up, data, size) < 0 ? MHD_NO : MHD_YES;
}

struct header_scan {
	const char *bad;
};

static enum MHD_Result metadata_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	struct header_scan *hs = cls;

	if (strncasecmp(key, "X-Metadata-", 11) == 0) {
		hs->bad = key;
		return MHD_NO;
	}
	return MHD_YES;
}

static int files_upload_begin(struct req *r, void **ctx)
{
	const char *ct = req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
	const char *enc = req_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING);
	const char *path = req_query(r, "path");
	struct header_scan hs = {NULL};
	struct upload *up;
	char why[256];
	int k;

	if (files_signed(r))
		return 1;
	if (enc && strcasecmp(enc, "identity") != 0)
		return reply_api_error(r, 400, "Content-Encoding %s is not implemented by emberfs-e2b", enc), 1;
	MHD_get_connection_values(req_conn(r), MHD_HEADER_KIND, metadata_header, &hs);
	if (hs.bad)
		return reply_api_error(r, 400, "file metadata (header %s) is not implemented by emberfs-e2b", hs.bad), 1;
	if (!ct || (strncasecmp(ct, "multipart/", 10) != 0 && strncasecmp(ct, "application/octet-stream", 24) != 0))
		return reply_api_error(r, 400,
				       "unsupported content type: %s, expected multipart/form-data or application/octet-stream",
				       ct ? ct : "none"),
		       1;
	if (!(up = calloc(1, sizeof(*up))))
		return reply_api_error(r, 500, "out of memory"), 1;
	*ctx = up;
	up->r = r;
	up->fd = -1;
	up->multipart = strncasecmp(ct, "multipart/", 10) == 0;
	if (!(up->done = json_object_new_array()) || !(up->buf = malloc(UPLOAD_BUF)))
		return reply_api_error(r, 500, "out of memory"), 1;
	if ((k = who_load(r, req_query(r, "username"), &up->who, why)) < 0)
		return upload_fail(up, k, "%s", why), 0;
	if (!up->multipart) {
		if (!path)
			return upload_fail(up, EINVAL, "path query parameter is required for raw body upload"), 0;
		upload_open(up, path);
		return 0;
	}
	if (!(up->pp = MHD_create_post_processor(req_conn(r), UPLOAD_PP_BUFFER, upload_part, up)))
		upload_fail(up, EINVAL, "error parsing multipart form: no boundary in %s", ct);
	return 0;
}

static int files_upload_data(struct req *r, void *ctx, const char *data, size_t len)
{
	struct upload *up = ctx;

	/* after a failure the rest of the body is read and dropped */
	if (up->failed)
		return 0;
	if (!up->multipart)
		upload_write(up, data, len);
	else if (MHD_post_process(up->pp, data, len) != MHD_YES && !up->failed)
		upload_fail(up, EINVAL, "error reading form: the multipart body is malformed");
	return 0;
}

static int files_upload_end(struct req *r, void *ctx)
{
	struct upload *up = ctx;

	if (up->pp && !up->failed) {
		struct MHD_PostProcessor *pp = up->pp;

		up->pp = NULL;
		if (MHD_destroy_post_processor(pp) != MHD_YES)
			upload_fail(up, EINVAL, "error reading form: the multipart body ends early");
	}
	if (!up->failed && up->fd >= 0)
		upload_commit(up);
	if (up->failed)
		return reply_api_error(r, up->fail_status, "%s", up->fail_msg ? up->fail_msg : "upload failed");
	return reply_json(r, 200, json_object_get(up->done));
}

static void files_upload_free(void *ctx)
{
	struct upload *up = ctx;

	if (!up)
		return;
	if (up->pp)
		MHD_destroy_post_processor(up->pp);
	upload_drop(up);
	free(up->part_filename);
	free(up->fail_msg);
	free(up->buf);
	json_object_put(up->done);
	who_free(&up->who);
	free(up);
}

#define RPC(name, fn) {"POST", "/filesystem.Filesystem/" name, SCOPE_SANDBOX, RPC_MAX_BODY, fn, NULL, NULL, NULL, NULL}

const struct route filesystem_routes[] = {
	RPC("Stat", fs_stat),
	RPC("ListDir", fs_list_dir),
	RPC("MakeDir", fs_make_dir),
	RPC("Move", fs_move),
	RPC("Remove", fs_remove),
	RPC("WatchDir", fs_watch_dir),
	RPC("CreateWatcher", fs_unimplemented),
	RPC("GetWatcherEvents", fs_unimplemented),
	RPC("RemoveWatcher", fs_unimplemented),
	{"GET", "/files", SCOPE_SANDBOX, 0, files_get, NULL, NULL, NULL, NULL},
	{"POST", "/files", SCOPE_SANDBOX, 0, NULL, files_upload_begin, files_upload_data, files_upload_end,
	 files_upload_free},
	{"GET", "/health", SCOPE_SANDBOX, 0, health, NULL, NULL, NULL, NULL},
	{NULL, NULL, SCOPE_SANDBOX, 0, NULL, NULL, NULL, NULL, NULL},
};
