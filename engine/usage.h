/*
 * A sandbox's resource usage (usage.c; docs/interface.md, "usage"): what
 * struct sandbox keeps of it, and the pure parsers of the text it is read
 * from (usage_parse.c; tests/unit/test_usage.c, tests/fuzz/fuzz_usage.c).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The guest's own figures as its last sample gave them (bytes). */
struct usage_guest {
	uint64_t sampled_unix_ms; /* 0: never sampled */
	uint64_t mem_total, mem_free, mem_available, mem_cache;
	uint64_t disk_total, disk_free, disk_avail;
};

/* Protected by e->lock (struct sandbox's usage). */
struct sandbox_usage {
	struct usage_guest guest; /* kept in the record */
	uint64_t retry_ns;	  /* monotonic: no guest sample before (one failed) */
	/* the CPU reference: the VMM's CPU time at a time (CLOCK_BOOTTIME) */
	pid_t cpu_pid;		  /* the VMM it is of; 0: none */
	uint64_t cpu_ref_ns, cpu_ref_ticks;
	double percent, interval_ms; /* the last figure; interval 0: none yet */
};

/*
 * The guest's /proc/meminfo (len bytes, any content): MemTotal, MemFree,
 * MemAvailable, Buffers + Cached, in bytes. -EPROTO unless the first three
 * are there, each a decimal number of kB below 2^40 kB, with free and
 * available at most the total and cache at most the total. Fills only mem_*.
 */
int usage_parse_meminfo(const char *text, size_t len, struct usage_guest *ret);
/* /proc/PID/smaps_rollup: Rss and Pss in bytes; -EPROTO if either is missing. */
int usage_parse_smaps_rollup(const char *text, size_t len, uint64_t *ret_rss, uint64_t *ret_pss);
/*
 * /proc/PID/stat: utime + stime and starttime, in clock ticks; -EPROTO if
 * the line is not one (the command name may hold spaces and parentheses).
 */
int usage_parse_stat(const char *text, size_t len, uint64_t *ret_cpu_ticks, uint64_t *ret_start_ticks);
/*
 * A CPU figure (pure): the VMM's CPU time cpu_ticks at now_ns (both
 * CLOCK_BOOTTIME ns, hz ticks a second) against the reference in u, which
 * it moves forward when the interval is at least min_ms (or there is no
 * figure yet); a new pid starts the reference at the process's start
 * (start_ticks) with no CPU time. Writes u->percent (100: one host CPU) and
 * u->interval_ms.
 */
void usage_cpu_update(struct sandbox_usage *u, pid_t pid, uint64_t cpu_ticks, uint64_t start_ticks, uint64_t now_ns,
		      unsigned hz, unsigned min_ms);
