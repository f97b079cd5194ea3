/* The engine object: options, accelerator choice, store, template registry, the cold-work reservation. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "config.h"
#include "internal.h"

#define SOCKET_PATH_MAX 107

void strv_free(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

/* KVM only where it can run a normal guest: /dev/kvm opens and the CPU has vmx or svm. */
static bool kvm_usable(void)
{
	_cleanup_free_ char *cpuinfo = NULL;
	_cleanup_close_ int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0 || read_file("/proc/cpuinfo", 16 << 20, &cpuinfo, NULL) < 0)
		return false;
	return strstr(cpuinfo, " vmx") || strstr(cpuinfo, " svm");
}

int engine_resolve_accel(enum accel_mode m, const char **ret)
{
	if (m == ACCEL_TCG || (m == ACCEL_AUTO && !kvm_usable())) {
		*ret = "tcg";
		return 0;
	}
	if (m == ACCEL_KVM && access("/dev/kvm", R_OK | W_OK) < 0)
		return -ENODEV;
	*ret = "kvm";
	return 0;
}

const char *engine_accel_name(struct engine *e)
{
	return e->accel;
}

const char *engine_store_method(struct engine *e)
{
	if (!e->store.reflink)
		return "copy";
	return e->store.mounted ? "reflink (loop-mounted XFS store)" : "reflink";
}

/* Waits for the reserved place; gives up when *cancel turns true (cold_wake() then). */
int cold_acquire(struct engine *e, const atomic_bool *cancel)
{
	int r = 0;

	pthread_mutex_lock(&e->cold_lock);
	while (e->cold_busy >= e->opts.cold_slots && !(cancel && atomic_load(cancel)))
		pthread_cond_wait(&e->cold_cond, &e->cold_lock);
	if (cancel && atomic_load(cancel))
		r = -ECANCELED;
	else
		e->cold_busy++;
	pthread_mutex_unlock(&e->cold_lock);
	return r;
}

void cold_wake(struct engine *e)
{
	pthread_mutex_lock(&e->cold_lock);
	pthread_cond_broadcast(&e->cold_cond);
	pthread_mutex_unlock(&e->cold_lock);
}

void cold_release(struct engine *e)
{
	pthread_mutex_lock(&e->cold_lock);
	e->cold_busy--;
	pthread_cond_signal(&e->cold_cond);
	pthread_mutex_unlock(&e->cold_lock);
}

/* Cycles of rdtsc per millisecond, against CLOCK_MONOTONIC_RAW over 20 ms. */
static double measure_tsc_khz(void)
{
	struct timespec a, b;
	uint32_t lo, hi;
	uint64_t t0, t1;

	clock_gettime(CLOCK_MONOTONIC_RAW, &a);
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	t0 = (uint64_t)hi << 32 | lo;
	do
		clock_gettime(CLOCK_MONOTONIC_RAW, &b);
	while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 20000000L);
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	t1 = (uint64_t)hi << 32 | lo;
	return (double)(t1 - t0) / ((double)((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec)) / 1e6);
}

/*
 * The host TSC frequency in kHz. Under TCG the guest's TSC is the host's.
 * The value is part of the identity, so it must not jitter between starts:
 * /proc/cpuinfo's "cpu MHz" when it agrees with a measurement (within 0.5%),
 * else the measurement rounded to a MHz.
 */
static char *host_tsc_khz(void)
{
	_cleanup_free_ char *cpuinfo = NULL;
	double measured = measure_tsc_khz(), stated = 0;
	const char *p;
	char buf[32];

	if (read_file("/proc/cpuinfo", 16 << 20, &cpuinfo, NULL) == 0 && (p = strstr(cpuinfo, "cpu MHz")) &&
	    (p = strchr(p, ':')))
		stated = strtod(p + 1, NULL) * 1000;
	if (measured < 100000)
		return NULL;
	if (stated > 0 && stated / measured > 0.995 && stated / measured < 1.005)
		snprintf(buf, sizeof(buf), "%.0f", stated);
	else
		snprintf(buf, sizeof(buf), "%lld", (long long)(measured / 1000 + 0.5) * 1000);
	return strdup(buf);
}

/* Does the kernel command line have a parameter starting with key ("panic=")? */
static bool cmdline_has(const char *cmdline, const char *key)
{
	size_t n = strlen(key);

	for (const char *p = cmdline; *p; p += strcspn(p, " "), p += strspn(p, " "))
		if (strncmp(p + strspn(p, " "), key, n) == 0)
			return true;
	return false;
}

/*
 * Every driver's binary and version (part of a template's identity): the
 * compiled ones, or the embedder's (engine_options.drivers). The default
 * backend must run if the list has it; another that cannot is refused where
 * a template names it.
 */
