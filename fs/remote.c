/*
 * templates/T/sandboxes/NAME/... and live/NAME/... of a sandbox that runs on
 * another host of the cluster: remote.c is to the peers what live.c is to a
 * guest. Every file operation under such a directory is forwarded
 * (cluster/peer.h) to the peer server of the sandbox's host, which performs
 * the same operation on its own mount as the caller (uid, gid): what a user
 * reads here is byte for byte what a user on that host reads, for every
 * file (status, wait, exec, procs/, ctl, live/ ...) with one mechanism.
 *
 * Nodes. One per path the kernel knows (paths are relative to the mount and
 * the same on every host), made at the first lookup, dropped when the
 * kernel forgets it; the same path looked up again while known is the same
 * inode (unless its type changed: then a new one). Our own removals detach
 * the path, renames move it (as live.c does). Nothing is cached: attribute
 * and entry timeouts are 0, files are direct_io, and each operation asks
 * the cluster where the sandbox runs now (cluster_sandbox_where), so a
 * moved or lost sandbox is seen at once. st_ino is ours, never the peer's
 * (the peer's numbers could collide with this mount's).
 *
 * Lost sandboxes (their host's lease is gone): every operation answers
 * EHOSTDOWN but the sandbox directory's own stat and listing (one file,
 * status) and that status file, rendered here (cluster_render_lost);
 * live/N stats as a directory too (so listing live/ shows it) and lists EHOSTDOWN.
 *
 * Not forwarded:
 *  - poll: every remote file answers always readable and writable (the
 *    read itself blocks on the peer); POLLPRI, a local status file's
 *    "changed", never comes.
 *  - hard links, mknod of anything but a regular file, chown (EPERM);
 *    times (accepted and ignored, as the mount's own files do); rename
 *    flags (EINVAL).
 *  - interrupts: a read blocked on the peer (a process's output, wait)
 *    holds its FUSE worker until the peer answers (peer.h has no cancel;
 *    so many such readers can use up the session's 64 workers); an
 *    interrupt answers EINTR at once, and what that peer read returns later
 *    is kept for the next read at the same offset (so a stream loses
 *    nothing). Other calls are short and not interruptible.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fs_internal.h"

#define REMOTE_BUCKETS 1024
#define PEER_PATH_MAX 4096 /* the peer server's limit (peer.h) */

struct rnode {
	fuse_ino_t ino;
	char *tpl;	 /* NULL: under live/ */
	char *sb;	 /* the sandbox's name */
	char *path;	 /* relative to the mount: "templates/T/sandboxes/N/procs/3/stdout", "live/N/etc" */
	size_t root_len; /* path[0, root_len): the sandbox's directory (templates/T/sandboxes/N or live/N) */
	mode_t type;	 /* S_IFDIR, S_IFREG, ... */
	uint64_t nlookup;
	bool hashed; /* in by_path: our own unlink, rmdir or rename over it takes it out */
	struct rnode *next_ino, *next_path;
};

struct remote {
	pthread_mutex_t lock;
	struct rnode *by_ino[REMOTE_BUCKETS];  /* lock */
	struct rnode *by_path[REMOTE_BUCKETS]; /* lock */
	uint64_t seq;			       /* lock */
};

int remote_init(struct fs *f)
{
	if (!(f->remote = calloc(1, sizeof(*f->remote))))
		return -ENOMEM;
	pthread_mutex_init(&f->remote->lock, NULL);
	return 0;
}

static void rnode_free(struct rnode *n)
{
	free(n->tpl);
	free(n->sb);
	free(n->path);
	free(n);
}

void remote_free(struct fs *f)
{
	struct remote *rm = f->remote;

	if (!rm)
		return;
	for (size_t i = 0; i < REMOTE_BUCKETS; i++)
		for (struct rnode *n = rm->by_ino[i], *next; n; n = next) {
			next = n->next_ino;
			rnode_free(n);
		}
	pthread_mutex_destroy(&rm->lock);
	free(rm);
	f->remote = NULL;
}

static size_t hash_ino(fuse_ino_t ino)
{
	return (size_t)((ino * 11400714819323198485ull) >> 54) % REMOTE_BUCKETS;
}

static size_t hash_path(const char *p)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ull;
	return (size_t)(h % REMOTE_BUCKETS);
}

