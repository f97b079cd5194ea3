/* The VMM drivers compiled in: a template's "backend" names one (driver.h). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "driver.h"

static const struct vmm_ops *const drivers[] = { &qemu_ops };
#define N_DRIVERS (sizeof(drivers) / sizeof(drivers[0]))

const struct vmm_ops *vmm_driver(const char *name)
{
	for (size_t i = 0; name && i < N_DRIVERS; i++)
		if (strcmp(drivers[i]->name, name) == 0)
			return drivers[i];
	return NULL;
}

const struct vmm_ops *vmm_driver_at(size_t i)
{
	return i < N_DRIVERS ? drivers[i] : NULL;
}

static char names[256];

static void names_init(void)
{
	for (size_t i = 0, n = 0; i < N_DRIVERS && n < sizeof(names); i++)
		n += (size_t)snprintf(names + n, sizeof(names) - n, "%s\"%s\"", i ? ", " : "", drivers[i]->name);
}

const char *vmm_driver_names(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, names_init);
	return names;
}
