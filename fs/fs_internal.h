/* Shared between fs.c (tree, lookup, dispatch) and handles.c (open files). */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>

#include "cluster.h"
#include "common.h"
#include "engine.h"

/* Inode numbers: (object id << 4) | index. Object 0 is the static tree. */
#define INO(obj, idx) (((fuse_ino_t)(obj) << 4) | (idx))
#define INO_OBJ(ino) ((uint64_t)(ino) >> 4)
#define INO_IDX(ino) ((unsigned)((ino)&15))

/* live/NAME/...: inodes of the guest's own files (live.c) */
#define LIVE_INO_BIT ((fuse_ino_t)1 << 63)
#define IS_LIVE(ino) (((fuse_ino_t)(ino)&LIVE_INO_BIT) != 0)
/*
 * The files of sandboxes that run on other hosts of a cluster (remote.c).
 * Disjoint from both others: live.c numbers its nodes from 1 up under bit
 * 63 (never reaching bit 62), and engine ids stay below 2^58, so INO() of
 * any engine object stays below bit 62 (engine ids are a 64-bit counter
 * from 1: 2^58 ids is beyond any daemon's life).
 */
#define REMOTE_INO_BIT ((fuse_ino_t)1 << 62)
#define IS_REMOTE(ino) (((fuse_ino_t)(ino) & (LIVE_INO_BIT | REMOTE_INO_BIT)) == REMOTE_INO_BIT)
_Static_assert(INO(((uint64_t)1 << 58) - 1, 15) < REMOTE_INO_BIT, "engine inodes must stay below REMOTE_INO_BIT");
_Static_assert((REMOTE_INO_BIT & LIVE_INO_BIT) == 0, "remote and live inode bits differ");

enum { IDX_ROOT = 1, IDX_TEMPLATES = 2, IDX_README = 3, IDX_VERSION = 4, IDX_METRICS = 5, IDX_LIVE = 6,
       IDX_EVENTS = 7, IDX_BY = 8, IDX_HOSTS = 9 /* cluster mode only */, IDX_CACHE = 10,
       IDX_CACHE_STATUS = 11 /* cache/status */ };
/* IDX_SB_BYLINK: a sandbox's link in sandboxes-by/KEY/VALUE/ */
enum { IDX_DIR = 0, IDX_TPL_SANDBOXES = 5, IDX_TPL_SLOTS = 6, IDX_SB_PROCS = 8, IDX_SB_ROOT = 9, IDX_SB_BYLINK = 15 };

enum ftype { F_STATIC, F_RENDER, F_CONFIG, F_CTL, F_POOL, F_WAIT, F_EXEC, F_CONSOLE, F_SBCTL, F_EVENTS,
	     F_PCMD, F_PSTDIN, F_POUT, F_PERR, F_PSIGNAL, F_DOCKERFILE, F_BUILDLOG, F_SETTING, F_CREATE,
	     F_HOST /* a sandbox's host (cluster mode) */ };

struct file_def {
	const char *name;
	unsigned idx;
	mode_t mode;
	enum ftype type;
	char *(*render_t)(struct template *t);
	char *(*render_s)(struct sandbox *s);
	char *(*render_slot)(struct template *t, uint64_t slot_id);
	char *(*render_p)(struct proc *p);
	/* F_SETTING: the whole new value (see handles.c, setting_write); -errno changes nothing */
	int (*write_s)(struct sandbox *s, const char *data, size_t len);
	/* a sandbox file that only some sandboxes have (egress: a network); NULL: every one */
	bool (*present_s)(struct sandbox *s);
	bool cluster_only; /* present only in cluster mode (host) */
};

