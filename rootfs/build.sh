#!/usr/bin/env bash
# Build Hearth's guest root file systems around hearth-init (static PID 1):
#
#   initramfs.cpio  uncompressed newc cpio: /init = hearth-init, /dev, /proc,
#                   /sys, /tmp, /mnt and the /dev/console node (5,1)
#   rootfs.ext4     ext4 image (mkfs.ext4 -d, no loop mount, no journal):
#                   /sbin/init = hearth-init (and /init), /bin/busybox from
#                   busybox-static with a few applet links, the same dirs
#   hearth-init     the static binary itself
#
# Both are cached in ${HEARTH_CACHE:-$HOME/.cache/hearth}/rootfs-<key>/,
# <key> hashing the rootfs/ sources (hearth-init included), the
# agent-protocol sources hearth-init builds in, Cargo.lock, the workspace
# Cargo.toml, the Rust toolchain and busybox-static versions. A
# cache hit returns at once. No root needed.
#
# Progress goes to stderr; the last line on stdout is the output directory.
set -euo pipefail
# Steps run inside $(...) (build_init, find_busybox): without this, bash
# turns errexit off there, and a failed cargo build went unnoticed, packing
# the previous hearth-init under the new cache key.
shopt -s inherit_errexit
export LC_ALL=C

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/.." && pwd)"
cache_root="${HEARTH_CACHE:-$HOME/.cache/hearth}"
target=x86_64-unknown-linux-gnu
ext4_size_mib=32
packages=(busybox-static e2fsprogs cpio)
applets=(sh uname cat echo ls true false kill sleep sha256sum head wc env mkdir rm wget)
dirs=(dev proc sys tmp mnt)

