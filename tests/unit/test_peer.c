/*
 * The host-to-host protocol (cluster/peer.h) over loopback: a server on a
 * plain temporary directory and clients for two host names. Runs as root
 * (the EACCES case takes uid 65534); exit 77 otherwise.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "common/common.h"
#include "peer.h"
#include "peer_wire.h"

static char dir[64];
static char addr[64];
static uint8_t secret[32];
static struct peer_server *srv;
static struct peer_client *ca, *cb;
static const struct peer_cred root_cr = {0, 0};

/* ---- the create hook ---- */

static char hook_tpl[64], hook_json[256];
static uid_t hook_uid;

static int hook_create(void *ctx, const char *tpl, const char *json, size_t len, uid_t uid, gid_t gid, char **reason)
{
	snprintf(hook_tpl, sizeof(hook_tpl), "%s", tpl);
	snprintf(hook_json, sizeof(hook_json), "%.*s", (int)len, json);
	hook_uid = uid;
	(*(int *)ctx)++;
	if (strstr(json, "\"full\"")) {
		*reason = strdup("no room for 4 GiB on this host");
		return -ENOSPC;
	}
	return 0;
}

static int hook_calls;
static const struct peer_server_hooks hooks = {.create = hook_create, .ctx = &hook_calls};

static char *at(const char *rel)
{
	static __thread char p[4200];

	snprintf(p, sizeof(p), "%s/%s", dir, rel);
	return p;
}

static void put(const char *rel, const char *data, mode_t mode)
{
	int fd = open(at(rel), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, strlen(data)), (ssize_t)strlen(data));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static int setup(void **state)
{
	if (geteuid() != 0) {
		fprintf(stderr, "test-peer: skipped: needs root (EACCES is checked as uid 65534)\n");
		exit(77);
	}
	snprintf(dir, sizeof(dir), "/tmp/test-peer-XXXXXX");
	assert_non_null(mkdtemp(dir));
	assert_int_equal(chmod(dir, 0755), 0);
	assert_int_equal(getrandom(secret, sizeof(secret), 0), (ssize_t)sizeof(secret));
	assert_int_equal(peer_server_start("127.0.0.1:0", dir, secret, sizeof(secret), &hooks, &srv), 0);
	assert_true(peer_server_port(srv) > 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", peer_server_port(srv));
	assert_int_equal(peer_client_new("host-a", secret, sizeof(secret), &ca), 0);
	assert_int_equal(peer_client_new("host-b", secret, sizeof(secret), &cb), 0);
	return 0;
}

static int teardown(void **state)
{
	peer_client_free(ca);
	peer_client_free(cb);
	peer_server_stop(srv);
	assert_int_equal(rm_rf(dir), 0);
	curl_global_cleanup();
	return 0;
}

/* ---- a raw request, for what the client never sends ---- */

enum { RAW_OK, RAW_WRONG_SECRET, RAW_OLD_TIME, RAW_NO_MAC, RAW_TAMPERED };

struct sink {
	char buf[4096];
	size_t len;
};

static size_t sink_data(char *d, size_t size, size_t n, void *arg)
{
	struct sink *s = arg;
	size_t k = size * n;

	if (k > sizeof(s->buf) - 1 - s->len)
		k = sizeof(s->buf) - 1 - s->len;
	memcpy(s->buf + s->len, d, k);
	s->len += k;
	s->buf[s->len] = 0;
	return size * n;
}

/* A raw request's total timeout (0: none); one that times out returns -1. */
static long raw_timeout_ms;

/* POSTs body to uri, signed as host-a (or spoiled as how says); returns the HTTP status, the answer in *s. */
static long raw(const char *uri, const char *body, size_t len, int how, struct sink *s)
{
	CURL *e = curl_easy_init();
	struct curl_slist *h = NULL;
	char url[256], t[32], mac[65], line[128];
	uint8_t sha[32], other[32] = {1};
	struct sha256_ctx c;
	long status = 0;

	assert_non_null(e);
	snprintf(url, sizeof(url), "http://%s%s", addr, uri);
	snprintf(t, sizeof(t), "%lld", (long long)time(NULL) - (how == RAW_OLD_TIME ? 40 : 0));
	sha256_init(&c);
	sha256_update(&c, body, len);
	sha256_final(&c, sha);
	peer_wire_mac(how == RAW_WRONG_SECRET ? other : secret, sizeof(secret), "host-a", "POST", uri, t, sha, mac);
	h = curl_slist_append(h, "X-Peer-Host: host-a");
	snprintf(line, sizeof(line), "X-Peer-Time: %s", t);
	h = curl_slist_append(h, line);
	if (how != RAW_NO_MAC) {
		snprintf(line, sizeof(line), "X-Peer-Mac: %s", mac);
		h = curl_slist_append(h, line);
	}
	h = curl_slist_append(h, "Expect:");
	s->len = 0;
	s->buf[0] = 0;
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_PROXY, "");
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
	/* tampered: the MAC is of the body, one byte more is sent */
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(len + (how == RAW_TAMPERED)));
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink_data);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, raw_timeout_ms);
	if (curl_easy_perform(e) == CURLE_OK)
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	else
		status = -1;
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	return status;
}

