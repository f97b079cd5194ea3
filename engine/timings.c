/* Phase timings on the monotonic clock. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

void timings_start(struct timings *t)
{
	t->n = 0;
	t->mark = now_ns();
}

void timings_lap(struct timings *t, const char *name)
{
	uint64_t now = now_ns();

	if (t->n < MAX_PHASES) {
		snprintf(t->p[t->n].name, sizeof(t->p[t->n].name), "%s", name);
		t->p[t->n].ms = ns_to_ms(now - t->mark);
		t->n++;
	}
	t->mark = now;
}

double timings_total(const struct timings *t)
{
	double sum = 0;

	for (unsigned i = 0; i < t->n; i++)
		sum += t->p[i].ms;
	return sum;
}

json_object *ms_json(double ms)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%.3f", ms);
	return json_object_new_double_s(ms, buf);
}

json_object *timings_json(const struct timings *t)
{
	json_object *o = json_object_new_object();

	for (unsigned i = 0; i < t->n; i++)
		json_object_object_add(o, t->p[i].name, ms_json(t->p[i].ms));
	return o;
}

void timings_from_json(struct timings *t, json_object *o)
{
	timings_start(t);
	if (!json_object_is_type(o, json_type_object))
		return;
	json_object_object_foreach(o, k, v) {
		if (t->n == MAX_PHASES || (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int)))
			break;
		snprintf(t->p[t->n].name, sizeof(t->p[t->n].name), "%s", k);
		t->p[t->n].ms = json_object_get_double(v);
		t->n++;
	}
}

char *timings_lines(const struct timings *t)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	for (unsigned i = 0; i < t->n; i++)
		fprintf(f, "%s %.3f\n", t->p[i].name, t->p[i].ms);
	fprintf(f, "total %.3f\n", timings_total(t));
	fclose(f);
	return buf;
}

char *iso8601_now(void)
{
	struct timespec ts;
	struct tm tm;
	char buf[64];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
	return strdup(buf);
}
