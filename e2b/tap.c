/*
 * Taps (tap.h): the one follower of each process emberfs-e2b streams, its
 * threads, and the table of them.
 *
 * Locking: taps_lock protects the table (the list and each tap's
 * deadline_ns); t->lock a tap's subscribers and state; t->fanout_lock the
 * order of chunks and the end in the streams; t->stdin_lock its stdin
 * handle. Pushes to streams (which may block on a slow client) happen with
 * no lock held but fanout_lock, on a snapshot of the subscribers.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/common.h"
#include "connect.h"
#include "mountc.h"
#include "tap.h"

#define READ_CHUNK (64 * 1024)
#define TAP_STACK (128 * 1024)

struct sub {
	struct sub *next;
	struct tap *tap;    /* a reference */
	struct cstream *s; /* a reference */
};

static pthread_mutex_t taps_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t taps_cond = PTHREAD_COND_INITIALIZER; /* the watchdog: a new deadline */
static struct tap *taps;				       /* protected by taps_lock */
static bool watchdog_running;				       /* protected by taps_lock */

struct tap *tap_ref(struct tap *t)
{
	__atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
	return t;
}

void tap_unref(struct tap *t)
{
	if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	if (t->stdin_fd >= 0)
		close(t->stdin_fd);
	json_object_put(t->config);
	free(t->tag);
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->fanout_lock);
	pthread_mutex_destroy(&t->stdin_lock);
	free(t);
}

struct tap *tap_new(const struct sbx *sb, const char *slot, uint32_t pid, json_object *config, const char *tag,
			   bool ours)
{
	struct tap *t = calloc(1, sizeof(*t));
	pthread_condattr_t ca;

	if (!t)
		return NULL;
	t->refs = 1;
	snprintf(t->sandbox, sizeof(t->sandbox), "%s", sb->id);
	snprintf(t->slot, sizeof(t->slot), "%s", slot);
	if (snprintf(t->dir, sizeof(t->dir) - 16, "%s/procs/%s", sb->dir, slot) >= (int)sizeof(t->dir) - 16 ||
	    (tag && !(t->tag = strdup(tag)))) {
		free(t->tag);
		free(t);
		return NULL;
	}
	t->pid = pid;
	t->config = json_object_get(config);
	t->ours = ours;
	t->stdin_fd = -1;
	pthread_mutex_init(&t->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&t->fanout_lock, NULL);
	pthread_mutex_init(&t->stdin_lock, NULL);
	return t;
}

