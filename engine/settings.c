/*
 * A sandbox's settings (docs/interface.md, "Settings"): its lifetime
 * (timeout), its labels (metadata), the default environment of its commands
 * (env). The egress policy is egress.c's; what it uses is usage.c's.
 *
 * Every setting lives in struct sandbox_settings under e->lock, is written
 * whole (a parse error changes nothing), kept in the sandbox's record (so a
 * restarted daemon has it) and copied by a fork. A new sandbox starts from
 * its template's defaults (timeout_s, on_timeout).
 *
 * Deadlines are wall-clock times (unix ms), so one passed while the daemon
 * was down is still passed at its restart. One thread sleeps until the
 * nearest deadline and applies it: destroy, or hibernate.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define DEADLINE_IDLE_MS 60000u	  /* the thread's longest sleep without a deadline */
#define DEADLINE_RETRY_MS 50u	  /* a due sandbox still creating: looked at again after this */
#define DEADLINE_BUSY_RETRY_MS 250u /* a hibernate refused (an exec runs): tried again after this */

/* ---- the settings' life: a new sandbox, a fork, the record ---- */

void settings_clear(struct sandbox_settings *st)
{
	json_object_put(st->metadata);
	strv_free(st->env);
	free(st->egress);
	memset(st, 0, sizeof(*st));
}

static char **strv_dup(char *const *v)
{
	size_t n = 0;
	char **c;

	while (v && v[n])
		n++;
	if (!v || !(c = calloc(n + 1, sizeof(*c))))
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!(c[i] = strdup(v[i]))) {
			strv_free(c);
			return NULL;
		}
	return c;
}

static json_object *json_dup(json_object *o)
{
	json_object *c = NULL;

	return o && json_object_deep_copy(o, &c, NULL) == 0 ? c : NULL;
}

/* e->lock held; s is not visible yet. A fork copies its parent's; a new one has its template's defaults. */
int settings_init(struct sandbox *s, struct template *t, const struct sandbox *fork_src,
		  struct sandbox_settings *init)
{
	struct sandbox_settings *st = &s->settings;

	if (init) {
		/* a create file's settings (template_write_create): in force from the reservation on */
		*st = *init;
		memset(init, 0, sizeof(*init));
		st->deadline_ms = st->timeout_s ? realtime_ms() + st->timeout_s * 1000u : 0;
	} else if (fork_src) {
		const struct sandbox_settings *p = &fork_src->settings;

		st->timeout_s = p->timeout_s;
		st->on_timeout = p->on_timeout;
		/* its own deadline, counted from the fork */
		st->deadline_ms = p->deadline_ms ? realtime_ms() + p->timeout_s * 1000u : 0;
		st->metadata = json_dup(p->metadata);
		st->env = strv_dup(p->env);
		st->egress = p->egress ? strdup(p->egress) : NULL;
		if ((p->metadata && !st->metadata) || (p->env && !st->env) || (p->egress && !st->egress)) {
			settings_clear(st);
			return -ENOMEM;
		}
	} else if (t->cfg.timeout_s) {
		st->timeout_s = t->cfg.timeout_s;
		st->deadline_ms = realtime_ms() + (uint64_t)t->cfg.timeout_s * 1000u;
	}
	if (st->deadline_ms)
		settings_kick(s->e);
	return 0;
}

/* e->lock held: what the record keeps. */
json_object *settings_json(const struct sandbox *s)
{
	const struct sandbox_settings *st = &s->settings;
	json_object *o = json_object_new_object(), *env = NULL;

	json_object_object_add(o, "timeout_s", json_object_new_int64((int64_t)st->timeout_s));
	json_object_object_add(o, "deadline_unix_ms", json_object_new_int64((int64_t)st->deadline_ms));
	json_object_object_add(o, "on_timeout", st->on_timeout ? json_object_new_string(timeout_action_name(st->on_timeout)) : NULL);
	json_object_object_add(o, "metadata", json_object_get(st->metadata));
	if (st->env) {
		env = json_object_new_array();
		for (char **p = st->env; *p; p++)
			json_object_array_add(env, json_object_new_string(*p));
	}
	json_object_object_add(o, "env", env);
	json_object_object_add(o, "egress", st->egress ? json_object_new_string(st->egress) : NULL);
	return o;
}