static int drivers_probe(struct engine *e, const struct engine_options *o)
{
	const struct vmm_ops *const *list = o->drivers ? o->drivers : vmm_drivers_builtin();
	const struct vmm_ops *ops;
	size_t n = 0;

	while (list[n])
		n++;
	if (n > VMM_DRIVERS_MAX) {
		log_error("%zu VMM drivers given; at most %d", n, VMM_DRIVERS_MAX);
		return -E2BIG;
	}
	for (size_t i = 0; (ops = list[i]); i++) {
		struct engine_driver *d = &e->drivers[i];
		bool qemu = strcmp(ops->name, "qemu") == 0;

		d->ops = ops;
		d->binary = strdup(qemu && o->qemu_binary ? o->qemu_binary : ops->default_binary);
		d->err = d->binary ? ops->version(d->binary, &d->version) : -ENOMEM;
		if (d->err < 0 && strcmp(ops->name, TEMPLATE_DEFAULT_BACKEND) == 0) {
			log_error("cannot run %s --version: %s (is qemu-system-x86 installed?)", d->binary,
				  strerror(-d->err));
			return d->err;
		}
	}
	return 0;
}

const struct engine_driver *engine_driver(struct engine *e, const char *name, char **ret_error)
{
	for (size_t i = 0; i < VMM_DRIVERS_MAX && e->drivers[i].ops; i++) {
		const struct engine_driver *d = &e->drivers[i];

		if (strcmp(d->ops->name, name) != 0)
			continue;
		if (d->err == 0)
			return d;
		if (ret_error)
			error_set(ret_error, "backend \"%s\" cannot run on this host: %s --version: %s", name, d->binary,
				  strerror(-d->err));
		return NULL;
	}
	if (ret_error) {
		char names[256];

		vmm_driver_names_in(e->opts.drivers, names, sizeof(names));
		error_set(ret_error, "backend \"%s\" is not built into this emberfs (built: %s)", name, names);
	}
	return NULL;
}

const struct vmm_ops *engine_driver_ops(struct engine *e, const char *name)
{
	for (size_t i = 0; i < VMM_DRIVERS_MAX && e->drivers[i].ops; i++)
		if (strcmp(e->drivers[i].ops->name, name) == 0)
			return e->drivers[i].ops;
	return NULL;
}

/* Appends " param" to *cmd unless the command line already sets key; out of memory, *cmd is NULL. */
static void cmdline_add(char **cmd, const char *key, const char *param)
{
	char *n;

	if (!*cmd || cmdline_has(*cmd, key))
		return;
	n = strjoin(*cmd, (*cmd)[0] ? " " : "", param, NULL);
	free(*cmd);
	*cmd = n;
}

int engine_spec_init(struct engine *e, const struct template_config *cfg, struct vmm_spec *spec, char **owned)
{
	int r = engine_resolve_accel(cfg->accel, &spec->accel);
	_cleanup_free_ char *khz = NULL;

	*owned = NULL;
	if (r < 0)
		return r;
	*owned = strdup(cfg->cmdline);
	/*
	 * A guest kernel that panics resets at once (panic=-1; the default
	 * image's command line has it): with -no-reboot that ends the VMM and
	 * the sandbox fails with the cause. Without it the guest would spin in
	 * its panic loop, a sandbox ready in name whose every call times out.
	 * A command line that sets panic= itself keeps its choice, as it keeps
	 * every parameter below.
	 */
	cmdline_add(owned, "panic=", "panic=-1");
	if (strcmp(spec->accel, "tcg") == 0) {
		/*
		 * The emulated platform (docs/architecture.md, "Booting under
		 * TCG"): the clock the guest cannot calibrate, and the periodic
		 * work an idle guest would wake its VMM for: the clocksource
		 * watchdog checking the TSC (twice a second), the lockup
		 * detectors, kcompactd's proactive compaction (twice a second).
		 */
		if (e->tsc_khz && !(khz = strjoin("tsc_early_khz=", e->tsc_khz, NULL)))
			return -ENOMEM;
		if (khz)
			cmdline_add(owned, "tsc_early_khz=", khz);
		cmdline_add(owned, "tsc=", "tsc=reliable");
		cmdline_add(owned, "nowatchdog", "nowatchdog");
		cmdline_add(owned, "sysctl.vm.compaction_proactiveness=", "sysctl.vm.compaction_proactiveness=0");
	}
	/* the guest's fixed address, configured by its agent at boot (so it is in every snapshot) */
	if (*owned && cfg->net) {
		char *n = strjoin(*owned, (*owned)[0] ? " " : "", "emberfs.net=" NETPOOL_GUEST_CIDR "," NETPOOL_GW_ADDR,
				  NULL);

		free(*owned);
		*owned = n;
	}
	spec->cmdline = *owned;
	spec->cgroups = e->cgroups;
	spec->cgroup_version = e->cgroup_version;
	spec->cgroup_ncpus = e->cgroup_ncpus;
	spec->uid_base = e->vmm_uid_base;
	spec->tag = e->tag;
	spec->extra_gid = e->vmm_extra_gid;
	return *owned ? 0 : -ENOMEM;
}

