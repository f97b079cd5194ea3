/*
 * Checkpoints (docs/interface.md, "Checkpoints"): a sandbox's whole state
 * kept with it, to roll back to in place or to fork from.
 *
 * A checkpoint is a directory next to the sandbox's own files,
 * DIR/checkpoints/C/, holding what a hibernation holds (device state, the
 * guest RAM file, the disk), each a reflink clone, plus meta.json: when,
 * how long, and the sandbox's processes as they were (guest.c,
 * sandbox_procs_checkpoint). It is made as DIR/checkpoints/.new-C and
 * renamed into place once whole, so a crash never leaves half of one
 * listed; a re-adoption drops what a crash left half-made. The directory is
 * the truth: the objects here are its index in memory (ids for inodes),
 * loaded again at a restart.
 *
 * Everything runs from run_op with s->op_lock held and the state checked.
 */
#include <dirent.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "internal.h"
#include "ram.h"
#include "parse.h"

#define CKPT_DIR "checkpoints"
#define CKPT_NEW ".new-"
#define CKPT_META "meta.json"
/* what one can hold: 256 processes' unread output, 1 MiB a stream (one agent reply), in base64 */
#define CKPT_META_MAX ((size_t)256 * 2 * (1u << 20) / 3 * 4 + (1u << 20))

struct checkpoint {
	atomic_int refs;
	uint64_t id;
	char name[NAME_MAX_LEN + 1];
	char *dir;	   /* DIR/checkpoints/C */
	json_object *meta; /* meta.json: never changed once made */
};

static void checkpoint_free(struct checkpoint *c)
{
	free(c->dir);
	json_object_put(c->meta);
	free(c);
}

void checkpoint_unref(struct checkpoint *c)
{
	if (c && atomic_fetch_sub(&c->refs, 1) == 1)
		checkpoint_free(c);
}

static struct checkpoint *checkpoint_ref(struct checkpoint *c)
{
	atomic_fetch_add(&c->refs, 1);
	return c;
}

uint64_t checkpoint_id(const struct checkpoint *c)
{
	return c->id;
}

/* A new object for the complete checkpoint in dir (takes meta). */
static struct checkpoint *checkpoint_new(struct engine *e, const char *name, const char *dir, json_object *meta)
{
	struct checkpoint *c = calloc(1, sizeof(*c));

	if (!c || !(c->dir = strdup(dir))) {
		free(c);
		json_object_put(meta);
		return NULL;
	}
	atomic_init(&c->refs, 1);
	c->id = atomic_fetch_add(&e->next_id, 1);
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->meta = meta;
	return c;
}

/* A checkpoint event in MOUNT/events: made or removed. */
static void ckpt_event(struct sandbox *s, const char *name, const char *state)
{
	json_object *ev = json_object_new_object();

	json_object_object_add(ev, "type", json_object_new_string("checkpoint"));
	json_object_object_add(ev, "template", json_object_new_string(s->tpl->name));
	json_object_object_add(ev, "sandbox", json_object_new_string(s->name));
	json_object_object_add(ev, "name", json_object_new_string(name));
	json_object_object_add(ev, "state", json_object_new_string(state));
	pthread_mutex_lock(&s->e->lock);
	engine_emit(s->e, s->id, ev);
	pthread_mutex_unlock(&s->e->lock);
}

static char *ckpt_root(const struct sandbox *s)
{
	return strjoin(s->dir, "/" CKPT_DIR, NULL);
}

/* ---- the sandbox's list and the id tables (e->lock) ---- */

static struct checkpoint *find_locked(struct sandbox *s, const char *name)
{
	for (size_t i = 0; i < s->n_ckpts; i++)
		if (strcmp(s->ckpts[i]->name, name) == 0)
			return s->ckpts[i];
	return NULL;
}

/* Adds c (the list's reference is c's own); -ENOMEM leaves it out. */
static int add_locked(struct sandbox *s, struct checkpoint *c)
{
	struct checkpoint **v = realloc(s->ckpts, (s->n_ckpts + 1) * sizeof(*v));

	if (!v)
		return -ENOMEM;
	s->ckpts = v;
	if (s->indexed && idtable_put(&s->e->ckpts_by_id, c->id, c) < 0)
		return -ENOMEM;
	s->ckpts[s->n_ckpts++] = c;
	s->ckpts_gen++;
	return 0;
}

