/*
 * live/NAME: the running guest's own filesystem, through the guest agent
 * (engine/guest.h, docs/protocol.md).
 *
 * Inodes are path based, like sshfs: a node is (sandbox id, guest path) with
 * the kernel's lookup count; it lives from the first lookup until the
 * kernel forgets it. A rename moves the paths of a node and its descendants.
 * Files are served with direct_io: every read goes to the guest (through a
 * 1 MiB read-ahead per open file), so a file changed inside the guest is
 * never served stale from the host's page cache.
 *
 * Absolute symlink targets are rewritten relative to the link (sshfs's
 * transform_symlinks), so following a guest symlink never leaves live/NAME
 * for the host's own tree.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fs_internal.h"
#include "guest.h"

#define LIVE_BUCKETS 4096
#define LIVE_ATTR_TIMEOUT 1.0
#define READAHEAD (1u << 20)
#define PATH_MAX_GUEST 4095

struct lnode {
	fuse_ino_t ino;
	uint64_t sb;
	char *path;
	uint64_t nlookup;
	struct lnode *next_ino, *next_path;
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lnode *by_ino[LIVE_BUCKETS], *by_path[LIVE_BUCKETS];
static uint64_t live_seq;

static size_t hash_path(uint64_t sb, const char *path)
{
	uint64_t h = 1469598103934665603ull ^ sb;

	for (const char *p = path; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ull;
	return (size_t)(h % LIVE_BUCKETS);
}

static size_t hash_ino(fuse_ino_t ino)
{
	return (size_t)((ino * 11400714819323198485ull) >> 52) % LIVE_BUCKETS;
}

static struct lnode *find_ino(fuse_ino_t ino)
{
	for (struct lnode *n = by_ino[hash_ino(ino)]; n; n = n->next_ino)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct lnode *find_path(uint64_t sb, const char *path)
{
	for (struct lnode *n = by_path[hash_path(sb, path)]; n; n = n->next_path)
		if (n->sb == sb && strcmp(n->path, path) == 0)
			return n;
	return NULL;
}

static void unlink_path(struct lnode *n)
{
	for (struct lnode **pp = &by_path[hash_path(n->sb, n->path)]; *pp; pp = &(*pp)->next_path)
		if (*pp == n) {
			*pp = n->next_path;
			return;
		}
}

static void unlink_ino(struct lnode *n)
{
	for (struct lnode **pp = &by_ino[hash_ino(n->ino)]; *pp; pp = &(*pp)->next_ino)
		if (*pp == n) {
			*pp = n->next_ino;
			return;
		}
}

static void link_path(struct lnode *n)
{
	size_t h = hash_path(n->sb, n->path);

	n->next_path = by_path[h];
	by_path[h] = n;
}

/* The node for (sb, path), made if new, with one more lookup; its inode number. 0 on ENOMEM. */
static fuse_ino_t node_ref(uint64_t sb, const char *path)
{
	struct lnode *n;
	fuse_ino_t ino = 0;
	size_t h;

	pthread_mutex_lock(&live_lock);
	n = find_path(sb, path);
	if (!n && (n = calloc(1, sizeof(*n))) && (n->path = strdup(path))) {
		n->sb = sb;
		n->ino = LIVE_INO_BIT | ++live_seq;
		link_path(n);
		h = hash_ino(n->ino);
		n->next_ino = by_ino[h];
		by_ino[h] = n;
	} else if (n && !n->path) {
		free(n);
		n = NULL;
	}
	if (n) {
		n->nlookup++;
		ino = n->ino;
	}
	pthread_mutex_unlock(&live_lock);
	return ino;
}

void live_forget(fuse_ino_t ino, uint64_t nlookup)
{
	struct lnode *n;

	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n && (n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup) == 0) {
		unlink_ino(n);
		unlink_path(n);
		free(n->path);
		free(n);
	} else if (n) {
		/* nothing: still known to the kernel */
	}
	pthread_mutex_unlock(&live_lock);
}

/* Sandbox id and a copy of the path of a live inode; -ENOENT if the kernel forgot it. */
static int node_path(fuse_ino_t ino, uint64_t *sb, char **path)
{
	struct lnode *n;
	int r = -ENOENT;

	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n) {
		*sb = n->sb;
		*path = strdup(n->path);
		r = *path ? 0 : -ENOMEM;
	}
	pthread_mutex_unlock(&live_lock);
	return r;
}

