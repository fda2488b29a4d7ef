#!/usr/bin/env bash
# Container start benchmark (agent-bench): for --isolation=vm, arca-vmm + arca-agent
# against QEMU microvm booting the same kernel and agent initramfs, then a snapshot of
# it restored (to the agent's hello, and PSS per idle VM for 1, 5, 10); for
# --isolation=process, arca-agent serve against crun on the same busybox rootfs; and
# `arca run --rm busybox true` end to end in both modes beside crun and runc (vm warm,
# from the template snapshot, and cold, beside a bare cold boot of the kernel). All
# round-robin in one run; medians and ratios are printed.
#
#   tests/bench/agent.sh [ROUNDS]        (default 10; `make bench` runs it)
#
# On a host whose KVM boots standard guests it runs there; otherwise inside the lab
# (whose L1 also has the cgroup v2 that crun and the agent use).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-10}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "agent.sh: ROUNDS must be a positive number" >&2; exit 2; }
command -v crun >/dev/null && command -v runc >/dev/null ||
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq crun runc >/dev/null; }

cargo build --release -q -p vmm -p guest-agent -p arca-e2e --bins
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
guest-agent/mkinitramfs "$tmp/agent.cpio" target/release/arca-agent
tests/guest/mkrootfs "$tmp/rootfs" "$tmp/rootfs.ext4"
tests/guest/mkimage "$tmp/rootfs" "$tmp/busybox.tar" busybox:latest
tests/guest/mkinitramfs "$tmp/bare.cpio" tests/guest/init-hello

cat >"$tmp/run.sh" <<SCRIPT
set -e
echo "== --isolation=vm: arca-vmm + arca-agent vs QEMU microvm"
agent-bench vm --rounds $rounds --kernel "\$K" --initrd "\$B/agent.cpio" --disk "\$B/rootfs.ext4" --qemu "\$Q" --qemu-dir "\$QDIR"
echo
echo "== --isolation=process: arca-agent serve vs crun"
agent-bench process --rounds $rounds --rootfs "\$B/rootfs" --crun "\$C"
echo
echo "== arca run --rm busybox true, end to end"
agent-bench cli --rounds $rounds --image-tar "\$B/busybox.tar" --rootfs "\$B/rootfs" --crun "\$C" --runc "\$R" --kernel "\$K" --bare-initrd "\$B/bare.cpio"
SCRIPT

roms=(bios-microvm.bin qboot.rom pvh.bin linuxboot_dma.bin kvmvapic.bin)
if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  K=$kernel B=$tmp Q=$(command -v qemu-system-x86_64) QDIR=/usr/share/qemu C=$(command -v crun) R=$(command -v runc) \
    PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh"
else
  echo "host KVM cannot boot standard guests: measuring inside the nested lab (L1 under TCG)"
  files=(--file "$tmp/agent.cpio:/bench/agent.cpio" --file "$tmp/rootfs.ext4:/bench/rootfs.ext4"
    --file "$tmp/bare.cpio:/bench/bare.cpio"
    --file "$tmp/rootfs:/bench/rootfs" --file "$tmp/run.sh:/bench/run.sh"
    --file "target/release/agent-bench:/opt/arca/bin/agent-bench"
    --file "$tmp/busybox.tar:/bench/busybox.tar" --file "$(command -v mke2fs):/usr/sbin/mkfs.ext4"
    --file "$(command -v crun):/usr/bin/crun" --file "$(command -v runc):/usr/bin/runc"
    --file "$(command -v qemu-system-x86_64):/usr/bin/qemu-system-x86_64")
  for r in "${roms[@]}"; do files+=(--file "/usr/share/qemu/$r:/usr/share/qemu/$r"); done
  ARCA_KERNEL=$kernel tests/lab/lab run --timeout $((300 + rounds * 60)) "${files[@]}" -- \
    'K=$ARCA_KERNEL B=/bench Q=/usr/bin/qemu-system-x86_64 QDIR=/usr/share/qemu C=/usr/bin/crun R=/usr/bin/runc sh /bench/run.sh'
fi