int sandbox_checkpoints_index(struct sandbox *s)
{
	struct engine *e = s->e;

	if (idtable_put(&e->ckdirs_by_id, s->ckdir_id, s) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < s->n_ckpts; i++)
		if (idtable_put(&e->ckpts_by_id, s->ckpts[i]->id, s->ckpts[i]) < 0) {
			while (i-- > 0)
				idtable_del(&e->ckpts_by_id, s->ckpts[i]->id);
			idtable_del(&e->ckdirs_by_id, s->ckdir_id);
			return -ENOMEM;
		}
	return 0;
}

void sandbox_checkpoints_unindex(struct sandbox *s)
{
	for (size_t i = 0; i < s->n_ckpts; i++)
		idtable_del(&s->e->ckpts_by_id, s->ckpts[i]->id);
	idtable_del(&s->e->ckdirs_by_id, s->ckdir_id);
}

void sandbox_checkpoints_free(struct sandbox *s)
{
	for (size_t i = 0; i < s->n_ckpts; i++)
		checkpoint_unref(s->ckpts[i]);
	free(s->ckpts);
	s->ckpts = NULL;
	s->n_ckpts = 0;
}

uint64_t sandbox_checkpoints_id(const struct sandbox *s)
{
	return s->ckdir_id;
}

struct sandbox *engine_checkpoints_dir_by_id(struct engine *e, uint64_t id)
{
	struct sandbox *s;

	pthread_mutex_lock(&e->lock);
	s = idtable_get(&e->ckdirs_by_id, id);
	if (s)
		atomic_fetch_add(&s->refs, 1);
	pthread_mutex_unlock(&e->lock);
	return s;
}

struct checkpoint *engine_checkpoint_by_id(struct engine *e, uint64_t id)
{
	struct checkpoint *c;

	pthread_mutex_lock(&e->lock);
	c = idtable_get(&e->ckpts_by_id, id);
	if (c)
		checkpoint_ref(c);
	pthread_mutex_unlock(&e->lock);
	return c;
}

struct checkpoint *sandbox_checkpoint_get(struct sandbox *s, const char *name)
{
	struct checkpoint *c;

	pthread_mutex_lock(&s->e->lock);
	c = find_locked(s, name);
	if (c)
		checkpoint_ref(c);
	pthread_mutex_unlock(&s->e->lock);
	return c;
}

char **sandbox_checkpoint_list(struct sandbox *s)
{
	char **v;

	pthread_mutex_lock(&s->e->lock);
	v = calloc(s->n_ckpts + 1, sizeof(*v));
	for (size_t i = 0; v && i < s->n_ckpts; i++)
		if (!(v[i] = strdup(s->ckpts[i]->name))) {
			strv_free(v);
			v = NULL;
		}
	pthread_mutex_unlock(&s->e->lock);
	return v;
}

/* ---- space: FIEMAP ---- */

struct extent {
	uint64_t physical, length;
};

struct extents {
	struct extent *v;
	size_t n, cap;
};

/*
 * The allocated extents of path (appended to *all if given), and its bytes
 * allocated and not shared with any other file. -errno where the file
 * system cannot say (no FIEMAP).
 */
