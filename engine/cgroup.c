/*
 * Control groups for VMMs: each VMM gets its own group, named by its pid,
 * under one group per daemon instance (emberfs-TAG) below the daemon's own
 * group, with a CPU quota (a core per vCPU, plus one for the VMM's I/O
 * thread) and a memory limit (guest RAM plus VMM overhead).
 *
 * cgroup v1 where the host mounts the cpu and memory controllers that way
 * (this project's machines do: their unified hierarchy has only hugetlb),
 * cgroup v2 where the daemon's own group can delegate cpu and memory. Where
 * neither works, VMMs run without limits and the start-up log says so.
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
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

#define VMM_OVERHEAD_MIB 256 /* QEMU itself, TCG's translation buffer, device state */

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

static char *v2_base(const char *tag)
{
	_cleanup_free_ char *self = self_group("");
	_cleanup_free_ char *dir = NULL, *ctl = NULL;
	char *base;

	if (!self || access("/sys/fs/cgroup/cgroup.controllers", R_OK) < 0)
		return NULL;
	dir = strjoin("/sys/fs/cgroup", strcmp(self, "/") == 0 ? "" : self, NULL);
	base = dir ? strjoin(dir, "/emberfs-", tag, NULL) : NULL;
	if (!base)
		return NULL;
	/* the instance group is a domain whose children (one per VMM) get cpu and memory */
	if ((mkdir(base, 0755) < 0 && errno != EEXIST) || write_str(base, "cgroup.subtree_control", "+cpu +memory") < 0) {
		rmdir(base);
		free(base);
		return NULL;
	}
	return base;
}

void cgroups_init(struct engine *e, const char *tag, const pid_t *keep, size_t n_keep)
{
	char *cpu = v1_base("cpu", tag), *mem = v1_base("memory", tag);
	size_t n = 0;

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
		if ((e->cgroups[n] = v2_base(tag))) {
			n++;
			e->cgroup_version = 2;
		}
	}
	e->cgroups[n] = NULL;
	for (size_t i = 0; i < n; i++)
		sweep_base(e->cgroups[i], keep, n_keep);
	if (n)
		log_info("VMM limits: cgroup v%d (%s%s%s)", e->cgroup_version, e->cgroups[0], n > 1 ? ", " : "",
			 n > 1 ? e->cgroups[1] : "");
	else
		log_warn("VMM limits: no cgroup with cpu and memory controllers is usable here; VMMs run without "
			 "CPU and memory limits");
}

void cgroups_fini(struct engine *e)
{
	for (size_t i = 0; e->cgroups[i]; i++) {
		sweep_base(e->cgroups[i], NULL, 0);
		rmdir(e->cgroups[i]);
		free(e->cgroups[i]);
		e->cgroups[i] = NULL;
	}
}

int cgroup_place(char *const *bases, int version, pid_t pid, unsigned vcpus, unsigned mem_mib, char ***ret_dirs)
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
		if (cpu && version == 1) {
			snprintf(val, sizeof(val), "%u", (vcpus + 1) * 100000u);
			if ((r = write_str(dirs[i], "cpu.cfs_period_us", "100000")) == 0)
				r = write_str(dirs[i], "cpu.cfs_quota_us", val);
		} else if (cpu) {
			snprintf(val, sizeof(val), "%u 100000", (vcpus + 1) * 100000u);
			r = write_str(dirs[i], "cpu.max", val);
		}
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
