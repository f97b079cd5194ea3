/*
 * Open files. Generated files are rendered once at open into the handle and
 * served with direct_io. `wait` and `exec` reads park their request and are
 * answered from an engine thread when the outcome is known, so no FUSE worker
 * is held while a guest boots or a command runs; both honour interrupts.
 */
#include <fcntl.h>
#include <poll.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "fs_internal.h"

#define WRITE_MAX (64 * 1024)

enum exec_phase { EX_IDLE = 0, EX_RUNNING, EX_DONE };

struct fh {
	struct open_handle oh; /* first: the list entry */
	struct fs *fs;
	enum ftype type;
	struct node node;
	char *buf; /* rendered content, or bytes written */
	size_t len;
	int fd;	   /* console */
	int accmode, oflags;
	bool partial; /* config: bytes written that do not form a whole JSON value yet */

	pthread_mutex_t lock;
	int refs; /* the open file, and an exec in flight; protected by lock */
	/* wait */
	fuse_req_t wait_req;  /* protected by lock */
	uint64_t wait_token;  /* protected by lock */
	size_t wait_size;
	bool interrupted;     /* protected by lock */
	/* exec */
	enum exec_phase phase; /* protected by lock */
	bool json_mode;
	struct exec_result res;
	int exec_err;
	char *out; /* the response: stdout then stderr, or JSON */
	size_t out_len, rpos;
	bool failed_exit;      /* plain mode: non-zero exit -> EIO at the end */
	fuse_req_t read_req;   /* protected by lock */
	size_t read_size;
	fuse_req_t flush_req;  /* protected by lock */
	fuse_req_t early_intr; /* interrupted before it was parked; protected by lock */
	/* procs/ID/stdout, stderr: a parked read */
	fuse_req_t pread_req;  /* protected by lock */
	uint64_t pread_token;  /* protected by lock */
	bool pstarted;	       /* cmd: the process was started through this handle */
	bool pwritten;	       /* stdin: written to (a close then sends EOF) */
	/* status: the sandbox's status_seq when rendered */
	uint64_t seq;
	/*
	 * Dockerfile: the content as this handle has it (buf, len); dirty: written
	 * since the last apply; emptied: opened with O_TRUNC, nothing applied yet
	 * (the last close removes it: an earlier close may be a dup's, as a
	 * shell's redirection of a builtin makes, with the writes still to come)
	 */
	bool dirty, emptied, append;
	/* build.log: a read at the end waits for the bake to write more */
	struct follower fol;
};

const char fs_readme[] =
	"emberfs: microVM sandboxes as files. See docs/interface.md for the whole contract.\n"
	"\n"
	"  templates/T/config          JSON: kernel, initrd, rootfs, cmdline, vcpus, mem_mib, backend, accel\n"
	"  templates/T/identity        digest over everything that changes start-up\n"
	"  templates/T/status          JSON: state (new|baking|ready|failed|stale), bake timings, error\n"
	"  templates/T/ctl             write: bake | rebake\n"
	"  templates/T/Dockerfile      what the template's root disk is built from (written whole, at close)\n"
	"  templates/T/build.log       the last bake's log; follows a bake that runs\n"
	"  templates/T/create          write {\"name\": N, \"timeout\", \"metadata\", \"env\", \"egress\"}: mkdir N with its settings\n"
	"  templates/T/sandboxes/NAME  mkdir = create (returns at once), rmdir or rm -rf = destroy\n"
	"    status   JSON: state, path (warm|restore|cold|fork), identity, timings, error; poll wakes on change\n"
	"    timings  one \"phase milliseconds\" line per phase\n"
	"    wait     read blocks until ready; fails with EIO if the create failed\n"
	"    exec     write a command, read its output on the same open file\n"
	"    console  the guest's serial log\n"
	"    ctl      pause | resume | hibernate | stop | start | fork NEW | template NEW\n"
	"             | checkpoint C | rollback C | fork NEW from C\n"
	"    timeout  seconds [destroy|hibernate]; reads the deadline and what is left (JSON)\n"
	"    metadata JSON object of strings; listed in sandboxes-by/KEY/VALUE/\n"
	"    env      KEY=VALUE lines (or JSON): every later exec and procs/ process has them\n"
	"    egress   outbound policy (with --net): \"default allow|deny\", then \"allow|deny CIDR|NAME|any [tcp|udp] [port N]\" lines\n"
	"    usage    JSON: CPU, memory, disk, network; a sleeping sandbox answers its last guest sample\n"
	"    root     symlink to live/NAME\n"
	"    procs/ID/  mkdir = process slot: cmd (write to start), stdin, stdout, stderr (stream), status, signal\n"
	"    checkpoints/C/  saved states (ctl checkpoint C): status; rmdir = free it\n"
	"    host     cluster mode: the host it runs on (files of a sandbox on another host are forwarded there)\n"
	"  live/NAME/  the running guest's own filesystem\n"
	"  sandboxes-by/KEY/VALUE/NAME  links to the sandboxes whose metadata has KEY = VALUE\n"
	"  events      JSON lines, one per lifecycle event (follows like tail -f)\n"
	"  hosts/H/status  cluster mode: each host's capacity, load, warm slots by identity, health (JSON)\n";

