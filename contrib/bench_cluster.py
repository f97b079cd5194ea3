#!/usr/bin/env python3
"""
A cluster of three emberfs hosts on etcd, against real guests: `contrib/bench.sh
cluster` runs this (it can also run alone, from the repository, as root).

It starts a three-member etcd cluster on loopback (Debian's etcd-server,
tests/integration/etcdcluster.py), three cluster hosts A, B, C (--cluster,
each with its own state dir, mount point and peer port, one shared key) and,
for the comparison, one single-host daemon S (no --cluster), all with
--pool 0 and without --net, so each figure below is the cluster's own cost:

  placement_overhead  what placing a create through the cluster adds to a
        local warm create: the warm pool at BENCH_POOL (default 4) on A
        only (so every create on A is placed on A, from its own warm slot)
        and on S; mkdir until a read of `wait` answers "ready", timed by
        the caller (time.perf_counter), on A and on S alternately, each
        pool full again before its sample; BENCH_N samples each (default
        30) after 2 warm-up creates each. p50 and p99 of A minus those of
        S (also reported: both sides' p50/p99, and the same difference for
        the mkdir alone, where the reservation in etcd happens).
  remote_warm_create  the pool at BENCH_POOL on B only: mkdir on A until
        A's read of `wait` answers (placed on B, served by a warm slot
        there, `wait` forwarded to B); before each sample B's pool is full
        and A's view (hosts/B/status "warm") says so. BENCH_N samples after
        2 warm-ups. Each sample's `host` and status `path` are checked.
  remote_exec_over_local  one sandbox on B: `true` through its `exec` file
        (open O_RDWR, write, read until EOF, close) from A (forwarded to B)
        and from B itself, alternately, BENCH_EXEC_N each (default 100)
        after 10 warm-up runs each; the ratio of the p50s.
  spread64  BENCH_SPREAD_N (default 64) threads released together by a
        barrier, thread i making sandbox spI on host i mod 3 and reading its
        `wait`: the wall time from the release to the last answer, and how
        many each host runs (its `host` file), as [A, B, C]. No warm slot
        anywhere: every create restores (placement by load).

Between samples the script idles BENCH_SETTLE_MS (default 300). Percentiles
are nearest-rank (docs/benchmarks.md).

Output: a table on stderr, and on stdout one JSON object per line:
{"bench":"cluster","metric":"placement_overhead","p50_ms":..,"p99_ms":..,"n":..,"cluster_p50_ms":..,
 "cluster_p99_ms":..,"single_p50_ms":..,"single_p99_ms":..,"mkdir_p50_ms":..,"misplaced":..}
{"bench":"cluster","metric":"remote_warm_create","p50_ms":..,"p99_ms":..,"n":..,"mean_ms":..,"not_remote_warm":..}
{"bench":"cluster","metric":"remote_exec_over_local","value":..,"n":..,"remote_p50_ms":..,"remote_p99_ms":..,
 "local_p50_ms":..,"local_p99_ms":..}
{"bench":"cluster","metric":"spread64","wall_ms":..,"per_host":[..],"n":..,"failed":..}
Exit 77 (skipped) when etcd-server is not installed.
"""
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402
import test_cluster as tc  # noqa: E402  (the option names the daemon's --help has)

N = int(os.environ.get("BENCH_N", "30"))
POOL = int(os.environ.get("BENCH_POOL", "4"))
EXEC_N = int(os.environ.get("BENCH_EXEC_N", "100"))
SPREAD_N = int(os.environ.get("BENCH_SPREAD_N", "64"))
SETTLE = int(os.environ.get("BENCH_SETTLE_MS", "300")) / 1000.0
WARMUP = 2

# not the test's ports (test_cluster.py): a bench and the tests never meet
ETCD_CLIENT_BASE, ETCD_PEER_BASE, PEER_BASE = 24794, 24894, 24704
NAMES = ("ha", "hb", "hc")


def log(msg):
    sys.stderr.write("bench: cluster: %s\n" % msg)
    sys.stderr.flush()


def nearest_rank(vals, p):
    v = sorted(vals)
    return v[max(1, math.ceil(p / 100.0 * len(v))) - 1]


def r3(x):
    return round(x, 3)


def host_of(d, name):
    return harness.read_text(d.sb(name, "host")).strip()


def host_warm(viewer, host, ident):
    try:
        st = harness.read_json(os.path.join(viewer.mount, "hosts", host, "status"))
    except OSError:
        return -1
    return (st.get("warm") or {}).get(ident, 0)


