/*
 * fsops: file system operations read from stdin, one per line, with one
 * result line per operation on stdout. Built static, so one binary runs on
 * the host (through MOUNT/live/NAME) and inside a guest (on its own files):
 * the integration tests run the same table on both sides and compare the
 * outputs line by line (test_liveposix.py, test_livesym.py, test_livecoh.py).
 *
 *   fsops ROOT        chdir(ROOT), then serve stdin until EOF
 *
 * Input: fields separated by spaces; %XX in a field is the byte 0xXX (so a
 * field may hold spaces, '%' or any byte); an empty line or one starting with
 * '#' is skipped (no output). Output: "ok" and the op's results, or
 * "err ENAME" (the errno's name), or "bad WHY" for a malformed line. stdout is
 * flushed after every line, so a driver can go op by op through a pipe.
 *
 * Paths are relative to ROOT unless absolute. Data fields (file contents,
 * link targets) are printed escaped the same way: bytes 0x21-0x7e but '%' as
 * they are, others as %XX; contents as "LEN DATA", DATA "-" when empty and
 * crc32:XXXXXXXX (zlib's CRC-32) when longer than 256 bytes. A handle that
 * does not exist (an open that failed on one side) is EBADF, not a bad line,
 * so the two sides' outputs stay comparable line by line.
 *
 * Inode tokens: stat prints ino=iN instead of the inode number, N counted in
 * the order inodes are first seen by this process, so two names of one inode
 * print one token on both sides, whatever numbers host and guest use. A token
 * is retired when the op that printed it removed the inode's last name (an
 * unlink, rmdir or rename over it, or a close of an unlinked file this process
 * held), so a number the file system reuses gets a new token. `inoreset`
 * forgets them all.
 *
 * Ops (h = a handle "hN" from open or bind-unix; MODE octal; FLAGS names
 * joined by '|', e.g. O_WRONLY|O_CREAT|O_EXCL, or a number):
 *   umask MODE | setuid UID GID GROUPS (comma list or -) | id | chdir P
 *   open P FLAGS [MODE] -> hN | close h | fsync h | lseek h OFF SET|CUR|END -> pos
 *   read P -> LEN DATA | put P DATA [MODE] (O_WRONLY|O_CREAT|O_TRUNC)
 *   pread h OFF LEN -> LEN DATA | pwrite h OFF DATA -> n | write h DATA -> n
 *   pfill h OFF LEN SEED -> n (byte at file offset p: (p * 131 + SEED) & 255)
 *   pcopy h OFF LEN hSRC SRCOFF -> n (LEN bytes of hSRC at SRCOFF)
 *   ftruncate h LEN | fstat h | fchmod h MODE | fchown h UID GID
 *   stat P | lstat P -> TYPE PERM nlink= uid= gid= size= ino= [rdev=MAJ,MIN]
 *   times P [NOFOLLOW] -> atime= mtime= (each "now" if within 30 s of the clock)
 *   chmod P MODE | chown P UID GID | lchown P UID GID | truncate P LEN
 *   utimensat P ATIME MTIME [NOFOLLOW] (each NOW, OMIT or SEC.NSEC) | utimensat P NULL
 *   link A B | rename A B [NOREPLACE|EXCHANGE|0] | unlink P | rmdir P | mkdir P MODE
 *   symlink TARGET P | readlink P -> TARGET | realpath P -> path relative to ROOT
 *     ("/x" under ROOT, else "outside:/abs")
 *   mknod P c|b|p|f|s MODE [MAJ MIN] | mkfifo P MODE
 *   bind-unix P -> hN (bound, listening) | connect-unix P
 *   access P [r][w][x]|f | readdir P -> sorted names | echo ARGS -> ARGS
 *   getxattr P NAME -> LEN DATA | listxattr P -> sorted names (neither follows a final symlink)
 *   sleep MS | inoreset
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/xattr.h>
#include <dirent.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAXF 16
#define MAXH 64
#define BIGBUF (4u << 20)

static char root_real[PATH_MAX * 2];

/* ---- output ---- */

static char *out;
static size_t out_len, out_cap;

