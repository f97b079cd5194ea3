/*
 * Sandboxes: reservation (in mkdir), then one thread per sandbox that runs
 * the create (activate a warm slot claimed in mkdir, else restore from the
 * template's snapshot, else cold boot) and then supervises the VMM until it
 * exits. States and transitions are a pure
 * function (sandbox_state_next) so they are unit-tested apart from any VMM.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "guest.h"
#include "internal.h"
#include "parse.h"
#include "ram.h"


const char *sandbox_state_name(enum sandbox_state s)
{
	static const char *const n[] = { "creating", "ready", "failed", "destroying", "paused", "hibernated", "stopped" };

	return s < _SB_STATE_MAX ? n[s] : "unknown";
}

int sandbox_state_next(enum sandbox_state s, enum sandbox_event ev)
{
	switch (ev) {
	case SB_EV_CREATED:
		return s == SB_CREATING ? SB_READY : -EBUSY;
	case SB_EV_FAILED:
		return s == SB_CREATING || s == SB_READY || s == SB_PAUSED || s == SB_HIBERNATED || s == SB_STOPPED ?
			       SB_FAILED : -EBUSY;
	case SB_EV_DESTROY:
		return s == SB_DESTROYING || s >= _SB_STATE_MAX ? -EBUSY : SB_DESTROYING;
	case SB_EV_PAUSE:
		return s == SB_READY ? SB_PAUSED : -EBUSY;
	case SB_EV_RESUME:
		return s == SB_PAUSED ? SB_READY : -EBUSY;
	case SB_EV_HIBERNATE:
		return s == SB_READY || s == SB_PAUSED ? SB_HIBERNATED : -EBUSY;
	case SB_EV_WAKE:
		return s == SB_HIBERNATED ? SB_READY : -EBUSY;
	case SB_EV_STOP:
		return s == SB_READY || s == SB_PAUSED || s == SB_HIBERNATED ? SB_STOPPED : -EBUSY;
	case SB_EV_START:
		return s == SB_STOPPED ? SB_READY : -EBUSY;
	case SB_EV_ROLLBACK:
		return s == SB_READY || s == SB_PAUSED || s == SB_HIBERNATED || s == SB_STOPPED ? SB_READY : -EBUSY;
	default:
		return -EINVAL;
	}
}

uint64_t sandbox_id(const struct sandbox *s)
{
	return s->id;
}

const char *sandbox_name(const struct sandbox *s)
{
	return s->name;
}

const char *sandbox_console_path(struct sandbox *s)
{
	return s->console_path;
}

void sandbox_unref(struct sandbox *s)
{
	if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	vm_release(s->e, &s->vmm, &s->agent, &s->net);
	slot_free(s->e, s->slot);
	template_unref(s->tpl);
	free(s->dir);
	free(s->rundir);
	free(s->console_path);
	free(s->path_reason);
	free(s->error);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->op_lock);
	pthread_mutex_destroy(&s->record_lock);
	free(s->ctl_error);
	free(s->settings_error);
	free(s->fork_of);
	ram_delta_drop(&s->fork_delta);
	ram_delta_drop(&s->hib_delta);
	free(s->procs);
	sandbox_checkpoints_free(s);
	settings_clear(&s->settings);
	sandbox_egress_clear(s);
	free(s);
}

/* Moves to the state the event leads to; wakes waiters when the outcome is decided. e->lock held. */
static struct waiter *apply_event(struct sandbox *s, enum sandbox_event ev)
{
	int next = sandbox_state_next(s->state, ev);
	struct waiter *w = NULL;

	if (next < 0)
		return NULL;
	sandbox_set_state(s, (enum sandbox_state)next);
	pthread_cond_broadcast(&s->cond);
	if (s->state != SB_CREATING) {
		w = s->waiters;
		s->waiters = NULL;
		s->e->last_settled_ns = now_ns();
		pool_wake_all(s->e); /* fillers wait for creates to settle */
	}
	return w;
}

static void run_waiters(struct waiter *w, int result)
{
	while (w) {
		struct waiter *n = w->next;

		w->fn(w->arg, result);
		free(w);
		w = n;
	}
}

uint64_t sandbox_wait_async(struct sandbox *s, engine_done_fn fn, void *arg)
{
	struct waiter *w = calloc(1, sizeof(*w));
	enum sandbox_state st;
	uint64_t token = 0;

	pthread_mutex_lock(&s->e->lock);
	st = s->state;
	if (st == SB_CREATING && w) {
		w->token = token = ++s->next_token;
		w->fn = fn;
		w->arg = arg;
		w->next = s->waiters;
		s->waiters = TAKE_PTR(w);
	}
	pthread_mutex_unlock(&s->e->lock);
	free(w);
	if (st != SB_CREATING)
		fn(arg, st == SB_READY || st == SB_PAUSED || st == SB_HIBERNATED || st == SB_STOPPED ? 0 : -EIO);
	else if (!token)
		fn(arg, -ENOMEM);
	return token;
}

bool sandbox_wait_cancel(struct sandbox *s, uint64_t token)
{
	struct waiter *found = NULL;

	pthread_mutex_lock(&s->e->lock);
	for (struct waiter **pp = &s->waiters; *pp; pp = &(*pp)->next)
		if ((*pp)->token == token) {
			found = *pp;
			*pp = found->next;
			break;
		}
	pthread_mutex_unlock(&s->e->lock);
	free(found);
	return found != NULL;
}

/* ---- the create job ---- */

/* Status readers see timings under the lock. */
static void sb_lap(struct sandbox *s, const char *phase)
{
	pthread_mutex_lock(&s->e->lock);
	timings_lap(&s->timings, phase);
	pthread_mutex_unlock(&s->e->lock);
}

/* The embedder's seam at a create's or an operation's phase (engine_hooks; none in the shipped daemon). */
void sandbox_phase(struct sandbox *s, const char *phase)
{
	const struct engine_hooks *h = s->e->opts.hooks;

	if (h && h->create_phase)
		h->create_phase(h->ctx, s->e->state_dir, s->name, phase, (int)s->vmm_pid, &s->cancel);
}

void sandbox_fail(struct sandbox *s, const char *fmt, ...)
{
	va_list ap;
	char *m = NULL;
	struct waiter *w;
	bool failed;

	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	va_end(ap);
	pthread_mutex_lock(&s->e->lock);
	if (!s->error)
		s->error = TAKE_PTR(m);
	w = apply_event(s, SB_EV_FAILED);
	failed = s->state == SB_FAILED;
	pthread_mutex_unlock(&s->e->lock);
	free(m);
	if (failed) {
		sandbox_procs_settle(s);
		sandbox_record_save(s);
		log_warn("sandbox %s/%s failed: %s", s->tpl->name, s->name, s->error ? s->error : "?");
	}
	run_waiters(w, -EIO);
}

struct job {
	struct sandbox *s;
	bool restore;
	struct template_config cfg;
	char *mem, *disk, *state_path;
	int state_fd;
	int ram_fd; /* a restore from the template's snapshot: its memory's sealed base, or -1 */
	const struct ram_delta *delta; /* a fork's child on that base: its parent's pages (delta_fd, its memory file) */
	int delta_fd;
	enum clone_method method;
};