static int file_extents(const char *path, uint64_t *allocated, uint64_t *exclusive, struct extents *all)
{
	enum { BATCH = 256 };
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	_cleanup_free_ struct fiemap *fm = calloc(1, sizeof(*fm) + BATCH * sizeof(struct fiemap_extent));
	uint64_t start = 0;

	if (fd < 0)
		return errno == ENOENT ? 0 : -errno; /* no disk: nothing */
	if (!fm)
		return -ENOMEM;
	for (;;) {
		bool last = false;

		memset(fm, 0, sizeof(*fm));
		fm->fm_start = start;
		fm->fm_length = FIEMAP_MAX_OFFSET - start;
		fm->fm_flags = FIEMAP_FLAG_SYNC;
		fm->fm_extent_count = BATCH;
		if (ioctl(fd, FS_IOC_FIEMAP, fm) < 0)
			return -errno;
		if (fm->fm_mapped_extents == 0)
			break;
		for (unsigned i = 0; i < fm->fm_mapped_extents; i++) {
			const struct fiemap_extent *x = &fm->fm_extents[i];

			*allocated += x->fe_length;
			if (!(x->fe_flags & FIEMAP_EXTENT_SHARED))
				*exclusive += x->fe_length;
			if (all && !(x->fe_flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC))) {
				if (all->n == all->cap) {
					size_t cap = all->cap ? all->cap * 2 : 256;
					struct extent *nv = realloc(all->v, cap * sizeof(*nv));

					if (!nv)
						return -ENOMEM;
					all->v = nv;
					all->cap = cap;
				}
				all->v[all->n++] = (struct extent){ x->fe_physical, x->fe_length };
			}
			last = x->fe_flags & FIEMAP_EXTENT_LAST;
			start = x->fe_logical + x->fe_length;
		}
		if (last)
			break;
	}
	return 0;
}

static int cmp_extent(const void *a, const void *b)
{
	const struct extent *x = a, *y = b;

	return x->physical < y->physical ? -1 : x->physical > y->physical;
}

/* The bytes the extents cover together: each physical byte counted once. */
static uint64_t extents_union(struct extents *all)
{
	uint64_t total = 0, end = 0;

	if (!all->n)
		return 0; /* (qsort of no array: undefined) */
	qsort(all->v, all->n, sizeof(*all->v), cmp_extent);
	for (size_t i = 0; i < all->n; i++) {
		uint64_t a = all->v[i].physical, b = a + all->v[i].length;

		if (a < end)
			a = end;
		if (b > a) {
			total += b - a;
			end = b;
		}
	}
	return total;
}

/* A checkpoint's files: the device state, the guest RAM, the disk. */
static const enum vm_file ckpt_files[] = { VM_HIBERNATE, VM_MEM, VM_DISK };

/* Apparent, allocated and exclusive bytes of the checkpoint in dir; -errno if the store cannot say. */
static int ckpt_space(const char *dir, uint64_t *apparent, uint64_t *allocated, uint64_t *exclusive,
		      struct extents *all)
{
	*apparent = *allocated = *exclusive = 0;
	for (size_t i = 0; i < ARRAY_SIZE(ckpt_files); i++) {
		_cleanup_free_ char *p = vm_file(dir, ckpt_files[i]);
		struct stat st;
		int r;

		if (!p)
			return -ENOMEM;
		if (stat(p, &st) == 0)
			*apparent += (uint64_t)st.st_size;
		if ((r = file_extents(p, allocated, exclusive, all)) < 0)
			return r;
	}
	return 0;
}

char *checkpoint_render_status(struct checkpoint *c)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	json_object *procs = json_object_new_array(), *mp = NULL;
	uint64_t apparent, allocated, exclusive;
	bool space = ckpt_space(c->dir, &apparent, &allocated, &exclusive, NULL) == 0;
	size_t n;

	if (!o || !procs) {
		json_object_put(procs);
		return NULL;
	}
	json_object_object_get_ex(c->meta, "procs", &mp);
	n = json_object_is_type(mp, json_type_array) ? json_object_array_length(mp) : 0;
	for (size_t i = 0; i < n; i++) {
		const char *pn = jget_str(json_object_array_get_idx(mp, i), "name");

		if (pn)
			json_object_array_add(procs, json_object_new_string(pn));
	}
	json_object_object_add(o, "name", json_object_new_string(c->name));
	json_object_object_add(o, "created_unix_ms", json_object_new_int64(jget_int(c->meta, "created_unix_ms", 0)));
	json_object_object_add(o, "from_state", json_object_new_string(jget_str(c->meta, "from_state") ?
									    jget_str(c->meta, "from_state") : "unknown"));
	json_object_object_add(o, "save_ms", ms_json(jget_double(c->meta, "save_ms")));
	json_object_object_add(o, "paused_ms", ms_json(jget_double(c->meta, "paused_ms")));
	{
		json_object *ph = NULL;

		json_object_object_get_ex(c->meta, "phases_ms", &ph);
		json_object_object_add(o, "phases_ms", ph ? json_object_get(ph) : NULL);
	}
	json_object_object_add(o, "procs", procs);
	json_object_object_add(o, "mem_mib", json_object_new_int64(jget_int(c->meta, "mem_mib", 0)));
	json_object_object_add(o, "apparent_bytes", space ? json_object_new_int64((int64_t)apparent) : NULL);
	json_object_object_add(o, "allocated_bytes", space ? json_object_new_int64((int64_t)allocated) : NULL);
	json_object_object_add(o, "exclusive_bytes", space ? json_object_new_int64((int64_t)exclusive) : NULL);
	return strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE),
		       "\n", NULL);
}

