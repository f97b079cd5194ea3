#!/usr/bin/env bash
# Runs the whole test suite: unit tests (in the normal build, under ASan+UBSan
# and under valgrind), the fuzzers, and the integration tests against real
# QEMU guests and a real FUSE mount in the AddressSanitizer +
# UndefinedBehaviorSanitizer build (a smoke set of them in the normal build;
# FULL=1: all of them in both).
# Installs what it needs first (contrib/deps.sh). Needs root (FUSE mounts,
# loop devices, QEMU).
#
#   contrib/test.sh                 everything (as root)
#   SUITES="unit" contrib/test.sh   only some suites
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

SUITES=${SUITES:-"unit integration"}

contrib/deps.sh

build() { # dir, extra meson args...
	local dir=$1
	shift
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$@" >/dev/null
	fi
	ninja -C "$dir" >/dev/null
}

echo "== build (werror)" >&2
build build
echo "== build (ASan + UBSan)" >&2
build build-asan -Db_sanitize=address,undefined -Db_lundef=false

echo "== guest image" >&2
image=$(contrib/build-image.sh build/engine/guest/emberfs-agent .image | tail -n 1)
export EMBERFS_IMAGE_DIR=$image

# the E2B SDK that integration-e2b drives emberfs-e2b with (npm ci from
# tests/e2b/package-lock.json into tests/e2b/node_modules), only where node is
if command -v node >/dev/null && command -v npm >/dev/null; then
	echo "== E2B SDK (contrib/e2b-sdk.sh)" >&2
	contrib/e2b-sdk.sh || echo "contrib/e2b-sdk.sh failed: integration-e2b will fail" >&2
fi

suite_args=()
for s in $SUITES; do suite_args+=(--suite "$s"); done

status=0
rm -f build/meson-logs/testlog.json build-asan/meson-logs/testlog.json build/meson-logs/valgrind-valgrind.json
run() { # name, meson test args...
	local name=$1
	shift
	echo "== $name" >&2
	if ! meson test "$@" --print-errorlogs; then
		status=1
	fi
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# The integration suite runs once, against the ASan+UBSan build (a memory or
# undefined-behaviour error anywhere in the daemon fails it, and it is the same
# code); the shipped build runs the unit tests and a smoke set of integration
# tests. Both builds through the whole suite took ~55 min on the 2-core
# machine, and CI has 40. FULL=1 runs the whole suite against both builds.
smoke=(integration-lifecycle integration-errors integration-procs integration-live)
if [ -n "${FULL:-}" ] || [[ " $SUITES " != *" integration "* ]]; then
	run "tests" -C build "${suite_args[@]}"
else
	[[ " $SUITES " == *" unit "* ]] && run "unit tests" -C build --suite unit
	run "integration smoke tests (the shipped build)" -C build "${smoke[@]}"
fi
run "tests under ASan+UBSan" -C build-asan "${suite_args[@]}"
if [[ " $SUITES " == *" unit "* ]]; then
	# 11 targets: 12 s each keeps the suite within CI's budget (FUZZ_SECONDS=N for longer runs)
	export FUZZ_SECONDS=${FUZZ_SECONDS:-12}
	echo "== fuzz (libFuzzer, $FUZZ_SECONDS s per target)" >&2
	if ! contrib/fuzz.sh; then
		status=1
		fuzz_failed=1
	fi
	# no-valgrind: tests/unit/meson.build says why
	run "unit tests under valgrind" -C build --suite unit --no-suite no-valgrind \
		--wrap='valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect -q' \
		--logbase valgrind
fi

# One closing line over every run above.
python3 - "$top" <<'PY'
import json, sys, glob
passed = failed = skipped = 0
for f in ("build/meson-logs/testlog.json", "build-asan/meson-logs/testlog.json",
          "build/meson-logs/valgrind-valgrind.json"):
    f = sys.argv[1] + "/" + f
    if not glob.glob(f):
        continue
    for line in open(f):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        res = r.get("result")
        if res == "OK": passed += 1
        elif res == "SKIP": skipped += 1
        elif res in ("FAIL", "TIMEOUT", "ERROR", "UNEXPECTEDPASS"): failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
# the fuzzers are no meson test: their failure is said here, not lost above the tally
[ -z "${fuzz_failed:-}" ] || echo "fuzzers: FAILED (their output is above)" >&2
exit $status
