/* Template root disks from OCI images (image.c); engine-internal. */
#pragma once

#include <stdatomic.h>
#include <json-c/json.h>

struct engine;
struct timings;

/* What an image's config says about running it (also a Dockerfile build's result). */
struct image_config {
	char digest[80];  /* "sha256:..." of the manifest (a build's: of its last step) */
	char **env;	  /* KEY=VALUE, NULL-terminated */
	char **cmd;	  /* NULL-terminated, maybe empty */
	char **entrypoint;
	char *workdir;	  /* NULL: / */
	char *user;	  /* NULL: root */
};
void image_config_clear(struct image_config *c);
json_object *image_config_json(const struct image_config *c);
int image_config_from_json(json_object *o, struct image_config *ret);

/* The config's "image" value: "oci:/PATH[:NAME]", "docker-archive:/PATH", "docker://REFERENCE" (imageref.c). */
struct image_ref {
	enum { REF_OCI, REF_ARCHIVE, REF_DOCKER } kind;
	char *path; /* oci, archive: the host path; docker: what follows "docker://" */
	char *tag;  /* oci: the image's name in the layout, or NULL */
};
int image_ref_parse(const char *s, struct image_ref *ret, char **ret_error);
void image_ref_clear(struct image_ref *r);
int image_ref_check(const char *image, char **ret_error);

/*
 * What the parts of one build share: the build log (-1: none), the flag
 * that cancels it (a shutdown), its timings, and who hears of each phase as
 * it begins (the bake: status "phase" and MOUNT/events; may be NULL).
 */
struct build_run {
	int log_fd;
	const atomic_bool *cancel;
	struct timings *tm;
	void (*phase)(void *ctx, const char *phase);
	void *ctx;
};
void build_phase(const struct build_run *run, const char *phase);

/*
 * The root disk of image (fetched, unpacked and made, or found made before
 * in the store), disk_mib its size (0: the image plus room). Phases pull,
 * unpack and mkfs (or cached) go to the run's timings and phase hook.
 * *ret_disk: the disk's path in the store (a clone source); *ret: its config.
 */
int image_make_disk(struct engine *e, const char *image, unsigned disk_mib, const struct build_run *run,
		    char **ret_disk, struct image_config *ret, char **ret_error);

/* A line for a build log (fd < 0: nowhere). */
void blog(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Runs a host tool (argv[0] looked up in PATH; no shell): stdin /dev/null,
 * stdout and stderr to log_fd (or /dev/null), killed with its process
 * group after timeout_ms or once *cancel is set. 0, or -errno with what
 * went wrong in *ret_why.
 */
int tool_run(char *const argv[], int log_fd, unsigned timeout_ms, const atomic_bool *cancel, char **ret_why);
