"""
Helpers for the live/ tests that run fsops (tests/integration/fsops.c) on the
host and inside a guest: test_livesym.py, test_livecoh.py, test_liveposix.py.

- FSOPS: the static fsops binary (EMBERFS_FSOPS, default build/tests/integration/fsops).
- install(D, name): copies it into the guest (through a procs/ process's
  stdin, not through live/, so a broken live/ write path cannot hide behind
  it) at GUEST_FSOPS, checked by SHA-256.
- GuestOps / HostOps: one long-running fsops process, inside the guest
  (driven through procs/ID/stdin and stdout) or on the host; op() sends one
  line and returns its result line, batch() pipelines many.
- q(): a field escaped for fsops (%XX for space, '%' and non-printables).
"""
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

FSOPS = os.environ.get("EMBERFS_FSOPS") or os.path.join(harness.REPO, "build", "tests", "integration", "fsops")
GUEST_FSOPS = "/run/efsops"


def check_fsops():
    if not os.access(FSOPS, os.X_OK):
        raise AssertionError("fsops binary %s not found (ninja -C build, or set EMBERFS_FSOPS)" % FSOPS)


def q(s):
    """One fsops field: bytes or str, with space, '%' and bytes outside 0x21-0x7e as %XX."""
    b = s.encode() if isinstance(s, str) else bytes(s)
    if not b:
        raise ValueError("empty field")
    return "".join(chr(c) if 0x20 < c < 0x7f and c != 0x25 else "%%%02X" % c for c in b)


def unq(s):
    """The bytes of an escaped fsops output field."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == "%" and i + 3 <= len(s):
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(ord(s[i]))
            i += 1
    return bytes(out)


def _procdir(D, name, pid):
    return D.sb(name, "procs", pid)


def _pstatus(D, name, pid):
    return harness.read_json(os.path.join(_procdir(D, name, pid), "status"))


def put_guest_file(D, name, path, data, mode="644"):
    """Writes data to the guest's path (then chmod mode) through a procs/ process's stdin (`cat >`), not live/."""
    pid = "efput"
    d = _procdir(D, name, pid)
    os.mkdir(d)
    try:
        harness.write_file(os.path.join(d, "cmd"), json.dumps(
            {"argv": ["/bin/sh", "-c", "cat > %s.part && chmod %s %s.part && mv %s.part %s" % (
                path, mode, path, path, path)]}))
        fd = os.open(os.path.join(d, "stdin"), os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:1 << 20]):]
        finally:
            os.close(fd)
        st = harness.wait_for(lambda: (lambda s: s if s["state"] in ("exited", "lost") else None)(
            _pstatus(D, name, pid)), 60, "the copy to %s finished" % path)
        if st.get("exit_code") != 0:
            raise AssertionError("writing %s in %s failed: %s" % (path, name, st))
    finally:
        os.rmdir(d)
    got = D.sh(name, "sha256sum %s" % path).split()[0]
    if got != hashlib.sha256(data).hexdigest():
        raise AssertionError("%s copied into %s has the wrong SHA-256" % (path, name))


def install(D, name, dest=GUEST_FSOPS):
    """Copies fsops into the guest at dest (mode 0755)."""
    check_fsops()
    with open(FSOPS, "rb") as f:
        put_guest_file(D, name, dest, f.read(), mode="755")


def fsops_data(b):
    """fsops's encoding of read contents: "LEN DATA"."""
    if not b:
        return "0 -"
    return "%d %s" % (len(b), q(b) if len(b) <= 256 else "crc32:%08x" % zlib.crc32(b))


class _Ops:
    """Line protocol on top of a writer (send(bytes)) and a reader (recv() -> bytes, b"" at EOF)."""

    def __init__(self, what):
        self.what = what
        self._buf = b""
        self.log = []  # (op, result) of every op, for diagnostics

    def _line(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            b = self._recv()
            if not b:
                raise AssertionError("%s: fsops ended (EOF) while a result was due; last ops: %s" % (
                    self.what, self.log[-5:]))
            self._buf += b
            if time.monotonic() > deadline:
                raise AssertionError("%s: no fsops result within %.0f s" % (self.what, timeout))
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def op(self, line):
        """Sends one op, returns its result line."""
        self._send((line + "\n").encode())
        r = self._line()
        self.log.append((line, r))
        if r.startswith("bad "):
            raise AssertionError("%s: fsops rejected %r: %s" % (self.what, line[:200], r))
        return r

    def batch(self, lines):
        """Sends ops (comments and blank lines are not allowed: one result per line), returns their results."""
        for l in lines:
            if not l.strip() or l.lstrip().startswith("#") or "\n" in l:
                raise ValueError("not one op: %r" % l)
        data = "".join(l + "\n" for l in lines).encode()
        err = []

        def writer():
            try:
                view = memoryview(data)
                while view:
                    view = view[self._send(view[:1 << 16]):]
            except BaseException as e:  # noqa: BLE001
                err.append(e)
        th = threading.Thread(target=writer, daemon=True)
        th.start()
        out = [self._line() for _ in lines]
        th.join(60)
        if err:
            raise err[0]
        self.log.extend(zip(lines, out))
        for l, r in zip(lines, out):
            if r.startswith("bad "):
                raise AssertionError("%s: fsops rejected %r: %s" % (self.what, l[:200], r))
        return out


class HostOps(_Ops):
    """fsops on the host, with root as its root (it chdirs there first, as root)."""

    def __init__(self, root):
        check_fsops()
        super().__init__("host fsops in %s" % root)
        self.p = subprocess.Popen([FSOPS, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        harness._popen_pids.add(self.p.pid)

    def _send(self, b):
        return self.p.stdin.write(b)

    def _recv(self):
        return os.read(self.p.stdout.fileno(), 1 << 20)

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.p.stdout.close()
        harness._popen_pids.discard(self.p.pid)
        return self.p.returncode


class GuestOps(_Ops):
    """fsops inside sandbox name's guest (installed by install()), run as procs/ID."""

    _n = 0

    def __init__(self, D, name, root, pid=None):
        GuestOps._n += 1
        self.D, self.name = D, name
        self.pid = pid or "fsops%d" % GuestOps._n
        super().__init__("guest fsops in %s:%s" % (name, root))
        self.dir = _procdir(D, name, self.pid)
        os.mkdir(self.dir)
        harness.write_file(os.path.join(self.dir, "cmd"), json.dumps({"argv": [GUEST_FSOPS, root]}))
        self.win = os.open(os.path.join(self.dir, "stdin"), os.O_WRONLY)
        self.rout = os.open(os.path.join(self.dir, "stdout"), os.O_RDONLY)

    def _send(self, b):
        return os.write(self.win, b)

    def _recv(self):
        return os.read(self.rout, 1 << 20)

    def close(self):
        """Ends the process (EOF on its stdin); returns its exit code."""
        if self.win is None:
            return None
        os.close(self.win)
        self.win = None
        try:
            while os.read(self.rout, 1 << 20):
                pass
        finally:
            os.close(self.rout)
        st = harness.wait_for(lambda: (lambda s: s if s["state"] in ("exited", "lost") else None)(
            _pstatus(self.D, self.name, self.pid)), 30, "guest fsops %s exited" % self.pid)
        os.rmdir(self.dir)
        return st.get("exit_code")


def run_host(root, lines):
    """A batch in a fresh host fsops process."""
    h = HostOps(root)
    try:
        return h.batch(lines)
    finally:
        h.close()


def run_guest(D, name, root, lines):
    """A batch in a fresh guest fsops process."""
    g = GuestOps(D, name, root)
    try:
        return g.batch(lines)
    finally:
        g.close()
