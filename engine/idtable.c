/* Objects by id (idtable.h). */
#include <errno.h>
#include <stdlib.h>

#include "idtable.h"

/* Fibonacci hashing: ids are consecutive, their high bits spread them. */
static size_t slot_of(uint64_t id, size_t cap)
{
	return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

static void place(struct idslot *v, size_t cap, uint64_t id, void *obj)
{
	size_t i = slot_of(id, cap);

	while (v[i].id != 0)
		i = (i + 1) & (cap - 1);
	v[i].id = id;
	v[i].obj = obj;
}

/* A new array of cap slots with the present ids only (removed ones dropped). */
static int rehash(struct idtable *t, size_t cap)
{
	struct idslot *v = calloc(cap, sizeof(*v));

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < t->cap; i++)
		if (t->v[i].id != 0 && t->v[i].id != IDTABLE_GONE)
			place(v, cap, t->v[i].id, t->v[i].obj);
	free(t->v);
	t->v = v;
	t->cap = cap;
	t->used = t->n;
	return 0;
}

static struct idslot *find(const struct idtable *t, uint64_t id)
{
	if (!t->cap)
		return NULL;
	for (size_t i = slot_of(id, t->cap), k = 0; k < t->cap; i = (i + 1) & (t->cap - 1), k++) {
		if (t->v[i].id == id)
			return &t->v[i];
		if (t->v[i].id == 0)
			return NULL;
	}
	return NULL;
}

int idtable_put(struct idtable *t, uint64_t id, void *obj)
{
	struct idslot *s;

	if (id == 0 || id == IDTABLE_GONE)
		return -EINVAL;
	if ((s = find(t, id))) {
		s->obj = obj;
		return 0;
	}
	/* at most 3/4 of the slots not empty, so every probe ends at an empty one */
	if ((t->used + 1) * 4 > t->cap * 3) {
		size_t cap = t->cap ? t->cap : 16;

		while ((t->n + 1) * 2 > cap) /* room to grow after the removed are dropped */
			cap *= 2;
		if (rehash(t, cap) < 0)
			return -ENOMEM;
	}
	place(t->v, t->cap, id, obj);
	t->n++;
	t->used++;
	return 0;
}

void *idtable_get(const struct idtable *t, uint64_t id)
{
	struct idslot *s = id && id != IDTABLE_GONE ? find(t, id) : NULL;

	return s ? s->obj : NULL;
}

void idtable_del(struct idtable *t, uint64_t id)
{
	struct idslot *s = id && id != IDTABLE_GONE ? find(t, id) : NULL;

	if (!s)
		return;
	s->id = IDTABLE_GONE;
	s->obj = NULL;
	t->n--;
}

void idtable_free(struct idtable *t)
{
	free(t->v);
	*t = (struct idtable){ 0 };
}
