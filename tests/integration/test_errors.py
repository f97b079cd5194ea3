#!/usr/bin/env python3
"""
Error answers of the mount, against a real daemon: invalid names (every
class), EEXIST, ENOENT, EPERM for mkdir in the wrong places, EACCES for
writes to read-only files, EINVAL for an unknown ctl verb, and config writes
that are malformed, have an unknown key or a bad value (EINVAL, config
unchanged). After every refused mkdir nothing new may appear, neither in the
listing nor in the state dir.
"""
import errno
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = None
BASE = None

# (label, name, errno). "." and ".." never reach the daemon: the kernel's VFS
# answers mkdir of them with EEXIST; names over 255 bytes get ENAMETOOLONG from
# the kernel too. Everything else is the daemon's allowlist
# [A-Za-z0-9][A-Za-z0-9_-]{0,63}.
INVALID_NAMES = [
    ("dot", ".", errno.EEXIST),
    ("dotdot", "..", errno.EEXIST),
    ("leading dot", ".hidden", errno.EINVAL),
    ("dot inside", "a.b", errno.EINVAL),
    ("control char \\x01", "a\x01b", errno.EINVAL),
    ("newline", "a\nb", errno.EINVAL),
    ("tab", "a\tb", errno.EINVAL),
    ("DEL", "a\x7f", errno.EINVAL),
    ("escape sequence", "\x1b[31mred", errno.EINVAL),
    ("space", "a b", errno.EINVAL),
    ("65 chars", "a" * 65, errno.EINVAL),
    ("255 chars", "b" * 255, errno.EINVAL),
    ("256 chars", "c" * 256, errno.ENAMETOOLONG),
    ("unicode e-acute", "caf\u00e9", errno.EINVAL),
    ("unicode CJK", "\u65e5\u672c", errno.EINVAL),
    ("unicode lookalike dash", "a\u2010b", errno.EINVAL),
    ("leading dash", "-a", errno.EINVAL),
    ("leading underscore", "_a", errno.EINVAL),
    ("only dash", "-", errno.EINVAL),
    ("colon", "a:b", errno.EINVAL),
    ("backslash", "a\\b", errno.EINVAL),
    ("shell glob", "a*", errno.EINVAL),
    ("quote", "a'b", errno.EINVAL),
    ("percent", "a%s", errno.EINVAL),
]


def setUpModule():
    global D, BASE
    D, BASE = harness.start_shared()


def tearDownModule():
    if D is not None:
        D.stop()


def state_entries():
    """What the state dir holds for templates and sandboxes (the daemon's warm slots aside)."""
    inv = D.core(D.inventory())
    templates = sorted(os.listdir(os.path.join(D.state, "store", "templates")))
    return {"templates": templates, "sandboxes": inv["sandboxes"], "run": inv["run"], "qemu": inv["qemu"]}


class Names(harness.TestCase):
    def check_refused(self, parent, kind):
        listing = sorted(os.listdir(parent))
        state = state_entries()
        for label, name, want in INVALID_NAMES:
            with self.subTest(kind=kind, name=label):
                self.assertErrno(want, os.mkdir, os.path.join(parent, name))
                self.assertEqual(sorted(os.listdir(parent)), listing, "listing changed after %s" % label)
                self.assertEqual(state_entries(), state, "state dir changed after %s" % label)
        D.assert_inventory(BASE)

    def test_invalid_sandbox_names(self):
        self.check_refused(D.sbdir(), "sandbox")

    def test_invalid_template_names(self):
        self.check_refused(os.path.join(D.mount, "templates"), "template")

    def test_longest_valid_name_works(self):
        name = "Z" + "9" * 62 + "_"  # 64 chars, every character class
        try:
            st = D.create_ready(name)
            self.assertEqual(st["name"], name)
            self.assertEqual(D.sh(name, "hostname").strip(), name)
        finally:
            D.destroy(name)
        D.assert_inventory(BASE)


