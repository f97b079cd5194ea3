/*
 * The warm capacity controller (engine/capacity.c): its model against exact
 * values and a simulated pool, and the controller in the loop of a pool
 * model replaying synthetic arrival traces (steady, bursty, diurnal, two
 * templates competing for one budget, a template going idle), compared with
 * the smallest fixed depth reaching the same hit rate. The figures printed
 * here are the ones in docs/capacity.md.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "capacity.h"

#define T0 1000000ULL /* a monotonic clock is not at 0 when the daemon starts */
#define SEC 1000ULL
#define NEVER UINT64_MAX
#define SIM_TPL 2
#define FIXED_MAX 40

/* ---- traces ---- */

struct arrival {
	uint64_t t; /* ms since T0 */
	unsigned tpl;
};

struct trace {
	const char *name;
	struct arrival *a;
	size_t n, cap;
	uint64_t end_ms;
};

/* xorshift64*: the traces are random but the same on every run */
static uint64_t rng_state;

static double rng_unit(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (double)((rng_state * 2685821657736338717ULL) >> 11) / (double)(1ULL << 53);
}

static void trace_add(struct trace *tr, uint64_t t, unsigned tpl)
{
	if (tr->n == tr->cap) {
		tr->cap = tr->cap ? tr->cap * 2 : 1024;
		tr->a = realloc(tr->a, tr->cap * sizeof(*tr->a));
		assert_non_null(tr->a);
	}
	tr->a[tr->n++] = (struct arrival){ t, tpl };
}

/*
 * Poisson arrivals of rate(t) per second for template tpl from t0 to t1 (ms):
 * a Bernoulli trial per 10 ms step, the arrival at a random ms of its step.
 */
static void trace_poisson(struct trace *tr, unsigned tpl, uint64_t t0, uint64_t t1, double (*rate)(uint64_t t))
{
	for (uint64_t t = t0; t < t1; t += 10)
		if (rng_unit() < rate(t) / 100)
			trace_add(tr, t + (uint64_t)(rng_unit() * 10), tpl);
}

static int arrival_cmp(const void *x, const void *y)
{
	const struct arrival *a = x, *b = y;

	if (a->t != b->t)
		return a->t < b->t ? -1 : 1;
	return (int)a->tpl - (int)b->tpl;
}

static void trace_sort(struct trace *tr)
{
	qsort(tr->a, tr->n, sizeof(*tr->a), arrival_cmp);
}

static void trace_free(struct trace *tr)
{
	free(tr->a);
	tr->a = NULL;
	tr->n = tr->cap = 0;
}

/* ---- a pool model ---- */

struct sim_tpl {
	uint32_t prepare_ms;
	uint32_t slot_mib;
	bool pinned;
	unsigned pinned_depth;
};

struct sim_result {
	unsigned hits, misses;
	unsigned tpl_hits[SIM_TPL], tpl_misses[SIM_TPL];
	double mib_s; /* slot-MiB-seconds: warm and preparing slots */
	uint64_t peak_mib;
	unsigned peak_slots;
	bool plan_over_budget; /* a plan whose targets exceed the budget */
	unsigned max_target[SIM_TPL];
	unsigned min_target[SIM_TPL]; /* over ticks after the first minute */
	uint64_t last_arrival[SIM_TPL];
	uint64_t zero_at[SIM_TPL]; /* first tick with target 0 after the last arrival */
	unsigned end_slots[SIM_TPL];
	enum capacity_reason end_reason[SIM_TPL];
};

static double hit_rate(const struct sim_result *r)
{
	unsigned n = r->hits + r->misses;

	return n ? (double)r->hits / n : 1;
}

struct sim_pool {
	unsigned warm, preparing, target;
	uint64_t done;
	uint64_t last_demand;
	struct capacity_history *hist;
};