static void outf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void outf(const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(out + out_len, out_cap - out_len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < out_cap - out_len)
			break;
		out_cap = out_cap * 2 + (size_t)(n > 0 ? n : 0) + 64;
		out = realloc(out, out_cap);
		if (!out)
			abort();
	}
	out_len += (size_t)n;
}

static void out_esc(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] > 0x20 && p[i] < 0x7f && p[i] != '%')
			outf("%c", p[i]);
		else
			outf("%%%02X", p[i]);
	}
}

static uint32_t crc_table[256];

static uint32_t crc32_of(const unsigned char *p, size_t n)
{
	uint32_t c = 0xffffffffu;

	if (!crc_table[1])
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t v = i;

			for (int k = 0; k < 8; k++)
				v = v & 1 ? 0xedb88320u ^ (v >> 1) : v >> 1;
			crc_table[i] = v;
		}
	for (size_t i = 0; i < n; i++)
		c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

static void out_data(const unsigned char *p, size_t n)
{
	outf(" %zu ", n);
	if (n == 0)
		outf("-");
	else if (n <= 256)
		out_esc(p, n);
	else
		outf("crc32:%08x", crc32_of(p, n));
}

static int fail(int e)
{
	const char *name = strerrorname_np(e);

	out_len = 0;
	if (name)
		outf("err %s", name);
	else
		outf("err E%d", e);
	return -1;
}

static int bad(const char *why)
{
	out_len = 0;
	outf("bad %s", why);
	return -1;
}

/* ---- input fields ---- */

static char *f[MAXF];
static size_t flen[MAXF];
static int nf;

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Splits line in place into f[] (decoding %XX); returns the number of fields or -1. */
static int split(char *line)
{
	char *p = line;

	nf = 0;
	while (*p) {
		char *w;

		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p)
			break;
		if (nf == MAXF)
			return -1;
		f[nf] = w = p;
		while (*p && *p != ' ' && *p != '\t') {
			if (*p == '%' && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
				*w++ = (char)(hexval(p[1]) * 16 + hexval(p[2]));
				p += 3;
			} else {
				*w++ = *p++;
			}
		}
		flen[nf] = (size_t)(w - f[nf]);
		if (*p)
			p++;
		*w = '\0';
		nf++;
	}
	return nf;
}

static int num(const char *s, long long *v)
{
	char *end;

	errno = 0;
	*v = strtoll(s, &end, 0);
	return errno || end == s || *end ? -1 : 0;
}

static const struct {
	const char *name;
	int v;
} flag_names[] = {
	{ "O_RDONLY", O_RDONLY }, { "O_WRONLY", O_WRONLY }, { "O_RDWR", O_RDWR },
	{ "O_CREAT", O_CREAT }, { "O_EXCL", O_EXCL }, { "O_TRUNC", O_TRUNC },
	{ "O_APPEND", O_APPEND }, { "O_NOFOLLOW", O_NOFOLLOW }, { "O_DIRECTORY", O_DIRECTORY },
	{ "O_NONBLOCK", O_NONBLOCK }, { "O_PATH", O_PATH }, { "O_NOCTTY", O_NOCTTY },
	{ "O_SYNC", O_SYNC }, { "O_CLOEXEC", O_CLOEXEC }, { "O_TMPFILE", O_TMPFILE },
	{ "0", 0 },
};

