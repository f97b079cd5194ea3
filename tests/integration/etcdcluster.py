"""
A real etcd cluster for the cluster tests (Python standard library only).

EtcdCluster starts n members (3 by default) of Debian's etcd-server
(/usr/bin/etcd, 3.4) on loopback, each with its own data dir and log in one
temporary directory, and talks to them over etcd's JSON gateway (/v3/...,
keys and values base64, docs in /work/shared/notes/cluster.md):

  start()             every member started; returns once each answers
                      POST /v3/maintenance/status and knows a leader
  urls()              "http://127.0.0.1:C0,http://127.0.0.1:C1,..." for --cluster
  kill(i)             SIGKILL member i (a crash: nothing flushed, no goodbye)
  stop_member(i)      SIGTERM member i and wait for it
  start_member(i)     start member i again on its data dir: it rejoins
  has_quorum()        a linearizable read succeeds through some member
  quorum_lost()       the opposite, within a short timeout
  leader()            the index of the current leader, or None
  keys(prefix)        {key: value} (bytes) of a range read of the prefix
  post(path, body)    one JSON gateway request to the first member that answers
  stop()              every member killed, the directory removed

Members beat every 50 ms and elect after 500 ms without a leader (etcd's
defaults are 100 and 1000), so a member's death is noticed within about half
a second. They log at "warn" to DIR/mI.log (stdout and stderr, normally
empty, to DIR/mI.out). Every cluster still running when the interpreter
exits is stopped (atexit), so a failing test leaves no etcd behind.

The same file is a command for contrib/cluster-up.sh, which keeps the members
running after it returns (their own session, no atexit), each member on an
address of its own in a network namespace of its own if given
(ADDR@NETNS: started with nsenter --net, as the script's hosts are):

  etcdcluster.py up DIR BASE_CLIENT_PORT BASE_PEER_PORT [ADDR[@NETNS]...]
                               starts one member per ADDR (3 on loopback
                               without), prints the URLs
  etcdcluster.py down DIR      stops the members whose pids DIR records
"""

import atexit
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ETCD = os.environ.get("EMBERFS_ETCD") or "/usr/bin/etcd"
HOST = "127.0.0.1"
HEARTBEAT_MS = 50
ELECTION_MS = 500

START_TIMEOUT = 30.0  # every member up with a leader
STOP_TIMEOUT = 10.0  # SIGTERM to exit, then SIGKILL
REQUEST_TIMEOUT = 2.0  # one gateway request

_live = []  # clusters to stop at exit


class EtcdError(AssertionError):
    pass


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def prefix_end(prefix):
    """The range_end that makes [prefix, end) every key starting with prefix (etcd's rule)."""
    p = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while p:
        if p[-1] < 0xff:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"  # no end: every key from prefix on


