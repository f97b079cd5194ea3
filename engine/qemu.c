/*
 * QEMU driver: spawns qemu-system with -M microvm, talks QMP (JSON over a unix
 * socket) with bounded waits.
 *
 * Guest RAM lives in a file mapped shared (memory-backend-file, share=on) and
 * migration runs with x-ignore-shared, so a snapshot carries only device state
 * (tens of KiB) and a restore maps the RAM file lazily instead of reading it.
 * A restore from a template's snapshot maps the snapshot memory's sealed base
 * privately instead (share=off: clones share what they did not write, ram.h);
 * its snapshot saves device state alone (xen-save-devices-state, which leaves
 * RAM out whatever its mapping) and writes the guest's own pages into the
 * sandbox's memory file, and the stream gets the configuration section the
 * stream it was restored from began with (kept next to its control socket).
 * The process is started, confined and tracked by jail.c, as every driver's.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "config.h"
#include "internal.h"
#include "jail.h"
#include "ram.h"

extern char **environ;

struct qemu {
	struct vmm base; /* first: this driver's struct vmm * is one of these */
	struct jail proc; /* the process, as jail.c started or adopted it */
	int qmp;
	bool incoming; /* restore: started with -incoming defer */
	bool tcg;      /* spawned here under TCG (an adopted VMM is not prepared) */
	unsigned vcpus;
	bool resumed;  /* a RESUME event was seen */
	/*
	 * The QMP connection's reads and writes (buf, len): a command's caller,
	 * and the reader of what a dead VMM left in the socket (its SHUTDOWN).
	 */
	pthread_mutex_t qmp_lock;
	char shutdown[32]; /* qmp_lock: the reason of its SHUTDOWN event ("guest-reset", ...); "" if none seen */
	char *qmp_path;
	char buf[65536];
	size_t len;
};

static struct qemu *to_qemu(struct vmm *vm)
{
	return (struct qemu *)vm;
}