/* ---- tests ---- */

static void test_hmac(void **state)
{
	uint8_t mac[32], longkey[100];
	char hex[65];

	/* RFC 4231 test case 2 */
	hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
	sha256_hex(mac, hex);
	assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
	/* python3: hmac.new(b'k' * 100, b'msg', hashlib.sha256).hexdigest(): a key longer than the block */
	memset(longkey, 'k', sizeof(longkey));
	hmac_sha256(longkey, sizeof(longkey), "msg", 3, mac);
	sha256_hex(mac, hex);
	assert_string_equal(hex, "bd56a1782c2830e8abc6ed866a57a1230661e650b84c62f7ee3accc5fa5af491");
}

static void test_wire(void **state)
{
	static const char *const bad[] = {"..", "../x", "a/..", "/etc", "a//b", "a/", ".", "./a", "a/./b", "/"};
	char big[5000];
	int f = 0;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_int_equal(peer_wire_path_check(bad[i], strlen(bad[i])), -EINVAL);
	assert_int_equal(peer_wire_path_check("a\0b", 3), -EINVAL);
	assert_int_equal(peer_wire_path_check("", 0), 0);
	assert_int_equal(peer_wire_path_check("templates/T/sandboxes/n/status", 30), 0);
	assert_int_equal(peer_wire_path_check("...", 3), 0);
	memset(big, 'a', sizeof(big));
	assert_int_equal(peer_wire_path_check(big, 4096), 0);
	assert_int_equal(peer_wire_path_check(big, 4097), -EINVAL);
	assert_int_equal(peer_wire_flags_decode(peer_wire_flags_encode(O_RDWR | O_CREAT | O_EXCL | O_SYNC), &f), 0);
	assert_int_equal(f, O_RDWR | O_CREAT | O_EXCL | O_SYNC);
	assert_int_equal(peer_wire_flags_decode(3, &f), -EINVAL);
	assert_int_equal(peer_wire_flags_decode(1u << 20, &f), -EINVAL);
	assert_false(peer_wire_host_ok("a\nb"));
	assert_false(peer_wire_host_ok(""));
	assert_true(peer_wire_host_ok("host-1.example"));
}

static void test_stat_readdir(void **state)
{
	struct stat st, want;
	struct peer_dirent *d;
	size_t n;
	bool seen[3] = {0};

	assert_int_equal(mkdir(at("sd"), 0750), 0);
	put("sd/f", "12345", 0640);
	assert_int_equal(symlink("f", at("sd/l")), 0);
	assert_int_equal(peer_stat(ca, addr, &root_cr, "sd/f", &st), 0);
	assert_int_equal(lstat(at("sd/f"), &want), 0);
	assert_int_equal(st.st_mode, want.st_mode);
	assert_int_equal(st.st_size, 5);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(st.st_mtim.tv_sec, want.st_mtim.tv_sec);
	assert_int_equal(st.st_mtim.tv_nsec, want.st_mtim.tv_nsec);
	assert_int_equal(peer_stat(ca, addr, &root_cr, "sd/l", &st), 0);
	assert_true(S_ISLNK(st.st_mode)); /* not followed */
	assert_int_equal(peer_stat(ca, addr, &root_cr, "", &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(peer_readdir(ca, addr, &root_cr, "sd", &d, &n), 0);
	assert_int_equal(n, 2);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(d[i].name, "f") == 0) {
			assert_int_equal(d[i].mode, S_IFREG | 0640);
			seen[0] = true;
		} else if (strcmp(d[i].name, "l") == 0) {
			assert_true(S_ISLNK(d[i].mode));
			seen[1] = true;
		}
	}
	assert_true(seen[0] && seen[1]);
	peer_dirents_free(d, n);
	assert_int_equal(peer_readdir(ca, addr, &root_cr, "sd/f", &d, &n), -ENOTDIR);
}

