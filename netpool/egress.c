/*
 * egress: the policy's text form, its normalized rendering, and the
 * nftables scripts that apply it (see egress.h). Pure: no I/O.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "egress.h"

/* A growing string; a failed append leaves ok false. */
struct sbuf {
	char *s;
	size_t len, cap;
	bool ok;
};

static void sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!b->ok)
		return;
	for (;;) {
		size_t room = b->cap - b->len;

		va_start(ap, fmt);
		n = vsnprintf(b->s ? b->s + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->ok = false;
			return;
		}
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap ? b->cap * 2 : 256;
		char *s;

		while (cap - b->len <= (size_t)n)
			cap *= 2;
		if (!(s = realloc(b->s, cap))) {
			b->ok = false;
			return;
		}
		b->s = s;
		b->cap = cap;
	}
}

static char *sb_take(struct sbuf *b)
{
	if (!b->ok || !b->s) {
		free(b->s);
		return b->ok ? strdup("") : NULL;
	}
	return b->s;
}

void egress_free(struct egress_policy *p)
{
	if (!p)
		return;
	for (unsigned i = 0; i < p->n_rules; i++)
		free(p->rules[i].name);
	free(p->rules);
	free(p);
}

struct egress_policy *egress_allow_all(void)
{
	struct egress_policy *p = calloc(1, sizeof(*p));

	if (p)
		p->default_allow = true;
	return p;
}

struct egress_policy *egress_dup(const struct egress_policy *p)
{
	struct egress_policy *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->default_allow = p->default_allow;
	if (p->n_rules && !(d->rules = calloc(p->n_rules, sizeof(*d->rules)))) {
		free(d);
		return NULL;
	}
	for (unsigned i = 0; i < p->n_rules; i++) {
		d->rules[i] = p->rules[i];
		d->rules[i].name = NULL;
		d->n_rules = i + 1;
		if (p->rules[i].name && !(d->rules[i].name = strdup(p->rules[i].name))) {
			egress_free(d);
			return NULL;
		}
	}
	return d;
}

bool egress_equal(const struct egress_policy *a, const struct egress_policy *b)
{
	if (a->default_allow != b->default_allow || a->n_rules != b->n_rules)
		return false;
	for (unsigned i = 0; i < a->n_rules; i++) {
		const struct egress_rule *x = &a->rules[i], *y = &b->rules[i];

		if (x->allow != y->allow || x->target != y->target || x->proto != y->proto ||
		    x->n_ports != y->n_ports || memcmp(x->ports, y->ports, x->n_ports * sizeof(x->ports[0])) != 0)
			return false;
		if (x->target == EGRESS_CIDR && (x->addr != y->addr || x->prefix != y->prefix))
			return false;
		if (x->target == EGRESS_NAME && strcmp(x->name, y->name) != 0)
			return false;
	}
	return true;
}

/* ---- parsing ---- */

