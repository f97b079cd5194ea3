/*
 * Warm slots: VMMs restored from a template's snapshot ahead of any request,
 * warmed up and paused, so a create only resumes one and attaches identity.
 *
 * A slot is prepared as a create would be (clones of the snapshot's memory
 * and disk, a VMM loading its device state), then its guest agent answers
 * WARMUP_ROUNDS identity attaches, and the VMM is paused. The rounds are
 * what make activation cheap under TCG: the guest code on the path
 * (interrupt, scheduler, agent, the attach's system calls) is already
 * translated in this process, so after `cont` the guest answers in a few
 * milliseconds instead of the tens a fresh restore needs. With
 * --warmup-exec, one exec in the warm-up translates fork and exec too: the
 * first exec after activation then takes ~15 ms instead of ~140, for about
 * 15 MiB more resident memory per idle slot (docs/benchmarks.md).
 *
 * One filler thread per template keeps the pool at its target depth. It
 * prepares one slot at a time, only while no create of any template is in
 * flight and none settled in the last QUIET_MS (a burst's last waiters and
 * its callers' next steps get the CPU first), and the number of slots being prepared across all templates is
 * bounded (--pool-parallel), so replenishing never competes with a create.
 * The filler also recycles: slots whose identity or snapshot no longer match
 * the template (stale), whose VMM died or was stopped (dead), that are older
 * than --slot-max-age (aged), or beyond the target (excess).
 *
 * Claiming (slot_claim) pops the oldest warm slot under the engine lock, so
 * no slot is handed out twice. All slot fields are protected by e->lock while
 * the slot is on a template's list; a claimed slot belongs to its sandbox.
 *
 * Spares: a slot's first half. Its VMM is spawned on clones of the snapshot
 * (memory on the sealed base, disk, the state file as its incoming stream,
 * network slot) and connected, then waits: no guest code has run in it. A
 * QEMU spawn is ~40% dynamic loading and ~50% machine init, nothing an
 * option removes, so a create that finds no warm slot claims a spare
 * (spare_claim) and only restores and attaches (vm_load). Once the warm
 * target is met the filler keeps --spares of them per ready template (they
 * cost ~19 MiB PSS: QEMU before any guest code, its translation buffer's
 * start faulted in); a warm slot it prepares
 * starts from a spare when there is one (promotion). Both count against the
 * pool's budget, each kind at its own measured PSS.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "ram.h"
#include "parse.h"

#define WARMUP_ROUNDS 4
#define HEALTH_PERIOD_MS 500
/* Quiet time after the last create settled before a slot is prepared: a burst finishes first. */
#define QUIET_MS 100
#define POOL_MAX PARSE_POOL_MAX

const char *slot_state_name(enum slot_state s)
{
	return s == SLOT_WARM ? "warm" : s == SLOT_SPARE ? "spare" : "preparing";
}

void slot_free(struct engine *e, struct slot *sl)
{
	if (!sl)
		return;
	vm_release(e, &sl->vmm, &sl->agent, &sl->net);
	/* the record's directory is the anchor: made first, removed last */
	if (sl->rundir)
		rm_rf(sl->rundir);
	if (sl->dir)
		rm_rf(sl->dir);
	free(sl->dir);
	free(sl->rundir);
	free(sl);
}

void slots_free_list(struct engine *e, struct slot *list)
{
	while (list) {
		struct slot *n = list->next;

		slot_free(e, list);
		list = n;
	}
}

bool slot_matches(const struct template *t, const struct slot *sl)
{
	return t->state == TPL_READY && strcmp(sl->identity, t->identity) == 0 &&
	       strcmp(sl->state_digest, t->bake.state_digest) == 0;
}

/* The start of /proc/PID/NAME, NUL-terminated, in buf; false if unreadable. */
static bool proc_file_read(pid_t pid, const char *name, char *buf, size_t size)
{
	char path[64];
	_cleanup_close_ int fd = -1;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || (n = read(fd, buf, size - 1)) <= 0)
		return false;
	buf[n] = '\0';
	return true;
}

