/* The FUSE layer: maps paths and file operations onto engine objects. */
#pragma once

#include "engine.h"

struct fuse_session;
struct fs;
struct cluster;

/* Creates the low-level session (not yet mounted) over the engine. */
int fs_new(struct engine *e, int argc, char **argv, struct fs **ret);
/*
 * Cluster mode (NULL, the default: single-host, nothing changes): the
 * sandboxes of other hosts show and are forwarded to their hosts, creates
 * are placed by the cluster, hosts/ appears. Call after fs_new, before fs_loop.
 */
void fs_set_cluster(struct fs *f, struct cluster *c);
/* Mounts (over a stale mount of a dead daemon) and notes which mount is ours. */
int fs_mount(struct fs *f, const char *mountpoint);
/*
 * Serves requests until unmounted or a signal handler asked it to stop; an
 * unmount from outside (fusermount3 -u) stops it through SIGTERM even while
 * another mount namespace keeps a copy of the mount and so the connection.
 */
int fs_loop(struct fs *f);
/* Unmounts, unless the mount is no longer ours (then only ends the connection). */
void fs_unmount(struct fs *f);
/* After the loop: releases files and directories still open, and stops taking the engine's events (before the engine goes). */
void fs_release_handles(struct fs *f);
void fs_free(struct fs *f);
/* SIGTERM, SIGINT and SIGHUP end fs_loop (libfuse's handlers). */
int fs_set_signal_handlers(struct fs *f);

/*
 * systemd's readiness protocol (service.c; nothing without NOTIFY_SOCKET):
 * service_start after the mount, before fs_loop: READY=1 once the mount
 * answers and the template default is baked (or failed, or not wanted);
 * service_stopping when fs_loop returned, before the engine goes.
 */
struct service;
int service_start(struct engine *e, const char *mountpoint, bool bake_default, struct service **ret);
void service_stopping(struct service *sv);
void fs_remove_signal_handlers(struct fs *f);

/* The whole daemon (fs/daemon.c): options, engine, mount, serve, teardown; an exit status. */
int emberfs_daemon(int argc, char **argv, const struct engine_hooks *hooks);
