/*
 * Records, and re-adoption after a restart.
 *
 * Every per-VM directory (store/vms/ID) holds record.json, written with a
 * temporary file and a rename: made before anything it accounts for exists,
 * rewritten whenever the VMM or the state changes, removed last (with the
 * directory). A sandbox's record has what its status shows and what a
 * restarted daemon needs to take it over: the VMM's pid and start time, its
 * run directory (QMP and agent sockets), its network slot.
 *
 * At start-up (adopt_scan, before the sweep) a record is kept for
 * re-adoption when its sandbox is ready or paused and its VMM is still the
 * same process (a pidfd is opened, then the start time compared, so a reused
 * pid is neither adopted nor killed), or when it is hibernated, stopped or
 * failed (no VMM). A sandbox ready or paused whose VMM is gone is kept as
 * failed, with the reason. Everything else — creates and destroys in flight,
 * warm slots — is rolled back by the sweep: VMM killed, files removed.
 *
 * adopt_all then rebuilds the sandboxes, in parallel and each within a time
 * budget: QMP connected again and asked for the run state, the agent
 * connected again and, for a running guest, pinged. A sandbox that fails
 * this is failed with the step and the error, its VMM killed.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "guest.h"
#include "internal.h"
#include "parse.h"
#include "ram.h"

#define RECORD_VERSION 2
#define ADOPT_PING_MS 100

struct adoptee {
	char *dir;    /* store/vms/X */
	char *rundir; /* state/run/Y */
	json_object *rec;
	uint64_t id;
	enum sandbox_state state;
	pid_t pid; /* ready or paused: its VMM */
	int pidfd;
	int net_index; /* -1: none */
	char *why;     /* kept as failed: why */
	struct sandbox *s;
	pthread_t thread;
	bool thread_started;
};

unsigned long long pid_start_time(pid_t pid)
{
	_cleanup_free_ char *path = NULL, *stat = NULL;
	unsigned long long start = 0;
	char *p;

	if (pid <= 0 || asprintf(&path, "/proc/%d/stat", pid) < 0 || read_file(path, 1 << 16, &stat, NULL) < 0)
		return 0;
	/* field 22 (starttime) is the 20th after the ")" that ends the command name */
	p = strrchr(stat, ')');
	for (int f = 0; p && f < 20; f++)
		p = strchr(p + 1, ' ');
	if (!p || sscanf(p + 1, "%llu", &start) != 1)
		return 0;
	return start;
}

int record_write(const char *dir, const char *tpl, const char *name, pid_t pid, const char *rundir)
{
	_cleanup_free_ char *p = strjoin(dir, "/record.json", NULL);
	_cleanup_json_ json_object *o = json_object_new_object();
	const char *txt;

	if (!p || !o)
		return -ENOMEM;
	json_object_object_add(o, "version", json_object_new_int(RECORD_VERSION));
	json_object_object_add(o, "template", json_object_new_string(tpl));
	json_object_object_add(o, "name", name ? json_object_new_string(name) : NULL);
	json_object_object_add(o, "vmm_pid", json_object_new_int(pid));
	json_object_object_add(o, "vmm_start", json_object_new_int64((int64_t)pid_start_time(pid)));
	json_object_object_add(o, "run_dir", json_object_new_string(rundir));
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	return write_file_atomic(p, txt, strlen(txt), false);
}

static json_object *str_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

