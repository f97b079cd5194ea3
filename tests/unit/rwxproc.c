/*
 * A stand-in for a VMM's translation buffer (test_ram.c): `rwxproc N GAP`
 * maps N private anonymous rwx regions of 64 pages in a row, GAP read-only
 * pages after each (QEMU leaves one: a guard), puts "code" in pages 0 and 7
 * of the first, writes its address to stdout and waits to be killed. A
 * program of its own, exec'd: under valgrind a forked test process holds
 * valgrind's own rwx mappings too.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1, gap = argc > 2 ? atoi(argv[2]) : 1;
	uint8_t *p = mmap(NULL, (size_t)n * (64 + gap) * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED || n < 1 || gap < 1)
		return 1;
	for (int i = 0; i < n; i++)
		if (mprotect(p + (size_t)i * (64 + gap) * PG, 64 * PG, PROT_READ | PROT_WRITE | PROT_EXEC) < 0)
			return 1;
	memset(p, 0xc3, PG);
	memset(p + 7 * PG, 0x90, PG);
	if (printf("%p\n", (void *)p) < 0 || fflush(stdout) != 0)
		return 1;
	for (;;)
		pause();
}
