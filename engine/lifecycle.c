/*
 * Sandbox lifecycle after the create: pause, resume, hibernate and wake,
 * through the sandbox's ctl file or on demand (an exec into a sleeping
 * sandbox wakes it first).
 *
 * One operation at a time per sandbox (s->op_lock; destroy takes it too,
 * after killing the VMM so a running operation ends fast). States change at
 * the end of an operation, through the pure sandbox_state_next.
 *
 * Hibernate writes the device state next to the guest RAM file (which the
 * VMM maps shared, so it is already complete on disk), then ends the VMM on
 * purpose: the supervisor (sandbox_supervise) sees vmm_retiring and does not
 * fail the sandbox. Wake is a restore from the sandbox's own files, in its
 * own network slot (kept while it sleeps), followed by an identity attach
 * that sets the clock.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "guest.h"
#include "internal.h"
#include "ram.h"

#define IDLE_PERIOD_MS 250
#define WATCHDOG_MS 2000 /* a VMM stopped this long is killed */
#define HIBERNATE_WAIT_MS 1000 /* for accesses in flight to end */

/* ---- why a VMM ended ---- */

/* The last max bytes of a regular file (malloc'd; NULL if unreadable) and whether that is all of it. */
static char *read_tail(const char *path, size_t max, size_t *ret_len, bool *ret_whole)
{
	_cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY) : -1;
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	off_t from;
	ssize_t n;

	*ret_len = 0;
	*ret_whole = true;
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || !(buf = malloc(max)))
		return NULL;
	from = st.st_size > (off_t)max ? st.st_size - (off_t)max : 0;
	if ((n = pread(fd, buf, max, from)) < 0)
		return NULL;
	*ret_len = (size_t)n;
	*ret_whole = from == 0;
	return TAKE_PTR(buf);
}

char *vmm_exit_cause(struct engine *e, struct vmm *v, const char *console_path, const char *log_path)
{
	struct exit_facts f = { .status = vmm_wait_exit(v) };
	_cleanup_free_ char *con = read_tail(console_path, EXIT_TAIL_BYTES, &f.console_len, &f.console_whole);
	_cleanup_free_ char *log = read_tail(log_path, EXIT_TAIL_BYTES, &f.vmm_log_len, &f.vmm_log_whole);
	char why[32];

	if (f.status < 0)
		f.status = EXIT_STATUS_UNKNOWN;
	if (v->ops->shutdown_reason && vmm_shutdown_reason(v, why, sizeof(why)) == 0)
		f.shutdown = why;
	f.console = con;
	f.vmm_log = log;
	if (v->lazy_ram && f.status == 128 + SIGBUS && e->objstore) {
		/* a page of its memory the store could not give (the lazy file answered EIO) */
		_cleanup_free_ char *cause = exit_cause_describe(&f);
		struct objstore_stats st;
		char *s;

		objstore_get_stats(e->objstore, &st);
		if (asprintf(&s, "%s; its memory could not be read from the store (last store error: %s)",
			     cause ? cause : "VMM exited (SIGBUS)", st.last_error[0] ? st.last_error : "none") < 0)
			return NULL;
		return s;
	}
	return exit_cause_describe(&f);
}

char *vmm_death_cause(struct engine *e, struct vmm *v, int err, const char *console_path, const char *log_path)
{
	/* a connection that broke may be the VMM dying: its exit shows a moment later */
	for (int i = 0; i < 100 && vmm_alive(v) &&
			(err == -ECONNRESET || err == -EPIPE || err == -EPROTO || err == -ECHILD); i++)
		poll(NULL, 0, 5);
	return vmm_alive(v) ? NULL : vmm_exit_cause(e, v, console_path, log_path);
}

/* The same for a sandbox's VMM, from its own console and log. */
static char *sandbox_exit_cause(struct sandbox *s, struct vmm *v)
{
	_cleanup_free_ char *log = vm_file(s->dir, VM_LOG);

	return vmm_exit_cause(s->e, v, s->console_path, log);
}

/* ---- the supervisor ---- */

void sandbox_supervise(struct sandbox *s)
{
	struct engine *e = s->e;
	struct vmm *v = NULL;
	bool failed = false;

	pthread_mutex_lock(&e->lock);
	for (;;) {
		while (!s->vmm && !atomic_load(&s->cancel))
			pthread_cond_wait(&s->cond, &e->lock); /* hibernated: until a wake spawns one */
		if (!s->vmm)
			break;
		v = s->vmm;
		pthread_mutex_unlock(&e->lock);
		vmm_wait_exit(v);
		pthread_mutex_lock(&e->lock);
		if (atomic_load(&s->cancel))
			break;
		if (s->vmm_retiring == v || s->vmm_starting) {
			/* ended on purpose, or during the start or wake that spawned it: the operation takes it away */
			s->vmm_retiring = NULL;
			s->vmm_exited = true;
			pthread_cond_broadcast(&s->cond);
			while (s->vmm == v && !atomic_load(&s->cancel))
				pthread_cond_wait(&s->cond, &e->lock);
			continue;
		}
		failed = true;
		break;
	}
	pthread_mutex_unlock(&e->lock);
	if (failed) {
		/* v stays until destroy, which joins this thread first; the VMM exiting on its own fails the sandbox */
		_cleanup_free_ char *cause = sandbox_exit_cause(s, v);

		sandbox_fail(s, "%s", cause ? cause : "its VMM exited");
	}
}

/* ---- operations (s->op_lock held) ---- */

void set_ctl_error(struct sandbox *s, const char *fmt, ...)
{
	va_list ap;
	char *m = NULL;

	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	va_end(ap);
	pthread_mutex_lock(&s->e->lock);
	free(s->ctl_error);
	s->ctl_error = m;
	pthread_mutex_unlock(&s->e->lock);
}

int sandbox_transition(struct sandbox *s, enum sandbox_event ev)
{
	int next;

	pthread_mutex_lock(&s->e->lock);
	next = sandbox_state_next(s->state, ev);
	if (next >= 0) {
		sandbox_set_state(s, (enum sandbox_state)next);
		s->sleeping_since_ms = next == SB_PAUSED || next == SB_HIBERNATED ? realtime_ms() : 0;
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->e->lock);
	if (next >= 0) {
		sandbox_procs_settle(s);
		sandbox_record_save(s);
	}
	return next < 0 ? next : 0;
}

static int op_pause(struct sandbox *s)
{
	int r = vmm_pause(s->vmm, QMP_TIMEOUT_MS);

	return r < 0 ? r : sandbox_transition(s, SB_EV_PAUSE);
}

static int do_resume(void *arg)
{
	struct sandbox *s = arg;

	return vmm_resume(s->vmm, QMP_TIMEOUT_MS);
}