class Errors(harness.TestCase):
    def test_eexist(self):
        D.create("dup")
        try:
            self.assertErrno(errno.EEXIST, os.mkdir, D.sb("dup"))
            self.assertEqual(D.sandboxes(), ["dup"])
            D.wait_ready("dup")
            self.assertErrno(errno.EEXIST, os.mkdir, D.sb("dup"))
            self.assertEqual(D.template_status()["sandboxes"], 1)
        finally:
            D.destroy("dup")
        self.assertErrno(errno.EEXIST, os.mkdir, D.tpl("default"))
        D.assert_inventory(BASE)

    def test_enoent(self):
        self.assertErrno(errno.ENOENT, os.rmdir, D.sb("never-made"))
        self.assertErrno(errno.ENOENT, os.rmdir, D.tpl("never-made"))
        self.assertErrno(errno.ENOENT, os.stat, D.sb("never-made"))
        self.assertErrno(errno.ENOENT, os.open, D.sb("never-made", "exec"), os.O_RDWR)
        self.assertErrno(errno.ENOENT, os.mkdir, D.sb("x", t="never-made"))
        # rmdir twice: the second one finds nothing
        D.create("twice")
        D.destroy("twice")
        self.assertErrno(errno.ENOENT, os.rmdir, D.sb("twice"))
        D.assert_inventory(BASE)

    def test_eperm_mkdir_in_wrong_places(self):
        D.create_ready("host")
        try:
            for p in (os.path.join(D.mount, "newdir"),  # mount root
                      D.tpl("default", "newdir"),  # template dir
                      D.sb("host", "newdir")):  # sandbox dir
                with self.subTest(path=p):
                    self.assertErrno(errno.EPERM, os.mkdir, p)
            self.assertErrno(errno.EEXIST, os.mkdir, D.sb("host", "status"))
            # a name equal to one of the mount's own entries is refused everywhere
            for reserved in ("status", "ctl", "procs", "root", "wait"):
                self.assertErrno(errno.EINVAL, os.mkdir, D.sb(reserved))
                self.assertErrno(errno.EINVAL, os.mkdir, D.tpl(reserved))
                self.assertErrno(errno.EINVAL, os.mkdir, D.sb("host", "procs", reserved))
            self.assertErrno(errno.ENOTDIR, os.mkdir, D.sb("host", "status", "x"))
            # rmdir of the fixed parts of the tree is refused too
            self.assertErrno(errno.EPERM, os.rmdir, os.path.join(D.mount, "templates"))
            # unlink outside an object directory is refused
            self.assertErrno(errno.EPERM, os.unlink, os.path.join(D.mount, "version"))
            self.assertEqual(sorted(os.listdir(D.sb("host"))),
                             ["checkpoints", "console", "ctl", "env", "exec", "metadata", "procs", "root", "status", "timeout", "timings", "usage", "wait"])
            # nothing but directories is made by hand outside the guest: files, links, renames
            self.assertErrno(errno.EPERM, os.open, D.sb("host", "newfile"), os.O_CREAT | os.O_WRONLY)
            self.assertErrno(errno.EPERM, os.symlink, "x", D.sb("host", "newlink"))
            self.assertErrno(errno.EPERM, os.rename, D.sb("host", "status"), D.sb("host", "st2"))
            self.assertErrno(errno.EXDEV, os.rename, D.sb("host", "status"),
                             os.path.join(D.mount, "live", "host", "status"))
            self.assertEqual(D.status("host")["state"], "ready")
        finally:
            D.destroy("host")
        D.assert_inventory(BASE)

    def test_eacces_on_read_only_files(self):
        D.create_ready("ro")
        try:
            for p in (D.sb("ro", "status"), D.sb("ro", "timings"), D.sb("ro", "wait"), D.sb("ro", "console"),
                      D.tpl("default", "status"), D.tpl("default", "identity"),
                      os.path.join(D.mount, "version"), os.path.join(D.mount, "README")):
                with self.subTest(path=p):
                    self.assertErrno(errno.EACCES, os.open, p, os.O_WRONLY)
                    self.assertErrno(errno.EACCES, os.open, p, os.O_RDWR)
            # the shell's view: `echo x > status` fails
            p = subprocess.run(["sh", "-c", 'echo x > "$1"', "sh", D.sb("ro", "status")], capture_output=True)
            self.assertNotEqual(p.returncode, 0)
            self.assertEqual(D.status("ro")["state"], "ready")
            # ctl is write-only
            self.assertErrno(errno.EACCES, os.open, D.tpl("default", "ctl"), os.O_RDONLY)
        finally:
            D.destroy("ro")
        D.assert_inventory(BASE)

    def test_einval_bad_ctl(self):
        before = D.template_status()
        for verb in ("frob", "BAKE", "bake now", "rebak", "destroy", "x"):
            with self.subTest(verb=verb):
                self.assertErrno(errno.EINVAL, harness.write_file, D.tpl("default", "ctl"), verb + "\n")
        after = D.template_status()
        self.assertEqual(after["state"], "ready")
        self.assertEqual(after["bake"], before["bake"])

    def test_removed_template_refuses_ctl_and_config(self):
        # a handle opened before rmdir must not start a bake for a template that is gone
        os.mkdir(D.tpl("gone"))
        ctl = os.open(D.tpl("gone", "ctl"), os.O_WRONLY)
        cfg = os.open(D.tpl("gone", "config"), os.O_RDWR)
        try:
            text = os.read(cfg, 1 << 16)
            os.rmdir(D.tpl("gone"))
            self.assertErrno(errno.ENOENT, os.write, ctl, b"bake\n")
            self.assertErrno(errno.ENOENT, os.pwrite, cfg, text, 0)
        finally:
            os.close(ctl)
            os.close(cfg)
        self.assertNotIn("gone", os.listdir(D.tpl()))
        self.assertFalse(os.path.exists(os.path.join(D.state, "store", "templates", "gone")))
        D.assert_inventory(BASE)

    def test_config_naming_a_missing_file_is_einval(self):
        cfg_path = D.tpl("default", "config")
        before = harness.read_text(cfg_path)
        bad = json.loads(before)
        bad["kernel"] = "/nonexistent/vmlinux"
        self.assertErrno(errno.EINVAL, harness.write_file, cfg_path, json.dumps(bad), os.O_WRONLY | os.O_TRUNC)
        self.assertEqual(harness.read_text(cfg_path), before)
        self.assertIn("/nonexistent/vmlinux", D.template_status()["error"])

    def test_config_read_then_close(self):
        # reading the config must not fail, close() included: `cat config` exits 0
        p = subprocess.run(["cat", D.tpl("default", "config")], capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0, "cat config: %r" % p.stderr)
        json.loads(p.stdout)
        fd = os.open(D.tpl("default", "config"), os.O_RDONLY)
        os.read(fd, 1 << 16)
        os.close(fd)

    def test_good_config_write_applies(self):
        # a valid write is applied (here: the same config again, identity unchanged)
        cfg_path = D.tpl("default", "config")
        text = harness.read_text(cfg_path)
        ident = harness.read_text(D.tpl("default", "identity"))
        harness.write_file(cfg_path, text, os.O_WRONLY | os.O_TRUNC)
        self.assertEqual(json.loads(harness.read_text(cfg_path)), json.loads(text))
        self.assertEqual(harness.read_text(D.tpl("default", "identity")), ident)
        self.assertEqual(D.template_status()["state"], "ready")

    def test_einval_bad_config(self):
        cfg_path = D.tpl("default", "config")
        before = harness.read_text(cfg_path)
        ident = harness.read_text(D.tpl("default", "identity"))
        tstate = D.template_status()["state"]
        kernel = json.loads(before)["kernel"]
        bad = [
            ("malformed", "not json at all"),
            ("truncated object", '{"kernel": "%s", "vcpus": ' % kernel),
            ("trailing garbage", '{"kernel": "%s"} trailing' % kernel),
            ("not an object", '["kernel"]'),
            ("unknown key", '{"kernel": "%s", "colour": "blue"}' % kernel),
            ("vcpus zero", '{"kernel": "%s", "vcpus": 0}' % kernel),
            ("vcpus string", '{"kernel": "%s", "vcpus": "two"}' % kernel),
            ("mem too small", '{"kernel": "%s", "mem_mib": 1}' % kernel),
            ("mem float", '{"kernel": "%s", "mem_mib": 256.5}' % kernel),
            ("bad backend", '{"kernel": "%s", "backend": "firecracker"}' % kernel),
            ("bad accel", '{"kernel": "%s", "accel": "xen"}' % kernel),
            ("relative kernel", '{"kernel": "vmlinuz"}'),
            ("kernel with ..", '{"kernel": "/boot/../etc/passwd"}'),
            ("no kernel", '{"vcpus": 1}'),
            ("cmdline with newline", '{"kernel": "%s", "cmdline": "a\\nb"}' % kernel),
        ]
        for label, text in bad:
            with self.subTest(config=label):
                # the error comes from write() or, for an incomplete value, from close()
                self.assertErrno(errno.EINVAL, harness.write_file, cfg_path, text, os.O_WRONLY | os.O_TRUNC)
                self.assertEqual(harness.read_text(cfg_path), before, "config changed by a refused write")
                self.assertEqual(harness.read_text(D.tpl("default", "identity")), ident)
                self.assertEqual(D.template_status()["state"], tstate)
        # a refused config leaves restores working
        try:
            st = D.create_ready("after-bad-config")
            self.assertEqual(st["path"], "restore")
        finally:
            D.destroy("after-bad-config")
        D.assert_inventory(BASE)


if __name__ == "__main__":
    harness.main()
