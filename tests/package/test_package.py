#!/usr/bin/env python3
"""
The Debian package, built and installed the way an operator would
(docs/operations.md, "Installing"), in a clean Debian 12 root:

  1. dpkg-buildpackage -b on a copy of the tree (the files git tracks);
  2. a clean Debian 12 root (mmdebstrap --variant=apt, with systemd as a
     host has it);
  3. `apt-get install --no-install-recommends ./emberfs_*.deb` in it (its
     dependencies from Debian: what it Depends on must be enough);
  4. the service started from what the package installed: systemd is not
     PID 1 on these machines, so this test plays systemd's part for the
     installed unit (named as such: SystemdStandIn below). It runs the unit's
     ExecStartPre= (the guest image is built from Debian's packages, its
     kernel .deb seeded from the host's image cache when there), ExecStart=
     with a NOTIFY_SOCKET it listens on and a JOURNAL_STREAM, and ExecStop=,
     with the environment the unit's Environment= and EnvironmentFile= give.
     `systemd-analyze verify` checks the unit with systemd's own parser.
     The daemon must send READY=1 only once MOUNT/templates/default/status
     says ready, log with syslog priorities, and send STOPPING=1;
  5. a sandbox made with the installed Python client (`import emberfs`),
     a command run in it, destroyed; the man pages are there; a kill -9 of
     the daemon and the unit's lines again (Restart=on-failure): a sandbox
     made before is re-adopted as it was; emberfs-e2b.service's lines, the
     API answering with the key its ExecStartPre made;
  6. the documented stop (ExecStop: fusermount3 -u), then
     `apt-get purge --autoremove emberfs`: nothing of emberfs is left in the
     root (no path naming it, /var/lib/emberfs and /var/cache/emberfs gone),
     and on the host no mount, QEMU or loop device of the root.

Needs root, dpkg-buildpackage and debhelper, mmdebstrap, and Debian's
mirror (apt's .debs are kept in /var/cache/emberfs-test/debs between runs).
Exit 0 pass, 77 skip (a tool or root missing), 1 fail.
"""

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEB_CACHE = os.environ.get("EMBERFS_TEST_DEB_CACHE", "/var/cache/emberfs-test/debs")
SKIP = 77
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)
    log(f"ok: {what}")


def build_deb(work):
    """dpkg-buildpackage -b on the files git has or would add (not the ignored): the .deb's path."""
    files = run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True).stdout.split(b"\0")
    version = run(["dpkg-parsechangelog", "-l", os.path.join(REPO, "debian/changelog"), "-S", "Version"],
                  capture_output=True, text=True).stdout.strip()
    src = os.path.join(work, f"emberfs-{version}")
    for f in files:
        if not f:
            continue
        f = f.decode()
        if not os.path.lexists(os.path.join(REPO, f)):
            continue  # deleted in the work tree
        os.makedirs(os.path.dirname(os.path.join(src, f)), exist_ok=True)
        shutil.copy2(os.path.join(REPO, f), os.path.join(src, f), follow_symlinks=False)
    with open(os.path.join(work, "dpkg-buildpackage.log"), "w") as out:
        r = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        print(open(os.path.join(work, "dpkg-buildpackage.log")).read()[-4000:], file=sys.stderr)
        raise Failure(f"dpkg-buildpackage failed ({r.returncode})")
    debs = glob.glob(os.path.join(work, f"emberfs_{version}_*.deb"))
    check(len(debs) == 1, f"dpkg-buildpackage made emberfs_{version}: {debs}")
    return debs[0]


def make_root(root):
    os.makedirs(DEB_CACHE, exist_ok=True)
    run(["mmdebstrap", "--quiet", "--variant=apt", "--skip=essential/unlink", "--skip=cleanup/apt/lists",
         "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
         f"--setup-hook=sync-in {DEB_CACHE} /var/cache/apt/archives/",
         f"--customize-hook=sync-out /var/cache/apt/archives {DEB_CACHE}",
         # a host: Debian 12 with systemd (the unit is checked against its targets)
         "--include=systemd,systemd-sysv",
         "bookworm", root])


def tree(root):
    """Every path in the root but apt's and dpkg's own records, caches and logs."""
    skip = ("/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt", "/var/cache/debconf", "/var/log",
            "/tmp", "/proc", "/sys", "/dev", "/run", "/etc/ld.so.cache", "/var/cache/ldconfig")
    out = set()
    for d, dirs, files in os.walk(root):
        rel = d[len(root):] or "/"
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            dirs[:] = []
            continue
        for n in dirs + files:
            out.add(os.path.join(rel, n))
    return out


