#!/usr/bin/env bash
# `arca build` (issue 19): a small build of five RUN steps, cold (an empty cache) and
# fully cached, with its RUN steps in microVMs and in host containers, beside `podman
# build` of the same Dockerfile on the same image where podman runs:
#   - in the nested lab (or directly, on a host whose KVM boots standard guests): arca
#     vm and arca process, round-robin in one run;
#   - on this host: arca process and podman (installed from Debian if missing; its RUN
#     steps with --isolation chroot and the host's network, which is weaker confinement
#     than arca's), in one run (podman cannot run in the lab's busybox L1).
# Prints medians (ms) and ratios within each run; absolute lab times are inflated by TCG.
#
#   tests/bench/build.sh [ROUNDS] [all|vm|host]     (default 3 all)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
parts=${2:-all}
[[ "$parts" =~ ^(all|vm|host)$ ]] || { echo "build.sh: the second argument is all, vm or host" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "build.sh: ROUNDS must be a positive number" >&2; exit 2; }
cargo build --release -q -p arca-runtime -p vmm -p guest-agent
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
# podman in a store of its own (vfs: nothing left mounted), its builds with chroot
# isolation (its OCI runtime, crun, refuses this host's hybrid cgroups).
export PODMAN="podman --root $tmp/podman --runroot $tmp/podman-run --storage-driver vfs"
trap '$PODMAN system reset -f >/dev/null 2>&1; rm -rf "$tmp"' EXIT
tests/guest/mkrootfs "$tmp/rootfs" >/dev/null
tests/guest/mkimage "$tmp/rootfs" "$tmp/busybox.tar" busybox:latest

cat >"$tmp/Dockerfile" <<'DF'
FROM busybox
RUN echo one > /one
RUN mkdir -p /app && echo two > /app/two
RUN seq 1 1000 > /app/numbers
RUN rm /one && echo three > /three
RUN cat /app/numbers | wc -l > /app/count
DF

# run.sh TOOL... : for each tool, ROUNDS cold builds (the cache emptied first) and
# ROUNDS cached rebuilds, round-robin; medians in ms.
cat >"$tmp/run.sh" <<'SCRIPT'
set -e
rounds=$1; shift
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
mkdir -p "$B/ctx"; cp "$B/Dockerfile" "$B/ctx/Dockerfile"
build() { # TOOL [FLAGS]
  case $1 in
    vm) arca build -q --isolation=vm "$B/ctx" ;;
    process) arca build -q --isolation=process "$B/ctx" ;;
    podman) $PODMAN build -q --isolation chroot "$B/ctx" ;;
  esac >/dev/null 2>"$B/last.err" || { cat "$B/last.err" >&2; exit 1; }
}
reset() { # TOOL: an empty cache, the base image loaded
  case $1 in
    vm | process)
      export ARCA_STATE_DIR=/tmp/build-bench-$1
      rm -rf "$ARCA_STATE_DIR"; arca load -i "$B/busybox.tar" >/dev/null ;;
    podman)
      $PODMAN system reset -f >/dev/null 2>&1 || true
      $PODMAN load -i "$B/busybox.tar" >/dev/null ;;
  esac
}
for t in "$@"; do
  # A first, unmeasured build makes the image's disk, the initramfs, the templates.
  reset "$t"; build "$t"
  : >"$B/$t.cold"; : >"$B/$t.cached"
done
i=0
while [ $i -lt "$rounds" ]; do
  for t in "$@"; do
    reset "$t"
    t0=$(ms); build "$t"; echo $(($(ms) - t0)) >>"$B/$t.cold"
    t0=$(ms); build "$t"; echo $(($(ms) - t0)) >>"$B/$t.cached"
  done
  i=$((i + 1))
done
med() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
first=$1
echo "a build of 5 RUN steps: $rounds rounds each, round-robin, median ms"
printf '%-10s %10s %10s %12s %12s\n' tool cold cached "cold vs $first" "cached vs $first"
for t in "$@"; do
  c=$(med "$B/$t.cold"); k=$(med "$B/$t.cached")
  c0=$(med "$B/$first.cold"); k0=$(med "$B/$first.cached")
  printf '%-10s %10s %10s %12s %12s\n' "$t" "$c" "$k" \
    "$(awk -v a="$c" -v b="$c0" 'BEGIN {printf "%.2fx", a / b}')" \
    "$(awk -v a="$k" -v b="$k0" 'BEGIN {printf "%.2fx", a / b}')"
done
SCRIPT

if [ "$parts" != host ]; then
echo "== microVMs and host containers"
if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  B=$tmp ARCA_KERNEL=$kernel PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh" "$rounds" vm process
else
  echo "host KVM cannot boot standard guests: measuring inside the nested lab (L1 under TCG)"
  ARCA_KERNEL=$kernel tests/lab/lab run --timeout $((600 + rounds * 600)) \
    --file "$tmp/run.sh:/bench/run.sh" --file "$tmp/busybox.tar:/bench/busybox.tar" \
    --file "$tmp/Dockerfile:/bench/Dockerfile" \
    --file "$(command -v mke2fs):/usr/sbin/mkfs.ext4" -- "B=/bench sh /bench/run.sh $rounds vm process"
fi
fi
[ "$parts" = vm ] && exit 0

echo "== host containers and podman, on this host"
if [ "$(id -u)" != 0 ]; then
  echo "skipped: process isolation and rootful podman need root"
  exit 0
fi
command -v podman >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null; } || true
tools="process"
if $PODMAN info >/dev/null 2>&1; then
  tools="process podman"
else
  echo "podman does not run here: arca alone"
fi
B=$tmp PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh" "$rounds" $tools