enum kind {
	K_ROOT, K_TEMPLATES, K_STATIC_FILE, K_TPL_DIR, K_TPL_FILE, K_TPL_SANDBOXES, K_SB_DIR, K_SB_FILE,
	K_TPL_SLOTS, K_SLOT_DIR, K_SLOT_FILE, K_LIVE, K_SB_PROCS, K_SB_ROOT, K_PROC_DIR, K_PROC_FILE,
	K_BY, K_BY_KEY, K_BY_VALUE, K_BY_LINK, /* sandboxes-by/KEY/VALUE/NAME (bymeta.c) */
	K_HOSTS, K_HOST_DIR, K_HOST_FILE,      /* hosts/H/status (hosts.c; cluster mode only) */
	K_SB_CKPTS, K_CKPT_DIR, K_CKPT_FILE,   /* a sandbox's checkpoints/C/status */
	K_CACHE, /* cache/: status (the chunk cache and the snapshot store) is a K_STATIC_FILE */
};

/* A decoded inode; holds references to its objects. */
struct node {
	enum kind kind;
	fuse_ino_t ino;
	struct template *t;
	struct sandbox *s;
	uint64_t slot_id; /* K_SLOT_*: the slot, within template t */
	struct proc *p;	  /* K_PROC_* */
	struct checkpoint *ck; /* K_CKPT_* */
	const struct file_def *file;
	char *by_key, *by_value; /* K_BY_KEY (key), K_BY_VALUE (both) */
	char *host;		 /* K_HOST_DIR, K_HOST_FILE */
};

/*
 * Every open file and directory is on its fs's list until released, so a
 * shutdown releases what the kernel never did (handles still open when the
 * mount went away).
 */
struct open_handle {
	struct open_handle *prev, *next;
	void (*release)(struct open_handle *oh);
};

/* A mount in /proc/self/mountinfo: its id and device (0 if unknown). */
struct fs_mount_id {
	int id;
	unsigned major, minor;
};

struct fs {
	struct engine *e;
	struct fuse_session *se;
	char *mountpoint;
	bool mounted;
	struct fs_mount_id mount_id; /* the mount as made by fs_mount */
	int watch_pipe[2];	     /* mount.c: tells the watcher to end */
	pthread_t watcher;
	bool watching;
	pthread_mutex_t handles_lock;
	struct open_handle handles; /* list head; protected by handles_lock */
	struct events *events;	    /* events.c */
	struct follow *follow;	    /* follow.c */
	struct inval *inval;	    /* inval.c */
	bool changes_detached;	    /* the engine's guestfs change hook is cleared (it goes first) */
	struct bymeta *bymeta;	    /* bymeta.c */
	atomic_int remote_reads;    /* remote.c: reads on their own threads */
	struct cluster *cluster;    /* NULL: single-host mode (fs_set_cluster) */
	struct remote *remote;	    /* remote.c */
	struct hosts *hosts;	    /* hosts.c */
};

/*
 * The mount (mount.c): while the session loop runs, a thread watches the
 * daemon's mount table and sends the daemon SIGTERM once the mount is gone
 * from it (an external `fusermount3 -u`). Stop it before the signal handlers go.
 */
void fs_watch_start(struct fs *f);
void fs_watch_stop(struct fs *f);

void fs_handle_add(struct fs *f, struct open_handle *oh, void (*release)(struct open_handle *oh));
void fs_handle_del(struct fs *f, struct open_handle *oh);

int node_get(struct fs *f, fuse_ino_t ino, struct node *n);
void node_put(struct node *n);

/* sandboxes-by/ (bymeta.c) */
int bymeta_init(struct fs *f);
void bymeta_free(struct fs *f);
/* node_get of a by-directory's id (n->ino set): -ENOENT if unknown or matching nothing now */
int bymeta_node(struct fs *f, uint64_t obj, struct node *n);
/* p: K_BY, K_BY_KEY or K_BY_VALUE */
int bymeta_lookup(struct fs *f, const struct node *p, const char *name, struct node *out);
void bymeta_list(struct fs *f, const struct node *n, void (*add)(void *ctx, const char *name, fuse_ino_t ino, mode_t mode),
		 void *ctx);
char *bymeta_link(struct fs *f, const struct node *n); /* K_BY_LINK's target, malloc'd */

