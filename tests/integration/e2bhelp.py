"""
What test_e2b.py and contrib/bench_e2b.py share: the python image as a
template (its image has /bin/bash, which the E2B SDK runs every command
with), the E2B SDK installed from tests/e2b/package-lock.json, and an
emberfs-e2b process on a loopback port in front of a harness daemon's mount.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import http.client

import harness

E2B_BIN = os.environ.get("EMBERFS_E2B_BIN") or os.path.join(harness.REPO, "build", "e2b", "emberfs-e2b")
SDK_DIR = os.path.join(harness.REPO, "tests", "e2b")
PY_SCRIPT = os.path.join(harness.REPO, "contrib", "build-python-image.sh")
SDK_SCRIPT = os.path.join(harness.REPO, "contrib", "e2b-sdk.sh")
BUILD_TIMEOUT = 1200  # a cold python image build: about 80 s here
BAKE_TIMEOUT = 600  # the first bake of the image unpacks and formats about 250 MiB
NET_RANGE = "10.238.0.0/16"  # no other test or bench uses it


class Unavailable(Exception):
    """A capability is missing (exit 77 with this reason)."""


def python_image_ref():
    """The python image's reference (the script's last stdout line); Unavailable on its exit 77."""
    try:
        r = subprocess.run([PY_SCRIPT], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s took more than %d s" % (PY_SCRIPT, BUILD_TIMEOUT)) from None
    if r.returncode == harness.SKIP_EXIT:
        why = r.stderr.strip().splitlines()
        raise Unavailable("build-python-image.sh: %s" % (why[-1] if why else "exit 77"))
    if r.returncode != 0:
        raise AssertionError("%s: exit %d:\n%s" % (PY_SCRIPT, r.returncode, r.stderr[-3000:]))
    return r.stdout.strip().splitlines()[-1]


def sdk_ready():
    """Node and the pinned SDK in tests/e2b/node_modules (contrib/e2b-sdk.sh installs it if it is
    missing or differs from the lock file); Unavailable when there is no node or npm."""
    if not shutil.which("node") or not shutil.which("npm"):
        raise Unavailable("node or npm missing (the E2B SDK is a Node package; install nodejs and npm)")
    r = subprocess.run([SDK_SCRIPT], capture_output=True, text=True, timeout=600)
    if r.returncode == harness.SKIP_EXIT:
        raise Unavailable("contrib/e2b-sdk.sh: %s" % r.stderr.strip().splitlines()[-1:])
    if r.returncode != 0:
        raise AssertionError("contrib/e2b-sdk.sh: exit %d:\n%s" % (r.returncode, (r.stdout + r.stderr)[-3000:]))
    with open(os.path.join(SDK_DIR, "node_modules", "e2b", "package.json")) as f:
        return json.load(f)["version"]


def bake_template(d, t, config, timeout=BAKE_TIMEOUT):
    """Template t with config, baked (build.log read to its end waits for the bake)."""
    os.mkdir(d.tpl(t))
    harness.write_file(d.tpl(t, "config"), json.dumps(config))
    harness.write_file(d.tpl(t, "ctl"), "bake\n")
    deadline = time.monotonic() + timeout
    while True:
        st = d.template_status(t)
        if st["state"] == "ready":
            return st
        if st["state"] == "failed":
            raise AssertionError("bake of %s failed: %s\n%s" % (t, st.get("error"), d.log_tail()))
        if time.monotonic() > deadline:
            raise AssertionError("bake of %s not done after %d s: %s" % (t, timeout, st))
        d._check_alive("while baking %s" % t)
        time.sleep(0.2)


def free_port():
    """A free loopback port (the ephemeral range: none of fetch's blocked ports)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def thread_count(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


class Api:
    """emberfs-e2b on a free loopback port, serving mount, with one API key of its own."""

    def __init__(self, mount, binary=E2B_BIN):
        self.mount = mount
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="efe2b", dir="/tmp")
        self.key = "e2b_" + os.urandom(20).hex()
        self.keys = os.path.join(self.dir, "keys")
        with open(self.keys, "w") as f:
            f.write("# the test's key\n%s\n" % self.key)
        self.state = os.path.join(self.dir, "state")
        # next to the daemon's logs: harness.main() removes them after a clean run, else keeps them
        fd, self.log_path = tempfile.mkstemp(prefix="eflog-e2b", suffix=".log", dir="/tmp")
        os.close(fd)
        harness._logs.add(self.log_path)
        self.port = None
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=10.0):
        if not os.access(self.binary, os.X_OK):
            raise AssertionError("emberfs-e2b not found at %s (ninja -C build, or set EMBERFS_E2B_BIN)" % self.binary)
        self.port = free_port()
        self.log = open(self.log_path, "ab")
        argv = [self.binary, "--mount", self.mount, "--listen", "127.0.0.1:%d" % self.port,
                "--keys", self.keys, "--state", self.state]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        harness._popen_pids.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("emberfs-e2b exited (%s) while starting:\n%s" % (self.proc.returncode,
                                                                                     self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("emberfs-e2b not listening on %d after %.0f s:\n%s" % (
                    self.port, timeout, self.log_tail()))
            time.sleep(0.02)

    def env(self):
        """The environment a user of the SDK sets."""
        return {"E2B_API_KEY": self.key, "E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url}

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def threads(self):
        return thread_count(self.proc.pid)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "--- emberfs-e2b log (%s), last %d lines ---\n%s" % (
            self.log_path, n, "\n".join(self.log_text().splitlines()[-n:]))

    def stop(self, timeout=15.0):
        """SIGTERM; returns its exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                rc = None
        harness._popen_pids.discard(self.proc.pid)
        self.log.close()
        return rc

    def log_errors(self):
        """Its log lines that say "error:" (its own errors, ASan and UBSan reports), as the harness
        checks the daemon's."""
        return [line for line in self.log_text().splitlines() if "error:" in line.lower()]

    def cleanup(self):
        """Stopped (if it runs) and its key file and state gone; the log stays for harness.main()."""
        if self.alive():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- raw HTTP (no SDK)
    def conn(self, timeout=60):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, key=True, timeout=60):
        """(status, headers, body bytes) of one request on a connection of its own."""
        h = {"X-API-KEY": self.key} if key else {}
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()


def skip_if_unavailable(fn):
    try:
        return fn()
    except Unavailable as e:
        raise unittest.SkipTest(str(e)) from None
