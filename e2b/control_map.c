/*
 * The control plane's pure mappings: E2B's request JSON and query strings
 * onto the mount's settings, and the mount's files onto E2B's answers. No
 * I/O here (control.c does it), so every rule is unit-tested.
 */
#include "control.h"

#include "common.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- small helpers ---- */

static void why_set(char **why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void why_set(char **why, const char *fmt, ...)
{
	va_list ap;
	char *m = NULL;

	if (!why)
		return;
	va_start(ap, fmt);
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	va_end(ap);
	free(*why);
	*why = m;
}

/* Appends ", name" (or "name") to a growing list of field names. */
static void list_add(char **list, const char *name)
{
	char *n = NULL;

	if (asprintf(&n, "%s%s%s", *list ? *list : "", *list ? ", " : "", name) < 0)
		return;
	free(*list);
	*list = n;
}

/* json-c's NULL is JSON's null */
static bool is_type(json_object *o, json_type t)
{
	return json_object_is_type(o, t);
}

/* An object whose every value is a string (metadata, envVars). */
static bool is_string_map(json_object *o)
{
	if (!is_type(o, json_type_object))
		return false;
	json_object_object_foreach(o, k, v) {
		(void)k;
		if (!is_type(v, json_type_string))
			return false;
	}
	return true;
}

/* ---- states ---- */

enum e2b_state e2b_state_of(const char *s)
{
	if (!s)
		return E2B_STATE_NONE;
	/* creating: on its way to running, and every envd call waits for it */
	if (!strcmp(s, "ready") || !strcmp(s, "creating"))
		return E2B_STATE_RUNNING;
	/* stopped: its disk kept, no memory (E2B's pause without memory) */
	if (!strcmp(s, "paused") || !strcmp(s, "hibernated") || !strcmp(s, "stopped"))
		return E2B_STATE_PAUSED;
	return E2B_STATE_NONE; /* failed, destroying */
}

const char *e2b_state_name(enum e2b_state st)
{
	return st == E2B_STATE_RUNNING ? "running" : st == E2B_STATE_PAUSED ? "paused" : NULL;
}

int e2b_state_filter_parse(const char *q, unsigned *ret_mask)
{
	unsigned mask = 0;
	const char *p = q;

	if (!q || !*q)
		return -EINVAL;
	while (*p) {
		size_t n = strcspn(p, ",");

		if (n == 7 && !strncmp(p, "running", n))
			mask |= E2B_STATE_RUNNING;
		else if (n == 6 && !strncmp(p, "paused", n))
			mask |= E2B_STATE_PAUSED;
		else
			return -EINVAL;
		p += n;
		if (*p == ',' && !*++p)
			return -EINVAL;
	}
	*ret_mask = mask;
	return 0;
}

/* ---- time ---- */

void e2b_time_format(int64_t ms, char *buf, size_t size)
{
	time_t secs = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
	int frac = (int)(ms - (int64_t)secs * 1000);
	struct tm tm;
	char date[24];

	if (!gmtime_r(&secs, &tm) || !strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm)) {
		snprintf(buf, size, "1970-01-01T00:00:00.000Z");
		return;
	}
	snprintf(buf, size, "%s.%03dZ", date, frac);
}

static int digits(const char **p, int n, int *ret)
{
	int v = 0;

	for (int i = 0; i < n; i++, (*p)++) {
		if (!isdigit((unsigned char)**p))
			return -EINVAL;
		v = v * 10 + (**p - '0');
	}
	*ret = v;
	return 0;
}

static int expect(const char **p, const char *set)
{
	if (!**p || !strchr(set, **p))
		return -EINVAL;
	(*p)++;
	return 0;
}

