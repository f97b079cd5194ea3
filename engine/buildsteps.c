/*
 * A template's Dockerfile build (templates/T/Dockerfile, dockerfile.c
 * parses it). FROM gives the base disk (an image, see image.c, or another
 * template's root disk); every later instruction is a step whose result is
 * cached in the store by a digest of its parent's digest, its text and,
 * for COPY and ADD, the contents of what it copies: editing the last RUN
 * rebuilds that step only.
 *
 * Steps that change no file (ENV, ARG, USER, CMD, ENTRYPOINT, EXPOSE,
 * LABEL) only change the image config. The others (RUN, COPY, ADD,
 * WORKDIR) run in one guest booted for the build at the first step not
 * cached (the template's kernel, the disk of the last step, at least
 * 1 GiB of RAM, a network slot when the daemon has --net): RUN as a
 * process with the step's env, workdir and user, its output streamed to the
 * build log; COPY and ADD through the agent's file calls (files, modes,
 * owners, mtimes, symlinks, hard links; ADD extracts local archives with
 * libarchive). After each such step the guest syncs, is paused, and its
 * disk is cloned (reflink) into the cache.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <glob.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "dockerfile.h"
#include "internal.h"
#include "parse.h"

#define BUILD_MEM_MIB 1024

/* The image as the steps so far made it. */
struct bstate {
	char key[SHA256_HEX_LEN + 1];
	char *disk;		 /* its root disk: a cached step's, or the base's */
	struct image_config cfg; /* env, workdir, user, cmd, entrypoint */
	char **args;		 /* ARG values in effect (KEY=VALUE), not in the image */
};

/* The build's guest, booted at the first step that needs one. */
struct builder {
	struct template *t;
	struct engine *e;
	const struct template_config *cfg;
	char *dir, *rundir, *work;
	struct booted vm;
	bool up;
	const struct build_run *run;
	char **error;
};

static void bstate_clear(struct bstate *s)
{
	free(s->disk);
	image_config_clear(&s->cfg);
	strv_free(s->args);
	memset(s, 0, sizeof(*s));
}

/* ---- string vectors ---- */

static size_t strv_len(char **v)
{
	size_t n = 0;

	while (v && v[n])
		n++;
	return n;
}

