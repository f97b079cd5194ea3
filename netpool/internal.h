/* netpool's own seams between netpool.c and resolver.c; not part of the library's API. */
#pragma once

#include "netpool.h"

/* Runs an nft script in the slot's namespace (the calling thread enters it and leaves). */
int netpool_nft_in(const struct netslot *s, const char *script, char **ret_error);
/* A line for the caller's log (netpool_options.note). */
void np_note(struct netpool *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The resolver (resolver.c): one thread serving the DNS of every slot.
 * A slot's socket (172.16.0.1:53 in its namespace, where its prerouting
 * redirects the guest's port 53) is made by np_resolver_socket on a thread
 * inside the namespace; np_resolver_add hands it to the thread, and
 * np_resolver_remove takes it back (closing it) before the slot goes.
 */
struct np_resolver;
/* upstream: "ADDR[:PORT]" (IPv4); NULL: the first IPv4 nameserver of /etc/resolv.conf. n_slots: index bound. */
int np_resolver_new(struct netpool *p, const char *upstream, unsigned n_slots, struct np_resolver **ret,
		    char **ret_error);
void np_resolver_free(struct np_resolver *r);
/* The upstream, "ADDR:PORT" or "none". */
const char *np_resolver_upstream(const struct np_resolver *r);
/* The calling thread is in the slot's namespace: a socket bound to NETPOOL_GW_ADDR:53 in it. */
int np_resolver_socket(void);
void np_resolver_add(struct np_resolver *r, struct netslot *s);
void np_resolver_remove(struct np_resolver *r, struct netslot *s);
