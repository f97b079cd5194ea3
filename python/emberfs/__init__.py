"""emberfs: a Python client for an emberfs mount (standard library only).

The mount is the API (docs/interface.md); this module wraps its files in
objects:

    import emberfs
    m = emberfs.Mount("/tmp/emberfs")
    with m.create("default", "a") as sb:          # mkdir, then wait until ready
        print(sb.run("echo hi").stdout)           # "hi\\n"
    # the sandbox is destroyed at the end of the block

See docs/client.md for every class and method.
"""
from ._core import DEFAULT_MOUNT, Checkpoint, Mount, Sandbox, Template
from ._errors import (Busy, CommandFailed, CommandTimeout, CreateFailed, Error, Exists, Failed, Invalid, NoSpace,
                      NotFound, NotRunning, PermissionDenied, StdinClosed, Timeout)
from ._events import EventStream
from ._process import Process, Result

__all__ = [
    "DEFAULT_MOUNT", "Mount", "Template", "Sandbox", "Checkpoint", "Process", "Result", "EventStream",
    "Error", "NotFound", "Exists", "Busy", "Invalid", "NoSpace", "Failed", "CreateFailed", "Timeout",
    "NotRunning", "StdinClosed", "PermissionDenied", "CommandFailed", "CommandTimeout",
]
