/*
 * The usage file's parsers and CPU figure (engine/usage_parse.c), as pure
 * functions: the guest's /proc/meminfo is hostile input, the host's /proc
 * files have names in them that may hold anything.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "usage.h"

#define KiB 1024ull

static int meminfo(const char *text, struct usage_guest *g)
{
	memset(g, 0, sizeof(*g));
	return usage_parse_meminfo(text, strlen(text), g);
}

static void meminfo_real(void **state)
{
	static const char text[] = "MemTotal:         223768 kB\n"
				   "MemFree:          181884 kB\n"
				   "MemAvailable:     186012 kB\n"
				   "Buffers:             104 kB\n"
				   "Cached:             3284 kB\n"
				   "SwapCached:        99999 kB\n"
				   "Active:             5000 kB\n"
				   "HugePages_Total:       0\n";
	struct usage_guest g;

	(void)state;
	assert_int_equal(meminfo(text, &g), 0);
	assert_int_equal(g.mem_total, 223768 * KiB);
	assert_int_equal(g.mem_free, 181884 * KiB);
	assert_int_equal(g.mem_available, 186012 * KiB);
	assert_int_equal(g.mem_cache, (104 + 3284) * KiB); /* not SwapCached */
	assert_int_equal(g.sampled_unix_ms, 0);		    /* only mem_* is filled */
	/* without Buffers and Cached: no cache */
	assert_int_equal(meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 20 kB", &g), 0);
	assert_int_equal(g.mem_cache, 0);
	assert_int_equal(g.mem_available, 20 * KiB);
}

