#!/usr/bin/env bash
# What the VMM's jail and seccomp filters cost a start (issue 14): `arca run --rm
# --network none busybox true` in microVMs three ways, round-robin in one run:
#   bare     ARCA_VMM_JAIL=0 and arca-vmm --no-seccomp (neither)
#   seccomp  ARCA_VMM_JAIL=0 (the filters only)
#   jailed   the default (jail and filters)
# Every variant goes through the same one-line wrapper as $ARCA_VMM (it adds
# --no-seccomp for `bare`), so the wrapper's cost cancels out. Prints medians (ms) and
# each variant's cost against `bare`. Target: jail and seccomp under 5% of a start.
#
#   tests/bench/jail.sh [ROUNDS]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-10}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "jail.sh: ROUNDS must be a positive number" >&2; exit 2; }
cargo build --release -q -p arca-runtime -p vmm -p guest-agent
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tests/guest/mkrootfs "$tmp/rootfs" >/dev/null
tests/guest/mkimage "$tmp/rootfs" "$tmp/busybox.tar" busybox:latest

cat >"$tmp/run.sh" <<'SCRIPT'
set -e
rounds=$1
vmm=$(command -v arca-vmm)
# (`arca-vmm control`, which warm-start templates are made with, takes no --no-seccomp.)
printf '#!/bin/sh\n[ "$1" = control ] && exec %s "$@"\nexec %s --no-seccomp "$@"\n' "$vmm" "$vmm" >"$B/vmm-bare"
printf '#!/bin/sh\nexec %s "$@"\n' "$vmm" >"$B/vmm-filtered"
chmod +x "$B/vmm-bare" "$B/vmm-filtered"
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
variant() { # NAME: runs arca with that variant's environment
  v=$1; shift
  case $v in
    bare) ARCA_VMM_JAIL=0 ARCA_VMM="$B/vmm-bare" arca "$@" 2>/dev/null ;;
    seccomp) ARCA_VMM_JAIL=0 ARCA_VMM="$B/vmm-filtered" arca "$@" 2>/dev/null ;;
    jailed) ARCA_VMM="$B/vmm-filtered" arca "$@" ;;
  esac
}
export ARCA_STATE_DIR=/tmp/jail-bench
arca load -i "$B/busybox.tar" >/dev/null
for v in bare seccomp jailed; do
  # A first, unmeasured run builds the image's disk and the agent initramfs.
  variant $v run --rm --network none busybox true
  : >"$B/$v.t"
done
i=0
while [ $i -lt "$rounds" ]; do
  for v in bare seccomp jailed; do
    t0=$(ms)
    variant $v run --rm --network none busybox true
    echo $(($(ms) - t0)) >>"$B/$v.t"
  done
  i=$((i + 1))
done
med() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
b=$(med "$B/bare.t")
echo "arca run --rm --isolation=vm --network none busybox true: $rounds rounds each, round-robin, median ms"
printf '%-10s %8s %8s\n' variant ms "vs bare"
for v in bare seccomp jailed; do
  m=$(med "$B/$v.t")
  printf '%-10s %8s %8s\n' $v "$m" "$(awk -v m="$m" -v b="$b" 'BEGIN {printf "%+.1f%%", (m / b - 1) * 100}')"
done
echo "target: jailed within +5% of bare"
SCRIPT
if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  B=$tmp ARCA_KERNEL=$kernel PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh" "$rounds"
else
  echo "host KVM cannot boot standard guests: measuring inside the nested lab (L1 under TCG)"
  ARCA_KERNEL=$kernel tests/lab/lab run --timeout $((300 + rounds * 60)) \
    --file "$tmp/run.sh:/bench/run.sh" --file "$tmp/busybox.tar:/bench/busybox.tar" \
    --file "$(command -v mke2fs):/usr/sbin/mkfs.ext4" -- "B=/bench sh /bench/run.sh $rounds"
fi
