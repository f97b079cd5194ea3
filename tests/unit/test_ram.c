/*
 * Guest RAM shared between clones (engine/ram.c): the sealed base, finding
 * it in a process, writing back the pages a process copied on write; a
 * VMM's translation buffer faulted in before its first run; and
 * the QEMU stream head a device-state-only snapshot is prefixed with.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "internal.h"
#include "ram.h"

#define PG 4096
#define SIZE (4u << 20)

static char src[] = "/tmp/emberfs-test-ram-XXXXXX";

/* A 4 MiB file: page 0 and pages 256..258 hold data, the rest is a hole. */
static int setup(void **state)
{
	int fd = mkstemp(src);
	uint8_t page[PG];

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, SIZE), 0);
	memset(page, 0x11, sizeof(page));
	assert_int_equal(pwrite(fd, page, PG, 0), PG);
	for (int i = 256; i < 259; i++) {
		memset(page, i & 0xff, sizeof(page));
		assert_int_equal(pwrite(fd, page, PG, (off_t)i * PG), PG);
	}
	close(fd);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(src);
	return 0;
}

static void same_as_src(int fd)
{
	int s = open(src, O_RDONLY);
	static uint8_t a[SIZE], b[SIZE];

	assert_true(s >= 0);
	assert_int_equal(pread(s, a, SIZE, 0), SIZE);
	assert_int_equal(pread(fd, b, SIZE, 0), SIZE);
	assert_memory_equal(a, b, SIZE);
	close(s);
}

/* The base holds the file's bytes, copies only its data, and nothing can change it. */
static void base_sealed(void **state)
{
	uint64_t copied = 0;
	int fd = -1;
	void *p;

	(void)state;
	assert_int_equal(ram_base_create(src, SIZE, &fd, &copied), 0);
	assert_int_equal(copied, 4 * PG);
	same_as_src(fd);
	assert_int_equal(write(fd, "x", 1), -1);
	assert_int_equal(errno, EPERM);
	assert_int_equal(ftruncate(fd, SIZE / 2), -1);
	assert_int_equal(ftruncate(fd, SIZE * 2), -1);
	assert_true(mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED);
	/* a private writable mapping is what a VMM makes: allowed, and its writes stay its own */
	p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	assert_true(p != MAP_FAILED);
	memset(p, 0x77, PG);
	munmap(p, SIZE);
	same_as_src(fd);
	close(fd);
	/* 0: the file's own size; a wrong size is refused */
	assert_int_equal(ram_base_create(src, 0, &fd, NULL), 0);
	close(fd);
	assert_int_equal(ram_base_create(src, SIZE + PG, &fd, NULL), -EINVAL);
	assert_int_equal(ram_base_create("/nonexistent/emberfs", SIZE, &fd, NULL), -ENOENT);
}

/* A new file from template tmp holding src's bytes (a sandbox's memory file: a clone of the snapshot's); also into want. */
static int copy_of_src(char *tmp, uint8_t *want)
{
	int out = mkstemp(tmp), s = open(src, O_RDONLY);

	assert_true(out >= 0 && s >= 0);
	assert_int_equal(pread(s, want, SIZE, 0), SIZE);
	assert_int_equal(pwrite(out, want, SIZE, 0), SIZE);
	close(s);
	return out;
}

/*
 * A child that maps base privately (as QEMU does with share=off), runs
 * touch on the mapping, sends the byte touch returns (*ret) and is then
 * stopped; its pid.
 */
static pid_t stopped_child(int base, uint8_t (*touch)(volatile uint8_t *p), uint8_t *ret)
{
	int st, pfd[2];
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		volatile uint8_t *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, base, 0);
		uint8_t b;

		if (p == MAP_FAILED)
			_exit(1);
		b = touch(p);
		if (write(pfd[1], &b, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], ret, 1), 1);
	close(pfd[0]);
	kill(pid, SIGSTOP);
	assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
	return pid;
}

/* pages 3 and 10..12 written, page 256 read */
static uint8_t touch_write_back(volatile uint8_t *p)
{
	memset((void *)(p + 3 * PG), 0xa3, PG);
	for (int i = 10; i < 13; i++)
		memset((void *)(p + i * PG), 0xa0 + i, PG);
	return p[256 * PG];
}

/*
 * A child maps the base privately (as QEMU does with share=off), writes
 * pages 3 and 10..12, reads page 256 and stops: its own pages, and only
 * those, are written back.
 */
