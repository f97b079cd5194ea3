/* emberfs-agent: file ops on guest paths and handles. */
#include "agent.h"

/* ------------------------------------------------------------------ */
/* The host user a file op acts for                                     */

/*
 * "cred": [uid, gid, [groups]] on a file op: the op runs with that user's
 * file system identity (fsuid, fsgid, supplementary groups) and, for any
 * user but root, with no capability in effect, so the guest's kernel checks
 * permissions, owns new files and clears set-id bits as it would for that
 * user. uids and gids are the same numbers on the host and in the guest.
 * Without "cred" an op runs as root. The agent has one thread: the
 * identity is the process's until cred_leave.
 */
static struct __user_cap_data_struct caps_full[_LINUX_CAPABILITY_U32S_3];

void caps_save(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };

	if (syscall(SYS_capget, &h, caps_full) < 0)
		agent_log("capget: %m");
}

static void caps_set(bool effective)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];

	memcpy(d, caps_full, sizeof(d));
	for (size_t i = 0; !effective && i < _LINUX_CAPABILITY_U32S_3; i++)
		d[i].effective = 0;
	syscall(SYS_capset, &h, d);
}

int req_cred(struct request *rq, struct cred *c, bool *has)
{
	struct json_object *v = json_field(rq->msg, "cred"), *g;
	uint64_t ids[2];

	*has = v != NULL;
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != 3)
		goto bad;
	for (size_t i = 0; i < 2; i++)
		if (json_u64s_one(json_object_array_get_idx(v, i), &ids[i]) < 0)
			goto bad;
	g = json_object_array_get_idx(v, 2);
	if (!json_object_is_type(g, json_type_array) || json_object_array_length(g) > CRED_GROUPS_MAX)
		goto bad;
	c->uid = (uid_t)ids[0];
	c->gid = (gid_t)ids[1];
	c->ngroups = json_object_array_length(g);
	for (size_t i = 0; i < c->ngroups; i++) {
		uint64_t x;

		if (json_u64s_one(json_object_array_get_idx(g, i), &x) < 0)
			goto bad;
		c->groups[i] = (gid_t)x;
	}
	return 0;
bad:
	return request_fail(rq, EINVAL, "\"cred\" must be [uid, gid, [gid, ...]] (ids below 2^32 - 1, at most %d groups)",
			    CRED_GROUPS_MAX);
}

void cred_enter(const struct cred *c)
{
	syscall(SYS_setgroups, c->ngroups, c->groups);
	syscall(SYS_setfsgid, c->gid);
	if (c->uid != 0) {
		syscall(SYS_setfsuid, c->uid);
		caps_set(false);
	}
}

void cred_leave(void)
{
	syscall(SYS_setfsuid, 0);
	syscall(SYS_setfsgid, 0);
	syscall(SYS_setgroups, 0, NULL);
	caps_set(true);
}

/* ------------------------------------------------------------------ */
/* Paths                                                                */

/*
 * A path as (directory descriptor, the rest): the kernel takes at most
 * PATH_MAX bytes in one call, but a guest path can be longer (a process
 * deep in a tree works with relative paths). A longer path is walked in
 * pieces below PATH_MAX through O_PATH descriptors, as the guest's kernel
 * resolves them (intermediate symlinks followed).
 */
struct at {
	int fd;		/* AT_FDCWD or an O_PATH directory */
	const char *rel;
};

static void at_done(struct at *at)
{
	if (at->fd >= 0)
		close(at->fd);
	at->fd = AT_FDCWD;
}

static int at_resolve(const char *path, struct at *at)
{
	static char piece[PATH_MAX];

	at->fd = AT_FDCWD;
	at->rel = path;
	while (strlen(at->rel) >= PATH_MAX) {
		const char *p = at->rel, *cut = NULL;
		int fd;

		for (const char *c = p + 1; c < p + PATH_MAX - 1; c++)
			if (*c == '/')
				cut = c;
		if (!cut) {
			at_done(at);
			return -ENAMETOOLONG;
		}
		memcpy(piece, p, (size_t)(cut - p));
		piece[cut - p] = '\0';
		fd = openat(at->fd, piece, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) {
			int e = errno;

			at_done(at);
			return -e;
		}
		at_done(at);
		at->fd = fd;
		while (*cut == '/')
			cut++;
		at->rel = *cut ? cut : ".";
	}
	return 0;
}

/* fstatat through at_resolve; -errno. */
static int stat_path(const char *path, struct stat *st, int flags)
{
	struct at at;
	int r = at_resolve(path, &at);

	if (r < 0)
		return r;
	r = fstatat(at.fd, at.rel, st, flags) < 0 ? -errno : 0;
	at_done(&at);
	return r;
}

/*
 * Who checks what. The host's kernel walks its own view of the path with
 * the caller's identity before it asks for anything (the mount is
 * default_permissions), and a process may also hold a directory it could
 * not reach any more (its working directory). So the agent finds the
 * object as root, and only the operation itself runs as the caller: an
 * operation on a file (open, chmod, truncate, ...) on the file found, one
 * on a name (create, unlink, rename, ...) on the directory found and the
 * name, where the guest's kernel checks the directory's permissions.
 */
