/*
 * Calls into a sandbox's guest agent for the live filesystem, and the
 * streaming processes of procs/ID (see guest.h).
 *
 * A process's output is pulled, never pushed: an "out" call is in flight
 * only while a reader waits and nothing is buffered, so the daemon holds at
 * most one reply (1 MiB) per stream, and a process nobody reads blocks in the
 * guest on a full pipe (the agent stops reading at 256 KiB).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "guest.h"
#include "internal.h"
#include "parse.h"

#define PROCS_MAX 256

int guest_conn_get(struct sandbox *s, struct guest_conn *c)
{
	struct engine *e = s->e;
	int r;

	*c = (struct guest_conn){ 0 };
	pthread_mutex_lock(&e->lock);
	while (s->state == SB_CREATING)
		pthread_cond_wait(&s->cond, &e->lock);
	r = s->state == SB_READY || s->state == SB_PAUSED || s->state == SB_HIBERNATED ? 0 : -EIO;
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r; /* failed, stopped (start it first), or going away */
	r = sandbox_exec_enter(s);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	c->agent = agent_ref(s->agent);
	pthread_mutex_unlock(&e->lock);
	if (!c->agent) {
		sandbox_exec_leave(s);
		return -EIO;
	}
	atomic_fetch_add(&s->refs, 1);
	c->s = s;
	return 0;
}

void guest_conn_put(struct guest_conn *c)
{
	if (!c->s)
		return;
	agent_unref(c->agent);
	sandbox_exec_leave(c->s);
	sandbox_unref(c->s);
	*c = (struct guest_conn){ 0 };
}

/* A connection that ended is the guest gone (destroyed, stopped, its VMM died): EIO. */
static int conn_errno(int r)
{
	return r == -ECONNRESET || r == -EPIPE || r == -EPROTO || r == -ETIMEDOUT ? -EIO : r;
}

int guest_call(struct guest_conn *c, const char *op, json_object *req, const void *bin, size_t bin_len,
	       json_object **resp, uint8_t **data, size_t *data_len)
{
	json_object_object_add(req, "op", json_object_new_string(op));
	return conn_errno(agent_call_full(c->agent, req, bin, bin_len, GUEST_CALL_TIMEOUT_MS, NULL, NULL, resp, data,
					  data_len));
}

struct async_call {
	guest_async_fn cb;
	void *arg;
};

static void on_async(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	struct async_call *a = arg;

	a->cb(a->arg, conn_errno(result), resp, data, len);
	free(a);
}

int guest_call_async(struct guest_conn *c, const char *op, json_object *req, guest_async_fn cb, void *arg)
{
	struct async_call *a = malloc(sizeof(*a));
	int r;

	if (!a)
		return -ENOMEM;
	*a = (struct async_call){ cb, arg };
	json_object_object_add(req, "op", json_object_new_string(op));
	r = agent_call_async(c->agent, req, NULL, 0, on_async, a);
	if (r < 0)
		free(a);
	return conn_errno(r);
}

int sandbox_guest_call(struct sandbox *s, const char *op, json_object *req, const void *bin, size_t bin_len,
		       json_object **resp, uint8_t **data, size_t *data_len)
{
	struct guest_conn c;
	int r = guest_conn_get(s, &c);

	if (r < 0)
		return r;
	r = guest_call(&c, op, req, bin, bin_len, resp, data, data_len);
	guest_conn_put(&c);
	return r;
}

/* ------------------------------------------------------------------ */
/* Processes                                                            */

enum proc_state { PROC_NEW = 0, PROC_STARTING, PROC_RUNNING, PROC_EXITED, PROC_LOST };

static const char *const proc_state_names[] = { "new", "starting", "running", "exited", "lost" };

struct reader {
	proc_read_fn cb;
	void *arg;
	size_t max;
	uint64_t token;
	struct reader *next;
};

struct pstream {
	uint8_t *buf; /* received, not yet read */
	size_t len, off;
	bool eof;
	bool inflight; /* an "out" call */
	int error;     /* the call failed: every later read gets it */
	struct reader *readers; /* FIFO */
};

struct writer {
	proc_write_fn cb;
	void *arg;
	size_t len;
	bool eof;
	uint8_t *held; /* the bytes, while the process waits to be reattached */
};

struct proc {
	atomic_int refs;
	uint64_t id;
	char *name;
	struct sandbox *s; /* ref'd */
	pthread_mutex_t lock;
	enum proc_state state;	 /* lock */
	struct guest_conn conn;	 /* held from start until exit: the sandbox stays awake */
	struct agent_client *agent; /* the connection it runs on, for its whole life (job handles are per connection) */
	uint64_t job;
	int64_t pid;
	uint64_t start_unix_ms;
	uint64_t start_ns;
	int exit_code, signal;
	bool left_running; /* lock: once exited, processes of its group still ran (the agent's left_running) */
	double duration_ms;
	char *cmd;   /* as given */
	char *error; /* why it failed or was lost */
	bool removed;
	bool stdin_closed;
	/*
	 * From a record after a daemon restart: its job is the guest's, on no
	 * connection of ours until an attach keeps it (sandbox_procs_attached);
	 * meanwhile reads wait and a stdin write is held.
	 */
	bool reattach;
	struct pstream out[2];
	struct writer *writer; /* the stdin write in flight */
	uint64_t next_token;
};

static void writer_free(struct writer *w)
{
	if (w)
		free(w->held);
	free(w);
}

