/*
 * Templates: a config, its identity, and a baked snapshot (cold boot, wait
 * for the agent, pause, save device state; guest RAM stays in its file).
 * Layout in the store: templates/NAME/config.json and templates/NAME/snapshot/
 * {mem, disk.img, state, bake.json}. A bake writes snapshot.new/ and swaps it
 * in under snap_lock, so a create never clones half of two snapshots.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

#define BAKE_BOOT_TIMEOUT_MS 60000
#define QMP_TIMEOUT_MS 10000

const char *template_state_name(enum template_state s)
{
	static const char *const n[] = { "new", "baking", "ready", "failed", "stale" };

	return s <= TPL_STALE ? n[s] : "unknown";
}

uint64_t template_id(const struct template *t)
{
	return t->id;
}

static void set_error(char **slot, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(char **slot, const char *fmt, ...)
{
	va_list ap;
	char *m = NULL;

	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	va_end(ap);
	free(*slot);
	*slot = m;
}

/* Identity of cfg, computed without the engine lock (hashing takes time). */
static int compute_identity(struct engine *e, const struct template_config *cfg, char out[65], char **ret_error)
{
	char dk[65] = "", di[65] = "", dr[65] = "";
	_cleanup_free_ char *cmdline = NULL;
	struct vmm_spec spec = { 0 };
	struct identity_inputs in;
	int r;

	if ((r = engine_file_digest(e, cfg->kernel, dk)) < 0) {
		set_error(ret_error, "kernel %s: %s", cfg->kernel, strerror(-r));
		return r;
	}
	if (cfg->initrd && (r = engine_file_digest(e, cfg->initrd, di)) < 0) {
		set_error(ret_error, "initrd %s: %s", cfg->initrd, strerror(-r));
		return r;
	}
	if (cfg->rootfs && (r = engine_file_digest(e, cfg->rootfs, dr)) < 0) {
		set_error(ret_error, "rootfs %s: %s", cfg->rootfs, strerror(-r));
		return r;
	}
	if (cfg->net && !e->net) {
		set_error(ret_error, "\"net\": networking is off (start emberfs with --net)");
		return -EINVAL;
	}
	if ((r = engine_spec_init(e, cfg, &spec, &cmdline)) < 0) {
		set_error(ret_error, "accel kvm requested but /dev/kvm is not usable");
		return r;
	}
	/* the command line as booted: what this host adds changes start-up too */
	in = (struct identity_inputs){ .kernel_digest = dk, .initrd_digest = di, .rootfs_digest = dr,
				       .cmdline = spec.cmdline, .vcpus = cfg->vcpus, .mem_mib = cfg->mem_mib,
				       .backend = cfg->backend, .accel = spec.accel, .vmm_version = e->vmm_version,
				       .restore_capability = RESTORE_CAPABILITY, .derived = cfg->derived_from };
	identity_digest(&in, out);
	return 0;
}

static void bake_info_clear(struct bake_info *b)
{
	free(b->baked_at);
	memset(b, 0, sizeof(*b));
}

static void snap_file_from_json(json_object *files, const char *name, struct snap_file *f)
{
	json_object *o, *sz, *ct, *crc;

	if (json_object_object_get_ex(files, name, &o) && json_object_object_get_ex(o, "size", &sz) &&
	    json_object_object_get_ex(o, "ctime_ns", &ct) && json_object_object_get_ex(o, "crc32c", &crc) &&
	    json_object_is_type(crc, json_type_string)) {
		f->size = (uint64_t)json_object_get_int64(sz);
		f->ctime_ns = json_object_get_int64(ct);
		f->crc32c = (uint32_t)strtoul(json_object_get_string(crc), NULL, 16);
		f->known = true;
	}
}

/* Records a snapshot file as it is now (after its last write): size, ctime, CRC-32C. */
static int snap_file_record(const char *path, json_object *files, const char *name)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	json_object *o;
	struct stat st;
	uint32_t crc;
	char hex[9];
	int r;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		return -errno;
	if ((r = crc32c_fd(fd, &crc)) < 0)
		return r;
	snprintf(hex, sizeof(hex), "%08x", crc);
	o = json_object_new_object();
	json_object_object_add(o, "size", json_object_new_int64((int64_t)st.st_size));
	json_object_object_add(o, "ctime_ns", json_object_new_int64((int64_t)st.st_ctim.tv_sec * 1000000000 +
								      st.st_ctim.tv_nsec));
	json_object_object_add(o, "crc32c", json_object_new_string(hex));
	json_object_object_add(files, name, o);
	return 0;
}

