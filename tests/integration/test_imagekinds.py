#!/usr/bin/env python3
"""
Kinds of OCI images as template root file systems (docs/interface.md,
"Images and Dockerfiles", "exec", "Processes"), each built in the test with
umoci (no registry), baked from an `oci:` layout and checked from inside the
guest through exec and procs/:

- musl: an Alpine-like image, a dynamically linked musl program (its
  interpreter /lib/ld-musl-x86_64.so.1, nothing of glibc, no /bin/sh). An
  argv exec runs it with the image's User (a name from its /etc/passwd),
  WorkingDir and Env, output exact; a shell line fails with ENOENT (in
  JSON mode: {"errno": "ENOENT", "error": the guest's reason}); procs/ with {"argv"} runs it, a shell line there is lost with
  the agent's reason (a shell line needs /bin/sh). Skipped when musl-gcc is
  missing (Debian: musl-tools).
- static: a scratch image holding one static binary and nothing else (no
  /etc at all): argv exec and procs/ honour User (numeric uid:gid without
  /etc/passwd), WorkingDir (a 0700 directory of that uid) and Env (PATH
  included); a request's user, cwd and env override them; a user name
  cannot be resolved without /etc/passwd (EINVAL). It bakes without the
  exec path read ahead (no shell: the build log says so).
- usr-merged vs classic: busybox (busybox-static) with /bin, /sbin, /lib,
  /lib64 as symlinks into /usr (Debian 12 style) and the classic layout;
  both bake and run shell lines (/bin/sh found through the /bin link). The
  classic one's /bin/bash never returns: the bake's read-ahead of the
  shells gives up after its 10 s and the bake goes on (the log says so).
- arm64: an image whose config says arm64 fails the bake (state failed, the
  error names arm64 and amd64) and leaves nothing in the state directory
  (no *.tmp, no disk in store/images/disks, no snapshot.new, no VMM).
- start in a shell-less image: config "start" is a shell line; the bake
  fails and its error says a shell line needs /bin/sh.
"""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = BASE = None
WORK = None  # images and programs made by this test (host side)

MUSL_LOADER = "/lib/ld-musl-x86_64.so.1"

# a dynamically linked musl program: its args, who and where it runs, and whether musl's loader is mapped
MUSL_SRC = r"""
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char cwd[256], line[512];
	struct passwd *pw = getpwuid(getuid());
	const char *mode = getenv("MODE"), *home = getenv("HOME"), *loader = "none";
	FILE *maps = fopen("/proc/self/maps", "r");

	printf("hello-musl argc=%d", argc);
	for (int i = 1; i < argc; i++)
		printf(" [%s]", argv[i]);
	printf("\nuser=%s uid=%d gid=%d cwd=%s MODE=%s HOME=%s\n", pw ? pw->pw_name : "?", (int)getuid(),
	       (int)getgid(), getcwd(cwd, sizeof(cwd)) ? cwd : "?", mode ? mode : "(unset)", home ? home : "(unset)");
	while (maps && fgets(line, sizeof(line), maps))
		if (strstr(line, "/lib/ld-musl-x86_64.so.1"))
			loader = "/lib/ld-musl-x86_64.so.1";
	printf("loader=%s\n", loader);
	return argc - 1;
}
"""