static void proc_free(struct proc *p)
{
	for (int i = 0; i < 2; i++)
		free(p->out[i].buf);
	free(p->name);
	free(p->cmd);
	free(p->error);
	writer_free(p->writer);
	agent_unref(p->agent);
	sandbox_unref(p->s);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

void proc_unref(struct proc *p)
{
	if (p && atomic_fetch_sub(&p->refs, 1) == 1)
		proc_free(p);
}

static struct proc *proc_ref(struct proc *p)
{
	atomic_fetch_add(&p->refs, 1);
	return p;
}

uint64_t proc_id(const struct proc *p)
{
	return p->id;
}

struct sandbox *proc_sandbox(const struct proc *p)
{
	return p->s;
}

/* A new slot, new and of no sandbox yet. */
static struct proc *proc_alloc(struct engine *e, const char *name)
{
	struct proc *p = calloc(1, sizeof(*p));

	if (!p || !(p->name = strdup(name))) {
		free(p);
		return NULL;
	}
	atomic_init(&p->refs, 1);
	pthread_mutex_init(&p->lock, NULL);
	p->id = atomic_fetch_add(&e->next_id, 1);
	p->exit_code = -1;
	return p;
}

int sandbox_proc_create(struct sandbox *s, const char *name, struct proc **ret)
{
	struct engine *e = s->e;
	struct proc *p, **n;
	int r = name_validate(name);

	if (r < 0)
		return r;
	if (!(p = proc_alloc(e, name)))
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	if (s->state == SB_DESTROYING || s->state == SB_FAILED)
		r = -ENOENT;
	else if (s->n_procs >= PROCS_MAX)
		r = -ENOSPC;
	for (size_t i = 0; r == 0 && i < s->n_procs; i++)
		if (strcmp(s->procs[i]->name, name) == 0)
			r = -EEXIST;
	if (r == 0 && !(n = realloc(s->procs, (s->n_procs + 1) * sizeof(*n))))
		r = -ENOMEM;
	else if (r == 0)
		s->procs = n;
	if (r == 0 && s->indexed && idtable_put(&e->procs_by_id, p->id, p) < 0)
		r = -ENOMEM;
	if (r == 0) {
		s->procs[s->n_procs++] = p;
		atomic_fetch_add(&s->refs, 1);
		p->s = s;
		if (ret)
			*ret = proc_ref(p);
	}
	pthread_mutex_unlock(&e->lock);
	if (r < 0) {
		pthread_mutex_destroy(&p->lock);
		free(p->name);
		free(p);
		return r;
	}
	sandbox_record_save(s);
	return 0;
}

struct proc *sandbox_proc_get(struct sandbox *s, const char *name)
{
	struct proc *p = NULL;

	pthread_mutex_lock(&s->e->lock);
	for (size_t i = 0; i < s->n_procs && !p; i++)
		if (strcmp(s->procs[i]->name, name) == 0)
			p = proc_ref(s->procs[i]);
	pthread_mutex_unlock(&s->e->lock);
	return p;
}

struct proc *engine_proc_by_id(struct engine *e, uint64_t id)
{
	struct proc *p = NULL;

	pthread_mutex_lock(&e->lock);
	p = idtable_get(&e->procs_by_id, id);
	if (p)
		p = proc_ref(p);
	pthread_mutex_unlock(&e->lock);
	return p;
}

char **sandbox_proc_list(struct sandbox *s)
{
	char **v;

	pthread_mutex_lock(&s->e->lock);
	v = calloc(s->n_procs + 1, sizeof(*v));
	for (size_t i = 0; v && i < s->n_procs; i++)
		if (!(v[i] = strdup(s->procs[i]->name))) {
			strv_free(v);
			v = NULL;
		}
	pthread_mutex_unlock(&s->e->lock);
	return v;
}

/* Readers and a writer still waiting, failed with err; lock held. Returns them for the caller to run. */
struct pending_cbs {
	struct reader *readers;
	struct writer *writer;
	int err;
};

static void take_waiters(struct proc *p, int err, struct pending_cbs *pc)
{
	struct reader **tail = &pc->readers;

	pc->err = err;
	for (int i = 0; i < 2; i++) {
		*tail = TAKE_PTR(p->out[i].readers);
		while (*tail)
			tail = &(*tail)->next;
		if (!p->out[i].error)
			p->out[i].error = err;
	}
	pc->writer = TAKE_PTR(p->writer);
}

static void run_failed(struct pending_cbs *pc)
{
	while (pc->readers) {
		struct reader *r = pc->readers;

		pc->readers = r->next;
		r->cb(r->arg, pc->err, NULL, 0);
		free(r);
	}
	if (pc->writer) {
		pc->writer->cb(pc->writer->arg, pc->err);
		writer_free(pc->writer);
	}
}

/* The process is over for the host (exited and reported, lost, removed): the sandbox may sleep again. */
static void proc_unpin(struct proc *p)
{
	struct guest_conn c;

	pthread_mutex_lock(&p->lock);
	c = p->conn;
	p->conn = (struct guest_conn){ 0 };
	pthread_mutex_unlock(&p->lock);
	guest_conn_put(&c);
}

static void set_lost(struct proc *p, const char *why)
{
	if (p->state == PROC_STARTING || p->state == PROC_RUNNING) {
		p->state = PROC_LOST;
		free(p->error);
		p->error = strdup(why);
		p->duration_ms = (double)(now_ns() - p->start_ns) / 1e6;
	}
}

/* A call about the process on the connection it was started on. */
static int proc_call(struct proc *p, const char *op, json_object *req)
{
	json_object_object_add(req, "op", json_object_new_string(op));
	json_object_object_add(req, "job", json_object_new_uint64(p->job));
	return conn_errno(agent_call_full(p->agent, req, NULL, 0, GUEST_CALL_TIMEOUT_MS, NULL, NULL, NULL, NULL, NULL));
}

int sandbox_proc_remove(struct sandbox *s, const char *name)
{
	struct engine *e = s->e;
	struct proc *p = NULL;
	struct pending_cbs pc = { 0 };

	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < s->n_procs && !p; i++)
		if (strcmp(s->procs[i]->name, name) == 0) {
			p = s->procs[i];
			s->procs[i] = s->procs[--s->n_procs];
			idtable_del(&e->procs_by_id, p->id);
		}
	pthread_mutex_unlock(&e->lock);
	if (!p)
		return -ENOENT;
	pthread_mutex_lock(&p->lock);
	p->removed = true;
	take_waiters(p, -EIO, &pc);
	pthread_mutex_unlock(&p->lock);
	run_failed(&pc);
	if (p->agent) {
		json_object *req = json_object_new_object();

		/* kills it (its process group) if it runs, frees what the agent keeps; a guest already gone is fine */
		proc_call(p, "release", req);
		json_object_put(req);
	}
	/* one the guest still has for a restarted daemon goes at the next attach, which no longer names it */
	proc_unpin(p);
	proc_unref(p);
	sandbox_record_save(s);
	return 0;
}

