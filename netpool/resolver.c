/*
 * The resolver: every network slot's guest DNS, served by one daemon thread
 * (docs/architecture.md, "Egress and the resolver").
 *
 * Each slot's prerouting redirects what the guest sends to port 53 (udp and
 * tcp, whatever address it asked) to NETPOOL_GW_ADDR:53 in the slot's
 * namespace, where a UDP socket the daemon made inside that namespace
 * receives it (tcp finds no listener: refused). The thread (epoll, host
 * namespace) parses each query with ldns, forwards it to the upstream from a
 * socket of its own (a fresh random source port and id per query), checks
 * that the answer is one (id, the same single question), and, before
 * relaying it, adds every A record of an answer to a name that a name rule
 * of the slot's applied policy matches to that rule's set, with a timeout of
 * the record's TTL within [EGRESS_TTL_MIN, EGRESS_TTL_MAX], in one nft
 * transaction in the slot's namespace: the guest's connect that follows is
 * already allowed.
 *
 * Everything from the guest is hostile: a packet that does not parse as one
 * standard query with one question is dropped; sizes, queries in flight
 * (per slot and in all) and their time are bounded (below).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ldns/ldns.h>

#include "egress.h"
#include "np_internal.h"

#define INFLIGHT_MAX 256	 /* queries forwarded and not yet answered, all slots */
#define SLOT_INFLIGHT_MAX 16	 /* ... of one slot; more are dropped (the guest retries) */
#define QUERY_TIMEOUT_MS 3000	 /* an unanswered query is forgotten */
#define READS_PER_WAKE 16	 /* packets read from one socket before serving the others */
#define ELEMENTS_MAX 64		 /* A records of one answer added to sets */
#define KEY_UPSTREAM (1ull << 63) /* epoll key of a query's upstream socket: | its entry */

struct query {
	bool used;
	int fd;			/* connected to the upstream */
	uint16_t guest_id;	/* the guest's id, given back in the answer */
	uint16_t up_id;		/* the random id sent upstream, which the answer carries */
	unsigned slot;		/* index */
	uint32_t gen;		/* of the slot when asked */
	struct sockaddr_in guest;
	struct np_dns_question q;
	uint64_t deadline_ns;
};

struct np_resolver {
	struct netpool *p;
	struct sockaddr_in upstream;
	bool have_upstream;
	char upstream_text[32];
	int epfd;
	int stopfd[2];
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	/* protected by lock */
	unsigned n_slots;
	struct netslot **slots;	 /* by index */
	uint32_t *gens;		 /* of the slot there now */
	unsigned *inflight;	 /* by index */
	uint32_t next_gen;
	struct query q[INFLIGHT_MAX];
	uint64_t dropped; /* queries dropped: malformed, over a bound */
};

/* "A.B.C.D[:PORT]" */
static int parse_upstream(const char *s, struct sockaddr_in *ret)
{
	char a[32];
	const char *colon = strchr(s, ':');
	size_t l = colon ? (size_t)(colon - s) : strlen(s);
	unsigned long port = 53;
	char *end;

	if (l == 0 || l >= sizeof(a))
		return -EINVAL;
	memcpy(a, s, l);
	a[l] = '\0';
	memset(ret, 0, sizeof(*ret));
	ret->sin_family = AF_INET;
	if (inet_pton(AF_INET, a, &ret->sin_addr) != 1)
		return -EINVAL;
	if (colon) {
		errno = 0;
		port = strtoul(colon + 1, &end, 10);
		if (errno || *end || end == colon + 1 || port == 0 || port > 65535)
			return -EINVAL;
	}
	ret->sin_port = htons((uint16_t)port);
	return 0;
}

/* The first IPv4 nameserver of /etc/resolv.conf; -ENOENT if none. */
static int host_nameserver(struct sockaddr_in *ret)
{
	FILE *f = fopen("/etc/resolv.conf", "re");
	char line[256], addr[64];
	int r = -ENOENT;

	if (!f)
		return -ENOENT;
	while (r < 0 && fgets(line, sizeof(line), f))
		if (sscanf(line, " nameserver %63s", addr) == 1 && !strchr(addr, ':') && parse_upstream(addr, ret) == 0)
			r = 0;
	fclose(f);
	return r;
}

