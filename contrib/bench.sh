#!/usr/bin/env bash
# Benchmarks emberfs from outside the daemon, against real guests.
#
#   contrib/bench.sh [NAME...]      run the named benchmarks (default: all)
#
# Benchmarks:
#   create   mkdir of a sandbox until its `wait` file returns "ready", timed by
#            the caller (time.perf_counter around os.mkdir and the read of
#            wait); each sandbox is destroyed afterwards (rmdir, not timed).
#            warm path: template "default" (baked at start) with its pool at
#            BENCH_POOL (default 4); before each sample the script waits until
#            the pool is full again, so every sample claims a warm slot.
#            restore path: the same template with its pool set to 0, on a
#            spare VMM (--spares 1, the default), the spare back before each
#            sample; restore_spawn: the same without a spare (a decoy sandbox
#            takes it just before the timed create, destroyed after), so each
#            restore spawns its VMM: the baseline, in the same run.
#            Both: BENCH_N samples (default 30) after 2 warm-up creates that
#            are not counted. After each sample (untimed as a create) the
#            first `exec` of `true` in the new sandbox is timed on its own.
#            BENCH_WARMUP_EXEC=1 starts the daemon with --warmup-exec.
#            cold path: template "coldbench", made with mkdir and never baked,
#            so every create boots the kernel: BENCH_COLD_N samples (default 8),
#            no warm-up (each cold boot starts from nothing anyway).
#   burst16  16 concurrent mkdirs (one thread each, released together) against
#            a full pool of 16 warm slots, until all 16 `wait` reads returned;
#            BENCH_BURST_RUNS runs (default 5), the median wall time reported.
#   density  idle sandboxes of "default" added BENCH_DENSITY_STEP at a time (default
#            25, up to BENCH_DENSITY_MAX, 400) until a warm create's p50
#            (BENCH_DENSITY_PROBES probes, default 10, the pool at BENCH_POOL and
#            refilled before each) is over 2x its p50 with none idle, or
#            MemAvailable falls below BENCH_DENSITY_RESERVE_MIB (2048); at each
#            step also the idle VMMs' PSS (median), the CPU each burns
#            (all its threads' schedstat run time over BENCH_DENSITY_CPU_S, default 5 s) and the
#            daemon's RSS. PSS is the per-sandbox memory figure: it divides
#            what VMMs share (a snapshot's base, the binary) among them.
#            MemFree and MemAvailable are not used: the loop-mounted store
#            caches its files twice, and guest RAM in shared-mapped store
#            files counts as reclaimable page cache.
#   netslot  build/netpool/netpool-bench: BENCH_N network slots built one
#            after another (namespace, veth pair, tap, addresses, routes, NAT
#            rules), then BENCH_N claims from a ready pool of 8; its own
#            range 10.231.0.0/16 and instance tag, so it never meets the
#            daemon's slots.
#   netcreate the create benchmark's warm and restore paths with networking
#            (the daemon runs with --net --net-range 10.234.0.0/16): template
#            "default" (net) against "nonet" (the same config without
#            "net"), BENCH_N samples each, in alternating blocks of 5.
#   lifecycle one sandbox of "default", BENCH_N times each: `fork NAME` until
#            the child's wait answered (timed; on a spare VMM, the spare
#            back before each; also how long the parent's ctl write took:
#            "fork_parent_stopped"), the same without a spare (a decoy
#            sandbox took it: "fork_spawn", the baseline), `pause` then
#            `resume` written to its ctl (timed together), `hibernate`
#            (timed), `resume` of the hibernated sandbox until its guest
#            answered (timed: the wake, on a spare), a hibernate and a wake
#            without a spare ("wake_spawn"); fork and wake carry
#            "spawn_ratio", the baseline's p50 over theirs.
#   slot     resident memory of idle warm slots (the pool at 8) and of the
#            template's spare VMM: RSS from /proc/PID/status and PSS from
#            /proc/PID/smaps_rollup of each one's VMM, the medians reported.
#   soak     contrib/bench_soak.py (tests/integration/test_soak.py's Soak): 8
#            workers create, exec in and destroy sandboxes, 312 cycles in 3
#            rounds with a kill -9 and a SIGTERM restart between them, against
#            the ASan build if there is one; the leak inventory, the daemon's
#            descriptors and its RSS are compared in every round.
#   checkpoint contrib/bench_checkpoint.py: one sandbox with a counting
#            process; BENCH_N times: `checkpoint` (ctl write timed; the vCPUs'
#            stop from its status), `rollback` (ctl write until an exec
#            answered, and the write alone), the space of each checkpoint;
#            in the same run BENCH_N wakes (hibernate, resume timed), the
#            baseline a rollback is made of.
#   adopt    contrib/bench_adopt.py: BENCH_ADOPT_N sandboxes (default 16, every
#            fourth paused), kill -9 of the daemon and a restart on the same
#            state dir, BENCH_ADOPT_ROUNDS times (default 5): time until the
#            mount answers and until every sandbox answered (status, exec),
#            against the same restart with no sandbox.
#   noisy    a noisy neighbour: sandboxes of "default" (256 MiB guests),
#            "quiet" and "noisy"; `exec` of `true` in quiet (as for exec, one
#            after another, or BENCH_NOISY_GAP_MS apart), then a read of its
#            `status`, BENCH_NOISY_N times (default 200) unloaded, with noisy
#            idle, and as many loaded, while noisy's guest runs a fork bomb and a
#            memory hog (dd of 96 MiB of zeros into its tmpfs, over and over:
#            its RAM file's pages dirtied and written back on the host),
#            BENCH_NOISY_RAMP_S (default 5) after the load started; in
#            BENCH_NOISY_ROUNDS rounds (default 4), each with a new noisy
#            sandbox, so drift of the host's other work falls on both alike.
#            The `status` read is the daemon alone (no guest); the host CPU
#            noisy's VMM used while loaded (its utime+stime) is reported too.
#            BENCH_NOISY_VCPUS (default 1) gives noisy more vCPUs (template
#            "noisybench": the default config with that many, baked first).
#   exec     one sandbox of "default": `true` through its `exec` file (open
#            O_RDWR, write, read until EOF, close), BENCH_EXEC_N times
#            (default 300) after 10 warm-up runs; round trip in ms.
#   live     the live guest filesystem, in a sandbox of template "livebench"
#            (the default config with mem_mib BENCH_LIVE_MEM, default 1024, so
#            the guest's /tmp tmpfs, half its RAM, holds the file: with the
#            default 256 MiB guest /tmp has ~110 MiB and the root disk ~50 MiB):
#            write_mib_s: BENCH_LIVE_MIB (default 256) MiB of random bytes
#            written from the host to live/NAME/tmp/big in 1 MiB writes
#            (open to close, fsync included); read_mib_s: that file read
#            back through live/NAME in 1 MiB reads (open to EOF), its SHA-256
#            checked against the guest's sha256sum (untimed); stat: os.stat of
#            BENCH_STAT_N (default 1000) distinct guest files, each stat-ed once
#            so every one is a LOOKUP answered by the guest (a repeated stat
#            is served from the kernel's 1 s attribute cache: reported as
#            stat_cached_p50_us).
#   python   contrib/bench_python.py: the python template (contrib/up.sh's):
#            bake cold, cached and forced; warm create; mkdir to the first
#            output of python3 -c 'print(1)' with and without the template's
#            warm command; idle warm slot RSS/PSS (its docstring has the
#            details). Skipped (77) when the Debian archive cannot be reached
#            to build the image the first time.
#            Between samples the script idles BENCH_SETTLE_MS (default 500) so
#            every create starts from a quiet daemon (destroys finished,
#            standby VMMs refilled) rather than racing the previous sample's
#            background work.
#   e2b      contrib/bench_e2b.py: emberfs-e2b driven by the E2B JavaScript
#            SDK (tests/e2b/bench.mjs, the pinned SDK installed by
#            contrib/e2b-sdk.sh) on the python template with a pool pinned at
#            BENCH_E2B_POOL (default 4): Sandbox.create() until it resolved
#            (the pool refilled before each sample, untimed),
#            commands.run('true') round trip, files.write + files.read of
#            1 MiB; BENCH_E2B_N samples (default 30; run: 3x); and the
#            guest's share of run: /bin/bash -l -c true through the mount's
#            exec file (run_mount_baseline). Skipped (77)
#            without node and npm or when the python image cannot be built.
#   cluster  contrib/bench_cluster.py: a three-member etcd cluster (Debian's
#            etcd-server, tests/integration/etcdcluster.py) and three cluster
#            hosts A, B, C on one machine, plus a single-host daemon S:
#            placement_overhead (a warm create from a local slot on A minus
#            the same on S, mkdir until `wait`, p50/p99), remote_warm_create
#            (mkdir on A served by a warm slot on B, until A's `wait`),
#            remote exec `true` from A against the same on B (ratio of the
#            p50s), spread64 (BENCH_SPREAD_N concurrent creates, default 64,
#            made on A, B, C in turn: wall time and where they ran). BENCH_N,
#            BENCH_POOL, BENCH_EXEC_N (default 100), BENCH_SETTLE_MS (default
#            300). Skipped (77) without etcd-server.
#   store    contrib/bench_store.py: the chunk store (--store; Debian's nginx
#            with WebDAV in a network namespace, tests/integration/storehelp.py):
#            a daemon bakes and publishes, then BENCH_N local restores (p50/p99);
#            BENCH_N fresh daemons (empty caches, default 10) each install the
#            template from the store (install time from bake.timings) and
#            restore a first sandbox (empty cache) and a second (warm cache);
#            the same with --no-prefetch; MiB fetched per first restore over
#            the guest's memory. Skipped (77) without nginx.
#
# It builds what it needs (ninja -C build; meson setup build first if there is
# no build/), builds the guest image into .image/ if .image/current is missing
# (EMBERFS_IMAGE_DIR, as for the integration tests, uses another image dir),
# starts a daemon on a temporary mount point and state dir, and always tears
# everything down (trap), also on errors and Ctrl-C.
#
# Output: a human-readable table on stderr; on stdout one JSON object per line:
#   {"bench":"create","path":"warm","n":30,"p50_ms":..,"p99_ms":..,"mean_ms":..,"min_ms":..,"max_ms":..,
#    "first_exec_p50_ms":..,"first_exec_p99_ms":..,"samples_ms":[..]}
#   (samples_ms: the n counted samples in the order they were taken, ms rounded
#   to 0.01, warm-ups and failed creates left out; contrib/plot.py draws them)
#   {"bench":"create","path":"warm","phases_p50_ms":{"claim":..,...}}
#   the same two for "restore" (on a spare), "restore_spawn" and "cold", then
#   {"bench":"create","metric":"ratio_restore_over_warm","value":..}   (p50 restore / p50 warm)
#   {"bench":"create","metric":"ratio_cold_over_restore","value":..}   (p50 cold / p50 restore)
#   {"bench":"create","metric":"ratio_restore_spawn_over_spare","value":..} (p50 restore_spawn / p50 restore)
#   {"bench":"burst16","path":"warm","wall_ms":..,"runs_ms":[..],"warm_served":[..]}
#   {"bench":"slot","metric":"rss_mib","value":..,"pss_mib":..,"n":..}   (idle warm slots)
#   {"bench":"slot","metric":"rss_mib","kind":"spare","value":..,"pss_mib":..,"n":1}   (the spare VMM)
#   {"bench":"density","n":..,"create_p50_ms_loaded":..,"create_p50_ms_unloaded":..,"pss_mib_median":..,
#    "daemon_rss_mib":..,"idle_cpu_pct_median":..,"steps":[{"idle":..,..},..]}
#   {"bench":"netslot","metric":"claim"|"build","n":..,"p50_ms":..,"p99_ms":..}
#   {"bench":"netslot","metric":"ratio_build_over_claim","value":..}
#   {"bench":"netcreate","path":"warm"|"restore","net":true|false,"n":..,"p50_ms":..,"p99_ms":..}
#   {"bench":"netcreate","path":"warm"|"restore","metric":"net_added_p50_ms","value":..}
#   {"bench":"exec","metric":"roundtrip","n":..,"p50_ms":..,"p99_ms":..,"mean_ms":..}
#   {"bench":"noisy","metric":"neighbour_exec","n":..,"noisy_vcpus":..,"unloaded_p50_ms":..,"unloaded_p99_ms":..,
#    "loaded_p50_ms":..,"loaded_p99_ms":..,"loaded_max_ms":..,"ratio_p50":..,"noisy_cpu_pct":..}
#   {"bench":"noisy","metric":"neighbour_status","unloaded_p50_ms":..,"loaded_p50_ms":..,"loaded_p99_ms":..}
#   {"bench":"live","metric":"write_mib_s"|"read_mib_s","value":..,"mib":..}
#   {"bench":"live","metric":"stat","n":..,"p50_us":..,"p99_us":..,"cached_p50_us":..}
#   {"bench":"python","metric":"bake"|"warm_create"|"first_output"|"slot",...} (contrib/bench_python.py)
#   {"bench":"e2b","metric":"create","n":..,"p50_ms":..,"p99_ms":..,"mean_ms":..,"pool":..}
#   {"bench":"e2b","metric":"run","n":..,"p50_ms":..,"p99_ms":..,"mean_ms":..}
#   {"bench":"e2b","metric":"files_1mib","n":..,"p50_ms":..,"p99_ms":..,"write_p50_ms":..,"read_p50_ms":..}
#   {"bench":"e2b","metric":"run_mount_baseline","n":..,"p50_ms":..,"p99_ms":..}
#   (contrib/bench_e2b.py, tests/e2b/bench.mjs)
#   {"bench":"cluster","metric":"placement_overhead","p50_ms":..,"p99_ms":..,...}
#   {"bench":"cluster","metric":"remote_warm_create","p50_ms":..,"p99_ms":..,...}
#   {"bench":"cluster","metric":"remote_exec_over_local","value":..,...}
#   {"bench":"cluster","metric":"spread64","wall_ms":..,"per_host":[..],...}   (contrib/bench_cluster.py)
#   {"bench":"store","metric":"local_restore_p50_ms"|"empty_cache_restore_p50_ms"|"warm_cache_restore_p50_ms"|
#    "empty_cache_restore_p50_ms_noprefetch" (and the _p99_ms ones)|"empty_cache_over_local"|"fetched_fraction",
#    "value":..}, ... (contrib/bench_store.py)
#   {"bench":"fork","n":..,"p50_ms":..,"p99_ms":..}, the same for "fork_parent_stopped",
#   "pause_resume", "hibernate" and "wake"
# Creates that fail are retried (at most 3 failures per path) and reported as
#   {"bench":"create","path":"cold","failed_creates":K,"errors":[...]}
# Percentiles (p50, p99, and the per-phase p50) use the nearest-rank method:
# the ceil(p/100 * n)-th smallest sample, always one of the samples.
#
#
# Needs root (FUSE, loop devices, QEMU), like the daemon.
set -euo pipefail

