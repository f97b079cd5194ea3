#!/usr/bin/env python3
"""
The long soak: `contrib/bench.sh soak` runs this (it can also run alone, from
the repository, as root). The code is tests/integration/test_soak.py's Soak
(its docstring says what a round does and checks), run with
BENCH_SOAK_WORKERS workers (default 8), BENCH_SOAK_CYCLES measured cycles per
worker and round (default 12) and BENCH_SOAK_ROUNDS rounds (default 3, with
a kill -9 and a SIGTERM restart between them): 8 x (12 + 1) x 3 = 312 cycles.
Against the ASan build when there is one (EMBERFS_BIN as bench.sh sets it,
else build-asan/fs/emberfs if present).

Output: a line per round and the failures and leaks on stderr; one JSON line
on stdout:
{"bench":"soak","workers":8,"rounds":3,"cycles":312,"failures":0,"leaked":0,"rss_growth_kib":..,"seconds":..}
Exit status 1 if anything failed or leaked.
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402
import test_soak  # noqa: E402


def main():
    why = harness.missing_capability()
    if why:
        sys.stderr.write("bench: soak: cannot run: %s\n" % why)
        return 77
    s = test_soak.Soak(workers=int(os.environ.get("BENCH_SOAK_WORKERS", "8")),
                       cycles=int(os.environ.get("BENCH_SOAK_CYCLES", "12")),
                       rounds=int(os.environ.get("BENCH_SOAK_ROUNDS", "3"))).run()
    for f in s.failures + s.leaks:
        sys.stderr.write("  %s\n" % f)
    res = s.result()
    res["binary"] = os.path.relpath(harness.BIN, REPO)
    sys.stderr.write("soak: %d cycles in %.0f s (%s), %d failed, %d leaks, daemon RSS growth at most %d KiB per round\n" % (
        res["cycles"], res["seconds"], res["binary"], res["failures"], res["leaked"], res["rss_growth_kib"]))
    print(json.dumps(res))
    return 1 if s.failures or s.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
