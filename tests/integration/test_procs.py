#!/usr/bin/env python3
"""
Processes through files: templates/T/sandboxes/NAME/procs/ID/ against real
guests (docs/interface.md, "Processes: procs/ID/").

- A long-running process streams: its stdout lines are read as they come,
  while its status says running, and the read ends with EOF once it exited.
- stdin round-trips through `cat` (binary, larger than the pipes and the
  agent's buffers, written while stdout is read); closing stdin is EOF.
- Exit codes (shell lines and JSON argv, env and cwd), signals (TERM by name,
  SIG-name, lower case and number; KILL), status fields.
- Large output: 100 MiB through stdout, byte-exact (SHA-256), while the
  daemon's resident memory stays flat; a process nobody reads blocks
  (back-pressure) instead of filling the daemon.
- Several processes at once in one sandbox.
- rmdir of a running slot kills the process (checked inside the guest).
- Refusals: bad slot names, bad and second commands (EINVAL, EBUSY), unknown
  signals (EINVAL), signals to a process that is not running (ESRCH),
  stdout before the start (EAGAIN), stdin after the end (EPIPE).
- Shell only (sh -c with echo, printf, cat, ls): the same through a shell.
"""
import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = BASE = None
SB = "pr"  # the sandbox every test uses


def setUpModule():
    global D, BASE
    D, BASE = harness.start_shared()
    D.create_ready(SB)


def tearDownModule():
    harness.stop_shared(D, BASE)


def P(pid, *rest):
    return D.sb(SB, "procs", pid, *rest)


def start(pid, cmd):
    os.mkdir(P(pid))
    harness.write_file(P(pid, "cmd"), cmd)


def pstatus(pid):
    return harness.read_json(P(pid, "status"))


def read_all(path, chunk=1 << 20):
    fd = os.open(path, os.O_RDONLY)
    try:
        out = b""
        while True:
            b = os.read(fd, chunk)
            if not b:
                return out
            out += b
    finally:
        os.close(fd)