/* dir/file into buf (PATH_MAX bytes): 0 or -ENAMETOOLONG (not inlined: gcc would warn at every use). */
static __attribute__((noinline)) int join(char *buf, const char *dir, const char *file)
{
	return snprintf(buf, PATH_MAX, "%s/%s", dir, file) >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* A file of the tap's slot (its dir leaves room for the names used). */
void tap_path(const struct tap *t, const char *file, char buf[PATH_MAX])
{
	if (join(buf, t->dir, file) < 0)
		buf[0] = 0;
}

/*
 * The tap of sandbox id's process pid (or tag when tag is not NULL), with a
 * reference; NULL if none. taps_lock held.
 */
static struct tap *tap_find_locked(const char *id, uint32_t pid, const char *tag)
{
	for (struct tap *t = taps; t; t = t->next)
		if (strcmp(t->sandbox, id) == 0 && (tag ? t->tag && strcmp(t->tag, tag) == 0 : t->pid == pid))
			return tap_ref(t);
	return NULL;
}

struct tap *tap_find(const char *id, uint32_t pid, const char *tag)
{
	struct tap *t;

	pthread_mutex_lock(&taps_lock);
	t = tap_find_locked(id, pid, tag);
	pthread_mutex_unlock(&taps_lock);
	return t;
}

static struct tap *tap_find_slot_locked(const char *id, const char *slot)
{
	for (struct tap *t = taps; t; t = t->next)
		if (strcmp(t->sandbox, id) == 0 && strcmp(t->slot, slot) == 0)
			return t;
	return NULL;
}

struct tap *tap_find_slot(const char *id, const char *slot)
{
	struct tap *t;

	pthread_mutex_lock(&taps_lock);
	t = tap_find_slot_locked(id, slot);
	if (t)
		tap_ref(t);
	pthread_mutex_unlock(&taps_lock);
	return t;
}

/*
 * Puts t in the table, unless a tap for the same slot is there already:
 * then returns that one (with a reference) and t is left out.
 */
struct tap *tap_register(struct tap *t)
{
	struct tap *old;

	pthread_mutex_lock(&taps_lock);
	old = tap_find_slot_locked(t->sandbox, t->slot);
	if (old) {
		tap_ref(old);
	} else {
		t->next = taps;
		taps = tap_ref(t);
	}
	pthread_mutex_unlock(&taps_lock);
	return old;
}

static void tap_unregister(struct tap *t)
{
	bool found = false;

	pthread_mutex_lock(&taps_lock);
	for (struct tap **p = &taps; *p; p = &(*p)->next)
		if (*p == t) {
			*p = t->next;
			found = true;
			break;
		}
	pthread_mutex_unlock(&taps_lock);
	if (found)
		tap_unref(t);
}

/* The subscribers' streams, each with a reference; *n of them (a NULL array when none). */
static struct cstream **subs_snapshot(struct tap *t, size_t *n)
{
	struct cstream **v;
	size_t k = 0, i = 0;

	pthread_mutex_lock(&t->lock);
	for (struct sub *s = t->subs; s; s = s->next)
		k++;
	v = k ? calloc(k, sizeof(*v)) : NULL;
	if (v)
		for (struct sub *s = t->subs; s; s = s->next)
			v[i++] = connect_stream_ref(s->s);
	pthread_mutex_unlock(&t->lock);
	*n = i;
	return v;
}

static void subs_release(struct cstream **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		connect_stream_unref(v[i]);
	free(v);
}

/* {"event": {name: inner}} (takes inner). */
static json_object *event_new(const char *name, json_object *inner)
{
	json_object *o = json_object_new_object(), *e = json_object_new_object();

	json_object_object_add(e, name, inner);
	json_object_object_add(o, "event", e);
	return o;
}

/* msg to every attached stream, serialized once. */
static void tap_fanout(struct tap *t, json_object *msg)
{
	size_t n, len;
	struct cstream **v = subs_snapshot(t, &n);
	_cleanup_free_ uint8_t *f = n ? connect_frame_json(msg, &len) : NULL;

	for (size_t i = 0; f && i < n; i++)
		connect_stream_push_copy(v[i], f, len); /* -EPIPE: that client is gone, its sub goes at its done */
	subs_release(v, n);
}

/* The client of a subscriber's stream went away (or its response ended): detach it. */
static void sub_gone(void *ctx)
{
	struct sub *sub = ctx;
	struct tap *t = sub->tap;

	pthread_mutex_lock(&t->lock);
	for (struct sub **p = &t->subs; *p; p = &(*p)->next)
		if (*p == sub) {
			*p = sub->next;
			break;
		}
	pthread_mutex_unlock(&t->lock);
	connect_stream_unref(sub->s);
	free(sub);
	tap_unref(t);
}

/*
 * Attaches s to t with the start event first: -ESRCH when the tap already
 * ended (the process is gone), -ENOMEM.
 */
int tap_attach(struct tap *t, struct cstream *s)
{
	struct sub *sub = calloc(1, sizeof(*sub));
	json_object *start, *ev;
	int r;

	if (!sub)
		return -ENOMEM;
	start = json_object_new_object();
	json_object_object_add(start, "pid", json_object_new_int64(t->pid));
	ev = event_new("start", start);
	pthread_mutex_lock(&t->lock);
	if (t->ended) {
		pthread_mutex_unlock(&t->lock);
		json_object_put(ev);
		free(sub);
		return -ESRCH;
	}
	/* a new stream's queue is empty: this push does not block under the lock */
	r = connect_stream_push(s, ev);
	if (r == 0) {
		sub->tap = tap_ref(t);
		sub->s = connect_stream_ref(s);
		sub->next = t->subs;
		t->subs = sub;
		connect_stream_on_gone(s, sub_gone, sub);
	}
	pthread_mutex_unlock(&t->lock);
	json_object_put(ev);
	if (r < 0)
		free(sub);
	return r;
}

/* Go's names for the signals (envd reports os.ProcessState.String()). */
static const char *signal_text(int sig)
{
	static const char *const names[] = {
		[1] = "hangup",	     [2] = "interrupt",	     [3] = "quit",	       [4] = "illegal instruction",
		[5] = "trace/breakpoint trap", [6] = "aborted", [7] = "bus error", [8] = "floating point exception",
		[9] = "killed",	     [10] = "user defined signal 1", [11] = "segmentation fault",
		[12] = "user defined signal 2", [13] = "broken pipe", [14] = "alarm clock", [15] = "terminated",
	};

	return sig > 0 && sig < (int)ARRAY_SIZE(names) && names[sig] ? names[sig] : NULL;
}

/* The end event for a slot's final status (NULL: not ended yet). */
static json_object *end_event_of(json_object *st, const char *read_error)
{
	json_object *v, *end = json_object_new_object();
	const char *state = NULL, *err = NULL;
	char text[64];
	int code = -1, sig = 0;
	bool exited = false;

	if (st && json_object_object_get_ex(st, "state", &v))
		state = json_object_get_string(v);
	if (st && state && strcmp(state, "exited") == 0) {
		if (json_object_object_get_ex(st, "signal", &v))
			sig = json_object_get_int(v);
		if (json_object_object_get_ex(st, "exit_code", &v))
			code = json_object_get_int(v);
		if (sig > 0) {
			const char *n = signal_text(sig);

			if (n)
				snprintf(text, sizeof(text), "signal: %s", n);
			else
				snprintf(text, sizeof(text), "signal: signal %d", sig);
			code = -1;
		} else {
			snprintf(text, sizeof(text), "exit status %d", code);
			exited = true;
		}
		if (code != 0)
			err = text;
	} else if (st && state && strcmp(state, "lost") == 0) {
		snprintf(text, sizeof(text), "lost");
		err = st && json_object_object_get_ex(st, "error", &v) && json_object_get_string(v) ?
			      json_object_get_string(v) :
			      "the process was lost";
	} else if (read_error) {
		snprintf(text, sizeof(text), "unknown");
		err = read_error;
	} else {
		json_object_put(end);
		return NULL;
	}
	json_object_object_add(end, "exitCode", json_object_new_int(code));
	json_object_object_add(end, "exited", json_object_new_boolean(exited));
	json_object_object_add(end, "status", json_object_new_string(text));
	if (err)
		json_object_object_add(end, "error", json_object_new_string(err));
	return event_new("end", end);
}

/* Removes the slot if ours, once the end went out and no reader holds its outputs: lock held. */
static void slot_remove_locked(struct tap *t)
{
	if (!t->ours || !t->ended || t->readers > 0 || t->removed)
		return;
	t->removed = true;
	if (rmdir(t->dir) < 0 && errno != ENOENT)
		log_debug("e2b: rmdir %s: %m", t->dir);
}

/*
 * The process ended: the end event and the end-stream envelope to every
 * stream, the tap leaves the table. Takes end.
 */
static void tap_finish(struct tap *t, json_object *end)
{
	size_t n;
	struct cstream **v;

	/* fanout_lock: a reader's chunk is wholly before the end in every stream, or not sent */
	pthread_mutex_lock(&t->fanout_lock);
	pthread_mutex_lock(&t->lock);
	t->ended = true; /* no attach from here on: the subscribers below are all of them */
	pthread_mutex_unlock(&t->lock);
	v = subs_snapshot(t, &n);
	for (size_t i = 0; i < n; i++) {
		connect_stream_push(v[i], end);
		connect_stream_end(v[i], NULL, NULL);
	}
	pthread_mutex_unlock(&t->fanout_lock);
	subs_release(v, n);
	json_object_put(end);
	tap_unregister(t);
	pthread_mutex_lock(&t->stdin_lock);
	if (t->stdin_fd >= 0)
		close(t->stdin_fd);
	t->stdin_fd = -1;
	pthread_mutex_unlock(&t->stdin_lock);
	pthread_mutex_lock(&t->lock);
	slot_remove_locked(t);
	pthread_mutex_unlock(&t->lock);
}

/*
 * The end event if the slot's status says the process ended (or cannot be
 * read), else NULL; *left_running: processes of its group still ran at its
 * exit (status "left_running"), so its outputs may stay open.
 */
static json_object *tap_poll_end(struct tap *t, bool *left_running)
{
	char path[PATH_MAX], why[160];
	json_object *st, *end, *v;

	*left_running = true; /* unknown: the stream ends at the exit, as for a child left running */
	tap_path(t, "status", path);
	st = mnt_read_json(path);
	if (!st) {
		if (errno == ENOENT)
			snprintf(why, sizeof(why), "the process is gone: its slot or its sandbox was removed");
		else
			snprintf(why, sizeof(why), "its status cannot be read: %s", strerror(errno));
		return end_event_of(NULL, why);
	}
	end = end_event_of(st, NULL);
	if (json_object_object_get_ex(st, "left_running", &v) && json_object_is_type(v, json_type_boolean))
		*left_running = json_object_get_boolean(v);
	json_object_put(st);
	return end;
}

/* Waits on t->cond until deadline (now_ns clock) or a reader ended: lock held. */
static void tap_wait_locked(struct tap *t, uint64_t deadline)
{
	struct timespec ts = {.tv_sec = (time_t)(deadline / 1000000000ull), .tv_nsec = (long)(deadline % 1000000000ull)};

	pthread_cond_timedwait(&t->cond, &t->lock, &ts);
}

/*
 * The tap's third thread: decides when the process ended. envd ends a
 * stream when its process exits, even while a child it left in the
 * background holds the outputs open (`cmd &`): so the end is the exit in
 * status, polled (20 ms, doubling to 250 ms) while the outputs are open.
 * When both outputs reach EOF first (the usual case) the exit follows at
 * once. When the exit comes first but no process of its group still ran at
 * the exit (status "left_running" false), the outputs reach EOF once what it
 * wrote was read: the end waits for that (at most EXIT_EOF_MAX, for a holder
 * that left the group). Otherwise what the process wrote before its exit is still on its
 * way (outputs are pulled: the guest's agent reads the pipe when a read
 * asks), so the end waits until every open output has had a read, issued
 * after the exit was seen (or pending since before it), wait EXIT_QUIET
 * without data: such a read finds whatever the pipe held at the exit. A busy
 * guest answers late, and a reader may not even have asked yet, so this
 * counts from the read, not from the exit. A child left in the background
 * that keeps writing does not hold the end longer than EXIT_MAX.
 */
#define EXIT_QUIET_NS (500ull * 1000000ull)
#define EXIT_MAX_NS (3000ull * 1000000ull)
#define EXIT_EOF_MAX_NS (30000ull * 1000000ull)
#define POLL_MIN_NS (20ull * 1000000ull)
#define POLL_MAX_NS (250ull * 1000000ull)

static void *waiter_main(void *arg)
{
	struct tap *t = arg;
	uint64_t interval = POLL_MIN_NS;
	json_object *end = NULL;
	unsigned eof_polls = 0;

	for (;;) {
		bool eof, left_running;

		pthread_mutex_lock(&t->lock);
		if (t->readers > 0)
			tap_wait_locked(t, now_ns() + interval);
		eof = t->readers == 0;
		pthread_mutex_unlock(&t->lock);
		end = tap_poll_end(t, &left_running);
		if (end && !left_running) {
			uint64_t limit = now_ns() + EXIT_EOF_MAX_NS;

			/* nothing else holds its outputs: EOF comes once everything it wrote was read */
			pthread_mutex_lock(&t->lock);
			while (t->readers > 0 && now_ns() < limit)
				tap_wait_locked(t, limit);
			pthread_mutex_unlock(&t->lock);
			break;
		}
		if (end) {
			uint64_t exit_seen = now_ns(), limit = exit_seen + EXIT_MAX_NS;

			pthread_mutex_lock(&t->lock);
			while (t->readers > 0) {
				uint64_t now = now_ns(), wake = limit;
				bool quiet = true;

				for (int i = 0; i < 2; i++) {
					uint64_t since = t->in_read_since[i], from;

					if (t->out_eof[i])
						continue;
					if (!since) {
						/* not waiting in a read (not started yet, or passing a chunk on): look again soon */
						quiet = false;
						if (now + POLL_MIN_NS < wake)
							wake = now + POLL_MIN_NS;
						continue;
					}
					/* a read pending since before the exit asks as well as a later one */
					from = since > exit_seen ? since : exit_seen;
					if (now - from < EXIT_QUIET_NS) {
						quiet = false;
						if (from + EXIT_QUIET_NS < wake)
							wake = from + EXIT_QUIET_NS;
					}
				}
				if (quiet || now >= limit)
					break;
				tap_wait_locked(t, wake);
			}
			pthread_mutex_unlock(&t->lock);
			break;
		}
		if (eof) {
			/* both outputs closed, the exit not yet in status: it comes within some ms */
			struct timespec ts = {0, eof_polls++ < 100 ? 2000000 : 50000000};

			nanosleep(&ts, NULL);
		} else if (interval < POLL_MAX_NS) {
			interval *= 2;
		}
	}
	tap_finish(t, end);
	tap_unref(t);
	return NULL;
}

struct reader {
	struct tap *t;
	const char *name; /* "stdout", "stderr" */
	int idx;	  /* 0, 1: its in_read_since and out_eof */
};

/* One chunk to every stream, unless the end went out already. */
static void reader_send(struct tap *t, const char *name, const char *buf, size_t len)
{
	json_object *data, *msg;
	char *b64;
	bool ended;

	pthread_mutex_lock(&t->lock);
	ended = t->ended;
	pthread_mutex_unlock(&t->lock);
	if (ended)
		return; /* read on and drop: a child left running must not block on a full pipe */
	b64 = base64_encode(buf, len);
	if (!b64)
		return; /* out of memory: that chunk is lost */
	data = json_object_new_object();
	json_object_object_add(data, name, json_object_new_string(b64));
	free(b64);
	msg = event_new("data", data);
	pthread_mutex_lock(&t->fanout_lock);
	if (!t->ended) /* stable under fanout_lock */
		tap_fanout(t, msg);
	pthread_mutex_unlock(&t->fanout_lock);
	json_object_put(msg);
}

static void reader_done(struct tap *t, int idx)
{
	pthread_mutex_lock(&t->lock);
	t->out_eof[idx] = true;
	t->in_read_since[idx] = 0;
	t->readers--;
	pthread_cond_broadcast(&t->cond);
	slot_remove_locked(t);
	pthread_mutex_unlock(&t->lock);
}

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	struct tap *t = rd->t;
	char path[PATH_MAX];
	_cleanup_free_ char *buf = malloc(READ_CHUNK);
	_cleanup_close_ int fd = -1;

	tap_path(t, rd->name, path);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		log_debug("e2b: %s: %m", path);
	while (fd >= 0 && buf) {
		ssize_t k;

		pthread_mutex_lock(&t->lock);
		t->in_read_since[rd->idx] = now_ns();
		pthread_mutex_unlock(&t->lock);
		k = read(fd, buf, READ_CHUNK);
		if (k > 0) {
			/* not quiet: the waiter looks again once this chunk is out and the next read waits */
			pthread_mutex_lock(&t->lock);
			t->in_read_since[rd->idx] = 0;
			pthread_mutex_unlock(&t->lock);
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			if (k < 0)
				log_debug("e2b: read %s: %m", path);
			break;
		}
		reader_send(t, rd->name, buf, (size_t)k);
	}
	reader_done(t, rd->idx);
	free(rd);
	tap_unref(t);
	return NULL;
}

