/* emberfs-agent: processes: exec, spawn and its streams. */
#include "agent.h"

/* ------------------------------------------------------------------ */
/* exec                                                                 */

#define USER_GROUPS_MAX 64

struct exec_spec {
	struct strv argv;
	struct strv env;
	const char *cwd;
	unsigned char *stdin_data;
	size_t stdin_len;
	uint64_t timeout_ms;
	bool as_user;		/* run as uid/gid/groups, not root */
	uid_t uid;
	gid_t gid;
	size_t ngroups;
	gid_t groups[USER_GROUPS_MAX];
	char *home;		/* the user's, for HOME */
};

static void exec_spec_done(struct exec_spec *s)
{
	strv_free(&s->argv);
	strv_free(&s->env);
	free(s->stdin_data);
	free(s->home);
}

static int exec_parse_argv(struct request *rq, struct strv *argv)
{
	struct json_object *arr = json_field(rq->msg, "argv");
	const char *sh;
	int r = json_get_str(rq->msg, "sh", &sh, NULL);

	if (r == -EINVAL || (r == 0) == (arr != NULL))
		return request_fail(rq, EINVAL, "exec needs exactly one of \"sh\" (string) and \"argv\"");
	if (r == 0) {
		if (access("/bin/sh", X_OK) < 0)
			return request_fail(rq, ENOENT, "a shell line needs /bin/sh, and this guest has none (%s): "
					    "give \"argv\" instead", strerror(errno));
		if (strv_push(argv, strdup("/bin/sh")) < 0 || strv_push(argv, strdup("-c")) < 0 ||
		    strv_push(argv, strdup(sh)) < 0)
			return -ENOMEM;
		return 0;
	}
	if (!json_object_is_type(arr, json_type_array) || json_object_array_length(arr) == 0)
		return request_fail(rq, EINVAL, "\"argv\" must be a non-empty array of strings");
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		struct json_object *e = json_object_array_get_idx(arr, i);
		const char *s = json_object_get_string(e);

		if (!json_object_is_type(e, json_type_string) ||
		    strlen(s) != (size_t)json_object_get_string_len(e))
			return request_fail(rq, EINVAL, "\"argv\" must be a non-empty array of strings");
		if (strv_push(argv, strdup(s)) < 0)
			return -ENOMEM;
	}
	return 0;
}

/*
 * Environment: the fixed base (HOME the user's), then the image's (a
 * configure at bake), then the last attach's, then the request's.
 */
static int exec_build_env(struct agent *a, struct request *rq, const char *home, struct strv *env)
{
	static const char *const base[] = {
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"TERM=linux",
	};
	struct strv req = { 0 };
	char *h;
	int r;

	for (size_t i = 0; i < 2; i++)
		if (strv_push(env, strdup(base[i])) < 0)
			return -ENOMEM;
	if (asprintf(&h, "HOME=%s", home ? home : "/root") < 0 || strv_push(env, h) < 0)
		return -ENOMEM;
	r = env_merge(env, &a->image_env);
	if (r == 0)
		r = env_merge(env, &a->extra_env);
	if (r < 0)
		return r;
	r = json_get_env(rq->msg, "env", &req);
	if (r == -ENOENT)
		return 0;
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"env\" must be an object of strings with valid names");
	if (r == 0)
		r = env_merge(env, &req);
	strv_free(&req);
	return r;
}

/*
 * A user as the image or a request names it: "name", "uid", "name:group",
 * "uid:gid", looked up in the guest's /etc/passwd and /etc/group (fgetpwent
 * and fgetgrent: no NSS in a static agent); supplementary groups from
 * /etc/group, as initgroups would.
 */