static int parse_flags(char *s, int *flags)
{
	long long v;

	*flags = 0;
	if (num(s, &v) == 0) {
		*flags = (int)v;
		return 0;
	}
	for (char *tok = strtok(s, "|"); tok; tok = strtok(NULL, "|")) {
		size_t i;

		for (i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
			if (strcmp(tok, flag_names[i].name) == 0)
				break;
		if (i == sizeof(flag_names) / sizeof(flag_names[0]))
			return -1;
		*flags |= flag_names[i].v;
	}
	return 0;
}

/* ---- handles and inode tokens ---- */

struct handle {
	int fd;
	dev_t dev;
	ino_t ino;
};
static struct handle h[MAXH];

/* The handle named by s ("hN"), or -1 with errno EBADF (e.g. one an open that failed never made). */
static int get_h(const char *s, int *fd)
{
	long long v;

	if (s[0] != 'h' || num(s + 1, &v) < 0 || v < 0 || v >= MAXH || h[v].fd < 0) {
		errno = EBADF;
		return -1;
	}
	*fd = h[v].fd;
	return (int)v;
}

static int new_h(int fd)
{
	struct stat st;

	for (int i = 0; i < MAXH; i++)
		if (h[i].fd < 0) {
			h[i].fd = fd;
			if (fstat(fd, &st) == 0) {
				h[i].dev = st.st_dev;
				h[i].ino = st.st_ino;
			}
			return i;
		}
	close(fd);
	return -1;
}

struct tok {
	dev_t dev;
	ino_t ino;
	int id;
};
static struct tok *toks;
static size_t ntoks, cap_toks;
static int next_tok = 1;

static int token(dev_t dev, ino_t ino)
{
	for (size_t i = 0; i < ntoks; i++)
		if (toks[i].dev == dev && toks[i].ino == ino)
			return toks[i].id;
	if (ntoks == cap_toks) {
		cap_toks = cap_toks * 2 + 16;
		toks = realloc(toks, cap_toks * sizeof(*toks));
		if (!toks)
			abort();
	}
	toks[ntoks].dev = dev;
	toks[ntoks].ino = ino;
	toks[ntoks].id = next_tok++;
	return toks[ntoks++].id;
}

static int held(dev_t dev, ino_t ino)
{
	for (int i = 0; i < MAXH; i++)
		if (h[i].fd >= 0 && h[i].dev == dev && h[i].ino == ino)
			return 1;
	return 0;
}

static void retire(dev_t dev, ino_t ino)
{
	for (size_t i = 0; i < ntoks; i++)
		if (toks[i].dev == dev && toks[i].ino == ino) {
			toks[i] = toks[--ntoks];
			return;
		}
}

/* The inode at path if removing that name removes its last one (retire it after the op succeeded). */
static int last_name(const char *path, struct stat *st)
{
	if (lstat(path, st) < 0)
		return 0;
	return (S_ISDIR(st->st_mode) || st->st_nlink <= 1) && !held(st->st_dev, st->st_ino);
}

static const char *ftype(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFREG: return "reg";
	case S_IFDIR: return "dir";
	case S_IFLNK: return "lnk";
	case S_IFIFO: return "fifo";
	case S_IFSOCK: return "sock";
	case S_IFCHR: return "chr";
	case S_IFBLK: return "blk";
	default: return "?";
	}
}

static void out_stat(const struct stat *st)
{
	outf(" %s %04o nlink=%lu uid=%u gid=%u size=%lld ino=i%d", ftype(st->st_mode),
	     (unsigned)(st->st_mode & 07777), (unsigned long)st->st_nlink, (unsigned)st->st_uid,
	     (unsigned)st->st_gid, (long long)st->st_size, token(st->st_dev, st->st_ino));
	if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode))
		outf(" rdev=%u,%u", major(st->st_rdev), minor(st->st_rdev));
}

static void out_time(const char *name, const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	if (llabs((long long)(now.tv_sec - t->tv_sec)) < 30)
		outf(" %s=now", name);
	else
		outf(" %s=%lld.%09ld", name, (long long)t->tv_sec, t->tv_nsec);
}

static int parse_time(const char *s, struct timespec *t)
{
	char *end;

	if (strcmp(s, "NOW") == 0) {
		t->tv_sec = 0;
		t->tv_nsec = UTIME_NOW;
		return 0;
	}
	if (strcmp(s, "OMIT") == 0) {
		t->tv_sec = 0;
		t->tv_nsec = UTIME_OMIT;
		return 0;
	}
	errno = 0;
	t->tv_sec = strtoll(s, &end, 10);
	t->tv_nsec = 0;
	if (*end == '.') {
		const char *d = end + 1;
		long ns = 0;
		int k = 0;

		for (; *d >= '0' && *d <= '9' && k < 9; d++, k++)
			ns = ns * 10 + (*d - '0');
		for (; k < 9; k++)
			ns *= 10;
		t->tv_nsec = ns;
		end = (char *)d;
	}
	return errno || *end ? -1 : 0;
}

static unsigned char *buf;

