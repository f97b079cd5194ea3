/*
 * The engine's whole lifecycle through engine.h, with the fake driver
 * (tests/unit/fakevmm) in place of QEMU: create by each path (cold, restore,
 * warm slot, fork), pause, resume, hibernate, wake, template NEW, destroy,
 * a daemon crash and a new engine re-adopting what runs, and a failure at
 * each create phase (the fake VMM told to fail there, or the create hook
 * killing it). After each test the engine is freed and nothing may be
 * left: no process (this process is the subreaper of every fake VMM, so a
 * leaked one is our child), no VM or run directory.
 *
 * Needs no privilege: no loop store, no network, VMMs as the test's user;
 * cgroups only if the engine may make them (as root).
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "fakevmm.h"
#include "internal.h"

static const struct vmm_ops *const fake_drivers[] = { &fake_vmm_ops, NULL };

struct fx {
	char dir[64];
	char state[96];
	char config[512];
	struct engine *e;
	struct template *t;
	struct engine_hooks hooks;
	const char *kill_at; /* the create hook kills the VMM at this phase */
	unsigned spares;     /* --spares */
	unsigned max_slots;  /* --pool-max-slots (0: the default) */
};

/* --spares and --pool-max-slots of the next fixture (setup_spares, setup_spare_one_vmm) */
static unsigned next_spares, next_max_slots;

/* ---- waiting ---- */

struct done {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	int result;
};

static void done_fn(void *arg, int result)
{
	struct done *d = arg;

	pthread_mutex_lock(&d->lock);
	d->done = true;
	d->result = result;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

static int done_wait(struct done *d)
{
	struct timespec ts;
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	pthread_mutex_lock(&d->lock);
	while (!d->done && r == 0)
		r = pthread_cond_timedwait(&d->cond, &d->lock, &ts);
	pthread_mutex_unlock(&d->lock);
	return d->done ? d->result : -ETIMEDOUT;
}

#define DONE_INIT { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, 0 }

static int sandbox_wait(struct sandbox *s)
{
	struct done d = DONE_INIT;

	sandbox_wait_async(s, done_fn, &d);
	return done_wait(&d);
}

/* A field of a rendered status (JSON), malloc'd; NULL if absent. */
static char *field(char *json, const char *key)
{
	_cleanup_json_ json_object *o = json ? json_tokener_parse(json) : NULL;
	json_object *v;
	char *r = NULL;

	if (o && json_object_object_get_ex(o, key, &v) && !json_object_is_type(v, json_type_null))
		r = strdup(json_object_get_string(v));
	free(json);
	return r;
}

static void assert_sandbox(struct sandbox *s, const char *key, const char *want)
{
	_cleanup_free_ char *v = field(sandbox_render_status(s), key);

	if (!v || strcmp(v, want) != 0)
		fail_msg("sandbox %s: %s is %s, expected %s", sandbox_name(s), key, v ? v : "absent", want);
}

static void template_wait_state(struct template *t, const char *want)
{
	for (int i = 0; i < 2000; i++) {
		_cleanup_free_ char *st = field(template_render_status(t), "state");

		if (st && strcmp(st, want) == 0)
			return;
		usleep(10 * 1000);
	}
	fail_msg("template never became %s", want);
}

/* The guest's stdout for exec cmd (must exit 0). */
static char *exec_out(struct sandbox *s, const char *cmd)
{
	struct exec_result res = { 0 };
	struct done d = DONE_INIT;
	char *out;

	assert_int_equal(sandbox_exec_async(s, cmd, strlen(cmd), &res, done_fn, &d), 0);
	assert_int_equal(done_wait(&d), 0);
	assert_int_equal(res.exit_code, 0);
	out = strndup((const char *)res.out, res.out_len);
	exec_result_clear(&res);
	return out;
}

static void assert_mark(struct sandbox *s, const char *want)
{
	_cleanup_free_ char *m = exec_out(s, "mark"), *w = strjoin(want, "\n", NULL);

	assert_string_equal(m, w);
}

/* ---- the fixture ---- */

static void hook_phase(void *ctx, const char *state_dir, const char *sandbox, const char *phase, int vmm_pid,
		       const atomic_bool *cancel)
{
	struct fx *f = ctx;

	(void)state_dir;
	(void)sandbox;
	(void)cancel;
	if (f->kill_at && strcmp(f->kill_at, phase) == 0 && vmm_pid > 0)
		kill(vmm_pid, SIGKILL);
}

static int engine_open(struct fx *f)
{
	struct engine_options o = { .state_dir = f->state, .accel = ACCEL_TCG, .no_loop_store = true,
				    .pool_pinned = true, .pool_depth = 0, .spares = f->spares,
				    .pool_max_slots = f->max_slots, .vmm_uid_base = 0,
				    .store_reserve_mib = 0,
				    .hooks = &f->hooks, .drivers = fake_drivers };

	return engine_new(&o, &f->e);
}

static void write_file_or_die(const char *path, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	assert_int_equal(write(fd, "fake", 4), 4);
	close(fd);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	char k[128], r[128];

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/tmp/emberfs-fake-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->state, sizeof(f->state), "%s/state", f->dir);
	assert_int_equal(mkdir(f->state, 0700), 0);
	snprintf(k, sizeof(k), "%s/vmlinux", f->dir);
	snprintf(r, sizeof(r), "%s/rootfs.ext4", f->dir);
	write_file_or_die(k, 4096);
	write_file_or_die(r, 1 << 20);
	/* warm runs at bake, before the snapshot: every guest restored from it has the mark */
	snprintf(f->config, sizeof(f->config),
		 "{\"kernel\":\"%s\",\"rootfs\":\"%s\",\"backend\":\"fake\",\"mem_mib\":32,\"accel\":\"tcg\","
		 "\"warm\":\"mark baked\"}", k, r);
	f->hooks = (struct engine_hooks){ .create_phase = hook_phase, .ctx = f };
	f->spares = next_spares;
	f->max_slots = next_max_slots;
	fakevmm_fail_set(NULL);
	assert_int_equal(engine_open(f), 0);
	assert_int_equal(engine_template_create_config(f->e, "t", f->config, &f->t), 0);
	*state = f;
	return 0;
}