/*
 * The union of the checkpoints' extents is read once per set (status is
 * read often, and a set of 16 is 48 FIEMAP walks): kept with the set's
 * generation, read again only when a checkpoint came or went.
 */
void sandbox_checkpoints_status(struct sandbox *s, json_object *o)
{
	struct extents all = { 0 };
	char **dirs = NULL;
	size_t n;
	uint64_t gen;
	int64_t bytes;

	pthread_mutex_lock(&s->e->lock);
	n = s->n_ckpts;
	gen = s->ckpts_gen;
	bytes = n == 0 ? 0 : s->ckpts_bytes_gen == gen ? s->ckpts_bytes : -2;
	dirs = bytes == -2 ? calloc(n + 1, sizeof(*dirs)) : NULL;
	for (size_t i = 0; dirs && i < n; i++)
		dirs[i] = strdup(s->ckpts[i]->dir);
	pthread_mutex_unlock(&s->e->lock);
	if (bytes == -2) {
		bool oom = !dirs;
		int r = 0;

		for (size_t i = 0; !oom && i < n && r == 0; i++) {
			uint64_t a, b, c;

			oom = !dirs[i];
			r = oom ? -ENOMEM : ckpt_space(dirs[i], &a, &b, &c, &all);
		}
		oom = oom || r == -ENOMEM;
		bytes = r == 0 && !oom ? (int64_t)extents_union(&all) : -1;
		pthread_mutex_lock(&s->e->lock);
		if (s->ckpts_gen == gen && !oom) { /* not kept after an allocation failure: try again next time */
			s->ckpts_bytes = bytes;
			s->ckpts_bytes_gen = gen;
		}
		pthread_mutex_unlock(&s->e->lock);
	}
	json_object_object_add(o, "checkpoints", json_object_new_int64((int64_t)n));
	json_object_object_add(o, "checkpoints_bytes", bytes >= 0 ? json_object_new_int64(bytes) : NULL);
	free(all.v);
	strv_free(dirs);
}

/* ---- making one ---- */

static int clone_file(struct engine *e, const char *from_dir, const char *to_dir, enum vm_file f, bool need)
{
	_cleanup_free_ char *src = vm_file(from_dir, f), *dst = vm_file(to_dir, f);
	enum clone_method m;

	if (!src || !dst)
		return -ENOMEM;
	if (!need && access(src, F_OK) < 0 && errno == ENOENT)
		return 0;
	return store_clone(&e->store, src, dst, &m);
}

/* Writes back a file's dirty pages (best effort: only time depends on it). */
static void flush_file(const char *dir, enum vm_file f)
{
	_cleanup_free_ char *p = vm_file(dir, f);
	_cleanup_close_ int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;

	/* the data only: what a reflink waits for (an fdatasync would also force the log, ~20 ms here) */
	if (fd >= 0)
		(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
					       SYNC_FILE_RANGE_WAIT_AFTER);
}

static json_object *meta_new(const char *name, enum sandbox_state from, unsigned mem_mib, json_object *procs)
{
	json_object *m = json_object_new_object();

	if (!m) {
		json_object_put(procs);
		return NULL;
	}
	json_object_object_add(m, "name", json_object_new_string(name));
	json_object_object_add(m, "created_unix_ms", json_object_new_int64((int64_t)realtime_ms()));
	json_object_object_add(m, "from_state", json_object_new_string(sandbox_state_name(from)));
	json_object_object_add(m, "mem_mib", json_object_new_int64(mem_mib));
	json_object_object_add(m, "procs", procs);
	return m;
}