int e2b_time_parse(const char *s, int64_t *ret)
{
	const char *p = s;
	int Y, M, D, h, m, sec, oh = 0, om = 0, sign = 0;
	int64_t ms = 0, scale = 100;
	struct tm tm = {0};
	time_t t;

	if (!s || digits(&p, 4, &Y) || expect(&p, "-") || digits(&p, 2, &M) || expect(&p, "-") ||
	    digits(&p, 2, &D) || expect(&p, "Tt ") || digits(&p, 2, &h) || expect(&p, ":") ||
	    digits(&p, 2, &m) || expect(&p, ":") || digits(&p, 2, &sec))
		return -EINVAL;
	if (*p == '.') {
		p++;
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		for (; isdigit((unsigned char)*p); p++, scale /= 10)
			ms += scale ? (*p - '0') * scale : 0;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p++ == '-' ? -1 : 1;
		if (digits(&p, 2, &oh) || expect(&p, ":") || digits(&p, 2, &om) || oh > 23 || om > 59)
			return -EINVAL;
	} else {
		return -EINVAL;
	}
	if (*p || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
		return -EINVAL;
	tm.tm_year = Y - 1900;
	tm.tm_mon = M - 1;
	tm.tm_mday = D;
	tm.tm_hour = h;
	tm.tm_min = m;
	tm.tm_sec = sec;
	t = timegm(&tm);
	*ret = ((int64_t)t - sign * (oh * 3600 + om * 60)) * 1000 + ms;
	return 0;
}

/* ---- the metadata filter ---- */

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* One form decoding of s[0..n) ('+' is a space, %XX a byte): malloc'd, NULL on a bad escape or a NUL. */
static char *form_decode(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '+') {
			*o++ = ' ';
		} else if (s[i] == '%') {
			int hi = i + 2 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;

			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
				free(out);
				return NULL;
			}
			*o++ = (char)(hi << 4 | lo);
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

/* Decoded twice: the form string's own encoding, then the SDK's per-key one. */
static char *form_decode2(const char *s, size_t n)
{
	char *once = form_decode(s, n), *twice;

	if (!once)
		return NULL;
	twice = form_decode(once, strlen(once));
	free(once);
	return twice;
}

int e2b_metadata_filter_parse(const char *q, json_object **ret)
{
	json_object *f = json_object_new_object();
	const char *p = q;

	if (!f)
		return -ENOMEM;
	while (p && *p) {
		size_t n = strcspn(p, "&");
		const char *eq = memchr(p, '=', n);
		char *k = NULL, *v = NULL;

		if (n == 0) { /* "a=b&&c=d": an empty pair is skipped, as a form parser does */
			p++;
			continue;
		}
		if (!eq || eq == p || !(k = form_decode2(p, (size_t)(eq - p))) || !*k ||
		    !(v = form_decode2(eq + 1, (size_t)(p + n - eq - 1))) || json_object_object_get_ex(f, k, NULL)) {
			free(k);
			free(v);
			json_object_put(f);
			return -EINVAL;
		}
		json_object_object_add(f, k, json_object_new_string(v));
		free(k);
		free(v);
		p += n;
		if (*p == '&')
			p++;
	}
	*ret = f;
	return 0;
}

bool e2b_metadata_match(json_object *filter, json_object *metadata)
{
	json_object_object_foreach(filter, k, want) {
		json_object *have;

		if (!is_type(metadata, json_type_object) || !json_object_object_get_ex(metadata, k, &have) ||
		    !is_type(have, json_type_string) || strcmp(json_object_get_string(have), json_object_get_string(want)))
			return false;
	}
	return true;
}

/* ---- paging ---- */

int e2b_cursor_parse(const char *token, struct e2b_cursor *ret)
{
	const char *dot = token ? strchr(token, '.') : NULL;
	char *end;
	long long ms;

	if (!dot || dot == token || !isdigit((unsigned char)token[0]))
		return -EINVAL;
	errno = 0;
	ms = strtoll(token, &end, 10);
	if (errno || end != dot || strlen(dot + 1) == 0 || strlen(dot + 1) >= sizeof(ret->id))
		return -EINVAL;
	for (const char *c = dot + 1; *c; c++)
		if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_')
			return -EINVAL;
	ret->started_ms = ms;
	snprintf(ret->id, sizeof(ret->id), "%s", dot + 1);
	return 0;
}

void e2b_cursor_format(const struct e2b_cursor *c, char *buf, size_t size)
{
	snprintf(buf, size, "%" PRId64 ".%s", c->started_ms, c->id);
}

int e2b_cursor_cmp(const struct e2b_cursor *a, const struct e2b_cursor *b)
{
	int r;

	if (a->started_ms != b->started_ms)
		return a->started_ms < b->started_ms ? -1 : 1;
	r = strcmp(a->id, b->id);
	return r < 0 ? -1 : r > 0;
}

/* ---- network: the egress policy ---- */

/*
 * An allowOut/denyOut entry goes on a policy line as is: only the bytes a
 * CIDR, an address or a (wildcard) host name has, so no entry can end its
 * line or add words. The mount validates the rest (and says which line).
 */
static bool entry_ok(const char *s)
{
	if (!*s || strlen(s) > 253)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr(".-*/_", *s))
			return false;
	return true;
}

