/* Name validation: an allowlist, checked before any path is built. */
#include <string.h>

#include "common.h"

static bool name_char_ok(char c, bool first)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return !first && (c == '_' || c == '-');
}

/*
 * The mount's own entry names: an object never has one, so no directory ever
 * holds an object and an attribute file of the same name, and no flat view
 * can confuse them.
 */
static const char *const reserved[] = {
	"README", "version", "metrics", "events", "live", "templates", "sandboxes", "slots", "config", "identity",
	"status", "ctl", "pool", "stats", "wait", "exec", "console", "timings", "procs", "root", "cmd", "stdin",
	"stdout", "stderr", "signal",
};

int name_validate(const char *name)
{
	size_t n;

	if (!name)
		return -EINVAL;
	n = strnlen(name, 256);
	if (n > 255)
		return -ENAMETOOLONG;
	if (n == 0 || n > NAME_MAX_LEN)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!name_char_ok(name[i], i == 0))
			return -EINVAL;
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
		if (strcmp(name, reserved[i]) == 0)
			return -EINVAL;
	return 0;
}
