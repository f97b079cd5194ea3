/* emberfs-agent: PID 1 duties. */
#include "agent.h"

/* ------------------------------------------------------------------ */
/* Boot: mounts, modules, root switch, loopback, eth0                  */

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

#if defined(__x86_64__) || defined(__i386__)
#include <sys/io.h>

#define PIT_CH0 0x40
#define PIT_MODE 0x43

/* Whether the kernel took the PIT as a clock event device (its tick or a broadcast one). */
static bool pit_in_use(void)
{
	DIR *d = opendir("/sys/devices/system/clockevents");
	struct dirent *de;
	bool used = false;

	if (!d)
		return true; /* cannot tell: leave it */
	while (!used && (de = readdir(d))) {
		char path[PATH_MAX], dev[32] = "";
		_cleanup_close_ int fd = -1;
		ssize_t n;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/sys/devices/system/clockevents/%s/current_device", de->d_name);
		if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
			continue;
		if ((n = read(fd, dev, sizeof(dev) - 1)) > 0 && strncmp(dev, "pit", 3) == 0)
			used = true;
	}
	closedir(d);
	return used;
}

/*
 * The PIT's channel 0 counts on as the firmware set it (mode 3, an edge
 * every ~27 ms) when Linux does not use it (an APIC timer of known rate), and
 * the VMM wakes at every edge to move a masked interrupt line: ~0.6% of a
 * host CPU per idle sandbox under TCG, measured. Linux stops it itself from
 * 6.11 on (clockevent_i8253_disable); the guest kernel here is 6.1. Mode 0
 * with a count of 0: one terminal count more, then no timer at all. Done
 * before the bake's snapshot, so every clone starts with it stopped.
 */
static void pit_stop(void)
{
	if (pit_in_use())
		return;
	if (ioperm(PIT_CH0, 4, 1) < 0) {
		agent_log("PIT: ioperm: %m (left running)");
		return;
	}
	outb(0x30, PIT_MODE); /* channel 0, low then high byte, mode 0 */
	outb(0, PIT_CH0);
	outb(0, PIT_CH0);
	ioperm(PIT_CH0, 4, 0);
}
#else
static void pit_stop(void)
{
}
#endif

void init_early(void)
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
	agent_console_fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
	for (size_t i = 0; i < 3; i++)
		if (errs[i] < 0)
			agent_log("mount %s: %s", fs[i].dst, strerror(-errs[i]));
	pit_stop();
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
void init_modules(void)
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

void cmdline_read(void)
{
	_cleanup_close_ int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return;
	n = read(fd, kernel_cmdline, sizeof(kernel_cmdline) - 1);
	kernel_cmdline[n > 0 ? n : 0] = '\0';
}

/* The value of the last "key=value" word on the kernel command line. */
int cmdline_get(const char *key, char *out, size_t size)
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
	/*
	 * Without no_prefetch_block_bitmaps, ext4 starts a thread that reads
	 * every group's block bitmap 0-5 s after the mount: a snapshot taken
	 * before then has it pending, and every sandbox restored from it ran it
	 * (~2,700 translated blocks under TCG, disk reads) and its exit. The
	 * bitmaps are read when an allocation needs them. Before Linux 5.9 the
	 * option is unknown: mounted without it.
	 */
	r = mount_at(dev, AGENT_NEWROOT, "ext4", 0, "no_prefetch_block_bitmaps");
	if (r == -EINVAL)
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

static void machine_id_link(void)
{
	char target[64];
	ssize_t n = readlink("/etc/machine-id", target, sizeof(target) - 1);

	if (n == (ssize_t)strlen(MACHINE_ID_RUN) && memcmp(target, MACHINE_ID_RUN, (size_t)n) == 0)
		return;
	if ((unlink("/etc/machine-id") < 0 && errno != ENOENT) || symlink(MACHINE_ID_RUN, "/etc/machine-id") < 0)
		agent_log("/etc/machine-id -> " MACHINE_ID_RUN ": %m");
}

void init_root(void)
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

int net_lo_up(void)
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
int net_eth0_setup(void)
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
	return resolv_conf_setup(comma + 1);
}

/*
 * The guest's DNS goes to the daemon's resolver: the slot redirects every
 * port-53 packet the guest sends out, whatever the server's address. Only
 * a guest that asks itself (no /etc/resolv.conf, an empty one, a dangling
 * link, or nothing but loopback servers, as an image made for systemd's
 * stub resolver has) would never send one: it gets "nameserver GATEWAY".
 * Done at boot, so it is in the snapshot; an image's own servers stay.
 */
int resolv_conf_setup(const char *gateway)
{
	static const char path[] = "/etc/resolv.conf";
	char buf[4096], line[64];
	bool outside = false;
	ssize_t n = -1;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
	}
	if (n > 0) {
		buf[n] = '\0';
		for (char *p = buf; p && *p && !outside; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
			char addr[48];

			if (sscanf(p, "nameserver %47s", addr) == 1)
				outside = strncmp(addr, "127.", 4) != 0 && strcmp(addr, "::1") != 0;
		}
	}
	if (outside)
		return 0;
	if (snprintf(line, sizeof(line), "nameserver %s\n", gateway) >= (int)sizeof(line))
		return -EINVAL;
	mkdir("/etc", 0755);
	unlink(path); /* a dangling link or a loopback-only file */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -errno;
	n = write(fd, line, strlen(line));
	close(fd);
	return n == (ssize_t)strlen(line) ? 0 : -EIO;
}
