/*
 * Adaptive warm capacity: how many warm slots each identity should keep.
 *
 * capacity_plan() is a pure function of its inputs: no threads, clocks, I/O
 * or globals. The pool measures (create arrivals, prepare time, slot memory),
 * calls it about once a second with the current time, and moves each
 * template's pool target to the result. The model, its parameters and the
 * figures from the trace simulation are in docs/capacity.md.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CAPACITY_MAX_DEPTH 256	  /* per identity, pinned or not */
#define CAPACITY_HISTORY_MAX 2048 /* create arrivals remembered per identity */

/*
 * The arrival times of an identity's creates (warm or not), a ring the pool
 * owns, one per template: capacity_history_push() on every create. When it
 * is full the oldest is dropped, so at very high rates the rate window
 * shrinks to the span the ring holds (still a correct rate).
 */
struct capacity_history {
	uint64_t t_ms[CAPACITY_HISTORY_MAX]; /* monotonic ms, in push order */
	unsigned head;			     /* index of the oldest */
	unsigned count;
};

/* Records a create that arrived at t_ms (monotonic clock, ms). */
void capacity_history_push(struct capacity_history *h, uint64_t t_ms);

/* Host-wide parameters; capacity_params_default() fills every field. */
struct capacity_params {
	uint64_t budget_mib;	     /* memory for warm slots of all identities (0: none at all) */
	unsigned max_slots;	     /* warm slots of all identities (0: none at all) */
	double target_miss;	     /* wanted P(a create finds the pool empty), default 0.01 */
	unsigned parallel;	     /* slots prepared at once across the host (--pool-parallel), default 1 */
	uint32_t rate_window_ms;     /* long window: rate and burst replay, default 300 s */
	uint32_t short_window_ms;    /* short window: the rate follows a rise at once, default 60 s */
	uint32_t idle_decay_ms;	     /* for inputs with idle_decay_ms 0, default 600 s */
	uint32_t default_prepare_ms; /* for inputs with prepare_ms 0 (not measured yet), default 1000 */
	unsigned min_depth;	     /* slots an active identity keeps even with no recent arrivals, default 1 */
};

/* Defaults, with a budget of a quarter of host_mem_mib and at most 64 slots. */
void capacity_params_default(struct capacity_params *p, uint64_t host_mem_mib);

/* One identity (a template's current snapshot) as the pool sees it. */
struct capacity_input {
	const struct capacity_history *history; /* its creates; NULL: none */
	uint32_t prepare_ms;			/* p50 of a slot preparation plus the filler's quiet pause; 0: default */
	uint32_t slot_mib;			/* memory of one warm slot (measured PSS); 0 counts as 1 */
	unsigned warm;				/* warm and preparing slots now: ties favour keeping them */
	bool pinned;				/* a number was written to templates/T/pool (false: "auto") */
	unsigned pinned_depth;			/* that number; beyond CAPACITY_MAX_DEPTH counts as it */
	uint64_t last_demand_ms;		/* last create, or when it became ready; 0: never */
	uint32_t idle_decay_ms;			/* no demand for this long: 0 slots; 0: params default */
};

/* Why an identity got its target (templates/T/stats shows the name). */
enum capacity_reason {
	CAPACITY_IDLE = 0,	 /* no demand within its idle decay time: 0 */
	CAPACITY_DEMAND,	 /* smallest depth whose modelled miss probability meets the target */
	CAPACITY_BURST,		 /* deeper, because replaying recent bursts needed it */
	CAPACITY_SATURATED,	 /* creates outpace refills: the target is out of reach; depth adds little */
	CAPACITY_TOO_DEEP,	 /* the target needs more than CAPACITY_MAX_DEPTH */
	CAPACITY_BUDGET,	 /* cut by the host memory or slot budget */
	CAPACITY_PINNED,	 /* the pinned depth */
	CAPACITY_PINNED_CLAMPED, /* the pinned depth, cut because pins alone exceed the budget */
	_CAPACITY_REASON_MAX,
};
const char *capacity_reason_name(enum capacity_reason r);

struct capacity_output {
	unsigned target;	     /* warm slots to keep */
	unsigned demand;	     /* what demand alone asks for (or the pin) before the budget */
	enum capacity_reason reason;
	double miss;		     /* expected miss probability at target (1 with no slots) */
	double rate;		     /* arrivals per second the model used */
	double prepare_ms;	     /* refill time the model used, with other identities' refills */
};

/*
 * Targets for n identities at time now_ms: out[i] for in[i]. Pins are
 * honoured first; the rest of the budget goes, one slot at a time, to the
 * slot that avoids the most expected misses per second per MiB. The sum of
 * target * slot_mib never exceeds budget_mib, nor the sum of targets
 * max_slots. Returns the total of the targets, or -EINVAL, -ENOMEM.
 */
int capacity_plan(const struct capacity_params *p, const struct capacity_input *in, size_t n, uint64_t now_ms,
		  struct capacity_output *out);
