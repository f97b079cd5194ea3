/*
 * The boundary between the engine and a VMM driver (docs/architecture.md,
 * "Drivers").
 *
 * A driver is a `struct vmm_ops` in its own file (qemu.c), listed in
 * drivers.c; a template's "backend" names the one it uses. The engine asks
 * a driver only through these calls, and every call on a running VMM goes
 * through the object's own ops (struct vmm is the first member of each
 * driver's object), so sandboxes of different drivers can live side by side.
 *
 * What the engine does for every driver, in shared code (jail.c): the VMM's
 * process runs in the sandbox's network namespace, in its own mount
 * namespace with a root that holds only the host's /usr (and /bin, /sbin,
 * /lib, /lib64, /dev/null, /dev/kvm under KVM, its own /proc), as its own
 * unprivileged user, in its own cgroups, with no_new_privs, and gets every
 * file and socket it needs already open at the fixed descriptors below. The
 * driver builds its argument vector, talks its control protocol and knows
 * its snapshot format.
 */
#pragma once

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct template_config;
struct ram_delta;

struct vmm_spec {
	const struct template_config *cfg;
	const char *accel;	  /* "kvm" or "tcg" */
	const char *cmdline;	  /* the kernel command line as booted (engine_spec_init) */
	const char *name;	  /* for the process name */
	const char *tag;	  /* the instance tag (engine.tag): -name emberfs-TAG-NAME */
	const char *mem_path;	  /* guest RAM file (see "Guest RAM is a file" below) */
	int ram_fd;		  /* >= 0: the sealed base to map privately instead (ram_base drivers); -1: none */
	const char *disk_path;	  /* NULL: none */
	const char *control_path; /* the VMM's control socket (a listening unix socket, FD_CONTROL) */
	const char *agent_path;	  /* the guest agent's (FD_AGENT) */
	const char *console_path;
	const char *log_path;  /* VMM's own stdout/stderr */
	int incoming_fd;       /* restore device state from this fd; -1 boots cold */
	int netns_fd;	       /* cfg->net: the network slot's namespace, where the VMM runs (its tap is there) */
	char *const *cgroups;  /* the instance's cgroup bases (engine.cgroups); NULL or empty: no limits */
	int cgroup_version;
	unsigned cgroup_ncpus;
	uid_t uid_base;	       /* the VMM runs as uid_base + a free index < VMM_UID_RANGE (gid alike); 0: as root */
	gid_t extra_gid;       /* and in this group too (/dev/kvm's); 0: none */
};
/*
 * The descriptors a VMM gets, opened for it by jail.c while still root (a
 * VMM opens nothing of ours by path: files go by /proc/self/fd/N, sockets
 * and the tap by number). -1 where the spec has none.
 */
enum { FD_INCOMING = 3, FD_MEM, FD_DISK, FD_CONSOLE, FD_CONTROL, FD_AGENT, FD_TAP, FD_KERNEL, FD_INITRD, FD_FIRST_FREE };

/*
 * Guest RAM is a file. A VMM booted cold, or restored from a sandbox's own
 * files (a wake, a fork's child, a rollback), maps mem_path shared: the
 * guest writes into the file, and a snapshot is that file as it stands plus
 * device state. A VMM restored from a template's snapshot, where the driver
 * declares ram_base, is given the snapshot memory as a sealed base
 * (spec.ram_fd, ram.h) and maps it privately: clones of one snapshot share
 * the pages none of them wrote; its snapshot writes the pages the guest did
 * write into mem_path (a clone of the same snapshot memory) first.
 */

struct vmm_ops;
/* The head of every driver's VMM object. */
struct vmm {
	const struct vmm_ops *ops;
	bool lazy_ram; /* its guest RAM is a lazy file of the snapshot store (vm_start) */
};

