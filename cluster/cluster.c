/*
 * A host of a cluster (docs/cluster.md): membership, the view, names,
 * placement and reconciliation. The one source of truth is etcd: a name is
 * taken by a create-if-absent transaction, never by what the view says; the
 * view (fed by a watch) only lists and routes.
 *
 *   heartbeat thread   every second: a lease (granted again once lost), this
 *                      host's key under it (capacity, load, warm slots by
 *                      identity, baked templates), and every few seconds a
 *                      reconciliation of this host's names against etcd
 *   watch thread       (etcd.c) the keys under /emberfs/ into the view
 *   peer server        (peer_server.c) this mount's files for the other hosts,
 *                      and creates placed here (hooks.create)
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster.h"
#include "common.h"
#include "etcd.h"
#include "place.h"

#define PREFIX "/emberfs/"
#define HOSTS PREFIX "hosts/"
#define SBS PREFIX "sb/"
#define HEARTBEAT_MS 1000
#define RECONCILE_EVERY 3 /* heartbeats */
#define ETCD_TIMEOUT_MS 2000

struct vhost {
	char *name;
	char *addr;
	json_object *info; /* the host key's value */
	int64_t mod_rev;
};

struct vsb {
	char *name;
	char *host;
	char *tpl;
	char *state;
	int64_t mod_rev;
};

struct cluster {
	struct engine *e;
	char *self, *advertise, *listen, *mountpoint, *names_path, *etcd_urls;
	unsigned ttl_s, max_sandboxes;
	uint8_t secret[64];
	size_t secret_len;
	struct etcd *etcd;
	struct peer_client *pc;
	struct peer_server *ps;
	struct etcd_watch *watch;

	pthread_mutex_t lock; /* everything below */
	struct vhost *hosts;
	size_t n_hosts;
	struct vsb *sbs;
	size_t n_sbs;
	bool watching;	     /* the watch is established */
	int64_t lease;	     /* 0: none */
	bool lease_ok;	     /* the lease held at the last heartbeat */
	char *etcd_reason;   /* why not, when not */
	char **inflight;     /* names this host is creating (reserved, not committed) */
	char **committed;    /* names this host committed (STATE/cluster-names) */
	unsigned creating;

	pthread_t hb;
	bool hb_running, stopping;
	pthread_cond_t hb_cond;
	pthread_cond_t view_cond; /* the watch changed the view (CLOCK_MONOTONIC) */
	pthread_mutex_t save_lock; /* one write of STATE/cluster-names at a time (its one .tmp) */
	pthread_t committer;
	bool committer_running;
	pthread_cond_t commit_cond;
	struct pending *pending; /* commits to make, in order */
};

/* ---- small string vectors ---- */

static size_t strv_len(char **v)
{
	size_t n = 0;

	while (v && v[n])
		n++;
	return n;
}

static bool strv_has(char **v, const char *s)
{
	for (size_t i = 0; v && v[i]; i++)
		if (strcmp(v[i], s) == 0)
			return true;
	return false;
}

static int strv_add(char ***v, const char *s)
{
	size_t n = strv_len(*v);
	char **nv = realloc(*v, (n + 2) * sizeof(*nv));

	if (!nv)
		return -ENOMEM;
	*v = nv;
	if (!(nv[n] = strdup(s)))
		return nv[n] = NULL, -ENOMEM;
	nv[n + 1] = NULL;
	return 0;
}

static void strv_del(char **v, const char *s)
{
	size_t n = strv_len(v);

	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], s) == 0) {
			free(v[i]);
			memmove(&v[i], &v[i + 1], (n - i) * sizeof(*v));
			return;
		}
}

/* ---- the view ---- */

static struct vhost *view_host(struct cluster *c, const char *name)
{
	for (size_t i = 0; i < c->n_hosts; i++)
		if (strcmp(c->hosts[i].name, name) == 0)
			return &c->hosts[i];
	return NULL;
}

static struct vsb *view_sb(struct cluster *c, const char *name)
{
	for (size_t i = 0; i < c->n_sbs; i++)
		if (strcmp(c->sbs[i].name, name) == 0)
			return &c->sbs[i];
	return NULL;
}

static void vhost_clear(struct vhost *h)
{
	free(h->name);
	free(h->addr);
	json_object_put(h->info);
}

static void vsb_clear(struct vsb *s)
{
	free(s->name);
	free(s->host);
	free(s->tpl);
	free(s->state);
}

static void view_clear(struct cluster *c)
{
	for (size_t i = 0; i < c->n_hosts; i++)
		vhost_clear(&c->hosts[i]);
	for (size_t i = 0; i < c->n_sbs; i++)
		vsb_clear(&c->sbs[i]);
	free(c->hosts);
	free(c->sbs);
	c->hosts = NULL;
	c->sbs = NULL;
	c->n_hosts = c->n_sbs = 0;
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ?
		       json_object_get_string(v) : NULL;
}

static int64_t jint(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static json_object *parse_obj(const uint8_t *data, size_t len)
{
	json_tokener *tok = json_tokener_new();
	json_object *o;

	if (!tok)
		return NULL;
	o = json_tokener_parse_ex(tok, (const char *)data, (int)len);
	json_tokener_free(tok);
	if (o && !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		o = NULL;
	}
	return o;
}

/* One key into the view (under c->lock); a key not ours to read is ignored (logged at debug). */
static void view_put(struct cluster *c, const struct etcd_kv *kv)
{
	json_object *o = parse_obj(kv->value, kv->value_len);

	if (!o) {
		log_debug("cluster: %s: not a JSON object; ignored", kv->key);
		return;
	}
	if (strncmp(kv->key, HOSTS, strlen(HOSTS)) == 0) {
		const char *name = kv->key + strlen(HOSTS), *addr = jstr(o, "addr");
		struct vhost *h = view_host(c, name), *nh;

		if (!addr || name_validate(name) < 0) {
			json_object_put(o);
			return;
		}
		if (!h) {
			if (!(nh = realloc(c->hosts, (c->n_hosts + 1) * sizeof(*nh)))) {
				json_object_put(o);
				return;
			}
			c->hosts = nh;
			h = &c->hosts[c->n_hosts];
			memset(h, 0, sizeof(*h));
			if (!(h->name = strdup(name))) {
				json_object_put(o);
				return;
			}
			c->n_hosts++;
		}
		free(h->addr);
		h->addr = strdup(addr);
		json_object_put(h->info);
		h->info = o;
		h->mod_rev = kv->mod_rev;
		return;
	}
	if (strncmp(kv->key, SBS, strlen(SBS)) == 0) {
		const char *name = kv->key + strlen(SBS), *host = jstr(o, "host"), *tpl = jstr(o, "template"),
			   *state = jstr(o, "state");
		struct vsb *s = view_sb(c, name), *ns;

		if (!host || !tpl || !state || name_validate(name) < 0) {
			json_object_put(o);
			return;
		}
		if (!s) {
			if (!(ns = realloc(c->sbs, (c->n_sbs + 1) * sizeof(*ns)))) {
				json_object_put(o);
				return;
			}
			c->sbs = ns;
			s = &c->sbs[c->n_sbs];
			memset(s, 0, sizeof(*s));
			if (!(s->name = strdup(name))) {
				json_object_put(o);
				return;
			}
			c->n_sbs++;
		}
		free(s->host);
		free(s->tpl);
		free(s->state);
		s->host = strdup(host);
		s->tpl = strdup(tpl);
		s->state = strdup(state);
		s->mod_rev = kv->mod_rev;
	}
	json_object_put(o);
}

static void view_del(struct cluster *c, const char *key)
{
	if (strncmp(key, HOSTS, strlen(HOSTS)) == 0) {
		struct vhost *h = view_host(c, key + strlen(HOSTS));

		if (h) {
			vhost_clear(h);
			*h = c->hosts[--c->n_hosts];
		}
	} else if (strncmp(key, SBS, strlen(SBS)) == 0) {
		struct vsb *s = view_sb(c, key + strlen(SBS));

		if (s) {
			vsb_clear(s);
			*s = c->sbs[--c->n_sbs];
		}
	}
}

static void on_reset(void *ctx, const struct etcd_kv *kvs, size_t n, int64_t rev)
{
	struct cluster *c = ctx;
	char **before = NULL;

	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_hosts; i++)
		strv_add(&before, c->hosts[i].name);
	view_clear(c);
	for (size_t i = 0; i < n; i++)
		view_put(c, &kvs[i]);
	pthread_cond_broadcast(&c->view_cond);
	pthread_mutex_unlock(&c->lock);
	/* hosts gone while the watch was down: their handles on this host's server go */
	for (size_t i = 0; before && before[i]; i++) {
		bool gone;

		pthread_mutex_lock(&c->lock);
		gone = !view_host(c, before[i]);
		pthread_mutex_unlock(&c->lock);
		if (gone && c->ps)
			peer_server_forget(c->ps, before[i]);
	}
	strv_free(before);
	log_debug("cluster: view read at revision %" PRId64 " (%zu keys)", rev, n);
}

