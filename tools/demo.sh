#!/usr/bin/env bash
# `make demo`: what Arca can do today, on this host or, when this host's KVM cannot boot
# a standard guest, inside the nested lab.
set -euo pipefail
cd "$(dirname "$0")/.."
vmm=target/release/arca-vmm

echo "== Host KVM check (arca-vmm --check-kvm)"
if "$vmm" --check-kvm; then
  where=host
else
  where=lab
  echo "== Using the nested KVM lab (tests/lab/lab): L1 Linux under QEMU/TCG with emulated AMD SVM"
fi

script='arca-vmm --check-kvm && echo "guest kernel for microVMs: $ARCA_KERNEL ($(wc -c <"$ARCA_KERNEL") bytes)"'
if [ "$where" = host ]; then
  ARCA_KERNEL=$(kernels/build.sh) PATH="$PWD/target/release:$PATH" sh -c "$script"
else
  start=$(date +%s%N)
  tests/lab/lab run -- "echo \"L1: \$(uname -r), \$(nproc) CPU, /dev/kvm present\"; $script"
  echo "== Lab run took $(( ($(date +%s%N) - start) / 1000000 )) ms (boot L1, run, power off)"
fi
