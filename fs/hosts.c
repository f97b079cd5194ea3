/*
 * MOUNT/hosts/H/status (cluster mode only): each host of the cluster's view
 * and its status (cluster_render_host: capacity, load, warm slots by
 * identity, health), rendered at open like the other generated files.
 *
 * A directory needs a stable inode number while the kernel knows it: each
 * host name seen gets an engine id (never reused) in a small table, as
 * sandboxes-by/ does (bymeta.c); an id whose host left the view answers
 * ENOENT, and such entries are dropped when the table is full.
 */
#include <string.h>

#include "fs_internal.h"

#define HOSTS_MAX 1024 /* host directories known at once */
#define IDX_HOST_STATUS 1

struct host_entry {
	uint64_t id;
	char *name;
};

struct hosts {
	pthread_mutex_t lock;
	struct host_entry *v; /* lock */
	size_t n;	      /* lock */
};

int hosts_init(struct fs *f)
{
	if (!(f->hosts = calloc(1, sizeof(*f->hosts))))
		return -ENOMEM;
	pthread_mutex_init(&f->hosts->lock, NULL);
	return 0;
}

void hosts_free(struct fs *f)
{
	struct hosts *h = f->hosts;

	if (!h)
		return;
	for (size_t i = 0; i < h->n; i++)
		free(h->v[i].name);
	free(h->v);
	pthread_mutex_destroy(&h->lock);
	free(h);
	f->hosts = NULL;
}

static bool in_view(struct fs *f, const char *name)
{
	char **v = cluster_hosts(f->cluster);
	bool found = false;

	for (char **p = v; p && *p && !found; p++)
		found = strcmp(*p, name) == 0;
	strv_free(v);
	return found;
}

/* Entries of hosts gone from the view go (h->lock held). */
static void sweep(struct fs *f)
{
	struct hosts *h = f->hosts;
	size_t k = 0;

	for (size_t i = 0; i < h->n; i++) {
		if (in_view(f, h->v[i].name))
			h->v[k++] = h->v[i];
		else
			free(h->v[i].name);
	}
	h->n = k;
}

/* The id of host name, made when new; 0 when the table is full even after a sweep. */
static uint64_t host_id(struct fs *f, const char *name)
{
	struct hosts *h = f->hosts;
	struct host_entry *nv;
	uint64_t id = 0;

	pthread_mutex_lock(&h->lock);
	for (size_t i = 0; i < h->n && !id; i++)
		if (strcmp(h->v[i].name, name) == 0)
			id = h->v[i].id;
	if (!id && h->n >= HOSTS_MAX)
		sweep(f);
	if (!id && h->n < HOSTS_MAX && (nv = realloc(h->v, (h->n + 1) * sizeof(*nv)))) {
		h->v = nv;
		nv[h->n] = (struct host_entry){ .id = engine_new_id(f->e), .name = strdup(name) };
		if (nv[h->n].name)
			id = nv[h->n++].id;
	}
	pthread_mutex_unlock(&h->lock);
	return id;
}

int hosts_node(struct fs *f, uint64_t obj, struct node *n)
{
	struct hosts *h = f->hosts;
	char *name = NULL;
	int r = -ENOENT;

	if (!f->cluster || !h)
		return -ENOENT;
	pthread_mutex_lock(&h->lock);
	for (size_t i = 0; i < h->n && !name; i++)
		if (h->v[i].id == obj && !(name = strdup(h->v[i].name)))
			r = -ENOMEM;
	pthread_mutex_unlock(&h->lock);
	if (name && in_view(f, name)) {
		unsigned idx = INO_IDX(n->ino);

		n->kind = idx == IDX_DIR ? K_HOST_DIR : K_HOST_FILE;
		r = idx == IDX_DIR || idx == IDX_HOST_STATUS ? 0 : -ENOENT;
		n->host = TAKE_PTR(name);
	}
	free(name);
	return r;
}

int hosts_lookup(struct fs *f, const struct node *p, const char *name, struct node *out)
{
	uint64_t id;

	if (p->kind == K_HOST_DIR)
		return strcmp(name, "status") == 0 ? node_get(f, INO(INO_OBJ(p->ino), IDX_HOST_STATUS), out) : -ENOENT;
	if (!in_view(f, name))
		return -ENOENT;
	id = host_id(f, name);
	return id ? node_get(f, INO(id, IDX_DIR), out) : -ENOSPC;
}

void hosts_list(struct fs *f, void (*add)(void *ctx, const char *name, fuse_ino_t ino, bool dir), void *ctx)
{
	char **v = cluster_hosts(f->cluster);

	for (char **p = v; p && *p; p++) {
		uint64_t id = host_id(f, *p);

		if (id)
			add(ctx, *p, INO(id, IDX_DIR), true);
	}
	strv_free(v);
}
