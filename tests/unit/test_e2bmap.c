/* emberfs-e2b's control-plane mappings (e2b/control_map.c): E2B's JSON and queries onto the mount's files. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "control.h"

static json_object *parse(const char *s)
{
	json_object *o = json_tokener_parse(s);

	assert_non_null(o);
	return o;
}

static void states(void **state)
{
	unsigned m = 0;

	(void)state;
	assert_int_equal(e2b_state_of("ready"), E2B_STATE_RUNNING);
	assert_int_equal(e2b_state_of("creating"), E2B_STATE_RUNNING);
	assert_int_equal(e2b_state_of("paused"), E2B_STATE_PAUSED);
	assert_int_equal(e2b_state_of("hibernated"), E2B_STATE_PAUSED);
	assert_int_equal(e2b_state_of("stopped"), E2B_STATE_PAUSED);
	assert_int_equal(e2b_state_of("failed"), E2B_STATE_NONE);
	assert_int_equal(e2b_state_of("destroying"), E2B_STATE_NONE);
	assert_int_equal(e2b_state_of(NULL), E2B_STATE_NONE);
	assert_string_equal(e2b_state_name(E2B_STATE_PAUSED), "paused");

	assert_int_equal(e2b_state_filter_parse("running", &m), 0);
	assert_int_equal(m, E2B_STATE_RUNNING);
	assert_int_equal(e2b_state_filter_parse("running,paused", &m), 0); /* the SDK's form, explode false */
	assert_int_equal(m, E2B_STATE_RUNNING | E2B_STATE_PAUSED);
	assert_int_equal(e2b_state_filter_parse("paused,paused", &m), 0);
	assert_int_equal(m, E2B_STATE_PAUSED);
	assert_int_equal(e2b_state_filter_parse("", &m), -EINVAL);
	assert_int_equal(e2b_state_filter_parse("running,", &m), -EINVAL);
	assert_int_equal(e2b_state_filter_parse("Running", &m), -EINVAL);
	assert_int_equal(e2b_state_filter_parse("killed", &m), -EINVAL);
}

static void times(void **state)
{
	char buf[40];
	int64_t ms;

	(void)state;
	e2b_time_format(1796212145535, buf, sizeof(buf));
	assert_string_equal(buf, "2026-12-02T11:49:05.535Z");
	e2b_time_format(0, buf, sizeof(buf));
	assert_string_equal(buf, "1970-01-01T00:00:00.000Z");

	assert_int_equal(e2b_time_parse("2026-12-02T11:49:05.535Z", &ms), 0); /* Date.toISOString() */
	assert_int_equal(ms, 1796212145535);
	assert_int_equal(e2b_time_parse("2026-12-02T12:49:05+01:00", &ms), 0);
	assert_int_equal(ms, 1796212145000);
	assert_int_equal(e2b_time_parse("2026-12-02T11:49:05.5Z", &ms), 0);
	assert_int_equal(ms, 1796212145500);
	assert_int_equal(e2b_time_parse("2026-12-02T11:49:05.123456789Z", &ms), 0);
	assert_int_equal(ms, 1796212145123);
	assert_int_equal(e2b_time_parse("2026-12-02", &ms), -EINVAL);
	assert_int_equal(e2b_time_parse("2026-12-02T11:49:05", &ms), -EINVAL); /* no zone */
	assert_int_equal(e2b_time_parse("2026-13-02T11:49:05Z", &ms), -EINVAL);
	assert_int_equal(e2b_time_parse("2026-12-02T11:49:05Zjunk", &ms), -EINVAL);
	assert_int_equal(e2b_time_parse("2026-12-02T11:49:05.Z", &ms), -EINVAL);
}

