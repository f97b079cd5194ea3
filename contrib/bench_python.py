#!/usr/bin/env python3
"""
The python template, against real guests: `contrib/bench.sh python` runs
this (it can also run alone, from the repository, as root).

The image comes from contrib/build-python-image.sh (cached machine-wide;
built if missing, ~80 s; exit 77 if the Debian archive cannot be reached).
One daemon (--pool 0), two templates of that image, as contrib/up.sh makes
`python`:

  python   {"image": REF, "mem_mib": 512, "warm": WARM}
  nowarm   the same without "warm" (the baseline)

Measured:
  bake         cold_ms: the first bake on a fresh state directory (pull,
               unpack, mkfs, boot, warm, snapshot); cached_ms: `bake` again
               with the inputs unchanged, until the status says ready (a
               no-op: the snapshot fits); rebake_ms: `rebake` (the disk is
               cached: boot, warm, snapshot).
  warm_create  mkdir until `wait` answers, BENCH_PY_N samples (default 20)
               from a full pool of BENCH_PY_POOL warm slots (default 2; the
               script waits for it before each sample).
  first_output mkdir until the first byte of `python3 -c 'print(1)'`
               through the new sandbox's exec file (open, write, read),
               BENCH_PY_N samples from a full pool, for python and for
               nowarm in alternating blocks of 5: the ratio nowarm/python
               is what the warm command buys.
  slot         RSS and PSS of the idle warm slots' VMMs (python and nowarm,
               pools full).

Output: a table on stderr; JSON lines on stdout:
{"bench":"python","metric":"bake","cold_ms":..,"cached_ms":..,"rebake_ms":..}
{"bench":"python","metric":"warm_create","n":..,"p50_ms":..,"p99_ms":..}
{"bench":"python","metric":"first_output","n":..,"p50_ms":..,"p99_ms":..}
{"bench":"python","metric":"first_output_nowarm","n":..,"p50_ms":..,"p99_ms":..}
{"bench":"python","metric":"ratio_first_output_nowarm_over_warm","value":..}
{"bench":"python","metric":"slot"|"slot_nowarm","n":..,"rss_mib":..,"pss_mib":..}
Percentiles: nearest rank (always one of the samples).
"""
import json
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402

N = int(os.environ.get("BENCH_PY_N", "20"))
POOL = int(os.environ.get("BENCH_PY_POOL", "2"))
WARM = "python3 -c 'import os, sys, json, re, subprocess'"
CODE = "python3 -c 'print(1)'"


def log(msg):
    sys.stderr.write("bench: python: %s\n" % msg)


