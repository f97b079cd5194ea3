/*
 * MOUNT/sandboxes-by/KEY/VALUE/NAME: the sandboxes whose metadata has
 * KEY = VALUE, as links to templates/T/sandboxes/NAME (docs/interface.md,
 * "Settings"). Keys and values are file names as meta_name_encode spells
 * them. Nothing here is stored: every lookup and listing asks the engine,
 * so the tree is as current as the metadata files.
 *
 * A directory needs a stable inode number while the kernel knows it: each
 * (KEY) and (KEY, VALUE) seen gets an engine id (never reused) in a small
 * table; an id whose directory matches nothing any more answers ENOENT, and
 * such entries are dropped when the table is full.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fs_internal.h"

#define BYMETA_MAX 4096 /* directories known at once */

struct bymeta_entry {
	uint64_t id;
	char *key;
	char *value; /* NULL: the key's directory */
};

struct bymeta {
	pthread_mutex_t lock;
	struct bymeta_entry *v;
	size_t n;
};

int bymeta_init(struct fs *f)
{
	if (!(f->bymeta = calloc(1, sizeof(*f->bymeta))))
		return -ENOMEM;
	pthread_mutex_init(&f->bymeta->lock, NULL);
	return 0;
}

void bymeta_free(struct fs *f)
{
	struct bymeta *b = f->bymeta;

	if (!b)
		return;
	for (size_t i = 0; i < b->n; i++) {
		free(b->v[i].key);
		free(b->v[i].value);
	}
	free(b->v);
	pthread_mutex_destroy(&b->lock);
	free(b);
	f->bymeta = NULL;
}

/* Does anything match (key) or (key, value) now? */
static bool matches(struct fs *f, const char *key, const char *value)
{
	char **v = value ? engine_metadata_match(f->e, key, value) : engine_metadata_values(f->e, key);
	bool any = v && v[0];

	strv_free(v);
	return any;
}

/* Entries that match nothing any more go (b->lock held; the engine takes its own lock for each question). */
static void sweep(struct fs *f)
{
	struct bymeta *b = f->bymeta;
	size_t k = 0;

	for (size_t i = 0; i < b->n; i++) {
		if (matches(f, b->v[i].key, b->v[i].value)) {
			b->v[k++] = b->v[i];
		} else {
			free(b->v[i].key);
			free(b->v[i].value);
		}
	}
	b->n = k;
}

/* The id of (key[, value]), made when new; 0 when the table is full even after a sweep. */
static uint64_t entry_id(struct fs *f, const char *key, const char *value)
{
	struct bymeta *b = f->bymeta;
	struct bymeta_entry *nv;
	uint64_t id = 0;

	pthread_mutex_lock(&b->lock);
	for (size_t i = 0; i < b->n && !id; i++)
		if (strcmp(b->v[i].key, key) == 0 &&
		    (value ? b->v[i].value && strcmp(b->v[i].value, value) == 0 : !b->v[i].value))
			id = b->v[i].id;
	if (!id && b->n >= BYMETA_MAX)
		sweep(f);
	if (!id && b->n < BYMETA_MAX && (nv = realloc(b->v, (b->n + 1) * sizeof(*nv)))) {
		b->v = nv;
		nv[b->n] = (struct bymeta_entry){ .id = engine_new_id(f->e), .key = strdup(key),
						 .value = value ? strdup(value) : NULL };
		if (nv[b->n].key && (!value || nv[b->n].value)) {
			id = nv[b->n].id;
			b->n++;
		} else {
			free(nv[b->n].key);
			free(nv[b->n].value);
		}
	}
	pthread_mutex_unlock(&b->lock);
	return id;
}

