/*
 * Guest RAM shared between the clones of one snapshot (docs/architecture.md,
 * "Guest RAM shared between clones").
 *
 * A template's snapshot memory is copied once into a sealed memfd (the
 * "base": no write, grow or shrink can ever reach it). Every VMM restored
 * from that snapshot maps the base privately: pages the guest has not
 * written are the base's page-cache pages, one copy for all clones; a write
 * copies the page into the VMM's own anonymous memory. A snapshot of such a
 * VMM writes those anonymous pages (found through /proc/PID/pagemap, read
 * through /proc/PID/mem while its vCPUs are stopped) into the sandbox's own
 * memory file, a clone of the same snapshot memory, so that file is the
 * guest's RAM as it stands.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* The name a base memfd carries (it shows in a VMM's /proc/PID/maps as "/memfd:NAME (deleted)"). */
#define RAM_BASE_NAME "emberfs-ram-base"
/* A base that is a lazy file of the snapshot store (snapstore.c names them so): its path ends in this. */
#define RAM_LAZY_SUFFIX ".emberfs-ram"

/*
 * A sealed memfd holding src's contents (size bytes; 0: src's size) (holes stay holes:
 * only src's data extents are copied). *ret_copied: bytes copied. Close it
 * when done; VMMs keep their own references.
 */
int ram_base_create(const char *src, uint64_t size, int *ret_fd, uint64_t *ret_copied);
/* The same in two steps, for a base written by the caller: an empty one of size bytes; then its seals. */
int ram_base_new(uint64_t size, int *ret_fd);
int ram_base_seal(int fd);

/* Which base a process maps: its file's device and inode, as /proc/PID/maps shows them. */
struct ram_base_id {
	uint64_t dev; /* makedev(major, minor) */
	uint64_t ino;
};

/*
 * Where a base (a memfd or a lazy file) is mapped in process pid: exactly
 * one mapping of it, else -ENOENT (none) or -EEXIST (several). *ret_id:
 * which file it is (NULL: not wanted).
 */
int ram_base_find(pid_t pid, uint64_t *ret_addr, uint64_t *ret_len, struct ram_base_id *ret_id);
/* The id of the base open at fd (the template's), to compare with a process's. */
int ram_base_id_of(int fd, struct ram_base_id *ret);
static inline bool ram_base_id_equal(const struct ram_base_id *a, const struct ram_base_id *b)
{
	return a->dev == b->dev && a->ino == b->ino;
}

/*
 * A guest's RAM as a base and the pages that are not the base's (its own):
 * what a snapshot of a VMM on a private base wrote into its memory file, so
 * a VMM mapping the same base privately can be given the same RAM by
 * writing only those pages (ram_load_delta). runs: (first page, pages),
 * ascending, adjacent runs merged.
 */
struct ram_delta {
	struct ram_base_id base;
	uint64_t len;	/* the mapping's length */
	uint64_t pages; /* the sum of the runs */
	size_t n, cap;
	uint64_t (*runs)[2];
};
void ram_delta_free(struct ram_delta *d); /* its runs; the struct emptied */
void ram_delta_drop(struct ram_delta **d); /* a heap one: freed, *d NULL */

/*
 * Writes every page of [addr, addr + len) in process pid that is no longer
 * the mapped file's (copied on write: anonymous, present or swapped) into
 * out at the same offset from addr. The process must not run meanwhile.
 * *ret_pages: pages written. delta (NULL: not wanted): the runs written are
 * appended to it.
 */
int ram_write_private(pid_t pid, uint64_t addr, uint64_t len, int out, uint64_t *ret_pages, struct ram_delta *delta);

/*
 * The reverse, into another process: the delta's pages, read from in (a
 * memory file the delta describes), written through /proc/PID/mem into
 * [addr, addr + len) of process pid, a private mapping of the delta's base
 * (copied on write there, as the guest's own writes are). -EXDEV: len is
 * not the delta's. The process must not run meanwhile.
 */
int ram_load_delta(pid_t pid, uint64_t addr, uint64_t len, int in, const struct ram_delta *delta);

/* Whether process pid maps a lazy file (its guest RAM is served by the daemon that started it). */
bool ram_maps_lazy(pid_t pid);

/*
 * Writes every page of [addr, addr + len) in process pid that is not all
 * zeros into out (made len bytes long first; zero pages stay holes): the
 * whole guest RAM, for a memory file that holds nothing of the base yet (a
 * restore from a lazy file). The process must not run meanwhile.
 */
int ram_write_all(pid_t pid, uint64_t addr, uint64_t len, int out, uint64_t *ret_pages);

/*
 * QEMU's TCG translation buffer in process pid: its regions, one private
 * anonymous rwx mapping each (a VMM with one vCPU has one; with more, the
 * buffer is cut into up to 8 per vCPU), lowest first, each followed by a
 * one-page guard. Up to max of them into ret (start, length pairs);
 * *ret_n: how many. -ENOENT: none (as under KVM); -EEXIST: rwx mappings that
 * are not one such run (never guessed between).
 */
int ram_code_buffer_find(pid_t pid, uint64_t (*ret)[2], size_t max, size_t *ret_n);

/*
 * Faults in at once the pages of [addr, addr + len) in process pid that are
 * neither present nor swapped, by writing the zeros they read as through
 * /proc/PID/mem; a page that is present or swapped is left alone. The range
 * must be private anonymous memory that nothing in the process writes
 * meanwhile. *ret_pages: pages faulted in.
 */
int ram_populate_anon(pid_t pid, uint64_t addr, uint64_t len, uint64_t *ret_pages);
