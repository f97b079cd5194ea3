/*
 * API keys (a file of e2b_<hex> lines) and per-sandbox access tokens:
 * HMAC-SHA256(secret, sandbox id) in hex, so a restarted server answers the
 * same token without keeping any per-sandbox state. The secret is 32 random
 * bytes in a 0600 file made at the first start.
 */
#pragma once

#include <stdbool.h>

int auth_load(const char *keys_file, const char *secret_file);
void auth_free(void);
bool auth_api_key_ok(const char *key);
/* The sandbox's access token: 64 hex digits + NUL into out. */
void auth_sandbox_token(const char *id, char out[65]);
bool auth_sandbox_token_ok(const char *id, const char *token);
