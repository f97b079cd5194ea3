/*
 * A host of a cluster (docs/cluster.md): membership under an etcd lease,
 * the cluster's view fed by a watch, names reserved in etcd, placement,
 * and the peer protocol's both ends. NULL everywhere in single-host mode
 * (no --cluster): the fs layer then never calls in here.
 *
 * Keys (prefix /emberfs/):
 *   hosts/H          under H's lease: {"addr", "max_sandboxes", "sandboxes",
 *                    "creating", "load", "accepting", "warm": {identity: n},
 *                    "templates": {name: identity}, "started"}
 *   sb/N             (names are unique across templates, as on one host)
 *                    {"host", "template", "state": "reserved"|"placed", "at"}:
 *                    reserved (create-if-absent) under a short reservation
 *                    lease, committed without a lease, fenced by the
 *                    reservation's revision
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "engine.h"
#include "peer.h"

struct cluster;

struct cluster_options {
	const char *etcd_urls;	 /* --cluster */
	const char *host_name;	 /* --host-name */
	const char *advertise;	 /* --advertise HOST:PORT: where the peers reach this host's server */
	const char *listen;	 /* where the server listens (default: advertise) */
	const char *secret_file; /* the shared key (default STATE/cluster.key, made 0600 if absent) */
	unsigned lease_ttl_s;	 /* default 10 */
	const char *mountpoint;	 /* the peer server serves this mount's files */
	const char *state_dir;	 /* the key's default place, and STATE/cluster-names */
	unsigned max_sandboxes;	 /* advertised: what placement counts as this host's room */
};

int cluster_new(struct engine *e, const struct cluster_options *o, struct cluster **ret);
/* After the mount answers: joins (lease, host key), starts the watch, the heartbeat and the server. */
int cluster_start(struct cluster *c);
/* After the FUSE loop ended: stops the server, the watch and the heartbeat. */
void cluster_stop(struct cluster *c);
/*
 * After the engine went (with its sandboxes): deletes this host's names
 * from etcd and revokes its lease (others see it leave at once), frees.
 */
void cluster_free(struct cluster *c);

const char *cluster_self(struct cluster *c);
struct peer_client *cluster_peer(struct cluster *c);

/*
 * The sandboxes of template tpl that run on other hosts (names, strv_free),
 * as the view has them. A name the engine has locally is never listed.
 */
char **cluster_remote_sandboxes(struct cluster *c, const char *tpl);

/*
 * Where sandbox name (of template tpl; NULL: any) runs if not here: 0 with *host and *addr
 * (malloc'd) and *lost (its host's lease is gone: its files answer EHOSTDOWN
 * but status, which says "lost"); -ENOENT if the view has no such remote
 * sandbox.
 */
int cluster_sandbox_where(struct cluster *c, const char *tpl, const char *name, char **host, char **addr, bool *lost);
/* The status of a lost sandbox (JSON, malloc'd): {"state":"lost","host":H,...}. */
char *cluster_render_lost(struct cluster *c, const char *tpl, const char *name);

/*
 * A create placed by the cluster: mkdir (name, json NULL) or the template's
 * create file (name NULL, json as written: the name is in it). 0 with *local (ref'd) when it runs here; 0 with
 * *local NULL when it was placed on another host (the view has it at
 * return); -EEXIST (the name is taken anywhere), -EAGAIN (no etcd: the
 * reason in the template's create_error and the log), -ENOSPC (no host
 * fits), -EINVAL ...
 */
int cluster_create(struct cluster *c, struct template *t, const char *name, const char *json, size_t len,
		   uid_t uid, gid_t gid, struct sandbox **local);
/*
 * rmdir of a sandbox: a local one is destroyed here and its name freed in
 * etcd; a remote one is forwarded to its host; a lost one's key is deleted
 * (its name freed; docs/cluster.md, "A host dies"). 0, -ENOENT, -EAGAIN.
 */
int cluster_destroy(struct cluster *c, struct template *t, const char *name, uid_t uid, gid_t gid);

/*
 * A sandbox's ctl write (sandbox_ctl's contract) on a local sandbox: "fork
 * NEW" reserves NEW in etcd first (-EEXIST if taken anywhere, -EAGAIN
 * without etcd) and commits or frees it after; other verbs as sandbox_ctl.
 */
int cluster_ctl(struct cluster *c, struct sandbox *s, const char *cmd, size_t len);

/* hosts/: the hosts in the view (strv_free) and one's status (JSON, malloc'd; NULL: unknown). */
char **cluster_hosts(struct cluster *c);
char *cluster_render_host(struct cluster *c, const char *host);
