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
	switch (data[0] % 4) {
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
	default:
		name = strndup(text, len);
		if (name && name_validate(name) == 0 && (strchr(name, '/') || strstr(name, "..") || strlen(name) > 64))
			abort();
		free(name);
	}
	return 0;
}
