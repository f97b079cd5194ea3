/* The FUSE layer: maps paths and file operations onto engine objects. */
#pragma once

#include "engine.h"

struct fuse_session;
struct fs;

/* Creates the low-level session (not yet mounted) over the engine. */
int fs_new(struct engine *e, int argc, char **argv, struct fs **ret);
int fs_mount(struct fs *f, const char *mountpoint);
/* Serves requests until unmounted or a signal handler asked it to stop. */
int fs_loop(struct fs *f);
void fs_unmount(struct fs *f);
/* After the loop: releases files and directories still open, and stops taking the engine's events (before the engine goes). */
void fs_release_handles(struct fs *f);
void fs_free(struct fs *f);