static void metadata_filter(void **state)
{
	json_object *f, *m;

	(void)state;
	/*
	 * The JS SDK: {"a b": "c&d", "x": "1+1"} -> each encoded -> a form
	 * string (encoded again) -> the HTTP layer decoded the query argument once.
	 */
	assert_int_equal(e2b_metadata_filter_parse("a%2520b=c%2526d&x=1%252B1", &f), 0);
	assert_int_equal(json_object_object_length(f), 2);
	assert_string_equal(json_object_get_string(json_object_object_get(f, "a b")), "c&d");
	assert_string_equal(json_object_get_string(json_object_object_get(f, "x")), "1+1");

	m = parse("{\"a b\": \"c&d\", \"x\": \"1+1\", \"other\": \"v\"}");
	assert_true(e2b_metadata_match(f, m));
	json_object_object_add(m, "x", json_object_new_string("2"));
	assert_false(e2b_metadata_match(f, m));
	assert_false(e2b_metadata_match(f, NULL));
	json_object_put(m);
	json_object_put(f);

	/* what a plain user writes: user=abc&app=prod; an empty value is a value */
	assert_int_equal(e2b_metadata_filter_parse("user=abc&app=prod&empty=", &f), 0);
	assert_int_equal(json_object_object_length(f), 3);
	assert_string_equal(json_object_get_string(json_object_object_get(f, "empty")), "");
	m = parse("{\"user\": \"abc\", \"app\": \"prod\", \"empty\": \"\"}");
	assert_true(e2b_metadata_match(f, m));
	json_object_put(m);
	json_object_put(f);

	assert_int_equal(e2b_metadata_filter_parse("user", &f), -EINVAL);
	assert_int_equal(e2b_metadata_filter_parse("=v", &f), -EINVAL);
	assert_int_equal(e2b_metadata_filter_parse("k=%zz", &f), -EINVAL);
	assert_int_equal(e2b_metadata_filter_parse("k=%2", &f), -EINVAL);
	assert_int_equal(e2b_metadata_filter_parse("k=%00", &f), -EINVAL);
	assert_int_equal(e2b_metadata_filter_parse("k=1&k=2", &f), -EINVAL);
}

static void cursors(void **state)
{
	struct e2b_cursor a = {.started_ms = 1796212145535}, b, c;
	char buf[128];

	(void)state;
	strcpy(a.id, "i34vdlmh7beng9szu8g2");
	e2b_cursor_format(&a, buf, sizeof(buf));
	assert_string_equal(buf, "1796212145535.i34vdlmh7beng9szu8g2");
	assert_int_equal(e2b_cursor_parse(buf, &b), 0);
	assert_int_equal(e2b_cursor_cmp(&a, &b), 0);
	c = b;
	c.started_ms++;
	assert_int_equal(e2b_cursor_cmp(&b, &c), -1);
	strcpy(c.id, "a");
	c.started_ms = b.started_ms;
	assert_int_equal(e2b_cursor_cmp(&b, &c), 1);
	assert_int_equal(e2b_cursor_parse("1.my-box_2", &b), 0); /* names made through the mount */
	assert_int_equal(e2b_cursor_parse("", &b), -EINVAL);
	assert_int_equal(e2b_cursor_parse("12", &b), -EINVAL);
	assert_int_equal(e2b_cursor_parse("12.", &b), -EINVAL);
	assert_int_equal(e2b_cursor_parse(".id", &b), -EINVAL);
	assert_int_equal(e2b_cursor_parse("-1.id", &b), -EINVAL);
	assert_int_equal(e2b_cursor_parse("12.a/b", &b), -EINVAL);
	assert_int_equal(e2b_cursor_parse("99999999999999999999999.a", &b), -EINVAL);
}