/* Sets KEY=VALUE in *v (replacing KEY's). */
static int strv_setenv(char ***v, const char *key, const char *value)
{
	size_t n = strv_len(*v), kl = strlen(key);
	char *kv, **nv;

	if (asprintf(&kv, "%s=%s", key, value ? value : "") < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (strncmp((*v)[i], key, kl) == 0 && (*v)[i][kl] == '=') {
			free((*v)[i]);
			(*v)[i] = kv;
			return 0;
		}
	nv = realloc(*v, (n + 2) * sizeof(char *));
	if (!nv) {
		free(kv);
		return -ENOMEM;
	}
	nv[n] = kv;
	nv[n + 1] = NULL;
	*v = nv;
	return 0;
}

static char **strv_copy(char **v)
{
	size_t n = strv_len(v);
	char **c = calloc(n + 1, sizeof(char *));

	for (size_t i = 0; c && i < n; i++)
		if (!(c[i] = strdup(v[i]))) {
			strv_free(c);
			return NULL;
		}
	return c;
}

/* ARG values, then the image's ENV (which wins, as in Docker): what $VAR expands to. */
static char **vars_of(const struct bstate *s)
{
	char **v = strv_copy(s->args);

	for (char **e = s->cfg.env; v && e && *e; e++) {
		const char *eq = strchr(*e, '=');
		_cleanup_free_ char *k = eq ? strndup(*e, (size_t)(eq - *e)) : NULL;

		if (k && strv_setenv(&v, k, eq + 1) < 0) {
			strv_free(v);
			return NULL;
		}
	}
	return v;
}

static int expand(const struct bstate *s, const char *word, char **ret)
{
	char **vars = vars_of(s);
	int r = vars ? dockerfile_expand(word, vars, ret) : -ENOMEM;

	strv_free(vars);
	return r;
}

static int copy_config(const struct image_config *from, struct image_config *to)
{
	_cleanup_json_ json_object *o = image_config_json(from);

	return o ? image_config_from_json(o, to) : -ENOMEM;
}

/* ---- the step cache ---- */

static void step_key(const char *parent, const char *text, const char *extra, char out[SHA256_HEX_LEN + 1])
{
	struct sha256_ctx c;
	uint8_t d[SHA256_LEN];

	sha256_init(&c);
	sha256_update(&c, "emberfs-build-step 1\n", 21);
	sha256_update(&c, parent, strlen(parent));
	sha256_update(&c, "\n", 1);
	sha256_update(&c, text, strlen(text));
	sha256_update(&c, "\n", 1);
	sha256_update(&c, extra, strlen(extra));
	sha256_final(&c, d);
	sha256_hex(d, out);
}

static char *cache_dir(struct engine *e, const char *key)
{
	return strjoin(e->store.root, "/build-cache/", key, NULL);
}

/* A cached step: its state (disk, config, args); -ENOENT if not cached. */
static int cache_load(struct engine *e, const char *key, struct bstate *ret)
{
	_cleanup_free_ char *dir = cache_dir(e, key), *p = NULL, *text = NULL;
	_cleanup_json_ json_object *o = NULL;
	json_object *cfg, *args;
	struct stat st;

	if (!dir || !(p = strjoin(dir, "/step.json", NULL)))
		return -ENOMEM;
	if (read_file(p, 1 << 20, &text, NULL) < 0 || !(o = json_tokener_parse(text)))
		return -ENOENT;
	if (!jget_str(o, "disk") || stat(jget_str(o, "disk"), &st) < 0 || !json_object_object_get_ex(o, "config", &cfg))
		return -ENOENT; /* its disk went: not cached after all */
	cache_touch(dir);
	cache_touch(jget_str(o, "disk"));
	memset(ret, 0, sizeof(*ret));
	snprintf(ret->key, sizeof(ret->key), "%s", key);
	if (image_config_from_json(cfg, &ret->cfg) < 0 || !(ret->disk = strdup(jget_str(o, "disk"))) ||
	    !(ret->args = calloc(1, sizeof(char *)))) {
		bstate_clear(ret);
		return -ENOMEM;
	}
	if (json_object_object_get_ex(o, "args", &args))
		for (size_t i = 0; i < json_object_array_length(args); i++) {
			const char *kv = json_object_get_string(json_object_array_get_idx(args, i));
			const char *eq = kv ? strchr(kv, '=') : NULL;
			_cleanup_free_ char *k = eq ? strndup(kv, (size_t)(eq - kv)) : NULL;

			if (k && strv_setenv(&ret->args, k, eq + 1) < 0) {
				bstate_clear(ret);
				return -ENOMEM;
			}
		}
	return 0;
}

/* Records s as step key's result (disk: a file made for it there, or the parent's). */
static int cache_save(struct engine *e, const struct bstate *s)
{
	_cleanup_free_ char *dir = cache_dir(e, s->key), *p = NULL;
	_cleanup_json_ json_object *o = json_object_new_object();
	json_object *args = json_object_new_array();
	const char *txt;
	int r;

	if (!dir || !o || !args || !(p = strjoin(dir, "/step.json", NULL))) {
		json_object_put(args);
		return -ENOMEM;
	}
	for (char **a = s->args; a && *a; a++)
		json_object_array_add(args, json_object_new_string(*a));
	json_object_object_add(o, "disk", json_object_new_string(s->disk));
	json_object_object_add(o, "config", image_config_json(&s->cfg));
	json_object_object_add(o, "args", args);
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	if ((r = mkdir_p(dir, 0700)) < 0)
		return r;
	return write_file_atomic(p, txt, strlen(txt), true);
}

/* ---- the build's guest ---- */

static int builder_up(struct builder *b, const struct bstate *s)
{
	struct template_config vmcfg = { 0 };
	const char *step = "boot";
	enum clone_method m;
	int r;

	if (b->up)
		return 0;
	blog(b->run->log_fd, "-- booting the build's guest");
	rm_rf(b->dir);
	if ((r = mkdir_p(b->dir, 0700)) < 0 || (r = store_clone(&b->e->store, s->disk, b->work, &m)) < 0)
		return error_first(b->error, r, "build: cannot prepare the build's disk: %s", strerror(-r));
	if ((r = template_config_copy(b->cfg, &vmcfg)) < 0)
		return r;
	if (vmcfg.mem_mib < BUILD_MEM_MIB)
		vmcfg.mem_mib = BUILD_MEM_MIB;
	vmcfg.net = b->e->net != NULL; /* RUN steps fetch things when the host lets sandboxes out */
	vmcfg.ready_tcp_port = 0;
	r = boot_cold(b->e, &vmcfg, b->t->name, b->dir, b->rundir, b->work, b->run->cancel, &b->t->bake_vmm, &b->vm,
		      &step, b->error);
	template_config_clear(&vmcfg);
	if (r < 0)
		return error_first(b->error, r, "build: the build's guest did not come up at %s: %s (see %s/console.log)", step,
			     strerror(-r), b->dir);
	b->up = true;
	return 0;
}

static void builder_down(struct builder *b)
{
	if (b->up)
		booted_stop(b->e, &b->vm, &b->t->bake_vmm);
	b->up = false;
	rm_rf(b->rundir);
}

/* The guest's disk as it is now, as step key's: synced, the guest paused for a reflink clone. */
static int builder_keep(struct builder *b, struct bstate *s)
{
	_cleanup_free_ char *dir = cache_dir(b->e, s->key), *disk = NULL, *tmp = NULL;
	enum clone_method m;
	int r, r2;

	if (!dir || !(disk = strjoin(dir, "/disk.img", NULL)) || !(tmp = strjoin(dir, "/disk.img.tmp", NULL)))
		return -ENOMEM;
	r = guest_sync(b->vm.ac, RUN_TIMEOUT_MS);
	if (r == 0 && (r = mkdir_p(dir, 0700)) == 0 && (r = vmm_pause(b->vm.v, QMP_TIMEOUT_MS)) == 0) {
		unlink(tmp);
		r = store_clone(&b->e->store, b->work, tmp, &m);
		r2 = vmm_resume(b->vm.v, QMP_TIMEOUT_MS);
		r = r < 0 ? r : r2;
	}
	if (r == 0 && rename(tmp, disk) < 0)
		r = -errno;
	if (r < 0)
		return error_first(b->error, r, "build: keeping the step's disk: %s", strerror(-r));
	free(s->disk);
	s->disk = TAKE_PTR(disk);
	return 0;
}

/* ---- RUN ---- */

struct run {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int log_fd;
	struct agent_client *ac;
	uint64_t job;
	bool eof[2];
	bool exited;
	int err; /* a call failed */
	int64_t exit_code, signal;
	unsigned pending; /* callbacks still to come */
};

static void run_out(struct run *rn, int stream);

static void on_out(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	struct run *rn = *(struct run **)arg;
	int stream = (int)(intptr_t)((struct run **)arg)[1];

	free(arg);
	if (result == 0 && len > 0 && write(rn->log_fd, data, len) < 0) {
		/* a log that cannot take it loses output, not the build */
	}
	pthread_mutex_lock(&rn->lock);
	if (result < 0)
		rn->err = result;
	else if (jget_bool(resp, "eof") || len == 0)
		rn->eof[stream - 1] = true;
	rn->pending--;
	if (result == 0 && !rn->eof[stream - 1]) {
		pthread_mutex_unlock(&rn->lock);
		run_out(rn, stream); /* the next piece (an asynchronous call may start another) */
		return;
	}
	pthread_cond_broadcast(&rn->cond);
	pthread_mutex_unlock(&rn->lock);
}

static void run_out(struct run *rn, int stream)
{
	_cleanup_json_ json_object *req = json_object_new_object();
	void **arg = calloc(2, sizeof(void *));

	if (!req || !arg) {
		free(arg);
		pthread_mutex_lock(&rn->lock);
		rn->err = -ENOMEM;
		pthread_cond_broadcast(&rn->cond);
		pthread_mutex_unlock(&rn->lock);
		return;
	}
	arg[0] = rn;
	arg[1] = (void *)(intptr_t)stream;
	json_object_object_add(req, "op", json_object_new_string("out"));
	json_object_object_add(req, "job", json_object_new_uint64(rn->job));
	json_object_object_add(req, "stream", json_object_new_int(stream));
	json_object_object_add(req, "max", json_object_new_int(1 << 20));
	pthread_mutex_lock(&rn->lock);
	rn->pending++;
	pthread_mutex_unlock(&rn->lock);
	if (agent_call_async(rn->ac, req, NULL, 0, on_out, arg) < 0) {
		free(arg);
		pthread_mutex_lock(&rn->lock);
		rn->pending--;
		rn->err = -EIO;
		pthread_cond_broadcast(&rn->cond);
		pthread_mutex_unlock(&rn->lock);
	}
}

static void on_wait(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	struct run *rn = arg;

	(void)data;
	(void)len;
	pthread_mutex_lock(&rn->lock);
	if (result < 0) {
		rn->err = result;
	} else {
		rn->exited = true;
		rn->exit_code = jget_int(resp, "exit_code", -1);
		rn->signal = jget_int(resp, "signal", 0);
	}
	rn->pending--;
	pthread_cond_broadcast(&rn->cond);
	pthread_mutex_unlock(&rn->lock);
}

static json_object *env_json(char **env)
{
	json_object *o = json_object_new_object();

	for (char **e = env; o && e && *e; e++) {
		const char *eq = strchr(*e, '=');
		_cleanup_free_ char *k = eq ? strndup(*e, (size_t)(eq - *e)) : NULL;

		if (k && *k)
			json_object_object_add(o, k, json_object_new_string(eq + 1));
	}
	return o;
}

/* RUN: a process with the step's env (ARG values too), workdir and user; output into the build log. */
static int step_run(struct builder *b, const struct bstate *s, const struct df_instr *in)
{
	_cleanup_json_ json_object *req = json_object_new_object(), *resp = NULL;
	struct run rn = { .log_fd = b->run->log_fd, .ac = b->vm.ac };
	char **vars = vars_of(s);
	uint64_t deadline = now_ns() + (uint64_t)RUN_TIMEOUT_MS * 1000000;
	int r;

	if (!req || !vars) {
		strv_free(vars);
		return -ENOMEM;
	}
	json_object_object_add(req, "op", json_object_new_string("spawn"));
	if (in->argv) {
		json_object *a = json_object_new_array();

		for (char **p = in->argv; *p; p++)
			json_object_array_add(a, json_object_new_string(*p));
		json_object_object_add(req, "argv", a);
	} else {
		json_object_object_add(req, "sh", json_object_new_string(in->shell));
	}
	json_object_object_add(req, "env", env_json(vars));
	strv_free(vars);
	json_object_object_add(req, "cwd", json_object_new_string(s->cfg.workdir ? s->cfg.workdir : "/"));
	if (s->cfg.user)
		json_object_object_add(req, "user", json_object_new_string(s->cfg.user));
	r = agent_call(b->vm.ac, req, RUN_TIMEOUT_MS, &resp);
	if (r < 0)
		return error_first(b->error, r, "line %u (%s): cannot start: %s", in->line, in->text,
			     jget_str(resp, "error") ? jget_str(resp, "error") : strerror(-r));
	rn.job = (uint64_t)jget_int(resp, "job", 0);
	pthread_mutex_init(&rn.lock, NULL);
	pthread_cond_init(&rn.cond, NULL);
	run_out(&rn, 1);
	run_out(&rn, 2);
	{
		_cleanup_json_ json_object *w = json_object_new_object();

		json_object_object_add(w, "op", json_object_new_string("wait"));
		json_object_object_add(w, "job", json_object_new_uint64(rn.job));
		rn.pending++;
		if (agent_call_async(b->vm.ac, w, NULL, 0, on_wait, &rn) < 0) {
			rn.pending--;
			rn.err = -EIO;
		}
	}
	pthread_mutex_lock(&rn.lock);
	while (rn.pending > 0 && !rn.err && !(rn.exited && rn.eof[0] && rn.eof[1])) {
		struct timespec ts;

		if (atomic_load(b->run->cancel) || now_ns() > deadline)
			break;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&rn.cond, &rn.lock, &ts);
	}
	r = rn.err ? rn.err : !rn.exited ? (atomic_load(b->run->cancel) ? -ECANCELED : -ETIMEDOUT) : 0;
	pthread_mutex_unlock(&rn.lock);
	if (r < 0 || rn.pending > 0) {
		/* the guest goes with the failed build: its connection's end answers what is still pending */
		builder_down(b);
		pthread_mutex_lock(&rn.lock);
		while (rn.pending > 0)
			pthread_cond_wait(&rn.cond, &rn.lock);
		pthread_mutex_unlock(&rn.lock);
	}
	pthread_cond_destroy(&rn.cond);
	pthread_mutex_destroy(&rn.lock);
	if (r < 0)
		return error_first(b->error, r, "line %u (%s): %s", in->line, in->text,
			     r == -ETIMEDOUT ? "took longer than an hour" : strerror(-r));
	if (rn.exit_code != 0)
		return error_first(b->error, -EIO, "line %u (%s): exit code %" PRId64 "%s", in->line, in->text,
			     rn.exit_code, rn.signal ? " (killed by a signal)" : "");
	return 0;
}