/* A failed test must not leak its VMMs into the next: every child still running is killed. */
static void kill_children(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;

	while (d && (de = readdir(d))) {
		char path[300], *text = NULL;

		snprintf(path, sizeof(path), "/proc/self/task/%s/children", de->d_name);
		if (de->d_name[0] == '.' || read_file(path, 1 << 16, &text, NULL) < 0)
			continue;
		for (char *p = text, *end; *p; p = end) {
			long pid = strtol(p, &end, 10);

			if (end == p)
				break;
			if (pid > 1)
				kill((pid_t)pid, SIGKILL);
		}
		free(text);
	}
	if (d)
		closedir(d);
	while (waitpid(-1, NULL, 0) > 0)
		;
}

/* Nothing the engine does not keep by design: no VM directory, no run directory, no process. */
static void assert_nothing_left(struct fx *f)
{
	char path[160];
	DIR *d;
	struct dirent *de;
	pid_t pid;
	int st;

	snprintf(path, sizeof(path), "%s/store/vms", f->state);
	d = opendir(path);
	while (d && (de = readdir(d)))
		if (de->d_name[0] != '.')
			fail_msg("left behind: %s/%s", path, de->d_name);
	if (d)
		closedir(d);
	snprintf(path, sizeof(path), "%s/run", f->state);
	if (access(path, F_OK) == 0)
		fail_msg("left behind: %s", path);
	/* adopted VMMs were reparented to us when their daemon "crashed": reap them */
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
		;
	if (pid == 0) {
		kill_children();
		fail_msg("a process is left running");
	}
	assert_int_equal(errno, ECHILD);
}

static int teardown(void **state)
{
	struct fx *f = *state;

	template_unref(f->t);
	engine_free(f->e);
	fakevmm_fail_set(NULL);
	assert_nothing_left(f);
	rm_rf(f->dir);
	free(f);
	return 0;
}

static struct sandbox *create(struct fx *f, struct template *t, const char *name)
{
	struct sandbox *s;

	assert_int_equal(engine_sandbox_create(f->e, t, name, &s), 0);
	return s;
}

static void bake(struct fx *f)
{
	assert_int_equal(template_ctl(f->t, "bake", 4), 0);
	template_wait_state(f->t, "ready");
}

static void ctl(struct sandbox *s, const char *cmd)
{
	assert_int_equal(sandbox_ctl(s, cmd, strlen(cmd)), 0);
}

/* ---- create by each path ---- */

