/*
 * Placement (cluster/place.c): the tiers (warm anywhere, then artifacts,
 * then fits), the exclusions, the tie-breaks, the seeded best-of-k, every
 * fitting host listed exactly once over random views, the spread of a
 * burst of creates over equal hosts, and the time of one decision at 50
 * hosts (printed, not asserted: the machine decides it).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "place.h"

#define MAXH 64

/* xorshift64*: the random views are the same on every run */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static unsigned rng_below(unsigned n)
{
	return (unsigned)(rng_next() % n);
}

static char names[MAXH][16];

/* an idle host that fits: alive, accepting, room for 16, nothing in flight */
static struct place_host host(const char *name)
{
	return (struct place_host){
		.name = name, .alive = true, .accepting = true, .max_sandboxes = 16,
	};
}

static bool fits(const struct place_host *h, unsigned max_creating)
{
	return h->alive && h->accepting && h->sandboxes < h->max_sandboxes && h->creating <= max_creating;
}

/* a random view of n hosts; loads from a small set so that ties happen */
static void random_view(struct place_host *h, size_t n)
{
	static const double loads[] = { 0.0, 0.25, 0.5, 0.5, 0.75, 1.0 };

	for (size_t i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "h%02zu", (i * 37 + 11) % MAXH);
		h[i] = host(names[i]);
		h[i].alive = rng_below(10) != 0;
		h[i].accepting = rng_below(10) != 0;
		h[i].warm = rng_below(5) == 0 ? 1 + rng_below(3) : 0;
		h[i].artifacts = rng_below(2) == 0;
		h[i].max_sandboxes = rng_below(12) == 0 ? 0 : 8;
		h[i].sandboxes = rng_below(10);
		h[i].creating = rng_below(7);
		h[i].load = loads[rng_below(sizeof(loads) / sizeof(loads[0]))];
	}
}

static size_t rank(const struct place_host *h, size_t n, const char *local, uint64_t seed, struct place_choice *out)
{
	struct place_req req = { .local = local, .seed = seed };

	return place_rank(h, n, &req, out);
}

static void tiers_warm_artifacts_fits(void **state)
{
	struct place_host h[4] = { host("a"), host("b"), host("c"), host("d") };
	struct place_choice out[4];

	/* local a: idle, holds the artifacts; b: busy but warm; c: idle, nothing; d: busy, artifacts */
	h[0].artifacts = true;
	h[1].warm = 1;
	h[1].load = 0.9;
	h[1].creating = 3;
	h[3].artifacts = true;
	h[3].load = 0.5;
	assert_int_equal(rank(h, 4, "a", 1, out), 4);
	assert_int_equal(out[0].host, 1);
	assert_int_equal(out[0].tier, PLACE_WARM);
	assert_int_equal(out[1].host, 0);
	assert_int_equal(out[1].tier, PLACE_ARTIFACTS);
	assert_int_equal(out[2].host, 3);
	assert_int_equal(out[2].tier, PLACE_ARTIFACTS);
	assert_int_equal(out[3].host, 2);
	assert_int_equal(out[3].tier, PLACE_FITS);
	/* score = load + 0.05 * creating */
	assert_true(out[0].score > 1.04 && out[0].score < 1.06);
	assert_string_equal(place_tier_name(PLACE_WARM), "warm");
	assert_string_equal(place_tier_name(PLACE_ARTIFACTS), "artifacts");
	assert_string_equal(place_tier_name(PLACE_FITS), "fits");
}

static void local_first_on_tie(void **state)
{
	struct place_host h[3] = { host("a"), host("b"), host("c") };
	struct place_choice out[3];

	assert_int_equal(rank(h, 3, "b", 7, out), 3);
	assert_int_equal(out[0].host, 1);
	assert_int_equal(out[1].host, 0); /* then by name */
	assert_int_equal(out[2].host, 2);
	assert_int_equal(rank(h, 3, "c", 7, out), 3);
	assert_int_equal(out[0].host, 2);
	assert_int_equal(out[1].host, 0);
	/* no tie: the lower score wins over the local host */
	h[2].load = 0.1;
	assert_int_equal(rank(h, 3, "c", 7, out), 3);
	assert_int_equal(out[0].host, 0);
	assert_int_equal(out[2].host, 2);
	/* a create in flight counts */
	h[2].load = 0;
	h[0].creating = 1;
	assert_int_equal(rank(h, 3, NULL, 7, out), 3);
	assert_int_equal(out[0].host, 1);
	assert_int_equal(out[2].host, 0);
}