def wait_exited(pid, timeout=30.0):
    return harness.wait_for(lambda: (lambda st: st if st["state"] in ("exited", "lost") else None)(pstatus(pid)),
                            timeout, "process %s exited" % pid)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def under_asan(pid):
    """AddressSanitizer keeps freed memory in a quarantine (256 MiB): RSS bounds
    are checked in the normal build only."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def guest_alive(gpid):
    """kill -0 inside the guest."""
    return D.exec_plain(SB, "kill -0 %d 2>/dev/null" % gpid)[1]


class Procs(harness.TestCase):
    def tearDown(self):
        try:
            for n in os.listdir(D.sb(SB, "procs")):
                os.rmdir(P(n))
            self.assertEqual(os.listdir(D.sb(SB, "procs")), [])
        finally:
            super().tearDown()

    def test_slot_and_status(self):
        os.mkdir(P("s1"))
        self.assertEqual(sorted(os.listdir(P("s1"))), ["cmd", "signal", "status", "stderr", "stdin", "stdout"])
        self.assertIn("s1", os.listdir(D.sb(SB, "procs")))
        st = pstatus("s1")
        self.assertEqual((st["name"], st["state"], st["cmd"], st["pid"], st["exit_code"]), ("s1", "new", None, None, None))
        t0 = time.time()
        harness.write_file(P("s1", "cmd"), "echo out; echo err >&2; sleep 0.5; exit 0\n")
        st = pstatus("s1")
        self.assertIn(st["state"], ("starting", "running", "exited"))
        self.assertIn("echo out", st["cmd"])
        self.assertIsInstance(st["pid"], int)
        self.assertLess(abs(st["start_unix_ms"] / 1000.0 - t0), 5, st)  # the guest's clock is right
        self.assertEqual(read_all(P("s1", "stdout")), b"out\n")
        self.assertEqual(read_all(P("s1", "stderr")), b"err\n")
        st = wait_exited("s1")
        self.assertEqual((st["state"], st["exit_code"], st["signal"], st["error"]), ("exited", 0, 0, None), st)
        self.assertGreaterEqual(st["duration_ms"], 400, st)
        self.assertLess(st["duration_ms"], 20000, st)
        # a read after EOF is EOF again
        self.assertEqual(read_all(P("s1", "stdout")), b"")

    def test_streaming(self):
        start("st", "i=0; while [ $i -lt 4 ]; do echo line$i; i=$((i+1)); sleep 1; done; exit 5\n")
        fd = os.open(P("st", "stdout"), os.O_RDONLY)
        got, times = b"", []
        t0 = time.monotonic()
        try:
            while True:
                b = os.read(fd, 65536)
                if not b:
                    break
                if not got:
                    # the first line arrives while the process still runs
                    self.assertEqual(pstatus("st")["state"], "running")
                got += b
                times.append(time.monotonic() - t0)
            self.assertErrno(errno.ESPIPE, os.lseek, fd, 0, os.SEEK_SET)  # not seekable
        finally:
            os.close(fd)
        self.assertEqual(got, b"line0\nline1\nline2\nline3\n")
        self.assertGreaterEqual(len(times), 3, "output came in one piece, not streamed: %r" % times)
        self.assertLess(times[0], times[-1] - 2.0, "the first line was not readable before the end: %r" % times)
        st = wait_exited("st")
        self.assertEqual((st["exit_code"], st["signal"]), (5, 0))

    def test_stdin_roundtrip(self):
        data = os.urandom(3 * 1024 * 1024 + 12345)  # beyond pipes, the agent's 256 KiB and one 1 MiB message
        start("cat", "cat\n")
        out = []

        def reader():
            out.append(read_all(P("cat", "stdout")))

        th = threading.Thread(target=reader)
        th.start()
        fd = os.open(P("cat", "stdin"), os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view[:200000])
                self.assertGreater(n, 0)
                view = view[n:]
            self.assertEqual(pstatus("cat")["state"], "running")  # no EOF while stdin is open
        finally:
            os.close(fd)  # EOF: cat ends
        th.join(60)
        self.assertFalse(th.is_alive(), "stdout did not end after stdin was closed")
        self.assertEqual(len(out[0]), len(data))
        self.assertEqual(hashlib.sha256(out[0]).hexdigest(), hashlib.sha256(data).hexdigest())
        st = wait_exited("cat")
        self.assertEqual((st["exit_code"], st["stdin_closed"]), (0, True), st)
        # stdin after the end: EPIPE
        self.assertErrno(errno.EPIPE, harness.write_file, P("cat", "stdin"), "late\n")

    def test_stdin_eof_on_close(self):
        # `echo hi > stdin` writes one line and ends the input; wc sees exactly it
        start("wc", "wc -c; echo done\n")
        harness.write_file(P("wc", "stdin"), "hello\n")
        self.assertEqual(read_all(P("wc", "stdout")).split(), [b"6", b"done"])
        self.assertEqual(wait_exited("wc")["exit_code"], 0)
        # an open for writing with no write at all also closes it
        start("wc2", "wc -c\n")
        os.close(os.open(P("wc2", "stdin"), os.O_WRONLY))
        self.assertEqual(read_all(P("wc2", "stdout")).strip(), b"0")

    def test_exit_codes(self):
        cases = {"e0": ("true\n", 0), "e1": ("false\n", 1), "e3": ("exit 3\n", 3), "e255": ("exit 255", 255),
                 "ej": (json.dumps({"argv": ["/bin/sh", "-c", "exit 7"]}), 7),
                 "enf": ("/no/such/program\n", 127)}
        for pid, (cmd, _) in cases.items():
            start(pid, cmd)  # all at once
        for pid, (cmd, code) in cases.items():
            with self.subTest(cmd=cmd):
                read_all(P(pid, "stdout"))
                st = wait_exited(pid)
                self.assertEqual((st["state"], st["exit_code"], st["signal"]), ("exited", code, 0), st)

    def test_left_running(self):
        # status left_running: whether processes of its group still ran at its exit
        start("lr0", "echo a\n")
        start("lr1", "sleep 2 & echo b\n")
        st0 = wait_exited("lr0")
        st1 = wait_exited("lr1")
        self.assertIs(st0["left_running"], False, st0)
        self.assertIs(st1["left_running"], True, st1)
        # its outputs stay open until the child ends
        t0 = time.monotonic()
        self.assertEqual(read_all(P("lr1", "stdout")), b"b\n")
        self.assertGreater(time.monotonic() - t0, 0.5)

    def test_json_cmd(self):
        start("j", json.dumps({"argv": ["/bin/sh", "-c", "echo \"$FOO\"; pwd; printf '%s|' \"$@\"", "x", "a b", "*"],
                               "env": {"FOO": "bar baz"}, "cwd": "/tmp"}))
        self.assertEqual(read_all(P("j", "stdout")), b"bar baz\n/tmp\na b|*|")
        self.assertEqual(wait_exited("j")["exit_code"], 0)
        start("js", json.dumps({"sh": "echo $((6*7)) >&2"}))
        self.assertEqual(read_all(P("js", "stderr")), b"42\n")
        # a command without a final newline starts at close (printf 'cmd' > cmd)
        os.mkdir(P("nc"))
        fd = os.open(P("nc", "cmd"), os.O_WRONLY)
        os.write(fd, b"echo ")
        os.write(fd, b"late-start")
        self.assertEqual(pstatus("nc")["state"], "new")
        os.close(fd)
        self.assertEqual(read_all(P("nc", "stdout")), b"late-start\n")

    def test_signals(self):
        spellings = {"t1": "TERM", "t2": "SIGTERM\n", "t3": "term", "t4": "15", "k": "KILL", "h": "1"}
        want = {"t1": 15, "t2": 15, "t3": 15, "t4": 15, "k": 9, "h": 1}
        for pid in spellings:
            start(pid, "sleep 1000\n")
        harness.wait_for(lambda: all(pstatus(p)["state"] == "running" for p in spellings), 20, "all running")
        for bad in ("FOO", "0", "65", "-1", "TERM TERM", "SIGFOO"):
            with self.subTest(bad=bad):
                self.assertErrno(errno.EINVAL, harness.write_file, P("t1", "signal"), bad)
        self.assertEqual(pstatus("t1")["state"], "running")
        for pid, sig in spellings.items():
            harness.write_file(P(pid, "signal"), sig)
        for pid in spellings:
            with self.subTest(pid=pid, sig=spellings[pid]):
                self.assertEqual(read_all(P(pid, "stdout")), b"")
                st = wait_exited(pid, timeout=15)
                self.assertEqual((st["state"], st["signal"], st["exit_code"]), ("exited", want[pid], -1), st)
        # not running any more, or not yet: ESRCH
        self.assertErrno(errno.ESRCH, harness.write_file, P("t1", "signal"), "TERM")
        os.mkdir(P("new"))
        self.assertErrno(errno.ESRCH, harness.write_file, P("new", "signal"), "TERM")
        # a trapped signal is delivered to the process, which decides
        start("trap", "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done\n")
        fd = os.open(P("trap", "stdout"), os.O_RDONLY)
        try:
            self.assertEqual(os.read(fd, 100), b"ready\n")
            harness.write_file(P("trap", "signal"), "USR1")
            self.assertEqual(os.read(fd, 100), b"got-usr1\n")
            self.assertEqual(os.read(fd, 100), b"")
        finally:
            os.close(fd)
        self.assertEqual(wait_exited("trap")["exit_code"], 0)

    def test_large_output(self):
        # 101 copies of a random 1048573-byte block (an odd size, so no copy lines up with a chunk):
        # 105905873 bytes; anything lost, duplicated or reordered changes the SHA-256
        D.sh(SB, "head -c 1048573 /dev/urandom > /tmp/block")
        block = D.exec_json(SB, {"sh": "cat /tmp/block"})["stdout"]
        self.assertEqual(len(block), 1048573)
        copies = 101
        want = hashlib.sha256()
        for _ in range(copies):
            want.update(block)
        start("big", "i=0; while [ $i -lt %d ]; do cat /tmp/block; i=$((i+1)); done\n" % copies)
        base = peak = rss_kib(D.pid)
        h, n, reads = hashlib.sha256(), 0, 0
        fd = os.open(P("big", "stdout"), os.O_RDONLY)
        try:
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                h.update(b)
                n += len(b)
                reads += 1
                if reads % 8 == 0:
                    peak = max(peak, rss_kib(D.pid))
        finally:
            os.close(fd)
        peak = max(peak, rss_kib(D.pid))
        self.assertEqual(n, copies * len(block))
        self.assertEqual(h.hexdigest(), want.hexdigest(), "stdout differs from what the process wrote")
        if under_asan(D.pid):
            sys.stderr.write("\n  (ASan build: daemon RSS grew %d KiB, the quarantine included; not checked)\n"
                             % (peak - base))
            return
        self.assertLess(peak - base, 32 * 1024, "daemon RSS grew %d KiB (from %d) during 100 MiB of output" % (
            peak - base, base))
        self.assertEqual(wait_exited("big")["exit_code"], 0)
        D.sh(SB, "rm -f /tmp/block")

    def test_back_pressure(self):
        # a process writing 200 MiB that nobody reads blocks in write; the daemon does not buffer it
        base = rss_kib(D.pid)
        start("bp", "head -c 209715200 /dev/zero; echo finished >&2\n")
        time.sleep(3)
        self.assertEqual(pstatus("bp")["state"], "running")
        if not under_asan(D.pid):
            self.assertLess(rss_kib(D.pid) - base, 16 * 1024, "the daemon buffers unread output")
        fd = os.open(P("bp", "stdout"), os.O_RDONLY)
        try:
            self.assertEqual(os.read(fd, 4096), b"\0" * 4096)  # it is there, nothing was lost
        finally:
            os.close(fd)
        gpid = pstatus("bp")["pid"]
        os.rmdir(P("bp"))  # kills the blocked writer
        harness.wait_for(lambda: not guest_alive(gpid), 10, "the blocked writer was killed")

    def test_two_at_once(self):
        # each waits for the other's file: only two processes running together can both finish
        D.sh(SB, "rm -f /tmp/pa /tmp/pb")
        start("a", "echo a-up; touch /tmp/pa; while [ ! -e /tmp/pb ]; do sleep 0.1; done; echo a-done\n")
        start("b", "echo b-up; touch /tmp/pb; while [ ! -e /tmp/pa ]; do sleep 0.1; done; echo b-done\n")
        res = {}

        def rd(pid):
            res[pid] = read_all(P(pid, "stdout"))

        th = [threading.Thread(target=rd, args=(p,)) for p in ("a", "b")]
        for t in th:
            t.start()
        for t in th:
            t.join(60)
        self.assertEqual((res.get("a"), res.get("b")), (b"a-up\na-done\n", b"b-up\nb-done\n"))
        # and a handful more, started together, each with its own output
        for i in range(8):
            start("m%d" % i, "echo m%d; echo e%d >&2; exit %d\n" % (i, i, i))
        for i in range(8):
            self.assertEqual(read_all(P("m%d" % i, "stdout")), b"m%d\n" % i)
            self.assertEqual(read_all(P("m%d" % i, "stderr")), b"e%d\n" % i)
            self.assertEqual(wait_exited("m%d" % i)["exit_code"], i)
        D.sh(SB, "rm -f /tmp/pa /tmp/pb")

    def test_rmdir_kills(self):
        start("k", "sleep 1000\n")
        harness.wait_for(lambda: pstatus("k")["state"] == "running", 10, "running")
        gpid = pstatus("k")["pid"]
        self.assertTrue(guest_alive(gpid), "the process is not in the guest")
        self.assertIn("sleep 1000", D.sh(SB, "ps"))
        os.rmdir(P("k"))
        self.assertNotIn("k", os.listdir(D.sb(SB, "procs")))
        self.assertErrno(errno.ENOENT, os.stat, P("k", "status"))
        harness.wait_for(lambda: not guest_alive(gpid), 10, "guest pid %d gone after rmdir" % gpid)
        self.assertNotIn("sleep 1000", D.sh(SB, "ps"))
        # its children too (the process group)
        start("k2", "sleep 1001 & sleep 1002; wait\n")
        harness.wait_for(lambda: "sleep 1002" in D.sh(SB, "ps"), 10, "children running")
        os.rmdir(P("k2"))
        harness.wait_for(lambda: "sleep 100" not in D.sh(SB, "ps"), 10, "children killed")
        # the name is free again; an unstarted slot goes too
        os.mkdir(P("k"))
        os.rmdir(P("k"))

    def test_output_kept_over_hibernation(self):
        # an ended process's unread output is the guest's: after a hibernate
        # and a wake (a new VMM, a new agent connection) it is still there
        start("h", "echo before-sleep; echo err >&2; exit 4\n")
        self.assertEqual(wait_exited("h")["exit_code"], 4)
        harness.write_file(D.sb(SB, "ctl"), b"hibernate")
        self.assertEqual(D.status(SB)["state"], "hibernated")
        self.assertEqual(pstatus("h")["state"], "exited")
        harness.write_file(D.sb(SB, "ctl"), b"resume")
        self.assertEqual(D.status(SB)["state"], "ready")
        self.assertEqual(read_all(P("h", "stdout")), b"before-sleep\n")
        self.assertEqual(read_all(P("h", "stderr")), b"err\n")
        self.assertEqual(pstatus("h")["exit_code"], 4)

    def test_refusals(self):
        for bad in ("a b", ".x", "-x", "x" * 65):
            with self.subTest(name=bad):
                self.assertErrno(errno.EINVAL, os.mkdir, P(bad))
        os.mkdir(P("r"))
        self.assertErrno(errno.EEXIST, os.mkdir, P("r"))
        self.assertErrno(errno.EPERM, os.mkdir, P("r", "sub"))
        # before the start: no output yet, no stdin
        fd = os.open(P("r", "stdout"), os.O_RDONLY)
        try:
            self.assertErrno(errno.EAGAIN, os.read, fd, 100)
        finally:
            os.close(fd)
        # bad commands: EINVAL, the slot stays new
        for bad in ('{"argv": 3}\n', '{"argv": []}', '{"sh": ""}', '{"foo": "x"}', '{"argv": ["true"], "env": 1, "x": 2}',
                    "\n"):
            with self.subTest(cmd=bad):
                self.assertErrno(errno.EINVAL, harness.write_file, P("r", "cmd"), bad)
                self.assertEqual(pstatus("r")["state"], "new")
        # a truncated JSON object fails at close
        self.assertErrno(errno.EINVAL, harness.write_file, P("r", "cmd"), '{"argv": ["tru')
        self.assertEqual(pstatus("r")["state"], "new")
        harness.write_file(P("r", "cmd"), "sleep 1000\n")
        # a second start, through another open or the same one: EBUSY
        self.assertErrno(errno.EBUSY, harness.write_file, P("r", "cmd"), "echo again\n")
        fd = os.open(P("r", "cmd"), os.O_WRONLY)
        try:
            self.assertErrno(errno.EBUSY, os.write, fd, b'{"sh": "true"}')
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
        self.assertIn("sleep 1000", pstatus("r")["cmd"])
        # the read-only and write-only files
        self.assertErrno(errno.EACCES, os.open, P("r", "stdout"), os.O_WRONLY)
        self.assertErrno(errno.EACCES, os.open, P("r", "cmd"), os.O_RDONLY)
        self.assertErrno(errno.EACCES, os.open, P("r", "status"), os.O_WRONLY)
        harness.write_file(P("r", "signal"), "KILL")
        self.assertEqual(wait_exited("r")["signal"], 9)


class ShellOnly(harness.TestCase):
    """The same through a shell and coreutils only."""

    def tearDown(self):
        try:
            for n in os.listdir(D.sb(SB, "procs")):
                os.rmdir(P(n))
        finally:
            super().tearDown()

    def sh(self, script):
        p = subprocess.run(["bash", "-c", "set -e\n" + script], capture_output=True, timeout=120,
                           env=dict(os.environ, P=D.sb(SB, "procs")))
        self.assertEqual(p.returncode, 0, "script failed: %r\nstdout %r\nstderr %r" % (script, p.stdout, p.stderr))
        return p.stdout.decode()

    def test_shell(self):
        out = self.sh("""
            mkdir "$P/job"
            ls "$P/job" | tr '\\n' ' '; echo
            echo 'for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo oops >&2; exit 4' > "$P/job/cmd"
            cat "$P/job/stdout"
            cat "$P/job/stderr"
            grep -q '"exit_code":4' "$P/job/status" || { sleep 1; grep -q '"exit_code":4' "$P/job/status"; }
            mkdir "$P/cat"
            printf 'tr a-z A-Z' > "$P/cat/cmd"
            printf 'hello\\nworld\\n' > "$P/cat/stdin"
            cat "$P/cat/stdout"
            mkdir "$P/sl"
            echo 'sleep 1000' > "$P/sl/cmd"
            sleep 0.5
            echo TERM > "$P/sl/signal"
            cat "$P/sl/stdout"
            sleep 0.5
            grep '"signal"' "$P/sl/status"
            if echo BOGUS > "$P/sl/signal" 2>/dev/null; then echo "bogus accepted"; exit 1; fi
            rmdir "$P/job" "$P/cat" "$P/sl"
            ls "$P"
        """)
        self.assertEqual(out, "cmd signal status stderr stdin stdout \n"
                              "tick 1\ntick 2\ntick 3\noops\nHELLO\nWORLD\n  \"signal\":15,\n")


if __name__ == "__main__":
    harness.main()
