/*
 * The fake driver: the engine's side of the fake VMM (fakevmm.c). spawn
 * forks and execs it with the descriptors at the fixed layout, opened in
 * the child as the real driver's spawn opens them (fds: only system calls
 * between fork and exec, the failing step reported over a close-on-exec
 * pipe); the control calls are lines on the control socket; a snapshot
 * writes the device state the VMM answers; adopt reconnects by the control
 * path; wait_exit and kill go through the pidfd.
 *
 * It does what a driver must, not what jail.c adds for isolation (no
 * namespaces, users or cgroups: the unit tests run unprivileged).
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "fakevmm.h"
#include "internal.h"
#include "ram.h"

struct fake {
	struct vmm base; /* first */
	pid_t pid;
	int pidfd;
	int ctl;
	bool exited;
	bool adopted; /* not our child: its status goes to whoever reaps it */
	int status;
	char *ctl_path;
	char **cgdirs; /* given at adopt; the fake never places VMMs in cgroups */
	pthread_mutex_t lock; /* one command at a time on ctl */
	char buf[1024];
	size_t len;
};

static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static char fail_at[32]; /* protected by fail_lock */
static char last_cmdline[4096]; /* protected by fail_lock: the last spawn's kernel command line */
static atomic_uint spawned;

void fakevmm_fail_set(const char *where)
{
	pthread_mutex_lock(&fail_lock);
	snprintf(fail_at, sizeof(fail_at), "%s", where ? where : "");
	pthread_mutex_unlock(&fail_lock);
}

unsigned fakevmm_spawned(void)
{
	return atomic_load(&spawned);
}

void fakevmm_last_cmdline(char *buf, size_t len)
{
	pthread_mutex_lock(&fail_lock);
	snprintf(buf, len, "%s", last_cmdline);
	pthread_mutex_unlock(&fail_lock);
}

static struct fake *to_fake(struct vmm *v)
{
	return (struct fake *)v;
}

static int fake_version(const char *binary, char **ret)
{
	if (access(binary, X_OK) < 0)
		return -errno;
	*ret = strdup("fakevmm 1");
	return *ret ? 0 : -ENOMEM;
}

/* ---- spawn ---- */

struct child {
	const struct vmm_spec *s;
	const char *binary;
	char *const *argv;
	struct sockaddr_un ctl, agent;
	int err_w;
};

/* A descriptor out of the way of the fixed ones (they are placed last). */
static int high(int fd)
{
	int h;

	if (fd < 0)
		return -1;
	h = fcntl(fd, F_DUPFD_CLOEXEC, FD_FIRST_FREE + 16);
	close(fd);
	return h;
}

static int listen_high(const struct sockaddr_un *sa)
{
	int fd = high(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));

	if (fd < 0)
		return -1;
	unlink(sa->sun_path); /* an earlier VMM's of this sandbox (before a wake) */
	if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(fd, 16) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static const char *const child_steps[] = { "open the incoming state", "open guest RAM", "open the disk",
					   "open the console", "listen on the control socket", "listen on the agent socket",
					   "open the kernel", "open the initrd", "open the log", "place the descriptors",
					   "exec" };

