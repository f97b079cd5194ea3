/*
 * The artifact store and copy-on-write clones.
 *
 * Clones use FICLONE (reflink). When the state directory's filesystem cannot
 * reflink (ext4, tmpfs), the store is an XFS image with reflink=1 inside the
 * state directory, loop-mounted by the daemon. Without that (--no-loop-store)
 * clones are full sparse copies, and every status says so.
 */
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "internal.h"

extern char **environ;

const char *clone_method_name(enum clone_method m)
{
	return m == CLONE_REFLINK ? "reflink" : "copy";
}

static int run_wait(char *const argv[])
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st, r;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r)
		return -r;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

/* Does FICLONE work in dir? Tried on two small files. */
static bool probe_reflink(const char *dir)
{
	_cleanup_free_ char *a = strjoin(dir, "/.reflink-probe-a", NULL);
	_cleanup_free_ char *b = strjoin(dir, "/.reflink-probe-b", NULL);
	_cleanup_close_ int fa = -1, fb = -1;
	bool ok;

	if (!a || !b)
		return false;
	fa = open(a, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	fb = open(b, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ok = fa >= 0 && fb >= 0 && write(fa, "emberfs\n", 8) == 8 && fsync(fa) == 0 &&
	     ioctl(fb, FICLONE, fa) == 0;
	unlink(a);
	unlink(b);
	return ok;
}

static bool is_mountpoint(const char *dir)
{
	_cleanup_free_ char *parent = strjoin(dir, "/..", NULL);
	struct stat a, b;

	return parent && stat(dir, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
}

/* Returns the open loop fd: with autoclear, closing it before the mount would detach the device. */
static int loop_attach(const char *image, char *dev, size_t devlen)
{
	_cleanup_close_ int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	_cleanup_close_ int img = open(image, O_RDWR | O_CLOEXEC);

	if (ctl < 0 || img < 0)
		return -errno;
	for (int tries = 0; tries < 16; tries++) {
		struct loop_config lc = { .fd = (uint32_t)img };
		_cleanup_close_ int lfd = -1;
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);

		if (n < 0)
			return -errno;
		snprintf(dev, devlen, "/dev/loop%d", n);
		lfd = open(dev, O_RDWR | O_CLOEXEC);
		if (lfd < 0)
			return -errno;
		/* Autoclear: the device goes away with the unmount, nothing to leak. */
		lc.info.lo_flags = LO_FLAGS_AUTOCLEAR;
		snprintf((char *)lc.info.lo_file_name, LO_NAME_SIZE, "emberfs-store");
		if (ioctl(lfd, LOOP_CONFIGURE, &lc) == 0)
			return TAKE_FD(lfd);
		if (errno != EBUSY)
			return -errno;
	}
	return -EBUSY;
}

static int make_image(const char *image, uint64_t size_mib)
{
	_cleanup_close_ int fd = open(image, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	char *argv[] = { "mkfs.xfs", "-q", "-m", "reflink=1", (char *)image, NULL };
	int r;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)(size_mib << 20)) < 0) {
		r = -errno;
		unlink(image);
		return r;
	}
	r = run_wait(argv);
	if (r < 0)
		unlink(image);
	return r;
}

/*
 * A loop device already backing the image (an earlier daemon's store, still
 * mounted in some mount namespace or being torn down): its number, or -1.
 */
static int loop_find(const struct stat *img)
{
	for (int n = 0; n < 1024; n++) {
		char dev[32];
		struct loop_info64 li;
		_cleanup_close_ int fd = -1;

		snprintf(dev, sizeof(dev), "/dev/loop%d", n);
		fd = open(dev, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (errno == ENOENT)
				break;
			continue;
		}
		if (ioctl(fd, LOOP_GET_STATUS64, &li) == 0 && li.lo_inode == img->st_ino &&
		    li.lo_device == img->st_dev)
			return n;
	}
	return -1;
}

/*
 * Mounts the image. If an instance of its XFS is still alive (a copy of an
 * earlier daemon's mount in another mount namespace, or one being torn
 * down), a second loop device over the same file would make two instances of
 * one filesystem: XFS refuses (duplicate UUID). So the device already
 * backing the image is mounted instead (the kernel shares its superblock);
 * one being detached is waited for, up to 5 s.
 */
static int mount_loop_store(struct store *s, uint64_t size_mib, char **ret_error)
{
	struct stat st;
	int r = 0;

	if (stat(s->image, &st) < 0) {
		r = make_image(s->image, size_mib);
		if (r < 0) {
			*ret_error = strdup("store: mkfs.xfs of the loop image failed (is xfsprogs installed?)");
			return r;
		}
		if (stat(s->image, &st) < 0)
			return -errno;
	}
	for (int tries = 0; tries < 50; tries++) {
		_cleanup_close_ int lfd = -1;
		char dev[64];
		int n = loop_find(&st);

		if (tries > 0)
			usleep(100 * 1000);
		if (n >= 0) {
			snprintf(dev, sizeof(dev), "/dev/loop%d", n);
		} else if ((r = lfd = loop_attach(s->image, dev, sizeof(dev))) < 0) {
			*ret_error = strdup("store: cannot attach a loop device to the store image");
			return r;
		}
		if (mount(dev, s->root, "xfs", MS_NOATIME, NULL) == 0) {
			if (n >= 0)
				log_info("store: %s still backed the store image (an earlier instance's); mounted it", dev);
			s->mounted = true;
			return 0;
		}
		r = -errno;
		if (r != -EINVAL && r != -ENXIO && r != -ENODEV)
			break;
	}
	*ret_error = strdup(r == -EINVAL ? "store: cannot mount the XFS store image: an instance of it is still "
					   "mounted and cannot be shared (see the kernel log)"
					 : "store: cannot mount the XFS store image");
	return r;
}

