/* Engine internals shared between the engine sources; not part of the public API. */
#pragma once

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>

#include "common.h"
#include "engine.h"
#include "image.h"
#include "timeouts.h"
#include "capacity.h"
#include "exitcause.h"
#include "netpool.h"
#include "objstore.h"
#include "driver.h"
#include "idtable.h"
#include "usage.h"

#include "parse.h" /* _cleanup_json_ */

/* ---- timings ---- */
#define MAX_PHASES 16
struct phase {
	char name[16];
	double ms;
};
struct timings {
	struct phase p[MAX_PHASES];
	unsigned n;
	uint64_t mark; /* start of the phase being timed */
};
void timings_start(struct timings *t);
/* Closes the current phase under `name` and starts the next one. */
void timings_lap(struct timings *t, const char *name);
double timings_total(const struct timings *t);
json_object *timings_json(const struct timings *t);
/* The phases of a timings_json object (a record's), in order; the clock mark is now. */
void timings_from_json(struct timings *t, json_object *o);
/* A millisecond figure as JSON, printed with 3 decimals. */
json_object *ms_json(double ms);
char *timings_lines(const struct timings *t);

/* ---- storage: copy-on-write clones ---- */
enum clone_method { CLONE_REFLINK = 0, CLONE_COPY };
const char *clone_method_name(enum clone_method m);
/*
 * The files of one VM: in its directory (store/vms/ID, a bake's or a
 * snapshot's directory) its memory, disk, logs and hibernation state; in
 * its run directory (run/ID) its sockets. Malloc'd, NULL on ENOMEM.
 */
enum vm_file { VM_MEM, VM_DISK, VM_CONSOLE, VM_LOG, VM_HIBERNATE, VM_QMP, VM_AGENT };
char *vm_file(const char *dir, enum vm_file f);

struct store {
	char *root;	 /* directory artifacts live in */
	char *image;	 /* loop image file, if we mounted one */
	bool mounted;	 /* we mounted root from image and must unmount it */
	bool reflink;	 /* FICLONE works in root */
};
int store_open(const char *state_dir, uint64_t size_mib, bool no_loop, struct store *s, char **ret_error);
void store_close(struct store *s);
/* Clone src to dst (reflink if possible, else a full sparse copy); reports the method. */
int store_clone(const struct store *s, const char *src, const char *dst, enum clone_method *ret_method);
/*
 * The same into dst, an existing file, whose inode stays (a VMM may hold it
 * open): emptied, then src's contents. A failure leaves it empty or partly
 * written.
 */
int store_clone_into(const struct store *s, const char *src, const char *dst, enum clone_method *ret_method);

/* ---- host side of the agent protocol ---- */
struct agent_client;
/* Connects to a unix socket, retrying until timeout (the VMM may not have made it yet). */
int agent_connect(const char *path, unsigned timeout_ms, const atomic_bool *cancel, struct agent_client **ret);
/* A client on a connected stream (takes fd; tests and fuzzers use a socketpair). */
int agent_client_from_fd(int fd, struct agent_client **ret);
/*
 * Sends req (an "id" is added) and waits for the reply with that id. *ret_resp
 * (if given) is the reply, also when the request failed (its "error" says
 * why), or NULL when none came; the caller puts it either way.
 */
int agent_call(struct agent_client *c, json_object *req, unsigned timeout_ms, json_object **ret_resp);
/*
 * The same, calling then(arg) between sending and waiting (its error ends the
 * call): a warm slot's activation sends the attach to the paused guest, then
 * resumes it, so the request is already queued when the vCPUs start.
 */
int agent_call_then(struct agent_client *c, json_object *req, unsigned timeout_ms, int (*then)(void *arg),
		    void *arg, json_object **ret_resp);
/*
 * The general call: bin (bin_len bytes, at most AGENT_BIN_MAX) goes with the
 * request as its payload; a reply's payload is returned in *ret_data
 * (malloc'd, NULL if none) when ret_data is given.
 */
#define AGENT_BIN_MAX (1u << 20)
int agent_call_full(struct agent_client *c, json_object *req, const void *bin, size_t bin_len, unsigned timeout_ms,
		    int (*then)(void *arg), void *arg, json_object **ret_resp, uint8_t **ret_data, size_t *ret_len);
/*
 * A new connection's first request, where the guest may take it for the last
 * connection's and drop its answer with that one (a restore: the guest hears
 * of the old host going and the new one coming by control messages that are
 * not ordered with the data; engine/guest/framing.c port_service): built by
 * build(arg) and sent, and sent again, built anew (a fresh clock), when no
 * copy is answered within AGENT_RESEND_FIRST_MS, then twice that, up to
 * AGENT_RESEND_COPIES copies within timeout_ms. The first copy answered is
 * the reply; the request must be idempotent (an attach is: the guest takes
 * the copies in order, before anything sent after). then(then_arg) runs once,
 * after the first copy is sent. build returns a new object (NULL: -ENOMEM).
 */
#define AGENT_RESEND_FIRST_MS 2000
#define AGENT_RESEND_COPIES 4
int agent_call_resend(struct agent_client *c, json_object *(*build)(void *arg), void *arg, unsigned timeout_ms,
		      int (*then)(void *arg), void *then_arg, json_object **ret_resp);
/*
 * Asynchronous: cb runs once, from the reader thread, with the result (0 or
 * -errno; -ECONNRESET when the connection ends first) and, on success, the
 * reply and its payload, both owned by the caller of cb only during the call.
 * No timeout: the reply or the end of the connection ends it. If this returns
 * an error, cb never runs. cb must not block or call into this client
 * synchronously (it may start another asynchronous call).
 */
typedef void (*agent_async_fn)(void *arg, int result, json_object *resp, const uint8_t *data, size_t len);
int agent_call_async(struct agent_client *c, json_object *req, const void *bin, size_t bin_len, agent_async_fn cb,
		     void *arg);
/*
 * A random number naming this connection (at most 2^52): an attach carries
 * it, so the guest knows a new host from the same one attaching again even
 * when it saw no hangup (a restored snapshot, a fork).
 */
uint64_t agent_session(const struct agent_client *c);
/*
 * Lines the guest sends on its own ({"event": ...}, no "id"): fn(arg, tag,
 * the object) from the reader thread; it must not block nor call into this
 * connection. Replaces an earlier fn.
 */
