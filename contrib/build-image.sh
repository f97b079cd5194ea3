#!/bin/bash
# Build the default emberfs guest image from Debian packages only.
#
# Usage: contrib/build-image.sh AGENT_BINARY OUTDIR
#
# Produces OUTDIR/images/<key>/{vmlinuz,vmlinux,initrd.cpio,rootfs.ext4,manifest.json}
# and points the symlink OUTDIR/current at it.  <key> is a sha256 over the
# kernel .deb, the agent binary, /bin/busybox, /bin/bash-static and this script, so running it
# again with the same inputs only re-points OUTDIR/current.  The image
# directory is printed as the last line on stdout; progress goes to stderr.
#
# Needs root (apt-get, root-owned files in the images), apt, dpkg-deb,
# busybox-static, bash-static, e2fsprogs, cpio, and the decompressor of the kernel
# (lz4 for Debian 12's kernels) to unpack vmlinux.
#
# Boot-time choices, measured under QEMU 7.2 TCG, -M microvm, -cpu max,
# 256 MiB, on a 2-core build machine, wall clock from QEMU start to the
# agent's ready line, medians of 10 interleaved boots (spread +-300 ms).
# All of them: 1864 ms; without any of them (bzImage, signed modules, no
# quiet, self-tests on): 2800 ms.  Each one taken away from the final set:
#  - vmlinux: the uncompressed ELF kernel, booted through its PVH entry
#    (QEMU -kernel takes it as is), skips real-mode setup and the LZ4
#    decompressor: +585 ms with vmlinuz (kept for whoever wants a bzImage).
#  - modules stripped of their signatures (see copy_module_unsigned): +70 ms
#    signed (+240 ms in an earlier run of 7).
#  - quiet: every console byte is a TCG exit: +50 ms without.
#  - cryptomgr.notests: the crypto self-tests run at boot otherwise: +420 ms.
#  - panic=-1: a panic resets at once (with QEMU -no-reboot the process
#    exits ~115 ms after the panic).  reboot=k is left out: microvm has no
#    i8042, and the failed keyboard reset made that 1.7 s.
#  - initrd uncompressed: gzip measured no different (20 boots each,
#    medians 1714 vs 1698 ms), and raw needs no decompression.
#  - no measurable gain, so left out: nokaslr, 8250.nr_uarts=1,
#    no_timer_check, pci=off, tsc=reliable, mitigations=off, lsm=capability.
#  - -cpu max boots ~0.7 s faster than QEMU's default qemu64 model.
# Not in the recorded cmdline because it is host-specific: under TCG the
# VMM must append tsc_early_khz=<host TSC frequency in kHz>.  Without it
# the guest calibrates its TSC against the PIT, microvm has no HPET or PM
# timer to fall back to, and a failed calibration hangs the boot in
# calibrate_delay (4 of 25 boots on an idle host, 10 of 12 on a busy one).
# Under TCG the guest's TSC is the host's, so the host's rate is the answer.
set -euo pipefail

readonly KERNEL_META=linux-image-cloud-amd64
readonly BUSYBOX=/bin/busybox
# /bin/bash in the guest: Debian's statically linked bash (the guest has no libc).
# Programs written for other sandboxes run `/bin/bash -l -c CMD` (the E2B SDK does).
readonly BASH_STATIC=/bin/bash-static
readonly ROOTFS_SIZE=64M
readonly PORT_NAME=org.emberfs.agent

# Wanted modules, in the order the agent should load them; their
# dependencies are added in front of them.  virtio_console comes early so
# that the host's asynchronous setup of the agent's port overlaps the rest.
readonly WANTED_MODULES=(
	virtio_ring virtio virtio_mmio virtio_console virtio_blk
	failover net_failover virtio_net
	vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
)

# See the boot-time notes at the top of this file.
readonly CMDLINE_BASE="console=ttyS0 quiet cryptomgr.notests panic=-1 random.trust_cpu=on"
readonly MODSIG_MAGIC='~Module signature appended~'

die() {
	echo "build-image: error: $*" >&2
	exit 1
}

log() {
	echo "build-image: $*" >&2
}

usage() {
	echo "usage: $0 AGENT_BINARY OUTDIR" >&2
	exit 2
}

sha256_of() {
	local sum
	sum=$(sha256sum "$1") || die "cannot hash $1"
	echo "${sum%% *}"
}

