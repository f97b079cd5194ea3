/*
 * The mount's tree. Inodes encode (object id, file index), so lookup and
 * readdir are table-driven and a stale inode of a destroyed object simply
 * answers ENOENT. See docs/interface.md for the contract.
 */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "fs.h"
#include "fs_internal.h"

static const struct file_def root_files[] = {
	{ "README", IDX_README, 0444, F_STATIC, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "version", IDX_VERSION, 0444, F_STATIC, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "metrics", IDX_METRICS, 0444, F_STATIC, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "events", IDX_EVENTS, 0444, F_EVENTS, NULL, NULL, NULL, NULL, NULL, NULL, false },
};

/* cache/ (rendered by handles.c from the engine) */
static const struct file_def cache_files[] = {
	{ "status", IDX_CACHE_STATUS, 0444, F_STATIC, NULL, NULL, NULL, NULL, NULL, NULL, false },
};

static const struct file_def tpl_files[] = {
	{ "config", 1, 0644, F_CONFIG, template_render_config, NULL, NULL, NULL, NULL, NULL, false },
	{ "identity", 2, 0444, F_RENDER, template_render_identity, NULL, NULL, NULL, NULL, NULL, false },
	{ "status", 3, 0444, F_RENDER, template_render_status, NULL, NULL, NULL, NULL, NULL, false },
	{ "ctl", 4, 0200, F_CTL, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "pool", 7, 0644, F_POOL, template_render_pool, NULL, NULL, NULL, NULL, NULL, false },
	{ "stats", 8, 0444, F_RENDER, template_render_stats, NULL, NULL, NULL, NULL, NULL, false },
	{ "Dockerfile", 9, 0644, F_DOCKERFILE, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "build.log", 10, 0444, F_BUILDLOG, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "create", 11, 0200, F_CREATE, NULL, NULL, NULL, NULL, NULL, NULL, false },
};

static const struct file_def sb_files[] = {
	{ "status", 1, 0444, F_RENDER, NULL, sandbox_render_status, NULL, NULL, NULL, NULL, false },
	{ "timings", 2, 0444, F_RENDER, NULL, sandbox_render_timings, NULL, NULL, NULL, NULL, false },
	{ "wait", 3, 0444, F_WAIT, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "exec", 4, 0600, F_EXEC, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "console", 5, 0444, F_CONSOLE, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "ctl", 6, 0200, F_SBCTL, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "timeout", 7, 0644, F_SETTING, NULL, sandbox_render_timeout, NULL, NULL, sandbox_write_timeout, NULL, false },
	{ "metadata", 10, 0644, F_SETTING, NULL, sandbox_render_metadata, NULL, NULL, sandbox_write_metadata, NULL, false },
	{ "env", 11, 0644, F_SETTING, NULL, sandbox_render_env, NULL, NULL, sandbox_write_env, NULL, false },
	{ "egress", 12, 0644, F_SETTING, NULL, sandbox_render_egress, NULL, NULL, sandbox_write_egress, sandbox_has_egress, false },
	{ "usage", 13, 0444, F_RENDER, NULL, sandbox_render_usage, NULL, NULL, NULL, NULL, false },
	{ "host", 14, 0444, F_HOST, NULL, NULL, NULL, NULL, NULL, NULL, true }, /* where it runs: cluster mode */
};

static const struct file_def proc_files[] = {
	{ "cmd", 1, 0200, F_PCMD, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "stdin", 2, 0200, F_PSTDIN, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "stdout", 3, 0444, F_POUT, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "stderr", 4, 0444, F_PERR, NULL, NULL, NULL, NULL, NULL, NULL, false },
	{ "status", 5, 0444, F_RENDER, NULL, NULL, NULL, proc_render_status, NULL, NULL, false },
	{ "signal", 6, 0200, F_PSIGNAL, NULL, NULL, NULL, NULL, NULL, NULL, false },
};

/* hosts/H/ (hosts.c; rendered by handles.c from the cluster) */
static const struct file_def host_files[] = {
	{ "status", 1, 0444, F_RENDER, NULL, NULL, NULL, NULL, NULL, NULL, false },
};

/* checkpoints/C/ (rendered by handles.c from the checkpoint) */
static const struct file_def ckpt_files[] = {
	{ "status", 1, 0444, F_RENDER, NULL, NULL, NULL, NULL, NULL, NULL, false },
};

static const struct file_def slot_files[] = {
	{ "status", 1, 0444, F_RENDER, NULL, NULL, template_render_slot, NULL, NULL, NULL, false },
};

static const struct file_def *find_def(const struct file_def *defs, size_t n, const char *name, unsigned idx)
{
	for (size_t i = 0; i < n; i++)
		if (name ? strcmp(defs[i].name, name) == 0 : defs[i].idx == idx)
			return &defs[i];
	return NULL;
}

void node_put(struct node *n)
{
	template_unref(n->t);
	sandbox_unref(n->s);
	proc_unref(n->p);
	checkpoint_unref(n->ck);
	n->t = NULL;
	n->s = NULL;
	n->p = NULL;
	n->ck = NULL;
	free(n->by_key);
	free(n->by_value);
	n->by_key = n->by_value = NULL;
	free(n->host);
	n->host = NULL;
}