/* ---- COPY and ADD ---- */

/* --chown: a user and group of the guest's /etc/passwd and /etc/group (names or numbers). */
static int resolve_owner(struct builder *b, const char *spec, uid_t *uid, gid_t *gid)
{
	_cleanup_free_ char *name = strdup(spec), *pw = NULL, *gr = NULL;
	char *grp = name ? strchr(name, ':') : NULL, *end;
	size_t len;
	bool found;
	FILE *f;

	if (!name)
		return -ENOMEM;
	if (grp)
		*grp++ = '\0';
	*uid = (uid_t)strtoul(name, &end, 10);
	if (*end) {
		found = false;
		if (guestfs_ac_read_file(b->vm.ac, "/etc/passwd", 1 << 20, &pw, &len) == 0 && (f = fmemopen(pw, len, "r"))) {
			struct passwd *p;

			while ((p = fgetpwent(f)))
				if (strcmp(p->pw_name, name) == 0) {
					*uid = p->pw_uid;
					*gid = p->pw_gid;
					found = true;
					break;
				}
			fclose(f);
		}
		if (!found)
			return -ENOENT;
	} else {
		*gid = (gid_t)*uid;
	}
	if (!grp)
		return 0;
	*gid = (gid_t)strtoul(grp, &end, 10);
	if (!*end)
		return 0;
	if (guestfs_ac_read_file(b->vm.ac, "/etc/group", 1 << 20, &gr, &len) == 0 && (f = fmemopen(gr, len, "r"))) {
		struct group *g;

		found = false;
		while ((g = fgetgrent(f)))
			if (strcmp(g->gr_name, grp) == 0) {
				*gid = g->gr_gid;
				found = true;
				break;
			}
		fclose(f);
		return found ? 0 : -ENOENT;
	}
	return -ENOENT;
}

