#!/usr/bin/env bash
# Installs what emberfs needs to build, run and test, from Debian's packages only.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

PKGS=(
	# build
	meson ninja-build pkg-config gcc libc6-dev
	libfuse3-dev libjson-c-dev libcmocka-dev libnl-3-dev libnl-route-3-dev libnftables-dev libarchive-dev
	# the sandboxes' DNS resolver parses DNS with ldns (netpool/resolver.c)
	libldns-dev
	# emberfs-e2b (docs/e2b.md): its HTTP server
	libmicrohttpd-dev
	# clusters (docs/cluster.md): etcd's JSON gateway and the peers are reached with libcurl;
	# the tests and contrib/cluster-up.sh run a real etcd cluster from Debian's etcd-server
	libcurl4-openssl-dev etcd-server etcd-client
	# the snapshot store (objstore/): SHA-256 of its chunks with OpenSSL's libcrypto
	libssl-dev
	# run
	fuse3 qemu-system-x86 xfsprogs util-linux
	# guest image (contrib/build-image.sh)
	busybox-static bash-static e2fsprogs cpio dpkg apt lz4
	# test_imagekinds.py builds a musl image (musl-gcc)
	musl-tools
	# OCI images: the python image (contrib/build-python-image.sh) is made with
	# mmdebstrap and umoci; the daemon reads registry and docker-archive images with skopeo
	mmdebstrap umoci skopeo
	# tests (ip and nft count namespaces, links and rules before and after)
	python3 valgrind iproute2 nftables
	# test_egress.py's own DNS server, in a namespace the test makes
	dnsmasq-base
	# the chunk store's tests and benchmark (test_store.py, contrib/bench_store.py) serve the store
	# with nginx (its WebDAV module takes the PUTs) in a namespace they make
	nginx
	# the metrics test parses MOUNT/metrics with the reference OpenMetrics parser
	python3-prometheus-client
	# contrib/plot.py draws docs/plots/*.svg from the benchmarks' JSON
	python3-matplotlib
	# the systemd unit's readiness (sd_notify); man pages from --help and docs/ (dist/meson.build)
	libsystemd-dev help2man go-md2man
	# the package and its test in a clean Debian 12 root (debian/, tests/package/)
	dpkg-dev debhelper dh-python systemd
	# libFuzzer targets (contrib/fuzz.sh)
	clang libclang-rt-14-dev
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "contrib/deps.sh: need root to install: ${missing[*]}" >&2
	exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
