/* A file as a list of chunk digests (objstore.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "objstore.h"

void manifest_clear(struct manifest *m)
{
	free(m->digests);
	free(m->hot);
	memset(m, 0, sizeof(*m));
}

int manifest_copy(const struct manifest *src, struct manifest *dst)
{
	*dst = *src;
	dst->digests = NULL;
	dst->hot = NULL;
	if (src->n && !(dst->digests = malloc(src->n * sizeof(*src->digests))))
		goto oom;
	if (src->n)
		memcpy(dst->digests, src->digests, src->n * sizeof(*src->digests));
	if (src->n_hot && !(dst->hot = malloc(src->n_hot * sizeof(*src->hot))))
		goto oom;
	if (src->n_hot)
		memcpy(dst->hot, src->hot, src->n_hot * sizeof(*src->hot));
	return 0;
oom:
	manifest_clear(dst);
	return -ENOMEM;
}

bool objstore_digest_valid(const char *s)
{
	size_t i;

	for (i = 0; s[i]; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return i == OBJSTORE_DIGEST_HEX;
}

static int bad(char **why, const char *what)
{
	error_set(why, "manifest: %s", what);
	return -EINVAL;
}

int manifest_from_json(json_object *o, struct manifest *m, char **why)
{
	json_object *size, *chunk, *chunks, *hot;
	struct manifest r = { 0 };
	int64_t sz, ck;

	if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "size", &size) ||
	    !json_object_object_get_ex(o, "chunk", &chunk) || !json_object_object_get_ex(o, "chunks", &chunks) ||
	    !json_object_is_type(size, json_type_int) || !json_object_is_type(chunk, json_type_int) ||
	    !json_object_is_type(chunks, json_type_array))
		return bad(why, "needs size, chunk and chunks");
	sz = json_object_get_int64(size);
	ck = json_object_get_int64(chunk);
	if (ck < OBJSTORE_CHUNK_MIN || ck > OBJSTORE_CHUNK_MAX || (ck & (ck - 1)))
		return bad(why, "chunk size is not a power of two from 4 KiB to 4 MiB");
	if (sz < 0 || sz > ((int64_t)1 << 40))
		return bad(why, "size out of range");
	r.size = (uint64_t)sz;
	r.chunk = (uint32_t)ck;
	r.n = (size_t)((r.size + r.chunk - 1) / r.chunk);
	if (json_object_array_length(chunks) != r.n)
		return bad(why, "chunks do not cover its size");
	if (r.n && !(r.digests = calloc(r.n, sizeof(*r.digests))))
		return -ENOMEM;
	for (size_t i = 0; i < r.n; i++) {
		json_object *d = json_object_array_get_idx(chunks, i);

		if (!d)
			continue; /* null: all zeros */
		if (!json_object_is_type(d, json_type_string) || !objstore_digest_valid(json_object_get_string(d))) {
			manifest_clear(&r);
			return bad(why, "a chunk digest is not 64 hex digits");
		}
		memcpy(r.digests[i], json_object_get_string(d), OBJSTORE_DIGEST_HEX + 1);
	}
	if (json_object_object_get_ex(o, "hot", &hot)) {
		size_t n = json_object_is_type(hot, json_type_array) ? json_object_array_length(hot) : 0;

		if (!json_object_is_type(hot, json_type_array) || n > r.n) {
			manifest_clear(&r);
			return bad(why, "hot is not a list of chunk indexes");
		}
		if (n && !(r.hot = calloc(n, sizeof(*r.hot)))) {
			manifest_clear(&r);
			return -ENOMEM;
		}
		for (size_t i = 0; i < n; i++) {
			json_object *x = json_object_array_get_idx(hot, i);
			int64_t v = json_object_is_type(x, json_type_int) ? json_object_get_int64(x) : -1;

			/* ascending, in range, a piece that is stored */
			if (v < 0 || (uint64_t)v >= r.n || (i && (uint32_t)v <= r.hot[i - 1]) || !r.digests[v][0]) {
				manifest_clear(&r);
				return bad(why, "hot names a chunk out of order, out of range or all zeros");
			}
			r.hot[i] = (uint32_t)v;
		}
		r.n_hot = n;
	}
	*m = r;
	return 0;
}

json_object *manifest_json(const struct manifest *m)
{
	json_object *o = json_object_new_object(), *a = json_object_new_array_ext((int)m->n);

	json_object_object_add(o, "size", json_object_new_int64((int64_t)m->size));
	json_object_object_add(o, "chunk", json_object_new_int64(m->chunk));
	for (size_t i = 0; i < m->n; i++)
		json_object_array_add(a, m->digests[i][0] ? json_object_new_string(m->digests[i]) : NULL);
	json_object_object_add(o, "chunks", a);
	if (m->n_hot) {
		json_object *h = json_object_new_array_ext((int)m->n_hot);

		for (size_t i = 0; i < m->n_hot; i++)
			json_object_array_add(h, json_object_new_int64(m->hot[i]));
		json_object_object_add(o, "hot", h);
	}
	return o;
}

uint64_t manifest_data_bytes(const struct manifest *m)
{
	uint64_t b = 0;

	for (size_t i = 0; i < m->n; i++)
		if (m->digests[i][0])
			b += i + 1 < m->n ? m->chunk : m->size - (uint64_t)i * m->chunk;
	return b;
}
