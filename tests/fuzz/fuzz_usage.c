/*
 * libFuzzer: the usage file's parsers (engine/usage_parse.c): the guest's
 * /proc/meminfo (hostile: a guest answers what it likes), and the host's
 * /proc/PID/smaps_rollup and /proc/PID/stat. The first byte picks the
 * parser; a figure accepted must be within the documented bounds.
 */
#include <stdint.h>
#include <stdlib.h>

#include "usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data + 1;
	size_t len = size ? size - 1 : 0;
	struct usage_guest g = { 0 };
	uint64_t a, b;

	if (size == 0)
		return 0;
	switch (data[0] % 3) {
	case 0:
		if (usage_parse_meminfo(text, len, &g) == 0 &&
		    (g.mem_total == 0 || g.mem_total >= (1ull << 50) || g.mem_free > g.mem_total ||
		     g.mem_available > g.mem_total || g.mem_cache > g.mem_total))
			abort();
		break;
	case 1:
		if (usage_parse_smaps_rollup(text, len, &a, &b) == 0 && (a >= (1ull << 50) || b >= (1ull << 50)))
			abort();
		break;
	case 2:
		usage_parse_stat(text, len, &a, &b);
		break;
	}
	return 0;
}
