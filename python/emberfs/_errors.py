"""The exceptions of the emberfs client.

Every error is an Error, itself an OSError: the errno the mount answered is
kept in .errno, the file it concerned in .filename, and the daemon's own
words (a status file's "ctl_error", "settings_error", "error", ...) in
.reason. Each class also derives from the built-in OSError subclass of its
errno where there is one, so `except FileNotFoundError` keeps working.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Any


class Error(OSError):
    """Base class of every emberfs error.

    Attributes: errno (None when no system call failed), filename (the file
    of the mount, if any), reason (the daemon's explanation, if it gave one).
    """

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None,
                 reason: str | None = None) -> None:
        if errno is None:
            super().__init__(message)
        elif filename is None:
            super().__init__(errno, message)
        else:
            super().__init__(errno, message, filename)
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class NotFound(Error, FileNotFoundError):
    """ENOENT: no such template, sandbox, process, checkpoint or guest file."""


class Exists(Error, FileExistsError):
    """EEXIST: the name is taken (sandbox names are unique across templates)."""


class Busy(Error):
    """EBUSY: refused in the object's current state (resume a running
    sandbox, bake while baking, remove a template that has sandboxes...)."""


class Invalid(Error, ValueError):
    """EINVAL: a bad name, value, verb or command."""


class NoSpace(Error):
    """ENOSPC: a limit was reached (sandboxes, process slots, checkpoints, store room)."""


class Failed(Error):
    """EIO: the sandbox failed, was stopped or destroyed, or its VMM died."""


class CreateFailed(Failed):
    """wait(): the create (or fork) failed, or the sandbox failed or was destroyed
    since; .reason is the sandbox's status "error" (or its state)."""


class Timeout(Error, TimeoutError):
    """A wait given a timeout ran out (the operation itself may go on)."""


class NotRunning(Error, ProcessLookupError):
    """ESRCH: a signal to a process that is not running."""


class StdinClosed(Error, BrokenPipeError):
    """EPIPE: a write to a process's stdin after it was closed or the process ended."""


class PermissionDenied(Error, PermissionError):
    """EACCES or EPERM."""


class CommandFailed(Error):
    """run(..., check=True) of a command that exited non-zero or was killed.

    .result is the Result (stdout, stderr, exit_code, signal...)."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class CommandTimeout(Error, TimeoutError):
    """run(..., timeout=T): the command was killed at its deadline. .result holds
    what it wrote before."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message, _errno.ETIMEDOUT)
        self.result = result


_BY_ERRNO: dict[int, type[Error]] = {
    _errno.ENOENT: NotFound,
    _errno.EEXIST: Exists,
    _errno.EBUSY: Busy,
    _errno.EINVAL: Invalid,
    _errno.ENOSPC: NoSpace,
    _errno.EIO: Failed,
    _errno.ETIMEDOUT: Timeout,
    _errno.ESRCH: NotRunning,
    _errno.EPIPE: StdinClosed,
    _errno.EACCES: PermissionDenied,
    _errno.EPERM: PermissionDenied,
}


def error_class(err: int | None) -> type[Error]:
    """The Error subclass for an errno (Error itself for the others)."""
    return _BY_ERRNO.get(err, Error) if err is not None else Error


def from_oserror(e: OSError, what: str, reason: str | None = None, cls: type[Error] | None = None) -> Error:
    """An Error for OSError e raised while doing `what`, with the daemon's reason."""
    text = "%s: %s" % (what, e.strerror or _errno.errorcode.get(e.errno or 0, str(e)))
    if reason:
        text += " (%s)" % reason
    return (cls or error_class(e.errno))(text, e.errno, e.filename, reason)


def from_errno_name(name: str, what: str, reason: str | None = None) -> Error:
    """An Error for an errno given by name ("ENOENT"), as a JSON exec reports one."""
    num = getattr(_errno, name, _errno.EIO) if isinstance(name, str) else _errno.EIO
    text = "%s: %s" % (what, os.strerror(num))
    if reason:
        text += " (%s)" % reason
    return error_class(num)(text, num, None, reason)