static void create_cold(void **state)
{
	struct fx *f = *state;
	struct sandbox *s = create(f, f->t, "cold1");

	assert_int_equal(sandbox_wait(s), 0);
	assert_sandbox(s, "state", "ready");
	assert_sandbox(s, "path", "cold");
	assert_sandbox(s, "backend", "fake");
	assert_mark(s, ""); /* a booted guest's RAM is new */
	{
		_cleanup_free_ char *m = exec_out(s, "mark cold");
	}
	assert_mark(s, "cold");
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "cold1"), 0);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "cold1"), -ENOENT);
}

static void create_restore(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;

	bake(f);
	s = create(f, f->t, "rest1");
	assert_int_equal(sandbox_wait(s), 0);
	assert_sandbox(s, "path", "restore");
	assert_mark(s, "baked"); /* its RAM is the snapshot's */
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "rest1"), 0);
}

/* want slots, all in state `what` ("warm": prepared, paused, offered; "spare"); the first one's id. */
static uint64_t wait_slots_in(struct template *t, size_t want, const char *what)
{
	for (int i = 0; i < 2000; i++) {
		size_t n = 0, in = 0;
		_cleanup_free_ uint64_t *ids = template_slot_ids(t, &n);

		for (size_t k = 0; k < n; k++) {
			_cleanup_free_ char *st = field(template_render_slot(t, ids[k]), "state");

			in += st && strcmp(st, what) == 0;
		}
		if (n == want && in == want)
			return n ? ids[0] : 0;
		usleep(10 * 1000);
	}
	fail_msg("never %zu slots %s", want, what);
	return 0;
}

static void wait_slots(struct template *t, size_t want)
{
	wait_slots_in(t, want, "warm");
}

static int setup_spares(void **state)
{
	int r;

	next_spares = 1;
	r = setup(state);
	next_spares = 0;
	return r;
}

/* One VMM for the whole pool (--pool-max-slots 1) */
static int setup_spare_one_vmm(void **state)
{
	int r;

	next_max_slots = 1;
	r = setup_spares(state);
	next_max_slots = 0;
	return r;
}

/* "slot" of a sandbox's status: {"id", "kind", ...}; its kind, or NULL. */
static char *slot_kind(struct sandbox *s)
{
	return field(field(sandbox_render_status(s), "slot"), "kind");
}

/* No warm slot, a spare: the create restores on the spare's VMM; a new spare follows. */
static void create_on_spare(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;
	_cleanup_free_ char *kind = NULL, *id = NULL;
	uint64_t sp, next;

	bake(f);
	sp = wait_slots_in(f->t, 1, "spare");
	s = create(f, f->t, "sp1");
	assert_int_equal(sandbox_wait(s), 0);
	assert_sandbox(s, "path", "restore");
	assert_sandbox(s, "pool_miss", "pool_empty"); /* still a miss of the warm pool */
	kind = slot_kind(s);
	assert_non_null(kind);
	assert_string_equal(kind, "spare");
	id = field(field(sandbox_render_status(s), "slot"), "id");
	assert_non_null(id);
	assert_int_equal(strtoull(id, NULL, 10), sp);
	assert_mark(s, "baked"); /* its RAM is the snapshot's */
	next = wait_slots_in(f->t, 1, "spare");
	assert_int_not_equal(next, sp);
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "sp1"), 0);
}

/* A warm slot wanted while a spare waits: the filler finishes the spare (promotion), then spawns another. */
static void spare_promoted(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;
	uint64_t sp;
	size_t n = 0;

	bake(f);
	sp = wait_slots_in(f->t, 1, "spare");
	assert_int_equal(template_pool_write(f->t, "1\n", 2), 0);
	for (int i = 0; i < 2000; i++) {
		_cleanup_free_ uint64_t *ids = template_slot_ids(f->t, &n);
		_cleanup_free_ char *st = n == 2 ? field(template_render_slot(f->t, sp), "state") : NULL;

		if (st && strcmp(st, "warm") == 0)
			break;
		usleep(10 * 1000);
	}
	{
		_cleanup_free_ char *st = field(template_render_slot(f->t, sp), "state");

		assert_non_null(st);
		assert_string_equal(st, "warm");
	}
	s = create(f, f->t, "pr1");
	assert_int_equal(sandbox_wait(s), 0);
	assert_sandbox(s, "path", "warm");
	assert_mark(s, "baked");
	sandbox_unref(s);
	assert_int_equal(template_pool_write(f->t, "0\n", 2), 0);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "pr1"), 0);
}