static void job_clear(struct job *j)
{
	template_config_clear(&j->cfg);
	free(j->mem);
	free(j->disk);
	free(j->state_path);
	if (j->state_fd >= 0)
		close(j->state_fd);
	if (j->ram_fd >= 0)
		close(j->ram_fd);
	if (j->delta_fd >= 0)
		close(j->delta_fd);
}

/* Picks restore or cold under the lock, with the reason. */
static void job_decide(struct job *j)
{
	struct sandbox *s = j->s;
	struct template *t = s->tpl;
	const char *why = NULL;

	pthread_mutex_lock(&s->e->lock);
	template_config_vm(t, &j->cfg);
	memcpy(s->identity, t->identity, 65);
	/* (a warm slot or spare that failed its activation left j->restore set: decided again here) */
	j->restore = t->state == TPL_READY && strcmp(t->bake.identity, t->identity) == 0;
	if (!j->restore)
		why = t->state == TPL_BAKING ? "template is baking" :
		      t->state == TPL_STALE  ? "snapshot is stale (identity changed)" :
		      t->state == TPL_FAILED ? "template bake failed" : "template not baked";
	s->path = j->restore ? "restore" : "cold";
	if (why) { /* else the reason a failed warm activation left, if any, stays */
		free(s->path_reason);
		s->path_reason = strdup(why);
	}
	pthread_mutex_unlock(&s->e->lock);
}

static int job_clone_snapshot(struct job *j)
{
	struct sandbox *s = j->s;
	struct engine *e = s->e;
	char *why = NULL;

	if (template_snapshot_clone(s->tpl, j->mem, j->disk, &j->method, &j->state_fd, &j->ram_fd, &why) < 0) {
		/* A bad snapshot is a reason to boot cold, never to fail the create. */
		pthread_mutex_lock(&e->lock);
		free(s->path_reason);
		s->path_reason = why;
		s->path = "cold";
		pthread_mutex_unlock(&e->lock);
		log_warn("sandbox %s/%s: %s; booting cold", s->tpl->name, s->name, why ? why : "?");
		j->restore = false;
	} else {
		free(why);
	}
	return 0;
}

static int job_prepare_cold(struct job *j)
{
	_cleanup_close_ int fd = open(j->mem, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

	if (fd < 0 || ftruncate(fd, (off_t)j->cfg.mem_mib << 20) < 0)
		return -errno;
	return j->disk ? template_clone_rootfs(j->s->tpl, j->cfg.rootfs, j->disk, &j->method) : 0;
}

/* vm_start's publish for a sandbox's own VMM (create, fork, start, wake); e->lock held. */
void sandbox_publish(void *arg, struct vmm *v, struct agent_client *ac)
{
	struct sandbox *s = arg;

	if (v) {
		s->vmm = v;
		s->vmm_pid = vmm_pid(v);
		pthread_cond_broadcast(&s->cond); /* the supervisor watches it from now on */
	}
	if (ac)
		s->agent = ac;
}

/* vm_start's events outside a create: the record names the VMM as soon as it runs. */
void sandbox_vm_event(void *arg, enum vm_event ev)
{
	if (ev == VM_EV_SPAWNED)
		sandbox_record_save(arg);
}

/* 32 lowercase hex digits from the kernel's random numbers. */
int machine_id_new(char out[static 33])
{
	uint8_t mid[16];

	if (getrandom(mid, sizeof(mid), 0) != sizeof(mid))
		return -EIO;
	for (size_t i = 0; i < sizeof(mid); i++)
		snprintf(out + 2 * i, 3, "%02x", mid[i]);
	return 0;
}

/*
 * Every attach names the jobs of this sandbox's processes the guest may still
 * have (a connection's processes outlive it in the guest) and the connection's
 * session: the guest keeps those jobs and, for a session new to it, releases
 * every other (what an earlier host left: a fork parent's, a crashed daemon's
 * that no record names).
 */
struct attach_req {
	struct sandbox *s;
	bool identity; /* hostname, environment, entropy, machine id, clock: not for a re-adopted guest */
};

/* One copy of a sandbox's attach (agent_call_resend builds one per copy: each its own entropy and clock). */
static json_object *attach_build(void *arg)
{
	const struct attach_req *a = arg;
	struct sandbox *s = a->s;
	json_object *req, *jobs;

	if (a->identity) {
		json_object *env = json_object_new_object();
		char mid_hex[33];

		if (!env)
			return NULL;
		json_object_object_add(env, "EMBERFS_SANDBOX", json_object_new_string(s->name));
		json_object_object_add(env, "EMBERFS_TEMPLATE", json_object_new_string(s->tpl->name));
		pthread_mutex_lock(&s->e->lock);
		memcpy(mid_hex, s->machine_id, sizeof(mid_hex));
		pthread_mutex_unlock(&s->e->lock);
		/* its own machine id (clones of one snapshot must not share one), the same at every attach */
		req = guest_attach_new(s->name, env, mid_hex, true);
	} else {
		req = json_object_new_object();
		if (req)
			json_object_object_add(req, "op", json_object_new_string("attach"));
	}
	if (!req || !(jobs = sandbox_procs_keep(s))) {
		json_object_put(req);
		return NULL;
	}
	json_object_object_add(req, "jobs", jobs);
	json_object_object_add(req, "session", json_object_new_int64((int64_t)agent_session(s->agent)));
	return req;
}

static int attach_call(struct sandbox *s, bool identity, unsigned timeout_ms, int (*then)(void *arg), void *arg)
{
	_cleanup_json_ json_object *resp = NULL;
	struct attach_req a = { s, identity };
	int r = agent_call_resend(s->agent, attach_build, &a, timeout_ms, then, arg, &resp);

	if (r == 0)
		sandbox_procs_attached(s, s->agent, resp);
	return r;
}

/*
 * Hostname, environment, fresh entropy and the clock: what makes this clone
 * itself. then(arg), if given, runs once the request is sent.
 */
int sandbox_attach(struct sandbox *s, unsigned timeout_ms, int (*then)(void *arg), void *arg)
{
	return attach_call(s, true, timeout_ms, then, arg);
}

/*
 * A re-adopted running guest: only its processes (every field of an attach
 * is optional; the identity stays as it is).
 */
int sandbox_reattach(struct sandbox *s, unsigned timeout_ms)
{
	return attach_call(s, false, timeout_ms, NULL, NULL);
}

/*
 * "ready_tcp_port": readiness also needs a TCP connect from the host to that
 * guest port (through the slot's forwarding), retried every 20 ms.
 */
static int job_tcp_ready(struct sandbox *s)
{
	struct engine *e = s->e;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	uint64_t deadline = now_ns() + (uint64_t)AGENT_RESTORE_TIMEOUT_MS * 1000000;
	unsigned port;

	pthread_mutex_lock(&e->lock);
	port = s->tpl->cfg.ready_tcp_port;
	pthread_mutex_unlock(&e->lock);
	if (!port || !s->net)
		return 0;
	sa.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, s->net->addr, &sa.sin_addr) != 1)
		return -EINVAL;
	for (;;) {
		_cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (fd < 0)
			return -errno;
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		if (atomic_load(&s->cancel))
			return -ECANCELED;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		poll(NULL, 0, 20);
	}
	sb_lap(s, "tcp");
	return 0;
}

