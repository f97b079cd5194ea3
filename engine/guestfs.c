/*
 * The guest's own files (guestfs.h): each call is one request to the
 * sandbox's guest agent (docs/protocol.md "Files"), on a connection pinned
 * for the call (path calls) or for the life of an open file.
 *
 * What a guest answers is untrusted: replies are read leniently (a missing
 * field is 0), a stat object that is not one is -EPROTO, strings are
 * checked for what the caller needs of them.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "guest.h"
#include "guestfs.h"
#include "internal.h"
#include "parse.h"

struct guest_file {
	struct guest_conn conn; /* pinned while open */
	uint64_t fh;
};

/* ---- host inode numbers ---- */

/*
 * bit 63 | 20 bits of the sandbox id | 4 bits: the guest filesystem's
 * index within the sandbox (1..15, 0 for the root a front end shows
 * without the guest) | 39 bits of the guest inode number (folded above
 * that). Guest ext4 and tmpfs number inodes from small counters, so folding
 * is rare; two sandboxes collide only if their ids are 2^20 apart and both
 * live.
 */
#define INO_BITS 39
#define INO_MASK ((1ull << INO_BITS) - 1)
#define SB_BITS 20

static unsigned dev_index(struct sandbox *s, uint64_t dev)
{
	for (unsigned i = 0; i < SANDBOX_FS_DEVS; i++) {
		uint_fast64_t want = 0, cur = atomic_load(&s->fs_devs[i]);

		if (cur == dev + 1)
			return i + 1;
		if (cur == 0 && atomic_compare_exchange_strong(&s->fs_devs[i], &want, dev + 1))
			return i + 1;
		if (atomic_load(&s->fs_devs[i]) == dev + 1) /* another thread took it for the same dev */
			return i + 1;
	}
	return SANDBOX_FS_DEVS; /* more filesystems than indexes: they share the last */
}

uint64_t guestfs_host_ino(struct sandbox *s, struct guest_id id)
{
	uint64_t ino = id.ino, idx = 0;

	if (id.dev || id.ino) {
		idx = dev_index(s, id.dev);
		if (ino > INO_MASK)
			ino = (ino ^ (ino >> INO_BITS)) & INO_MASK;
	} else {
		ino = 1;
	}
	return (1ull << 63) | ((s->id & ((1ull << SB_BITS) - 1)) << (INO_BITS + 4)) | (idx << INO_BITS) | ino;
}

/* ---- requests and replies ---- */

static void add_u64s(json_object *o, const char *key, uint64_t a, uint64_t b)
{
	json_object *v = json_object_new_array();

	json_object_array_add(v, json_object_new_uint64(a));
	json_object_array_add(v, json_object_new_uint64(b));
	json_object_object_add(o, key, v);
}

/* A request acting for c: root with no groups needs no "cred". */
static json_object *req_new(const struct guest_cred *c)
{
	json_object *o = json_object_new_object(), *v, *g;

	if (!c || (c->uid == 0 && c->gid == 0 && c->ngroups == 0))
		return o;
	v = json_object_new_array();
	g = json_object_new_array();
	json_object_array_add(v, json_object_new_uint64(c->uid));
	json_object_array_add(v, json_object_new_uint64(c->gid));
	for (size_t i = 0; i < c->ngroups; i++)
		json_object_array_add(g, json_object_new_uint64(c->groups[i]));
	json_object_array_add(v, g);
	json_object_object_add(o, "cred", v);
	return o;
}

static void add_path(json_object *o, const char *key, const char *path)
{
	json_object_object_add(o, key, json_object_new_string(path));
}

static void add_id(json_object *o, const char *key, const struct guest_id *id)
{
	if (id)
		add_u64s(o, key, id->dev, id->ino);
}

static int check_path(const char *path)
{
	size_t n = path ? strlen(path) : 0;

	if (n == 0 || path[0] != '/')
		return -EINVAL;
	return n > GUESTFS_PATH_MAX ? -ENAMETOOLONG : 0;
}

static uint64_t ju64(json_object *o, const char *key)
{
	return (uint64_t)jget_int(o, key, 0);
}

static void ts_of(int64_t ns, struct timespec *ts)
{
	ts->tv_sec = ns / 1000000000;
	ts->tv_nsec = ns % 1000000000;
}