static void on_event(void *ctx, const struct etcd_event *ev)
{
	struct cluster *c = ctx;
	bool host_gone = ev->type == ETCD_EV_DELETE && strncmp(ev->kv.key, HOSTS, strlen(HOSTS)) == 0;

	pthread_mutex_lock(&c->lock);
	if (ev->type == ETCD_EV_PUT)
		view_put(c, &ev->kv);
	else
		view_del(c, ev->kv.key);
	pthread_cond_broadcast(&c->view_cond);
	pthread_mutex_unlock(&c->lock);
	if (host_gone) {
		const char *h = ev->kv.key + strlen(HOSTS);

		if (strcmp(h, c->self) != 0) {
			log_warn("cluster: host %s left or lost its lease: its sandboxes show \"lost\"", h);
			if (c->ps)
				peer_server_forget(c->ps, h);
		}
	}
}

static void on_state(void *ctx, bool connected, const char *reason)
{
	struct cluster *c = ctx;

	pthread_mutex_lock(&c->lock);
	c->watching = connected;
	pthread_cond_broadcast(&c->view_cond);
	pthread_mutex_unlock(&c->lock);
	if (connected)
		log_info("cluster: watching etcd");
	else
		log_warn("cluster: watch of etcd down: %s (the view keeps its last state)", reason ? reason : "?");
}

/* ---- this host's key ---- */

static json_object *host_advert(struct cluster *c)
{
	json_object *o = json_object_new_object(), *warm = json_object_new_object(),
		    *tpls = json_object_new_object();
	char **names = engine_template_list(c->e);
	unsigned sandboxes = 0, creating;
	bool accepting;

	for (size_t i = 0; names && names[i]; i++) {
		struct template *t = engine_template_get(c->e, names[i]);
		_cleanup_free_ char *st = NULL;
		_cleanup_free_ uint64_t *slots = NULL;
		char **sbs;
		json_object *so, *w;
		size_t n = 0;
		const char *state, *id;

		if (!t)
			continue;
		sbs = template_sandbox_list(t);
		sandboxes += strv_len(sbs);
		strv_free(sbs);
		st = template_render_status(t);
		slots = template_slot_ids(t, &n);
		so = st ? parse_obj((const uint8_t *)st, strlen(st)) : NULL;
		state = so ? jstr(so, "state") : NULL;
		id = so ? jstr(so, "identity") : NULL;
		if (id && *id) {
			if (state && strcmp(state, "ready") == 0)
				json_object_object_add(tpls, names[i], json_object_new_string(id));
			if (n) {
				int64_t had = json_object_object_get_ex(warm, id, &w) ? json_object_get_int64(w) : 0;

				json_object_object_add(warm, id, json_object_new_int64(had + (int64_t)n));
			}
		}
		json_object_put(so);
		template_unref(t);
	}
	strv_free(names);
	pthread_mutex_lock(&c->lock);
	creating = c->creating;
	accepting = c->lease_ok;
	pthread_mutex_unlock(&c->lock);
	json_object_object_add(o, "addr", json_object_new_string(c->advertise));
	json_object_object_add(o, "max_sandboxes", json_object_new_int64(c->max_sandboxes));
	json_object_object_add(o, "sandboxes", json_object_new_int64(sandboxes));
	json_object_object_add(o, "creating", json_object_new_int64(creating));
	json_object_object_add(o, "load", json_object_new_double(c->max_sandboxes ? (double)sandboxes / c->max_sandboxes : 1));
	json_object_object_add(o, "accepting", json_object_new_boolean(accepting));
	json_object_object_add(o, "warm", warm);
	json_object_object_add(o, "templates", tpls);
	return o;
}

static void set_reason(struct cluster *c, const char *why)
{
	pthread_mutex_lock(&c->lock);
	if (!c->etcd_reason || !why || strcmp(c->etcd_reason, why) != 0) {
		free(c->etcd_reason);
		c->etcd_reason = why ? strdup(why) : NULL;
	}
	pthread_mutex_unlock(&c->lock);
}

static int put_host_key(struct cluster *c, int64_t lease)
{
	json_object *o = host_advert(c);
	_cleanup_free_ char *key = strjoin(HOSTS, c->self, NULL);
	const char *text;
	int r;

	if (!o || !key) {
		json_object_put(o);
		return -ENOMEM;
	}
	text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	r = etcd_put(c->etcd, key, text, strlen(text), lease, NULL);
	json_object_put(o);
	return r;
}

/* ---- names ---- */

static char *sb_key(const char *name)
{
	return strjoin(SBS, name, NULL);
}

static char *sb_value(struct cluster *c, const char *tpl, const char *state, const char *id)
{
	json_object *o = json_object_new_object();
	char *s;

	if (id) /* a reservation's own mark: this create's, not another's of the same name */
		json_object_object_add(o, "id", json_object_new_string(id));
	json_object_object_add(o, "host", json_object_new_string(c->self));
	json_object_object_add(o, "template", json_object_new_string(tpl));
	json_object_object_add(o, "state", json_object_new_string(state));
	json_object_object_add(o, "at", json_object_new_int64((int64_t)(realtime_ms() / 1000)));
	s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}

/* STATE/cluster-names: the names this host committed, so a name freed while it was away is told from one never registered. */
static void committed_save(struct cluster *c)
{
	size_t cap = 1;
	char *buf, *p;

	pthread_mutex_lock(&c->save_lock); /* a later save writes a later list, never one mixed with another */
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; c->committed && c->committed[i]; i++)
		cap += strlen(c->committed[i]) + 1;
	if ((buf = p = malloc(cap))) {
		for (size_t i = 0; c->committed && c->committed[i]; i++)
			p = stpcpy(stpcpy(p, c->committed[i]), "\n");
		*p = 0;
	}
	pthread_mutex_unlock(&c->lock);
	if (!buf || write_file_atomic(c->names_path, buf, strlen(buf), true) < 0)
		log_warn("cluster: cannot save %s", c->names_path);
	pthread_mutex_unlock(&c->save_lock);
	free(buf);
}

