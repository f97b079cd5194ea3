/*
 * Template root disks from OCI images (config "image"): an image is
 * fetched into an OCI layout (skopeo, for docker:// and docker-archive:;
 * oci: layouts are read where they are), its manifest and config read
 * (json-c, each blob checked against its digest), its layers unpacked by
 * umoci (whiteouts and opaque directories, owners, modes, xattrs, hard links
 * and symlinks as the image has them) and made into an ext4 disk by
 * mkfs.ext4 -d, without mounting anything. docs/architecture.md says why
 * these tools.
 *
 * Disks are cached in the store by the image's manifest digest and the disk
 * size, next to what the image's config says (env, workdir, user, cmd): a
 * second template of the same image, or a rebake, makes nothing again.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "image.h"
#include "internal.h"
#include "parse.h"

#define BLOB_MAX (4u << 20) /* an index, manifest or config blob */
#define DISK_MIN_MIB 64
#define DISK_ALIGN_MIB 64

void image_config_clear(struct image_config *c)
{
	strv_free(c->env);
	strv_free(c->cmd);
	strv_free(c->entrypoint);
	free(c->workdir);
	free(c->user);
	memset(c, 0, sizeof(*c));
}

/* ---- the build log ---- */

void build_phase(const struct build_run *run, const char *phase)
{
	if (run->phase)
		run->phase(run->ctx, phase);
}

void blog(int fd, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	int n;

	if (fd < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(fd, buf, (size_t)n) < 0) {
		/* a build log that cannot be written loses lines, not the build */
	}
}

/* ---- reading a layout ---- */

