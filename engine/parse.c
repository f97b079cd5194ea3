/*
 * Parsers of what users write into the mount's files, kept apart from the
 * engine so they can be fuzzed on their own (tests/fuzz/): the pool file,
 * a process's command and its signal names.
 */
#include <errno.h>
#include <stdarg.h>
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


/* ---- a sandbox's settings ---- */

/* A JSON value of the whole text, strictly and as UTF-8; NULL (with the reason) otherwise. */
static json_object *json_whole(const char *text, size_t len, char **ret_error)
{
	json_tokener *tok = json_tokener_new();
	json_object *o;

	if (!tok) {
		error_first(ret_error, -EINVAL, "out of memory");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = len > INT32_MAX ? NULL : json_tokener_parse_ex(tok, text, (int)len);
	if (json_tokener_get_error(tok) != json_tokener_success) {
		error_first(ret_error, -EINVAL, "not JSON: %s", json_tokener_error_desc(json_tokener_get_error(tok)));
		json_object_put(o);
		o = NULL;
	} else if ((size_t)json_tokener_get_parse_end(tok) < len &&
		   strspn(text + json_tokener_get_parse_end(tok), " \t\r\n") != len - json_tokener_get_parse_end(tok)) {
		error_first(ret_error, -EINVAL, "text after the JSON value");
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

static bool only_space(const char *text, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!strchr(" \t\r\n", text[i]) || text[i] == '\0')
			return false;
	return true;
}

static const char *skip_space(const char *text, size_t len)
{
	size_t i = 0;

	while (i < len && strchr(" \t\r\n", text[i]) && text[i])
		i++;
	return text + i;
}

static const char *const timeout_actions[] = { [TIMEOUT_ACT_DESTROY] = "destroy", [TIMEOUT_ACT_HIBERNATE] = "hibernate" };

const char *timeout_action_name(int action)
{
	return action > 0 && action < (int)ARRAY_SIZE(timeout_actions) ? timeout_actions[action] : NULL;
}

int timeout_action_from_name(const char *name)
{
	for (int a = 1; a < (int)ARRAY_SIZE(timeout_actions); a++)
		if (name && strcmp(name, timeout_actions[a]) == 0)
			return a;
	return -EINVAL;
}

static int seconds_from(const char *p, size_t n, uint64_t *secs, char **ret_error)
{
	uint64_t v = 0;

	if (n == 0)
		return error_first(ret_error, -EINVAL, "no number of seconds");
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return error_first(ret_error, -EINVAL, "seconds must be a whole number from 0 to %llu", TIMEOUT_MAX_S);
		v = v * 10 + (uint64_t)(p[i] - '0');
		if (v > TIMEOUT_MAX_S)
			return error_first(ret_error, -EINVAL, "at most %llu seconds", TIMEOUT_MAX_S);
	}
	*secs = v;
	return 0;
}

int timeout_parse(const char *text, size_t len, uint64_t *secs, int *action, char **ret_error)
{
	const char *p = skip_space(text, len), *end = text + len;
	uint64_t v = 0;
	int a = TIMEOUT_ACT_DEFAULT, r;

	if (memchr(text, '\0', len))
		return error_first(ret_error, -EINVAL, "a NUL byte");
	if (p == end) {
		*secs = 0; /* emptied: none */
		*action = TIMEOUT_ACT_DEFAULT;
		return 0;
	}
	if (*p == '{') {
		_cleanup_json_ json_object *o = json_whole(text, len, ret_error);
		json_object *tv, *av;

		if (!o)
			return -EINVAL;
		if (!json_object_is_type(o, json_type_object))
			return error_first(ret_error, -EINVAL, "not a JSON object");
		json_object_object_foreach(o, key, val) {
			(void)val;
			if (strcmp(key, "timeout_s") && strcmp(key, "on_timeout"))
				return error_first(ret_error, -EINVAL, "unknown field \"%s\" (timeout_s, on_timeout)", key);
		}
		if (!json_object_object_get_ex(o, "timeout_s", &tv) || !json_object_is_type(tv, json_type_int) ||
		    json_object_get_int64(tv) < 0 || (uint64_t)json_object_get_int64(tv) > TIMEOUT_MAX_S)
			return error_first(ret_error, -EINVAL, "timeout_s must be a whole number from 0 to %llu", TIMEOUT_MAX_S);
		v = (uint64_t)json_object_get_int64(tv);
		if (json_object_object_get_ex(o, "on_timeout", &av) &&
		    (!json_object_is_type(av, json_type_string) ||
		     (a = timeout_action_from_name(json_object_get_string(av))) < 0))
			return error_first(ret_error, -EINVAL, "on_timeout must be \"destroy\" or \"hibernate\"");
	} else {
		const char *w = p;

		while (w < end && *w >= '0' && *w <= '9')
			w++;
		if ((r = seconds_from(p, (size_t)(w == p && w < end ? 1 : w - p), &v, ret_error)) < 0)
			return r;
		p = skip_space(w, (size_t)(end - w));
		if (p < end) {
			const char *we = p;
			char word[16];

			if (p == w)
				return error_first(ret_error, -EINVAL, "seconds must be a whole number from 0 to %llu", TIMEOUT_MAX_S);
			while (we < end && !strchr(" \t\r\n", *we))
				we++;
			if ((size_t)(we - p) >= sizeof(word))
				return error_first(ret_error, -EINVAL, "after the seconds: destroy or hibernate");
			memcpy(word, p, (size_t)(we - p));
			word[we - p] = '\0';
			if ((a = timeout_action_from_name(word)) < 0)
				return error_first(ret_error, -EINVAL, "after the seconds: destroy or hibernate, not \"%s\"", word);
			if (!only_space(we, (size_t)(end - we)))
				return error_first(ret_error, -EINVAL, "text after the action");
		}
	}
	*secs = v;
	*action = a;
	return 0;
}

/* Control characters (and DEL) in a metadata key or an env name. */
static bool has_control(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return true;
	return false;
}

static int metadata_check(json_object *o, char **ret_error)
{
	size_t n = 0;

	if (!json_object_is_type(o, json_type_object))
		return error_first(ret_error, -EINVAL, "not a JSON object");
	json_object_object_foreach(o, key, val) {
		size_t kl = strlen(key);

		if (++n > METADATA_MAX_KEYS)
			return error_first(ret_error, -EINVAL, "more than %d keys", METADATA_MAX_KEYS);
		if (kl == 0 || kl > METADATA_KEY_MAX || has_control(key, kl))
			return error_first(ret_error, -EINVAL, "key \"%.40s\": 1 to %d bytes, no control characters", key,
				    METADATA_KEY_MAX);
		if (!json_object_is_type(val, json_type_string))
			return error_first(ret_error, -EINVAL, "key \"%.40s\": the value must be a string", key);
		if (json_object_get_string_len(val) > METADATA_VALUE_MAX ||
		    strlen(json_object_get_string(val)) != (size_t)json_object_get_string_len(val))
			return error_first(ret_error, -EINVAL, "key \"%.40s\": the value must be at most %d bytes, without NUL", key,
				    METADATA_VALUE_MAX);
	}
	return 0;
}

bool metadata_valid(json_object *o)
{
	return metadata_check(o, NULL) == 0;
}

int metadata_parse(const char *text, size_t len, json_object **ret, char **ret_error)
{
	json_object *o;
	int r;

	if (only_space(text, len)) {
		*ret = NULL; /* empty: none, as {} */
		return 0;
	}
	if (!(o = json_whole(text, len, ret_error)))
		return -EINVAL;
	if ((r = metadata_check(o, ret_error)) < 0) {
		json_object_put(o);
		return r;
	}
	if (json_object_object_length(o) == 0) {
		json_object_put(o);
		o = NULL;
	}
	*ret = o;
	return 0;
}

static bool env_name_ok(const char *s, size_t n)
{
	if (n == 0 || n > ENV_NAME_MAX || (s[0] >= '0' && s[0] <= '9'))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9')))
			return false;
	return true;
}

/* Appends NAME=VALUE to v (n entries); refuses a name given twice. */
static int env_add(char ***v, size_t *n, const char *name, size_t nl, const char *val, size_t vl, char **ret_error)
{
	char **nv, *e;

	if (!env_name_ok(name, nl))
		return error_first(ret_error, -EINVAL, "\"%.*s\" is not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most %d bytes)",
			    (int)(nl > 40 ? 40 : nl), name, ENV_NAME_MAX);
	if (memchr(val, '\0', vl))
		return error_first(ret_error, -EINVAL, "%.*s: a NUL byte in the value", (int)nl, name);
	for (size_t i = 0; i < *n; i++)
		if (strncmp((*v)[i], name, nl) == 0 && (*v)[i][nl] == '=')
			return error_first(ret_error, -EINVAL, "%.*s is given twice", (int)nl, name);
	if (*n >= ENV_MAX_VARS)
		return error_first(ret_error, -EINVAL, "more than %d variables", ENV_MAX_VARS);
	if (!(nv = realloc(*v, (*n + 2) * sizeof(*nv))))
		return -ENOMEM;
	*v = nv;
	if (asprintf(&e, "%.*s=%.*s", (int)nl, name, (int)vl, val) < 0)
		return -ENOMEM;
	nv[(*n)++] = e;
	nv[*n] = NULL;
	return 0;
}

int env_parse(const char *text, size_t len, char ***ret, char **ret_error)
{
	const char *p = skip_space(text, len), *end = text + len;
	char **v = NULL;
	size_t n = 0;
	int r = 0;

	if (p < end && *p == '{') {
		_cleanup_json_ json_object *o = json_whole(text, len, ret_error);

		if (!o)
			return -EINVAL;
		if (!json_object_is_type(o, json_type_object))
			return error_first(ret_error, -EINVAL, "not a JSON object");
		json_object_object_foreach(o, key, val) {
			if (!json_object_is_type(val, json_type_string)) {
				r = error_first(ret_error, -EINVAL, "%.40s: the value must be a string", key);
				break;
			}
			if ((r = env_add(&v, &n, key, strlen(key), json_object_get_string(val),
					 (size_t)json_object_get_string_len(val), ret_error)) < 0)
				break;
		}
	} else {
		unsigned line = 0;

		for (p = text; p < end && r == 0;) {
			const char *nl = memchr(p, '\n', (size_t)(end - p)), *le = nl ? nl : end, *eq;

			line++;
			if (le > p && le[-1] == '\r')
				le--;
			if (le > p && *p != '#' && !only_space(p, (size_t)(le - p))) {
				if (!(eq = memchr(p, '=', (size_t)(le - p))))
					r = error_first(ret_error, -EINVAL, "line %u: not NAME=VALUE", line);
				else if (memchr(eq, '\r', (size_t)(le - eq)))
					r = error_first(ret_error, -EINVAL,
							"line %u: a carriage return in the value (the JSON form takes one)",
							line);
				else
					r = env_add(&v, &n, p, (size_t)(eq - p), eq + 1, (size_t)(le - eq - 1), ret_error);
				if (r < 0 && ret_error && *ret_error && strncmp(*ret_error, "line ", 5)) {
					char *m = NULL;

					if (asprintf(&m, "line %u: %s", line, *ret_error) >= 0) {
						free(*ret_error);
						*ret_error = m;
					}
				}
			}
			p = nl ? nl + 1 : end;
		}
	}
	if (r < 0) {
		for (size_t i = 0; i < n; i++)
			free(v[i]);
		free(v);
		return r;
	}
	*ret = v;
	return 0;
}

char *env_render(char *const *env)
{
	bool lines = true;
	char *out = NULL;
	size_t n = 0;
	FILE *f;

	for (char *const *p = env; p && *p; p++)
		if (strpbrk(*p, "\n\r")) /* a line's \r\n end would drop a final \r */
			lines = false;
	if (!lines) {
		_cleanup_json_ json_object *o = json_object_new_object();

		for (char *const *p = env; p && *p; p++) {
			const char *eq = strchr(*p, '=');

			_cleanup_free_ char *k = strndup(*p, (size_t)(eq - *p));

			if (!k)
				return NULL;
			json_object_object_add(o, k, json_object_new_string(eq + 1));
		}
		return strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
			       "\n", NULL);
	}
	if (!(f = open_memstream(&out, &n)))
		return NULL;
	for (char *const *p = env; p && *p; p++)
		fprintf(f, "%s\n", *p);
	if (fclose(f) != 0) {
		free(out);
		return NULL;
	}
	return out;
}
