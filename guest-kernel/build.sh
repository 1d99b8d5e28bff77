#!/usr/bin/env bash
# Build the Hearth guest kernel: an uncompressed ELF vmlinux (PVH entry)
# from Debian's linux-source-6.1, with guest-kernel/patches/*.patch applied
# and guest-kernel/microvm.config on top of `make allnoconfig`.
#
# The result is cached outside the repository in
#   ${HEARTH_CACHE:-$HOME/.cache/hearth}/kernel-<key>/vmlinux
# where <key> hashes microvm.config, every patch, this script and the
# linux-source package version. A cache hit returns at once.
#
# Progress goes to stderr; the last line on stdout is the vmlinux path.
# Beside it, kernel.release holds the release the guest reports (uname -r).
#
# Environment:
#   HEARTH_CACHE          cache root (default: $HOME/.cache/hearth)
#   HEARTH_KERNEL_JOBS    make -j value (default: nproc)
#   HEARTH_KEEP_SRC=1     keep the unpacked, built tree in kernel-<key>/src
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${HEARTH_CACHE:-$HOME/.cache/hearth}"
src_pkg="linux-source-6.1"
tarball="/usr/src/${src_pkg}.tar.xz"
packages=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils patch)

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
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

# sha256 over the inputs that determine the kernel binary.
compute_key() {
	local version="$1" f
	{
		printf '%s %s\n' "$src_pkg" "$version"
		for f in "$here/build.sh" "$here/microvm.config" "$here"/patches/*.patch; do
			[[ -f "$f" ]] || continue
			printf '%s ' "${f#"$here"/}"
			sha256sum <"$f"
		done
	} | sha256sum | cut -c1-16
}

# Every CONFIG_X=v line of the fragment must be in .config verbatim, and
# every "# CONFIG_X is not set" must not be set: Kconfig silently drops
# options whose dependencies are off.
verify_config() {
	local fragment="$1" config="$2" line sym bad=0
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			if ! grep -qxF -- "$line" "$config"; then
				log "config: wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo absent)'"
				bad=1
			fi
			;;
		"# CONFIG_"*" is not set")
			sym="${line#\# }"
			sym="${sym%% *}"
			if grep -q "^${sym}=" "$config"; then
				log "config: wanted '$sym' off, got '$(grep "^${sym}=" "$config")'"
				bad=1
			fi
			;;
		esac
	done <"$fragment"
	((bad == 0)) || die "the final .config does not match microvm.config"
}

build() {
	local out="$1" version="$2" work src p jobs
	jobs="${HEARTH_KERNEL_JOBS:-$(nproc)}"
	work="$(mktemp -d "$out/work.XXXXXX")"
	# Remove the scratch tree on any exit from this function's shell.
	trap 'rm -rf "$work"' EXIT

	log "unpacking $tarball"
	tar -C "$work" -xf "$tarball"
	src="$work/$src_pkg"
	[[ -d "$src" ]] || die "$tarball did not unpack to $src_pkg/"
	local srcver
	srcver="$(make -s -C "$src" kernelversion 2>/dev/null)" || die "cannot read the kernel version of $src_pkg $version"
	log "source: $src_pkg $version (Linux $srcver)"

	for p in "$here"/patches/*.patch; do
		[[ -f "$p" ]] || continue
		log "applying ${p#"$here"/}"
		patch -d "$src" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch <"$p" >&2 ||
			die "patch ${p#"$here"/} does not apply to Linux $srcver ($src_pkg $version)"
	done

	local kmake=(make -C "$src" ARCH=x86_64 KBUILD_BUILD_USER=hearth KBUILD_BUILD_HOST=hearth)
	log "configuring (allnoconfig + microvm.config)"
	"${kmake[@]}" KCONFIG_ALLCONFIG="$here/microvm.config" allnoconfig >&2
	verify_config "$here/microvm.config" "$src/.config"

	log "building vmlinux with -j$jobs (several minutes)"
	local start=$SECONDS
	"${kmake[@]}" -j"$jobs" vmlinux >&2
	log "vmlinux built in $((SECONDS - start)) s"

	# The release the guest reports (uname -r): tests read it from here,
	# never from a constant, because Debian's linux-source-6.1 moves.
	cp "$src/include/config/kernel.release" "$out/kernel.release.tmp"
	local f
	for f in .config System.map vmlinux; do
		cp "$src/$f" "$out/${f#.}.tmp"
	done
	if [[ "${HEARTH_KEEP_SRC:-0}" == 1 ]]; then
		rm -rf "$out/src"
		mv "$src" "$out/src"
	fi
	mv -f "$out/config.tmp" "$out/config"
	mv -f "$out/System.map.tmp" "$out/System.map"
	mv -f "$out/kernel.release.tmp" "$out/kernel.release"
	# vmlinux last: its presence marks a complete cache entry.
	mv -f "$out/vmlinux.tmp" "$out/vmlinux"
	rm -rf "$work"
	trap - EXIT
}

main() {
	command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found"
	local version
	if ! version="$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null)" || [[ -z "$version" ]]; then
		ensure_packages
		version="$(dpkg-query -W -f='${Version}' "$src_pkg")"
	fi
	local key out
	key="$(compute_key "$version")"
	out="$cache_root/kernel-$key"

	if [[ -f "$out/vmlinux" ]]; then
		log "cached: $out/vmlinux (Linux $(cat "$out/kernel.release" 2>/dev/null || echo unknown))"
		printf '%s\n' "$out/vmlinux"
		return 0
	fi

	ensure_packages
	[[ -f "$tarball" ]] || die "$tarball not found"
	mkdir -p "$out"

	# One build per key at a time; a second caller waits and then hits the cache.
	exec 9>"$out/.lock"
	flock 9
	if [[ ! -f "$out/vmlinux" ]]; then
		# Scratch trees of interrupted builds (we hold the lock).
		rm -rf "$out"/work.*
		(build "$out" "$version")
	fi
	exec 9>&-

	[[ -f "$out/vmlinux" ]] || die "no vmlinux in $out"
	log "built: $out/vmlinux (Linux $(cat "$out/kernel.release"))"
	printf '%s\n' "$out/vmlinux"
}

main "$@"
