#!/usr/bin/env python3
"""
Networking against a real daemon (--net), real namespaces, veths, taps and
nftables, and real guests (docs/interface.md, "Networking"):

- Each sandbox has a network slot: status names its host-reachable address;
  a TCP server in the guest answers the host at that address, on the warm
  and on the restore path.
- Isolation: a sandbox cannot reach another sandbox, nor a service of the
  host on its host end; the host reaches both.
- The slot's namespace holds the tap (MAC as baked) and the veth; the guest
  has the address it was baked with.
- ready_tcp_port holds readiness until the port answers.
- A fork gets its own network slot (and its copy of the parent's server
  answers there); hibernate and wake keep the sandbox's address.
- Bad configuration fails at start with a clear error (range syntax, a range
  too small for the pool, a range overlapping the host's routes), and "net"
  on a daemon without --net is refused.
- Nothing leaks: the host's namespaces, links, addresses, routes and nft
  tables are the same before the daemon starts and after it stopped.

All traffic stays between the host and namespaces the daemon made.
"""
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

RANGE = "10.232.0.0/16"
D = None
BEFORE = None


def host_net_state():
    """What networking the host has, as comparable lists."""
    def run(*argv):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    return {
        # an empty /run/netns (iproute2 makes it on first use) is no named namespace
        "netns": sorted(line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()) if os.path.isdir("/run/netns") else [],
        "links": sorted(line.split()[0].split("@")[0] for line in run("ip", "-br", "link").splitlines()),
        "addrs": sorted(run("ip", "-br", "-4", "addr").splitlines()),
        "routes": sorted(run("ip", "-4", "route", "show", "table", "all").splitlines()),
        "nft": sorted(line for line in run("nft", "list", "tables").splitlines()),
    }


def have_net():
    return os.path.exists("/dev/net/tun") and subprocess.run(["nft", "list", "tables"], capture_output=True).returncode == 0


def setUpModule():
    global D, BEFORE
    if not have_net():
        raise __import__("unittest").SkipTest("no /dev/net/tun or nft here")
    BEFORE = host_net_state()
    D = harness.Daemon(extra_args=["--net", "--net-range", RANGE, "--net-pool", "2"]).start()


def tearDownModule():
    if D:
        D.stop()
        after = host_net_state()
        if after != BEFORE:
            raise AssertionError("host networking differs after the daemon stopped:\n  before %s\n  after  %s" % (
                BEFORE, after))


def ex(name, cmd):
    out, ok = D.exec_plain(name, cmd)
    return out.decode("utf-8", "replace"), ok


def serve(name, text, port=8080):
    out, ok = ex(name, "echo %s > /tmp/index.html && httpd -p %d -h /tmp" % (text, port))
    assert ok, out


def http_get(addr, port=8080, timeout=5):
    return urllib.request.urlopen("http://%s:%d/index.html" % (addr, port), timeout=timeout).read().decode()


