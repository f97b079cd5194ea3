/*
 * The daemon as a systemd service (sd_notify(3), Type=notify): READY=1 once
 * the mount answers and the template `default` is baked (or its bake
 * failed: the daemon still serves, the STATUS= line says why), STOPPING=1
 * when it begins to stop. Does nothing unless systemd set NOTIFY_SOCKET.
 *
 * The watcher is one thread that looks, every SERVICE_POLL_MS, first
 * through the mount (a stat of MOUNT/templates/default/status: the kernel
 * asks the FUSE loop, so an answer means the mount serves) and then at the
 * template's state. It never opens a file of the mount: an open file would
 * make `fusermount3 -u` (ExecStop) fail with EBUSY during a long first
 * bake. It ends at readiness or when the daemon stops, whichever is first.
 */
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "common.h"
#include "fs.h"

#define SERVICE_POLL_MS 50

struct service {
	struct engine *e;
	char *status_path; /* MOUNT/templates/default/status */
	bool bake_default;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	char said[32]; /* the state the last STATUS= named */
};

/* The template default's state and error ("" when none); false while it does not exist. */
static bool default_state(struct engine *e, char *state, size_t state_len, char *error, size_t error_len)
{
	struct template *t = engine_template_get(e, "default");
	char *text;
	json_object *o, *v;

	if (!t)
		return false;
	text = template_render_status(t);
	template_unref(t);
	o = text ? json_tokener_parse(text) : NULL;
	free(text);
	snprintf(state, state_len, "%s", o && json_object_object_get_ex(o, "state", &v) && v ? json_object_get_string(v) : "");
	snprintf(error, error_len, "%s", o && json_object_object_get_ex(o, "error", &v) && v ? json_object_get_string(v) : "");
	json_object_put(o);
	return true;
}

/* One look: true once READY=1 went out. */
static bool look(struct service *sv)
{
	char state[32], error[512];
	struct stat st;

	if (stat(sv->status_path, &st) < 0 && errno != ENOENT)
		return false; /* the mount does not answer yet */
	if (!sv->bake_default) {
		sd_notify(0, "READY=1\nSTATUS=Serving; the template default is not baked at start (--no-bake)");
		return true;
	}
	if (!default_state(sv->e, state, sizeof(state), error, sizeof(error))) {
		sd_notify(0, "READY=1\nSTATUS=Serving; no template default");
		return true;
	}
	if (!strcmp(state, "ready")) {
		sd_notify(0, "READY=1\nSTATUS=Serving; template default ready");
		return true;
	}
	if (!strcmp(state, "failed")) {
		/* the log line first: whoever reacts to READY=1 finds the reason already written */
		log_warn("service: ready, but the template default failed: %s", error[0] ? error : "see its status");
		sd_notifyf(0, "READY=1\nSTATUS=Serving; template default failed: %s", error[0] ? error : "see the log");
		return true;
	}
	if (strcmp(state, sv->said)) {
		sd_notifyf(0, "STATUS=Mounted; template default %s", state);
		snprintf(sv->said, sizeof(sv->said), "%s", state);
	}
	return false;
}

static void *watch(void *arg)
{
	struct service *sv = arg;

	pthread_mutex_lock(&sv->lock);
	while (!sv->stop) {
		struct timespec ts;

		pthread_mutex_unlock(&sv->lock);
		if (look(sv)) {
			pthread_mutex_lock(&sv->lock);
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += SERVICE_POLL_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&sv->lock);
		if (!sv->stop)
			pthread_cond_timedwait(&sv->cond, &sv->lock, &ts);
	}
	pthread_mutex_unlock(&sv->lock);
	return NULL;
}

int service_start(struct engine *e, const char *mountpoint, bool bake_default, struct service **ret)
{
	struct service *sv;
	pthread_condattr_t ca;
	int r;

	*ret = NULL;
	if (!getenv("NOTIFY_SOCKET"))
		return 0;
	sv = calloc(1, sizeof(*sv));
	if (!sv || asprintf(&sv->status_path, "%s/templates/default/status", mountpoint) < 0) {
		free(sv);
		return -ENOMEM;
	}
	sv->e = e;
	sv->bake_default = bake_default;
	pthread_mutex_init(&sv->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sv->cond, &ca);
	pthread_condattr_destroy(&ca);
	sd_notifyf(0, "STATUS=Mounted on %s", mountpoint);
	r = -pthread_create(&sv->thread, NULL, watch, sv);
	if (r < 0) {
		free(sv->status_path);
		free(sv);
		return r;
	}
	*ret = sv;
	return 0;
}

void service_stopping(struct service *sv)
{
	if (!sv)
		return;
	sd_notify(0, "STOPPING=1\nSTATUS=Stopping: destroying sandboxes");
	pthread_mutex_lock(&sv->lock);
	sv->stop = true;
	pthread_cond_signal(&sv->cond);
	pthread_mutex_unlock(&sv->lock);
	pthread_join(sv->thread, NULL);
	pthread_cond_destroy(&sv->cond);
	pthread_mutex_destroy(&sv->lock);
	free(sv->status_path);
	free(sv);
}