int bymeta_node(struct fs *f, uint64_t obj, struct node *n)
{
	struct bymeta *b = f->bymeta;
	int r = -ENOENT;

	pthread_mutex_lock(&b->lock);
	for (size_t i = 0; i < b->n; i++)
		if (b->v[i].id == obj) {
			n->by_key = strdup(b->v[i].key);
			n->by_value = b->v[i].value ? strdup(b->v[i].value) : NULL;
			r = n->by_key && (!b->v[i].value || n->by_value) ? 0 : -ENOMEM;
			n->kind = b->v[i].value ? K_BY_VALUE : K_BY_KEY;
			break;
		}
	pthread_mutex_unlock(&b->lock);
	if (r == 0 && (INO_IDX(n->ino) != IDX_DIR || !matches(f, n->by_key, n->by_value)))
		r = -ENOENT;
	return r;
}

/* The sandbox named name, if its metadata has key = value. */
static struct sandbox *matching_sandbox(struct fs *f, const char *key, const char *value, const char *name)
{
	char **names = engine_metadata_match(f->e, key, value), *tname;
	struct sandbox *s = NULL;
	struct template *t;
	bool in = false;

	for (char **p = names; p && *p && !in; p++)
		in = strcmp(*p, name) == 0;
	strv_free(names);
	if (in && (tname = engine_sandbox_template_name(f->e, name))) {
		if ((t = engine_template_get(f->e, tname))) {
			s = template_sandbox_get(t, name);
			template_unref(t);
		}
		free(tname);
	}
	return s;
}

int bymeta_lookup(struct fs *f, const struct node *p, const char *name, struct node *out)
{
	char dec[256]; /* a name is at most 255 bytes, and decodes to no more */
	struct sandbox *s;
	uint64_t id;
	int r;

	if (p->kind == K_BY_VALUE) {
		if (!(s = matching_sandbox(f, p->by_key, p->by_value, name)))
			return -ENOENT;
		r = node_get(f, INO(sandbox_id(s), IDX_SB_BYLINK), out);
		sandbox_unref(s);
		return r;
	}
	if (meta_name_decode(name, dec, sizeof(dec)) < 0)
		return -ENOENT;
	if (p->kind == K_BY ? !matches(f, dec, NULL) : !matches(f, p->by_key, dec))
		return -ENOENT;
	id = p->kind == K_BY ? entry_id(f, dec, NULL) : entry_id(f, p->by_key, dec);
	return id ? node_get(f, INO(id, IDX_DIR), out) : -ENOSPC;
}

void bymeta_list(struct fs *f, const struct node *n, void (*add)(void *ctx, const char *name, fuse_ino_t ino, mode_t mode),
		 void *ctx)
{
	char **v = n->kind == K_BY ? engine_metadata_keys(f->e) :
		   n->kind == K_BY_KEY ? engine_metadata_values(f->e, n->by_key) :
					 engine_metadata_match(f->e, n->by_key, n->by_value);
	char enc[256];

	for (char **p = v; p && *p; p++) {
		uint64_t id;

		if (n->kind == K_BY_VALUE) {
			struct sandbox *s = matching_sandbox(f, n->by_key, n->by_value, *p);

			if (s) {
				add(ctx, *p, INO(sandbox_id(s), IDX_SB_BYLINK), S_IFLNK);
				sandbox_unref(s);
			}
			continue;
		}
		/* a key or value longer than a file name is in the metadata file, not listed here */
		if (meta_name_encode(*p, enc) < 0)
			continue;
		id = n->kind == K_BY ? entry_id(f, *p, NULL) : entry_id(f, n->by_key, *p);
		if (id)
			add(ctx, enc, INO(id, IDX_DIR), S_IFDIR);
	}
	strv_free(v);
}

/* sandboxes-by/KEY/VALUE/NAME -> ../../../templates/T/sandboxes/NAME */
char *bymeta_link(struct fs *f, const struct node *n)
{
	_cleanup_free_ char *tname = engine_sandbox_template_name(f->e, sandbox_name(n->s));
	char *t = NULL;

	return tname && asprintf(&t, "../../../templates/%s/sandboxes/%s", tname, sandbox_name(n->s)) >= 0 ? t : NULL;
}