/* "sha256:<64 hex>": what may name a blob (the layout is the user's, or a registry's). */
static bool digest_ok(const char *d)
{
	if (!d || strncmp(d, "sha256:", 7) != 0 || strlen(d) != 7 + SHA256_HEX_LEN)
		return false;
	for (const char *c = d + 7; *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
			return false;
	return true;
}

/* A blob of the layout, checked against its digest, parsed as a JSON object. */
static int read_blob(const char *layout, const char *digest, json_object **ret, char **ret_error)
{
	_cleanup_free_ char *path = NULL, *data = NULL;
	struct sha256_ctx c;
	uint8_t d[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];
	size_t len;
	int r;

	if (!digest_ok(digest))
		return error_first(ret_error, -EINVAL, "image: a descriptor's digest is not sha256:<hex>");
	path = strjoin(layout, "/blobs/sha256/", digest + 7, NULL);
	if (!path)
		return -ENOMEM;
	r = read_file(path, BLOB_MAX, &data, &len);
	if (r < 0)
		return error_first(ret_error, r, "image: blob %.19s...: %s", digest, strerror(-r));
	sha256_init(&c);
	sha256_update(&c, data, len);
	sha256_final(&c, d);
	sha256_hex(d, hex);
	if (strcmp(hex, digest + 7) != 0)
		return error_first(ret_error, -EIO, "image: blob %.19s... does not match its digest", digest);
	*ret = json_tokener_parse(data);
	if (!*ret || !json_object_is_type(*ret, json_type_object)) {
		json_object_put(*ret);
		*ret = NULL;
		return error_first(ret_error, -EINVAL, "image: blob %.19s... is not a JSON object", digest);
	}
	return 0;
}

static const char *jstr(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ?
		       json_object_get_string(v) :
		       NULL;
}

static bool is_index(const char *media)
{
	return media && (strcmp(media, "application/vnd.oci.image.index.v1+json") == 0 ||
			 strcmp(media, "application/vnd.docker.distribution.manifest.list.v2+json") == 0);
}

/* In an index's manifests: the one named tag (NULL: the only one), or linux/amd64 in a nested index. */
static json_object *pick_manifest(json_object *index, const char *tag, bool by_platform, char **ret_error)
{
	json_object *ms, *found = NULL;
	size_t n;

	if (!json_object_object_get_ex(index, "manifests", &ms) || !json_object_is_type(ms, json_type_array)) {
		error_first(ret_error, -EINVAL, "image: an index without manifests");
		return NULL;
	}
	n = json_object_array_length(ms);
	for (size_t i = 0; i < n && !found; i++) {
		json_object *m = json_object_array_get_idx(ms, i), *ann, *plat;
		const char *name = NULL;

		if (by_platform) {
			if (json_object_object_get_ex(m, "platform", &plat) && jstr(plat, "architecture") &&
			    strcmp(jstr(plat, "architecture"), "amd64") == 0 && jstr(plat, "os") &&
			    strcmp(jstr(plat, "os"), "linux") == 0)
				found = m;
			continue;
		}
		if (json_object_object_get_ex(m, "annotations", &ann))
			name = jstr(ann, "org.opencontainers.image.ref.name");
		if (tag ? name && strcmp(name, tag) == 0 : n == 1)
			found = m;
	}
	if (found)
		return found;
	if (by_platform)
		error_first(ret_error, -EINVAL, "image: no linux/amd64 image in the index (the guest is x86_64)");
	else if (tag)
		error_first(ret_error, -EINVAL, "image: no image named \"%s\" in the layout", tag);
	else
		error_first(ret_error, -EINVAL, "image: the layout holds %zu images: name one (oci:PATH:NAME)", n);
	return NULL;
}

static char **strv_of(json_object *a)
{
	size_t n = a && json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;
	char **v = calloc(n + 1, sizeof(char *));

	for (size_t i = 0; v && i < n; i++) {
		json_object *s = json_object_array_get_idx(a, i);

		if (!json_object_is_type(s, json_type_string) || !(v[i] = strdup(json_object_get_string(s)))) {
			strv_free(v);
			return NULL;
		}
	}
	return v;
}

/* The image's config: what runs in it and how. */
static int read_config(json_object *cfgblob, struct image_config *ret, char **ret_error)
{
	const char *arch = jstr(cfgblob, "architecture"), *os = jstr(cfgblob, "os"), *wd, *user;
	json_object *c = NULL, *v;

	if (arch && strcmp(arch, "amd64") != 0)
		return error_first(ret_error, -EINVAL, "image: built for %s; the guest is amd64 (x86_64)", arch);
	if (os && strcmp(os, "linux") != 0)
		return error_first(ret_error, -EINVAL, "image: built for %s, not linux", os);
	json_object_object_get_ex(cfgblob, "config", &c);
	ret->env = strv_of(c && json_object_object_get_ex(c, "Env", &v) ? v : NULL);
	ret->cmd = strv_of(c && json_object_object_get_ex(c, "Cmd", &v) ? v : NULL);
	ret->entrypoint = strv_of(c && json_object_object_get_ex(c, "Entrypoint", &v) ? v : NULL);
	if (!ret->env || !ret->cmd || !ret->entrypoint)
		return -ENOMEM;
	wd = c ? jstr(c, "WorkingDir") : NULL;
	user = c ? jstr(c, "User") : NULL;
	if ((wd && *wd && !(ret->workdir = strdup(wd))) || (user && *user && !(ret->user = strdup(user))))
		return -ENOMEM;
	return 0;
}

/*
 * The image at layout (named tag, or the only one): its manifest digest
 * in ret->digest and its config. Reads index.json, a nested index by
 * platform, the manifest and the config blob.
 */
static int layout_read(const char *layout, const char *tag, struct image_config *ret, char **ret_error)
{
	_cleanup_free_ char *ipath = strjoin(layout, "/index.json", NULL), *idata = NULL;
	_cleanup_json_ json_object *index = NULL, *nested = NULL, *manifest = NULL, *cfgblob = NULL;
	json_object *d, *cfgd;
	const char *digest;
	size_t len;
	int r;

	if (!ipath)
		return -ENOMEM;
	r = read_file(ipath, BLOB_MAX, &idata, &len);
	if (r < 0)
		return error_first(ret_error, r, "image: %s: %s (not an OCI image layout)", ipath, strerror(-r));
	index = json_tokener_parse(idata);
	if (!index || !json_object_is_type(index, json_type_object))
		return error_first(ret_error, -EINVAL, "image: %s is not a JSON object", ipath);
	if (!(d = pick_manifest(index, tag, false, ret_error)))
		return -EINVAL;
	if (is_index(jstr(d, "mediaType"))) {
		if ((r = read_blob(layout, jstr(d, "digest"), &nested, ret_error)) < 0)
			return r;
		if (!(d = pick_manifest(nested, NULL, true, ret_error)))
			return -EINVAL;
	}
	digest = jstr(d, "digest");
	if ((r = read_blob(layout, digest, &manifest, ret_error)) < 0)
		return r;
	snprintf(ret->digest, sizeof(ret->digest), "%s", digest);
	if (!json_object_object_get_ex(manifest, "config", &cfgd) || (r = read_blob(layout, jstr(cfgd, "digest"), &cfgblob, ret_error)) < 0)
		return error_first(ret_error, -EINVAL, "image: manifest %.19s... has no readable config", digest);
	return read_config(cfgblob, ret, ret_error);
}

/* ---- sizes ---- */

static uint64_t walk_bytes, walk_inodes;

static int walk_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)p;
	(void)flag;
	(void)f;
	walk_bytes += (uint64_t)st->st_blocks * 512 + 256; /* and an inode's share of metadata */
	walk_inodes++;
	return 0;
}

