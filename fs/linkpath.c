/* Guest symlinks shown without a way out of live/NAME: see linkpath.h. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "linkpath.h"

/* The next component of *p (skipping slashes): its start and length, 0 at the end. */
static size_t next_component(const char **p, const char **start)
{
	size_t n;

	while (**p == '/')
		(*p)++;
	*start = *p;
	n = strcspn(*p, "/");
	*p += n;
	return n;
}

static bool is_dots(const char *c, size_t n, size_t dots)
{
	return n == dots && strncmp(c, "..", dots) == 0;
}

/* Components of a normalized absolute path ("/" has none). */
static size_t depth_of(const char *path)
{
	const char *p = path, *c;
	size_t d = 0;

	while (next_component(&p, &c) > 0)
		d++;
	return d;
}

int linkpath_relative(const char *from_dir, const char *to, char **ret)
{
	const char *a = from_dir, *b = to, *ca, *cb, *rest;
	size_t na, nb, ups = 0, len;
	char *out, *o;

	/* the common leading components */
	for (;;) {
		const char *sa = a, *sb = b;

		na = next_component(&a, &ca);
		nb = next_component(&b, &cb);
		if (na == 0 || na != nb || memcmp(ca, cb, na) != 0) {
			a = sa;
			b = sb;
			break;
		}
	}
	ups = depth_of(a);
	while (*b == '/')
		b++;
	rest = b;
	len = ups * 3 + strlen(rest) + 2;
	out = malloc(len);
	if (!out)
		return -ENOMEM;
	o = out;
	for (size_t i = 0; i < ups; i++) {
		memcpy(o, "../", 3);
		o += 3;
	}
	strcpy(o, rest);
	len = strlen(out);
	if (len > 0 && out[len - 1] == '/')
		out[--len] = '\0';
	if (len == 0)
		strcpy(out, ".");
	*ret = out;
	return 0;
}

/* Where the part of target up to its last ".." component ends (0: none). */
static size_t last_dotdot_end(const char *target)
{
	const char *p = target, *c;
	size_t n, end = 0;

	while ((n = next_component(&p, &c)) > 0)
		if (is_dots(c, n, 2))
			end = (size_t)(p - target);
	return end;
}

static bool has_dots(const char *target)
{
	const char *p = target, *c;
	size_t n;

	while ((n = next_component(&p, &c)) > 0)
		if (is_dots(c, n, 2))
			return true;
	return false;
}

/* "/a/b/link" -> "/a/b" (normalized input). */
static char *dir_of(const char *link_path)
{
	const char *slash = strrchr(link_path, '/');
	size_t n = slash && slash > link_path ? (size_t)(slash - link_path) : 1;

	return strndup(link_path, n);
}

int linkpath_show(const char *link_path, const char *target, linkpath_resolve_fn resolve, void *ctx, char **ret)
{
	_cleanup_free_ char *dir = NULL, *base = NULL, *resolved = NULL, *joined = NULL, *norm = NULL, *out = NULL;
	size_t cut;
	int r;

	if (target[0] != '/' && !has_dots(target)) {
		/* only names going down: shown as stored */
		if (strlen(target) > LINKPATH_MAX)
			return -ENAMETOOLONG;
		*ret = strdup(target);
		return *ret ? 0 : -ENOMEM;
	}
	dir = dir_of(link_path);
	if (!dir)
		return -ENOMEM;
	cut = last_dotdot_end(target);
	/* the part to resolve: where the target starts, up to its last ".." */
	if (asprintf(&base, "%s/%.*s", target[0] == '/' ? "" : dir, (int)cut, target) < 0)
		return -ENOMEM;
	if (cut == 0 || !resolve || resolve(ctx, base, &resolved) < 0 || resolved[0] != '/') {
		free(resolved);
		resolved = NULL;
		r = path_normalize(base, &resolved); /* the guest could not: lexically */
		if (r < 0)
			return r;
	}
	/* the rest has no ".."; whatever the guest answered is normalized again */
	if (asprintf(&joined, "%s/%s", resolved, target + cut) < 0)
		return -ENOMEM;
	r = path_normalize(joined, &norm);
	if (r == 0)
		r = linkpath_relative(dir, norm, &out);
	if (r < 0)
		return r;
	if (strlen(out) > LINKPATH_MAX)
		return -ENAMETOOLONG;
	if (linkpath_contained(link_path, out) < 0)
		return -EIO; /* cannot happen: the two steps above only make such paths */
	*ret = TAKE_PTR(out);
	return 0;
}

int linkpath_contained(const char *link_path, const char *target)
{
	_cleanup_free_ char *dir = dir_of(link_path);
	const char *p = target, *c;
	size_t n, ups = 0;
	bool names = false;

	if (!dir)
		return -ENOMEM;
	if (target[0] == '/')
		return -EINVAL;
	while ((n = next_component(&p, &c)) > 0) {
		if (is_dots(c, n, 2) && !names)
			ups++;
		else if (is_dots(c, n, 2) || (is_dots(c, n, 1) && names))
			return -EINVAL;
		else if (!is_dots(c, n, 1))
			names = true;
	}
	return ups <= depth_of(dir) ? 0 : -EINVAL;
}