/* A source path of the context (a word expanded), never outside it: ".." stops at the context's top. */
static int context_path(const char *context, const char *src, char **ret)
{
	_cleanup_free_ char *inside = NULL;
	int r = path_normalize(src, &inside);

	if (r < 0)
		return r;
	*ret = strjoin(context, strcmp(inside, "/") ? inside : "", NULL);
	return *ret ? 0 : -ENOMEM;
}

/* Walks what a COPY copies, for its digest or to copy it. */
struct walk {
	struct builder *b;
	struct sha256_ctx *hash; /* digest only */
	bool have_owner;
	uid_t uid;
	gid_t gid;
	int chmod;		 /* -1: as the source */
	struct seen {
		dev_t dev;
		ino_t ino;
		char *guest;
	} *seen;		 /* hard links: the first name copied */
	size_t n_seen;
};

static void walk_clear(struct walk *w)
{
	for (size_t i = 0; i < w->n_seen; i++)
		free(w->seen[i].guest);
	free(w->seen);
}

static void hash_str(struct sha256_ctx *h, const char *s)
{
	sha256_update(h, s, strlen(s) + 1);
}

/* Owner, mode and mtime of a copied entry. */
static int finish_entry(struct walk *w, const char *gpath, const struct stat *st)
{
	struct guest_setattr sa = { .what = GUESTFS_SET_UID | GUESTFS_SET_GID, .uid = w->have_owner ? w->uid : 0,
				    .gid = w->have_owner ? w->gid : 0 };
	int r = guestfs_ac_setattr(w->b->vm.ac, gpath, &sa);

	if (r < 0 || S_ISLNK(st->st_mode))
		return r;
	sa = (struct guest_setattr){ .what = GUESTFS_SET_MODE | GUESTFS_SET_MTIME,
				     .mode = w->chmod >= 0 && !S_ISDIR(st->st_mode) ? (mode_t)w->chmod : st->st_mode & 07777,
				     .mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec };
	return guestfs_ac_setattr(w->b->vm.ac, gpath, &sa);
}

static int copy_one(struct walk *w, const char *hpath, const char *gpath, const char *rel);

static int copy_dir(struct walk *w, const char *hpath, const char *gpath, const char *rel)
{
	DIR *d = opendir(hpath);
	struct dirent **list = NULL;
	int n, r = 0;

	if (!d)
		return -errno;
	closedir(d);
	n = scandir(hpath, &list, NULL, alphasort); /* sorted: the digest does not depend on readdir's order */
	if (n < 0)
		return -errno;
	for (int i = 0; i < n; i++) {
		const char *nm = list[i]->d_name;
		_cleanup_free_ char *hp = NULL, *gp = NULL, *rp = NULL;

		if (r == 0 && strcmp(nm, ".") && strcmp(nm, "..")) {
			hp = strjoin(hpath, "/", nm, NULL);
			gp = strjoin(gpath, strcmp(gpath, "/") ? "/" : "", nm, NULL);
			rp = strjoin(rel, "/", nm, NULL);
			r = hp && gp && rp ? copy_one(w, hp, gp, rp) : -ENOMEM;
		}
		free(list[i]);
	}
	free(list);
	return r;
}

/* One entry of the context into the guest (or into the digest), under rel's name. */
static int copy_one(struct walk *w, const char *hpath, const char *gpath, const char *rel)
{
	struct stat st;
	char target[PATH_MAX];
	ssize_t n;
	int r = 0, fd;

	if (lstat(hpath, &st) < 0)
		return -errno;
	if (w->hash) {
		char meta[64];

		hash_str(w->hash, rel);
		snprintf(meta, sizeof(meta), "%o", st.st_mode);
		hash_str(w->hash, meta);
	}
	if (S_ISDIR(st.st_mode)) {
		if (!w->hash) {
			r = guestfs_ac_mknod(w->b->vm.ac, gpath, S_IFDIR | 0755, 0);
			if (r == -EEXIST)
				r = 0;
		}
		if (r == 0)
			r = copy_dir(w, hpath, gpath, rel);
	} else if (S_ISLNK(st.st_mode)) {
		n = readlink(hpath, target, sizeof(target) - 1);
		if (n < 0)
			return -errno;
		target[n] = '\0';
		if (w->hash)
			hash_str(w->hash, target);
		else if ((r = guestfs_ac_symlink(w->b->vm.ac, target, gpath)) == -EEXIST &&
			 (r = guestfs_ac_unlink(w->b->vm.ac, gpath)) == 0)
			r = guestfs_ac_symlink(w->b->vm.ac, target, gpath);
	} else if (S_ISREG(st.st_mode)) {
		for (size_t i = 0; !w->hash && st.st_nlink > 1 && i < w->n_seen; i++)
			if (w->seen[i].dev == st.st_dev && w->seen[i].ino == st.st_ino) {
				/* a hard link of a file copied already: a link in the guest too */
				guestfs_ac_unlink(w->b->vm.ac, gpath);
				return guestfs_ac_link(w->b->vm.ac, w->seen[i].guest, gpath);
			}
		fd = open(hpath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0)
			return -errno;
		if (w->hash) {
			char hex[SHA256_HEX_LEN + 1];

			r = sha256_fd(fd, hex);
			if (r == 0)
				hash_str(w->hash, hex);
		} else {
			r = guestfs_ac_write_file(w->b->vm.ac, gpath, st.st_mode & 07777, fd);
		}
		close(fd);
		if (r == 0 && !w->hash && st.st_nlink > 1) {
			struct seen *ns = realloc(w->seen, (w->n_seen + 1) * sizeof(*ns));

			if (ns) {
				w->seen = ns;
				w->seen[w->n_seen++] = (struct seen){ st.st_dev, st.st_ino, strdup(gpath) };
			}
		}
	} else {
		return -EINVAL; /* sockets, FIFOs, devices: not copied */
	}
	if (r == 0 && !w->hash)
		r = finish_entry(w, gpath, &st);
	return r;
}