/*
 * The attach is queued, then the vCPUs start; its answer sets the clock. A
 * sandbox re-adopted paused has a connection the guest has not seen yet: it
 * runs first and answers a ping (agent_settle), then the attach is sent.
 */
static int op_resume(struct sandbox *s)
{
	int r;

	if (s->agent_unsettled) {
		r = do_resume(s);
		if (r == 0)
			r = agent_settle(s->agent, now_ns() + (uint64_t)AGENT_RESTORE_TIMEOUT_MS * 1000000, &s->cancel);
		if (r > 1)
			log_info("sandbox %s: its agent answered ping %d after the resume", s->name, r);
		if (r > 0)
			r = sandbox_attach(s, AGENT_RESTORE_TIMEOUT_MS, NULL, NULL);
		if (r == 0)
			s->agent_unsettled = false;
	} else {
		r = sandbox_attach(s, AGENT_RESTORE_TIMEOUT_MS, do_resume, s);
	}
	return r < 0 ? r : sandbox_transition(s, SB_EV_RESUME);
}

int sandbox_admit_vm(struct sandbox *s, unsigned mem_mib, const char *what)
{
	_cleanup_free_ char *why = NULL;
	int r = engine_store_admit(s->e, mem_mib, &why);

	if (r < 0)
		set_ctl_error(s, "%s: %s", what, why ? why : "the store is full");
	return r;
}

int sandbox_retire_vmm(struct sandbox *s)
{
	struct engine *e = s->e;
	struct agent_client *ac;
	struct vmm *v;

	pthread_mutex_lock(&e->lock);
	v = s->vmm;
	if (!s->vmm_exited) { /* else the supervisor handed it back already (it died during its start) */
		s->vmm_retiring = v;
		vmm_kill(v);
		while (!s->vmm_exited && !atomic_load(&s->cancel))
			pthread_cond_wait(&s->cond, &e->lock);
	}
	if (atomic_load(&s->cancel)) {
		pthread_mutex_unlock(&e->lock);
		return -ECANCELED; /* destroy frees the VMM */
	}
	s->vmm = NULL;
	s->vmm_pid = 0;
	s->vmm_exited = false;
	s->agent_unsettled = false; /* the next VMM's connection is a new one */
	ac = TAKE_PTR(s->agent);
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&e->lock);
	vm_release(e, &v, &ac, NULL); /* the VMM reaped by the supervisor already; the network slot stays the sandbox's */
	sandbox_record_save(s);
	return 0;
}

static void mark_active(struct sandbox *s)
{
	pthread_mutex_lock(&s->e->lock);
	s->active_ns = now_ns();
	pthread_mutex_unlock(&s->e->lock);
}

/* stop: the VMM ends, the disk stays; memory (and a hibernation image) are dropped. */
static int op_stop(struct sandbox *s)
{
	_cleanup_free_ char *state = vm_file(s->dir, VM_HIBERNATE), *mem = vm_file(s->dir, VM_MEM);
	int r = 0;

	if (!state || !mem)
		return -ENOMEM;
	if (s->vmm && (r = sandbox_retire_vmm(s)) < 0)
		return r;
	unlink(state);
	unlink(mem);
	return sandbox_transition(s, SB_EV_STOP);
}

/*
 * A VMM for the sandbox's own files (its memory, disk, sockets and network
 * slot): spawned, published for the supervisor, connected; with state_fd it
 * loads that device state (a wake), else it boots (a start). Then the agent
 * and the identity attach, which also sets the clock. On failure *step says
 * where; a VMM already published stays in s->vmm for the caller.
 */
/* vm_start's publish for a start or a wake: until it ends, the VMM's exit is the operation's to report. */
static void own_publish(void *arg, struct vmm *v, struct agent_client *ac)
{
	struct sandbox *s = arg;

	sandbox_publish(s, v, ac);
	if (v)
		s->vmm_starting = true;
}

static int run_own_vmm(struct sandbox *s, int state_fd, const struct ram_delta *delta, const char **step)
{
	struct engine *e = s->e;
	struct template_config cfg = { 0 };
	_cleanup_free_ char *disk = vm_file(s->dir, VM_DISK), *mem = vm_file(s->dir, VM_MEM);
	_cleanup_close_ int ram_fd = -1, delta_fd = -1;
	int r;

	*step = "spawn";
	if (!disk || !mem)
		return -ENOMEM;
	/* a wake of memory that is a delta over the template's base: on that base, the delta's pages given */
	if (state_fd < 0 || template_delta_base(s->tpl, delta, &ram_fd) < 0 ||
	    (delta_fd = open(mem, O_RDONLY | O_CLOEXEC)) < 0)
		delta = NULL;
	pthread_mutex_lock(&e->lock);
	r = template_config_vm(s->tpl, &cfg);
	pthread_mutex_unlock(&e->lock);
	if (r == 0) {
		const struct vm_launch l = { .cfg = &cfg, .name = s->name, .dir = s->dir, .rundir = s->rundir,
					     .disk = cfg.rootfs ? disk : NULL, .state_fd = state_fd,
					     .ram_fd = delta ? ram_fd : -1, .delta = delta, .delta_fd = delta_fd, .net = &s->net,
					     .egress = &s->settings.egress, .cancel = &s->cancel, .publish = own_publish, .event = sandbox_vm_event,
					     .arg = s };
		_cleanup_free_ char *why = NULL;

		r = vm_start(e, &l, step, &why);
		if (why)
			log_warn("sandbox %s/%s: %s: %s", s->tpl->name, s->name, *step, why);
	}
	template_config_clear(&cfg);
	if (r < 0)
		return r;
	r = sandbox_attach(s, state_fd >= 0 ? AGENT_RESTORE_TIMEOUT_MS : AGENT_BOOT_TIMEOUT_MS, NULL, NULL);
	if (r == 0 && state_fd < 0)
		r = sandbox_configure_image(s); /* a cold boot: the guest's defaults are not in its memory */
	return r;
}

/*
 * The end of a start or a wake (r: how it went): from here the supervisor
 * watches the VMM as any other. A VMM that exited meanwhile (the supervisor
 * handed it back: vmm_exited) is a failure of the operation, which ends it
 * with its own reason (a start stays stopped, a wake fails the sandbox);
 * before, the supervisor failed the sandbox for a start too and the start
 * then waited for it forever.
 */
static int own_vmm_end(struct sandbox *s, int r)
{
	pthread_mutex_lock(&s->e->lock);
	/*
	 * A failed start's VMM is the operation's to end: marked retiring in
	 * the same critical section that ends vmm_starting, so a supervisor
	 * seeing its exit a moment later hands it back instead of calling it a
	 * crash (and a retire_vmm waiting for the hand-back waited forever).
	 */
	if (r < 0 && s->vmm && !s->vmm_exited)
		s->vmm_retiring = s->vmm;
	s->vmm_starting = false;
	if (r == 0 && s->vmm_exited)
		r = -ECHILD;
	pthread_mutex_unlock(&s->e->lock);
	return r;
}