/*
 * Admission on the store's space: a new VM (create, fork, start, bake, warm
 * slot) needs its guest's RAM in free space (its memory file's pages become
 * its own as it writes them) plus --store-reserve-mib, the headroom that
 * keeps the running guests' own copy-on-write from hitting a full store
 * (their VMMs would die of SIGBUS). Refused with ENOSPC before anything is
 * written; *ret_why says the figures.
 */
int engine_store_admit(struct engine *e, unsigned mem_mib, char **ret_why)
{
	struct statvfs sv;
	uint64_t free_mib, need_mib = (uint64_t)mem_mib + (uint64_t)e->opts.store_reserve_mib;

	if (statvfs(e->store.root, &sv) < 0)
		return 0; /* cannot tell: the write itself will say */
	free_mib = (uint64_t)sv.f_bavail * sv.f_frsize >> 20;
	if (free_mib >= need_mib)
		return 0;
	if (ret_why && asprintf(ret_why, "the store has %" PRIu64 " MiB free; a VM of %u MiB needs %" PRIu64
				" (its RAM and the %" PRId64 " MiB reserve for the running ones, --store-reserve-mib)",
				free_mib, mem_mib, need_mib, e->opts.store_reserve_mib) < 0)
		*ret_why = NULL;
	return -ENOSPC;
}

