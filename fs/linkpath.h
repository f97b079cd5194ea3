/*
 * Guest symlinks shown through live/NAME without a way out (linkpath.c).
 *
 * The host's kernel follows a symlink of live/NAME from the host's view of
 * the tree: an absolute target would name a host path, and enough ".." in
 * a relative one walk out of live/NAME, out of the mount, into the host.
 * So every target is shown as a path that, followed from the link's own
 * directory, can only go down inside live/NAME:
 *
 *   - a relative target without ".." components is shown as stored;
 *   - otherwise the part up to its last ".." is resolved as the guest
 *     resolves it (physically: through the symlinks it passes, ".." at the
 *     guest's root staying at the root), by a callback into the guest; if
 *     the guest cannot resolve it (a component missing), lexically, ".."
 *     at the root staying at the root;
 *   - the absolute guest path that results is written relative to the
 *     link's directory: a run of ".." no longer than that directory is deep,
 *     then names, no "." and no ".." among them.
 *
 * Pure functions, unit-tested (tests/unit/test_linkpath.c).
 */
#pragma once

#include <stddef.h>

#define LINKPATH_MAX 4095 /* what readlink can return through FUSE (a page, less the NUL) */

/* (Lexical normalization of an absolute path: path_normalize() in common.h.) */
/* The path from directory from_dir to to (both absolute, normalized): "../.." and names, or ".". */
int linkpath_relative(const char *from_dir, const char *to, char **ret);

/*
 * The guest's resolution of an absolute path (every symlink followed),
 * malloc'd in *ret; a negative errno if the guest cannot resolve it.
 */
typedef int (*linkpath_resolve_fn)(void *ctx, const char *path, char **ret);

/*
 * What readlink shows for the guest symlink at link_path (absolute, normalized)
 * whose stored target is target. 0, -ENAMETOOLONG past LINKPATH_MAX, -ENOMEM.
 */
int linkpath_show(const char *link_path, const char *target, linkpath_resolve_fn resolve, void *ctx, char **ret);

/*
 * The invariant linkpath_show keeps: target is relative, its leading ".."
 * are at most as many as link_path's directory is deep, and no "." or ".."
 * follows a name.
 */
int linkpath_contained(const char *link_path, const char *target);
