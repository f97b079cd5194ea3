/*
 * Templates' snapshots in the store (--store; objstore.h, docs/architecture.md
 * "Snapshots that travel"):
 *
 * - publish: after a local bake, its memory, disk and device state go to the
 *   store as chunks, a trial restore from the lazily served memory records
 *   which chunks a restore reads (the hot list), and bakes/IDENTITY.json is
 *   written last (a record is only ever seen complete);
 * - install: a bake whose identity the store has takes the snapshot from it
 *   instead of booting: the device state and the disk whole (their chunks
 *   checked), the hot chunks of the memory prefetched, the rest of the memory
 *   left in the store until a guest reads it.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "objstore.h"
#include "ram.h"


static char *record_key(const char *identity)
{
	return strjoin("bakes/", identity, ".json", NULL);
}

char *snapstore_lazy_name(const char *state_digest, bool trial)
{
	return strjoin(trial ? "trial-" : "", state_digest, RAM_LAZY_SUFFIX, NULL);
}

/* ---- install ---- */

static int manifest_get(json_object *store, const char *name, struct manifest *m, bool need, char **why)
{
	json_object *o;
	_cleanup_free_ char *sub = NULL;
	int r;

	if (!json_object_object_get_ex(store, name, &o)) {
		if (need)
			error_set(why, "store record: no %s", name);
		return need ? -EINVAL : -ENOENT;
	}
	if ((r = manifest_from_json(o, m, &sub)) < 0)
		error_set(why, "store record: %s: %s", name, sub ? sub : strerror(-r));
	return r;
}

int snapstore_install(struct engine *e, const char *identity, const char *newdir, bool want_disk, uint64_t mem_size,
		      struct timings *tm, char **why)
{
	struct objstore *s = e->objstore;
	_cleanup_free_ char *key = record_key(identity), *text = NULL, *state = strjoin(newdir, "/state", NULL);
	_cleanup_free_ char *disk = vm_file(newdir, VM_DISK), *bj = strjoin(newdir, "/bake.json", NULL);
	_cleanup_json_ json_object *rec = NULL;
	struct manifest ms = { 0 }, mm = { 0 }, md = { 0 };
	json_object *store, *v, *files;
	char sd[65];
	const char *txt;
	int r;

	if (!key || !state || !disk || !bj)
		return -ENOMEM;
	if ((r = objstore_get(s, key, BAKE_RECORD_MAX, &text, NULL, why)) < 0)
		return r; /* -ENOENT: not baked anywhere yet */
	if (!(rec = json_tokener_parse(text)) || !json_object_is_type(rec, json_type_object) ||
	    !json_object_object_get_ex(rec, "store", &store) || !json_object_object_get_ex(rec, "identity", &v) ||
	    strcmp(json_object_get_string(v), identity) != 0 || !json_object_object_get_ex(rec, "state_sha256", &v) ||
	    !objstore_digest_valid(json_object_get_string(v))) {
		error_set(why, "store record %s: not a bake record of this identity", key);
		return -EINVAL;
	}
	memcpy(sd, json_object_get_string(v), sizeof(sd));
	if (!json_object_object_get_ex(rec, "mem_size", &v) || (uint64_t)json_object_get_int64(v) != mem_size) {
		error_set(why, "store record %s: its guest memory size is not this template's", key);
		return -EINVAL;
	}
	if ((r = manifest_get(store, "state", &ms, true, why)) < 0 || (r = manifest_get(store, "mem", &mm, true, why)) < 0)
		goto out;
	if (mm.size != mem_size) {
		error_set(why, "store record %s: its memory manifest is not the guest's size", key);
		r = -EINVAL;
		goto out;
	}
	r = manifest_get(store, "disk", &md, want_disk, why);
	if (r == -ENOENT && !want_disk)
		r = 0;
	else if (r == 0 && !want_disk) {
		error_set(why, "store record %s: it has a disk, this template has none", key);
		r = -EINVAL;
	}
	if (r < 0)
		goto out;
	rm_rf(newdir);
	if ((r = mkdir_p(newdir, 0700)) < 0) {
		error_set(why, "%s: %s", newdir, strerror(-r));
		goto out;
	}
	/* every chunk is checked as it arrives; the whole state once more against the record */
	if ((r = objstore_assemble(s, &ms, state, why)) < 0)
		goto out;
	{
		char got[65];

		if ((r = sha256_file(state, got)) < 0 || strcmp(got, sd) != 0) {
			error_set(why, "store record %s: the device state does not match its digest", key);
			r = r < 0 ? r : -EBADMSG;
			goto out;
		}
	}
	if (want_disk && (r = objstore_assemble(s, &md, disk, why)) < 0)
		goto out;
	if ((r = objstore_prefetch(s, &mm, why)) < 0)
		goto out;
	/* bake.json: the record as it is, with this host's own files and where it came from */
	json_object_object_add(rec, "source", json_object_new_string("store"));
	timings_lap(tm, "fetch");
	json_object_object_add(rec, "timings", timings_json(tm)); /* this install's, not the bake's */
	files = json_object_new_object();
	json_object_object_add(rec, "files", files);
	if (want_disk && (r = fsync_file(disk)) < 0)
		goto out;
	if (want_disk && (r = snap_file_record(disk, files, "disk.img")) < 0)
		goto out;
	txt = json_object_to_json_string_ext(rec, JSON_C_TO_STRING_PRETTY);
	r = write_file_atomic(bj, txt, strlen(txt), true);
out:
	manifest_clear(&ms);
	manifest_clear(&mm);
	manifest_clear(&md);
	if (r < 0 && why && !*why)
		error_set(why, "install from the store: %s", strerror(-r));
	return r;
}