/* mkdir -p of a guest path, root's, 0755 (what Docker makes for WORKDIR and COPY destinations). */
static int guest_mkdirs(struct builder *b, const char *path)
{
	_cleanup_free_ char *p = strdup(path);
	int r = 0;

	if (!p)
		return -ENOMEM;
	if (strcmp(p, "/") == 0)
		return 0; /* the root is there (and the agent takes no "/" to make) */
	for (char *c = p + 1; r == 0; c++) {
		bool end = !*c;

		if (*c != '/' && !end)
			continue;
		*c = '\0';
		r = guestfs_ac_mknod(b->vm.ac, p, S_IFDIR | 0755, 0);
		if (r == -EEXIST) {
			struct stat st;

			r = guestfs_ac_lstat(b->vm.ac, p, &st);
			if (r == 0 && !S_ISDIR(st.st_mode))
				r = -ENOTDIR;
		}
		if (end)
			break;
		*c = '/';
	}
	return r;
}

/* A guest path for a word: relative ones are under the workdir. */
static int guest_path(const struct bstate *s, const char *word, char **ret)
{
	_cleanup_free_ char *v = NULL;
	int r = expand(s, word, &v);

	if (r < 0)
		return r;
	if (v[0] != '/') {
		char *j = strjoin(s->cfg.workdir ? s->cfg.workdir : "/", "/", v, NULL);

		free(v);
		if (!(v = j))
			return -ENOMEM;
	}
	return path_normalize(v, ret); /* the guest's agent takes no "." or ".." */
}

/*
 * A match of a source in the context is inside it: the context itself, or
 * a name in a directory that resolves under the context (a symlink in the
 * context to a directory elsewhere, /etc say, would copy host files). The
 * last component is copied as it is (a link as a link), so only its
 * directory is resolved.
 */
static bool inside_context(const char *context, const char *path)
{
	_cleanup_free_ char *root = realpath(context, NULL), *rp = NULL, *dir = strdup(path), *rdir = NULL;
	char *slash = dir ? strrchr(dir, '/') : NULL;
	size_t rl;

	if (!root || !slash)
		return false;
	if ((rp = realpath(path, NULL)) && strcmp(rp, root) == 0)
		return true;
	*slash = '\0';
	if (!(rdir = realpath(*dir ? dir : "/", NULL)))
		return false;
	rl = strlen(root);
	return strcmp(root, "/") == 0 || (strncmp(rdir, root, rl) == 0 && (rdir[rl] == '\0' || rdir[rl] == '/'));
}

/* The sources of a COPY or ADD, matched in the context (globs too), sorted. */
static int sources(const struct template_config *cfg, const struct bstate *s, const struct df_instr *in,
		   glob_t *g, char **ret_error)
{
	int r = 0;

	memset(g, 0, sizeof(*g));
	if (!cfg->context)
		return error_first(ret_error, -EINVAL, "line %u (%s): COPY and ADD need \"context\" in the template's config",
			     in->line, in->text);
	for (char **src = in->srcs; *src && r == 0; src++) {
		_cleanup_free_ char *v = NULL, *p = NULL;
		size_t before = g->gl_pathc;

		r = expand(s, *src, &v);
		if (r == 0)
			r = context_path(cfg->context, v, &p);
		if (r == 0 && glob(p, GLOB_NOSORT | (g->gl_pathc ? GLOB_APPEND : 0), NULL, g) != 0)
			g->gl_pathc = before; /* GLOB_NOMATCH */
		if (r == 0 && g->gl_pathc == before)
			r = error_first(ret_error, -ENOENT, "line %u (%s): %s: nothing there in the context %s", in->line,
				  in->text, v, cfg->context);
		for (size_t i = before; r == 0 && i < g->gl_pathc; i++)
			if (!inside_context(cfg->context, g->gl_pathv[i]))
				r = error_first(ret_error, -EPERM, "line %u (%s): %s: leads out of the context %s (a symbolic "
					  "link on the way)", in->line, in->text, g->gl_pathv[i], cfg->context);
	}
	return r;
}

/* What a COPY or ADD copies, as a digest of names, modes, link targets and contents. */
static int sources_digest(const struct template_config *cfg, const struct bstate *s, const struct df_instr *in,
			  char out[SHA256_HEX_LEN + 1], char **ret_error)
{
	struct sha256_ctx h;
	struct walk w = { .hash = &h, .chmod = -1 };
	uint8_t d[SHA256_LEN];
	glob_t g;
	int r = sources(cfg, s, in, &g, ret_error);

	sha256_init(&h);
	for (size_t i = 0; r == 0 && i < g.gl_pathc; i++) {
		const char *base = strrchr(g.gl_pathv[i], '/');

		r = copy_one(&w, g.gl_pathv[i], "/", base ? base + 1 : g.gl_pathv[i]);
		if (r < 0)
			error_first(ret_error, r, "line %u (%s): %s: %s", in->line, in->text, g.gl_pathv[i], strerror(-r));
	}
	globfree(&g);
	sha256_final(&h, d);
	sha256_hex(d, out);
	return r;
}

