#!/usr/bin/env python3
"""
Checkpoints against real guests (docs/interface.md, "Checkpoints"):

- checkpoint, then change a file and the processes, then rollback: the file
  is back, procs/ lists exactly the checkpoint's entries, the counting
  process runs again and its output goes on from the checkpoint (what the
  host had read before it is not read again), the machine id and hostname
  are the sandbox's, the clock is now; a handle opened before the rollback
  answers EIO (on the process's stdout and on a live/ file), and a reader
  blocked on a stream when the rollback comes gets EIO at once. Twice to the
  same checkpoint.
- fork NEW from C twice: both branches start from C and diverge; the
  sandbox itself runs on untouched.
- a checkpoint of a hibernated sandbox, or a fork from one of its
  checkpoints, does not wake it; checkpoints survive
  hibernate/wake and a kill -9 of the daemon and its restart; rollback from
  ready after a wake, from hibernated, stopped and paused.
- a kill -9 of the daemon while a rollback is held half-way (its old VMM
  ended, the new one not started): the restarted daemon comes up, the
  sandbox is settled (running or failed with a reason, never stuck) with its
  checkpoints, and its destroy leaves nothing.
- bad input changes nothing: unknown checkpoint (ENOENT), bad names
  (EINVAL), a taken name (EEXIST), over --max-checkpoints (ENOSPC, the
  figures in ctl_error), checkpoint, rollback and fork-from while a create
  runs and while a wake on access is held half-way (EBUSY, at once); a
  checkpoint held half-way is not listed, and a rollback written to the same
  ctl meanwhile waits for it (the kernel serializes writes to one FUSE file)
  and then runs.
- rmdir frees one (its blocks too); destroy takes every checkpoint with the
  sandbox: nothing of them is left in the store.

The daemon is the integration tests' holdd (tests/integration/holdd.c) with
holds at "agent" (a create), "checkpoint" (ctl checkpoint half-way),
"rollback" (ctl rollback half-way) and "wake" (a hibernated sandbox's wake,
before its VMM starts); a
thread releases every hold at once but those a test asks to keep, so the
other tests run as with the shipped daemon.
"""
import errno
import glob
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = BASE = None
RELEASER = None
HELD = set()  # hold files (NAME.PHASE) the releaser leaves for the test
MAX_CKPT = 4
COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"


