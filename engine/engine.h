/*
 * emberfs engine: templates, sandboxes, VMM drivers, storage and the agent
 * protocol. No FUSE in here: the fs layer maps file operations onto these calls.
 *
 * Objects are reference counted; every object has a unique, never reused
 * 64-bit id the fs layer uses for inode numbers. All functions return 0 (or a
 * count) on success and a negative errno on failure.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct engine;
struct template;
struct sandbox;

enum accel_mode { ACCEL_AUTO = 0, ACCEL_KVM, ACCEL_TCG };

/*
 * Seams for what embeds the engine (none in the shipped daemon): the
 * integration tests' daemon (tests/integration/holdd.c) sets create_phase to
 * hold a create at a named phase while the test acts (kills its VMM).
 * Called on the sandbox's thread, outside every lock; phases: spawn (the
 * VMM exists, QMP not connected), connected, loading (the snapshot load
 * started), loaded (the guest runs, the agent not connected), agent
 * (connected, before the attach), claimed (a warm slot, before its resume).
 * Operations (the operation lock held): checkpoint (ctl checkpoint's files
 * saved, not yet published), rollback (the old VMM ended, the new one not
 * spawned yet), wake (a hibernated one's wake, before its VMM is spawned).
 * cancel turns true when the sandbox is destroyed meanwhile.
 */
struct engine_hooks {
	void (*create_phase)(void *ctx, const char *state_dir, const char *sandbox, const char *phase, int vmm_pid,
			     const atomic_bool *cancel);
	void *ctx;
};

struct vmm_ops; /* engine/driver.h */

struct engine_options {
	const char *state_dir;	   /* persistent artifacts, records, sockets */
	const char *image_dir;	   /* default guest image (vmlinuz, initrd.cpio, rootfs.ext4, manifest.json) */
	const char *qemu_binary;   /* default QEMU_BINARY */
	enum accel_mode accel;	   /* auto: KVM only where it can run a normal guest */
	unsigned max_sandboxes;	   /* mkdir fails with ENOSPC beyond this */
	unsigned cold_slots;	   /* cold boots and bakes allowed at once (the one reserved place) */
	uint64_t store_size_mib;   /* size of the loop-mounted XFS store when needed */
	bool no_loop_store;	   /* never create a loop store; full copies are then reported */
	bool bake_default;	   /* bake the default template at start */
	unsigned pool_depth;	   /* with pool_pinned: the pinned depth of templates without a pool file */
	bool pool_pinned;	   /* --pool N; else (--pool auto, the default) the capacity controller decides */
	uint64_t pool_budget_mib;  /* memory for warm slots of all templates; 0: a quarter of host memory */
	unsigned pool_max_slots;   /* warm slots of all templates; 0: 64 */
	double pool_miss_target;   /* wanted chance that a create finds no warm slot; 0: 0.01 */
	unsigned pool_idle_decay_s; /* no create for this long: no slots (auto only); 0: 600 */
	unsigned pool_parallel;	   /* warm slots prepared at once across all templates (default 1) */
	unsigned spares;	   /* spare VMMs (spawned, waiting for the snapshot's state) per ready template */
	unsigned slot_max_age_s;   /* warm slots older than this are replaced; 0: never */
	bool warmup_exec;	   /* warm slots also run one exec ahead (first exec fast, ~15 MiB more each) */
	bool net;		   /* networking: templates may set "net"; the default template does */
	const char *net_range;	   /* host range for network slots (default 10.200.0.0/16) */
	unsigned net_pool;	   /* network slots kept ready */
	bool net_no_egress;	   /* sandboxes reach nothing beyond their host end */
	const char *dns;	   /* the guests' resolver's upstream "ADDR[:PORT]"; NULL: /etc/resolv.conf's */
	int64_t vmm_uid_base;	   /* VMMs run as users from here on, one each; 0: as root; -1: the default */
	unsigned console_max_kib;  /* a sandbox's console log is kept within this; 0: 1024 */
	int64_t store_reserve_mib; /* store space kept free for running guests; -1: 512 */
	unsigned cache_max_age_s;  /* build cache entries no template uses go after this long unused (0: at once) */
	unsigned max_checkpoints;  /* per sandbox (ctl checkpoint); 0: 16 */
	const char *store_url;	   /* --store: the snapshot store (objstore.h); NULL: none */
	uint64_t cache_mib;	   /* the chunk cache's limit (STATE/cache); 0: 4096 */
	bool no_prefetch;	   /* restores from the store do not prefetch the hot chunks */
	unsigned store_chunk_kib;  /* what a publish cuts files into; 0: objstore's default */
	const struct engine_hooks *hooks; /* NULL: none */
	/*
	 * The VMM drivers a template's "backend" may name, NULL-terminated;
	 * NULL: the ones built in (driver.h). The unit tests give the fake
	 * driver here (tests/unit/fakevmm); the daemon never sets it.
	 */
	const struct vmm_ops *const *drivers;
};
#define VMM_UID_RANGE 65536 /* uids per instance: one per live VMM */
#define VMM_UID_BASE_DEFAULT 1879048192u /* 0x70000000: above the ranges systemd hands out to containers */