int op_checkpoint(struct sandbox *s, const char *name)
{
	struct engine *e = s->e;
	_cleanup_free_ char *root = ckpt_root(s), *tmp = NULL, *dst = NULL, *meta_path = NULL, *what = NULL;
	_cleanup_json_ json_object *meta = NULL;
	json_object *procs = NULL;
	struct checkpoint *c;
	enum sandbox_state st;
	unsigned mem_mib, max = e->opts.max_checkpoints;
	bool exists, has_disk;
	size_t n;
	uint64_t t0 = now_ns(), tp = 0;
	double paused_ms = 0, phase_ms[3] = { 0 }; /* the device state, memory, disk */
	int r;

	if (!root || !(tmp = strjoin(root, "/" CKPT_NEW, name, NULL)) || !(dst = strjoin(root, "/", name, NULL)) ||
	    !(meta_path = strjoin(tmp, "/" CKPT_META, NULL)) || !(what = strjoin("checkpoint ", name, NULL)))
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	st = s->state;
	exists = find_locked(s, name) != NULL;
	n = s->n_ckpts;
	mem_mib = s->tpl->cfg.mem_mib;
	has_disk = template_has_disk(s->tpl);
	pthread_mutex_unlock(&e->lock);
	if (exists) {
		set_ctl_error(s, "checkpoint %s: the sandbox has a checkpoint of that name", name);
		return -EEXIST;
	}
	if (n >= max) {
		set_ctl_error(s, "checkpoint %s: the sandbox has %zu checkpoints, the most --max-checkpoints allows (%u): "
			      "rmdir one", name, n, max);
		return -ENOSPC;
	}
	if ((r = sandbox_admit_vm(s, mem_mib, what)) < 0)
		return r;
	rm_rf(tmp); /* an earlier failure's, if its clean-up failed too */
	if ((r = mkdir_p(tmp, 0700)) < 0) {
		set_ctl_error(s, "checkpoint %s: %s: %s", name, tmp, strerror(-r));
		return r;
	}
	if (st == SB_HIBERNATED) {
		/* its hibernation image is a checkpoint already: cloned, the guest not woken */
		r = clone_file(e, s->dir, tmp, VM_HIBERNATE, true);
		if (r == 0)
			r = clone_file(e, s->dir, tmp, VM_MEM, true);
		if (r == 0 && has_disk)
			r = clone_file(e, s->dir, tmp, VM_DISK, true);
		if (r < 0)
			set_ctl_error(s, "checkpoint %s: cloning the hibernation image failed: %s", name, strerror(-r));
		else if (!(procs = sandbox_procs_checkpoint(s)))
			r = -ENOMEM;
	} else {
		_cleanup_free_ char *state = vm_file(tmp, VM_HIBERNATE), *mem = vm_file(s->dir, VM_MEM);
		bool was_running = st == SB_READY;

		/*
		 * The vCPUs stop from the device-state save until the resume: the
		 * memory and disk files are consistent for their clones, and the
		 * processes' host side (what the guest sent before it stopped)
		 * matches the guest's memory.
		 */
		/*
		 * The memory's reflink writes its dirty pages back first: done
		 * here while the guest runs, the clone under the stop has only
		 * what the guest dirtied since (measured: docs/benchmarks.md).
		 */
		flush_file(s->dir, VM_MEM);
		tp = now_ns();
		r = state && mem ? vmm_snapshot(s->vmm, state, mem, QMP_TIMEOUT_MS, NULL) : -ENOMEM;
		phase_ms[0] = ns_to_ms(now_ns() - tp);
		if (r < 0)
			set_ctl_error(s, "checkpoint %s: saving the device state failed: %s", name, strerror(-r));
		if (r == 0 && (r = clone_file(e, s->dir, tmp, VM_MEM, true)) < 0)
			set_ctl_error(s, "checkpoint %s: cloning memory failed: %s", name, strerror(-r));
		phase_ms[1] = ns_to_ms(now_ns() - tp) - phase_ms[0];
		if (r == 0 && has_disk && (r = clone_file(e, s->dir, tmp, VM_DISK, true)) < 0)
			set_ctl_error(s, "checkpoint %s: cloning the disk failed: %s", name, strerror(-r));
		phase_ms[2] = ns_to_ms(now_ns() - tp) - phase_ms[0] - phase_ms[1];
		if (r == 0 && !(procs = sandbox_procs_checkpoint(s)))
			r = -ENOMEM;
		if (was_running && vmm_resume(s->vmm, QMP_TIMEOUT_MS) < 0 && r == 0) {
			r = -EIO;
			set_ctl_error(s, "checkpoint %s: the sandbox did not resume", name);
		}
		if (was_running)
			paused_ms = ns_to_ms(now_ns() - tp);
	}
	if (r == 0 && !(meta = meta_new(name, st, mem_mib, TAKE_PTR(procs))))
		r = -ENOMEM;
	json_object_put(procs);
	if (r == 0) {
		const char *txt;

		json_object *ph = st == SB_HIBERNATED ? NULL : json_object_new_object();

		if (ph) {
			json_object_object_add(ph, "state", json_object_new_double(phase_ms[0]));
			json_object_object_add(ph, "memory", json_object_new_double(phase_ms[1]));
			json_object_object_add(ph, "disk", json_object_new_double(phase_ms[2]));
			json_object_object_add(meta, "phases_ms", ph);
		}
		json_object_object_add(meta, "paused_ms", json_object_new_double(paused_ms));
		json_object_object_add(meta, "save_ms", json_object_new_double(ns_to_ms(now_ns() - t0)));
		txt = json_object_to_json_string_ext(meta, JSON_C_TO_STRING_PLAIN);
		/*
		 * Not synced, like the clones beside it: a checkpoint outlives the
		 * daemon (the page cache does), not a power loss, as the sandbox's
		 * own memory does not. Syncing cost ~15 ms of log forces here.
		 */
		if ((r = write_file_atomic(meta_path, txt, strlen(txt), false)) < 0)
			set_ctl_error(s, "checkpoint %s: writing %s failed: %s", name, meta_path, strerror(-r));
	}
	if (r == 0) {
		sandbox_phase(s, "checkpoint");
		if (rename(tmp, dst) < 0) {
			r = -errno;
			set_ctl_error(s, "checkpoint %s: %s: %s", name, dst, strerror(-r));
		}
	}
	if (r < 0) {
		rm_rf(tmp);
		return r;
	}
	c = checkpoint_new(e, name, dst, TAKE_PTR(meta));
	pthread_mutex_lock(&e->lock);
	r = c ? add_locked(s, c) : -ENOMEM;
	pthread_mutex_unlock(&e->lock);
	if (r < 0) {
		/* not listed: not kept either */
		checkpoint_unref(c);
		rm_rf(dst);
		set_ctl_error(s, "checkpoint %s: out of memory", name);
		return r;
	}
	ckpt_event(s, name, "made");
	log_info("sandbox %s/%s: checkpoint %s in %.1f ms (vCPUs stopped %.1f ms)", s->tpl->name, s->name, name,
		 ns_to_ms(now_ns() - t0), paused_ms);
	return 0;
}

