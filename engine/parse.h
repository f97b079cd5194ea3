/* Parsers of user input (engine/parse.c); pure, no engine state. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <json-c/json.h>

#define PARSE_POOL_MAX 256

/* A pool file write: "N" (0..256) pins (*pinned true), "auto" does not; -EINVAL otherwise. */
int pool_parse(const char *data, size_t len, bool *pinned, unsigned *depth);
/* procs/ID/cmd: a shell line or a JSON object {argv|sh, env, cwd}; the agent's spawn request, or NULL. */
json_object *proc_parse_cmd(const char *text, size_t len);
/* procs/ID/signal: a name (TERM, SIGTERM, term, ...) or a number 1..64; -EINVAL otherwise. */
int proc_parse_signal(const char *text, size_t len);
