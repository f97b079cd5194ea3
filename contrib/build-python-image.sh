#!/bin/bash
# Build the OCI image of the `python` template from Debian packages only.
#
# Usage: contrib/build-python-image.sh [CACHE_DIR]
#
# Makes a Debian 12 (bookworm) userland with python3, pip, venv, git and curl
# (PACKAGES below) with mmdebstrap, as a tar, and turns it into an OCI image
# layout with umoci.  The last line on stdout is the image reference,
#   oci:CACHE_DIR/python-<key>/oci:latest
# progress and errors go to stderr.
#
# CACHE_DIR: the argument, else $EMBERFS_IMAGE_CACHE, else
# /var/cache/emberfs/images (machine-wide, so a fresh clone reuses it).
# <key> is a sha256 over this script, the package list, the suite, the
# mirrors, the architecture and SOURCE_DATE_EPOCH if set (see inputs.txt next
# to the layout): a run with the same inputs finds CACHE_DIR/python-<key> and
# only prints its reference.  The archive's state is not an input: to take
# newer packages (security updates), remove CACHE_DIR/python-<key> and run
# again.  A build happens in CACHE_DIR/.python-build.* and is renamed to
# python-<key> as its last step, so a python-<key> directory is always whole;
# builds take CACHE_DIR/.python.lock, and the next build removes what a killed
# one left.  CACHE_DIR/python is a symlink to the newest build; the others can
# be removed (see docs/templates.md).
#
# CACHE_DIR/python-<key>/ holds
#   oci/          the OCI image layout (index.json, oci-layout, blobs/sha256/)
#   packages.txt  the Debian packages installed: name, version, architecture
#   inputs.txt    what <key> is the sha256 of
#   build.log     mmdebstrap's output
#
# Exit status: 0 built or found; 77 the Debian archive cannot be reached, or
# mmdebstrap failed for a network reason (one line on stderr says why; tests
# skip on it); 1 any other failure; 2 usage.
#
# Environment: EMBERFS_IMAGE_CACHE, EMBERFS_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), EMBERFS_DEBIAN_SECURITY_MIRROR (default
# http://deb.debian.org/debian-security; empty leaves bookworm-security out),
# EMBERFS_IMAGE_BUILD_TIMEOUT (seconds for mmdebstrap, default 900),
# SOURCE_DATE_EPOCH (default: the newest Date: of the suites' InRelease
# files, so equal archive contents give an equal image).
#
# Needs root, mmdebstrap (its unshare mode: the chroot's mounts live in a
# mount namespace of their own and cannot outlive the build), GNU tar,
# umoci, apt (apt-helper), flock, timeout.
set -euo pipefail
shopt -s inherit_errexit

readonly SUITE=bookworm
# What the image has on top of Debian's minbase (Essential and
# Priority: required, apt).  Recommends are not installed (mmdebstrap's
# default): python3-pip's would bring gcc and python3-dev (~200 MB).
readonly PACKAGES=(
	python3 python3-pip python3-venv
	git curl ca-certificates
	procps less netbase tzdata xz-utils unzip
)
# Left out of the image, also for packages installed into it later (dpkg
# keeps these options in /etc/dpkg/dpkg.cfg.d/99mmdebstrap); copyright
# files stay.
readonly DPKG_OPTS=(
	'path-exclude=/usr/share/man/*'
	'path-exclude=/usr/share/info/*'
	'path-exclude=/usr/share/doc/*'
	'path-include=/usr/share/doc/*/copyright'
	'path-exclude=/usr/share/locale/*'
	'path-include=/usr/share/locale/locale.alias'
	'path-exclude=/usr/share/lintian/*'
)
# Bounded network waits: a dead mirror fails the build instead of hanging it.
# Only for the build: removed from the image by the customize hook.
readonly APT_OPTS=(
	'Acquire::http::Timeout "30"'
	'Acquire::https::Timeout "30"'
	'Acquire::Retries "3"'
)
readonly IMAGE_ENV=(
	PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	LANG=C.UTF-8
	# Output reaches a sandbox's procs/*/stdout as it is printed.
	PYTHONUNBUFFERED=1
	# `pip install` as root works (into /usr/local, beside dpkg's files)
	# instead of stopping at Debian's PEP 668 marker; venvs work either way.
	PIP_BREAK_SYSTEM_PACKAGES=1
	PIP_ROOT_USER_ACTION=ignore
)
readonly EX_UNREACHABLE=77
readonly PROBE_TIMEOUT=45

