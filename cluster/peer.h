/*
 * The host-to-host protocol (docs/cluster.md, "Between hosts"): HTTP/1.1,
 * libmicrohttpd on the serving side, libcurl on the calling side. A host
 * serves the file operations of its own mount to the other hosts: the
 * server is a client of the mount (like emberfs-e2b), so a file read from
 * another host is byte for byte what a local user reads, and every file of
 * a sandbox works from every host with one mechanism.
 *
 * Authentication: every request carries the caller's host name, a time
 * (unix seconds) and HMAC-SHA256 over "name\nMETHOD\nURI\ntime\nsha256(body)"
 * under the cluster's shared secret; the server refuses a bad MAC or a time
 * more than 30 s away from its own (401), before it parses anything else.
 * The channel is not encrypted (documented).
 *
 * Paths are relative to the mount's root ("templates/T/sandboxes/N/status"),
 * normalized by the server: no "..", no leading "/", no empty or "."
 * components, at most 4096 bytes; anything else is -EINVAL. Operations run as
 * the caller's uid/gid on the server (per-thread fsuid/fsgid), so the guest
 * checks permissions as on the calling host.
 *
 * Client calls return 0 (or a count) or a negative errno: the server's own
 * errno of the operation, or, when the call did not reach the server or
 * its answer did not come, -EHOSTUNREACH (reason: peer_error()).
 *
 * Details (the wire format is at the top of peer_server.c): the path ""
 * is root itself (stat, readdir, open, chmod; -EINVAL for the ops that act
 * on a name); a symlink is never followed out of root (openat2
 * RESOLVE_BENEATH): a path through one that leads out is -EXDEV; a request
 * the server's authentication refuses is -EACCES (peer_error() says why);
 * a body over 8 MiB (a write) is -E2BIG; a host holds at most 4096 open
 * handles on a peer (-EMFILE beyond); a handle another host opened, or one
 * released or forgotten, is -EBADF. peer_error() holds the reason of every
 * failed call, not only -EHOSTUNREACH.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/* ---- calling side ---- */
struct peer_client;

/* self: this host's name (sent with each request); secret: the shared key. */
int peer_client_new(const char *self, const void *secret, size_t secret_len, struct peer_client **ret);
void peer_client_free(struct peer_client *pc);
/* Ends every call in flight (within a second) and refuses later ones (-ESHUTDOWN): a host stopping. */
void peer_client_abort(struct peer_client *pc);
const char *peer_error(void); /* thread-local reason of the last -EHOSTUNREACH */

struct peer_cred {
	uid_t uid;
	gid_t gid;
};

/* addr: "HOST:PORT" of the peer's server. st: mode, size, nlink, mtime, ctime, atime, uid, gid. */
int peer_stat(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, struct stat *st);

struct peer_dirent {
	char *name;
	mode_t mode; /* S_IFDIR | S_IFREG | S_IFLNK ... with permission bits */
};
void peer_dirents_free(struct peer_dirent *d, size_t n);
int peer_readdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path,
		 struct peer_dirent **ret, size_t *ret_n);

/*
 * An open file on the peer: flags as open(2) (O_CREAT with mode); the handle
 * is the server's, valid until peer_release (or until the server forgets
 * the caller: it closes a host's handles when that host's lease goes).
 */
int peer_open(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, int flags,
	      mode_t mode, uint64_t *ret_handle);
/*
 * Reads up to size bytes at off (the server uses pread, or read on a file
 * that cannot seek); blocks as long as the read blocks on the peer (a
 * process's output, wait). Returns the count (0: end of file).
 */
ssize_t peer_read(struct peer_client *pc, const char *addr, uint64_t handle, off_t off, void *buf, size_t size);
ssize_t peer_write(struct peer_client *pc, const char *addr, uint64_t handle, off_t off, const void *buf, size_t size);
int peer_fsync(struct peer_client *pc, const char *addr, uint64_t handle);
/* What close(2) of the file does on the peer's mount (a settings file applied, an exec run), the file kept open. */
int peer_flush(struct peer_client *pc, const char *addr, uint64_t handle);
int peer_release(struct peer_client *pc, const char *addr, uint64_t handle);

int peer_mkdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, mode_t mode);
int peer_rmdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path);
int peer_unlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path);
int peer_rename(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *from, const char *to);
int peer_symlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *target,
		 const char *path);
int peer_readlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path,
		  char **ret_target);
int peer_truncate(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, off_t size);
int peer_chmod(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, mode_t mode);

/*
 * A create placed on the peer: JSON as templates/T/create takes it
 * ({"name": ..., settings}). The peer creates it there, never places it
 * again. 0 once reserved (as mkdir), or -EEXIST, -ENOSPC, -EAGAIN,
 * -EINVAL ...; *ret_reason (may be NULL; malloc'd) says why on a refusal.
 */
int peer_create(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *tpl,
		const char *json, size_t len, char **ret_reason);

/*
 * rmdir of a sandbox the peer runs, done there without its mount (a
 * forwarded rmdir walking the peer's mount would wait on its directory lock
 * while that host's own mkdir or rmdir waits on this one: a cycle).
 */
int peer_destroy(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *tpl,
		 const char *name);

/* ---- serving side ---- */
struct peer_server;
struct peer_server_hooks {
	/* peer_create's work on this host: 0 or -errno, *reason malloc'd on a refusal */
	int (*create)(void *ctx, const char *tpl, const char *json, size_t len, uid_t uid, gid_t gid, char **reason);
	/* peer_destroy's: json is {"name": N}; a sandbox not on this host is -ENOENT (never forwarded again) */
	int (*destroy)(void *ctx, const char *tpl, const char *json, size_t len, uid_t uid, gid_t gid, char **reason);
	void *ctx;
};
/*
 * Listens on listen_addr ("HOST:PORT"; PORT 0 picks one: peer_server_port),
 * serves root's files. One thread per connection (reads may block).
 * root is opened for each operation (a descriptor kept on a mount would
 * make `fusermount3 -u` of it fail with EBUSY); it must exist at start.
 */
int peer_server_start(const char *listen_addr, const char *root, const void *secret, size_t secret_len,
		      const struct peer_server_hooks *hooks, struct peer_server **ret);
unsigned peer_server_port(struct peer_server *ps);
/* Closes every handle host opened (its lease went, or it came back as a new process). */
void peer_server_forget(struct peer_server *ps, const char *host);
/*
 * Stops listening and frees. Reads blocked on the mount end when the mount
 * does: the daemon stops the server after its FUSE loop ended. Bounded.
 */
void peer_server_stop(struct peer_server *ps);
