/*
 * A cold boot of a template's kernel with a given root disk, up to its
 * agent's first answer: what a bake snapshots and what a Dockerfile build
 * runs its steps in. The VMM is published in *slot (under e->lock) while it
 * runs, so a shutdown can kill it.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>

#include "internal.h"
#include "parse.h"


void booted_stop(struct engine *e, struct booted *b, struct vmm **slot)
{
	if (slot) {
		pthread_mutex_lock(&e->lock);
		*slot = NULL;
		pthread_mutex_unlock(&e->lock);
	}
	vm_release(e, &b->v, &b->ac, &b->net);
}

struct boot_pub {
	struct booted *b;
	struct vmm **slot;
};

static void boot_publish(void *arg, struct vmm *v, struct agent_client *ac)
{
	struct boot_pub *p = arg;

	if (v) {
		p->b->v = v;
		if (p->slot)
			*p->slot = v;
	}
	if (ac)
		p->b->ac = ac;
}

int boot_cold(struct engine *e, const struct template_config *cfg, const char *name, const char *dir,
	      const char *rundir, const char *disk, const atomic_bool *cancel, struct vmm **slot, struct booted *ret,
	      const char **ret_step, char **ret_error)
{
	_cleanup_free_ char *con = vm_file(dir, VM_CONSOLE), *log = vm_file(dir, VM_LOG);
	_cleanup_free_ char *mem = vm_file(dir, VM_MEM);
	_cleanup_json_ json_object *ping = json_object_new_object();
	_cleanup_close_ int fd = -1;
	struct boot_pub pub = { .b = ret, .slot = slot };
	const struct vm_launch l = { .cfg = cfg, .name = name, .dir = dir, .rundir = rundir, .disk = disk,
				     .state_fd = -1, .net = &ret->net, .cancel = cancel, .boot_step = "boot (agent)",
				     .publish = boot_publish, .arg = &pub };
	int r;

	memset(ret, 0, sizeof(*ret));
	*ret_step = "prepare";
	if (!con || !log || !mem || !ping)
		return -ENOMEM;
	if ((r = mkdir_p(dir, 0700)) < 0 || (r = mkdir_p(rundir, 0700)) < 0)
		return r;
	fd = open(mem, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)cfg->mem_mib << 20) < 0)
		return -errno;
	r = vm_start(e, &l, ret_step, ret_error);
	if (r == 0) {
		json_object_object_add(ping, "op", json_object_new_string("ping"));
		r = agent_call(ret->ac, ping, AGENT_BOOT_TIMEOUT_MS, NULL);
	}
	if (r < 0 && ret->v && !(cancel && atomic_load(cancel))) {
		/* a guest that died while it booted (a panic) says why */
		_cleanup_free_ char *cause = vmm_death_cause(e, ret->v, r, con, log);

		if (cause && ret_error)
			error_set(ret_error, "%s", cause);
	}
	if (r < 0)
		booted_stop(e, ret, slot);
	return r;
}

int guest_sync(struct agent_client *ac, unsigned timeout_ms)
{
	_cleanup_json_ json_object *req = json_object_new_object();

	if (!req)
		return -ENOMEM;
	json_object_object_add(req, "op", json_object_new_string("sync"));
	return agent_call(ac, req, timeout_ms, NULL);
}

json_object *guest_attach_new(const char *hostname, json_object *env, const char *machine_id, bool clock)
{
	json_object *req = json_object_new_object();
	_cleanup_free_ char *b64 = NULL;
	uint8_t rnd[64];

	if (!req || getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd) || !(b64 = base64_encode(rnd, sizeof(rnd)))) {
		json_object_put(req);
		json_object_put(env);
		return NULL;
	}
	json_object_object_add(req, "op", json_object_new_string("attach"));
	json_object_object_add(req, "hostname", json_object_new_string(hostname));
	if (env)
		json_object_object_add(req, "env", env);
	json_object_object_add(req, "entropy", json_object_new_string(b64));
	if (machine_id)
		json_object_object_add(req, "machine_id", json_object_new_string(machine_id));
	if (clock) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		json_object_object_add(req, "time_unix_ns",
				       json_object_new_int64((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec));
	}
	return req;
}

int guest_run(struct agent_client *ac, const char *sh, unsigned timeout_ms, int log_fd, char **ret_error)
{
	_cleanup_json_ json_object *req = json_object_new_object(), *resp = NULL;
	int64_t code, sig;
	int r;

	if (!req)
		return -ENOMEM;
	json_object_object_add(req, "op", json_object_new_string("exec"));
	json_object_object_add(req, "sh", json_object_new_string(sh));
	json_object_object_add(req, "timeout_ms", json_object_new_int64(timeout_ms));
	r = agent_call(ac, req, timeout_ms + 10000, &resp);
	if (r < 0)
		return error_first(ret_error, r, "%s: %s", sh, jget_str(resp, "error") ? jget_str(resp, "error") : strerror(-r));
	for (const char *const *k = (const char *const[]){ "stdout", "stderr", NULL }; log_fd >= 0 && *k; k++) {
		const char *b64 = jget_str(resp, *k);
		_cleanup_free_ uint8_t *data = NULL;
		ssize_t n = b64 ? base64_decode(b64, strlen(b64), &data) : 0;

		if (n > 0 && write(log_fd, data, (size_t)n) < 0) {
			/* a log that cannot be written loses lines, not the run */
		}
	}
	code = jget_int(resp, "exit_code", -1);
	sig = jget_int(resp, "signal", 0);
	if (jget_bool(resp, "timed_out"))
		return error_first(ret_error, -ETIMEDOUT, "%s: still running after %u s", sh, timeout_ms / 1000);
	if (code != 0 || sig != 0)
		return error_first(ret_error, -EIO, "%s: %s %" PRId64, sh, sig ? "killed by signal" : "exit code",
				   sig ? sig : code);
	return 0;
}
