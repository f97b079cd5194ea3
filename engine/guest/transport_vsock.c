/*
 * emberfs-agent: the vsock transport (transport.h). The agent listens on a
 * vsock port of its own CID and serves one host connection at a time: the
 * listening socket is polled only while no host is connected, so a second
 * host waits in the backlog until the first hangs up. Unlike a
 * virtio-serial port, a connection ends for good: a hangup closes it.
 */
#include "agent.h"

#include <linux/vm_sockets.h>

#define VSOCK_BACKLOG	8

struct vsock_probe {
	unsigned int port;
	int fd;
};

/* A listening socket on @port of any CID of ours, or -errno. */
static int vsock_listen(unsigned int port)
{
	struct sockaddr_vm sa = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
	_cleanup_close_ int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int r;

	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, VSOCK_BACKLOG) < 0)
		return -errno;
	r = fd;
	fd = -1;
	return r;
}

/* The vsock driver loads like any module (see init_modules): retry until it works. */
static int probe_vsock(void *ctx)
{
	struct vsock_probe *vp = ctx;
	int r = vsock_listen(vp->port);

	if (r < 0)
		return r == -EAFNOSUPPORT || r == -EADDRNOTAVAIL || r == -ENODEV ? -EAGAIN : r;
	vp->fd = r;
	return 0;
}

static struct pollfd vsock_poll(struct transport *t, short want)
{
	if (t->fd < 0)
		return (struct pollfd){ .fd = t->listen_fd, .events = POLLIN };
	return (struct pollfd){ .fd = t->fd, .events = want };
}

static int vsock_timeout(const struct transport *t)
{
	(void)t;
	return -1;
}

static void vsock_accept(struct transport *t)
{
	int fd = accept4(t->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			agent_log("vsock accept: %m");
		return;
	}
	t->fd = fd;
}

/*
 * While listening, the events are the listener's: a host to accept, none
 * for the framing. A hangup on a connection is that host's end, and what it
 * sent last goes with it (replies would reach the next host).
 */
static short vsock_event(struct transport *t, short revents)
{
	if (t->fd < 0) {
		if (revents & POLLIN)
			vsock_accept(t);
		return 0;
	}
	if (revents & (POLLHUP | POLLERR | POLLNVAL))
		return revents & ~POLLIN;
	return revents;
}

static void vsock_connected(struct transport *t)
{
	(void)t;
}

static void vsock_hangup(struct transport *t)
{
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
}

static const struct transport_ops vsock_ops = {
	.name = "vsock",
	.poll = vsock_poll,
	.timeout = vsock_timeout,
	.event = vsock_event,
	.connected = vsock_connected,
	.hangup = vsock_hangup,
};

void transport_vsock_init(struct transport *t, int listen_fd)
{
	*t = (struct transport){ .ops = &vsock_ops, .fd = -1, .listen_fd = listen_fd };
}

/* Without its port the agent is useless, but PID 1 must stay: keep trying. */
void transport_vsock_open(struct transport *t, unsigned int port)
{
	struct vsock_probe vp = { .port = port, .fd = -1 };
	int r;

	r = wait_until(probe_vsock, &vp, DEVICE_WAIT_MS);
	if (r < 0) {
		agent_log("vsock port %u: %s after %d ms, still trying", port,
			  r == -EAGAIN ? "no vsock" : strerror(-r), DEVICE_WAIT_MS);
		for (;;) {
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
			sleep_ms(10);
			if (probe_vsock(&vp) == 0)
				break;
		}
	}
	transport_vsock_init(t, vp.fd);
}