/* One prepare at a time per template, at most par->parallel across them, never beyond the budget. */
static void sim_refill(const struct capacity_params *par, const struct sim_tpl *cfg, struct sim_pool *pool,
		       size_t nt, uint64_t now)
{
	for (;;) {
		unsigned busy = 0, slots = 0, best = SIM_TPL, best_def = 0;
		uint64_t mib = 0;

		for (size_t i = 0; i < nt; i++) {
			busy += pool[i].preparing;
			slots += pool[i].warm + pool[i].preparing;
			mib += (uint64_t)(pool[i].warm + pool[i].preparing) * cfg[i].slot_mib;
		}
		if (busy >= par->parallel)
			return;
		for (size_t i = 0; i < nt; i++) {
			unsigned have = pool[i].warm + pool[i].preparing;

			if (pool[i].preparing || have >= pool[i].target)
				continue;
			if (slots + 1 > par->max_slots || mib + cfg[i].slot_mib > par->budget_mib)
				continue;
			if (best == SIM_TPL || pool[i].target - have > best_def) {
				best = i;
				best_def = pool[i].target - have;
			}
		}
		if (best == SIM_TPL)
			return;
		pool[best].preparing = 1;
		pool[best].done = now + cfg[best].prepare_ms;
	}
}

static void sim_tick(const struct capacity_params *par, const struct sim_tpl *cfg, struct sim_pool *pool, size_t nt,
		     uint64_t now, struct sim_result *r)
{
	struct capacity_input in[SIM_TPL];
	struct capacity_output out[SIM_TPL];
	uint64_t mib = 0;
	unsigned slots = 0;
	int total;

	for (size_t i = 0; i < nt; i++)
		in[i] = (struct capacity_input){
			.history = pool[i].hist,
			.prepare_ms = cfg[i].prepare_ms,
			.slot_mib = cfg[i].slot_mib,
			.warm = pool[i].warm + pool[i].preparing,
			.pinned = cfg[i].pinned,
			.pinned_depth = cfg[i].pinned_depth,
			.last_demand_ms = pool[i].last_demand,
		};
	total = capacity_plan(par, in, nt, now, out);
	assert_true(total >= 0);
	for (size_t i = 0; i < nt; i++) {
		pool[i].target = out[i].target;
		/* the pool recycles warm slots beyond the target at once */
		if (pool[i].warm > out[i].target)
			pool[i].warm = out[i].target;
		mib += (uint64_t)out[i].target * cfg[i].slot_mib;
		slots += out[i].target;
		if (out[i].target > r->max_target[i])
			r->max_target[i] = out[i].target;
		if (now >= T0 + 60 * SEC && out[i].target < r->min_target[i])
			r->min_target[i] = out[i].target;
		if (out[i].target == 0 && r->zero_at[i] == NEVER)
			r->zero_at[i] = now;
		if (out[i].target > 0)
			r->zero_at[i] = NEVER;
		r->end_reason[i] = out[i].reason;
	}
	assert_int_equal((unsigned)total, slots);
	if (mib > par->budget_mib || slots > par->max_slots)
		r->plan_over_budget = true;
}

/*
 * Replays tr against the pool: with fixed (a depth per template) the targets
 * never change and the pool starts full; without, capacity_plan() sets them
 * every second and the pool starts empty, the templates just made ready.
 */