static struct rnode *find_ino(struct remote *rm, fuse_ino_t ino)
{
	for (struct rnode *n = rm->by_ino[hash_ino(ino)]; n; n = n->next_ino)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct rnode *find_path(struct remote *rm, const char *path)
{
	for (struct rnode *n = rm->by_path[hash_path(path)]; n; n = n->next_path)
		if (strcmp(n->path, path) == 0)
			return n;
	return NULL;
}

static void unhash_path(struct remote *rm, struct rnode *n)
{
	if (!n->hashed)
		return;
	for (struct rnode **pp = &rm->by_path[hash_path(n->path)]; *pp; pp = &(*pp)->next_path)
		if (*pp == n) {
			*pp = n->next_path;
			break;
		}
	n->hashed = false;
}

static void hash_in_path(struct remote *rm, struct rnode *n)
{
	size_t h = hash_path(n->path);

	n->next_path = rm->by_path[h];
	rm->by_path[h] = n;
	n->hashed = true;
}

/* What a call needs of a node: a copy, taken under the lock. */
struct rref {
	char *tpl, *sb, *path;
	size_t root_len;
	mode_t type;
};

static void rref_done(struct rref *r)
{
	free(r->tpl);
	free(r->sb);
	free(r->path);
	memset(r, 0, sizeof(*r));
}

/* templates/T/sandboxes/N or live/N itself */
static bool is_root(const struct rref *r)
{
	return r->path[r->root_len] == '\0';
}

/* The sandbox directory itself (templates/T/sandboxes/N), and its status file: what a lost sandbox still shows. */
static bool is_sbdir(const struct rref *r)
{
	return r->tpl && r->path[r->root_len] == '\0';
}

static bool is_sbstatus(const struct rref *r)
{
	return r->tpl && strcmp(r->path + r->root_len, "/status") == 0;
}

/* The node at path, made if new, with one more lookup: its inode number (0: ENOMEM). */
static fuse_ino_t node_ref(struct fs *f, const struct rref *r, mode_t type)
{
	struct remote *rm = f->remote;
	struct rnode *n, *nn = calloc(1, sizeof(*nn));
	fuse_ino_t ino = 0;

	if (nn) {
		nn->tpl = r->tpl ? strdup(r->tpl) : NULL;
		nn->sb = strdup(r->sb);
		nn->path = strdup(r->path);
		nn->root_len = r->root_len;
		nn->type = type & S_IFMT;
		if (!nn->sb || !nn->path || (r->tpl && !nn->tpl)) {
			rnode_free(nn);
			return 0;
		}
	}
	pthread_mutex_lock(&rm->lock);
	n = find_path(rm, r->path);
	if (n && n->type != (type & S_IFMT)) {
		unhash_path(rm, n); /* another file now: a new inode, the kernel's old one goes stale */
		n = NULL;
	}
	if (!n && nn) {
		n = TAKE_PTR(nn);
		n->ino = REMOTE_INO_BIT | ++rm->seq;
		n->next_ino = rm->by_ino[hash_ino(n->ino)];
		rm->by_ino[hash_ino(n->ino)] = n;
		hash_in_path(rm, n);
	}
	if (n) {
		n->nlookup++;
		ino = n->ino;
	}
	pthread_mutex_unlock(&rm->lock);
	if (nn)
		rnode_free(nn);
	return ino;
}

void remote_forget(struct fs *f, fuse_ino_t ino, uint64_t nlookup)
{
	struct remote *rm = f->remote;
	struct rnode *n;

	if (!rm)
		return;
	pthread_mutex_lock(&rm->lock);
	n = find_ino(rm, ino);
	if (n && (n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup) == 0) {
		for (struct rnode **pp = &rm->by_ino[hash_ino(ino)]; *pp; pp = &(*pp)->next_ino)
			if (*pp == n) {
				*pp = n->next_ino;
				break;
			}
		unhash_path(rm, n);
		rnode_free(n);
	}
	pthread_mutex_unlock(&rm->lock);
}

/* -ENOENT if the kernel forgot the inode (or there is no cluster). */
static int rref_get(struct fs *f, fuse_ino_t ino, struct rref *r)
{
	struct remote *rm = f->remote;
	struct rnode *n;
	int ret = -ENOENT;

	memset(r, 0, sizeof(*r));
	if (!rm || !f->cluster)
		return -ENOENT;
	pthread_mutex_lock(&rm->lock);
	n = find_ino(rm, ino);
	if (n) {
		*r = (struct rref){ .tpl = n->tpl ? strdup(n->tpl) : NULL, .sb = strdup(n->sb), .path = strdup(n->path),
				    .root_len = n->root_len, .type = n->type };
		ret = r->sb && r->path && (!n->tpl || r->tpl) ? 0 : -ENOMEM;
	}
	pthread_mutex_unlock(&rm->lock);
	if (ret < 0)
		rref_done(r);
	return ret;
}

/* The reference of a child of dir: the same sandbox, path + "/" + name. */
static int rref_child(const struct rref *dir, const char *name, struct rref *c)
{
	memset(c, 0, sizeof(*c));
	if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	if (strlen(dir->path) + strlen(name) + 2 > PEER_PATH_MAX)
		return -ENAMETOOLONG;
	c->tpl = dir->tpl ? strdup(dir->tpl) : NULL;
	c->sb = strdup(dir->sb);
	c->root_len = dir->root_len;
	if (asprintf(&c->path, "%s/%s", dir->path, name) < 0)
		c->path = NULL;
	if (!c->sb || !c->path || (dir->tpl && !c->tpl)) {
		rref_done(c);
		return -ENOMEM;
	}
	return 0;
}

/* A removal or rename of ours: the kernel's node of path (and of what is under it) names nothing now. */
static void detach_paths(struct fs *f, const char *path)
{
	struct remote *rm = f->remote;
	size_t l = strlen(path);

	pthread_mutex_lock(&rm->lock);
	for (size_t i = 0; i < REMOTE_BUCKETS; i++)
		for (struct rnode *n = rm->by_ino[i]; n; n = n->next_ino)
			if (n->hashed && strncmp(n->path, path, l) == 0 && (n->path[l] == '\0' || n->path[l] == '/'))
				unhash_path(rm, n);
	pthread_mutex_unlock(&rm->lock);
}

/* A rename on the peer: every node at from or under it is now under to. */
static void move_paths(struct fs *f, const char *from, const char *to)
{
	struct remote *rm = f->remote;
	size_t l = strlen(from);

	detach_paths(f, to);
	pthread_mutex_lock(&rm->lock);
	for (size_t i = 0; i < REMOTE_BUCKETS; i++)
		for (struct rnode *n = rm->by_ino[i]; n; n = n->next_ino) {
			char *np;

			if (!n->hashed || strncmp(n->path, from, l) != 0 || (n->path[l] != '\0' && n->path[l] != '/'))
				continue;
			if (asprintf(&np, "%s%s", to, n->path + l) < 0)
				continue; /* keeps the old path: its next call answers ENOENT */
			unhash_path(rm, n);
			free(n->path);
			n->path = np;
			hash_in_path(rm, n);
		}
	pthread_mutex_unlock(&rm->lock);
}

/* ---- where the sandbox runs, and who asks ---- */

struct rwhere {
	char *host, *addr;
	bool lost;
};

static void where_done(struct rwhere *w)
{
	free(w->host);
	free(w->addr);
	memset(w, 0, sizeof(*w));
}

/*
 * A request of this daemon's own peer server, serving another host: the
 * caller's thread is one of ours (FUSE names the calling thread).
 */
static bool from_peer_server(fuse_req_t req)
{
	char p[64];

	snprintf(p, sizeof(p), "/proc/self/task/%d", (int)fuse_req_ctx(req)->pid);
	return access(p, F_OK) == 0;
}

/*
 * Asked at every call: a sandbox that moved or was lost is seen at once.
 * -ENOENT: the cluster has it no more, or another host asked us for a
 * sandbox we do not run (forwarded once, never again: two views that
 * disagree for a moment would pass it around in a loop).
 */
static int where_get(fuse_req_t req, struct fs *f, const struct rref *r, struct rwhere *w)
{
	memset(w, 0, sizeof(*w));
	if (from_peer_server(req))
		return -ENOENT;
	return cluster_sandbox_where(f->cluster, r->tpl, r->sb, &w->host, &w->addr, &w->lost);
}

/* The node and where it runs; a lost sandbox is -EHOSTDOWN (the callers that show something check lost first). */
static int resolve(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct rref *r, struct rwhere *w)
{
	int ret = rref_get(f, ino, r);

	memset(w, 0, sizeof(*w));
	if (ret == 0)
		ret = where_get(req, f, r, w);
	if (ret == 0 && w->lost)
		ret = -EHOSTDOWN;
	if (ret < 0) {
		rref_done(r);
		where_done(w);
	}
	return ret;
}

/* A directory node, where it runs and the reference of a name in it. */
static int resolve_child(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, struct rref *c, struct rwhere *w)
{
	struct rref dir;
	int ret;

	memset(c, 0, sizeof(*c));
	ret = resolve(req, f, parent, &dir, w);

	if (ret == 0) {
		ret = rref_child(&dir, name, c);
		if (ret < 0)
			where_done(w);
	}
	rref_done(&dir);
	return ret;
}

static struct peer_cred cred_of(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	return (struct peer_cred){ .uid = ctx->uid, .gid = ctx->gid };
}

static struct peer_client *pc_of(struct fs *f)
{
	return cluster_peer(f->cluster);
}

/* Why a peer call failed, for the debug log (peer_error: the reason of the thread's last failed call). */
static const char *peer_reason(int r)
{
	const char *e = peer_error();

	return e && *e ? e : strerror(-r);
}

/* ---- replies ---- */

/* What a lost sandbox's directory and status show, made here. */
static void synth_stat(mode_t mode, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_mode = mode;
	st->st_nlink = S_ISDIR(mode) ? 2 : 1;
}

/* The entry of a file at r with attributes st (from the peer, or made here). */
static void reply_entry(fuse_req_t req, struct fs *f, const struct rref *r, struct stat *st)
{
	struct fuse_entry_param ep = { 0 };

	ep.ino = node_ref(f, r, st->st_mode);
	if (!ep.ino) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	st->st_ino = ep.ino;
	ep.generation = 1;
	ep.attr = *st;
	ep.attr_timeout = ep.entry_timeout = 0.0; /* the peer's files change without us */
	if (fuse_reply_entry(req, &ep) == -ENOENT)
		remote_forget(f, ep.ino, 1); /* the request was interrupted: the kernel never took the entry */
}

/* A peer call made, then its entry from a stat of the same path. */
static void reply_made(fuse_req_t req, struct fs *f, int r, const struct rref *c, const struct rwhere *w)
{
	struct peer_cred cr = cred_of(req);
	struct stat st;

	if (r == 0)
		r = peer_stat(pc_of(f), w->addr, &cr, c->path, &st);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, f, c, &st);
}

