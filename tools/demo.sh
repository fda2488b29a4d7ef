#!/usr/bin/env bash
# `make demo`: boot a microVM with arca-vmm and run a command in it, on this host when
# its KVM boots standard guests, else inside the nested lab. (Containers in the VM come
# with the guest agent and the arca CLI.)
set -euo pipefail
cd "$(dirname "$0")/.."
vmm=target/release/arca-vmm
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tests/guest/mkinitramfs "$tmp/demo.cpio" tools/demo-init

boot='arca-vmm --kernel "$K" --initrd "$I" --cpus 2 --memory 256 --cmdline quiet --boot-timing'
echo "== Host KVM check (arca-vmm --check-kvm)"
if "$vmm" --check-kvm; then
  echo "== Booting a microVM here: $boot"
  K=$kernel I=$tmp/demo.cpio PATH="$PWD/target/release:$PATH" sh -c "$boot"
else
  echo "== Booting a microVM inside the nested KVM lab (L1 Linux under QEMU/TCG with emulated AMD SVM)"
  start=$(date +%s%N)
  tests/lab/lab run --file "$tmp/demo.cpio:/demo/initramfs.cpio" -- \
    "echo \"L1: \$(uname -r), /dev/kvm present\"; arca-vmm --check-kvm && echo '== $boot' && K=\$ARCA_KERNEL I=/demo/initramfs.cpio sh -c '$boot'"
  echo "== Lab run took $(( ($(date +%s%N) - start) / 1000000 )) ms (boot L1, boot the microVM, power off)"
fi