log() { printf 'rootfs: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

ensure_packages() {
	command -v dpkg >/dev/null 2>&1 || die "dpkg not found: a Debian-based system is required"
	local missing=() p
	for p in "${packages[@]}"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	log "installing missing packages: ${missing[*]}"
	local sudo=()
	if [[ "$(id -u)" -ne 0 ]]; then
		command -v sudo >/dev/null 2>&1 || die "missing packages (${missing[*]}) and not root"
		sudo=(sudo)
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

compute_key() {
	local f
	{
		# Sources under rootfs/ and agent-protocol/ (a path dependency of
		# hearth-init; build outputs excluded), sorted.
		while IFS= read -r -d '' f; do
			printf '%s ' "${f#"$workspace"/}"
			sha256sum <"$f"
		done < <(find "$here" "$workspace/agent-protocol" -type f ! -path '*/target/*' -print0 | sort -z)
		for f in Cargo.lock Cargo.toml; do
			printf '%s ' "$f"
			if [[ -f "$workspace/$f" ]]; then sha256sum <"$workspace/$f"; else echo absent; fi
		done
		rustc -V
		cargo -V
		dpkg-query -W -f='${Package} ${Version}\n' busybox-static e2fsprogs
	} | sha256sum | cut -c1-16
}

# --- newc cpio writer (no root needed for device nodes) ----------------------
cpio_ino=0

cpio_pad() { head -c "$(((4 - $1 % 4) % 4))" /dev/zero; }

# cpio_header NAME MODE SIZE [RDEV_MAJOR RDEV_MINOR]
cpio_header() {
	local name="$1" mode="$2" size="$3" major="${4:-0}" minor="${5:-0}"
	local namesize=$((${#name} + 1)) nlink=1
	((mode & 0040000)) && nlink=2
	cpio_ino=$((cpio_ino + 1))
	# magic ino mode uid gid nlink mtime filesize devmajor devminor
	# rdevmajor rdevminor namesize check
	printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
		"$cpio_ino" "$mode" 0 0 "$nlink" 0 "$size" 0 0 "$major" "$minor" "$namesize" 0
	printf '%s\0' "$name"
	cpio_pad $((110 + namesize))
}

cpio_dir() { cpio_header "$1" $((0040000 | $2)) 0; }
cpio_chardev() { cpio_header "$1" $((0020000 | $2)) 0 "$3" "$4"; }
cpio_file() {
	local name="$1" mode="$2" src="$3" size
	size="$(stat -c %s "$src")"
	cpio_header "$name" $((0100000 | mode)) "$size"
	cat "$src"
	cpio_pad "$size"
}
cpio_trailer() { cpio_header 'TRAILER!!!' 0 0; }

write_initramfs() {
	local init="$1" d
	for d in "${dirs[@]}"; do
		if [[ "$d" == tmp ]]; then cpio_dir "$d" 01777; else cpio_dir "$d" 0755; fi
	done
	cpio_chardev dev/console 0600 5 1
	cpio_file init 0755 "$init"
	cpio_trailer
}

# --- build steps --------------------------------------------------------------------
build_init() {
	local target_dir="$cache_root/cargo-target"
	log "building hearth-init (static, release)"
	(
		cd "$workspace"
		# The binary's size is what the guest kernel copies when it unpacks
		# the initramfs (emulated: seconds per MB), so build it small. The
		# profile overrides apply to this build only.
		export CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=true \
			CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
			CARGO_PROFILE_RELEASE_STRIP=symbols
		RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p hearth-init \
			--target "$target" --target-dir "$target_dir" >&2
	) || die "cargo build of hearth-init failed"
	local bin="$target_dir/$target/release/hearth-init"
	[[ -x "$bin" ]] || die "cargo produced no $bin"
	if readelf -lW "$bin" | grep -q 'Requesting program interpreter' ||
		readelf -dW "$bin" | grep -q '(NEEDED)'; then
		die "$bin is not statically linked"
	fi
	printf '%s\n' "$bin"
}

find_busybox() {
	local bb
	bb="$(dpkg -L busybox-static | grep -E '^(/usr)?/bin/busybox$' | head -n1)"
	[[ -n "$bb" && -x "$bb" ]] || die "busybox-static's /bin/busybox not found"
	if readelf -lW "$bb" | grep -q 'Requesting program interpreter'; then
		die "$bb is not static"
	fi
	printf '%s\n' "$bb"
}

write_ext4() {
	local init="$1" busybox="$2" image="$3" stage="$4" d a
	mkdir -p "$stage/sbin" "$stage/bin"
	for d in "${dirs[@]}"; do mkdir -p "$stage/$d"; done
	chmod 0755 "$stage" "$stage/sbin" "$stage/bin" "$stage/dev" "$stage/proc" "$stage/sys" "$stage/mnt"
	chmod 1777 "$stage/tmp"
	install -m 0755 "$init" "$stage/sbin/init"
	ln -s sbin/init "$stage/init"
	install -m 0755 "$busybox" "$stage/bin/busybox"
	for a in "${applets[@]}"; do ln -s busybox "$stage/bin/$a"; done

	log "creating rootfs.ext4 (${ext4_size_mib} MiB)"
	rm -f "$image"
	# No journal (no jbd2 thread, cheaper mount under emulation); inode
	# tables initialised now, not by the guest's ext4lazyinit thread.
	mkfs.ext4 -q -F -L hearth-root -O ^has_journal \
		-E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
		-d "$stage" "$image" "${ext4_size_mib}M" >&2
	# mkfs -d copies the builder's uid/gid; make everything root-owned.
	local cmds="$stage.debugfs" path
	: >"$cmds"
	while IFS= read -r -d '' path; do
		path="/${path#"$stage"/}"
		printf 'sif "%s" uid 0\nsif "%s" gid 0\n' "$path" "$path" >>"$cmds"
	done < <(find "$stage" -mindepth 1 -print0)
	debugfs -w -f "$cmds" "$image" >/dev/null 2>&1 || die "debugfs could not chown the image"
	e2fsck -fn "$image" >&2 || die "e2fsck found problems in $image"
}

build() {
	local out="$1" tmp init busybox
	tmp="$(mktemp -d "$out.tmp.XXXXXX")"
	chmod 0755 "$tmp"
	trap 'rm -rf "$tmp"' EXIT

	init="$(build_init)"
	busybox="$(find_busybox)"
	install -m 0755 "$init" "$tmp/hearth-init"

	log "creating initramfs.cpio"
	write_initramfs "$tmp/hearth-init" >"$tmp/initramfs.cpio"
	local listing
	listing="$(cpio -it --quiet <"$tmp/initramfs.cpio" | sort | tr '\n' ' ')"
	[[ "$listing" == "dev dev/console init mnt proc sys tmp " ]] ||
		die "unexpected initramfs contents: $listing"

	write_ext4 "$tmp/hearth-init" "$busybox" "$tmp/rootfs.ext4" "$tmp/stage"
	rm -rf "$tmp/stage" "$tmp/stage.debugfs"

	rm -rf "$out"
	mv -T "$tmp" "$out"
	trap - EXIT
}

main() {
	command -v cargo >/dev/null 2>&1 || die "cargo not found"
	ensure_packages
	local key out
	key="$(compute_key)"
	out="$cache_root/rootfs-$key"
	if [[ -f "$out/initramfs.cpio" && -f "$out/rootfs.ext4" ]]; then
		log "cached: $out"
		printf '%s\n' "$out"
		return 0
	fi

	mkdir -p "$cache_root"
	exec 9>"$out.lock"
	flock 9
	if [[ ! -f "$out/initramfs.cpio" || ! -f "$out/rootfs.ext4" ]]; then
		# Leftovers of interrupted builds (we hold the lock).
		rm -rf "$out".tmp.*
		(build "$out")
	fi
	exec 9>&-

	log "built: $out"
	printf '%s\n' "$out"
}

main "$@"