static void simulate(const struct capacity_params *par, const struct sim_tpl *cfg, size_t nt,
		     const struct trace *tr, const unsigned *fixed, struct sim_result *r)
{
	struct sim_pool pool[SIM_TPL];
	uint64_t now = T0, tick = fixed ? NEVER : T0, end = T0 + tr->end_ms;
	size_t ai = 0;

	memset(r, 0, sizeof(*r));
	memset(pool, 0, sizeof(pool));
	for (size_t i = 0; i < nt; i++) {
		r->min_target[i] = CAPACITY_MAX_DEPTH + 1;
		r->zero_at[i] = NEVER;
		pool[i].last_demand = T0;
		if (fixed) {
			pool[i].target = pool[i].warm = fixed[i];
			continue;
		}
		pool[i].hist = calloc(1, sizeof(*pool[i].hist));
		assert_non_null(pool[i].hist);
	}
	for (;;) {
		uint64_t t_arr = ai < tr->n ? T0 + tr->a[ai].t : NEVER, t_done = NEVER, t, mib = 0;
		unsigned slots = 0;

		for (size_t i = 0; i < nt; i++) {
			if (pool[i].preparing && pool[i].done < t_done)
				t_done = pool[i].done;
			slots += pool[i].warm + pool[i].preparing;
			mib += (uint64_t)(pool[i].warm + pool[i].preparing) * cfg[i].slot_mib;
		}
		if (mib > r->peak_mib)
			r->peak_mib = mib;
		if (slots > r->peak_slots)
			r->peak_slots = slots;
		t = t_arr < t_done ? t_arr : t_done;
		t = tick < t ? tick : t;
		if (t > end)
			t = end;
		r->mib_s += (double)mib * (double)(t - now) / 1000;
		now = t;
		if (now == end)
			break;
		if (t == t_done) {
			for (size_t i = 0; i < nt; i++) {
				if (!pool[i].preparing || pool[i].done != t)
					continue;
				pool[i].preparing = 0;
				if (pool[i].warm < pool[i].target)
					pool[i].warm++;
			}
		} else if (t == t_arr) {
			unsigned i = tr->a[ai++].tpl;

			if (pool[i].hist)
				capacity_history_push(pool[i].hist, t);
			pool[i].last_demand = t;
			r->last_arrival[i] = t;
			if (pool[i].warm > 0) {
				pool[i].warm--;
				r->hits++;
				r->tpl_hits[i]++;
			} else {
				r->misses++;
				r->tpl_misses[i]++;
			}
		} else {
			sim_tick(par, cfg, pool, nt, now, r);
			tick += SEC;
		}
		sim_refill(par, cfg, pool, nt, now);
	}
	for (size_t i = 0; i < nt; i++) {
		r->end_slots[i] = pool[i].warm + pool[i].preparing;
		free(pool[i].hist);
	}
}

/* The smallest fixed depth (the same for each template) reaching hit rate h, and its result. */
static unsigned smallest_fixed(const struct capacity_params *par, const struct sim_tpl *cfg, size_t nt,
			       const struct trace *tr, double h, struct sim_result *r)
{
	for (unsigned d = 0; d <= FIXED_MAX; d++) {
		unsigned depth[SIM_TPL] = { d, d };

		simulate(par, cfg, nt, tr, depth, r);
		if (hit_rate(r) >= h)
			return d;
	}
	fail_msg("no fixed depth up to %u reaches %.4f on %s", FIXED_MAX, h, tr->name);
	return 0;
}

static struct capacity_params params(void)
{
	struct capacity_params p;

	capacity_params_default(&p, 64 * 1024);
	p.idle_decay_ms = 300 * SEC;
	return p;
}

static void report(const char *trace, const struct sim_result *a, unsigned d, const struct sim_result *f)
{
	print_message("capacity %-9s adaptive hit %.4f slot-MiB-s %9.0f | fixed depth %2u hit %.4f slot-MiB-s %9.0f"
		      " | ratio %.2f\n",
		      trace, hit_rate(a), a->mib_s, d, hit_rate(f), f->mib_s, a->mib_s / f->mib_s);
}

/* ---- the model ---- */

/* A history with one create every spacing ms up to now: a known rate. */
static struct capacity_history *even_history(uint64_t now, uint64_t spacing, unsigned n)
{
	struct capacity_history *h = calloc(1, sizeof(*h));

	assert_non_null(h);
	for (unsigned i = n; i-- > 0;)
		capacity_history_push(h, now - i * spacing);
	return h;
}

/* The miss probability reported at a pinned depth, for 1/s arrivals and the given prepare time. */
static double model_miss(uint32_t prepare_ms, unsigned depth)
{
	uint64_t now = T0 + 3600 * SEC;
	struct capacity_history *h = even_history(now, SEC, 600);
	struct capacity_params p = params();
	struct capacity_input in = { .history = h, .prepare_ms = prepare_ms, .slot_mib = 56, .pinned = true,
				     .pinned_depth = depth };
	struct capacity_output out;

	p.max_slots = CAPACITY_MAX_DEPTH;
	assert_int_equal(capacity_plan(&p, &in, 1, now, &out), depth);
	assert_int_equal(out.reason, CAPACITY_PINNED);
	assert_true(out.rate > 0.999 && out.rate < 1.001);
	free(h);
	return out.miss;
}

static double rate_one(uint64_t t)
{
	(void)t;
	return 1.0;
}