int node_get(struct fs *f, fuse_ino_t ino, struct node *n)
{
	uint64_t obj = INO_OBJ(ino);
	unsigned idx = INO_IDX(ino);

	memset(n, 0, sizeof(*n));
	n->ino = ino;
	if (IS_LIVE(ino) || IS_REMOTE(ino))
		return -ENOENT; /* live.c's and remote.c's own */
	if (obj == 0) {
		if (idx == IDX_HOSTS && !f->cluster)
			return -ENOENT;
		n->kind = idx == IDX_ROOT ? K_ROOT : idx == IDX_TEMPLATES ? K_TEMPLATES : idx == IDX_LIVE ? K_LIVE :
			  idx == IDX_BY ? K_BY : idx == IDX_HOSTS ? K_HOSTS : idx == IDX_CACHE ? K_CACHE : K_STATIC_FILE;
		n->file = idx == IDX_CACHE_STATUS ? &cache_files[0] : find_def(root_files, ARRAY_SIZE(root_files), NULL, idx);
		return n->kind != K_STATIC_FILE || n->file ? 0 : -ENOENT;
	}
	if ((n->t = engine_template_by_id(f->e, obj))) {
		n->kind = idx == IDX_DIR ? K_TPL_DIR : idx == IDX_TPL_SANDBOXES ? K_TPL_SANDBOXES :
			  idx == IDX_TPL_SLOTS ? K_TPL_SLOTS : K_TPL_FILE;
		n->file = n->kind == K_TPL_FILE ? find_def(tpl_files, ARRAY_SIZE(tpl_files), NULL, idx) : NULL;
	} else if ((n->s = engine_sandbox_by_id(f->e, obj))) {
		n->kind = idx == IDX_DIR ? K_SB_DIR : idx == IDX_SB_PROCS ? K_SB_PROCS : idx == IDX_SB_ROOT ? K_SB_ROOT :
			  idx == IDX_SB_BYLINK ? K_BY_LINK : K_SB_FILE;
		n->file = n->kind == K_SB_FILE ? find_def(sb_files, ARRAY_SIZE(sb_files), NULL, idx) : NULL;
		if (n->file && n->file->present_s && !n->file->present_s(n->s))
			n->file = NULL;
		if (n->file && n->file->cluster_only && !f->cluster)
			n->file = NULL;
	} else if ((n->t = engine_slot_template(f->e, obj))) {
		n->slot_id = obj;
		n->kind = idx == IDX_DIR ? K_SLOT_DIR : K_SLOT_FILE;
		n->file = n->kind == K_SLOT_FILE ? find_def(slot_files, ARRAY_SIZE(slot_files), NULL, idx) : NULL;
	} else if ((n->p = engine_proc_by_id(f->e, obj))) {
		n->kind = idx == IDX_DIR ? K_PROC_DIR : K_PROC_FILE;
		n->file = n->kind == K_PROC_FILE ? find_def(proc_files, ARRAY_SIZE(proc_files), NULL, idx) : NULL;
	} else if ((n->s = engine_checkpoints_dir_by_id(f->e, obj))) {
		n->kind = K_SB_CKPTS;
		if (idx != IDX_DIR) {
			node_put(n);
			return -ENOENT;
		}
	} else if ((n->ck = engine_checkpoint_by_id(f->e, obj))) {
		n->kind = idx == IDX_DIR ? K_CKPT_DIR : K_CKPT_FILE;
		n->file = n->kind == K_CKPT_FILE ? find_def(ckpt_files, ARRAY_SIZE(ckpt_files), NULL, idx) : NULL;
	} else {
		int r = hosts_node(f, obj, n);

		if (r == -ENOENT)
			r = bymeta_node(f, obj, n);
		if (r == 0 && n->kind == K_HOST_FILE)
			n->file = find_def(host_files, ARRAY_SIZE(host_files), NULL, idx);
		if (r < 0)
			node_put(n);
		return r;
	}
	if ((n->kind == K_TPL_FILE || n->kind == K_SB_FILE || n->kind == K_SLOT_FILE || n->kind == K_PROC_FILE ||
	     n->kind == K_CKPT_FILE) && !n->file) {
		node_put(n);
		return -ENOENT;
	}
	return 0;
}

static bool is_dir(const struct node *n)
{
	return n->kind != K_STATIC_FILE && n->kind != K_TPL_FILE && n->kind != K_SB_FILE && n->kind != K_SLOT_FILE &&
	       n->kind != K_PROC_FILE && n->kind != K_SB_ROOT && n->kind != K_BY_LINK && n->kind != K_HOST_FILE &&
	       n->kind != K_CKPT_FILE;
}

/* templates/T/sandboxes/NAME/root: the sandbox's live/NAME, by a link that rm -rf never follows. */
static char *root_link(const struct node *n)
{
	char *t;

	return asprintf(&t, "../../../../live/%s", sandbox_name(n->s)) < 0 ? NULL : t;
}

static void fill_attr(struct fs *f, const struct node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_uid = 0;
	st->st_gid = 0;
	if (n->kind == K_SB_ROOT || n->kind == K_BY_LINK) {
		char *t = n->kind == K_SB_ROOT ? root_link(n) : bymeta_link(f, n);

		st->st_mode = S_IFLNK | 0777;
		st->st_nlink = 1;
		st->st_size = t ? (off_t)strlen(t) : 0;
		free(t);
	} else if (is_dir(n)) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | n->file->mode;
		st->st_nlink = 1;
		/* Generated files have no size until read; they are served with direct_io. */
		st->st_size = 0;
	}
}

/* Object directories are not cached: they come and go outside the kernel's sight. */
static void reply_entry(fuse_req_t req, struct fs *f, const struct node *n)
{
	struct fuse_entry_param ep = { 0 };
	bool object_dir = n->kind == K_TPL_DIR || n->kind == K_SB_DIR || n->kind == K_SLOT_DIR || n->kind == K_PROC_DIR ||
			  n->kind == K_BY || n->kind == K_BY_KEY || n->kind == K_BY_VALUE || n->kind == K_BY_LINK ||
			  n->kind == K_HOSTS || n->kind == K_HOST_DIR || n->kind == K_SB_CKPTS || n->kind == K_CKPT_DIR;

	ep.ino = n->ino;
	ep.generation = 1;
	fill_attr(f, n, &ep.attr);
	ep.attr_timeout = object_dir ? 0.0 : 1.0;
	ep.entry_timeout = object_dir ? 0.0 : 1.0;
	fuse_reply_entry(req, &ep);
}