/* A rename inside the guest: the node at from and everything under it now live under to. */
static void move_paths(uint64_t sb, const char *from, const char *to)
{
	size_t fl = strlen(from);
	struct lnode *moved = NULL;

	pthread_mutex_lock(&live_lock);
	for (size_t i = 0; i < LIVE_BUCKETS; i++)
		for (struct lnode *n = by_ino[i]; n; n = n->next_ino)
			if (n->sb == sb && strncmp(n->path, from, fl) == 0 && (n->path[fl] == '\0' || n->path[fl] == '/')) {
				char *np;

				if (asprintf(&np, "%s%s", to, n->path + fl) < 0)
					continue;
				unlink_path(n);
				free(n->path);
				n->path = np;
				n->next_path = moved; /* relinked below, once no old path can collide */
				moved = n;
			}
	while (moved) {
		struct lnode *n = moved, *old;

		moved = n->next_path;
		/* a node the rename replaced keeps its inode but loses the path */
		while ((old = find_path(sb, n->path))) {
			unlink_path(old);
			free(old->path);
			old->path = strdup("/.emberfs-replaced");
			if (old->path)
				link_path(old);
			else
				break;
		}
		link_path(n);
	}
	pthread_mutex_unlock(&live_lock);
}

static int child_path(const char *parent, const char *name, char **ret)
{
	if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	if (strlen(parent) + strlen(name) + 2 > PATH_MAX_GUEST)
		return -ENAMETOOLONG;
	return asprintf(ret, "%s%s%s", parent, strcmp(parent, "/") == 0 ? "" : "/", name) < 0 ? -ENOMEM : 0;
}

/* ---- stat ---- */

static int64_t jget(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static void ts_of(int64_t ns, struct timespec *ts)
{
	ts->tv_sec = ns / 1000000000;
	ts->tv_nsec = ns % 1000000000;
}

static int stat_of(json_object *resp, fuse_ino_t ino, struct stat *st)
{
	json_object *o;

	if (!json_object_object_get_ex(resp, "st", &o) || !json_object_is_type(o, json_type_object))
		return -EPROTO;
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = (mode_t)jget(o, "mode");
	st->st_nlink = (nlink_t)jget(o, "nlink");
	st->st_uid = (uid_t)jget(o, "uid");
	st->st_gid = (gid_t)jget(o, "gid");
	st->st_rdev = (dev_t)jget(o, "rdev");
	st->st_size = (off_t)jget(o, "size");
	st->st_blocks = (blkcnt_t)jget(o, "blocks");
	st->st_blksize = (blksize_t)jget(o, "blksize");
	ts_of(jget(o, "atime_ns"), &st->st_atim);
	ts_of(jget(o, "mtime_ns"), &st->st_mtim);
	ts_of(jget(o, "ctime_ns"), &st->st_ctim);
	return 0;
}

/* live/NAME itself answers without the guest, so listing or stat-ing live/ wakes nothing. */
static void root_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
}

static struct sandbox *sandbox_named(struct fs *f, const char *name)
{
	char **tpls = engine_template_list(f->e);
	struct sandbox *s = NULL;

	for (char **p = tpls; p && *p && !s; p++) {
		struct template *t = engine_template_get(f->e, *p);

		if (t) {
			s = template_sandbox_get(t, name);
			template_unref(t);
		}
	}
	strv_free(tpls);
	return s;
}

/* A call by path: the sandbox from its id, pinned for the call. */
static int call_sb(struct fs *f, uint64_t sb, const char *op, json_object *req, const void *bin, size_t len,
		   json_object **resp, uint8_t **data, size_t *dlen)
{
	struct sandbox *s = engine_sandbox_by_id(f->e, sb);
	int r;

	if (!s)
		return -ENOENT;
	r = sandbox_guest_call(s, op, req, bin, len, resp, data, dlen);
	sandbox_unref(s);
	return r;
}

static int call_path(struct fs *f, uint64_t sb, const char *op, const char *path, json_object **resp)
{
	json_object *req = json_object_new_object();
	int r;

	json_object_object_add(req, "path", json_object_new_string(path));
	r = call_sb(f, sb, op, req, NULL, 0, resp, NULL, NULL);
	json_object_put(req);
	return r;
}

static void reply_entry_st(fuse_req_t req, fuse_ino_t ino, const struct stat *st)
{
	struct fuse_entry_param ep = { 0 };

	ep.ino = ino;
	ep.generation = 1;
	ep.attr = *st;
	ep.attr.st_ino = ino;
	ep.attr_timeout = LIVE_ATTR_TIMEOUT;
	ep.entry_timeout = LIVE_ATTR_TIMEOUT;
	if (fuse_reply_entry(req, &ep) == -ENOENT)
		live_forget(ino, 1); /* the request was interrupted: the kernel never took the entry */
}

