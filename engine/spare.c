/*
 * Spares: VMM processes spawned ahead for a template's current snapshot.
 *
 * Starting QEMU costs tens of milliseconds before it answers QMP, and the
 * snapshot's memory and disk clones cost a few more; none of it depends on
 * the request. A spare has both done, and waits in -incoming mode with the
 * snapshot's device state as fd 3. A restore claims one inside mkdir and only
 * loads device state into it. One filler thread per template keeps the target
 * count, one VMM at a time, and only while no create of that template is in
 * flight, so refilling never competes with a create for the CPU.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define QMP_TIMEOUT_MS 10000

void spare_free(struct engine *e, struct spare *sp)
{
	if (!sp)
		return;
	if (sp->vmm)
		e->vmm->free(sp->vmm); /* kills and reaps */
	if (sp->state_fd >= 0)
		close(sp->state_fd);
	/* the record's directory is the anchor: made first, removed last */
	if (sp->rundir)
		rm_rf(sp->rundir);
	if (sp->dir)
		rm_rf(sp->dir);
	free(sp->dir);
	free(sp->rundir);
	free(sp);
}

void spares_free_list(struct engine *e, struct spare *list)
{
	while (list) {
		struct spare *n = list->next;

		spare_free(e, list);
		list = n;
	}
}

static bool spare_matches(const struct template *t, const struct spare *sp)
{
	return t->state == TPL_READY && strcmp(sp->identity, t->identity) == 0 &&
	       strcmp(sp->state_digest, t->bake.state_digest) == 0;
}

struct spare *spares_take_stale(struct template *t)
{
	struct spare *stale = NULL, **pp = &t->spares;

	while (*pp) {
		struct spare *sp = *pp;

		if (spare_matches(t, sp)) {
			pp = &sp->next;
			continue;
		}
		*pp = sp->next;
		sp->next = stale;
		stale = sp;
		t->n_spares--;
	}
	if (stale)
		pthread_cond_broadcast(&t->spare_cond);
	return stale;
}

struct spare *spare_claim(struct template *t, struct spare **ret_dead)
{
	struct engine *e = t->e;

	while (t->spares) {
		struct spare *sp = t->spares;

		t->spares = sp->next;
		t->n_spares--;
		sp->next = NULL;
		pthread_cond_broadcast(&t->spare_cond);
		if (spare_matches(t, sp) && e->vmm->alive(sp->vmm))
			return sp;
		/* stale or dead: never handed out */
		sp->next = *ret_dead;
		*ret_dead = sp;
	}
	return NULL;
}

static bool creates_in_flight(struct template *t)
{
	for (size_t i = 0; i < t->n_sandboxes; i++)
		if (t->sandboxes[i]->state == SB_CREATING)
			return true;
	return false;
}

struct spare_job {
	struct template_config cfg;
	char identity[65];
	char state_digest[65];
};