static pthread_mutex_t walk_lock = PTHREAD_MUTEX_INITIALIZER;

/* Bytes and inodes under dir (nftw: one walk at a time). */
static int tree_size(const char *dir, uint64_t *bytes, uint64_t *inodes)
{
	int r;

	pthread_mutex_lock(&walk_lock);
	walk_bytes = walk_inodes = 0;
	r = nftw(dir, walk_one, 64, FTW_PHYS) < 0 ? -errno : 0;
	*bytes = walk_bytes;
	*inodes = walk_inodes;
	pthread_mutex_unlock(&walk_lock);
	return r;
}

/* ---- the disk ---- */

static int unpack_and_mkfs(struct engine *e, const char *layout, const char *tag, unsigned disk_mib, const char *dst,
			   const struct build_run *run, unsigned *ret_mib,
			   char **ret_error)
{
	_cleanup_free_ char *tmp = strjoin(dst, ".tmp", NULL), *bundle = NULL, *rootfs = NULL, *img = NULL;
	_cleanup_free_ char *image_arg = NULL, *size_arg = NULL, *inodes_arg = NULL, *why = NULL;
	uint64_t bytes, inodes, need_mib;
	unsigned mib;
	int r;

	(void)e;
	if (!tmp)
		return -ENOMEM;
	rm_rf(tmp);
	bundle = strjoin(tmp, "/bundle", NULL);
	rootfs = strjoin(tmp, "/bundle/rootfs", NULL);
	img = strjoin(tmp, "/disk.img", NULL);
	image_arg = strjoin(layout, ":", tag, NULL);
	if (!bundle || !rootfs || !img || !image_arg)
		return -ENOMEM;
	if ((r = mkdir_p(tmp, 0700)) < 0)
		return r;
	build_phase(run, "unpack");
	blog(run->log_fd, "unpack: umoci unpack --image %s", image_arg);
	{
		char *argv[] = { "umoci", "unpack", "--image", image_arg, bundle, NULL };

		r = tool_run(argv, run->log_fd, UMOCI_TIMEOUT_MS, run->cancel, &why);
	}
	timings_lap(run->tm, "unpack");
	if (r < 0)
		goto out;
	if ((r = tree_size(rootfs, &bytes, &inodes)) < 0) {
		error_first(ret_error, r, "image: measuring the unpacked image: %s", strerror(-r));
		goto out;
	}
	/* the image plus a fifth and 256 MiB of room, unless the config says how much */
	need_mib = bytes / 1048576 + inodes / 4096 + 16;
	mib = disk_mib ? disk_mib :
			 (unsigned)(((need_mib * 6 / 5 + 256 + DISK_ALIGN_MIB - 1) / DISK_ALIGN_MIB) * DISK_ALIGN_MIB);
	if (mib < need_mib || mib < DISK_MIN_MIB) {
		r = error_first(ret_error, -EFBIG, "image: needs about %" PRIu64 " MiB; \"disk_mib\" is %u", need_mib, mib);
		goto out;
	}
	if (asprintf(&size_arg, "%um", mib) < 0 || asprintf(&inodes_arg, "%" PRIu64, inodes * 2 + 16384) < 0) {
		r = -ENOMEM;
		goto out;
	}
	build_phase(run, "mkfs");
	blog(run->log_fd, "mkfs: %" PRIu64 " MiB, %" PRIu64 " inodes in the image; a %u MiB ext4 disk", bytes >> 20, inodes,
	     mib);
	{
		/* inode tables and journal written now: else the guest's ext4lazyinit does it, in every sandbox, under TCG */
		char *argv[] = { "mkfs.ext4", "-q", "-F", "-L", "emberfs-root", "-N", inodes_arg, "-E",
				 "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0", "-d", rootfs, img, size_arg, NULL };

		r = tool_run(argv, run->log_fd, MKFS_TIMEOUT_MS, run->cancel, &why);
	}
	timings_lap(run->tm, "mkfs");
	if (r == 0 && rename(img, dst) < 0)
		r = -errno;
	if (r == 0)
		*ret_mib = mib;
out:
	if (r < 0 && why)
		error_first(ret_error, r, "image: %s (build log has its output)", why);
	rm_rf(tmp);
	return r;
}

