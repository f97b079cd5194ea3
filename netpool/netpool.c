/*
 * netpool: building, keeping and destroying network slots (see netpool.h).
 * Links, addresses and routes through libnl-route-3; NAT and filtering
 * through libnftables; the namespace itself with unshare + a bind mount
 * under /run/netns, as iproute2 does, so `ip netns` shows it.
 *
 * Namespace switches are per thread (setns on the calling thread), and every
 * netlink or nftables socket is opened after the switch, so it belongs to the
 * namespace it configures. libnftables is used under one global mutex.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/route.h>
#include <nftables/libnftables.h>

#include "np_internal.h"

#define NETNS_DIR "/run/netns"

struct netpool {
	struct netpool_options o;
	char tag[8];
	char range[32];
	struct np_alloc alloc; /* protected by lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct netslot *ready; /* protected by lock */
	unsigned n_ready;
	struct netslot *doomed; /* released, to destroy */
	unsigned in_use;
	unsigned building;
	bool stop;
	pthread_t filler;
	bool filler_started;
	int forward_saved; /* host ip_forward before we set it; -1: untouched */
	/* figures */
	uint64_t built, destroyed, claims, claims_built, build_failed;
	double build_ms_last, claim_ms_last;
	char *error; /* last build failure */
	/* slots of an earlier run kept for re-adoption (options.keep): index, and taken yet */
	unsigned *kept;
	bool *kept_taken;
	size_t n_kept;
	struct np_resolver *resolver; /* every slot's DNS (resolver.c) */
};

static pthread_mutex_t nft_lock = PTHREAD_MUTEX_INITIALIZER;

/* A line for the caller's log (netpool_options.note). */
void np_note(struct netpool *p, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	if (!p->o.note)
		return;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	if (s)
		p->o.note(p->o.note_ctx, s);
	free(s);
}

static void addr_str(uint32_t host_order, char out[16])
{
	struct in_addr in = { .s_addr = htonl(host_order) };

	inet_ntop(AF_INET, &in, out, 16);
}

/* ---- namespaces ---- */

int netpool_enter(const struct netslot *s, int *saved)
{
	int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (setns(s->netns_fd, CLONE_NEWNET) < 0) {
		int r = -errno;

		close(fd);
		return r;
	}
	*saved = fd;
	return 0;
}

void netpool_leave(int saved)
{
	if (saved < 0)
		return;
	if (setns(saved, CLONE_NEWNET) < 0)
		abort(); /* a thread left in a slot's namespace would configure the wrong one */
	close(saved);
}