static void egress(void **state)
{
	json_object *n;
	char *p = NULL, *why = NULL;
	bool allows = true;

	(void)state;
	/* nothing asked: no policy of its own */
	assert_int_equal(e2b_egress_from(NULL, -1, false, &p, &allows, &why), 0);
	assert_null(p);
	assert_int_equal(e2b_egress_from(NULL, 1, false, &p, &allows, &why), 0);
	assert_null(p);

	/* allowed entries first (they take precedence), then denied, then internet off */
	n = parse("{\"denyOut\": [\"10.0.0.0/8\"], \"allowOut\": [\"1.1.1.1\", \"*.example.org\"]}");
	assert_int_equal(e2b_egress_from(n, 0, false, &p, &allows, &why), 0);
	assert_string_equal(p, "allow 1.1.1.1\nallow *.example.org\ndeny 10.0.0.0/8\ndeny 0.0.0.0/0\n");
	assert_true(allows);
	free(p);
	json_object_put(n);

	assert_int_equal(e2b_egress_from(NULL, 0, false, &p, &allows, &why), 0);
	assert_string_equal(p, "deny 0.0.0.0/0\n");
	assert_false(allows);
	free(p);

	/* the defaults the SDK may send are accepted */
	n = parse("{\"allowPublicTraffic\": true, \"httpsPorts\": [], \"rules\": {}, \"egressProxy\": null}");
	assert_int_equal(e2b_egress_from(n, -1, false, &p, &allows, &why), 0);
	assert_null(p);
	json_object_put(n);

	/* an entry cannot add a line or words */
	n = parse("{\"allowOut\": [\"1.2.3.4\\nallow any\"]}");
	assert_int_equal(e2b_egress_from(n, -1, false, &p, &allows, &why), -EINVAL);
	assert_non_null(strstr(why, "allowOut[0]"));
	json_object_put(n);
	n = parse("{\"denyOut\": [\"1.2.3.4 tcp port 1\"]}");
	assert_int_equal(e2b_egress_from(n, -1, false, &p, &allows, &why), -EINVAL);
	json_object_put(n);
	n = parse("{\"allowOut\": \"1.2.3.4\"}");
	assert_int_equal(e2b_egress_from(n, -1, false, &p, &allows, &why), -EINVAL);
	json_object_put(n);

	/* what cannot be honoured is named */
	n = parse("{\"allowPublicTraffic\": false, \"maskRequestHost\": \"x\", \"rules\": {\"a.com\": [{}]},"
		  " \"egressProxy\": {\"address\": \"p:1080\"}, \"httpsPorts\": [8443], \"later\": 1}");
	assert_int_equal(e2b_egress_from(n, -1, false, &p, &allows, &why), -EOPNOTSUPP);
	assert_non_null(strstr(why, "network.allowPublicTraffic false"));
	assert_non_null(strstr(why, "network.maskRequestHost"));
	assert_non_null(strstr(why, "network.rules"));
	assert_non_null(strstr(why, "network.egressProxy"));
	assert_non_null(strstr(why, "network.httpsPorts"));
	assert_non_null(strstr(why, "network.later"));
	json_object_put(n);

	/* PUT .../network: its own fields, allow_internet_access left to the caller */
	n = parse("{\"allowOut\": [\"8.8.8.8\"], \"allow_internet_access\": false}");
	assert_int_equal(e2b_egress_from(n, 0, true, &p, &allows, &why), 0);
	assert_string_equal(p, "allow 8.8.8.8\ndeny 0.0.0.0/0\n");
	free(p);
	json_object_put(n);
	n = parse("{\"maskRequestHost\": \"x\"}");
	assert_int_equal(e2b_egress_from(n, -1, true, &p, &allows, &why), -EOPNOTSUPP);
	assert_non_null(strstr(why, "maskRequestHost"));
	json_object_put(n);
	free(why);
}

static void create_defaults(void **state)
{
	json_object *b = parse("{\"templateID\": \"default\"}"), *s;
	struct e2b_create c;
	char *why = NULL;

	(void)state;
	/* Sandbox.create('default') of SDK 2.51 sends only the template */
	assert_int_equal(e2b_create_parse(b, true, &c, &why), 0);
	assert_string_equal(c.tpl, "default");
	assert_int_equal(c.timeout_s, E2B_TIMEOUT_DEFAULT_V2);
	assert_false(c.auto_pause);
	assert_null(c.egress);
	s = e2b_create_settings(&c);
	assert_string_equal(json_object_to_json_string_ext(s, JSON_C_TO_STRING_PLAIN), "{\"timeout\":\"300 destroy\"}");
	json_object_put(s);
	e2b_create_done(&c);
	/* POST /sandboxes: NewSandbox's default timeout, and secure: true as older SDKs send */
	json_object_object_add(b, "secure", json_object_new_boolean(1));
	assert_int_equal(e2b_create_parse(b, false, &c, &why), 0);
	assert_int_equal(c.timeout_s, E2B_TIMEOUT_DEFAULT_V1);
	e2b_create_done(&c);
	json_object_put(b);
}

static void create_full(void **state)
{
	json_object *b, *s;
	struct e2b_create c;
	char *why = NULL;

	(void)state;
	b = parse("{\"templateID\": \"python\", \"timeout\": 60, \"autoPause\": true, \"autoPauseMemory\": true,"
		  " \"autoResume\": {\"enabled\": true}, \"metadata\": {\"team\": \"ml\"}, \"envVars\": {\"A\": \"1\"},"
		  " \"allow_internet_access\": false, \"network\": {\"allowOut\": [\"pypi.org\"]}, \"mcp\": null,"
		  " \"volumeMounts\": []}");
	assert_int_equal(e2b_create_parse(b, true, &c, &why), 0);
	assert_true(c.egress_allows);
	s = e2b_create_settings(&c);
	assert_string_equal(json_object_to_json_string_ext(s, JSON_C_TO_STRING_PLAIN),
			    "{\"timeout\":\"60 hibernate\",\"metadata\":{\"team\":\"ml\"},\"env\":{\"A\":\"1\"},"
			    "\"egress\":\"allow pypi.org\\ndeny 0.0.0.0\\/0\\n\"}");
	json_object_put(s);
	e2b_create_done(&c);
	json_object_put(b);
}

