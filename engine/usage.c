/*
 * A sandbox's usage file (docs/interface.md, "usage"): rendered at each open.
 *
 * Host figures are read fresh whenever a VMM runs: its CPU time from
 * /proc/PID/stat (the VMM is one process; its cgroup holds only it, but the
 * groups belong to the driver's jail and differ between cgroup v1 and v2,
 * while /proc counts all its threads, living and ended, in every setup), its
 * RSS and PSS from /proc/PID/smaps_rollup, the bytes through the host end of
 * its network slot's veth, the allocated size of its disk file.
 *
 * The guest's figures (its /proc/meminfo, statfs of its /) come from its
 * agent, through ops every agent has (open/read/close and statfs: guests
 * baked or hibernated by an earlier daemon answer them too), and only while
 * the sandbox is ready with no operation running: a read never resumes or
 * wakes a sleeping sandbox and never waits for an operation; it holds one
 * off for at most USAGE_GUEST_TIMEOUT_MS (s->op_lock, taken only if free).
 * A hibernate takes a sample as it starts, so a sleeping sandbox's figures
 * are those it fell asleep with. Otherwise the last sample answers, with
 * its age. What the guest sends is
 * untrusted: every figure is bounded and checked against the others, and a
 * sample with any bad one is dropped whole.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "parse.h"
#include "usage.h"

#define USAGE_RETRY_MS 1000   /* after a failed guest sample */
#define USAGE_CPU_MIN_MS 500  /* a CPU percent covers at least this much time */
#define BYTES_MAX (1ull << 50)
#define MEMINFO_MAX 16384

/* ---- the guest's sample ---- */

/* A reply's integer field in 0..max; -EPROTO otherwise. */
static int reply_u64(json_object *resp, const char *key, uint64_t max, uint64_t *ret)
{
	json_object *v;
	int64_t x;

	if (!json_object_object_get_ex(resp, key, &v) || !json_object_is_type(v, json_type_int))
		return -EPROTO;
	errno = 0;
	x = json_object_get_int64(v);
	if (errno || x < 0 || (uint64_t)x > max)
		return -EPROTO;
	*ret = (uint64_t)x;
	return 0;
}

static unsigned ms_left(uint64_t deadline_ns)
{
	uint64_t now = now_ns();

	return now >= deadline_ns ? 0 : (unsigned)((deadline_ns - now) / 1000000) + 1;
}

static int guest_call_by(struct agent_client *ac, json_object *req, uint64_t deadline_ns, json_object **resp,
			 uint8_t **data, size_t *len)
{
	unsigned left = ms_left(deadline_ns);

	if (!left)
		return -ETIMEDOUT;
	return agent_call_full(ac, req, NULL, 0, left, NULL, NULL, resp, data, len);
}

static int guest_statfs(struct agent_client *ac, uint64_t deadline_ns, struct usage_guest *g)
{
	_cleanup_json_ json_object *req = json_object_new_object(), *resp = NULL;
	uint64_t frsize, blocks, bfree, bavail;
	int r;

	if (!req)
		return -ENOMEM;
	json_object_object_add(req, "op", json_object_new_string("statfs"));
	json_object_object_add(req, "path", json_object_new_string("/"));
	r = guest_call_by(ac, req, deadline_ns, &resp, NULL, NULL);
	if (r < 0)
		return r;
	if ((r = reply_u64(resp, "frsize", 1u << 20, &frsize)) < 0 || !frsize ||
	    (r = reply_u64(resp, "blocks", BYTES_MAX / frsize, &blocks)) < 0 ||
	    (r = reply_u64(resp, "bfree", blocks, &bfree)) < 0 || (r = reply_u64(resp, "bavail", bfree, &bavail)) < 0)
		return -EPROTO;
	g->disk_total = blocks * frsize;
	g->disk_free = bfree * frsize;
	g->disk_avail = bavail * frsize;
	return 0;
}

static void close_done(void *arg, int result, json_object *resp, const uint8_t *data, size_t len)
{
	(void)arg, (void)result, (void)resp, (void)data, (void)len;
}

