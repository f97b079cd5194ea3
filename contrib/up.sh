#!/usr/bin/env bash
# One command from a fresh Debian machine to a running emberfs:
# installs dependencies, builds, builds the default guest image, starts the
# daemon on MOUNTPOINT (default /tmp/emberfs) and waits until the template
# `default` is baked and ready. The template `python` (Debian 12 with
# Python, docs/templates.md) is made in the background: its image is built
# from Debian's packages (contrib/build-python-image.sh, ~1.5 min the first
# time, cached in /var/cache/emberfs/images), then it is baked; follow it in
# MOUNTPOINT/templates/python/status, its build.log and MOUNTPOINT/events.
#
#   contrib/up.sh [MOUNTPOINT]     (as root)
#
# Stop it with `fusermount3 -u MOUNTPOINT` (or kill the pid it prints).
set -euo pipefail
cd "$(dirname "$0")/.."

MNT=${1:-/tmp/emberfs}
STATE=${EMBERFS_STATE_DIR:-/var/lib/emberfs}
LOG=${EMBERFS_LOG:-$STATE/emberfs.log}

if [ "$(id -u)" -ne 0 ]; then
	echo "up.sh: run as root (FUSE mounts, loop devices and VMMs need it): sudo $0 $*" >&2
	exit 1
fi
contrib/deps.sh
if [ ! -f build/build.ninja ]; then
	meson setup build >/dev/null
fi
ninja -C build >/dev/null
image=$(contrib/build-image.sh build/engine/guest/emberfs-agent .image | tail -n 1)

# A live mount is refused; a stale one (the daemon was killed: it answers ENOTCONN) is what a
# restart replaces, re-adopting the sandboxes (docs/operations.md).
if grep -qs " $MNT fuse.emberfs " /proc/mounts && ls "$MNT" >/dev/null 2>&1; then
	echo "up.sh: emberfs is already mounted on $MNT (stop it: fusermount3 -u $MNT)" >&2
	exit 1
fi
mkdir -p "$STATE"
grep -qs " $MNT fuse.emberfs " /proc/mounts || mkdir -p "$MNT"
# --net: sandboxes get a network slot each (EMBERFS_NET_RANGE, default 10.200.0.0/16).
# --allow-other: started with sudo, the mount is still usable from your own
# account (file modes decide: the control files are root's); EMBERFS_OWNER_ONLY=1 leaves it out.
build/fs/emberfs --state-dir "$STATE" --image-dir "$image" --log "$LOG" --pid-file "$STATE/emberfs.pid" \
	--net --net-range "${EMBERFS_NET_RANGE:-10.200.0.0/16}" $([ -n "${EMBERFS_OWNER_ONLY:-}" ] || echo --allow-other) "$MNT"

# The default template bakes in the background (a few seconds under TCG).
for _ in $(seq 1 600); do
	state=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' \
		"$MNT/templates/default/status" 2>/dev/null || true)
	case "$state" in
	ready) break ;;
	failed)
		echo "up.sh: baking the default template failed:" >&2
		cat "$MNT/templates/default/status" >&2
		exit 1
		;;
	esac
	sleep 0.2
done
if [ "$state" != ready ]; then
	echo "up.sh: template default not ready after 120 s (log: $LOG)" >&2
	exit 1
fi

# The python template: defined now (its status shows where it is), its image
# built and its bake started in the background. Its config names the cache's
# `python` link, so it stays the same when the image is rebuilt; a new image
# (another manifest than the one baked) is baked again.
PYLOG=$STATE/python-image.log
PYREF="oci:${EMBERFS_IMAGE_CACHE:-/var/cache/emberfs/images}/python/oci:latest"
T=$MNT/templates/python
[ -d "$T" ] || mkdir "$T"
printf '{"image": "%s", "mem_mib": 512, "warm": "python3 -c '"'"'import os, sys, json, re, subprocess'"'"'"}\n' \
	"$PYREF" >"$T/config"
(
	if ! contrib/build-python-image.sh >"$PYLOG" 2>&1; then
		echo "up.sh: the python image was not built (see above); template python not baked" >>"$PYLOG"
		exit 0
	fi
	want=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' \
		"${EMBERFS_IMAGE_CACHE:-/var/cache/emberfs/images}/python/oci/index.json" 2>/dev/null || true)
	have=$(python3 -c 'import json,sys; print((json.load(open(sys.argv[1])).get("build") or {}).get("digest", ""))' \
		"$T/status" 2>/dev/null || true)
	if [ -n "$have" ] && [ -n "$want" ] && [ "$have" != "$want" ]; then echo rebake; else echo bake; fi >"$T/ctl"
) </dev/null >/dev/null 2>&1 &

# The E2B API (docs/e2b.md): emberfs-e2b on loopback, a client of the mount; it
# ends when the mount does. An API key is made at the first start.
E2B_STATE=$STATE/e2b
E2B_LISTEN=${EMBERFS_E2B_LISTEN:-127.0.0.1:49982}
mkdir -p -m 0700 "$E2B_STATE"
if [ ! -s "$E2B_STATE/keys" ]; then
	(umask 077 && echo "e2b_$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" >"$E2B_STATE/keys")
fi
E2B_KEY=$(grep -m1 '^e2b_' "$E2B_STATE/keys")
pkill -f "^build/e2b/emberfs-e2b --mount $MNT " 2>/dev/null || true
setsid build/e2b/emberfs-e2b --mount "$MNT" --listen "$E2B_LISTEN" --state "$E2B_STATE" \
	</dev/null >>"$STATE/e2b.log" 2>&1 &

cat <<MSG
emberfs is running on $MNT (pid $(cat "$STATE/emberfs.pid"), log $LOG), template default ready.

  mkdir $MNT/templates/default/sandboxes/a      # create (returns at once)
  cat $MNT/templates/default/sandboxes/a/wait   # blocks until ready
  printf 'touch /root/hello' > $MNT/templates/default/sandboxes/a/exec   # runs; close returns when done
  grep -A1 '"address"' $MNT/templates/default/sandboxes/a/status       # where the host reaches it
  exec 3<>$MNT/templates/default/sandboxes/a/exec; printf 'uname -r' >&3; cat <&3; exec 3>&-
  cat $MNT/templates/default/sandboxes/a/status
  rm -rf $MNT/templates/default/sandboxes/a     # destroy

Template python (Debian 12, python3, pip, git, curl) is being built in the background
(image: $PYLOG; bake: cat $MNT/templates/python/build.log, which ends with it):
  mkdir $MNT/templates/python/sandboxes/p && cat $MNT/templates/python/sandboxes/p/wait
  exec 3<>$MNT/templates/python/sandboxes/p/exec; printf 'python3 -c "import sys; print(sys.version)"' >&3; cat <&3; exec 3>&-

The E2B API (the e2b SDK, docs/e2b.md) for templates default and python:
  export E2B_API_KEY=$E2B_KEY E2B_API_URL=http://$E2B_LISTEN E2B_SANDBOX_URL=http://$E2B_LISTEN

Stop: fusermount3 -u $MNT   (emberfs-e2b ends with it)
MSG