/* ---- templates/T/sandboxes/NAME and live/NAME ---- */

void remote_reply_root(fuse_req_t req, struct fs *f, const char *tpl, const char *name, bool made)
{
	struct peer_cred cr = cred_of(req);
	struct rref r = { 0 };
	struct rwhere w = { 0 };
	struct stat st;
	int ret = f->cluster ? where_get(req, f, &(struct rref){ .tpl = (char *)tpl, .sb = (char *)name }, &w) : -ENOENT;

	if (ret == 0) {
		r.tpl = tpl ? strdup(tpl) : NULL;
		r.sb = strdup(name);
		if ((tpl ? asprintf(&r.path, "templates/%s/sandboxes/%s", tpl, name) : asprintf(&r.path, "live/%s", name)) < 0)
			r.path = NULL;
		ret = r.sb && r.path && (!tpl || r.tpl) ? 0 : -ENOMEM;
		r.root_len = r.path ? strlen(r.path) : 0;
	}
	if (ret == 0 && (w.lost || made))
		synth_stat(S_IFDIR | 0755, &st); /* lost: it shows, its status saying so; made: see fs_internal.h */
	else if (ret == 0)
		ret = peer_stat(pc_of(f), w.addr, &cr, r.path, &st);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		reply_entry(req, f, &r, &st);
	rref_done(&r);
	where_done(&w);
}

