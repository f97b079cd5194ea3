/*
 * The pure parts of emberfs-e2b's filesystem service (e2b/fsutil.c): paths
 * resolved as envd resolves them but never above the guest's /, envd's
 * permission strings and EntryInfo JSON, the Basic user, the guest's users
 * and groups read with fgetpwent/fgetgrent.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/common.h"
#include "fsutil.h"

static void check_path(const char *in, const char *home, const char *want)
{
	char *out = NULL;

	assert_int_equal(e2bfs_guest_path(in, home, &out), 0);
	assert_string_equal(out, want);
	free(out);
}

static void guest_path(void **state)
{
	char *out = NULL;

	(void)state;
	check_path("", "/home/user", "/home/user");
	check_path("~", "/home/user", "/home/user");
	check_path("~/", "/home/user", "/home/user");
	check_path("~/a/b", "/home/user", "/home/user/a/b");
	check_path("a.txt", "/home/user", "/home/user/a.txt");
	check_path("./a//b/", "/home/user", "/home/user/a/b");
	check_path("../other", "/home/user", "/home/other");
	check_path("../../../../etc/passwd", "/home/user", "/etc/passwd");
	check_path("/", "/home/user", "/");
	check_path("//tmp//x", "/home/user", "/tmp/x");
	check_path("/../../x", "/home/user", "/x");
	check_path("/a/../..", "/root", "/");
	check_path("x", "", "/x");
	check_path("x", "/", "/x");
	check_path("/a/~b", "/home/user", "/a/~b");
	(void)out;
}

static void guest_path_other_home(void **state)
{
	char *out = NULL;

	(void)state;
	assert_int_equal(e2bfs_guest_path("~bob/x", "/home/user", &out), -EINVAL);
	assert_null(out);
}

static void base(void **state)
{
	(void)state;
	assert_string_equal(e2bfs_base("/"), "/");
	assert_string_equal(e2bfs_base("/a"), "a");
	assert_string_equal(e2bfs_base("/a/b.txt"), "b.txt");
}

static void check_mode(mode_t m, const char *want)
{
	char out[24];

	e2bfs_mode_string(m, out);
	assert_string_equal(out, want);
}

static void mode_string(void **state)
{
	(void)state;
	/* what Go's os.FileMode.String() gives for the same stat */
	check_mode(S_IFREG | 0644, "-rw-r--r--");
	check_mode(S_IFREG | 0, "----------");
	check_mode(S_IFDIR | 0755, "drwxr-xr-x");
	check_mode(S_IFLNK | 0777, "Lrwxrwxrwx");
	check_mode(S_IFDIR | S_ISVTX | 0777, "dtrwxrwxrwx");
	check_mode(S_IFREG | S_ISUID | 0755, "urwxr-xr-x");
	check_mode(S_IFREG | S_ISGID | 0755, "grwxr-xr-x");
	check_mode(S_IFCHR | 0666, "Dcrw-rw-rw-");
	check_mode(S_IFBLK | 0660, "Drw-rw----");
	check_mode(S_IFIFO | 0644, "prw-r--r--");
	check_mode(S_IFSOCK | 0755, "Srwxr-xr-x");
}

static void check_time(time_t s, long ns, const char *want)
{
	struct timespec ts = {.tv_sec = s, .tv_nsec = ns};
	char out[48];

	e2bfs_rfc3339(&ts, out);
	assert_string_equal(out, want);
}

static void rfc3339(void **state)
{
	(void)state;
	check_time(0, 0, "1970-01-01T00:00:00Z");
	check_time(1700000000, 0, "2023-11-14T22:13:20Z");
	check_time(1700000000, 500000000, "2023-11-14T22:13:20.500Z");
	check_time(1700000000, 123456000, "2023-11-14T22:13:20.123456Z");
	check_time(1700000000, 123456789, "2023-11-14T22:13:20.123456789Z");
	check_time(1700000000, 1, "2023-11-14T22:13:20.000000001Z");
}

static void entry_json(void **state)
{
	struct stat st = {.st_mode = S_IFREG | 0644, .st_size = 5000000000LL, .st_mtim = {1700000000, 500000000}};
	struct e2bfs_entry e = {.name = "a.bin", .path = "/home/user/a.bin", .st = &st, .owner = "user", .group = "user"};
	json_object *o;

	(void)state;
	o = e2bfs_entry_json(&e);
	assert_non_null(o);
	assert_string_equal(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
			    "{\"name\":\"a.bin\",\"type\":\"FILE_TYPE_FILE\",\"path\":\"/home/user/a.bin\","
			    "\"size\":\"5000000000\",\"mode\":420,\"permissions\":\"-rw-r--r--\",\"owner\":\"user\","
			    "\"group\":\"user\",\"modifiedTime\":\"2023-11-14T22:13:20.500Z\"}");
	json_object_put(o);
}

