/*
 * Templates: a config, its identity, and a baked snapshot (cold boot, wait
 * for the agent, pause, save device state; guest RAM stays in its file).
 * Layout in the store: templates/NAME/config.json and templates/NAME/snapshot/
 * {mem, disk.img, state, bake.json}. A bake writes snapshot.new/ and swaps it
 * in under snap_lock, so a create never clones half of two snapshots.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "dockerfile.h"
#include "internal.h"
#include "ram.h"
#include "parse.h"


const char *template_state_name(enum template_state s)
{
	static const char *const n[] = { "new", "baking", "ready", "failed", "stale" };

	return s <= TPL_STALE ? n[s] : "unknown";
}

const char *template_name(const struct template *t)
{
	return t->name;
}

uint64_t template_id(const struct template *t)
{
	return t->id;
}

/*
 * Identity of cfg, computed without the engine lock (hashing takes time).
 * A template that builds its root disk (an image, a Dockerfile) has no
 * rootfs to hash: what its last build made (build, a digest) stands for it.
 */
static int compute_identity(struct engine *e, const struct template_config *cfg, const char *build, char out[65],
			    char **ret_error)
{
	char dk[65] = "", di[65] = "", dr[65] = "", disk[16] = "";
	_cleanup_free_ char *cmdline = NULL, *start = NULL;
	struct vmm_spec spec = { 0 };
	const struct engine_driver *d;
	struct identity_inputs in;
	int r;

	if ((r = engine_file_digest(e, cfg->kernel, dk)) < 0) {
		error_set(ret_error, "kernel %s: %s", cfg->kernel, strerror(-r));
		return r;
	}
	if (cfg->initrd && (r = engine_file_digest(e, cfg->initrd, di)) < 0) {
		error_set(ret_error, "initrd %s: %s", cfg->initrd, strerror(-r));
		return r;
	}
	if (cfg->rootfs && (r = engine_file_digest(e, cfg->rootfs, dr)) < 0) {
		error_set(ret_error, "rootfs %s: %s", cfg->rootfs, strerror(-r));
		return r;
	}
	if (cfg->net && !e->net) {
		error_set(ret_error, "\"net\": networking is off (start emberfs with --net)");
		return -EINVAL;
	}
	if (!(d = engine_driver(e, cfg->backend, ret_error)))
		return -EINVAL;
	if ((r = engine_spec_init(e, cfg, &spec, &cmdline)) < 0) {
		error_set(ret_error, "accel kvm requested but /dev/kvm is not usable");
		return r;
	}
	if (cfg->disk_mib)
		snprintf(disk, sizeof(disk), "%u", cfg->disk_mib);
	if (cfg->start && asprintf(&start, "%s\n%u\n%s", cfg->start, cfg->ready_tcp,
				   cfg->ready_cmd ? cfg->ready_cmd : "") < 0)
		return -ENOMEM;
	/* the command line as booted: what this host adds changes start-up too */
	in = (struct identity_inputs){ .kernel_digest = dk, .initrd_digest = di, .rootfs_digest = dr,
				       .cmdline = spec.cmdline, .vcpus = cfg->vcpus, .mem_mib = cfg->mem_mib,
				       .backend = cfg->backend, .accel = spec.accel, .vmm_version = d->version,
				       .restore_capability = d->ops->restore_capability, .derived = cfg->derived_from,
				       .image = cfg->image, .build = build && *build ? build : NULL,
				       .disk = cfg->disk_mib ? disk : NULL, .start = start, .warm = cfg->warm };
	identity_digest(&in, out);
	return 0;
}