/* ADD of a local archive: its entries into dir, as the archive has them (owners included). */
static ssize_t read_archive(void *ctx, void *buf, size_t len)
{
	la_ssize_t n = archive_read_data(ctx, buf, len);

	return n < 0 ? -EIO : (ssize_t)n;
}

/* A name inside an archive, made relative and kept inside the destination. */
static bool entry_name_ok(const char *p)
{
	const char *c = p;

	while (*c == '/' || (c[0] == '.' && c[1] == '/'))
		c++;
	for (const char *s = c; *s; s++)
		if ((s == c || s[-1] == '/') && s[0] == '.' && s[1] == '.' && (s[2] == '/' || !s[2]))
			return false;
	return true;
}

static int add_archive(struct builder *b, const char *file, const char *dir, bool *not_archive)
{
	struct archive *a = archive_read_new();
	struct archive_entry *en;
	int r = 0, ar;

	*not_archive = false;
	if (!a)
		return -ENOMEM;
	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	archive_read_support_format_cpio(a);
	if (archive_read_open_filename(a, file, 1 << 16) != ARCHIVE_OK) {
		archive_read_free(a);
		*not_archive = true;
		return 0;
	}
	ar = archive_read_next_header(a, &en);
	if (ar != ARCHIVE_OK && ar != ARCHIVE_EOF) {
		archive_read_free(a);
		*not_archive = true; /* not an archive: copied as a file */
		return 0;
	}
	if (ar == ARCHIVE_OK && (r = guest_mkdirs(b, dir)) < 0) {
		archive_read_free(a);
		return r;
	}
	for (; ar == ARCHIVE_OK && r == 0; ar = archive_read_next_header(a, &en)) {
		const char *name = archive_entry_pathname(en), *c;
		_cleanup_free_ char *gp = NULL;
		mode_t mode = archive_entry_mode(en);
		struct guest_setattr sa;

		if (!name || !entry_name_ok(name)) {
			r = -EINVAL;
			break;
		}
		for (c = name; *c == '/' || (c[0] == '.' && c[1] == '/'); c++)
			;
		if (!*c || !strcmp(c, "."))
			continue;
		gp = strjoin(dir, strcmp(dir, "/") ? "/" : "", c, NULL);
		if (!gp) {
			r = -ENOMEM;
			break;
		}
		{
			size_t l = strlen(gp);

			while (l > 1 && gp[l - 1] == '/')
				gp[--l] = '\0';
		}
		if (archive_entry_hardlink(en)) {
			_cleanup_free_ char *from = strjoin(dir, "/", archive_entry_hardlink(en), NULL);

			r = from && entry_name_ok(archive_entry_hardlink(en)) ? guestfs_ac_link(b->vm.ac, from, gp) : -EINVAL;
			continue;
		}
		if (S_ISDIR(mode)) {
			r = guestfs_ac_mknod(b->vm.ac, gp, S_IFDIR | (mode & 07777), 0);
			if (r == -EEXIST)
				r = 0;
		} else if (S_ISLNK(mode)) {
			guestfs_ac_unlink(b->vm.ac, gp);
			r = guestfs_ac_symlink(b->vm.ac, archive_entry_symlink(en) ? archive_entry_symlink(en) : "", gp);
		} else if (S_ISREG(mode)) {
			r = guestfs_ac_write_from(b->vm.ac, gp, mode & 07777, read_archive, a);
		} else {
			guestfs_ac_unlink(b->vm.ac, gp);
			r = guestfs_ac_mknod(b->vm.ac, gp, mode, archive_entry_rdev(en));
		}
		if (r < 0)
			break;
		sa = (struct guest_setattr){ .what = GUESTFS_SET_UID | GUESTFS_SET_GID,
					     .uid = (uid_t)archive_entry_uid(en), .gid = (gid_t)archive_entry_gid(en) };
		r = guestfs_ac_setattr(b->vm.ac, gp, &sa);
		if (r == 0 && !S_ISLNK(mode)) {
			sa = (struct guest_setattr){ .what = GUESTFS_SET_MODE | GUESTFS_SET_MTIME, .mode = mode & 07777,
						     .mtime_ns = (int64_t)archive_entry_mtime(en) * 1000000000 +
								 archive_entry_mtime_nsec(en) };
			r = guestfs_ac_setattr(b->vm.ac, gp, &sa);
		}
	}
	if (r == 0 && ar != ARCHIVE_EOF)
		r = -EIO;
	archive_read_free(a);
	return r;
}

static int step_copy(struct builder *b, const struct bstate *s, const struct df_instr *in)
{
	_cleanup_free_ char *dst = NULL, *owner = NULL;
	struct walk w = { .b = b, .chmod = in->chmod };
	struct stat st;
	bool dst_dir, exists;
	glob_t g;
	int r;

	r = sources(b->cfg, s, in, &g, b->error);
	if (r < 0)
		return r;
	r = guest_path(s, in->dst, &dst);
	if (r == 0 && in->chown && (r = expand(s, in->chown, &owner)) == 0) {
		r = resolve_owner(b, owner, &w.uid, &w.gid);
		if (r < 0)
			error_first(b->error, r, "line %u (%s): --chown %s: no such user or group in the image", in->line, in->text,
			      owner);
		w.have_owner = r == 0;
	}
	exists = r == 0 && guestfs_ac_lstat(b->vm.ac, dst, &st) == 0;
	/* a directory: "dst/", several sources, a directory source, or a directory there */
	dst_dir = in->dst[strlen(in->dst) - 1] == '/' || g.gl_pathc > 1 || (exists && S_ISDIR(st.st_mode));
	for (size_t i = 0; r == 0 && i < g.gl_pathc; i++) {
		struct stat hs;
		const char *base = strrchr(g.gl_pathv[i], '/');
		_cleanup_free_ char *gp = NULL;
		bool not_archive = true;

		base = base ? base + 1 : g.gl_pathv[i];
		if (lstat(g.gl_pathv[i], &hs) < 0) {
			r = -errno;
			break;
		}
		if (in->op == DF_ADD && S_ISREG(hs.st_mode)) {
			r = add_archive(b, g.gl_pathv[i], dst, &not_archive);
			if (r < 0 || !not_archive)
				continue;
		}
		if (S_ISDIR(hs.st_mode)) {
			/* a directory's contents go into dst */
			r = guest_mkdirs(b, dst);
			if (r == 0)
				r = copy_dir(&w, g.gl_pathv[i], dst, base);
			continue;
		}
		gp = dst_dir ? strjoin(dst, strcmp(dst, "/") ? "/" : "", base, NULL) : strdup(dst);
		if (!gp) {
			r = -ENOMEM;
			break;
		}
		{
			_cleanup_free_ char *parent = strdup(gp);
			char *slash = parent ? strrchr(parent, '/') : NULL;

			if (slash && slash != parent)
				*slash = '\0';
			else if (slash)
				slash[1] = '\0';
			r = parent ? guest_mkdirs(b, parent) : -ENOMEM;
		}
		if (r == 0)
			r = copy_one(&w, g.gl_pathv[i], gp, base);
	}
	walk_clear(&w);
	globfree(&g);
	if (r < 0)
		return error_first(b->error, r, "line %u (%s): %s", in->line, in->text, strerror(-r));
	return 0;
}