static void as_root(struct agent *a)
{
	if (a->cred)
		cred_leave();
}

static void as_caller(struct agent *a)
{
	if (a->cred)
		cred_enter(a->cred);
}

/* A name in a directory: an O_PATH descriptor of the directory (found as root) and the name. */
struct name {
	int dir;
	char *name; /* in the request's path */
};

static void name_done(struct name *n)
{
	if (n->dir >= 0)
		close(n->dir);
	n->dir = -1;
}

static int name_get(struct agent *a, const char *path, struct name *ret)
{
	const char *slash = strrchr(path, '/');
	size_t plen = slash > path ? (size_t)(slash - path) : 1;
	_cleanup_free_ char *parent = strndup(path, plen);
	struct at at;
	int r;

	ret->dir = -1;
	ret->name = (char *)slash + 1;
	if (!parent)
		return -ENOMEM;
	if (!*ret->name)
		return -EINVAL; /* "/" has no parent */
	as_root(a);
	r = at_resolve(parent, &at);
	if (r == 0 && (ret->dir = openat(at.fd, at.rel, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
		r = -errno;
	at_done(&at);
	as_caller(a);
	return r;
}

/* An object by path: an O_PATH descriptor (found as root; a final symlink is not followed) and its stat. */
static int obj_get(struct agent *a, const char *path, int *ret_fd, struct stat *st)
{
	struct name n;
	int r = 0;

	*ret_fd = -1;
	if (!strcmp(path, "/")) {
		as_root(a);
		if ((*ret_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
			r = -errno;
		as_caller(a);
	} else if ((r = name_get(a, path, &n)) == 0) {
		as_root(a);
		if ((*ret_fd = openat(n.dir, n.name, O_PATH | O_NOFOLLOW | O_CLOEXEC)) < 0)
			r = -errno;
		as_caller(a);
		name_done(&n);
	}
	if (r == 0 && fstat(*ret_fd, st) < 0)
		r = -errno;
	if (r < 0 && *ret_fd >= 0) {
		close(*ret_fd);
		*ret_fd = -1;
	}
	return r;
}

/* "/proc/self/fd/N": an O_PATH descriptor reopened, or acted on, as the caller. */
static const char *fd_path(int fd)
{
	static char p[40];

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	return p;
}

/*
 * The host names files by the paths it last saw, and can check that a path
 * still names the file it means: "expect" [dev, ino]. A mismatch, or
 * nothing there, is ESTALE: the host's kernel then looks the path up
 * again, as after a change made on another NFS client. Names are made and
 * removed in whatever directory the path names now.
 */
static int expect_match(struct request *rq, const char *path, int r, const struct stat *st)
{
	uint64_t id[2];
	bool has;
	int e = req_id_opt(rq, "expect", &has, id);

	if (e < 0)
		return e;
	if (has && (r == -ENOENT || r == -ENOTDIR ||
		    (r == 0 && ((uint64_t)st->st_dev != id[0] || (uint64_t)st->st_ino != id[1]))))
		return request_fail(rq, ESTALE, "%.200s is no longer the file the host knows", path);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "lstat", path);
	}
	return 0;
}

/* The request's "path" as an object (checked against "expect"). */
static int req_obj(struct agent *a, struct request *rq, const char **path, int *fd, struct stat *st)
{
	int r = req_path(rq, "path", path);

	if (r < 0)
		return r;
	r = expect_match(rq, *path, obj_get(a, *path, fd, st), st);
	if (r < 0 && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	return r;
}

/* The request's path key as a name in a directory. */
static int req_name(struct agent *a, struct request *rq, const char *key, const char **path, struct name *n)
{
	int r = req_path(rq, key, path);

	if (r < 0)
		return r;
	r = name_get(a, *path, n);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "lookup", *path);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Watching the files the host has open                                 */

/*
 * Every regular file the host has open is watched with inotify (IN_MODIFY:
 * writes and truncations, by anyone, the agent's own included), and each
 * change counts. The count goes with every stat of that file ("chg"), and
 * the files that changed are pushed to the host as an event after each
 * turn of the loop, so the host can drop what it cached of them (pages
 * of the host's page cache, mappings included). docs/protocol.md.
 */

static struct watch *watch_by_wd(struct agent *a, int wd)
{
	for (size_t i = 0; i < MAX_FH; i++)
		if (a->watch[i].wd == wd && wd >= 0)
			return &a->watch[i];
	return NULL;
}

static struct watch *watch_by_id(struct agent *a, uint64_t dev, uint64_t ino)
{
	for (size_t i = 0; i < MAX_FH; i++)
		if (a->watch[i].wd >= 0 && a->watch[i].dev == dev && a->watch[i].ino == ino)
			return &a->watch[i];
	return NULL;
}

/* Reads what inotify has queued: every change the guest completed is counted before a stat is answered. */
void watch_drain(struct agent *a)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

	for (;;) {
		ssize_t n = read(a->ino_fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		for (ssize_t off = 0; off < n;) {
			struct inotify_event *ev = (struct inotify_event *)(buf + off);
			struct watch *w = watch_by_wd(a, ev->wd);

			off += (ssize_t)(sizeof(*ev) + ev->len);
			if (ev->mask & IN_Q_OVERFLOW) {
				/* events were lost: every watched file may have changed */
				for (size_t i = 0; i < MAX_FH; i++)
					if (a->watch[i].wd >= 0) {
						a->watch[i].chg++;
						a->watch[i].dirty = a->watch_dirty = true;
					}
			} else if (w && (ev->mask & IN_MODIFY)) {
				w->chg++;
				w->dirty = a->watch_dirty = true;
			}
		}
	}
}

/* Starts watching the file open as @fd (handle @slot); no watch if inotify refuses (its limits). */
static void watch_add(struct agent *a, size_t slot, int fd, const struct stat *st)
{
	char p[40];
	struct watch *w;
	int wd;

	a->fh_watch[slot] = -1;
	if (a->ino_fd < 0 || !S_ISREG(st->st_mode))
		return;
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	/* as root: a watch needs read permission, a handle open for writing alone has none */
	if (a->cred)
		cred_leave();
	wd = inotify_add_watch(a->ino_fd, p, IN_MODIFY);
	if (a->cred)
		cred_enter(a->cred);
	if (wd < 0) {
		if (!a->watch_warned)
			agent_log("inotify_add_watch: %m (files open without a watch are not pushed)");
		a->watch_warned = true;
		return;
	}
	w = watch_by_wd(a, wd);
	for (size_t i = 0; !w && i < MAX_FH; i++)
		if (a->watch[i].wd < 0) {
			w = &a->watch[i];
			*w = (struct watch){ .wd = wd, .dev = st->st_dev, .ino = st->st_ino };
		}
	if (!w) { /* cannot happen: at most MAX_FH handles */
		inotify_rm_watch(a->ino_fd, wd);
		return;
	}
	w->refs++;
	a->fh_watch[slot] = (int)(w - a->watch);
}

static void watch_put(struct agent *a, size_t slot)
{
	struct watch *w;

	if (a->fh_watch[slot] < 0)
		return;
	w = &a->watch[a->fh_watch[slot]];
	a->fh_watch[slot] = -1;
	if (--w->refs == 0) {
		inotify_rm_watch(a->ino_fd, w->wd);
		w->wd = -1;
	}
}

/* {"event":"changed","files":[[dev,ino,chg],...]}: the watched files that changed since the last push. */
void watch_push(struct agent *a)
{
	_cleanup_json_ struct json_object *o = NULL;
	struct json_object *files;

	if (!a->watch_dirty)
		return;
	a->watch_dirty = false;
	o = json_object_new_object();
	files = json_object_new_array();
	if (!o || !files) {
		json_object_put(files);
		return;
	}
	json_object_object_add(o, "event", json_object_new_string("changed"));
	json_object_object_add(o, "files", files);
	for (size_t i = 0; i < MAX_FH; i++) {
		struct watch *w = &a->watch[i];
		struct json_object *f;

		if (w->wd < 0 || !w->dirty)
			continue;
		w->dirty = false;
		f = json_object_new_array();
		if (!f)
			continue;
		json_object_array_add(f, json_object_new_uint64(w->dev));
		json_object_array_add(f, json_object_new_uint64(w->ino));
		json_object_array_add(f, json_object_new_uint64(w->chg));
		json_object_array_add(files, f);
	}
	if (json_object_array_length(files) > 0)
		outq_json(a, a->gen, o);
}

/* ------------------------------------------------------------------ */
/* Files                                                                */

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

/* A stat object; "chg" when @a watches the file (then the queue is read first). */
static struct json_object *st_json(struct agent *a, const struct stat *st)
{
	struct json_object *o = json_object_new_object();
	struct watch *w = NULL;

	if (!o)
		return NULL;
	if (a && S_ISREG(st->st_mode)) {
		watch_drain(a);
		w = watch_by_id(a, st->st_dev, st->st_ino);
	}
	json_object_object_add(o, "dev", json_object_new_uint64(st->st_dev));
	json_object_object_add(o, "ino", json_object_new_uint64(st->st_ino));
	json_object_object_add(o, "mode", json_object_new_uint64(st->st_mode));
	json_object_object_add(o, "nlink", json_object_new_uint64(st->st_nlink));
	json_object_object_add(o, "uid", json_object_new_uint64(st->st_uid));
	json_object_object_add(o, "gid", json_object_new_uint64(st->st_gid));
	json_object_object_add(o, "rdev", json_object_new_uint64(st->st_rdev));
	json_object_object_add(o, "size", json_object_new_int64(st->st_size));
	json_object_object_add(o, "blocks", json_object_new_int64(st->st_blocks));
	json_object_object_add(o, "blksize", json_object_new_int64(st->st_blksize));
	json_object_object_add(o, "atime_ns", json_object_new_int64(ts_ns(&st->st_atim)));
	json_object_object_add(o, "mtime_ns", json_object_new_int64(ts_ns(&st->st_mtim)));
	json_object_object_add(o, "ctime_ns", json_object_new_int64(ts_ns(&st->st_ctim)));
	if (w)
		json_object_object_add(o, "chg", json_object_new_uint64(w->chg));
	return o;
}

static int reply_st(struct agent *a, struct json_object *reply, const struct stat *st)
{
	struct json_object *o = st_json(a, st);

	if (!o)
		return -ENOMEM;
	json_object_object_add(reply, "st", o);
	return 0;
}

/* After a change to @path: its st, without following a final symlink. */
/* A name just made in a directory: its st (found as root). */
static int reply_name_st(struct agent *a, struct request *rq, struct json_object *reply, const struct name *n,
			 const char *path)
{
	struct stat st;
	int r;

	as_root(a);
	r = fstatat(n->dir, n->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	as_caller(a);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "lstat", path);
	}
	return reply_st(a, reply, &st);
}

/* An object's st after a change. */
static int reply_obj_st(struct agent *a, struct request *rq, struct json_object *reply, int fd, const char *path)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return sys_fail(rq, "fstat", path);
	return reply_st(a, reply, &st);
}

/* lstat: no permission on the file itself is needed, and the host checked the way to it. */
int op_lstat(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct stat st;
	int r = req_obj(a, rq, &path, &fd, &st);

	return r < 0 ? r : reply_st(a, reply, &st);
}

struct dirent64_raw {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

static bool is_dot(const char *name)
{
	return name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]));
}