static void create_warm(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;

	bake(f);
	assert_int_equal(template_pool_write(f->t, "1\n", 2), 0);
	wait_slots(f->t, 1);
	s = create(f, f->t, "warm1");
	assert_int_equal(sandbox_wait(s), 0);
	assert_sandbox(s, "path", "warm");
	assert_mark(s, "baked");
	sandbox_unref(s);
	assert_int_equal(template_pool_write(f->t, "0\n", 2), 0);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "warm1"), 0);
}

/* ---- lifecycle ---- */

static void pause_hibernate_wake(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;

	bake(f);
	s = create(f, f->t, "life1");
	assert_int_equal(sandbox_wait(s), 0);
	{
		_cleanup_free_ char *m = exec_out(s, "mark before-sleep");
	}
	ctl(s, "pause");
	assert_sandbox(s, "state", "paused");
	ctl(s, "resume");
	assert_sandbox(s, "state", "ready");
	assert_mark(s, "before-sleep");
	ctl(s, "hibernate");
	assert_sandbox(s, "state", "hibernated");
	{
		_cleanup_free_ char *pid = field(sandbox_render_status(s), "vmm_pid");

		assert_true(!pid || strcmp(pid, "0") == 0); /* no VMM while it sleeps */
	}
	ctl(s, "resume"); /* a wake: a new VMM from the hibernation state */
	assert_sandbox(s, "state", "ready");
	assert_mark(s, "before-sleep");
	assert_int_equal(sandbox_ctl(s, "dance", 5), -EINVAL);
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "life1"), 0);
}

/* stop ends the VMM and keeps the disk; start boots it cold again (fresh RAM), in the cold-work place */
static void stop_start(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;

	bake(f);
	s = create(f, f->t, "ss1");
	assert_int_equal(sandbox_wait(s), 0);
	{
		_cleanup_free_ char *m = exec_out(s, "mark running");
	}
	ctl(s, "stop");
	assert_sandbox(s, "state", "stopped");
	{
		_cleanup_free_ char *pid = field(sandbox_render_status(s), "vmm_pid");

		assert_true(!pid || strcmp(pid, "0") == 0); /* no VMM while stopped */
	}
	assert_int_equal(sandbox_ctl(s, "pause", 5), -EBUSY); /* not from stopped (interface.md: any other transition) */
	ctl(s, "start");
	assert_sandbox(s, "state", "ready");
	assert_mark(s, ""); /* a cold boot: its memory is new */
	ctl(s, "stop");
	assert_sandbox(s, "state", "stopped");
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "ss1"), 0);
}

static void fork_and_template(void **state)
{
	struct fx *f = *state;
	struct sandbox *s, *c, *n;
	struct template *t2;

	s = create(f, f->t, "par1"); /* cold: the template is not baked */
	assert_int_equal(sandbox_wait(s), 0);
	{
		_cleanup_free_ char *m = exec_out(s, "mark parent");
	}
	ctl(s, "fork kid1");
	c = template_sandbox_get(f->t, "kid1");
	assert_non_null(c);
	assert_int_equal(sandbox_wait(c), 0);
	assert_sandbox(c, "path", "fork");
	assert_mark(c, "parent");
	{
		_cleanup_free_ char *m = exec_out(c, "mark kid");
	}
	assert_mark(s, "parent"); /* the child's RAM is its own */
	ctl(s, "template t2");
	t2 = engine_template_get(f->e, "t2");
	assert_non_null(t2);
	template_wait_state(t2, "ready");
	n = create(f, t2, "from-t2");
	assert_int_equal(sandbox_wait(n), 0);
	assert_sandbox(n, "path", "restore");
	assert_mark(n, "parent");
	sandbox_unref(n);
	sandbox_unref(c);
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, t2, "from-t2"), 0);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "kid1"), 0);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "par1"), 0);
	template_unref(t2);
	assert_int_equal(engine_template_remove(f->e, "t2"), 0);
}

/* ---- checkpoints ---- */

static int ctl_err(struct sandbox *s, const char *cmd)
{
	return sandbox_ctl(s, cmd, strlen(cmd));
}

static size_t n_checkpoints(struct sandbox *s)
{
	char **v = sandbox_checkpoint_list(s);
	size_t n = 0;

	while (v && v[n])
		n++;
	strv_free(v);
	return n;
}

/* A half-made checkpoint's directory (.new-C) must never stay behind. */
static void assert_no_half_made(struct sandbox *s)
{
	_cleanup_free_ char *root = strjoin(s->dir, "/checkpoints", NULL);
	DIR *d = opendir(root);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d)))
		if (strncmp(de->d_name, ".new-", 5) == 0)
			fail_msg("%s/%s left behind", root, de->d_name);
	closedir(d);
}

