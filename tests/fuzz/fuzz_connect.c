/*
 * libFuzzer: the Connect envelope parser of emberfs-e2b (e2b/connect.c),
 * which takes a streaming request's body from the network. An accepted
 * message must be one JSON object that survives a round trip through the
 * frame encoder; a refused one must say why.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "connect.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_object *o = NULL, *again = NULL;
	char *why = NULL;
	uint8_t *f;
	size_t len;
	int r = connect_request_parse(data, size, 4096, &o, &why);

	if (r < 0) {
		if (!why || o)
			abort();
		free(why);
		return 0;
	}
	if (!o || why || !json_object_is_type(o, json_type_object))
		abort();
	f = connect_frame_json(o, &len);
	if (!f || len < CONNECT_HEADER_LEN || f[0] != 0)
		abort();
	/* what we encode we parse back (a bigger limit: escapes can grow it) */
	if (connect_request_parse(f, len, len, &again, NULL) != 0 || !json_object_equal(o, again))
		abort();
	json_object_put(again);
	json_object_put(o);
	free(f);
	f = connect_frame_end("invalid_argument", "x", &len);
	if (!f || f[0] != CONNECT_FLAG_END_STREAM)
		abort();
	free(f);
	return 0;
}
