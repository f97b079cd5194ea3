/* A sandbox's settings as written (engine/parse.c) and metadata as file names (common/names.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common.h"
#include "engine.h"
#include "parse.h"

static int tparse(const char *text, uint64_t *secs, int *act)
{
	char *err = NULL;
	int r = timeout_parse(text, strlen(text), secs, act, &err);

	if (r < 0)
		assert_non_null(err); /* every refusal says why */
	free(err);
	return r;
}

static void timeout_forms(void **state)
{
	uint64_t s = 99;
	int a = -1;

	(void)state;
	assert_int_equal(tparse("30", &s, &a), 0);
	assert_int_equal(s, 30);
	assert_int_equal(a, TIMEOUT_ACT_DEFAULT);
	assert_int_equal(tparse("  45 hibernate\n", &s, &a), 0);
	assert_int_equal(s, 45);
	assert_int_equal(a, TIMEOUT_ACT_HIBERNATE);
	assert_int_equal(tparse("0 destroy", &s, &a), 0);
	assert_int_equal(s, 0);
	assert_int_equal(a, TIMEOUT_ACT_DESTROY);
	assert_int_equal(tparse("{\"timeout_s\": 7, \"on_timeout\": \"hibernate\"}", &s, &a), 0);
	assert_int_equal(s, 7);
	assert_int_equal(a, TIMEOUT_ACT_HIBERNATE);
	assert_int_equal(tparse("\n", &s, &a), 0); /* emptied: none */
	assert_int_equal(s, 0);
	assert_int_equal(tparse("31622400", &s, &a), 0); /* the bound itself */
	assert_int_equal(s, TIMEOUT_MAX_S);
}

static void timeout_refusals(void **state)
{
	static const char *const bad[] = { "-1", "abc", "1.5", "1e3", "30s", "30 explode", "30 hibernate now",
					   "31622401", "99999999999999999999999", "{\"timeout_s\": -1}",
					   "{\"timeout_s\": 1.5}", "{\"timeout_s\": \"3\"}", "{\"on_timeout\": \"destroy\"}",
					   "{\"timeout_s\": 3, \"extra\": 1}", "{\"timeout_s\": 3} 4", "[3]", "{",
					   "{\"timeout_s\": 3, \"on_timeout\": \"nap\"}", "destroy" };
	uint64_t s = 5;
	int a = TIMEOUT_ACT_HIBERNATE;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		assert_int_equal(tparse(bad[i], &s, &a), -EINVAL);
		assert_int_equal(s, 5); /* unchanged */
		assert_int_equal(a, TIMEOUT_ACT_HIBERNATE);
	}
	assert_int_equal(timeout_parse("3\0", 2, &s, &a, NULL), -EINVAL);
}

static void metadata_bounds(void **state)
{
	char big[20000], *err = NULL;
	json_object *o = NULL;
	size_t n;

	(void)state;
	assert_int_equal(metadata_parse("{\"a\": \"b\", \"c\": \"\"}", 19, &o, &err), 0);
	assert_int_equal(json_object_object_length(o), 2);
	json_object_put(o);
	assert_int_equal(metadata_parse("{}", 2, &o, &err), 0);
	assert_null(o);
	assert_int_equal(metadata_parse(" ", 1, &o, &err), 0);
	assert_null(o);
	/* 64 keys: fine; 65: refused */
	n = (size_t)snprintf(big, sizeof(big), "{");
	for (int i = 0; i < 65; i++)
		n += (size_t)snprintf(big + n, sizeof(big) - n, "%s\"k%d\": \"v\"", i ? ", " : "", i);
	n += (size_t)snprintf(big + n, sizeof(big) - n, "}");
	assert_int_equal(metadata_parse(big, n, &o, &err), -EINVAL);
	assert_non_null(strstr(err, "keys"));
	free(err);
	err = NULL;
	/* a key of 128 bytes and a value of 1024: fine; one more byte: refused */
	n = (size_t)snprintf(big, sizeof(big), "{\"%0128d\": \"%01024d\"}", 0, 0);
	assert_int_equal(metadata_parse(big, n, &o, &err), 0);
	json_object_put(o);
	n = (size_t)snprintf(big, sizeof(big), "{\"%0129d\": \"v\"}", 0);
	assert_int_equal(metadata_parse(big, n, &o, &err), -EINVAL);
	free(err);
	err = NULL;
	n = (size_t)snprintf(big, sizeof(big), "{\"k\": \"%01025d\"}", 0);
	assert_int_equal(metadata_parse(big, n, &o, &err), -EINVAL);
	free(err);
	err = NULL;
	{
		static const char *const bad[] = { "[]", "\"s\"", "{\"a\": 1}", "{\"a\": null}", "{\"a\": [\"b\"]}",
						   "{\"\": \"v\"}", "{\"a\\nb\": \"v\"}", "{\"a\": \"b\\u0000c\"}",
						   "{\"a\": \"b\"} {}", "{\"a\": \"\xff\"}", "{'a': 'b'}", "{\"a\": \"b\",}" };

		for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
			o = NULL;
			assert_int_equal(metadata_parse(bad[i], strlen(bad[i]), &o, &err), -EINVAL);
			assert_null(o);
			assert_non_null(err);
			free(err);
			err = NULL;
		}
	}
}