int sandbox_configure_image(struct sandbox *s)
{
	_cleanup_json_ json_object *o = NULL;
	struct image_config c = { 0 };
	int r;

	pthread_mutex_lock(&s->e->lock);
	if (s->tpl->has_build)
		o = image_config_json(&s->tpl->build.cfg);
	r = s->tpl->has_build && !o ? -ENOMEM : 0;
	pthread_mutex_unlock(&s->e->lock);
	if (r < 0 || !o)
		return r;
	r = image_config_from_json(o, &c);
	if (r == 0)
		r = template_agent_configure(s->agent, &c);
	image_config_clear(&c);
	return r;
}

/* The identity attach; a cold boot's guest also gets the image's defaults (they are not in its memory). */
static int job_attach(struct job *j)
{
	int r = sandbox_attach(j->s, j->restore ? AGENT_RESTORE_TIMEOUT_MS : AGENT_BOOT_TIMEOUT_MS, NULL, NULL);

	if (r == 0 && !j->restore)
		r = sandbox_configure_image(j->s);
	return r;
}

/* A restored guest prints nothing until it does something: say where it came from. */
void sandbox_console_note(struct sandbox *s, const char *how)
{
	_cleanup_close_ int fd = open(s->console_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	char line[256];
	int n;

	n = snprintf(line, sizeof(line), "emberfs: %s %s, snapshot of template %s (identity %.16s)\r\n", s->name,
		     how, s->tpl->name, s->identity);
	if (fd >= 0 && n > 0 && write(fd, line, (size_t)n) < 0)
		log_debug("console note: %s", strerror(errno));
}

static int job_paths(struct job *j)
{
	struct sandbox *s = j->s;

	j->state_fd = -1;
	j->ram_fd = -1;
	j->mem = vm_file(s->dir, VM_MEM);
	j->disk = vm_file(s->dir, VM_DISK);
	if (!j->mem || !j->disk)
		return -ENOMEM;
	/* the record first (no VMM yet), then what it accounts for */
	if (mkdir_p(s->dir, 0700) < 0 || sandbox_record_save(s) < 0 ||
	    mkdir_p(s->rundir, 0700) < 0)
		return -EIO;
	return 0;
}

/* The slot (a warm one or a spare) claimed for s, as its status shows it. e->lock held, or s not published yet. */
static void slot_note(struct sandbox *s, const struct slot *sl)
{
	s->slot_id = sl->id;
	s->slot_spare = sl->state == SLOT_SPARE;
	s->slot_age_ms = ns_to_ms(now_ns() - sl->warm_ns);
	s->slot_prepare_ms = sl->spare_ms + timings_total(&sl->timings); /* a promoted spare's making counts */
}

/*
 * The sandbox's files live in its warm slot's directories if it has one (the
 * VMM has them open), else in its own. e->lock held, or s not published yet.
 */
static int sandbox_set_dirs(struct sandbox *s, const struct slot *sp)
{
	char idbuf[32];
	char *dir, *rundir, *con;

	snprintf(idbuf, sizeof(idbuf), "%" PRIu64, s->id);
	dir = sp ? strdup(sp->dir) : strjoin(s->e->store.root, "/vms/", idbuf, NULL);
	rundir = sp ? strdup(sp->rundir) : strjoin(s->e->state_dir, "/run/", idbuf, NULL);
	con = dir ? vm_file(dir, VM_CONSOLE) : NULL;
	if (!dir || !rundir || !con) {
		free(dir);
		free(rundir);
		free(con);
		return -ENOMEM;
	}
	free(s->dir);
	free(s->rundir);
	free(s->console_path);
	s->dir = dir;
	s->rundir = rundir;
	s->console_path = con;
	return 0;
}

static void create_publish(void *arg, struct vmm *v, struct agent_client *ac)
{
	sandbox_publish(((struct job *)arg)->s, v, ac);
}

/* A create's phases: its timings, the record, the engine hooks (engine_hooks.create_phase). */
static void create_event(void *arg, enum vm_event ev)
{
	struct job *j = arg;
	struct sandbox *s = j->s;

	switch (ev) {
	case VM_EV_NET:
	case VM_EV_NET_BUILT:
		sb_lap(s, ev == VM_EV_NET_BUILT ? "net_build" : "net");
		break;
	case VM_EV_SPAWNED:
		sandbox_record_save(s);
		sandbox_phase(s, "spawn");
		break;
	case VM_EV_CONNECTED:
		sandbox_phase(s, "connected");
		sb_lap(s, "spawn");
		if (j->restore)
			sandbox_console_note(s, s->fork_of ? "forked" : "restored");
		break;
	case VM_EV_PAGES:
		sb_lap(s, "pages");
		break;
	case VM_EV_LOADING:
		sandbox_phase(s, "loading");
		break;
	case VM_EV_RESTORED:
		sb_lap(s, "restore");
		sandbox_phase(s, "loaded");
		break;
	}
}

/*
 * The create's VMM (restored from j->state_fd or booted cold; or `spare`, a
 * VMM spawned on the snapshot's clones and waiting for its state) up to a
 * ready guest: vm_start (vm_load for a spare), then the agent's attach and
 * the ready check.
 */
static int job_start(struct job *j, struct vmm *spare, const char **step)
{
	struct sandbox *s = j->s;
	_cleanup_free_ char *why = NULL;
	const struct vm_launch l = { .cfg = &j->cfg, .name = s->name, .dir = s->dir, .rundir = s->rundir,
				     .disk = j->disk, .state_fd = j->restore ? j->state_fd : -1,
				     .ram_fd = j->restore ? j->ram_fd : -1, .load_fd = spare && s->fork_of ? j->state_fd : -1,
				     .delta = j->restore ? j->delta : NULL, .delta_fd = j->delta_fd, .net = &s->net,
				     .egress = &s->settings.egress, .cancel = &s->cancel, .publish = create_publish, .event = create_event, .arg = j };
	int r = spare ? vm_load(s->e, &l, spare, true, step) : vm_start(s->e, &l, step, &why);

	if (why)
		log_warn("sandbox %s/%s: %s: %s", s->tpl->name, s->name, *step, why);
	if (r < 0)
		return r;
	sandbox_phase(s, "agent");
	r = job_attach(j);
	sb_lap(s, j->restore ? "agent" : "boot");
	if (r == 0) {
		*step = "tcp";
		r = job_tcp_ready(s);
	}
	return r;
}

/*
 * Activation of the warm slot claimed in mkdir: its guest is restored, warmed
 * up and paused, its agent connected. Resume it and attach identity; the
 * attach's answer is the readiness. The slot's directories are the sandbox's.
 */
static int warm_resume(void *arg)
{
	struct sandbox *s = arg;
	int r = vmm_resume(s->vmm, QMP_TIMEOUT_MS);

	sb_lap(s, "resume");
	return r;
}

/* Restored from the template's snapshot: its start command runs in it (procs/start). e->lock held. */
static void restored_start(struct sandbox *s)
{
	if (s->tpl->has_bake && s->tpl->bake.start.cmd)
		sandbox_procs_add_start(s, &s->tpl->bake.start);
}

/*
 * The claimed slot's (or spare's) process, agent, network slot and
 * directories become the sandbox's, under its own egress policy (the slot
 * had the template's default), and its record names the sandbox before the
 * guest runs for it.
 */
static int slot_adopt(struct job *j, const char **step)
{
	struct sandbox *s = j->s;
	struct engine *e = s->e;
	struct slot *sl;
	int r;

	j->restore = true;
	pthread_mutex_lock(&e->lock);
	if (!s->fork_of) /* a fork's child runs what its parent ran */
		restored_start(s);
	sl = TAKE_PTR(s->slot);
	s->vmm = TAKE_PTR(sl->vmm);
	s->agent = TAKE_PTR(sl->agent);
	s->net = TAKE_PTR(sl->net);
	s->vmm_pid = vmm_pid(s->vmm);
	s->clone_method = sl->clone_method;
	if (atomic_load(&s->cancel)) {
		vmm_kill(s->vmm);
		if (s->agent)
			agent_shutdown(s->agent);
	}
	pthread_mutex_unlock(&e->lock);
	free(sl->dir);
	free(sl->rundir);
	free(sl);
	*step = "egress";
	if ((r = sandbox_egress_apply(s, NULL)) < 0)
		return r;
	sandbox_record_save(s);
	sandbox_phase(s, "claimed");
	return 0;
}

/*
 * A restore on the spare claimed in mkdir: its VMM was spawned on clones of
 * the snapshot and waits for the state; load it, attach, check readiness.
 */
static int run_spare(struct job *j, const char **step)
{
	struct sandbox *s = j->s;
	int r = slot_adopt(j, step);

	if (r < 0)
		return r;
	sandbox_console_note(s, "restored (on a spare VMM)");
	return job_start(j, s->vmm, step);
}

static int run_warm(struct job *j, const char **step)
{
	struct sandbox *s = j->s;
	int r;

	if ((r = slot_adopt(j, step)) < 0)
		return r;
	/* the attach waits in the paused guest's queue; the resume starts it */
	*step = "activation (resume, attach)";
	r = sandbox_attach(j->s, AGENT_WARM_TIMEOUT_MS, warm_resume, s);
	if (r == 0)
		sb_lap(s, "agent");
	if (r == 0) {
		*step = "tcp";
		r = job_tcp_ready(s);
	}
	if (r == 0)
		sandbox_console_note(s, "activated from warm slot");
	return r;
}

/*
 * A slot that fails activation (its VMM died or stopped answering between
 * the claim's health check and the resume) is dropped with its files, and
 * the create takes the restore path in the sandbox's own directories, with
 * the reason.
 */
static int warm_fallback(struct sandbox *s, bool spare, int err, const char *step)
{
	struct engine *e = s->e;
	struct vmm *v;
	struct agent_client *ac;
	struct netslot *ns;
	_cleanup_free_ char *dir = NULL, *rundir = NULL;
	char *why = NULL;
	int r;

	pthread_mutex_lock(&e->lock);
	v = TAKE_PTR(s->vmm);
	ac = TAKE_PTR(s->agent);
	ns = TAKE_PTR(s->net);
	s->vmm_pid = 0;
	s->path = s->fork_of ? "fork" : "restore";
	if (asprintf(&why, "%s %" PRIu64 " failed at %s: %s", spare ? "spare" : "warm slot", s->slot_id, step,
		     strerror(-err)) < 0)
		why = NULL;
	free(s->path_reason);
	s->path_reason = why;
	s->slot_id = 0;
	s->slot_spare = false;
	s->tpl->pool_stats.recycled_dead++; /* it failed its activation: as good as dead */
	dir = strdup(s->dir);
	rundir = strdup(s->rundir);
	r = sandbox_set_dirs(s, NULL);
	pthread_mutex_unlock(&e->lock);
	log_warn("sandbox %s/%s: %s; restoring instead", s->tpl->name, s->name, why ? why : "warm slot failed");
	vm_release(e, &v, &ac, &ns);
	if (rundir)
		rm_rf(rundir);
	if (dir)
		rm_rf(dir);
	return r;
}

/*
 * A fork's child on the spare just claimed, whose directories are the
 * child's now (architecture.md, "Spares"): the spare's VMM maps the base
 * the parent's memory is a delta over, and holds its own disk and console.
 * The files the parent made stay in the child's own directory until it
 * runs (a failure goes back to them): their disk cloned into the spare's
 * disk file (the inode its VMM holds), their memory file linked in place of
 * the spare's (its VMM does not map it); then the load (vm_load: the
 * parent's pages, its device state).
 */
static int run_fork_spare(struct job *j, const char **step)
{
	struct sandbox *s = j->s;
	struct engine *e = s->e;
	_cleanup_free_ char *smem = vm_file(s->dir, VM_MEM), *sdisk = vm_file(s->dir, VM_DISK);
	enum clone_method m;
	int r;

	if ((r = slot_adopt(j, step)) < 0)
		return r;
	if (!smem || !sdisk)
		return -ENOMEM;
	*step = "fork on a spare (disk)";
	if (j->disk && (r = store_clone_into(&e->store, j->disk, sdisk, &m)) < 0)
		return r;
	*step = "fork on a spare (memory)";
	if ((unlink(smem) < 0 && errno != ENOENT) || link(j->mem, smem) < 0)
		return -errno;
	sandbox_console_note(s, "forked (on a spare VMM)");
	return job_start(j, s->vmm, step);
}

/*
 * A fork's child: the parent's ctl write saved its device state and cloned
 * its memory and disk into this sandbox's directory; restore them here. A
 * parent that ran on its template's base (a clone of the snapshot) left a
 * delta over it: the child runs on the same base with the parent's pages
 * given to it, in a spare if there is one, else in a VMM spawned for it;
 * otherwise in a VMM spawned on its memory file.
 */
static int run_fork(struct job *j, const char **step)
{
	struct sandbox *s = j->s;
	struct engine *e = s->e;
	_cleanup_free_ char *state = strjoin(s->dir, "/fork.state", NULL), *own = NULL, *own_run = NULL;
	struct slot *dead = NULL;
	int r;

	*step = "fork (the parent's snapshot)";
	pthread_mutex_lock(&e->lock);
	while (!s->fork_ready && !atomic_load(&s->cancel))
		pthread_cond_wait(&s->cond, &e->lock);
	r = atomic_load(&s->cancel) ? -ECANCELED : s->fork_result;
	if (r == 0) {
		timings_lap(&s->timings, "parent");
		r = template_config_vm(s->tpl, &j->cfg);
		memcpy(s->identity, s->tpl->identity, 65);
		s->clone_method = clone_method_name(e->store.reflink ? CLONE_REFLINK : CLONE_COPY);
	}
	pthread_mutex_unlock(&e->lock);
	if (r < 0 || !state || (r = job_paths(j)) < 0)
		return r < 0 ? r : -ENOMEM;
	if (!j->cfg.rootfs) {
		free(j->disk);
		j->disk = NULL;
	}
	j->restore = true;
	j->state_fd = open(state, O_RDONLY | O_CLOEXEC);
	if (j->state_fd < 0)
		return -errno;
	/* on the base only with the pages given: a base alone would be the template's memory, not the parent's */
	if (template_delta_base(s->tpl, s->fork_delta, &j->ram_fd) == 0) {
		if ((j->delta_fd = open(j->mem, O_RDONLY | O_CLOEXEC)) >= 0) {
			j->delta = s->fork_delta;
		} else {
			close(j->ram_fd);
			j->ram_fd = -1;
		}
	}
	pthread_mutex_lock(&e->lock);
	if (j->delta && (s->slot = spare_claim(s->tpl, &dead))) {
		slot_note(s, s->slot);
		if (!(own = strdup(s->dir)) || !(own_run = strdup(s->rundir)) || sandbox_set_dirs(s, s->slot) < 0)
			r = -ENOMEM; /* the spare is freed with the sandbox */
	}
	pthread_mutex_unlock(&e->lock);
	slots_free_list(e, dead);
	if (r < 0)
		return r;
	if (s->slot) { /* the spare's directories are the child's now; j->mem and j->disk still name its own files */
		r = run_fork_spare(j, step);
		if (r == 0 || atomic_load(&s->cancel)) {
			rm_rf(own); /* what the parent made is the spare's now, or was copied there */
			rm_rf(own_run);
			return r;
		}
		if ((r = warm_fallback(s, true, r, *step)) < 0)
			return r;
		/* back in its own directory, as the parent left it; the state read from the start again */
		close(j->state_fd);
		if ((j->state_fd = open(state, O_RDONLY | O_CLOEXEC)) < 0 || sandbox_record_save(s) < 0)
			return j->state_fd < 0 ? -errno : -EIO;
	}
	r = job_start(j, NULL, step);
	if (r == 0)
		unlink(state);
	return r;
}

static int run_create(struct job *j, const char **step)
{
	struct sandbox *s = j->s;
	struct engine *e = s->e;
	bool cold_held = false;
	int r;

	if (s->fork_of)
		return run_fork(j, step);
	if (s->slot) {
		bool spare = s->slot->state == SLOT_SPARE;

		r = spare ? run_spare(j, step) : run_warm(j, step);
		if (r == 0 || atomic_load(&s->cancel) || (r = warm_fallback(s, spare, r, *step)) < 0)
			return r;
	}
	*step = "prepare";
	if ((r = job_paths(j)) < 0)
		return r;
	job_decide(j);
	if (!j->cfg.rootfs) {
		free(j->disk);
		j->disk = NULL;
	}
	if (j->restore) {
		*step = "clone";
		job_clone_snapshot(j);
		sb_lap(s, "clone");
	}
	if (j->restore) {
		pthread_mutex_lock(&e->lock);
		restored_start(s);
		pthread_mutex_unlock(&e->lock);
	}
	if (!j->restore && j->cfg.derived_from) {
		/* its state came from a sandbox: booting the base image would silently lose it */
		*step = "restore (a template made from a sandbox never boots cold; its snapshot is unusable)";
		return -EIO;
	}
	if (!j->restore && !j->cfg.rootfs && (j->cfg.image || template_has_dockerfile(s->tpl))) {
		/* its root disk is what a build makes: booting without one would run the initramfs, not the image */
		*step = "prepare (the template's root disk is built from its image or Dockerfile and no build succeeded: "
			"bake it)";
		return -EIO;
	}
	if (!j->restore) {
		/* The one reserved place for cold work: cold boots queue rather than race. */
		if ((r = cold_acquire(e, &s->cancel)) < 0)
			return r;
		cold_held = true;
		sb_lap(s, "queue_cold");
		*step = "prepare";
		r = job_prepare_cold(j);
		sb_lap(s, "prepare");
	}
	pthread_mutex_lock(&e->lock);
	s->clone_method = j->disk || j->restore ? clone_method_name(j->method) : "none";
	pthread_mutex_unlock(&e->lock);
	if (r == 0)
		r = job_start(j, NULL, step);
	if (cold_held)
		cold_release(e);
	return r;
}

/* Booted cold: the template's start command is started now, as procs/start (the snapshot's is not there). */
static void cold_start(struct sandbox *s)
{
	_cleanup_free_ char *cmd = NULL;
	struct proc *p = NULL;
	bool cold;

	pthread_mutex_lock(&s->e->lock);
	cold = s->path && strcmp(s->path, "cold") == 0;
	if (cold && s->tpl->cfg.start)
		cmd = strdup(s->tpl->cfg.start);
	pthread_mutex_unlock(&s->e->lock);
	if (!cmd || sandbox_proc_create(s, "start", &p) < 0)
		return;
	if (proc_start(p, cmd, strlen(cmd)) < 0)
		log_warn("sandbox %s/%s: the start command did not start", s->tpl->name, s->name);
	proc_unref(p);
}

static void *sandbox_main(void *arg)
{
	struct sandbox *s = arg;
	struct engine *e = s->e;
	struct job j = { .s = s, .state_fd = -1, .ram_fd = -1, .delta_fd = -1 };
	const char *step = "start";
	struct waiter *w;
	int r;

	pthread_mutex_lock(&e->lock);
	timings_lap(&s->timings, "queue");
	pthread_mutex_unlock(&e->lock);
	r = atomic_load(&s->cancel) ? -ECANCELED : run_create(&j, &step);
	job_clear(&j);
	if (r < 0) {
		_cleanup_free_ char *log = vm_file(s->dir, VM_LOG);
		/* the supervisor is not running yet: this thread owns the VMM's waits */
		_cleanup_free_ char *cause = s->vmm && !atomic_load(&s->cancel) ?
						     vmm_death_cause(e, s->vmm, r, s->console_path, log) : NULL;

		if (!atomic_load(&s->cancel) && cause) {
			/* the VMM died under the create: say why, not what the next call saw */
			sandbox_fail(s, "create failed at %s (see console and %s/vmm.log): %s", step, s->dir, cause);
		} else if (!atomic_load(&s->cancel)) {
			sandbox_fail(s, "create failed at %s: %s (see console and %s/vmm.log)", step, strerror(-r), s->dir);
		}
		if (s->vmm)
			vmm_kill(s->vmm);
	} else {
		pthread_mutex_lock(&e->lock);
		w = apply_event(s, SB_EV_CREATED);
		s->active_ns = now_ns();
		if (w || s->state == SB_READY) {
			struct pool_stats *ps = &s->tpl->pool_stats;

			double ms = timings_total(&s->timings);

			if (strcmp(s->path, "warm") == 0) {
				ps->served_warm++;
				hist_add(&e->hist[H_CREATE_WARM], ms);
			} else if (strcmp(s->path, "restore") == 0) {
				ps->served_restore++;
				ps->served_spare += s->slot_spare;
				hist_add(&e->hist[H_CREATE_RESTORE], ms);
			} else if (strcmp(s->path, "cold") == 0) {
				ps->served_cold++;
				hist_add(&e->hist[H_CREATE_COLD], ms);
			} else {
				ps->forks_spare += s->slot_spare;
				hist_add(&e->hist[H_CREATE_FORK], ms);
			}
		}
		pthread_mutex_unlock(&e->lock);
		/* on disk before anyone is told: a restart from here on re-adopts it */
		sandbox_record_save(s);
		log_info("sandbox %s/%s ready via %s in %.1f ms", s->tpl->name, s->name, s->path,
			 timings_total(&s->timings));
		run_waiters(w, 0);
		cold_start(s);
	}
	if (r < 0) {
		if (s->vmm)
			vmm_wait_exit(s->vmm);
		return NULL;
	}
	/* Supervise: the VMM exiting on its own fails the sandbox, with the reason. */
	sandbox_supervise(s);
	return NULL;
}

int engine_sandbox_create(struct engine *e, struct template *t, const char *name, struct sandbox **ret)
{
	return sandbox_create_internal(e, t, name, NULL, NULL, ret);
}

int sandbox_create_internal(struct engine *e, struct template *t, const char *name, struct sandbox *fork_src,
			    struct sandbox_settings *init, struct sandbox **ret)
{
	enum miss_reason miss = MISS_EMPTY;
	_cleanup_free_ char *full = NULL;
	struct sandbox *s, **n;
	struct slot *dead = NULL;
	struct timespec now;
	int r = name_validate(name);

	if (r < 0)
		return r;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	atomic_init(&s->refs, 2); /* the template's list and the caller */
	s->id = atomic_fetch_add(&e->next_id, 1);
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->e = e;
	s->state = SB_CREATING;
	pthread_cond_init(&s->cond, NULL);
	pthread_mutex_init(&s->op_lock, NULL);
	pthread_mutex_init(&s->record_lock, NULL);
	timings_start(&s->timings);
	clock_gettime(CLOCK_REALTIME, &now);
	s->created_realtime_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
	s->ckdir_id = atomic_fetch_add(&e->next_id, 1);
	if ((r = machine_id_new(s->machine_id)) < 0 || (r = sandbox_set_dirs(s, NULL)) < 0)
		goto free;
	if (fork_src) {
		s->fork_of = strdup(fork_src->name);
		s->path = "fork";
		if (!s->fork_of || asprintf(&s->path_reason, "fork of %s", fork_src->name) < 0) {
			r = -ENOMEM;
			goto free;
		}
	}
	pthread_mutex_lock(&e->lock);
	if (e->shutting_down || t->removed)
		r = -ENOENT;
	else if (e->n_sandboxes >= e->opts.max_sandboxes)
		r = -ENOSPC;
	else if (!fork_src && engine_store_admit(e, t->cfg.mem_mib, &full) < 0)
		r = -ENOSPC; /* a fork's parent checks for its child */
	/* names are unique across templates: live/NAME and the guest's network names use them */
	for (size_t k = 0; r == 0 && k < e->n_templates; k++)
		for (size_t i = 0; r == 0 && i < e->templates[k]->n_sandboxes; i++)
			if (strcmp(e->templates[k]->sandboxes[i]->name, name) == 0)
				r = -EEXIST;
	if (r == 0 && !(n = realloc(t->sandboxes, (t->n_sandboxes + 1) * sizeof(*n))))
		r = -ENOMEM;
	else if (r == 0)
		t->sandboxes = n;
	if (r == 0 && !fork_src && t->state == TPL_READY && (s->slot = slot_claim(t, &dead, &miss))) {
		/* the reservation: a warm slot of this exact identity, or none and a restore later */
		slot_note(s, s->slot);
		r = sandbox_set_dirs(s, s->slot);
		s->path = "warm";
		memcpy(s->identity, s->slot->identity, 65);
		timings_lap(&s->timings, "claim");
	} else if (r == 0 && !fork_src && t->state == TPL_READY) {
		t->pool_stats.misses++;
		if ((s->slot = spare_claim(t, &dead))) {
			/* no warm slot: a VMM already spawned on clones of the snapshot restores it */
			slot_note(s, s->slot);
			r = sandbox_set_dirs(s, s->slot);
			s->path = "restore";
			memcpy(s->identity, s->slot->identity, 65);
			timings_lap(&s->timings, "claim");
		}
	} else if (r == 0 && !fork_src) {
		miss = t->state == TPL_STALE ? MISS_STALE : MISS_NO_SNAPSHOT;
	}
	if (r == 0 && !fork_src) {
		/* a restore on a spare is still a miss of the warm pool */
		bool warm = s->slot && !s->slot_spare;

		pool_note_create(t, warm, miss);
		if (!warm)
			s->miss_reason = miss_reason_name(miss);
	}
	if (r == 0)
		r = settings_init(s, t, fork_src, init);
	if (r == 0)
		r = sandbox_index(s);
	if (r == 0) {
		atomic_fetch_add(&t->refs, 1);
		s->tpl = t;
		if (thread_create(&s->thread, NULL, sandbox_main, s) != 0) {
			sandbox_unindex(s);
			r = -EAGAIN;
		} else {
			s->thread_started = true;
			t->sandboxes[t->n_sandboxes++] = s;
			e->n_sandboxes++;
			sandbox_set_state(s, SB_CREATING); /* the event */
		}
	}
	pthread_mutex_unlock(&e->lock);
	slots_free_list(e, dead);
	if (full)
		log_warn("sandbox %s/%s refused: %s", t->name, name, full);
	if (r < 0)
		goto free;
	*ret = s;
	return 0;
free:
	atomic_store(&s->refs, 1);
	sandbox_unref(s);
	return r;
}

int engine_sandbox_destroy(struct engine *e, struct template *t, const char *name)
{
	return sandbox_destroy_why(e, t, name, NULL);
}

int sandbox_destroy_why(struct engine *e, struct template *t, const char *name, const char *why)
{
	struct sandbox *s = NULL;
	struct waiter *w = NULL;
	int next;

	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < t->n_sandboxes && !s; i++)
		if (strcmp(t->sandboxes[i]->name, name) == 0)
			s = t->sandboxes[i];
	next = s ? sandbox_state_next(s->state, SB_EV_DESTROY) : -ENOENT;
	if (next < 0) {
		pthread_mutex_unlock(&e->lock);
		return -ENOENT; /* gone, or another rmdir is on it */
	}
	sandbox_set_state(s, SB_DESTROYING);
	w = TAKE_PTR(s->waiters);
	pthread_cond_broadcast(&s->cond);
	pool_wake_all(e);
	atomic_store(&s->cancel, true);
	if (s->vmm)
		vmm_kill(s->vmm);
	agent_shutdown(s->agent);
	pthread_mutex_unlock(&e->lock);
	cold_wake(e);

	run_waiters(w, -EIO);
	sandbox_procs_free(s);
	/* a lifecycle operation in flight ends fast (its VMM is killed, cancel is set): wait for it */
	pthread_mutex_lock(&s->op_lock);
	pthread_mutex_unlock(&s->op_lock);
	if (s->thread_started)
		pthread_join(s->thread, NULL);
	/* a slot claimed in mkdir but never activated (rmdir came first) dies with the sandbox */
	slot_free(e, TAKE_PTR(s->slot));
	/* the VMM has exited (the thread reaped it): its network slot is free */
	vm_release(e, &s->vmm, NULL, &s->net);
	/* the record's directory is the anchor: made first, removed last */
	sandbox_record_drop(s);
	rm_rf(s->rundir);
	rm_rf(s->dir);

	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < t->n_sandboxes; i++)
		if (t->sandboxes[i] == s) {
			memmove(t->sandboxes + i, t->sandboxes + i + 1, (t->n_sandboxes - i - 1) * sizeof(s));
			t->n_sandboxes--;
			break;
		}
	sandbox_unindex(s);
	e->n_sandboxes--;
	{
		json_object *ev = json_object_new_object();

		json_object_object_add(ev, "type", json_object_new_string("sandbox"));
		json_object_object_add(ev, "template", json_object_new_string(t->name));
		json_object_object_add(ev, "name", json_object_new_string(s->name));
		json_object_object_add(ev, "state", json_object_new_string("destroyed"));
		if (why)
			json_object_object_add(ev, "reason", json_object_new_string(why));
		engine_emit(e, s->id, ev);
	}
	pthread_mutex_unlock(&e->lock);
	log_info("sandbox %s/%s destroyed", t->name, name);
	sandbox_unref(s);
	return 0;
}