static int lookup_child(struct fs *f, const struct node *p, const char *name, struct node *out)
{
	const struct file_def *d;
	struct template *t;
	struct sandbox *s;
	int r = -ENOENT;

	memset(out, 0, sizeof(*out));
	switch (p->kind) {
	case K_ROOT:
		if (strcmp(name, "templates") == 0)
			return node_get(f, INO(0, IDX_TEMPLATES), out);
		if (strcmp(name, "live") == 0)
			return node_get(f, INO(0, IDX_LIVE), out);
		if (strcmp(name, "sandboxes-by") == 0)
			return node_get(f, INO(0, IDX_BY), out);
		if (strcmp(name, "hosts") == 0)
			return node_get(f, INO(0, IDX_HOSTS), out); /* ENOENT in single-host mode */
		if (strcmp(name, "cache") == 0)
			return node_get(f, INO(0, IDX_CACHE), out);
		d = find_def(root_files, ARRAY_SIZE(root_files), name, 0);
		return d ? node_get(f, INO(0, d->idx), out) : -ENOENT;
	case K_TEMPLATES:
		if (!(t = engine_template_get(f->e, name)))
			return -ENOENT;
		r = node_get(f, INO(template_id(t), IDX_DIR), out);
		template_unref(t);
		return r;
	case K_TPL_DIR:
		if (strcmp(name, "sandboxes") == 0)
			return node_get(f, INO(template_id(p->t), IDX_TPL_SANDBOXES), out);
		if (strcmp(name, "slots") == 0)
			return node_get(f, INO(template_id(p->t), IDX_TPL_SLOTS), out);
		d = find_def(tpl_files, ARRAY_SIZE(tpl_files), name, 0);
		return d ? node_get(f, INO(template_id(p->t), d->idx), out) : -ENOENT;
	case K_TPL_SLOTS: {
		char *end;
		unsigned long long id;

		if (name[0] < '1' || name[0] > '9')
			return -ENOENT;
		errno = 0;
		id = strtoull(name, &end, 10);
		if (errno || *end || !template_has_slot(p->t, id))
			return -ENOENT;
		return node_get(f, INO(id, IDX_DIR), out);
	}
	case K_SLOT_DIR:
		d = find_def(slot_files, ARRAY_SIZE(slot_files), name, 0);
		return d ? node_get(f, INO(p->slot_id, d->idx), out) : -ENOENT;
	case K_TPL_SANDBOXES:
		if (!(s = template_sandbox_get(p->t, name)))
			return -ENOENT;
		r = node_get(f, INO(sandbox_id(s), IDX_DIR), out);
		sandbox_unref(s);
		return r;
	case K_SB_DIR:
		if (strcmp(name, "procs") == 0)
			return node_get(f, INO(sandbox_id(p->s), IDX_SB_PROCS), out);
		if (strcmp(name, "root") == 0)
			return node_get(f, INO(sandbox_id(p->s), IDX_SB_ROOT), out);
		if (strcmp(name, "checkpoints") == 0)
			return node_get(f, INO(sandbox_checkpoints_id(p->s), IDX_DIR), out);
		d = find_def(sb_files, ARRAY_SIZE(sb_files), name, 0);
		return d ? node_get(f, INO(sandbox_id(p->s), d->idx), out) : -ENOENT;
	case K_SB_PROCS: {
		struct proc *pr = sandbox_proc_get(p->s, name);

		if (!pr)
			return -ENOENT;
		r = node_get(f, INO(proc_id(pr), IDX_DIR), out);
		proc_unref(pr);
		return r;
	}
	case K_PROC_DIR:
		d = find_def(proc_files, ARRAY_SIZE(proc_files), name, 0);
		return d ? node_get(f, INO(proc_id(p->p), d->idx), out) : -ENOENT;
	case K_SB_CKPTS: {
		struct checkpoint *ck = sandbox_checkpoint_get(p->s, name);

		if (!ck)
			return -ENOENT;
		r = node_get(f, INO(checkpoint_id(ck), IDX_DIR), out);
		checkpoint_unref(ck);
		return r;
	}
	case K_CKPT_DIR:
		d = find_def(ckpt_files, ARRAY_SIZE(ckpt_files), name, 0);
		return d ? node_get(f, INO(checkpoint_id(p->ck), d->idx), out) : -ENOENT;
	case K_BY:
	case K_BY_KEY:
	case K_BY_VALUE:
		return bymeta_lookup(f, p, name, out);
	case K_HOSTS:
	case K_HOST_DIR:
		return hosts_lookup(f, p, name, out);
	case K_CACHE:
		return strcmp(name, "status") == 0 ? node_get(f, INO(0, IDX_CACHE_STATUS), out) : -ENOENT;
	default:
		return -ENOTDIR;
	}
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
	struct node p, c;
	int r;

	if (IS_LIVE(parent)) {
		live_lookup(req, f, parent, name);
		return;
	}
	if (IS_REMOTE(parent)) {
		remote_lookup(req, f, parent, name);
		return;
	}
	r = node_get(f, parent, &p);
	if (r == 0 && p.kind == K_LIVE) {
		node_put(&p);
		live_lookup_root(req, f, name);
		return;
	}
	if (r == 0) {
		r = lookup_child(f, &p, name, &c);
		if (r == -ENOENT && p.kind == K_TPL_SANDBOXES && f->cluster) {
			/* not here: a sandbox of this template on another host (or ENOENT) */
			_cleanup_free_ char *tpl = fs_template_name(f, p.t);

			node_put(&p);
			if (tpl)
				remote_reply_root(req, f, tpl, name, false);
			else
				fuse_reply_err(req, ENOENT);
			return;
		}
		node_put(&p);
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_entry(req, f, &c);
	node_put(&c);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct node n;
	struct stat st;
	int r;

	(void)fi;
	if (IS_LIVE(ino)) {
		live_getattr(req, f, ino, fi);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_getattr(req, f, ino, fi);
		return;
	}
	r = node_get(f, ino, &n);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fill_attr(f, &n, &st);
	node_put(&n);
	fuse_reply_attr(req, &st, 0.0);
}

/* ---- directories ---- */

/*
 * A listing, taken at opendir. Reference counted: once the kernel has a
 * reply the caller may close the directory, and the releasedir must not free
 * the buffer under a reply still returning (ASan checks writev's buffer
 * after the call).
 */
struct dirbuf {
	struct open_handle oh; /* first: the list entry */
	char *p;
	size_t size;
	atomic_int refs;
};

static void dirbuf_unref(struct dirbuf *b)
{
	if (atomic_fetch_sub(&b->refs, 1) == 1) {
		free(b->p);
		free(b);
	}
}

static void dirbuf_add_mode(fuse_req_t req, struct dirbuf *b, const char *name, fuse_ino_t ino, mode_t mode)
{
	struct stat st = { .st_ino = ino, .st_mode = mode };
	size_t old = b->size, n = fuse_add_direntry(req, NULL, 0, name, NULL, 0);
	char *np = realloc(b->p, old + n);

	if (!np)
		return;
	b->p = np;
	b->size += n;
	fuse_add_direntry(req, b->p + old, n, name, &st, (off_t)b->size);
}

static void dirbuf_add(fuse_req_t req, struct dirbuf *b, const char *name, fuse_ino_t ino, bool dir)
{
	dirbuf_add_mode(req, b, name, ino, dir ? S_IFDIR : S_IFREG);
}

struct add_ctx {
	fuse_req_t req;
	struct dirbuf *b;
};

static void add_cb(void *ctx, const char *name, fuse_ino_t ino, bool dir)
{
	struct add_ctx *c = ctx;

	dirbuf_add(c->req, c->b, name, ino, dir);
}

static void add_mode_cb(void *ctx, const char *name, fuse_ino_t ino, mode_t mode)
{
	struct add_ctx *c = ctx;

	dirbuf_add_mode(c->req, c->b, name, ino, mode);
}

static void add_procs(fuse_req_t req, struct sandbox *s, struct dirbuf *b)
{
	char **names = sandbox_proc_list(s);

	for (char **p = names; p && *p; p++) {
		struct proc *pr = sandbox_proc_get(s, *p);

		if (pr) {
			dirbuf_add(req, b, *p, INO(proc_id(pr), IDX_DIR), true);
			proc_unref(pr);
		}
	}
	strv_free(names);
}

static void add_checkpoints(fuse_req_t req, struct sandbox *s, struct dirbuf *b)
{
	char **names = sandbox_checkpoint_list(s);

	for (char **p = names; p && *p; p++) {
		struct checkpoint *ck = sandbox_checkpoint_get(s, *p);

		if (ck) {
			dirbuf_add(req, b, *p, INO(checkpoint_id(ck), IDX_DIR), true);
			checkpoint_unref(ck);
		}
	}
	strv_free(names);
}

/*
 * s: the sandbox whose files these are (some are present only for some
 * sandboxes), or NULL; cluster: whether the files of cluster mode are present.
 */
static void add_defs(fuse_req_t req, struct dirbuf *b, uint64_t obj, const struct file_def *d, size_t n,
		     struct sandbox *s, bool cluster)
{
	for (size_t i = 0; i < n; i++)
		if ((!s || !d[i].present_s || d[i].present_s(s)) && (cluster || !d[i].cluster_only))
			dirbuf_add(req, b, d[i].name, INO(obj, d[i].idx), false);
}

/* Object names listed under a lock, then mapped to inodes. */
static void add_templates(fuse_req_t req, struct fs *f, struct dirbuf *b)
{
	char **names = engine_template_list(f->e);

	for (char **p = names; p && *p; p++) {
		struct template *t = engine_template_get(f->e, *p);

		if (t) {
			dirbuf_add(req, b, *p, INO(template_id(t), IDX_DIR), true);
			template_unref(t);
		}
	}
	strv_free(names);
}

static void add_sandboxes(fuse_req_t req, struct template *t, struct dirbuf *b)
{
	char **names = template_sandbox_list(t);

	for (char **p = names; p && *p; p++) {
		struct sandbox *s = template_sandbox_get(t, *p);

		if (s) {
			dirbuf_add(req, b, *p, INO(sandbox_id(s), IDX_DIR), true);
			sandbox_unref(s);
		}
	}
	strv_free(names);
}

static void add_slots(fuse_req_t req, struct template *t, struct dirbuf *b)
{
	size_t n = 0;
	uint64_t *ids = template_slot_ids(t, &n);
	char name[32];

	for (size_t i = 0; ids && i < n; i++) {
		snprintf(name, sizeof(name), "%" PRIu64, ids[i]);
		dirbuf_add(req, b, name, INO(ids[i], IDX_DIR), true);
	}
	free(ids);
}

static int build_dir(fuse_req_t req, struct fs *f, struct node *n, struct dirbuf *b)
{
	dirbuf_add(req, b, ".", n->ino, true);
	dirbuf_add(req, b, "..", FUSE_ROOT_ID, true);
	switch (n->kind) {
	case K_ROOT:
		dirbuf_add(req, b, "templates", INO(0, IDX_TEMPLATES), true);
		dirbuf_add(req, b, "live", INO(0, IDX_LIVE), true);
		dirbuf_add(req, b, "sandboxes-by", INO(0, IDX_BY), true);
		if (f->cluster)
			dirbuf_add(req, b, "hosts", INO(0, IDX_HOSTS), true);
		dirbuf_add(req, b, "cache", INO(0, IDX_CACHE), true);
		add_defs(req, b, 0, root_files, ARRAY_SIZE(root_files), NULL, false);
		return 0;
	case K_CACHE:
		add_defs(req, b, 0, cache_files, ARRAY_SIZE(cache_files), NULL, false);
		return 0;
	case K_BY:
	case K_BY_KEY:
	case K_BY_VALUE: {
		struct add_ctx c = { req, b };

		bymeta_list(f, n, add_mode_cb, &c);
		return 0;
	}
	case K_LIVE: {
		struct add_ctx c = { req, b };

		live_list_root(f, add_cb, &c);
		return 0;
	}
	case K_HOSTS: {
		struct add_ctx c = { req, b };

		hosts_list(f, add_cb, &c);
		return 0;
	}
	case K_HOST_DIR:
		add_defs(req, b, INO_OBJ(n->ino), host_files, ARRAY_SIZE(host_files), NULL, false);
		return 0;
	case K_SB_PROCS:
		add_procs(req, n->s, b);
		return 0;
	case K_PROC_DIR:
		add_defs(req, b, proc_id(n->p), proc_files, ARRAY_SIZE(proc_files), NULL, false);
		return 0;
	case K_SB_CKPTS:
		add_checkpoints(req, n->s, b);
		return 0;
	case K_CKPT_DIR:
		add_defs(req, b, checkpoint_id(n->ck), ckpt_files, ARRAY_SIZE(ckpt_files), NULL, false);
		return 0;
	case K_TEMPLATES:
		add_templates(req, f, b);
		return 0;
	case K_TPL_DIR:
		add_defs(req, b, template_id(n->t), tpl_files, ARRAY_SIZE(tpl_files), NULL, false);
		dirbuf_add(req, b, "sandboxes", INO(template_id(n->t), IDX_TPL_SANDBOXES), true);
		dirbuf_add(req, b, "slots", INO(template_id(n->t), IDX_TPL_SLOTS), true);
		return 0;
	case K_TPL_SANDBOXES:
		add_sandboxes(req, n->t, b);
		if (f->cluster) {
			struct add_ctx c = { req, b };
			_cleanup_free_ char *tpl = fs_template_name(f, n->t);

			if (tpl)
				remote_list_root(f, tpl, add_cb, &c); /* this template's sandboxes on other hosts */
		}
		return 0;
	case K_TPL_SLOTS:
		add_slots(req, n->t, b);
		return 0;
	case K_SLOT_DIR:
		add_defs(req, b, n->slot_id, slot_files, ARRAY_SIZE(slot_files), NULL, false);
		return 0;
	case K_SB_DIR:
		add_defs(req, b, sandbox_id(n->s), sb_files, ARRAY_SIZE(sb_files), n->s, f->cluster != NULL);
		dirbuf_add(req, b, "procs", INO(sandbox_id(n->s), IDX_SB_PROCS), true);
		dirbuf_add(req, b, "checkpoints", INO(sandbox_checkpoints_id(n->s), IDX_DIR), true);
		dirbuf_add_mode(req, b, "root", INO(sandbox_id(n->s), IDX_SB_ROOT), S_IFLNK);
		return 0;
	default:
		return -ENOTDIR;
	}
}

void fs_handle_add(struct fs *f, struct open_handle *oh, void (*release)(struct open_handle *oh))
{
	oh->release = release;
	pthread_mutex_lock(&f->handles_lock);
	oh->next = f->handles.next;
	oh->prev = &f->handles;
	f->handles.next->prev = oh;
	f->handles.next = oh;
	pthread_mutex_unlock(&f->handles_lock);
}

void fs_handle_del(struct fs *f, struct open_handle *oh)
{
	pthread_mutex_lock(&f->handles_lock);
	oh->prev->next = oh->next;
	oh->next->prev = oh->prev;
	oh->prev = oh->next = oh;
	pthread_mutex_unlock(&f->handles_lock);
}

void fs_release_handles(struct fs *f)
{
	remote_stop(f); /* its reads hold open files */
	for (;;) {
		struct open_handle *oh;

		pthread_mutex_lock(&f->handles_lock);
		oh = f->handles.next;
		if (oh == &f->handles) {
			pthread_mutex_unlock(&f->handles_lock);
			events_detach(f); /* the engine goes next */
			follow_stop(f);
			if (!f->changes_detached) {
				engine_set_guestfs_change_fn(f->e, NULL, NULL);
				f->changes_detached = true;
			}
			return;
		}
		oh->prev->next = oh->next;
		oh->next->prev = oh->prev;
		oh->prev = oh->next = oh;
		pthread_mutex_unlock(&f->handles_lock);
		oh->release(oh);
	}
}

static void dirbuf_release(struct open_handle *oh)
{
	dirbuf_unref((struct dirbuf *)oh);
}

/* The listing is taken once at opendir, so readdir offsets stay consistent. */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct dirbuf *b;
	struct node n;
	int r;

	if (IS_LIVE(ino)) {
		live_opendir(req, f, ino, fi);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_opendir(req, f, ino, fi);
		return;
	}
	b = calloc(1, sizeof(*b));
	r = b ? node_get(f, ino, &n) : -ENOMEM;

	if (r == 0) {
		r = build_dir(req, f, &n, b);
		node_put(&n);
	}
	if (r < 0) {
		if (b)
			free(b->p);
		free(b);
		fuse_reply_err(req, -r);
		return;
	}
	atomic_init(&b->refs, 1);
	fs_handle_add(f, &b->oh, dirbuf_release);
	fi->fh = (uint64_t)(uintptr_t)b;
	fi->cache_readdir = 0;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct dirbuf *b = (struct dirbuf *)(uintptr_t)fi->fh;
	size_t o = (size_t)off;

	if (IS_LIVE(ino)) {
		live_readdir(req, size, off, fi);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_readdir(req, size, off, fi);
		return;
	}
	atomic_fetch_add(&b->refs, 1);
	if (o >= b->size)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, b->p + o, b->size - o < size ? b->size - o : size);
	dirbuf_unref(b);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dirbuf *b = (struct dirbuf *)(uintptr_t)fi->fh;

	if (IS_LIVE(ino)) {
		live_releasedir(req, fuse_req_userdata(req), fi);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_releasedir(req, fuse_req_userdata(req), fi);
		return;
	}
	fs_handle_del(fuse_req_userdata(req), &b->oh);
	dirbuf_unref(b);
	fuse_reply_err(req, 0);
}