/* ---- the build ---- */

/* FROM: an image (oci:, docker-archive:, docker://), another template, or a registry image by name. */
static int step_from(struct template *t, const struct template_config *cfg, struct bstate *s,
		     const struct df_instr *in, const struct build_run *run,
		     char **ret_error)
{
	struct engine *e = t->e;
	_cleanup_free_ char *ref = NULL, *image = NULL, *what = NULL;
	struct template *base = NULL;
	int r = expand(s, in->arg, &ref);

	if (r < 0)
		return error_first(ret_error, r, "line %u (%s): %s", in->line, in->text, strerror(-r));
	if (!strstr(ref, "://") && strncmp(ref, "oci:", 4) && strncmp(ref, "docker-archive:", 15) &&
	    (base = engine_template_get(e, ref))) {
		pthread_mutex_lock(&e->lock);
		if (base == t)
			r = error_first(ret_error, -EINVAL, "line %u: a template cannot build FROM itself", in->line);
		else if (base->has_build)
			r = (s->disk = strdup(base->build.disk)) && copy_config(&base->build.cfg, &s->cfg) == 0 ? 0 : -ENOMEM;
		else if (base->cfg.rootfs)
			r = (s->disk = strdup(base->cfg.rootfs)) ? 0 : -ENOMEM;
		else
			r = error_first(ret_error, -EINVAL, "line %u: template %s has no root disk", in->line, ref);
		if (r == 0 && asprintf(&what, "template:%s:%s", ref,
				       base->has_build ? base->build.cfg.digest : base->identity) < 0)
			r = -ENOMEM;
		pthread_mutex_unlock(&e->lock);
		template_unref(base);
		if (r < 0)
			return r;
		blog(run->log_fd, "FROM template %s (its root disk %s)", ref, s->disk);
	} else {
		image = strstr(ref, "://") || !strncmp(ref, "oci:", 4) || !strncmp(ref, "docker-archive:", 15) ?
				strdup(ref) :
				strjoin("docker://", ref, NULL);
		if (!image)
			return -ENOMEM;
		r = image_make_disk(e, image, cfg->disk_mib, run, &s->disk, &s->cfg, ret_error);
		if (r < 0)
			return r;
		if (asprintf(&what, "image:%s:%u", s->cfg.digest, cfg->disk_mib) < 0)
			return -ENOMEM;
	}
	step_key("", what, "", s->key);
	return 0;
}

/* A step that changes only the config. */
static int step_meta(struct bstate *s, const struct df_instr *in, char **ret_error)
{
	_cleanup_free_ char *v = NULL;
	int r = 0;

	switch (in->op) {
	case DF_ENV: {
		/* every value as the variables were before this instruction: "ENV a=bye b=$a" gives b the old a (Docker) */
		char **before = vars_of(s);

		if (!before) {
			r = -ENOMEM;
			break;
		}
		for (size_t i = 0; r == 0 && i < in->n_kvs; i++) {
			_cleanup_free_ char *val = NULL;

			r = dockerfile_expand(in->kvs[i].value ? in->kvs[i].value : "", before, &val);
			if (r == 0)
				r = strv_setenv(&s->cfg.env, in->kvs[i].key, val);
		}
		strv_free(before);
		break;
	}
	case DF_ARG:
		for (size_t i = 0; r == 0 && i < in->n_kvs; i++) {
			_cleanup_free_ char *val = NULL;

			if (in->op == DF_ARG && !in->kvs[i].value) {
				/* declared without a default: empty unless an earlier ARG set it */
				bool set = false;
				size_t kl = strlen(in->kvs[i].key);

				for (char **a = s->args; a && *a; a++)
					set = set || (strncmp(*a, in->kvs[i].key, kl) == 0 && (*a)[kl] == '=');
				r = set ? 0 : strv_setenv(&s->args, in->kvs[i].key, "");
				continue;
			}
			r = expand(s, in->kvs[i].value, &val);
			if (r == 0)
				r = strv_setenv(in->op == DF_ARG ? &s->args : &s->cfg.env, in->kvs[i].key, val);
		}
		break;
	case DF_USER:
		if ((r = expand(s, in->arg, &v)) == 0 && (r = dockerfile_user_check(v)) == 0) {
			free(s->cfg.user);
			s->cfg.user = TAKE_PTR(v);
		}
		break;
	case DF_CMD:
	case DF_ENTRYPOINT: {
		char ***dst = in->op == DF_CMD ? &s->cfg.cmd : &s->cfg.entrypoint;
		char **nv = in->argv ? strv_copy(in->argv) : calloc(4, sizeof(char *));

		if (nv && !in->argv && (!(nv[0] = strdup("/bin/sh")) || !(nv[1] = strdup("-c")) || !(nv[2] = strdup(in->shell)))) {
			strv_free(nv);
			nv = NULL;
		}
		if (!nv)
			return -ENOMEM;
		strv_free(*dst);
		*dst = nv;
		break;
	}
	default: /* EXPOSE, LABEL: recorded by nothing the guest runs with */
		break;
	}
	if (r < 0)
		error_first(ret_error, r, "line %u (%s): %s", in->line, in->text, strerror(-r));
	return r;
}

