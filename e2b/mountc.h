/*
 * emberfs-e2b is a client of the emberfs mount: everything it does to a
 * sandbox goes through the mount's files (docs/interface.md). These are the
 * few helpers every route file shares.
 */
#pragma once

#include <json-c/json.h>
#include <limits.h>
#include <stddef.h>

#ifndef _cleanup_json_
static inline void json_object_putp(json_object **o)
{
	json_object_put(*o);
}
#define _cleanup_json_ __attribute__((cleanup(json_object_putp)))
#endif

struct sbx {
	char id[65];		/* the sandbox's name: E2B's sandboxID */
	char tpl[65];		/* its template: E2B's templateID */
	char dir[PATH_MAX];	/* MOUNT/templates/T/sandboxes/ID */
	char live[PATH_MAX];	/* MOUNT/live/ID: the guest's / */
};

/* The sandbox named id, under whichever template: 0, -ENOENT, -EINVAL (not a valid name). */
int sbx_lookup(const char *id, struct sbx *out);
/* dir/file into buf (snprintf): -ENAMETOOLONG when it does not fit. */
int sbx_path(const struct sbx *s, const char *file, char *buf, size_t size);

/* A whole mount file read to EOF (NUL-terminated, *len without it; len may be NULL). 0 or -errno. */
int mnt_read(const char *path, char **ret, size_t *len);
/* The file parsed as JSON; NULL with errno set. */
json_object *mnt_read_json(const char *path);
/* One open (O_WRONLY|O_TRUNC), one write, close: 0 or -errno (the close's error counts). */
int mnt_write(const char *path, const char *data, size_t len);

/*
 * A new sandbox of template tpl named id with its settings in force from
 * the start (settings: NULL or an object with "timeout", "metadata", "env",
 * "egress" as the mount's create file takes them, docs/interface.md).
 * Returns once reserved: 0, -ENOENT (no such template), -EEXIST, -EINVAL,
 * -ENOSPC, -errno; *why (malloc'd, may be NULL) says more when known.
 */
int mnt_create(const char *tpl, const char *id, json_object *settings, char **why);
/* Read the sandbox's wait file: 0 once ready, -EIO (failed; its status says why), -errno. */
int sbx_wait_ready(const struct sbx *s);