/* A decimal number in [lo, hi], the whole of s. */
static int parse_uint(const char *s, unsigned long lo, unsigned long hi, unsigned long *ret)
{
	unsigned long v = 0;

	if (!*s || strlen(s) > 10)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	if (v < lo || v > hi)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* "A.B.C.D" or "A.B.C.D/P": the network (host bits cleared) and prefix. */
static int parse_cidr(const char *s, uint32_t *ret_addr, unsigned *ret_prefix)
{
	char a[32];
	const char *slash = strchr(s, '/');
	unsigned long prefix = 32;
	struct in_addr in;
	size_t l = slash ? (size_t)(slash - s) : strlen(s);

	if (l == 0 || l >= sizeof(a))
		return -EINVAL;
	memcpy(a, s, l);
	a[l] = '\0';
	if (inet_pton(AF_INET, a, &in) != 1)
		return -EINVAL;
	if (slash && parse_uint(slash + 1, 0, 32, &prefix) < 0)
		return -EINVAL;
	*ret_prefix = (unsigned)prefix;
	*ret_addr = prefix ? ntohl(in.s_addr) & (~0u << (32 - prefix)) : 0;
	return 0;
}

/* Does s look like an address (digits, dots, a slash), so that it is not taken for a name? */
static bool looks_numeric(const char *s)
{
	return strspn(s, "0123456789./") == strlen(s);
}

/* RFC 1123 host name, optional "*." in front; lowercased in place. */
static int check_name(char *s, const char **ret_why)
{
	char *p = s, *label;
	size_t total;
	bool last_numeric = false;

	for (char *c = s; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	if (strncmp(p, "*.", 2) == 0)
		p += 2;
	total = strlen(p);
	if (total && p[total - 1] == '.')
		p[--total] = '\0'; /* a fully qualified name's root */
	if (total == 0 || total > 253) {
		*ret_why = "a host name has 1 to 253 characters";
		return -EINVAL;
	}
	for (label = p; label; ) {
		char *dot = strchr(label, '.');
		size_t l = dot ? (size_t)(dot - label) : strlen(label);

		if (l == 0 || l > 63) {
			*ret_why = "each label of a host name has 1 to 63 characters";
			return -EINVAL;
		}
		if (label[0] == '-' || label[l - 1] == '-') {
			*ret_why = "a label of a host name neither starts nor ends with '-'";
			return -EINVAL;
		}
		last_numeric = true;
		for (size_t i = 0; i < l; i++) {
			if (!isalnum((unsigned char)label[i]) && label[i] != '-') {
				*ret_why = "a host name has only letters, digits, '-' and '.' (and may start with \"*.\")";
				return -EINVAL;
			}
			if (!isdigit((unsigned char)label[i]))
				last_numeric = false;
		}
		label = dot ? dot + 1 : NULL;
	}
	if (last_numeric) {
		*ret_why = "the last label of a host name is not all digits";
		return -EINVAL;
	}
	return 0;
}

static int cmp_ports(const void *a, const void *b)
{
	const struct egress_ports *x = a, *y = b;

	return x->lo != y->lo ? (x->lo < y->lo ? -1 : 1) : (x->hi < y->hi ? -1 : x->hi > y->hi);
}

/* "N", "N-M", or with many: "N,M-O,...": sorted, overlapping and adjacent ranges merged. */
static int parse_ports(char *s, bool many, struct egress_rule *r, const char **ret_why)
{
	unsigned n = 0;

	for (char *item = s, *next; item; item = next) {
		char *dash;
		unsigned long lo, hi;

		next = strchr(item, ',');
		if (next)
			*next++ = '\0';
		if (next && !many) {
			*ret_why = "a list of ports is written \"ports N,M,...\"";
			return -EINVAL;
		}
		if (n == EGRESS_PORTS_MAX) {
			*ret_why = "at most 16 ports or ranges in one rule";
			return -EINVAL;
		}
		dash = strchr(item, '-');
		if (dash)
			*dash = '\0';
		if (parse_uint(item, 1, 65535, &lo) < 0 || parse_uint(dash ? dash + 1 : item, 1, 65535, &hi) < 0) {
			*ret_why = "a port is a number from 1 to 65535 (a range: N-M)";
			return -EINVAL;
		}
		if (hi < lo) {
			*ret_why = "a port range N-M has N <= M";
			return -EINVAL;
		}
		r->ports[n].lo = (uint16_t)lo;
		r->ports[n].hi = (uint16_t)hi;
		n++;
	}
	qsort(r->ports, n, sizeof(r->ports[0]), cmp_ports);
	r->n_ports = 0;
	for (unsigned i = 0; i < n; i++) {
		struct egress_ports *last = r->n_ports ? &r->ports[r->n_ports - 1] : NULL;

		if (last && (unsigned)r->ports[i].lo <= (unsigned)last->hi + 1) {
			if (r->ports[i].hi > last->hi)
				last->hi = r->ports[i].hi;
		} else {
			r->ports[r->n_ports++] = r->ports[i];
		}
	}
	return 0;
}

#define WORDS_MAX 8

/* One rule's words (after allow|deny): TARGET [tcp|udp] [port X | ports X]. */
static int parse_rule(char **w, unsigned n, struct egress_rule *r, const char **ret_why)
{
	unsigned i = 1;

	if (n < 2) {
		*ret_why = "a rule names a target: an IPv4 address or CIDR, a host name, or any";
		return -EINVAL;
	}
	if (strcmp(w[1], "any") == 0) {
		r->target = EGRESS_ANY;
	} else if (looks_numeric(w[1])) {
		r->target = EGRESS_CIDR;
		if (parse_cidr(w[1], &r->addr, &r->prefix) < 0) {
			*ret_why = "bad IPv4 address or CIDR (A.B.C.D or A.B.C.D/0-32)";
			return -EINVAL;
		}
	} else {
		r->target = EGRESS_NAME;
		if (check_name(w[1], ret_why) < 0)
			return -EINVAL;
		if (!(r->name = strdup(w[1])))
			return -ENOMEM;
	}
	i = 2;
	if (i < n && (strcmp(w[i], "tcp") == 0 || strcmp(w[i], "udp") == 0)) {
		r->proto = w[i][0] == 't' ? EGRESS_TCP : EGRESS_UDP;
		i++;
	}
	if (i < n && (strcmp(w[i], "port") == 0 || strcmp(w[i], "ports") == 0)) {
		if (i + 1 >= n) {
			*ret_why = "\"port\" is followed by a port or a range";
			return -EINVAL;
		}
		if (parse_ports(w[i + 1], w[i][4] == 's', r, ret_why) < 0)
			return -EINVAL;
		i += 2;
	}
	if (i < n) {
		*ret_why = "unexpected word after the target (expected: [tcp|udp] [port N|port N-M|ports N,M,...])";
		return -EINVAL;
	}
	return 0;
}

/* Splits a line into words; the line is modified. -E2BIG: too many. */
static int split(char *line, char **w)
{
	unsigned n = 0;

	for (char *t = strtok(line, " \t\r"); t; t = strtok(NULL, " \t\r")) {
		if (n == WORDS_MAX)
			return -E2BIG;
		w[n++] = t;
	}
	return (int)n;
}

static int parse_line(struct egress_policy *p, char *line, unsigned lineno, bool *seen_default, unsigned *n_names,
		      char **ret_error)
{
	char *w[WORDS_MAX], *hash = strchr(line, '#');
	const char *why = NULL;
	struct egress_rule r = { 0 };
	int n, k;

	if (hash)
		*hash = '\0';
	if ((n = split(line, w)) == 0)
		return 0;
	if (n < 0) {
		error_set(ret_error, "line %u: too many words", lineno);
		return -EINVAL;
	}
	if (strcmp(w[0], "default") == 0) {
		if (*seen_default) {
			error_set(ret_error, "line %u: a second \"default\" line", lineno);
			return -EINVAL;
		}
		if (n != 2 || (strcmp(w[1], "allow") != 0 && strcmp(w[1], "deny") != 0)) {
			error_set(ret_error, "line %u: expected \"default allow\" or \"default deny\"", lineno);
			return -EINVAL;
		}
		*seen_default = true;
		p->default_allow = w[1][0] == 'a';
		return 0;
	}
	if (strcmp(w[0], "allow") != 0 && strcmp(w[0], "deny") != 0) {
		error_set(ret_error, "line %u: unknown word \"%.32s\" (a line is \"default allow|deny\" or \"allow|deny TARGET ...\")",
			  lineno, w[0]);
		return -EINVAL;
	}
	if (p->n_rules == EGRESS_RULES_MAX) {
		error_set(ret_error, "line %u: more than %d rules", lineno, EGRESS_RULES_MAX);
		return -EINVAL;
	}
	r.allow = w[0][0] == 'a';
	if ((k = parse_rule(w, (unsigned)n, &r, &why)) < 0) {
		free(r.name);
		if (k == -ENOMEM)
			return k;
		error_set(ret_error, "line %u: %s", lineno, why);
		return -EINVAL;
	}
	if (r.target == EGRESS_NAME && ++*n_names > EGRESS_NAMES_MAX) {
		free(r.name);
		error_set(ret_error, "line %u: more than %d rules naming a host", lineno, EGRESS_NAMES_MAX);
		return -EINVAL;
	}
	p->rules[p->n_rules++] = r;
	return 0;
}

int egress_parse(const char *text, size_t len, struct egress_policy **ret, char **ret_error)
{
	struct egress_policy *p = calloc(1, sizeof(*p));
	char line[EGRESS_LINE_MAX + 2];
	bool seen_default = false;
	unsigned lineno = 0, n_names = 0;
	size_t at = 0;
	int r = 0;

	if (!p || !(p->rules = calloc(EGRESS_RULES_MAX, sizeof(*p->rules)))) {
		free(p);
		return -ENOMEM;
	}
	p->default_allow = true;
	if (memchr(text, '\0', len)) {
		error_set(ret_error, "a NUL byte in the policy");
		r = -EINVAL;
	}
	while (r == 0 && at < len) {
		const char *nl = memchr(text + at, '\n', len - at);
		size_t l = nl ? (size_t)(nl - (text + at)) : len - at;

		lineno++;
		if (l > EGRESS_LINE_MAX) {
			error_set(ret_error, "line %u: longer than %d bytes", lineno, EGRESS_LINE_MAX);
			r = -EINVAL;
			break;
		}
		memcpy(line, text + at, l);
		line[l] = '\0';
		at += l + (nl ? 1 : 0);
		r = parse_line(p, line, lineno, &seen_default, &n_names, ret_error);
	}
	if (r < 0) {
		egress_free(p);
		return r;
	}
	*ret = p;
	return 0;
}

/* ---- rendering ---- */

static void addr_text(uint32_t host_order, char out[16])
{
	struct in_addr in = { .s_addr = htonl(host_order) };

	inet_ntop(AF_INET, &in, out, 16);
}

static void ports_text(struct sbuf *b, const struct egress_rule *r, const char *sep)
{
	for (unsigned i = 0; i < r->n_ports; i++) {
		sb_add(b, "%s%u", i ? sep : "", r->ports[i].lo);
		if (r->ports[i].hi != r->ports[i].lo)
			sb_add(b, "-%u", r->ports[i].hi);
	}
}

static const char *proto_name(enum egress_proto p)
{
	return p == EGRESS_TCP ? "tcp" : p == EGRESS_UDP ? "udp" : NULL;
}

char *egress_render(const struct egress_policy *p)
{
	struct sbuf b = { .ok = true };

	sb_add(&b, "default %s\n", p->default_allow ? "allow" : "deny");
	for (unsigned i = 0; i < p->n_rules; i++) {
		const struct egress_rule *r = &p->rules[i];
		char a[16];

		sb_add(&b, "%s ", r->allow ? "allow" : "deny");
		if (r->target == EGRESS_ANY)
			sb_add(&b, "any");
		else if (r->target == EGRESS_NAME)
			sb_add(&b, "%s", r->name);
		else
			addr_text(r->addr, a), sb_add(&b, "%s/%u", a, r->prefix);
		if (r->proto)
			sb_add(&b, " %s", proto_name(r->proto));
		if (r->n_ports)
			sb_add(&b, " %s ", r->n_ports > 1 ? "ports" : "port");
		ports_text(&b, r, ",");
		sb_add(&b, "\n");
	}
	return sb_take(&b);
}

/* ---- nftables ---- */

/*
 * Denied: tcp is answered with a reset (the guest's connect fails at once),
 * anything else with ICMP admin-prohibited (which the kernel rate-limits, so
 * a tcp connect would otherwise wait for its SYN's retransmission).
 */
#define REJECT_TCP "reject with tcp reset"
#define REJECT_OTHER "reject with icmp type admin-prohibited"

/* One nft rule: the target's match, a protocol clause, the rule's ports, the verdict. */
static void nft_rule(struct sbuf *b, const char *match, const char *proto, const struct egress_rule *r,
		     const char *verdict)
{
	sb_add(b, "add rule ip " EGRESS_TABLE " out%s%s", match, proto);
	if (r && r->n_ports) {
		sb_add(b, " th dport { ");
		ports_text(b, r, ", ");
		sb_add(b, " }");
	}
	sb_add(b, " %s\n", verdict);
}

static void nft_deny(struct sbuf *b, const char *match, const struct egress_rule *r)
{
	enum egress_proto p = r ? r->proto : EGRESS_PROTO_ANY;

	if (p != EGRESS_UDP)
		nft_rule(b, match, " meta l4proto tcp", r, REJECT_TCP);
	if (p == EGRESS_UDP || (r && r->n_ports && p == EGRESS_PROTO_ANY))
		nft_rule(b, match, " meta l4proto udp", r, REJECT_OTHER);
	else if (p == EGRESS_PROTO_ANY)
		nft_rule(b, match, "", r, REJECT_OTHER);
}

char *egress_nft_script(const struct egress_policy *p, const char *iif, bool replace)
{
	struct sbuf b = { .ok = true };
	const char *t = "ip " EGRESS_TABLE;

	/* replaced whole, atomically: add (so the delete has one), delete, build again */
	if (replace)
		sb_add(&b, "add table %1$s\ndelete table %1$s\n", t);
	sb_add(&b, "add table %s\n", t);
	sb_add(&b, "add chain %s out { type filter hook forward priority filter; policy accept; }\n", t);
	for (unsigned i = 0; i < p->n_rules; i++)
		if (p->rules[i].target == EGRESS_NAME)
			sb_add(&b, "add set %s n%u { type ipv4_addr; flags timeout; }\n", t, i);
	sb_add(&b, "add rule %s out iifname != \"%s\" accept\n", t, iif);
	sb_add(&b, "add rule %s out ct state established,related accept\n", t);
	for (unsigned i = 0; i < p->n_rules; i++) {
		const struct egress_rule *r = &p->rules[i];
		char match[64] = "", a[16];

		if (r->target == EGRESS_CIDR)
			addr_text(r->addr, a), snprintf(match, sizeof(match), " ip daddr %s/%u", a, r->prefix);
		else if (r->target == EGRESS_NAME)
			snprintf(match, sizeof(match), " ip daddr @n%u", i);
		if (!r->allow)
			nft_deny(&b, match, r);
		else
			nft_rule(&b, match, r->proto == EGRESS_TCP ? " meta l4proto tcp" : r->proto == EGRESS_UDP ?
					    " meta l4proto udp" : r->n_ports ? " meta l4proto { tcp, udp }" : "", r, "accept");
	}
	if (p->default_allow)
		nft_rule(&b, "", "", NULL, "accept");
	else
		nft_deny(&b, "", NULL);
	return sb_take(&b);
}

bool egress_name_matches(const char *pattern, const char *name)
{
	size_t lp, ln;

	if (strncmp(pattern, "*.", 2) != 0)
		return strcmp(pattern, name) == 0;
	pattern += 1; /* ".suffix" */
	lp = strlen(pattern);
	ln = strlen(name);
	return ln > lp && strcmp(name + ln - lp, pattern) == 0;
}

char *egress_nft_elements(const struct egress_element *el, size_t n)
{
	struct sbuf b = { .ok = true };
	const char *t = "ip " EGRESS_TABLE;

	for (size_t i = 0; i < n; i++) {
		uint32_t ttl = el[i].ttl < EGRESS_TTL_MIN ? EGRESS_TTL_MIN :
			       el[i].ttl > EGRESS_TTL_MAX ? EGRESS_TTL_MAX : el[i].ttl;
		char a[16];

		addr_text(el[i].addr, a);
		/* add (so the delete has one), delete, add: the timeout is the latest answer's */
		sb_add(&b, "add element %1$s n%2$u { %3$s timeout %4$us }\n"
			   "delete element %1$s n%2$u { %3$s }\n"
			   "add element %1$s n%2$u { %3$s timeout %4$us }\n",
		       t, el[i].rule, a, ttl);
	}
	return sb_take(&b);
}