typedef void (*agent_event_fn)(void *arg, uint64_t tag, json_object *ev);
void agent_set_event_fn(struct agent_client *c, agent_event_fn fn, void *arg, uint64_t tag);
/* Makes every pending and later call fail with -ECONNRESET; safe from any thread. */
void agent_shutdown(struct agent_client *c);
/* Shuts the connection down and drops the owner's reference. */
void agent_free(struct agent_client *c);
/* Calls made from another thread than the owner's hold a reference. */
struct agent_client *agent_ref(struct agent_client *c);
void agent_unref(struct agent_client *c);

/* ---- VMM drivers: driver.h ---- */
#define VMM_DRIVERS_MAX 4
/* A compiled driver on this host: the binary it runs and its version, or why it cannot run. */
struct engine_driver {
	const struct vmm_ops *ops;
	char *binary;
	char *version;
	int err; /* 0: usable */
};
/*
 * The usable driver of that name (a template's "backend"); NULL with -EINVAL
 * and why in *ret_error (if given) for one not built or not usable here.
 */
const struct engine_driver *engine_driver(struct engine *e, const char *name, char **ret_error);
/* The engine's driver of that name, usable here or not (a re-adoption needs only its ops); NULL if none. */
const struct vmm_ops *engine_driver_ops(struct engine *e, const char *name);
/*
 * template_config_parse with "backend" checked against a list of drivers
 * (NULL: the built-in ones): the engine parses with its own
 * (engine_options.drivers).
 */
int template_config_parse_drivers(const char *json, size_t len, const struct vmm_ops *const *drivers,
				  struct template_config *cfg, char **ret_error);
#define VMM_STATUS_UNKNOWN EXIT_STATUS_UNKNOWN
/*
 * Why a VMM that has exited (it must have: this reaps it) did, in one line
 * for a status "error" (malloc'd, NULL without memory): its exit status,
 * its own shutdown reason, and the last lines of the console at
 * console_path and of its log at log_path (exitcause.h). Reads at most
 * EXIT_TAIL_BYTES of each file.
 */
char *vmm_exit_cause(struct engine *e, struct vmm *v, const char *console_path, const char *log_path);
/*
 * For the thread that owns a VMM's waits, after a call into it or its guest
 * failed with err: if the VMM exited (given up to 500 ms to show it when err
 * is a broken connection), why, as vmm_exit_cause; NULL if it still runs.
 */
char *vmm_death_cause(struct engine *e, struct vmm *v, int err, const char *console_path, const char *log_path);

/* ---- engine objects ---- */
struct waiter {
	uint64_t token;
	engine_done_fn fn;
	void *arg;
	struct waiter *next;
};

/* A snapshot file as the bake left it: any write since changes its ctime. */
struct snap_file {
	bool known; /* recorded (bakes before this check have no record) */
	uint64_t size;
	int64_t ctime_ns;
	uint32_t crc32c;
};
/* A template's start command as the bake left it running in the snapshot (config "start"). */
struct start_info {
	uint64_t job;	/* the guest agent's handle; 0: none */
	int64_t pid;
	uint64_t start_unix_ms;
	char *cmd;
};

struct bake_info {
	char identity[65];
	char state_digest[65];
	uint64_t mem_size;
	struct snap_file mem, disk;
	struct timings timings;
	char *baked_at; /* ISO 8601 */
	struct start_info start;
	/*
	 * Installed from the store (snapstore.c): no memory file here, the
	 * memory's manifest, served lazily (objstore.h); NULL: a local snapshot.
	 */
	struct manifest *lazy_mem;
};

/* What a template's build made (build.c): its root disk and the config it runs with. */
struct build_result {
	char *disk;		 /* in the store; a clone source */
	struct image_config cfg; /* cfg.digest: the image's manifest, or the Dockerfile's last step */
	json_object *steps;	 /* a Dockerfile's: [{line, instruction, cached, ms}], or NULL */
	char dockerfile[SHA256_HEX_LEN + 1]; /* the Dockerfile's digest it was built from; "": none */
};
void build_result_clear(struct build_result *b);
/* bake.json's size limit (a snapshot from the store lists its chunks in it) */
#define BAKE_RECORD_MAX (4u << 20)
/* Records a snapshot file as it is now in files[name]: size, ctime, CRC-32C (bake.json). */
int snap_file_record(const char *path, json_object *files, const char *name);
/*
 * snapstore.c: a template's snapshot in the store. install: the snapshot of
 * identity from the store into newdir (state, disk.img, bake.json; -ENOENT:
 * the store has none). publish: the template's snapshot to the store, with
 * the hot list a trial restore read. lazy_name: a lazy memory file's name.
 */
int snapstore_install(struct engine *e, const char *identity, const char *newdir, bool want_disk, uint64_t mem_size,
		      struct timings *tm, char **why);
int snapstore_publish(struct template *t, const struct template_config *cfg, char **why);
char *snapstore_lazy_name(const char *state_digest, bool trial);
/*
 * The memory of manifest m as a sealed base (ram.h) built from this host's
 * cache: -EAGAIN while the cache lacks a chunk of it. fill: fetches what it
 * lacks.
 */
int snapstore_ram_base(struct engine *e, const struct manifest *m, int *ret_fd, char **why);
int snapstore_fill(struct engine *e, const struct manifest *m, char **why);
char *template_dockerfile_path(struct template *t);
bool template_has_dockerfile(struct template *t);
/* Whether cfg makes the template build a root disk first (an image, or a Dockerfile in its directory). */
bool template_builds(struct template *t, const struct template_config *cfg);
int template_build(struct template *t, const struct template_config *cfg, const struct build_run *run,
		   struct build_result *ret, char **ret_error);
int build_record_save(struct template *t, const struct build_result *b);
/* e->lock held: whether its VMs have a root disk; the config they run with (the build's disk as rootfs). */
bool template_has_disk(struct template *t);
int template_config_vm(struct template *t, struct template_config *dst);
/*
 * Whether a sandbox's memory, d (its last snapshot's delta, ram.h), is a
 * delta over the base of t's snapshot (the one its spares map) small
 * enough to be worth writing into a VMM on that base (architecture.md,
 * "Spares"); if so and ret_fd, a new reference to the base. -ENOENT if not.
 * e->lock not held.
 */
