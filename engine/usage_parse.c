/*
 * The usage file's parsers and CPU figure (usage.h): pure, no engine state,
 * so the unit test and the fuzzer (tests/fuzz/fuzz_usage.c) link them alone.
 * The meminfo text is the guest's: hostile input.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "usage.h"

#define KB_MAX (1ull << 40) /* 1 PiB in kB: no figure is larger */

/* The value of "Key:" at the start of a line of text, in kB; -ENOENT if absent, -EPROTO if malformed. */
static int kb_field(const char *text, size_t len, const char *key, uint64_t *ret)
{
	size_t kl = strlen(key);
	const char *p = text, *end = text + len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;

		if ((size_t)(le - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == ':') {
			uint64_t v = 0;
			const char *q = p + kl + 1;
			bool digits = false;

			while (q < le && *q == ' ')
				q++;
			for (; q < le && *q >= '0' && *q <= '9'; q++) {
				v = v * 10 + (uint64_t)(*q - '0');
				digits = true;
				if (v >= KB_MAX)
					return -EPROTO;
			}
			if (!digits || le - q != 3 || memcmp(q, " kB", 3) != 0)
				return -EPROTO;
			*ret = v;
			return 0;
		}
		p = le + 1;
	}
	return -ENOENT;
}

int usage_parse_meminfo(const char *text, size_t len, struct usage_guest *ret)
{
	uint64_t total, fr, avail, buffers = 0, cached = 0;
	int r;

	if ((r = kb_field(text, len, "MemTotal", &total)) < 0 || (r = kb_field(text, len, "MemFree", &fr)) < 0 ||
	    (r = kb_field(text, len, "MemAvailable", &avail)) < 0)
		return -EPROTO;
	r = kb_field(text, len, "Buffers", &buffers);
	if (r < 0 && r != -ENOENT)
		return r;
	r = kb_field(text, len, "Cached", &cached);
	if (r < 0 && r != -ENOENT)
		return r;
	if (total == 0 || fr > total || avail > total || buffers + cached > total)
		return -EPROTO;
	ret->mem_total = total * 1024;
	ret->mem_free = fr * 1024;
	ret->mem_available = avail * 1024;
	ret->mem_cache = (buffers + cached) * 1024;
	return 0;
}

int usage_parse_smaps_rollup(const char *text, size_t len, uint64_t *ret_rss, uint64_t *ret_pss)
{
	uint64_t rss, pss;

	if (kb_field(text, len, "Rss", &rss) < 0 || kb_field(text, len, "Pss", &pss) < 0)
		return -EPROTO;
	*ret_rss = rss * 1024;
	*ret_pss = pss * 1024;
	return 0;
}

int usage_parse_stat(const char *text, size_t len, uint64_t *ret_cpu_ticks, uint64_t *ret_start_ticks)
{
	_cleanup_free_ char *copy = strndup(text, len);
	uint64_t f[20];
	char *p, *tok, *save = NULL;
	unsigned n = 0;

	if (!copy)
		return -ENOMEM;
	/* "pid (comm) state ppid ...": comm may hold anything, so fields start after the last ')' */
	p = strrchr(copy, ')');
	if (!p)
		return -EPROTO;
	for (tok = strtok_r(p + 1, " \n", &save); tok && n < 20; tok = strtok_r(NULL, " \n", &save), n++) {
		char *end;

		if (n == 0)
			continue; /* the state letter */
		errno = 0;
		f[n] = strtoull(tok, &end, 10);
		if (*end || errno || tok[0] == '-')
			f[n] = 0; /* signed fields we do not use */
	}
	if (n < 20)
		return -EPROTO;
	/* fields 14 utime, 15 stime, 22 starttime (proc(5)); f[0] is field 3 */
	*ret_cpu_ticks = f[11] + f[12];
	*ret_start_ticks = f[19];
	return 0;
}

void usage_cpu_update(struct sandbox_usage *u, pid_t pid, uint64_t cpu_ticks, uint64_t start_ticks, uint64_t now_ns,
		      unsigned hz, unsigned min_ms)
{
	uint64_t ref_ns;

	if (!hz)
		return;
	if (u->cpu_pid != pid) {
		u->cpu_pid = pid;
		u->cpu_ref_ns = start_ticks * (1000000000ull / hz);
		u->cpu_ref_ticks = 0;
		u->interval_ms = 0;
		u->percent = 0;
	}
	ref_ns = u->cpu_ref_ns;
	if (now_ns <= ref_ns || cpu_ticks < u->cpu_ref_ticks)
		return; /* nothing measurable yet (or a clock that went back): the last figure stands */
	if (u->interval_ms > 0 && now_ns - ref_ns < (uint64_t)min_ms * 1000000)
		return;
	u->interval_ms = ns_to_ms(now_ns - ref_ns);
	u->percent = (double)(cpu_ticks - u->cpu_ref_ticks) * 1e3 / hz / u->interval_ms * 100.0;
	u->cpu_ref_ns = now_ns;
	u->cpu_ref_ticks = cpu_ticks;
}