static int strcmp_ptr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_all(int fd, size_t *n)
{
	*n = 0;
	for (;;) {
		ssize_t r = read(fd, buf + *n, BIGBUF - *n);

		if (r < 0)
			return -1;
		if (r == 0 || (*n += (size_t)r) == BIGBUF)
			return 0;
	}
}

/* ---- ops ---- */

#define NEED(k) do { if (nf < (k)) return bad("too few fields"); } while (0)
#define SYS(x) do { if ((x) < 0) return fail(errno); } while (0)

static int op(void)
{
	const char *o = f[0];
	long long a, b, c;
	struct stat st, st2;
	int fd, fd2, hi, flags;

	if (strcmp(o, "echo") == 0) {
		outf("ok");
		for (int i = 1; i < nf; i++) {
			outf(" ");
			out_esc((unsigned char *)f[i], flen[i]);
		}
		return 0;
	}
	if (strcmp(o, "sleep") == 0) {
		NEED(2);
		if (num(f[1], &a) < 0)
			return bad("ms");
		usleep((useconds_t)a * 1000);
		return 0;
	}
	if (strcmp(o, "inoreset") == 0) {
		ntoks = 0;
		return 0;
	}
	if (strcmp(o, "umask") == 0) {
		NEED(2);
		if (num(f[1], &a) < 0)
			return bad("mode");
		umask((mode_t)a);
		return 0;
	}
	if (strcmp(o, "setuid") == 0) {
		gid_t groups[64];
		int ng = 0;

		NEED(4);
		if (num(f[1], &a) < 0 || num(f[2], &b) < 0)
			return bad("ids");
		if (strcmp(f[3], "-") != 0)
			for (char *t = strtok(f[3], ","); t && ng < 64; t = strtok(NULL, ","))
				groups[ng++] = (gid_t)atol(t);
		SYS(setgroups((size_t)ng, groups));
		SYS(setresgid((gid_t)b, (gid_t)b, (gid_t)b));
		SYS(setresuid((uid_t)a, (uid_t)a, (uid_t)a));
		return 0;
	}
	if (strcmp(o, "id") == 0) {
		outf("ok uid=%u gid=%u", (unsigned)geteuid(), (unsigned)getegid());
		return 0;
	}
	if (strcmp(o, "chdir") == 0) {
		NEED(2);
		SYS(chdir(f[1]));
		return 0;
	}
	if (strcmp(o, "open") == 0) {
		NEED(3);
		a = 0644;
		if (parse_flags(f[2], &flags) < 0 || (nf > 3 && num(f[3], &a) < 0))
			return bad("flags or mode");
		SYS(fd = open(f[1], flags, (mode_t)a));
		if ((hi = new_h(fd)) < 0)
			return bad("too many handles");
		outf("ok h%d", hi);
		return 0;
	}
	if (strcmp(o, "close") == 0) {
		NEED(2);
		if ((hi = get_h(f[1], &fd)) < 0)
			return fail(EBADF);
		if (fstat(fd, &st) < 0)
			st.st_nlink = 1;
		h[hi].fd = -1;
		SYS(close(fd));
		if (st.st_nlink == 0 && !held(st.st_dev, st.st_ino))
			retire(st.st_dev, st.st_ino);
		return 0;
	}
	if (strcmp(o, "fsync") == 0) {
		NEED(2);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		SYS(fsync(fd));
		return 0;
	}
	if (strcmp(o, "lseek") == 0) {
		int wh;
		off_t pos;

		NEED(4);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (num(f[2], &a) < 0)
			return bad("args");
		wh = strcmp(f[3], "SET") == 0 ? SEEK_SET : strcmp(f[3], "CUR") == 0 ? SEEK_CUR : SEEK_END;
		SYS(pos = lseek(fd, (off_t)a, wh));
		outf("ok %lld", (long long)pos);
		return 0;
	}
	if (strcmp(o, "read") == 0) {
		size_t n;
		int r;

		NEED(2);
		SYS(fd = open(f[1], O_RDONLY));
		r = read_all(fd, &n);
		close(fd);
		if (r < 0)
			return fail(errno);
		outf("ok");
		out_data(buf, n);
		return 0;
	}
	if (strcmp(o, "put") == 0) {
		ssize_t w;

		NEED(3);
		a = 0644;
		if (nf > 3 && num(f[3], &a) < 0)
			return bad("mode");
		SYS(fd = open(f[1], O_WRONLY | O_CREAT | O_TRUNC, (mode_t)a));
		w = write(fd, f[2], flen[2]);
		if (w < 0) {
			int e = errno;

			close(fd);
			return fail(e);
		}
		SYS(close(fd));
		return 0;
	}
	if (strcmp(o, "pread") == 0) {
		ssize_t r;

		NEED(4);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (num(f[2], &a) < 0 || num(f[3], &b) < 0 || b < 0 || b > BIGBUF)
			return bad("args");
		SYS(r = pread(fd, buf, (size_t)b, (off_t)a));
		outf("ok");
		out_data(buf, (size_t)r);
		return 0;
	}
	if (strcmp(o, "pwrite") == 0 || strcmp(o, "write") == 0) {
		int pos = o[0] == 'p';
		ssize_t r;

		NEED(3 + pos);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (pos && num(f[2], &a) < 0)
			return bad("args");
		if (pos)
			SYS(r = pwrite(fd, f[3], flen[3], (off_t)a));
		else
			SYS(r = write(fd, f[2], flen[2]));
		outf("ok %zd", r);
		return 0;
	}
	if (strcmp(o, "pfill") == 0) {
		ssize_t r;

		NEED(5);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (num(f[2], &a) < 0 || num(f[3], &b) < 0 || b < 0 || b > BIGBUF ||
		    num(f[4], &c) < 0)
			return bad("args");
		for (long long i = 0; i < b; i++)
			buf[i] = (unsigned char)(((a + i) * 131 + c) & 255);
		SYS(r = pwrite(fd, buf, (size_t)b, (off_t)a));
		outf("ok %zd", r);
		return 0;
	}
	if (strcmp(o, "pcopy") == 0) {
		long long so;
		ssize_t r;

		NEED(6);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (num(f[2], &a) < 0 || num(f[3], &b) < 0 || b < 0 || b > BIGBUF ||
		    num(f[5], &so) < 0)
			return bad("args");
		if (get_h(f[4], &fd2) < 0)
			return fail(EBADF);
		SYS(r = pread(fd2, buf, (size_t)b, (off_t)so));
		if (r != b)
			return bad("short source");
		SYS(r = pwrite(fd, buf, (size_t)b, (off_t)a));
		outf("ok %zd", r);
		return 0;
	}
	if (strcmp(o, "ftruncate") == 0) {
		NEED(3);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (num(f[2], &a) < 0)
			return bad("args");
		SYS(ftruncate(fd, (off_t)a));
		return 0;
	}
	if (strcmp(o, "fstat") == 0) {
		NEED(2);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		SYS(fstat(fd, &st));
		outf("ok");
		out_stat(&st);
		return 0;
	}
	if (strcmp(o, "fchmod") == 0) {
		NEED(3);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (num(f[2], &a) < 0)
			return bad("args");
		SYS(fchmod(fd, (mode_t)a));
		return 0;
	}
	if (strcmp(o, "fchown") == 0) {
		NEED(4);
		if (get_h(f[1], &fd) < 0)
			return fail(EBADF);
		if (num(f[2], &a) < 0 || num(f[3], &b) < 0)
			return bad("args");
		SYS(fchown(fd, (uid_t)a, (gid_t)b));
		return 0;
	}
	if (strcmp(o, "stat") == 0 || strcmp(o, "lstat") == 0) {
		NEED(2);
		SYS(o[0] == 's' ? stat(f[1], &st) : lstat(f[1], &st));
		outf("ok");
		out_stat(&st);
		return 0;
	}
	if (strcmp(o, "times") == 0) {
		NEED(2);
		SYS(nf > 2 ? lstat(f[1], &st) : stat(f[1], &st));
		outf("ok");
		out_time("atime", &st.st_atim);
		out_time("mtime", &st.st_mtim);
		return 0;
	}
	if (strcmp(o, "chmod") == 0) {
		NEED(3);
		if (num(f[2], &a) < 0)
			return bad("mode");
		SYS(chmod(f[1], (mode_t)a));
		return 0;
	}
	if (strcmp(o, "chown") == 0 || strcmp(o, "lchown") == 0) {
		NEED(4);
		if (num(f[2], &a) < 0 || num(f[3], &b) < 0)
			return bad("ids");
		SYS(o[0] == 'c' ? chown(f[1], (uid_t)a, (gid_t)b) : lchown(f[1], (uid_t)a, (gid_t)b));
		return 0;
	}
	if (strcmp(o, "truncate") == 0) {
		NEED(3);
		if (num(f[2], &a) < 0)
			return bad("size");
		SYS(truncate(f[1], (off_t)a));
		return 0;
	}
	if (strcmp(o, "utimensat") == 0) {
		struct timespec ts[2];

		NEED(3);
		if (strcmp(f[2], "NULL") == 0) {
			SYS(utimensat(AT_FDCWD, f[1], NULL, 0));
			return 0;
		}
		NEED(4);
		if (parse_time(f[2], &ts[0]) < 0 || parse_time(f[3], &ts[1]) < 0)
			return bad("times");
		SYS(utimensat(AT_FDCWD, f[1], ts, nf > 4 ? AT_SYMLINK_NOFOLLOW : 0));
		return 0;
	}
	if (strcmp(o, "link") == 0) {
		NEED(3);
		SYS(link(f[1], f[2]));
		return 0;
	}
	if (strcmp(o, "rename") == 0) {
		unsigned rf = 0;
		int last;

		NEED(3);
		if (nf > 3)
			rf = strcmp(f[3], "NOREPLACE") == 0 ? RENAME_NOREPLACE :
			     strcmp(f[3], "EXCHANGE") == 0 ? RENAME_EXCHANGE : 0;
		last = !(rf & RENAME_EXCHANGE) && last_name(f[2], &st2);
		if (last && lstat(f[1], &st) == 0 && st.st_dev == st2.st_dev && st.st_ino == st2.st_ino)
			last = 0; /* two names of one inode: a no-op */
		SYS(renameat2(AT_FDCWD, f[1], AT_FDCWD, f[2], rf));
		if (last)
			retire(st2.st_dev, st2.st_ino);
		return 0;
	}
	if (strcmp(o, "unlink") == 0 || strcmp(o, "rmdir") == 0) {
		int last;

		NEED(2);
		last = last_name(f[1], &st);
		SYS(o[0] == 'u' ? unlink(f[1]) : rmdir(f[1]));
		if (last)
			retire(st.st_dev, st.st_ino);
		return 0;
	}
	if (strcmp(o, "mkdir") == 0) {
		NEED(3);
		if (num(f[2], &a) < 0)
			return bad("mode");
		SYS(mkdir(f[1], (mode_t)a));
		return 0;
	}
	if (strcmp(o, "symlink") == 0) {
		NEED(3);
		SYS(symlink(f[1], f[2]));
		return 0;
	}
	if (strcmp(o, "readlink") == 0) {
		char t[PATH_MAX * 2];
		ssize_t n;

		NEED(2);
		SYS(n = readlink(f[1], t, sizeof(t)));
		outf("ok ");
		out_esc((unsigned char *)t, (size_t)n);
		return 0;
	}
	if (strcmp(o, "getxattr") == 0) {
		char v[65536];
		ssize_t n;

		NEED(3);
		SYS(n = lgetxattr(f[1], f[2], v, sizeof(v)));
		outf("ok");
		out_data((unsigned char *)v, (size_t)n);
		return 0;
	}
	if (strcmp(o, "listxattr") == 0) {
		char l[65536], *names[1024];
		ssize_t n;
		size_t k = 0;

		NEED(2);
		SYS(n = llistxattr(f[1], l, sizeof(l)));
		for (char *p = l; p < l + n && k < 1024; p += strlen(p) + 1)
			names[k++] = p;
		qsort(names, k, sizeof(names[0]), strcmp_ptr);
		outf("ok");
		for (size_t i = 0; i < k; i++) {
			outf(" ");
			out_esc((unsigned char *)names[i], strlen(names[i]));
		}
		return 0;
	}
	if (strcmp(o, "realpath") == 0) {
		char *r;
		size_t rl = strlen(root_real);

		NEED(2);
		if (!(r = realpath(f[1], NULL)))
			return fail(errno);
		if (strcmp(root_real, "/") == 0)
			outf("ok %s", r);
		else if (strncmp(r, root_real, rl) == 0 && (r[rl] == '/' || r[rl] == '\0'))
			outf("ok %s", r[rl] ? r + rl : "/");
		else
			outf("ok outside:%s", r);
		free(r);
		return 0;
	}
	if (strcmp(o, "mknod") == 0 || strcmp(o, "mkfifo") == 0) {
		mode_t type = S_IFIFO;
		dev_t dev = 0;

		if (o[2] == 'f') {
			NEED(3);
			if (num(f[2], &a) < 0)
				return bad("mode");
		} else {
			NEED(4);
			switch (f[2][0]) {
			case 'c': type = S_IFCHR; break;
			case 'b': type = S_IFBLK; break;
			case 'p': type = S_IFIFO; break;
			case 'f': type = S_IFREG; break;
			case 's': type = S_IFSOCK; break;
			default: return bad("type");
			}
			if (num(f[3], &a) < 0)
				return bad("mode");
			if (nf > 5) {
				if (num(f[4], &b) < 0 || num(f[5], &c) < 0)
					return bad("dev");
				dev = makedev((unsigned)b, (unsigned)c);
			}
		}
		SYS(mknod(f[1], type | (mode_t)a, dev));
		return 0;
	}
	if (strcmp(o, "bind-unix") == 0 || strcmp(o, "connect-unix") == 0) {
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int r;

		NEED(2);
		if (flen[1] >= sizeof(sa.sun_path))
			return bad("path too long for sun_path");
		memcpy(sa.sun_path, f[1], flen[1]);
		SYS(fd = socket(AF_UNIX, SOCK_STREAM, 0));
		if (o[0] == 'b')
			r = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0 ? -1 : 0;
		else
			r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
		if (r < 0) {
			int e = errno;

			close(fd);
			return fail(e);
		}
		if (o[0] == 'c') {
			close(fd);
			outf("ok");
			return 0;
		}
		if ((hi = new_h(fd)) < 0)
			return bad("too many handles");
		outf("ok h%d", hi);
		return 0;
	}
	if (strcmp(o, "access") == 0) {
		int m = 0;

		NEED(3);
		for (const char *p = f[2]; *p; p++)
			m |= *p == 'r' ? R_OK : *p == 'w' ? W_OK : *p == 'x' ? X_OK : F_OK;
		SYS(faccessat(AT_FDCWD, f[1], m, AT_EACCESS));
		return 0;
	}
	if (strcmp(o, "readdir") == 0) {
		DIR *d;
		struct dirent *e;
		char **names = NULL;
		size_t n = 0, cap = 0;

		NEED(2);
		if (!(d = opendir(f[1])))
			return fail(errno);
		errno = 0;
		while ((e = readdir(d))) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			if (n == cap && !(names = realloc(names, (cap = cap * 2 + 16) * sizeof(*names))))
				abort();
			names[n++] = strdup(e->d_name);
		}
		closedir(d);
		qsort(names, n, sizeof(*names), strcmp_ptr);
		outf("ok");
		for (size_t i = 0; i < n; i++) {
			outf(" ");
			out_esc((unsigned char *)names[i], strlen(names[i]));
			free(names[i]);
		}
		free(names);
		return 0;
	}
	return bad("unknown op");
}

int main(int argc, char **argv)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (argc != 2) {
		fprintf(stderr, "usage: fsops ROOT < ops\n");
		return 2;
	}
	if (chdir(argv[1]) < 0 || !realpath(".", root_real)) {
		perror(argv[1]);
		return 1;
	}
	for (int i = 0; i < MAXH; i++)
		h[i].fd = -1;
	buf = malloc(BIGBUF);
	out = malloc(out_cap = 4096);
	if (!buf || !out)
		return 1;
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	while ((n = getline(&line, &cap, stdin)) >= 0) {
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = '\0';
		if (split(line) <= 0 || f[0][0] == '#')
			continue;
		out_len = 0;
		if (op() == 0 && out_len == 0)
			outf("ok");
		fwrite(out, 1, out_len, stdout);
		fputc('\n', stdout);
		fflush(stdout);
	}
	return 0;
}