/* resp's "st" as attributes, with the host's inode number. */
static int attr_of(struct sandbox *s, json_object *resp, struct guest_attr *ret)
{
	json_object *o, *chg;
	struct stat *st = &ret->st;

	if (!json_object_object_get_ex(resp, "st", &o) || !json_object_is_type(o, json_type_object))
		return -EPROTO;
	memset(ret, 0, sizeof(*ret));
	ret->id.dev = ju64(o, "dev");
	ret->id.ino = ju64(o, "ino");
	ret->watched = json_object_object_get_ex(o, "chg", &chg);
	ret->chg = ret->watched ? (uint64_t)json_object_get_int64(chg) : 0;
	st->st_ino = s ? guestfs_host_ino(s, ret->id) : ret->id.ino;
	st->st_mode = (mode_t)ju64(o, "mode");
	st->st_nlink = (nlink_t)ju64(o, "nlink");
	st->st_uid = (uid_t)ju64(o, "uid");
	st->st_gid = (gid_t)ju64(o, "gid");
	st->st_rdev = (dev_t)ju64(o, "rdev");
	st->st_size = (off_t)jget_int(o, "size", 0);
	st->st_blocks = (blkcnt_t)jget_int(o, "blocks", 0);
	st->st_blksize = (blksize_t)jget_int(o, "blksize", 0);
	ts_of(jget_int(o, "atime_ns", 0), &st->st_atim);
	ts_of(jget_int(o, "mtime_ns", 0), &st->st_mtim);
	ts_of(jget_int(o, "ctime_ns", 0), &st->st_ctim);
	return 0;
}

/*
 * Where a call goes: a sandbox's connection (pinned for the call), or an
 * agent connection of the engine's own (a template build's guest).
 */
struct target {
	struct sandbox *s;
	struct agent_client *ac;
};

/* One call; takes req. */
static int call(const struct target *g, const char *op, json_object *req, json_object **resp)
{
	int r;

	if (g->s) {
		r = sandbox_guest_call(g->s, op, req, NULL, 0, resp, NULL, NULL);
	} else {
		json_object_object_add(req, "op", json_object_new_string(op));
		r = agent_call_full(g->ac, req, NULL, 0, GUEST_CALL_TIMEOUT_MS, NULL, NULL, resp, NULL, NULL);
		if (r == -ECONNRESET || r == -EPIPE || r == -EPROTO || r == -ETIMEDOUT)
			r = -EIO;
	}
	json_object_put(req);
	return r;
}

/* A call whose reply carries "st"; takes req. */
static int call_attr(const struct target *g, const char *op, json_object *req, struct guest_attr *ret)
{
	json_object *resp = NULL;
	int r = call(g, op, req, &resp);

	if (r == 0 && ret)
		r = attr_of(g->s, resp, ret);
	json_object_put(resp);
	return r;
}

/* A reply's string field, which must be a path the caller can use (no NUL, bounded). */
static int reply_string(json_object *resp, const char *key, size_t max, char **ret)
{
	json_object *v;
	const char *str;

	if (!json_object_object_get_ex(resp, key, &v) || !json_object_is_type(v, json_type_string))
		return -EPROTO;
	str = json_object_get_string(v);
	if (strlen(str) != (size_t)json_object_get_string_len(v) || strlen(str) > max)
		return -EPROTO;
	*ret = strdup(str);
	return *ret ? 0 : -ENOMEM;
}

/* ---- path calls ---- */

int guestfs_lstat(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		  struct guest_attr *ret)
{
	json_object *req;
	int r = check_path(path);

	if (r < 0)
		return r;
	req = req_new(c);
	add_path(req, "path", path);
	add_id(req, "expect", expect);
	return call_attr(&(struct target){ s, NULL }, "lstat", req, ret);
}

