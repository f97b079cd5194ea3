/*
 * The integration tests' daemon: emberfs (fs/daemon.c) with one engine hook
 * the shipped binary does not have. With EMBERFS_TEST_HOLD=PHASE[,PHASE...]
 * in its environment, a create reaching PHASE (engine_hooks in engine.h
 * lists them) writes STATE/hold/NAME.PHASE (its VMM's pid) and waits until
 * that file is gone (30 s at most, or the sandbox is destroyed), so a test
 * can act exactly there, e.g. kill the VMM (test_robustness.py Phases).
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fs.h"

static void hold(void *ctx, const char *state_dir, const char *sandbox, const char *phase, int vmm_pid,
		 const atomic_bool *cancel)
{
	const char *list = ctx;
	_cleanup_free_ char *dir = strjoin(state_dir, "/hold", NULL), *path = NULL, *hidden = NULL;
	size_t n = strlen(phase);
	char pid[32];
	bool listed = false;
	int r;

	for (const char *p = list; *p && !listed; p += strcspn(p, ","), p += *p == ',')
		listed = strncmp(p, phase, n) == 0 && (p[n] == ',' || p[n] == '\0');
	if (!listed || !dir || !(path = strjoin(dir, "/", sandbox, ".", phase, NULL)) ||
	    !(hidden = strjoin(dir, "/.", sandbox, ".", phase, NULL)) || mkdir_p(dir, 0700) < 0)
		return;
	/*
	 * Written under a dot name (write_file_atomic's NAME.tmp too), then renamed:
	 * a test's releaser deletes every file in STATE/hold it does not keep, and one that
	 * saw the .tmp would make the hold silently not happen.
	 */
	snprintf(pid, sizeof(pid), "%d\n", vmm_pid);
	r = write_file_atomic(hidden, pid, strlen(pid), false);
	if (r == 0 && rename(hidden, path) < 0)
		r = -errno;
	if (r < 0) {
		log_error("test hold: sandbox %s at %s: %s", sandbox, phase, strerror(-r));
		unlink(hidden);
		return;
	}
	log_info("test hold: sandbox %s at %s (VMM %d)", sandbox, phase, vmm_pid);
	for (int i = 0; i < 3000 && access(path, F_OK) == 0 && !atomic_load(cancel); i++)
		poll(NULL, 0, 10);
	unlink(path);
}

int main(int argc, char **argv)
{
	const char *phases = getenv("EMBERFS_TEST_HOLD");
	struct engine_hooks hooks = { .create_phase = hold, .ctx = (void *)phases };

	return emberfs_daemon(argc, argv, phases && *phases ? &hooks : NULL);
}
