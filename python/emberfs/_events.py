"""MOUNT/events: one JSON object per lifecycle event, followed like tail -f."""
from __future__ import annotations

import collections
import errno
import json
import os
import select
import time
from typing import Any, Callable, Iterator

from ._errors import Error, Timeout, from_oserror


class EventStream:
    """An open MOUNT/events: the events from the moment it was opened on.

    Iterating yields one dict per event, blocking while there is none; with
    `timeout` (seconds) the iteration ends once that long passes without an
    event. Event kinds (docs/interface.md, "Watching"):
    {"type": "sandbox", "template", "name", "state", "path", "time", ...},
    {"type": "checkpoint", "template", "sandbox", "name", "state", "time"},
    {"type": "template", "template", "state", "time"}, and
    {"type": "lost", "count": N} when this reader fell more than 1 MiB behind.
    Close it (or use it as a context manager) when done."""

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = None) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise from_oserror(e, "open %s" % self.path) from None
        self._partial = b""
        self._queue: collections.deque[dict[str, Any]] = collections.deque()

    def fileno(self) -> int:
        """The open file (poll/select report it readable when events wait)."""
        if self._fd is None:
            raise Error("event stream closed", errno.EBADF)
        return self._fd

    def _fill(self, timeout: float | None) -> bool | None:
        """Reads what is queued; False if nothing came within timeout, None at EOF (the mount went)."""
        fd = self.fileno()
        if timeout is not None:
            p = select.poll()
            p.register(fd, select.POLLIN)
            if not p.poll(max(0, int(timeout * 1000))):
                return False
        try:
            data = os.read(fd, 1 << 16)
        except OSError as e:
            raise from_oserror(e, "read %s" % self.path) from None
        if not data:
            return None
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if line.strip():
                self._queue.append(json.loads(line))
        return True

    def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event; None if none came within timeout seconds (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            got = self._fill(left)
            if got is None or (not got and deadline is not None and time.monotonic() >= deadline):
                return None
        return self._queue.popleft()

    def wait_for(self, match: Callable[[dict[str, Any]], bool] | None = None, timeout: float | None = None,
                 **fields: Any) -> dict[str, Any]:
        """The first event for which match(event) is true and whose fields
        equal `fields` (e.g. wait_for(name="a", state="ready")); events
        before it are consumed. Timeout if none came within timeout seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = self.next(left)
            if ev is None:
                raise Timeout("no event %s within %.3g s" % (fields or match, timeout), errno.ETIMEDOUT)
            if all(ev.get(k) == v for k, v in fields.items()) and (match is None or match(ev)):
                return ev

    def drain(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Every event that arrives until `timeout` seconds pass without one (0: only those queued now)."""
        out = []
        while (ev := self.next(timeout)) is not None:
            out.append(ev)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            ev = self.next(self.timeout)
            if ev is None:
                return
            yield ev

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass
