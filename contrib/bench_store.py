#!/usr/bin/env python3
"""
Restores from the chunk store (--store, issue 21), against real guests and a
real HTTP store: `contrib/bench.sh store` runs this (it can also run alone,
from the repository, as root).

The store is Debian's nginx with WebDAV in a network namespace of its own,
reached over a veth pair (tests/integration/storehelp.py). Every daemon runs
with --pool 0 (every create restores) and its own state dir and mount point.

  local      daemon L (--store) bakes `default` here and publishes it (the
             store then holds its chunks and bake record; publish time and
             size reported); BENCH_N creates (default 10) after 2 warm-up
             creates: mkdir until a read of `wait` answers "ready", timed by
             the caller (time.perf_counter), as contrib/bench.sh's create
             measures a restore; each sandbox destroyed (untimed).
  empty      BENCH_N rounds, each a fresh daemon (new state dir: an empty
             cache) with --store: the template's install (bake.timings of
             templates/default/status, their sum, when the template came
             from the store; else the wall time from the daemon's start to
             the template ready, daemon start-up included: "install_from"
             says which); then the first sandbox's mkdir until `wait` says
             ready (the first restore: an empty cache but what the install
             fetched), then an exec of `true` in it; cache/status
             fetched_bytes read after the install, after ready and after
             that exec.
  warm       in each of those rounds, a second sandbox on the same daemon
             (its chunks now cached): mkdir until ready.
  base       then (the second restore fetches the rest of the memory in the
             background) sandboxes until snapshot_store.memory says "base",
             and one more: a restore from the base built from the cache.
  noprefetch the empty round again, BENCH_N daemons with --no-prefetch (the
             restore's hot-chunk prefetch off).

fetched per first restore: cache/status fetched_bytes of a fresh daemon
once its first sandbox answered its first exec: the install's fetches (the
device state and the disk whole, and with prefetch the memory's hot list)
and the restore's (memory the guest read that was not cached). cache/status
does not tell memory from disk: "memory_mib_est" is that total minus a
--no-prefetch install's (state and disk only); the install's and the
restore's shares are reported too. fetched_fraction: the p50 total in MiB
over the guest's memory (mem_mib).

Percentiles are nearest-rank (docs/benchmarks.md). Output: a table on stderr
and on stdout one JSON object per line, among them:
{"bench":"store","metric":"local_restore_p50_ms","value":..}   (and _p99_ms)
{"bench":"store","metric":"empty_cache_restore_p50_ms","value":..}   (and _p99_ms)
{"bench":"store","metric":"warm_cache_restore_p50_ms","value":..}   (and _p99_ms)
{"bench":"store","metric":"cached_base_restore_p50_ms","value":..}   (and _p99_ms)
{"bench":"store","metric":"empty_cache_restore_p50_ms_noprefetch","value":..}   (and _p99_ms_noprefetch)
{"bench":"store","metric":"template_install_p50_ms","value":..,"from":"timings"|"wall"}   (and _noprefetch)
{"bench":"store","metric":"empty_cache_over_local","value":..}   (p50 over p50)
{"bench":"store","metric":"warm_cache_over_local","value":..}
{"bench":"store","metric":"install_plus_first_restore_over_local","value":..,"p50_ms":..}   (the install counted too)
{"bench":"store","metric":"fetched_mib_per_first_restore","value":..,"install_mib":..,"total_mib":..,
 "noprefetch_value":..}
{"bench":"store","metric":"fetched_fraction","value":..,"mem_mib":..}
{"bench":"store","metric":"published","chunks":..,"mib":..,"publish_ms":..}
{"bench":"store","metric":"restore","kind":"local"|"empty"|"warm"|"base"|"empty_noprefetch","n":..,"p50_ms":..,
 "p99_ms":..,"samples_ms":[..]}
Exit 77 (skipped) when nginx (with WebDAV) is not installed.
"""
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402
import storehelp  # noqa: E402

N = int(os.environ.get("BENCH_N", "10"))
WARMUP = 2
SETTLE = int(os.environ.get("BENCH_SETTLE_MS", "300")) / 1000.0
MiB = 1 << 20


