#!/usr/bin/env python3
"""
The python template (docs/templates.md, "The python image"): the image that
contrib/build-python-image.sh builds from Debian's packages (cached
machine-wide; the script exits 77 when the Debian archive cannot be reached,
and this test then skips with its reason), as a template
{"image": REF, "mem_mib": 512}.

- The guest runs Debian's Python 3.11 as the image's config says: user root,
  workdir /root, its Env (PYTHONUNBUFFERED, PIP_BREAK_SYSTEM_PACKAGES, ...).
- pip installs a wheel offline: a minimal pure-Python wheel made here with
  zipfile (package, METADATA, WHEEL, RECORD with hashes) is copied into the
  guest through live/NAME/tmp/, `pip install --no-index` installs it into
  /usr/local/lib/python3.11/dist-packages, and it imports. Another sandbox
  of the template does not have it.
- A second bake with unchanged inputs reuses the disk made for the image:
  its status timings have "cached" and neither "unpack" nor "mkfs", and the
  build part takes less than the first bake's unpack and mkfs.
- A daemon killed (kill -9) while umoci unpacks the image (a wide window:
  about 10 s): umoci dies with it, and the next start on the same state dir
  removes the half-made disk (images/disks/*.tmp); the template is "new".
"""
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import unittest
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCRIPT = os.path.join(harness.REPO, "contrib", "build-python-image.sh")
BUILD_TIMEOUT = 1200  # a cold image build: about 80 s here, bounded by the script itself (900 s)
BAKE_TIMEOUT = 600  # the first bake unpacks and formats about 250 MiB
T = "py"
SB = "py1"
PKG, VERSION = "emberfs_wheeltest", "1.0"
WHEEL = "%s-%s-py3-none-any.whl" % (PKG, VERSION)

D = BASE = REF = None
FIRST = None  # the first bake's status


def python_image_ref():
    """The image's reference (the script's last stdout line); SkipTest with its reason on exit 77."""
    try:
        r = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s took more than %d s" % (SCRIPT, BUILD_TIMEOUT)) from None
    if r.returncode == harness.SKIP_EXIT:
        why = r.stderr.strip().splitlines()
        raise unittest.SkipTest("build-python-image.sh: %s" % (why[-1] if why else "exit 77"))
    if r.returncode != 0:
        raise AssertionError("%s: exit %d:\n%s" % (SCRIPT, r.returncode, r.stderr[-3000:]))
    ref = r.stdout.strip().splitlines()[-1]
    if not ref.startswith("oci:/"):
        raise AssertionError("%s printed %r, not an oci: reference" % (SCRIPT, ref))
    return ref


def bake(verb):
    harness.write_file(D.tpl(T, "ctl"), verb + "\n")
    out = {}
    th = threading.Thread(target=lambda: out.update(log=harness.read_text(D.tpl(T, "build.log"))), daemon=True)
    th.start()
    th.join(BAKE_TIMEOUT)  # `cat build.log` returns when the bake is over; a bake that hangs fails the test
    if "log" not in out:
        raise AssertionError("bake of %s: build.log unreadable or still open after %d s: %s\n%s" % (
            T, BAKE_TIMEOUT, D.template_status(T), D.log_tail()))
    log = out["log"]
    st = D.template_status(T)
    if st["state"] != "ready" or st["error"] is not None:
        raise AssertionError("bake of %s: %s, %s\n--- build.log ---\n%s\n%s" % (
            T, st["state"], st["error"], log[-3000:], D.log_tail()))
    return log, st


def setUpModule():
    global D, BASE, REF, FIRST
    REF = python_image_ref()
    D, BASE = harness.start_shared()
    os.mkdir(D.tpl(T))
    harness.write_file(D.tpl(T, "config"), json.dumps({"image": REF, "mem_mib": 512}))
    _, FIRST = bake("bake")


def tearDownModule():
    if D is None:
        return
    try:
        if os.path.isdir(D.tpl(T)):
            for n in D.sandboxes(t=T):
                D.destroy(n, t=T)
            os.rmdir(D.tpl(T))
        D.assert_inventory(BASE, timeout=30)
    finally:
        D.stop()


