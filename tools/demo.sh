#!/usr/bin/env bash
# `make demo`: load a busybox image (built here from Debian's busybox-static) and run
# `arca run --isolation=vm busybox echo hello from a microVM`, on this host when its KVM
# boots standard guests, else inside the nested lab.
set -euo pipefail
cd "$(dirname "$0")/.."
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tests/guest/mkrootfs "$tmp/rootfs"
tests/guest/mkimage "$tmp/rootfs" "$tmp/busybox.tar" busybox:latest

demo='arca load -i "$IMG" && echo "== arca run --isolation=vm busybox echo hello from a microVM" && arca run --isolation=vm busybox echo hello from a microVM'
echo "== Host KVM check (arca-vmm --check-kvm)"
if target/release/arca-vmm --check-kvm; then
  ARCA_STATE_DIR=$tmp/state ARCA_KERNEL=$kernel IMG=$tmp/busybox.tar PATH="$PWD/target/release:$PATH" sh -c "$demo"
else
  echo "== Inside the nested KVM lab (L1 Linux under QEMU/TCG with emulated AMD SVM)"
  start=$(date +%s%N)
  tests/lab/lab run --file "$tmp/busybox.tar:/demo/busybox.tar" --file "$(command -v mke2fs):/usr/sbin/mkfs.ext4" -- \
    "echo \"L1: \$(uname -r), /dev/kvm present\"; IMG=/demo/busybox.tar sh -c '$demo'"
  echo "== Lab run took $(( ($(date +%s%N) - start) / 1000000 )) ms (boot L1, load the image, boot the microVM, run, power off)"
fi