static void committed_load(struct cluster *c)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	char *save = NULL;

	if (read_file(c->names_path, 16u << 20, &data, &len) < 0)
		return;
	for (char *l = strtok_r(data, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		if (name_validate(l) == 0 && !strv_has(c->committed, l))
			strv_add(&c->committed, l);
}

static void committed_set(struct cluster *c, const char *name, bool on)
{
	bool changed;

	pthread_mutex_lock(&c->lock);
	changed = strv_has(c->committed, name) != on;
	if (changed && on)
		strv_add(&c->committed, name);
	else if (changed)
		strv_del(c->committed, name);
	pthread_mutex_unlock(&c->lock);
	if (changed)
		committed_save(c);
}

static int lease_now(struct cluster *c, int64_t *lease)
{
	int r = 0;

	pthread_mutex_lock(&c->lock);
	if (!c->lease_ok || !c->lease)
		r = -EAGAIN;
	*lease = c->lease;
	pthread_mutex_unlock(&c->lock);
	return r;
}

static void inflight(struct cluster *c, const char *name, bool on)
{
	pthread_mutex_lock(&c->lock);
	if (on) {
		strv_add(&c->inflight, name);
		c->creating++;
	} else {
		strv_del(c->inflight, name);
		c->creating--;
	}
	pthread_mutex_unlock(&c->lock);
}

/* What a refusal without etcd says (the log and the template's create_error). */
static int no_etcd(struct cluster *c, struct template *t, const char *name)
{
	_cleanup_free_ char *why = NULL;

	pthread_mutex_lock(&c->lock);
	if (asprintf(&why, "cluster: etcd unreachable, no creates on this host (%s)",
		     c->etcd_reason ? c->etcd_reason : "no lease") < 0)
		why = NULL;
	pthread_mutex_unlock(&c->lock);
	if (t)
		template_note_create_error(t, name, -EAGAIN, why);
	log_warn("create %s refused: %s", name ? name : "?", why ? why : "etcd unreachable");
	return -EAGAIN;
}

/*
 * A create this host passes on needs no etcd call of its own (the host that
 * takes it reserves the name), yet a host cut off from etcd takes no creates,
 * not even to pass on (docs/cluster.md "Failures"), and its lease looks good
 * for up to half its TTL after a cut. One keepalive of the lease says whether
 * etcd answers now (renewing it when it does): 0, or the refusal.
 */
static int etcd_confirm(struct cluster *c, struct template *t, const char *name)
{
	int64_t lease, ttl;
	int r;

	if (lease_now(c, &lease) < 0)
		return no_etcd(c, t, name);
	if ((r = etcd_lease_keepalive(c->etcd, lease, &ttl)) == 0)
		return 0;
	set_reason(c, r == -EAGAIN ? etcd_error() : strerror(-r));
	return no_etcd(c, t, name);
}

/*
 * etcd said another create has NAME: wait until the watch shows it here too
 * (bounded: VIEW_CATCHUP_MS), so that what the EEXIST promises (the name is
 * the cluster's; look it up) holds when the caller looks. The watch is
 * milliseconds behind etcd; a watch that is down keeps its last view.
 */
#define VIEW_CATCHUP_MS 2000

static void view_wait_name(struct cluster *c, const char *name)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += VIEW_CATCHUP_MS / 1000;
	ts.tv_nsec += (VIEW_CATCHUP_MS % 1000) * 1000000L;
	ts.tv_sec += ts.tv_nsec / 1000000000L;
	ts.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&c->lock);
	while (!view_sb(c, name) && c->watching && !c->stopping)
		if (pthread_cond_timedwait(&c->view_cond, &c->lock, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&c->lock);
}

/* Reserves name for this host (under its lease): 0 with *rev, -EEXIST, -EAGAIN. */
static int reserve(struct cluster *c, struct template *t, const char *tpl, const char *name, int64_t *rev)
{
	_cleanup_free_ char *key = sb_key(name), *val = NULL;
	char id[33];
	uint8_t rnd[16];
	int64_t lease;
	int r;

	if (lease_now(c, &lease) < 0)
		return no_etcd(c, t, name);
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
		return -EIO;
	for (size_t i = 0; i < sizeof(rnd); i++)
		sprintf(id + 2 * i, "%02x", rnd[i]);
	if (!key || !(val = sb_value(c, tpl, "reserved", id)))
		return -ENOMEM;
	r = etcd_create(c->etcd, key, val, strlen(val), lease, rev);
	for (int again = 0; r == -EAGAIN && again < 2; again++) {
		/*
		 * etcd.c never sends a transaction twice (a member that died with it may
		 * have done it): read the key, and create again only if it is absent.
		 */
		struct etcd_kv kv = { 0 };
		int g = etcd_get(c->etcd, key, &kv);

		if (g == 0) {
			json_object *o = parse_obj(kv.value, kv.value_len);
			const char *kid = o ? jstr(o, "id") : NULL;

			r = kid && strcmp(kid, id) == 0 ? 0 : -EEXIST;
			if (r == 0)
				*rev = kv.mod_rev;
			json_object_put(o);
		} else if (g == -ENOENT) {
			r = etcd_create(c->etcd, key, val, strlen(val), lease, rev);
		}
		etcd_kv_clear(&kv);
		if (g != 0 && g != -ENOENT)
			break;
	}
	if (r == -EAGAIN || r == -ENOENT) {
		set_reason(c, etcd_error());
		return no_etcd(c, t, name);
	}
	if (r == -EEXIST) {
		view_wait_name(c, name);
		if (t)
			template_note_create_error(t, name, -EEXIST, "a sandbox of that name exists in the cluster");
	}
	return r;
}

/* The reservation becomes the name's key (no lease), fenced by its revision: -ESTALE if it expired meanwhile. */
static int commit(struct cluster *c, const char *tpl, const char *name, int64_t rev)
{
	_cleanup_free_ char *key = sb_key(name), *val = sb_value(c, tpl, "placed", NULL);
	int r;

	if (!key || !val)
		return -ENOMEM;
	r = etcd_put_fenced(c->etcd, key, val, strlen(val), 0, rev, NULL);
	if (r == 0)
		committed_set(c, name, true);
	return r;
}

static void unreserve(struct cluster *c, const char *name, int64_t rev)
{
	_cleanup_free_ char *key = sb_key(name);

	if (key && etcd_delete_fenced(c->etcd, key, rev) < 0)
		log_debug("cluster: reservation of %s left to expire or to the reconciliation", name);
}

static char *json_name(const char *json, size_t len)
{
	json_object *o = parse_obj((const uint8_t *)json, len);
	const char *n = o ? jstr(o, "name") : NULL;
	char *r = n ? strdup(n) : NULL;

	json_object_put(o);
	return r;
}

static bool own_key(struct cluster *c, const struct etcd_kv *kv)
{
	json_object *o = parse_obj(kv->value, kv->value_len);
	const char *h = o ? jstr(o, "host") : NULL;
	bool mine = h && strcmp(h, c->self) == 0;

	json_object_put(o);
	return mine;
}

/*
 * Commits behind the creates (one thread, in order): a commit that cannot
 * reach etcd is tried again every half second (the sandbox runs meanwhile,
 * its name reserved under the host's lease); one that fails because the
 * reservation expired (the host was cut off past its lease) rolls the
 * create back: the sandbox is destroyed (if it is still the one
 * this create made), its name left to whoever holds it now.
 */
struct pending {
	struct pending *next;
	char *tpl, *name;
	int64_t rev;
	uint64_t sandbox;
};