/* A known node's number for a listing; any non-zero number otherwise (inode numbers are resolved at lookup). */
static fuse_ino_t listed_ino(struct fs *f, const char *path)
{
	struct rnode *n;
	fuse_ino_t ino;

	pthread_mutex_lock(&f->remote->lock);
	n = find_path(f->remote, path);
	ino = n ? n->ino : REMOTE_INO_BIT;
	pthread_mutex_unlock(&f->remote->lock);
	return ino;
}

static void list_template(struct fs *f, const char *tpl, bool live,
			  void (*add)(void *ctx, const char *name, fuse_ino_t ino, bool dir), void *ctx)
{
	char **names = cluster_remote_sandboxes(f->cluster, tpl);

	for (char **p = names; p && *p; p++) {
		char *path;

		if ((live ? asprintf(&path, "live/%s", *p) : asprintf(&path, "templates/%s/sandboxes/%s", tpl, *p)) < 0)
			continue;
		add(ctx, *p, listed_ino(f, path), true);
		free(path);
	}
	strv_free(names);
}

void remote_list_root(struct fs *f, const char *tpl, void (*add)(void *ctx, const char *name, fuse_ino_t ino, bool dir),
		      void *ctx)
{
	char **tpls;

	if (!f->cluster)
		return;
	if (tpl) {
		list_template(f, tpl, false, add, ctx);
		return;
	}
	/* live/ is flat: the remote sandboxes of every template (names are unique across templates) */
	tpls = engine_template_list(f->e);
	for (char **p = tpls; p && *p; p++)
		list_template(f, *p, true, add, ctx);
	strv_free(tpls);
}

/* ---- lookup, getattr, setattr ---- */

void remote_lookup(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name)
{
	struct peer_cred cr = cred_of(req);
	struct rref dir, c = { 0 };
	struct rwhere w = { 0 };
	struct stat st;
	int r = rref_get(f, parent, &dir);

	if (r == 0)
		r = where_get(req, f, &dir, &w);
	if (r == 0)
		r = rref_child(&dir, name, &c);
	if (r == 0 && w.lost)
		r = is_sbdir(&dir) && strcmp(name, "status") == 0 ? 0 : -EHOSTDOWN;
	if (r == 0 && w.lost)
		synth_stat(S_IFREG | 0444, &st);
	else if (r == 0)
		r = peer_stat(pc_of(f), w.addr, &cr, c.path, &st);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, f, &c, &st);
	rref_done(&dir);
	rref_done(&c);
	where_done(&w);
}

void remote_getattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct peer_cred cr = cred_of(req);
	struct rref n;
	struct rwhere w = { 0 };
	struct stat st;
	int r = rref_get(f, ino, &n);

	(void)fi; /* an open file is stat-ed by its path too: the peer has no fstat */
	if (r == 0)
		r = where_get(req, f, &n, &w);
	if (r == 0 && w.lost && is_root(&n))
		synth_stat(S_IFDIR | 0755, &st); /* it shows (live/N too, as its lookup did), with its status saying lost */
	else if (r == 0 && w.lost && is_sbstatus(&n))
		synth_stat(S_IFREG | 0444, &st);
	else if (r == 0 && w.lost)
		r = -EHOSTDOWN;
	else if (r == 0)
		r = peer_stat(pc_of(f), w.addr, &cr, n.path, &st);
	rref_done(&n);
	where_done(&w);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	st.st_ino = ino;
	fuse_reply_attr(req, &st, 0.0);
}

/*
 * size: peer_truncate; mode: peer_chmod; times are accepted and ignored
 * (the peer has no call for them; the mount's own files do the same, so
 * `touch` works); owners: EPERM unless unchanged (no call either).
 */
void remote_setattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct stat *attr, int to_set,
		    struct fuse_file_info *fi)
{
	struct peer_cred cr = cred_of(req);
	struct rref n;
	struct rwhere w;
	struct stat st;
	int r = resolve(req, f, ino, &n, &w);

	(void)fi; /* ftruncate goes by the open file's path too */
	if (r == 0 && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) &&
	    (r = peer_stat(pc_of(f), w.addr, &cr, n.path, &st)) == 0 &&
	    (((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != st.st_uid) ||
	     ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != st.st_gid)))
		r = -EPERM; /* only a chown to the owners it has (cp -p, install) */
	if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE))
		r = peer_truncate(pc_of(f), w.addr, &cr, n.path, attr->st_size);
	if (r == 0 && (to_set & FUSE_SET_ATTR_MODE))
		r = peer_chmod(pc_of(f), w.addr, &cr, n.path, attr->st_mode & 07777);
	if (r == 0)
		r = peer_stat(pc_of(f), w.addr, &cr, n.path, &st);
	rref_done(&n); /* zeroed by a failed resolve */
	where_done(&w);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	st.st_ino = ino;
	fuse_reply_attr(req, &st, 0.0);
}