int np_resolver_socket(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(53) };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1, r;

	if (fd < 0)
		return -errno;
	inet_pton(AF_INET, NETPOOL_GW_ADDR, &a.sin_addr);
	/* the tap has its address, but no carrier until the VMM opens it */
	setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

static uint64_t slot_key(unsigned index, uint32_t gen)
{
	return (uint64_t)gen << 32 | index;
}

void np_resolver_add(struct np_resolver *r, struct netslot *s)
{
	struct epoll_event ev = { .events = EPOLLIN };

	if (!r || s->dns_fd < 0 || s->index >= r->n_slots)
		return;
	pthread_mutex_lock(&r->lock);
	r->slots[s->index] = s;
	r->gens[s->index] = ++r->next_gen;
	ev.data.u64 = slot_key(s->index, r->gens[s->index]);
	if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, s->dns_fd, &ev) < 0)
		r->slots[s->index] = NULL;
	pthread_mutex_unlock(&r->lock);
}

static void query_end(struct np_resolver *r, struct query *q)
{
	if (!q->used)
		return;
	epoll_ctl(r->epfd, EPOLL_CTL_DEL, q->fd, NULL);
	close(q->fd);
	np_dns_question_clear(&q->q);
	if (r->inflight[q->slot])
		r->inflight[q->slot]--;
	memset(q, 0, sizeof(*q));
	q->fd = -1;
}

void np_resolver_remove(struct np_resolver *r, struct netslot *s)
{
	if (s->dns_fd < 0)
		return;
	if (r && s->index < r->n_slots) {
		pthread_mutex_lock(&r->lock);
		if (r->slots[s->index] == s) {
			epoll_ctl(r->epfd, EPOLL_CTL_DEL, s->dns_fd, NULL);
			r->slots[s->index] = NULL;
			r->gens[s->index] = 0;
			for (unsigned i = 0; i < INFLIGHT_MAX; i++)
				if (r->q[i].used && r->q[i].slot == s->index)
					query_end(r, &r->q[i]);
		}
		pthread_mutex_unlock(&r->lock);
	}
	close(s->dns_fd);
	s->dns_fd = -1;
}

