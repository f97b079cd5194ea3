/*
 * emberfs-agent: the byte stream to the host.
 *
 * The framing (framing.c) reads and writes t->fd and knows nothing else of
 * the transport; the event loop (main.c) polls what the transport's poll
 * says and hands the events to its event op first. Two implementations,
 * chosen at boot by the kernel command line (main.c transport_open):
 *
 *   virtio-serial (transport_virtio.c, the default): a named port, always
 *     open; it reports POLLHUP while no host is connected, so the agent
 *     rests it out of the poll set and lets SIGIO (O_ASYNC) or a periodic
 *     recheck end the rest. emberfs.port=NAME, default org.emberfs.agent.
 *   vsock (transport_vsock.c, emberfs.transport=vsock): a listening
 *     AF_VSOCK socket on emberfs.port=N (default 1024); one host connection
 *     is served at a time, a second waits in the backlog until the first
 *     hangs up.
 *
 * Threading: none; every op runs on the agent's one thread.
 */
#ifndef EMBERFS_AGENT_TRANSPORT_H
#define EMBERFS_AGENT_TRANSPORT_H

#include <poll.h>
#include <stdbool.h>

#define AGENT_VSOCK_DEFAULT_PORT	1024

struct transport;

struct transport_ops {
	const char *name;
	/* The fd and events for this turn of the loop (fd -1: none); @want is
	 * what the framing would wait for on the connection. */
	struct pollfd (*poll)(struct transport *t, short want);
	/* ms until the loop must look again without an event; -1: no need. */
	int (*timeout)(const struct transport *t);
	/* @revents came for poll's fd: returns those left for the framing
	 * (POLLIN, POLLOUT, a hangup on the connection); 0: none. */
	short (*event)(struct transport *t, short revents);
	/* Data or room on the connection: a host is there. */
	void (*connected)(struct transport *t);
	/* The host is gone and the framing has forgotten it. */
	void (*hangup)(struct transport *t);
};

struct transport {
	const struct transport_ops *ops;
	int fd;			/* the connection: read and written by the framing; -1: none */
	/* virtio-serial: */
	bool idle;		/* out of the poll set for one turn (no host) */
	bool async;		/* O_ASYNC armed: SIGIO ends the rest */
	bool async_failed;	/* no SIGIO: recheck every PORT_RECHECK_MS */
	/* vsock: */
	int listen_fd;
};

/* Find the virtio-serial port named @name and serve it; waits until it appears. */
void transport_virtio_open(struct transport *t, const char *name);

/* Serve the virtio-serial port open at @fd (non-blocking, close-on-exec). */
void transport_virtio_init(struct transport *t, int fd);

/* Listen on vsock port @port (any CID) and serve it; waits until vsock works. */
void transport_vsock_open(struct transport *t, unsigned int port);

/*
 * Serve hosts that connect to @listen_fd (a listening stream socket,
 * non-blocking, close-on-exec: AF_VSOCK in the guest, any family works).
 */
void transport_vsock_init(struct transport *t, int listen_fd);

#endif /* EMBERFS_AGENT_TRANSPORT_H */
