/*
 * The FUSE mount: made over a stale one, watched while the daemon serves,
 * undone only while it is still ours.
 *
 * `fusermount3 -u MOUNTPOINT` stops the daemon (README). The kernel ends the
 * connection, and with it the session loop, only once no copy of the mount
 * is left in any mount namespace: a copy in a namespace made without
 * propagation (`unshare -m`, the VMMs of an emberfs before they had roots of
 * their own) keeps it alive. So a thread watches the daemon's own mount
 * table and, once the mount is gone from it, stops the daemon as SIGTERM
 * does.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"
#include "fs_internal.h"

#define MOUNTINFO "/proc/self/mountinfo"

/* In place: the octal escapes (\040 for a space) of a mountinfo path. */
static void unescape(char *s)
{
	char *o = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
		    s[3] <= '7') {
			*o++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
			s += 3;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
}

/* One mountinfo line: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS] - TYPE SOURCE SUPER". */
static bool mountinfo_parse(char *line, struct fs_mount_id *m, char **ret_path, char **ret_type)
{
	char *save = NULL, *path = NULL, *sep = strstr(line, " - ");
	char *tok = strtok_r(line, " ", &save);

	if (!sep || !tok || sscanf(tok, "%d", &m->id) != 1)
		return false;
	for (int i = 1; i <= 4 && (tok = strtok_r(NULL, " ", &save)); i++) {
		if (i == 2 && sscanf(tok, "%u:%u", &m->major, &m->minor) != 2)
			return false;
		if (i == 4)
			path = tok;
	}
	if (!path)
		return false;
	unescape(path);
	*ret_path = path;
	*ret_type = sep + 3;
	(*ret_type)[strcspn(*ret_type, " \n")] = '\0';
	return true;
}

/*
 * Scans the daemon's mount table: with path, *ret becomes the topmost FUSE
 * mount there; else whether the mount *want (its id and device) is there.
 * Returns 1 if found, 0 if not, -errno if the table cannot be read.
 */
static int mountinfo_find(const char *path, const struct fs_mount_id *want, struct fs_mount_id *ret)
{
	FILE *fp = fopen(MOUNTINFO, "re");
	_cleanup_free_ char *line = NULL;
	size_t n = 0;
	int found = 0;

	if (!fp)
		return -errno;
	while (getline(&line, &n, fp) > 0) {
		struct fs_mount_id cur;
		char *mp, *type;

		if (!mountinfo_parse(line, &cur, &mp, &type))
			continue;
		if (path && strcmp(mp, path) == 0 && strncmp(type, "fuse", 4) == 0) {
			*ret = cur; /* a later line is mounted on top */
			found = 1;
		} else if (!path && cur.id == want->id && cur.major == want->major && cur.minor == want->minor) {
			found = 1;
			break;
		}
	}
	fclose(fp);
	return found;
}

/* Still in the daemon's mount table (also when that cannot be told). */
static bool mount_present(const struct fs_mount_id *m)
{
	return m->id == 0 || mountinfo_find(NULL, m, NULL) != 0;
}

/* A mount left by a daemon that died answers ENOTCONN: detach it before mounting again. */
static void clear_stale_mount(const char *mp)
{
	struct stat st;

	if (stat(mp, &st) < 0 && errno == ENOTCONN) {
		log_warn("%s: stale FUSE mount from an earlier run, detaching it", mp);
		umount2(mp, MNT_DETACH);
	}
}

/*
 * The kernel reads ahead at most the mount's bdi read_ahead_kb (128 KiB by
 * default), whatever max_readahead says: live/ files would be read in
 * 128 KiB requests, each a round trip into the guest. 1 MiB, the agent's
 * frame. Best effort.
 */
static void set_readahead(const struct fs_mount_id *m)
{
	char path[96];
	_cleanup_close_ int fd = -1;

	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", m->major, m->minor);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "1024\n", 5) != 5)
		log_debug("%s: read-ahead left as it was", path);
}

int fs_mount(struct fs *f, const char *mountpoint)
{
	_cleanup_free_ char *real = NULL;

	clear_stale_mount(mountpoint);
	/* before the mount: after it, resolving the path would wait for the loop to answer */
	real = realpath(mountpoint, NULL);
	if (fuse_session_mount(f->se, mountpoint) != 0)
		return -EIO;
	f->mountpoint = strdup(mountpoint);
	f->mounted = true;
	if (!real || mountinfo_find(real, NULL, &f->mount_id) != 1) {
		log_warn("%s: not found in %s: an external unmount will not stop the daemon", mountpoint, MOUNTINFO);
		f->mount_id.id = 0;
	} else {
		set_readahead(&f->mount_id);
	}
	return 0;
}

/*
 * Until told to stop through watch_pipe: at every change of the mount table
 * (mountinfo polls POLLPRI), whether the mount is still there; once it is
 * not, SIGTERM to the daemon, which a FUSE thread takes (this thread blocks
 * every signal) and which ends the session loop as always.
 */
static void *watch_thread(void *arg)
{
	struct fs *f = arg;
	_cleanup_close_ int fd = open(MOUNTINFO, O_RDONLY | O_CLOEXEC);
	struct pollfd p[2] = { { .fd = fd, .events = POLLPRI }, { .fd = f->watch_pipe[0], .events = POLLIN } };

	/* a change before the open above is not signalled: look once first */
	while (fd >= 0 && mount_present(&f->mount_id)) {
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			return NULL;
		if (p[1].revents)
			return NULL;
	}
	if (fd >= 0 && !fuse_session_exited(f->se)) {
		log_info("%s was unmounted: stopping", f->mountpoint);
		kill(getpid(), SIGTERM);
	}
	return NULL;
}

void fs_watch_start(struct fs *f)
{
	int r;

	if (f->mount_id.id == 0 || pipe2(f->watch_pipe, O_CLOEXEC) < 0)
		return;
	r = thread_create(&f->watcher, NULL, watch_thread, f);
	if (r) {
		log_warn("cannot watch the mount table: %s (an external unmount will not stop the daemon)",
			 strerror(r));
		close(f->watch_pipe[0]);
		close(f->watch_pipe[1]);
		return;
	}
	f->watching = true;
}

void fs_watch_stop(struct fs *f)
{
	if (!f->watching)
		return;
	if (write(f->watch_pipe[1], "x", 1) < 0)
		log_debug("mount watch: %s", strerror(errno));
	pthread_join(f->watcher, NULL);
	close(f->watch_pipe[0]);
	close(f->watch_pipe[1]);
	f->watching = false;
}

/*
 * The mount is gone from the daemon's table (an external unmount) while the
 * kernel may still hold the connection (a copy of the mount elsewhere, files
 * still open under a lazy unmount). libfuse's unmount would then umount2()
 * the path, which is no longer ours: an error at best ("failed to unmount:
 * Invalid argument"), another mount made there since at worst. It skips
 * that when the device descriptor polls POLLERR, as the descriptor of an
 * ended connection does: so ours is replaced by one that does (a pipe's
 * write end without a reader). Closing ours ends the connection; whoever
 * still has a copy of the mount gets ENOTCONN.
 */
static void connection_drop(struct fs *f)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC) < 0)
		return;
	close(p[0]);
	if (dup3(p[1], fuse_session_fd(f->se), O_CLOEXEC) < 0)
		log_debug("cannot drop the FUSE connection: %s", strerror(errno));
	close(p[1]);
}

void fs_unmount(struct fs *f)
{
	if (!f || !f->mounted)
		return;
	if (!mount_present(&f->mount_id))
		connection_drop(f);
	fuse_session_unmount(f->se);
	f->mounted = false;
}