/* Depth 1 is Erlang's loss rho/(1+rho); deeper, the M/D/1/K loss matches a simulated pool. */
static void model_matches_pool(void **state)
{
	struct capacity_params p = params();
	struct sim_tpl cfg = { .prepare_ms = 400, .slot_mib = 56 };
	struct trace tr = { .name = "poisson", .end_ms = 7200 * SEC };
	struct sim_result r;

	(void)state;
	assert_true(model_miss(400, 1) > 0.4 / 1.4 - 1e-9 && model_miss(400, 1) < 0.4 / 1.4 + 1e-9);
	/* rho 2: no depth serves more than 1/rho */
	assert_true(model_miss(2000, CAPACITY_MAX_DEPTH) > 0.4999 && model_miss(2000, CAPACITY_MAX_DEPTH) < 0.5001);
	rng_state = 1;
	trace_poisson(&tr, 0, 0, tr.end_ms, rate_one);
	for (unsigned d = 1; d <= 4; d++) {
		double want = model_miss(400, d), got;

		simulate(&p, &cfg, 1, &tr, &d, &r);
		got = (double)r.misses / (r.hits + r.misses);
		print_message("capacity model depth %u: M/D/1/K miss %.4f, simulated %.4f\n", d, want, got);
		/* 7200 arrivals: a binomial sd of at most 0.006, and the Bernoulli steps are not quite Poisson */
		assert_true(got > want - 0.015 && got < want + 0.015);
	}
	trace_free(&tr);
}

/* ---- the controller on its own ---- */

static void zero_inputs(void **state)
{
	struct capacity_params p, zero;
	struct capacity_input in[2];
	struct capacity_output out[2];
	struct capacity_history empty;

	(void)state;
	memset(&zero, 0, sizeof(zero));
	memset(in, 0, sizeof(in));
	memset(&empty, 0, sizeof(empty));
	capacity_params_default(&p, 0);
	assert_int_equal(capacity_plan(NULL, in, 1, 0, out), -EINVAL);
	assert_int_equal(capacity_plan(&p, NULL, 1, 0, out), -EINVAL);
	assert_int_equal(capacity_plan(&p, in, 1, 0, NULL), -EINVAL);
	assert_int_equal(capacity_plan(&p, NULL, 0, 0, NULL), 0);
	/* nothing known: no slots */
	assert_int_equal(capacity_plan(&zero, in, 2, 0, out), 0);
	assert_int_equal(out[0].target, 0);
	assert_int_equal(out[0].reason, CAPACITY_IDLE);
	assert_true(out[0].miss == 1);
	in[0].history = &empty;
	in[0].last_demand_ms = 5;
	assert_int_equal(capacity_plan(&zero, in, 2, 5, out), 0);
	assert_int_equal(out[0].target, 0);
	assert_int_equal(out[0].reason, CAPACITY_BUDGET); /* active, but a zero budget */
	/* a real budget: the active one gets its minimum depth, even measured nothing */
	p.budget_mib = 100;
	assert_int_equal(capacity_plan(&p, in, 2, 5, out), 1);
	assert_int_equal(out[0].target, 1);
	assert_int_equal(out[0].reason, CAPACITY_DEMAND);
	assert_true(out[0].miss == 0);
	assert_int_equal(out[1].target, 0);
	/* a clock behind the last demand, absurd parameters */
	p.target_miss = -3;
	p.parallel = 0;
	p.min_depth = 100000;
	in[0].last_demand_ms = 1000;
	assert_int_equal(capacity_plan(&p, in, 1, 0, out), 64); /* max_slots */
	assert_string_equal(capacity_reason_name(out[0].reason), "budget");
	assert_string_equal(capacity_reason_name((enum capacity_reason)99), "unknown");
}