/* Where images fetched with skopeo go: the store, named by what was fetched. */
static char *layout_cache(struct engine *e, const char *what)
{
	struct sha256_ctx c;
	uint8_t d[SHA256_LEN];
	char hex[SHA256_HEX_LEN + 1];

	sha256_init(&c);
	sha256_update(&c, what, strlen(what));
	sha256_final(&c, d);
	sha256_hex(d, hex);
	return strjoin(e->store.root, "/images/layouts/", hex, NULL);
}

/* docker:// and docker-archive: into an OCI layout of the store (tag "img"); skopeo reuses blobs it has. */
static int fetch(struct engine *e, const struct image_ref *r, const struct build_run *run, char **ret_layout,
		 char **ret_error)
{
	_cleanup_free_ char *layout = NULL, *src = NULL, *dst = NULL, *why = NULL;
	struct stat st;
	bool made;
	int ret;

	if (r->kind == REF_ARCHIVE) {
		/* an archive is named by its path and when it last changed */
		_cleanup_free_ char *what = NULL;

		if (stat(r->path, &st) < 0)
			return error_first(ret_error, -errno, "image: %s: %s", r->path, strerror(errno));
		if (asprintf(&what, "archive:%s:%" PRIu64 ":%" PRId64, r->path, (uint64_t)st.st_size,
			     (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec) < 0)
			return -ENOMEM;
		layout = layout_cache(e, what);
		src = strjoin("docker-archive:", r->path, NULL);
	} else {
		_cleanup_free_ char *what = strjoin("docker:", r->path, NULL);

		layout = what ? layout_cache(e, what) : NULL;
		src = strjoin("docker://", r->path, NULL);
	}
	dst = layout ? strjoin("oci:", layout, ":img", NULL) : NULL;
	if (!layout || !src || !dst)
		return -ENOMEM;
	made = access(layout, F_OK) < 0; /* a layout fetched before stays the cache it is */
	if ((ret = mkdir_p(layout, 0700)) < 0)
		return error_first(ret_error, ret, "image: %s: %s", layout, strerror(-ret));
	blog(run->log_fd, "pull: skopeo copy %s %s", src, dst);
	{
		char *argv[] = { "skopeo", "copy", "--retry-times", "2", "--quiet", src, dst, NULL };

		ret = tool_run(argv, run->log_fd, SKOPEO_TIMEOUT_MS, run->cancel, &why);
	}
	if (ret < 0) {
		if (made)
			rm_rf(layout); /* a failed fetch leaves no layout behind */
		return error_first(ret_error, ret, "image: cannot fetch %s: %s (build log has skopeo's output)", src,
			    why ? why : strerror(-ret));
	}
	cache_touch(layout);
	*ret_layout = TAKE_PTR(layout);
	return 0;
}

static int config_save(const char *path, const struct image_config *c, unsigned mib)
{
	_cleanup_json_ json_object *o = image_config_json(c);
	const char *txt;

	if (!o)
		return -ENOMEM;
	json_object_object_add(o, "disk_mib", json_object_new_int((int)mib));
	txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY);
	return write_file_atomic(path, txt, strlen(txt), true);
}

