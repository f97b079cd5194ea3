/* The VMM drivers compiled in: a template's "backend" names one (driver.h). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "driver.h"

static const struct vmm_ops *const drivers[] = { &qemu_ops, NULL };

const struct vmm_ops *const *vmm_drivers_builtin(void)
{
	return drivers;
}

const struct vmm_ops *vmm_driver_in(const struct vmm_ops *const *list, const char *name)
{
	for (size_t i = 0; name && (list ? list : drivers)[i]; i++)
		if (strcmp((list ? list : drivers)[i]->name, name) == 0)
			return (list ? list : drivers)[i];
	return NULL;
}

const struct vmm_ops *vmm_driver(const char *name)
{
	return vmm_driver_in(NULL, name);
}

const struct vmm_ops *vmm_driver_at(size_t i)
{
	return i < ARRAY_SIZE(drivers) ? drivers[i] : NULL;
}

void vmm_driver_names_in(const struct vmm_ops *const *list, char *buf, size_t len)
{
	size_t n = 0;

	if (len)
		buf[0] = '\0';
	for (size_t i = 0; (list ? list : drivers)[i] && n < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "%s\"%s\"", i ? ", " : "", (list ? list : drivers)[i]->name);
}

static char names[256];

static void names_init(void)
{
	vmm_driver_names_in(NULL, names, sizeof(names));
}

const char *vmm_driver_names(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, names_init);
	return names;
}
