/*
 * netpool-bench: builds, claims and destroys real network slots and prints
 * how long each took (a table on stderr, JSON lines on stdout). Root only.
 *
 *   netpool-bench [-n N] [-r RANGE] [-t TAG]
 *
 * build: N slots built one after another (the cost a claim pays when the
 * pool is empty); claim: N claims from a pool kept at depth 8 by its filler
 * (each claim waits until a slot is ready, untimed, then is timed), each
 * released at once.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "netpool.h"

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* nearest rank */
static double pct(double *v, int n, int p)
{
	int k = (p * n + 99) / 100;

	return v[(k < 1 ? 1 : k) - 1];
}

static int ready_count(struct netpool *p)
{
	char *s = netpool_status_json(p), *r = s ? strstr(s, "\"ready\":") : NULL;
	int n = r ? atoi(r + 8) : -1;

	free(s);
	return n;
}

int main(int argc, char **argv)
{
	struct netpool_options o = { .range = "10.231.0.0/16", .tag = "be0c", .depth = 0, .egress = false };
	struct netpool *p = NULL;
	int n = 30, c;
	char *err = NULL;
	double *build, *claim;

	while ((c = getopt(argc, argv, "n:r:t:k")) != -1) {
		if (c == 'k') { /* keep one slot 20 s for inspection (ip netns exec ...) */
			struct netslot *s;

			if (netpool_new(&o, &p, &err) < 0 || netpool_build(p, &s, &err) < 0) {
				fprintf(stderr, "netpool-bench: %s\n", err ? err : "?");
				return 1;
			}
			printf("%s %s %s\n", s->netns, s->host_if, s->addr);
			fflush(stdout);
			sleep(20);
			netpool_destroy(p, s);
			netpool_free(p);
			return 0;
		}
		if (c == 'n')
			n = atoi(optarg);
		else if (c == 'r')
			o.range = optarg;
		else if (c == 't')
			o.tag = optarg;
		else
			return 2;
	}
	if (n < 1)
		return 2;
	build = calloc((size_t)n, sizeof(double));
	claim = calloc((size_t)n, sizeof(double));
	if (!build || !claim)
		return 1;
	if (netpool_new(&o, &p, &err) < 0) {
		fprintf(stderr, "netpool-bench: %s\n", err ? err : "cannot start");
		return 1;
	}
	for (int i = 0; i < n; i++) {
		struct netslot *s;
		double t0 = now_ms();

		if (netpool_build(p, &s, &err) < 0) {
			fprintf(stderr, "netpool-bench: build: %s\n", err ? err : "?");
			netpool_free(p);
			return 1;
		}
		build[i] = now_ms() - t0;
		netpool_destroy(p, s);
	}
	netpool_free(p);
	o.depth = 8;
	if (netpool_new(&o, &p, &err) < 0) {
		fprintf(stderr, "netpool-bench: %s\n", err ? err : "cannot start");
		return 1;
	}
	for (int i = 0; i < n; i++) {
		struct netslot *s;
		bool built;
		double t0;

		while (ready_count(p) < 8)
			usleep(2000);
		t0 = now_ms();
		if (netpool_claim(p, &s, &built, &err) < 0) {
			fprintf(stderr, "netpool-bench: claim: %s\n", err ? err : "?");
			netpool_free(p);
			return 1;
		}
		claim[i] = now_ms() - t0;
		netpool_release(p, s);
	}
	netpool_free(p);
	qsort(build, (size_t)n, sizeof(double), cmp);
	qsort(claim, (size_t)n, sizeof(double), cmp);
	fprintf(stderr, "netslot (n=%d): build p50 %.2f ms, p99 %.2f ms; claim p50 %.4f ms, p99 %.4f ms; ratio %.0f\n", n,
		pct(build, n, 50), pct(build, n, 99), pct(claim, n, 50), pct(claim, n, 99),
		pct(build, n, 50) / pct(claim, n, 50));
	printf("{\"bench\":\"netslot\",\"metric\":\"claim\",\"n\":%d,\"p50_ms\":%.4f,\"p99_ms\":%.4f}\n", n, pct(claim, n, 50),
	       pct(claim, n, 99));
	printf("{\"bench\":\"netslot\",\"metric\":\"build\",\"n\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n", n, pct(build, n, 50),
	       pct(build, n, 99));
	printf("{\"bench\":\"netslot\",\"metric\":\"ratio_build_over_claim\",\"value\":%.1f}\n",
	       pct(build, n, 50) / pct(claim, n, 50));
	free(build);
	free(claim);
	free(err);
	return 0;
}