int sandbox_index(struct sandbox *s)
{
	struct engine *e = s->e;

	if (idtable_put(&e->sandboxes_by_id, s->id, s) < 0)
		return -ENOMEM;
	if (sandbox_procs_index(s) < 0) {
		idtable_del(&e->sandboxes_by_id, s->id);
		return -ENOMEM;
	}
	if (sandbox_checkpoints_index(s) < 0) {
		sandbox_procs_unindex(s);
		idtable_del(&e->sandboxes_by_id, s->id);
		return -ENOMEM;
	}
	s->indexed = true;
	return 0;
}

void sandbox_unindex(struct sandbox *s)
{
	struct engine *e = s->e;

	if (!s->indexed)
		return;
	sandbox_checkpoints_unindex(s);
	sandbox_procs_unindex(s);
	idtable_del(&e->sandboxes_by_id, s->id);
	s->indexed = false;
}

struct sandbox *template_sandbox_get(struct template *t, const char *name)
{
	struct sandbox *s = NULL;

	pthread_mutex_lock(&t->e->lock);
	for (size_t i = 0; i < t->n_sandboxes && !s; i++)
		if (strcmp(t->sandboxes[i]->name, name) == 0)
			s = t->sandboxes[i];
	if (s)
		atomic_fetch_add(&s->refs, 1);
	pthread_mutex_unlock(&t->e->lock);
	return s;
}