/* An entry for a new or found child from a reply carrying "st". */
static void reply_child(fuse_req_t req, uint64_t sb, const char *path, json_object *resp)
{
	struct stat st;
	fuse_ino_t ino;
	int r = stat_of(resp, 0, &st);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	ino = node_ref(sb, path);
	if (!ino) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	reply_entry_st(req, ino, &st);
}

/* ---- the live/ directory itself, and live/NAME ---- */

void live_lookup_root(fuse_req_t req, struct fs *f, const char *name)
{
	struct sandbox *s = sandbox_named(f, name);
	struct stat st;
	fuse_ino_t ino;

	if (!s) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	ino = node_ref(sandbox_id(s), "/");
	sandbox_unref(s);
	if (!ino) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	root_stat(ino, &st);
	reply_entry_st(req, ino, &st);
}

/* live/: one directory per sandbox of any template. */
void live_list_root(struct fs *f, void (*add)(void *ctx, const char *name, fuse_ino_t ino, bool dir), void *ctx)
{
	char **tpls = engine_template_list(f->e);

	for (char **p = tpls; p && *p; p++) {
		struct template *t = engine_template_get(f->e, *p);
		char **names = t ? template_sandbox_list(t) : NULL;

		for (char **n = names; n && *n; n++)
			add(ctx, *n, INO(0, IDX_LIVE), true); /* inode numbers are resolved at lookup */
		strv_free(names);
		template_unref(t);
	}
	strv_free(tpls);
}

/* ---- lookup, getattr, setattr ---- */

void live_lookup(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name)
{
	_cleanup_free_ char *pp = NULL, *path = NULL;
	json_object *resp = NULL;
	uint64_t sb;
	int r = node_path(parent, &sb, &pp);

	if (r == 0)
		r = child_path(pp, name, &path);
	if (r == 0)
		r = call_path(f, sb, "lstat", path, &resp);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_child(req, sb, path, resp);
	json_object_put(resp);
}

void live_getattr(fuse_req_t req, struct fs *f, fuse_ino_t ino)
{
	_cleanup_free_ char *path = NULL;
	json_object *resp = NULL;
	struct stat st;
	uint64_t sb;
	int r = node_path(ino, &sb, &path);

	if (r == 0 && strcmp(path, "/") == 0) {
		root_stat(ino, &st);
		fuse_reply_attr(req, &st, LIVE_ATTR_TIMEOUT);
		return;
	}
	if (r == 0)
		r = call_path(f, sb, "lstat", path, &resp);
	if (r == 0)
		r = stat_of(resp, ino, &st);
	json_object_put(resp);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, LIVE_ATTR_TIMEOUT);
}

static int64_t time_arg(const struct stat *attr, int to_set, int set_bit, int now_bit, bool atime)
{
	const struct timespec *ts = atime ? &attr->st_atim : &attr->st_mtim;

	if (to_set & now_bit)
		return -2;
	if (to_set & set_bit)
		return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
	return -1;
}

void live_setattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct stat *attr, int to_set)
{
	_cleanup_free_ char *path = NULL;
	json_object *resp = NULL, *rq;
	struct stat st;
	uint64_t sb;
	int r = node_path(ino, &sb, &path);

	if (r == 0 && strcmp(path, "/") == 0)
		r = -EPERM; /* live/NAME itself is the emberfs' own */
	if (r == 0 && (to_set & FUSE_SET_ATTR_MODE)) {
		rq = json_object_new_object();
		json_object_object_add(rq, "path", json_object_new_string(path));
		json_object_object_add(rq, "mode", json_object_new_int(attr->st_mode & 07777));
		r = call_sb(f, sb, "chmod", rq, NULL, 0, NULL, NULL, NULL);
		json_object_put(rq);
	}
	if (r == 0 && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		rq = json_object_new_object();
		json_object_object_add(rq, "path", json_object_new_string(path));
		json_object_object_add(rq, "uid", json_object_new_int64(to_set & FUSE_SET_ATTR_UID ? (int64_t)attr->st_uid : -1));
		json_object_object_add(rq, "gid", json_object_new_int64(to_set & FUSE_SET_ATTR_GID ? (int64_t)attr->st_gid : -1));
		r = call_sb(f, sb, "chown", rq, NULL, 0, NULL, NULL, NULL);
		json_object_put(rq);
	}
	if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE)) {
		rq = json_object_new_object();
		json_object_object_add(rq, "path", json_object_new_string(path));
		json_object_object_add(rq, "size", json_object_new_int64(attr->st_size));
		r = call_sb(f, sb, "truncate", rq, NULL, 0, NULL, NULL, NULL);
		json_object_put(rq);
	}
	if (r == 0 && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
				 FUSE_SET_ATTR_MTIME_NOW))) {
		rq = json_object_new_object();
		json_object_object_add(rq, "path", json_object_new_string(path));
		json_object_object_add(rq, "atime_ns", json_object_new_int64(time_arg(attr, to_set, FUSE_SET_ATTR_ATIME,
										   FUSE_SET_ATTR_ATIME_NOW, true)));
		json_object_object_add(rq, "mtime_ns", json_object_new_int64(time_arg(attr, to_set, FUSE_SET_ATTR_MTIME,
										   FUSE_SET_ATTR_MTIME_NOW, false)));
		r = call_sb(f, sb, "utimens", rq, NULL, 0, NULL, NULL, NULL);
		json_object_put(rq);
	}
	if (r == 0)
		r = call_path(f, sb, "lstat", path, &resp);
	if (r == 0)
		r = stat_of(resp, ino, &st);
	json_object_put(resp);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, LIVE_ATTR_TIMEOUT);
}