/* Reads snapshot/bake.json; the snapshot counts only if its identity matches. */
int template_load_bake(struct template *t)
{
	_cleanup_free_ char *p = strjoin(t->snapdir, "/bake.json", NULL), *text = NULL;
	_cleanup_json_ json_object *o = NULL;
	json_object *v, *tm;
	struct bake_info b = { 0 };

	if (!p || read_file(p, 1 << 16, &text, NULL) < 0 || !(o = json_tokener_parse(text)))
		return -ENOENT;
	if (!json_object_object_get_ex(o, "identity", &v) || strlen(json_object_get_string(v)) != 64)
		return -EINVAL;
	memcpy(b.identity, json_object_get_string(v), 65);
	if (!json_object_object_get_ex(o, "state_sha256", &v) || strlen(json_object_get_string(v)) != 64)
		return -EINVAL;
	memcpy(b.state_digest, json_object_get_string(v), 65);
	if (json_object_object_get_ex(o, "mem_size", &v))
		b.mem_size = (uint64_t)json_object_get_int64(v);
	if (json_object_object_get_ex(o, "baked_at", &v))
		b.baked_at = strdup(json_object_get_string(v));
	if (json_object_object_get_ex(o, "timings", &tm))
		timings_from_json(&b.timings, tm);
	if (json_object_object_get_ex(o, "files", &v)) {
		snap_file_from_json(v, "mem", &b.mem);
		snap_file_from_json(v, "disk.img", &b.disk);
	}
	bake_info_clear(&t->bake);
	t->bake = b;
	t->has_bake = true;
	atomic_store(&t->snap_checked, false); /* a full check at its first use */
	return 0;
}

