/*
 * Control groups for VMMs, and the daemon's standing above them.
 *
 * Layout, under G, the daemon's own group when it starts (v1: in the cpu and
 * memory hierarchies; v2: the unified one):
 *
 *   G/emberfs-TAG/           every VMM of the instance: half the default
 *                            CPU weight, so all VMMs together weigh half of
 *                            one daemon thread (v1: a task in G weighs the
 *                            default 1024) or of the daemon's group (v2); no
 *                            quota (a quota here throttles every VMM at once
 *                            when one busy VMM has used it up, the quiet
 *                            ones with it)
 *   G/emberfs-TAG/PID/       one VMM: the default CPU weight, the same for
 *                            every VMM (an equal share per sandbox under
 *                            contention: a weight per vCPU let a wide noisy
 *                            guest slow its neighbours, measured), a quota
 *                            of a core per vCPU plus one for its I/O
 *                            thread, but never the whole host (half a core
 *                            stays, a quarter of a 1-CPU host), a memory
 *                            limit (guest RAM plus VMM overhead)
 *   G/emberfs-TAG-daemon/    v2 only, and only where G is not the root: the
 *                            daemon itself, at the default weight (a group
 *                            with processes cannot hand controllers down, so
 *                            the daemon leaves G for a group of its own)
 *
 * The weights are work-conserving: they decide only under contention, and
 * then a waking daemon thread (FUSE, an agent connection's reader) is ahead
 * of any VMM however many there are. A VMM's quota bounds it even on an idle
 * host, so no single VMM can take every CPU. The alternatives measured worse
 * for a neighbour's exec (docs/operations.md, "Confinement"): the daemon in
 * a group of its own with ten times the weight, the VMMs' parent at a
 * quarter, a weight per vCPU, a quota for all VMMs together.
 *
 * cgroup v1 where the host mounts the cpu and memory controllers that way
 * (this project's machines do: their unified hierarchy has only hugetlb),
 * cgroup v2 where the daemon's group can delegate cpu and memory (and io,
 * when there: a VMM's guest RAM is a shared file mapping, and with memory
 * and io together its writeback is its own cgroup's, throttled within its
 * memory limit). Where neither works, VMMs run without limits and the
 * start-up log says so.
 *
 * A VMM is placed while it starts, before the spawn returns (so before its
 * guest's memory is touched by a snapshot load or a boot): a v1 move waits
 * for an RCU grace period, 10-30 ms here, which QEMU's own start-up hides.
 * What QEMU allocates in its first milliseconds stays charged to the
 * daemon's group. Its group is removed once it is reaped.
 * Groups of an earlier run of the same instance (a crash) are swept at
 * start: what is still in them is one of our VMMs by construction, so it is
 * killed and the group removed.
 */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

#define VMM_OVERHEAD_MIB 256 /* QEMU itself, TCG's translation buffer, device state */
#define CG_PERIOD_US 100000
#define VMMS_WEIGHT_DIVISOR 2 /* all VMMs together against one daemon thread (v1) or its group (v2) */

/* ---- the figures (pure) ---- */

static unsigned long weight_default(int version)
{
	return version == 1 ? 1024 : 100; /* cpu.shares, cpu.weight */
}

struct cg_cpu cgroup_cpu_all_vmms(int version)
{
	return (struct cg_cpu){ .weight = weight_default(version) / VMMS_WEIGHT_DIVISOR, .quota_us = 0,
				.period_us = CG_PERIOD_US };
}

struct cg_cpu cgroup_cpu_vmm(int version, unsigned vcpus, unsigned ncpus)
{
	unsigned long host = (unsigned long)(ncpus ? ncpus : 1) * CG_PERIOD_US;
	unsigned long reserve = host / 4 < CG_PERIOD_US / 2 ? host / 4 : CG_PERIOD_US / 2;
	unsigned long q = (unsigned long)(vcpus + 1) * CG_PERIOD_US;

	/* the same weight for every VMM: a wider guest gets no larger share of a contended host */
	return (struct cg_cpu){ .weight = weight_default(version), .quota_us = q < host - reserve ? q : host - reserve,
				.period_us = CG_PERIOD_US };
}

struct cg_cpu cgroup_cpu_daemon(int version)
{
	return (struct cg_cpu){ .weight = weight_default(version), .quota_us = 0, .period_us = CG_PERIOD_US };
}

/* The CPUs the daemon may run on (its affinity: a cpuset counts), at least 1. */
static unsigned cpus_usable(void)
{
	cpu_set_t set;
	int n;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && (n = CPU_COUNT(&set)) > 0)
		return (unsigned)n;
	n = (int)sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (unsigned)n : 1;
}

