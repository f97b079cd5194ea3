/* emberfs-agent: the connection and the guest: ping, attach, configure, probe, sync. */
#include "agent.h"

/* ------------------------------------------------------------------ */
/* ping, attach                                                          */

int op_ping(struct agent *a, struct request *rq, struct json_object *reply)
{
	(void)a;
	(void)rq;
	json_object_object_add(reply, "op", json_object_new_string("pong"));
	json_object_object_add(reply, "uptime_ms", json_object_new_uint64(clock_ms(CLOCK_BOOTTIME)));
	return 0;
}

/* Crediting the entropy is what makes clones of one snapshot diverge. */
static int rng_add_entropy(const unsigned char *data, size_t len)
{
	_cleanup_free_ struct rand_pool_info *info = malloc(sizeof(*info) + len);
	_cleanup_close_ int fd = -1;

	if (!info)
		return -ENOMEM;
	info->entropy_count = (int)len * 8;
	info->buf_size = (int)len;
	memcpy(info->buf, data, len);
	fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (ioctl(fd, RNDADDENTROPY, info) < 0)
		return -errno;
	/*
	 * On an initialised pool, added entropy only reaches the CRNG at its
	 * next scheduled reseed: clones of one snapshot would read the same
	 * bytes until then. Reseed now.
	 */
	if (ioctl(fd, RNDRESEEDCRNG) < 0)
		return -errno;
	return 0;
}

struct attach_spec {
	const char *hostname;
	size_t hostname_len;
	bool has_env;
	struct strv env;
	unsigned char *entropy;
	size_t entropy_len;
	bool has_time;
	uint64_t time_ns;
	const char *machine_id;	/* 32 lowercase hex digits, for /etc/machine-id */
	uint64_t *jobs;		/* spawned jobs to keep (an earlier host's) */
	size_t n_jobs;
	bool has_session;
	uint64_t session;	/* the host's name for its connection */
};

static void attach_spec_done(struct attach_spec *s)
{
	strv_free(&s->env);
	free(s->entropy);
	free(s->jobs);
}

/* "jobs": an array of at most MAX_SPAWN job handles; absent: none. */
static int attach_parse_jobs(struct request *rq, struct attach_spec *s)
{
	struct json_object *v;
	size_t n;

	if (!json_object_object_get_ex(rq->msg, "jobs", &v))
		return 0;
	if (!json_object_is_type(v, json_type_array) || (n = json_object_array_length(v)) > MAX_SPAWN)
		return request_fail(rq, EINVAL, "\"jobs\" must be an array of at most %d job handles", MAX_SPAWN);
	s->jobs = calloc(n ? n : 1, sizeof(*s->jobs));
	if (!s->jobs)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(v, i);

		if (!json_object_is_type(e, json_type_int) || json_object_get_int64(e) < 0)
			return request_fail(rq, EINVAL, "\"jobs\" must be an array of at most %d job handles",
					    MAX_SPAWN);
		s->jobs[i] = json_object_get_uint64(e);
	}
	s->n_jobs = n;
	return 0;
}

/* Everything is checked before anything is applied. */
static int attach_parse(struct request *rq, struct attach_spec *s)
{
	size_t len;
	int r;

	r = json_get_str(rq->msg, "hostname", &s->hostname, &s->hostname_len);
	if (r == -EINVAL || (r == 0 && s->hostname_len > HOST_NAME_MAX))
		return request_fail(rq, EINVAL, "\"hostname\" must be a string of at most %d bytes",
				    HOST_NAME_MAX);
	r = json_get_env(rq->msg, "env", &s->env);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"env\" must be an object of strings with valid names");
	s->has_env = r == 0;
	r = json_get_b64(rq->msg, "entropy", &s->entropy, &s->entropy_len);
	if (r == -EINVAL || (r == 0 && (s->entropy_len < ENTROPY_MIN || s->entropy_len > ENTROPY_MAX)))
		return request_fail(rq, EINVAL, "\"entropy\" must be base64 of %d..%d bytes",
				    ENTROPY_MIN, ENTROPY_MAX);
	if (r < 0 && r != -ENOENT)
		return r;
	r = json_get_u64(rq->msg, "time_unix_ns", &s->time_ns);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"time_unix_ns\" must be a non-negative integer");
	s->has_time = r == 0;
	r = json_get_str(rq->msg, "machine_id", &s->machine_id, &len);
	if (r == -EINVAL || (r == 0 && (len != 32 || strspn(s->machine_id, "0123456789abcdef") != 32)))
		return request_fail(rq, EINVAL, "\"machine_id\" must be 32 lowercase hex digits");
	if (r < 0)
		s->machine_id = NULL;
	r = attach_parse_jobs(rq, s);
	if (r < 0)
		return r;
	r = json_get_u64(rq->msg, "session", &s->session);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"session\" must be a non-negative integer");
	s->has_session = r == 0;
	return 0;
}

/* The machine id (MACHINE_ID_RUN, where /etc/machine-id points), replaced whole. */
static int machine_id_write(const char *id)
{
	static const char tmp[] = MACHINE_ID_RUN ".tmp";
	char line[33];
	int fd;

	memcpy(line, id, 32);
	line[32] = '\n';
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
	if (fd < 0)
		return -errno;
	if (write(fd, line, sizeof(line)) != (ssize_t)sizeof(line)) {
		int e = errno ? errno : EIO;

		close(fd);
		unlink(tmp);
		return -e;
	}
	close(fd);
	if (rename(tmp, MACHINE_ID_RUN) < 0) {
		int e = errno;

		unlink(tmp);
		return -e;
	}
	return 0;
}