static int user_resolve(const char *spec, struct exec_spec *s, char *why, size_t why_len)
{
	_cleanup_free_ char *name = strdup(spec);
	char *grp = name ? strchr(name, ':') : NULL, *end;
	struct passwd *pw = NULL;
	struct group *gr;
	FILE *f;
	bool numeric;
	unsigned long n;

	if (!name)
		return -ENOMEM;
	if (grp)
		*grp++ = '\0';
	n = strtoul(name, &end, 10);
	numeric = *name && !*end;
	if ((f = fopen("/etc/passwd", "re"))) {
		while ((pw = fgetpwent(f)))
			if (numeric ? pw->pw_uid == (uid_t)n : strcmp(pw->pw_name, name) == 0)
				break;
		if (pw) {
			s->uid = pw->pw_uid;
			s->gid = pw->pw_gid;
			s->home = strdup(pw->pw_dir);
		}
		fclose(f);
	}
	if (!pw && !numeric) {
		snprintf(why, why_len, "user %.64s is not in the guest's /etc/passwd", name);
		return -EINVAL;
	}
	if (!pw) {
		s->uid = s->gid = (uid_t)n; /* a uid with no entry: its own group and HOME=/, as Docker does */
		s->home = strdup("/");
	}
	if (grp) {
		n = strtoul(grp, &end, 10);
		if (*grp && !*end) {
			s->gid = (gid_t)n;
		} else {
			gr = NULL;
			if ((f = fopen("/etc/group", "re"))) {
				while ((gr = fgetgrent(f)) && strcmp(gr->gr_name, grp) != 0)
					;
				if (gr)
					s->gid = gr->gr_gid;
				fclose(f);
			}
			if (!gr) {
				snprintf(why, why_len, "group %.64s is not in the guest's /etc/group", grp);
				return -EINVAL;
			}
		}
	} else if (pw && (f = fopen("/etc/group", "re"))) {
		while ((gr = fgetgrent(f)) && s->ngroups < USER_GROUPS_MAX)
			for (char **m = gr->gr_mem; m && *m; m++)
				if (strcmp(*m, pw->pw_name) == 0 && gr->gr_gid != s->gid)
					s->groups[s->ngroups++] = gr->gr_gid;
		fclose(f);
	}
	s->as_user = s->uid != 0 || s->gid != 0 || s->ngroups > 0;
	return 0;
}

/* What exec and spawn share: argv or sh, user, env, cwd (each defaulting to the image's, see configure). */
static int proc_parse(struct agent *a, struct request *rq, struct exec_spec *s)
{
	const char *user = a->default_user;
	struct stat st;
	char why[160];
	int r;

	r = exec_parse_argv(rq, &s->argv);
	if (r < 0)
		return r;
	r = json_get_str(rq->msg, "user", &user, NULL);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"user\" must be a string");
	if (user && *user && (r = user_resolve(user, s, why, sizeof(why))) < 0)
		return r == -EINVAL ? request_fail(rq, EINVAL, "%s", why) : r;
	r = exec_build_env(a, rq, s->home, &s->env);
	if (r < 0)
		return r;
	s->cwd = a->default_cwd ? a->default_cwd : "/";
	r = json_get_str(rq->msg, "cwd", &s->cwd, NULL);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"cwd\" must be a string");
	if (stat(s->cwd, &st) < 0)
		return request_fail(rq, errno, "cwd %s: %s", s->cwd, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return request_fail(rq, ENOTDIR, "cwd %s: not a directory", s->cwd);
	return 0;
}

static int exec_parse(struct agent *a, struct request *rq, struct exec_spec *s)
{
	int r;

	r = proc_parse(a, rq, s);
	if (r < 0)
		return r;
	r = json_get_b64(rq->msg, "stdin", &s->stdin_data, &s->stdin_len);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"stdin\" must be a base64 string");
	if (r < 0 && r != -ENOENT)
		return r;
	r = json_get_u64(rq->msg, "timeout_ms", &s->timeout_ms);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"timeout_ms\" must be a non-negative integer");
	return 0;
}

/* The fd limit the agent found, which its children get back. */
static struct rlimit nofile_child;

void nofile_raise(void)
{
	struct rlimit rl = { AGENT_NOFILE, AGENT_NOFILE };

	if (getrlimit(RLIMIT_NOFILE, &nofile_child) < 0)
		return;
	if (nofile_child.rlim_max > rl.rlim_max)
		rl.rlim_max = rl.rlim_cur = nofile_child.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		agent_log("RLIMIT_NOFILE %d: %m", AGENT_NOFILE);
}

static void close_fds_from(int first)
{
	if (close_range(first, ~0U, 0) == 0)
		return;
	for (int fd = first; fd < 65536; fd++)
		close(fd);
}

/* strerrordesc_np(): no locale lookup, nothing allocated. */
static void child_msg(const char *what, const char *arg, int err)
{
	const char *desc = strerrordesc_np(err);
	const char *parts[] = { "emberfs-agent: ", what, " ", arg, ": ", desc ? desc : "error", "\n" };

	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
		if (write(2, parts[i], strlen(parts[i])) < 0)
			return;
}

