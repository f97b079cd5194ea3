#!/usr/bin/env python3
"""
Sandbox lifecycle against a real daemon and real guests (restore path):
mkdir / wait / status / timings / exec (plain, JSON, write-only) / console /
rmdir / rm -rf, two sandboxes at once, exec right after mkdir, wait failing
on a destroyed sandbox, and entropy of clones of one snapshot.

One daemon serves the whole file; every test checks that the leak inventory
is back to the daemon's baseline once its sandboxes are gone.
"""
import errno
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = None
BASE = None
STATUS_FIELDS = ("name", "template", "state", "path", "path_reason", "identity", "backend", "accel", "clone",
                 "vmm_pid", "created_at_unix_ms", "timings", "ready_ms", "error")
SB_FILES = ["checkpoints", "console", "ctl", "env", "exec", "metadata", "procs", "root", "status", "timeout", "timings", "usage", "wait"]


def setUpModule():
    global D, BASE
    D, BASE = harness.start_shared()
    # baseline: our FUSE mount, the store (and its loop device if loop-mounted), nothing else
    st = D.template_status()
    assert any(m.startswith(D.mount + " (fuse") for m in BASE["mounts"]), BASE
    if "loop-mounted" in st["store"]:
        assert len(BASE["loops"]) == 1 and any("/store (xfs)" in m for m in BASE["mounts"]), BASE
    assert not BASE["qemu"] and not BASE["run"] and not BASE["sandboxes"], BASE


def tearDownModule():
    if D is not None:
        D.stop()


def vmm_start(pid):
    st = harness.proc_stat(pid)
    return st[2] if st else None


