#!/usr/bin/env python3
"""
Guest files read back what was written (coherence of live/NAME, docs/interface.md
"The guest's files"):
(a) host operations through any handle or any name of a guest file are
    coherent with each other (one host page cache per guest inode, writes
    are write-through);
(b) a read(2)/pread/stat through live/ sees every change made inside the
    guest (write, truncate, append) that completed before the read started;
(c) a host mmap of a guest file works (MAP_SHARED and MAP_PRIVATE reads,
    MAP_SHARED writes), host writes through a shared mapping reach the guest
    at msync/munmap, and a guest change shows in an existing host mapping
    within 2 s.

- Direct checks: ftruncate shrinking then growing a file read through the
  same handle; a guest write/truncate/append seen by a host handle opened
  before it (read and fstat); mmap in its three modes.
- A random model check: one guest file with two names (a hard link made in
  the guest), host handles O_RDWR, O_WRONLY|O_APPEND (through the other
  name), O_RDONLY (both names); a random sequence of host pwrite, append,
  ftruncate and truncate by either name (growing and shrinking), pread and
  lseek+read at random offsets and sizes (around 4 KiB and 1 MiB
  boundaries, past the end), fstat and stat, handle reopening, and guest
  pwrite, append, ftruncate, truncate and pread made by one long-running
  fsops process inside the guest (tests/integration/fsops.c, driven through
  procs/ID/stdin and stdout); every read, every st_size and every guest read
  is compared with an in-memory model. On the guest's ext4 (/root) and its
  tmpfs (/tmp), for several seeds. A failure names the file system, the
  seed, the op number and the last ops.

Environment: EMBERFS_COH_OPS (ops per sequence, default 1500),
EMBERFS_COH_SEEDS (sequences per file system, default 2: seeds 1..N),
EMBERFS_COH_SEED (run only this seed, to reproduce a failure).
"""
import errno
import mmap
import os
import random
import shutil
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import livehelp  # noqa: E402

D = BASE = None
SB = "co"
KIB, MIB = 1024, 1024 * 1024
SRC = os.urandom(3 * MIB)  # the bytes every write (host or guest) takes its data from
GUEST_SRC = "/run/efcohsrc"
MAX_SIZE = 2 * MIB + 300 * KIB  # the model file stays around the 1 and 2 MiB boundaries
OPS = int(os.environ.get("EMBERFS_COH_OPS", "1500"))
SEEDS = [int(os.environ["EMBERFS_COH_SEED"])] if os.environ.get("EMBERFS_COH_SEED") else \
    list(range(1, int(os.environ.get("EMBERFS_COH_SEEDS", "2")) + 1))


def L(*rest):
    return os.path.join(D.mount, "live", SB, *rest)


def setUpModule():
    global D, BASE
    livehelp.check_fsops()
    D = harness.Daemon(extra_args=["--allow-other"]).start()
    BASE = D.core(D.wait_inventory({**D.inventory(), "qemu": [], "run": [], "zombies": []}))
    D.create_ready(SB)
    livehelp.install(D, SB)
    livehelp.put_guest_file(D, SB, GUEST_SRC, SRC)


def tearDownModule():
    harness.stop_shared(D, BASE)


def first_diff(a, b):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(len(a), len(b))


def describe(got, want, base=0):
    """Where a read differs from the model."""
    i = first_diff(got, want)
    return "%d bytes, expected %d; first difference at file offset %d: got %r, expected %r" % (
        len(got), len(want), base + i, got[i:i + 12], want[i:i + 12])


class Guest:
    """The long-running fsops in the guest, with h0 = dir/f O_RDWR, h1 = dir/f2 O_WRONLY|O_APPEND, h2 = the source.
    With local (the model's self-check): a host fsops in a host directory instead."""

    def __init__(self, gdir, local=None):
        self.g = livehelp.HostOps(local) if local else livehelp.GuestOps(D, SB, gdir)
        r = self.g.batch(["open f O_RDWR", "open f2 O_WRONLY|O_APPEND",
                          "open %s O_RDONLY" % (os.path.join(local, "src") if local else GUEST_SRC)])
        assert r == ["ok h0", "ok h1", "ok h2"], r

    def op(self, line):
        return self.g.op(line)

    def close(self):
        self.g.batch(["close h0", "close h1", "close h2"])
        self.g.close()