static int spare_build(struct template *t, struct spare_job *j, struct spare **ret)
{
	struct engine *e = t->e;
	struct spare *sp = calloc(1, sizeof(*sp));
	_cleanup_free_ char *mem = NULL, *disk = NULL, *qmp = NULL, *agent = NULL, *con = NULL, *log = NULL;
	_cleanup_free_ char *why = NULL;
	_cleanup_close_ int state_fd = -1;
	enum clone_method m = CLONE_COPY;
	char idbuf[32];
	uint64_t t0 = now_ns();
	int r;

	if (!sp)
		return -ENOMEM;
	sp->state_fd = -1;
	sp->id = atomic_fetch_add(&e->next_id, 1);
	snprintf(idbuf, sizeof(idbuf), "%" PRIu64, sp->id);
	memcpy(sp->identity, j->identity, 65);
	memcpy(sp->state_digest, j->state_digest, 65);
	sp->dir = strjoin(e->store.root, "/vms/", idbuf, NULL);
	sp->rundir = strjoin(e->state_dir, "/run/", idbuf, NULL);
	mem = strjoin(sp->dir ? sp->dir : "", "/mem", NULL);
	disk = j->cfg.rootfs ? strjoin(sp->dir ? sp->dir : "", "/disk.img", NULL) : NULL;
	qmp = strjoin(sp->rundir ? sp->rundir : "", "/qmp.sock", NULL);
	agent = strjoin(sp->rundir ? sp->rundir : "", "/agent.sock", NULL);
	con = strjoin(sp->dir ? sp->dir : "", "/console.log", NULL);
	log = strjoin(sp->dir ? sp->dir : "", "/vmm.log", NULL);
	r = !sp->dir || !sp->rundir || !mem || !qmp || !agent || !con || !log ? -ENOMEM : 0;
	/* the record first (no VMM yet), then what it accounts for */
	if (r == 0 && ((r = mkdir_p(sp->dir, 0700)) < 0 ||
		       (r = record_write(sp->dir, t->name, NULL, 0, sp->rundir)) < 0 ||
		       (r = mkdir_p(sp->rundir, 0700)) < 0))
		log_debug("spare: cannot make its directories: %s", strerror(-r));
	if (r == 0 && (r = template_snapshot_clone(t, mem, disk, &m, &state_fd, &why)) < 0)
		log_warn("template %s: cannot prepare a spare VMM: %s", t->name, why ? why : strerror(-r));
	if (r == 0) {
		struct vmm_spec spec = { .cfg = &j->cfg, .accel = e->accel, .name = t->name, .mem_path = mem,
					 .disk_path = disk, .qmp_path = qmp, .agent_path = agent,
					 .console_path = con, .log_path = log, .incoming_fd = state_fd };
		_cleanup_free_ char *cmdline = NULL;

		r = engine_spec_init(e, &j->cfg, &spec, &cmdline);
		if (r == 0)
			r = e->vmm->spawn(e->qemu_binary, &spec, &sp->vmm);
		if (r == 0)
			record_write(sp->dir, t->name, NULL, e->vmm->pid(sp->vmm), sp->rundir);
	}
	if (r == 0)
		r = e->vmm->connect(sp->vmm, QMP_TIMEOUT_MS, NULL);
	sp->state_fd = TAKE_FD(state_fd);
	if (r < 0) {
		spare_free(e, sp);
		return r;
	}
	sp->clone_method = clone_method_name(m);
	sp->prepare_ms = ns_to_ms(now_ns() - t0);
	sp->ready_ns = now_ns();
	*ret = sp;
	return 0;
}

static void wait_a_while(struct template *t, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += (long)ms * 1000000;
	ts.tv_sec += ts.tv_nsec / 1000000000;
	ts.tv_nsec %= 1000000000;
	pthread_cond_timedwait(&t->spare_cond, &t->e->lock, &ts);
}

static void *spare_main(void *arg)
{
	struct template *t = arg;
	struct engine *e = t->e;
	struct spare *drop = NULL;

	pthread_mutex_lock(&e->lock);
	while (!t->spare_stop) {
		struct spare_job j = { 0 };
		struct spare *sp = NULL;
		int r;

		if (t->state != TPL_READY || t->n_spares >= e->opts.spares || creates_in_flight(t)) {
			pthread_cond_wait(&t->spare_cond, &e->lock);
			continue;
		}
		if (template_config_copy(&t->cfg, &j.cfg) < 0) {
			wait_a_while(t, 1000);
			continue;
		}
		memcpy(j.identity, t->identity, 65);
		memcpy(j.state_digest, t->bake.state_digest, 65);
		pthread_mutex_unlock(&e->lock);
		r = spare_build(t, &j, &sp);
		template_config_clear(&j.cfg);
		pthread_mutex_lock(&e->lock);
		if (r < 0) {
			wait_a_while(t, 1000); /* a failing snapshot must not spin */
			continue;
		}
		if (spare_matches(t, sp) && !t->spare_stop) {
			sp->next = t->spares;
			t->spares = sp;
			t->n_spares++;
		} else {
			sp->next = drop;
			drop = sp;
		}
		if (drop) {
			pthread_mutex_unlock(&e->lock);
			spares_free_list(e, TAKE_PTR(drop));
			pthread_mutex_lock(&e->lock);
		}
	}
	drop = TAKE_PTR(t->spares);
	t->n_spares = 0;
	pthread_mutex_unlock(&e->lock);
	spares_free_list(e, drop);
	return NULL;
}

/* e->lock held */
void spares_start(struct template *t)
{
	if (t->spare_thread_started || t->e->opts.spares == 0)
		return;
	t->spare_stop = false;
	if (thread_create(&t->spare_thread, NULL, spare_main, t) == 0)
		t->spare_thread_started = true;
	else
		log_warn("template %s: cannot start the spare filler", t->name);
}

/* Stops the filler and frees every spare; e->lock not held. */
void spares_stop(struct template *t)
{
	struct engine *e = t->e;
	bool started;

	pthread_mutex_lock(&e->lock);
	t->spare_stop = true;
	started = t->spare_thread_started;
	t->spare_thread_started = false;
	pthread_cond_broadcast(&t->spare_cond);
	pthread_mutex_unlock(&e->lock);
	if (started)
		pthread_join(t->spare_thread, NULL);
}
