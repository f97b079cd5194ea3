/*
 * emberfs-e2b's control plane (e2b/control.c: the REST routes) and the pure
 * mappings between E2B's JSON and the mount's files it rests on
 * (e2b/control_map.c, unit-tested in tests/unit/test_e2bmap.c).
 * docs/e2b.md, "Control plane (REST)", is the contract.
 */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The envd version every sandbox reports: the SDK gates features on it
 * (0.3.0 stdin, 0.4.0 default user, 0.5.2 closeStdin, 0.5.7 octet-stream
 * uploads) and kills a sandbox reporting less than 0.1.0.
 */
#define E2B_ENVD_VERSION "0.5.7"
#define E2B_CLIENT_ID "emberfs"

/* Timeouts: E2B's seconds, within what the mount's timeout file takes. */
#define E2B_TIMEOUT_MAX_S 31622400
#define E2B_TIMEOUT_DEFAULT_V2 300 /* NewSandboxV2, ConnectSandboxV2 */
#define E2B_TIMEOUT_DEFAULT_V1 15  /* NewSandbox (POST /sandboxes) */
/* GET /v2/sandboxes paging: E2B's paginationLimit (1..100, default 100). */
#define E2B_LIST_LIMIT_MAX 100

/* E2B's sandbox state of an emberfs state (its status "state"). */
enum e2b_state {
	E2B_STATE_NONE = 0, /* not shown: failed, destroying, unknown (404) */
	E2B_STATE_RUNNING = 1 << 0,
	E2B_STATE_PAUSED = 1 << 1,
};
enum e2b_state e2b_state_of(const char *emberfs_state);
const char *e2b_state_name(enum e2b_state st);
/* A list's state filter: "running", "paused", "running,paused" (commas, repeats allowed). 0 or -EINVAL. */
int e2b_state_filter_parse(const char *q, unsigned *ret_mask);

/* RFC 3339, UTC, milliseconds: "2026-12-02T11:40:22.123Z" (size >= 32). */
void e2b_time_format(int64_t unix_ms, char *buf, size_t size);
/* RFC 3339 with Z or a +-HH:MM offset, optional fraction: 0 or -EINVAL. */
int e2b_time_parse(const char *s, int64_t *ret_unix_ms);

/*
 * The list's metadata filter, as the HTTP layer decoded the query argument:
 * "k=v&k2=v2" with each key and value URL-encoded once more (the SDKs encode
 * them before building the form string). An object of strings in *ret, or
 * -EINVAL (a pair without '=', an empty key, a bad %XX, a key twice).
 */
int e2b_metadata_filter_parse(const char *q, json_object **ret);
/* Every pair of filter is in metadata (NULL metadata: none). */
bool e2b_metadata_match(json_object *filter, json_object *metadata);

/* The paging cursor: the last sandbox of a page (its start, then its id). */
struct e2b_cursor {
	int64_t started_ms;
	char id[65];
};
int e2b_cursor_parse(const char *token, struct e2b_cursor *ret);
void e2b_cursor_format(const struct e2b_cursor *c, char *buf, size_t size);
/* Order of the list: -1, 0, 1 as started_ms then id compare (a before b when < 0). */
int e2b_cursor_cmp(const struct e2b_cursor *a, const struct e2b_cursor *b);

/*
 * A network config (SandboxNetworkConfig, or SandboxNetworkUpdateConfig's
 * fields) and allow_internet_access (-1: absent, 0, 1) as the mount's
 * egress policy text: "allow X" for each allowOut entry first (E2B: allowed
 * entries take precedence over denied ones), then "deny Y" for each denyOut
 * entry, then "deny 0.0.0.0/0" when internet access is off. *ret_policy is
 * NULL when nothing is asked (the template's default stays); *ret_allows
 * says whether it allows anything (which needs a network). update: the
 * body of PUT /sandboxes/{id}/network (its allow_internet_access is left
 * to the caller; the create-only fields are unknown there). Fields that
 * cannot be honoured (egressProxy, rules, maskRequestHost,
 * allowPublicTraffic false, httpsPorts) and unknown fields are named in
 * *ret_why with -EOPNOTSUPP; malformed ones with -EINVAL.
 */
int e2b_egress_from(json_object *network, int allow_internet, bool update, char **ret_policy, bool *ret_allows,
		    char **ret_why);

/* A parsed create request (POST /v2/sandboxes, POST /sandboxes). */
struct e2b_create {
	const char *tpl;	/* templateID (borrowed from the body) */
	int64_t timeout_s;	/* 1..E2B_TIMEOUT_MAX_S */
	bool auto_pause;	/* at the deadline: hibernate instead of destroy */
	json_object *metadata;	/* borrowed, NULL when absent */
	json_object *env;	/* envVars, borrowed, NULL when absent */
	char *egress;		/* malloc'd policy, NULL when none */
	bool egress_allows;	/* the policy allows something: needs a network */
};
/*
 * Validates a create body against what emberfs implements (v2: NewSandboxV2,
 * else NewSandbox). 0, or -EINVAL (malformed: *ret_why says what) or
 * -EOPNOTSUPP (fields asked that emberfs cannot honour: *ret_why names
 * them). Both are 400s.
 */
int e2b_create_parse(json_object *body, bool v2, struct e2b_create *ret, char **ret_why);
void e2b_create_done(struct e2b_create *c);
/* The settings object mnt_create takes: timeout, metadata, env, egress. */
json_object *e2b_create_settings(const struct e2b_create *c);

/*
 * A SandboxMetric from a sandbox's usage file (docs/interface.md, "usage"):
 * NULL when the guest was never sampled (E2B answers no metrics yet).
 */
json_object *e2b_metric_from_usage(json_object *usage, int vcpus);
