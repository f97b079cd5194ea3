/* THROWAWAY: link stubs for etcd.c until it lands on main. Reverted before finishing. */
#include <errno.h>
#include "etcd.h"
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