check_host() {
	local tool
	[[ $EUID -eq 0 ]] || die "must run as root (apt-get download, root-owned image files)"
	for tool in apt-cache apt-get dpkg-deb mke2fs cpio sha256sum; do
		command -v "$tool" >/dev/null || die "missing tool: $tool"
	done
	[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: apt-get install busybox-static"
	if ! "$BUSYBOX" --list >/dev/null 2>&1; then
		die "$BUSYBOX does not run"
	fi
	[[ -x $BASH_STATIC ]] || die "$BASH_STATIC not found: apt-get install bash-static"
	# The dynamic busybox package installs the same path: the guest has no libc.
	if ! dpkg-query -S "$BUSYBOX" 2>/dev/null | grep -q '^busybox-static:'; then
		die "$BUSYBOX is not from busybox-static: apt-get install busybox-static"
	fi
}

# The linux-image-6.1.0-NN-cloud-amd64 package the metapackage points at.
kernel_package() {
	apt-cache depends "$KERNEL_META" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $2 }' |
		sed -n 1p
}

resolve_kernel_package() {
	local pkg
	pkg=$(kernel_package)
	if [[ -z $pkg ]]; then
		log "apt-cache knows no $KERNEL_META: running apt-get update"
		apt-get update -qq >&2 || die "apt-get update failed"
		pkg=$(kernel_package)
	fi
	[[ -n $pkg ]] || die "cannot resolve $KERNEL_META to a kernel package"
	echo "$pkg"
}

# Prints the path of the kernel .deb in CACHE, downloading it if absent.
fetch_kernel_deb() {
	local pkg=$1 cache=$2 deb
	deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*_amd64.deb" | sort -V | tail -n 1)
	if [[ -z $deb ]]; then
		log "downloading $pkg"
		(cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2) ||
			die "apt-get download $pkg failed"
		deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*_amd64.deb" | sort -V | tail -n 1)
	fi
	[[ -n $deb ]] || die "no .deb for $pkg in $cache after download"
	echo "$deb"
}

# The "depends=" list of a .ko's modinfo, comma separated.
module_depends() {
	tr '\0' '\n' <"$1" | awk '/^depends=/ && !done { sub(/^depends=/, ""); print; done = 1 }'
}

# Little-endian unsigned integer of WIDTH bytes at OFFSET in FILE.
read_le() {
	local file=$1 offset=$2 width=$3
	od -An -tu"$width" -j "$offset" -N "$width" "$file" | tr -d ' \n'
}

# FILE's bytes [OFFSET, OFFSET+COUNT) on stdout.
read_range() {
	dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=1M status=none
}

# The uncompressed ELF kernel from a bzImage, located through the boot
# protocol's payload_offset/payload_length (x86 boot protocol 2.08+).
extract_vmlinux() {
	local bz=$1 out=$2 setup offset length magic size
	local -a tool
	[[ $(read_range "$bz" $((0x202)) 4) == HdrS ]] || die "$bz is not a bzImage"
	setup=$(read_le "$bz" $((0x1f1)) 1)
	[[ $setup -ne 0 ]] || setup=4
	offset=$(((setup + 1) * 512 + $(read_le "$bz" $((0x248)) 4)))
	length=$(read_le "$bz" $((0x24c)) 4)
	magic=$(od -An -tx1 -j "$offset" -N 6 "$bz" | tr -d ' \n')
	case $magic in
	02214c18*) tool=(lz4 -dc) ;;
	28b52ffd*) tool=(zstd -dcq) ;;
	fd377a585a00) tool=(xz -dc) ;;
	1f8b*) tool=(gzip -dc) ;;
	*) die "unknown kernel payload compression (magic $magic)" ;;
	esac
	command -v "${tool[0]}" >/dev/null ||
		die "${tool[0]} is needed to unpack the kernel: apt-get install ${tool[0]}"
	# The payload ends in the 4-byte little-endian size of what it unpacks to.
	size=$(read_le "$bz" $((offset + length - 4)) 4)
	read_range "$bz" "$offset" $((length - 4)) | "${tool[@]}" >"$out" ||
		die "cannot decompress the kernel payload of $bz"
	[[ $(stat -c %s "$out") -eq $size ]] || die "unpacked kernel has the wrong size"
	[[ $(read_range "$out" 1 3) == ELF ]] || die "unpacked kernel is not an ELF file"
}

