/*
 * Placement: which hosts may take a create, best first (cluster/place.h).
 *
 * A pure function, like the capacity controller: the caller hands it a
 * snapshot of its view of the cluster and gets an order to try the hosts
 * in; it reads no clock, does no I/O and keeps no state.
 *
 * - Tiers: a warm slot of the exact identity anywhere beats everything
 *   (a warm create is a resume, a cold one a restore: warm must dominate,
 *   a weighted sum lets a small load difference send creates cold); then
 *   hosts holding the template's artifacts (no snapshot to move); then any
 *   host that fits.
 * - Within a tier, the score (lower is better):
 *
 *       score = load + 0.05 * creating
 *
 *   load is the host's own 0..1 measure; each create in flight adds 0.05,
 *   about one sandbox's share of a host of twenty: it is about to become a
 *   sandbox and costs CPU now (a restore), and since the view lags the
 *   reservations it steers a burst away from a host already starting VMs.
 *   Ties go to the local host (no forwarding), then by name.
 * - Best of k: when a tier has more than k hosts, k of them are sampled
 *   (seeded) and the best of the sample goes first; the other hosts follow
 *   in score order. Hosts placing creates at the same moment from the same
 *   stale view then do not all pick the one least loaded host, and every
 *   fitting host is still listed once, for a caller that falls through when
 *   a host refuses.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "place.h"

#define DEFAULT_K 3
#define DEFAULT_MAX_CREATING 4
/* What one create in flight adds to a host's score (see above). */
#define CREATING_WEIGHT 0.05

struct rank_ctx {
	const struct place_host *hosts;
	const char *local;
};

static const char *const tier_names[] = {
	[PLACE_WARM] = "warm",
	[PLACE_ARTIFACTS] = "artifacts",
	[PLACE_FITS] = "fits",
};

const char *place_tier_name(enum place_tier t)
{
	return (unsigned)t <= PLACE_FITS ? tier_names[t] : "unknown";
}

/* splitmix64 (Steele, Lea, Flood 2014): small, seedable, good enough to sample. */
static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static bool host_fits(const struct place_host *h, unsigned max_creating)
{
	return h->alive && h->accepting && h->sandboxes < h->max_sandboxes && h->creating <= max_creating;
}

static enum place_tier host_tier(const struct place_host *h)
{
	if (h->warm > 0)
		return PLACE_WARM;
	return h->artifacts ? PLACE_ARTIFACTS : PLACE_FITS;
}

static double host_score(const struct place_host *h)
{
	/* a load that is not a number ranks as fully busy; below 0 as idle */
	double load = isnan(h->load) ? 1.0 : h->load < 0 ? 0.0 : h->load;

	return load + CREATING_WEIGHT * h->creating;
}

static bool is_local(const struct rank_ctx *c, size_t i)
{
	return c->local && c->hosts[i].name && strcmp(c->hosts[i].name, c->local) == 0;
}

/* tier, score, the local host, name, then index: a total order, so the ranking is reproducible */
static int choice_cmp(const void *pa, const void *pb, void *pc)
{
	const struct place_choice *a = pa, *b = pb;
	const struct rank_ctx *c = pc;
	const char *na, *nb;
	bool la, lb;
	int r;

	if (a->tier != b->tier)
		return a->tier < b->tier ? -1 : 1;
	if (a->score != b->score)
		return a->score < b->score ? -1 : 1;
	la = is_local(c, a->host);
	lb = is_local(c, b->host);
	if (la != lb)
		return la ? -1 : 1;
	na = c->hosts[a->host].name ? c->hosts[a->host].name : "";
	nb = c->hosts[b->host].name ? c->hosts[b->host].name : "";
	r = strcmp(na, nb);
	if (r)
		return r;
	return a->host < b->host ? -1 : a->host > b->host;
}

/*
 * The position of the best of k hosts sampled uniformly from a sorted tier
 * of m > k: the smallest position of a random k-subset. Selection sampling
 * (Knuth, TAOCP 3.4.2, algorithm S) visits positions in order and takes
 * position t with probability (k - taken) / (m - t); the first one it takes
 * is the best of the sample, and the rest of the sample cannot beat it, so
 * the walk stops there.
 */
static size_t best_of_sample(size_t m, size_t k, uint64_t *rng)
{
	for (size_t t = 0; t < m; t++)
		if (splitmix64(rng) % (m - t) < k)
			return t;
	return 0; /* not reached: at t = m - k the probability is 1 */
}

/* Moves the best of a k-sample of tier [0, m) of the sorted out to its front. */
static void tier_sample(struct place_choice *tier, size_t m, size_t k, uint64_t *rng)
{
	size_t p;
	struct place_choice best;

	if (m <= k)
		return; /* the sample is the whole tier: its best is already first */
	p = best_of_sample(m, k, rng);
	if (p == 0)
		return;
	best = tier[p];
	memmove(tier + 1, tier, p * sizeof(*tier));
	tier[0] = best;
}

size_t place_rank(const struct place_host *hosts, size_t n, const struct place_req *req, struct place_choice *out)
{
	const struct place_req none = { 0 };
	struct rank_ctx ctx = { .hosts = hosts };
	unsigned max_creating;
	size_t k, count = 0;
	uint64_t rng;

	if (!hosts || !out)
		return 0;
	if (!req)
		req = &none;
	ctx.local = req->local;
	max_creating = req->max_creating ? req->max_creating : DEFAULT_MAX_CREATING;
	k = req->k ? req->k : DEFAULT_K;
	rng = req->seed;

	for (size_t i = 0; i < n; i++) {
		if (!host_fits(&hosts[i], max_creating))
			continue;
		out[count++] = (struct place_choice){
			.host = i,
			.tier = host_tier(&hosts[i]),
			.score = host_score(&hosts[i]),
		};
	}
	qsort_r(out, count, sizeof(*out), choice_cmp, &ctx);

	for (size_t start = 0, end; start < count; start = end) {
		for (end = start + 1; end < count && out[end].tier == out[start].tier; end++)
			;
		tier_sample(out + start, end - start, k, &rng);
	}
	return count;
}
