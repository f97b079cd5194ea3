/*
 * Running the host tools the engine builds images with (skopeo, umoci,
 * mkfs.ext4): fork and exec with no shell, stdin /dev/null, stdout and
 * stderr into a log, a bounded wait that a cancel flag ends early, and the
 * tool killed (its process group) when either runs out.
 */
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <poll.h>

#include "internal.h"

extern char **environ;

static int pidfd_open_(pid_t pid)
{
	return (int)syscall(SYS_pidfd_open, pid, 0);
}

int tool_run(char *const argv[], int log_fd, unsigned timeout_ms, const atomic_bool *cancel, char **ret_why)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	_cleanup_close_ int pfd = -1;
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	pid_t pid;
	int st, r;

	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (log_fd >= 0) {
		posix_spawn_file_actions_adddup2(&fa, log_fd, 1);
		posix_spawn_file_actions_adddup2(&fa, log_fd, 2);
	} else {
		posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
		posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	}
	/* its own process group: a timeout kills what it started too */
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
	r = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
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