def timed_create(d, name):
    """(ms mkdir, ms mkdir until wait answered); raises if the create failed."""
    t0 = time.perf_counter()
    os.mkdir(d.sb(name))
    t1 = time.perf_counter()
    fd = os.open(d.sb(name, "wait"), os.O_RDONLY)
    try:
        answer = os.read(fd, 64)
    finally:
        os.close(fd)
    t2 = time.perf_counter()
    if answer != b"ready\n":
        raise RuntimeError("create of %s answered %r" % (name, answer))
    return (t1 - t0) * 1000, (t2 - t0) * 1000


def exec_true(d, name):
    t0 = time.perf_counter()
    fd = os.open(d.sb(name, "exec"), os.O_RDWR)
    try:
        os.write(fd, b"true")
        while os.read(fd, 1 << 16):
            pass
    finally:
        os.close(fd)
    return (time.perf_counter() - t0) * 1000


def full_pool(d, n, viewer=None, owner_name=None, ident=None):
    d.wait_pool(n, timeout=120)
    if viewer is not None:
        harness.wait_for(lambda: host_warm(viewer, owner_name, ident) == n, 30,
                         "%s's view: %d warm on %s" % (viewer.mount, n, owner_name))


def bench_placement(a, s):
    ident = harness.read_text(a.tpl("default", "identity")).strip()
    a.set_pool(POOL)
    s.set_pool(POOL)
    cl, cl_mk, si, si_mk, misplaced = [], [], [], [], 0
    for i in range(WARMUP + N):
        for d, out, out_mk, tag in ((a, cl, cl_mk, "a"), (s, si, si_mk, "s")):
            if d is a:  # full, and A's own advertisement says so
                full_pool(a, POOL, viewer=a, owner_name=NAMES[0], ident=ident)
            else:
                full_pool(s, POOL)
            time.sleep(SETTLE)
            name = "po%s%d" % (tag, i)
            mk, ms = timed_create(d, name)
            if d is a and host_of(a, name) != NAMES[0]:
                misplaced += 1
            if i >= WARMUP:
                out.append(ms)
                out_mk.append(mk)
            d.destroy(name)
    a.set_pool(0)
    s.set_pool(0)
    r = {"bench": "cluster", "metric": "placement_overhead",
         "p50_ms": r3(nearest_rank(cl, 50) - nearest_rank(si, 50)),
         "p99_ms": r3(nearest_rank(cl, 99) - nearest_rank(si, 99)), "n": N,
         "cluster_p50_ms": r3(nearest_rank(cl, 50)), "cluster_p99_ms": r3(nearest_rank(cl, 99)),
         "single_p50_ms": r3(nearest_rank(si, 50)), "single_p99_ms": r3(nearest_rank(si, 99)),
         "mkdir_p50_ms": r3(nearest_rank(cl_mk, 50) - nearest_rank(si_mk, 50)), "misplaced": misplaced}
    log("warm create, local slot, mkdir until ready (n=%d): cluster host p50 %.2f p99 %.2f ms; single host p50 %.2f "
        "p99 %.2f ms; placement adds p50 %.2f p99 %.2f ms (the mkdir alone: %.2f ms at p50)%s" % (
            N, r["cluster_p50_ms"], r["cluster_p99_ms"], r["single_p50_ms"], r["single_p99_ms"], r["p50_ms"],
            r["p99_ms"], r["mkdir_p50_ms"], "; %d not placed locally" % misplaced if misplaced else ""))
    return r


def bench_remote_create(a, b):
    ident = harness.read_text(b.tpl("default", "identity")).strip()
    b.set_pool(POOL)
    v, bad = [], 0
    for i in range(WARMUP + N):
        full_pool(b, POOL, viewer=a, owner_name=NAMES[1], ident=ident)
        time.sleep(SETTLE)
        name = "rw%d" % i
        _, ms = timed_create(a, name)
        if host_of(a, name) != NAMES[1] or a.status(name).get("path") != "warm":
            bad += 1
        if i >= WARMUP:
            v.append(ms)
        a.destroy(name)
    b.set_pool(0)
    r = {"bench": "cluster", "metric": "remote_warm_create", "p50_ms": r3(nearest_rank(v, 50)),
         "p99_ms": r3(nearest_rank(v, 99)), "n": N, "mean_ms": r3(sum(v) / len(v)), "not_remote_warm": bad}
    log("remote warm create (mkdir on A, warm slot on B, until A's wait answered), n=%d: p50 %.2f p99 %.2f ms%s" % (
        N, r["p50_ms"], r["p99_ms"], "; %d not served by a warm slot on B" % bad if bad else ""))
    return r