def log(msg):
    sys.stderr.write("bench: store: %s\n" % msg)
    sys.stderr.flush()


def pct(v, p):
    v = sorted(v)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)] if v else None


def store_obj(st):
    for k in ("snapshot_store", "store"):
        if isinstance(st.get(k), dict):
            return st[k]
    return None


def cache(d):
    return harness.read_json(os.path.join(d.mount, "cache", "status"))


def timed_create(d, name):
    """ms from mkdir to `wait`'s answer; raises if it is not "ready"."""
    t0 = time.perf_counter()
    os.mkdir(d.sb(name))
    try:
        answer = d.wait(name)
    except OSError as e:
        answer = "(%s)" % harness.errno_name(e.errno)
    ms = (time.perf_counter() - t0) * 1000.0
    if answer != "ready\n":
        try:
            st = d.status(name)
        except OSError:
            st = None
        raise SystemExit("bench: store: error: create %s: %s, status %s\n%s" % (name, answer.strip(), st,
                                                                                d.log_tail()))
    st = d.status(name)
    if st["path"] != "restore":
        raise SystemExit("bench: store: error: %s: path %s (%s), expected restore" % (
            name, st["path"], st.get("path_reason")))
    return ms


def wait_published(d, timeout=harness.BAKE_TIMEOUT):
    t0 = time.monotonic()
    while True:
        st = d.wait_template_ready()
        so = store_obj(st) or {}
        if so.get("published") is True:
            return st, (time.monotonic() - t0) * 1000.0
        if so.get("error") and so.get("state") != "publishing":
            raise SystemExit("bench: store: error: not published: %s" % so["error"])
        if time.monotonic() - t0 > timeout:
            raise SystemExit("bench: store: error: not published after %.0f s: %s" % (timeout, so))
        time.sleep(0.05)


def bench_local(store):
    d = harness.Daemon(extra_args=["--store", store.url]).start()
    try:
        st, publish_ms = wait_published(d)
        if st["bake"].get("source") != "local":
            raise SystemExit("bench: store: error: L's bake came from %s, expected local (the store was empty)" %
                             st["bake"].get("source"))
        mem_mib = harness.read_json(d.tpl("default", "config"))["mem_mib"]
        samples = []
        for i in range(N + WARMUP):
            ms = timed_create(d, "l%d" % i)
            d.destroy("l%d" % i)
            if i >= WARMUP:
                samples.append(ms)
            time.sleep(SETTLE)
    except BaseException:
        d.force_cleanup()
        raise
    d.stop()
    return samples, mem_mib, publish_ms


def install_ms(d, t_start):
    """(ms, "timings"|"wall") of the template's install from the store."""
    st = d.wait_template_ready()
    wall = (time.monotonic() - t_start) * 1000.0
    if st["bake"].get("source") != "store":
        raise SystemExit("bench: store: error: a fresh daemon baked instead of installing: %s" % (
            store_obj(st) or st["bake"]))
    tm = st["bake"].get("timings") or {}
    if tm:
        return sum(tm.values()), "timings", st
    return wall, "wall", st


