/*
 * The host-to-host protocol, serving side (peer.h): libmicrohttpd, one
 * thread per connection, every file operation on root + a checked relative
 * path as the caller's uid/gid.
 *
 * Wire format (HTTP/1.1; every request is a POST):
 *
 *   POST /v1/OP[/N...]             OP: stat readdir open read write fsync
 *                                  release mkdir rmdir unlink rename symlink
 *                                  readlink truncate chmod create
 *   X-Peer-Host: NAME              the caller's host name, [A-Za-z0-9._-]{1,255}
 *   X-Peer-Time: SECONDS           unix time, decimal
 *   X-Peer-Mac: HEX                HMAC-SHA256(secret, "NAME\nPOST\nURI\nSECONDS\n"
 *                                  + hex(sha256(body))), 64 lower-case hex digits
 *
 *   The server reads the body (keeps at most 8 MiB; beyond, or without the
 *   three headers, or past 256 MiB kept over all requests, it only hashes
 *   it; it closes the connection past 64 MiB), then checks the MAC
 *   (constant time) and the time (within 30 s of its clock) before it looks
 *   at anything else: 401 on failure. Then 413 (E2BIG) for a body it did
 *   not keep for its size, 503 (EAGAIN) for one over the budget. URI is the
 *   request's path as sent (no query string).
 *
 *   Handle ops take their arguments in the URI (decimal numbers), no JSON:
 *     read/HANDLE/OFF/SIZE   -> the bytes (application/octet-stream, at most
 *                               8 MiB; fewer than SIZE is not end of file,
 *                               none is): pread at OFF, read(2) on a stream
 *     write/HANDLE/OFF       body: the bytes -> {"n": COUNT}
 *     fsync/HANDLE, flush/HANDLE, release/HANDLE -> {}
 *   A handle belongs to the host that opened it (another host's is EBADF);
 *   ids are never reused (a random start, then a counter). Reads, writes
 *   and fsyncs run as the uid/gid that opened it. A read on a pipe, socket
 *   or device waits in poll and ends early when the server stops, the
 *   handle is released or forgotten (EBADF) or the caller hangs up; on a
 *   regular file (the mount's blocking files are) it is a plain pread,
 *   which ends with the mount.
 *
 *   Every other op takes a JSON object (at most 1 MiB) with exactly its keys:
 *     all but create: "uid", "gid" (the caller's credentials), "path"
 *     open:     "flags" (the wire's bits: access mode in bits 0-1, then
 *               creat excl trunc append nonblock directory nofollow noctty
 *               cloexec noatime dsync sync from bit 2 up), "mode"
 *               -> {"handle": N}
 *     mkdir:    "mode"; chmod: "mode"; truncate: "size"
 *     rename:   "to"; symlink: "target" (the link's text, any bytes but NUL)
 *     stat      -> {"mode","size","nlink","uid","gid","atime","atime_ns",
 *                   "mtime","mtime_ns","ctime","ctime_ns"} (lstat: a final
 *                   symlink is not followed)
 *     readdir   -> {"entries": [{"name": N, "mode": M}, ...]} (no . and ..)
 *     readlink  -> {"target": T}
 *     destroy:  as create, json {"name": N}: the sandbox destroyed there (hooks.destroy)
 *     create:   "uid", "gid", "tpl" (a template name), "json" (the create
 *               file's text as a string) -> {} or an error with the reason
 *   Paths are relative to root: at most 4096 bytes, no NUL, no leading "/",
 *   no empty, "." or ".." component; "" is root itself. Every path is
 *   resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from a
 *   directory fd of root, so a symlink cannot lead out of it: one that
 *   would (absolute, or climbing above root) fails with EXDEV.
 *
 *   Success is 200. An error is a non-200 status (400 EINVAL, 401 the
 *   authentication, 403 EACCES/EPERM, 404 ENOENT/ENOSYS, 409 EEXIST, 413
 *   E2BIG, 500 otherwise) with {"errno": N, "error": "text"} (Linux's
 *   errno numbers); the client returns -N (-EACCES for a 401). The channel
 *   is not encrypted.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/openat2.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/fsuid.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>

#include "peer.h"
#include "peer_wire.h"

#define THREAD_STACK (256 * 1024)
#define HANDLES_PER_HOST 4096
#define HANDLE_BUCKETS 256
/* an unauthenticated body this large is not read to its end: the connection is closed */
#define DROP_MAX (64u << 20)
/* request bodies held at once, over every connection: what unauthenticated callers can make the server keep */
#define BUFFER_BUDGET (256u << 20)
#define MAX_GROUPS 256
#define IDLE_TIMEOUT_S 120