static void test_read_write(void **state)
{
	size_t size = 1 << 20, chunk = 128 << 10;
	_cleanup_free_ uint8_t *data = malloc(size), *back = malloc(size);
	uint64_t h;
	char *local = NULL;
	size_t local_len = 0;
	ssize_t n;

	assert_non_null(data);
	assert_non_null(back);
	assert_int_equal(getrandom(data, size, 0), (ssize_t)size);
	assert_int_equal(peer_open(ca, addr, &root_cr, "bin", O_WRONLY | O_CREAT | O_TRUNC, 0600, &h), 0);
	/* one large write, then chunks over part of it again */
	assert_int_equal(peer_write(ca, addr, h, 0, data, size), (ssize_t)size);
	for (size_t off = 0; off < size; off += chunk)
		assert_int_equal(peer_write(ca, addr, h, (off_t)off, data + off, chunk), (ssize_t)chunk);
	assert_int_equal(peer_write(ca, addr, h, 0, data, 0), 0);
	assert_int_equal(peer_fsync(ca, addr, h), 0);
	assert_int_equal(peer_release(ca, addr, h), 0);
	assert_int_equal(peer_release(ca, addr, h), -EBADF);
	assert_int_equal(read_file(at("bin"), 2 << 20, &local, &local_len), 0);
	assert_int_equal(local_len, size);
	assert_memory_equal(local, data, size);
	free(local);

	assert_int_equal(peer_open(ca, addr, &root_cr, "bin", O_RDONLY, 0, &h), 0);
	n = peer_read(ca, addr, h, 0, back, size);
	assert_int_equal(n, (ssize_t)size);
	assert_memory_equal(back, data, size);
	/* at an offset, in pieces, and past the end */
	memset(back, 0, size);
	for (size_t off = 0; off < size; off += chunk)
		assert_int_equal(peer_read(ca, addr, h, (off_t)off, back + off, chunk), (ssize_t)chunk);
	assert_memory_equal(back, data, size);
	assert_int_equal(peer_read(ca, addr, h, (off_t)size - 10, back, 100), 10);
	assert_memory_equal(back, data + size - 10, 10);
	assert_int_equal(peer_read(ca, addr, h, (off_t)size, back, 100), 0);
	assert_int_equal(peer_read(ca, addr, h, -1, back, 100), -EINVAL);
	assert_int_equal(peer_read(ca, addr, h, 0, back, 0), 0);
	assert_int_equal(peer_write(ca, addr, h, 0, data, 0), -EBADF); /* opened read-only */
	assert_int_equal(peer_release(ca, addr, h), 0);
}

struct writer {
	const char *path;
	int delay_ms;
	const char *data; /* NULL: hold the FIFO open until released */
	int release_fd;   /* a pipe: readable when the writer may close */
};

static void *writer_run(void *arg)
{
	struct writer *w = arg;
	int fd = open(w->path, O_WRONLY | O_CLOEXEC), k;
	char b;

	if (fd < 0)
		return NULL;
	usleep((useconds_t)w->delay_ms * 1000);
	if (w->data)
		k = (int)write(fd, w->data, strlen(w->data));
	else
		k = (int)read(w->release_fd, &b, 1);
	(void)k;
	close(fd);
	return NULL;
}

struct blocked_read {
	struct peer_client *pc;
	const char *addr;
	uint64_t h;
	ssize_t r;
	uint64_t done_ns;
};

static void *reader_run(void *arg)
{
	struct blocked_read *b = arg;
	char buf[16];

	b->r = peer_read(b->pc, b->addr, b->h, 0, buf, sizeof(buf));
	b->done_ns = now_ns();
	return NULL;
}

static void test_fifo(void **state)
{
	struct writer w = {.path = at("fifo"), .delay_ms = 300, .data = "hello\n"};
	pthread_t t;
	uint64_t h;
	char buf[64];
	uint64_t t0;

	w.path = strdup(w.path);
	assert_int_equal(mkfifo(w.path, 0600), 0);
	assert_int_equal(pthread_create(&t, NULL, writer_run, &w), 0);
	/* opens meet: the server's O_RDONLY and the writer's O_WRONLY */
	assert_int_equal(peer_open(ca, addr, &root_cr, "fifo", O_RDONLY, 0, &h), 0);
	t0 = now_ns();
	/* any offset: a stream cannot seek, read(2) is used */
	assert_int_equal(peer_read(ca, addr, h, 4096, buf, sizeof(buf)), 6);
	assert_true(now_ns() - t0 > 200 * 1000000ull); /* it waited for the writer */
	assert_memory_equal(buf, "hello\n", 6);
	pthread_join(t, NULL);
	assert_int_equal(peer_read(ca, addr, h, 0, buf, sizeof(buf)), 0); /* the writer closed */
	assert_int_equal(peer_release(ca, addr, h), 0);
	assert_int_equal(unlink(w.path), 0);
	free((char *)w.path);
}

