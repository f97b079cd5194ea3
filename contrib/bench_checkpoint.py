#!/usr/bin/env python3
"""
contrib/bench.sh checkpoint: checkpoints of a running sandbox, against real
guests (docs/interface.md, "Checkpoints").

One daemon (its own state dir and mount, --pool 0), one sandbox of
`default` with a counting process in procs/ (the state a checkpoint must
carry). BENCH_N rounds (default 30) of:
- save: `checkpoint cN` written to ctl, timed from the write to its return;
  the checkpoint's status gives how long the vCPUs were stopped
  (`paused_ms`) and its space right after (`exclusive_bytes`,
  `allocated_bytes`);
- rollback: `rollback cN`, timed from the ctl write until an exec of
  `echo hi` answered ("rollback"), and the ctl write alone ("rollback_ctl");
- the checkpoint removed (rmdir, untimed).
In the same run, the baseline a rollback is made of: BENCH_N wakes of the
same sandbox (`hibernate`, then `resume` timed until it returns; the counting
process is stopped first, since a running process keeps a sandbox awake).

Percentiles: nearest rank. Output: a table on stderr and JSON lines on stdout:
{"bench":"checkpoint","metric":"save","p50_ms":..,"p99_ms":..,"n":..}
{"bench":"checkpoint","metric":"paused","p50_ms":..,"p99_ms":..,"n":..}
{"bench":"checkpoint","metric":"rollback","p50_ms":..,"p99_ms":..,"n":..}
{"bench":"checkpoint","metric":"rollback_ctl","p50_ms":..,"p99_ms":..,"n":..}
{"bench":"checkpoint","metric":"wake","p50_ms":..,"p99_ms":..,"n":..}
{"bench":"checkpoint","metric":"space","exclusive_mib_median":..,"allocated_mib_median":..,"n":..}
{"bench":"checkpoint","metric":"rollback_over_wake","value":..}
"""
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402

N = int(os.environ.get("BENCH_N", "30"))
COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"
TARGETS = {"save": 30.0, "paused": 15.0, "rollback": 100.0}


def pct(v, p):
    v = sorted(v)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)] if v else None


def log(msg):
    sys.stderr.write("bench: checkpoint: %s\n" % msg)


def ms_since(t0):
    return (time.perf_counter() - t0) * 1000


def main():
    d = harness.Daemon().start()
    res = {"save": [], "paused": [], "rollback": [], "rollback_ctl": [], "wake": []}
    excl, alloc = [], []
    try:
        sb = "bench1"
        d.create_ready(sb)
        os.mkdir(d.sb(sb, "procs", "cnt"))
        harness.write_file(d.sb(sb, "procs", "cnt", "cmd"), COUNTER)
        d.sh(sb, "true")
        for i in range(N + 2):  # the first two are warm-up, not counted
            name = "c%d" % i
            t0 = time.perf_counter()
            harness.write_file(d.sb(sb, "ctl"), "checkpoint " + name)
            save = ms_since(t0)
            st = harness.read_json(d.sb(sb, "checkpoints", name, "status"))
            t0 = time.perf_counter()
            harness.write_file(d.sb(sb, "ctl"), "rollback " + name)
            rb_ctl = ms_since(t0)
            out = d.sh(sb, "echo hi")
            rb = ms_since(t0)
            if out != "hi\n":
                raise AssertionError("exec after rollback answered %r" % out)
            os.rmdir(d.sb(sb, "checkpoints", name))
            if i < 2:
                continue
            res["save"].append(save)
            res["paused"].append(st["paused_ms"])
            res["rollback"].append(rb)
            res["rollback_ctl"].append(rb_ctl)
            excl.append(st["exclusive_bytes"] / 1048576)
            alloc.append(st["allocated_bytes"] / 1048576)
        # the baseline: a wake of the same sandbox (nothing running in it, so it may hibernate)
        os.rmdir(d.sb(sb, "procs", "cnt"))
        for i in range(N + 1):
            harness.write_file(d.sb(sb, "ctl"), "hibernate")
            t0 = time.perf_counter()
            harness.write_file(d.sb(sb, "ctl"), "resume")
            w = ms_since(t0)
            if i:
                res["wake"].append(w)
        d.destroy(sb)
    finally:
        d.stop()

    sys.stderr.write("%-14s %9s %9s %9s %s\n" % ("checkpoint", "p50 ms", "p99 ms", "target", "n"))
    for k, v in res.items():
        tgt = TARGETS.get(k)
        sys.stderr.write("%-14s %9.1f %9.1f %9s %d%s\n" % (
            k, pct(v, 50), pct(v, 99), "<= %g" % tgt if tgt else "", len(v),
            "" if not tgt else ("  met" if pct(v, 50) <= tgt else "  NOT met")))
        print(json.dumps({"bench": "checkpoint", "metric": k, "p50_ms": round(pct(v, 50), 2),
                          "p99_ms": round(pct(v, 99), 2), "n": len(v)}))
    sys.stderr.write("space per checkpoint of an idle sandbox: exclusive %.2f MiB, allocated %.1f MiB (medians)\n" % (
        pct(excl, 50), pct(alloc, 50)))
    print(json.dumps({"bench": "checkpoint", "metric": "space", "exclusive_mib_median": round(pct(excl, 50), 3),
                      "allocated_mib_median": round(pct(alloc, 50), 2), "n": len(excl)}))
    ratio = pct(res["rollback_ctl"], 50) / pct(res["wake"], 50)
    sys.stderr.write("rollback (ctl) over wake, p50: %.2f\n" % ratio)
    print(json.dumps({"bench": "checkpoint", "metric": "rollback_over_wake", "value": round(ratio, 3)}))


if __name__ == "__main__":
    main()