static void write_back(void **state)
{
	static uint8_t want[SIZE], got[SIZE];
	uint64_t addr = 0, len = 0, pages = 0;
	int base = -1, out, st;
	char tmp[] = "/tmp/emberfs-test-ramout-XXXXXX";
	uint8_t c;
	pid_t pid;

	(void)state;
	assert_int_equal(ram_base_create(src, SIZE, &base, NULL), 0);
	pid = stopped_child(base, touch_write_back, &c);
	assert_int_equal(c, 0);
	assert_int_equal(ram_base_find(pid, &addr, &len, NULL), 0);
	assert_int_equal(len, SIZE);
	out = copy_of_src(tmp, want);
	assert_int_equal(ram_write_private(pid, addr, len, out, &pages, NULL), 0);
	assert_int_equal(pages, 4);
	memset(want + 3 * PG, 0xa3, PG);
	for (int i = 10; i < 13; i++)
		memset(want + i * PG, 0xa0 + i, PG);
	assert_int_equal(pread(out, got, SIZE, 0), SIZE);
	assert_memory_equal(want, got, SIZE);
	/* bad ranges */
	assert_int_equal(ram_write_private(pid, addr + 1, len, out, NULL, NULL), -EINVAL);
	assert_int_equal(ram_write_private(pid, addr, len - 1, out, NULL, NULL), -EINVAL);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	assert_int_equal(ram_write_private(pid, addr, len, out, NULL, NULL), -ENOENT);
	close(out);
	unlink(tmp);
	close(base);
}

/* every page read (present from the file) */
static uint8_t touch_read_all(volatile uint8_t *p)
{
	uint8_t sum = 0;

	for (size_t i = 0; i < SIZE; i += PG)
		sum += p[i];
	return sum;
}

/* page 1, 255..257 (across data and hole) and the last page written */
static uint8_t touch_delta(volatile uint8_t *p)
{
	memset((void *)(p + 1 * PG), 0xb1, PG);
	for (int i = 255; i < 258; i++)
		memset((void *)(p + i * PG), 0xc0 + (i & 0xf), PG);
	memset((void *)(p + (SIZE - PG)), 0xee, PG);
	return 0;
}

/*
 * A fork on a spare: the pages one process wrote on the base (its delta,
 * noted while they are written back) are written into another process
 * mapping the same base, which then reads exactly the first one's RAM; a
 * delta of another base or size is refused, and the second process's pages
 * that were not in it stay the base's.
 */
