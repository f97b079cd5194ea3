#!/usr/bin/env python3
"""
Sandbox lifecycle through ctl, against real guests (docs/interface.md,
"Sandbox ctl"):

- pause / resume: the state follows; the guest's clock is right after a
  resume; reading status never wakes a sleeping sandbox.
- hibernate: the VMM exits (its process is gone), files in the guest's tmpfs
  and a running process survive; an exec wakes it transparently, as does
  `resume`; status shows how long hibernate and wake took.
- Refused transitions fail with EBUSY and leave the state unchanged (resume
  a running one, pause a paused one, hibernate a hibernated one, anything
  while creating); unknown verbs fail with EINVAL; the reason is in
  status "ctl_error".
- wait on a paused or hibernated sandbox answers "ready" (the create
  succeeded) without waking it.
- fork NEW: the copy has the parent's memory, disk and running processes,
  its own hostname and entropy; writes after the fork are not shared; forks
  to an existing or bad name, or of a hibernated sandbox, are refused and
  change nothing; a paused parent stays paused.
- template NEW: a new template whose snapshot is the sandbox's state (disk
  and memory); creates under it find that state; it cannot be rebaked;
  existing or bad names are refused.
- MOUNT/metrics parses with the reference OpenMetrics parser (strict) and
  counts sandboxes by state, creates by path, operations and misses.
- stop / start: the VMM ends and its memory is freed, the disk stays; an exec
  fails with EIO; start cold-boots it from its disk (or restores a
  hibernated one); every other verb is refused while stopped.
- idle_timeout_s hibernates an idle sandbox, an exec wakes it, use keeps it
  awake, and the timeout does not run down while it is paused.
- Destroying a paused, a hibernated and a stopped sandbox leaves nothing.
"""
import errno
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = BASE = None


def setUpModule():
    global D, BASE
    D, BASE = harness.start_shared()


def tearDownModule():
    if D:
        D.stop()


def ctl(name, verb):
    harness.write_file(D.sb(name, "ctl"), verb)


