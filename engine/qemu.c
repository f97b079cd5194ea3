/*
 * QEMU driver: spawns qemu-system with -M microvm, talks QMP (JSON over a unix
 * socket) with bounded waits.
 *
 * Guest RAM lives in a file mapped shared (memory-backend-file, share=on) and
 * migration runs with x-ignore-shared, so a snapshot carries only device state
 * (tens of KiB) and a restore maps the RAM file lazily instead of reading it.
 * The process is tracked through a pidfd: signals and waits can never reach a
 * reused pid.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
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
#include <sys/wait.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "config.h"
#include "internal.h"

extern char **environ;

struct qemu {
	struct vmm base; /* first: a struct qemu * is one of these */
	pid_t pid;
	int pidfd;
	int qmp;
	bool exited;
	bool incoming; /* restore: started with -incoming defer */
	bool resumed;  /* a RESUME event was seen */
	bool adopted;  /* started by an earlier run: not our child */
	int uid_index; /* runs as uid_base + this; -1: as root */
	int status; /* exit code, or 128 + signal */
	/*
	 * The QMP connection's reads and writes (buf, len): a command's caller,
	 * and the reader of what a dead VMM left in the socket (its SHUTDOWN).
	 */
	pthread_mutex_t qmp_lock;
	char shutdown[32]; /* qmp_lock: the reason of its SHUTDOWN event ("guest-reset", ...); "" if none seen */
	char *qmp_path;
	char **cgdirs; /* its cgroups, removed once it is reaped */
	char buf[65536];
	size_t len;
};