static int commit_queue(struct cluster *c, const char *tpl, const char *name, int64_t rev, uint64_t sandbox)
{
	struct pending *p = calloc(1, sizeof(*p)), **tail;

	if (!p || !(p->tpl = strdup(tpl)) || !(p->name = strdup(name))) {
		if (p)
			free(p->tpl);
		free(p);
		return -ENOMEM;
	}
	p->rev = rev;
	p->sandbox = sandbox;
	pthread_mutex_lock(&c->lock);
	for (tail = &c->pending; *tail; tail = &(*tail)->next)
		;
	*tail = p;
	pthread_cond_broadcast(&c->commit_cond);
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* false: etcd could not be asked; the commit is to be tried again (the reservation may still hold) */
static bool commit_one(struct cluster *c, struct pending *p, bool last_try)
{
	int r = commit(c, p->tpl, p->name, p->rev);
	struct template *t;
	struct sandbox *s;

	if (r == -EAGAIN) {
		/* unknown whether it landed (etcd.c never sends a txn twice): ask once more */
		struct etcd_kv kv = { 0 };
		_cleanup_free_ char *key = sb_key(p->name);

		if (key && etcd_get(c->etcd, key, &kv) == 0) {
			json_object *o = parse_obj(kv.value, kv.value_len);
			const char *st = o ? jstr(o, "state") : NULL;

			if (own_key(c, &kv) && st && strcmp(st, "placed") == 0)
				r = 0, committed_set(c, p->name, true);
			else if (own_key(c, &kv) && kv.mod_rev == p->rev)
				r = commit(c, p->tpl, p->name, p->rev);
			json_object_put(o);
		}
		etcd_kv_clear(&kv);
	}
	if (r == -EAGAIN && !last_try)
		return false; /* unreachable: rolled back only once the reservation is known gone (-ESTALE) */
	if (r < 0 && (t = engine_template_get(c->e, p->tpl))) {
		log_warn("create %s rolled back: its reservation %s", p->name,
			 r == -ESTALE ? "expired before the commit (the host's lease went)" : "could not be committed");
		if ((s = template_sandbox_get(t, p->name))) {
			bool same = sandbox_id(s) == p->sandbox;

			sandbox_unref(s);
			if (same)
				engine_sandbox_destroy(c->e, t, p->name);
		}
		unreserve(c, p->name, p->rev);
		template_note_create_error(t, p->name, -EAGAIN, "the reservation in etcd expired before the commit");
		template_unref(t);
	}
	inflight(c, p->name, false);
	return true;
}

static void *committer_main(void *arg)
{
	struct cluster *c = arg;
	bool last;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct pending *p = c->pending;

		if (!p && c->stopping)
			break;
		if (!p) {
			pthread_cond_wait(&c->commit_cond, &c->lock);
			continue;
		}
		c->pending = p->next;
		p->next = NULL;
		last = c->stopping;
		pthread_mutex_unlock(&c->lock);
		if (!commit_one(c, p, last)) {
			struct pending **tail;
			struct timespec ts;

			pthread_mutex_lock(&c->lock);
			for (tail = &c->pending; *tail; tail = &(*tail)->next)
				;
			*tail = p; /* again after the others, in half a second */
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 500000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			if (!c->stopping)
				pthread_cond_timedwait(&c->commit_cond, &c->lock, &ts);
			continue;
		}
		free(p->tpl);
		free(p->name);
		free(p);
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* A create that runs on this host: reserve, create, commit behind (or roll back). */
static int create_here(struct cluster *c, struct template *t, const char *name, const char *json, size_t len,
		       struct sandbox **ret)
{
	_cleanup_free_ char *tpl = NULL, *other = NULL;
	struct sandbox *s = NULL;
	int64_t rev = 0;
	int r;

	tpl = strdup(template_name(t));
	if (!tpl)
		return -ENOMEM;
	if ((s = template_sandbox_get(t, name)) || (other = engine_sandbox_template_name(c->e, name))) {
		/* (the engine says EEXIST itself; asking etcd first would hold a name this host already has) */
		sandbox_unref(s);
		template_note_create_error(t, name, -EEXIST, "a sandbox of that name exists");
		return -EEXIST;
	}
	inflight(c, name, true); /* before the reservation: the reconciliation must not take it for stale */
	if ((r = reserve(c, t, tpl, name, &rev)) < 0) {
		inflight(c, name, false);
		return r;
	}
	r = json ? template_write_create(t, json, len) : engine_sandbox_create(c->e, t, name, &s);
	if (r == 0 && json)
		s = template_sandbox_get(t, name);
	if (r < 0) {
		unreserve(c, name, rev);
		inflight(c, name, false);
		return r;
	}
	/* the commit runs behind, as the rest of the create does: mkdir pays for one round trip to etcd */
	if ((r = commit_queue(c, tpl, name, rev, s ? sandbox_id(s) : 0)) < 0) {
		engine_sandbox_destroy(c->e, t, name);
		sandbox_unref(s);
		unreserve(c, name, rev);
		inflight(c, name, false);
		return r;
	}
	if (ret)
		*ret = s;
	else
		sandbox_unref(s);
	return 0;
}

static int hook_create(void *ctx, const char *tpl, const char *json, size_t len, uid_t uid, gid_t gid, char **reason)
{
	struct cluster *c = ctx;
	struct template *t = engine_template_get(c->e, tpl);
	_cleanup_free_ char *name = json_name(json, len);
	int r;

	(void)uid; /* a create is the daemon's: the mount lets any user mkdir a sandbox */
	(void)gid;
	if (!t) {
		*reason = strdup("no such template on this host");
		return -ENOENT;
	}
	if (!name) {
		template_unref(t);
		*reason = strdup("\"name\" (a string) is required");
		return -EINVAL;
	}
	/* {"name": N} alone is a mkdir; anything more goes through the create file's parser */
	{
		json_object *o = parse_obj((const uint8_t *)json, len);
		bool bare = o && json_object_object_length(o) == 1;

		json_object_put(o);
		r = create_here(c, t, name, bare ? NULL : json, len, NULL);
	}
	if (r < 0) {
		_cleanup_free_ char *st = template_render_status(t);
		json_object *so = st ? parse_obj((const uint8_t *)st, strlen(st)) : NULL;
		const char *why = so ? jstr(so, "create_error") : NULL;

		*reason = strdup(why ? why : strerror(-r));
		json_object_put(so);
	}
	template_unref(t);
	return r;
}

static int destroy_here(struct cluster *c, struct template *t, const char *name);

static int hook_destroy(void *ctx, const char *tpl, const char *json, size_t len, uid_t uid, gid_t gid,
			char **reason)
{
	struct cluster *c = ctx;
	struct template *t = engine_template_get(c->e, tpl);
	_cleanup_free_ char *name = json_name(json, len);
	int r;

	(void)uid;
	(void)gid;
	if (!t || !name) {
		template_unref(t);
		return -ENOENT;
	}
	r = destroy_here(c, t, name);
	template_unref(t);
	return r;
}

/* ---- placement ---- */

struct candidates {
	struct place_host *h;
	char **addrs;
	size_t n;
};

static void candidates_free(struct candidates *cd)
{
	for (size_t i = 0; i < cd->n; i++) {
		free((char *)cd->h[i].name);
		free(cd->addrs[i]);
	}
	free(cd->h);
	free(cd->addrs);
}

/*
 * The hosts of the view as placement candidates. This host's own creates in
 * flight and warm slots (self_warm) are its fresh figures, not what its
 * last heartbeat published: the mount's hosts/SELF/status shows the fresh
 * ones, and a create placed by a second-old count of its own slots went
 * elsewhere right after the pool filled (test_cluster's place_on, seen in CI).
 */
static int candidates_get(struct cluster *c, const char *tpl, const char *identity, unsigned self_warm,
			  struct candidates *cd)
{
	memset(cd, 0, sizeof(*cd));
	pthread_mutex_lock(&c->lock);
	cd->h = calloc(c->n_hosts + 1, sizeof(*cd->h));
	cd->addrs = calloc(c->n_hosts + 1, sizeof(*cd->addrs));
	if (!cd->h || !cd->addrs) {
		pthread_mutex_unlock(&c->lock);
		candidates_free(cd);
		return -ENOMEM;
	}
	for (size_t i = 0; i < c->n_hosts; i++) {
		struct vhost *v = &c->hosts[i];
		struct place_host *p = &cd->h[cd->n];
		json_object *w, *tp, *x;

		p->name = strdup(v->name);
		cd->addrs[cd->n] = strdup(v->addr);
		if (!p->name || !cd->addrs[cd->n]) {
			free((char *)p->name);
			free(cd->addrs[cd->n]);
			continue;
		}
		p->alive = true;
		p->accepting = json_object_object_get_ex(v->info, "accepting", &x) && json_object_get_boolean(x);
		if (json_object_object_get_ex(v->info, "warm", &w) && identity &&
		    json_object_object_get_ex(w, identity, &x))
			p->warm = (unsigned)json_object_get_int64(x);
		p->artifacts = json_object_object_get_ex(v->info, "templates", &tp) &&
			       json_object_object_get_ex(tp, tpl, &x) && identity &&
			       strcmp(json_object_get_string(x), identity) == 0;
		p->sandboxes = (unsigned)jint(v->info, "sandboxes");
		p->max_sandboxes = (unsigned)jint(v->info, "max_sandboxes");
		p->creating = (unsigned)jint(v->info, "creating");
		p->load = json_object_object_get_ex(v->info, "load", &x) ? json_object_get_double(x) : 1;
		if (strcmp(v->name, c->self) == 0) {
			p->creating = c->creating; /* this host's own, fresh */
			p->warm = identity ? self_warm : 0;
		}
		cd->n++;
	}
	pthread_mutex_unlock(&c->lock);
	return 0;
}

static char *template_identity(struct template *t)
{
	_cleanup_free_ char *st = template_render_status(t);
	json_object *so = st ? parse_obj((const uint8_t *)st, strlen(st)) : NULL;
	const char *id = so ? jstr(so, "identity") : NULL;
	char *r = id ? strdup(id) : NULL;

	json_object_put(so);
	return r;
}

static char *template_name_of(struct template *t)
{
	return strdup(template_name(t));
}

static void view_add_remote(struct cluster *c, const char *name, const char *host, const char *tpl)
{
	struct etcd_kv kv = { 0 };
	_cleanup_free_ char *key = sb_key(name);
	json_object *o = json_object_new_object();
	const char *text;

	json_object_object_add(o, "host", json_object_new_string(host));
	json_object_object_add(o, "template", json_object_new_string(tpl));
	json_object_object_add(o, "state", json_object_new_string("placed"));
	text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	kv.key = key;
	kv.value = (uint8_t *)text;
	kv.value_len = strlen(text);
	pthread_mutex_lock(&c->lock);
	if (key && !view_sb(c, name))
		view_put(c, &kv);
	pthread_mutex_unlock(&c->lock);
	json_object_put(o);
}

int cluster_create(struct cluster *c, struct template *t, const char *name, const char *json, size_t len, uid_t uid,
		   gid_t gid, struct sandbox **local)
{
	_cleanup_free_ char *owned = NULL, *tpl = template_name_of(t), *identity = template_identity(t),
			     *body = NULL;
	struct candidates cd;
	struct place_choice *ch = NULL;
	struct place_req req = { .local = c->self, .k = 3 };
	size_t n;
	int r = -ENOSPC, tries = 0;
	int64_t lease;
	bool confirmed = false;

	*local = NULL;
	if (!tpl)
		return -ENOMEM;
	if (!name) {
		if (!(name = owned = json_name(json, len))) {
			/* the engine's parser says what is wrong with it, and changes nothing */
			return template_write_create(t, json, len);
		}
	}
	if (name_validate(name) < 0)
		return -EINVAL;
	if (lease_now(c, &lease) < 0)
		return no_etcd(c, t, name);
	{
		size_t nslots = 0;

		free(template_slot_ids(t, &nslots));
		if ((r = candidates_get(c, tpl, identity, (unsigned)nslots, &cd)) < 0)
			return r;
	}
	if (!(ch = calloc(cd.n + 1, sizeof(*ch)))) {
		candidates_free(&cd);
		return -ENOMEM;
	}
	/* the tie-break among equal hosts: any seed will do, the clock when no entropy answers */
	if (getrandom(&req.seed, sizeof(req.seed), GRND_NONBLOCK) != (ssize_t)sizeof(req.seed))
		req.seed = now_ns() ^ (uint64_t)getpid();
	n = place_rank(cd.h, cd.n, &req, ch);
	for (size_t i = 0; i < n; i++)
		log_debug("create %s: candidate %zu: %s (%s, warm %u, load %.2f, creating %u)", name, i,
			  cd.h[ch[i].host].name, place_tier_name(ch[i].tier), cd.h[ch[i].host].warm, cd.h[ch[i].host].load,
			  cd.h[ch[i].host].creating);
	r = n ? 0 : -ENOSPC;
	if (!n) {
		/* the view may not have this host yet (its first heartbeat): a create here is still right */
		r = create_here(c, t, name, json, len, local);
		goto out;
	}
	for (size_t i = 0; i < n && tries < 3; i++, tries++) {
		const struct place_host *h = &cd.h[ch[i].host];
		_cleanup_free_ char *reason = NULL;

		if (strcmp(h->name, c->self) == 0) {
			r = create_here(c, t, name, json, len, local);
			if (r == -EAGAIN)
				break; /* this host cannot reach etcd: it takes no creates, not even to pass on */
		} else {
			struct peer_cred cr = { uid, gid };

			if (!confirmed && (r = etcd_confirm(c, t, name)) < 0)
				break;
			confirmed = true;
			if (!json && !body) {
				json_object *o = json_object_new_object();

				json_object_object_add(o, "name", json_object_new_string(name));
				body = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
				json_object_put(o);
				if (!body) {
					r = -ENOMEM;
					break;
				}
			}
			r = peer_create(c->pc, cd.addrs[ch[i].host], &cr, tpl, json ? json : body,
					json ? len : strlen(body), &reason);
			if (r == 0) {
				view_add_remote(c, name, h->name, tpl);
				log_debug("create %s placed on %s (%s)", name, h->name, place_tier_name(ch[i].tier));
			} else {
				log_info("create %s on %s refused: %s", name, h->name,
					 r == -EHOSTUNREACH ? peer_error() : reason ? reason : strerror(-r));
				if (r != -EHOSTUNREACH && r != -ENOSPC && r != -EAGAIN)
					template_note_create_error(t, name, r, reason);
			}
		}
		if (r != -EHOSTUNREACH && r != -ENOSPC && r != -EAGAIN)
			break; /* done, or a refusal another host would repeat (EEXIST, EINVAL) */
	}
	if (r == -EHOSTUNREACH)
		r = -EAGAIN;
out:
	free(ch);
	candidates_free(&cd);
	return r;
}

/* ---- destroy, ctl ---- */

static int delete_own_key(struct cluster *c, const char *name)
{
	_cleanup_free_ char *key = sb_key(name);
	struct etcd_kv kv = { 0 };
	int r;

	if (!key)
		return -ENOMEM;
	if ((r = etcd_get(c->etcd, key, &kv)) == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	{
		json_object *o = parse_obj(kv.value, kv.value_len);
		const char *h = o ? jstr(o, "host") : NULL;

		if (h && strcmp(h, c->self) == 0)
			r = etcd_delete_fenced(c->etcd, key, kv.mod_rev);
		json_object_put(o);
	}
	etcd_kv_clear(&kv);
	return r;
}

/* A sandbox of this host: destroyed, its name freed (-ENOENT if it is not here). */
static int destroy_here(struct cluster *c, struct template *t, const char *name)
{
	struct sandbox *s = template_sandbox_get(t, name);
	int r;

	if (!s)
		return -ENOENT;
	sandbox_unref(s);
	if ((r = engine_sandbox_destroy(c->e, t, name)) < 0)
		return r;
	committed_set(c, name, false);
	if (delete_own_key(c, name) < 0)
		log_info("cluster: %s destroyed; its name is freed in etcd by the reconciliation (%s)", name,
			 etcd_error());
	return 0;
}

int cluster_destroy(struct cluster *c, struct template *t, const char *name, uid_t uid, gid_t gid)
{
	struct sandbox *s = template_sandbox_get(t, name);
	_cleanup_free_ char *host = NULL, *addr = NULL, *tpl = template_name_of(t);
	bool lost;
	int r;

	if (s) {
		sandbox_unref(s);
		return destroy_here(c, t, name);
	}
	if (!tpl)
		return -ENOMEM;
	if ((r = cluster_sandbox_where(c, tpl, name, &host, &addr, &lost)) < 0)
		return r;
	if (lost) {
		/* the documented rule: removing a lost sandbox frees its name (its host destroys it if it comes back) */
		_cleanup_free_ char *key = sb_key(name);
		int64_t rev = 0;

		pthread_mutex_lock(&c->lock);
		struct vsb *v = view_sb(c, name);

		if (v)
			rev = v->mod_rev;
		pthread_mutex_unlock(&c->lock);
		if (!key)
			return -ENOMEM;
		r = etcd_delete_fenced(c->etcd, key, rev);
		if (r == -EAGAIN)
			return set_reason(c, etcd_error()), -EAGAIN;
		if (r == 0 || r == -ESTALE) {
			pthread_mutex_lock(&c->lock);
			view_del(c, key);
			pthread_mutex_unlock(&c->lock);
		}
		if (r == 0)
			log_info("cluster: lost sandbox %s (host %s) removed: its name is free", name, host);
		return r == -ESTALE ? -EAGAIN : r;
	}
	{
		struct peer_cred cr = { uid, gid };

		r = peer_destroy(c->pc, addr, &cr, tpl, name);
		if (r == 0) {
			_cleanup_free_ char *key = sb_key(name);

			pthread_mutex_lock(&c->lock);
			if (key)
				view_del(c, key);
			pthread_mutex_unlock(&c->lock);
		}
		return r == -EHOSTUNREACH ? -EHOSTDOWN : r;
	}
}

int cluster_ctl(struct cluster *c, struct sandbox *s, const char *cmd, size_t len)
{
	char buf[300], *nl;
	const char *name;
	_cleanup_free_ char *tpl = NULL;
	struct template *t;
	int64_t rev = 0;
	int r;

	if (len >= 5 && memcmp(cmd, "fork ", 5) == 0 && len < sizeof(buf)) {
		memcpy(buf, cmd + 5, len - 5);
		buf[len - 5] = 0;
		if ((nl = strchr(buf, '\n')))
			*nl = 0;
		name = buf;
		if (name_validate(name) < 0)
			return sandbox_ctl(s, cmd, len); /* its own error */
		if (!(tpl = engine_sandbox_template_name(c->e, sandbox_name(s))))
			return -ENOENT;
		inflight(c, name, true);
		if ((r = reserve(c, NULL, tpl, name, &rev)) < 0) {
			inflight(c, name, false);
			return r;
		}
		r = sandbox_ctl(s, cmd, len);
		if (r < 0) {
			unreserve(c, name, rev);
		} else if (commit(c, tpl, name, rev) < 0) {
			log_warn("fork %s rolled back: its reservation expired before the commit", name);
			if ((t = engine_template_get(c->e, tpl))) {
				engine_sandbox_destroy(c->e, t, name);
				template_unref(t);
			}
			unreserve(c, name, rev);
			r = -EAGAIN;
		}
		inflight(c, name, false);
		return r;
	}
	return sandbox_ctl(s, cmd, len);
}

/* ---- reconciliation ---- */

static const char *kvs_key_of(const char *name, char **buf)
{
	free(*buf);
	*buf = sb_key(name);
	return *buf ? *buf : "";
}

/*
 * This host's names against etcd: a key of this host's with no sandbox here
 * goes (destroyed by a timeout, a failed create, a stale reservation); a
 * sandbox here whose key is gone because its name was freed while this host
 * was away (or is another host's now) is destroyed; one never registered
 * (made before the host joined) is registered if the name is free.
 */
static void reconcile(struct cluster *c)
{
	struct etcd_kv *kvs = NULL;
	size_t n = 0;
	char **tpls;

	if (etcd_range_prefix(c->etcd, SBS, &kvs, &n, NULL) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		const char *name = kvs[i].key + strlen(SBS);
		json_object *o = parse_obj(kvs[i].value, kvs[i].value_len);
		const char *h = o ? jstr(o, "host") : NULL, *tpl = o ? jstr(o, "template") : NULL;
		_cleanup_free_ char *here = NULL;
		bool busy;

		if (h && strcmp(h, c->self) == 0) {
			pthread_mutex_lock(&c->lock);
			busy = strv_has(c->inflight, name);
			pthread_mutex_unlock(&c->lock);
			here = engine_sandbox_template_name(c->e, name);
			if (!busy && (!here || (tpl && strcmp(here, tpl) != 0))) {
				if (etcd_delete_fenced(c->etcd, kvs[i].key, kvs[i].mod_rev) == 0)
					log_info("cluster: %s is no longer on this host: its name is free", name);
				committed_set(c, name, false);
			}
		}
		json_object_put(o);
	}
	tpls = engine_template_list(c->e);
	for (size_t k = 0; tpls && tpls[k]; k++) {
		struct template *t = engine_template_get(c->e, tpls[k]);
		char **sbs = t ? template_sandbox_list(t) : NULL;

		for (size_t j = 0; sbs && sbs[j]; j++) {
			const char *name = sbs[j];
			const struct etcd_kv *kv = NULL;
			_cleanup_free_ char *kbuf = NULL;
			bool busy, was;

			for (size_t i = 0; i < n && !kv; i++)
				if (strcmp(kvs[i].key + strlen(SBS), name) == 0)
					kv = &kvs[i];
			pthread_mutex_lock(&c->lock);
			busy = strv_has(c->inflight, name);
			was = strv_has(c->committed, name);
			pthread_mutex_unlock(&c->lock);
			if (busy)
				continue;
			if ((kv && !own_key(c, kv)) || (!kv && was)) {
				/* a create may have committed since the range read: ask again before destroying */
				struct etcd_kv now = { 0 };
				int g = etcd_get(c->etcd, kvs_key_of(name, &kbuf), &now);
				bool mine = g == 0 && own_key(c, &now);

				etcd_kv_clear(&now);
				if (mine || (g < 0 && g != -ENOENT))
					continue;
			}
			if (kv) {
				json_object *o = parse_obj(kv->value, kv->value_len);
				const char *h = o ? jstr(o, "host") : NULL;
				bool other = !h || strcmp(h, c->self) != 0;

				if (other) {
					log_warn("cluster: %s runs here but its name is %s's now: destroyed here", name,
						 h ? h : "another host's");
					engine_sandbox_destroy(c->e, t, name);
					committed_set(c, name, false);
				}
				json_object_put(o); /* h is its */
			} else if (was) {
				log_warn("cluster: %s's name was freed while this host was away (removed as lost): destroyed here",
					 name);
				engine_sandbox_destroy(c->e, t, name);
				committed_set(c, name, false);
			} else {
				int64_t rev;

				if (reserve(c, NULL, tpls[k], name, &rev) == 0 && commit(c, tpls[k], name, rev) == 0)
					log_info("cluster: %s (made before this host joined) registered", name);
			}
		}
		strv_free(sbs);
		template_unref(t);
	}
	strv_free(tpls);
	etcd_kvs_free(kvs, n);
}

/* ---- heartbeat ---- */

static void *heartbeat_main(void *arg)
{
	struct cluster *c = arg;
	unsigned tick = 0;
	bool was_ok = false, retry_soon = false;
	uint64_t last_ok = now_ns();

	pthread_mutex_lock(&c->lock);
	while (!c->stopping) {
		int64_t lease = c->lease, ttl = 0;
		bool rejoined = false;
		int r;

		pthread_mutex_unlock(&c->lock);
		if (lease) {
			r = etcd_lease_keepalive(c->etcd, lease, &ttl);
			if (r == -ENOENT) {
				log_warn("cluster: this host's lease expired (cut off for longer than %us): joining again",
					 c->ttl_s);
				lease = 0;
			}
		} else {
			r = -ENOENT;
		}
		if (!lease && (r = etcd_lease_grant(c->etcd, c->ttl_s, &lease)) == 0)
			rejoined = true;
		if (r == 0) {
			pthread_mutex_lock(&c->lock);
			c->lease = lease;
			c->lease_ok = true;
			pthread_mutex_unlock(&c->lock);
			r = put_host_key(c, lease);
		}
		if (r == 0) {
			last_ok = now_ns();
			set_reason(c, NULL);
			if (!was_ok)
				log_info("cluster: joined as %s (lease %" PRIx64 ", ttl %us)", c->self, (uint64_t)lease,
					 c->ttl_s);
			if (rejoined || !was_ok || ++tick % RECONCILE_EVERY == 0)
				reconcile(c);
			was_ok = true;
		} else {
			/*
			 * One failed beat is not a cut: a member going away fails the call
			 * in flight (one etcd member down must change nothing). The host
			 * stops taking creates once its lease is gone, or no beat went
			 * through for half its TTL (it may be gone by now).
			 */
			bool cut = r == -ENOENT || now_ns() - last_ok > (uint64_t)c->ttl_s * 500000000ull;

			set_reason(c, r == -EAGAIN ? etcd_error() : strerror(-r));
			pthread_mutex_lock(&c->lock);
			if (cut)
				c->lease_ok = false;
			if (r == -ENOENT)
				c->lease = 0;
			pthread_mutex_unlock(&c->lock);
			if (was_ok && cut)
				log_warn("cluster: cut off from etcd (%s): no creates here; running sandboxes keep running",
					 r == -EAGAIN ? etcd_error() : strerror(-r));
			else if (!cut)
				log_info("cluster: a heartbeat failed (%s): trying again",
					 r == -EAGAIN ? etcd_error() : strerror(-r));
			if (cut)
				was_ok = false;
			retry_soon = !cut;
		}
		pthread_mutex_lock(&c->lock);
		if (!c->stopping) {
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += (long)(retry_soon ? HEARTBEAT_MS / 5 : HEARTBEAT_MS) * 1000000L;
			retry_soon = false;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&c->hb_cond, &c->lock, &ts);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

/* ---- life ---- */

static int secret_load(struct cluster *c, const char *path)
{
	_cleanup_free_ char *data = NULL;
	size_t len = 0;
	int r = read_file(path, sizeof(c->secret), &data, &len);

	if (r == -ENOENT) {
		uint8_t k[32];
		_cleanup_free_ char *hex = malloc(sizeof(k) * 2 + 2);

		if (!hex || getrandom(k, sizeof(k), 0) != sizeof(k))
			return -EIO;
		for (size_t i = 0; i < sizeof(k); i++)
			sprintf(hex + 2 * i, "%02x", k[i]);
		strcat(hex, "\n");
		if ((r = write_file_atomic(path, hex, strlen(hex), true)) < 0)
			return r;
		chmod(path, 0600);
		log_info("cluster: made the cluster key %s: give every host the same file (--cluster-key)", path);
		r = read_file(path, sizeof(c->secret), &data, &len);
	}
	if (r < 0)
		return r;
	while (len && (data[len - 1] == '\n' || data[len - 1] == ' '))
		len--;
	if (len < 16) {
		log_error("cluster: the key %s holds %zu bytes: at least 16 are needed", path, len);
		return -EINVAL;
	}
	memcpy(c->secret, data, len);
	c->secret_len = len;
	return 0;
}

int cluster_new(struct engine *e, const struct cluster_options *o, struct cluster **ret)
{
	struct cluster *c = calloc(1, sizeof(*c));
	_cleanup_free_ char *keyfile = NULL;
	pthread_condattr_t ca;
	int r;

	if (!c)
		return -ENOMEM;
	c->e = e;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->save_lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->hb_cond, &ca);
	pthread_cond_init(&c->view_cond, &ca);
	pthread_cond_init(&c->commit_cond, NULL);
	pthread_condattr_destroy(&ca);
	c->ttl_s = o->lease_ttl_s ? o->lease_ttl_s : 10;
	c->max_sandboxes = o->max_sandboxes;
	c->self = strdup(o->host_name);
	c->advertise = strdup(o->advertise);
	c->listen = strdup(o->listen ? o->listen : o->advertise);
	c->mountpoint = strdup(o->mountpoint);
	c->etcd_urls = strdup(o->etcd_urls);
	c->names_path = strjoin(o->state_dir, "/cluster-names", NULL);
	keyfile = o->secret_file ? strdup(o->secret_file) : strjoin(o->state_dir, "/cluster.key", NULL);
	if (!c->self || !c->advertise || !c->listen || !c->mountpoint || !c->etcd_urls || !c->names_path || !keyfile) {
		cluster_free(c);
		return -ENOMEM;
	}
	if ((r = secret_load(c, keyfile)) < 0) {
		log_error("cluster: cannot read the cluster key %s: %s", keyfile, strerror(-r));
		cluster_free(c);
		return r;
	}
	committed_load(c);
	if ((r = etcd_new(o->etcd_urls, ETCD_TIMEOUT_MS, &c->etcd)) < 0 ||
	    (r = peer_client_new(c->self, c->secret, c->secret_len, &c->pc)) < 0) {
		log_error("cluster: %s", strerror(-r));
		cluster_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

int cluster_start(struct cluster *c)
{
	static const struct peer_server_hooks hooks_tmpl = { .create = hook_create, .destroy = hook_destroy };
	struct peer_server_hooks hooks = hooks_tmpl;
	struct etcd_watch_cb cb = { .reset = on_reset, .event = on_event, .state = on_state, .ctx = c };
	int r;

	hooks.ctx = c;
	if ((r = peer_server_start(c->listen, c->mountpoint, c->secret, c->secret_len, &hooks, &c->ps)) < 0) {
		log_error("cluster: cannot serve the other hosts on %s: %s", c->listen, strerror(-r));
		return r;
	}
	if ((r = etcd_watch_start(c->etcd, PREFIX, &cb, &c->watch)) < 0) {
		log_error("cluster: cannot watch etcd: %s", strerror(-r));
		return r;
	}
	if ((r = thread_create(&c->committer, NULL, committer_main, c)) < 0)
		return r;
	c->committer_running = true;
	if ((r = thread_create(&c->hb, NULL, heartbeat_main, c)) < 0)
		return r;
	c->hb_running = true;
	log_info("cluster: host %s serving its mount to the other hosts on %s (etcd %s)", c->self, c->listen,
		 c->etcd_urls);
	return 0;
}

void cluster_stop(struct cluster *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stopping = true;
	pthread_cond_broadcast(&c->hb_cond);
	pthread_cond_broadcast(&c->view_cond);
	pthread_cond_broadcast(&c->commit_cond);
	pthread_mutex_unlock(&c->lock);
	if (c->hb_running)
		pthread_join(c->hb, NULL);
	c->hb_running = false;
	if (c->committer_running)
		pthread_join(c->committer, NULL); /* after the commits queued: the sandboxes they name are there */
	c->committer_running = false;
	if (c->watch)
		etcd_watch_stop(c->watch);
	c->watch = NULL;
	if (c->ps)
		peer_server_stop(c->ps);
	c->ps = NULL;
}

/* After the engine went (its sandboxes with it): this host's names and its key go from etcd. */
static void leave(struct cluster *c)
{
	struct etcd_kv *kvs = NULL;
	size_t n = 0;

	if (!c->etcd || !c->lease)
		return;
	if (etcd_range_prefix(c->etcd, SBS, &kvs, &n, NULL) == 0) {
		for (size_t i = 0; i < n; i++) {
			json_object *o = parse_obj(kvs[i].value, kvs[i].value_len);
			const char *h = o ? jstr(o, "host") : NULL;

			if (h && strcmp(h, c->self) == 0)
				etcd_delete_fenced(c->etcd, kvs[i].key, kvs[i].mod_rev);
			json_object_put(o);
		}
		etcd_kvs_free(kvs, n);
	}
	if (etcd_lease_revoke(c->etcd, c->lease) == 0)
		log_info("cluster: left (lease revoked)");
	else
		log_warn("cluster: could not leave cleanly (%s): the lease expires within %us", etcd_error(), c->ttl_s);
	write_file_atomic(c->names_path, "", 0, true);
}

void cluster_free(struct cluster *c)
{
	if (!c)
		return;
	cluster_stop(c);
	leave(c);
	peer_client_free(c->pc);
	etcd_free(c->etcd);
	pthread_mutex_lock(&c->lock);
	view_clear(c);
	pthread_mutex_unlock(&c->lock);
	strv_free(c->inflight);
	strv_free(c->committed);
	free(c->etcd_reason);
	free(c->self);
	free(c->advertise);
	free(c->listen);
	free(c->mountpoint);
	free(c->names_path);
	free(c->etcd_urls);
	pthread_cond_destroy(&c->hb_cond);
	pthread_cond_destroy(&c->view_cond);
	pthread_cond_destroy(&c->commit_cond);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->save_lock);
	explicit_bzero(c->secret, sizeof(c->secret));
	free(c);
}

/* ---- what the fs asks ---- */

const char *cluster_self(struct cluster *c)
{
	return c->self;
}

struct peer_client *cluster_peer(struct cluster *c)
{
	return c->pc;
}

char **cluster_remote_sandboxes(struct cluster *c, const char *tpl)
{
	char **v = calloc(1, sizeof(*v));
	char **names = NULL;

	if (!v)
		return NULL;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_sbs; i++)
		if (strcmp(c->sbs[i].tpl, tpl) == 0 && strcmp(c->sbs[i].host, c->self) != 0)
			strv_add(&names, c->sbs[i].name);
	pthread_mutex_unlock(&c->lock);
	for (size_t i = 0; names && names[i]; i++) {
		_cleanup_free_ char *here = engine_sandbox_template_name(c->e, names[i]);

		if (!here)
			strv_add(&v, names[i]);
	}
	strv_free(names);
	return v;
}

int cluster_sandbox_where(struct cluster *c, const char *tpl, const char *name, char **host, char **addr, bool *lost)
{
	struct vsb *s;
	struct vhost *h;
	int r = 0;

	*host = *addr = NULL;
	*lost = false;
	pthread_mutex_lock(&c->lock);
	s = view_sb(c, name);
	if (!s || strcmp(s->host, c->self) == 0 || (tpl && strcmp(s->tpl, tpl) != 0)) {
		r = -ENOENT;
	} else {
		h = view_host(c, s->host);
		*lost = !h;
		*host = strdup(s->host);
		*addr = strdup(h ? h->addr : "");
		if (!*host || !*addr)
			r = -ENOMEM;
	}
	pthread_mutex_unlock(&c->lock);
	if (r < 0) {
		free(*host);
		free(*addr);
		*host = *addr = NULL;
	}
	return r;
}

char *cluster_render_lost(struct cluster *c, const char *tpl, const char *name)
{
	json_object *o = json_object_new_object();
	char *out;

	pthread_mutex_lock(&c->lock);
	struct vsb *s = view_sb(c, name);

	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "template", json_object_new_string(tpl ? tpl : s ? s->tpl : ""));
	json_object_object_add(o, "state", json_object_new_string("lost"));
	json_object_object_add(o, "host", json_object_new_string(s ? s->host : ""));
	json_object_object_add(o, "reason", json_object_new_string(
		"its host's lease in etcd expired: the host is down or cut off; rmdir frees the name"));
	pthread_mutex_unlock(&c->lock);
	out = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED));
	json_object_put(o);
	if (out) {
		char *n = realloc(out, strlen(out) + 2);

		if (n) {
			strcat(n, "\n");
			out = n;
		}
	}
	return out;
}

char **cluster_hosts(struct cluster *c)
{
	char **v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->n_hosts; i++)
		strv_add(&v, c->hosts[i].name);
	for (size_t i = 0; i < c->n_sbs; i++)
		if (!strv_has(v, c->sbs[i].host))
			strv_add(&v, c->sbs[i].host); /* a lost host: known by its sandboxes */
	if (!strv_has(v, c->self))
		strv_add(&v, c->self);
	pthread_mutex_unlock(&c->lock);
	return v;
}