/*
 * The spawned jobs the attach names become this connection's (what an
 * earlier host started, kept over its hangup: a daemon restarted, a sandbox
 * woken); every other job an earlier host left is released (killed): one of
 * an earlier connection, or any not named when the attach brings a session
 * new to the agent (a restored snapshot or a fork may see no hangup: the
 * connection state is part of the snapshot). The reply's "jobs" has the
 * status of each one kept; a handle the agent does not know is left out.
 */
static int attach_jobs(struct agent *a, struct request *rq, struct attach_spec *s, struct json_object *reply)
{
	struct json_object *kept = json_object_new_array();
	bool new_host = s->has_session && s->session != a->session;

	if (!kept)
		return -ENOMEM;
	for (size_t i = 0; i < JOB_SLOTS; i++) {
		struct job *j = a->jobs[i];
		bool keep = false;

		if (!j || !j->spawned)
			continue;
		for (size_t k = 0; k < s->n_jobs && !keep; k++)
			keep = s->jobs[k] == j->id;
		if (keep) {
			struct json_object *o = json_object_new_object();

			/*
			 * Kept for another connection, or for a host new to this
			 * snapshot (a rollback, a wake): what it had deferred was
			 * asked by a connection that is gone, and answering it now
			 * would hand output to nobody. The new host asks again.
			 */
			if (j->gen != rq->gen || new_host)
				spawn_detach(a, j);
			j->gen = rq->gen;
			if (!o)
				continue;
			json_object_object_add(o, "job", json_object_new_uint64(j->id));
			spawn_status(j, o);
			json_object_object_add(o, "stdin_closed", json_object_new_boolean(j->in_fd < 0));
			json_object_array_add(kept, o);
		} else if (j->gen != rq->gen || new_host) {
			spawn_release(a, j, false);
		}
	}
	if (s->has_session)
		a->session = s->session;
	json_object_object_add(reply, "jobs", kept);
	return 0;
}

int op_attach(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_(attach_spec_done) struct attach_spec s = { 0 };
	int r;

	r = attach_parse(rq, &s);
	if (r < 0)
		return r;
	if (s.hostname && sethostname(s.hostname, s.hostname_len) < 0)
		return request_fail(rq, errno, "sethostname: %m");
	if (s.has_env) {
		strv_free(&a->extra_env);
		a->extra_env = s.env;
		s.env = (struct strv){ 0 };
	}
	if (s.entropy) {
		r = rng_add_entropy(s.entropy, s.entropy_len);
		if (r < 0)
			return request_fail(rq, -r, "RNDADDENTROPY: %s", strerror(-r));
	}
	if (s.has_time) {
		struct timespec ts = {
			.tv_sec = (time_t)(s.time_ns / 1000000000u),
			.tv_nsec = (long)(s.time_ns % 1000000000u),
		};

		if (clock_settime(CLOCK_REALTIME, &ts) < 0)
			return request_fail(rq, errno, "clock_settime: %m");
	}
	if (s.machine_id && (r = machine_id_write(s.machine_id)) < 0)
		return request_fail(rq, -r, "/etc/machine-id: %s", strerror(-r));
	return attach_jobs(a, rq, &s, reply);
}

/* ------------------------------------------------------------------ */
/* Guest-wide settings and probes                                      */

/*
 * configure {env?, cwd?, user?}: what every later exec and spawn gets unless
 * it says otherwise (an image's ENV, WORKDIR and USER). Sent once at a
 * template's bake, so it is in the snapshot of every sandbox. The user is
 * looked up at each exec (the guest may add it later).
 */
int op_configure(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct strv env = { 0 };
	const char *cwd = NULL, *user = NULL;
	int r;

	(void)reply;
	r = json_get_env(rq->msg, "env", &env);
	if (r == -EINVAL)
		return request_fail(rq, EINVAL, "\"env\" must be an object of strings with valid names");
	if ((r = json_get_str(rq->msg, "cwd", &cwd, NULL)) == -EINVAL || (cwd && cwd[0] != '/'))
		return strv_free(&env), request_fail(rq, EINVAL, "\"cwd\" must be an absolute path");
	if ((r = json_get_str(rq->msg, "user", &user, NULL)) == -EINVAL)
		return strv_free(&env), request_fail(rq, EINVAL, "\"user\" must be a string");
	strv_free(&a->image_env);
	a->image_env = env;
	free(a->default_cwd);
	free(a->default_user);
	a->default_cwd = cwd && *cwd ? strdup(cwd) : NULL;
	a->default_user = user && *user ? strdup(user) : NULL;
	return 0;
}

/* probe {tcp}: whether a TCP connect to the guest's own port succeeds now (a start command's readiness). */
int op_probe(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	_cleanup_close_ int fd = -1;
	uint64_t port;
	int r;

	(void)a;
	(void)reply;
	r = req_u64(rq, "tcp", 1, 65535, &port);
	if (r < 0)
		return r;
	sa.sin_port = htons((uint16_t)port);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return sys_fail(rq, "connect", "127.0.0.1");
	return 0;
}

/* sync: everything the guest wrote is on its disks (before the host copies one). */
int op_sync(struct agent *a, struct request *rq, struct json_object *reply)
{
	(void)a;
	(void)rq;
	(void)reply;
	sync();
	return 0;
}