/* ---- directories ---- */

/* A listing taken once at opendir, reference counted like fs.c's dirbuf. */
struct rdir {
	struct open_handle oh; /* first */
	fuse_req_t req;	       /* for fuse_add_direntry's sizes, while the listing is taken */
	char *p;
	size_t size;
	atomic_int refs;
};

static void rdir_unref(struct rdir *d)
{
	if (atomic_fetch_sub(&d->refs, 1) == 1) {
		free(d->p);
		free(d);
	}
}

static void rdir_release(struct open_handle *oh)
{
	rdir_unref((struct rdir *)oh);
}

static int rdir_add(struct rdir *d, const char *name, mode_t mode, fuse_ino_t ino)
{
	struct stat st = { .st_ino = ino, .st_mode = mode & S_IFMT };
	size_t old = d->size, n = fuse_add_direntry(d->req, NULL, 0, name, NULL, 0);
	char *np = realloc(d->p, old + n);

	if (!np)
		return -ENOMEM;
	d->p = np;
	d->size += n;
	fuse_add_direntry(d->req, d->p + old, n, name, &st, (off_t)d->size);
	return 0;
}

/* The peer's listing (its "." and ".." are ours); children known here show their numbers. */
static int rdir_fill(struct fs *f, struct rdir *d, const struct rref *n, const struct peer_dirent *e, size_t count)
{
	int r = 0;

	for (size_t i = 0; i < count && r == 0; i++) {
		char *path;

		if (strcmp(e[i].name, ".") == 0 || strcmp(e[i].name, "..") == 0)
			continue;
		if (asprintf(&path, "%s/%s", n->path, e[i].name) < 0)
			return -ENOMEM;
		r = rdir_add(d, e[i].name, e[i].mode, listed_ino(f, path));
		free(path);
	}
	return r;
}

void remote_opendir(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct peer_cred cr = cred_of(req);
	struct rdir *d = calloc(1, sizeof(*d));
	struct peer_dirent *e = NULL;
	size_t count = 0;
	struct rref n = { 0 };
	struct rwhere w = { 0 };
	int r = d ? rref_get(f, ino, &n) : -ENOMEM;

	if (r == 0)
		r = where_get(req, f, &n, &w);
	if (r == 0 && w.lost && !is_sbdir(&n))
		r = -EHOSTDOWN;
	if (r == 0) {
		d->req = req;
		r = rdir_add(d, ".", S_IFDIR, ino);
	}
	if (r == 0)
		r = rdir_add(d, "..", S_IFDIR, FUSE_ROOT_ID);
	if (r == 0 && w.lost)
		r = rdir_add(d, "status", S_IFREG, REMOTE_INO_BIT); /* a lost sandbox: its status only */
	else if (r == 0 && (r = peer_readdir(pc_of(f), w.addr, &cr, n.path, &e, &count)) == 0)
		r = rdir_fill(f, d, &n, e, count);
	peer_dirents_free(e, count);
	rref_done(&n);
	where_done(&w);
	if (r < 0) {
		if (d)
			free(d->p);
		free(d);
		fuse_reply_err(req, -r);
		return;
	}
	d->req = NULL;
	atomic_init(&d->refs, 1);
	fs_handle_add(f, &d->oh, rdir_release);
	fi->fh = (uint64_t)(uintptr_t)d;
	fi->cache_readdir = 0;
	fuse_reply_open(req, fi);
}

void remote_readdir(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct rdir *d = (struct rdir *)(uintptr_t)fi->fh;
	size_t o = (size_t)off;

	atomic_fetch_add(&d->refs, 1);
	if (o >= d->size)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, d->p + o, d->size - o < size ? d->size - o : size);
	rdir_unref(d);
}

void remote_releasedir(fuse_req_t req, struct fs *f, struct fuse_file_info *fi)
{
	struct rdir *d = (struct rdir *)(uintptr_t)fi->fh;

	fs_handle_del(f, &d->oh);
	rdir_unref(d);
	fuse_reply_err(req, 0);
}

/* ---- making and removing ---- */

void remote_mkdir(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct peer_cred cr = cred_of(req);
	struct rref c;
	struct rwhere w;
	int r = resolve_child(req, f, parent, name, &c, &w);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_made(req, f, peer_mkdir(pc_of(f), w.addr, &cr, c.path, mode), &c, &w);
	rref_done(&c);
	where_done(&w);
}

void remote_symlink(fuse_req_t req, struct fs *f, const char *target, fuse_ino_t parent, const char *name)
{
	struct peer_cred cr = cred_of(req);
	struct rref c;
	struct rwhere w;
	int r = resolve_child(req, f, parent, name, &c, &w);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_made(req, f, peer_symlink(pc_of(f), w.addr, &cr, target, c.path), &c, &w);
	rref_done(&c);
	where_done(&w);
}