/* Sandbox states; see docs/interface.md for their meaning. */
enum sandbox_state {
	SB_CREATING = 0,
	SB_READY,
	SB_FAILED,
	SB_DESTROYING,
	SB_PAUSED,	/* vCPUs stopped, memory resident (ctl pause) */
	SB_HIBERNATED,	/* memory and device state on disk, no VMM (ctl hibernate) */
	SB_STOPPED,	/* no VMM, the disk kept (ctl stop); start boots it again */
	_SB_STATE_MAX,
};

enum sandbox_event {
	SB_EV_CREATED = 0, /* the guest agent answered */
	SB_EV_FAILED,	   /* the create failed, or the VMM died */
	SB_EV_DESTROY,	   /* rmdir */
	SB_EV_PAUSE,	   /* ctl pause */
	SB_EV_RESUME,	   /* ctl resume of a paused one (or an access that needs the guest) */
	SB_EV_HIBERNATE,   /* ctl hibernate */
	SB_EV_WAKE,	   /* ctl resume or start of a hibernated one (or an access that needs the guest) */
	SB_EV_STOP,	   /* ctl stop */
	SB_EV_START,	   /* ctl start of a stopped one: a cold boot from its disk */
	SB_EV_ROLLBACK,	   /* ctl rollback C: a new VMM restores checkpoint C (checkpoint.c) */
	_SB_EV_MAX,
};

const char *sandbox_state_name(enum sandbox_state s);
/* The state machine as a pure function: the next state, or -EBUSY if the event is refused. */
int sandbox_state_next(enum sandbox_state s, enum sandbox_event ev);

enum template_state {
	TPL_NEW = 0,  /* defined, never baked */
	TPL_BAKING,
	TPL_READY,    /* snapshot present and matching the identity */
	TPL_FAILED,   /* last bake failed; creates boot cold */
	TPL_STALE,    /* config changed since the bake; creates boot cold until rebake */
};
const char *template_state_name(enum template_state s);

/* Template configuration, parsed and validated from JSON. */
#define TEMPLATE_DEFAULT_BACKEND "qemu" /* a config without "backend" */
struct template_config {
	char *kernel;
	char *initrd;
	char *rootfs;
	char *cmdline;
	unsigned vcpus;
	unsigned mem_mib;
	char *backend; /* a driver built in (driver.h); default TEMPLATE_DEFAULT_BACKEND */
	enum accel_mode accel;
	bool net;		 /* a NIC (virtio-net) on a network slot; see netpool/netpool.h */
	unsigned ready_tcp_port; /* also wait for a TCP connect to this guest port (needs net); 0: no */
	unsigned idle_timeout_s; /* hibernate a sandbox after this long without an exec; 0: never */
	unsigned timeout_s;	 /* a new sandbox's timeout (its `timeout` file); 0: none */
	int on_timeout;		 /* TIMEOUT_ACT_* (parse.h): what a sandbox's timeout does; DEFAULT: destroy */
	char *derived_from;	 /* set by ctl "template NEW": the snapshot came from a sandbox, not a boot */
	/* a root disk built from an OCI image (instead of rootfs), or by the template's Dockerfile */
	char *image;		 /* "oci:/PATH[:NAME]", "docker-archive:/PATH", "docker://REF"; NULL: none */
	unsigned disk_mib;	 /* the built disk's size; 0: the image plus room */
	char *context;		 /* a Dockerfile's COPY and ADD sources are under this host directory */
	char *start;		 /* started at bake, running in every sandbox (procs/start): a shell line or {"argv":[..]} */
	bool start_argv;	 /* start was given as an argv (rendered back as one) */
	unsigned ready_tcp;	 /* with start: the snapshot waits until this guest port accepts... */
	char *ready_cmd;	 /* ...or until this command exits 0 in the guest */
	char *warm;		 /* a shell command run at bake before the snapshot and in each warm slot before it is offered */
	char *egress;		 /* the sandboxes' default outbound policy, normalized (netpool/egress.h); NULL: allow all. Not in the identity */
};
/* Parse JSON text into *cfg (which must be zeroed); on error sets *ret_error. */
int template_config_parse(const char *json, size_t len, struct template_config *cfg, char **ret_error);
char *template_config_render(const struct template_config *cfg);
void template_config_clear(struct template_config *cfg);
int template_config_copy(const struct template_config *src, struct template_config *dst);