char **template_sandbox_list(struct template *t)
{
	char **v;

	pthread_mutex_lock(&t->e->lock);
	v = calloc(t->n_sandboxes + 1, sizeof(char *));
	for (size_t i = 0; v && i < t->n_sandboxes; i++)
		v[i] = strdup(t->sandboxes[i]->name);
	pthread_mutex_unlock(&t->e->lock);
	return v;
}

/* ---- files ---- */

char *sandbox_render_status(struct sandbox *s)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	struct engine *e = s->e;
	char *txt;

	pthread_mutex_lock(&e->lock);
	json_object_object_add(o, "name", json_object_new_string(s->name));
	json_object_object_add(o, "template", json_object_new_string(s->tpl->name));
	json_object_object_add(o, "state", json_object_new_string(sandbox_state_name(s->state)));
	json_object_object_add(o, "path", s->path ? json_object_new_string(s->path) : NULL);
	json_object_object_add(o, "path_reason", s->path_reason ? json_object_new_string(s->path_reason) : NULL);
	json_object_object_add(o, "pool_miss", s->miss_reason ? json_object_new_string(s->miss_reason) : NULL);
	json_object_object_add(o, "identity", json_object_new_string(s->identity));
	json_object_object_add(o, "backend", json_object_new_string(s->vmm ? s->vmm->ops->name : s->tpl->cfg.backend));
	json_object_object_add(o, "accel", json_object_new_string(e->accel));
	json_object_object_add(o, "clone", s->clone_method ? json_object_new_string(s->clone_method) : NULL);
	if (s->slot_id) {
		json_object *sl = json_object_new_object();

		json_object_object_add(sl, "id", json_object_new_int64((int64_t)s->slot_id));
		json_object_object_add(sl, "kind", json_object_new_string(s->slot_spare ? "spare" : "warm"));
		json_object_object_add(sl, "age_ms", ms_json(s->slot_age_ms));
		json_object_object_add(sl, "prepare_ms", ms_json(s->slot_prepare_ms));
		json_object_object_add(o, "slot", sl);
	} else {
		json_object_object_add(o, "slot", NULL);
	}
	json_object_object_add(o, "vmm_pid", s->vmm_pid ? json_object_new_int(s->vmm_pid) : NULL);
	if (s->net) {
		json_object *n = json_object_new_object();

		/* address: where the host reaches the guest (every port is forwarded to it) */
		json_object_object_add(n, "address", json_object_new_string(s->net->addr));
		json_object_object_add(n, "host_address", json_object_new_string(s->net->host_addr));
		json_object_object_add(n, "guest_address", json_object_new_string(NETPOOL_GUEST_ADDR));
		json_object_object_add(n, "netns", json_object_new_string(s->net->netns));
		json_object_object_add(n, "host_if", json_object_new_string(s->net->host_if));
		json_object_object_add(o, "net", n);
	} else {
		json_object_object_add(o, "net", NULL);
	}
	json_object_object_add(o, "created_at_unix_ms", json_object_new_int64((int64_t)s->created_realtime_ms));
	json_object_object_add(o, "timings", timings_json(&s->timings));
	json_object_object_add(o, "ready_ms", s->state != SB_CREATING && s->state != SB_DESTROYING ?
						 json_object_new_double(timings_total(&s->timings)) : NULL);
	json_object_object_add(o, "error", s->error ? json_object_new_string(s->error) : NULL);
	json_object_object_add(o, "sleeping_since_unix_ms", s->sleeping_since_ms ?
				   json_object_new_int64((int64_t)s->sleeping_since_ms) : NULL);
	json_object_object_add(o, "last_op", s->last_op ? json_object_new_string(s->last_op) : NULL);
	json_object_object_add(o, "last_op_ms", s->last_op ? ms_json(s->last_op_ms) : NULL);
	json_object_object_add(o, "hibernate_ms", s->hibernate_ms > 0 ? ms_json(s->hibernate_ms) : NULL);
	json_object_object_add(o, "wake_ms", s->wake_ms > 0 ? ms_json(s->wake_ms) : NULL);
	json_object_object_add(o, "wakes", json_object_new_int64((int64_t)s->wakes));
	json_object_object_add(o, "idle_timeout_s", json_object_new_int((int)s->tpl->cfg.idle_timeout_s));
	json_object_object_add(o, "idle_ms", s->state == SB_READY && s->active_ns ?
				 ms_json(ns_to_ms(now_ns() - s->active_ns)) : NULL);
	json_object_object_add(o, "idle_hibernations", json_object_new_int64((int64_t)s->idle_hibernations));
	json_object_object_add(o, "ctl_error", s->ctl_error ? json_object_new_string(s->ctl_error) : NULL);
	json_object_object_add(o, "settings_error", s->settings_error ? json_object_new_string(s->settings_error) : NULL);
	json_object_object_add(o, "adoptions", json_object_new_int((int)s->adoptions));
	json_object_object_add(o, "console_dropped_bytes", json_object_new_int64((int64_t)s->console_dropped));
	pthread_mutex_unlock(&e->lock);
	sandbox_checkpoints_status(s, o);
	txt = strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE),
		      "\n", NULL);
	return txt;
}

