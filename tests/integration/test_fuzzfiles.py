#!/usr/bin/env python3
"""
Every writable file of the mount fuzzed through the real mount, against a
real daemon and real guests (run under ASan+UBSan in the suite):

- template config, ctl, pool and create; sandbox exec and ctl; a process's cmd,
  stdin and signal get random bytes (NUL, newlines, control characters,
  invalid UTF-8), a 1 MiB write, writes in pieces, writes at offsets,
  O_APPEND and O_TRUNC opens, and four concurrent writers, while other
  threads drive valid lifecycle commands (pause, resume, hibernate, stop,
  start) through the same sandbox's ctl.
- Refusals are errors of the documented kinds (EINVAL, EBUSY, EFBIG, ...),
  never a crash, a hang or an undocumented state: afterwards every sandbox
  and template is in a documented state, the template's config and pool
  read back as before, the daemon answers, a sandbox still runs a command,
  and the shutdown is clean.
- The read side: walkers readdir every directory of the mount, stat every
  entry, readlink every symlink and read every file that does not block
  (status, timings, config, console, metrics, ..., and files of the guests'
  trees under live/), while sandboxes are created and destroyed and others
  paused, resumed, hibernated, stopped and started. Only documented errors
  (a file that went away, a guest that is not running), no hang, and the
  walkers' symlinks never lead out of the mount.

The random seed is printed; EMBERFS_FUZZ_SEED=N repeats a run.
"""
import errno
import os
import random
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SEED = int(os.environ.get("EMBERFS_FUZZ_SEED") or random.SystemRandom().randrange(1 << 30))
SB_STATES = {"creating", "ready", "failed", "destroying", "paused", "hibernated", "stopped"}
TPL_STATES = {"new", "baking", "ready", "failed", "stale"}
# what a refused write may answer (anything else is a finding)
REFUSALS = {errno.EINVAL, errno.EBUSY, errno.EFBIG, errno.E2BIG, errno.EMSGSIZE, errno.ENOENT, errno.EEXIST,
            errno.ESRCH, errno.EPIPE, errno.EIO, errno.EAGAIN, errno.ENAMETOOLONG, errno.ENOSPC, errno.EPERM,
            errno.ESPIPE}