def port_free(port, host=HOST):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as etcd binds: a connection of an earlier listener in TIME_WAIT does not count, a listener does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _wait_exit(pid, timeout):
    """Waits for pid to end (reaped if it is our child). True when gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            if not os.path.exists("/proc/%d" % pid):
                return True
            try:  # a zombie of another parent is gone for our purpose
                with open("/proc/%d/stat" % pid) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return True
            except (OSError, IndexError):
                return True
        time.sleep(0.02)
    return False


class EtcdCluster:
    """n etcd members on HOST, client ports base_client_port + i, peer ports base_peer_port + i.

    workdir: the directory for the members' data dirs, logs and pid files
    (default: a new temporary one, removed by stop()). detach: the members
    get their own session and outlive this process (contrib/cluster-up.sh);
    otherwise stop() runs at exit. addrs, netns: per member, its address
    (default HOST) and the named network namespace it runs in (default: ours).
    """

    def __init__(self, base_client_port, base_peer_port, n=3, workdir=None, detach=False, addrs=None, netns=None):
        self.n = n
        self.addrs = list(addrs) if addrs else [HOST] * n
        self.netns = list(netns) if netns else [None] * n
        if len(self.addrs) != n or len(self.netns) != n:
            raise ValueError("addrs and netns name one entry per member")
        self.client_ports = [base_client_port + i for i in range(n)]
        self.peer_ports = [base_peer_port + i for i in range(n)]
        self.owns_dir = workdir is None
        self.dir = os.path.realpath(workdir or tempfile.mkdtemp(prefix="efetcd", dir="/tmp"))
        os.makedirs(self.dir, exist_ok=True)
        self.detach = detach
        self.procs = [None] * n
        # a token of its own: a member never joins another run's cluster
        self.token = "ef-" + os.path.basename(self.dir)
        if not detach:
            _live.append(self)

    # ---- addresses ----
    def name(self, i):
        return "m%d" % i

    def url(self, i):
        return "http://%s:%d" % (self.addrs[i], self.client_ports[i])

    def urls(self):
        return ",".join(self.url(i) for i in range(self.n))

    def peer_url(self, i):
        return "http://%s:%d" % (self.addrs[i], self.peer_ports[i])

    def data_dir(self, i):
        return os.path.join(self.dir, self.name(i))

    def log_path(self, i):
        return os.path.join(self.dir, self.name(i) + ".log")

    def pid_path(self, i):
        return os.path.join(self.dir, self.name(i) + ".pid")

    def argv(self, i):
        initial = ",".join("%s=%s" % (self.name(j), self.peer_url(j)) for j in range(self.n))
        # nsenter without --fork execs etcd: the pid is etcd's
        prefix = ["nsenter", "--net=/run/netns/" + self.netns[i]] if self.netns[i] else []
        return prefix + [ETCD, "--name", self.name(i), "--data-dir", self.data_dir(i),
                "--listen-client-urls", self.url(i), "--advertise-client-urls", self.url(i),
                "--listen-peer-urls", self.peer_url(i), "--initial-advertise-peer-urls", self.peer_url(i),
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new",
                "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
                "--logger", "zap", "--log-outputs", self.log_path(i), "--log-level", "warn"]

    # ---- lifecycle ----
    def start(self, timeout=START_TIMEOUT):
        busy = ["%s:%d" % (self.addrs[i], p) for i in range(self.n) if not self.netns[i]
                for p in (self.client_ports[i], self.peer_ports[i]) if not port_free(p, self.addrs[i])]
        if busy:
            raise EtcdError("etcd ports already in use: %s" % ", ".join(busy))
        for i in range(self.n):
            self._spawn(i)
        for i in range(self.n):
            self._wait_ready(i, timeout)
        return self

    def _spawn(self, i):
        if self.alive(i):
            raise EtcdError("etcd member %d is already running" % i)
        with open(os.path.join(self.dir, self.name(i) + ".out"), "ab") as out:
            self.procs[i] = subprocess.Popen(self.argv(i), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             start_new_session=self.detach)
        with open(self.pid_path(i), "w") as f:
            f.write("%d\n" % self.procs[i].pid)

    def _wait_ready(self, i, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive(i):
                raise EtcdError("etcd member %d exited (%s) while starting\n%s" % (
                    i, self.procs[i].returncode if self.procs[i] else None, self.log_tail(i)))
            try:
                st = self.status(i, timeout=0.5)
                if st.get("leader", "0") != "0":
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise EtcdError("etcd member %d not ready after %.0f s\n%s" % (i, timeout, self.log_tail(i)))
            time.sleep(0.05)

    def alive(self, i):
        p = self.procs[i]
        return p is not None and p.poll() is None

    def kill(self, i):
        """SIGKILL member i and reap it."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=STOP_TIMEOUT)

    def stop_member(self, i, timeout=STOP_TIMEOUT):
        """SIGTERM member i; SIGKILL if it has not exited within timeout."""
        p = self.procs[i]
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_TIMEOUT)

    def start_member(self, i, timeout=START_TIMEOUT, wait=True):
        """Start member i again on its data dir (it rejoins with its identity).
        wait: until it answers with a leader (which needs a quorum)."""
        self._spawn(i)
        if wait:
            self._wait_ready(i, timeout)

    def stop(self):
        """Every member killed; the directory removed if this cluster made it."""
        for i in range(self.n):
            self.kill(i)
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self in _live:
            _live.remove(self)

    def log_tail(self, i, n=20):
        lines = []
        for path in (self.log_path(i), os.path.join(self.dir, self.name(i) + ".out")):
            try:
                with open(path, "rb") as f:
                    lines += f.read().decode("utf-8", "replace").splitlines()[-n:]
            except OSError:
                pass
        return "--- etcd member %d (%s) ---\n%s" % (i, self.dir, "\n".join(lines))

    # ---- the JSON gateway ----
    def post_member(self, i, path, body, timeout=REQUEST_TIMEOUT):
        """One POST to member i; the decoded JSON answer. Raises OSError (HTTPError included) or ValueError."""
        req = urllib.request.Request(self.url(i) + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read().decode() or "{}")

    def post(self, path, body, timeout=REQUEST_TIMEOUT):
        """One POST to the first running member that answers; the last error if none does."""
        err = EtcdError("no etcd member is running")
        for i in range(self.n):
            if not self.alive(i):
                continue
            try:
                return self.post_member(i, path, body, timeout=timeout)
            except urllib.error.HTTPError as e:
                raise EtcdError("%s on member %d: HTTP %d %s" % (path, i, e.code, e.read()[:200])) from e
            except (OSError, ValueError) as e:
                err = e
        raise err

    def status(self, i, timeout=REQUEST_TIMEOUT):
        return self.post_member(i, "/v3/maintenance/status", {}, timeout=timeout)

    def leader(self):
        """The index of the member that is the leader now, or None."""
        for i in range(self.n):
            if not self.alive(i):
                continue
            try:
                st = self.status(i, timeout=0.5)
            except (OSError, ValueError):
                continue
            if st.get("leader", "0") != "0" and st["leader"] == st.get("header", {}).get("member_id"):
                return i
        return None

    def has_quorum(self, timeout=1.0):
        """A linearizable read (which needs a leader and a majority) succeeds through some member."""
        for i in range(self.n):
            if not self.alive(i):
                continue
            try:
                self.post_member(i, "/v3/kv/range", {"key": b64("\0")}, timeout=timeout)
                return True
            except (OSError, ValueError):
                continue
        return False

    def quorum_lost(self, timeout=1.0):
        return not self.has_quorum(timeout)

    def keys(self, prefix=""):
        """{key: value} (bytes) of every key starting with prefix (all keys for "")."""
        start = prefix.encode() if isinstance(prefix, str) else prefix
        r = self.post("/v3/kv/range", {"key": b64(start or b"\0"), "range_end": b64(prefix_end(start))})
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in r.get("kvs", [])}