static void env_forms(void **state)
{
	const char *lines = "# c\nA=1\n\nB=x=y z\r\n_C=\n";
	char **env = NULL, *err = NULL, *txt;

	(void)state;
	assert_int_equal(env_parse(lines, strlen(lines), &env, &err), 0);
	assert_string_equal(env[0], "A=1");
	assert_string_equal(env[1], "B=x=y z");
	assert_string_equal(env[2], "_C=");
	assert_null(env[3]);
	txt = env_render(env);
	assert_string_equal(txt, "A=1\nB=x=y z\n_C=\n");
	free(txt);
	strv_free(env);
	/* JSON, with a newline in a value: rendered back as JSON, which parses to the same */
	{
		const char *j = "{\"K\": \"a\\nb\", \"L\": \"c\"}";

		assert_int_equal(env_parse(j, strlen(j), &env, &err), 0);
	}
	txt = env_render(env);
	assert_string_equal(txt, "{\"K\":\"a\\nb\",\"L\":\"c\"}\n");
	strv_free(env);
	assert_int_equal(env_parse(txt, strlen(txt), &env, &err), 0);
	assert_string_equal(env[0], "K=a\nb");
	free(txt);
	strv_free(env);
	env = NULL;
	assert_int_equal(env_parse("", 0, &env, &err), 0);
	assert_null(env);
	txt = env_render(NULL);
	assert_string_equal(txt, "");
	free(txt);
	{
		static const char *const bad[] = { "1A=b", "A-B=c", "A B=c", "NOEQ", "=v", "A=1\nA=2", "A=x\ry", "A=x\r\r\n",
						   "{\"A\": 1}", "{\"1\": \"x\"}", "{\"A\": \"1\"", "[\"A=1\"]" };

		for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
			env = NULL;
			assert_int_equal(env_parse(bad[i], strlen(bad[i]), &env, &err), -EINVAL);
			assert_null(env);
			assert_non_null(err);
			free(err);
			err = NULL;
		}
	}
	/* a value ending in CR (JSON only) renders as JSON, so it reads back whole */
	assert_int_equal(env_parse("{\"A\": \"x\\r\"}", 12, &env, &err), 0);
	txt = env_render(env);
	assert_string_equal(txt, "{\"A\":\"x\\r\"}\n");
	free(txt);
	strv_free(env);
	assert_int_equal(env_parse("A=1\nB", 5, &env, &err), -EINVAL);
	assert_non_null(strstr(err, "line 2"));
	free(err);
}

static void meta_names(void **state)
{
	static const char *const round[] = { "ml", "a/b", "100%", ".", "..", "...", ".hidden", "", "tab\there",
					     "é ü", "%2F", "a%b/c" };
	char enc[256], dec[256], long_[300];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(round); i++) {
		assert_int_equal(meta_name_encode(round[i], enc), 0);
		assert_null(strchr(enc, '/'));
		assert_true(strcmp(enc, ".") && strcmp(enc, "..") && *enc);
		assert_int_equal(meta_name_decode(enc, dec, sizeof(dec)), 0);
		assert_string_equal(dec, round[i]);
	}
	meta_name_encode("a/b", enc);
	assert_string_equal(enc, "a%2Fb");
	meta_name_encode("", enc);
	assert_string_equal(enc, "%00");
	meta_name_encode("..", enc);
	assert_string_equal(enc, "%2E%2E");
	/* only encode's own spelling decodes */
	static const char *const bad[] = { "a%2fb", "%41", "%", "%4", "%G0", "a%00", ".", "..", "%2E." };

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_int_equal(meta_name_decode(bad[i], dec, sizeof(dec)), -EINVAL);
	memset(long_, 'x', 255);
	long_[255] = '\0';
	assert_int_equal(meta_name_encode(long_, enc), 0);
	long_[254] = '/';
	assert_int_equal(meta_name_encode(long_, enc), -ENAMETOOLONG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(timeout_forms), cmocka_unit_test(timeout_refusals), cmocka_unit_test(metadata_bounds),
		cmocka_unit_test(env_forms),	 cmocka_unit_test(meta_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
