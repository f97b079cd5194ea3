/*
 * Adaptive warm capacity: the controller behind the warm pool's target depth.
 *
 * A pure function: everything it knows comes in through its arguments. See
 * docs/capacity.md for the model; in short, per identity:
 *
 * - Refill is a single server: the pool prepares one slot of a template at a
 *   time, taking P (the measured claim-to-warm time, stretched by the share
 *   of the host's prepare capacity other identities' refills use). A create
 *   that finds no warm slot is served by a restore and takes no slot (a lost
 *   sale). With Poisson arrivals at rate lambda and depth K, the number of
 *   slots owed is then an M/D/1/K queue, and the miss probability is its
 *   blocking probability, computed exactly (level crossing, no cancellation).
 * - Burstiness the Poisson model does not see is taken from the recorded
 *   arrivals themselves: they are replayed against a pool of depth K with the
 *   same refill, and the fraction of misses must meet the target as well.
 * - The depth is the smallest K meeting both, then the budget is shared by
 *   expected misses avoided per second per MiB, one slot at a time.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "capacity.h"

#define DEFAULT_TARGET_MISS 0.01
#define DEFAULT_RATE_WINDOW_MS 300000
#define DEFAULT_SHORT_WINDOW_MS 60000
#define DEFAULT_IDLE_DECAY_MS 600000
#define DEFAULT_PREPARE_MS 1000
#define DEFAULT_MAX_SLOTS 64
/* Refills of other identities take at most this share of a prepare server. */
#define MAX_OTHERS_SHARE 0.9
/* Beyond this load the pool serves at most 1/RHO_MAX of creates: no model needed. */
#define RHO_MAX 64.0
/* Poisson terms kept: enough for RHO_MAX and CAPACITY_MAX_DEPTH with a negligible tail. */
#define PMF_MAX 512
/* The unnormalised queue probabilities are rescaled beyond this. */
#define SCALE_LIMIT 1e150

static const char *const reason_names[_CAPACITY_REASON_MAX] = {
	[CAPACITY_IDLE] = "idle",	    [CAPACITY_DEMAND] = "demand",
	[CAPACITY_BURST] = "burst",	    [CAPACITY_SATURATED] = "saturated",
	[CAPACITY_TOO_DEEP] = "too_deep", [CAPACITY_BUDGET] = "budget",
	[CAPACITY_PINNED] = "pinned",	    [CAPACITY_PINNED_CLAMPED] = "pinned_clamped",
};

const char *capacity_reason_name(enum capacity_reason r)
{
	return (unsigned)r < _CAPACITY_REASON_MAX ? reason_names[r] : "unknown";
}

void capacity_history_push(struct capacity_history *h, uint64_t t_ms)
{
	if (h->count < CAPACITY_HISTORY_MAX) {
		h->t_ms[(h->head + h->count) % CAPACITY_HISTORY_MAX] = t_ms;
		h->count++;
		return;
	}
	h->t_ms[h->head] = t_ms;
	h->head = (h->head + 1) % CAPACITY_HISTORY_MAX;
}

void capacity_params_default(struct capacity_params *p, uint64_t host_mem_mib)
{
	*p = (struct capacity_params){
		.budget_mib = host_mem_mib / 4,
		.max_slots = DEFAULT_MAX_SLOTS,
		.target_miss = DEFAULT_TARGET_MISS,
		.parallel = 1,
		.rate_window_ms = DEFAULT_RATE_WINDOW_MS,
		.short_window_ms = DEFAULT_SHORT_WINDOW_MS,
		.idle_decay_ms = DEFAULT_IDLE_DECAY_MS,
		.default_prepare_ms = DEFAULT_PREPARE_MS,
		.min_depth = 1,
	};
}