static int guest_meminfo(struct agent_client *ac, uint64_t deadline_ns, struct usage_guest *g)
{
	_cleanup_json_ json_object *req = json_object_new_object(), *resp = NULL;
	_cleanup_free_ uint8_t *data = NULL;
	size_t len = 0;
	uint64_t fh;
	int r;

	if (!req)
		return -ENOMEM;
	json_object_object_add(req, "op", json_object_new_string("open"));
	json_object_object_add(req, "path", json_object_new_string("/proc/meminfo"));
	json_object_object_add(req, "flags", json_object_new_int(O_RDONLY));
	r = guest_call_by(ac, req, deadline_ns, &resp, NULL, NULL);
	if (r < 0)
		return r;
	if (reply_u64(resp, "fh", UINT64_MAX >> 1, &fh) < 0)
		return -EPROTO;
	json_object_put(req);
	json_object_put(TAKE_PTR(resp));
	req = json_object_new_object();
	if (!req)
		return -ENOMEM; /* the handle goes with the connection */
	json_object_object_add(req, "op", json_object_new_string("read"));
	json_object_object_add(req, "fh", json_object_new_uint64(fh));
	json_object_object_add(req, "off", json_object_new_int(0));
	json_object_object_add(req, "len", json_object_new_int(MEMINFO_MAX));
	r = guest_call_by(ac, req, deadline_ns, NULL, &data, &len);
	{
		/* closed whatever happened, without waiting for the answer */
		json_object *cl = json_object_new_object();

		if (cl) {
			json_object_object_add(cl, "op", json_object_new_string("close"));
			json_object_object_add(cl, "fh", json_object_new_uint64(fh));
			agent_call_async(ac, cl, NULL, 0, close_done, NULL);
			json_object_put(cl);
		}
	}
	if (r < 0)
		return r;
	if (!data || len > MEMINFO_MAX)
		return -EPROTO;
	return usage_parse_meminfo((const char *)data, len, g);
}

/* The guest's figures now, from its agent connection ac (a reference the caller holds). */
static int guest_query(struct agent_client *ac, struct usage_guest *ret)
{
	uint64_t deadline = now_ns() + (uint64_t)USAGE_GUEST_TIMEOUT_MS * 1000000;
	struct usage_guest g = { 0 };
	int r;

	r = guest_statfs(ac, deadline, &g);
	if (r == 0)
		r = guest_meminfo(ac, deadline, &g);
	if (r < 0)
		return r;
	g.sampled_unix_ms = realtime_ms();
	*ret = g;
	return 0;
}

/*
 * s->op_lock held: the guest's figures now into s->usage.guest, if it is
 * ready (-EAGAIN otherwise, or within USAGE_RETRY_MS of a failed sample: a
 * guest that does not answer costs one bounded wait a second, not one per
 * read). The lock keeps every operation (pause, hibernate, fork, stop) from
 * stopping the guest under the requests, and the idle timeout from
 * counting the sample as use.
 */
int sandbox_usage_sample(struct sandbox *s)
{
	struct engine *e = s->e;
	struct agent_client *ac = NULL;
	struct usage_guest g;
	uint64_t now = now_ns();
	int r = 0;

	pthread_mutex_lock(&e->lock);
	if (s->state != SB_READY || !s->agent || atomic_load(&s->cancel) || now < s->usage.retry_ns)
		r = -EAGAIN;
	else
		ac = agent_ref(s->agent);
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r;

	r = guest_query(ac, &g);
	agent_unref(ac);

	pthread_mutex_lock(&e->lock);
	if (r == 0)
		s->usage.guest = g;
	s->usage.retry_ns = r < 0 ? now_ns() + (uint64_t)USAGE_RETRY_MS * 1000000 : 0;
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		log_debug("sandbox %s: usage: guest sample failed: %s", s->name, strerror(-r));
	return r;
}

/* A read's sample: never waits for an operation under way (-EBUSY: the last sample answers). */
static int guest_sample(struct sandbox *s)
{
	int r;

	if (pthread_mutex_trylock(&s->op_lock) != 0)
		return -EBUSY;
	r = sandbox_usage_sample(s);
	pthread_mutex_unlock(&s->op_lock);
	return r;
}

/* ---- host figures ---- */

struct host_figures {
	bool cpu, mem, net, disk;
	uint64_t cpu_ticks, start_ticks, rss, pss, rx, tx, disk_alloc, disk_size;
};

