/*
 * The resolver's checks on DNS messages (see np_internal.h), pure: ldns parses
 * the wire format, this decides what is a query, what answers it, and which
 * addresses go to which name rule's set. Fuzzed (tests/fuzz/fuzz_dnsmsg.c).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "np_internal.h"

void np_dns_question_clear(struct np_dns_question *q)
{
	ldns_rdf_deep_free(q->name);
	q->name = NULL;
}

/* The packet's one question, or NULL. */
static const ldns_rr *one_question(const ldns_pkt *pkt)
{
	if (ldns_pkt_qdcount(pkt) != 1 || ldns_rr_list_rr_count(ldns_pkt_question(pkt)) != 1)
		return NULL;
	return ldns_rr_list_rr(ldns_pkt_question(pkt), 0);
}

int np_dns_query_parse(const uint8_t *buf, size_t n, struct np_dns_question *ret)
{
	ldns_pkt *pkt = NULL;
	const ldns_rr *qrr;
	int r = -EINVAL;

	if (n < 12 || n > NP_DNS_QUERY_MAX || ldns_wire2pkt(&pkt, buf, n) != LDNS_STATUS_OK)
		return -EINVAL;
	if (!ldns_pkt_qr(pkt) && ldns_pkt_get_opcode(pkt) == LDNS_PACKET_QUERY && (qrr = one_question(pkt)) &&
	    ldns_rr_owner(qrr) && ldns_rdf_get_type(ldns_rr_owner(qrr)) == LDNS_RDF_TYPE_DNAME) {
		ret->name = ldns_rdf_clone(ldns_rr_owner(qrr));
		ret->type = ldns_rr_get_type(qrr);
		ret->klass = ldns_rr_get_class(qrr);
		r = ret->name ? 0 : -ENOMEM;
	}
	ldns_pkt_free(pkt);
	return r;
}

int np_dns_answer_parse(const uint8_t *buf, size_t n, uint16_t id, const struct np_dns_question *q, ldns_pkt **ret)
{
	ldns_pkt *pkt = NULL;
	const ldns_rr *qrr;

	if (n < 12 || n > NP_DNS_ANSWER_MAX || (uint16_t)(buf[0] << 8 | buf[1]) != id ||
	    ldns_wire2pkt(&pkt, buf, n) != LDNS_STATUS_OK)
		return -EINVAL;
	if (!ldns_pkt_qr(pkt) || !(qrr = one_question(pkt)) || ldns_rr_get_type(qrr) != q->type ||
	    ldns_rr_get_class(qrr) != q->klass || !ldns_rr_owner(qrr) ||
	    ldns_rdf_get_type(ldns_rr_owner(qrr)) != LDNS_RDF_TYPE_DNAME ||
	    ldns_dname_compare(ldns_rr_owner(qrr), q->name) != 0) {
		ldns_pkt_free(pkt);
		return -EINVAL;
	}
	*ret = pkt;
	return 0;
}

char *np_dns_name_text(const struct np_dns_question *q)
{
	char *s = ldns_rdf2str(q->name);
	size_t l;

	if (!s)
		return NULL;
	for (char *c = s; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	l = strlen(s);
	if (l && s[l - 1] == '.')
		s[--l] = '\0';
	return s;
}

size_t np_dns_addrs(const ldns_pkt *pkt, uint32_t *addrs, uint32_t *ttls, size_t max)
{
	const ldns_rr_list *ans = ldns_pkt_answer(pkt);
	size_t n = 0;

	/* every A record of the answer: a CNAME chain's end counts for the name asked */
	for (size_t k = 0; k < ldns_rr_list_rr_count(ans) && n < max; k++) {
		const ldns_rr *rr = ldns_rr_list_rr(ans, k);
		const ldns_rdf *rd = ldns_rr_rd_count(rr) == 1 ? ldns_rr_rdf(rr, 0) : NULL;
		uint32_t a;

		if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_A || ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN || !rd ||
		    ldns_rdf_size(rd) != 4)
			continue;
		memcpy(&a, ldns_rdf_data(rd), 4);
		addrs[n] = ntohl(a);
		ttls[n++] = ldns_rr_ttl(rr);
	}
	return n;
}

size_t np_dns_elements(const struct egress_policy *pol, const struct np_dns_question *q, const ldns_pkt *pkt,
		       struct egress_element *el, size_t max)
{
	uint32_t addrs[64], ttls[64];
	size_t n = 0, na;
	char *name;

	if (!pol || q->klass != LDNS_RR_CLASS_IN || !(name = np_dns_name_text(q)))
		return 0;
	na = np_dns_addrs(pkt, addrs, ttls, 64);
	for (unsigned i = 0; i < pol->n_rules && n < max; i++) {
		if (pol->rules[i].target != EGRESS_NAME || !egress_name_matches(pol->rules[i].name, name))
			continue;
		for (size_t k = 0; k < na && n < max; k++)
			el[n++] = (struct egress_element){ .rule = i, .addr = addrs[k], .ttl = ttls[k] };
	}
	free(name);
	return n;
}