static void history_ring(void **state)
{
	struct capacity_history *h = calloc(1, sizeof(*h));
	struct capacity_params p = params();
	struct capacity_input in = { .prepare_ms = 100, .slot_mib = 10 };
	struct capacity_output out;
	uint64_t now = T0 + 10000 * SEC;

	(void)state;
	assert_non_null(h);
	/* 3000 creates 10 ms apart: the ring keeps the last 2048, 20.47 s, a rate of 100/s */
	for (unsigned i = 0; i < 3000; i++)
		capacity_history_push(h, now - (2999 - i) * 10);
	assert_int_equal(h->count, CAPACITY_HISTORY_MAX);
	assert_int_equal(h->t_ms[(h->head + h->count - 1) % CAPACITY_HISTORY_MAX], now);
	in.history = h;
	assert_true(capacity_plan(&p, &in, 1, now, &out) > 0);
	assert_true(out.rate > 99 && out.rate < 101);
	/* rho = 10: saturated, and depth is kept where it still helps by the target */
	assert_int_equal(out.reason, CAPACITY_SATURATED);
	assert_true(out.target >= 1 && out.target <= CAPACITY_MAX_DEPTH);
	/* a far higher rate: still bounded */
	in.prepare_ms = 60000;
	assert_true(capacity_plan(&p, &in, 1, now, &out) >= 0);
	assert_int_equal(out.reason, CAPACITY_SATURATED);
	assert_int_equal(out.target, 1);
	free(h);
}

static void burst_seen(void **state)
{
	struct capacity_history *h = calloc(1, sizeof(*h));
	struct capacity_params p = params();
	struct capacity_input in = { .history = h, .prepare_ms = 400, .slot_mib = 56 };
	struct capacity_output out;
	uint64_t now = T0 + 1000 * SEC;

	(void)state;
	assert_non_null(h);
	p.idle_decay_ms = 600 * SEC;
	/* 12 creates within a second, 100 s ago, and nothing else: a mean rate that asks for 1 slot */
	for (unsigned i = 0; i < 12; i++)
		capacity_history_push(h, now - 100 * SEC + i * 80);
	assert_true(capacity_plan(&p, &in, 1, now, &out) > 0);
	assert_int_equal(out.reason, CAPACITY_BURST);
	/* 12 in 0.9 s with a 0.4 s refill: 2 come back during the burst, 10 must be warm */
	assert_int_equal(out.target, 10);
	/* past the rate window the burst is forgotten */
	assert_true(capacity_plan(&p, &in, 1, now + 250 * SEC, &out) > 0);
	assert_int_equal(out.target, 1);
	assert_int_equal(out.reason, CAPACITY_DEMAND);
	free(h);
}

static void pinned_holds(void **state)
{
	struct capacity_params p = params();
	struct capacity_history *h = even_history(T0 + 1000 * SEC, 500, 600);
	struct capacity_input in[3] = {
		{ .pinned = true, .pinned_depth = 3, .slot_mib = 100 }, /* never used: a pin needs no demand */
		{ .pinned = true, .pinned_depth = 0, .slot_mib = 100, .history = h, .prepare_ms = 400 }, /* busy, off */
		{ .slot_mib = 100, .history = h, .prepare_ms = 400 },
	};
	struct capacity_output out[3];
	uint64_t now = T0 + 1000 * SEC;

	(void)state;
	assert_non_null(h);
	p.budget_mib = 10000;
	capacity_plan(&p, in, 3, now, out);
	assert_int_equal(out[0].target, 3);
	assert_int_equal(out[0].reason, CAPACITY_PINNED);
	assert_int_equal(out[1].target, 0);
	assert_int_equal(out[1].reason, CAPACITY_PINNED);
	assert_true(out[1].miss == 1);
	assert_true(out[2].target >= 3);
	assert_int_equal(out[2].reason, CAPACITY_DEMAND);
	/* pins count against the budget first: the auto one gets what is left */
	p.budget_mib = 500;
	assert_int_equal(capacity_plan(&p, in, 3, now, out), 5);
	assert_int_equal(out[0].target, 3);
	assert_int_equal(out[2].target, 2);
	assert_int_equal(out[2].reason, CAPACITY_BUDGET);
	/* pins alone beyond the budget: shared level by level, clamped, reported */
	in[1].pinned_depth = 5;
	p.budget_mib = 450;
	assert_int_equal(capacity_plan(&p, in, 3, now, out), 4);
	assert_int_equal(out[0].target, 2);
	assert_int_equal(out[0].reason, CAPACITY_PINNED_CLAMPED);
	assert_int_equal(out[0].demand, 3);
	assert_int_equal(out[1].target, 2);
	assert_int_equal(out[1].reason, CAPACITY_PINNED_CLAMPED);
	assert_int_equal(out[2].target, 0);
	assert_int_equal(out[2].reason, CAPACITY_BUDGET);
	/* the slot count binds the same way; a pin beyond the maximum depth is clamped to it */
	p.budget_mib = 1 << 20;
	p.max_slots = 200;
	in[0].pinned_depth = 1000;
	assert_int_equal(capacity_plan(&p, in, 3, now, out), 200);
	assert_int_equal(out[0].target, 195); /* 5 levels of 2, then 190 more */
	assert_int_equal(out[0].demand, CAPACITY_MAX_DEPTH);
	assert_int_equal(out[1].target, 5);
	assert_int_equal(out[2].target, 0);
	free(h);
}

