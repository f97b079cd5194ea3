/*
 * live/NAME: the running guest's own filesystem, through the engine's
 * guestfs calls (engine/guestfs.h; docs/interface.md "The guest's files").
 *
 * Nodes. One per guest file the kernel knows, keyed by (sandbox, guest
 * device, guest inode): the names of one file (hard links) share a node
 * and a rename keeps it, so inode numbers and link counts are the guest's.
 * A node keeps the path it was last reached by; a call on a file that is
 * not a directory (stat, open, setattr, readlink, link) checks that the
 * path still names that file, and the engine answers -ESTALE when it does
 * not: the kernel then looks the path up again (as after a change on
 * another NFS client). A directory is whatever directory its path names
 * now, as with sshfs: one the guest replaced under a host shell's working
 * directory goes on working.
 * A node lives from the first lookup until the kernel forgets it.
 * live/NAME itself is a node the guest is never asked about.
 *
 * Identity. Every call acts for the caller (uid, gid, groups): the guest
 * checks permissions and owns new files as that user.
 *
 * Data. Files go through the host's page cache (so they can be mapped),
 * kept coherent with the guest: the attributes of a regular file the host
 * has open are never cached, so every read(2) asks the guest first (the
 * kernel drops its pages when size or mtime moved); the guest also counts
 * the changes of every file the host has open (chg), and a getattr that
 * sees the count move drops the pages before it answers. The guest pushes
 * those changes too, so a mapping is refreshed without a read. Writes go
 * through to the guest before write(2) returns. Other attributes are
 * cached for a second.
 *
 * Symlinks are shown through linkpath.c: no target leads out of live/NAME.
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
#include "linkpath.h"

#define LIVE_BUCKETS 4096
#define ENTRY_TIMEOUT 1.0
#define ATTR_TIMEOUT 1.0 /* but regular files the host has open: 0 (see attr_timeout) */
#define CRED_GROUPS 64