def _stop_all():
    for c in list(_live):
        try:
            c.stop()
        except Exception as e:  # noqa: BLE001 - best effort at exit
            sys.stderr.write("stopping etcd cluster %s failed: %s\n" % (c.dir, e))


atexit.register(_stop_all)


def stop_recorded(workdir, timeout=STOP_TIMEOUT):
    """Stops the members a detached cluster recorded in workdir (mI.pid), one
    at a time (all at once, the last ones wait seconds for a leader that is
    going too): SIGTERM, SIGKILL after timeout. A pid is signalled only while
    its command line is etcd on that member's data dir (the pid may have been
    reused). Returns the pids that were running."""
    workdir = os.path.realpath(workdir)
    running = []
    for entry in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        if not entry.endswith(".pid"):
            continue
        path = os.path.join(workdir, entry)
        try:
            with open(path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        argv = _proc_cmdline(pid)
        data_dir = os.path.join(workdir, entry[:-len(".pid")])
        if argv and os.path.basename(argv[0]) == "etcd" and data_dir in argv:
            running.append(pid)
            os.kill(pid, signal.SIGTERM)
            if not _wait_exit(pid, timeout):
                os.kill(pid, signal.SIGKILL)
                _wait_exit(pid, STOP_TIMEOUT)
        os.unlink(path)
    return running


def _main(argv):
    usage = "usage: etcdcluster.py up DIR BASE_CLIENT_PORT BASE_PEER_PORT [ADDR[@NETNS]...] | down DIR"
    if len(argv) >= 5 and argv[1] == "up":
        members = [m.partition("@") for m in argv[5:]]
        c = EtcdCluster(int(argv[3]), int(argv[4]), n=len(members) or 3, workdir=argv[2], detach=True,
                        addrs=[m[0] for m in members], netns=[m[2] or None for m in members])
        try:
            c.start()
        except EtcdError as e:
            for i in range(c.n):
                c.kill(i)
            sys.stderr.write("etcdcluster.py: %s\n" % e)
            return 1
        except BaseException:
            for i in range(c.n):
                c.kill(i)
            raise
        print(c.urls())
        return 0
    if len(argv) == 3 and argv[1] == "down":
        stop_recorded(argv[2])
        return 0
    sys.stderr.write(usage + "\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