/* A guest's query: checked, then forwarded from a socket of its own. lock held. */
static void on_query(struct np_resolver *r, unsigned index, uint8_t *buf, size_t n, const struct sockaddr_in *from)
{
	struct np_dns_question question = { 0 };
	struct query *q = NULL;
	uint16_t id;
	int fd = -1;

	if (!r->have_upstream || r->inflight[index] >= SLOT_INFLIGHT_MAX || np_dns_query_parse(buf, n, &question) < 0)
		goto drop;
	for (unsigned i = 0; i < INFLIGHT_MAX && !q; i++)
		if (!r->q[i].used)
			q = &r->q[i];
	if (!q || (fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0 ||
	    connect(fd, (struct sockaddr *)&r->upstream, sizeof(r->upstream)) < 0)
		goto drop;
	id = (uint16_t)arc4random_uniform(65536);
	q->guest_id = (uint16_t)(buf[0] << 8 | buf[1]);
	buf[0] = (uint8_t)(id >> 8);
	buf[1] = (uint8_t)id;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = KEY_UPSTREAM | (uint64_t)(q - r->q) };

	if (send(fd, buf, n, 0) != (ssize_t)n || epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		goto drop;
	q->used = true;
	q->fd = fd;
	q->up_id = id;
	q->slot = index;
	q->gen = r->gens[index];
	q->guest = *from;
	q->q = question;
	q->deadline_ns = now_ns() + (uint64_t)QUERY_TIMEOUT_MS * 1000000u;
	r->inflight[index]++;
	return;
drop:
	if (fd >= 0)
		close(fd);
	np_dns_question_clear(&question);
	r->dropped++;
}

/* Adds the answer's A records to the sets of the rules naming the question. slot's egress_lock held. */
static void fill_sets(struct np_resolver *r, struct netslot *s, const struct query *q, const ldns_pkt *pkt)
{
	struct egress_element el[ELEMENTS_MAX];
	size_t n = np_dns_elements(s->egress, &q->q, pkt, el, ELEMENTS_MAX);
	char *script, *err = NULL, *name;

	if (!n || !(script = egress_nft_elements(el, n)))
		return;
	if (netpool_nft_in(s, script, &err) < 0) {
		name = np_dns_name_text(&q->q);
		np_note(r->p, "resolver: %s: adding the addresses of %s to its egress sets failed: %s", s->netns,
			name ? name : "?", err ? err : "?");
		free(name);
	}
	free(script);
	free(err);
}

/* An upstream's answer to query q: checked, the sets filled, relayed. lock held. */
static void on_answer(struct np_resolver *r, struct query *q)
{
	uint8_t buf[NP_DNS_ANSWER_MAX];
	ssize_t n = recv(q->fd, buf, sizeof(buf), MSG_TRUNC);
	ldns_pkt *pkt = NULL;
	struct netslot *s;

	if (n < 0 || np_dns_answer_parse(buf, (size_t)n, q->up_id, &q->q, &pkt) < 0)
		return; /* not the answer: wait for it (or the timeout) */
	s = r->slots[q->slot];
	if (s && r->gens[q->slot] == q->gen) {
		pthread_mutex_lock(&s->egress_lock);
		fill_sets(r, s, q, pkt);
		np_recent_note(s, &q->q, pkt);
		pthread_mutex_unlock(&s->egress_lock);
		buf[0] = (uint8_t)(q->guest_id >> 8);
		buf[1] = (uint8_t)q->guest_id;
		sendto(s->dns_fd, buf, (size_t)n, 0, (const struct sockaddr *)&q->guest, sizeof(q->guest));
	}
	query_end(r, q);
	ldns_pkt_free(pkt);
}

struct np_recent {
	unsigned next; /* the oldest, overwritten next */
	struct {
		char name[256]; /* "": unused */
		uint32_t addr;
		uint64_t expires_ns;
	} e[NP_RECENT_MAX];
};

void np_recent_note(struct netslot *s, const struct np_dns_question *q, const ldns_pkt *pkt)
{
	uint32_t addrs[32], ttls[32];
	size_t n = q->klass == LDNS_RR_CLASS_IN ? np_dns_addrs(pkt, addrs, ttls, 32) : 0;
	uint64_t now = now_ns();
	char *name;

	if (!n || (!s->recent && !(s->recent = calloc(1, sizeof(*s->recent)))) || !(name = np_dns_name_text(q)))
		return;
	for (size_t k = 0; k < n && strlen(name) < sizeof(s->recent->e[0].name); k++) {
		unsigned i = s->recent->next;
		uint32_t ttl = ttls[k] < EGRESS_TTL_MIN ? EGRESS_TTL_MIN : ttls[k] > EGRESS_TTL_MAX ? EGRESS_TTL_MAX : ttls[k];

		s->recent->next = (i + 1) % NP_RECENT_MAX;
		strcpy(s->recent->e[i].name, name);
		s->recent->e[i].addr = addrs[k];
		s->recent->e[i].expires_ns = now + (uint64_t)ttl * 1000000000u;
	}
	free(name);
}

size_t np_recent_elements(const struct netslot *s, const struct egress_policy *pol, struct egress_element *el,
			  size_t max)
{
	uint64_t now = now_ns();
	size_t n = 0;

	for (unsigned i = 0; s->recent && i < pol->n_rules; i++) {
		if (pol->rules[i].target != EGRESS_NAME)
			continue;
		for (unsigned k = 0; k < NP_RECENT_MAX && n < max; k++)
			if (s->recent->e[k].name[0] && s->recent->e[k].expires_ns > now &&
			    egress_name_matches(pol->rules[i].name, s->recent->e[k].name))
				el[n++] = (struct egress_element){
					.rule = i, .addr = s->recent->e[k].addr,
					.ttl = (uint32_t)((s->recent->e[k].expires_ns - now) / 1000000000u) + 1 };
	}
	return n;
}

static void on_slot(struct np_resolver *r, uint64_t key)
{
	unsigned index = (unsigned)(key & 0xffffffffu);
	uint32_t gen = (uint32_t)(key >> 32);
	struct netslot *s = index < r->n_slots ? r->slots[index] : NULL;
	uint8_t buf[NP_DNS_QUERY_MAX + 1];

	if (!s || r->gens[index] != gen)
		return;
	for (int i = 0; i < READS_PER_WAKE; i++) {
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t n = recvfrom(s->dns_fd, buf, sizeof(buf), MSG_TRUNC, (struct sockaddr *)&from, &fl);

		if (n < 0)
			return;
		if (fl != sizeof(from) || from.sin_family != AF_INET) {
			r->dropped++;
			continue;
		}
		on_query(r, index, buf, (size_t)n, &from);
	}
}

static void expire(struct np_resolver *r)
{
	uint64_t now = now_ns();

	for (unsigned i = 0; i < INFLIGHT_MAX; i++)
		if (r->q[i].used && r->q[i].deadline_ns < now)
			query_end(r, &r->q[i]);
}

static void *resolver_main(void *arg)
{
	struct np_resolver *r = arg;
	struct epoll_event evs[32];

	for (;;) {
		int n = epoll_wait(r->epfd, evs, 32, 500);

		pthread_mutex_lock(&r->lock);
		for (int i = 0; i < n; i++) {
			uint64_t key = evs[i].data.u64;

			if (key == 0) { /* the stop pipe */
				pthread_mutex_unlock(&r->lock);
				return NULL;
			}
			if (key & KEY_UPSTREAM) {
				struct query *q = &r->q[key & 0xffff];

				if (q->used)
					on_answer(r, q);
			} else {
				on_slot(r, key);
			}
		}
		expire(r);
		pthread_mutex_unlock(&r->lock);
	}
}

int np_resolver_new(struct netpool *p, const char *upstream, unsigned n_slots, struct np_resolver **ret,
		    char **ret_error)
{
	struct np_resolver *r = calloc(1, sizeof(*r));
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0 };

	if (!r)
		return -ENOMEM;
	r->p = p;
	r->epfd = -1;
	r->stopfd[0] = r->stopfd[1] = -1;
	pthread_mutex_init(&r->lock, NULL);
	for (unsigned i = 0; i < INFLIGHT_MAX; i++)
		r->q[i].fd = -1;
	if (upstream) {
		if (parse_upstream(upstream, &r->upstream) < 0) {
			if (ret_error && asprintf(ret_error, "--dns %s: expected an IPv4 ADDR[:PORT]", upstream) < 0)
				*ret_error = NULL;
			np_resolver_free(r);
			return -EINVAL;
		}
		r->have_upstream = true;
	} else {
		r->have_upstream = host_nameserver(&r->upstream) == 0;
		if (!r->have_upstream)
			np_note(p, "resolver: no IPv4 nameserver in /etc/resolv.conf and no --dns: guests' DNS queries go unanswered");
	}
	if (r->have_upstream) {
		char a[16];

		inet_ntop(AF_INET, &r->upstream.sin_addr, a, sizeof(a));
		snprintf(r->upstream_text, sizeof(r->upstream_text), "%s:%u", a, ntohs(r->upstream.sin_port));
	} else {
		snprintf(r->upstream_text, sizeof(r->upstream_text), "none");
	}
	r->n_slots = n_slots;
	if (!(r->slots = calloc(n_slots, sizeof(*r->slots))) || !(r->gens = calloc(n_slots, sizeof(*r->gens))) ||
	    !(r->inflight = calloc(n_slots, sizeof(*r->inflight))) || (r->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
	    pipe2(r->stopfd, O_CLOEXEC) < 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->stopfd[0], &ev) < 0 ||
	    pthread_create(&r->thread, NULL, resolver_main, r) != 0) {
		np_resolver_free(r);
		return -ENOMEM;
	}
	r->started = true;
	*ret = r;
	return 0;
}

const char *np_resolver_upstream(const struct np_resolver *r)
{
	return r ? r->upstream_text : "none";
}

void np_resolver_free(struct np_resolver *r)
{
	if (!r)
		return;
	if (r->started) {
		if (write(r->stopfd[1], "x", 1) != 1)
			abort(); /* the thread would never end */
		pthread_join(r->thread, NULL);
	}
	for (unsigned i = 0; i < INFLIGHT_MAX; i++)
		query_end(r, &r->q[i]);
	if (r->epfd >= 0)
		close(r->epfd);
	if (r->stopfd[0] >= 0)
		close(r->stopfd[0]);
	if (r->stopfd[1] >= 0)
		close(r->stopfd[1]);
	free(r->slots);
	free(r->gens);
	free(r->inflight);
	pthread_mutex_destroy(&r->lock);
	free(r);
}