void sandbox_procs_free(struct sandbox *s)
{
	char **names = sandbox_proc_list(s);

	for (char **n = names; n && *n; n++)
		sandbox_proc_remove(s, *n);
	strv_free(names);
}

/* ---- start ---- */

static void on_exit_reply(void *arg, int result, json_object *resp, const uint8_t *data, size_t len);

int proc_start(struct proc *p, const char *text, size_t len)
{
	_cleanup_json_ json_object *req = proc_parse_cmd(text, len);
	_cleanup_json_ json_object *resp = NULL;
	struct guest_conn c;
	json_object *wreq;
	int r;

	if (!req || settings_env_apply(p->s, req) < 0)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	r = p->state != PROC_NEW || p->removed ? -EBUSY : 0;
	if (r == 0) {
		p->state = PROC_STARTING;
		while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
			len--; /* shown as given, without the newline that ended it */
		p->cmd = strndup(text, len);
		p->start_ns = now_ns();
	}
	pthread_mutex_unlock(&p->lock);
	if (r < 0)
		return r;
	r = guest_conn_get(p->s, &c);
	if (r == 0)
		r = guest_call(&c, "spawn", req, NULL, 0, &resp, NULL, NULL);
	pthread_mutex_lock(&p->lock);
	if (r < 0) {
		p->state = PROC_LOST;
		free(p->error);
		if (asprintf(&p->error, "start failed: %s",
			     jget_str(resp, "error") ? jget_str(resp, "error") : strerror(-r)) < 0)
			p->error = NULL;
		pthread_mutex_unlock(&p->lock);
		guest_conn_put(&c);
		return r;
	}
	p->conn = c;
	p->agent = agent_ref(c.agent);
	p->job = (uint64_t)jget_int(resp, "job", 0);
	p->pid = jget_int(resp, "pid", 0);
	p->start_unix_ms = (uint64_t)jget_int(resp, "start_unix_ms", 0);
	p->state = PROC_RUNNING;
	if (p->removed) {
		/* an rmdir came while it started: it must not run on */
		json_object *rel = json_object_new_object();

		pthread_mutex_unlock(&p->lock);
		proc_call(p, "release", rel);
		json_object_put(rel);
		proc_unpin(p);
		return -ENOENT;
	}
	pthread_mutex_unlock(&p->lock);
	sandbox_record_save(p->s); /* its job: a restarted daemon takes it over */

	/* told when it exits: the status is the host's own from then on */
	wreq = json_object_new_object();
	json_object_object_add(wreq, "op", json_object_new_string("wait"));
	json_object_object_add(wreq, "job", json_object_new_uint64(p->job));
	r = agent_call_async(c.agent, wreq, NULL, 0, on_exit_reply, proc_ref(p));
	json_object_put(wreq);
	if (r < 0) {
		pthread_mutex_lock(&p->lock);
		set_lost(p, "the guest connection ended");
		pthread_mutex_unlock(&p->lock);
		proc_unref(p);
	}
	return 0;
}

static void on_exit_reply(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	struct proc *p = arg;

	(void)data;
	(void)len;
	pthread_mutex_lock(&p->lock);
	if (result == 0 && p->state == PROC_RUNNING) {
		p->state = PROC_EXITED;
		p->exit_code = (int)jget_int(resp, "exit_code", -1);
		p->signal = (int)jget_int(resp, "signal", 0);
		p->left_running = jget_bool(resp, "left_running");
		p->duration_ms = (double)jget_int(resp, "duration_ms", 0);
	} else if (result < 0 && !p->removed) {
		set_lost(p, "the guest connection ended (the sandbox was stopped, or its VMM died)");
	}
	pthread_mutex_unlock(&p->lock);
	/*
	 * Unpinning takes the engine lock, which is fine from the reader thread;
	 * dropping the connection's last reference is not (it joins this thread),
	 * and cannot happen here: the sandbox still holds its own.
	 */
	proc_unpin(p);
	proc_unref(p);
}

