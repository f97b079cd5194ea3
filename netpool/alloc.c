/* The address allocator: a host range split into /30s, one per slot. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netpool.h"

static char *errf(const char *range, const char *why)
{
	char *s = NULL;

	if (asprintf(&s, "network range \"%s\": %s", range, why) < 0)
		return NULL;
	return s;
}

int np_alloc_init(struct np_alloc *a, const char *range, char **ret_error)
{
	char buf[32], *slash, *end;
	struct in_addr in;
	unsigned long prefix;
	uint32_t base, mask;

	memset(a, 0, sizeof(*a));
	if (!range || strlen(range) >= sizeof(buf)) {
		*ret_error = errf(range ? range : "", "expected A.B.C.D/PREFIX");
		return -EINVAL;
	}
	strcpy(buf, range);
	slash = strchr(buf, '/');
	if (!slash) {
		*ret_error = errf(range, "expected A.B.C.D/PREFIX");
		return -EINVAL;
	}
	*slash = '\0';
	errno = 0;
	prefix = strtoul(slash + 1, &end, 10);
	if (errno || end == slash + 1 || *end || inet_pton(AF_INET, buf, &in) != 1) {
		*ret_error = errf(range, "expected A.B.C.D/PREFIX");
		return -EINVAL;
	}
	if (prefix < 8 || prefix > 30) {
		*ret_error = errf(range, "the prefix must be 8 to 30 (one /30 per slot)");
		return -EINVAL;
	}
	base = ntohl(in.s_addr);
	mask = prefix == 0 ? 0 : ~0u << (32 - prefix);
	if (base & ~mask) {
		*ret_error = errf(range, "host bits set (not aligned to its prefix)");
		return -EINVAL;
	}
	a->base = base;
	a->prefix = (unsigned)prefix;
	a->n = 1u << (30 - prefix);
	a->bits = calloc((a->n + 63) / 64, sizeof(uint64_t));
	return a->bits ? 0 : -ENOMEM;
}

void np_alloc_free(struct np_alloc *a)
{
	free(a->bits);
	memset(a, 0, sizeof(*a));
}

int np_alloc_get(struct np_alloc *a)
{
	for (unsigned w = 0; w < (a->n + 63) / 64; w++) {
		if (a->bits[w] == ~0ull)
			continue;
		for (unsigned b = 0; b < 64; b++) {
			unsigned i = w * 64 + b;

			if (i >= a->n)
				return -ENOSPC;
			if (!(a->bits[w] & (1ull << b))) {
				a->bits[w] |= 1ull << b;
				a->used++;
				return (int)i;
			}
		}
	}
	return -ENOSPC;
}

int np_alloc_put(struct np_alloc *a, unsigned index)
{
	if (index >= a->n || !(a->bits[index / 64] & (1ull << (index % 64))))
		return -EINVAL;
	a->bits[index / 64] &= ~(1ull << (index % 64));
	a->used--;
	return 0;
}

int np_alloc_take(struct np_alloc *a, unsigned index)
{
	if (index >= a->n || (a->bits[index / 64] & (1ull << (index % 64))))
		return -EINVAL;
	a->bits[index / 64] |= 1ull << (index % 64);
	a->used++;
	return 0;
}

uint32_t np_alloc_host_addr(const struct np_alloc *a, unsigned index)
{
	return a->base + 4 * index + 1;
}

uint32_t np_alloc_inside_addr(const struct np_alloc *a, unsigned index)
{
	return a->base + 4 * index + 2;
}

bool np_overlap(uint32_t a, unsigned pa, uint32_t b, unsigned pb)
{
	unsigned p = pa < pb ? pa : pb;
	uint32_t mask = p == 0 ? 0 : ~0u << (32 - p);

	return (a & mask) == (b & mask);
}
