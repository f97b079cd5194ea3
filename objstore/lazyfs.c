/*
 * Lazy files: a private FUSE mount (read-only, allow_other, one flat
 * directory) whose files are manifests served piece by piece from the chunk
 * cache, fetching a chunk at its first read. A VMM maps one privately as its
 * guest RAM: a page fault becomes a read here, answered only with bytes that
 * passed their digest (else EIO: the VMM gets SIGBUS, never wrong memory).
 * Pages of the file are the kernel's page cache, shared by every VMM that
 * maps it until one writes (copy-on-write into its own memory); no mapping
 * of it can be shared (op_open), so no VMM can change what the others see.
 *
 * Served by threads of the daemon, which is not the VMMs' parent; what the
 * mount cannot answer once the daemon is gone (ENOTCONN) ends the VMMs that
 * still needed a page of it (docs/architecture.md says which).
 */
#define FUSE_USE_VERSION 312
#include <errno.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "common.h"
#include "objstore_internal.h"

#define TTL 3600.0 /* names and sizes never change under an inode */

struct lfile {
	char *name;
	struct manifest m;
	uint8_t *touched; /* per piece: read since registered */
	bool replaced;	  /* a newer registration took the name */
};

struct lazyfs {
	struct objstore *s;
	char *dir;
	struct fuse_session *se;
	pthread_t thread;
	bool running;
	unsigned conn; /* the kernel's connection number (/sys/fs/fuse/connections/N) */
	pthread_mutex_t lock;
	struct lfile *files; /* inode = index + 2; never removed while mounted */
	size_t n, cap;
};

