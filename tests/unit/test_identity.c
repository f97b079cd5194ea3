/* The identity digest: stable for the same inputs, different when any input changes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "engine.h"

static struct identity_inputs base(void)
{
	return (struct identity_inputs){ .kernel_digest = "k1", .initrd_digest = "i1", .rootfs_digest = "r1",
					 .cmdline = "console=ttyS0", .vcpus = 1, .mem_mib = 256,
					 .backend = "qemu", .accel = "tcg", .vmm_version = "QEMU 7.2",
					 .restore_capability = "cap1" };
}

static void stable(void **state)
{
	struct identity_inputs a = base(), b = base();
	char x[65], y[65];

	(void)state;
	identity_digest(&a, x);
	identity_digest(&b, y);
	assert_string_equal(x, y);
	assert_int_equal(strlen(x), 64);
	/* pinned (checked against an independent Python sha256 of the serialization): it is on-disk format */
	assert_string_equal(x, "6838889aa6b8494e398c5e2b64f961741ac171b652e7c4fd13198f591a787e19");
}

static void each_input_matters(void **state)
{
	char ref[65], got[65];
	struct identity_inputs in = base();

	(void)state;
	identity_digest(&in, ref);
#define CHANGE(field, val)                                    \
	do {                                                  \
		struct identity_inputs m = base();            \
		m.field = val;                                \
		identity_digest(&m, got);                     \
		assert_string_not_equal(ref, got);            \
	} while (0)
	CHANGE(kernel_digest, "k2");
	CHANGE(initrd_digest, "i2");
	CHANGE(rootfs_digest, "r2");
	CHANGE(cmdline, "console=ttyS1");
	CHANGE(vcpus, 2);
	CHANGE(mem_mib, 512);
	CHANGE(backend, "firecracker");
	CHANGE(accel, "kvm");
	CHANGE(vmm_version, "QEMU 8.0");
	CHANGE(restore_capability, "cap2");
	CHANGE(initrd_digest, "");
	CHANGE(derived, "default/a@2026-11-23T21:00:00.000Z"); /* a template made from a sandbox */
	CHANGE(derived, ""); /* present but empty differs from absent */
}

static void no_field_ambiguity(void **state)
{
	/* moving bytes between adjacent fields must change the digest */
	struct identity_inputs a = base(), b = base();
	char x[65], y[65];

	(void)state;
	a.kernel_digest = "ab";
	a.initrd_digest = "c";
	b.kernel_digest = "a";
	b.initrd_digest = "bc";
	identity_digest(&a, x);
	identity_digest(&b, y);
	assert_string_not_equal(x, y);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(stable),
		cmocka_unit_test(each_input_matters),
		cmocka_unit_test(no_field_ambiguity),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
