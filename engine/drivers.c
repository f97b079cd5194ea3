/* The VMM drivers compiled in: a template's "backend" names one (driver.h). */
#include <stdio.h>
#include <string.h>

#include "driver.h"

static const struct vmm_ops *const drivers[] = { &qemu_ops, NULL };

const struct vmm_ops *const *vmm_drivers_builtin(void)
{
	return drivers;
}

const struct vmm_ops *vmm_driver_in(const struct vmm_ops *const *list, const char *name)
{
	if (!list)
		list = drivers;
	for (size_t i = 0; name && list[i]; i++)
		if (strcmp(list[i]->name, name) == 0)
			return list[i];
	return NULL;
}

const struct vmm_ops *vmm_driver(const char *name)
{
	return vmm_driver_in(NULL, name);
}

void vmm_driver_names_in(const struct vmm_ops *const *list, char *buf, size_t len)
{
	size_t n = 0;

	if (!list)
		list = drivers;
	if (len)
		buf[0] = '\0';
	for (size_t i = 0; list[i] && n < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "%s\"%s\"", i ? ", " : "", list[i]->name);
}