struct handle {
	uint64_t id;
	int fd;
	/*
	 * A pipe, socket or device: a read waits in poll, with the server's
	 * stop fd beside it. Not a regular file: on the mount that poll would
	 * be one more FUSE request per read, and a read blocked there ends
	 * with the mount (peer.h).
	 */
	bool wait_in_poll;
	int wake_fd; /* pipe-like handles: an eventfd written when the handle leaves the table, ending a waiting read */
	/* the opener's credentials: its reads and writes reach the mount as it (FUSE sees every request's uid) */
	uid_t uid;
	gid_t gid;
	char *host;
	char *path;      /* for logs */
	unsigned refs;   /* protected by ps->lock: the table's one, plus one per request using it */
	struct handle *next; /* protected by ps->lock: the bucket's chain */
};

struct host_count {
	char *host;
	unsigned n; /* protected by ps->lock */
	struct host_count *next;
};

struct peer_server {
	struct MHD_Daemon *mhd;
	char *root; /* opened per operation: a descriptor kept on the mount would make `fusermount3 -u` fail (EBUSY) */
	int stop_fd; /* an eventfd: readable once the server stops (a poll on it ends a blocked read) */
	uint8_t *secret;
	size_t secret_len;
	struct peer_server_hooks hooks;
	unsigned port;
	size_t buffered; /* atomic: bytes of request bodies held (BUFFER_BUDGET) */
	/* the daemon's supplementary groups, restored after each operation (when it may set them) */
	gid_t groups[MAX_GROUPS];
	int n_groups;
	bool set_groups;
	pthread_mutex_t lock;
	uint64_t next_id;		      /* protected by lock */
	struct handle *buckets[HANDLE_BUCKETS]; /* protected by lock */
	struct host_count *hosts;	      /* protected by lock */
};

/* One request as it arrives. */
struct req {
	struct sha256_ctx sha;
	char *body;
	size_t len, cap, total;
	/*
	 * The body is hashed, not kept: 401 (the authentication headers are
	 * missing, the answer will be 401), 413 (larger than PEER_BODY_MAX),
	 * 503 (the server holds BUFFER_BUDGET already).
	 */
	unsigned not_kept;
};

/* ---- replies ---- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, void *data, size_t len,
			     const char *type)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result r;

	if (!resp) {
		free(data);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result reply_json(struct MHD_Connection *conn, unsigned status, json_object *o)
{
	const char *s = o ? json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN) : NULL;
	char *copy = s ? strdup(s) : NULL;

	json_object_put(o);
	if (!copy)
		return MHD_NO;
	return reply(conn, status, copy, strlen(copy), "application/json");
}

static unsigned status_of(int err)
{
	switch (err) {
	case EINVAL:
		return MHD_HTTP_BAD_REQUEST;
	case EACCES:
	case EPERM:
		return MHD_HTTP_FORBIDDEN;
	case ENOENT:
	case ENOSYS:
		return MHD_HTTP_NOT_FOUND;
	case EEXIST:
		return MHD_HTTP_CONFLICT;
	case E2BIG:
		return MHD_HTTP_CONTENT_TOO_LARGE;
	default:
		return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

/* {"errno": N, "error": text}; status 0: the one status_of gives. */
static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, int neg_errno, const char *text)
{
	json_object *o = json_object_new_object();

	if (!o)
		return MHD_NO;
	json_object_object_add(o, "errno", json_object_new_int(-neg_errno));
	json_object_object_add(o, "error", json_object_new_string(text ? text : strerror(-neg_errno)));
	return reply_json(conn, status ? status : status_of(-neg_errno), o);
}

static enum MHD_Result reply_ok(struct MHD_Connection *conn, json_object *o)
{
	if (!o)
		return reply_error(conn, 0, -ENOMEM, NULL);
	return reply_json(conn, MHD_HTTP_OK, o);
}

/* ---- the caller's credentials on this thread ---- */

struct saved_cred {
	uid_t uid;
	gid_t gid;
};

/*
 * setfsuid/setfsgid act on the calling thread only (the raw setgroups
 * system call too; glibc's would change every thread). The supplementary
 * groups are dropped for the operation: the caller's own are not sent, and
 * the daemon's (root's group 0) must not lend it their permissions.
 */
static int cred_enter(struct peer_server *ps, uid_t uid, gid_t gid, struct saved_cred *s)
{
	if (ps->set_groups && syscall(SYS_setgroups, 0, NULL) < 0)
		return -errno;
	s->gid = (gid_t)setfsgid(gid);
	s->uid = (uid_t)setfsuid(uid);
	if ((uid_t)setfsuid((uid_t)-1) != uid || (gid_t)setfsgid((gid_t)-1) != gid) {
		setfsuid(s->uid);
		setfsgid(s->gid);
		if (ps->set_groups)
			syscall(SYS_setgroups, (size_t)ps->n_groups, ps->groups);
		return -EPERM; /* a daemon that is not root serves only its own uid */
	}
	return 0;
}

static void cred_leave(struct peer_server *ps, const struct saved_cred *s)
{
	int saved = errno;

	setfsuid(s->uid);
	setfsgid(s->gid);
	if (ps->set_groups)
		syscall(SYS_setgroups, (size_t)ps->n_groups, ps->groups);
	errno = saved;
}

/* ---- paths, beneath root ---- */

