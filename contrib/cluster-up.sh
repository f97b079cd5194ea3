#!/usr/bin/env bash
# A three-host emberfs cluster on this one machine, for trying it (issue 20,
# docs/cluster.md): three "machines" a, b and c, each a network namespace
# with an etcd member and an emberfs host, on a bridge of their own.
#
#   contrib/cluster-up.sh [up]          (as root) network, etcd, the three hosts
#   contrib/cluster-up.sh etcd          only the network and the etcd cluster
#   contrib/cluster-up.sh down [--purge]  unmount the hosts, wait for them to
#                                       exit, stop etcd, remove the network;
#                                       --purge also removes the state
#
# The network. Host H (a, b, c) is the namespace efc-H, its eth0 at
# 10.250.0.1N/24 (N = 1, 2, 3) on the bridge efcbr0 (10.250.0.1, which
# routes and masquerades the namespaces to the world: the sandboxes' egress).
# Etcd member N listens on 10.250.0.1N:2379+N-1 (peers 2479+N-1) inside
# efc-H, with the flags of tests/integration/etcdcluster.py (which starts
# it); emberfs on H advertises 10.250.0.1N:4701 for its peers, all three
# with the one key $EMBERFS_CLUSTER_DIR/cluster.key (made here). So host
# traffic really crosses a network: `ip link set efc-H-br down` cuts H
# off from etcd and from the other hosts (a partition), `up` heals it.
#
# Why nsenter --net and not `ip netns exec`: ip netns exec runs its command
# in a new mount namespace (to remount /sys for the network namespace); a
# FUSE mount made there is private to it and invisible to you (the daemon
# also finds no usable cgroup under that /sys). nsenter --net switches the
# network namespace only: the mount lands in your mount namespace, where
# `ls MOUNT` sees it. (Both tried on Debian 12.)
#
# The snapshot store (issue 21, docs/operations.md "The snapshot store"):
# Debian's nginx with WebDAV on the bridge address $NET.1:8080 (the machine's
# namespace, which every host reaches), objects under $EMBERFS_CLUSTER_DIR/store.
# Host a starts first and bakes `default` and publishes it; b and c then
# install it from the store instead of booting it.
#
# Per host: state dir $EMBERFS_CLUSTER_DIR/H (default /var/lib/emberfs-cluster),
# mount point $EMBERFS_CLUSTER_MNT/H (default /tmp/emberfs-cluster), sandbox
# network range 10.20N.0.0/16 (10.201, 10.202, 10.203), log H/emberfs.log.
# The image and options are those of contrib/up.sh (EMBERFS_IMAGE_DIR: an
# image already built instead of contrib/build-image.sh).
set -eEuo pipefail # -E: the ERR trap of a start that fails half-way runs in functions too
cd "$(dirname "$0")/.."

ROOT=${EMBERFS_CLUSTER_DIR:-/var/lib/emberfs-cluster}
MNTROOT=${EMBERFS_CLUSTER_MNT:-/tmp/emberfs-cluster}
HOSTS=(a b c)
BRIDGE=efcbr0
NET=10.250.0          # .1 the bridge, .11 .12 .13 the hosts
PEER_PORT=4701
ETCD_CLIENT=2379      # member N: 2379 + N - 1 (etcdcluster.py: base + index)
ETCD_PEER=2479
NFT_TABLE=emberfs_cluster
ETCDCLUSTER=tests/integration/etcdcluster.py
STORE_PORT=8080

say() { echo "cluster-up.sh: $*" >&2; }
die() {
	say "$*"
	exit 1
}

ns_of() { echo "efc-$1"; }
addr_of() { # host index (0..2)
	echo "$NET.$((11 + $1))"
}
etcd_urls() {
	local i urls=()
	for i in "${!HOSTS[@]}"; do
		urls+=("http://$(addr_of "$i"):$((ETCD_CLIENT + i))")
	done
	(IFS=,; echo "${urls[*]}")
}

mounted() { grep -qs " $1 fuse.emberfs " /proc/mounts; }

# ---- the network ----

