/* netpool/egress.c: the policy's text form, its normalized rendering, the nft scripts. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "egress.h"

static struct egress_policy *parse_ok(const char *text)
{
	struct egress_policy *p = NULL;
	char *err = NULL;
	int r = egress_parse(text, strlen(text), &p, &err);

	if (r != 0)
		fail_msg("parse of \"%s\" failed: %s", text, err ? err : "?");
	free(err);
	return p;
}

/* Parses, renders, and checks the rendering is the expected and a fixed point. */
static void normalizes(const char *text, const char *want)
{
	struct egress_policy *p = parse_ok(text), *q;
	char *out = egress_render(p), *again;

	assert_non_null(out);
	assert_string_equal(out, want);
	q = parse_ok(out);
	assert_true(egress_equal(p, q));
	again = egress_render(q);
	assert_string_equal(again, out);
	free(again);
	free(out);
	egress_free(q);
	egress_free(p);
}

static void fails(const char *text, const char *want_in_error)
{
	struct egress_policy *p = NULL;
	char *err = NULL;
	int r = egress_parse(text, strlen(text), &p, &err);

	assert_int_equal(r, -EINVAL);
	assert_null(p);
	assert_non_null(err);
	if (!strstr(err, want_in_error))
		fail_msg("error \"%s\" lacks \"%s\"", err, want_in_error);
	free(err);
}

static void test_normalize(void **state)
{
	(void)state;
	normalizes("", "default allow\n");
	normalizes("# nothing\n\n   \n", "default allow\n");
	normalizes("default deny", "default deny\n");
	normalizes("allow 10.1.2.3/8\n", "default allow\nallow 10.0.0.0/8\n");
	normalizes("  deny\t10.1.2.3  # one host\n", "default allow\ndeny 10.1.2.3/32\n");
	normalizes("allow 0.0.0.0/0", "default allow\nallow 0.0.0.0/0\n");
	normalizes("deny any udp\n", "default allow\ndeny any udp\n");
	normalizes("allow PyPI.Example.ORG. tcp port 443\ndefault deny\n",
		   "default deny\nallow pypi.example.org tcp port 443\n");
	normalizes("allow *.example.org ports 443,80,81,82-90,1000-2000,1500\n",
		   "default allow\nallow *.example.org ports 80-90,443,1000-2000\n");
	normalizes("allow any port 1-65535", "default allow\nallow any port 1-65535\n");
	normalizes("allow any ports 22", "default allow\nallow any port 22\n");
	normalizes("allow localhost\r\n", "default allow\nallow localhost\n");
}

static void test_errors(void **state)
{
	char big[EGRESS_LINE_MAX + 20];

	(void)state;
	fails("allow 10.0.0.0/8\npermit any\n", "line 2: unknown word \"permit\"");
	fails("default allow\ndefault deny\n", "line 2: a second \"default\" line");
	fails("default maybe\n", "line 1: expected \"default allow\"");
	fails("allow\n", "line 1: a rule names a target");
	fails("allow 10.0.0.0/33\n", "line 1: bad IPv4 address");
	fails("allow 1.2.3\n", "line 1: bad IPv4 address");
	fails("allow 300.1.1.1\n", "line 1: bad IPv4 address");
	fails("\n\nallow -bad.example\n", "line 3: a label");
	fails("allow a..b\n", "line 1: each label");
	fails("allow a_b.example\n", "line 1: a host name has only");
	fails("allow a.123\n", "line 1: the last label");
	fails("allow *.\n", "line 1: a host name has 1 to 253");
	fails("allow any tcp port 0\n", "line 1: a port is a number");
	fails("allow any tcp port 70000\n", "line 1: a port is a number");
	fails("allow any tcp port 9-3\n", "N <= M");
	fails("allow any tcp port 1,2\n", "ports N,M");
	fails("allow any tcp port\n", "followed by a port");
	fails("allow any sctp\n", "unexpected word");
	fails("allow any tcp port 80 extra\n", "unexpected word");
	fails("allow any ports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17\n", "at most 16");
	fails("allow a b c d e f g h i\n", "too many words");
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	fails(big, "line 1: longer than 512 bytes");
	{
		struct egress_policy *p = NULL;
		char *err = NULL;

		assert_int_equal(egress_parse("allow any\0x", 11, &p, &err), -EINVAL);
		assert_non_null(strstr(err, "NUL"));
		free(err);
	}
}

static void test_bounds(void **state)
{
	size_t cap = 64 * 1024;
	char *t = malloc(cap);
	size_t at = 0;

	(void)state;
	for (unsigned i = 0; i < EGRESS_RULES_MAX; i++)
		at += (size_t)snprintf(t + at, cap - at, "allow 10.0.%u.%u\n", i / 256, i % 256);
	egress_free(parse_ok(t));
	snprintf(t + at, cap - at, "deny any\n");
	fails(t, "line 257: more than 256 rules");
	at = 0;
	for (unsigned i = 0; i < EGRESS_NAMES_MAX + 1; i++)
		at += (size_t)snprintf(t + at, cap - at, "allow h%u.example\n", i);
	fails(t, "line 65: more than 64 rules naming a host");
	free(t);
}

