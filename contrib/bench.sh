#!/usr/bin/env bash
# Benchmarks emberfs from outside the daemon, against real guests.
#
#   contrib/bench.sh [NAME...]      run the named benchmarks (default: all)
#
# Benchmarks:
#   create   mkdir of a sandbox until its `wait` file returns "ready", timed by
#            the caller (time.perf_counter around os.mkdir and the read of
#            wait); each sandbox is destroyed afterwards (rmdir, not timed).
#            restore path: template "default" (baked at start), BENCH_N
#            samples (default 30) after 2 warm-up creates that are not counted.
#            cold path: template "coldbench", made with mkdir and never baked,
#            so every create boots the kernel: BENCH_COLD_N samples (default 8),
#            no warm-up (each cold boot starts from nothing anyway).
#            Between samples the script idles BENCH_SETTLE_MS (default 500) so
#            every create starts from a quiet daemon (destroys finished,
#            standby VMMs refilled) rather than racing the previous sample's
#            background work.
#
# It builds what it needs (ninja -C build; meson setup build first if there is
# no build/), builds the guest image into .image/ if .image/current is missing
# (EMBERFS_IMAGE_DIR, as for the integration tests, uses another image dir),
# starts a daemon on a temporary mount point and state dir, and always tears
# everything down (trap), also on errors and Ctrl-C.
#
# Output: a human-readable table on stderr; on stdout one JSON object per line:
#   {"bench":"create","path":"restore","n":30,"p50_ms":..,"p99_ms":..,"mean_ms":..,"min_ms":..,"max_ms":..}
#   {"bench":"create","path":"restore","phases_p50_ms":{"claim":..,...}}
#   the same two for "cold", then
#   {"bench":"create","metric":"ratio_cold_over_restore","value":..}   (p50 cold / p50 restore)
# Creates that fail are retried (at most 3 failures per path) and reported as
#   {"bench":"create","path":"cold","failed_creates":K,"errors":[...]}
# Percentiles (p50, p99, and the per-phase p50) use the nearest-rank method:
# the ceil(p/100 * n)-th smallest sample, always one of the samples.
#
# BENCH_SPARES (default 2) is passed as --spares: 0 measures restores into a
# freshly spawned VMM instead of a spare one.
#
# Needs root (FUSE, loop devices, QEMU), like the daemon.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$PWD
ALL_BENCHES=(create)

log() { echo "bench: $*" >&2; }
die() {
	echo "bench: error: $*" >&2
	exit 1
}

benches=("$@")
if [ ${#benches[@]} -eq 0 ]; then
	benches=("${ALL_BENCHES[@]}")
fi
for b in "${benches[@]}"; do
	case " ${ALL_BENCHES[*]} " in
	*" $b "*) ;;
	*) die "unknown benchmark '$b' (known: ${ALL_BENCHES[*]})" ;;
	esac
done
[ "$(id -u)" -eq 0 ] || die "needs root (FUSE mount, loop devices, QEMU)"

# ---- build and image
if [ -d build ]; then
	log "building (ninja -C build)"
	ninja -C build >&2
else
	log "configuring and building (meson setup build)"
	meson setup build >&2
	ninja -C build >&2
fi
bin=$top/build/fs/emberfs
[ -x "$bin" ] || die "$bin was not built"
if [ -n "${EMBERFS_IMAGE_DIR:-}" ]; then
	image=$(readlink -f "$EMBERFS_IMAGE_DIR")
	[ -f "$image/manifest.json" ] || die "EMBERFS_IMAGE_DIR=$EMBERFS_IMAGE_DIR has no manifest.json"
else
	if [ ! -f .image/current/manifest.json ]; then
		log "no guest image at .image/current: building it"
		contrib/build-image.sh build/engine/guest/emberfs-agent .image >&2
	fi
	image=$(readlink -f .image/current)
fi

# ---- the daemon, on temporary dirs (short paths: unix socket limit)
mnt=$(mktemp -d /tmp/efbm.XXXXXX)
state=$(mktemp -d /tmp/efbs.XXXXXX)
daemon_log=$(mktemp /tmp/efbl.XXXXXX)
pid=
pypid=