/* A regular file: made by an exclusive open and closed again (peer.h has no mknod); nothing else. */
void remote_mknod(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct peer_cred cr = cred_of(req);
	struct rref c;
	struct rwhere w;
	uint64_t handle;
	int r, r2;

	(void)rdev;
	if (!S_ISREG(mode)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if ((r = resolve_child(req, f, parent, name, &c, &w)) < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	r = peer_open(pc_of(f), w.addr, &cr, c.path, O_WRONLY | O_CREAT | O_EXCL, mode & 07777, &handle);
	if (r == 0 && (r2 = peer_release(pc_of(f), w.addr, handle)) < 0)
		log_debug("remote: closing %s on %s: %s", c.path, w.host, peer_reason(r2));
	reply_made(req, f, r, &c, &w);
	rref_done(&c);
	where_done(&w);
}

/* A lost sandbox's own status is a no-op to unlink, as a local sandbox's files are: so rm -rf reaches its rmdir. */
static bool lost_status_unlink(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name)
{
	struct rref dir;
	struct rwhere w = { 0 };
	bool yes = false;

	if (strcmp(name, "status") != 0 || rref_get(f, parent, &dir) < 0)
		return false;
	if (is_sbdir(&dir) && where_get(req, f, &dir, &w) == 0)
		yes = w.lost;
	where_done(&w);
	rref_done(&dir);
	return yes;
}

void remote_remove(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, bool dir)
{
	struct peer_cred cr = cred_of(req);
	struct rref c;
	struct rwhere w;
	int r;

	if (!dir && lost_status_unlink(req, f, parent, name)) {
		fuse_reply_err(req, 0);
		return;
	}
	r = resolve_child(req, f, parent, name, &c, &w);

	if (r == 0) {
		r = dir ? peer_rmdir(pc_of(f), w.addr, &cr, c.path) : peer_unlink(pc_of(f), w.addr, &cr, c.path);
		if (r == 0)
			detach_paths(f, c.path);
		rref_done(&c);
		where_done(&w);
	}
	fuse_reply_err(req, -r);
}

/* Both ends in the same sandbox's tree (templates/T/sandboxes/N or live/N): else EXDEV. */
void remote_rename(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		   const char *newname, unsigned int flags)
{
	struct peer_cred cr = cred_of(req);
	struct rref from = { 0 }, to = { 0 };
	struct rwhere w = { 0 }, w2 = { 0 };
	int r = resolve_child(req, f, parent, name, &from, &w);

	if (r == 0)
		r = resolve_child(req, f, newparent, newname, &to, &w2);
	if (r == 0 && (from.root_len != to.root_len || strncmp(from.path, to.path, from.root_len) != 0))
		r = -EXDEV;
	if (r == 0 && flags)
		r = -EINVAL; /* the peer's rename takes no flags */
	if (r == 0)
		r = peer_rename(pc_of(f), w.addr, &cr, from.path, to.path);
	if (r == 0)
		move_paths(f, from.path, to.path);
	rref_done(&from);
	rref_done(&to);
	where_done(&w);
	where_done(&w2);
	fuse_reply_err(req, -r);
}

/* The peer shows a target that stays within its live/NAME (linkpath.c); paths are the same here. */
void remote_readlink(fuse_req_t req, struct fs *f, fuse_ino_t ino)
{
	struct peer_cred cr = cred_of(req);
	_cleanup_free_ char *target = NULL;
	struct rref n;
	struct rwhere w;
	int r = resolve(req, f, ino, &n, &w);

	if (r == 0) {
		r = peer_readlink(pc_of(f), w.addr, &cr, n.path, &target);
		rref_done(&n);
		where_done(&w);
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_readlink(req, target);
}

/* As for the mount's own files (peer.h has no statfs). */
void remote_statfs(fuse_req_t req)
{
	struct statvfs sv = { .f_bsize = 4096, .f_namemax = 255 };

	fuse_reply_statfs(req, &sv);
}

/* ---- open files ---- */

/* A read waiting on the peer (in its job, read_main); an interrupt answers it and leaves the data to the next. */
struct rread {
	struct rread *next;
	fuse_req_t req;
	bool answered;
};

struct rfile {
	struct open_handle oh; /* first */
	struct fs *fs;
	char *addr;	 /* the peer that holds handle */
	uint64_t handle; /* the peer server's */
	char *text;	 /* a lost sandbox's status, rendered here: no peer handle */
	size_t len;
	atomic_int refs; /* the open file, and each call in flight */
	pthread_mutex_t lock;
	struct rread *reads; /* lock */
	/* what a read answered by an interrupt got later: for the next read at kept_off; lock */
	char *kept;
	size_t kept_len;
	off_t kept_off;
};

static struct rfile *rfile_of(struct fuse_file_info *fi)
{
	return (struct rfile *)(uintptr_t)fi->fh;
}

static struct rfile *rfile_ref(struct rfile *h)
{
	atomic_fetch_add(&h->refs, 1);
	return h;
}

static void rfile_unref(struct rfile *h)
{
	if (atomic_fetch_sub(&h->refs, 1) != 1)
		return;
	free(h->addr);
	free(h->text);
	free(h->kept);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/*
 * At shutdown (the kernel never released it): no peer call. The cluster
 * leaves after the loop, and the peer server closes every handle of a host
 * whose lease went (peer.h).
 */
static void rfile_release_open(struct open_handle *oh)
{
	rfile_unref((struct rfile *)oh);
}

static struct rfile *rfile_new(struct fs *f)
{
	struct rfile *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->fs = f;
	atomic_init(&h->refs, 1);
	pthread_mutex_init(&h->lock, NULL);
	return h;
}

/* Open flags the peer is given (O_CREAT and O_EXCL added by create). */
#define OPEN_FLAGS (O_ACCMODE | O_APPEND | O_TRUNC | O_NOFOLLOW | O_DIRECTORY | O_SYNC | O_DSYNC | O_NOATIME)

/* A lost sandbox's status, read like a generated file; everything else of it is EHOSTDOWN. */
static int open_lost(struct fs *f, const struct rref *n, struct fuse_file_info *fi, struct rfile *h)
{
	if (!is_sbstatus(n))
		return -EHOSTDOWN;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EACCES;
	h->text = cluster_render_lost(f->cluster, n->tpl, n->sb);
	h->len = h->text ? strlen(h->text) : 0;
	return h->text ? 0 : -ENOMEM;
}

static void open_done(struct fs *f, struct rfile *h, struct fuse_file_info *fi)
{
	fs_handle_add(f, &h->oh, rfile_release_open);
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1; /* every read and write goes to the peer, in the caller's sizes */
	fi->keep_cache = 0;
}

void remote_open(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct peer_cred cr = cred_of(req);
	struct rfile *h = rfile_new(f);
	struct rref n = { 0 };
	struct rwhere w = { 0 };
	int r = h ? rref_get(f, ino, &n) : -ENOMEM;

	if (r == 0)
		r = where_get(req, f, &n, &w);
	if (r == 0 && w.lost)
		r = open_lost(f, &n, fi, h);
	else if (r == 0 && (r = peer_open(pc_of(f), w.addr, &cr, n.path, fi->flags & OPEN_FLAGS, 0, &h->handle)) == 0)
		h->addr = TAKE_PTR(w.addr);
	rref_done(&n);
	where_done(&w);
	if (r < 0) {
		if (h)
			rfile_unref(h);
		fuse_reply_err(req, -r);
		return;
	}
	open_done(f, h, fi);
	if (fuse_reply_open(req, fi) == -ENOENT)
		remote_release(NULL, f, fi); /* interrupted: the kernel never took the handle */
}

void remote_create(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode,
		   struct fuse_file_info *fi)
{
	struct peer_cred cr = cred_of(req);
	struct fuse_entry_param ep = { 0 };
	struct rfile *h = rfile_new(f);
	struct rref c = { 0 };
	struct rwhere w = { 0 };
	int r = h ? resolve_child(req, f, parent, name, &c, &w) : -ENOMEM, r2;

	if (r == 0)
		r = peer_open(pc_of(f), w.addr, &cr, c.path, (fi->flags & OPEN_FLAGS) | O_CREAT | (fi->flags & O_EXCL),
			      mode & 07777, &h->handle);
	if (r == 0) {
		h->addr = TAKE_PTR(w.addr);
		r = peer_stat(pc_of(f), h->addr, &cr, c.path, &ep.attr);
		if (r == 0 && !(ep.ino = node_ref(f, &c, ep.attr.st_mode)))
			r = -ENOMEM;
		if (r < 0 && (r2 = peer_release(pc_of(f), h->addr, h->handle)) < 0)
			log_debug("remote: closing %s: %s", c.path, peer_reason(r2));
	}
	rref_done(&c);
	where_done(&w);
	if (r < 0) {
		if (h)
			rfile_unref(h);
		fuse_reply_err(req, -r);
		return;
	}
	ep.attr.st_ino = ep.ino;
	ep.generation = 1;
	ep.attr_timeout = ep.entry_timeout = 0.0;
	open_done(f, h, fi);
	if (fuse_reply_create(req, &ep, fi) == -ENOENT) {
		remote_forget(f, ep.ino, 1);
		remote_release(NULL, f, fi);
	}
}

/* An interrupt: answers the read at once; its peer read goes on, and keeps what it gets (remote_read). */
static void read_interrupt(fuse_req_t req, void *arg)
{
	struct rfile *h = arg;

	pthread_mutex_lock(&h->lock);
	for (struct rread *rd = h->reads; rd; rd = rd->next)
		if (rd->req == req && !rd->answered) {
			rd->answered = true;
			fuse_reply_err(req, EINTR);
			break;
		}
	pthread_mutex_unlock(&h->lock);
}

/* What an interrupted read got, if this read is at its offset: answered from it. h->lock held. */
static bool read_kept(fuse_req_t req, struct rfile *h, size_t size, off_t off)
{
	size_t n;

	if (!h->kept)
		return false;
	if (h->kept_off != off) {
		free(TAKE_PTR(h->kept)); /* a seek: it was a file that can be read again */
		return false;
	}
	n = h->kept_len < size ? h->kept_len : size;
	fuse_reply_buf(req, h->kept, n);
	memmove(h->kept, h->kept + n, h->kept_len - n);
	h->kept_len -= n;
	h->kept_off += (off_t)n;
	if (h->kept_len == 0)
		free(TAKE_PTR(h->kept));
	return true;
}

static void read_unlist(struct rfile *h, struct rread *rd)
{
	for (struct rread **pp = &h->reads; *pp; pp = &(*pp)->next)
		if (*pp == rd) {
			*pp = rd->next;
			return;
		}
}

/* May block as long as the peer's read does (a process's output, wait): FUSE runs this on one of its threads. */
/*
 * A read of a peer's file: on a thread of its own, so a read that waits on
 * the peer (a process's output, wait) holds no FUSE worker (64 such reads
 * would otherwise stall the whole mount). The thread answers the request.
 */
struct rread_job {
	struct rfile *h;
	struct rread rd;
	size_t size;
	off_t off;
};

static void *read_main(void *arg)
{
	struct rread_job *j = arg;
	struct rfile *h = j->h;
	struct fs *f;
	char *buf = NULL;
	ssize_t n = 0;
	bool answered;

	pthread_mutex_lock(&h->lock);
	answered = j->rd.answered;
	pthread_mutex_unlock(&h->lock);
	if (!answered) {
		buf = malloc(j->size ? j->size : 1);
		n = buf ? peer_read(pc_of(h->fs), h->addr, h->handle, j->off, buf, j->size) : -ENOMEM;
	}
	pthread_mutex_lock(&h->lock);
	read_unlist(h, &j->rd);
	answered = j->rd.answered;
	if (answered && n > 0) {
		free(h->kept);
		h->kept = TAKE_PTR(buf);
		h->kept_len = (size_t)n;
		h->kept_off = j->off;
	}
	pthread_mutex_unlock(&h->lock);
	if (!answered && n < 0)
		fuse_reply_err(j->rd.req, (int)-n);
	else if (!answered)
		fuse_reply_buf(j->rd.req, buf, (size_t)n);
	free(buf);
	f = h->fs;
	rfile_unref(h);
	free(j);
	atomic_fetch_sub(&f->remote_reads, 1);
	return NULL;
}

void remote_stop(struct fs *f)
{
	uint64_t until = now_ns() + 5000000000ull;

	if (!f->cluster)
		return;
	peer_client_abort(cluster_peer(f->cluster));
	while (atomic_load(&f->remote_reads) > 0 && now_ns() < until)
		usleep(2000);
	if (atomic_load(&f->remote_reads) > 0)
		log_warn("remote: %d reads of other hosts' files did not end", atomic_load(&f->remote_reads));
}

void remote_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct rfile *h = rfile_ref(rfile_of(fi)); /* a release may arrive while this runs */
	struct rread_job *j;
	pthread_attr_t attr;
	pthread_t t;
	bool started;

	if (h->text) {
		if ((size_t)off >= h->len)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_buf(req, h->text + off, h->len - (size_t)off < size ? h->len - (size_t)off : size);
		rfile_unref(h);
		return;
	}
	pthread_mutex_lock(&h->lock);
	if (read_kept(req, h, size, off)) {
		pthread_mutex_unlock(&h->lock);
		rfile_unref(h);
		return;
	}
	if (!(j = calloc(1, sizeof(*j)))) {
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, ENOMEM);
		rfile_unref(h);
		return;
	}
	j->h = h;
	j->rd.req = req;
	j->size = size;
	j->off = off;
	j->rd.next = h->reads;
	h->reads = &j->rd;
	pthread_mutex_unlock(&h->lock);
	fuse_req_interrupt_func(req, read_interrupt, h); /* may answer at once */
	atomic_fetch_add(&h->fs->remote_reads, 1);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	started = thread_create(&t, &attr, read_main, j) == 0;
	pthread_attr_destroy(&attr);
	if (!started)
		read_main(j); /* no thread to be had: on this worker */
}

void remote_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct rfile *h = rfile_ref(rfile_of(fi));
	ssize_t n = h->text ? -EBADF : peer_write(pc_of(h->fs), h->addr, h->handle, off, buf, size);

	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
	rfile_unref(h);
}

void remote_fsync(fuse_req_t req, struct fuse_file_info *fi)
{
	struct rfile *h = rfile_ref(rfile_of(fi));

	fuse_reply_err(req, h->text ? 0 : -peer_fsync(pc_of(h->fs), h->addr, h->handle));
	rfile_unref(h);
}

void remote_flush(fuse_req_t req, struct fuse_file_info *fi)
{
	struct rfile *h = rfile_ref(rfile_of(fi));

	fuse_reply_err(req, h->text ? 0 : -peer_flush(pc_of(h->fs), h->addr, h->handle));
	rfile_unref(h);
}

/* req NULL: an open whose reply the kernel never took. */
void remote_release(fuse_req_t req, struct fs *f, struct fuse_file_info *fi)
{
	struct rfile *h = rfile_of(fi);
	int r = h->text ? 0 : peer_release(pc_of(f), h->addr, h->handle);

	if (r < 0)
		log_debug("remote: release on %s: %s", h->addr, peer_reason(r));
	fs_handle_del(f, &h->oh);
	rfile_unref(h);
	if (req)
		fuse_reply_err(req, 0);
}

/*
 * Not forwarded: every remote file answers always ready, and a read that
 * must wait blocks on the peer instead. (ENOSYS would make the kernel stop
 * asking for the whole mount, the local files' poll included.)
 */
void remote_poll(fuse_req_t req, struct fuse_pollhandle *ph)
{
	if (ph)
		fuse_pollhandle_destroy(ph);
	fuse_reply_poll(req, POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM);
}