char *cluster_render_host(struct cluster *c, const char *host)
{
	json_object *o = NULL, *x;
	struct vhost *h;
	unsigned nsb = 0;
	bool self = strcmp(host, c->self) == 0, known;
	/* this host's own figures are read now, not as last written to etcd (a cut-off host writes none) */
	json_object *fresh = self ? host_advert(c) : NULL;
	char *out;

	pthread_mutex_lock(&c->lock);
	h = view_host(c, host);
	for (size_t i = 0; i < c->n_sbs; i++)
		if (strcmp(c->sbs[i].host, host) == 0)
			nsb++;
	known = h || nsb || self;
	if (known) {
		o = json_object_new_object();
		json_object_object_add(o, "name", json_object_new_string(host));
		if (fresh) {
			json_object_object_foreach(fresh, k, v)
				json_object_object_add(o, k, json_object_get(v));
		} else if (h) {
			json_object_object_foreach(h->info, k, v)
				json_object_object_add(o, k, json_object_get(v));
		}
		json_object_object_add(o, "alive", json_object_new_boolean(h != NULL));
		json_object_object_add(o, "names", json_object_new_int64(nsb));
		json_object_object_add(o, "self", json_object_new_boolean(self));
		if (self) {
			json_object_object_add(o, "etcd", json_object_new_string(c->lease_ok ? "connected" : "unreachable"));
			if (c->etcd_reason)
				json_object_object_add(o, "etcd_error", json_object_new_string(c->etcd_reason));
			json_object_object_add(o, "watching", json_object_new_boolean(c->watching));
			json_object_object_add(o, "lease_ttl", json_object_new_int64(c->ttl_s));
			if (!json_object_object_get_ex(o, "addr", &x))
				json_object_object_add(o, "addr", json_object_new_string(c->advertise));
		}
	}
	pthread_mutex_unlock(&c->lock);
	json_object_put(fresh);
	if (!o)
		return NULL;
	out = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED));
	json_object_put(o);
	if (out) {
		char *n = realloc(out, strlen(out) + 2);

		if (n) {
			strcat(n, "\n");
			out = n;
		}
	}
	return out;
}
