/*
 * A VMM's process and its confinement, shared by every driver (jail.c;
 * driver.h says what a driver gets).
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "driver.h"

struct jail {
	pid_t pid;
	int pidfd;
	bool exited;
	bool adopted;  /* started by an earlier run of the daemon: not our child */
	int status;    /* once exited: exit code, 128 + signal, or VMM_STATUS_UNKNOWN (adopted) */
	int uid_index; /* runs as uid_base + this; -1: as root */
	char **cgdirs; /* its cgroups, removed at release */
};

/*
 * Starts argv (argv[0] is binary, found in PATH without a '/') for spec s,
 * confined; 0 once it runs (an error of any step before its exec is
 * reported with the step). The binary must be under /usr or the host's
 * /bin, /sbin, /lib, /lib64: the VMM's root holds nothing else. who names
 * the VMM in errors ("QEMU").
 */
int jail_spawn(const char *who, const char *binary, const struct vmm_spec *s, char **argv, struct jail *j);
/* A process an earlier run started (pidfd checked by the caller): its uid taken again, its cgroups. */
void jail_adopt(struct jail *j, pid_t pid, int pidfd, char **cgdirs, uid_t uid_base);
/* True once it has exited, waiting up to wait_ms (-1: until then). */
bool jail_dead(struct jail *j, int wait_ms);
/* Reaps it (blocking); the status as struct jail says. */
int jail_wait_exit(struct jail *j);
/* SIGKILL (idempotent). */
void jail_kill(struct jail *j);
/* Kills and reaps it if it runs, then frees its pidfd, cgroups and uid. */
void jail_release(struct jail *j);