static void test_ops(void **state)
{
	struct stat st;
	char *target = NULL;

	assert_int_equal(peer_mkdir(ca, addr, &root_cr, "od", 0701), 0);
	assert_int_equal(stat(at("od"), &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0701 & ~0022 & 07777); /* as mkdir(2): the umask applies */
	assert_int_equal(peer_mkdir(ca, addr, &root_cr, "od", 0700), -EEXIST);
	put("od/f", "0123456789", 0644);
	assert_int_equal(peer_truncate(ca, addr, &root_cr, "od/f", 4), 0);
	assert_int_equal(stat(at("od/f"), &st), 0);
	assert_int_equal(st.st_size, 4);
	assert_int_equal(peer_chmod(ca, addr, &root_cr, "od/f", 0604), 0);
	assert_int_equal(stat(at("od/f"), &st), 0);
	assert_int_equal(st.st_mode & 07777, 0604);
	assert_int_equal(peer_rename(ca, addr, &root_cr, "od/f", "od/g"), 0);
	assert_int_equal(access(at("od/f"), F_OK), -1);
	assert_int_equal(access(at("od/g"), F_OK), 0);
	assert_int_equal(peer_symlink(ca, addr, &root_cr, "g", "od/l"), 0);
	assert_int_equal(peer_readlink(ca, addr, &root_cr, "od/l", &target), 0);
	assert_string_equal(target, "g");
	free(target);
	/* through the link (inside root): truncate follows it */
	assert_int_equal(peer_truncate(ca, addr, &root_cr, "od/l", 1), 0);
	assert_int_equal(stat(at("od/g"), &st), 0);
	assert_int_equal(st.st_size, 1);
	assert_int_equal(peer_rmdir(ca, addr, &root_cr, "od"), -ENOTEMPTY);
	assert_int_equal(peer_unlink(ca, addr, &root_cr, "od/l"), 0);
	assert_int_equal(peer_unlink(ca, addr, &root_cr, "od/g"), 0);
	assert_int_equal(peer_rmdir(ca, addr, &root_cr, "od"), 0);
	assert_int_equal(access(at("od"), F_OK), -1);
	/* no name to act on */
	assert_int_equal(peer_rmdir(ca, addr, &root_cr, ""), -EINVAL);
}

static void test_errno(void **state)
{
	const struct peer_cred nobody = {65534, 65534};
	struct stat st;
	uint64_t h;
	char b[8];

	assert_int_equal(peer_stat(ca, addr, &root_cr, "missing", &st), -ENOENT);
	assert_int_equal(peer_unlink(ca, addr, &root_cr, "missing/x"), -ENOENT);
	assert_int_equal(mkdir(at("ed"), 0755), 0);
	assert_int_equal(peer_open(ca, addr, &root_cr, "ed", O_WRONLY, 0, &h), -EISDIR);
	put("ed/secret", "s", 0600);
	put("ed/open", "o", 0644);
	assert_int_equal(peer_open(ca, addr, &nobody, "ed/secret", O_RDONLY, 0, &h), -EACCES);
	/* group root's file: the daemon's supplementary group 0 lends nobody nothing */
	put("ed/grp", "g", 0640);
	assert_int_equal(peer_open(ca, addr, &nobody, "ed/grp", O_RDONLY, 0, &h), -EACCES);
	assert_int_equal(peer_chmod(ca, addr, &nobody, "ed/secret", 0666), -EPERM);
	assert_int_equal(peer_unlink(ca, addr, &nobody, "ed/open"), -EACCES);
	assert_int_equal(peer_mkdir(ca, addr, &nobody, "ed/x", 0755), -EACCES);
	/* what nobody may do, it does, and as nobody */
	assert_int_equal(peer_open(ca, addr, &nobody, "ed/open", O_RDONLY, 0, &h), 0);
	assert_int_equal(peer_read(ca, addr, h, 0, b, sizeof(b)), 1);
	assert_int_equal(peer_release(ca, addr, h), 0);
	put("ed/w", "0123", 0666);
	assert_int_equal(peer_truncate(ca, addr, &nobody, "ed/w", 1), 0);
	assert_int_equal(peer_truncate(ca, addr, &nobody, "ed/open", 0), -EACCES);
	assert_int_equal(chmod(at("ed"), 0777), 0);
	assert_int_equal(peer_mkdir(ca, addr, &nobody, "ed/x", 0755), 0);
	assert_int_equal(stat(at("ed/x"), &st), 0);
	assert_int_equal(st.st_uid, 65534);
	assert_int_equal(st.st_gid, 65534);
	/* and the server's thread is root again afterwards */
	assert_int_equal(peer_open(ca, addr, &root_cr, "ed/secret", O_RDONLY, 0, &h), 0);
	assert_int_equal(peer_release(ca, addr, h), 0);
	assert_int_equal(rm_rf(at("ed")), 0);
}

static void test_hostile_paths(void **state)
{
	static const char *const bad[] = {"..", "../etc/passwd", "/etc/passwd", "a//b", "a/", ".", "./x", "x/../.."};
	_cleanup_free_ char *big = malloc(5001);
	struct stat st;
	uint64_t h;
	struct sink s;
	long status;
	const char *nul = "{\"uid\":0,\"gid\":0,\"path\":\"ok\\u0000/../../etc\"}";

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		assert_int_equal(peer_stat(ca, addr, &root_cr, bad[i], &st), -EINVAL);
		assert_int_equal(peer_open(ca, addr, &root_cr, bad[i], O_RDONLY, 0, &h), -EINVAL);
		assert_int_equal(peer_rename(ca, addr, &root_cr, "x", bad[i]), -EINVAL);
	}
	assert_non_null(big);
	memset(big, 'a', 5000);
	big[5000] = 0;
	assert_int_equal(peer_stat(ca, addr, &root_cr, big, &st), -EINVAL);
	assert_int_equal(peer_stat(ca, addr, &root_cr, NULL, &st), -EINVAL);
	assert_int_equal(peer_rename(ca, addr, &root_cr, "x", NULL), -EINVAL);
	assert_int_equal(peer_mkdir(ca, addr, &root_cr, big, 0755), -EINVAL);
	/* a NUL inside the path, as only the wire can carry it */
	status = raw("/v1/stat", nul, strlen(nul), RAW_OK, &s);
	assert_int_equal(status, 400);
	assert_non_null(strstr(s.buf, "\"errno\":22"));
	/* a well-formed raw request works (the helper is right) */
	status = raw("/v1/stat", "{\"uid\":0,\"gid\":0,\"path\":\"\"}", 27, RAW_OK, &s);
	assert_int_equal(status, 200);
	/* unknown keys, wrong types, unknown ops */
	assert_int_equal(raw("/v1/stat", "{\"uid\":0,\"gid\":0,\"path\":\"\",\"x\":1}", 33, RAW_OK, &s), 400);
	assert_int_equal(raw("/v1/stat", "{\"uid\":\"0\",\"gid\":0,\"path\":\"\"}", 29, RAW_OK, &s), 400);
	assert_int_equal(raw("/v1/nope", "{}", 2, RAW_OK, &s), 404);
	assert_int_equal(raw("/v1/read/1/2", "", 0, RAW_OK, &s), 400);

	/*
	 * Symlinks leading out of root: readable as links, never followed
	 * (openat2 RESOLVE_BENEATH answers EXDEV).
	 */
	assert_int_equal(symlink("/etc", at("out")), 0);
	assert_int_equal(symlink("..", at("up")), 0);
	assert_int_equal(peer_stat(ca, addr, &root_cr, "out", &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(peer_stat(ca, addr, &root_cr, "out/passwd", &st), -EXDEV);
	assert_int_equal(peer_open(ca, addr, &root_cr, "out/passwd", O_RDONLY, 0, &h), -EXDEV);
	assert_int_equal(peer_open(ca, addr, &root_cr, "out", O_RDONLY, 0, &h), -EXDEV);
	assert_int_equal(peer_truncate(ca, addr, &root_cr, "out", 0), -EXDEV);
	assert_int_equal(peer_chmod(ca, addr, &root_cr, "out", 0777), -EXDEV);
	assert_int_equal(peer_mkdir(ca, addr, &root_cr, "out/peer-escape", 0755), -EXDEV);
	assert_int_equal(peer_open(ca, addr, &root_cr, "up/x", O_WRONLY | O_CREAT, 0644, &h), -EXDEV);
	assert_int_equal(peer_symlink(ca, addr, &root_cr, "/", "up/x"), -EXDEV);
	/* the links themselves go as any name */
	assert_int_equal(peer_unlink(ca, addr, &root_cr, "out"), 0);
	assert_int_equal(peer_unlink(ca, addr, &root_cr, "up"), 0);
	assert_int_equal(access("/etc/peer-escape", F_OK), -1);
}

static void test_bad_auth(void **state)
{
	static const int hows[] = {RAW_WRONG_SECRET, RAW_OLD_TIME, RAW_NO_MAC, RAW_TAMPERED};
	const char *body = "{\"uid\":0,\"gid\":0,\"path\":\"authdir\",\"mode\":493}";
	struct peer_client *bad;
	struct sink s;
	uint8_t other[32] = {0};

	for (size_t i = 0; i < ARRAY_SIZE(hows); i++) {
		assert_int_equal(raw("/v1/mkdir", body, strlen(body), hows[i], &s), 401);
		assert_non_null(strstr(s.buf, "\"errno\":13"));
		assert_int_equal(access(at("authdir"), F_OK), -1);
	}
	assert_int_equal(peer_client_new("host-a", other, sizeof(other), &bad), 0);
	assert_int_equal(peer_mkdir(bad, addr, &root_cr, "authdir", 0755), -EACCES);
	assert_non_null(strstr(peer_error(), "MAC"));
	peer_client_free(bad);
	assert_int_equal(access(at("authdir"), F_OK), -1);
	/* the same, signed right: made */
	assert_int_equal(raw("/v1/mkdir", body, strlen(body), RAW_OK, &s), 200);
	assert_int_equal(rmdir(at("authdir")), 0);
	/* an unreachable peer */
	assert_int_equal(peer_mkdir(ca, addr, &root_cr, "authdir", 0755), 0);
	assert_int_equal(peer_rmdir(ca, "127.0.0.1:1", &root_cr, "authdir"), -EHOSTUNREACH);
	assert_true(strlen(peer_error()) > 0);
	assert_int_equal(peer_rmdir(ca, addr, &root_cr, "authdir"), 0);
}

static void test_forget(void **state)
{
	uint64_t ha, hb;
	char buf[8];

	put("shared", "abc", 0644);
	assert_int_equal(peer_open(ca, addr, &root_cr, "shared", O_RDONLY, 0, &ha), 0);
	assert_int_equal(peer_open(cb, addr, &root_cr, "shared", O_RDONLY, 0, &hb), 0);
	assert_true(ha != hb);
	/* a handle is its host's own */
	assert_int_equal(peer_read(cb, addr, ha, 0, buf, sizeof(buf)), -EBADF);
	assert_int_equal(peer_release(cb, addr, ha), -EBADF);
	peer_server_forget(srv, "host-a");
	assert_int_equal(peer_read(ca, addr, ha, 0, buf, sizeof(buf)), -EBADF);
	assert_int_equal(peer_read(cb, addr, hb, 0, buf, sizeof(buf)), 3);
	assert_int_equal(peer_release(cb, addr, hb), 0);
	peer_server_forget(srv, "nobody-at-all");
}

static void test_handle_limit(void **state)
{
	struct peer_client *cc;
	struct rlimit rl;
	uint64_t h;

	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_max < 5000) {
		fprintf(stderr, "test_handle_limit: skipped: RLIMIT_NOFILE's hard limit is below 5000\n");
		skip();
	}
	rl.rlim_cur = rl.rlim_max;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	put("many", "m", 0644);
	assert_int_equal(peer_client_new("host-c", secret, sizeof(secret), &cc), 0);
	for (int i = 0; i < 4096; i++)
		assert_int_equal(peer_open(cc, addr, &root_cr, "many", O_RDONLY, 0, &h), 0);
	assert_int_equal(peer_open(cc, addr, &root_cr, "many", O_RDONLY, 0, &h), -EMFILE);
	/* a limit per host: another host still opens */
	assert_int_equal(peer_open(cb, addr, &root_cr, "many", O_RDONLY, 0, &h), 0);
	assert_int_equal(peer_release(cb, addr, h), 0);
	peer_server_forget(srv, "host-c");
	assert_int_equal(peer_open(cc, addr, &root_cr, "many", O_RDONLY, 0, &h), 0);
	assert_int_equal(peer_release(cc, addr, h), 0);
	peer_client_free(cc);
}

/* A read waiting on a FIFO ends with EBADF when its handle goes (released, or its host forgotten). */
static void test_forget_blocked(void **state)
{
	int rel[2];
	struct writer w = {.delay_ms = 0, .data = NULL};
	struct blocked_read b = {.pc = ca, .addr = addr};
	pthread_t tw, tr;
	uint64_t t0, h2;

	w.path = strdup(at("fifo3"));
	assert_int_equal(mkfifo(w.path, 0600), 0);
	assert_int_equal(pipe2(rel, O_CLOEXEC), 0);
	w.release_fd = rel[0];
	assert_int_equal(pthread_create(&tw, NULL, writer_run, &w), 0);
	assert_int_equal(peer_open(ca, addr, &root_cr, "fifo3", O_RDONLY, 0, &b.h), 0);
	assert_int_equal(peer_open(ca, addr, &root_cr, "fifo3", O_RDONLY, 0, &h2), 0);
	assert_int_equal(pthread_create(&tr, NULL, reader_run, &b), 0);
	usleep(200 * 1000);
	assert_int_equal(b.done_ns, 0);
	t0 = now_ns();
	peer_server_forget(srv, "host-a");
	pthread_join(tr, NULL);
	assert_int_equal(b.r, -EBADF);
	assert_true(b.done_ns - t0 < 2000 * 1000000ull);
	assert_int_equal(peer_release(ca, addr, h2), -EBADF);
	/* released from another thread while a read waits */
	b.done_ns = 0;
	assert_int_equal(peer_open(ca, addr, &root_cr, "fifo3", O_RDONLY, 0, &b.h), 0);
	assert_int_equal(pthread_create(&tr, NULL, reader_run, &b), 0);
	usleep(200 * 1000);
	assert_int_equal(b.done_ns, 0);
	assert_int_equal(peer_release(ca, addr, b.h), 0);
	pthread_join(tr, NULL);
	assert_int_equal(b.r, -EBADF);
	assert_int_equal(write(rel[1], "x", 1), 1);
	pthread_join(tw, NULL);
	close(rel[0]);
	close(rel[1]);
	unlink(w.path);
	free((char *)w.path);
}

/*
 * A caller that hangs up while its read waits on a FIFO ends that read on
 * the server: nothing is left to steal the bytes that come later.
 */
static void test_hangup(void **state)
{
	struct writer w = {.delay_ms = 0, .data = NULL};
	char uri[96], buf[16];
	struct sink s;
	pthread_t tw;
	uint64_t h;
	int rel[2], fd;

	w.path = strdup(at("fifo4"));
	assert_int_equal(mkfifo(w.path, 0600), 0);
	assert_int_equal(pipe2(rel, O_CLOEXEC), 0);
	w.release_fd = rel[0];
	assert_int_equal(pthread_create(&tw, NULL, writer_run, &w), 0);
	assert_int_equal(peer_open(ca, addr, &root_cr, "fifo4", O_RDONLY, 0, &h), 0);
	snprintf(uri, sizeof(uri), "/v1/read/%llu/0/16", (unsigned long long)h);
	raw_timeout_ms = 300;
	assert_int_equal(raw(uri, "", 0, RAW_OK, &s), -1);
	raw_timeout_ms = 0;
	usleep(200 * 1000);
	/* a second writer: the first one holds the FIFO open without writing */
	fd = open(w.path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "later", 5), 5);
	close(fd);
	assert_int_equal(write(rel[1], "x", 1), 1);
	pthread_join(tw, NULL);
	/* no writer now: the bytes, or end of file had a left-over read taken them */
	assert_int_equal(peer_read(ca, addr, h, 0, buf, sizeof(buf)), 5);
	assert_memory_equal(buf, "later", 5);
	assert_int_equal(peer_release(ca, addr, h), 0);
	close(rel[0]);
	close(rel[1]);
	unlink(w.path);
	free((char *)w.path);
}