char *sandbox_render_timings(struct sandbox *s)
{
	char *txt;

	pthread_mutex_lock(&s->e->lock);
	txt = timings_lines(&s->timings);
	pthread_mutex_unlock(&s->e->lock);
	return txt;
}

/* ---- exec ---- */

void exec_result_clear(struct exec_result *r)
{
	free(r->out);
	free(r->err);
	free(r->error);
	memset(r, 0, sizeof(*r));
}

struct exec_job {
	struct sandbox *s;
	json_object *req;
	struct exec_result *res;
	engine_done_fn done;
	void *arg;
};

static int decode_field(json_object *resp, const char *key, uint8_t **out, size_t *len)
{
	json_object *v;
	ssize_t n;

	if (!json_object_object_get_ex(resp, key, &v) || !json_object_is_type(v, json_type_string))
		return -EPROTO;
	n = base64_decode(json_object_get_string(v), (size_t)json_object_get_string_len(v), out);
	if (n < 0)
		return (int)n;
	*len = (size_t)n;
	return 0;
}

static int exec_parse(json_object *resp, struct exec_result *res)
{
	json_object *v;
	int r;

	if ((r = decode_field(resp, "stdout", &res->out, &res->out_len)) < 0 ||
	    (r = decode_field(resp, "stderr", &res->err, &res->err_len)) < 0)
		return r;
	res->exit_code = json_object_object_get_ex(resp, "exit_code", &v) ? json_object_get_int(v) : -1;
	res->signal = json_object_object_get_ex(resp, "signal", &v) ? json_object_get_int(v) : 0;
	res->truncated = json_object_object_get_ex(resp, "truncated", &v) && json_object_get_boolean(v);
	res->timed_out = json_object_object_get_ex(resp, "timed_out", &v) && json_object_get_boolean(v);
	res->duration_ms = json_object_object_get_ex(resp, "duration_ms", &v) ? json_object_get_double(v) : 0;
	return 0;
}

