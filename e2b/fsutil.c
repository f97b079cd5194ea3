/* The pure parts of the filesystem service: see fsutil.h. */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "fsutil.h"

int e2bfs_guest_path(const char *path, const char *home, char **ret)
{
	_cleanup_free_ char *joined = NULL;
	const char *rest = path;

	if (!home || !*home)
		home = "/";
	if (path[0] == '/')
		return path_normalize(path, ret);
	if (path[0] == '~') {
		if (path[1] && path[1] != '/')
			return -EINVAL;
		rest = path + 1;
	}
	/* home and rest joined by a '/', which normalisation collapses if doubled */
	if (asprintf(&joined, "/%s/%s", home, rest) < 0)
		return -ENOMEM;
	return path_normalize(joined, ret);
}

const char *e2bfs_base(const char *guest_path)
{
	const char *s = strrchr(guest_path, '/');

	return s && s[1] ? s + 1 : guest_path;
}

void e2bfs_mode_string(mode_t mode, char out[static 24])
{
	/* Go's FileMode type letters, in its order "dalTLDpSugct?" (a, l, T never come from stat) */
	static const char rwx[] = "rwxrwxrwx";
	mode_t fmt = mode & S_IFMT;
	size_t w = 0;

	if (fmt == S_IFDIR)
		out[w++] = 'd';
	if (fmt == S_IFLNK)
		out[w++] = 'L';
	if (fmt == S_IFBLK || fmt == S_IFCHR)
		out[w++] = 'D';
	if (fmt == S_IFIFO)
		out[w++] = 'p';
	if (fmt == S_IFSOCK)
		out[w++] = 'S';
	if (mode & S_ISUID)
		out[w++] = 'u';
	if (mode & S_ISGID)
		out[w++] = 'g';
	if (fmt == S_IFCHR)
		out[w++] = 'c';
	if (mode & S_ISVTX)
		out[w++] = 't';
	if (w == 0)
		out[w++] = '-';
	for (int i = 0; i < 9; i++)
		out[w++] = mode & (1u << (8 - i)) ? rwx[i] : '-';
	out[w] = '\0';
}

void e2bfs_rfc3339(const struct timespec *ts, char out[static 48])
{
	struct tm tm;
	time_t t = ts->tv_sec;
	long ns = ts->tv_nsec;
	size_t n;

	if (!gmtime_r(&t, &tm)) {
		strcpy(out, "1970-01-01T00:00:00Z");
		return;
	}
	n = strftime(out, 48, "%Y-%m-%dT%H:%M:%S", &tm);
	if (ns <= 0 || ns >= 1000000000)
		snprintf(out + n, 48 - n, "Z");
	else if (ns % 1000000 == 0)
		snprintf(out + n, 48 - n, ".%03ldZ", ns / 1000000);
	else if (ns % 1000 == 0)
		snprintf(out + n, 48 - n, ".%06ldZ", ns / 1000);
	else
		snprintf(out + n, 48 - n, ".%09ldZ", ns);
}

static const char *entry_type(mode_t mode)
{
	if (S_ISREG(mode))
		return "FILE_TYPE_FILE";
	if (S_ISDIR(mode))
		return "FILE_TYPE_DIRECTORY";
	if (S_ISLNK(mode))
		return "FILE_TYPE_SYMLINK";
	return "FILE_TYPE_UNSPECIFIED";
}