/* Checkpoint, roll back (twice), branch, from a hibernated one, rmdir; the bad inputs change nothing. */
static void checkpoints(void **state)
{
	struct fx *f = *state;
	struct sandbox *s, *k;
	struct checkpoint *c;
	char name[32];

	s = create(f, f->t, "ck1");
	assert_int_equal(sandbox_wait(s), 0);
	{
		_cleanup_free_ char *m = exec_out(s, "mark one");
	}
	ctl(s, "checkpoint c1");
	assert_int_equal(n_checkpoints(s), 1);
	c = sandbox_checkpoint_get(s, "c1");
	assert_non_null(c);
	{
		_cleanup_free_ char *from = field(checkpoint_render_status(c), "from_state");

		assert_string_equal(from, "ready");
	}
	checkpoint_unref(c);
	{
		_cleanup_free_ char *m = exec_out(s, "mark two");
	}
	ctl(s, "rollback c1");
	assert_sandbox(s, "state", "ready");
	assert_mark(s, "one");
	{
		_cleanup_free_ char *m = exec_out(s, "mark three");
	}
	ctl(s, "rollback c1"); /* the checkpoint is as it was: again */
	assert_mark(s, "one");
	assert_sandbox(s, "last_op", "rollback");

	/* branching: the child has the checkpoint's state, the parent goes on as it was */
	{
		_cleanup_free_ char *m = exec_out(s, "mark four");
	}
	ctl(s, "fork br1 from c1");
	k = template_sandbox_get(f->t, "br1");
	assert_non_null(k);
	assert_int_equal(sandbox_wait(k), 0);
	assert_mark(k, "one");
	assert_mark(s, "four");
	sandbox_unref(k);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "br1"), 0);

	/* a hibernated one is checkpointed from its image, not woken */
	ctl(s, "hibernate");
	ctl(s, "checkpoint h1");
	assert_sandbox(s, "state", "hibernated");
	ctl(s, "rollback c1");
	assert_mark(s, "one");
	ctl(s, "rollback h1");
	assert_mark(s, "four");
	/* and a stopped one rolls back too */
	ctl(s, "stop");
	ctl(s, "rollback h1");
	assert_sandbox(s, "state", "ready");
	assert_mark(s, "four");

	/* bad input: refused, nothing changes */
	assert_int_equal(ctl_err(s, "checkpoint c1"), -EEXIST);
	assert_int_equal(ctl_err(s, "rollback nope"), -ENOENT);
	assert_int_equal(ctl_err(s, "fork br2 from nope"), -ENOENT);
	assert_null(template_sandbox_get(f->t, "br2"));
	assert_int_equal(ctl_err(s, "checkpoint ../x"), -EINVAL);
	assert_int_equal(ctl_err(s, "checkpoint a b"), -EINVAL);
	assert_int_equal(ctl_err(s, "checkpoint "), -EINVAL);
	assert_int_equal(ctl_err(s, "fork a/b from c1"), -EINVAL);
	assert_int_equal(ctl_err(s, "fork ck1 from c1"), -EEXIST);
	assert_int_equal(n_checkpoints(s), 2);
	assert_mark(s, "four");

	/* a failed save leaves nothing (the fake fails what VMMs spawned after this do) */
	fakevmm_fail_set("snapshot");
	k = create(f, f->t, "ck2");
	assert_int_equal(sandbox_wait(k), 0);
	assert_true(ctl_err(k, "checkpoint bad") < 0);
	fakevmm_fail_set(NULL);
	assert_null(sandbox_checkpoint_get(k, "bad"));
	assert_no_half_made(k);
	assert_sandbox(k, "state", "ready");
	sandbox_unref(k);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "ck2"), 0);

	/* the limit (16 by default) */
	for (int i = (int)n_checkpoints(s); i < 16; i++) {
		snprintf(name, sizeof(name), "checkpoint n%d", i);
		ctl(s, name);
	}
	assert_int_equal(ctl_err(s, "checkpoint over"), -ENOSPC);
	{
		_cleanup_free_ char *why = field(sandbox_render_status(s), "ctl_error");

		assert_non_null(why);
		assert_non_null(strstr(why, "--max-checkpoints"));
	}
	assert_int_equal(sandbox_checkpoint_remove(s, "h1"), 0);
	assert_int_equal(sandbox_checkpoint_remove(s, "h1"), -ENOENT);
	ctl(s, "checkpoint over");

	/* a rollback whose restore fails: failed with the reason, as a failed wake (its VMM is a new one) */
	fakevmm_fail_set("restore");
	assert_true(ctl_err(s, "rollback c1") < 0);
	fakevmm_fail_set(NULL);
	assert_sandbox(s, "state", "failed");
	assert_int_equal(ctl_err(s, "rollback c1"), -EBUSY);
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "ck1"), 0);
}