/* ---- rollback ---- */

int op_rollback(struct sandbox *s, const char *name)
{
	struct engine *e = s->e;
	struct checkpoint *c = sandbox_checkpoint_get(s, name);
	_cleanup_free_ char *mem = vm_file(s->dir, VM_MEM), *disk = vm_file(s->dir, VM_DISK);
	_cleanup_free_ char *hib = vm_file(s->dir, VM_HIBERNATE), *nmem = NULL, *ndisk = NULL, *cstate = NULL;
	_cleanup_free_ char *cmem = NULL, *cdisk = NULL;
	_cleanup_close_ int state_fd = -1;
	json_object *procs = NULL;
	enum clone_method m;
	const char *step = "prepare";
	bool had_disk;
	uint64_t t0 = now_ns(), t_clone, t_retire;
	int r;

	if (!c) {
		set_ctl_error(s, "rollback %s: the sandbox has no checkpoint of that name", name);
		return -ENOENT;
	}
	cstate = vm_file(c->dir, VM_HIBERNATE);
	cmem = vm_file(c->dir, VM_MEM);
	cdisk = vm_file(c->dir, VM_DISK);
	nmem = mem ? strjoin(mem, ".rollback", NULL) : NULL;
	ndisk = disk ? strjoin(disk, ".rollback", NULL) : NULL;
	if (!mem || !disk || !hib || !cstate || !cmem || !cdisk || !nmem || !ndisk) {
		checkpoint_unref(c);
		return -ENOMEM;
	}
	/* the new files first, next to the sandbox's: a failure up to here changes nothing */
	had_disk = access(cdisk, F_OK) == 0;
	state_fd = open(cstate, O_RDONLY | O_CLOEXEC);
	r = state_fd < 0 ? -errno : store_clone(&e->store, cmem, nmem, &m);
	if (r == 0 && had_disk)
		r = store_clone(&e->store, cdisk, ndisk, &m);
	if (r < 0) {
		set_ctl_error(s, "rollback %s: cloning the checkpoint's files failed: %s", name, strerror(-r));
		unlink(nmem);
		unlink(ndisk);
		checkpoint_unref(c);
		return r;
	}
	t_clone = now_ns();
	/* from here the sandbox is changed: its VMM ends, C's files take the place of its own */
	if (s->vmm && (r = sandbox_retire_vmm(s)) < 0) {
		unlink(nmem);
		unlink(ndisk);
		checkpoint_unref(c);
		return r; /* destroyed meanwhile */
	}
	t_retire = now_ns();
	sandbox_phase(s, "rollback");
	if (rename(nmem, mem) < 0 || (had_disk && rename(ndisk, disk) < 0))
		r = -errno;
	unlink(hib); /* a hibernated one's image is not its state any more */
	ram_delta_drop(&s->hib_delta); /* nor is what its memory was known to be */
	if (r == 0) {
		json_object_object_get_ex(c->meta, "procs", &procs);
		sandbox_procs_replace(s, procs);
		r = sandbox_start_own_vmm(s, state_fd, &step);
	}
	checkpoint_unref(c);
	if (r < 0) {
		set_ctl_error(s, "rollback %s failed at %s: %s (see console and %s/vmm.log)", name, step, strerror(-r),
			      s->dir);
		/* its own state is gone: the sandbox fails, its files (and checkpoints) stay until rmdir */
		pthread_mutex_lock(&e->lock);
		if (s->vmm)
			vmm_kill(s->vmm);
		pthread_mutex_unlock(&e->lock);
		sandbox_fail(s, "rollback to checkpoint %s failed at %s: %s", name, step, strerror(-r));
		return r;
	}
	r = sandbox_transition(s, SB_EV_ROLLBACK);
	log_info("sandbox %s/%s rolled back to checkpoint %s in %.1f ms (clone %.1f, end the VMM %.1f, restore and "
		 "attach %.1f)", s->tpl->name, s->name, name, ns_to_ms(now_ns() - t0), ns_to_ms(t_clone - t0),
		 ns_to_ms(t_retire - t_clone), ns_to_ms(now_ns() - t_retire));
	return r;
}

