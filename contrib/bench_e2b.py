#!/usr/bin/env python3
"""
emberfs-e2b measured from the E2B JavaScript SDK: `contrib/bench.sh e2b` runs
this (it can also run alone, from the repository, as root).

One daemon (--pool 0), the template BENCH_E2B_TEMPLATE: `python` (the
default: contrib/build-python-image.sh's Debian image, cached machine-wide)
or `default` (the busybox image of EMBERFS_IMAGE_DIR with a static bash);
both have /bin/bash, which the SDK runs every command with (`bash -l`
reads Debian's /etc/profile in the python image, nothing in the other),
with its pool pinned at BENCH_E2B_POOL (default 4),
build/e2b/emberfs-e2b (EMBERFS_E2B_BIN) on a loopback port, and the pinned SDK
(contrib/e2b-sdk.sh) running tests/e2b/bench.mjs, which measures:

  create      Sandbox.create('python') until it resolved, from a full pool
              (the bench waits for the pool to refill before each sample,
              untimed), BENCH_E2B_N samples (default 30) after 2 warm-ups
  run         commands.run('true') round trip, 3 * BENCH_E2B_N samples after
              10 warm-ups, in one sandbox
  files_1mib  files.write of 1 MiB + files.read of it back, BENCH_E2B_N
              samples after 10 warm-ups

Output: a table on stderr; JSON lines on stdout (bench.mjs's):
{"bench":"e2b","metric":"create","n":..,"p50_ms":..,"p99_ms":..,"mean_ms":..,"pool":..}
{"bench":"e2b","metric":"run","n":..,"p50_ms":..,"p99_ms":..,"mean_ms":..}
{"bench":"e2b","metric":"files_1mib","n":..,"p50_ms":..,"p99_ms":..,"write_p50_ms":..,"read_p50_ms":..}
{"bench":"e2b","metric":"run_mount_baseline","n":..,"p50_ms":..,"p99_ms":..}
  (what commands.run('true') runs in the guest, /bin/bash -l -c true, through
  the mount's exec file without emberfs-e2b: the guest's share of "run")
Exit 77 when the python image cannot be built (no Debian archive) or node
and npm are missing.
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
import e2bhelp  # noqa: E402

T = os.environ.get("BENCH_E2B_TEMPLATE", "python")
POOL = int(os.environ.get("BENCH_E2B_POOL", "4"))


def log(msg):
    sys.stderr.write("bench: e2b: %s\n" % msg)


def mount_baseline(d):
    """What the SDK's commands.run('true') runs in the guest (/bin/bash -l -c true), through the mount's
    exec file alone: the part of the run figure that is the guest's, not emberfs-e2b's."""
    n = 3 * int(os.environ.get("BENCH_E2B_N", "30"))
    d.wait_pool(POOL, t=T, timeout=300)
    d.create_ready("base", t=T)
    d.wait_pool(POOL, t=T, timeout=300)
    req = {"argv": ["/bin/bash", "-l", "-c", "true"]}
    try:
        v = []
        for i in range(10 + n):
            t0 = time.perf_counter()
            r = d.exec_json("base", req, t=T)
            ms = (time.perf_counter() - t0) * 1000
            if r["exit_code"] != 0:
                raise AssertionError("bash -l -c true: %r" % r)
            if i >= 10:
                v.append(ms)
    finally:
        d.destroy("base", t=T)
    v.sort()
    p50, p99 = v[max(0, math.ceil(0.5 * n) - 1)], v[max(0, math.ceil(0.99 * n) - 1)]
    log("baseline: /bin/bash -l -c true through the mount's exec file: p50 %.3f ms, p99 %.3f ms (n=%d)" % (p50, p99, n))
    return {"bench": "e2b", "template": T, "metric": "run_mount_baseline", "n": n, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}


def main():
    why = harness.missing_capability()
    if why:
        log("cannot run: %s" % why)
        return 77
    if T not in ("python", "default"):
        log("BENCH_E2B_TEMPLATE=%s: python or default" % T)
        return 2
    try:
        ref = e2bhelp.python_image_ref() if T == "python" else "the default image"
        sdk = e2bhelp.sdk_ready()
    except e2bhelp.Unavailable as e:
        log("skipped: %s" % e)
        return 77
    log("template %s, image %s, e2b SDK %s" % (T, ref, sdk))
    d = harness.Daemon().start()
    api = None
    try:
        if T == "python":
            e2bhelp.bake_template(d, T, {"image": ref, "mem_mib": 512})
        d.set_pool(POOL, t=T)
        api = e2bhelp.Api(d.mount).start()
        d.wait_pool(POOL, t=T, timeout=300)
        env = dict(os.environ, **api.env(), E2B_TEMPLATE=T, EMBERFS_MOUNT=d.mount, BENCH_E2B_POOL=str(POOL))
        r = subprocess.run(["node", "bench.mjs"], cwd=e2bhelp.SDK_DIR, env=env, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(r.stdout)
        sys.stdout.flush()
        if r.returncode != 0:
            log("bench.mjs failed (exit %d)\n%s" % (r.returncode, api.log_tail()))
            raise SystemExit(1)  # torn down below
        for n in d.sandboxes(t=T):
            d.destroy(n, t=T)
        print(json.dumps(mount_baseline(d)), flush=True)
        d.set_pool(0, t=T)
        rc = api.stop()
        if rc != 0:
            log("emberfs-e2b exit %s after SIGTERM" % rc)
            raise SystemExit(1)
        if T == "python":
            os.rmdir(d.tpl(T))
    except BaseException:
        if api is not None:
            api.cleanup()
            log("emberfs-e2b log kept: %s" % api.log_path)
        d.force_cleanup()
        raise
    api.cleanup()
    d.stop()
    os.unlink(api.log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
