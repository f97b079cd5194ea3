/*
 * libFuzzer: the decoders of the etcd client (cluster/etcd.c) that take
 * bytes from whatever answers on a member's port: the watch stream,
 * fed in chunks the input chooses (chunk boundaries are not message
 * boundaries), and the range answer. The same stream fed whole and in
 * chunks must decode to the same events and the same end.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
	uint32_t hash;
	unsigned n;
};

static void mix(struct seen *s, const void *p, size_t len)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < len; i++)
		s->hash = (s->hash ^ b[i]) * 16777619u;
}

static void check_kv(struct seen *s, const struct etcd_kv *kv, bool need)
{
	if (!kv->key) {
		if (need || kv->value)
			abort();
		return;
	}
	if (!kv->value || kv->value[kv->value_len] != 0)
		abort();
	mix(s, kv->key, strlen(kv->key) + 1);
	mix(s, kv->value, kv->value_len);
	mix(s, &kv->mod_rev, sizeof(kv->mod_rev));
}

static void on_event(void *ctx, const struct etcd_event *ev)
{
	struct seen *s = ctx;

	if (ev->type != ETCD_EV_PUT && ev->type != ETCD_EV_DELETE)
		abort();
	s->n++;
	mix(s, &ev->type, sizeof(ev->type));
	check_kv(s, &ev->kv, true);
	check_kv(s, &ev->prev, false);
}

/* Feeds data in chunks of 1..16 bytes chosen by seed; returns the end. */
static int feed(const uint8_t *data, size_t size, uint32_t seed, struct seen *s, struct etcd_wdec *d)
{
	int r = 0;

	if (etcd_wdec_init(d, on_event, s) < 0)
		abort();
	for (size_t off = 0; off < size && r == 0;) {
		size_t n = seed ? 1 + (seed % 16) : size;

		seed = seed * 1103515245u + 12345u;
		if (n > size - off)
			n = size - off;
		r = etcd_watch_feed(d, data + off, n);
		off += n;
	}
	if (r < 0 && (!d->why[0] || etcd_watch_feed(d, "{}", 2) != -EPROTO))
		abort();
	return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct seen whole = { 2166136261u, 0 }, chunked = { 2166136261u, 0 };
	struct etcd_wdec d1, d2;
	struct etcd_kv *kvs;
	uint32_t seed;
	size_t n;
	int64_t rev;
	int r1, r2;

	if (size < 2)
		return 0;
	seed = (uint32_t)data[0] << 8 | data[1] | 1;
	data += 2;
	size -= 2;
	r1 = feed(data, size, 0, &whole, &d1);
	r2 = feed(data, size, seed, &chunked, &d2);
	if (r1 != r2 || whole.n != chunked.n || whole.hash != chunked.hash || d1.created != d2.created ||
	    d1.rev != d2.rev || d1.compact_rev != d2.compact_rev)
		abort();
	etcd_wdec_done(&d1);
	etcd_wdec_done(&d2);

	if (etcd_decode_range((const char *)data, size, &kvs, &n, &rev) == 0) {
		struct seen s = { 0, 0 };

		for (size_t i = 0; i < n; i++)
			check_kv(&s, &kvs[i], true);
		etcd_kvs_free(kvs, n);
	}
	return 0;
}
