#!/usr/bin/env bash
# What the host-side wall costs a start: `arca run --rm busybox true` with the release
# binaries of BASE (default 2a3ad84, the last commit before the wall: no private-state
# checks, no watched supervisor, no log rotation, the console on, the old network
# rules) beside this tree's, round-robin in one run, on the default network (bridge,
# nftables rules) and with --network none. --isolation=vm where KVM boots standard
# guests (else in the lab); --isolation=process on the lab's L1 too (cgroup v2).
#
#   tests/bench/wall.sh [ROUNDS]     (default 10; BASE=REV to compare another commit)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-10} base=${BASE:-2a3ad84}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "wall.sh: ROUNDS must be a positive number" >&2; exit 2; }
cache=${ARCA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/arca}/bench-base/$(git rev-parse --short "$base")
if [ ! -x "$cache/arca" ]; then
  echo "wall.sh: building $base once (cached in $cache)" >&2
  src=$(mktemp -d)
  git worktree add -q --detach "$src/tree" "$base"
  (cd "$src/tree" && CARGO_TARGET_DIR="$src/target" cargo build --release -q -p arca-runtime -p vmm -p guest-agent)
  mkdir -p "$cache"
  cp "$src/target/release/"{arca,arca-vmm,arca-agent} "$cache/"
  git worktree remove --force "$src/tree"
  rm -rf "$src"
fi
cargo build --release -q -p arca-runtime -p vmm -p guest-agent
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tests/guest/mkrootfs "$tmp/rootfs" >/dev/null
tests/guest/mkimage "$tmp/rootfs" "$tmp/busybox.tar" busybox:latest

# Times each variant ROUNDS times, round-robin; prints medians (ms) and the ratio.
cat >"$tmp/run.sh" <<'SCRIPT'
set -e
rounds=$1 iso=$2 net=$3
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
for v in old new; do
  ARCA_STATE_DIR=/tmp/wall-$v-$iso "$B/$v/arca" load -i "$B/busybox.tar" >/dev/null
  # A first, unmeasured run builds the image's disk and the agent initramfs.
  ARCA_STATE_DIR=/tmp/wall-$v-$iso "$B/$v/arca" run --rm --isolation="$iso" --network "$net" busybox true
done
: >"$B/old.t"; : >"$B/new.t"
i=0
while [ $i -lt "$rounds" ]; do
  for v in old new; do
    sleep 4 # the network garbage collector takes the bridge down 2 s after a run
    t0=$(ms)
    ARCA_STATE_DIR=/tmp/wall-$v-$iso "$B/$v/arca" run --rm --isolation="$iso" --network "$net" busybox true
    echo $(($(ms) - t0)) >>"$B/$v.t"
  done
  i=$((i + 1))
done
med() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
o=$(med "$B/old.t") n=$(med "$B/new.t")
printf '%-44s %8s %8s %7s\n' "arca run --rm --isolation=$iso --network $net" "$o" "$n" \
  "$(awk -v o="$o" -v n="$n" 'BEGIN {printf "%.2fx", n / o}')"
SCRIPT
mkdir -p "$tmp/old" "$tmp/new"
cp "$cache/"{arca,arca-vmm,arca-agent} "$tmp/old/"
cp target/release/{arca,arca-vmm,arca-agent} "$tmp/new/"
cat >"$tmp/all.sh" <<SCRIPT
echo "rounds: $rounds each, round-robin, after one unmeasured run; median ms"
printf '%-44s %8s %8s %7s\n' "" base now ratio
for iso in vm process; do for net in bridge none; do sh "\$B/run.sh" $rounds \$iso \$net; done; done
SCRIPT
if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  B=$tmp ARCA_KERNEL=$kernel sh "$tmp/all.sh"
else
  echo "host KVM cannot boot standard guests: measuring inside the nested lab (L1 under TCG)"
  files=(--file "$tmp/run.sh:/bench/run.sh" --file "$tmp/all.sh:/bench/all.sh"
    --file "$tmp/busybox.tar:/bench/busybox.tar" --file "$(command -v mke2fs):/usr/sbin/mkfs.ext4")
  for v in old new; do
    for b in arca arca-vmm arca-agent; do files+=(--file "$tmp/$v/$b:/bench/$v/$b"); done
  done
  ARCA_KERNEL=$kernel tests/lab/lab run --timeout $((300 + rounds * 60)) "${files[@]}" -- \
    'B=/bench sh /bench/all.sh'
fi
