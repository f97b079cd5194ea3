#!/usr/bin/env python3
"""
A sandbox's settings against a real daemon and real guests
(docs/interface.md, "Settings"):

- timeout: the sandbox is destroyed at its deadline, or hibernated with
  `hibernate` (the sandbox's or the template's on_timeout), within 250 ms;
  rewriting it extends or shortens it, 0 clears it; the template's
  timeout_s is a new sandbox's; a deadline passed while the daemon was down
  (kill -9) is applied at its restart; bad values are EINVAL and change
  nothing.
- metadata: a JSON object of strings, replaced whole, bounded (keys, key
  and value sizes), bad input EINVAL and unchanged; a value written in
  pieces through one open is applied once complete; sandboxes-by/KEY/VALUE/
  lists links to the matching sandboxes (names encoded: %2F for '/', %00
  for the empty value) and follows changes and destroys.
- env: KEY=VALUE lines or a JSON object: every later exec and procs/
  process has them, under what the command sets itself; bad names and
  duplicates are EINVAL and change nothing.
- What survives: hibernate and wake, a fork (copied; its own deadline), a
  daemon kill -9 and restart (from the record).
"""
import errno
import json
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = BASE = None
PRECISION_S = 0.25


def setUpModule():
    global D, BASE
    D, BASE = harness.start_shared()


def tearDownModule():
    harness.stop_shared(D, BASE)


def put(name, fname, data, d=None):
    harness.write_file((d or D).sb(name, fname), data)


def get(name, fname, d=None):
    return harness.read_text((d or D).sb(name, fname))


def timeouts_applied(action):
    """emberfs_sandbox_timeouts_total of the default template for action, from MOUNT/metrics."""
    text = harness.read_text(os.path.join(D.mount, "metrics"))
    for line in text.splitlines():
        if line.startswith('emberfs_sandbox_timeouts_total{template="default",action="%s"} ' % action):
            return int(line.split()[-1])
    raise AssertionError("no timeouts counter for %s in metrics" % action)