/*
 * The cookie is the directory offset (d_off) after the last entry sent.
 * Entries carry the type and inode number the directory itself gives
 * (d_type, d_ino): listing needs only read permission on the directory,
 * not search permission, as in the guest. An unknown type is asked for
 * (as root).
 */
int op_readdir(struct agent *a, struct request *rq, struct json_object *reply)
{
	static char dbuf[64 << 10];
	_cleanup_close_ int fd = -1, ofd = -1;
	struct json_object *entries;
	int64_t cookie, last = 0;
	size_t count = 0;
	bool more = false;
	const char *path;
	struct stat st;
	int r;

	r = req_obj(a, rq, &path, &ofd, &st);
	if (r < 0)
		return r;
	cookie = 0;
	if (json_field(rq->msg, "cookie")) {
		r = req_i64(rq, "cookie", INT64_MIN, INT64_MAX, &cookie);
		if (r < 0)
			return r;
	}
	if (!S_ISDIR(st.st_mode))
		return request_fail(rq, ENOTDIR, "%.200s: not a directory", path);
	fd = open(fd_path(ofd), O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return sys_fail(rq, "open", path);
	if (cookie && lseek(fd, cookie, SEEK_SET) < 0)
		return request_fail(rq, EINVAL, "bad \"cookie\"");
	entries = json_object_new_array();
	if (!entries)
		return -ENOMEM;
	json_object_object_add(reply, "entries", entries);
	json_object_object_add(reply, "dev", json_object_new_uint64(st.st_dev));
	while (!more) {
		long n = syscall(SYS_getdents64, fd, dbuf, sizeof(dbuf));

		if (n < 0)
			return sys_fail(rq, "getdents", path);
		if (n == 0)
			break;
		for (long off = 0; off < n; off += ((struct dirent64_raw *)(dbuf + off))->d_reclen) {
			struct dirent64_raw *d = (struct dirent64_raw *)(dbuf + off);
			unsigned type = d->d_type;
			struct json_object *e;
			struct stat est;

			if (!is_dot(d->d_name)) {
				if (count == READDIR_MAX) {
					more = true;
					break;
				}
				if (type == DT_UNKNOWN) {
					as_root(a);
					if (fstatat(ofd, d->d_name, &est, AT_SYMLINK_NOFOLLOW) == 0)
						type = (unsigned)IFTODT(est.st_mode);
					as_caller(a);
				}
				e = json_object_new_object();
				if (!e)
					return -ENOMEM;
				json_object_object_add(e, "name", json_object_new_string(d->d_name));
				json_object_object_add(e, "type", json_object_new_int((int)type));
				json_object_object_add(e, "ino", json_object_new_uint64(d->d_ino));
				json_object_array_add(entries, e);
				count++;
			}
			last = d->d_off;
		}
	}
	json_object_object_add(reply, "cookie", json_object_new_int64(more ? last : 0));
	return 0;
}

static int fh_get(struct agent *a, struct request *rq, int *fd)
{
	uint64_t fh;

	if (json_get_u64(rq->msg, "fh", &fh) < 0)
		return request_fail(rq, EINVAL, "\"fh\" must be a file handle");
	if (fh < 1 || fh > MAX_FH || a->fh[fh - 1] < 0)
		return request_fail(rq, EBADF, "no file handle %" PRIu64, fh);
	*fd = a->fh[fh - 1];
	return (int)fh;
}

void fh_close_all(struct agent *a)
{
	for (size_t i = 0; i < MAX_FH; i++) {
		if (a->fh[i] >= 0) {
			watch_put(a, i);
			close(a->fh[i]);
		}
		a->fh[i] = -1;
	}
}

#define OPEN_FLAGS_ALLOWED (O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_APPEND | O_NOFOLLOW | O_DIRECTORY | \
			    O_SYNC | O_DSYNC | O_NOATIME)