class Lifecycle(harness.TestCase):
    def tearDown(self):
        try:
            for n in D.sandboxes():
                D.destroy(n)
            D.assert_inventory(BASE)
        finally:
            super().tearDown()

    def test_status_fields_and_timings(self):
        t0 = time.time()
        D.create("life1")
        self.assertEqual(D.wait("life1"), "ready\n")
        t1 = time.time()
        st = D.status("life1")
        for k in STATUS_FIELDS:
            self.assertIn(k, st, "status lacks %r: %s" % (k, st))
        self.assertEqual(st["name"], "life1")
        self.assertEqual(st["template"], "default")
        self.assertEqual(st["state"], "ready")
        self.assertEqual(st["path"], "restore", st)
        self.assertIsNone(st["path_reason"])
        self.assertIsNone(st["error"])
        ident = harness.read_text(D.tpl("default", "identity")).strip()
        self.assertRegex(ident, r"^[0-9a-f]{64}$")
        self.assertEqual(st["identity"], ident)
        self.assertEqual(D.template_status()["identity"], ident)
        self.assertEqual(st["backend"], "qemu")
        self.assertIn(st["accel"], ("tcg", "kvm"))
        self.assertIn(st["clone"], ("reflink", "copy"))
        if "reflink" in D.template_status()["store"]:
            self.assertEqual(st["clone"], "reflink")
        # the VMM runs and is ours
        pid = st["vmm_pid"]
        self.assertIsInstance(pid, int)
        self.assertTrue(harness.pid_alive(pid))
        self.assertTrue(harness.vmm_dir(pid).startswith(D.state + "/"))
        # created_at is wall-clock ms of the mkdir (the daemon may round down to the second)
        self.assertGreaterEqual(st["created_at_unix_ms"], int(t0 * 1000) - 1000)
        self.assertLessEqual(st["created_at_unix_ms"], int(t1 * 1000) + 1000)
        # timings file: same phases (and order) as the status, a total, ready_ms = total = sum
        phases, total, order = harness.parse_timings(harness.read_text(D.sb("life1", "timings")))
        self.assertEqual(order, list(st["timings"].keys()))
        for k, v in st["timings"].items():
            self.assertAlmostEqual(phases[k], v, delta=0.0011, msg=k)
            self.assertGreaterEqual(v, 0.0, k)
        self.assertGreater(len(phases), 1)
        self.assertAlmostEqual(sum(phases.values()), total, delta=0.001 * len(phases) + 0.002)
        self.assertIsInstance(st["ready_ms"], (int, float))
        self.assertAlmostEqual(st["ready_ms"], total, delta=0.01)
        # the mkdir-to-ready time seen from outside bounds ready_ms
        self.assertLessEqual(st["ready_ms"], (t1 - t0) * 1000 + 5)
        self.assertEqual(D.template_status()["sandboxes"], 1)
        self.assertEqual(sorted(os.listdir(D.sb("life1"))), SB_FILES)
        # a second read of wait answers at once
        self.assertEqual(D.wait("life1"), "ready\n")

    def test_rmdir_destroys_everything(self):
        before = D.inventory()
        st = D.create_ready("rm1")
        pid, start = st["vmm_pid"], vmm_start(st["vmm_pid"])
        during = D.inventory()
        self.assertEqual(len(during["qemu"]), 1, during)
        self.assertEqual(during["sandboxes"], ["default/rm1"])
        self.assertEqual(len(during["run"]), 1, during)
        vmdir = D.sandbox_vm_dir("rm1")
        self.assertIsNotNone(vmdir, "no per-VM directory records sandbox rm1")
        rec = harness.read_json(os.path.join(vmdir, "record.json"))
        self.assertEqual((rec["vmm_pid"], rec["vmm_start"]), (pid, start))
        os.rmdir(D.sb("rm1"))
        self.assertNotIn("rm1", D.sandboxes())
        self.assertErrno(errno.ENOENT, os.stat, D.sb("rm1"))
        self.assertErrno(errno.ENOENT, os.stat, D.sb("rm1", "status"))
        self.assertTrue(harness.wait_pid_gone(pid, start, timeout=5), "VMM %d still runs after rmdir" % pid)
        self.assertFalse(os.path.exists(vmdir))
        self.assertIsNone(D.sandbox_vm_dir("rm1"))
        self.assertEqual(D.template_status()["sandboxes"], 0)
        D.assert_inventory(before)

    def test_rm_rf_destroys_and_exits_0(self):
        st = D.create_ready("rmrf1")
        pid, start = st["vmm_pid"], vmm_start(st["vmm_pid"])
        vmdir = D.sandbox_vm_dir("rmrf1")
        p = subprocess.run(["rm", "-rf", D.sb("rmrf1")], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")
        self.assertNotIn("rmrf1", D.sandboxes())
        self.assertTrue(harness.wait_pid_gone(pid, start, timeout=5))
        self.assertFalse(os.path.exists(vmdir))
        D.assert_inventory(BASE)

    def test_two_sandboxes_at_once(self):
        D.create("two-a")
        D.create("two-b")
        self.assertEqual(D.sandboxes(), ["two-a", "two-b"])
        sa, sb = D.wait_ready("two-a"), D.wait_ready("two-b")
        self.assertEqual((sa["path"], sb["path"]), ("restore", "restore"))
        self.assertNotEqual(sa["vmm_pid"], sb["vmm_pid"])
        self.assertEqual(D.sh("two-a", "hostname").strip(), "two-a")
        self.assertEqual(D.sh("two-b", "hostname").strip(), "two-b")
        # separate disks: a file written in one is not in the other
        D.sh("two-a", "echo a > /root/only-in-a && sync")
        out, ok = D.exec_plain("two-b", "test -e /root/only-in-a")
        self.assertFalse(ok, "a file written in two-a is visible in two-b")
        self.assertEqual(D.template_status()["sandboxes"], 2)
        self.assertEqual(len(D.inventory()["qemu"]), 2)

    def test_exec_right_after_mkdir(self):
        D.create("quick1")
        # no read of wait: exec waits for readiness by itself
        self.assertEqual(D.sh("quick1", "hostname").strip(), "quick1")
        self.assertEqual(D.status("quick1")["state"], "ready")

    def test_wait_fails_eio_once_destroyed(self):
        D.create("gone1")
        # a reader blocked in wait while the sandbox is destroyed gets EIO
        result = {}
        blocked_fd = os.open(D.sb("gone1", "wait"), os.O_RDONLY)

        def reader():
            try:
                result["data"] = os.read(blocked_fd, 64)
            except OSError as e:
                result["errno"] = e.errno

        th = threading.Thread(target=reader)
        th.start()
        time.sleep(0.01)
        state_at_rmdir = D.status("gone1")["state"]
        fd = os.open(D.sb("gone1", "wait"), os.O_RDONLY)
        try:
            os.rmdir(D.sb("gone1"))
            # an open wait file of a destroyed sandbox: EIO, never "ready"
            self.assertErrno(errno.EIO, os.read, fd, 64)
        finally:
            os.close(fd)
        th.join(30)
        self.assertFalse(th.is_alive(), "wait reader still blocked after rmdir")
        os.close(blocked_fd)
        if state_at_rmdir == "creating":
            self.assertEqual(result.get("errno"), errno.EIO, result)
        else:
            self.assertIn(result, ({"data": b"ready\n"}, {"errno": errno.EIO}))


class Exec(harness.TestCase):
    """exec semantics on one restored sandbox."""

    @classmethod
    def setUpClass(cls):
        cls.st = D.create_ready("ex")

    @classmethod
    def tearDownClass(cls):
        D.destroy("ex")
        D.assert_inventory(BASE)

    def test_interrupted_read_then_close_does_not_wait(self):
        # a signal interrupts a read waiting for a long command (EINTR), and
        # closing the handle then does not wait for the command either
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        # SIGUSR1 to this thread (SIGALRM is the harness's per-test timeout)
        old = signal.signal(signal.SIGUSR1, lambda *a: None)
        timer = threading.Timer(2, signal.pthread_kill, (threading.get_ident(), signal.SIGUSR1))
        fd = os.open(D.sb("ex", "exec"), os.O_RDWR)
        try:
            os.write(fd, b"sleep 20")
            timer.start()
            buf = ctypes.create_string_buffer(4096)
            t0 = time.monotonic()
            n = libc.read(fd, buf, 4096)  # raw read: Python would retry on EINTR
            self.assertEqual((n, ctypes.get_errno()), (-1, errno.EINTR))
            self.assertLess(time.monotonic() - t0, 10)
        finally:
            timer.cancel()
            signal.signal(signal.SIGUSR1, old)
            t0 = time.monotonic()
            os.close(fd)
        self.assertLess(time.monotonic() - t0, 5, "close waited for the command")

    def test_killed_reader_dies_at_once(self):
        # `cat <&3` on a long command, then SIGTERM: the reader ends at once.
        # The fork's close of its copy of the fd must not start the command
        # or wait for it either (that once held the child for the whole run).
        fd = os.open(D.sb("ex", "exec"), os.O_RDWR)
        try:
            os.write(fd, b"sleep 20")
            t0 = time.monotonic()
            p = subprocess.Popen(["cat"], stdin=fd, stdout=subprocess.DEVNULL)
            self.assertLess(time.monotonic() - t0, 5, "spawning the reader waited for the command")
            time.sleep(1)
            p.terminate()
            t0 = time.monotonic()
            self.assertEqual(p.wait(timeout=15), -signal.SIGTERM)
            self.assertLess(time.monotonic() - t0, 5)
        finally:
            os.close(fd)

    def test_wait_honours_small_reads(self):
        fd = os.open(D.sb("ex", "wait"), os.O_RDONLY)
        try:
            self.assertEqual(os.read(fd, 1), b"r")
        finally:
            os.close(fd)

    def test_uname_is_6_1(self):
        out = D.sh("ex", "uname -r").strip()
        self.assertRegex(out, r"^6\.1\.\d+")

    def test_tcg_guest_has_no_periodic_checks(self):
        """The emulated platform's parameters (architecture.md, "Booting under TCG") took effect in the guest:
        no clocksource watchdog over the TSC, no lockup detectors, no proactive compaction."""
        line = D.sh("ex", "cat /proc/cmdline").split()
        for p in ("tsc=reliable", "nowatchdog", "sysctl.vm.compaction_proactiveness=0"):
            self.assertIn(p, line)
        out = D.sh("ex", "cat /sys/devices/system/clocksource/clocksource0/current_clocksource "
                         "/proc/sys/kernel/watchdog /proc/sys/vm/compaction_proactiveness").split()
        self.assertEqual(out, ["tsc", "0", "0"])

    def test_hostname_and_env_name_the_sandbox(self):
        self.assertEqual(D.sh("ex", "hostname").strip(), "ex")
        self.assertEqual(D.sh("ex", "cat /proc/sys/kernel/hostname").strip(), "ex")
        self.assertEqual(D.sh("ex", 'echo "$EMBERFS_SANDBOX $EMBERFS_TEMPLATE"').strip(), "ex default")

    def test_plain_mode_output_then_eio_on_failure(self):
        out, ok = D.exec_plain("ex", "echo out; echo err >&2; exit 3")
        self.assertFalse(ok, "a non-zero exit must end the read with EIO")
        self.assertEqual(out, b"out\nerr\n")  # stdout then stderr
        out, ok = D.exec_plain("ex", "echo fine")
        self.assertTrue(ok)
        self.assertEqual(out, b"fine\n")
        out, ok = D.exec_plain("ex", "true")
        self.assertEqual((out, ok), (b"", True))

    def test_plain_mode_cat_exit_status(self):
        # the shell view of the same contract: `cat` exits 1 when the command failed
        script = 'exec 3<>"$1"; printf "%s" "$2" >&3; cat <&3'
        p = subprocess.run(["sh", "-c", script, "sh", D.sb("ex", "exec"), "echo hi; exit 3"],
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 1, p)
        self.assertEqual(p.stdout, b"hi\n")
        self.assertIn(b"Input/output error", p.stderr)
        p = subprocess.run(["sh", "-c", script, "sh", D.sb("ex", "exec"), "echo hi"],
                           capture_output=True, timeout=60)
        self.assertEqual((p.returncode, p.stdout), (0, b"hi\n"), p)

    def test_json_mode(self):
        r = D.exec_json("ex", {"sh": "exit 3"})
        self.assertEqual(set(r), {"exit_code", "signal", "truncated", "timed_out", "duration_ms", "stdout", "stderr"})
        self.assertEqual((r["exit_code"], r["signal"], r["truncated"], r["timed_out"]), (3, 0, False, False))
        self.assertIsInstance(r["duration_ms"], (int, float))
        r = D.exec_json("ex", {"sh": "echo to-out; echo to-err >&2"})
        self.assertEqual((r["exit_code"], r["stdout"], r["stderr"]), (0, b"to-out\n", b"to-err\n"))
        r = D.exec_json("ex", {"argv": ["/bin/echo", "a  b", "$HOME"]})
        self.assertEqual(r["stdout"], b"a  b $HOME\n")  # argv: no shell
        r = D.exec_json("ex", {"sh": 'echo "$FOO"; pwd', "env": {"FOO": "bar"}, "cwd": "/tmp"})
        self.assertEqual(r["stdout"], b"bar\n/tmp\n")
        # binary output survives base64
        r = D.exec_json("ex", {"sh": "printf '\\000\\377\\001'"})
        self.assertEqual(r["stdout"], b"\x00\xff\x01")

    def test_killed_command(self):
        r = D.exec_json("ex", {"sh": "kill -9 $$"})
        self.assertEqual(r["signal"], 9, r)
        self.assertNotEqual(r["exit_code"], 0)
        out, ok = D.exec_plain("ex", "kill -9 $$")
        self.assertFalse(ok, "a killed command must end the plain read with EIO")
        t0 = time.monotonic()
        r = D.exec_json("ex", {"sh": "sleep 30", "timeout_ms": 300})
        self.assertLess(time.monotonic() - t0, 15)
        self.assertEqual((r["exit_code"], r["signal"], r["timed_out"]), (-1, 9, True), r)

    def test_stderr_captured_plain(self):
        out, ok = D.exec_plain("ex", "ls /does-not-exist")
        self.assertFalse(ok)
        self.assertIn(b"does-not-exist", out)

    def test_write_only_exec_runs_on_close(self):
        D.sh("ex", "rm -f /tmp/wo-marker")
        D.exec_write_only("ex", "sleep 1; touch /tmp/wo-marker")
        # close returned after the command finished: the marker is there now
        out, ok = D.exec_plain("ex", "test -e /tmp/wo-marker")
        self.assertTrue(ok, "write-only exec did not run (or close returned before it finished)")
        # the same through a shell redirection, `printf cmd > exec`
        p = subprocess.run(["sh", "-c", 'printf "%s" "$2" > "$1"', "sh", D.sb("ex", "exec"),
                            "echo via-shell > /tmp/sh-marker"], capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p)
        self.assertEqual(D.sh("ex", "cat /tmp/sh-marker"), "via-shell\n")

    def test_console_readable(self):
        data = harness.read_text(D.sb("ex", "console"))  # may be empty after a restore
        self.assertIsInstance(data, str)
        with open(D.sb("ex", "console"), "rb") as f:
            f.read()

    def test_read_only_files_refuse_writes(self):
        for f in ("status", "timings", "wait", "console"):
            self.assertErrno(errno.EACCES, os.open, D.sb("ex", f), os.O_WRONLY)


class Entropy(harness.TestCase):
    def test_clones_of_one_snapshot_diverge(self):
        D.create("ent-a")
        D.create("ent-b")
        try:
            sa, sb = D.wait_ready("ent-a"), D.wait_ready("ent-b")
            self.assertEqual((sa["path"], sb["path"]), ("restore", "restore"))
            ra = D.exec_json("ent-a", {"sh": "head -c 32 /dev/urandom"})
            rb = D.exec_json("ent-b", {"sh": "head -c 32 /dev/urandom"})
            self.assertEqual((ra["exit_code"], rb["exit_code"]), (0, 0))
            self.assertEqual((len(ra["stdout"]), len(rb["stdout"])), (32, 32))
            self.assertNotEqual(ra["stdout"], rb["stdout"],
                                "two clones of one snapshot read the same /dev/urandom bytes")
            # one sealed base of the snapshot's memory, mapped privately by both: what one writes
            # (here into /tmp, a tmpfs: guest RAM) the other never sees
            pa, pb = sa["vmm_pid"], sb["vmm_pid"]
            self.assertEqual(harness.vmm_mem_path(pa), "/memfd:emberfs-ram-base (deleted)")
            base = [os.stat("/proc/%d/fd/%d" % (p, harness.VMM_FD_MEM)) for p in (pa, pb)]
            self.assertEqual((base[0].st_dev, base[0].st_ino), (base[1].st_dev, base[1].st_ino))
            for n in ("ent-a", "ent-b"):
                self.assertEqual(D.sh(n, "echo %s > /tmp/who" % n), "")
            for n in ("ent-a", "ent-b"):
                self.assertEqual(D.sh(n, "cat /tmp/who").strip(), n)
        finally:
            D.destroy("ent-a")
            D.destroy("ent-b")
        D.assert_inventory(BASE)


if __name__ == "__main__":
    harness.main()