static void meminfo_hostile(void **state)
{
	struct usage_guest g;

	(void)state;
	/* a required figure missing */
	assert_int_equal(meminfo("MemTotal: 100 kB\nMemFree: 10 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("", &g), -EPROTO);
	/* a key that only starts like one */
	assert_int_equal(meminfo("MemTotalX: 100 kB\nMemFree: 10 kB\nMemAvailable: 20 kB\n", &g), -EPROTO);
	/* not a number, a sign, no unit, another unit, trailing bytes */
	assert_int_equal(meminfo("MemTotal: abc kB\nMemFree: 10 kB\nMemAvailable: 20 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: -100 kB\nMemFree: 10 kB\nMemAvailable: 20 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 100\nMemFree: 10 kB\nMemAvailable: 20 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 100 MB\nMemFree: 10 kB\nMemAvailable: 20 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 100 kBx\nMemFree: 10 kB\nMemAvailable: 20 kB\n", &g), -EPROTO);
	/* too large (would overflow in bytes), and inconsistent figures */
	assert_int_equal(meminfo("MemTotal: 99999999999999999999999 kB\nMemFree: 1 kB\nMemAvailable: 1 kB\n", &g),
			 -EPROTO);
	assert_int_equal(meminfo("MemTotal: 1099511627776 kB\nMemFree: 1 kB\nMemAvailable: 1 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 100 kB\nMemFree: 101 kB\nMemAvailable: 20 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 101 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 20 kB\nBuffers: 60 kB\nCached: 60 kB\n",
				 &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 0 kB\nMemFree: 0 kB\nMemAvailable: 0 kB\n", &g), -EPROTO);
	assert_int_equal(meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 20 kB\nCached: x kB\n", &g), -EPROTO);
	/* a NUL inside: the length counts, not the string */
	{
		static const char t[] = "MemTotal: 100 kB\nMemFree: 1\0 kB\nMemAvailable: 20 kB\n";

		assert_int_equal(usage_parse_meminfo(t, sizeof(t) - 1, &g), -EPROTO);
	}
	/* the length bounds the text: a figure past it is not seen */
	{
		static const char t[] = "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 20 kB\n";

		assert_int_equal(usage_parse_meminfo(t, 30, &g), -EPROTO);
	}
}

static void smaps_rollup(void **state)
{
	static const char text[] = "55d0c0a00000-7ffd5e1f6000 ---p 00000000 00:00 0                          [rollup]\n"
				   "Rss:              175076 kB\n"
				   "Pss:              172154 kB\n"
				   "Pss_Anon:          10000 kB\n"
				   "Shared_Clean:       4000 kB\n";
	uint64_t rss = 0, pss = 0;

	(void)state;
	assert_int_equal(usage_parse_smaps_rollup(text, strlen(text), &rss, &pss), 0);
	assert_int_equal(rss, 175076 * KiB);
	assert_int_equal(pss, 172154 * KiB);
	assert_int_equal(usage_parse_smaps_rollup("Rss: 1 kB\n", 10, &rss, &pss), -EPROTO);
}

static void proc_stat(void **state)
{
	/* a command name with spaces and parentheses: fields start after the last ')' */
	static const char text[] = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 "
				   "1234 567 0 0 20 0 5 0 98765 1000000 2000 18446744073709551615\n";
	uint64_t cpu = 0, start = 0;

	(void)state;
	assert_int_equal(usage_parse_stat(text, strlen(text), &cpu, &start), 0);
	assert_int_equal(cpu, 1234 + 567);
	assert_int_equal(start, 98765);
	assert_int_equal(usage_parse_stat("4242 (qemu) S 1 2 3", 19, &cpu, &start), -EPROTO);
	assert_int_equal(usage_parse_stat("no parenthesis", 14, &cpu, &start), -EPROTO);
}

#define MS 1000000ull

static void cpu_percent(void **state)
{
	struct sandbox_usage u = { 0 };

	(void)state;
	/* hz 100; the VMM started at tick 1000 (10 s after boot); first read at 12 s with 1 s of CPU: 50% */
	usage_cpu_update(&u, 7, 100, 1000, 12000 * MS, 100, 500);
	assert_int_equal(u.cpu_pid, 7);
	assert_float_equal(u.interval_ms, 2000, 1e-6);
	assert_float_equal(u.percent, 50, 1e-6);
	/* 200 ms later: below the minimum, the figure stands and so does the reference */
	usage_cpu_update(&u, 7, 110, 1000, 12200 * MS, 100, 500);
	assert_float_equal(u.interval_ms, 2000, 1e-6);
	assert_float_equal(u.percent, 50, 1e-6);
	/* 1 s after the reference: 150 ticks in 1 s is one and a half host CPUs */
	usage_cpu_update(&u, 7, 250, 1000, 13000 * MS, 100, 500);
	assert_float_equal(u.interval_ms, 1000, 1e-6);
	assert_float_equal(u.percent, 150, 1e-6);
	/* a clock or a counter that goes back changes nothing */
	usage_cpu_update(&u, 7, 100, 1000, 14000 * MS, 100, 500);
	assert_float_equal(u.percent, 150, 1e-6);
	usage_cpu_update(&u, 7, 300, 1000, 12000 * MS, 100, 500);
	assert_float_equal(u.percent, 150, 1e-6);
	/* a new VMM (a wake): measured from its own start, whatever the old figure */
	usage_cpu_update(&u, 9, 10, 1450, 15000 * MS, 100, 500);
	assert_int_equal(u.cpu_pid, 9);
	assert_float_equal(u.interval_ms, 500, 1e-6);
	assert_float_equal(u.percent, 20, 1e-6);
	/* a VMM read at its very start has no figure yet; the next read gives one however soon */
	{
		struct sandbox_usage v = { 0 };

		usage_cpu_update(&v, 3, 0, 2000, 20000 * MS, 100, 500);
		assert_float_equal(v.interval_ms, 0, 1e-9);
		usage_cpu_update(&v, 3, 1, 2000, 20100 * MS, 100, 500);
		assert_float_equal(v.interval_ms, 100, 1e-6);
		assert_float_equal(v.percent, 10, 1e-6);
	}
	/* no clock rate: nothing */
	{
		struct sandbox_usage w = { 0 };

		usage_cpu_update(&w, 3, 10, 0, 1000 * MS, 0, 500);
		assert_int_equal(w.cpu_pid, 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(meminfo_real),	 cmocka_unit_test(meminfo_hostile), cmocka_unit_test(smaps_rollup),
		cmocka_unit_test(proc_stat),	 cmocka_unit_test(cpu_percent),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
