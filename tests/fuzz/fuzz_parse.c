/*
 * libFuzzer: what users write into the mount's small files — the pool file,
 * a process's cmd and signal (engine/parse.c) — and the name rule for every
 * mkdir (common/names.c). The first byte picks the parser.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data + 1;
	size_t len = size ? size - 1 : 0;
	bool pinned;
	unsigned depth;
	char *name;
	json_object *o;
	int r;

	if (size == 0)
		return 0;
	switch (data[0] % 8) {
	case 0:
		r = pool_parse(text, len, &pinned, &depth);
		if (r == 0 && pinned && depth > PARSE_POOL_MAX)
			abort();
		break;
	case 1:
		o = proc_parse_cmd(text, len);
		if (o && !json_object_is_type(o, json_type_object))
			abort();
		json_object_put(o);
		break;
	case 2:
		r = proc_parse_signal(text, len);
		if (r != -EINVAL && (r < 1 || r > 64))
			abort();
		break;
	case 4: {
		uint64_t secs = 0;
		int act = 0;
		char *err = NULL;

		r = timeout_parse(text, len, &secs, &act, &err);
		if (r == 0 && (secs > TIMEOUT_MAX_S || act < 0 || act > TIMEOUT_ACT_HIBERNATE))
			abort();
		if (r < 0 && !err)
			abort(); /* every refusal says why */
		free(err);
		break;
	}
	case 5: {
		char *err = NULL;

		o = NULL;
		r = metadata_parse(text, len, &o, &err);
		if (r == 0 && o && (!metadata_valid(o) || json_object_object_length(o) > METADATA_MAX_KEYS))
			abort();
		json_object_put(o);
		free(err);
		break;
	}
	case 6: {
		char **env = NULL, *err = NULL, *back;
		char **again = NULL;

		/* what is accepted renders to text that parses to the same */
		if (env_parse(text, len, &env, &err) == 0) {
			back = env_render(env);
			if (!back || env_parse(back, strlen(back), &again, NULL) < 0)
				abort();
			for (size_t i = 0; env && env[i]; i++)
				if (!again || !again[i] || strcmp(env[i], again[i]))
					abort();
			free(back);
			for (size_t i = 0; again && again[i]; i++)
				free(again[i]);
			free(again);
		}
		for (size_t i = 0; env && env[i]; i++)
			free(env[i]);
		free(env);
		free(err);
		break;
	}
	case 7: {
		char enc[256], dec[256];

		/* a metadata value as a file name: decode only what encode makes, and back */
		name = strndup(text, len);
		if (name && meta_name_decode(name, dec, sizeof(dec)) == 0 &&
		    (meta_name_encode(dec, enc) < 0 || strcmp(enc, name) || strchr(name, '/')))
			abort();
		if (name && meta_name_encode(name, enc) == 0 &&
		    (strchr(enc, '/') || !strcmp(enc, ".") || !strcmp(enc, "..") ||
		     meta_name_decode(enc, dec, sizeof(dec)) < 0 || strcmp(dec, name)))
			abort();
		free(name);
		break;
	}
	default:
		name = strndup(text, len);
		if (name && name_validate(name) == 0 && (strchr(name, '/') || strstr(name, "..") || strlen(name) > 64))
			abort();
		free(name);
	}
	return 0;
}