char *proc_render_status(struct proc *p)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	char *s;

	pthread_mutex_lock(&p->lock);
	json_object_object_add(o, "name", json_object_new_string(p->name));
	json_object_object_add(o, "state", json_object_new_string(proc_state_names[p->state]));
	json_object_object_add(o, "cmd", p->cmd ? json_object_new_string(p->cmd) : NULL);
	json_object_object_add(o, "pid", p->pid ? json_object_new_int64(p->pid) : NULL);
	json_object_object_add(o, "start_unix_ms",
			       p->start_unix_ms ? json_object_new_int64((int64_t)p->start_unix_ms) : NULL);
	json_object_object_add(o, "exit_code", p->state == PROC_EXITED ? json_object_new_int(p->exit_code) : NULL);
	json_object_object_add(o, "signal", p->state == PROC_EXITED ? json_object_new_int(p->signal) : NULL);
	json_object_object_add(o, "left_running", p->state == PROC_EXITED ? json_object_new_boolean(p->left_running) : NULL);
	json_object_object_add(o, "duration_ms",
			       p->state == PROC_RUNNING ? ms_json((double)(now_ns() - p->start_ns) / 1e6) :
			       p->state >= PROC_EXITED ? ms_json(p->duration_ms) : NULL);
	json_object_object_add(o, "stdin_closed", json_object_new_boolean(p->stdin_closed));
	json_object_object_add(o, "error", p->error ? json_object_new_string(p->error) : NULL);
	pthread_mutex_unlock(&p->lock);
	s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	if (s) {
		char *n = realloc(s, strlen(s) + 2);

		if (n) {
			strcat(n, "\n");
			s = n;
		}
	}
	return s;
}

int proc_signal(struct proc *p, const char *text, size_t len)
{
	int sig = proc_parse_signal(text, len);
	json_object *req;
	int r;

	if (sig < 0)
		return sig;
	pthread_mutex_lock(&p->lock);
	r = p->state != PROC_RUNNING ? -ESRCH : p->reattach || !p->agent ? -EAGAIN : 0;
	pthread_mutex_unlock(&p->lock);
	if (r < 0)
		return r; /* EAGAIN: re-adopted paused, not reattached until the sandbox resumes */
	req = json_object_new_object();
	json_object_object_add(req, "sig", json_object_new_int(sig));
	r = proc_call(p, "signal", req);
	json_object_put(req);
	return r;
}

/* ---- output ---- */

struct served {
	struct reader *r;
	uint8_t *data;
	size_t len;
	int err;
	struct served *next;
};

/*
 * Hands buffered data (or EOF, or the stream's error) to waiting readers in
 * order; lock held. Returns what to call once the lock is dropped, and
 * whether another "out" call is needed.
 */
static struct served *serve(struct pstream *st, bool *need_call)
{
	struct served *head = NULL, **tail = &head;

	while (st->readers && (st->len > st->off || st->eof || st->error)) {
		struct reader *r = st->readers;
		struct served *sv = calloc(1, sizeof(*sv));

		if (!sv)
			break;
		st->readers = r->next;
		sv->r = r;
		if (st->len > st->off) {
			sv->len = r->max < st->len - st->off ? r->max : st->len - st->off;
			sv->data = malloc(sv->len);
			if (sv->data)
				memcpy(sv->data, st->buf + st->off, sv->len);
			else
				sv->err = -ENOMEM;
			st->off += sv->len;
			if (st->off == st->len) {
				free(st->buf);
				st->buf = NULL;
				st->len = st->off = 0;
			}
		} else if (!st->eof) {
			sv->err = st->error;
		}
		*tail = sv;
		tail = &sv->next;
	}
	*need_call = st->readers && !st->inflight && !st->eof && !st->error;
	return head;
}

static void run_served(struct served *sv)
{
	while (sv) {
		struct served *n = sv->next;

		sv->r->cb(sv->r->arg, sv->err, sv->data, sv->err ? 0 : sv->len);
		free(sv->data);
		free(sv->r);
		free(sv);
		sv = n;
	}
}

struct out_call {
	struct proc *p;
	int stream;
};

static void out_call(struct proc *p, int stream);

static void on_out_reply(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	struct out_call *oc = arg;
	struct proc *p = oc->p;
	struct pstream *st = &p->out[oc->stream - 1];
	struct served *sv;
	json_object *v;
	bool again;

	pthread_mutex_lock(&p->lock);
	st->inflight = false;
	if (result < 0) {
		st->error = result == -ECONNRESET ? -EIO : result;
	} else {
		if (len > 0 && (st->buf = malloc(len))) {
			memcpy(st->buf, data, len);
			st->len = len;
			st->off = 0;
		} else if (len > 0) {
			st->error = -ENOMEM;
		}
		if (json_object_object_get_ex(resp, "eof", &v) && json_object_get_boolean(v))
			st->eof = len == 0 || st->eof;
		if (len == 0)
			st->eof = true;
	}
	sv = serve(st, &again);
	pthread_mutex_unlock(&p->lock);
	run_served(sv);
	if (again)
		out_call(p, oc->stream);
	proc_unref(p);
	free(oc);
}

