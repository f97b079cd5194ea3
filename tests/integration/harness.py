"""
Integration test harness for emberfs (Python standard library only).

It starts a real daemon (foreground, stderr to a log file) on a temporary
mount point and a temporary state directory, waits for the default template
to be baked, offers small helpers for the mount's files (JSON status, wait,
exec in plain and JSON mode, errno assertions), and keeps a LEAK INVENTORY of
everything the daemon creates on the host:

  qemu       QEMU processes whose command line mentions the state dir
  mounts     mounts (/proc/self/mountinfo) at or under the mount point or state dir
  loops      loop devices backed by STATE/store.xfs
  run        entries under STATE/run
  sandboxes  per-VM directories of sandboxes: STATE/store/vms/ID whose
             record.json names the sandbox (older layout:
             STATE/store/sandboxes/T/NAME), listed as "T/NAME"
  zombies    zombie children of the daemon
  cgroups    per-VMM cgroups under the instance's groups (emberfs-TAG); once
             the daemon has exited, the instance groups themselves and the
             daemon's own (emberfs-TAG-daemon)
  net        after exit only: network namespaces efTAG-*, host links
             efTAGh*, the nft table emberfs_TAG (while the daemon runs its
             network pool keeps slots ready on its own; test_net.py compares
             namespaces, links, routes and nft rules around a daemon)
  orphans    objects no record accounts for: a VMM whose RAM file's
             directory has no record naming its pid, a cgroup of no VMM, a
             run directory no record names (persisting over 0.3 s)
  vmm_mounts what is wrong with the mount namespace of any VMM of the
             daemon (slots and bakes included): every mount but its own
             root (a read-only tmpfs, /usr and what the host has of /bin,
             /lib... bound read-only, a /proc of its own processes, /dev/null
             and, under KVM, /dev/kvm) is listed, so a VMM that sees the
             state directory or the mount fails every test
  slots     the daemon's warm slots, if it keeps any: per-VM dirs whose
             record names no sandbox, their run dirs, QEMU processes and
             cgroups

Teardown sends SIGTERM (or runs a given command, e.g. `fusermount3 -u`),
waits (bounded), requires exit code 0, no mount left
(so `fusermount3 -u` is never needed), an empty inventory, and no line with
"error:" in the daemon log other than those a test declared as expected.

Test files call harness.main() (arguments, if any, name classes or
Class.test_method to run alone): exit 0 when everything passed, 77 (the
meson/automake skip code) when a capability is missing, 1 otherwise, and one
summary line on stdout.

Environment: EMBERFS_BIN (default <repo>/build/fs/emberfs), EMBERFS_IMAGE_DIR
(default <repo>/.image/current), EMBERFS_KEEP=1 keeps the temp dirs of a
failed daemon teardown for inspection. Daemon logs (/tmp/eflog*.log) are
removed after a run where every test passed and kept (paths printed) otherwise.
"""

import atexit
import contextlib
import base64
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("EMBERFS_BIN") or os.path.join(REPO, "build", "fs", "emberfs")
# the daemon with the tests' create-phase hook (tests/integration/holdd.c), built next to the tests
HOLDD = os.environ.get("EMBERFS_HOLDD") or os.path.join(os.path.dirname(os.path.dirname(BIN)),
                                                        "tests", "integration", "emberfs-holdd")
IMAGE_DIR = os.environ.get("EMBERFS_IMAGE_DIR") or os.path.join(REPO, ".image", "current")
IMAGE_FILES = ("vmlinuz", "initrd.cpio", "rootfs.ext4", "manifest.json")
SKIP_EXIT = 77

# Generous bounds: everything runs under TCG on a small machine.
START_TIMEOUT = 30.0  # daemon up and mounted
BAKE_TIMEOUT = 180.0  # a template bake (about 4 s when the machine is idle)
STOP_TIMEOUT = 60.0  # SIGTERM to exit
TEST_TIMEOUT = 300  # per test method (SIGALRM), so a hung FUSE request cannot hang the suite


# ---------------------------------------------------------------------------
# capabilities

def missing_capability():
    """The reason the suite cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (emberfs mounts FUSE, attaches loop devices, mounts XFS, starts VMMs)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse missing"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 missing (install qemu-system-x86)"
    if not shutil.which("fusermount3"):
        return "fusermount3 missing (install fuse3)"
    missing = [f for f in IMAGE_FILES if not os.path.isfile(os.path.join(IMAGE_DIR, f))]
    if missing:
        return "guest image missing in %s (%s); build it with contrib/build-image.sh" % (
            IMAGE_DIR, ", ".join(missing))
    return None


# ---------------------------------------------------------------------------
# processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """VMMs orphaned by a kill -9 of the daemon become our children (and our
    zombies to reap) instead of init's, so "the old VMM is gone" is decidable."""
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def proc_stat(pid):
    """(state, ppid, starttime) from /proc/PID/stat, or None if there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    # rest[0] is field 3 (state); starttime is field 22
    return rest[0], int(rest[1]), int(rest[19])


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


VMM_FD_MEM = 4  # the VMM's guest RAM: its file, or a snapshot's sealed base (engine/driver.h, FD_MEM)
VMM_FD_CONSOLE = 6  # its console file, always in its VM directory (FD_CONSOLE)


def vmm_mem_path(pid):
    """What a VMM's guest RAM descriptor is (its file, or "/memfd:emberfs-ram-base (deleted)"), or None."""
    try:
        return os.readlink("/proc/%d/fd/%d" % (pid, VMM_FD_MEM))
    except OSError:
        return None