static int read_u64_file(const char *path, uint64_t *ret)
{
	_cleanup_free_ char *txt = NULL;
	size_t len;
	char *end;
	int r = read_file(path, 64, &txt, &len);

	if (r < 0)
		return r;
	errno = 0;
	*ret = strtoull(txt, &end, 10);
	return errno || end == txt ? -EPROTO : 0;
}

static void host_read(pid_t pid, const char *host_if, const char *disk, struct host_figures *h)
{
	char path[96];
	_cleanup_free_ char *txt = NULL;
	size_t len;
	struct stat st;

	if (pid > 0) {
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
		h->cpu = read_file(path, 4096, &txt, &len) == 0 &&
			 usage_parse_stat(txt, len, &h->cpu_ticks, &h->start_ticks) == 0;
		free(TAKE_PTR(txt));
		snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
		h->mem = read_file(path, 8192, &txt, &len) == 0 &&
			 usage_parse_smaps_rollup(txt, len, &h->rss, &h->pss) == 0;
	}
	if (host_if[0]) {
		char tx[96];

		/* the host end's rx is what the guest sent */
		snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/rx_bytes", host_if);
		snprintf(tx, sizeof(tx), "/sys/class/net/%s/statistics/tx_bytes", host_if);
		h->net = read_u64_file(path, &h->tx) == 0 && read_u64_file(tx, &h->rx) == 0;
	}
	if (disk && stat(disk, &st) == 0 && S_ISREG(st.st_mode)) {
		h->disk = true;
		h->disk_alloc = (uint64_t)st.st_blocks * 512;
		h->disk_size = (uint64_t)st.st_size;
	}
}

static uint64_t boottime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- the file ---- */

static json_object *u64_json(uint64_t v)
{
	return json_object_new_int64((int64_t)v);
}

static json_object *guest_mem_json(const struct usage_guest *g)
{
	json_object *o;

	if (!g->sampled_unix_ms)
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, "total_bytes", u64_json(g->mem_total));
	json_object_object_add(o, "used_bytes", u64_json(g->mem_total - g->mem_available));
	json_object_object_add(o, "available_bytes", u64_json(g->mem_available));
	json_object_object_add(o, "free_bytes", u64_json(g->mem_free));
	json_object_object_add(o, "cache_bytes", u64_json(g->mem_cache));
	return o;
}

static json_object *guest_disk_json(const struct usage_guest *g)
{
	json_object *o;

	if (!g->sampled_unix_ms)
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, "total_bytes", u64_json(g->disk_total));
	json_object_object_add(o, "used_bytes", u64_json(g->disk_total - g->disk_free));
	json_object_object_add(o, "available_bytes", u64_json(g->disk_avail));
	json_object_object_add(o, "free_bytes", u64_json(g->disk_free));
	return o;
}

/* e->lock held. */
static json_object *usage_json(struct sandbox *s, const struct host_figures *h, bool fresh, uint64_t now_ms)
{
	const struct usage_guest *g = &s->usage.guest;
	json_object *o = json_object_new_object(), *x;
	long hz = sysconf(_SC_CLK_TCK);

	json_object_object_add(o, "sampled_at_unix_ms", u64_json(now_ms));
	json_object_object_add(o, "state", json_object_new_string(sandbox_state_name(s->state)));
	if (h->cpu && hz > 0) {
		x = json_object_new_object();
		json_object_object_add(x, "time_ms", u64_json(h->cpu_ticks * 1000 / (uint64_t)hz));
		json_object_object_add(x, "percent", s->usage.interval_ms > 0 ? ms_json(s->usage.percent) : NULL);
		json_object_object_add(x, "interval_ms", s->usage.interval_ms > 0 ? ms_json(s->usage.interval_ms) : NULL);
		json_object_object_add(o, "cpu", x);
	} else {
		json_object_object_add(o, "cpu", NULL);
	}
	x = json_object_new_object();
	json_object_object_add(x, "vmm_rss_bytes", h->mem ? u64_json(h->rss) : NULL);
	json_object_object_add(x, "vmm_pss_bytes", h->mem ? u64_json(h->pss) : NULL);
	json_object_object_add(x, "guest", guest_mem_json(g));
	json_object_object_add(o, "memory", x);
	x = json_object_new_object();
	json_object_object_add(x, "host_allocated_bytes", h->disk ? u64_json(h->disk_alloc) : NULL);
	json_object_object_add(x, "host_size_bytes", h->disk ? u64_json(h->disk_size) : NULL);
	json_object_object_add(x, "guest", guest_disk_json(g));
	json_object_object_add(o, "disk", x);
	if (h->net) {
		x = json_object_new_object();
		json_object_object_add(x, "rx_bytes", u64_json(h->rx));
		json_object_object_add(x, "tx_bytes", u64_json(h->tx));
		json_object_object_add(o, "net", x);
	} else {
		json_object_object_add(o, "net", NULL);
	}
	if (g->sampled_unix_ms) {
		x = json_object_new_object();
		json_object_object_add(x, "sampled_at_unix_ms", u64_json(g->sampled_unix_ms));
		json_object_object_add(x, "age_ms", u64_json(now_ms > g->sampled_unix_ms ? now_ms - g->sampled_unix_ms : 0));
		json_object_object_add(x, "fresh", json_object_new_boolean(fresh));
		json_object_object_add(o, "guest_sample", x);
	} else {
		json_object_object_add(o, "guest_sample", NULL);
	}
	return o;
}