struct lnode {
	fuse_ino_t ino;
	uint64_t sb;
	struct guest_id id; /* {0, 0}: live/NAME itself */
	mode_t type;	    /* S_IFDIR, S_IFREG, ... */
	uint64_t st_ino;
	char *path;	    /* the guest path it was last reached by */
	uint64_t nlookup;
	/* what the kernel was last told of a regular file (coherence, see node_seen) */
	bool chg_known;	    /* chg: the file's change count when last seen open */
	uint64_t chg;
	bool attr_known;
	off_t size;	    /* also moved by writes that extend the file */
	struct timespec mtime;
	uint64_t getattr_ns; /* the last getattr: a reader is active */
	unsigned open;	     /* host handles: while any, its attributes are never cached */
	bool pushed;	     /* a change the guest pushed waits for its invalidation */
	struct lnode *next_ino, *next_key;
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct lnode *by_ino[LIVE_BUCKETS], *by_key[LIVE_BUCKETS]; /* live_lock */
static uint64_t live_seq;					   /* live_lock */

static size_t hash_key(uint64_t sb, struct guest_id id)
{
	uint64_t h = (sb * 0x9e3779b97f4a7c15ull) ^ (id.dev * 0xc2b2ae3d27d4eb4full) ^ id.ino;

	return (size_t)((h * 11400714819323198485ull) >> 52) % LIVE_BUCKETS;
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

static struct lnode *find_key(uint64_t sb, struct guest_id id)
{
	for (struct lnode *n = by_key[hash_key(sb, id)]; n; n = n->next_key)
		if (n->sb == sb && n->id.dev == id.dev && n->id.ino == id.ino)
			return n;
	return NULL;
}

static void unlink_from(struct lnode **head, struct lnode *n, bool key)
{
	for (struct lnode **pp = head; *pp; pp = key ? &(*pp)->next_key : &(*pp)->next_ino)
		if (*pp == n) {
			*pp = key ? n->next_key : n->next_ino;
			return;
		}
}

/* The node of a guest file, made if new, with one more lookup, reached by path: its inode number (0: ENOMEM). */
static fuse_ino_t node_ref(uint64_t sb, struct guest_id id, mode_t type, const char *path, uint64_t st_ino)
{
	struct lnode *n;
	fuse_ino_t ino = 0;
	char *p = strdup(path);

	if (!p)
		return 0;
	pthread_mutex_lock(&live_lock);
	n = find_key(sb, id);
	if (!n && (n = calloc(1, sizeof(*n)))) {
		size_t h = hash_key(sb, id);

		n->sb = sb;
		n->id = id;
		n->type = type & S_IFMT;
		n->st_ino = st_ino;
		n->ino = LIVE_INO_BIT | ++live_seq;
		n->next_key = by_key[h];
		by_key[h] = n;
		h = hash_ino(n->ino);
		n->next_ino = by_ino[h];
		by_ino[h] = n;
	}
	if (n) {
		free(n->path);
		n->path = TAKE_PTR(p);
		n->nlookup++;
		ino = n->ino;
	}
	pthread_mutex_unlock(&live_lock);
	free(p);
	return ino;
}

void live_forget(fuse_ino_t ino, uint64_t nlookup)
{
	struct lnode *n;

	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n && (n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup) == 0) {
		unlink_from(&by_ino[hash_ino(n->ino)], n, false);
		unlink_from(&by_key[hash_key(n->sb, n->id)], n, true);
		free(n->path);
		free(n);
	}
	pthread_mutex_unlock(&live_lock);
}

/* What a call needs of a node: a copy, taken under the lock. */
struct lref {
	uint64_t sb;
	struct guest_id id;
	mode_t type;
	bool root;
	uint64_t st_ino;
	char *path;
};

static void lref_done(struct lref *r)
{
	free(r->path);
	r->path = NULL;
}

/* -ENOENT if the kernel forgot the inode. */
static int lref_get(fuse_ino_t ino, struct lref *r)
{
	struct lnode *n;
	int ret = -ENOENT;

	memset(r, 0, sizeof(*r));
	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n) {
		*r = (struct lref){ .sb = n->sb, .id = n->id, .type = n->type, .root = !n->id.dev && !n->id.ino,
				    .st_ino = n->st_ino, .path = strdup(n->path) };
		ret = r->path ? 0 : -ENOMEM;
	}
	pthread_mutex_unlock(&live_lock);
	return ret;
}

/*
 * What to check a path against: the file's identity; nothing for a
 * directory, which is whatever directory the path names now (a host shell
 * whose working directory the guest replaced goes on in the new one).
 */
static const struct guest_id *expect_of(const struct lref *r)
{
	return r->root || r->type == S_IFDIR ? NULL : &r->id;
}

/* A rename inside the guest: every node at from or under it is now under to. */
static void move_paths(uint64_t sb, const char *from, const char *to)
{
	size_t fl = strlen(from);

	pthread_mutex_lock(&live_lock);
	for (size_t i = 0; i < LIVE_BUCKETS; i++)
		for (struct lnode *n = by_ino[i]; n; n = n->next_ino) {
			char *np;

			if (n->sb != sb || strncmp(n->path, from, fl) != 0 || (n->path[fl] != '\0' && n->path[fl] != '/'))
				continue;
			if (asprintf(&np, "%s%s", to, n->path + fl) < 0)
				continue; /* keeps the old path: its next call finds it stale */
			free(n->path);
			n->path = np;
		}
	pthread_mutex_unlock(&live_lock);
}

/*
 * Coherence with the guest. The kernel drops a regular file's pages itself
 * when a getattr's reply shows its size or mtime moved (auto_inval_data).
 * A change that moved neither (a write in the same clock tick as the one
 * before, of the same size) shows only in the file's change count (chg,
 * kept by the guest for files the host has open): then the getattr drops
 * the pages before it answers. Not otherwise: an invalidation makes the
 * kernel ignore the reply of a getattr in flight, and the read after it
 * would go on with the size the kernel had before.
 *
 * node_seen records what a reply tells the kernel; it returns true if the
 * getattr must drop the pages first.
 */