/* e->lock held. */
static json_object *sandbox_record_json(struct sandbox *s)
{
	json_object *o = json_object_new_object();

	json_object_object_add(o, "version", json_object_new_int(RECORD_VERSION));
	json_object_object_add(o, "template", json_object_new_string(s->tpl->name));
	json_object_object_add(o, "name", json_object_new_string(s->name));
	json_object_object_add(o, "id", json_object_new_int64((int64_t)s->id));
	json_object_object_add(o, "state", json_object_new_string(sandbox_state_name(s->state)));
	json_object_object_add(o, "vmm_pid", json_object_new_int(s->vmm_pid));
	json_object_object_add(o, "backend", json_object_new_string(s->vmm ? s->vmm->ops->name : s->tpl->cfg.backend));
	json_object_object_add(o, "run_dir", json_object_new_string(s->rundir));
	json_object_object_add(o, "net", s->net ? json_object_new_int((int)s->net->index) : NULL);
	json_object_object_add(o, "path", str_or_null(s->path));
	json_object_object_add(o, "path_reason", str_or_null(s->path_reason));
	json_object_object_add(o, "pool_miss", str_or_null(s->miss_reason));
	json_object_object_add(o, "identity", json_object_new_string(s->identity));
	json_object_object_add(o, "clone", str_or_null(s->clone_method));
	json_object_object_add(o, "slot_id", json_object_new_int64((int64_t)s->slot_id));
	json_object_object_add(o, "slot_age_ms", json_object_new_double(s->slot_age_ms));
	json_object_object_add(o, "slot_prepare_ms", json_object_new_double(s->slot_prepare_ms));
	json_object_object_add(o, "slot_spare", json_object_new_boolean(s->slot_spare));
	json_object_object_add(o, "created_at_unix_ms", json_object_new_int64((int64_t)s->created_realtime_ms));
	{
		/* full precision (status shows 3 decimals): ready_ms, their sum, stays the same */
		json_object *tm = json_object_new_object();

		for (unsigned i = 0; i < s->timings.n; i++)
			json_object_object_add(tm, s->timings.p[i].name, json_object_new_double(s->timings.p[i].ms));
		json_object_object_add(o, "timings", tm);
	}
	json_object_object_add(o, "error", str_or_null(s->error));
	json_object_object_add(o, "fork_of", str_or_null(s->fork_of));
	json_object_object_add(o, "sleeping_since_unix_ms", json_object_new_int64((int64_t)s->sleeping_since_ms));
	json_object_object_add(o, "last_op", str_or_null(s->last_op));
	json_object_object_add(o, "last_op_ms", json_object_new_double(s->last_op_ms));
	json_object_object_add(o, "hibernate_ms", json_object_new_double(s->hibernate_ms));
	json_object_object_add(o, "wake_ms", json_object_new_double(s->wake_ms));
	json_object_object_add(o, "wakes", json_object_new_int64((int64_t)s->wakes));
	json_object_object_add(o, "idle_hibernations", json_object_new_int64((int64_t)s->idle_hibernations));
	json_object_object_add(o, "adoptions", json_object_new_int((int)s->adoptions));
	json_object_object_add(o, "machine_id", json_object_new_string(s->machine_id));
	json_object_object_add(o, "procs", sandbox_procs_json(s));
	json_object_object_add(o, "settings", settings_json(s));
	json_object_object_add(o, "usage", sandbox_usage_record_json(s));
	return o;
}

int sandbox_record_save(struct sandbox *s)
{
	struct engine *e = s->e;
	_cleanup_json_ json_object *o = NULL;
	_cleanup_free_ char *path = NULL;
	const char *txt;
	pid_t pid;
	int r = 0;

	pthread_mutex_lock(&s->record_lock);
	if (s->record_gone)
		goto out;
	pthread_mutex_lock(&e->lock);
	o = sandbox_record_json(s);
	pid = s->vmm_pid;
	path = strjoin(s->dir, "/record.json", NULL);
	pthread_mutex_unlock(&e->lock);
	if (!o || !path) {
		r = -ENOMEM;
		goto out;
	}
	json_object_object_add(o, "vmm_start", json_object_new_int64((int64_t)pid_start_time(pid)));
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	r = write_file_atomic(path, txt, strlen(txt), false);
	if (r == -ENOENT)
		r = 0; /* its directory is not made yet: nothing to record */
	else if (r < 0)
		log_warn("sandbox %s: cannot write its record %s: %s (a restart would not re-adopt it)", s->name, path,
			 strerror(-r));
out:
	pthread_mutex_unlock(&s->record_lock);
	return r;
}

void sandbox_record_drop(struct sandbox *s)
{
	pthread_mutex_lock(&s->record_lock);
	s->record_gone = true;
	pthread_mutex_unlock(&s->record_lock);
}

/* ---- start-up: what to keep ---- */

static int state_from_name(const char *n)
{
	for (int st = 0; n && st < _SB_STATE_MAX; st++)
		if (strcmp(sandbox_state_name((enum sandbox_state)st), n) == 0)
			return st;
	return -1;
}

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static void adoptee_clear(struct adoptee *a)
{
	free(a->dir);
	free(a->rundir);
	json_object_put(a->rec);
	free(a->why);
	if (a->pidfd >= 0)
		close(a->pidfd);
}