static int add_entries(FILE *f, json_object *arr, const char *verb, const char *field, size_t *count, char **why)
{
	if (!arr || is_type(arr, json_type_null))
		return 0;
	if (!is_type(arr, json_type_array)) {
		why_set(why, "network.%s must be an array of strings", field);
		return -EINVAL;
	}
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		json_object *e = json_object_array_get_idx(arr, i);
		const char *s = is_type(e, json_type_string) ? json_object_get_string(e) : NULL;

		if (!s || !entry_ok(s)) {
			why_set(why, "network.%s[%zu] must be a CIDR block, an IP address or a domain name", field, i);
			return -EINVAL;
		}
		fprintf(f, "%s %s\n", verb, s);
		(*count)++;
	}
	return 0;
}

int e2b_egress_from(json_object *network, int allow_internet, bool update, char **ret_policy, bool *ret_allows,
		    char **ret_why)
{
	char *buf = NULL, *unsupported = NULL;
	size_t len = 0, allows = 0, denies = 0;
	json_object *allow = NULL, *deny = NULL;
	FILE *f;
	int r = 0;

	if (network && !is_type(network, json_type_null)) {
		if (!is_type(network, json_type_object)) {
			why_set(ret_why, "network must be an object");
			return -EINVAL;
		}
		json_object_object_foreach(network, k, v) {
			if (update && !strcmp(k, "allow_internet_access"))
				continue; /* the update's own field: the caller reads it */
			if (!strcmp(k, "allowOut"))
				allow = v;
			else if (!strcmp(k, "denyOut"))
				deny = v;
			else if (!strcmp(k, "egressProxy") && !is_type(v, json_type_null))
				list_add(&unsupported, update ? "egressProxy" : "network.egressProxy");
			else if (!strcmp(k, "rules") && !(is_type(v, json_type_null) ||
							   (is_type(v, json_type_object) && !json_object_object_length(v))))
				list_add(&unsupported, update ? "rules" : "network.rules");
			else if (!update && !strcmp(k, "allowPublicTraffic") && !is_type(v, json_type_boolean))
				list_add(&unsupported, "network.allowPublicTraffic (not a boolean)");
			else if (!update && !strcmp(k, "allowPublicTraffic") && !json_object_get_boolean(v))
				list_add(&unsupported, "network.allowPublicTraffic false");
			else if (!update && !strcmp(k, "maskRequestHost") && !is_type(v, json_type_null))
				list_add(&unsupported, "network.maskRequestHost");
			else if (!update && !strcmp(k, "httpsPorts") &&
				 !(is_type(v, json_type_null) || (is_type(v, json_type_array) && !json_object_array_length(v))))
				list_add(&unsupported, "network.httpsPorts");
			else if (strcmp(k, "egressProxy") && strcmp(k, "rules") &&
				 (update || (strcmp(k, "allowPublicTraffic") && strcmp(k, "maskRequestHost") &&
					     strcmp(k, "httpsPorts")))) {
				char *n = NULL;

				if (asprintf(&n, "%s%s", update ? "" : "network.", k) >= 0)
					list_add(&unsupported, n);
				free(n);
			}
		}
	}
	if (unsupported) {
		why_set(ret_why, "not implemented by emberfs: %s", unsupported);
		free(unsupported);
		return -EOPNOTSUPP;
	}
	if (!(f = open_memstream(&buf, &len)))
		return -ENOMEM;
	r = add_entries(f, allow, "allow", "allowOut", &allows, ret_why);
	if (r == 0)
		r = add_entries(f, deny, "deny", "denyOut", &denies, ret_why);
	if (r == 0 && allow_internet == 0) {
		fprintf(f, "deny 0.0.0.0/0\n");
		denies++;
	}
	if (fclose(f) != 0 && r == 0)
		r = -ENOMEM;
	if (r < 0 || allows + denies == 0) {
		free(buf);
		buf = NULL;
	}
	if (r == 0) {
		*ret_policy = buf;
		*ret_allows = allows > 0;
	}
	return r;
}