/* ---- mkdir / rmdir / unlink ---- */

/*
 * A create placed by the cluster: here (the local sandbox, as without a
 * cluster) or on another host (its remote directory, stat-ed there).
 */
static void mkdir_cluster(fuse_req_t req, struct fs *f, struct node *p, const char *name)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct sandbox *s = NULL;
	struct node c;
	int r = cluster_create(f->cluster, p->t, name, NULL, 0, ctx->uid, ctx->gid, &s);

	if (r == 0 && !s) {
		_cleanup_free_ char *tpl = fs_template_name(f, p->t);

		if (tpl)
			remote_reply_root(req, f, tpl, name, true);
		else
			fuse_reply_err(req, ENOENT); /* the template went meanwhile */
		return;
	}
	if (r == 0)
		r = node_get(f, INO(sandbox_id(s), IDX_DIR), &c);
	sandbox_unref(s);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_entry(req, f, &c);
	node_put(&c);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fs *f = fuse_req_userdata(req);
	struct node p, c;
	struct sandbox *s = NULL;
	struct template *t = NULL;
	struct proc *pr = NULL;
	int r;

	if (IS_LIVE(parent)) {
		live_mkdir(req, f, parent, name, mode);
		return;
	}
	if (IS_REMOTE(parent)) {
		remote_mkdir(req, f, parent, name, mode);
		return;
	}
	r = node_get(f, parent, &p);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (p.kind == K_TPL_SANDBOXES && f->cluster) {
		mkdir_cluster(req, f, &p, name);
		node_put(&p);
		return;
	}
	if (p.kind == K_TEMPLATES)
		r = engine_template_create(f->e, name, &t);
	else if (p.kind == K_TPL_SANDBOXES)
		r = engine_sandbox_create(f->e, p.t, name, &s); /* reserves and returns: the create runs behind */
	else if (p.kind == K_SB_PROCS)
		r = sandbox_proc_create(p.s, name, &pr);
	else
		r = -EPERM;
	node_put(&p);
	if (r == 0)
		r = node_get(f, INO(t ? template_id(t) : s ? sandbox_id(s) : proc_id(pr), IDX_DIR), &c);
	template_unref(t);
	sandbox_unref(s);
	proc_unref(pr);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	reply_entry(req, f, &c);
	node_put(&c);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
	struct node p;
	int r;

	if (IS_LIVE(parent)) {
		live_remove(req, f, parent, name, true);
		return;
	}
	if (IS_REMOTE(parent)) {
		remote_remove(req, f, parent, name, true);
		return;
	}
	r = node_get(f, parent, &p);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (p.kind == K_TEMPLATES)
		r = engine_template_remove(f->e, name);
	else if (p.kind == K_SB_PROCS)
		r = sandbox_proc_remove(p.s, name);
	else if (p.kind == K_SB_CKPTS)
		r = sandbox_checkpoint_remove(p.s, name);
	else if (p.kind == K_SB_DIR && (strcmp(name, "procs") == 0 || strcmp(name, "checkpoints") == 0))
		r = 0; /* part of the sandbox: goes with it */
	else if (p.kind == K_TPL_SANDBOXES && f->cluster) {
		const struct fuse_ctx *ctx = fuse_req_ctx(req);

		/* here, on its host, or a lost one's name freed */
		r = cluster_destroy(f->cluster, p.t, name, ctx->uid, ctx->gid);
	} else if (p.kind == K_TPL_SANDBOXES)
		r = engine_sandbox_destroy(f->e, p.t, name);
	else if (p.kind == K_TPL_SLOTS) {
		struct node c;

		r = lookup_child(f, &p, name, &c);
		if (r == 0)
			r = template_slot_drop(p.t, c.slot_id);
		node_put(&c);
	} else if (p.kind == K_TPL_DIR && (strcmp(name, "sandboxes") == 0 || strcmp(name, "slots") == 0))
		r = 0; /* part of the template: goes with it (so rm -rf of a template works) */
	else {
		struct node c;

		r = lookup_child(f, &p, name, &c) == 0 ? -EPERM : -ENOENT;
		node_put(&c);
	}
	node_put(&p);
	fuse_reply_err(req, -r);
}