/* ---- fork NEW from C ---- */

int op_fork_from(struct sandbox *s, const char *child, const char *ckpt)
{
	struct engine *e = s->e;
	struct template *t = s->tpl;
	struct checkpoint *c = sandbox_checkpoint_get(s, ckpt);
	struct sandbox *k = NULL;
	_cleanup_free_ char *state = NULL, *kstate = NULL, *what = NULL, *reason = NULL;
	enum clone_method m;
	unsigned mem_mib;
	int r;

	if (!c) {
		set_ctl_error(s, "fork %s from %s: the sandbox has no checkpoint of that name", child, ckpt);
		return -ENOENT;
	}
	pthread_mutex_lock(&e->lock);
	mem_mib = t->cfg.mem_mib;
	pthread_mutex_unlock(&e->lock);
	what = strjoin("fork ", child, NULL);
	if ((r = sandbox_admit_vm(s, mem_mib, what ? what : "fork")) < 0) {
		checkpoint_unref(c);
		return r;
	}
	r = sandbox_create_internal(e, t, child, s, NULL, &k);
	if (r < 0) {
		set_ctl_error(s, "fork %s from %s: %s", child, ckpt, r == -EEXIST ? "a sandbox of that name exists" :
			      r == -EINVAL ? "bad name" : strerror(-r));
		checkpoint_unref(c);
		return r;
	}
	if (asprintf(&reason, "fork of %s from checkpoint %s", s->name, ckpt) >= 0) {
		pthread_mutex_lock(&e->lock);
		free(k->path_reason);
		k->path_reason = TAKE_PTR(reason);
		pthread_mutex_unlock(&e->lock);
	}
	/* the child's create thread restores DIR/fork.state with the memory and disk next to it (run_fork) */
	state = vm_file(c->dir, VM_HIBERNATE);
	kstate = strjoin(k->dir, "/fork.state", NULL);
	r = !state || !kstate ? -ENOMEM : mkdir_p(k->dir, 0700);
	if (r == 0 && (r = store_clone(&e->store, state, kstate, &m)) == 0 &&
	    (r = clone_file(e, c->dir, k->dir, VM_MEM, true)) == 0)
		r = clone_file(e, c->dir, k->dir, VM_DISK, false);
	if (r < 0)
		set_ctl_error(s, "fork %s from %s: cloning the checkpoint failed: %s", child, ckpt, strerror(-r));
	checkpoint_unref(c);
	return sandbox_fork_handoff(k, r);
}