/* The default template's config, from the image's manifest. */
static int load_default_config(struct engine *e)
{
	_cleanup_free_ char *mpath = strjoin(e->image_dir, "/manifest.json", NULL);
	/* vmlinux boots ~0.5 s faster than the bzImage under TCG (no decompression) */
	_cleanup_free_ char *kx = strjoin(e->image_dir, "/vmlinux", NULL);
	_cleanup_free_ char *kz = strjoin(e->image_dir, "/vmlinuz", NULL);
	const char *k = kx && access(kx, R_OK) == 0 ? kx : kz;
	_cleanup_free_ char *i = strjoin(e->image_dir, "/initrd.cpio", NULL);
	_cleanup_free_ char *f = strjoin(e->image_dir, "/rootfs.ext4", NULL);
	_cleanup_free_ char *text = NULL;
	_cleanup_json_ json_object *m = NULL, *cfg = NULL;
	json_object *cmd;
	int r;

	if (!mpath || !k || !i || !f)
		return -ENOMEM;
	r = read_file(mpath, 1 << 20, &text, NULL);
	if (r < 0) {
		log_error("cannot read %s: %s (build the image with contrib/build-image.sh)", mpath, strerror(-r));
		return r;
	}
	m = json_tokener_parse(text);
	if (!m || !json_object_object_get_ex(m, "cmdline", &cmd) || !json_object_is_type(cmd, json_type_string)) {
		log_error("%s: malformed manifest (no \"cmdline\")", mpath);
		return -EINVAL;
	}
	cfg = json_object_new_object();
	json_object_object_add(cfg, "kernel", json_object_new_string(k));
	json_object_object_add(cfg, "initrd", json_object_new_string(i));
	json_object_object_add(cfg, "rootfs", json_object_new_string(f));
	json_object_object_add(cfg, "cmdline", json_object_get(cmd));
	json_object_object_add(cfg, "vcpus", json_object_new_int(1));
	json_object_object_add(cfg, "mem_mib", json_object_new_int(256));
	if (e->opts.net)
		json_object_object_add(cfg, "net", json_object_new_boolean(true));
	e->default_config = strdup(json_object_to_json_string_ext(cfg, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	return e->default_config ? 0 : -ENOMEM;
}

/* A process recorded by an earlier run is ours only if pid and start time both match. */
static void reap_recorded_vmm(const char *record)
{
	_cleanup_free_ char *text = NULL;
	_cleanup_json_ json_object *o = NULL;
	json_object *pv, *sv;
	unsigned long long start;
	pid_t pid;

	if (read_file(record, 1 << 16, &text, NULL) < 0 || !(o = json_tokener_parse(text)) ||
	    !json_object_object_get_ex(o, "vmm_pid", &pv) || !json_object_object_get_ex(o, "vmm_start", &sv))
		return;
	pid = (pid_t)json_object_get_int(pv);
	start = pid_start_time(pid);
	if (pid > 1 && start && start == (unsigned long long)json_object_get_int64(sv)) {
		log_warn("killing VMM pid %d left by an earlier run (%s)", pid, record);
		kill(pid, SIGKILL);
	}
}

/*
 * A VMM spawned just before a crash may have no record yet. Every VMM this
 * store ever ran holds its guest RAM file, a file of the store, as fd
 * FD_MEM, and names the instance in its command line (-name
 * emberfs-TAG-NAME): any such process is one of ours (unless it is being
 * re-adopted).
 */
static void reap_unrecorded_vmms(struct engine *e)
{
	_cleanup_free_ char *needle = strjoin(e->store.root, "/", NULL);
	char marker[32];
	DIR *d = opendir("/proc");
	struct dirent *de;

	snprintf(marker, sizeof(marker), "emberfs-%s-", e->tag);
	while (needle && d && (de = readdir(d))) {
		_cleanup_free_ char *path = NULL, *cmd = NULL, *fdpath = NULL;
		pid_t pid = (pid_t)atoi(de->d_name);
		char target[PATH_MAX];
		ssize_t tl;
		size_t len = 0;

		if (pid <= 1 || pid == getpid() || adopt_keeps_pid(e, pid) || asprintf(&path, "/proc/%d/cmdline", pid) < 0 ||
		    read_file(path, 1 << 16, &cmd, &len) < 0 || asprintf(&fdpath, "/proc/%d/fd/%d", pid, FD_MEM) < 0)
			continue;
		for (size_t i = 0; i + 1 < len; i++)
			if (cmd[i] == '\0')
				cmd[i] = ' ';
		tl = readlink(fdpath, target, sizeof(target) - 1);
		if (tl <= 0)
			continue;
		target[tl] = '\0';
		if (strncmp(target, needle, strlen(needle)) == 0 && strstr(cmd, marker)) {
			log_warn("killing unrecorded VMM pid %d left by an earlier run", pid);
			kill(pid, SIGKILL);
		}
	}
	if (d)
		closedir(d);
}

/*
 * Scratch of builds a crashed run left: an image's unpacked bundle and disk
 * being made (images/disks/NAME.tmp, hundreds of MiB for a distribution
 * image), a step's disk being cloned (build-cache/KEY/disk.img.tmp), a
 * Dockerfile build's guest directory (templates/T/build). No build runs yet.
 */
static void sweep_build_scratch(struct engine *e)
{
	static const char *const dirs[] = { "/images/disks", "/build-cache", "/templates" };

	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		_cleanup_free_ char *dir = strjoin(e->store.root, dirs[i], NULL);
		DIR *d = dir ? opendir(dir) : NULL;
		struct dirent *de;

		while (d && (de = readdir(d))) {
			_cleanup_free_ char *p = NULL;
			size_t n = strlen(de->d_name);

			if (de->d_name[0] == '.')
				continue;
			if (i == 0 && n > 4 && strcmp(de->d_name + n - 4, ".tmp") == 0)
				p = strjoin(dir, "/", de->d_name, NULL);
			else if (i == 1)
				p = strjoin(dir, "/", de->d_name, "/disk.img.tmp", NULL);
			else if (i == 2)
				p = strjoin(dir, "/", de->d_name, "/build", NULL);
			if (p && access(p, F_OK) == 0) {
				log_warn("removing %s, left by a build an earlier run did not finish", p);
				rm_rf(p);
			}
		}
		if (d)
			closedir(d);
	}
}

/*
 * What a crashed run left and no sandbox is re-adopted with (adopt_scan
 * decided): creates and destroys in flight, warm slots, files without a
 * record. Their VMMs are killed, their directories removed.
 */
static void sweep_leftovers(struct engine *e)
{
	_cleanup_free_ char *vms = strjoin(e->store.root, "/vms", NULL);
	_cleanup_free_ char *run = strjoin(e->state_dir, "/run", NULL);
	DIR *d = vms ? opendir(vms) : NULL;
	struct dirent *de;

	while (d && (de = readdir(d))) {
		_cleanup_free_ char *dir = NULL, *rec = NULL;

		if (de->d_name[0] == '.' || !(dir = strjoin(vms, "/", de->d_name, NULL)) || adopt_keeps_dir(e, dir))
			continue;
		if ((rec = strjoin(dir, "/record.json", NULL)))
			reap_recorded_vmm(rec);
		rm_rf(dir);
	}
	if (d)
		closedir(d);
	reap_unrecorded_vmms(e);
	sweep_build_scratch(e);
	d = run ? opendir(run) : NULL;
	while (d && (de = readdir(d))) {
		_cleanup_free_ char *p = NULL;

		if (de->d_name[0] != '.' && !adopt_keeps_run(e, de->d_name) && (p = strjoin(run, "/", de->d_name, NULL)))
			rm_rf(p);
	}
	if (d)
		closedir(d);
}

static void digests_load(struct engine *e);

/*
 * The VMMs' users: --vmm-uid-base (default VMM_UID_BASE_DEFAULT), one uid per
 * live VMM. Under KVM the VMM needs /dev/kvm: through its group if that
 * group may read and write it; if only root may, VMMs stay root (said once).
 */
static void vmm_user_init(struct engine *e)
{
	int64_t base = e->opts.vmm_uid_base < 0 ? (int64_t)VMM_UID_BASE_DEFAULT : e->opts.vmm_uid_base;
	struct stat st;

	e->vmm_uid_base = (uid_t)base;
	if (base && strcmp(e->accel, "kvm") == 0 && stat("/dev/kvm", &st) == 0 && (st.st_mode & 0006) != 0006) {
		if ((st.st_mode & 0060) == 0060 && st.st_gid) {
			e->vmm_extra_gid = st.st_gid;
		} else {
			log_warn("/dev/kvm is %o %u:%u: only root may use it, so VMMs run as root (give it a group "
				 "with rw, e.g. kvm and mode 0660, to run them as their own users)",
				 st.st_mode & 07777, st.st_uid, st.st_gid);
			e->vmm_uid_base = 0;
		}
	}
	if (e->vmm_uid_base)
		log_info("VMMs run as their own users: uids %u-%u", e->vmm_uid_base,
			 e->vmm_uid_base + VMM_UID_RANGE - 1);
	else
		log_warn("VMMs run as root (--vmm-uid-base 0)");
}

/* What the network pool's start-up sweep did, in the daemon's log. */
static void netpool_note(void *ctx, const char *line)
{
	log_info("netpool: %s", line);
}

static int engine_setup(struct engine *e, const struct engine_options *o)
{
	_cleanup_free_ char *err = NULL;
	int r;

	e->state_dir = realpath(o->state_dir, NULL);
	if (!e->state_dir)
		return -errno;
	if (strlen(e->state_dir) + strlen("/run/18446744073709551615/agent.sock") > SOCKET_PATH_MAX) {
		log_error("--state-dir %s is too long for unix socket paths (at most %zu bytes)", e->state_dir,
			  SOCKET_PATH_MAX - strlen("/run/18446744073709551615/agent.sock"));
		return -ENAMETOOLONG;
	}
	if (o->image_dir && !(e->image_dir = realpath(o->image_dir, NULL))) {
		r = -errno;
		log_error("image directory %s: %s", o->image_dir, strerror(-r));
		return r;
	}
	if ((r = drivers_probe(e, o)) < 0)
		return r;
	e->tsc_khz = host_tsc_khz();
	r = engine_resolve_accel(o->accel, &e->accel);
	if (r < 0) {
		log_error("KVM was requested but /dev/kvm is not usable");
		return r;
	}
	r = store_open(e->state_dir, o->store_size_mib, o->no_loop_store, &e->store, &err);
	if (r < 0) {
		log_error("%s: %s", err ? err : "store", strerror(-r));
		return r;
	}
	if (!e->store.reflink)
		log_warn("store %s cannot reflink: clones are full copies (reported in every status)", e->store.root);
	{
		struct sha256_ctx c;
		uint8_t dg[SHA256_LEN];
		char d[65];

		/* the instance tag in every name: 4 hex digits of the state directory's path */
		sha256_init(&c);
		sha256_update(&c, e->state_dir, strlen(e->state_dir));
		sha256_final(&c, dg);
		sha256_hex(dg, d);
		memcpy(e->tag, d, 4);
		e->tag[4] = '\0';
	}
	vmm_user_init(e);
	adopt_scan(e);
	sweep_leftovers(e);
	{
		_cleanup_free_ pid_t *keep = NULL;
		size_t n = adopt_pids(e, &keep);

		cgroups_init(e, e->tag, keep, n);
	}
	if (o->net) {
		struct netpool_options no = { .range = o->net_range, .depth = o->net_pool, .egress = !o->net_no_egress,
					      .dns = o->dns, .note = netpool_note };
		_cleanup_free_ char *nerr = NULL;
		_cleanup_free_ unsigned *keep = NULL;
		const char *tag = e->tag;

		no.tag = tag;
		no.n_keep = adopt_net_indexes(e, &keep);
		no.keep = keep;
		r = netpool_new(&no, &e->net, &nerr);
		if (r < 0) {
			log_error("networking: %s", nerr ? nerr : strerror(-r));
			return r;
		}
		log_info("networking: range %s, tag %s, %u slots kept ready, egress %s", o->net_range ? o->net_range :
			 NETPOOL_DEFAULT_RANGE, tag, o->net_pool, o->net_no_egress ? "off" : "on");
	}
	digests_load(e);
	return e->image_dir ? load_default_config(e) : 0;
}

/* ---- template registry (all under e->lock) ---- */

static struct template *find_template(struct engine *e, const char *name)
{
	for (size_t i = 0; i < e->n_templates; i++)
		if (strcmp(e->templates[i]->name, name) == 0)
			return e->templates[i];
	return NULL;
}


static int register_template(struct engine *e, struct template *t)
{
	struct template **n = realloc(e->templates, (e->n_templates + 1) * sizeof(*n));

	if (!n)
		return -ENOMEM;
	e->templates = n;
	if (idtable_put(&e->templates_by_id, t->id, t) < 0)
		return -ENOMEM;
	e->templates[e->n_templates++] = t;
	return 0;
}

static int load_templates(struct engine *e)
{
	_cleanup_free_ char *root = strjoin(e->store.root, "/templates", NULL);
	DIR *d;
	struct dirent *de;
	int r = 0;

	if (!root || mkdir_p(root, 0700) < 0 || !(d = opendir(root)))
		return -EIO;
	while ((de = readdir(d))) {
		_cleanup_free_ char *cpath = NULL, *text = NULL;
		struct template *t;

		if (name_validate(de->d_name) < 0 || !(cpath = strjoin(root, "/", de->d_name, "/config.json", NULL)))
			continue;
		if (read_file(cpath, 65536, &text, NULL) < 0 || template_new(e, de->d_name, text, false, &t) < 0) {
			log_warn("template %s: unreadable config, ignored", de->d_name);
			continue;
		}
		if ((r = register_template(e, t)) < 0) {
			template_free(t);
			break;
		}
	}
	closedir(d);
	return r;
}

/* --store: the chunk cache in STATE/cache, the lazy files at STATE/lazy. */
static int engine_objstore_open(struct engine *e)
{
	_cleanup_free_ char *cache = strjoin(e->state_dir, "/cache", NULL), *lazy = strjoin(e->state_dir, "/lazy", NULL);
	_cleanup_free_ char *why = NULL;
	const struct objstore_options o = { .url = e->opts.store_url, .cache_dir = cache, .lazy_dir = lazy,
					    .limit_bytes = (e->opts.cache_mib ? e->opts.cache_mib : 4096) << 20,
					    .prefetch = !e->opts.no_prefetch, .retries = 3,
					    .chunk = e->opts.store_chunk_kib << 10 };
	int r;

	if (!cache || !lazy)
		return -ENOMEM;
	if ((r = objstore_new(&o, &e->objstore, &why)) < 0)
		log_error("--store %s: %s", e->opts.store_url, why ? why : strerror(-r));
	return r;
}

char *engine_render_cache_status(struct engine *e)
{
	_cleanup_json_ json_object *o = e->objstore ? objstore_stats_json(e->objstore) : json_object_new_object();
	char *s;

	if (!o)
		return NULL;
	if (!e->objstore)
		json_object_object_add(o, "store", NULL);
	s = strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY), "\n", NULL);
	return s;
}

