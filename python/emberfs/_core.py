"""Mount, Template, Sandbox and Checkpoint: the mount's directories as objects.

Each method is a few plain file operations on the mount, as
docs/interface.md describes them; nothing is cached (a status() reads the
status file every time).
"""
from __future__ import annotations

import base64
import errno
import json
import os
import posixpath
import select
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from . import _io
from ._errors import (CommandTimeout, CreateFailed, Error, Failed, NotFound, Timeout, from_errno_name,
                      from_oserror)
from ._events import EventStream
from ._process import Command, Process, Result, command_request

DEFAULT_MOUNT = "/tmp/emberfs"


def _reason_of(status_path: Path, *keys: str) -> str | None:
    """The first non-empty of `keys` in a status file, or None (also when it cannot be read)."""
    try:
        st = _io.read_json(status_path)
    except (OSError, ValueError):
        return None
    for k in keys:
        if st.get(k):
            return str(st[k])
    return None


# ---------------------------------------------------------------------------
# the mount

class Mount:
    """An emberfs mount point.

    Mount() uses $EMBERFS_MOUNT, else /tmp/emberfs. NotFound if the path is
    not an emberfs mount (it has no templates/ directory)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path if path is not None else os.environ.get("EMBERFS_MOUNT") or DEFAULT_MOUNT)
        if not (self.path / "templates").is_dir():
            raise NotFound("%s is not an emberfs mount (no templates/ directory)" % self.path, errno.ENOENT,
                           str(self.path))

    def __repr__(self) -> str:
        return "Mount(%r)" % str(self.path)

    # ---- files of the root ----

    def version(self) -> str:
        """The daemon's version line, e.g. "emberfs 0.9.0"."""
        return _io.read_text(self.path / "version").strip()

    def metrics(self) -> str:
        """MOUNT/metrics: OpenMetrics text (ends with "# EOF")."""
        return _io.read_text(self.path / "metrics")

    def events(self, timeout: float | None = None) -> EventStream:
        """Opens MOUNT/events now: the stream gets every event from this call on.

        Iterate it for dicts (blocking while there is none; with timeout, the
        iteration ends after that many seconds without an event), or use its
        next(timeout) and wait_for(...). Open it before the action you want
        to see. Close it when done (it is a context manager)."""
        return EventStream(self.path / "events", timeout)

    # ---- templates ----

    def templates(self) -> list[str]:
        """The names of the templates."""
        return sorted(os.listdir(self.path / "templates"))

    def template(self, name: str) -> "Template":
        """Template NAME; NotFound if there is none."""
        t = Template(self, name)
        if not t.path.is_dir():
            raise NotFound("no template %r" % name, errno.ENOENT, str(t.path))
        return t

    def create_template(self, name: str, **config: Any) -> "Template":
        """mkdir templates/NAME (its config a copy of the default image's),
        then the given config keys set over it (a key given None is removed).
        If the config is refused, the template is removed again and Invalid
        says why. The template is not baked: call bake()."""
        _io.check_name(name, "template name")
        path = self.path / "templates" / name
        try:
            os.mkdir(path)
        except OSError as e:
            raise from_oserror(e, "create template %r" % name) from None
        t = Template(self, name)
        if config:
            try:
                t.update_config(**config)
            except BaseException:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
                raise
        return t

    # ---- sandboxes ----

    def create(self, template: str, name: str | None = None, *, wait: bool = True, timeout: float | None = None,
               metadata: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None,
               sandbox_timeout: int | str | Mapping[str, Any] | None = None, egress: str | None = None,
               keep_failed: bool = False) -> "Sandbox":
        """Creates sandbox NAME (a fresh "sb-XXXXXXXX" if None) of `template`.

        Without settings it is `mkdir templates/T/sandboxes/NAME`; with
        metadata, env, sandbox_timeout (seconds, "600 hibernate", or
        {"timeout_s": N, "on_timeout": ...}) or egress (policy lines) it is
        one write to templates/T/create, so the sandbox has them from its
        reservation on. Then, with wait (the default), it reads NAME/wait
        until the sandbox is ready (at most `timeout` seconds).

        Raises Exists (name taken, in any template), NotFound (no such
        template), Invalid (bad name or setting; .reason is the daemon's),
        NoSpace (--max-sandboxes), CreateFailed (the create failed; .reason
        is the sandbox's status "error") or Timeout. A sandbox that failed
        or timed out is destroyed before raising unless keep_failed."""
        return self.template(template).create(name, wait=wait, timeout=timeout, metadata=metadata, env=env,
                                              sandbox_timeout=sandbox_timeout, egress=egress,
                                              keep_failed=keep_failed)

    def sandbox(self, name: str) -> "Sandbox":
        """The existing sandbox NAME, whatever its template; NotFound if there is none."""
        _io.check_name(name, "sandbox name")
        for t in self.templates():
            if os.path.isdir(self.path / "templates" / t / "sandboxes" / name):
                return Sandbox(self, t, name)
        raise NotFound("no sandbox %r" % name, errno.ENOENT, str(self.path / "live" / name))

    def sandboxes(self, template: str | None = None,
                  metadata: Mapping[str, str] | None = None) -> list["Sandbox"]:
        """The sandboxes (of one template if given) whose metadata has every
        KEY = VALUE of `metadata` (looked up in MOUNT/sandboxes-by/), by name."""
        if metadata:
            found: dict[str, str] | None = None
            for k, v in metadata.items():
                here = self._by_meta(k, v)
                found = here if found is None else {n: t for n, t in found.items() if here.get(n) == t}
            pairs = sorted((found or {}).items())
        else:
            pairs = []
            for t in [template] if template else self.templates():
                try:
                    names = os.listdir(self.path / "templates" / t / "sandboxes")
                except FileNotFoundError:
                    if template:
                        raise NotFound("no template %r" % t, errno.ENOENT) from None
                    continue  # removed meanwhile
                pairs += [(n, t) for n in names]
            pairs.sort()
        return [Sandbox(self, t, n) for n, t in pairs if template is None or t == template]

    def _by_meta(self, key: str, value: str) -> dict[str, str]:
        """{sandbox name: template} of sandboxes-by/KEY/VALUE/."""
        d = self.path / "sandboxes-by" / _io.meta_name(key) / _io.meta_name(value)
        try:
            names = os.listdir(d)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENAMETOOLONG):
                return {}
            raise from_oserror(e, "list %s" % d) from None
        out = {}
        for n in names:
            try:
                target = os.readlink(d / n)  # ../../../templates/T/sandboxes/NAME
            except OSError:
                continue  # destroyed meanwhile
            parts = target.split("/")
            if len(parts) >= 3 and parts[-2] == "sandboxes":
                out[n] = parts[-3]
        return out