/* e^-x for 0 <= x <= RHO_MAX without libm: a short series on x/2^k, squared k times. */
static double exp_neg(double x)
{
	unsigned halvings = 0;
	double sum = 1, term = 1;

	while (x > 0.5) {
		x /= 2;
		halvings++;
	}
	for (unsigned i = 1; i <= 20; i++) {
		term *= -x / i;
		sum += term;
	}
	while (halvings--)
		sum *= sum;
	return sum;
}

/* Per identity, while planning. */
struct plan {
	bool active, pinned, blocked;
	double rate;   /* per second */
	double prep_s; /* own prepare time */
	double eff_s;  /* with the other identities' refills */
	unsigned mib;
	unsigned demand, alloc;
	enum capacity_reason reason;
	double *miss; /* [0..demand]: modelled miss probability at each depth */
	struct mdk *mdk; /* scratch while planning */
};

/* The ring in push order, i-th oldest. */
static uint64_t hist_at(const struct capacity_history *h, unsigned i)
{
	return h->t_ms[(h->head + i) % CAPACITY_HISTORY_MAX];
}

/* Index of the first arrival inside (now - window, now]; arrivals after now count too. */
static unsigned hist_since(const struct capacity_history *h, uint64_t now_ms, uint32_t window_ms)
{
	uint64_t from = now_ms > window_ms ? now_ms - window_ms : 0;
	unsigned lo = 0, hi = h->count;

	/* push order is time order; a clock step back only blurs the edge */
	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;

		if (hist_at(h, mid) <= from && from > 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Arrivals per second over the window, or over the span the ring holds if it is full. */
static double window_rate(const struct capacity_history *h, uint64_t now_ms, uint32_t window_ms)
{
	unsigned first = hist_since(h, now_ms, window_ms);
	unsigned n = h->count - first;
	double span_ms = window_ms;

	if (n == 0)
		return 0;
	if (first == 0 && h->count == CAPACITY_HISTORY_MAX && now_ms > hist_at(h, 0) &&
	    now_ms - hist_at(h, 0) < window_ms)
		span_ms = (double)(now_ms - hist_at(h, 0));
	if (span_ms < 1)
		span_ms = 1;
	return n * 1000.0 / span_ms;
}

/*
 * Replays the arrivals from index first against a pool of depth k that starts
 * full and refills one slot at a time, each taking prep_ms. Returns the misses.
 */
static unsigned replay_misses(const struct capacity_history *h, unsigned first, unsigned k, double prep_ms)
{
	unsigned warm = k, owed = 0, misses = 0;
	double done = 0, last = 0; /* when the slot being prepared is warm */

	for (unsigned i = first; i < h->count; i++) {
		double t = (double)hist_at(h, i);

		if (t < last)
			t = last;
		last = t;
		while (owed > 0 && done <= t) {
			warm++;
			owed--;
			done += prep_ms;
		}
		if (warm == 0) {
			misses++;
			continue;
		}
		warm--;
		if (owed++ == 0)
			done = t + prep_ms;
	}
	return misses;
}

/*
 * The M/D/1/K blocking probability, K = 0, 1, .. as far as asked, with load
 * rho (arrivals per prepare time). Departure-epoch probabilities pi_j of the
 * embedded chain follow from level crossing,
 *	pi_{j+1} a_0 = pi_0 A_j + sum_{i=1..j} pi_i A_{j-i+1},
 * a_j the Poisson(rho) probabilities and A_j = P(more than j arrivals), all
 * terms positive, so no cancellation. With S_K = pi_0 + .. + pi_{K-1}, a
 * create finds K slots owed (none warm) with probability
 * 1 - S_K / (pi_0 + rho S_K); K = 1 gives rho / (1 + rho), Erlang's loss.
 */
struct mdk {
	double rho, a0, s;
	unsigned k; /* miss[0..k] are computed */
	double *miss;
	double tail[PMF_MAX + 1];
	double pi[CAPACITY_MAX_DEPTH + 1];
};

static void mdk_init(struct mdk *m, double rho, double *miss)
{
	double a = exp_neg(rho), mass = 0, pmf[PMF_MAX + 1];

	m->rho = rho;
	m->a0 = a;
	for (unsigned j = 0; j <= PMF_MAX; j++) {
		pmf[j] = a;
		a = a * rho / (j + 1);
	}
	for (unsigned j = PMF_MAX + 1; j-- > 0;) {
		m->tail[j] = mass; /* P(A > j); the mass beyond PMF_MAX is negligible */
		mass += pmf[j];
	}
	m->s = 0;
	m->k = 0;
	m->miss = miss;
	miss[0] = 1;
	m->pi[0] = 1;
}

/* Computes miss[] up to kmax. */
static void mdk_extend(struct mdk *m, unsigned kmax)
{
	double *pi = m->pi;

	for (; m->k < kmax && m->k < CAPACITY_MAX_DEPTH; m->k++) {
		unsigned j = m->k; /* pi_j is the new term of S_{j+1} */

		if (j > 0) {
			double up = pi[0] * m->tail[j - 1];

			for (unsigned i = 1; i < j; i++)
				up += pi[i] * m->tail[j - i];
			pi[j] = up / m->a0;
		}
		m->s += pi[j];
		if (m->s > SCALE_LIMIT) {
			for (unsigned i = 0; i <= j; i++)
				pi[i] /= SCALE_LIMIT;
			m->s /= SCALE_LIMIT;
		}
		m->miss[j + 1] = 1 - m->s / (pi[0] + m->rho * m->s);
		if (m->miss[j + 1] < 0)
			m->miss[j + 1] = 0;
	}
}

/* miss[k], computing it if need be. */
static double mdk_at(struct mdk *m, unsigned k)
{
	mdk_extend(m, k);
	return m->miss[k];
}

static bool is_active(const struct capacity_params *p, const struct capacity_input *in, uint64_t now_ms)
{
	uint64_t last = in->last_demand_ms;
	uint32_t decay = in->idle_decay_ms ? in->idle_decay_ms : p->idle_decay_ms;
	const struct capacity_history *h = in->history;

	if (h && h->count > 0 && hist_at(h, h->count - 1) > last)
		last = hist_at(h, h->count - 1);
	if (last == 0)
		return false;
	return last >= now_ms || now_ms - last <= decay;
}

/* Rate, prepare time and whether the identity is active: what the others' load needs. */
static void plan_measure(const struct capacity_params *p, const struct capacity_input *in, uint64_t now_ms,
			 struct plan *pl)
{
	const struct capacity_history *h = in->history;

	pl->mib = in->slot_mib ? in->slot_mib : 1;
	pl->pinned = in->pinned;
	pl->prep_s = (in->prepare_ms ? in->prepare_ms : p->default_prepare_ms) / 1000.0;
	pl->active = is_active(p, in, now_ms);
	if (pl->active && h && h->count > 0) {
		double lr = window_rate(h, now_ms, p->rate_window_ms);
		double sr = window_rate(h, now_ms, p->short_window_ms);

		pl->rate = lr > sr ? lr : sr;
	}
}

/* Busy time of the prepare servers an identity's refills take, per second. */
static double plan_load(const struct plan *pl, const struct capacity_input *in)
{
	if (pl->pinned && in->pinned_depth == 0)
		return 0; /* no slots, nothing to refill */
	return pl->rate * pl->prep_s;
}

/*
 * The demand depth and the miss table up to it (and up to the pin, for the
 * estimate reported at a pinned depth).
 */
static void plan_demand(const struct capacity_params *p, const struct capacity_input *in, uint64_t now_ms,
			double others, struct plan *pl)
{
	const struct capacity_history *h = in->history;
	unsigned first = h ? hist_since(h, now_ms, p->rate_window_ms) : 0;
	unsigned n = h ? h->count - first : 0;
	unsigned pin = pl->pinned ? in->pinned_depth : 0;
	double rho, target = p->target_miss;
	unsigned k, model_k = 0;
	struct mdk *m;

	if (pin > CAPACITY_MAX_DEPTH)
		pin = CAPACITY_MAX_DEPTH;
	pl->eff_s = pl->prep_s / (1 - (others < MAX_OTHERS_SHARE ? others : MAX_OTHERS_SHARE));
	rho = pl->rate * pl->eff_s;
	if (rho >= RHO_MAX) {
		/* the pool can serve almost nothing; computing it would be noise */
		for (k = 0; k <= CAPACITY_MAX_DEPTH; k++)
			pl->miss[k] = k ? 1 - 1 / RHO_MAX : 1;
		pl->demand = p->min_depth;
		pl->reason = CAPACITY_SATURATED;
		goto pin;
	}
	m = pl->mdk;
	mdk_init(m, rho, pl->miss);
	pl->reason = CAPACITY_DEMAND;
	if (rho >= 1) {
		/* at best 1 - 1/rho of creates miss: ask for depth only while it helps by the target */
		target += 1 - 1 / rho;
		pl->reason = CAPACITY_SATURATED;
	}
	if (!pl->active) {
		pl->demand = 0;
		pl->reason = CAPACITY_IDLE;
		goto pin;
	}
	while (model_k < CAPACITY_MAX_DEPTH && mdk_at(m, model_k) > target)
		model_k++;
	k = model_k > p->min_depth ? model_k : p->min_depth;
	/*
	 * Replay only below saturation: above it a deeper pool only postpones
	 * the drain. A depth the replay rejects is worth what the replay says.
	 */
	while (rho < 1 && n > 0 && k < CAPACITY_MAX_DEPTH) {
		double r = (double)replay_misses(h, first, k, pl->eff_s * 1000) / n;

		if (r <= target)
			break;
		mdk_extend(m, k);
		if (r > pl->miss[k])
			pl->miss[k] = r;
		k++;
		pl->reason = CAPACITY_BURST;
	}
	if (k == CAPACITY_MAX_DEPTH && mdk_at(m, k) > target)
		pl->reason = CAPACITY_TOO_DEEP;
	mdk_extend(m, k);
	pl->demand = k;
pin:
	if (pl->pinned) {
		if (rho < RHO_MAX)
			mdk_extend(pl->mdk, pin);
		pl->demand = pin;
		pl->reason = CAPACITY_PINNED;
	}
}

/* Pins first, level by level across identities, so a clamp shares the budget among them. */
static void allocate_pins(struct plan *pl, size_t n, uint64_t *mib_left, unsigned *slots_left)
{
	for (unsigned level = 1; level <= CAPACITY_MAX_DEPTH; level++) {
		bool any = false;

		for (size_t i = 0; i < n; i++) {
			if (!pl[i].pinned || pl[i].demand < level || pl[i].blocked)
				continue;
			any = true;
			if (*slots_left == 0 || *mib_left < pl[i].mib) {
				pl[i].blocked = true;
				pl[i].reason = CAPACITY_PINNED_CLAMPED;
				continue;
			}
			pl[i].alloc++;
			*slots_left -= 1;
			*mib_left -= pl[i].mib;
		}
		if (!any)
			break;
	}
}

/* Expected misses avoided per second per MiB by the next slot of pl. */
static double next_gain(const struct plan *pl)
{
	return pl->rate * (pl->miss[pl->alloc] - pl->miss[pl->alloc + 1]) / pl->mib;
}

/*
 * The rest of the budget, one slot at a time, to the slot with the largest
 * gain; ties go to a slot that is already warm, then to the earlier identity.
 */
static void allocate_auto(struct plan *pl, const struct capacity_input *in, size_t n, uint64_t *mib_left,
			  unsigned *slots_left)
{
	for (;;) {
		size_t best = n;
		double best_gain = 0;
		bool best_warm = false;

		for (size_t i = 0; i < n; i++) {
			double g;
			bool warm;

			if (pl[i].pinned || pl[i].blocked || pl[i].alloc >= pl[i].demand)
				continue;
			g = next_gain(&pl[i]);
			warm = pl[i].alloc < in[i].warm;
			if (best == n || g > best_gain || (g == best_gain && warm && !best_warm)) {
				best = i;
				best_gain = g;
				best_warm = warm;
			}
		}
		if (best == n)
			return;
		if (*slots_left == 0 || *mib_left < pl[best].mib) {
			/* this one does not fit; a smaller slot of another still may */
			pl[best].blocked = true;
			pl[best].reason = CAPACITY_BUDGET;
			continue;
		}
		pl[best].alloc++;
		*slots_left -= 1;
		*mib_left -= pl[best].mib;
	}
}

int capacity_plan(const struct capacity_params *p, const struct capacity_input *in, size_t n, uint64_t now_ms,
		  struct capacity_output *out)
{
	struct capacity_params par;
	struct plan *pl;
	struct mdk *mdk;
	double *tables, load = 0;
	uint64_t mib_left;
	unsigned slots_left;
	int total = 0;

	if (!p || (n > 0 && (!in || !out)))
		return -EINVAL;
	if (n == 0)
		return 0;
	if (n > SIZE_MAX / (sizeof(*pl) + (CAPACITY_MAX_DEPTH + 1) * sizeof(double)))
		return -ENOMEM;
	par = *p;
	if (!(par.target_miss > 0 && par.target_miss < 1)) /* NaN too */
		par.target_miss = DEFAULT_TARGET_MISS;
	if (!par.parallel)
		par.parallel = 1;
	if (!par.rate_window_ms)
		par.rate_window_ms = DEFAULT_RATE_WINDOW_MS;
	if (!par.short_window_ms)
		par.short_window_ms = DEFAULT_SHORT_WINDOW_MS;
	if (!par.idle_decay_ms)
		par.idle_decay_ms = DEFAULT_IDLE_DECAY_MS;
	if (!par.default_prepare_ms)
		par.default_prepare_ms = DEFAULT_PREPARE_MS;
	if (par.min_depth > CAPACITY_MAX_DEPTH)
		par.min_depth = CAPACITY_MAX_DEPTH;

	pl = calloc(n, sizeof(*pl));
	tables = calloc(n * (CAPACITY_MAX_DEPTH + 1), sizeof(double));
	mdk = malloc(sizeof(*mdk));
	if (!pl || !tables || !mdk) {
		free(pl);
		free(tables);
		free(mdk);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		pl[i].miss = tables + i * (CAPACITY_MAX_DEPTH + 1);
		pl[i].mdk = mdk;
		plan_measure(&par, &in[i], now_ms, &pl[i]);
		load += plan_load(&pl[i], &in[i]);
	}
	for (size_t i = 0; i < n; i++) {
		/* the host's prepare servers are shared: others' refills delay ours */
		double others = (load - plan_load(&pl[i], &in[i])) / par.parallel;

		plan_demand(&par, &in[i], now_ms, others, &pl[i]);
	}

	mib_left = par.budget_mib;
	slots_left = par.max_slots;
	allocate_pins(pl, n, &mib_left, &slots_left);
	allocate_auto(pl, in, n, &mib_left, &slots_left);

	for (size_t i = 0; i < n; i++) {
		out[i] = (struct capacity_output){
			.target = pl[i].alloc,
			.demand = pl[i].demand,
			.reason = pl[i].reason,
			.miss = pl[i].miss[pl[i].alloc],
			.rate = pl[i].rate,
			.prepare_ms = pl[i].eff_s * 1000,
		};
		if (pl[i].rate == 0 && pl[i].alloc > 0)
			out[i].miss = 0; /* no creates expected: none will miss */
		total += pl[i].alloc;
	}
	free(pl);
	free(tables);
	free(mdk);
	return total;
}