int template_new(struct engine *e, const char *name, const char *config, bool persist, struct template **ret)
{
	_cleanup_free_ char *err = NULL, *cpath = NULL, *rendered = NULL;
	struct template *t;
	int r;

	if ((r = name_validate(name)) < 0)
		return r;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	atomic_init(&t->refs, 1);
	t->id = atomic_fetch_add(&e->next_id, 1);
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->e = e;
	pthread_rwlock_init(&t->snap_lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	pthread_cond_init(&t->pool_cond, NULL);
	t->dir = strjoin(e->store.root, "/templates/", name, NULL);
	t->snapdir = strjoin(t->dir, "/snapshot", NULL);
	cpath = strjoin(t->dir, "/config.json", NULL);
	if (!t->dir || !t->snapdir || !cpath)
		goto nomem;
	r = template_config_parse(config, strlen(config), &t->cfg, &err);
	if (r < 0) {
		log_warn("template %s: %s", name, err ? err : "bad config");
		template_unref(t); /* no thread started yet */
		return r;
	}
	if (persist && ((r = mkdir_p(t->dir, 0700)) < 0 || !(rendered = template_config_render(&t->cfg)) ||
			(r = write_file_atomic(cpath, rendered, strlen(rendered), true)) < 0)) {
		template_unref(t); /* no thread started yet */
		return r < 0 ? r : -ENOMEM;
	}
	if (compute_identity(e, &t->cfg, t->identity, &t->error) < 0) {
		template_set_state(t, TPL_FAILED);
	} else if (template_load_bake(t) == 0) {
		template_set_state(t, strcmp(t->bake.identity, t->identity) == 0 ? TPL_READY : TPL_STALE);
	}
	template_pool_load(t);
	pool_start(t); /* idles until the template is ready */
	*ret = t;
	return 0;
nomem:
	template_unref(t); /* no thread started yet */
	return -ENOMEM;
}

void template_unref(struct template *t)
{
	if (t && atomic_fetch_sub(&t->refs, 1) == 1) {
		template_config_clear(&t->cfg);
		bake_info_clear(&t->bake);
		free(t->error);
		free(t->sandboxes);
		free(t->dir);
		free(t->snapdir);
		pthread_rwlock_destroy(&t->snap_lock);
		pthread_cond_destroy(&t->cond);
		pthread_cond_destroy(&t->pool_cond);
		free(t->pool_error);
		free(t->demand);
		free(t);
	}
}

/* Engine shutdown: stop the bake, destroy every sandbox, drop the registry's ref. */
void template_free(struct template *t)
{
	struct engine *e = t->e;

	pthread_mutex_lock(&e->lock);
	atomic_store(&t->bake_cancel, true);
	if (t->bake_vmm)
		e->vmm->kill(t->bake_vmm);
	pthread_mutex_unlock(&e->lock);
	cold_wake(e);
	if (t->bake_joinable)
		pthread_join(t->bake_thread, NULL);
	pool_stop(t);
	for (;;) {
		char name[NAME_MAX_LEN + 1];

		pthread_mutex_lock(&e->lock);
		if (t->n_sandboxes == 0) {
			pthread_mutex_unlock(&e->lock);
			break;
		}
		snprintf(name, sizeof(name), "%s", t->sandboxes[0]->name);
		pthread_mutex_unlock(&e->lock);
		engine_sandbox_destroy(e, t, name);
	}
	template_unref(t);
}

/* ---- snapshot clones ---- */

static int why_set(char **why, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int why_set(char **why, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(why, fmt, ap) < 0)
		*why = NULL;
	va_end(ap);
	return r;
}

/*
 * A memory or disk file of the snapshot against its record: present, a
 * regular file, of size (0: the record's, if any), with the ctime the bake
 * left (any write since changes it); with full, its CRC-32C too (once per
 * daemon run).
 */
static int verify_snap_file(const char *path, const char *name, const struct snap_file *f, uint64_t size, bool full,
			    char **why)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	uint32_t crc;
	int r;

	if (fd < 0 || fstat(fd, &st) < 0)
		return why_set(why, -EINVAL, "snapshot %s: %s", name, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return why_set(why, -EINVAL, "snapshot %s: not a regular file", name);
	if (!size && f->known)
		size = f->size;
	if (size && (uint64_t)st.st_size != size)
		return why_set(why, -EINVAL, "snapshot %s: %" PRIu64 " bytes, baked with %" PRIu64 " (truncated or replaced)",
			       name, (uint64_t)st.st_size, size);
	if (!f->known)
		return 0;
	if ((int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec != f->ctime_ns)
		return why_set(why, -EINVAL, "snapshot %s: changed since the bake (its ctime)", name);
	if (full && ((r = crc32c_fd(fd, &crc)) < 0 || crc != f->crc32c))
		return why_set(why, -EINVAL, "snapshot %s: checksum mismatch (corrupt)", name);
	return 0;
}

/*
 * Checks the snapshot before any VMM maps it: the device state's SHA-256
 * (every time: it is small), the RAM and disk files' size and ctime (every
 * time: a stat) and their CRC-32C (the first time after the daemon started).
 */
static int verify_snapshot(struct template *t, const char *state, const char *mem, const char *disk,
			   const struct bake_info *b, char **why)
{
	bool full = !atomic_load(&t->snap_checked);
	char got[65];
	int r;

	if ((r = verify_snap_file(mem, "mem", &b->mem, b->mem_size, full, why)) < 0)
		return r;
	if (sha256_file(state, got) < 0 || strcmp(got, b->state_digest) != 0)
		return why_set(why, -EINVAL, "snapshot state digest mismatch (corrupt or truncated)");
	if (disk && (r = verify_snap_file(disk, "disk.img", &b->disk, 0, full, why)) < 0)
		return r;
	if (full)
		atomic_store(&t->snap_checked, true);
	return 0;
}

int template_snapshot_clone(struct template *t, const char *mem_dst, const char *disk_dst,
			    enum clone_method *ret_method, int *ret_state_fd, char **ret_why)
{
	struct engine *e = t->e;
	_cleanup_free_ char *smem = strjoin(t->snapdir, "/mem", NULL);
	_cleanup_free_ char *sdisk = strjoin(t->snapdir, "/disk.img", NULL);
	_cleanup_free_ char *sstate = strjoin(t->snapdir, "/state", NULL);
	struct bake_info b;
	int r, fd = -1;

	if (!smem || !sdisk || !sstate)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	b = t->bake;
	b.baked_at = NULL; /* not ours */
	pthread_mutex_unlock(&e->lock);
	pthread_rwlock_rdlock(&t->snap_lock);
	r = verify_snapshot(t, sstate, smem, disk_dst ? sdisk : NULL, &b, ret_why);
	if (r == 0)
		r = store_clone(&e->store, smem, mem_dst, ret_method);
	if (r == 0 && disk_dst)
		r = store_clone(&e->store, sdisk, disk_dst, ret_method);
	if (r == 0 && (fd = open(sstate, O_RDONLY | O_CLOEXEC)) < 0)
		r = -errno;
	pthread_rwlock_unlock(&t->snap_lock);
	if (r < 0) {
		unlink(mem_dst);
		if (disk_dst)
			unlink(disk_dst);
		if (!*ret_why)
			*ret_why = strdup("snapshot clone failed");
		return r;
	}
	*ret_state_fd = fd;
	return 0;
}

/*
 * A pristine disk clone for a cold boot or a bake. The rootfs usually lives
 * outside the store (no reflink across filesystems), so it is copied into the
 * store once, under a name that carries its digest, and cloned from there.
 */
int template_clone_rootfs(struct template *t, const char *rootfs, const char *dst, enum clone_method *ret_method)
{
	struct engine *e = t->e;
	_cleanup_free_ char *base = NULL, *tmp = NULL;
	char digest[65];
	enum clone_method m;
	int r = engine_file_digest(e, rootfs, digest);

	if (r < 0)
		return r;
	base = strjoin(t->dir, "/rootfs-", digest, ".img", NULL);
	tmp = strjoin(t->dir, "/rootfs-", digest, ".tmp", NULL);
	if (!base || !tmp)
		return -ENOMEM;
	pthread_mutex_lock(&e->base_lock);
	if (access(base, F_OK) < 0) {
		unlink(tmp);
		r = mkdir_p(t->dir, 0700);
		if (r == 0 && (r = store_clone(&e->store, rootfs, tmp, &m)) == 0 && rename(tmp, base) < 0)
			r = -errno;
		if (r < 0)
			unlink(tmp);
	}
	pthread_mutex_unlock(&e->base_lock);
	return r < 0 ? r : store_clone(&e->store, base, dst, ret_method);
}

/* ---- bake ---- */

struct bake_ctx {
	struct template *t;
	struct template_config cfg; /* a copy: the bake runs without the lock */
	char identity[65];
	char *newdir, *rundir;
	struct timings tm;
	char *error;
};

static int bake_prepare(struct bake_ctx *b, char **mem, char **disk)
{
	enum clone_method m;
	_cleanup_close_ int fd = -1;
	int r;

	rm_rf(b->newdir);
	if ((r = mkdir_p(b->newdir, 0700)) < 0 || (r = mkdir_p(b->rundir, 0700)) < 0)
		return r;
	*mem = strjoin(b->newdir, "/mem", NULL);
	*disk = b->cfg.rootfs ? strjoin(b->newdir, "/disk.img", NULL) : NULL;
	if (!*mem || (b->cfg.rootfs && !*disk))
		return -ENOMEM;
	fd = open(*mem, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)b->cfg.mem_mib << 20) < 0)
		return -errno;
	if (*disk && (r = template_clone_rootfs(b->t, b->cfg.rootfs, *disk, &m)) < 0)
		set_error(&b->error, "copy of rootfs %s failed: %s", b->cfg.rootfs, strerror(-r));
	return r;
}

