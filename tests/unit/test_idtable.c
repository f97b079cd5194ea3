/* engine/idtable.c: objects by id, checked against a plain array over random puts, gets and deletes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "idtable.h"

#define IDS 5000

static void basics(void **state)
{
	struct idtable t = { 0 };
	int a, b;

	(void)state;
	assert_null(idtable_get(&t, 1)); /* empty, never allocated */
	idtable_del(&t, 1);
	assert_int_equal(idtable_put(&t, 0, &a), -EINVAL);
	assert_int_equal(idtable_put(&t, IDTABLE_GONE, &a), -EINVAL);
	assert_int_equal(idtable_put(&t, 7, &a), 0);
	assert_ptr_equal(idtable_get(&t, 7), &a);
	assert_int_equal(idtable_put(&t, 7, &b), 0); /* replaces */
	assert_ptr_equal(idtable_get(&t, 7), &b);
	assert_int_equal(t.n, 1);
	idtable_del(&t, 7);
	assert_null(idtable_get(&t, 7));
	assert_int_equal(t.n, 0);
	idtable_free(&t);
}

/* Random operations, the answer of every get compared with the array; deletes leave no slot behind forever. */
static void random_ops(void **state)
{
	static int objs[IDS];
	void *ref[IDS] = { 0 };
	struct idtable t = { 0 };
	size_t present = 0, max_cap = 0;

	(void)state;
	srand(12345);
	for (int round = 0; round < 200000; round++) {
		uint64_t id = 1 + (uint64_t)(rand() % (IDS - 1));
		int op = rand() % 3;

		if (op == 0) {
			present += ref[id] == NULL;
			ref[id] = &objs[id];
			assert_int_equal(idtable_put(&t, id, &objs[id]), 0);
		} else if (op == 1) {
			present -= ref[id] != NULL;
			ref[id] = NULL;
			idtable_del(&t, id);
		}
		assert_ptr_equal(idtable_get(&t, id), ref[id]);
		assert_int_equal(t.n, present);
		if (t.cap > max_cap)
			max_cap = t.cap;
	}
	for (uint64_t id = 1; id < IDS; id++)
		assert_ptr_equal(idtable_get(&t, id), ref[id]);
	/* removed slots are reused by rehashing: the table never grows past what the ids need */
	assert_true(max_cap <= 4 * 8192);
	idtable_free(&t);
}

/* Consecutive ids (as the engine hands them out) added and removed in a sliding window: the size stays bounded. */
static void sliding_window(void **state)
{
	static int obj;
	struct idtable t = { 0 };

	(void)state;
	for (uint64_t id = 1; id <= 100000; id++) {
		assert_int_equal(idtable_put(&t, id, &obj), 0);
		if (id > 64)
			idtable_del(&t, id - 64);
		assert_null(idtable_get(&t, id > 64 ? id - 64 : IDTABLE_GONE));
		assert_ptr_equal(idtable_get(&t, id), &obj);
	}
	assert_int_equal(t.n, 64);
	assert_true(t.cap <= 256);
	idtable_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(basics),
		cmocka_unit_test(random_ops),
		cmocka_unit_test(sliding_window),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
