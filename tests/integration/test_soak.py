#!/usr/bin/env python3
"""
Soak: many create / exec / destroy cycles from parallel workers, with daemon
restarts in between, against real guests (the suite runs it under
AddressSanitizer too). The short variant runs here; the long one is
`contrib/bench.sh soak` (contrib/bench_soak.py, the same code).

Each round: W worker threads each run one warm-up cycle, then (measured) C
more: mkdir a sandbox, wait for it, exec `echo NAME` and check the answer,
rmdir. A sandbox "anchor" lives through the rounds. The daemon keeps a
pinned pool of 2 warm slots, so a quiet daemon always holds the same.
Between rounds it is restarted, by kill -9 (the anchor must be re-adopted:
the same VMM answers) and by SIGTERM (everything goes; the anchor is made
again) in turn. In each round, between the quiet daemon after the warm-up
and the quiet daemon after the C cycles:
- the leak inventory (QEMU processes, mounts, loop devices, run and VM
  directories, cgroups, zombies, warm slots) is equal;
- the daemon's open descriptors, counted by kind, are equal;
- the daemon's resident memory grew by at most the allowance (16 MiB;
  32 MiB under AddressSanitizer, run with a 4 MiB quarantine).
A failed cycle is counted; any fails the test.
"""
import collections
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

POOL = 2


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def under_asan(pid):
    with open("/proc/%d/maps" % pid) as f:
        return "asan" in f.read()


def fd_kinds(pid):
    """The daemon's open descriptors by kind: socket, pipe, anon_inode:[...] or the path."""
    out = collections.Counter()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith("socket:") or t.startswith("pipe:"):
            t = t.split(":")[0]
        out[t] += 1
    return dict(out)


def slot_kind(entry):
    """"cgroup cpu", "qemu", "run", "vms" ... of an inventory's slot entry."""
    if entry.startswith("cgroup "):
        return entry.rsplit("/", 1)[0]
    return entry.split(" ")[0].split("/")[0]


def diff(a, b):
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