/* ---- publish ---- */

struct trial_pub {
	struct vmm *v;
	struct agent_client *ac;
};

static void trial_publish(void *arg, struct vmm *v, struct agent_client *ac)
{
	struct trial_pub *p = arg;

	if (v)
		p->v = v;
	if (ac)
		p->ac = ac;
}

static json_object *trial_attach_build(void *arg)
{
	(void)arg;
	return guest_attach_new("trial", NULL, NULL, false);
}

/* What a sandbox's first moments run in a restored guest: the attach, one command. */
static int trial_attach_and_exec(struct agent_client *ac)
{
	_cleanup_free_ char *why = NULL;
	int r;

	if ((r = agent_call_resend(ac, trial_attach_build, NULL, AGENT_RESTORE_TIMEOUT_MS, NULL, NULL, NULL)) < 0)
		return r;
	return guest_run(ac, "echo hi", AGENT_RESTORE_TIMEOUT_MS, -1, &why);
}

/*
 * A restore of the snapshot in snapdir with its memory served lazily from
 * mem (all of it in this host's cache: publish kept it): the pieces it read
 * until its agent attached and ran a command are the hot list.
 */
static int trial_restore(struct template *t, const struct template_config *cfg, const char *snapdir,
			 const char *state_digest, struct manifest *mem, char **why)
{
	struct engine *e = t->e;
	char idbuf[32];
	uint64_t id = atomic_fetch_add(&e->next_id, 1);
	_cleanup_free_ char *dir = NULL, *rundir = NULL, *disk = NULL, *sstate = strjoin(snapdir, "/state", NULL);
	_cleanup_free_ char *sdisk = vm_file(snapdir, VM_DISK), *name = snapstore_lazy_name(state_digest, true);
	_cleanup_close_ int state_fd = -1, ram_fd = -1;
	struct netslot *net = NULL;
	struct trial_pub pub = { 0 };
	enum clone_method m;
	const char *step = "prepare";
	uint32_t *hot = NULL;
	size_t n_hot = 0;
	int r;

	snprintf(idbuf, sizeof(idbuf), "%" PRIu64, id);
	dir = strjoin(e->store.root, "/vms/", idbuf, NULL);
	rundir = strjoin(e->state_dir, "/run/", idbuf, NULL);
	disk = cfg->rootfs && dir ? vm_file(dir, VM_DISK) : NULL;
	if (!dir || !rundir || !sstate || !sdisk || !name || (cfg->rootfs && !disk))
		return -ENOMEM;
	if ((r = mkdir_p(dir, 0700)) < 0 || (r = mkdir_p(rundir, 0700)) < 0)
		goto out;
	if (disk && (r = store_clone(&e->store, sdisk, disk, &m)) < 0)
		goto out;
	if ((state_fd = open(sstate, O_RDONLY | O_CLOEXEC)) < 0) {
		r = -errno;
		goto out;
	}
	if ((r = objstore_lazy_open(e->objstore, name, mem, &ram_fd, why)) < 0)
		goto out;
	{
		const struct vm_launch l = { .cfg = cfg, .name = t->name, .dir = dir, .rundir = rundir, .disk = disk,
					     .state_fd = state_fd, .ram_fd = ram_fd, .net = &net,
					     .cancel = &t->bake_cancel, .publish = trial_publish, .arg = &pub };

		r = vm_start(e, &l, &step, why);
	}
	if (r == 0)
		r = trial_attach_and_exec(pub.ac);
	if (r == 0 && (r = objstore_lazy_touched(e->objstore, name, &hot, &n_hot)) == 0) {
		free(mem->hot);
		mem->hot = hot;
		mem->n_hot = n_hot;
	}
	if (r < 0 && pub.v) {
		/* a VMM that died says why better than the call that broke */
		_cleanup_free_ char *con = vm_file(dir, VM_CONSOLE), *log = vm_file(dir, VM_LOG);
		_cleanup_free_ char *cause = con && log ? vmm_death_cause(e, pub.v, r, con, log) : NULL;

		if (cause) {
			free(*why);
			*why = NULL;
			error_set(why, "trial restore failed at %s: %s", step, cause);
		}
	}
	if (r < 0 && why && !*why)
		error_set(why, "trial restore failed at %s: %s", step, strerror(-r));
out:
	vm_release(e, &pub.v, &pub.ac, &net);
	rm_rf(dir);
	rm_rf(rundir);
	return r;
}