MIRROR=${EMBERFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${EMBERFS_DEBIAN_SECURITY_MIRROR-http://deb.debian.org/debian-security}
BUILD_TIMEOUT=${EMBERFS_IMAGE_BUILD_TIMEOUT:-900}
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${SECURITY_MIRROR%/}

BUILD_TMP=
CHILD=
MMDEBSTRAP_RC=0

log() {
	echo "build-python-image: $*" >&2
}

die() {
	echo "build-python-image: error: $*" >&2
	exit 1
}

unreachable() {
	echo "build-python-image: Debian archive unreachable: $*" >&2
	exit "$EX_UNREACHABLE"
}

usage() {
	echo "usage: $0 [CACHE_DIR]" >&2
	exit 2
}

sha256_of() {
	local sum
	sum=$(sha256sum "$1") || die "cannot hash $1"
	echo "${sum%% *}"
}

# "deb URI SUITE COMPONENT" lines, one per suite the image is made from.
sources() {
	echo "deb $MIRROR $SUITE main"
	echo "deb $MIRROR $SUITE-updates main"
	[[ -z $SECURITY_MIRROR ]] || echo "deb $SECURITY_MIRROR $SUITE-security main"
}

# Debian architecture to OCI (Go) architecture.
oci_arch() {
	case $1 in
	amd64 | arm64 | riscv64 | s390x) echo "$1" ;;
	i386) echo 386 ;;
	ppc64el) echo ppc64le ;;
	armhf | armel) echo arm ;;
	*) die "no OCI architecture known for $1" ;;
	esac
}

