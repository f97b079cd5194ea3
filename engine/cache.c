/*
 * The store's build caches (docs/operations.md): fetched images
 * (store/images/layouts/), built root disks (store/images/disks/) and
 * Dockerfile steps (store/build-cache/). An entry is touched (its mtime set
 * to now) every time a build uses it; cache_prune removes the entries no
 * template's build uses and none has used for --cache-max-age. It runs
 * after every bake and at start, never while a bake runs (bakes wait for
 * it: cache_wait), so nothing it removes is being cloned.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "internal.h"

void cache_touch(const char *path)
{
	if (path && utimensat(AT_FDCWD, path, NULL, 0) < 0 && errno != ENOENT)
		log_debug("cache: touching %s: %s", path, strerror(errno));
}

/* e->lock held: the bake thread waits while a prune runs. */
void cache_wait(struct engine *e)
{
	while (e->cache_pruning)
		pthread_cond_wait(&e->cache_cond, &e->lock);
}

/* Whether a template's build uses entry (a file, or a directory holding the file). */
static bool referenced(char **refs, const char *entry)
{
	size_t n = strlen(entry);

	for (char **r = refs; r && *r; r++)
		if (strncmp(*r, entry, n) == 0 && ((*r)[n] == '\0' || (*r)[n] == '/'))
			return true;
	return false;
}

static bool ends_with(const char *s, const char *tail)
{
	size_t a = strlen(s), b = strlen(tail);

	return a >= b && strcmp(s + a - b, tail) == 0;
}

/* The entries of one cache directory; a disk's record (NAME.json beside NAME.img) goes with its disk. */
static unsigned prune_dir(const char *dir, char **refs, time_t before)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	unsigned n = 0;

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		_cleanup_free_ char *p = NULL, *pair = NULL;
		struct stat st;

		if (de->d_name[0] == '.' || !(p = strjoin(dir, "/", de->d_name, NULL)) || lstat(p, &st) < 0)
			continue;
		if (ends_with(p, ".json") || ends_with(p, ".img")) {
			size_t stem = strlen(p) - (ends_with(p, ".json") ? 5 : 4);

			if (asprintf(&pair, "%.*s%s", (int)stem, p, ends_with(p, ".json") ? ".img" : ".json") < 0)
				continue;
			if (ends_with(p, ".json") && access(pair, F_OK) == 0)
				continue; /* decided with its disk */
		}
		if (st.st_mtime >= before || referenced(refs, p))
			continue;
		if (rm_rf(p) == 0) {
			if (pair && ends_with(p, ".img"))
				unlink(pair);
			n++;
		}
	}
	closedir(d);
	return n;
}

void cache_prune(struct engine *e)
{
	static const char *const dirs[] = { "/images/layouts", "/images/disks", "/build-cache" };
	time_t before = time(NULL) - (time_t)e->opts.cache_max_age_s;
	char **refs = NULL;
	size_t n = 0;
	unsigned removed = 0;
	bool busy = false;

	pthread_mutex_lock(&e->lock);
	for (size_t i = 0; i < e->n_templates && !busy; i++)
		busy = e->templates[i]->bake_running;
	if (!busy && !e->cache_pruning && (refs = calloc(e->n_templates + 1, sizeof(char *)))) {
		for (size_t i = 0; i < e->n_templates; i++)
			if (e->templates[i]->has_build && (refs[n] = strdup(e->templates[i]->build.disk)))
				n++;
		e->cache_pruning = true;
	}
	pthread_mutex_unlock(&e->lock);
	if (!refs)
		return; /* a bake runs: the next one's end prunes */
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		_cleanup_free_ char *d = strjoin(e->store.root, dirs[i], NULL);

		if (d)
			removed += prune_dir(d, refs, before);
	}
	strv_free(refs);
	pthread_mutex_lock(&e->lock);
	e->cache_pruning = false;
	pthread_cond_broadcast(&e->cache_cond);
	pthread_mutex_unlock(&e->lock);
	if (removed)
		log_info("cache: removed %u entries no template uses and none used for %u s", removed,
			 e->opts.cache_max_age_s);
}