/* A re-adopted sandbox's settings from its record; what does not pass today's checks is dropped, with a warning. */
void settings_from_json(struct sandbox *s, json_object *o)
{
	struct sandbox_settings *st = &s->settings;
	json_object *v;
	int a;

	if (!o || !json_object_is_type(o, json_type_object))
		return;
	st->timeout_s = (uint64_t)jget_int(o, "timeout_s", 0);
	st->deadline_ms = (uint64_t)jget_int(o, "deadline_unix_ms", 0);
	if (st->timeout_s > TIMEOUT_MAX_S)
		st->timeout_s = TIMEOUT_MAX_S;
	st->on_timeout = (a = timeout_action_from_name(jget_str(o, "on_timeout"))) > 0 ? a : TIMEOUT_ACT_DEFAULT;
	if (json_object_object_get_ex(o, "metadata", &v) && v) {
		if (metadata_valid(v) && json_object_object_length(v) > 0)
			st->metadata = json_object_get(v);
		else
			log_warn("sandbox %s: its recorded metadata is not valid: dropped", s->name);
	}
	if (json_object_object_get_ex(o, "env", &v) && json_object_is_type(v, json_type_array)) {
		/* checked as the env file would check it */
		_cleanup_free_ char *text = NULL, *err = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&text, &len);

		for (size_t i = 0; f && i < json_object_array_length(v); i++) {
			const char *e = json_object_get_string(json_object_array_get_idx(v, i));

			if (e && !strchr(e, '\n'))
				fprintf(f, "%s\n", e);
		}
		if (f && fclose(f) == 0 && env_parse(text, len, &st->env, &err) < 0)
			log_warn("sandbox %s: its recorded env is not valid (%s): dropped", s->name, err ? err : "");
	}
	if (jget_str(o, "egress"))
		st->egress = strdup(jget_str(o, "egress"));
	/* the deadline thread starts after re-adoption and looks at every sandbox first */
}

void settings_refused(struct sandbox *s, const char *file, const char *why)
{
	char *m = NULL;

	if (why && asprintf(&m, "%s: %s", file, why) < 0)
		m = NULL;
	pthread_mutex_lock(&s->e->lock);
	if (m || s->settings_error)
		atomic_fetch_add(&s->status_seq, 1); /* status shows it: a poller on status hears of a change */
	free(s->settings_error);
	s->settings_error = m;
	pthread_mutex_unlock(&s->e->lock);
}

/* ---- timeout ---- */

static int effective_action(const struct sandbox *s)
{
	int a = s->settings.on_timeout ? s->settings.on_timeout : s->tpl->cfg.on_timeout;

	return a ? a : TIMEOUT_ACT_DESTROY;
}

char *sandbox_render_timeout(struct sandbox *s)
{
	struct engine *e = s->e;
	uint64_t now = realtime_ms(), deadline, secs;
	int act;
	char *out;

	pthread_mutex_lock(&e->lock);
	deadline = s->settings.deadline_ms;
	secs = s->settings.timeout_s;
	act = effective_action(s);
	pthread_mutex_unlock(&e->lock);
	if (!deadline)
		return asprintf(&out,
				"{\"timeout_s\": 0, \"deadline_unix_ms\": null, \"left_ms\": null, \"on_timeout\": \"%s\"}\n",
				timeout_action_name(act)) < 0 ?
			       NULL :
			       out;
	return asprintf(&out,
			"{\"timeout_s\": %" PRIu64 ", \"deadline_unix_ms\": %" PRIu64 ", \"left_ms\": %" PRIu64
			", \"on_timeout\": \"%s\"}\n",
			secs, deadline, deadline > now ? deadline - now : 0, timeout_action_name(act)) < 0 ?
		       NULL :
		       out;
}