def guest_dir(fs, tag):
    d = "/%s/coh-%s" % (fs, tag)
    D.sh(SB, "rm -rf %s; mkdir %s; : > %s/f; ln %s/f %s/f2" % (d, d, d, d, d))
    return d


class Direct(harness.TestCase):
    """The cases the model check finds, one by one, with plain messages."""
    longMessage = False

    def test_truncate_same_handle(self):
        for fs in ("tmp", "root"):
            d = guest_dir(fs, "tr")
            fd = os.open(L(d[1:], "f"), os.O_RDWR)
            try:
                os.pwrite(fd, b"A" * 10000, 0)
                self.assertEqual(os.pread(fd, 20000, 0), b"A" * 10000)
                os.ftruncate(fd, 100)
                self.assertEqual(os.fstat(fd).st_size, 100)
                got = os.pread(fd, 20000, 0)
                self.assertTrue(got == b"A" * 100, "%s: after ftruncate to 100, a read on the same handle: %s" % (
                    fs, describe(got, b"A" * 100)))
                os.ftruncate(fd, 9000)
                got = os.pread(fd, 20000, 0)
                want = b"A" * 100 + b"\0" * 8900
                self.assertTrue(got == want, "%s: after ftruncate to 9000, a read on the same handle: %s" % (
                    fs, describe(got, want)))
                os.truncate(L(d[1:], "f2"), 50)  # by the other name
                got = os.pread(fd, 20000, 0)
                self.assertTrue(got == b"A" * 50, "%s: after truncate(f2, 50), a read on f's handle: %s" % (
                    fs, describe(got, b"A" * 50)))
                self.assertEqual(os.fstat(fd).st_size, 50)
            finally:
                os.close(fd)

    def test_guest_changes_seen_by_open_handle(self):
        for fs in ("tmp", "root"):
            d = guest_dir(fs, "gc")
            D.sh(SB, "printf 0123456789 > %s/f" % d)
            fd = os.open(L(d[1:], "f"), os.O_RDONLY)
            try:
                self.assertEqual(os.pread(fd, 100, 0), b"0123456789")
                steps = [("printf abcdefghij > %s/f" % d, b"abcdefghij"),  # same size, new bytes
                         ("printf XY >> %s/f" % d, b"abcdefghijXY"),  # append
                         ("truncate -s 4 %s/f" % d, b"abcd"),  # shrink
                         ("printf %s > %s/f2" % ("Q" * 5000, d), b"Q" * 5000),  # through the other name, grown
                         ("dd if=/dev/zero of=%s/f bs=1 count=3 seek=4090 conv=notrunc 2>/dev/null" % d,
                          b"Q" * 4090 + b"\0" * 3 + b"Q" * 907)]
                for cmd, want in steps:
                    D.sh(SB, cmd)
                    got = os.pread(fd, 100000, 0)
                    self.assertTrue(got == want, "%s: after the guest's `%s`, pread on a handle opened before: %s" % (
                        fs, cmd[:60], describe(got, want)))
                    self.assertEqual(os.fstat(fd).st_size, len(want),
                                     "%s: fstat after the guest's `%s`" % (fs, cmd[:60]))
                    self.assertEqual(os.stat(L(d[1:], "f")).st_size, len(want),
                                     "%s: stat after the guest's `%s`" % (fs, cmd[:60]))
                    os.lseek(fd, 0, os.SEEK_SET)
                    self.assertTrue(os.read(fd, 100000) == want, "%s: read(2) after `%s`" % (fs, cmd[:60]))
            finally:
                os.close(fd)

    def test_mmap(self):
        for fs in ("tmp", "root"):
            d = guest_dir(fs, "mm")
            g = livehelp.GuestOps(D, SB, d)
            try:
                size = 3 * 4096 + 100
                self.assertEqual(g.batch(["open f O_RDWR", "pfill h0 0 %d 7" % size]), ["ok h0", "ok %d" % size])
                model = bytearray(((p * 131 + 7) & 255) for p in range(size))
                fd = os.open(L(d[1:], "f"), os.O_RDWR)
                fd2 = os.open(L(d[1:], "f2"), os.O_RDWR)
                try:
                    try:
                        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                    except OSError as e:
                        self.fail("%s: mmap(MAP_SHARED) of a live/ file: %s" % (fs, errno.errorcode.get(e.errno)))
                    try:
                        self.assertTrue(m[:] == model, "%s: MAP_SHARED contents: %s" % (fs, describe(m[:], model)))
                        # a private mapping reads the same; its writes stay private
                        p = mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
                        try:
                            self.assertTrue(p[:] == model, "%s: MAP_PRIVATE contents" % fs)
                            p[0:4] = b"PRIV"
                        finally:
                            p.close()
                        # writes through the shared mapping: in the guest after msync, and in other handles
                        m[10:20] = b"X" * 10
                        m[4090:4100] = b"Y" * 10  # across a page boundary
                        model[10:20] = b"X" * 10
                        model[4090:4100] = b"Y" * 10
                        m.flush()
                        got = g.op("pread h0 0 %d" % size)
                        self.assertEqual(got, "ok " + livehelp.fsops_data(bytes(model)),
                                         "%s: the guest's file after msync of a MAP_SHARED write" % fs)
                        self.assertTrue(os.pread(fd2, size, 0) == model,
                                        "%s: another host handle after msync: %s" % (
                                            fs, describe(os.pread(fd2, size, 0), model)))
                        # a host write through another handle shows in the mapping
                        os.pwrite(fd2, b"HOST", 200)
                        model[200:204] = b"HOST"
                        self.assertEqual(m[200:204], b"HOST", "%s: a pwrite on another handle, seen in the mapping" % fs)
                        # a guest change shows in the existing mapping within 2 s
                        self.assertEqual(g.op("pwrite h0 300 GUEST"), "ok 5")
                        model[300:305] = b"GUEST"
                        deadline = time.monotonic() + 2
                        while m[300:305] != b"GUEST" and time.monotonic() < deadline:
                            time.sleep(0.02)
                        self.assertEqual(m[300:305], b"GUEST", "%s: a guest write not in the host mapping after 2 s" % fs)
                        self.assertTrue(m[:] == model, "%s: mapping after the guest write: %s" % (
                            fs, describe(m[:], model)))
                        # written through the mapping, then munmap without msync: in the guest after the unmap
                        m[5000:5004] = b"ZZZZ"
                        model[5000:5004] = b"ZZZZ"
                    finally:
                        m.close()
                    os.close(fd)
                    fd = -1
                    got = g.op("pread h0 0 %d" % size)
                    self.assertEqual(got, "ok " + livehelp.fsops_data(bytes(model)),
                                     "%s: the guest's file after munmap of a MAP_SHARED write" % fs)
                    # a read-only mapping of a read-only handle
                    fd3 = os.open(L(d[1:], "f"), os.O_RDONLY)
                    try:
                        r = mmap.mmap(fd3, size, mmap.MAP_SHARED, mmap.PROT_READ)
                        self.assertTrue(r[:] == model, "%s: PROT_READ mapping" % fs)
                        r.close()
                    finally:
                        os.close(fd3)
                finally:
                    if fd >= 0:
                        os.close(fd)
                    os.close(fd2)
            finally:
                g.close()


