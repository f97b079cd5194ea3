#!/usr/bin/env python3
"""
Re-adoption after a daemon crash, against real guests: `contrib/bench.sh
adopt` runs this (it can also run alone, from the repository, as root).

One daemon (--pool 0) gets BENCH_ADOPT_N sandboxes (default 16; every
fourth paused; each with one procs/ process that runs throughout), then BENCH_ADOPT_ROUNDS times (default 5): kill -9 of the
daemon, a restart on the same state dir and mount point, timed from the
start of the new process until

  mounted   the mount answers (the harness's check),
  all       every sandbox's status was read, its procs/ process still
            running with the same guest pid, and every running one answered
            an exec of `true` (the guests are taken over, not restarted:
            their VMM pids must not change),

and the daemon's own figure from its log ("re-adopted N sandboxes in X ms":
reading the records, reconnecting QMP and the agents, in parallel).
Then each paused sandbox (re-adopted paused every round) is resumed: its
new agent connection settled, its procs/ process reattached, an exec run.
Baseline: the same kill and restart with no sandbox (all destroyed first),
BENCH_ADOPT_ROUNDS times; the ratio is mounted p50 with sandboxes over
mounted p50 without.

Output: a table on stderr and one JSON line on stdout:
{"bench":"adopt","n":16,"rounds":5,"mounted_p50_ms":..,"all_p50_ms":..,"adopt_p50_ms":..,
 "baseline_mounted_p50_ms":..,"resume_paused_p50_ms":..,"ratio_mounted_over_baseline":..}
"""
import json
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402

N = int(os.environ.get("BENCH_ADOPT_N", "16"))
ROUNDS = int(os.environ.get("BENCH_ADOPT_ROUNDS", "5"))


def p50(v):
    v = sorted(v)
    return v[(len(v) - 1) // 2] if v else None


def log(msg):
    sys.stderr.write("bench: adopt: %s\n" % msg)


def restart(d, names, paused):
    """kill -9, restart; returns (new daemon, mounted ms, all ms, the daemon's adopt ms or None)."""
    pids = {n: d.status(n)["vmm_pid"] for n in names}
    jobs = {n: harness.read_json(d.sb(n, "procs", "p", "status"))["pid"] for n in names}
    d.kill9()
    d2 = harness.Daemon(reuse=d)
    t0 = time.perf_counter()
    d2.start(wait_default=False)
    mounted = (time.perf_counter() - t0) * 1000
    for n in names:
        st = d2.status(n)
        want = "paused" if n in paused else "ready"
        if st["state"] != want or st["vmm_pid"] != pids[n]:
            raise AssertionError("%s after the restart: %s, VMM %s (was %s)" % (n, st["state"], st["vmm_pid"], pids[n]))
        pst = harness.read_json(d2.sb(n, "procs", "p", "status"))
        if pst["state"] != "running" or pst["pid"] != jobs[n]:
            raise AssertionError("%s's procs/p after the restart: %s" % (n, pst))
        if n not in paused:
            out, ok = d2.exec_plain(n, "true")
            if not ok:
                raise AssertionError("exec in %s failed after the restart: %r" % (n, out))
    every = (time.perf_counter() - t0) * 1000
    m = re.findall(r"re-adopted (\d+) sandboxes in ([0-9.]+) ms", d2.log_text())
    return d2, mounted, every, (float(m[-1][1]) if m else None)


def main():
    why = harness.missing_capability()
    if why:
        log("cannot run: %s" % why)
        return 77
    d = harness.Daemon().start()
    try:
        names = ["ad%d" % k for k in range(N)]
        paused = set(names[::4])
        for n in names:
            d.create(n)
        for n in names:
            d.wait_ready(n)
            os.mkdir(d.sb(n, "procs", "p"))
            harness.write_file(d.sb(n, "procs", "p", "cmd"), b"exec sleep 100000\n")
            harness.wait_for(lambda: harness.read_json(d.sb(n, "procs", "p", "status"))["pid"], 10, "procs/p")
        for n in paused:
            harness.write_file(d.sb(n, "ctl"), b"pause")
        rows = []
        for r in range(ROUNDS):
            d, mounted, every, adopt = restart(d, names, paused)
            rows.append((mounted, every, adopt))
            log("round %d: mounted %.1f ms, all answered %.1f ms, daemon's adoption %s ms" % (
                r + 1, mounted, every, adopt))
        # the paused ones, re-adopted paused ROUNDS times: a resume settles the
        # new connection (ping) and reattaches the procs/ process
        resumed = []
        for n in sorted(paused):
            jpid = harness.read_json(d.sb(n, "procs", "p", "status"))["pid"]
            t = time.perf_counter()
            harness.write_file(d.sb(n, "ctl"), b"resume")
            pst = harness.read_json(d.sb(n, "procs", "p", "status"))
            out, ok = d.exec_plain(n, "true")
            resumed.append((time.perf_counter() - t) * 1000)
            if d.status(n)["state"] != "ready" or pst["state"] != "running" or pst["pid"] != jpid or not ok:
                raise AssertionError("%s after its resume: %s, procs/p %s, exec %r" % (n, d.status(n), pst, out))
        log("resume of the %d re-adopted paused sandboxes (then an exec): p50 %.1f ms" % (len(resumed), p50(resumed)))
        for n in names:
            d.destroy(n)
        base = []
        for r in range(ROUNDS):
            d, mounted, _, _ = restart(d, [], set())
            base.append(mounted)
        d.stop()
    except BaseException:
        d.force_cleanup()
        raise
    res = {"bench": "adopt", "n": N, "rounds": ROUNDS,
           "mounted_p50_ms": round(p50([x[0] for x in rows]), 1),
           "all_p50_ms": round(p50([x[1] for x in rows]), 1),
           "adopt_p50_ms": p50([x[2] for x in rows if x[2] is not None]),
           "baseline_mounted_p50_ms": round(p50(base), 1),
           "resume_paused_p50_ms": round(p50(resumed), 1) if resumed else None}
    res["ratio_mounted_over_baseline"] = round(res["mounted_p50_ms"] / res["baseline_mounted_p50_ms"], 2)
    sys.stderr.write("adopt: kill -9 of the daemon and a restart, %d rounds (ms, p50)\n" % ROUNDS)
    sys.stderr.write("  sandboxes  mounted  all answered  daemon's adoption\n")
    sys.stderr.write("  %9d  %7.1f  %12.1f  %17s\n" % (N, res["mounted_p50_ms"], res["all_p50_ms"], res["adopt_p50_ms"]))
    sys.stderr.write("  %9d  %7.1f  %12s  %17s\n" % (0, res["baseline_mounted_p50_ms"], "-", "-"))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