int engine_new(const struct engine_options *opts, struct engine **ret)
{
	struct engine *e = calloc(1, sizeof(*e));
	struct template *t;
	int r;

	if (!e)
		return -ENOMEM;
	e->opts = *opts;
	if (!e->opts.console_max_kib)
		e->opts.console_max_kib = 1024;
	if (e->opts.store_reserve_mib < 0)
		e->opts.store_reserve_mib = 512;
	if (!e->opts.cold_slots)
		e->opts.cold_slots = 1;
	if (!e->opts.max_sandboxes)
		e->opts.max_sandboxes = 64;
	if (!e->opts.max_checkpoints)
		e->opts.max_checkpoints = 16;
	if (!e->opts.pool_parallel)
		e->opts.pool_parallel = 1;
	if (!e->opts.store_size_mib)
		e->opts.store_size_mib = 32768;
	{
		struct capacity_params cp;
		long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);

		/* the default budget: a quarter of host memory, at most 64 slots */
		capacity_params_default(&cp, pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz >> 20 : 4096);
		e->pool_budget_mib = e->opts.pool_budget_mib ? e->opts.pool_budget_mib : cp.budget_mib;
		e->pool_max_slots = e->opts.pool_max_slots ? e->opts.pool_max_slots : cp.max_slots;
	}
	pthread_mutex_init(&e->lock, NULL);
	pthread_mutex_init(&e->cold_lock, NULL);
	pthread_mutex_init(&e->digest_lock, NULL);
	pthread_mutex_init(&e->base_lock, NULL);
	pthread_cond_init(&e->cache_cond, NULL);
	pthread_cond_init(&e->cold_cond, NULL);
	atomic_init(&e->next_id, 1);
	r = engine_setup(e, &e->opts);
	if (r == 0 && e->opts.store_url)
		r = engine_objstore_open(e);
	if (r < 0 || (r = load_templates(e)) < 0)
		goto fail;
	/* sandboxes an earlier run left, before anything new starts */
	adopt_all(e);
	cache_prune(e);
	/* The default template follows --image-dir: a rebuilt image is a new identity. */
	t = e->default_config ? engine_template_get(e, "default") : NULL;
	if (t) {
		r = template_write_config(t, e->default_config, strlen(e->default_config));
		template_unref(t);
		if (r < 0)
			log_warn("template default: cannot apply the image's config: %s", strerror(-r));
		r = 0;
	} else if (e->default_config) {
		r = engine_template_create(e, "default", NULL);
		if (r < 0)
			log_error("template default: %s", strerror(-r));
	}
	pthread_mutex_lock(&e->lock);
	t = find_template(e, "default");
	if (r == 0 && t && e->opts.bake_default &&
	    (t->state == TPL_NEW || t->state == TPL_STALE || t->state == TPL_FAILED))
		template_start_bake(t);
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		goto fail;
	engine_idler_start(e);
	engine_deadlines_start(e); /* after re-adoption: a deadline passed while down is applied now */
	*ret = e;
	return 0;