int guestfs_readdir(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		    guestfs_dirent_fn fn, void *ctx)
{
	struct guest_conn conn;
	uint64_t cookie = 0;
	int r = check_path(path);

	if (r == 0)
		r = guest_conn_get(s, &conn);
	if (r < 0)
		return r;
	/* one connection for the whole listing: the cookies are offsets of one open directory's walk */
	do {
		json_object *req = req_new(c), *resp = NULL, *ents;

		add_path(req, "path", path);
		add_id(req, "expect", expect);
		json_object_object_add(req, "cookie", json_object_new_uint64(cookie));
		r = guest_call(&conn, "readdir", req, NULL, 0, &resp, NULL, NULL);
		json_object_put(req);
		if (r == 0 && (!json_object_object_get_ex(resp, "entries", &ents) ||
			       !json_object_is_type(ents, json_type_array)))
			r = -EPROTO;
		for (size_t i = 0; r == 0 && i < json_object_array_length(ents); i++) {
			json_object *e = json_object_array_get_idx(ents, i), *nm;
			const char *name;

			if (!json_object_object_get_ex(e, "name", &nm) || !json_object_is_type(nm, json_type_string))
				continue;
			/* a guest's names: one path component, never "." or "..", no NUL */
			name = json_object_get_string(nm);
			if (!*name || strchr(name, '/') || strlen(name) != (size_t)json_object_get_string_len(nm) ||
			    strlen(name) > 255 || !strcmp(name, ".") || !strcmp(name, ".."))
				continue;
			r = fn(ctx, name, DTTOIF((unsigned)ju64(e, "type") & 15),
			       guestfs_host_ino(s, (struct guest_id){ ju64(resp, "dev"), ju64(e, "ino") }));
		}
		cookie = r == 0 ? ju64(resp, "cookie") : 0;
		json_object_put(resp);
	} while (cookie);
	guest_conn_put(&conn);
	return r;
}

/* mkdir, mknod, symlink: req (taken) gets the path. */
static int make(const struct target *g, const char *op, const char *path, json_object *req, struct guest_attr *ret)
{
	int r = check_path(path);

	if (r < 0) {
		json_object_put(req);
		return r;
	}
	add_path(req, "path", path);
	return call_attr(g, op, req, ret);
}

int guestfs_mkdir(struct sandbox *s, const struct guest_cred *c, const char *path, mode_t mode,
		  struct guest_attr *ret)
{
	json_object *req = req_new(c);

	json_object_object_add(req, "mode", json_object_new_int(mode & 07777));
	return make(&(struct target){ s, NULL }, "mkdir", path, req, ret);
}

int guestfs_mknod(struct sandbox *s, const struct guest_cred *c, const char *path, mode_t mode, dev_t rdev,
		  struct guest_attr *ret)
{
	json_object *req = req_new(c);

	json_object_object_add(req, "mode", json_object_new_int((int)(mode & (S_IFMT | 07777))));
	json_object_object_add(req, "rdev", json_object_new_uint64((uint64_t)rdev & 0xffffffffu));
	return make(&(struct target){ s, NULL }, "mknod", path, req, ret);
}

int guestfs_symlink(struct sandbox *s, const struct guest_cred *c, const char *target, const char *path,
		    struct guest_attr *ret)
{
	json_object *req = req_new(c);

	json_object_object_add(req, "target", json_object_new_string(target));
	return make(&(struct target){ s, NULL }, "symlink", path, req, ret);
}

int guestfs_link(struct sandbox *s, const struct guest_cred *c, const char *from, const struct guest_id *from_id,
		 const char *to, struct guest_attr *ret)
{
	json_object *req;
	int r = check_path(from);

	if (r == 0)
		r = check_path(to);
	if (r < 0)
		return r;
	req = req_new(c);
	add_path(req, "from", from);
	add_id(req, "expect", from_id);
	add_path(req, "to", to);
	return call_attr(&(struct target){ s, NULL }, "link", req, ret);
}

static int remove_name(struct sandbox *s, const struct guest_cred *c, const char *op, const char *path)
{
	json_object *req;
	int r = check_path(path);

	if (r < 0)
		return r;
	req = req_new(c);
	add_path(req, "path", path);
	return call(&(struct target){ s, NULL }, op, req, NULL);
}

int guestfs_unlink(struct sandbox *s, const struct guest_cred *c, const char *path)
{
	return remove_name(s, c, "unlink", path);
}

int guestfs_rmdir(struct sandbox *s, const struct guest_cred *c, const char *path)
{
	return remove_name(s, c, "rmdir", path);
}

int guestfs_rename(struct sandbox *s, const struct guest_cred *c, const char *from, const char *to, unsigned flags)
{
	json_object *req;
	int r = check_path(from);

	if (r == 0)
		r = check_path(to);
	if (r < 0)
		return r;
	req = req_new(c);
	add_path(req, "from", from);
	add_path(req, "to", to);
	json_object_object_add(req, "flags", json_object_new_int((int)flags));
	return call(&(struct target){ s, NULL }, "rename", req, NULL);
}