/*
 * The identity: a digest over everything that changes start-up. Inputs are
 * the file digests (hex), the config, the resolved accelerator, the VMM's
 * version string and the restore capability.
 */
struct identity_inputs {
	const char *kernel_digest;
	const char *initrd_digest;
	const char *rootfs_digest;
	const char *cmdline;
	unsigned vcpus;
	unsigned mem_mib;
	const char *backend;
	const char *accel;
	const char *vmm_version;
	const char *restore_capability;
	const char *derived; /* a template made from a sandbox: where its snapshot came from; NULL otherwise */
	/* built root disks and start commands; NULL (absent) otherwise, so other identities stay as they were */
	const char *image;   /* the config's image reference */
	const char *build;   /* what the last build made: an image's manifest digest, a Dockerfile's last step */
	const char *disk;    /* the built disk's size as configured */
	const char *start;   /* the start command and its readiness check */
	const char *warm;    /* the warm command */
};
void identity_digest(const struct identity_inputs *in, char out[65]);

/* Engine lifecycle. */
int engine_new(const struct engine_options *opts, struct engine **ret);
/* Destroys every sandbox, stops bakes, unmounts the store. */
void engine_free(struct engine *e);
const char *engine_accel_name(struct engine *e);
const char *engine_store_method(struct engine *e);

/* Callback for asynchronous completions: result 0 or negative errno. */
typedef void (*engine_done_fn)(void *arg, int result);

/*
 * Lifecycle events (MOUNT/events): fn gets one JSON object per event, as a
 * line without its newline, and the id of the object it concerns. It runs
 * with engine locks held, so it must only queue and wake.
 */
typedef void (*engine_event_fn)(void *arg, uint64_t object_id, const char *line);
void engine_set_event_fn(struct engine *e, engine_event_fn fn, void *arg);
/* Changes whenever the sandbox's state does (poll on status). */
uint64_t sandbox_status_seq(struct sandbox *s);

/* OpenMetrics text (MOUNT/metrics); malloc'd. */
char *engine_render_metrics(struct engine *e);
/* MOUNT/cache/status: the chunk cache and the store (JSON text, "store": null without --store); malloc'd. */
char *engine_render_cache_status(struct engine *e);

/* Templates. */
int engine_template_create(struct engine *e, const char *name, struct template **ret);
/* The same with a given config (JSON text) instead of the default one. */
int engine_template_create_config(struct engine *e, const char *name, const char *config, struct template **ret);
int engine_template_remove(struct engine *e, const char *name);
struct template *engine_template_get(struct engine *e, const char *name); /* ref'd or NULL */
struct template *engine_template_by_id(struct engine *e, uint64_t id);	  /* ref'd or NULL */
/* Names of all templates (or of a template's sandboxes); free with strv_free. */
char **engine_template_list(struct engine *e);
void strv_free(char **v);
void template_unref(struct template *t);
uint64_t template_id(const struct template *t);
const char *template_name(const struct template *t); /* fixed for the template's life */
/* Rendered files: malloc'd strings. */
char *template_render_status(struct template *t);
char *template_render_config(struct template *t);
char *template_render_identity(struct template *t);
int template_write_config(struct template *t, const char *data, size_t len);
/*
 * The template's create file (docs/interface.md, "Creating with settings"):
 * a JSON object {"name", "timeout", "metadata", "env", "egress"} makes
 * sandbox NAME with those settings in force from its reservation on. As
 * mkdir: returns once reserved (0, -EINVAL, -EEXIST, -ENOSPC, -ENOENT);
 * a refusal changes nothing and its reason is the status's create_error.
 */
