#!/usr/bin/env python3
"""
The Python client (python/emberfs, docs/client.md) against a real daemon and
real guests. One daemon and one sandbox (c1) for the whole file; the forks,
the checkpoint branch and the context-manager sandbox are the only others.

- Mount.create: the sandbox is ready (status, timings, wait), found again
  by Mount.sandbox/sandboxes and Template.sandboxes; MOUNT/events showed its
  creating and ready lines (the stream was opened before the create).
- run: stdout, stderr, exit codes, check=True raising CommandFailed with the
  Result, argv/env/cwd, binary output, exit 127, a signal, timeout raising
  CommandTimeout, a command that cannot run raising the guest's errno.
- spawn: lines read as they come while the process runs, stderr, the exit
  code; a signal (and its refusals: Invalid, NotRunning), stdin through
  communicate(), the slot removed by the context manager killing the process.
- Guest files: write, read, list, modes, files the guest made, a tree copied
  in and out byte for byte, recursive remove, NotFound.
- ctl: pause/resume (and Busy with the daemon's reason), checkpoint,
  rollback, fork (waited for with a timeout: poll on its status), fork_from,
  hibernate and wake, save_as_template.
- Settings: timeout, metadata (with sandboxes-by lookups), env; usage, console.
- Errors: Exists, NotFound, Invalid (client- and daemon-side, with the
  ctl_error / settings_error / create_error / status error reason), Busy;
  Timeout of a create's wait and CreateFailed of a create that fails (a
  template whose guest finds no root file system): both sandboxes are gone.
- The context manager destroys the sandbox (also when the block raises);
  the events of that sandbox are creating, ready, destroying, destroyed.
- Templates: listing, status, config, identity, a bake with nothing to do,
  a refused config, create_template/remove; version and metrics.
"""
import errno
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

sys.path.insert(0, os.path.join(harness.REPO, "python"))
import emberfs  # noqa: E402

D = BASE = M = SB = EV = None


def setUpModule():
    global D, BASE, M, SB, EV
    D, BASE = harness.start_shared()
    M = emberfs.Mount(D.mount)
    EV = M.events()  # before the create: a stream sees the events from its open on
    SB = M.create("default", "c1")


def tearDownModule():
    if EV:
        EV.close()
    harness.stop_shared(D, BASE)


