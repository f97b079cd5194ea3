/*
 * emberfs-agent: what its modules share (see main.c for the map).
 */
#ifndef EMBERFS_AGENT_H
#define EMBERFS_AGENT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <grp.h>
#include <pwd.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <linux/capability.h>
#include <linux/random.h>

#include <json-c/json.h>

#include "transport.h"

#define AGENT_PROTO_VERSION	3
#define AGENT_DEFAULT_PORT	"org.emberfs.agent"
#define AGENT_MODULES_LIST	"/etc/emberfs/modules"
#define AGENT_MODULES_DIR	"/lib/modules/"
#define AGENT_NEWROOT		"/newroot"

#define DEVICE_WAIT_MS		3000
#define LINE_MAX_BYTES		(1u << 20)	/* host->guest line, without '\n' */
#define STREAM_CAP		(16u << 20)	/* kept output per stream */
#define READ_CHUNK		(64u << 10)
#define READ_BUDGET		(1u << 20)	/* per fd per loop turn, for fairness */
#define CHILD_PIPE_SIZE		(1 << 20)
#define MAX_JOBS		64		/* exec */
#define MAX_SPAWN		256		/* spawned jobs per connection */
#define JOB_SLOTS		(MAX_JOBS + MAX_SPAWN)
#define MAX_WAITS		8		/* deferred "wait"s per job */
#define SPAWN_BUF_HIGH		(256u << 10)	/* a stream's pipe is not read above */
#define SPAWN_IN_TOTAL		(32u << 20)	/* pending "in" bytes, all jobs */
#define BIN_MAX			(1u << 20)	/* payload of one message */
#define OUTQ_HIGH		(4u << 20)	/* no new requests while this is queued */
#define MAX_FH			1024
#define AGENT_NOFILE		8192		/* handles, pipes and the rest */
#define READDIR_MAX		1024
#define PATH_BYTES_MAX		65535	/* longer than PATH_MAX: see at_resolve */
#define TIMEOUT_GRACE_MS	200
#define PORT_RECHECK_MS		1	/* no host: poll the port again after */
#define PORT_RECHECK_ASYNC_MS	20	/* the same once SIGIO reports connects */
#define ENTROPY_MIN		16
#define MACHINE_ID_RUN		"/run/machine-id"	/* where /etc/machine-id points */
#define ENTROPY_MAX		512

#define JSON_FLAGS	(JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

#define _cleanup_(f)	__attribute__((cleanup(f)))
#define _cleanup_free_	_cleanup_(freep)
#define _cleanup_close_	_cleanup_(closep)
#define _cleanup_json_	_cleanup_(json_putp)

#define MIN(a, b)	((a) < (b) ? (a) : (b))

static inline void freep(void *p)
{
	free(*(void **)p);
}

static inline void closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}

static inline void json_putp(struct json_object **o)
{
	json_object_put(*o);
}

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

/* A NULL-terminated vector of malloc'd strings, as execve() wants them. */
struct strv {
	char **v;
	size_t n;
};

/* ------------------------------------------------------------------ */
/* Agent state                                                          */

struct stream {
	int fd;
	struct buf buf;
	bool out_pending;		/* spawn: a deferred "out" */
	uint64_t out_id;
	size_t out_max;
};

/* A watched file (see "Watching the files the host has open"). */
struct watch {
	int wd;			/* -1: a free entry */
	uint64_t dev, ino;
	uint64_t chg;
	unsigned refs;		/* open handles of that file */
	bool dirty;		/* changed since the last push */
};
/* The host user a file op acts for (fileops.c). */
#define CRED_GROUPS_MAX	256

struct cred {
	uid_t uid;
	gid_t gid;
	size_t ngroups;
	gid_t groups[CRED_GROUPS_MAX];
};

/*
 * A process: an exec (id is its request's, replied to and freed at exit) or
 * a spawned one (id is its job handle, freed by release or hangup).
 */
struct job {
	uint64_t id;
	unsigned int gen;		/* connection that asked */
	bool spawned;
	pid_t pid;
	int status;
	bool exited;
	bool timed_out;
	bool truncated;
	struct stream out[2];		/* stdout, stderr */
	int in_fd;
	unsigned char *in_data;
	size_t in_len;
	size_t in_off;
	uint64_t start_ms;
	uint64_t deadline_ms;		/* 0: none */
	uint64_t grace_ms;		/* after a timeout kill */
	/* spawn: in_data holds what a deferred "in" still has to write */
	uint64_t end_ms;		/* when reaped */
	uint64_t start_unix_ms;
	bool in_pending;
	bool in_eof;
	uint64_t in_id;
	size_t in_total;
	uint64_t waits[MAX_WAITS];	/* ids of deferred "wait"s */
	size_t n_waits;
};

struct agent;
struct request;

/* One op of the protocol. */
struct agent_op {
	const char *name;
	/* 0: reply now with @reply; 1: replied or replies later; <0: -errno */
	int (*fn)(struct agent *a, struct request *rq, struct json_object *reply);
	bool bin;		/* takes a payload */
	bool cred;		/* a file op: runs as its "cred" */
};