net_up() {
	local i h ns
	ip link add "$BRIDGE" type bridge
	ip addr add "$NET.1/24" dev "$BRIDGE"
	ip link set "$BRIDGE" up
	for i in "${!HOSTS[@]}"; do
		h=${HOSTS[$i]}
		ns=$(ns_of "$h")
		ip netns add "$ns"
		ip link add "$ns-br" type veth peer name eth0 netns "$ns"
		ip link set "$ns-br" master "$BRIDGE" up
		ip -n "$ns" link set lo up
		ip -n "$ns" addr add "$(addr_of "$i")/24" dev eth0
		ip -n "$ns" link set eth0 up
		ip -n "$ns" route add default via "$NET.1"
	done
	# the sandboxes' egress: each host NATs its sandboxes to its eth0 address,
	# this table those to the machine's own (the forwarding setting is put back by down)
	mkdir -p "$ROOT"
	sysctl -n net.ipv4.ip_forward >"$ROOT/ip_forward.before"
	sysctl -qw net.ipv4.ip_forward=1
	nft -f - <<NFT
table ip $NFT_TABLE {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr $NET.0/24 oifname != "$BRIDGE" masquerade
	}
}
NFT
}

net_down() {
	local h
	for h in "${HOSTS[@]}"; do
		# deleting the namespace deletes its eth0 and with it the veth pair
		ip netns del "$(ns_of "$h")" 2>/dev/null || true
		ip link del "$(ns_of "$h")-br" 2>/dev/null || true
	done
	ip link del "$BRIDGE" 2>/dev/null || true
	nft delete table ip "$NFT_TABLE" 2>/dev/null || true
	if [ -f "$ROOT/ip_forward.before" ]; then
		sysctl -qw net.ipv4.ip_forward="$(cat "$ROOT/ip_forward.before")"
		rm -f "$ROOT/ip_forward.before"
	fi
}

# ---- etcd ----

etcd_up() {
	local i members=()
	for i in "${!HOSTS[@]}"; do
		members+=("$(addr_of "$i")@$(ns_of "${HOSTS[$i]}")")
	done
	python3 "$ETCDCLUSTER" up "$ROOT/etcd" "$ETCD_CLIENT" "$ETCD_PEER" "${members[@]}" >/dev/null
}

etcd_down() {
	[ -d "$ROOT/etcd" ] || return 0
	python3 "$ETCDCLUSTER" down "$ROOT/etcd"
}

# ---- the snapshot store ----

store_url() { echo "http://$NET.1:$STORE_PORT/store/"; }

store_up() {
	local d=$ROOT/store
	mkdir -p "$d/www/store" "$d/tmp" "$d/logs"
	cat >"$d/nginx.conf" <<CONF
user root;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 512; }
http {
	access_log $d/logs/access.log;
	client_body_temp_path $d/tmp;
	server {
		listen $NET.1:$STORE_PORT;
		location /store/ {
			root $d/www;
			dav_methods PUT DELETE;
			create_full_put_path on;
			client_max_body_size 64m;
		}
	}
}
CONF
	nginx -e "$d/logs/error.log" -c "$d/nginx.conf" -p "$d/"
}

store_down() {
	local pidf=$ROOT/store/nginx.pid
	[ -s "$pidf" ] || return 0
	kill "$(cat "$pidf")" 2>/dev/null || true
	for _ in $(seq 1 50); do
		[ -e "$pidf" ] || break
		sleep 0.1
	done
}

# ---- the hosts ----

host_up() { # index, image dir
	local i=$1 image=$2 h state mnt
	h=${HOSTS[$i]}
	state=$ROOT/$h
	mnt=$MNTROOT/$h
	mkdir -p "$state" "$mnt"
	# as contrib/up.sh, plus the cluster options; --dns when the machine's
	# resolver is on loopback, which a host's namespace cannot reach
	local opts=(--net --net-range "10.20$((i + 1)).0.0/16" --store "$(store_url)")
	[ -n "${EMBERFS_CLUSTER_DNS:-}" ] && opts+=(--dns "$EMBERFS_CLUSTER_DNS")
	[ -n "${EMBERFS_OWNER_ONLY:-}" ] || opts+=(--allow-other)
	nsenter --net="/run/netns/$(ns_of "$h")" \
		build/fs/emberfs --state-dir "$state" --image-dir "$image" --log "$state/emberfs.log" \
		--pid-file "$state/emberfs.pid" "${opts[@]}" \
		--cluster "$(etcd_urls)" --host-name "$h" --advertise "$(addr_of "$i"):$PEER_PORT" \
		--cluster-key "$ROOT/cluster.key" "$mnt"
}

