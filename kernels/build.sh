#!/usr/bin/env bash
# Build the Arca guest kernel (an ELF vmlinux with a PVH entry, and the same kernel as a
# bzImage) from Debian's linux-source-6.12, or reuse the cached build for this exact
# configuration.
#
#   kernels/build.sh           build if needed; print the vmlinux path on stdout
#   kernels/build.sh --path    print the path; exit 1 if it is not built yet
#
# Cache: ${ARCA_CACHE_DIR:-~/.cache/arca}/kernels/<hash>/{vmlinux,bzImage,config,System.map,build-info},
# where <hash> covers microvm.config and this script. Build output never goes to git.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/microvm.config
cache_root=${ARCA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/arca}/kernels
hash=$(cat "$fragment" "$here/build.sh" | sha256sum | cut -c1-16)
out=$cache_root/$hash
src_pkg=linux-source-6.12
src_tar=/usr/src/$src_pkg.tar.xz

log() { printf 'kernels: %s\n' "$*" >&2; }
die() { printf 'kernels: error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
  --path) echo "$out/vmlinux"; [ -f "$out/vmlinux" ]; exit ;;
  "") ;;
  *) die "unknown argument '$1' (usage: build.sh [--path])" ;;
esac

if [ -f "$out/vmlinux" ]; then
  echo "$out/vmlinux"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [ -f "$out/vmlinux" ]; then # another build finished while we waited
  echo "$out/vmlinux"
  exit 0
fi

# Build dependencies, installed from Debian when missing.
pkgs=("$src_pkg" build-essential flex bison bc libelf-dev libssl-dev xz-utils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]} (run as root or install them)"
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
[ -f "$src_tar" ] || die "$src_tar not found after installing $src_pkg"

work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work" "$out.tmp"' EXIT
start=$(date +%s)
log "unpacking $src_tar"
tar -xf "$src_tar" -C "$work" --strip-components=1
cd "$work"
log "configuring (tinyconfig + $(basename "$fragment"))"
make -s ARCH=x86_64 tinyconfig >&2
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >/dev/null
make -s ARCH=x86_64 olddefconfig >&2

# Every line of the fragment must survive olddefconfig: a dropped option means a
# missing dependency, and a kernel silently lacking (say) overlayfs is worse than no kernel.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qxF "$line" .config || { log "option lost in olddefconfig: $line"; bad=1; } ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      if grep -q "^$opt=" .config; then log "option should be off: $(grep "^$opt=" .config)"; bad=1; fi ;;
  esac
done <"$fragment"
[ "$bad" = 0 ] || die "the config fragment does not apply cleanly to $src_pkg"

log "building vmlinux and bzImage with $(nproc) jobs"
make -s ARCH=x86_64 -j"$(nproc)" vmlinux bzImage >&2
end=$(date +%s)

mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
cp System.map "$out.tmp/System.map"
{
  echo "source: $src_pkg $(dpkg-query -W -f='${Version}' "$src_pkg")"
  echo "kernel: $(make -s kernelversion)"
  echo "build-seconds: $((end - start))"
  echo "cores: $(nproc)"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$out.tmp/build-info"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $out/vmlinux in $((end - start)) s"
echo "$out/vmlinux"