/* ---- directories ---- */

/*
 * A listing, taken at opendir. Reference counted like fs.c's dirbuf: the
 * caller may close the directory as soon as the kernel has a reply, and the
 * releasedir must not free the buffer under a reply still being written.
 */
struct ldir {
	struct open_handle oh; /* first */
	char *p;
	size_t size;
	atomic_int refs;
};

static void ldir_unref(struct ldir *d)
{
	if (atomic_fetch_sub(&d->refs, 1) == 1) {
		free(d->p);
		free(d);
	}
}

static void ldir_release(struct open_handle *oh)
{
	ldir_unref((struct ldir *)oh);
}

static int ldir_add(fuse_req_t req, struct ldir *d, const char *name, mode_t mode)
{
	struct stat st = { .st_ino = 0xffffffff /* unknown: the kernel looks it up */, .st_mode = mode };
	size_t old = d->size, n = fuse_add_direntry(req, NULL, 0, name, NULL, 0);
	char *np = realloc(d->p, old + n);

	if (!np)
		return -ENOMEM;
	d->p = np;
	d->size += n;
	fuse_add_direntry(req, d->p + old, n, name, &st, (off_t)d->size);
	return 0;
}

/* The whole listing is taken at opendir (1024 entries per agent call), so offsets stay stable. */
void live_opendir(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	_cleanup_free_ char *path = NULL;
	struct ldir *d = calloc(1, sizeof(*d));
	struct sandbox *s = NULL;
	struct guest_conn c = { 0 };
	uint64_t sb, cookie = 0;
	int r = d ? node_path(ino, &sb, &path) : -ENOMEM;

	if (r == 0)
		r = (s = engine_sandbox_by_id(f->e, sb)) ? 0 : -ENOENT;
	if (r == 0)
		r = guest_conn_get(s, &c);
	if (r == 0)
		r = ldir_add(req, d, ".", S_IFDIR);
	if (r == 0)
		r = ldir_add(req, d, "..", S_IFDIR);
	do {
		json_object *rq, *resp = NULL, *ents;

		if (r < 0)
			break;
		rq = json_object_new_object();
		json_object_object_add(rq, "path", json_object_new_string(path));
		json_object_object_add(rq, "cookie", json_object_new_uint64(cookie));
		r = guest_call(&c, "readdir", rq, NULL, 0, &resp, NULL, NULL);
		json_object_put(rq);
		if (r == 0 && (!json_object_object_get_ex(resp, "entries", &ents) ||
			       !json_object_is_type(ents, json_type_array)))
			r = -EPROTO;
		for (size_t i = 0; r == 0 && i < json_object_array_length(ents); i++) {
			json_object *e = json_object_array_get_idx(ents, i), *nm, *st;

			if (!json_object_object_get_ex(e, "name", &nm) || !json_object_object_get_ex(e, "st", &st))
				continue;
			r = ldir_add(req, d, json_object_get_string(nm), (mode_t)jget(st, "mode") & S_IFMT);
		}
		cookie = r == 0 ? (uint64_t)jget(resp, "cookie") : 0;
		json_object_put(resp);
	} while (cookie);
	guest_conn_put(&c);
	sandbox_unref(s);
	if (r < 0) {
		if (d)
			free(d->p);
		free(d);
		fuse_reply_err(req, -r);
		return;
	}
	atomic_init(&d->refs, 1);
	fs_handle_add(f, &d->oh, ldir_release);
	fi->fh = (uint64_t)(uintptr_t)d;
	fuse_reply_open(req, fi);
}

