#!/usr/bin/env bash
# Network benchmark: TCP throughput from a container to the host over its network link
# (virtio-net + TAP + bridge for --isolation=vm, veth + bridge for process), TCP
# throughput from a container to a host client through the -p forwarder, and HTTP
# request latency through -p; each beside the same tools on loopback without Arca, in
# the same run. The container side is busybox (dd | nc, httpd), the host side the
# same busybox for the baselines and `net-bench` to measure.
#
#   tests/bench/net.sh [MIB]        (default 32 MiB per transfer; `make bench` runs it)
#
# On a host whose KVM boots standard guests it runs there; otherwise inside the lab
# (L1 under TCG: absolute figures are the emulator's; the ratios are what to read),
# with LAB_CPUS L1 CPUs (default 1: the guest's vCPU, the VMM and the host side then
# take turns on one CPU; 2 lets them run side by side, as on a real host).
set -euo pipefail
cd "$(dirname "$0")/../.."
mib=${1:-32}
[[ "$mib" =~ ^[1-9][0-9]*$ ]] || { echo "net.sh: MIB must be a positive number" >&2; exit 2; }

cargo build --release -q -p vmm -p guest-agent -p arca-runtime -p arca-e2e --bins
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tests/guest/mkrootfs "$tmp/rootfs" >/dev/null
tests/guest/mkimage "$tmp/rootfs" "$tmp/busybox.tar" busybox:latest >/dev/null

cat >"$tmp/run.sh" <<SCRIPT
set -e
blocks=\$(( $mib * 16 ))
bb=\$(command -v busybox)
mkdir -p /tmp/www && echo hello > /tmp/www/index.html
export ARCA_STATE_DIR=/tmp/arca-netbench
arca load -i "\$B/busybox.tar" >/dev/null
row() { printf '%-34s %-44s %s\n' "\$1" "\$2" "\$3"; }
pick() { grep RESULT "\$1" | sed 's/^RESULT [a-z]* //'; }
port=7000
for iso in \$MODES; do
  gw=10.89.0.1
  port=\$((port + 10))
  # Container -> host over the container's link.
  net-bench sink 0.0.0.0:\$((port+1)) >/tmp/sink.out & s=\$!
  sleep 0.2
  arca run --rm --isolation=\$iso busybox sh -c "dd if=/dev/zero bs=65536 count=\$blocks 2>/dev/null | nc \$gw \$((port+1))"
  wait \$s
  link=\$(pick /tmp/sink.out)
  # Container -> host client through -p.
  arca run -d --name src --isolation=\$iso -p \$((port+2)):5001 busybox \
    sh -c "while true; do dd if=/dev/zero bs=65536 count=\$blocks 2>/dev/null | nc -l -p 5001; done" >/dev/null
  fwd=\$(net-bench drain 127.0.0.1:\$((port+2)) | sed 's/^RESULT [a-z]* //')
  # Request latency through -p.
  arca run -d --name web --isolation=\$iso -p \$((port+3)):80 busybox \
    sh -c 'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www' >/dev/null
  lat=\$(net-bench http 127.0.0.1:\$((port+3)) 200 | sed 's/^RESULT http //')
  arca rm -f src web >/dev/null
  echo "== --isolation=\$iso"
  row "" "Arca" "loopback, no Arca (same tools)"
  # Baselines: the same busybox tools on loopback.
  net-bench sink 127.0.0.1:\$((port+4)) >/tmp/sink.out & s=\$!
  sleep 0.2
  \$bb sh -c "dd if=/dev/zero bs=65536 count=\$blocks 2>/dev/null | \$bb nc 127.0.0.1 \$((port+4))"
  wait \$s
  row "TCP container->host (link)" "\$link" "\$(pick /tmp/sink.out)"
  ( while true; do \$bb sh -c "dd if=/dev/zero bs=65536 count=\$blocks 2>/dev/null | \$bb nc -l -p \$((port+5))" || break; done ) & l=\$!
  row "TCP container->host (-p)" "\$fwd" "\$(net-bench drain 127.0.0.1:\$((port+5)) | sed 's/^RESULT [a-z]* //')"
  kill \$l 2>/dev/null || true; pkill -f "nc -l -p \$((port+5))" 2>/dev/null || true
  \$bb httpd -f -p 127.0.0.1:\$((port+6)) -h /tmp/www & h=\$!
  sleep 0.2
  row "HTTP GET latency (-p)" "\$lat" "\$(net-bench http 127.0.0.1:\$((port+6)) 200 | sed 's/^RESULT http //')"
  kill \$h 2>/dev/null || true
  echo
done
SCRIPT

if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  B=$tmp MODES="vm process" ARCA_KERNEL=$kernel PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh"
else
  if [ "$(id -u)" = 0 ]; then
    echo "== on this host (process isolation only: its KVM cannot boot standard guests)"
    B=$tmp MODES=process PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh"
    rm -rf /tmp/arca-netbench
  fi
  cpus=${LAB_CPUS:-1}
  echo "== in the nested lab, $cpus L1 CPU(s) (L1 under TCG: read the ratios, not the absolute figures)"
  files=(--file "$tmp/busybox.tar:/bench/busybox.tar" --file "$tmp/run.sh:/bench/run.sh"
    --file "target/release/net-bench:/opt/arca/bin/net-bench"
    --file "$(command -v mke2fs):/usr/sbin/mkfs.ext4")
  ARCA_KERNEL=$kernel tests/lab/lab run --cpus "$cpus" --timeout 900 "${files[@]}" -- \
    'B=/bench MODES="vm process" sh /bench/run.sh'
fi
