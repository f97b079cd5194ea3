/* netpool's own seams between netpool.c and resolver.c; not part of the library's API. */
#pragma once

#include "common.h" /* error_set */

#include <ldns/ldns.h>

#include "netpool.h"

/* Runs an nft script in the slot's namespace (the calling thread enters it and leaves). */
int netpool_nft_in(const struct netslot *s, const char *script, char **ret_error);
/* A line for the caller's log (netpool_options.note). */
void np_note(struct netpool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The resolver (resolver.c): one thread serving the DNS of every slot.
 * A slot's socket (172.16.0.1:53 in its namespace, where its prerouting
 * redirects the guest's port 53) is made by np_resolver_socket on a thread
 * inside the namespace; np_resolver_add hands it to the thread, and
 * np_resolver_remove takes it back (closing it) before the slot goes.
 */
struct np_resolver;
/* upstream: "ADDR[:PORT]" (IPv4); NULL: the first IPv4 nameserver of /etc/resolv.conf. n_slots: index bound. */
int np_resolver_new(struct netpool *p, const char *upstream, unsigned n_slots, struct np_resolver **ret,
		    char **ret_error);
void np_resolver_free(struct np_resolver *r);
/* The upstream, "ADDR:PORT" or "none". */
const char *np_resolver_upstream(const struct np_resolver *r);
/* The calling thread is in the slot's namespace: a socket bound to NETPOOL_GW_ADDR:53 in it. */
int np_resolver_socket(void);
void np_resolver_add(struct np_resolver *r, struct netslot *s);
void np_resolver_remove(struct np_resolver *r, struct netslot *s);
/*
 * What the slot's guest looked up lately (the last NP_RECENT_MAX A records
 * answered, each until its TTL ends): a new policy's name sets start with
 * the addresses its rules' names resolved to, so a policy write does not
 * cut a guest off from a name it resolved a moment ago. Under egress_lock.
 */
#define NP_RECENT_MAX 128
struct np_dns_question;
void np_recent_note(struct netslot *s, const struct np_dns_question *q, const ldns_pkt *pkt);
size_t np_recent_elements(const struct netslot *s, const struct egress_policy *pol, struct egress_element *el,
			  size_t max);

/*
 * The checks on DNS messages (dnsmsg.c; pure, fuzzed): everything a guest
 * sends is hostile, and an answer must answer the query asked.
 */
#define NP_DNS_QUERY_MAX 1232  /* bytes of a guest's query (EDNS's safe size; a real one is far smaller) */
#define NP_DNS_ANSWER_MAX 4096 /* bytes of an answer relayed */
struct np_dns_question {
	ldns_rdf *name;
	ldns_rr_type type;
	ldns_rr_class klass;
};
void np_dns_question_clear(struct np_dns_question *q);
/* A standard query with exactly one question: 0 and its question; -EINVAL otherwise. */
int np_dns_query_parse(const uint8_t *buf, size_t n, struct np_dns_question *ret);
/* An answer with this id and the same single question: 0 and the packet (ldns_pkt_free); -EINVAL otherwise. */
int np_dns_answer_parse(const uint8_t *buf, size_t n, uint16_t id, const struct np_dns_question *q, ldns_pkt **ret);
/* The question's name, lowercased, no root dot (malloc'd; escapes as ldns writes them). */
char *np_dns_name_text(const struct np_dns_question *q);
/* The answer's A records (addresses host order, TTLs); at most max. */
size_t np_dns_addrs(const ldns_pkt *pkt, uint32_t *addrs, uint32_t *ttls, size_t max);
/* The answer's A records, for each name rule of pol matching the question's name; at most max. */
size_t np_dns_elements(const struct egress_policy *pol, const struct np_dns_question *q, const ldns_pkt *pkt,
		       struct egress_element *el, size_t max);