fail:
	engine_free(e);
	return r;
}

void engine_free(struct engine *e)
{
	if (!e)
		return;
	pthread_mutex_lock(&e->lock);
	e->shutting_down = true;
	pthread_mutex_unlock(&e->lock);
	adopt_clear(e);
	objstore_stop(e->objstore); /* a bake waiting on the store ends now */
	engine_deadlines_stop(e);
	engine_idler_stop(e);
	/* Templates destroy their sandboxes and join their bakes. */
	for (size_t i = 0; i < e->n_templates; i++)
		template_free(e->templates[i]);
	/* Exec threads fail fast once the agents are shut down. */
	while (atomic_load(&e->execs) > 0)
		usleep(1000);
	free(e->templates);
	idtable_free(&e->templates_by_id);
	idtable_free(&e->sandboxes_by_id);
	idtable_free(&e->procs_by_id);
	idtable_free(&e->ckdirs_by_id);
	idtable_free(&e->ckpts_by_id);
	netpool_free(e->net); /* every VMM is gone: no namespace is in use */
	objstore_free(e->objstore); /* nor maps a lazy file */
	cgroups_fini(e);
	if (e->store.root) {
		_cleanup_free_ char *run = strjoin(e->state_dir, "/run", NULL);

		if (run)
			rm_rf(run);
		store_close(&e->store);
	}
	free(e->state_dir);
	free(e->image_dir);
	for (size_t i = 0; i < VMM_DRIVERS_MAX; i++) {
		free(e->drivers[i].binary);
		free(e->drivers[i].version);
	}
	free(e->tsc_khz);
	free(e->default_config);
	while (e->digests) {
		struct digest_entry *d = e->digests;

		e->digests = d->next;
		free(d->path);
		free(d);
	}
	pthread_mutex_destroy(&e->digest_lock);
	pthread_mutex_destroy(&e->base_lock);
	pthread_cond_destroy(&e->cache_cond);
	pthread_mutex_destroy(&e->lock);
	pthread_mutex_destroy(&e->cold_lock);
	pthread_cond_destroy(&e->cold_cond);
	free(e);
}