struct ram_delta;
int template_delta_base(struct template *t, const struct ram_delta *d, int *ret_fd);
/* The image's env, workdir and user as the defaults of every exec and process in the guest of ac. */
int template_agent_configure(struct agent_client *ac, const struct image_config *c);
int build_record_load(struct template *t, struct build_result *ret);
void build_record_drop(struct template *t);
/* The store's build caches (cache.c): an entry used now; removing what nobody uses; a bake's wait (e->lock held). */
void cache_touch(const char *path);
void cache_prune(struct engine *e);
void cache_wait(struct engine *e);
/* e->lock held: the Dockerfile is not the one the build in service was made from (added, changed, removed). */
bool template_dockerfile_moved(struct template *t);
/* A new, empty build log for a bake starting now (readers of the previous one keep theirs); -1 on failure. */
int build_log_create(struct template *t);
/*
 * A cold boot of cfg's kernel with disk as its root (boot.c), up to the
 * agent's first answer: files in dir (mem, console.log, vmm.log), sockets in
 * rundir, a network slot if cfg->net. The VMM is published in *slot (e->lock)
 * while it runs. On failure *ret_step names the step, nothing is left.
 */
/*
 * vm_start (vm.c): the one start sequence of a VMM, for every path that needs
 * a new one. Files: memory, console and log in dir, sockets in rundir (as
 * vm_file names them), disk as given (NULL: none). The memory file (and a
 * disk, a snapshot's state) are the caller's to prepare.
 */
enum vm_event {
	VM_EV_NET,	 /* a network slot claimed from the ready pool */
	VM_EV_NET_BUILT, /* one built on demand */
	VM_EV_SPAWNED,	 /* the process runs and is published */
	VM_EV_CONNECTED, /* its control channel answers */
	VM_EV_PAGES,	 /* a delta's pages given to the VMM (vm_launch.delta) */
	VM_EV_LOADING,	 /* a restore started */
	VM_EV_RESTORED,	 /* the restored guest runs */
};
struct vm_launch {
	const struct template_config *cfg;
	const char *name; /* for the process name */
	const char *dir, *rundir, *disk;
	int state_fd;	   /* device state to restore; -1 boots cold */
	/*
	 * A restore from a template's snapshot: the snapshot memory's sealed base
	 * (template_snapshot_clone's ram_fd) for the VMM to map privately. 0 (a
	 * launch that leaves it out) or -1: none, the VMM maps dir's memory file.
	 */
	int ram_fd;
	/*
	 * vm_load on a spare: the state to load instead of the one it was
	 * spawned for (a fork's child, a wake); -1 (or 0, left out): that one.
	 */
	int load_fd;
	/*
	 * A restore onto a private base (ram_fd, or the spare's) of a sandbox's
	 * own memory: its delta over that base (ram.h), whose pages vm_load
	 * gives the VMM from delta_fd (the memory file) before the state is
	 * loaded. NULL: none (the base's pages are the guest's RAM).
	 */
	const struct ram_delta *delta;
	int delta_fd;
	struct netslot **net; /* cfg->net: the slot to run in; claimed into it (under e->lock) if NULL */
	char *const *egress; /* a claimed slot's policy: *egress (under e->lock; a sandbox's own), else cfg->egress */
	const atomic_bool *cancel;
	const char *boot_step; /* a cold boot's agent step (default "boot") */
	/*
	 * Under e->lock: the VMM once spawned (ac NULL), then its agent
	 * connection (v NULL) are the caller's. vm_start kills the VMM, shuts
	 * the connection down, if *cancel turned true.
	 */
	void (*publish)(void *arg, struct vmm *v, struct agent_client *ac);
	void (*event)(void *arg, enum vm_event ev); /* optional; not under the lock */
	void *arg;
};
/*
 * Network slot, spawn, connect, for a state_fd the restore until the guest
 * runs, then the agent's connection (no call made on it yet). *ret_step says
 * where it failed; *ret_why may say why (a network slot that could not be had).
 */
int vm_start(struct engine *e, const struct vm_launch *l, const char **ret_step, char **ret_why);
/*
 * vm_start in two halves: vm_spawn up to a connected VMM (*ret, published),
 * waiting for its state if l->state_fd was given; vm_load from there (the
 * restore when `restore`, then the agent's connection, published). A spare
 * is a VMM between the two.
 */
int vm_spawn(struct engine *e, const struct vm_launch *l, struct vmm **ret, const char **ret_step, char **ret_why);
int vm_load(struct engine *e, const struct vm_launch *l, struct vmm *v, bool restore, const char **ret_step);
/*
 * The one teardown of what vm_start gave, in order: the agent connection,
 * the VMM (killed and reaped), its network slot back to the pool. Any may be
 * NULL (or point to NULL: nothing); each is set to NULL. Not under e->lock:
 * it waits for the VMM's end.
 */
void vm_release(struct engine *e, struct vmm **v, struct agent_client **ac, struct netslot **net);
/*
 * egress.c: the policy applied to a network slot that becomes a VMM's
 * (egress_apply_claimed: vm_start's claim, own as vm_launch.egress) or a
 * sandbox's (sandbox_egress_apply: a warm slot's activation, a re-adoption;
 * nothing to do when the slot has it already). sandbox_egress_clear: the
 * sandbox's last reference.
 */
int egress_apply_claimed(struct engine *e, struct netslot *ns, const struct template_config *cfg,
			 char *const *own, char **ret_why);
int sandbox_egress_apply(struct sandbox *s, char **ret_why);
void sandbox_egress_clear(struct sandbox *s);
/* A template's config changed: its sandboxes without a policy of their own get its default now. */
void egress_template_changed(struct template *t);
/* Gives *net back to the pool (vm_release), never while a policy is being applied to it. */
void egress_slot_release(struct engine *e, struct netslot **net);

struct booted {
	struct vmm *v;
	struct agent_client *ac;
	struct netslot *net;
};
int boot_cold(struct engine *e, const struct template_config *cfg, const char *name, const char *dir,
	      const char *rundir, const char *disk, const atomic_bool *cancel, struct vmm **slot, struct booted *ret,
	      const char **ret_step, char **ret_error);
void booted_stop(struct engine *e, struct booted *b, struct vmm **slot);
/*
 * A shell line run to its end in a guest (exec): its output into log_fd if
 * >= 0; 0 if it exited 0, else -EIO with the exit status in *ret_error.
 */
int guest_run(struct agent_client *ac, const char *sh, unsigned timeout_ms, int log_fd, char **ret_error);
/* What a guest wrote is on its disks (sync(2) in it); -errno. */
int guest_sync(struct agent_client *ac, unsigned timeout_ms);
/*
 * An attach that makes a restored guest someone: hostname, env (taken; NULL:
 * none), fresh entropy, machine_id (NULL: unchanged) and, with clock, the
 * host's time. NULL if out of memory or entropy. The caller adds what else
 * it attaches (processes to keep, the session).
 */