/* When the budget binds, the slot avoiding more misses per MiB goes first. */
static void budget_by_gain(void **state)
{
	uint64_t now = T0 + 1000 * SEC;
	struct capacity_history *busy = even_history(now, 1000, 300), *calm = even_history(now, 10000, 30);
	struct capacity_params p = params();
	struct capacity_input in[3] = {
		{ .history = busy, .prepare_ms = 400, .slot_mib = 50 },
		{ .history = busy, .prepare_ms = 400, .slot_mib = 100 },
		{ .history = calm, .prepare_ms = 400, .slot_mib = 50 },
	};
	struct capacity_output out[3];

	(void)state;
	assert_non_null(busy);
	assert_non_null(calm);
	/* without a budget: the two busy ones want 6 each, the calm one 3 */
	p.budget_mib = 1 << 20;
	assert_int_equal(capacity_plan(&p, in, 3, now, out), 15);
	assert_int_equal(out[0].demand, 6);
	assert_int_equal(out[1].demand, 6);
	assert_int_equal(out[2].demand, 3);
	for (unsigned b = 0; b <= 800; b += 50) {
		p.budget_mib = b;
		capacity_plan(&p, in, 3, now, out);
		assert_true(out[0].target * 50 + out[1].target * 100 + out[2].target * 50 <= b);
		/* the same demand at half the MiB: never fewer slots */
		assert_true(out[0].target >= out[1].target);
	}
	/*
	 * 100 MiB: the cheap busy one's first slot avoids 0.58 misses/s (0.0117
	 * per MiB), its second 0.25 (0.0049), the dear one's first 0.58 (0.0058)
	 * does not fit after the first, the calm one's first 0.08 (0.0017).
	 */
	p.budget_mib = 100;
	assert_int_equal(capacity_plan(&p, in, 3, now, out), 2);
	assert_int_equal(out[0].target, 2);
	assert_int_equal(out[1].target, 0);
	assert_int_equal(out[1].reason, CAPACITY_BUDGET);
	/* 150 MiB: the dear one's first slot (0.0058/MiB) before the cheap one's second (0.0049) */
	p.budget_mib = 150;
	assert_int_equal(capacity_plan(&p, in, 3, now, out), 2);
	assert_int_equal(out[0].target, 1);
	assert_int_equal(out[1].target, 1);
	/* 800 MiB: the cheap one has all it asks for, the others are cut */
	p.budget_mib = 800;
	capacity_plan(&p, in, 3, now, out);
	assert_int_equal(out[0].target, 6);
	assert_int_equal(out[0].reason, CAPACITY_DEMAND);
	assert_true(out[0].miss <= 0.01);
	assert_int_equal(out[1].target, 4);
	assert_int_equal(out[1].reason, CAPACITY_BUDGET);
	assert_int_equal(out[2].target, 2);
	free(busy);
	free(calm);
}

/* ---- traces against the pool model ---- */

static double rate_diurnal(uint64_t t)
{
	/* one hour "days": 0.05/s at night, 2/s at noon; (1 - cos)/2 by a parabola per half day */
	double x = (double)(t % (3600 * SEC)) / (3600 * SEC), y = x < 0.5 ? 2 * x : 2 - 2 * x;
	double bell = y * y * (3 - 2 * y); /* smoothstep: 0 at night, 1 at noon */

	return 0.05 + 1.95 * bell;
}

static double rate_bg(uint64_t t)
{
	(void)t;
	return 0.1;
}

/* One template against its smallest fixed equivalent; returns the adaptive result in *ra. */
static void one_template(const char *name, struct trace *tr, uint32_t prepare_ms, struct sim_result *ra,
			 struct sim_result *rf, unsigned *d)
{
	struct capacity_params p = params();
	struct sim_tpl cfg = { .prepare_ms = prepare_ms, .slot_mib = 56 };