static int write_str(const char *dir, const char *file, const char *val)
{
	_cleanup_free_ char *p = strjoin(dir, "/", file, NULL);
	_cleanup_close_ int fd = -1;
	size_t n = strlen(val);

	if (!p)
		return -ENOMEM;
	fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	return write(fd, val, n) == (ssize_t)n ? 0 : -errno;
}

/* The daemon's own group in the hierarchy whose /proc/self/cgroup line matches key ("cpu", "memory", or "" for v2). */
static char *self_group(const char *key)
{
	_cleanup_free_ char *txt = NULL;
	char *line, *save = NULL;

	if (read_file("/proc/self/cgroup", 1 << 16, &txt, NULL) < 0)
		return NULL;
	for (line = strtok_r(txt, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;

		if (!c2)
			continue;
		*c2 = '\0';
		if (key[0] ? strcmp(c1 + 1, key) == 0 : strcmp(line, "0") == 0 && c1[1] == '\0')
			return strdup(c2 + 1);
	}
	return NULL;
}

/* Kills what is left in a group of an earlier run and removes it. */
static void sweep_group(const char *dir)
{
	_cleanup_free_ char *procs = strjoin(dir, "/cgroup.procs", NULL), *txt = NULL;

	if (procs && read_file(procs, 1 << 20, &txt, NULL) == 0) {
		for (char *p = txt; *p;) {
			char *end;
			long pid = strtol(p, &end, 10);

			if (end == p)
				break;
			if (pid > 1) {
				log_warn("cgroup %s: VMM %ld of an earlier run still there: killed", dir, pid);
				kill((pid_t)pid, SIGKILL);
			}
			p = end + (*end == '\n');
		}
	}
	for (int i = 0; i < 200 && rmdir(dir) < 0 && errno == EBUSY; i++)
		poll(NULL, 0, 5);
}

/* Sweeps every per-VMM group under base but those of the pids in keep (VMMs being re-adopted). */
static void sweep_base(const char *base, const pid_t *keep, size_t n_keep)
{
	DIR *d = opendir(base);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d))) {
		_cleanup_free_ char *p = NULL;
		bool kept = false;

		if (de->d_type != DT_DIR || de->d_name[0] == '.')
			continue;
		for (size_t k = 0; k < n_keep && !kept; k++)
			kept = atoi(de->d_name) == (int)keep[k];
		if (kept)
			continue;
		p = strjoin(base, "/", de->d_name, NULL);
		if (p)
			sweep_group(p);
	}
	closedir(d);
}

/* Writes a group's CPU figures: its weight, then its quota (none: unlimited). */
static int cpu_apply(const char *dir, int version, struct cg_cpu c)
{
	char val[64], period[32];
	int r;

	snprintf(val, sizeof(val), "%lu", c.weight);
	if ((r = write_str(dir, version == 1 ? "cpu.shares" : "cpu.weight", val)) < 0)
		return r;
	if (version == 1) {
		snprintf(val, sizeof(val), "%ld", c.quota_us ? (long)c.quota_us : -1L);
		snprintf(period, sizeof(period), "%lu", c.period_us);
		if ((r = write_str(dir, "cpu.cfs_period_us", period)) == 0)
			r = write_str(dir, "cpu.cfs_quota_us", val);
		return r;
	}
	if (c.quota_us)
		snprintf(val, sizeof(val), "%lu %lu", c.quota_us, c.period_us);
	else
		snprintf(val, sizeof(val), "max %lu", c.period_us);
	return write_str(dir, "cpu.max", val);
}

/* The daemon leaves g for g/emberfs-TAG-daemon (all its threads); the group's path, or NULL. */
static char *daemon_group_enter(const char *g, const char *tag)
{
	_cleanup_free_ char *d = strjoin(g, "/emberfs-", tag, "-daemon", NULL);
	char pid[32];
	int r;

	if (!d)
		return NULL;
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	if (mkdir(d, 0755) < 0 && errno != EEXIST)
		r = -errno;
	else
		r = write_str(d, "cgroup.procs", pid);
	if (r < 0) {
		log_warn("cgroup: cannot move the daemon into %s: %s", d, strerror(-r));
		rmdir(d);
		return NULL;
	}
	return TAKE_PTR(d);
}

/* Back to the group it came from, and its own removed (at stop; v2 may refuse: then it stays, empty at exit). */
static void daemon_group_leave(const char *d)
{
	_cleanup_free_ char *parent = strdup(d);
	char *slash = parent ? strrchr(parent, '/') : NULL;
	char pid[32];

	if (!slash)
		return;
	*slash = '\0';
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	if (write_str(parent, "cgroup.procs", pid) < 0 || rmdir(d) < 0)
		log_debug("cgroup: %s stays: %m", d);
}

