/*
 * Image references of the template config's "image" (pure: config.c and
 * its fuzzer use it too): "oci:/PATH[:NAME]", "docker-archive:/PATH",
 * "docker://REFERENCE".
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

void image_ref_clear(struct image_ref *r)
{
	free(r->path);
	free(r->tag);
	memset(r, 0, sizeof(*r));
}

static bool path_ok(const char *p)
{
	return p[0] == '/' && strlen(p) < 4096 && !strstr(p, "/../") && !strstr(p, "/./") && !strchr(p, ',') &&
	       !strpbrk(p, "\n\r\t");
}

/* A registry reference: printable, no spaces, no shell or option syntax. */
static bool docker_ref_ok(const char *p)
{
	if (!*p || strlen(p) > 512 || p[0] == '-')
		return false;
	for (const char *c = p; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
		      strchr("._-/:@", *c)))
			return false;
	return true;
}

int image_ref_parse(const char *s, struct image_ref *r, char **ret_error)
{
	const char *colon;

	memset(r, 0, sizeof(*r));
	if (strncmp(s, "oci:", 4) == 0) {
		r->kind = REF_OCI;
		s += 4;
		colon = strrchr(s, ':');
		r->path = colon ? strndup(s, (size_t)(colon - s)) : strdup(s);
		if (colon && colon[1])
			r->tag = strdup(colon + 1);
		if (!r->path || (colon && colon[1] && !r->tag))
			return -ENOMEM;
		if (!path_ok(r->path) || (r->tag && !docker_ref_ok(r->tag)))
			goto bad;
	} else if (strncmp(s, "docker-archive:", 15) == 0) {
		r->kind = REF_ARCHIVE;
		if (!(r->path = strdup(s + 15)))
			return -ENOMEM;
		if (!path_ok(r->path))
			goto bad;
	} else if (strncmp(s, "docker://", 9) == 0) {
		r->kind = REF_DOCKER;
		if (!(r->path = strdup(s + 9)))
			return -ENOMEM;
		if (!docker_ref_ok(r->path))
			goto bad;
	} else {
		goto bad;
	}
	return 0;
bad:
	image_ref_clear(r);
	if (ret_error && asprintf(ret_error, "config: \"image\" must be \"oci:/PATH[:TAG]\", "
					     "\"docker-archive:/PATH\" or \"docker://REFERENCE\"") < 0)
		*ret_error = NULL;
	return -EINVAL;
}

int image_ref_check(const char *s, char **ret_error)
{
	struct image_ref r;
	int e = image_ref_parse(s, &r, ret_error);

	image_ref_clear(&r);
	return e;
}