# Debian signs its modules; the guest kernel then checks an RSA signature
# per module, which under TCG costs 70-240 ms of boot.  The modules come from
# the same apt-verified .deb as the kernel, so the check adds nothing here.
# Unsigned modules only taint the kernel ('E'); nothing enforces signatures
# (no lockdown, no module.sig_enforce).
copy_module_unsigned() {
	local in=$1 out=$2 size siglen b
	size=$(stat -c %s "$in")
	if [[ $size -le 40 || $(tail -c 28 "$in") != "$MODSIG_MAGIC" ]]; then
		install -m 0644 "$in" "$out"
		return
	fi
	# struct module_signature (12 bytes) precedes the magic; sig_len is
	# its last field, big-endian.
	siglen=0
	for b in $(od -An -tu1 -j $((size - 32)) -N 4 "$in"); do
		siglen=$((siglen * 256 + b))
	done
	[[ $siglen -lt $((size - 40)) ]] || die "bad module signature in $in"
	read_range "$in" 0 $((size - 40 - siglen)) >"$out"
	chmod 0644 "$out"
}

declare -A MOD_PATH=() MOD_SEEN=() MOD_BUILTIN=()
MOD_ORDER=()
BUILD_TMP=

index_modules() {
	local moddir=$1 f name
	while IFS= read -r f; do
		name=$(basename "$f" .ko)
		MOD_PATH[${name//-/_}]=$f
	done < <(find "$moddir/kernel" -name '*.ko')
	if [[ -f $moddir/modules.builtin ]]; then
		while IFS= read -r f; do
			name=$(basename "$f" .ko)
			MOD_BUILTIN[${name//-/_}]=1
		done <"$moddir/modules.builtin"
	fi
}

# Depth-first: dependencies land in MOD_ORDER before their users.
add_module() {
	local name=${1//-/_} dep deps
	[[ -z ${MOD_SEEN[$name]:-} ]] || return 0
	MOD_SEEN[$name]=1
	[[ -z ${MOD_BUILTIN[$name]:-} ]] || return 0
	[[ -n ${MOD_PATH[$name]:-} ]] || die "module $name is neither in the kernel package nor built in"
	deps=$(module_depends "${MOD_PATH[$name]}")
	for dep in ${deps//,/ }; do
		add_module "$dep"
	done
	MOD_ORDER+=("$name")
}

kernel_config_value() {
	local config=$1 option=$2
	sed -n "s/^$option=//p" "$config"
}

build_initrd() {
	local kroot=$1 kver=$2 agent=$3 out=$4 stage=$5 name config
	config=$kroot/boot/config-$kver
	[[ -f $config ]] || die "no kernel config in the package ($config)"
	index_modules "$kroot/lib/modules/$kver"
	case $(kernel_config_value "$config" CONFIG_EXT4_FS) in
	y) ;;
	m) add_module ext4 ;;
	*) die "kernel has no ext4 (CONFIG_EXT4_FS unset)" ;;
	esac
	for name in "${WANTED_MODULES[@]}"; do
		add_module "$name"
	done

	mkdir -p "$stage"/{dev,proc,sys,newroot,etc/emberfs,lib/modules}
	install -m 0755 "$agent" "$stage/init"
	: >"$stage/etc/emberfs/modules"
	for name in "${MOD_ORDER[@]}"; do
		copy_module_unsigned "${MOD_PATH[$name]}" "$stage/lib/modules/$name.ko"
		echo "$name.ko" >>"$stage/etc/emberfs/modules"
	done
	log "initrd modules: ${MOD_ORDER[*]}"
	pack_cpio "$stage" "$out"
}

# Uncompressed newc, reproducible (fixed times, owners, order).
pack_cpio() {
	local stage=$1 out=$2
	find "$stage" -exec touch -h -d @0 {} +
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible) >"$out" ||
		die "cpio failed"
}

build_rootfs() {
	local stage=$1 out=$2 key=$3 applet
	mkdir -p "$stage"/{bin,etc,root,tmp,run,dev,proc,sys,var/tmp}
	chmod 0700 "$stage/root"
	chmod 1777 "$stage/tmp" "$stage/var/tmp"
	install -m 0755 "$BUSYBOX" "$stage/bin/busybox"
	for applet in $("$BUSYBOX" --list); do
		[[ $applet == busybox || -e $stage/bin/$applet ]] || ln -s busybox "$stage/bin/$applet"
	done
	[[ -L $stage/bin/sh ]] || die "busybox has no sh applet"
	rm -f "$stage/bin/bash"
	install -m 0755 "$BASH_STATIC" "$stage/bin/bash"
	echo emberfs >"$stage/etc/hostname"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd"
	echo 'root:x:0:' >"$stage/etc/group"
	find "$stage" -exec touch -h -d @0 {} +
	# Fixed UUID, hash seed and time, so equal inputs give an equal image;
	# inode tables initialised now, or the guest's ext4lazyinit thread
	# would zero them after boot, under TCG, on every new sandbox.
	E2FSPROGS_FAKE_TIME=1 mke2fs -q -F -t ext4 -b 4096 \
		-L emberfs-root -U "$(uuid_from "$key" 0)" \
		-E "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0,hash_seed=$(uuid_from "$key" 1)" \
		-d "$stage" "$out" "$ROOTFS_SIZE" >&2 ||
		die "mke2fs failed"
}

# A version-4-shaped UUID from a hex key, so builds are reproducible.
uuid_from() {
	local h
	h=$(printf '%s %s' "$1" "$2" | sha256sum)
	echo "${h:0:8}-${h:8:4}-4${h:13:3}-a${h:17:3}-${h:20:12}"
}

write_manifest() {
	local dir=$1 pkg=$2 kver=$3 key=$4 cmdline=$5
	cat >"$dir/manifest.json" <<EOF
{
  "kernel_package": "$pkg",
  "kernel_version": "$kver",
  "cmdline": "$cmdline",
  "files": {
    "vmlinuz": "$(sha256_of "$dir/vmlinuz")",
    "vmlinux": "$(sha256_of "$dir/vmlinux")",
    "initrd.cpio": "$(sha256_of "$dir/initrd.cpio")",
    "rootfs.ext4": "$(sha256_of "$dir/rootfs.ext4")"
  },
  "key": "$key"
}
EOF
}

# Swap OUTDIR/current in one rename, never leaving it missing.
point_current() {
	local outdir=$1 key=$2
	ln -sfn "images/$key" "$outdir/.current.tmp"
	mv -T "$outdir/.current.tmp" "$outdir/current"
}

main() {
	[[ $# -eq 2 ]] || usage
	local agent=$1 outdir=$2 pkg deb key tmp kver dest script
	[[ -f $agent ]] || die "agent binary not found: $agent"
	check_host
	mkdir -p "$outdir/cache" "$outdir/images"
	outdir=$(cd "$outdir" && pwd)
	script=$(readlink -f "${BASH_SOURCE[0]}")

	pkg=$(resolve_kernel_package)
	deb=$(fetch_kernel_deb "$pkg" "$outdir/cache")
	key=$(printf 'kernel %s\nagent %s\nbusybox %s\nbash %s\nscript %s\n' \
		"$(sha256_of "$deb")" "$(sha256_of "$agent")" \
		"$(sha256_of "$BUSYBOX")" "$(sha256_of "$BASH_STATIC")" "$(sha256_of "$script")" | sha256sum)
	key=${key%% *}
	dest=$outdir/images/$key
	if [[ -f $dest/manifest.json ]]; then
		log "up to date: $dest"
		point_current "$outdir" "$key"
		echo "$dest"
		return 0
	fi

	tmp=$(mktemp -d "$outdir/.build.XXXXXX")
	BUILD_TMP=$tmp
	trap 'rm -rf "$BUILD_TMP"' EXIT
	log "unpacking $(basename "$deb")"
	dpkg-deb -x "$deb" "$tmp/kernel" || die "dpkg-deb -x $deb failed"
	kver=$(ls "$tmp/kernel/lib/modules")
	[[ -n $kver && $kver != *$'\n'* ]] || die "cannot tell the kernel version of $deb"
	[[ -f $tmp/kernel/boot/vmlinuz-$kver ]] || die "no boot/vmlinuz-$kver in $deb"

	mkdir "$tmp/image"
	install -m 0644 "$tmp/kernel/boot/vmlinuz-$kver" "$tmp/image/vmlinuz"
	[[ $(kernel_config_value "$tmp/kernel/boot/config-$kver" CONFIG_PVH) == y ]] ||
		die "kernel $kver cannot boot through PVH (CONFIG_PVH unset)"
	extract_vmlinux "$tmp/image/vmlinuz" "$tmp/image/vmlinux"
	chmod 0644 "$tmp/image/vmlinux"
	build_initrd "$tmp/kernel" "$kver" "$agent" "$tmp/image/initrd.cpio" "$tmp/initrd"
	build_rootfs "$tmp/rootfs" "$tmp/image/rootfs.ext4" "$key"
	write_manifest "$tmp/image" "$pkg" "$kver" "$key" \
		"$CMDLINE_BASE emberfs.root=/dev/vda emberfs.port=$PORT_NAME"

	# A concurrent build of the same key may have won the race: keep theirs.
	if ! mv -T "$tmp/image" "$dest" 2>/dev/null; then
		[[ -f $dest/manifest.json ]] || die "cannot move the image into $dest"
	fi
	point_current "$outdir" "$key"
	log "built $dest"
	echo "$dest"
}

main "$@"

