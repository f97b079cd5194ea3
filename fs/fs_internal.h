/* Shared between fs.c (tree, lookup, dispatch) and handles.c (open files). */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>

#include "common.h"
#include "engine.h"

/* Inode numbers: (object id << 4) | index. Object 0 is the static tree. */
#define INO(obj, idx) (((fuse_ino_t)(obj) << 4) | (idx))
#define INO_OBJ(ino) ((uint64_t)(ino) >> 4)
#define INO_IDX(ino) ((unsigned)((ino)&15))

enum { IDX_ROOT = 1, IDX_TEMPLATES = 2, IDX_README = 3, IDX_VERSION = 4, IDX_METRICS = 5 };
enum { IDX_DIR = 0, IDX_TPL_SANDBOXES = 5, IDX_TPL_SLOTS = 6 };

enum ftype { F_STATIC, F_RENDER, F_CONFIG, F_CTL, F_POOL, F_WAIT, F_EXEC, F_CONSOLE, F_SBCTL };

struct file_def {
	const char *name;
	unsigned idx;
	mode_t mode;
	enum ftype type;
	char *(*render_t)(struct template *t);
	char *(*render_s)(struct sandbox *s);
	char *(*render_slot)(struct template *t, uint64_t slot_id);
};

enum kind {
	K_ROOT, K_TEMPLATES, K_STATIC_FILE, K_TPL_DIR, K_TPL_FILE, K_TPL_SANDBOXES, K_SB_DIR, K_SB_FILE,
	K_TPL_SLOTS, K_SLOT_DIR, K_SLOT_FILE,
};

/* A decoded inode; holds references to its objects. */
struct node {
	enum kind kind;
	fuse_ino_t ino;
	struct template *t;
	struct sandbox *s;
	uint64_t slot_id; /* K_SLOT_*: the slot, within template t */
	const struct file_def *file;
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

struct fs {
	struct engine *e;
	struct fuse_session *se;
	char *mountpoint;
	bool mounted;
	pthread_mutex_t handles_lock;
	struct open_handle handles; /* list head; protected by handles_lock */
};

void fs_handle_add(struct fs *f, struct open_handle *oh, void (*release)(struct open_handle *oh));
void fs_handle_del(struct fs *f, struct open_handle *oh);

int node_get(struct fs *f, fuse_ino_t ino, struct node *n);
void node_put(struct node *n);

/* File handle operations (handles.c). */
void fh_open(struct fs *f, fuse_req_t req, struct node *n, struct fuse_file_info *fi);
void fh_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void fh_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi);
void fh_flush(fuse_req_t req, struct fuse_file_info *fi);
void fh_release(fuse_req_t req, struct fuse_file_info *fi);
extern const char fs_readme[];