int sandbox_write_timeout(struct sandbox *s, const char *data, size_t len)
{
	struct engine *e = s->e;
	_cleanup_free_ char *err = NULL;
	uint64_t secs;
	int act, r;

	if ((r = timeout_parse(data, len, &secs, &act, &err)) < 0) {
		settings_refused(s, "timeout", err ? err : strerror(-r));
		return r;
	}
	settings_refused(s, "timeout", NULL);
	pthread_mutex_lock(&e->lock);
	if (s->state == SB_DESTROYING) {
		pthread_mutex_unlock(&e->lock);
		return -ENOENT;
	}
	s->settings.timeout_s = secs;
	s->settings.on_timeout = act;
	s->settings.deadline_ms = secs ? realtime_ms() + secs * 1000u : 0;
	settings_kick(e);
	pthread_mutex_unlock(&e->lock);
	sandbox_record_save(s);
	return 0;
}

/* Applies s's passed deadline (the deadline thread, outside every lock). */
static void deadline_fire(struct engine *e, struct sandbox *s)
{
	bool did = false;
	int act, r = 0;
	enum sandbox_state st;

	pthread_mutex_lock(&e->lock);
	act = effective_action(s);
	st = s->state;
	pthread_mutex_unlock(&e->lock);
	if (act == TIMEOUT_ACT_DESTROY) {
		log_info("sandbox %s/%s: its timeout passed: destroyed", s->tpl->name, s->name);
		r = sandbox_destroy_why(e, s->tpl, s->name, "timeout");
		if (r == 0) {
			pthread_mutex_lock(&e->lock);
			s->tpl->timeouts[TIMEOUT_ACT_DESTROY]++;
			pthread_mutex_unlock(&e->lock);
		}
		if (r < 0 && r != -ENOENT)
			log_warn("sandbox %s/%s: timeout: destroy failed: %s", s->tpl->name, s->name, strerror(-r));
		return;
	}
	if (st == SB_READY || st == SB_PAUSED) {
		r = sandbox_ctl(s, "hibernate", strlen("hibernate"));
		did = r == 0;
		if (r == -EBUSY) {
			pthread_mutex_lock(&e->lock);
			r = s->state == SB_READY || s->state == SB_PAUSED ? -EBUSY : 0;
			if (r == -EBUSY && s->settings.deadline_ms) /* an exec runs: again soon */
				s->settings.deadline_ms = realtime_ms() + DEADLINE_BUSY_RETRY_MS;
			pthread_mutex_unlock(&e->lock);
			if (r == -EBUSY)
				return;
		}
		if (r < 0)
			log_warn("sandbox %s/%s: timeout: hibernate failed: %s", s->tpl->name, s->name, strerror(-r));
		else if (did)
			log_info("sandbox %s/%s: its timeout passed: hibernated", s->tpl->name, s->name);
		if (did) {
			pthread_mutex_lock(&e->lock);
			s->tpl->timeouts[TIMEOUT_ACT_HIBERNATE]++;
			pthread_mutex_unlock(&e->lock);
		}
	}
	/* done (or nothing to do: hibernated, stopped, failed): no deadline until one is set again */
	pthread_mutex_lock(&e->lock);
	s->settings.deadline_ms = 0;
	s->settings.timeout_s = 0;
	pthread_mutex_unlock(&e->lock);
	sandbox_record_save(s);
}