static struct fh *fh_of(struct fuse_file_info *fi)
{
	return (struct fh *)(uintptr_t)fi->fh;
}

static void fh_free(struct fh *h)
{
	node_put(&h->node);
	if (h->fd >= 0)
		close(h->fd);
	exec_result_clear(&h->res);
	free(h->buf);
	free(h->out);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

static struct fh *fh_ref(struct fh *h)
{
	pthread_mutex_lock(&h->lock);
	h->refs++;
	pthread_mutex_unlock(&h->lock);
	return h;
}

static void fh_unref(struct fh *h)
{
	int n;

	pthread_mutex_lock(&h->lock);
	n = --h->refs;
	pthread_mutex_unlock(&h->lock);
	if (n == 0)
		fh_free(h);
}

/* The open file's reference, dropped by release (or at shutdown if none came). */
static void fh_release_open(struct open_handle *oh)
{
	fh_unref((struct fh *)oh);
}

/* A local sandbox's host file (cluster mode): this host's name. */
static char *host_line(struct cluster *c)
{
	char *t;

	return asprintf(&t, "%s\n", cluster_self(c)) < 0 ? NULL : t;
}

static int render(struct fh *h)
{
	const struct file_def *d = h->node.file;

	if (h->type == F_DOCKERFILE) {
		/* opened to replace it: starts empty (and an empty Dockerfile, if nothing is written, is none) */
		if (h->accmode != O_RDONLY && (h->oflags & O_TRUNC)) {
			h->emptied = true;
			return 0;
		}
		h->buf = template_render_dockerfile(h->node.t);
		h->len = h->buf ? strlen(h->buf) : 0;
		return h->buf ? 0 : -ENOMEM;
	}
	if (h->accmode == O_WRONLY)
		return 0; /* written whole: nothing to render */
	if (d->idx == IDX_VERSION && h->node.kind == K_STATIC_FILE)
		h->buf = strdup("emberfs " EMBERFS_VERSION "\n");
	else if (d->idx == IDX_METRICS && h->node.kind == K_STATIC_FILE)
		h->buf = engine_render_metrics(h->fs->e);
	else if (d->idx == IDX_CACHE_STATUS && h->node.kind == K_STATIC_FILE)
		h->buf = engine_render_cache_status(h->fs->e);
	else if (h->node.kind == K_STATIC_FILE)
		h->buf = strdup(fs_readme);
	else if (h->type == F_HOST)
		h->buf = host_line(h->fs->cluster);
	else if (h->node.kind == K_HOST_FILE)
		h->buf = cluster_render_host(h->fs->cluster, h->node.host);
	else if (h->node.kind == K_CKPT_FILE)
		h->buf = checkpoint_render_status(h->node.ck);
	else if (d->render_slot)
		h->buf = d->render_slot(h->node.t, h->node.slot_id);
	else if (d->render_t)
		h->buf = d->render_t(h->node.t);
	else if (d->render_s)
		h->buf = d->render_s(h->node.s);
	else if (d->render_p)
		h->buf = d->render_p(h->node.p);
	else
		return 0;
	if (!h->buf) /* a slot claimed or recycled meanwhile, a host gone from the view */
		return d->render_slot || h->node.kind == K_HOST_FILE ? -ENOENT : -ENOMEM;
	if (h->node.s)
		h->seq = sandbox_status_seq(h->node.s);
	h->len = strlen(h->buf);
	return 0;
}

/* ---- build.log ---- */

static bool buildlog_live(struct follower *w)
{
	struct fh *h = container_of(w, struct fh, fol);

	return template_build_log_live(h->node.t, h->fd);
}

static void buildlog_done(struct follower *w)
{
	fh_unref(container_of(w, struct fh, fol)); /* the parked read's */
}

/* No log yet (never baked): an empty file. */
static int buildlog_open(struct fh *h)
{
	int fd = template_build_log_open(h->node.t);

	if (fd < 0 && fd != -ENOENT)
		return fd;
	h->fd = fd;
	h->fol.fd = fd;
	h->fol.prev = h->fol.next = &h->fol;
	h->fol.live = buildlog_live;
	h->fol.done = buildlog_done;
	return 0;
}

static void buildlog_read(fuse_req_t req, struct fh *h, size_t size, off_t off)
{
	if (h->fd < 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	fh_ref(h); /* the parked read's, dropped by buildlog_done */
	follow_read(h->fs, &h->fol, req, size, off);
}

void fh_open(struct fs *f, fuse_req_t req, struct node *n, struct fuse_file_info *fi)
{
	struct fh *h = calloc(1, sizeof(*h));
	int r = 0;

	if (!h) {
		node_put(n);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	h->node = *n;
	h->fs = f;
	h->oh.prev = h->oh.next = &h->oh;
	h->type = n->file->type;
	h->fd = -1;
	h->refs = 1;
	h->accmode = fi->flags & O_ACCMODE;
	h->oflags = fi->flags;
	pthread_mutex_init(&h->lock, NULL);
	if (h->accmode != O_RDONLY && !(n->file->mode & 0200))
		r = -EACCES;
	else if (h->accmode != O_WRONLY && !(n->file->mode & 0400))
		r = -EACCES;
	else if (h->type == F_CONSOLE)
		h->fd = open(sandbox_console_path(n->s), O_RDONLY | O_CLOEXEC); /* absent until the VMM starts */
	else if (h->type == F_BUILDLOG)
		r = buildlog_open(h);
	else
		r = render(h);
	if (r < 0) {
		fh_free(h);
		fuse_reply_err(req, -r);
		return;
	}
	/* a setting opened to replace it and closed without a write (`: > env`) is emptied at its close (fh_flush) */
	h->emptied = h->emptied || (h->type == F_SETTING && h->accmode != O_RDONLY && (h->oflags & O_TRUNC));
	fs_handle_add(f, &h->oh, fh_release_open);
	fi->fh = (uint64_t)(uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->nonseekable = h->type == F_WAIT || h->type == F_EXEC || h->type == F_POUT || h->type == F_PERR ||
			  h->type == F_PSTDIN;
	h->append = (fi->flags & O_APPEND) != 0;
	fuse_reply_open(req, fi);
}

static void reply_slice(fuse_req_t req, const char *buf, size_t len, size_t off, size_t size)
{
	if (off >= len)
		fuse_reply_buf(req, NULL, 0);
	else
		fuse_reply_buf(req, buf + off, len - off < size ? len - off : size);
}

/* ---- wait ---- */

/* Takes the parked wait request, if any, with the reference it holds on the handle. */
static fuse_req_t wait_take(struct fh *h)
{
	fuse_req_t r;

	pthread_mutex_lock(&h->lock);
	r = TAKE_PTR(h->wait_req);
	h->wait_token = 0;
	pthread_mutex_unlock(&h->lock);
	return r;
}

static void wait_answer(struct fh *h, fuse_req_t r, int result)
{
	if (!r)
		return;
	if (result < 0)
		fuse_reply_err(r, -result);
	else
		fuse_reply_buf(r, "ready\n", h->wait_size < 6 ? h->wait_size : 6);
	fh_unref(h);
}

static void wait_done(void *arg, int result)
{
	struct fh *h = arg;

	wait_answer(h, wait_take(h), result);
}

static void wait_interrupt(fuse_req_t req, void *arg)
{
	struct fh *h = arg;
	uint64_t token;

	(void)req;
	pthread_mutex_lock(&h->lock);
	h->interrupted = true;
	token = h->wait_token;
	pthread_mutex_unlock(&h->lock);
	if (token && sandbox_wait_cancel(h->node.s, token))
		wait_answer(h, wait_take(h), -EINTR);
}

/* A parked read holds a reference: a reader killed meanwhile releases the file before we answer. */
static void wait_read(fuse_req_t req, struct fh *h, size_t size, off_t off)
{
	uint64_t token;
	bool cancel_now;

	if (off > 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	pthread_mutex_lock(&h->lock);
	if (h->wait_req) {
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, EBUSY);
		return;
	}
	h->wait_req = req;
	h->wait_size = size;
	h->refs++;
	h->interrupted = false;
	pthread_mutex_unlock(&h->lock);
	fuse_req_interrupt_func(req, wait_interrupt, h);
	token = sandbox_wait_async(h->node.s, wait_done, h); /* may answer right here */
	pthread_mutex_lock(&h->lock);
	if (h->wait_req == req)
		h->wait_token = token;
	cancel_now = h->wait_req == req && h->interrupted;
	pthread_mutex_unlock(&h->lock);
	if (cancel_now && sandbox_wait_cancel(h->node.s, token))
		wait_answer(h, wait_take(h), -EINTR);
}

/* ---- exec ---- */

static int build_output(struct fh *h)
{
	struct exec_result *r = &h->res;

	if (h->json_mode) {
		char *o = NULL, *e = NULL;
		int n;

		o = base64_encode(r->out ? r->out : (uint8_t *)"", r->out_len);
		e = base64_encode(r->err ? r->err : (uint8_t *)"", r->err_len);
		n = o && e ? asprintf(&h->out,
				      "{\"exit_code\":%d,\"signal\":%d,\"truncated\":%s,\"timed_out\":%s,"
				      "\"duration_ms\":%.3f,\"stdout\":\"%s\",\"stderr\":\"%s\"}\n",
				      r->exit_code, r->signal, r->truncated ? "true" : "false",
				      r->timed_out ? "true" : "false", r->duration_ms, o, e)
				: -1;
		free(o);
		free(e);
		if (n < 0)
			return -ENOMEM;
		h->out_len = (size_t)n;
		return 0;
	}
	h->out = malloc(r->out_len + r->err_len + 1);
	if (!h->out)
		return -ENOMEM;
	if (r->out_len)
		memcpy(h->out, r->out, r->out_len);
	if (r->err_len)
		memcpy(h->out + r->out_len, r->err, r->err_len);
	h->out_len = r->out_len + r->err_len;
	h->failed_exit = r->exit_code != 0 || r->signal != 0;
	return 0;
}

/*
 * Reads return the response from the handle's own cursor (writes moved the
 * file offset). A command that could not run fails the read with its errno;
 * in JSON mode a guest's reason is the response instead ({"errno", "error"}).
 */
static void exec_serve(fuse_req_t req, struct fh *h, size_t size)
{
	if (h->exec_err) {
		fuse_reply_err(req, h->exec_err);
		return;
	}
	if (h->rpos >= h->out_len) {
		if (h->failed_exit)
			fuse_reply_err(req, EIO);
		else
			fuse_reply_buf(req, NULL, 0);
		return;
	}
	size = h->out_len - h->rpos < size ? h->out_len - h->rpos : size;
	fuse_reply_buf(req, h->out + h->rpos, size);
	h->rpos += size;
}

/* JSON mode: why the command did not run, as the response. */
static int error_output(struct fh *h, int err)
{
	json_object *o = json_object_new_object();
	int n;

	if (!o)
		return -ENOMEM;
	json_object_object_add(o, "errno", json_object_new_string(strerrorname_np(err) ? strerrorname_np(err) : "EIO"));
	json_object_object_add(o, "error", json_object_new_string(h->res.error));
	n = asprintf(&h->out, "%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	if (n < 0)
		return -ENOMEM;
	h->out_len = (size_t)n;
	return 0;
}

static void exec_done(void *arg, int result)
{
	struct fh *h = arg;
	fuse_req_t rd, fl;
	size_t size;

	pthread_mutex_lock(&h->lock);
	h->exec_err = result < 0 ? -result : 0;
	if (h->exec_err && h->json_mode && h->res.error && error_output(h, h->exec_err) == 0)
		h->exec_err = 0;
	else if (!h->exec_err && build_output(h) < 0)
		h->exec_err = ENOMEM;
	if (h->exec_err)
		log_debug("exec in %s failed: %s", sandbox_name(h->node.s), strerror(h->exec_err));
	h->phase = EX_DONE;
	rd = TAKE_PTR(h->read_req);
	fl = TAKE_PTR(h->flush_req);
	size = h->read_size;
	if (rd)
		exec_serve(rd, h, size);
	pthread_mutex_unlock(&h->lock);
	if (fl)
		fuse_reply_err(fl, 0);
	fh_unref(h); /* the exec's reference */
}

/*
 * A read or close waiting for a command gives up on a signal; the command
 * keeps running and a later read on this handle gets its output. The
 * interrupt can come before the request is parked (it is registered first):
 * then it is remembered, and parking answers it at once.
 */
static void exec_interrupt(fuse_req_t req, void *arg)
{
	struct fh *h = arg;
	fuse_req_t r = NULL;

	pthread_mutex_lock(&h->lock);
	if (h->read_req == req)
		r = TAKE_PTR(h->read_req);
	else if (h->flush_req == req)
		r = TAKE_PTR(h->flush_req);
	else
		h->early_intr = req;
	pthread_mutex_unlock(&h->lock);
	if (r)
		fuse_reply_err(r, EINTR);
}

/* Parks req in *slot unless it was interrupted already. h->lock held; false: answer EINTR. */
static bool exec_park(struct fh *h, fuse_req_t *slot, fuse_req_t req)
{
	bool interrupted = h->early_intr == req;

	h->early_intr = NULL;
	if (!interrupted)
		*slot = req;
	return !interrupted;
}

/* Starts the command written so far. h->lock held. */
static int exec_start(struct fh *h)
{
	size_t n = h->len;
	int r;

	while (n > 0 && (h->buf[n - 1] == '\n' || h->buf[n - 1] == '\r'))
		n--;
	if (n == 0)
		return -EINVAL;
	h->buf[n] = '\0';
	h->json_mode = h->buf[0] == '{';
	h->refs++;
	r = sandbox_exec_async(h->node.s, h->buf, n, &h->res, exec_done, h);
	if (r == 0)
		h->phase = EX_RUNNING;
	else
		h->refs--;
	return r;
}

static void exec_read(fuse_req_t req, struct fh *h, size_t size)
{
	int r = 0;

	/* before the request is published: once it is, exec_done may answer (and free) it */
	fuse_req_interrupt_func(req, exec_interrupt, h);
	pthread_mutex_lock(&h->lock);
	if (h->phase == EX_IDLE)
		r = exec_start(h);
	if (r == 0 && h->phase == EX_RUNNING && h->read_req)
		r = -EBUSY;
	if (r < 0) {
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, -r);
		return;
	}
	if (h->phase == EX_DONE) {
		exec_serve(req, h, size);
		pthread_mutex_unlock(&h->lock);
		return;
	}
	h->read_size = size;
	if (!exec_park(h, &h->read_req, req)) {
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, EINTR);
		return;
	}
	pthread_mutex_unlock(&h->lock);
}

static int append(struct fh *h, const char *buf, size_t size);

/* ---- procs/ID ---- */

static fuse_req_t pread_take(struct fh *h)
{
	fuse_req_t r;

	pthread_mutex_lock(&h->lock);
	r = TAKE_PTR(h->pread_req);
	h->pread_token = 0;
	pthread_mutex_unlock(&h->lock);
	return r;
}

static void pread_done(void *arg, int result, const uint8_t *data, size_t len)
{
	struct fh *h = arg;
	fuse_req_t r = pread_take(h);

	if (r && result < 0)
		fuse_reply_err(r, -result);
	else if (r)
		fuse_reply_buf(r, (const char *)data, len);
	fh_unref(h); /* the parked read's */
}

static void pread_interrupt(fuse_req_t req, void *arg)
{
	struct fh *h = arg;
	uint64_t token;

	(void)req;
	pthread_mutex_lock(&h->lock);
	token = h->pread_token;
	pthread_mutex_unlock(&h->lock);
	/* a cancelled read loses nothing: what arrives stays for the next one */
	if (token && proc_read_cancel(h->node.p, token)) {
		fuse_req_t r = pread_take(h);

		if (r)
			fuse_reply_err(r, EINTR);
		fh_unref(h);
	}
}

/* stdout and stderr stream: a read parks until output arrives, 0 bytes at the end. */
static void pout_read(fuse_req_t req, struct fh *h, size_t size)
{
	uint64_t token = 0;
	bool parked, interrupted;
	int r;

	fuse_req_interrupt_func(req, pread_interrupt, h);
	pthread_mutex_lock(&h->lock);
	if (h->pread_req) {
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, EBUSY);
		return;
	}
	h->pread_req = req;
	h->refs++;
	pthread_mutex_unlock(&h->lock);
	r = proc_read(h->node.p, h->type == F_POUT ? 1 : 2, size, pread_done, h, &token);
	if (r < 0) {
		fuse_req_t q = pread_take(h);

		if (q)
			fuse_reply_err(q, r == -EAGAIN ? EAGAIN : -r);
		fh_unref(h);
		return;
	}
	pthread_mutex_lock(&h->lock);
	parked = h->pread_req == req; /* else it was answered already, and req is gone */
	if (parked)
		h->pread_token = token;
	interrupted = parked && fuse_req_interrupted(req);
	pthread_mutex_unlock(&h->lock);
	if (interrupted)
		pread_interrupt(req, h);
}

struct pwrite_ctx {
	fuse_req_t req;
};

static void pwrite_done(void *arg, ssize_t result)
{
	struct pwrite_ctx *c = arg;

	if (c->req && result < 0)
		fuse_reply_err(c->req, (int)-result);
	else if (c->req)
		fuse_reply_write(c->req, (size_t)result);
	free(c);
}

/* stdin: answered once the bytes are in the process's pipe (back-pressure). */
static void pin_write(fuse_req_t req, struct fh *h, const char *buf, size_t size)
{
	struct pwrite_ctx *c = calloc(1, sizeof(*c));
	int r;

	if (!c) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	c->req = req;
	pthread_mutex_lock(&h->lock);
	h->pwritten = true;
	pthread_mutex_unlock(&h->lock);
	r = proc_write(h->node.p, buf, size, false, pwrite_done, c);
	if (r < 0) {
		free(c);
		fuse_reply_err(req, -r);
	}
}

static void eof_done(void *arg, ssize_t result)
{
	(void)arg;
	(void)result;
}

static int pcmd_start(struct fh *h)
{
	int r;

	if (h->len == 0)
		return 0;
	r = proc_start(h->node.p, h->buf, h->len);
	h->len = 0;
	if (r == 0)
		h->pstarted = true;
	return r;
}

/* A whole command (a line ending in a newline, or a complete JSON object) starts at once; else at close. */
static int pcmd_write(struct fh *h, const char *buf, size_t size)
{
	json_tokener *tok;
	json_object *o;
	size_t i = 0;
	int r;

	if (h->pstarted)
		return -EBUSY;
	if ((r = append(h, buf, size)) < 0)
		return r;
	while (i < h->len && (h->buf[i] == ' ' || h->buf[i] == '\t' || h->buf[i] == '\n'))
		i++;
	if (i < h->len && h->buf[i] == '{') {
		tok = json_tokener_new();
		o = tok ? json_tokener_parse_ex(tok, h->buf, (int)h->len) : NULL;
		r = tok && json_tokener_get_error(tok) == json_tokener_continue ? 1 : 0;
		json_object_put(o);
		if (tok)
			json_tokener_free(tok);
		return r ? 0 : pcmd_start(h);
	}
	return h->len && h->buf[h->len - 1] == '\n' ? pcmd_start(h) : 0;
}

/* ---- poll ---- */

/*
 * A sandbox's status is readable (POLLIN, POLLPRI) once its state changed
 * since this handle rendered it; reading it again from offset 0 renders the
 * new one. Everything else is always readable.
 */
void fh_poll(fuse_req_t req, struct fuse_file_info *fi, struct fuse_pollhandle *ph)
{
	struct fh *h = fh_of(fi);
	unsigned ev = POLLIN | POLLRDNORM | (h->accmode != O_RDONLY ? POLLOUT | POLLWRNORM : 0);

	if (h->type == F_RENDER && h->node.kind == K_SB_FILE && h->node.s) {
		if (sandbox_status_seq(h->node.s) != h->seq) {
			ev = POLLIN | POLLRDNORM | POLLPRI;
		} else {
			ev = 0;
			if (ph) {
				status_poll_add(h->fs, sandbox_id(h->node.s), TAKE_PTR(ph));
				/* a change between the check and the registration notifies nothing: check again */
				if (sandbox_status_seq(h->node.s) != h->seq)
					ev = POLLIN | POLLRDNORM | POLLPRI;
			}
		}
	}
	if (ph)
		fuse_pollhandle_destroy(ph);
	fuse_reply_poll(req, ev);
}

/* ---- dispatch ---- */

void fh_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fh *h = fh_ref(fh_of(fi)); /* a release may arrive while this runs */
	char *buf;
	ssize_t n;

	switch (h->type) {
	case F_WAIT:
		wait_read(req, h, size, off);
		break;
	case F_EXEC:
		exec_read(req, h, size);
		break;
	case F_POUT:
	case F_PERR:
		pout_read(req, h, size);
		break;
	case F_BUILDLOG:
		buildlog_read(req, h, size, off);
		break;
	case F_CONSOLE:
		if (h->fd < 0) {
			fuse_reply_buf(req, NULL, 0);
			break;
		}
		buf = malloc(size);
		n = buf ? pread(h->fd, buf, size, off) : -1;
		if (n < 0)
			fuse_reply_err(req, buf ? errno : ENOMEM);
		else
			fuse_reply_buf(req, buf, (size_t)n);
		free(buf);
		break;
	default:
		pthread_mutex_lock(&h->lock); /* a config write on the same handle replaces buf */
		if (off == 0 && h->type == F_RENDER && h->node.kind == K_SB_FILE && h->accmode != O_WRONLY &&
		    sandbox_status_seq(h->node.s) != h->seq) {
			/* re-read after a change (poll): the new rendering */
			free(h->buf);
			h->buf = NULL;
			h->len = 0;
			render(h);
		}
		if (h->accmode == O_WRONLY)
			fuse_reply_err(req, EBADF);
		else
			reply_slice(req, h->buf, h->len, (size_t)off, size);
		pthread_mutex_unlock(&h->lock);
	}
	fh_unref(h);
}

static int append(struct fh *h, const char *buf, size_t size)
{
	char *nb;

	if (h->len + size > WRITE_MAX)
		return -EFBIG;
	nb = realloc(h->buf, h->len + size + 1);
	if (!nb)
		return -ENOMEM;
	h->buf = nb;
	memcpy(h->buf + h->len, buf, size);
	h->len += size;
	h->buf[h->len] = '\0';
	return 0;
}

/* Dockerfile: bytes go where they are written (at the end with O_APPEND); applied at close. */
static int dockerfile_place(struct fh *h, const char *buf, size_t size, off_t off)
{
	size_t at = h->append ? h->len : (size_t)off, end = at + size;
	char *nb;

	if (off < 0 || end > TEMPLATE_DOCKERFILE_MAX)
		return -EFBIG;
	if (end > h->len) {
		if (!(nb = realloc(h->buf, end + 1)))
			return -ENOMEM;
		h->buf = nb;
		if (at > h->len)
			memset(h->buf + h->len, 0, at - h->len); /* a hole reads as NULs, which do not parse */
		h->len = end;
		h->buf[end] = '\0';
	}
	memcpy(h->buf + at, buf, size);
	h->dirty = true;
	return 0;
}

/* truncate(2) of a Dockerfile no handle has open: applied at once (growing it adds NULs, which do not parse). */
int dockerfile_truncate(struct template *t, off_t size)
{
	_cleanup_free_ char *text = template_render_dockerfile(t);
	size_t len = text ? strlen(text) : 0;

	if (!text)
		return -ENOMEM;
	if (size < 0 || (size_t)size > len)
		return size < 0 || (size_t)size > TEMPLATE_DOCKERFILE_MAX ? -EFBIG : -EINVAL;
	return (size_t)size == len ? 0 : template_write_dockerfile(t, text, (size_t)size);
}

int fh_truncate(struct fuse_file_info *fi, off_t size)
{
	struct fh *h = fh_of(fi);
	int r = 0;

	if (h->type != F_DOCKERFILE)
		return 0; /* written whole: truncation means nothing */
	pthread_mutex_lock(&h->lock);
	if (size < 0 || (size_t)size > TEMPLATE_DOCKERFILE_MAX)
		r = -EFBIG;
	else if ((size_t)size < h->len)
		h->len = (size_t)size, h->buf[size] = '\0', h->dirty = true;
	else if ((size_t)size > h->len)
		r = dockerfile_place(h, "", 0, size);
	pthread_mutex_unlock(&h->lock);
	return r;
}

/*
 * config and the sandbox settings (F_SETTING) take what one open file wrote
 * from offset 0 as the whole new value: a JSON value is applied once the
 * bytes written so far form a complete one (a close with an incomplete one
 * fails with EINVAL); a setting in its line form is applied at every write,
 * the text written so far being the whole value.
 */
static bool json_complete(const char *buf, size_t len)
{
	json_tokener *tok = json_tokener_new();
	json_object *o = tok ? json_tokener_parse_ex(tok, buf, (int)len) : NULL;
	bool complete = !tok || json_tokener_get_error(tok) != json_tokener_continue;

	json_object_put(o);
	json_tokener_free(tok);
	return complete;
}

/* The template's create file: placed by the cluster in cluster mode (the sandbox may run elsewhere). */
static int create_write(struct fh *h, uid_t uid, gid_t gid)
{
	struct sandbox *s = NULL;
	int r;

	if (!h->fs->cluster)
		return template_write_create(h->node.t, h->buf, h->len);
	r = cluster_create(h->fs->cluster, h->node.t, NULL, h->buf, h->len, uid, gid, &s);
	sandbox_unref(s);
	return r;
}

static int whole_write(struct fh *h, const char *buf, size_t size, off_t off, uid_t uid, gid_t gid)
{
	const char *p;
	int r;

	if (off == 0) {
		free(h->buf); /* an O_RDWR handle held the rendered text, or an earlier value was written */
		h->buf = NULL;
		h->len = 0;
	}
	if ((r = append(h, buf, size)) < 0)
		return r;
	h->emptied = false;
	for (p = h->buf; p < h->buf + h->len && strchr(" \t\r\n", *p); p++)
		;
	h->partial = false;
	if (h->type == F_CONFIG || h->type == F_CREATE || (p < h->buf + h->len && *p == '{')) {
		h->partial = !json_complete(h->buf, h->len);
		if (h->partial)
			return 0;
	}
	if (h->type == F_CONFIG || h->type == F_CREATE) {
		r = h->type == F_CONFIG ? template_write_config(h->node.t, h->buf, h->len) : create_write(h, uid, gid);
		h->len = 0;
		return r;
	}
	return h->node.file->write_s(h->node.s, h->buf, h->len);
}

void fh_write(fuse_req_t req, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct fh *h = fh_ref(fh_of(fi));
	int r;

	switch (h->type) {
	case F_CTL:
		r = template_ctl(h->node.t, buf, size);
		break;
	case F_POOL:
		r = template_pool_write(h->node.t, buf, size);
		break;
	case F_SBCTL:
		/* cluster mode: a fork's new name is reserved cluster-wide */
		r = h->fs->cluster ? cluster_ctl(h->fs->cluster, h->node.s, buf, size) : sandbox_ctl(h->node.s, buf, size);
		break;
	case F_CONFIG:
	case F_SETTING:
	case F_CREATE:
		pthread_mutex_lock(&h->lock);
		r = whole_write(h, buf, size, off, fuse_req_ctx(req)->uid, fuse_req_ctx(req)->gid);
		pthread_mutex_unlock(&h->lock);
		break;
	case F_DOCKERFILE:
		pthread_mutex_lock(&h->lock);
		r = dockerfile_place(h, buf, size, off);
		pthread_mutex_unlock(&h->lock);
		break;
	case F_EXEC:
		pthread_mutex_lock(&h->lock);
		r = h->phase == EX_IDLE ? append(h, buf, size) : -EBUSY;
		pthread_mutex_unlock(&h->lock);
		break;
	case F_PCMD:
		pthread_mutex_lock(&h->lock);
		r = pcmd_write(h, buf, size);
		pthread_mutex_unlock(&h->lock);
		break;
	case F_PSIGNAL:
		r = proc_signal(h->node.p, buf, size);
		break;
	case F_PSTDIN:
		pin_write(req, h, buf, size);
		fh_unref(h);
		return;
	default:
		r = -EACCES;
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_write(req, size);
	fh_unref(h);
}

/* Closing a write-only exec handle runs the command written and waits for it. */
void fh_flush(fuse_req_t req, struct fuse_file_info *fi)
{
	struct fh *h = fh_of(fi);
	int r = 0;

	if ((h->type == F_CONFIG || h->type == F_SETTING || h->type == F_CREATE) && h->partial) {
		h->partial = false;
		h->len = 0;
		fuse_reply_err(req, EINVAL); /* an incomplete JSON value was written */
		return;
	}
	if (h->type == F_PCMD) {
		pthread_mutex_lock(&h->lock);
		r = pcmd_start(h); /* a command without a final newline starts at close */
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, -r);
		return;
	}
	if (h->type == F_DOCKERFILE) {
		/* every close of a handle that wrote applies what it has (the error goes to that close) */
		pthread_mutex_lock(&h->lock);
		if (h->dirty) {
			h->dirty = h->emptied = false;
			r = template_write_dockerfile(h->node.t, h->buf ? h->buf : "", h->len);
		}
		pthread_mutex_unlock(&h->lock);
		fuse_reply_err(req, -r);
		return;
	}
	if (h->type == F_SETTING) {
		/* opened to replace it and nothing written (`: > env`): emptied by the close itself, so a read after it sees it */
		bool emptied;

		pthread_mutex_lock(&h->lock);
		emptied = h->emptied;
		h->emptied = false;
		pthread_mutex_unlock(&h->lock);
		if (emptied)
			r = h->node.file->write_s(h->node.s, "", 0);
		fuse_reply_err(req, -r);
		return;
	}
	if (h->type != F_EXEC) {
		fuse_reply_err(req, 0);
		return;
	}
	/* before the request is published: once it is, exec_done may answer (and free) it */
	fuse_req_interrupt_func(req, exec_interrupt, h);
	pthread_mutex_lock(&h->lock);
	/*
	 * Only a write-only handle runs its command on close (`printf cmd > exec`),
	 * and that close waits for it. A read-write handle runs it on the first
	 * read: every close of a duplicate (a fork's close_fds, dup2) flushes, and
	 * must not start or wait for anything.
	 */
	if (h->accmode == O_WRONLY && h->phase == EX_IDLE && h->len > 0 && (r = exec_start(h)) == 0 &&
	    !h->flush_req)
		r = exec_park(h, &h->flush_req, req) ? 1 : -EINTR;
	pthread_mutex_unlock(&h->lock);
	if (r <= 0)
		fuse_reply_err(req, -r);
}

void fh_release(fuse_req_t req, struct fuse_file_info *fi)
{
	struct fh *h = fh_of(fi);
	uint64_t token;

	pthread_mutex_lock(&h->lock);
	token = h->wait_token;
	pthread_mutex_unlock(&h->lock);
	if (token && sandbox_wait_cancel(h->node.s, token))
		wait_answer(h, wait_take(h), -EINTR);
	if (h->type == F_DOCKERFILE && h->emptied && template_write_dockerfile(h->node.t, "", 0) < 0)
		log_debug("emptying a Dockerfile: refused (the template's status says why)");
	if (h->type == F_SETTING && h->emptied && h->node.file->write_s(h->node.s, "", 0) < 0) /* no flush came */
		log_debug("emptying %s of sandbox %s: refused", h->node.file->name, sandbox_name(h->node.s));
	/* closing a stdin opened for writing sends EOF */
	if (h->type == F_PSTDIN && (h->pwritten || h->accmode != O_RDONLY))
		proc_write(h->node.p, NULL, 0, true, eof_done, NULL);
	/* An exec still running keeps the handle until its completion arrives. */
	fs_handle_del(h->fs, &h->oh);
	fh_unref(h);
	fuse_reply_err(req, 0);
}