/* The instance group in a v1 hierarchy, under the daemon's group there. */
static char *v1_base(const char *controller, const char *tag)
{
	_cleanup_free_ char *self = self_group(controller);
	_cleanup_free_ char *root = strjoin("/sys/fs/cgroup/", controller, NULL);
	_cleanup_free_ char *probe = NULL;
	char *base;

	if (!self || !root)
		return NULL;
	probe = strjoin(root, self, "/", strcmp(controller, "cpu") == 0 ? "cpu.cfs_quota_us" : "memory.limit_in_bytes",
			NULL);
	if (!probe || access(probe, W_OK) < 0)
		return NULL;
	base = strjoin(root, strcmp(self, "/") == 0 ? "" : self, "/emberfs-", tag, NULL);
	if (base && mkdir(base, 0755) < 0 && errno != EEXIST) {
		log_warn("cgroup: cannot make %s: %m", base);
		free(base);
		return NULL;
	}
	return base;
}

/* Is controller on in dir's cgroup.subtree_control? */
static bool v2_enabled(const char *dir, const char *controller)
{
	_cleanup_free_ char *p = strjoin(dir, "/cgroup.subtree_control", NULL), *txt = NULL;
	size_t n = strlen(controller);

	if (!p || read_file(p, 4096, &txt, NULL) < 0)
		return false;
	for (const char *w = txt; (w = strstr(w, controller)); w += n)
		if ((w == txt || w[-1] == ' ') && (w[n] == ' ' || w[n] == '\n' || w[n] == '\0'))
			return true;
	return false;
}

/*
 * The instance group in the unified hierarchy, its children given cpu and
 * memory (and io if there). g, the daemon's group, must hand them down
 * first: a group with processes cannot (unless it is the root), so the
 * daemon moves to its own group first (*ret_daemon).
 */
static char *v2_base(const char *tag, char **ret_daemon)
{
	_cleanup_free_ char *self = self_group(""), *g = NULL, *base = NULL;
	int r = 0;

	if (!self || access("/sys/fs/cgroup/cgroup.controllers", R_OK) < 0 ||
	    !(g = strjoin("/sys/fs/cgroup", strcmp(self, "/") == 0 ? "" : self, NULL)))
		return NULL;
	if (!v2_enabled(g, "cpu") || !v2_enabled(g, "memory")) {
		r = write_str(g, "cgroup.subtree_control", "+cpu +memory");
		if (r == -EBUSY && strcmp(self, "/") != 0 && (*ret_daemon = daemon_group_enter(g, tag)))
			r = write_str(g, "cgroup.subtree_control", "+cpu +memory");
		if (r < 0)
			return NULL;
	}
	write_str(g, "cgroup.subtree_control", "+io"); /* optional: writeback of each VMM's own */
	if (!(base = strjoin(g, "/emberfs-", tag, NULL)))
		return NULL;
	/* the instance group is a domain whose children (one per VMM) get cpu and memory */
	if ((mkdir(base, 0755) < 0 && errno != EEXIST) || write_str(base, "cgroup.subtree_control", "+cpu +memory") < 0) {
		rmdir(base);
		return NULL;
	}
	write_str(base, "cgroup.subtree_control", "+io");
	return TAKE_PTR(base);
}

/* The CPU figures of the VMMs' parent and of the daemon's group. */
static void cpu_setup(struct engine *e)
{
	const char *cpu_base = e->cgroups[0]; /* v1: the cpu hierarchy's; v2: the only one */
	struct cg_cpu all = cgroup_cpu_all_vmms(e->cgroup_version);
	int r;

	if ((r = cpu_apply(cpu_base, e->cgroup_version, all)) < 0)
		log_warn("cgroup: cannot set the CPU share of all VMMs (%s): %s", cpu_base, strerror(-r));
	if (e->cgroup_daemon && (r = cpu_apply(e->cgroup_daemon, e->cgroup_version, cgroup_cpu_daemon(e->cgroup_version))) < 0)
		log_warn("cgroup: cannot set the daemon's CPU weight (%s): %s", e->cgroup_daemon, strerror(-r));
}