static int open_beneath(struct peer_server *ps, const char *path, int flags, mode_t mode)
{
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC),
		.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
	};
	long fd;
	int root = open(ps->root, O_PATH | O_DIRECTORY | O_CLOEXEC), err;

	if (root < 0)
		return -errno;
	if (!*path)
		path = ".";
	do
		fd = syscall(SYS_openat2, root, path, &how, sizeof(how));
	while (fd < 0 && errno == EINTR);
	err = errno;
	close(root);
	return fd < 0 ? -err : (int)fd;
}

/*
 * The parent directory of path (an O_PATH fd) and its last component:
 * the ops that act on a name (mkdir, unlink, rename ...) use the *at call
 * on it, so only the parent is resolved and the name is one checked
 * component. "" (root itself) has no name: -EINVAL.
 */
static int open_parent(struct peer_server *ps, const char *path, const char **ret_name)
{
	const char *slash = strrchr(path, '/');
	_cleanup_free_ char *dir = NULL;

	if (!*path)
		return -EINVAL;
	if (!slash) {
		*ret_name = path;
		return open_beneath(ps, "", O_PATH | O_DIRECTORY, 0);
	}
	dir = strndup(path, (size_t)(slash - path));
	if (!dir)
		return -ENOMEM;
	*ret_name = slash + 1;
	return open_beneath(ps, dir, O_PATH | O_DIRECTORY, 0);
}

/* ---- handles ---- */

static struct host_count *host_count_get(struct peer_server *ps, const char *host, bool make)
{
	struct host_count *h;

	for (h = ps->hosts; h; h = h->next)
		if (strcmp(h->host, host) == 0)
			return h;
	if (!make || !(h = calloc(1, sizeof(*h))) || !(h->host = strdup(host))) {
		free(h);
		return NULL;
	}
	h->next = ps->hosts;
	ps->hosts = h;
	return h;
}

static void handle_free(struct handle *h)
{
	if (!h)
		return;
	if (h->fd >= 0)
		close(h->fd);
	if (h->wake_fd >= 0)
		close(h->wake_fd);
	free(h->host);
	free(h->path);
	free(h);
}

/* Adds an open fd to the table (taking it, also on failure). */
static int handle_add(struct peer_server *ps, const struct peer_wire_req *w, const char *host, int fd,
		      uint64_t *ret_id)
{
	struct handle *h = calloc(1, sizeof(*h));
	struct host_count *hc;
	struct stat st;
	int r = 0;

	if (!h) {
		close(fd);
		return -ENOMEM;
	}
	h->fd = fd;
	h->wake_fd = -1;
	h->refs = 1;
	h->uid = w->uid;
	h->gid = w->gid;
	if (fstat(fd, &st) == 0)
		h->wait_in_poll = S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode);
	if (h->wait_in_poll && (h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
		r = -errno;
		handle_free(h);
		return r;
	}
	if (!(h->host = strdup(host)) || !(h->path = strdup(w->path))) {
		handle_free(h);
		return -ENOMEM;
	}
	pthread_mutex_lock(&ps->lock);
	hc = host_count_get(ps, host, true);
	if (!hc)
		r = -ENOMEM;
	else if (hc->n >= HANDLES_PER_HOST)
		r = -EMFILE;
	else {
		hc->n++;
		h->id = ps->next_id++;
		h->next = ps->buckets[h->id % HANDLE_BUCKETS];
		ps->buckets[h->id % HANDLE_BUCKETS] = h;
		*ret_id = h->id;
	}
	pthread_mutex_unlock(&ps->lock);
	if (r < 0)
		handle_free(h);
	return r;
}

/* The handle id of host, with a reference (handle_put), or NULL. */
static struct handle *handle_get(struct peer_server *ps, const char *host, uint64_t id)
{
	struct handle *h;

	pthread_mutex_lock(&ps->lock);
	for (h = ps->buckets[id % HANDLE_BUCKETS]; h; h = h->next)
		if (h->id == id && strcmp(h->host, host) == 0) {
			h->refs++;
			break;
		}
	pthread_mutex_unlock(&ps->lock);
	return h;
}

static void handle_put(struct peer_server *ps, struct handle *h)
{
	bool last;

	pthread_mutex_lock(&ps->lock);
	last = --h->refs == 0;
	pthread_mutex_unlock(&ps->lock);
	/* the fd closes only once no request reads it any more (its number is never reused under a read) */
	if (last)
		handle_free(h);
}

/* Unlinks h from the table; the caller puts the table's reference. Called with ps->lock held. */
static void handle_unlink_locked(struct peer_server *ps, struct handle *h)
{
	struct handle **pp = &ps->buckets[h->id % HANDLE_BUCKETS];
	struct host_count *hc = host_count_get(ps, h->host, false);

	while (*pp != h)
		pp = &(*pp)->next;
	*pp = h->next;
	if (h->wake_fd >= 0)
		eventfd_write(h->wake_fd, 1);
	if (hc)
		hc->n--;
}

