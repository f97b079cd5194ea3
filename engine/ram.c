/*
 * Guest RAM shared between the clones of one snapshot: the sealed base and
 * the write-back of a VMM's own pages (ram.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common.h"
#include "ram.h"

#define PAGE 4096u
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define PM_FILE (1ull << 61) /* a file page or shared anonymous: not copied on write */
#define BATCH 512u	     /* pagemap entries read at once (2 MiB of guest RAM) */

static void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

static int pwrite_all(int fd, const uint8_t *p, size_t n, off_t off)
{
	while (n > 0) {
		ssize_t w = pwrite(fd, p, n, off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

static int pread_all(int fd, uint8_t *p, size_t n, off_t off)
{
	while (n > 0) {
		ssize_t r = pread(fd, p, n, off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		p += r;
		n -= (size_t)r;
		off += r;
	}
	return 0;
}

int ram_base_new(uint64_t size, int *ret_fd)
{
	int fd = memfd_create(RAM_BASE_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0) {
		int r = -errno;

		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

int ram_base_seal(int fd)
{
	/* nothing can change it from now on: not we, not a VMM that opens it again */
	return fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0 ? -errno : 0;
}

int ram_base_create(const char *src, uint64_t size, int *ret_fd, uint64_t *ret_copied)
{
	_cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
	_cleanup_close_ int fd = -1;
	_cleanup_free_ uint8_t *buf = NULL;
	uint64_t copied = 0;
	off_t off = 0;
	struct stat st;
	int r;

	if (in < 0)
		return -errno;
	if (fstat(in, &st) < 0)
		return -errno;
	if (size && (uint64_t)st.st_size != size)
		return -EINVAL;
	size = (uint64_t)st.st_size;
	if ((r = ram_base_new(size, &fd)) < 0)
		return r;
	if (!(buf = malloc(1u << 20)))
		return -ENOMEM;
	while ((uint64_t)off < size) {
		off_t data = lseek(in, off, SEEK_DATA), hole;

		if (data < 0) {
			if (errno == ENXIO)
				break; /* a hole to the end */
			return -errno;
		}
		if ((hole = lseek(in, data, SEEK_HOLE)) < 0)
			return -errno;
		for (off = data; off < hole;) {
			size_t n = (size_t)(hole - off) < (1u << 20) ? (size_t)(hole - off) : (1u << 20);

			if ((r = pread_all(in, buf, n, off)) < 0 || (r = pwrite_all(fd, buf, n, off)) < 0)
				return r;
			off += (off_t)n;
			copied += n;
		}
	}
	if ((r = ram_base_seal(fd)) < 0)
		return r;
	*ret_fd = TAKE_FD(fd);
	if (ret_copied)
		*ret_copied = copied;
	return 0;
}

int ram_base_find(pid_t pid, uint64_t *ret_addr, uint64_t *ret_len, struct ram_base_id *ret_id)
{
	char path[64], line[4096];
	_cleanup_(fclosep) FILE *f = NULL;
	const char *want = "/memfd:" RAM_BASE_NAME " (deleted)";
	const size_t suffix = strlen(RAM_LAZY_SUFFIX);
	int found = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	if (!(f = fopen(path, "re")))
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long a, b, ino;
		unsigned maj, min;
		int name = 0;
		char *nl = strchr(line, '\n');

		if (nl)
			*nl = '\0';
		/* start-end perms offset dev inode   path */
		if (sscanf(line, "%llx-%llx %*s %*s %x:%x %llu %n", &a, &b, &maj, &min, &ino, &name) < 5 || name == 0)
			continue;
		if (strcmp(line + name, want) != 0 &&
		    !(strlen(line + name) > suffix && line[name] == '/' &&
		      strcmp(line + name + strlen(line + name) - suffix, RAM_LAZY_SUFFIX) == 0))
			continue;
		if (found++)
			return -EEXIST;
		*ret_addr = a;
		*ret_len = b - a;
		if (ret_id)
			*ret_id = (struct ram_base_id){ .dev = makedev(maj, min), .ino = ino };
	}
	return found ? 0 : -ENOENT;
}

int ram_base_id_of(int fd, struct ram_base_id *ret)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	*ret = (struct ram_base_id){ .dev = st.st_dev, .ino = st.st_ino };
	return 0;
}

void ram_delta_free(struct ram_delta *d)
{
	if (!d)
		return;
	free(d->runs);
	*d = (struct ram_delta){ 0 };
}

void ram_delta_drop(struct ram_delta **d)
{
	if (*d) {
		ram_delta_free(*d);
		free(*d);
		*d = NULL;
	}
}

/* Appends pages [first, first + n) to d, merged with the last run when adjacent. */
static int delta_add(struct ram_delta *d, uint64_t first, uint64_t n)
{
	if (d->n > 0 && d->runs[d->n - 1][0] + d->runs[d->n - 1][1] == first) {
		d->runs[d->n - 1][1] += n;
	} else {
		if (d->n == d->cap) {
			size_t cap = d->cap ? d->cap * 2 : 64;
			void *p = realloc(d->runs, cap * sizeof(*d->runs));

			if (!p)
				return -ENOMEM;
			d->runs = p;
			d->cap = cap;
		}
		d->runs[d->n][0] = first;
		d->runs[d->n][1] = n;
		d->n++;
	}
	d->pages += n;
	return 0;
}

/*
 * Calls fn(arg, first, n) for each run of pages of [addr, addr + len) in
 * process pid whose pagemap entries `want` accepts (first: the run's first
 * page, counted from addr); stops at fn's first error.
 */
static int pagemap_runs(pid_t pid, uint64_t addr, uint64_t len, bool (*want)(uint64_t ent),
			int (*fn)(void *arg, uint64_t first, uint64_t n), void *arg)
{
	char path[64];
	_cleanup_close_ int pm = -1;
	uint64_t ents[BATCH], npages = len / PAGE;
	int r;

	if (addr % PAGE || len % PAGE)
		return -EINVAL;
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	if ((pm = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -errno;
	for (uint64_t i = 0; i < npages; i += BATCH) {
		size_t n = npages - i < BATCH ? (size_t)(npages - i) : BATCH;

		if ((r = pread_all(pm, (uint8_t *)ents, n * sizeof(uint64_t), (off_t)((addr / PAGE + i) * 8))) < 0)
			return r;
		for (size_t j = 0; j < n;) {
			size_t k = j;

			while (k < n && want(ents[k]))
				k++;
			if (k == j) {
				j++;
				continue;
			}
			if ((r = fn(arg, i + j, k - j)) < 0)
				return r;
			j = k;
		}
	}
	return 0;
}

static int proc_mem_open(pid_t pid, int flags, int *ret)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	*ret = open(path, flags | O_CLOEXEC);
	return *ret < 0 ? -errno : 0;
}

/* copied on write: anonymous, present or swapped */
static bool page_is_own(uint64_t ent)
{
	return (ent & PM_SWAPPED) || ((ent & PM_PRESENT) && !(ent & PM_FILE));
}

struct copy_run {
	int mem, out;
	uint64_t addr, pages;
	uint8_t *buf; /* BATCH pages */
	struct ram_delta *delta; /* NULL: not wanted */
};

/* a run is at most BATCH pages: read and written at once */
static int copy_run(void *arg, uint64_t first, uint64_t n)
{
	struct copy_run *c = arg;
	int r;

	if ((r = pread_all(c->mem, c->buf, n * PAGE, (off_t)(c->addr + first * PAGE))) < 0 ||
	    (r = pwrite_all(c->out, c->buf, n * PAGE, (off_t)(first * PAGE))) < 0)
		return r;
	if (c->delta && (r = delta_add(c->delta, first, n)) < 0)
		return r;
	c->pages += n;
	return 0;
}

int ram_write_private(pid_t pid, uint64_t addr, uint64_t len, int out, uint64_t *ret_pages, struct ram_delta *delta)
{
	_cleanup_free_ uint8_t *buf = malloc((size_t)BATCH * PAGE);
	_cleanup_close_ int mem = -1;
	struct copy_run c = { .out = out, .addr = addr, .buf = buf, .delta = delta };
	int r;

	if (!buf)
		return -ENOMEM;
	if (addr % PAGE || len % PAGE)
		return -EINVAL;
	if ((r = proc_mem_open(pid, O_RDONLY, &mem)) < 0)
		return r;
	c.mem = mem;
	if ((r = pagemap_runs(pid, addr, len, page_is_own, copy_run, &c)) < 0)
		return r;
	if (ret_pages)
		*ret_pages = c.pages;
	if (delta)
		delta->len = len;
	return 0;
}

int ram_load_delta(pid_t pid, uint64_t addr, uint64_t len, int in, const struct ram_delta *delta)
{
	_cleanup_free_ uint8_t *buf = malloc((size_t)BATCH * PAGE);
	_cleanup_close_ int mem = -1;
	int r;

	if (!buf)
		return -ENOMEM;
	if (addr % PAGE || len % PAGE)
		return -EINVAL;
	if (len != delta->len)
		return -EXDEV;
	for (size_t i = 0; i < delta->n; i++) /* all of it checked before anything is written */
		if (delta->runs[i][0] > len / PAGE || delta->runs[i][1] > len / PAGE - delta->runs[i][0])
			return -EINVAL;
	if ((r = proc_mem_open(pid, O_WRONLY, &mem)) < 0)
		return r;
	for (size_t i = 0; i < delta->n; i++) {
		uint64_t first = delta->runs[i][0], left = delta->runs[i][1];

		while (left > 0) {
			size_t n = left < BATCH ? (size_t)left : BATCH;

			if ((r = pread_all(in, buf, n * PAGE, (off_t)(first * PAGE))) < 0 ||
			    (r = pwrite_all(mem, buf, n * PAGE, (off_t)(addr + first * PAGE))) < 0)
				return r;
			first += n;
			left -= n;
		}
	}
	return 0;
}

bool ram_maps_lazy(pid_t pid)
{
	char path[64], line[4096];
	_cleanup_(fclosep) FILE *f = NULL;
	const size_t suffix = strlen(RAM_LAZY_SUFFIX);

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	if (!(f = fopen(path, "re")))
		return false;
	while (fgets(line, sizeof(line), f)) {
		size_t n = strcspn(line, "\n");

		line[n] = '\0';
		if (n > suffix && strcmp(line + n - suffix, RAM_LAZY_SUFFIX) == 0)
			return true;
	}
	return false;
}

int ram_write_all(pid_t pid, uint64_t addr, uint64_t len, int out, uint64_t *ret_pages)
{
	char path[64];
	_cleanup_close_ int mem = -1;
	_cleanup_free_ uint8_t *buf = malloc((size_t)BATCH * PAGE);
	uint64_t pages = 0, npages = len / PAGE;
	int r;

	if (!buf)
		return -ENOMEM;
	if (addr % PAGE || len % PAGE)
		return -EINVAL;
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	if ((mem = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -errno;
	if (ftruncate(out, (off_t)len) < 0)
		return -errno;
	for (uint64_t i = 0; i < npages; i += BATCH) {
		size_t n = npages - i < BATCH ? (size_t)(npages - i) : BATCH;

		if ((r = pread_all(mem, buf, n * PAGE, (off_t)(addr + i * PAGE))) < 0)
			return r;
		/* runs of pages that are not all zeros, each written at once */
		for (size_t j = 0; j < n;) {
			size_t k = j;

			while (k < n && !mem_is_zero(buf + k * PAGE, PAGE))
				k++;
			if (k == j) {
				j++;
				continue;
			}
			if ((r = pwrite_all(out, buf + j * PAGE, (k - j) * PAGE, (off_t)((i + j) * PAGE))) < 0)
				return r;
			pages += k - j;
			j = k;
		}
	}
	if (ret_pages)
		*ret_pages = pages;
	return 0;
}

int ram_code_buffer_find(pid_t pid, uint64_t (*ret)[2], size_t max, size_t *ret_n)
{
	char path[64], line[4096];
	_cleanup_(fclosep) FILE *f = NULL;
	uint64_t end = 0;
	size_t n = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	if (!(f = fopen(path, "re")))
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long a, b, inode;
		char perms[8];
		int name = 0;

		line[strcspn(line, "\n")] = '\0';
		/* start-end perms offset dev inode   [path]: anonymous has inode 0 and no path */
		if (sscanf(line, "%llx-%llx %7s %*s %*s %llu %n", &a, &b, perms, &inode, &name) < 4 || name == 0)
			continue;
		if (strcmp(perms, "rwxp") != 0 || inode != 0 || line[name] != '\0')
			continue;
		/* the next region starts one guard page after the last one ended */
		if (n > 0 && a != end + PAGE)
			return -EEXIST;
		if (n < max) {
			ret[n][0] = a;
			ret[n][1] = b - a;
		}
		n++;
		end = b;
	}
	if (n == 0)
		return -ENOENT;
	*ret_n = n < max ? n : max;
	return 0;
}

/* neither present nor swapped */
static bool page_is_absent(uint64_t ent)
{
	return !(ent & (PM_PRESENT | PM_SWAPPED));
}

struct zero_run {
	int mem;
	uint64_t addr, pages;
};

static int zero_run(void *arg, uint64_t first, uint64_t n)
{
	static const uint8_t zeros[16 * PAGE];
	struct zero_run *z = arg;
	int r;

	for (uint64_t w; n > 0; first += w, n -= w) {
		w = n < sizeof(zeros) / PAGE ? n : sizeof(zeros) / PAGE;
		if ((r = pwrite_all(z->mem, zeros, w * PAGE, (off_t)(z->addr + first * PAGE))) < 0)
			return r;
		z->pages += w;
	}
	return 0;
}

int ram_populate_anon(pid_t pid, uint64_t addr, uint64_t len, uint64_t *ret_pages)
{
	_cleanup_close_ int mem = -1;
	struct zero_run z = { .addr = addr };
	int r;

	if (addr % PAGE || len % PAGE)
		return -EINVAL;
	if ((r = proc_mem_open(pid, O_WRONLY, &mem)) < 0)
		return r;
	z.mem = mem;
	if ((r = pagemap_runs(pid, addr, len, page_is_absent, zero_run, &z)) < 0)
		return r;
	if (ret_pages)
		*ret_pages = z.pages;
	return 0;
}