def record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel():
    """A minimal pure-Python wheel (PEP 427): the package, METADATA, WHEEL, RECORD."""
    di = "%s-%s.dist-info" % (PKG, VERSION)
    files = {
        PKG + "/__init__.py": b'X = "hello from the wheel"\n',
        di + "/METADATA": ("Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: emberfs test\n"
                           % (PKG, VERSION)).encode(),
        di + "/WHEEL": b"Wheel-Version: 1.0\nGenerator: test_python.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join("%s,%s,%d\n" % (n, record_hash(d), len(d)) for n, d in files.items()) + di + "/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(di + "/RECORD", record)
    return buf.getvalue()


class Python(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        D.create_ready(SB, t=T)

    def sh(self, cmd, name=SB):
        return D.sh(name, cmd, t=T)

    def test_a_python_runs_as_the_image_says(self):
        out = self.sh('python3 -c "import sys; print(sys.version)"')
        self.assertRegex(out, r"^3\.11\.\d+ ")
        self.assertEqual(self.sh("id -un; pwd"), "root\n/root\n")
        self.assertEqual(self.sh("echo $PYTHONUNBUFFERED $PIP_BREAK_SYSTEM_PACKAGES $LANG"), "1 1 C.UTF-8\n")
        b = D.template_status(T)["build"]
        self.assertEqual((b["user"], b["workdir"], b["cmd"]), ("root", "/root", ["python3"]))
        # the standard library pieces the image promises
        self.assertEqual(self.sh("python3 -c 'import ssl, venv, sqlite3, zoneinfo; print(\"ok\")'"), "ok\n")

    def test_b_pip_installs_a_wheel_offline(self):
        whl = make_wheel()
        with open(os.path.join(D.sb(SB, "root", t=T), "tmp", WHEEL), "wb") as f:
            f.write(whl)
        self.assertEqual(self.sh("sha256sum /tmp/%s" % WHEEL).split()[0], hashlib.sha256(whl).hexdigest())
        r = D.exec_json(SB, {"sh": "pip install --no-index /tmp/%s" % WHEEL}, t=T)
        self.assertEqual(r["exit_code"], 0, r)
        # pip prints the project name normalized (PEP 503: "_" -> "-")
        self.assertIn(b"Successfully installed %s-%s\n" % (PKG.replace("_", "-").encode(), VERSION.encode()),
                      r["stdout"])
        self.assertEqual(self.sh("python3 -c 'import %s; print(%s.X)'" % (PKG, PKG)), "hello from the wheel\n")
        self.assertEqual(self.sh("python3 -c 'import %s; print(%s.__file__)'" % (PKG, PKG)),
                         "/usr/local/lib/python3.11/dist-packages/%s/__init__.py\n" % PKG)
        # a sandbox of its own: restored from the snapshot, without what another one installed
        D.create_ready("py2", t=T)
        try:
            r = D.exec_json("py2", {"sh": "python3 -c 'import %s'" % PKG}, t=T)
            self.assertNotEqual(r["exit_code"], 0, r)
            self.assertIn(b"ModuleNotFoundError", r["stderr"])
        finally:
            D.destroy("py2", t=T)

    def test_c_second_bake_reuses_the_disk(self):
        first = FIRST["bake"]["timings"]
        self.assertIn("unpack", first)
        self.assertIn("mkfs", first)
        log, st = bake("rebake")
        tm = st["bake"]["timings"]
        self.assertIn("cached", tm)
        self.assertNotIn("unpack", tm)
        self.assertNotIn("mkfs", tm)
        self.assertIn("(made before for this image)", log)
        self.assertNotEqual(st["bake"]["baked_at"], FIRST["bake"]["baked_at"])
        self.assertEqual(st["build"]["disk"], FIRST["build"]["disk"])
        self.assertLess(tm["pull"] + tm["cached"], first["unpack"] + first["mkfs"], (tm, first))
        # the rebaked snapshot serves
        D.create_ready("py3", t=T)
        try:
            self.assertEqual(self.sh("python3 -c 'print(6 * 7)'", name="py3"), "42\n")
        finally:
            D.destroy("py3", t=T)


class Crash(harness.TestCase):
    def test_killed_daemon_leaves_no_build_behind(self):
        """kill -9 of the daemon while umoci unpacks the image (about 250 MiB): the tool dies with the daemon,
        and the next start on the state dir removes the half-made disk."""
        d = harness.Daemon().start()
        d2 = None
        try:
            os.mkdir(d.tpl("pyk"))
            harness.write_file(d.tpl("pyk", "config"), json.dumps({"image": REF, "mem_mib": 512}))
            harness.write_file(d.tpl("pyk", "ctl"), "bake\n")
            fd = os.open(d.tpl("pyk", "build.log"), os.O_RDONLY)  # follows the bake
            log = b""
            try:
                while b"unpack: umoci unpack" not in log:
                    b = os.read(fd, 65536)
                    if not b:
                        raise AssertionError("the bake ended before the unpack: %r" % log)
                    log += b
            finally:
                os.close(fd)
            tools = harness.wait_for(lambda: [p for p in harness.all_pids()
                                              if os.path.basename((harness.proc_cmdline(p) or [""])[0]) == "umoci"
                                              and any(d.state in a for a in harness.proc_cmdline(p))],
                                     20, "umoci unpacking into the store")
            disks = os.path.join(d.state, "store", "images", "disks")
            self.assertEqual(len([n for n in os.listdir(disks) if n.endswith(".tmp")]), 1, os.listdir(disks))
            d.kill9()
            for p in tools:  # at once: its unpack takes about 10 s more
                self.assertTrue(harness.wait_pid_gone(p, timeout=2), "umoci %d outlived the daemon" % p)
            d2 = harness.Daemon(reuse=d).start()
            self.assertEqual(os.listdir(disks), [])
            st = d2.template_status("pyk")
            self.assertEqual((st["state"], st.get("phase")), ("new", None), st)
            os.rmdir(d2.tpl("pyk"))
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()


if __name__ == "__main__":
    harness.main()
