#!/usr/bin/env python3
"""
Robustness against a real daemon; each class has its own daemon so the ones
that kill things cannot hurt the others:

- VmmDeath: kill -9 of a ready sandbox's VMM turns its status "failed" with
  an error about the VMM exit within 10 s; wait fails with EIO; rmdir works
  and leaves nothing; the same name can be created again and works.
- Phases: SIGKILL of a create's VMM at delays from 0 to 160 ms after it
  appears: the create always ends failed with a reason (never stuck), the
  name works again, nothing is left.
- Watchdog: SIGSTOP of a ready sandbox's VMM: within ~2 s the watchdog kills
  it and the sandbox fails with the reason; another sandbox is not slowed.
- ConsoleFlood: a guest writing 2 MiB to its serial console: the log stays
  within --console-max-kib plus one idler period's output, keeps the newest
  output, status says how much was dropped.
- Saturation: 200 blocking reads (wait, a silent process's stdout) hold no
  FUSE thread: another sandbox's status and ctl answer at once.
- GuestDeath: a guest that ends its VMM says why in status "error": a
  kernel panic (sysrq) with its panic line, a power-off, a reboot after its
  console was flooded with control bytes, random bytes and a fake panic (the
  console's last lines quoted, cleaned: no control byte, no invalid UTF-8,
  no bidi override reaches status, events or the log, and the guest's quotes
  cannot close ours), the same flood followed by a SIGKILL of its VMM (the
  signal, not a panic), and a bake whose kernel panics at boot on a command
  line without panic= (the engine adds panic=-1: it ends at once).
- Shutdown: SIGTERM with two ready sandboxes: exit 0, nothing left.
- Unmount: the README's stop command, `fusermount3 -u MOUNT`, with
  sandboxes ready and paused, a procs/ process running, two warm slots and
  (where the host can) network slots: the daemon exits 0 within 30 s and
  leaves nothing (processes, mounts, loop devices, cgroups, network
  objects), with no "failed to unmount" in its log; the same with another
  process holding a copy of the mount in a mount namespace of its own. A
  cwd and a file in the mount make `fusermount3 -u` fail with EBUSY (the
  daemon serves on); `fusermount3 -uz` then stops it.
- DaemonCrash: kill -9 of the daemon with sandboxes ready, paused,
  hibernated, stopped and one being created: the mount answers ENOTCONN; a
  daemon restarted on the same state dir re-adopts the four (same VMM
  processes, status intact, a job started before the crash finishes after
  it), rolls the create back, neither adopts nor kills a process whose pid a
  record names with another start time, and everything works on through a
  second crash; right after a create with warm slots being prepared, the
  slots are swept and the sandbox re-adopted.
"""
import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def vmm_identity(status):
    pid = status["vmm_pid"]
    st = harness.proc_stat(pid)
    return pid, (st[2] if st else None)


