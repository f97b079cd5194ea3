#!/usr/bin/env bash
# Runs the whole test suite: unit tests (also under valgrind), and the
# integration tests against real QEMU guests and a real FUSE mount, both in a
# normal build and in an AddressSanitizer + UndefinedBehaviorSanitizer build.
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

run "tests" -C build "${suite_args[@]}"
run "tests under ASan+UBSan" -C build-asan "${suite_args[@]}"
if [[ " $SUITES " == *" unit "* ]]; then
	echo "== fuzz (libFuzzer, ${FUZZ_SECONDS:-20} s per target)" >&2
	if ! contrib/fuzz.sh; then
		status=1
	fi
	run "unit tests under valgrind" -C build --suite unit \
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
exit $status
