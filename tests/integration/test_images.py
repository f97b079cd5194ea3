#!/usr/bin/env python3
"""
Templates from OCI images and Dockerfiles, against a real daemon and real
guests (docs/templates.md; config "image", "disk_mib", "context", "start",
"ready"; templates/T/Dockerfile, templates/T/build.log).

The test makes its own image (no registry, no network): umoci builds an OCI
layout of two layers around the host's static busybox and the static fsops.
Layer 1 has a symlink (relative and absolute), a hard link, a setuid file, a
file owned by uid 1000, a file with user.* xattrs (one binary), a file and a
directory layer 2 changes; layer 2 (a tar written here, added verbatim) has a
whiteout (.wh.gone.txt) and an opaque directory (.wh..wh..opq), changes a
file and adds one. The image's config: Env, WorkingDir /data, User app
(uid 1000, a member of group extra), Cmd.

- ImageTree: a template of oci:LAYOUT:t; inside the guest (exec, as root)
  fsops lstat/readlink/read/readdir/listxattr/getxattr of every path of the
  image equals the same ops run on the host over umoci's own unpack of the
  image, and `find / -xdev` lists exactly the image's paths (plus
  lost+found and /etc/machine-id, which mkfs and the guest's agent make);
  explicit checks of the whiteout, the opaque dir, links, setuid, owner and
  xattrs with busybox's stat and fsops. xattrs are read inside the guest
  with fsops because busybox has no getfattr and live/ serves no xattrs
  (ENOTSUP). The image's Env/WorkingDir/User are the defaults of exec and of
  procs/; exec's "user" (name, uid:gid, a uid without an entry, an unknown
  name: EINVAL), "env" and "cwd" override them per exec; permissions follow
  the users. Status "build" shows the image's config and digest.
- StartCommand: the same template has "start" (busybox httpd) and "ready":
  {"tcp": 8080}: a restored sandbox answers on the port, procs/start is the
  bake's process (same pid as status bake.start.pid, the only httpd in the
  guest, running as the image's user). A start command that exits at once
  fails its bake with its exit code named and its output in build.log. A
  "warm" command runs at the bake and again in each warm slot (as the
  image's user); one that fails fails the bake, named.
- DockerArchive: the same image as a `docker save` archive (skopeo), with
  "disk_mib": 192: its build.log, opened right after `echo bake > ctl` and
  read in a thread, gives data while the template is baking and EOF once it
  is ready, and all of it (MOUNT/events shows the phases in order); config,
  Dockerfile, ctl and rmdir are EBUSY meanwhile; `bake` again bakes
  nothing. The guest's tree is the same, its root file system is 192 MiB.
  Then a config change makes it stale: a sandbox boots cold from the built
  disk and must still run with the image's env, workdir and user, also
  after stop and start.
- Dockerfile: ARG before FROM ${BASE} (the test's image), USER, ARG, ENV
  (values expanded as before the instruction, as Docker does), WORKDIR,
  COPY (a file, a directory with a symlink and a hard link), ADD of a tar.gz
  (owners, links), COPY --chown/--chmod, RUN; the guest shows the results;
  editing the last RUN rebuilds that step only (build.log CACHED lines,
  status build.steps "cached"); new content in a context file rebuilds
  from its COPY on; a failing RUN keeps the old snapshot serving
  (state ready, error names the line and the exit code, restore and warm
  creates see the old content); VOLUME fails close() with EINVAL, status
  error names it, the stored Dockerfile is unchanged; FROM another
  template; an empty Dockerfile removes it.
- BadInputs: malformed refs (EINVAL at the config write, config unchanged);
  found at bake (state failed, the reason in status error, a sandbox of the
  template fails with EIO instead of booting a guest without the image):
  a missing layout, an unknown tag, a blob that does not match its digest,
  a docker-archive of garbage bytes or missing, an image too large for
  "disk_mib", an unreachable registry (bounded: under 60 s); unsupported
  Dockerfile instructions (EINVAL at close, nothing stored). After each:
  the harness inventory is back to its baseline and the state directory
  holds exactly the files it held before (no *.tmp, no layouts/ of a failed
  fetch, no run/ or build dirs). At the end no template is left in the
  store and no half-made file anywhere in the state dir.
"""
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

FSOPS = os.environ.get("EMBERFS_FSOPS") or os.path.join(harness.REPO, "build", "tests", "integration", "fsops")
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "id", "stat", "nc", "httpd", "find", "readlink", "printf", "echo", "env", "pwd",
           "sleep", "test", "true", "false", "mkdir", "rm", "kill", "wc", "sort", "head", "sync", "touch", "chmod",
           "ln", "mv", "cp", "grep", "sed", "tr", "whoami", "uname", "hostname", "ps", "pidof", "exit")
PORT = 8080
MOUNTPOINTS = ("proc", "sys", "dev", "tmp", "run")  # the guest mounts its own file systems there
AGENT_ADDS = {"lost+found", "etc/machine-id"}  # mkfs's lost+found; the agent's machine-id link

D = BASE = None
WORK = None  # the test's own temp dir: layouts, archives, contexts
LAYOUT = None  # the test's OCI layout (tag "t")
EXPECTED = None  # umoci's unpack of LAYOUT:t on the host: the tree every guest must show
IMG = "img"  # the template of LAYOUT:t (with the start command), shared by ImageTree and StartCommand


# ---------------------------------------------------------------------------
# the image

def run(*argv, **kw):
    r = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError("%s: exit %d: %s%s" % (" ".join(argv), r.returncode, r.stdout, r.stderr))
    return r.stdout