static int bake_boot_and_snapshot(struct bake_ctx *b, const char *mem, const char *disk)
{
	struct template *t = b->t;
	struct engine *e = t->e;
	_cleanup_free_ char *qmp = strjoin(b->rundir, "/qmp.sock", NULL);
	_cleanup_free_ char *agent = strjoin(b->rundir, "/agent.sock", NULL);
	_cleanup_free_ char *con = strjoin(b->newdir, "/console.log", NULL);
	_cleanup_free_ char *log = strjoin(b->newdir, "/vmm.log", NULL);
	_cleanup_free_ char *state = strjoin(b->newdir, "/state", NULL);
	_cleanup_json_ json_object *ping = json_object_new_object();
	struct agent_client *ac = NULL;
	struct netslot *net = NULL;
	struct vmm *v = NULL;
	struct vmm_spec spec = { .cfg = &b->cfg, .accel = e->accel, .name = t->name, .mem_path = mem,
				 .disk_path = disk, .qmp_path = qmp, .agent_path = agent, .console_path = con,
				 .log_path = log, .incoming_fd = -1 };
	_cleanup_free_ char *cmdline = NULL;
	const char *step = "spawn";
	int r;

	if (!qmp || !agent || !con || !log || !state || !ping)
		return -ENOMEM;
	r = engine_spec_init(e, &b->cfg, &spec, &cmdline);
	if (r == 0 && b->cfg.net) {
		bool built;

		step = "network slot";
		r = netpool_claim(e->net, &net, &built, &b->error);
		if (r == 0) {
			spec.netns_fd = net->netns_fd;
			step = "spawn";
		}
	}
	if (r == 0)
		r = e->vmm->spawn(e->qemu_binary, &spec, &v);
	if (r == 0) {
		pthread_mutex_lock(&e->lock);
		t->bake_vmm = v;
		if (atomic_load(&t->bake_cancel))
			e->vmm->kill(v);
		pthread_mutex_unlock(&e->lock);
		r = e->vmm->connect(v, QMP_TIMEOUT_MS, &t->bake_cancel);
	}
	timings_lap(&b->tm, "spawn");
	if (r == 0) {
		step = "boot (agent)";
		json_object_object_add(ping, "op", json_object_new_string("ping"));
		r = agent_connect(agent, QMP_TIMEOUT_MS, &t->bake_cancel, &ac);
		if (r == 0)
			r = agent_call(ac, ping, BAKE_BOOT_TIMEOUT_MS, NULL);
		timings_lap(&b->tm, "boot");
	}
	if (r == 0) {
		step = "snapshot";
		r = e->vmm->snapshot(v, state, QMP_TIMEOUT_MS);
		timings_lap(&b->tm, "snapshot");
	}
	if (r < 0 && !atomic_load(&t->bake_cancel)) {
		/* a guest that died (a panic at boot) says why better than the call that broke */
		_cleanup_free_ char *cause = v ? vmm_death_cause(e, v, r, con, log) : NULL;

		set_error(&b->error, "bake failed at %s (see %s/bake-console.log and %s/bake-vmm.log): %s", step,
			  t->dir, t->dir, cause ? cause : strerror(-r));
	}
	agent_free(ac);
	pthread_mutex_lock(&e->lock);
	t->bake_vmm = NULL;
	pthread_mutex_unlock(&e->lock);
	if (v)
		e->vmm->free(v); /* kills the paused VMM: RAM file and state are complete */
	if (net)
		netpool_release(e->net, net);
	return r;
}