def bench_empty(store, prefetch):
    rounds = []
    for i in range(N):
        d = harness.Daemon(extra_args=["--store", store.url] + ([] if prefetch else ["--no-prefetch"]))
        t0 = time.monotonic()
        d.start()
        try:
            ims, src, _ = install_ms(d, t0)
            c0 = cache(d)
            if c0.get("prefetch") is not None and c0["prefetch"] != prefetch:
                raise SystemExit("bench: store: error: cache/status prefetch %s, expected %s" % (
                    c0["prefetch"], prefetch))
            first = timed_create(d, "e0")
            c1 = cache(d)
            d.sh("e0", "true")
            c2 = cache(d)
            d.destroy("e0")  # the warm sample alone on the host, as the first one was
            time.sleep(SETTLE)
            warm = timed_create(d, "e1") if prefetch else None
            based = None
            if warm is not None:
                d.destroy("e1")
                # the second restore started fetching the rest of the memory: once it is all cached a
                # restore maps a base built from it (templates/T/status snapshot_store.memory "base")
                deadline = time.monotonic() + 60
                time.sleep(SETTLE)
                while True:
                    based = timed_create(d, "e2")
                    d.destroy("e2")
                    so = store_obj(d.template_status()) or {}
                    if so.get("memory") == "base" or time.monotonic() > deadline:
                        break
                    time.sleep(SETTLE)
                if so.get("memory") != "base":
                    raise SystemExit("bench: store: error: no base built from the cache after 60 s: %s" % so)
                time.sleep(SETTLE)
                based = timed_create(d, "e3")  # on the base for sure (the status said so before it)
                d.destroy("e3")
        except BaseException:
            d.force_cleanup()
            raise
        d.stop()
        r = {"install_ms": ims, "install_from": src, "first_ms": first, "warm_ms": warm, "base_ms": based,
             "install_bytes": c0["fetched_bytes"], "ready_bytes": c1["fetched_bytes"] - c0["fetched_bytes"],
             "restore_bytes": c2["fetched_bytes"] - c0["fetched_bytes"], "total_bytes": c2["fetched_bytes"]}
        rounds.append(r)
        log("%s round %d: install %.0f ms (%s, %.1f MiB), first restore %.1f ms (%.1f MiB to ready, %.1f MiB "
            "with its first exec)%s" % ("prefetch" if prefetch else "no-prefetch", i + 1, ims, src,
                                        r["install_bytes"] / MiB, first, r["ready_bytes"] / MiB,
                                        r["restore_bytes"] / MiB,
                                        "" if warm is None else ", warm-cache restore %.1f ms, on the base %.1f ms" % (
                                            warm, based)))
    return rounds


def row(name, v):
    sys.stderr.write("  %-32s %4d %9.1f %9.1f %9.1f %9.1f\n" % (name, len(v), pct(v, 50), pct(v, 99), min(v), max(v)))