/* One "out" call for the stream, if none is in flight and the process is reachable. */
static void out_call(struct proc *p, int stream)
{
	struct pstream *st = &p->out[stream - 1];
	struct out_call *oc;
	struct served *sv;
	json_object *req;
	bool again;
	int r;

	pthread_mutex_lock(&p->lock);
	if (p->reattach) {
		pthread_mutex_unlock(&p->lock);
		return; /* the readers wait for the reattach */
	}
	if (st->inflight || !p->agent) {
		if (!st->inflight && !p->agent && p->state != PROC_STARTING)
			st->error = st->error ? st->error : -EIO; /* never started, or it failed to */
		sv = serve(st, &again);
		pthread_mutex_unlock(&p->lock);
		run_served(sv);
		return;
	}
	st->inflight = true;
	req = json_object_new_object();
	json_object_object_add(req, "op", json_object_new_string("out"));
	json_object_object_add(req, "job", json_object_new_uint64(p->job));
	json_object_object_add(req, "stream", json_object_new_int(stream));
	/*
	 * What the first reader asks for: the daemon holds no more than it hands
	 * on at once (output it holds is lost if it crashes; the guest's is not)
	 */
	json_object_object_add(req, "max", json_object_new_int64(st->readers && st->readers->max < AGENT_BIN_MAX ?
									 (int64_t)st->readers->max : AGENT_BIN_MAX));
	oc = malloc(sizeof(*oc));
	if (oc) {
		*oc = (struct out_call){ proc_ref(p), stream };
		r = agent_call_async(p->agent, req, NULL, 0, on_out_reply, oc);
	} else {
		r = -ENOMEM;
	}
	pthread_mutex_unlock(&p->lock);
	json_object_put(req);
	if (r < 0) {
		if (oc) {
			proc_unref(p);
			free(oc);
		}
		pthread_mutex_lock(&p->lock);
		st->inflight = false;
		st->error = -EIO;
		sv = serve(st, &again);
		pthread_mutex_unlock(&p->lock);
		run_served(sv);
	}
}

int proc_read(struct proc *p, int stream, size_t max, proc_read_fn cb, void *arg, uint64_t *token)
{
	struct pstream *st;
	struct reader *rd, **tail;
	struct served *sv;
	bool again;

	if (stream != 1 && stream != 2)
		return -EINVAL;
	st = &p->out[stream - 1];
	rd = calloc(1, sizeof(*rd));
	if (!rd)
		return -ENOMEM;
	*rd = (struct reader){ .cb = cb, .arg = arg, .max = max ? max : 1 };
	pthread_mutex_lock(&p->lock);
	if (p->state == PROC_NEW || p->removed) {
		pthread_mutex_unlock(&p->lock);
		free(rd);
		return p->removed ? -EIO : -EAGAIN; /* not started yet: nothing will ever come */
	}
	rd->token = ++p->next_token;
	*token = rd->token;
	for (tail = &st->readers; *tail; tail = &(*tail)->next)
		;
	*tail = rd;
	sv = serve(st, &again);
	pthread_mutex_unlock(&p->lock);
	run_served(sv);
	if (again)
		out_call(p, stream);
	return 0;
}

bool proc_read_cancel(struct proc *p, uint64_t token)
{
	bool found = false;

	pthread_mutex_lock(&p->lock);
	for (int i = 0; i < 2 && !found; i++)
		for (struct reader **rr = &p->out[i].readers; *rr; rr = &(*rr)->next)
			if ((*rr)->token == token) {
				struct reader *r = *rr;

				*rr = r->next;
				free(r);
				found = true;
				break;
			}
	pthread_mutex_unlock(&p->lock);
	return found;
}

/* ---- stdin ---- */

static void on_in_reply(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	struct proc *p = arg;
	struct writer *w;

	(void)data;
	(void)len;
	pthread_mutex_lock(&p->lock);
	w = TAKE_PTR(p->writer);
	if (w && w->eof && result == 0)
		p->stdin_closed = true;
	pthread_mutex_unlock(&p->lock);
	if (w) {
		w->cb(w->arg, result < 0 ? (result == -ECONNRESET ? -EIO : result) :
					   (ssize_t)jget_int(resp, "written", (int64_t)w->len));
		writer_free(w);
	}
	proc_unref(p);
}

/* The "in" call for the writer in p->writer; lock held. */
static int send_in(struct proc *p, const void *data)
{
	struct writer *w = p->writer;
	json_object *req = json_object_new_object();
	int r;

	json_object_object_add(req, "op", json_object_new_string("in"));
	json_object_object_add(req, "job", json_object_new_uint64(p->job));
	if (w->eof)
		json_object_object_add(req, "eof", json_object_new_boolean(true));
	r = agent_call_async(p->agent, req, data ? data : "", w->len, on_in_reply, proc_ref(p));
	json_object_put(req);
	if (r < 0) {
		p->writer = NULL;
		proc_unref(p);
	}
	return r;
}

int proc_write(struct proc *p, const void *data, size_t len, bool eof, proc_write_fn cb, void *arg)
{
	struct writer *w;
	int r;

	if (len > AGENT_BIN_MAX)
		len = AGENT_BIN_MAX; /* a short write; the caller writes the rest */
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	*w = (struct writer){ .cb = cb, .arg = arg, .len = len, .eof = eof };
	pthread_mutex_lock(&p->lock);
	r = p->state == PROC_NEW ? -EAGAIN :
	    p->state != PROC_RUNNING || (!p->agent && !p->reattach) || p->stdin_closed ? -EPIPE :
	    p->writer ? -EBUSY : 0;
	if (r == 0 && p->reattach && !(w->held = malloc(len ? len : 1)))
		r = -ENOMEM;
	if (r < 0) {
		pthread_mutex_unlock(&p->lock);
		free(w);
		return r;
	}
	p->writer = w;
	if (p->reattach) {
		memcpy(w->held, data ? data : "", len);
		pthread_mutex_unlock(&p->lock);
		return 0; /* sent once reattached */
	}
	r = send_in(p, data);
	pthread_mutex_unlock(&p->lock);
	if (r < 0)
		writer_free(w);
	return r < 0 ? -EIO : 0;
}

/* ---- over a daemon restart, a wake ---- */