def bench_exec(a, b):
    b.set_pool(1)
    full_pool(b, 1)
    b.create_ready("ex")
    b.set_pool(0)
    if host_of(b, "ex") != NAMES[1]:
        raise SystemExit("bench: error: sandbox ex not on B (warm slot there) but on %s" % host_of(b, "ex"))
    for _ in range(10):
        exec_true(a, "ex")
        exec_true(b, "ex")
    rem, loc = [], []
    for _ in range(EXEC_N):
        rem.append(exec_true(a, "ex"))
        loc.append(exec_true(b, "ex"))
    b.destroy("ex")
    r = {"bench": "cluster", "metric": "remote_exec_over_local",
         "value": round(nearest_rank(rem, 50) / nearest_rank(loc, 50), 2), "n": EXEC_N,
         "remote_p50_ms": r3(nearest_rank(rem, 50)), "remote_p99_ms": r3(nearest_rank(rem, 99)),
         "local_p50_ms": r3(nearest_rank(loc, 50)), "local_p99_ms": r3(nearest_rank(loc, 99))}
    log("exec `true` round trip, n=%d: from A (forwarded to B) p50 %.2f p99 %.2f ms; on B p50 %.2f p99 %.2f ms; "
        "ratio p50 %.2f" % (EXEC_N, r["remote_p50_ms"], r["remote_p99_ms"], r["local_p50_ms"], r["local_p99_ms"],
                            r["value"]))
    return r


def bench_spread(hosts):
    bar = threading.Barrier(SPREAD_N + 1)
    done, errs = [None] * SPREAD_N, []

    def one(i):
        d = hosts[i % 3]
        bar.wait()
        try:
            os.mkdir(d.sb("sp%d" % i))
            if d.wait("sp%d" % i) != "ready\n":
                raise RuntimeError("not ready")
            done[i] = time.perf_counter()
        except (OSError, RuntimeError) as e:
            errs.append("sp%d: %s" % (i, e))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(SPREAD_N)]
    for t in ts:
        t.start()
    bar.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    ends = [x for x in done if x is not None]
    wall = (max(ends) - t0) * 1000 if ends else None
    per = [0, 0, 0]
    for i in range(SPREAD_N):
        if done[i] is not None:
            per[NAMES.index(host_of(hosts[0], "sp%d" % i))] += 1
    for n in hosts[0].sandboxes():
        hosts[0].destroy(n)
    r = {"bench": "cluster", "metric": "spread64", "wall_ms": round(wall, 1) if wall else None, "per_host": per,
         "n": SPREAD_N, "failed": len(errs)}
    log("%d concurrent creates, made on A, B, C in turn (no warm slot): wall %.0f ms; running on A, B, C: %s%s" % (
        SPREAD_N, wall or -1, per, "; failed: %s" % errs[:5] if errs else ""))
    return r


def main():
    why = harness.missing_capability()
    if why:
        log("cannot run: %s" % why)
        return 77
    if not shutil.which("etcd"):
        log("cannot run: etcd missing (install etcd-server)")
        return 77
    text = tc.emberfs_help()
    if "--cluster" not in text:
        log("error: %s has no --cluster" % harness.BIN)
        return 1
    key_opt = tc.pick_option(text, tc.KEY_OPTS)
    from etcdcluster import EtcdCluster
    etcd = EtcdCluster(ETCD_CLIENT_BASE, ETCD_PEER_BASE, n=3)
    keydir = tempfile.mkdtemp(prefix="efbk", dir="/tmp")
    daemons = []
    try:
        etcd.start()
        key = os.path.join(keydir, "cluster.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(os.urandom(32).hex().encode() + b"\n")
        for i, n in enumerate(NAMES):
            args = ["--cluster", etcd.urls(), "--host-name", n, "--advertise", "127.0.0.1:%d" % (PEER_BASE + i)]
            daemons.append(harness.Daemon(extra_args=args + ([key_opt, key] if key_opt else [])))
        daemons.append(harness.Daemon())  # S: a single host
        errs = []

        def start(d):
            try:
                d.start()
            except BaseException as e:  # noqa: BLE001 - reported below
                errs.append(str(e))
        ts = [threading.Thread(target=start, args=(d,)) for d in daemons]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errs:
            log("error: starting the daemons: %s" % "\n".join(errs))
            return 1
        a, b, c, s = daemons
        harness.wait_for(lambda: all(os.path.isdir(os.path.join(d.mount, "hosts", n)) for d in (a, b, c)
                                     for n in NAMES), 30, "every host in every view")
        log("etcd (3 members) and hosts A, B, C up, and a single host S; BENCH_N=%d, pool %d" % (N, POOL))
        out = [bench_placement(a, s), bench_remote_create(a, b), bench_exec(a, b), bench_spread([a, b, c])]
        for r in out:
            print(json.dumps(r), flush=True)
        for d in daemons:
            d.stop(check=False)
        return 0
    finally:
        for d in daemons:
            d.force_cleanup()
        etcd.stop()
        shutil.rmtree(keydir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
