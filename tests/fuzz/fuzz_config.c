/*
 * libFuzzer: template config JSON (engine/config.c). A config that parses
 * renders and parses again. Linked with config.c and drivers.c (the
 * "backend" check), not with the QEMU driver itself: qemu_ops below is a
 * stand-in with only what config parsing reads of a driver, its name.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "engine.h"

const struct vmm_ops qemu_ops = { .name = "qemu" };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct template_config cfg = { 0 }, again = { 0 };
	char *err = NULL, *text;

	if (template_config_parse((const char *)data, size, &cfg, &err) == 0) {
		text = template_config_render(&cfg);
		if (!text || template_config_parse(text, strlen(text), &again, &err) != 0)
			abort(); /* what we render we must read back */
		free(text);
		template_config_clear(&again);
	}
	free(err);
	template_config_clear(&cfg);
	return 0;
}