def pct(v, p):
    v = sorted(v)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def python_image():
    r = subprocess.run([os.path.join(REPO, "contrib", "build-python-image.sh")], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode == 77:
        log("skipped: %s" % r.stderr.strip().splitlines()[-1:])
        sys.exit(77)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit("contrib/build-python-image.sh failed (exit %d)" % r.returncode)
    return r.stdout.strip().splitlines()[-1]


def bake(d, t, verb="bake"):
    t0 = time.perf_counter()
    harness.write_file(d.tpl(t, "ctl"), verb + "\n")
    with open(d.tpl(t, "build.log"), "rb") as f:  # ends with the bake
        f.read()
    st = d.template_status(t)
    if st["state"] != "ready":
        raise AssertionError("%s: %s after %s: %s" % (t, st["state"], verb, st.get("error")))
    return (time.perf_counter() - t0) * 1000


def first_output(d, t, name):
    """mkdir until the first byte of the program's output, through exec."""
    t0 = time.perf_counter()
    os.mkdir(d.sb(name, t=t))
    fd = os.open(d.sb(name, "exec", t=t), os.O_RDWR)
    try:
        os.write(fd, CODE.encode())
        b = os.read(fd, 64)
        ms = (time.perf_counter() - t0) * 1000
        rest = b
        while b:
            b = os.read(fd, 4096)
            rest += b
    finally:
        os.close(fd)
    if rest != b"1\n":
        raise AssertionError("%s: %r" % (name, rest))
    return ms


def main():
    why = harness.missing_capability()
    if why:
        log("cannot run: %s" % why)
        return 77
    ref = python_image()
    log("image %s" % ref)
    d = harness.Daemon().start()
    res = []
    try:
        # the default guest's kernel and initrd come in by themselves (a config with an image)
        for t, extra in (("python", {"warm": WARM}), ("nowarm", {})):
            os.mkdir(d.tpl(t))
            harness.write_file(d.tpl(t, "config"), json.dumps(dict({"image": ref, "mem_mib": 512}, **extra)))
        cold = bake(d, "python")
        phases = d.template_status("python")["bake"]["timings"]
        cached = bake(d, "python")
        rebake = bake(d, "python", "rebake")
        bake(d, "nowarm")
        log("bake: cold %.0f ms (%s), cached %.0f ms, rebake %.0f ms" % (
            cold, ", ".join("%s %.0f" % kv for kv in phases.items()), cached, rebake))
        res.append({"bench": "python", "metric": "bake", "cold_ms": round(cold, 1), "cached_ms": round(cached, 1),
                    "rebake_ms": round(rebake, 1), "cold_phases_ms": phases})

        for t in ("python", "nowarm"):
            d.set_pool(POOL, t=t)
        creates, outs = [], {"python": [], "nowarm": []}
        k = 0
        for block in range(0, N, 5):
            for t in ("python", "nowarm"):
                for _ in range(min(5, N - block)):
                    d.wait_pool(POOL, t=t, timeout=300)
                    k += 1
                    name = "b%d" % k
                    outs[t].append(first_output(d, t, name))
                    if d.status(name, t=t)["path"] != "warm":
                        raise AssertionError("%s did not come from a warm slot" % name)
                    d.destroy(name, t=t)
        for i in range(N):
            d.wait_pool(POOL, t="python", timeout=300)
            name = "c%d" % i
            t0 = time.perf_counter()
            os.mkdir(d.sb(name, t="python"))
            with open(d.sb(name, "wait", t="python")) as f:
                f.read()
            creates.append((time.perf_counter() - t0) * 1000)
            if d.status(name, t="python")["path"] != "warm":
                raise AssertionError("%s did not come from a warm slot" % name)
            d.destroy(name, t="python")
        mem = {}
        for t in ("python", "nowarm"):
            d.wait_pool(POOL, t=t, timeout=300)
        time.sleep(2)  # the slots idle
        for t in ("python", "nowarm"):
            rss, pss = [], []
            for s in d.slots(t).values():
                pid = s.get("vmm_pid")
                with open("/proc/%d/status" % pid) as f:
                    rss += [int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:")]
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    pss += [int(l.split()[1]) / 1024 for l in f if l.startswith("Pss:")]
            mem[t] = (rss, pss)
        res.append({"bench": "python", "metric": "warm_create", "n": N, "p50_ms": round(pct(creates, 50), 1),
                    "p99_ms": round(pct(creates, 99), 1)})
        for t, m in (("python", "first_output"), ("nowarm", "first_output_nowarm")):
            res.append({"bench": "python", "metric": m, "n": N, "p50_ms": round(pct(outs[t], 50), 1),
                        "p99_ms": round(pct(outs[t], 99), 1)})
        res.append({"bench": "python", "metric": "ratio_first_output_nowarm_over_warm",
                    "value": round(pct(outs["nowarm"], 50) / pct(outs["python"], 50), 2)})
        for t, m in (("python", "slot"), ("nowarm", "slot_nowarm")):
            rss, pss = mem[t]
            res.append({"bench": "python", "metric": m, "n": len(rss), "rss_mib": round(pct(rss, 50), 1),
                        "pss_mib": round(pct(pss, 50), 1)})
        for t in ("python", "nowarm"):
            d.set_pool(0, t=t)
        d.stop()
    except BaseException:
        d.force_cleanup()
        raise
    sys.stderr.write("python template (ms; p50 / p99 over %d samples)\n" % N)
    for r in res:
        if "p50_ms" in r:
            sys.stderr.write("  %-22s %8.1f %8.1f\n" % (r["metric"], r["p50_ms"], r["p99_ms"]))
    b = res[0]
    sys.stderr.write("  bake: cold %.0f, cached %.0f, rebake %.0f\n" % (b["cold_ms"], b["cached_ms"], b["rebake_ms"]))
    for r in res[-2:]:
        sys.stderr.write("  %s: RSS %.1f MiB, PSS %.1f MiB (median of %d)\n" % (r["metric"], r["rss_mib"], r["pss_mib"],
                                                                              r["n"]))
    for r in res:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