/* Removes host's handle id from the table: 0 or -EBADF. */
static int handle_remove(struct peer_server *ps, const char *host, uint64_t id)
{
	struct handle *h;

	pthread_mutex_lock(&ps->lock);
	for (h = ps->buckets[id % HANDLE_BUCKETS]; h; h = h->next)
		if (h->id == id && strcmp(h->host, host) == 0)
			break;
	if (h)
		handle_unlink_locked(ps, h);
	pthread_mutex_unlock(&ps->lock);
	if (!h)
		return -EBADF;
	handle_put(ps, h);
	return 0;
}

/* Removes every handle of host (NULL: every handle), putting the table's references. */
static void handles_drop(struct peer_server *ps, const char *host)
{
	struct handle *list = NULL, *h, *next;

	pthread_mutex_lock(&ps->lock);
	for (size_t b = 0; b < HANDLE_BUCKETS; b++)
		for (h = ps->buckets[b]; h; h = next) {
			next = h->next;
			if (host && strcmp(h->host, host) != 0)
				continue;
			handle_unlink_locked(ps, h);
			h->next = list;
			list = h;
		}
	pthread_mutex_unlock(&ps->lock);
	for (h = list; h; h = next) {
		next = h->next;
		log_debug("peer: closing %s's handle %" PRIu64 " (%s)", h->host, h->id, h->path);
		handle_put(ps, h);
	}
}

void peer_server_forget(struct peer_server *ps, const char *host)
{
	if (ps && host)
		handles_drop(ps, host);
}

/* ---- operations ---- */

struct op_ctx {
	struct peer_server *ps;
	struct MHD_Connection *conn;
	const char *host;
	struct peer_wire_req *w;
	const char *body; /* write's data */
	size_t len;
};

static json_object *stat_json(const struct stat *st)
{
	json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	json_object_object_add(o, "mode", json_object_new_int64(st->st_mode));
	json_object_object_add(o, "size", json_object_new_int64(st->st_size));
	json_object_object_add(o, "nlink", json_object_new_int64((int64_t)st->st_nlink));
	json_object_object_add(o, "uid", json_object_new_int64(st->st_uid));
	json_object_object_add(o, "gid", json_object_new_int64(st->st_gid));
	json_object_object_add(o, "atime", json_object_new_int64(st->st_atim.tv_sec));
	json_object_object_add(o, "atime_ns", json_object_new_int64(st->st_atim.tv_nsec));
	json_object_object_add(o, "mtime", json_object_new_int64(st->st_mtim.tv_sec));
	json_object_object_add(o, "mtime_ns", json_object_new_int64(st->st_mtim.tv_nsec));
	json_object_object_add(o, "ctime", json_object_new_int64(st->st_ctim.tv_sec));
	json_object_object_add(o, "ctime_ns", json_object_new_int64(st->st_ctim.tv_nsec));
	return o;
}

static int op_stat(struct op_ctx *c, json_object **ret)
{
	_cleanup_close_ int fd = open_beneath(c->ps, c->w->path, O_PATH | O_NOFOLLOW, 0);
	struct stat st;

	if (fd < 0)
		return fd;
	if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	*ret = stat_json(&st);
	return 0;
}

static void closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

static int op_readdir(struct op_ctx *c, json_object **ret)
{
	int fd = open_beneath(c->ps, c->w->path, O_RDONLY | O_DIRECTORY, 0);
	_cleanup_(closedirp) DIR *d = NULL;
	_cleanup_(peer_json_putp) json_object *o = json_object_new_object();
	json_object *a = json_object_new_array();
	struct dirent *de;

	if (!o || !a || json_object_object_add(o, "entries", a) < 0) {
		json_object_put(a);
		if (fd >= 0)
			close(fd);
		return -ENOMEM;
	}
	if (fd < 0)
		return fd;
	if (!(d = fdopendir(fd))) {
		close(fd);
		return -errno;
	}
	while ((errno = 0, de = readdir(d))) {
		struct stat st;
		json_object *e;
		mode_t mode;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			mode = st.st_mode;
		else if (de->d_type != DT_UNKNOWN)
			mode = DTTOIF(de->d_type); /* gone since: its type only */
		else
			continue;
		if (!(e = json_object_new_object()) || json_object_array_add(a, e) < 0) {
			json_object_put(e);
			return -ENOMEM;
		}
		json_object_object_add(e, "name", json_object_new_string(de->d_name));
		json_object_object_add(e, "mode", json_object_new_int64(mode));
	}
	if (errno)
		return -errno;
	*ret = TAKE_PTR(o);
	return 0;
}

static int op_open(struct op_ctx *c, json_object **ret)
{
	uint64_t id = 0;
	int fd = open_beneath(c->ps, c->w->path, c->w->flags, c->w->mode), r;

	if (fd < 0)
		return fd;
	r = handle_add(c->ps, c->w, c->host, fd, &id);
	if (r < 0)
		return r;
	if (!(*ret = json_object_new_object()))
		return -ENOMEM; /* the handle stays until the host is forgotten: never reached in practice */
	json_object_object_add(*ret, "handle", json_object_new_int64((int64_t)id));
	return 0;
}