static void excluded(void **state)
{
	struct place_host h[7] = { host("dead"), host("draining"), host("full"), host("none"),
				   host("busy"), host("ok"), host("edge") };
	struct place_choice out[7];
	struct place_req req = { .local = "dead" };

	for (size_t i = 0; i < 7; i++)
		h[i].warm = 2; /* a warm slot does not make an unfit host fit */
	h[0].alive = false;
	h[1].accepting = false;
	h[2].sandboxes = 16;
	h[3].max_sandboxes = 0;
	h[4].creating = 5; /* more than the default 4 */
	h[6].creating = 4; /* exactly the limit: still fits */
	assert_int_equal(place_rank(h, 7, &req, out), 2);
	assert_int_equal(out[0].host, 5);
	assert_int_equal(out[1].host, 6);
	req.max_creating = 3;
	assert_int_equal(place_rank(h, 7, &req, out), 1);
	assert_int_equal(out[0].host, 5);
	req.max_creating = 5;
	assert_int_equal(place_rank(h, 7, &req, out), 3);
	assert_int_equal(out[2].host, 4);
}

static void empty_view(void **state)
{
	struct place_host h[2] = { host("a"), host("b") };
	struct place_choice out[2];

	assert_int_equal(rank(h, 0, "a", 1, out), 0);
	assert_int_equal(place_rank(NULL, 0, NULL, out), 0);
	h[0].alive = false;
	h[1].accepting = false;
	assert_int_equal(rank(h, 2, "a", 1, out), 0);
	/* no request: the defaults */
	h[1].accepting = true;
	assert_int_equal(place_rank(h, 2, NULL, out), 1);
	assert_int_equal(out[0].host, 1);
}

/* field by field: a choice has padding */
static bool same_ranking(const struct place_choice *a, const struct place_choice *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i].host != b[i].host || a[i].tier != b[i].tier || a[i].score != b[i].score)
			return false;
	return true;
}

static void same_seed_same_order(void **state)
{
	struct place_host h[40];
	struct place_choice a[40], b[40];
	size_t na, nb, differ = 0;

	rng_state = 0x5eed;
	random_view(h, 40);
	for (uint64_t seed = 0; seed < 100; seed++) {
		na = rank(h, 40, names[3], seed, a);
		nb = rank(h, 40, names[3], seed, b);
		assert_true(na > 3);
		assert_int_equal(na, nb);
		assert_true(same_ranking(a, b, na));
		rank(h, 40, names[3], seed + 1000, b);
		differ += !same_ranking(a, b, na);
	}
	/* and the seed matters when a tier has more than k hosts */
	assert_true(differ > 0);
}

/* one random view against what place.h promises */
static void check_view(const struct place_host *h, size_t n, unsigned k, uint64_t seed)
{
	struct place_choice out[MAXH];
	struct place_req req = { .local = n ? h[rng_below(n)].name : NULL, .k = k, .seed = seed };
	unsigned seen[MAXH] = { 0 };
	size_t count, want = 0;

	for (size_t i = 0; i < n; i++)
		want += fits(&h[i], 4);
	count = place_rank(h, n, &req, out);
	assert_int_equal(count, want);
	for (size_t j = 0; j < count; j++) {
		const struct place_host *c = &h[out[j].host];

		assert_true(out[j].host < n);
		assert_true(fits(c, 4));
		seen[out[j].host]++;
		assert_int_equal(out[j].tier, c->warm ? PLACE_WARM : c->artifacts ? PLACE_ARTIFACTS : PLACE_FITS);
		if (j > 0)
			assert_true(out[j - 1].tier <= out[j].tier);
	}
	for (size_t i = 0; i < n; i++)
		assert_int_equal(seen[i], fits(&h[i], 4) ? 1 : 0);
	/* within a tier: the sampled best first, the rest in score order */
	for (size_t s = 0, e; s < count; s = e) {
		for (e = s + 1; e < count && out[e].tier == out[s].tier; e++)
			;
		for (size_t j = s + 2; j < e; j++)
			assert_true(out[j - 1].score <= out[j].score);
		if (e - s <= (k ? k : 3))
			for (size_t j = s + 1; j < e; j++)
				assert_true(out[s].score <= out[j].score);
	}
}