void live_readdir(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct ldir *d = (struct ldir *)(uintptr_t)fi->fh;
	size_t o = (size_t)off;

	atomic_fetch_add(&d->refs, 1);
	if (o >= d->size)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, d->p + o, d->size - o < size ? d->size - o : size);
	ldir_unref(d);
}

void live_releasedir(fuse_req_t req, struct fs *f, struct fuse_file_info *fi)
{
	struct ldir *d = (struct ldir *)(uintptr_t)fi->fh;

	fs_handle_del(f, &d->oh);
	ldir_unref(d);
	fuse_reply_err(req, 0);
}

/* ---- making and removing ---- */

static int parent_and_name(fuse_ino_t parent, const char *name, uint64_t *sb, char **path)
{
	_cleanup_free_ char *pp = NULL;
	int r = node_path(parent, sb, &pp);

	return r < 0 ? r : child_path(pp, name, path);
}

/* An op that makes the object at path (its reply carries "st"): the new entry, or the guest's errno. Takes rq. */
static void make_child(fuse_req_t req, struct fs *f, uint64_t sb, const char *op, json_object *rq, const char *path)
{
	json_object *resp = NULL;
	int r = call_sb(f, sb, op, rq, NULL, 0, &resp, NULL, NULL);

	json_object_put(rq);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_child(req, sb, path, resp);
	json_object_put(resp);
}

void live_mkdir(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode)
{
	_cleanup_free_ char *path = NULL;
	json_object *rq;
	uint64_t sb;
	int r = parent_and_name(parent, name, &sb, &path);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	rq = json_object_new_object();
	json_object_object_add(rq, "path", json_object_new_string(path));
	json_object_object_add(rq, "mode", json_object_new_int(mode & 07777));
	make_child(req, f, sb, "mkdir", rq, path);
}

void live_remove(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, bool dir)
{
	_cleanup_free_ char *path = NULL;
	uint64_t sb;
	int r = parent_and_name(parent, name, &sb, &path);

	if (r == 0)
		r = call_path(f, sb, dir ? "rmdir" : "unlink", path, NULL);
	fuse_reply_err(req, -r);
}

void live_symlink(fuse_req_t req, struct fs *f, const char *target, fuse_ino_t parent, const char *name)
{
	_cleanup_free_ char *path = NULL;
	json_object *rq;
	uint64_t sb;
	int r = parent_and_name(parent, name, &sb, &path);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	rq = json_object_new_object();
	json_object_object_add(rq, "target", json_object_new_string(target));
	json_object_object_add(rq, "path", json_object_new_string(path));
	make_child(req, f, sb, "symlink", rq, path);
}

void live_link(fuse_req_t req, struct fs *f, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	_cleanup_free_ char *from = NULL, *to = NULL;
	json_object *rq;
	uint64_t sb, sb2;
	int r = node_path(ino, &sb, &from);

	if (r == 0)
		r = parent_and_name(newparent, newname, &sb2, &to);
	if (r == 0 && sb != sb2)
		r = -EXDEV;
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	rq = json_object_new_object();
	json_object_object_add(rq, "from", json_object_new_string(from));
	json_object_object_add(rq, "to", json_object_new_string(to));
	make_child(req, f, sb, "link", rq, to);
}

void live_rename(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		 const char *newname, unsigned int flags)
{
	_cleanup_free_ char *from = NULL, *to = NULL;
	json_object *rq;
	uint64_t sb, sb2;
	int r = parent_and_name(parent, name, &sb, &from);

	if (r == 0)
		r = parent_and_name(newparent, newname, &sb2, &to);
	if (r == 0 && sb != sb2)
		r = -EXDEV; /* two sandboxes: not one filesystem */
	if (r == 0 && (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE)))
		r = -EINVAL;
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	rq = json_object_new_object();
	json_object_object_add(rq, "from", json_object_new_string(from));
	json_object_object_add(rq, "to", json_object_new_string(to));
	json_object_object_add(rq, "flags", json_object_new_int((int)flags));
	r = call_sb(f, sb, "rename", rq, NULL, 0, NULL, NULL, NULL);
	json_object_put(rq);
	if (r == 0 && (flags & RENAME_EXCHANGE)) {
		static const char tmp[] = "/.emberfs-exchange";

		move_paths(sb, from, tmp);
		move_paths(sb, to, from);
		move_paths(sb, tmp, to);
	} else if (r == 0) {
		move_paths(sb, from, to);
	}
	fuse_reply_err(req, -r);
}