int sandbox_start_own_vmm(struct sandbox *s, int state_fd, const char **step)
{
	ram_delta_drop(&s->hib_delta); /* its memory file is the VMM's from here: what it was known to be is not */
	return own_vmm_end(s, run_own_vmm(s, state_fd, NULL, step));
}

/*
 * Appends the file at path to the one at into (a spare's console or log,
 * which its VMM appends to), then renames into over path: what the
 * sandbox's file held is kept, and the VMM writes there from now on.
 */
static int take_file_over(const char *into, const char *path)
{
	_cleanup_close_ int in = open(path, O_RDONLY | O_CLOEXEC), out = -1;
	char buf[65536];
	ssize_t n;

	if (in < 0 && errno != ENOENT)
		return -errno;
	if ((out = open(into, O_WRONLY | O_APPEND | O_CLOEXEC)) < 0)
		return -errno;
	while (in >= 0 && (n = read(in, buf, sizeof(buf))) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (write_all(out, buf, (size_t)n) < 0)
			return -EIO;
	}
	return rename(into, path) < 0 ? -errno : 0;
}

/*
 * A wake on the spare sl, claimed for it (architecture.md, "Spares"): its
 * VMM maps the base the sandbox's memory is a delta over. It becomes the
 * sandbox's (published: the supervisor watches it, its exit is this
 * operation's to report), its run directory (sockets) the sandbox's; the
 * sandbox's disk is cloned into the spare's disk file (the inode the VMM
 * holds) and the spare's disk, console and log take the sandbox's places
 * (console and log appended first), the rest of the spare's files go; then
 * the delta's pages from the sandbox's memory file, the hibernated device
 * state, and the attach as after any wake.
 */
static int wake_on_spare(struct sandbox *s, struct slot *sl, const struct ram_delta *delta, int state_fd,
			 const char **step)
{
	struct engine *e = s->e;
	struct template_config cfg = { 0 };
	_cleanup_free_ char *mem = vm_file(s->dir, VM_MEM), *disk = vm_file(s->dir, VM_DISK);
	_cleanup_free_ char *log = vm_file(s->dir, VM_LOG), *sdisk = vm_file(sl->dir, VM_DISK);
	_cleanup_free_ char *scon = vm_file(sl->dir, VM_CONSOLE), *slog = vm_file(sl->dir, VM_LOG);
	_cleanup_free_ char *oldrun = NULL;
	_cleanup_close_ int memfd = -1;
	enum clone_method m;
	bool has_disk;
	int r;

	*step = "spare";
	pthread_mutex_lock(&e->lock);
	own_publish(s, TAKE_PTR(sl->vmm), NULL);
	if (atomic_load(&s->cancel))
		vmm_kill(s->vmm);
	oldrun = s->rundir;
	s->rundir = TAKE_PTR(sl->rundir);
	has_disk = template_has_disk(s->tpl);
	r = template_config_vm(s->tpl, &cfg);
	pthread_mutex_unlock(&e->lock);
	sandbox_record_save(s);
	rm_rf(oldrun);
	if (r == 0 && (!mem || !disk || !log || !sdisk || !scon || !slog))
		r = -ENOMEM;
	if (r == 0 && has_disk && (r = store_clone_into(&e->store, disk, sdisk, &m)) == 0 && rename(sdisk, disk) < 0)
		r = -errno;
	if (r == 0 && (r = take_file_over(scon, s->console_path)) == 0)
		r = take_file_over(slog, log);
	if (r == 0 && (memfd = open(mem, O_RDONLY | O_CLOEXEC)) < 0)
		r = -errno;
	if (r == 0) {
		const struct vm_launch l = { .cfg = &cfg, .name = s->name, .dir = s->dir, .rundir = s->rundir,
					     .state_fd = state_fd, .load_fd = state_fd, .delta = delta, .delta_fd = memfd,
					     .net = &s->net, .egress = &s->settings.egress, .cancel = &s->cancel,
					     .publish = own_publish, .event = sandbox_vm_event, .arg = s };

		sandbox_console_note(s, "woke (on a spare VMM)");
		r = vm_load(e, &l, s->vmm, true, step);
	}
	template_config_clear(&cfg);
	if (r < 0)
		return r;
	return sandbox_attach(s, AGENT_RESTORE_TIMEOUT_MS, NULL, NULL);
}

