/* Template configuration: strict JSON parsing with clear errors. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define MAX_VCPUS 64
#define MIN_MEM_MIB 32
#define MAX_MEM_MIB (1024 * 1024)
#define MAX_CMDLINE 2048

void template_config_clear(struct template_config *cfg)
{
	free(cfg->kernel);
	free(cfg->initrd);
	free(cfg->rootfs);
	free(cfg->cmdline);
	free(cfg->backend);
	free(cfg->derived_from);
	free(cfg->image);
	free(cfg->context);
	free(cfg->start);
	free(cfg->warm);
	free(cfg->ready_cmd);
	free(cfg->egress);
	memset(cfg, 0, sizeof(*cfg));
}

static int get_path(json_object *o, const char *key, bool required, char **dst, char **ret_error)
{
	json_object *v;
	const char *s;

	if (!json_object_object_get_ex(o, key, &v))
		return required ? error_first(ret_error, -EINVAL, "config: \"%s\" is required", key) : 0;
	if (!json_object_is_type(v, json_type_string))
		return error_first(ret_error, -EINVAL, "config: \"%s\" must be a string", key);
	s = json_object_get_string(v);
	if (s[0] != '/' || strlen(s) >= 4096 || strstr(s, "/../") || strchr(s, ','))
		return error_first(ret_error, -EINVAL, "config: \"%s\" must be an absolute path without \"..\" or \",\"", key);
	*dst = strdup(s);
	return *dst ? 0 : -ENOMEM;
}

static int get_uint(json_object *o, const char *key, unsigned lo, unsigned hi, unsigned *dst, char **ret_error)
{
	json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_int))
		return error_first(ret_error, -EINVAL, "config: \"%s\" must be an integer", key);
	n = json_object_get_int64(v);
	if (n < lo || n > hi)
		return error_first(ret_error, -EINVAL, "config: \"%s\" must be between %u and %u", key, lo, hi);
	*dst = (unsigned)n;
	return 0;
}

static int check_keys(json_object *o, char **ret_error)
{
	static const char *const known[] = { "kernel", "initrd", "rootfs", "cmdline", "vcpus",
					     "mem_mib", "backend", "accel", "net", "ready_tcp_port",
					     "idle_timeout_s", "derived_from", "image", "disk_mib", "context",
					     "start", "ready", "warm", "timeout_s", "on_timeout", "egress" };

	json_object_object_foreach(o, key, val) {
		bool ok = false;

		(void)val;
		for (size_t i = 0; i < ARRAY_SIZE(known); i++)
			ok = ok || strcmp(key, known[i]) == 0;
		if (!ok)
			return error_first(ret_error, -EINVAL, "config: unknown key \"%s\"", key);
	}
	return 0;
}

static int parse_strings(json_object *o, const struct vmm_ops *const *drivers, struct template_config *cfg,
			 char **ret_error)
{
	json_object *v;
	const char *s;
	int r;

	if ((r = get_path(o, "kernel", true, &cfg->kernel, ret_error)) < 0 ||
	    (r = get_path(o, "initrd", false, &cfg->initrd, ret_error)) < 0 ||
	    (r = get_path(o, "rootfs", false, &cfg->rootfs, ret_error)) < 0)
		return r;
	s = "";
	if (json_object_object_get_ex(o, "cmdline", &v)) {
		if (!json_object_is_type(v, json_type_string))
			return error_first(ret_error, -EINVAL, "config: \"cmdline\" must be a string");
		s = json_object_get_string(v);
		if (strlen(s) > MAX_CMDLINE || strpbrk(s, "\n\r\t"))
			return error_first(ret_error, -EINVAL, "config: \"cmdline\" too long or has control characters");
	}
	cfg->cmdline = strdup(s);
	s = TEMPLATE_DEFAULT_BACKEND;
	if (json_object_object_get_ex(o, "backend", &v)) {
		s = json_object_get_string(v);
		if (!json_object_is_type(v, json_type_string) || !vmm_driver_in(drivers, s)) {
			char names[256];

			vmm_driver_names_in(drivers, names, sizeof(names));
			return error_first(ret_error, -EINVAL, "config: \"backend\" must be a driver built in: %s", names);
		}
	}
	cfg->backend = strdup(s);
	if (json_object_object_get_ex(o, "derived_from", &v)) {
		const char *d = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;

		if (!d || !*d || strlen(d) > 256 || strpbrk(d, "\n\r\t"))
			return error_first(ret_error, -EINVAL, "config: \"derived_from\" must be a short string");
		if (!(cfg->derived_from = strdup(d)))
			return -ENOMEM;
	}
	return cfg->cmdline && cfg->backend ? 0 : -ENOMEM;
}

/* A command for the guest's shell: a string without NUL, at most 4 KiB. */
static int get_command(json_object *v, const char *key, char **dst, char **ret_error)
{
	const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;

	if (!s || !*s || strlen(s) > 4096 || strlen(s) != (size_t)json_object_get_string_len(v))
		return error_first(ret_error, -EINVAL, "config: \"%s\" must be a shell command of 1..4096 bytes", key);
	*dst = strdup(s);
	return *dst ? 0 : -ENOMEM;
}