/*
 * What the framing and the dispatch call out to: the ops they serve, how an
 * op runs and what a hangup releases. The agent's own run its ops; a fuzzer
 * supplies one that answers without running them.
 */
struct agent_ops {
	const struct agent_op *table;
	size_t n_table;
	/* run @op for @rq: as struct agent_op's fn */
	int (*run)(struct agent *a, const struct agent_op *op, struct request *rq,
		   struct json_object *reply);
	/* the host hung up: release what was its (handles, deferred replies) */
	void (*hangup)(struct agent *a);
};

struct agent {
	const struct agent_ops *ops;
	struct transport tp;		/* the host connection */
	int sig_fd;
	/*
	 * connected is whether a host was seen on the connection since the last
	 * hangup; gen counts hangups so that replies owed to a vanished host
	 * are not delivered to the next one.
	 */
	bool connected;
	unsigned int gen;
	struct buf line;		/* partial request line */
	bool discarding;		/* rest of an oversized line */
	bool broken;			/* a bad "bin": ignore input until hangup */
	struct json_object *pend_msg;	/* a request waiting for its payload */
	size_t pend_len;		/* its "bin" */
	struct buf pend;		/* the payload so far */
	size_t skip;			/* payload bytes to drop */
	char in_chunk[READ_CHUNK];	/* read from the port, not parsed yet */
	size_t in_head;
	size_t in_len;
	struct buf out;			/* pending output, from out_head */
	size_t out_head;
	uint64_t out_written;
	size_t ready_len;		/* the ready line must survive hangups */
	struct json_tokener *tok;
	struct job *jobs[JOB_SLOTS];
	uint64_t last_job;		/* job handles are never reused */
	size_t spawn_in_bytes;		/* in_data of all spawned jobs */
	int fh[MAX_FH];			/* open handles: fh N is fh[N - 1] */
	int fh_watch[MAX_FH];		/* its entry in watch[], or -1 */
	struct watch watch[MAX_FH];	/* inotify watches of open files */
	int ino_fd;			/* inotify */
	bool watch_dirty;		/* a watched file changed since the last push */
	bool watch_warned;
	const struct cred *cred;	/* the identity of the file op running, NULL: root */
	struct strv extra_env;		/* from the last attach */
	struct strv image_env;		/* from configure (the image's, at bake) */
	char *default_cwd;		/* from configure: exec's and spawn's cwd and user */
	char *default_user;
	uint64_t session;		/* from the last attach that had one */
};

struct request {
	uint64_t id;
	unsigned int gen;
	struct json_object *msg;
	bool has_bin;
	const char *bin;		/* the payload, bin_len bytes */
	size_t bin_len;
	char error[256];
};

/* util.c: logging, clocks, buffers, string vectors, base64, JSON field access */
extern int agent_console_fd;	/* init_stdio opens it; -1: stderr */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t clock_ms(clockid_t clk);
void sleep_ms(unsigned int ms);
void buf_free(struct buf *b);
int buf_reserve(struct buf *b, size_t extra, size_t limit);
int buf_append(struct buf *b, const void *p, size_t n, size_t limit);
void strv_free(struct strv *s);
int strv_push(struct strv *s, char *str);
int env_merge(struct strv *env, const struct strv *from);
size_t b64_encoded_len(size_t n);
void b64_encode(const unsigned char *in, size_t n, char *out);
int wait_until(int (*probe)(void *ctx), void *ctx, unsigned int timeout_ms);
struct json_object *json_field(struct json_object *o, const char *key);
int json_get_u64(struct json_object *o, const char *key, uint64_t *ret);
int json_get_str(struct json_object *o, const char *key, const char **ret, size_t *ret_len);
int json_get_env(struct json_object *o, const char *key, struct strv *ret);
int json_get_b64(struct json_object *o, const char *key, unsigned char **ret, size_t *ret_len);

/* init.c: PID 1 duties */
void init_early(void);
void init_modules(void);
void cmdline_read(void);
int cmdline_get(const char *key, char *out, size_t size);
void init_root(void);
int net_lo_up(void);
int net_eth0_setup(void);
int resolv_conf_setup(const char *gateway); /* net_eth0_setup's: a guest's DNS that leaves it */