/* start: a cold boot from the sandbox's own disk, in its own network slot, in the cold-work place. */
static int op_start(struct sandbox *s)
{
	struct engine *e = s->e;
	_cleanup_free_ char *mem = vm_file(s->dir, VM_MEM);
	_cleanup_close_ int memfd = -1;
	const char *step = "prepare";
	unsigned mem_mib;
	int r;

	if (!mem)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	mem_mib = s->tpl->cfg.mem_mib;
	pthread_mutex_unlock(&e->lock);
	if ((r = sandbox_admit_vm(s, mem_mib, "start")) < 0)
		return r;
	if ((r = cold_acquire(e, &s->cancel)) < 0)
		return r;
	/* a fresh, zeroed memory file */
	unlink(mem);
	memfd = open(mem, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (memfd < 0 || ftruncate(memfd, (off_t)mem_mib << 20) < 0)
		r = -errno;
	if (r == 0)
		r = sandbox_start_own_vmm(s, -1, &step);
	cold_release(e);
	if (r < 0) {
		set_ctl_error(s, "start failed at %s: %s (see console and %s/vmm.log)", step, strerror(-r), s->dir);
		/* still stopped, and may be tried again: its VMM is ended on purpose, not as a crash */
		if (s->vmm)
			sandbox_retire_vmm(s);
		return r;
	}
	return sandbox_transition(s, SB_EV_START);
}

static int op_hibernate(struct sandbox *s)
{
	struct engine *e = s->e;
	_cleanup_free_ char *state = vm_file(s->dir, VM_HIBERNATE), *tmp = NULL, *mem = vm_file(s->dir, VM_MEM);
	struct ram_delta *delta = NULL;
	uint64_t t0 = now_ns();
	int r;

	if (!state || !mem || !(tmp = strjoin(state, ".tmp", NULL)))
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	{
		/*
		 * Accesses end on their own: a close's release reaches us just
		 * after close() returned. New ones wait for this operation.
		 */
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += HIBERNATE_WAIT_MS / 1000;
		ts.tv_nsec += (HIBERNATE_WAIT_MS % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (s->execs_running && !atomic_load(&s->cancel) &&
		       pthread_cond_timedwait(&s->cond, &e->lock, &ts) == 0)
			;
	}
	r = s->execs_running ? -EBUSY : 0;
	pthread_mutex_unlock(&e->lock);
	if (r < 0) {
		set_ctl_error(s, "hibernate: refused while an exec, a process or an open live/ file uses the sandbox");
		return r;
	}
	sandbox_usage_sample(s); /* the figures its usage file shows while it sleeps */
	ram_delta_drop(&s->hib_delta);
	delta = calloc(1, sizeof(*delta));
	/* device state (the vCPUs stop); the RAM is in its file already, or written there (a private base) */
	r = vmm_snapshot(s->vmm, tmp, mem, QMP_TIMEOUT_MS, delta);
	if (r == 0)
		r = fsync_file(tmp); /* the only copy of its device state from now on */
	if (r == 0 && rename(tmp, state) < 0)
		r = -errno;
	if (r < 0) {
		struct statvfs sv;

		unlink(tmp);
		/* the VMM only says its migration failed: a full store is the likely why */
		if (statvfs(s->dir, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < (16u << 20))
			r = -ENOSPC;
		set_ctl_error(s, "hibernate: snapshot failed: %s", strerror(-r));
		/* a migration that stopped the vCPUs leaves them stopped: start them again if it was running */
		if (s->state == SB_READY)
			vmm_resume(s->vmm, QMP_TIMEOUT_MS);
		ram_delta_drop(&delta);
		return r;
	}
	if ((r = sandbox_retire_vmm(s)) < 0) {
		ram_delta_drop(&delta);
		return r;
	}
	/* a wake may take a spare if it is a delta over the spares' base (memory permitting: else none) */
	if (delta && delta->len)
		s->hib_delta = TAKE_PTR(delta);
	ram_delta_drop(&delta);
	r = sandbox_transition(s, SB_EV_HIBERNATE);
	pthread_mutex_lock(&e->lock);
	s->hibernate_ms = ns_to_ms(now_ns() - t0);
	hist_add(&e->hist[H_HIBERNATE], s->hibernate_ms);
	pthread_mutex_unlock(&e->lock);
	return r;
}

/*
 * A wake on a spare, where one fits: the template's spares map the base its
 * memory is a delta over (hib_delta), and it has no network (its slot and
 * address are its own; a spare's VMM is bound to the spare's). 0: woken on
 * it; 1: not (no spare, or it failed: retired, its reason logged, and
 * *state_fd opened again for a spawn); < 0: the wake failed (cancelled).
 */
static int wake_spare(struct sandbox *s, const struct ram_delta *delta, int *state_fd, const char **step)
{
	struct engine *e = s->e;
	struct template *t = s->tpl;
	_cleanup_free_ char *state = vm_file(s->dir, VM_HIBERNATE);
	struct slot *sl = NULL, *dead = NULL;
	uint64_t id;
	int r;

	if (t->cfg.net || template_delta_base(t, delta, NULL) < 0)
		return 1;
	pthread_mutex_lock(&e->lock);
	sl = spare_claim(t, &dead);
	pthread_mutex_unlock(&e->lock);
	slots_free_list(e, dead);
	if (!sl)
		return 1;
	id = sl->id;
	r = own_vmm_end(s, wake_on_spare(s, sl, delta, *state_fd, step));
	slot_free(e, sl); /* what is left of it: its record, its clones of the snapshot's memory and state */
	if (r == 0) {
		pthread_mutex_lock(&e->lock);
		t->pool_stats.wakes_spare++;
		pthread_mutex_unlock(&e->lock);
		return 0;
	}
	if (atomic_load(&s->cancel))
		return r;
	log_warn("sandbox %s/%s: waking on spare %" PRIu64 " failed at %s: %s; spawning instead", t->name, s->name,
		 id, *step, strerror(-r));
	if (s->vmm && (r = sandbox_retire_vmm(s)) < 0)
		return r;
	close(*state_fd); /* the spare's VMM read from it: from the start again */
	if (!state || (*state_fd = open(state, O_RDONLY | O_CLOEXEC)) < 0)
		return state ? -errno : -ENOMEM;
	return 1;
}

static int op_wake(struct sandbox *s)
{
	struct engine *e = s->e;
	_cleanup_free_ char *state = vm_file(s->dir, VM_HIBERNATE), *mem = vm_file(s->dir, VM_MEM);
	_cleanup_close_ int state_fd = -1;
	struct ram_delta *delta = NULL;
	uint64_t t0 = now_ns();
	const char *step = "spawn";
	int r;

	if (!state || !mem)
		return -ENOMEM;
	sandbox_phase(s, "wake");
	state_fd = open(state, O_RDONLY | O_CLOEXEC);
	if (state_fd < 0) {
		r = -errno;
		set_ctl_error(s, "wake: %s: %s", state, strerror(-r));
		return r;
	}
	delta = TAKE_PTR(s->hib_delta);
	r = wake_spare(s, delta, &state_fd, &step);
	if (r == 1) /* no spare for it, or the spare failed and went: a VMM spawned for it */
		r = own_vmm_end(s, run_own_vmm(s, state_fd, delta, &step));
	ram_delta_drop(&delta);
	if (r < 0) {
		set_ctl_error(s, "wake failed at %s: %s (see console and %s/vmm.log)", step, strerror(-r), s->dir);
		/* a sandbox that cannot wake is failed; its files stay until rmdir */
		pthread_mutex_lock(&e->lock);
		if (s->vmm)
			vmm_kill(s->vmm);
		pthread_mutex_unlock(&e->lock);
		sandbox_fail(s, "wake from hibernation failed at %s: %s", step, strerror(-r));
		return r;
	}
	unlink(state);
	r = sandbox_transition(s, SB_EV_WAKE);
	pthread_mutex_lock(&e->lock);
	s->wake_ms = ns_to_ms(now_ns() - t0);
	s->wakes++;
	hist_add(&e->hist[H_WAKE], s->wake_ms);
	pthread_mutex_unlock(&e->lock);
	log_info("sandbox %s/%s woke from hibernation in %.1f ms", s->tpl->name, s->name, s->wake_ms);
	return r;
}

/*
 * fork NAME: reserve the child (name checks, capacity), save the parent's
 * device state into the child's directory (the vCPUs stop for it), clone the
 * parent's memory and disk there (reflinks: copy-on-write from now on), let
 * the parent run again, and hand over to the child's create thread, which
 * restores the files under its own identity and network slot. On failure
 * the child is removed: nothing is left.
 */
static int op_fork(struct sandbox *s, const char *name)
{
	struct engine *e = s->e;
	struct template *t = s->tpl;
	struct sandbox *c = NULL;
	_cleanup_free_ char *state = NULL, *mem = NULL, *cmem = NULL, *disk = NULL, *cdisk = NULL;
	enum clone_method m;
	bool was_running, has_disk;
	int r;

	{
		_cleanup_free_ char *what = strjoin("fork ", name, NULL);
		unsigned mem_mib;

		pthread_mutex_lock(&e->lock);
		mem_mib = t->cfg.mem_mib;
		pthread_mutex_unlock(&e->lock);
		if ((r = sandbox_admit_vm(s, mem_mib, what ? what : "fork")) < 0)
			return r;
	}
	r = sandbox_create_internal(e, t, name, s, NULL, &c);
	if (r < 0) {
		set_ctl_error(s, "fork %s: %s", name, r == -EEXIST ? "a sandbox of that name exists" :
					       r == -EINVAL ? "bad name" : strerror(-r));
		return r;
	}
	state = strjoin(c->dir, "/fork.state", NULL);
	mem = vm_file(s->dir, VM_MEM);
	cmem = vm_file(c->dir, VM_MEM);
	disk = vm_file(s->dir, VM_DISK);
	cdisk = vm_file(c->dir, VM_DISK);
	pthread_mutex_lock(&e->lock);
	was_running = s->state == SB_READY;
	has_disk = template_has_disk(s->tpl);
	pthread_mutex_unlock(&e->lock);
	r = !state || !mem || !cmem || !disk || !cdisk ? -ENOMEM : mkdir_p(c->dir, 0700);
	/* the child's alone until fork_ready: what the parent's memory is beyond its base, for a spare to take */
	if (r == 0 && !(c->fork_delta = calloc(1, sizeof(*c->fork_delta))))
		r = -ENOMEM;
	if (r == 0 && (r = vmm_snapshot(s->vmm, state, mem, QMP_TIMEOUT_MS, c->fork_delta)) < 0)
		set_ctl_error(s, "fork %s: snapshot failed: %s", name, strerror(-r));
	/* the parent is stopped now: its memory and disk files are consistent */
	if (r == 0 && (r = store_clone(&e->store, mem, cmem, &m)) < 0)
		set_ctl_error(s, "fork %s: cloning memory failed: %s", name, strerror(-r));
	if (r == 0 && has_disk && (r = store_clone(&e->store, disk, cdisk, &m)) < 0)
		set_ctl_error(s, "fork %s: cloning the disk failed: %s", name, strerror(-r));
	if (was_running && vmm_resume(s->vmm, QMP_TIMEOUT_MS) < 0 && r == 0) {
		r = -EIO;
		set_ctl_error(s, "fork %s: the parent did not resume", name);
	}
	return sandbox_fork_handoff(c, r);
}

int sandbox_fork_handoff(struct sandbox *c, int r)
{
	struct engine *e = c->e;
	struct template *t = c->tpl;
	char name[NAME_MAX_LEN + 1];

	snprintf(name, sizeof(name), "%s", c->name);
	pthread_mutex_lock(&e->lock);
	c->fork_result = r;
	c->fork_ready = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		engine_sandbox_destroy(e, t, name); /* nothing half-made is left */
	sandbox_unref(c);
	return r;
}

/*
 * template NEW: the sandbox's current state becomes template NEW's snapshot.
 * NEW's config is this template's plus "derived_from" (so its identity is
 * its own, and a boot can never replace its snapshot); the device state is
 * saved (the vCPUs stop for it), memory and disk are reflinked into NEW's
 * snapshot, and the sandbox runs again. On failure NEW is removed.
 */
static int op_template(struct sandbox *s, const char *name)
{
	struct engine *e = s->e;
	struct template *nt = NULL;
	struct template_config cfg = { 0 };
	_cleanup_free_ char *text = NULL, *newdir = NULL, *state = NULL, *mem = NULL, *cmem = NULL;
	_cleanup_free_ char *disk = NULL, *cdisk = NULL;
	_cleanup_free_ char *at = NULL;
	struct timings tm;
	enum clone_method m;
	bool was_running;
	int r;

	timings_start(&tm);
	pthread_mutex_lock(&e->lock);
	r = template_config_vm(s->tpl, &cfg);
	was_running = s->state == SB_READY;
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r;
	free(cfg.derived_from);
	/* what the template built from is in the snapshot's disk now (template_config_vm named it as rootfs) */
	free(TAKE_PTR(cfg.image));
	free(TAKE_PTR(cfg.context));
	cfg.disk_mib = 0;
	at = iso8601_now();
	if (asprintf(&cfg.derived_from, "%s/%s@%s", s->tpl->name, s->name, at ? at : "?") < 0)
		cfg.derived_from = NULL;
	text = cfg.derived_from ? template_config_render(&cfg) : NULL;
	r = text ? engine_template_create_config(e, name, text, &nt) : -ENOMEM;
	if (r < 0) {
		template_config_clear(&cfg);
		set_ctl_error(s, "template %s: %s", name, r == -EEXIST ? "a template of that name exists" : strerror(-r));
		return r;
	}
	newdir = strjoin(nt->dir, "/snapshot.new", NULL);
	state = newdir ? strjoin(newdir, "/state", NULL) : NULL;
	mem = vm_file(s->dir, VM_MEM);
	cmem = newdir ? vm_file(newdir, VM_MEM) : NULL;
	disk = vm_file(s->dir, VM_DISK);
	cdisk = newdir ? vm_file(newdir, VM_DISK) : NULL;
	r = !newdir || !state || !mem || !cmem || !disk || !cdisk ? -ENOMEM : mkdir_p(newdir, 0700);
	if (r == 0 && ((r = vmm_snapshot(s->vmm, state, mem, QMP_TIMEOUT_MS, NULL)) < 0 || (r = fsync_file(state)) < 0))
		set_ctl_error(s, "template %s: snapshot failed: %s", name, strerror(-r));
	if (r == 0 && (r = store_clone(&e->store, mem, cmem, &m)) < 0)
		set_ctl_error(s, "template %s: cloning memory failed: %s", name, strerror(-r));
	if (r == 0 && cfg.rootfs && (r = store_clone(&e->store, disk, cdisk, &m)) < 0)
		set_ctl_error(s, "template %s: cloning the disk failed: %s", name, strerror(-r));
	if (was_running && vmm_resume(s->vmm, QMP_TIMEOUT_MS) < 0 && r == 0) {
		r = -EIO;
		set_ctl_error(s, "template %s: the sandbox did not resume", name);
	}
	timings_lap(&tm, "snapshot");
	template_config_clear(&cfg);
	if (r == 0 && (r = template_install_snapshot(nt, newdir, &tm)) < 0)
		set_ctl_error(s, "template %s: installing the snapshot failed: %s", name, strerror(-r));
	if (r < 0 && newdir)
		rm_rf(newdir);
	template_unref(nt);
	if (r < 0)
		engine_template_remove(e, name);
	return r;
}

/* The first word of a verb that passed sandbox_ctl's checks, as a static string. */
static const char *verb_word(const char *verb)
{
	static const char *const words[] = { "pause", "resume", "hibernate", "stop", "start", "fork", "template",
					     "checkpoint", "rollback", NULL };
	size_t n = strcspn(verb, " ");

	for (size_t i = 0; words[i]; i++)
		if (strlen(words[i]) == n && strncmp(words[i], verb, n) == 0)
			return words[i];
	return "ctl";
}

/* "fork NEW from C": NEW and C (in buf), or false for any other verb. */
static bool parse_fork_from(const char *verb, char *child, char *ckpt, size_t size)
{
	const char *from;

	if (strncmp(verb, "fork ", 5) != 0 || !(from = strstr(verb + 5, " from ")))
		return false;
	snprintf(child, size, "%.*s", (int)(from - (verb + 5)), verb + 5);
	snprintf(ckpt, size, "%s", from + 6);
	return true;
}

/* checkpoint C, rollback C, fork NEW from C: s->op_lock held. */
static int run_checkpoint_op(struct sandbox *s, const char *verb, enum sandbox_state st, uint64_t t0)
{
	struct engine *e = s->e;
	const char *word = verb_word(verb);
	char child[NAME_MAX_LEN + 1], ckpt[NAME_MAX_LEN + 1];
	bool fork_from = parse_fork_from(verb, child, ckpt, sizeof(child));
	bool rollback = word[0] == 'r';
	bool allowed = rollback ? sandbox_state_next(st, SB_EV_ROLLBACK) >= 0 :
		       st == SB_READY || st == SB_PAUSED || st == SB_HIBERNATED || (fork_from && st == SB_STOPPED);
	int r;

	if (atomic_load(&s->cancel) || !allowed) {
		set_ctl_error(s, "%s: refused while the sandbox is %s", word, sandbox_state_name(st));
		return -EBUSY;
	}
	r = fork_from ? op_fork_from(s, child, ckpt) :
	    rollback ? op_rollback(s, verb + 9) : op_checkpoint(s, verb + 11);
	if (r == 0 && rollback)
		mark_active(s);
	pthread_mutex_lock(&e->lock);
	s->last_op = word;
	s->last_op_ms = ns_to_ms(now_ns() - t0);
	if (r == 0 && !fork_from)
		hist_add(&e->hist[rollback ? H_ROLLBACK : H_CHECKPOINT], s->last_op_ms);
	if (r == 0) {
		free(s->ctl_error);
		s->ctl_error = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* Runs the verb with s->op_lock held; the state check is in the op's transition and here. */
static int run_op_locked(struct sandbox *s, const char *verb)
{
	struct engine *e = s->e;
	enum sandbox_state st;
	enum sandbox_event ev;
	uint64_t t0 = now_ns();
	int r;

	pthread_mutex_lock(&e->lock);
	st = s->state;
	pthread_mutex_unlock(&e->lock);
	{
		char child[NAME_MAX_LEN + 1], ckpt[NAME_MAX_LEN + 1];

		if (strncmp(verb, "rollback ", 9) == 0) { /* its VMM comes up again: a start's rules */
			pool_hold(e);
			r = run_checkpoint_op(s, verb, st, t0);
			pool_release(e);
			return r;
		}
		if (strncmp(verb, "checkpoint ", 11) == 0 || parse_fork_from(verb, child, ckpt, sizeof(child)))
			return run_checkpoint_op(s, verb, st, t0);
	}
	if (strncmp(verb, "fork ", 5) == 0 || strncmp(verb, "template ", 9) == 0) {
		bool fork = verb[0] == 'f';

		if (atomic_load(&s->cancel) || (st != SB_READY && st != SB_PAUSED)) {
			set_ctl_error(s, "%s: refused while the sandbox is %s", fork ? "fork" : "template",
				      sandbox_state_name(st));
			return -EBUSY;
		}
		r = fork ? op_fork(s, verb + 5) : op_template(s, verb + 9);
		pthread_mutex_lock(&e->lock);
		s->last_op = fork ? "fork" : "template";
		s->last_op_ms = ns_to_ms(now_ns() - t0);
		if (r == 0 && fork)
			hist_add(&e->hist[H_FORK], s->last_op_ms);
		if (r == 0) {
			free(s->ctl_error);
			s->ctl_error = NULL;
		}
		pthread_mutex_unlock(&e->lock);
		return r;
	}
	if (strcmp(verb, "pause") == 0)
		ev = SB_EV_PAUSE;
	else if (strcmp(verb, "hibernate") == 0)
		ev = SB_EV_HIBERNATE;
	else if (strcmp(verb, "resume") == 0)
		ev = st == SB_HIBERNATED ? SB_EV_WAKE : SB_EV_RESUME;
	else if (strcmp(verb, "stop") == 0)
		ev = SB_EV_STOP;
	else if (strcmp(verb, "start") == 0)
		ev = st == SB_HIBERNATED ? SB_EV_WAKE : SB_EV_START;
	else
		return -EINVAL;
	if (atomic_load(&s->cancel) || sandbox_state_next(st, ev) < 0) {
		set_ctl_error(s, "%s: refused while the sandbox is %s", verb, sandbox_state_name(st));
		return -EBUSY;
	}
	if (ev == SB_EV_START || ev == SB_EV_WAKE)
		pool_hold(e);
	r = ev == SB_EV_PAUSE ? op_pause(s) : ev == SB_EV_RESUME ? op_resume(s) :
	    ev == SB_EV_HIBERNATE ? op_hibernate(s) : ev == SB_EV_STOP ? op_stop(s) :
	    ev == SB_EV_START ? op_start(s) : op_wake(s);
	if (ev == SB_EV_START || ev == SB_EV_WAKE)
		pool_release(e);
	if (r == 0 && (ev == SB_EV_RESUME || ev == SB_EV_WAKE || ev == SB_EV_START))
		mark_active(s);
	pthread_mutex_lock(&e->lock);
	s->last_op = ev == SB_EV_PAUSE ? "pause" : ev == SB_EV_RESUME ? "resume" : ev == SB_EV_HIBERNATE ? "hibernate" :
		     ev == SB_EV_STOP ? "stop" : ev == SB_EV_START ? "start" : "wake";
	s->last_op_ms = ns_to_ms(now_ns() - t0);
	if (r == 0) {
		free(s->ctl_error);
		s->ctl_error = NULL;
	}
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* run_op_locked, with the operation named while it runs (what an EBUSY of checkpoint or rollback names). */
static int run_op(struct sandbox *s, const char *verb)
{
	int r;

	pthread_mutex_lock(&s->e->lock);
	s->op_running = verb_word(verb);
	pthread_mutex_unlock(&s->e->lock);
	r = run_op_locked(s, verb);
	pthread_mutex_lock(&s->e->lock);
	s->op_running = NULL;
	pthread_mutex_unlock(&s->e->lock);
	return r;
}

#define CTL_VERBS "pause, resume, hibernate, stop, start, fork NEW, template NEW, checkpoint C, rollback C or fork NEW from C"
#define BAD_NAME "bad name (allowed: [A-Za-z0-9][A-Za-z0-9_-]{0,63})"

int sandbox_ctl(struct sandbox *s, const char *cmd, size_t len)
{
	char verb[160], child[NAME_MAX_LEN + 1], ckpt[NAME_MAX_LEN + 1];
	bool refuse_busy = false;
	int r;

	while (len > 0 && (cmd[len - 1] == '\n' || cmd[len - 1] == ' '))
		len--;
	if (len == 0 || len >= sizeof(verb) || memchr(cmd, '\0', len)) {
		set_ctl_error(s, "ctl: expected " CTL_VERBS);
		return -EINVAL;
	}
	memcpy(verb, cmd, len);
	verb[len] = '\0';
	if (strncmp(verb, "fork ", 5) == 0 && strstr(verb + 5, " from ")) {
		/* both names checked whole: a name is never cut to fit */
		const char *from = strstr(verb + 5, " from ");

		if ((size_t)(from - (verb + 5)) > NAME_MAX_LEN || strlen(from + 6) > NAME_MAX_LEN ||
		    !parse_fork_from(verb, child, ckpt, sizeof(child)) || name_validate(child) < 0 ||
		    name_validate(ckpt) < 0) {
			set_ctl_error(s, "fork NEW from C: " BAD_NAME);
			return -EINVAL;
		}
		refuse_busy = true;
	} else if (strncmp(verb, "checkpoint ", 11) == 0 || strncmp(verb, "rollback ", 9) == 0) {
		if (name_validate(strchr(verb, ' ') + 1) < 0) {
			set_ctl_error(s, "%s: " BAD_NAME, verb_word(verb));
			return -EINVAL;
		}
		refuse_busy = true;
	} else if (strncmp(verb, "fork ", 5) == 0 || strncmp(verb, "template ", 9) == 0) {
		if (name_validate(strchr(verb, ' ') + 1) < 0) {
			set_ctl_error(s, "%.8s: " BAD_NAME, verb);
			return -EINVAL;
		}
	} else if (strcmp(verb, "pause") && strcmp(verb, "resume") && strcmp(verb, "hibernate") && strcmp(verb, "stop") &&
		   strcmp(verb, "start")) {
		set_ctl_error(s, "ctl: unknown verb \"%.31s\" (expected " CTL_VERBS ")", verb);
		return -EINVAL;
	}
	if (refuse_busy && pthread_mutex_trylock(&s->op_lock) != 0) {
		/* these refuse rather than wait behind another operation (an access only passing through waits) */
		const char *busy;

		pthread_mutex_lock(&s->e->lock);
		busy = s->op_running;
		pthread_mutex_unlock(&s->e->lock);
		if (busy) {
			set_ctl_error(s, "%s: refused while %s runs on the sandbox", verb_word(verb), busy);
			return -EBUSY;
		}
		pthread_mutex_lock(&s->op_lock);
	} else if (!refuse_busy) {
		pthread_mutex_lock(&s->op_lock);
	}
	r = run_op(s, verb);
	pthread_mutex_unlock(&s->op_lock);
	return r;
}

/* ---- an access that needs the guest ---- */

int sandbox_exec_enter(struct sandbox *s)
{
	struct engine *e = s->e;
	enum sandbox_state st;
	int r = 0;

	pthread_mutex_lock(&s->op_lock);
	pthread_mutex_lock(&e->lock);
	st = s->state;
	pthread_mutex_unlock(&e->lock);
	if (st == SB_PAUSED || st == SB_HIBERNATED)
		r = run_op(s, "resume"); /* documented: an exec wakes a sleeping sandbox */
	pthread_mutex_lock(&e->lock);
	if (r == 0 && s->state == SB_READY) {
		s->execs_running++;
		s->active_ns = now_ns();
	} else {
		r = -EIO; /* failed, stopped (start it first) or going away */
	}
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&s->op_lock);
	return r;
}

void sandbox_exec_leave(struct sandbox *s)
{
	pthread_mutex_lock(&s->e->lock);
	s->execs_running--;
	if (!s->execs_running)
		pthread_cond_broadcast(&s->cond); /* a hibernate may wait for it */
	s->active_ns = now_ns();
	pthread_mutex_unlock(&s->e->lock);
}

/* ---- the watchdog ---- */

/*
 * A VMM that stopped running (SIGSTOP, a debugger's stop) answers nothing:
 * every access to its sandbox would hang until its own timeout. Seen stopped
 * for WATCHDOG_MS, it is killed and the sandbox fails with the reason; the
 * supervisor reaps it like any other death. Runs from the idler, every
 * IDLE_PERIOD_MS, so it costs one /proc read per running sandbox.
 */
static void watchdog_scan(struct engine *e)
{
	uint64_t now = now_ns();

	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < e->n_templates; i++) {
		struct template *t = e->templates[i];

		for (size_t k = 0; k < t->n_sandboxes; k++) {
			struct sandbox *s = t->sandboxes[k];
			char st;

			if ((s->state != SB_READY && s->state != SB_PAUSED) || !s->vmm || s->vmm_retiring ||
			    !s->vmm_pid) {
				s->vmm_stopped_ns = 0;
				continue;
			}
			st = proc_state(s->vmm_pid);
			if (st != 'T' && st != 't') {
				s->vmm_stopped_ns = 0;
				continue;
			}
			if (!s->vmm_stopped_ns) {
				s->vmm_stopped_ns = now;
				continue;
			}
			if (now - s->vmm_stopped_ns < WATCHDOG_MS * 1000000ull)
				continue;
			if (!s->error && asprintf(&s->error, "watchdog: the VMM (pid %d) was stopped for %u ms and answered "
						  "nothing; killed", s->vmm_pid, WATCHDOG_MS) < 0)
				s->error = NULL;
			log_warn("sandbox %s/%s: VMM %d stopped for %u ms: killed by the watchdog", t->name, s->name,
				 s->vmm_pid, WATCHDOG_MS);
			vmm_kill(s->vmm); /* SIGKILL ends a stopped process too */
			s->vmm_stopped_ns = 0;
		}
	}
	pthread_mutex_unlock(&e->lock);
}

/* ---- periodic scans ---- */

/*
 * The sandboxes want(s, arg) picks (e->lock held), each with a reference the
 * caller drops; *n of them. Scans take their work out of the engine lock.
 */
static struct sandbox **sandboxes_where(struct engine *e, bool (*want)(const struct sandbox *s, uint64_t arg),
					uint64_t arg, size_t *n)
{
	struct sandbox **v = NULL;
	size_t cap = 0;

	*n = 0;
	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < e->n_templates; i++)
		for (size_t k = 0; k < e->templates[i]->n_sandboxes; k++) {
			struct sandbox *s = e->templates[i]->sandboxes[k];

			if (!want(s, arg))
				continue;
			if (*n == cap) {
				struct sandbox **nv = realloc(v, (cap = cap ? cap * 2 : 16) * sizeof(*nv));

				if (!nv)
					goto out; /* the next scan does the rest */
				v = nv;
			}
			atomic_fetch_add(&s->refs, 1);
			v[(*n)++] = s;
		}
out:
	pthread_mutex_unlock(&e->lock);
	return v;
}

static bool has_vmm(const struct sandbox *s, uint64_t arg)
{
	(void)arg;
	return s->vmm != NULL;
}

/* Running, no access in flight, and idle past its template's idle_timeout_s (0: never) at now. */
static bool is_idle(const struct sandbox *s, uint64_t now)
{
	uint64_t limit = (uint64_t)s->tpl->cfg.idle_timeout_s * 1000000000ull;

	return limit && s->state == SB_READY && !s->execs_running && now - s->active_ns >= limit;
}

/* ---- the console's size ---- */

/*
 * Drops the oldest part of a console log grown beyond max bytes, keeping the
 * newest max/2 (rounded to the block size). The VMM appends (O_APPEND) all
 * the while: collapsing the head (XFS, ext4) is atomic with its writes;
 * elsewhere the tail is copied to the front and the file cut, and what the
 * guest wrote in between may be lost. Returns the bytes dropped.
 */
static uint64_t console_trim(const char *path, uint64_t max)
{
	_cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	uint64_t keep = max / 2, cut;
	ssize_t n;

	if (fd < 0 || fstat(fd, &st) < 0 || (uint64_t)st.st_size <= max || !st.st_blksize)
		return 0;
	cut = ((uint64_t)st.st_size - keep) / (uint64_t)st.st_blksize * (uint64_t)st.st_blksize;
	if (cut && fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, (off_t)cut) == 0)
		return cut;
	/* no collapse here: copy the tail to the front */
	if (!(buf = malloc(keep)) || (n = pread(fd, buf, keep, st.st_size - (off_t)keep)) < 0 ||
	    pwrite(fd, buf, (size_t)n, 0) != n || ftruncate(fd, n) < 0)
		return 0;
	return (uint64_t)st.st_size - (uint64_t)n;
}

/*
 * Every running sandbox's console stays within --console-max-kib (plus what
 * the guest writes in one idler period): a guest flooding its serial port
 * cannot fill the host's disk.
 */
static void console_scan(struct engine *e)
{
	uint64_t max = (uint64_t)e->opts.console_max_kib << 10;
	struct sandbox **v;
	size_t n;

	if (!max)
		return;
	v = sandboxes_where(e, has_vmm, 0, &n);
	for (size_t i = 0; i < n; i++) {
		struct sandbox *s = v[i];
		struct stat st;
		uint64_t dropped;

		/* one stat per sandbox and period; the work only when over */
		if (stat(s->console_path, &st) == 0 && (uint64_t)st.st_size > max &&
		    (dropped = console_trim(s->console_path, max))) {
			pthread_mutex_lock(&e->lock);
			if (!s->console_dropped)
				log_warn("sandbox %s/%s: console over %u KiB: its oldest output is dropped from now on",
					 s->tpl->name, s->name, e->opts.console_max_kib);
			s->console_dropped += dropped;
			pthread_mutex_unlock(&e->lock);
		}
		sandbox_unref(s);
	}
	free(v);
}

/* ---- idle timeout: scale to zero ---- */

/* Hibernates sandboxes idle longer than their template's idle_timeout_s (running ones only). */
static void idle_scan(struct engine *e)
{
	size_t n;
	struct sandbox **due = sandboxes_where(e, is_idle, now_ns(), &n);

	for (size_t i = 0; i < n; i++) {
		struct sandbox *s = due[i];

		/* never wait behind an operation: the next scan tries again */
		if (pthread_mutex_trylock(&s->op_lock) == 0) {
			bool still;

			pthread_mutex_lock(&e->lock);
			still = s->state == SB_READY && !s->execs_running && !atomic_load(&s->cancel);
			pthread_mutex_unlock(&e->lock);
			if (still && run_op(s, "hibernate") == 0) {
				pthread_mutex_lock(&e->lock);
				s->idle_hibernations++;
				pthread_mutex_unlock(&e->lock);
				log_info("sandbox %s/%s idle for %u s: hibernated", s->tpl->name, s->name,
					 s->tpl->cfg.idle_timeout_s);
			}
			pthread_mutex_unlock(&s->op_lock);
		}
		sandbox_unref(s);
	}
	free(due);
}

static void *idler_main(void *arg)
{
	struct engine *e = arg;

	pthread_mutex_lock(&e->lock);
	while (!e->idler_stop) {
		struct timespec ts;

		pthread_mutex_unlock(&e->lock);
		idle_scan(e);
		watchdog_scan(e);
		console_scan(e);
		if (now_ns() - e->last_plan_ns >= 1000000000ull) {
			e->last_plan_ns = now_ns();
			pool_plan(e); /* the capacity controller, about once a second */
		}
		pthread_mutex_lock(&e->lock);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += IDLE_PERIOD_MS * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		if (!e->idler_stop)
			pthread_cond_timedwait(&e->idler_cond, &e->lock, &ts);
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

void engine_idler_start(struct engine *e)
{
	pthread_cond_init(&e->idler_cond, NULL);
	e->idler_started = thread_create(&e->idler, NULL, idler_main, e) == 0;
	if (!e->idler_started)
		log_warn("cannot start the idle-timeout thread: idle sandboxes will not hibernate");
}

void engine_idler_stop(struct engine *e)
{
	if (!e->idler_started)
		return;
	pthread_mutex_lock(&e->lock);
	e->idler_stop = true;
	pthread_cond_broadcast(&e->idler_cond);
	pthread_mutex_unlock(&e->lock);
	pthread_join(e->idler, NULL);
	e->idler_started = false;
	pthread_cond_destroy(&e->idler_cond);
}