json_object *guest_attach_new(const char *hostname, json_object *env, const char *machine_id, bool clock);

/* guestfs.c's calls on an engine-owned agent connection (a build's guest), as root; -errno. */
int guestfs_ac_lstat(struct agent_client *ac, const char *path, struct stat *st);
int guestfs_ac_mknod(struct agent_client *ac, const char *path, mode_t mode, dev_t rdev); /* S_IFDIR: mkdir */
int guestfs_ac_symlink(struct agent_client *ac, const char *target, const char *path);
int guestfs_ac_link(struct agent_client *ac, const char *from, const char *to);
int guestfs_ac_unlink(struct agent_client *ac, const char *path);
int guestfs_ac_setattr(struct agent_client *ac, const char *path, const struct guest_setattr *sa);
/* A file made (or emptied) with mode and filled from src_fd to its end. */
int guestfs_ac_write_file(struct agent_client *ac, const char *path, mode_t mode, int src_fd);
/* The same from readfn(ctx, buf, len): bytes read, 0 at the end, or -errno. */
int guestfs_ac_write_from(struct agent_client *ac, const char *path, mode_t mode,
			  ssize_t (*readfn)(void *ctx, void *buf, size_t len), void *ctx);
/* At most max bytes of a file, NUL-terminated (malloc'd). */
int guestfs_ac_read_file(struct agent_client *ac, const char *path, size_t max, char **ret, size_t *ret_len);
/* A Dockerfile's build (buildsteps.c): each step cached by its digest. */
int dockerfile_build(struct template *t, const struct template_config *cfg, const char *dockerfile,
		     const struct build_run *run, struct build_result *ret, char **ret_error);

/*
 * A warm slot: a VMM restored from a template's snapshot ahead of any request
 * (its own clones of the snapshot's memory and disk), warmed up through its
 * guest agent and paused. A create claims one in mkdir and only resumes it
 * and attaches identity. See pool.c.
 */
enum slot_state { SLOT_PREPARING = 0, SLOT_WARM, SLOT_SPARE };
struct slot {
	uint64_t id;
	enum slot_state state;
	struct vmm *vmm;
	struct agent_client *agent; /* connected during the warm-up; the sandbox's once claimed */
	pid_t vmm_pid;
	char *dir;    /* store/vms/ID: mem, disk, console, log, record */
	char *rundir; /* state/run/ID: sockets */
	char identity[65];
	char state_digest[65];
	const char *clone_method;
	struct timings timings; /* how it was prepared */
	uint64_t warm_ns;	/* when it became claimable (warm or spare) */
	double spare_ms;	/* a promoted spare: what making the spare took (its timings restart) */
	struct netslot *net;	/* its network slot, if the template has "net" */
	struct slot *next;
};
/* Why a create was not served warm (templates/T/stats). */
enum miss_reason { MISS_EMPTY = 0, MISS_STALE, MISS_NO_SNAPSHOT, MISS_BUDGET, MISS_UNHEALTHY, _MISS_MAX };
const char *miss_reason_name(enum miss_reason r);

struct pool_stats {
	uint64_t prepared, prepare_failed;
	uint64_t served_warm, served_restore, served_cold;
	uint64_t misses; /* creates of a ready template that found no warm slot */
	uint64_t recycled_stale, recycled_dead, recycled_aged, recycled_excess, recycled_removed;
	uint64_t spares_spawned, spares_promoted; /* spares made; spares the filler made warm slots of */
	uint64_t served_spare;	 /* restores that claimed a spare (counted in served_restore too) */
	uint64_t forks_spare, wakes_spare; /* forks' children and wakes that ran on a spare */
};
const char *slot_state_name(enum slot_state s);
void slot_free(struct engine *e, struct slot *sl);
void slots_free_list(struct engine *e, struct slot *list);
bool slot_matches(const struct template *t, const struct slot *sl);
/* ---- records and re-adoption (record.c) ---- */
/* A warm slot's record (no sandbox name: never re-adopted). */
int record_write(const char *dir, const char *tpl, const char *name, pid_t pid, const char *rundir);
/* The start time of a process (/proc/PID/stat field 22), 0 if it is gone. */
unsigned long long pid_start_time(pid_t pid);
/*
 * Writes the sandbox's record (temporary file + rename) from its current
 * state; call it after every change that matters to a restart (VMM, state).
 * e->lock not held.
 */
int sandbox_record_save(struct sandbox *s);
/* Destroy: the directory is going; no record is written after this. */
void sandbox_record_drop(struct sandbox *s);
/*
 * Start-up, before the sweep: reads every record and keeps those a restart
 * re-adopts (ready and paused sandboxes whose VMM is the same process — pid
 * and start time —, hibernated, stopped and failed ones).
 */
void adopt_scan(struct engine *e);
/* Is this per-VM directory, run directory or pid kept for re-adoption? */
bool adopt_keeps_dir(const struct engine *e, const char *dir);
bool adopt_keeps_run(const struct engine *e, const char *name);
bool adopt_keeps_pid(const struct engine *e, pid_t pid);
/* The pids and network slots kept (for the cgroup and netpool sweeps); malloc'd. */
size_t adopt_pids(const struct engine *e, pid_t **ret);
size_t adopt_net_indexes(const struct engine *e, unsigned **ret);
/*
 * Once the templates are loaded: re-adopts what adopt_scan kept, in
 * parallel, each within a time budget; what cannot be re-adopted becomes a
 * failed sandbox with the reason, its VMM killed.
 */
void adopt_all(struct engine *e);
/* Forgets what adopt_scan kept (adopt_all does it when done; an engine failing to start before). */
void adopt_clear(struct engine *e);
/* Detaches slots that must not be served (stale, dead, aged, excess). e->lock held. */
struct slot *pool_take_unfit(struct template *t);
/*
 * Pops the oldest healthy slot matching the current snapshot, or NULL; the
 * reason there was none goes to *ret_miss. Also records the create's arrival
 * for the capacity controller. e->lock held.
 */
struct slot *slot_claim(struct template *t, struct slot **ret_dead, enum miss_reason *ret_miss);
/*
 * Pops the oldest healthy spare matching the current snapshot (a VMM spawned
 * on clones of it, waiting for its state), or NULL; unfit ones go to
 * *ret_dead. e->lock held.
 */
struct slot *spare_claim(struct template *t, struct slot **ret_dead);