static void load_delta(void **state)
{
	static uint8_t want[SIZE], got[SIZE];
	uint64_t addr = 0, len = 0, addr2 = 0, len2 = 0, pages = 0;
	struct ram_delta d = { 0 }, bad;
	struct ram_base_id id, id2, of;
	int base = -1, other = -1, out, mem, st;
	char tmp[] = "/tmp/emberfs-test-ramdelta-XXXXXX";
	uint8_t c;
	pid_t a, b;

	(void)state;
	assert_int_equal(ram_base_create(src, SIZE, &base, NULL), 0);
	a = stopped_child(base, touch_delta, &c);
	assert_int_equal(ram_base_find(a, &addr, &len, &id), 0);
	assert_int_equal(ram_base_id_of(base, &of), 0);
	assert_true(ram_base_id_equal(&id, &of));
	out = copy_of_src(tmp, want);
	d.base = id;
	assert_int_equal(ram_write_private(a, addr, len, out, &pages, &d), 0);
	assert_int_equal(pages, 5);
	assert_int_equal(d.pages, 5);
	assert_int_equal(d.len, SIZE);
	assert_int_equal(d.n, 3);
	assert_true(d.runs[0][0] == 1 && d.runs[0][1] == 1);
	assert_true(d.runs[1][0] == 255 && d.runs[1][1] == 3);
	assert_true(d.runs[2][0] == SIZE / PG - 1 && d.runs[2][1] == 1);
	kill(a, SIGKILL);
	waitpid(a, &st, 0);

	/* another process on the same base: given the delta from the file, it reads what a had */
	b = stopped_child(base, touch_read_all, &c);
	assert_int_equal(ram_base_find(b, &addr2, &len2, &id2), 0);
	assert_true(ram_base_id_equal(&id2, &id));
	bad = d;
	bad.len = SIZE / 2;
	assert_int_equal(ram_load_delta(b, addr2, len2, out, &bad), -EXDEV);
	assert_int_equal(ram_load_delta(b, addr2, len2, out, &d), 0);
	assert_int_equal(pread(out, want, SIZE, 0), SIZE);
	{
		char path[64];

		snprintf(path, sizeof(path), "/proc/%d/mem", (int)b);
		mem = open(path, O_RDONLY);
		assert_true(mem >= 0);
		assert_int_equal(pread(mem, got, SIZE, (off_t)addr2), SIZE);
		close(mem);
	}
	assert_memory_equal(want, got, SIZE);
	/* written on write: those pages are its own now, the others still the base's */
	{
		struct ram_delta d2 = { 0 };
		char tmp2[] = "/tmp/emberfs-test-ramdelta2-XXXXXX";
		int out2 = mkstemp(tmp2);

		assert_true(out2 >= 0);
		assert_int_equal(ftruncate(out2, SIZE), 0);
		assert_int_equal(ram_write_private(b, addr2, len2, out2, NULL, &d2), 0);
		assert_int_equal(d2.pages, 5);
		assert_int_equal(d2.n, 3);
		ram_delta_free(&d2);
		close(out2);
		unlink(tmp2);
	}
	/* a run past the mapping is refused */
	bad.len = SIZE;
	bad.runs[2][0] = SIZE / PG;
	assert_int_equal(ram_load_delta(b, addr2, len2, out, &bad), -EINVAL);
	kill(b, SIGKILL);
	waitpid(b, &st, 0);
	/* a different base: another id */
	assert_int_equal(ram_base_create(src, SIZE, &other, NULL), 0);
	assert_int_equal(ram_base_id_of(other, &of), 0);
	assert_true(of.ino != id.ino);
	ram_delta_free(&d);
	assert_int_equal(d.n, 0);
	close(other);
	close(out);
	unlink(tmp);
	close(base);
}

/* None mapped, or more than one: never a guess. */
static void find_exactly_one(void **state)
{
	uint64_t addr, len;
	int base = -1;
	void *a, *b;

	(void)state;
	assert_int_equal(ram_base_find(getpid(), &addr, &len, NULL), -ENOENT);
	assert_int_equal(ram_base_create(src, SIZE, &base, NULL), 0);
	a = mmap(NULL, SIZE, PROT_READ, MAP_PRIVATE, base, 0);
	assert_true(a != MAP_FAILED);
	assert_int_equal(ram_base_find(getpid(), &addr, &len, NULL), 0);
	assert_int_equal(addr, (uint64_t)(uintptr_t)a);
	assert_int_equal(len, SIZE);
	b = mmap(NULL, PG, PROT_READ, MAP_PRIVATE, base, 0);
	assert_true(b != MAP_FAILED);
	assert_int_equal(ram_base_find(getpid(), &addr, &len, NULL), -EEXIST);
	munmap(a, SIZE);
	munmap(b, PG);
	close(base);
	assert_int_equal(ram_base_find(999999999, &addr, &len, NULL), -ENOENT);
}

/*
 * A lazy file (a path ending in RAM_LAZY_SUFFIX) mapped privately is a base
 * too; a child that wrote pages 3 and 10 and read page 256: ram_write_all
 * writes the whole RAM into an empty file, every page that is not all
 * zeros, holes elsewhere.
 */