def vmm_dir(pid):
    """The VM directory a VMM's files are in (its console's), or None."""
    try:
        return os.path.dirname(os.readlink("/proc/%d/fd/%d" % (pid, VMM_FD_CONSOLE)))
    except OSError:
        return None


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


_popen_pids = set()  # children whose zombies subprocess.Popen reaps itself


def reap_orphans():
    """Reap zombies that are our children by adoption (subreaper), never a Popen's."""
    me = os.getpid()
    for pid in all_pids():
        if pid in _popen_pids:
            continue
        st = proc_stat(pid)
        if st and st[0] == "Z" and st[1] == me:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def pid_alive(pid, starttime=None):
    """True if pid runs (not a zombie) and, if given, started at starttime."""
    reap_orphans()
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[2] == starttime


def wait_pid_gone(pid, starttime=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while pid_alive(pid, starttime):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------------
# mounts and loop devices

def _unescape_mountinfo(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts(with_ids=False):
    """[(mount point, fs type, source)] from /proc/self/mountinfo
    ([(mount id, mount point, fs type, source)] with with_ids)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            m = (_unescape_mountinfo(fields[4]), rfields[0], rfields[1] if len(rfields) > 1 else "")
            out.append((int(fields[0]),) + m if with_ids else m)
    return out


def _under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def loop_devices_backed_by(path):
    devs = []
    want = os.path.realpath(path)
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return devs
    for n in names:
        if not n.startswith("loop"):
            continue
        try:
            with open("/sys/block/%s/loop/backing_file" % n) as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.endswith(" (deleted)"):
            backing = backing[: -len(" (deleted)")]
        if backing == want:
            devs.append("/dev/" + n)
    return sorted(devs)


# ---------------------------------------------------------------------------
# a VMM's mount namespace (engine/qemu.c spawn_child: its root)

# top-level names the host has as symlinks into /usr (usrmerge) or as directories: a VMM's root has them alike
VMM_ROOT_DIRS = ("bin", "sbin", "lib", "lib64")


def vmm_expected_mounts(kvm=False):
    """{mount point: the host path it binds, or None} of a VMM's namespace."""
    exp = {"/": None, "/proc": None, "/usr": "/usr", "/dev/null": "/dev/null"}
    for d in VMM_ROOT_DIRS:
        if os.path.isdir("/" + d) and not os.path.islink("/" + d):
            exp["/" + d] = "/" + d
    if kvm:
        exp["/dev/kvm"] = "/dev/kvm"
    return exp


def vmm_mounts(pid):
    """[(mount point, fs type, mount options, superblock options)] of a process's namespace; None if gone."""
    try:
        with open("/proc/%d/mountinfo" % pid) as f:
            text = f.read()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        out.append((_unescape_mountinfo(f[4]), r[0], set(f[5].split(",")), set(r[2].split(",")) if len(r) > 2 else set()))
    return out


def _same_file(a, b):
    """True or False; None if either cannot be looked at (an exiting process has no root any more)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return None
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def vmm_mount_problems(pid):
    """What is wrong with VMM pid's mounts ([] if it is gone or holds exactly its root):
    a mount not expected or missing, a root or bind not read-only, nosuid (and nodev
    but on device nodes), a bind of something else than the host's file, a /proc
    that shows more than the VMM's own processes."""
    ms = vmm_mounts(pid)
    argv = proc_cmdline(pid)
    if ms is None or not argv:
        return []
    kvm = "-accel" in argv and argv.index("-accel") + 1 < len(argv) and argv[argv.index("-accel") + 1].startswith("kvm")
    exp = vmm_expected_mounts(kvm)
    out, seen = [], []
    for mp, fstype, opts, sopts in ms:
        want = {"ro", "nosuid"} | ({"nodev"} if not mp.startswith("/dev/") else set())
        if mp not in exp:
            out.append("%s (%s): not expected" % (mp, fstype))
            continue
        if mp in seen:
            out.append("%s: mounted twice" % mp)
        seen.append(mp)
        if mp == "/proc":
            want = {"ro", "nosuid", "nodev", "noexec"}
            if fstype != "proc" or not ({"hidepid=invisible", "subset=pid"} <= sopts or "hidepid=2" in sopts):
                out.append("/proc (%s %s): not a procfs of its own processes" % (fstype, ",".join(sorted(sopts))))
        elif mp == "/":
            if fstype != "tmpfs":
                out.append("/ (%s): not a tmpfs" % fstype)
        elif _same_file("/proc/%d/root%s" % (pid, mp), exp[mp]) is False:
            out.append("%s (%s): not a bind of the host's %s" % (mp, fstype, exp[mp]))
        if not want <= opts:
            out.append("%s (%s): options %s lack %s" % (mp, fstype, ",".join(sorted(opts)),
                                                        ",".join(sorted(want - opts))))
    out += ["%s: missing" % mp for mp in sorted(set(exp) - set(seen))]
    if out and not pid_alive(pid):
        return []  # it exited while we looked
    return ["qemu %d: %s" % (pid, p) for p in out]


# ---------------------------------------------------------------------------
# errno assertions

def errno_name(e):
    return errno.errorcode.get(e, str(e))


def expect_errno(expected, fn, *args, **kwargs):
    """Calls fn; it must raise OSError with errno in expected (an int or a tuple)."""
    exp = expected if isinstance(expected, tuple) else (expected,)
    try:
        r = fn(*args, **kwargs)
    except OSError as e:
        if e.errno not in exp:
            raise AssertionError("%s%r: expected %s, got %s (%s)" % (
                getattr(fn, "__name__", fn), args, "|".join(map(errno_name, exp)), errno_name(e.errno), e))
        return e
    raise AssertionError("%s%r: expected %s, but it succeeded (returned %r)" % (
        getattr(fn, "__name__", fn), args, "|".join(map(errno_name, exp)), r))


# ---------------------------------------------------------------------------
# the daemon

_live = []  # daemons to clean up at exit, whatever happened
_logs = set()  # daemon logs of cleaned-up daemons: removed by main() after a clean run, else kept


class DaemonError(AssertionError):
    pass


class Daemon:
    """One emberfs daemon on its own temp mount point and state dir.

    Daemon(reuse=other) runs on the same mount point and state dir as an
    earlier (dead) daemon, for restart tests; the directories then belong to
    the last daemon started on them.
    """

    def __init__(self, extra_args=(), reuse=None, pool=0, binary=None, env=None, spares=0):
        # pool: --pool for the daemon. 0 by default, so tests that check the
        # restore path get it; test_warm.py sets pools through the pool file.
        # spares: --spares, 0 by default for the same reason (a restore then
        # spawns its VMM); test_warm.py's Spares tests turn them on.
        self.extra_args = (["--pool", str(pool)] if pool is not None else []) + \
            (["--spares", str(spares)] if spares is not None else []) + list(extra_args)
        self.binary = binary or (reuse.binary if reuse is not None else BIN)
        self.env = dict(os.environ, **env) if env else None  # the daemon's environment (None: ours)
        if reuse is not None:
            self.mount, self.state, self.log_path = reuse.mount, reuse.state, reuse.log_path
            reuse.owns_dirs = False
        else:
            self.mount = os.path.realpath(tempfile.mkdtemp(prefix="ef", dir="/tmp"))
            self.state = os.path.realpath(tempfile.mkdtemp(prefix="ef", dir="/tmp"))
            fd, self.log_path = tempfile.mkstemp(prefix="eflog", suffix=".log", dir="/tmp")
            os.close(fd)
        self.owns_dirs = True
        self.proc = None
        self.vmm_mounts_seen = set()  # what inventory() found wrong with VMM namespaces: stop() fails on it
        self.expected_errors = []  # regexes for "error:" log lines a test provoked on purpose
        self.log_offset = os.path.getsize(self.log_path)  # a restarted daemon appends
        _live.append(self)

    # ---- paths ----
    def tpl(self, t="default", *rest):
        return os.path.join(self.mount, "templates", t, *rest)

    def sbdir(self, t="default"):
        return self.tpl(t, "sandboxes")

    def sb(self, name, *rest, t="default"):
        return os.path.join(self.sbdir(t), name, *rest)

    # ---- lifecycle ----
    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait_default=True):
        become_subreaper()
        self.log_file = open(self.log_path, "ab")
        argv = [self.binary, "-f", "--state-dir", self.state, "--image-dir", IMAGE_DIR] + self.extra_args + [self.mount]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=self.log_file,
                                     env=self.env)
        _popen_pids.add(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.mounted():
            self._check_alive("while starting")
            if time.monotonic() > deadline:
                raise DaemonError("daemon not mounted on %s after %.0f s\n%s" % (
                    self.mount, START_TIMEOUT, self.log_tail()))
            time.sleep(0.02)
        if wait_default:
            self.wait_template_ready("default")
        return self

    def mounted(self):
        """Our FUSE mount is there and answers (a stale one left by a crashed daemon does not count)."""
        if not any(mp == self.mount and fs.startswith("fuse") for mp, fs, _ in mounts()):
            return False
        # mount ids are reused at once, so liveness decides: a stale mount answers ENOTCONN.
        # The device decides too: a stale mount detached between the two reads leaves
        # the plain directory underneath, which stats fine but is not ours.
        try:
            return os.stat(self.mount).st_dev != os.stat(os.path.dirname(self.mount)).st_dev
        except OSError:
            return False

    def _check_alive(self, what):
        if not self.alive():
            rc = self.proc.returncode if self.proc else None
            raise DaemonError("daemon died %s (exit %s)\n%s" % (what, rc, self.log_tail()))

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        lines = self.log_text().splitlines()
        return "--- daemon log (%s), last %d lines ---\n%s" % (self.log_path, n, "\n".join(lines[-n:]))

    def expect_log_error(self, regex):
        self.expected_errors.append(re.compile(regex))

    def unexpected_log_errors(self):
        bad = []
        for line in self.log_text().splitlines():
            # case-insensitive: also catches ASan/UBSan reports ("ERROR: AddressSanitizer", "runtime error:")
            if "error:" in line.lower() and not any(r.search(line) for r in self.expected_errors):
                bad.append(line)
        return bad

    def kill9(self):
        """SIGKILL the daemon (no cleanup of its own happens)."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        _popen_pids.discard(self.proc.pid)
        self.log_file.close()
        if self in _live:
            _live.remove(self)

    def stop(self, check=True, command=None, timeout=STOP_TIMEOUT):
        """SIGTERM (or, with command, that command run to completion instead, e.g.
        ["fusermount3", "-u", d.mount]: it must exit 0), a wait bounded by timeout,
        then every check of a clean shutdown. Raises on any problem."""
        problems = []
        if self.proc is None:
            return
        how = "SIGTERM" if command is None else " ".join(command)
        if self.proc.poll() is None:
            problems += sorted(self.vmm_mounts_seen | set(self._vmm_mount_problems()))
            if command is None:
                self.proc.send_signal(signal.SIGTERM)
            else:
                r = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
                if r.returncode != 0:
                    problems.append("%s: exit %d: %s" % (how, r.returncode, r.stderr.strip()))
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                problems.append("daemon did not exit within %.0f s of %s" % (timeout, how))
                self.proc.kill()
                self.proc.wait(timeout=30)
        rc = self.proc.returncode
        _popen_pids.discard(self.proc.pid)
        self.log_file.close()
        if rc != 0:
            problems.append("daemon exit code %s, expected 0" % rc)
        if self.mounted():
            problems.append("FUSE mount %s still present after exit (fusermount3 -u would be needed)" % self.mount)
        inv = self.wait_inventory(EMPTY_INVENTORY, timeout=5.0, with_slots=True)
        foreign = self.foreign_store_holders() if inv["loops"] else []
        if foreign and inv == {**EMPTY_INVENTORY, "loops": inv["loops"]}:
            # not the daemon's: the store's loop device goes once they do (autoclear)
            sys.stderr.write("note: loop device %s kept after exit by copies of the store's mount in other "
                             "processes' mount namespaces: %s\n" % (", ".join(inv["loops"]), ", ".join(foreign)))
        elif inv != EMPTY_INVENTORY:
            problems.append("leaks after exit: %s" % describe_inventory(inv))
        if check:
            bad = self.unexpected_log_errors()
            if bad:
                problems.append("unexpected error lines in the daemon log:\n  " + "\n  ".join(bad))
        if self in _live:
            _live.remove(self)
        if problems:
            msg = "\n".join(problems) + "\n" + self.log_tail()
            self.force_cleanup(keep=os.environ.get("EMBERFS_KEEP") == "1")
            raise DaemonError(msg)
        self.force_cleanup()

    def force_cleanup(self, keep=False):
        """Best effort: nothing of this daemon survives (used after failures and at exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pid in self._qemu_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self._qemu_pids():
            wait_pid_gone(pid, timeout=5)
        for mp, fs, _ in sorted(mounts(), key=lambda m: -len(m[0])):
            if _under(mp, self.mount) or _under(mp, self.state):
                if fs.startswith("fuse"):
                    subprocess.run(["fusermount3", "-uz", mp], stderr=subprocess.DEVNULL)
                if any(m[0] == mp for m in mounts()):
                    subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
        for dev in loop_devices_backed_by(os.path.join(self.state, "store.xfs")):
            subprocess.run(["losetup", "-d", dev], stderr=subprocess.DEVNULL)
        # a killed --net daemon's namespaces, links and table (their routes would make the next daemon
        # on the same range refuse to start)
        for obj in self._net_leftovers():
            kind, name = obj.split(" ", 1)
            argv = {"netns": ["ip", "netns", "del", name], "link": ["ip", "link", "del", name],
                    "nft": ["nft", "delete"] + name.split()}[kind]
            subprocess.run(argv, stderr=subprocess.DEVNULL)
        reap_orphans()
        # a killed daemon's cgroups: its VMMs are gone, the groups are empty (the next start would sweep them)
        for b in self._cgroup_bases() + self.cgroup_daemon_groups():
            for c in [os.path.join(b, c) for c in _listdir(b) if c.isdigit()] + [b]:
                for _ in range(100):  # a group empties a moment after its last process is reaped
                    try:
                        os.rmdir(c)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.01)
        if self in _live:
            _live.remove(self)
        if keep:
            sys.stderr.write("kept for inspection: mount %s, state %s, log %s\n" % (
                self.mount, self.state, self.log_path))
            return
        if self.owns_dirs and not any(_under(mp, self.mount) or _under(mp, self.state) for mp, _, _ in mounts()):
            shutil.rmtree(self.state, ignore_errors=True)
            try:
                os.rmdir(self.mount)
            except OSError:
                pass
            _logs.add(self.log_path)  # main() removes the logs when every test passed

    # ---- inventory ----
    @property
    def tag(self):
        """The instance tag the daemon puts in every host name: 4 hex digits of sha256(state dir)."""
        return hashlib.sha256(self.state.encode()).hexdigest()[:4]

    def _cgroup_bases(self):
        """The instance's cgroup groups (found from the daemon's own groups while it runs, then kept)."""
        if getattr(self, "_cg_bases", None) is None:
            bases = []
            try:
                # the daemon's groups; once it is gone, ours (it was started in them)
                with open("/proc/%s/cgroup" % (self.pid if self.alive() else "self")) as f:
                    for line in f:
                        _, ctrls, path = line.rstrip("\n").split(":", 2)
                        # the daemon runs in a group of its own next to the instance group
                        if path.endswith("/emberfs-%s-daemon" % self.tag):
                            path = path[:-len("/emberfs-%s-daemon" % self.tag)]
                        path = "" if path == "/" else path
                        if ctrls == "":
                            bases.append("/sys/fs/cgroup%s/emberfs-%s" % (path, self.tag))
                        for c in ("cpu", "memory"):
                            if c in ctrls.split(","):
                                bases.append("/sys/fs/cgroup/%s%s/emberfs-%s" % (c, path, self.tag))
            except OSError:
                return []
            self._cg_bases = bases
        return getattr(self, "_cg_bases", None) or []

    def cgroup_daemon_groups(self):
        """The daemon's own groups (next to the instance groups with the cpu
        controller), which must be gone once it has exited."""
        return [b + "-daemon" for b in self._cgroup_bases() if "/sys/fs/cgroup/memory/" not in b]

    def _net_leftovers(self):
        """Namespaces, host links and the nft table of this instance (the netpool's own while it runs)."""
        out = ["netns " + n for n in _listdir("/run/netns") if n.startswith("ef%s-" % self.tag)]
        out += ["link " + n for n in _listdir("/sys/class/net") if n.startswith("ef%sh" % self.tag)]
        if shutil.which("nft"):
            r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
            out += ["nft " + t.strip() for t in r.stdout.splitlines() if t.strip().endswith(" emberfs_" + self.tag)]
        return sorted(out)

    def _qemu_pids(self):
        """QEMU processes holding a file of this state dir as their guest RAM
        (fd 4: VMMs open nothing of the state dir by path)."""
        pids = []
        for pid in all_pids():
            argv = proc_cmdline(pid)
            if argv and "qemu" in os.path.basename(argv[0]) and _under(vmm_dir(pid) or "/", self.state):
                pids.append(pid)
        return pids

    def vm_dirs(self):
        """{dir: record or None} of every per-VM directory in the store:
        STATE/store/vms/ID (record.json names template and sandbox; "name" is
        null for a warm slot) or, in the older layout, STATE/store/sandboxes/T/NAME."""
        out = {}
        vms = os.path.join(self.state, "store", "vms")
        cands = [os.path.join(vms, n) for n in _listdir(vms)]
        sbroot = os.path.join(self.state, "store", "sandboxes")
        for t in _listdir(sbroot):
            cands += [os.path.join(sbroot, t, n) for n in _listdir(os.path.join(sbroot, t))]
        for d in cands:
            if not os.path.isdir(d):
                continue
            try:
                rec = read_json(os.path.join(d, "record.json"))
            except (OSError, ValueError):
                rec = None
            out[d] = rec
        return out

    def _vm_kind(self, d, rec):
        """("sandbox", "T/NAME") or ("slot", description)."""
        rel = os.path.relpath(d, os.path.join(self.state, "store"))
        if rel.startswith("sandboxes" + os.sep):
            t, n = rel.split(os.sep)[1:3]
            return ("slot", rel) if n.startswith(".") else ("sandbox", "%s/%s" % (t, n))
        if rec and rec.get("name"):
            return "sandbox", "%s/%s" % (rec.get("template"), rec["name"])
        # a warm slot (record without a name), or a VM dir whose record is not written yet
        return "slot", rel

    def sandbox_vm_dir(self, name, t="default"):
        """The per-VM directory of sandbox T/NAME, or None."""
        for d, rec in self.vm_dirs().items():
            if self._vm_kind(d, rec) == ("sandbox", "%s/%s" % (t, name)):
                return d
        return None

    def inventory(self):
        """Everything of this daemon on the host. The daemon's warm slots
        ("slots": per-VM dirs whose record names no sandbox, their run dirs
        and QEMU processes) are listed apart under "slots": their number
        changes on its own, so per-test comparisons use core(); a stopped
        daemon must leave both empty."""
        reap_orphans()
        run = os.path.join(self.state, "run")
        # run/ID before vms/ID: the daemon makes vms/ID (with its record) first
        # and removes it last, so every run entry listed here has its vms dir
        # in the listing below
        run_entries = _listdir(run)
        sbs, slots = [], []
        slot_dirs, slot_runs, slot_pids = set(), set(), set()
        for d, rec in self.vm_dirs().items():
            kind, desc = self._vm_kind(d, rec)
            if kind == "sandbox":
                sbs.append(desc)
                continue
            slots.append(desc)
            slot_dirs.add(d)
            slot_runs.add(os.path.basename(d))
            if rec:
                if rec.get("run_dir"):
                    slot_runs.add(os.path.basename(rec["run_dir"].rstrip("/")))
                if rec.get("vmm_pid"):
                    slot_pids.add(rec["vmm_pid"])
        qemu = []
        for p in self._qemu_pids():
            argv = proc_cmdline(p)
            desc = "%d %s" % (p, " ".join(argv[:3]))
            memdir = vmm_dir(p) or ""
            if p in slot_pids or memdir in slot_dirs:
                slots.append("qemu " + desc)
            else:
                qemu.append(desc)
        inv = {}
        inv["qemu"] = sorted(qemu)
        inv["mounts"] = sorted("%s (%s)" % (mp, fs) for mp, fs, _ in mounts()
                               if _under(mp, self.mount) or _under(mp, self.state))
        inv["loops"] = loop_devices_backed_by(os.path.join(self.state, "store.xfs"))
        inv["run"] = [r for r in run_entries if r not in slot_runs]
        inv["sandboxes"] = sorted(sbs)
        zombies = []
        if self.alive():
            for pid in all_pids():
                st = proc_stat(pid)
                if st and st[0] == "Z" and st[1] == self.pid:
                    zombies.append(str(pid))
        inv["zombies"] = sorted(zombies)
        # per-VMM cgroups (a slot's go with the slots); once the daemon is gone, its groups too
        cgs = []
        for b in self._cgroup_bases():
            for pid in _listdir(b):
                if not os.path.isdir(os.path.join(b, pid)):
                    continue
                parts = b.split("/")
                desc = "%s/%s" % (parts[4] if parts[4] in ("cpu", "memory") else "unified", pid)
                if pid.isdigit() and int(pid) in slot_pids:
                    slots.append("cgroup " + desc)
                else:
                    cgs.append(desc)
            if not self.alive() and os.path.isdir(b):
                cgs.append(b)
        if not self.alive():
            cgs += [g for g in self.cgroup_daemon_groups() if os.path.isdir(g)]
        inv["cgroups"] = sorted(cgs)
        # network objects: the pool keeps slots ready on its own while the daemon runs (test_net.py
        # compares them around a daemon); after exit none may be left
        inv["net"] = [] if self.alive() else self._net_leftovers()
        inv["slots"] = sorted(slots + ["run/" + r for r in run_entries if r in slot_runs])
        inv["orphans"] = self._orphans()
        inv["vmm_mounts"] = self._vmm_mount_problems()
        self.vmm_mounts_seen.update(inv["vmm_mounts"])
        return inv

    def foreign_store_holders(self):
        """Processes, none of this daemon's (which has exited), with a copy of the store's mount in a mount
        namespace of their own: e.g. the VMMs of another daemon that copied the host's whole mount
        table (older versions), or an `unshare -m` shell. They keep the store's loop device."""
        store, ours, out = " %s " % os.path.join(self.state, "store"), os.readlink("/proc/self/ns/mnt"), []
        for pid in all_pids():
            try:
                if os.readlink("/proc/%d/ns/mnt" % pid) != ours and store in read_text("/proc/%d/mountinfo" % pid):
                    out.append("%d %s" % (pid, " ".join(proc_cmdline(pid)[:3])))
            except OSError:
                pass
        return out

    def _vmm_mount_problems(self):
        """vmm_mount_problems of every VMM of this daemon (sandboxes, slots, bakes)."""
        return sorted(p for pid in self._qemu_pids() for p in vmm_mount_problems(pid))

    def _orphans_once(self):
        """Objects of this daemon that no record accounts for: a VMM whose VM directory has no
        record naming its pid (a bake's VMM excepted: templates/T/ is its record), a cgroup of no VMM
        of ours, a run directory no record names."""
        recs = self.vm_dirs()
        pids = set(self._qemu_pids())
        out = []
        for p in pids:
            d = vmm_dir(p) or ""
            if _under(d, os.path.join(self.state, "store", "templates")):
                continue
            rec = recs.get(d)
            if not rec or rec.get("vmm_pid") != p:
                out.append("qemu %d (%s): no record names it" % (p, d))
        for b in self._cgroup_bases():
            for pid in _listdir(b):
                if pid.isdigit() and os.path.isdir(os.path.join(b, pid)) and int(pid) not in pids:
                    out.append("cgroup %s/%s: of no VMM" % (b, pid))
        named = {os.path.basename((r or {}).get("run_dir", "").rstrip("/")) for r in recs.values()}
        for r in _listdir(os.path.join(self.state, "run")):
            if r not in named and r not in {os.path.basename(d) for d in recs}:
                out.append("run/%s: no record names it" % r)
        return set(out)

    def _orphans(self):
        """_orphans_once, of what stays so for 0.3 s (a VMM is spawned before its record names it)."""
        first = self._orphans_once()
        if not first:
            return []
        time.sleep(0.3)
        return sorted(first & self._orphans_once())

    def wait_quiet(self, quiet_for=1.0, timeout=15.0):
        """Waits until the inventory (slots included) stays unchanged for
        quiet_for seconds: background work (destroys, slot refills) is done."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            inv = self.inventory()
            if inv != last:
                last, since = inv, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                return inv
            time.sleep(0.05)
        return last

    @staticmethod
    def core(inv):
        """The inventory without the daemon's standby slots."""
        return {k: v for k, v in inv.items() if k != "slots"}

    def wait_inventory(self, expected, timeout=5.0, with_slots=False):
        """Polls until the inventory (core() of it unless with_slots) equals
        expected; returns the last one seen."""
        deadline = time.monotonic() + timeout
        while True:
            inv = self.inventory()
            if not with_slots:
                inv = self.core(inv)
                expected = self.core(expected)
            if inv == expected or time.monotonic() > deadline:
                return inv
            time.sleep(0.05)

    def assert_inventory(self, expected, timeout=5.0):
        """The inventory, slots aside, is back to expected (e.g. the baseline)."""
        inv = self.wait_inventory(expected, timeout)
        if inv != self.core(expected):
            raise AssertionError("inventory differs:\n  expected %s\n  got      %s" % (
                describe_inventory(expected), describe_inventory(inv)))

    # ---- templates ----
    def template_status(self, t="default"):
        return read_json(self.tpl(t, "status"))

    def wait_template_ready(self, t="default", timeout=BAKE_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("while waiting for template %s" % t)
            st = self.template_status(t)
            if st["state"] == "ready":
                return st
            if st["state"] == "failed":
                con = os.path.join(self.state, "store", "templates", t, "bake-console.log")
                try:
                    with open(con, "rb") as f:
                        tail = f.read()[-1500:].decode("utf-8", "replace")
                except OSError:
                    tail = "(none)"
                raise DaemonError("template %s failed: %s\n--- bake console (tail) ---\n%s\n%s" % (
                    t, st.get("error"), tail, self.log_tail()))
            if time.monotonic() > deadline:
                raise DaemonError("template %s not ready after %.0f s: %s\n%s" % (
                    t, timeout, st, self.log_tail()))
            time.sleep(0.1)

    def ctl(self, cmd, t="default"):
        write_file(self.tpl(t, "ctl"), cmd)

    @contextlib.contextmanager
    def template(self, name, bake=False, **config):
        """A template for one test: made with mkdir (the default's config, with
        `config` keys set), baked if asked; on the way out its sandboxes are
        destroyed and it is removed."""
        os.mkdir(self.tpl(name))
        try:
            if config:
                cfg = read_json(self.tpl("default", "config"))
                cfg.update(config)
                write_file(self.tpl(name, "config"), json.dumps(cfg))
            if bake:
                self.ctl("bake\n", t=name)
                self.wait_template_ready(name)
            yield name
        finally:
            for n in self.sandboxes(t=name):
                self.destroy(n, t=name)
            os.rmdir(self.tpl(name))

    # ---- warm pool ----
    def pool(self, t="default"):
        return self.template_status(t)["pool"]

    def set_pool(self, n, t="default"):
        write_file(self.tpl(t, "pool"), "%d\n" % n)

    def slots(self, t="default"):
        """{id: status} of the template's slots."""
        out = {}
        for sid in os.listdir(self.tpl(t, "slots")):
            try:
                out[int(sid)] = read_json(self.tpl(t, "slots", sid, "status"))
            except FileNotFoundError:
                pass  # claimed or recycled between the listing and the read
        return out

    def wait_pool(self, warm, t="default", timeout=60.0):
        """Waits until the pool holds exactly `warm` warm slots and prepares none."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("while waiting for the pool of %s" % t)
            p = self.pool(t)
            if p["warm"] == warm and p["preparing"] == 0:
                return p
            if time.monotonic() > deadline:
                raise AssertionError("pool of %s not at %d warm after %.0f s: %s\n%s" % (
                    t, warm, timeout, p, self.log_tail()))
            time.sleep(0.05)

    # ---- sandboxes ----
    def create(self, name, t="default"):
        os.mkdir(self.sb(name, t=t))

    def status(self, name, t="default"):
        return read_json(self.sb(name, "status", t=t))

    def wait(self, name, t="default"):
        """Reads the wait file (blocks until decided); returns its text or raises OSError."""
        with open(self.sb(name, "wait", t=t), "rb", buffering=0) as f:
            return f.read().decode()

    def wait_ready(self, name, t="default"):
        """Reads wait; it must say ready. On EIO the failure names the status and the logs."""
        try:
            got = self.wait(name, t=t)
        except OSError as e:
            try:
                st = self.status(name, t=t)
            except OSError:
                st = "(status unreadable)"
            raise AssertionError("wait of %s/%s failed (%s); status: %s\n%s" % (
                t, name, errno_name(e.errno), st, self.log_tail())) from None
        if got != "ready\n":
            raise AssertionError("wait of %s returned %r" % (name, got))
        return self.status(name, t=t)

    def create_ready(self, name, t="default"):
        self.create(name, t=t)
        return self.wait_ready(name, t=t)

    def destroy(self, name, t="default"):
        os.rmdir(self.sb(name, t=t))

    def sandboxes(self, t="default"):
        return sorted(os.listdir(self.sbdir(t)))

    def exec_plain(self, name, cmd, t="default"):
        """Plain mode: returns (output, ok). output is stdout then stderr; ok is False
        when the read after the last byte failed with EIO (non-zero exit or killed)."""
        fd = os.open(self.sb(name, "exec", t=t), os.O_RDWR)
        try:
            os.write(fd, cmd.encode() if isinstance(cmd, str) else cmd)
            out = b""
            while True:
                try:
                    b = os.read(fd, 1 << 16)
                except OSError as e:
                    if e.errno == errno.EIO:
                        return out, False
                    raise
                if not b:
                    return out, True
                out += b
        finally:
            os.close(fd)

    def sh(self, name, cmd, t="default"):
        """Plain exec that must succeed; returns its output as text."""
        out, ok = self.exec_plain(name, cmd, t=t)
        if not ok:
            raise AssertionError("exec %r in %s failed: %r" % (cmd, name, out))
        return out.decode("utf-8", "replace")

    def exec_json(self, name, req, t="default"):
        """JSON mode: returns the response with stdout/stderr base64-decoded (bytes)."""
        fd = os.open(self.sb(name, "exec", t=t), os.O_RDWR)
        try:
            os.write(fd, (json.dumps(req) if not isinstance(req, str) else req).encode())
            data = b""
            while True:
                b = os.read(fd, 1 << 16)
                if not b:
                    break
                data += b
        finally:
            os.close(fd)
        lines = data.decode().splitlines()
        if len(lines) != 1:
            raise AssertionError("JSON exec answered %d lines: %r" % (len(lines), data[:500]))
        r = json.loads(lines[0])
        if "exit_code" not in r and "errno" in r:
            # the command could not run: the response is the guest's errno and reason
            raise OSError(getattr(errno, r["errno"], errno.EIO), r.get("error"))
        r["stdout"] = base64.b64decode(r["stdout"])
        r["stderr"] = base64.b64decode(r["stderr"])
        return r

    def exec_write_only(self, name, cmd, t="default"):
        """`printf cmd > exec`: runs on close; returns the seconds close took."""
        fd = os.open(self.sb(name, "exec", t=t), os.O_WRONLY)
        os.write(fd, cmd.encode())
        t0 = time.monotonic()
        os.close(fd)
        return time.monotonic() - t0


EMPTY_INVENTORY = {"qemu": [], "mounts": [], "loops": [], "run": [], "sandboxes": [], "zombies": [], "cgroups": [],
                   "net": [], "orphans": [], "vmm_mounts": [], "slots": []}


def describe_inventory(inv):
    parts = ["%s=%s" % (k, v) for k, v in inv.items() if v]
    return ", ".join(parts) if parts else "(empty)"


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def wait_for(pred, timeout, what):
    """Polls pred until it returns something true (returned); fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("not within %.0f s: %s" % (timeout, what))
        time.sleep(0.05)


def read_json(path):
    with open(path, "rb", buffering=0) as f:
        return json.loads(f.read().decode())


def read_text(path):
    with open(path, "rb", buffering=0) as f:
        return f.read().decode("utf-8", "replace")


def write_file(path, data, flags=os.O_WRONLY):
    """open / one write / close, like `printf data > path`; errors of write or close raise."""
    fd = os.open(path, flags)
    try:
        os.write(fd, data.encode() if isinstance(data, str) else data)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    os.close(fd)


def parse_timings(text):
    """The timings file: {phase: ms} and the total (last line)."""
    lines = [l.split() for l in text.strip().splitlines()]
    if not lines or lines[-1][0] != "total":
        raise AssertionError("timings file does not end with a total line: %r" % text)
    phases = {}
    for name, ms in lines[:-1]:
        phases[name] = float(ms)
    return phases, float(lines[-1][1]), [l[0] for l in lines[:-1]]


def _cleanup_all():
    for d in list(_live):
        try:
            d.force_cleanup()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            sys.stderr.write("cleanup of %s failed: %s\n" % (d.mount, e))


atexit.register(_cleanup_all)


# ---------------------------------------------------------------------------
# test base and runner

@contextlib.contextmanager
def own_daemon(**kwargs):
    """A daemon for one test (Daemon(**kwargs), started): stopped cleanly (exit
    0, nothing left) when the block ends, torn down by force if it raised."""
    d = Daemon(**kwargs).start()
    try:
        yield d
    except BaseException:
        d.force_cleanup()
        raise
    d.stop()


def start_shared():
    """A daemon for a whole test module, and its baseline inventory once it
    is quiet (no VMM of a sandbox, nothing in run/ but slots, no zombies)."""
    d = Daemon().start()
    base = d.core(d.wait_inventory({**d.inventory(), "qemu": [], "run": [], "zombies": []}))
    return d, base


def stop_shared(d, base):
    """The end of start_shared's daemon: every sandbox destroyed, the inventory back to base, stopped."""
    if d:
        try:
            for n in d.sandboxes():
                d.destroy(n)
            d.assert_inventory(base, timeout=15)
        finally:
            d.stop()


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout("test exceeded %d s (a FUSE request or the daemon hung?)" % TEST_TIMEOUT)


class TestCase(unittest.TestCase):
    """A per-test alarm (TEST_TIMEOUT) and errno assertions."""

    def setUp(self):
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(TEST_TIMEOUT)

    def tearDown(self):
        signal.alarm(0)

    def assertErrno(self, expected, fn, *args, **kwargs):
        return expect_errno(expected, fn, *args, **kwargs)


def _on_term(signum, frame):
    # meson kills a test that times out with SIGTERM: clean up on the way out
    raise KeyboardInterrupt("SIGTERM")


def main():
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    reason = missing_capability()
    if reason:
        print("%s: SKIP: %s" % (name, reason))
        sys.exit(SKIP_EXIT)
    if not os.access(BIN, os.X_OK):
        print("%s: FAIL: emberfs binary %s not found (ninja -C build, or set EMBERFS_BIN)" % (name, BIN))
        sys.exit(1)
    signal.signal(signal.SIGTERM, _on_term)
    t0 = time.monotonic()
    main_mod = sys.modules["__main__"]
    if len(sys.argv) > 1:  # e.g. test_robustness.py DaemonCrash, or Class.test_method
        suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:], main_mod)
    else:
        suite = unittest.defaultTestLoader.loadTestsFromModule(main_mod)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    _cleanup_all()
    n_fail = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    n_skip = len(result.skipped)
    # setUpModule/setUpClass errors are not tests that ran: only real tests count against passes
    ran_and_failed = {getattr(t, "test_case", t).id() for t, _ in result.failures + result.errors
                      if isinstance(t, unittest.TestCase)}
    n_pass = max(0, result.testsRun - len(ran_and_failed) - n_skip)
    # a SkipTest from setUpModule/setUpClass skips without running a test (testsRun 0): a skip, not a pass
    verdict = "FAIL" if n_fail else ("SKIP" if n_skip and n_pass == 0 else "PASS")
    print("%s: %s: %d passed, %d failed, %d skipped in %.1f s%s" % (
        name, verdict, n_pass, n_fail, n_skip, time.monotonic() - t0,
        "" if verdict != "SKIP" else " (%s)" % "; ".join(sorted({str(why) for _, why in result.skipped}))))
    if n_fail:
        for path in sorted(_logs):
            sys.stderr.write("daemon log kept: %s\n" % path)
    else:
        for path in _logs:
            try:
                os.unlink(path)
            except OSError:
                pass
    sys.exit(1 if n_fail else SKIP_EXIT if verdict == "SKIP" else 0)