/* The process state letter from /proc/PID/stat ('R', 'S', 'T', 'Z', ...), or 0. */
char proc_state(pid_t pid)
{
	char buf[512], *p;

	if (!proc_file_read(pid, "stat", buf, sizeof(buf)))
		return 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

/* A slot's VMM is healthy while it runs and is not stopped (SIGSTOP) or a zombie. */
static bool slot_healthy(struct engine *e, struct slot *sl)
{
	char st;

	if (!vmm_alive(sl->vmm))
		return false;
	st = proc_state(sl->vmm_pid);
	return st != 0 && st != 'T' && st != 't' && st != 'Z' && st != 'X';
}

static void list_push_tail(struct slot **head, struct slot *sl)
{
	while (*head)
		head = &(*head)->next;
	sl->next = NULL;
	*head = sl;
}

/* The spares a ready template keeps. e->lock held. */
static unsigned spare_target(const struct template *t)
{
	return t->state == TPL_READY ? t->e->opts.spares : 0;
}

/* Moves the unfit slots of one list to *drop: stale, dead or stopped, too old, beyond target. */
static void take_unfit(struct template *t, struct slot **list, unsigned *n, unsigned target, struct slot **drop)
{
	struct engine *e = t->e;
	struct slot **pp = list;
	uint64_t now = now_ns(), max_age = (uint64_t)e->opts.slot_max_age_s * 1000000000ull;
	unsigned excess = *n > target ? *n - target : 0;

	while (*pp) {
		struct slot *sl = *pp;
		uint64_t *counter = NULL;

		if (!slot_matches(t, sl))
			counter = &t->pool_stats.recycled_stale;
		else if (!slot_healthy(e, sl))
			counter = &t->pool_stats.recycled_dead;
		else if (max_age && now - sl->warm_ns > max_age)
			counter = &t->pool_stats.recycled_aged;
		else if (excess > 0)
			counter = &t->pool_stats.recycled_excess;
		if (!counter) {
			pp = &sl->next;
			continue;
		}
		if (excess > 0)
			excess--; /* whatever goes counts toward the target */
		(*counter)++;
		*pp = sl->next;
		sl->next = *drop;
		*drop = sl;
		(*n)--;
	}
}

/*
 * Detaches every slot and spare that must not be served: stale, dead or
 * stopped, too old, or beyond the target (the oldest go first). e->lock held.
 */
struct slot *pool_take_unfit(struct template *t)
{
	struct slot *drop = NULL;

	take_unfit(t, &t->slots, &t->n_slots, t->pool_target, &drop);
	take_unfit(t, &t->spares, &t->n_spares, spare_target(t), &drop);
	return drop;
}

const char *miss_reason_name(enum miss_reason r)
{
	static const char *const names[] = { "pool_empty", "stale", "no_snapshot", "budget", "unhealthy" };

	return r < _MISS_MAX ? names[r] : "?";
}

void pool_note_create(struct template *t, bool claimed, enum miss_reason why)
{
	uint64_t now = now_ns() / 1000000;

	if (t->demand)
		capacity_history_push(t->demand, now);
	t->last_demand_ms = now;
	if (!claimed)
		t->miss[why]++;
}

struct slot *slot_claim(struct template *t, struct slot **ret_dead, enum miss_reason *ret_miss)
{
	struct engine *e = t->e;
	bool stale = false, dead = false;

	while (t->slots) {
		struct slot *sl = t->slots;

		t->slots = sl->next;
		t->n_slots--;
		sl->next = NULL;
		pthread_cond_broadcast(&t->pool_cond);
		if (slot_matches(t, sl) && slot_healthy(e, sl))
			return sl;
		/* stale or dead: never handed out */
		if (slot_matches(t, sl)) {
			t->pool_stats.recycled_dead++;
			dead = true;
		} else {
			t->pool_stats.recycled_stale++;
			stale = true;
		}
		sl->next = *ret_dead;
		*ret_dead = sl;
	}
	*ret_miss = stale ? MISS_STALE : dead ? MISS_UNHEALTHY :
		    t->plan.target < t->plan.demand && (t->plan.reason == CAPACITY_BUDGET ||
							t->plan.reason == CAPACITY_PINNED_CLAMPED) ? MISS_BUDGET :
		    MISS_EMPTY;
	return NULL;
}

struct slot *spare_claim(struct template *t, struct slot **ret_dead)
{
	while (t->spares) {
		struct slot *sl = t->spares;

		t->spares = sl->next;
		t->n_spares--;
		sl->next = NULL;
		pthread_cond_broadcast(&t->pool_cond); /* the filler makes the next one */
		if (slot_matches(t, sl) && slot_healthy(t->e, sl))
			return sl;
		if (slot_matches(t, sl))
			t->pool_stats.recycled_dead++;
		else
			t->pool_stats.recycled_stale++;
		sl->next = *ret_dead;
		*ret_dead = sl;
	}
	return NULL;
}

/* Memory of one of t's slots for the budget: measured, else a guess from the guest's size. */
static uint32_t slot_mib_of(const struct template *t)
{
	return t->slot_mib ? t->slot_mib : 32 + t->cfg.mem_mib / 4;
}

/*
 * Of one of its spares: measured, else a guess (QEMU before any guest code and
 * 5 MiB of translation buffer faulted in: ~19 MiB PSS beside 8 slots here).
 */
static uint32_t spare_mib_of(const struct template *t)
{
	return t->spare_mib ? t->spare_mib : 20;
}

/* What the pool holds across templates: VMMs and their memory for the budget. e->lock held. */
static void budget_used(struct engine *e, unsigned *ret_count, uint64_t *ret_mib)
{
	uint64_t mib = 0;
	unsigned count = 0;

	for (size_t i = 0; i < e->n_templates; i++) {
		struct template *o = e->templates[i];
		unsigned n = o->n_slots + (o->preparing ? 1 : 0);

		mib += (uint64_t)n * slot_mib_of(o) + (uint64_t)o->n_spares * spare_mib_of(o);
		count += n + o->n_spares;
	}
	*ret_count = count;
	*ret_mib = mib;
}

/* Memory of the warm slots every template still lacks for its target: spares must leave it free. e->lock held. */
static uint64_t warm_deficit_mib(struct engine *e, unsigned *ret_count)
{
	uint64_t mib = 0;
	unsigned count = 0;

	for (size_t i = 0; i < e->n_templates; i++) {
		struct template *o = e->templates[i];
		unsigned have = o->n_slots + (o->preparing ? 1 : 0);
		unsigned lack = o->state == TPL_READY && o->pool_target > have ? o->pool_target - have : 0;

		mib += (uint64_t)lack * slot_mib_of(o);
		count += lack;
	}
	*ret_count = count;
	return mib;
}

/*
 * Would the pool stay within the host budget with add_mib more (and one VMM
 * more if new_vmm, and more_vmms)? e->lock held.
 */
static bool budget_allows(struct engine *e, uint64_t add_mib, bool new_vmm, unsigned more_vmms)
{
	uint64_t mib;
	unsigned count;

	budget_used(e, &count, &mib);
	return mib + add_mib <= e->pool_budget_mib && count + (new_vmm ? 1 : 0) + more_vmms <= e->pool_max_slots;
}

/* PSS of a process in MiB (what it costs the host, its shared pages split), or 0. */
static uint32_t pss_mib(pid_t pid)
{
	char buf[4096], *p;

	if (!proc_file_read(pid, "smaps_rollup", buf, sizeof(buf)))
		return 0;
	p = strstr(buf, "\nPss:");
	return p ? (uint32_t)((strtoull(p + 5, NULL, 10) + 1023) / 1024) : 0;
}

static uint32_t prepare_p50(const struct template *t)
{
	uint32_t v[ARRAY_SIZE(t->prep_ms)];
	unsigned n = t->n_prep < ARRAY_SIZE(v) ? t->n_prep : ARRAY_SIZE(v);

	memcpy(v, t->prep_ms, n * sizeof(v[0]));
	for (unsigned i = 1; i < n; i++)
		for (unsigned j = i; j > 0 && v[j - 1] > v[j]; j--) {
			uint32_t x = v[j];

			v[j] = v[j - 1];
			v[j - 1] = x;
		}
	return n ? v[n / 2] : 0;
}

void pool_plan(struct engine *e)
{
	struct capacity_params p;
	struct capacity_input *in;
	struct capacity_output *out;
	uint64_t now = now_ns() / 1000000;
	size_t n;

	capacity_params_default(&p, 0);
	p.budget_mib = e->pool_budget_mib;
	p.max_slots = e->pool_max_slots;
	p.target_miss = e->opts.pool_miss_target > 0 ? e->opts.pool_miss_target : 0.01;
	p.parallel = e->opts.pool_parallel ? e->opts.pool_parallel : 1;
	if (e->opts.pool_idle_decay_s)
		p.idle_decay_ms = e->opts.pool_idle_decay_s * 1000u;
	pthread_mutex_lock(&e->lock);
	n = e->n_templates;
	in = calloc(n ? n : 1, sizeof(*in));
	out = calloc(n ? n : 1, sizeof(*out));
	for (size_t i = 0; in && out && i < n; i++) {
		struct template *t = e->templates[i];

		in[i] = (struct capacity_input){
			.history = t->demand,
			/* the filler waits QUIET_MS after a create before it prepares: part of a refill */
			.prepare_ms = t->n_prep ? prepare_p50(t) + QUIET_MS : 0,
			.slot_mib = slot_mib_of(t),
			.warm = t->n_slots + (t->preparing ? 1 : 0),
			.pinned = t->pool_pinned,
			.pinned_depth = t->pool_pin,
			/* a template that cannot use slots asks for none */
			.last_demand_ms = t->state == TPL_READY ? t->last_demand_ms : 0,
		};
	}
	if (in && out && capacity_plan(&p, in, n, now, out) >= 0) {
		for (size_t i = 0; i < n; i++) {
			struct template *t = e->templates[i];

			t->plan = out[i];
			if (t->pool_target != out[i].target) {
				t->pool_target = out[i].target;
				pthread_cond_broadcast(&t->pool_cond);
			}
		}
	}
	pthread_mutex_unlock(&e->lock);
	free(in);
	free(out);
}

/* Any create of any template still deciding, or any other VMM coming up (pool_hold)? e->lock held. */
static bool creates_in_flight(struct engine *e)
{
	if (e->vmm_ops_in_flight > 0)
		return true;
	for (size_t i = 0; i < e->n_templates; i++) {
		struct template *t = e->templates[i];

		for (size_t k = 0; k < t->n_sandboxes; k++)
			if (t->sandboxes[k]->state == SB_CREATING)
				return true;
	}
	return false;
}

void pool_hold(struct engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->vmm_ops_in_flight++;
	pthread_mutex_unlock(&e->lock);
}

void pool_release(struct engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->vmm_ops_in_flight--;
	e->last_settled_ns = now_ns();
	pool_wake_all(e);
	pthread_mutex_unlock(&e->lock);
}

/* Wakes every filler: a create settled, or a preparation slot came free. e->lock held. */
void pool_wake_all(struct engine *e)
{
	for (size_t i = 0; i < e->n_templates; i++)
		pthread_cond_broadcast(&e->templates[i]->pool_cond);
}

struct warmup_req {
	const struct slot *sl;
	const char *tpl;
};

/* One copy of a warm slot's attach: a machine id of its own, so the claim's attach runs warm code that writes one too. */
static json_object *warmup_attach_build(void *arg)
{
	const struct warmup_req *w = arg;
	json_object *env = json_object_new_object();
	char host[64], mid[33];

	if (!env || machine_id_new(mid) < 0) {
		json_object_put(env);
		return NULL;
	}
	snprintf(host, sizeof(host), "slot-%" PRIu64, w->sl->id);
	json_object_object_add(env, "EMBERFS_TEMPLATE", json_object_new_string(w->tpl));
	return guest_attach_new(host, env, mid, true);
}

static int warmup_attach(struct slot *sl, const char *tpl)
{
	struct warmup_req w = { sl, tpl };

	return agent_call_resend(sl->agent, warmup_attach_build, &w, AGENT_RESTORE_TIMEOUT_MS, NULL, NULL, NULL);
}

/* The template's warm command (config "warm"), else with --warmup-exec an exec of true. */
static int warmup_exec(struct slot *sl, const char *warm, char **ret_why)
{
	return guest_run(sl->agent, warm ? warm : "true", warm ? WARM_TIMEOUT_MS : AGENT_RESTORE_TIMEOUT_MS, -1, ret_why);
}

struct slot_job {
	struct template_config cfg;
	char identity[65];
	char state_digest[65];
};

/* Publishes what the shutdown path must be able to kill. */
struct slot_start {
	struct template *t;
	struct slot *sl;
};

/* vm_start's publish: e->lock held */
static void slot_publish(void *arg, struct vmm *v, struct agent_client *ac)
{
	struct slot_start *p = arg;

	if (v) {
		p->sl->vmm = v;
		p->sl->vmm_pid = vmm_pid(v);
	}
	if (ac)
		p->sl->agent = ac;
}

static void slot_lap(struct template *t, struct slot *sl, const char *phase)
{
	pthread_mutex_lock(&t->e->lock);
	timings_lap(&sl->timings, phase);
	pthread_mutex_unlock(&t->e->lock);
}

static void slot_event(void *arg, enum vm_event ev)
{
	struct slot_start *p = arg;

	if (ev == VM_EV_NET || ev == VM_EV_NET_BUILT)
		slot_lap(p->t, p->sl, "net");
	else if (ev == VM_EV_SPAWNED)
		record_write(p->sl->dir, p->t->name, NULL, p->sl->vmm_pid, p->sl->rundir);
	else if (ev == VM_EV_CONNECTED)
		slot_lap(p->t, p->sl, "spawn");
	else if (ev == VM_EV_RESTORED)
		slot_lap(p->t, p->sl, "restore");
}

/* t->preparing's first half: its VMM spawned on clones of the snapshot, waiting for the state. Not under the lock. */
static int slot_spawn_steps(struct template *t, struct slot_job *j, struct slot *sl, char **ret_why)
{
	struct engine *e = t->e;
	_cleanup_free_ char *mem = vm_file(sl->dir, VM_MEM), *disk = NULL;
	_cleanup_close_ int state_fd = -1, ram_fd = -1;
	enum clone_method m = CLONE_COPY;
	struct slot_start st = { .t = t, .sl = sl };
	const char *step;
	struct vmm *v;
	int r;

	disk = j->cfg.rootfs ? vm_file(sl->dir, VM_DISK) : NULL;
	if (!mem || (j->cfg.rootfs && !disk))
		return -ENOMEM;
	/* the record first (no VMM yet), then what it accounts for */
	if ((r = mkdir_p(sl->dir, 0700)) < 0 || (r = record_write(sl->dir, t->name, NULL, 0, sl->rundir)) < 0 ||
	    (r = mkdir_p(sl->rundir, 0700)) < 0) {
		*ret_why = strdup("cannot make its directories");
		return r;
	}
	if ((r = template_snapshot_clone(t, mem, disk, &m, &state_fd, &ram_fd, ret_why)) < 0)
		return r;
	sl->clone_method = clone_method_name(m);
	slot_lap(t, sl, "clone");
	{
		/* the VMM holds the state file as its incoming stream and maps the base: the daemon's copies go */
		const struct vm_launch l = { .cfg = &j->cfg, .name = t->name, .dir = sl->dir, .rundir = sl->rundir,
					     .disk = disk, .state_fd = state_fd, .ram_fd = ram_fd, .net = &sl->net,
					     .cancel = &t->pool_cancel, .publish = slot_publish, .event = slot_event,
					     .arg = &st };

		return vm_spawn(e, &l, &v, &step, ret_why);
	}
}

/* Its second half: the spawned VMM restored, warmed up and paused. Not under the lock. */
static int slot_warm_steps(struct template *t, struct slot_job *j, struct slot *sl, char **ret_why)
{
	struct engine *e = t->e;
	struct slot_start st = { .t = t, .sl = sl };
	const struct vm_launch l = { .cfg = &j->cfg, .name = t->name, .dir = sl->dir, .rundir = sl->rundir,
				     .state_fd = -1, .net = &sl->net, .cancel = &t->pool_cancel,
				     .publish = slot_publish, .event = slot_event, .arg = &st };
	const char *step;
	int r = vm_load(e, &l, sl->vmm, true, &step);

	for (int i = 0; r == 0 && i < WARMUP_ROUNDS; i++) {
		r = warmup_attach(sl, t->name);
		/* optional: fork and exec (and the warm command's code) translated too; the attach path stays the freshest */
		if (r == 0 && i == WARMUP_ROUNDS - 2 && (j->cfg.warm || e->opts.warmup_exec))
			r = warmup_exec(sl, j->cfg.warm, ret_why);
	}
	slot_lap(t, sl, "warmup");
	if (r < 0)
		return r;
	r = vmm_pause(sl->vmm, QMP_TIMEOUT_MS);
	slot_lap(t, sl, "pause");
	return r;
}

/* Builds t->preparing into a spare (warm false), or a warm, paused slot (from its spare if it was one). */
static int slot_prepare_steps(struct template *t, struct slot_job *j, struct slot *sl, bool warm, char **ret_why)
{
	int r = 0;

	if (!sl->vmm)
		r = slot_spawn_steps(t, j, sl, ret_why);
	return r < 0 || !warm ? r : slot_warm_steps(t, j, sl, ret_why);
}

/* The same; a VMM that died meanwhile (its guest panicked during the warm-up) says why. */
static int slot_prepare(struct template *t, struct slot_job *j, struct slot *sl, bool warm, char **ret_why)
{
	int r = slot_prepare_steps(t, j, sl, warm, ret_why);

	if (r < 0 && !*ret_why && sl->vmm && !atomic_load(&t->pool_cancel)) {
		_cleanup_free_ char *con = vm_file(sl->dir, VM_CONSOLE), *log = vm_file(sl->dir, VM_LOG);
		_cleanup_free_ char *cause = vmm_death_cause(t->e, sl->vmm, r, con, log);

		if (cause && asprintf(ret_why, "its VMM exited during the preparation: %s", cause) < 0)
			*ret_why = NULL;
	}
	return r;
}

static struct slot *slot_new(struct template *t)
{
	struct engine *e = t->e;
	struct slot *sl = calloc(1, sizeof(*sl));
	char idbuf[32];

	if (!sl)
		return NULL;
	sl->id = atomic_fetch_add(&e->next_id, 1);
	snprintf(idbuf, sizeof(idbuf), "%" PRIu64, sl->id);
	sl->dir = strjoin(e->store.root, "/vms/", idbuf, NULL);
	sl->rundir = strjoin(e->state_dir, "/run/", idbuf, NULL);
	if (!sl->dir || !sl->rundir) {
		free(sl->dir);
		free(sl->rundir);
		free(sl);
		return NULL;
	}
	sl->state = SLOT_PREPARING;
	timings_start(&sl->timings);
	return sl;
}

static void wait_a_while(struct template *t, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += (long)ms * 1000000;
	ts.tv_sec += ts.tv_nsec / 1000000000;
	ts.tv_nsec %= 1000000000;
	pthread_cond_timedwait(&t->pool_cond, &t->e->lock, &ts);
}

/* The oldest spare, for the filler to make a warm slot of (pool_take_unfit just ran). e->lock held. */
static struct slot *spare_pop(struct template *t)
{
	struct slot *sl = t->spares;

	if (sl) {
		t->spares = sl->next;
		t->n_spares--;
		sl->next = NULL;
	}
	return sl;
}

static void *pool_main(void *arg)
{
	struct template *t = arg;
	struct engine *e = t->e;
	unsigned failures = 0;

	pthread_mutex_lock(&e->lock);
	while (!t->pool_stop) {
		struct slot_job j = { 0 };
		struct slot *sl, *drop = pool_take_unfit(t);
		uint32_t mib = 0;
		uint64_t add_mib;
		unsigned lack;
		_cleanup_free_ char *why = NULL;
		bool warm, spare_ok, promote;
		int r;

		if (drop) {
			pthread_mutex_unlock(&e->lock);
			slots_free_list(e, drop);
			pthread_mutex_lock(&e->lock);
			continue;
		}
		/* warm slots first; spares once the warm target is met */
		warm = t->state == TPL_READY && t->n_slots < t->pool_target;
		spare_ok = t->state == TPL_READY && !warm && t->n_spares < spare_target(t);
		promote = warm && t->spares; /* a warm slot from a spare: it costs a slot less a spare */
		if ((warm || spare_ok) && !creates_in_flight(e) && now_ns() - e->last_settled_ns < QUIET_MS * 1000000ull) {
			wait_a_while(t, QUIET_MS);
			continue;
		}
		add_mib = !warm ? spare_mib_of(t) : slot_mib_of(t);
		if (promote)
			add_mib -= add_mib > spare_mib_of(t) ? spare_mib_of(t) : add_mib;
		lack = 0;
		if (!warm) /* a spare only in what every template's warm target leaves */
			add_mib += warm_deficit_mib(e, &lack);
		if ((!warm && !spare_ok) || creates_in_flight(e) || e->slots_preparing >= e->opts.pool_parallel ||
		    !budget_allows(e, add_mib, !promote, lack)) {
			/* a periodic look: health and age of the slots and spares held */
			if (t->n_slots > 0 || t->n_spares > 0)
				wait_a_while(t, HEALTH_PERIOD_MS);
			else
				pthread_cond_wait(&t->pool_cond, &e->lock);
			continue;
		}
		if (!promote && engine_store_admit(e, t->cfg.mem_mib, &why) < 0) {
			/* no room in the store: look again in a while, no failure counted */
			if (!t->pool_error || strcmp(t->pool_error, why) != 0) {
				free(t->pool_error);
				t->pool_error = TAKE_PTR(why);
			}
			wait_a_while(t, 1000);
			continue;
		}
		if (template_config_vm(t, &j.cfg) < 0) {
			wait_a_while(t, 1000);
			continue;
		}
		if (promote) {
			sl = spare_pop(t);
			sl->state = SLOT_PREPARING;
			sl->spare_ms = timings_total(&sl->timings);
			timings_start(&sl->timings); /* its laps: the second half's */
			t->pool_stats.spares_promoted++;
		} else if (!(sl = slot_new(t))) {
			template_config_clear(&j.cfg);
			wait_a_while(t, 1000);
			continue;
		} else {
			memcpy(sl->identity, t->identity, 65);
			memcpy(sl->state_digest, t->bake.state_digest, 65);
		}
		memcpy(j.identity, t->identity, 65);
		memcpy(j.state_digest, t->bake.state_digest, 65);
		t->preparing = sl;
		e->slots_preparing++;
		pthread_mutex_unlock(&e->lock);

		r = slot_prepare(t, &j, sl, warm, &why);
		template_config_clear(&j.cfg);
		if (r == 0)
			mib = pss_mib(sl->vmm_pid);

		pthread_mutex_lock(&e->lock);
		t->preparing = NULL;
		e->slots_preparing--;
		pool_wake_all(e);
		if (r == 0 && slot_matches(t, sl) && !t->pool_stop) {
			sl->state = warm ? SLOT_WARM : SLOT_SPARE;
			sl->warm_ns = now_ns();
			failures = 0;
			if (!warm) {
				list_push_tail(&t->spares, sl);
				t->n_spares++;
				t->pool_stats.spares_spawned++;
				if (mib)
					t->spare_mib = mib;
				continue;
			}
			list_push_tail(&t->slots, sl);
			t->n_slots++;
			t->pool_stats.prepared++;
			/* a slot's refill time from nothing: a promoted spare's own making counts (the next one is spawned) */
			t->prep_ms[t->n_prep++ % ARRAY_SIZE(t->prep_ms)] = (uint32_t)(sl->spare_ms + timings_total(&sl->timings));
			if (mib)
				t->slot_mib = mib;
			continue;
		}
		if (r < 0 && !t->pool_stop) {
			t->pool_stats.prepare_failed++;
			free(t->pool_error);
			if (asprintf(&t->pool_error, "%s %" PRIu64 ": %s", warm ? "slot" : "spare", sl->id,
				     why ? why : strerror(-r)) < 0)
				t->pool_error = NULL;
			log_warn("template %s: cannot prepare %s %" PRIu64 ": %s", t->name, warm ? "warm slot" : "spare",
				 sl->id, why ? why : strerror(-r));
		}
		pthread_mutex_unlock(&e->lock);
		slot_free(e, sl);
		pthread_mutex_lock(&e->lock);
		if (r < 0 && !t->pool_stop) {
			/* a failing snapshot must not spin: back off up to 8 s */
			failures++;
			wait_a_while(t, 250u << (failures < 5 ? failures : 5));
		}
	}
	{
		struct slot *drop = TAKE_PTR(t->slots), *spares = TAKE_PTR(t->spares);

		t->n_slots = 0;
		t->n_spares = 0;
		pthread_mutex_unlock(&e->lock);
		slots_free_list(e, drop);
		slots_free_list(e, spares);
	}
	return NULL;
}

/* e->lock held */
void pool_start(struct template *t)
{
	if (t->pool_thread_started)
		return;
	t->pool_stop = false;
	atomic_store(&t->pool_cancel, false);
	if (thread_create(&t->pool_thread, NULL, pool_main, t) == 0)
		t->pool_thread_started = true;
	else
		log_warn("template %s: cannot start the warm pool's filler", t->name);
}

/* Stops the filler (killing a slot being prepared) and frees every slot; e->lock not held. */
void pool_stop(struct template *t)
{
	struct engine *e = t->e;
	bool started;

	pthread_mutex_lock(&e->lock);
	t->pool_stop = true;
	atomic_store(&t->pool_cancel, true);
	if (t->preparing && t->preparing->vmm)
		vmm_kill(t->preparing->vmm);
	if (t->preparing && t->preparing->agent)
		agent_shutdown(t->preparing->agent);
	started = t->pool_thread_started;
	t->pool_thread_started = false;
	pthread_cond_broadcast(&t->pool_cond);
	pthread_mutex_unlock(&e->lock);
	if (started)
		pthread_join(t->pool_thread, NULL);
}

/* ---- the pool file and the slots directory ---- */

/* e->lock held, or the template not yet shared */
static void pool_set_mode(struct template *t, bool pinned, unsigned depth)
{
	t->pool_pinned = pinned;
	t->pool_pin = depth;
	if (pinned)
		t->pool_target = depth; /* at once; the controller only cuts it if pins exceed the budget */
	pthread_cond_broadcast(&t->pool_cond);
}

int template_pool_load(struct template *t)
{
	_cleanup_free_ char *p = strjoin(t->dir, "/pool", NULL), *txt = NULL;
	bool pinned;
	unsigned depth;

	if (!t->demand)
		t->demand = calloc(1, sizeof(*t->demand));
	pool_set_mode(t, t->e->opts.pool_pinned, t->e->opts.pool_pinned ? t->e->opts.pool_depth : 0);
	if (!t->e->opts.pool_pinned)
		t->pool_target = 0; /* until the controller's first answer (within a second) */
	if (!p || read_file(p, 64, &txt, NULL) < 0)
		return 0;
	if (pool_parse(txt, strlen(txt), &pinned, &depth) < 0) {
		log_warn("template %s: ignoring a bad pool file (%s)", t->name, p);
		return 0;
	}
	pool_set_mode(t, pinned, depth);
	return 0;
}

/* "N\n" (0..POOL_MAX) or "auto\n"; saved with the template. */
int template_pool_write(struct template *t, const char *data, size_t len)
{
	struct engine *e = t->e;
	_cleanup_free_ char *p = strjoin(t->dir, "/pool", NULL);
	char buf[32];
	bool pinned;
	unsigned depth;
	int r = pool_parse(data, len, &pinned, &depth);

	if (r < 0)
		return r;
	if (!p)
		return -ENOMEM;
	if (pinned)
		snprintf(buf, sizeof(buf), "%u\n", depth);
	else
		snprintf(buf, sizeof(buf), "auto\n");
	pthread_mutex_lock(&e->lock);
	r = t->removed ? -ENOENT : write_file_atomic(p, buf, strlen(buf), false);
	if (r == 0)
		pool_set_mode(t, pinned, depth);
	pthread_mutex_unlock(&e->lock);
	if (r == 0 && !pinned)
		pool_plan(e); /* the controller's depth now, not within a second */
	return r;
}

char *template_render_pool(struct template *t)
{
	char *s = NULL;
	int r;

	pthread_mutex_lock(&t->e->lock);
	r = t->pool_pinned ? asprintf(&s, "%u\n", t->pool_pin) : asprintf(&s, "auto\n");
	pthread_mutex_unlock(&t->e->lock);
	return r < 0 ? NULL : s;
}

char *template_render_stats(struct template *t)
{
	struct engine *e = t->e;
	_cleanup_json_ json_object *o = json_object_new_object();
	json_object *miss = json_object_new_object(), *plan = json_object_new_object(), *bud;
	const struct pool_stats *ps = &t->pool_stats;
	uint64_t served, misses = 0, used_mib = 0;
	unsigned used_slots = 0;
	char *s;

	pthread_mutex_lock(&e->lock);
	for (int i = 0; i < _MISS_MAX; i++) {
		json_object_object_add(miss, miss_reason_name((enum miss_reason)i),
				       json_object_new_int64((int64_t)t->miss[i]));
		misses += t->miss[i];
	}
	served = ps->served_warm + misses;
	json_object_object_add(o, "mode", json_object_new_string(t->pool_pinned ? "pinned" : "auto"));
	json_object_object_add(o, "target", json_object_new_int((int)t->pool_target));
	json_object_object_add(o, "warm", json_object_new_int((int)t->n_slots));
	json_object_object_add(o, "preparing", json_object_new_int(t->preparing ? 1 : 0));
	json_object_object_add(o, "creates", json_object_new_int64((int64_t)served));
	json_object_object_add(o, "hits", json_object_new_int64((int64_t)ps->served_warm));
	json_object_object_add(o, "hit_rate", served ? json_object_new_double((double)ps->served_warm / (double)served) :
						       NULL);
	json_object_object_add(o, "misses", miss);
	json_object_object_add(plan, "target", json_object_new_int((int)t->plan.target));
	json_object_object_add(plan, "demand", json_object_new_int((int)t->plan.demand));
	json_object_object_add(plan, "reason", json_object_new_string(capacity_reason_name(t->plan.reason)));
	json_object_object_add(plan, "expected_miss", json_object_new_double(t->plan.miss));
	json_object_object_add(plan, "arrival_rate_per_s", json_object_new_double(t->plan.rate));
	json_object_object_add(plan, "refill_ms", ms_json(t->plan.prepare_ms));
	json_object_object_add(o, "controller", plan);
	json_object_object_add(o, "prepare_ms_p50", t->n_prep ? json_object_new_int((int)prepare_p50(t)) : NULL);
	json_object_object_add(o, "slot_mib", json_object_new_int((int)slot_mib_of(t)));
	json_object_object_add(o, "slot_mib_measured", json_object_new_boolean(t->slot_mib != 0));
	budget_used(e, &used_slots, &used_mib);
	json_object_object_add(o, "spares", json_object_new_int((int)t->n_spares));
	json_object_object_add(o, "spare_mib", json_object_new_int((int)spare_mib_of(t)));
	bud = json_object_new_object();
	json_object_object_add(bud, "mib", json_object_new_int64((int64_t)e->pool_budget_mib));
	json_object_object_add(bud, "used_mib", json_object_new_int64((int64_t)used_mib));
	json_object_object_add(bud, "max_slots", json_object_new_int((int)e->pool_max_slots));
	json_object_object_add(bud, "used_slots", json_object_new_int((int)used_slots));
	json_object_object_add(o, "budget", bud);
	pthread_mutex_unlock(&e->lock);
	s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	if (s) {
		char *n2 = realloc(s, strlen(s) + 2);

		if (n2) {
			strcat(n2, "\n");
			s = n2;
		}
	}
	return s;
}

/* e->lock held */
json_object *pool_status_json(struct template *t)
{
	json_object *o = json_object_new_object(), *rec = json_object_new_object(), *cr = json_object_new_object();
	const struct pool_stats *s = &t->pool_stats;

	json_object_object_add(o, "mode", json_object_new_string(t->pool_pinned ? "pinned" : "auto"));
	json_object_object_add(o, "target", json_object_new_int((int)t->pool_target));
	json_object_object_add(o, "warm", json_object_new_int((int)t->n_slots));
	json_object_object_add(o, "preparing", json_object_new_int(t->preparing ? 1 : 0));
	json_object_object_add(o, "spares", json_object_new_int((int)t->n_spares));
	json_object_object_add(o, "spare_target", json_object_new_int((int)spare_target(t)));
	json_object_object_add(o, "spares_spawned", json_object_new_int64((int64_t)s->spares_spawned));
	json_object_object_add(o, "spares_promoted", json_object_new_int64((int64_t)s->spares_promoted));
	json_object_object_add(o, "prepared", json_object_new_int64((int64_t)s->prepared));
	json_object_object_add(o, "prepare_failed", json_object_new_int64((int64_t)s->prepare_failed));
	json_object_object_add(cr, "warm", json_object_new_int64((int64_t)s->served_warm));
	json_object_object_add(cr, "restore", json_object_new_int64((int64_t)s->served_restore));
	json_object_object_add(cr, "restore_on_spare", json_object_new_int64((int64_t)s->served_spare));
	json_object_object_add(cr, "cold", json_object_new_int64((int64_t)s->served_cold));
	json_object_object_add(o, "creates", cr);
	json_object_object_add(o, "forks_on_spare", json_object_new_int64((int64_t)s->forks_spare));
	json_object_object_add(o, "wakes_on_spare", json_object_new_int64((int64_t)s->wakes_spare));
	json_object_object_add(o, "misses", json_object_new_int64((int64_t)s->misses));
	json_object_object_add(rec, "stale", json_object_new_int64((int64_t)s->recycled_stale));
	json_object_object_add(rec, "dead", json_object_new_int64((int64_t)s->recycled_dead));
	json_object_object_add(rec, "aged", json_object_new_int64((int64_t)s->recycled_aged));
	json_object_object_add(rec, "excess", json_object_new_int64((int64_t)s->recycled_excess));
	json_object_object_add(rec, "removed", json_object_new_int64((int64_t)s->recycled_removed));
	json_object_object_add(o, "recycled", rec);
	json_object_object_add(o, "error", t->pool_error ? json_object_new_string(t->pool_error) : NULL);
	return o;
}

/* e->lock held */
static struct slot *find_slot(struct template *t, uint64_t id)
{
	if (t->preparing && t->preparing->id == id)
		return t->preparing;
	for (struct slot *sl = t->slots; sl; sl = sl->next)
		if (sl->id == id)
			return sl;
	for (struct slot *sl = t->spares; sl; sl = sl->next)
		if (sl->id == id)
			return sl;
	return NULL;
}

struct template *engine_slot_template(struct engine *e, uint64_t slot_id)
{
	struct template *found = NULL;

	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < e->n_templates && !found; i++)
		if (find_slot(e->templates[i], slot_id))
			found = e->templates[i];
	if (found)
		atomic_fetch_add(&found->refs, 1);
	pthread_mutex_unlock(&e->lock);
	return found;
}