/* "/a/b" as seen from the directory of link "/x/y/link": "../../a/b". */
static char *relative_target(const char *link, const char *target)
{
	size_t depth = 0;
	char *out, *p;

	for (const char *c = link + 1; *c; c++)
		if (*c == '/')
			depth++;
	out = malloc(depth * 3 + strlen(target) + 2);
	if (!out)
		return NULL;
	p = out;
	for (size_t i = 0; i < depth; i++) {
		memcpy(p, "../", 3);
		p += 3;
	}
	while (*target == '/')
		target++;
	strcpy(p, *target ? target : (p == out ? "." : ""));
	if (p != out && !*target)
		p[-1] = '\0'; /* "../.." for a link to "/" */
	return out;
}

void live_readlink(fuse_req_t req, struct fs *f, fuse_ino_t ino)
{
	_cleanup_free_ char *path = NULL, *rel = NULL;
	json_object *resp = NULL, *t;
	uint64_t sb;
	int r = node_path(ino, &sb, &path);

	if (r == 0)
		r = call_path(f, sb, "readlink", path, &resp);
	if (r == 0 && (!json_object_object_get_ex(resp, "target", &t) || !json_object_is_type(t, json_type_string)))
		r = -EPROTO;
	if (r < 0) {
		json_object_put(resp);
		fuse_reply_err(req, -r);
		return;
	}
	if (json_object_get_string(t)[0] == '/' && !(rel = relative_target(path, json_object_get_string(t)))) {
		json_object_put(resp);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fuse_reply_readlink(req, rel ? rel : json_object_get_string(t));
	json_object_put(resp);
}

void live_statfs(fuse_req_t req, struct fs *f, fuse_ino_t ino)
{
	_cleanup_free_ char *path = NULL;
	json_object *resp = NULL;
	struct statvfs sv = { 0 };
	uint64_t sb;
	int r = node_path(ino, &sb, &path);

	if (r == 0)
		r = call_path(f, sb, "statfs", path, &resp);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	sv.f_bsize = (unsigned long)jget(resp, "bsize");
	sv.f_frsize = (unsigned long)jget(resp, "frsize");
	sv.f_blocks = (fsblkcnt_t)jget(resp, "blocks");
	sv.f_bfree = (fsblkcnt_t)jget(resp, "bfree");
	sv.f_bavail = (fsblkcnt_t)jget(resp, "bavail");
	sv.f_files = (fsfilcnt_t)jget(resp, "files");
	sv.f_ffree = (fsfilcnt_t)jget(resp, "ffree");
	sv.f_namemax = (unsigned long)jget(resp, "namemax");
	json_object_put(resp);
	fuse_reply_statfs(req, &sv);
}

/* ---- open files ---- */

struct lfile {
	struct open_handle oh; /* first */
	struct guest_conn conn; /* pinned while open: the sandbox stays awake */
	uint64_t gfh;
	/*
	 * io: one read or write at a time (held across guest calls; guards ra).
	 * lock: the prefetch's fields, which the connection's reader thread
	 * fills; never held across a guest call, or that thread would wait for
	 * us while we wait for it.
	 */
	pthread_mutex_t io;
	pthread_mutex_t lock;
	uint8_t *ra;	/* read-ahead: [ra_off, ra_off + ra_len) of the file */
	size_t ra_len;
	off_t ra_off;
	bool ra_eof; /* the read-ahead ended at the end of the file */
	/* the next chunk, asked for while the reader consumes this one */
	pthread_cond_t pf_cond;
	bool pf_inflight; /* lock */
	off_t pf_off;
	uint8_t *pf;
	size_t pf_len, pf_want;
	int pf_err;
};

static void lfile_free(struct lfile *h)
{
	/* a prefetch in flight ends with its reply, or with the connection */
	pthread_mutex_lock(&h->lock);
	while (h->pf_inflight)
		pthread_cond_wait(&h->pf_cond, &h->lock);
	pthread_mutex_unlock(&h->lock);
	guest_conn_put(&h->conn);
	pthread_cond_destroy(&h->pf_cond);
	pthread_mutex_destroy(&h->lock);
	pthread_mutex_destroy(&h->io);
	free(h->ra);
	free(h->pf);
	free(h);
}

static void lfile_release_open(struct open_handle *oh)
{
	lfile_free((struct lfile *)oh); /* shutdown: the guest closes handles of a connection that ends */
}

static const int open_flags_allowed = O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_APPEND | O_NOFOLLOW | O_DIRECTORY;

static void do_open(fuse_req_t req, struct fs *f, uint64_t sb, const char *path, int flags, mode_t mode,
		    struct fuse_file_info *fi, bool create)
{
	struct lfile *h = calloc(1, sizeof(*h));
	struct sandbox *s = engine_sandbox_by_id(f->e, sb);
	json_object *resp = NULL, *rq;
	int r = !h ? -ENOMEM : !s ? -ENOENT : 0;

	if (r == 0)
		r = guest_conn_get(s, &h->conn);
	sandbox_unref(s);
	if (r < 0) {
		free(h);
		fuse_reply_err(req, -r);
		return;
	}
	pthread_mutex_init(&h->lock, NULL);
	pthread_mutex_init(&h->io, NULL);
	pthread_cond_init(&h->pf_cond, NULL);
	rq = json_object_new_object();
	json_object_object_add(rq, "path", json_object_new_string(path));
	json_object_object_add(rq, "flags", json_object_new_int(flags & open_flags_allowed));
	json_object_object_add(rq, "mode", json_object_new_int(mode & 07777));
	r = guest_call(&h->conn, "open", rq, NULL, 0, &resp, NULL, NULL);
	json_object_put(rq);
	if (r < 0) {
		lfile_free(h);
		fuse_reply_err(req, -r);
		return;
	}
	h->gfh = (uint64_t)jget(resp, "fh");
	fs_handle_add(f, &h->oh, lfile_release_open);
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	if (create) {
		struct fuse_entry_param ep = { 0 };
		fuse_ino_t ino = node_ref(sb, path);

		ep.ino = ino;
		ep.generation = 1;
		ep.attr_timeout = ep.entry_timeout = LIVE_ATTR_TIMEOUT;
		if (!ino || stat_of(resp, ino, &ep.attr) < 0) {
			fs_handle_del(f, &h->oh);
			lfile_free(h);
			if (ino)
				live_forget(ino, 1);
			fuse_reply_err(req, ino ? EPROTO : ENOMEM);
		} else if (fuse_reply_create(req, &ep, fi) == -ENOENT) {
			live_forget(ino, 1);
			fs_handle_del(f, &h->oh);
			lfile_free(h);
		}
	} else {
		fuse_reply_open(req, fi);
	}
	json_object_put(resp);
}

void live_open(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	_cleanup_free_ char *path = NULL;
	uint64_t sb;
	int r = node_path(ino, &sb, &path);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	do_open(req, f, sb, path, fi->flags, 0, fi, false);
}

void live_create(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode,
		 struct fuse_file_info *fi)
{
	_cleanup_free_ char *path = NULL;
	uint64_t sb;
	int r = parent_and_name(parent, name, &sb, &path);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	do_open(req, f, sb, path, fi->flags | O_CREAT, mode, fi, true);
}

static int read_chunk(struct lfile *h, off_t off, size_t len, uint8_t **data, size_t *got)
{
	json_object *rq = json_object_new_object();
	int r;

	json_object_object_add(rq, "fh", json_object_new_uint64(h->gfh));
	json_object_object_add(rq, "off", json_object_new_int64(off));
	json_object_object_add(rq, "len", json_object_new_uint64(len));
	*data = NULL;
	*got = 0;
	r = guest_call(&h->conn, "read", rq, NULL, 0, NULL, data, got);
	json_object_put(rq);
	return r;
}

static void on_prefetch(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	struct lfile *h = arg;

	(void)resp;
	pthread_mutex_lock(&h->lock);
	h->pf_err = result;
	if (result == 0 && len > 0 && (h->pf = malloc(len))) {
		memcpy(h->pf, data, len);
		h->pf_len = len;
	} else if (result == 0 && len > 0) {
		h->pf_err = -ENOMEM;
	}
	h->pf_inflight = false;
	pthread_cond_broadcast(&h->pf_cond);
	pthread_mutex_unlock(&h->lock);
}

/* Asks for the chunk after the read-ahead while the reader works through it. io held, lock not. */
static void prefetch(struct lfile *h)
{
	json_object *rq;
	int r;

	pthread_mutex_lock(&h->lock);
	if (h->pf_inflight || h->pf || h->ra_eof || !h->ra) {
		pthread_mutex_unlock(&h->lock);
		return;
	}
	h->pf_off = h->ra_off + (off_t)h->ra_len;
	h->pf_want = READAHEAD;
	h->pf_inflight = true;
	h->pf_len = 0;
	h->pf_err = 0;
	pthread_mutex_unlock(&h->lock);
	rq = json_object_new_object();
	json_object_object_add(rq, "fh", json_object_new_uint64(h->gfh));
	json_object_object_add(rq, "off", json_object_new_int64(h->pf_off));
	json_object_object_add(rq, "len", json_object_new_uint64(READAHEAD));
	r = guest_call_async(&h->conn, "read", rq, on_prefetch, h);
	json_object_put(rq);
	if (r < 0) {
		pthread_mutex_lock(&h->lock);
		h->pf_inflight = false;
		pthread_cond_broadcast(&h->pf_cond);
		pthread_mutex_unlock(&h->lock);
	}
}

static bool ra_covers(const struct lfile *h, off_t off, size_t size)
{
	return h->ra && off >= h->ra_off &&
	       (off + (off_t)size <= h->ra_off + (off_t)h->ra_len ||
		(h->ra_eof && off < h->ra_off + (off_t)h->ra_len));
}

/*
 * Reads are served from a 1 MiB read-ahead when they fall inside it; the
 * next chunk is asked for (asynchronously) once a read enters the second
 * half of this one, so a sequential reader finds it arrived or arriving.
 * Any other read fetches a new chunk at its offset. Writes through the same
 * handle drop both.
 */
void live_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;
	size_t want = size > READAHEAD ? size : READAHEAD;
	uint8_t *data;
	size_t got, from, n;
	int r;

	pthread_mutex_lock(&h->io);
	while (!ra_covers(h, off, size)) {
		bool swapped = false;

		pthread_mutex_lock(&h->lock);
		while (h->pf_inflight && off >= h->pf_off && off < h->pf_off + (off_t)h->pf_want)
			pthread_cond_wait(&h->pf_cond, &h->lock);
		if (!h->pf_inflight && h->pf_err == 0 && h->pf_len > 0 && off >= h->pf_off &&
		    off < h->pf_off + (off_t)h->pf_want) {
			/* the prefetched chunk becomes the read-ahead */
			free(h->ra);
			h->ra = TAKE_PTR(h->pf);
			h->ra_len = h->pf_len;
			h->ra_off = h->pf_off;
			h->ra_eof = h->pf_len < h->pf_want;
			h->pf_len = 0;
			swapped = true;
		} else if (!h->pf_inflight) {
			free(h->pf); /* a prefetch this read does not want */
			h->pf = NULL;
			h->pf_len = 0;
		}
		pthread_mutex_unlock(&h->lock);
		if (swapped)
			continue;
		r = read_chunk(h, off, want, &data, &got);
		if (r < 0) {
			pthread_mutex_unlock(&h->io);
			fuse_reply_err(req, -r);
			return;
		}
		free(h->ra);
		h->ra = data;
		h->ra_len = got;
		h->ra_off = off;
		h->ra_eof = got < want;
		break;
	}
	/* inside the read-ahead, or a short read where it reached the end of the file */
	from = (size_t)(off - h->ra_off);
	n = from >= h->ra_len ? 0 : h->ra_len - from < size ? h->ra_len - from : size;
	if (from + n > h->ra_len / 2)
		prefetch(h);
	fuse_reply_buf(req, n ? (const char *)h->ra + from : NULL, n);
	pthread_mutex_unlock(&h->io);
}

