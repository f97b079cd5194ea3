/* Template config parsing: every error is clear and leaves nothing allocated. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "driver.h"
#include "engine.h"
#include "internal.h"

static int parse(const char *json, struct template_config *cfg, char **err)
{
	memset(cfg, 0, sizeof(*cfg));
	*err = NULL;
	return template_config_parse(json, strlen(json), cfg, err);
}

static void parses_full(void **state)
{
	struct template_config c;
	char *err;

	(void)state;
	assert_int_equal(parse("{\"kernel\":\"/k\",\"initrd\":\"/i\",\"rootfs\":\"/r\",\"cmdline\":\"console=ttyS0\","
			       "\"vcpus\":2,\"mem_mib\":512,\"backend\":\"qemu\",\"accel\":\"tcg\"}",
			       &c, &err),
			 0);
	assert_string_equal(c.kernel, "/k");
	assert_string_equal(c.initrd, "/i");
	assert_string_equal(c.rootfs, "/r");
	assert_string_equal(c.cmdline, "console=ttyS0");
	assert_int_equal(c.vcpus, 2);
	assert_int_equal(c.mem_mib, 512);
	assert_int_equal(c.accel, ACCEL_TCG);
	template_config_clear(&c);
}

static void defaults(void **state)
{
	struct template_config c;
	char *err;

	(void)state;
	assert_int_equal(parse("{\"kernel\":\"/k\"}", &c, &err), 0);
	assert_int_equal(c.vcpus, 1);
	assert_int_equal(c.mem_mib, 256);
	assert_string_equal(c.backend, "qemu");
	assert_null(c.initrd);
	assert_int_equal(c.accel, ACCEL_AUTO);
	template_config_clear(&c);
}

static void roundtrip(void **state)
{
	struct template_config a, b;
	char *err, *s1, *s2;

	(void)state;
	assert_int_equal(parse("{\"kernel\":\"/k\",\"rootfs\":\"/r\",\"vcpus\":3}", &a, &err), 0);
	assert_int_equal(template_config_copy(&a, &b), 0);
	s1 = template_config_render(&a);
	s2 = template_config_render(&b);
	assert_string_equal(s1, s2);
	free(s1);
	free(s2);
	template_config_clear(&a);
	template_config_clear(&b);
}

static void net(void **state)
{
	struct template_config c, d;
	char *err, *s;

	(void)state;
	assert_int_equal(parse("{\"kernel\":\"/k\"}", &c, &err), 0);
	assert_false(c.net);
	s = template_config_render(&c);
	assert_null(strstr(s, "net")); /* configs without networking render as before */
	free(s);
	template_config_clear(&c);
	assert_int_equal(parse("{\"kernel\":\"/k\",\"net\":true,\"ready_tcp_port\":8080}", &c, &err), 0);
	assert_true(c.net);
	assert_int_equal(c.ready_tcp_port, 8080);
	assert_int_equal(template_config_copy(&c, &d), 0);
	assert_true(d.net);
	assert_int_equal(d.ready_tcp_port, 8080);
	template_config_clear(&c);
	template_config_clear(&d);
}

static void rejects(void **state)
{
	static const char *const bad[] = {
		"",
		"{",
		"not json",
		"[1,2]",
		"{\"kernel\":\"/k\"} trailing",
		"{}",
		"{\"kernel\":\"relative\"}",
		"{\"kernel\":\"/a/../b\"}",
		"{\"kernel\":\"/a,b\"}",
		"{\"kernel\":5}",
		"{\"kernel\":\"/k\",\"vcpus\":0}",
		"{\"kernel\":\"/k\",\"vcpus\":\"2\"}",
		"{\"kernel\":\"/k\",\"mem_mib\":1}",
		"{\"kernel\":\"/k\",\"backend\":\"firecracker\"}",
		"{\"kernel\":\"/k\",\"accel\":\"hvf\"}",
		"{\"kernel\":\"/k\",\"unknown\":1}",
		"{\"kernel\":\"/k\",\"cmdline\":\"a\\nb\"}",
		"{\"kernel\":\"/k\",\"net\":1}",
		"{\"kernel\":\"/k\",\"net\":\"yes\"}",
		"{\"kernel\":\"/k\",\"ready_tcp_port\":8080}",
		"{\"kernel\":\"/k\",\"net\":true,\"ready_tcp_port\":65536}",
		"{\"kernel\":\"/k\",\"net\":true,\"ready_tcp_port\":-1}",
		"{\"kernel\":\"/k\",\"idle_timeout_s\":-5}",
		"{\"kernel\":\"/k\",\"derived_from\":\"\"}",
		"{\"kernel\":\"/k\",\"derived_from\":7}",
		/* building templates */
		"{\"kernel\":\"/k\",\"image\":\"\"}",
		"{\"kernel\":\"/k\",\"image\":\"nosuchtransport:x\"}",
		"{\"kernel\":\"/k\",\"image\":\"oci:relative/path\"}",
		"{\"kernel\":\"/k\",\"image\":\"oci:/l:t\",\"rootfs\":\"/r\"}",
		"{\"kernel\":\"/k\",\"image\":5}",
		"{\"kernel\":\"/k\",\"disk_mib\":63}",
		"{\"kernel\":\"/k\",\"context\":\"rel\"}",
		"{\"kernel\":\"/k\",\"start\":\"\"}",
		"{\"kernel\":\"/k\",\"start\":[]}",
		"{\"kernel\":\"/k\",\"start\":[\"/a\",5]}",
		"{\"kernel\":\"/k\",\"start\":{\"argv\":[\"/a\"]}}",
		"{\"kernel\":\"/k\",\"ready\":{\"tcp\":80}}",
		"{\"kernel\":\"/k\",\"start\":\"s\",\"ready\":{\"tcp\":0}}",
		"{\"kernel\":\"/k\",\"start\":\"s\",\"ready\":{\"tcp\":80,\"cmd\":\"c\"}}",
		"{\"kernel\":\"/k\",\"start\":\"s\",\"ready\":{\"http\":80}}",
		"{\"kernel\":\"/k\",\"warm\":\"\"}",
		"{\"kernel\":\"/k\",\"warm\":[\"python3\"]}",
	};
	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct template_config c;
		char *err;

		assert_int_equal(parse(bad[i], &c, &err), -EINVAL);
		assert_non_null(err);
		assert_null(c.kernel); /* nothing half-parsed is left */
		free(err);
	}
}