void cgroups_init(struct engine *e, const char *tag, const pid_t *keep, size_t n_keep)
{
	char *cpu = v1_base("cpu", tag), *mem = v1_base("memory", tag);
	size_t n = 0;

	e->cgroup_ncpus = cpus_usable();
	if (cpu && mem) {
		e->cgroups[n++] = cpu;
		e->cgroups[n++] = mem;
		e->cgroup_version = 1;
	} else {
		if (cpu)
			rmdir(cpu);
		if (mem)
			rmdir(mem);
		free(cpu);
		free(mem);
		if ((e->cgroups[n] = v2_base(tag, &e->cgroup_daemon))) {
			n++;
			e->cgroup_version = 2;
		}
	}
	e->cgroups[n] = NULL;
	for (size_t i = 0; i < n; i++)
		sweep_base(e->cgroups[i], keep, n_keep);
	if (n) {
		struct cg_cpu one = cgroup_cpu_vmm(e->cgroup_version, 1, e->cgroup_ncpus);

		cpu_setup(e);
		log_info("VMM limits: cgroup v%d (%s%s%s); all VMMs at CPU weight %lu, a 1-vCPU VMM at most %.2f of %u "
			 "CPUs; the daemon in %s", e->cgroup_version, e->cgroups[0], n > 1 ? ", " : "",
			 n > 1 ? e->cgroups[1] : "", cgroup_cpu_all_vmms(e->cgroup_version).weight,
			 (double)one.quota_us / one.period_us, e->cgroup_ncpus,
			 e->cgroup_daemon ? e->cgroup_daemon : "the group it started in");
	} else {
		log_warn("VMM limits: no cgroup with cpu and memory controllers is usable here; VMMs run without "
			 "CPU and memory limits");
	}
}

void cgroups_fini(struct engine *e)
{
	for (size_t i = 0; e->cgroups[i]; i++) {
		sweep_base(e->cgroups[i], NULL, 0);
		rmdir(e->cgroups[i]);
		free(e->cgroups[i]);
		e->cgroups[i] = NULL;
	}
	if (e->cgroup_daemon)
		daemon_group_leave(e->cgroup_daemon);
	free(e->cgroup_daemon);
	e->cgroup_daemon = NULL;
}

int cgroup_place(char *const *bases, int version, pid_t pid, unsigned vcpus, unsigned mem_mib, unsigned ncpus,
		 char ***ret_dirs)
{
	char name[32], val[64];
	size_t n = 0;
	char **dirs;
	int r = 0;

	*ret_dirs = NULL;
	while (bases && bases[n])
		n++;
	if (!n)
		return 0;
	dirs = calloc(n + 1, sizeof(*dirs));
	if (!dirs)
		return -ENOMEM;
	snprintf(name, sizeof(name), "/%d", (int)pid);
	for (size_t i = 0; r == 0 && i < n; i++) {
		const char *base = bases[i];
		bool cpu = version == 2 || strstr(base, "/sys/fs/cgroup/cpu/") == base;
		bool mem = version == 2 || strstr(base, "/sys/fs/cgroup/memory/") == base;

		dirs[i] = strjoin(base, name, NULL);
		if (!dirs[i]) {
			r = -ENOMEM;
			break;
		}
		if (mkdir(dirs[i], 0755) < 0) {
			r = -errno;
			free(dirs[i]);
			dirs[i] = NULL;
			break;
		}
		if (cpu)
			r = cpu_apply(dirs[i], version, cgroup_cpu_vmm(version, vcpus, ncpus));
		if (r == 0 && mem) {
			snprintf(val, sizeof(val), "%llu", (unsigned long long)(mem_mib + VMM_OVERHEAD_MIB) << 20);
			r = write_str(dirs[i], version == 1 ? "memory.limit_in_bytes" : "memory.max", val);
		}
		if (r == 0) {
			snprintf(val, sizeof(val), "%d", (int)pid);
			r = write_str(dirs[i], "cgroup.procs", val);
		}
	}
	if (r < 0) {
		cgroup_remove(dirs);
		return r;
	}
	*ret_dirs = dirs;
	return 0;
}

char **cgroup_dirs_of(char *const *bases, pid_t pid)
{
	size_t n = 0, k = 0;
	char name[32], **dirs;

	while (bases && bases[n])
		n++;
	if (!n || !(dirs = calloc(n + 1, sizeof(*dirs))))
		return NULL;
	snprintf(name, sizeof(name), "/%d", (int)pid);
	for (size_t i = 0; i < n; i++) {
		char *d = strjoin(bases[i], name, NULL);

		if (d && access(d, F_OK) == 0)
			dirs[k++] = d;
		else
			free(d);
	}
	return dirs;
}

void cgroup_remove(char **dirs)
{
	for (size_t i = 0; dirs && dirs[i]; i++) {
		/* the VMM was reaped: the group empties at once, or within a few ms */
		for (int k = 0; k < 100 && rmdir(dirs[i]) < 0 && errno == EBUSY; k++)
			poll(NULL, 0, 2);
		free(dirs[i]);
	}
	free(dirs);
}