/* The record in dir, if a restart keeps it. */
static bool adopt_consider(struct engine *e, const char *dir, struct adoptee *a)
{
	_cleanup_free_ char *path = strjoin(dir, "/record.json", NULL), *text = NULL, *runroot = NULL;
	_cleanup_json_ json_object *o = NULL;
	const char *name, *tpl, *run;
	int st;

	memset(a, 0, sizeof(*a));
	a->pidfd = -1;
	a->net_index = -1;
	if (!path || read_file(path, 1 << 20, &text, NULL) < 0 || !(o = json_tokener_parse(text)))
		return false;
	name = jget_str(o, "name");
	tpl = jget_str(o, "template");
	run = jget_str(o, "run_dir");
	st = state_from_name(jget_str(o, "state"));
	runroot = strjoin(e->state_dir, "/run/", NULL);
	if (jget_int(o, "version", 0) != RECORD_VERSION || !name || name_validate(name) < 0 || !tpl ||
	    name_validate(tpl) < 0 || !run || !runroot || strncmp(run, runroot, strlen(runroot)) != 0 ||
	    strchr(run + strlen(runroot), '/') || !run[strlen(runroot)])
		return false;
	if (st != SB_READY && st != SB_PAUSED && st != SB_HIBERNATED && st != SB_STOPPED && st != SB_FAILED)
		return false; /* a create or destroy in flight: rolled back */
	a->state = (enum sandbox_state)st;
	if (st == SB_READY || st == SB_PAUSED) {
		pid_t pid = (pid_t)jget_int(o, "vmm_pid", 0);
		unsigned long long start = (unsigned long long)jget_int(o, "vmm_start", 0);

		/* the pidfd first, then the start time: it names that process, never a later one with its pid */
		if (pid > 1 && start && (a->pidfd = pidfd_open_(pid)) >= 0 && pid_start_time(pid) == start) {
			a->pid = pid;
		} else {
			if (a->pidfd >= 0)
				close(a->pidfd);
			a->pidfd = -1;
			a->state = SB_FAILED;
			/* no pid recorded: the daemon died between an operation's end of one VMM and its next (a rollback, a start) */
			if ((pid > 1 ? asprintf(&a->why, "its VMM (pid %d) was gone when the daemon restarted", pid) :
				       asprintf(&a->why, "it had no VMM when the daemon restarted: the daemon died during an "
						 "operation that replaces it (a rollback, a wake, a start)")) < 0)
				a->why = NULL;
		}
	}
	a->net_index = (int)jget_int(o, "net", -1);
	a->id = (uint64_t)jget_int(o, "id", 0);
	a->dir = strdup(dir);
	a->rundir = strdup(run);
	a->rec = TAKE_PTR(o);
	if (!a->dir || !a->rundir) {
		adoptee_clear(a);
		return false;
	}
	return true;
}

void adopt_scan(struct engine *e)
{
	_cleanup_free_ char *vms = strjoin(e->store.root, "/vms", NULL);
	DIR *d = vms ? opendir(vms) : NULL;
	uint64_t max_id = 0;
	struct dirent *de;

	while (d && (de = readdir(d))) {
		_cleanup_free_ char *dir = NULL;
		struct adoptee a, *n;
		uint64_t id = strtoull(de->d_name, NULL, 10);

		if (id > max_id)
			max_id = id;
		if (de->d_name[0] == '.' || !(dir = strjoin(vms, "/", de->d_name, NULL)) || !adopt_consider(e, dir, &a))
			continue;
		if (a.id > max_id)
			max_id = a.id;
		n = realloc(e->adoptees, (e->n_adoptees + 1) * sizeof(*n));
		if (!n) {
			adoptee_clear(&a);
			continue;
		}
		e->adoptees = n;
		e->adoptees[e->n_adoptees++] = a;
	}
	if (d)
		closedir(d);
	/* new ids (directory names) never meet a kept one */
	if (max_id >= atomic_load(&e->next_id))
		atomic_store(&e->next_id, max_id + 1);
}

bool adopt_keeps_dir(const struct engine *e, const char *dir)
{
	for (size_t i = 0; i < e->n_adoptees; i++)
		if (strcmp(e->adoptees[i].dir, dir) == 0)
			return true;
	return false;
}