/* A create that could not even try a slot (template not ready): counts the miss. e->lock held. */
void pool_note_create(struct template *t, bool claimed, enum miss_reason why);
/* The capacity controller: new targets for every template (about once a second). e->lock not held. */
void pool_plan(struct engine *e);
void pool_start(struct template *t);
void pool_stop(struct template *t);
void pool_wake_all(struct engine *e);
/*
 * Around an operation that brings a sandbox's VMM up outside a create (a
 * wake, a start, a rollback): fillers wait for it as for a create, so their
 * spawns do not take the CPUs its guest's first run needs. e->lock not held.
 */
void pool_hold(struct engine *e);
void pool_release(struct engine *e);
int template_pool_load(struct template *t);
json_object *pool_status_json(struct template *t);

/*
 * Clones the template's snapshot (checked first: state digest, memory size)
 * into mem_dst and disk_dst (disk_dst may be NULL), and opens its device state.
 */
/*
 * Checks the template's snapshot and clones its memory and disk to mem_dst
 * and disk_dst (NULL: none); *ret_state_fd reads its device state and
 * *ret_ram_fd is its memory's sealed base for the VMM to map (-1 where the
 * template's driver maps its own file). Both the caller's to close.
 */
int template_snapshot_clone(struct template *t, const char *mem_dst, const char *disk_dst,
			    enum clone_method *ret_method, int *ret_state_fd, int *ret_ram_fd, char **ret_why);

int template_clone_rootfs(struct template *t, const char *rootfs, const char *dst, enum clone_method *ret_method);
int template_install_snapshot(struct template *t, const char *newdir, struct timings *tm);

struct template {
	atomic_int refs;
	uint64_t id;
	char name[NAME_MAX_LEN + 1];
	struct engine *e;
	char *dir;	/* store/templates/NAME */
	char *create_error; /* why the last write of its create file was refused (e->lock); NULL: it succeeded */
	char *snapdir;	/* dir/snapshot */
	pthread_rwlock_t snap_lock; /* held for reading while a create clones the snapshot */
	atomic_bool snap_checked;   /* the snapshot's checksums were verified since the daemon started (or the bake) */
	/*
	 * The snapshot memory's sealed base (ram.h) that restores map privately,
	 * made at the first restore of a snapshot (ram_digest: its state's
	 * SHA-256); -1: none yet. ram_lock: its making and swapping.
	 */
	pthread_mutex_t ram_lock;
	int ram_fd;
	char ram_digest[65];
	/*
	 * A snapshot from the store (ram_lock): restores of it so far, and the
	 * background fetch of what its memory lacks here, started at its second
	 * restore (template.c, lazy_clone); joined by template_free.
	 */
	unsigned lazy_restores;
	char lazy_digest[65];
	pthread_t fill_thread;
	bool fill_started, fill_joinable;

	/* protected by e->lock */
	struct template_config cfg;
	char identity[65];
	enum template_state state;
	char *error;
	bool has_bake;
	struct bake_info bake;
	bool has_build;
	struct build_result build; /* the last build's (build.json) */
	/* --store: the last bake's exchange with it (snapstore.c); "": none yet */
	char store_state[16];	  /* "installed", "baking here", "publishing", "published", "failed" (the publish) */
	char *store_error;	  /* why the last publish failed; NULL: none */
	char *store_install_error; /* why the last bake could not install from the store; NULL: it did, or none */
	struct sandbox **sandboxes;
	size_t n_sandboxes;
	bool removed;
	struct slot *slots;	/* warm, claimable, oldest first */
	unsigned n_slots;
	struct slot *preparing; /* being prepared by the filler: listed, not claimable */
	struct slot *spares;	/* spawned VMMs waiting for the snapshot's state, oldest first */
	unsigned n_spares;
	uint32_t spare_mib;	/* PSS of the last spare made, MiB (0: not measured yet) */
	unsigned pool_target;	/* in force: the pin, or the controller's answer */
	bool pool_pinned;	/* a number in force (pool file or --pool N); else the controller's */
	unsigned pool_pin;
	struct capacity_history *demand; /* arrival times of creates */
	uint64_t last_demand_ms;	 /* monotonic: the last create, or when it became ready */
	uint32_t prep_ms[16];		 /* the last slot preparations (ms) */
	unsigned n_prep;
	uint32_t slot_mib;		 /* measured PSS of a warm slot; 0: not yet */
	struct capacity_output plan;	 /* the controller's last answer */
	uint64_t miss[_MISS_MAX];	 /* creates not served warm, by reason */
	uint64_t timeouts[TIMEOUT_ACT_HIBERNATE + 1]; /* sandboxes' timeouts applied, by action (settings.c) */
	struct pool_stats pool_stats;
	char *pool_error;	/* the last preparation failure */
	bool pool_stop;
	atomic_bool pool_cancel;
	bool pool_thread_started;
	pthread_t pool_thread;
	pthread_cond_t pool_cond;
	bool bake_running;
	char bake_phase[32];	/* while baking: build (pull, unpack, mkfs, step N/M), queue, boot, snapshot */
	bool bake_joinable;
	atomic_bool bake_cancel;
	struct vmm *bake_vmm;
	pthread_t bake_thread;
	pthread_cond_t cond;
};

#define SANDBOX_FS_DEVS 15

/*
 * What a user set on one sandbox (settings.c; docs/interface.md, "Settings"):
 * protected by e->lock, kept in its record, copied by a fork.
 */
struct sandbox_settings {
	uint64_t deadline_ms;	  /* realtime, unix ms; 0: no timeout */
	uint64_t timeout_s;	  /* as last set (0: none) */
	int on_timeout;		  /* TIMEOUT_ACT_* (parse.h); DEFAULT: the template's */
	json_object *metadata;	  /* an object of strings; NULL: none */
	char **env;		  /* "KEY=VALUE", NULL-terminated; NULL: none */
	char *egress;		  /* the outbound policy, normalized text; NULL: the template's */
};

struct sandbox {
	atomic_int refs;
	uint64_t id;
	char name[NAME_MAX_LEN + 1];
	struct engine *e;
	struct template *tpl; /* ref */
	char *dir;	/* store/sandboxes/TEMPLATE/NAME: disk, memory, logs, record */
	char *rundir;	/* state/run/ID: sockets */
	char *console_path;
	atomic_bool cancel;
	struct slot *slot; /* claimed in mkdir, consumed by the job */
	struct netslot *net; /* its network slot (from the warm slot, or claimed by the job) */