/* ---- a daemon restart ---- */

/*
 * The daemon dies (a child process runs an engine, creates sandboxes and
 * exits without engine_free: what a crash leaves); a new engine on the same
 * state directory re-adopts the running and the paused one.
 */
static void restart_adopts(void **state)
{
	struct fx *f = *state;
	struct sandbox *a, *b;
	pid_t pid;
	int st;

	template_unref(TAKE_PTR(f->t));
	engine_free(TAKE_PTR(f->e));
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct sandbox *x, *y;
		int ok;

		ok = engine_open(f) == 0 && (f->t = engine_template_get(f->e, "t")) &&
		     engine_sandbox_create(f->e, f->t, "run1", &x) == 0 && sandbox_wait(x) == 0 &&
		     engine_sandbox_create(f->e, f->t, "nap1", &y) == 0 && sandbox_wait(y) == 0 &&
		     sandbox_ctl(y, "pause", 5) == 0;
		if (ok) {
			struct exec_result res = { 0 };
			struct done d = DONE_INIT;

			ok = sandbox_exec_async(x, "mark survived", 13, &res, done_fn, &d) == 0 && done_wait(&d) == 0;
		}
		_exit(ok ? 0 : 1); /* no engine_free: the crash */
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	assert_int_equal(engine_open(f), 0);
	f->t = engine_template_get(f->e, "t");
	assert_non_null(f->t);
	a = template_sandbox_get(f->t, "run1");
	b = template_sandbox_get(f->t, "nap1");
	assert_non_null(a);
	assert_non_null(b);
	assert_sandbox(a, "state", "ready");
	assert_sandbox(b, "state", "paused");
	assert_mark(a, "survived");
	ctl(b, "resume");
	assert_mark(b, "");
	sandbox_unref(a);
	sandbox_unref(b);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "nap1"), 0);
	/* run1 stays: engine_free at teardown takes it down */
}

/* ---- failures ---- */

/* A create that fails at a phase ends failed with the reason; its destroy leaves nothing. */
static void create_fails(struct fx *f, const char *name, const char *reason_has)
{
	struct sandbox *s = create(f, f->t, name);
	_cleanup_free_ char *err = NULL;

	assert_int_equal(sandbox_wait(s), -EIO);
	assert_sandbox(s, "state", "failed");
	err = field(sandbox_render_status(s), "error");
	if (!err || !strstr(err, reason_has))
		fail_msg("%s: error \"%s\" does not say \"%s\"", name, err ? err : "", reason_has);
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, name), 0);
}

static void fail_cold_phases(void **state)
{
	struct fx *f = *state;
	static const char *const at[][2] = { { "start", "create failed at spawn" },
					     { "connect", "create failed at spawn" },
					     { "agent", "create failed at boot" },
					     { "attach", "create failed at boot" } };

	for (size_t i = 0; i < ARRAY_SIZE(at); i++) {
		char name[32];

		snprintf(name, sizeof(name), "cf-%s", at[i][0]);
		fakevmm_fail_set(at[i][0]);
		create_fails(f, name, at[i][1]);
	}
	fakevmm_fail_set(NULL);
	/* the create hook kills the VMM at each phase of a cold boot */
	for (const char *const *p = (const char *const[]){ "spawn", "connected", "agent", NULL }; *p; p++) {
		char name[32];

		snprintf(name, sizeof(name), "ck-%s", *p);
		f->kill_at = *p;
		create_fails(f, name, "create failed at");
	}
	f->kill_at = NULL;
}

static void fail_restore_phases(void **state)
{
	struct fx *f = *state;
	static const char *const at[][2] = { { "restore", "create failed at restore" },
					     { "running", "create failed at restore" },
					     { "attach", "create failed at agent" } };

	bake(f);
	for (size_t i = 0; i < ARRAY_SIZE(at); i++) {
		char name[32];

		snprintf(name, sizeof(name), "rf-%s", at[i][0]);
		fakevmm_fail_set(at[i][0]);
		create_fails(f, name, at[i][1]);
	}
	fakevmm_fail_set(NULL);
	for (const char *const *p = (const char *const[]){ "spawn", "connected", "loading", "loaded", "agent", NULL };
	     *p; p++) {
		char name[32];

		snprintf(name, sizeof(name), "rk-%s", *p);
		f->kill_at = *p;
		create_fails(f, name, "create failed at");
	}
	f->kill_at = NULL;
}