/* ---- rmdir, and loading at a restart ---- */

int sandbox_checkpoint_remove(struct sandbox *s, const char *name)
{
	struct engine *e = s->e;
	struct checkpoint *c = NULL;

	/* never under a rollback or a fork reading its files */
	pthread_mutex_lock(&s->op_lock);
	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < s->n_ckpts && !c; i++)
		if (strcmp(s->ckpts[i]->name, name) == 0) {
			c = s->ckpts[i];
			memmove(s->ckpts + i, s->ckpts + i + 1, (s->n_ckpts - i - 1) * sizeof(*s->ckpts));
			s->n_ckpts--;
			s->ckpts_gen++;
			idtable_del(&e->ckpts_by_id, c->id);
		}
	pthread_mutex_unlock(&e->lock);
	if (c)
		rm_rf(c->dir);
	pthread_mutex_unlock(&s->op_lock);
	if (!c)
		return -ENOENT;
	ckpt_event(s, name, "removed");
	checkpoint_unref(c);
	return 0;
}

void sandbox_checkpoints_load(struct sandbox *s)
{
	_cleanup_free_ char *root = ckpt_root(s);
	DIR *d = root ? opendir(root) : NULL;
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d))) {
		_cleanup_free_ char *dir = NULL, *meta_path = NULL, *txt = NULL;
		json_object *meta = NULL;
		struct checkpoint *c;
		size_t len;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (!(dir = strjoin(root, "/", de->d_name, NULL)))
			continue;
		if (strncmp(de->d_name, CKPT_NEW, strlen(CKPT_NEW)) == 0) {
			log_info("sandbox %s: dropping a checkpoint a crash left half-made (%s)", s->name, de->d_name);
			rm_rf(dir);
			continue;
		}
		if (name_validate(de->d_name) < 0 || !(meta_path = strjoin(dir, "/" CKPT_META, NULL)) ||
		    read_file(meta_path, CKPT_META_MAX, &txt, &len) < 0 || !(meta = json_tokener_parse(txt)) ||
		    !json_object_is_type(meta, json_type_object)) {
			log_warn("sandbox %s: %s is no checkpoint (no readable %s): left alone", s->name, dir, CKPT_META);
			json_object_put(meta);
			continue;
		}
		if (!(c = checkpoint_new(s->e, de->d_name, dir, meta)) || add_locked(s, c) < 0)
			checkpoint_unref(c);
	}
	closedir(d);
}
