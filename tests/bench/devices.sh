#!/usr/bin/env bash
# Device benchmark: virtio-blk sequential read/write MB/s and 4 KiB random-read IOPS
# measured by fio inside the guest, beside the same fio runs on the backing file from
# the VMM's host; vsock echo throughput beside a Unix socket echo on that host. All in
# one run, in the lab on hosts like this one, directly on hosts with real KVM.
#
#   tests/bench/devices.sh      (`make bench` runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in fio socat; do
  command -v $tool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool; }
done
cargo build --release -q -p vmm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tests/guest/mkinitramfs "$tmp/bench.cpio" tests/bench/guest-devices \
  "$(command -v fio):/bin/fio" "$(command -v socat):/bin/socat"

cat >"$tmp/run.sh" <<'SCRIPT'
set -e
work=$(mktemp -d)
cd "$work"
pids=""
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; rm -rf "$work"' EXIT
truncate -s 512M disk.img
# The backing file as the VMM sees it: buffered (the lab's disk is tmpfs, which has no
# O_DIRECT; the VMM itself does buffered pread/pwrite on it).
f() { fio --name=b --filename=disk.img --direct=0 --ioengine=psync --runtime=4 --time_based \
      --output-format=terse --terse-version=3 "$@" 2>/dev/null; }
echo "BENCH host seq-write-MBps $(f --rw=write --bs=1M | awk -F';' '{printf "%.1f", $48/1024}')"
echo "BENCH host seq-read-MBps $(f --rw=read --bs=1M | awk -F';' '{printf "%.1f", $7/1024}')"
echo "BENCH host randread-4k-iops $(f --rw=randread --bs=4k | awk -F';' '{printf "%d", $8}')"
now() { cut -d' ' -f1 /proc/uptime; }
mbps() { awk -v s="$1" -v e="$2" 'BEGIN { if (e > s) printf "%.1f", 64 / (e - s); else print "NA" }'; }
# 64 MiB echoed through an echo server: through a Unix socket on this host (the
# reference), then through the guest over vsock.
# The payload is zero bytes, so the only newline in a vsock reply ends its "OK <port>"
# line: dropping the first line leaves the echoed payload.
echo_through() { { printf "$1"; head -c 67108864 /dev/zero; } | socat -t 60 - "$2" | { if [ -n "$1" ]; then tail -n +2; else cat; fi; } | wc -c; }
socat UNIX-LISTEN:echo.sock,fork EXEC:cat & echo_srv=$!
pids="$pids $echo_srv"
sleep 0.3
s=$(now); n=$(echo_through "" UNIX-CONNECT:echo.sock); e=$(now)
[ "$n" = 67108864 ] || echo "BENCH warning: only $n bytes came back through the Unix socket"
echo "BENCH host echo-MBps $(mbps $s $e)"
kill $echo_srv
S=$PWD/v.sock
arca-vmm --kernel "$K" --initrd "$I" --memory 1024 --cmdline quiet --disk disk.img --vsock cid=3,uds=$S > console.log 2>&1 &
vmm=$!
pids="$pids $vmm"
waited=0
until grep -q 'randread' console.log 2>/dev/null; do
  kill -0 $vmm 2>/dev/null || { echo "the VMM ended early:"; cat console.log; exit 1; }
  waited=$((waited + 1))
  [ $waited -lt 1500 ] || { echo "the guest's fio runs did not finish in 300 s:"; cat console.log; exit 1; }
  sleep 0.2
done
for i in $(seq 100); do
  printf 'CONNECT 5000\n' | socat -t 2 - UNIX-CONNECT:$S 2>/dev/null | grep -q '^OK' && break
  sleep 0.2
done
s=$(now); n=$(echo_through 'CONNECT 5000\n' UNIX-CONNECT:$S); e=$(now)
[ "$n" -ge 67108864 ] || echo "BENCH warning: only $n bytes came back through vsock"
echo "BENCH guest echo-MBps $(mbps $s $e)"
printf 'CONNECT 5001\n' | socat -t 5 - UNIX-CONNECT:$S >/dev/null
wait $vmm
grep BENCH console.log
SCRIPT

echo "device benchmark: fio (psync, 4 s each; direct I/O on /dev/vda in the guest, buffered on the backing file on the host) on a 512 MiB raw image; 64 MiB echoed over vsock"
if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  out=$(K=$(kernels/build.sh) I=$tmp/bench.cpio PATH="$PWD/target/release:$PATH" sh "$tmp/run.sh" 2>&1) || { echo "$out"; exit 1; }
else
  echo "(inside the nested lab: L1 under TCG, so absolute figures are far below a real host's)"
  out=$(ARCA_KERNEL=$(kernels/build.sh) tests/lab/lab run --timeout 900 \
    --file "$tmp/bench.cpio:/bench/initramfs.cpio" --file "$tmp/run.sh:/bench/run.sh" \
    --file "$(command -v fio):/usr/bin/fio" --file "$(command -v socat):/usr/bin/socat" -- \
    'K=$ARCA_KERNEL I=/bench/initramfs.cpio sh /bench/run.sh 2>&1') || { echo "$out"; exit 1; }
fi
get() { echo "$out" | tr -d '\r' | awk -v w="$1" -v m="$2" '$1=="BENCH" && $2==w && $3==m {print $NF}'; }
echo "$out" | grep 'BENCH warning' || true
printf '%-24s %14s %14s %8s\n' metric "in the guest" "on the host" ratio
for m in seq-write-MBps seq-read-MBps randread-4k-iops; do
  g=$(get guest $m); h=$(get host $m)
  printf '%-24s %14s %14s %8s\n' "$m" "$g" "$h" "$(awk -v a="$g" -v b="$h" 'BEGIN { if (b+0 > 0) printf "%.2fx", a/b; else print "NA" }')"
done
printf '%-24s %14s %14s %8s\n' "echo-MBps (each way)" "$(get guest echo-MBps)" "$(get host echo-MBps)" \
  "$(awk -v a="$(get guest echo-MBps)" -v b="$(get host echo-MBps)" 'BEGIN { if (b+0 > 0) printf "%.2fx", a/b; else print "NA" }')"
echo "(echo: 64 MiB streamed through an echo server, over vsock into the guest vs over a Unix socket on the host)"