static void lazy_write_all(void **state)
{
	static uint8_t want[SIZE], got[SIZE];
	char lazy[] = "/tmp/emberfs-test-lazy-XXXXXX" RAM_LAZY_SUFFIX;
	char tmp[] = "/tmp/emberfs-test-ramall-XXXXXX";
	uint64_t addr = 0, len = 0, pages = 0;
	int lfd, out, st, pfd[2];
	struct stat sb;
	pid_t pid;

	(void)state;
	lfd = mkstemps(lazy, (int)strlen(RAM_LAZY_SUFFIX));
	assert_true(lfd >= 0);
	{
		int s = open(src, O_RDONLY);
		assert_int_equal(pread(s, want, SIZE, 0), SIZE);
		assert_int_equal(pwrite(lfd, want, SIZE, 0), SIZE);
		close(s);
	}
	assert_false(ram_maps_lazy(getpid()));
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		volatile uint8_t *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, lfd, 0);
		uint8_t c;

		if (p == MAP_FAILED)
			_exit(1);
		memset((void *)(p + 3 * PG), 0xa3, PG);
		memset((void *)(p + 10 * PG), 0xaa, PG);
		c = p[256 * PG];
		if (write(pfd[1], &c, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(pfd[1]);
	{
		uint8_t c;
		assert_int_equal(read(pfd[0], &c, 1), 1);
	}
	close(pfd[0]);
	kill(pid, SIGSTOP);
	assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
	assert_true(ram_maps_lazy(pid));
	assert_int_equal(ram_base_find(pid, &addr, &len, NULL), 0);
	assert_int_equal(len, SIZE);
	out = mkstemp(tmp);
	assert_true(out >= 0);
	assert_int_equal(ram_write_all(pid, addr, len, out, &pages), 0);
	memset(want + 3 * PG, 0xa3, PG);
	memset(want + 10 * PG, 0xaa, PG);
	/* the pages that are not all zeros: page 0, 257 and 258 of the source (256 holds zeros) and the two written */
	assert_int_equal(pages, 5);
	assert_int_equal(fstat(out, &sb), 0);
	assert_int_equal(sb.st_size, SIZE);
	assert_true((uint64_t)sb.st_blocks * 512 < SIZE / 2); /* sparse: zero pages are holes */
	assert_int_equal(pread(out, got, SIZE, 0), SIZE);
	assert_memory_equal(want, got, SIZE);
	assert_int_equal(ram_write_all(pid, addr + 1, len, out, NULL), -EINVAL);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	assert_false(ram_maps_lazy(pid));
	close(out);
	unlink(tmp);
	close(lfd);
	unlink(lazy);
}

/* The head of a QEMU 7.2 stream with x-ignore-shared, as a bake writes it, then a section. */
/*
 * A process with a translation buffer (private anonymous rwx mappings of
 * 64 pages, tests/unit/rwxproc.c) whose first region's pages 0 and 7 hold
 * code: ram_code_buffer_find finds its regions, and ram_populate_anon over
 * the first 32 pages faults in the 30 others there, zero, and leaves the two
 * with code as they were; a second pass finds nothing to do. rwx mappings
 * that are not one run of regions with one-page guards are not guessed
 * between.
 */
static pid_t rwx_child(const char *n_maps, const char *gap, uint64_t *ret_addr)
{
	char line[64] = "";
	int pfd[2];
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion leaves no process behind */
		if (dup2(pfd[1], 1) < 0)
			_exit(127);
		execl(RWXPROC_BINARY, RWXPROC_BINARY, n_maps, gap, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	n = read(pfd[0], line, sizeof(line) - 1);
	close(pfd[0]);
	assert_true(n > 0);
	*ret_addr = strtoull(line, NULL, 16);
	return pid;
}

static uint64_t pagemap_entry(pid_t pid, uint64_t addr)
{
	char path[64];
	uint64_t e = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &e, sizeof(e), (off_t)(addr / PG * 8)), sizeof(e));
	close(fd);
	return e;
}

