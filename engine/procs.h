/*
 * A sandbox's streaming processes (procs/ID in the mount): typed calls for
 * front ends, part of engine.h. Like every access that needs the guest,
 * they wait for readiness and resume a paused or wake a hibernated sandbox
 * first; a failed, stopped or vanishing sandbox answers -EIO.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct engine;
struct sandbox;
struct proc;

/* Names: the sandbox naming rule. -EEXIST, -EINVAL, -ENOSPC (at most 256 per sandbox). */
int sandbox_proc_create(struct sandbox *s, const char *name, struct proc **ret);
struct proc *sandbox_proc_get(struct sandbox *s, const char *name); /* ref'd or NULL */
struct proc *engine_proc_by_id(struct engine *e, uint64_t id);	    /* ref'd or NULL */
char **sandbox_proc_list(struct sandbox *s);			    /* strv_free */
/* rmdir: kills the process if it runs and frees it; -ENOENT. */
int sandbox_proc_remove(struct sandbox *s, const char *name);
void proc_unref(struct proc *p);
uint64_t proc_id(const struct proc *p);
struct sandbox *proc_sandbox(const struct proc *p); /* not ref'd: valid while p is */

/*
 * Starts the process: text is a shell command line (run with /bin/sh -c, a
 * trailing newline dropped) or a JSON object {"argv":[..]|"sh":..,"env":{..},
 * "cwd":..}. -EBUSY if already started, -EINVAL for bad input, -EIO.
 */
int proc_start(struct proc *p, const char *text, size_t len);
char *proc_render_status(struct proc *p);
/* A signal name (TERM, SIGTERM, term) or number. -EINVAL, -ESRCH (not running), -EIO. */
int proc_signal(struct proc *p, const char *text, size_t len);

/*
 * Reads stdout (stream 1) or stderr (2): cb(arg, 0, data, len) as soon as
 * anything is available (len 0: end of the stream, everything read), or
 * cb(arg, -errno, NULL, 0). Called at once from this thread if decided, else
 * later from another thread. The token cancels a read not yet answered
 * (nothing is lost: the data stays for the next read).
 */
typedef void (*proc_read_fn)(void *arg, int result, const uint8_t *data, size_t len);
int proc_read(struct proc *p, int stream, size_t max, proc_read_fn cb, void *arg, uint64_t *token);
bool proc_read_cancel(struct proc *p, uint64_t token);
/* stdin: cb(arg, written or -errno) once every byte is in the pipe; eof closes it after. */
typedef void (*proc_write_fn)(void *arg, ssize_t result);
int proc_write(struct proc *p, const void *data, size_t len, bool eof, proc_write_fn cb, void *arg);
