#!/usr/bin/env bash
# One command from a fresh Debian machine to a running emberfs:
# installs dependencies, builds, builds the default guest image, starts the
# daemon on MOUNTPOINT (default /tmp/emberfs) and waits until the template
# `default` is baked and ready.
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

cat <<MSG
emberfs is running on $MNT (pid $(cat "$STATE/emberfs.pid"), log $LOG), template default ready.

  mkdir $MNT/templates/default/sandboxes/a      # create (returns at once)
  cat $MNT/templates/default/sandboxes/a/wait   # blocks until ready
  printf 'touch /root/hello' > $MNT/templates/default/sandboxes/a/exec   # runs; close returns when done
  grep -A1 '"address"' $MNT/templates/default/sandboxes/a/status       # where the host reaches it
  exec 3<>$MNT/templates/default/sandboxes/a/exec; printf 'uname -r' >&3; cat <&3; exec 3>&-
  cat $MNT/templates/default/sandboxes/a/status
  rm -rf $MNT/templates/default/sandboxes/a     # destroy

Stop: fusermount3 -u $MNT
MSG