int template_write_create(struct template *t, const char *data, size_t len);
/* A refusal decided outside the engine (a cluster's placement): the status's create_error (r 0 clears it). */
void template_note_create_error(struct template *t, const char *name, int r, const char *why);
/* templates/T/Dockerfile: its text ("" when none); written whole (empty removes it), at most this many bytes. */
#define TEMPLATE_DOCKERFILE_MAX (1024u * 1024u)
char *template_render_dockerfile(struct template *t);
int template_write_dockerfile(struct template *t, const char *data, size_t len);
/* templates/T/build.log: the last bake's log (-ENOENT before the first), and whether fd is still growing. */
int template_build_log_open(struct template *t);
bool template_build_log_live(struct template *t, int fd);
/* ctl: "bake" or "rebake". */
int template_ctl(struct template *t, const char *cmd, size_t len);

/*
 * The warm pool: "N\n" (0..256) pins the depth, "auto\n" leaves it to the
 * capacity controller; saved with the template. Reading says which is in force.
 */
char *template_render_pool(struct template *t);
/* templates/T/stats: hit rate, misses by reason, depth and why, demand (JSON). */
char *template_render_stats(struct template *t);
int template_pool_write(struct template *t, const char *data, size_t len);
/* Warm slots are listed by id; ids are unique engine ids, never reused. */
uint64_t *template_slot_ids(struct template *t, size_t *ret_n); /* free() */
bool template_has_slot(struct template *t, uint64_t slot_id);
struct template *engine_slot_template(struct engine *e, uint64_t slot_id); /* ref'd or NULL */
char *template_render_slot(struct template *t, uint64_t slot_id);	    /* NULL: gone */
/* Recycles a warm slot (rmdir slots/ID); -EBUSY while it is being prepared. */
int template_slot_drop(struct template *t, uint64_t slot_id);

/* Sandboxes. */
int engine_sandbox_create(struct engine *e, struct template *t, const char *name, struct sandbox **ret);
/* Destroy: kills the VMM, removes every file; 0, or -ENOENT. */
int engine_sandbox_destroy(struct engine *e, struct template *t, const char *name);
struct sandbox *template_sandbox_get(struct template *t, const char *name); /* ref'd or NULL */
struct sandbox *engine_sandbox_by_id(struct engine *e, uint64_t id);	    /* ref'd or NULL */
char **template_sandbox_list(struct template *t);
void sandbox_unref(struct sandbox *s);
uint64_t sandbox_id(const struct sandbox *s);
const char *sandbox_name(const struct sandbox *s);
char *sandbox_render_status(struct sandbox *s);
char *sandbox_render_timings(struct sandbox *s);
/*
 * The usage file (usage.c): CPU, memory, disk and network figures, the
 * host's fresh, the guest's sampled only while it runs (never waking it;
 * else the last sample and its age). NULL without memory.
 */
char *sandbox_render_usage(struct sandbox *s);
/*
 * ctl: "pause", "resume", "hibernate" (trailing newline allowed). Runs the
 * transition before returning: 0, -EINVAL (unknown verb), -EBUSY (refused
 * in this state; the reason lands in status "ctl_error"), or another errno
 * if the operation failed.
 */
int sandbox_ctl(struct sandbox *s, const char *cmd, size_t len);
/* Path of the guest serial log file. */
const char *sandbox_console_path(struct sandbox *s);
/*
 * egress (engine/egress.c; docs/interface.md, "Egress policy"): the
 * sandbox's outbound policy, normalized (its own, or its template's default
 * with a comment line saying so). A write replaces it whole: -EINVAL (the
 * reason on a comment line of the next read) changes nothing; 0 once the sandbox's
 * network slot enforces it (new connections). Present when the template has
 * "net" and the daemon runs with --net.
 */