/* dispatch.c: requests: their fields, the op table lookup, replies */
/* Record why @rq failed; returns -@err for the handler to pass up. */
int request_fail(struct request *rq, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void reply_error(struct agent *a, unsigned int gen, uint64_t id, int err,
	const char *msg);
int req_path(struct request *rq, const char *key, const char **ret);
int req_u64(struct request *rq, const char *key, uint64_t min, uint64_t max, uint64_t *ret);
int req_u64_opt(struct request *rq, const char *key, uint64_t max, uint64_t def, uint64_t *ret);
int req_i64(struct request *rq, const char *key, int64_t min, int64_t max, int64_t *ret);
int req_bool_opt(struct request *rq, const char *key, bool *ret);
int json_u64s_one(struct json_object *x, uint64_t *out);
int req_id_opt(struct request *rq, const char *key, bool *has, uint64_t id[2]);
int sys_fail(struct request *rq, const char *what, const char *path);
bool all_space(const char *s, size_t n);
struct json_object *request_parse(struct agent *a, const char *line, size_t len);
void request_dispatch(struct agent *a, struct request *rq);

/* framing.c: lines, "bin" payloads and the output queue */
bool outq_pending(const struct agent *a);
bool outq_full(const struct agent *a);
char *outq_reserve(struct agent *a, size_t n);
void outq_json(struct agent *a, unsigned int gen, struct json_object *o);
int outq_bin(struct agent *a, unsigned int gen, const char *head, size_t hn,
	const void *data, size_t n);
void outq_reset(struct agent *a);
void outq_flush(struct agent *a);
void port_connected(struct agent *a);
void port_hangup(struct agent *a);
size_t lines_feed(struct agent *a, const char *p, size_t n);
void input_drain(struct agent *a);
void port_service(struct agent *a, short revents);

/* procs.c: processes: exec, spawn and its streams */
void nofile_raise(void);
int op_exec(struct agent *a, struct request *rq, struct json_object *reply);
void stream_read(struct job *j, struct stream *st);
void job_feed_stdin(struct job *j);
void signals_read(struct agent *a);
void jobs_tick(struct agent *a);
void spawn_status(struct job *j, struct json_object *o);
void spawn_feed_stdin(struct agent *a, struct job *j);
void spawn_release(struct agent *a, struct job *j, bool reply);
/*
 * A job whose host went away (a hangup, or an attach from a host new to a
 * restored snapshot): its deferred replies are dropped, the process runs on.
 */
void spawn_detach(struct agent *a, struct job *j);
void conn_release(struct agent *a);
int op_spawn(struct agent *a, struct request *rq, struct json_object *reply);
int op_out(struct agent *a, struct request *rq, struct json_object *reply);
int op_in(struct agent *a, struct request *rq, struct json_object *reply);
int op_signal(struct agent *a, struct request *rq, struct json_object *reply);
int op_status(struct agent *a, struct request *rq, struct json_object *reply);
int op_wait(struct agent *a, struct request *rq, struct json_object *reply);
int op_release(struct agent *a, struct request *rq, struct json_object *reply);

/* attach.c: the connection and the guest: ping, attach, configure, probe, sync */
int op_ping(struct agent *a, struct request *rq, struct json_object *reply);
int op_attach(struct agent *a, struct request *rq, struct json_object *reply);
int op_configure(struct agent *a, struct request *rq, struct json_object *reply);
int op_probe(struct agent *a, struct request *rq, struct json_object *reply);
int op_sync(struct agent *a, struct request *rq, struct json_object *reply);

/* fileops.c: file ops on guest paths and handles */
void caps_save(void);
int req_cred(struct request *rq, struct cred *c, bool *has);
void cred_enter(const struct cred *c);
void cred_leave(void);
void watch_drain(struct agent *a);
void watch_push(struct agent *a);
int op_lstat(struct agent *a, struct request *rq, struct json_object *reply);
int op_readdir(struct agent *a, struct request *rq, struct json_object *reply);
void fh_close_all(struct agent *a);
int op_open(struct agent *a, struct request *rq, struct json_object *reply);
int op_read(struct agent *a, struct request *rq, struct json_object *reply);
int op_write(struct agent *a, struct request *rq, struct json_object *reply);
int op_close(struct agent *a, struct request *rq, struct json_object *reply);
int op_fsync(struct agent *a, struct request *rq, struct json_object *reply);
int op_fstat(struct agent *a, struct request *rq, struct json_object *reply);
int op_ftruncate(struct agent *a, struct request *rq, struct json_object *reply);
int op_truncate(struct agent *a, struct request *rq, struct json_object *reply);
int op_chmod(struct agent *a, struct request *rq, struct json_object *reply);
int op_chown(struct agent *a, struct request *rq, struct json_object *reply);
int op_utimens(struct agent *a, struct request *rq, struct json_object *reply);
int op_unlink(struct agent *a, struct request *rq, struct json_object *reply);
int op_rmdir(struct agent *a, struct request *rq, struct json_object *reply);
int op_mkdir(struct agent *a, struct request *rq, struct json_object *reply);
int op_mknod(struct agent *a, struct request *rq, struct json_object *reply);
int op_rename(struct agent *a, struct request *rq, struct json_object *reply);
int op_symlink(struct agent *a, struct request *rq, struct json_object *reply);
int op_link(struct agent *a, struct request *rq, struct json_object *reply);
int op_readlink(struct agent *a, struct request *rq, struct json_object *reply);
int op_realpath(struct agent *a, struct request *rq, struct json_object *reply);
int op_statfs(struct agent *a, struct request *rq, struct json_object *reply);
/* optable.c: the op table */
/* The agent's own ops, run for real. */
extern const struct agent_ops agent_ops_guest;

#endif /* EMBERFS_AGENT_H */
