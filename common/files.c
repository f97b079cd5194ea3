/* File helpers: atomic writes (temp + rename), bounded reads, mkdir -p, rm -rf. */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

char *strjoin(const char *a, ...)
{
	va_list ap;
	size_t len = 0;
	char *r, *p;

	va_start(ap, a);
	for (const char *s = a; s; s = va_arg(ap, const char *))
		len += strlen(s);
	va_end(ap);
	r = malloc(len + 1);
	if (!r)
		return NULL;
	p = r;
	va_start(ap, a);
	for (const char *s = a; s; s = va_arg(ap, const char *))
		p = stpcpy(p, s);
	va_end(ap);
	return r;
}

bool mem_is_zero(const void *p, size_t n)
{
	static const uint8_t z[4096];
	const uint8_t *b = p;

	for (; n >= sizeof(z); b += sizeof(z), n -= sizeof(z))
		if (memcmp(b, z, sizeof(z)) != 0)
			return false;
	return n == 0 || memcmp(b, z, n) == 0;
}

int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int fsync_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		r = -errno;
	close(fd);
	return r;
}

int write_file_atomic(const char *path, const void *data, size_t len, bool durable)
{
	_cleanup_free_ char *tmp = strjoin(path, ".tmp", NULL);
	_cleanup_close_ int fd = -1;
	int r;

	if (!tmp)
		return -ENOMEM;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	r = write_all(fd, data, len);
	if (r == 0 && durable && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

int read_file(const char *path, size_t max, char **ret_data, size_t *ret_len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	_cleanup_free_ char *buf = NULL;
	size_t len = 0, cap = 4096;

	if (fd < 0)
		return -errno;
	buf = malloc(cap + 1);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		ssize_t n;

		if (len == cap) {
			char *nb;

			if (cap >= max)
				return -EFBIG;
			cap = cap * 2 > max ? max : cap * 2;
			nb = realloc(buf, cap + 1);
			if (!nb)
				return -ENOMEM;
			buf = nb;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	if (ret_len)
		*ret_len = len;
	*ret_data = TAKE_PTR(buf);
	return 0;
}

int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP ? rmdir(path) : unlink(path))
		return errno == ENOENT ? 0 : -errno;
	return 0;
}

/* Removing what is already gone is success: teardown is idempotent. */
int rm_rf(const char *path)
{
	int r = nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);

	if (r == -1)
		return errno == ENOENT ? 0 : -errno;
	return r;
}

int path_normalize(const char *path, char **ret)
{
	size_t out_len = 0;
	char *out = malloc(strlen(path) + 2);
	const char *p = path;

	if (!out)
		return -ENOMEM;
	for (;;) {
		const char *c;
		size_t n;

		while (*p == '/')
			p++;
		c = p;
		n = strcspn(p, "/");
		p += n;
		if (n == 0)
			break;
		if (n == 1 && c[0] == '.')
			continue;
		if (n == 2 && c[0] == '.' && c[1] == '.') {
			while (out_len > 0 && out[--out_len] != '/')
				;
			continue;
		}
		out[out_len++] = '/';
		memcpy(out + out_len, c, n);
		out_len += n;
	}
	if (out_len == 0)
		out[out_len++] = '/';
	out[out_len] = '\0';
	*ret = out;
	return 0;
}