/* ---- create ---- */

static int check_bool(json_object *v, const char *name, bool *ret, char **why)
{
	if (!is_type(v, json_type_boolean)) {
		why_set(why, "%s must be a boolean", name);
		return -EINVAL;
	}
	*ret = json_object_get_boolean(v);
	return 0;
}

int e2b_create_parse(json_object *body, bool v2, struct e2b_create *ret, char **why)
{
	struct e2b_create c = {.timeout_s = v2 ? E2B_TIMEOUT_DEFAULT_V2 : E2B_TIMEOUT_DEFAULT_V1};
	_cleanup_free_ char *unsupported = NULL;
	json_object *network = NULL;
	int allow_internet = -1, r;
	bool b;

	if (!is_type(body, json_type_object)) {
		why_set(why, "the body must be a JSON object");
		return -EINVAL;
	}
	json_object_object_foreach(body, k, v) {
		bool null = is_type(v, json_type_null) || !v;

		if (!strcmp(k, "templateID")) {
			if (!is_type(v, json_type_string) || !*json_object_get_string(v)) {
				why_set(why, "templateID must be a non-empty string");
				return -EINVAL;
			}
			c.tpl = json_object_get_string(v);
		} else if (!strcmp(k, "timeout")) {
			if (null)
				continue;
			if (!is_type(v, json_type_int) || json_object_get_int64(v) < 1 ||
			    json_object_get_int64(v) > E2B_TIMEOUT_MAX_S) {
				why_set(why, "timeout must be a whole number of seconds from 1 to %d", E2B_TIMEOUT_MAX_S);
				return -EINVAL;
			}
			c.timeout_s = json_object_get_int64(v);
		} else if (!strcmp(k, "autoPause")) {
			if (!null && (r = check_bool(v, k, &c.auto_pause, why)) < 0)
				return r;
		} else if (!strcmp(k, "autoPauseMemory")) {
			/* false: a filesystem-only snapshot at the deadline; the mount's timeout hibernates (memory kept) */
			if (!null && (r = check_bool(v, k, &b, why)) < 0)
				return r;
			if (!null && !b)
				list_add(&unsupported, "autoPauseMemory false");
		} else if (!strcmp(k, "autoResume")) {
			json_object *en;

			if (null)
				continue;
			if (!is_type(v, json_type_object) || json_object_object_length(v) != 1 ||
			    !json_object_object_get_ex(v, "enabled", &en) || !is_type(en, json_type_boolean)) {
				why_set(why, "autoResume must be {\"enabled\": true|false}");
				return -EINVAL;
			}
			/* true is what emberfs does anyway: any envd request to a paused sandbox resumes it */
			if (!json_object_get_boolean(en))
				list_add(&unsupported, "autoResume.enabled false (a request to a paused sandbox always resumes it)");
		} else if (!strcmp(k, "metadata") || !strcmp(k, "envVars")) {
			if (null)
				continue;
			if (!is_string_map(v)) {
				why_set(why, "%s must be an object of strings", k);
				return -EINVAL;
			}
			*(!strcmp(k, "metadata") ? &c.metadata : &c.env) = v;
		} else if (!strcmp(k, "allow_internet_access")) {
			if (!null && (r = check_bool(v, k, &b, why)) < 0)
				return r;
			if (!null)
				allow_internet = b;
		} else if (!strcmp(k, "network")) {
			network = v;
		} else if (!strcmp(k, "secure")) {
			/* every sandbox answers an access token and its envd routes require it */
			if (!null && (r = check_bool(v, k, &b, why)) < 0)
				return r;
			if (!null && !b)
				list_add(&unsupported, "secure false (every sandbox requires its access token)");
		} else if (!strcmp(k, "mcp") || !strcmp(k, "iam")) {
			if (!null)
				list_add(&unsupported, k);
		} else if (!strcmp(k, "volumeMounts")) {
			if (!null && !(is_type(v, json_type_array) && !json_object_array_length(v)))
				list_add(&unsupported, k);
		} else {
			list_add(&unsupported, k);
		}
	}
	if ((r = e2b_egress_from(network, allow_internet, false, &c.egress, &c.egress_allows, why)) < 0 &&
	    !(r == -EOPNOTSUPP && unsupported))
		return r;
	if (unsupported) {
		/* every field at once, the network's too ("network.maskRequestHost") */
		if (r == -EOPNOTSUPP && why && *why)
			list_add(&unsupported, *why + strlen("not implemented by emberfs: "));
		why_set(why, "not implemented by emberfs: %s", unsupported);
		free(c.egress);
		return -EOPNOTSUPP;
	}
	if (!c.tpl) {
		free(c.egress);
		why_set(why, "templateID is required");
		return -EINVAL;
	}
	*ret = c;
	return 0;
}

