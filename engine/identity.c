/* The identity digest: everything that changes start-up, in a fixed canonical order. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static void put(struct sha256_ctx *c, const char *key, const char *val)
{
	/* Length-prefixed fields, so no two input sets serialize the same. */
	char hdr[64];
	size_t n = val ? strlen(val) : 0;

	snprintf(hdr, sizeof(hdr), "%s:%zu:", key, n);
	sha256_update(c, hdr, strlen(hdr));
	if (n)
		sha256_update(c, val, n);
	sha256_update(c, "\n", 1);
}

void identity_digest(const struct identity_inputs *in, char out[65])
{
	struct sha256_ctx c;
	uint8_t d[SHA256_LEN];
	char num[32];

	sha256_init(&c);
	put(&c, "emberfs-identity", "1");
	put(&c, "kernel", in->kernel_digest);
	put(&c, "initrd", in->initrd_digest);
	put(&c, "rootfs", in->rootfs_digest);
	put(&c, "cmdline", in->cmdline);
	snprintf(num, sizeof(num), "%u", in->vcpus);
	put(&c, "vcpus", num);
	snprintf(num, sizeof(num), "%u", in->mem_mib);
	put(&c, "mem_mib", num);
	put(&c, "backend", in->backend);
	put(&c, "accel", in->accel);
	put(&c, "vmm", in->vmm_version);
	put(&c, "restore", in->restore_capability);
	/* only when set: the identities of other templates stay what they were */
	if (in->derived)
		put(&c, "derived", in->derived);
	if (in->image)
		put(&c, "image", in->image);
	if (in->build)
		put(&c, "build", in->build);
	if (in->disk)
		put(&c, "disk", in->disk);
	if (in->start)
		put(&c, "start", in->start);
	if (in->warm)
		put(&c, "warm", in->warm);
	sha256_final(&c, d);
	sha256_hex(d, out);
}