int engine_template_create(struct engine *e, const char *name, struct template **ret)
{
	return engine_template_create_config(e, name, NULL, ret);
}

int engine_template_create_config(struct engine *e, const char *name, const char *config, struct template **ret)
{
	struct template *t;
	int r = name_validate(name);

	if (r < 0)
		return r;
	if (!config && !(config = e->default_config))
		return -ENOENT;
	pthread_mutex_lock(&e->lock);
	r = e->shutting_down ? -ESHUTDOWN : find_template(e, name) ? -EEXIST : 0;
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r;
	/* Hashing and writing the config take time: not under the lock. */
	r = template_new(e, name, config, true, &t);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	r = e->shutting_down ? -ESHUTDOWN : find_template(e, name) ? -EEXIST : register_template(e, t);
	if (r == 0 && ret) {
		atomic_fetch_add(&t->refs, 1);
		*ret = t;
	}
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		template_free(t); /* joins its pool filler, which takes the lock */
	return r;
}

int engine_template_remove(struct engine *e, const char *name)
{
	struct template *t;
	size_t i;

	pthread_mutex_lock(&e->lock);
	t = find_template(e, name);
	if (!t) {
		pthread_mutex_unlock(&e->lock);
		return -ENOENT;
	}
	if (t->n_sandboxes > 0 || t->bake_running) {
		pthread_mutex_unlock(&e->lock);
		return -EBUSY;
	}
	for (i = 0; e->templates[i] != t; i++)
		;
	memmove(e->templates + i, e->templates + i + 1, (e->n_templates - i - 1) * sizeof(*e->templates));
	e->n_templates--;
	idtable_del(&e->templates_by_id, t->id);
	t->removed = true;
	pthread_mutex_unlock(&e->lock);
	template_reap_bake(t);
	pool_stop(t);
	rm_rf(t->dir);
	template_unref(t);
	return 0;
}

struct template *engine_template_get(struct engine *e, const char *name)
{
	struct template *t;

	pthread_mutex_lock(&e->lock);
	t = find_template(e, name);
	if (t)
		atomic_fetch_add(&t->refs, 1);
	pthread_mutex_unlock(&e->lock);
	return t;
}

struct template *engine_template_by_id(struct engine *e, uint64_t id)
{
	struct template *t = NULL;

	pthread_mutex_lock(&e->lock);
	t = idtable_get(&e->templates_by_id, id);
	if (t)
		atomic_fetch_add(&t->refs, 1);
	pthread_mutex_unlock(&e->lock);
	return t;
}