class Net(harness.TestCase):
    def tearDown(self):
        try:
            for n in D.sandboxes():
                D.destroy(n)
            D.set_pool(0)
            D.wait_pool(0)
        finally:
            super().tearDown()

    def test_tcp_into_guest_warm_and_restore(self):
        D.set_pool(1)
        D.wait_pool(1)
        a = D.create_ready("a")
        b = D.create_ready("b")
        self.assertEqual((a["path"], b["path"]), ("warm", "restore"))
        for st in (a, b):
            n = st["net"]
            self.assertIsNotNone(n, st)
            self.assertEqual(n["guest_address"], "172.16.0.2")
            self.assertTrue(n["address"].startswith("10.232."), n)
            self.assertTrue(os.path.exists("/run/netns/" + n["netns"]))
        self.assertNotEqual(a["net"]["address"], b["net"]["address"])
        serve("a", "from-a")
        serve("b", "from-b")
        self.assertEqual(http_get(a["net"]["address"]), "from-a\n")
        self.assertEqual(http_get(b["net"]["address"]), "from-b\n")
        # inside: the guest has the baked address and MAC, the tap the baked MAC
        out, ok = ex("a", "cat /sys/class/net/eth0/address; ip -4 addr show eth0")
        self.assertTrue(ok, out)
        self.assertIn("02:ef:00:00:00:02", out)
        self.assertIn("172.16.0.2/30", out)
        tap = subprocess.run(["ip", "netns", "exec", a["net"]["netns"], "cat", "/sys/class/net/tap0/address"],
                             capture_output=True, text=True)
        self.assertEqual(tap.stdout.strip(), "02:ef:00:00:00:01")
        # the network phases: a warm create does no network work, a restore claims a ready slot
        self.assertNotIn("net", a["timings"])
        self.assertIn(list(b["timings"]).count("net") + list(b["timings"]).count("net_build"), (1,))

    def test_isolation(self):
        a = D.create_ready("ia")
        b = D.create_ready("ib")
        serve("ib", "from-b")
        # a cannot reach b
        out, ok = ex("ia", "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 %s 8080" % b["net"]["address"])
        self.assertFalse(ok, out)
        self.assertNotIn("from-b", out)
        # nor a service of the host on its host end
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((a["net"]["host_address"], 0))
        srv.listen(1)
        srv.settimeout(4)
        port = srv.getsockname()[1]
        got = []

        def accept():
            try:
                c, _ = srv.accept()
                got.append(c.recv(100))
                c.close()
            except OSError:
                pass

        th = threading.Thread(target=accept)
        th.start()
        out, ok = ex("ia", "echo hello | nc -w 2 %s %d" % (a["net"]["host_address"], port))
        th.join()
        srv.close()
        self.assertFalse(ok, out)
        self.assertEqual(got, [])
        # the host reaches b, and b reaches itself
        self.assertEqual(http_get(b["net"]["address"]), "from-b\n")
        out, ok = ex("ib", "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 8080")
        self.assertIn("from-b", out)

    def test_ready_tcp_port_holds_readiness(self):
        with D.template("tcp", bake=True, ready_tcp_port=8081):
            D.create("t1", t="tcp")
            # the agent answers within a second or so; nothing serves 8081, so it stays creating
            deadline = time.monotonic() + 30
            while "agent" not in D.status("t1", t="tcp")["timings"] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            st = D.status("t1", t="tcp")
            self.assertIn("agent", st["timings"], st)
            self.assertEqual(st["state"], "creating", st)
            self.assertNotIn("tcp", st["timings"])
            D.destroy("t1", t="tcp")

    def test_fork_gets_its_own_network_slot(self):
        a = D.create_ready("fa")
        serve("fa", "parent")
        harness.write_file(D.sb("fa", "ctl"), "fork fb")
        b = D.wait_ready("fb")
        self.assertNotEqual(a["net"]["address"], b["net"]["address"])
        self.assertNotEqual(a["net"]["netns"], b["net"]["netns"])
        # the child's memory has the running httpd too: it answers at the child's own address
        self.assertEqual(http_get(b["net"]["address"]), "parent\n")
        ex("fb", "echo child > /tmp/index.html")
        self.assertEqual(http_get(a["net"]["address"]), "parent\n")
        self.assertEqual(http_get(b["net"]["address"]), "child\n")
        # hibernate and wake keep the address
        harness.write_file(D.sb("fb", "ctl"), "hibernate")
        harness.write_file(D.sb("fb", "ctl"), "resume")
        self.assertEqual(D.status("fb")["net"]["address"], b["net"]["address"])
        self.assertEqual(http_get(b["net"]["address"]), "child\n")

    def test_netpool_status_and_release(self):
        st = D.template_status()["netpool"]
        self.assertEqual(st["range"], RANGE)
        self.assertEqual(st["target"], 2)
        x = D.create_ready("r1")
        in_use = D.template_status()["netpool"]["in_use"]
        self.assertGreaterEqual(in_use, 1)
        ns = x["net"]["netns"]
        D.destroy("r1")
        deadline = time.monotonic() + 5
        while os.path.exists("/run/netns/" + ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(os.path.exists("/run/netns/" + ns), "released slot not destroyed")
        self.assertEqual(D.template_status()["netpool"]["in_use"], in_use - 1)


def remove_tag(tag):
    """After a failed test whose daemon was killed: what it left on the host."""
    for n in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        if n.startswith("ef%s-" % tag):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
    for line in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.splitlines():
        name = line.split()[0].split("@")[0]
        if name.startswith("ef%sh" % tag):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip", "emberfs_%s" % tag], capture_output=True)


def netns_inodes(tag):
    base = "/run/netns"
    return {os.stat(os.path.join(base, n)).st_ino for n in os.listdir(base) if n.startswith("ef%s-" % tag)}


class Restart(harness.TestCase):
    def test_kill9_then_restart_keeps_the_sandbox_slot_and_removes_the_others(self):
        args = ["--net", "--net-range", "10.233.0.0/16", "--net-pool", "2"]
        d = harness.Daemon(extra_args=args).start()
        d2 = None
        tag = None
        try:
            st = d.create_ready("k")
            tag = st["net"]["netns"][2:6]
            serve = d.exec_plain("k", "echo before > /tmp/index.html && httpd -p 8080 -h /tmp")
            self.assertTrue(serve[1], serve)
            self.assertEqual(http_get(st["net"]["address"]), "before\n")
            wait_for_netpool(d, 2)
            old = netns_inodes(tag)
            self.assertEqual(len(old), 3)  # the sandbox's and the two ready ones
            # held open, the old namespaces keep their inode numbers: a new one cannot be given one of them
            held = [os.open(os.path.join("/run/netns", n), os.O_RDONLY) for n in os.listdir("/run/netns")
                    if n.startswith("ef%s-" % tag)]
            try:
                d.kill9()
                d2 = harness.Daemon(reuse=d, extra_args=args).start()
                wait_for_netpool(d2, 2)
                now = netns_inodes(tag)
            finally:
                for fd in held:
                    os.close(fd)
            # the re-adopted sandbox keeps its namespace; the ready ones of the killed run went
            self.assertEqual(len(now), 3, now)
            self.assertEqual(len(now & old), 1, "not exactly the sandbox's namespace survived the restart")
            st2 = d2.status("k")
            self.assertEqual(st2["net"], st["net"])
            # its server, started before the crash, still answers through the same forwarding
            self.assertEqual(http_get(st["net"]["address"]), "before\n")
            st = d2.create_ready("k2")
            serve_d = d2.exec_plain("k2", "echo again > /tmp/index.html && httpd -p 8080 -h /tmp")
            self.assertTrue(serve_d[1], serve_d)
            self.assertEqual(http_get(st["net"]["address"]), "again\n")
            self.assertNotEqual(st["net"]["netns"], st2["net"]["netns"])
        except BaseException:
            (d2 or d).force_cleanup()
            if tag:
                remove_tag(tag)
            raise
        d2.stop()
        self.assertEqual(netns_inodes(tag), set())


def wait_for_netpool(d, ready, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        st = d.template_status()["netpool"]
        if st["ready"] == ready and st["building"] == 0:
            return st
        if time.monotonic() > deadline:
            raise AssertionError("netpool not at %d ready after %d s: %s" % (ready, timeout, st))
        time.sleep(0.05)


class Config(harness.TestCase):
    def _fails(self, args, pattern):
        d = harness.Daemon(extra_args=args)
        argv = [harness.BIN, "-f", "--state-dir", d.state, "--image-dir", harness.IMAGE_DIR, "--no-bake"] + \
            d.extra_args + [d.mount]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        d.force_cleanup()
        self.assertNotEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stderr, pattern)
        return p.stderr

    def test_bad_ranges(self):
        for rng, pat in (("10.240.0.0/31", r"prefix must be 8 to 30"),
                         ("10.240.0.1/16", r"host bits set"),
                         ("nonsense", r"expected A\.B\.C\.D/PREFIX"),
                         ("10.240.0.0/30", r"holds 1 slots, fewer than the pool's depth 4"),
                         (RANGE, r"overlaps the host's route")):  # the running daemon's slots use it
            with self.subTest(range=rng):
                self._fails(["--net", "--net-range", rng], pat)

    def test_net_without_net_is_refused(self):
        d = harness.Daemon().start(wait_default=False)
        try:
            os.mkdir(d.tpl("n"))
            cfg = harness.read_json(d.tpl("n", "config"))
            self.assertNotIn("net", cfg)
            self.assertErrno(errno.EINVAL, harness.write_file, d.tpl("n", "config"), json.dumps(dict(cfg, net=True)))
            self.assertIn("--net", d.template_status("n")["error"])
            os.rmdir(d.tpl("n"))
        finally:
            d.stop()


if __name__ == "__main__":
    harness.main()