char *sandbox_render_usage(struct sandbox *s)
{
	struct engine *e = s->e;
	_cleanup_json_ json_object *o = NULL;
	_cleanup_free_ char *disk = vm_file(s->dir, VM_DISK);
	struct host_figures h = { 0 };
	char host_if[sizeof(s->net->host_if)] = "";
	bool fresh = guest_sample(s) == 0;
	uint64_t now_ms;
	pid_t pid;
	long hz = sysconf(_SC_CLK_TCK);

	pthread_mutex_lock(&e->lock);
	pid = s->vmm ? s->vmm_pid : 0;
	if (s->net)
		snprintf(host_if, sizeof(host_if), "%s", s->net->host_if);
	pthread_mutex_unlock(&e->lock);

	host_read(pid, host_if, disk, &h);
	now_ms = realtime_ms();

	pthread_mutex_lock(&e->lock);
	if (h.cpu && hz > 0)
		usage_cpu_update(&s->usage, pid, h.cpu_ticks, h.start_ticks, boottime_ns(), (unsigned)hz,
				 USAGE_CPU_MIN_MS);
	o = usage_json(s, &h, fresh, now_ms);
	pthread_mutex_unlock(&e->lock);
	if (!o)
		return NULL;
	return strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE), "\n",
		       NULL);
}

/* ---- the record ---- */

json_object *sandbox_usage_record_json(struct sandbox *s)
{
	const struct usage_guest *g = &s->usage.guest;
	json_object *o;

	if (!g->sampled_unix_ms)
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, "sampled_at_unix_ms", u64_json(g->sampled_unix_ms));
	json_object_object_add(o, "mem_total", u64_json(g->mem_total));
	json_object_object_add(o, "mem_free", u64_json(g->mem_free));
	json_object_object_add(o, "mem_available", u64_json(g->mem_available));
	json_object_object_add(o, "mem_cache", u64_json(g->mem_cache));
	json_object_object_add(o, "disk_total", u64_json(g->disk_total));
	json_object_object_add(o, "disk_free", u64_json(g->disk_free));
	json_object_object_add(o, "disk_avail", u64_json(g->disk_avail));
	return o;
}

void sandbox_usage_from_record(struct sandbox *s, json_object *o)
{
	struct usage_guest g = { 0 };

	if (!o || !json_object_is_type(o, json_type_object))
		return;
	/* the record is ours, but the figures go out as they are: the same bounds as a guest's */
	if (reply_u64(o, "sampled_at_unix_ms", UINT64_MAX >> 1, &g.sampled_unix_ms) < 0 ||
	    reply_u64(o, "mem_total", BYTES_MAX, &g.mem_total) < 0 ||
	    reply_u64(o, "mem_free", g.mem_total, &g.mem_free) < 0 ||
	    reply_u64(o, "mem_available", g.mem_total, &g.mem_available) < 0 ||
	    reply_u64(o, "mem_cache", g.mem_total, &g.mem_cache) < 0 ||
	    reply_u64(o, "disk_total", BYTES_MAX, &g.disk_total) < 0 ||
	    reply_u64(o, "disk_free", g.disk_total, &g.disk_free) < 0 ||
	    reply_u64(o, "disk_avail", g.disk_free, &g.disk_avail) < 0)
		return;
	s->usage.guest = g;
}