struct sandbox *engine_sandbox_by_id(struct engine *e, uint64_t id)
{
	struct sandbox *s = NULL;

	pthread_mutex_lock(&e->lock);
	s = idtable_get(&e->sandboxes_by_id, id);
	if (s)
		atomic_fetch_add(&s->refs, 1);
	pthread_mutex_unlock(&e->lock);
	return s;
}

char **engine_template_list(struct engine *e)
{
	char **v;

	pthread_mutex_lock(&e->lock);
	v = calloc(e->n_templates + 1, sizeof(char *));
	for (size_t i = 0; v && i < e->n_templates; i++)
		v[i] = strdup(e->templates[i]->name);
	pthread_mutex_unlock(&e->lock);
	return v;
}

/*
 * Digests are cached by (path, device, inode, size, mtime), in memory and in
 * STATE/digests.json, so an image is hashed once, not at every start (the
 * same trust git's index puts in stat data).
 */
static void digest_add(struct engine *e, const char *path, const struct stat *st, const char *hex)
{
	struct digest_entry *d = calloc(1, sizeof(*d));

	if (!d || !(d->path = strdup(path))) {
		free(d);
		return;
	}
	d->dev = st->st_dev;
	d->ino = st->st_ino;
	d->size = st->st_size;
	d->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	memcpy(d->hex, hex, 65);
	d->next = e->digests;
	e->digests = d;
}

static bool digest_matches(const struct digest_entry *d, const char *path, const struct stat *st)
{
	return strcmp(d->path, path) == 0 && d->dev == st->st_dev && d->ino == st->st_ino &&
	       d->size == st->st_size &&
	       d->mtime_ns == (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static void digests_save(struct engine *e)
{
	_cleanup_json_ json_object *a = json_object_new_array();
	_cleanup_free_ char *p = strjoin(e->state_dir, "/digests.json", NULL);
	const char *txt;

	if (!a || !p)
		return;
	/* one writer at a time: they share the temporary file name */
	pthread_mutex_lock(&e->digest_lock);
	for (struct digest_entry *d = e->digests; d; d = d->next) {
		json_object *o = json_object_new_object();

		json_object_object_add(o, "path", json_object_new_string(d->path));
		json_object_object_add(o, "dev", json_object_new_int64((int64_t)d->dev));
		json_object_object_add(o, "ino", json_object_new_int64((int64_t)d->ino));
		json_object_object_add(o, "size", json_object_new_int64((int64_t)d->size));
		json_object_object_add(o, "mtime_ns", json_object_new_int64(d->mtime_ns));
		json_object_object_add(o, "sha256", json_object_new_string(d->hex));
		json_object_array_add(a, o);
	}
	txt = json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN);
	write_file_atomic(p, txt, strlen(txt), false);
	pthread_mutex_unlock(&e->digest_lock);
}

static void digests_load(struct engine *e)
{
	_cleanup_free_ char *p = strjoin(e->state_dir, "/digests.json", NULL), *text = NULL;
	_cleanup_json_ json_object *a = NULL;

	if (!p || read_file(p, 1 << 20, &text, NULL) < 0 || !(a = json_tokener_parse(text)) ||
	    !json_object_is_type(a, json_type_array))
		return;
	for (size_t i = 0; i < json_object_array_length(a); i++) {
		json_object *o = json_object_array_get_idx(a, i), *v[6];
		static const char *const k[] = { "path", "dev", "ino", "size", "mtime_ns", "sha256" };
		struct stat st = { 0 };
		bool ok = true;

		for (int j = 0; j < 6; j++)
			ok = ok && json_object_object_get_ex(o, k[j], &v[j]);
		if (!ok || strlen(json_object_get_string(v[5])) != 64)
			continue;
		st.st_dev = (dev_t)json_object_get_int64(v[1]);
		st.st_ino = (ino_t)json_object_get_int64(v[2]);
		st.st_size = (off_t)json_object_get_int64(v[3]);
		st.st_mtim.tv_sec = json_object_get_int64(v[4]) / 1000000000;
		st.st_mtim.tv_nsec = json_object_get_int64(v[4]) % 1000000000;
		digest_add(e, json_object_get_string(v[0]), &st, json_object_get_string(v[5]));
	}
}

int engine_file_digest(struct engine *e, const char *path, char out[65])
{
	struct stat st;
	int r;

	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	pthread_mutex_lock(&e->digest_lock);
	for (struct digest_entry *d = e->digests; d; d = d->next)
		if (digest_matches(d, path, &st)) {
			memcpy(out, d->hex, 65);
			pthread_mutex_unlock(&e->digest_lock);
			return 0;
		}
	pthread_mutex_unlock(&e->digest_lock);
	r = sha256_file(path, out);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->digest_lock);
	digest_add(e, path, &st, out);
	pthread_mutex_unlock(&e->digest_lock);
	digests_save(e);
	return 0;
}