int store_open(const char *state_dir, uint64_t size_mib, bool no_loop, struct store *s, char **ret_error)
{
	int r;

	memset(s, 0, sizeof(*s));
	s->root = strjoin(state_dir, "/store", NULL);
	s->image = strjoin(state_dir, "/store.xfs", NULL);
	if (!s->root || !s->image)
		return -ENOMEM;
	r = mkdir_p(s->root, 0700);
	if (r < 0) {
		*ret_error = strdup("store: cannot create the store directory");
		return r;
	}
	if (is_mountpoint(s->root)) {
		/* Left mounted by a daemon that did not shut down: adopt it. */
		s->mounted = true;
	} else if (!probe_reflink(s->root) && !no_loop) {
		r = mount_loop_store(s, size_mib, ret_error);
		if (r < 0)
			return r;
	}
	s->reflink = probe_reflink(s->root);
	return 0;
}

void store_close(struct store *s)
{
	if (s->mounted && umount2(s->root, 0) < 0 && errno == EBUSY) {
		log_warn("store: %s is busy; detached (it goes when its last user does)", s->root);
		umount2(s->root, MNT_DETACH);
	}
	free(s->root);
	free(s->image);
	memset(s, 0, sizeof(*s));
}

/*
 * Copies [o, end) with copy_file_range, or read/write across filesystems.
 * The fallback's buffer is the heap's: a thread-local one was in every
 * thread's static TLS, 64 KiB touched at each of the daemon's threads'
 * start (two per sandbox).
 */
static int copy_range(int in, int out, off_t o, off_t end)
{
	enum { BUF = 1 << 16 };
	_cleanup_free_ char *buf = NULL;

	while (o < end) {
		loff_t io = o, oo = o;
		size_t want = (size_t)(end - o);
		ssize_t n = copy_file_range(in, &io, out, &oo, want, 0);

		if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS)) {
			if (!buf && !(buf = malloc(BUF)))
				return -ENOMEM;
			n = pread(in, buf, want < BUF ? want : BUF, o);
			if (n > 0 && pwrite(out, buf, (size_t)n, o) != n)
				return -EIO;
		}
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		o += n;
	}
	return 0;
}

/* A full copy that keeps holes: only data extents are copied. */
static int copy_sparse(int in, int out)
{
	struct stat st;
	off_t pos = 0;
	int r;

	if (fstat(in, &st) < 0 || ftruncate(out, st.st_size) < 0)
		return -errno;
	while (pos < st.st_size) {
		off_t data = lseek(in, pos, SEEK_DATA), hole;

		if (data < 0)
			return errno == ENXIO ? 0 : -errno;
		hole = lseek(in, data, SEEK_HOLE);
		if (hole < 0)
			return -errno;
		r = copy_range(in, out, data, hole);
		if (r < 0)
			return r;
		pos = hole;
	}
	return 0;
}

/* in's contents into out (empty): a reflink if the store makes them and this one works, else a sparse copy */
static int clone_fd(const struct store *s, int in, int out, enum clone_method *ret_method)
{
	int r;

	if (s->reflink && ioctl(out, FICLONE, in) == 0) {
		*ret_method = CLONE_REFLINK;
		return 0;
	}
	if ((r = copy_sparse(in, out)) < 0)
		return r;
	*ret_method = CLONE_COPY;
	return 0;
}

int store_clone(const struct store *s, const char *src, const char *dst, enum clone_method *ret_method)
{
	_cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
	_cleanup_close_ int out = -1;
	int r;

	if (in < 0)
		return -errno;
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0)
		return -errno;
	if ((r = clone_fd(s, in, out, ret_method)) < 0)
		unlink(dst);
	return r;
}

int store_clone_into(const struct store *s, const char *src, const char *dst, enum clone_method *ret_method)
{
	_cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
	_cleanup_close_ int out = -1;

	if (in < 0)
		return -errno;
	out = open(dst, O_WRONLY | O_CLOEXEC);
	if (out < 0)
		return -errno;
	if (ftruncate(out, 0) < 0)
		return -errno;
	return clone_fd(s, in, out, ret_method);
}

char *vm_file(const char *dir, enum vm_file f)
{
	static const char *const names[] = { [VM_MEM] = "/mem",		  [VM_DISK] = "/disk.img",
					     [VM_CONSOLE] = "/console.log", [VM_LOG] = "/vmm.log",
					     [VM_HIBERNATE] = "/hibernate.state", [VM_QMP] = "/qmp.sock",
					     [VM_AGENT] = "/agent.sock" };

	return dir ? strjoin(dir, names[f], NULL) : NULL;
}