/* "backend" names a driver built in; the refusal lists them; each declares its RAM model and restore capability */
static void backends(void **state)
{
	struct template_config c;
	const struct vmm_ops *q = vmm_driver("qemu");
	char *err = NULL;

	(void)state;
	assert_non_null(q);
	assert_true(q->ram_base);
	assert_string_equal(q->restore_capability, "qemu-x-ignore-shared-v1");
	assert_ptr_equal(vmm_drivers_builtin()[0], q);
	assert_null(vmm_drivers_builtin()[1]); /* keep in step with drivers.c */
	assert_null(vmm_driver("firecracker"));
	assert_null(vmm_driver(NULL));
	assert_int_equal(parse("{\"kernel\":\"/k\",\"backend\":\"firecracker\"}", &c, &err), -EINVAL);
	assert_string_equal(err, "config: \"backend\" must be a driver built in: \"qemu\"");
	free(err);
	assert_int_equal(parse("{\"kernel\":\"/k\",\"backend\":\"qemu\"}", &c, &err), 0);
	assert_string_equal(c.backend, "qemu");
	template_config_clear(&c);
	assert_int_equal(parse("{\"kernel\":\"/k\"}", &c, &err), 0);
	assert_string_equal(c.backend, TEMPLATE_DEFAULT_BACKEND);
	template_config_clear(&c);
}

/* an engine given its own drivers (engine_options.drivers) checks "backend" against those only */
static void backends_given(void **state)
{
	static const struct vmm_ops other = { .name = "other" };
	const struct vmm_ops *const list[] = { &other, NULL };
	struct template_config c = { 0 };
	char names[64], *err = NULL;
	const char *cfg = "{\"kernel\":\"/k\",\"backend\":\"qemu\"}";

	(void)state;
	assert_ptr_equal(vmm_driver_in(list, "other"), &other);
	assert_null(vmm_driver_in(list, "qemu"));
	assert_ptr_equal(vmm_driver_in(NULL, "qemu"), vmm_driver("qemu"));
	assert_ptr_equal(vmm_drivers_builtin()[0], vmm_driver("qemu"));
	vmm_driver_names_in(list, names, sizeof(names));
	assert_string_equal(names, "\"other\"");
	assert_int_equal(template_config_parse_drivers(cfg, strlen(cfg), list, &c, &err), -EINVAL);
	assert_string_equal(err, "config: \"backend\" must be a driver built in: \"other\"");
	free(err);
	memset(&c, 0, sizeof(c));
	cfg = "{\"kernel\":\"/k\",\"backend\":\"other\"}";
	assert_int_equal(template_config_parse_drivers(cfg, strlen(cfg), list, &c, &err), 0);
	assert_string_equal(c.backend, "other");
	template_config_clear(&c);
}

/* start as a shell line or an argv, ready, warm, image: parsed, copied and rendered back as written */
static void building(void **state)
{
	struct template_config c, d;
	char *err, *s;

	(void)state;
	assert_int_equal(parse("{\"kernel\":\"/k\",\"image\":\"oci:/l:t\",\"disk_mib\":128,\"context\":\"/ctx\","
			       "\"start\":[\"/srv\",\"--port\",\"8080\"],\"ready\":{\"tcp\":8080},\"warm\":\"true\"}",
			       &c, &err),
			 0);
	assert_true(c.start_argv);
	assert_string_equal(c.start, "{\"argv\":[\"/srv\",\"--port\",\"8080\"]}"); /* what procs/ID/cmd takes */
	assert_int_equal(c.ready_tcp, 8080);
	assert_string_equal(c.warm, "true");
	assert_int_equal(c.disk_mib, 128);
	s = template_config_render(&c);
	assert_non_null(strstr(s, "\"start\":[\n"));
	free(s);
	assert_int_equal(template_config_copy(&c, &d), 0);
	assert_true(d.start_argv);
	assert_string_equal(d.start, c.start);
	template_config_clear(&c);
	template_config_clear(&d);
	assert_int_equal(parse("{\"kernel\":\"/k\",\"start\":\"srv --port 8080\",\"ready\":{\"cmd\":\"true\"}}", &c, &err), 0);
	assert_false(c.start_argv);
	assert_string_equal(c.start, "srv --port 8080");
	assert_string_equal(c.ready_cmd, "true");
	template_config_clear(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_full),
		cmocka_unit_test(defaults),
		cmocka_unit_test(roundtrip),
		cmocka_unit_test(rejects),
		cmocka_unit_test(net),
		cmocka_unit_test(building),
		cmocka_unit_test(backends),
		cmocka_unit_test(backends_given),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
