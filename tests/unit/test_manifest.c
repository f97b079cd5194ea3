/*
 * Manifests of the snapshot store (objstore/manifest.c): what a bake record
 * from the store may say. The store is shared by hosts; a record that is
 * wrong must be refused whole, with the reason, never half taken.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common.h"
#include "objstore.h"

#define D1 "1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "2222222222222222222222222222222222222222222222222222222222222222"

static int parse(const char *text, struct manifest *m, char **why)
{
	json_object *o = json_tokener_parse(text);
	int r;

	assert_non_null(o);
	r = manifest_from_json(o, m, why);
	json_object_put(o);
	return r;
}

static void refused(const char *text, const char *because)
{
	struct manifest m = { 0 };
	char *why = NULL;

	assert_int_equal(parse(text, &m, &why), -EINVAL);
	assert_non_null(why);
	if (!strstr(why, because))
		fail_msg("%s: \"%s\" does not say \"%s\"", text, why, because);
	assert_null(m.digests);
	assert_null(m.hot);
	free(why);
}

/* Three pieces of 256 KiB, the last short, the middle one all zeros: it round-trips. */
static void roundtrip(void **state)
{
	const char *text = "{\"size\": 589824, \"chunk\": 262144, \"chunks\": [\"" D1 "\", null, \"" D2 "\"],"
			   " \"hot\": [0, 2]}";
	struct manifest m = { 0 }, c = { 0 }, back = { 0 };
	json_object *o;
	char *why = NULL;

	(void)state;
	assert_int_equal(parse(text, &m, &why), 0);
	assert_int_equal(m.size, 589824);
	assert_int_equal(m.chunk, 262144);
	assert_int_equal(m.n, 3);
	assert_string_equal(m.digests[0], D1);
	assert_string_equal(m.digests[1], "");
	assert_string_equal(m.digests[2], D2);
	assert_int_equal(m.n_hot, 2);
	assert_int_equal(m.hot[1], 2);
	/* the zero piece is not data; the short last one counts what it has */
	assert_int_equal(manifest_data_bytes(&m), 262144 + 65536);
	assert_int_equal(manifest_copy(&m, &c), 0);
	o = manifest_json(&c);
	assert_int_equal(manifest_from_json(o, &back, &why), 0);
	json_object_put(o);
	assert_int_equal(back.n, 3);
	assert_memory_equal(back.digests, m.digests, 3 * sizeof(*m.digests));
	assert_memory_equal(back.hot, m.hot, 2 * sizeof(*m.hot));
	manifest_clear(&m);
	manifest_clear(&c);
	manifest_clear(&back);
	/* empty file */
	assert_int_equal(parse("{\"size\": 0, \"chunk\": 4096, \"chunks\": []}", &m, &why), 0);
	assert_int_equal(m.n, 0);
	assert_int_equal(manifest_data_bytes(&m), 0);
	manifest_clear(&m);
}

static void bad_records(void **state)
{
	(void)state;
	refused("[]", "needs size, chunk and chunks");
	refused("{\"size\": 1, \"chunk\": 4096}", "needs size, chunk and chunks");
	refused("{\"size\": \"1\", \"chunk\": 4096, \"chunks\": [null]}", "needs size");
	refused("{\"size\": 4096, \"chunk\": 3000, \"chunks\": [null]}", "power of two");
	refused("{\"size\": 4096, \"chunk\": 2048, \"chunks\": [null, null]}", "power of two");
	refused("{\"size\": 4096, \"chunk\": 8388608, \"chunks\": [null]}", "power of two");
	refused("{\"size\": -1, \"chunk\": 4096, \"chunks\": []}", "out of range");
	refused("{\"size\": 8193, \"chunk\": 4096, \"chunks\": [null, null]}", "do not cover");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [null, null]}", "do not cover");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [\"abc\"]}", "64 hex digits");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [\"../../etc/passwd\"]}", "64 hex digits");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [\"" D1 "0\"]}", "64 hex digits");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [7]}", "64 hex digits");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [\"" D1 "\"], \"hot\": 0}", "hot is not");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [\"" D1 "\"], \"hot\": [1]}", "out of range");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [\"" D1 "\"], \"hot\": [-1]}", "out of range");
	refused("{\"size\": 4096, \"chunk\": 4096, \"chunks\": [null], \"hot\": [0]}", "all zeros");
	refused("{\"size\": 8192, \"chunk\": 4096, \"chunks\": [\"" D1 "\", \"" D2 "\"], \"hot\": [1, 0]}", "out of order");
	refused("{\"size\": 8192, \"chunk\": 4096, \"chunks\": [\"" D1 "\", \"" D2 "\"], \"hot\": [0, 0]}", "out of order");
}

static void digests(void **state)
{
	(void)state;
	assert_true(objstore_digest_valid(D1));
	assert_false(objstore_digest_valid(""));
	assert_false(objstore_digest_valid("ABCDEF1111111111111111111111111111111111111111111111111111111111"));
	assert_false(objstore_digest_valid(D1 "1"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(roundtrip),
		cmocka_unit_test(bad_records),
		cmocka_unit_test(digests),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