struct vmm_ops {
	const char *name; /* a template's "backend" */
	bool ram_base; /* restores can map a sealed base privately (spec.ram_fd) */
	/*
	 * What a snapshot this driver writes needs to be restored (part of a
	 * template's identity: a snapshot is used only by the same capability).
	 */
	const char *restore_capability;
	/* The binary it runs when no option names one. */
	const char *default_binary;
	/* Version string of the VMM binary (part of the identity); fails if the binary cannot run here. */
	int (*version)(const char *binary, char **ret);
	int (*spawn)(const char *binary, const struct vmm_spec *spec, struct vmm **ret);
	/* Control channel up; bounded; gives up early if *cancel turns true. */
	int (*connect)(struct vmm *v, unsigned timeout_ms, const atomic_bool *cancel);
	/*
	 * Optional. Once, on a VMM just spawned and connected: ready in one
	 * pass what its first run would fault in a page at a time, if its
	 * vCPUs have not run yet (the driver knows: QEMU's wait for an
	 * incoming state). A failure costs only speed.
	 */
	int (*prepare)(struct vmm *v);
	/*
	 * Starts loading the snapshot into a connected VMM: the one it was
	 * spawned for (spec.incoming_fd) when state_fd is -1, else the one at
	 * state_fd (a snapshot of the same template's VMMs: a spare taken for
	 * a fork's child), which the VMM is given.
	 */
	int (*restore)(struct vmm *v, int state_fd, unsigned timeout_ms);
	/*
	 * Optional (a ram_base driver's). Before the restore: gives the VMM's
	 * private mapping of its base the pages of delta (a snapshot's own
	 * pages, ram.h) read from mem_fd, the snapshot's memory file. -EXDEV if
	 * the VMM maps another base than the delta's; -EOPNOTSUPP without it.
	 */
	int (*load_delta)(struct vmm *v, const struct ram_delta *delta, int mem_fd);
	/* Run state as the VMM names it ("running", "paused", ...). */
	int (*query)(struct vmm *v, char *state, size_t len, unsigned timeout_ms);
	/* Stops and restarts the vCPUs; memory stays resident. */
	int (*pause)(struct vmm *v, unsigned timeout_ms);
	int (*resume)(struct vmm *v, unsigned timeout_ms);
	/* Waits until the guest's vCPUs run (after a restore). */
	int (*wait_running)(struct vmm *v, unsigned timeout_ms);
	/*
	 * Pauses and writes device state to state_path; afterwards mem_path
	 * (the file the VMM was given) holds the guest's RAM as it stands (a
	 * VMM on a private base writes the pages the guest changed into it).
	 * Complete when it returns, not synced (the vCPUs stay stopped until a
	 * resume: a caller that needs it on disk past a power loss syncs it,
	 * fsync_file, outside that stop where it can). delta (NULL: not
	 * wanted): for a VMM on a private base, its base and the pages written
	 * (ram.h); left empty (no runs, base 0) otherwise.
	 */
	int (*snapshot)(struct vmm *v, const char *state_path, const char *mem_path, unsigned timeout_ms,
			struct ram_delta *delta);
	pid_t (*pid)(struct vmm *v);
	/* False once the process has exited (not reaped yet, or reaped). */
	bool (*alive)(struct vmm *v);
	/*
	 * Waits for the process to exit (blocking); returns its exit code, 128 +
	 * the signal, or VMM_STATUS_UNKNOWN for an adopted VMM (not our child:
	 * its status went to whoever reaps it).
	 */
	int (*wait_exit)(struct vmm *v);
	/*
	 * A VMM an earlier run of the daemon started: pidfd is the process
	 * (checked against its start time by the caller), taken with cgdirs;
	 * control_path is the socket its spawn was given. Connect it before use.
	 */
	int (*adopt)(pid_t pid, int pidfd, const char *control_path, char **cgdirs, uid_t uid_base, struct vmm **ret);
	/* SIGKILL (idempotent). */
	void (*kill)(struct vmm *v);
	/* Kills it if it runs, reaps it, frees what it held. */
	void (*free)(struct vmm *v);
	/*
	 * Once the VMM has exited: its own account of why, in its words
	 * ("guest-reset", "guest-shutdown", "host-signal", ...), or -ENOENT.
	 */
	int (*shutdown_reason)(struct vmm *v, char *buf, size_t len);
};

/* The drivers compiled in (drivers.c lists them). */
extern const struct vmm_ops qemu_ops;
/*
 * A list of drivers is NULL-terminated; an engine uses the built-in one
 * unless its embedder gives its own (engine_options.drivers: the unit tests'
 * fake driver). Lookups take a list, NULL meaning the built-in one.
 */
const struct vmm_ops *const *vmm_drivers_builtin(void);
const struct vmm_ops *vmm_driver_in(const struct vmm_ops *const *list, const char *name);
/* A built-in driver by name; NULL if none is. */
const struct vmm_ops *vmm_driver(const char *name);
/* The names, quoted and ", "-separated (for errors), into buf (truncated to len). */
void vmm_driver_names_in(const struct vmm_ops *const *list, char *buf, size_t len);

/* Calls on a VMM go to its own driver. */
static inline int vmm_connect(struct vmm *v, unsigned timeout_ms, const atomic_bool *cancel)
{
	return v->ops->connect(v, timeout_ms, cancel);
}
/* 0 for a driver without it */
static inline int vmm_prepare(struct vmm *v)
{
	return v->ops->prepare ? v->ops->prepare(v) : 0;
}
static inline int vmm_restore(struct vmm *v, int state_fd, unsigned timeout_ms)
{
	return v->ops->restore(v, state_fd, timeout_ms);
}
static inline int vmm_load_delta(struct vmm *v, const struct ram_delta *delta, int mem_fd)
{
	return v->ops->load_delta ? v->ops->load_delta(v, delta, mem_fd) : -EOPNOTSUPP;
}
static inline int vmm_query(struct vmm *v, char *state, size_t len, unsigned timeout_ms)
{
	return v->ops->query(v, state, len, timeout_ms);
}
static inline int vmm_pause(struct vmm *v, unsigned timeout_ms)
{
	return v->ops->pause(v, timeout_ms);
}
static inline int vmm_resume(struct vmm *v, unsigned timeout_ms)
{
	return v->ops->resume(v, timeout_ms);
}
static inline int vmm_wait_running(struct vmm *v, unsigned timeout_ms)
{
	return v->ops->wait_running(v, timeout_ms);
}
static inline int vmm_snapshot(struct vmm *v, const char *state_path, const char *mem_path, unsigned timeout_ms,
			       struct ram_delta *delta)
{
	return v->ops->snapshot(v, state_path, mem_path, timeout_ms, delta);
}
static inline pid_t vmm_pid(struct vmm *v)
{
	return v->ops->pid(v);
}
static inline bool vmm_alive(struct vmm *v)
{
	return v->ops->alive(v);
}
static inline int vmm_wait_exit(struct vmm *v)
{
	return v->ops->wait_exit(v);
}
static inline void vmm_kill(struct vmm *v)
{
	v->ops->kill(v);
}
/* NULL: nothing */
static inline void vmm_free(struct vmm *v)
{
	if (v)
		v->ops->free(v);
}
static inline int vmm_shutdown_reason(struct vmm *v, char *buf, size_t len)
{
	return v->ops->shutdown_reason(v, buf, len);
}
