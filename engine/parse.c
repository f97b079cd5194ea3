/*
 * Parsers of what users write into the mount's files, kept apart from the
 * engine so they can be fuzzed on their own (tests/fuzz/): the pool file,
 * a process's command and its signal names.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common.h"
#include "parse.h"

const char *jget_str(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ?
		       json_object_get_string(v) : NULL;
}

int64_t jget_int(json_object *o, const char *key, int64_t dflt)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) &&
			       (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)) ?
		       json_object_get_int64(v) : dflt;
}

double jget_double(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_double(v) : 0;
}

bool jget_bool(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_boolean) &&
	       json_object_get_boolean(v);
}

/* "N" pins the depth (0..PARSE_POOL_MAX), "auto" leaves it to the controller. -EINVAL otherwise. */
int pool_parse(const char *data, size_t len, bool *pinned, unsigned *depth)
{
	char buf[32], *end;
	unsigned long v;
	size_t n = len;

	while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == ' '))
		n--;
	if (n == 0 || n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, data, n);
	buf[n] = '\0';
	if (strcmp(buf, "auto") == 0) {
		*pinned = false;
		*depth = 0;
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (buf[i] < '0' || buf[i] > '9')
			return -EINVAL;
	errno = 0;
	v = strtoul(buf, &end, 10);
	if (errno || *end || v > PARSE_POOL_MAX)
		return -EINVAL;
	*pinned = true;
	*depth = (unsigned)v;
	return 0;
}

json_object *proc_parse_cmd(const char *text, size_t len)
{
	size_t i = 0;
	json_object *req, *v;

	while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n'))
		i++;
	if (i == len || memchr(text, '\0', len))
		return NULL;
	if (text[i] == '{') {
		json_tokener *tok = json_tokener_new();

		req = tok ? json_tokener_parse_ex(tok, text, (int)len) : NULL;
		if (req && (json_tokener_get_error(tok) != json_tokener_success ||
			    !json_object_is_type(req, json_type_object))) {
			json_object_put(req);
			req = NULL;
		}
		if (tok)
			json_tokener_free(tok);
		if (!req)
			return NULL;
		json_object_object_foreach(req, key, val) {
			(void)val;
			if (strcmp(key, "argv") && strcmp(key, "sh") && strcmp(key, "env") && strcmp(key, "cwd") &&
			    strcmp(key, "user")) {
				json_object_put(req);
				return NULL;
			}
		}
		if (json_object_object_get_ex(req, "sh", &v) ?
			    !json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0 :
		    !json_object_object_get_ex(req, "argv", &v) || !json_object_is_type(v, json_type_array) ||
			    json_object_array_length(v) == 0) {
			json_object_put(req);
			return NULL;
		}
		return req;
	}
	while (len > 0 && text[len - 1] == '\n')
		len--;
	req = json_object_new_object();
	json_object_object_add(req, "sh", json_object_new_string_len(text, (int)len));
	return req;
}


static const struct {
	const char *name;
	int sig;
} signals[] = {
	{ "HUP", SIGHUP },   { "INT", SIGINT },	  { "QUIT", SIGQUIT }, { "KILL", SIGKILL },
	{ "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { "PIPE", SIGPIPE }, { "ALRM", SIGALRM },
	{ "TERM", SIGTERM }, { "CONT", SIGCONT }, { "STOP", SIGSTOP }, { "TSTP", SIGTSTP },
	{ "WINCH", SIGWINCH },
};

int proc_parse_signal(const char *text, size_t len)
{
	char buf[16];
	char *end;
	long n;

	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
		len--;
	if (len == 0 || len >= sizeof(buf) || memchr(text, '\0', len))
		return -EINVAL;
	memcpy(buf, text, len);
	buf[len] = '\0';
	if (buf[0] >= '0' && buf[0] <= '9') {
		errno = 0;
		n = strtol(buf, &end, 10);
		return errno || *end || n < 1 || n > 64 ? -EINVAL : (int)n;
	}
	for (size_t i = 0; i < ARRAY_SIZE(signals); i++)
		if (strcasecmp(buf, signals[i].name) == 0 ||
		    (strncasecmp(buf, "SIG", 3) == 0 && strcasecmp(buf + 3, signals[i].name) == 0))
			return signals[i].sig;
	return -EINVAL;
}