int snapstore_publish(struct template *t, const struct template_config *cfg, char **why)
{
	struct engine *e = t->e;
	struct objstore *s = e->objstore;
	_cleanup_free_ char *bj = strjoin(t->snapdir, "/bake.json", NULL), *text = NULL, *key = NULL;
	_cleanup_free_ char *mem = vm_file(t->snapdir, VM_MEM), *disk = vm_file(t->snapdir, VM_DISK);
	_cleanup_free_ char *state = strjoin(t->snapdir, "/state", NULL);
	_cleanup_json_ json_object *rec = NULL;
	struct manifest ms = { 0 }, mm = { 0 }, md = { 0 };
	json_object *store, *v;
	struct stat st;
	bool has_disk;
	const char *txt;
	int r;

	if (!bj || !mem || !disk || !state)
		return -ENOMEM;
	/* the snapshot does not change meanwhile: the bake that made it is this thread */
	pthread_rwlock_rdlock(&t->snap_lock);
	if ((r = read_file(bj, BAKE_RECORD_MAX, &text, NULL)) < 0 || !(rec = json_tokener_parse(text)) ||
	    !json_object_object_get_ex(rec, "identity", &v) || !(key = record_key(json_object_get_string(v)))) {
		pthread_rwlock_unlock(&t->snap_lock);
		error_set(why, "publish: %s unreadable", bj);
		return r < 0 ? r : -EINVAL;
	}
	has_disk = stat(disk, &st) == 0;
	r = objstore_publish_file(s, state, &ms, why);
	if (r == 0)
		r = objstore_publish_file(s, mem, &mm, why);
	if (r == 0 && has_disk)
		r = objstore_publish_file(s, disk, &md, why);
	if (r == 0 && json_object_object_get_ex(rec, "state_sha256", &v))
		r = trial_restore(t, cfg, t->snapdir, json_object_get_string(v), &mm, why);
	pthread_rwlock_unlock(&t->snap_lock);
	if (r == 0) {
		json_object_object_del(rec, "files"); /* this host's */
		json_object_object_del(rec, "source");
		store = json_object_new_object();
		json_object_object_add(store, "state", manifest_json(&ms));
		json_object_object_add(store, "mem", manifest_json(&mm));
		if (has_disk)
			json_object_object_add(store, "disk", manifest_json(&md));
		json_object_object_add(rec, "store", store);
		txt = json_object_to_json_string_ext(rec, JSON_C_TO_STRING_PRETTY);
		r = objstore_put(s, key, txt, strlen(txt), why);
	}
	if (r == 0)
		log_info("template %s: published to %s%s (memory %" PRIu64 " of %" PRIu64 " MiB stored, %zu hot chunks)",
			 t->name, objstore_url(s), key, manifest_data_bytes(&mm) >> 20, mm.size >> 20, mm.n_hot);
	manifest_clear(&ms);
	manifest_clear(&mm);
	manifest_clear(&md);
	return r;
}

/* ---- a snapshot's memory whole on this host ---- */

int snapstore_ram_base(struct engine *e, const struct manifest *m, int *ret_fd, char **why)
{
	_cleanup_free_ const char **missing = NULL;
	_cleanup_free_ uint8_t *buf = malloc(m->chunk);
	_cleanup_close_ int fd = -1;
	int r;

	if (!buf)
		return -ENOMEM;
	if (objstore_missing(e->objstore, m, &missing) > 0)
		return -EAGAIN;
	if ((r = ram_base_new(m->size, &fd)) < 0)
		return r;
	for (size_t i = 0; i < m->n; i++) {
		size_t len = i + 1 < m->n ? m->chunk : (size_t)(m->size - (uint64_t)i * m->chunk);

		if (!m->digests[i][0])
			continue;
		/* each chunk checked again if it came from an earlier run; fetched if evicted meanwhile */
		if ((r = objstore_read_chunk(e->objstore, m->digests[i], 0, buf, len)) < 0) {
			error_set(why, "chunk %s: %s", m->digests[i], strerror(-r));
			return r;
		}
		if (pwrite(fd, buf, len, (off_t)i * m->chunk) != (ssize_t)len)
			return -errno;
	}
	if ((r = ram_base_seal(fd)) < 0)
		return r;
	*ret_fd = TAKE_FD(fd);
	return 0;
}

int snapstore_fill(struct engine *e, const struct manifest *m, char **why)
{
	_cleanup_free_ const char **missing = NULL;
	size_t n = objstore_missing(e->objstore, m, &missing);

	if (!missing)
		return -ENOMEM;
	return objstore_fetch(e->objstore, missing, n, why);
}
