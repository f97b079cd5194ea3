/*
 * Running the host tools the engine builds images with (skopeo, umoci,
 * mkfs.ext4): fork and exec with no shell, stdin /dev/null, stdout and
 * stderr into a log, a bounded wait that a cancel flag ends early, and the
 * tool killed (its process group) when either runs out, or when the daemon
 * dies.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <poll.h>

#include "internal.h"

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

/*
 * The child: dies with the thread that started it (PR_SET_PDEATHSIG: a
 * crashed daemon leaves no unpack or pull writing into its store, which the
 * next start sweeps), in a process group of its own (a timeout kills what
 * it started too), stdin /dev/null, stdout and stderr into the log. Only
 * async-signal-safe calls; an exec failure's errno goes back through err.
 */
static void tool_child(char *const argv[], int log_fd, pid_t parent, int err)
{
	int e, fd;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent || setpgid(0, 0) < 0)
		goto fail;
	if ((fd = open("/dev/null", O_RDWR)) < 0 || dup2(fd, 0) < 0 || dup2(log_fd >= 0 ? log_fd : fd, 1) < 0 ||
	    dup2(log_fd >= 0 ? log_fd : fd, 2) < 0)
		goto fail;
	execvp(argv[0], argv);
fail:
	e = errno;
	if (write(err, &e, sizeof(e)) < 0) {
		/* the parent sees the exit status alone */
	}
	_exit(127);
}

int tool_run(char *const argv[], int log_fd, unsigned timeout_ms, const atomic_bool *cancel, char **ret_why)
{
	_cleanup_close_ int pfd = -1;
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	pid_t pid, parent = getpid();
	int st, r, err[2], e = 0;

	if (pipe2(err, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid == 0)
		tool_child(argv, log_fd, parent, err[1]);
	close(err[1]);
	if (pid > 0 && read(err[0], &e, sizeof(e)) == (ssize_t)sizeof(e)) {
		/* it never ran: reap it, say why */
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		r = e ? e : EIO;
	} else {
		r = pid < 0 ? errno : 0;
	}
	close(err[0]);
	if (r) {
		if (ret_why && asprintf(ret_why, "%s: %s", argv[0], strerror(r)) < 0)
			*ret_why = NULL;
		return -r;
	}
	pfd = pidfd_open_(pid);
	for (;;) {
		struct pollfd p = { .fd = pfd, .events = POLLIN };
		uint64_t now = now_ns();

		if (pfd < 0 || (cancel && atomic_load(cancel)) || now >= deadline)
			break;
		if (poll(&p, 1, 100) > 0)
			break;
	}
	if (waitpid(pid, &st, WNOHANG) == 0) {
		bool cancelled = cancel && atomic_load(cancel);

		kill(-pid, SIGKILL);
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
		if (ret_why && asprintf(ret_why, "%s %s", argv[0],
					cancelled ? "cancelled" : "took too long: killed") < 0)
			*ret_why = NULL;
		return cancelled ? -ECANCELED : -ETIMEDOUT;
	}
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return 0;
	if (ret_why && asprintf(ret_why, "%s failed (%s %d)", argv[0], WIFEXITED(st) ? "exit code" : "signal",
				WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st)) < 0)
		*ret_why = NULL;
	return -EIO;
}