cleanup() {
	local rc=$? i qpids
	trap - EXIT INT TERM
	if [ -n "$pypid" ] && kill -0 "$pypid" 2>/dev/null; then
		kill -TERM "$pypid" 2>/dev/null || true
		wait "$pypid" 2>/dev/null || true
	fi
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 600; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "daemon did not stop within 60 s of SIGTERM: killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	fi
	# whatever a daemon that did not stop cleanly left: its VMMs (their command
	# lines hold our unique state dir), the mounts, the loop device
	qpids=$(pgrep -f -- "$state/" || true)
	for i in $qpids; do
		kill -KILL "$i" 2>/dev/null || true
	done
	if grep -q " $mnt " /proc/self/mountinfo; then
		log "FUSE mount left behind: detaching it"
		fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
	fi
	if grep -q " $state/store " /proc/self/mountinfo; then
		log "store mount left behind: detaching it"
		umount -l "$state/store" 2>/dev/null || true
	fi
	for i in $(losetup -j "$state/store.xfs" 2>/dev/null | cut -d: -f1); do
		losetup -d "$i" 2>/dev/null || true
	done
	if ! grep -qE " ($mnt|$state)[ /]" /proc/self/mountinfo; then
		rm -rf "$state"
		rmdir "$mnt" 2>/dev/null || true
	fi
	if [ "$rc" -ne 0 ]; then
		log "failed (exit $rc); daemon log $daemon_log, last lines:"
		tail -n 20 "$daemon_log" >&2 || true
	else
		rm -f "$daemon_log"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "daemon: $bin, image $image, mount $mnt, state $state"
"$bin" -f --state-dir "$state" --image-dir "$image" --spares "${BENCH_SPARES:-2}" "$mnt" 2>"$daemon_log" &
pid=$!

# The benchmark runs in the background and the shell waits for it: `wait`,
# unlike a foreground command, returns as soon as a trapped signal arrives,
# so Ctrl-C or a SIGTERM tears everything down at once.
python3 - "$mnt" "$pid" "${benches[@]}" <<'PY' &
import json, math, os, statistics, sys, time

mnt, daemon_pid, benches = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
N = int(os.environ.get("BENCH_N", "30"))
COLD_N = int(os.environ.get("BENCH_COLD_N", "8"))
SETTLE = int(os.environ.get("BENCH_SETTLE_MS", "500")) / 1000.0
WARMUP = 2          # restore path only
MAX_FAILURES = 3    # per path: a create that fails is retried, at most this often


def err(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def alive():
    try:
        os.kill(daemon_pid, 0)
        return True
    except ProcessLookupError:
        return False


def read(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        data = b""
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                return data.decode()
            data += b
    finally:
        os.close(fd)


def write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def mounted():
    with open("/proc/self/mountinfo") as f:
        if not any(line.split()[4] == mnt for line in f):
            return False
    try:
        os.stat(mnt)
        return True
    except OSError:
        return False


def wait_template(t, timeout=300):
    """Waits for template t to be ready; a failed bake is retried twice."""
    bakes = 1
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise SystemExit("bench: error: the daemon died")
        st = json.loads(read("%s/templates/%s/status" % (mnt, t)))
        if st["state"] == "ready":
            return st
        if st["state"] == "failed":
            if bakes >= 3:
                raise SystemExit("bench: error: template %s: %s" % (t, st["error"]))
            err("template %s: bake failed (%s); baking again" % (t, st["error"]))
            write("%s/templates/%s/ctl" % (mnt, t), "bake\n")
            bakes += 1
        if time.monotonic() > deadline:
            raise SystemExit("bench: error: template %s not ready after %d s" % (t, timeout))
        time.sleep(0.1)


def nearest_rank(sorted_vals, p):
    """Nearest-rank percentile: the ceil(p/100 * n)-th smallest value (1-based)."""
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def create_once(t, name):
    """(ms from mkdir to wait's answer, status, {phase: ms}) or raises RuntimeError."""
    d = "%s/templates/%s/sandboxes/%s" % (mnt, t, name)
    t0 = time.perf_counter()
    os.mkdir(d)
    try:
        fd = os.open(d + "/wait", os.O_RDONLY)
        try:
            answer = os.read(fd, 64)
        finally:
            os.close(fd)
        ms = (time.perf_counter() - t0) * 1000.0
        ok = answer == b"ready\n"
    except OSError as e:
        ms, ok, answer = None, False, str(e).encode()
    try:
        status = json.loads(read(d + "/status"))
        phases = {}
        for line in read(d + "/timings").splitlines():
            k, v = line.split()
            if k != "total":
                phases[k] = float(v)
    finally:
        os.rmdir(d)  # not timed
    if not ok:
        raise RuntimeError("%s: %s (%s)" % (name, status.get("error") or answer.decode(errors="replace"),
                                            status.get("state")))
    return ms, status, phases


def run_path(t, path, n, warmup):
    samples, phase_samples, errors = [], {}, []
    spare_claims = 0
    i = 0
    while len(samples) < n:
        name = "b%s%d" % (path[0], i)
        i += 1
        try:
            ms, st, ph = create_once(t, name)
        except RuntimeError as e:
            errors.append(str(e))
            err("%s create failed: %s" % (path, e))
            if len(errors) > MAX_FAILURES:
                raise SystemExit("bench: error: %d %s creates failed" % (len(errors), path))
            time.sleep(SETTLE)
            continue
        if st["path"] != path:
            raise SystemExit("bench: error: %s: expected path %s, got %s (%s)" % (
                name, path, st["path"], st.get("path_reason")))
        if warmup > 0:
            warmup -= 1
            err("%s warm-up %.1f ms (not counted)" % (path, ms))
        else:
            samples.append(ms)
            for k, v in ph.items():
                phase_samples.setdefault(k, []).append(v)
            spare_claims += "claim" in ph
        time.sleep(SETTLE)
    s = sorted(samples)
    res = {"bench": "create", "path": path, "n": len(s),
           "p50_ms": round(nearest_rank(s, 50), 3), "p99_ms": round(nearest_rank(s, 99), 3),
           "mean_ms": round(statistics.fmean(s), 3), "min_ms": round(s[0], 3), "max_ms": round(s[-1], 3)}
    phases = {k: round(nearest_rank(sorted(v), 50), 3) for k, v in phase_samples.items()}
    return res, phases, errors, spare_claims


def bench_create():
    out = []
    wait_template("default")
    res_r, ph_r, err_r, claims = run_path("default", "restore", N, WARMUP)
    os.mkdir("%s/templates/coldbench" % mnt)  # never baked: every create boots cold
    st = json.loads(read("%s/templates/coldbench/status" % mnt))
    if st["state"] != "new":
        raise SystemExit("bench: error: template coldbench is %s, expected new" % st["state"])
    res_c, ph_c, err_c, _ = run_path("coldbench", "cold", COLD_N, 0)
    os.rmdir("%s/templates/coldbench" % mnt)
    ratio = res_c["p50_ms"] / res_r["p50_ms"]

    print("", file=sys.stderr)
    print("create: mkdir until `wait` answers, timed outside the daemon (ms; p50/p99 nearest-rank)",
          file=sys.stderr)
    print("  %-8s %4s %9s %9s %9s %9s %9s" % ("path", "n", "p50", "p99", "mean", "min", "max"), file=sys.stderr)
    for r in (res_r, res_c):
        print("  %-8s %4d %9.1f %9.1f %9.1f %9.1f %9.1f" % (
            r["path"], r["n"], r["p50_ms"], r["p99_ms"], r["mean_ms"], r["min_ms"], r["max_ms"]), file=sys.stderr)
    print("  restore: %d warm-up creates not counted; %d of %d counted restores used a spare VMM (claim phase)"
          % (WARMUP, claims, res_r["n"]), file=sys.stderr)
    print("  cold/restore p50 ratio: %.1f" % ratio, file=sys.stderr)
    for label, ph in (("restore", ph_r), ("cold", ph_c)):
        print("  %s phases, p50 (from the sandboxes' timings files): %s" % (
            label, ", ".join("%s %.1f" % kv for kv in ph.items())), file=sys.stderr)
    print("", file=sys.stderr)

    out.append(res_r)
    out.append({"bench": "create", "path": "restore", "phases_p50_ms": ph_r})
    out.append(res_c)
    out.append({"bench": "create", "path": "cold", "phases_p50_ms": ph_c})
    out.append({"bench": "create", "metric": "ratio_cold_over_restore", "value": round(ratio, 3)})
    for path, errs in (("restore", err_r), ("cold", err_c)):
        if errs:
            out.append({"bench": "create", "path": path, "failed_creates": len(errs), "errors": errs})
    return out


deadline = time.monotonic() + 60
while not mounted():
    if not alive():
        raise SystemExit("bench: error: the daemon exited during start-up")
    if time.monotonic() > deadline:
        raise SystemExit("bench: error: the daemon did not mount within 60 s")
    time.sleep(0.05)

for b in benches:
    for line in {"create": bench_create}[b]():
        print(json.dumps(line), flush=True)
PY
pypid=$!
wait "$pypid"