static int fsync_path(const char *path)
{
	_cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;

	if (!path)
		return 0;
	return fd < 0 || fsync(fd) < 0 ? -errno : 0;
}

/* Flush and digest the artifacts, write bake.json, swap the snapshot in. */
static int bake_commit(struct bake_ctx *b, const char *mem, const char *disk)
{
	struct template *t = b->t;
	_cleanup_free_ char *state = strjoin(b->newdir, "/state", NULL);
	_cleanup_free_ char *bj = strjoin(b->newdir, "/bake.json", NULL);
	_cleanup_free_ char *old = strjoin(t->dir, "/snapshot.old", NULL);
	_cleanup_free_ char *at = iso8601_now();
	_cleanup_json_ json_object *o = json_object_new_object();
	json_object *files;
	char sd[65];
	const char *txt;
	int r;

	/* the bake's VMM user had them: the snapshot is root's */
	if (chown(mem, 0, 0) < 0 || (disk && chown(disk, 0, 0) < 0))
		return -errno;
	/* A clone of a file with dirty pages would copy them first: flush once, here. */
	if ((r = fsync_path(mem)) < 0 || (r = fsync_path(disk)) < 0 || (r = sha256_file(state, sd)) < 0)
		return r;
	timings_lap(&b->tm, "sync");
	files = json_object_new_object();
	json_object_object_add(o, "files", files);
	if ((r = snap_file_record(mem, files, "mem")) < 0 || (disk && (r = snap_file_record(disk, files, "disk.img")) < 0))
		return r;
	json_object_object_add(o, "identity", json_object_new_string(b->identity));
	json_object_object_add(o, "state_sha256", json_object_new_string(sd));
	json_object_object_add(o, "mem_size", json_object_new_int64((int64_t)b->cfg.mem_mib << 20));
	json_object_object_add(o, "baked_at", json_object_new_string(at ? at : ""));
	json_object_object_add(o, "timings", timings_json(&b->tm));
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	if ((r = write_file_atomic(bj, txt, strlen(txt), true)) < 0)
		return r;
	pthread_rwlock_wrlock(&t->snap_lock);
	rm_rf(old);
	if (rename(t->snapdir, old) < 0 && errno != ENOENT)
		r = -errno;
	if (r == 0 && rename(b->newdir, t->snapdir) < 0)
		r = -errno;
	pthread_rwlock_unlock(&t->snap_lock);
	rm_rf(old);
	return r;
}

/*
 * Makes newdir (mem, disk.img, state, written by the caller) this template's
 * snapshot, as a bake's commit does: files flushed, bake.json written with
 * the template's identity and the state's digest, swapped in atomically;
 * the template turns ready. Used by ctl "template NEW".
 */