/* Between fork and exec: system calls only (the engine is multithreaded). */
static void __attribute__((noreturn)) spawn_child(const struct child *c)
{
	const struct vmm_spec *s = c->s;
	int fd[FD_FIRST_FREE], log, null, step = 0;
	sigset_t none;

	for (int i = 0; i < FD_FIRST_FREE; i++)
		fd[i] = -1;
	if (s->incoming_fd >= 0 && (fd[FD_INCOMING] = fcntl(s->incoming_fd, F_DUPFD_CLOEXEC, FD_FIRST_FREE + 16)) < 0)
		goto fail;
	step++;
	if ((fd[FD_MEM] = high(open(s->mem_path, O_RDWR | O_CLOEXEC))) < 0)
		goto fail;
	step++;
	if (s->disk_path && (fd[FD_DISK] = high(open(s->disk_path, O_RDWR | O_CLOEXEC))) < 0)
		goto fail;
	step++;
	if ((fd[FD_CONSOLE] = high(open(s->console_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600))) < 0)
		goto fail;
	step++;
	if ((fd[FD_CONTROL] = listen_high(&c->ctl)) < 0)
		goto fail;
	step++;
	if ((fd[FD_AGENT] = listen_high(&c->agent)) < 0)
		goto fail;
	step++;
	if ((fd[FD_KERNEL] = high(open(s->cfg->kernel, O_RDONLY | O_CLOEXEC))) < 0)
		goto fail;
	step++;
	if (s->cfg->initrd && (fd[FD_INITRD] = high(open(s->cfg->initrd, O_RDONLY | O_CLOEXEC))) < 0)
		goto fail;
	step++;
	if ((log = high(open(s->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600))) < 0 ||
	    (null = high(open("/dev/null", O_RDONLY | O_CLOEXEC))) < 0)
		goto fail;
	step++;
	if (dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
		goto fail;
	for (int i = FD_INCOMING; i < FD_FIRST_FREE; i++)
		if (fd[i] >= 0 && dup2(fd[i], i) < 0)
			goto fail;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	step++;
	execv(c->binary, c->argv);
fail:
	{
		int msg[2] = { step, errno };

		if (write(c->err_w, msg, sizeof(msg)) < 0) {
			/* the parent sees the exit */
		}
	}
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

static struct fake *fake_new(pid_t pid, int pidfd, const char *ctl_path)
{
	struct fake *v = calloc(1, sizeof(*v));

	if (!v || !(v->ctl_path = strdup(ctl_path))) {
		free(v);
		return NULL;
	}
	pthread_mutex_init(&v->lock, NULL);
	v->base.ops = &fake_vmm_ops;
	v->pid = pid;
	v->pidfd = pidfd;
	v->ctl = -1;
	return v;
}

static int fake_spawn(const char *binary, const struct vmm_spec *s, struct vmm **ret)
{
	char name[128], fail[32];
	char *argv[] = { (char *)binary, "-name", name, "--fail", fail, NULL };
	struct child c = { .s = s, .binary = binary, .argv = argv };
	int err_p[2], msg[2], pidfd = -1, r;
	struct fake *v = NULL;
	ssize_t n;
	pid_t pid;

	/* -name as QEMU's: the sweep of unrecorded VMMs knows its own by it */
	snprintf(name, sizeof(name), "emberfs-%s-%s", s->tag, s->name);
	pthread_mutex_lock(&fail_lock);
	snprintf(fail, sizeof(fail), "%s", fail_at[0] ? fail_at : "none");
	snprintf(last_cmdline, sizeof(last_cmdline), "%s", s->cmdline ? s->cmdline : "");
	pthread_mutex_unlock(&fail_lock);
	if ((r = sockaddr_for(s->control_path, &c.ctl)) < 0 || (r = sockaddr_for(s->agent_path, &c.agent)) < 0)
		return r;
	if (pipe2(err_p, O_CLOEXEC) < 0)
		return -errno;
	c.err_w = err_p[1];
	pid = fork();
	if (pid == 0)
		spawn_child(&c);
	r = pid < 0 ? -errno : 0;
	close(err_p[1]);
	n = r == 0 ? read(err_p[0], msg, sizeof(msg)) : 0;
	close(err_p[0]);
	if (n == (ssize_t)sizeof(msg)) {
		r = msg[1] ? -msg[1] : -EIO;
		log_debug("fake VMM: cannot %s: %s", child_steps[msg[0] < (int)ARRAY_SIZE(child_steps) ? msg[0] : 0],
			  strerror(-r));
	}
	if (r == 0 && (pidfd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0)
		r = -errno;
	if (r == 0 && !(v = fake_new(pid, pidfd, s->control_path))) {
		close(pidfd);
		r = -ENOMEM;
	}
	if (r < 0) {
		if (pid > 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
		}
		return r;
	}
	atomic_fetch_add(&spawned, 1);
	*ret = &v->base;
	return 0;
}

/* ---- the control socket ---- */

static bool dead(struct fake *v, int wait_ms)
{
	struct pollfd p = { .fd = v->pidfd, .events = POLLIN };

	return v->exited || (poll(&p, 1, wait_ms) == 1 && (p.revents & POLLIN));
}

/* One line from the VMM, by the deadline; -ECHILD if it exited first. v->lock held. */
static int read_line(struct fake *v, uint64_t deadline, char *out, size_t outlen)
{
	for (;;) {
		char *nl = memchr(v->buf, '\n', v->len);
		struct pollfd p[2] = { { .fd = v->ctl, .events = POLLIN }, { .fd = v->pidfd, .events = POLLIN } };
		int64_t left = ((int64_t)deadline - (int64_t)now_ns()) / 1000000;
		ssize_t n;

		if (nl) {
			*nl = '\0';
			snprintf(out, outlen, "%s", v->buf);
			v->len -= (size_t)(nl + 1 - v->buf);
			memmove(v->buf, nl + 1, v->len);
			return 0;
		}
		if (v->len == sizeof(v->buf))
			return -EPROTO;
		if (left <= 0)
			return -ETIMEDOUT;
		if (poll(p, 2, (int)left) < 0 && errno != EINTR)
			return -errno;
		if (!(p[0].revents & (POLLIN | POLLHUP)))
			continue;
		n = recv(v->ctl, v->buf + v->len, sizeof(v->buf) - v->len, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0)
			return dead(v, 500) ? -ECHILD : -ECONNRESET;
		v->len += (size_t)n;
	}
}

/* Sends cmd; 0 and the rest of an "ok" line in out (if given), or the VMM's errno. */
static int command(struct fake *v, const char *cmd, unsigned timeout_ms, char *out, size_t outlen)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	char line[1024];
	int r = -ENOTCONN;

	pthread_mutex_lock(&v->lock);
	if (v->ctl >= 0 && dprintf(v->ctl, "%s\n", cmd) < 0)
		r = dead(v, 500) ? -ECHILD : -EPIPE;
	else if (v->ctl >= 0)
		r = read_line(v, deadline, line, sizeof(line));
	pthread_mutex_unlock(&v->lock);
	if (r < 0)
		return r;
	if (strncmp(line, "ok", 2) == 0 && (line[2] == '\0' || line[2] == ' ')) {
		if (out)
			snprintf(out, outlen, "%s", line[2] ? line + 3 : "");
		return 0;
	}
	if (strncmp(line, "error ", 6) == 0) {
		int e = atoi(line + 6);

		log_debug("fake VMM %d: %s: %s", v->pid, cmd, line);
		return -(e > 0 && e < 4096 ? e : EIO);
	}
	return -EPROTO;
}

static int fake_connect(struct vmm *vm, unsigned timeout_ms, const atomic_bool *cancel)
{
	struct fake *v = to_fake(vm);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	struct sockaddr_un sa;
	char greeting[128];
	int r;

	if ((r = sockaddr_for(v->ctl_path, &sa)) < 0)
		return r;
	if (v->ctl >= 0)
		close(v->ctl);
	v->len = 0;
	if ((v->ctl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return -errno;
	while (connect(v->ctl, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != ENOENT && errno != ECONNREFUSED)
			return -errno;
		if (cancel && atomic_load(cancel))
			return -ECANCELED;
		if (dead(v, 1))
			return -ECHILD;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
	}
	pthread_mutex_lock(&v->lock);
	r = read_line(v, deadline, greeting, sizeof(greeting));
	pthread_mutex_unlock(&v->lock);
	if (r < 0)
		return r;
	return strncmp(greeting, "fakevmm 1 ", 10) == 0 ? 0 : -EPROTO;
}

/* Only the state it was spawned with: its snapshots carry no delta, so no spare is given another's. */
static int fake_restore(struct vmm *vm, int state_fd, unsigned timeout_ms)
{
	if (state_fd >= 0)
		return -EOPNOTSUPP;
	return command(to_fake(vm), "restore", timeout_ms, NULL, 0);
}

static int fake_query(struct vmm *vm, char *state, size_t len, unsigned timeout_ms)
{
	return command(to_fake(vm), "query", timeout_ms, state, len);
}

static int fake_pause(struct vmm *vm, unsigned timeout_ms)
{
	return command(to_fake(vm), "pause", timeout_ms, NULL, 0);
}

static int fake_resume(struct vmm *vm, unsigned timeout_ms)
{
	return command(to_fake(vm), "resume", timeout_ms, NULL, 0);
}

static int fake_wait_running(struct vmm *vm, unsigned timeout_ms)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;

	for (;;) {
		char st[64];
		int r = fake_query(vm, st, sizeof(st), timeout_ms);

		if (r < 0)
			return r;
		if (strcmp(st, "running") == 0)
			return 0;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		poll(NULL, 0, 5);
	}
}

/* The VMM pauses and answers its device state; written here as the state file. */
static int fake_snapshot(struct vmm *vm, const char *state_path, const char *mem_path, unsigned timeout_ms,
			 struct ram_delta *delta)
{
	_cleanup_close_ int fd = -1;
	char state[512];
	size_t n;
	int r = command(to_fake(vm), "snapshot", timeout_ms, state, sizeof(state) - 1);

	if (delta) /* its memory file is all of it */
		ram_delta_free(delta);
	if (r < 0)
		return r;
	n = strlen(state);
	state[n++] = '\n';
	fd = open(state_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (write(fd, state, n) != (ssize_t)n)
		return -EIO;
	return fsync(fd) < 0 ? -errno : 0;
}

/* ---- the process ---- */

static pid_t fake_pid(struct vmm *vm)
{
	return to_fake(vm)->pid;
}

static bool fake_alive(struct vmm *vm)
{
	return !dead(to_fake(vm), 0);
}

static int fake_wait_exit(struct vmm *vm)
{
	struct fake *v = to_fake(vm);
	siginfo_t si = { 0 };

	if (v->exited)
		return v->status;
	if (v->adopted) {
		while (!dead(v, -1))
			;
		v->status = VMM_STATUS_UNKNOWN;
	} else {
		while (waitid(P_PIDFD, (id_t)v->pidfd, &si, WEXITED) < 0)
			if (errno != EINTR)
				return -errno;
		v->status = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
	}
	v->exited = true;
	return v->status;
}

static void fake_kill(struct vmm *vm)
{
	struct fake *v = to_fake(vm);

	if (!v->exited && v->pidfd >= 0)
		syscall(SYS_pidfd_send_signal, v->pidfd, SIGKILL, NULL, 0);
}

static void fake_free(struct vmm *vm)
{
	struct fake *v = to_fake(vm);

	if (!v->exited) {
		fake_kill(vm);
		fake_wait_exit(vm);
	}
	if (v->ctl >= 0)
		close(v->ctl);
	if (v->pidfd >= 0)
		close(v->pidfd);
	cgroup_remove(v->cgdirs);
	pthread_mutex_destroy(&v->lock);
	free(v->ctl_path);
	free(v);
}

static int fake_shutdown_reason(struct vmm *vm, char *buf, size_t len)
{
	(void)vm;
	(void)buf;
	(void)len;
	return -ENOENT; /* the fake's guest never shuts down on its own */
}

static int fake_adopt(pid_t pid, int pidfd, const char *control_path, char **cgdirs, uid_t uid_base, struct vmm **ret)
{
	struct fake *v = fake_new(pid, pidfd, control_path);

	(void)uid_base;
	if (!v)
		return -ENOMEM;
	v->adopted = true;
	v->cgdirs = cgdirs;
	*ret = &v->base;
	return 0;
}

const struct vmm_ops fake_vmm_ops = {
	.name = "fake",
	.ram_base = false,
	.restore_capability = "fakevmm-state-v1",
	.default_binary = FAKEVMM_BINARY,
	.version = fake_version,
	.spawn = fake_spawn,
	.connect = fake_connect,
	.restore = fake_restore,
	.query = fake_query,
	.pause = fake_pause,
	.resume = fake_resume,
	.wait_running = fake_wait_running,
	.snapshot = fake_snapshot,
	.pid = fake_pid,
	.alive = fake_alive,
	.wait_exit = fake_wait_exit,
	.adopt = fake_adopt,
	.kill = fake_kill,
	.free = fake_free,
	.shutdown_reason = fake_shutdown_reason,
};
