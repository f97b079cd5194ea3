/* emberfs-agent: the virtio-serial port. */
#include "agent.h"

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
int port_open(void)
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

int port_set_async(struct agent *a, bool on)
{
	int fl = fcntl(a->port_fd, F_GETFL);

	if (fl < 0 || fcntl(a->port_fd, F_SETFL, on ? fl | O_ASYNC : fl & ~O_ASYNC) < 0)
		return -errno;
	a->port_async = on;
	return 0;
}