static int add_str(json_object *o, const char *key, const char *val)
{
	json_object *v = json_object_new_string(val);

	if (!v || json_object_object_add(o, key, v) < 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

json_object *e2bfs_entry_json(const struct e2bfs_entry *e)
{
	json_object *o = json_object_new_object();
	char size[24], perm[24], mtime[48];
	const char *type;
	unsigned mode;

	if (!o)
		return NULL;
	/*
	 * As envd: a symlink shows its target's type and permission bits
	 * (unspecified and 0 when dangling), its own size, mtime and
	 * "Lrwxrwxrwx".
	 */
	if (e->symlink_target) {
		type = e->target ? entry_type(e->target->st_mode) : "FILE_TYPE_UNSPECIFIED";
		mode = e->target ? e->target->st_mode & 0777 : 0;
	} else {
		type = entry_type(e->st->st_mode);
		mode = e->st->st_mode & 0777;
	}
	snprintf(size, sizeof(size), "%" PRId64, (int64_t)e->st->st_size);
	e2bfs_mode_string(e->st->st_mode, perm);
	e2bfs_rfc3339(&e->st->st_mtim, mtime);
	if (add_str(o, "name", e->name) < 0 || add_str(o, "type", type) < 0 || add_str(o, "path", e->path) < 0 ||
	    add_str(o, "size", size) < 0 || json_object_object_add(o, "mode", json_object_new_int64(mode)) < 0 ||
	    add_str(o, "permissions", perm) < 0 || add_str(o, "owner", e->owner) < 0 ||
	    add_str(o, "group", e->group) < 0 ||
	    /* envd leaves a zero mtime out */
	    ((e->st->st_mtim.tv_sec || e->st->st_mtim.tv_nsec) && add_str(o, "modifiedTime", mtime) < 0) ||
	    (e->symlink_target && add_str(o, "symlinkTarget", e->symlink_target) < 0)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

int e2bfs_basic_user(const char *header, char **ret)
{
	_cleanup_free_ uint8_t *dec = NULL;
	const char *p;
	ssize_t n;
	char *colon, *user;

	if (!header)
		return -ENOENT;
	if (strncasecmp(header, "Basic", 5) != 0 || !isspace((unsigned char)header[5]))
		return -EINVAL;
	p = header + 5;
	while (isspace((unsigned char)*p))
		p++;
	n = base64_decode(p, strcspn(p, " \t\r\n"), &dec);
	if (n < 0)
		return -EINVAL;
	colon = memchr(dec, ':', (size_t)n);
	if (!colon || memchr(dec, '\0', (size_t)n))
		return -EINVAL;
	if (!(user = strndup((char *)dec, (size_t)(colon - (char *)dec))))
		return -ENOMEM;
	*ret = user;
	return 0;
}

/* ---- the guest's users and groups ---- */

static char **strv_dup(char **v)
{
	size_t n = 0;
	char **out;

	while (v && v[n])
		n++;
	if (!(out = calloc(n + 1, sizeof(*out))))
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!(out[i] = strdup(v[i]))) {
			for (size_t j = 0; j < i; j++)
				free(out[j]);
			free(out);
			return NULL;
		}
	return out;
}

static void *grow(void *arr, size_t n, size_t size)
{
	/* room for one more: capacity 8, then doubled whenever n reaches a power of two */
	if (n && (n < 8 || (n & (n - 1))))
		return arr;
	return reallocarray(arr, n ? 2 * n : 8, size);
}

int e2bfs_ids_load(struct e2bfs_ids *ids, FILE *passwd, FILE *group)
{
	struct passwd *pw;
	struct group *gr;

	*ids = (struct e2bfs_ids){0};
	while (passwd && (pw = fgetpwent(passwd))) {
		struct e2bfs_user *u = grow(ids->users, ids->n_users, sizeof(*u));

		if (!u)
			goto oom;
		ids->users = u;
		u += ids->n_users;
		*u = (struct e2bfs_user){.uid = pw->pw_uid, .gid = pw->pw_gid};
		if (!(u->name = strdup(pw->pw_name)) || !(u->home = strdup(pw->pw_dir ? pw->pw_dir : "/"))) {
			free(u->name);
			goto oom;
		}
		ids->n_users++;
	}
	while (group && (gr = fgetgrent(group))) {
		struct e2bfs_group *g = grow(ids->groups, ids->n_groups, sizeof(*g));

		if (!g)
			goto oom;
		ids->groups = g;
		g += ids->n_groups;
		*g = (struct e2bfs_group){.gid = gr->gr_gid};
		if (!(g->name = strdup(gr->gr_name)) || !(g->members = strv_dup(gr->gr_mem))) {
			free(g->name);
			goto oom;
		}
		ids->n_groups++;
	}
	return 0;
oom:
	e2bfs_ids_free(ids);
	return -ENOMEM;
}

void e2bfs_ids_free(struct e2bfs_ids *ids)
{
	for (size_t i = 0; i < ids->n_users; i++) {
		free(ids->users[i].name);
		free(ids->users[i].home);
	}
	for (size_t i = 0; i < ids->n_groups; i++) {
		free(ids->groups[i].name);
		for (char **m = ids->groups[i].members; m && *m; m++)
			free(*m);
		free(ids->groups[i].members);
	}
	free(ids->users);
	free(ids->groups);
	*ids = (struct e2bfs_ids){0};
}

const struct e2bfs_user *e2bfs_ids_user(const struct e2bfs_ids *ids, const char *name)
{
	bool numeric = *name && strspn(name, "0123456789") == strlen(name);
	unsigned long uid = numeric ? strtoul(name, NULL, 10) : 0;

	for (size_t i = 0; i < ids->n_users; i++)
		if (strcmp(ids->users[i].name, name) == 0)
			return &ids->users[i];
	for (size_t i = 0; numeric && i < ids->n_users; i++)
		if (ids->users[i].uid == uid)
			return &ids->users[i];
	return NULL;
}

void e2bfs_ids_owner(const struct e2bfs_ids *ids, uid_t uid, char out[static 64])
{
	for (size_t i = 0; i < ids->n_users; i++)
		if (ids->users[i].uid == uid) {
			snprintf(out, 64, "%s", ids->users[i].name);
			return;
		}
	snprintf(out, 64, "%u", (unsigned)uid);
}

void e2bfs_ids_group(const struct e2bfs_ids *ids, gid_t gid, char out[static 64])
{
	for (size_t i = 0; i < ids->n_groups; i++)
		if (ids->groups[i].gid == gid) {
			snprintf(out, 64, "%s", ids->groups[i].name);
			return;
		}
	snprintf(out, 64, "%u", (unsigned)gid);
}

size_t e2bfs_ids_groups(const struct e2bfs_ids *ids, const struct e2bfs_user *u, gid_t *out, size_t max)
{
	size_t n = 0;

	if (max == 0)
		return 0;
	out[n++] = u->gid;
	for (size_t i = 0; i < ids->n_groups && n < max; i++) {
		bool dup = false;

		for (size_t j = 0; j < n; j++)
			dup |= out[j] == ids->groups[i].gid;
		if (dup)
			continue;
		for (char **m = ids->groups[i].members; m && *m; m++)
			if (strcmp(*m, u->name) == 0) {
				out[n++] = ids->groups[i].gid;
				break;
			}
	}
	return n;
}

/* ---- directory watching by snapshots ---- */

void e2bfs_snap_free(struct e2bfs_snap *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i].name);
	free(s->v);
	*s = (struct e2bfs_snap){0};
}

static int snap_cmp(const void *a, const void *b)
{
	return strcmp(((const struct e2bfs_snap_ent *)a)->name, ((const struct e2bfs_snap_ent *)b)->name);
}

void e2bfs_snap_sort(struct e2bfs_snap *s)
{
	if (s->n)
		qsort(s->v, s->n, sizeof(*s->v), snap_cmp);
}

const char *e2bfs_event_name(enum e2bfs_event ev)
{
	switch (ev) {
	case E2BFS_CREATE: return "EVENT_TYPE_CREATE";
	case E2BFS_WRITE: return "EVENT_TYPE_WRITE";
	case E2BFS_REMOVE: return "EVENT_TYPE_REMOVE";
	case E2BFS_RENAME: return "EVENT_TYPE_RENAME";
	case E2BFS_CHMOD: return "EVENT_TYPE_CHMOD";
	}
	return "EVENT_TYPE_UNSPECIFIED";
}

/* Whether ino is among the names of s that other lacks (the far side of a rename). */
static bool ino_only_in(const struct e2bfs_snap *s, const struct e2bfs_snap *other, ino_t ino)
{
	for (size_t i = 0; i < s->n; i++) {
		if (s->v[i].ino != ino)
			continue;
		if (!bsearch(&s->v[i], other->v, other->n, sizeof(*other->v), snap_cmp))
			return true;
	}
	return false;
}

int e2bfs_snap_diff(const struct e2bfs_snap *old, const struct e2bfs_snap *new,
		    int (*fn)(void *ctx, const char *name, enum e2bfs_event ev), void *ctx)
{
	size_t i = 0, j = 0;
	int k = 0;

	while (k >= 0 && (i < old->n || j < new->n)) {
		int c = i == old->n ? 1 : j == new->n ? -1 : strcmp(old->v[i].name, new->v[j].name);

		if (c < 0) {
			const struct e2bfs_snap_ent *o = &old->v[i++];

			k = fn(ctx, o->name, ino_only_in(new, old, o->ino) ? E2BFS_RENAME : E2BFS_REMOVE);
		} else if (c > 0) {
			k = fn(ctx, new->v[j++].name, E2BFS_CREATE);
		} else {
			const struct e2bfs_snap_ent *o = &old->v[i++], *n = &new->v[j++];

			if (o->ino != n->ino || (o->mode & S_IFMT) != (n->mode & S_IFMT)) {
				k = fn(ctx, n->name, E2BFS_REMOVE);
				if (k >= 0)
					k = fn(ctx, n->name, E2BFS_CREATE);
				continue;
			}
			if (!S_ISDIR(n->mode) && (o->size != n->size || o->mtime.tv_sec != n->mtime.tv_sec ||
						  o->mtime.tv_nsec != n->mtime.tv_nsec))
				k = fn(ctx, n->name, E2BFS_WRITE);
			if (k >= 0 && (o->mode != n->mode || o->uid != n->uid || o->gid != n->gid))
				k = fn(ctx, n->name, E2BFS_CHMOD);
		}
	}
	return k < 0 ? k : 0;
}