/* hosts/ (hosts.c; cluster mode only): each host of the view, by a stable engine id. */
int hosts_init(struct fs *f);
void hosts_free(struct fs *f);
/* node_get of a host directory's id (n->ino set): -ENOENT if unknown or no longer in the view */
int hosts_node(struct fs *f, uint64_t obj, struct node *n);
/* p: K_HOSTS or K_HOST_DIR */
int hosts_lookup(struct fs *f, const struct node *p, const char *name, struct node *out);
void hosts_list(struct fs *f, void (*add)(void *ctx, const char *name, fuse_ino_t ino, bool dir), void *ctx);

/* The name of a template (malloc'd; NULL if it is gone). */
char *fs_template_name(struct fs *f, struct template *t);

/* File handle operations (handles.c). */
void fh_open(struct fs *f, fuse_req_t req, struct node *n, struct fuse_file_info *fi);
void fh_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void fh_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi);
void fh_flush(fuse_req_t req, struct fuse_file_info *fi);
int fh_truncate(struct fuse_file_info *fi, off_t size); /* ftruncate of an open Dockerfile */
int dockerfile_truncate(struct template *t, off_t size);
void fh_release(fuse_req_t req, struct fuse_file_info *fi);
extern const char fs_readme[];

/* live/ (live.c): every inode with LIVE_INO_BIT. */
void live_lookup_root(fuse_req_t req, struct fs *f, const char *name);
void live_list_root(struct fs *f, void (*add)(void *ctx, const char *name, fuse_ino_t ino, bool dir), void *ctx);
void live_forget(fuse_ino_t ino, uint64_t nlookup);
void live_lookup(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name);
void live_getattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi);
void live_setattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct stat *attr, int to_set,
		  struct fuse_file_info *fi);