void live_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;
	json_object *rq, *resp = NULL;
	int r;

	if (size > GUEST_BIN_MAX)
		size = GUEST_BIN_MAX;
	pthread_mutex_lock(&h->io);
	pthread_mutex_lock(&h->lock);
	while (h->pf_inflight)
		pthread_cond_wait(&h->pf_cond, &h->lock);
	free(h->pf);
	h->pf = NULL;
	h->pf_len = 0;
	pthread_mutex_unlock(&h->lock);
	free(h->ra);
	h->ra = NULL;
	h->ra_len = 0;
	rq = json_object_new_object();
	json_object_object_add(rq, "fh", json_object_new_uint64(h->gfh));
	json_object_object_add(rq, "off", json_object_new_int64(off));
	r = guest_call(&h->conn, "write", rq, buf, size, &resp, NULL, NULL);
	pthread_mutex_unlock(&h->io);
	json_object_put(rq);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_write(req, (size_t)jget(resp, "written"));
	json_object_put(resp);
}

void live_fsync(fuse_req_t req, struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;
	json_object *rq = json_object_new_object();
	int r;

	json_object_object_add(rq, "fh", json_object_new_uint64(h->gfh));
	r = guest_call(&h->conn, "fsync", rq, NULL, 0, NULL, NULL, NULL);
	json_object_put(rq);
	fuse_reply_err(req, -r);
}

void live_release(fuse_req_t req, struct fs *f, struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;
	json_object *rq = json_object_new_object();

	json_object_object_add(rq, "fh", json_object_new_uint64(h->gfh));
	guest_call(&h->conn, "close", rq, NULL, 0, NULL, NULL, NULL); /* a guest gone closed it already */
	json_object_put(rq);
	fs_handle_del(f, &h->oh);
	lfile_free(h);
	fuse_reply_err(req, 0);
}