static int op_mkdir(struct op_ctx *c, json_object **ret)
{
	const char *name;
	_cleanup_close_ int dfd = open_parent(c->ps, c->w->path, &name);

	if (dfd < 0)
		return dfd;
	return mkdirat(dfd, name, c->w->mode) < 0 ? -errno : 0;
}

static int op_unlink(struct op_ctx *c, json_object **ret)
{
	const char *name;
	_cleanup_close_ int dfd = open_parent(c->ps, c->w->path, &name);

	if (dfd < 0)
		return dfd;
	return unlinkat(dfd, name, c->w->op == PEER_OP_RMDIR ? AT_REMOVEDIR : 0) < 0 ? -errno : 0;
}

static int op_rename(struct op_ctx *c, json_object **ret)
{
	const char *from, *to;
	_cleanup_close_ int f = open_parent(c->ps, c->w->path, &from);
	_cleanup_close_ int t = f < 0 ? -1 : open_parent(c->ps, c->w->to, &to);

	if (f < 0)
		return f;
	if (t < 0)
		return t;
	return renameat(f, from, t, to) < 0 ? -errno : 0;
}

static int op_symlink(struct op_ctx *c, json_object **ret)
{
	const char *name;
	_cleanup_close_ int dfd = open_parent(c->ps, c->w->path, &name);

	if (dfd < 0)
		return dfd;
	return symlinkat(c->w->target, dfd, name) < 0 ? -errno : 0;
}

static int op_readlink(struct op_ctx *c, json_object **ret)
{
	const char *name;
	_cleanup_close_ int dfd = open_parent(c->ps, c->w->path, &name);
	char buf[PEER_PATH_MAX + 1];
	ssize_t n;

	if (dfd < 0)
		return dfd;
	n = readlinkat(dfd, name, buf, sizeof(buf));
	if (n < 0)
		return -errno;
	if ((size_t)n > PEER_PATH_MAX)
		return -ENAMETOOLONG;
	if (!(*ret = json_object_new_object()))
		return -ENOMEM;
	json_object_object_add(*ret, "target", json_object_new_string_len(buf, (int)n));
	return 0;
}

/*
 * truncate and chmod follow a final symlink (as truncate(2) and chmod(2)),
 * beneath root only; the O_PATH fd is then named through /proc, which
 * checks permissions as the calls on a path do.
 */
static int op_setattr(struct op_ctx *c, json_object **ret)
{
	_cleanup_close_ int fd = open_beneath(c->ps, c->w->path, O_PATH, 0);
	char p[64];
	int r;

	if (fd < 0)
		return fd;
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	if (c->w->op == PEER_OP_TRUNCATE)
		r = truncate(p, (off_t)c->w->size);
	else
		r = chmod(p, c->w->mode);
	return r < 0 ? -errno : 0;
}

/*
 * Waits until a pipe-like handle is readable (a read that may block for
 * minutes), or ends the wait: the server stops (-ESHUTDOWN), the handle is
 * released or its host forgotten (-EBADF), the caller hangs up (sock, the
 * request's connection: -ECONNABORTED).
 */
static int wait_readable(struct peer_server *ps, const struct handle *h, int sock)
{
	struct pollfd p[4] = {
		{.fd = h->fd, .events = POLLIN},
		{.fd = ps->stop_fd, .events = POLLIN},
		{.fd = h->wake_fd, .events = POLLIN},
		{.fd = sock, .events = POLLRDHUP},
	};
	int fl;

	if (!h->wait_in_poll)
		return 0;
	fl = fcntl(h->fd, F_GETFL);
	if (fl >= 0 && (fl & O_NONBLOCK))
		return 0; /* opened non-blocking: the caller wants EAGAIN, not a wait */
	while (poll(p, ARRAY_SIZE(p), -1) < 0)
		if (errno != EINTR)
			return -errno;
	if (p[1].revents)
		return -ESHUTDOWN;
	if (p[2].revents)
		return -EBADF;
	if (p[3].revents & (POLLRDHUP | POLLHUP | POLLERR))
		return -ECONNABORTED;
	return 0; /* readable, or an error or hang-up the read reports */
}

static enum MHD_Result op_read(struct op_ctx *c)
{
	struct handle *h = handle_get(c->ps, c->host, c->w->handle);
	size_t size = c->w->size < PEER_BODY_MAX ? (size_t)c->w->size : PEER_BODY_MAX;
	struct saved_cred s = {0};
	const union MHD_ConnectionInfo *info;
	char *buf;
	ssize_t n = 0;
	int r;