static void create_refused(void **state)
{
	static const char *const bad[] = {
		"{}",
		"{\"templateID\": \"\"}",
		"{\"templateID\": 5}",
		"{\"templateID\": \"t\", \"timeout\": 0}",
		"{\"templateID\": \"t\", \"timeout\": 31622401}",
		"{\"templateID\": \"t\", \"timeout\": \"300\"}",
		"{\"templateID\": \"t\", \"metadata\": {\"k\": 1}}",
		"{\"templateID\": \"t\", \"envVars\": []}",
		"{\"templateID\": \"t\", \"autoPause\": \"yes\"}",
		"{\"templateID\": \"t\", \"autoResume\": true}",
	};
	json_object *b;
	struct e2b_create c;
	char *why = NULL;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		b = parse(bad[i]);
		assert_int_equal(e2b_create_parse(b, true, &c, &why), -EINVAL);
		assert_non_null(why);
		json_object_put(b);
	}
	/* every field emberfs cannot honour, in one message */
	b = parse("{\"templateID\": \"t\", \"mcp\": {\"x\": {}}, \"iam\": {\"tokens\": {}}, \"volumeMounts\": [{}],"
		  " \"secure\": false, \"autoPauseMemory\": false, \"autoResume\": {\"enabled\": false}, \"futureField\": 1,"
		  " \"network\": {\"maskRequestHost\": \"h\"}}");
	assert_int_equal(e2b_create_parse(b, true, &c, &why), -EOPNOTSUPP);
	for (const char *const *w = (const char *const[]){"mcp", "iam", "volumeMounts", "secure false", "autoPauseMemory false",
							  "autoResume.enabled false", "futureField",
							  "network.maskRequestHost", NULL};
	     *w; w++)
		assert_non_null(strstr(why, *w));
	json_object_put(b);
	free(why);
}

static void metrics(void **state)
{
	json_object *u, *m;

	(void)state;
	u = parse("{\"sampled_at_unix_ms\": 1796201255768, \"state\": \"ready\","
		  " \"cpu\": {\"time_ms\": 9940, \"percent\": 100.0, \"interval_ms\": 2066.0},"
		  " \"memory\": {\"guest\": {\"total_bytes\": 229138432, \"used_bytes\": 108019712,"
		  " \"available_bytes\": 121118720, \"free_bytes\": 100859904, \"cache_bytes\": 87425024}},"
		  " \"disk\": {\"guest\": {\"total_bytes\": 58675200, \"used_bytes\": 18837504}},"
		  " \"guest_sample\": {\"sampled_at_unix_ms\": 1796201255766, \"age_ms\": 2, \"fresh\": true}}");
	m = e2b_metric_from_usage(u, 2);
	assert_non_null(m);
	assert_string_equal(json_object_get_string(json_object_object_get(m, "timestamp")), "2026-12-02T08:47:35.766Z");
	assert_int_equal(json_object_get_int64(json_object_object_get(m, "timestampUnix")), 1796201255);
	assert_int_equal(json_object_get_int(json_object_object_get(m, "cpuCount")), 2);
	assert_true(json_object_get_double(json_object_object_get(m, "cpuUsedPct")) == 50.0); /* of 2 vCPUs */
	assert_int_equal(json_object_get_int64(json_object_object_get(m, "memUsed")), 108019712);
	assert_int_equal(json_object_get_int64(json_object_object_get(m, "memCache")), 87425024);
	assert_int_equal(json_object_get_int64(json_object_object_get(m, "diskTotal")), 58675200);
	json_object_put(m);
	json_object_put(u);
	/* never sampled (a guest that never answered): no metric */
	u = parse("{\"cpu\": {\"percent\": null}, \"memory\": {\"guest\": null}, \"guest_sample\": null}");
	assert_null(e2b_metric_from_usage(u, 1));
	json_object_put(u);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(states),	   cmocka_unit_test(times),	     cmocka_unit_test(metadata_filter),
		cmocka_unit_test(cursors),	   cmocka_unit_test(egress),	     cmocka_unit_test(create_defaults),
		cmocka_unit_test(create_full),	   cmocka_unit_test(create_refused), cmocka_unit_test(metrics),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