static bool changes_files(enum df_op op)
{
	return op == DF_RUN || op == DF_COPY || op == DF_ADD || op == DF_WORKDIR;
}

int dockerfile_build(struct template *t, const struct template_config *cfg, const char *dockerfile,
		     const struct build_run *run, struct build_result *ret, char **ret_error)
{
	struct engine *e = t->e;
	_cleanup_free_ char *text = NULL, *perr = NULL, *id = NULL;
	struct dockerfile df = { 0 };
	struct bstate s = { 0 };
	struct builder b = { .t = t, .e = e, .cfg = cfg, .run = run, .error = ret_error };
	json_object *steps = json_object_new_array();
	size_t len, from = 0, n_cached = 0;
	int r;

	if (!steps)
		return -ENOMEM;
	r = read_file(dockerfile, DOCKERFILE_SIZE_MAX, &text, &len);
	if (r == 0 && (r = dockerfile_parse(text, len, &df, &perr)) < 0)
		error_first(ret_error, r, "Dockerfile: %s", perr ? perr : strerror(-r));
	if (r < 0)
		goto out;
	if (asprintf(&id, "%" PRIu64, t->id) < 0 || !(b.dir = strjoin(t->dir, "/build", NULL)) ||
	    !(b.rundir = strjoin(e->state_dir, "/run/build-", id, NULL)) || !(b.work = strjoin(b.dir, "/disk.img", NULL)) ||
	    !(s.args = calloc(1, sizeof(char *)))) {
		r = -ENOMEM;
		goto out;
	}
	/* ARGs before FROM: for FROM only (a later ARG NAME takes their value, as in Docker) */
	for (; from < df.n && df.v[from].op == DF_ARG && r == 0; from++)
		r = step_meta(&s, &df.v[from], ret_error);
	if (r == 0) {
		char **pre;

		blog(run->log_fd, "[1/%zu] %s", df.n - from, df.v[from].text);
		r = step_from(t, cfg, &s, &df.v[from], run, ret_error); /* FROM ${X}: those ARGs */
		pre = TAKE_PTR(s.args);
		s.args = calloc(1, sizeof(char *));
		for (size_t i = from + 1; r == 0 && s.args && i < df.n; i++)
			for (size_t k = 0; df.v[i].op == DF_ARG && k < df.v[i].n_kvs; k++)
				for (char **p = pre; p && *p; p++) {
					size_t kl = strlen(df.v[i].kvs[k].key);

					if (!df.v[i].kvs[k].value && strncmp(*p, df.v[i].kvs[k].key, kl) == 0 && (*p)[kl] == '=')
						r = strv_setenv(&s.args, df.v[i].kvs[k].key, *p + kl + 1);
				}
		strv_free(pre);
		if (r == 0 && !s.args)
			r = -ENOMEM;
	}
	for (size_t i = from + 1; r == 0 && i < df.n; i++) {
		const struct df_instr *in = &df.v[i];
		char key[SHA256_HEX_LEN + 1], extra[SHA256_HEX_LEN + 1] = "";
		struct bstate cached;
		uint64_t t0 = now_ns();
		json_object *so;

		if (atomic_load(run->cancel)) {
			r = -ECANCELED;
			break;
		}
		if ((in->op == DF_COPY || in->op == DF_ADD) && (r = sources_digest(cfg, &s, in, extra, ret_error)) < 0)
			break;
		step_key(s.key, in->text, extra, key);
		so = json_object_new_object();
		json_object_object_add(so, "line", json_object_new_int((int)in->line));
		json_object_object_add(so, "instruction", json_object_new_string(in->text));
		if (cache_load(e, key, &cached) == 0) {
			bstate_clear(&s);
			s = cached;
			n_cached++;
			blog(run->log_fd, "[%zu/%zu] CACHED %s", i - from + 1, df.n - from, in->text);
			json_object_object_add(so, "cached", json_object_new_boolean(true));
		} else {
			char phase[32];

			snprintf(phase, sizeof(phase), "step %zu/%zu", i - from + 1, df.n - from);
			build_phase(run, phase);
			blog(run->log_fd, "[%zu/%zu] %s", i - from + 1, df.n - from, in->text);
			memcpy(s.key, key, sizeof(key));
			if (!changes_files(in->op)) {
				r = step_meta(&s, in, ret_error);
			} else if ((r = builder_up(&b, &s)) == 0) {
				if (in->op == DF_RUN) {
					r = step_run(&b, &s, in);
				} else if (in->op == DF_WORKDIR) {
					_cleanup_free_ char *wd = NULL;

					if ((r = guest_path(&s, in->arg, &wd)) == 0 && (r = guest_mkdirs(&b, wd)) == 0) {
						free(s.cfg.workdir);
						s.cfg.workdir = TAKE_PTR(wd);
					} else {
						error_first(ret_error, r, "line %u (%s): %s", in->line, in->text, strerror(-r));
					}
				} else {
					r = step_copy(&b, &s, in);
				}
				if (r == 0)
					r = builder_keep(&b, &s);
			}
			if (r == 0)
				r = cache_save(e, &s);
			json_object_object_add(so, "cached", json_object_new_boolean(false));
		}
		json_object_object_add(so, "ms", ms_json(ns_to_ms(now_ns() - t0)));
		json_object_array_add(steps, so);
	}
	builder_down(&b);
	rm_rf(b.dir);
	timings_lap(run->tm, "steps");
	if (r < 0)
		goto out;
	blog(run->log_fd, "%zu steps, %zu from the cache", df.n - from - 1, n_cached);
	ret->disk = TAKE_PTR(s.disk);
	r = copy_config(&s.cfg, &ret->cfg);
	if (r == 0) {
		snprintf(ret->cfg.digest, sizeof(ret->cfg.digest), "sha256:%s", s.key);
		ret->steps = TAKE_PTR(steps);
	}
out:
	json_object_put(steps);
	bstate_clear(&s);
	dockerfile_clear(&df);
	free(b.dir);
	free(b.rundir);
	free(b.work);
	return r;
}