bool adopt_keeps_run(const struct engine *e, const char *name)
{
	for (size_t i = 0; i < e->n_adoptees; i++) {
		const char *b = strrchr(e->adoptees[i].rundir, '/');

		if (b && strcmp(b + 1, name) == 0)
			return true;
	}
	return false;
}

bool adopt_keeps_pid(const struct engine *e, pid_t pid)
{
	for (size_t i = 0; i < e->n_adoptees; i++)
		if (e->adoptees[i].pidfd >= 0 && e->adoptees[i].pid == pid)
			return true;
	return false;
}

size_t adopt_pids(const struct engine *e, pid_t **ret)
{
	size_t n = 0;

	*ret = calloc(e->n_adoptees + 1, sizeof(**ret));
	for (size_t i = 0; *ret && i < e->n_adoptees; i++)
		if (e->adoptees[i].pidfd >= 0)
			(*ret)[n++] = e->adoptees[i].pid;
	return n;
}

size_t adopt_net_indexes(const struct engine *e, unsigned **ret)
{
	size_t n = 0;

	*ret = calloc(e->n_adoptees + 1, sizeof(**ret));
	for (size_t i = 0; *ret && i < e->n_adoptees; i++)
		if (e->adoptees[i].net_index >= 0)
			(*ret)[n++] = (unsigned)e->adoptees[i].net_index;
	return n;
}

/* ---- re-adoption ---- */

/* Static strings a record names (status fields point at them). */
static const char *intern(const char *s, const char *const *known)
{
	for (; s && *known; known++)
		if (strcmp(s, *known) == 0)
			return *known;
	return NULL;
}

static const char *const PATHS[] = { "warm", "restore", "cold", "fork", NULL };
static const char *const OPS[] = { "pause", "resume", "hibernate", "stop", "start", "wake", "fork", "template",
				   "checkpoint", "rollback", NULL };

static const char *miss_intern(const char *s)
{
	for (int m = 0; s && m < _MISS_MAX; m++)
		if (strcmp(s, miss_reason_name((enum miss_reason)m)) == 0)
			return miss_reason_name((enum miss_reason)m);
	return NULL;
}