static bool node_seen(fuse_ino_t ino, const struct guest_attr *a, bool getattr)
{
	struct lnode *n;
	bool drop = false;

	if (!S_ISREG(a->st.st_mode))
		return false;
	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n) {
		if (getattr && a->watched && n->chg_known && n->chg != a->chg && n->attr_known &&
		    n->size == a->st.st_size && n->mtime.tv_sec == a->st.st_mtim.tv_sec &&
		    n->mtime.tv_nsec == a->st.st_mtim.tv_nsec)
			drop = true;
		if (a->watched) {
			n->chg = a->chg;
			n->chg_known = true;
			if (getattr)
				n->pushed = false; /* this getattr handles it */
		}
		n->attr_known = true;
		n->size = a->st.st_size;
		n->mtime = a->st.st_mtim;
		if (getattr)
			n->getattr_ns = now_ns();
	}
	pthread_mutex_unlock(&live_lock);
	return drop;
}

/* A write the kernel applied: the size it now has. */
static void node_wrote(fuse_ino_t ino, off_t end)
{
	struct lnode *n;

	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n && n->attr_known && end > n->size)
		n->size = end;
	pthread_mutex_unlock(&live_lock);
}

/* At open: the count the open found (the open drops the pages itself). */
static void node_opened(fuse_ino_t ino, const struct guest_attr *a)
{
	struct lnode *n;

	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n) {
		n->chg = a->chg;
		n->chg_known = a->watched;
	}
	pthread_mutex_unlock(&live_lock);
}

/*
 * Changes the guest pushes (engine reader thread), for files mapped on the
 * host: their pages go without a read to ask first. Not while a reader is
 * active (a getattr in the last 100 ms): its getattrs see the change, and an
 * invalidation racing one of them would make the kernel ignore its reply.
 * So the invalidation waits until no getattr came for 100 ms, and is
 * dropped if one has seen the change meanwhile.
 */
#define READER_ACTIVE_NS (100 * 1000000ull)

static bool push_due(void *ctx, fuse_ino_t ino, uint64_t *later)
{
	struct lnode *n;
	bool run = false;

	(void)ctx;
	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n && n->pushed) {
		if (n->getattr_ns + READER_ACTIVE_NS > now_ns())
			*later = n->getattr_ns + READER_ACTIVE_NS;
		else
			run = true;
		n->pushed = run ? false : n->pushed;
	}
	pthread_mutex_unlock(&live_lock);
	return run;
}

void live_on_change(void *ctx, uint64_t sb, struct guest_id id, uint64_t chg)
{
	struct fs *f = ctx;
	struct lnode *n;
	fuse_ino_t ino = 0;
	uint64_t due = 0;

	pthread_mutex_lock(&live_lock);
	n = find_key(sb, id);
	if (n && !n->pushed && (!n->chg_known || n->chg != chg)) {
		n->pushed = true; /* one invalidation pending at a time */
		ino = n->ino;
		due = n->getattr_ns + READER_ACTIVE_NS;
	}
	pthread_mutex_unlock(&live_lock);
	if (ino)
		inval_inode_at(f->inval, ino, due, push_due, NULL);
}

static int child_path(const char *parent, const char *name, char **ret)
{
	if (!*name || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	if (strlen(parent) + strlen(name) + 2 > GUESTFS_PATH_MAX)
		return -ENAMETOOLONG;
	return asprintf(ret, "%s%s%s", parent, strcmp(parent, "/") == 0 ? "" : "/", name) < 0 ? -ENOMEM : 0;
}

/* A directory node and a name in it: the parent's reference and the child's path. */
static int parent_and_name(fuse_ino_t parent, const char *name, struct lref *dir, char **path)
{
	int r = lref_get(parent, dir);

	if (r == 0)
		r = child_path(dir->path, name, path);
	if (r < 0)
		lref_done(dir);
	return r;
}

/* ---- the caller ---- */

struct lcred {
	struct guest_cred c;
	uint32_t groups[CRED_GROUPS];
};

static const struct guest_cred *cred_of(fuse_req_t req, struct lcred *lc)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	int n;

	lc->c = (struct guest_cred){ .uid = ctx->uid, .gid = ctx->gid, .groups = lc->groups };
	if (ctx->uid != 0) {
		/* from /proc of the caller; a caller already gone has none */
		n = fuse_req_getgroups(req, CRED_GROUPS, (gid_t *)lc->groups);
		lc->c.ngroups = n > 0 ? (size_t)(n < CRED_GROUPS ? n : CRED_GROUPS) : 0;
	}
	return &lc->c;
}