	if (!h)
		return reply_error(c->conn, 0, -EBADF, "no such handle");
	buf = malloc(size ? size : 1);
	if (!buf) {
		handle_put(c->ps, h);
		return reply_error(c->conn, 0, -ENOMEM, NULL);
	}
	info = MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	r = wait_readable(c->ps, h, info ? info->connect_fd : -1);
	if (r == 0)
		r = cred_enter(c->ps, h->uid, h->gid, &s);
	if (r == 0) {
		do
			n = pread(h->fd, buf, size, (off_t)c->w->off);
		while (n < 0 && errno == EINTR);
		if (n < 0 && errno == ESPIPE) /* a stream: the offset means nothing */
			do
				n = read(h->fd, buf, size);
			while (n < 0 && errno == EINTR);
		r = n < 0 ? -errno : 0;
		cred_leave(c->ps, &s);
	}
	handle_put(c->ps, h);
	if (r < 0) {
		free(buf);
		return reply_error(c->conn, 0, r, NULL);
	}
	return reply(c->conn, MHD_HTTP_OK, buf, (size_t)n, "application/octet-stream");
}

static int op_write(struct op_ctx *c, json_object **ret)
{
	struct handle *h = handle_get(c->ps, c->host, c->w->handle);
	struct saved_cred s = {0};
	ssize_t n;
	int r;

	if (!h)
		return -EBADF;
	if ((r = cred_enter(c->ps, h->uid, h->gid, &s)) < 0) {
		handle_put(c->ps, h);
		return r;
	}
	do
		n = pwrite(h->fd, c->body, c->len, (off_t)c->w->off);
	while (n < 0 && errno == EINTR);
	if (n < 0 && errno == ESPIPE)
		do
			n = write(h->fd, c->body, c->len);
		while (n < 0 && errno == EINTR);
	cred_leave(c->ps, &s);
	handle_put(c->ps, h);
	if (n < 0)
		return -errno;
	if (!(*ret = json_object_new_object()))
		return -ENOMEM;
	json_object_object_add(*ret, "n", json_object_new_int64(n));
	return 0;
}

static int op_fsync(struct op_ctx *c, json_object **ret)
{
	struct handle *h = handle_get(c->ps, c->host, c->w->handle);
	struct saved_cred s = {0};
	int r;

	if (!h)
		return -EBADF;
	if ((r = cred_enter(c->ps, h->uid, h->gid, &s)) == 0) {
		/* EINVAL: a pipe or special file, nothing to sync */
		r = fsync(h->fd) < 0 && errno != EINVAL ? -errno : 0;
		cred_leave(c->ps, &s);
	}
	handle_put(c->ps, h);
	return r;
}

/*
 * flush: what close(2) does to the mount's file, without closing it: a
 * close of a duplicate makes the kernel send FLUSH (a settings file is
 * applied, a write-only exec runs) and returns its error.
 */
static int op_flush(struct op_ctx *c, json_object **ret)
{
	struct handle *h = handle_get(c->ps, c->host, c->w->handle);
	struct saved_cred s = {0};
	int r, d;

	if (!h)
		return -EBADF;
	if ((r = cred_enter(c->ps, h->uid, h->gid, &s)) == 0) {
		d = fcntl(h->fd, F_DUPFD_CLOEXEC, 0);
		r = d < 0 ? -errno : close(d) < 0 && errno != EINTR ? -errno : 0;
		cred_leave(c->ps, &s);
	}
	handle_put(c->ps, h);
	return r;
}

static int op_release(struct op_ctx *c, json_object **ret)
{
	return handle_remove(c->ps, c->host, c->w->handle);
}

static enum MHD_Result op_create(struct op_ctx *c)
{
	_cleanup_free_ char *reason = NULL;
	int r;

	int (*fn)(void *, const char *, const char *, size_t, uid_t, gid_t, char **) =
		c->w->op == PEER_OP_DESTROY ? c->ps->hooks.destroy : c->ps->hooks.create;

	if (!fn)
		return reply_error(c->conn, 0, -ENOSYS, "this host takes no creates or destroys");
	r = fn(c->ps->hooks.ctx, c->w->tpl, c->w->json, c->w->json_len, c->w->uid, c->w->gid, &reason);
	if (r < 0)
		return reply_error(c->conn, 0, r, reason);
	return reply_ok(c->conn, json_object_new_object());
}

typedef int (*op_fn)(struct op_ctx *c, json_object **ret);
static const struct {
	op_fn fn;
	bool as_caller; /* runs with the request's fsuid/fsgid */
} op_table[PEER_OP__N] = {
	[PEER_OP_STAT] = {op_stat, true},	  [PEER_OP_READDIR] = {op_readdir, true},
	[PEER_OP_OPEN] = {op_open, true},	  [PEER_OP_WRITE] = {op_write, false},
	[PEER_OP_FSYNC] = {op_fsync, false},	  [PEER_OP_FLUSH] = {op_flush, false},	  [PEER_OP_RELEASE] = {op_release, false},
	[PEER_OP_MKDIR] = {op_mkdir, true},	  [PEER_OP_RMDIR] = {op_unlink, true},
	[PEER_OP_UNLINK] = {op_unlink, true},	  [PEER_OP_RENAME] = {op_rename, true},
	[PEER_OP_SYMLINK] = {op_symlink, true},	  [PEER_OP_READLINK] = {op_readlink, true},
	[PEER_OP_TRUNCATE] = {op_setattr, true},  [PEER_OP_CHMOD] = {op_setattr, true},
	/* read and create reply themselves (bytes; the hook's reason) */
};