class Mounts:
    """The host's /proc, /sys and /dev in the root, while the daemon runs there."""

    def __init__(self, root):
        self.root = root
        self.done = []

    def bind(self, what, rel, rec=True):
        where = self.root + rel
        os.makedirs(where, exist_ok=True)
        run(["mount", "--rbind" if rec else "--bind", what, where])
        run(["mount", "--make-rslave", where])
        self.done.append(where)

    def release(self):
        for where in reversed(self.done):
            subprocess.run(["umount", "-R", "-l", where])
        self.done = []


def chroot(root, *cmd, **kw):
    return run(["chroot", root, *cmd], **kw)


class SystemdStandIn:
    """
    systemd's part for the installed unit, as far as this test needs it
    (systemd is not PID 1 here): Environment=, EnvironmentFile=, the Exec
    lines with $VAR / ${VAR} expanded as systemd does, a leading "-" that
    ignores failure, and the notify socket.
    """

    def __init__(self, root, unit_rel):
        self.root = root
        self.lines = {}
        for line in open(root + unit_rel):
            line = line.strip()
            if not line or line[0] in "#;[" or "=" not in line:
                continue
            k, v = line.split("=", 1)
            self.lines.setdefault(k, []).append(v)
        self.env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        for e in self.lines.get("Environment", []):
            for kv in e.split():
                k, v = kv.split("=", 1)
                self.env[k] = v
        for f in self.lines.get("EnvironmentFile", []):
            f = f.lstrip("-")
            if os.path.exists(root + f):
                for line in open(root + f):
                    line = line.strip()
                    if line and not line.startswith("#"):
                        k, v = line.split("=", 1)
                        self.env[k] = v

    def argv(self, line):
        ignore = line.startswith("-")
        words = []
        for w in line.lstrip("-").split():
            m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
            if m:  # $VAR: split into words (systemd.service(5), "Command lines")
                words += self.env.get(m.group(1), "").split()
            else:
                words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda x: self.env.get(x.group(1), ""), w))
        return ignore, words

    def exec(self, key, **kw):
        for line in self.lines.get(key, []):
            ignore, argv = self.argv(line)
            log(f"{key}: {' '.join(argv)}")
            r = subprocess.run(["chroot", self.root, *argv], env=self.env, **kw)
            if r.returncode and not ignore:
                raise Failure(f"{key} {argv} exited {r.returncode}")