/*
 * Attribute files are part of their object and go with its rmdir. unlink of
 * one inside a template or sandbox succeeds without effect, so `rm -rf` of
 * the object works; anywhere else it is refused.
 */
static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fs *f = fuse_req_userdata(req);
	struct node p, c;
	int r;

	if (IS_LIVE(parent)) {
		live_remove(req, f, parent, name, false);
		return;
	}
	if (IS_REMOTE(parent)) {
		remote_remove(req, f, parent, name, false);
		return;
	}
	r = node_get(f, parent, &p);
	if (r == 0) {
		r = lookup_child(f, &p, name, &c);
		if (r == 0) {
			r = (p.kind == K_SB_DIR || p.kind == K_TPL_DIR || p.kind == K_SLOT_DIR || p.kind == K_PROC_DIR ||
			     p.kind == K_CKPT_DIR) &&
					    !is_dir(&c) ?
				    0 :
				    -EPERM;
			/* rm of a Dockerfile removes it; of any other object file it is a no-op (rm -rf works) */
			if (r == 0 && c.file && c.file->type == F_DOCKERFILE)
				r = template_write_dockerfile(c.t, "", 0);
			node_put(&c);
		}
		node_put(&p);
	}
	fuse_reply_err(req, -r);
}

/* ---- files ---- */

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct node n;
	int r;

	if (IS_LIVE(ino)) {
		live_open(req, f, ino, fi);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_open(req, f, ino, fi);
		return;
	}
	r = node_get(f, ino, &n);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (n.kind == K_STATIC_FILE && n.file->type == F_EVENTS) {
		node_put(&n);
		events_open(f, req, fi);
		return;
	}
	if (n.kind == K_SB_ROOT || n.kind == K_BY_LINK) {
		node_put(&n);
		fuse_reply_err(req, ELOOP);
		return;
	}
	if (is_dir(&n)) {
		node_put(&n);
		fuse_reply_err(req, EISDIR);
		return;
	}
	fh_open(f, req, &n, fi); /* takes the node's references */
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	if (IS_LIVE(ino))
		live_read(req, size, off, fi);
	else if (IS_REMOTE(ino))
		remote_read(req, size, off, fi);
	else if (events_is(fi))
		events_read(req, size, fi);
	else
		fh_read(req, size, off, fi);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	if (IS_LIVE(ino))
		live_write(req, ino, buf, size, off, fi);
	else if (IS_REMOTE(ino))
		remote_write(req, buf, size, off, fi);
	else if (events_is(fi))
		fuse_reply_err(req, EBADF);
	else
		fh_write(req, buf, size, off, fi);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (IS_REMOTE(ino))
		remote_flush(req, fi); /* what a close on the peer's mount does, reported to this closer */
	else if (IS_LIVE(ino) || events_is(fi))
		fuse_reply_err(req, 0);
	else
		fh_flush(req, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (IS_LIVE(ino))
		live_release(req, fuse_req_userdata(req), fi);
	else if (IS_REMOTE(ino))
		remote_release(req, fuse_req_userdata(req), fi);
	else if (events_is(fi))
		events_release(req, fi);
	else
		fh_release(req, fi);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	if (IS_LIVE(ino))
		live_fsync(req, datasync, fi);
	else if (IS_REMOTE(ino))
		remote_fsync(req, fi);
	else
		fuse_reply_err(req, 0);
}