class Soak:
    """The soak itself; results in done, failures, leaks, rss_growth_kib, seconds."""

    def __init__(self, workers, cycles, rounds, log=sys.stderr.write):
        self.workers, self.cycles, self.rounds, self.log = workers, cycles, rounds, log
        self.failures, self.leaks, self.evidence = [], [], []
        self.done = 0
        self.rss_growth_kib = 0
        self.seconds = 0.0
        self.lock = threading.Lock()

    def cycle(self, d, name):
        try:
            os.mkdir(d.sb(name))
            try:
                try:
                    got = d.wait(name)
                except OSError as e:
                    got = "wait: %s" % e
                if got != "ready\n":
                    raise AssertionError("%s (evidence: %s)" % (got.strip(), self.keep_evidence(d, name)))
                out, ok = d.exec_plain(name, "echo %s" % name)
                if not ok or out.strip() != name.encode():
                    raise AssertionError("exec answered %r" % out)
            finally:
                os.rmdir(d.sb(name))
            with self.lock:
                self.done += 1
        except Exception as e:  # counted; the soak goes on
            with self.lock:
                self.failures.append("%s: %s" % (name, e))

    def keep_evidence(self, d, name):
        """A failed create's status, console and VMM log, copied before the rmdir takes them (kept in
        self.evidence and written next to the daemon's log); returns the file."""
        path = "%s.%s.txt" % (d.log_path[:-len(".log")], name)
        try:
            st = d.status(name)
            parts = [("status", json.dumps(st, indent=1))]
        except OSError as e:
            st, parts = {}, [("status", "unreadable: %s" % e)]
        m = re.search(r"and (/\S+/vmm\.log)", st.get("error") or "")
        for what, p in (("console", d.sb(name, "console")), ("vmm.log", m.group(1) if m else None)):
            try:
                with open(p, "rb") as f:
                    parts.append((what, f.read().decode(errors="replace")))
            except (OSError, TypeError) as e:
                parts.append((what, "unreadable: %s" % e))
        with open(path, "w") as f:
            for what, text in parts:
                f.write("==== %s ====\n%s\n" % (what, text))
        with self.lock:
            self.evidence.append((name, parts))
        return path

    def parallel(self, d, r, first, n):
        def worker(k):
            for i in range(first, first + n):
                self.cycle(d, "s%d-%d-%d" % (r, k, i))

        th = [threading.Thread(target=worker, args=(k,)) for k in range(self.workers)]
        for t in th:
            t.start()
        for t in th:
            t.join()

    def quiet(self, d):
        """The inventory (slots included) once the pool is back at its target and nothing moves."""
        d.wait_pool(POOL, timeout=120)
        inv = d.wait_quiet(quiet_for=1.0, timeout=60)
        # warm slots are other ones after the cycles (claimed and refilled): compared by kind and number
        kinds = collections.Counter(slot_kind(x) for x in inv["slots"])
        return {**inv, "slots": dict(kinds)}

    def run_round(self, d, r, allowance):
        self.parallel(d, r, 0, 1)  # warm-up
        inv0, fds0, rss0 = self.quiet(d), fd_kinds(d.pid), rss_kib(d.pid)
        self.parallel(d, r, 1, self.cycles)
        inv1, fds1, rss1 = self.quiet(d), fd_kinds(d.pid), rss_kib(d.pid)
        self.rss_growth_kib = max(self.rss_growth_kib, rss1 - rss0)
        if inv1 != inv0:
            self.leaks.append("round %d: inventory %s" % (r, diff(inv0, inv1)))
        if fds1 != fds0:
            self.leaks.append("round %d: daemon descriptors %s" % (r, diff(fds0, fds1)))
        if rss1 - rss0 > allowance:
            self.leaks.append("round %d: daemon RSS %d -> %d KiB" % (r, rss0, rss1))

    def run(self):
        t0 = time.monotonic()
        args = ["--pool", str(POOL)]
        # under ASan freed memory waits in a quarantine (256 MiB by default) and looks like growth: keep it small
        saved = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = (saved + ":" if saved else "") + "quarantine_size_mb=4"
        try:
            return self._run(t0, args)
        finally:
            if saved is None:
                del os.environ["ASAN_OPTIONS"]
            else:
                os.environ["ASAN_OPTIONS"] = saved

    def _run(self, t0, args):
        d = harness.Daemon(pool=None, extra_args=args).start()
        try:
            allowance = (32 if under_asan(d.pid) else 16) << 10
            d.create_ready("anchor")
            for r in range(self.rounds):
                self.run_round(d, r, allowance)
                self.log("  round %d: %d cycles, %d failed, leaks %d, RSS growth so far %d KiB\n" % (
                    r + 1, self.done, len(self.failures), len(self.leaks), self.rss_growth_kib))
                if r + 1 == self.rounds:
                    break
                if r % 2 == 0:
                    pid = d.status("anchor")["vmm_pid"]
                    d.kill9()
                    d = harness.Daemon(reuse=d, pool=None, extra_args=args).start()
                    st = d.status("anchor")
                    if st["state"] != "ready" or st["vmm_pid"] != pid or d.sh("anchor", "echo a").strip() != "a":
                        self.failures.append("anchor after kill -9: %s" % st)
                else:
                    d2 = harness.Daemon(reuse=d, pool=None, extra_args=args)
                    d.stop()
                    d = d2.start()
                    d.create_ready("anchor")
            d.destroy("anchor")
            d.stop()
        except BaseException:
            d.force_cleanup()
            raise
        self.seconds = time.monotonic() - t0
        return self

    def result(self):
        return {"bench": "soak", "workers": self.workers, "rounds": self.rounds, "cycles": self.done,
                "failures": len(self.failures), "leaked": len(self.leaks), "rss_growth_kib": self.rss_growth_kib,
                "seconds": round(self.seconds, 1)}


class SoakTest(harness.TestCase):
    def test_short_soak(self):
        s = Soak(workers=8, cycles=int(os.environ.get("SOAK_CYCLES", "3")), rounds=3).run()
        sys.stderr.write("\n  %s\n" % s.result())
        for f in s.failures + s.leaks:
            sys.stderr.write("  %s\n" % f)
        for name, parts in s.evidence:  # CI shows only this output: the newest lines of each part
            for what, text in parts:
                sys.stderr.write("  ---- %s: %s\n%s\n" % (name, what, "\n".join(text.splitlines()[-40:])))
        self.assertEqual(s.failures, [])
        self.assertEqual(s.leaks, [])
        self.assertEqual(s.done, 8 * (s.cycles + 1) * 3)


if __name__ == "__main__":
    harness.main()