static enum MHD_Result run(struct op_ctx *c)
{
	json_object *out = NULL;
	struct saved_cred s = {0};
	int r;

	if (c->w->op == PEER_OP_READ)
		return op_read(c);
	if (c->w->op == PEER_OP_CREATE || c->w->op == PEER_OP_DESTROY)
		return op_create(c);
	if (op_table[c->w->op].as_caller && (r = cred_enter(c->ps, c->w->uid, c->w->gid, &s)) < 0)
		return reply_error(c->conn, 0, r, "cannot take the caller's credentials");
	r = op_table[c->w->op].fn(c, &out);
	if (op_table[c->w->op].as_caller)
		cred_leave(c->ps, &s);
	if (r < 0) {
		json_object_put(out);
		return reply_error(c->conn, 0, r, NULL);
	}
	return reply_ok(c->conn, out ? out : json_object_new_object());
}

/* ---- the HTTP side ---- */

static enum MHD_Result serve(struct peer_server *ps, struct MHD_Connection *conn, const char *url, const char *method,
			     struct req *q)
{
	const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PEER_HDR_HOST);
	const char *why;
	uint8_t sha[SHA256_LEN];
	struct peer_wire_req w;
	struct op_ctx c = {.ps = ps, .conn = conn, .host = host};
	enum MHD_Result res;
	int r;

	sha256_final(&q->sha, sha);
	r = peer_wire_auth_check(ps->secret, ps->secret_len, host, method, url,
				 MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PEER_HDR_TIME),
				 MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PEER_HDR_MAC), sha,
				 (int64_t)time(NULL), &why);
	if (r < 0) {
		/* the URI and a bad name are the caller's bytes: not into the log */
		log_debug("peer: a request from %s refused: %s", peer_wire_host_ok(host) ? host : "?", why);
		return reply_error(conn, MHD_HTTP_UNAUTHORIZED, -EACCES, why);
	}
	if (q->not_kept == MHD_HTTP_CONTENT_TOO_LARGE)
		return reply_error(conn, 0, -E2BIG, "the body is larger than 8 MiB");
	if (q->not_kept)
		return reply_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE, -EAGAIN,
				   "the server holds too many request bodies: try again");
	if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
		return reply_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, -EINVAL, "every request is a POST");
	r = peer_wire_req_decode(url, q->body, q->len, &w, &why);
	if (r == 0) {
		c.w = &w;
		c.body = q->body;
		c.len = q->len;
		res = run(&c);
	} else {
		res = reply_error(conn, 0, r, why);
	}
	peer_wire_req_done(&w);
	return res;
}

/* Keeps n more bytes of q's body, within the server's budget: 0, or the status that refuses the body. */
static unsigned body_keep(struct peer_server *ps, struct req *q, const char *data, size_t n)
{
	if (q->len + n > PEER_BODY_MAX)
		return MHD_HTTP_CONTENT_TOO_LARGE;
	if (q->len + n > q->cap) {
		size_t cap = q->cap ? q->cap : 4096, more;
		char *b;

		while (cap < q->len + n)
			cap *= 2;
		more = cap - q->cap;
		if (__atomic_add_fetch(&ps->buffered, more, __ATOMIC_RELAXED) > BUFFER_BUDGET ||
		    !(b = realloc(q->body, cap))) {
			__atomic_sub_fetch(&ps->buffered, more, __ATOMIC_RELAXED);
			return MHD_HTTP_SERVICE_UNAVAILABLE;
		}
		q->body = b;
		q->cap = cap;
	}
	memcpy(q->body + q->len, data, n);
	q->len += n;
	return 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			       const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	struct peer_server *ps = cls;
	struct req *q = *con_cls;

	if (!q) {
		if (!(q = calloc(1, sizeof(*q))))
			return MHD_NO;
		sha256_init(&q->sha);
		/* no body is kept for a request that cannot pass (the MAC waits for the body) */
		if (!peer_wire_host_ok(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PEER_HDR_HOST)) ||
		    !MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PEER_HDR_TIME) ||
		    !MHD_lookup_connection_value(conn, MHD_HEADER_KIND, PEER_HDR_MAC))
			q->not_kept = MHD_HTTP_UNAUTHORIZED;
		*con_cls = q;
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;

		*upload_data_size = 0;
		q->total += n;
		if (q->total > DROP_MAX)
			return MHD_NO;
		sha256_update(&q->sha, upload_data, n);
		/* hashed, and kept if it may be: the answer comes once the MAC is checked */
		if (!q->not_kept)
			q->not_kept = body_keep(ps, q, upload_data, n);
		return MHD_YES;
	}
	return serve(ps, conn, url, method, q);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct peer_server *ps = cls;
	struct req *q = *con_cls;

	if (q) {
		__atomic_sub_fetch(&ps->buffered, q->cap, __ATOMIC_RELAXED);
		free(q->body);
	}
	free(q);
	*con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char m[512];
	size_t n;

	vsnprintf(m, sizeof(m), fmt, ap);
	n = strlen(m);
	while (n && m[n - 1] == '\n')
		m[--n] = 0;
	log_debug("peer: http: %s", m);
}