class Model(harness.TestCase):
    """The random model check."""

    def pick_off(self, rnd, size):
        k = rnd.random()
        if k < 0.35:
            return rnd.randint(0, size)
        if k < 0.6:
            return max(0, rnd.randint(0, size // 4096 + 1) * 4096 + rnd.randint(-70, 70))
        if k < 0.75:
            return max(0, rnd.choice((1, 2)) * MIB + rnd.randint(-5000, 5000))
        if k < 0.9:
            return rnd.randint(0, 200)
        return max(0, size + rnd.randint(-100, 100))

    def pick_len(self, rnd):
        k = rnd.random()
        if k < 0.3:
            return rnd.randint(1, 16)
        if k < 0.65:
            return rnd.randint(1, 5000)
        if k < 0.8:
            return 4096 + rnd.randint(-70, 70)
        if k < 0.95:
            return rnd.randint(5000, 70000)
        return rnd.randint(70000, 400000)

    def pick_size(self, rnd, size):
        k = rnd.random()
        if k < 0.15:
            return 0
        if k < 0.5:
            return rnd.randint(0, size)
        if k < 0.7:
            return max(0, rnd.randint(0, size // 4096 + 2) * 4096 + rnd.randint(-3, 3))
        if k < 0.85:
            return max(0, rnd.choice((1, 2)) * MIB + rnd.randint(-3000, 3000))
        return size + rnd.randint(1, 300000)

    def sequence(self, fs, seed, local=None):
        """One random sequence; returns None or a failure report. With local (a host directory), the same
        sequence runs there without live/ (the check of the checker)."""
        rnd = random.Random(seed * 1000 + (fs == "root"))
        if local:
            gdir = local
            with open(os.path.join(local, "src"), "wb") as f:
                f.write(SRC)
            open(os.path.join(local, "f"), "wb").close()
            os.link(os.path.join(local, "f"), os.path.join(local, "f2"))
            names = {"f": os.path.join(local, "f"), "f2": os.path.join(local, "f2")}
        else:
            gdir = guest_dir(fs, "m%d" % seed)
            names = {"f": L(gdir[1:], "f"), "f2": L(gdir[1:], "f2")}
        how = {"rw": ("f", os.O_RDWR), "app": ("f2", os.O_WRONLY | os.O_APPEND), "ro": ("f", os.O_RDONLY),
               "ro2": ("f2", os.O_RDONLY)}
        h = {k: os.open(names[n], fl) for k, (n, fl) in how.items()}
        g = Guest(gdir, local)
        model = bytearray()
        log = []

        def src(n):
            so = rnd.randint(0, len(SRC) - n)
            return so, SRC[so:so + n]

        def put(off, data):
            if off > len(model):
                model.extend(b"\0" * (off - len(model)))
            model[off:off + len(data)] = data

        def resize(n):
            if n < len(model):
                del model[n:]
            else:
                model.extend(b"\0" * (n - len(model)))

        ops = [("host_pwrite", 20), ("host_append", 7), ("host_ftruncate", 6), ("host_truncate", 4),
               ("host_pread", 26), ("host_read", 4), ("host_fstat", 6), ("host_reopen", 1),
               ("guest_pwrite", 6), ("guest_append", 3), ("guest_ftruncate", 3), ("guest_truncate", 2),
               ("guest_pread", 4)]
        kinds = [k for k, w in ops for _ in range(w)]
        try:
            for i in range(OPS):
                kind = rnd.choice(kinds)
                size = len(model)
                if kind in ("host_pwrite", "guest_pwrite", "host_append", "guest_append") and size > MAX_SIZE:
                    kind = "host_ftruncate"
                err = None
                if kind == "host_pwrite":
                    off, n = self.pick_off(rnd, size), self.pick_len(rnd)
                    _, data = src(n)
                    log.append("#%d host pwrite rw off=%d len=%d" % (i, off, n))
                    w = os.pwrite(h["rw"], data, off)
                    put(off, data[:w])
                    if w != n:
                        err = "short write: %d of %d" % (w, n)
                elif kind == "host_append":
                    n = self.pick_len(rnd)
                    _, data = src(n)
                    log.append("#%d host write app (O_APPEND, name f2) len=%d" % (i, n))
                    w = os.write(h["app"], data)
                    model.extend(data[:w])
                    if w != n:
                        err = "short write: %d of %d" % (w, n)
                elif kind == "host_ftruncate":
                    k = rnd.choice(("rw", "app"))
                    n = self.pick_size(rnd, size) if size <= MAX_SIZE else rnd.randint(0, MIB)
                    log.append("#%d host ftruncate %s %d (from %d)" % (i, k, n, size))
                    os.ftruncate(h[k], n)
                    resize(n)
                elif kind == "host_truncate":
                    nm = rnd.choice(("f", "f2"))
                    n = self.pick_size(rnd, size)
                    log.append("#%d host truncate(%s, %d) (from %d)" % (i, nm, n, size))
                    os.truncate(names[nm], n)
                    resize(n)
                elif kind in ("host_pread", "host_read"):
                    k = rnd.choice(("rw", "ro", "ro2"))
                    off, n = self.pick_off(rnd, size + 50), self.pick_len(rnd)
                    want = bytes(model[off:off + n])
                    if kind == "host_pread":
                        log.append("#%d host pread %s off=%d len=%d" % (i, k, off, n))
                        got = os.pread(h[k], n, off)
                    else:
                        log.append("#%d host lseek+read %s off=%d len=%d" % (i, k, off, n))
                        os.lseek(h[k], off, os.SEEK_SET)
                        got = os.read(h[k], n)
                    if got != want:
                        err = "read: " + describe(got, want, off)
                elif kind == "host_fstat":
                    k = rnd.choice(list(h))
                    log.append("#%d host fstat %s and stat" % (i, k))
                    a, b = os.fstat(h[k]).st_size, os.stat(names[rnd.choice(("f", "f2"))]).st_size
                    if (a, b) != (size, size):
                        err = "st_size: fstat %d, stat %d, expected %d" % (a, b, size)
                elif kind == "host_reopen":
                    k = rnd.choice(list(h))
                    log.append("#%d host close+open %s" % (i, k))
                    os.close(h[k])
                    h[k] = os.open(names[how[k][0]], how[k][1])
                elif kind in ("guest_pwrite", "guest_append"):
                    n = self.pick_len(rnd)
                    so, data = src(n)
                    if kind == "guest_pwrite":
                        off = self.pick_off(rnd, size)
                        log.append("#%d guest pwrite off=%d len=%d" % (i, off, n))
                        r = g.op("pcopy h0 %d %d h2 %d" % (off, n, so))
                        put(off, data)
                    else:
                        log.append("#%d guest append (O_APPEND, name f2) len=%d" % (i, n))
                        r = g.op("pcopy h1 0 %d h2 %d" % (n, so))
                        model.extend(data)
                    if r != "ok %d" % n:
                        err = "guest write: %s" % r
                elif kind == "guest_ftruncate":
                    n = self.pick_size(rnd, size)
                    log.append("#%d guest ftruncate %d (from %d)" % (i, n, size))
                    r = g.op("ftruncate h0 %d" % n)
                    resize(n)
                    if r != "ok":
                        err = "guest ftruncate: %s" % r
                elif kind == "guest_truncate":
                    n = self.pick_size(rnd, size)
                    nm = rnd.choice(("f", "f2"))
                    log.append("#%d guest truncate(%s, %d) (from %d)" % (i, nm, n, size))
                    r = g.op("truncate %s %d" % (nm, n))
                    resize(n)
                    if r != "ok":
                        err = "guest truncate: %s" % r
                elif kind == "guest_pread":
                    off, n = self.pick_off(rnd, size + 50), self.pick_len(rnd)
                    log.append("#%d guest pread off=%d len=%d" % (i, off, n))
                    r = g.op("pread h0 %d %d" % (off, n))
                    want = "ok " + livehelp.fsops_data(bytes(model[off:off + n]))
                    if r != want:
                        err = "guest read (the host's writes are not in the guest's file): got %r, expected %r" % (
                            r[:80], want[:80])
                if err:
                    return "%s seed %d, op #%d of %d: %s\n      last ops:\n        %s" % (
                        fs, seed, i, OPS, err, "\n        ".join(log[-12:]))
            # the end: the whole file, on both sides
            got = os.pread(h["ro"], len(model) + 10, 0)
            if got != bytes(model):
                return "%s seed %d, at the end: host read of the whole file: %s" % (fs, seed, describe(got, model))
            r = g.op("pread h0 0 %d" % (len(model) + 10))
            if r != "ok " + livehelp.fsops_data(bytes(model)):
                return "%s seed %d, at the end: the guest's file differs from the model (%r)" % (fs, seed, r[:80])
            return None
        except OSError as e:
            return "%s seed %d: %s\n      last ops:\n        %s" % (fs, seed, e, "\n        ".join(log[-12:]))
        finally:
            for fd in h.values():
                os.close(fd)
            g.close()

    def run_model(self, fs):
        t0 = time.monotonic()
        fails = [f for f in (self.sequence(fs, s) for s in SEEDS) if f]
        sys.stderr.write("[%s: %d sequences of %d ops in %.1f s] " % (fs, len(SEEDS), OPS, time.monotonic() - t0))
        if fails:
            self.fail("%d of %d sequences on %s went wrong (EMBERFS_COH_SEED=N reruns one):\n  %s" % (
                len(fails), len(SEEDS), fs, "\n  ".join(fails)))

    def test_checker(self):
        """The model check itself, on a host directory (no live/): it must find nothing there."""
        local = tempfile.mkdtemp(prefix="efcoh", dir="/tmp")
        try:
            fail = self.sequence("host", 1, local=local)
        finally:
            shutil.rmtree(local)
        self.assertIsNone(fail, "the model check is wrong: it fails on a host directory")

    def test_tmpfs(self):
        self.run_model("tmp")

    def test_ext4(self):
        self.run_model("root")


if __name__ == "__main__":
    harness.main()