/* Waits for a decided state (the exec path waits for readiness by itself). */
static int wait_ready(struct sandbox *s)
{
	int r;

	pthread_mutex_lock(&s->e->lock);
	while (s->state == SB_CREATING)
		pthread_cond_wait(&s->cond, &s->e->lock);
	r = s->state == SB_READY || s->state == SB_PAUSED || s->state == SB_HIBERNATED ? 0 : -EIO;
	pthread_mutex_unlock(&s->e->lock);
	return r; /* stopped: EIO (start it first) */
}

static void *exec_main(void *arg)
{
	struct exec_job *x = arg;
	struct engine *e = x->s->e;
	_cleanup_json_ json_object *resp = NULL;
	json_object *tv;
	unsigned timeout = EXEC_DEFAULT_TIMEOUT_MS;
	int r = wait_ready(x->s);

	if (json_object_object_get_ex(x->req, "timeout_ms", &tv) && json_object_get_int64(tv) > 0)
		timeout = (unsigned)(json_object_get_int64(tv) < 86400000 ? json_object_get_int64(tv) : 86400000) + 5000;
	struct guest_conn c;

	if (r == 0 && (r = guest_conn_get(x->s, &c)) == 0) {
		r = agent_call(c.agent, x->req, timeout, &resp);
		guest_conn_put(&c);
	}
	if (r == 0)
		r = exec_parse(resp, x->res);
	else if (resp && jget_str(resp, "error") && !x->res->error)
		x->res->error = strdup(jget_str(resp, "error")); /* the guest could not run it: why */
	if (r == -ECONNRESET || r == -EPROTO || r == -EPIPE)
		r = -EIO; /* the guest went away: destroyed, or its VMM died */
	x->done(x->arg, r);
	json_object_put(x->req);
	sandbox_unref(x->s);
	free(x);
	atomic_fetch_sub(&e->execs, 1);
	return NULL;
}

