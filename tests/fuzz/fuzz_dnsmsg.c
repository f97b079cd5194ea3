/*
 * libFuzzer: the resolver's checks on DNS messages (netpool/dnsmsg.c), the
 * input taken as a guest's query and as an upstream's answer to the query
 * "srv.test A IN" with id 0x1234, under a policy whose name rules match
 * srv.test: no crash, no leak, and only sane elements come out.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "np_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char policy[] = "default deny\nallow srv.test tcp port 443\nallow *.test\ndeny 10.0.0.0/8\n";
	static struct egress_policy *pol;
	struct np_dns_question q = { 0 }, asked = { 0 };
	struct egress_element el[64];
	ldns_pkt *pkt = NULL;
	char *name;
	size_t n;

	if (!pol && egress_parse(policy, sizeof(policy) - 1, &pol, NULL) < 0)
		abort();
	if (np_dns_query_parse(data, size, &q) == 0) {
		if (!q.name)
			abort();
		name = np_dns_name_text(&q);
		free(name);
		np_dns_question_clear(&q);
	}
	if (ldns_str2rdf_dname(&asked.name, "srv.test.") != LDNS_STATUS_OK)
		abort();
	asked.type = LDNS_RR_TYPE_A;
	asked.klass = LDNS_RR_CLASS_IN;
	if (np_dns_answer_parse(data, size, 0x1234, &asked, &pkt) == 0) {
		n = np_dns_elements(pol, &asked, pkt, el, 64);
		if (n > 64)
			abort();
		for (size_t i = 0; i < n; i++)
			if (el[i].rule > 1)
				abort(); /* only the rules naming hosts */
		ldns_pkt_free(pkt);
	}
	np_dns_question_clear(&asked);
	return 0;
}