class Client(harness.TestCase):
    def tearDown(self):
        try:
            # everything but c1 goes; c1's process slots and checkpoints too
            for sb in M.sandboxes():
                if sb.name != "c1":
                    sb.destroy()
            for p in SB.processes():
                p.remove()
            for c in SB.checkpoints():
                c.remove()
            self.assertEqual(SB.state, "ready")
        finally:
            super().tearDown()

    def assertReason(self, cm, text):
        """The exception carries the daemon's reason, and its message shows it."""
        self.assertIsNotNone(cm.exception.reason, cm.exception)
        self.assertIn(text, cm.exception.reason)
        self.assertIn(text, str(cm.exception))

    # ---- create, status, events ----

    def test_create_and_status(self):
        st = SB.status()
        self.assertEqual((st["name"], st["template"], st["state"], st["error"]), ("c1", "default", "ready", None))
        self.assertEqual((SB.name, SB.template, SB.state), ("c1", "default", "ready"))
        self.assertEqual(SB.path, M.path / "templates" / "default" / "sandboxes" / "c1")
        self.assertEqual(SB.root, M.path / "live" / "c1")
        self.assertEqual(M.sandbox("c1"), SB)
        self.assertEqual(M.sandboxes(), [SB])
        self.assertEqual(M.template("default").sandboxes(), [SB])
        self.assertEqual(M.template("default").sandbox("c1"), SB)
        tm = SB.timings()
        self.assertIn("total", tm)
        self.assertEqual(list(tm)[-1], "total")
        self.assertAlmostEqual(sum(v for k, v in tm.items() if k != "total"), tm["total"], delta=0.1)
        self.assertAlmostEqual(tm["total"], st["ready_ms"], delta=0.1)
        SB.wait()  # ready: returns at once, with and without a timeout
        SB.wait(timeout=5)
        self.assertEqual(SB.run("hostname").stdout.strip(), "c1")
        ev = EV.wait_for(type="sandbox", name="c1", timeout=5)
        self.assertEqual((ev["state"], ev["template"]), ("creating", "default"))
        ev = EV.wait_for(type="sandbox", name="c1", timeout=5)
        self.assertEqual(ev["state"], "ready")
        self.assertEqual(ev["path"], st["path"])

    # ---- run ----

    def test_run(self):
        r = SB.run("echo hi")
        self.assertEqual((r.stdout, r.stderr, r.exit_code, r.signal, r.ok, r.returncode), ("hi\n", "", 0, 0, True, 0))
        self.assertFalse(r.truncated)
        self.assertGreater(r.duration_ms, 0)
        r = SB.run("echo out; echo err >&2; exit 3")
        self.assertEqual((r.stdout, r.stderr, r.exit_code, r.ok, r.returncode), ("out\n", "err\n", 3, False, 3))
        with self.assertRaises(emberfs.CommandFailed) as cm:
            SB.run("echo why >&2; exit 4", check=True)
        self.assertEqual((cm.exception.result.exit_code, cm.exception.result.stderr), (4, "why\n"))
        self.assertIn("exited 4: why", str(cm.exception))
        self.assertEqual(SB.run("true", check=True).exit_code, 0)
        r = SB.run(["sh", "-c", 'echo "$A $B $(pwd) $EMBERFS_SANDBOX"', "x"], env={"A": "a b", "B": "'q'"}, cwd="/tmp")
        self.assertEqual(r.stdout, "a b 'q' /tmp c1\n")
        self.assertEqual(SB.run("printf '\\000\\377x'").stdout_bytes, b"\x00\xffx")
        r = SB.run("no-such-program-here")
        self.assertEqual(r.exit_code, 127)
        self.assertIn("not found", r.stderr)
        r = SB.run("kill -9 $$")
        self.assertEqual((r.exit_code, r.signal, r.returncode, r.ok), (-1, 9, -9, False))
        t0 = time.monotonic()
        with self.assertRaises(emberfs.CommandTimeout) as cm:
            SB.run("echo started; sleep 30", timeout=0.5)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertIsInstance(cm.exception, TimeoutError)
        self.assertEqual((cm.exception.result.signal, cm.exception.result.stdout), (9, "started\n"))
        self.assertTrue(cm.exception.result.timed_out)
        # a command that cannot run at all: the guest's errno and reason
        with self.assertRaises(emberfs.NotFound) as cm:
            SB.run("true", cwd="/no/such/dir")
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        self.assertTrue(cm.exception.reason, cm.exception)

    # ---- processes ----

    def test_process_streaming(self):
        p = SB.spawn("for i in 1 2 3 4; do echo line$i; sleep 0.4; done; echo bye >&2; exit 5", id="stream")
        self.assertEqual(p.id, "stream")
        got, times, states = [], [], []
        t0 = time.monotonic()
        for line in p.lines():
            got.append(line)
            times.append(time.monotonic() - t0)
            if len(got) == 1:
                states.append(p.state)
        self.assertEqual(got, ["line1", "line2", "line3", "line4"])
        self.assertEqual(states, ["running"])  # the first line came while it ran
        self.assertLess(times[0], times[-1] - 0.8, "not streamed: %r" % times)
        self.assertEqual(p.read("stderr"), b"bye\n")
        st = p.wait(timeout=20)
        self.assertEqual((st["state"], st["exit_code"], st["signal"]), ("exited", 5, 0))
        self.assertEqual(p.returncode, 5)
        self.assertEqual([q.id for q in SB.processes()], ["stream"])
        self.assertEqual(SB.process("stream").status()["cmd"], p.status()["cmd"])
        p.remove()
        with self.assertRaises(emberfs.NotFound):
            SB.process("stream")

    def test_process_signal_stdin(self):
        q = SB.spawn("echo ready; exec sleep 1000")
        it = q.lines()
        self.assertEqual(next(it), "ready")
        self.assertIsNone(q.returncode)
        with self.assertRaises(emberfs.Invalid):
            q.signal("NOSUCHSIG")
        q.terminate()
        st = q.wait(timeout=20)
        self.assertEqual((st["signal"], st["exit_code"], q.returncode), (15, -1, -15))
        self.assertEqual(list(it), [])  # EOF
        with self.assertRaises(emberfs.NotRunning):
            q.signal(signal.SIGTERM)
        # stdin, and both streams at once
        c = SB.spawn(["sh", "-c", "cat; echo done >&2"])
        data = os.urandom(300 * 1024)
        out, err = c.communicate(data, timeout=60)
        self.assertEqual((out, err, c.returncode), (data, b"done\n", 0))
        c.close()
        # the context manager removes the slot: the process is killed
        with SB.spawn("exec sleep 1000") as s:
            gpid = harness.wait_for(lambda: s.status()["pid"], 10, "its pid")
            self.assertTrue(SB.run("kill -0 %d" % gpid).ok)
        self.assertFalse(s.path.exists())
        harness.wait_for(lambda: not SB.run("kill -0 %d 2>/dev/null" % gpid).ok, 10, "the process killed")

    # ---- guest files ----

    def test_files(self):
        SB.makedirs("/tmp/client/sub")
        SB.write_file("/tmp/client/a.txt", "hello")
        self.assertEqual(SB.read_file("/tmp/client/a.txt"), b"hello")
        self.assertEqual(SB.run("cat /tmp/client/a.txt").stdout, "hello")  # the guest sees it
        SB.run("echo from-guest > /tmp/client/b.txt", check=True)
        self.assertEqual(SB.read_text("/tmp/client/b.txt"), "from-guest\n")
        self.assertEqual(SB.listdir("/tmp/client"), ["a.txt", "b.txt", "sub"])
        SB.write_file("tmp/client/x.sh", "#!/bin/sh\necho ran\n", mode=0o755)
        self.assertEqual(SB.run("/tmp/client/x.sh").stdout, "ran\n")
        self.assertEqual(SB.guest_path("/../../tmp/client/../client/x.sh"), SB.root / "tmp" / "client" / "x.sh")
        self.assertTrue(SB.file_exists("/tmp/client/x.sh"))
        self.assertEqual((SB.root / "tmp" / "client" / "a.txt").read_bytes(), b"hello")  # root is a plain Path
        with self.assertRaises(emberfs.NotFound) as cm:
            SB.read_file("/tmp/client/missing")
        self.assertIsInstance(cm.exception, FileNotFoundError)
        # a tree in and out, byte for byte
        with tempfile.TemporaryDirectory() as tin, tempfile.TemporaryDirectory() as tout:
            blob = os.urandom(200 * 1024 + 7)
            os.mkdir(os.path.join(tin, "d"))
            with open(os.path.join(tin, "d", "blob"), "wb") as f:
                f.write(blob)
            with open(os.path.join(tin, "run.sh"), "w") as f:
                f.write("#!/bin/sh\necho tree\n")
            os.chmod(os.path.join(tin, "run.sh"), 0o755)
            SB.copy_in(tin, "/tmp/client/tree")
            self.assertEqual(SB.run("wc -c < /tmp/client/tree/d/blob").stdout.strip(), str(len(blob)))
            self.assertEqual(SB.run("/tmp/client/tree/run.sh").stdout, "tree\n")
            SB.copy_out("/tmp/client/tree", os.path.join(tout, "t"))
            with open(os.path.join(tout, "t", "d", "blob"), "rb") as f:
                self.assertEqual(f.read(), blob)
            self.assertTrue(os.access(os.path.join(tout, "t", "run.sh"), os.X_OK))
            SB.copy_out("/tmp/client/a.txt", os.path.join(tout, "a"))
            with open(os.path.join(tout, "a"), "rb") as f:
                self.assertEqual(f.read(), b"hello")
        SB.remove("/tmp/client/a.txt")
        self.assertFalse(SB.file_exists("/tmp/client/a.txt"))
        SB.remove("/tmp/client", recursive=True)
        self.assertNotEqual(SB.run("test -e /tmp/client").exit_code, 0)
        with self.assertRaises(emberfs.PermissionDenied):
            SB.remove("/", recursive=True)

    # ---- ctl verbs ----

    def test_ctl(self):
        SB.pause()
        self.assertEqual(SB.state, "paused")
        with self.assertRaises(emberfs.Busy) as cm:
            SB.pause()
        self.assertReason(cm, "pause: refused while the sandbox is paused")
        SB.resume()
        self.assertEqual(SB.state, "ready")
        self.assertIsNone(SB.status()["ctl_error"])  # cleared by the verb that succeeded
        # checkpoint, rollback, branches
        SB.run("echo one > /root/ck", check=True)
        ck = SB.checkpoint("ck1")
        self.assertEqual([c.name for c in SB.checkpoints()], ["ck1"])
        self.assertEqual((ck.status()["name"], ck.status()["from_state"]), ("ck1", "ready"))
        SB.run("echo two > /root/ck", check=True)
        ck.rollback()
        self.assertEqual(SB.state, "ready")
        self.assertEqual(SB.run("cat /root/ck").stdout, "one\n")
        SB.run("echo three > /root/ck", check=True)
        f = SB.fork("c1f", wait=False)
        self.assertEqual(f.state, "creating")
        f.wait(timeout=60)  # poll() on its status until decided, then wait
        self.assertEqual((f.template, f.state, f.status()["path"]), ("default", "ready", "fork"))
        self.assertEqual(f.run("hostname; cat /root/ck").stdout, "c1f\nthree\n")
        g = ck.fork("c1g")
        self.assertEqual(g.run("cat /root/ck").stdout, "one\n")
        self.assertEqual([s.name for s in M.sandboxes()], ["c1", "c1f", "c1g"])
        f.destroy()
        g.destroy()
        self.assertEqual(M.sandboxes(), [SB])
        ck.remove()
        self.assertEqual(SB.checkpoints(), [])
        # hibernate; a command wakes it
        SB.hibernate()
        self.assertEqual(SB.state, "hibernated")
        self.assertEqual(SB.run("cat /root/ck").stdout, "three\n")
        self.assertEqual(SB.state, "ready")
        # template NEW
        t = SB.save_as_template("fromc1")
        try:
            self.assertIn("fromc1", M.templates())
            self.assertEqual(t.state, "ready")
            self.assertEqual(t.config()["derived_from"].split("@")[0], "default/c1")
        finally:
            t.remove()
        self.assertNotIn("fromc1", M.templates())

    # ---- settings ----

    def test_settings(self):
        SB.set_timeout(600)
        t = SB.timeout()
        self.assertEqual((t["timeout_s"], t["on_timeout"]), (600, "destroy"))
        self.assertGreater(t["left_ms"], 590000)
        SB.set_timeout(900, "hibernate")
        self.assertEqual((SB.timeout()["timeout_s"], SB.timeout()["on_timeout"]), (900, "hibernate"))
        SB.set_timeout(0)
        self.assertEqual(SB.timeout()["timeout_s"], 0)
        self.assertIsNone(SB.timeout()["deadline_unix_ms"])
        SB.set_metadata({"team": "ml", "path": "a/b", "dot": "."})
        self.assertEqual(SB.metadata(), {"team": "ml", "path": "a/b", "dot": "."})
        self.assertEqual(M.sandboxes(metadata={"team": "ml"}), [SB])
        self.assertEqual(M.sandboxes(metadata={"path": "a/b", "dot": "."}), [SB])  # names encoded
        self.assertEqual(M.sandboxes(metadata={"team": "ml", "path": "x"}), [])
        self.assertEqual(M.sandboxes(metadata={"nokey": "v"}), [])
        SB.set_metadata({})
        self.assertEqual(SB.metadata(), {})
        self.assertEqual(M.sandboxes(metadata={"team": "ml"}), [])
        SB.set_env({"MODE": "ci", "MULTI": "a\nb"})
        self.assertEqual(SB.env(), {"MODE": "ci", "MULTI": "a\nb"})
        self.assertEqual(SB.run('echo "$MODE"').stdout, "ci\n")
        self.assertEqual(SB.run('echo "$MODE"', env={"MODE": "mine"}).stdout, "mine\n")  # the command's wins
        SB.set_env({"ONE": "1"})
        self.assertEqual(SB.env(), {"ONE": "1"})  # lines form
        SB.set_env({})
        self.assertEqual(SB.env(), {})
        self.assertEqual(SB.run('echo "${MODE-unset}"').stdout, "unset\n")
        u = SB.usage()
        self.assertEqual(u["state"], "ready")
        self.assertGreater(u["memory"]["vmm_rss_bytes"], 0)
        self.assertIsInstance(SB.console(), str)

    # ---- errors ----

    def test_errors(self):
        with self.assertRaises(emberfs.Exists) as cm:
            M.create("default", "c1")
        self.assertEqual(cm.exception.errno, errno.EEXIST)
        self.assertIsInstance(cm.exception, FileExistsError)
        self.assertEqual(SB.state, "ready")  # untouched
        with self.assertRaises(emberfs.NotFound) as cm:
            M.sandbox("nope")
        self.assertIsInstance(cm.exception, FileNotFoundError)
        with self.assertRaises(emberfs.NotFound):
            M.create("nosuchtemplate", "x1")
        with self.assertRaises(emberfs.NotFound):
            M.template("nosuchtemplate")
        n_live = sorted(os.listdir(M.path / "live"))
        with self.assertRaises(emberfs.Invalid):
            M.create("default", "../x")  # refused before any path is built
        with self.assertRaises(emberfs.Invalid) as cm:
            M.create("default", "status")  # the daemon's own rule: an entry name
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        with self.assertRaises(emberfs.Invalid) as cm:
            M.create("default", "x2", env={"1BAD": "v"})  # through templates/T/create: create_error says why
        self.assertReason(cm, "x2: env")
        self.assertEqual(sorted(os.listdir(M.path / "live")), n_live)  # nothing created
        # ctl refusals carry the status's ctl_error
        with self.assertRaises(emberfs.Busy) as cm:
            SB.resume()
        self.assertReason(cm, "resume: refused while the sandbox is ready")
        with self.assertRaises(emberfs.NotFound) as cm:
            SB.rollback("nockpt")
        self.assertReason(cm, "the sandbox has no checkpoint of that name")
        with self.assertRaises(emberfs.Invalid) as cm:
            SB.ctl("dance")
        self.assertReason(cm, 'unknown verb "dance"')
        with self.assertRaises(emberfs.Exists) as cm:
            SB.fork("c1")
        self.assertReason(cm, "a sandbox of that name exists")
        with self.assertRaises(emberfs.Invalid):
            SB.checkpoint("bad name")
        # settings refusals carry settings_error
        with self.assertRaises(emberfs.Invalid) as cm:
            SB.set_metadata({"k": 1})
        self.assertReason(cm, "metadata:")
        with self.assertRaises(emberfs.Invalid) as cm:
            SB.set_timeout(-1)
        self.assertReason(cm, "timeout:")
        self.assertEqual(SB.timeout()["timeout_s"], 0)  # unchanged
        with self.assertRaises(emberfs.Invalid):
            SB.spawn("true", id="x y")
        with self.assertRaises(emberfs.NotFound):
            SB.process("nope")
        # a wait that runs out, and a create that fails: both sandboxes are destroyed, the reason kept
        with self.assertRaises(emberfs.Timeout) as cm:
            M.create("default", timeout=0.001)  # a fresh name
        self.assertIsInstance(cm.exception, TimeoutError)
        self.assertEqual(M.sandboxes(), [SB])
        cmdline = M.template("default").config()["cmdline"]
        broken = M.create_template("broken", cmdline=cmdline + " rdinit=/nonexistent init=/nonexistent")
        try:
            with self.assertRaises(emberfs.CreateFailed) as cm:
                broken.create("b1", timeout=120)  # boots cold: the kernel finds no root
            self.assertEqual(cm.exception.errno, errno.EIO)
            self.assertReason(cm, "create failed at boot")
            self.assertEqual(broken.sandboxes(), [])
        finally:
            broken.remove()
        ghost = emberfs.Sandbox(M, "default", "ghost")
        with self.assertRaises(emberfs.NotFound):
            ghost.destroy()
        ghost.destroy(missing_ok=True)
        with self.assertRaises(emberfs.NotFound):
            ghost.run("true")
        with self.assertRaises(emberfs.NotFound):
            emberfs.Mount(tempfile.gettempdir())

    # ---- the context manager, and events ----

    def test_context_manager_events(self):
        with M.events() as ev:
            with self.assertRaises(KeyError):
                with M.create("default", "cm", metadata={"job": "ci-1"}, env={"E": "1"}, sandbox_timeout=600) as sb:
                    self.assertEqual(sb.state, "ready")
                    self.assertEqual(sb.metadata(), {"job": "ci-1"})
                    self.assertEqual(sb.run('echo "$E"').stdout, "1\n")
                    self.assertEqual(sb.timeout()["timeout_s"], 600)
                    self.assertEqual(M.sandboxes(metadata={"job": "ci-1"}), [sb])
                    raise KeyError("leave the block")
            self.assertFalse(sb.exists())
            with self.assertRaises(emberfs.NotFound):
                M.sandbox("cm")
            self.assertNotIn("cm", os.listdir(M.path / "live"))
            seen = []
            ev.wait_for(lambda e: seen.append(e) or (e.get("name") == "cm" and e["state"] == "destroyed"), timeout=10)
        states = [e["state"] for e in seen if e["type"] == "sandbox" and e.get("name") == "cm"]
        self.assertEqual(states, ["creating", "ready", "destroying", "destroyed"])
        with self.assertRaises(emberfs.Error):
            ev.next(0)  # closed

    # ---- templates and the mount's files ----

    def test_templates(self):
        self.assertIn("default", M.templates())
        t = M.template("default")
        st = t.status()
        self.assertEqual((st["name"], st["state"]), ("default", "ready"))
        self.assertTrue(t.config()["kernel"].startswith("/"))
        self.assertEqual(t.identity(), st["identity"])
        t0 = time.monotonic()
        self.assertEqual(t.bake()["state"], "ready")  # a snapshot of this identity exists: nothing to do
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(t.pool(), 0)  # the harness's --pool 0
        with self.assertRaises(emberfs.Invalid) as cm:
            t.update_config(vcpus=0)
        self.assertReason(cm, "vcpus")
        self.assertEqual(t.identity(), st["identity"])  # unchanged
        n = M.create_template("tc", vcpus=2)
        try:
            self.assertEqual(n.config()["vcpus"], 2)
            self.assertEqual(n.state, "new")
            self.assertEqual(n.sandboxes(), [])
        finally:
            n.remove()
        with self.assertRaises(emberfs.Invalid):
            M.create_template("tc2", mem_mib=1)
        self.assertNotIn("tc2", M.templates())
        with self.assertRaises(emberfs.Busy):
            t.remove()  # it has c1
        self.assertTrue(M.version().startswith("emberfs "))
        text = M.metrics()
        self.assertIn("emberfs_sandboxes{", text)
        self.assertTrue(text.endswith("# EOF\n"))


if __name__ == "__main__":
    harness.main()