int guestfs_readlink(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		     char **ret)
{
	json_object *req, *resp = NULL;
	int r = check_path(path);

	if (r < 0)
		return r;
	req = req_new(c);
	add_path(req, "path", path);
	add_id(req, "expect", expect);
	r = call(&(struct target){ s, NULL }, "readlink", req, &resp);
	if (r == 0)
		r = reply_string(resp, "target", 4095, ret);
	json_object_put(resp);
	return r;
}

int guestfs_realpath(struct sandbox *s, const struct guest_cred *c, const char *path, char **ret)
{
	json_object *req, *resp = NULL;
	int r = check_path(path);

	if (r < 0)
		return r;
	req = req_new(c);
	add_path(req, "path", path);
	r = call(&(struct target){ s, NULL }, "realpath", req, &resp);
	if (r == 0)
		r = reply_string(resp, "path", GUESTFS_PATH_MAX, ret);
	json_object_put(resp);
	return r;
}

int guestfs_statfs(struct sandbox *s, const struct guest_cred *c, const char *path, struct statvfs *ret)
{
	json_object *req, *resp = NULL;
	int r = check_path(path);

	if (r < 0)
		return r;
	req = req_new(c);
	add_path(req, "path", path);
	r = call(&(struct target){ s, NULL }, "statfs", req, &resp);
	if (r == 0) {
		memset(ret, 0, sizeof(*ret));
		ret->f_bsize = (unsigned long)ju64(resp, "bsize");
		ret->f_frsize = (unsigned long)ju64(resp, "frsize");
		ret->f_blocks = (fsblkcnt_t)ju64(resp, "blocks");
		ret->f_bfree = (fsblkcnt_t)ju64(resp, "bfree");
		ret->f_bavail = (fsblkcnt_t)ju64(resp, "bavail");
		ret->f_files = (fsfilcnt_t)ju64(resp, "files");
		ret->f_ffree = (fsfilcnt_t)ju64(resp, "ffree");
		ret->f_namemax = (unsigned long)ju64(resp, "namemax");
	}
	json_object_put(resp);
	return r;
}

/* One attribute change by path; takes req. */
static int set_one(const struct target *g, const char *op, const char *path, const struct guest_id *expect,
		   json_object *req, struct guest_attr *ret)
{
	add_path(req, "path", path);
	add_id(req, "expect", expect);
	return call_attr(g, op, req, ret);
}

static int setattr_at(const struct target *g, const struct guest_cred *c, const char *path,
		      const struct guest_id *expect, const struct guest_setattr *sa, struct guest_attr *ret)
{
	json_object *req;
	int r = check_path(path);

	if (r == 0 && (sa->what & GUESTFS_SET_MODE)) {
		req = req_new(c);
		json_object_object_add(req, "mode", json_object_new_int(sa->mode & 07777));
		r = set_one(g, "chmod", path, expect, req, ret);
	}
	if (r == 0 && (sa->what & (GUESTFS_SET_UID | GUESTFS_SET_GID))) {
		req = req_new(c);
		json_object_object_add(req, "uid", json_object_new_int64(sa->what & GUESTFS_SET_UID ? (int64_t)sa->uid : -1));
		json_object_object_add(req, "gid", json_object_new_int64(sa->what & GUESTFS_SET_GID ? (int64_t)sa->gid : -1));
		r = set_one(g, "chown", path, expect, req, ret);
	}
	if (r == 0 && (sa->what & GUESTFS_SET_SIZE)) {
		req = req_new(c);
		json_object_object_add(req, "size", json_object_new_int64(sa->size));
		r = set_one(g, "truncate", path, expect, req, ret);
	}
	if (r == 0 && (sa->what & (GUESTFS_SET_ATIME | GUESTFS_SET_MTIME))) {
		req = req_new(c);
		json_object_object_add(req, "atime_ns", json_object_new_int64(sa->what & GUESTFS_SET_ATIME ? sa->atime_ns : -1));
		json_object_object_add(req, "mtime_ns", json_object_new_int64(sa->what & GUESTFS_SET_MTIME ? sa->mtime_ns : -1));
		r = set_one(g, "utimens", path, expect, req, ret);
	}
	if (r == 0 && !(sa->what & (GUESTFS_SET_MODE | GUESTFS_SET_UID | GUESTFS_SET_GID | GUESTFS_SET_SIZE |
				    GUESTFS_SET_ATIME | GUESTFS_SET_MTIME))) {
		req = req_new(c);
		add_path(req, "path", path);
		add_id(req, "expect", expect);
		r = call_attr(g, "lstat", req, ret);
	}
	return r;
}

