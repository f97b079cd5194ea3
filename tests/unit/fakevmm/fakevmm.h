/*
 * The fake VMM driver for the unit tests (docs/architecture.md, "The fake
 * driver"): a struct vmm_ops that runs the fake VMM program (fakevmm.c)
 * instead of a hypervisor, given to an engine through
 * engine_options.drivers. Its name, the templates' "backend", is "fake".
 */
#pragma once

#include "driver.h"

extern const struct vmm_ops fake_vmm_ops;

/*
 * The fake VMMs spawned from now on fail at where (fakevmm.c lists the
 * points: "start", "connect", "restore", "running", "agent", "ping",
 * "attach", "pause", "resume", "snapshot"); NULL: none. Thread-safe.
 */
void fakevmm_fail_set(const char *where);

/* How many fake VMMs this process spawned (adopted ones not counted). */
unsigned fakevmm_spawned(void);

/* The kernel command line the last fake VMM spawned was given (engine_spec_init's). */
void fakevmm_last_cmdline(char *buf, size_t len);
