#!/usr/bin/env bash
# Boot benchmark: arca-vmm against QEMU microvm, same guest kernel, same initramfs, same
# guest command line, measured round-robin in one run. Prints the median time from VMM
# spawn to the guest init's first line, from spawn to exit, and the VMM's RSS when init
# reported in (total, and without the guest RAM mapping), with the ratios.
#
#   tests/bench/boot.sh [ROUNDS]        (default 10; `make bench` runs it)
#
# On a host whose KVM boots standard guests it runs there; otherwise inside the lab.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-10}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "boot.sh: ROUNDS must be a positive number" >&2; exit 2; }

cargo build --release -q -p vmm -p arca-e2e --bins
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tests/guest/mkinitramfs "$tmp/bench.cpio" tests/guest/init-bench
mem=128
# QEMU gets exactly the command line arca-vmm gives the guest (its base parameters + quiet).
append="$(sed -n 's/^pub const BASE_CMDLINE: &str = "\(.*\)";/\1/p' vmm/src/builder.rs) quiet"
[ "$append" != " quiet" ] || { echo "boot.sh: cannot read BASE_CMDLINE from vmm/src/builder.rs" >&2; exit 1; }

# The measuring script; $K, $I, $P, $Q are the kernel, initramfs, probe and QEMU.
cat >"$tmp/run.sh" <<SCRIPT
set -e
work=\$(mktemp -d)
cd "\$work"
trap 'rm -rf "\$work"' EXIT
for i in \$(seq $rounds); do
  "\$P" --marker ARCA-GUEST-READY --guest-mib $mem --timeout 60 -- arca-vmm --kernel "\$K" --initrd "\$I" \
    --memory $mem --cmdline quiet >>arca.txt
  "\$P" --marker ARCA-GUEST-READY --guest-mib $mem --timeout 60 -- "\$Q" -L "\$QDIR" -enable-kvm -cpu host \
    -M microvm,x-option-roms=off,rtc=off -device i8042 -m $mem -smp 1 -nodefaults -no-reboot \
    -display none -serial stdio -kernel "\$K" -initrd "\$I" -append "$append" >>qemu.txt
done
median() { sed -n "s/.* \$2=\([0-9.]*\).*/\1/p; s/^\$2=\([0-9.]*\).*/\1/p" "\$1" | sort -n | awk '{a[NR]=\$1} END {if (NR==0) print "NA"; else if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="\$1" -v b="\$2" 'BEGIN { if (b+0 > 0 && a != "NA") printf "%.2fx", a/b; else print "NA" }'; }
echo "rounds: $rounds each, round-robin; guest: 1 vCPU, $mem MiB, same kernel and initramfs"
grep -v 'exit=0' arca.txt qemu.txt | sed 's/^/warning: non-zero exit: /' || true
printf '%-34s %12s %12s %8s\n' metric arca-vmm qemu-microvm ratio
for m in marker_ms exit_ms rss_kib rss_excl_guest_kib; do
  a=\$(median arca.txt \$m); q=\$(median qemu.txt \$m)
  printf '%-34s %12s %12s %8s\n' "median \$m" "\$a" "\$q" "\$(ratio "\$a" "\$q")"
done
SCRIPT

roms=(bios-microvm.bin qboot.rom pvh.bin linuxboot_dma.bin kvmvapic.bin)
if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  K=$kernel I=$tmp/bench.cpio P=$PWD/target/release/spawn-probe Q=$(command -v qemu-system-x86_64) \
    QDIR=/usr/share/qemu PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh"
else
  echo "host KVM cannot boot standard guests: measuring inside the nested lab (L1 under TCG)"
  files=(--file "$tmp/bench.cpio:/bench/initramfs.cpio" --file "$tmp/run.sh:/bench/run.sh"
    --file "target/release/spawn-probe:/bench/spawn-probe"
    --file "$(command -v qemu-system-x86_64):/usr/bin/qemu-system-x86_64")
  for r in "${roms[@]}"; do files+=(--file "/usr/share/qemu/$r:/usr/share/qemu/$r"); done
  ARCA_KERNEL=$kernel tests/lab/lab run --timeout $((120 + rounds * 30)) "${files[@]}" -- \
    'K=$ARCA_KERNEL I=/bench/initramfs.cpio P=/bench/spawn-probe Q=/usr/bin/qemu-system-x86_64 QDIR=/usr/share/qemu sh /bench/run.sh'
fi
