#!/usr/bin/env python3
"""
The daemon as a systemd service (docs/operations.md, "Installing";
fs/service.c), with the real protocol: the test binds the datagram socket
systemd would (NOTIFY_SOCKET) and gives the daemon a JOURNAL_STREAM naming
its stderr, as systemd does for a unit whose output goes to the journal.

- READY=1 only once the mount answers and MOUNT/templates/default/status
  says ready (a fresh state dir, so the bake happens after the start and
  the STATUS= lines say so first); STOPPING=1 at `fusermount3 -u`, exit 0.
- A bake that fails: READY=1 all the same, with the reason in STATUS=.
- --no-bake: READY=1 at once, STATUS= saying so.
- `fusermount3 -u` while the bake runs, before READY=1: the readiness
  watcher holds no file of the mount open, so the unmount works and the
  daemon stops cleanly.
- Log lines carry syslog priorities ("<6>info: ...") and no timestamp of
  their own when stderr is the journal; without JOURNAL_STREAM, the usual
  "emberfs[T] info:" lines.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class Notify:
    """systemd's end of sd_notify(3): a datagram socket, messages as they come."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="efnotify")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.msgs = []

    def wait(self, what, timeout, on_each=None):
        """Messages until one has `what` (a KEY=VALUE line); that message."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s in %.0f s: %r" % (what, timeout, self.msgs))
            self.sock.settimeout(left)
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.msgs.append(m)
            if on_each:
                on_each(m)
            if what in m.split("\n"):
                return m

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir)


def journal_daemon(n, extra_args=()):
    """A daemon on fresh dirs whose stderr is its log file and 'the journal'."""
    d = harness.Daemon(extra_args=extra_args)
    st = os.stat(d.log_path)
    d.env = dict(os.environ, NOTIFY_SOCKET=n.path, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
    return d


def state_of(d):
    return harness.read_json(d.tpl("default", "status"))["state"]


class Service(harness.TestCase):
    def setUp(self):
        super().setUp()
        self.n = Notify()

    def tearDown(self):
        self.n.close()
        super().tearDown()

    def test_ready_after_the_bake_and_stopping(self):
        d = journal_daemon(self.n)
        d.start(wait_default=False)
        states = []

        def on_each(m):
            if "READY=1" in m.split("\n"):
                states.append(state_of(d))  # what the mount says the moment READY=1 arrives

        m = self.n.wait("READY=1", 120, on_each)
        self.assertEqual(states, ["ready"])
        self.assertIn("STATUS=Serving; template default ready", m)
        # a fresh state dir: the bake ran after the mount, and STATUS= said so first
        self.assertIn("STATUS=Mounted; template default baking", self.n.msgs)
        self.assertEqual(sum("READY=1" in x for x in self.n.msgs), 1)
        d.stop(command=["fusermount3", "-u", d.mount])
        self.n.wait("STOPPING=1", 10)
        log = d.log_text()
        self.assertRegex(log, r"(?m)^<6>info: emberfs \S+ mounted on ")
        self.assertRegex(log, r"(?m)^<6>info: stopped$")
        self.assertNotRegex(log, r"(?m)^emberfs\[")

    def test_failed_bake_is_ready_with_the_reason(self):
        # a "QEMU" that answers --version and fails to start a VM: the bake fails
        qemu = os.path.join(self.n.dir, "qemu")
        with open(qemu, "w") as f:
            f.write('#!/bin/sh\n[ "$1" = --version ] && echo "QEMU emulator version 7.2.0" && exit 0\nexit 1\n')
        os.chmod(qemu, 0o755)
        d = journal_daemon(self.n, ["--qemu", qemu])
        d.expect_log_error(r"template default: bake failed")
        d.expect_log_error(r"VMM|qemu|spawn")
        d.start(wait_default=False)
        m = self.n.wait("READY=1", 120)
        self.assertEqual(state_of(d), "failed")
        self.assertRegex(m, r"STATUS=Serving; template default failed: bake failed")
        self.assertRegex(d.log_text(), r"(?m)^<4>warn: service: ready, but the template default failed")
        self.assertRegex(d.log_text(), r"(?m)^<3>error: ")
        d.stop(command=["fusermount3", "-u", d.mount])

    def test_no_bake_is_ready_at_once(self):
        d = journal_daemon(self.n, ["--no-bake"])
        d.start(wait_default=False)
        m = self.n.wait("READY=1", 30)
        self.assertIn("STATUS=Serving; the template default is not baked at start (--no-bake)", m)
        self.assertNotEqual(state_of(d), "ready")
        d.stop(command=["fusermount3", "-u", d.mount])
        self.n.wait("STOPPING=1", 10)

    def test_unmount_while_baking(self):
        d = journal_daemon(self.n)
        d.start(wait_default=False)
        self.n.wait("STATUS=Mounted; template default baking", 60)
        # the watcher polls through the mount but holds nothing open: the unmount is not EBUSY
        r = subprocess.run(["fusermount3", "-u", d.mount], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        # already stopping; stop() also sends the SIGTERM systemd sends after ExecStop,
        # which must not cut the teardown short
        d.stop()
        self.n.wait("STOPPING=1", 10)
        self.assertNotIn("READY=1", "\n".join(self.n.msgs).split("\n"))

    def test_plain_log_without_the_journal(self):
        d = harness.Daemon(extra_args=["--no-bake"], env={"NOTIFY_SOCKET": self.n.path})
        d.start(wait_default=False)
        self.n.wait("READY=1", 30)
        d.stop()
        self.assertRegex(d.log_text(), r"(?m)^emberfs\[[0-9.]+\] info: emberfs \S+ mounted on ")
        self.assertNotRegex(d.log_text(), r"(?m)^<\d>")


if __name__ == "__main__":
    harness.main()