static struct qemu *to_qemu(struct vmm *vm)
{
	return (struct qemu *)vm;
}

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int qemu_version(const char *binary, char **ret)
{
	char *argv[] = { (char *)binary, "--version", NULL };
	posix_spawn_file_actions_t fa;
	int p[2], st;
	pid_t pid;
	char buf[256] = "";
	ssize_t n;
	int r;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	r = posix_spawnp(&pid, binary, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (r) {
		close(p[0]);
		return -r;
	}
	n = read(p[0], buf, sizeof(buf) - 1);
	close(p[0]);
	waitpid(pid, &st, 0);
	if (n <= 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return -ENOEXEC;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	*ret = strdup(buf);
	return *ret ? 0 : -ENOMEM;
}

/* argv builder with owned strings */
struct args {
	char *v[64];
	int n;
};

static void args_add(struct args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void args_add(struct args *a, const char *fmt, ...)
{
	va_list ap;

	if (a->n >= (int)ARRAY_SIZE(a->v) - 1)
		return;
	va_start(ap, fmt);
	if (vasprintf(&a->v[a->n], fmt, ap) >= 0)
		a->n++;
	va_end(ap);
}

static void args_free(struct args *a)
{
	for (int i = 0; i < a->n; i++)
		free(a->v[i]);
}

static void build_args(const char *binary, const struct vmm_spec *s, struct args *a)
{
	const struct template_config *c = s->cfg;

	args_add(a, "%s", binary);
	args_add(a, "-name");
	args_add(a, "emberfs-%s-%s", s->tag ? s->tag : "", s->name);
	args_add(a, "-M");
	args_add(a, "microvm,rtc=on,memory-backend=mem");
	args_add(a, "-accel");
	/* TCG reserves 1 GiB of translation buffer per process by default. */
	args_add(a, "%s", strcmp(s->accel, "kvm") == 0 ? "kvm" : "tcg,tb-size=64");
	args_add(a, "-cpu");
	args_add(a, "%s", strcmp(s->accel, "kvm") == 0 ? "host" : "max");
	args_add(a, "-smp");
	args_add(a, "%u", c->vcpus);
	args_add(a, "-m");
	args_add(a, "%uM", c->mem_mib);
	args_add(a, "-object");
	args_add(a, "memory-backend-file,id=mem,size=%uM,mem-path=/proc/self/fd/%d,share=on", c->mem_mib, FD_MEM);
	args_add(a, "-nodefaults");
	args_add(a, "-no-reboot"); /* a guest that panics or reboots ends its VMM: the supervisor sees it */
	args_add(a, "-no-user-config");
	args_add(a, "-display");
	args_add(a, "none");
	args_add(a, "-kernel");
	args_add(a, "/proc/self/fd/%d", FD_KERNEL);
	if (c->initrd) {
		args_add(a, "-initrd");
		args_add(a, "/proc/self/fd/%d", FD_INITRD);
	}
	args_add(a, "-append");
	args_add(a, "%s", s->cmdline);
	args_add(a, "-chardev");
	args_add(a, "file,id=con,path=/proc/self/fd/%d,append=on", FD_CONSOLE);
	args_add(a, "-serial");
	args_add(a, "chardev:con");
	if (s->disk_path) {
		args_add(a, "-drive");
		args_add(a, "id=root,file=/proc/self/fd/%d,format=raw,if=none,discard=unmap", FD_DISK);
		args_add(a, "-device");
		args_add(a, "virtio-blk-device,drive=root");
	}
	if (c->net) {
		/* the tap of the network slot whose namespace the VMM runs in; MAC as baked */
		args_add(a, "-netdev");
		args_add(a, "tap,id=net0,fd=%d", FD_TAP);
		args_add(a, "-device");
		args_add(a, "virtio-net-device,netdev=net0,mac=" NETPOOL_GUEST_MAC);
	}
	args_add(a, "-device");
	args_add(a, "virtio-serial-device");
	args_add(a, "-chardev");
	args_add(a, "socket,id=agent,fd=%d,server=on,wait=off", FD_AGENT);
	args_add(a, "-device");
	args_add(a, "virtserialport,chardev=agent,name=org.emberfs.agent");
	args_add(a, "-chardev");
	args_add(a, "socket,id=qmp,fd=%d,server=on,wait=off", FD_CONTROL);
	args_add(a, "-mon");
	args_add(a, "chardev=qmp,mode=control");
	args_add(a, "-sandbox");
	args_add(a, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
	if (s->incoming_fd >= 0) {
		/* capabilities must be set before the stream is read: see qemu_connect */
		args_add(a, "-incoming");
		args_add(a, "defer");
	}
	a->v[a->n] = NULL;
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
static int root_plan(const char *binary, const struct vmm_spec *s, struct vmm_root *r, char **ret_path)
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
		log_error("VMM: the QEMU binary %s is outside /usr (and the host's /bin, /sbin, /lib, /lib64 "
			  "directories): a VMM's root holds nothing else of the host", real);
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
 * filter of -sandbox needs no privilege), opens everything the VMM uses
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
	f.step = 2;
	if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
		goto fail;
	if (s->incoming_fd >= 0 && (fds[FD_INCOMING] = high(dup(s->incoming_fd))) < 0)
		goto fail;
	if ((fds[FD_MEM] = open_high(s->mem_path, O_RDWR, c->uid)) < 0 ||
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

static int qemu_spawn(const char *binary, const struct vmm_spec *s, struct vmm **ret)
{
	_cleanup_free_ struct qemu *v = calloc(1, sizeof(*v));
	_cleanup_free_ char *path = NULL;
	struct child_args c = { .s = s };
	struct args a = { .n = 0 };
	struct spawn_failure f;
	int err_p[2] = { -1, -1 };
	ssize_t n;
	int r;

	if (!v)
		return -ENOMEM;
	pthread_mutex_init(&v->qmp_lock, NULL);
	v->qmp = -1;
	v->pidfd = -1;
	v->uid_index = -1;
	if ((r = sockaddr_for(s->control_path, &c.qmp)) < 0 || (r = sockaddr_for(s->agent_path, &c.agent)) < 0 ||
	    (r = root_plan(binary, s, &c.root, &path)) < 0)
		return r;
	c.path = path;
	snprintf(c.tap.ifr_name, IFNAMSIZ, "%s", NETPOOL_TAP);
	c.tap.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (s->uid_base) {
		if ((v->uid_index = uid_get()) < 0)
			return -EAGAIN;
		c.uid = s->uid_base + (uid_t)v->uid_index;
	}
	if (pipe2(err_p, O_CLOEXEC) < 0) {
		r = -errno;
		uid_put(v->uid_index);
		return r;
	}
	build_args(binary, s, &a);
	c.argv = a.v;
	c.err_w = err_p[1];
	v->pid = fork();
	if (v->pid == 0)
		spawn_child(&c);
	r = v->pid < 0 ? -errno : 0;
	args_free(&a);
	close(err_p[1]);
	if (r < 0) {
		close(err_p[0]);
		uid_put(v->uid_index);
		return r;
	}
	/*
	 * Its own cgroups, while it starts: moving a process between v1 groups
	 * waits for an RCU grace period (10-30 ms here), which a child waiting
	 * for it would add to every spawn; QEMU's initialisation overlaps it,
	 * and the guest's memory is touched only once the snapshot is loaded,
	 * after this returns.
	 */
	r = cgroup_place(s->cgroups, s->cgroup_version, v->pid, s->cfg->vcpus, s->cfg->mem_mib, s->cgroup_ncpus,
			 &v->cgdirs);
	if (r < 0)
		log_error("VMM %d: cannot place it in its cgroups: %s", v->pid, strerror(-r));
	n = r == 0 ? read(err_p[0], &f, sizeof(f)) : 0;
	close(err_p[0]);
	if (r == 0 && n == (ssize_t)sizeof(f)) {
		r = f.err ? -f.err : -EIO;
		log_error("VMM: cannot %s: %s",
			  spawn_steps[f.step < (int)ARRAY_SIZE(spawn_steps) ? f.step : (int)ARRAY_SIZE(spawn_steps) - 1],
			  strerror(-r));
	}
	if (r == 0 && (v->pidfd = pidfd_open_(v->pid)) < 0)
		r = -errno;
	if (r < 0) {
		kill(v->pid, SIGKILL);
		waitpid(v->pid, NULL, 0);
		cgroup_remove(TAKE_PTR(v->cgdirs));
		uid_put(v->uid_index);
		return r;
	}
	v->qmp_path = strdup(s->control_path);
	v->incoming = s->incoming_fd >= 0;
	v->base.ops = &qemu_ops;
	*ret = &TAKE_PTR(v)->base;
	return 0;
}

static bool vmm_dead(struct qemu *v, int wait_ms)
{
	struct pollfd p = { .fd = v->pidfd, .events = POLLIN };

	return poll(&p, 1, wait_ms) > 0;
}

static int read_line(struct qemu *v, uint64_t deadline, char **ret)
{
	for (;;) {
		char *nl = memchr(v->buf, '\n', v->len);
		struct pollfd p = { .fd = v->qmp, .events = POLLIN };
		int64_t left = ((int64_t)deadline - (int64_t)now_ns()) / 1000000;
		ssize_t n;
		int pr;

		if (nl) {
			size_t l = (size_t)(nl - v->buf);

			*ret = strndup(v->buf, l);
			memmove(v->buf, nl + 1, v->len - l - 1);
			v->len -= l + 1;
			return *ret ? 0 : -ENOMEM;
		}
		if (v->len == sizeof(v->buf))
			return -EMSGSIZE;
		if (left <= 0)
			return -ETIMEDOUT;
		pr = poll(&p, 1, (int)left);
		if (pr < 0 && errno != EINTR)
			return -errno;
		if (pr <= 0)
			continue; /* timed out or interrupted: the deadline check decides */
		n = read(v->qmp, v->buf + v->len, sizeof(v->buf) - v->len);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		v->len += (size_t)n;
	}
}

/*
 * Events the driver keeps: RESUME (a restore's vCPUs run) and SHUTDOWN,
 * whose reason is QEMU's own account of why it is ending (guest-reset,
 * guest-shutdown, host-signal, ...): with -no-reboot a guest's reset or
 * power-off ends the process, and only this tells them apart from the host.
 */
static void note_event(struct qemu *v, json_object *o)
{
	json_object *x, *data, *reason;
	const char *ev;
	size_t k = 0;

	if (!json_object_object_get_ex(o, "event", &x) || !(ev = json_object_get_string(x)))
		return;
	if (strcmp(ev, "RESUME") == 0) {
		v->resumed = true;
		return;
	}
	if (strcmp(ev, "SHUTDOWN") != 0 || !json_object_object_get_ex(o, "data", &data) ||
	    !json_object_object_get_ex(data, "reason", &reason) || !json_object_is_type(reason, json_type_string))
		return;
	/* an enum of QEMU's: keep its letters and dashes only */
	for (const char *p = json_object_get_string(reason); *p && k < sizeof(v->shutdown) - 1; p++)
		if ((*p >= 'a' && *p <= 'z') || *p == '-')
			v->shutdown[k++] = *p;
	v->shutdown[k] = '\0';
}

/* The next JSON object from QMP, noting the events the driver keeps. qmp_lock held. */
static int qmp_next(struct qemu *v, uint64_t deadline, json_object **ret)
{
	_cleanup_free_ char *line = NULL;
	json_object *o;
	int r = read_line(v, deadline, &line);

	if (r < 0)
		return r;
	o = json_tokener_parse(line);
	if (!o)
		return -EPROTO;
	note_event(v, o);
	*ret = o;
	return 0;
}

/* Sends one command (optionally with an fd) and returns its "return" value. qmp_lock held. */
static int qmp_exec_locked(struct qemu *v, const char *cmd, int pass_fd, unsigned timeout_ms, json_object **ret)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	size_t len = strlen(cmd);
	struct iovec iov = { .iov_base = (void *)cmd, .iov_len = len };
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (pass_fd >= 0) {
		struct cmsghdr *c;

		m.msg_control = cbuf;
		m.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	if (sendmsg(v->qmp, &m, MSG_NOSIGNAL) != (ssize_t)len)
		return -EIO;
	for (;;) {
		_cleanup_json_ json_object *o = NULL;
		json_object *x;
		int r = qmp_next(v, deadline, &o);

		if (r < 0)
			return r;
		if (json_object_object_get_ex(o, "return", &x)) {
			if (ret)
				*ret = json_object_get(x);
			return 0;
		}
		if (json_object_object_get_ex(o, "error", &x)) {
			log_debug("qmp: %s failed: %s", cmd, json_object_to_json_string(x));
			return -EIO;
		}
		/* an event: qmp_next noted it */
	}
}

static int qmp_exec(struct qemu *v, const char *cmd, int pass_fd, unsigned timeout_ms, json_object **ret)
{
	int r;

	pthread_mutex_lock(&v->qmp_lock);
	r = qmp_exec_locked(v, cmd, pass_fd, timeout_ms, ret);
	pthread_mutex_unlock(&v->qmp_lock);
	return r;
}

static int qemu_connect(struct vmm *vm, unsigned timeout_ms, const atomic_bool *cancel)
{
	struct qemu *v = to_qemu(vm);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_free_ char *greeting = NULL;
	int r;

	if (strlen(v->qmp_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, v->qmp_path);
	v->qmp = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (v->qmp < 0)
		return -errno;
	/* QEMU makes its socket during start-up: retry, sleeping on the pidfd so a dying VMM is seen at once. */
	while (connect(v->qmp, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != ENOENT && errno != ECONNREFUSED)
			return -errno;
		if (cancel && atomic_load(cancel))
			return -ECANCELED;
		if (vmm_dead(v, 1))
			return -ECHILD;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
	}
	pthread_mutex_lock(&v->qmp_lock);
	r = read_line(v, deadline, &greeting);
	pthread_mutex_unlock(&v->qmp_lock);
	if (r < 0 || !strstr(greeting, "\"QMP\""))
		return vmm_dead(v, 0) ? -ECHILD : -EPROTO;
	r = qmp_exec(v, "{\"execute\":\"qmp_capabilities\"}", -1, timeout_ms, NULL);
	/* RAM is in a shared file: migrate device state only, in both directions. */
	if (r == 0)
		r = qmp_exec(v, "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":"
				"[{\"capability\":\"x-ignore-shared\",\"state\":true}]}}", -1, timeout_ms, NULL);
	return r;
}

/* Starts reading the snapshot's device state, which is fd 3 in the VMM. */
static int qemu_restore(struct vmm *vm, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	if (!v->incoming)
		return -EINVAL;
	return qmp_exec(v, "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"fd:3\"}}", -1,
			timeout_ms, NULL);
}

static int query_string(struct qemu *v, const char *cmd, const char *key, unsigned timeout_ms, char *out,
			size_t outlen)
{
	_cleanup_json_ json_object *r = NULL;
	json_object *x;
	int rc = qmp_exec(v, cmd, -1, timeout_ms, &r);

	if (rc < 0)
		return rc;
	if (!json_object_object_get_ex(r, key, &x))
		return -EPROTO;
	snprintf(out, outlen, "%s", json_object_get_string(x));
	return 0;
}

/* Waits for the RESUME event the restored VM sends when its vCPUs start. */
static int wait_resume_event(struct qemu *v, unsigned slice_ms)
{
	uint64_t deadline = now_ns() + (uint64_t)slice_ms * 1000000;
	int r = 0;

	pthread_mutex_lock(&v->qmp_lock);
	while (!v->resumed && r == 0) {
		_cleanup_json_ json_object *o = NULL;

		r = qmp_next(v, deadline, &o);
	}
	pthread_mutex_unlock(&v->qmp_lock);
	return r;
}

static int qemu_query(struct vmm *vm, char *state, size_t len, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	return query_string(v, "{\"execute\":\"query-status\"}", "status", timeout_ms, state, len);
}

static int qemu_pause(struct vmm *vm, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	return qmp_exec(v, "{\"execute\":\"stop\"}", -1, timeout_ms, NULL);
}

static int qemu_resume(struct vmm *vm, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	return qmp_exec(v, "{\"execute\":\"cont\"}", -1, timeout_ms, NULL);
}

static int qemu_wait_running(struct vmm *vm, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;

	for (;;) {
		char st[64];
		int r = wait_resume_event(v, 50);

		if (r == 0)
			return 0;
		if (r != -ETIMEDOUT)
			return vmm_dead(v, 0) ? -ECHILD : r;
		/* No event yet: ask, and start a VM that a paused stream left paused. */
		r = qemu_query(&v->base, st, sizeof(st), timeout_ms);
		if (r < 0)
			return r;
		if (strcmp(st, "running") == 0)
			return 0;
		if (strcmp(st, "paused") == 0 && (r = qemu_resume(&v->base, timeout_ms)) < 0)
			return r;
		if (strcmp(st, "paused") != 0 && strcmp(st, "inmigrate") != 0 && strcmp(st, "prelaunch") != 0 &&
		    strcmp(st, "restore-vm") != 0) {
			log_debug("qemu: unexpected run state \"%s\" while restoring", st);
			return -EIO;
		}
		if (now_ns() > deadline)
			return -ETIMEDOUT;
	}
}

static int qemu_snapshot(struct vmm *vm, const char *state_path, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	_cleanup_close_ int fd = open(state_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int r;

	if (fd < 0)
		return -errno;
	/*
	 * No "stop" first: migration stops the vCPUs itself before it saves device
	 * state, and a stream from a running VM makes the restored one run without
	 * a "cont" round trip.
	 */
	if ((r = qmp_exec(v, "{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"snap\"}}", fd, timeout_ms, NULL)) < 0 ||
	    (r = qmp_exec(v, "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"fd:snap\"}}", -1, timeout_ms, NULL)) < 0)
		return r;
	for (;;) {
		char st[64];

		r = query_string(v, "{\"execute\":\"query-migrate\"}", "status", timeout_ms, st, sizeof(st));
		if (r < 0)
			return r;
		if (strcmp(st, "completed") == 0)
			break;
		if (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)
			return -EIO;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		if (vmm_dead(v, 1))
			return -ECHILD;
	}
	return fsync(fd) < 0 ? -errno : 0;
}

static bool qemu_alive(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);
	return !v->exited && !vmm_dead(v, 0);
}

static pid_t qemu_pid(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);
	return v->pid;
}

static int qemu_wait_exit(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);
	siginfo_t si = { 0 };

	if (v->exited)
		return v->status;
	if (v->adopted) {
		while (!vmm_dead(v, -1))
			;
		v->status = VMM_STATUS_UNKNOWN;
		v->exited = true;
		return v->status;
	}
	while (waitid(P_PIDFD, (id_t)v->pidfd, &si, WEXITED) < 0)
		if (errno != EINTR)
			return -errno;
	v->status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
	v->exited = true;
	return v->status;
}

static void qemu_kill(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);
	if (!v->exited && v->pidfd >= 0)
		syscall(SYS_pidfd_send_signal, v->pidfd, SIGKILL, NULL, 0);
}

static void qemu_free(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);

	if (!v)
		return;
	if (!v->exited) {
		qemu_kill(vm);
		qemu_wait_exit(vm);
	}
	if (v->qmp >= 0)
		close(v->qmp);
	if (v->pidfd >= 0)
		close(v->pidfd);
	cgroup_remove(v->cgdirs);
	uid_put(v->uid_index);
	pthread_mutex_destroy(&v->qmp_lock);
	free(v->qmp_path);
	free(v);
}

/*
 * QEMU's reason for ending (its SHUTDOWN event), once it has exited: what
 * it sent before the end still waits in the socket, read here (at most
 * 1 MiB, no waiting). A command in flight at the exit saw its end already.
 */
static int qemu_shutdown_reason(struct vmm *vm, char *buf, size_t len)
{
	struct qemu *v = to_qemu(vm);
	size_t total = 0;
	int r;

	pthread_mutex_lock(&v->qmp_lock);
	while (v->qmp >= 0 && total < (1u << 20)) {
		char *nl = memchr(v->buf, '\n', v->len);
		ssize_t n;

		if (nl) {
			size_t l = (size_t)(nl - v->buf);
			json_object *o;

			*nl = '\0';
			if ((o = json_tokener_parse(v->buf))) {
				note_event(v, o);
				json_object_put(o);
			}
			memmove(v->buf, nl + 1, v->len - l - 1);
			v->len -= l + 1;
			continue;
		}
		if (v->len == sizeof(v->buf))
			v->len = 0; /* a line longer than any event: not one */
		n = recv(v->qmp, v->buf + v->len, sizeof(v->buf) - v->len, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		v->len += (size_t)n;
		total += (size_t)n;
	}
	r = v->shutdown[0] ? 0 : -ENOENT;
	if (r == 0)
		snprintf(buf, len, "%s", v->shutdown);
	pthread_mutex_unlock(&v->qmp_lock);
	return r;
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

static int qemu_adopt(pid_t pid, int pidfd, const char *control_path, char **cgdirs, uid_t uid_base, struct vmm **ret)
{
	struct qemu *v = calloc(1, sizeof(*v));

	if (!v || !(v->qmp_path = strdup(control_path))) {
		free(v);
		return -ENOMEM;
	}
	pthread_mutex_init(&v->qmp_lock, NULL);
	v->uid_index = uid_take(proc_uid(pid), uid_base);
	v->pid = pid;
	v->pidfd = pidfd;
	v->qmp = -1;
	v->adopted = true;
	v->cgdirs = cgdirs;
	v->base.ops = &qemu_ops;
	*ret = &v->base;
	return 0;
}

const struct vmm_ops qemu_ops = {
	.name = "qemu",
	.ram = VMM_RAM_SHARED_FILE,
	.restore_capability = "qemu-x-ignore-shared-v1",
	.default_binary = QEMU_BINARY,
	.version = qemu_version,
	.spawn = qemu_spawn,
	.connect = qemu_connect,
	.restore = qemu_restore,
	.wait_running = qemu_wait_running,
	.query = qemu_query,
	.pause = qemu_pause,
	.resume = qemu_resume,
	.snapshot = qemu_snapshot,
	.pid = qemu_pid,
	.alive = qemu_alive,
	.wait_exit = qemu_wait_exit,
	.kill = qemu_kill,
	.free = qemu_free,
	.adopt = qemu_adopt,
	.shutdown_reason = qemu_shutdown_reason,
};
