/* The mount's files as emberfs-e2b uses them (mountc.h). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/common.h"
#include "http.h"
#include "mountc.h"

static void closedirp(DIR **d)
{
	if (*d)
		closedir(*d);
}

int sbx_lookup(const char *id, struct sbx *out)
{
	_cleanup_(closedirp) DIR *d = NULL;
	char path[PATH_MAX];
	struct dirent *de;
	struct stat st;

	if (name_validate(id) < 0)
		return -EINVAL;
	/* live/ is flat and needs no guest: a cheap "does it exist" before the template is looked for */
	snprintf(path, sizeof(path), "%s/live/%s", cfg.mount, id);
	if (stat(path, &st) < 0)
		return -errno;
	snprintf(path, sizeof(path), "%s/templates", cfg.mount);
	if (!(d = opendir(path)))
		return -errno;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (snprintf(path, sizeof(path), "%s/templates/%s/sandboxes/%s", cfg.mount, de->d_name, id) >=
		    (int)sizeof(path))
			continue;
		if (strlen(de->d_name) >= sizeof(out->tpl))
			continue; /* not a template name */
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			memset(out, 0, sizeof(*out));
			snprintf(out->id, sizeof(out->id), "%s", id);
			memcpy(out->tpl, de->d_name, strlen(de->d_name) + 1);
			snprintf(out->dir, sizeof(out->dir), "%s", path);
			snprintf(out->live, sizeof(out->live), "%s/live/%s", cfg.mount, id);
			return 0;
		}
	}
	return -ENOENT;
}

int sbx_path(const struct sbx *s, const char *file, char *buf, size_t size)
{
	return snprintf(buf, size, "%s/%s", s->dir, file) >= (int)size ? -ENAMETOOLONG : 0;
}

int mnt_read(const char *path, char **ret, size_t *len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ char *buf = NULL;
	size_t n = 0, cap = 0;

	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t k;

		if (n + 4096 + 1 > cap) {
			char *b;

			cap = cap ? cap * 2 : 8192;
			if (!(b = realloc(buf, cap)))
				return -ENOMEM;
			buf = b;
		}
		k = read(fd, buf + n, cap - n - 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			break;
		n += (size_t)k;
	}
	buf[n] = 0;
	if (len)
		*len = n;
	*ret = TAKE_PTR(buf);
	return 0;
}

json_object *mnt_read_json(const char *path)
{
	_cleanup_free_ char *s = NULL;
	json_object *o;
	int r = mnt_read(path, &s, NULL);

	if (r < 0) {
		errno = -r;
		return NULL;
	}
	o = json_tokener_parse(s);
	if (!o)
		errno = EBADMSG;
	return o;
}

int mnt_write(const char *path, const char *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	ssize_t k;
	int r = 0;

	if (fd < 0)
		return -errno;
	do
		k = write(fd, data, len);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		r = -errno;
	else if ((size_t)k != len)
		r = -EIO;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	return r;
}

int mnt_create(const char *tpl, const char *id, json_object *settings, char **why)
{
	_cleanup_json_ json_object *req = json_object_new_object();
	char path[PATH_MAX];
	const char *text;
	struct stat st;
	int r;

	if (why)
		*why = NULL;
	if (name_validate(tpl) < 0 || name_validate(id) < 0)
		return -EINVAL;
	snprintf(path, sizeof(path), "%s/templates/%s", cfg.mount, tpl);
	if (stat(path, &st) < 0) {
		r = -errno;
		error_set(why, "template %s: %s", tpl, r == -ENOENT ? "not found" : strerror(-r));
		return r;
	}
	/* the create file takes the settings with the name: in force from the reservation on */
	json_object_object_add(req, "name", json_object_new_string(id));
	if (settings) {
		json_object_object_foreach(settings, k, v)
			json_object_object_add(req, k, json_object_get(v));
	}
	text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	snprintf(path, sizeof(path), "%s/templates/%s/create", cfg.mount, tpl);
	r = mnt_write(path, text, strlen(text));
	if (r < 0 && why) {
		/* the template's status says why a create was refused */
		_cleanup_json_ json_object *status = NULL;
		json_object *ce;

		snprintf(path, sizeof(path), "%s/templates/%s/status", cfg.mount, tpl);
		status = mnt_read_json(path);
		if (status && json_object_object_get_ex(status, "create_error", &ce) && ce)
			*why = strdup(json_object_get_string(ce));
	}
	return r;
}

int sbx_wait_ready(const struct sbx *s)
{
	char path[PATH_MAX];
	_cleanup_free_ char *out = NULL;
	int r;

	if ((r = sbx_path(s, "wait", path, sizeof(path))) < 0)
		return r;
	do
		r = mnt_read(path, &out, NULL);
	while (r == -EINTR);
	return r;
}
