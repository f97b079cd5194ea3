/* The CPU figures of the VMMs' and the daemon's cgroups (engine/cgroup.c), as pure functions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "internal.h"

static void all_vmms(void **state)
{
	/* half a daemon thread's weight (v1 1024, v2 100), never a quota: one busy VMM would throttle all */
	struct cg_cpu v1 = cgroup_cpu_all_vmms(1), v2 = cgroup_cpu_all_vmms(2);

	(void)state;
	assert_int_equal(v1.weight, 512);
	assert_int_equal(v2.weight, 50);
	assert_int_equal(v1.quota_us, 0);
	assert_int_equal(v2.quota_us, 0);
	assert_true(v1.weight < cgroup_cpu_daemon(1).weight);
	assert_true(v2.weight < cgroup_cpu_daemon(2).weight);
}

static void one_vmm(void **state)
{
	struct cg_cpu c;

	(void)state;
	/* the same weight whatever the vCPUs: a wide guest gets no larger share */
	assert_int_equal(cgroup_cpu_vmm(1, 1, 2).weight, 1024);
	assert_int_equal(cgroup_cpu_vmm(1, 8, 2).weight, 1024);
	assert_int_equal(cgroup_cpu_vmm(2, 4, 64).weight, 100);
	/* a core per vCPU and one for the I/O thread on a big host */
	c = cgroup_cpu_vmm(1, 1, 16);
	assert_int_equal(c.quota_us, 200000);
	assert_int_equal(c.period_us, 100000);
	assert_int_equal(cgroup_cpu_vmm(2, 4, 64).quota_us, 500000);
	/* never the whole host: half a core stays (this project's 2-core machines: 1.5 cores) */
	assert_int_equal(cgroup_cpu_vmm(1, 1, 2).quota_us, 150000);
	assert_int_equal(cgroup_cpu_vmm(1, 2, 2).quota_us, 150000);
	assert_int_equal(cgroup_cpu_vmm(1, 7, 4).quota_us, 350000);
	/* a quarter of a 1-CPU host; a host of unknown size counts as one CPU */
	assert_int_equal(cgroup_cpu_vmm(1, 1, 1).quota_us, 75000);
	assert_int_equal(cgroup_cpu_vmm(2, 1, 0).quota_us, 75000);
}

static void daemon_group(void **state)
{
	(void)state;
	assert_int_equal(cgroup_cpu_daemon(1).weight, 1024);
	assert_int_equal(cgroup_cpu_daemon(2).weight, 100);
	assert_int_equal(cgroup_cpu_daemon(2).quota_us, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(all_vmms),
		cmocka_unit_test(one_vmm),
		cmocka_unit_test(daemon_group),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