static void populate_code_buffer(void **state)
{
	static uint8_t got[64 * PG];
	uint64_t regions[2][2], addr, pages = 0, where = 0;
	size_t n = 0;
	int st, mem;
	char path[64];
	pid_t pid;

	(void)state;
	pid = rwx_child("1", "1", &where);
	assert_int_equal(ram_code_buffer_find(pid, regions, 2, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(regions[0][0], where);
	assert_int_equal(regions[0][1], 64 * PG);
	addr = where;
	assert_false(pagemap_entry(pid, addr + 1 * PG) >> 63);
	assert_int_equal(ram_populate_anon(pid, addr, 32 * PG, &pages), 0);
	assert_int_equal(pages, 30);
	for (int i = 0; i < 64; i++)
		assert_int_equal(pagemap_entry(pid, addr + (uint64_t)i * PG) >> 63, i < 32);
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	mem = open(path, O_RDONLY);
	assert_true(mem >= 0);
	assert_int_equal(pread(mem, got, sizeof(got), (off_t)addr), sizeof(got));
	close(mem);
	for (int i = 0; i < 64; i++) {
		uint8_t want = i == 0 ? 0xc3 : i == 7 ? 0x90 : 0;

		for (int b = 0; b < PG; b += 511)
			assert_int_equal(got[i * PG + b], want);
	}
	assert_int_equal(ram_populate_anon(pid, addr, 32 * PG, &pages), 0);
	assert_int_equal(pages, 0);
	assert_int_equal(ram_populate_anon(pid, addr + 1, 32 * PG, NULL), -EINVAL);
	assert_int_equal(ram_populate_anon(pid, addr, 32 * PG - 1, NULL), -EINVAL);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	assert_int_equal(ram_code_buffer_find(pid, regions, 2, &n), -ENOENT);
	assert_int_equal(ram_populate_anon(pid, addr, PG, NULL), -ENOENT);

	/* a buffer cut into three regions (a VMM with several vCPUs): the first two asked for */
	pid = rwx_child("3", "1", &where);
	assert_int_equal(ram_code_buffer_find(pid, regions, 2, &n), 0);
	assert_int_equal(n, 2);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(regions[i][0], where + (uint64_t)i * 65 * PG);
		assert_int_equal(regions[i][1], 64 * PG);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);

	/* two rwx mappings two pages apart: not one buffer */
	pid = rwx_child("2", "2", &where);
	assert_int_equal(ram_code_buffer_find(pid, regions, 2, &n), -EEXIST);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
}

static const uint8_t head[] = { 'Q', 'E', 'V', 'M', 0, 0, 0, 3, 0x07, 0, 0, 0, 7, 'm', 'i', 'c', 'r', 'o', 'v', 'm',
				0x05, 26, 'c', 'o', 'n', 'f', 'i', 'g', 'u', 'r', 'a', 't', 'i', 'o', 'n', '/',
				'c', 'a', 'p', 'a', 'b', 'i', 'l', 'i', 't', 'i', 'e', 's', 0, 0, 0, 1, 0, 0, 0, 1,
				15, 'x', '-', 'i', 'g', 'n', 'o', 'r', 'e', '-', 's', 'h', 'a', 'r', 'e', 'd', 0x01 };

static void stream_head(void **state)
{
	uint8_t b[256];
	size_t n = 0;

	(void)state;
	assert_int_equal(qemu_stream_head_len(head, sizeof(head), &n), 0);
	assert_int_equal(n, sizeof(head) - 1);
	/* no section after it, or cut anywhere: not a head */
	for (size_t cut = 0; cut < sizeof(head); cut++)
		assert_int_equal(qemu_stream_head_len(head, cut, &n), -EPROTO);
	/* another magic or version, no configuration section */
	memcpy(b, head, sizeof(head));
	b[7] = 2;
	assert_int_equal(qemu_stream_head_len(b, sizeof(head), &n), -EPROTO);
	memcpy(b, head, sizeof(head));
	b[8] = 0x01;
	assert_int_equal(qemu_stream_head_len(b, sizeof(head), &n), -EPROTO);
	/* a subsection it does not know: its length is not guessed */
	memcpy(b, head, sizeof(head));
	b[22] = 'C';
	assert_int_equal(qemu_stream_head_len(b, sizeof(head), &n), -EPROTO);
	/* a machine name longer than the stream, a capability count too large */
	memcpy(b, head, sizeof(head));
	b[9] = 0xff;
	assert_int_equal(qemu_stream_head_len(b, sizeof(head), &n), -EPROTO);
	memcpy(b, head, sizeof(head));
	b[55] = 200;
	assert_int_equal(qemu_stream_head_len(b, sizeof(head), &n), -EPROTO);
	/* the page-bits and uuid subsections are read by their sizes */
	{
		static const char pb[] = "configuration/target-page-bits";
		size_t k = sizeof(head) - 1, l = strlen(pb);

		memcpy(b, head, k);
		b[k++] = 0x05;
		b[k++] = (uint8_t)l;
		memcpy(b + k, pb, l);
		k += l;
		memset(b + k, 0, 4); /* version */
		k += 4;
		memset(b + k, 0, 4); /* bits */
		b[k + 3] = 12;
		k += 4;
		b[k++] = 0x04;
		assert_int_equal(qemu_stream_head_len(b, k, &n), 0);
		assert_int_equal(n, k - 1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(base_sealed),
		cmocka_unit_test(write_back),
		cmocka_unit_test(load_delta),
		cmocka_unit_test(find_exactly_one),
		cmocka_unit_test(lazy_write_all),
		cmocka_unit_test(populate_code_buffer),
		cmocka_unit_test(stream_head),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