static void op_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct fuse_pollhandle *ph)
{
	if (IS_LIVE(ino)) {
		if (ph)
			fuse_pollhandle_destroy(ph);
		fuse_reply_poll(req, POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM); /* regular files: always ready */
	} else if (IS_REMOTE(ino)) {
		remote_poll(req, ph);
	} else if (events_is(fi)) {
		events_poll(req, fi, ph);
	} else {
		fh_poll(req, fi, ph);
	}
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	if (IS_LIVE(ino))
		live_forget(ino, nlookup);
	else if (IS_REMOTE(ino))
		remote_forget(fuse_req_userdata(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		if (IS_LIVE(forgets[i].ino))
			live_forget(forgets[i].ino, forgets[i].nlookup);
		else if (IS_REMOTE(forgets[i].ino))
			remote_forget(fuse_req_userdata(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct fs *f = fuse_req_userdata(req);
	struct node n;
	char *t;
	int r;

	if (IS_LIVE(ino)) {
		live_readlink(req, f, ino);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_readlink(req, f, ino);
		return;
	}
	r = node_get(f, ino, &n);
	if (r == 0 && n.kind != K_SB_ROOT && n.kind != K_BY_LINK)
		r = -EINVAL;
	if (r < 0) {
		node_put(&n);
		fuse_reply_err(req, -r);
		return;
	}
	t = n.kind == K_SB_ROOT ? root_link(&n) : bymeta_link(f, &n);
	node_put(&n);
	if (t)
		fuse_reply_readlink(req, t);
	else
		fuse_reply_err(req, ENOMEM);
	free(t);
}

/*
 * Creating files, links and renames: only inside a guest (live/), or on
 * another host (remote.c: its mount decides); the rest of the tree is made by mkdir.
 */
static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	if (IS_LIVE(parent))
		live_create(req, fuse_req_userdata(req), parent, name, mode, fi);
	else if (IS_REMOTE(parent))
		remote_create(req, fuse_req_userdata(req), parent, name, mode, fi);
	else
		fuse_reply_err(req, EPERM);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	if (IS_LIVE(parent))
		live_mknod(req, fuse_req_userdata(req), parent, name, mode, rdev);
	else if (IS_REMOTE(parent))
		remote_mknod(req, fuse_req_userdata(req), parent, name, mode, rdev);
	else
		fuse_reply_err(req, EPERM);
}

static void op_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
	if (IS_LIVE(parent))
		live_symlink(req, fuse_req_userdata(req), target, parent, name);
	else if (IS_REMOTE(parent))
		remote_symlink(req, fuse_req_userdata(req), target, parent, name);
	else
		fuse_reply_err(req, EPERM);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	bool foreign = IS_LIVE(ino) || IS_LIVE(newparent) || IS_REMOTE(ino) || IS_REMOTE(newparent);

	if (IS_LIVE(ino) && IS_LIVE(newparent))
		live_link(req, fuse_req_userdata(req), ino, newparent, newname);
	else if (IS_REMOTE(ino) && IS_REMOTE(newparent))
		fuse_reply_err(req, EPERM); /* peer.h has no link */
	else
		fuse_reply_err(req, foreign ? EXDEV : EPERM);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	bool foreign = IS_LIVE(parent) || IS_LIVE(newparent) || IS_REMOTE(parent) || IS_REMOTE(newparent);

	if (IS_LIVE(parent) && IS_LIVE(newparent))
		live_rename(req, fuse_req_userdata(req), parent, name, newparent, newname, flags);
	else if (IS_REMOTE(parent) && IS_REMOTE(newparent))
		remote_rename(req, fuse_req_userdata(req), parent, name, newparent, newname, flags);
	else
		fuse_reply_err(req, foreign ? EXDEV : EPERM);
}

/* Truncation only makes sense for files that are written whole (config, ctl, exec). */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	struct fs *f = fuse_req_userdata(req);
	struct node n;
	struct stat st;
	int r;

	if (IS_LIVE(ino)) {
		live_setattr(req, f, ino, attr, to_set, fi);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_setattr(req, f, ino, attr, to_set, fi);
		return;
	}
	r = node_get(f, ino, &n);
	if (r == 0 && (to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME |
				  FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)))
		r = -EPERM;
	if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE) && (is_dir(&n) || !(n.file->mode & 0200)))
		r = -EACCES;
	if (r == 0 && (to_set & FUSE_SET_ATTR_SIZE) && n.file && n.file->type == F_DOCKERFILE)
		r = fi ? fh_truncate(fi, attr->st_size) : dockerfile_truncate(n.t, attr->st_size);
	if (r < 0) {
		node_put(&n);
		fuse_reply_err(req, -r);
		return;
	}
	fill_attr(f, &n, &st);
	node_put(&n);
	fuse_reply_attr(req, &st, 0.0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv = { .f_bsize = 4096, .f_namemax = 255 };

	if (IS_LIVE(ino)) {
		live_statfs(req, fuse_req_userdata(req), ino);
		return;
	}
	if (IS_REMOTE(ino)) {
		remote_statfs(req);
		return;
	}
	fuse_reply_statfs(req, &sv);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Requests that park (wait, exec) must not hold up others. */
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
	/*
	 * live/ (live.c): pages dropped when a getattr sees size or mtime move;
	 * O_TRUNC done by the open itself; set-id bits cleared by the guest,
	 * which writes, truncates and chowns as the caller.
	 */
	conn->want |= conn->capable & (FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_HANDLE_KILLPRIV);
	/* 1 MiB requests (max_pages 256): live/ reads and writes move in the agent's 1 MiB frames */
	conn->max_write = 1u << 20;
	conn->max_readahead = 1u << 20;
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.mkdir = op_mkdir,
	.rmdir = op_rmdir,
	.unlink = op_unlink,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.statfs = op_statfs,
	.fsync = op_fsync,
	.poll = op_poll,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.readlink = op_readlink,
	.create = op_create,
	.mknod = op_mknod,
	.symlink = op_symlink,
	.link = op_link,
	.rename = op_rename,
};