void live_opendir(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi);
void live_readdir(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void live_releasedir(fuse_req_t req, struct fs *f, struct fuse_file_info *fi);
void live_mkdir(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode);
void live_mknod(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void live_remove(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, bool dir);
void live_symlink(fuse_req_t req, struct fs *f, const char *target, fuse_ino_t parent, const char *name);
void live_link(fuse_req_t req, struct fs *f, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void live_rename(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		 const char *newname, unsigned int flags);
void live_readlink(fuse_req_t req, struct fs *f, fuse_ino_t ino);
void live_statfs(fuse_req_t req, struct fs *f, fuse_ino_t ino);
void live_open(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi);
void live_create(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode,
		 struct fuse_file_info *fi);
void live_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void live_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		struct fuse_file_info *fi);
void live_fsync(fuse_req_t req, int datasync, struct fuse_file_info *fi);
void live_release(fuse_req_t req, struct fs *f, struct fuse_file_info *fi);
/* The engine's guestfs change hook: drops the host's cached pages of a file the guest changed. */
void live_on_change(void *ctx, uint64_t sb, struct guest_id id, uint64_t chg);

/*
 * Reads that follow a growing file (follow.c). A follower is one open file's
 * parked read: fd is read at off; live says whether the file still grows;
 * done drops what the parked read held (called once per follow_read, after
 * the answer).
 */
struct follower {
	struct follower *prev, *next; /* the follow's list; protected by its lock */
	int fd;
	bool watched;
	bool (*live)(struct follower *w);
	void (*done)(struct follower *w);
	struct follow *fl;
	fuse_req_t req;
	size_t size;
	off_t off;
};
int follow_init(struct fs *f);
void follow_read(struct fs *f, struct follower *w, fuse_req_t req, size_t size, off_t off);
void follow_interrupt(fuse_req_t req, void *arg);
void follow_kick(struct fs *f); /* lock-free: the engine reported an event */
void follow_stop(struct fs *f);
void follow_free(struct fs *f);

/*
 * Sandboxes on other hosts (remote.c): every inode with REMOTE_INO_BIT,
 * each operation forwarded to the peer that runs the sandbox (cluster/peer.h).
 * Only called with f->cluster set.
 */
int remote_init(struct fs *f);
void remote_free(struct fs *f);
/* Replies with the entry of templates/TPL/sandboxes/NAME (tpl NULL: live/NAME), or ENOENT. */
/*
 * made: the entry of a sandbox this mkdir just placed on another host, its
 * attributes made here: a stat through the peer's mount would wait on its
 * directory lock while that host's own mkdir may wait on this one (a cycle).
 */
void remote_reply_root(fuse_req_t req, struct fs *f, const char *tpl, const char *name, bool made);
/* The names of templates/TPL/sandboxes/ on other hosts (tpl NULL: of every template, for live/). */
void remote_list_root(struct fs *f, const char *tpl, void (*add)(void *ctx, const char *name, fuse_ino_t ino, bool dir),
		      void *ctx);
void remote_forget(struct fs *f, fuse_ino_t ino, uint64_t nlookup);
void remote_lookup(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name);
void remote_getattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi);
void remote_setattr(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct stat *attr, int to_set,
		    struct fuse_file_info *fi);
void remote_opendir(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi);
void remote_readdir(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void remote_releasedir(fuse_req_t req, struct fs *f, struct fuse_file_info *fi);
void remote_mkdir(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode);
void remote_mknod(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void remote_remove(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, bool dir);
void remote_symlink(fuse_req_t req, struct fs *f, const char *target, fuse_ino_t parent, const char *name);
void remote_rename(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		   const char *newname, unsigned int flags);
void remote_readlink(fuse_req_t req, struct fs *f, fuse_ino_t ino);
void remote_statfs(fuse_req_t req);
void remote_open(fuse_req_t req, struct fs *f, fuse_ino_t ino, struct fuse_file_info *fi);
void remote_create(fuse_req_t req, struct fs *f, fuse_ino_t parent, const char *name, mode_t mode,
		   struct fuse_file_info *fi);
void remote_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void remote_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi);
void remote_fsync(fuse_req_t req, struct fuse_file_info *fi);
void remote_flush(fuse_req_t req, struct fuse_file_info *fi);
/* After the loop: ends the reads still waiting on other hosts (their threads answer and go). */
void remote_stop(struct fs *f);
void remote_release(fuse_req_t req, struct fs *f, struct fuse_file_info *fi);
void remote_poll(fuse_req_t req, struct fuse_pollhandle *ph);

/* Kernel cache invalidations: one queue, one thread (inval.c). */
struct inval;
int inval_new(struct fuse_session *se, struct inval **ret);
void inval_free(struct inval *iv);
/* Drops the kernel's pages and attributes of ino; with wait, returns once done (bounded). */
void inval_inode(struct inval *iv, fuse_ino_t ino, bool wait);
/* Drops the kernel's attributes of ino only (its pages stay); returns once done (bounded). */
void inval_attr(struct inval *iv, fuse_ino_t ino);
/*
 * The same, not before due_ns (now_ns()), and only if check(ctx, ino, &later)
 * says so then (true); check may set later to be asked again at that time.
 */
typedef bool (*inval_check_fn)(void *ctx, fuse_ino_t ino, uint64_t *later);
void inval_inode_at(struct inval *iv, fuse_ino_t ino, uint64_t due_ns, inval_check_fn check, void *ctx);

/* events and poll (events.c) */
int events_init(struct fs *f);
void events_free(struct fs *f);
/* Clears the engine's event hook (before the engine goes). */
void events_detach(struct fs *f);
/* The events file: a subscriber per open handle. */
void events_open(struct fs *f, fuse_req_t req, struct fuse_file_info *fi);
void events_read(fuse_req_t req, size_t size, struct fuse_file_info *fi);
void events_release(fuse_req_t req, struct fuse_file_info *fi);
void events_poll(fuse_req_t req, struct fuse_file_info *fi, struct fuse_pollhandle *ph);
bool events_is(struct fuse_file_info *fi);
/* poll on a sandbox's status: ph is notified at its next state change. */
void status_poll_add(struct fs *f, uint64_t sandbox_id, struct fuse_pollhandle *ph);
/* poll on generated files (handles.c) */
void fh_poll(fuse_req_t req, struct fuse_file_info *fi, struct fuse_pollhandle *ph);