/* The node's sandbox; -ENOENT once it is gone. */
static struct sandbox *sandbox_of(struct fs *f, uint64_t sb)
{
	return engine_sandbox_by_id(f->e, sb);
}

/* ---- replies ---- */

/*
 * How long the kernel may keep attributes: never for a regular file the
 * host has open (each read(2) asks first, see above), a second for the
 * rest (a stat of a file nobody has open may be that old).
 */
static double attr_timeout(fuse_ino_t ino, mode_t mode)
{
	struct lnode *n;
	bool open = false;

	if (!S_ISREG(mode))
		return ATTR_TIMEOUT;
	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	open = n && n->open > 0;
	pthread_mutex_unlock(&live_lock);
	return open ? 0.0 : ATTR_TIMEOUT;
}

/* A handle opened or released; true for the first one (the kernel may still hold attributes for a second). */
static bool node_open_count(fuse_ino_t ino, int delta)
{
	struct lnode *n;
	bool first = false;

	pthread_mutex_lock(&live_lock);
	n = find_ino(ino);
	if (n) {
		first = delta > 0 && n->open == 0;
		n->open = delta > 0 || n->open > 0 ? n->open + (unsigned)delta : 0;
	}
	pthread_mutex_unlock(&live_lock);
	return first;
}

/* An entry for a guest file reached at path. */
static void reply_entry(fuse_req_t req, uint64_t sb, const char *path, const struct guest_attr *a)
{
	struct fuse_entry_param ep = { 0 };
	fuse_ino_t ino = node_ref(sb, a->id, a->st.st_mode, path, a->st.st_ino);

	if (!ino) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ep.ino = ino;
	ep.generation = 1;
	ep.attr = a->st;
	ep.attr_timeout = attr_timeout(ino, a->st.st_mode);
	ep.entry_timeout = ENTRY_TIMEOUT;
	node_seen(ino, a, false);
	if (fuse_reply_entry(req, &ep) == -ENOENT)
		live_forget(ino, 1); /* the request was interrupted: the kernel never took the entry */
}

/* live/NAME itself answers without the guest, so listing or stat-ing live/ wakes nothing. */
static void root_stat(uint64_t st_ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = st_ino;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
}

/* ---- the live/ directory itself, and live/NAME ---- */

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

void live_lookup_root(fuse_req_t req, struct fs *f, const char *name)
{
	struct sandbox *s = sandbox_named(f, name);
	struct fuse_entry_param ep = { 0 };
	uint64_t st_ino;

	if (!s && f->cluster) {
		remote_reply_root(req, f, NULL, name, false); /* a sandbox on another host (remote.c), or ENOENT */
		return;
	}
	if (!s) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	st_ino = guestfs_host_ino(s, (struct guest_id){ 0, 0 });
	ep.ino = node_ref(sandbox_id(s), (struct guest_id){ 0, 0 }, S_IFDIR, "/", st_ino);
	sandbox_unref(s);
	if (!ep.ino) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ep.generation = 1;
	root_stat(st_ino, &ep.attr);
	ep.attr_timeout = ep.entry_timeout = ENTRY_TIMEOUT;
	if (fuse_reply_entry(req, &ep) == -ENOENT)
		live_forget(ep.ino, 1);
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
	remote_list_root(f, NULL, add, ctx); /* cluster mode: the sandboxes of other hosts */
}

/* ---- lookup, getattr, setattr ---- */

void live_lookup(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name)
{
	_cleanup_free_ char *path = NULL;
	struct lcred lc;
	struct lref dir;
	struct guest_attr a;
	struct sandbox *s;
	int r = parent_and_name(parent, name, &dir, &path);

	if (r == 0) {
		s = sandbox_of(f, dir.sb);
		r = s ? guestfs_lstat(s, cred_of(req, &lc), path, NULL, &a) : -ENOENT;
		sandbox_unref(s);
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, dir.sb, path, &a);
	lref_done(&dir);
}

