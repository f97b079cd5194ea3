"""Commands in a sandbox: run() results (the exec file) and streaming
processes (the procs/ID/ slots)."""
from __future__ import annotations

import errno
import io
import os
import signal as _signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from . import _io
from ._errors import CommandFailed, Error, Failed, Invalid, Timeout, from_oserror

if TYPE_CHECKING:
    from ._core import Sandbox

Command = str | Sequence[str]


def command_request(cmd: Command, env: Mapping[str, str] | None = None, cwd: str | None = None,
                    user: str | int | None = None) -> dict[str, Any]:
    """The JSON request of exec and procs/ID/cmd: {"sh": LINE} for a string
    (run as /bin/sh -c LINE), {"argv": [...]} for a sequence, with env, cwd
    and user when given."""
    if isinstance(cmd, str):
        req: dict[str, Any] = {"sh": cmd}
    elif isinstance(cmd, (bytes, bytearray)):
        raise Invalid("a command is a str (shell line) or a sequence of str (argv), not bytes", errno.EINVAL)
    else:
        argv = list(cmd)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise Invalid("argv must be a non-empty sequence of str: %r" % (cmd,), errno.EINVAL)
        req = {"argv": argv}
    if env:
        req["env"] = {str(k): str(v) for k, v in env.items()}
    if cwd is not None:
        req["cwd"] = str(cwd)
    if user is not None:
        req["user"] = str(user)
    return req


@dataclass(frozen=True)
class Result:
    """What run() returns: the command's output and how it ended.

    exit_code is -1 when the command was killed by `signal` (signal is 0
    otherwise). stdout_bytes and stderr_bytes are the raw output (each
    capped at 16 MiB by the daemon: `truncated`); stdout and stderr are the
    same decoded as UTF-8 (undecodable bytes replaced)."""

    cmd: Command
    exit_code: int
    signal: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    duration_ms: float
    truncated: bool
    timed_out: bool = False

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0 and self.signal == 0

    @property
    def returncode(self) -> int:
        """subprocess's convention: the exit code, or -SIGNAL when killed by one."""
        return -self.signal if self.signal else self.exit_code

    def check(self) -> "Result":
        """self if the command exited 0, else CommandFailed carrying self."""
        if not self.ok:
            how = "was killed by signal %d" % self.signal if self.signal else "exited %d" % self.exit_code
            tail = self.stderr.strip()[-500:]
            raise CommandFailed("command %r %s%s" % (self.cmd, how, ": " + tail if tail else ""), self)
        return self


def signal_text(sig: int | str | _signal.Signals) -> str:
    """What the signal file takes: a number for an int or a Signals member, a name as given."""
    if isinstance(sig, _signal.Signals):
        return str(int(sig))
    if isinstance(sig, int):
        return str(sig)
    return str(sig)