/*
 * Starts the two readers and the waiter, once. 0 or -errno: a reader that
 * could not start counts as at EOF; without the waiter the tap ends at once.
 */
int tap_run(struct tap *t)
{
	static const char *const names[] = {"stdout", "stderr"};
	pthread_attr_t attr;
	pthread_t th;
	int r = 0, e;

	pthread_mutex_lock(&t->lock);
	if (t->reading) {
		pthread_mutex_unlock(&t->lock);
		return 0;
	}
	t->reading = true;
	t->readers = 2;
	pthread_mutex_unlock(&t->lock);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, TAP_STACK);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		struct reader *rd = calloc(1, sizeof(*rd));

		e = rd ? 0 : ENOMEM;
		if (rd) {
			rd->t = tap_ref(t);
			rd->name = names[i];
			rd->idx = (int)i;
			e = thread_create(&th, &attr, reader_main, rd);
			if (e) {
				tap_unref(t);
				free(rd);
			}
		}
		if (e) {
			r = -e;
			reader_done(t, (int)i);
		}
	}
	e = thread_create(&th, &attr, waiter_main, tap_ref(t));
	if (e) {
		json_object *o = json_object_new_object();

		tap_unref(t);
		r = -e;
		json_object_object_add(o, "exitCode", json_object_new_int(-1));
		json_object_object_add(o, "exited", json_object_new_boolean(false));
		json_object_object_add(o, "status", json_object_new_string("unknown"));
		json_object_object_add(o, "error", json_object_new_string("emberfs-e2b cannot follow it: no thread"));
		tap_finish(t, event_new("end", o));
	}
	pthread_attr_destroy(&attr);
	return r;
}

