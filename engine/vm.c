/*
 * The one way a VMM is started, for every path that needs a new one: a
 * create (restore or cold boot), a warm slot's preparation, start, wake,
 * fork, a bake's boot and a Dockerfile build's guest. The caller prepares
 * the files (memory, disk, a snapshot's device state) and attaches the
 * guest afterwards; in between it is always the same sequence:
 *
 *   network slot -> egress policy -> spawn -> publish -> connect -> [pages -> restore -> running] -> agent -> publish
 *   '------------------------ vm_spawn ----------------------'    '----------------- vm_load -----------------'
 *
 * A spare (pool.c) is a VMM taken through vm_spawn ahead of any request,
 * waiting for its incoming state; the create that claims it runs vm_load.
 * The caller owns what is published from the moment it is, and gives it
 * back with vm_release, the one teardown, whether this returned an error or
 * not.
 */
#include <string.h>

#include <limits.h>
#include <stdio.h>
#include <unistd.h>

#include "internal.h"
#include "ram.h"

/* Whether fd is a lazy file of the snapshot store (its name says so: ram.h). */
static bool fd_is_lazy_ram(int fd)
{
	char link[64], target[PATH_MAX];
	ssize_t n;
	size_t sl = strlen(RAM_LAZY_SUFFIX);

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	if ((n = readlink(link, target, sizeof(target) - 1)) <= 0)
		return false;
	target[n] = '\0';
	return (size_t)n > sl && strcmp(target + n - sl, RAM_LAZY_SUFFIX) == 0;
}

static void event(const struct vm_launch *l, enum vm_event ev)
{
	if (l->event)
		l->event(l->arg, ev);
}

int vm_spawn(struct engine *e, const struct vm_launch *l, struct vmm **ret, const char **ret_step, char **ret_why)
{
	_cleanup_free_ char *qmp = vm_file(l->rundir, VM_QMP), *agent = vm_file(l->rundir, VM_AGENT);
	_cleanup_free_ char *mem = vm_file(l->dir, VM_MEM), *con = vm_file(l->dir, VM_CONSOLE);
	_cleanup_free_ char *log = vm_file(l->dir, VM_LOG), *cmdline = NULL;
	const bool restore = l->state_fd >= 0;
	struct vmm_spec spec = { .cfg = l->cfg, .accel = e->accel, .name = l->name, .mem_path = mem,
				 .disk_path = l->disk, .control_path = qmp, .agent_path = agent, .console_path = con,
				 .log_path = log, .incoming_fd = l->state_fd, .netns_fd = -1,
				 .ram_fd = l->ram_fd > 0 && restore ? l->ram_fd : -1 };
	const struct engine_driver *d;
	struct vmm *v = NULL;
	int r;

	*ret = NULL;
	*ret_step = "spawn";
	if (!qmp || !agent || !mem || !con || !log)
		return -ENOMEM;
	if (!(d = engine_driver(e, l->cfg->backend, ret_why)))
		return -EINVAL;
	if (!d->ops->ram_base)
		spec.ram_fd = -1;
	if ((r = engine_spec_init(e, l->cfg, &spec, &cmdline)) < 0)
		return r;
	if (l->cfg->net) {
		pthread_mutex_lock(&e->lock);
		struct netslot *ns = *l->net;
		pthread_mutex_unlock(&e->lock);

		if (!ns) {
			bool built;

			*ret_step = "network slot";
			if ((r = netpool_claim(e->net, &ns, &built, ret_why)) < 0)
				return r;
			pthread_mutex_lock(&e->lock);
			*l->net = ns;
			pthread_mutex_unlock(&e->lock);
			event(l, built ? VM_EV_NET_BUILT : VM_EV_NET);
			/* before the guest can send anything: its policy */
			*ret_step = "egress";
			if ((r = egress_apply_claimed(e, ns, l->cfg, l->egress, ret_why)) < 0)
				return r;
			*ret_step = "spawn";
		}
		spec.netns_fd = ns->netns_fd;
	}
	if ((r = d->ops->spawn(d->binary, &spec, &v)) < 0)
		return r;
	v->lazy_ram = spec.ram_fd >= 0 && fd_is_lazy_ram(spec.ram_fd);
	pthread_mutex_lock(&e->lock);
	l->publish(l->arg, v, NULL);
	if (l->cancel && atomic_load(l->cancel))
		vmm_kill(v);
	pthread_mutex_unlock(&e->lock);
	event(l, VM_EV_SPAWNED);
	if ((r = vmm_connect(v, QMP_TIMEOUT_MS, l->cancel)) < 0)
		return r;
	/* a VMM that died or was killed meanwhile fails its next step, with its own reason */
	if ((r = vmm_prepare(v)) < 0 && vmm_alive(v))
		log_warn("%s: preparing the VMM for its first run: %s (it runs, slower)", l->name, strerror(-r));
	event(l, VM_EV_CONNECTED);
	*ret = v;
	return 0;
}

int vm_load(struct engine *e, const struct vm_launch *l, struct vmm *v, bool restore, const char **ret_step)
{
	_cleanup_free_ char *agent = vm_file(l->rundir, VM_AGENT);
	struct agent_client *ac = NULL;
	int r;

	if (!agent)
		return -ENOMEM;
	if (restore && l->delta) {
		*ret_step = "memory";
		if ((r = vmm_load_delta(v, l->delta, l->delta_fd)) < 0)
			return r;
		event(l, VM_EV_PAGES);
	}
	if (restore) {
		*ret_step = "restore";
		if ((r = vmm_restore(v, l->load_fd > 0 ? l->load_fd : -1, QMP_TIMEOUT_MS)) < 0)
			return r;
		event(l, VM_EV_LOADING);
		if ((r = vmm_wait_running(v, RESTORE_TIMEOUT_MS)) < 0)
			return r;
		event(l, VM_EV_RESTORED);
	}
	*ret_step = restore ? "agent" : l->boot_step ? l->boot_step : "boot";
	if ((r = agent_connect(agent, QMP_TIMEOUT_MS, l->cancel, &ac)) < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	l->publish(l->arg, NULL, ac);
	if (l->cancel && atomic_load(l->cancel))
		agent_shutdown(ac);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

int vm_start(struct engine *e, const struct vm_launch *l, const char **ret_step, char **ret_why)
{
	struct vmm *v;
	int r = vm_spawn(e, l, &v, ret_step, ret_why);

	return r < 0 ? r : vm_load(e, l, v, l->state_fd >= 0, ret_step);
}

void vm_release(struct engine *e, struct vmm **v, struct agent_client **ac, struct netslot **net)
{
	if (ac && *ac)
		agent_free(TAKE_PTR(*ac)); /* shuts the connection down first */
	if (v && *v)
		vmm_free(TAKE_PTR(*v)); /* kills and reaps it */
	if (net && *net)
		egress_slot_release(e, net); /* no process is in it any more */
}