/* A file without a #! line is a shell script, as for execvp(). */
static void child_execve(const char *path, char *const argv[], char *const envp[])
{
	size_t argc = 0;

	execve(path, argv, envp);
	if (errno != ENOEXEC)
		return;
	while (argv[argc])
		argc++;
	{
		char *sh[argc + 2];

		sh[0] = (char *)"/bin/sh";
		sh[1] = (char *)path;
		for (size_t i = 1; i <= argc; i++)
			sh[i + 1] = argv[i];
		execve(sh[0], sh, envp);
		errno = ENOEXEC;
	}
}

/*
 * execvp() with the PATH of @envp, the child's environment: the child
 * shares the agent's memory until it execs, so environ stays untouched.
 */
static void child_execvpe(char *const argv[], char *const envp[])
{
	const char *path = "/usr/local/bin:/usr/bin:/bin", *file = argv[0], *p, *end;
	size_t flen = strlen(file);
	char buf[PATH_MAX];
	bool eacces = false;

	if (strchr(file, '/')) {
		child_execve(file, argv, envp);
		return;
	}
	for (size_t i = 0; envp[i]; i++)
		if (!strncmp(envp[i], "PATH=", 5))
			path = envp[i] + 5;
	for (p = path;; p = end + 1) {
		size_t dlen;

		end = strchrnul(p, ':');
		dlen = end - p;
		if (dlen + flen + 2 <= sizeof(buf)) {
			memcpy(buf, dlen ? p : ".", dlen ? dlen : 1);
			dlen = dlen ? dlen : 1;
			buf[dlen] = '/';
			memcpy(buf + dlen + 1, file, flen + 1);
			child_execve(buf, argv, envp);
			if (errno == EACCES)
				eacces = true;
			else if (errno != ENOENT && errno != ENOTDIR && errno != ENODEV &&
				 errno != ESTALE && errno != ETIMEDOUT)
				return;
		}
		if (!*end)
			break;
	}
	errno = eacces ? EACCES : ENOENT;
}

/*
 * In the child between clone(CLONE_VM | CLONE_VFORK) and exec: it runs on
 * its own stack in the agent's memory while the agent waits, so only
 * system calls and calls that touch nothing shared (no malloc, no stdio).
 */
static void __attribute__((noreturn)) child_exec(int in, int out, int err, struct exec_spec *s)
{
	sigset_t none;
	int e;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);
	setsid();
	if (nofile_child.rlim_cur)
		setrlimit(RLIMIT_NOFILE, &nofile_child);
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		_exit(127);
	close_fds_from(3);
	if (s->as_user &&
	    (syscall(SYS_setgroups, s->ngroups, s->groups) < 0 || syscall(SYS_setresgid, s->gid, s->gid, s->gid) < 0 ||
	     syscall(SYS_setresuid, s->uid, s->uid, s->uid) < 0)) {
		child_msg("setuid", "", errno);
		_exit(126);
	}
	if (chdir(s->cwd) < 0) {
		child_msg("chdir", s->cwd, errno);
		_exit(127);
	}
	child_execvpe(s->argv.v, s->env.v);
	e = errno;
	child_msg("exec", s->argv.v[0], e);
	_exit(e == ENOENT ? 127 : 126);
}

struct child_args {
	int in, out, err;
	struct exec_spec *s;
};

static int child_main(void *arg)
{
	struct child_args *c = arg;

	child_exec(c->in, c->out, c->err, c->s);
}

/*
 * posix_spawn()'s way rather than fork(): no copy of the agent's page
 * tables and no copy-on-write faults afterwards.  An exec of /bin/true,
 * host round trip under TCG, p50 of 300: fork 6.8-7.6 ms, this 4.6-5.5 ms
 * (3 boots each).  The agent is single-threaded: one static stack will do.
 */
static pid_t child_spawn(int in, int out, int err, struct exec_spec *s)
{
	static char stack[64 << 10] __attribute__((aligned(16)));
	struct child_args c = { in, out, err, s };

	return clone(child_main, stack + sizeof(stack), CLONE_VM | CLONE_VFORK | SIGCHLD, &c);
}