def put(path, data, mode=0o644, uid=0, gid=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chown(path, uid, gid)  # before the chmod: a chown clears set-id bits
    os.chmod(path, mode)


def tar_layer(path, entries):
    """A layer tar of (name, data or None for a directory, mode)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data, mode in entries:
            i = tarfile.TarInfo(name)
            i.mode, i.mtime = mode, 1700000000
            if data is None:
                i.type = tarfile.DIRTYPE
                t.addfile(i)
            else:
                i.size = len(data)
                t.addfile(i, io.BytesIO(data))


def build_image(root):
    """The test's OCI layout at root/layout (tag t); returns its path."""
    layout = os.path.join(root, "layout")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", layout + ":t")
    b1 = os.path.join(root, "bundle1")
    run("umoci", "unpack", "--image", layout + ":t", b1)
    r = os.path.join(b1, "rootfs")
    for d in ("bin", "etc", "root", "www") + MOUNTPOINTS:
        os.makedirs(os.path.join(r, d), exist_ok=True)
    os.chmod(os.path.join(r, "tmp"), 0o1777)
    os.chmod(os.path.join(r, "root"), 0o700)
    shutil.copy2(BUSYBOX, os.path.join(r, "bin", "busybox"))
    shutil.copy2(FSOPS, os.path.join(r, "bin", "fsops"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(r, "bin", a))
    put(r + "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
                           "other:x:1001:1001::/home/other:/bin/sh\n")
    put(r + "/etc/group", "root:x:0:\napp:x:1000:\nother:x:1001:\nextra:x:2000:app\n")
    for user, uid in (("app", 1000), ("other", 1001)):
        os.makedirs(r + "/home/" + user)
        os.chown(r + "/home/" + user, uid, uid)
        os.chmod(r + "/home/" + user, 0o750)
    put(r + "/www/x", "served by httpd\n")
    d = r + "/data"
    put(d + "/gone.txt", "whited out by layer 2\n")
    put(d + "/opq/old1", "old1\n")
    put(d + "/opq/old2", "old2\n")
    put(d + "/file.txt", "hello v1\n")
    os.symlink("file.txt", d + "/link")
    os.symlink("/data/file.txt", d + "/abs")
    put(d + "/hard1", "linked\n")
    os.link(d + "/hard1", d + "/hard2")
    put(d + "/suid", "#!/bin/sh\necho suid\n", 0o4755)
    put(d + "/owned", "mine\n", 0o640, 1000, 1000)
    put(d + "/xattr", "has attrs\n")
    os.setxattr(d + "/xattr", "user.emberfs.test", b"value 1")
    os.setxattr(d + "/xattr", "user.bin", b"\x00\x01\xffbin")
    run("umoci", "repack", "--image", layout + ":t", b1)
    shutil.rmtree(b1)
    # layer 2, written here so that it holds a whiteout and an opaque directory
    # (umoci repack writes one whiteout per removed file, never an opaque dir)
    l2 = os.path.join(root, "layer2.tar")
    tar_layer(l2, [("data/", None, 0o755),
                   ("data/.wh.gone.txt", b"", 0o644),
                   ("data/opq/", None, 0o755),
                   ("data/opq/.wh..wh..opq", b"", 0o644),
                   ("data/opq/new1", b"new1\n", 0o644),
                   ("data/file.txt", b"hello v2\n", 0o644),
                   ("data/layer2.txt", b"second layer\n", 0o644)])
    run("umoci", "raw", "add-layer", "--image", layout + ":t", l2)
    os.unlink(l2)
    run("umoci", "config", "--image", layout + ":t", "--config.env", "GREETING=hello world",
        "--config.env", "PATH=/bin", "--config.workingdir", "/data", "--config.user", "app",
        "--config.cmd", "/bin/sh")
    run("umoci", "gc", "--layout", layout)
    return layout


def layers_of(layout, tag="t"):
    """[names in each layer's tar] of layout:tag."""
    idx = json.load(open(os.path.join(layout, "index.json")))
    m = [x for x in idx["manifests"] if x.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag][0]
    man = json.load(open(os.path.join(layout, "blobs", "sha256", m["digest"][7:])))
    out = []
    for ly in man["layers"]:
        with tarfile.open(os.path.join(layout, "blobs", "sha256", ly["digest"][7:])) as t:
            out.append(t.getnames())
    return out


def image_paths(rootfs):
    """Every path of an unpacked image, relative, sorted (mount points' contents excluded)."""
    out = []
    for dirpath, dirs, files in os.walk(rootfs):
        rel = os.path.relpath(dirpath, rootfs)
        for n in dirs + files:
            out.append(n if rel == "." else rel + "/" + n)
    return sorted(out)


def fsops_script(rootfs):
    """fsops ops describing every path of the image (as the host sees umoci's unpack of it)."""
    lines = []
    for p in image_paths(rootfs):
        if p in MOUNTPOINTS:
            continue  # the guest's own file systems are mounted there
        full = os.path.join(rootfs, p)
        lines.append("lstat " + p)
        if os.path.islink(full):
            lines.append("readlink " + p)
        elif os.path.isdir(full):
            lines.append("readdir " + p)
        else:
            lines.append("read " + p)
        lines.append("listxattr " + p)
        for x in sorted(os.listxattr(full, follow_symlinks=False)):
            lines.append("getxattr %s %s" % (p, x))
    return "\n".join(lines) + "\n"


def normalize_fsops(out):
    """Directory sizes depend on the file system (ext4 with 1 KiB blocks in the guest): not compared."""
    return [re.sub(r" size=\d+", "", l) if l.startswith("ok dir ") else l for l in out.splitlines()]


def expected_fsops(script):
    """The host's answers for the image, with what the agent adds in the guest's directories
    (AGENT_ADDS below the root: /etc/machine-id) listed by their readdir."""
    want = normalize_fsops(host_fsops(EXPECTED, script))
    ops = script.splitlines()
    for add in AGENT_ADDS:
        parent, name = os.path.split(add)
        if not parent:
            continue
        i = ops.index("readdir " + parent)
        names = want[i].split()[1:]
        want[i] = " ".join(["ok"] + sorted(names + [name]))
    return want


def host_fsops(rootfs, script):
    r = subprocess.run([FSOPS, rootfs], input=script, capture_output=True, text=True, check=True)
    return r.stdout


def guest_fsops(name, t, script):
    """The same ops inside the guest, as root, on its own root (the script goes in through live/)."""
    with open(D.sb(name, "root", t=t) + "/tmp/ops.txt", "w") as f:
        f.write(script)
    r = D.exec_json(name, {"sh": "fsops / < /tmp/ops.txt", "user": "root"}, t=t)
    if r["exit_code"] != 0:
        raise AssertionError("fsops in the guest: %r" % r)
    return r["stdout"].decode()


def guest_listing(name, t):
    """`find / -xdev` in the guest, as root: its root file system's paths, relative."""
    r = D.exec_json(name, {"sh": "find / -xdev", "user": "root"}, t=t)
    if r["exit_code"] != 0:
        raise AssertionError("find in the guest: %r" % r)
    return sorted(p[1:] for p in r["stdout"].decode().splitlines() if p != "/")


# ---------------------------------------------------------------------------
# templates

def write_config(t, cfg):
    harness.write_file(D.tpl(t, "config"), json.dumps(cfg))


def write_dockerfile(t, text):
    """`printf TEXT > Dockerfile`: applied at close (close raises its error)."""
    harness.write_file(D.tpl(t, "Dockerfile"), text, flags=os.O_WRONLY | os.O_TRUNC)


def read_build_log(t, timeout=harness.BAKE_TIMEOUT):
    """`cat build.log`: blocks while the bake runs (in a thread: a bake that hangs fails the test instead)."""
    out = {}

    def reader():
        try:
            out["log"] = harness.read_text(D.tpl(t, "build.log"))
        except OSError as e:
            out["error"] = e

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise AssertionError("build.log of %s still open after %.0f s: %s\n%s" % (
            t, timeout, D.template_status(t), D.log_tail()))
    if "error" in out:
        raise out["error"]
    return out["log"]


def bake(t, verb="bake"):
    """echo bake > ctl, then `cat build.log` (returns when the bake is over); (log, status)."""
    harness.write_file(D.tpl(t, "ctl"), verb + "\n")
    log = read_build_log(t)
    return log, D.template_status(t)


def bake_ready(t, verb="bake"):
    log, st = bake(t, verb)
    if st["state"] != "ready" or st["error"] is not None:
        raise AssertionError("bake of %s: state %s, error %s\n--- build.log ---\n%s\n%s" % (
            t, st["state"], st["error"], log[-3000:], D.log_tail()))
    return log, st


def remove_template(t):
    if not os.path.isdir(D.tpl(t)):
        return
    for n in D.sandboxes(t=t):
        D.destroy(n, t=t)
    os.rmdir(D.tpl(t))


# made on first use and kept: the image caches' roots, the per-VM dirs' root
CACHE_ROOTS = {"store/images", "store/images/layouts", "store/images/disks", "store/build-cache", "store/vms"}


def state_files():
    """Every path in the daemon's state dir but the per-VM dirs of sandboxes (they come and go with
    them) and the roots of the image caches (made on first use)."""
    out = set()
    for dirpath, dirs, files in os.walk(D.state):
        rel = os.path.relpath(dirpath, D.state)
        if rel == os.path.join("store", "vms") or rel.startswith(os.path.join("store", "vms") + os.sep):
            continue
        for n in dirs + files:
            p = os.path.normpath(os.path.join(rel, n))
            if p not in CACHE_ROOTS:
                out.add(p)
    return out


def temp_leftovers():
    """Files of the state dir whose names say they are half-made."""
    return sorted(p for p in state_files()
                  if p.endswith(".tmp") or ".tmp/" in p or p.endswith(".new") or "/snapshot.new" in p)


def setUpModule():
    global D, BASE, WORK, LAYOUT, EXPECTED
    for tool in ("umoci", "skopeo", "mkfs.ext4"):
        if not shutil.which(tool):
            raise unittest.SkipTest("%s missing (the daemon's image builds need it)" % tool)
    if not os.access(FSOPS, os.X_OK):
        raise AssertionError("fsops not built: %s (ninja -C build)" % FSOPS)
    WORK = tempfile.mkdtemp(prefix="efimg", dir="/tmp")
    LAYOUT = build_image(WORK)
    EXPECTED = os.path.join(WORK, "expected", "rootfs")
    run("umoci", "unpack", "--image", LAYOUT + ":t", os.path.dirname(EXPECTED))
    D, BASE = harness.start_shared()
    os.mkdir(D.tpl(IMG))
    write_config(IMG, {"image": "oci:%s:t" % LAYOUT, "start": "httpd -f -p %d -h /www" % PORT,
                       "ready": {"tcp": PORT}})
    bake_ready(IMG)


def tearDownModule():
    try:
        if D is not None:
            try:
                for t in os.listdir(os.path.join(D.mount, "templates")):
                    if t != "default":
                        remove_template(t)
                for n in D.sandboxes():
                    D.destroy(n)
                D.assert_inventory(BASE, timeout=30)
                # removed templates leave nothing of theirs (build.log, build.json, snapshots)
                tdir = os.path.join(D.state, "store", "templates")
                if sorted(os.listdir(tdir)) != ["default"]:
                    raise AssertionError("templates left in the store: %s" % sorted(os.listdir(tdir)))
                left = temp_leftovers()
                if left:
                    raise AssertionError("half-made files left in the state dir: %s" % left)
            finally:
                D.stop()
    finally:
        if WORK:
            shutil.rmtree(WORK, ignore_errors=True)


# ---------------------------------------------------------------------------

class ImageTree(harness.TestCase):
    """The guest of an OCI image sees exactly the image's tree, and runs as its config says."""

    SB = "tree"

    @classmethod
    def setUpClass(cls):
        D.create_ready(cls.SB, t=IMG)

    @classmethod
    def tearDownClass(cls):
        D.destroy(cls.SB, t=IMG)

    def sh(self, cmd):
        return D.sh(self.SB, cmd, t=IMG)

    def test_layers_hold_what_is_tested(self):
        # the test image really has a whiteout, an opaque dir, a hard link and xattrs in its layers
        l1, l2 = layers_of(LAYOUT)
        self.assertIn("data/gone.txt", l1)
        self.assertIn("data/opq/old1", l1)
        self.assertIn("data/.wh.gone.txt", l2)
        self.assertIn("data/opq/.wh..wh..opq", l2)
        self.assertEqual(sorted(os.listxattr(EXPECTED + "/data/xattr")), ["user.bin", "user.emberfs.test"])
        self.assertEqual(os.stat(EXPECTED + "/data/hard1").st_ino, os.stat(EXPECTED + "/data/hard2").st_ino)

    def test_same_tree_as_the_image(self):
        script = fsops_script(EXPECTED)
        want = expected_fsops(script)
        got = normalize_fsops(guest_fsops(self.SB, IMG, script))
        self.assertEqual(len(got), len(want))
        for w, g, op in zip(want, got, [l for l in script.splitlines()]):
            self.assertEqual(g, w, "fsops %s: guest %r, image %r" % (op, g, w))
        self.assertFalse([l for l in want if l.startswith(("err", "bad"))], want)
        # nothing more, nothing less: the image's paths, plus what mkfs and the agent add
        self.assertEqual(guest_listing(self.SB, IMG), sorted(set(image_paths(EXPECTED)) | AGENT_ADDS))

    def test_whiteout_opaque_links_modes_owners(self):
        self.assertEqual(self.sh("ls -a /data | sort"),
                         ".\n..\nabs\nfile.txt\nhard1\nhard2\nlayer2.txt\nlink\nopq\nowned\nsuid\nxattr\n")
        self.assertEqual(self.sh("ls -a /data/opq | sort"), ".\n..\nnew1\n")  # old1, old2 hidden by the opaque dir
        self.assertEqual(self.sh("cat /data/file.txt /data/link /data/abs /data/layer2.txt /data/opq/new1"),
                         "hello v2\nhello v2\nhello v2\nsecond layer\nnew1\n")
        self.assertEqual(self.sh("readlink /data/link; readlink /data/abs"), "file.txt\n/data/file.txt\n")
        self.assertEqual(self.sh("stat -c '%F %a %U:%G %u:%g %h' /data/suid /data/owned /data/hard1 /data/link"),
                         "regular file 4755 root:root 0:0 1\n"
                         "regular file 640 app:app 1000:1000 1\n"
                         "regular file 644 root:root 0:0 2\n"
                         "symbolic link 777 root:root 0:0 1\n")
        self.assertEqual(self.sh("stat -c %i /data/hard1"), self.sh("stat -c %i /data/hard2"))
        self.assertEqual(self.sh("stat -c '%a %U' /root /tmp /home/app"), "700 root\n1777 root\n750 app\n")
        # the image user's own home (uid 1000, 0750) is writable for it
        self.assertEqual(self.sh("echo more >> /home/app/x && cat /home/app/x && rm /home/app/x"), "more\n")
        self.assertEqual(self.sh("test -e /data/gone.txt || echo gone"), "gone\n")

    def test_xattrs_inside_the_guest(self):
        # busybox has no getfattr and live/ serves no xattrs (ENOTSUP): fsops reads them in the guest
        r = D.exec_json(self.SB, {"sh": "printf 'listxattr /data/xattr\\ngetxattr /data/xattr user.emberfs.test\\n"
                                        "getxattr /data/xattr user.bin\\nlistxattr /data/file.txt\\n' | fsops /"},
                        t=IMG)
        self.assertEqual(r["exit_code"], 0, r)
        self.assertEqual(r["stdout"].decode(), "ok user.bin user.emberfs.test\nok 7 value%201\nok 6 %00%01%FFbin\nok\n")

    def test_image_env_workdir_user_are_exec_defaults(self):
        self.assertEqual(self.sh("id -un; id -u; id -G; pwd; echo \"$GREETING\"; echo \"$HOME\"; echo $PATH"),
                         "app\n1000\n1000 2000\n/data\nhello world\n/home/app\n/bin\n")
        # the sandbox's own variables are there too
        self.assertEqual(self.sh("echo $EMBERFS_SANDBOX $EMBERFS_TEMPLATE"), "%s %s\n" % (self.SB, IMG))
        # permissions follow the image's user: app reads its own 0640 file, not root's 0700 /root
        self.assertEqual(self.sh("cat /data/owned"), "mine\n")
        out, ok = D.exec_plain(self.SB, "ls /root", t=IMG)
        self.assertFalse(ok, out)
        self.assertIn(b"Permission denied", out)
        out, ok = D.exec_plain(self.SB, "touch /data/new", t=IMG)  # /data is root's 0755
        self.assertFalse(ok, out)

    def test_exec_user_env_cwd_override(self):
        cases = [
            ({"user": "root"}, "root\n0\n0\n/data\nhello world\n/root\n"),
            ({"user": "other"}, "other\n1001\n1001\n/data\nhello world\n/home/other\n"),
            ({"user": "1001:2000"}, "other\n1001\n2000\n/data\nhello world\n"),  # ids only: see below
            ({"user": "root", "cwd": "/www", "env": {"GREETING": "over"}}, "root\n0\n0\n/www\nover\n/root\n"),
        ]
        # a uid no passwd entry names: gid = uid, no other group (Docker's rule)
        r = D.exec_json(self.SB, {"sh": "id -u; id -g; id -G; pwd", "user": "4242"}, t=IMG)
        self.assertEqual((r["exit_code"], r["stdout"]), (0, b"4242\n4242\n4242\n/data\n"), r)
        for extra, want in cases:
            req = dict({"sh": "id -un; id -u; id -G; pwd; echo \"$GREETING\"; echo \"$HOME\""}, **extra)
            r = D.exec_json(self.SB, req, t=IMG)
            self.assertEqual(r["exit_code"], 0, (extra, r))
            out = r["stdout"].decode()
            if extra.get("user") == "1001:2000":
                # the docs say what a name and a bare uid get for HOME, not a uid:gid: not checked
                out = "\n".join(out.splitlines()[:5]) + "\n"
            self.assertEqual(out, want, extra)
        # other may not read app's 0640 file; root may
        r = D.exec_json(self.SB, {"sh": "cat /data/owned", "user": "other"}, t=IMG)
        self.assertNotEqual(r["exit_code"], 0, r)
        self.assertIn(b"Permission denied", r["stderr"])
        r = D.exec_json(self.SB, {"sh": "cat /data/owned", "user": "root"}, t=IMG)
        self.assertEqual((r["exit_code"], r["stdout"]), (0, b"mine\n"), r)
        # a user the image's /etc/passwd does not name: the exec fails with EINVAL (docs/protocol.md, "user")
        self.assertErrno(errno.EINVAL, D.exec_json, self.SB, {"sh": "true", "user": "nosuchuser"}, t=IMG)
        # the override is per exec: the next one runs as the image's user again
        self.assertEqual(self.sh("id -un"), "app\n")

    def test_procs_run_with_the_image_config(self):
        p = D.sb(self.SB, "procs", "p1", t=IMG)
        os.mkdir(p)
        try:
            harness.write_file(p + "/cmd", "id -un; pwd; echo \"$GREETING\"\n")
            with open(p + "/stdout", "rb", buffering=0) as f:
                out = b""
                while True:
                    b = f.read(65536)
                    if not b:
                        break
                    out += b
            self.assertEqual(out.decode(), "app\n/data\nhello world\n")
            st = harness.wait_for(lambda: (lambda s: s if s["state"] == "exited" else None)(
                harness.read_json(p + "/status")), 30, "p1 exited")
            self.assertEqual(st["exit_code"], 0, st)
        finally:
            os.rmdir(p)

    def test_status_names_the_image_config(self):
        st = D.template_status(IMG)
        b = st["build"]
        self.assertEqual((b["env"], b["workdir"], b["user"], b["cmd"], b["entrypoint"]),
                         (["GREETING=hello world", "PATH=/bin"], "/data", "app", ["/bin/sh"], []))
        idx = json.load(open(os.path.join(LAYOUT, "index.json")))
        self.assertEqual(b["digest"], idx["manifests"][0]["digest"])
        for k in ("pull", "unpack", "mkfs", "boot", "start", "snapshot"):
            self.assertIn(k, st["bake"]["timings"], st["bake"]["timings"])


class StartCommand(harness.TestCase):
    """config "start" + "ready": the process runs in the snapshot, and so in every sandbox."""

    def test_restored_sandbox_serves_and_keeps_the_bake_process(self):
        st = D.template_status(IMG)
        pid = st["bake"]["start"]["pid"]
        self.assertIsInstance(pid, int)
        self.assertEqual(st["bake"]["start"]["cmd"], "httpd -f -p %d -h /www" % PORT)
        for name in ("web1", "web2"):
            s = D.create_ready(name, t=IMG)
            self.assertEqual(s["path"], "restore", s)
            out = D.sh(name, "printf 'GET /x HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 %d" % PORT, t=IMG)
            self.assertIn("200 OK", out.splitlines()[0])
            self.assertTrue(out.endswith("\r\n\r\nserved by httpd\n"), out)
            ps = harness.read_json(D.sb(name, "procs", "start", "status", t=IMG))
            self.assertEqual((ps["state"], ps["pid"]), ("running", pid), ps)
            # the snapshot's httpd, not a second one; as the image's user
            self.assertEqual(D.sh(name, "pidof httpd", t=IMG), "%d\n" % pid)
            self.assertEqual(D.sh(name, "stat -c %%U /proc/%d" % pid, t=IMG), "app\n")
            D.destroy(name, t=IMG)

    def test_start_command_that_exits_fails_the_bake(self):
        t = "badstart"
        os.mkdir(D.tpl(t))
        try:
            D.expect_log_error(r"template badstart: bake failed at start .*: start command exited before it was ready")
            write_config(t, {"image": "oci:%s:t" % LAYOUT, "start": "echo dying; echo because >&2; exit 7",
                             "ready": {"tcp": PORT}})
            t0 = time.monotonic()
            log, st = bake(t)
            self.assertLess(time.monotonic() - t0, 120)
            self.assertEqual(st["state"], "failed", st)
            self.assertIn("start command exited before it was ready", st["error"])
            self.assertIn("exit code 7", st["error"])
            self.assertIn("start: echo dying; echo because >&2; exit 7", log)
            # "see the build log": the command's own output (stdout, stderr) is there
            self.assertIn("\ndying\nbecause\n", log)
            self.assertTrue(log.endswith("\n"), log)
            self.assertIn("== failed", log)
        finally:
            remove_template(t)


    def test_warm_command_runs_at_bake_and_in_each_warm_slot(self):
        t = "warmt"
        os.mkdir(D.tpl(t))
        try:
            cmd = "echo warm $(id -un) $(pwd) >> /home/app/warm.log"
            write_config(t, {"image": "oci:%s:t" % LAYOUT, "warm": cmd})
            log, st = bake_ready(t)
            self.assertIn("warm: %s\n" % cmd, log)
            self.assertIn("warm", st["bake"]["timings"])
            # restored: the bake's run only (as the image's user, in its workdir)
            D.create_ready("wr", t=t)
            self.assertEqual(D.sh("wr", "cat /home/app/warm.log", t=t), "warm app /data\n")
            # a warm slot ran it once more before it was offered
            D.set_pool(1, t=t)
            D.wait_pool(1, t=t)
            s = D.create_ready("ww", t=t)
            self.assertEqual(s["path"], "warm", s)
            self.assertEqual(D.sh("ww", "cat /home/app/warm.log", t=t), "warm app /data\nwarm app /data\n")
            D.set_pool(0, t=t)
            D.wait_pool(0, t=t)
            # a warm command that fails fails the bake, and says which command it was
            D.expect_log_error(r"template warmt: bake failed at warm .*: warm command: ")
            write_config(t, {"image": "oci:%s:t" % LAYOUT, "warm": "echo warming; exit 4"})
            log, st = bake(t)
            self.assertEqual(st["state"], "failed", st)
            self.assertIn("warm command: ", st["error"])
            self.assertIn("exit code 4", st["error"])
            self.assertIn("warming\n", log)
        finally:
            remove_template(t)


class DockerArchive(harness.TestCase):
    """The same image as a docker-archive tarball; its bake's log streams."""

    T = "arch"
    SB = "arch1"

    @classmethod
    def setUpClass(cls):
        cls.archive = os.path.join(WORK, "image.tar")
        run("skopeo", "copy", "--quiet", "oci:%s:t" % LAYOUT, "docker-archive:%s:t:latest" % cls.archive)
        os.mkdir(D.tpl(cls.T))
        write_config(cls.T, {"image": "docker-archive:" + cls.archive, "disk_mib": 192})
        # events from before the bake, build.log right after the ctl write: both read in threads
        cls.events, cls.chunks, cls.eof_state, cls.reader_error = [], [], None, None
        ev = open(os.path.join(D.mount, "events"), "rb", buffering=0)

        def read_events():
            buf = b""
            try:
                while True:
                    b = ev.read(65536)
                    if not b:
                        return
                    buf += b
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        e = json.loads(line)
                        if e.get("type") == "template" and e.get("template") == cls.T:
                            cls.events.append(e)
                            if e["state"] in ("ready", "failed"):
                                return
            except Exception as e:  # noqa: BLE001 - reported by the test
                cls.reader_error = e

        def read_log():
            try:
                fd = os.open(D.tpl(cls.T, "build.log"), os.O_RDONLY)
                try:
                    while True:
                        b = os.read(fd, 65536)
                        if not b:
                            cls.eof_state = D.template_status(cls.T)["state"]
                            return
                        cls.chunks.append((b, D.template_status(cls.T)["state"]))
                finally:
                    os.close(fd)
            except Exception as e:  # noqa: BLE001
                cls.reader_error = e

        te = threading.Thread(target=read_events, daemon=True)
        te.start()
        harness.write_file(D.tpl(cls.T, "ctl"), "bake\n")
        tl = threading.Thread(target=read_log, daemon=True)
        tl.start()
        # while it bakes (seconds: a fetch, an unpack, a mkfs, a boot), its inputs and ctl are refused
        cls.busy = []
        for what, fn in (("config", lambda: write_config(cls.T, {"image": "docker-archive:" + cls.archive,
                                                                  "mem_mib": 300})),
                         ("Dockerfile", lambda: write_dockerfile(cls.T, "FROM %s\n" % IMG)),
                         ("ctl", lambda: harness.write_file(D.tpl(cls.T, "ctl"), "rebake\n")),
                         ("rmdir", lambda: os.rmdir(D.tpl(cls.T)))):
            try:
                fn()
                cls.busy.append((what, None))
            except OSError as e:
                cls.busy.append((what, e.errno))
        tl.join(harness.BAKE_TIMEOUT)
        te.join(10)
        ev.close()
        cls.log_alive = tl.is_alive()
        cls.status = D.template_status(cls.T)

    @classmethod
    def tearDownClass(cls):
        remove_template(cls.T)

    def test_a_build_log_streams_until_the_bake_ends(self):
        self.assertIsNone(self.reader_error)
        self.assertFalse(self.log_alive, "build.log read did not end with the bake")
        self.assertEqual(self.status["state"], "ready", self.status)
        log = b"".join(c for c, _ in self.chunks).decode()
        # data came while the template was baking, in more than one piece, and EOF once it was ready
        self.assertGreaterEqual(len(self.chunks), 2, self.chunks)
        self.assertEqual(self.chunks[0][1], "baking", self.chunks[:3])
        self.assertEqual(self.eof_state, "ready")
        self.assertTrue(log.startswith("== build\n"), log[:200])
        self.assertTrue(log.endswith("== baked\n"), log[-200:])
        self.assertIn("pull: skopeo copy docker-archive:%s " % self.archive, log)
        # nothing lost: what the stream gave is the whole file
        self.assertEqual(harness.read_text(D.tpl(self.T, "build.log")), log)
        phases = [e.get("phase") for e in self.events if e["state"] == "baking" and e.get("phase")]
        self.assertEqual([p for p in phases if p in ("build", "boot", "snapshot")], ["build", "boot", "snapshot"],
                         self.events)
        self.assertEqual(self.events[-1]["state"], "ready", self.events)
        self.assertEqual(self.busy, [("config", errno.EBUSY), ("Dockerfile", errno.EBUSY), ("ctl", errno.EBUSY),
                                     ("rmdir", errno.EBUSY)])
        # "bake" of a ready template with unchanged inputs bakes nothing: the log stays, a read of it ends at once
        baked_at = self.status["bake"]["baked_at"]
        t0 = time.monotonic()
        log2, st = bake(self.T)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual((log2, st["bake"]["baked_at"], st["state"]), (log, baked_at, "ready"))

    def test_b_same_tree_and_config(self):
        D.create_ready(self.SB, t=self.T)
        try:
            script = fsops_script(EXPECTED)
            want = expected_fsops(script)
            got = normalize_fsops(guest_fsops(self.SB, self.T, script))
            self.assertEqual(got, want)
            self.assertEqual(guest_listing(self.SB, self.T), sorted(set(image_paths(EXPECTED)) | AGENT_ADDS))
            a, b = D.template_status(self.T)["build"], D.template_status(IMG)["build"]
            for k in ("env", "workdir", "user", "cmd", "entrypoint"):
                self.assertEqual(a[k], b[k], k)
            self.assertEqual(D.sh(self.SB, "id -un; pwd; echo \"$GREETING\"", t=self.T), "app\n/data\nhello world\n")
            # "disk_mib": 192 is the root file system's size (less ext4's own overhead)
            blocks, bsize = map(int, D.sh(self.SB, "stat -f -c '%b %S' /", t=self.T).split())
            self.assertLessEqual(blocks * bsize, 192 << 20)
            self.assertGreater(blocks * bsize, 170 << 20)
        finally:
            D.destroy(self.SB, t=self.T)

    def test_c_stale_template_boots_cold_with_the_image_config(self):
        cfg = harness.read_json(D.tpl(self.T, "config"))
        cfg["mem_mib"] = 288
        write_config(self.T, cfg)
        self.assertEqual(D.template_status(self.T)["state"], "stale")
        name = "arch-cold"
        try:
            s = D.create_ready(name, t=self.T)
            self.assertEqual(s["path"], "cold", s)
            self.assertEqual(D.sh(name, "cat /data/file.txt", t=self.T), "hello v2\n")
            # a cold boot of a built disk is still the image: its env, workdir and user apply
            self.assertEqual(D.sh(name, "id -un; pwd; echo \"$GREETING\"", t=self.T), "app\n/data\nhello world\n")
            # and so after stop and start (a cold boot from the sandbox's own disk)
            harness.write_file(D.sb(name, "ctl", t=self.T), "stop\n")
            harness.write_file(D.sb(name, "ctl", t=self.T), "start\n")
            self.assertEqual(D.status(name, t=self.T)["state"], "ready")
            self.assertEqual(D.sh(name, "id -un; pwd; echo \"$GREETING\"", t=self.T), "app\n/data\nhello world\n")
        finally:
            D.destroy(name, t=self.T)


class Dockerfile(harness.TestCase):
    """templates/T/Dockerfile: steps, the step cache, a failed build, a refused instruction."""

    T = "df"
    N = 15  # instructions from FROM on: "[i/15]" in build.log
    LAST = 17  # the line of the last RUN

    @classmethod
    def dockerfile(cls, last_run):
        return ("# built by test_images.py\n"
                "ARG BASE=oci:%s:t\n"                                    # 2
                "FROM ${BASE}\n"                                         # 3
                "USER root\n"                                            # 4
                "ARG WHO=world\n"                                        # 5
                "ENV STAGE=build PREV=${STAGE:-unset} GREET2=\"$GREETING from $WHO\"\n"  # 6
                "WORKDIR /app\n"                                         # 7
                "COPY hello.txt ./\n"                                    # 8
                "COPY dir /app/dir\n"                                    # 9
                "ADD arch.tar.gz /opt/\n"                                # 10
                "COPY --chown=app:extra --chmod=0640 own.txt /opt/own.txt\n"  # 11
                "COPY own.txt dirlink/a /\n"                             # 12
                "RUN echo \"uid=$(id -u) cwd=$(pwd) stage=$STAGE who=$WHO\" > /app/run1.txt && "
                "rm /data/layer2.txt && echo visible output of RUN\n"    # 13
                "ENV FINAL=yes\n"                                        # 14
                "USER app\n"                                             # 15
                "WORKDIR /home/app\n"                                    # 16
                "RUN %s\n" % (LAYOUT, last_run))                         # 17

    @classmethod
    def setUpClass(cls):
        ctx = cls.ctx = os.path.join(WORK, "context")
        put(ctx + "/hello.txt", "hello from the context\n", 0o600)
        put(ctx + "/dir/a", "a\n", 0o755)
        put(ctx + "/dir/sub/b", "b\n", 0o640)
        os.symlink("../a", ctx + "/dir/sub/lnk")
        put(ctx + "/dir/h1", "hard\n")
        os.link(ctx + "/dir/h1", ctx + "/dir/h2")
        os.symlink("dir", ctx + "/dirlink")  # a link inside the context: COPY may go through it
        put(ctx + "/own.txt", "own\n")
        with tarfile.open(ctx + "/arch.tar.gz", "w:gz") as t:
            for name, data, typ, uid in (("d", None, tarfile.DIRTYPE, 0), ("d/f", b"inner\n", tarfile.REGTYPE, 1001),
                                         ("d/l", None, tarfile.SYMTYPE, 0)):
                i = tarfile.TarInfo(name)
                i.type, i.uid, i.gid, i.mode, i.mtime = typ, uid, uid, 0o755 if data is None else 0o644, 1700000000
                if typ == tarfile.SYMTYPE:
                    i.linkname = "f"
                if data is not None:
                    i.size = len(data)
                t.addfile(i, io.BytesIO(data) if data is not None else None)
        os.mkdir(D.tpl(cls.T))
        # no "image": the Dockerfile's FROM names it; COPY needs the context
        write_config(cls.T, {"context": ctx})
        cls.v1 = cls.dockerfile("echo last-v1 > /home/app/last.txt")
        write_dockerfile(cls.T, cls.v1)
        cls.log1, cls.st1 = bake_ready(cls.T)

    @classmethod
    def tearDownClass(cls):
        remove_template(cls.T)
        remove_template("dfbase")

    def test_a_built_image(self):
        st = self.st1
        self.assertEqual(st["dockerfile"], "built")
        self.assertEqual(harness.read_text(D.tpl(self.T, "Dockerfile")), self.v1)
        b = st["build"]
        self.assertEqual((b["user"], b["workdir"]), ("app", "/home/app"))
        # ARG values are not in the image; ENV values see the variables from before their instruction
        self.assertEqual(b["env"], ["GREETING=hello world", "PATH=/bin", "STAGE=build", "PREV=unset",
                                    "GREET2=hello world from world", "FINAL=yes"])
        self.assertEqual([s["line"] for s in b["steps"]], list(range(4, self.LAST + 1)))
        self.assertEqual([s["cached"] for s in b["steps"]], [False] * (self.N - 1))
        self.assertIn("[1/%d] FROM ${BASE}\n" % self.N, self.log1)
        self.assertIn("image: oci:%s:t is sha256:" % LAYOUT, self.log1)  # the ARG's value
        self.assertIn("\nvisible output of RUN\n", self.log1)  # RUN's output goes to the build log
        name = "dfa"
        D.create_ready(name, t=self.T)
        try:
            sh = lambda c: D.sh(name, c, t=self.T)  # noqa: E731
            self.assertEqual(sh("id -un; pwd; echo $STAGE $FINAL $PREV ${WHO:-noarg}; echo \"$GREET2\""),
                             "app\n/home/app\nbuild yes unset noarg\nhello world from world\n")
            self.assertEqual(sh("cat /app/run1.txt"), "uid=0 cwd=/app stage=build who=world\n")
            self.assertEqual(sh("cat /home/app/last.txt; stat -c '%U %a' /home/app/last.txt"), "last-v1\napp 644\n")
            self.assertEqual(sh("test -e /data/layer2.txt || echo removed by RUN"), "removed by RUN\n")
            self.assertEqual(sh("cat /data/file.txt"), "hello v2\n")  # the base image's file
            out = D.exec_json(name, {"sh": "cat /app/hello.txt; "
                                           "stat -c '%a %u:%g' /app/hello.txt /app /app/dir /app/dir/a /app/dir/sub/b; "
                                           "readlink /app/dir/sub/lnk; cat /app/dir/sub/lnk; "
                                           "stat -c '%h %i' /app/dir/h1; stat -c '%h %i' /app/dir/h2",
                                     "user": "root"}, t=self.T)
            self.assertEqual(out["exit_code"], 0, out)
            lines = out["stdout"].decode().splitlines()
            self.assertEqual(lines[:8], ["hello from the context", "600 0:0", "755 0:0", "755 0:0", "755 0:0",
                                         "640 0:0", "../a", "a"])
            self.assertEqual(lines[8], lines[9])  # hard links of the context stay one inode
            self.assertTrue(lines[8].startswith("2 "), lines)
            self.assertEqual(sh("ls -a /app/dir | sort; ls -a /app/dir/sub | sort"),
                             ".\n..\na\nh1\nh2\nsub\n.\n..\nb\nlnk\n")
            self.assertEqual(sh("ls /app | sort"), "dir\nhello.txt\nrun1.txt\n")
            # ADD extracted the archive (owners, links as in it); COPY --chown/--chmod
            self.assertEqual(sh("stat -c '%n %F %a %u:%g' /opt/d /opt/d/f /opt/d/l /opt/own.txt; cat /opt/d/l; "
                                "readlink /opt/d/l; ls /opt | sort"),
                             "/opt/d directory 755 0:0\n/opt/d/f regular file 644 1001:1001\n"
                             "/opt/d/l symbolic link 777 0:0\n/opt/own.txt regular file 640 1000:2000\n"
                             "inner\nf\nd\nown.txt\n")
            # a destination right under the root; a source through a link that stays in the context
            self.assertEqual(sh("cat /own.txt /a; stat -c '%a %u:%g' /own.txt /a"), "own\na\n644 0:0\n755 0:0\n")
        finally:
            D.destroy(name, t=self.T)

    def test_b_edit_last_run_rebuilds_only_it(self):
        v2 = self.dockerfile("echo last-v2 > /home/app/last.txt")
        write_dockerfile(self.T, v2)
        self.assertEqual(D.template_status(self.T)["dockerfile"], "changed")
        before = D.template_status(self.T)["bake"]["identity"]
        log, st = bake_ready(self.T)
        self.assertEqual(st["dockerfile"], "built")
        self.assertNotEqual(st["bake"]["identity"], before)
        n = self.N
        steps = [l for l in log.splitlines() if re.match(r"\[\d+/%d\] " % n, l)]
        self.assertEqual(len(steps), n, log)
        self.assertFalse(steps[0].startswith("[1/%d] CACHED" % n), steps[0])  # FROM: the image's disk, not a step
        for i, l in enumerate(steps[1:n - 1], start=2):
            self.assertTrue(l.startswith("[%d/%d] CACHED " % (i, n)), l)
        self.assertEqual(steps[n - 1], "[%d/%d] RUN echo last-v2 > /home/app/last.txt" % (n, n))
        self.assertIn("%d steps, %d from the cache" % (n - 1, n - 2), log)
        self.assertEqual([s["cached"] for s in st["build"]["steps"]], [True] * (n - 2) + [False])
        name = "dfb"
        D.create_ready(name, t=self.T)
        try:
            self.assertEqual(D.sh(name, "cat /home/app/last.txt /app/run1.txt", t=self.T),
                             "last-v2\nuid=0 cwd=/app stage=build who=world\n")
        finally:
            D.destroy(name, t=self.T)

    def test_bb_changed_context_file_rebuilds_from_its_copy(self):
        # the step cache keys a COPY by what it copies: new content in hello.txt rebuilds that COPY and every
        # step after it (their parent changed), and nothing before it
        put(self.ctx + "/hello.txt", "hello, changed\n", 0o600)
        self.assertEqual(D.template_status(self.T)["dockerfile"], "built")  # the Dockerfile itself is the same
        log, st = bake_ready(self.T, "rebake")
        copy_at = 8 - 4  # the steps start at line 4; COPY hello.txt is line 8
        self.assertEqual([s["cached"] for s in st["build"]["steps"]],
                         [True] * copy_at + [False] * (self.N - 1 - copy_at))
        self.assertIn("[%d/%d] COPY hello.txt ./\n" % (copy_at + 2, self.N), log)
        name = "dfbb"
        D.create_ready(name, t=self.T)
        try:
            r = D.exec_json(name, {"sh": "cat /app/hello.txt /home/app/last.txt", "user": "root"}, t=self.T)
            self.assertEqual((r["exit_code"], r["stdout"]), (0, b"hello, changed\nlast-v2\n"), r)
        finally:
            D.destroy(name, t=self.T)

    def test_c_failing_run_keeps_the_old_snapshot(self):
        st0 = D.template_status(self.T)
        good = harness.read_text(D.tpl(self.T, "Dockerfile"))
        self.assertIn("last-v2", good)  # test_b's
        bad = self.dockerfile("echo broken > /home/app/last.txt && exit 3")
        write_dockerfile(self.T, bad)
        D.expect_log_error(r"template df: line %d \(RUN echo broken.*exit code 3" % self.LAST)
        log, st = bake(self.T)
        self.assertEqual(st["state"], "ready", st)
        self.assertIn("line %d" % self.LAST, st["error"])
        self.assertIn("exit code 3", st["error"])
        self.assertEqual(st["dockerfile"], "changed")
        self.assertEqual(st["bake"]["identity"], st0["bake"]["identity"])
        self.assertEqual(st["bake"]["baked_at"], st0["bake"]["baked_at"])
        self.assertEqual(st["build"]["digest"], st0["build"]["digest"])
        self.assertIn("[%d/%d] RUN echo broken" % (self.N, self.N), log)
        self.assertIn("== failed", log)
        # restore and warm creates both get the old snapshot
        name = "dfc"
        s = D.create_ready(name, t=self.T)
        try:
            self.assertEqual(s["path"], "restore", s)
            self.assertEqual(D.sh(name, "cat /home/app/last.txt", t=self.T), "last-v2\n")
        finally:
            D.destroy(name, t=self.T)
        D.set_pool(1, t=self.T)
        try:
            D.wait_pool(1, t=self.T)
            s = D.create_ready("dfw", t=self.T)
            self.assertEqual(s["path"], "warm", s)
            self.assertEqual(D.sh("dfw", "cat /home/app/last.txt", t=self.T), "last-v2\n")
        finally:
            D.set_pool(0, t=self.T)
            D.destroy("dfw", t=self.T)
            D.wait_pool(0, t=self.T)

    def test_d_unsupported_instruction_changes_nothing(self):
        stored = harness.read_text(D.tpl(self.T, "Dockerfile"))
        st0 = D.template_status(self.T)
        self.assertErrno(errno.EINVAL, write_dockerfile, self.T, stored + "VOLUME /data\n")
        st = D.template_status(self.T)
        self.assertIn("VOLUME", st["error"])
        self.assertIn("line %d" % (self.LAST + 1), st["error"])  # the line appended
        self.assertEqual(harness.read_text(D.tpl(self.T, "Dockerfile")), stored)
        self.assertEqual((st["state"], st["identity"], st["dockerfile"]),
                         (st0["state"], st0["identity"], st0["dockerfile"]))

    def test_e_from_another_template(self):
        t = "dfbase"
        os.mkdir(D.tpl(t))
        write_dockerfile(t, "FROM %s\nENV X=from-template\n" % IMG)
        log, st = bake_ready(t)
        self.assertIn("[1/2] FROM %s\n" % IMG, log)
        self.assertEqual(st["build"]["env"], ["GREETING=hello world", "PATH=/bin", "X=from-template"])
        self.assertEqual((st["build"]["user"], st["build"]["workdir"]), ("app", "/data"))
        D.create_ready("dfe", t=t)
        try:
            self.assertEqual(D.sh("dfe", "id -un; pwd; echo $X; cat /data/file.txt", t=t),
                             "app\n/data\nfrom-template\nhello v2\n")
        finally:
            D.destroy("dfe", t=t)

    def test_f_empty_dockerfile_removes_it(self):
        st0 = D.template_status(self.T)
        self.assertIn("dockerfile", st0)
        harness.write_file(D.tpl(self.T, "Dockerfile"), "", flags=os.O_WRONLY | os.O_TRUNC)  # `: > Dockerfile`
        # removed at the last close: the release comes a moment after close returned
        harness.wait_for(lambda: harness.read_text(D.tpl(self.T, "Dockerfile")) == "", 5, "the Dockerfile removed")
        st = D.template_status(self.T)
        # removed, but nothing in service changes until a bake: the build and the snapshot stay
        self.assertEqual(st["dockerfile"], "removed")
        self.assertEqual(st["build"], st0["build"])
        self.assertEqual((st["identity"], st["state"]), (st0["identity"], st0["state"]))
        # the next bake boots the config's own guest and drops the build
        log, st = bake(self.T)
        self.assertEqual(st["state"], "ready", st)
        self.assertNotIn("dockerfile", st)
        self.assertNotIn("build", st)
        self.assertNotEqual(st["identity"], st0["identity"])
        self.assertFalse(os.path.exists(os.path.join(D.state, "store", "templates", self.T, "build.json")))
        # rm removes it at once (and removing what is not there is no error)
        harness.write_file(D.tpl(self.T, "Dockerfile"), "FROM img\n")
        self.assertEqual(D.template_status(self.T)["dockerfile"], "changed")
        os.unlink(D.tpl(self.T, "Dockerfile"))
        self.assertNotIn("dockerfile", D.template_status(self.T))
        os.unlink(D.tpl(self.T, "Dockerfile"))


class BadInputs(harness.TestCase):
    """Each bad input: a clear error where it is found, and nothing left behind."""

    def setUp(self):
        super().setUp()
        self.files_before = state_files()

    def tearDown(self):
        try:
            D.assert_inventory(BASE, timeout=15)
            after = state_files()
            # steps of a Dockerfile that succeeded before the one that failed stay cached (a whole step:
            # step.json and what it names); anything else is a leftover
            new = sorted(p for p in after - self.files_before if not self.cached_step(p))
            self.assertEqual(new, [], "new files in the state dir")
            self.assertEqual(sorted(self.files_before - after), [], "files gone from the state dir")
        finally:
            super().tearDown()

    @staticmethod
    def cached_step(p):
        parts = p.split("/")
        if parts[:2] != ["store", "build-cache"] or len(parts) < 3 or p.endswith(".tmp"):
            return False
        return os.path.isfile(os.path.join(D.state, "store", "build-cache", parts[2], "step.json"))

    def test_malformed_refs_refused_at_write(self):
        t = "badref"
        os.mkdir(D.tpl(t))
        try:
            cfg0 = harness.read_text(D.tpl(t, "config"))
            for ref in ("foo:bar", "oci:relative/layout:t", "oci:/a/../b:t", "docker-archive:", "docker-archive:x.tar",
                        "docker://", "docker://-x", "docker://a b", "oci:/a,b:t", "http://example.com/x", 42, None, ""):
                self.assertErrno(errno.EINVAL, write_config, t, {"image": ref})
                self.assertEqual(harness.read_text(D.tpl(t, "config")), cfg0, ref)
                st = D.template_status(t)
                self.assertIn("image", st["error"], (ref, st["error"]))
                self.assertEqual(st["state"], "new")
            # image and rootfs exclude each other
            self.assertErrno(errno.EINVAL, write_config, t,
                             {"image": "oci:%s:t" % LAYOUT, "rootfs": harness.read_json(D.tpl("default", "config"))
                              .get("rootfs", "/nonexistent")})
            self.assertIn("exclude", D.template_status(t)["error"])
            self.assertErrno(errno.EINVAL, write_config, t, {"image": "oci:%s:t" % LAYOUT, "disk_mib": 1})
            self.assertErrno(errno.EINVAL, write_config, t, {"image": "oci:%s:t" % LAYOUT, "ready": {"tcp": 80}})
            self.assertEqual(harness.read_text(D.tpl(t, "config")), cfg0)
        finally:
            remove_template(t)

    def bake_fails(self, t, cfg, want_error, within=None, dockerfile=None):
        """A template of cfg whose bake fails with want_error (a regex); a sandbox of it then fails too."""
        os.mkdir(D.tpl(t))
        try:
            D.expect_log_error(r"template %s: " % t)
            D.expect_log_error(r"sandbox %s/x%s" % (t, t))
            write_config(t, cfg)
            if dockerfile:
                write_dockerfile(t, dockerfile)
            t0 = time.monotonic()
            log, st = bake(t)
            took = time.monotonic() - t0
            if within:
                self.assertLess(took, within, st)
            self.assertEqual(st["state"], "failed", st)
            self.assertRegex(st["error"], want_error)
            self.assertIn("== failed: ", log)
            self.assertNotIn("build", st)  # no build in service
            # a sandbox of it: the template has no root disk, so no guest can run its image
            name = "x" + t
            os.mkdir(D.sb(name, t=t))
            self.assertErrno(errno.EIO, D.wait, name, t=t)
            sst = D.status(name, t=t)
            self.assertEqual(sst["state"], "failed", sst)
            self.assertIn("no build succeeded", sst["error"])
            D.destroy(name, t=t)
            return st, log
        finally:
            remove_template(t)

    def test_missing_layout(self):
        self.bake_fails("nolayout", {"image": "oci:/nonexistent/emberfs-test-layout:t"},
                        r"/nonexistent/emberfs-test-layout/index\.json: No such file or directory")

    def test_unknown_tag(self):
        self.bake_fails("notag", {"image": "oci:%s:nosuchtag" % LAYOUT}, r'no image named "nosuchtag"')

    def test_blob_not_matching_its_digest(self):
        bad = os.path.join(WORK, "corrupt-layout")
        shutil.copytree(LAYOUT, bad, symlinks=True)
        try:
            idx = json.load(open(os.path.join(bad, "index.json")))
            man = os.path.join(bad, "blobs", "sha256", idx["manifests"][0]["digest"][7:])
            with open(man, "ab") as f:
                f.write(b" ")  # still the same JSON, no longer its digest
            self.bake_fails("badblob", {"image": "oci:%s:t" % bad}, r"does not match its digest")
        finally:
            shutil.rmtree(bad)

    def test_garbage_docker_archive(self):
        path = os.path.join(WORK, "garbage.tar")
        with open(path, "wb") as f:
            f.write(os.urandom(64 * 1024))
        self.bake_fails("garbage", {"image": "docker-archive:" + path},
                        r"cannot fetch docker-archive:%s" % re.escape(path))

    def test_missing_docker_archive(self):
        self.bake_fails("noarchive", {"image": "docker-archive:/nonexistent/emberfs-test.tar"},
                        r"/nonexistent/emberfs-test\.tar: No such file or directory")

    def test_image_too_large_for_disk_mib(self):
        big = os.path.join(WORK, "big")
        run("umoci", "init", "--layout", big)
        run("umoci", "new", "--image", big + ":t")
        block = os.urandom(4096)
        lt = os.path.join(WORK, "big.tar")
        tar_layer(lt, [("big/", None, 0o755), ("big/file", block * (100 * 256), 0o644)])  # 100 MiB
        run("umoci", "raw", "add-layer", "--image", big + ":t", lt)
        os.unlink(lt)
        try:
            self.bake_fails("toobig", {"image": "oci:%s:t" % big, "disk_mib": 64},
                            r'needs about 1\d\d MiB; "disk_mib" is 64')
        finally:
            shutil.rmtree(big)

    def test_unreachable_registry_fails_in_bounded_time(self):
        self.bake_fails("noreg", {"image": "docker://127.0.0.1:1/emberfs/x:latest"},
                        r"cannot fetch docker://127\.0\.0\.1:1/emberfs/x:latest", within=60)

    def test_copy_never_leaves_the_context(self):
        ctx = os.path.join(WORK, "context-out")
        os.makedirs(ctx + "/sub", exist_ok=True)
        put(ctx + "/sub/f", "inside\n")
        os.symlink("/etc", ctx + "/etclink")  # a link in the context to a host directory
        try:
            base = "FROM oci:%s:t\nUSER 0:0\n" % LAYOUT  # not a step of class Dockerfile's (its cache)
            for i, line in enumerate(("COPY etclink/passwd /x", "COPY etclink/pass* /x/", "ADD etclink/hostname /x",
                                      "COPY ../../../../etc/passwd /x", "COPY sub/../../../etc/passwd /x")):
                out_of_it = "etclink" in line
                st, log = self.bake_fails("ctxout%d" % i, {"context": ctx},
                                          r"line 3 \(%s\): .*(leads out of the context|nothing there in the context)"
                                          % re.escape(line), dockerfile=base + line + "\n")
                self.assertIn("leads out of the context" if out_of_it else "nothing there in the context", st["error"])
                self.assertNotIn("booting the build's guest", log)  # refused before anything ran
        finally:
            shutil.rmtree(ctx)

    def test_unsupported_dockerfile_instructions(self):
        t = "baddf"
        os.mkdir(D.tpl(t))
        try:
            D.expect_log_error(r"template baddf: ")
            base = "FROM oci:%s:t\nRUN true\n" % LAYOUT
            for text, want in ((base + "VOLUME /data\n", r"line 3: VOLUME is not supported"),
                               (base + "HEALTHCHECK CMD true\n", r"line 3: HEALTHCHECK is not supported"),
                               (base + "FROM oci:%s:t\n" % LAYOUT, r"line 3: a second FROM"),
                               ("RUN true\n", r"line 1: RUN before FROM"),
                               (base + "COPY --from=x /a /b\n", r"multi-stage"),
                               (base + "ADD http://example.com/x /x\n", r"URL")):
                self.assertErrno(errno.EINVAL, write_dockerfile, t, text)
                st = D.template_status(t)
                self.assertRegex(st["error"], want)
                self.assertEqual(harness.read_text(D.tpl(t, "Dockerfile")), "")
                self.assertEqual(st["state"], "new")
                self.assertNotIn("dockerfile", st)
            # and one that an "image" in the config excludes
            write_config(t, {"image": "oci:%s:t" % LAYOUT})
            self.assertErrno(errno.EINVAL, write_dockerfile, t, base)
            self.assertIn("image", D.template_status(t)["error"])
            self.assertEqual(harness.read_text(D.tpl(t, "Dockerfile")), "")
        finally:
            remove_template(t)


if __name__ == "__main__":
    harness.main()