static void *deadline_main(void *arg)
{
	struct engine *e = arg;

	pthread_mutex_lock(&e->lock);
	while (!e->deadline_stop) {
		uint64_t now = realtime_ms(), next = now + DEADLINE_IDLE_MS;
		struct sandbox *due = NULL;
		struct timespec ts;

		for (size_t i = 0; i < e->n_templates && !due; i++)
			for (size_t k = 0; k < e->templates[i]->n_sandboxes && !due; k++) {
				struct sandbox *s = e->templates[i]->sandboxes[k];
				uint64_t d = s->settings.deadline_ms;

				if (!d || s->state == SB_DESTROYING || atomic_load(&s->cancel))
					continue;
				if (d <= now && s->state != SB_CREATING) {
					atomic_fetch_add(&s->refs, 1);
					due = s;
				} else if (d <= now) {
					next = next < now + DEADLINE_RETRY_MS ? next : now + DEADLINE_RETRY_MS; /* applied once it is decided */
				} else {
					next = next < d ? next : d;
				}
			}
		if (due) {
			pthread_mutex_unlock(&e->lock);
			deadline_fire(e, due);
			sandbox_unref(due);
			pthread_mutex_lock(&e->lock);
			continue;
		}
		ts.tv_sec = (time_t)(next / 1000u);
		ts.tv_nsec = (long)(next % 1000u) * 1000000L;
		if (!e->deadline_stop && !e->deadline_kicked)
			pthread_cond_timedwait(&e->deadline_cond, &e->lock, &ts);
		e->deadline_kicked = false;
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

/* A deadline was set or moved: the thread looks again (e->lock held). */
void settings_kick(struct engine *e)
{
	if (!e->deadline_started)
		return; /* started later: it looks at every sandbox first */
	e->deadline_kicked = true;
	pthread_cond_broadcast(&e->deadline_cond);
}

void engine_deadlines_start(struct engine *e)
{
	pthread_cond_init(&e->deadline_cond, NULL); /* CLOCK_REALTIME: deadlines are wall-clock times */
	pthread_mutex_lock(&e->lock);
	e->deadline_started = thread_create(&e->deadliner, NULL, deadline_main, e) == 0;
	pthread_mutex_unlock(&e->lock);
	if (!e->deadline_started)
		log_warn("cannot start the timeout thread: sandbox timeouts will not be applied");
}

void engine_deadlines_stop(struct engine *e)
{
	if (!e->deadline_started)
		return;
	pthread_mutex_lock(&e->lock);
	e->deadline_stop = true;
	pthread_cond_broadcast(&e->deadline_cond);
	pthread_mutex_unlock(&e->lock);
	pthread_join(e->deadliner, NULL);
	e->deadline_started = false;
	pthread_cond_destroy(&e->deadline_cond);
}

/* ---- metadata ---- */

char *sandbox_render_metadata(struct sandbox *s)
{
	struct engine *e = s->e;
	char *out;

	pthread_mutex_lock(&e->lock);
	out = strjoin(s->settings.metadata ? json_object_to_json_string_ext(s->settings.metadata,
									     JSON_C_TO_STRING_SPACED |
										     JSON_C_TO_STRING_NOSLASHESCAPE) :
					     "{}",
		      "\n", NULL);
	pthread_mutex_unlock(&e->lock);
	return out;
}

int sandbox_write_metadata(struct sandbox *s, const char *data, size_t len)
{
	struct engine *e = s->e;
	_cleanup_free_ char *err = NULL;
	json_object *o = NULL, *old;
	int r;

	if ((r = metadata_parse(data, len, &o, &err)) < 0) {
		settings_refused(s, "metadata", err ? err : strerror(-r));
		return r;
	}
	settings_refused(s, "metadata", NULL);
	pthread_mutex_lock(&e->lock);
	old = s->settings.metadata;
	s->settings.metadata = o;
	pthread_mutex_unlock(&e->lock);
	json_object_put(old);
	sandbox_record_save(s);
	return 0;
}

/*
 * (Takes e->lock.) Without key, every metadata key in use; with key, its values
 * (value NULL) or, with names, the names of the sandboxes whose key is value.
 */
static char **metadata_collect(struct engine *e, const char *key, const char *value, bool names)
{
	char **v = calloc(1, sizeof(*v));
	size_t n = 0;

	if (!v)
		return NULL;
	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < e->n_templates; i++)
		for (size_t k = 0; k < e->templates[i]->n_sandboxes; k++) {
			struct sandbox *s = e->templates[i]->sandboxes[k];
			json_object *md = s->settings.metadata, *mv;
			const char *add = NULL;
			bool dup = false;
			char **nv;

			if (!md || s->state == SB_DESTROYING)
				continue;
			if (!key) {
				json_object_object_foreach(md, mk, mval) {
					(void)mval;
					dup = false;
					for (size_t j = 0; j < n && !dup; j++)
						dup = strcmp(v[j], mk) == 0;
					if (dup || !(nv = realloc(v, (n + 2) * sizeof(*v))))
						continue;
					v = nv;
					if ((v[n] = strdup(mk)))
						v[++n] = NULL;
				}
				continue;
			}
			if (!json_object_object_get_ex(md, key, &mv))
				continue;
			if (value && strcmp(json_object_get_string(mv), value))
				continue;
			add = names ? s->name : json_object_get_string(mv);
			for (size_t j = 0; j < n && !dup; j++)
				dup = strcmp(v[j], add) == 0;
			if (dup || !(nv = realloc(v, (n + 2) * sizeof(*v))))
				continue;
			v = nv;
			if ((v[n] = strdup(add)))
				v[++n] = NULL;
		}
	pthread_mutex_unlock(&e->lock);
	return v;
}

char **engine_metadata_keys(struct engine *e)
{
	return metadata_collect(e, NULL, NULL, false);
}

char **engine_metadata_values(struct engine *e, const char *key)
{
	return metadata_collect(e, key, NULL, false);
}

char **engine_metadata_match(struct engine *e, const char *key, const char *value)
{
	return metadata_collect(e, key, value, true);
}

char *engine_sandbox_template_name(struct engine *e, const char *name)
{
	char *out = NULL;

	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < e->n_templates && !out; i++)
		for (size_t k = 0; k < e->templates[i]->n_sandboxes && !out; k++)
			if (strcmp(e->templates[i]->sandboxes[k]->name, name) == 0)
				out = strdup(e->templates[i]->name);
	pthread_mutex_unlock(&e->lock);
	return out;
}