static void fuse_log_to_ours(enum fuse_log_level level, const char *fmt, va_list ap)
{
	char buf[512];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	buf[strcspn(buf, "\n")] = '\0';
	log_msg(level <= FUSE_LOG_ERR ? LOG_ERR_ : level <= FUSE_LOG_WARNING ? LOG_WARN_ : LOG_DEBUG_, "fuse: %s",
		buf);
}

int fs_new(struct engine *e, int argc, char **argv, struct fs **ret)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fs *f = calloc(1, sizeof(*f));

	if (!f)
		return -ENOMEM;
	for (int i = 0; i < argc; i++)
		if (fuse_opt_add_arg(&args, argv[i]) < 0) {
			fuse_opt_free_args(&args);
			free(f);
			return -ENOMEM;
		}
	fuse_set_log_func(fuse_log_to_ours);
	f->e = e;
	pthread_mutex_init(&f->handles_lock, NULL);
	f->handles.next = f->handles.prev = &f->handles;
	/*
	 * default_permissions: the kernel checks modes itself, so no cached answer
	 * is reused for another user. Only the mount's owner gets in unless the
	 * caller passed allow_other (--allow-other). No auto_unmount: a crashed
	 * daemon leaves a mount that answers ENOTCONN, never one that looks empty.
	 */
	if (fuse_opt_add_arg(&args, "-o") < 0 ||
	    fuse_opt_add_arg(&args, "fsname=emberfs,subtype=emberfs,default_permissions") < 0) {
		fuse_opt_free_args(&args);
		free(f);
		return -ENOMEM;
	}
	f->se = fuse_session_new(&args, &ops, sizeof(ops), f);
	fuse_opt_free_args(&args);
	if (!f->se) {
		free(f);
		return -EINVAL;
	}
	if (events_init(f) < 0 || follow_init(f) < 0 || inval_new(f->se, &f->inval) < 0 || bymeta_init(f) < 0 ||
	    remote_init(f) < 0 || hosts_init(f) < 0) {
		hosts_free(f);
		remote_free(f);
		bymeta_free(f);
		inval_free(f->inval);
		follow_free(f);
		events_free(f);
		fuse_session_destroy(f->se);
		free(f);
		return -ENOMEM;
	}
	engine_set_guestfs_change_fn(e, live_on_change, f);
	*ret = f;
	return 0;
}