# Fetches each suite's InRelease (bounded, no retries): exits 77 when one
# cannot be had, else prints the newest of their Date: fields as seconds.
probe_archive() {
	local dir=$1 uri suite newest=0 d i=0 out rc
	while read -r _ uri suite _; do
		i=$((i + 1))
		rc=0
		out=$(timeout "$PROBE_TIMEOUT" /usr/lib/apt/apt-helper \
			-o Acquire::http::Timeout=15 -o Acquire::https::Timeout=15 \
			-o Acquire::Retries=0 \
			download-file "$uri/dists/$suite/InRelease" "$dir/InRelease.$i" 2>&1) || rc=$?
		if [[ $rc -eq 124 ]]; then
			unreachable "no answer from $uri within $PROBE_TIMEOUT s"
		elif [[ $rc -ne 0 ]]; then
			out=$(grep -m 1 '^E: Failed to fetch' <<<"$out" || grep -m 1 '^E: ' <<<"$out" || true)
			out=${out#E: }
			unreachable "${out:-apt-helper download-file $uri/dists/$suite/InRelease failed ($rc)}"
		fi
		d=$(sed -n 's/^Date: //p' "$dir/InRelease.$i" | head -n 1)
		[[ -n $d ]] || die "$uri/dists/$suite/InRelease has no Date: field"
		d=$(date -u -d "$d" +%s) || die "cannot parse the Date: of $uri/dists/$suite/InRelease"
		[[ $d -le $newest ]] || newest=$d
	done < <(sources)
	echo "$newest"
}

# apt's message for a network failure (not for a broken package set), the
# "E: Failed to fetch URL  REASON" line if there is one.
network_error_in() {
	local pat='Could not resolve|Temporary failure resolving|Could not connect|Connection (timed out|failed|refused|reset)|Network is unreachable|No route to host|Could not receive data|Unable to connect|[Tt]imed out'
	grep -m 1 -E "^E: .*($pat)" "$1" || grep -m 1 -E "$pat" "$1"
}

# Every build holds the lock, so a .python-build.* found by the holder is
# left by a killed one.  mmdebstrap's mounts were in its own namespace; if
# anything is mounted below one all the same, it is not touched.
remove_stale_builds() {
	local cache=$1 d
	for d in "$cache"/.python-build.*; do
		[[ -d $d ]] || continue
		if awk -v p="$d/" 'index($5 "/", p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
			log "not removing $d: something is mounted below it"
			continue
		fi
		log "removing $d, left by an interrupted build"
		rm -rf --one-file-system "$d"
	done
}

cleanup() {
	if [[ -n $CHILD ]]; then
		kill -TERM "$CHILD" 2>/dev/null || true
		wait "$CHILD" 2>/dev/null || true
	fi
	if [[ -n $BUILD_TMP && -d $BUILD_TMP ]]; then
		rm -rf --one-file-system "$BUILD_TMP" || true
	fi
}

on_signal() {
	trap - INT TERM HUP
	log "interrupted: removing the unfinished build"
	cleanup
	BUILD_TMP=
	exit 130
}

# The customize hook: runs outside the chroot with the chroot as $1, after
# every package is installed, before mmdebstrap's cleanup and packing.
write_customize_hook() {
	local out=$1 packages=$2
	cat >"$out" <<EOF
#!/bin/sh
set -eu
root=\$1
# The host's: the sandbox is given its own.
rm -f "\$root/etc/resolv.conf" "\$root/etc/hostname"
# The build's apt timeouts; dpkg's path excludes stay.
rm -f "\$root/etc/apt/apt.conf.d/99mmdebstrap"
in_root() {
	chroot "\$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
		LANG=C.UTF-8 HOME=/root PYTHONDONTWRITEBYTECODE=1 "\$@"
}
# Fail the build, not the first user, if the image cannot do its job.
in_root python3 -c 'import sys, ssl, venv, ensurepip, sqlite3, zoneinfo, pip; zoneinfo.ZoneInfo("Europe/Paris"); print("python", sys.version.split()[0], ssl.OPENSSL_VERSION)' >&2
in_root pip --version >&2
in_root git --version >&2
in_root curl --version | head -n 1 >&2
dpkg-query --admindir="\$root/var/lib/dpkg" -W -f '\${Package}\t\${Version}\t\${Architecture}\n' |
	LC_ALL=C sort >"$packages"
EOF
	chmod 0755 "$out"
}

# Sets MMDEBSTRAP_RC to mmdebstrap's exit status (124 or 137: timed out).
run_mmdebstrap() {
	local tmp=$1 layer=$2 epoch=$3 logf=$4 hook=$5 include rc=0 opt tailer
	local -a args mirrors
	include=$(
		IFS=,
		echo "${PACKAGES[*]}"
	)
	# output/dev: no device nodes under /dev (the guest mounts devtmpfs
	# there; nodes in a layer cannot be unpacked without root).
	args=(--mode=unshare --variant=minbase --format=tar --include="$include"
		--skip=output/dev)
	for opt in "${APT_OPTS[@]}"; do
		args+=(--aptopt="$opt")
	done
	for opt in "${DPKG_OPTS[@]}"; do
		args+=(--dpkgopt="$opt")
	done
	args+=(--customize-hook="$hook")
	mapfile -t mirrors < <(sources)

	log "mmdebstrap $SUITE (${PACKAGES[*]}), SOURCE_DATE_EPOCH=$epoch"
	mkdir "$tmp/chroot-tmp"
	: >"$logf"
	# timeout runs mmdebstrap in a process group of its own, passes a TERM
	# on, and kills the group when the build outlives the timeout.
	SOURCE_DATE_EPOCH=$epoch TMPDIR=$tmp/chroot-tmp \
		timeout --kill-after=30 "$BUILD_TIMEOUT" \
		mmdebstrap "${args[@]}" "$SUITE" "$layer" "${mirrors[@]}" \
		>"$logf" 2>&1 </dev/null &
	CHILD=$!
	# Progress on stderr while it runs.
	tail -n +1 --pid="$CHILD" -f "$logf" >&2 &
	tailer=$!
	wait "$CHILD" || rc=$?
	CHILD=
	wait "$tailer" 2>/dev/null || true
	MMDEBSTRAP_RC=$rc
	[[ $rc -eq 0 ]] || return 0

	# --skip=output/dev left /dev out altogether: an empty /dev, as in
	# mmdebstrap's own entry for it, appended (GNU tar appends in place).
	mkdir -m 0755 "$tmp/empty" "$tmp/empty/dev"
	tar --append --file="$layer" --directory="$tmp/empty" --no-recursion \
		--numeric-owner --owner=0 --group=0 --mtime="@$epoch" \
		--format=pax --pax-option='delete=atime,delete=ctime' ./dev ||
		die "cannot append ./dev to the root file system's tar"
}

main() {
	[[ $# -le 1 ]] || usage
	[[ ${1:-} != -* ]] || usage
	local cache=${1:-${EMBERFS_IMAGE_CACHE:-/var/cache/emberfs/images}}
	local script arch key inputs dest ref tmp epoch iso rc line
	local -a env_args
	script=$(readlink -f "${BASH_SOURCE[0]}")
	arch=$(dpkg --print-architecture) || die "dpkg --print-architecture failed"

	inputs=$(
		printf 'script %s\n' "$(sha256_of "$script")"
		printf 'suite %s\n' "$SUITE"
		printf 'architecture %s\n' "$arch"
		sources | sed 's/^/source /'
		printf 'packages %s\n' "${PACKAGES[*]}"
		printf 'source_date_epoch %s\n' "${SOURCE_DATE_EPOCH:-archive}"
	)
	key=$(sha256sum <<<"$inputs")
	key=${key%% *}
	mkdir -p "$cache" || die "cannot create $cache"
	cache=$(cd "$cache" && pwd -P)
	dest=$cache/python-$key
	ref=oci:$dest/oci:latest

	if [[ -f $dest/oci/index.json && -f $dest/packages.txt ]]; then
		log "up to date: $dest"
		echo "$ref"
		return 0
	fi

	[[ $EUID -eq 0 ]] || die "must run as root (mmdebstrap makes root-owned files)"
	for line in mmdebstrap tar umoci flock timeout /usr/lib/apt/apt-helper; do
		command -v "$line" >/dev/null || die "missing tool: $line (contrib/deps.sh installs it)"
	done

	exec 9>>"$cache/.python.lock"
	if ! flock -n 9; then
		log "waiting for another build in $cache"
		flock -w "$((BUILD_TIMEOUT + 120))" 9 || die "another build holds $cache/.python.lock"
	fi
	# It may have built this very image.
	if [[ -f $dest/oci/index.json && -f $dest/packages.txt ]]; then
		log "built meanwhile: $dest"
		echo "$ref"
		return 0
	fi
	remove_stale_builds "$cache"

	trap cleanup EXIT
	trap on_signal INT TERM HUP
	tmp=$(mktemp -d "$cache/.python-build.XXXXXX")
	BUILD_TMP=$tmp
	# apt downloads as _apt (its sandbox) only into a directory it can reach.
	chmod 0755 "$tmp"
	mkdir "$tmp/out" "$tmp/probe"
	printf '%s\n' "$inputs" >"$tmp/out/inputs.txt"

	log "checking the Debian archive"
	if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
		probe_archive "$tmp/probe" >/dev/null
		epoch=$SOURCE_DATE_EPOCH
	else
		epoch=$(probe_archive "$tmp/probe")
	fi
	iso=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

	write_customize_hook "$tmp/customize.sh" "$tmp/out/packages.txt"
	run_mmdebstrap "$tmp" "$tmp/layer.tar" "$epoch" "$tmp/out/build.log" "$tmp/customize.sh"
	rc=$MMDEBSTRAP_RC
	if [[ $rc -ne 0 ]]; then
		if line=$(network_error_in "$tmp/out/build.log"); then
			line=${line#E: }
			unreachable "mmdebstrap: ${line#"${line%%[! ]*}"}"
		fi
		# A mirror that went away during the build, or a build that timed out
		# waiting for one.
		rm -f "$tmp"/probe/*
		probe_archive "$tmp/probe" >/dev/null
		[[ $rc -ne 124 && $rc -ne 137 ]] || die "mmdebstrap did not finish within $BUILD_TIMEOUT s"
		line=$(grep -m 1 '^E: ' "$tmp/out/build.log" || tail -n 1 "$tmp/out/build.log")
		die "mmdebstrap failed ($rc): ${line#E: }"
	fi
	[[ -s $tmp/out/packages.txt ]] || die "the customize hook wrote no package list"
	rm -rf --one-file-system "$tmp/chroot-tmp"

	log "packing the OCI image ($(du -m "$tmp/layer.tar" | cut -f 1) MiB of tar)"
	local oci=$tmp/out/oci python_version
	python_version=$(awk -F '\t' '$1 == "python3" { print $2 }' "$tmp/out/packages.txt")
	# umoci's output goes to stderr: stdout ends with the reference only.
	umoci init --layout "$oci" >&2
	umoci new --image "$oci:latest" >&2
	umoci raw add-layer --image "$oci:latest" \
		--history.created "$iso" \
		--history.created_by "mmdebstrap --variant=minbase --include=$(
			IFS=,
			echo "${PACKAGES[*]}"
		) $SUITE" \
		--history.comment "emberfs contrib/build-python-image.sh" \
		"$tmp/layer.tar" >&2
	rm -f "$tmp/layer.tar"
	env_args=()
	for line in "${IMAGE_ENV[@]}"; do
		env_args+=(--config.env "$line")
	done
	umoci config --image "$oci:latest" --no-history \
		--created "$iso" --os linux --architecture "$(oci_arch "$arch")" \
		--clear config.env "${env_args[@]}" \
		--config.user root --config.workingdir /root \
		--clear config.cmd --config.cmd python3 \
		--config.label "org.opencontainers.image.title=emberfs python" \
		--config.label "org.opencontainers.image.description=Debian 12 ($SUITE) with python3 $python_version, pip, venv, git, curl" \
		--manifest.annotation "org.opencontainers.image.created=$iso" \
		--manifest.annotation "org.opencontainers.image.title=emberfs python" \
		--manifest.annotation "org.emberfs.image.inputs=sha256:$key" \
		--manifest.annotation "org.emberfs.debian.suite=$SUITE" \
		--manifest.annotation "org.emberfs.debian.sources=$(sources | paste -sd ';')" \
		--manifest.annotation "org.emberfs.debian.packages=sha256:$(sha256_of "$tmp/out/packages.txt")" \
		--manifest.annotation "org.emberfs.python.version=$python_version" >&2
	umoci gc --layout "$oci" >&2
	umoci stat --image "$oci:latest" >/dev/null || die "umoci stat fails on the new image"
	chmod -R u=rwX,go=rX "$tmp/out"

	# Last step, atomic: python-<key> exists only whole.  Something else
	# under that name (a half-removed copy?) is put aside, removed on exit.
	[[ ! -e $dest && ! -L $dest ]] || mv -T "$dest" "$tmp/old" || die "cannot move $dest aside"
	mv -T "$tmp/out" "$dest" || die "cannot move the image into $dest"
	if ! ln -sfn "python-$key" "$cache/.python.tmp" || ! mv -T "$cache/.python.tmp" "$cache/python"; then
		log "could not point $cache/python at python-$key"
	fi
	log "built $dest: $(du -sm "$dest/oci" | cut -f 1) MiB, $(wc -l <"$dest/packages.txt") packages"
	echo "$ref"
}

main "$@"