def main():
    if os.geteuid() != 0:
        print("test_package: needs root", file=sys.stderr)
        return SKIP
    for tool in ("dpkg-buildpackage", "dh", "mmdebstrap", "chroot", "systemd-analyze"):
        if not shutil.which(tool):
            print(f"test_package: {tool} missing (contrib/deps.sh installs it)", file=sys.stderr)
            return SKIP
    work = tempfile.mkdtemp(prefix="emberfs-pkgtest-", dir="/var/tmp")
    root = os.path.join(work, "root")
    mounts = Mounts(root)
    daemon = None
    ok = False
    try:
        deb = build_deb(work)
        log(f"built {os.path.basename(deb)}")
        make_root(root)
        log("made a clean Debian 12 root")
        before = tree(root)

        shutil.copy(deb, root + "/tmp/")
        mounts.bind(DEB_CACHE, "/var/cache/apt/archives", rec=False)
        # Depends only: what the package declares it needs must be enough
        chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", "/tmp/" + os.path.basename(deb),
               env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
               stdout=subprocess.DEVNULL)
        mounts.release()
        log("installed it with apt-get")
        for f in ("/usr/bin/emberfs", "/usr/bin/emberfs-e2b", "/usr/libexec/emberfs/emberfs-agent",
                  "/usr/libexec/emberfs/build-image", "/usr/libexec/emberfs/e2b-key",
                  "/lib/systemd/system/emberfs.service", "/lib/systemd/system/emberfs-e2b.service",
                  "/etc/emberfs/emberfs.conf", "/usr/share/man/man8/emberfs.8.gz",
                  "/usr/share/man/man8/emberfs-e2b.8.gz", "/usr/share/man/man5/emberfs.5.gz"):
            check(os.path.exists(root + f), f"installed {f}")
        pyinit = glob.glob(root + "/usr/lib/python3/dist-packages/emberfs/__init__.py")
        check(len(pyinit) == 1, "the Python module is in /usr/lib/python3/dist-packages")
        r = run(["systemd-analyze", "verify", f"--root={root}", "emberfs.service", "emberfs-e2b.service"],
                capture_output=True, text=True, check=False)
        # man pages are looked up with man(1), which a clean root does not have
        problems = [l for l in (r.stdout + r.stderr).splitlines() if l.strip() and "man emberfs" not in l]
        check(not problems, f"systemd-analyze verify: {problems or 'clean'}")

        # the kernel .deb the host's image builds already fetched (the image cache keys by it)
        seed = sorted(glob.glob(os.path.join(REPO, ".image", "cache", "linux-image-*.deb")))
        if seed:
            os.makedirs(root + "/var/cache/emberfs/image/cache", exist_ok=True)
            shutil.copy(seed[-1], root + "/var/cache/emberfs/image/cache/")

        # the root a mount point of its own, as on a host: each VMM's jail makes
        # its mount namespace private and pivots into a root of its own
        mounts.bind(root, "", rec=False)
        mounts.bind("/proc", "/proc")
        mounts.bind("/sys", "/sys")
        mounts.bind("/dev", "/dev")
        unit = SystemdStandIn(root, "/lib/systemd/system/emberfs.service")
        mnt = unit.env["EMBERFS_MOUNT"]
        check(unit.lines.get("Type") == ["notify"], "the unit is Type=notify")
        with open(os.path.join(work, "image.log"), "w") as out:
            unit.exec("ExecStartPre", stdout=out, stderr=subprocess.STDOUT)
        log("ExecStartPre done (the guest image is built)")

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(root + "/run/emberfs-test-notify")
        sock.settimeout(1)
        unit.env["NOTIFY_SOCKET"] = "/run/emberfs-test-notify"
        errlog = open(os.path.join(work, "daemon.log"), "w+")
        st = os.fstat(errlog.fileno())
        unit.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        msgs = []

        def start():
            """ExecStart, then its notify messages until READY=1: the daemon."""
            ignore, argv = unit.argv(unit.lines["ExecStart"][0])
            log(f"ExecStart: {' '.join(argv)}")
            d = subprocess.Popen(["chroot", root, *argv], env=unit.env, stdout=errlog, stderr=errlog)
            deadline = time.monotonic() + 300
            while True:
                if d.poll() is not None:
                    raise Failure(f"the daemon exited {d.returncode} before READY=1")
                if time.monotonic() > deadline:
                    raise Failure(f"no READY=1 in 300 s: {msgs}")
                try:
                    msgs.append(sock.recv(4096).decode())
                except socket.timeout:
                    continue
                if "READY=1" in msgs[-1]:
                    status = open(root + mnt + "/templates/default/status").read()
                    check('"state":"ready"' in status.replace(" ", ""),
                          "READY=1 came once the template default was ready")
                    return d

        daemon = start()
        log(f"notify messages: {msgs}")

        client = ("import emberfs\n"
                  f"m = emberfs.Mount({mnt!r})\n"
                  "with m.create('default', 'pkg') as sb:\n"
                  "    r = sb.run('echo hi from $(uname -r)')\n"
                  "    print(r.exit_code, r.stdout.strip())\n")
        out = chroot(root, "python3", "-c", client, capture_output=True, text=True, env=unit.env)
        log(f"client: {out.stdout.strip()}")
        check(re.fullmatch(r"0 hi from \S+-cloud-amd64", out.stdout.strip()) is not None,
              "a sandbox made with the installed client ran a command")
        check(not os.path.exists(root + mnt + "/templates/default/sandboxes/pkg"), "and was destroyed")

        # Restart=on-failure: the daemon dies (kill -9), the restart runs the
        # unit's lines again, and the sandbox is re-adopted as it was
        sb = root + mnt + "/templates/default/sandboxes/keep"
        os.mkdir(sb)
        check(open(sb + "/wait").read().strip() == "ready", "a sandbox made with mkdir is ready")
        with open(sb + "/exec", "w") as f:
            f.write("echo kept > /root/mark")
        daemon.kill()
        daemon.wait()
        unit.exec("ExecStartPre", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon = start()
        fd = os.open(sb + "/exec", os.O_RDWR)
        try:
            os.write(fd, b"cat /root/mark")
            out = os.read(fd, 4096)
        finally:
            os.close(fd)
        check(out == b"kept\n", f"after kill -9 and the restart the sandbox is back, its guest as it was: {out!r}")
        os.rmdir(sb)

        # emberfs-e2b.service, on a free port (as if set in emberfs.conf)
        e2b = SystemdStandIn(root, "/lib/systemd/system/emberfs-e2b.service")
        check(e2b.lines.get("BindsTo") == ["emberfs.service"], "emberfs-e2b.service is bound to emberfs.service")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        e2b.env["EMBERFS_E2B_LISTEN"] = f"127.0.0.1:{port}"
        e2b.exec("ExecStartPre", stdout=subprocess.DEVNULL)
        key = open(root + "/var/lib/emberfs-e2b/keys").read().split()[0]
        check(re.fullmatch(r"e2b_[0-9a-f]{32}", key) is not None, "its ExecStartPre made an API key")
        ignore, argv = e2b.argv(e2b.lines["ExecStart"][0])
        log(f"ExecStart: {' '.join(argv)}")
        e2blog = open(os.path.join(work, "e2b.log"), "w+")
        st = os.fstat(e2blog.fileno())
        e2b.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        api = subprocess.Popen(["chroot", root, *argv], env=e2b.env, stdout=e2blog, stderr=e2blog)
        try:
            listed = None
            for _ in range(100):
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/sandboxes", headers={"X-API-Key": key})
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        listed = (resp.status, json.load(resp))
                    break
                except (ConnectionError, urllib.error.URLError):
                    time.sleep(0.1)
            check(listed == (200, []), f"emberfs-e2b answers GET /sandboxes with the key: {listed}")
        finally:
            api.terminate()
            api.wait(timeout=30)
        e2blog.seek(0)
        check(re.search(r"^<6>info: e2b: serving the E2B API for ", e2blog.read(), re.M) is not None,
              "emberfs-e2b logs with syslog priorities too")

        unit.exec("ExecStop")
        rc = daemon.wait(timeout=120)
        daemon = None
        check(rc == 0, f"the daemon exited 0 after ExecStop ({rc})")
        try:
            while True:
                msgs.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            pass
        check(any("STOPPING=1" in m for m in msgs), "STOPPING=1 was sent")
        errlog.seek(0)
        text = errlog.read()
        check(re.search(r"^<6>info: emberfs \S+ mounted on ", text, re.M) is not None,
              "log lines carry syslog priorities for the journal")
        check("emberfs[" not in text, "and no timestamps of their own")
        mounts.release()

        r = run(["grep", "-c", f" {root}", "/proc/self/mounts"], capture_output=True, text=True, check=False)
        check(r.stdout.strip() == "0", "no mount left in the root")
        r = run(["pgrep", "-f", root], capture_output=True, text=True, check=False)
        check(r.stdout.strip() == "", "no process of the root left")
        r = run(["losetup", "-l", "-n", "-O", "BACK-FILE"], capture_output=True, text=True)
        check(root not in r.stdout, "no loop device of the root left")

        mounts.bind(DEB_CACHE, "/var/cache/apt/archives", rec=False)
        chroot(root, "apt-get", "purge", "-y", "-q", "--autoremove", "emberfs",
               env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
               stdout=subprocess.DEVNULL)
        mounts.release()
        after = tree(root)
        left = sorted(p for p in after if "emberfs" in p)
        check(not left, f"nothing of emberfs left after the purge: {left[:10]}")
        extra = sorted(after - before)
        log(f"paths the install and purge of emberfs and its dependencies left: {len(extra)} {extra[:20]}")
        ok = True
    except (Failure, subprocess.CalledProcessError) as e:
        log(f"FAIL: {e}")
    finally:
        if daemon is not None and daemon.poll() is None:
            subprocess.run(["chroot", root, "fusermount3", "-u", "/run/emberfs"])
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        mounts.release()
        still = [l for l in open("/proc/self/mounts") if f" {work}" in l]
        if still:  # never rm -rf into the host's /proc, /sys or /dev
            log(f"FAIL: mounts left under {work}, not removed: {still}")
            ok = False
        elif ok or not os.environ.get("EMBERFS_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    print(f"test_package: {'passed' if ok else 'FAILED'} in {time.monotonic() - T0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