static bool st_openable(const struct stat *st)
{
	return S_ISREG(st->st_mode) || S_ISDIR(st->st_mode);
}

/*
 * Only regular files and directories: a FIFO, tty or other device could
 * block the agent or act on open.  Refused before the open when it can be
 * seen, and after it (fstat) for one that appeared in between.
 * "expect" checks the file (not with O_CREAT: the name may be new).
 */
/*
 * An existing file is opened again from the descriptor found as root,
 * with the caller's identity: the guest checks the caller's permission on
 * the file itself. A new one (O_CREAT) is made in the directory as the
 * caller. Only regular files and directories: a FIFO, tty or other device
 * could block the agent or act on open.
 */
int op_open(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int ofd = -1;
	uint64_t flags, mode;
	const char *path;
	struct name n = { .dir = -1 };
	struct stat st;
	size_t slot;
	mode_t old;
	int fd, r;

	r = req_path(rq, "path", &path);
	if (r < 0)
		return r;
	r = req_u64(rq, "flags", 0, INT_MAX, &flags);
	if (r < 0)
		return r;
	if ((flags & ~(uint64_t)OPEN_FLAGS_ALLOWED) || (flags & O_ACCMODE) == O_ACCMODE)
		return request_fail(rq, EINVAL, "\"flags\" 0x%" PRIx64 " not allowed", flags);
	r = req_u64_opt(rq, "mode", 07777, 0644, &mode);
	if (r < 0)
		return r;
	for (slot = 0; slot < MAX_FH && a->fh[slot] >= 0; slot++)
		;
	if (slot == MAX_FH)
		return request_fail(rq, EMFILE, "too many open handles (%d)", MAX_FH);
	if (flags & O_CREAT) {
		r = req_name(a, rq, "path", &path, &n);
		if (r < 0)
			return r;
		as_root(a);
		if (fstatat(n.dir, n.name, &st, (flags & O_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW : 0) == 0 &&
		    !S_ISLNK(st.st_mode) && !st_openable(&st)) {
			as_caller(a);
			name_done(&n);
			return request_fail(rq, ENXIO, "%.200s: not a regular file or directory", path);
		}
		as_caller(a);
		old = umask(0); /* the host's mode, exactly */
		fd = openat(n.dir, n.name, (int)flags | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, (mode_t)mode);
		umask(old);
		name_done(&n);
	} else {
		r = expect_match(rq, path, obj_get(a, path, &ofd, &st), &st);
		if (r < 0)
			return r;
		if (!st_openable(&st))
			return request_fail(rq, S_ISLNK(st.st_mode) && (flags & O_NOFOLLOW) ? ELOOP : ENXIO,
					    "%.200s: not a regular file or directory", path);
		fd = open(fd_path(ofd), (int)(flags & ~(uint64_t)O_NOFOLLOW) | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	}
	if (fd < 0)
		return sys_fail(rq, "open", path);
	if (fstat(fd, &st) < 0) {
		r = sys_fail(rq, "fstat", path);
		close(fd);
		return r;
	}
	if (!st_openable(&st)) {
		close(fd);
		return request_fail(rq, ENXIO, "%.200s: not a regular file or directory", path);
	}
	a->fh[slot] = fd;
	watch_add(a, slot, fd, &st);
	json_object_object_add(reply, "fh", json_object_new_uint64(slot + 1));
	return reply_st(a, reply, &st);
}

/*
 * Rendered by hand so that the data goes straight from pread into the
 * output queue: the header is written for @len bytes, and moved up when
 * the end of the file made it shorter.
 */
int op_read(struct agent *a, struct request *rq, struct json_object *reply)
{
	char head[96];
	uint64_t off, len;
	size_t got = 0;
	int fd, hn, r;
	char *p;

	(void)reply;
	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_u64(rq, "off", 0, INT64_MAX, &off);
	if (r < 0)
		return r;
	r = req_u64(rq, "len", 0, BIN_MAX, &len);
	if (r < 0)
		return r;
	if (rq->gen != a->gen)
		return 1;
	hn = snprintf(head, sizeof(head), "{\"id\":%" PRIu64 ",\"ok\":true,\"bin\":%" PRIu64 "}\n",
		      rq->id, len);
	p = outq_reserve(a, hn + len);
	if (!p)
		return request_fail(rq, ENOMEM, "out of memory for %" PRIu64 " bytes", len);
	while (got < len) {
		ssize_t n = pread(fd, p + hn + got, len - got, (off_t)(off + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return sys_fail(rq, "pread", "");
		if (n == 0)
			break;
		got += n;
	}
	if (got < len) {
		int hn2 = snprintf(head, sizeof(head), "{\"id\":%" PRIu64 ",\"ok\":true,\"bin\":%zu}\n",
				   rq->id, got);

		memmove(p + hn2, p + hn, got);
		hn = hn2;
	}
	memcpy(p, head, hn);
	a->out.len += hn + got;
	return 1;
}

/* With the writer's identity (set by dispatch): a write by another user than the owner clears set-id bits. */
int op_write(struct agent *a, struct request *rq, struct json_object *reply)
{
	uint64_t off;
	size_t done = 0;
	int fd, r;

	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_u64(rq, "off", 0, INT64_MAX, &off);
	if (r < 0)
		return r;
	if (!rq->has_bin)
		return request_fail(rq, EINVAL, "write needs a \"bin\" payload");
	while (done < rq->bin_len) {
		ssize_t n = pwrite(fd, rq->bin + done, rq->bin_len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && done == 0)
			return sys_fail(rq, "pwrite", "");
		if (n <= 0)
			break;
		done += n;
	}
	json_object_object_add(reply, "written", json_object_new_uint64(done));
	return 0;
}

int op_close(struct agent *a, struct request *rq, struct json_object *reply)
{
	int fd, fh;

	(void)reply;
	fh = fh_get(a, rq, &fd);
	if (fh < 0)
		return fh;
	watch_put(a, (size_t)fh - 1);
	a->fh[fh - 1] = -1;
	if (close(fd) < 0 && errno != EINTR)
		return sys_fail(rq, "close", "");
	return 0;
}

int op_fsync(struct agent *a, struct request *rq, struct json_object *reply)
{
	bool datasync;
	int fd, r;

	(void)reply;
	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_bool_opt(rq, "datasync", &datasync);
	if (r < 0)
		return r;
	if ((datasync ? fdatasync(fd) : fsync(fd)) < 0)
		return sys_fail(rq, "fsync", "");
	return 0;
}

int op_fstat(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct stat st;
	int fd, r;

	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	if (fstat(fd, &st) < 0)
		return sys_fail(rq, "fstat", "");
	return reply_st(a, reply, &st);
}

int op_ftruncate(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct stat st;
	uint64_t size;
	int fd, r;

	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_u64(rq, "size", 0, INT64_MAX, &size);
	if (r < 0)
		return r;
	if (ftruncate(fd, (off_t)size) < 0 || fstat(fd, &st) < 0)
		return sys_fail(rq, "ftruncate", "");
	return reply_st(a, reply, &st);
}

/* Regular files only, and not through a final symlink. */
/* Regular files only, and not through a final symlink: opened for writing as the caller. */
int op_truncate(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int ofd = -1, fd = -1;
	const char *path;
	struct stat st;
	uint64_t size;
	int r;

	r = req_obj(a, rq, &path, &ofd, &st);
	if (r < 0)
		return r;
	r = req_u64(rq, "size", 0, INT64_MAX, &size);
	if (r < 0)
		return r;
	if (S_ISDIR(st.st_mode))
		return request_fail(rq, EISDIR, "%.200s: is a directory", path);
	if (!S_ISREG(st.st_mode))
		return request_fail(rq, EINVAL, "%.200s: not a regular file", path);
	fd = open(fd_path(ofd), O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return sys_fail(rq, "open", path);
	if (ftruncate(fd, (off_t)size) < 0 || fstat(fd, &st) < 0)
		return sys_fail(rq, "truncate", path);
	return reply_st(a, reply, &st);
}

/*
 * A chmod that only clears set-id bits (or changes nothing) is allowed to
 * any caller: the host's kernel asks for exactly that when a user who may
 * write a set-id file writes or truncates it (libfuse 3.14 never tells the
 * kernel that the filesystem clears them itself), and the guest's kernel
 * clears them for that user on the same write anyway. It never grants
 * anything, and the host's kernel refuses a real chmod by anyone but the
 * owner before asking.
 */
static bool only_clears_setid(const struct stat *st, mode_t mode)
{
	mode_t cur = st->st_mode & 07777;

	return S_ISREG(st->st_mode) && (cur & ~(mode_t)06000) == (mode & ~(mode_t)06000) &&
	       (mode & 06000 & ~cur) == 0;
}

int op_chmod(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct stat st;
	uint64_t mode;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	r = req_u64(rq, "mode", 0, 07777, &mode);
	if (r < 0)
		return r;
	if (S_ISLNK(st.st_mode))
		return request_fail(rq, EOPNOTSUPP, "%.200s: a symlink has no mode", path);
	r = chmod(fd_path(fd), (mode_t)mode) < 0 ? -errno : 0;
	if (r == -EPERM && a->cred && only_clears_setid(&st, (mode_t)mode)) {
		as_root(a);
		r = chmod(fd_path(fd), (mode_t)mode) < 0 ? -errno : 0;
		as_caller(a);
	}
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "chmod", path);
	}
	return reply_obj_st(a, rq, reply, fd, path);
}

int op_chown(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct stat st;
	int64_t uid, gid;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	r = req_i64(rq, "uid", -1, (int64_t)UINT32_MAX - 1, &uid);
	if (r < 0)
		return r;
	r = req_i64(rq, "gid", -1, (int64_t)UINT32_MAX - 1, &gid);
	if (r < 0)
		return r;
	if (fchownat(fd, "", (uid_t)uid, (gid_t)gid, AT_EMPTY_PATH) < 0)
		return sys_fail(rq, "chown", path);
	return reply_obj_st(a, rq, reply, fd, path);
}

/* -1 keeps a time, -2 sets it to now. */
static struct timespec ns_ts(int64_t ns)
{
	if (ns == -1)
		return (struct timespec){ .tv_nsec = UTIME_OMIT };
	if (ns == -2)
		return (struct timespec){ .tv_nsec = UTIME_NOW };
	return (struct timespec){ .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
}

/* Times of the file itself; a symlink's through its name (AT_SYMLINK_NOFOLLOW). */
int op_utimens(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	struct timespec ts[2];
	int64_t at_ns, mt_ns;
	const char *path;
	struct name n;
	struct stat st;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	r = req_i64(rq, "atime_ns", -2, INT64_MAX, &at_ns);
	if (r < 0)
		return r;
	r = req_i64(rq, "mtime_ns", -2, INT64_MAX, &mt_ns);
	if (r < 0)
		return r;
	ts[0] = ns_ts(at_ns);
	ts[1] = ns_ts(mt_ns);
	if (!S_ISLNK(st.st_mode)) {
		r = utimensat(AT_FDCWD, fd_path(fd), ts, 0) < 0 ? -errno : 0;
	} else if ((r = name_get(a, path, &n)) == 0) {
		r = utimensat(n.dir, n.name, ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
		name_done(&n);
	}
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "utimensat", path);
	}
	return reply_obj_st(a, rq, reply, fd, path);
}

/* unlink and rmdir: a name in its directory, as the caller. */
static int remove_path(struct agent *a, struct request *rq, const char *what, int flags)
{
	const char *path;
	struct name n;
	int r = req_name(a, rq, "path", &path, &n);

	if (r < 0)
		return r;
	r = unlinkat(n.dir, n.name, flags) < 0 ? -errno : 0;
	name_done(&n);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, what, path);
	}
	return 0;
}

int op_unlink(struct agent *a, struct request *rq, struct json_object *reply)
{
	(void)reply;
	return remove_path(a, rq, "unlink", 0);
}

int op_rmdir(struct agent *a, struct request *rq, struct json_object *reply)
{
	(void)reply;
	return remove_path(a, rq, "rmdir", AT_REMOVEDIR);
}

/* mkdir and mknod: the mode exactly as given (no umask: the host's kernel applied the caller's). */
static int make_node(struct agent *a, struct request *rq, struct json_object *reply, bool dir)
{
	const char *path;
	uint64_t mode, rdev = 0;
	struct name n;
	mode_t old;
	int r;

	r = req_u64(rq, "mode", 0, dir ? 07777 : (S_IFMT | 07777), &mode);
	if (r < 0)
		return r;
	if (!dir) {
		r = req_u64_opt(rq, "rdev", UINT32_MAX, 0, &rdev);
		if (r < 0)
			return r;
	}
	r = req_name(a, rq, "path", &path, &n);
	if (r < 0)
		return r;
	old = umask(0);
	r = (dir ? mkdirat(n.dir, n.name, (mode_t)mode) : mknodat(n.dir, n.name, (mode_t)mode, (dev_t)rdev)) < 0 ?
		    -errno : 0;
	umask(old);
	if (r == 0)
		r = reply_name_st(a, rq, reply, &n, path);
	else
		r = (errno = -r, sys_fail(rq, dir ? "mkdir" : "mknod", path));
	name_done(&n);
	return r;
}

int op_mkdir(struct agent *a, struct request *rq, struct json_object *reply)
{
	return make_node(a, rq, reply, true);
}

int op_mknod(struct agent *a, struct request *rq, struct json_object *reply)
{
	return make_node(a, rq, reply, false);
}

int op_rename(struct agent *a, struct request *rq, struct json_object *reply)
{
	const char *from, *to;
	struct name nf, nt = { .dir = -1 };
	uint64_t flags;
	int r;

	(void)reply;
	r = req_u64_opt(rq, "flags", RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT, 0, &flags);
	if (r < 0)
		return r;
	r = req_name(a, rq, "from", &from, &nf);
	if (r < 0)
		return r;
	r = req_name(a, rq, "to", &to, &nt);
	if (r == 0) {
		r = syscall(SYS_renameat2, nf.dir, nf.name, nt.dir, nt.name, (unsigned int)flags) < 0 ? -errno : 0;
		if (r < 0)
			r = (errno = -r, sys_fail(rq, "rename", from));
	}
	name_done(&nf);
	name_done(&nt);
	return r;
}

int op_symlink(struct agent *a, struct request *rq, struct json_object *reply)
{
	const char *target, *path;
	struct name n;
	size_t len;
	int r;

	if (json_get_str(rq->msg, "target", &target, &len) < 0 || len == 0 || len >= PATH_MAX)
		return request_fail(rq, EINVAL, "\"target\" must be a string of 1..%d bytes", PATH_MAX - 1);
	r = req_name(a, rq, "path", &path, &n);
	if (r < 0)
		return r;
	if (symlinkat(target, n.dir, n.name) == 0)
		r = reply_name_st(a, rq, reply, &n, path);
	else
		r = sys_fail(rq, "symlink", path);
	name_done(&n);
	return r;
}

/* A hard link of the file found (as the caller: the guest's protected_hardlinks rules apply). */
int op_link(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *from, *to;
	struct name n;
	struct stat st;
	int r;

	r = req_path(rq, "from", &from);
	if (r < 0)
		return r;
	r = expect_match(rq, from, obj_get(a, from, &fd, &st), &st);
	if (r < 0)
		return r;
	r = req_name(a, rq, "to", &to, &n);
	if (r < 0)
		return r;
	if (linkat(AT_FDCWD, fd_path(fd), n.dir, n.name, AT_SYMLINK_FOLLOW) == 0)
		r = reply_name_st(a, rq, reply, &n, to);
	else
		r = sys_fail(rq, "link", to);
	name_done(&n);
	return r;
}

int op_readlink(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	char target[PATH_MAX];
	const char *path;
	struct stat st;
	ssize_t n;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	if (!S_ISLNK(st.st_mode))
		return request_fail(rq, EINVAL, "%.200s: not a symlink", path);
	n = readlinkat(fd, "", target, sizeof(target));
	if (n < 0)
		return sys_fail(rq, "readlink", path);
	if ((size_t)n >= sizeof(target))
		return request_fail(rq, ENAMETOOLONG, "%.200s: target too long", path);
	json_object_object_add(reply, "target", json_object_new_string_len(target, (int)n));
	return 0;
}

/*
 * The guest's own resolution of an absolute path, as its kernel would
 * resolve it from its root: every symlink followed (at most 40), ".." the
 * parent of the directory reached, "/.." is "/". The host uses it to show
 * symlinks whose targets climb with "..": docs/interface.md.
 */
#define RESOLVE_MAX	(PATH_BYTES_MAX + 40 * PATH_MAX)

static int resolve_path(const char *path, char *out)
{
	static char rest[RESOLVE_MAX + 1], tmp[RESOLVE_MAX + 1], target[PATH_MAX];
	size_t cur = 0, links = 0;
	int r;

	snprintf(rest, sizeof(rest), "%s", path);
	out[0] = '\0';
	for (;;) {
		char *p = rest, *name, *next;
		size_t tn, nn;
		struct stat st;
		ssize_t n;

		while (*p == '/')
			p++;
		if (!*p)
			break;
		name = p;
		next = strchr(p, '/');
		if (next)
			*next++ = '\0';
		else
			next = p + strlen(p);
		if (!strcmp(name, ".")) {
			memmove(rest, next, strlen(next) + 1);
			continue;
		}
		if (!strcmp(name, "..")) {
			while (cur > 0 && out[--cur] != '/')
				;
			out[cur] = '\0';
			memmove(rest, next, strlen(next) + 1);
			continue;
		}
		if (cur + 1 + strlen(name) > RESOLVE_MAX)
			return -ENAMETOOLONG;
		out[cur] = '/';
		strcpy(out + cur + 1, name);
		r = stat_path(out, &st, AT_SYMLINK_NOFOLLOW);
		if (r < 0) {
			out[cur] = '\0';
			return r;
		}
		if (S_ISLNK(st.st_mode)) {
			struct at at;

			if (++links > 40)
				return -ELOOP;
			r = at_resolve(out, &at);
			n = r < 0 ? -1 : readlinkat(at.fd, at.rel, target, sizeof(target) - 1);
			if (r == 0 && n < 0)
				r = -errno;
			at_done(&at);
			if (r < 0)
				return r;
			target[n] = '\0';
			out[cur] = '\0';
			if (target[0] == '/')
				cur = 0, out[0] = '\0';
			tn = strlen(target);
			nn = strlen(next);
			if (tn + 1 + nn > RESOLVE_MAX)
				return -ENAMETOOLONG;
			memcpy(tmp, target, tn);
			tmp[tn] = '/';
			memcpy(tmp + tn + 1, next, nn + 1);
			memcpy(rest, tmp, tn + nn + 2);
			continue;
		}
		if (*next && !S_ISDIR(st.st_mode))
			return -ENOTDIR;
		cur += 1 + strlen(name);
		memmove(rest, next, strlen(next) + 1);
	}
	if (cur == 0)
		strcpy(out, "/");
	return 0;
}

int op_realpath(struct agent *a, struct request *rq, struct json_object *reply)
{
	static char out[RESOLVE_MAX + 2];
	const char *path;
	int r;

	(void)a;
	r = req_path(rq, "path", &path);
	if (r < 0)
		return r;
	r = resolve_path(path, out);
	if (r < 0)
		return request_fail(rq, -r, "%.200s: %s", path, strerror(-r));
	json_object_object_add(reply, "path", json_object_new_string(out));
	return 0;
}

int op_statfs(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct statfs sf;
	struct stat st;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	if (fstatfs(fd, &sf) < 0)
		return sys_fail(rq, "statfs", path);
	json_object_object_add(reply, "bsize", json_object_new_uint64(sf.f_bsize));
	json_object_object_add(reply, "frsize", json_object_new_uint64(sf.f_frsize));
	json_object_object_add(reply, "blocks", json_object_new_uint64(sf.f_blocks));
	json_object_object_add(reply, "bfree", json_object_new_uint64(sf.f_bfree));
	json_object_object_add(reply, "bavail", json_object_new_uint64(sf.f_bavail));
	json_object_object_add(reply, "files", json_object_new_uint64(sf.f_files));
	json_object_object_add(reply, "ffree", json_object_new_uint64(sf.f_ffree));
	json_object_object_add(reply, "namemax", json_object_new_uint64(sf.f_namelen));
	return 0;
}
