/*
 * Guest symlinks shown through live/NAME (fs/linkpath.c): every shape a
 * hostile guest can store comes out as a target that, followed from the
 * link's directory, stays inside live/NAME; the guest's own resolution of
 * ".." is used where it has one.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common.h"
#include "linkpath.h"

static void check_norm(const char *in, const char *want)
{
	char *out = NULL;

	assert_int_equal(path_normalize(in, &out), 0);
	assert_string_equal(out, want);
	free(out);
}

static void normalize(void **state)
{
	(void)state;
	check_norm("/", "/");
	check_norm("//", "/");
	check_norm("/..", "/");
	check_norm("/../../..", "/");
	check_norm("/a/./b//c/", "/a/b/c");
	check_norm("/a/b/../../../c", "/c");
	check_norm("/a/../..", "/");
	check_norm("/...", "/...");
	check_norm("/a/..b/.c", "/a/..b/.c");
}

static void check_rel(const char *from, const char *to, const char *want)
{
	char *out = NULL;

	assert_int_equal(linkpath_relative(from, to, &out), 0);
	assert_string_equal(out, want);
	free(out);
}

static void relative(void **state)
{
	(void)state;
	check_rel("/", "/", ".");
	check_rel("/tmp", "/", "..");
	check_rel("/", "/etc/passwd", "etc/passwd");
	check_rel("/a/b", "/a/c/d", "../c/d");
	check_rel("/a/b", "/a/b", ".");
	check_rel("/a/b", "/a/b/c", "c");
	check_rel("/a/b/c", "/x", "../../../x");
	check_rel("/ab", "/a", "../a");
}

/* A guest in which /tmp/d is a link to "/" and /tmp/up a link to "..": its realpath. */
static int fake_guest(void *ctx, const char *path, char **ret)
{
	char *norm = NULL;
	int r;

	(void)ctx;
	if (strstr(path, "missing"))
		return -ENOENT;
	if (strncmp(path, "/tmp/d/", 7) == 0) { /* through the link to / : what follows is from the root */
		char *p;

		if (asprintf(&p, "/%s", path + 7) < 0)
			return -ENOMEM;
		r = path_normalize(p, &norm);
		free(p);
	} else {
		r = path_normalize(path, &norm);
	}
	if (r == 0)
		*ret = norm;
	return r;
}

static void show(const char *link, const char *target, const char *want)
{
	char *out = NULL;

	assert_int_equal(linkpath_show(link, target, fake_guest, NULL, &out), 0);
	assert_string_equal(out, want);
	assert_int_equal(linkpath_contained(link, out), 0);
	free(out);
}

static char long_target[5000];

static void shapes(void **state)
{
	char *out = NULL, *t;

	(void)state;
	/* stored as given: only names going down */
	show("/tmp/l", "x", "x");
	show("/tmp/l", "a/b/c", "a/b/c");
	show("/tmp/l", "./x", "./x");
	/* absolute: relative to the link's directory */
	show("/tmp/l", "/etc/passwd", "../etc/passwd");
	show("/etc/mtab", "/proc/self/mounts", "../proc/self/mounts");
	show("/l", "/etc/passwd", "etc/passwd");
	show("/tmp/l", "/", "..");
	show("/l", "/", ".");
	show("/tmp/l", "//etc//passwd/", "../etc/passwd");
	/* deep "..": never above the guest's root */
	show("/tmp/rel", "../../../../../../../../../../tmp/hostsecret", "hostsecret");
	show("/tmp/rel", "../../../../../../../../../../etc/passwd", "../etc/passwd");
	show("/tmp/l", "..", "..");
	show("/l", "..", ".");
	show("/l", "../..", ".");
	show("/tmp/l", "a/../../..", "..");
	show("/tmp/l", "./..", "..");
	show("/tmp/l", "/a/../../b", "../b");
	/* through a linked directory: resolved the guest's way */
	show("/tmp/x", "d/../../../../tmp/canary", "canary");
	show("/tmp/x", "d/etc/../../../../etc/shadow", "../etc/shadow");
	/* the guest cannot resolve it: lexically */
	show("/tmp/x", "missing/../../..", "..");
	show("/a/b/c/x", "missing/../../../../../../y", "../../../y");
	/* very long: a 4000-byte name run shown within the limit, one that grows past it refused */
	t = long_target; /* static: GCC's -Warray-bounds under ASan flags a malloc'd one */
	memset(t, 'a', 4000);
	strcpy(t + 4000, "/..");
	show("/l", t, ".");
	memset(t, 'a', 4090);
	t[0] = '/';
	t[4090] = '\0';
	assert_int_equal(linkpath_show("/1/2/3/4/5/l", t, fake_guest, NULL, &out), -ENAMETOOLONG);
}

static void contained(void **state)
{
	(void)state;
	assert_int_equal(linkpath_contained("/a/b/l", "../../x"), 0);
	assert_int_equal(linkpath_contained("/a/b/l", "../../../x"), -EINVAL);
	assert_int_equal(linkpath_contained("/l", ".."), -EINVAL);
	assert_int_equal(linkpath_contained("/a/l", "x/../.."), -EINVAL);
	assert_int_equal(linkpath_contained("/a/l", "/etc"), -EINVAL);
	assert_int_equal(linkpath_contained("/a/l", "x/.."), -EINVAL);
	assert_int_equal(linkpath_contained("/a/l", "."), 0);
}

/* Whatever a resolver (a hostile guest) answers, the result stays contained. */
static int liar(void *ctx, const char *path, char **ret)
{
	(void)path;
	*ret = strdup((const char *)ctx);
	return *ret ? 0 : -ENOMEM;
}

static void hostile_resolver(void **state)
{
	static const char *const answers[] = { "/../../..", "../../etc", "/a/../../../b", "//..//..", "",
					       "/x/./../../y", "relative" };
	char *out;

	(void)state;
	for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
		out = NULL;
		assert_int_equal(linkpath_show("/tmp/l", "../..", liar, (void *)answers[i], &out), 0);
		assert_int_equal(linkpath_contained("/tmp/l", out), 0);
		free(out);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(normalize),	    cmocka_unit_test(relative),		cmocka_unit_test(shapes),
		cmocka_unit_test(contained),	    cmocka_unit_test(hostile_resolver),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