/* One process as the record keeps it, and a checkpoint with its unread output (with_output); p->lock held. */
static json_object *proc_json(struct proc *p, bool with_output)
{
	json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	json_object_object_add(o, "name", json_object_new_string(p->name));
	json_object_object_add(o, "state", json_object_new_string(proc_state_names[p->state]));
	json_object_object_add(o, "cmd", p->cmd ? json_object_new_string(p->cmd) : NULL);
	json_object_object_add(o, "job", json_object_new_int64((int64_t)p->job));
	json_object_object_add(o, "pid", json_object_new_int64(p->pid));
	json_object_object_add(o, "start_unix_ms", json_object_new_int64((int64_t)p->start_unix_ms));
	json_object_object_add(o, "exit_code", json_object_new_int(p->exit_code));
	json_object_object_add(o, "signal", json_object_new_int(p->signal));
	json_object_object_add(o, "left_running", json_object_new_boolean(p->left_running));
	json_object_object_add(o, "duration_ms", json_object_new_double(p->duration_ms));
	json_object_object_add(o, "stdin_closed", json_object_new_boolean(p->stdin_closed));
	json_object_object_add(o, "error", p->error ? json_object_new_string(p->error) : NULL);
	for (int k = 0; with_output && k < 2; k++) {
		const struct pstream *ps = &p->out[k];
		_cleanup_free_ char *b64 = base64_encode(ps->buf ? ps->buf + ps->off : (const uint8_t *)"",
							 ps->buf ? ps->len - ps->off : 0);

		if (!b64) {
			json_object_put(o);
			return NULL;
		}
		json_object_object_add(o, k ? "stderr_unread" : "stdout_unread", json_object_new_string(b64));
		json_object_object_add(o, k ? "stderr_eof" : "stdout_eof", json_object_new_boolean(ps->eof));
	}
	return o;
}

static json_object *procs_json(struct sandbox *s, bool with_output)
{
	json_object *a = json_object_new_array();

	for (size_t i = 0; a && i < s->n_procs; i++) {
		struct proc *p = s->procs[i];
		json_object *o;

		pthread_mutex_lock(&p->lock);
		o = proc_json(p, with_output);
		pthread_mutex_unlock(&p->lock);
		if (!o && with_output) {
			json_object_put(a); /* a checkpoint is whole or not at all */
			return NULL;
		}
		if (o)
			json_object_array_add(a, o);
	}
	return a;
}

/* The record's "procs"; e->lock held. */
json_object *sandbox_procs_json(struct sandbox *s)
{
	return procs_json(s, false);
}

json_object *sandbox_procs_checkpoint(struct sandbox *s)
{
	json_object *a;

	pthread_mutex_lock(&s->e->lock);
	a = procs_json(s, true);
	pthread_mutex_unlock(&s->e->lock);
	return a;
}

/*
 * The processes of a sandbox rebuilt from its record (not registered yet, its
 * state set): a job that may still run in the guest waits to be reattached
 * (the next attach), one that cannot has ended for us.
 */
/* One process from a record (or a template's start command), not registered yet. */
static struct proc *proc_from_json(struct sandbox *s, json_object *o, bool guest)
{
	const char *name = jget_str(o, "name"), *state = jget_str(o, "state"), *cmd = jget_str(o, "cmd"),
		   *err = jget_str(o, "error");
	struct proc *p;
	int st = -1;

	for (int k = 0; state && k <= PROC_LOST; k++)
		if (strcmp(state, proc_state_names[k]) == 0)
			st = k;
	if (!name || name_validate(name) < 0 || st < 0 || !(p = proc_alloc(s->e, name)))
		return NULL;
	p->state = (enum proc_state)st;
	p->cmd = cmd ? strdup(cmd) : NULL;
	p->error = err ? strdup(err) : NULL;
	p->job = (uint64_t)jget_int(o, "job", 0);
	p->pid = jget_int(o, "pid", 0);
	p->start_unix_ms = (uint64_t)jget_int(o, "start_unix_ms", 0);
	p->exit_code = (int)jget_int(o, "exit_code", -1);
	p->signal = (int)jget_int(o, "signal", 0);
	p->left_running = jget_bool(o, "left_running");
	p->duration_ms = jget_double(o, "duration_ms");
	p->stdin_closed = jget_bool(o, "stdin_closed");
	{
		int64_t ago_ms = (int64_t)realtime_ms() - (int64_t)p->start_unix_ms;

		/* "so far" goes on from the guest's start time */
		p->start_ns = now_ns() - (ago_ms > 0 && p->start_unix_ms ? (uint64_t)ago_ms * 1000000 : 0);
	}
	if (p->state == PROC_STARTING) {
		p->state = PROC_LOST;
		free(p->error);
		p->error = strdup("the daemon restarted while it started");
	} else if ((p->state == PROC_RUNNING || p->state == PROC_EXITED) && p->job && guest) {
		p->reattach = true;
	} else if (p->state == PROC_RUNNING) {
		p->state = PROC_LOST;
		free(p->error);
		p->error = strdup("the guest connection ended (the sandbox was stopped, or its VMM died)");
	}
	atomic_fetch_add(&s->refs, 1);
	p->s = s;
	return p;
}

int sandbox_procs_index(struct sandbox *s)
{
	for (size_t i = 0; i < s->n_procs; i++)
		if (idtable_put(&s->e->procs_by_id, s->procs[i]->id, s->procs[i]) < 0) {
			while (i-- > 0)
				idtable_del(&s->e->procs_by_id, s->procs[i]->id);
			return -ENOMEM;
		}
	return 0;
}

void sandbox_procs_unindex(struct sandbox *s)
{
	for (size_t i = 0; i < s->n_procs; i++)
		idtable_del(&s->e->procs_by_id, s->procs[i]->id);
}