	tr->name = name;
	trace_sort(tr);
	simulate(&p, &cfg, 1, tr, NULL, ra);
	*d = smallest_fixed(&p, &cfg, 1, tr, hit_rate(ra), rf);
	report(name, ra, *d, rf);
	assert_false(ra->plan_over_budget);
	assert_true(ra->peak_mib <= p.budget_mib);
}

static void trace_steady(void **state)
{
	struct trace tr = { .end_ms = 3600 * SEC };
	struct sim_result ra, rf;
	unsigned d;

	(void)state;
	rng_state = 2;
	trace_poisson(&tr, 0, 0, tr.end_ms, rate_one);
	one_template("steady", &tr, 400, &ra, &rf, &d);
	/* nothing to adapt to: the target and about the fixed pool's memory */
	assert_true(hit_rate(&ra) >= 0.99);
	assert_true(ra.mib_s <= rf.mib_s * 1.05);
	trace_free(&tr);
}

static void trace_bursty(void **state)
{
	struct trace tr = { .end_ms = 7200 * SEC };
	struct sim_result ra, rf;
	unsigned d;

	(void)state;
	rng_state = 3;
	trace_poisson(&tr, 0, 0, tr.end_ms, rate_bg);
	/* a CI pipeline: for 10 minutes every half hour, 12 creates within a second every 30 s */
	for (uint64_t ep = 300 * SEC; ep < tr.end_ms; ep += 1800 * SEC)
		for (uint64_t b = ep; b < ep + 600 * SEC; b += 30 * SEC)
			for (unsigned i = 0; i < 12; i++)
				trace_add(&tr, b + (uint64_t)(rng_unit() * 1000), 0);
	one_template("bursty", &tr, 400, &ra, &rf, &d);
	assert_true(hit_rate(&ra) >= 0.95);
	assert_true(ra.mib_s <= rf.mib_s * 0.70);
	trace_free(&tr);
}

static void trace_diurnal(void **state)
{
	struct trace tr = { .end_ms = 7200 * SEC };
	struct sim_result ra, rf;
	unsigned d;

	(void)state;
	rng_state = 4;
	trace_poisson(&tr, 0, 0, tr.end_ms, rate_diurnal);
	one_template("diurnal", &tr, 400, &ra, &rf, &d);
	assert_true(hit_rate(&ra) >= 0.99);
	assert_true(ra.mib_s <= rf.mib_s * 0.75);
	trace_free(&tr);
}

static void trace_idle(void **state)
{
	struct trace tr = { .end_ms = 2400 * SEC };
	struct sim_result ra, rf;
	unsigned d;

	(void)state;
	rng_state = 5;
	/* busy for 10 minutes, then nothing for 30 */
	trace_poisson(&tr, 0, 0, 600 * SEC, rate_one);
	one_template("idle", &tr, 400, &ra, &rf, &d);
	assert_true(hit_rate(&ra) >= 0.99);
	/* decayed to 0 one idle time (300 s) after the last create, at the next tick */
	assert_true(ra.zero_at[0] > ra.last_arrival[0] + 300 * SEC);
	assert_true(ra.zero_at[0] <= ra.last_arrival[0] + 301 * SEC + 1);
	assert_int_equal(ra.end_slots[0], 0);
	assert_int_equal(ra.end_reason[0], CAPACITY_IDLE);
	assert_true(ra.mib_s <= rf.mib_s * 0.5);
	trace_free(&tr);
}

static double rate_a(uint64_t t)
{
	return t < 1800 * SEC ? 1.5 : 0.05;
}

static double rate_b(uint64_t t)
{
	return t < 1800 * SEC ? 0.05 : 1.0;
}

/*
 * Two templates, one budget: A (56 MiB slots) busy for the first half hour,
 * B (112 MiB slots) for the second. No fixed split of the budget serves both.
 */