char *sandbox_render_egress(struct sandbox *s);
int sandbox_write_egress(struct sandbox *s, const char *data, size_t len);
bool sandbox_has_egress(struct sandbox *s);

/*
 * Waiting: fn(arg, 0) once the sandbox is ready, fn(arg, -EIO) if it failed
 * or was destroyed. Called at once (from the caller's thread) if already
 * decided, else later from an engine thread. Returns a token for cancel.
 */
uint64_t sandbox_wait_async(struct sandbox *s, engine_done_fn fn, void *arg);
/* True if cancelled before the callback ran (then it never runs). */
bool sandbox_wait_cancel(struct sandbox *s, uint64_t token);

/* Exec through the agent, after waiting for readiness. */
struct exec_result {
	int exit_code; /* -1 if killed by a signal */
	int signal;
	bool truncated;
	bool timed_out; /* killed at its timeout_ms */
	uint8_t *out;
	size_t out_len;
	uint8_t *err;
	size_t err_len;
	double duration_ms;
	char *error; /* when the command did not run (done gets -errno): the guest's reason, or NULL */
};
void exec_result_clear(struct exec_result *r);
/*
 * cmd (len bytes): a shell line, or a JSON object with "sh" or "argv" and
 * optional env, cwd, user, timeout_ms (docs/interface.md, exec): what a
 * front end was given. done(arg, 0) with *res filled, or done(arg, -errno);
 * -EINVAL at once for a bad request. res must stay valid until done runs.
 */
int sandbox_exec_async(struct sandbox *s, const char *cmd, size_t len, struct exec_result *res, engine_done_fn done,
		       void *arg);

/*
 * A sandbox's settings (docs/interface.md, "Settings"): files written whole;
 * a bad value is -EINVAL and changes nothing. Rendered text is malloc'd.
 */
char *sandbox_render_timeout(struct sandbox *s);
int sandbox_write_timeout(struct sandbox *s, const char *data, size_t len);
char *sandbox_render_metadata(struct sandbox *s);
int sandbox_write_metadata(struct sandbox *s, const char *data, size_t len);
char *sandbox_render_env(struct sandbox *s);
int sandbox_write_env(struct sandbox *s, const char *data, size_t len);
/*
 * sandboxes-by/: the metadata keys sandboxes have, the values of one key,
 * the names of the sandboxes with key = value (strv_free each); and the
 * template of a sandbox by its name (malloc'd, NULL if none).
 */
char **engine_metadata_keys(struct engine *e);
char **engine_metadata_values(struct engine *e, const char *key);
char **engine_metadata_match(struct engine *e, const char *key, const char *value);
char *engine_sandbox_template_name(struct engine *e, const char *name);
/* A new object id (never reused, never one of the engine's objects): for what the fs layer names itself. */
uint64_t engine_new_id(struct engine *e);

/*
 * Checkpoints (checkpoint.c; docs/interface.md, "Checkpoints"): made by
 * ctl "checkpoint C", used by "rollback C" and "fork NEW from C". A
 * sandbox's checkpoints/ directory has an id of its own; each checkpoint is
 * an object with its own id, listed by name.
 */
struct checkpoint;
uint64_t sandbox_checkpoints_id(const struct sandbox *s);
struct sandbox *engine_checkpoints_dir_by_id(struct engine *e, uint64_t id); /* its sandbox, ref'd, or NULL */
char **sandbox_checkpoint_list(struct sandbox *s);				      /* strv_free */
struct checkpoint *sandbox_checkpoint_get(struct sandbox *s, const char *name);      /* ref'd or NULL */
struct checkpoint *engine_checkpoint_by_id(struct engine *e, uint64_t id);	      /* ref'd or NULL */
void checkpoint_unref(struct checkpoint *c);
uint64_t checkpoint_id(const struct checkpoint *c);
char *checkpoint_render_status(struct checkpoint *c);
/* rmdir checkpoints/C: frees it (waits for an operation in flight); 0 or -ENOENT. */
int sandbox_checkpoint_remove(struct sandbox *s, const char *name);

/* The guest's own files (live/). */
#include "guestfs.h"
/* Streaming processes (procs/). */
#include "procs.h"