int template_install_snapshot(struct template *t, const char *newdir, struct timings *tm)
{
	struct engine *e = t->e;
	_cleanup_free_ char *state = strjoin(newdir, "/state", NULL), *bj = strjoin(newdir, "/bake.json", NULL);
	_cleanup_free_ char *mem = strjoin(newdir, "/mem", NULL), *disk = strjoin(newdir, "/disk.img", NULL);
	_cleanup_free_ char *at = iso8601_now();
	_cleanup_json_ json_object *o = json_object_new_object();
	struct slot *stale;
	json_object *files;
	char sd[65], ident[65];
	uint64_t mem_size;
	bool has_disk;
	const char *txt;
	int r;

	if (!state || !bj || !mem || !disk || !o)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	memcpy(ident, t->identity, 65);
	mem_size = (uint64_t)t->cfg.mem_mib << 20;
	has_disk = t->cfg.rootfs != NULL;
	pthread_mutex_unlock(&e->lock);
	if ((r = fsync_path(mem)) < 0 || (has_disk && (r = fsync_path(disk)) < 0) || (r = fsync_path(state)) < 0 ||
	    (r = sha256_file(state, sd)) < 0)
		return r;
	timings_lap(tm, "sync");
	files = json_object_new_object();
	json_object_object_add(o, "files", files);
	if ((r = snap_file_record(mem, files, "mem")) < 0 || (has_disk && (r = snap_file_record(disk, files, "disk.img")) < 0))
		return r;
	json_object_object_add(o, "identity", json_object_new_string(ident));
	json_object_object_add(o, "state_sha256", json_object_new_string(sd));
	json_object_object_add(o, "mem_size", json_object_new_int64((int64_t)mem_size));
	json_object_object_add(o, "baked_at", json_object_new_string(at ? at : ""));
	json_object_object_add(o, "timings", timings_json(tm));
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	if ((r = write_file_atomic(bj, txt, strlen(txt), true)) < 0)
		return r;
	pthread_rwlock_wrlock(&t->snap_lock);
	rm_rf(t->snapdir);
	if (rename(newdir, t->snapdir) < 0)
		r = -errno;
	pthread_rwlock_unlock(&t->snap_lock);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	r = template_load_bake(t);
	if (r == 0)
		template_set_state(t, strcmp(t->bake.identity, t->identity) == 0 ? TPL_READY : TPL_STALE);
	stale = pool_take_unfit(t);
	pthread_cond_broadcast(&t->cond);
	pthread_cond_broadcast(&t->pool_cond);
	pthread_mutex_unlock(&e->lock);
	slots_free_list(e, stale);
	return r;
}

/* A failed bake's logs outlive its directory: the error points at them. */
static void keep_log(struct bake_ctx *b, const char *from, const char *to)
{
	_cleanup_free_ char *src = strjoin(b->newdir, "/", from, NULL);
	_cleanup_free_ char *dst = strjoin(b->t->dir, "/", to, NULL);

	if (src && dst)
		rename(src, dst);
}

static void *bake_main(void *arg)
{
	struct bake_ctx *b = arg;
	struct template *t = b->t;
	struct engine *e = t->e;
	_cleanup_free_ char *mem = NULL, *disk = NULL;
	struct slot *stale = NULL;
	int r;

	timings_start(&b->tm);
	r = cold_acquire(e, &t->bake_cancel);
	timings_lap(&b->tm, "queue");
	if (r < 0) {
		/* cancelled while queued: nothing to release */
		pthread_mutex_lock(&e->lock);
		t->bake_running = false;
		template_set_state(t, t->has_bake && strcmp(t->bake.identity, t->identity) == 0 ? TPL_READY : TPL_NEW);
		pthread_cond_broadcast(&t->cond);
		pthread_mutex_unlock(&e->lock);
		goto out;
	}
	r = bake_prepare(b, &mem, &disk);
	timings_lap(&b->tm, "prepare");
	if (r == 0)
		r = bake_boot_and_snapshot(b, mem, disk);
	if (r == 0)
		r = bake_commit(b, mem, disk);
	cold_release(e);
	rm_rf(b->rundir);
	if (r < 0) {
		keep_log(b, "console.log", "bake-console.log");
		keep_log(b, "vmm.log", "bake-vmm.log");
		rm_rf(b->newdir);
	}

	pthread_mutex_lock(&e->lock);
	t->bake_running = false;
	if (r == 0 && template_load_bake(t) == 0) {
		template_set_state(t, strcmp(t->bake.identity, t->identity) == 0 ? TPL_READY : TPL_STALE);
		free(t->error);
		t->error = NULL;
		log_info("template %s baked in %.0f ms", t->name, timings_total(&b->tm));
	} else if (atomic_load(&t->bake_cancel)) {
		/* shutting down: not a failure of the template */
		template_set_state(t, t->has_bake && strcmp(t->bake.identity, t->identity) == 0 ? TPL_READY : TPL_NEW);
		log_info("template %s: bake cancelled", t->name);
	} else {
		template_set_state(t, TPL_FAILED);
		if (!b->error)
			set_error(&b->error, "bake failed: %s", strerror(r < 0 ? -r : EIO));
		free(t->error);
		t->error = TAKE_PTR(b->error);
		log_error("template %s: %s", t->name, t->error ? t->error : "bake failed");
	}
	stale = pool_take_unfit(t); /* a new snapshot: the old one's slots go now */
	pthread_cond_broadcast(&t->cond);
	pthread_cond_broadcast(&t->pool_cond);
	pthread_mutex_unlock(&e->lock);
	slots_free_list(e, stale);
out:
	template_config_clear(&b->cfg);
	free(b->newdir);
	free(b->rundir);
	free(b->error);
	free(b);
	template_unref(t);
	return NULL;
}