	/* protected by e->lock */
	enum sandbox_state state;
	const char *path; /* "restore" | "cold" | NULL before the job decides */
	char *path_reason;
	const char *miss_reason; /* not served warm: why (static) */
	char identity[65];
	char *error;
	struct timings timings;
	uint64_t created_realtime_ms;
	char machine_id[33]; /* its /etc/machine-id: the same over pause, hibernate and restarts */
	const char *clone_method;
	uint64_t slot_id;      /* the warm slot (or spare) it was activated from; 0: none */
	double slot_age_ms;    /* how long that slot had waited */
	bool slot_spare;       /* the slot was a spare (a restore on its VMM), not a warm slot */
	double slot_prepare_ms;
	pid_t vmm_pid;
	struct waiter *waiters;
	uint64_t next_token;
	struct vmm *vmm;
	struct agent_client *agent;
	bool thread_started;
	bool indexed; /* in e->sandboxes_by_id, and its processes in procs_by_id (sandbox_index) */
	pthread_t thread;
	pthread_cond_t cond;

	/* lifecycle operations (lifecycle.c) */
	pthread_mutex_t op_lock;   /* one at a time: ctl, a wake on access, destroy */
	struct vmm *vmm_retiring;  /* e->lock: ended on purpose (hibernate); its exit is no failure */
	bool vmm_starting;	   /* e->lock: s->vmm is a start's or a wake's, which reports its exit itself */
	bool vmm_exited;	   /* e->lock: the supervisor saw vmm_retiring (or a starting VMM) exit and handed it back */
	unsigned execs_running;	   /* e->lock: hibernate waits for none */
	uint64_t sleeping_since_ms; /* e->lock: realtime ms when paused or hibernated */
	char *ctl_error;	   /* e->lock: why the last ctl write was refused or failed */
	const char *last_op;	   /* e->lock */
	double last_op_ms;
	double hibernate_ms, wake_ms; /* the last ones */
	/*
	 * op_lock: while hibernated, its memory file as the base and the pages
	 * its last VMM wrote (a spare can wake it, ram.h); NULL: none known
	 * (its memory was mapped shared, or the daemon restarted since).
	 */
	struct ram_delta *hib_delta;
	uint64_t active_ns;	   /* e->lock: last time it was running and used (ready, an exec's end); idle runs from here */
	uint64_t idle_hibernations;
	uint64_t vmm_stopped_ns;   /* e->lock: since when the watchdog has seen its VMM stopped; 0: not */
	uint64_t wakes;
	/* a fork's child: its files are made by the parent's ctl write, then it restores them */
	char *fork_of;	  /* the parent's name; NULL if not a fork */
	bool fork_ready;  /* e->lock: the parent's part is done */
	struct proc **procs; /* e->lock: procs/ID (guest.c) */
	atomic_uint_fast64_t status_seq;
	size_t n_procs;
	int fork_result;  /* e->lock: and how it went */
	struct ram_delta *fork_delta; /* the parent's snapshot as its base and own pages (a spare can take it); NULL: none */
	/* checkpoints (checkpoint.c): its checkpoints/ directory's id, and the checkpoints by name */
	uint64_t ckdir_id;
	struct checkpoint **ckpts; /* e->lock */
	size_t n_ckpts;
	/*
	 * e->lock: the status's checkpoints_bytes for the set as of ckpts_gen
	 * (a checkpoint's blocks never move: it changes only with the set);
	 * ckpts_bytes_gen != ckpts_gen: not computed yet, -1: the store cannot say
	 */
	uint64_t ckpts_gen, ckpts_bytes_gen;
	int64_t ckpts_bytes;
	const char *op_running; /* e->lock: the ctl operation in flight (run_op), named in an EBUSY */

	/* its record (record.c) */
	pthread_mutex_t record_lock; /* one writer at a time, and none once destroy removed the directory */
	bool record_gone;
	unsigned adoptions; /* e->lock: daemon restarts it was re-adopted across */
	/*
	 * Re-adopted paused, its agent connection new and never answered: the
	 * resume pings until the guest answers before it attaches (op_lock).
	 */
	bool agent_unsettled;
	uint64_t console_dropped; /* e->lock: bytes of console output dropped to keep within the cap */
	struct sandbox_settings settings; /* e->lock */
	char *settings_error; /* e->lock: "FILE: why" the last refused settings write; NULL once one succeeded */
	char *egress_error; /* e->lock: why the last write of egress was refused (egress.c); NULL: it was not */
	struct sandbox_usage usage;	  /* e->lock: the usage file's last figures (usage.c) */
	/* the guest filesystems seen through it, dev + 1 each (guestfs.c: host inode numbers); lock-free */
	atomic_uint_fast64_t fs_devs[SANDBOX_FS_DEVS];
};

/* Latency histograms for the metrics file (e->lock). */
#define HIST_BUCKETS 14
struct hist {
	uint64_t b[HIST_BUCKETS]; /* not cumulative */
	uint64_t count;
	double sum_s;
};
enum { H_CREATE_WARM, H_CREATE_RESTORE, H_CREATE_COLD, H_CREATE_FORK, H_FORK, H_HIBERNATE, H_WAKE, H_CHECKPOINT, H_ROLLBACK, H_MAX };
void hist_add(struct hist *h, double ms); /* e->lock held */

struct engine {
	struct engine_options opts;
	/* objects by id (what FUSE inodes name): registered templates, sandboxes and their processes */
	struct idtable templates_by_id, sandboxes_by_id, procs_by_id;
	struct idtable ckdirs_by_id, ckpts_by_id; /* sandboxes by their checkpoints/ id; checkpoints (checkpoint.c) */
	char *state_dir;
	char *image_dir;
	struct engine_driver drivers[VMM_DRIVERS_MAX]; /* the compiled ones, as this host can run them */
	char *tsc_khz; /* host TSC frequency, for TCG guests; NULL if unknown */
	const char *accel;
	struct store store;
	struct netpool *net; /* NULL unless --net */
	struct objstore *objstore; /* NULL unless --store: the snapshot store and this host's chunk cache */
	char *default_config; /* JSON text for new templates */

	pthread_mutex_t lock;
	atomic_uint_fast64_t next_id;
	struct template **templates; /* protected by lock */
	size_t n_templates;
	unsigned n_sandboxes; /* protected by lock */
	bool shutting_down;

	pthread_mutex_t base_lock; /* serializes making the store's rootfs copies */
	bool cache_pruning;	   /* cache.c: a prune runs (e->lock); bakes wait for it */
	pthread_cond_t cache_cond;
	pthread_mutex_t digest_lock;
	struct digest_entry *digests; /* protected by digest_lock */

