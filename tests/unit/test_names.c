/* Name validation: the allowlist every path, netns name and rule comment relies on. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "common.h"

static void accepts_valid(void **state)
{
	(void)state;
	assert_int_equal(name_validate("a"), 0);
	assert_int_equal(name_validate("A0_-z"), 0);
	assert_int_equal(name_validate("9lives"), 0);
	assert_int_equal(name_validate("Status"), 0); /* only the exact names are reserved */
	assert_int_equal(name_validate("ctl2"), 0);
	char n64[65];
	memset(n64, 'x', 64);
	n64[64] = '\0';
	assert_int_equal(name_validate(n64), 0);
}

static void rejects_invalid(void **state)
{
	static const char *const bad[] = { "", ".", "..", "a/b", "/a", "-a", "_a", "a b", "a\tb", "a\nb",
					   "a.b", "a\x7f", "\x01", "é", "a:b", "*", "a\\b", "a%b",
					   /* the mount's own entry names */
					   "status", "ctl", "config", "procs", "root", "live", "stdout", "README" };

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(name_validate(bad[i]), -EINVAL);
	assert_int_equal(name_validate(NULL), -EINVAL);
}

static void length_limits(void **state)
{
	char buf[300];

	(void)state;
	memset(buf, 'a', sizeof(buf));
	buf[65] = '\0';
	assert_int_equal(name_validate(buf), -EINVAL); /* 65: over our limit, under NAME_MAX */
	buf[255] = '\0';
	memset(buf, 'a', 255);
	assert_int_equal(name_validate(buf), -EINVAL);
	buf[255] = 'a';
	buf[256] = '\0';
	assert_int_equal(name_validate(buf), -ENAMETOOLONG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(accepts_valid),
		cmocka_unit_test(rejects_invalid),
		cmocka_unit_test(length_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
