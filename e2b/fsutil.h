/*
 * The pure parts of emberfs-e2b's filesystem service (e2b/filesystem.c):
 * path resolution as envd does it, EntryInfo as envd renders it, the guest's
 * users and groups from its own /etc/passwd and /etc/group. No I/O on the
 * mount here, so the unit tests (tests/unit/test_e2bfs.c) can cover it.
 */
#pragma once

#include <json-c/json.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

/*
 * The guest path a request means, as envd's ExpandAndResolve: "" and "~"
 * are home, "~/x" and relative paths are below home, absolute paths stay.
 * Unlike envd, every result is normalised lexically ("//", ".", ".." with
 * ".." at "/" staying at "/"): the host path is MOUNT/live/ID + it, which
 * must never climb out of live/ID. 0, -EINVAL ("~name": another user's home
 * is not expanded, as in envd), -ENOMEM.
 */
int e2bfs_guest_path(const char *path, const char *home, char **ret);

/* The last component of a normalised guest path ("/" for "/"), as Go's filepath.Base. */
const char *e2bfs_base(const char *guest_path);

/* Go's os.FileMode(st_mode).String(), what envd puts in "permissions": "-rw-r--r--", "drwxr-xr-x", "Lrwxrwxrwx". */
void e2bfs_mode_string(mode_t mode, char out[static 24]);

/* A protobuf JSON Timestamp: RFC 3339 in UTC with 0, 3, 6 or 9 fraction digits. */
void e2bfs_rfc3339(const struct timespec *ts, char out[static 48]);

/* One file as envd's EntryInfo describes it (modifiedTime left out for a zero mtime, as envd). */
struct e2bfs_entry {
	const char *name;
	const char *path;	     /* the guest path reported */
	const struct stat *st;	     /* lstat of the path */
	const struct stat *target;   /* stat through a symlink; NULL if not a symlink or dangling */
	const char *symlink_target;  /* guest path the symlink resolves to (the path itself when it cannot); NULL if not a symlink */
	const char *owner, *group;   /* names, or the numbers as text */
};
/* filesystem.EntryInfo in protobuf JSON (enum names, int64 as string); NULL on ENOMEM. */
json_object *e2bfs_entry_json(const struct e2bfs_entry *e);

/* The user name of "Authorization: Basic base64(user:password)": 0, -ENOENT (no such header), -EINVAL. */
int e2bfs_basic_user(const char *header, char **ret);

/* ---- the guest's users and groups ---- */
struct e2bfs_user {
	char *name;
	uid_t uid;
	gid_t gid;
	char *home;
};
struct e2bfs_group {
	char *name;
	gid_t gid;
	char **members; /* NULL-terminated */
};
struct e2bfs_ids {
	struct e2bfs_user *users;
	size_t n_users;
	struct e2bfs_group *groups;
	size_t n_groups;
};
/* Reads passwd and group (either may be NULL: none) with fgetpwent/fgetgrent. 0 or -ENOMEM. */
int e2bfs_ids_load(struct e2bfs_ids *ids, FILE *passwd, FILE *group);
void e2bfs_ids_free(struct e2bfs_ids *ids);
/* By name, or by number when name is all digits; NULL if unknown. */
const struct e2bfs_user *e2bfs_ids_user(const struct e2bfs_ids *ids, const char *name);
/* Names for the owner and group of a file: the guest's names, else the numbers. */
void e2bfs_ids_owner(const struct e2bfs_ids *ids, uid_t uid, char out[static 64]);
void e2bfs_ids_group(const struct e2bfs_ids *ids, gid_t gid, char out[static 64]);
/*
 * The groups u is in (its primary group first, then every group naming it
 * as a member), at most max: the count.
 */
size_t e2bfs_ids_groups(const struct e2bfs_ids *ids, const struct e2bfs_user *u, gid_t *out, size_t max);

/* ---- directory watching by snapshots ---- */
/* One file of a watched tree: its name relative to the watched directory and what its lstat said. */
struct e2bfs_snap_ent {
	char *name;
	ino_t ino;
	mode_t mode;
	uid_t uid;
	gid_t gid;
	off_t size;
	struct timespec mtime;
};
struct e2bfs_snap {
	struct e2bfs_snap_ent *v; /* sorted by name (bytes) */
	size_t n;
};
void e2bfs_snap_free(struct e2bfs_snap *s);
/* Sorts s by name; call once it is filled. */
void e2bfs_snap_sort(struct e2bfs_snap *s);
/* envd's EventType numbers, named as its JSON names them */
enum e2bfs_event { E2BFS_CREATE = 1, E2BFS_WRITE = 2, E2BFS_REMOVE = 3, E2BFS_RENAME = 4, E2BFS_CHMOD = 5 };
const char *e2bfs_event_name(enum e2bfs_event ev); /* "EVENT_TYPE_CREATE", ... */
/*
 * What changed from old to new, as inotify (envd's fsnotify) reports it: a
 * new name CREATE; a gone name REMOVE, or RENAME when its inode shows up
 * under a new name (which is then a CREATE); the same name with another
 * inode REMOVE then CREATE; size or mtime moved WRITE; mode or owner
 * changed CHMOD. fn is called in name order; it returns <0 to stop (the
 * value is returned).
 */
int e2bfs_snap_diff(const struct e2bfs_snap *old, const struct e2bfs_snap *new,
		    int (*fn)(void *ctx, const char *name, enum e2bfs_event ev), void *ctx);
