#!/usr/bin/env python3
"""
Guest symlinks never lead out of live/NAME (docs/interface.md "The guest's
files"): every target readlink returns for a guest symlink resolves inside the
same live/NAME when the host kernel follows it, with the guest's own
semantics (`..` resolved physically through the links it passes, `..` at the
guest's root stays there as in a chroot, absolute targets rewritten relative,
relative targets without `..` shown as stored, a rewrite longer than 4095
bytes: ENAMETOOLONG).

A guest makes, with `ln -s`, links of every shape aimed at a canary: a file
with a unique name in the host's /tmp, which also exists in the guest's /tmp
(and in a second sandbox's) with other contents, so the test can tell which
one a path reaches. Shapes: deep `..` runs, `a/../../..`, `..` through linked
directories (physical, not lexical), links to `/` (`/`, `//`, `/../..`), `..`
as the whole target (also at the guest's root), `.` and `./..`, chains
through absolute and relative links, absolute targets, targets near 4095
bytes (one whose shortest relative form is longer: ENAMETOOLONG), `//` and
trailing `/`, links aimed at the mount's other files (another sandbox, the
daemon's own status file), loops, dangling links.

- Every path is looked up by fsops (tests/integration/fsops.c) in the guest
  (root /) and on the host (root live/NAME): lstat type, stat, realpath
  (relative to the root), contents, and readlink (as stored where the target
  is relative without `..`, never absolute) must agree.
- On the host: os.path.realpath stays under live/NAME, stat's st_dev is the
  mount's, open+read reaches the guest's file.
- os.walk(followlinks=True) and `find -L` from the links' directory stay on
  the mount and under live/NAME and read only the guest's canary.
- open(O_WRONLY|O_APPEND|O_CREAT)+write through every link: the bytes land
  in the file the guest's resolution reaches (checked inside the guest), or
  fail as the guest would (EISDIR, ELOOP); creating through dangling links
  creates the guest's file and nothing on the host or in the other sandbox.
- symlink() through live/ stores every target shape exactly as given (the
  guest's readlink), and the host's view of such a link stays inside too.
- After every test: the host canary's contents, mtime and ctime unchanged,
  no host file with the canary's prefix appeared, the other sandbox's canary
  untouched.
"""
import errno
import os
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import livehelp  # noqa: E402
from livehelp import q, unq  # noqa: E402

D = BASE = None
SB, SB2 = "sy", "sy2"
C = "efcanary-%d-%s" % (os.getpid(), os.urandom(4).hex())  # the canary's name, in /tmp everywhere
HOST_CANARY = "/tmp/" + C
HOST_BODY = b"HOST CANARY: a guest symlink reached the host\n"
GUEST_BODY = b"guest canary\n"
OTHER_BODY = b"other sandbox canary\n"
HOST_STAT = None
NEW = ["%s-n%d" % (C, i) for i in range(1, 6)]  # names made through dangling links