	/* The reserved place for cold work (cold boots and bakes). */
	pthread_mutex_t cold_lock;
	pthread_cond_t cold_cond;
	unsigned cold_busy; /* protected by cold_lock */

	unsigned slots_preparing; /* across templates, protected by lock; at most opts.pool_parallel */
	uint64_t last_settled_ns; /* when a create (or a pool_hold) last ended (protected by lock) */
	unsigned vmm_ops_in_flight; /* wakes, starts, rollbacks bringing a VMM up (pool_hold; protected by lock) */
	struct hist hist[H_MAX];  /* protected by lock */
	pthread_t deadliner;	  /* sandbox timeouts (settings.c) */
	pthread_cond_t deadline_cond;
	bool deadline_started, deadline_stop, deadline_kicked; /* protected by lock */
	pthread_t idler;	  /* idle timeouts (lifecycle.c) */
	pthread_cond_t idler_cond;
	bool idler_started, idler_stop;

	atomic_int execs; /* exec threads in flight; engine_free waits for them */
	char tag[5];		  /* the instance tag: 4 hex digits of sha256(state_dir), in every host name */
	char *cgroups[3];	  /* per-VMM groups go under these (cgroup.c); NULL-terminated */
	int cgroup_version;
	unsigned cgroup_ncpus;	  /* the CPUs the daemon may use, for the VMMs' CPU figures */
	char *cgroup_daemon;	  /* the daemon's own group (v2, when it had to leave its own), NULL if none */
	uid_t vmm_uid_base;	  /* resolved --vmm-uid-base (0: VMMs run as root) */
	gid_t vmm_extra_gid;	  /* /dev/kvm's group, under KVM */
	uint64_t pool_budget_mib; /* resolved from the options (host memory) */
	unsigned pool_max_slots;
	uint64_t last_plan_ns;	  /* the idler runs the capacity controller about once a second */
	struct adoptee *adoptees; /* start-up only: what an earlier run left to re-adopt (record.c) */
	size_t n_adoptees;
	engine_event_fn event_fn; /* set before the mount serves */
	void *event_arg;
	guestfs_change_fn guestfs_change_fn; /* set before the mount serves (guestfs.c) */
	void *guestfs_change_ctx;
};

struct digest_entry {
	char *path;
	dev_t dev;
	ino_t ino;
	off_t size;
	int64_t mtime_ns;
	char hex[65];
	struct digest_entry *next;
};

/*
 * Fills spec's accelerator and kernel command line for cfg. The command line
 * is the config's plus what this host needs (under TCG, the TSC frequency:
 * microvm gives the guest nothing to calibrate against, and a guest that
 * guesses hangs in calibrate_delay). Free *owned after the spawn.
 */
/*
 * qemu.c: the length of a QEMU migration stream's header and configuration
 * section in b (n bytes, a section must follow it); -EPROTO if it is not one
 * or holds a field the driver does not know.
 */
int qemu_stream_head_len(const uint8_t *b, size_t n, size_t *ret);
int engine_spec_init(struct engine *e, const struct template_config *cfg, struct vmm_spec *spec, char **owned);
/* -ENOSPC (with the figures in *ret_why) if a new VM of mem_mib would leave the store below its reserve. */
int engine_store_admit(struct engine *e, unsigned mem_mib, char **ret_why);

/* engine_sandbox_create, or (fork_src set) the reservation of a fork's child, which then waits for fork_ready. */
/* init: settings it starts with instead of its template's defaults (moved out on success), or NULL. */
int sandbox_create_internal(struct engine *e, struct template *t, const char *name, struct sandbox *fork_src,
			    struct sandbox_settings *init, struct sandbox **ret);
/* Identity attach (hostname, env, fresh entropy, clock); then(arg) runs once it is sent. */
/*
 * e->lock held: a sandbox joins the id tables with its processes as it
 * joins its template's list, and leaves them as it leaves it; -ENOMEM
 * leaves it out of all.
 */
int sandbox_index(struct sandbox *s);
void sandbox_unindex(struct sandbox *s);
/* Its processes' part of that (guest.c). */
int sandbox_procs_index(struct sandbox *s);
void sandbox_procs_unindex(struct sandbox *s);
/* vm_start's publish and events for a sandbox's own VMM (its start and wake; a create adds its phases). */
void sandbox_publish(void *arg, struct vmm *v, struct agent_client *ac);
void sandbox_vm_event(void *arg, enum vm_event ev);
/* A line on the sandbox's console saying how its guest came to run (a restored guest prints nothing itself). */
void sandbox_console_note(struct sandbox *s, const char *how);
int sandbox_attach(struct sandbox *s, unsigned timeout_ms, int (*then)(void *arg), void *arg);
/* After a cold boot of a built root disk: the build's env, workdir and user (a restored guest has them). */
int sandbox_configure_image(struct sandbox *s);
/* A new machine id (32 lowercase hex digits): -EIO. */
int machine_id_new(char out[static 33]);
/*
 * Pings on a connection new to a running guest until one is answered (again
 * every 100 ms: the guest may take the first requests for the previous
 * connection's and drop their answers), until deadline (now_ns) or cancel.
 * Returns the number of pings sent, or -errno.
 */
int agent_settle(struct agent_client *ac, uint64_t deadline, const atomic_bool *cancel);
/* An attach with no identity, only the processes' jobs (a re-adopted running guest). */
int sandbox_reattach(struct sandbox *s, unsigned timeout_ms);
/*
 * Lifecycle operations' parts (lifecycle.c), for the operations kept in a
 * file of their own (checkpoint.c); s->op_lock held.
 */