static int exec_validate(json_object *req)
{
	json_object *v;

	if (!json_object_is_type(req, json_type_object))
		return -EINVAL;
	if (json_object_object_get_ex(req, "sh", &v))
		return json_object_is_type(v, json_type_string) && json_object_get_string_len(v) > 0 ? 0 : -EINVAL;
	if (json_object_object_get_ex(req, "argv", &v))
		return json_object_is_type(v, json_type_array) && json_object_array_length(v) > 0 ? 0 : -EINVAL;
	return -EINVAL;
}

int sandbox_exec_async(struct sandbox *s, const char *cmd, size_t len, struct exec_result *res, engine_done_fn done,
		       void *arg)
{
	struct exec_job *x;
	json_object *req = NULL;
	pthread_attr_t attr;
	pthread_t th;
	int r;

	if (len > 0 && cmd[0] == '{') {
		json_tokener *tok = json_tokener_new();

		req = tok ? json_tokener_parse_ex(tok, cmd, (int)len) : NULL;
		if (tok && json_tokener_get_error(tok) != json_tokener_success) {
			json_object_put(req);
			req = NULL;
		}
		json_tokener_free(tok);
	} else if (len > 0 && (req = json_object_new_object())) {
		json_object_object_add(req, "sh", json_object_new_string_len(cmd, (int)len));
	}
	if (!req || exec_validate(req) < 0 || settings_env_apply(s, req) < 0) {
		json_object_put(req);
		return -EINVAL;
	}
	json_object_object_add(req, "op", json_object_new_string("exec"));
	x = calloc(1, sizeof(*x));
	if (!x) {
		json_object_put(req);
		return -ENOMEM;
	}
	atomic_fetch_add(&s->refs, 1);
	atomic_fetch_add(&s->e->execs, 1);
	*x = (struct exec_job){ .s = s, .req = req, .res = res, .done = done, .arg = arg };
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	r = thread_create(&th, &attr, exec_main, x);
	pthread_attr_destroy(&attr);
	if (r) {
		json_object_put(req);
		sandbox_unref(s);
		free(x);
		atomic_fetch_sub(&s->e->execs, 1);
		return -EAGAIN;
	}
	return 0;
}

void engine_set_event_fn(struct engine *e, engine_event_fn fn, void *arg)
{
	/* events are emitted with the lock held: none is in flight once this returns */
	pthread_mutex_lock(&e->lock);
	e->event_fn = fn;
	e->event_arg = arg;
	pthread_mutex_unlock(&e->lock);
}

void engine_emit(struct engine *e, uint64_t id, json_object *o)
{
	_cleanup_free_ char *at = iso8601_now();
	json_object *ev = json_object_new_object();

	/* "time" first, then the event's own fields */
	json_object_object_add(ev, "time", at ? json_object_new_string(at) : NULL);
	json_object_object_foreach(o, k, v)
		json_object_object_add(ev, k, json_object_get(v));
	json_object_put(o);
	if (e->event_fn)
		e->event_fn(e->event_arg, id, json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN |
									   JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(ev);
}

uint64_t sandbox_status_seq(struct sandbox *s)
{
	return atomic_load(&s->status_seq);
}

void sandbox_set_state(struct sandbox *s, enum sandbox_state st)
{
	json_object *ev;

	s->state = st;
	atomic_fetch_add(&s->status_seq, 1);
	if (!s->tpl)
		return; /* not registered yet: its creating event comes with the registration */
	ev = json_object_new_object();
	json_object_object_add(ev, "type", json_object_new_string("sandbox"));
	json_object_object_add(ev, "template", json_object_new_string(s->tpl->name));
	json_object_object_add(ev, "name", json_object_new_string(s->name));
	json_object_object_add(ev, "state", json_object_new_string(sandbox_state_name(st)));
	json_object_object_add(ev, "path", s->path ? json_object_new_string(s->path) : NULL);
	if (st == SB_FAILED && s->error)
		json_object_object_add(ev, "error", json_object_new_string(s->error));
	engine_emit(s->e, s->id, ev);
}