static void procs_register(struct sandbox *s, struct proc *p)
{
	struct proc **v = realloc(s->procs, (s->n_procs + 1) * sizeof(*v));

	if (v)
		s->procs = v;
	if (!v || (s->indexed && idtable_put(&s->e->procs_by_id, p->id, p) < 0)) {
		proc_unref(p);
		return;
	}
	s->procs[s->n_procs++] = p;
}

/*
 * The processes of a sandbox rebuilt from its record (not registered yet, its
 * state set): a job that may still run in the guest waits to be reattached
 * (the next attach), one that cannot has ended for us.
 */
void sandbox_procs_from_json(struct sandbox *s, json_object *arr)
{
	bool guest = s->state == SB_READY || s->state == SB_PAUSED || s->state == SB_HIBERNATED;
	size_t n = json_object_is_type(arr, json_type_array) ? json_object_array_length(arr) : 0;

	for (size_t i = 0; i < n && s->n_procs < PROCS_MAX; i++) {
		struct proc *p = proc_from_json(s, json_object_array_get_idx(arr, i), guest);

		if (p)
			procs_register(s, p);
	}
}

/* A checkpoint's unread output of one stream, back in the process's buffer (not registered yet). */
static void pstream_restore(struct pstream *ps, json_object *o, const char *data_key, const char *eof_key)
{
	const char *b64 = jget_str(o, data_key);
	uint8_t *buf = NULL;
	ssize_t n = b64 ? base64_decode(b64, strlen(b64), &buf) : 0;

	if (n > 0) {
		ps->buf = buf;
		ps->len = (size_t)n;
		ps->off = 0;
	} else {
		free(buf);
	}
	ps->eof = jget_bool(o, eof_key);
}

/*
 * A rollback: every current process leaves (its waiting readers and writer
 * answered EIO, its handles EIO from now on: the objects are gone, the
 * names come back as new ones), and the checkpoint's processes take their
 * place, each waiting for the next attach to take its job over. Nothing is
 * asked of the guest: the VMM these ran in has ended.
 */
void sandbox_procs_replace(struct sandbox *s, json_object *arr)
{
	struct engine *e = s->e;
	size_t n_old, n = json_object_is_type(arr, json_type_array) ? json_object_array_length(arr) : 0;
	struct proc **old;

	pthread_mutex_lock(&e->lock);
	old = TAKE_PTR(s->procs);
	n_old = s->n_procs;
	s->n_procs = 0;
	for (size_t i = 0; i < n_old; i++)
		idtable_del(&e->procs_by_id, old[i]->id);
	pthread_mutex_unlock(&e->lock);
	for (size_t i = 0; i < n_old; i++) {
		struct proc *p = old[i];
		struct pending_cbs pc = { 0 };

		pthread_mutex_lock(&p->lock);
		p->removed = true;
		set_lost(p, "rolled back");
		take_waiters(p, -EIO, &pc);
		pthread_mutex_unlock(&p->lock);
		run_failed(&pc);
		proc_unpin(p);
		proc_unref(p);
	}
	free(old);
	for (size_t i = 0; i < n && i < PROCS_MAX; i++) {
		json_object *o = json_object_array_get_idx(arr, i);
		struct proc *p = proc_from_json(s, o, true);

		if (!p)
			continue;
		pstream_restore(&p->out[0], o, "stdout_unread", "stdout_eof");
		pstream_restore(&p->out[1], o, "stderr_unread", "stderr_eof");
		pthread_mutex_lock(&e->lock);
		procs_register(s, p);
		pthread_mutex_unlock(&e->lock);
	}
	sandbox_record_save(s);
}

/*
 * A template's start command in a sandbox restored from its snapshot: the
 * snapshot's process, procs/start, taken over by the sandbox's first attach
 * like a process of a record. e->lock held.
 */
void sandbox_procs_add_start(struct sandbox *s, const struct start_info *si)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	struct proc *p;

	if (!o || !si->job || !si->cmd)
		return;
	json_object_object_add(o, "name", json_object_new_string("start"));
	json_object_object_add(o, "state", json_object_new_string("running"));
	json_object_object_add(o, "cmd", json_object_new_string(si->cmd));
	json_object_object_add(o, "job", json_object_new_int64((int64_t)si->job));
	json_object_object_add(o, "pid", json_object_new_int64(si->pid));
	json_object_object_add(o, "start_unix_ms", json_object_new_int64((int64_t)si->start_unix_ms));
	for (size_t i = 0; i < s->n_procs; i++)
		if (strcmp(s->procs[i]->name, "start") == 0)
			return;
	if ((p = proc_from_json(s, o, true)))
		procs_register(s, p);
}

/* The jobs an attach keeps: every process the guest may still have for us. */
json_object *sandbox_procs_keep(struct sandbox *s)
{
	json_object *a = json_object_new_array();

	pthread_mutex_lock(&s->e->lock);
	for (size_t i = 0; a && i < s->n_procs; i++) {
		struct proc *p = s->procs[i];

		pthread_mutex_lock(&p->lock);
		if (p->job && !p->removed && (p->state == PROC_RUNNING || p->state == PROC_EXITED))
			json_object_array_add(a, json_object_new_int64((int64_t)p->job));
		pthread_mutex_unlock(&p->lock);
	}
	pthread_mutex_unlock(&s->e->lock);
	return a;
}

static struct proc **procs_snapshot(struct sandbox *s, size_t *n)
{
	struct proc **v;