/* Starts a bake in the background. e->lock held. */
void template_start_bake(struct template *t)
{
	struct engine *e = t->e;
	struct bake_ctx *b = calloc(1, sizeof(*b));
	char idbuf[32];

	if (!b || template_config_copy(&t->cfg, &b->cfg) < 0) {
		free(b);
		set_error(&t->error, "bake: out of memory");
		template_set_state(t, TPL_FAILED);
		return;
	}
	snprintf(idbuf, sizeof(idbuf), "%" PRIu64, t->id);
	b->t = t;
	memcpy(b->identity, t->identity, 65);
	b->newdir = strjoin(t->dir, "/snapshot.new", NULL);
	b->rundir = strjoin(e->state_dir, "/run/", idbuf, NULL);
	/* the previous bake thread was reaped by template_reap_bake() */
	atomic_fetch_add(&t->refs, 1);
	t->bake_running = true;
	template_set_state(t, TPL_BAKING);
	if (!b->newdir || !b->rundir || thread_create(&t->bake_thread, NULL, bake_main, b)) {
		t->bake_running = false;
		template_set_state(t, TPL_FAILED);
		set_error(&t->error, "bake: cannot start");
		template_config_clear(&b->cfg);
		free(b->newdir);
		free(b->rundir);
		free(b);
		atomic_fetch_sub(&t->refs, 1);
		return;
	}
	t->bake_joinable = true;
}

/* ---- files ---- */

char *template_render_status(struct template *t)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	struct engine *e = t->e;
	char *s;

	pthread_mutex_lock(&e->lock);
	json_object_object_add(o, "name", json_object_new_string(t->name));
	json_object_object_add(o, "state", json_object_new_string(template_state_name(t->state)));
	json_object_object_add(o, "identity", json_object_new_string(t->identity));
	json_object_object_add(o, "sandboxes", json_object_new_int((int)t->n_sandboxes));
	if (t->has_bake) {
		json_object *b = json_object_new_object();

		json_object_object_add(b, "identity", json_object_new_string(t->bake.identity));
		json_object_object_add(b, "baked_at", json_object_new_string(t->bake.baked_at ? t->bake.baked_at : ""));
		json_object_object_add(b, "state_sha256", json_object_new_string(t->bake.state_digest));
		json_object_object_add(b, "timings", timings_json(&t->bake.timings));
		json_object_object_add(o, "bake", b);
	}
	json_object_object_add(o, "pool", pool_status_json(t));
	if (e->net) {
		_cleanup_free_ char *ns = netpool_status_json(e->net);

		json_object_object_add(o, "netpool", ns ? json_tokener_parse(ns) : NULL);
	}
	json_object_object_add(o, "store", json_object_new_string(engine_store_method(e)));
	json_object_object_add(o, "error", t->error ? json_object_new_string(t->error) : NULL);
	pthread_mutex_unlock(&e->lock);
	s = strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE),
		    "\n", NULL);
	return s;
}

char *template_render_config(struct template *t)
{
	char *s;

	pthread_mutex_lock(&t->e->lock);
	s = template_config_render(&t->cfg);
	pthread_mutex_unlock(&t->e->lock);
	return s;
}

char *template_render_identity(struct template *t)
{
	char *s;

	pthread_mutex_lock(&t->e->lock);
	s = strjoin(t->identity, "\n", NULL);
	pthread_mutex_unlock(&t->e->lock);
	return s;
}

