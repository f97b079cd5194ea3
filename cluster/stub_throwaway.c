/* THROWAWAY: link stubs so fs/ compiles before cluster.c and peer*.c land. Reverted before merge. */
#include <errno.h>
#include "cluster.h"
const char *cluster_self(struct cluster *c) { return "stub"; }
struct peer_client *cluster_peer(struct cluster *c) { return NULL; }
char **cluster_remote_sandboxes(struct cluster *c, const char *tpl) { return NULL; }
int cluster_sandbox_where(struct cluster *c, const char *tpl, const char *name, char **host, char **addr, bool *lost) { return -ENOENT; }
char *cluster_render_lost(struct cluster *c, const char *tpl, const char *name) { return NULL; }
int cluster_create(struct cluster *c, struct template *t, const char *name, const char *json, size_t len, uid_t uid, gid_t gid, struct sandbox **local) { return -ENOSYS; }
int cluster_destroy(struct cluster *c, struct template *t, const char *name, uid_t uid, gid_t gid) { return -ENOSYS; }
int cluster_ctl(struct cluster *c, struct sandbox *s, const char *cmd, size_t len) { return -ENOSYS; }
char **cluster_hosts(struct cluster *c) { return NULL; }
char *cluster_render_host(struct cluster *c, const char *host) { return NULL; }
int peer_stat(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, struct stat *st) { return -ENOSYS; }
void peer_dirents_free(struct peer_dirent *d, size_t n) { }
int peer_readdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, struct peer_dirent **ret, size_t *ret_n) { return -ENOSYS; }
int peer_open(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, int flags, mode_t mode, uint64_t *ret_handle) { return -ENOSYS; }
ssize_t peer_read(struct peer_client *pc, const char *addr, uint64_t handle, off_t off, void *buf, size_t size) { return -ENOSYS; }
ssize_t peer_write(struct peer_client *pc, const char *addr, uint64_t handle, off_t off, const void *buf, size_t size) { return -ENOSYS; }
int peer_fsync(struct peer_client *pc, const char *addr, uint64_t handle) { return -ENOSYS; }
int peer_release(struct peer_client *pc, const char *addr, uint64_t handle) { return -ENOSYS; }
int peer_mkdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, mode_t mode) { return -ENOSYS; }
int peer_rmdir(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path) { return -ENOSYS; }
int peer_unlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path) { return -ENOSYS; }
int peer_rename(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *from, const char *to) { return -ENOSYS; }
int peer_symlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *target, const char *path) { return -ENOSYS; }
int peer_readlink(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, char **ret_target) { return -ENOSYS; }
int peer_truncate(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, off_t size) { return -ENOSYS; }
int peer_chmod(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *path, mode_t mode) { return -ENOSYS; }
const char *peer_error(void) { return "stub"; }
