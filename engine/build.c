/*
 * A template's root disk, built before its bake boots it: from the
 * config's "image" (image.c) or from the template's Dockerfile
 * (dockerfile.c parses it, buildsteps.c runs it). What a build made is
 * recorded in store/templates/T/build.json: the disk in the store, the
 * image config it runs with, and its digest, which is part of the
 * template's identity (a changed image or Dockerfile result makes the old
 * snapshot's warm slots stale).
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "dockerfile.h"
#include "internal.h"
#include "parse.h"

void build_result_clear(struct build_result *b)
{
	free(b->disk);
	image_config_clear(&b->cfg);
	json_object_put(b->steps);
	memset(b, 0, sizeof(*b));
}

char *template_dockerfile_path(struct template *t)
{
	return strjoin(t->dir, "/Dockerfile", NULL);
}

bool template_has_dockerfile(struct template *t)
{
	_cleanup_free_ char *df = template_dockerfile_path(t);

	return df && access(df, F_OK) == 0;
}

bool template_builds(struct template *t, const struct template_config *cfg)
{
	return cfg->image || template_has_dockerfile(t);
}

int template_build(struct template *t, const struct template_config *cfg, const struct build_run *run,
		   struct build_result *ret, char **ret_error)
{
	_cleanup_free_ char *df = template_dockerfile_path(t);
	int r;

	memset(ret, 0, sizeof(*ret));
	if (template_has_dockerfile(t)) {
		if (cfg->image) {
			if (ret_error)
				*ret_error = strdup("build: the template has both an \"image\" and a Dockerfile (its FROM "
						    "names the image): remove one");
			return -EINVAL;
		}
		r = sha256_file(df, ret->dockerfile);
		if (r == 0)
			r = dockerfile_build(t, cfg, df, run, ret, ret_error);
	} else {
		r = image_make_disk(t->e, cfg->image, cfg->disk_mib, run, &ret->disk, &ret->cfg,
				    ret_error);
	}
	if (r < 0)
		build_result_clear(ret);
	return r;
}

int build_record_save(struct template *t, const struct build_result *b)
{
	_cleanup_free_ char *p = strjoin(t->dir, "/build.json", NULL);
	_cleanup_json_ json_object *o = json_object_new_object();
	const char *txt;

	if (!p || !o)
		return -ENOMEM;
	json_object_object_add(o, "disk", json_object_new_string(b->disk));
	json_object_object_add(o, "image", image_config_json(&b->cfg));
	if (b->steps)
		json_object_object_add(o, "steps", json_object_get(b->steps));
	if (b->dockerfile[0])
		json_object_object_add(o, "dockerfile_sha256", json_object_new_string(b->dockerfile));
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	return write_file_atomic(p, txt, strlen(txt), true);
}

/* e->lock held: the template no longer builds (no image, no Dockerfile): its build's record goes. */
void build_record_drop(struct template *t)
{
	_cleanup_free_ char *p = strjoin(t->dir, "/build.json", NULL);

	if (!t->has_build)
		return;
	build_result_clear(&t->build);
	t->has_build = false;
	if (p)
		unlink(p);
}

int build_record_load(struct template *t, struct build_result *ret)
{
	_cleanup_free_ char *p = strjoin(t->dir, "/build.json", NULL), *text = NULL;
	_cleanup_json_ json_object *o = NULL;
	json_object *img;
	int r;

	memset(ret, 0, sizeof(*ret));
	if (!p || read_file(p, 1 << 20, &text, NULL) < 0 || !(o = json_tokener_parse(text)))
		return -ENOENT;
	if (!jget_str(o, "disk") || !json_object_object_get_ex(o, "image", &img))
		return -EINVAL;
	r = image_config_from_json(img, &ret->cfg);
	if (r == 0 && !(ret->disk = strdup(jget_str(o, "disk"))))
		r = -ENOMEM;
	if (r == 0 && json_object_object_get_ex(o, "steps", &img))
		ret->steps = json_object_get(img);
	if (r == 0 && jget_str(o, "dockerfile_sha256"))
		snprintf(ret->dockerfile, sizeof(ret->dockerfile), "%s", jget_str(o, "dockerfile_sha256"));
	if (r < 0)
		build_result_clear(ret);
	return r;
}

/* ---- the template's files: Dockerfile, build.log ---- */

_Static_assert(TEMPLATE_DOCKERFILE_MAX == DOCKERFILE_SIZE_MAX, "the Dockerfile's size limit is the parser's");

bool template_dockerfile_moved(struct template *t)
{
	_cleanup_free_ char *df = template_dockerfile_path(t);
	char sha[SHA256_HEX_LEN + 1] = "";

	if (df && sha256_file(df, sha) < 0)
		sha[0] = '\0'; /* none */
	return strcmp(sha, t->has_build ? t->build.dockerfile : "") != 0;
}

char *template_render_dockerfile(struct template *t)
{
	_cleanup_free_ char *df = template_dockerfile_path(t);
	char *text = NULL;
	int r;

	if (!df)
		return NULL;
	r = read_file(df, DOCKERFILE_SIZE_MAX, &text, NULL);
	return r == -ENOENT ? strdup("") : text;
}

int build_log_create(struct template *t)
{
	_cleanup_free_ char *p = strjoin(t->dir, "/build.log", NULL), *tmp = strjoin(t->dir, "/build.log.new", NULL);
	int fd;

	if (!p || !tmp)
		return -1;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	if (fd >= 0 && rename(tmp, p) < 0) {
		close(fd);
		unlink(tmp);
		fd = -1;
	}
	if (fd < 0)
		log_warn("template %s: no build log: %s", t->name, strerror(errno));
	return fd;
}

int template_build_log_open(struct template *t)
{
	_cleanup_free_ char *p = strjoin(t->dir, "/build.log", NULL);
	int fd;

	if (!p)
		return -ENOMEM;
	fd = open(p, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

bool template_build_log_live(struct template *t, int fd)
{
	_cleanup_free_ char *p = strjoin(t->dir, "/build.log", NULL);
	struct stat a, b;
	bool running;

	pthread_mutex_lock(&t->e->lock);
	running = t->bake_running;
	pthread_mutex_unlock(&t->e->lock);
	return running && p && fstat(fd, &a) == 0 && stat(p, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}
