/*
 * emberfs-agent: the in-guest agent of an emberfs microVM, and its /init.
 *
 * As PID 1 it mounts the kernel filesystems, loads the virtio modules named
 * in /etc/emberfs/modules, switches to the root disk given by emberfs.root=,
 * opens the virtio-serial port named by emberfs.port= and then serves the
 * host over that port forever.
 *
 * Protocol (version 3, docs/protocol.md is the contract): one JSON object
 * per '\n'-terminated line in each direction; a line with "bin": N is
 * followed by N raw bytes of payload (file data, process output and input).
 * The first line is {"event":"ready","version":3,"boot_ms":N}.  Every
 * request {"id":N,"op":"..."} gets exactly one reply with its id and "ok",
 * failures {"ok":false,"errno":E,"error":"text"}; some replies are deferred
 * (exec, out, in, wait).  Ops: ping, exec, attach; file ops on guest paths
 * and per-connection file handles; streaming processes (spawn, out, in,
 * signal, status, wait, release).  Replies only go to the connection that
 * carried the request; a hangup closes that connection's file handles; its
 * spawned processes run on until the next host's attach keeps them (by
 * handle) or releases them.  Memory stays bounded: requests are not read
 * while the output queue is full, process output is not read while its
 * buffer is full (back-pressure onto the process).
 *
 * Build: cc -static -O2 -Wall -Wextra -Werror -o emberfs-agent agent.c -ljson-c
 */
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

static int console_fd = -1;

static void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One write() per line so lines from the agent never interleave. */
static void agent_log(const char *fmt, ...)
{
	static const char prefix[] = "emberfs-agent: ";
	char line[512];
	size_t n = sizeof(prefix) - 1;
	va_list ap;
	int r;

	memcpy(line, prefix, n);
	va_start(ap, fmt);
	r = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (r > 0)
		n += MIN((size_t)r, sizeof(line) - n - 2);
	line[n++] = '\n';
	if (write(console_fd >= 0 ? console_fd : STDERR_FILENO, line, n) < 0)
		return;
}

