/* Parsers of user input (engine/parse.c); pure, no engine state. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

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
