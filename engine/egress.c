/*
 * A sandbox's egress policy (docs/interface.md, "Egress policy"): the
 * `egress` file, and the policy applied to its network slot.
 *
 * The policy a sandbox has is its own (s->settings.egress, normalized text,
 * kept in its record and copied by a fork), else its template's default
 * (config "egress"), else allow-all. It is applied to a network slot
 * whenever one becomes the sandbox's, before the guest can send through it:
 * by vm_start right after the claim and before the VMM spawns (create,
 * fork; a start and a wake keep their slot and its policy), at a warm slot's
 * activation (the slot was claimed with the template's default: nothing to
 * do unless the sandbox's differs) and after a re-adoption. So no guest runs
 * without its policy.
 *
 * apply_lock orders the writes of a policy and its applications: whatever
 * the interleaving of a write and a claim, the slot ends with the policy
 * written last.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static pthread_mutex_t apply_lock = PTHREAD_MUTEX_INITIALIZER;

/* The policy's text a VMM of this config should run under; own: the sandbox's, or NULL. e->lock held. */
static char *effective_text(const struct template_config *cfg, const char *own)
{
	return strdup(own ? own : cfg->egress ? cfg->egress : "default allow\n");
}

/* Parses the (already valid) text and applies it to ns. apply_lock held. */
static int apply_text(struct engine *e, struct netslot *ns, const char *text, char **ret_why)
{
	struct egress_policy *pol = NULL;
	int r;

	if (!text)
		return -ENOMEM;
	if ((r = egress_parse(text, strlen(text), &pol, ret_why)) < 0)
		return r;
	r = netpool_egress_apply(e->net, ns, pol, ret_why);
	egress_free(pol);
	return r;
}

int egress_apply_claimed(struct engine *e, struct netslot *ns, const struct template_config *cfg,
			 char *const *own, char **ret_why)
{
	_cleanup_free_ char *text = NULL;
	int r;

	pthread_mutex_lock(&apply_lock);
	pthread_mutex_lock(&e->lock);
	text = effective_text(cfg, own ? *own : NULL);
	pthread_mutex_unlock(&e->lock);
	r = apply_text(e, ns, text, ret_why);
	pthread_mutex_unlock(&apply_lock);
	return r;
}

/* apply_lock held */
static int sandbox_egress_apply_locked(struct sandbox *s, char **ret_why)
{
	struct engine *e = s->e;
	_cleanup_free_ char *text = NULL;
	struct netslot *ns;

	pthread_mutex_lock(&e->lock);
	ns = s->net;
	if (ns)
		text = effective_text(&s->tpl->cfg, s->settings.egress);
	pthread_mutex_unlock(&e->lock);
	return ns && e->net ? apply_text(e, ns, text, ret_why) : 0;
}

int sandbox_egress_apply(struct sandbox *s, char **ret_why)
{
	int r;

	pthread_mutex_lock(&apply_lock);
	r = sandbox_egress_apply_locked(s, ret_why);
	pthread_mutex_unlock(&apply_lock);
	return r;
}

void egress_slot_release(struct engine *e, struct netslot **net)
{
	struct netslot *ns;

	/* a write holds apply_lock from reading s->net to the end of its apply */
	pthread_mutex_lock(&apply_lock);
	pthread_mutex_lock(&e->lock);
	ns = TAKE_PTR(*net);
	pthread_mutex_unlock(&e->lock);
	pthread_mutex_unlock(&apply_lock);
	netpool_release(e->net, ns);
}

void egress_template_changed(struct template *t)
{
	struct engine *e = t->e;
	struct sandbox **list = NULL;
	size_t n = 0;

	if (!e->net)
		return;
	pthread_mutex_lock(&e->lock);
	if (t->n_sandboxes && (list = calloc(t->n_sandboxes, sizeof(*list))))
		for (size_t i = 0; i < t->n_sandboxes; i++)
			if (t->sandboxes[i]->net && !t->sandboxes[i]->settings.egress) {
				list[n] = t->sandboxes[i];
				atomic_fetch_add(&list[n]->refs, 1);
				n++;
			}
	pthread_mutex_unlock(&e->lock);
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *why = NULL;

		/* the same policy again costs nothing (netpool compares) */
		if (sandbox_egress_apply(list[i], &why) < 0)
			log_warn("sandbox %s/%s: egress: the template's new default not applied: %s", t->name,
				 list[i]->name, why ? why : "?");
		sandbox_unref(list[i]);
	}
	free(list);
}

