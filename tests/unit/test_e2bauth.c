/* emberfs-e2b's API keys and access tokens (e2b/auth.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth.h"

static char dir[64];

static void put(const char *name, const void *data, size_t len, mode_t mode)
{
	char p[128];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	unlink(p);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	fchmod(fd, mode);
	close(fd);
}

static int load(void)
{
	char k[128], s[128];

	snprintf(k, sizeof(k), "%s/keys", dir);
	snprintf(s, sizeof(s), "%s/secret", dir);
	return auth_load(k, s);
}

static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/e2bauth.XXXXXX");
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int teardown(void **state)
{
	char cmd[128];

	auth_free();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_token_is_hmac_sha256(void **state)
{
	uint8_t secret[32];
	char tok[65];

	for (int i = 0; i < 32; i++)
		secret[i] = (uint8_t)i;
	put("keys", "# a comment\n\ne2b_00ff\n  e2b_abc123  \n", strlen("# a comment\n\ne2b_00ff\n  e2b_abc123  \n"), 0600);
	put("secret", secret, sizeof(secret), 0600);
	assert_int_equal(load(), 0);
	/* python3: hmac.new(bytes(range(32)), b'iabc', hashlib.sha256).hexdigest() */
	auth_sandbox_token("iabc", tok);
	assert_string_equal(tok, "162ad43c0b7bfeedda51429fd33f2dc7febc149fd48c1263d841d06c72c92573");
	assert_true(auth_sandbox_token_ok("iabc", tok));
	tok[63] ^= 1;
	assert_false(auth_sandbox_token_ok("iabc", tok));
	assert_false(auth_sandbox_token_ok("iabd", "162ad43c0b7bfeedda51429fd33f2dc7febc149fd48c1263d841d06c72c92573"));
	assert_false(auth_sandbox_token_ok("iabc", ""));
	assert_false(auth_sandbox_token_ok("iabc", "162ad43c0b7bfeedda51429fd33f2dc7febc149fd48c1263d841d06c72c9257"));
	/* keys: exact matches only */
	assert_true(auth_api_key_ok("e2b_00ff"));
	assert_true(auth_api_key_ok("e2b_abc123"));
	assert_false(auth_api_key_ok("e2b_00f"));
	assert_false(auth_api_key_ok("e2b_00ff0"));
	assert_false(auth_api_key_ok(""));
	assert_false(auth_api_key_ok("# a comment"));
	auth_free();
	assert_false(auth_api_key_ok("e2b_00ff"));
}

static void test_bad_files_refused(void **state)
{
	uint8_t secret[32] = {1};
	char p[128];
	struct stat st;
	char t1[65], t2[65];

	put("secret", secret, sizeof(secret), 0600);
	put("keys", "e2b_00ff\nE2B_00FF\n", strlen("e2b_00ff\nE2B_00FF\n"), 0600); /* upper case: not a key */
	assert_int_equal(load(), -EINVAL);
	assert_false(auth_api_key_ok("e2b_00ff")); /* nothing half-loaded */
	put("keys", "e2b_\n", strlen("e2b_\n"), 0600);
	assert_int_equal(load(), -EINVAL);
	put("keys", "# only a comment\n", strlen("# only a comment\n"), 0600);
	assert_int_equal(load(), -EINVAL);
	put("keys", "e2b_12 e2b_34\n", strlen("e2b_12 e2b_34\n"), 0600);
	assert_int_equal(load(), -EINVAL);
	/* a secret others can read, or of the wrong size */
	put("keys", "e2b_12\n", strlen("e2b_12\n"), 0600);
	put("secret", secret, sizeof(secret), 0644);
	assert_int_equal(load(), -EPERM);
	put("secret", secret, 31, 0600);
	assert_int_equal(load(), -EINVAL);
	/* none: made, 0600, and the same on the next load */
	snprintf(p, sizeof(p), "%s/secret", dir);
	unlink(p);
	assert_int_equal(load(), 0);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(st.st_size, 32);
	auth_sandbox_token("x", t1);
	auth_free();
	assert_int_equal(load(), 0);
	auth_sandbox_token("x", t2);
	assert_string_equal(t1, t2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_token_is_hmac_sha256, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_files_refused, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