/*
 * "start": a shell line as for "warm", or an argv (an array of 1..256 strings
 * without NUL, 4 KiB in all: for images without a shell), kept as the text
 * a procs/ID/cmd takes ({"argv": [...]}).
 */
static int get_start(json_object *v, struct template_config *cfg, char **ret_error)
{
	_cleanup_json_ json_object *req = NULL;
	size_t n = json_object_is_type(v, json_type_array) ? json_object_array_length(v) : 0, total = 0;

	if (!json_object_is_type(v, json_type_array))
		return get_command(v, "start", &cfg->start, ret_error);
	for (size_t i = 0; i < n; i++) {
		json_object *a = json_object_array_get_idx(v, i);
		const char *s = json_object_is_type(a, json_type_string) ? json_object_get_string(a) : NULL;

		if (!s || strlen(s) != (size_t)json_object_get_string_len(a))
			n = 0;
		else
			total += strlen(s) + 1;
	}
	if (n == 0 || n > 256 || total > 4096)
		return error_first(ret_error, -EINVAL,
				   "config: \"start\" must be a shell command or an argv: 1..256 strings, 4 KiB in all");
	if (!(req = json_object_new_object()))
		return -ENOMEM;
	json_object_object_add(req, "argv", json_object_get(v));
	cfg->start = strdup(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	cfg->start_argv = true;
	return cfg->start ? 0 : -ENOMEM;
}

/*
 * image, disk_mib, context, start, ready and warm: a root disk built from an
 * image, a process started at bake, a command run ahead of any create.
 */
static int parse_build(json_object *o, struct template_config *cfg, char **ret_error)
{
	json_object *v, *tcp, *cmd;
	int r;

	if (json_object_object_get_ex(o, "image", &v)) {
		if (!json_object_is_type(v, json_type_string))
			return error_first(ret_error, -EINVAL, "config: \"image\" must be a string");
		if ((r = image_ref_check(json_object_get_string(v), ret_error)) < 0)
			return r;
		if (cfg->rootfs)
			return error_first(ret_error, -EINVAL, "config: \"image\" and \"rootfs\" exclude each other (the image is the root disk)");
		if (!(cfg->image = strdup(json_object_get_string(v))))
			return -ENOMEM;
	}
	if ((r = get_uint(o, "disk_mib", 64, 1024 * 1024, &cfg->disk_mib, ret_error)) < 0 ||
	    (r = get_path(o, "context", false, &cfg->context, ret_error)) < 0)
		return r;
	if (json_object_object_get_ex(o, "start", &v) && (r = get_start(v, cfg, ret_error)) < 0)
		return r;
	if (json_object_object_get_ex(o, "warm", &v) && (r = get_command(v, "warm", &cfg->warm, ret_error)) < 0)
		return r;
	if (!json_object_object_get_ex(o, "ready", &v))
		return 0;
	if (!cfg->start)
		return error_first(ret_error, -EINVAL, "config: \"ready\" needs \"start\"");
	if (!json_object_is_type(v, json_type_object) || json_object_object_length(v) != 1)
		return error_first(ret_error, -EINVAL, "config: \"ready\" must be {\"tcp\": PORT} or {\"cmd\": COMMAND}");
	if (json_object_object_get_ex(v, "tcp", &tcp)) {
		if (!json_object_is_type(tcp, json_type_int) || json_object_get_int64(tcp) < 1 ||
		    json_object_get_int64(tcp) > 65535)
			return error_first(ret_error, -EINVAL, "config: \"ready\": \"tcp\" must be a port 1..65535");
		cfg->ready_tcp = (unsigned)json_object_get_int64(tcp);
		return 0;
	}
	if (json_object_object_get_ex(v, "cmd", &cmd))
		return get_command(cmd, "ready.cmd", &cfg->ready_cmd, ret_error);
	return error_first(ret_error, -EINVAL, "config: \"ready\" must be {\"tcp\": PORT} or {\"cmd\": COMMAND}");
}

static int parse_accel(json_object *o, struct template_config *cfg, char **ret_error)
{
	json_object *v;
	const char *s;

	cfg->accel = ACCEL_AUTO;
	if (!json_object_object_get_ex(o, "accel", &v))
		return 0;
	s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
	if (strcmp(s, "auto") == 0)
		cfg->accel = ACCEL_AUTO;
	else if (strcmp(s, "kvm") == 0)
		cfg->accel = ACCEL_KVM;
	else if (strcmp(s, "tcg") == 0)
		cfg->accel = ACCEL_TCG;
	else
		return error_first(ret_error, -EINVAL, "config: \"accel\" must be \"auto\", \"kvm\" or \"tcg\"");
	return 0;
}

/* A sandbox's lifetime: docs/interface.md, "Settings". */
static int parse_timeout(json_object *o, struct template_config *cfg, char **ret_error)
{
	json_object *v;
	int r = get_uint(o, "timeout_s", 0, (unsigned)TIMEOUT_MAX_S, &cfg->timeout_s, ret_error);

	if (r < 0 || !json_object_object_get_ex(o, "on_timeout", &v))
		return r;
	if (!json_object_is_type(v, json_type_string) ||
	    (cfg->on_timeout = timeout_action_from_name(json_object_get_string(v))) < 0) {
		cfg->on_timeout = TIMEOUT_ACT_DEFAULT;
		return error_first(ret_error, -EINVAL, "config: \"on_timeout\" must be \"destroy\" or \"hibernate\"");
	}
	return 0;
}

/* "egress": the default outbound policy of the template's sandboxes (netpool/egress.h), kept normalized. */
static int parse_egress(json_object *o, struct template_config *cfg, char **ret_error)
{
	struct egress_policy *pol = NULL;
	_cleanup_free_ char *why = NULL;
	json_object *v;
	int r;

	if (!json_object_object_get_ex(o, "egress", &v))
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return error_first(ret_error, -EINVAL, "config: \"egress\" must be a string (the policy's lines)");
	if (!cfg->net)
		return error_first(ret_error, -EINVAL, "config: \"egress\" needs \"net\": true");
	r = egress_parse(json_object_get_string(v), (size_t)json_object_get_string_len(v), &pol, &why);
	if (r < 0)
		return error_first(ret_error, r, "config: \"egress\": %s", why ? why : "out of memory");
	cfg->egress = egress_render(pol);
	egress_free(pol);
	return cfg->egress ? 0 : -ENOMEM;
}

static int parse_net(json_object *o, struct template_config *cfg, char **ret_error)
{
	json_object *v;

	cfg->net = false;
	if (json_object_object_get_ex(o, "net", &v)) {
		if (!json_object_is_type(v, json_type_boolean))
			return error_first(ret_error, -EINVAL, "config: \"net\" must be true or false");
		cfg->net = json_object_get_boolean(v);
	}
	if (cfg->ready_tcp_port && !cfg->net)
		return error_first(ret_error, -EINVAL, "config: \"ready_tcp_port\" needs \"net\": true");
	return parse_egress(o, cfg, ret_error);
}

int template_config_parse(const char *json, size_t len, struct template_config *cfg, char **ret_error)
{
	return template_config_parse_drivers(json, len, NULL, cfg, ret_error);
}

int template_config_parse_drivers(const char *json, size_t len, const struct vmm_ops *const *drivers,
				  struct template_config *cfg, char **ret_error)
{
	_cleanup_json_ json_object *o = NULL;
	json_tokener *tok;
	enum json_tokener_error jerr;
	int r;

	if (len > 65536)
		return error_first(ret_error, -EINVAL, "config: larger than 64 KiB");
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	o = json_tokener_parse_ex(tok, json, (int)len);
	jerr = json_tokener_get_error(tok);
	if (o && jerr == json_tokener_success && tok->char_offset < (int)len &&
	    strspn(json + tok->char_offset, " \t\r\n") != len - (size_t)tok->char_offset)
		jerr = json_tokener_error_parse_unexpected;
	json_tokener_free(tok);
	if (!o || jerr != json_tokener_success)
		return error_first(ret_error, -EINVAL, "config: malformed JSON (%s)",
			    jerr == json_tokener_continue ? "unexpected end" : json_tokener_error_desc(jerr));
	if (!json_object_is_type(o, json_type_object))
		return error_first(ret_error, -EINVAL, "config: must be a JSON object");
	cfg->vcpus = 1;
	cfg->mem_mib = 256;
	if ((r = check_keys(o, ret_error)) < 0 || (r = parse_strings(o, drivers, cfg, ret_error)) < 0 ||
	    (r = get_uint(o, "vcpus", 1, MAX_VCPUS, &cfg->vcpus, ret_error)) < 0 ||
	    (r = get_uint(o, "mem_mib", MIN_MEM_MIB, MAX_MEM_MIB, &cfg->mem_mib, ret_error)) < 0 ||
	    (r = parse_accel(o, cfg, ret_error)) < 0 ||
	    (r = get_uint(o, "ready_tcp_port", 0, 65535, &cfg->ready_tcp_port, ret_error)) < 0 ||
	    (r = get_uint(o, "idle_timeout_s", 0, 30 * 86400, &cfg->idle_timeout_s, ret_error)) < 0 ||
	    (r = parse_timeout(o, cfg, ret_error)) < 0 || (r = parse_net(o, cfg, ret_error)) < 0 ||
	    (r = parse_build(o, cfg, ret_error)) < 0) {
		template_config_clear(cfg);
		return r;
	}
	return 0;
}

static const char *accel_mode_name(enum accel_mode m)
{
	return m == ACCEL_KVM ? "kvm" : m == ACCEL_TCG ? "tcg" : "auto";
}

char *template_config_render(const struct template_config *cfg)
{
	_cleanup_json_ json_object *o = json_object_new_object();
	char *s;

	json_object_object_add(o, "kernel", json_object_new_string(cfg->kernel));
	if (cfg->initrd)
		json_object_object_add(o, "initrd", json_object_new_string(cfg->initrd));
	if (cfg->rootfs)
		json_object_object_add(o, "rootfs", json_object_new_string(cfg->rootfs));
	json_object_object_add(o, "cmdline", json_object_new_string(cfg->cmdline));
	json_object_object_add(o, "vcpus", json_object_new_int((int)cfg->vcpus));
	json_object_object_add(o, "mem_mib", json_object_new_int((int)cfg->mem_mib));
	json_object_object_add(o, "backend", json_object_new_string(cfg->backend));
	json_object_object_add(o, "accel", json_object_new_string(accel_mode_name(cfg->accel)));
	/* only when set: configs without networking render as before */
	if (cfg->net)
		json_object_object_add(o, "net", json_object_new_boolean(true));
	if (cfg->ready_tcp_port)
		json_object_object_add(o, "ready_tcp_port", json_object_new_int((int)cfg->ready_tcp_port));
	if (cfg->idle_timeout_s)
		json_object_object_add(o, "idle_timeout_s", json_object_new_int((int)cfg->idle_timeout_s));
	if (cfg->timeout_s)
		json_object_object_add(o, "timeout_s", json_object_new_int64(cfg->timeout_s));
	if (cfg->on_timeout != TIMEOUT_ACT_DEFAULT)
		json_object_object_add(o, "on_timeout", json_object_new_string(timeout_action_name(cfg->on_timeout)));
	if (cfg->derived_from)
		json_object_object_add(o, "derived_from", json_object_new_string(cfg->derived_from));
	if (cfg->image)
		json_object_object_add(o, "image", json_object_new_string(cfg->image));
	if (cfg->disk_mib)
		json_object_object_add(o, "disk_mib", json_object_new_int((int)cfg->disk_mib));
	if (cfg->context)
		json_object_object_add(o, "context", json_object_new_string(cfg->context));
	if (cfg->start && cfg->start_argv) {
		json_object *req = json_tokener_parse(cfg->start), *argv;

		if (req && json_object_object_get_ex(req, "argv", &argv))
			json_object_object_add(o, "start", json_object_get(argv));
		json_object_put(req);
	} else if (cfg->start) {
		json_object_object_add(o, "start", json_object_new_string(cfg->start));
	}
	if (cfg->warm)
		json_object_object_add(o, "warm", json_object_new_string(cfg->warm));
	if (cfg->egress)
		json_object_object_add(o, "egress", json_object_new_string(cfg->egress));
	if (cfg->ready_tcp || cfg->ready_cmd) {
		json_object *rd = json_object_new_object();

		if (cfg->ready_tcp)
			json_object_object_add(rd, "tcp", json_object_new_int((int)cfg->ready_tcp));
		else
			json_object_object_add(rd, "cmd", json_object_new_string(cfg->ready_cmd));
		json_object_object_add(o, "ready", rd);
	}
	s = strjoin(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE),
		    "\n", NULL);
	return s;
}

int template_config_copy(const struct template_config *src, struct template_config *dst)
{
	_cleanup_free_ char *s = template_config_render(src);
	/* the source's backend was checked against its engine's drivers when it was parsed: it stays */
	const struct vmm_ops same = { .name = src->backend };
	const struct vmm_ops *const list[] = { &same, NULL };

	if (!s)
		return -ENOMEM;
	memset(dst, 0, sizeof(*dst));
	return template_config_parse_drivers(s, strlen(s), src->backend ? list : NULL, dst, NULL);
}
