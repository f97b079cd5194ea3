/* Error messages handed to a caller (a char **ret_error, a status "error"). */
#include <stdio.h>

#include "common.h"

static char *vformat(const char *fmt, va_list ap)
{
	char *m = NULL;

	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	return m;
}

void error_set(char **slot, const char *fmt, ...)
{
	va_list ap;

	char *m;

	if (!slot)
		return; /* the caller does not want it */
	va_start(ap, fmt);
	m = vformat(fmt, ap); /* first: an argument may be the old message */
	va_end(ap);
	free(*slot);
	*slot = m;
}

int error_first(char **slot, int r, const char *fmt, ...)
{
	va_list ap;

	if (slot && !*slot) {
		va_start(ap, fmt);
		*slot = vformat(fmt, ap);
		va_end(ap);
	}
	return r;
}