static const char *clone_intern(const char *s)
{
	if (s && strcmp(s, "none") == 0)
		return "none";
	for (int m = CLONE_REFLINK; s && m <= CLONE_COPY; m++)
		if (strcmp(s, clone_method_name((enum clone_method)m)) == 0)
			return clone_method_name((enum clone_method)m);
	return NULL;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* The sandbox as its record describes it, not registered yet. */
static struct sandbox *sandbox_from_record(struct engine *e, struct template *t, struct adoptee *a)
{
	struct sandbox *s = calloc(1, sizeof(*s));
	json_object *o = a->rec, *tv;
	const char *idn = jget_str(o, "identity");

	if (!s)
		return NULL;
	atomic_init(&s->refs, 1); /* the template's list */
	s->id = a->id ? a->id : atomic_fetch_add(&e->next_id, 1);
	s->ckdir_id = atomic_fetch_add(&e->next_id, 1);
	snprintf(s->name, sizeof(s->name), "%s", jget_str(o, "name"));
	s->e = e;
	s->state = a->state;
	pthread_cond_init(&s->cond, NULL);
	pthread_mutex_init(&s->op_lock, NULL);
	pthread_mutex_init(&s->record_lock, NULL);
	s->dir = strdup(a->dir);
	s->rundir = strdup(a->rundir);
	s->console_path = vm_file(a->dir, VM_CONSOLE);
	s->path = intern(jget_str(o, "path"), PATHS);
	s->path_reason = dup_or_null(jget_str(o, "path_reason"));
	s->miss_reason = miss_intern(jget_str(o, "pool_miss"));
	snprintf(s->identity, sizeof(s->identity), "%s", idn ? idn : "");
	{
		const char *mid = jget_str(o, "machine_id");

		/* a record from before machine ids were kept: a new one, given at the next attach */
		if (mid && strlen(mid) == 32 && strspn(mid, "0123456789abcdef") == 32)
			memcpy(s->machine_id, mid, 33);
		else if (machine_id_new(s->machine_id) < 0)
			memset(s->machine_id, '0', 32);
	}
	s->clone_method = clone_intern(jget_str(o, "clone"));
	s->slot_id = (uint64_t)jget_int(o, "slot_id", 0);
	s->slot_age_ms = jget_double(o, "slot_age_ms");
	s->slot_prepare_ms = jget_double(o, "slot_prepare_ms");
	s->slot_spare = jget_bool(o, "slot_spare");
	s->created_realtime_ms = (uint64_t)jget_int(o, "created_at_unix_ms", 0);
	timings_from_json(&s->timings, json_object_object_get_ex(o, "timings", &tv) ? tv : NULL);
	s->error = a->why ? TAKE_PTR(a->why) : dup_or_null(jget_str(o, "error"));
	s->fork_of = dup_or_null(jget_str(o, "fork_of"));
	s->sleeping_since_ms = (uint64_t)jget_int(o, "sleeping_since_unix_ms", 0);
	s->last_op = intern(jget_str(o, "last_op"), OPS);
	s->last_op_ms = jget_double(o, "last_op_ms");
	s->hibernate_ms = jget_double(o, "hibernate_ms");
	s->wake_ms = jget_double(o, "wake_ms");
	s->wakes = (uint64_t)jget_int(o, "wakes", 0);
	s->idle_hibernations = (uint64_t)jget_int(o, "idle_hibernations", 0);
	s->adoptions = (unsigned)jget_int(o, "adoptions", 0) + 1;
	s->active_ns = now_ns();
	atomic_fetch_add(&t->refs, 1);
	s->tpl = t;
	sandbox_procs_from_json(s, json_object_object_get_ex(o, "procs", &tv) ? tv : NULL);
	settings_from_json(s, json_object_object_get_ex(o, "settings", &tv) ? tv : NULL);
	sandbox_usage_from_record(s, json_object_object_get_ex(o, "usage", &tv) ? tv : NULL);
	if (!s->dir || !s->rundir || !s->console_path) {
		sandbox_unref(s);
		return NULL;
	}
	sandbox_checkpoints_load(s);
	return s;
}

/* A kept VMM that will not be re-adopted after all: killed, its groups removed. */
static void adoptee_kill(struct engine *e, struct adoptee *a)
{
	if (a->pidfd < 0)
		return;
	syscall(SYS_pidfd_send_signal, a->pidfd, SIGKILL, NULL, 0);
	poll(&(struct pollfd){ .fd = a->pidfd, .events = POLLIN }, 1, 1000);
	cgroup_remove(cgroup_dirs_of(e->cgroups, a->pid));
	close(TAKE_FD(a->pidfd));
}

static void adopt_fail_why(struct adoptee *a, const char *step, const char *why)
{
	struct sandbox *s = a->s;
	struct engine *e = s->e;
	struct vmm *v;
	struct agent_client *ac;

	pthread_mutex_lock(&e->lock);
	v = TAKE_PTR(s->vmm);
	ac = TAKE_PTR(s->agent);
	s->vmm_pid = 0;
	free(s->error);
	if (asprintf(&s->error, "not re-adopted after a daemon restart: %s: %s", step, why) < 0)
		s->error = NULL;
	s->state = SB_FAILED;
	pthread_mutex_unlock(&e->lock);
	log_warn("sandbox %s/%s: %s", s->tpl->name, s->name, s->error ? s->error : step);
	vm_release(e, &v, &ac, NULL);
	sandbox_procs_settle(s);
}

static void adopt_fail(struct adoptee *a, const char *step, int err)
{
	adopt_fail_why(a, step, strerror(-err));
}

int agent_settle(struct agent_client *ac, uint64_t deadline, const atomic_bool *cancel)
{
	for (int tries = 1;; tries++) {
		_cleanup_json_ json_object *req = json_object_new_object();
		int64_t left = ((int64_t)deadline - (int64_t)now_ns()) / 1000000;
		int r;

		json_object_object_add(req, "op", json_object_new_string("ping"));
		r = agent_call(ac, req, left < ADOPT_PING_MS ? (unsigned)(left > 0 ? left : 1) : ADOPT_PING_MS, NULL);
		if (r == 0)
			return tries;
		if (r != -ETIMEDOUT || (int64_t)deadline - (int64_t)now_ns() <= 0 || (cancel && atomic_load(cancel)))
			return r;
	}
}

/* One sandbox whose VMM runs: QMP, its run state, the agent. */
static void *adopt_main(void *arg)
{
	struct adoptee *a = arg;
	struct sandbox *s = a->s;
	struct engine *e = s->e;
	_cleanup_free_ char *qmp = vm_file(a->rundir, VM_QMP);
	_cleanup_free_ char *agent = vm_file(a->rundir, VM_AGENT);
	uint64_t deadline = now_ns() + (uint64_t)ADOPT_BUDGET_MS * 1000000;
	struct agent_client *ac = NULL;
	const struct vmm_ops *d;
	struct vmm *v = NULL;
	const char *step = "QMP";
	char st[64];
	int r;

	if (!qmp || !agent) {
		adopt_fail(a, "prepare", -ENOMEM);
		return NULL;
	}
	if (ram_maps_lazy(a->pid)) {
		/* its memory came from the lazy files the last run served: the next page it lacks would end it */
		adoptee_kill(e, a);
		adopt_fail_why(a, "memory", "its guest memory was served from the store by the daemon that ended "
					    "(a restore from --store needs the daemon until its memory is its own); killed");
		return NULL;
	}
	/* the driver that started it (records before drivers were named: the default) */
	d = engine_driver_ops(e, jget_str(a->rec, "backend") ? jget_str(a->rec, "backend") : TEMPLATE_DEFAULT_BACKEND);
	r = d ? d->adopt(a->pid, a->pidfd, qmp, cgroup_dirs_of(e->cgroups, a->pid), e->vmm_uid_base, &v) : -EINVAL;
	if (r < 0) {
		adopt_fail(a, step, r);
		return NULL;
	}
	a->pidfd = -1; /* the vmm's */
	s->vmm = v;
	s->vmm_pid = a->pid;
	r = vmm_connect(v, ADOPT_BUDGET_MS, &s->cancel);
	if (r == 0)
		r = vmm_query(v, st, sizeof(st), ADOPT_BUDGET_MS);
	if (r == 0) {
		step = "run state";
		/* QEMU's word over the record's: an operation may have been cut short */
		if (strcmp(st, "running") == 0)
			s->state = SB_READY;
		else if (strcmp(st, "paused") == 0 || strcmp(st, "postmigrate") == 0)
			s->state = SB_PAUSED;
		else
			r = -EPROTO;
		if (r < 0)
			log_warn("sandbox %s: the VMM's run state is \"%s\"", s->name, st);
	}
	/*
	 * The agent: a running guest answers a ping; a paused one at its
	 * resume (op_resume settles it the same way). The guest learns that the old connection
	 * ended and this one began from control messages that are not ordered
	 * with the data: a first request can be taken for the old connection's
	 * and its answer dropped with it. So the ping is sent again, on this
	 * connection, every ADOPT_PING_MS until one is answered.
	 */
	if (r == 0) {
		int64_t left = ((int64_t)deadline - (int64_t)now_ns()) / 1000000;

		step = "agent";
		r = agent_connect(agent, left > 100 ? (unsigned)left : 100, &s->cancel, &ac);
	}
	if (r == 0 && s->state == SB_READY) {
		r = agent_settle(ac, deadline, &s->cancel);
		if (r > 1)
			log_info("sandbox %s: its agent answered ping %d", s->name, r);
		r = r < 0 ? r : 0;
	}
	if (r < 0 && ac)
		agent_free(TAKE_PTR(ac));
	if (r == 0)
		s->agent = ac;
	if (r == 0 && s->state == SB_READY) {
		/* its processes: a paused guest's at its resume (the attach) */
		int64_t left = ((int64_t)deadline - (int64_t)now_ns()) / 1000000;

		step = "processes";
		r = sandbox_reattach(s, left > 100 ? (unsigned)left : 100);
	}
	if (r < 0) {
		adopt_fail(a, step, r);
		return NULL;
	}
	if (s->state == SB_PAUSED && !s->sleeping_since_ms)
		s->sleeping_since_ms = (uint64_t)time(NULL) * 1000;
	s->agent_unsettled = s->state == SB_PAUSED;
	return NULL;
}

static void *supervise_main(void *arg)
{
	sandbox_supervise(arg);
	return NULL;
}

void adopt_all(struct engine *e)
{
	uint64_t t0 = now_ns();
	unsigned n[_SB_STATE_MAX] = { 0 };

	/* the objects, their templates and network slots */
	for (size_t i = 0; i < e->n_adoptees; i++) {
		struct adoptee *a = &e->adoptees[i];
		const char *tname = jget_str(a->rec, "template");
		struct template *t = NULL;
		_cleanup_free_ char *nerr = NULL;

		pthread_mutex_lock(&e->lock);
		for (size_t k = 0; k < e->n_templates && !t; k++)
			if (strcmp(e->templates[k]->name, tname) == 0)
				t = e->templates[k];
		pthread_mutex_unlock(&e->lock);
		if (t)
			a->s = sandbox_from_record(e, t, a);
		if (!a->s) {
			log_warn("%s: template %s is gone or out of memory: not re-adopted, removed", a->dir, tname);
			adoptee_kill(e, a);
			if (a->net_index >= 0 && e->net) {
				struct netslot *ns = NULL;

				if (netpool_adopt(e->net, (unsigned)a->net_index, &ns, NULL) == 0)
					netpool_release(e->net, ns);
			}
			rm_rf(a->rundir);
			rm_rf(a->dir);
			continue;
		}
		if (a->net_index >= 0) {
			int r = e->net ? netpool_adopt(e->net, (unsigned)a->net_index, &a->s->net, &nerr) : -ENONET;

			if (r < 0 && !a->s->error && asprintf(&a->s->error, "not re-adopted after a daemon restart: %s",
								nerr ? nerr : "the daemon runs without --net now") < 0)
				a->s->error = NULL;
			if (r < 0) {
				a->s->state = SB_FAILED;
				adoptee_kill(e, a);
			} else if (sandbox_egress_apply(a->s, NULL) < 0) {
				/* the namespace kept the policy the earlier run applied: it holds */
				log_warn("%s: egress policy not applied again after the restart", a->dir);
			}
		}
	}
	/* the running ones, in parallel */
	for (size_t i = 0; i < e->n_adoptees; i++) {
		struct adoptee *a = &e->adoptees[i];

		if (a->s && a->pidfd >= 0) {
			if (thread_create(&a->thread, NULL, adopt_main, a) == 0)
				a->thread_started = true;
			else
				adopt_main(a);
		}
	}
	for (size_t i = 0; i < e->n_adoptees; i++)
		if (e->adoptees[i].thread_started)
			pthread_join(e->adoptees[i].thread, NULL);
	/* registered, supervised, recorded again */
	for (size_t i = 0; i < e->n_adoptees; i++) {
		struct adoptee *a = &e->adoptees[i];
		struct sandbox *s = a->s, **v;
		struct template *t;

		if (!s)
			continue;
		t = s->tpl;
		pthread_mutex_lock(&e->lock);
		v = realloc(t->sandboxes, (t->n_sandboxes + 1) * sizeof(*v));
		if (v && sandbox_index(s) < 0)
			v = NULL; /* the larger array is t's; the sandbox is not */
		else if (v) {
			t->sandboxes = v;
			t->sandboxes[t->n_sandboxes++] = s;
			e->n_sandboxes++;
		}
		pthread_mutex_unlock(&e->lock);
		if (!v) {
			/* as good as destroyed: nothing of it may stay */
			if (s->vmm)
				vmm_kill(s->vmm);
			rm_rf(s->rundir);
			rm_rf(s->dir);
			sandbox_unref(s);
			continue;
		}
		n[s->state]++;
		if (s->state != SB_FAILED && thread_create(&s->thread, NULL, supervise_main, s) == 0)
			s->thread_started = true;
		sandbox_record_save(s);
		log_info("sandbox %s/%s re-adopted: %s%s%s", t->name, s->name, sandbox_state_name(s->state),
			 s->state == SB_FAILED && s->error ? ": " : "", s->state == SB_FAILED && s->error ? s->error : "");
	}
	if (e->n_adoptees)
		log_info("re-adopted %zu sandboxes in %.1f ms: %u ready, %u paused, %u hibernated, %u stopped, %u failed",
			 e->n_adoptees, ns_to_ms(now_ns() - t0), n[SB_READY], n[SB_PAUSED], n[SB_HIBERNATED],
			 n[SB_STOPPED], n[SB_FAILED]);
	adopt_clear(e);
}

void adopt_clear(struct engine *e)
{
	for (size_t i = 0; i < e->n_adoptees; i++)
		adoptee_clear(&e->adoptees[i]);
	free(e->adoptees);
	e->adoptees = NULL;
	e->n_adoptees = 0;
}
