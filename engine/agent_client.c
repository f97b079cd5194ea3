/*
 * Host side of the agent protocol (engine/guest/agent.c is the guest side):
 * one JSON object per line over a byte stream. Calls are multiplexed by "id";
 * a reader thread hands each reply to the call waiting for it.
 */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>

#include "internal.h"

#define AGENT_MAX_LINE (64u << 20) /* 2 x 16 MiB of output, base64 */

struct pending {
	uint64_t id;
	json_object *resp;
	bool done;
	struct pending *next;
};

struct agent_client {
	int fd;
	pthread_t reader;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_mutex_t write_lock;
	uint64_t next_id;	 /* protected by lock */
	struct pending *pending; /* protected by lock */
	bool broken;		 /* protected by lock */
};

static void deliver(struct agent_client *c, json_object *o)
{
	json_object *idv;
	uint64_t id;

	if (!json_object_object_get_ex(o, "id", &idv)) {
		json_object_put(o); /* unsolicited event, e.g. "ready" after a cold boot */
		return;
	}
	id = (uint64_t)json_object_get_int64(idv);
	pthread_mutex_lock(&c->lock);
	for (struct pending *p = c->pending; p; p = p->next)
		if (p->id == id && !p->done) {
			p->resp = TAKE_PTR(o);
			p->done = true;
			pthread_cond_broadcast(&c->cond);
			break;
		}
	pthread_mutex_unlock(&c->lock);
	if (o)
		json_object_put(o);
}

static void *reader_main(void *arg)
{
	struct agent_client *c = arg;
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);

	while (buf) {
		char *nl;
		ssize_t n;

		if (len == cap) {
			char *nb = cap >= AGENT_MAX_LINE ? NULL : realloc(buf, cap * 2);

			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		n = read(c->fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		while ((nl = memchr(buf, '\n', len))) {
			json_object *o;

			*nl = '\0';
			o = json_tokener_parse(buf);
			if (o)
				deliver(c, o);
			len -= (size_t)(nl + 1 - buf);
			memmove(buf, nl + 1, len);
		}
	}
	free(buf);
	pthread_mutex_lock(&c->lock);
	c->broken = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

int agent_connect(const char *path, unsigned timeout_ms, const atomic_bool *cancel, struct agent_client **ret)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct agent_client *c;
	_cleanup_close_ int fd = -1;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != ENOENT && errno != ECONNREFUSED)
			return -errno;
		if ((cancel && atomic_load(cancel)) || now_ns() > deadline)
			return cancel && atomic_load(cancel) ? -ECANCELED : -ETIMEDOUT;
		poll(NULL, 0, 1);
	}
	/* a guest that stops reading must not block a sender forever */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &(struct timeval){ .tv_sec = 10 }, sizeof(struct timeval));
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = TAKE_FD(fd);
	c->next_id = 1;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->write_lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	if (thread_create(&c->reader, NULL, reader_main, c)) {
		close(c->fd);
		free(c);
		return -EAGAIN;
	}
	*ret = c;
	return 0;
}

static int send_line(struct agent_client *c, const char *s)
{
	size_t len = strlen(s);
	int r = 0;

	pthread_mutex_lock(&c->write_lock);
	while (len > 0) {
		ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		s += n;
		len -= (size_t)n;
	}
	if (r == 0 && send(c->fd, "\n", 1, MSG_NOSIGNAL) != 1)
		r = -EIO;
	pthread_mutex_unlock(&c->write_lock);
	return r;
}

static void unlink_pending(struct agent_client *c, struct pending *p)
{
	for (struct pending **pp = &c->pending; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
}

static int wait_reply(struct agent_client *c, struct pending *p, unsigned timeout_ms)
{
	struct timespec ts;
	int r = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	while (!p->done && !c->broken && r == 0)
		r = pthread_cond_timedwait(&c->cond, &c->lock, &ts);
	if (p->done)
		return 0;
	return c->broken ? -ECONNRESET : -ETIMEDOUT;
}

int agent_call(struct agent_client *c, json_object *req, unsigned timeout_ms, json_object **ret_resp)
{
	return agent_call_then(c, req, timeout_ms, NULL, NULL, ret_resp);
}

int agent_call_then(struct agent_client *c, json_object *req, unsigned timeout_ms, int (*then)(void *arg),
		    void *arg, json_object **ret_resp)
{
	struct pending p = { 0 };
	json_object *okv;
	int r;

	pthread_mutex_lock(&c->lock);
	if (c->broken) {
		pthread_mutex_unlock(&c->lock);
		return -ECONNRESET;
	}
	p.id = c->next_id++;
	p.next = c->pending;
	c->pending = &p;
	pthread_mutex_unlock(&c->lock);

	json_object_object_add(req, "id", json_object_new_int64((int64_t)p.id));
	r = send_line(c, json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN));
	if (r == 0 && then)
		r = then(arg);

	pthread_mutex_lock(&c->lock);
	if (r == 0)
		r = wait_reply(c, &p, timeout_ms);
	unlink_pending(c, &p);
	pthread_mutex_unlock(&c->lock);
	if (r < 0) {
		if (p.resp)
			json_object_put(p.resp);
		return r;
	}
	if (!json_object_object_get_ex(p.resp, "ok", &okv) || !json_object_get_boolean(okv)) {
		json_object *ev;
		int e = json_object_object_get_ex(p.resp, "errno", &ev) ? json_object_get_int(ev) : EIO;

		log_debug("agent: call failed: %s", json_object_to_json_string(p.resp));
		json_object_put(p.resp);
		return -(e > 0 ? e : EIO);
	}
	if (ret_resp)
		*ret_resp = p.resp;
	else
		json_object_put(p.resp);
	return 0;
}

void agent_shutdown(struct agent_client *c)
{
	if (c)
		shutdown(c->fd, SHUT_RDWR);
}

void agent_free(struct agent_client *c)
{
	if (!c)
		return;
	shutdown(c->fd, SHUT_RDWR);
	pthread_join(c->reader, NULL);
	close(c->fd);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->write_lock);
	pthread_cond_destroy(&c->cond);
	free(c);
}