class VmmDeath(harness.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = harness.Daemon().start()
        cls.base = cls.d.core(cls.d.wait_inventory({**cls.d.inventory(), "qemu": [], "run": [], "zombies": []}))

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def test_kill9_vmm(self):
        d = self.d
        st = d.create_ready("victim")
        pid, start = vmm_identity(st)
        self.assertTrue(harness.pid_alive(pid, start))
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            st = d.status("victim")
            if st["state"] == "failed" or time.monotonic() - t0 > 10:
                break
            time.sleep(0.05)
        self.assertEqual(st["state"], "failed", "status 10 s after the VMM was killed: %s" % st)
        self.assertRegex(st["error"] or "", r"(?i)vmm.*exit", st)
        sys.stderr.write("\n  failed after %.0f ms: %s\n" % ((time.monotonic() - t0) * 1000, st["error"]))
        self.assertErrno(errno.EIO, d.wait, "victim")
        # exec on a failed sandbox: the read fails with EIO before any output (JSON mode
        # tells that apart from a command that failed: no JSON line at all)
        self.assertErrno(errno.EIO, d.exec_json, "victim", {"sh": "true"})
        # the daemon reaped it: no zombie child
        self.assertEqual(d.inventory()["zombies"], [])
        d.destroy("victim")
        self.assertNotIn("victim", d.sandboxes())
        d.assert_inventory(self.base)
        # the name is free again and a new sandbox under it works
        st = d.create_ready("victim")
        self.assertEqual(st["state"], "ready")
        self.assertIsNone(st["error"])
        self.assertNotEqual(vmm_identity(st), (pid, start))
        self.assertEqual(d.sh("victim", "hostname").strip(), "victim")
        d.destroy("victim")
        d.assert_inventory(self.base)

    def test_sigstop_vmm_watchdog(self):
        """A stopped VMM answers nothing: the watchdog kills it within ~2 s and the
        sandbox fails with the reason, while another sandbox goes on unhindered."""
        d = self.d
        st = d.create_ready("frozen")
        d.create_ready("bystander")
        pid, start = vmm_identity(st)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            # the other sandbox is not slowed down meanwhile
            self.assertEqual(d.sh("bystander", "echo hi").strip(), "hi")
            harness.wait_for(lambda: d.status("frozen")["state"] == "failed", 10, "the watchdog to fail it")
            took = time.monotonic() - t0
            st = d.status("frozen")
            self.assertRegex(st["error"] or "", r"watchdog.*stopped", st)
            self.assertLess(took, 6.0)
            sys.stderr.write("\n  failed after %.0f ms: %s\n" % (took * 1000, st["error"]))
            harness.wait_for(lambda: not harness.pid_alive(pid, start), 5, "the stopped VMM killed and reaped")
            self.assertErrno(errno.EIO, d.wait, "frozen")
            d.destroy("frozen")
            # the name works again
            self.assertEqual(d.create_ready("frozen")["state"], "ready")
            self.assertEqual(d.sh("frozen", "hostname").strip(), "frozen")
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            for n in ("frozen", "bystander"):
                if n in d.sandboxes():
                    d.destroy(n)
        d.assert_inventory(self.base)


    def test_kill9_vmm_at_each_phase_of_a_create(self):
        """SIGKILL of the new VMM at increasing delays after it appears (spawn, before
        its control socket, during the snapshot load, before resume, running): the
        sandbox ends failed with the reason (or ready, if the kill came after) within
        10 s, never stuck in creating; the same name then works; nothing is left."""
        d = self.d
        outcomes = []
        for delay_ms in (0, 2, 5, 10, 20, 40, 80, 160):
            known = set(d._qemu_pids())
            d.create("phase")
            pid = None
            deadline = time.monotonic() + 10
            while pid is None and time.monotonic() < deadline:
                new = set(d._qemu_pids()) - known
                pid = min(new) if new else None
            self.assertIsNotNone(pid, "no VMM appeared for the create")
            time.sleep(delay_ms / 1000)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                harness.wait_for(lambda: d.status("phase")["state"] in ("failed", "ready"), 10,
                                 "the create decided after the kill at %d ms" % delay_ms)
                st = d.status("phase")
                if st["state"] == "failed":
                    self.assertRegex(st["error"] or "", r"VMM exit", st)
                    self.assertErrno(errno.EIO, d.wait, "phase")
                else:
                    # the kill came after ready: the supervisor fails it right after
                    harness.wait_for(lambda: d.status("phase")["state"] == "failed", 10, "failed after ready")
                outcomes.append((delay_ms, st["state"], (st["error"] or "")[:60]))
            finally:
                d.destroy("phase")
            harness.wait_for(lambda: not harness.pid_alive(pid), 5, "the killed VMM reaped")
        sys.stderr.write("\n  " + "\n  ".join("%3d ms: %s %s" % o for o in outcomes) + "\n")
        # the name works again, and nothing of the failed creates is left
        self.assertEqual(d.create_ready("phase")["state"], "ready")
        d.destroy("phase")
        d.assert_inventory(self.base)


class Phases(harness.TestCase):
    """SIGKILL of a create's VMM placed exactly at each phase: the tests' daemon
    (tests/integration/holdd.c: the shipped one plus a create-phase hook, set
    by EMBERFS_TEST_HOLD) holds the create there until the test has killed it."""

    PHASES = ("spawn", "connected", "loading", "loaded", "agent")

    def hold_daemon(self, phases, **kw):
        os.environ["EMBERFS_TEST_HOLD"] = ",".join(phases)
        try:
            return harness.Daemon(binary=harness.HOLDD, **kw).start()
        finally:
            del os.environ["EMBERFS_TEST_HOLD"]

    def run_to(self, d, name, target, phases):
        """Creates name, releasing every hold but target's, where the VMM is
        killed; returns the killed pid."""
        hold = os.path.join(d.state, "hold")
        killed = None
        for p in phases:
            f = os.path.join(hold, "%s.%s" % (name, p))
            harness.wait_for(lambda: os.path.exists(f) or d.status(name)["state"] != "creating", 20,
                             "the create at %s" % p)
            if not os.path.exists(f):
                break
            if p == target:
                pid = int(harness.read_text(f))
                st = harness.proc_stat(pid)
                self.assertIsNotNone(st, "no VMM at %s" % p)
                os.kill(pid, signal.SIGKILL)
                killed = pid
            # later phases may still be reached (what the VMM sent before it died is read first)
            os.unlink(f)
        return killed

    def check_failed(self, d, name, target):
        harness.wait_for(lambda: d.status(name)["state"] != "creating", 15, "the create decided")
        st = d.status(name)
        self.assertEqual(st["state"], "failed", "killed at %s: %s" % (target, st))
        self.assertRegex(st["error"], r"VMM exited unexpectedly \(signal 9, SIGKILL\)", st)
        self.assertErrno(errno.EIO, d.wait, name)
        return st["error"]

    def test_kill9_vmm_at_each_phase_of_a_restore(self):
        d = self.hold_daemon(self.PHASES)
        try:
            base = d.core(d.wait_inventory({**d.inventory(), "qemu": [], "run": [], "zombies": []}))
            errors = {}
            for target in self.PHASES:
                d.create("ph")
                pid = self.run_to(d, "ph", target, self.PHASES)
                self.assertIsNotNone(pid, "never reached %s" % target)
                errors[target] = self.check_failed(d, "ph", target)
                d.destroy("ph")
                self.assertTrue(harness.wait_pid_gone(pid, timeout=5))
                d.assert_inventory(base)
            sys.stderr.write("\n  " + "\n  ".join("%-9s %s" % (k, v[:70]) for k, v in errors.items()) + "\n")
            # each failure names its step
            self.assertIn("at spawn", errors["spawn"])
            self.assertIn("at restore", errors["connected"])
            self.assertRegex(errors["loading"], "at (restore|agent)")  # the load may be complete already
            self.assertIn("at agent", errors["loaded"])
            self.assertIn("at agent", errors["agent"])
            # the name works again, held at nothing in particular
            d.create("ph")
            self.run_to(d, "ph", None, self.PHASES)
            self.assertEqual(d.wait_ready("ph")["state"], "ready")
            d.destroy("ph")
        except BaseException:
            d.force_cleanup()
            raise
        d.stop()

    def test_kill9_warm_slot_vmm_once_claimed(self):
        # a claimed slot's VMM dies before its resume: the create falls back to a restore
        d = self.hold_daemon(("claimed",), pool=1)
        try:
            d.wait_pool(1, timeout=60)
            d.create("w")
            pid = self.run_to(d, "w", "claimed", ("claimed",))
            self.assertIsNotNone(pid)
            st = d.wait_ready("w")
            self.assertEqual(st["path"], "restore", st)
            self.assertRegex(st["path_reason"], r"warm slot \d+ failed at activation", st)
            self.assertNotEqual(st["vmm_pid"], pid)
            self.assertEqual(d.sh("w", "hostname").strip(), "w")
            self.assertTrue(harness.wait_pid_gone(pid, timeout=5))
        except BaseException:
            d.force_cleanup()
            raise
        d.stop()


class ConsoleFlood(harness.TestCase):
    def test_console_stays_within_its_cap(self):
        # a guest writing 2 MiB to its serial console: the log stays within
        # --console-max-kib (plus one idler period's output), keeps the newest
        # output, and says how much it dropped
        cap_kib = 64
        with harness.own_daemon(extra_args=["--console-max-kib", str(cap_kib)]) as d:
            d.create_ready("fl")
            log = os.path.join(d.sandbox_vm_dir("fl"), "console.log")
            biggest = [0]
            stop = False

            def watch():
                while not stop:
                    try:
                        biggest[0] = max(biggest[0], os.path.getsize(log))
                    except OSError:
                        pass
                    time.sleep(0.01)

            th = threading.Thread(target=watch)
            th.start()
            try:
                t0 = time.monotonic()
                out, ok = d.exec_plain("fl", "head -c 2097152 /dev/zero | tr '\\0' x > /dev/ttyS0; "
                                             "echo the-last-line > /dev/ttyS0")
                secs = time.monotonic() - t0
                self.assertTrue(ok, out)
                time.sleep(0.6)  # two idler periods
            finally:
                stop = True
                th.join()
            st = d.status("fl")
            size = os.path.getsize(log)
            sys.stderr.write("\n  2 MiB to the console in %.1f s: log now %d KiB, at most %d KiB, dropped %d KiB\n" % (
                secs, size >> 10, biggest[0] >> 10, st["console_dropped_bytes"] >> 10))
            self.assertLessEqual(size, cap_kib << 10)
            self.assertGreater(st["console_dropped_bytes"], 1 << 20)
            # bounded by the cap plus what one period (250 ms) lets through at the rate measured
            self.assertLess(biggest[0], (cap_kib << 10) + int(2.5 * (1 << 20) / max(secs, 0.25) * 0.5) + (64 << 10))
            with open(log, "rb") as f:
                self.assertIn(b"the-last-line", f.read())
            self.assertIn("the-last-line", harness.read_text(d.sb("fl", "console")))
            self.assertEqual(d.sh("fl", "echo alive").strip(), "alive")


class Saturation(harness.TestCase):
    def test_blocked_readers_hold_no_fuse_thread(self):
        """200 blocking reads (wait of a cold-booting sandbox, stdout of a silent
        process) park their requests: status reads and ctl writes of another
        sandbox still answer at once (the FUSE loop has at most 64 threads)."""
        import threading
        with harness.own_daemon() as d:
            d.create_ready("free")
            d.create_ready("quiet")
            os.mkdir(d.sb("quiet", "procs", "p"))
            harness.write_file(d.sb("quiet", "procs", "p", "cmd"), "sleep 30\n")
            with d.template("slow"):  # never baked: its create boots cold (~2 s)
                d.create("booting", t="slow")
                errors = []

                def blocked(path):
                    try:
                        with open(path, "rb", buffering=0) as f:
                            f.read(100)
                    except OSError as e:
                        if e.errno not in (errno.EIO,):
                            errors.append(e)
                threads = [threading.Thread(target=blocked, daemon=True,
                                            args=(d.sb("booting", "wait", t="slow") if i % 2 else
                                                  d.sb("quiet", "procs", "p", "stdout"),)) for i in range(200)]
                for th in threads:
                    th.start()
                time.sleep(0.5)
                worst = 0.0
                for _ in range(20):
                    t0 = time.monotonic()
                    self.assertEqual(d.status("free")["state"], "ready")
                    harness.write_file(d.sb("free", "ctl"), "pause\n")
                    harness.write_file(d.sb("free", "ctl"), "resume\n")
                    worst = max(worst, time.monotonic() - t0)
                sys.stderr.write("\n  200 blocked readers: status + pause + resume of another sandbox, worst %.1f ms\n"
                                 % (worst * 1000))
                self.assertLess(worst, 2.0)
                d.wait_ready("booting", t="slow")
                os.rmdir(d.sb("quiet", "procs", "p"))  # the stdout readers get EOF or EIO
                for th in threads:
                    th.join(10)
                self.assertFalse([th for th in threads if th.is_alive()], "readers still blocked")
                self.assertEqual(errors, [])
            d.destroy("free")
            d.destroy("quiet")


class Shutdown(harness.TestCase):
    def test_sigterm_with_two_ready_sandboxes(self):
        d = harness.Daemon().start()
        try:
            sa = d.create_ready("s1")
            sb = d.create_ready("s2")
            vmms = [vmm_identity(sa), vmm_identity(sb)]
            self.assertTrue(all(harness.pid_alive(p, s) for p, s in vmms))
            self.assertEqual(len(d.inventory()["qemu"]), 2)
        except BaseException:
            d.force_cleanup()
            raise
        # stop(): SIGTERM, exit 0, no mount, no loop device, no process, no file left
        d.stop()
        for p, s in vmms:
            self.assertFalse(harness.pid_alive(p, s), "VMM %d survived the daemon" % p)

    def test_sigterm_with_files_held_open(self):
        # a client keeps files and a directory open (and a read parked on wait)
        # across the shutdown: the daemon still exits 0 and, under ASan, leaks nothing
        d = harness.Daemon().start()
        fds = []
        try:
            d.create_ready("held")
            fds.append(os.open(d.sb("held", "exec"), os.O_RDWR))
            os.write(fds[-1], b"echo hi")
            self.assertEqual(os.read(fds[-1], 100), b"hi\n")
            fds.append(os.open(d.sb("held", "status"), os.O_RDONLY))
            fds.append(os.open(d.sbdir(), os.O_RDONLY | os.O_DIRECTORY))
            fds.append(os.open(d.tpl("default", "config"), os.O_RDWR))
        except BaseException:
            d.force_cleanup()
            raise
        try:
            d.stop()
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def have_net():
    return os.path.exists("/dev/net/tun") and subprocess.run(["nft", "list", "tables"],
                                                             capture_output=True).returncode == 0


class Unmount(harness.TestCase):
    """`fusermount3 -u MOUNT` stops the daemon as SIGTERM does."""

    BOUND = 30.0  # seconds from the unmount to the daemon's exit

    def busy_daemon(self):
        """A daemon with a ready sandbox running a procs/ process, a paused one, 2 warm slots and, where
        the host can, network slots; returns it and the identities of its VMMs."""
        args = ["--net", "--net-range", "10.237.0.0/16", "--net-pool", "2"] if have_net() else []
        d = harness.Daemon(pool=2, extra_args=args).start()
        try:
            d.wait_pool(2)
            vmms = [vmm_identity(d.create_ready(n)) for n in ("up", "paused")]
            harness.write_file(d.sb("paused", "ctl"), "pause")
            self.assertEqual(d.status("paused")["state"], "paused")
            os.mkdir(d.sb("up", "procs", "p"))
            harness.write_file(d.sb("up", "procs", "p", "cmd"), "sleep 1000")
            harness.wait_for(lambda: harness.read_json(d.sb("up", "procs", "p", "status"))["state"] == "running",
                             30, "the procs/ process running")
            d.wait_pool(2)
            vmms += [vmm_identity(st) for st in d.slots().values()]
            self.assertEqual(len(d.inventory()["qemu"]), 2)
            if args:
                self.assertTrue(d._net_leftovers(), "no network object to check")
        except BaseException:
            d.force_cleanup()
            raise
        return d, vmms

    def stop_by_unmount(self, d, vmms):
        t0 = time.monotonic()
        d.stop(command=["fusermount3", "-u", d.mount], timeout=self.BOUND)  # exit 0, the full inventory empty
        took = time.monotonic() - t0
        self.assertNotIn("failed to unmount", d.log_text())
        for p, s in vmms:
            self.assertFalse(harness.pid_alive(p, s), "VMM %d survived the daemon" % p)
        return took

    def test_fusermount_u_stops_the_daemon(self):
        d, vmms = self.busy_daemon()
        # no process of the daemon's (its VMMs, any child) holds a copy of the mount that would keep
        # the kernel's connection up after the unmount
        ours = os.readlink("/proc/self/ns/mnt")
        holders = []
        for pid in harness.all_pids():
            st = harness.proc_stat(pid)
            try:
                if st and st[1] == d.pid and os.readlink("/proc/%d/ns/mnt" % pid) != ours and \
                        " %s " % d.mount in harness.read_text("/proc/%d/mountinfo" % pid):
                    holders.append("%d %s" % (pid, " ".join(harness.proc_cmdline(pid)[:3])))
            except OSError:
                pass  # gone meanwhile
        self.assertEqual(holders, [])
        self.stop_by_unmount(d, vmms)

    def test_fusermount_u_with_a_copy_of_the_mount_elsewhere(self):
        # a process in a mount namespace of its own (unshare -m: private, nothing propagates back to
        # it) holds a copy of the mount: the kernel keeps the connection, the daemon still stops
        d, vmms = self.busy_daemon()
        holder = None
        try:
            # its copy of the store goes (so the loop device can), the mount's stays
            store = os.path.join(d.state, "store")
            holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                       'umount -l "$0" 2>/dev/null; exec sleep 1000', store])
            harness.wait_for(lambda: " %s " % d.mount in harness.read_text("/proc/%d/mountinfo" % holder.pid) and
                             " %s " % store not in harness.read_text("/proc/%d/mountinfo" % holder.pid) and
                             harness.proc_cmdline(holder.pid)[:1] == ["sleep"], 10, "the holder in its namespace")
            self.stop_by_unmount(d, vmms)
        finally:
            if holder:
                holder.kill()
                holder.wait()

    def test_busy_mount_then_lazy_unmount(self):
        # a process with its cwd in the mount and an open file: `fusermount3 -u` fails with EBUSY (the
        # user's, documented) and the daemon serves on; `fusermount3 -uz` detaches it and the daemon stops
        d = harness.Daemon().start()
        shell = fd = None
        try:
            d.create_ready("b")
            shell = subprocess.Popen(["sleep", "1000"], cwd=d.sb("b"))
            fd = os.open(d.sb("b", "status"), os.O_RDONLY)
            r = subprocess.run(["fusermount3", "-u", d.mount], capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("Device or resource busy", r.stderr)
            time.sleep(0.5)
            self.assertTrue(d.alive())
            self.assertEqual(d.status("b")["state"], "ready")
        except BaseException:
            d.force_cleanup()
            raise
        finally:
            if shell:
                shell.kill()
                shell.wait()
        try:
            d.stop(command=["fusermount3", "-uz", d.mount], timeout=self.BOUND)
            self.assertNotIn("failed to unmount", d.log_text())
            # the open file's connection is gone with the daemon
            self.assertErrno(errno.ENOTCONN, os.read, fd, 100)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass  # ENOTCONN: its flush has no daemon to go to
def shell_bytes(data):
    """A printf format that writes data exactly (octal escapes for all but plain ASCII)."""
    out = []
    for b in data:
        c = chr(b)
        out.append(c if 0x20 <= b < 0x7f and c not in "\\'%" else "\\%03o" % b)
    return "".join(out)


# What a hostile guest writes to its console before it dies: terminal escapes
# around a fake panic line, a line that imitates the error's own words with
# quotes and backslashes, a right-to-left override, invalid UTF-8, C0 and C1
# controls, a line separator.
HOSTILE = (b"\x1b[2J\x1b[31m[    1.000000] Kernel panic - not syncing: fake\x1b[0m\x07\r\n"
           b"x\" (QEMU: host-signal); console: \"\\ \xe2\x80\xaeevil\xe2\x80\xac \xff\xfe\xc0\xaf \x01\x02\x7f"
           b"\xc2\x9b31m end \xe2\x80\xa8 sep\r\n")
FLOOD = "head -c 65536 /dev/urandom > /dev/ttyS0; echo > /dev/ttyS0; printf '%s' > /dev/ttyS0" % shell_bytes(HOSTILE)
INVISIBLE = ("\u202e", "\u202c", "\u2028", "\u200b", "\ufeff", "\x1b", "\x7f", "\x9b")


class GuestDeath(harness.TestCase):
    """A guest that ends its VMM (QEMU runs with -no-reboot, the kernel with
    panic=-1) says why in status "error", with its console's last lines,
    bounded and cleaned."""

    @classmethod
    def setUpClass(cls):
        cls.d = harness.Daemon().start()
        cls.base = cls.d.core(cls.d.wait_inventory({**cls.d.inventory(), "qemu": [], "run": [], "zombies": []}))

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def assert_clean(self, raw, what):
        """raw (bytes of status, an event line, a log line) carries nothing of the
        console's control bytes: no control character (but newlines of the
        format), none escaped by JSON either, valid UTF-8, no bidi or
        invisible character."""
        text = raw.decode("utf-8")  # strict: invalid UTF-8 raises
        self.assertEqual([hex(b) for b in raw if (b < 0x20 and b != 0x0a) or b == 0x7f], [], what)
        self.assertNotRegex(text, r"\\u00[0-9a-fA-F]{2}", what)
        for ch in INVISIBLE:
            self.assertNotIn(ch, json.loads(text)["error"] if text.startswith("{") else text, what)

    def failed(self, name, timeout=20):
        d = self.d
        harness.wait_for(lambda: d.status(name)["state"] == "failed", timeout, "%s failed" % name)
        st = d.status(name)
        sys.stderr.write("\n  %s: %s\n" % (name, st["error"]))
        self.assertErrno(errno.EIO, d.wait, name)
        with open(d.sb(name, "status"), "rb", buffering=0) as f:
            self.assert_clean(f.read(), "status of %s" % name)
        return st

    def reuse(self, name):
        """The name is free again, a new sandbox under it works, nothing is left."""
        d = self.d
        d.destroy(name)
        d.assert_inventory(self.base)
        self.assertEqual(d.create_ready(name)["error"], None)
        self.assertEqual(d.sh(name, "hostname").strip(), name)
        d.destroy(name)
        d.assert_inventory(self.base)

    def test_kernel_panic(self):
        d = self.d
        d.create_ready("gpanic")
        out, ok = d.exec_plain("gpanic", "echo c > /proc/sysrq-trigger")
        self.assertFalse(ok, out)
        st = self.failed("gpanic")
        self.assertTrue(st["error"].startswith(
            'the guest kernel panicked: "Kernel panic - not syncing: sysrq triggered crash" (QEMU: guest-reset)'),
            st["error"])
        # the console's lines up to the panic, quoted
        self.assertIn('"sysrq: Trigger a crash" "Kernel panic - not syncing: sysrq triggered crash"', st["error"])
        self.assertIn("Kernel panic - not syncing: sysrq triggered crash", harness.read_text(d.sb("gpanic", "console")))
        self.reuse("gpanic")

    def test_poweroff(self):
        d = self.d
        d.create_ready("goff")
        d.exec_plain("goff", "poweroff -f")
        st = self.failed("goff")
        self.assertTrue(st["error"].startswith("the guest powered off (QEMU: guest-shutdown); console, last "),
                        st["error"])
        self.assertTrue(st["error"].endswith('"reboot: Power down"'), st["error"])
        self.reuse("goff")

    def test_hostile_console_then_reboot(self):
        d = self.d
        d.create_ready("grb")
        ev = os.open(os.path.join(d.mount, "events"), os.O_RDONLY)
        try:
            self.assertTrue(d.sh("grb", FLOOD + "; echo flooded").endswith("flooded\n"))
            d.exec_plain("grb", "reboot -f")
            st = self.failed("grb")
            err = st["error"]
            # the kernel's reboot came last: a reboot, the fake panic only quoted
            self.assertTrue(err.startswith("the guest rebooted (QEMU: guest-reset); console, last "), err)
            self.assertTrue(err.endswith('"reboot: Restarting system"'), err)
            self.assertIn('"Kernel panic - not syncing: fake"', err)
            # its quotes and backslashes escaped, controls and invalid bytes gone
            self.assertIn('"x\\" (QEMU: host-signal); console: \\"\\\\ evil \ufffd 31m end  sep"', err)
            self.assertLessEqual(len(err.encode()), 1600)
            # the failed event and the daemon's log line carry the same, clean
            buf = b""
            p = select.poll()
            p.register(ev, select.POLLIN)
            deadline = time.monotonic() + 10
            while b'"failed"' not in buf and time.monotonic() < deadline:
                if p.poll(500):
                    buf += os.read(ev, 1 << 20)
            line = [l for l in buf.split(b"\n") if b'"grb"' in l and b'"failed"' in l]
            self.assertEqual(len(line), 1, buf)
            self.assertEqual(json.loads(line[0])["error"], err)
            self.assert_clean(line[0], "the failed event")
        finally:
            os.close(ev)
        with open(d.log_path, "rb") as f:
            f.seek(d.log_offset)
            logged = [l for l in f.read().split(b"\n") if b"default/grb failed" in l]
        self.assertEqual(len(logged), 1, logged)
        self.assert_clean(logged[0], "the log line")
        self.reuse("grb")

    def test_hostile_console_then_sigkill(self):
        d = self.d
        st = d.create_ready("gkill")
        self.assertTrue(d.sh("gkill", FLOOD + "; echo flooded").endswith("flooded\n"))
        time.sleep(1)  # long after the fake panic line
        os.kill(st["vmm_pid"], signal.SIGKILL)
        st = self.failed("gkill")
        # the host's signal, whatever the console says
        self.assertEqual(st["error"], "VMM exited unexpectedly (signal 9, SIGKILL)")
        self.reuse("gkill")

    def test_bake_panics(self):
        """A kernel that panics at boot, on a command line without panic=: the
        engine adds panic=-1, so the bake ends at the panic (not at its 60 s
        boot timeout) and the template's error says it; a create from the
        failed template boots cold and says the same."""
        d = self.d
        cfg = harness.read_json(d.tpl("default", "config"))
        cmdline = " ".join(w for w in cfg["cmdline"].split() if not w.startswith("panic=")) + " rdinit=/nonexistent"
        d.expect_log_error(r"template gbake: bake failed at boot \(agent\).*the guest kernel panicked")
        with d.template("gbake", cmdline=cmdline):
            d.ctl("bake\n", t="gbake")
            harness.wait_for(lambda: d.template_status("gbake")["state"] == "failed", 50, "the bake to fail")
            err = d.template_status("gbake")["error"]
            sys.stderr.write("\n  bake: %s\n" % err)
            self.assertRegex(err, r'^bake failed at boot \(agent\) \(see .*\): the guest kernel panicked: '
                                  r'"Kernel panic - not syncing: [^"]+" \(QEMU: guest-reset\); console, last \d+ lines? '
                                  r'up to the panic: ')
            with open(d.tpl("gbake", "status"), "rb", buffering=0) as f:
                self.assert_clean(f.read(), "template status")
            d.create("gcold", t="gbake")
            harness.wait_for(lambda: d.status("gcold", t="gbake")["state"] == "failed", 50, "the cold create to fail")
            st = d.status("gcold", t="gbake")
            self.assertEqual(st["path"], "cold", st)
            self.assertRegex(st["error"], r'^create failed at boot \(see .*\): the guest kernel panicked: "Kernel panic')
        d.assert_inventory(self.base)


STABLE = ("template", "path", "path_reason", "pool_miss", "identity", "clone", "created_at_unix_ms", "timings",
          "ready_ms", "net")


class DaemonCrash(harness.TestCase):
    """kill -9 of the daemon, then a restart on the same state dir: sandboxes
    are re-adopted, never run twice."""

    def test_kill9_daemon_readopts_sandboxes(self):
        d = harness.Daemon().start()
        d2 = d3 = None
        sleeper = None
        try:
            for n in ("run", "paus", "hib", "stp", "gone"):
                d.create_ready(n)
            harness.write_file(d.sb("paus", "ctl"), b"pause")
            harness.write_file(d.sb("hib", "ctl"), b"hibernate")
            harness.write_file(d.sb("stp", "ctl"), b"stop")
            # a file and a job in the guest: the job outlives the daemon and ends after the restart
            self.assertEqual(d.sh("run", "echo before > /tmp/x && cat /tmp/x").strip(), "before")
            d.sh("run", "(sleep 4; echo finished > /tmp/job) </dev/null >/dev/null 2>&1 &")
            before = {n: d.status(n) for n in ("run", "paus", "hib", "stp", "gone")}
            self.assertEqual([before[n]["state"] for n in ("run", "paus", "hib", "stp")],
                             ["ready", "paused", "hibernated", "stopped"])
            run_vmm = vmm_identity(before["run"])
            paus_vmm = vmm_identity(before["paus"])
            gone_vmm = vmm_identity(before["gone"])
            # a create in flight when the daemon dies
            os.mkdir(d.sb("mid"))
            d.kill9()
            self.assertErrno(errno.ENOTCONN, os.stat, d.mount)
            self.assertErrno(errno.ENOTCONN, os.listdir, d.mount)
            for pid, start in (run_vmm, paus_vmm, gone_vmm):
                self.assertTrue(harness.pid_alive(pid, start), "a VMM died with the daemon")
            # "gone": its record now names another live process (as if its pid were reused):
            # that process must be neither adopted nor killed; the real VMM, unrecorded now, is killed
            sleeper = subprocess.Popen(["sleep", "300"])
            rec_path = os.path.join(d.sandbox_vm_dir("gone"), "record.json")
            rec = harness.read_json(rec_path)
            rec["vmm_pid"] = sleeper.pid
            with open(rec_path, "w") as f:
                json.dump(rec, f)

            d2 = harness.Daemon(reuse=d).start()
            self.assertEqual(sorted(d2.sandboxes()), ["gone", "hib", "paus", "run", "stp"])
            after = {n: d2.status(n) for n in ("run", "paus", "hib", "stp", "gone")}
            for n in ("run", "paus", "hib", "stp"):
                self.assertEqual({k: after[n][k] for k in STABLE}, {k: before[n][k] for k in STABLE}, n)
                self.assertEqual(after[n]["adoptions"], 1, n)
                self.assertIsNone(after[n]["error"], n)
            self.assertEqual([after[n]["state"] for n in ("run", "paus", "hib", "stp")],
                             ["ready", "paused", "hibernated", "stopped"])
            # the same processes, taken over
            self.assertEqual(vmm_identity(after["run"]), run_vmm)
            self.assertEqual(vmm_identity(after["paus"]), paus_vmm)
            self.assertEqual(after["gone"]["state"], "failed")
            self.assertIn("was gone when the daemon restarted", after["gone"]["error"])
            self.assertIsNone(sleeper.poll(), "a process whose pid a record named was killed")
            self.assertTrue(harness.wait_pid_gone(*gone_vmm, timeout=10), "the unrecorded VMM still runs")
            self.assertNotIn("mid", d2.sandboxes())  # rolled back
            inv = d2.core(d2.inventory())
            self.assertEqual(len(inv["qemu"]), 2, inv)  # run and paus: nothing of "mid" or "gone"
            self.assertEqual(len([m for m in inv["mounts"] if "fuse" in m]), 1, inv)

            # the guest never stopped: its files and its job are there
            self.assertEqual(d2.sh("run", "cat /tmp/x").strip(), "before")
            harness.wait_for(lambda: d2.exec_plain("run", "cat /tmp/job 2>/dev/null")[0] == b"finished\n",
                             20, "the job started before the crash to finish")
            # every kind works on: resume, wake, start, exec, lifecycle
            harness.write_file(d2.sb("paus", "ctl"), b"resume")
            harness.write_file(d2.sb("hib", "ctl"), b"resume")
            harness.write_file(d2.sb("stp", "ctl"), b"start")
            for n in ("paus", "hib", "stp"):
                self.assertEqual(d2.status(n)["state"], "ready", n)
                self.assertEqual(d2.sh(n, "hostname").strip(), n)
            harness.write_file(d2.sb("run", "ctl"), b"pause")
            harness.write_file(d2.sb("run", "ctl"), b"resume")
            self.assertEqual(d2.sh("run", "hostname").strip(), "run")
            # an adopted VMM restored on its template's shared memory saves the guest's own pages
            harness.write_file(d2.sb("run", "ctl"), b"hibernate")
            harness.write_file(d2.sb("run", "ctl"), b"resume")
            self.assertEqual(d2.sh("run", "cat /tmp/x /tmp/job").strip(), "before\nfinished")
            # a new create and the crashed create's name
            self.assertEqual(d2.create_ready("mid")["state"], "ready")
            os.rmdir(d2.sb("gone"))

            # once more: a second crash, a second adoption
            d2.kill9()
            d3 = harness.Daemon(reuse=d2).start()
            self.assertEqual(sorted(d3.sandboxes()), ["hib", "mid", "paus", "run", "stp"])
            for n in ("run", "paus", "hib", "stp", "mid"):
                st = d3.status(n)
                self.assertEqual(st["state"], "ready", n)
                self.assertEqual(st["adoptions"], 2 if n != "mid" else 1, n)
                self.assertEqual(d3.sh(n, "hostname").strip(), n)
            os.rmdir(d3.sb("run"))
        except BaseException:
            (d3 or d2 or d).force_cleanup()
            raise
        finally:
            if sleeper:
                sleeper.kill()
                sleeper.wait()
        d3.stop()  # everything gone, the crashed runs' included

    def test_kill9_daemon_keeps_procs(self):
        # procs/ processes live in the guest and are taken over by the
        # restarted daemon: running ones go on (output, stdin, exit code),
        # ones that ended keep their unread output, a slot never started stays
        # new; one the records no longer name is killed by the attach; in a
        # sandbox re-adopted paused they are reattached at its resume
        d = harness.Daemon().start()
        d2 = None
        try:
            d.create_ready("run")
            d.create_ready("paus")

            def P(sb, pid, *rest):
                return (d2 or d).sb(sb, "procs", pid, *rest)

            def start(sb, pid, cmd):
                os.mkdir(P(sb, pid))
                harness.write_file(P(sb, pid, "cmd"), cmd)

            def pstatus(sb, pid):
                return harness.read_json(P(sb, pid, "status"))

            def read_to_eof(path):
                with open(path, "rb") as f:
                    return f.read()

            start("run", "a", b"i=0; while [ $i -lt 30 ]; do echo line$i; i=$((i+1)); sleep 0.1; done; "
                              b"read x; echo got:$x; exit 7\n")
            start("run", "b", b"echo quick; exit 3\n")
            start("run", "c", b"exec sleep 1001\n")
            start("run", "gone", b"exec sleep 1002\n")
            os.mkdir(P("run", "e"))
            start("paus", "p", b"sleep 1; echo paused-job; exit 5\n")
            harness.wait_for(lambda: pstatus("run", "b")["state"] == "exited", 20, "b to exit")
            fd = os.open(P("run", "a", "stdout"), os.O_RDONLY)
            try:
                first = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
            self.assertTrue(first.startswith(b"line0\n"), first)
            before = {n: pstatus("run", n) for n in ("a", "b", "c", "e")}
            gone_pid = pstatus("run", "gone")["pid"]
            harness.write_file(d.sb("paus", "ctl"), b"pause")
            d.kill9()
            # "gone" is no longer in the record: the restarted daemon's attach kills it
            rec_path = os.path.join(d.sandbox_vm_dir("run"), "record.json")
            rec = harness.read_json(rec_path)
            self.assertEqual(sorted(p["name"] for p in rec["procs"]), ["a", "b", "c", "e", "gone"])
            rec["procs"] = [p for p in rec["procs"] if p["name"] != "gone"]
            with open(rec_path, "w") as f:
                json.dump(rec, f)

            d2 = harness.Daemon(reuse=d).start()
            self.assertEqual(sorted(os.listdir(d2.sb("run", "procs"))), ["a", "b", "c", "e"])
            after = {n: pstatus("run", n) for n in ("a", "b", "c", "e")}
            for n in ("a", "b", "c", "e"):
                for k in ("name", "cmd", "pid", "start_unix_ms"):
                    self.assertEqual(after[n][k], before[n][k], (n, k))
            self.assertEqual(after["a"]["state"], "running")
            self.assertEqual((after["b"]["state"], after["b"]["exit_code"]), ("exited", 3))
            self.assertEqual(after["c"]["state"], "running")
            self.assertEqual(after["e"]["state"], "new")
            alive = lambda pid: d2.exec_plain("run", "test -e /proc/%d" % pid)[1]
            harness.wait_for(lambda: not alive(gone_pid), 10, "the unrecorded job to be killed")
            self.assertTrue(alive(before["c"]["pid"]))
            # the running one: its output from where the reader stopped, stdin, its exit code
            harness.write_file(P("run", "a", "stdin"), b"hello\n")
            rest = read_to_eof(P("run", "a", "stdout"))
            self.assertEqual(first + rest,
                             b"".join(b"line%d\n" % i for i in range(30)) + b"got:hello\n")
            harness.wait_for(lambda: pstatus("run", "a")["state"] == "exited", 20, "a to exit")
            self.assertEqual(pstatus("run", "a")["exit_code"], 7)
            self.assertEqual(read_to_eof(P("run", "b", "stdout")), b"quick\n")
            harness.write_file(P("run", "c", "signal"), b"TERM")
            harness.wait_for(lambda: pstatus("run", "c")["state"] == "exited", 20, "c to exit")
            self.assertEqual(pstatus("run", "c")["signal"], 15)
            harness.write_file(P("run", "e", "cmd"), b"echo late\n")
            self.assertEqual(read_to_eof(P("run", "e", "stdout")), b"late\n")
            # re-adopted paused: running per the record until its resume reattaches it
            self.assertEqual(d2.status("paus")["state"], "paused")
            self.assertEqual(pstatus("paus", "p")["state"], "running")
            self.assertErrno(errno.EAGAIN, harness.write_file, P("paus", "p", "signal"), b"TERM")
            harness.write_file(d2.sb("paus", "ctl"), b"resume")
            self.assertEqual(read_to_eof(P("paus", "p", "stdout")), b"paused-job\n")
            harness.wait_for(lambda: pstatus("paus", "p")["state"] == "exited", 20, "p to exit")
            self.assertEqual(pstatus("paus", "p")["exit_code"], 5)
            for n in ("a", "b", "c", "e"):
                os.rmdir(P("run", n))
            harness.wait_for(lambda: d2.sh("run", "pidof sleep || true").strip() == "", 10, "no sleep left")
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()

    def test_kill9_daemon_right_after_a_create(self):
        # dies while it still works in the background (e.g. the capacity
        # controller starting standby VMMs after a create): slots are not
        # re-adopted but swept; the sandbox is
        d = harness.Daemon(pool="auto").start()
        d2 = None
        try:
            st = d.create_ready("keep")
            pid, start = vmm_identity(st)
            rec = harness.read_json(os.path.join(d.sandbox_vm_dir("keep"), "record.json"))
            self.assertEqual((rec["vmm_pid"], rec["vmm_start"], rec["state"]), (pid, start, "ready"))
            d.kill9()
            d2 = harness.Daemon(reuse=d, pool="auto").start()
            self.assertEqual(d2.sandboxes(), ["keep"])
            self.assertEqual(vmm_identity(d2.status("keep")), (pid, start))
            self.assertEqual(d2.sh("keep", "hostname").strip(), "keep")
            st = d2.create_ready("fresh")
            self.assertEqual(d2.sh("fresh", "hostname").strip(), "fresh")
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()


if __name__ == "__main__":
    harness.main()