static void test_listen(void **state)
{
	static const char *const bad[] = {"nohost", "1.2.3.4", "x:1", "127.0.0.1:99999", ":80", "127.0.0.1:", "[::1:0"};
	struct peer_server *s6;
	struct peer_client *c6;
	struct stat st;
	char a6[64];

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		assert_int_equal(peer_server_start(bad[i], dir, secret, sizeof(secret), NULL, &s6), -EINVAL);
	assert_int_equal(peer_server_start("127.0.0.1:0", "/nonexistent-dir", secret, sizeof(secret), NULL, &s6),
			 -ENOENT);
	assert_int_equal(peer_server_start("127.0.0.1:0", dir, secret, 0, NULL, &s6), -EINVAL);
	assert_int_equal(peer_client_new("bad name", secret, sizeof(secret), &c6), -EINVAL);
	assert_int_equal(peer_stat(ca, "user@127.0.0.1:1", &root_cr, "", &st), -EINVAL);
	assert_int_equal(peer_stat(ca, "127.0.0.1:1/x", &root_cr, "", &st), -EINVAL);
	if (peer_server_start("[::1]:0", dir, secret, sizeof(secret), NULL, &s6) < 0) {
		fprintf(stderr, "test_listen: no IPv6 loopback here: its part skipped\n");
		return;
	}
	snprintf(a6, sizeof(a6), "[::1]:%u", peer_server_port(s6));
	assert_int_equal(peer_stat(ca, a6, &root_cr, "", &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	peer_server_stop(s6);
	assert_int_equal(peer_stat(ca, a6, &root_cr, "", &st), -EHOSTUNREACH);
}

static void test_unknown_handle(void **state)
{
	char buf[8];

	assert_int_equal(peer_read(ca, addr, 12345, 0, buf, sizeof(buf)), -EBADF);
	assert_int_equal(peer_write(ca, addr, 12345, 0, "x", 1), -EBADF);
	assert_int_equal(peer_fsync(ca, addr, 12345), -EBADF);
	assert_int_equal(peer_release(ca, addr, 12345), -EBADF);
}

static void test_create(void **state)
{
	char *reason = NULL;
	const char *ok = "{\"name\":\"n1\",\"memory\":\"1G\"}", *full = "{\"name\":\"n2\",\"memory\":\"full\"}";
	const struct peer_cred cr = {1000, 1000};

	assert_int_equal(peer_create(ca, addr, &cr, "tpl", ok, strlen(ok), &reason), 0);
	assert_null(reason);
	assert_string_equal(hook_tpl, "tpl");
	assert_string_equal(hook_json, ok);
	assert_int_equal(hook_uid, 1000);
	assert_int_equal(peer_create(ca, addr, &cr, "tpl", full, strlen(full), &reason), -ENOSPC);
	assert_string_equal(reason, "no room for 4 GiB on this host");
	free(reason);
	assert_int_equal(peer_create(ca, addr, &cr, "tpl", full, strlen(full), NULL), -ENOSPC);
	assert_int_equal(hook_calls, 3);
	/* a template name that is no name: refused before the hook */
	assert_int_equal(peer_create(ca, addr, &cr, "../x", ok, strlen(ok), NULL), -EINVAL);
	assert_int_equal(hook_calls, 3);
}

static void test_oversized(void **state)
{
	size_t size = (8u << 20) + 1;
	_cleanup_free_ char *big = calloc(1, size);
	uint64_t h;
	struct sink s;
	struct stat st;

	assert_non_null(big);
	assert_int_equal(peer_open(ca, addr, &root_cr, "big", O_WRONLY | O_CREAT, 0644, &h), 0);
	assert_int_equal(peer_write(ca, addr, h, 0, big, size), -E2BIG);
	assert_int_equal(peer_write(ca, addr, h, 0, big, size - 1), (ssize_t)(size - 1));
	assert_int_equal(peer_release(ca, addr, h), 0);
	/* unauthenticated, it is the MAC that is refused first */
	assert_int_equal(raw("/v1/write/1/0", big, size, RAW_WRONG_SECRET, &s), 401);
	assert_int_equal(raw("/v1/write/1/0", big, size, RAW_OK, &s), 413);
	assert_int_equal(stat(at("big"), &st), 0);
	assert_int_equal(st.st_size, (off_t)size - 1);
	assert_int_equal(unlink(at("big")), 0);
}

static void test_stop_blocked(void **state)
{
	struct peer_server *s2;
	char a2[64];
	int rel[2];
	struct writer w = {.delay_ms = 0, .data = NULL};
	struct blocked_read b = {.pc = ca, .addr = a2};
	pthread_t tw, tr;
	uint64_t t0;

	w.path = strdup(at("fifo2"));
	assert_int_equal(mkfifo(w.path, 0600), 0);
	assert_int_equal(pipe2(rel, O_CLOEXEC), 0);
	w.release_fd = rel[0];
	assert_int_equal(peer_server_start("127.0.0.1:0", dir, secret, sizeof(secret), NULL, &s2), 0);
	snprintf(a2, sizeof(a2), "127.0.0.1:%u", peer_server_port(s2));
	assert_int_equal(pthread_create(&tw, NULL, writer_run, &w), 0);
	assert_int_equal(peer_open(ca, a2, &root_cr, "fifo2", O_RDONLY, 0, &b.h), 0);
	assert_int_equal(pthread_create(&tr, NULL, reader_run, &b), 0);
	usleep(300 * 1000);
	assert_int_equal(b.done_ns, 0); /* still blocked */
	t0 = now_ns();
	peer_server_stop(s2);
	assert_true(now_ns() - t0 < 2000 * 1000000ull);
	pthread_join(tr, NULL);
	assert_true(b.r < 0);
	assert_true(b.done_ns - t0 < 2000 * 1000000ull);
	assert_int_equal(write(rel[1], "x", 1), 1);
	pthread_join(tw, NULL);
	close(rel[0]);
	close(rel[1]);
	unlink(w.path);
	free((char *)w.path);
}

struct worker {
	int i;
	int bad;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	struct peer_client *pc = w->i % 2 ? ca : cb;
	char name[32], want[32], buf[64];
	struct stat st;
	uint64_t h;

	snprintf(name, sizeof(name), "cc%d", w->i);
	snprintf(want, sizeof(want), "worker %d", w->i);
	for (int k = 0; k < 100; k++) {
		ssize_t n;

		if (peer_stat(pc, addr, &root_cr, name, &st) != 0 || st.st_size != (off_t)strlen(want) ||
		    peer_open(pc, addr, &root_cr, name, O_RDONLY, 0, &h) != 0) {
			w->bad++;
			continue;
		}
		n = peer_read(pc, addr, h, 0, buf, sizeof(buf));
		if (n != (ssize_t)strlen(want) || memcmp(buf, want, (size_t)n) != 0)
			w->bad++;
		if (peer_release(pc, addr, h) != 0)
			w->bad++;
	}
	return NULL;
}

/* Eight threads over two clients at once: the pools hand each request its own connection. */
static void test_concurrent(void **state)
{
	struct worker w[8];
	pthread_t t[8];
	char name[32], data[32];

	for (int i = 0; i < 8; i++) {
		snprintf(name, sizeof(name), "cc%d", i);
		snprintf(data, sizeof(data), "worker %d", i);
		put(name, data, 0644);
		w[i] = (struct worker){.i = i};
		assert_int_equal(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
	}
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(w[i].bad, 0);
		snprintf(name, sizeof(name), "cc%d", i);
		assert_int_equal(unlink(at(name)), 0);
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void test_latency(void **state)
{
	enum { N = 1000 };
	static uint64_t t[N];
	char buf[4096];
	struct stat st;
	uint64_t h;
	double p50_stat, p50_read;

	put("lat", "", 0644);
	assert_int_equal(truncate(at("lat"), 1 << 20), 0);
	assert_int_equal(peer_open(ca, addr, &root_cr, "lat", O_RDONLY, 0, &h), 0);
	for (int i = 0; i < N; i++) {
		uint64_t t0 = now_ns();

		assert_int_equal(peer_stat(ca, addr, &root_cr, "lat", &st), 0);
		t[i] = now_ns() - t0;
	}
	qsort(t, N, sizeof(t[0]), cmp_u64);
	p50_stat = ns_to_ms(t[N / 2]);
	for (int i = 0; i < N; i++) {
		uint64_t t0 = now_ns();

		assert_int_equal(peer_read(ca, addr, h, (off_t)(i % 256) * 4096, buf, sizeof(buf)), 4096);
		t[i] = now_ns() - t0;
	}
	qsort(t, N, sizeof(t[0]), cmp_u64);
	p50_read = ns_to_ms(t[N / 2]);
	assert_int_equal(peer_release(ca, addr, h), 0);
	printf("peer round trip over loopback (%d calls): stat p50 %.3f ms, 4 KiB read p50 %.3f ms\n", N, p50_stat,
	       p50_read);
	/* generous: valgrind runs this too */
	assert_true(p50_stat < 50 && p50_read < 50);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hmac),	       cmocka_unit_test(test_wire),
		cmocka_unit_test(test_stat_readdir),   cmocka_unit_test(test_read_write),
		cmocka_unit_test(test_fifo),	       cmocka_unit_test(test_ops),
		cmocka_unit_test(test_errno),	       cmocka_unit_test(test_hostile_paths),
		cmocka_unit_test(test_bad_auth),       cmocka_unit_test(test_forget),
		cmocka_unit_test(test_handle_limit),
		cmocka_unit_test(test_forget_blocked), cmocka_unit_test(test_hangup),
		cmocka_unit_test(test_listen),
		cmocka_unit_test(test_unknown_handle), cmocka_unit_test(test_create),
		cmocka_unit_test(test_oversized),      cmocka_unit_test(test_stop_blocked),
		cmocka_unit_test(test_concurrent),     cmocka_unit_test(test_latency),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