# ---------------------------------------------------------------------------
# templates

class Template:
    """templates/NAME/: a template (config, bake, warm pool) and its sandboxes."""

    def __init__(self, mount: Mount, name: str) -> None:
        self.mount = mount
        self.name = _io.check_name(name, "template name")
        self.path = mount.path / "templates" / name

    def __repr__(self) -> str:
        return "Template(%r)" % self.name

    def _fail(self, e: OSError, what: str, *keys: str) -> Error:
        return from_oserror(e, "template %r: %s" % (self.name, what),
                            _reason_of(self.path / "status", *keys) if keys else None)

    def status(self) -> dict[str, Any]:
        """templates/T/status: name, state (new, baking, ready, failed, stale), identity, bake, pool, error, ..."""
        try:
            return _io.read_json(self.path / "status")
        except OSError as e:
            raise self._fail(e, "status") from None

    @property
    def state(self) -> str:
        return self.status()["state"]

    def identity(self) -> str:
        """The template's identity (hex digest)."""
        return _io.read_text(self.path / "identity").strip()

    def config(self) -> dict[str, Any]:
        """The config (JSON object)."""
        try:
            return _io.read_json(self.path / "config")
        except OSError as e:
            raise self._fail(e, "config") from None

    def set_config(self, config: Mapping[str, Any]) -> None:
        """Replaces the config (one JSON write). Invalid with the reason
        (status "error") if refused, Busy while a bake runs; unchanged then."""
        try:
            _io.write_bytes(self.path / "config", json.dumps(dict(config)))
        except OSError as e:
            raise self._fail(e, "set config", "error") from None

    def update_config(self, **changes: Any) -> dict[str, Any]:
        """Sets the given keys in the config (None removes a key); returns the new config."""
        cfg = self.config()
        for k, v in changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        self.set_config(cfg)
        return cfg

    def bake(self, wait: bool = True, timeout: float | None = None, rebake: bool = False) -> dict[str, Any]:
        """Writes `bake` (or `rebake`) to ctl. bake does nothing when a
        snapshot of the current identity exists. With wait, waits until the
        bake ended (status polled every 100 ms) and returns the status;
        Failed with the reason if it failed, Timeout after `timeout` s."""
        verb = "rebake" if rebake else "bake"
        try:
            _io.write_bytes(self.path / "ctl", verb + "\n")
        except OSError as e:
            raise self._fail(e, verb, "error") from None
        st = self.status()
        if not wait or st["state"] != "baking":
            return st
        deadline = None if timeout is None else time.monotonic() + timeout
        while st["state"] == "baking":
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout("template %r: still baking after %.3g s" % (self.name, timeout), errno.ETIMEDOUT)
            time.sleep(0.1)
            st = self.status()
        if st["state"] == "failed" or st.get("error"):
            raise Failed("template %r: the bake failed: %s" % (self.name, st.get("error")), errno.EIO,
                         str(self.path), st.get("error"))
        return st

    def pool(self) -> int | str:
        """The warm pool setting: "auto" or the pinned depth."""
        text = _io.read_text(self.path / "pool").strip()
        return int(text) if text.isdigit() else text

    def set_pool(self, depth: int | str) -> None:
        """Pins the warm pool depth (0..256) or gives it back to the controller ("auto")."""
        try:
            _io.write_bytes(self.path / "pool", "%s\n" % depth)
        except OSError as e:
            raise self._fail(e, "pool %s" % depth) from None

    def stats(self) -> dict[str, Any]:
        """The warm pool's statistics (templates/T/stats)."""
        return _io.read_json(self.path / "stats")

    def dockerfile(self) -> str:
        """The stored Dockerfile ("" when none)."""
        return _io.read_text(self.path / "Dockerfile")

    def set_dockerfile(self, text: str) -> None:
        """Stores a Dockerfile (applied at close: Invalid with the reason if it
        does not parse); "" removes it. The next bake builds it."""
        try:
            if text:
                _io.write_bytes(self.path / "Dockerfile", text, os.O_WRONLY | os.O_TRUNC)
            else:
                os.unlink(self.path / "Dockerfile")
        except OSError as e:
            raise self._fail(e, "Dockerfile", "error") from None

    def build_log(self) -> str:
        """The last bake's log. While a bake runs this blocks until it ended
        (the file follows the bake like tail -f)."""
        return _io.read_text(self.path / "build.log")

    # ---- its sandboxes ----

    def sandboxes(self) -> list["Sandbox"]:
        """This template's sandboxes, by name."""
        return self.mount.sandboxes(template=self.name)

    def sandbox(self, name: str) -> "Sandbox":
        """Sandbox NAME of this template; NotFound if there is none."""
        s = Sandbox(self.mount, self.name, name)
        if not s.exists():
            raise NotFound("no sandbox %r in template %r" % (name, self.name), errno.ENOENT, str(s.path))
        return s

    def create(self, name: str | None = None, *, wait: bool = True, timeout: float | None = None,
               metadata: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None,
               sandbox_timeout: int | str | Mapping[str, Any] | None = None, egress: str | None = None,
               keep_failed: bool = False) -> "Sandbox":
        """A new sandbox of this template: see Mount.create()."""
        name = _io.check_name(name if name is not None else _io.new_name("sb"), "sandbox name")
        settings: dict[str, Any] = {}
        if metadata is not None:
            settings["metadata"] = dict(metadata)
        if env is not None:
            settings["env"] = dict(env)
        if sandbox_timeout is not None:
            settings["timeout"] = dict(sandbox_timeout) if isinstance(sandbox_timeout, Mapping) else sandbox_timeout
        if egress is not None:
            settings["egress"] = egress
        sb = Sandbox(self.mount, self.name, name)
        try:
            if settings:
                _io.write_bytes(self.path / "create", json.dumps({"name": name, **settings}))
            else:
                os.mkdir(sb.path)
        except OSError as e:
            if e.errno == errno.ENOENT and not self.path.is_dir():
                raise NotFound("create %r: no template %r" % (name, self.name), errno.ENOENT,
                               str(self.path)) from None
            raise self._fail(e, "create sandbox %r" % name, "create_error") from None
        if wait:
            sb._wait_new(timeout, keep_failed)
        return sb

    def remove(self) -> None:
        """rmdir templates/T: Busy while it has sandboxes or a bake runs."""
        try:
            os.rmdir(self.path)
        except OSError as e:
            raise self._fail(e, "remove") from None