void e2b_create_done(struct e2b_create *c)
{
	free(c->egress);
	c->egress = NULL;
}

json_object *e2b_create_settings(const struct e2b_create *c)
{
	json_object *s = json_object_new_object();
	char t[48];

	if (!s)
		return NULL;
	snprintf(t, sizeof(t), "%" PRId64 "%s", c->timeout_s, c->auto_pause ? " hibernate" : " destroy");
	json_object_object_add(s, "timeout", json_object_new_string(t));
	if (c->metadata)
		json_object_object_add(s, "metadata", json_object_get(c->metadata));
	if (c->env)
		json_object_object_add(s, "env", json_object_get(c->env));
	if (c->egress)
		json_object_object_add(s, "egress", json_object_new_string(c->egress));
	return s;
}

/* ---- metrics ---- */

static json_object *path_get(json_object *o, const char *a, const char *b, const char *c)
{
	const char *keys[] = {a, b, c};

	for (size_t i = 0; i < 3 && keys[i]; i++)
		if (!is_type(o, json_type_object) || !json_object_object_get_ex(o, keys[i], &o))
			return NULL;
	return is_type(o, json_type_null) ? NULL : o;
}

static int64_t int_at(json_object *o, const char *a, const char *b, const char *c)
{
	json_object *v = path_get(o, a, b, c);

	return v ? json_object_get_int64(v) : 0;
}

json_object *e2b_metric_from_usage(json_object *usage, int vcpus)
{
	json_object *m, *pct = path_get(usage, "cpu", "percent", NULL);
	int64_t ts = int_at(usage, "guest_sample", "sampled_at_unix_ms", NULL);
	char when[40];

	if (!path_get(usage, "guest_sample", NULL, NULL) || !path_get(usage, "memory", "guest", NULL) || !ts)
		return NULL;
	if (vcpus < 1)
		vcpus = 1;
	if (!(m = json_object_new_object()))
		return NULL;
	e2b_time_format(ts, when, sizeof(when));
	json_object_object_add(m, "timestamp", json_object_new_string(when));
	json_object_object_add(m, "timestampUnix", json_object_new_int64(ts / 1000));
	json_object_object_add(m, "cpuCount", json_object_new_int(vcpus));
	/* usage's percent is of one host CPU (200: two busy); E2B's is of the sandbox's CPUs */
	{
		double v = pct ? json_object_get_double(pct) / vcpus : 0.0;
		char txt[32];

		snprintf(txt, sizeof(txt), "%.2f", v); /* not 3.1640000000000001 */
		json_object_object_add(m, "cpuUsedPct", json_object_new_double_s(v, txt));
	}
	json_object_object_add(m, "memUsed", json_object_new_int64(int_at(usage, "memory", "guest", "used_bytes")));
	json_object_object_add(m, "memTotal", json_object_new_int64(int_at(usage, "memory", "guest", "total_bytes")));
	json_object_object_add(m, "memCache", json_object_new_int64(int_at(usage, "memory", "guest", "cache_bytes")));
	json_object_object_add(m, "diskUsed", json_object_new_int64(int_at(usage, "disk", "guest", "used_bytes")));
	json_object_object_add(m, "diskTotal", json_object_new_int64(int_at(usage, "disk", "guest", "total_bytes")));
	return m;
}