cd "$(dirname "$0")/.."
top=$PWD
ALL_BENCHES=(create burst16 slot density netslot netcreate lifecycle exec noisy live adaptive adopt soak python e2b cluster checkpoint store)

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
# EMBERFS_BIN: another build's daemon (e.g. an older commit's, for before/after figures)
bin=${EMBERFS_BIN:-$top/build/fs/emberfs}
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

# adaptive runs its own daemons (contrib/bench_adaptive.py); the rest share one
rest=()
for b in "${benches[@]}"; do
	if [ "$b" = adaptive ]; then
		log "adaptive: contrib/bench_adaptive.py (its own daemons, several minutes)"
		EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$bin python3 contrib/bench_adaptive.py || exit 1
	elif [ "$b" = soak ]; then
		sbin=$bin
		if [ -z "${EMBERFS_BIN:-}" ] && [ -x build-asan/fs/emberfs ]; then
			sbin=$top/build-asan/fs/emberfs
		fi
		log "soak: contrib/bench_soak.py with $sbin (its own daemons, several minutes)"
		ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$sbin \
			python3 contrib/bench_soak.py || exit 1
	elif [ "$b" = adopt ]; then
		log "adopt: contrib/bench_adopt.py (its own daemon, kill -9 and restarts)"
		EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$bin python3 contrib/bench_adopt.py || exit 1
	elif [ "$b" = checkpoint ]; then
		log "checkpoint: contrib/bench_checkpoint.py (its own daemon)"
		EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$bin python3 contrib/bench_checkpoint.py || exit 1
	elif [ "$b" = python ]; then
		log "python: contrib/bench_python.py (its own daemon, the python image, several minutes)"
		rc=0
		EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$bin python3 contrib/bench_python.py || rc=$?
		[ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || exit 1
	elif [ "$b" = cluster ]; then
		log "cluster: contrib/bench_cluster.py (its own etcd cluster, three cluster hosts and a single host)"
		rc=0
		EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$bin python3 contrib/bench_cluster.py || rc=$?
		[ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || exit 1
	elif [ "$b" = store ]; then
		log "store: contrib/bench_store.py (its own nginx store and daemons, fresh caches)"
		rc=0
		EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$bin python3 contrib/bench_store.py || rc=$?
		[ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || exit 1
	elif [ "$b" = e2b ]; then
		log "e2b: contrib/bench_e2b.py (its own daemon and emberfs-e2b, the E2B SDK from tests/e2b)"
		rc=0
		EMBERFS_IMAGE_DIR=$image EMBERFS_BIN=$bin EMBERFS_E2B_BIN=${EMBERFS_E2B_BIN:-$top/build/e2b/emberfs-e2b} \
			python3 contrib/bench_e2b.py || rc=$?
		[ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || exit 1
	else
		rest+=("$b")
	fi
done
[ ${#rest[@]} -gt 0 ] || exit 0
benches=("${rest[@]}")

net_args=
case " ${benches[*]} " in
*" netcreate "*) net_args="--net --net-range 10.234.0.0/16" ;;
esac
# density: room for its idle sandboxes, its probes and the pool (the daemon's default is 64)
limit_args=
case " ${rest[*]} " in
*" density "*) limit_args="--max-sandboxes $((${BENCH_DENSITY_MAX:-400} + 64))" ;;
esac
log "daemon: $bin, image $image, mount $mnt, state $state ${net_args:+(networking on)}"
"$bin" -f --state-dir "$state" --image-dir "$image" --pool 0 ${BENCH_WARMUP_EXEC:+--warmup-exec} $net_args $limit_args \
	"$mnt" 2>"$daemon_log" &
pid=$!

# The benchmark runs in the background and the shell waits for it: `wait`,
# unlike a foreground command, returns as soon as a trapped signal arrives,
# so Ctrl-C or a SIGTERM tears everything down at once.
BENCH_TOP=$top python3 - "$mnt" "$pid" "${benches[@]}" <<'PY' &
import json, math, os, statistics, sys, time

mnt, daemon_pid, benches = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
N = int(os.environ.get("BENCH_N", "30"))
COLD_N = int(os.environ.get("BENCH_COLD_N", "8"))
SETTLE = int(os.environ.get("BENCH_SETTLE_MS", "500")) / 1000.0
POOL = int(os.environ.get("BENCH_POOL", "4"))
BURST_RUNS = int(os.environ.get("BENCH_BURST_RUNS", "5"))
WARMUP = 2          # warm and restore paths
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


def pool_status(t):
    return json.loads(read("%s/templates/%s/status" % (mnt, t)))["pool"]


def set_pool(t, n, timeout=120):
    """Sets the pool's target and waits until it holds exactly n warm slots."""
    write("%s/templates/%s/pool" % (mnt, t), "%d\n" % n)
    wait_pool(t, n, timeout)


def wait_pool(t, n, timeout=120, what="warm"):
    """Waits until t's pool holds exactly n of `what` ("warm" slots, "spares") and prepares nothing."""
    deadline = time.monotonic() + timeout
    while True:
        p = pool_status(t)
        if p[what] == n and p["preparing"] == 0:
            return
        if not alive():
            raise SystemExit("bench: error: the daemon died")
        if time.monotonic() > deadline:
            raise SystemExit("bench: error: pool of %s not at %d %s after %d s: %s" % (t, n, what, timeout, p))
        time.sleep(0.02)


def wait_spares(t, n, timeout=120):
    wait_pool(t, n, timeout, "spares")


DECOY = "bdecoy"


def take_spare():
    """For a baseline without a spare: a decoy sandbox of "default" takes its spare (the filler makes
    the next one only 100 ms after creates settle, so the timed operation finds none). drop_decoy
    after the sample."""
    decoy = "%s/templates/default/sandboxes/%s" % (mnt, DECOY)
    wait_spares("default", 1)
    os.mkdir(decoy)
    if read(decoy + "/wait") != "ready\n":
        raise SystemExit("bench: error: the decoy sandbox did not come up: %s" % read(decoy + "/status"))


def drop_decoy():
    os.rmdir("%s/templates/default/sandboxes/%s" % (mnt, DECOY))


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
        first_exec = None
        if ok:
            t1 = time.perf_counter()
            efd = os.open(d + "/exec", os.O_RDWR)
            try:
                os.write(efd, b"true")
                while os.read(efd, 1 << 16):
                    pass
            finally:
                os.close(efd)
            first_exec = (time.perf_counter() - t1) * 1000.0
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
    phases["first_exec"] = first_exec
    return ms, status, phases


def run_path(t, path, n, warmup, before=None, after=None, label=None, slot=None):
    """label: the result's name (default path); slot: the kind of slot each
    sample must have claimed ("warm", "spare"), "none", or None (any)."""
    label = label or path
    samples, phase_samples, errors = [], {}, []
    i = 0
    while len(samples) < n:
        if before:
            before()
        name = "b%s%d" % (label[0] + label[-1], i)
        i += 1
        try:
            ms, st, ph = create_once(t, name)
        except RuntimeError as e:
            errors.append(str(e))
            err("%s create failed: %s" % (label, e))
            if len(errors) > MAX_FAILURES:
                raise SystemExit("bench: error: %d %s creates failed" % (len(errors), label))
            time.sleep(SETTLE)
            continue
        finally:
            if after:
                after()
        kind = (st.get("slot") or {}).get("kind", "none")
        if st["path"] != path or (slot and kind != slot):
            raise SystemExit("bench: error: %s: expected path %s (slot %s), got %s (slot %s; %s)" % (
                name, path, slot, st["path"], kind, st.get("path_reason")))
        if warmup > 0:
            warmup -= 1
            err("%s warm-up %.1f ms (not counted)" % (path, ms))
        else:
            samples.append(ms)
            for k, v in ph.items():
                phase_samples.setdefault(k, []).append(v)
        time.sleep(SETTLE)
    first = sorted(phase_samples.pop("first_exec"))
    s = sorted(samples)
    res = {"bench": "create", "path": label, "n": len(s),
           "p50_ms": round(nearest_rank(s, 50), 3), "p99_ms": round(nearest_rank(s, 99), 3),
           "mean_ms": round(statistics.fmean(s), 3), "min_ms": round(s[0], 3), "max_ms": round(s[-1], 3)}
    phases = {k: round(nearest_rank(sorted(v), 50), 3) for k, v in phase_samples.items()}
    res["_samples"] = samples
    res["first_exec_p50_ms"] = round(nearest_rank(first, 50), 3)
    res["first_exec_p99_ms"] = round(nearest_rank(first, 99), 3)
    return res, phases, errors


def bench_create():
    out = []
    wait_template("default")
    set_pool("default", POOL)
    res_w, ph_w, err_w = run_path("default", "warm", N, WARMUP, lambda: wait_pool("default", POOL))
    set_pool("default", 0)
    # restore: on a spare VMM (the daemon's default, --spares 1), the spare back before each
    res_r, ph_r, err_r = run_path("default", "restore", N, WARMUP, lambda: wait_spares("default", 1),
                                  slot="spare")
    # the baseline in the same run: a restore that spawns its VMM. A decoy sandbox takes the spare
    # first; the filler makes the next one only 100 ms after the creates settle, so the timed create
    # finds none. The decoy is destroyed after the sample.
    res_s, ph_s, err_s = run_path("default", "restore", N, WARMUP, take_spare, drop_decoy,
                                  label="restore_spawn", slot="none")
    os.mkdir("%s/templates/coldbench" % mnt)  # never baked: every create boots cold
    st = json.loads(read("%s/templates/coldbench/status" % mnt))
    if st["state"] != "new":
        raise SystemExit("bench: error: template coldbench is %s, expected new" % st["state"])
    res_c, ph_c, err_c = run_path("coldbench", "cold", COLD_N, 0)
    os.rmdir("%s/templates/coldbench" % mnt)
    ratio = res_c["p50_ms"] / res_r["p50_ms"]
    ratio_w = res_r["p50_ms"] / res_w["p50_ms"]
    ratio_s = res_s["p50_ms"] / res_r["p50_ms"]

    print("", file=sys.stderr)
    print("create: mkdir until `wait` answers, timed outside the daemon (ms; p50/p99 nearest-rank)",
          file=sys.stderr)
    print("  %-13s %4s %9s %9s %9s %9s %9s %11s" % ("path", "n", "p50", "p99", "mean", "min", "max", "1st exec"),
          file=sys.stderr)
    for r in (res_w, res_r, res_s, res_c):
        print("  %-13s %4d %9.1f %9.1f %9.1f %9.1f %9.1f %11.1f" % (
            r["path"], r["n"], r["p50_ms"], r["p99_ms"], r["mean_ms"], r["min_ms"], r["max_ms"],
            r["first_exec_p50_ms"]), file=sys.stderr)
    print("  warm and restore: %d warm-up creates each, not counted; warm with a pool of %d, full before each"
          % (WARMUP, POOL), file=sys.stderr)
    print("  restore: on a spare VMM, the spare back before each; restore_spawn: none (a decoy took it)",
          file=sys.stderr)
    print("  restore/warm p50 ratio: %.1f, cold/restore p50 ratio: %.1f, restore_spawn/restore: %.2f" % (
        ratio_w, ratio, ratio_s), file=sys.stderr)
    for label, ph in (("warm", ph_w), ("restore", ph_r), ("restore_spawn", ph_s), ("cold", ph_c)):
        print("  %s phases, p50 (from the sandboxes' timings files): %s" % (
            label, ", ".join("%s %.1f" % kv for kv in ph.items())), file=sys.stderr)
    print("", file=sys.stderr)

    # the raw samples, for distributions (contrib/plot.py); the summary keys stay as they were
    for r in (res_w, res_r, res_s, res_c):
        r["samples_ms"] = [round(v, 2) for v in r["_samples"]]
    out.append(res_w)
    out.append({"bench": "create", "path": "warm", "phases_p50_ms": ph_w})
    out.append(res_r)
    out.append({"bench": "create", "path": "restore", "phases_p50_ms": ph_r})
    out.append(res_s)
    out.append({"bench": "create", "path": "restore_spawn", "phases_p50_ms": ph_s})
    out.append(res_c)
    out.append({"bench": "create", "path": "cold", "phases_p50_ms": ph_c})
    out.append({"bench": "create", "metric": "ratio_restore_over_warm", "value": round(ratio_w, 3)})
    out.append({"bench": "create", "metric": "ratio_cold_over_restore", "value": round(ratio, 3)})
    out.append({"bench": "create", "metric": "ratio_restore_spawn_over_spare", "value": round(ratio_s, 3)})
    for path, errs in (("warm", err_w), ("restore", err_r), ("restore_spawn", err_s), ("cold", err_c)):
        if errs:
            out.append({"bench": "create", "path": path, "failed_creates": len(errs), "errors": errs})
    return out


def bench_burst16():
    import threading
    wait_template("default")
    runs, warm_served = [], []
    for run in range(BURST_RUNS):
        set_pool("default", 16, timeout=300)
        names = ["burst%d_%d" % (run, i) for i in range(16)]
        go = threading.Barrier(17)
        results = [None] * 16

        def one(i):
            d = "%s/templates/default/sandboxes/%s" % (mnt, names[i])
            go.wait()
            try:
                os.mkdir(d)
                fd = os.open(d + "/wait", os.O_RDONLY)
                try:
                    results[i] = os.read(fd, 64)
                finally:
                    os.close(fd)
            except OSError as e:
                results[i] = str(e).encode()
            results[i] = (results[i], time.perf_counter())

        th = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for x in th:
            x.start()
        go.wait()
        t0 = time.perf_counter()
        for x in th:
            x.join()
        wall = (max(r[1] for r in results) - t0) * 1000.0
        bad = [n for n, r in zip(names, results) if r[0] != b"ready\n"]
        paths = [json.loads(read("%s/templates/default/sandboxes/%s/status" % (mnt, n)))["path"] for n in names]
        for n in names:
            os.rmdir("%s/templates/default/sandboxes/%s" % (mnt, n))
        if bad:
            raise SystemExit("bench: error: burst creates failed: %s" % bad)
        runs.append(round(wall, 3))
        warm_served.append(paths.count("warm"))
        err("burst16 run %d: %.1f ms wall, %d of 16 warm" % (run, wall, paths.count("warm")))
        time.sleep(SETTLE)
    set_pool("default", 0)
    med = nearest_rank(sorted(runs), 50)
    print("burst16: 16 concurrent mkdir+wait against a full pool of 16: median %.1f ms wall over %d runs (%s)"
          % (med, len(runs), ", ".join("%.1f" % r for r in runs)), file=sys.stderr)
    return [{"bench": "burst16", "path": "warm", "wall_ms": med, "runs_ms": runs, "warm_served": warm_served}]


def vmm_mem(pid):
    """(RSS, PSS) of a process in MiB (PSS None if smaps_rollup cannot be read)."""
    rss = pss = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024.0
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return rss, pss


def bench_slot():
    wait_template("default")
    set_pool("default", 8, timeout=300)
    wait_spares("default", 1)
    time.sleep(2)  # idle: nothing touches the slots
    mem = {"warm": ([], []), "spare": ([], [])}
    base = "%s/templates/default/slots" % mnt
    for sid in os.listdir(base):
        st = json.loads(read("%s/%s/status" % (base, sid)))
        if st["state"] not in mem:
            continue
        rss, pss = vmm_mem(st["vmm_pid"])
        mem[st["state"]][0].append(rss)
        if pss is not None:
            mem[st["state"]][1].append(pss)
    set_pool("default", 0)
    out = []
    for kind, (rss, pss) in mem.items():
        rss.sort()
        pss.sort()
        r = {"bench": "slot", "metric": "rss_mib", "value": round(nearest_rank(rss, 50), 1), "n": len(rss),
             "max_mib": round(rss[-1], 1)}
        if kind == "spare":
            r["kind"] = "spare"
        if pss:
            r["pss_mib"] = round(nearest_rank(pss, 50), 1)
        print("slot: idle %s (256 MiB guest), %d of them: RSS median %.1f MiB (max %.1f), PSS median %s MiB"
              % ("warm slot" if kind == "warm" else "spare VMM", len(rss), r["value"], r["max_mib"],
                 r.get("pss_mib")), file=sys.stderr)
        out.append(r)
    return out


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v.split()[0]) // 1024
    return out


def vmm_cpu_ns(pid):
    """CPU time of all a process's threads, in ns (schedstat: clock ticks are too coarse for an idle VMM)."""
    total = 0
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError):
        return None
    return total


def smaps_mib(pid, key):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def bench_density():
    """Idle sandboxes of default added in steps; at each step a warm create's p50 (pool refilled before
    each probe), the idle VMMs' PSS and CPU, the host memory they take, the daemon's RSS."""
    step = int(os.environ.get("BENCH_DENSITY_STEP", "25"))
    top_n = int(os.environ.get("BENCH_DENSITY_MAX", "400"))
    probes = int(os.environ.get("BENCH_DENSITY_PROBES", "10"))
    reserve = int(os.environ.get("BENCH_DENSITY_RESERVE_MIB", "2048"))
    cpu_s = float(os.environ.get("BENCH_DENSITY_CPU_S", "5"))
    wait_template("default")
    set_pool("default", POOL)

    def probe(tag):
        vals = []
        for i in range(probes):
            wait_pool("default", POOL, timeout=600)
            time.sleep(SETTLE)
            ms, st, _ = create_once("default", "dp%s_%d" % (tag, i))
            if st["path"] != "warm":
                raise SystemExit("bench: error: density probe served %s (%s)" % (st["path"], st.get("path_reason")))
            vals.append(ms)
        return nearest_rank(sorted(vals), 50)

    unloaded = probe("u")
    err("density: unloaded warm create p50 %.1f ms (%d probes)" % (unloaded, probes))
    idle, steps, pids = 0, [], []
    sdir = "%s/templates/default/sandboxes" % mnt
    while idle < top_n:
        for i in range(idle, min(idle + step, top_n)):
            name = "di%d" % i
            os.mkdir("%s/%s" % (sdir, name))
            if read("%s/%s/wait" % (sdir, name)) != "ready\n":
                raise SystemExit("bench: error: idle sandbox %s: %s" % (name, json.loads(read("%s/%s/status" % (sdir, name)))["error"]))
            pids.append(json.loads(read("%s/%s/status" % (sdir, name)))["vmm_pid"])
        idle = len(pids)
        wait_pool("default", POOL, timeout=600)
        time.sleep(2)  # idle: nothing touches them
        t0 = [vmm_cpu_ns(p) for p in pids]
        time.sleep(cpu_s)
        t1 = [vmm_cpu_ns(p) for p in pids]
        cpu = sorted((b - a) / 1e9 / cpu_s * 100.0 for a, b in zip(t0, t1) if a is not None and b is not None)
        pss = sorted(v for v in (smaps_mib(p, "Pss") for p in pids) if v is not None)
        mi = meminfo()
        loaded = probe("l%d" % idle)
        row = {"idle": idle, "create_p50_ms": round(loaded, 3), "pss_mib": round(nearest_rank(pss, 50), 1),
               "pss_mib_total": round(sum(pss), 1), "idle_cpu_pct_median": round(nearest_rank(cpu, 50), 3),
               "idle_cpu_pct_total": round(sum(cpu), 1), "daemon_rss_mib": round(smaps_mib(daemon_pid, "Rss") or 0, 1),
               "mem_available_mib": mi["MemAvailable"]}
        steps.append(row)
        err("density: %d idle: warm create p50 %.1f ms (%.2fx), PSS median %.1f MiB (%.0f MiB in all), "
            "CPU %.3f%% each (%.0f%% in all), daemon RSS %.1f MiB, %d MiB available"
            % (idle, loaded, loaded / unloaded, row["pss_mib"], row["pss_mib_total"], row["idle_cpu_pct_median"],
               row["idle_cpu_pct_total"], row["daemon_rss_mib"], mi["MemAvailable"]))
        if loaded > 2 * unloaded or mi["MemAvailable"] < reserve:
            break
    fit = [r for r in steps if r["create_p50_ms"] <= 2 * unloaded]
    best = fit[-1] if fit else {"idle": 0, "create_p50_ms": None, "pss_mib": None, "daemon_rss_mib": None}
    for i in range(idle):  # not timed
        os.rmdir("%s/di%d" % (sdir, i))
    set_pool("default", 0)
    print("density: %d idle sandboxes of default with a warm create within 2x its unloaded p50 (%.1f ms); "
          "stopped at %d (%s)" % (best["idle"], unloaded, idle,
                                  "create over 2x" if steps and steps[-1]["create_p50_ms"] > 2 * unloaded else
                                  "memory reserve" if steps and steps[-1]["mem_available_mib"] < reserve else
                                  "BENCH_DENSITY_MAX"), file=sys.stderr)
    return [{"bench": "density", "n": best["idle"], "create_p50_ms_loaded": best["create_p50_ms"],
             "create_p50_ms_unloaded": round(unloaded, 3), "pss_mib_median": best["pss_mib"],
             "daemon_rss_mib": best["daemon_rss_mib"],
             "idle_cpu_pct_median": best.get("idle_cpu_pct_median"), "steps": steps}]


def bench_netslot():
    import subprocess
    exe = os.path.join(os.environ.get("BENCH_TOP", "."), "build", "netpool", "netpool-bench")
    p = subprocess.run([exe, "-n", str(N)], capture_output=True, text=True, timeout=600)
    sys.stderr.write(p.stderr)
    if p.returncode != 0:
        raise SystemExit("bench: error: netpool-bench failed (exit %d)" % p.returncode)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def bench_netcreate():
    wait_template("default")
    cfg = json.loads(read("%s/templates/default/config" % mnt))
    if not cfg.get("net"):
        raise SystemExit("bench: error: template default has no \"net\" (daemon without --net?)")
    os.mkdir("%s/templates/nonet" % mnt)
    plain = dict(cfg)
    del plain["net"]
    write("%s/templates/nonet/config" % mnt, json.dumps(plain))
    write("%s/templates/nonet/ctl" % mnt, "bake\n")
    wait_template("nonet")
    out = []
    for path in ("warm", "restore"):
        pool = POOL if path == "warm" else 0
        for t in ("default", "nonet"):
            set_pool(t, pool)
        samples = {"default": [], "nonet": []}
        phases = {"default": [], "nonet": []}
        block = 5

        def count(t):
            return sum(len(b["_samples"]) for b in samples[t])

        def both_full():
            # both pools full: no slot is being prepared while a sample runs
            wait_pool("default", pool)
            wait_pool("nonet", pool)

        while count("default") < N or count("nonet") < N:
            for t in ("default", "nonet"):
                k = min(block, N - count(t))
                if k <= 0:
                    continue
                res, ph, _ = run_path(t, path, k, 1 if not samples[t] else 0, both_full)
                samples[t].append(res)
                phases[t].append(ph)
        for t in ("default", "nonet"):
            err("netcreate %s %s: phases p50 per block: %s" % (path, t, phases[t]))
        for t in ("default", "nonet"):
            set_pool(t, 0)
        out.extend(merge_blocks(path, samples))
    os.rmdir("%s/templates/nonet" % mnt)
    return out


def bench_lifecycle():
    wait_template("default")
    d = "%s/templates/default/sandboxes/life" % mnt
    os.mkdir(d)
    if read(d + "/wait") != "ready\n":
        raise SystemExit("bench: error: sandbox for the lifecycle bench failed")

    def timed(*verbs):
        t0 = time.perf_counter()
        for v in verbs:
            write(d + "/ctl", v)
        return (time.perf_counter() - t0) * 1000.0

    def fork_once(i, suffix, kind):
        child = "%s/templates/default/sandboxes/fk%d%s" % (mnt, i, suffix)
        t0 = time.perf_counter()
        write(d + "/ctl", "fork fk%d%s" % (i, suffix))
        ok = read(child + "/wait") == "ready\n"
        ms = (time.perf_counter() - t0) * 1000.0
        cst = json.loads(read(child + "/status"))
        os.rmdir(child)
        if not ok:
            raise SystemExit("bench: error: fork %d%s failed: %s" % (i, suffix, cst.get("error")))
        got = (cst.get("slot") or {}).get("kind", "none")
        if got != kind:
            raise SystemExit("bench: error: fork %d%s ran on %s, expected %s (%s)" % (i, suffix, got, kind,
                                                                                   cst.get("path_reason")))
        return ms

    def wake_once(on_spare):
        before = pool_status("default")["wakes_on_spare"]
        ms = timed("resume")
        took = pool_status("default")["wakes_on_spare"] - before
        if took != (1 if on_spare else 0):
            raise SystemExit("bench: error: a wake %s a spare" % ("without" if on_spare else "on"))
        return ms

    # each fork and wake on a spare (the daemon's default, --spares 1; the spare back before each), and
    # in the same run the baseline: the same without a spare (a decoy took it), a VMM spawned for it
    pr, hib, wake, wake_s, fork, fork_s, fork_parent = [], [], [], [], [], [], []
    for i in range(N):
        wait_spares("default", 1)
        fork.append(fork_once(i, "", "spare"))
        fork_parent.append(json.loads(read(d + "/status"))["last_op_ms"])
        time.sleep(SETTLE)
        take_spare()
        try:
            fork_s.append(fork_once(i, "s", "none"))
        finally:
            drop_decoy()
        time.sleep(SETTLE)
        pr.append(timed("pause", "resume"))
        time.sleep(SETTLE / 5)
        hib.append(timed("hibernate"))
        wait_spares("default", 1)
        time.sleep(SETTLE / 5)
        wake.append(wake_once(True))
        time.sleep(SETTLE / 5)
        timed("hibernate")
        take_spare()
        try:
            wake_s.append(wake_once(False))
        finally:
            drop_decoy()
        time.sleep(SETTLE / 5)
    st = json.loads(read(d + "/status"))
    os.rmdir(d)
    if st["state"] != "ready":
        raise SystemExit("bench: error: the lifecycle sandbox ended %s: %s" % (st["state"], st.get("error")))
    out = []
    for name, v in (("fork", fork), ("fork_spawn", fork_s), ("fork_parent_stopped", fork_parent),
                    ("pause_resume", pr), ("hibernate", hib), ("wake", wake), ("wake_spawn", wake_s)):
        v.sort()
        out.append({"bench": name, "n": len(v), "p50_ms": round(nearest_rank(v, 50), 3),
                    "p99_ms": round(nearest_rank(v, 99), 3)})
        print("%s: p50 %.2f ms, p99 %.2f ms (n=%d)" % (name, nearest_rank(v, 50), nearest_rank(v, 99), len(v)),
              file=sys.stderr)
    by = {o["bench"]: o for o in out}
    for name in ("fork", "wake"):
        # the same run's ratio: the path that spawns its VMM against the one on a spare
        by[name]["spawn_ratio"] = round(by[name + "_spawn"]["p50_ms"] / by[name]["p50_ms"], 2)
        print("%s_spawn / %s p50: %.2fx" % (name, name, by[name]["spawn_ratio"]), file=sys.stderr)
    return out


def exec_true(d):
    t0 = time.perf_counter()
    fd = os.open(d + "/exec", os.O_RDWR)
    try:
        os.write(fd, b"true")
        while os.read(fd, 1 << 16):
            pass
    finally:
        os.close(fd)
    return (time.perf_counter() - t0) * 1000.0


def bench_exec():
    n = int(os.environ.get("BENCH_EXEC_N", "300"))
    wait_template("default")
    d = "%s/templates/default/sandboxes/ex" % mnt
    os.mkdir(d)
    try:
        if read(d + "/wait") != "ready\n":
            raise SystemExit("bench: error: sandbox for the exec bench failed")
        for _ in range(10):
            exec_true(d)
        v = sorted(exec_true(d) for _ in range(n))
    finally:
        os.rmdir(d)
    r = {"bench": "exec", "metric": "roundtrip", "n": n, "p50_ms": round(nearest_rank(v, 50), 3),
         "p99_ms": round(nearest_rank(v, 99), 3), "mean_ms": round(statistics.fmean(v), 3)}
    print("exec: `true` through the exec file, open to close: p50 %.2f ms, p99 %.2f ms, mean %.2f ms (n=%d)"
          % (r["p50_ms"], r["p99_ms"], r["mean_ms"], n), file=sys.stderr)
    return [r]


def vmm_cpu_s(pid):
    """utime + stime of a process and its threads, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The noisy guest's load, detached from the exec that starts it: a memory hog
# (96 MiB of zeros into its tmpfs, over and over) and a fork bomb.
NOISY_LOAD = ("setsid sh -c 'while :; do dd if=/dev/zero of=/tmp/hog bs=1M count=96 2>/dev/null; rm -f /tmp/hog; done' "
              "</dev/null >/dev/null 2>&1 & "
              "setsid sh -c 'f() { f | f & }; f' </dev/null >/dev/null 2>&1 & echo started")


def bench_noisy():
    n = int(os.environ.get("BENCH_NOISY_N", "200"))
    rounds = max(1, int(os.environ.get("BENCH_NOISY_ROUNDS", "4")))
    ramp = float(os.environ.get("BENCH_NOISY_RAMP_S", "5"))
    gap = float(os.environ.get("BENCH_NOISY_GAP_MS", "0")) / 1000.0
    vcpus = int(os.environ.get("BENCH_NOISY_VCPUS", "1"))
    wait_template("default")
    nt = "default"
    if vcpus != 1:
        # the noisy neighbour wider than the host's share: its own template
        nt = "noisybench"
        os.mkdir("%s/templates/%s" % (mnt, nt))
        cfg = json.loads(read("%s/templates/default/config" % mnt))
        cfg["vcpus"] = vcpus
        write("%s/templates/%s/config" % (mnt, nt), json.dumps(cfg))
        write("%s/templates/%s/ctl" % (mnt, nt), "bake\n")
        wait_template(nt)
    quiet = "%s/templates/default/sandboxes/quiet" % mnt
    noisy = "%s/templates/%s/sandboxes/noisy" % (mnt, nt)
    un, un_st, lo, lo_st = [], [], [], []
    cpu_s = wall_s = 0.0

    def samples(k, ex, st):
        for _ in range(k):
            ex.append(exec_true(quiet))
            t0 = time.perf_counter()
            read(quiet + "/status")
            st.append((time.perf_counter() - t0) * 1000.0)
            if gap:
                time.sleep(gap)

    def ready(d):
        os.mkdir(d)
        if read(d + "/wait") != "ready\n":
            raise SystemExit("bench: error: sandbox %s failed: %s" % (d, read(d + "/status")))

    ready(quiet)
    try:
        for _ in range(10):
            exec_true(quiet)
        # each round a new noisy neighbour: quiet, then loaded; the host's own drift
        # (other work on it) falls on both alike
        for r in range(rounds):
            k = n // rounds + (1 if r < n % rounds else 0)
            ready(noisy)
            try:
                samples(k, un, un_st)
                pid = json.loads(read(noisy + "/status"))["vmm_pid"]
                fd = os.open(noisy + "/exec", os.O_RDWR)
                try:
                    os.write(fd, NOISY_LOAD.encode())
                    out = b""
                    while True:
                        b = os.read(fd, 1 << 16)
                        if not b:
                            break
                        out += b
                finally:
                    os.close(fd)
                if b"started" not in out:
                    raise SystemExit("bench: error: the noisy load did not start: %r" % out)
                time.sleep(ramp)
                c0, t0 = vmm_cpu_s(pid), time.monotonic()
                samples(k, lo, lo_st)
                cpu_s += vmm_cpu_s(pid) - c0
                wall_s += time.monotonic() - t0
            finally:
                os.rmdir(noisy)
    finally:
        os.rmdir(quiet)
        if nt != "default":
            os.rmdir("%s/templates/%s" % (mnt, nt))
    for v in (un, un_st, lo, lo_st):
        v.sort()
    cpu = cpu_s / wall_s * 100.0
    r = {"bench": "noisy", "metric": "neighbour_exec", "n": n, "noisy_vcpus": vcpus,
         "unloaded_p50_ms": round(nearest_rank(un, 50), 3), "unloaded_p99_ms": round(nearest_rank(un, 99), 3),
         "loaded_p50_ms": round(nearest_rank(lo, 50), 3), "loaded_p99_ms": round(nearest_rank(lo, 99), 3),
         "loaded_max_ms": round(lo[-1], 3), "ratio_p50": round(nearest_rank(lo, 50) / nearest_rank(un, 50), 2),
         "noisy_cpu_pct": round(cpu, 1)}
    s = {"bench": "noisy", "metric": "neighbour_status", "unloaded_p50_ms": round(nearest_rank(un_st, 50), 3),
         "loaded_p50_ms": round(nearest_rank(lo_st, 50), 3), "loaded_p99_ms": round(nearest_rank(lo_st, 99), 3)}
    print("noisy: neighbour exec `true`, n=%d each: unloaded p50 %.2f ms p99 %.2f ms; loaded (fork bomb + memory "
          "hog next door, %d vCPU, its VMM at %.0f%% CPU) p50 %.2f ms p99 %.2f ms max %.2f ms; ratio p50 %.2f"
          % (n, r["unloaded_p50_ms"], r["unloaded_p99_ms"], vcpus, cpu, r["loaded_p50_ms"], r["loaded_p99_ms"],
             r["loaded_max_ms"], r["ratio_p50"]), file=sys.stderr)
    print("noisy: neighbour status read: unloaded p50 %.2f ms; loaded p50 %.2f ms p99 %.2f ms"
          % (s["unloaded_p50_ms"], s["loaded_p50_ms"], s["loaded_p99_ms"]), file=sys.stderr)
    return [r, s]


def bench_live():
    import hashlib
    mib = int(os.environ.get("BENCH_LIVE_MIB", "256"))
    mem = int(os.environ.get("BENCH_LIVE_MEM", "1024"))
    stat_n = int(os.environ.get("BENCH_STAT_N", "1000"))
    wait_template("default")
    t = "livebench"
    os.mkdir("%s/templates/%s" % (mnt, t))
    cfg = json.loads(read("%s/templates/default/config" % mnt))
    cfg["mem_mib"] = mem
    write("%s/templates/%s/config" % (mnt, t), json.dumps(cfg))
    write("%s/templates/%s/ctl" % (mnt, t), "bake\n")
    wait_template(t)
    d = "%s/templates/%s/sandboxes/lb" % (mnt, t)
    live = "%s/live/lb" % mnt
    os.mkdir(d)
    try:
        if read(d + "/wait") != "ready\n":
            raise SystemExit("bench: error: sandbox for the live bench failed")

        def sh(cmd):
            fd = os.open(d + "/exec", os.O_RDWR)
            try:
                os.write(fd, cmd.encode())
                out = b""
                while True:
                    b = os.read(fd, 1 << 16)
                    if not b:
                        return out.decode()
                    out += b
            finally:
                os.close(fd)

        err("live: guest df: " + " | ".join(sh("df -m /tmp /").splitlines()[1:]))
        chunk = os.urandom(1 << 20)
        h = hashlib.sha256()
        t0 = time.perf_counter()
        fd = os.open(live + "/tmp/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(mib):
                block = chunk[i % 997:] + chunk[:i % 997]  # not the same MiB twice
                h.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        w_s = time.perf_counter() - t0
        size = os.stat(live + "/tmp/big").st_size
        if size != mib << 20:
            raise SystemExit("bench: error: live/lb/tmp/big is %d bytes, expected %d" % (size, mib << 20))
        t0 = time.perf_counter()
        got = 0
        fd = os.open(live + "/tmp/big", os.O_RDONLY)
        try:
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                got += len(b)
        finally:
            os.close(fd)
        r_s = time.perf_counter() - t0
        if got != mib << 20:
            raise SystemExit("bench: error: read %d bytes of live/lb/tmp/big, expected %d" % (got, mib << 20))
        gsum = sh("sha256sum /tmp/big").split()[0]
        if gsum != h.hexdigest():
            raise SystemExit("bench: error: the guest's /tmp/big differs from what was written")
        sh("rm -f /tmp/big; mkdir /tmp/st; cd /tmp/st; i=0; while [ $i -lt %d ]; do : > f$i; i=$((i+1)); done"
           % stat_n)
        sv = []
        for i in range(stat_n):
            p = "%s/tmp/st/f%d" % (live, i)
            t0 = time.perf_counter()
            os.stat(p)
            sv.append((time.perf_counter() - t0) * 1e6)
        cached = []  # the last ones stat-ed: their attributes are still cached (1 s)
        for i in range(max(0, stat_n - 200), stat_n):
            p = "%s/tmp/st/f%d" % (live, i)
            t0 = time.perf_counter()
            os.stat(p)
            cached.append((time.perf_counter() - t0) * 1e6)
    finally:
        os.rmdir(d)
        os.rmdir("%s/templates/%s" % (mnt, t))
    sv.sort()
    cached.sort()
    w = mib / w_s
    r = mib / r_s
    print("live: %d MiB through live/NAME/tmp/big (guest tmpfs, %d MiB guest), 1 MiB ops: write %.1f MiB/s "
          "(%.2f s), read %.1f MiB/s (%.2f s)" % (mib, mem, w, w_s, r, r_s), file=sys.stderr)
    print("live: stat of %d distinct guest files (a LOOKUP each): p50 %.0f us, p99 %.0f us; cached p50 %.1f us"
          % (stat_n, nearest_rank(sv, 50), nearest_rank(sv, 99), nearest_rank(cached, 50)), file=sys.stderr)
    return [{"bench": "live", "metric": "write_mib_s", "value": round(w, 1), "mib": mib},
            {"bench": "live", "metric": "read_mib_s", "value": round(r, 1), "mib": mib},
            {"bench": "live", "metric": "stat", "n": stat_n, "p50_us": round(nearest_rank(sv, 50), 1),
             "p99_us": round(nearest_rank(sv, 99), 1), "cached_p50_us": round(nearest_rank(cached, 50), 1)}]


def merge_blocks(path, samples):
    res = []
    p50 = {}
    for t, blocks in samples.items():
        vals = sorted(v for b in blocks for v in b["_samples"])
        p50[t] = nearest_rank(vals, 50)
        res.append({"bench": "netcreate", "path": path, "net": t == "default", "n": len(vals),
                    "p50_ms": round(p50[t], 3), "p99_ms": round(nearest_rank(vals, 99), 3)})
    added = p50["default"] - p50["nonet"]
    res.append({"bench": "netcreate", "path": path, "metric": "net_added_p50_ms", "value": round(added, 3)})
    print("netcreate %s: p50 with net %.2f ms, without %.2f ms: networking adds %.2f ms" % (
        path, p50["default"], p50["nonet"], added), file=sys.stderr)
    return res


deadline = time.monotonic() + 60
while not mounted():
    if not alive():
        raise SystemExit("bench: error: the daemon exited during start-up")
    if time.monotonic() > deadline:
        raise SystemExit("bench: error: the daemon did not mount within 60 s")
    time.sleep(0.05)

for b in benches:
    for line in {"create": bench_create, "burst16": bench_burst16, "slot": bench_slot, "density": bench_density,
                 "netslot": bench_netslot,
                 "netcreate": bench_netcreate, "lifecycle": bench_lifecycle, "exec": bench_exec,
                 "noisy": bench_noisy, "live": bench_live}[b]():
        print(json.dumps({k: v for k, v in line.items() if not k.startswith("_")}), flush=True)
PY
pypid=$!
wait "$pypid"
