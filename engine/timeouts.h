/*
 * Every bounded wait of the engine, in one table (docs/operations.md,
 * "Bounded waits", lists what a user sees of them).
 */
#pragma once

/* the VMM */
#define QMP_TIMEOUT_MS 10000	 /* one QMP command: pause, resume, migrate, a restore's start, query */
#define RESTORE_TIMEOUT_MS 30000 /* a snapshot load until the guest runs */
#define ADOPT_BUDGET_MS 10000	 /* re-adopting one sandbox after a restart (all in parallel) */

/* the guest agent */
#define AGENT_RESTORE_TIMEOUT_MS 30000 /* its first answer after a restore, a resume, a wake (the attach) */
#define AGENT_WARM_TIMEOUT_MS 10000    /* a warm slot's activation attach */
#define AGENT_BOOT_TIMEOUT_MS 60000    /* its first answer after a cold boot (a create, a start, a bake, a build) */
#define GUEST_CALL_TIMEOUT_MS 30000    /* one call for live/ and procs/ */
#define USAGE_GUEST_TIMEOUT_MS 400     /* a usage read's guest sample, all its calls */
#define EXEC_DEFAULT_TIMEOUT_MS 600000 /* an exec without its own timeout_ms */

/* templates: bakes and builds */
#define WARM_TIMEOUT_MS (120 * 1000)	      /* the template's warm command, at bake and in each warm slot */
#define EXEC_PATH_TIMEOUT_MS (10 * 1000)      /* the bake's `true` in its shells (~0.1 s; a profile that waits: skipped) */
#define START_READY_TIMEOUT_MS (5 * 60 * 1000) /* a start command until its ready check answers */
#define RUN_TIMEOUT_MS (60 * 60 * 1000u)      /* one Dockerfile RUN step */
#define SKOPEO_TIMEOUT_MS (10 * 60 * 1000)    /* fetching an image */
#define UMOCI_TIMEOUT_MS (20 * 60 * 1000)     /* unpacking one */
#define MKFS_TIMEOUT_MS (20 * 60 * 1000)      /* making its disk */