static void fds_close(int *fds, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

static void fd_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/*
 * fds[]: stdin read, stdin write, stdout read/write, stderr read/write.
 * stdin is a pipe with @stdin_pipe or exec stdin data, else /dev/null.
 */
static int job_spawn(struct job *j, struct exec_spec *s, bool stdin_pipe)
{
	int fds[6] = { -1, -1, -1, -1, -1, -1 };
	pid_t pid;

	if (stdin_pipe || s->stdin_len ? pipe2(&fds[0], O_CLOEXEC) < 0 :
			   (fds[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
		goto fail;
	if (pipe2(&fds[2], O_CLOEXEC) < 0 || pipe2(&fds[4], O_CLOEXEC) < 0)
		goto fail;
	pid = child_spawn(fds[0], fds[3], fds[5], s);
	if (pid < 0)
		goto fail;
	close(fds[0]);
	close(fds[3]);
	close(fds[5]);
	j->pid = pid;
	j->in_fd = fds[1];
	j->out[0].fd = fds[2];
	j->out[1].fd = fds[4];
	if (j->in_fd >= 0)
		fd_nonblock(j->in_fd);
	fd_nonblock(j->out[0].fd);
	fd_nonblock(j->out[1].fd);
	/* Fewer wakeups for chatty children; a failure only costs speed. */
	fcntl(fds[2], F_SETPIPE_SZ, CHILD_PIPE_SIZE);
	fcntl(fds[4], F_SETPIPE_SZ, CHILD_PIPE_SIZE);
	return 0;
fail:
	{
		int e = errno;

		fds_close(fds, 6);
		return -e;
	}
}

static void job_free(struct job *j)
{
	if (!j)
		return;
	for (int i = 0; i < 2; i++) {
		if (j->out[i].fd >= 0)
			close(j->out[i].fd);
		buf_free(&j->out[i].buf);
	}
	if (j->in_fd >= 0)
		close(j->in_fd);
	free(j->in_data);
	free(j);
}

static struct job *job_new(uint64_t id, unsigned int gen)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->id = id;
	j->gen = gen;
	j->pid = -1;
	j->in_fd = j->out[0].fd = j->out[1].fd = -1;
	j->start_ms = clock_ms(CLOCK_MONOTONIC);
	return j;
}

/* Spawned or exec jobs; their sum is below JOB_SLOTS while each is in its cap. */
static size_t jobs_count(struct agent *a, bool spawned)
{
	size_t n = 0;

	for (size_t i = 0; i < JOB_SLOTS; i++)
		if (a->jobs[i] && a->jobs[i]->spawned == spawned)
			n++;
	return n;
}

int op_exec(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_(exec_spec_done) struct exec_spec s = { 0 };
	struct job *j;
	size_t slot;
	int r;

	(void)reply;
	r = exec_parse(a, rq, &s);
	if (r < 0)
		return r;
	if (jobs_count(a, false) >= MAX_JOBS)
		return request_fail(rq, EAGAIN, "too many running execs (%d)", MAX_JOBS);
	for (slot = 0; a->jobs[slot]; slot++)
		;
	j = job_new(rq->id, rq->gen);
	if (!j)
		return -ENOMEM;
	r = job_spawn(j, &s, false);
	if (r < 0) {
		job_free(j);
		return request_fail(rq, -r, "spawn: %s", strerror(-r));
	}
	if (s.timeout_ms)
		j->deadline_ms = j->start_ms + s.timeout_ms;
	j->in_data = s.stdin_data;
	j->in_len = s.stdin_len;
	s.stdin_data = NULL;
	a->jobs[slot] = j;
	return 1;
}

/* ------------------------------------------------------------------ */
/* Job servicing                                                        */

static void stream_close(struct stream *st)
{
	if (st->fd >= 0)
		close(st->fd);
	st->fd = -1;
}

/*
 * exec: keep up to STREAM_CAP bytes, drain and count the rest as truncation.
 * spawn: stop at SPAWN_BUF_HIGH; the pipe fills and the process blocks.
 */
void stream_read(struct job *j, struct stream *st)
{
	static char discard[READ_CHUNK];
	size_t budget = READ_BUDGET;

	while (st->fd >= 0 && budget > 0) {
		char *dst = discard;
		size_t room = sizeof(discard);
		ssize_t n;

		if (j->spawned) {
			room = MIN(READ_CHUNK, SPAWN_BUF_HIGH - MIN(st->buf.len, SPAWN_BUF_HIGH));
			if (!room)
				return;
			if (buf_reserve(&st->buf, room, SPAWN_BUF_HIGH) < 0)
				return;
			dst = st->buf.data + st->buf.len;
		} else if (buf_reserve(&st->buf, MIN(READ_CHUNK, STREAM_CAP - st->buf.len), STREAM_CAP) == 0 &&
		    st->buf.len < STREAM_CAP) {
			dst = st->buf.data + st->buf.len;
			room = st->buf.cap - st->buf.len;
		}
		n = read(st->fd, dst, room);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			stream_close(st);
			return;
		}
		if (dst == discard)
			j->truncated = true;
		else
			st->buf.len += n;
		budget -= MIN((size_t)n, budget);
	}
}

static void job_close_stdin(struct job *j)
{
	if (j->in_fd >= 0)
		close(j->in_fd);
	j->in_fd = -1;
	free(j->in_data);
	j->in_data = NULL;
}

/* A child that stops reading its stdin just gets the pipe closed. */
void job_feed_stdin(struct job *j)
{
	while (j->in_off < j->in_len) {
		ssize_t n = write(j->in_fd, j->in_data + j->in_off, j->in_len - j->in_off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0)
			break;
		j->in_off += n;
	}
	job_close_stdin(j);
}

/*
 * Rendered by hand rather than through json-c: two 16 MiB streams would
 * otherwise be held three times over (raw, base64 object, rendered text).
 * base64 needs no JSON escaping.
 */
static void job_reply(struct agent *a, struct job *j, uint64_t now)
{
	char head[160], tail[128];
	const char *mid = "\",\"stderr\":\"";
	int code = -1, sig = 0, hn, tn;
	size_t total;
	char *p;

	if (j->gen != a->gen)
		return;
	if (WIFEXITED(j->status))
		code = WEXITSTATUS(j->status);
	else if (WIFSIGNALED(j->status))
		sig = WTERMSIG(j->status);
	hn = snprintf(head, sizeof(head),
		      "{\"id\":%" PRIu64 ",\"ok\":true,\"exit_code\":%d,\"signal\":%d,\"stdout\":\"",
		      j->id, code, sig);
	tn = snprintf(tail, sizeof(tail),
		      "\",\"truncated\":%s,\"timed_out\":%s,\"duration_ms\":%" PRIu64 "}\n",
		      j->truncated ? "true" : "false", j->timed_out ? "true" : "false",
		      now - j->start_ms);
	total = hn + b64_encoded_len(j->out[0].buf.len) + strlen(mid) +
		b64_encoded_len(j->out[1].buf.len) + tn;
	p = outq_reserve(a, total);
	if (!p) {
		reply_error(a, j->gen, j->id, ENOMEM, "out of memory rendering the exec reply");
		return;
	}
	memcpy(p, head, hn);
	p += hn;
	b64_encode((unsigned char *)j->out[0].buf.data, j->out[0].buf.len, p);
	p += b64_encoded_len(j->out[0].buf.len);
	memcpy(p, mid, strlen(mid));
	p += strlen(mid);
	b64_encode((unsigned char *)j->out[1].buf.data, j->out[1].buf.len, p);
	p += b64_encoded_len(j->out[1].buf.len);
	memcpy(p, tail, tn);
	a->out.len += total;
}

static struct job *job_by_pid(struct agent *a, pid_t pid)
{
	for (size_t i = 0; i < JOB_SLOTS; i++)
		if (a->jobs[i] && a->jobs[i]->pid == pid && !a->jobs[i]->exited)
			return a->jobs[i];
	return NULL;
}

/*
 * SIGCHLD: as PID 1 we inherit every orphan, so reap them all and note our
 * own.  SIGIO (a host came or went) only had to end the poll: the port is
 * polled again on the next turn anyway.
 */
void signals_read(struct agent *a)
{
	struct signalfd_siginfo si;
	struct job *j;
	pid_t pid;
	int status;

	while (read(a->sig_fd, &si, sizeof(si)) == sizeof(si))
		;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		j = job_by_pid(a, pid);
		if (!j)
			continue;
		j->exited = true;
		j->status = status;
		j->end_ms = clock_ms(CLOCK_MONOTONIC);
		/* a spawned job's stdin stays: "in" then fails with EPIPE */
		if (!j->spawned)
			job_close_stdin(j);
	}
}

static void job_kill(struct job *j, uint64_t now)
{
	kill(-j->pid, SIGKILL);
	kill(j->pid, SIGKILL);
	j->timed_out = true;
	j->grace_ms = now + TIMEOUT_GRACE_MS;
}

/*
 * Timeouts, and replies for jobs that exited with both pipes at EOF.  After
 * a timeout kill, a process that left the session may still hold the pipes:
 * take what they hold and stop waiting once the grace period is over.
 */
static void spawn_tick(struct agent *a, struct job *j);

void jobs_tick(struct agent *a)
{
	uint64_t now = clock_ms(CLOCK_MONOTONIC);

	for (size_t i = 0; i < JOB_SLOTS; i++) {
		struct job *j = a->jobs[i];

		if (!j)
			continue;
		if (j->spawned) {
			spawn_tick(a, j);
			continue;
		}
		if (!j->exited && !j->timed_out && j->deadline_ms && now >= j->deadline_ms)
			job_kill(j, now);
		if (j->exited && j->timed_out && now >= j->grace_ms) {
			for (int s = 0; s < 2; s++) {
				stream_read(j, &j->out[s]);
				stream_close(&j->out[s]);
			}
		}
		if (j->exited && j->out[0].fd < 0 && j->out[1].fd < 0) {
			job_reply(a, j, now);
			job_free(j);
			a->jobs[i] = NULL;
		}
	}
}

/* ------------------------------------------------------------------ */
/* Streaming processes                                                  */

static int spawn_get(struct agent *a, struct request *rq, struct job **ret)
{
	uint64_t id;

	if (json_get_u64(rq->msg, "job", &id) < 0)
		return request_fail(rq, EINVAL, "\"job\" must be a job handle");
	for (size_t i = 0; i < JOB_SLOTS; i++) {
		struct job *j = a->jobs[i];

		if (j && j->spawned && j->id == id && j->gen != rq->gen)
			return request_fail(rq, EBADF, "job %" PRIu64 " is an earlier connection's (attach with it)", id);
		if (j && j->spawned && j->id == id) {
			*ret = j;
			return 0;
		}
	}
	return request_fail(rq, EBADF, "no job %" PRIu64, id);
}

static void reply_written(struct agent *a, unsigned int gen, uint64_t id, size_t n)
{
	_cleanup_json_ struct json_object *o = json_object_new_object();

	if (!o)
		return;
	json_object_object_add(o, "id", json_object_new_uint64(id));
	json_object_object_add(o, "ok", json_object_new_boolean(true));
	json_object_object_add(o, "written", json_object_new_uint64(n));
	outq_json(a, gen, o);
}

void spawn_status(struct job *j, struct json_object *o)
{
	uint64_t now = clock_ms(CLOCK_MONOTONIC);
	int code = -1, sig = 0;

	if (j->exited && WIFEXITED(j->status))
		code = WEXITSTATUS(j->status);
	else if (j->exited && WIFSIGNALED(j->status))
		sig = WTERMSIG(j->status);
	json_object_object_add(o, "running", json_object_new_boolean(!j->exited));
	/*
	 * Once it exited: whether processes of its group (it is a session and
	 * group leader) still run, e.g. a child it left in the background that
	 * may hold its outputs open; without them its outputs reach EOF.
	 */
	json_object_object_add(o, "left_running", json_object_new_boolean(j->exited && kill(-j->pid, 0) == 0));
	json_object_object_add(o, "pid", json_object_new_int(j->pid));
	json_object_object_add(o, "exit_code", json_object_new_int(code));
	json_object_object_add(o, "signal", json_object_new_int(sig));
	json_object_object_add(o, "start_unix_ms", json_object_new_uint64(j->start_unix_ms));
	json_object_object_add(o, "duration_ms",
			       json_object_new_uint64((j->exited ? j->end_ms : now) - j->start_ms));
}

/* The end of a deferred "in": @err 0 replies "written". */
static void spawn_in_done(struct agent *a, struct job *j, int err)
{
	if (err)
		reply_error(a, j->gen, j->in_id, err, NULL);
	else
		reply_written(a, j->gen, j->in_id, j->in_total);
	if (err == EPIPE || (!err && j->in_eof))
		job_close_stdin(j);
	free(j->in_data);
	j->in_data = NULL;
	a->spawn_in_bytes -= j->in_len;
	j->in_len = j->in_off = 0;
	j->in_pending = false;
}

/* Write what the pipe takes: 0 when all is in, -EAGAIN when it is full. */
static int spawn_write_stdin(struct job *j, const char *p, size_t n, size_t *off)
{
	while (*off < n) {
		ssize_t w = write(j->in_fd, p + *off, n - *off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		*off += w;
	}
	return 0;
}

void spawn_feed_stdin(struct agent *a, struct job *j)
{
	int r;

	if (!j->in_pending)
		return;
	r = spawn_write_stdin(j, (char *)j->in_data, j->in_len, &j->in_off);
	if (r != -EAGAIN)
		spawn_in_done(a, j, -r);
}

/* A deferred "out": @n bytes of the stream's buffer, "eof" once all is taken. */
static void spawn_out_reply(struct agent *a, struct job *j, struct stream *st)
{
	size_t n = MIN(st->buf.len, st->out_max);
	bool eof = st->fd < 0 && n == st->buf.len;
	char head[128];
	int hn;

	st->out_pending = false;
	hn = snprintf(head, sizeof(head), "{\"id\":%" PRIu64 ",\"ok\":true,\"eof\":%s,\"bin\":%zu}\n",
		      st->out_id, eof ? "true" : "false", n);
	if (outq_bin(a, j->gen, head, hn, st->buf.data, n) < 0) {
		reply_error(a, j->gen, st->out_id, ENOMEM, "out of memory queueing output");
		return;
	}
	memmove(st->buf.data, st->buf.data + n, st->buf.len - n);
	st->buf.len -= n;
	if (!st->buf.len)
		buf_free(&st->buf);
}

/* Every loop turn: answer what became answerable. */
static void spawn_tick(struct agent *a, struct job *j)
{
	for (int s = 0; s < 2; s++) {
		struct stream *st = &j->out[s];

		if (st->out_pending && (st->buf.len || st->fd < 0) && !outq_full(a))
			spawn_out_reply(a, j, st);
	}
	if (j->exited && j->n_waits) {
		for (size_t i = 0; i < j->n_waits; i++) {
			_cleanup_json_ struct json_object *o = json_object_new_object();

			if (!o)
				continue;
			json_object_object_add(o, "id", json_object_new_uint64(j->waits[i]));
			json_object_object_add(o, "ok", json_object_new_boolean(true));
			spawn_status(j, o);
			outq_json(a, j->gen, o);
		}
		j->n_waits = 0;
	}
}

/*
 * Kill the process group (if the process runs, or if what it left behind
 * still holds its pipes), fail what is still deferred, free the job.
 */
void spawn_release(struct agent *a, struct job *j, bool reply)
{
	const char *why = "job released";

	if (!j->exited || j->out[0].fd >= 0 || j->out[1].fd >= 0) {
		kill(-j->pid, SIGKILL);
		if (!j->exited)
			kill(j->pid, SIGKILL);
	}
	if (reply) {
		for (int s = 0; s < 2; s++)
			if (j->out[s].out_pending)
				reply_error(a, j->gen, j->out[s].out_id, ECANCELED, why);
		if (j->in_pending)
			reply_error(a, j->gen, j->in_id, ECANCELED, why);
		for (size_t i = 0; i < j->n_waits; i++)
			reply_error(a, j->gen, j->waits[i], ECANCELED, why);
	}
	if (j->in_pending)
		a->spawn_in_bytes -= j->in_len;
	for (size_t i = 0; i < JOB_SLOTS; i++)
		if (a->jobs[i] == j)
			a->jobs[i] = NULL;
	job_free(j);
}

/*
 * A spawned job whose host hung up: what it had deferred is dropped (the
 * replies had nowhere to go; stdin not yet written is not written), the
 * process runs on and its output waits, for the next host to keep it with
 * an attach naming it.
 */
void spawn_detach(struct agent *a, struct job *j)
{
	for (int s = 0; s < 2; s++)
		j->out[s].out_pending = false;
	if (j->in_pending) {
		a->spawn_in_bytes -= j->in_len;
		free(j->in_data);
		j->in_data = NULL;
		j->in_len = j->in_off = 0;
		j->in_pending = false;
	}
	j->n_waits = 0;
}

/* The host hung up: its handles go, its processes wait for the next one. */
void conn_release(struct agent *a)
{
	fh_close_all(a);
	for (size_t i = 0; i < JOB_SLOTS; i++)
		if (a->jobs[i] && a->jobs[i]->spawned)
			spawn_detach(a, a->jobs[i]);
}

int op_spawn(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_(exec_spec_done) struct exec_spec s = { 0 };
	struct job *j;
	size_t slot;
	int r;

	r = proc_parse(a, rq, &s);
	if (r < 0)
		return r;
	if (jobs_count(a, true) >= MAX_SPAWN)
		return request_fail(rq, EAGAIN, "too many jobs (%d)", MAX_SPAWN);
	for (slot = 0; a->jobs[slot]; slot++)
		;
	j = job_new(a->last_job + 1, rq->gen);
	if (!j)
		return -ENOMEM;
	j->spawned = true;
	r = job_spawn(j, &s, true);
	if (r < 0) {
		job_free(j);
		return request_fail(rq, -r, "spawn: %s", strerror(-r));
	}
	a->last_job++;
	j->start_unix_ms = clock_ms(CLOCK_REALTIME);
	a->jobs[slot] = j;
	json_object_object_add(reply, "job", json_object_new_uint64(j->id));
	json_object_object_add(reply, "pid", json_object_new_int(j->pid));
	json_object_object_add(reply, "start_unix_ms", json_object_new_uint64(j->start_unix_ms));
	return 0;
}

int op_out(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct job *j;
	struct stream *st;
	uint64_t stream, max;
	int r;

	(void)reply;
	r = spawn_get(a, rq, &j);
	if (r < 0)
		return r;
	if ((r = req_u64(rq, "stream", 1, 2, &stream)) < 0 ||
	    (r = req_u64(rq, "max", 1, BIN_MAX, &max)) < 0)
		return r;
	st = &j->out[stream - 1];
	if (st->out_pending)
		return request_fail(rq, EBUSY, "an \"out\" on stream %" PRIu64 " is in flight", stream);
	st->out_pending = true;
	st->out_id = rq->id;
	st->out_max = max;
	spawn_tick(a, j);
	return 1;
}

int op_in(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct job *j;
	size_t off = 0;
	bool eof;
	int r;

	r = spawn_get(a, rq, &j);
	if (r < 0)
		return r;
	r = req_bool_opt(rq, "eof", &eof);
	if (r < 0)
		return r;
	if (!rq->has_bin)
		return request_fail(rq, EINVAL, "in needs a \"bin\" payload");
	if (j->in_pending)
		return request_fail(rq, EBUSY, "an \"in\" is in flight");
	if (j->in_fd < 0)
		return request_fail(rq, EPIPE, "stdin is closed");
	r = spawn_write_stdin(j, rq->bin, rq->bin_len, &off);
	if (r == -EPIPE)
		job_close_stdin(j);
	if (r < 0 && r != -EAGAIN)
		return request_fail(rq, -r, "write to stdin: %s", strerror(-r));
	if (r == 0) {
		if (eof)
			job_close_stdin(j);
		json_object_object_add(reply, "written", json_object_new_uint64(rq->bin_len));
		return 0;
	}
	if (a->spawn_in_bytes + (rq->bin_len - off) > SPAWN_IN_TOTAL)
		return request_fail(rq, EAGAIN, "too much stdin data pending");
	j->in_data = malloc(rq->bin_len - off);
	if (!j->in_data)
		return -ENOMEM;
	memcpy(j->in_data, rq->bin + off, rq->bin_len - off);
	j->in_len = rq->bin_len - off;
	j->in_off = 0;
	j->in_total = rq->bin_len;
	j->in_eof = eof;
	j->in_id = rq->id;
	j->in_pending = true;
	a->spawn_in_bytes += j->in_len;
	return 1;
}

int op_signal(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct job *j;
	uint64_t sig;
	int r;

	(void)reply;
	r = spawn_get(a, rq, &j);
	if (r < 0)
		return r;
	r = req_u64(rq, "sig", 0, SIGRTMAX, &sig);
	if (r < 0)
		return r;
	if (j->exited)
		return request_fail(rq, ESRCH, "job %" PRIu64 " exited", j->id);
	if (kill(j->pid, (int)sig) < 0)
		return sys_fail(rq, "kill", "");
	return 0;
}

int op_status(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct job *j;
	int r;

	r = spawn_get(a, rq, &j);
	if (r < 0)
		return r;
	spawn_status(j, reply);
	return 0;
}

int op_wait(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct job *j;
	int r;

	r = spawn_get(a, rq, &j);
	if (r < 0)
		return r;
	if (j->exited) {
		spawn_status(j, reply);
		return 0;
	}
	if (j->n_waits == MAX_WAITS)
		return request_fail(rq, EBUSY, "too many \"wait\"s in flight");
	j->waits[j->n_waits++] = rq->id;
	return 1;
}

int op_release(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct job *j;
	int r;

	(void)reply;
	r = spawn_get(a, rq, &j);
	if (r < 0)
		return r;
	spawn_release(a, j, true);
	return 0;
}
