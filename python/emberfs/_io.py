"""Plain file I/O on the mount, as docs/interface.md asks for it.

Every generated file is served with direct I/O and reports size 0, so reads
go to EOF; settings and ctl files take one value per open (written whole,
applied at the write or at close), so writes are one open, one write, one
close, and the errors of close are reported.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
from typing import Any

from ._errors import Invalid

CHUNK = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole file, read to EOF."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_fd(fd)
    finally:
        os.close(fd)


def read_fd(fd: int) -> bytes:
    """What fd gives until EOF."""
    parts = []
    while True:
        b = os.read(fd, CHUNK)
        if not b:
            return b"".join(parts)
        parts.append(b)


def read_text(path: str | os.PathLike[str]) -> str:
    return read_bytes(path).decode("utf-8", "replace")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def write_all(fd: int, data: bytes) -> None:
    """Writes every byte (a short write is continued)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_bytes(path: str | os.PathLike[str], data: bytes | str, flags: int = os.O_WRONLY) -> None:
    """open, write, close, like `printf data > path`; the errors of write and close raise."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        write_all(fd, data)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    os.close(fd)


def empty_file(path: str | os.PathLike[str]) -> None:
    """Opened with O_TRUNC and closed without a write (`: > file`): empties a setting."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    os.close(fd)


def check_name(name: str, what: str = "name") -> str:
    """The name if it follows the mount's naming rule, else Invalid (nothing touched).

    Every name ends up in a path: checking it here keeps a name such as
    "../x" from reaching another directory. The daemon checks it again (and
    refuses its own entry names, e.g. "status", with EINVAL)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise Invalid("bad %s %r (allowed: [A-Za-z0-9][A-Za-z0-9_-]{0,63})" % (what, name), errno.EINVAL)
    return name


def new_name(prefix: str) -> str:
    """A fresh name such as "sb-3f9a0c1e" (collisions are answered EEXIST by the mount)."""
    return "%s-%s" % (prefix, secrets.token_hex(4))


def meta_name(s: str) -> str:
    """A metadata key or value spelled as a file name of sandboxes-by/ (docs/interface.md, "metadata")."""
    if s == "":
        return "%00"
    if s == ".":
        return "%2E"
    if s == "..":
        return "%2E%2E"
    return "".join("%%%02X" % ord(c) if c in "%/" or ord(c) < 0x20 or ord(c) == 0x7F else c for c in s)