static void entry_json_symlink(void **state)
{
	struct stat lst = {.st_mode = S_IFLNK | 0777, .st_size = 4, .st_mtim = {1700000000, 0}};
	struct stat tst = {.st_mode = S_IFDIR | 0750};
	struct e2bfs_entry e = {.name = "l", .path = "/l", .st = &lst, .target = &tst, .symlink_target = "/data",
				.owner = "root", .group = "0"};
	json_object *o, *v;

	(void)state;
	/* a link to a directory: the directory's type and bits, the link's own permissions string and size */
	o = e2bfs_entry_json(&e);
	assert_true(json_object_object_get_ex(o, "type", &v));
	assert_string_equal(json_object_get_string(v), "FILE_TYPE_DIRECTORY");
	assert_true(json_object_object_get_ex(o, "mode", &v));
	assert_int_equal(json_object_get_int(v), 0750);
	assert_true(json_object_object_get_ex(o, "permissions", &v));
	assert_string_equal(json_object_get_string(v), "Lrwxrwxrwx");
	assert_true(json_object_object_get_ex(o, "size", &v));
	assert_string_equal(json_object_get_string(v), "4");
	assert_true(json_object_object_get_ex(o, "symlinkTarget", &v));
	assert_string_equal(json_object_get_string(v), "/data");
	json_object_put(o);
	/* dangling: unspecified (files.list drops it), mode 0 */
	e.target = NULL;
	e.symlink_target = "/l";
	o = e2bfs_entry_json(&e);
	assert_true(json_object_object_get_ex(o, "type", &v));
	assert_string_equal(json_object_get_string(v), "FILE_TYPE_UNSPECIFIED");
	assert_true(json_object_object_get_ex(o, "mode", &v));
	assert_int_equal(json_object_get_int(v), 0);
	json_object_put(o);
	/* not a symlink: no symlinkTarget */
	e.st = &tst;
	e.symlink_target = NULL;
	o = e2bfs_entry_json(&e);
	assert_false(json_object_object_get_ex(o, "symlinkTarget", &v));
	json_object_put(o);
}

static void check_basic(const char *header, int want, const char *user)
{
	char *out = NULL;

	assert_int_equal(e2bfs_basic_user(header, &out), want);
	if (user)
		assert_string_equal(out, user);
	else
		assert_null(out);
	free(out);
}

static void basic_user(void **state)
{
	(void)state;
	check_basic(NULL, -ENOENT, NULL);
	check_basic("Basic dXNlcjo=", 0, "user");	  /* "user:" as the SDK sends it */
	check_basic("basic  cm9vdDpwdw==", 0, "root");	  /* "root:pw" */
	check_basic("Basic Og==", 0, "");		  /* ":" */
	check_basic("Bearer dXNlcjo=", -EINVAL, NULL);
	check_basic("Basic dXNlcg==", -EINVAL, NULL);	  /* "user": no colon */
	check_basic("Basic !!!!", -EINVAL, NULL);
	check_basic("Basicx", -EINVAL, NULL);
}

static const char PASSWD[] = "root:x:0:0:root:/root:/bin/bash\n"
			     "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
			     "user:x:1000:1000::/home/user:/bin/bash\n"
			     "1234:x:4321:4321::/home/n:/bin/sh\n";
static const char GROUP[] = "root:x:0:\n"
			    "adm:x:4:user,daemon\n"
			    "sudo:x:27:user\n"
			    "user:x:1000:\n"
			    "other:x:2000:daemon\n";

static void ids(void **state)
{
	FILE *pw = fmemopen((void *)PASSWD, sizeof(PASSWD) - 1, "r");
	FILE *gr = fmemopen((void *)GROUP, sizeof(GROUP) - 1, "r");
	struct e2bfs_ids db;
	const struct e2bfs_user *u;
	char name[64];
	gid_t groups[8];
	size_t n;

	(void)state;
	assert_int_equal(e2bfs_ids_load(&db, pw, gr), 0);
	fclose(pw);
	fclose(gr);
	assert_int_equal(db.n_users, 4);
	assert_int_equal(db.n_groups, 5);

	u = e2bfs_ids_user(&db, "user");
	assert_non_null(u);
	assert_int_equal(u->uid, 1000);
	assert_int_equal(u->gid, 1000);
	assert_string_equal(u->home, "/home/user");
	n = e2bfs_ids_groups(&db, u, groups, ARRAY_SIZE(groups));
	assert_int_equal(n, 3);
	assert_int_equal(groups[0], 1000);
	assert_int_equal(groups[1], 4);
	assert_int_equal(groups[2], 27);
	assert_int_equal(e2bfs_ids_groups(&db, u, groups, 1), 1);

	/* a name first, then a number as a uid */
	u = e2bfs_ids_user(&db, "1234");
	assert_non_null(u);
	assert_int_equal(u->uid, 4321);
	u = e2bfs_ids_user(&db, "1000");
	assert_non_null(u);
	assert_string_equal(u->name, "user");
	assert_null(e2bfs_ids_user(&db, "nobody"));
	assert_null(e2bfs_ids_user(&db, ""));

	e2bfs_ids_owner(&db, 1000, name);
	assert_string_equal(name, "user");
	e2bfs_ids_owner(&db, 999, name);
	assert_string_equal(name, "999");
	e2bfs_ids_group(&db, 27, name);
	assert_string_equal(name, "sudo");
	e2bfs_ids_group(&db, 31337, name);
	assert_string_equal(name, "31337");
	e2bfs_ids_free(&db);
	e2bfs_ids_free(&db); /* twice: harmless */
}

static void ids_many_and_none(void **state)
{
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	FILE *pw, *mem = open_memstream(&text, &len);
	struct e2bfs_ids db;

	(void)state;
	for (int i = 0; i < 300; i++)
		fprintf(mem, "u%d:x:%d:%d::/home/u%d:/bin/sh\n", i, 2000 + i, 2000 + i, i);
	fclose(mem);
	pw = fmemopen(text, len, "r");
	assert_int_equal(e2bfs_ids_load(&db, pw, NULL), 0);
	fclose(pw);
	assert_int_equal(db.n_users, 300);
	assert_int_equal(e2bfs_ids_user(&db, "u299")->uid, 2299);
	e2bfs_ids_free(&db);

	/* a guest without the files: nobody known, names fall back to numbers */
	assert_int_equal(e2bfs_ids_load(&db, NULL, NULL), 0);
	assert_null(e2bfs_ids_user(&db, "root"));
	e2bfs_ids_free(&db);
}

/* ---- snapshot diffs ---- */

struct ev_log {
	char text[512];
};

static int log_event(void *ctx, const char *name, enum e2bfs_event ev)
{
	struct ev_log *l = ctx;
	size_t n = strlen(l->text);

	snprintf(l->text + n, sizeof(l->text) - n, "%s%s %s", n ? "," : "", e2bfs_event_name(ev) + 11, name);
	return 0;
}

static void snap_add(struct e2bfs_snap *s, const char *name, ino_t ino, mode_t mode, off_t size, time_t mtime)
{
	s->v = realloc(s->v, (s->n + 1) * sizeof(*s->v));
	s->v[s->n++] = (struct e2bfs_snap_ent){.name = strdup(name), .ino = ino, .mode = mode, .size = size,
					       .mtime = {mtime, 0}};
}

static void snap_diff(void **state)
{
	struct e2bfs_snap a = {0}, b = {0};
	struct ev_log l = {""};

	(void)state;
	/* added in any order: sorted before the diff */
	snap_add(&a, "same", 1, S_IFREG | 0644, 5, 100);
	snap_add(&a, "dir", 2, S_IFDIR | 0755, 4096, 100);
	snap_add(&a, "gone", 3, S_IFREG | 0644, 1, 100);
	snap_add(&a, "moved", 4, S_IFREG | 0644, 1, 100);
	snap_add(&a, "grown", 5, S_IFREG | 0644, 1, 100);
	snap_add(&a, "touched", 6, S_IFREG | 0644, 1, 100);
	snap_add(&a, "chmod", 7, S_IFREG | 0644, 1, 100);
	snap_add(&a, "replaced", 8, S_IFREG | 0644, 1, 100);
	e2bfs_snap_sort(&a);

	snap_add(&b, "same", 1, S_IFREG | 0644, 5, 100);
	snap_add(&b, "dir", 2, S_IFDIR | 0755, 4096, 200); /* a directory's mtime: its entries tell */
	snap_add(&b, "moved-to", 4, S_IFREG | 0644, 1, 100);
	snap_add(&b, "grown", 5, S_IFREG | 0644, 9, 100);
	snap_add(&b, "touched", 6, S_IFREG | 0644, 1, 101);
	snap_add(&b, "chmod", 7, S_IFREG | 0600, 1, 100);
	snap_add(&b, "replaced", 9, S_IFREG | 0644, 1, 100);
	snap_add(&b, "dir/new", 10, S_IFREG | 0644, 0, 100);
	e2bfs_snap_sort(&b);

	assert_int_equal(e2bfs_snap_diff(&a, &b, log_event, &l), 0);
	assert_string_equal(l.text, "CHMOD chmod,CREATE dir/new,REMOVE gone,WRITE grown,RENAME moved,CREATE moved-to,"
				    "REMOVE replaced,CREATE replaced,WRITE touched");
	/* no change: no event */
	l.text[0] = 0;
	assert_int_equal(e2bfs_snap_diff(&b, &b, log_event, &l), 0);
	assert_string_equal(l.text, "");
	e2bfs_snap_free(&a);
	e2bfs_snap_free(&b);
	e2bfs_snap_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(guest_path),
		cmocka_unit_test(guest_path_other_home),
		cmocka_unit_test(base),
		cmocka_unit_test(mode_string),
		cmocka_unit_test(rfc3339),
		cmocka_unit_test(entry_json),
		cmocka_unit_test(entry_json_symlink),
		cmocka_unit_test(basic_user),
		cmocka_unit_test(ids),
		cmocka_unit_test(ids_many_and_none),
		cmocka_unit_test(snap_diff),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