void fs_set_cluster(struct fs *f, struct cluster *c)
{
	f->cluster = c;
}

char *fs_template_name(struct fs *f, struct template *t)
{
	char **names = engine_template_list(f->e);
	char *name = NULL;

	for (char **p = names; p && *p && !name; p++) {
		struct template *o = engine_template_get(f->e, *p);

		if (o && template_id(o) == template_id(t))
			name = strdup(*p);
		template_unref(o);
	}
	strv_free(names);
	return name;
}

int fs_loop(struct fs *f)
{
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	int r;

	if (!cfg)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	fuse_loop_cfg_set_max_threads(cfg, 64);
	fuse_loop_cfg_set_idle_threads(cfg, 8);
	fs_watch_start(f);
	r = fuse_session_loop_mt(f->se, cfg);
	fs_watch_stop(f);
	fuse_loop_cfg_destroy(cfg);
	return r < 0 ? r : 0;
}

void fs_free(struct fs *f)
{
	if (!f)
		return;
	fs_unmount(f);
	fs_release_handles(f);
	follow_free(f);
	events_free(f);
	inval_free(f->inval);
	bymeta_free(f);
	remote_free(f);
	hosts_free(f);
	fuse_session_destroy(f->se);
	pthread_mutex_destroy(&f->handles_lock);
	free(f->mountpoint);
	free(f);
}

int fs_set_signal_handlers(struct fs *f)
{
	return fuse_set_signal_handlers(f->se) != 0 ? -EIO : 0;
}

void fs_remove_signal_handlers(struct fs *f)
{
	fuse_remove_signal_handlers(f->se);
}