static struct lazyfs *lz(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* The file behind ino, or NULL. lock held. */
static struct lfile *by_ino(struct lazyfs *l, fuse_ino_t ino)
{
	return ino >= 2 && ino - 2 < l->n ? &l->files[ino - 2] : NULL;
}

static void fill_attr(struct lazyfs *l, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = 0;
	st->st_gid = 0;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)l->files[ino - 2].m.size;
		st->st_blocks = (blkcnt_t)(manifest_data_bytes(&l->files[ino - 2].m) / 512);
	}
	st->st_blksize = 4096;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct lazyfs *l = lz(req);
	struct fuse_entry_param e = { .attr_timeout = TTL, .entry_timeout = TTL };

	pthread_mutex_lock(&l->lock);
	for (size_t i = l->n; parent == FUSE_ROOT_ID && i-- > 0;)
		if (!l->files[i].replaced && strcmp(l->files[i].name, name) == 0) {
			e.ino = i + 2;
			fill_attr(l, e.ino, &e.attr);
			break;
		}
	pthread_mutex_unlock(&l->lock);
	if (!e.ino)
		fuse_reply_err(req, ENOENT);
	else
		fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct lazyfs *l = lz(req);
	struct stat st;
	bool ok;

	pthread_mutex_lock(&l->lock);
	if ((ok = ino == FUSE_ROOT_ID || by_ino(l, ino)))
		fill_attr(l, ino, &st);
	pthread_mutex_unlock(&l->lock);
	if (ok)
		fuse_reply_attr(req, &st, TTL);
	else
		fuse_reply_err(req, ENOENT);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct lazyfs *l = lz(req);
	bool ok;

	pthread_mutex_lock(&l->lock);
	ok = by_ino(l, ino) != NULL;
	pthread_mutex_unlock(&l->lock);
	if (!ok) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	/*
	 * QEMU 7.2 opens its RAM file read-write even to map it privately, so
	 * opens for writing are let through; nothing can write: there is no
	 * write or setattr here, and direct_io makes the kernel refuse every
	 * MAP_SHARED mapping (the one way a VMM could change the page cache
	 * its neighbours map). MAP_PRIVATE still maps the page cache, shared
	 * by every VMM until it writes (each mmap drops pages nobody maps).
	 */
	fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct lazyfs *l = lz(req);
	struct manifest m = { 0 };
	uint8_t *touched = NULL;
	_cleanup_free_ char *buf = NULL;
	uint64_t end, pos;
	int r = 0;

	pthread_mutex_lock(&l->lock);
	if (by_ino(l, ino)) {
		m = l->files[ino - 2].m; /* its arrays live as long as the mount */
		touched = l->files[ino - 2].touched;
	}
	pthread_mutex_unlock(&l->lock);
	if (!touched) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (off < 0 || (uint64_t)off >= m.size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	end = (uint64_t)off + size < m.size ? (uint64_t)off + size : m.size;
	if (!(buf = malloc(end - (uint64_t)off))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (pos = (uint64_t)off; pos < end && r == 0;) {
		size_t i = (size_t)(pos / m.chunk);
		uint64_t in = pos - (uint64_t)i * m.chunk;
		size_t len = (size_t)((end - pos) < m.chunk - in ? end - pos : m.chunk - in);

		if (!m.digests[i][0])
			memset(buf + (pos - (uint64_t)off), 0, len);
		else
			r = objstore_read_chunk(l->s, m.digests[i], in, buf + (pos - (uint64_t)off), len);
		if (r == 0 && touched)
			__atomic_store_n(&touched[i], 1, __ATOMIC_RELAXED);
		pos += len;
	}
	if (r < 0)
		fuse_reply_err(req, EIO);
	else
		fuse_reply_buf(req, buf, end - (uint64_t)off);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct lazyfs *l = lz(req);
	_cleanup_free_ char *buf = NULL;
	size_t used = 0;

	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (!(buf = malloc(size))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&l->lock);
	for (size_t i = (size_t)off; i < l->n; i++) {
		struct stat st;
		size_t need;

		if (l->files[i].replaced)
			continue;
		fill_attr(l, i + 2, &st);
		need = fuse_add_direntry(req, buf + used, size - used, l->files[i].name, &st, (off_t)i + 1);
		if (need > size - used)
			break;
		used += need;
	}
	pthread_mutex_unlock(&l->lock);
	fuse_reply_buf(req, buf, used);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct lazyfs *l = userdata;

	/*
	 * A fault reads around it (the kernel's mmap read-around); more than
	 * a chunk would fetch chunks the guest does not need.
	 */
	conn->max_readahead = l->s->o.chunk < (128u << 10) ? l->s->o.chunk : 128u << 10;
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.open = op_open,
	.read = op_read,
	.readdir = op_readdir,
};

static void *loop_main(void *arg)
{
	struct lazyfs *l = arg;
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();

	if (!cfg)
		return NULL;
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	fuse_loop_cfg_set_max_threads(cfg, 32);
	fuse_loop_cfg_set_idle_threads(cfg, 4);
	fuse_session_loop_mt(l->se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return NULL;
}

int lazyfs_start(struct objstore *s, const char *dir, char **ret_error)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct lazyfs *l = calloc(1, sizeof(*l));
	int r;

	if (!l)
		return -ENOMEM;
	l->s = s;
	pthread_mutex_init(&l->lock, NULL);
	s->lazy = l;
	if (!(l->dir = strdup(dir)))
		return -ENOMEM;
	/* a crashed daemon's mount answers ENOTCONN: detach it */
	if (umount2(dir, MNT_DETACH) == 0)
		log_info("%s: a stale mount of an earlier run detached", dir);
	if ((r = mkdir_p(dir, 0700)) < 0) {
		error_set(ret_error, "%s: %s", dir, strerror(-r));
		return r;
	}
	/*
	 * allow_other: the VMMs run as users of their own and reopen the fd
	 * they are given (/proc/self/fd) read-write; no default_permissions
	 * (the files are 0444 and yet opened so). Nobody else reaches the
	 * mount: it is under the state directory (0700).
	 */
	if (fuse_opt_add_arg(&args, "emberfs") < 0 || fuse_opt_add_arg(&args, "-o") < 0 ||
	    fuse_opt_add_arg(&args, "fsname=emberfs-lazy,subtype=emberfs-lazy,allow_other") < 0) {
		fuse_opt_free_args(&args);
		return -ENOMEM;
	}
	l->se = fuse_session_new(&args, &ops, sizeof(ops), l);
	fuse_opt_free_args(&args);
	if (!l->se || fuse_session_mount(l->se, dir) != 0) {
		error_set(ret_error, "%s: cannot mount the lazy files", dir);
		return -EIO;
	}
	if ((r = thread_create(&l->thread, NULL, loop_main, l)) != 0) {
		error_set(ret_error, "lazy files: cannot start their thread");
		return -r;
	}
	l->running = true;
	{
		/* the connection's number, for abort_conn (answered by the loop: after it started) */
		struct stat st;

		if (stat(dir, &st) == 0)
			l->conn = minor(st.st_dev);
	}
	return 0;
}

static int join_within(struct lazyfs *l, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return pthread_timedjoin_np(l->thread, NULL, &ts);
}

/* The kernel's way to end a connection whose mount cannot go (fusectl, mounted here if it is not yet). */
static void abort_conn(struct lazyfs *l)
{
	char path[96];
	int fd;

	snprintf(path, sizeof(path), "/sys/fs/fuse/connections/%u/abort", l->conn);
	if (access("/sys/fs/fuse/connections/", F_OK) == 0 && access(path, F_OK) < 0)
		mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, NULL);
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0 || write(fd, "1", 1) != 1)
		log_error("%s: cannot abort its connection (%s): %s", l->dir, path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

void lazyfs_stop(struct objstore *s)
{
	struct lazyfs *l = s->lazy;

	if (!l)
		return;
	if (l->se) {
		fuse_session_exit(l->se);
		if (l->running) {
			/* the mount gone, the kernel ends the connection and the loop's reads return */
			umount2(l->dir, MNT_DETACH);
			if (join_within(l, 2000) != 0) {
				/* something still has a file of it open (a process that outlived its sandbox?): cut it off */
				log_warn("%s: still in use 2 s after its unmount: aborting its connection", l->dir);
				abort_conn(l);
				pthread_join(l->thread, NULL);
			}
		}
		fuse_session_unmount(l->se);
		fuse_session_destroy(l->se);
	}
	for (size_t i = 0; i < l->n; i++) {
		free(l->files[i].name);
		manifest_clear(&l->files[i].m);
		free(l->files[i].touched);
	}
	if (l->dir)
		rmdir(l->dir);
	free(l->files);
	free(l->dir);
	pthread_mutex_destroy(&l->lock);
	free(l);
	s->lazy = NULL;
}

static bool same_manifest(const struct manifest *a, const struct manifest *b)
{
	return a->size == b->size && a->n == b->n && memcmp(a->digests, b->digests, a->n * sizeof(*a->digests)) == 0;
}

int objstore_lazy_open(struct objstore *s, const char *name, const struct manifest *m, int *ret_fd, char **why)
{
	struct lazyfs *l = s->lazy;
	_cleanup_free_ char *path = NULL;
	struct lfile *f = NULL;
	int fd, r = 0;

	if (strchr(name, '/') || name[0] == '.' || strlen(name) > 200)
		return -EINVAL;
	pthread_mutex_lock(&l->lock);
	for (size_t i = l->n; i-- > 0;)
		if (!l->files[i].replaced && strcmp(l->files[i].name, name) == 0) {
			f = &l->files[i];
			break;
		}
	if (f && same_manifest(&f->m, m)) {
		memset(f->touched, 0, f->m.n ? f->m.n : 1);
	} else {
		if (f)
			f->replaced = true; /* its inode still serves whoever has it open */
		if (l->n == l->cap) {
			size_t cap = l->cap ? l->cap * 2 : 16;
			struct lfile *nf = realloc(l->files, cap * sizeof(*nf));

			if (!nf)
				r = -ENOMEM;
			else
				l->files = nf, l->cap = cap;
		}
		if (r == 0) {
			f = &l->files[l->n];
			memset(f, 0, sizeof(*f));
			if (!(f->name = strdup(name)) || (r = manifest_copy(m, &f->m)) < 0 ||
			    !(f->touched = calloc(m->n ? m->n : 1, 1))) {
				free(f->name);
				manifest_clear(&f->m);
				free(f->touched);
				r = -ENOMEM;
			} else {
				l->n++;
			}
		}
	}
	pthread_mutex_unlock(&l->lock);
	if (r < 0)
		return r;
	if (!(path = strjoin(l->dir, "/", name, NULL)))
		return -ENOMEM;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		error_set(why, "lazy file %s: %s", path, strerror(errno));
		return -errno;
	}
	*ret_fd = fd;
	return 0;
}

int objstore_lazy_touched(struct objstore *s, const char *name, uint32_t **ret, size_t *ret_n)
{
	struct lazyfs *l = s->lazy;
	uint32_t *v = NULL;
	size_t n = 0;
	int r = -ENOENT;

	pthread_mutex_lock(&l->lock);
	for (size_t i = l->n; i-- > 0;) {
		struct lfile *f = &l->files[i];

		if (f->replaced || strcmp(f->name, name) != 0)
			continue;
		r = 0;
		if (f->m.n && !(v = calloc(f->m.n, sizeof(*v)))) {
			r = -ENOMEM;
			break;
		}
		for (size_t k = 0; k < f->m.n; k++)
			if (__atomic_load_n(&f->touched[k], __ATOMIC_RELAXED) && f->m.digests[k][0])
				v[n++] = (uint32_t)k;
		break;
	}
	pthread_mutex_unlock(&l->lock);
	if (r == 0) {
		*ret = v;
		*ret_n = n;
	}
	return r;
}