# ---------------------------------------------------------------------------
# sandboxes

class Sandbox:
    """templates/T/sandboxes/NAME/: one sandbox.

    As a context manager it is destroyed at the end of the block. `root` is
    the guest's own file system (MOUNT/live/NAME) as a pathlib.Path."""

    def __init__(self, mount: Mount, template: str, name: str) -> None:
        self.mount = mount
        self.template = _io.check_name(template, "template name")
        self.name = _io.check_name(name, "sandbox name")
        self.path = mount.path / "templates" / template / "sandboxes" / name
        self.root = mount.path / "live" / name

    def __repr__(self) -> str:
        return "Sandbox(%s/%s)" % (self.template, self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sandbox) and (other.mount.path, other.template, other.name) == (
            self.mount.path, self.template, self.name)

    def __hash__(self) -> int:
        return hash((self.mount.path, self.template, self.name))

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy(missing_ok=True)

    # ---- errors ----

    def _reason(self, *keys: str) -> str | None:
        return _reason_of(self.path / "status", *keys)

    def _fail(self, e: OSError, what: str, *keys: str) -> Error:
        """An Error for e; an EIO names the state and the status "error" when keys say nothing."""
        reason = self._reason(*keys) if keys else None
        if e.errno == errno.EIO and not reason:
            try:
                st = _io.read_json(self.path / "status")
                reason = "the sandbox is %s%s" % (st["state"], ": " + st["error"] if st.get("error") else "")
            except (OSError, ValueError):
                reason = "the sandbox is gone"
        return from_oserror(e, "%r: %s" % (self, what), reason)

    # ---- state ----

    def exists(self) -> bool:
        return self.path.is_dir()

    def status(self) -> dict[str, Any]:
        """NAME/status: name, template, state (creating, ready, paused,
        hibernated, stopped, failed, destroying), path, timings, error,
        ctl_error, settings_error, vmm_pid, net, ..."""
        try:
            return _io.read_json(self.path / "status")
        except OSError as e:
            raise self._fail(e, "status") from None

    @property
    def state(self) -> str:
        return self.status()["state"]

    def timings(self) -> dict[str, float]:
        """NAME/timings: {phase: ms}, in order, and "total"."""
        try:
            text = _io.read_text(self.path / "timings")
        except OSError as e:
            raise self._fail(e, "timings") from None
        out = {}
        for line in text.splitlines():
            if line.strip():
                k, v = line.split()
                out[k] = float(v)
        return out

    def wait(self, timeout: float | None = None) -> None:
        """Returns once the create was decided and succeeded (NAME/wait said
        "ready"; a paused or hibernated sandbox is ready too). CreateFailed
        with the status "error" if it failed; Timeout after `timeout` s (the
        create goes on). Without timeout it is one blocking read of wait;
        with one, poll() on the status file until the state left creating."""
        if timeout is not None:
            self._poll_decided(timeout)
        try:
            fd = os.open(self.path / "wait", os.O_RDONLY | os.O_CLOEXEC)
            try:
                got = os.read(fd, 64)
            finally:
                os.close(fd)
        except OSError as e:
            err = self._fail(e, "wait", "error")
            if e.errno == errno.EIO:
                raise CreateFailed("%r is not ready: %s" % (self, err.reason or "see its status"),
                                   errno.EIO, str(self.path), err.reason) from None
            raise err from None
        if got.strip() != b"ready":
            raise Error("%r: wait answered %r" % (self, got))

    def _poll_decided(self, timeout: float) -> None:
        """Polls the status file (readable once the state changed) until the state is not creating."""
        deadline = time.monotonic() + timeout
        try:
            fd = os.open(self.path / "status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise self._fail(e, "wait") from None
        try:
            p = select.poll()
            p.register(fd, select.POLLIN | select.POLLPRI)
            while True:
                os.lseek(fd, 0, os.SEEK_SET)
                st = json.loads(_io.read_fd(fd))
                if st["state"] != "creating":
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout("%r: not ready after %.3g s" % (self, timeout), errno.ETIMEDOUT)
                p.poll(max(1, int(left * 1000)))
        finally:
            os.close(fd)

    def _wait_new(self, timeout: float | None, keep_failed: bool) -> None:
        """wait() for a sandbox this client just made; destroys it on failure unless keep_failed."""
        try:
            self.wait(timeout)
        except (CreateFailed, Timeout):
            if not keep_failed:
                self.destroy(missing_ok=True)
            raise

    def usage(self) -> dict[str, Any]:
        """NAME/usage: cpu, memory, disk, net (never wakes a sleeping sandbox)."""
        try:
            return _io.read_json(self.path / "usage")
        except OSError as e:
            raise self._fail(e, "usage") from None

    def console(self) -> str:
        """The guest's serial log (its newest part)."""
        try:
            return _io.read_text(self.path / "console")
        except OSError as e:
            raise self._fail(e, "console") from None

    # ---- commands ----

    def run(self, cmd: Command, *, check: bool = False, timeout: float | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None, user: str | int | None = None) -> Result:
        """Runs a command to its end through NAME/exec (JSON mode) and returns its Result.

        cmd: a shell line (run as /bin/sh -c LINE) or an argv sequence. env
        is set over the sandbox's env; cwd and user ("name", "uid",
        "uid:gid") as in the guest. timeout (seconds): the guest kills the
        command's process group then, and CommandTimeout (carrying the
        Result) is raised. check=True raises CommandFailed (carrying the
        Result) unless it exited 0. A command that cannot run at all (no
        such cwd or user) raises the guest's errno (e.g. NotFound) with its
        reason; a program not found is exit code 127. A paused or hibernated
        sandbox is woken first; a stopped or failed one raises Failed."""
        req = command_request(cmd, env, cwd, user)
        if timeout is not None:
            if timeout <= 0:
                raise from_errno_name("EINVAL", "run: timeout must be positive")
            req["timeout_ms"] = max(1, int(timeout * 1000))
        try:
            fd = os.open(self.path / "exec", os.O_RDWR | os.O_CLOEXEC)
            try:
                _io.write_all(fd, json.dumps(req).encode("utf-8"))
                data = _io.read_fd(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise self._fail(e, "run %r" % (cmd,)) from None
        resp = json.loads(data.decode("utf-8"))
        if "exit_code" not in resp:
            raise from_errno_name(resp.get("errno", "EIO"), "%r: run %r" % (self, cmd), resp.get("error"))
        result = Result(cmd=cmd, exit_code=resp["exit_code"], signal=resp["signal"],
                        stdout_bytes=base64.b64decode(resp["stdout"]), stderr_bytes=base64.b64decode(resp["stderr"]),
                        duration_ms=float(resp["duration_ms"]), truncated=bool(resp["truncated"]),
                        timed_out=bool(resp.get("timed_out")))
        if result.timed_out:
            raise CommandTimeout("%r: command %r killed after its timeout of %.3g s" % (self, cmd, timeout), result)
        if check:
            result.check()
        return result

    def spawn(self, cmd: Command, *, id: str | None = None, env: Mapping[str, str] | None = None,
              cwd: str | None = None, user: str | int | None = None) -> Process:
        """Starts a process in a new slot procs/ID (a fresh "p-XXXXXXXX" if
        id is None) and returns it; read its stdout/stderr as it runs. Exists
        if the slot is taken, NoSpace past 256 slots. If the guest cannot
        start it, the slot is removed and the guest's errno raised with its
        reason."""
        pid = _io.check_name(id if id is not None else _io.new_name("p"), "process id")
        proc = Process(self, pid)
        try:
            os.mkdir(proc.path)
        except OSError as e:
            raise self._fail(e, "process slot %r" % pid) from None
        try:
            _io.write_bytes(proc.path / "cmd", json.dumps(command_request(cmd, env, cwd, user)))
        except OSError as e:
            err = proc._fail(e, "start %r" % (cmd,))
            try:
                os.rmdir(proc.path)
            except OSError:
                pass
            raise err from None
        return proc

    def process(self, id: str) -> Process:
        """The existing slot procs/ID; NotFound if there is none."""
        proc = Process(self, id)
        if not proc.path.is_dir():
            raise NotFound("%r: no process %r" % (self, id), errno.ENOENT, str(proc.path))
        return proc

    def processes(self) -> list[Process]:
        """Every slot of procs/ (procs/start too, for a template with a start command)."""
        try:
            return [Process(self, n) for n in sorted(os.listdir(self.path / "procs"))]
        except OSError as e:
            raise self._fail(e, "procs") from None

    # ---- ctl verbs ----

    def ctl(self, verb: str) -> None:
        """Writes one verb to NAME/ctl; returns when the transition is done.
        Busy (refused in this state), Invalid (unknown verb, bad name),
        Exists, NotFound, NoSpace: .reason is the status "ctl_error"."""
        try:
            _io.write_bytes(self.path / "ctl", verb + "\n")
        except OSError as e:
            raise self._fail(e, verb, "ctl_error") from None

    def pause(self) -> None:
        """ready -> paused: the vCPUs stop, memory stays."""
        self.ctl("pause")

    def resume(self) -> None:
        """paused -> ready; hibernated -> ready (a wake)."""
        self.ctl("resume")

    def hibernate(self) -> None:
        """ready or paused -> hibernated: state saved, the VMM ends. Busy while a command runs."""
        self.ctl("hibernate")

    def stop(self) -> None:
        """-> stopped: the VMM ends, memory is dropped, the disk stays."""
        self.ctl("stop")

    def start(self) -> None:
        """stopped -> ready (a cold boot from its own disk); hibernated -> ready (a wake)."""
        self.ctl("start")

    def fork(self, new: str | None = None, *, wait: bool = True, timeout: float | None = None,
             keep_failed: bool = False) -> "Sandbox":
        """`fork NEW`: a copy of this sandbox as it runs now (memory, disk,
        processes), same template. Returns the new Sandbox, ready if wait."""
        new = _io.check_name(new if new is not None else _io.new_name(self.name[:50]), "sandbox name")
        self.ctl("fork %s" % new)
        child = Sandbox(self.mount, self.template, new)
        if wait:
            child._wait_new(timeout, keep_failed)
        return child

    def save_as_template(self, new: str) -> Template:
        """`template NEW`: this sandbox's current state becomes template NEW's snapshot (ready at once)."""
        self.ctl("template %s" % _io.check_name(new, "template name"))
        return Template(self.mount, new)

    def checkpoint(self, name: str) -> "Checkpoint":
        """`checkpoint C`: saves the whole sandbox (memory, disk, processes) as checkpoints/C."""
        self.ctl("checkpoint %s" % _io.check_name(name, "checkpoint name"))
        return Checkpoint(self, name)

    def rollback(self, name: str) -> None:
        """`rollback C`: the sandbox goes back to checkpoint C in place (ready after it).
        Open handles on its processes and guest files answer EIO after it: open them again."""
        self.ctl("rollback %s" % _io.check_name(name, "checkpoint name"))

    def fork_from(self, new: str, checkpoint: str, *, wait: bool = True, timeout: float | None = None,
                  keep_failed: bool = False) -> "Sandbox":
        """`fork NEW from C`: a new sandbox started from checkpoint C."""
        _io.check_name(new, "sandbox name")
        self.ctl("fork %s from %s" % (new, _io.check_name(checkpoint, "checkpoint name")))
        child = Sandbox(self.mount, self.template, new)
        if wait:
            child._wait_new(timeout, keep_failed)
        return child

    def checkpoints(self) -> list["Checkpoint"]:
        """The checkpoints of this sandbox, by name."""
        try:
            return [Checkpoint(self, n) for n in sorted(os.listdir(self.path / "checkpoints"))]
        except OSError as e:
            raise self._fail(e, "checkpoints") from None

    # ---- settings ----

    def _set(self, fname: str, text: str) -> None:
        try:
            if text:
                _io.write_bytes(self.path / fname, text, os.O_WRONLY | os.O_TRUNC)
            else:
                _io.empty_file(self.path / fname)
        except OSError as e:
            raise self._fail(e, "set " + fname, "settings_error") from None

    def _get(self, fname: str) -> str:
        try:
            return _io.read_text(self.path / fname)
        except OSError as e:
            raise self._fail(e, fname) from None

    def timeout(self) -> dict[str, Any]:
        """NAME/timeout: {"timeout_s", "deadline_unix_ms", "left_ms", "on_timeout"}."""
        return json.loads(self._get("timeout"))

    def set_timeout(self, seconds: int, on_timeout: str | None = None) -> None:
        """Destroys (or, on_timeout="hibernate", hibernates) the sandbox
        `seconds` from now; 0 clears the deadline."""
        value: dict[str, Any] = {"timeout_s": seconds}
        if on_timeout is not None:
            value["on_timeout"] = on_timeout
        self._set("timeout", json.dumps(value))

    def metadata(self) -> dict[str, str]:
        """NAME/metadata: the labels (a JSON object of strings)."""
        text = self._get("metadata").strip()
        return json.loads(text) if text else {}

    def set_metadata(self, metadata: Mapping[str, str]) -> None:
        """Replaces the labels ({} removes them); find sandboxes by them with Mount.sandboxes(metadata=...)."""
        self._set("metadata", json.dumps(dict(metadata)))

    def env(self) -> dict[str, str]:
        """NAME/env: the variables every later command gets (under what the command sets itself)."""
        text = self._get("env")
        if text.lstrip().startswith("{"):
            return json.loads(text)
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
        return out

    def set_env(self, env: Mapping[str, str]) -> None:
        """Replaces the sandbox's env ({} removes it)."""
        self._set("env", json.dumps(dict(env)))

    def egress(self) -> str:
        """NAME/egress: the outbound policy lines (exists with --net and a template with "net")."""
        return self._get("egress")

    def set_egress(self, policy: str) -> None:
        """Replaces the outbound policy ("" goes back to the template's default)."""
        self._set("egress", policy)

    # ---- guest files ----

    def guest_path(self, path: str | os.PathLike[str]) -> Path:
        """The host path of guest path `path` (under root; ".." stops at the guest's /)."""
        p = posixpath.normpath("/" + os.fspath(path)).lstrip("/")
        return self.root / p if p and p != "." else self.root

    def _file_op(self, what: str, path: str | os.PathLike[str], fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as e:
            raise self._fail(e, "%s %s" % (what, os.fspath(path))) from None

    def read_file(self, path: str | os.PathLike[str]) -> bytes:
        """The guest file's content."""
        return self._file_op("read", path, lambda: self.guest_path(path).read_bytes())

    def read_text(self, path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        """The guest file's content as text."""
        return self._file_op("read", path, lambda: self.guest_path(path).read_text(encoding))

    def write_file(self, path: str | os.PathLike[str], data: bytes | str, mode: int | None = None) -> None:
        """Creates or replaces the guest file with data (str: UTF-8); mode sets its permission bits."""
        gp = self.guest_path(path)

        def op() -> None:
            with open(gp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if mode is not None:
                os.chmod(gp, mode)
        self._file_op("write", path, op)

    def listdir(self, path: str | os.PathLike[str] = "/") -> list[str]:
        """The names in a guest directory, sorted."""
        return self._file_op("list", path, lambda: sorted(os.listdir(self.guest_path(path))))

    def file_exists(self, path: str | os.PathLike[str]) -> bool:
        """True if the guest path exists (a dangling symlink counts)."""
        return os.path.lexists(self.guest_path(path))

    def makedirs(self, path: str | os.PathLike[str], mode: int = 0o777) -> None:
        """mkdir -p in the guest."""
        self._file_op("mkdir", path, lambda: os.makedirs(self.guest_path(path), mode, exist_ok=True))

    def remove(self, path: str | os.PathLike[str], recursive: bool = False) -> None:
        """Removes a guest file or empty directory; with recursive, a whole tree (inside the guest only)."""
        gp = self.guest_path(path)
        if gp == self.root:
            raise from_errno_name("EPERM", "%r: remove /: refused" % self)

        def op() -> None:
            if recursive and gp.is_dir() and not gp.is_symlink():
                shutil.rmtree(gp)
            elif gp.is_dir() and not gp.is_symlink():
                os.rmdir(gp)
            else:
                os.unlink(gp)
        self._file_op("remove", path, op)

    def copy_in(self, local: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
        """Copies a host file or directory tree into the guest at `path` (contents and modes)."""
        gp = self.guest_path(path)
        if os.path.isdir(local):
            self._file_op("copy into", path, lambda: shutil.copytree(local, gp, copy_function=shutil.copy,
                                                                    dirs_exist_ok=True))
        else:
            self._file_op("copy into", path, lambda: shutil.copy(local, gp))

    def copy_out(self, path: str | os.PathLike[str], local: str | os.PathLike[str]) -> None:
        """Copies a guest file or directory tree to the host at `local` (contents and modes)."""
        gp = self.guest_path(path)
        if gp.is_dir():
            self._file_op("copy out of", path, lambda: shutil.copytree(gp, local, copy_function=shutil.copy,
                                                                      dirs_exist_ok=True))
        else:
            self._file_op("copy out of", path, lambda: shutil.copy(gp, local))

    # ---- the end ----

    def destroy(self, missing_ok: bool = False) -> None:
        """rmdir NAME: the VMM is killed and everything of the sandbox removed
        (its checkpoints and processes too); returns once it is gone. Never
        walks into the guest's files. NotFound if there is no such sandbox
        (unless missing_ok)."""
        try:
            os.rmdir(self.path)
        except OSError as e:
            if e.errno == errno.ENOENT and missing_ok:
                return
            raise self._fail(e, "destroy") from None


# ---------------------------------------------------------------------------
# checkpoints

class Checkpoint:
    """checkpoints/C/ of a sandbox: a saved state to roll back to or fork from."""

    def __init__(self, sandbox: Sandbox, name: str) -> None:
        self.sandbox = sandbox
        self.name = _io.check_name(name, "checkpoint name")
        self.path = sandbox.path / "checkpoints" / name

    def __repr__(self) -> str:
        return "Checkpoint(%s/%s@%s)" % (self.sandbox.template, self.sandbox.name, self.name)

    def status(self) -> dict[str, Any]:
        """checkpoints/C/status: created_unix_ms, from_state, save_ms, paused_ms, procs, sizes..."""
        try:
            return _io.read_json(self.path / "status")
        except OSError as e:
            raise from_oserror(e, "%r: status" % self) from None

    def rollback(self) -> None:
        """The sandbox goes back to this checkpoint (Sandbox.rollback)."""
        self.sandbox.rollback(self.name)

    def fork(self, new: str, **kw: Any) -> Sandbox:
        """A new sandbox from this checkpoint (Sandbox.fork_from)."""
        return self.sandbox.fork_from(new, self.name, **kw)

    def remove(self) -> None:
        """rmdir checkpoints/C: frees it."""
        try:
            os.rmdir(self.path)
        except OSError as e:
            raise from_oserror(e, "%r: remove" % self) from None