int guestfs_setattr(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		    const struct guest_setattr *sa, struct guest_attr *ret)
{
	return setattr_at(&(struct target){ s, NULL }, c, path, expect, sa, ret);
}

/* ---- open files ---- */

static void on_event(void *arg, uint64_t sandbox_id, json_object *ev);

int guestfs_open(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		 int flags, mode_t mode, struct guest_file **ret, struct guest_attr *attr)
{
	struct guest_file *f;
	json_object *req, *resp = NULL;
	int r = check_path(path);

	if (r < 0)
		return r;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	r = guest_conn_get(s, &f->conn);
	if (r < 0) {
		free(f);
		return r;
	}
	/* the changes the guest pushes for the files open on this connection */
	agent_set_event_fn(f->conn.agent, on_event, s->e, s->id);
	req = req_new(c);
	add_path(req, "path", path);
	if (!(flags & O_CREAT))
		add_id(req, "expect", expect);
	json_object_object_add(req, "flags", json_object_new_int(flags));
	json_object_object_add(req, "mode", json_object_new_int(mode & 07777));
	r = guest_call(&f->conn, "open", req, NULL, 0, &resp, NULL, NULL);
	json_object_put(req);
	if (r == 0 && !(f->fh = ju64(resp, "fh")))
		r = -EPROTO;
	if (r == 0)
		r = attr_of(s, resp, attr);
	json_object_put(resp);
	if (r < 0) {
		if (f->fh)
			guestfs_close(f);
		else {
			guest_conn_put(&f->conn);
			free(f);
		}
		return r;
	}
	*ret = f;
	return 0;
}

static json_object *fh_req(struct guest_file *f, const struct guest_cred *c)
{
	json_object *req = req_new(c);

	json_object_object_add(req, "fh", json_object_new_uint64(f->fh));
	return req;
}

int guestfs_read(struct guest_file *f, const struct guest_cred *c, off_t off, size_t len, uint8_t **data,
		 size_t *got)
{
	json_object *req = fh_req(f, c);
	int r;

	json_object_object_add(req, "off", json_object_new_int64(off));
	json_object_object_add(req, "len", json_object_new_uint64(len > GUESTFS_IO_MAX ? GUESTFS_IO_MAX : len));
	*data = NULL;
	*got = 0;
	r = guest_call(&f->conn, "read", req, NULL, 0, NULL, data, got);
	json_object_put(req);
	if (r == 0 && *got > len) { /* more than asked: a guest that lies */
		free(*data);
		*data = NULL;
		*got = 0;
		r = -EPROTO;
	}
	return r;
}

int guestfs_write(struct guest_file *f, const struct guest_cred *c, off_t off, const void *buf, size_t len,
		  size_t *written)
{
	json_object *req = fh_req(f, c), *resp = NULL;
	int r;

	if (len > GUESTFS_IO_MAX)
		len = GUESTFS_IO_MAX;
	json_object_object_add(req, "off", json_object_new_int64(off));
	r = guest_call(&f->conn, "write", req, buf, len, &resp, NULL, NULL);
	json_object_put(req);
	if (r == 0) {
		*written = (size_t)ju64(resp, "written");
		if (*written > len)
			r = -EPROTO;
	}
	json_object_put(resp);
	return r;
}

int guestfs_fstat(struct guest_file *f, struct guest_attr *ret)
{
	json_object *req = fh_req(f, NULL), *resp = NULL;
	int r = guest_call(&f->conn, "fstat", req, NULL, 0, &resp, NULL, NULL);

	json_object_put(req);
	if (r == 0)
		r = attr_of(f->conn.s, resp, ret);
	json_object_put(resp);
	return r;
}

int guestfs_ftruncate(struct guest_file *f, const struct guest_cred *c, off_t size, struct guest_attr *ret)
{
	json_object *req = fh_req(f, c), *resp = NULL;
	int r;

	json_object_object_add(req, "size", json_object_new_int64(size));
	r = guest_call(&f->conn, "ftruncate", req, NULL, 0, &resp, NULL, NULL);
	json_object_put(req);
	if (r == 0 && ret)
		r = attr_of(f->conn.s, resp, ret);
	json_object_put(resp);
	return r;
}

