/* THROWAWAY: link stubs for etcd.c and peer*.c until they land on main. Reverted before finishing. */
#include <errno.h>
#include "etcd.h"
#include "peer.h"
int etcd_new(const char *urls, unsigned timeout_ms, struct etcd **ret) { return -ENOSYS; }
void etcd_free(struct etcd *e) { }
const char * etcd_error(void) { return NULL; }
int etcd_lease_grant(struct etcd *e, unsigned ttl_s, int64_t *ret_id) { return -ENOSYS; }
int etcd_lease_keepalive(struct etcd *e, int64_t id, int64_t *ret_ttl) { return -ENOSYS; }
int etcd_lease_revoke(struct etcd *e, int64_t id) { return -ENOSYS; }
void etcd_kv_clear(struct etcd_kv *kv) { }
void etcd_kvs_free(struct etcd_kv *kvs, size_t n) { }
int etcd_put(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t *ret_rev) { return -ENOSYS; }
int etcd_create(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t *ret_rev) { return -ENOSYS; }
int etcd_put_fenced(struct etcd *e, const char *key, const void *val, size_t len, int64_t lease, int64_t mod_rev, int64_t *ret_rev) { return -ENOSYS; }
int etcd_delete(struct etcd *e, const char *key, int64_t *ret_deleted) { return -ENOSYS; }
int etcd_delete_fenced(struct etcd *e, const char *key, int64_t mod_rev) { return -ENOSYS; }
int etcd_get(struct etcd *e, const char *key, struct etcd_kv *ret) { return -ENOSYS; }
int etcd_range_prefix(struct etcd *e, const char *prefix, struct etcd_kv **ret_kvs, size_t *ret_n, int64_t *ret_rev) { return -ENOSYS; }
int etcd_watch_start(struct etcd *e, const char *prefix, const struct etcd_watch_cb *cb, struct etcd_watch **ret) { return -ENOSYS; }
void etcd_watch_stop(struct etcd_watch *w) { }
int peer_client_new(const char *self, const void *secret, size_t secret_len, struct peer_client **ret) { return -ENOSYS; }
void peer_client_free(struct peer_client *pc) { }
const char * peer_error(void) { return NULL; }
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
int peer_create(struct peer_client *pc, const char *addr, const struct peer_cred *cr, const char *tpl, const char *json, size_t len, char **ret_reason) { return -ENOSYS; }
int peer_server_start(const char *listen_addr, const char *root, const void *secret, size_t secret_len, const struct peer_server_hooks *hooks, struct peer_server **ret) { return -ENOSYS; }
unsigned peer_server_port(struct peer_server *ps) { return 0; }
void peer_server_forget(struct peer_server *ps, const char *host) { }
void peer_server_stop(struct peer_server *ps) { }