/* Makes /run/netns/NAME a new network namespace; returns an fd of it. */
static int netns_create(const char *name, int *ret_fd)
{
	char path[128];
	int saved, fd, r = 0;

	snprintf(path, sizeof(path), NETNS_DIR "/%s", name);
	if (mkdir(NETNS_DIR, 0755) < 0 && errno != EEXIST)
		return -errno;
	fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	close(fd);
	saved = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (saved < 0) {
		r = -errno;
		unlink(path);
		return r;
	}
	if (unshare(CLONE_NEWNET) < 0)
		r = -errno;
	else if (mount("/proc/thread-self/ns/net", path, "none", MS_BIND, NULL) < 0)
		r = -errno;
	netpool_leave(saved);
	if (r < 0) {
		unlink(path);
		return r;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		umount2(path, MNT_DETACH);
		unlink(path);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

static void netns_remove(const char *name)
{
	char path[sizeof(NETNS_DIR) + 256];

	snprintf(path, sizeof(path), NETNS_DIR "/%s", name);
	umount2(path, MNT_DETACH);
	unlink(path);
}

/* ---- netlink helpers (the socket belongs to the caller's namespace) ---- */

static struct nl_sock *nl_open(void)
{
	struct nl_sock *sk = nl_socket_alloc();

	if (sk && nl_connect(sk, NETLINK_ROUTE) < 0) {
		nl_socket_free(sk);
		return NULL;
	}
	return sk;
}

static int link_index(struct nl_sock *sk, const char *name)
{
	struct rtnl_link *l = NULL;
	int idx;

	if (rtnl_link_get_kernel(sk, 0, name, &l) < 0)
		return -ENODEV;
	idx = rtnl_link_get_ifindex(l);
	rtnl_link_put(l);
	return idx;
}

/* Up, and optionally a MAC. */
static int link_up(struct nl_sock *sk, const char *name, const char *mac)
{
	struct rtnl_link *l = NULL, *chg = rtnl_link_alloc();
	struct nl_addr *a = NULL;
	int r;

	if (!chg)
		return -ENOMEM;
	r = rtnl_link_get_kernel(sk, 0, name, &l);
	if (r == 0 && mac && (r = nl_addr_parse(mac, AF_LLC, &a)) == 0)
		rtnl_link_set_addr(chg, a);
	if (r == 0) {
		rtnl_link_set_flags(chg, IFF_UP);
		r = rtnl_link_change(sk, l, chg, 0);
	}
	if (a)
		nl_addr_put(a);
	if (l)
		rtnl_link_put(l);
	rtnl_link_put(chg);
	return r < 0 ? -EIO : 0;
}

static int addr_add(struct nl_sock *sk, const char *ifname, const char *cidr)
{
	struct rtnl_addr *ra = rtnl_addr_alloc();
	struct nl_addr *local = NULL;
	int idx = link_index(sk, ifname), r;

	if (!ra)
		return -ENOMEM;
	r = idx < 0 ? idx : nl_addr_parse(cidr, AF_INET, &local) < 0 ? -EINVAL : 0;
	if (r == 0) {
		rtnl_addr_set_ifindex(ra, idx);
		rtnl_addr_set_local(ra, local);
		r = rtnl_addr_add(sk, ra, 0) < 0 ? -EIO : 0;
	}
	if (local)
		nl_addr_put(local);
	rtnl_addr_put(ra);
	return r;
}

static int default_route(struct nl_sock *sk, const char *ifname, const char *gw)
{
	struct rtnl_route *rt = rtnl_route_alloc();
	struct rtnl_nexthop *nh = rtnl_route_nh_alloc();
	struct nl_addr *dst = NULL, *via = NULL;
	int idx = link_index(sk, ifname), r;

	if (!rt || !nh) {
		if (rt)
			rtnl_route_put(rt);
		if (nh)
			rtnl_route_nh_free(nh);
		return -ENOMEM;
	}
	r = idx < 0 ? idx : (nl_addr_parse("0.0.0.0/0", AF_INET, &dst) < 0 || nl_addr_parse(gw, AF_INET, &via) < 0) ? -EINVAL : 0;
	if (r == 0) {
		rtnl_route_set_family(rt, AF_INET);
		rtnl_route_set_dst(rt, dst);
		rtnl_route_nh_set_ifindex(nh, idx);
		rtnl_route_nh_set_gateway(nh, via);
		rtnl_route_add_nexthop(rt, nh);
		nh = NULL;
		r = rtnl_route_add(sk, rt, NLM_F_CREATE) < 0 ? -EIO : 0;
	}
	if (nh)
		rtnl_route_nh_free(nh);
	if (dst)
		nl_addr_put(dst);
	if (via)
		nl_addr_put(via);
	rtnl_route_put(rt);
	return r;
}

static int link_delete(struct nl_sock *sk, const char *name)
{
	struct rtnl_link *l = rtnl_link_alloc();
	int r;

	if (!l)
		return -ENOMEM;
	rtnl_link_set_name(l, name);
	r = rtnl_link_delete(sk, l);
	rtnl_link_put(l);
	return r < 0 ? -ENODEV : 0;
}

/* The veth pair: host end here, the other end (veth0) created inside nsfd. */
static int veth_add(struct nl_sock *sk, const char *host_if, int nsfd)
{
	struct rtnl_link *l = rtnl_link_veth_alloc(), *peer;
	int r;

	if (!l)
		return -ENOMEM;
	rtnl_link_set_name(l, host_if);
	peer = rtnl_link_veth_get_peer(l);
	rtnl_link_set_name(peer, "veth0");
	rtnl_link_set_ns_fd(peer, nsfd);
	r = rtnl_link_add(sk, l, NLM_F_CREATE | NLM_F_EXCL);
	rtnl_link_put(peer);
	rtnl_link_veth_release(l);
	return r < 0 ? (r == -NLE_EXIST ? -EEXIST : -EIO) : 0;
}

static int tap_create(const char *name)
{
	struct ifreq ifr = { 0 };
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETPERSIST, 1) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* /proc/sys/net is the opener's namespace. Returns the old value, or -errno. */
static int set_ip_forward(int v)
{
	char c;
	int fd = open("/proc/sys/net/ipv4/ip_forward", O_RDWR | O_CLOEXEC), old;

	if (fd < 0)
		return -errno;
	if (read(fd, &c, 1) != 1) {
		close(fd);
		return -EIO;
	}
	old = c == '1';
	c = v ? '1' : '0';
	if (old != v && pwrite(fd, &c, 1, 0) != 1) {
		close(fd);
		return -EIO;
	}
	close(fd);
	return old;
}

/* Runs nft commands in the caller's namespace. */
static int nft_run(const char *cmds, char **ret_error)
{
	struct nft_ctx *ctx;
	int r;

	pthread_mutex_lock(&nft_lock);
	ctx = nft_ctx_new(NFT_CTX_DEFAULT);
	if (!ctx) {
		pthread_mutex_unlock(&nft_lock);
		return -ENOMEM;
	}
	nft_ctx_buffer_output(ctx);
	nft_ctx_buffer_error(ctx);
	r = nft_run_cmd_from_buffer(ctx, cmds);
	if (r != 0)
		error_set(ret_error, "nftables: %s", nft_ctx_get_error_buffer(ctx));
	nft_ctx_free(ctx);
	pthread_mutex_unlock(&nft_lock);
	return r != 0 ? -EIO : 0;
}

int netpool_nft_in(const struct netslot *s, const char *script, char **ret_error)
{
	int saved, r;

	if ((r = netpool_enter(s, &saved)) < 0) {
		error_set(ret_error, "setns into %s: %s", s->netns, strerror(-r));
		return r;
	}
	r = nft_run(script, ret_error);
	netpool_leave(saved);
	return r;
}

/* The new policy's name sets start with what their names resolved to lately (egress_lock held). */
static int with_recent(const struct netslot *s, const struct egress_policy *pol, char **script)
{
	struct egress_element el[256];
	size_t n = np_recent_elements(s, pol, el, 256);
	char *add, *all;

	if (!n)
		return 0;
	if (!(add = egress_nft_elements(el, n)))
		return -ENOMEM;
	all = malloc(strlen(*script) + strlen(add) + 1);
	if (all) {
		strcpy(all, *script);
		strcat(all, add);
		free(*script);
		*script = all;
	}
	free(add);
	return all ? 0 : -ENOMEM;
}

int netpool_egress_apply(struct netpool *p, struct netslot *s, const struct egress_policy *pol, char **ret_error)
{
	struct egress_policy *copy = NULL;
	char *script = NULL;
	int r = 0;

	(void)p;
	pthread_mutex_lock(&s->egress_lock);
	if (s->egress && egress_equal(s->egress, pol))
		goto out; /* already so: nothing to do */
	if (!(copy = egress_dup(pol)) || !(script = egress_nft_script(pol, NETPOOL_TAP, true)) ||
	    (r = with_recent(s, pol, &script)) < 0) {
		r = r < 0 ? r : -ENOMEM;
		goto out;
	}
	if ((r = netpool_nft_in(s, script, ret_error)) < 0)
		goto out;
	egress_free(s->egress);
	s->egress = copy;
	copy = NULL;
out:
	pthread_mutex_unlock(&s->egress_lock);
	egress_free(copy);
	free(script);
	return r;
}

/* ---- slots ---- */

static struct netslot *slot_alloc(void)
{
	struct netslot *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->netns_fd = -1;
	s->dns_fd = -1;
	pthread_mutex_init(&s->egress_lock, NULL);
	return s;
}

void netpool_destroy(struct netpool *p, struct netslot *s)
{
	struct nl_sock *sk;

	if (!s)
		return;
	/* deleting the host end deletes veth0; tap0 and the rules go with the namespace */
	if ((sk = nl_open())) {
		link_delete(sk, s->host_if);
		nl_socket_free(sk);
	}
	np_resolver_remove(p->resolver, s); /* its socket: no query of the old guest is answered later */
	if (s->netns_fd >= 0)
		close(s->netns_fd);
	netns_remove(s->netns);
	pthread_mutex_lock(&p->lock);
	np_alloc_put(&p->alloc, s->index);
	p->destroyed++;
	pthread_mutex_unlock(&p->lock);
	egress_free(s->egress);
	free(s->recent);
	pthread_mutex_destroy(&s->egress_lock);
	free(s);
}

static int slot_inside(struct netpool *p, struct netslot *s, char **ret_error)
{
	char cidr[32], nft[2048], *egress = NULL;
	struct egress_policy *all = egress_allow_all();
	struct nl_sock *sk;
	int saved, r;

	if ((r = netpool_enter(s, &saved)) < 0) {
		error_set(ret_error, "setns into %s: %s", s->netns, strerror(-r));
		return r;
	}
	sk = nl_open();
	r = sk ? 0 : -EIO;
	snprintf(cidr, sizeof(cidr), "%s/30", s->addr);
	if (r == 0 && (r = link_up(sk, "lo", NULL)) < 0)
		error_set(ret_error, "%s: lo up failed", s->netns);
	if (r == 0 && ((r = addr_add(sk, "veth0", cidr)) < 0 || (r = link_up(sk, "veth0", NULL)) < 0 ||
		       (r = default_route(sk, "veth0", s->host_addr)) < 0))
		error_set(ret_error, "%s: veth0 setup failed: %s", s->netns, strerror(-r));
	if (r == 0 && (r = tap_create(NETPOOL_TAP)) < 0)
		error_set(ret_error, "%s: tap: %s", s->netns, strerror(-r));
	if (r == 0 && ((r = addr_add(sk, NETPOOL_TAP, NETPOOL_GW_ADDR "/30")) < 0 ||
		       (r = link_up(sk, NETPOOL_TAP, NETPOOL_TAP_MAC)) < 0))
		error_set(ret_error, "%s: tap setup failed: %s", s->netns, strerror(-r));
	if (r == 0 && (r = set_ip_forward(1)) < 0)
		error_set(ret_error, "%s: ip_forward: %s", s->netns, strerror(-r));
	if (r >= 0 && (s->dns_fd = np_resolver_socket()) < 0) {
		r = s->dns_fd;
		error_set(ret_error, "%s: resolver socket on " NETPOOL_GW_ADDR ":53: %s", s->netns, strerror(-r));
	}
	if (r >= 0 && (!all || !(egress = egress_nft_script(all, NETPOOL_TAP, false))))
		r = -ENOMEM;
	if (r >= 0) {
		/* one transaction: NAT, the guest's DNS to the resolver, the egress policy (allow-all) */
		snprintf(nft, sizeof(nft),
			 "add table ip emberfs\n"
			 "add chain ip emberfs pre { type nat hook prerouting priority dstnat; }\n"
			 "add chain ip emberfs post { type nat hook postrouting priority srcnat; }\n"
			 "add rule ip emberfs pre iifname \"veth0\" ip daddr %s dnat to " NETPOOL_GUEST_ADDR "\n"
			 "add rule ip emberfs pre iifname \"" NETPOOL_TAP "\" udp dport 53 dnat to " NETPOOL_GW_ADDR ":53\n"
			 "add rule ip emberfs pre iifname \"" NETPOOL_TAP "\" tcp dport 53 dnat to " NETPOOL_GW_ADDR ":53\n"
			 "add rule ip emberfs post oifname \"veth0\" ip saddr " NETPOOL_GUEST_ADDR " masquerade\n"
			 "%s",
			 s->addr, egress);
		r = nft_run(nft, ret_error);
	}
	if (r >= 0) {
		s->egress = all;
		all = NULL;
	}
	egress_free(all);
	free(egress);
	if (sk)
		nl_socket_free(sk);
	netpool_leave(saved);
	(void)p;
	return r < 0 ? r : 0;
}

static void slot_names(struct netpool *p, struct netslot *s, unsigned index)
{
	s->index = index;
	snprintf(s->netns, sizeof(s->netns), "ef%s-%u", p->tag, index);
	snprintf(s->host_if, sizeof(s->host_if), "ef%sh%u", p->tag, index);
	addr_str(np_alloc_host_addr(&p->alloc, index), s->host_addr);
	addr_str(np_alloc_inside_addr(&p->alloc, index), s->addr);
}

int netpool_build(struct netpool *p, struct netslot **ret, char **ret_error)
{
	struct netslot *s = slot_alloc();
	struct nl_sock *sk = NULL;
	uint64_t t0 = now_ns();
	char cidr[32];
	int idx, r;

	if (!s)
		return -ENOMEM;
	pthread_mutex_lock(&p->lock);
	idx = np_alloc_get(&p->alloc);
	pthread_mutex_unlock(&p->lock);
	if (idx < 0) {
		error_set(ret_error, "no free address in %s (%u slots)", p->range, p->alloc.n);
		free(s);
		return idx;
	}
	slot_names(p, s, (unsigned)idx);
	/* the anchor first: the namespace */
	r = netns_create(s->netns, &s->netns_fd);
	if (r < 0)
		error_set(ret_error, "netns %s: %s", s->netns, strerror(-r));
	if (r == 0 && !(sk = nl_open()))
		r = -EIO;
	if (r == 0 && (r = veth_add(sk, s->host_if, s->netns_fd)) < 0)
		error_set(ret_error, "veth %s: %s", s->host_if, r == -EEXIST ? "a link of that name exists" : strerror(-r));
	snprintf(cidr, sizeof(cidr), "%s/30", s->host_addr);
	if (r == 0 && ((r = addr_add(sk, s->host_if, cidr)) < 0 || (r = link_up(sk, s->host_if, NULL)) < 0))
		error_set(ret_error, "%s: address or up failed", s->host_if);
	if (sk)
		nl_socket_free(sk);
	if (r == 0)
		r = slot_inside(p, s, ret_error);
	if (r < 0) {
		netpool_destroy(p, s);
		pthread_mutex_lock(&p->lock);
		p->build_failed++;
		pthread_mutex_unlock(&p->lock);
		return r;
	}
	np_resolver_add(p->resolver, s);
	s->build_ms = (double)(now_ns() - t0) / 1e6;
	pthread_mutex_lock(&p->lock);
	p->built++;
	p->build_ms_last = s->build_ms;
	pthread_mutex_unlock(&p->lock);
	*ret = s;
	return 0;
}

/* ---- the pool ---- */

static void *filler_main(void *arg)
{
	struct netpool *p = arg;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		struct netslot *s = NULL;
		char *err = NULL;
		int r;

		if (p->doomed) {
			s = p->doomed;
			p->doomed = s->next;
			pthread_mutex_unlock(&p->lock);
			netpool_destroy(p, s);
			pthread_mutex_lock(&p->lock);
			continue;
		}
		if (p->n_ready + p->building >= p->o.depth) {
			pthread_cond_wait(&p->cond, &p->lock);
			continue;
		}
		p->building++;
		pthread_mutex_unlock(&p->lock);
		r = netpool_build(p, &s, &err);
		pthread_mutex_lock(&p->lock);
		p->building--;
		if (r == 0) {
			s->next = p->ready;
			p->ready = s;
			p->n_ready++;
			pthread_cond_broadcast(&p->cond);
		} else {
			free(p->error);
			p->error = err;
			err = NULL;
			/* do not spin on a host that refuses: retry in a second */
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&p->cond, &p->lock, &ts);
		}
		free(err);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int netpool_claim(struct netpool *p, struct netslot **ret, bool *ret_built, char **ret_error)
{
	struct netslot *s;
	uint64_t t0 = now_ns();
	int r;

	pthread_mutex_lock(&p->lock);
	s = p->ready;
	if (s) {
		p->ready = s->next;
		p->n_ready--;
		s->next = NULL;
	}
	p->claims++;
	p->in_use++;
	pthread_cond_broadcast(&p->cond); /* the filler refills */
	pthread_mutex_unlock(&p->lock);
	*ret_built = s == NULL;
	if (!s) {
		r = netpool_build(p, &s, ret_error);
		pthread_mutex_lock(&p->lock);
		p->claims_built++;
		if (r < 0)
			p->in_use--;
		pthread_mutex_unlock(&p->lock);
		if (r < 0)
			return r;
	}
	pthread_mutex_lock(&p->lock);
	p->claim_ms_last = (double)(now_ns() - t0) / 1e6;
	pthread_mutex_unlock(&p->lock);
	*ret = s;
	return 0;
}

int netpool_adopt(struct netpool *p, unsigned index, struct netslot **ret, char **ret_error)
{
	struct netslot *s = slot_alloc();
	char path[sizeof(NETNS_DIR) + 64];
	int saved, r;
	size_t k;

	if (!s)
		return -ENOMEM; /* the kept slot stays untaken: netpool_free removes it */
	pthread_mutex_lock(&p->lock);
	for (k = 0; k < p->n_kept && (p->kept[k] != index || p->kept_taken[k]); k++)
		;
	if (k < p->n_kept) {
		p->kept_taken[k] = true;
		p->in_use++;
	}
	pthread_mutex_unlock(&p->lock);
	if (k == p->n_kept) {
		error_set(ret_error, "network slot %u was not kept from the earlier run", index);
		free(s);
		return -EINVAL;
	}
	slot_names(p, s, index);
	snprintf(path, sizeof(path), NETNS_DIR "/%s", s->netns);
	s->netns_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (s->netns_fd < 0) {
		r = -errno;
		error_set(ret_error, "network slot %s of the earlier run: %s", s->netns, strerror(-r));
		netpool_release(p, s); /* its remains, if any, go */
		return r;
	}
	/* the earlier run's resolver socket went with it: a new one (the redirect is the namespace's) */
	if ((r = netpool_enter(s, &saved)) == 0) {
		s->dns_fd = np_resolver_socket();
		netpool_leave(saved);
		r = s->dns_fd < 0 ? s->dns_fd : 0;
	}
	if (r < 0)
		np_note(p, "network slot %s of the earlier run: no resolver socket (%s): its guest's DNS goes unanswered",
		     s->netns, strerror(-r));
	np_resolver_add(p->resolver, s);
	*ret = s;
	return 0;
}

void netpool_release(struct netpool *p, struct netslot *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&p->lock);
	s->next = p->doomed;
	p->doomed = s;
	p->in_use--;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

char *netpool_status_json(struct netpool *p)
{
	char *s = NULL;

	pthread_mutex_lock(&p->lock);
	if (asprintf(&s,
		     "{\"range\":\"%s\",\"tag\":\"%s\",\"target\":%u,\"ready\":%u,\"building\":%u,\"in_use\":%u,"
		     "\"built\":%" PRIu64 ",\"destroyed\":%" PRIu64 ",\"claims\":%" PRIu64
		     ",\"claims_built_on_demand\":%" PRIu64 ",\"build_failed\":%" PRIu64
		     ",\"build_ms_last\":%.3f,\"claim_ms_last\":%.3f,\"egress\":%s,\"dns\":\"%s\"}",
		     p->range, p->tag, p->o.depth, p->n_ready, p->building, p->in_use, p->built, p->destroyed,
		     p->claims, p->claims_built, p->build_failed, p->build_ms_last, p->claim_ms_last,
		     p->o.egress ? "true" : "false", np_resolver_upstream(p->resolver)) < 0)
		s = NULL;
	pthread_mutex_unlock(&p->lock);
	return s;
}

/* ---- start and stop ---- */

static bool is_kept(const struct netpool *p, const char *name, const char *prefix)
{
	size_t l = strlen(prefix);
	char *end;
	unsigned long i;

	if (strncmp(name, prefix, l) != 0 || !name[l])
		return false;
	i = strtoul(name + l, &end, 10);
	if (*end)
		return false;
	for (size_t k = 0; k < p->n_kept; k++)
		if (p->kept[k] == i)
			return true;
	return false;
}

/*
 * What an earlier run of this instance left: namespaces, host links, the host
 * table; the slots kept for re-adoption stay (the host table is made again).
 */
static void sweep(struct netpool *p)
{
	char prefix[16], hprefix[16];
	struct nl_sock *sk = nl_open();
	struct nl_cache *cache = NULL;
	DIR *d = opendir(NETNS_DIR);
	struct dirent *de;

	snprintf(prefix, sizeof(prefix), "ef%s-", p->tag);
	snprintf(hprefix, sizeof(hprefix), "ef%sh", p->tag);
	if (sk && rtnl_link_alloc_cache(sk, AF_UNSPEC, &cache) == 0) {
		for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
			const char *n = rtnl_link_get_name((struct rtnl_link *)o);

			if (n && strncmp(n, hprefix, strlen(hprefix)) == 0 && !is_kept(p, n, hprefix)) {
				np_note(p, "removing link %s left by an earlier run", n);
				link_delete(sk, n);
			}
		}
		nl_cache_free(cache);
	}
	while (d && (de = readdir(d)))
		if (strncmp(de->d_name, prefix, strlen(prefix)) == 0 && !is_kept(p, de->d_name, prefix)) {
			np_note(p, "removing netns %s left by an earlier run", de->d_name);
			netns_remove(de->d_name);
		}
	if (d)
		closedir(d);
	if (sk)
		nl_socket_free(sk);
	/* the host table an earlier run left is replaced by host_table, in one transaction */
}

/* Within the /30 of a slot kept from the earlier run (its host end's routes)? */
static bool kept_route(const struct netpool *p, uint32_t a, unsigned plen)
{
	for (size_t k = 0; plen >= 30 && k < p->n_kept; k++)
		if ((a & ~3u) == np_alloc_host_addr(&p->alloc, p->kept[k]) - 1)
			return true;
	return false;
}

/* The range must not overlap any route or address the host has (default routes aside, kept slots'). */
static int check_overlap(struct netpool *p, char **ret_error)
{
	struct nl_sock *sk = nl_open();
	struct nl_cache *cache = NULL;
	int r = 0;

	if (!sk || rtnl_route_alloc_cache(sk, AF_INET, 0, &cache) < 0) {
		if (sk)
			nl_socket_free(sk);
		error_set(ret_error, "cannot read the host's routes");
		return -EIO;
	}
	for (struct nl_object *o = nl_cache_get_first(cache); o && r == 0; o = nl_cache_get_next(o)) {
		struct rtnl_route *rt = (struct rtnl_route *)o;
		struct nl_addr *dst = rtnl_route_get_dst(rt);
		unsigned plen = dst ? nl_addr_get_prefixlen(dst) : 0;
		uint32_t a;
		char buf[64];

		if (!dst || plen == 0 || nl_addr_get_len(dst) != 4)
			continue;
		memcpy(&a, nl_addr_get_binary_addr(dst), 4);
		if (kept_route(p, ntohl(a), plen))
			continue; /* a kept slot's own */
		if (np_overlap(ntohl(a), plen, p->alloc.base, p->alloc.prefix)) {
			error_set(ret_error, "network range %s overlaps the host's route %s (table %u): choose another with --net-range",
				  p->range, nl_addr2str(dst, buf, sizeof(buf)), rtnl_route_get_table(rt));
			r = -EADDRINUSE;
		}
	}
	nl_cache_free(cache);
	nl_socket_free(sk);
	return r;
}

static int host_table(struct netpool *p, char **ret_error)
{
	char nft[2048];

	/*
	 * One transaction: an earlier run's table (if any; "add" first so the
	 * delete always has one) is replaced at once, so the sandboxes of
	 * network slots kept for re-adoption are never without their filter.
	 * ("destroy" would ignore a missing table, but needs nftables >= 1.0.8.)
	 */
	snprintf(nft, sizeof(nft),
		 "add table ip emberfs_%1$s\n"
		 "delete table ip emberfs_%1$s\n"
		 "add table ip emberfs_%1$s\n"
		 "add chain ip emberfs_%1$s input { type filter hook input priority filter; policy accept; }\n"
		 "add chain ip emberfs_%1$s forward { type filter hook forward priority filter; policy accept; }\n"
		 "add chain ip emberfs_%1$s post { type nat hook postrouting priority srcnat; }\n"
		 /* a sandbox reaches no host service and not the daemon: only replies to the host's own connections */
		 "add rule ip emberfs_%1$s input iifname \"ef%1$sh*\" ct state established,related accept\n"
		 "add rule ip emberfs_%1$s input iifname \"ef%1$sh*\" drop\n"
		 /* nor another sandbox */
		 "add rule ip emberfs_%1$s forward iifname \"ef%1$sh*\" oifname \"ef%1$sh*\" drop\n"
		 "add rule ip emberfs_%1$s forward oifname \"ef%1$sh*\" ct state established,related accept\n"
		 "add rule ip emberfs_%1$s forward oifname \"ef%1$sh*\" drop\n"
		 "add rule ip emberfs_%1$s forward iifname \"ef%1$sh*\" %2$s\n"
		 "add rule ip emberfs_%1$s post ip saddr %3$s oifname != \"ef%1$sh*\" masquerade\n",
		 p->tag, p->o.egress ? "accept" : "drop", p->range);
	return nft_run(nft, ret_error);
}

int netpool_new(const struct netpool_options *o, struct netpool **ret, char **ret_error)
{
	struct netpool *p = calloc(1, sizeof(*p));
	int r;

	if (!p)
		return -ENOMEM;
	p->o = *o;
	p->forward_saved = -1;
	snprintf(p->range, sizeof(p->range), "%s", o->range ? o->range : NETPOOL_DEFAULT_RANGE);
	snprintf(p->tag, sizeof(p->tag), "%s", o->tag);
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	if (strlen(p->tag) != 4 || strspn(p->tag, "0123456789abcdef") != 4) {
		error_set(ret_error, "netpool: bad instance tag \"%s\"", o->tag);
		r = -EINVAL;
		goto fail;
	}
	if ((r = np_alloc_init(&p->alloc, p->range, ret_error)) < 0)
		goto fail;
	if (p->alloc.n < o->depth) {
		error_set(ret_error, "network range %s holds %u slots, fewer than the pool's depth %u", p->range,
			  p->alloc.n, o->depth);
		r = -EINVAL;
		goto fail;
	}
	if (o->n_keep && (!(p->kept = calloc(o->n_keep, sizeof(*p->kept))) ||
			  !(p->kept_taken = calloc(o->n_keep, sizeof(*p->kept_taken))))) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t k = 0; k < o->n_keep; k++)
		if (np_alloc_take(&p->alloc, o->keep[k]) == 0)
			p->kept[p->n_kept++] = o->keep[k];
		else
			np_note(p, "slot %u of an earlier run is outside %s or kept twice: not kept", o->keep[k], p->range);
	p->o.keep = NULL;
	p->o.n_keep = 0;
	if (access("/dev/net/tun", R_OK | W_OK) < 0) {
		error_set(ret_error, "/dev/net/tun: %s", strerror(errno));
		r = -errno;
		goto fail;
	}
	sweep(p);
	if ((r = check_overlap(p, ret_error)) < 0 || (r = host_table(p, ret_error)) < 0)
		goto fail;
	if ((r = np_resolver_new(p, o->dns, p->alloc.n, &p->resolver, ret_error)) < 0)
		goto fail;
	if (o->egress) {
		r = set_ip_forward(1);
		if (r < 0) {
			error_set(ret_error, "host ip_forward: %s", strerror(-r));
			goto fail;
		}
		p->forward_saved = r;
	}
	if (o->depth > 0) {
		if (pthread_create(&p->filler, NULL, filler_main, p) != 0) {
			error_set(ret_error, "netpool: cannot start its thread");
			r = -EAGAIN;
			goto fail;
		}
		p->filler_started = true;
	}
	*ret = p;
	return 0;
fail:
	netpool_free(p);
	return r;
}

void netpool_free(struct netpool *p)
{
	char cmd[128], *ignored = NULL;
	struct netslot *s;

	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	if (p->filler_started)
		pthread_join(p->filler, NULL);
	while ((s = p->ready)) {
		p->ready = s->next;
		netpool_destroy(p, s);
	}
	while ((s = p->doomed)) {
		p->doomed = s->next;
		netpool_destroy(p, s);
	}
	/* kept for re-adoption but never taken */
	for (size_t k = 0; k < p->n_kept; k++)
		if (!p->kept_taken[k] && (s = slot_alloc())) {
			slot_names(p, s, p->kept[k]);
			netpool_destroy(p, s);
		}
	np_resolver_free(p->resolver); /* every slot's socket is closed by now */
	p->resolver = NULL;
	if (p->alloc.bits) {
		snprintf(cmd, sizeof(cmd), "delete table ip emberfs_%s\n", p->tag);
		nft_run(cmd, &ignored);
		free(ignored);
	}
	if (p->forward_saved == 0)
		set_ip_forward(0);
	np_alloc_free(&p->alloc);
	free(p->kept);
	free(p->kept_taken);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p->error);
	free(p);
}