# the long-target shapes
LONG1 = "../" * ((4095 - len("tmp/" + C)) // 3) + "tmp/" + C  # relative, `..` run near 4095 bytes
LONG2 = "./" * ((4095 - len(C)) // 2) + C  # relative without `..`: shown as stored
LONG4 = "/" + "./" * ((4089 - 5 - len(C)) // 2) + "tmp/" + C  # absolute; even "../../" + it fits in 4095
LONGDIR = "/efsy-L/" + "/".join("L%02d" % i + "x" * 252 for i in range(15)) + "/" + "M" * 200
LONG3 = LONGDIR + "/CL"  # absolute, 4051 bytes ...
LONG3_AT = "/tmp/s/" + "/".join(["e"] * 20)  # ... seen from 22 levels down: shortest relative form > 4095
assert len(LONG1) <= 4095 and len(LONG2) <= 4095 and len(LONG4) + 6 <= 4095 and len(LONG3) <= 4095
assert 3 * 22 + len(LONG3) - 1 > 4095

# (guest path of the link, target). Made inside the guest with ln -s.
LINKS = [
    ("/tmp/s/deep", "../" * 10 + "tmp/" + C),
    ("/tmp/s/a/b/c/deep", "../" * 20 + "tmp/" + C),
    ("/tmp/s/ad", "a/../../../../../../tmp/" + C),
    ("/tmp/s/d", "/"),
    ("/tmp/s/x", "d/../../../../tmp/" + C),
    ("/tmp/s/d2", "a/b"),
    ("/tmp/s/x2", "d2/../../../../../../../tmp/" + C),
    ("/tmp/s/d3", "a/b/c"),
    ("/tmp/s/x3", "d3/../PHYS"),  # physically /tmp/s/a/b/PHYS; lexically it would be /tmp/s/PHYS
    ("/tmp/s/root2", "//"),
    ("/tmp/s/root3", "/../../.."),
    ("/efsy-up", ".."),
    ("/tmp/s/up", ".."),
    ("/tmp/s/a/up", ".."),
    ("/tmp/s/up5", "../../../../.."),
    ("/tmp/s/dot", "."),
    ("/tmp/s/dotdot", "./.."),
    ("/efsy-dd", "./.."),
    ("/tmp/s/c1", "c2"),
    ("/tmp/s/c2", "/efsy-c3"),
    ("/efsy-c3", "../../../../tmp/" + C),
    ("/tmp/s/c4", "a/c5"),
    ("/tmp/s/a/c5", "../../../../../../tmp/" + C),
    ("/tmp/s/abs", "/tmp/" + C),
    ("/tmp/s/abs2", "/../../../../tmp/" + C),
    ("/tmp/s/abs3", "/tmp/s/a/../../../../tmp/" + C),
    ("/tmp/s/long1", LONG1),
    ("/tmp/efsy-long2", LONG2),
    ("/tmp/s/long4", LONG4),
    (LONG3_AT + "/long3", LONG3),
    ("/tmp/s/sl1", "..//..//..//tmp//" + C),
    ("/tmp/s/sl2", "//tmp//" + C),
    ("/tmp/s/sl3", "../../../../"),
    ("/tmp/s/sl4", "a/b/"),
    ("/tmp/s/sl5", "a//b//c"),
    ("/tmp/s/sl6", "/tmp/s/a/"),
    ("/tmp/s/mnt", "../../../.."),  # naively followed: the mount point
    ("/tmp/s/other", "../../../../live/%s/tmp/%s" % (SB2, C)),  # naively: the other sandbox's canary
    ("/tmp/s/stat", "../../../../templates/default/sandboxes/%s/status" % SB),  # naively: the daemon's file
    ("/tmp/s/p2", "d/tmp/s/d/../tmp/" + C),
    ("/tmp/s/loop1", "loop2"),
    ("/tmp/s/loop2", "loop1"),
    ("/tmp/s/dangle", "../../../../../../tmp/%s-none" % C),
    # for the creation through dangling links
    ("/tmp/s/new1", "../../../../../../tmp/" + NEW[0]),
    ("/tmp/s/new2", "/tmp/" + NEW[1]),
    ("/tmp/s/new3", "d/../../tmp/" + NEW[2]),
    ("/efsy-new4", "../" + NEW[3]),
    ("/tmp/s/new5", "../../../../live/%s/tmp/%s" % (SB2, NEW[4])),
]
TARGET = dict(LINKS)
# guest files besides the canary: (path, contents)
GUEST_FILES = [("/tmp/" + C, GUEST_BODY), ("/tmp/s/a/b/PHYS", b"physical\n"), ("/tmp/s/PHYS", b"lexical\n"),
               (LONG3, b"long target\n")]
# paths (guest, absolute) through the links: each link, and paths that go on below linked directories
NEW_LINKS = {"/tmp/s/new1", "/tmp/s/new2", "/tmp/s/new3", "/efsy-new4", "/tmp/s/new5"}
PATHS = [p for p, _ in LINKS if p not in NEW_LINKS] + [
    "/tmp/s/d/tmp/" + C, "/tmp/s/root2/tmp/" + C, "/tmp/s/root3/tmp/" + C, "/efsy-up/tmp/" + C,
    "/tmp/s/up5/tmp/" + C, "/tmp/s/mnt/tmp/" + C, "/tmp/s/sl3/tmp/" + C, "/tmp/s/dotdot/" + C,
    "/efsy-dd/tmp/" + C, "/tmp/s/up/" + C, "/tmp/s/a/up/PHYS", "/tmp/s/dot/x3", "/tmp/s/d2/c/deep",
    "/tmp/s/mnt/live/%s/tmp/%s" % (SB2, C), "/tmp/s/up5/efsy-up/efsy-up/tmp/s/deep",
]
ENAMETOOLONG_LINKS = {LONG3_AT + "/long3"}  # the rewrite cannot fit: readlink fails, nothing is reached


def L(*rest, name=SB):
    return os.path.join(D.mount, "live", name, *rest)


def HL(gpath):
    """The host path of a guest path."""
    return L(gpath.lstrip("/"))


def stored_as_is(target):
    return not target.startswith("/") and ".." not in target.split("/")


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def host_new_files():
    return sorted(n for n in os.listdir("/tmp") if n.startswith(C) and n != C)


def setUpModule():
    global D, BASE, HOST_STAT
    livehelp.check_fsops()
    with open(HOST_CANARY, "wb") as f:
        f.write(HOST_BODY)
    os.utime(HOST_CANARY, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    HOST_STAT = os.stat(HOST_CANARY)
    D = harness.Daemon(extra_args=["--allow-other"]).start()
    BASE = D.core(D.wait_inventory({**D.inventory(), "qemu": [], "run": [], "zombies": []}))
    D.create_ready(SB)
    D.create_ready(SB2)
    livehelp.install(D, SB)
    D.sh(SB2, "printf %s > /tmp/%s" % (sh_quote(OTHER_BODY.decode()), C))
    script = ["set -e", "mkdir -p /tmp/s/a/b/c %s %s" % (LONG3_AT, sh_quote(LONGDIR))]
    for p, body in GUEST_FILES:
        script.append("printf %s > %s" % (sh_quote(body.decode()), sh_quote(p)))
    for p, t in LINKS:
        script.append("ln -s %s %s" % (sh_quote(t), sh_quote(p)))
    D.sh(SB, "\n".join(script))
    # the links are the guest's, as made
    got = livehelp.run_guest(D, SB, "/", ["readlink %s" % q(p) for p, _ in LINKS])
    for (p, t), r in zip(LINKS, got):
        assert r == "ok " + q(t), "guest link %s: readlink says %r, made as %r" % (p, r[:100], t[:100])


def tearDownModule():
    try:
        harness.stop_shared(D, BASE)
    finally:
        for n in [C] + NEW:
            try:
                os.unlink("/tmp/" + n)
            except OSError:
                pass


def guest_read(paths):
    """{guest path: bytes or None} of the guest's files, read inside the guest."""
    res = livehelp.run_guest(D, SB, "/", ["read %s" % q(p) for p in paths])
    out = {}
    for p, r in zip(paths, res):
        if r.startswith("ok "):
            n, data = r.split(" ", 2)[1:]
            out[p] = b"" if n == "0" else unq(data)
            assert not data.startswith("crc32:"), "%s: unexpectedly long" % p
        else:
            out[p] = None
    return out


def restore():
    """After a test found the outside changed: the host canary and the other sandbox as they were, host
    files made through links removed, so the next test starts clean."""
    global HOST_STAT
    with open(HOST_CANARY, "wb") as f:
        f.write(HOST_BODY)
    os.utime(HOST_CANARY, ns=(HOST_STAT.st_atime_ns, HOST_STAT.st_mtime_ns))
    HOST_STAT = os.stat(HOST_CANARY)
    for n in host_new_files():
        os.unlink("/tmp/" + n)
    D.sh(SB2, "printf %s > /tmp/%s; cd /tmp && rm -f %s" % (sh_quote(OTHER_BODY.decode()), C, " ".join(NEW)))


class Sym(harness.TestCase):
    longMessage = False  # the messages list the problems; the lists' repr would only repeat them
    def tearDown(self):
        try:
            self.check_untouched()
        finally:
            super().tearDown()

    def check_untouched(self):
        """Nothing outside live/NAME changed: the host canary, the host's /tmp, the other sandbox."""
        problems = []
        try:
            st = os.stat(HOST_CANARY)
            with open(HOST_CANARY, "rb") as f:
                body = f.read()
            if body != HOST_BODY:
                problems.append("host canary %s changed: %r" % (HOST_CANARY, body[:200]))
            if (st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != (HOST_STAT.st_mtime_ns, HOST_STAT.st_ctime_ns,
                                                               HOST_STAT.st_ino):
                problems.append("host canary %s: mtime/ctime/inode changed" % HOST_CANARY)
        except OSError as e:
            problems.append("host canary %s: %s" % (HOST_CANARY, e))
        if host_new_files():
            problems.append("host files created in /tmp: %s" % host_new_files())
        other = D.sh(SB2, "cat /tmp/%s" % C)
        if other != OTHER_BODY.decode():
            problems.append("the other sandbox's canary changed: %r" % other[:200])
        made = [n for n in D.sh(SB2, "ls /tmp").split() if n in NEW]
        if made:
            problems.append("files were created in the other sandbox: %s" % made)
        if problems:
            restore()
            self.fail("\n".join(problems))

    def test_resolution(self):
        """lstat, readlink, stat, realpath, contents: guest and host agree, the host stays inside."""
        ops = []
        for p in PATHS:
            r = p.lstrip("/")
            ops += ["lstat " + q(r), "readlink " + q(r), "stat " + q(r), "realpath " + q(r), "read " + q(r)]
        guest = livehelp.run_guest(D, SB, "/", ops)
        host = livehelp.run_host(L(), ops)
        bad = []
        for i, p in enumerate(PATHS):
            g, h = guest[5 * i:5 * i + 5], host[5 * i:5 * i + 5]
            t = TARGET.get(p)

            def differ(what, gv, hv):
                bad.append("%-40s %-8s guest: %-40s host: %s%s" % (
                    p[:40], what, gv[:40], hv[:100], "" if t is None else "   (-> %s)" % t[:60]))
            # lstat: the same type (a link's size is its target's length: rewritten targets differ)
            if g[0].split()[:2] != h[0].split()[:2]:
                differ("lstat", g[0], h[0])
            # readlink
            if p in ENAMETOOLONG_LINKS:
                if h[1] != "err ENAMETOOLONG":
                    differ("readlink", "(rewrite > 4095: ENAMETOOLONG)", h[1])
            elif t is not None and stored_as_is(t):
                if h[1] != g[1]:
                    differ("readlink", g[1], h[1])
            elif g[1].startswith("ok "):
                if not h[1].startswith("ok "):
                    differ("readlink", g[1], h[1])
                elif unq(h[1][3:]).startswith(b"/"):
                    differ("readlink", "(relative)", h[1])
            elif h[1] != g[1]:
                differ("readlink", g[1], h[1])
            # stat, realpath, read: what the guest reaches (the inode token aside)
            for k, what in ((2, "stat"), (3, "realpath"), (4, "read")):
                gv = " ".join(w for w in g[k].split() if not w.startswith("ino="))
                hv = " ".join(w for w in h[k].split() if not w.startswith("ino="))
                if p in ENAMETOOLONG_LINKS:
                    if hv.startswith("ok"):
                        differ(what, "(an error)", hv)
                elif what == "stat" and g[3] == "ok /":
                    # live/NAME itself is the daemon's directory (its stat needs no guest): only its type counts
                    if gv.split()[:2] != hv.split()[:2]:
                        differ(what, gv, hv)
                elif gv != hv:
                    differ(what, gv, hv)
        # the host's own view of every path
        dev = os.stat(L()).st_dev
        for p in PATHS:
            hp = HL(p)
            try:
                rp = os.path.realpath(hp)
            except OSError as e:
                if p not in ENAMETOOLONG_LINKS:
                    bad.append("%s: os.path.realpath failed: %s" % (p, e))
            else:
                if not harness._under(rp, L()):
                    bad.append("%s: os.path.realpath leaves live/%s: %s" % (p, SB, rp))
            try:
                st = os.stat(hp)
            except OSError:
                continue
            if st.st_dev != dev:
                bad.append("%s: stat reaches another file system (st_dev %d, the mount's %d, st_ino %d)" % (
                    p, st.st_dev, dev, st.st_ino))
            if stat.S_ISREG(st.st_mode):
                try:
                    with open(hp, "rb") as f:
                        body = f.read(1 << 16)
                except OSError:
                    continue
                if body in (HOST_BODY, OTHER_BODY) or body.startswith(b"{"):
                    bad.append("%s: open+read reached a file outside live/%s: %r" % (p, SB, body[:80]))
        self.assertFalse(bad, "host and guest disagree, or the host left live/%s (%d, first 150):\n  %s" % (
            SB, len(bad), "\n  ".join(bad[:150])))

    def test_walk_and_find(self):
        """os.walk(followlinks=True) and find -L from /tmp/s stay on the mount and inside live/NAME."""
        dev = os.stat(L()).st_dev
        top = L("tmp", "s")
        guest_canary = guest_read(["/tmp/" + C])["/tmp/" + C]
        bad, seen, files = [], {os.path.realpath(top)}, 0
        skip = {L("proc"), L("sys"), L("dev")}
        t0 = time.monotonic()
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            keep = []
            for dn in dirnames:
                sub = os.path.join(dirpath, dn)
                try:
                    rp = os.path.realpath(sub)
                    sdev = os.stat(sub).st_dev
                except OSError:
                    continue
                if not harness._under(rp, L()) or sdev != dev:
                    bad.append("walk: %s is %s (st_dev %d, the mount's %d)" % (
                        os.path.relpath(sub, L()), rp, sdev, dev))
                    continue
                if rp in seen or rp in skip:
                    continue
                seen.add(rp)
                keep.append(dn)
            dirnames[:] = keep
            for fn in filenames:
                files += 1
                fp = os.path.join(dirpath, fn)
                try:
                    rp = os.path.realpath(fp)
                except OSError:
                    continue
                if not harness._under(rp, L()):
                    bad.append("walk: %s is %s" % (os.path.relpath(fp, L()), rp))
                    continue
                if fn == C:
                    with open(fp, "rb") as f:
                        body = f.read()
                    if body != guest_canary:
                        bad.append("walk: %s reads %r, the guest's canary is %r" % (fp, body[:60], guest_canary))
            self.assertLess(time.monotonic() - t0, 120, "os.walk does not end")
        self.assertGreater(len(seen), 5, "os.walk saw almost nothing")
        # find -L, not descending into another file system (-xdev), so a way out is seen without a walk outside
        p = subprocess.run(["find", "-L", top, "-xdev", "-maxdepth", "4", "(", "-name", "proc", "-o", "-name",
                            "sys", "-o", "-name", "dev", ")", "-prune", "-o", "-printf", "%D %y %p\\n"],
                           capture_output=True, timeout=180)
        lines = p.stdout.decode("utf-8", "replace").splitlines()
        self.assertGreater(len(lines), 20, "find -L printed almost nothing: %r" % p.stderr[-500:])
        for line in lines:
            fdev, typ, path = line.split(" ", 2)
            if int(fdev) != dev:
                bad.append("find -L: %s is on another file system (%s)" % (os.path.relpath(path, L()), fdev))
            elif typ == "d" and not harness._under(os.path.realpath(path), L()):
                bad.append("find -L: %s is %s" % (os.path.relpath(path, L()), os.path.realpath(path)))
            elif typ == "f" and os.path.basename(path) == C:
                with open(path, "rb") as f:
                    body = f.read()
                if body != guest_canary:
                    bad.append("find -L: %s reads %r" % (path, body[:60]))
        self.assertFalse(bad, "walks left live/%s (%d):\n  %s" % (SB, len(bad), "\n  ".join(bad[:60])))

    def test_write_through_links(self):
        """open(O_WRONLY|O_APPEND|O_CREAT) + write through every link lands where the guest's resolution does."""
        # the guest's view first: what each path reaches (dangling ones aside: test_create_through_dangling)
        res = livehelp.run_guest(D, SB, "/", sum([["stat " + q(p), "realpath " + q(p)] for p in PATHS], []))
        reach, paths = {}, []
        for i, p in enumerate(PATHS):
            st, rp = res[2 * i], res[2 * i + 1]
            if st == "err ENOENT":
                continue
            paths.append(p)
            reach[p] = ("reg", rp[3:]) if st.startswith("ok reg") else \
                ("dir", None) if st.startswith("ok dir") else ("err", st.split()[1])
        files = sorted({v[1] for v in reach.values() if v[0] == "reg"})
        self.assertIn("/tmp/" + C, files)
        want = guest_read(files)
        bad = []
        for i, p in enumerate(paths):
            mark = b"<w%d>" % i
            kind, arg = reach[p]
            try:
                fd = os.open(HL(p), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as e:
                if p in ENAMETOOLONG_LINKS:
                    continue
                if kind == "reg" or (kind == "dir" and e.errno != errno.EISDIR) or \
                        (kind == "err" and errno.errorcode.get(e.errno) != arg):
                    bad.append("%s: open failed with %s; the guest reaches %s %s" % (
                        p, errno.errorcode.get(e.errno), kind, arg))
                continue
            try:
                os.write(fd, mark)
            finally:
                os.close(fd)
            if p in ENAMETOOLONG_LINKS:
                bad.append("%s: open succeeded though readlink cannot give its target" % p)
            elif kind != "reg":
                bad.append("%s: open succeeded; the guest reaches %s %s" % (p, kind, arg))
            else:
                want[arg] += mark
        got = guest_read(files)
        for fpath in files:
            if got[fpath] != want[fpath]:
                bad.append("guest file %s: %r, expected %r" % (fpath, got[fpath], want[fpath]))
        self.assertFalse(bad, "writes through links (%d):\n  %s" % (len(bad), "\n  ".join(bad)))

    def test_symlink_stored_as_given(self):
        """symlink() through live/ stores the target exactly as given (the guest's readlink), whatever its shape."""
        D.sh(SB, "rm -rf /tmp/hs; mkdir -p /tmp/hs/a")
        targets = ["/etc/passwd", "/", "//", "..", ".", "./..", "../../../../../../tmp/" + C, "a/../../..",
                   "/../../tmp/" + C, "a//b/", "x" * 4000, "../" * 1300 + "tmp/" + C, "/tmp/hs/a/", "a b%c",
                   "\u00e9t\u00e9/\x01"]
        paths = ["tmp/hs/a/l%d" % i for i in range(len(targets))]
        bad = []
        for p, t in zip(paths, targets):
            try:
                os.symlink(t, L(p))
            except OSError as e:
                bad.append("symlink(%r, %s): %s" % (t[:60], p, e))
        got = livehelp.run_guest(D, SB, "/", ["readlink " + q(p) for p in paths])
        for p, t, r in zip(paths, targets, got):
            if r != "ok " + q(t):
                bad.append("%s: made with target %r, the guest's readlink says %r" % (p, t[:60], r[:80]))
            try:
                rp = os.path.realpath(L(p))
            except OSError:
                continue
            if not harness._under(rp, L()):
                bad.append("%s (-> %r): os.path.realpath leaves live/%s: %s" % (p, t[:60], SB, rp))
            if stored_as_is(t):
                try:
                    shown = os.readlink(L(p))
                except OSError as e:
                    bad.append("%s: readlink: %s" % (p, e))
                    continue
                if shown != t:
                    bad.append("%s: the host's readlink shows %r, stored %r" % (p, shown[:60], t[:60]))
        self.assertFalse(bad, "symlinks made through live/ (%d):\n  %s" % (len(bad), "\n  ".join(bad)))

    def test_create_through_dangling(self):
        """O_CREAT through a dangling link creates the file the guest would, never a host file."""
        cases = [("/tmp/s/new1", "/tmp/" + NEW[0]), ("/tmp/s/new2", "/tmp/" + NEW[1]),
                 ("/tmp/s/new3", "/tmp/" + NEW[2]), ("/efsy-new4", "/" + NEW[3]), ("/tmp/s/new5", None)]
        bad = []
        for i, (p, gfile) in enumerate(cases):
            body = b"created through %s\n" % p.encode()
            try:
                fd = os.open(HL(p), os.O_WRONLY | os.O_CREAT, 0o644)
            except OSError as e:
                if gfile is not None:
                    bad.append("%s: create failed (%s); the guest would create %s" % (p, e, gfile))
                continue
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
            if gfile is None:
                bad.append("%s: create succeeded; in the guest its target's directory does not exist" % p)
                continue
            got = guest_read([gfile])[gfile]
            if got != body:
                bad.append("%s: the guest's %s holds %r, expected %r" % (p, gfile, got, body))
        self.assertFalse(os.path.exists(L("tmp", NEW[4], name=SB2)), "created in the other sandbox")
        self.assertFalse(bad, "creation through dangling links (%d):\n  %s" % (len(bad), "\n  ".join(bad)))


if __name__ == "__main__":
    harness.main()
