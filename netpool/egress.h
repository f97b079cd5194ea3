/*
 * egress: a sandbox's outbound policy (docs/interface.md, "Egress policy").
 *
 * The pure part, unit-tested (tests/unit/test_egress.c): the text form
 * parsed and rendered back normalized, the nftables script that applies a
 * policy in one transaction, and the match of a looked-up host name against
 * the rules that name hosts. No I/O here; netpool.c runs the scripts.
 *
 * Text form, one item per line, '#' starts a comment, blank lines ignored:
 *
 *   default allow|deny          (at most once; allow when absent)
 *   allow|deny TARGET [tcp|udp] [port N | port N-M | ports N,M-O,...]
 *
 * TARGET: an IPv4 address or CIDR (normalized to network/prefix), `any`, or a
 * host name (RFC 1123 labels, lowercased; `*.NAME` matches every name under
 * NAME, not NAME itself). The first rule that matches a new connection wins;
 * none: the default.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EGRESS_RULES_MAX 256 /* rules in one policy */
#define EGRESS_NAMES_MAX 64  /* rules naming a host */
#define EGRESS_LINE_MAX 512  /* bytes in one line, newline excluded */
#define EGRESS_PORTS_MAX 16  /* ports or ranges in one rule */
#define EGRESS_TEXT_MAX (EGRESS_RULES_MAX * (EGRESS_LINE_MAX + 1) + 4096)
/* a name rule's addresses stay for the answer's TTL, within these bounds (seconds) */
#define EGRESS_TTL_MIN 30
#define EGRESS_TTL_MAX 86400

/* the nftables table in a network slot's namespace holding the policy */
#define EGRESS_TABLE "emberfs_egress"

enum egress_target { EGRESS_ANY = 0, EGRESS_CIDR, EGRESS_NAME };
enum egress_proto { EGRESS_PROTO_ANY = 0, EGRESS_TCP, EGRESS_UDP };

struct egress_ports {
	uint16_t lo, hi; /* inclusive */
};

struct egress_rule {
	bool allow;
	enum egress_target target;
	uint32_t addr;	 /* EGRESS_CIDR: network, host byte order */
	unsigned prefix; /* EGRESS_CIDR: 0..32 */
	char *name;	 /* EGRESS_NAME: lowercased, no trailing dot, maybe "*.suffix" */
	enum egress_proto proto;
	unsigned n_ports; /* 0: every port */
	struct egress_ports ports[EGRESS_PORTS_MAX]; /* sorted, disjoint, not adjacent */
};

struct egress_policy {
	bool default_allow;
	unsigned n_rules;
	struct egress_rule *rules;
};

/*
 * Parses the text form. 0 and a policy in *ret; -EINVAL (or -ENOMEM) and a
 * reason naming the line ("line 3: ...") in *ret_error (malloc'd; may be NULL).
 */
int egress_parse(const char *text, size_t len, struct egress_policy **ret, char **ret_error);
/* The policy that allows everything (a slot's start). */
struct egress_policy *egress_allow_all(void);
/* The normalized text: parses back to the same policy. NULL: out of memory. */
char *egress_render(const struct egress_policy *p);
struct egress_policy *egress_dup(const struct egress_policy *p);
void egress_free(struct egress_policy *p);
bool egress_equal(const struct egress_policy *a, const struct egress_policy *b);

/*
 * The nftables script that makes (replace: replaces) the table EGRESS_TABLE
 * with this policy for what arrives on interface iif (the guest's tap), in
 * one transaction (a replacement costs the kernel a table deletion, ~10 ms;
 * a slot's first policy, built with it, does not need one):
 * other traffic and established/related connections pass, then the rules in
 * order (a name rule matches set "nI", I its rule's index, filled by the
 * resolver), then the default. Denied: rejected (ICMP admin-prohibited).
 */
char *egress_nft_script(const struct egress_policy *p, const char *iif, bool replace);

/* Does a looked-up name (lowercased, no trailing dot) match a name rule's pattern? */
bool egress_name_matches(const char *pattern, const char *name);

/* An address a name resolved to, to add to the set of rule `rule`. */
struct egress_element {
	unsigned rule;
	uint32_t addr; /* host byte order */
	uint32_t ttl;  /* seconds, as answered; clamped to [EGRESS_TTL_MIN, EGRESS_TTL_MAX] */
};
/* The script adding (or refreshing the timeout of) these elements in one transaction. */
char *egress_nft_elements(const struct egress_element *el, size_t n);
