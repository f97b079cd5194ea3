/*
 * MOUNT/metrics: OpenMetrics text exposition (application/openmetrics-text;
 * version=1.0.0). Rendered under the engine lock from counters the engine
 * keeps anyway; reading it never touches a VMM.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* upper bounds in seconds; the last bucket is +Inf */
static const double bounds[HIST_BUCKETS - 1] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
						 0.25,	0.5,	1.0,   2.5,  5.0,   10.0 - 0.0 };

void hist_add(struct hist *h, double ms)
{
	double s = ms / 1000.0;
	unsigned i = 0;

	while (i < HIST_BUCKETS - 1 && s > bounds[i])
		i++;
	h->b[i]++;
	h->count++;
	h->sum_s += s;
}

struct buf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = true;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *np = realloc(b->p, cap);

		if (!np) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
}

static void put_hist(struct buf *b, const char *name, const char *label, const char *value, const struct hist *h)
{
	uint64_t cum = 0;

	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		cum += h->b[i];
		if (i < HIST_BUCKETS - 1)
			put(b, "%s_bucket{%s=\"%s\",le=\"%g\"} %llu\n", name, label, value, bounds[i],
			    (unsigned long long)cum);
		else
			put(b, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %llu\n", name, label, value, (unsigned long long)cum);
	}
	put(b, "%s_sum{%s=\"%s\"} %.6f\n", name, label, value, h->sum_s);
	put(b, "%s_count{%s=\"%s\"} %llu\n", name, label, value, (unsigned long long)h->count);
}