# Unmounts host h and waits (60 s) for its daemon to exit; 1 if it did not.
host_down() {
	local h=$1 state mnt pid=""
	state=$ROOT/$h
	mnt=$MNTROOT/$h
	if [ -s "$state/emberfs.pid" ]; then
		pid=$(cat "$state/emberfs.pid")
		# only while it is that emberfs (the pid may have been reused)
		tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "--state-dir $state " || pid=""
	fi
	if mounted "$mnt" && ! fusermount3 -u "$mnt"; then
		say "host $h: fusermount3 -u $mnt failed (busy? close what uses it and run down again)"
		return 1
	fi
	if [ -n "$pid" ]; then
		for _ in $(seq 1 600); do
			[ -e "/proc/$pid" ] || break
			sleep 0.1
		done
		if [ -e "/proc/$pid" ]; then
			say "host $h: emberfs (pid $pid) still running 60 s after the unmount (log $state/emberfs.log)"
			return 1
		fi
	fi
	return 0
}

# ---- commands ----

running() { # what of a cluster is up now
	local h
	[ -d "/run/netns" ] && ip netns list | grep -qw "$(ns_of a)" && return 0
	ip link show "$BRIDGE" >/dev/null 2>&1 && return 0
	for h in "${HOSTS[@]}"; do
		mounted "$MNTROOT/$h" && return 0
	done
	return 1
}

undo_etcd_part() {
	trap - ERR
	say "$1 failed: taking the network and etcd down"
	etcd_down || true
	store_down || true
	net_down
}

start_etcd_part() {
	local cmd=$1
	if running; then
		die "a cluster is already (partly) up here; stop it first: $0 down"
	fi
	command -v etcd >/dev/null || die "etcd missing (apt-get install etcd-server; contrib/deps.sh does)"
	command -v nsenter >/dev/null || die "nsenter missing (apt-get install util-linux)"
	# undo what was done if a step fails
	trap 'undo_etcd_part "$cmd"' ERR
	net_up
	etcd_up
	trap - ERR
	ETCDCTL_API=3 etcdctl --endpoints "$(etcd_urls)" endpoint health >&2
}

cmd_etcd() {
	start_etcd_part etcd
	cat <<MSG
etcd is up: $(etcd_urls)
  ETCDCTL_API=3 etcdctl --endpoints $(etcd_urls) endpoint status -w table
Stop it: $0 down
MSG
}