/* A new config: parsed and checked first, so a bad one changes nothing. */
int template_write_config(struct template *t, const char *data, size_t len)
{
	struct engine *e = t->e;
	_cleanup_free_ char *err = NULL, *cpath = strjoin(t->dir, "/config.json", NULL), *txt = NULL;
	struct template_config cfg = { 0 };
	struct slot *stale = NULL;
	char ident[65];
	int r;

	if (!cpath)
		return -ENOMEM;
	r = template_config_parse(data, len, &cfg, &err);
	if (r == 0 && compute_identity(e, &cfg, ident, &err) < 0) {
		template_config_clear(&cfg);
		r = -EINVAL; /* a missing file or an unusable accelerator is a bad value */
	}
	pthread_mutex_lock(&e->lock);
	if (r == 0 && t->removed) {
		template_config_clear(&cfg);
		r = -ENOENT;
	} else if (r < 0) {
		free(t->error);
		t->error = TAKE_PTR(err);
	} else if (t->bake_running) {
		template_config_clear(&cfg);
		free(t->error);
		t->error = strdup("config: refused while a bake runs");
		r = -EBUSY;
	} else if (!(txt = template_config_render(&cfg)) || (r = write_file_atomic(cpath, txt, strlen(txt), true)) < 0) {
		template_config_clear(&cfg);
		r = r < 0 ? r : -ENOMEM;
	} else {
		template_config_clear(&t->cfg);
		t->cfg = cfg;
		memcpy(t->identity, ident, 65);
		free(t->error);
		t->error = NULL;
		if (t->has_bake)
			template_set_state(t, strcmp(t->bake.identity, ident) == 0 ? TPL_READY : TPL_STALE);
		else if (t->state == TPL_FAILED)
			template_set_state(t, TPL_NEW);
		stale = pool_take_unfit(t); /* a new identity: the old one's slots go now */
		pthread_cond_broadcast(&t->pool_cond); /* ready again: the filler may start */
	}
	pthread_mutex_unlock(&e->lock);
	slots_free_list(e, stale);
	return r;
}

/*
 * Joins a bake thread that has finished (bake_running false), outside the
 * lock: its tail frees stale slots, which kills and reaps VMMs.
 */
void template_reap_bake(struct template *t)
{
	struct engine *e = t->e;
	pthread_t th;
	bool join;

	pthread_mutex_lock(&e->lock);
	join = t->bake_joinable && !t->bake_running;
	th = t->bake_thread;
	if (join)
		t->bake_joinable = false;
	pthread_mutex_unlock(&e->lock);
	if (join)
		pthread_join(th, NULL);
}

/* ctl: "bake" bakes unless a matching snapshot exists; "rebake" always bakes. */
int template_ctl(struct template *t, const char *cmd, size_t len)
{
	struct engine *e = t->e;
	bool force;
	int r = 0;

	while (len > 0 && (cmd[len - 1] == '\n' || cmd[len - 1] == ' '))
		len--;
	if (len == 4 && memcmp(cmd, "bake", 4) == 0)
		force = false;
	else if (len == 6 && memcmp(cmd, "rebake", 6) == 0)
		force = true;
	else
		return -EINVAL;
	template_reap_bake(t);
	pthread_mutex_lock(&e->lock);
	if (t->removed)
		r = -ENOENT;
	else if (t->cfg.derived_from) {
		/* its snapshot is a sandbox's state: a boot cannot make it again */
		free(t->error);
		t->error = strdup("bake: refused: this template was made from a sandbox (derived_from); its snapshot cannot be rebuilt by booting");
		r = -EINVAL;
	} else if (t->bake_running || t->bake_joinable || e->shutting_down) {
		r = -EBUSY;
	} else if (force || t->state != TPL_READY) {
		char *why = NULL;

		/* a bake needs its guest's RAM in the store: refused before anything, the snapshot in place kept */
		if ((r = engine_store_admit(e, t->cfg.mem_mib, &why)) < 0) {
			free(t->error);
			t->error = why ? strjoin("bake: refused: ", why, NULL) : NULL;
			free(why);
		} else {
			template_start_bake(t);
		}
	}
	pthread_mutex_unlock(&e->lock);
	return r;
}


void template_set_state(struct template *t, enum template_state st)
{
	json_object *ev;

	if (t->state == st && st != TPL_BAKING)
		return;
	t->state = st;
	if (st == TPL_READY)
		t->last_demand_ms = now_ns() / 1000000; /* a template that just became ready gets its first slot */
	ev = json_object_new_object();
	json_object_object_add(ev, "type", json_object_new_string("template"));
	json_object_object_add(ev, "template", json_object_new_string(t->name));
	json_object_object_add(ev, "state", json_object_new_string(template_state_name(st)));
	engine_emit(t->e, t->id, ev);
}