char *engine_render_metrics(struct engine *e)
{
	static const char *const paths[] = { "warm", "restore", "cold", "fork" };
	static const char *const ops[] = { "fork", "hibernate", "wake", "checkpoint", "rollback" };
	struct buf b = { 0 };

	pthread_mutex_lock(&e->lock);
	put(&b, "# TYPE emberfs_sandboxes gauge\n# HELP emberfs_sandboxes Sandboxes by template and state.\n");
	for (size_t i = 0; i < e->n_templates; i++) {
		struct template *t = e->templates[i];
		unsigned n[_SB_STATE_MAX] = { 0 };

		for (size_t k = 0; k < t->n_sandboxes; k++)
			n[t->sandboxes[k]->state]++;
		for (int st = 0; st < _SB_STATE_MAX; st++)
			put(&b, "emberfs_sandboxes{template=\"%s\",state=\"%s\"} %u\n", t->name,
			    sandbox_state_name((enum sandbox_state)st), n[st]);
	}
	put(&b, "# TYPE emberfs_creates counter\n# HELP emberfs_creates Creates that became ready, by path.\n");
	for (size_t i = 0; i < e->n_templates; i++) {
		const struct template *t = e->templates[i];

		put(&b, "emberfs_creates_total{template=\"%s\",path=\"warm\"} %llu\n", t->name,
		    (unsigned long long)t->pool_stats.served_warm);
		put(&b, "emberfs_creates_total{template=\"%s\",path=\"restore\"} %llu\n", t->name,
		    (unsigned long long)t->pool_stats.served_restore);
		put(&b, "emberfs_creates_total{template=\"%s\",path=\"cold\"} %llu\n", t->name,
		    (unsigned long long)t->pool_stats.served_cold);
	}
	put(&b, "# TYPE emberfs_sandbox_timeouts counter\n"
		"# HELP emberfs_sandbox_timeouts Sandboxes' timeouts applied at their deadline, by action.\n");
	for (size_t i = 0; i < e->n_templates; i++)
		for (int a = TIMEOUT_ACT_DESTROY; a <= TIMEOUT_ACT_HIBERNATE; a++)
			put(&b, "emberfs_sandbox_timeouts_total{template=\"%s\",action=\"%s\"} %llu\n", e->templates[i]->name,
			    timeout_action_name(a), (unsigned long long)e->templates[i]->timeouts[a]);
	put(&b, "# TYPE emberfs_pool_target gauge\n# HELP emberfs_pool_target Warm pool target depth.\n");
	for (size_t i = 0; i < e->n_templates; i++)
		put(&b, "emberfs_pool_target{template=\"%s\"} %u\n", e->templates[i]->name, e->templates[i]->pool_target);
	put(&b, "# TYPE emberfs_pool_warm gauge\n# HELP emberfs_pool_warm Warm slots ready to claim.\n");
	for (size_t i = 0; i < e->n_templates; i++)
		put(&b, "emberfs_pool_warm{template=\"%s\"} %u\n", e->templates[i]->name, e->templates[i]->n_slots);
	put(&b, "# TYPE emberfs_pool_spares gauge\n# HELP emberfs_pool_spares Spare VMMs (spawned, waiting for the snapshot's state).\n");
	for (size_t i = 0; i < e->n_templates; i++)
		put(&b, "emberfs_pool_spares{template=\"%s\"} %u\n", e->templates[i]->name, e->templates[i]->n_spares);
	put(&b, "# TYPE emberfs_pool_spare_claims counter\n"
		"# HELP emberfs_pool_spare_claims Restores that ran on a spare VMM (counted in emberfs_creates_total too).\n");
	for (size_t i = 0; i < e->n_templates; i++)
		put(&b, "emberfs_pool_spare_claims_total{template=\"%s\"} %llu\n", e->templates[i]->name,
		    (unsigned long long)e->templates[i]->pool_stats.served_spare);
	put(&b, "# TYPE emberfs_pool_misses counter\n"
		"# HELP emberfs_pool_misses Creates not served warm, by reason (templates/T/stats).\n");
	for (size_t i = 0; i < e->n_templates; i++)
		for (int m = 0; m < _MISS_MAX; m++)
			put(&b, "emberfs_pool_misses_total{template=\"%s\",reason=\"%s\"} %llu\n", e->templates[i]->name,
			    miss_reason_name((enum miss_reason)m), (unsigned long long)e->templates[i]->miss[m]);
	put(&b, "# TYPE emberfs_pool_demand gauge\n"
		"# HELP emberfs_pool_demand Warm slots the capacity controller's demand model asks for, before the budget.\n");
	for (size_t i = 0; i < e->n_templates; i++)
		put(&b, "emberfs_pool_demand{template=\"%s\"} %u\n", e->templates[i]->name, e->templates[i]->plan.demand);
	put(&b, "# TYPE emberfs_pool_hit_ratio gauge\n"
		"# HELP emberfs_pool_hit_ratio Share of creates served warm since start (NaN before the first).\n");
	for (size_t i = 0; i < e->n_templates; i++) {
		const struct template *t = e->templates[i];
		uint64_t all = t->pool_stats.served_warm;

		for (int m = 0; m < _MISS_MAX; m++)
			all += t->miss[m];
		if (all)
			put(&b, "emberfs_pool_hit_ratio{template=\"%s\"} %.4f\n", t->name,
			    (double)t->pool_stats.served_warm / (double)all);
		else
			put(&b, "emberfs_pool_hit_ratio{template=\"%s\"} NaN\n", t->name);
	}
	put(&b, "# TYPE emberfs_pool_refill_seconds gauge\n"
		"# HELP emberfs_pool_refill_seconds Time to prepare one warm slot as the controller models it (p50 of recent preparations, plus waits).\n");
	for (size_t i = 0; i < e->n_templates; i++)
		put(&b, "emberfs_pool_refill_seconds{template=\"%s\"} %.4f\n", e->templates[i]->name,
		    e->templates[i]->plan.prepare_ms / 1000.0);
	put(&b, "# TYPE emberfs_pool_arrival_rate gauge\n"
		"# HELP emberfs_pool_arrival_rate Creates per second the capacity controller sees.\n");
	for (size_t i = 0; i < e->n_templates; i++)
		put(&b, "emberfs_pool_arrival_rate{template=\"%s\"} %.4f\n", e->templates[i]->name,
		    e->templates[i]->plan.rate);
	put(&b, "# TYPE emberfs_create_seconds histogram\n"
		"# HELP emberfs_create_seconds From mkdir (or a fork's ctl write) until ready, by path.\n");
	for (int p = 0; p < 4; p++)
		put_hist(&b, "emberfs_create_seconds", "path", paths[p], &e->hist[H_CREATE_WARM + p]);
	put(&b, "# TYPE emberfs_operation_seconds histogram\n"
		"# HELP emberfs_operation_seconds Lifecycle operations: the parent's part of a fork, hibernate, wake, checkpoint, rollback.\n");
	for (int o = 0; o < 5; o++)
		put_hist(&b, "emberfs_operation_seconds", "op", ops[o], &e->hist[H_FORK + o]);
	pthread_mutex_unlock(&e->lock);
	if (e->objstore) {
		struct objstore_stats st;

		objstore_get_stats(e->objstore, &st);
		put(&b, "# TYPE emberfs_cache_hits counter\n# HELP emberfs_cache_hits Chunk cache lookups answered from this host.\n"
			"emberfs_cache_hits_total %llu\n", (unsigned long long)st.hits);
		put(&b, "# TYPE emberfs_cache_misses counter\n# HELP emberfs_cache_misses Chunk cache lookups that fetched from the store.\n"
			"emberfs_cache_misses_total %llu\n", (unsigned long long)st.misses);
		put(&b, "# TYPE emberfs_cache_fetched_bytes counter\n# HELP emberfs_cache_fetched_bytes Bytes fetched from the store (checked).\n"
			"emberfs_cache_fetched_bytes_total %llu\n", (unsigned long long)st.fetched_bytes);
		put(&b, "# TYPE emberfs_cache_evictions counter\n# HELP emberfs_cache_evictions Chunks evicted to keep the cache within its limit.\n"
			"emberfs_cache_evictions_total %llu\n", (unsigned long long)st.evictions);
		put(&b, "# TYPE emberfs_cache_errors counter\n# HELP emberfs_cache_errors Fetches and checks that failed.\n"
			"emberfs_cache_errors_total %llu\n", (unsigned long long)st.errors);
		put(&b, "# TYPE emberfs_cache_used_bytes gauge\n# HELP emberfs_cache_used_bytes Bytes the chunk cache holds.\n"
			"emberfs_cache_used_bytes %llu\n", (unsigned long long)st.used_bytes);
	}
	put(&b, "# EOF\n");
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}