int image_make_disk(struct engine *e, const char *image, unsigned disk_mib, const struct build_run *run,
		    char **ret_disk, struct image_config *ret, char **ret_error)
{
	_cleanup_free_ char *layout = NULL, *dir = NULL, *disk = NULL, *meta = NULL;
	const char *tag;
	struct image_ref rf;
	unsigned mib = disk_mib;
	struct stat st;
	int r;

	r = image_ref_parse(image, &rf, ret_error);
	if (r < 0)
		return r;
	if (rf.kind == REF_OCI) {
		layout = strdup(rf.path);
		r = layout ? 0 : -ENOMEM;
	} else {
		build_phase(run, "pull");
		r = fetch(e, &rf, run, &layout, ret_error);
	}
	timings_lap(run->tm, "pull");
	tag = rf.kind == REF_OCI ? rf.tag : "img";
	if (r == 0)
		r = layout_read(layout, tag, ret, ret_error);
	if (r < 0)
		goto out;
	blog(run->log_fd, "image: %s is %s", image, ret->digest);
	dir = strjoin(e->store.root, "/images/disks", NULL);
	if (!dir || (r = mkdir_p(dir, 0700)) < 0)
		goto out;
	if (asprintf(&disk, "%s/%s-%u.img", dir, ret->digest + 7, disk_mib) < 0 ||
	    asprintf(&meta, "%s/%s-%u.json", dir, ret->digest + 7, disk_mib) < 0) {
		r = -ENOMEM;
		goto out;
	}
	if (stat(disk, &st) == 0 && access(meta, R_OK) == 0) {
		blog(run->log_fd, "disk: %s (made before for this image)", disk);
		cache_touch(disk);
		cache_touch(meta);
		timings_lap(run->tm, "cached");
	} else {
		/* umoci needs a name: the layout's only image is named by what it is called there */
		_cleanup_free_ char *named = NULL;

		if (!tag) {
			_cleanup_free_ char *ip = strjoin(layout, "/index.json", NULL), *data = NULL;
			_cleanup_json_ json_object *idx = NULL;
			json_object *ms, *ann;
			size_t len;

			if (ip && read_file(ip, BLOB_MAX, &data, &len) == 0 && (idx = json_tokener_parse(data)) &&
			    json_object_object_get_ex(idx, "manifests", &ms) && json_object_array_length(ms) == 1 &&
			    json_object_object_get_ex(json_object_array_get_idx(ms, 0), "annotations", &ann) &&
			    jstr(ann, "org.opencontainers.image.ref.name"))
				named = strdup(jstr(ann, "org.opencontainers.image.ref.name"));
			if (!named) {
				r = error_first(ret_error, -EINVAL, "image: the layout's image has no name; umoci needs one");
				goto out;
			}
		}
		r = unpack_and_mkfs(e, layout, tag ? tag : named, disk_mib, disk, run, &mib, ret_error);
		if (r == 0)
			r = config_save(meta, ret, mib);
		if (r < 0) {
			unlink(disk);
			goto out;
		}
	}
	*ret_disk = TAKE_PTR(disk);
out:
	if (r < 0)
		image_config_clear(ret);
	image_ref_clear(&rf);
	return r;
}

/* ---- the config as JSON (build records, bake.json) ---- */

static json_object *strv_json(char **v)
{
	json_object *a = json_object_new_array();

	for (char **p = v; p && *p; p++)
		json_object_array_add(a, json_object_new_string(*p));
	return a;
}

json_object *image_config_json(const struct image_config *c)
{
	json_object *o = json_object_new_object();

	if (!o)
		return NULL;
	json_object_object_add(o, "digest", json_object_new_string(c->digest));
	json_object_object_add(o, "env", strv_json(c->env));
	json_object_object_add(o, "cmd", strv_json(c->cmd));
	json_object_object_add(o, "entrypoint", strv_json(c->entrypoint));
	if (c->workdir)
		json_object_object_add(o, "workdir", json_object_new_string(c->workdir));
	if (c->user)
		json_object_object_add(o, "user", json_object_new_string(c->user));
	return o;
}

int image_config_from_json(json_object *o, struct image_config *ret)
{
	json_object *v;

	memset(ret, 0, sizeof(*ret));
	snprintf(ret->digest, sizeof(ret->digest), "%s", jget_str(o, "digest") ? jget_str(o, "digest") : "");
	ret->env = strv_of(json_object_object_get_ex(o, "env", &v) ? v : NULL);
	ret->cmd = strv_of(json_object_object_get_ex(o, "cmd", &v) ? v : NULL);
	ret->entrypoint = strv_of(json_object_object_get_ex(o, "entrypoint", &v) ? v : NULL);
	if ((jget_str(o, "workdir") && !(ret->workdir = strdup(jget_str(o, "workdir")))) ||
	    (jget_str(o, "user") && !(ret->user = strdup(jget_str(o, "user")))) || !ret->env || !ret->cmd ||
	    !ret->entrypoint) {
		image_config_clear(ret);
		return -ENOMEM;
	}
	return 0;
}