cmd_up() {
	local i image h
	contrib/deps.sh
	if [ ! -f build/build.ninja ]; then
		meson setup build >/dev/null
	fi
	ninja -C build >/dev/null
	image=${EMBERFS_IMAGE_DIR:-$(contrib/build-image.sh build/engine/guest/emberfs-agent .image | tail -n 1)}
	if [ -z "${EMBERFS_CLUSTER_DNS:-}" ] && awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf | grep -q '^127\.'; then
		say "warning: the resolver in /etc/resolv.conf is on loopback, which the hosts' namespaces do not reach:" \
			"the sandboxes get no DNS unless EMBERFS_CLUSTER_DNS=ADDR names one they do"
	fi
	start_etcd_part up
	# the key the hosts authenticate each other with: one for all three (each
	# host would make its own in its state dir otherwise)
	if [ ! -s "$ROOT/cluster.key" ]; then
		(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$ROOT/cluster.key" && echo >>"$ROOT/cluster.key")
	fi
	command -v nginx >/dev/null || die "nginx missing (apt-get install nginx; contrib/deps.sh does)"
	store_up || die "the snapshot store (nginx) did not start (log $ROOT/store/logs/error.log)"
	for i in "${!HOSTS[@]}"; do
		if ! host_up "$i" "$image"; then
			h=${HOSTS[$i]}
			die "host $h did not start (log $ROOT/$h/emberfs.log); '$0 down' removes what is up"
		fi
		if [ "$i" -eq 0 ]; then
			# a bakes and publishes default first: b and c install it from the store
			for _ in $(seq 1 600); do
				grep -qs '"state": *"\(published\|failed\)"' "$MNTROOT/a/templates/default/status" && break
				sleep 0.2
			done
		fi
	done
	# every host's default template (a's bake, the others' install from the store)
	for h in "${HOSTS[@]}"; do
		for _ in $(seq 1 600); do
			grep -qs '"state": *"ready"' "$MNTROOT/$h/templates/default/status" && break
			sleep 0.2
		done
		grep -qs '"state": *"ready"' "$MNTROOT/$h/templates/default/status" ||
			say "host $h: template default not ready after 120 s (log $ROOT/$h/emberfs.log)"
	done
	cat <<MSG
A three-host emberfs cluster is up (etcd $(etcd_urls)):
$(for i in "${!HOSTS[@]}"; do h=${HOSTS[$i]}; echo "  host $h: mount $MNTROOT/$h, namespace $(ns_of "$h") at $(addr_of "$i"), state $ROOT/$h, log $ROOT/$h/emberfs.log"; done)

  ls $MNTROOT/a/hosts/                                  # every host, from any of them
  cat $MNTROOT/a/hosts/b/status                         # b's capacity, load, warm slots, health
  mkdir $MNTROOT/a/templates/default/sandboxes/s1       # create on a: placed somewhere
  cat $MNTROOT/b/templates/default/sandboxes/s1/host    # from b: where it runs
  cat $MNTROOT/b/templates/default/sandboxes/s1/wait
  printf 'uname -a' >$MNTROOT/c/templates/default/sandboxes/s1/exec   # from c, forwarded
  mkdir $MNTROOT/b/templates/default/sandboxes/s1       # EEXIST: names are cluster-wide
  rm -rf $MNTROOT/c/templates/default/sandboxes/s1
  ip link set $(ns_of b)-br down                        # cut b off (etcd and peers); 'up' heals
  ETCDCTL_API=3 etcdctl --endpoints $(etcd_urls) get --prefix / --keys-only
  grep -o '"source":"[a-z]*"' $MNTROOT/b/templates/default/status   # "store": installed, not booted
  cat $MNTROOT/b/cache/status                           # what b fetched from the store ($(store_url))

A sandbox's address is reached from its host's namespace: nsenter --net=/run/netns/$(ns_of a) ...
Stop: $0 down   (--purge also removes $ROOT and $MNTROOT)
MSG
}

cmd_down() {
	local purge=${1:-} h failed=0
	case "$purge" in
	"" | --purge) ;;
	*) die "usage: $0 down [--purge]" ;;
	esac
	for h in "${HOSTS[@]}"; do
		host_down "$h" || failed=1
	done
	etcd_down
	store_down
	net_down
	if [ "$failed" -ne 0 ]; then
		die "a host did not stop (above): its state is kept, even with --purge"
	fi
	if [ "$purge" = --purge ]; then
		for h in "${HOSTS[@]}"; do
			rmdir "$MNTROOT/$h" 2>/dev/null || true
		done
		rmdir "$MNTROOT" 2>/dev/null || true
		rm -rf "$ROOT"
	fi
	say "down${purge:+ (state removed)}"
}

if [ "$(id -u)" -ne 0 ]; then
	echo "cluster-up.sh: run as root (network namespaces, FUSE mounts, VMMs): sudo $0 $*" >&2
	exit 1
fi
case "${1:-up}" in
up) cmd_up ;;
etcd) cmd_etcd ;;
down)
	shift
	cmd_down "$@"
	;;
*)
	echo "usage: $0 [up | etcd | down [--purge]]" >&2
	exit 2
	;;
esac
