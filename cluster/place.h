/*
 * Placement (docs/cluster.md, "Placement"): a pure function from the
 * cluster's view and a request to ranked candidate hosts. No I/O, no
 * clock, no globals: unit-tested like the capacity controller.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct place_host {
	const char *name;
	bool alive;	     /* its lease holds */
	bool accepting;	     /* it takes creates (connected to etcd, not draining) */
	unsigned warm;	     /* warm slots of exactly the request's identity */
	bool artifacts;	     /* it holds the template's snapshot for the request's identity */
	unsigned sandboxes;  /* running sandboxes */
	unsigned max_sandboxes; /* its limit (0: it takes none) */
	unsigned creating;   /* creates in flight on it */
	double load;	     /* 0..1: its own measure of how busy it is (sandboxes/max, cpu) */
};

struct place_req {
	const char *local;   /* the host placing the create: preferred on ties */
	unsigned k;	     /* best of k sampled candidates per tier when a tier has more (0: 3) */
	uint64_t seed;	     /* for the sampling; the same inputs give the same ranking */
	unsigned max_creating; /* skip a host with more creates in flight (0: 4) */
};

enum place_tier { PLACE_WARM = 0, PLACE_ARTIFACTS = 1, PLACE_FITS = 2 };

struct place_choice {
	size_t host;	     /* index into the hosts given */
	enum place_tier tier;
	double score;	     /* lower is better within a tier */
};

/*
 * Ranks the hosts that can take the create: every host with a warm slot of
 * the identity first, then hosts with the artifacts, then any that fits
 * (alive, accepting, sandboxes < max_sandboxes, creating <= max_creating);
 * within a tier by score (load, then creates in flight), the local host
 * first on a tie, then by name. When a tier has more than k hosts, the best
 * of k sampled (seeded) come first, then the rest in score order, so every
 * fitting host is still listed (a caller falls through on refusal).
 * Writes at most n choices; returns how many (0: no host fits).
 */
size_t place_rank(const struct place_host *hosts, size_t n, const struct place_req *req, struct place_choice *out);
/* "warm" | "artifacts" | "fits" */
const char *place_tier_name(enum place_tier t);