class Ctl(harness.TestCase):
    def tearDown(self):
        try:
            for n in D.sandboxes():
                D.destroy(n)
            D.assert_inventory(BASE, timeout=10)
        finally:
            super().tearDown()

    def test_pause_resume(self):
        D.create_ready("p")
        pid = D.status("p")["vmm_pid"]
        ctl("p", "pause\n")
        st = D.status("p")
        self.assertEqual(st["state"], "paused")
        self.assertIsNotNone(st["sleeping_since_unix_ms"])
        self.assertEqual(harness.proc_stat(pid)[0] in "RS", True)  # the process is there, its vCPUs stopped
        time.sleep(1.5)
        self.assertEqual(D.status("p")["state"], "paused")  # status reads do not wake it
        self.assertEqual(D.wait("p"), "ready\n")
        self.assertEqual(D.status("p")["state"], "paused")  # nor does wait
        ctl("p", "resume")
        st = D.status("p")
        self.assertEqual((st["state"], st["sleeping_since_unix_ms"], st["last_op"]), ("ready", None, "resume"))
        guest = int(D.sh("p", "date +%s").strip())
        self.assertLess(abs(guest - time.time()), 3, "guest clock not corrected on resume")
        # an exec wakes a paused sandbox too
        ctl("p", "pause")
        self.assertEqual(D.sh("p", "echo hi").strip(), "hi")
        self.assertEqual(D.status("p")["state"], "ready")

    def test_hibernate_and_wake(self):
        D.create_ready("h")
        D.sh("h", "echo precious > /tmp/f; (sleep 1000 >/dev/null 2>&1 &); true")
        pid = D.status("h")["vmm_pid"]
        ctl("h", "hibernate")
        st = D.status("h")
        self.assertEqual(st["state"], "hibernated")
        self.assertIsNone(st["vmm_pid"])
        self.assertGreater(st["hibernate_ms"], 0)
        self.assertTrue(harness.wait_pid_gone(pid, timeout=5), "the VMM still runs after hibernate")
        self.assertTrue(os.path.exists(os.path.join(D.sandbox_vm_dir("h"), "hibernate.state")))
        self.assertEqual(D.wait("h"), "ready\n")
        self.assertEqual(D.status("h")["state"], "hibernated")
        # an exec wakes it; memory (tmpfs) and processes survived
        out = D.sh("h", "cat /tmp/f; ps | grep -c '[s]leep 1000'")
        self.assertEqual(out.split(), ["precious", "1"])
        st = D.status("h")
        self.assertEqual((st["state"], st["wakes"], st["last_op"]), ("ready", 1, "wake"))
        self.assertGreater(st["wake_ms"], 0)
        self.assertFalse(os.path.exists(os.path.join(D.sandbox_vm_dir("h"), "hibernate.state")))
        guest = int(D.sh("h", "date +%s").strip())
        self.assertLess(abs(guest - time.time()), 3)
        # resume wakes it too; paused, then hibernated, then resumed
        ctl("h", "pause")
        ctl("h", "hibernate")
        self.assertEqual(D.status("h")["state"], "hibernated")
        ctl("h", "resume")
        self.assertEqual(D.status("h")["state"], "ready")
        self.assertEqual(D.sh("h", "cat /tmp/f").strip(), "precious")
        self.assertEqual(D.sh("h", "hostname").strip(), "h")

    def test_refused(self):
        D.create_ready("r")
        for verb, want in (("resume", errno.EBUSY), ("fly", errno.EINVAL), ("", None), ("pause now", errno.EINVAL),
                           ("x" * 100, errno.EINVAL)):
            if want is None:
                continue
            with self.subTest(verb=verb):
                self.assertErrno(want, ctl, "r", verb)
                st = D.status("r")
                self.assertEqual(st["state"], "ready")
                self.assertTrue(st["ctl_error"], st)
        ctl("r", "pause")
        self.assertErrno(errno.EBUSY, ctl, "r", "pause")
        self.assertIn("paused", D.status("r")["ctl_error"])
        self.assertEqual(D.status("r")["state"], "paused")
        ctl("r", "hibernate")
        self.assertErrno(errno.EBUSY, ctl, "r", "hibernate")
        self.assertErrno(errno.EBUSY, ctl, "r", "pause")
        self.assertEqual(D.status("r")["state"], "hibernated")
        ctl("r", "resume")
        self.assertIsNone(D.status("r")["ctl_error"])  # a success clears it
        self.assertErrno(errno.EACCES, harness.read_text, D.sb("r", "ctl"))

    def test_ctl_while_creating(self):
        # a cold template: the create takes seconds, so ctl meets it creating
        with D.template("slow"):
            D.create("c", t="slow")
            self.assertEqual(D.status("c", t="slow")["state"], "creating")
            self.assertErrno(errno.EBUSY, harness.write_file, D.sb("c", "ctl", t="slow"), "pause")
            self.assertErrno(errno.EBUSY, harness.write_file, D.sb("c", "ctl", t="slow"), "hibernate")
            D.wait_ready("c", t="slow")
            harness.write_file(D.sb("c", "ctl", t="slow"), "hibernate")  # a cold-booted one hibernates too
            self.assertEqual(D.sh("c", "hostname", t="slow").strip(), "c")
            D.destroy("c", t="slow")

    def test_fork(self):
        D.create_ready("f")
        D.sh("f", "echo before > /tmp/x; echo diskbefore > /root/d; sync; "
                  "(i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.1; done) >/dev/null 2>&1 &")
        # a procs/ process is the parent's: the copy's attach ends it in the copy
        os.mkdir(D.sb("f", "procs", "j"))
        harness.write_file(D.sb("f", "procs", "j", "cmd"), "exec sleep 1003\n")
        jpid = harness.wait_for(lambda: harness.read_json(D.sb("f", "procs", "j", "status"))["pid"], 10, "j's pid")
        ctl("f", "fork f2\n")
        st = D.status("f")
        self.assertEqual((st["state"], st["last_op"]), ("ready", "fork"))
        c = D.wait_ready("f2")
        self.assertEqual((c["path"], c["path_reason"]), ("fork", "fork of f"))
        self.assertEqual(D.sh("f2", "hostname").strip(), "f2")
        self.assertEqual(D.sh("f", "hostname").strip(), "f")
        # both copies have the memory and the running process from before the fork
        for n in ("f", "f2"):
            self.assertEqual(D.sh(n, "cat /tmp/x").strip(), "before")
            self.assertEqual(D.sh(n, "cat /root/d").strip(), "diskbefore")
            a = int(D.sh(n, "cat /tmp/c").strip())
            time.sleep(0.5)
            b = int(D.sh(n, "cat /tmp/c").strip())
            self.assertGreater(b, a, "the loop started before the fork does not run in %s" % n)
        self.assertEqual(os.listdir(D.sb("f2", "procs")), [])
        alive = lambda n: D.exec_plain(n, "test -e /proc/%d" % jpid)[1]
        harness.wait_for(lambda: not alive("f2"), 10, "the parent's procs/ process gone in the copy")
        self.assertTrue(alive("f"))
        self.assertEqual(harness.read_json(D.sb("f", "procs", "j", "status"))["state"], "running")
        os.rmdir(D.sb("f", "procs", "j"))
        # after the fork, memory and disk are each their own
        D.sh("f", "echo parent > /tmp/x; echo parentdisk > /root/d; sync")
        D.sh("f2", "echo child > /tmp/x")
        self.assertEqual(D.sh("f", "cat /tmp/x").strip(), "parent")
        self.assertEqual(D.sh("f2", "cat /tmp/x").strip(), "child")
        self.assertEqual(D.sh("f2", "cat /root/d").strip(), "diskbefore")
        ra = D.exec_json("f", {"sh": "head -c 32 /dev/urandom"})["stdout"]
        rb = D.exec_json("f2", {"sh": "head -c 32 /dev/urandom"})["stdout"]
        self.assertNotEqual(ra, rb)
        # refusals change nothing
        self.assertErrno(errno.EEXIST, ctl, "f", "fork f2")
        self.assertErrno(errno.EINVAL, ctl, "f", "fork ../x")
        self.assertErrno(errno.EINVAL, ctl, "f", "fork ")
        ctl("f", "hibernate")
        self.assertErrno(errno.EBUSY, ctl, "f", "fork f3")
        self.assertEqual(D.sandboxes(), ["f", "f2"])
        # a paused parent can fork, and stays paused
        ctl("f2", "pause")
        ctl("f2", "fork f4")
        self.assertEqual(D.status("f2")["state"], "paused")
        self.assertEqual(D.sh("f4", "cat /tmp/x").strip(), "child")

    def test_metrics(self):
        try:
            from prometheus_client.openmetrics.parser import text_string_to_metric_families
        except ImportError:
            sys.path.append("/usr/lib/python3/dist-packages")  # Debian's python3-prometheus-client
            from prometheus_client.openmetrics.parser import text_string_to_metric_families

        def scrape():
            text = harness.read_text(os.path.join(D.mount, "metrics"))
            self.assertTrue(text.endswith("# EOF\n"), text[-200:])
            out = {}
            for fam in text_string_to_metric_families(text):  # strict: raises on any format error
                for smp in fam.samples:
                    out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
            return out

        def val(m, name, **labels):
            return m.get((name, tuple(sorted(labels.items()))), 0)

        m0 = scrape()
        D.create_ready("m1")
        ctl("m1", "hibernate")
        ctl("m1", "resume")
        ctl("m1", "fork m2")
        D.wait_ready("m2")
        ctl("m2", "pause")
        m1 = scrape()
        self.assertEqual(val(m1, "emberfs_creates_total", template="default", path="restore") -
                         val(m0, "emberfs_creates_total", template="default", path="restore"), 1)
        self.assertEqual(val(m1, "emberfs_sandboxes", template="default", state="ready"), 1)
        self.assertEqual(val(m1, "emberfs_sandboxes", template="default", state="paused"), 1)
        for op in ("fork", "hibernate", "wake"):
            self.assertEqual(val(m1, "emberfs_operation_seconds_count", op=op) -
                             val(m0, "emberfs_operation_seconds_count", op=op), 1, op)
        self.assertEqual(val(m1, "emberfs_create_seconds_count", path="fork") -
                         val(m0, "emberfs_create_seconds_count", path="fork"), 1)
        self.assertEqual(val(m1, "emberfs_pool_target", template="default"), 0)
        # a ready template with an empty pool: every create is a miss
        self.assertGreaterEqual(val(m1, "emberfs_pool_misses_total", template="default", reason="pool_empty") -
                                val(m0, "emberfs_pool_misses_total", template="default", reason="pool_empty"), 1)
        # reading metrics never wakes anything
        self.assertEqual(D.status("m2")["state"], "paused")

    def test_stop_start(self):
        D.create_ready("s")
        D.sh("s", "echo kept > /root/persist; echo lost > /tmp/x; sync")
        pid = D.status("s")["vmm_pid"]
        ctl("s", "stop")
        st = D.status("s")
        self.assertEqual((st["state"], st["vmm_pid"]), ("stopped", None))
        self.assertTrue(harness.wait_pid_gone(pid, timeout=5))
        self.assertFalse(os.path.exists(os.path.join(D.sandbox_vm_dir("s"), "mem")))  # its memory is freed
        # a stopped sandbox is not started by an exec: the read fails with EIO (exec_plain: ok False, no output)
        self.assertEqual(D.exec_plain("s", "true"), (b"", False))
        for verb in ("stop", "pause", "resume", "hibernate", "fork s2"):
            with self.subTest(verb=verb):
                self.assertErrno(errno.EBUSY, ctl, "s", verb)
                self.assertEqual(D.status("s")["state"], "stopped")
        ctl("s", "start")  # a cold boot from its own disk
        st = D.status("s")
        self.assertEqual((st["state"], st["last_op"]), ("ready", "start"))
        self.assertEqual(D.sh("s", "cat /root/persist; cat /tmp/x 2>/dev/null; hostname").split(), ["kept", "s"])
        self.assertErrno(errno.EBUSY, ctl, "s", "start")
        # start of a hibernated sandbox restores it; stop drops a hibernation image
        D.sh("s", "echo mem > /tmp/y")
        ctl("s", "hibernate")
        ctl("s", "start")
        self.assertEqual(D.sh("s", "cat /tmp/y").strip(), "mem")
        ctl("s", "hibernate")
        ctl("s", "stop")
        self.assertFalse(os.path.exists(os.path.join(D.sandbox_vm_dir("s"), "hibernate.state")))
        self.assertEqual(D.status("s")["state"], "stopped")

    def test_idle_timeout(self):
        with D.template("idle", bake=True, idle_timeout_s=2):
            st = D.create_ready("i", t="idle")
            self.assertEqual(st["idle_timeout_s"], 2)
            deadline = time.monotonic() + 10
            while D.status("i", t="idle")["state"] != "hibernated" and time.monotonic() < deadline:
                time.sleep(0.1)
            st = D.status("i", t="idle")
            self.assertEqual((st["state"], st["idle_hibernations"]), ("hibernated", 1), st)
            # an exec wakes it, and using it keeps it awake
            for _ in range(3):
                self.assertEqual(D.sh("i", "hostname", t="idle").strip(), "i")
                time.sleep(1.0)
            self.assertEqual(D.status("i", t="idle")["state"], "ready")
            # the timeout does not run down while it sleeps: paused for 3 s, it stays paused
            harness.write_file(D.sb("i", "ctl", t="idle"), "pause")
            time.sleep(3.0)
            self.assertEqual(D.status("i", t="idle")["state"], "paused")
            harness.write_file(D.sb("i", "ctl", t="idle"), "resume")
            self.assertEqual(D.status("i", t="idle")["state"], "ready")
            deadline = time.monotonic() + 10
            while D.status("i", t="idle")["state"] != "hibernated" and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertEqual(D.status("i", t="idle")["idle_hibernations"], 2)

    def test_template_from_sandbox(self):
        D.create_ready("t")
        D.sh("t", "echo setup > /root/setup; echo inmem > /tmp/m; sync")
        ctl("t", "template tnew")
        try:
            self.assertEqual(D.status("t")["state"], "ready")  # the source runs on
            st = D.template_status("tnew")
            self.assertEqual(st["state"], "ready", st)
            self.assertNotEqual(st["identity"], D.template_status()["identity"])
            cfg = harness.read_json(D.tpl("tnew", "config"))
            self.assertTrue(cfg["derived_from"].startswith("default/t@"), cfg)
            x = D.create_ready("x", t="tnew")
            self.assertEqual(x["path"], "restore")
            self.assertEqual(D.sh("x", "cat /root/setup /tmp/m; hostname", t="tnew").split(), ["setup", "inmem", "x"])
            # refusals
            self.assertErrno(errno.EEXIST, ctl, "t", "template tnew")
            self.assertErrno(errno.EINVAL, ctl, "t", "template ../x")
            self.assertErrno(errno.EINVAL, harness.write_file, D.tpl("tnew", "ctl"), "rebake")
            self.assertIn("derived_from", D.template_status("tnew")["error"])
            self.assertEqual(D.template_status("tnew")["state"], "ready")
            D.destroy("x", t="tnew")
        finally:
            for n in D.sandboxes(t="tnew"):
                D.destroy(n, t="tnew")
            os.rmdir(D.tpl("tnew"))
        self.assertNotIn("tnew", os.listdir(os.path.join(D.mount, "templates")))

    def test_destroy_sleeping(self):
        D.create_ready("d1")
        D.create_ready("d2")
        D.create_ready("d3")
        ctl("d1", "pause")
        ctl("d2", "hibernate")
        ctl("d3", "stop")
        D.destroy("d1")
        D.destroy("d2")
        D.destroy("d3")


if __name__ == "__main__":
    harness.main()
