/*
 * emberfs-agent: the virtio-serial transport (transport.h). The port is
 * found by its name under /sys/class/virtio-ports and stays open for the
 * agent's life; hosts come and go behind it.
 *
 * The port reports POLLHUP while no host is connected. While no host is
 * connected the port rests out of the poll set (t->idle); the kernel's
 * SIGIO on a connection change (t->async) ends the rest early, so the
 * periodic recheck can be slow.
 */
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
static int port_open(const char *name)
{
	struct port_probe pp = { .name = name, .fd = -1 };
	int r;

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

static int port_set_async(struct transport *t, bool on)
{
	int fl = fcntl(t->fd, F_GETFL);

	if (fl < 0 || fcntl(t->fd, F_SETFL, on ? fl | O_ASYNC : fl & ~O_ASYNC) < 0)
		return -errno;
	t->async = on;
	return 0;
}

/*
 * While no host is connected the port reports POLLHUP at once: rest it a
 * turn. Rested or not, the port is polled again on the next turn.
 */
static struct pollfd virtio_poll(struct transport *t, short want)
{
	struct pollfd pfd = { .fd = t->idle ? -1 : t->fd, .events = want };

	t->idle = false;
	return pfd;
}

static int virtio_timeout(const struct transport *t)
{
	if (!t->idle)
		return -1;
	return t->async ? PORT_RECHECK_ASYNC_MS : PORT_RECHECK_MS;
}

static short virtio_event(struct transport *t, short revents)
{
	(void)t;
	return revents;
}

/* Data or room on the port: a host is there, and SIGIO is not needed. */
static void virtio_connected(struct transport *t)
{
	if (t->async)
		port_set_async(t, false);
}

static void virtio_hangup(struct transport *t)
{
	/*
	 * Arm SIGIO before resting, then look at the port once more: a host
	 * that connected in between sent no signal.
	 */
	if (!t->async && !t->async_failed) {
		if (port_set_async(t, true) == 0)
			return;
		agent_log("port O_ASYNC: %m (rechecking every %d ms)", PORT_RECHECK_MS);
		t->async_failed = true;
	}
	t->idle = true;
}

static const struct transport_ops virtio_ops = {
	.name = "virtio-serial",
	.poll = virtio_poll,
	.timeout = virtio_timeout,
	.event = virtio_event,
	.connected = virtio_connected,
	.hangup = virtio_hangup,
};

void transport_virtio_init(struct transport *t, int fd)
{
	*t = (struct transport){ .ops = &virtio_ops, .fd = fd, .listen_fd = -1 };
	/* SIGIO (a host came or went) goes to the agent, read from its signalfd */
	if (fcntl(fd, F_SETOWN, getpid()) < 0)
		t->async_failed = true;
}

void transport_virtio_open(struct transport *t, const char *name)
{
	transport_virtio_init(t, port_open(name));
}
