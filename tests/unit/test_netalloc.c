/* The netpool address allocator: parsing, exhaustion, reuse, no overlap. */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "netpool.h"

static void test_parse(void **state)
{
	struct np_alloc a;
	char *err = NULL;

	(void)state;
	assert_int_equal(np_alloc_init(&a, "10.200.0.0/16", &err), 0);
	assert_int_equal(a.n, 16384);
	assert_int_equal(a.base, 0x0ac80000);
	np_alloc_free(&a);
	assert_int_equal(np_alloc_init(&a, "192.168.4.0/30", &err), 0);
	assert_int_equal(a.n, 1);
	np_alloc_free(&a);
	static const char *const bad[] = { "10.200.0.0", "10.200.0.0/", "10.200.0.0/31", "10.200.0.0/7",
					   "10.200.0.1/16", "10.200.0.0/16x", "10.300.0.0/16", "", "/16",
					   "10.200.0.0/-1", "10.200.0.0/99999999999999999999" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(np_alloc_init(&a, bad[i], &err), -EINVAL);
		assert_non_null(err);
		free(err);
		err = NULL;
	}
	assert_int_equal(np_alloc_init(&a, NULL, &err), -EINVAL);
	free(err);
}

static void test_exhaustion_and_reuse(void **state)
{
	struct np_alloc a;
	char *err = NULL;

	(void)state;
	assert_int_equal(np_alloc_init(&a, "10.1.0.0/24", &err), 0); /* 64 slots */
	for (int i = 0; i < 64; i++)
		assert_int_equal(np_alloc_get(&a), i);
	assert_int_equal(np_alloc_get(&a), -ENOSPC);
	assert_int_equal(a.used, 64);
	assert_int_equal(np_alloc_put(&a, 17), 0);
	assert_int_equal(np_alloc_put(&a, 17), -EINVAL); /* twice */
	assert_int_equal(np_alloc_put(&a, 64), -EINVAL); /* out of range */
	assert_int_equal(np_alloc_put(&a, 3), 0);
	assert_int_equal(np_alloc_get(&a), 3); /* the lowest free first */
	assert_int_equal(np_alloc_get(&a), 17);
	assert_int_equal(np_alloc_get(&a), -ENOSPC);
	np_alloc_free(&a);
}

static void test_addresses_do_not_overlap(void **state)
{
	struct np_alloc a;
	char *err = NULL;

	(void)state;
	assert_int_equal(np_alloc_init(&a, "10.200.0.0/16", &err), 0);
	for (unsigned i = 0; i < a.n; i++) {
		uint32_t h = np_alloc_host_addr(&a, i), g = np_alloc_inside_addr(&a, i);

		/* both in the slot's own /30, neither the network nor the broadcast address */
		assert_int_equal(h & ~3u, a.base + 4 * i);
		assert_int_equal(g & ~3u, a.base + 4 * i);
		assert_int_equal(h & 3u, 1);
		assert_int_equal(g & 3u, 2);
		assert_true(np_overlap(h, 32, a.base, 16));
		if (i > 0)
			assert_false(np_overlap(a.base + 4 * i, 30, a.base + 4 * (i - 1), 30));
	}
	assert_int_equal(np_alloc_inside_addr(&a, a.n - 1), 0x0ac8fffe);
	np_alloc_free(&a);
}

static void test_overlap(void **state)
{
	(void)state;
	assert_true(np_overlap(0x0ac80000, 16, 0x0ac80400, 24));
	assert_true(np_overlap(0x0a000000, 8, 0x0ac80000, 16));
	assert_false(np_overlap(0x0ac80000, 16, 0x0ac90000, 16));
	assert_false(np_overlap(0xc0a80000, 16, 0x0ac80000, 16));
	assert_true(np_overlap(0x0ac80001, 32, 0x0ac80000, 30));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_exhaustion_and_reuse),
		cmocka_unit_test(test_addresses_do_not_overlap),
		cmocka_unit_test(test_overlap),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
