/* emberfs common helpers: cleanup attributes, logging, names, files, digests. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void freep(void *p)
{
	free(*(void **)p);
}
static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}
#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)

/* Hand ownership over: returns the value and clears the variable. */
#define TAKE_PTR(p)                          \
	({                                   \
		__typeof__(p) _tp = (p);     \
		(p) = NULL;                  \
		_tp;                         \
	})
#define TAKE_FD(fd)                          \
	({                                   \
		int _tf = (fd);              \
		(fd) = -1;                   \
		_tf;                         \
	})

/* Logging: the daemon sets the level and sink once; libraries log at debug. */
enum log_level { LOG_ERR_ = 0, LOG_WARN_ = 1, LOG_INFO_ = 2, LOG_DEBUG_ = 3 };
void log_set_level(enum log_level lvl);
/*
 * Where stderr is the journal (systemd's JOURNAL_STREAM names its device and
 * inode), lines carry the syslog priority as "<N>" and no timestamp.
 */
void log_detect_journal(void);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) log_msg(LOG_ERR_, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN_, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO_, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG_, __VA_ARGS__)

/*
 * Error messages for a caller. error_set replaces *slot; error_first keeps a
 * message already there (the first cause wins) and returns r. slot may be
 * NULL (the caller does not want the text).
 */
void error_set(char **slot, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int error_first(char **slot, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Monotonic time in nanoseconds and milliseconds (as double). */
uint64_t now_ns(void);
/* Wall-clock time in milliseconds since the epoch. */
uint64_t realtime_ms(void);
static inline double ns_to_ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

/*
 * Object names (templates, sandboxes) end up in paths, netns names and rule
 * comments: allow [A-Za-z0-9][A-Za-z0-9_-]{0,63}. Returns 0, -EINVAL, or
 * -ENAMETOOLONG (longer than 255 bytes, the kernel's NAME_MAX).
 */
#define NAME_MAX_LEN 64
int name_validate(const char *name);

/* Files. All return 0 or a negative errno. */
/* all of data to fd (write(2) again after a short write or EINTR); 0 or -errno */
int write_all(int fd, const void *data, size_t len);
/* Whether n bytes at p are all zero (a guest page, a chunk of a snapshot file). */
bool mem_is_zero(const void *p, size_t n);
/*
 * Temp file + rename: readers see the old or the new content, never a mix.
 * durable also fsyncs (survives power loss); records that only need to
 * survive a daemon crash skip it, the page cache outlives the process.
 */
int write_file_atomic(const char *path, const void *data, size_t len, bool durable);
int read_file(const char *path, size_t max, char **ret_data, size_t *ret_len);
/* fsync of a file by path: 0 or -errno. */
int fsync_file(const char *path);
int mkdir_p(const char *path, mode_t mode);
/* Lexical normalization of a path taken as absolute: no ".", no "..", no "//"; ".." at "/" stays at "/". */
int path_normalize(const char *path, char **ret);
int rm_rf(const char *path);
char *strjoin(const char *a, ...) __attribute__((sentinel));

/* SHA-256. */
#define SHA256_LEN 32
#define SHA256_HEX_LEN 64
struct sha256_ctx {
	uint32_t h[8];
	uint64_t len;
	uint8_t buf[64];
	size_t used;
};
void sha256_init(struct sha256_ctx *c);
void sha256_update(struct sha256_ctx *c, const void *data, size_t len);
void sha256_final(struct sha256_ctx *c, uint8_t out[SHA256_LEN]);
void sha256_hex(const uint8_t d[SHA256_LEN], char out[SHA256_HEX_LEN + 1]);
int sha256_file(const char *path, char out_hex[SHA256_HEX_LEN + 1]);
int sha256_fd(int fd, char out_hex[SHA256_HEX_LEN + 1]);
/* HMAC-SHA256 (RFC 2104) of msg under key (any length). */
void hmac_sha256(const void *key, size_t klen, const void *msg, size_t mlen, uint8_t out[SHA256_LEN]);

/* CRC-32C (crc32c.c): crc32c_update(0, "123456789", 9) == 0xE3069283. */
uint32_t crc32c_update(uint32_t crc, const void *data, size_t len);
int crc32c_fd(int fd, uint32_t *ret);

/* Base64 (standard alphabet, padded). Decode returns length or -EINVAL. */
char *base64_encode(const void *data, size_t len);
ssize_t base64_decode(const char *in, size_t inlen, uint8_t **ret);

/*
 * pthread_create for the daemon's own threads: they start with every signal
 * blocked, so SIGINT/SIGTERM always land on a FUSE thread, whose interrupted
 * read is what ends the session loop. Returns 0 or a positive error number.
 */
#include <pthread.h>
int thread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg);

/*
 * A metadata key or value as one file name (MOUNT/sandboxes-by/KEY/VALUE):
 * '%', '/', control bytes and DEL as %XX (upper-case hex), "." and ".." as
 * "%2E" and "%2E%2E", the empty string as "%00" (no key or value holds NUL).
 * encode: -ENAMETOOLONG past 255 bytes. decode: only a name encode makes
 * (-EINVAL otherwise); out has room for len + 1 bytes.
 */
int meta_name_encode(const char *s, char out[static 256]);
int meta_name_decode(const char *name, char *out, size_t out_size);