uint64_t engine_new_id(struct engine *e)
{
	return atomic_fetch_add(&e->next_id, 1);
}

/* ---- env ---- */

char *sandbox_render_env(struct sandbox *s)
{
	struct engine *e = s->e;
	char *out;

	pthread_mutex_lock(&e->lock);
	out = env_render(s->settings.env);
	pthread_mutex_unlock(&e->lock);
	return out;
}

int sandbox_write_env(struct sandbox *s, const char *data, size_t len)
{
	struct engine *e = s->e;
	_cleanup_free_ char *err = NULL;
	char **env = NULL, **old;
	int r;

	if ((r = env_parse(data, len, &env, &err)) < 0) {
		settings_refused(s, "env", err ? err : strerror(-r));
		return r;
	}
	settings_refused(s, "env", NULL);
	pthread_mutex_lock(&e->lock);
	old = s->settings.env;
	s->settings.env = env;
	pthread_mutex_unlock(&e->lock);
	strv_free(old);
	sandbox_record_save(s);
	return 0;
}

/*
 * The sandbox's env under a command's request (exec, procs/ID/cmd): what
 * the request sets itself wins; the guest puts both over the image's.
 */
int settings_env_apply(struct sandbox *s, json_object *req)
{
	struct engine *e = s->e;
	json_object *env;

	if (json_object_object_get_ex(req, "env", &env)) {
		if (!json_object_is_type(env, json_type_object))
			return -EINVAL;
	} else {
		env = NULL;
	}
	pthread_mutex_lock(&e->lock);
	for (char **p = s->settings.env; p && *p; p++) {
		const char *eq = strchr(*p, '=');
		char key[ENV_NAME_MAX + 1];

		if (!eq || (size_t)(eq - *p) > ENV_NAME_MAX)
			continue;
		memcpy(key, *p, (size_t)(eq - *p));
		key[eq - *p] = '\0';
		if (!env) {
			env = json_object_new_object();
			json_object_object_add(req, "env", env);
		}
		if (!json_object_object_get_ex(env, key, NULL))
			json_object_object_add(env, key, json_object_new_string(eq + 1));
	}
	pthread_mutex_unlock(&e->lock);
	return 0;
}

/* ---- create with settings ---- */

static void create_refused(struct template *t, const char *name, int r, const char *why)
{
	struct engine *e = t->e;
	char *m = NULL;

	if (r < 0 && asprintf(&m, "%s: %s", name && *name ? name : "(no name)", why ? why : strerror(-r)) < 0)
		m = NULL;
	pthread_mutex_lock(&e->lock);
	free(t->create_error);
	t->create_error = m;
	pthread_mutex_unlock(&e->lock);
}

void template_note_create_error(struct template *t, const char *name, int r, const char *why)
{
	create_refused(t, name, r, why);
}

/* A setting's value as the file takes it: a string is the file's text, an object or a number its JSON. */
static const char *setting_text(json_object *v, size_t *len)
{
	const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v)
								 : json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);

	*len = strlen(s);
	return s;
}

