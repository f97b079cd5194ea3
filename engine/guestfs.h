/*
 * The guest's own files (MOUNT/live/NAME): typed calls into a sandbox's
 * guest agent (docs/protocol.md "Files"), so that a front end never builds
 * the agent's messages itself.
 *
 * Every call acts for a host user (struct guest_cred): the guest checks
 * permissions, owns new files and clears set-id bits as its kernel does
 * for that user; uids and gids are the same numbers in the guest. Paths are
 * absolute guest paths (at most GUESTFS_PATH_MAX bytes). Every call waits
 * for the sandbox to be ready and resumes or wakes it first (as exec
 * does); the guest's errno comes back negated; a sandbox that is gone,
 * stopped or failed: -EIO.
 *
 * A front end names files by the paths it last saw. A call on a file can
 * check that its path still names that file (struct guest_id, NULL: no
 * check): -ESTALE when it does not. Names are made and removed in whatever
 * directory the path names now.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

struct sandbox;
struct engine;

#define GUESTFS_PATH_MAX 65535 /* longer than the host's PATH_MAX: guest processes work deep in trees */
#define GUESTFS_IO_MAX (1u << 20) /* the most one read or write moves */

struct guest_cred {
	uint32_t uid, gid;
	size_t ngroups;
	const uint32_t *groups;
};

/* A guest file's identity: its guest device and inode number. */
struct guest_id {
	uint64_t dev, ino;
};

struct guest_attr {
	struct stat st;	    /* as the guest has it, but st_ino: guestfs_host_ino() */
	struct guest_id id; /* the guest's own */
	bool watched;	    /* a file the host has open: chg counts its changes */
	uint64_t chg;
};

/*
 * A host inode number for a guest file, unique within the engine:
 * the sandbox, the guest filesystem and the guest inode number together, so
 * that files of two sandboxes (or of two filesystems of one guest) never
 * look like hard links of each other. {0, 0}: the number of the sandbox's
 * root as a front end shows it without asking the guest.
 */
uint64_t guestfs_host_ino(struct sandbox *s, struct guest_id id);

int guestfs_lstat(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		  struct guest_attr *ret);
/* fn(ctx, name, file type bits, host inode number) per entry ("." and ".." not included); a negative return stops. */
typedef int (*guestfs_dirent_fn)(void *ctx, const char *name, mode_t type, uint64_t host_ino);
int guestfs_readdir(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		    guestfs_dirent_fn fn, void *ctx);
/* Making: the mode exactly as given (no umask: a front end applies the caller's). */
int guestfs_mkdir(struct sandbox *s, const struct guest_cred *c, const char *path, mode_t mode,
		  struct guest_attr *ret);
/* Any file type: S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR and S_IFBLK (with rdev) in mode. */
int guestfs_mknod(struct sandbox *s, const struct guest_cred *c, const char *path, mode_t mode, dev_t rdev,
		  struct guest_attr *ret);
/* The target is stored exactly as given. */
int guestfs_symlink(struct sandbox *s, const struct guest_cred *c, const char *target, const char *path,
		    struct guest_attr *ret);
int guestfs_link(struct sandbox *s, const struct guest_cred *c, const char *from, const struct guest_id *from_id,
		 const char *to, struct guest_attr *ret);
int guestfs_unlink(struct sandbox *s, const struct guest_cred *c, const char *path);
int guestfs_rmdir(struct sandbox *s, const struct guest_cred *c, const char *path);
/* flags: RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT. */
int guestfs_rename(struct sandbox *s, const struct guest_cred *c, const char *from, const char *to, unsigned flags);
/* The target as the guest stores it (malloc'd). */
int guestfs_readlink(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		     char **ret);
/* The guest's own resolution of path: every symlink followed, ".." at "/" stays at "/" (malloc'd). */
int guestfs_realpath(struct sandbox *s, const struct guest_cred *c, const char *path, char **ret);
int guestfs_statfs(struct sandbox *s, const struct guest_cred *c, const char *path, struct statvfs *ret);

#define GUESTFS_TIME_NOW (-2) /* in guest_setattr's times */
enum {
	GUESTFS_SET_MODE = 1 << 0,
	GUESTFS_SET_UID = 1 << 1,
	GUESTFS_SET_GID = 1 << 2,
	GUESTFS_SET_SIZE = 1 << 3,
	GUESTFS_SET_ATIME = 1 << 4,
	GUESTFS_SET_MTIME = 1 << 5,
};
struct guest_setattr {
	unsigned what; /* GUESTFS_SET_* */
	mode_t mode;   /* the 07777 bits */
	uid_t uid;
	gid_t gid;
	off_t size;
	int64_t atime_ns, mtime_ns; /* or GUESTFS_TIME_NOW */
};
/* Changes in the order mode, owner, size, times; stops at the first refusal. ret: the attributes after. */
int guestfs_setattr(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		    const struct guest_setattr *sa, struct guest_attr *ret);

/*
 * Open files hold the sandbox's guest connection (it stays awake until
 * closed) and an agent handle; a connection that ends (stop, the VMM's
 * death) makes every later call -EIO. expect: the file (not checked with
 * O_CREAT). Regular files and directories only (anything else: -ENXIO).
 */
struct guest_file;
int guestfs_open(struct sandbox *s, const struct guest_cred *c, const char *path, const struct guest_id *expect,
		 int flags, mode_t mode, struct guest_file **ret, struct guest_attr *attr);
/* At most GUESTFS_IO_MAX bytes; *data malloc'd; short only at the end of the file. */
int guestfs_read(struct guest_file *f, const struct guest_cred *c, off_t off, size_t len, uint8_t **data,
		 size_t *got);
int guestfs_write(struct guest_file *f, const struct guest_cred *c, off_t off, const void *buf, size_t len,
		  size_t *written);
int guestfs_fstat(struct guest_file *f, struct guest_attr *ret);
int guestfs_ftruncate(struct guest_file *f, const struct guest_cred *c, off_t size, struct guest_attr *ret);
int guestfs_fsync(struct guest_file *f, bool datasync);
void guestfs_close(struct guest_file *f);

/*
 * Changes made to files the host has open: fn(ctx, sandbox id, the file,
 * its change count) as the guest reports them, from the agent connection's
 * reader thread, so fn must only queue. Set before the mount serves.
 */
typedef void (*guestfs_change_fn)(void *ctx, uint64_t sandbox_id, struct guest_id id, uint64_t chg);
void engine_set_guestfs_change_fn(struct engine *e, guestfs_change_fn fn, void *ctx);