def wait_gone(path, timeout):
    """Polls every 10 ms until path is gone; the monotonic time it went."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not os.path.exists(path):
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError("%s still there after %.1f s" % (path, timeout))


def wait_state(name, state, timeout, d=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = (d or D).status(name)
        if st["state"] == state:
            return time.monotonic(), st
        time.sleep(0.01)
    raise AssertionError("%s not %s after %.1f s: %s" % (name, state, timeout, (d or D).status(name)))


class Settings(harness.TestCase):
    def tearDown(self):
        try:
            for n in D.sandboxes():
                D.destroy(n)
            D.assert_inventory(BASE, timeout=10)
        finally:
            super().tearDown()

    # ---- timeout ----

    def test_timeout_destroys_at_deadline(self):
        evfd = os.open(os.path.join(D.mount, "events"), os.O_RDONLY)
        self.addCleanup(os.close, evfd)
        D.create_ready("t1")
        destroyed0 = timeouts_applied("destroy")
        t = json.loads(get("t1", "timeout"))
        self.assertEqual(t, {"timeout_s": 0, "deadline_unix_ms": None, "left_ms": None, "on_timeout": "destroy"})
        t0 = time.monotonic()
        put("t1", "timeout", "2\n")
        t = json.loads(get("t1", "timeout"))
        self.assertEqual(t["timeout_s"], 2)
        self.assertLessEqual(t["left_ms"], 2000)
        self.assertGreater(t["left_ms"], 1500)
        self.assertAlmostEqual(t["deadline_unix_ms"] / 1000.0, time.time() + t["left_ms"] / 1000.0, delta=0.1)
        gone = wait_gone(D.sb("t1"), 10)
        late = gone - t0 - 2.0
        print("timeout destroy: %.0f ms after the deadline" % (late * 1000), file=sys.stderr)
        self.assertGreater(late, -0.05)
        self.assertLess(late, PRECISION_S)
        self.assertNotIn("t1", os.listdir(os.path.join(D.mount, "live")))
        evs = []
        p = select.poll()
        p.register(evfd, select.POLLIN)
        while p.poll(300):  # the reads that have something to return
            evs += [json.loads(line) for line in os.read(evfd, 1 << 16).decode().splitlines()]
        gone_ev = [e for e in evs if e.get("name") == "t1" and e.get("state") == "destroyed"]
        self.assertEqual(len(gone_ev), 1, evs)
        self.assertEqual(gone_ev[0].get("reason"), "timeout")
        self.assertEqual(timeouts_applied("destroy"), destroyed0 + 1)

    def test_timeout_hibernates(self):
        D.create_ready("t2")
        D.sh("t2", "echo kept > /tmp/f")
        hibernated0 = timeouts_applied("hibernate")
        t0 = time.monotonic()
        put("t2", "timeout", "2 hibernate")
        self.assertEqual(json.loads(get("t2", "timeout"))["on_timeout"], "hibernate")
        # it leaves ready when the hibernate starts (the VMM stops), hibernated once written
        left, _ = wait_state("t2", "hibernated", 20)
        st = D.status("t2")
        start_late = left - t0 - 2.0 - st["hibernate_ms"] / 1000.0
        print("timeout hibernate: started %.0f ms after the deadline (hibernate took %.0f ms)" % (
            start_late * 1000, st["hibernate_ms"]), file=sys.stderr)
        self.assertLess(start_late, PRECISION_S)
        self.assertGreater(left - t0, 1.95)
        # done: no deadline until one is set again; an exec wakes it with its files
        self.assertEqual(json.loads(get("t2", "timeout"))["timeout_s"], 0)
        self.assertEqual(timeouts_applied("hibernate"), hibernated0 + 1)
        self.assertEqual(D.sh("t2", "cat /tmp/f"), "kept\n")

    def test_timeout_template_default(self):
        # timeout_s and on_timeout are not part of the identity: the template stays baked
        cfg = harness.read_json(D.tpl("default", "config"))
        ident = harness.read_text(D.tpl("default", "identity"))
        try:
            harness.write_file(D.tpl("default", "config"), json.dumps({**cfg, "timeout_s": 3, "on_timeout": "hibernate"}))
            self.assertEqual(harness.read_text(D.tpl("default", "identity")), ident)
            self.assertEqual(D.template_status()["state"], "ready")
            t0 = time.monotonic()
            D.create_ready("t3")
            t = json.loads(get("t3", "timeout"))
            self.assertEqual((t["timeout_s"], t["on_timeout"]), (3, "hibernate"))
            wait_state("t3", "hibernated", 20)
            self.assertGreater(time.monotonic() - t0, 2.9)
            for bad in ({"timeout_s": -1}, {"timeout_s": "3"}, {"on_timeout": "explode"}, {"on_timeout": 1}):
                self.assertErrno(errno.EINVAL, harness.write_file, D.tpl("default", "config"), json.dumps({**cfg, **bad}))
        finally:
            harness.write_file(D.tpl("default", "config"), json.dumps(cfg))
        self.assertEqual(json.loads(get("t3", "timeout"))["timeout_s"], 0)  # applied: none any more

    def test_timeout_extend_shorten_clear(self):
        for n in ("e", "s", "c"):
            D.create_ready(n)
        t0 = time.monotonic()
        put("e", "timeout", "2")
        put("s", "timeout", "600")
        put("c", "timeout", "1")
        put("s", "timeout", "1")   # shortened
        put("c", "timeout", "0")   # cleared
        time.sleep(1.0)
        put("e", "timeout", "2")   # extended: the deadline is now t0 + 3 s
        gone_s = wait_gone(D.sb("s"), 5)
        self.assertLess(gone_s - t0 - 1.0, PRECISION_S)
        gone_e = wait_gone(D.sb("e"), 6)
        self.assertGreater(gone_e - t0, 2.9)
        self.assertLess(gone_e - t0 - 3.0, PRECISION_S + 0.05)
        self.assertTrue(os.path.isdir(D.sb("c")))
        self.assertEqual(json.loads(get("c", "timeout"))["deadline_unix_ms"], None)

    def test_timeout_bad_input(self):
        D.create_ready("b")
        put("b", "timeout", "300")
        before = json.loads(get("b", "timeout"))
        for bad in ("-1", "abc", "1.5", "10 explode", "10 hibernate now", "99999999999", " x",
                    '{"timeout_s": -3}', '{"timeout_s": 5, "x": 1}', '{"on_timeout": "hibernate"}', "1\x00"):
            self.assertErrno(errno.EINVAL, put, "b", "timeout", bad)
        after = json.loads(get("b", "timeout"))
        self.assertEqual(after["deadline_unix_ms"], before["deadline_unix_ms"])
        put("b", "timeout", '{"timeout_s": 400, "on_timeout": "hibernate"}')
        self.assertEqual(json.loads(get("b", "timeout"))["on_timeout"], "hibernate")
        # emptied (`: > timeout`): none
        harness.write_file(D.sb("b", "timeout"), "", os.O_WRONLY | os.O_TRUNC)
        self.assertEqual(json.loads(get("b", "timeout"))["deadline_unix_ms"], None)

    # ---- metadata and sandboxes-by ----

    def test_metadata_and_listing(self):
        D.create_ready("m1")
        D.create_ready("m2")
        self.assertEqual(json.loads(get("m1", "metadata")), {})
        put("m1", "metadata", json.dumps({"team": "ml", "job": "a/b", "empty": ""}))
        put("m2", "metadata", json.dumps({"team": "ml", "job": "42"}))
        self.assertEqual(json.loads(get("m1", "metadata")), {"team": "ml", "job": "a/b", "empty": ""})
        by = os.path.join(D.mount, "sandboxes-by")
        self.assertIn("sandboxes-by", os.listdir(D.mount))
        self.assertEqual(sorted(os.listdir(by)), ["empty", "job", "team"])
        self.assertEqual(sorted(os.listdir(os.path.join(by, "team"))), ["ml"])
        self.assertEqual(sorted(os.listdir(os.path.join(by, "team", "ml"))), ["m1", "m2"])
        self.assertEqual(sorted(os.listdir(os.path.join(by, "job"))), ["42", "a%2Fb"])
        self.assertEqual(os.listdir(os.path.join(by, "job", "a%2Fb")), ["m1"])
        self.assertEqual(os.listdir(os.path.join(by, "empty", "%00")), ["m1"])
        link = os.path.join(by, "team", "ml", "m2")
        self.assertEqual(os.readlink(link), "../../../templates/default/sandboxes/m2")
        self.assertEqual(os.path.realpath(link), os.path.realpath(D.sb("m2")))
        self.assertEqual(json.loads(harness.read_text(os.path.join(link, "status")))["name"], "m2")
        # names that match nothing, or are not an encoding, are not there
        for p in ("nokey", "team/nope", "job/a%2fb", "job/a%2Fb/m2", "team/ml/zz"):
            self.assertFalse(os.path.exists(os.path.join(by, p)), p)
        # a change moves it; {} clears
        put("m2", "metadata", json.dumps({"team": "web"}))
        self.assertEqual(sorted(os.listdir(os.path.join(by, "team"))), ["ml", "web"])
        self.assertEqual(os.listdir(os.path.join(by, "team", "ml")), ["m1"])
        self.assertEqual(sorted(os.listdir(by)), ["empty", "job", "team"])
        put("m1", "metadata", "{}")
        self.assertEqual(sorted(os.listdir(by)), ["team"])
        self.assertFalse(os.path.exists(os.path.join(by, "team", "ml")))
        # nothing is made or removed there by hand
        self.assertErrno(errno.EPERM, os.mkdir, os.path.join(by, "new"))
        self.assertErrno(errno.EPERM, os.mkdir, os.path.join(by, "team", "new"))
        with self.assertRaises(OSError):
            os.rmdir(os.path.join(by, "team", "web"))
        with self.assertRaises(OSError):
            os.unlink(os.path.join(by, "team", "web", "m2"))
        self.assertEqual(os.listdir(os.path.join(by, "team", "web")), ["m2"])
        D.destroy("m2")
        self.assertEqual(os.listdir(by), [])

    def test_metadata_bounds_and_bad_input(self):
        D.create_ready("mb")
        good = {"k": "v"}
        put("mb", "metadata", json.dumps(good))
        bad = [
            "not json", "[1, 2]", '"str"', '{"a": 1}', '{"a": null}', '{"a": {"b": "c"}}', '{"a": "b"} x',
            json.dumps({"k%d" % i: "v" for i in range(65)}),
            json.dumps({"k" * 129: "v"}),
            json.dumps({"": "v"}),
            json.dumps({"a\nb": "v"}),
            json.dumps({"k": "v" * 1025}),
            json.dumps({"k": "a\x00b"}),
            b'{"k": "\xff\xfe"}',
        ]
        for b in bad:
            self.assertErrno(errno.EINVAL, put, "mb", "metadata", b)
            self.assertEqual(json.loads(get("mb", "metadata")), good, b)
            self.assertTrue(D.status("mb")["settings_error"].startswith("metadata: "), D.status("mb"))
        self.assertErrno(errno.EINVAL, put, "mb", "metadata", bad[7])
        self.assertEqual(D.status("mb")["settings_error"], "metadata: more than 64 keys")
        # the bounds themselves are fine; a success clears the reason
        edge = {"k%02d" % i: "v" for i in range(63)}
        edge["K" * 128] = "v" * 1024
        put("mb", "metadata", json.dumps(edge))
        self.assertIsNone(D.status("mb")["settings_error"])
        self.assertEqual(json.loads(get("mb", "metadata")), edge)
        # a value longer than a file name (255 bytes) is kept but not listed
        self.assertEqual(os.listdir(os.path.join(D.mount, "sandboxes-by", "K" * 128)), [])
        # one open, several writes: applied once the JSON is whole
        text = json.dumps({"w%d" % i: "x" * 1000 for i in range(3)} | {"z": "1"}).encode()
        fd = os.open(D.sb("mb", "metadata"), os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, text[:1000])
            self.assertEqual(json.loads(get("mb", "metadata")), edge)  # not yet
            os.write(fd, text[1000:])
        finally:
            os.close(fd)
        self.assertEqual(json.loads(get("mb", "metadata"))["z"], "1")
        # an incomplete one fails at close and changes nothing
        fd = os.open(D.sb("mb", "metadata"), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b'{"a": "b"')
        with self.assertRaises(OSError) as cm:
            os.close(fd)
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        self.assertEqual(json.loads(get("mb", "metadata"))["z"], "1")

    # ---- env ----

    def test_env(self):
        D.create_ready("v")
        self.assertEqual(get("v", "env"), "")
        put("v", "env", "# a comment\nFOO=bar baz\n\nEQ=a=b\nOVER=sandbox\n")
        self.assertEqual(get("v", "env"), "FOO=bar baz\nEQ=a=b\nOVER=sandbox\n")
        self.assertEqual(D.sh("v", 'echo "$FOO|$EQ|$OVER|$EMBERFS_SANDBOX"'), "bar baz|a=b|sandbox|v\n")
        # the command's own env wins
        r = D.exec_json("v", {"sh": 'echo "$FOO|$OVER"', "env": {"OVER": "cmd"}})
        self.assertEqual(r["stdout"], b"bar baz|cmd\n")
        # procs/ processes have it too
        p = os.path.join(D.sb("v"), "procs", "e1")
        os.mkdir(p)
        harness.write_file(os.path.join(p, "cmd"), 'echo "$FOO"\n')
        with open(os.path.join(p, "stdout"), "rb") as f:
            self.assertEqual(f.read(), b"bar baz\n")
        # JSON, with a value holding a newline: read back as JSON
        put("v", "env", json.dumps({"KEY": "line1\nline2", "B": "c"}))
        self.assertEqual(json.loads(get("v", "env")), {"KEY": "line1\nline2", "B": "c"})
        self.assertEqual(D.sh("v", 'printf "%s" "$KEY"'), "line1\nline2")
        self.assertEqual(D.sh("v", 'echo "${FOO-unset}"'), "unset\n")  # replaced whole
        before = get("v", "env")
        for bad in ("1X=a", "A-B=c", "NOEQUALS", "A=1\nA=2", '{"A": 1}', '{"A": "1"', "=v", "X" * 256 + "=v"):
            self.assertErrno(errno.EINVAL, put, "v", "env", bad)
            self.assertEqual(get("v", "env"), before, bad)
        self.assertEqual(D.status("v")["settings_error"], "env: line 1: \"%s\" is not a variable name "
                         "([A-Za-z_][A-Za-z0-9_]*, at most 255 bytes)" % ("X" * 40))
        harness.write_file(D.sb("v", "env"), "", os.O_WRONLY | os.O_TRUNC)  # `: > env`
        self.assertEqual(get("v", "env"), "")
        self.assertEqual(D.sh("v", 'echo "${B-unset}"'), "unset\n")

    # ---- creating with settings: templates/T/create ----

    def test_create_file(self):
        create = D.tpl("default", "create")
        harness.write_file(create, json.dumps({"name": "cf", "timeout": "300 hibernate",
                                               "metadata": {"team": "ml", "run": "7"},
                                               "env": {"MODE": "ci x"}}))
        # the settings are there when the write returns, before the guest is ready
        self.assertEqual(json.loads(get("cf", "metadata")), {"team": "ml", "run": "7"})
        self.assertEqual(os.readlink(os.path.join(D.mount, "sandboxes-by", "team", "ml", "cf")),
                         "../../../templates/default/sandboxes/cf")
        t = json.loads(get("cf", "timeout"))
        self.assertEqual((t["timeout_s"], t["on_timeout"]), (300, "hibernate"))
        self.assertGreater(t["left_ms"], 295000)
        self.assertEqual(harness.read_text(D.sb("cf", "wait")), "ready\n")
        self.assertEqual(D.sh("cf", 'echo "$MODE"'), "ci x\n")
        self.assertIsNone(json.loads(harness.read_text(D.tpl("default", "status")))["create_error"])
        # written in pieces through one open file; a number for timeout, env as lines
        fd = os.open(create, os.O_WRONLY)
        try:
            os.write(fd, b'{"name": "cf2", "timeout": 60,')
            self.assertFalse(os.path.exists(D.sb("cf2")))
            os.write(fd, b' "env": "A=1\\nB=2\\n"}')
        finally:
            os.close(fd)
        self.assertEqual(json.loads(get("cf2", "timeout"))["timeout_s"], 60)
        self.assertEqual(get("cf2", "env"), "A=1\nB=2\n")
        # keys left out: what mkdir gives
        harness.write_file(create, '{"name": "cf3"}')
        self.assertEqual(get("cf3", "metadata"), "{}\n")
        self.assertEqual(json.loads(get("cf3", "timeout"))["timeout_s"], 0)

    def test_create_file_bad_input_creates_nothing(self):
        create = D.tpl("default", "create")
        D.create_ready("cx")
        before = sorted(D.sandboxes())
        for data, err, why in (
                ('{"name": "cx"}', errno.EEXIST, "cx: a sandbox of that name exists"),
                ('{"name": "bad name"}', errno.EINVAL, "bad name: not a valid sandbox name"),
                ('{"timeout": 5}', errno.EINVAL, "(no name): \"name\" (a string) is required"),
                ('{"name": "n1", "cpu": 2}', errno.EINVAL, "(no name): unknown key \"cpu\""),
                ('{"name": "n1", "timeout": "soon"}', errno.EINVAL, "n1: timeout: "),
                ('{"name": "n1", "metadata": {"k": 1}}', errno.EINVAL, "n1: metadata: "),
                ('{"name": "n1", "env": {"1X": "a"}}', errno.EINVAL, "n1: env: "),
                ('{"name": "n1", "egress": "default deny"}', errno.EINVAL,
                 "n1: egress: the template's sandboxes have no network"),
                ('["n1"]', errno.EINVAL, "(no name): not a JSON object"),
                ('{"name": "n1", "timeout": null}', errno.EINVAL, "(no name): timeout: null")):
            with self.subTest(data=data):
                self.assertErrno(err, harness.write_file, create, data)
                self.assertEqual(sorted(D.sandboxes()), before)
                ce = json.loads(harness.read_text(D.tpl("default", "status")))["create_error"]
                self.assertTrue(ce.startswith(why), ce)
        # an incomplete JSON value: the close fails, nothing made
        fd = os.open(create, os.O_WRONLY)
        os.write(fd, b'{"name": "n2"')
        self.assertErrno(errno.EINVAL, os.close, fd)
        self.assertEqual(sorted(D.sandboxes()), before)
        # the file cannot be read; a create through it clears create_error
        self.assertErrno(errno.EACCES, open, create, "r")
        harness.write_file(create, '{"name": "n3"}')
        self.assertIsNone(json.loads(harness.read_text(D.tpl("default", "status")))["create_error"])

    # ---- what survives ----

    def test_survives_hibernate_fork_and_restart(self):
        D.create_ready("h")
        md = {"owner": "ci", "run": "7"}
        put("h", "metadata", json.dumps(md))
        put("h", "env", "JOB=seven\n")
        put("h", "timeout", "3600")
        deadline = json.loads(get("h", "timeout"))["deadline_unix_ms"]
        harness.write_file(D.sb("h", "ctl"), "hibernate")
        self.assertEqual(D.status("h")["state"], "hibernated")
        self.assertEqual(json.loads(get("h", "metadata")), md)
        self.assertEqual(D.sh("h", 'echo "$JOB"'), "seven\n")  # wakes it
        self.assertEqual(json.loads(get("h", "timeout"))["deadline_unix_ms"], deadline)
        # a fork copies them; its deadline counts from the fork
        harness.write_file(D.sb("h", "ctl"), "fork hf")
        D.wait_ready("hf")
        self.assertEqual(json.loads(get("hf", "metadata")), md)
        self.assertEqual(get("hf", "env"), "JOB=seven\n")
        self.assertEqual(D.sh("hf", 'echo "$JOB"'), "seven\n")
        self.assertEqual(json.loads(get("hf", "timeout"))["timeout_s"], 3600)
        self.assertGreaterEqual(json.loads(get("hf", "timeout"))["deadline_unix_ms"], deadline)
        self.assertEqual(sorted(os.listdir(os.path.join(D.mount, "sandboxes-by", "owner", "ci"))), ["h", "hf"])
        put("hf", "metadata", "{}")
        self.assertEqual(json.loads(get("h", "metadata")), md)  # its own copy


class Restart(harness.TestCase):
    def test_restart_keeps_settings_and_applies_passed_deadline(self):
        d = harness.Daemon().start()
        d2 = None
        try:
            d.create_ready("keep")
            d.create_ready("late")
            harness.write_file(d.sb("keep", "metadata"), json.dumps({"a": "b"}))
            harness.write_file(d.sb("keep", "env"), "X=1\n")
            harness.write_file(d.sb("keep", "timeout"), "3600 hibernate")
            harness.write_file(d.sb("late", "timeout"), "2")
            d.kill9()
            time.sleep(2.5)  # the deadline passes while no daemon runs
            t0 = time.monotonic()
            d2 = harness.Daemon(reuse=d).start(wait_default=False)
            mounted = time.monotonic()
            gone = wait_gone(d2.sb("late"), 5)
            print("deadline passed while down: applied %.0f ms after the restarted daemon mounted (%.0f ms after its start)"
                  % ((gone - mounted) * 1000, (gone - t0) * 1000), file=sys.stderr)
            d2.wait_template_ready("default")
            self.assertEqual(json.loads(harness.read_text(d2.sb("keep", "metadata"))), {"a": "b"})
            self.assertEqual(harness.read_text(d2.sb("keep", "env")), "X=1\n")
            t = json.loads(harness.read_text(d2.sb("keep", "timeout")))
            self.assertEqual((t["timeout_s"], t["on_timeout"]), (3600, "hibernate"))
            self.assertEqual(d2.sh("keep", 'echo "$X"'), "1\n")
            self.assertEqual(os.listdir(os.path.join(d2.mount, "sandboxes-by", "a", "b")), ["keep"])
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()


if __name__ == "__main__":
    harness.main()
