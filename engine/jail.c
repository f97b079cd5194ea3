/*
 * The isolation every driver's VMM process gets (driver.h): jail_spawn forks
 * the process, which enters the sandbox's network namespace, sets
 * no_new_privs, gets every file and socket at the fixed descriptors
 * (FD_INCOMING ... FD_INITRD), a private mount namespace whose root holds
 * only /usr and what the binary needs (docs/operations.md, Confinement),
 * drops to its own unprivileged user and execs the driver's argument
 * vector; the parent places it in its cgroups meanwhile. Then the process
 * is tracked through a pidfd: signals and waits never reach a reused pid.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <grp.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "internal.h"
#include "jail.h"

extern char **environ;

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* The binary's path as execve wants it: as given if it has a '/', else found in PATH. */
static char *find_binary(const char *binary)
{
	const char *path = getenv("PATH");
	_cleanup_free_ char *copy = NULL;
	char *dir, *save = NULL;

	if (strchr(binary, '/'))
		return strdup(binary);
	copy = strdup(path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
	for (dir = copy ? strtok_r(copy, ":", &save) : NULL; dir; dir = strtok_r(NULL, ":", &save)) {
		char *p = strjoin(dir, "/", binary, NULL);

		if (p && access(p, X_OK) == 0)
			return p;
		free(p);
	}
	errno = ENOENT;
	return NULL;
}

/* What the child reports if it fails before exec: the step and its errno. */
struct spawn_failure {
	int step;
	int err;
};
static const char *const spawn_steps[] = { "enter the network namespace", "set no_new_privs",
					   "open the guest's files", "bind the control sockets", "open the tap",
					   "set up stdio", "make a private mount namespace", "make the VMM's root",
					   "drop privileges", "exec" };

/* ---- the VMM's user ---- */

/*
 * Each VMM runs as its own user, uid_base + an index free among the live
 * VMMs (gid the same), so no VMM can signal, trace or open another's files.
 */
static pthread_mutex_t uid_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t uid_used[VMM_UID_RANGE / 64];
static unsigned uid_next;

static int uid_get(void)
{
	int r = -EAGAIN;

	pthread_mutex_lock(&uid_lock);
	for (unsigned i = 0; i < VMM_UID_RANGE; i++) {
		unsigned k = (uid_next + i) % VMM_UID_RANGE;

		if (!(uid_used[k / 64] & (1ull << (k % 64)))) {
			uid_used[k / 64] |= 1ull << (k % 64);
			uid_next = k + 1; /* the next VMM gets another, recently unused one */
			r = (int)k;
			break;
		}
	}
	pthread_mutex_unlock(&uid_lock);
	return r;
}

static void uid_put(int k)
{
	if (k < 0)
		return;
	pthread_mutex_lock(&uid_lock);
	uid_used[k / 64] &= ~(1ull << (k % 64));
	pthread_mutex_unlock(&uid_lock);
}

/* A re-adopted VMM's: in use again. */
static int uid_take(uid_t uid, uid_t base)
{
	int k;

	if (!base || uid < base || uid - base >= VMM_UID_RANGE)
		return -1;
	k = (int)(uid - base);
	pthread_mutex_lock(&uid_lock);
	uid_used[k / 64] |= 1ull << (k % 64);
	pthread_mutex_unlock(&uid_lock);
	return k;
}

/* ---- the VMM's root ---- */

/*
 * What a VMM sees of the host's file tree, once its child has pivoted into
 * it: a read-only tmpfs with /usr bound read-only (QEMU, its libraries and
 * firmware), the host's /bin, /sbin, /lib, /lib64 as the same symlinks (or
 * read-only binds where they are directories), /dev/null (QEMU probes its
 * file locks on it; without it, it falls back to locks a close drops),
 * /dev/kvm under KVM, and a /proc of the VMM's own processes (QEMU opens its
 * files as /proc/self/fd/N and finds its firmware from /proc/self/exe).
 * Nothing else: not the state directory, not the FUSE mount, not another
 * VM's files. QEMU (strace -f, TCG) opens nothing else that it needs: it
 * also looks at /etc/ld.so.cache, /etc/localtime, /dev/urandom (glib's
 * seed), /sys/devices/system/{cpu,node}, all optional.
 */
static const char *const root_tops[] = { "/bin", "/sbin", "/lib", "/lib64" };

struct vmm_root {
	char at[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* where the tmpfs goes in the child's namespace */
	char link[ARRAY_SIZE(root_tops)][PATH_MAX];            /* root_tops[i] is this symlink; "": it is not */
	bool bind[ARRAY_SIZE(root_tops)];                      /* root_tops[i] is a directory: bound read-only */
	bool kvm;
};

/*
 * Decides the root in the parent: how the host has root_tops, and where the
 * tmpfs is mounted (the VM's run directory, which exists: its sockets are
 * bound there). *ret_path is the binary's real path, which the child execs,
 * so no symlink out of the bound directories is followed; a binary outside
 * them fails here rather than with more of the host in every VMM's root.
 */
static int root_plan(const char *who, const char *binary, const struct vmm_spec *s, struct vmm_root *r,
		     char **ret_path)
{
	_cleanup_free_ char *path = find_binary(binary), *real = path ? realpath(path, NULL) : NULL;
	bool inside = real && strncmp(real, "/usr/", 5) == 0;
	const char *slash = strrchr(s->control_path, '/');

	if (!real)
		return errno ? -errno : -ENOENT;
	for (size_t i = 0; i < ARRAY_SIZE(root_tops); i++) {
		size_t n = strlen(root_tops[i]);
		struct stat st;
		ssize_t l;

		r->link[i][0] = '\0';
		r->bind[i] = false;
		if (lstat(root_tops[i], &st) < 0)
			continue; /* the host has none */
		if (S_ISLNK(st.st_mode) && (l = readlink(root_tops[i], r->link[i], PATH_MAX - 1)) > 0)
			r->link[i][l] = '\0';
		else if (S_ISDIR(st.st_mode))
			r->bind[i] = true;
		inside = inside || (r->bind[i] && strncmp(real, root_tops[i], n) == 0 && real[n] == '/');
	}
	if (!inside) {
		log_error("VMM: the %s binary %s is outside /usr (and the host's /bin, /sbin, /lib, /lib64 "
			  "directories): a VMM's root holds nothing else of the host", who, real);
		return -ENOENT;
	}
	if (!slash || (size_t)(slash - s->control_path) >= sizeof(r->at))
		return -ENAMETOOLONG;
	memcpy(r->at, s->control_path, (size_t)(slash - s->control_path));
	r->at[slash - s->control_path] = '\0';
	r->kvm = strcmp(s->accel, "kvm") == 0;
	*ret_path = TAKE_PTR(real);
	return 0;
}

/* In the child: host path src (a directory or a device node) bound read-only on dst, made empty first. */
static int bind_ro(const char *src, const char *dst, bool dir)
{
	/* a device node must stay a device: noexec instead of nodev */
	unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | (dir ? MS_NODEV : MS_NOEXEC);
	int fd = -1;

	if (dir ? mkdir(dst, 0755) < 0 : (fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0)
		return -errno;
	if (!dir)
		close(fd);
	/* not MS_REC: nothing mounted under src comes along */
	if (mount(src, dst, NULL, MS_BIND, NULL) < 0 || mount(NULL, dst, NULL, flags, NULL) < 0)
		return -errno;
	return 0;
}

/*
 * In the child, after every descriptor is open and before privileges go:
 * builds the root (struct vmm_root) on a tmpfs, pivots into it and detaches
 * the host's tree, so nothing of it stays reachable, nor holds a mount (the
 * FUSE mount's connection, the store) for as long as the VMM runs. Returns
 * 0 or -errno (errno still set, for the child's report).
 */
static int enter_root(const struct vmm_root *r)
{
	const unsigned long proc_flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;

	if (mount("emberfs-vmm", r->at, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "size=64k,nr_inodes=64,mode=0755") < 0 ||
	    chdir(r->at) < 0 || bind_ro("/usr", "usr", true) < 0)
		return -errno;
	for (size_t i = 0; i < ARRAY_SIZE(root_tops); i++)
		if ((r->link[i][0] && symlink(r->link[i], root_tops[i] + 1) < 0) ||
		    (r->bind[i] && bind_ro(root_tops[i], root_tops[i] + 1, true) < 0))
			return -errno;
	if (mkdir("dev", 0755) < 0 || bind_ro("/dev/null", "dev/null", false) < 0 ||
	    (r->kvm && bind_ro("/dev/kvm", "dev/kvm", false) < 0) || mkdir("proc", 0555) < 0)
		return -errno;
	/*
	 * Only its own processes (hidepid=invisible), only the per-process part
	 * (subset=pid): kernel 5.8 and later. An older kernel refuses these
	 * options: then hidepid=2, though there procfs options belong to the pid
	 * namespace, not the mount, so this one may not hide other processes.
	 */
	if (mount("proc", "proc", "proc", proc_flags, "hidepid=invisible,subset=pid") < 0 &&
	    (errno != EINVAL || mount("proc", "proc", "proc", proc_flags, "hidepid=2") < 0))
		return -errno;
	/* pivot_root(2): the old root goes on top of the new one, and is detached from there */
	if (syscall(SYS_pivot_root, ".", ".") < 0 || umount2(".", MNT_DETACH) < 0 || chdir("/") < 0 ||
	    mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return -errno;
	return 0;
}

/* What the child needs, prepared before the fork (it may only make system calls). */
struct child_args {
	const struct vmm_spec *s;
	char *path; /* the binary's real path, inside the VMM's root */
	char **argv;
	uid_t uid; /* 0: stays root */
	struct sockaddr_un qmp, agent;
	struct ifreq tap;
	struct vmm_root root;
	int err_w;
};

/* An fd moved out of the way of the fixed numbers (above them, close-on-exec). */
static int high(int fd)
{
	int h;

	if (fd < 0)
		return -1;
	h = fcntl(fd, F_DUPFD_CLOEXEC, FD_FIRST_FREE + 16);
	close(fd);
	return h;
}

static int open_high(const char *path, int flags, uid_t uid)
{
	int fd = high(open(path, flags | O_CLOEXEC, 0600));

	/* the VMM's user opens it again through /proc/self/fd: it must be its */
	if (fd >= 0 && uid && fchown(fd, uid, uid) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int listen_high(const struct sockaddr_un *sa)
{
	int fd = high(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));

	if (fd < 0)
		return -1;
	unlink(sa->sun_path); /* an earlier VMM's of this sandbox (before a wake or start) */
	if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(fd, 16) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * The child between fork and exec: only system calls (the daemon is
 * multithreaded). It enters the slot's network namespace, sets
 * no_new_privs (so nothing it execs can gain privileges, and the seccomp
 * filter of -sandbox needs no privilege) and no transparent huge pages
 * (QEMU asks for them on its translation buffer: a few 2 MiB pages of
 * which a microVM's translated code fills a fraction, ~3 MiB of every idle
 * VMM's PSS; docs/benchmarks.md), opens everything the VMM uses
 * while it is still root — guest RAM, disk, console, kernel, initrd, the
 * listening QMP and agent sockets, the slot's tap — each at a fixed
 * descriptor, hands the per-VM files to the VMM's user, resets signals,
 * gets /dev/null as stdin and the log as stdout and stderr, the snapshot as
 * fd 3, then makes its own mount namespace with its own root (enter_root),
 * drops to the VMM's user and execs. The files are opened before the mount
 * namespace is made, so they are the host's mounts' files: /proc/PID/fd
 * shows their host paths (the sweep of unrecorded VMMs reads fd 4's).
 * Every other descriptor is close-on-exec. QEMU opens nothing by path of
 * ours: it needs no access to the state directory.
 */
static void __attribute__((noreturn)) spawn_child(const struct child_args *c)
{
	const struct vmm_spec *s = c->s;
	struct spawn_failure f = { 0, 0 };
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	int fds[FD_FIRST_FREE];
	sigset_t none;
	int fd;

	for (int i = 0; i < FD_FIRST_FREE; i++)
		fds[i] = -1;
	if (s->cfg->net && setns(s->netns_fd, CLONE_NEWNET) < 0)
		goto fail;
	f.step = 1;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		goto fail;
	(void)prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0); /* memory, not confinement: a kernel without it runs the VMM anyway */
	f.step = 2;
	if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
		goto fail;
	if (s->incoming_fd >= 0 && (fds[FD_INCOMING] = high(dup(s->incoming_fd))) < 0)
		goto fail;
	/* a sealed base is opened again by the VMM's user too: a memfd's mode lets it, its seals keep it unwritten */
	if ((fds[FD_MEM] = s->ram_fd >= 0 ? high(dup(s->ram_fd)) : open_high(s->mem_path, O_RDWR, c->uid)) < 0 ||
	    (s->disk_path && (fds[FD_DISK] = open_high(s->disk_path, O_RDWR, c->uid)) < 0) ||
	    (fds[FD_CONSOLE] = open_high(s->console_path, O_WRONLY | O_APPEND | O_CREAT, c->uid)) < 0 ||
	    (fds[FD_KERNEL] = high(open(s->cfg->kernel, O_RDONLY | O_CLOEXEC))) < 0 ||
	    (s->cfg->initrd && (fds[FD_INITRD] = high(open(s->cfg->initrd, O_RDONLY | O_CLOEXEC))) < 0))
		goto fail;
	f.step = 3;
	if ((fds[FD_CONTROL] = listen_high(&c->qmp)) < 0 || (fds[FD_AGENT] = listen_high(&c->agent)) < 0)
		goto fail;
	f.step = 4;
	if (s->cfg->net) {
		struct ifreq ifr = c->tap;

		/* the slot's tap, in the namespace entered above */
		if ((fds[FD_TAP] = high(open("/dev/net/tun", O_RDWR | O_CLOEXEC))) < 0 ||
		    ioctl(fds[FD_TAP], TUNSETIFF, &ifr) < 0)
			goto fail;
	}
	f.step = 5;
	for (int i = FD_INCOMING; i < FD_FIRST_FREE; i++)
		if (fds[i] >= 0 && dup2(fds[i], i) < 0) /* dup2: the copy is not close-on-exec */
			goto fail;
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setpgid(0, 0);
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || dup2(fd, 0) < 0)
		goto fail;
	fd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		goto fail;
	f.step = 6;
	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		goto fail;
	f.step = 7;
	if (enter_root(&c->root) < 0)
		goto fail;
	f.step = 8;
	if (c->uid) {
		gid_t g = s->extra_gid;

		if (setgroups(g ? 1 : 0, &g) < 0 || setresgid(c->uid, c->uid, c->uid) < 0 ||
		    setresuid(c->uid, c->uid, c->uid) < 0)
			goto fail;
	}
	f.step = 9;
	execve(c->path, c->argv, environ);
fail:
	f.err = errno;
	if (write(c->err_w, &f, sizeof(f)) < 0)
		_exit(126);
	_exit(127);
}

static int sockaddr_for(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	strcpy(sa->sun_path, path);
	return 0;
}

int jail_spawn(const char *who, const char *binary, const struct vmm_spec *s, char **argv, struct jail *j)
{
	_cleanup_free_ char *path = NULL;
	struct child_args c = { .s = s, .argv = argv };
	struct spawn_failure f;
	int err_p[2] = { -1, -1 };
	ssize_t n;
	int r;

	memset(j, 0, sizeof(*j));
	j->pidfd = -1;
	j->uid_index = -1;
	if ((r = sockaddr_for(s->control_path, &c.qmp)) < 0 || (r = sockaddr_for(s->agent_path, &c.agent)) < 0 ||
	    (r = root_plan(who, binary, s, &c.root, &path)) < 0)
		return r;
	c.path = path;
	snprintf(c.tap.ifr_name, IFNAMSIZ, "%s", NETPOOL_TAP);
	c.tap.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (s->uid_base) {
		if ((j->uid_index = uid_get()) < 0)
			return -EAGAIN;
		c.uid = s->uid_base + (uid_t)j->uid_index;
	}
	if (pipe2(err_p, O_CLOEXEC) < 0) {
		r = -errno;
		uid_put(j->uid_index);
		return r;
	}
	c.err_w = err_p[1];
	j->pid = fork();
	if (j->pid == 0)
		spawn_child(&c);
	r = j->pid < 0 ? -errno : 0;
	close(err_p[1]);
	if (r < 0) {
		close(err_p[0]);
		uid_put(j->uid_index);
		return r;
	}
	/*
	 * Its own cgroups, while it starts: moving a process between v1 groups
	 * waits for an RCU grace period (10-30 ms here), which a child waiting
	 * for it would add to every spawn; the VMM's initialisation overlaps it,
	 * and the guest's memory is touched only once the snapshot is loaded,
	 * after this returns.
	 */
	r = cgroup_place(s->cgroups, s->cgroup_version, j->pid, s->cfg->vcpus, s->cfg->mem_mib, s->cgroup_ncpus,
			 &j->cgdirs);
	if (r < 0)
		log_error("VMM %d: cannot place it in its cgroups: %s", j->pid, strerror(-r));
	n = r == 0 ? read(err_p[0], &f, sizeof(f)) : 0;
	close(err_p[0]);
	if (r == 0 && n == (ssize_t)sizeof(f)) {
		r = f.err ? -f.err : -EIO;
		log_error("VMM: cannot %s: %s",
			  spawn_steps[f.step < (int)ARRAY_SIZE(spawn_steps) ? f.step : (int)ARRAY_SIZE(spawn_steps) - 1],
			  strerror(-r));
	}
	if (r == 0 && (j->pidfd = pidfd_open_(j->pid)) < 0)
		r = -errno;
	if (r < 0) {
		kill(j->pid, SIGKILL);
		waitpid(j->pid, NULL, 0);
		cgroup_remove(TAKE_PTR(j->cgdirs));
		uid_put(j->uid_index);
		j->pid = 0;
		return r;
	}
	return 0;
}

/* The real uid of a process, or 0. */
static uid_t proc_uid(pid_t pid)
{
	_cleanup_free_ char *path = NULL, *text = NULL;
	const char *u;
	unsigned long uid = 0;

	if (asprintf(&path, "/proc/%d/status", pid) < 0 || read_file(path, 1 << 16, &text, NULL) < 0 ||
	    !(u = strstr(text, "\nUid:")) || sscanf(u + 5, "%lu", &uid) != 1)
		return 0;
	return (uid_t)uid;
}

void jail_adopt(struct jail *j, pid_t pid, int pidfd, char **cgdirs, uid_t uid_base)
{
	memset(j, 0, sizeof(*j));
	j->uid_index = uid_take(proc_uid(pid), uid_base);
	j->pid = pid;
	j->pidfd = pidfd;
	j->adopted = true;
	j->cgdirs = cgdirs;
}

bool jail_dead(struct jail *j, int wait_ms)
{
	struct pollfd p = { .fd = j->pidfd, .events = POLLIN };

	return poll(&p, 1, wait_ms) > 0;
}

int jail_wait_exit(struct jail *j)
{
	siginfo_t si = { 0 };

	if (j->exited)
		return j->status;
	if (j->adopted) {
		while (!jail_dead(j, -1))
			;
		j->status = VMM_STATUS_UNKNOWN;
		j->exited = true;
		return j->status;
	}
	while (waitid(P_PIDFD, (id_t)j->pidfd, &si, WEXITED) < 0)
		if (errno != EINTR)
			return -errno;
	j->status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
	j->exited = true;
	return j->status;
}

void jail_kill(struct jail *j)
{
	if (!j->exited && j->pidfd >= 0)
		syscall(SYS_pidfd_send_signal, j->pidfd, SIGKILL, NULL, 0);
}

void jail_release(struct jail *j)
{
	if (!j->exited) {
		jail_kill(j);
		jail_wait_exit(j);
	}
	if (j->pidfd >= 0)
		close(j->pidfd);
	j->pidfd = -1;
	cgroup_remove(TAKE_PTR(j->cgdirs));
	uid_put(j->uid_index);
	j->uid_index = -1;
}