	pthread_mutex_lock(&s->e->lock);
	v = calloc(s->n_procs + 1, sizeof(*v));
	*n = v ? s->n_procs : 0;
	for (size_t i = 0; i < *n; i++)
		v[i] = proc_ref(s->procs[i]);
	pthread_mutex_unlock(&s->e->lock);
	return v;
}

/* Holds the sandbox awake for a running process taken over (guest_conn_get without its resume). */
static void pin_running(struct proc *p, struct agent_client *ac)
{
	struct sandbox *s = p->s;

	pthread_mutex_lock(&s->e->lock);
	s->execs_running++;
	pthread_mutex_unlock(&s->e->lock);
	atomic_fetch_add(&s->refs, 1);
	pthread_mutex_lock(&p->lock);
	p->conn = (struct guest_conn){ .s = s, .agent = agent_ref(ac) };
	pthread_mutex_unlock(&p->lock);
}

static json_object *find_job(json_object *jobs, uint64_t job)
{
	size_t n = json_object_is_type(jobs, json_type_array) ? json_object_array_length(jobs) : 0;

	for (size_t i = 0; i < n; i++) {
		json_object *o = json_object_array_get_idx(jobs, i);

		if ((uint64_t)jget_int(o, "job", 0) == job)
			return o;
	}
	return NULL;
}

/*
 * After an attach on connection ac answered resp: each process whose job was
 * on no connection of ours (re-adopted, or woken with the sandbox) is on ac
 * now, with the guest's word on whether it still runs; held reads and a held
 * stdin write go out. A job the guest no longer has is lost.
 */
void sandbox_procs_attached(struct sandbox *s, struct agent_client *ac, json_object *resp)
{
	json_object *jobs = NULL;
	size_t n;
	struct proc **v = procs_snapshot(s, &n);

	json_object_object_get_ex(resp, "jobs", &jobs);
	for (size_t i = 0; i < n; i++) {
		struct proc *p = v[i];
		struct agent_client *old = NULL;
		struct pending_cbs pc = { 0 };
		bool wait = false, pin = false, unpin = false, kick[2] = { false, false };
		json_object *j;

		pthread_mutex_lock(&p->lock);
		if (!p->job || p->removed || (!p->reattach && p->agent == ac) ||
		    (p->state != PROC_RUNNING && p->state != PROC_EXITED)) {
			pthread_mutex_unlock(&p->lock);
			continue;
		}
		j = find_job(jobs, p->job);
		old = TAKE_PTR(p->agent);
		p->reattach = false;
		if (j) {
			p->agent = agent_ref(ac);
			p->stdin_closed = p->stdin_closed || jget_bool(j, "stdin_closed");
			if (p->state == PROC_RUNNING && !jget_bool(j, "running")) {
				p->state = PROC_EXITED;
				p->exit_code = (int)jget_int(j, "exit_code", -1);
				p->signal = (int)jget_int(j, "signal", 0);
				p->left_running = jget_bool(j, "left_running");
				p->duration_ms = (double)jget_int(j, "duration_ms", 0);
				unpin = true;
			} else if (p->state == PROC_RUNNING) {
				wait = true;
				pin = !p->conn.s; /* (a re-adopted one: not pinned yet) */
			}
			if (p->writer && p->writer->held) {
				struct writer *w = p->writer;

				if (send_in(p, w->held) < 0)
					pc.writer = w; /* failed below, alone */
				pc.err = -EIO;
			}
			for (int k = 0; k < 2; k++)
				kick[k] = p->out[k].readers != NULL;
		} else {
			set_lost(p, "the guest no longer had it when the daemon took it over");
			unpin = true;
			take_waiters(p, -EIO, &pc);
		}
		pthread_mutex_unlock(&p->lock);
		agent_unref(old);
		run_failed(&pc);
		for (int k = 0; k < 2; k++)
			if (kick[k])
				out_call(p, k + 1);
		if (wait) {
			json_object *wreq = json_object_new_object();

			if (pin)
				pin_running(p, ac);
			json_object_object_add(wreq, "op", json_object_new_string("wait"));
			json_object_object_add(wreq, "job", json_object_new_uint64(p->job));
			if (agent_call_async(ac, wreq, NULL, 0, on_exit_reply, proc_ref(p)) < 0) {
				pthread_mutex_lock(&p->lock);
				set_lost(p, "the guest connection ended");
				pthread_mutex_unlock(&p->lock);
				proc_unpin(p);
				proc_unref(p);
			}
			json_object_put(wreq);
		}
		if (unpin)
			proc_unpin(p);
	}
	for (size_t i = 0; i < n; i++)
		proc_unref(v[i]);
	free(v);
}

/* A sandbox with no guest any more (stopped, failed): what waited to be reattached is lost. */
void sandbox_procs_settle(struct sandbox *s)
{
	size_t n;
	struct proc **v;
	enum sandbox_state st;

	pthread_mutex_lock(&s->e->lock);
	st = s->state;
	pthread_mutex_unlock(&s->e->lock);
	if (st == SB_READY || st == SB_PAUSED || st == SB_HIBERNATED || st == SB_CREATING)
		return;
	v = procs_snapshot(s, &n);
	for (size_t i = 0; i < n; i++) {
		struct proc *p = v[i];
		struct pending_cbs pc = { 0 };

		pthread_mutex_lock(&p->lock);
		if (p->reattach) {
			p->reattach = false;
			set_lost(p, "the guest connection ended (the sandbox was stopped, or its VMM died)");
			take_waiters(p, -EIO, &pc);
		}
		pthread_mutex_unlock(&p->lock);
		run_failed(&pc);
		proc_unref(p);
	}
	free(v);
}