struct lfile {
	struct open_handle oh; /* first */
	struct guest_file *gf;
	fuse_ino_t ino;
};

void live_getattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct lcred lc;
	struct lref n;
	struct guest_attr a;
	struct sandbox *s;
	int r = lref_get(ino, &n);

	if (r == 0 && n.root) {
		root_stat(n.st_ino, &a.st);
		lref_done(&n);
		fuse_reply_attr(req, &a.st, ATTR_TIMEOUT);
		return;
	}
	if (r == 0 && fi) {
		/* fstat, or a read(2) revalidating: the open file itself, whatever its path is now */
		r = guestfs_fstat(((struct lfile *)(uintptr_t)fi->fh)->gf, &a);
	} else if (r == 0) {
		s = sandbox_of(f, n.sb);
		r = s ? guestfs_lstat(s, cred_of(req, &lc), n.path, expect_of(&n), &a) : -ENOENT;
		sandbox_unref(s);
	}
	lref_done(&n);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (node_seen(ino, &a, true))
		inval_inode(f->inval, ino, true); /* before the kernel reads on: see inval.c */
	fuse_reply_attr(req, &a.st, attr_timeout(ino, a.st.st_mode));
}

static struct guest_setattr setattr_of(const struct stat *attr, int to_set)
{
	struct guest_setattr sa = { 0 };

	if (to_set & FUSE_SET_ATTR_MODE) {
		sa.what |= GUESTFS_SET_MODE;
		sa.mode = attr->st_mode & 07777;
	}
	if (to_set & FUSE_SET_ATTR_UID) {
		sa.what |= GUESTFS_SET_UID;
		sa.uid = attr->st_uid;
	}
	if (to_set & FUSE_SET_ATTR_GID) {
		sa.what |= GUESTFS_SET_GID;
		sa.gid = attr->st_gid;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		sa.what |= GUESTFS_SET_SIZE;
		sa.size = attr->st_size;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW)) {
		sa.what |= GUESTFS_SET_ATIME;
		sa.atime_ns = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? GUESTFS_TIME_NOW :
			      (int64_t)attr->st_atim.tv_sec * 1000000000 + attr->st_atim.tv_nsec;
	}
	if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
		sa.what |= GUESTFS_SET_MTIME;
		sa.mtime_ns = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? GUESTFS_TIME_NOW :
			      (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec;
	}
	return sa;
}

void live_setattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct stat *attr, int to_set,
		  struct fuse_file_info *fi)
{
	struct guest_setattr sa = setattr_of(attr, to_set);
	struct lcred lc;
	const struct guest_cred *c = cred_of(req, &lc);
	struct lref n;
	struct guest_attr a;
	struct sandbox *s = NULL;
	int r = lref_get(ino, &n);

	if (r == 0 && n.root)
		r = -EPERM; /* live/NAME itself is emberfs' own */
	if (r == 0 && fi && (sa.what & GUESTFS_SET_SIZE)) {
		/* ftruncate: on the open file, whatever its path is now */
		r = guestfs_ftruncate(((struct lfile *)(uintptr_t)fi->fh)->gf, c, sa.size, &a);
		sa.what &= ~(unsigned)GUESTFS_SET_SIZE;
		if (r == 0 && !sa.what)
			goto done;
	}
	if (r == 0) {
		s = sandbox_of(f, n.sb);
		r = s ? guestfs_setattr(s, c, n.path, expect_of(&n), &sa, &a) : -ENOENT;
		sandbox_unref(s);
	}
done:
	lref_done(&n);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	node_seen(ino, &a, false);
	fuse_reply_attr(req, &a.st, attr_timeout(ino, a.st.st_mode));
}

/* ---- directories ---- */

/*
 * A listing, taken at opendir. Reference counted like fs.c's dirbuf: the
 * caller may close the directory as soon as the kernel has a reply, and the
 * releasedir must not free the buffer under a reply still being written.
 */