class Process:
    """A process slot, procs/ID/ of a sandbox: made by Sandbox.spawn() or
    found with Sandbox.process(ID) / Sandbox.processes().

    stdout and stderr are binary readers that stream (iterate them for
    lines as they come; read() goes to EOF, which comes once the process
    and every child holding the stream exited). A stream should have one
    reader: two readers get alternate chunks. stdin is written with
    write() and ended with close_stdin(). As a context manager the slot
    is removed at exit (rmdir: the process is killed if it still runs)."""

    def __init__(self, sandbox: "Sandbox", id: str) -> None:
        self.sandbox = sandbox
        self.id = _io.check_name(id, "process id")
        self.path = sandbox.path / "procs" / id
        self._stdout: io.BufferedReader | None = None
        self._stderr: io.BufferedReader | None = None
        self._stdin: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "Process(%s/%s/%s)" % (self.sandbox.template, self.sandbox.name, self.id)

    # ---- errors ----

    def _reason(self) -> str | None:
        try:
            st = _io.read_json(self.path / "status")
        except (OSError, ValueError):
            return None
        return st.get("error")

    def _fail(self, e: OSError, what: str) -> Error:
        return from_oserror(e, "%r: %s" % (self, what), self._reason())

    # ---- state ----

    def status(self) -> dict[str, Any]:
        """procs/ID/status: name, state (new, starting, running, exited,
        lost), cmd, pid, start_unix_ms, exit_code, signal, left_running,
        duration_ms, stdin_closed, error."""
        try:
            return _io.read_json(self.path / "status")
        except OSError as e:
            raise from_oserror(e, "%r: status" % self) from None

    @property
    def state(self) -> str:
        return self.status()["state"]

    @property
    def returncode(self) -> int | None:
        """None until the process exited; then its exit code, or -SIGNAL if a signal killed it."""
        st = self.status()
        if st["state"] != "exited":
            return None
        return -st["signal"] if st.get("signal") else st["exit_code"]

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Waits until the process exited; returns its final status.

        Raises Timeout after `timeout` seconds (the process runs on), and
        Failed when it is lost (its start failed, or the sandbox was
        stopped or destroyed: .reason says which). The status is polled
        (10 ms at first, then up to every 200 ms)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            st = self.status()
            if st["state"] == "exited":
                return st
            if st["state"] == "lost":
                raise Failed("%r is lost" % self, errno.EIO, str(self.path), st.get("error"))
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("%r still %s after %.3g s" % (self, st["state"], timeout), errno.ETIMEDOUT)
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    # ---- output ----

    def _stream(self, which: str) -> io.BufferedReader:
        with self._lock:
            cur = self._stdout if which == "stdout" else self._stderr
            if cur is None:
                if self.status()["state"] == "new":  # the file would answer EAGAIN
                    raise Error("%r: no command started yet: nothing to read on %s" % (self, which),
                                errno.EAGAIN, str(self.path / which))
                try:
                    raw = io.FileIO(str(self.path / which), "rb")
                except OSError as e:
                    raise self._fail(e, "open " + which) from None
                cur = io.BufferedReader(raw, _io.CHUNK)
                if which == "stdout":
                    self._stdout = cur
                else:
                    self._stderr = cur
            return cur

    @property
    def stdout(self) -> io.BufferedReader:
        """The process's stdout, streaming (opened once, kept until close())."""
        return self._stream("stdout")

    @property
    def stderr(self) -> io.BufferedReader:
        """The process's stderr, streaming (opened once, kept until close())."""
        return self._stream("stderr")

    def lines(self, stream: str = "stdout", encoding: str = "utf-8") -> Iterator[str]:
        """The lines of stdout (or stderr) as they come, without their newline, until EOF."""
        if stream not in ("stdout", "stderr"):
            raise Invalid("stream must be 'stdout' or 'stderr', not %r" % stream, errno.EINVAL)
        reader = self._stream(stream)
        while True:
            try:
                line = reader.readline()
            except OSError as e:
                raise self._fail(e, "read " + stream) from None
            if not line:
                return
            yield line.rstrip(b"\n").decode(encoding, "replace")

    def read(self, stream: str = "stdout") -> bytes:
        """Everything left on stdout (or stderr) until EOF (blocks while the process runs)."""
        if stream not in ("stdout", "stderr"):
            raise Invalid("stream must be 'stdout' or 'stderr', not %r" % stream, errno.EINVAL)
        try:
            return self._stream(stream).read()
        except OSError as e:
            raise self._fail(e, "read " + stream) from None

    # ---- input ----

    def write(self, data: bytes | str) -> None:
        """Writes to the process's stdin; returns once the bytes are in its
        pipe (a process that does not read blocks the writer). The stdin file
        stays open until close_stdin(), which is the EOF."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        with self._lock:
            if self._stdin is None:
                try:
                    self._stdin = os.open(self.path / "stdin", os.O_WRONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise self._fail(e, "open stdin") from None
            fd = self._stdin
        try:
            _io.write_all(fd, data)
        except OSError as e:
            raise self._fail(e, "write stdin") from None

    def close_stdin(self) -> None:
        """Ends the process's stdin (EOF), whether or not anything was written."""
        with self._lock:
            fd, self._stdin = self._stdin, None
        try:
            if fd is None:
                fd = os.open(self.path / "stdin", os.O_WRONLY | os.O_CLOEXEC)
            os.close(fd)
        except OSError as e:
            raise self._fail(e, "close stdin") from None

    def communicate(self, input: bytes | str | None = None,
                    timeout: float | None = None) -> tuple[bytes, bytes]:
        """Like subprocess's: writes input (if any) and ends stdin, reads
        stdout and stderr to EOF at once (two threads), waits for the exit;
        returns (stdout, stderr). Timeout if the process has not ended in
        `timeout` seconds (it runs on; the readers keep reading in the
        background until its streams end)."""
        out: dict[str, bytes] = {}
        errs: list[BaseException] = []

        def reader(which: str) -> None:
            try:
                out[which] = self.read(which)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                errs.append(e)

        threads = [threading.Thread(target=reader, args=(w,), daemon=True) for w in ("stdout", "stderr")]
        for t in threads:
            t.start()
        try:
            if input:
                self.write(input)
            self.close_stdin()
        except Error as e:
            if e.errno != errno.EPIPE:  # it exited without reading everything: as subprocess, not an error
                raise
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise Timeout("%r: output not ended after %.3g s" % (self, timeout), errno.ETIMEDOUT)
        if errs:
            raise errs[0]
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return out.get("stdout", b""), out.get("stderr", b"")

    # ---- signals and removal ----

    def signal(self, sig: int | str | _signal.Signals) -> None:
        """Sends a signal: a number, a signal.Signals, or a name (TERM,
        SIGTERM, term; HUP INT QUIT KILL USR1 USR2 PIPE ALRM TERM CONT STOP
        TSTP WINCH). NotRunning if the process is not running."""
        try:
            _io.write_bytes(self.path / "signal", signal_text(sig))
        except OSError as e:
            raise self._fail(e, "signal %s" % signal_text(sig)) from None

    def terminate(self) -> None:
        """signal(SIGTERM)."""
        self.signal(_signal.SIGTERM)

    def kill(self) -> None:
        """signal(SIGKILL)."""
        self.signal(_signal.SIGKILL)

    def close(self) -> None:
        """Closes the streams this object opened (stdin too: that is its EOF)."""
        with self._lock:
            files = [f for f in (self._stdout, self._stderr) if f is not None]
            fd, self._stdin = self._stdin, None
            self._stdout = self._stderr = None
        for f in files:
            f.close()
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def remove(self) -> None:
        """rmdir procs/ID: kills the process group if it runs and frees the slot."""
        self.close()
        try:
            os.rmdir(self.path)
        except OSError as e:
            raise from_oserror(e, "%r: remove" % self) from None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.remove()
        except Error as e:
            if e.errno != errno.ENOENT:
                raise