static void test_nft_script(void **state)
{
	struct egress_policy *p = parse_ok("default deny\n"
					   "allow 10.0.0.0/8 tcp port 80\n"
					   "deny pypi.example.org\n"
					   "allow any ports 53,5353\n"
					   "allow *.example.org udp\n");
	char *s = egress_nft_script(p, "tap0", true);

	(void)state;
	assert_string_equal(s, "add table ip emberfs_egress\n"
			       "delete table ip emberfs_egress\n"
			       "add table ip emberfs_egress\n"
			       "add chain ip emberfs_egress out { type filter hook forward priority filter; policy accept; }\n"
			       "add set ip emberfs_egress n1 { type ipv4_addr; flags timeout; }\n"
			       "add set ip emberfs_egress n3 { type ipv4_addr; flags timeout; }\n"
			       "add rule ip emberfs_egress out iifname != \"tap0\" accept\n"
			       "add rule ip emberfs_egress out ct state established,related accept\n"
			       "add rule ip emberfs_egress out ip daddr 10.0.0.0/8 meta l4proto tcp th dport { 80 } accept\n"
			       "add rule ip emberfs_egress out ip daddr @n1 meta l4proto tcp reject with tcp reset\n"
			       "add rule ip emberfs_egress out ip daddr @n1 reject with icmp type admin-prohibited\n"
			       "add rule ip emberfs_egress out meta l4proto { tcp, udp } th dport { 53, 5353 } accept\n"
			       "add rule ip emberfs_egress out ip daddr @n3 meta l4proto udp accept\n"
			       "add rule ip emberfs_egress out meta l4proto tcp reject with tcp reset\n"
			       "add rule ip emberfs_egress out reject with icmp type admin-prohibited\n");
	free(s);
	egress_free(p);
	p = parse_ok("deny 1.2.3.4 tcp port 1\ndeny any udp\ndeny any ports 7,9\n");
	s = egress_nft_script(p, "tap0", true);
	assert_non_null(strstr(s, "add rule ip emberfs_egress out ip daddr 1.2.3.4/32 meta l4proto tcp th dport { 1 } reject with tcp reset\n"
				  "add rule ip emberfs_egress out meta l4proto udp reject with icmp type admin-prohibited\n"
				  "add rule ip emberfs_egress out meta l4proto tcp th dport { 7, 9 } reject with tcp reset\n"
				  "add rule ip emberfs_egress out meta l4proto udp th dport { 7, 9 } reject with icmp type admin-prohibited\n"
				  "add rule ip emberfs_egress out accept\n"));
	free(s);
	egress_free(p);
	p = egress_allow_all();
	s = egress_nft_script(p, "tap0", false);
	assert_true(strncmp(s, "add table ip emberfs_egress\nadd chain", strlen("add table ip emberfs_egress\nadd chain")) == 0); /* a first policy: nothing to delete */
	assert_non_null(strstr(s, "established,related accept\nadd rule ip emberfs_egress out accept\n"));
	free(s);
	egress_free(p);
}

static void test_names_and_elements(void **state)
{
	struct egress_element el[] = { { 2, 0x0a000001, 5 }, { 7, 0xc0a80001, 100000 }, { 1, 0x01020304, 300 } };
	char *s;

	(void)state;
	assert_true(egress_name_matches("pypi.example.org", "pypi.example.org"));
	assert_false(egress_name_matches("pypi.example.org", "x.pypi.example.org"));
	assert_true(egress_name_matches("*.example.org", "a.example.org"));
	assert_true(egress_name_matches("*.example.org", "a.b.example.org"));
	assert_false(egress_name_matches("*.example.org", "example.org"));
	assert_false(egress_name_matches("*.example.org", "badexample.org"));
	s = egress_nft_elements(el, 3);
	assert_string_equal(s, "add element ip emberfs_egress n2 { 10.0.0.1 timeout 30s }\n"
			       "delete element ip emberfs_egress n2 { 10.0.0.1 }\n"
			       "add element ip emberfs_egress n2 { 10.0.0.1 timeout 30s }\n"
			       "add element ip emberfs_egress n7 { 192.168.0.1 timeout 86400s }\n"
			       "delete element ip emberfs_egress n7 { 192.168.0.1 }\n"
			       "add element ip emberfs_egress n7 { 192.168.0.1 timeout 86400s }\n"
			       "add element ip emberfs_egress n1 { 1.2.3.4 timeout 300s }\n"
			       "delete element ip emberfs_egress n1 { 1.2.3.4 }\n"
			       "add element ip emberfs_egress n1 { 1.2.3.4 timeout 300s }\n");
	free(s);
}

static void test_dup(void **state)
{
	struct egress_policy *p = parse_ok("default deny\nallow a.example tcp port 1\nallow 1.2.3.0/24\n");
	struct egress_policy *d = egress_dup(p), *q = parse_ok("default deny\nallow a.example tcp port 2\n");

	(void)state;
	assert_true(egress_equal(p, d));
	assert_false(egress_equal(p, q));
	egress_free(d);
	egress_free(q);
	egress_free(p);
	egress_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_normalize),  cmocka_unit_test(test_errors),
		cmocka_unit_test(test_bounds),	   cmocka_unit_test(test_nft_script),
		cmocka_unit_test(test_names_and_elements), cmocka_unit_test(test_dup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