struct ldir {
	struct open_handle oh; /* first */
	fuse_req_t req;	       /* for fuse_add_direntry's sizes, while the listing is taken */
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

static int ldir_add(void *ctx, const char *name, mode_t type, uint64_t st_ino)
{
	struct ldir *d = ctx;
	struct stat st = { .st_ino = st_ino, .st_mode = type };
	size_t old = d->size, n = fuse_add_direntry(d->req, NULL, 0, name, NULL, 0);
	char *np = realloc(d->p, old + n);

	if (!np)
		return -ENOMEM;
	d->p = np;
	d->size += n;
	fuse_add_direntry(d->req, d->p + old, n, name, &st, (off_t)d->size);
	return 0;
}

/* The whole listing is taken at opendir (1024 entries per agent call), so offsets stay stable. */
void live_opendir(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ldir *d = calloc(1, sizeof(*d));
	struct lcred lc;
	struct lref n;
	struct sandbox *s = NULL;
	int r = d ? lref_get(ino, &n) : -ENOMEM;

	if (r < 0) {
		free(d);
		fuse_reply_err(req, -r);
		return;
	}
	d->req = req;
	s = sandbox_of(f, n.sb);
	r = s ? 0 : -ENOENT;
	if (r == 0)
		r = ldir_add(d, ".", S_IFDIR, n.st_ino);
	if (r == 0)
		r = ldir_add(d, "..", S_IFDIR, 0);
	/* a listing of whatever directory the path names now (as making and removing names do) */
	if (r == 0)
		r = guestfs_readdir(s, cred_of(req, &lc), n.path, NULL, ldir_add, d);
	sandbox_unref(s);
	lref_done(&n);
	if (r < 0) {
		free(d->p);
		free(d);
		fuse_reply_err(req, -r);
		return;
	}
	d->req = NULL;
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

enum make_kind { MAKE_DIR, MAKE_NODE, MAKE_SYMLINK };

static void make(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, enum make_kind kind,
		 mode_t mode, dev_t rdev, const char *target)
{
	_cleanup_free_ char *path = NULL;
	struct lcred lc;
	const struct guest_cred *c = cred_of(req, &lc);
	struct lref dir;
	struct guest_attr a;
	struct sandbox *s;
	int r = parent_and_name(parent, name, &dir, &path);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	s = sandbox_of(f, dir.sb);
	r = !s		     ? -ENOENT :
	    kind == MAKE_DIR  ? guestfs_mkdir(s, c, path, mode, &a) :
	    kind == MAKE_NODE ? guestfs_mknod(s, c, path, mode, rdev, &a) :
				guestfs_symlink(s, c, target, path, &a);
	sandbox_unref(s);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, dir.sb, path, &a);
	lref_done(&dir);
}

void live_mkdir(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode)
{
	make(req, f, parent, name, MAKE_DIR, mode, 0, NULL);
}

void live_mknod(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	make(req, f, parent, name, MAKE_NODE, mode, rdev, NULL);
}

void live_symlink(fuse_req_t req, struct fs *f, const char *target, fuse_ino_t parent, const char *name)
{
	make(req, f, parent, name, MAKE_SYMLINK, 0, 0, target);
}

void live_remove(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, bool is_dir)
{
	_cleanup_free_ char *path = NULL;
	struct lcred lc;
	struct lref dir;
	struct sandbox *s;
	int r = parent_and_name(parent, name, &dir, &path);

	if (r == 0) {
		s = sandbox_of(f, dir.sb);
		r = !s	   ? -ENOENT :
		    is_dir ? guestfs_rmdir(s, cred_of(req, &lc), path) :
			     guestfs_unlink(s, cred_of(req, &lc), path);
		sandbox_unref(s);
		lref_done(&dir);
	}
	fuse_reply_err(req, -r);
}

void live_link(fuse_req_t req, struct fs *f, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	_cleanup_free_ char *to = NULL;
	struct lcred lc;
	struct lref from, dir = { 0 };
	struct guest_attr a;
	struct sandbox *s;
	int r = lref_get(ino, &from);

	if (r == 0)
		r = parent_and_name(newparent, newname, &dir, &to);
	if (r == 0 && from.sb != dir.sb)
		r = -EXDEV;
	if (r == 0 && from.root)
		r = -EPERM; /* a directory */
	if (r == 0) {
		s = sandbox_of(f, from.sb);
		r = s ? guestfs_link(s, cred_of(req, &lc), from.path, expect_of(&from), to, &a) : -ENOENT;
		sandbox_unref(s);
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_entry(req, dir.sb, to, &a); /* the same node: the same guest file */
	lref_done(&from);
	lref_done(&dir);
}

void live_rename(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		 const char *newname, unsigned int flags)
{
	_cleanup_free_ char *from = NULL, *to = NULL;
	struct lcred lc;
	struct lref fdir = { 0 }, tdir = { 0 };
	struct sandbox *s;
	int r = parent_and_name(parent, name, &fdir, &from);

	if (r == 0)
		r = parent_and_name(newparent, newname, &tdir, &to);
	if (r == 0 && fdir.sb != tdir.sb)
		r = -EXDEV; /* two sandboxes: not one filesystem */
	if (r == 0) {
		s = sandbox_of(f, fdir.sb);
		r = s ? guestfs_rename(s, cred_of(req, &lc), from, to, flags) : -ENOENT;
		sandbox_unref(s);
	}
	if (r == 0 && (flags & RENAME_EXCHANGE)) {
		static const char tmp[] = "/.emberfs-exchange";

		move_paths(fdir.sb, from, tmp);
		move_paths(fdir.sb, to, from);
		move_paths(fdir.sb, tmp, to);
	} else if (r == 0) {
		move_paths(fdir.sb, from, to);
	}
	lref_done(&fdir);
	lref_done(&tdir);
	fuse_reply_err(req, -r);
}

struct resolve_ctx {
	struct sandbox *s;
	const struct guest_cred *c;
};

static int resolve_in_guest(void *ctx, const char *path, char **ret)
{
	struct resolve_ctx *rc = ctx;

	return guestfs_realpath(rc->s, rc->c, path, ret);
}

/* The target as the guest stores it, shown so that following it stays in live/NAME (linkpath.h). */
void live_readlink(fuse_req_t req, struct fs *f, fuse_ino_t ino)
{
	_cleanup_free_ char *target = NULL, *shown = NULL;
	struct lcred lc;
	struct resolve_ctx rc = { NULL, cred_of(req, &lc) };
	struct lref n;
	int r = lref_get(ino, &n);

	if (r == 0)
		r = (rc.s = sandbox_of(f, n.sb)) ? 0 : -ENOENT;
	if (r == 0)
		r = guestfs_readlink(rc.s, rc.c, n.path, expect_of(&n), &target);
	if (r == 0)
		r = linkpath_show(n.path, target, resolve_in_guest, &rc, &shown);
	sandbox_unref(rc.s);
	lref_done(&n);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_readlink(req, shown);
}

void live_statfs(fuse_req_t req, struct fs *f, fuse_ino_t ino)
{
	struct statvfs sv;
	struct lcred lc;
	struct lref n;
	struct sandbox *s;
	int r = lref_get(ino, &n);

	if (r == 0) {
		s = sandbox_of(f, n.sb);
		r = s ? guestfs_statfs(s, cred_of(req, &lc), n.path, &sv) : -ENOENT;
		sandbox_unref(s);
		lref_done(&n);
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_statfs(req, &sv);
}

/* ---- open files ---- */

static void lfile_release_open(struct open_handle *oh)
{
	struct lfile *h = (struct lfile *)oh;

	if (h->ino)
		node_open_count(h->ino, -1);
	guestfs_close(h->gf); /* shutdown: the kernel never released it */
	free(h);
}

/* Open flags the guest is given: the host's page cache makes O_DIRECT the host's business. */
#define OPEN_FLAGS (O_ACCMODE | O_APPEND | O_TRUNC | O_NOFOLLOW | O_DIRECTORY | O_SYNC | O_DSYNC | O_NOATIME)

static void do_open(fuse_req_t req, struct fs *f, fuse_ino_t parent_or_ino, const char *name, mode_t mode,
		    struct fuse_file_info *fi)
{
	_cleanup_free_ char *path = NULL;
	struct lfile *h = calloc(1, sizeof(*h));
	struct lcred lc;
	struct lref n = { 0 };
	struct guest_attr a;
	struct sandbox *s = NULL;
	int flags = (fi->flags & OPEN_FLAGS) | (name ? O_CREAT | (fi->flags & O_EXCL) : 0);
	int r = !h ? -ENOMEM : name ? parent_and_name(parent_or_ino, name, &n, &path) : lref_get(parent_or_ino, &n);

	if (r == 0 && !name)
		path = strdup(n.path);
	if (r == 0 && !path)
		r = -ENOMEM;
	if (r == 0)
		r = (s = sandbox_of(f, n.sb)) ? 0 : -ENOENT;
	if (r == 0)
		r = guestfs_open(s, cred_of(req, &lc), path, expect_of(&n), flags, mode, &h->gf, &a);
	sandbox_unref(s);
	if (r < 0) {
		lref_done(&n);
		free(h);
		fuse_reply_err(req, -r);
		return;
	}
	fs_handle_add(f, &h->oh, lfile_release_open);
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 0; /* the page cache: mmap works; coherence as above */
	fi->keep_cache = 0;
	if (name) {
		struct fuse_entry_param ep = { 0 };

		ep.ino = node_ref(n.sb, a.id, a.st.st_mode, path, a.st.st_ino);
		ep.generation = 1;
		ep.attr = a.st;
		if (ep.ino) {
			h->ino = ep.ino;
			node_open_count(ep.ino, 1);
			node_seen(ep.ino, &a, false);
			node_opened(ep.ino, &a);
		}
		ep.attr_timeout = attr_timeout(ep.ino, a.st.st_mode);
		ep.entry_timeout = ENTRY_TIMEOUT;
		if (!ep.ino) {
			fs_handle_del(f, &h->oh);
			lfile_release_open(&h->oh);
			fuse_reply_err(req, ENOMEM);
		} else if (fuse_reply_create(req, &ep, fi) == -ENOENT) {
			live_forget(ep.ino, 1);
			fs_handle_del(f, &h->oh);
			lfile_release_open(&h->oh);
		}
	} else {
		h->ino = parent_or_ino;
		node_opened(parent_or_ino, &a);
		/* attributes the kernel may keep for a second must go: reads ask each time from now on */
		if (node_open_count(parent_or_ino, 1) && S_ISREG(a.st.st_mode))
			inval_attr(f->inval, parent_or_ino);
		if (fuse_reply_open(req, fi) == -ENOENT) {
			fs_handle_del(f, &h->oh);
			lfile_release_open(&h->oh);
		}
	}
	lref_done(&n);
}

void live_open(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi)
{
	do_open(req, f, ino, NULL, 0, fi);
}

void live_create(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode,
		 struct fuse_file_info *fi)
{
	do_open(req, f, parent, name, mode, fi);
}

void live_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;
	uint8_t *data = NULL;
	struct lcred lc;
	size_t got = 0;
	int r = guestfs_read(h->gf, cred_of(req, &lc), off, size, &data, &got);

	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_buf(req, (const char *)data, got);
	free(data);
}

void live_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;
	struct lcred lc;
	size_t written = 0;
	int r = guestfs_write(h->gf, cred_of(req, &lc), off, buf, size, &written);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	node_wrote(ino, off + (off_t)written);
	fuse_reply_write(req, written);
}

void live_fsync(fuse_req_t req, int datasync, struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;

	fuse_reply_err(req, -guestfs_fsync(h->gf, datasync != 0));
}

void live_release(fuse_req_t req, struct fs *f, struct fuse_file_info *fi)
{
	struct lfile *h = (struct lfile *)(uintptr_t)fi->fh;

	fs_handle_del(f, &h->oh);
	lfile_release_open(&h->oh);
	fuse_reply_err(req, 0);
}