class Releaser(threading.Thread):
    """Deletes every hold file (STATE/hold/NAME.PHASE) but those in HELD."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stopping = False

    def run(self):
        while not self.stopping:
            for p in glob.glob(os.path.join(D.state, "hold", "*")):
                if os.path.basename(p) not in HELD:
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass
            time.sleep(0.005)


def start_daemon(reuse=None):
    os.environ["EMBERFS_TEST_HOLD"] = "agent,checkpoint,rollback,wake"
    try:
        return harness.Daemon(extra_args=["--max-checkpoints", str(MAX_CKPT)], reuse=reuse,
                              binary=harness.HOLDD).start()
    finally:
        del os.environ["EMBERFS_TEST_HOLD"]


def setUpModule():
    global D, BASE, RELEASER
    D = start_daemon()
    RELEASER = Releaser()
    RELEASER.start()
    BASE = D.core(D.wait_inventory({**D.inventory(), "qemu": [], "run": [], "zombies": []}))


def tearDownModule():
    if RELEASER:
        RELEASER.stopping = True
    harness.stop_shared(D, BASE)


def ctl(name, verb):
    harness.write_file(D.sb(name, "ctl"), verb)


def status(name):
    return harness.read_json(D.sb(name, "status"))


def ck_status(name, ck):
    return harness.read_json(D.sb(name, "checkpoints", ck, "status"))


def checkpoints(name):
    return sorted(os.listdir(D.sb(name, "checkpoints")))


def start_proc(name, pid, cmd):
    os.mkdir(D.sb(name, "procs", pid))
    harness.write_file(D.sb(name, "procs", pid, "cmd"), cmd)


def read_numbers(fd, want):
    """The next want numbers of a counter's stdout, all below 10 (two bytes each), read exactly:
    what follows stays unread (in the host's buffer or the guest's)."""
    buf = b""
    while len(buf) < 2 * want:
        b = os.read(fd, 2 * want - len(buf))
        if not b:
            break
        buf += b
    return [int(x) for x in buf.split(b"\n")[:want]]


def ckpt_files(state_dir):
    """Every file or directory below a checkpoints/ directory of the store (.new-C ones too),
    and every rollback clone (NAME.rollback) left anywhere in it."""
    out = []
    for root, dirs, files in os.walk(os.path.join(state_dir, "store")):
        parts = root.split(os.sep)
        if "checkpoints" in parts:
            out += [os.path.join(root, n) for n in dirs + files]
        out += [os.path.join(root, n) for n in files if n.endswith(".rollback")]
    return out


def live(name, *rest):
    return os.path.join(D.mount, "live", name, *rest)


class Checkpoints(harness.TestCase):
    def tearDown(self):
        try:
            for n in D.sandboxes():
                D.destroy(n)
        finally:
            super().tearDown()

    def test_rollback_in_place(self):
        D.create_ready("r1")
        D.sh("r1", "echo one > /root/f")
        start_proc("r1", "cnt", COUNTER)
        fd = os.open(D.sb("r1", "procs", "cnt", "stdout"), os.O_RDONLY)
        try:
            seen = read_numbers(fd, 5)
        finally:
            os.close(fd)
        self.assertEqual(seen, [0, 1, 2, 3, 4])
        mid = D.sh("r1", "cat /etc/machine-id")
        ctl("r1", "checkpoint c1")
        self.assertEqual(checkpoints("r1"), ["c1"])
        st = ck_status("r1", "c1")
        self.assertEqual(st["name"], "c1")
        self.assertEqual(st["from_state"], "ready")
        self.assertEqual(st["procs"], ["cnt"])
        self.assertGreater(st["save_ms"], 0)
        self.assertGreater(st["paused_ms"], 0)
        self.assertLessEqual(st["paused_ms"], st["save_ms"])
        for k in ("apparent_bytes", "allocated_bytes", "exclusive_bytes"):
            self.assertIsInstance(st[k], int, k)
        self.assertLessEqual(st["exclusive_bytes"], st["allocated_bytes"])
        sst = status("r1")
        self.assertEqual(sst["checkpoints"], 1)
        self.assertGreater(sst["checkpoints_bytes"], 0)
        self.assertEqual(sst["state"], "ready")

        # after the checkpoint: change the file, drop the counter, start another
        D.sh("r1", "echo two > /root/f")
        fd = os.open(D.sb("r1", "procs", "cnt", "stdout"), os.O_RDONLY)
        after = read_numbers(fd, 3)
        os.close(fd)
        self.assertEqual(after[0], 5)  # the stream goes on
        os.rmdir(D.sb("r1", "procs", "cnt"))
        start_proc("r1", "later", "sleep 1000")
        old = os.open(D.sb("r1", "procs", "later", "stdout"), os.O_RDONLY)
        # a reader blocked on that stream (sleep writes nothing) when the rollback comes
        blocked = {}

        def blocked_read():
            fd2 = os.open(D.sb("r1", "procs", "later", "stdout"), os.O_RDONLY)
            try:
                blocked["data"] = os.read(fd2, 10)
            except OSError as e:
                blocked["errno"] = e.errno
            finally:
                os.close(fd2)

        reader = threading.Thread(target=blocked_read, daemon=True)
        reader.start()
        time.sleep(0.3)
        self.assertTrue(reader.is_alive(), "a read of a silent process's stdout returned: %r" % blocked)
        try:
            for rnd in range(2):  # the checkpoint stays as it was: twice
                t0 = time.monotonic()
                ctl("r1", "rollback c1")
                took = time.monotonic() - t0
                if rnd == 0:
                    reader.join(10)
                    self.assertFalse(reader.is_alive(), "a reader blocked across the rollback still waits")
                    self.assertEqual(blocked, {"errno": errno.EIO})
                self.assertEqual(status("r1")["state"], "ready")
                self.assertEqual(status("r1")["last_op"], "rollback")
                self.assertEqual(sorted(os.listdir(D.sb("r1", "procs"))), ["cnt"])
                self.assertEqual(D.sh("r1", "cat /root/f"), "one\n")
                self.assertEqual(D.sh("r1", "cat /etc/machine-id"), mid)
                self.assertEqual(D.sh("r1", "hostname").strip(), "r1")
                guest_now = float(D.sh("r1", "date +%s"))
                self.assertLess(abs(guest_now - time.time()), 5, "the clock is set at the rollback")
                self.assertEqual(harness.read_json(D.sb("r1", "procs", "cnt", "status"))["state"], "running")
                fd = os.open(D.sb("r1", "procs", "cnt", "stdout"), os.O_RDONLY)
                try:
                    again = read_numbers(fd, 3)
                finally:
                    os.close(fd)
                # what was read before the checkpoint is not read again; it goes on from there
                self.assertEqual(again, [5, 6, 7], "round %d (rollback took %.0f ms)" % (rnd, took * 1000))
                if rnd == 0:
                    # a handle of a process that is gone answers EIO
                    self.assertErrno(errno.EIO, os.read, old, 10)
                    D.sh("r1", "echo three > /root/f")
                    # handles opened before the second rollback: the counter's stdout, a live/ file
                    os.close(old)
                    old = os.open(D.sb("r1", "procs", "cnt", "stdout"), os.O_RDONLY)
                    lf = os.open(live("r1", "root", "f"), os.O_RDONLY)
                    self.assertEqual(os.pread(lf, 10, 0), b"three\n")
                else:
                    # a process of the same name, but a new inode: the old handle answers EIO
                    self.assertErrno(errno.EIO, os.read, old, 10)
                    try:
                        self.assertErrno(errno.EIO, os.pread, lf, 10, 0)
                    finally:
                        os.close(lf)
                    with open(live("r1", "root", "f")) as f:  # opened again: C's content
                        self.assertEqual(f.read(), "one\n")
        finally:
            os.close(old)

    def test_branches(self):
        D.create_ready("p1")
        D.sh("p1", "echo base > /root/f")
        ctl("p1", "checkpoint base")
        D.sh("p1", "echo parent > /root/f")
        ctl("p1", "fork b1 from base")
        ctl("p1", "fork b2 from base")
        self.assertEqual(status("b1")["path_reason"], "fork of p1 from checkpoint base")
        D.wait_ready("b1")
        D.wait_ready("b2")
        self.assertEqual(D.sh("b1", "cat /root/f"), "base\n")
        self.assertEqual(D.sh("b2", "cat /root/f"), "base\n")
        D.sh("b1", "echo one > /root/f")
        D.sh("b2", "echo two > /root/f")
        self.assertEqual(D.sh("b1", "cat /root/f"), "one\n")
        self.assertEqual(D.sh("b2", "cat /root/f"), "two\n")
        self.assertEqual(D.sh("p1", "cat /root/f"), "parent\n")
        self.assertNotEqual(D.sh("b1", "cat /etc/machine-id"), D.sh("b2", "cat /etc/machine-id"))
        self.assertEqual(D.sh("b1", "hostname").strip(), "b1")
        self.assertEqual(checkpoints("b1"), [])  # a branch starts with none of its own
        self.assertEqual(checkpoints("p1"), ["base"])
        self.assertEqual(status("p1")["state"], "ready")

    def test_bad_input_changes_nothing(self):
        D.create_ready("e1")
        ctl("e1", "checkpoint a")
        cases = [("rollback nope", errno.ENOENT), ("fork x1 from nope", errno.ENOENT),
                 ("checkpoint ../x", errno.EINVAL), ("checkpoint a b", errno.EINVAL),
                 ("checkpoint ", errno.EINVAL), ("rollback .a", errno.EINVAL),
                 ("fork x/1 from a", errno.EINVAL), ("fork x1 from a/b", errno.EINVAL),
                 ("checkpoint " + "x" * 65, errno.EINVAL), ("checkpoint a", errno.EEXIST),
                 ("fork e1 from a", errno.EEXIST)]
        for verb, want in cases:
            with self.subTest(verb=verb):
                self.assertErrno(want, ctl, "e1", verb)
                self.assertTrue(status("e1")["ctl_error"])
                self.assertEqual(checkpoints("e1"), ["a"])
                self.assertEqual(status("e1")["state"], "ready")
        self.assertEqual(D.sandboxes(), ["e1"])
        # the limit: --max-checkpoints
        for i in range(1, MAX_CKPT):
            ctl("e1", "checkpoint n%d" % i)
        self.assertErrno(errno.ENOSPC, ctl, "e1", "checkpoint over")
        self.assertIn("--max-checkpoints", status("e1")["ctl_error"])
        self.assertEqual(len(checkpoints("e1")), MAX_CKPT)
        # rmdir frees one (and its files)
        d = D.sandbox_vm_dir("e1")
        os.rmdir(D.sb("e1", "checkpoints", "n1"))
        self.assertNotIn("n1", checkpoints("e1"))
        self.assertFalse(os.path.exists(os.path.join(d, "checkpoints", "n1")))
        self.assertErrno(errno.ENOENT, os.rmdir, D.sb("e1", "checkpoints", "n1"))
        ctl("e1", "checkpoint over")
        # nothing half-made anywhere
        self.assertEqual([p for p in os.listdir(os.path.join(d, "checkpoints")) if p.startswith(".")], [])

    def test_busy(self):
        # a create that has not finished (held at its agent phase)
        HELD.add("held1.agent")
        os.mkdir(D.sb("held1"))
        hold = os.path.join(D.state, "hold", "held1.agent")
        harness.wait_for(lambda: os.path.exists(hold), 60, "the create held at agent")
        try:
            self.assertErrno(errno.EBUSY, ctl, "held1", "checkpoint x")
            self.assertErrno(errno.EBUSY, ctl, "held1", "rollback x")
        finally:
            HELD.discard("held1.agent")
            os.unlink(hold)
        D.wait_ready("held1")
        ctl("held1", "checkpoint c0")
        # a wake on access (an exec into a hibernated sandbox, held before its VMM starts): refused at once
        ctl("held1", "hibernate")
        HELD.add("held1.wake")
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("out", D.sh("held1", "echo woke")))
        t.start()
        hold = os.path.join(D.state, "hold", "held1.wake")
        try:
            harness.wait_for(lambda: os.path.exists(hold), 30, "the wake held")
            for verb in ("rollback c0", "checkpoint c2", "fork held2 from c0"):
                t0 = time.monotonic()
                self.assertErrno(errno.EBUSY, ctl, "held1", verb)
                self.assertLess(time.monotonic() - t0, 2.0, "%s waited instead of refusing" % verb)
                self.assertIn("resume runs", status("held1")["ctl_error"])
        finally:
            HELD.discard("held1.wake")
            os.unlink(hold)
            t.join(30)
        self.assertEqual(box.get("out"), "woke\n")
        self.assertEqual(checkpoints("held1"), ["c0"])
        self.assertNotIn("held2", D.sandboxes())
        # a checkpoint half-way is not listed, and nothing of it shows; a rollback written to the
        # same ctl meanwhile waits for it in the kernel (one write at a time), then runs
        D.sh("held1", "echo c1 > /root/f")
        HELD.add("held1.checkpoint")
        errs = {}

        def write(key, verb):
            try:
                ctl("held1", verb)
                errs[key] = 0
            except OSError as e:
                errs[key] = e.errno

        t = threading.Thread(target=write, args=("ck", "checkpoint c1"))
        t.start()
        hold = os.path.join(D.state, "hold", "held1.checkpoint")
        t2 = None
        try:
            harness.wait_for(lambda: os.path.exists(hold), 30, "the checkpoint held")
            self.assertEqual(checkpoints("held1"), ["c0"])
            t0 = time.monotonic()
            self.assertEqual(status("held1")["state"], "ready")  # status answers during it
            self.assertLess(time.monotonic() - t0, 2.0, "a status read waited for the checkpoint")
            t2 = threading.Thread(target=write, args=("rb", "rollback c0"))
            t2.start()
            time.sleep(1.0)
            self.assertNotIn("rb", errs, "a rollback written while a checkpoint runs returned before it")
            self.assertTrue(os.path.exists(hold))
        finally:
            HELD.discard("held1.checkpoint")
            try:
                os.unlink(hold)
            except FileNotFoundError:
                pass
            t.join(30)
            if t2:
                t2.join(60)
        self.assertEqual(errs, {"ck": 0, "rb": 0})
        self.assertEqual(checkpoints("held1"), ["c0", "c1"])
        self.assertEqual(status("held1")["state"], "ready")
        self.assertEqual(D.sh("held1", "cat /root/f 2>/dev/null || echo none"), "none\n")  # c0's
        ctl("held1", "rollback c1")
        self.assertEqual(D.sh("held1", "cat /root/f"), "c1\n")

    def test_hibernated_and_stopped(self):
        D.create_ready("h1")
        D.sh("h1", "echo a > /root/f")
        ctl("h1", "checkpoint a")
        D.sh("h1", "echo b > /root/f")
        ctl("h1", "hibernate")
        wakes = status("h1")["wakes"]
        ctl("h1", "checkpoint b")  # from the hibernation image: not woken
        self.assertEqual(status("h1")["state"], "hibernated")
        self.assertEqual(status("h1")["wakes"], wakes)
        st = ck_status("h1", "b")
        self.assertEqual(st["from_state"], "hibernated")
        self.assertEqual(st["paused_ms"], 0)
        self.assertEqual(checkpoints("h1"), ["a", "b"])
        # a branch of a hibernated sandbox: it is not woken either
        ctl("h1", "fork h2 from a")
        D.wait_ready("h2")
        self.assertEqual(D.sh("h2", "cat /root/f"), "a\n")
        self.assertEqual(status("h1")["state"], "hibernated")
        self.assertEqual(status("h1")["wakes"], wakes)
        D.destroy("h2")
        # a wake: the checkpoints are still there, and a rollback after it works
        ctl("h1", "resume")
        self.assertEqual(status("h1")["state"], "ready")
        self.assertEqual(checkpoints("h1"), ["a", "b"])
        self.assertEqual(D.sh("h1", "cat /root/f"), "b\n")
        ctl("h1", "rollback a")
        self.assertEqual(status("h1")["state"], "ready")
        self.assertEqual(D.sh("h1", "cat /root/f"), "a\n")
        ctl("h1", "hibernate")
        ctl("h1", "rollback b")  # a hibernated one rolls back to ready
        self.assertEqual(status("h1")["state"], "ready")
        self.assertEqual(D.sh("h1", "cat /root/f"), "b\n")
        ctl("h1", "rollback a")
        ctl("h1", "stop")
        ctl("h1", "rollback b")
        self.assertEqual(status("h1")["state"], "ready")
        self.assertEqual(D.sh("h1", "cat /root/f"), "b\n")
        ctl("h1", "pause")
        ctl("h1", "checkpoint p")
        self.assertEqual(ck_status("h1", "p")["from_state"], "paused")
        self.assertEqual(ck_status("h1", "p")["paused_ms"], 0)
        self.assertEqual(status("h1")["state"], "paused")  # a paused one stays paused
        ctl("h1", "rollback p")
        self.assertEqual(status("h1")["state"], "ready")

    def test_y_kill9_mid_rollback(self):
        global D
        D.create_ready("m1")
        D.sh("m1", "echo kept > /root/f")
        ctl("m1", "checkpoint k")
        D.sh("m1", "echo later > /root/f")
        HELD.add("m1.rollback")
        hold = os.path.join(D.state, "hold", "m1.rollback")
        box = {}

        def rollback():
            try:
                ctl("m1", "rollback k")
                box["errno"] = 0
            except OSError as e:
                box["errno"] = e.errno

        t = threading.Thread(target=rollback, daemon=True)
        t.start()
        try:
            harness.wait_for(lambda: os.path.exists(hold), 30, "the rollback held")
            D.kill9()
            t.join(30)
            self.assertFalse(t.is_alive(), "the ctl write did not return once the daemon was killed")
            self.assertNotEqual(box.get("errno"), 0, "the rollback succeeded with its daemon killed half-way")
        finally:
            HELD.discard("m1.rollback")
        D = start_daemon(reuse=D)
        self.assertEqual(D.sandboxes(), ["m1"])
        self.assertEqual(checkpoints("m1"), ["k"])
        settled = ("ready", "paused", "hibernated", "stopped", "failed")
        harness.wait_for(lambda: status("m1")["state"] in settled, 30, "m1 settled after the restart")
        st = status("m1")
        if st["state"] == "failed":
            # its own state was gone: failed with a reason, its checkpoints kept until rmdir
            # A failed sandbox refuses every verb (EBUSY), rollback and fork-from included
            self.assertIn("died during an operation that replaces it", st["error"] or "", st)
            self.assertErrno(errno.EBUSY, ctl, "m1", "rollback k")
            self.assertErrno(errno.EBUSY, ctl, "m1", "fork m2 from k")
            self.assertEqual(status("m1")["state"], "failed")
            self.assertEqual(checkpoints("m1"), ["k"])
            self.assertEqual(D.sandboxes(), ["m1"])
        else:
            # re-adopted: it must work (an exec answers, and C can be rolled back to)
            out = D.sh("m1", "cat /root/f")
            self.assertIn(out, ("kept\n", "later\n"))
            ctl("m1", "rollback k")
            self.assertEqual(D.sh("m1", "cat /root/f"), "kept\n")
            self.assertEqual(status("m1")["state"], "ready")
        D.destroy("m1")
        self.assertEqual(D.sandboxes(), [])
        self.assertEqual(ckpt_files(D.state), [], "checkpoint or rollback files left after the destroy")

    def test_z_restart_and_destroy(self):
        global D
        D.create_ready("k1")
        D.sh("k1", "echo kept > /root/f")
        start_proc("k1", "cnt", COUNTER)
        ctl("k1", "checkpoint k")
        D.sh("k1", "echo later > /root/f")
        D.kill9()
        D = start_daemon(reuse=D)
        self.assertEqual(checkpoints("k1"), ["k"])
        self.assertEqual(ck_status("k1", "k")["procs"], ["cnt"])
        ctl("k1", "rollback k")
        self.assertEqual(D.sh("k1", "cat /root/f"), "kept\n")
        self.assertEqual(harness.read_json(D.sb("k1", "procs", "cnt", "status"))["state"], "running")
        self.assertEqual(status("k1")["state"], "ready")
        ctl("k1", "checkpoint k2")
        self.assertTrue(ckpt_files(D.state))
        d = D.sandbox_vm_dir("k1")
        subprocess.run(["rm", "-rf", D.sb("k1")], check=True)
        self.assertEqual(D.sandboxes(), [])
        self.assertEqual(ckpt_files(D.state), [], "checkpoint files left after the sandbox's destroy")
        self.assertFalse(d and os.path.exists(d), "the sandbox's VM directory is left")


if __name__ == "__main__":
    harness.main()