/* "HOST:PORT", "[V6]:PORT". */
static int addr_parse(const char *s, struct sockaddr_storage *ss, bool *v6)
{
	const char *colon = strrchr(s, ':');
	_cleanup_free_ char *host = NULL;
	unsigned long port;
	char *end;
	size_t n;

	if (!colon || colon == s)
		return -EINVAL;
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (!colon[1] || *end || errno || port > 65535)
		return -EINVAL;
	if (!(host = strndup(s, (size_t)(colon - s))))
		return -ENOMEM;
	n = strlen(host);
	memset(ss, 0, sizeof(*ss));
	*v6 = n > 2 && host[0] == '[' && host[n - 1] == ']';
	if (*v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

		host[n - 1] = 0;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -EINVAL;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;

	a->sin_family = AF_INET;
	a->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -EINVAL;
}

static int server_init(struct peer_server *ps, const char *root, const void *secret, size_t secret_len,
		       const struct peer_server_hooks *hooks)
{
	uint64_t base;

	if (secret_len == 0)
		return -EINVAL;
	{
		int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);

		if (fd < 0)
			return -errno;
		close(fd);
	}
	if (!(ps->root = strdup(root)))
		return -ENOMEM;
	ps->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ps->stop_fd < 0)
		return -errno;
	if (!(ps->secret = malloc(secret_len)))
		return -ENOMEM;
	memcpy(ps->secret, secret, secret_len);
	ps->secret_len = secret_len;
	if (hooks)
		ps->hooks = *hooks;
	/*
	 * Handle ids: a random start, then a counter (never reused), so a
	 * client holding a handle of an earlier server process gets EBADF, not
	 * some other file.
	 */
	if (getrandom(&base, sizeof(base), 0) != (ssize_t)sizeof(base))
		return -EIO;
	ps->next_id = (base >> 2) + 1; /* below 2^62: room to count, and JSON's int64 holds it */
	ps->n_groups = getgroups(MAX_GROUPS, ps->groups);
	/* only where the thread may set them back (root); elsewhere they stay */
	ps->set_groups = ps->n_groups >= 0 && geteuid() == 0;
	return 0;
}

int peer_server_start(const char *listen_addr, const char *root, const void *secret, size_t secret_len,
		      const struct peer_server_hooks *hooks, struct peer_server **ret)
{
	struct peer_server *ps = calloc(1, sizeof(*ps));
	struct sockaddr_storage ss;
	const union MHD_DaemonInfo *info;
	bool v6 = false;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
			 MHD_USE_ERROR_LOG;
	int r;

	if (!ps)
		return -ENOMEM;
	ps->stop_fd = -1;
	pthread_mutex_init(&ps->lock, NULL);
	r = addr_parse(listen_addr, &ss, &v6);
	if (r == 0)
		r = server_init(ps, root, secret, secret_len, hooks);
	if (r < 0) {
		peer_server_stop(ps);
		return r;
	}
	if (v6)
		flags |= MHD_USE_IPv6;
	ps->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handler, ps, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				   MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED,
				   completed, ps, MHD_OPTION_THREAD_STACK_SIZE, (size_t)THREAD_STACK,
				   MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096, MHD_OPTION_CONNECTION_TIMEOUT,
				   (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_END);
	if (!ps->mhd) {
		peer_server_stop(ps);
		return -EADDRINUSE;
	}
	info = MHD_get_daemon_info(ps->mhd, MHD_DAEMON_INFO_BIND_PORT);
	ps->port = info ? info->port : 0;
	*ret = ps;
	return 0;
}

unsigned peer_server_port(struct peer_server *ps)
{
	return ps ? ps->port : 0;
}

void peer_server_stop(struct peer_server *ps)
{
	struct host_count *h, *next;

	if (!ps)
		return;
	if (ps->stop_fd >= 0 && eventfd_write(ps->stop_fd, 1) < 0)
		log_debug("peer: cannot wake blocked reads: %m");
	/* joins every connection thread: reads waiting in poll have ended above */
	if (ps->mhd)
		MHD_stop_daemon(ps->mhd);
	handles_drop(ps, NULL);
	for (h = ps->hosts; h; h = next) {
		next = h->next;
		free(h->host);
		free(h);
	}
	free(ps->root);
	if (ps->stop_fd >= 0)
		close(ps->stop_fd);
	free(ps->secret);
	pthread_mutex_destroy(&ps->lock);
	free(ps);
}