bool sandbox_has_egress(struct sandbox *s)
{
	bool net;

	pthread_mutex_lock(&s->e->lock);
	net = s->tpl->cfg.net;
	pthread_mutex_unlock(&s->e->lock);
	return net && s->e->net;
}

char *sandbox_render_egress(struct sandbox *s)
{
	struct engine *e = s->e;
	_cleanup_free_ char *text = NULL;
	char *out = NULL;
	bool own;
	int r;

	pthread_mutex_lock(&e->lock);
	own = s->settings.egress != NULL;
	text = effective_text(&s->tpl->cfg, s->settings.egress);
	/* comment lines: a read written back is the same policy */
	r = !text ? -1 : asprintf(&out, "%s%s%s%s%s", own ? "" : "# the template's default\n",
				  s->egress_error ? "# the last write was refused: " : "",
				  s->egress_error ? s->egress_error : "", s->egress_error ? "\n" : "", text);
	pthread_mutex_unlock(&e->lock);
	return r < 0 ? NULL : out;
}

static bool blank(const char *data, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!strchr(" \t\r\n", data[i]) || !data[i])
			return false;
	return true;
}

/* Why a write was refused, for the next read (NULL: a write succeeded). */
static void set_refused(struct sandbox *s, char *why)
{
	char *nl;

	/* one comment line: a reason is written on one */
	while (why && (nl = strchr(why, '\n')))
		*nl = ' ';
	settings_refused(s, "egress", why); /* status "settings_error", as the other settings */
	pthread_mutex_lock(&s->e->lock);
	free(s->egress_error);
	s->egress_error = why;
	pthread_mutex_unlock(&s->e->lock);
}

int sandbox_write_egress(struct sandbox *s, const char *data, size_t len)
{
	struct engine *e = s->e;
	struct egress_policy *pol = NULL;
	char *why = NULL, *text, *old;
	struct netslot *ns;
	int r;

	if (!sandbox_has_egress(s))
		return -ENOENT;
	if (len > EGRESS_TEXT_MAX) {
		set_refused(s, strdup("larger than the bound on a policy"));
		return -EFBIG;
	}
	if ((r = egress_parse(data, len, &pol, &why)) < 0) {
		set_refused(s, why);
		return r;
	}
	if (blank(data, len)) {
		/* empty (`: > egress`): no policy of its own, the template's default again */
		egress_free(pol);
		pthread_mutex_lock(&apply_lock);
		pthread_mutex_lock(&e->lock);
		old = TAKE_PTR(s->settings.egress);
		pthread_mutex_unlock(&e->lock);
		r = sandbox_egress_apply_locked(s, &why);
		if (r < 0) {
			pthread_mutex_lock(&e->lock);
			s->settings.egress = TAKE_PTR(old);
			pthread_mutex_unlock(&e->lock);
		}
		pthread_mutex_unlock(&apply_lock);
		free(old);
		set_refused(s, r < 0 ? why : NULL);
		if (r == 0) {
			free(why);
			sandbox_record_save(s);
		}
		return r < 0 ? -EIO : 0;
	}
	text = egress_render(pol);
	if (!text) {
		egress_free(pol);
		return -ENOMEM;
	}
	pthread_mutex_lock(&apply_lock);
	pthread_mutex_lock(&e->lock);
	old = s->settings.egress;
	s->settings.egress = text;
	ns = s->net;
	pthread_mutex_unlock(&e->lock);
	/* no slot yet (creating) or none any more: the claim applies it */
	r = ns ? netpool_egress_apply(e->net, ns, pol, &why) : 0;
	if (r < 0) {
		/* the slot keeps its policy: so does the sandbox */
		pthread_mutex_lock(&e->lock);
		s->settings.egress = old;
		pthread_mutex_unlock(&e->lock);
		old = text;
		log_warn("sandbox %s/%s: egress: %s", s->tpl->name, s->name, why ? why : strerror(-r));
	}
	pthread_mutex_unlock(&apply_lock);
	free(old);
	egress_free(pol);
	set_refused(s, r < 0 ? why : NULL);
	if (r == 0)
		free(why);
	if (r == 0)
		sandbox_record_save(s); /* the setting survives a restart */
	return r < 0 ? -EIO : 0;
}

void sandbox_egress_clear(struct sandbox *s)
{
	free(s->egress_error);
	s->egress_error = NULL; /* the policy itself is the settings' (settings_clear) */
}
