/* Parsers of user input (engine/parse.c); pure, no engine state. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "common.h"

static inline void json_object_putp(json_object **o)
{
	if (*o)
		json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(json_object_putp)

#define PARSE_POOL_MAX 256

/*
 * Fields of a JSON object read leniently (records, agent replies): the
 * string, or NULL; the number (an integer or a double), or dflt / 0.
 */
const char *jget_str(json_object *o, const char *key);
int64_t jget_int(json_object *o, const char *key, int64_t dflt);
double jget_double(json_object *o, const char *key);
bool jget_bool(json_object *o, const char *key); /* false unless true */

/* A pool file write: "N" (0..256) pins (*pinned true), "auto" does not; -EINVAL otherwise. */
int pool_parse(const char *data, size_t len, bool *pinned, unsigned *depth);
/* procs/ID/cmd: a shell line or a JSON object {argv|sh, env, cwd}; the agent's spawn request, or NULL. */
json_object *proc_parse_cmd(const char *text, size_t len);
/* procs/ID/signal: a name (TERM, SIGTERM, term, ...) or a number 1..64; -EINVAL otherwise. */
int proc_parse_signal(const char *text, size_t len);

/*
 * A sandbox's settings (docs/interface.md, "Settings"). Each parser takes the
 * whole new value and, on error, returns -EINVAL with the reason in
 * *ret_error (malloc'd; may be NULL on ENOMEM) and changes nothing.
 */
#define TIMEOUT_MAX_S (366ull * 86400ull) /* a year and a day */
enum { TIMEOUT_ACT_DEFAULT = 0, TIMEOUT_ACT_DESTROY, TIMEOUT_ACT_HIBERNATE };
/* timeout: "SECONDS [destroy|hibernate]" or {"timeout_s": N, "on_timeout": "destroy|hibernate"}; 0: none. */
int timeout_parse(const char *text, size_t len, uint64_t *secs, int *action, char **ret_error);
const char *timeout_action_name(int action); /* NULL for DEFAULT */
int timeout_action_from_name(const char *name); /* -EINVAL if unknown */

#define METADATA_MAX_KEYS 64
#define METADATA_KEY_MAX 128	/* bytes */
#define METADATA_VALUE_MAX 1024 /* bytes */
/* metadata: a JSON object of strings within the bounds above; *ret is a new object (NULL for {}). */
int metadata_parse(const char *text, size_t len, json_object **ret, char **ret_error);
/* The same checks on an object already parsed (a record); true if it passes. */
bool metadata_valid(json_object *o);

#define ENV_MAX_VARS 1024
#define ENV_NAME_MAX 255 /* bytes */
/* env: KEY=VALUE lines (# comments and blank lines skipped) or a JSON object of strings; *ret NULL when empty. */
int env_parse(const char *text, size_t len, char ***ret, char **ret_error);
/* KEY=VALUE lines, or the JSON object when a value holds a newline or CR (what env_parse reads back). */
char *env_render(char *const *env);