static void every_fitting_host_once(void **state)
{
	struct place_host h[MAXH];

	rng_state = 0xfeedULL;
	for (uint64_t seed = 0; seed < 1000; seed++) {
		size_t n = rng_below(MAXH + 1);

		random_view(h, n);
		check_view(h, n, rng_below(5), seed);
	}
}

/*
 * 64 creates over 3 equal hosts, placed from host a; each placement takes a
 * sandbox and a create in flight on the chosen host, and a create finishes
 * six placements later (at most six in flight cluster-wide).
 */
static void spread_64_over_3(void **state)
{
	static const char *const hn[3] = { "a", "b", "c" };
	struct place_host h[3];
	struct place_choice out[3];
	size_t flight[6], per[3] = { 0 };

	for (size_t i = 0; i < 3; i++) {
		h[i] = host(hn[i]);
		h[i].max_sandboxes = 64;
	}
	for (size_t p = 0; p < 64; p++) {
		size_t c;

		if (p >= 6)
			h[flight[p % 6]].creating--;
		assert_int_equal(rank(h, 3, "a", p, out), 3);
		c = out[0].host;
		per[c]++;
		h[c].creating++;
		h[c].sandboxes++;
		h[c].load = (double)h[c].sandboxes / h[c].max_sandboxes;
		flight[p % 6] = c;
	}
	print_message("spread of 64 creates over 3 hosts: %zu %zu %zu\n", per[0], per[1], per[2]);
	for (size_t i = 0; i < 3; i++) {
		assert_true(per[i] * 4 * 3 >= 64 * 3); /* >= 0.75 * 64/3 */
		assert_true(per[i] * 4 * 3 <= 64 * 5); /* <= 1.25 * 64/3 */
	}
}

/*
 * 64 creates placed from one stale view of 12 equal hosts (nobody has seen
 * the others' reservations yet): best-of-3 spreads them; without sampling
 * all 64 would go to the same host.
 */
static void stale_view_spreads(void **state)
{
	struct place_host h[12];
	struct place_choice out[12];
	size_t per[12] = { 0 }, most = 0, used = 0;

	for (size_t i = 0; i < 12; i++) {
		snprintf(names[i], sizeof(names[i]), "h%02zu", i);
		h[i] = host(names[i]);
	}
	for (uint64_t p = 0; p < 64; p++) {
		assert_int_equal(rank(h, 12, NULL, p * 0x9e3779b9ULL, out), 12);
		per[out[0].host]++;
	}
	for (size_t i = 0; i < 12; i++) {
		most = per[i] > most ? per[i] : most;
		used += per[i] > 0;
	}
	print_message("stale view, 64 creates over 12 hosts: most on one host %zu, hosts used %zu\n", most, used);
	assert_true(most <= 32);
	assert_true(used >= 6);
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void decision_time_50_hosts(void **state)
{
	struct place_host h[50];
	struct place_choice out[50];
	double t0, first, total;
	size_t iters = 0, got = 0;

	rng_state = 0x50;
	random_view(h, 50);
	for (size_t i = 0; i < 50; i++) {
		h[i].alive = h[i].accepting = true;
		h[i].max_sandboxes = 32;
		h[i].creating %= 5;
	}
	t0 = now_us();
	got = rank(h, 50, names[0], 1, out);
	first = now_us() - t0;
	assert_int_equal(got, 50);
	t0 = now_us();
	do {
		got += rank(h, 50, names[0], iters, out);
		iters++;
	} while (iters < 100 || (now_us() - t0 < 100000 && iters < 1000000));
	total = now_us() - t0;
	print_message("one decision at 50 hosts: %.2f us mean over %zu (first call %.2f us)\n", total / iters, iters,
		      first);
	assert_int_equal(got, 50 * (iters + 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(tiers_warm_artifacts_fits),
		cmocka_unit_test(local_first_on_tie),
		cmocka_unit_test(excluded),
		cmocka_unit_test(empty_view),
		cmocka_unit_test(same_seed_same_order),
		cmocka_unit_test(every_fitting_host_once),
		cmocka_unit_test(spread_64_over_3),
		cmocka_unit_test(stale_view_spreads),
		cmocka_unit_test(decision_time_50_hosts),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