bool template_has_slot(struct template *t, uint64_t slot_id)
{
	bool r;

	pthread_mutex_lock(&t->e->lock);
	r = find_slot(t, slot_id) != NULL;
	pthread_mutex_unlock(&t->e->lock);
	return r;
}

uint64_t *template_slot_ids(struct template *t, size_t *ret_n)
{
	uint64_t *v;
	size_t n = 0;

	pthread_mutex_lock(&t->e->lock);
	v = calloc(t->n_slots + t->n_spares + 2, sizeof(*v));
	if (v && t->preparing)
		v[n++] = t->preparing->id;
	for (struct slot *sl = t->slots; v && sl; sl = sl->next)
		v[n++] = sl->id;
	for (struct slot *sl = t->spares; v && sl; sl = sl->next)
		v[n++] = sl->id;
	pthread_mutex_unlock(&t->e->lock);
	*ret_n = n;
	return v;
}

char *template_render_slot(struct template *t, uint64_t slot_id)
{
	struct engine *e = t->e;
	_cleanup_json_ json_object *o = NULL;
	struct slot *sl;
	char *txt = NULL;

	pthread_mutex_lock(&e->lock);
	sl = find_slot(t, slot_id);
	if (sl) {
		o = json_object_new_object();
		json_object_object_add(o, "id", json_object_new_int64((int64_t)sl->id));
		json_object_object_add(o, "template", json_object_new_string(t->name));
		json_object_object_add(o, "state", json_object_new_string(sl->state != SLOT_PREPARING && !slot_matches(t, sl) ?
										  "stale" : slot_state_name(sl->state)));
		json_object_object_add(o, "identity", json_object_new_string(sl->identity));
		json_object_object_add(o, "state_sha256", json_object_new_string(sl->state_digest));
		json_object_object_add(o, "backend", json_object_new_string(sl->vmm ? sl->vmm->ops->name : t->cfg.backend));
		json_object_object_add(o, "accel", json_object_new_string(e->accel));
		json_object_object_add(o, "age_ms", sl->state != SLOT_PREPARING ?
							   ms_json(ns_to_ms(now_ns() - sl->warm_ns)) : NULL);
		json_object_object_add(o, "vmm_pid", sl->vmm_pid ? json_object_new_int(sl->vmm_pid) : NULL);
		json_object_object_add(o, "clone", sl->clone_method ? json_object_new_string(sl->clone_method) : NULL);
		json_object_object_add(o, "prepared_by", json_object_new_string(
			sl->state == SLOT_SPARE ? "spawn on clones of the snapshot, waiting for its state (a spare)" :
			e->opts.warmup_exec ? "restore from the snapshot, agent warm-up (attach x4, exec x1), pause" :
					      "restore from the snapshot, agent warm-up (attach x4), pause"));
		json_object_object_add(o, "timings", timings_json(&sl->timings));
		json_object_object_add(o, "prepare_ms", sl->state != SLOT_PREPARING ?
							       ms_json(sl->spare_ms + timings_total(&sl->timings)) : NULL);
		txt = strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE),
			      "\n", NULL);
	}
	pthread_mutex_unlock(&e->lock);
	return txt;
}

/* rmdir slots/ID: the slot or spare is recycled (the filler replaces it); one being prepared: EBUSY. */
int template_slot_drop(struct template *t, uint64_t slot_id)
{
	struct engine *e = t->e;
	struct slot *found = NULL;
	int r = -ENOENT;

	pthread_mutex_lock(&e->lock);
	if (t->preparing && t->preparing->id == slot_id)
		r = -EBUSY;
	for (int k = 0; k < 2 && r == -ENOENT; k++)
		for (struct slot **pp = k ? &t->spares : &t->slots; *pp && r == -ENOENT; pp = &(*pp)->next)
			if ((*pp)->id == slot_id) {
				found = *pp;
				*pp = found->next;
				found->next = NULL;
				(*(k ? &t->n_spares : &t->n_slots))--;
				t->pool_stats.recycled_removed++;
				pthread_cond_broadcast(&t->pool_cond);
				r = 0;
			}
	pthread_mutex_unlock(&e->lock);
	slot_free(e, found);
	return r;
}