/* A warm slot that dies at its claim: the create restores instead, and says why. */
static void fail_warm_falls_back(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;
	_cleanup_free_ char *why = NULL;

	bake(f);
	assert_int_equal(template_pool_write(f->t, "1\n", 2), 0);
	wait_slots(f->t, 1);
	f->kill_at = "claimed";
	s = create(f, f->t, "wf1");
	assert_int_equal(template_pool_write(f->t, "0\n", 2), 0);
	assert_int_equal(sandbox_wait(s), 0);
	f->kill_at = NULL;
	assert_sandbox(s, "path", "restore");
	why = field(sandbox_render_status(s), "path_reason");
	assert_non_null(why);
	assert_non_null(strstr(why, "warm slot"));
	assert_mark(s, "baked");
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "wf1"), 0);
}

/*
 * The budget holds one VMM: the spare is made while no warm slot is wanted;
 * a warm slot wanted takes it over (the count stays 1) and no spare follows,
 * since it would not leave room for the warm target.
 */
static void spare_within_budget(void **state)
{
	struct fx *f = *state;
	uint64_t sp;

	bake(f);
	sp = wait_slots_in(f->t, 1, "spare");
	assert_int_equal(template_pool_write(f->t, "1\n", 2), 0);
	assert_int_equal(wait_slots_in(f->t, 1, "warm"), sp);
	usleep(1500 * 1000); /* the filler looks at least every 500 ms */
	assert_int_equal(wait_slots_in(f->t, 1, "warm"), sp);
	/* the target back to 0: the slot goes as excess, a spare comes back */
	assert_int_equal(template_pool_write(f->t, "0\n", 2), 0);
	assert_int_not_equal(wait_slots_in(f->t, 1, "spare"), sp);
}

/* The same for a spare: its VMM killed once claimed, the create restores in a VMM of its own, with the reason. */
static void fail_spare_falls_back(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;
	_cleanup_free_ char *why = NULL, *kind = NULL;

	bake(f);
	wait_slots_in(f->t, 1, "spare");
	f->kill_at = "claimed";
	s = create(f, f->t, "sf1");
	assert_int_equal(sandbox_wait(s), 0);
	f->kill_at = NULL;
	assert_sandbox(s, "path", "restore");
	why = field(sandbox_render_status(s), "path_reason");
	assert_non_null(why);
	assert_non_null(strstr(why, "spare"));
	kind = slot_kind(s);
	assert_null(kind);
	assert_mark(s, "baked");
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "sf1"), 0);
}

/* A bake whose guest does not answer, or whose snapshot fails: the template fails, creates boot cold. */
static void fail_bake(void **state)
{
	struct fx *f = *state;

	for (const char *const *p = (const char *const[]){ "ping", "snapshot", "start", NULL }; *p; p++) {
		_cleanup_free_ char *err = NULL;

		fakevmm_fail_set(*p);
		assert_int_equal(template_ctl(f->t, "bake", 4), 0);
		template_wait_state(f->t, "failed");
		err = field(template_render_status(f->t), "error");
		assert_non_null(err);
		assert_non_null(strstr(err, "bake failed"));
	}
	fakevmm_fail_set(NULL);
}

/*
 * A TCG guest's command line: the emulated platform's parameters are added
 * (docs/architecture.md, "Booting under TCG"), each unless the template's
 * own command line sets it.
 */
static void tcg_command_line(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *config = NULL;
	struct template *k = NULL;
	struct sandbox *s;
	char line[4096];

	bake(f);
	fakevmm_last_cmdline(line, sizeof(line));
	for (const char *const *p = (const char *const[]){ "panic=-1", "tsc=reliable", "nowatchdog",
							   "sysctl.vm.compaction_proactiveness=0", NULL };
	     *p; p++)
		if (!strstr(line, *p))
			fail_msg("\"%s\" not in the command line \"%s\"", *p, line);

	assert_true(asprintf(&config,
			     "{\"kernel\":\"%s/vmlinux\",\"rootfs\":\"%s/rootfs.ext4\",\"backend\":\"fake\","
			     "\"mem_mib\":32,\"accel\":\"tcg\",\"cmdline\":\"console=ttyS0 tsc=unstable panic=5 watchdog_thresh=20\"}",
			     f->dir, f->dir) > 0);
	assert_int_equal(engine_template_create_config(f->e, "k", config, &k), 0);
	s = create(f, k, "k1"); /* cold: k is not baked */
	assert_int_equal(sandbox_wait(s), 0);
	fakevmm_last_cmdline(line, sizeof(line));
	assert_non_null(strstr(line, "tsc=unstable"));
	assert_null(strstr(line, "tsc=reliable"));
	assert_non_null(strstr(line, "panic=5"));
	assert_null(strstr(line, "panic=-1"));
	assert_non_null(strstr(line, "nowatchdog")); /* watchdog_thresh= is not nowatchdog: added */
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, k, "k1"), 0);
	template_unref(k);
}