static int qemu_version(const char *binary, char **ret)
{
	char *argv[] = { (char *)binary, "--version", NULL };
	posix_spawn_file_actions_t fa;
	int p[2], st;
	pid_t pid;
	char buf[256] = "";
	ssize_t n;
	int r;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 1);
	r = posix_spawnp(&pid, binary, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	if (r) {
		close(p[0]);
		return -r;
	}
	n = read(p[0], buf, sizeof(buf) - 1);
	close(p[0]);
	waitpid(pid, &st, 0);
	if (n <= 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return -ENOEXEC;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	*ret = strdup(buf);
	return *ret ? 0 : -ENOMEM;
}

/* argv builder with owned strings */
struct args {
	char *v[64];
	int n;
};

static void args_add(struct args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void args_add(struct args *a, const char *fmt, ...)
{
	va_list ap;

	if (a->n >= (int)ARRAY_SIZE(a->v) - 1)
		return;
	va_start(ap, fmt);
	if (vasprintf(&a->v[a->n], fmt, ap) >= 0)
		a->n++;
	va_end(ap);
}

static void args_free(struct args *a)
{
	for (int i = 0; i < a->n; i++)
		free(a->v[i]);
}

static void build_args(const char *binary, const struct vmm_spec *s, struct args *a)
{
	const struct template_config *c = s->cfg;

	args_add(a, "%s", binary);
	args_add(a, "-name");
	args_add(a, "emberfs-%s-%s", s->tag ? s->tag : "", s->name);
	args_add(a, "-M");
	args_add(a, "microvm,rtc=on,memory-backend=mem");
	args_add(a, "-accel");
	/* TCG reserves 1 GiB of translation buffer per process by default. */
	args_add(a, "%s", strcmp(s->accel, "kvm") == 0 ? "kvm" : "tcg,tb-size=64");
	args_add(a, "-cpu");
	args_add(a, "%s", strcmp(s->accel, "kvm") == 0 ? "host" : "max");
	args_add(a, "-smp");
	args_add(a, "%u", c->vcpus);
	args_add(a, "-m");
	args_add(a, "%uM", c->mem_mib);
	args_add(a, "-object");
	args_add(a, "memory-backend-file,id=mem,size=%uM,mem-path=/proc/self/fd/%d,share=%s", c->mem_mib, FD_MEM,
		 s->ram_fd >= 0 ? "off" : "on");
	args_add(a, "-nodefaults");
	args_add(a, "-no-reboot"); /* a guest that panics or reboots ends its VMM: the supervisor sees it */
	args_add(a, "-no-user-config");
	args_add(a, "-display");
	args_add(a, "none");
	args_add(a, "-kernel");
	args_add(a, "/proc/self/fd/%d", FD_KERNEL);
	if (c->initrd) {
		args_add(a, "-initrd");
		args_add(a, "/proc/self/fd/%d", FD_INITRD);
	}
	args_add(a, "-append");
	args_add(a, "%s", s->cmdline);
	args_add(a, "-chardev");
	args_add(a, "file,id=con,path=/proc/self/fd/%d,append=on", FD_CONSOLE);
	args_add(a, "-serial");
	args_add(a, "chardev:con");
	if (s->disk_path) {
		args_add(a, "-drive");
		args_add(a, "id=root,file=/proc/self/fd/%d,format=raw,if=none,discard=unmap", FD_DISK);
		args_add(a, "-device");
		args_add(a, "virtio-blk-device,drive=root");
	}
	if (c->net) {
		/* the tap of the network slot whose namespace the VMM runs in; MAC as baked */
		args_add(a, "-netdev");
		args_add(a, "tap,id=net0,fd=%d", FD_TAP);
		args_add(a, "-device");
		args_add(a, "virtio-net-device,netdev=net0,mac=" NETPOOL_GUEST_MAC);
	}
	args_add(a, "-device");
	args_add(a, "virtio-serial-device");
	args_add(a, "-chardev");
	args_add(a, "socket,id=agent,fd=%d,server=on,wait=off", FD_AGENT);
	args_add(a, "-device");
	args_add(a, "virtserialport,chardev=agent,name=org.emberfs.agent");
	args_add(a, "-chardev");
	args_add(a, "socket,id=qmp,fd=%d,server=on,wait=off", FD_CONTROL);
	args_add(a, "-mon");
	args_add(a, "chardev=qmp,mode=control");
	args_add(a, "-sandbox");
	args_add(a, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
	if (s->incoming_fd >= 0) {
		/* capabilities must be set before the stream is read: see qemu_connect */
		args_add(a, "-incoming");
		args_add(a, "defer");
	}
	a->v[a->n] = NULL;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int qemu_stream_head_len(const uint8_t *b, size_t n, size_t *ret)
{
	size_t p = 9;

	if (n < 13 || memcmp(b, "QEVM\0\0\0\3", 8) != 0 || b[8] != 0x07 /* QEMU_VM_CONFIGURATION */)
		return -EPROTO;
	p += 4 + (size_t)be32(b + 9); /* the machine type's name */
	while (p < n && b[p] == 0x05 /* QEMU_VM_SUBSECTION: id length, id, version, fields */) {
		char id[256];
		size_t l;

		if (p + 2 > n || p + 2 + (l = b[p + 1]) + 4 > n)
			return -EPROTO;
		memcpy(id, b + p + 2, l);
		id[l] = '\0';
		p += 2 + l + 4;
		if (strcmp(id, "configuration/capabilities") == 0) {
			uint32_t count;

			if (p + 4 > n || (count = be32(b + p)) > 64)
				return -EPROTO;
			p += 4;
			for (uint32_t i = 0; i < count; i++) {
				if (p >= n)
					return -EPROTO;
				p += 1 + (size_t)b[p];
			}
		} else if (strcmp(id, "configuration/target-page-bits") == 0) {
			p += 4;
		} else if (strcmp(id, "configuration/uuid") == 0) {
			p += 16;
		} else {
			return -EPROTO; /* a field this driver does not know: never guess its length */
		}
	}
	if (p >= n) /* a section follows the configuration */
		return -EPROTO;
	*ret = p;
	return 0;
}

static char *head_path(const char *control_path)
{
	return strjoin(control_path, ".head", NULL);
}

/*
 * A VMM on a private base: the stream's header and configuration section,
 * kept next to its control socket (an adopting daemon finds it there too),
 * what its device-state-only snapshots are prefixed with.
 */
static int keep_stream_head(const char *control_path, int fd)
{
	_cleanup_free_ char *path = head_path(control_path);
	uint8_t b[4096];
	ssize_t n = pread(fd, b, sizeof(b), 0);
	size_t len;

	if (!path)
		return -ENOMEM;
	if (n < 0)
		return -errno;
	if (qemu_stream_head_len(b, (size_t)n, &len) < 0) {
		log_warn("qemu: the snapshot's stream does not begin with a configuration section this driver reads");
		return -EPROTO;
	}
	return write_file_atomic(path, (const char *)b, len, false);
}

static int qemu_spawn(const char *binary, const struct vmm_spec *s, struct vmm **ret)
{
	_cleanup_free_ struct qemu *v = calloc(1, sizeof(*v));
	struct args a = { .n = 0 };
	int r;

	if (!v)
		return -ENOMEM;
	if (s->ram_fd >= 0) { /* a private base is only ever restored onto */
		if (s->incoming_fd < 0)
			return -EINVAL;
		if ((r = keep_stream_head(s->control_path, s->incoming_fd)) < 0)
			return r;
	}
	build_args(binary, s, &a);
	r = jail_spawn("QEMU", binary, s, a.v, &v->proc);
	args_free(&a);
	if (r < 0)
		return r;
	pthread_mutex_init(&v->qmp_lock, NULL);
	v->qmp = -1;
	v->qmp_path = strdup(s->control_path);
	v->incoming = s->incoming_fd >= 0;
	v->tcg = strcmp(s->accel, "kvm") != 0;
	v->vcpus = s->cfg->vcpus ? s->cfg->vcpus : 1;
	v->base.ops = &qemu_ops;
	*ret = &TAKE_PTR(v)->base;
	return 0;
}

static int read_line(struct qemu *v, uint64_t deadline, char **ret)
{
	for (;;) {
		char *nl = memchr(v->buf, '\n', v->len);
		struct pollfd p = { .fd = v->qmp, .events = POLLIN };
		int64_t left = ((int64_t)deadline - (int64_t)now_ns()) / 1000000;
		ssize_t n;
		int pr;

		if (nl) {
			size_t l = (size_t)(nl - v->buf);

			*ret = strndup(v->buf, l);
			memmove(v->buf, nl + 1, v->len - l - 1);
			v->len -= l + 1;
			return *ret ? 0 : -ENOMEM;
		}
		if (v->len == sizeof(v->buf))
			return -EMSGSIZE;
		if (left <= 0)
			return -ETIMEDOUT;
		pr = poll(&p, 1, (int)left);
		if (pr < 0 && errno != EINTR)
			return -errno;
		if (pr <= 0)
			continue; /* timed out or interrupted: the deadline check decides */
		n = read(v->qmp, v->buf + v->len, sizeof(v->buf) - v->len);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		v->len += (size_t)n;
	}
}

/*
 * Events the driver keeps: RESUME (a restore's vCPUs run) and SHUTDOWN,
 * whose reason is QEMU's own account of why it is ending (guest-reset,
 * guest-shutdown, host-signal, ...): with -no-reboot a guest's reset or
 * power-off ends the process, and only this tells them apart from the host.
 */
static void note_event(struct qemu *v, json_object *o)
{
	json_object *x, *data, *reason;
	const char *ev;
	size_t k = 0;

	if (!json_object_object_get_ex(o, "event", &x) || !(ev = json_object_get_string(x)))
		return;
	if (strcmp(ev, "RESUME") == 0) {
		v->resumed = true;
		return;
	}
	if (strcmp(ev, "SHUTDOWN") != 0 || !json_object_object_get_ex(o, "data", &data) ||
	    !json_object_object_get_ex(data, "reason", &reason) || !json_object_is_type(reason, json_type_string))
		return;
	/* an enum of QEMU's: keep its letters and dashes only */
	for (const char *p = json_object_get_string(reason); *p && k < sizeof(v->shutdown) - 1; p++)
		if ((*p >= 'a' && *p <= 'z') || *p == '-')
			v->shutdown[k++] = *p;
	v->shutdown[k] = '\0';
}

/* The next JSON object from QMP, noting the events the driver keeps. qmp_lock held. */
static int qmp_next(struct qemu *v, uint64_t deadline, json_object **ret)
{
	_cleanup_free_ char *line = NULL;
	json_object *o;
	int r = read_line(v, deadline, &line);

	if (r < 0)
		return r;
	o = json_tokener_parse(line);
	if (!o)
		return -EPROTO;
	note_event(v, o);
	*ret = o;
	return 0;
}

/* Sends one command (optionally with an fd) and returns its "return" value. qmp_lock held. */
static int qmp_exec_locked(struct qemu *v, const char *cmd, int pass_fd, unsigned timeout_ms, json_object **ret)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	size_t len = strlen(cmd);
	struct iovec iov = { .iov_base = (void *)cmd, .iov_len = len };
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (pass_fd >= 0) {
		struct cmsghdr *c;

		m.msg_control = cbuf;
		m.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	if (sendmsg(v->qmp, &m, MSG_NOSIGNAL) != (ssize_t)len)
		return -EIO;
	for (;;) {
		_cleanup_json_ json_object *o = NULL;
		json_object *x;
		int r = qmp_next(v, deadline, &o);

		if (r < 0)
			return r;
		if (json_object_object_get_ex(o, "return", &x)) {
			if (ret)
				*ret = json_object_get(x);
			return 0;
		}
		if (json_object_object_get_ex(o, "error", &x)) {
			log_debug("qmp: %s failed: %s", cmd, json_object_to_json_string(x));
			return -EIO;
		}
		/* an event: qmp_next noted it */
	}
}

static int qmp_exec(struct qemu *v, const char *cmd, int pass_fd, unsigned timeout_ms, json_object **ret)
{
	int r;

	pthread_mutex_lock(&v->qmp_lock);
	r = qmp_exec_locked(v, cmd, pass_fd, timeout_ms, ret);
	pthread_mutex_unlock(&v->qmp_lock);
	return r;
}

static int qemu_connect(struct vmm *vm, unsigned timeout_ms, const atomic_bool *cancel)
{
	struct qemu *v = to_qemu(vm);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_free_ char *greeting = NULL;
	int r;

	if (strlen(v->qmp_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, v->qmp_path);
	v->qmp = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (v->qmp < 0)
		return -errno;
	/* QEMU makes its socket during start-up: retry, sleeping on the pidfd so a dying VMM is seen at once. */
	while (connect(v->qmp, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != ENOENT && errno != ECONNREFUSED)
			return -errno;
		if (cancel && atomic_load(cancel))
			return -ECANCELED;
		if (jail_dead(&v->proc, 1))
			return -ECHILD;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
	}
	pthread_mutex_lock(&v->qmp_lock);
	r = read_line(v, deadline, &greeting);
	pthread_mutex_unlock(&v->qmp_lock);
	if (r < 0 || !strstr(greeting, "\"QMP\""))
		return jail_dead(&v->proc, 0) ? -ECHILD : -EPROTO;
	r = qmp_exec(v, "{\"execute\":\"qmp_capabilities\"}", -1, timeout_ms, NULL);
	/* RAM is in a shared file: migrate device state only, in both directions. */
	if (r == 0)
		r = qmp_exec(v, "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":"
				"[{\"capability\":\"x-ignore-shared\",\"state\":true}]}}", -1, timeout_ms, NULL);
	return r;
}

/*
 * What a VMM's first run translates, faulted in before it runs. TCG writes
 * the code it translates into its buffer from the start upwards, and every
 * new 4 KiB page of it is a page fault, which costs ~11 us on a host that is
 * itself a VM (this project's machines, PVM) against ~0.6 us a page faulted
 * in by the kernel in one pass. A restore and its attach fill ~4.9 MiB of
 * it (the default template); about so much is faulted in, no more: an idle
 * warm slot holds what it translated and ~0.2 MiB besides
 * (docs/architecture.md, "A VMM's first run").
 */
#define TB_PREFAULT_BYTES (5ull << 20)

/*
 * Only a VMM started with -incoming defer: no vCPU runs before its state is
 * loaded, so nothing writes the buffer but the prologue, which TCG wrote at
 * start-up. (A cold boot's vCPUs run from the start: code translated into a
 * page while it was written here would be lost; not prepared.) With several
 * vCPUs the buffer is cut into regions and each vCPU starts translating at
 * the start of its own (the first ones, in the order their threads came up):
 * the bytes are shared between those.
 */
static int qemu_prepare(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);
	uint64_t regions[64][2], each;
	size_t n;
	int r;

	if (!v->tcg || !v->incoming)
		return 0;
	if ((r = ram_code_buffer_find(v->proc.pid, regions, ARRAY_SIZE(regions), &n)) < 0)
		return r;
	if (n > v->vcpus)
		n = v->vcpus;
	each = TB_PREFAULT_BYTES / n / 4096 * 4096;
	for (size_t i = 0; i < n; i++)
		if ((r = ram_populate_anon(v->proc.pid, regions[i][0], regions[i][1] < each ? regions[i][1] : each,
					   NULL)) < 0)
			return r;
	return 0;
}

/*
 * Starts reading the snapshot's device state: fd 3 in the VMM, or state_fd
 * given to it (getfd) when it is another snapshot's, whose stream head it
 * then keeps instead (what its own snapshots are composed with).
 */
static int qemu_restore(struct vmm *vm, int state_fd, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	int r;

	if (!v->incoming)
		return -EINVAL;
	if (state_fd < 0)
		return qmp_exec(v, "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"fd:3\"}}", -1,
				timeout_ms, NULL);
	if ((r = keep_stream_head(v->qmp_path, state_fd)) < 0 ||
	    (r = qmp_exec(v, "{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"state\"}}", state_fd, timeout_ms,
			  NULL)) < 0)
		return r;
	return qmp_exec(v, "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"fd:state\"}}", -1, timeout_ms,
			NULL);
}

/*
 * A delta's pages into the private mapping of the base, before any vCPU
 * runs (only a VMM waiting for its incoming state), the base checked to be
 * the delta's.
 */
static int qemu_load_delta(struct vmm *vm, const struct ram_delta *d, int mem_fd)
{
	struct qemu *v = to_qemu(vm);
	struct ram_base_id id;
	uint64_t addr, len;
	int r;

	if (!v->incoming)
		return -EINVAL;
	if ((r = ram_base_find(v->proc.pid, &addr, &len, &id)) < 0)
		return r == -ENOENT ? -EXDEV : r;
	if (!ram_base_id_equal(&id, &d->base))
		return -EXDEV;
	return ram_load_delta(v->proc.pid, addr, len, mem_fd, d);
}

static int query_string(struct qemu *v, const char *cmd, const char *key, unsigned timeout_ms, char *out,
			size_t outlen)
{
	_cleanup_json_ json_object *r = NULL;
	json_object *x;
	int rc = qmp_exec(v, cmd, -1, timeout_ms, &r);

	if (rc < 0)
		return rc;
	if (!json_object_object_get_ex(r, key, &x))
		return -EPROTO;
	snprintf(out, outlen, "%s", json_object_get_string(x));
	return 0;
}

/* Waits for the RESUME event the restored VM sends when its vCPUs start. */
static int wait_resume_event(struct qemu *v, unsigned slice_ms)
{
	uint64_t deadline = now_ns() + (uint64_t)slice_ms * 1000000;
	int r = 0;

	pthread_mutex_lock(&v->qmp_lock);
	while (!v->resumed && r == 0) {
		_cleanup_json_ json_object *o = NULL;

		r = qmp_next(v, deadline, &o);
	}
	pthread_mutex_unlock(&v->qmp_lock);
	return r;
}

static int qemu_query(struct vmm *vm, char *state, size_t len, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	return query_string(v, "{\"execute\":\"query-status\"}", "status", timeout_ms, state, len);
}

static int qemu_pause(struct vmm *vm, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	return qmp_exec(v, "{\"execute\":\"stop\"}", -1, timeout_ms, NULL);
}

static int qemu_resume(struct vmm *vm, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	return qmp_exec(v, "{\"execute\":\"cont\"}", -1, timeout_ms, NULL);
}

static int qemu_wait_running(struct vmm *vm, unsigned timeout_ms)
{
	struct qemu *v = to_qemu(vm);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000;

	for (;;) {
		char st[64];
		int r = wait_resume_event(v, 50);

		if (r == 0)
			return 0;
		if (r != -ETIMEDOUT)
			return jail_dead(&v->proc, 0) ? -ECHILD : r;
		/* No event yet: ask, and start a VM that a paused stream left paused. */
		r = qemu_query(&v->base, st, sizeof(st), timeout_ms);
		if (r < 0)
			return r;
		if (strcmp(st, "running") == 0)
			return 0;
		if (strcmp(st, "paused") == 0 && (r = qemu_resume(&v->base, timeout_ms)) < 0)
			return r;
		if (strcmp(st, "paused") != 0 && strcmp(st, "inmigrate") != 0 && strcmp(st, "prelaunch") != 0 &&
		    strcmp(st, "restore-vm") != 0) {
			log_debug("qemu: unexpected run state \"%s\" while restoring", st);
			return -EIO;
		}
		if (now_ns() > deadline)
			return -ETIMEDOUT;
	}
}

#define DEVICE_STATE_MAX (64u << 20)

/*
 * The device state alone, as xen-save-devices-state writes it (a stream of
 * its own: header, device sections, end), to path through an fd set (the
 * VMM opens nothing of ours by path). The vCPUs are stopped.
 */
static int save_device_state(struct qemu *v, const char *path, unsigned timeout_ms)
{
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	_cleanup_json_ json_object *added = NULL;
	json_object *x;
	char cmd[160];
	int set, r, r2;

	if (fd < 0)
		return -errno;
	if ((r = qmp_exec(v, "{\"execute\":\"add-fd\"}", fd, timeout_ms, &added)) < 0)
		return r;
	if (!json_object_object_get_ex(added, "fdset-id", &x))
		return -EPROTO;
	set = json_object_get_int(x);
	/* live=false: true would also give up the disk's locks, for another host's QEMU to take */
	snprintf(cmd, sizeof(cmd),
		 "{\"execute\":\"xen-save-devices-state\",\"arguments\":{\"filename\":\"/dev/fdset/%d\",\"live\":false}}", set);
	r = qmp_exec(v, cmd, -1, timeout_ms, NULL);
	snprintf(cmd, sizeof(cmd), "{\"execute\":\"remove-fd\",\"arguments\":{\"fdset-id\":%d}}", set);
	r2 = qmp_exec(v, cmd, -1, timeout_ms, NULL);
	return r < 0 ? r : r2;
}

/* head (the configuration the VMM was restored with) + the device sections of dev (after its own header) */
static int compose_state(const char *head, const char *dev, const char *state_path)
{
	_cleanup_free_ char *h = NULL, *d = NULL;
	_cleanup_free_ uint8_t *all = NULL;
	_cleanup_close_ int out = -1;
	size_t hl, dl, got;
	int r;

	if ((r = read_file(head, 4096, &h, &hl)) < 0 || (r = read_file(dev, DEVICE_STATE_MAX, &d, &dl)) < 0)
		return r;
	if (dl < 9 || memcmp(d, "QEVM\0\0\0\3", 8) != 0)
		return -EPROTO;
	if (!(all = malloc(hl + dl - 8)))
		return -ENOMEM;
	memcpy(all, h, hl);
	memcpy(all + hl, d + 8, dl - 8);
	/* the head is a whole configuration section, and only that */
	if (qemu_stream_head_len(all, hl + dl - 8, &got) < 0 || got != hl)
		return -EPROTO;
	if ((out = open(state_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		return -errno;
	return write_all(out, all, hl + dl - 8);
}

/*
 * A VMM on a private base (mapped at addr, len bytes): stop, device state,
 * the guest's own pages into mem_path, the stream composed.
 */
static int snapshot_private(struct qemu *v, uint64_t addr, uint64_t len, const char *state_path, const char *mem_path,
			    unsigned timeout_ms, struct ram_delta *delta)
{
	_cleanup_free_ char *dev = strjoin(state_path, ".dev", NULL), *head = head_path(v->qmp_path);
	_cleanup_close_ int mem = -1;
	uint64_t pages = 0;
	struct stat st;
	int r;

	if (!dev || !head)
		return -ENOMEM;
	if ((r = qmp_exec(v, "{\"execute\":\"stop\"}", -1, timeout_ms, NULL)) < 0)
		return r;
	r = save_device_state(v, dev, timeout_ms);
	if (r == 0 && (mem = open(mem_path, O_WRONLY | O_CLOEXEC)) < 0)
		r = -errno;
	/* empty: restored from a lazy file, nothing of the base in it yet (template.c, lazy_clone) */
	if (r == 0 && fstat(mem, &st) < 0)
		r = -errno;
	if (r == 0 && st.st_size == 0) {
		r = ram_write_all(v->proc.pid, addr, len, mem, &pages);
		if (delta) /* the file is all of it: no delta */
			ram_delta_free(delta);
	} else if (r == 0) {
		r = ram_write_private(v->proc.pid, addr, len, mem, &pages, delta);
	}
	if (r == 0)
		r = compose_state(head, dev, state_path);
	unlink(dev);
	if (r == 0)
		log_debug("qemu: snapshot of a private base: %" PRIu64 " pages of the guest's own", pages);
	return r;
}

static int qemu_snapshot(struct vmm *vm, const char *state_path, const char *mem_path, unsigned timeout_ms,
			 struct ram_delta *delta)
{
	struct qemu *v = to_qemu(vm);
	uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000, addr, len;
	struct ram_base_id id;
	_cleanup_close_ int fd = -1;
	int r;

	if (delta)
		ram_delta_free(delta);
	if ((r = ram_base_find(v->proc.pid, &addr, &len, &id)) == 0) {
		if (delta)
			delta->base = id;
		r = snapshot_private(v, addr, len, state_path, mem_path, timeout_ms, delta);
		if (r < 0 && delta)
			ram_delta_free(delta);
		return r;
	}
	if (r != -ENOENT)
		return r;
	if ((fd = open(state_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		return -errno;
	/*
	 * No "stop" first: migration stops the vCPUs itself before it saves device
	 * state, and a stream from a running VM makes the restored one run without
	 * a "cont" round trip.
	 */
	if ((r = qmp_exec(v, "{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"snap\"}}", fd, timeout_ms, NULL)) < 0 ||
	    (r = qmp_exec(v, "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"fd:snap\"}}", -1, timeout_ms, NULL)) < 0)
		return r;
	for (;;) {
		char st[64];

		r = query_string(v, "{\"execute\":\"query-migrate\"}", "status", timeout_ms, st, sizeof(st));
		if (r < 0)
			return r;
		if (strcmp(st, "completed") == 0)
			break;
		if (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0)
			return -EIO;
		if (now_ns() > deadline)
			return -ETIMEDOUT;
		if (jail_dead(&v->proc, 1))
			return -ECHILD;
	}
	return 0; /* complete; not synced (driver.h) */
}

static bool qemu_alive(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);

	return !v->proc.exited && !jail_dead(&v->proc, 0);
}

static pid_t qemu_pid(struct vmm *vm)
{
	return to_qemu(vm)->proc.pid;
}

static int qemu_wait_exit(struct vmm *vm)
{
	return jail_wait_exit(&to_qemu(vm)->proc);
}

static void qemu_kill(struct vmm *vm)
{
	jail_kill(&to_qemu(vm)->proc);
}

static void qemu_free(struct vmm *vm)
{
	struct qemu *v = to_qemu(vm);

	if (!v)
		return;
	jail_release(&v->proc);
	if (v->qmp >= 0)
		close(v->qmp);
	pthread_mutex_destroy(&v->qmp_lock);
	free(v->qmp_path);
	free(v);
}

/*
 * QEMU's reason for ending (its SHUTDOWN event), once it has exited: what
 * it sent before the end still waits in the socket, read here (at most
 * 1 MiB, no waiting). A command in flight at the exit saw its end already.
 */
static int qemu_shutdown_reason(struct vmm *vm, char *buf, size_t len)
{
	struct qemu *v = to_qemu(vm);
	size_t total = 0;
	int r;

	pthread_mutex_lock(&v->qmp_lock);
	while (v->qmp >= 0 && total < (1u << 20)) {
		char *nl = memchr(v->buf, '\n', v->len);
		ssize_t n;

		if (nl) {
			size_t l = (size_t)(nl - v->buf);
			json_object *o;

			*nl = '\0';
			if ((o = json_tokener_parse(v->buf))) {
				note_event(v, o);
				json_object_put(o);
			}
			memmove(v->buf, nl + 1, v->len - l - 1);
			v->len -= l + 1;
			continue;
		}
		if (v->len == sizeof(v->buf))
			v->len = 0; /* a line longer than any event: not one */
		n = recv(v->qmp, v->buf + v->len, sizeof(v->buf) - v->len, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		v->len += (size_t)n;
		total += (size_t)n;
	}
	r = v->shutdown[0] ? 0 : -ENOENT;
	if (r == 0)
		snprintf(buf, len, "%s", v->shutdown);
	pthread_mutex_unlock(&v->qmp_lock);
	return r;
}

static int qemu_adopt(pid_t pid, int pidfd, const char *control_path, char **cgdirs, uid_t uid_base, struct vmm **ret)
{
	struct qemu *v = calloc(1, sizeof(*v));

	if (!v || !(v->qmp_path = strdup(control_path))) {
		free(v);
		return -ENOMEM;
	}
	pthread_mutex_init(&v->qmp_lock, NULL);
	jail_adopt(&v->proc, pid, pidfd, cgdirs, uid_base);
	v->qmp = -1;
	v->base.ops = &qemu_ops;
	*ret = &v->base;
	return 0;
}

const struct vmm_ops qemu_ops = {
	.name = "qemu",
	.ram_base = true,
	.restore_capability = "qemu-x-ignore-shared-v1",
	.default_binary = QEMU_BINARY,
	.version = qemu_version,
	.spawn = qemu_spawn,
	.connect = qemu_connect,
	.prepare = qemu_prepare,
	.restore = qemu_restore,
	.load_delta = qemu_load_delta,
	.wait_running = qemu_wait_running,
	.query = qemu_query,
	.pause = qemu_pause,
	.resume = qemu_resume,
	.snapshot = qemu_snapshot,
	.pid = qemu_pid,
	.alive = qemu_alive,
	.wait_exit = qemu_wait_exit,
	.kill = qemu_kill,
	.free = qemu_free,
	.adopt = qemu_adopt,
	.shutdown_reason = qemu_shutdown_reason,
};