int guestfs_fsync(struct guest_file *f, bool datasync)
{
	json_object *req = fh_req(f, NULL);
	int r;

	json_object_object_add(req, "datasync", json_object_new_boolean(datasync));
	r = guest_call(&f->conn, "fsync", req, NULL, 0, NULL, NULL, NULL);
	json_object_put(req);
	return r;
}

void guestfs_close(struct guest_file *f)
{
	json_object *req;

	if (!f)
		return;
	req = fh_req(f, NULL);
	guest_call(&f->conn, "close", req, NULL, 0, NULL, NULL, NULL); /* a guest gone closed it already */
	json_object_put(req);
	guest_conn_put(&f->conn);
	free(f);
}

/* ---- changes pushed by the guest ---- */

void engine_set_guestfs_change_fn(struct engine *e, guestfs_change_fn fn, void *ctx)
{
	e->guestfs_change_ctx = ctx;
	e->guestfs_change_fn = fn; /* before the mount serves: read without a lock */
}

/* {"event":"changed","files":[[dev,ino,chg],...]} from the reader thread of a sandbox's connection. */
static void on_event(void *arg, uint64_t sandbox_id, json_object *ev)
{
	struct engine *e = arg;
	const char *name = jget_str(ev, "event");
	guestfs_change_fn fn = e->guestfs_change_fn;
	json_object *files;

	if (!fn || !name || strcmp(name, "changed") != 0 || !json_object_object_get_ex(ev, "files", &files) ||
	    !json_object_is_type(files, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(files) && i < 4096; i++) {
		json_object *f = json_object_array_get_idx(files, i);

		if (!json_object_is_type(f, json_type_array) || json_object_array_length(f) != 3)
			continue;
		fn(e->guestfs_change_ctx, sandbox_id,
		   (struct guest_id){ (uint64_t)json_object_get_int64(json_object_array_get_idx(f, 0)),
				      (uint64_t)json_object_get_int64(json_object_array_get_idx(f, 1)) },
		   (uint64_t)json_object_get_int64(json_object_array_get_idx(f, 2)));
	}
}

/* ---- the same on an engine-owned connection (a template build's guest), as root ---- */

int guestfs_ac_lstat(struct agent_client *ac, const char *path, struct stat *st)
{
	struct guest_attr a;
	json_object *req;
	int r = check_path(path);

	if (r < 0)
		return r;
	req = req_new(NULL);
	add_path(req, "path", path);
	r = call_attr(&(struct target){ NULL, ac }, "lstat", req, &a);
	if (r == 0)
		*st = a.st;
	return r;
}

int guestfs_ac_mknod(struct agent_client *ac, const char *path, mode_t mode, dev_t rdev)
{
	json_object *req = req_new(NULL);
	const char *op = S_ISDIR(mode) ? "mkdir" : "mknod";

	json_object_object_add(req, "mode", json_object_new_int((int)(mode & (S_ISDIR(mode) ? 07777 : (S_IFMT | 07777)))));
	if (!S_ISDIR(mode))
		json_object_object_add(req, "rdev", json_object_new_uint64((uint64_t)rdev & 0xffffffffu));
	return make(&(struct target){ NULL, ac }, op, path, req, NULL);
}

int guestfs_ac_symlink(struct agent_client *ac, const char *target, const char *path)
{
	json_object *req = req_new(NULL);

	json_object_object_add(req, "target", json_object_new_string(target));
	return make(&(struct target){ NULL, ac }, "symlink", path, req, NULL);
}

int guestfs_ac_link(struct agent_client *ac, const char *from, const char *to)
{
	json_object *req;
	int r = check_path(from);

	if (r == 0)
		r = check_path(to);
	if (r < 0)
		return r;
	req = req_new(NULL);
	add_path(req, "from", from);
	add_path(req, "to", to);
	return call(&(struct target){ NULL, ac }, "link", req, NULL);
}

int guestfs_ac_setattr(struct agent_client *ac, const char *path, const struct guest_setattr *sa)
{
	return setattr_at(&(struct target){ NULL, ac }, NULL, path, NULL, sa, NULL);
}

int guestfs_ac_unlink(struct agent_client *ac, const char *path)
{
	json_object *req;
	int r = check_path(path);

	if (r < 0)
		return r;
	req = req_new(NULL);
	add_path(req, "path", path);
	return call(&(struct target){ NULL, ac }, "unlink", req, NULL);
}

/* An fh of the agent's, opened with flags; closed by fh_close. */
static int ac_open(struct agent_client *ac, const char *path, int flags, mode_t mode, uint64_t *fh)
{
	json_object *req = req_new(NULL), *resp = NULL;
	int r;

	add_path(req, "path", path);
	json_object_object_add(req, "flags", json_object_new_int(flags));
	json_object_object_add(req, "mode", json_object_new_int(mode & 07777));
	r = call(&(struct target){ NULL, ac }, "open", req, &resp);
	if (r == 0 && !(*fh = ju64(resp, "fh")))
		r = -EPROTO;
	json_object_put(resp);
	return r;
}

static void ac_close(struct agent_client *ac, uint64_t fh)
{
	json_object *req = req_new(NULL);

	json_object_object_add(req, "fh", json_object_new_uint64(fh));
	call(&(struct target){ NULL, ac }, "close", req, NULL);
}

static ssize_t read_fd(void *ctx, void *buf, size_t len)
{
	ssize_t n;

	do
		n = read(*(int *)ctx, buf, len);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

int guestfs_ac_write_file(struct agent_client *ac, const char *path, mode_t mode, int src_fd)
{
	return guestfs_ac_write_from(ac, path, mode, read_fd, &src_fd);
}

int guestfs_ac_write_from(struct agent_client *ac, const char *path, mode_t mode,
			  ssize_t (*readfn)(void *ctx, void *buf, size_t len), void *ctx)
{
	_cleanup_free_ uint8_t *buf = malloc(GUESTFS_IO_MAX);
	uint64_t fh = 0;
	off_t off = 0;
	int r = check_path(path);

	if (r == 0 && !buf)
		r = -ENOMEM;
	if (r == 0)
		r = ac_open(ac, path, O_CREAT | O_WRONLY | O_TRUNC, mode, &fh);
	while (r == 0) {
		json_object *req, *resp = NULL;
		ssize_t n = readfn(ctx, buf, GUESTFS_IO_MAX);
		size_t done = 0;

		if (n <= 0) {
			r = n < 0 ? (int)n : 0;
			break;
		}
		while (r == 0 && done < (size_t)n) {
			req = req_new(NULL);
			json_object_object_add(req, "op", json_object_new_string("write"));
			json_object_object_add(req, "fh", json_object_new_uint64(fh));
			json_object_object_add(req, "off", json_object_new_int64(off + (off_t)done));
			r = agent_call_full(ac, req, buf + done, (size_t)n - done, GUEST_CALL_TIMEOUT_MS, NULL, NULL,
					    &resp, NULL, NULL);
			json_object_put(req);
			if (r == 0 && ju64(resp, "written") == 0)
				r = -EIO;
			done += r == 0 ? (size_t)ju64(resp, "written") : 0;
			json_object_put(resp);
		}
		off += n;
	}
	if (fh)
		ac_close(ac, fh);
	return r;
}

int guestfs_ac_read_file(struct agent_client *ac, const char *path, size_t max, char **ret, size_t *ret_len)
{
	_cleanup_free_ char *data = NULL;
	uint64_t fh = 0;
	size_t len = 0;
	int r = check_path(path);

	if (r == 0)
		r = ac_open(ac, path, O_RDONLY, 0, &fh);
	while (r == 0 && len < max) {
		json_object *req = req_new(NULL);
		uint8_t *d = NULL;
		size_t got = 0;
		char *nd;

		json_object_object_add(req, "op", json_object_new_string("read"));
		json_object_object_add(req, "fh", json_object_new_uint64(fh));
		json_object_object_add(req, "off", json_object_new_int64((int64_t)len));
		json_object_object_add(req, "len", json_object_new_uint64(max - len < GUESTFS_IO_MAX ? max - len : GUESTFS_IO_MAX));
		r = agent_call_full(ac, req, NULL, 0, GUEST_CALL_TIMEOUT_MS, NULL, NULL, NULL, &d, &got);
		json_object_put(req);
		if (r == 0 && got > 0 && (nd = realloc(data, len + got + 1))) {
			data = nd;
			memcpy(data + len, d, got);
			len += got;
		} else if (r == 0 && got > 0) {
			r = -ENOMEM;
		}
		free(d);
		if (got == 0)
			break;
	}
	if (fh)
		ac_close(ac, fh);
	if (r == 0 && !data && !(data = strdup("")))
		r = -ENOMEM;
	if (r == 0) {
		data[len] = '\0';
		*ret = TAKE_PTR(data);
		*ret_len = len;
	}
	return r;
}