static void bake_info_clear(struct bake_info *b)
{
	free(b->baked_at);
	free(b->start.cmd);
	if (b->lazy_mem)
		manifest_clear(b->lazy_mem);
	free(b->lazy_mem);
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
int snap_file_record(const char *path, json_object *files, const char *name)
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

	/* a snapshot from the store lists its chunks: 4 MiB holds 60,000 of them */
	if (!p || read_file(p, BAKE_RECORD_MAX, &text, NULL) < 0 || !(o = json_tokener_parse(text)))
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
	if (json_object_object_get_ex(o, "source", &v) && strcmp(json_object_get_string(v), "store") == 0) {
		json_object *st, *mem;
		_cleanup_free_ char *why = NULL;

		/* its memory is in the store: the manifest the restores serve it from */
		if (!json_object_object_get_ex(o, "store", &st) || !json_object_object_get_ex(st, "mem", &mem) ||
		    !(b.lazy_mem = calloc(1, sizeof(*b.lazy_mem))) || manifest_from_json(mem, b.lazy_mem, &why) < 0) {
			log_error("template %s: %s: the store's memory manifest: %s", t->name, p, why ? why : "missing");
			bake_info_clear(&b);
			return -EINVAL;
		}
	}
	if (json_object_object_get_ex(o, "start", &v) && jget_str(v, "cmd")) {
		b.start.job = (uint64_t)jget_int(v, "job", 0);
		b.start.pid = jget_int(v, "pid", 0);
		b.start.start_unix_ms = (uint64_t)jget_int(v, "start_unix_ms", 0);
		b.start.cmd = strdup(jget_str(v, "cmd"));
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
	pthread_mutex_init(&t->ram_lock, NULL);
	t->ram_fd = -1;
	pthread_cond_init(&t->cond, NULL);
	pthread_cond_init(&t->pool_cond, NULL);
	t->dir = strjoin(e->store.root, "/templates/", name, NULL);
	t->snapdir = strjoin(t->dir, "/snapshot", NULL);
	cpath = strjoin(t->dir, "/config.json", NULL);
	if (!t->dir || !t->snapdir || !cpath)
		goto nomem;
	r = template_config_parse_drivers(config, strlen(config), e->opts.drivers, &t->cfg, &err);
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
	t->has_build = build_record_load(t, &t->build) == 0;
	if (compute_identity(e, &t->cfg, t->has_build ? t->build.cfg.digest : NULL, t->identity, &t->error) < 0) {
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
		build_result_clear(&t->build);
		free(t->error);
		free(t->create_error);
		free(t->store_error);
		free(t->store_install_error);
		free(t->sandboxes);
		free(t->dir);
		free(t->snapdir);
		pthread_rwlock_destroy(&t->snap_lock);
		if (t->ram_fd >= 0)
			close(t->ram_fd);
		pthread_mutex_destroy(&t->ram_lock);
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
		vmm_kill(t->bake_vmm);
	pthread_mutex_unlock(&e->lock);
	cold_wake(e);
	if (t->bake_joinable)
		pthread_join(t->bake_thread, NULL);
	pool_stop(t);
	/* a fill started by a restore (ended early by objstore_stop at shutdown) */
	pthread_mutex_lock(&t->ram_lock);
	if (t->fill_joinable) {
		t->fill_joinable = false;
		pthread_mutex_unlock(&t->ram_lock);
		pthread_join(t->fill_thread, NULL);
	} else {
		pthread_mutex_unlock(&t->ram_lock);
	}
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

/*
 * A new reference to the sealed base of the snapshot whose state has digest
 * (made from mem the first time). Under snap_lock (read): the snapshot does
 * not change meanwhile.
 */
static int snapshot_ram_base(struct template *t, const char *mem, uint64_t size, const char *digest, int *ret_fd)
{
	uint64_t t0 = now_ns(), copied = 0;
	int r = 0, fd;

	pthread_mutex_lock(&t->ram_lock);
	if (t->ram_fd < 0 || strcmp(t->ram_digest, digest) != 0) {
		if (t->ram_fd >= 0) /* an earlier snapshot's: its VMMs hold their own references */
			close(t->ram_fd);
		t->ram_fd = -1;
		if ((r = ram_base_create(mem, size, &fd, &copied)) == 0) {
			t->ram_fd = fd;
			snprintf(t->ram_digest, sizeof(t->ram_digest), "%s", digest);
			log_info("template %s: the snapshot's memory is shared by its clones (%" PRIu64 " MiB in %.1f ms)",
				 t->name, copied >> 20, (double)(now_ns() - t0) / 1e6);
		}
	}
	if (r == 0 && (*ret_fd = fcntl(t->ram_fd, F_DUPFD_CLOEXEC, 3)) < 0)
		r = -errno;
	pthread_mutex_unlock(&t->ram_lock);
	return r;
}

/*
 * Past this many pages of its own (64 MiB) a sandbox's memory is not given
 * to a VMM on the base page by page: 64 MiB took ~31 ms from the page cache
 * (docs/benchmarks.md, "Fifth pass"), more from a cold one, against a
 * spawn's ~90-100 ms that then maps the whole file.
 */
#define DELTA_MAX_PAGES ((64u << 20) / 4096)

int template_delta_base(struct template *t, const struct ram_delta *d, int *ret_fd)
{
	struct ram_base_id id;
	int r = 0;

	if (!d || d->len == 0 || d->pages > DELTA_MAX_PAGES)
		return -ENOENT;
	pthread_mutex_lock(&t->ram_lock);
	if (t->ram_fd < 0 || ram_base_id_of(t->ram_fd, &id) < 0 || !ram_base_id_equal(&id, &d->base))
		r = -ENOENT;
	else if (ret_fd && (*ret_fd = fcntl(t->ram_fd, F_DUPFD_CLOEXEC, 3)) < 0)
		r = -errno;
	pthread_mutex_unlock(&t->ram_lock);
	return r;
}

/*
 * A snapshot installed from the store: its memory a lazy file (objstore.h),
 * its hot chunks in the cache first (a store that cannot give them fails the
 * restore here, with the reason, before any VMM maps it). The sandbox's own
 * memory file starts empty: its first snapshot writes every page
 * (qemu.c, snapshot_private).
 */
struct fill_job {
	struct template *t;
	struct manifest m;
};

/* The rest of a store snapshot's memory into the cache: the next restores map it whole from memory. */
static void *fill_main(void *arg)
{
	struct fill_job *j = arg;
	uint64_t t0 = now_ns();
	char *why = NULL;
	int r = snapstore_fill(j->t->e, &j->m, &why);

	if (r == 0)
		log_info("template %s: the snapshot's memory is all in this host's cache (%.0f ms): restores map it "
			 "from memory now", j->t->name, ns_to_ms(now_ns() - t0));
	else if (r != -ECANCELED)
		log_warn("template %s: the rest of the snapshot's memory was not fetched: %s (restores go on lazily)",
			 j->t->name, why ? why : strerror(-r));
	free(why);
	manifest_clear(&j->m);
	free(j);
	return NULL;
}

/*
 * Whether a restore of the store snapshot with state digest maps a sealed
 * base built from the cache (*ret_fd; 0), or the lazy file (-EAGAIN). Once
 * the cache holds all of the snapshot's memory a base is built (once per
 * snapshot, as for a local snapshot) which every later restore maps: as
 * fast as a local one, and independent of the daemon's lazy files. The
 * first restore on a host is lazy, fetching what a restore touches; from
 * the second on the template is in use here, and what its memory still
 * lacks is fetched in the background.
 */
static int lazy_base(struct template *t, const struct manifest *m, const char *digest, int *ret_fd)
{
	_cleanup_free_ char *why = NULL;
	struct fill_job *j = NULL;
	bool start_fill = false;
	int r = -EAGAIN, fd;

	struct objstore_stats st;

	objstore_get_stats(t->e->objstore, &st);
	pthread_mutex_lock(&t->ram_lock);
	if (t->fill_joinable && pthread_tryjoin_np(t->fill_thread, NULL) == 0)
		t->fill_joinable = false; /* an earlier snapshot's, done */
	if (strcmp(t->lazy_digest, digest) != 0) {
		snprintf(t->lazy_digest, sizeof(t->lazy_digest), "%s", digest);
		t->lazy_restores = 0;
		t->fill_started = false;
	}
	t->lazy_restores++;
	if (t->ram_fd >= 0 && strcmp(t->ram_digest, digest) == 0) {
		r = 0;
	} else if ((r = snapstore_ram_base(t->e, m, &fd, &why)) == 0) {
		if (t->ram_fd >= 0)
			close(t->ram_fd);
		t->ram_fd = fd;
		snprintf(t->ram_digest, sizeof(t->ram_digest), "%s", digest);
		log_info("template %s: the store's snapshot memory is all in this host's cache: a base in memory now",
			 t->name);
	} else if (r == -EAGAIN && t->lazy_restores > 1 && !t->fill_started && !t->fill_joinable &&
		   manifest_data_bytes(m) <= st.limit_bytes / 2 && !atomic_load(&t->bake_cancel)) {
		/* (a cache that cannot hold it twice over would only churn) */
		start_fill = t->fill_started = true;
	} else if (r < 0 && r != -EAGAIN) {
		log_warn("template %s: no base from the cache (%s): restores stay lazy", t->name,
			 why ? why : strerror(-r));
		r = -EAGAIN;
	}
	if (r == 0 && (*ret_fd = fcntl(t->ram_fd, F_DUPFD_CLOEXEC, 3)) < 0)
		r = -errno;
	if (start_fill && (j = calloc(1, sizeof(*j))) && manifest_copy(m, &j->m) == 0) {
		j->t = t;
		if (thread_create(&t->fill_thread, NULL, fill_main, j) == 0) {
			t->fill_joinable = true;
			j = NULL;
		}
	}
	if (j) {
		manifest_clear(&j->m);
		free(j);
	}
	pthread_mutex_unlock(&t->ram_lock);
	return r;
}

static int lazy_clone(struct template *t, const struct manifest *m, const char *digest, const char *mem_dst,
		      int *ret_fd, char **why)
{
	struct engine *e = t->e;
	_cleanup_free_ char *name = snapstore_lazy_name(digest, false);
	_cleanup_close_ int fd = -1;
	int r;

	if (!name)
		return -ENOMEM;
	if (!e->objstore)
		return why_set(why, -EINVAL, "snapshot memory is in a store, and the daemon runs without --store");
	/* the sandbox's own memory file: empty, its first snapshot writes every page (qemu.c) */
	if ((fd = open(mem_dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		return why_set(why, -errno, "%s: %s", mem_dst, strerror(errno));
	if ((r = lazy_base(t, m, digest, ret_fd)) != -EAGAIN)
		return r;
	if ((r = objstore_prefetch(e->objstore, m, why)) < 0)
		return r;
	return objstore_lazy_open(e->objstore, name, m, ret_fd, why);
}

int template_snapshot_clone(struct template *t, const char *mem_dst, const char *disk_dst,
			    enum clone_method *ret_method, int *ret_state_fd, int *ret_ram_fd, char **ret_why)
{
	struct engine *e = t->e;
	_cleanup_free_ char *smem = vm_file(t->snapdir, VM_MEM);
	_cleanup_free_ char *sdisk = vm_file(t->snapdir, VM_DISK);
	_cleanup_free_ char *sstate = strjoin(t->snapdir, "/state", NULL);
	const struct engine_driver *d;
	struct manifest lazy = { 0 };
	struct bake_info b;
	bool base, is_lazy;
	int r = 0, fd = -1, ram = -1;

	if (!smem || !sdisk || !sstate)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	b = t->bake;
	b.baked_at = NULL; /* not ours */
	b.lazy_mem = NULL;
	is_lazy = t->bake.lazy_mem != NULL;
	if (is_lazy)
		r = manifest_copy(t->bake.lazy_mem, &lazy); /* a bake may replace the template's meanwhile */
	base = (d = engine_driver(e, t->cfg.backend, NULL)) && d->ops->ram_base;
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r;
	if (is_lazy && !base) {
		manifest_clear(&lazy);
		return why_set(ret_why, -EINVAL, "snapshot memory from the store needs a VMM driver that maps a base");
	}
	pthread_rwlock_rdlock(&t->snap_lock);
	if (is_lazy) {
		char got[65];

		if (sha256_file(sstate, got) < 0 || strcmp(got, b.state_digest) != 0)
			r = why_set(ret_why, -EINVAL, "snapshot state digest mismatch (corrupt or truncated)");
		if (r == 0 && disk_dst && (r = verify_snap_file(sdisk, "disk.img", &b.disk, 0, !atomic_load(&t->snap_checked),
								  ret_why)) == 0)
			atomic_store(&t->snap_checked, true);
	} else {
		r = verify_snapshot(t, sstate, smem, disk_dst ? sdisk : NULL, &b, ret_why);
		/* the memory file too: what a snapshot of the restored VMM writes the guest's own pages into */
		if (r == 0)
			r = store_clone(&e->store, smem, mem_dst, ret_method);
	}
	if (r == 0 && disk_dst)
		r = store_clone(&e->store, sdisk, disk_dst, ret_method);
	if (r == 0 && (fd = open(sstate, O_RDONLY | O_CLOEXEC)) < 0)
		r = -errno;
	if (r == 0 && is_lazy)
		r = lazy_clone(t, &lazy, b.state_digest, mem_dst, &ram, ret_why);
	else if (r == 0 && base && (r = snapshot_ram_base(t, smem, b.mem_size, b.state_digest, &ram)) < 0)
		why_set(ret_why, r, "snapshot memory: cannot make its shared base: %s", strerror(-r));
	pthread_rwlock_unlock(&t->snap_lock);
	manifest_clear(&lazy);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		unlink(mem_dst);
		if (disk_dst)
			unlink(disk_dst);
		if (!*ret_why)
			*ret_why = strdup("snapshot clone failed");
		return r;
	}
	*ret_state_fd = fd;
	*ret_ram_fd = ram;
	return 0;
}

static bool in_store(struct engine *e, const char *path)
{
	size_t n = strlen(e->store.root);

	return strncmp(path, e->store.root, n) == 0 && path[n] == '/';
}

/*
 * A pristine disk clone for a cold boot or a bake. A config's rootfs usually
 * lives outside the store (no reflink across filesystems), so it is copied
 * into the store once, under a name that carries its digest, and cloned from
 * there; a built disk is in the store already.
 */
int template_clone_rootfs(struct template *t, const char *rootfs, const char *dst, enum clone_method *ret_method)
{
	struct engine *e = t->e;
	_cleanup_free_ char *base = NULL, *tmp = NULL;
	char digest[65];
	enum clone_method m;
	int r;

	if (in_store(e, rootfs))
		return store_clone(&e->store, rootfs, dst, ret_method);
	if ((r = engine_file_digest(e, rootfs, digest)) < 0)
		return r;
	base = strjoin(t->dir, "/rootfs-", digest, ".img", NULL);
	tmp = strjoin(t->dir, "/rootfs-", digest, ".tmp", NULL);
	if (!base || !tmp)
		return -ENOMEM;
	/* twice: a bake's prune_rootfs_copies may remove the copy between the two clones */
	for (int attempt = 0; attempt < 2; attempt++) {
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
		if (r < 0 || (r = store_clone(&e->store, base, dst, ret_method)) != -ENOENT)
			break;
	}
	return r;
}

/* After a bake: the copies of other root disks than the one it booted go (sandboxes have their own clones). */
static void prune_rootfs_copies(struct template *t, const char *rootfs)
{
	struct engine *e = t->e;
	_cleanup_free_ char *keep = NULL;
	char digest[65];
	struct dirent *de;
	DIR *d;

	if (rootfs && !in_store(e, rootfs) && engine_file_digest(e, rootfs, digest) == 0 &&
	    !(keep = strjoin("rootfs-", digest, ".img", NULL)))
		return;
	pthread_mutex_lock(&e->base_lock);
	if ((d = opendir(t->dir))) {
		while ((de = readdir(d)))
			if (strncmp(de->d_name, "rootfs-", 7) == 0 && (!keep || strcmp(de->d_name, keep) != 0))
				unlinkat(dirfd(d), de->d_name, 0);
		closedir(d);
	}
	pthread_mutex_unlock(&e->base_lock);
}

/* ---- what a VM of the template runs with ---- */

bool template_has_disk(struct template *t)
{
	return t->cfg.rootfs || t->has_build;
}

int template_config_vm(struct template *t, struct template_config *dst)
{
	int r = template_config_copy(&t->cfg, dst);

	if (r == 0 && !dst->rootfs && t->has_build && !(dst->rootfs = strdup(t->build.disk)))
		r = -ENOMEM;
	return r;
}

/* ---- bake ---- */

struct bake_ctx {
	struct template *t;
	struct template_config cfg; /* a copy: the bake runs without the lock */
	char identity[65];
	char *newdir, *rundir;
	struct timings tm;
	char *error;
	bool built;		  /* the root disk was built (an image, a Dockerfile) */
	struct build_result build;
	int log_fd;		  /* the build log, while building and baking; -1: none */
	struct start_info start;  /* the start command, as left running for the snapshot */
};

/* The root disk the bake clones: the build's, or the config's rootfs. */
static const char *bake_rootfs(const struct bake_ctx *b)
{
	return b->built ? b->build.disk : b->cfg.rootfs;
}

static int bake_prepare(struct bake_ctx *b, char **mem, char **disk)
{
	enum clone_method m;
	int r;

	rm_rf(b->newdir);
	if ((r = mkdir_p(b->newdir, 0700)) < 0 || (r = mkdir_p(b->rundir, 0700)) < 0)
		return r;
	*mem = vm_file(b->newdir, VM_MEM); /* boot_cold makes it */
	*disk = bake_rootfs(b) ? vm_file(b->newdir, VM_DISK) : NULL;
	if (!*mem || (bake_rootfs(b) && !*disk))
		return -ENOMEM;
	if (*disk && (r = template_clone_rootfs(b->t, bake_rootfs(b), *disk, &m)) < 0)
		error_set(&b->error, "copy of rootfs %s failed: %s", bake_rootfs(b), strerror(-r));
	return r;
}

/* The image's env, workdir and user: the defaults of every exec and process (agent op "configure"). */
int template_agent_configure(struct agent_client *ac, const struct image_config *c)
{
	_cleanup_json_ json_object *req = json_object_new_object();
	json_object *env = json_object_new_object();

	if (!req || !env) {
		json_object_put(env);
		return -ENOMEM;
	}
	for (char **p = c->env; p && *p; p++) {
		const char *eq = strchr(*p, '=');
		_cleanup_free_ char *k = eq ? strndup(*p, (size_t)(eq - *p)) : NULL;

		if (k && *k)
			json_object_object_add(env, k, json_object_new_string(eq + 1));
	}
	json_object_object_add(req, "op", json_object_new_string("configure"));
	json_object_object_add(req, "env", env);
	if (c->workdir)
		json_object_object_add(req, "cwd", json_object_new_string(c->workdir));
	if (c->user)
		json_object_object_add(req, "user", json_object_new_string(c->user));
	return agent_call(ac, req, QMP_TIMEOUT_MS, NULL);
}

/* A call that answers ok or an error; the reply kept in *resp. */
static int call_op(struct agent_client *ac, json_object *req, unsigned timeout_ms, json_object **resp)
{
	int r = agent_call(ac, req, timeout_ms, resp);

	json_object_put(req);
	return r;
}

/* Whether the start command answers: its port accepts, or its check exits 0. */
static bool start_ready(struct bake_ctx *b, struct agent_client *ac)
{
	_cleanup_json_ json_object *resp = NULL;
	json_object *req = json_object_new_object();

	if (b->cfg.ready_tcp) {
		json_object_object_add(req, "op", json_object_new_string("probe"));
		json_object_object_add(req, "tcp", json_object_new_int((int)b->cfg.ready_tcp));
		return call_op(ac, req, QMP_TIMEOUT_MS, NULL) == 0;
	}
	json_object_object_add(req, "op", json_object_new_string("exec"));
	json_object_object_add(req, "sh", json_object_new_string(b->cfg.ready_cmd));
	json_object_object_add(req, "timeout_ms", json_object_new_int(10000));
	return call_op(ac, req, 20000, &resp) == 0 && jget_int(resp, "exit_code", -1) == 0;
}

/* What a start command that ended printed, into the build log: stdout, then stderr (64 KiB of each at most). */
static void start_output_to_log(struct bake_ctx *b, struct agent_client *ac)
{
	for (int stream = 1; stream <= 2 && b->log_fd >= 0; stream++) {
		size_t total = 0;

		while (total < 65536) {
			_cleanup_json_ json_object *resp = NULL;
			_cleanup_free_ uint8_t *data = NULL;
			json_object *req = json_object_new_object();
			size_t len = 0;
			int r;

			if (!req)
				return;
			json_object_object_add(req, "op", json_object_new_string("out"));
			json_object_object_add(req, "job", json_object_new_int64((int64_t)b->start.job));
			json_object_object_add(req, "stream", json_object_new_int(stream));
			json_object_object_add(req, "max", json_object_new_int(65536));
			/* bounded: a child of the command may still hold the pipe open */
			r = agent_call_full(ac, req, NULL, 0, 2000, NULL, NULL, &resp, &data, &len);
			json_object_put(req);
			if (r < 0 || len == 0 || write(b->log_fd, data, len) < 0)
				break;
			total += len;
			if (jget_bool(resp, "eof"))
				break;
		}
	}
}

/*
 * config "start": spawned in the bake's guest (as a process of the bake's
 * connection: every sandbox's first attach names its job and keeps it),
 * then, with "ready", the snapshot waits until it answers. A start command
 * that exits first fails the bake with its exit status and its output.
 */
static int bake_start(struct bake_ctx *b, struct agent_client *ac)
{
	_cleanup_json_ json_object *resp = NULL, *st = NULL;
	json_object *req = proc_parse_cmd(b->cfg.start, strlen(b->cfg.start)); /* the config's parser made it */
	uint64_t deadline = now_ns() + (uint64_t)START_READY_TIMEOUT_MS * 1000000;
	int r;

	if (!req)
		return -EINVAL;
	json_object_object_add(req, "op", json_object_new_string("spawn"));
	r = call_op(ac, req, QMP_TIMEOUT_MS, &resp);
	if (r < 0) {
		error_set(&b->error, "start command: %s", jget_str(resp, "error") ? jget_str(resp, "error") : strerror(-r));
		return r;
	}
	b->start = (struct start_info){ .job = (uint64_t)jget_int(resp, "job", 0), .pid = jget_int(resp, "pid", 0),
				       .start_unix_ms = (uint64_t)jget_int(resp, "start_unix_ms", 0),
				       .cmd = strdup(b->cfg.start) };
	blog(b->log_fd, "start: %s (pid %" PRId64 ")", b->cfg.start, b->start.pid);
	while (b->cfg.ready_tcp || b->cfg.ready_cmd) {
		json_object_put(st);
		st = NULL;
		req = json_object_new_object();
		json_object_object_add(req, "op", json_object_new_string("status"));
		json_object_object_add(req, "job", json_object_new_int64((int64_t)b->start.job));
		if ((r = call_op(ac, req, QMP_TIMEOUT_MS, &st)) < 0 || !jget_bool(st, "running")) {
			if (r == 0)
				start_output_to_log(b, ac);
			error_set(&b->error, "start command exited before it was ready (exit code %" PRId64 ", signal %" PRId64
					     "); see the build log",
				  jget_int(st, "exit_code", -1), jget_int(st, "signal", 0));
			return r < 0 ? r : -EIO;
		}
		if (start_ready(b, ac))
			break;
		if (now_ns() > deadline || atomic_load(&b->t->bake_cancel)) {
			error_set(&b->error, "start command not ready after %u s (ready: %s)", START_READY_TIMEOUT_MS / 1000,
				  b->cfg.ready_tcp ? "tcp" : b->cfg.ready_cmd);
			return -ETIMEDOUT;
		}
		usleep(200 * 1000);
	}
	return 0;
}

/*
 * Before the snapshot, `true` run by the two shells commands come through:
 * /bin/sh (every shell line an exec or a process slot runs) and, where the
 * image has it, `/bin/bash -l` (the E2B SDK runs each command with it). The
 * shells, the C library and what a login shell reads are then in the
 * snapshot's page cache, which every sandbox's guest maps from the one
 * memory file, instead of read from each sandbox's disk at its first
 * command (docs/benchmarks.md, "Seventh pass"). Only the guest's memory
 * holds it: no VMM translates anything ahead for it. An image without a
 * shell, or whose login profile fails or waits, bakes all the same (the
 * bake's log says so).
 */
static void bake_exec_path(struct bake_ctx *b, struct agent_client *ac)
{
	_cleanup_free_ char *why = NULL;

	if (guest_run(ac, "true; if [ -x /bin/bash ]; then /bin/bash -l -c true; fi", EXEC_PATH_TIMEOUT_MS,
		      b->log_fd, &why) < 0)
		blog(b->log_fd, "exec path not read ahead: %s", why ? why : "failed");
	timings_lap(&b->tm, "exec_path");
}

static int bake_boot_and_snapshot(struct bake_ctx *b, const char *disk)
{
	struct template *t = b->t;
	struct engine *e = t->e;
	_cleanup_free_ char *state = strjoin(b->newdir, "/state", NULL), *mem = vm_file(b->newdir, VM_MEM);
	struct booted vm;
	const char *step = "prepare";
	int r;

	if (!state || !mem)
		return -ENOMEM;
	r = boot_cold(e, &b->cfg, t->name, b->newdir, b->rundir, disk, &t->bake_cancel, &t->bake_vmm, &vm, &step,
		      &b->error);
	timings_lap(&b->tm, "boot");
	if (r == 0 && b->built) {
		step = "configure";
		r = template_agent_configure(vm.ac, &b->build.cfg); /* in the snapshot: every restored guest has it */
	}
	if (r == 0)
		bake_exec_path(b, vm.ac);
	if (r == 0 && b->cfg.warm) {
		_cleanup_free_ char *why = NULL;

		step = "warm";
		blog(b->log_fd, "warm: %s", b->cfg.warm);
		r = guest_run(vm.ac, b->cfg.warm, WARM_TIMEOUT_MS, b->log_fd, &why);
		if (r < 0)
			error_first(&b->error, r, "warm command: %s", why ? why : strerror(-r));
		timings_lap(&b->tm, "warm");
	}
	if (r == 0 && b->cfg.start) {
		step = "start";
		r = bake_start(b, vm.ac);
		timings_lap(&b->tm, "start");
	}
	/* what the bake's commands wrote (files, an atime) on the disk: no clone writes it back again */
	if (r == 0) {
		step = "sync";
		r = guest_sync(vm.ac, WARM_TIMEOUT_MS);
		timings_lap(&b->tm, "guest_sync");
	}
	if (r == 0) {
		step = "snapshot";
		r = vmm_snapshot(vm.v, state, mem, QMP_TIMEOUT_MS, NULL);
		if (r == 0)
			r = fsync_file(state);
		timings_lap(&b->tm, "snapshot");
	}
	if (r < 0 && !atomic_load(&t->bake_cancel)) {
		/* a guest that died (a panic) says why better than the call that broke */
		_cleanup_free_ char *con = vm_file(b->newdir, VM_CONSOLE), *log = vm_file(b->newdir, VM_LOG);
		_cleanup_free_ char *cause = vm.v && con && log ? vmm_death_cause(e, vm.v, r, con, log) : NULL;

		error_set(&b->error, "bake failed at %s (see %s/bake-console.log and %s/bake-vmm.log): %s", step, t->dir,
			  t->dir, cause ? cause : b->error ? b->error : strerror(-r));
	}
	booted_stop(e, &vm, &t->bake_vmm); /* kills the paused VMM: RAM file and state are complete */
	return r;
}

static int fsync_path(const char *path)
{
	_cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;

	if (!path)
		return 0;
	return fd < 0 || fsync(fd) < 0 ? -errno : 0;
}

/* newdir becomes the snapshot, atomically for every create (snap_lock). */
static int snapshot_swap(struct template *t, const char *newdir)
{
	_cleanup_free_ char *old = strjoin(t->dir, "/snapshot.old", NULL);
	int r = 0;

	if (!old)
		return -ENOMEM;
	pthread_rwlock_wrlock(&t->snap_lock);
	rm_rf(old);
	if (rename(t->snapdir, old) < 0 && errno != ENOENT)
		r = -errno;
	if (r == 0 && rename(newdir, t->snapdir) < 0)
		r = -errno;
	pthread_rwlock_unlock(&t->snap_lock);
	rm_rf(old);
	return r;
}

/* Flush and digest the artifacts, write bake.json, swap the snapshot in. */
static int bake_commit(struct bake_ctx *b, const char *mem, const char *disk)
{
	struct template *t = b->t;
	_cleanup_free_ char *state = strjoin(b->newdir, "/state", NULL);
	_cleanup_free_ char *bj = strjoin(b->newdir, "/bake.json", NULL);
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
	if (b->start.cmd) {
		json_object *so = json_object_new_object();

		json_object_object_add(so, "cmd", json_object_new_string(b->start.cmd));
		json_object_object_add(so, "job", json_object_new_int64((int64_t)b->start.job));
		json_object_object_add(so, "pid", json_object_new_int64(b->start.pid));
		json_object_object_add(so, "start_unix_ms", json_object_new_int64((int64_t)b->start.start_unix_ms));
		json_object_object_add(o, "start", so);
	}
	if (b->built)
		json_object_object_add(o, "image", image_config_json(&b->build.cfg));
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	if ((r = write_file_atomic(bj, txt, strlen(txt), true)) < 0)
		return r;
	if (b->built && (r = build_record_save(t, &b->build)) < 0)
		return r;
	return snapshot_swap(t, b->newdir);
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
	_cleanup_free_ char *mem = vm_file(newdir, VM_MEM), *disk = vm_file(newdir, VM_DISK);
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
	has_disk = template_has_disk(t);
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

/*
 * A bake's progress: the template's status shows the phase, MOUNT/events
 * gets a line. The build's own phases (pull, unpack, mkfs, step N/M) come
 * through the build's hook: their lines in the build log are the build's.
 */
static void bake_phase_note(struct bake_ctx *b, const char *phase)
{
	struct template *t = b->t;
	json_object *ev;

	pthread_mutex_lock(&t->e->lock);
	snprintf(t->bake_phase, sizeof(t->bake_phase), "%s", phase);
	ev = json_object_new_object();
	json_object_object_add(ev, "type", json_object_new_string("template"));
	json_object_object_add(ev, "template", json_object_new_string(t->name));
	json_object_object_add(ev, "state", json_object_new_string("baking"));
	json_object_object_add(ev, "phase", json_object_new_string(phase));
	engine_emit(t->e, t->id, ev);
	pthread_mutex_unlock(&t->e->lock);
}

static void bake_phase(struct bake_ctx *b, const char *phase)
{
	blog(b->log_fd, "== %s", phase);
	bake_phase_note(b, phase);
}

static void build_phase_hook(void *ctx, const char *phase)
{
	bake_phase_note(ctx, phase);
}

/* The root disk first (an image, a Dockerfile); the identity then names what it made. */
static int bake_build(struct bake_ctx *b)
{
	struct template *t = b->t;
	struct build_run run = { .log_fd = b->log_fd, .cancel = &t->bake_cancel, .tm = &b->tm,
				 .phase = build_phase_hook, .ctx = b };
	int r;

	bake_phase(b, "build");
	r = template_build(t, &b->cfg, &run, &b->build, &b->error);
	if (r == 0) {
		b->built = true;
		r = compute_identity(t->e, &b->cfg, b->build.cfg.digest, b->identity, &b->error);
		blog(b->log_fd, "built: %s", b->build.cfg.digest);
	} else {
		blog(b->log_fd, "build failed: %s", b->error ? b->error : strerror(-r));
	}
	return r;
}

/*
 * The bake's outcome. A failure keeps a snapshot that still fits the
 * template's identity in service (a rebake or a build that failed replaces
 * nothing); without one the template is failed and creates boot cold.
 */
static void bake_finish(struct bake_ctx *b, int r)
{
	struct template *t = b->t;
	struct engine *e = t->e;
	struct slot *stale;
	bool fits;

	pthread_mutex_lock(&e->lock);
	t->bake_running = false;
	t->bake_phase[0] = '\0';
	if (r == 0 && template_load_bake(t) == 0) {
		if (b->built) {
			build_result_clear(&t->build);
			t->build = b->build;
			memset(&b->build, 0, sizeof(b->build));
			t->has_build = true;
			memcpy(t->identity, b->identity, 65); /* what the build made is part of it */
		} else if (t->has_build) {
			build_record_drop(t); /* it no longer builds (no image, no Dockerfile): its build goes now */
			memcpy(t->identity, b->identity, 65);
		}
		template_set_state(t, strcmp(t->bake.identity, t->identity) == 0 ? TPL_READY : TPL_STALE);
		free(t->error);
		t->error = NULL;
		log_info("template %s baked in %.0f ms", t->name, timings_total(&b->tm));
	} else if (atomic_load(&t->bake_cancel)) {
		/* shutting down: not a failure of the template */
		template_set_state(t, t->has_bake && strcmp(t->bake.identity, t->identity) == 0 ? TPL_READY : TPL_NEW);
		log_info("template %s: bake cancelled", t->name);
	} else {
		fits = t->has_bake && strcmp(t->bake.identity, t->identity) == 0;
		template_set_state(t, fits ? TPL_READY : TPL_FAILED);
		if (!b->error)
			error_set(&b->error, "bake failed: %s", strerror(r < 0 ? -r : EIO));
		free(t->error);
		t->error = TAKE_PTR(b->error);
		log_error("template %s: %s%s", t->name, t->error ? t->error : "bake failed",
			  fits ? " (the previous snapshot stays in service)" : "");
	}
	stale = pool_take_unfit(t); /* a new snapshot: the old one's slots go now */
	pthread_cond_broadcast(&t->cond);
	pthread_cond_broadcast(&t->pool_cond);
	pthread_mutex_unlock(&e->lock);
	slots_free_list(e, stale);
}

/* The template's exchange with the store: state, and why (taken) a publish or an install failed. */
static void store_note(struct template *t, const char *state, char *why, bool install)
{
	pthread_mutex_lock(&t->e->lock);
	snprintf(t->store_state, sizeof(t->store_state), "%s", state);
	free(install ? t->store_install_error : t->store_error);
	if (install)
		t->store_install_error = why;
	else
		t->store_error = why;
	pthread_mutex_unlock(&t->e->lock);
}

/*
 * --store: the snapshot of this identity from the store, if it has one
 * (0); else (-ENOENT, or why it could not be installed in the template's
 * store error) the bake boots here.
 */
static int bake_install(struct bake_ctx *b)
{
	struct template *t = b->t;
	char *why = NULL;
	int r;

	bake_phase(b, "fetch");
	r = snapstore_install(t->e, b->identity, b->newdir, bake_rootfs(b) != NULL, (uint64_t)b->cfg.mem_mib << 20,
			      &b->tm, &why);
	if (r == 0 && b->built)
		r = build_record_save(t, &b->build);
	if (r == 0)
		r = snapshot_swap(t, b->newdir);
	if (r == 0) {
		blog(b->log_fd, "== installed from the store");
		log_info("template %s: snapshot installed from the store in %.0f ms", t->name, timings_total(&b->tm));
		store_note(t, "installed", NULL, true);
		free(why);
		return 0;
	}
	rm_rf(b->newdir);
	if (r == -ENOENT) {
		blog(b->log_fd, "store: no snapshot of this identity yet");
		store_note(t, "baking here", NULL, true);
		free(why);
	} else {
		blog(b->log_fd, "store: not installed: %s; baking here", why ? why : strerror(-r));
		log_warn("template %s: not installed from the store: %s; baking here", t->name, why ? why : strerror(-r));
		store_note(t, "baking here", why ? why : strdup(strerror(-r)), true);
	}
	return r;
}

/* After a bake here: its snapshot to the store, for the other hosts. The template is ready meanwhile. */
static void bake_publish(struct bake_ctx *b)
{
	struct template *t = b->t;
	uint64_t t0 = now_ns();
	char *why = NULL;
	int r;

	store_note(t, "publishing", NULL, false);
	r = snapstore_publish(t, &b->cfg, &why);
	if (r == 0) {
		blog(b->log_fd, "== published in %.0f ms", ns_to_ms(now_ns() - t0));
		store_note(t, "published", NULL, false);
		free(why);
	} else if (atomic_load(&t->bake_cancel) || r == -ECANCELED) {
		/* shutting down (or the template removed): not a failure of the store */
		log_info("template %s: publish cancelled", t->name);
		store_note(t, "failed", why ? why : strdup(strerror(-r)), false);
	} else {
		blog(b->log_fd, "== not published: %s", why ? why : strerror(-r));
		log_error("template %s: not published to the store: %s", t->name, why ? why : strerror(-r));
		store_note(t, "failed", why ? why : strdup(strerror(-r)), false);
	}
}

static void *bake_main(void *arg)
{
	struct bake_ctx *b = arg;
	struct template *t = b->t;
	struct engine *e = t->e;
	_cleanup_free_ char *mem = NULL, *disk = NULL;
	int r = 0;

	pthread_mutex_lock(&e->lock);
	cache_wait(e); /* a prune of the build caches finishes first */
	pthread_mutex_unlock(&e->lock);
	timings_start(&b->tm);
	if (template_builds(t, &b->cfg))
		r = bake_build(b); /* before the cold place: building is no boot */
	else if (t->has_build)
		r = compute_identity(e, &b->cfg, NULL, b->identity, &b->error); /* its build goes with this bake */
	if (r == 0 && e->objstore && bake_install(b) == 0) {
		bake_finish(b, 0); /* from the store: no boot */
		goto out;
	}
	if (r == 0) {
		bake_phase(b, "queue");
		r = cold_acquire(e, &t->bake_cancel);
		timings_lap(&b->tm, "queue");
		if (r < 0) {
			/* cancelled while queued: nothing to release */
			bake_finish(b, r);
			goto out;
		}
		bake_phase(b, "boot");
		r = bake_prepare(b, &mem, &disk);
		timings_lap(&b->tm, "prepare");
		if (r == 0)
			r = bake_boot_and_snapshot(b, disk);
		if (r == 0) {
			bake_phase(b, "snapshot");
			r = bake_commit(b, mem, disk);
		}
		if (r == 0)
			prune_rootfs_copies(t, bake_rootfs(b));
		cold_release(e);
		rm_rf(b->rundir);
		if (r < 0) {
			keep_log(b, "console.log", "bake-console.log");
			keep_log(b, "vmm.log", "bake-vmm.log");
			rm_rf(b->newdir);
		}
	}
	blog(b->log_fd, r == 0 ? "== baked" : "== failed: %s", b->error ? b->error : strerror(r < 0 ? -r : EIO));
	bake_finish(b, r);
	if (r == 0 && e->objstore && !atomic_load(&t->bake_cancel))
		bake_publish(b);
out:
	if (b->log_fd >= 0)
		close(b->log_fd);
	cache_prune(e); /* what this bake made unused, and what nothing used for long */
	build_result_clear(&b->build);
	free(b->start.cmd);
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
		error_set(&t->error, "bake: out of memory");
		template_set_state(t, TPL_FAILED);
		return;
	}
	snprintf(idbuf, sizeof(idbuf), "%" PRIu64, t->id);
	b->t = t;
	b->log_fd = build_log_create(t);
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
		error_set(&t->error, "bake: cannot start");
		template_config_clear(&b->cfg);
		free(b->newdir);
		free(b->rundir);
		if (b->log_fd >= 0)
			close(b->log_fd);
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
		json_object_object_add(b, "source", json_object_new_string(t->bake.lazy_mem ? "store" : "local"));
		json_object_object_add(b, "timings", timings_json(&t->bake.timings));
		if (t->bake.start.cmd) {
			json_object *so = json_object_new_object();

			json_object_object_add(so, "cmd", json_object_new_string(t->bake.start.cmd));
			json_object_object_add(so, "pid", json_object_new_int64(t->bake.start.pid));
			json_object_object_add(b, "start", so);
		}
		json_object_object_add(o, "bake", b);
	}
	if (t->bake_running && t->bake_phase[0])
		json_object_object_add(o, "phase", json_object_new_string(t->bake_phase));
	if (t->has_build) {
		json_object *bo = image_config_json(&t->build.cfg);

		json_object_object_add(bo, "disk", json_object_new_string(t->build.disk));
		if (t->build.steps)
			json_object_object_add(bo, "steps", json_object_get(t->build.steps));
		json_object_object_add(o, "build", bo);
	}
	/* a Dockerfile written since the build in service: the next "bake" builds it */
	if (template_has_dockerfile(t))
		json_object_object_add(o, "dockerfile",
				       json_object_new_string(template_dockerfile_moved(t) ? "changed" : "built"));
	else if (t->has_build && t->build.dockerfile[0])
		json_object_object_add(o, "dockerfile", json_object_new_string("removed"));
	json_object_object_add(o, "pool", pool_status_json(t));
	if (e->net) {
		_cleanup_free_ char *ns = netpool_status_json(e->net);

		json_object_object_add(o, "netpool", ns ? json_tokener_parse(ns) : NULL);
	}
	json_object_object_add(o, "store", json_object_new_string(engine_store_method(e)));
	if (e->objstore) {
		json_object *so = json_object_new_object();

		json_object_object_add(so, "url", json_object_new_string(objstore_url(e->objstore)));
		json_object_object_add(so, "state", json_object_new_string(t->store_state));
		json_object_object_add(so, "published", json_object_new_boolean(strcmp(t->store_state, "published") == 0));
		json_object_object_add(so, "error", t->store_error ? json_object_new_string(t->store_error) : NULL);
		json_object_object_add(so, "install_error",
				       t->store_install_error ? json_object_new_string(t->store_install_error) : NULL);
		if (t->has_bake && t->bake.lazy_mem) {
			bool base;

			/* lock order: e->lock, then ram_lock (lazy_base takes no e->lock under it) */
			pthread_mutex_lock(&t->ram_lock);
			base = t->ram_fd >= 0 && strcmp(t->ram_digest, t->bake.state_digest) == 0;
			pthread_mutex_unlock(&t->ram_lock);
			/* where the next restore maps the memory from: the lazy file, or a base built from the cache */
			json_object_object_add(so, "memory", json_object_new_string(base ? "base" : "lazy"));
		}
		json_object_object_add(o, "snapshot_store", so);
	}
	json_object_object_add(o, "error", t->error ? json_object_new_string(t->error) : NULL);
	json_object_object_add(o, "create_error", t->create_error ? json_object_new_string(t->create_error) : NULL);
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

/*
 * A template that builds its root disk (its config names an "image" or a
 * build "context", or it has a Dockerfile) and names no kernel runs on the
 * default guest's: its kernel, initrd and command line are filled in (the
 * image is only the root file system; the kernel and the agent stay
 * emberfs's). NULL: the text as written (any other config: "kernel" stays
 * required).
 */
static char *with_default_guest(struct template *t, const char *data, size_t len)
{
	static const char *const keys[] = { "kernel", "initrd", "cmdline" };
	struct engine *e = t->e;
	_cleanup_json_ json_object *o = NULL, *d = NULL;
	json_tokener *tok;
	json_object *v;

	if (!e->default_config || len > 65536 || !(tok = json_tokener_new()))
		return NULL;
	o = json_tokener_parse_ex(tok, data, (int)len);
	json_tokener_free(tok);
	if (!o || !json_object_is_type(o, json_type_object) || json_object_object_get_ex(o, "kernel", NULL) ||
	    !(json_object_object_get_ex(o, "image", NULL) || json_object_object_get_ex(o, "context", NULL) ||
	      template_has_dockerfile(t)) ||
	    !(d = json_tokener_parse(e->default_config)))
		return NULL;
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		if (!json_object_object_get_ex(o, keys[i], NULL) && json_object_object_get_ex(d, keys[i], &v))
			json_object_object_add(o, keys[i], json_object_get(v));
	return strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
}

/*
 * e->lock held: the template's identity is now ident (its config, or what it
 * builds, changed). The snapshot fits or goes stale; warm slots of another
 * identity go (returned).
 */
static struct slot *identity_changed(struct template *t, const char ident[65])
{
	memcpy(t->identity, ident, 65);
	free(t->error);
	t->error = NULL;
	if (t->has_bake)
		template_set_state(t, strcmp(t->bake.identity, ident) == 0 ? TPL_READY : TPL_STALE);
	else if (t->state == TPL_FAILED)
		template_set_state(t, TPL_NEW);
	pthread_cond_broadcast(&t->pool_cond); /* ready again: the filler may start */
	return pool_take_unfit(t);
}

/* e->lock held: why t's build inputs cannot be written now, as -errno with t->error set; 0 if they can. */
static int inputs_writable(struct template *t, const char *what)
{
	if (t->removed)
		return -ENOENT;
	if (t->bake_running) {
		error_set(&t->error, "%s: refused while a bake runs", what);
		return -EBUSY;
	}
	return 0;
}

/* A new config: parsed and checked first, so a bad one changes nothing. */
int template_write_config(struct template *t, const char *data, size_t len)
{
	_cleanup_free_ char *merged = with_default_guest(t, data, len);
	struct engine *e = t->e;
	_cleanup_free_ char *err = NULL, *cpath = strjoin(t->dir, "/config.json", NULL), *txt = NULL;
	struct template_config cfg = { 0 };
	struct slot *stale = NULL;
	char ident[65], build[80];
	bool builds;
	int r;

	if (!cpath)
		return -ENOMEM;
	if (merged) {
		data = merged;
		len = strlen(merged);
	}
	r = template_config_parse_drivers(data, len, e->opts.drivers, &cfg, &err);
	pthread_mutex_lock(&e->lock);
	builds = r == 0 && template_builds(t, &cfg);
	snprintf(build, sizeof(build), "%s", builds && t->has_build ? t->build.cfg.digest : "");
	pthread_mutex_unlock(&e->lock);
	if (r == 0 && compute_identity(e, &cfg, build, ident, &err) < 0)
		r = -EINVAL; /* a missing file or an unusable accelerator is a bad value */
	pthread_mutex_lock(&e->lock);
	if (r < 0) {
		if (!t->removed) {
			free(t->error);
			t->error = TAKE_PTR(err);
		}
	} else if ((r = inputs_writable(t, "config")) < 0) {
		/* t->error says why */
	} else if (cfg.image && template_has_dockerfile(t)) {
		error_set(&t->error, "config: refused: the template has a Dockerfile (its FROM names the image); "
				     "empty the Dockerfile first");
		r = -EINVAL;
	} else if (!(txt = template_config_render(&cfg)) || (r = write_file_atomic(cpath, txt, strlen(txt), true)) < 0) {
		r = r < 0 ? r : -ENOMEM;
	} else {
		template_config_clear(&t->cfg);
		t->cfg = cfg;
		memset(&cfg, 0, sizeof(cfg));
		stale = identity_changed(t, ident);
	}
	pthread_mutex_unlock(&e->lock);
	template_config_clear(&cfg);
	slots_free_list(e, stale);
	if (r == 0)
		egress_template_changed(t); /* its default may have changed */
	return r;
}

/*
 * templates/T/Dockerfile, written whole: parsed first (one that does not
 * parse changes nothing and leaves its reason in status), then stored. The
 * snapshot in service stays (it is what the Dockerfile built before); the
 * next bake builds the new one and replaces it only if the build succeeds.
 * Empty content removes the file, with the same rule: the next bake boots
 * the config's own guest, and its success drops the build.
 */
int template_write_dockerfile(struct template *t, const char *data, size_t len)
{
	struct engine *e = t->e;
	_cleanup_free_ char *df = template_dockerfile_path(t), *err = NULL;
	struct dockerfile parsed = { 0 };
	int r = 0;

	if (!df)
		return -ENOMEM;
	if (len > 0 && dockerfile_parse(data, len, &parsed, &err) < 0) {
		r = -EINVAL; /* unsupported and too big alike: this content is refused */
		error_set(&err, "Dockerfile: %s", err ? err : "does not parse");
	}
	dockerfile_clear(&parsed);
	pthread_mutex_lock(&e->lock);
	if (r < 0) {
		if (!t->removed) {
			free(t->error);
			t->error = TAKE_PTR(err);
		}
	} else if ((r = inputs_writable(t, "Dockerfile")) < 0) {
		/* t->error says why */
	} else if (len > 0 && t->cfg.derived_from) {
		error_set(&t->error, "Dockerfile: refused: this template was made from a sandbox (derived_from)");
		r = -EINVAL;
	} else if (len > 0 && t->cfg.image) {
		error_set(&t->error, "Dockerfile: refused: the config names an \"image\" (a Dockerfile's FROM does): "
				     "remove it from the config first");
		r = -EINVAL;
	} else if ((r = len > 0 ? write_file_atomic(df, data, len, true) : unlink(df) < 0 && errno != ENOENT ? -errno : 0) ==
		   0) {
		free(t->error);
		t->error = NULL;
		if (t->state == TPL_FAILED)
			template_set_state(t, TPL_NEW);
	}
	pthread_mutex_unlock(&e->lock);
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

/*
 * ctl: "bake" bakes unless a matching snapshot exists and the Dockerfile is
 * the one it was built from; "rebake" always bakes.
 */
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
	} else if (force || t->state != TPL_READY || template_dockerfile_moved(t)) {
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