void set_ctl_error(struct sandbox *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Moves to the state ev leads to, if it still does (saves the record); 0 or -EBUSY. */
int sandbox_transition(struct sandbox *s, enum sandbox_event ev);
/* A new VM of mem_mib for operation what: -ENOSPC (the figures in ctl_error) if the store has no room. */
int sandbox_admit_vm(struct sandbox *s, unsigned mem_mib, const char *what);
/* Ends the VMM on purpose (the supervisor hands it back) and drops the agent connection. */
int sandbox_retire_vmm(struct sandbox *s);
/*
 * A VMM spawned on the sandbox's own files, its memory file mapped shared: restores state_fd (a
 * rollback) or boots (-1), then the attach. What its memory was known to be (hib_delta) is dropped.
 */
int sandbox_start_own_vmm(struct sandbox *s, int state_fd, const char **step);
/*
 * The end of a fork's parent part (fork NEW, fork NEW from C): the child's
 * create thread is told how it went (r), and on failure the child is
 * destroyed; drops the caller's reference to the child. Returns r.
 */
int sandbox_fork_handoff(struct sandbox *child, int r);
/* The test seam (engine_hooks.create_phase) for a phase of an operation. */
void sandbox_phase(struct sandbox *s, const char *phase);

/*
 * Checkpoints (checkpoint.c; docs/interface.md, "Checkpoints"). The
 * operations run from run_op with s->op_lock held and the state checked.
 */
int op_checkpoint(struct sandbox *s, const char *name);
int op_rollback(struct sandbox *s, const char *name);
int op_fork_from(struct sandbox *s, const char *child, const char *ckpt);
/* Its checkpoints from its directory (a re-adopted sandbox, not registered yet); drops half-made ones. */
void sandbox_checkpoints_load(struct sandbox *s);
/* e->lock held: the id tables (sandbox_index's part). */
int sandbox_checkpoints_index(struct sandbox *s);
void sandbox_checkpoints_unindex(struct sandbox *s);
/* Drops its references to its checkpoint objects (sandbox_unref; the files go with its directory). */
void sandbox_checkpoints_free(struct sandbox *s);
/* The status's "checkpoints" and "checkpoints_bytes" (outside e->lock). */
void sandbox_checkpoints_status(struct sandbox *s, json_object *o);
/*
 * The processes as a checkpoint holds them (the record's form plus each
 * stream's unread output); and, at a rollback, every current process
 * replaced by those (their handles answer EIO), to be reattached by the
 * next attach.
 */
json_object *sandbox_procs_checkpoint(struct sandbox *s);
void sandbox_procs_replace(struct sandbox *s, json_object *arr);

/* Lifecycle (lifecycle.c): the VMM supervisor loop, and making sure a guest runs for an access. */
void sandbox_supervise(struct sandbox *s);
/* Resumes or wakes the sandbox if it sleeps and counts an exec in; 0 or -EIO. */
int sandbox_exec_enter(struct sandbox *s);
void sandbox_exec_leave(struct sandbox *s);
void engine_idler_start(struct engine *e);
void engine_idler_stop(struct engine *e);

/* Events: every sandbox and template state change goes through these (e->lock held). */
void sandbox_set_state(struct sandbox *s, enum sandbox_state st);
/*
 * The one way a sandbox fails: the first reason is kept (status "error"),
 * the state turns failed if it can, every waiter is answered EIO, its
 * processes settle, the record is saved and the reason logged once.
 */
void sandbox_fail(struct sandbox *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void template_set_state(struct template *t, enum template_state st);
void engine_emit(struct engine *e, uint64_t id, json_object *o); /* takes o; adds "time" */

/* VMM cgroups (cgroup.c). */
/* Finds or makes the instance's groups and sweeps an earlier run's, but the groups of the pids in keep. */
void cgroups_init(struct engine *e, const char *tag, const pid_t *keep, size_t n_keep);
void cgroups_fini(struct engine *e);
/*
 * Makes pid's own groups under bases, with its limits (its CPU figures for
 * a host of ncpus), and moves it in; *ret_dirs for cgroup_remove.
 */
int cgroup_place(char *const *bases, int version, pid_t pid, unsigned vcpus, unsigned mem_mib, unsigned ncpus,
		 char ***ret_dirs);
/*
 * CPU figures (pure): a weight (v1 cpu.shares, v2 cpu.weight) and a quota
 * per period (0: none). All VMMs together: half the default weight, no
 * quota. One VMM: the default weight, whatever its vCPUs; vcpus + 1
 * cores, but at most the host's ncpus less half a core (a quarter of a 1-CPU
 * host). The
 * daemon's own group (v2, when it needs one): the default weight.
 */
struct cg_cpu {
	unsigned long weight;
	unsigned long quota_us;
	unsigned long period_us;
};
struct cg_cpu cgroup_cpu_all_vmms(int version);
struct cg_cpu cgroup_cpu_vmm(int version, unsigned vcpus, unsigned ncpus);
struct cg_cpu cgroup_cpu_daemon(int version);
void cgroup_remove(char **dirs);
/* The existing groups of pid under bases (a re-adopted VMM's), for cgroup_remove; NULL if none. */
char **cgroup_dirs_of(char *const *bases, pid_t pid);

/* The process state letter from /proc/PID/stat ('R', 'S', 'T', 'Z', ...), or 0. */
char proc_state(pid_t pid);

/* The usage file's last guest sample in the record (usage.c): e->lock held; NULL if none. */
json_object *sandbox_usage_record_json(struct sandbox *s);
void sandbox_usage_from_record(struct sandbox *s, json_object *o);
/* s->op_lock held: a sample of the guest's figures if it is ready (a hibernate's, as it starts); 0 or -errno. */
int sandbox_usage_sample(struct sandbox *s);

/* Shared helpers. */
int engine_file_digest(struct engine *e, const char *path, char out[65]);
int template_new(struct engine *e, const char *name, const char *config, bool persist, struct template **ret);
void template_free(struct template *t);
char *iso8601_now(void);
int engine_resolve_accel(enum accel_mode m, const char **ret);
void template_start_bake(struct template *t); /* e->lock held; the previous bake reaped */
void template_reap_bake(struct template *t);
int template_load_bake(struct template *t);
int cold_acquire(struct engine *e, const atomic_bool *cancel);
void cold_release(struct engine *e);
void cold_wake(struct engine *e);

/* ---- a sandbox's settings (settings.c) ---- */
int settings_init(struct sandbox *s, struct template *t, const struct sandbox *fork_src,
		  struct sandbox_settings *init); /* e->lock held */
void settings_clear(struct sandbox_settings *st);
json_object *settings_json(const struct sandbox *s); /* e->lock held */
void settings_from_json(struct sandbox *s, json_object *o);
void settings_kick(struct engine *e); /* e->lock held */
int settings_env_apply(struct sandbox *s, json_object *req);
/* A settings write to file was refused for why (status "settings_error"), or succeeded (why NULL). */
void settings_refused(struct sandbox *s, const char *file, const char *why);
void engine_deadlines_start(struct engine *e);
void engine_deadlines_stop(struct engine *e);
/* engine_sandbox_destroy, with why in its event ("reason"); NULL: a user's rmdir */
int sandbox_destroy_why(struct engine *e, struct template *t, const char *name, const char *why);