static uint64_t clock_ms(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ------------------------------------------------------------------ */
/* Growable byte buffers and string vectors                            */

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

static void buf_free(struct buf *b)
{
	free(b->data);
	*b = (struct buf){ 0 };
}

/* Make room for @extra more bytes; never grows the buffer past @limit. */
static int buf_reserve(struct buf *b, size_t extra, size_t limit)
{
	size_t want = b->len + extra;
	size_t cap;
	char *p;

	if (want <= b->cap)
		return 0;
	if (want > limit)
		return -ENOBUFS;
	cap = b->cap ? b->cap : 4096;
	while (cap < want)
		cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
	cap = MIN(cap, limit);
	p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

static int buf_append(struct buf *b, const void *p, size_t n, size_t limit)
{
	int r = buf_reserve(b, n, limit);

	if (r < 0)
		return r;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

/* A NULL-terminated vector of malloc'd strings, as execve() wants them. */
struct strv {
	char **v;
	size_t n;
};

static void strv_free(struct strv *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	*s = (struct strv){ 0 };
}

/* Takes ownership of @str, also on failure. */
static int strv_push(struct strv *s, char *str)
{
	char **v;

	if (!str)
		return -ENOMEM;
	v = realloc(s->v, (s->n + 2) * sizeof(*v));
	if (!v) {
		free(str);
		return -ENOMEM;
	}
	v[s->n++] = str;
	v[s->n] = NULL;
	s->v = v;
	return 0;
}

/* Set KEY=VALUE, replacing an earlier entry of the same key. */
static int env_set(struct strv *env, const char *key, size_t klen, const char *val)
{
	char *kv;

	if (asprintf(&kv, "%.*s=%s", (int)klen, key, val) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < env->n; i++) {
		if (!strncmp(env->v[i], kv, klen + 1)) {
			free(env->v[i]);
			env->v[i] = kv;
			return 0;
		}
	}
	return strv_push(env, kv);
}

/* Apply entries "K=V" of @from onto @env. */
static int env_merge(struct strv *env, const struct strv *from)
{
	for (size_t i = 0; i < from->n; i++) {
		const char *eq = strchr(from->v[i], '=');
		int r;

		if (!eq)
			continue;
		r = env_set(env, from->v[i], eq - from->v[i], eq + 1);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Base64 (RFC 4648, standard alphabet, padded on output)              */

static const char b64_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_encoded_len(size_t n)
{
	return (n + 2) / 3 * 4;
}

static void b64_encode(const unsigned char *in, size_t n, char *out)
{
	size_t i;

	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = in[i] << 16 | in[i + 1] << 8 | in[i + 2];

		*out++ = b64_chars[v >> 18];
		*out++ = b64_chars[(v >> 12) & 63];
		*out++ = b64_chars[(v >> 6) & 63];
		*out++ = b64_chars[v & 63];
	}
	if (i < n) {
		uint32_t v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0);

		*out++ = b64_chars[v >> 18];
		*out++ = b64_chars[(v >> 12) & 63];
		*out++ = i + 1 < n ? b64_chars[(v >> 6) & 63] : '=';
		*out++ = '=';
	}
}

static int b64_value(unsigned char c)
{
	const char *p = c ? strchr(b64_chars, c) : NULL;

	return p ? (int)(p - b64_chars) : -1;
}

/* Accepts padded and unpadded input; anything else is -EINVAL. */
static int b64_decode(const char *in, size_t n, unsigned char **ret, size_t *ret_len)
{
	_cleanup_free_ unsigned char *out = NULL;
	uint32_t acc = 0;
	size_t len = 0, bits = 0;

	while (n > 0 && in[n - 1] == '=' && n % 4 != 1)
		n--;
	if (n % 4 == 1)
		return -EINVAL;
	out = malloc(n / 4 * 3 + 3);
	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		int v = b64_value(in[i]);

		if (v < 0)
			return -EINVAL;
		acc = acc << 6 | v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[len++] = acc >> bits;
		}
	}
	*ret = out;
	out = NULL;
	*ret_len = len;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Boot: mounts, modules, root switch, loopback, port                  */

static char kernel_cmdline[4096];

static int mount_at(const char *src, const char *dst, const char *type,
		    unsigned long flags, const char *data)
{
	if (mkdir(dst, 0755) < 0 && errno != EEXIST)
		return -errno;
	if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY)
		return -errno;
	return 0;
}

/*
 * The kernel leaves fds 0-2 closed when the initramfs has no /dev/console.
 * Fill them so that pipes never land on 0-2, where the child's dup2() onto
 * the same number would be a no-op that keeps O_CLOEXEC.
 */
static void init_stdio(void)
{
	for (int fd = 0; fd < 3; fd++) {
		int n;

		if (fcntl(fd, F_GETFD) >= 0)
			continue;
		n = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (n >= 0 && n != fd) {
			dup3(n, fd, O_CLOEXEC);
			close(n);
		}
	}
}

static void init_early(void)
{
	static const struct {
		const char *src, *dst, *type;
		unsigned long flags;
	} fs[] = {
		{ "devtmpfs", "/dev", "devtmpfs", MS_NOSUID },
		{ "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC },
		{ "sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC },
	};
	int errs[3];

	for (size_t i = 0; i < 3; i++)
		errs[i] = mount_at(fs[i].src, fs[i].dst, fs[i].type, fs[i].flags, NULL);
	init_stdio();
	console_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	for (size_t i = 0; i < 3; i++)
		if (errs[i] < 0)
			agent_log("mount %s: %s", fs[i].dst, strerror(-errs[i]));
}

static int module_load(const char *name)
{
	char path[PATH_MAX];
	_cleanup_close_ int fd = -1;

	/* Names are relative to the module directory: no way out of it. */
	if (name[0] == '/' || strstr(name, ".."))
		return -EINVAL;
	if (snprintf(path, sizeof(path), AGENT_MODULES_DIR "%s", name) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* The list is in dependency order; a failed module is logged, not fatal. */
static void init_modules(void)
{
	_cleanup_free_ char *line = NULL;
	size_t size = 0;
	FILE *f;

	f = fopen(AGENT_MODULES_LIST, "re");
	if (!f)
		return;
	while (getline(&line, &size, f) > 0) {
		char *name = line + strspn(line, " \t");
		int r;

		name[strcspn(name, " \t\r\n")] = '\0';
		if (!name[0] || name[0] == '#')
			continue;
		r = module_load(name);
		if (r < 0)
			agent_log("module %s: %s", name, strerror(-r));
	}
	fclose(f);
}

static void cmdline_read(void)
{
	_cleanup_close_ int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return;
	n = read(fd, kernel_cmdline, sizeof(kernel_cmdline) - 1);
	kernel_cmdline[n > 0 ? n : 0] = '\0';
}

/* The value of the last "key=value" word on the kernel command line. */
static int cmdline_get(const char *key, char *out, size_t size)
{
	size_t klen = strlen(key);
	const char *p = kernel_cmdline;
	int r = -ENOENT;

	while (*p) {
		size_t wlen;

		p += strspn(p, " \t\n");
		wlen = strcspn(p, " \t\n");
		if (wlen > klen && !strncmp(p, key, klen) && p[klen] == '=') {
			size_t vlen = wlen - klen - 1;

			if (vlen >= size)
				return -ENAMETOOLONG;
			memcpy(out, p + klen + 1, vlen);
			out[vlen] = '\0';
			r = 0;
		}
		p += wlen;
	}
	return r;
}

/*
 * Devices appear asynchronously after their module loads: retry @probe
 * every millisecond until it stops saying -EAGAIN or @timeout_ms passes.
 */
static int wait_until(int (*probe)(void *ctx), void *ctx, unsigned int timeout_ms)
{
	uint64_t deadline = clock_ms(CLOCK_MONOTONIC) + timeout_ms;
	int r;

	for (;;) {
		r = probe(ctx);
		if (r != -EAGAIN || clock_ms(CLOCK_MONOTONIC) >= deadline)
			return r;
		sleep_ms(1);
	}
}

static int probe_path(void *ctx)
{
	return access(ctx, F_OK) == 0 ? 0 : -EAGAIN;
}

static int root_switch(const char *dev)
{
	static const char *const moves[] = { "/dev", "/proc", "/sys" };
	char dst[64];
	int r;

	r = wait_until(probe_path, (void *)dev, DEVICE_WAIT_MS);
	if (r < 0)
		return r == -EAGAIN ? -ENODEV : r;
	r = mount_at(dev, AGENT_NEWROOT, "ext4", 0, NULL);
	if (r < 0)
		return r;
	for (size_t i = 0; i < 3; i++) {
		snprintf(dst, sizeof(dst), AGENT_NEWROOT "%s", moves[i]);
		mkdir(dst, 0755); /* an image may lack them (a distroless one) */
		r = mount_at(moves[i], dst, NULL, MS_MOVE, NULL);
		if (r < 0)
			return r;
	}
	if (chdir(AGENT_NEWROOT) < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 ||
	    chroot(".") < 0 || chdir("/") < 0)
		return -errno;
	return 0;
}

/*
 * /etc/machine-id is a link to MACHINE_ID_RUN (tmpfs), made once at boot and
 * so part of every snapshot's disk: an attach then writes its fresh id to
 * memory, not to the disk journal, on the activation path.
 */
#define MACHINE_ID_RUN "/run/machine-id"

static void machine_id_link(void)
{
	char target[64];
	ssize_t n = readlink("/etc/machine-id", target, sizeof(target) - 1);

	if (n == (ssize_t)strlen(MACHINE_ID_RUN) && memcmp(target, MACHINE_ID_RUN, (size_t)n) == 0)
		return;
	if ((unlink("/etc/machine-id") < 0 && errno != ENOENT) || symlink(MACHINE_ID_RUN, "/etc/machine-id") < 0)
		agent_log("/etc/machine-id -> " MACHINE_ID_RUN ": %m");
}

static void init_root(void)
{
	static const struct {
		const char *dir, *opts;
	} tmpfs[] = { { "/tmp", "mode=1777" }, { "/run", "mode=0755" } };
	char dev[256];
	struct stat st;
	int r;

	if (cmdline_get("emberfs.root", dev, sizeof(dev)) == 0) {
		r = root_switch(dev);
		if (r < 0)
			agent_log("root %s: %s (staying in the initramfs)", dev, strerror(-r));
	}
	for (size_t i = 0; i < 2; i++) {
		mkdir(tmpfs[i].dir, 0755); /* an image may lack them */
		if (stat(tmpfs[i].dir, &st) < 0 || !S_ISDIR(st.st_mode))
			continue;
		if (mount("tmpfs", tmpfs[i].dir, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs[i].opts) < 0)
			agent_log("mount %s: %m", tmpfs[i].dir);
	}
	machine_id_link();
}

static int net_lo_up(void)
{
	_cleanup_close_ int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = { 0 };

	if (fd < 0)
		return -errno;
	strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return -errno;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		return -errno;
	return 0;
}

/* Sets an IPv4 address on ifr's interface; fd is an AF_INET socket. */
static int ifr_set_addr(int fd, struct ifreq *ifr, unsigned long req, in_addr_t a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr->ifr_addr;

	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = a;
	return ioctl(fd, req, ifr) < 0 ? -errno : 0;
}

/*
 * emberfs.net=ADDR/PREFIX,GATEWAY (e.g. 172.16.0.2/30,172.16.0.1): eth0 gets
 * the address, comes up, and the gateway becomes the default route. Done at
 * boot, before the bake's snapshot, so every restored guest keeps it.
 */
static int net_eth0_setup(void)
{
	char spec[96], *slash, *comma;
	_cleanup_close_ int fd = -1;
	struct ifreq ifr = { 0 };
	struct rtentry rt = { 0 };
	struct in_addr addr, gw;
	unsigned long prefix;
	int r;

	if (cmdline_get("emberfs.net", spec, sizeof(spec)) < 0)
		return 0;
	slash = strchr(spec, '/');
	comma = strchr(spec, ',');
	if (!slash || !comma || comma < slash)
		return -EINVAL;
	*slash = *comma = '\0';
	prefix = strtoul(slash + 1, NULL, 10);
	if (inet_pton(AF_INET, spec, &addr) != 1 || inet_pton(AF_INET, comma + 1, &gw) != 1 || prefix < 1 ||
	    prefix > 32)
		return -EINVAL;
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	strncpy(ifr.ifr_name, "eth0", IFNAMSIZ - 1);
	if ((r = ifr_set_addr(fd, &ifr, SIOCSIFADDR, addr.s_addr)) < 0 ||
	    (r = ifr_set_addr(fd, &ifr, SIOCSIFNETMASK, htonl(~0u << (32 - prefix)))) < 0)
		return r;
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return -errno;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		return -errno;
	((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
	((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
	((struct sockaddr_in *)&rt.rt_gateway)->sin_family = AF_INET;
	((struct sockaddr_in *)&rt.rt_gateway)->sin_addr = gw;
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

struct port_probe {
	const char *name;
	int fd;
};

static bool port_name_is(const char *dev, const char *name)
{
	char path[PATH_MAX], got[256];
	_cleanup_close_ int fd = -1;
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", dev);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, got, sizeof(got) - 1);
	if (n <= 0)
		return false;
	got[n] = '\0';
	got[strcspn(got, "\n")] = '\0';
	return !strcmp(got, name);
}

/* The port's name arrives from the host after the port itself: rescan. */
static int probe_port(void *ctx)
{
	struct port_probe *pp = ctx;
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d;
	int r = -EAGAIN;

	d = opendir("/sys/class/virtio-ports");
	if (!d)
		return -EAGAIN;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.' || !port_name_is(de->d_name, pp->name))
			continue;
		snprintf(path, sizeof(path), "/dev/%s", de->d_name);
		pp->fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
		if (pp->fd >= 0)
			r = 0;
		else if (errno != ENOENT)
			r = -errno;
		break;
	}
	closedir(d);
	return r;
}

/* Without its port the agent is useless, but PID 1 must stay: keep trying. */
static int port_open(void)
{
	char name[256] = AGENT_DEFAULT_PORT;
	struct port_probe pp = { .name = name, .fd = -1 };
	int r;

	cmdline_get("emberfs.port", name, sizeof(name));
	r = wait_until(probe_port, &pp, DEVICE_WAIT_MS);
	if (r == 0)
		return pp.fd;
	agent_log("port %s: %s after %d ms, still waiting", name,
		  r == -EAGAIN ? "not found" : strerror(-r), DEVICE_WAIT_MS);
	for (;;) {
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		sleep_ms(10);
		if (probe_port(&pp) == 0)
			return pp.fd;
	}
}

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
struct cred;

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
	int port_fd;
	int sig_fd;
	/*
	 * The port reports POLLHUP while no host is connected.  connected is
	 * what we last saw; gen counts hangups so that replies owed to a
	 * vanished host are not delivered to the next one.  While no host is
	 * connected the port rests out of the poll set (port_idle); the
	 * kernel's SIGIO on a connection change (port_async) ends the rest
	 * early, so the periodic recheck can be slow.
	 */
	bool connected;
	bool port_idle;
	bool port_async;
	bool port_async_failed;
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

static int request_fail(struct request *rq, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Record why @rq failed; returns -@err for the handler to pass up. */
static int request_fail(struct request *rq, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rq->error, sizeof(rq->error), fmt, ap);
	va_end(ap);
	return -err;
}

/* ------------------------------------------------------------------ */
/* Output queue towards the host                                       */

static bool outq_pending(const struct agent *a)
{
	return a->out.len > a->out_head;
}

/* Past this, requests and process output wait until the host reads. */
static bool outq_full(const struct agent *a)
{
	return a->out.len - a->out_head >= OUTQ_HIGH;
}

/* Room for @n more bytes at the tail; compacts before growing. */
static char *outq_reserve(struct agent *a, size_t n)
{
	if (a->out_head > 0 && a->out.len + n > a->out.cap) {
		memmove(a->out.data, a->out.data + a->out_head, a->out.len - a->out_head);
		a->out.len -= a->out_head;
		a->out_head = 0;
	}
	if (buf_reserve(&a->out, n, SIZE_MAX) < 0)
		return NULL;
	return a->out.data + a->out.len;
}

/* Queue a line of @n bytes plus its '\n', whole or not at all. */
static void outq_line(struct agent *a, unsigned int gen, const char *s, size_t n)
{
	char *p;

	if (gen != a->gen)
		return;
	p = outq_reserve(a, n + 1);
	if (!p) {
		agent_log("out of memory queueing a %zu byte reply", n);
		return;
	}
	memcpy(p, s, n);
	p[n] = '\n';
	a->out.len += n + 1;
}

static void outq_json(struct agent *a, unsigned int gen, struct json_object *o)
{
	size_t n;
	const char *s = json_object_to_json_string_length(o, JSON_FLAGS, &n);

	if (s)
		outq_line(a, gen, s, n);
}

/* A rendered line (with its '\n') and its payload, whole or not at all. */
static int outq_bin(struct agent *a, unsigned int gen, const char *head, size_t hn,
		    const void *data, size_t n)
{
	char *p;

	if (gen != a->gen)
		return 0;
	p = outq_reserve(a, hn + n);
	if (!p)
		return -ENOMEM;
	memcpy(p, head, hn);
	memcpy(p + hn, data, n);
	a->out.len += hn + n;
	return 0;
}

/* Drop what the vanished host did not read; keep an unsent ready line. */
static void outq_reset(struct agent *a)
{
	size_t keep = 0;

	if (a->out_written < a->ready_len)
		keep = a->ready_len - a->out_written;
	a->out.len = a->out_head + keep;
	if (!keep) {
		a->out_head = a->out.len = 0;
		if (a->out.cap > (1u << 20))
			buf_free(&a->out);
	}
}

static int port_set_async(struct agent *a, bool on)
{
	int fl = fcntl(a->port_fd, F_GETFL);

	if (fl < 0 || fcntl(a->port_fd, F_SETFL, on ? fl | O_ASYNC : fl & ~O_ASYNC) < 0)
		return -errno;
	a->port_async = on;
	return 0;
}

/* Data or room on the port: a host is there, and SIGIO is not needed. */
static void port_connected(struct agent *a)
{
	a->connected = true;
	if (a->port_async)
		port_set_async(a, false);
}

/* The host hung up: what it sent and had not finished goes. */
static void conn_reset(struct agent *a)
{
	json_object_put(a->pend_msg);
	a->pend_msg = NULL;
	a->pend_len = a->skip = 0;
	buf_free(&a->pend);
	a->broken = false;
	a->in_head = a->in_len = 0;
}

static void port_hangup(struct agent *a)
{
	if (a->connected) {
		a->connected = false;
		a->gen++;
		a->line.len = 0;
		a->discarding = false;
		outq_reset(a);
		conn_reset(a);
		a->ops->hangup(a);
	}
	/*
	 * Arm SIGIO before resting, then look at the port once more: a host
	 * that connected in between sent no signal.
	 */
	if (!a->port_async && !a->port_async_failed) {
		if (port_set_async(a, true) == 0)
			return;
		agent_log("port O_ASYNC: %m (rechecking every %d ms)", PORT_RECHECK_MS);
		a->port_async_failed = true;
	}
	a->port_idle = true;
}

/* Non-blocking: whatever the port takes now; the rest waits for POLLOUT. */
static void outq_flush(struct agent *a)
{
	while (outq_pending(a)) {
		ssize_t n = write(a->port_fd, a->out.data + a->out_head,
				  a->out.len - a->out_head);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			if (errno != EAGAIN) {
				agent_log("port write: %m");
				port_hangup(a);
			}
			return;
		}
		port_connected(a);
		a->out_head += n;
		a->out_written += n;
	}
	a->out_head = a->out.len = 0;
	if (a->out.cap > (1u << 20))
		buf_free(&a->out);
}

static void reply_error(struct agent *a, unsigned int gen, uint64_t id, int err,
			const char *msg)
{
	_cleanup_json_ struct json_object *o = json_object_new_object();

	if (!o)
		return;
	json_object_object_add(o, "id", json_object_new_uint64(id));
	json_object_object_add(o, "ok", json_object_new_boolean(false));
	json_object_object_add(o, "errno", json_object_new_int(err));
	json_object_object_add(o, "error", json_object_new_string(msg && *msg ? msg : strerror(err)));
	outq_json(a, gen, o);
}

/* ------------------------------------------------------------------ */
/* JSON field access                                                    */

static struct json_object *json_field(struct json_object *o, const char *key)
{
	struct json_object *v = NULL;

	if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
		return NULL;
	return v;
}

/* -ENOENT when absent (or null), -EINVAL when not a non-negative integer. */
static int json_get_u64(struct json_object *o, const char *key, uint64_t *ret)
{
	struct json_object *v = json_field(o, key);

	if (!v)
		return -ENOENT;
	if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0)
		return -EINVAL;
	*ret = json_object_get_uint64(v);
	return 0;
}

/* Strings with embedded NULs are refused: they cannot reach the kernel. */
static int json_get_str(struct json_object *o, const char *key, const char **ret, size_t *ret_len)
{
	struct json_object *v = json_field(o, key);
	size_t len;

	if (!v)
		return -ENOENT;
	if (!json_object_is_type(v, json_type_string))
		return -EINVAL;
	len = json_object_get_string_len(v);
	*ret = json_object_get_string(v);
	if (strlen(*ret) != len)
		return -EINVAL;
	if (ret_len)
		*ret_len = len;
	return 0;
}

/* An {"K":"V"} object as "K=V" strings. */
static int json_get_env(struct json_object *o, const char *key, struct strv *ret)
{
	struct json_object *v = json_field(o, key);
	struct strv env = { 0 };

	if (!v)
		return -ENOENT;
	if (!json_object_is_type(v, json_type_object))
		return -EINVAL;
	json_object_object_foreach(v, k, val) {
		const char *s;
		int r = -EINVAL;

		if (json_object_is_type(val, json_type_string)) {
			s = json_object_get_string(val);
			if (k[0] && !strchr(k, '=') && strlen(s) == (size_t)json_object_get_string_len(val))
				r = env_set(&env, k, strlen(k), s);
		}
		if (r < 0) {
			strv_free(&env);
			return r;
		}
	}
	strv_free(ret);
	*ret = env;
	return 0;
}

static int json_get_b64(struct json_object *o, const char *key, unsigned char **ret, size_t *ret_len)
{
	const char *s;
	size_t len;
	int r = json_get_str(o, key, &s, &len);

	if (r < 0)
		return r;
	return b64_decode(s, len, ret, ret_len);
}

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

static void nofile_raise(void)
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

static int op_exec(struct agent *a, struct request *rq, struct json_object *reply)
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
static void stream_read(struct job *j, struct stream *st)
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
static void job_feed_stdin(struct job *j)
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
static void signals_read(struct agent *a)
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

static void jobs_tick(struct agent *a)
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
/* ping, attach                                                          */

static int op_ping(struct agent *a, struct request *rq, struct json_object *reply)
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

static void spawn_status(struct job *j, struct json_object *o);
static void spawn_release(struct agent *a, struct job *j, bool reply);

/*
 * The spawned jobs the attach names become this connection's (what an
 * earlier host started, kept over its hangup: a daemon restarted, a sandbox
 * woken); every other job an earlier host left is released (killed): one of
 * an earlier connection, or any not named when the attach brings a session
 * new to the agent (a restored snapshot or a fork sees no hangup: the
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

static int op_attach(struct agent *a, struct request *rq, struct json_object *reply)
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
/* Request fields                                                       */

/* An absolute guest path: starts with '/', no NUL, at most PATH_BYTES_MAX bytes. */
static int req_path(struct request *rq, const char *key, const char **ret)
{
	size_t len;

	if (json_get_str(rq->msg, key, ret, &len) < 0 || len == 0 || len > PATH_BYTES_MAX ||
	    (*ret)[0] != '/')
		return request_fail(rq, EINVAL, "\"%s\" must be an absolute path of at most %d bytes",
				    key, PATH_BYTES_MAX);
	return 0;
}

static int req_u64(struct request *rq, const char *key, uint64_t min, uint64_t max, uint64_t *ret)
{
	if (json_get_u64(rq->msg, key, ret) < 0 || *ret < min || *ret > max)
		return request_fail(rq, EINVAL, "\"%s\" must be an integer %" PRIu64 "..%" PRIu64,
				    key, min, max);
	return 0;
}

/* The same when the field may be absent: then @def. */
static int req_u64_opt(struct request *rq, const char *key, uint64_t max, uint64_t def, uint64_t *ret)
{
	if (!json_field(rq->msg, key)) {
		*ret = def;
		return 0;
	}
	return req_u64(rq, key, 0, max, ret);
}

static int req_i64(struct request *rq, const char *key, int64_t min, int64_t max, int64_t *ret)
{
	struct json_object *v = json_field(rq->msg, key);

	if (!v || !json_object_is_type(v, json_type_int) ||
	    (*ret = json_object_get_int64(v)) < min || *ret > max)
		return request_fail(rq, EINVAL, "\"%s\" must be an integer %" PRId64 "..%" PRId64,
				    key, min, max);
	return 0;
}

static int req_bool_opt(struct request *rq, const char *key, bool *ret)
{
	struct json_object *v = json_field(rq->msg, key);

	*ret = false;
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return request_fail(rq, EINVAL, "\"%s\" must be a boolean", key);
	*ret = json_object_get_boolean(v);
	return 0;
}

/* An array of @n unsigned integers, each at most @max. */
static int json_u64s(struct json_object *v, size_t n, uint64_t max, uint64_t *out)
{
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != n)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		struct json_object *x = json_object_array_get_idx(v, i);

		if (!json_object_is_type(x, json_type_int) || json_object_get_int64(x) < 0 ||
		    json_object_get_uint64(x) > max)
			return -EINVAL;
		out[i] = json_object_get_uint64(x);
	}
	return 0;
}

/* A uid or gid: 0..2^32 - 2 (-1 means "none" to the kernel). */
static int json_u64s_one(struct json_object *x, uint64_t *out)
{
	if (!json_object_is_type(x, json_type_int) || json_object_get_int64(x) < 0 ||
	    json_object_get_int64(x) >= (int64_t)UINT32_MAX)
		return -EINVAL;
	*out = json_object_get_uint64(x);
	return 0;
}

/* A guest file's identity [dev, ino], if the field is there. */
static int req_id_opt(struct request *rq, const char *key, bool *has, uint64_t id[2])
{
	struct json_object *v = json_field(rq->msg, key);

	*has = v != NULL;
	if (v && json_u64s(v, 2, UINT64_MAX, id) < 0)
		return request_fail(rq, EINVAL, "\"%s\" must be [dev, ino]", key);
	return 0;
}

/* A failed system call: errno goes back to the host. */
static int sys_fail(struct request *rq, const char *what, const char *path)
{
	int e = errno;

	return request_fail(rq, e, "%s %.200s: %s", what, path, strerror(e));
}

/* ------------------------------------------------------------------ */
/* The host user a file op acts for                                     */

/*
 * "cred": [uid, gid, [groups]] on a file op: the op runs with that user's
 * file system identity (fsuid, fsgid, supplementary groups) and, for any
 * user but root, with no capability in effect, so the guest's kernel checks
 * permissions, owns new files and clears set-id bits as it would for that
 * user. uids and gids are the same numbers on the host and in the guest.
 * Without "cred" an op runs as root. The agent has one thread: the
 * identity is the process's until cred_leave.
 */
#define CRED_GROUPS_MAX	256

struct cred {
	uid_t uid;
	gid_t gid;
	size_t ngroups;
	gid_t groups[CRED_GROUPS_MAX];
};

static struct __user_cap_data_struct caps_full[_LINUX_CAPABILITY_U32S_3];

static void caps_save(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };

	if (syscall(SYS_capget, &h, caps_full) < 0)
		agent_log("capget: %m");
}

static void caps_set(bool effective)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];

	memcpy(d, caps_full, sizeof(d));
	for (size_t i = 0; !effective && i < _LINUX_CAPABILITY_U32S_3; i++)
		d[i].effective = 0;
	syscall(SYS_capset, &h, d);
}

static int req_cred(struct request *rq, struct cred *c, bool *has)
{
	struct json_object *v = json_field(rq->msg, "cred"), *g;
	uint64_t ids[2];

	*has = v != NULL;
	if (!v)
		return 0;
	if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != 3)
		goto bad;
	for (size_t i = 0; i < 2; i++)
		if (json_u64s_one(json_object_array_get_idx(v, i), &ids[i]) < 0)
			goto bad;
	g = json_object_array_get_idx(v, 2);
	if (!json_object_is_type(g, json_type_array) || json_object_array_length(g) > CRED_GROUPS_MAX)
		goto bad;
	c->uid = (uid_t)ids[0];
	c->gid = (gid_t)ids[1];
	c->ngroups = json_object_array_length(g);
	for (size_t i = 0; i < c->ngroups; i++) {
		uint64_t x;

		if (json_u64s_one(json_object_array_get_idx(g, i), &x) < 0)
			goto bad;
		c->groups[i] = (gid_t)x;
	}
	return 0;
bad:
	return request_fail(rq, EINVAL, "\"cred\" must be [uid, gid, [gid, ...]] (ids below 2^32 - 1, at most %d groups)",
			    CRED_GROUPS_MAX);
}

static void cred_enter(const struct cred *c)
{
	syscall(SYS_setgroups, c->ngroups, c->groups);
	syscall(SYS_setfsgid, c->gid);
	if (c->uid != 0) {
		syscall(SYS_setfsuid, c->uid);
		caps_set(false);
	}
}

static void cred_leave(void)
{
	syscall(SYS_setfsuid, 0);
	syscall(SYS_setfsgid, 0);
	syscall(SYS_setgroups, 0, NULL);
	caps_set(true);
}

/* ------------------------------------------------------------------ */
/* Paths                                                                */

/*
 * A path as (directory descriptor, the rest): the kernel takes at most
 * PATH_MAX bytes in one call, but a guest path can be longer (a process
 * deep in a tree works with relative paths). A longer path is walked in
 * pieces below PATH_MAX through O_PATH descriptors, as the guest's kernel
 * resolves them (intermediate symlinks followed).
 */
struct at {
	int fd;		/* AT_FDCWD or an O_PATH directory */
	const char *rel;
};

static void at_done(struct at *at)
{
	if (at->fd >= 0)
		close(at->fd);
	at->fd = AT_FDCWD;
}

static int at_resolve(const char *path, struct at *at)
{
	static char piece[PATH_MAX];

	at->fd = AT_FDCWD;
	at->rel = path;
	while (strlen(at->rel) >= PATH_MAX) {
		const char *p = at->rel, *cut = NULL;
		int fd;

		for (const char *c = p + 1; c < p + PATH_MAX - 1; c++)
			if (*c == '/')
				cut = c;
		if (!cut) {
			at_done(at);
			return -ENAMETOOLONG;
		}
		memcpy(piece, p, (size_t)(cut - p));
		piece[cut - p] = '\0';
		fd = openat(at->fd, piece, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) {
			int e = errno;

			at_done(at);
			return -e;
		}
		at_done(at);
		at->fd = fd;
		while (*cut == '/')
			cut++;
		at->rel = *cut ? cut : ".";
	}
	return 0;
}

/* fstatat through at_resolve; -errno. */
static int stat_path(const char *path, struct stat *st, int flags)
{
	struct at at;
	int r = at_resolve(path, &at);

	if (r < 0)
		return r;
	r = fstatat(at.fd, at.rel, st, flags) < 0 ? -errno : 0;
	at_done(&at);
	return r;
}

/*
 * Who checks what. The host's kernel walks its own view of the path with
 * the caller's identity before it asks for anything (the mount is
 * default_permissions), and a process may also hold a directory it could
 * not reach any more (its working directory). So the agent finds the
 * object as root, and only the operation itself runs as the caller: an
 * operation on a file (open, chmod, truncate, ...) on the file found, one
 * on a name (create, unlink, rename, ...) on the directory found and the
 * name, where the guest's kernel checks the directory's permissions.
 */
static void as_root(struct agent *a)
{
	if (a->cred)
		cred_leave();
}

static void as_caller(struct agent *a)
{
	if (a->cred)
		cred_enter(a->cred);
}

/* A name in a directory: an O_PATH descriptor of the directory (found as root) and the name. */
struct name {
	int dir;
	char *name; /* in the request's path */
};

static void name_done(struct name *n)
{
	if (n->dir >= 0)
		close(n->dir);
	n->dir = -1;
}

static int name_get(struct agent *a, const char *path, struct name *ret)
{
	const char *slash = strrchr(path, '/');
	size_t plen = slash > path ? (size_t)(slash - path) : 1;
	_cleanup_free_ char *parent = strndup(path, plen);
	struct at at;
	int r;

	ret->dir = -1;
	ret->name = (char *)slash + 1;
	if (!parent)
		return -ENOMEM;
	if (!*ret->name)
		return -EINVAL; /* "/" has no parent */
	as_root(a);
	r = at_resolve(parent, &at);
	if (r == 0 && (ret->dir = openat(at.fd, at.rel, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
		r = -errno;
	at_done(&at);
	as_caller(a);
	return r;
}

/* An object by path: an O_PATH descriptor (found as root; a final symlink is not followed) and its stat. */
static int obj_get(struct agent *a, const char *path, int *ret_fd, struct stat *st)
{
	struct name n;
	int r = 0;

	*ret_fd = -1;
	if (!strcmp(path, "/")) {
		as_root(a);
		if ((*ret_fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
			r = -errno;
		as_caller(a);
	} else if ((r = name_get(a, path, &n)) == 0) {
		as_root(a);
		if ((*ret_fd = openat(n.dir, n.name, O_PATH | O_NOFOLLOW | O_CLOEXEC)) < 0)
			r = -errno;
		as_caller(a);
		name_done(&n);
	}
	if (r == 0 && fstat(*ret_fd, st) < 0)
		r = -errno;
	if (r < 0 && *ret_fd >= 0) {
		close(*ret_fd);
		*ret_fd = -1;
	}
	return r;
}

/* "/proc/self/fd/N": an O_PATH descriptor reopened, or acted on, as the caller. */
static const char *fd_path(int fd)
{
	static char p[40];

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	return p;
}

/*
 * The host names files by the paths it last saw, and can check that a path
 * still names the file it means: "expect" [dev, ino]. A mismatch, or
 * nothing there, is ESTALE: the host's kernel then looks the path up
 * again, as after a change made on another NFS client. Names are made and
 * removed in whatever directory the path names now.
 */
static int expect_match(struct request *rq, const char *path, int r, const struct stat *st)
{
	uint64_t id[2];
	bool has;
	int e = req_id_opt(rq, "expect", &has, id);

	if (e < 0)
		return e;
	if (has && (r == -ENOENT || r == -ENOTDIR ||
		    (r == 0 && ((uint64_t)st->st_dev != id[0] || (uint64_t)st->st_ino != id[1]))))
		return request_fail(rq, ESTALE, "%.200s is no longer the file the host knows", path);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "lstat", path);
	}
	return 0;
}

/* The request's "path" as an object (checked against "expect"). */
static int req_obj(struct agent *a, struct request *rq, const char **path, int *fd, struct stat *st)
{
	int r = req_path(rq, "path", path);

	if (r < 0)
		return r;
	r = expect_match(rq, *path, obj_get(a, *path, fd, st), st);
	if (r < 0 && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	return r;
}

/* The request's path key as a name in a directory. */
static int req_name(struct agent *a, struct request *rq, const char *key, const char **path, struct name *n)
{
	int r = req_path(rq, key, path);

	if (r < 0)
		return r;
	r = name_get(a, *path, n);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "lookup", *path);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Watching the files the host has open                                 */

/*
 * Every regular file the host has open is watched with inotify (IN_MODIFY:
 * writes and truncations, by anyone, the agent's own included), and each
 * change counts. The count goes with every stat of that file ("chg"), and
 * the files that changed are pushed to the host as an event after each
 * turn of the loop, so the host can drop what it cached of them (pages
 * of the host's page cache, mappings included). docs/protocol.md.
 */

static struct watch *watch_by_wd(struct agent *a, int wd)
{
	for (size_t i = 0; i < MAX_FH; i++)
		if (a->watch[i].wd == wd && wd >= 0)
			return &a->watch[i];
	return NULL;
}

static struct watch *watch_by_id(struct agent *a, uint64_t dev, uint64_t ino)
{
	for (size_t i = 0; i < MAX_FH; i++)
		if (a->watch[i].wd >= 0 && a->watch[i].dev == dev && a->watch[i].ino == ino)
			return &a->watch[i];
	return NULL;
}

/* Reads what inotify has queued: every change the guest completed is counted before a stat is answered. */
static void watch_drain(struct agent *a)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

	for (;;) {
		ssize_t n = read(a->ino_fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		for (ssize_t off = 0; off < n;) {
			struct inotify_event *ev = (struct inotify_event *)(buf + off);
			struct watch *w = watch_by_wd(a, ev->wd);

			off += (ssize_t)(sizeof(*ev) + ev->len);
			if (ev->mask & IN_Q_OVERFLOW) {
				/* events were lost: every watched file may have changed */
				for (size_t i = 0; i < MAX_FH; i++)
					if (a->watch[i].wd >= 0) {
						a->watch[i].chg++;
						a->watch[i].dirty = a->watch_dirty = true;
					}
			} else if (w && (ev->mask & IN_MODIFY)) {
				w->chg++;
				w->dirty = a->watch_dirty = true;
			}
		}
	}
}

/* Starts watching the file open as @fd (handle @slot); no watch if inotify refuses (its limits). */
static void watch_add(struct agent *a, size_t slot, int fd, const struct stat *st)
{
	char p[40];
	struct watch *w;
	int wd;

	a->fh_watch[slot] = -1;
	if (a->ino_fd < 0 || !S_ISREG(st->st_mode))
		return;
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	/* as root: a watch needs read permission, a handle open for writing alone has none */
	if (a->cred)
		cred_leave();
	wd = inotify_add_watch(a->ino_fd, p, IN_MODIFY);
	if (a->cred)
		cred_enter(a->cred);
	if (wd < 0) {
		if (!a->watch_warned)
			agent_log("inotify_add_watch: %m (files open without a watch are not pushed)");
		a->watch_warned = true;
		return;
	}
	w = watch_by_wd(a, wd);
	for (size_t i = 0; !w && i < MAX_FH; i++)
		if (a->watch[i].wd < 0) {
			w = &a->watch[i];
			*w = (struct watch){ .wd = wd, .dev = st->st_dev, .ino = st->st_ino };
		}
	if (!w) { /* cannot happen: at most MAX_FH handles */
		inotify_rm_watch(a->ino_fd, wd);
		return;
	}
	w->refs++;
	a->fh_watch[slot] = (int)(w - a->watch);
}

static void watch_put(struct agent *a, size_t slot)
{
	struct watch *w;

	if (a->fh_watch[slot] < 0)
		return;
	w = &a->watch[a->fh_watch[slot]];
	a->fh_watch[slot] = -1;
	if (--w->refs == 0) {
		inotify_rm_watch(a->ino_fd, w->wd);
		w->wd = -1;
	}
}

/* {"event":"changed","files":[[dev,ino,chg],...]}: the watched files that changed since the last push. */
static void watch_push(struct agent *a)
{
	_cleanup_json_ struct json_object *o = NULL;
	struct json_object *files;

	if (!a->watch_dirty)
		return;
	a->watch_dirty = false;
	o = json_object_new_object();
	files = json_object_new_array();
	if (!o || !files) {
		json_object_put(files);
		return;
	}
	json_object_object_add(o, "event", json_object_new_string("changed"));
	json_object_object_add(o, "files", files);
	for (size_t i = 0; i < MAX_FH; i++) {
		struct watch *w = &a->watch[i];
		struct json_object *f;

		if (w->wd < 0 || !w->dirty)
			continue;
		w->dirty = false;
		f = json_object_new_array();
		if (!f)
			continue;
		json_object_array_add(f, json_object_new_uint64(w->dev));
		json_object_array_add(f, json_object_new_uint64(w->ino));
		json_object_array_add(f, json_object_new_uint64(w->chg));
		json_object_array_add(files, f);
	}
	if (json_object_array_length(files) > 0)
		outq_json(a, a->gen, o);
}

/* ------------------------------------------------------------------ */
/* Files                                                                */

static int64_t ts_ns(const struct timespec *ts)
{
	return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

/* A stat object; "chg" when @a watches the file (then the queue is read first). */
static struct json_object *st_json(struct agent *a, const struct stat *st)
{
	struct json_object *o = json_object_new_object();
	struct watch *w = NULL;

	if (!o)
		return NULL;
	if (a && S_ISREG(st->st_mode)) {
		watch_drain(a);
		w = watch_by_id(a, st->st_dev, st->st_ino);
	}
	json_object_object_add(o, "dev", json_object_new_uint64(st->st_dev));
	json_object_object_add(o, "ino", json_object_new_uint64(st->st_ino));
	json_object_object_add(o, "mode", json_object_new_uint64(st->st_mode));
	json_object_object_add(o, "nlink", json_object_new_uint64(st->st_nlink));
	json_object_object_add(o, "uid", json_object_new_uint64(st->st_uid));
	json_object_object_add(o, "gid", json_object_new_uint64(st->st_gid));
	json_object_object_add(o, "rdev", json_object_new_uint64(st->st_rdev));
	json_object_object_add(o, "size", json_object_new_int64(st->st_size));
	json_object_object_add(o, "blocks", json_object_new_int64(st->st_blocks));
	json_object_object_add(o, "blksize", json_object_new_int64(st->st_blksize));
	json_object_object_add(o, "atime_ns", json_object_new_int64(ts_ns(&st->st_atim)));
	json_object_object_add(o, "mtime_ns", json_object_new_int64(ts_ns(&st->st_mtim)));
	json_object_object_add(o, "ctime_ns", json_object_new_int64(ts_ns(&st->st_ctim)));
	if (w)
		json_object_object_add(o, "chg", json_object_new_uint64(w->chg));
	return o;
}

static int reply_st(struct agent *a, struct json_object *reply, const struct stat *st)
{
	struct json_object *o = st_json(a, st);

	if (!o)
		return -ENOMEM;
	json_object_object_add(reply, "st", o);
	return 0;
}

/* After a change to @path: its st, without following a final symlink. */
/* A name just made in a directory: its st (found as root). */
static int reply_name_st(struct agent *a, struct request *rq, struct json_object *reply, const struct name *n,
			 const char *path)
{
	struct stat st;
	int r;

	as_root(a);
	r = fstatat(n->dir, n->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	as_caller(a);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "lstat", path);
	}
	return reply_st(a, reply, &st);
}

/* An object's st after a change. */
static int reply_obj_st(struct agent *a, struct request *rq, struct json_object *reply, int fd, const char *path)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return sys_fail(rq, "fstat", path);
	return reply_st(a, reply, &st);
}

/* lstat: no permission on the file itself is needed, and the host checked the way to it. */
static int op_lstat(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct stat st;
	int r = req_obj(a, rq, &path, &fd, &st);

	return r < 0 ? r : reply_st(a, reply, &st);
}

struct dirent64_raw {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

static bool is_dot(const char *name)
{
	return name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]));
}

/*
 * The cookie is the directory offset (d_off) after the last entry sent.
 * Entries carry the type and inode number the directory itself gives
 * (d_type, d_ino): listing needs only read permission on the directory,
 * not search permission, as in the guest. An unknown type is asked for
 * (as root).
 */
static int op_readdir(struct agent *a, struct request *rq, struct json_object *reply)
{
	static char dbuf[64 << 10];
	_cleanup_close_ int fd = -1, ofd = -1;
	struct json_object *entries;
	int64_t cookie, last = 0;
	size_t count = 0;
	bool more = false;
	const char *path;
	struct stat st;
	int r;

	r = req_obj(a, rq, &path, &ofd, &st);
	if (r < 0)
		return r;
	cookie = 0;
	if (json_field(rq->msg, "cookie")) {
		r = req_i64(rq, "cookie", INT64_MIN, INT64_MAX, &cookie);
		if (r < 0)
			return r;
	}
	if (!S_ISDIR(st.st_mode))
		return request_fail(rq, ENOTDIR, "%.200s: not a directory", path);
	fd = open(fd_path(ofd), O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return sys_fail(rq, "open", path);
	if (cookie && lseek(fd, cookie, SEEK_SET) < 0)
		return request_fail(rq, EINVAL, "bad \"cookie\"");
	entries = json_object_new_array();
	if (!entries)
		return -ENOMEM;
	json_object_object_add(reply, "entries", entries);
	json_object_object_add(reply, "dev", json_object_new_uint64(st.st_dev));
	while (!more) {
		long n = syscall(SYS_getdents64, fd, dbuf, sizeof(dbuf));

		if (n < 0)
			return sys_fail(rq, "getdents", path);
		if (n == 0)
			break;
		for (long off = 0; off < n; off += ((struct dirent64_raw *)(dbuf + off))->d_reclen) {
			struct dirent64_raw *d = (struct dirent64_raw *)(dbuf + off);
			unsigned type = d->d_type;
			struct json_object *e;
			struct stat est;

			if (!is_dot(d->d_name)) {
				if (count == READDIR_MAX) {
					more = true;
					break;
				}
				if (type == DT_UNKNOWN) {
					as_root(a);
					if (fstatat(ofd, d->d_name, &est, AT_SYMLINK_NOFOLLOW) == 0)
						type = (unsigned)IFTODT(est.st_mode);
					as_caller(a);
				}
				e = json_object_new_object();
				if (!e)
					return -ENOMEM;
				json_object_object_add(e, "name", json_object_new_string(d->d_name));
				json_object_object_add(e, "type", json_object_new_int((int)type));
				json_object_object_add(e, "ino", json_object_new_uint64(d->d_ino));
				json_object_array_add(entries, e);
				count++;
			}
			last = d->d_off;
		}
	}
	json_object_object_add(reply, "cookie", json_object_new_int64(more ? last : 0));
	return 0;
}

static int fh_get(struct agent *a, struct request *rq, int *fd)
{
	uint64_t fh;

	if (json_get_u64(rq->msg, "fh", &fh) < 0)
		return request_fail(rq, EINVAL, "\"fh\" must be a file handle");
	if (fh < 1 || fh > MAX_FH || a->fh[fh - 1] < 0)
		return request_fail(rq, EBADF, "no file handle %" PRIu64, fh);
	*fd = a->fh[fh - 1];
	return (int)fh;
}

static void fh_close_all(struct agent *a)
{
	for (size_t i = 0; i < MAX_FH; i++) {
		if (a->fh[i] >= 0) {
			watch_put(a, i);
			close(a->fh[i]);
		}
		a->fh[i] = -1;
	}
}

#define OPEN_FLAGS_ALLOWED (O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_APPEND | O_NOFOLLOW | O_DIRECTORY | \
			    O_SYNC | O_DSYNC | O_NOATIME)

static bool st_openable(const struct stat *st)
{
	return S_ISREG(st->st_mode) || S_ISDIR(st->st_mode);
}

/*
 * Only regular files and directories: a FIFO, tty or other device could
 * block the agent or act on open.  Refused before the open when it can be
 * seen, and after it (fstat) for one that appeared in between.
 * "expect" checks the file (not with O_CREAT: the name may be new).
 */
/*
 * An existing file is opened again from the descriptor found as root,
 * with the caller's identity: the guest checks the caller's permission on
 * the file itself. A new one (O_CREAT) is made in the directory as the
 * caller. Only regular files and directories: a FIFO, tty or other device
 * could block the agent or act on open.
 */
static int op_open(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int ofd = -1;
	uint64_t flags, mode;
	const char *path;
	struct name n = { .dir = -1 };
	struct stat st;
	size_t slot;
	mode_t old;
	int fd, r;

	r = req_path(rq, "path", &path);
	if (r < 0)
		return r;
	r = req_u64(rq, "flags", 0, INT_MAX, &flags);
	if (r < 0)
		return r;
	if ((flags & ~(uint64_t)OPEN_FLAGS_ALLOWED) || (flags & O_ACCMODE) == O_ACCMODE)
		return request_fail(rq, EINVAL, "\"flags\" 0x%" PRIx64 " not allowed", flags);
	r = req_u64_opt(rq, "mode", 07777, 0644, &mode);
	if (r < 0)
		return r;
	for (slot = 0; slot < MAX_FH && a->fh[slot] >= 0; slot++)
		;
	if (slot == MAX_FH)
		return request_fail(rq, EMFILE, "too many open handles (%d)", MAX_FH);
	if (flags & O_CREAT) {
		r = req_name(a, rq, "path", &path, &n);
		if (r < 0)
			return r;
		as_root(a);
		if (fstatat(n.dir, n.name, &st, (flags & O_NOFOLLOW) ? AT_SYMLINK_NOFOLLOW : 0) == 0 &&
		    !S_ISLNK(st.st_mode) && !st_openable(&st)) {
			as_caller(a);
			name_done(&n);
			return request_fail(rq, ENXIO, "%.200s: not a regular file or directory", path);
		}
		as_caller(a);
		old = umask(0); /* the host's mode, exactly */
		fd = openat(n.dir, n.name, (int)flags | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, (mode_t)mode);
		umask(old);
		name_done(&n);
	} else {
		r = expect_match(rq, path, obj_get(a, path, &ofd, &st), &st);
		if (r < 0)
			return r;
		if (!st_openable(&st))
			return request_fail(rq, S_ISLNK(st.st_mode) && (flags & O_NOFOLLOW) ? ELOOP : ENXIO,
					    "%.200s: not a regular file or directory", path);
		fd = open(fd_path(ofd), (int)(flags & ~(uint64_t)O_NOFOLLOW) | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	}
	if (fd < 0)
		return sys_fail(rq, "open", path);
	if (fstat(fd, &st) < 0) {
		r = sys_fail(rq, "fstat", path);
		close(fd);
		return r;
	}
	if (!st_openable(&st)) {
		close(fd);
		return request_fail(rq, ENXIO, "%.200s: not a regular file or directory", path);
	}
	a->fh[slot] = fd;
	watch_add(a, slot, fd, &st);
	json_object_object_add(reply, "fh", json_object_new_uint64(slot + 1));
	return reply_st(a, reply, &st);
}

/*
 * Rendered by hand so that the data goes straight from pread into the
 * output queue: the header is written for @len bytes, and moved up when
 * the end of the file made it shorter.
 */
static int op_read(struct agent *a, struct request *rq, struct json_object *reply)
{
	char head[96];
	uint64_t off, len;
	size_t got = 0;
	int fd, hn, r;
	char *p;

	(void)reply;
	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_u64(rq, "off", 0, INT64_MAX, &off);
	if (r < 0)
		return r;
	r = req_u64(rq, "len", 0, BIN_MAX, &len);
	if (r < 0)
		return r;
	if (rq->gen != a->gen)
		return 1;
	hn = snprintf(head, sizeof(head), "{\"id\":%" PRIu64 ",\"ok\":true,\"bin\":%" PRIu64 "}\n",
		      rq->id, len);
	p = outq_reserve(a, hn + len);
	if (!p)
		return request_fail(rq, ENOMEM, "out of memory for %" PRIu64 " bytes", len);
	while (got < len) {
		ssize_t n = pread(fd, p + hn + got, len - got, (off_t)(off + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return sys_fail(rq, "pread", "");
		if (n == 0)
			break;
		got += n;
	}
	if (got < len) {
		int hn2 = snprintf(head, sizeof(head), "{\"id\":%" PRIu64 ",\"ok\":true,\"bin\":%zu}\n",
				   rq->id, got);

		memmove(p + hn2, p + hn, got);
		hn = hn2;
	}
	memcpy(p, head, hn);
	a->out.len += hn + got;
	return 1;
}

/* With the writer's identity (set by dispatch): a write by another user than the owner clears set-id bits. */
static int op_write(struct agent *a, struct request *rq, struct json_object *reply)
{
	uint64_t off;
	size_t done = 0;
	int fd, r;

	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_u64(rq, "off", 0, INT64_MAX, &off);
	if (r < 0)
		return r;
	if (!rq->has_bin)
		return request_fail(rq, EINVAL, "write needs a \"bin\" payload");
	while (done < rq->bin_len) {
		ssize_t n = pwrite(fd, rq->bin + done, rq->bin_len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && done == 0)
			return sys_fail(rq, "pwrite", "");
		if (n <= 0)
			break;
		done += n;
	}
	json_object_object_add(reply, "written", json_object_new_uint64(done));
	return 0;
}

static int op_close(struct agent *a, struct request *rq, struct json_object *reply)
{
	int fd, fh;

	(void)reply;
	fh = fh_get(a, rq, &fd);
	if (fh < 0)
		return fh;
	watch_put(a, (size_t)fh - 1);
	a->fh[fh - 1] = -1;
	if (close(fd) < 0 && errno != EINTR)
		return sys_fail(rq, "close", "");
	return 0;
}

static int op_fsync(struct agent *a, struct request *rq, struct json_object *reply)
{
	bool datasync;
	int fd, r;

	(void)reply;
	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_bool_opt(rq, "datasync", &datasync);
	if (r < 0)
		return r;
	if ((datasync ? fdatasync(fd) : fsync(fd)) < 0)
		return sys_fail(rq, "fsync", "");
	return 0;
}

static int op_fstat(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct stat st;
	int fd, r;

	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	if (fstat(fd, &st) < 0)
		return sys_fail(rq, "fstat", "");
	return reply_st(a, reply, &st);
}

static int op_ftruncate(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct stat st;
	uint64_t size;
	int fd, r;

	r = fh_get(a, rq, &fd);
	if (r < 0)
		return r;
	r = req_u64(rq, "size", 0, INT64_MAX, &size);
	if (r < 0)
		return r;
	if (ftruncate(fd, (off_t)size) < 0 || fstat(fd, &st) < 0)
		return sys_fail(rq, "ftruncate", "");
	return reply_st(a, reply, &st);
}

/* Regular files only, and not through a final symlink. */
/* Regular files only, and not through a final symlink: opened for writing as the caller. */
static int op_truncate(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int ofd = -1, fd = -1;
	const char *path;
	struct stat st;
	uint64_t size;
	int r;

	r = req_obj(a, rq, &path, &ofd, &st);
	if (r < 0)
		return r;
	r = req_u64(rq, "size", 0, INT64_MAX, &size);
	if (r < 0)
		return r;
	if (S_ISDIR(st.st_mode))
		return request_fail(rq, EISDIR, "%.200s: is a directory", path);
	if (!S_ISREG(st.st_mode))
		return request_fail(rq, EINVAL, "%.200s: not a regular file", path);
	fd = open(fd_path(ofd), O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return sys_fail(rq, "open", path);
	if (ftruncate(fd, (off_t)size) < 0 || fstat(fd, &st) < 0)
		return sys_fail(rq, "truncate", path);
	return reply_st(a, reply, &st);
}

/*
 * A chmod that only clears set-id bits (or changes nothing) is allowed to
 * any caller: the host's kernel asks for exactly that when a user who may
 * write a set-id file writes or truncates it (libfuse 3.14 never tells the
 * kernel that the filesystem clears them itself), and the guest's kernel
 * clears them for that user on the same write anyway. It never grants
 * anything, and the host's kernel refuses a real chmod by anyone but the
 * owner before asking.
 */
static bool only_clears_setid(const struct stat *st, mode_t mode)
{
	mode_t cur = st->st_mode & 07777;

	return S_ISREG(st->st_mode) && (cur & ~(mode_t)06000) == (mode & ~(mode_t)06000) &&
	       (mode & 06000 & ~cur) == 0;
}

static int op_chmod(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct stat st;
	uint64_t mode;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	r = req_u64(rq, "mode", 0, 07777, &mode);
	if (r < 0)
		return r;
	if (S_ISLNK(st.st_mode))
		return request_fail(rq, EOPNOTSUPP, "%.200s: a symlink has no mode", path);
	r = chmod(fd_path(fd), (mode_t)mode) < 0 ? -errno : 0;
	if (r == -EPERM && a->cred && only_clears_setid(&st, (mode_t)mode)) {
		as_root(a);
		r = chmod(fd_path(fd), (mode_t)mode) < 0 ? -errno : 0;
		as_caller(a);
	}
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "chmod", path);
	}
	return reply_obj_st(a, rq, reply, fd, path);
}

static int op_chown(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct stat st;
	int64_t uid, gid;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	r = req_i64(rq, "uid", -1, (int64_t)UINT32_MAX - 1, &uid);
	if (r < 0)
		return r;
	r = req_i64(rq, "gid", -1, (int64_t)UINT32_MAX - 1, &gid);
	if (r < 0)
		return r;
	if (fchownat(fd, "", (uid_t)uid, (gid_t)gid, AT_EMPTY_PATH) < 0)
		return sys_fail(rq, "chown", path);
	return reply_obj_st(a, rq, reply, fd, path);
}

/* -1 keeps a time, -2 sets it to now. */
static struct timespec ns_ts(int64_t ns)
{
	if (ns == -1)
		return (struct timespec){ .tv_nsec = UTIME_OMIT };
	if (ns == -2)
		return (struct timespec){ .tv_nsec = UTIME_NOW };
	return (struct timespec){ .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
}

/* Times of the file itself; a symlink's through its name (AT_SYMLINK_NOFOLLOW). */
static int op_utimens(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	struct timespec ts[2];
	int64_t at_ns, mt_ns;
	const char *path;
	struct name n;
	struct stat st;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	r = req_i64(rq, "atime_ns", -2, INT64_MAX, &at_ns);
	if (r < 0)
		return r;
	r = req_i64(rq, "mtime_ns", -2, INT64_MAX, &mt_ns);
	if (r < 0)
		return r;
	ts[0] = ns_ts(at_ns);
	ts[1] = ns_ts(mt_ns);
	if (!S_ISLNK(st.st_mode)) {
		r = utimensat(AT_FDCWD, fd_path(fd), ts, 0) < 0 ? -errno : 0;
	} else if ((r = name_get(a, path, &n)) == 0) {
		r = utimensat(n.dir, n.name, ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
		name_done(&n);
	}
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, "utimensat", path);
	}
	return reply_obj_st(a, rq, reply, fd, path);
}

/* unlink and rmdir: a name in its directory, as the caller. */
static int remove_path(struct agent *a, struct request *rq, const char *what, int flags)
{
	const char *path;
	struct name n;
	int r = req_name(a, rq, "path", &path, &n);

	if (r < 0)
		return r;
	r = unlinkat(n.dir, n.name, flags) < 0 ? -errno : 0;
	name_done(&n);
	if (r < 0) {
		errno = -r;
		return sys_fail(rq, what, path);
	}
	return 0;
}

static int op_unlink(struct agent *a, struct request *rq, struct json_object *reply)
{
	(void)reply;
	return remove_path(a, rq, "unlink", 0);
}

static int op_rmdir(struct agent *a, struct request *rq, struct json_object *reply)
{
	(void)reply;
	return remove_path(a, rq, "rmdir", AT_REMOVEDIR);
}

/* mkdir and mknod: the mode exactly as given (no umask: the host's kernel applied the caller's). */
static int make_node(struct agent *a, struct request *rq, struct json_object *reply, bool dir)
{
	const char *path;
	uint64_t mode, rdev = 0;
	struct name n;
	mode_t old;
	int r;

	r = req_u64(rq, "mode", 0, dir ? 07777 : (S_IFMT | 07777), &mode);
	if (r < 0)
		return r;
	if (!dir) {
		r = req_u64_opt(rq, "rdev", UINT32_MAX, 0, &rdev);
		if (r < 0)
			return r;
	}
	r = req_name(a, rq, "path", &path, &n);
	if (r < 0)
		return r;
	old = umask(0);
	r = (dir ? mkdirat(n.dir, n.name, (mode_t)mode) : mknodat(n.dir, n.name, (mode_t)mode, (dev_t)rdev)) < 0 ?
		    -errno : 0;
	umask(old);
	if (r == 0)
		r = reply_name_st(a, rq, reply, &n, path);
	else
		r = (errno = -r, sys_fail(rq, dir ? "mkdir" : "mknod", path));
	name_done(&n);
	return r;
}

static int op_mkdir(struct agent *a, struct request *rq, struct json_object *reply)
{
	return make_node(a, rq, reply, true);
}

static int op_mknod(struct agent *a, struct request *rq, struct json_object *reply)
{
	return make_node(a, rq, reply, false);
}

static int op_rename(struct agent *a, struct request *rq, struct json_object *reply)
{
	const char *from, *to;
	struct name nf, nt = { .dir = -1 };
	uint64_t flags;
	int r;

	(void)reply;
	r = req_u64_opt(rq, "flags", RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT, 0, &flags);
	if (r < 0)
		return r;
	r = req_name(a, rq, "from", &from, &nf);
	if (r < 0)
		return r;
	r = req_name(a, rq, "to", &to, &nt);
	if (r == 0) {
		r = syscall(SYS_renameat2, nf.dir, nf.name, nt.dir, nt.name, (unsigned int)flags) < 0 ? -errno : 0;
		if (r < 0)
			r = (errno = -r, sys_fail(rq, "rename", from));
	}
	name_done(&nf);
	name_done(&nt);
	return r;
}

static int op_symlink(struct agent *a, struct request *rq, struct json_object *reply)
{
	const char *target, *path;
	struct name n;
	size_t len;
	int r;

	if (json_get_str(rq->msg, "target", &target, &len) < 0 || len == 0 || len >= PATH_MAX)
		return request_fail(rq, EINVAL, "\"target\" must be a string of 1..%d bytes", PATH_MAX - 1);
	r = req_name(a, rq, "path", &path, &n);
	if (r < 0)
		return r;
	if (symlinkat(target, n.dir, n.name) == 0)
		r = reply_name_st(a, rq, reply, &n, path);
	else
		r = sys_fail(rq, "symlink", path);
	name_done(&n);
	return r;
}

/* A hard link of the file found (as the caller: the guest's protected_hardlinks rules apply). */
static int op_link(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *from, *to;
	struct name n;
	struct stat st;
	int r;

	r = req_path(rq, "from", &from);
	if (r < 0)
		return r;
	r = expect_match(rq, from, obj_get(a, from, &fd, &st), &st);
	if (r < 0)
		return r;
	r = req_name(a, rq, "to", &to, &n);
	if (r < 0)
		return r;
	if (linkat(AT_FDCWD, fd_path(fd), n.dir, n.name, AT_SYMLINK_FOLLOW) == 0)
		r = reply_name_st(a, rq, reply, &n, to);
	else
		r = sys_fail(rq, "link", to);
	name_done(&n);
	return r;
}

static int op_readlink(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	char target[PATH_MAX];
	const char *path;
	struct stat st;
	ssize_t n;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	if (!S_ISLNK(st.st_mode))
		return request_fail(rq, EINVAL, "%.200s: not a symlink", path);
	n = readlinkat(fd, "", target, sizeof(target));
	if (n < 0)
		return sys_fail(rq, "readlink", path);
	if ((size_t)n >= sizeof(target))
		return request_fail(rq, ENAMETOOLONG, "%.200s: target too long", path);
	json_object_object_add(reply, "target", json_object_new_string_len(target, (int)n));
	return 0;
}

/*
 * The guest's own resolution of an absolute path, as its kernel would
 * resolve it from its root: every symlink followed (at most 40), ".." the
 * parent of the directory reached, "/.." is "/". The host uses it to show
 * symlinks whose targets climb with "..": docs/interface.md.
 */
#define RESOLVE_MAX	(PATH_BYTES_MAX + 40 * PATH_MAX)

static int resolve_path(const char *path, char *out)
{
	static char rest[RESOLVE_MAX + 1], tmp[RESOLVE_MAX + 1], target[PATH_MAX];
	size_t cur = 0, links = 0;
	int r;

	snprintf(rest, sizeof(rest), "%s", path);
	out[0] = '\0';
	for (;;) {
		char *p = rest, *name, *next;
		size_t tn, nn;
		struct stat st;
		ssize_t n;

		while (*p == '/')
			p++;
		if (!*p)
			break;
		name = p;
		next = strchr(p, '/');
		if (next)
			*next++ = '\0';
		else
			next = p + strlen(p);
		if (!strcmp(name, ".")) {
			memmove(rest, next, strlen(next) + 1);
			continue;
		}
		if (!strcmp(name, "..")) {
			while (cur > 0 && out[--cur] != '/')
				;
			out[cur] = '\0';
			memmove(rest, next, strlen(next) + 1);
			continue;
		}
		if (cur + 1 + strlen(name) > RESOLVE_MAX)
			return -ENAMETOOLONG;
		out[cur] = '/';
		strcpy(out + cur + 1, name);
		r = stat_path(out, &st, AT_SYMLINK_NOFOLLOW);
		if (r < 0) {
			out[cur] = '\0';
			return r;
		}
		if (S_ISLNK(st.st_mode)) {
			struct at at;

			if (++links > 40)
				return -ELOOP;
			r = at_resolve(out, &at);
			n = r < 0 ? -1 : readlinkat(at.fd, at.rel, target, sizeof(target) - 1);
			if (r == 0 && n < 0)
				r = -errno;
			at_done(&at);
			if (r < 0)
				return r;
			target[n] = '\0';
			out[cur] = '\0';
			if (target[0] == '/')
				cur = 0, out[0] = '\0';
			tn = strlen(target);
			nn = strlen(next);
			if (tn + 1 + nn > RESOLVE_MAX)
				return -ENAMETOOLONG;
			memcpy(tmp, target, tn);
			tmp[tn] = '/';
			memcpy(tmp + tn + 1, next, nn + 1);
			memcpy(rest, tmp, tn + nn + 2);
			continue;
		}
		if (*next && !S_ISDIR(st.st_mode))
			return -ENOTDIR;
		cur += 1 + strlen(name);
		memmove(rest, next, strlen(next) + 1);
	}
	if (cur == 0)
		strcpy(out, "/");
	return 0;
}

static int op_realpath(struct agent *a, struct request *rq, struct json_object *reply)
{
	static char out[RESOLVE_MAX + 2];
	const char *path;
	int r;

	(void)a;
	r = req_path(rq, "path", &path);
	if (r < 0)
		return r;
	r = resolve_path(path, out);
	if (r < 0)
		return request_fail(rq, -r, "%.200s: %s", path, strerror(-r));
	json_object_object_add(reply, "path", json_object_new_string(out));
	return 0;
}

static int op_statfs(struct agent *a, struct request *rq, struct json_object *reply)
{
	_cleanup_close_ int fd = -1;
	const char *path;
	struct statfs sf;
	struct stat st;
	int r;

	r = req_obj(a, rq, &path, &fd, &st);
	if (r < 0)
		return r;
	if (fstatfs(fd, &sf) < 0)
		return sys_fail(rq, "statfs", path);
	json_object_object_add(reply, "bsize", json_object_new_uint64(sf.f_bsize));
	json_object_object_add(reply, "frsize", json_object_new_uint64(sf.f_frsize));
	json_object_object_add(reply, "blocks", json_object_new_uint64(sf.f_blocks));
	json_object_object_add(reply, "bfree", json_object_new_uint64(sf.f_bfree));
	json_object_object_add(reply, "bavail", json_object_new_uint64(sf.f_bavail));
	json_object_object_add(reply, "files", json_object_new_uint64(sf.f_files));
	json_object_object_add(reply, "ffree", json_object_new_uint64(sf.f_ffree));
	json_object_object_add(reply, "namemax", json_object_new_uint64(sf.f_namelen));
	return 0;
}

/* ------------------------------------------------------------------ */
/* Guest-wide settings and probes                                      */

/*
 * configure {env?, cwd?, user?}: what every later exec and spawn gets unless
 * it says otherwise (an image's ENV, WORKDIR and USER). Sent once at a
 * template's bake, so it is in the snapshot of every sandbox. The user is
 * looked up at each exec (the guest may add it later).
 */
static int op_configure(struct agent *a, struct request *rq, struct json_object *reply)
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
static int op_probe(struct agent *a, struct request *rq, struct json_object *reply)
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
static int op_sync(struct agent *a, struct request *rq, struct json_object *reply)
{
	(void)a;
	(void)rq;
	(void)reply;
	sync();
	return 0;
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

static void spawn_status(struct job *j, struct json_object *o)
{
	uint64_t now = clock_ms(CLOCK_MONOTONIC);
	int code = -1, sig = 0;

	if (j->exited && WIFEXITED(j->status))
		code = WEXITSTATUS(j->status);
	else if (j->exited && WIFSIGNALED(j->status))
		sig = WTERMSIG(j->status);
	json_object_object_add(o, "running", json_object_new_boolean(!j->exited));
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

static void spawn_feed_stdin(struct agent *a, struct job *j)
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
static void spawn_release(struct agent *a, struct job *j, bool reply)
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
static void spawn_detach(struct agent *a, struct job *j)
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
static void conn_release(struct agent *a)
{
	fh_close_all(a);
	for (size_t i = 0; i < JOB_SLOTS; i++)
		if (a->jobs[i] && a->jobs[i]->spawned)
			spawn_detach(a, a->jobs[i]);
}

static int op_spawn(struct agent *a, struct request *rq, struct json_object *reply)
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

static int op_out(struct agent *a, struct request *rq, struct json_object *reply)
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

static int op_in(struct agent *a, struct request *rq, struct json_object *reply)
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

static int op_signal(struct agent *a, struct request *rq, struct json_object *reply)
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

static int op_status(struct agent *a, struct request *rq, struct json_object *reply)
{
	struct job *j;
	int r;

	r = spawn_get(a, rq, &j);
	if (r < 0)
		return r;
	spawn_status(j, reply);
	return 0;
}

static int op_wait(struct agent *a, struct request *rq, struct json_object *reply)
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

static int op_release(struct agent *a, struct request *rq, struct json_object *reply)
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

/* ------------------------------------------------------------------ */
/* Requests                                                             */

static const struct agent_op agent_op_table[] = {
	{ "ping", op_ping, false, false },
	{ "exec", op_exec, false, false },
	{ "attach", op_attach, false, false },
	{ "configure", op_configure, false, false },
	{ "probe", op_probe, false, false },
	{ "sync", op_sync, false, false },
	{ "lstat", op_lstat, false, true },
	{ "readdir", op_readdir, false, true },
	{ "open", op_open, false, true },
	{ "read", op_read, false, true },
	{ "write", op_write, true, true },
	{ "close", op_close, false, false },
	{ "fsync", op_fsync, false, false },
	{ "fstat", op_fstat, false, false },
	{ "ftruncate", op_ftruncate, false, true },
	{ "truncate", op_truncate, false, true },
	{ "chmod", op_chmod, false, true },
	{ "chown", op_chown, false, true },
	{ "utimens", op_utimens, false, true },
	{ "unlink", op_unlink, false, true },
	{ "mkdir", op_mkdir, false, true },
	{ "mknod", op_mknod, false, true },
	{ "rmdir", op_rmdir, false, true },
	{ "rename", op_rename, false, true },
	{ "symlink", op_symlink, false, true },
	{ "link", op_link, false, true },
	{ "readlink", op_readlink, false, true },
	{ "realpath", op_realpath, false, true },
	{ "statfs", op_statfs, false, true },
	{ "spawn", op_spawn, false, false },
	{ "out", op_out, false, false },
	{ "in", op_in, true, false },
	{ "signal", op_signal, false, false },
	{ "status", op_status, false, false },
	{ "wait", op_wait, false, false },
	{ "release", op_release, false, false },
};

static const struct agent_op *op_find(const struct agent_ops *ops, const char *name)
{
	for (size_t i = 0; i < ops->n_table; i++)
		if (!strcmp(ops->table[i].name, name))
			return &ops->table[i];
	return NULL;
}

/* A file op with a "cred" runs as that user, and the agent is root again after it. */
static int op_run(struct agent *a, const struct agent_op *op, struct request *rq,
		  struct json_object *reply)
{
	struct cred c;
	bool has = false;
	int r;

	if (op->cred) {
		r = req_cred(rq, &c, &has);
		if (r < 0)
			return r;
	}
	if (has) {
		cred_enter(&c);
		a->cred = &c;
	}
	r = op->fn(a, rq, reply);
	if (has) {
		a->cred = NULL;
		cred_leave();
	}
	return r;
}

/* The agent's ops, run for real. */
static const struct agent_ops agent_ops_guest = {
	.table = agent_op_table,
	.n_table = sizeof(agent_op_table) / sizeof(agent_op_table[0]),
	.run = op_run,
	.hangup = conn_release,
};

static bool all_space(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
			return false;
	return true;
}

/* One whole object and nothing but whitespace around it. */
static struct json_object *request_parse(struct agent *a, const char *line, size_t len)
{
	struct json_object *o;

	json_tokener_reset(a->tok);
	o = json_tokener_parse_ex(a->tok, line, (int)len);
	if (!o)
		return NULL;
	if (json_tokener_get_error(a->tok) != json_tokener_success ||
	    !json_object_is_type(o, json_type_object) ||
	    !all_space(line + json_tokener_get_parse_end(a->tok),
			len - json_tokener_get_parse_end(a->tok))) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

static void request_dispatch(struct agent *a, struct request *rq)
{
	_cleanup_json_ struct json_object *reply = NULL;
	const struct agent_op *op;
	const char *name;
	int r;

	if (json_get_u64(rq->msg, "id", &rq->id) < 0) {
		rq->id = 0;
		reply_error(a, rq->gen, 0, EINVAL, "missing or invalid \"id\"");
		return;
	}
	if (json_get_str(rq->msg, "op", &name, NULL) < 0) {
		reply_error(a, rq->gen, rq->id, EINVAL, "missing or invalid \"op\"");
		return;
	}
	op = op_find(a->ops, name);
	if (!op) {
		request_fail(rq, EINVAL, "unknown op \"%.64s\"", name);
		reply_error(a, rq->gen, rq->id, EINVAL, rq->error);
		return;
	}
	if (rq->has_bin && !op->bin) {
		reply_error(a, rq->gen, rq->id, EINVAL, "this op takes no \"bin\" payload");
		return;
	}
	reply = json_object_new_object();
	if (!reply)
		return;
	json_object_object_add(reply, "id", json_object_new_uint64(rq->id));
	json_object_object_add(reply, "ok", json_object_new_boolean(true));
	r = a->ops->run(a, op, rq, reply);
	if (r < 0)
		reply_error(a, rq->gen, rq->id, -r, rq->error);
	else if (r == 0)
		outq_json(a, rq->gen, reply);
}

/* A request whose payload is complete: @data is its @len bytes. */
static void request_complete(struct agent *a, const char *data, size_t len)
{
	struct request rq = { .gen = a->gen, .msg = a->pend_msg, .has_bin = true,
			      .bin = data, .bin_len = len };

	a->pend_msg = NULL;
	request_dispatch(a, &rq);
	json_object_put(rq.msg);
	a->pend.len = a->pend_len = 0;
	if (a->pend.cap > READ_CHUNK)
		buf_free(&a->pend);
}

/*
 * A line with "bin": N is followed by N bytes: the request waits for them
 * in a->pend_msg.  Without a usable N nothing after this line can be
 * framed: the connection is broken until the host hangs up.
 */
static void request_handle(struct agent *a, const char *line, size_t len)
{
	struct request rq = { .gen = a->gen };
	struct json_object *v;
	int64_t n;

	if (all_space(line, len))
		return;
	rq.msg = request_parse(a, line, len);
	if (!rq.msg) {
		reply_error(a, rq.gen, 0, EBADMSG, "malformed request: not one JSON object");
		return;
	}
	v = json_field(rq.msg, "bin");
	if (v) {
		n = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
		if (n < 0 || n > (int64_t)BIN_MAX) {
			json_get_u64(rq.msg, "id", &rq.id);
			reply_error(a, rq.gen, rq.id, EMSGSIZE,
				    "\"bin\" must be an integer 0..1048576; input ignored until hangup");
			agent_log("bad \"bin\" in a request: ignoring input until the host hangs up");
			a->broken = true;
			json_object_put(rq.msg);
			return;
		}
		rq.has_bin = true;
		rq.bin = "";
		if (n > 0 && buf_reserve(&a->pend, n, n) < 0) {
			json_get_u64(rq.msg, "id", &rq.id);
			reply_error(a, rq.gen, rq.id, ENOMEM, "out of memory for the payload");
			a->skip = n;
			json_object_put(rq.msg);
			return;
		}
		if (n > 0) {
			a->pend_msg = rq.msg;
			a->pend_len = n;
			return;
		}
	}
	request_dispatch(a, &rq);
	json_object_put(rq.msg);
}

/* Best effort for an oversized line: its id, if it leads the object. */
static uint64_t line_guess_id(const char *s, size_t n)
{
	static const char key[] = "\"id\"";
	uint64_t id = 0;
	size_t i = 0;

#define SKIP_WS() while (i < n && (s[i] == ' ' || s[i] == '\t')) i++
	SKIP_WS();
	if (i >= n || s[i++] != '{')
		return 0;
	SKIP_WS();
	if (n - i < sizeof(key) - 1 || memcmp(s + i, key, sizeof(key) - 1))
		return 0;
	i += sizeof(key) - 1;
	SKIP_WS();
	if (i >= n || s[i++] != ':')
		return 0;
	SKIP_WS();
#undef SKIP_WS
	for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
		if (id > (UINT64_MAX - 9) / 10)
			return 0;
		id = id * 10 + (uint64_t)(s[i] - '0');
	}
	return id;
}

static void line_too_long(struct agent *a, const char *p, size_t n)
{
	char head[64];
	size_t hn = MIN(a->line.len, sizeof(head));

	if (hn)
		memcpy(head, a->line.data, hn);
	memcpy(head + hn, p, MIN(n, sizeof(head) - hn));
	hn += MIN(n, sizeof(head) - hn);
	reply_error(a, a->gen, line_guess_id(head, hn), EMSGSIZE,
		    "request line longer than 1 MiB");
}

/*
 * Split the byte stream into lines and payloads; a line or payload is
 * handled without copying when it can be.  Returns how much of @p it took:
 * no new line is taken while the output queue is full.
 */
static size_t lines_feed(struct agent *a, const char *p, size_t n)
{
	const char *start = p;

	while (n > 0) {
		const char *nl;
		size_t seg;

		if (a->broken)
			return p - start + n;
		if (a->skip || a->pend_msg) {
			seg = MIN(n, a->skip ? a->skip : a->pend_len - a->pend.len);
			if (a->skip)
				a->skip -= seg;
			else if (!a->pend.len && seg == a->pend_len)
				request_complete(a, p, seg);
			else {
				memcpy(a->pend.data + a->pend.len, p, seg);
				a->pend.len += seg;
				if (a->pend.len == a->pend_len)
					request_complete(a, a->pend.data, a->pend.len);
			}
			p += seg;
			n -= seg;
			continue;
		}
		if (outq_full(a))
			break;
		nl = memchr(p, '\n', n);
		seg = nl ? (size_t)(nl - p) : n;
		if (a->discarding) {
			/* the rest of an oversized line */
		} else if (a->line.len + seg > LINE_MAX_BYTES) {
			line_too_long(a, p, seg);
			a->discarding = true;
		} else if (nl && a->line.len == 0) {
			request_handle(a, p, seg);
		} else if (buf_append(&a->line, p, seg, LINE_MAX_BYTES) < 0) {
			reply_error(a, a->gen, 0, ENOMEM, "out of memory buffering a request");
			a->discarding = true;
		} else if (nl) {
			request_handle(a, a->line.data, a->line.len);
		}
		if (nl) {
			a->discarding = false;
			a->line.len = 0;
			if (a->line.cap > READ_CHUNK)
				buf_free(&a->line);
			seg++;
		}
		if (a->discarding)
			a->line.len = 0;
		p += seg;
		n -= seg;
	}
	return p - start;
}

/* What the port gave and the output queue had no room for yet. */
static void input_drain(struct agent *a)
{
	if (a->in_head < a->in_len)
		a->in_head += lines_feed(a, a->in_chunk + a->in_head, a->in_len - a->in_head);
	if (a->in_head == a->in_len)
		a->in_head = a->in_len = 0;
}

static void port_read(struct agent *a)
{
	size_t budget = READ_BUDGET;

	input_drain(a);
	while (budget > 0 && !a->in_len) {
		ssize_t n = read(a->port_fd, a->in_chunk, sizeof(a->in_chunk));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0)
			agent_log("port read: %m");
		if (n <= 0) {
			port_hangup(a);
			return;
		}
		port_connected(a);
		a->in_len = n;
		input_drain(a);
		budget -= MIN((size_t)n, budget);
	}
}

/* ------------------------------------------------------------------ */
/* Event loop                                                           */

enum { SLOT_STDOUT, SLOT_STDERR, SLOT_STDIN };

struct poll_slot {
	struct job *job;
	int what;
};

static int poll_timeout(struct agent *a)
{
	uint64_t now = clock_ms(CLOCK_MONOTONIC);
	int64_t best = -1;

	if (a->port_idle)
		best = a->port_async ? PORT_RECHECK_ASYNC_MS : PORT_RECHECK_MS;
	if (a->in_len && !outq_full(a))
		return 0;

	for (size_t i = 0; i < JOB_SLOTS; i++) {
		struct job *j = a->jobs[i];
		uint64_t at = 0;

		if (!j)
			continue;
		if (!j->exited && !j->timed_out && j->deadline_ms)
			at = j->deadline_ms;
		else if (j->exited && j->timed_out)
			at = j->grace_ms;
		if (!at)
			continue;
		if (at <= now)
			return 0;
		if (best < 0 || (int64_t)(at - now) < best)
			best = (int64_t)MIN(at - now, (uint64_t)INT_MAX);
	}
	return (int)best;
}

#define POLL_FIXED 3 /* the port, signals, inotify */

static size_t poll_fill(struct agent *a, struct pollfd *pfd, struct poll_slot *slot)
{
	size_t n = POLL_FIXED;

	/*
	 * While no host is connected the port reports POLLHUP at once: rest it
	 * a turn.  No reading while unparsed input waits for room in the
	 * output queue.
	 */
	pfd[0] = (struct pollfd){ .fd = a->port_idle ? -1 : a->port_fd,
				  .events = (a->in_len || outq_full(a) ? 0 : POLLIN) |
					    (outq_pending(a) ? POLLOUT : 0) };
	pfd[1] = (struct pollfd){ .fd = a->sig_fd, .events = POLLIN };
	pfd[2] = (struct pollfd){ .fd = a->ino_fd, .events = POLLIN };
	for (size_t i = 0; i < JOB_SLOTS; i++) {
		struct job *j = a->jobs[i];

		if (!j)
			continue;
		for (int s = 0; s < 2; s++) {
			if (j->out[s].fd < 0 || (j->spawned && j->out[s].buf.len >= SPAWN_BUF_HIGH))
				continue;
			pfd[n] = (struct pollfd){ .fd = j->out[s].fd, .events = POLLIN };
			slot[n++] = (struct poll_slot){ j, s };
		}
		if (j->in_fd >= 0 && (!j->spawned || j->in_pending)) {
			pfd[n] = (struct pollfd){ .fd = j->in_fd, .events = POLLOUT };
			slot[n++] = (struct poll_slot){ j, SLOT_STDIN };
		}
	}
	return n;
}

/*
 * A host that goes and a new one that comes reach the port as two events,
 * and the new host's first bytes can arrive before the second: the port
 * then reports POLLIN with POLLHUP. The hangup is the old host's, so it is
 * handled first; what is readable is kept for the next host (it may also be
 * the old host's last words: their replies then carry ids the next host
 * never used, and the host side starts its ids at random).
 */
static void port_service(struct agent *a, short revents)
{
	if (revents & (POLLHUP | POLLERR | POLLNVAL)) {
		port_hangup(a);
		if (!(revents & POLLIN))
			return;
	}
	if (revents & POLLIN)
		port_read(a);
	if (revents & POLLOUT)
		port_connected(a);
}

static void __attribute__((noreturn)) agent_loop(struct agent *a)
{
	static struct pollfd pfd[POLL_FIXED + 3 * JOB_SLOTS];
	static struct poll_slot slot[POLL_FIXED + 3 * JOB_SLOTS];

	for (;;) {
		size_t n = poll_fill(a, pfd, slot);
		int r = poll_timeout(a);

		/* Rested or not, the port is polled again on the next turn. */
		a->port_idle = false;
		r = poll(pfd, n, r);
		if (r < 0 && errno != EINTR) {
			agent_log("poll: %m");
			sleep_ms(1);
			continue;
		}
		if (r > 0 && pfd[1].revents)
			signals_read(a);
		if (r > 0 && pfd[2].revents)
			watch_drain(a);
		for (size_t i = POLL_FIXED; r > 0 && i < n; i++) {
			struct job *j = slot[i].job;

			if (!pfd[i].revents)
				continue;
			if (slot[i].what == SLOT_STDIN && j->spawned)
				spawn_feed_stdin(a, j);
			else if (slot[i].what == SLOT_STDIN)
				job_feed_stdin(j);
			else
				stream_read(j, &j->out[slot[i].what]);
		}
		if (r > 0 && pfd[0].revents)
			port_service(a, pfd[0].revents);
		/* Room made in the queue goes to waiting input and output first. */
		if (outq_pending(a))
			outq_flush(a);
		if (a->in_len && !outq_full(a))
			input_drain(a);
		jobs_tick(a);
		if (a->connected)
			watch_push(a);
		if (outq_pending(a))
			outq_flush(a);
	}
}

static int agent_setup(struct agent *a, const struct agent_ops *ops, int port_fd)
{
	sigset_t mask;

	*a = (struct agent){ .ops = ops, .port_fd = port_fd, .sig_fd = -1 };
	for (size_t i = 0; i < MAX_FH; i++) {
		a->fh[i] = -1;
		a->fh_watch[i] = -1;
		a->watch[i].wd = -1;
	}
	a->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (a->ino_fd < 0)
		agent_log("inotify: %m (changes to open files are not pushed)");
	caps_save();
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGIO);
	if (fcntl(port_fd, F_SETOWN, getpid()) < 0)
		a->port_async_failed = true;
	a->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (a->sig_fd < 0)
		return -errno;
	a->tok = json_tokener_new();
	if (!a->tok)
		return -ENOMEM;
	return 0;
}

static void agent_ready(struct agent *a)
{
	_cleanup_json_ struct json_object *o = json_object_new_object();
	uint64_t boot_ms = clock_ms(CLOCK_BOOTTIME);
	size_t before = a->out.len;

	json_object_object_add(o, "event", json_object_new_string("ready"));
	json_object_object_add(o, "version", json_object_new_int(AGENT_PROTO_VERSION));
	json_object_object_add(o, "boot_ms", json_object_new_uint64(boot_ms));
	outq_json(a, a->gen, o);
	a->ready_len = a->out.len - before;
	outq_flush(a);
	agent_log("ready in %" PRIu64 " ms", boot_ms);
}

int main(void)
{
	static struct agent agent;
	sigset_t mask;
	int port_fd, r;

	/* SIGCHLD and SIGIO are read from a signalfd: never delivered. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGIO);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	init_early();
	init_modules();
	cmdline_read();
	init_root();
	r = net_lo_up();
	if (r < 0)
		agent_log("loopback: %s", strerror(-r));
	r = net_eth0_setup();
	if (r < 0)
		agent_log("eth0: %s", strerror(-r));
	nofile_raise();
	port_fd = port_open();
	r = agent_setup(&agent, &agent_ops_guest, port_fd);
	if (r < 0) {
		agent_log("setup: %s", strerror(-r));
		exit(EXIT_FAILURE);
	}
	agent_ready(&agent);
	agent_loop(&agent);
}