# a static glibc program (no NSS: it only prints numbers and strings)
STATIC_SRC = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char cwd[256];
	const char *g = getenv("GREETING");

	printf("uid=%d gid=%d groups=%d cwd=%s GREETING=%s", (int)getuid(), (int)getgid(), getgroups(0, NULL),
	       getcwd(cwd, sizeof(cwd)) ? cwd : "?", g ? g : "(unset)");
	for (int i = 1; i < argc; i++)
		printf(" [%s]", argv[i]);
	printf("\n");
	return 0;
}
"""

BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "readlink", "id", "pwd", "test", "[")


def setUpModule():
    global D, BASE, WORK
    for tool in ("umoci", "gcc", "readelf"):
        if not shutil.which(tool):
            raise AssertionError("%s missing (Debian: %s)" % (tool, {"umoci": "umoci", "gcc": "gcc libc6-dev",
                                                                     "readelf": "binutils"}[tool]))
    WORK = tempfile.mkdtemp(prefix="efimgk", dir="/tmp")
    D, BASE = harness.start_shared()


def tearDownModule():
    try:
        if D:
            try:
                for t in os.listdir(os.path.join(D.mount, "templates")):
                    if t != "default":
                        drop_template(t)
                D.assert_inventory(BASE, timeout=15)
            finally:
                D.stop()
    finally:
        if WORK:
            shutil.rmtree(WORK, ignore_errors=True)


# ---------------------------------------------------------------------------
# images (host side)

def run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    if r.returncode != 0:
        raise AssertionError("%s: exit %d: %s%s" % (" ".join(argv), r.returncode, r.stdout, r.stderr))
    return r.stdout


def make_image(name, populate, config=()):
    """An OCI layout WORK/name with one image tagged "t": populate(rootfs) writes its files
    (one layer), config are `umoci config` arguments. Returns (reference, layout)."""
    layout, bundle = os.path.join(WORK, name), os.path.join(WORK, name + ".bundle")
    ref = layout + ":t"
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", ref])
    run(["umoci", "unpack", "--image", ref, bundle])
    populate(os.path.join(bundle, "rootfs"))
    run(["umoci", "repack", "--image", ref, bundle])
    if config:
        run(["umoci", "config", "--image", ref] + list(config))
    shutil.rmtree(bundle)
    return "oci:" + ref, layout


def manifest_digest(layout):
    with open(os.path.join(layout, "index.json")) as f:
        (m,) = json.load(f)["manifests"]
    return m["digest"]


def compile_c(name, src, compiler, *flags):
    c, out = os.path.join(WORK, name + ".c"), os.path.join(WORK, name)
    with open(c, "w") as f:
        f.write(src)
    run([compiler, "-O2", "-o", out, c] + list(flags))
    return out


def interpreter(path):
    """The ELF program interpreter of path, or None (static)."""
    m = re.search(r"\[Requesting program interpreter: ([^\]]+)\]", run(["readelf", "-l", path]))
    return m.group(1) if m else None


def put(rootfs, path, data=None, src=None, mode=0o644, uid=0, gid=0):
    dst = os.path.join(rootfs, path.lstrip("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if src:
        shutil.copyfile(src, dst)
    else:
        with open(dst, "w") as f:
            f.write(data)
    os.chmod(dst, mode)
    os.chown(dst, uid, gid)


def mkdirs(rootfs, *paths, mode=0o755):
    for p in paths:
        os.makedirs(os.path.join(rootfs, p.lstrip("/")), mode=mode, exist_ok=True)


def busybox_host():
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.isfile(p) and interpreter(p) is None:
            return p
    return None


# ---------------------------------------------------------------------------
# templates and sandboxes (mount side)

def bake(t, config):
    """mkdir templates/T, its config, `echo bake > ctl`, then `cat build.log` (returns when the
    bake ended). Returns (status, build log)."""
    os.mkdir(D.tpl(t))
    harness.write_file(D.tpl(t, "config"), json.dumps(config))
    D.ctl("bake\n", t=t)
    log = harness.read_text(D.tpl(t, "build.log"))
    st = D.template_status(t)
    if st["state"] == "baking":
        raise AssertionError("build.log of %s ended while the template still bakes: %s" % (t, st))
    return st, log


def assert_baked(t, st, log):
    if st["state"] != "ready":
        raise AssertionError("template %s: %s (error %r)\n--- build.log ---\n%s\n%s" % (
            t, st["state"], st.get("error"), log, D.log_tail()))


def drop_template(t):
    for n in D.sandboxes(t=t):
        D.destroy(n, t=t)
    os.rmdir(D.tpl(t))


def argv_exec(sb, t, argv, **extra):
    """JSON exec of argv: (exit_code, stdout, stderr) with the streams as text."""
    r = D.exec_json(sb, dict(argv=argv, **extra), t=t)
    return r["exit_code"], r["stdout"].decode(), r["stderr"].decode()


def exec_read_errno(sb, t, cmd):
    """Writes cmd to exec and reads: the errno the read fails with (None if it does not)."""
    fd = os.open(D.sb(sb, "exec", t=t), os.O_RDWR)
    try:
        os.write(fd, cmd.encode())
        try:
            while os.read(fd, 65536):
                pass
        except OSError as e:
            return e.errno
        return None
    finally:
        os.close(fd)


def exec_json_error(sb, t, req):
    """A JSON exec that cannot run: the response line {"errno", "error"}."""
    fd = os.open(D.sb(sb, "exec", t=t), os.O_RDWR)
    try:
        os.write(fd, json.dumps(req).encode())
        out = b""
        while True:
            b = os.read(fd, 65536)
            if not b:
                return json.loads(out)
            out += b
    finally:
        os.close(fd)


def read_all(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        out = b""
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return out
            out += b
    finally:
        os.close(fd)


def proc_run(sb, t, pid, cmd):
    """procs/pid with cmd; returns (status once ended, stdout, stderr) or (status, None, None) when
    the start failed (cmd's write error then in status["write_errno"])."""
    P = lambda *rest: D.sb(sb, "procs", pid, *rest, t=t)  # noqa: E731
    os.mkdir(P())
    try:
        harness.write_file(P("cmd"), cmd)
    except OSError as e:
        st = harness.read_json(P("status"))
        st["write_errno"] = e.errno
        return st, None, None
    out, err = read_all(P("stdout")), read_all(P("stderr"))
    st = harness.wait_for(lambda: (lambda s: s if s["state"] in ("exited", "lost") else None)(
        harness.read_json(P("status"))), 30, "process %s ended" % pid)
    return st, out.decode(), err.decode()


def state_leftovers():
    """Names ending in .tmp (or .new) anywhere under the daemon's state directory."""
    out = []
    for root, dirs, files in os.walk(D.state):
        for n in dirs + files:
            if n.endswith(".tmp") or n.endswith(".new"):
                out.append(os.path.relpath(os.path.join(root, n), D.state))
    return sorted(out)


def image_disks():
    return harness._listdir(os.path.join(D.state, "store", "images", "disks"))


# ---------------------------------------------------------------------------

class Musl(harness.TestCase):
    """An Alpine-like image: musl's loader and a dynamically linked program, no shell, no glibc."""

    T, SB = "ikmusl", "m1"

    def setUp(self):
        if not shutil.which("musl-gcc"):
            self.skipTest("musl-gcc missing (Debian: musl-tools)")
        super().setUp()

    def tearDown(self):
        try:
            if os.path.isdir(D.tpl(self.T)):
                drop_template(self.T)
        finally:
            super().tearDown()

    def test_musl_image(self):
        prog = compile_c("hello-musl", MUSL_SRC, "musl-gcc")
        self.assertEqual(interpreter(prog), MUSL_LOADER, "musl-gcc made no dynamically linked program")
        self.assertIn("Shared library: [libc.so]", run(["readelf", "-d", prog]))
        libc = os.path.realpath(MUSL_LOADER)  # Debian: a link to /usr/lib/x86_64-linux-musl/libc.so
        self.assertTrue(os.path.isfile(libc), "musl's loader %s is not on the host" % MUSL_LOADER)

        def populate(r):
            put(r, "/usr/bin/hello-musl", src=prog, mode=0o755)
            put(r, MUSL_LOADER, src=libc, mode=0o755)  # musl's libc is its own loader (as in Alpine)
            os.symlink("ld-musl-x86_64.so.1", os.path.join(r, "lib/libc.musl-x86_64.so.1"))
            put(r, "/etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\napp:x:1000:1000:app:/home/app:/sbin/nologin\n")
            put(r, "/etc/group", "root:x:0:\napp:x:1000:\n")
            mkdirs(r, "/home/app", "/root")
            os.chown(os.path.join(r, "home/app"), 1000, 1000)

        ref, _ = make_image("musl", populate, ["--config.user", "app", "--config.workingdir", "/home/app",
                                               "--config.env", "PATH=/usr/bin:/bin", "--config.env", "MODE=musl"])
        st, log = bake(self.T, {"image": ref})
        assert_baked(self.T, st, log)
        self.assertEqual((st["build"]["user"], st["build"]["workdir"], st["build"]["env"]),
                         ("app", "/home/app", ["PATH=/usr/bin:/bin", "MODE=musl"]), st["build"])
        D.create_ready(self.SB, t=self.T)
        root = D.sb(self.SB, "root", t=self.T)
        self.assertFalse(os.path.lexists(os.path.join(root, "bin/sh")), "the image has a /bin/sh")
        self.assertEqual(os.readlink(os.path.join(root, "lib/libc.musl-x86_64.so.1")), "ld-musl-x86_64.so.1")

        # argv: found in the image's PATH, run as its user in its workdir with its env, by musl's loader
        code, out, err = argv_exec(self.SB, self.T, ["hello-musl", "a b", "c"])
        self.assertEqual((code, out, err), (2, "hello-musl argc=3 [a b] [c]\n"
                                               "user=app uid=1000 gid=1000 cwd=/home/app MODE=musl HOME=/home/app\n"
                                               "loader=/lib/ld-musl-x86_64.so.1\n", ""))
        code, out, err = argv_exec(self.SB, self.T, ["/usr/bin/hello-musl"], user="root", cwd="/", env={"MODE": "x"})
        self.assertEqual((code, out, err), (0, "hello-musl argc=1\nuser=root uid=0 gid=0 cwd=/ MODE=x HOME=/root\n"
                                               "loader=/lib/ld-musl-x86_64.so.1\n", ""))
        # a program that is not there: 127 and the agent's message, as a shell would
        code, out, err = argv_exec(self.SB, self.T, ["ls"])
        self.assertEqual((code, out, err), (127, "", "emberfs-agent: exec ls: No such file or directory\n"))

        # a shell line needs /bin/sh: the exec file's read fails with ENOENT; in JSON mode the
        # response says so, with the guest's reason
        self.assertEqual(exec_read_errno(self.SB, self.T, "hello-musl"), errno.ENOENT)
        resp = exec_json_error(self.SB, self.T, {"sh": "hello-musl"})
        self.assertEqual(resp["errno"], "ENOENT", resp)
        self.assertIn("a shell line needs /bin/sh", resp["error"])

        # procs/: argv runs; a shell line cannot start and says why
        st, out, err = proc_run(self.SB, self.T, "p1", '{"argv": ["hello-musl", "proc"]}')
        self.assertEqual((st["state"], st["exit_code"], st["signal"], st["error"]), ("exited", 1, 0, None), st)
        self.assertEqual((out, err), ("hello-musl argc=2 [proc]\nuser=app uid=1000 gid=1000 cwd=/home/app "
                                      "MODE=musl HOME=/home/app\nloader=/lib/ld-musl-x86_64.so.1\n", ""))
        st, out, err = proc_run(self.SB, self.T, "p2", "hello-musl\n")
        self.assertEqual((st["state"], st.get("write_errno")), ("lost", errno.ENOENT), st)
        self.assertTrue((st["error"] or "").startswith("start failed: a shell line needs /bin/sh"), st)
        # the sandbox is fine afterwards
        self.assertEqual(argv_exec(self.SB, self.T, ["hello-musl", "again"])[:2],
                         (1, "hello-musl argc=2 [again]\nuser=app uid=1000 gid=1000 cwd=/home/app MODE=musl "
                             "HOME=/home/app\nloader=/lib/ld-musl-x86_64.so.1\n"))


STATIC_IMAGE = {}  # the scratch image with one static binary: made once, used by Static and Start


def static_image():
    if not STATIC_IMAGE:
        prog = compile_c("whoami-static", STATIC_SRC, "gcc", "-static")
        if interpreter(prog) is not None:
            raise AssertionError("gcc -static made a dynamically linked program")

        def populate(r):
            put(r, "/app/bin/whoami-static", src=prog, mode=0o755)
            mkdirs(r, "/data", mode=0o700)
            os.chmod(os.path.join(r, "data"), 0o700)
            os.chown(os.path.join(r, "data"), 1234, 2345)

        ref, layout = make_image("static", populate, ["--config.user", "1234:2345", "--config.workingdir", "/data",
                                                      "--config.env", "PATH=/app/bin",
                                                      "--config.env", "GREETING=hi there"])
        STATIC_IMAGE.update(ref=ref, layout=layout)
    return STATIC_IMAGE["ref"]


class Static(harness.TestCase):
    """A scratch image: one static binary, no shell, no /etc."""

    T, SB = "ikstatic", "s1"

    def tearDown(self):
        try:
            if os.path.isdir(D.tpl(self.T)):
                drop_template(self.T)
        finally:
            super().tearDown()

    def test_static_image(self):
        st, log = bake(self.T, {"image": static_image()})
        assert_baked(self.T, st, log)
        # the bake reads the shell's exec path into the snapshot's page cache where there is a shell
        self.assertIn("exec path not read ahead", log)
        self.assertEqual((st["build"]["user"], st["build"]["workdir"], st["build"]["env"]),
                         ("1234:2345", "/data", ["PATH=/app/bin", "GREETING=hi there"]), st["build"])
        D.create_ready(self.SB, t=self.T)
        self.assertFalse(os.path.lexists(os.path.join(D.sb(self.SB, "root", t=self.T), "etc")), "the image has /etc")

        # User (numeric, no /etc/passwd: gid as given, no other group), WorkingDir (0700, that uid's), Env
        # (PATH finds the program)
        expect = "uid=1234 gid=2345 groups=0 cwd=/data GREETING=hi there [x y]\n"
        self.assertEqual(argv_exec(self.SB, self.T, ["whoami-static", "x y"]), (0, expect, ""))
        # the same through procs/
        st, out, err = proc_run(self.SB, self.T, "p1", '{"argv": ["whoami-static", "x y"]}')
        self.assertEqual((st["state"], st["exit_code"], out, err), ("exited", 0, expect, ""), st)
        # a request overrides each of them
        self.assertEqual(argv_exec(self.SB, self.T, ["/app/bin/whoami-static"], user="0", cwd="/app",
                                   env={"GREETING": "override"}),
                         (0, "uid=0 gid=0 groups=0 cwd=/app GREETING=override\n", ""))
        self.assertEqual(argv_exec(self.SB, self.T, ["whoami-static"], user="77", cwd="/"),
                         (0, "uid=77 gid=77 groups=0 cwd=/ GREETING=hi there\n", ""))
        # the image's workdir is 0700 of uid 1234: another uid cannot enter it
        code, out, err = argv_exec(self.SB, self.T, ["whoami-static"], user="77")
        self.assertEqual((code, out, err), (127, "", "emberfs-agent: chdir /data: Permission denied\n"))
        # a name needs /etc/passwd: the exec is refused, and says why
        resp = exec_json_error(self.SB, self.T, {"argv": ["whoami-static"], "user": "app"})
        self.assertEqual(resp["errno"], "EINVAL", resp)
        self.assertIn("/etc/passwd", resp["error"])
        # no shell
        self.assertEqual(exec_read_errno(self.SB, self.T, "whoami-static"), errno.ENOENT)


class UsrMerge(harness.TestCase):
    """busybox with /bin, /sbin, /lib, /lib64 as links into /usr (Debian 12) and in the classic layout."""

    def setUp(self):
        self.busybox = busybox_host()
        if not self.busybox:
            self.skipTest("no static busybox on the host (Debian: busybox-static)")
        self.made = []
        super().setUp()

    def tearDown(self):
        try:
            for t in self.made:
                if os.path.isdir(D.tpl(t)):
                    drop_template(t)
        finally:
            super().tearDown()

    def populate(self, r, merged):
        bindir = "/usr/bin" if merged else "/bin"
        put(r, bindir + "/busybox", src=self.busybox, mode=0o755)
        for a in BUSYBOX_APPLETS:
            os.symlink("busybox", os.path.join(r, bindir.lstrip("/"), a))
        put(r, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        put(r, "/etc/group", "root:x:0:\n")
        mkdirs(r, "/root")
        if merged:
            for d in ("bin", "sbin", "lib", "lib64"):
                mkdirs(r, "/usr/" + d)
                os.symlink("usr/" + d, os.path.join(r, d))
        else:
            mkdirs(r, "/sbin", "/lib", "/usr/bin")
            # a "bash" that never returns: the bake's read-ahead of the shells gives up on it and goes on
            put(r, "/bin/bash", "#!/bin/sh\nexec /bin/busybox sleep 600\n", mode=0o755)

    def test_merged_and_classic(self):
        refs = {}
        for kind in ("merged", "classic"):
            refs[kind], _ = make_image("bb-" + kind, lambda r, m=(kind == "merged"): self.populate(r, m))
        probe = ("for d in /bin /sbin /lib /lib64; do if [ -L $d ]; then echo $d link $(readlink $d); "
                 "elif [ -d $d ]; then echo $d dir; else echo $d none; fi; done; "
                 "ls /bin/sh /usr/bin/busybox 2>&1; echo \"$0 $(id -u) $(pwd)\"")
        want = {
            "merged": "/bin link usr/bin\n/sbin link usr/sbin\n/lib link usr/lib\n/lib64 link usr/lib64\n"
                      "/bin/sh\n/usr/bin/busybox\n/bin/sh 0 /\n",
            "classic": "/bin dir\n/sbin dir\n/lib dir\n/lib64 none\n"
                       "ls: /usr/bin/busybox: No such file or directory\n/bin/sh\n/bin/sh 0 /\n",
        }
        for kind in ("merged", "classic"):
            t, sb = "ikbb" + kind, "bb" + kind
            self.made.append(t)
            st, log = bake(t, {"image": refs[kind]})
            assert_baked(t, st, log)
            if kind == "classic":
                self.assertIn("exec path not read ahead", log)
                self.assertLess(st["bake"]["timings"]["exec_path"], 30000)  # bounded (10 s), not the warm's 120
            else:
                self.assertNotIn("exec path not read ahead", log)
            D.create_ready(sb, t=t)
            with self.subTest(kind=kind):
                # a shell line (plain mode: /bin/sh -c), and sh -c through argv
                self.assertEqual(D.sh(sb, probe, t=t), want[kind])
                self.assertEqual(argv_exec(sb, t, ["sh", "-c", "readlink /bin || echo not-a-link"]),
                                 (0, "usr/bin\n" if kind == "merged" else "not-a-link\n", ""))
                # procs/ with a shell line
                pst, out, err = proc_run(sb, t, "p", "echo $((6 * 7)) from $(readlink -f /bin/sh)\n")
                self.assertEqual((pst["state"], pst["exit_code"], out, err),
                                 ("exited", 0, "42 from %s\n" % ("/usr/bin/busybox" if kind == "merged"
                                                                 else "/bin/busybox"), ""), pst)
            drop_template(t)


class WrongArch(harness.TestCase):
    """An arm64 image: the bake fails naming the architecture, and leaves nothing behind."""

    T = "ikarm"

    def tearDown(self):
        try:
            if os.path.isdir(D.tpl(self.T)):
                drop_template(self.T)
        finally:
            super().tearDown()

    def test_arm64(self):
        def populate(r):
            put(r, "/etc/hostname", "arm\n")
            put(r, "/bin/prog", "not really an arm64 program\n", mode=0o755)

        ref, layout = make_image("arm64", populate, ["--architecture", "arm64"])
        digest = manifest_digest(layout)
        disks_before, left_before = image_disks(), state_leftovers()
        D.expect_log_error(r"template %s: .*arm64" % self.T)
        st, log = bake(self.T, {"image": ref})
        self.assertEqual(st["state"], "failed", st)
        err = st["error"] or ""
        self.assertRegex(err, r"\barm64\b", st)
        self.assertRegex(err, r"\bamd64\b", st)
        self.assertIn("build failed: " + err, log)
        self.assertNotIn("bake", st, "a failed first bake shows a bake: %s" % st)
        # nothing left: no disk of it, no temporary file, no snapshot in the making, no VMM
        self.assertEqual(image_disks(), disks_before)
        self.assertEqual([d for d in image_disks() if d.startswith(digest[7:])], [])
        self.assertEqual(state_leftovers(), left_before)
        tdir = os.path.join(D.state, "store", "templates", self.T)
        self.assertFalse(os.path.exists(os.path.join(tdir, "snapshot.new")))
        self.assertFalse(os.path.exists(os.path.join(tdir, "snapshot")))
        D.assert_inventory(BASE)
        # a second bake fails the same way (nothing cached in between)
        D.ctl("bake\n", t=self.T)
        log2 = harness.read_text(D.tpl(self.T, "build.log"))
        st2 = D.template_status(self.T)
        self.assertEqual((st2["state"], st2["error"]), ("failed", err), st2)
        self.assertIn("build failed: " + err, log2)
        self.assertEqual(image_disks(), disks_before)
        self.assertEqual(state_leftovers(), left_before)
        drop_template(self.T)
        self.assertFalse(os.path.exists(tdir), "rmdir left %s" % tdir)
        D.assert_inventory(BASE)


class Start(harness.TestCase):
    """config "start" as a shell line needs /bin/sh: in an image without one the bake fails and says
    why; as an argv it runs there."""

    T = "ikstart"

    def tearDown(self):
        try:
            if os.path.isdir(D.tpl(self.T)):
                drop_template(self.T)
        finally:
            super().tearDown()

    def test_start_needs_shell(self):
        ref = static_image()
        left_before = state_leftovers()
        D.expect_log_error(r"template %s: bake failed at start .*start command: a shell line needs /bin/sh" % self.T)
        st, log = bake(self.T, {"image": ref, "start": "whoami-static"})
        self.assertEqual(st["state"], "failed", st)
        err = st["error"] or ""
        self.assertIn("start command: a shell line needs /bin/sh", err,
                      "the bake's error does not name the missing shell: %r" % err)
        self.assertEqual(state_leftovers(), left_before)
        self.assertFalse(os.path.exists(os.path.join(D.state, "store", "templates", self.T, "snapshot.new")))
        D.assert_inventory(BASE)


    def test_start_as_argv(self):
        ref = static_image()
        st, log = bake(self.T, {"image": ref, "start": ["/app/bin/whoami-static", "from", "start"]})
        self.assertEqual(st["state"], "ready", st)
        self.assertEqual(harness.read_json(D.tpl(self.T, "config"))["start"], ["/app/bin/whoami-static", "from", "start"])
        D.create_ready("iks1", t=self.T)
        self.assertEqual(read_all(D.sb("iks1", "procs", "start", "stdout", t=self.T)).decode(),
                         "uid=1234 gid=2345 groups=0 cwd=/data GREETING=hi there [from] [start]\n")
        D.destroy("iks1", t=self.T)


class CacheGC(harness.TestCase):
    """The build caches keep what templates use and drop the rest (a daemon with --cache-max-age 0:
    an entry no template's build uses goes at the next bake's end)."""

    def test_unused_entries_go(self):
        ref1 = static_image()
        prog = compile_c("gc-static", STATIC_SRC, "gcc", "-static")
        ref2, _ = make_image("gc2", lambda r: put(r, "/app/bin/whoami-static", src=prog, mode=0o755),
                             ["--config.env", "PATH=/app/bin"])
        d = harness.Daemon(extra_args=["--cache-max-age", "0"]).start()
        try:
            disks = os.path.join(d.state, "store", "images", "disks")
            steps = os.path.join(d.state, "store", "build-cache")

            def bake_gc(t, **kw):
                if "config" in kw:
                    harness.write_file(d.tpl(t, "config"), json.dumps(kw["config"]))
                if "dockerfile" in kw:
                    harness.write_file(d.tpl(t, "Dockerfile"), kw["dockerfile"])
                d.ctl("rebake\n", t=t)
                harness.read_text(d.tpl(t, "build.log"))
                st = d.template_status(t)
                self.assertEqual(st["state"], "ready", st)
                return st

            def listing(p):
                return sorted(os.listdir(p)) if os.path.isdir(p) else []

            os.mkdir(d.tpl("gca"))
            st = bake_gc("gca", config={"image": ref1})
            first = os.path.basename(st["build"]["disk"])
            self.assertEqual(listing(disks), sorted([first, first[:-4] + ".json"]))
            # another image: the first one's disk is no template's any more
            st = bake_gc("gca", config={"image": ref2})
            second = os.path.basename(st["build"]["disk"])
            self.assertNotEqual(first, second)
            self.assertEqual(listing(disks), sorted([second, second[:-4] + ".json"]))
            # a Dockerfile's steps: the old chain goes when it is rebuilt, what the build uses stays
            os.mkdir(d.tpl("gcb"))
            harness.write_file(d.tpl("gcb", "config"), json.dumps({"context": WORK}))
            st = bake_gc("gcb", dockerfile="FROM gca\nCOPY gc-static.c /one\n")
            old = listing(steps)
            self.assertTrue(old and st["build"]["disk"].startswith(steps + "/"), (old, st["build"]))
            st = bake_gc("gcb", dockerfile="FROM gca\nCOPY gc-static.c /two\n")
            new = listing(steps)
            self.assertTrue(st["build"]["disk"].startswith(steps + "/"), st["build"])
            self.assertEqual(new, [st["build"]["disk"][len(steps) + 1:].split("/")[0]], (old, new))
            # the sandboxes of both still work (their disks are their own clones)
            self.assertEqual(d.create_ready("gcs", t="gcb")["state"], "ready")
            d.destroy("gcs", t="gcb")
            for t in ("gcb", "gca"):
                os.rmdir(d.tpl(t))
        finally:
            d.stop()


if __name__ == "__main__":
    harness.main()
