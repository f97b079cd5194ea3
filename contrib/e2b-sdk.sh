#!/usr/bin/env bash
# Installs the E2B JavaScript SDK that tests/e2b/ drives emberfs-e2b with:
# `npm ci` from tests/e2b/package-lock.json (the pinned `e2b` version and its
# dependencies, from the npm registry) into tests/e2b/node_modules (ignored by
# git). Does nothing when node_modules was installed from the same lock file
# (a stamp holds the lock file's sha256), so the suite and the benchmark can
# call it every time.
#
# Exit status: 0 installed or up to date; 77 node or npm missing (the tests
# that need the SDK skip with that reason); 1 npm ci failed.
set -euo pipefail
cd "$(dirname "$0")/../tests/e2b"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	echo "contrib/e2b-sdk.sh: node or npm missing: the E2B SDK tests cannot run" >&2
	exit 77
fi
want=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.emberfs-lock-sha256
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f node_modules/e2b/package.json ]; then
	exit 0
fi
echo "contrib/e2b-sdk.sh: npm ci in tests/e2b (node $(node --version), npm $(npm --version))" >&2
if ! npm ci --no-audit --no-fund --loglevel=error >&2; then
	echo "contrib/e2b-sdk.sh: npm ci failed" >&2
	exit 1
fi
echo "$want" >"$stamp"
echo "contrib/e2b-sdk.sh: e2b $(node -p 'require("./node_modules/e2b/package.json").version') installed" >&2