/* A failed hibernate (the snapshot refused) leaves the sandbox as it was. */
static void fail_lifecycle(void **state)
{
	struct fx *f = *state;
	struct sandbox *s;

	fakevmm_fail_set("snapshot");
	s = create(f, f->t, "lf1");
	assert_int_equal(sandbox_wait(s), 0);
	assert_true(sandbox_ctl(s, "hibernate", 9) < 0);
	assert_sandbox(s, "state", "ready");
	assert_mark(s, "");
	assert_true(sandbox_ctl(s, "fork lf2", 8) < 0);
	assert_null(template_sandbox_get(f->t, "lf2"));
	fakevmm_fail_set(NULL);
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "lf1"), 0);

	/* a VMM that refuses to pause: the sandbox runs on */
	fakevmm_fail_set("pause");
	s = create(f, f->t, "lf3");
	assert_int_equal(sandbox_wait(s), 0);
	assert_true(sandbox_ctl(s, "pause", 5) < 0);
	assert_sandbox(s, "state", "ready");
	fakevmm_fail_set(NULL);
	/* a start whose VMM dies before it answers: still stopped, and may be started again */
	ctl(s, "stop");
	fakevmm_fail_set("connect");
	assert_true(sandbox_ctl(s, "start", 5) < 0);
	assert_sandbox(s, "state", "stopped");
	fakevmm_fail_set(NULL);
	ctl(s, "start");
	assert_sandbox(s, "state", "ready");
	/* a wake whose restore fails: failed with the reason, its files kept until rmdir */
	ctl(s, "hibernate");
	fakevmm_fail_set("restore");
	assert_true(sandbox_ctl(s, "resume", 6) < 0);
	fakevmm_fail_set(NULL);
	assert_sandbox(s, "state", "failed");
	{
		_cleanup_free_ char *err = field(sandbox_render_status(s), "error");

		assert_non_null(err);
		assert_non_null(strstr(err, "wake"));
	}
	sandbox_unref(s);
	assert_int_equal(engine_sandbox_destroy(f->e, f->t, "lf3"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(create_cold, setup, teardown),
		cmocka_unit_test_setup_teardown(create_restore, setup, teardown),
		cmocka_unit_test_setup_teardown(create_warm, setup, teardown),
		cmocka_unit_test_setup_teardown(create_on_spare, setup_spares, teardown),
		cmocka_unit_test_setup_teardown(spare_promoted, setup_spares, teardown),
		cmocka_unit_test_setup_teardown(spare_within_budget, setup_spare_one_vmm, teardown),
		cmocka_unit_test_setup_teardown(pause_hibernate_wake, setup, teardown),
		cmocka_unit_test_setup_teardown(stop_start, setup, teardown),
		cmocka_unit_test_setup_teardown(fork_and_template, setup, teardown),
		cmocka_unit_test_setup_teardown(checkpoints, setup, teardown),
		cmocka_unit_test_setup_teardown(restart_adopts, setup, teardown),
		cmocka_unit_test_setup_teardown(fail_cold_phases, setup, teardown),
		cmocka_unit_test_setup_teardown(fail_restore_phases, setup, teardown),
		cmocka_unit_test_setup_teardown(fail_warm_falls_back, setup, teardown),
		cmocka_unit_test_setup_teardown(fail_spare_falls_back, setup_spares, teardown),
		cmocka_unit_test_setup_teardown(fail_bake, setup, teardown),
		cmocka_unit_test_setup_teardown(fail_lifecycle, setup, teardown),
		cmocka_unit_test_setup_teardown(tcg_command_line, setup, teardown),
	};

	/* every fake VMM whose engine "crashes" is reparented to us: a leaked one stays visible */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
