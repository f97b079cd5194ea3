/*
 * libFuzzer: a manifest from the snapshot store (objstore/manifest.c), what
 * another host or the store itself wrote. Anything is refused or taken
 * whole; what is taken writes back to the same manifest, and its numbers
 * agree with each other (pieces cover the size, hot pieces are stored ones).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "objstore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_tokener *tok = json_tokener_new();
	json_object *o, *again;
	struct manifest m = { 0 }, back = { 0 }, copy = { 0 };
	char *why = NULL;

	if (!tok)
		return 0;
	o = json_tokener_parse_ex(tok, (const char *)data, (int)size);
	json_tokener_free(tok);
	if (!o)
		return 0;
	if (manifest_from_json(o, &m, &why) == 0) {
		if (why)
			abort(); /* taken, yet a reason */
		if (m.n != (m.size + m.chunk - 1) / m.chunk || manifest_data_bytes(&m) > m.size)
			abort();
		for (size_t i = 0; i < m.n_hot; i++)
			if (m.hot[i] >= m.n || !m.digests[m.hot[i]][0] || (i && m.hot[i] <= m.hot[i - 1]))
				abort();
		again = manifest_json(&m);
		if (manifest_from_json(again, &back, NULL) != 0 || back.n != m.n || back.size != m.size ||
		    back.n_hot != m.n_hot || (m.n && memcmp(back.digests, m.digests, m.n * sizeof(*m.digests))) ||
		    (m.n_hot && memcmp(back.hot, m.hot, m.n_hot * sizeof(*m.hot))))
			abort();
		json_object_put(again);
		if (manifest_copy(&m, &copy) == 0 && (copy.n != m.n || copy.n_hot != m.n_hot))
			abort();
	} else if (!why) {
		abort(); /* refused without a reason */
	}
	free(why);
	manifest_clear(&m);
	manifest_clear(&back);
	manifest_clear(&copy);
	json_object_put(o);
	return 0;
}