def main():
    why = harness.missing_capability() or storehelp.missing_capability()
    if why:
        log("cannot run: %s" % why)
        return 77
    store = storehelp.StoreServer().start()
    ok = False
    try:
        log("store at %s; L bakes and publishes, then %d local restores" % (store.url, N))
        local, mem_mib, publish_ms = bench_local(store)
        chunks, stored = len(store.chunks()), store.chunk_bytes()
        log("published %d chunks, %.1f MiB, in %.0f ms (after the template was ready)" % (
            chunks, stored / MiB, publish_ms))
        log("%d fresh daemons, prefetch on" % N)
        on = bench_empty(store, True)
        log("%d fresh daemons, --no-prefetch" % N)
        off = bench_empty(store, False)
        ok = True
    finally:
        try:
            store.teardown()
        except AssertionError as e:
            log("error: %s" % e)
            ok = False
    if not ok:
        return 1

    empty = [r["first_ms"] for r in on]
    warm = [r["warm_ms"] for r in on]
    based = [r["base_ms"] for r in on]
    empty_off = [r["first_ms"] for r in off]
    inst = [r["install_ms"] for r in on]
    inst_off = [r["install_ms"] for r in off]
    # what a first restore on an empty cache took from the store: the install's and the restore's
    fetched = [r["total_bytes"] / MiB for r in on]
    fetched_off = [r["total_bytes"] / MiB for r in off]
    # without prefetch the install takes the device state and the disk only: the rest is memory
    base = pct([r["install_bytes"] / MiB for r in off], 50)
    out = []
    for kind, v in (("local", local), ("empty", empty), ("warm", warm), ("base", based), ("empty_noprefetch", empty_off)):
        out.append({"bench": "store", "metric": "restore", "kind": kind, "n": len(v), "p50_ms": round(pct(v, 50), 3),
                    "p99_ms": round(pct(v, 99), 3), "samples_ms": [round(x, 2) for x in v]})
    for name, v in (("local_restore", local), ("empty_cache_restore", empty), ("warm_cache_restore", warm),
                    ("cached_base_restore", based)):
        out.append({"bench": "store", "metric": name + "_p50_ms", "value": round(pct(v, 50), 3), "n": len(v)})
        out.append({"bench": "store", "metric": name + "_p99_ms", "value": round(pct(v, 99), 3), "n": len(v)})
    out.append({"bench": "store", "metric": "empty_cache_restore_p50_ms_noprefetch", "value": round(pct(empty_off, 50), 3),
                "n": len(empty_off)})
    out.append({"bench": "store", "metric": "empty_cache_restore_p99_ms_noprefetch", "value": round(pct(empty_off, 99), 3),
                "n": len(empty_off)})
    srcs = sorted({r["install_from"] for r in on + off})
    out.append({"bench": "store", "metric": "template_install_p50_ms", "value": round(pct(inst, 50), 3),
                "p99_ms": round(pct(inst, 99), 3), "n": len(inst), "from": "/".join(srcs)})
    out.append({"bench": "store", "metric": "template_install_p50_ms_noprefetch", "value": round(pct(inst_off, 50), 3),
                "p99_ms": round(pct(inst_off, 99), 3), "n": len(inst_off), "from": "/".join(srcs)})
    out.append({"bench": "store", "metric": "empty_cache_over_local", "value": round(pct(empty, 50) / pct(local, 50), 3)})
    out.append({"bench": "store", "metric": "warm_cache_over_local", "value": round(pct(warm, 50) / pct(local, 50), 3)})
    # the whole first time on a new host: the template's install (state, disk, hot chunks) and then the restore
    both = [r["install_ms"] + r["first_ms"] for r in on]
    out.append({"bench": "store", "metric": "install_plus_first_restore_over_local",
                "value": round(pct(both, 50) / pct(local, 50), 3), "p50_ms": round(pct(both, 50), 3)})
    out.append({"bench": "store", "metric": "fetched_mib_per_first_restore", "value": round(pct(fetched, 50), 2),
                "install_mib": round(pct([r["install_bytes"] / MiB for r in on], 50), 2),
                "restore_mib": round(pct([r["restore_bytes"] / MiB for r in on], 50), 2),
                "memory_mib_est": round(max(0.0, pct(fetched, 50) - base), 2),
                "noprefetch_value": round(pct(fetched_off, 50), 2),
                "noprefetch_install_mib": round(base, 2),
                "noprefetch_restore_mib": round(pct([r["restore_bytes"] / MiB for r in off], 50), 2),
                "stored_mib": round(stored / MiB, 2)})
    out.append({"bench": "store", "metric": "fetched_fraction", "value": round(pct(fetched, 50) / mem_mib, 4),
                "mem_mib": mem_mib})
    out.append({"bench": "store", "metric": "published", "chunks": chunks, "mib": round(stored / MiB, 2),
                "publish_ms": round(publish_ms, 1)})

    sys.stderr.write("\nstore: mkdir until `wait` answers, --pool 0, timed outside the daemon (ms; nearest rank)\n")
    sys.stderr.write("  %-32s %4s %9s %9s %9s %9s\n" % ("restore", "n", "p50", "p99", "min", "max"))
    row("local (baked here)", local)
    row("empty cache (first, prefetch)", empty)
    row("empty cache (first, no prefetch)", empty_off)
    row("warm cache (second sandbox)", warm)
    row("on the base built from the cache", based)
    row("template install (prefetch)", inst)
    row("template install (no prefetch)", inst_off)
    sys.stderr.write("  empty over local (p50): %.2f; warm over local: %.2f; install + first restore over local: %.2f\n" % (
        pct(empty, 50) / pct(local, 50), pct(warm, 50) / pct(local, 50),
        pct([r["install_ms"] + r["first_ms"] for r in on], 50) / pct(local, 50)))
    sys.stderr.write("  fetched by a fresh daemon's install and first restore (to its first exec), p50: %.1f MiB with "
                     "prefetch (install %.1f), %.1f MiB without (install %.1f: device state and disk); guest memory "
                     "%d MiB (fraction %.3f); the store holds %.1f MiB in %d chunks\n"
                     % (pct(fetched, 50), pct([r["install_bytes"] / MiB for r in on], 50), pct(fetched_off, 50), base,
                        mem_mib, pct(fetched, 50) / mem_mib, stored / MiB, chunks))
    for line in out:
        print(json.dumps(line), flush=True)
    for p in harness._logs:  # every daemon stopped cleanly: their logs go
        try:
            os.unlink(p)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