static void trace_competing(void **state)
{
	struct capacity_params p = params();
	struct sim_tpl cfg[2] = {
		{ .prepare_ms = 400, .slot_mib = 56 },
		{ .prepare_ms = 600, .slot_mib = 112 },
	};
	struct trace tr = { .name = "competing", .end_ms = 3600 * SEC };
	struct sim_result ra, rf, best;
	unsigned best_d[2] = { 0, 0 }, d;

	(void)state;
	p.budget_mib = 616;
	rng_state = 6;
	trace_poisson(&tr, 0, 0, tr.end_ms, rate_a);
	trace_poisson(&tr, 1, 0, tr.end_ms, rate_b);
	trace_sort(&tr);
	simulate(&p, cfg, 2, &tr, NULL, &ra);
	assert_false(ra.plan_over_budget);
	assert_true(ra.peak_mib <= p.budget_mib);
	/* the best fixed split within the budget */
	memset(&best, 0, sizeof(best));
	for (unsigned a = 0; a * 56 <= p.budget_mib; a++) {
		for (unsigned b = 0; a * 56 + b * 112 <= p.budget_mib; b++) {
			unsigned depth[2] = { a, b };

			simulate(&p, cfg, 2, &tr, depth, &rf);
			if (hit_rate(&rf) > hit_rate(&best) || (a == 0 && b == 0)) {
				best = rf;
				best_d[0] = a;
				best_d[1] = b;
			}
		}
	}
	print_message("capacity competing adaptive hit %.4f (A %.4f, B %.4f) slot-MiB-s %.0f, peak %" PRIu64
		      " MiB of %" PRIu64 " | best fixed split in budget A=%u B=%u hit %.4f slot-MiB-s %.0f\n",
		      hit_rate(&ra), (double)ra.tpl_hits[0] / (ra.tpl_hits[0] + ra.tpl_misses[0]),
		      (double)ra.tpl_hits[1] / (ra.tpl_hits[1] + ra.tpl_misses[1]), ra.mib_s, ra.peak_mib,
		      p.budget_mib, best_d[0], best_d[1], hit_rate(&best), best.mib_s);
	/* the smallest fixed depth for both, the budget ignored */
	p.budget_mib = 1 << 20;
	d = smallest_fixed(&p, cfg, 2, &tr, hit_rate(&ra), &rf);
	report("competing", &ra, d, &rf);
	/* the budget binds while B is busy (it alone wants ~6 slots, 672 MiB) */
	assert_true(ra.peak_mib == 616);
	assert_true(hit_rate(&ra) >= 0.99);
	assert_true(hit_rate(&ra) >= hit_rate(&best) + 0.01);
	assert_true(ra.mib_s < best.mib_s);
	assert_true(rf.peak_mib > 616); /* the fixed depth does not fit the budget */
	assert_true(ra.mib_s <= rf.mib_s * 0.70);
	trace_free(&tr);
}

/* A pinned template holds its depth through idleness and a competitor's demand. */
static void trace_pinned(void **state)
{
	struct capacity_params p = params();
	struct sim_tpl cfg[2] = {
		{ .prepare_ms = 400, .slot_mib = 56 },
		{ .prepare_ms = 400, .slot_mib = 56, .pinned = true, .pinned_depth = 4 },
	};
	struct trace tr = { .name = "pinned", .end_ms = 1200 * SEC };
	struct sim_result r;

	(void)state;
	p.budget_mib = 8 * 56;
	rng_state = 7;
	trace_poisson(&tr, 0, 0, tr.end_ms, rate_a); /* A wants more than the 4 slots left */
	simulate(&p, cfg, 2, &tr, NULL, &r);
	assert_int_equal(r.min_target[1], 4);
	assert_int_equal(r.max_target[1], 4);
	assert_int_equal(r.max_target[0], 4);
	assert_int_equal(r.end_slots[1], 4);
	assert_false(r.plan_over_budget);
	assert_true(r.peak_mib <= p.budget_mib);
	trace_free(&tr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(zero_inputs),	     cmocka_unit_test(history_ring),
		cmocka_unit_test(burst_seen),	     cmocka_unit_test(pinned_holds),
		cmocka_unit_test(budget_by_gain),    cmocka_unit_test(model_matches_pool),
		cmocka_unit_test(trace_steady),	     cmocka_unit_test(trace_bursty),
		cmocka_unit_test(trace_diurnal),     cmocka_unit_test(trace_idle),
		cmocka_unit_test(trace_competing),   cmocka_unit_test(trace_pinned),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