def junk(rng, n):
    kinds = [
        lambda: bytes(rng.randrange(256) for _ in range(n)),
        lambda: bytes(rng.choice(b"\x00\n\r\t\x1b{}[]\":,\\ abcpause resume") for _ in range(n)),
        lambda: (b"pause\n" * (n // 6 + 1))[:n],
        lambda: b"{" * n,
        lambda: ("\u00e9\ud7ff" * n).encode("utf-8", "surrogatepass")[:n] + b"\xff\xfe",
    ]
    return rng.choice(kinds)()


class Fuzz(harness.TestCase):
    def write_all(self, path, data, flags=os.O_WRONLY, offset=None, pieces=1):
        """Writes; returns None or the errno of the refusal (which must be a known kind)."""
        try:
            fd = os.open(path, flags)
        except OSError as e:
            self.assertIn(e.errno, REFUSALS, "open %s: %s" % (path, e))
            return e.errno
        try:
            step = max(1, len(data) // pieces)
            for k in range(0, max(len(data), 1), step):
                chunk = data[k:k + step]
                if offset is not None:
                    os.pwrite(fd, chunk, offset + k)
                else:
                    os.write(fd, chunk)
        except OSError as e:
            self.assertIn(e.errno, REFUSALS, "write %s (%d bytes): %s" % (path, len(data), e))
            return e.errno
        finally:
            try:
                os.close(fd)  # some files act at close (exec, cmd): its error is a refusal too
            except OSError as e:
                self.assertIn(e.errno, REFUSALS, "close %s: %s" % (path, e))
                return e.errno
        return None

    def mutate(self, rng, path, counts, allow_big=True):
        shapes = ["junk", "pieces", "offset", "append", "trunc"] + (["big"] if allow_big else [])
        shape = rng.choice(shapes)
        n = rng.choice((1, 2, 7, 64, 511, 4096))
        data = junk(rng, n) if shape != "big" else bytes(rng.randrange(256) for _ in range(1 << 10)) * 1024
        if shape == "pieces":
            r = self.write_all(path, data, pieces=rng.choice((2, 3, 5)))
        elif shape == "offset":
            r = self.write_all(path, data, offset=rng.choice((1, 100, 4095, 1 << 20)))
        elif shape == "append":
            r = self.write_all(path, data, flags=os.O_WRONLY | os.O_APPEND)
        elif shape == "trunc":
            r = self.write_all(path, data, flags=os.O_WRONLY | os.O_TRUNC)
        else:
            r = self.write_all(path, data)
        name = os.path.basename(path)
        key = (name, errno.errorcode.get(r, "ok") if r else "ok")
        counts[key] = counts.get(key, 0) + 1
        if r is None and name in ("pool", "config", "signal", "create"):
            self.accepted.append((name, shape, data[:40]))

    def test_every_writable_file(self):
        rng = random.Random(SEED)
        self.accepted = []
        sys.stderr.write("\n  seed %d (EMBERFS_FUZZ_SEED)\n" % SEED)
        with harness.own_daemon(pool=1) as d, d.template("fz"):  # fz is never baked: no config write starts a bake
            config0 = harness.read_text(d.tpl("fz", "config"))
            pool0 = harness.read_text(d.tpl("default", "pool"))
            for n in ("a", "b"):
                d.create_ready(n)
            os.mkdir(d.sb("a", "procs", "1"))
            harness.write_file(d.sb("a", "procs", "1", "cmd"), "cat > /dev/null")
            os.mkdir(d.sb("a", "procs", "sig"))  # signals go to another process than stdin's
            harness.write_file(d.sb("a", "procs", "sig", "cmd"), "sleep 1000")
            counts = {}
            targets = [d.tpl("fz", "config"), d.tpl("fz", "ctl"), d.tpl("default", "pool"), d.tpl("fz", "create"),
                       d.sb("b", "ctl"), d.sb("a", "procs", "1", "stdin"), d.sb("a", "procs", "sig", "signal")]
            once = [d.sb("a", "exec")]  # each write runs a guest shell: a few
            stop = threading.Event()
            errors = []

            def lifecycle():
                # valid verbs racing with the junk on b's ctl
                r2 = random.Random(SEED + 1)
                while not stop.is_set():
                    verb = r2.choice((b"pause", b"resume", b"hibernate", b"stop", b"start", b"resume"))
                    try:
                        harness.write_file(d.sb("b", "ctl"), verb)
                    except OSError as e:
                        if e.errno not in (errno.EBUSY, errno.EINVAL, errno.EIO):
                            errors.append("lifecycle %s: %s" % (verb, e))
                    time.sleep(0.05)

            def writer(k):
                r3 = random.Random(SEED + 10 + k)
                try:
                    for _ in range(60):
                        self.mutate(r3, r3.choice(targets), {}, allow_big=False)
                except AssertionError as e:
                    errors.append(str(e))

            th = [threading.Thread(target=lifecycle)] + [threading.Thread(target=writer, args=(k,)) for k in range(4)]
            for t in th:
                t.start()
            try:
                for _ in range(400):
                    self.mutate(rng, rng.choice(targets), counts)
                for _ in range(8):
                    self.mutate(rng, rng.choice(once), counts, allow_big=False)
                # proc slots: junk as the command of fresh ones
                for k in range(2, 8):
                    os.mkdir(d.sb("a", "procs", str(k)))
                    self.mutate(rng, d.sb("a", "procs", str(k), "cmd"), counts, allow_big=False)
            finally:
                stop.set()
                for t in th:
                    t.join(timeout=120)
            self.assertFalse([t for t in th if t.is_alive()], "a writer hangs")
            self.assertEqual(errors, [])
            sys.stderr.write("  " + ", ".join("%s %s: %d" % (f, r, n) for (f, r), n in sorted(counts.items())) + "\n")
            # what a parser accepted must have been valid input for it
            for name, shape, data in self.accepted:
                text = data.decode("ascii", "replace").strip()
                if name == "pool":
                    self.assertRegex(text, r"^(auto|[0-9]+)$", (shape, data))
                elif name == "signal":
                    self.assertRegex(text.upper(), r"^(SIG)?[A-Z0-9]+$", (shape, data))
                else:
                    self.fail("junk accepted as a %s: %r" % (name, (shape, data)))
            self.assertEqual(d.sandboxes("fz"), [])  # no create written as junk made a sandbox
            # documented states only; nothing changed where everything was refused
            for n in d.sandboxes():
                self.assertIn(d.status(n)["state"], SB_STATES, n)
            for t in ("default", "fz"):
                self.assertIn(d.template_status(t)["state"], TPL_STATES, t)
            self.assertEqual(harness.read_text(d.tpl("fz", "config")), config0)
            pool = harness.read_text(d.tpl("default", "pool"))
            self.assertTrue(pool == pool0 or pool.strip().isdigit() or pool.strip() == "auto", pool)
            # the daemon still works
            self.assertEqual(d.sh("a", "echo ok").strip(), "ok")
            st = d.status("b")["state"]
            if st == "stopped":
                harness.write_file(d.sb("b", "ctl"), b"start")
            elif st in ("paused", "hibernated"):
                harness.write_file(d.sb("b", "ctl"), b"resume")
            self.assertEqual(d.sh("b", "hostname").strip(), "b")
            for k in list(range(1, 8)) + ["sig"]:
                os.rmdir(d.sb("a", "procs", str(k)))


# what a walker may meet while everything changes under it
WALK_ERRORS = {errno.ENOENT, errno.EIO, errno.ESTALE, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ELOOP,
               errno.ENXIO, errno.EINVAL}
BLOCKING = {"wait", "events", "stdout", "stderr", "exec", "cmd", "stdin", "signal", "ctl"}
GUEST_SKIP = {"proc", "sys", "dev"}  # endless or live kernel trees of the guest


class ReadSide(harness.TestCase):
    def walk(self, d, root, rng, stats, errors, deadline):
        """One pass over the tree under root: readdir, lstat, readlink, read (bounded)."""
        stack = [(root, 0)]
        while stack and time.monotonic() < deadline:
            path, depth = stack.pop()
            try:
                names = os.listdir(path)
            except OSError as e:
                if e.errno not in WALK_ERRORS:
                    errors.append("readdir %s: %s" % (path, e))
                stats["readdir_err"] = stats.get("readdir_err", 0) + 1
                continue
            stats["readdir"] = stats.get("readdir", 0) + 1
            rng.shuffle(names)
            in_guest = "/live/" in path + "/"
            for name in names[:40]:
                p = os.path.join(path, name)
                try:
                    st = os.lstat(p)
                except OSError as e:
                    if e.errno not in WALK_ERRORS:
                        errors.append("lstat %s: %s" % (p, e))
                    continue
                stats["lstat"] = stats.get("lstat", 0) + 1
                if stat.S_ISLNK(st.st_mode):
                    try:
                        t = os.readlink(p)
                        stats["readlink"] = stats.get("readlink", 0) + 1
                        real = os.path.realpath(p)
                        if in_guest and not (real + "/").startswith(d.mount + "/"):
                            errors.append("symlink %s -> %s leaves the mount (%s)" % (p, t, real))
                    except OSError as e:
                        if e.errno not in WALK_ERRORS:
                            errors.append("readlink %s: %s" % (p, e))
                elif stat.S_ISDIR(st.st_mode):
                    if depth < (3 if in_guest else 6) and not (in_guest and depth == 1 and name in GUEST_SKIP):
                        stack.append((p, depth + 1))
                elif stat.S_ISREG(st.st_mode) and name not in BLOCKING and (st.st_mode & 0o444):
                    try:
                        with open(p, "rb", buffering=0) as f:
                            f.read(1 << 16)
                        stats["read"] = stats.get("read", 0) + 1
                    except OSError as e:
                        if e.errno not in WALK_ERRORS:
                            errors.append("read %s: %s" % (p, e))

    def test_walk_while_everything_changes(self):
        rng = random.Random(SEED)
        sys.stderr.write("\n  seed %d (EMBERFS_FUZZ_SEED)\n" % SEED)
        with harness.own_daemon(pool=1) as d:
            for n in ("r1", "r2"):
                d.create_ready(n)
            d.sh("r1", "mkdir -p /tmp/w/a/b; echo x > /tmp/w/a/f; ln -s ../../.. /tmp/w/a/up; ln -s / /tmp/w/root;"
                       " ln -s /etc/passwd /tmp/w/pw; ln -s w /tmp/w/loop")
            stop = threading.Event()
            errors, stats = [], {}

            def lifecycle():
                r2 = random.Random(SEED + 1)
                k = 0
                while not stop.is_set():
                    verb = r2.choice((b"pause", b"resume", b"hibernate", b"stop", b"start", b"resume"))
                    try:
                        harness.write_file(d.sb("r2", "ctl"), verb)
                    except OSError as e:
                        if e.errno not in (errno.EBUSY, errno.EINVAL, errno.EIO):
                            errors.append("lifecycle %s: %s" % (verb, e))
                    # sandboxes come and go under the walkers
                    name = "t%d" % (k % 3)
                    k += 1
                    try:
                        if os.path.isdir(d.sb(name)):
                            d.destroy(name)
                        else:
                            d.create(name)
                    except OSError as e:
                        if e.errno not in (errno.EEXIST, errno.ENOENT, errno.EBUSY):
                            errors.append("create/destroy %s: %s" % (name, e))
                    time.sleep(0.05)

            def walker(k):
                r3 = random.Random(SEED + 20 + k)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    self.walk(d, d.mount if k % 2 == 0 else os.path.join(d.mount, "live"), r3, stats, errors,
                              deadline)

            th = [threading.Thread(target=lifecycle)] + [threading.Thread(target=walker, args=(k,)) for k in range(4)]
            for t in th[1:]:
                t.start()
            th[0].start()
            for t in th[1:]:
                t.join(timeout=120)
            stop.set()
            th[0].join(timeout=120)
            self.assertFalse([t for t in th if t.is_alive()], "a walker hangs")
            self.assertEqual(errors, [])
            sys.stderr.write("  " + ", ".join("%s: %d" % kv for kv in sorted(stats.items())) + "\n")
            self.assertGreater(stats.get("readlink", 0), 0, "the walk met no symlink")
            # documented states, and the daemon still works
            for n in d.sandboxes():
                self.assertIn(d.status(n)["state"], SB_STATES, n)
            self.assertEqual(d.sh("r1", "echo ok").strip(), "ok")
            for n in d.sandboxes():
                d.destroy(n)


if __name__ == "__main__":
    harness.main()
