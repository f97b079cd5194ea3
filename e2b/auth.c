/* API keys and per-sandbox access tokens (auth.h). */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "auth.h"
#include "common/common.h"

#define SECRET_LEN 32

static void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

static char **keys;
static size_t n_keys;
static uint8_t secret[SECRET_LEN];

/* Compares without an early exit, so the time taken says nothing about where two strings differ. */
static bool same(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = la != lb;

	for (size_t i = 0; i < la && i < lb; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

static bool key_valid(const char *k)
{
	size_t n = strlen(k);

	return n > 4 && n <= 256 && strncmp(k, "e2b_", 4) == 0 && strspn(k + 4, "0123456789abcdef") == n - 4;
}

static int keys_load(const char *path)
{
	_cleanup_(fclosep) FILE *f = fopen(path, "re");
	char *line = NULL;
	size_t cap = 0, lineno = 0;
	ssize_t len;
	int r = 0;

	if (!f) {
		log_error("e2b: --keys %s: %m", path);
		return -errno;
	}
	while ((len = getline(&line, &cap, f)) >= 0) {
		char *s = line, **n;

		lineno++;
		while (len && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' ' || s[len - 1] == '\t'))
			s[--len] = 0;
		s += strspn(s, " \t");
		if (!*s || *s == '#')
			continue;
		if (!key_valid(s)) {
			log_error("e2b: %s:%zu: not an API key: expected e2b_ and lower-case hex digits", path, lineno);
			r = -EINVAL;
			break;
		}
		if (!(n = realloc(keys, (n_keys + 1) * sizeof(*n))) || !(n[n_keys] = strdup(s))) {
			if (n)
				keys = n;
			r = -ENOMEM;
			break;
		}
		keys = n;
		n_keys++;
	}
	free(line);
	if (r == 0 && n_keys == 0) {
		log_error("e2b: %s holds no API key (one e2b_<hex> per line)", path);
		r = -EINVAL;
	}
	return r;
}

static int secret_load(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	ssize_t n;

	if (fd < 0 && errno == ENOENT) {
		uint8_t b[SECRET_LEN];

		if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
			return -EIO;
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0 && errno == EEXIST) /* another instance made it first */
			return secret_load(path);
		if (fd < 0 || write(fd, b, sizeof(b)) != (ssize_t)sizeof(b) || fsync(fd) < 0) {
			log_error("e2b: cannot make the token secret %s: %m", path);
			if (fd >= 0)
				unlink(path);
			return -EIO;
		}
		close(fd);
		fd = open(path, O_RDONLY | O_CLOEXEC);
	}
	if (fd < 0) {
		log_error("e2b: %s: %m", path);
		return -errno;
	}
	if (fstat(fd, &st) < 0 || (st.st_mode & 077)) {
		log_error("e2b: %s: the token secret must not be readable by others (mode 0600)", path);
		return -EPERM;
	}
	n = read(fd, secret, sizeof(secret));
	if (n != (ssize_t)sizeof(secret)) {
		log_error("e2b: %s: expected %d bytes of secret", path, SECRET_LEN);
		return -EINVAL;
	}
	return 0;
}

int auth_load(const char *keys_file, const char *secret_file)
{
	int r = keys_load(keys_file);

	if (r == 0)
		r = secret_load(secret_file);
	if (r < 0)
		auth_free();
	return r;
}

void auth_free(void)
{
	for (size_t i = 0; i < n_keys; i++)
		free(keys[i]);
	free(keys);
	keys = NULL;
	n_keys = 0;
}

bool auth_api_key_ok(const char *key)
{
	bool ok = false;

	for (size_t i = 0; i < n_keys; i++)
		ok |= same(keys[i], key);
	return ok;
}

/* HMAC-SHA256 (RFC 2104) of the id under the secret. */
void auth_sandbox_token(const char *id, char out[65])
{
	uint8_t mac[SHA256_LEN];

	hmac_sha256(secret, SECRET_LEN, id, strlen(id), mac);
	sha256_hex(mac, out);
}

bool auth_sandbox_token_ok(const char *id, const char *token)
{
	char want[65];

	auth_sandbox_token(id, want);
	return same(want, token);
}
