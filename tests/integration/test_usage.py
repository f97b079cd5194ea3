#!/usr/bin/env python3
"""
A sandbox's usage file (docs/interface.md, "usage"), against real guests:

- The figures move the right way by about the right amount: 64 MiB put in
  the guest's tmpfs raise its used memory and cache (and the VMM's RSS);
  a 2 s busy loop raises the VMM's CPU time by about that and its percent
  over the interval, which falls again when the guest idles; 24 MiB written
  to the guest's root disk raise its used bytes and the disk file's
  allocated bytes on the host.
- With --net: bytes the host fetches from the guest raise tx_bytes, bytes it
  sends to the guest raise rx_bytes.
- Reading usage never wakes a sleeping sandbox: a paused one stays paused, a
  hibernated one hibernated (no wake counted), and both answer the last
  guest sample, whose age grows (a hibernate takes one as it starts); a
  read while a hibernate runs neither blocks nor stops it; reads every 300 ms do not keep an idle sandbox from
  its idle timeout.
- A guest that does not answer (its VMM stopped for a second) costs a read
  at most the 400 ms bound, and the reads in the next second nothing; the
  last sample answers meanwhile.
- After a daemon kill -9 and restart, the hibernated sandbox's last sample
  is still there (its record keeps it).
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MiB = 1 << 20
RANGE = "10.236.0.0/16"
D = BASE = None
NET = False


def have_net():
    return os.path.exists("/dev/net/tun") and subprocess.run(["nft", "list", "tables"],
                                                             capture_output=True).returncode == 0


def setUpModule():
    global D, BASE, NET
    NET = have_net()
    args = ["--net", "--net-range", RANGE, "--net-pool", "1"] if NET else []
    D = harness.Daemon(extra_args=args).start()
    BASE = D.core(D.wait_inventory({**D.inventory(), "qemu": [], "run": [], "zombies": []}))


def tearDownModule():
    harness.stop_shared(D, BASE)


def usage(d, name, t="default"):
    return harness.read_json(d.sb(name, "usage", t=t))


def ctl(d, name, verb, t="default"):
    harness.write_file(d.sb(name, "ctl", t=t), verb)


def note(what):
    """The figures a run saw, on stderr (the test log), for comparing runs."""
    sys.stderr.write("  usage: %s\n" % what)


def check_shape(tc, u, running=True):
    tc.assertEqual(set(u), {"sampled_at_unix_ms", "state", "cpu", "memory", "disk", "net", "guest_sample"})
    tc.assertEqual(set(u["memory"]), {"vmm_rss_bytes", "vmm_pss_bytes", "guest"})
    tc.assertEqual(set(u["disk"]), {"host_allocated_bytes", "host_size_bytes", "guest"})
    if running:
        tc.assertEqual(set(u["cpu"]), {"time_ms", "percent", "interval_ms"})
        tc.assertGreater(u["memory"]["vmm_rss_bytes"], 0)
        tc.assertGreater(u["memory"]["vmm_pss_bytes"], 0)
    g = u["memory"]["guest"]
    if g is not None:
        tc.assertEqual(set(g), {"total_bytes", "used_bytes", "available_bytes", "free_bytes", "cache_bytes"})
        tc.assertEqual(g["used_bytes"], g["total_bytes"] - g["available_bytes"])
        gd = u["disk"]["guest"]
        tc.assertEqual(set(gd), {"total_bytes", "used_bytes", "available_bytes", "free_bytes"})
        tc.assertEqual(gd["used_bytes"], gd["total_bytes"] - gd["free_bytes"])
        tc.assertEqual(set(u["guest_sample"]), {"sampled_at_unix_ms", "age_ms", "fresh"})


class Usage(harness.TestCase):
    def tearDown(self):
        try:
            for n in D.sandboxes():
                D.destroy(n)
        finally:
            super().tearDown()

    def test_figures_move(self):
        D.create_ready("m")
        u0 = usage(D, "m")
        check_shape(self, u0)
        self.assertEqual(u0["state"], "ready")
        self.assertTrue(u0["guest_sample"]["fresh"], u0)
        self.assertLess(u0["guest_sample"]["age_ms"], 1000)
        g0 = u0["memory"]["guest"]
        self.assertGreater(g0["total_bytes"], 64 * MiB)

        # memory: 64 MiB in the guest's tmpfs (shared memory: used, and counted as cache)
        D.sh("m", "head -c %d /dev/zero > /tmp/big" % (64 * MiB))
        u1 = usage(D, "m")
        g1 = u1["memory"]["guest"]
        self.assertTrue(u1["guest_sample"]["fresh"])
        self.assertGreater(g1["used_bytes"] - g0["used_bytes"], 56 * MiB, (g0, g1))
        self.assertLess(g1["used_bytes"] - g0["used_bytes"], 96 * MiB, (g0, g1))
        self.assertGreater(g1["cache_bytes"] - g0["cache_bytes"], 56 * MiB, (g0, g1))
        rss0, rss1 = u0["memory"]["vmm_rss_bytes"], u1["memory"]["vmm_rss_bytes"]
        self.assertGreater(rss1 - rss0, 32 * MiB, (rss0, rss1))
        note("64 MiB in tmpfs: guest used +%.1f MiB, cache +%.1f MiB, VMM RSS +%.1f MiB" % (
            (g1["used_bytes"] - g0["used_bytes"]) / MiB, (g1["cache_bytes"] - g0["cache_bytes"]) / MiB,
            (rss1 - rss0) / MiB))
        D.sh("m", "rm /tmp/big")
        u2 = usage(D, "m")
        self.assertLess(u2["memory"]["guest"]["used_bytes"], g1["used_bytes"] - 48 * MiB)

        # CPU: a 2 s busy loop in the guest is about 2 s of the VMM's CPU time
        time.sleep(0.6)
        before = usage(D, "m")  # the reference the next percent is measured from
        t0 = time.monotonic()
        D.sh("m", "timeout 2 sh -c 'while :; do :; done'; true")
        burn = usage(D, "m")
        elapsed = time.monotonic() - t0
        dt = burn["cpu"]["time_ms"] - before["cpu"]["time_ms"]
        self.assertGreater(dt, 1200, (before["cpu"], burn["cpu"]))
        self.assertLess(dt, elapsed * 1000 * 2 + 500, (before["cpu"], burn["cpu"]))  # at most vCPUs + 1 host CPUs
        self.assertGreaterEqual(burn["cpu"]["interval_ms"], 2000, burn["cpu"])
        self.assertLess(burn["cpu"]["interval_ms"], elapsed * 1000 + 300, burn["cpu"])
        self.assertGreater(burn["cpu"]["percent"], 50, burn["cpu"])
        time.sleep(1.5)
        idle = usage(D, "m")
        note("2 s busy loop: CPU +%d ms in %.0f ms, %.1f%% over %.0f ms; idle after: %.1f%%" % (
            dt, elapsed * 1000, burn["cpu"]["percent"], burn["cpu"]["interval_ms"], idle["cpu"]["percent"]))
        self.assertLess(idle["cpu"]["percent"], burn["cpu"]["percent"] / 2, (burn["cpu"], idle["cpu"]))
        # two reads closer than the minimum interval: the second answers the first's figure
        again = usage(D, "m")
        self.assertEqual((again["cpu"]["percent"], again["cpu"]["interval_ms"]),
                         (idle["cpu"]["percent"], idle["cpu"]["interval_ms"]))

        # disk: 24 MiB on the guest's root disk
        d0 = usage(D, "m")["disk"]
        D.sh("m", "dd if=/dev/urandom of=/fill bs=1M count=24 2>/dev/null && sync")
        d1 = usage(D, "m")["disk"]
        grew = d1["guest"]["used_bytes"] - d0["guest"]["used_bytes"]
        note("24 MiB to /: guest used +%.1f MiB, disk file allocated +%.1f MiB" % (
            grew / MiB, (d1["host_allocated_bytes"] - d0["host_allocated_bytes"]) / MiB))
        self.assertGreater(grew, 22 * MiB, (d0, d1))
        self.assertLess(grew, 28 * MiB, (d0, d1))
        self.assertEqual(d1["guest"]["total_bytes"], d0["guest"]["total_bytes"])
        self.assertLess(d1["guest"]["available_bytes"], d0["guest"]["available_bytes"] - 22 * MiB)
        self.assertGreater(d1["host_allocated_bytes"] - d0["host_allocated_bytes"], 16 * MiB, (d0, d1))
        self.assertGreater(d1["host_size_bytes"], 0)

    def test_net_bytes(self):
        if not NET:
            self.skipTest("no /dev/net/tun or nft here (the daemon runs without --net)")
        st = D.create_ready("n")
        addr = st["net"]["address"]
        u0 = usage(D, "n")
        self.assertEqual(set(u0["net"]), {"rx_bytes", "tx_bytes"})
        # out of the guest: the host fetches 2 MiB from its web server
        D.sh("n", "mkdir -p /tmp/www && head -c %d /dev/zero > /tmp/www/f && httpd -p 8080 -h /tmp/www" % (2 * MiB))
        data = urllib.request.urlopen("http://%s:8080/f" % addr, timeout=10).read()
        self.assertEqual(len(data), 2 * MiB)
        u1 = usage(D, "n")
        self.assertGreater(u1["net"]["tx_bytes"] - u0["net"]["tx_bytes"], 2 * MiB, (u0["net"], u1["net"]))
        self.assertLess(u1["net"]["rx_bytes"] - u0["net"]["rx_bytes"], 1 * MiB, (u0["net"], u1["net"]))
        # into the guest: 2 MiB to a listener
        D.sh("n", "nc -l -p 9000 > /dev/null 2>&1 </dev/null &")
        deadline = time.monotonic() + 10
        while True:
            try:
                c = socket.create_connection((addr, 9000), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with c:
            c.sendall(b"\0" * (2 * MiB))
        deadline = time.monotonic() + 5
        while True:
            u2 = usage(D, "n")
            if u2["net"]["rx_bytes"] - u1["net"]["rx_bytes"] > 2 * MiB or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertGreater(u2["net"]["rx_bytes"] - u1["net"]["rx_bytes"], 2 * MiB, (u1["net"], u2["net"]))
        note("2 MiB out: tx +%d rx +%d; 2 MiB in: rx +%d" % (
            u1["net"]["tx_bytes"] - u0["net"]["tx_bytes"], u1["net"]["rx_bytes"] - u0["net"]["rx_bytes"],
            u2["net"]["rx_bytes"] - u1["net"]["rx_bytes"]))

    def test_sleeping_is_not_woken(self):
        D.create_ready("s")
        D.sh("s", "head -c %d /dev/zero > /tmp/mark" % (16 * MiB))
        u0 = usage(D, "s")
        self.assertTrue(u0["guest_sample"]["fresh"])

        # paused: the VMM's figures, the guest's last sample, growing older
        ctl(D, "s", "pause")
        p1 = usage(D, "s")
        time.sleep(0.5)
        p2 = usage(D, "s")
        st = D.status("s")
        self.assertEqual((st["state"], st["wakes"]), ("paused", 0), st)
        for p in (p1, p2):
            check_shape(self, p)
            self.assertEqual(p["state"], "paused")
            self.assertFalse(p["guest_sample"]["fresh"], p)
            self.assertEqual(p["guest_sample"]["sampled_at_unix_ms"], u0["guest_sample"]["sampled_at_unix_ms"])
            self.assertEqual(p["memory"]["guest"], u0["memory"]["guest"])
        self.assertGreaterEqual(p2["guest_sample"]["age_ms"] - p1["guest_sample"]["age_ms"], 450, (p1, p2))
        self.assertLess(p2["cpu"]["percent"], 20, p2["cpu"])  # vCPUs stopped
        ctl(D, "s", "resume")

        # a read while a hibernate runs: neither waits for it nor stops it
        u1 = usage(D, "s")
        self.assertTrue(u1["guest_sample"]["fresh"])
        result = {}

        def hibernate():
            try:
                ctl(D, "s", "hibernate")
                result["ok"] = True
            except OSError as e:
                result["err"] = e

        hib_start_ms = time.time() * 1000
        th = threading.Thread(target=hibernate)
        th.start()
        slowest = 0.0
        reads = 0
        while th.is_alive():
            t0 = time.monotonic()
            u = usage(D, "s")
            slowest = max(slowest, time.monotonic() - t0)
            reads += 1
            self.assertIn(u["state"], ("ready", "hibernated"))
        th.join()
        self.assertEqual(result, {"ok": True})
        self.assertLess(slowest, 1.0, "a usage read took %.2f s during a hibernate" % slowest)
        note("%d reads during a hibernate, the slowest %.1f ms" % (reads, slowest * 1000))
        self.assertGreater(reads, 0)

        h1 = usage(D, "s")
        time.sleep(0.5)
        h2 = usage(D, "s")
        st = D.status("s")
        self.assertEqual((st["state"], st["wakes"], st["vmm_pid"]), ("hibernated", 0, None), st)
        for h in (h1, h2):
            check_shape(self, h, running=False)
            self.assertEqual(h["state"], "hibernated")
            self.assertIsNone(h["cpu"])
            self.assertIsNone(h["memory"]["vmm_rss_bytes"])
            self.assertFalse(h["guest_sample"]["fresh"])
            self.assertGreater(h["memory"]["guest"]["used_bytes"], 16 * MiB)
            self.assertGreater(h["disk"]["host_allocated_bytes"], 0)
        self.assertGreaterEqual(h2["guest_sample"]["age_ms"] - h1["guest_sample"]["age_ms"], 450, (h1, h2))
        # the hibernate sampled the guest as it started: the figures it fell asleep with
        self.assertGreaterEqual(h1["guest_sample"]["sampled_at_unix_ms"], hib_start_ms - 5, h1)
        self.assertEqual(h1["guest_sample"], {**h2["guest_sample"], "age_ms": h1["guest_sample"]["age_ms"]})
        # an exec wakes it (as documented), and the next read samples it again
        self.assertEqual(D.sh("s", "hostname").strip(), "s")
        u2 = usage(D, "s")
        self.assertTrue(u2["guest_sample"]["fresh"])
        self.assertEqual(D.status("s")["wakes"], 1)

    def test_unresponsive_guest(self):
        # a VMM that stops answering (SIGSTOP, shorter than the watchdog's 2 s): a read waits
        # at most its 400 ms bound, then answers the last sample; the next within a second
        # does not ask again; once it runs again, a read samples it afresh
        st = D.create_ready("h")
        u0 = usage(D, "h")
        self.assertTrue(u0["guest_sample"]["fresh"])
        pid = st["vmm_pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            u1 = usage(D, "h")
            first = time.monotonic() - t0
            t0 = time.monotonic()
            u2 = usage(D, "h")
            second = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        note("a stopped VMM: reads took %.0f ms, then %.0f ms" % (first * 1000, second * 1000))
        for u in (u1, u2):
            self.assertEqual(u["state"], "ready")
            self.assertFalse(u["guest_sample"]["fresh"], u)
            self.assertEqual(u["guest_sample"]["sampled_at_unix_ms"], u0["guest_sample"]["sampled_at_unix_ms"])
        self.assertGreater(first, 0.35)
        self.assertLess(first, 0.9)
        self.assertLess(second, 0.2)
        time.sleep(1.1)
        u3 = usage(D, "h")
        self.assertTrue(u3["guest_sample"]["fresh"], u3)
        self.assertEqual(D.status("h")["state"], "ready")
        self.assertEqual(D.sh("h", "hostname").strip(), "h")

    def test_reads_do_not_keep_it_awake(self):
        with D.template("idle", bake=True, idle_timeout_s=2):
            D.create_ready("i", t="idle")
            deadline = time.monotonic() + 12
            fresh = 0
            while D.status("i", t="idle")["state"] != "hibernated" and time.monotonic() < deadline:
                fresh += usage(D, "i", t="idle")["guest_sample"]["fresh"]
                time.sleep(0.3)
            st = D.status("i", t="idle")
            self.assertEqual((st["state"], st["idle_hibernations"], st["wakes"]), ("hibernated", 1, 0), st)
            self.assertGreater(fresh, 0)
            u = usage(D, "i", t="idle")
            self.assertEqual(u["state"], "hibernated")
            self.assertIsNotNone(u["memory"]["guest"])


class Restart(harness.TestCase):
    def test_last_sample_survives_a_restart(self):
        d = harness.Daemon().start()
        d2 = None
        try:
            d.create_ready("r")
            u0 = usage(d, "r")
            self.assertTrue(u0["guest_sample"]["fresh"])
            ctl(d, "r", "hibernate")
            self.assertEqual(d.status("r")["state"], "hibernated")
            u0 = usage(d, "r")  # the hibernate's own sample
            self.assertFalse(u0["guest_sample"]["fresh"])
            d.kill9()
            d2 = harness.Daemon(reuse=d).start()
            st = d2.status("r")
            self.assertEqual((st["state"], st["adoptions"], st["wakes"]), ("hibernated", 1, 0), st)
            u1 = usage(d2, "r")
            self.assertEqual(u1["state"], "hibernated")
            self.assertFalse(u1["guest_sample"]["fresh"])
            self.assertEqual(u1["guest_sample"]["sampled_at_unix_ms"], u0["guest_sample"]["sampled_at_unix_ms"])
            self.assertEqual(u1["memory"]["guest"], u0["memory"]["guest"])
            self.assertEqual(u1["disk"]["guest"], u0["disk"]["guest"])
            self.assertGreater(u1["guest_sample"]["age_ms"], u0["guest_sample"]["age_ms"])
            self.assertEqual(d2.status("r")["state"], "hibernated")
            d2.destroy("r")
            d2.stop()
        except BaseException:
            (d2 or d).force_cleanup()
            raise


if __name__ == "__main__":
    harness.main()