static int create_settings_parse(struct template *t, json_object *o, const char **name,
				 struct sandbox_settings *st, char **why)
{
	struct engine *e = t->e;
	json_object *v;
	size_t len;
	const char *text;
	int r;

	json_object_object_foreach(o, key, val)
	{
		if (strcmp(key, "name") && strcmp(key, "timeout") && strcmp(key, "metadata") && strcmp(key, "env") &&
		    strcmp(key, "egress"))
			return error_set(why, "unknown key \"%s\" (name, timeout, metadata, env, egress)", key), -EINVAL;
		if (!val)
			return error_set(why, "%s: null", key), -EINVAL;
	}
	if (!json_object_object_get_ex(o, "name", &v) || !json_object_is_type(v, json_type_string))
		return error_set(why, "\"name\" (a string) is required"), -EINVAL;
	*name = json_object_get_string(v);
	if (name_validate(*name) < 0)
		return error_set(why, "not a valid sandbox name"), -EINVAL;
	if (json_object_object_get_ex(o, "timeout", &v)) {
		_cleanup_free_ char *err = NULL;

		text = setting_text(v, &len);
		if ((r = timeout_parse(text, len, &st->timeout_s, &st->on_timeout, &err)) < 0)
			return error_set(why, "timeout: %s", err ? err : strerror(-r)), r;
	} else {
		pthread_mutex_lock(&e->lock);
		st->timeout_s = t->cfg.timeout_s; /* the template's default, as for mkdir */
		pthread_mutex_unlock(&e->lock);
	}
	if (json_object_object_get_ex(o, "metadata", &v)) {
		_cleanup_free_ char *err = NULL;

		text = setting_text(v, &len);
		if ((r = metadata_parse(text, len, &st->metadata, &err)) < 0)
			return error_set(why, "metadata: %s", err ? err : strerror(-r)), r;
	}
	if (json_object_object_get_ex(o, "env", &v)) {
		_cleanup_free_ char *err = NULL;

		text = setting_text(v, &len);
		if ((r = env_parse(text, len, &st->env, &err)) < 0)
			return error_set(why, "env: %s", err ? err : strerror(-r)), r;
	}
	if (json_object_object_get_ex(o, "egress", &v)) {
		_cleanup_free_ char *err = NULL;
		struct egress_policy *pol = NULL;
		bool net;

		pthread_mutex_lock(&e->lock);
		net = t->cfg.net && e->net;
		pthread_mutex_unlock(&e->lock);
		if (!net)
			return error_set(why, "egress: the template's sandboxes have no network"), -EINVAL;
		if (!json_object_is_type(v, json_type_string))
			return error_set(why, "egress: a string (the egress file's text) is expected"), -EINVAL;
		text = setting_text(v, &len);
		if (len > EGRESS_TEXT_MAX)
			return error_set(why, "egress: larger than the bound on a policy"), -EINVAL;
		if ((r = egress_parse(text, len, &pol, &err)) < 0)
			return error_set(why, "egress: %s", err ? err : strerror(-r)), r;
		st->egress = egress_render(pol);
		egress_free(pol);
		if (!st->egress)
			return -ENOMEM;
	}
	return 0;
}

int template_write_create(struct template *t, const char *data, size_t len)
{
	_cleanup_json_ json_object *o = NULL;
	_cleanup_free_ char *why = NULL;
	struct sandbox_settings st = {0};
	struct sandbox *s = NULL;
	const char *name = NULL;
	json_tokener *tok = json_tokener_new();
	int r;

	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, data, (int)len);
	if (!o || !json_object_is_type(o, json_type_object)) {
		json_tokener_free(tok);
		create_refused(t, NULL, -EINVAL, "not a JSON object");
		return -EINVAL;
	}
	json_tokener_free(tok);
	r = create_settings_parse(t, o, &name, &st, &why);
	if (r == 0)
		r = sandbox_create_internal(t->e, t, name, NULL, &st, &s);
	if (r == -EEXIST && !why)
		why = strdup("a sandbox of that name exists");
	settings_clear(&st); /* what the sandbox did not take */
	create_refused(t, name, r, why);
	if (r < 0)
		return r;
	sandbox_unref(s);
	return 0;
}

