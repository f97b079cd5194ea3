/*
 * netpool: network slots built ahead of time, so a sandbox gets its network
 * without building anything on the request path.
 *
 * A slot is a named network namespace (/run/netns/ef<tag>-<index>) holding
 *  - tap0, the VMM's tap (persistent, vnet_hdr), 172.16.0.1/30, MAC
 *    NETPOOL_TAP_MAC; the guest is always 172.16.0.2/30 with MAC
 *    NETPOOL_GUEST_MAC, as baked: no guest is ever reconfigured;
 *  - veth0, one end of a veth pair, with the slot's inside address
 *    (range base + 4 * index + 2); the host end ef<tag>h<index> has +1;
 *  - nftables NAT: what arrives on veth0 for the inside address goes to the
 *    guest (DNAT), what the guest sends out leaves as the inside address
 *    (masquerade); what the guest sends to port 53 goes to the daemon's
 *    resolver (a socket on 172.16.0.1:53 in the namespace; resolver.c);
 *  - the egress policy (table EGRESS_TABLE, egress.h): allow-all when built,
 *    replaced in one transaction by netpool_egress_apply.
 * On the host, one table (ip emberfs_<tag>) drops traffic from slots to the
 * host itself and between slots, and masquerades egress (if enabled).
 *
 * The library keeps `depth` slots ready (a filler thread); a claim pops one
 * (or builds one when none is ready); a release destroys the slot in the
 * background (a fresh one never carries another guest's ARP or conntrack
 * state). Every name carries the instance tag, so a restarted daemon finds
 * and removes what an earlier run of the same instance left.
 *
 * Functions return 0 or a negative errno; error text goes to *ret_error.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "egress.h"

struct np_recent;

#define NETPOOL_TAP "tap0"
#define NETPOOL_TAP_MAC "02:ef:00:00:00:01"
#define NETPOOL_GUEST_MAC "02:ef:00:00:00:02"
#define NETPOOL_GUEST_ADDR "172.16.0.2"
#define NETPOOL_GUEST_CIDR "172.16.0.2/30"
#define NETPOOL_GW_ADDR "172.16.0.1"
#define NETPOOL_DEFAULT_RANGE "10.200.0.0/16"

/* ---- the address allocator (pure; unit-tested) ---- */
struct np_alloc {
	uint32_t base;	 /* host byte order, aligned to the range */
	unsigned prefix; /* of the range */
	unsigned n;	 /* number of /30 slots */
	uint64_t *bits;	 /* 1: in use */
	unsigned used;
};
/* "A.B.C.D/P" with 8 <= P <= 30 and the address aligned to P. */
int np_alloc_init(struct np_alloc *a, const char *range, char **ret_error);
void np_alloc_free(struct np_alloc *a);
/* The lowest free index, or -ENOSPC. */
int np_alloc_get(struct np_alloc *a);
/* -EINVAL if not in use. */
int np_alloc_put(struct np_alloc *a, unsigned index);
/* Marks a given index in use (a slot kept from an earlier run); -EINVAL if out of range or in use. */
int np_alloc_take(struct np_alloc *a, unsigned index);
/* Host end (.1) and inside (.2) addresses of a slot, host byte order. */
uint32_t np_alloc_host_addr(const struct np_alloc *a, unsigned index);
uint32_t np_alloc_inside_addr(const struct np_alloc *a, unsigned index);
/* Do [a, a + 2^(32-pa)) and [b, b + 2^(32-pb)) overlap? */
bool np_overlap(uint32_t a, unsigned pa, uint32_t b, unsigned pb);

/* ---- slots and the pool ---- */
struct netslot {
	unsigned index;
	char netns[32];	    /* name under /run/netns */
	char host_if[16];   /* host end of the veth pair */
	char host_addr[16]; /* dotted quad */
	char addr[16];	    /* the guest's host-reachable address (inside end of the veth) */
	int netns_fd;
	int dns_fd; /* the resolver's socket in the namespace; -1: none */
	double build_ms;
	pthread_mutex_t egress_lock;
	struct egress_policy *egress; /* as applied (egress_lock); NULL: unknown (a slot adopted) */
	struct np_recent *recent;     /* egress_lock: addresses names resolved to lately (resolver.c) */
	struct netslot *next;
};

struct netpool_options {
	const char *range;    /* NETPOOL_DEFAULT_RANGE if NULL */
	const char *tag;      /* 4 lowercase hex digits naming this instance */
	unsigned depth;	      /* slots kept ready */
	bool egress;	      /* slots may reach the world through the host's NAT */
	const char *dns;      /* the resolver's upstream "ADDR[:PORT]"; NULL: /etc/resolv.conf's first */
	/*
	 * Slots an earlier run of this instance left in use by sandboxes being
	 * re-adopted: the start-up sweep keeps them, and each must then be
	 * taken with netpool_adopt (or is lost until the next start).
	 */
	const unsigned *keep;
	size_t n_keep;
	/*
	 * What the start-up sweep removed or could not keep, one line each for
	 * the caller to log (the library writes nowhere itself); NULL: not told.
	 */
	void (*note)(void *ctx, const char *line);
	void *note_ctx;
};

struct netpool;
int netpool_new(const struct netpool_options *o, struct netpool **ret, char **ret_error);
/* Destroys every slot (in use or not: their VMMs must be gone) and the host table. */
void netpool_free(struct netpool *p);
/* A ready slot, or one built now (*ret_built true) if none is ready. */
int netpool_claim(struct netpool *p, struct netslot **ret, bool *ret_built, char **ret_error);
/*
 * A slot kept from an earlier run (options.keep), claimed as if built now:
 * its namespace is opened again. -ENOENT if it is gone, -EINVAL if the
 * index was not kept. Release it like any other.
 */
int netpool_adopt(struct netpool *p, unsigned index, struct netslot **ret, char **ret_error);
/* Gives a claimed slot back: destroyed in the background. NULL is a no-op. */
void netpool_release(struct netpool *p, struct netslot *s);
/*
 * Replaces the slot's egress policy, in one nft transaction: new connections
 * from the guest follow it once this returns; established ones go on. Costs
 * nothing when the slot has that policy already.
 */
int netpool_egress_apply(struct netpool *p, struct netslot *s, const struct egress_policy *pol, char **ret_error);
/* Moves the calling thread into the slot's namespace; *saved restores it with netpool_leave. */
int netpool_enter(const struct netslot *s, int *saved);
void netpool_leave(int saved);
/* Counts and timings as a JSON object text (malloc'd). */
char *netpool_status_json(struct netpool *p);
/* Build and destroy without the pool (benchmarks, tests). */
int netpool_build(struct netpool *p, struct netslot **ret, char **ret_error);
void netpool_destroy(struct netpool *p, struct netslot *s);