/* ---- the timeout watchdog (Connect-Timeout-Ms of a Start kills the process, as envd does) ---- */

static void *watchdog_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&taps_lock);
	for (;;) {
		uint64_t now = now_ns(), next = now + 60ull * 1000000000ull;
		struct timespec ts;
		struct tap *due = NULL;

		for (struct tap *t = taps; t; t = t->next) {
			if (!t->deadline_ns)
				continue;
			if (t->deadline_ns <= now) {
				t->deadline_ns = 0;
				due = tap_ref(t);
				break;
			}
			if (t->deadline_ns < next)
				next = t->deadline_ns;
		}
		if (due) {
			char path[PATH_MAX];

			pthread_mutex_unlock(&taps_lock);
			tap_path(due, "signal", path);
			if (mnt_write(path, "KILL", 4) < 0)
				log_debug("e2b: %s: KILL at its timeout: %m", path);
			tap_unref(due);
			pthread_mutex_lock(&taps_lock);
			continue;
		}
		ts.tv_sec = (time_t)(next / 1000000000ull);
		ts.tv_nsec = (long)(next % 1000000000ull);
		pthread_cond_timedwait(&taps_cond, &taps_lock, &ts);
	}
	return NULL;
}

void tap_set_deadline(struct tap *t, uint64_t timeout_ms)
{
	pthread_mutex_lock(&taps_lock);
	if (!watchdog_running) {
		pthread_attr_t attr;
		pthread_condattr_t ca;
		pthread_t th;

		/* taps_cond waits on CLOCK_MONOTONIC, as now_ns */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_destroy(&taps_cond);
		pthread_cond_init(&taps_cond, &ca);
		pthread_condattr_destroy(&ca);
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, TAP_STACK);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		watchdog_running = thread_create(&th, &attr, watchdog_main, NULL) == 0;
		pthread_attr_destroy(&attr);
	}
	t->deadline_ns = now_ns() + timeout_ms * 1000000ull;
	pthread_cond_signal(&taps_cond);
	pthread_mutex_unlock(&taps_lock);
}
