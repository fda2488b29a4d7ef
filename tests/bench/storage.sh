#!/usr/bin/env bash
# Storage benchmark: sequential write (then fsync) and read, and 4 KiB random read and
# write IOPS (`io-bench`, tests/guest/io_bench.rs, built static into the busybox image)
# on a virtio-fs volume of a microVM (`-v DIR:/v`), on a microVM's writable layer (`/`:
# overlayfs over a virtio-blk ext4 disk), and with --isolation=process on a bind mount
# and on its writable layer, each beside the same program on the host directory itself;
# and a metadata-heavy job: busybox `tar -x` of a plain tar of ~20k entries of the
# Linux source (Documentation, tools, security and crypto of /usr/src/linux-source-6.12,
# ~115 MB, stored in the image at /src.tar) and a `find` over the tree, in the same
# places. All in one run, so the ratios to the host compare.
#
#   tests/bench/storage.sh [MIB] [SECS]   (default 256 MiB files, 5 s per random phase;
#                                          `make bench` runs it)
#
# On a host whose KVM boots standard guests it runs there; otherwise inside the lab (L1
# under TCG, its disk a RAM-backed initramfs: absolute figures are the emulator's; read
# the ratios).
set -euo pipefail
cd "$(dirname "$0")/../.."
mib=${1:-256} secs=${2:-5}
[[ "$mib" =~ ^[1-9][0-9]*$ ]] || { echo "storage.sh: MIB must be a positive number" >&2; exit 2; }
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "storage.sh: SECS must be a positive number" >&2; exit 2; }
virtiofsd=$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")
[ -x "$virtiofsd" ] || { echo "storage.sh: virtiofsd is needed (make test-deps installs it)" >&2; exit 1; }

# The metadata job's tree, made once from Debian's linux-source package.
src=/usr/src/linux-source-6.12.tar.xz
cache=${ARCA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/arca}/bench-storage
subset=$cache/linux-subset.tar
if [ ! -f "$subset" ]; then
  [ -f "$src" ] || { echo "storage.sh: $src is needed (apt-get install linux-source-6.12)" >&2; exit 1; }
  echo "storage.sh: making $subset from $src (once)" >&2
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/work.XXXXXX")
  tar -xJf "$src" -C "$work" linux-source-6.12/{Documentation,tools,security,crypto}
  tar -cf "$work/subset.tar" --owner=0 --group=0 -C "$work" linux-source-6.12
  mv "$work/subset.tar" "$subset"
  rm -rf "$work"
fi

cargo build --release -q -p vmm -p guest-agent -p arca-runtime
kernel=$(kernels/build.sh)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rustc --edition 2024 -O -C target-feature=+crt-static -o "$tmp/io-bench" tests/guest/io_bench.rs
tests/guest/mkrootfs "$tmp/rootfs" >/dev/null
cp "$tmp/io-bench" "$tmp/rootfs/bin/io-bench"
cp "$subset" "$tmp/rootfs/src.tar"
tests/guest/mkimage "$tmp/rootfs" "$tmp/busybox.tar" busybox:latest >/dev/null
rm -rf "$tmp/rootfs"

cat >"$tmp/run.sh" <<SCRIPT
set -e
mib=$mib secs=$secs
export ARCA_STATE_DIR=/tmp/arca-storagebench
t0=\$(cut -d. -f1 /proc/uptime)
arca load -i "\$B/busybox.tar" >/dev/null
# A first, unmeasured run of each isolation builds the image's disk and rootfs.
arca run --rm --isolation=vm busybox true
arca run --rm --isolation=process busybox true
W=/tmp/storagebench
rm -rf \$W && mkdir -p \$W
# CASE NAME, then the command (which prints RESULT lines): figures go to \$W/NAME.
results() { grep '^RESULT' | while read -r _ k v _; do echo "\$k \$v"; done; }
case_() {
  n=\$1; shift
  echo "storage.sh: [\$(cut -d. -f1 /proc/uptime) s] \$n: \$*" >&2
  "\$@" >\$W/log 2>&1 || { echo "storage.sh: \$n: \$* failed:" >&2; cat \$W/log >&2; exit 1; }
  cat \$W/log >>\$W/\$n.log
  results <\$W/log >>\$W/\$n
}
run() { arca run --rm "\$@"; }

echo "files: \$mib MiB sequential, \$secs s per random phase"
for c in host vmvol vmroot procvol procroot; do mkdir -p \$W/\$c.d; : >\$W/\$c; done
# An unmeasured pass first: the first touch of L1's memory is slow under TCG, and would
# count against the host alone.
io-bench files \$W/host.d \$mib 1 >/dev/null && rm -f \$W/host.d/io-bench.dat
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
case_ host io-bench files \$W/host.d \$mib \$secs
case_ vmvol run --isolation=vm -v \$W/vmvol.d:/v busybox io-bench files /v \$mib \$secs
case_ vmroot run --isolation=vm busybox io-bench files /root \$mib \$secs
case_ procvol run --isolation=process -v \$W/procvol.d:/v busybox io-bench files /v \$mib \$secs
case_ procroot run --isolation=process busybox io-bench files /root \$mib \$secs
rm -rf \$W/*.d/io-bench.dat

echo "metadata: tar -x of /src.tar (\$(tar -tf \$B/src.tar | wc -l) entries), then find"
job='io-bench time tar -xf "\$2" -C "\$1" && io-bench time find "\$1" -name "*.nomatch"'
case_ host sh -c "\$job" sh \$W/host.d \$B/src.tar
case_ host io-bench time find \$W/host.d -name '*.nomatch'
case_ vmvol run --isolation=vm -v \$W/vmvol.d:/v busybox sh -c "\$job" sh /v /src.tar
case_ vmvol run --isolation=vm -v \$W/vmvol.d:/v busybox io-bench time find /v -name '*.nomatch'
case_ vmroot run --isolation=vm busybox sh -c "mkdir /t && \$job" sh /t /src.tar
case_ procvol run --isolation=process -v \$W/procvol.d:/v busybox sh -c "\$job" sh /v /src.tar
case_ procvol run --isolation=process -v \$W/procvol.d:/v busybox io-bench time find /v -name '*.nomatch'
case_ procroot run --isolation=process busybox sh -c "mkdir /t && \$job" sh /t /src.tar
for c in vmvol procvol; do
  [ "\$(find \$W/\$c.d | wc -l)" = "\$(find \$W/host.d | wc -l)" ] || { echo "storage.sh: \$c: the tree differs from the host's" >&2; exit 1; }
done

# One column per place; rows in the order the RESULT lines came.
val() { sed -n "\${2}p" \$W/\$1 | cut -d' ' -f2; }
ratio() { awk -v a="\$1" -v b="\$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else if (a / b < 0.1) printf "%.3fx", a / b; else printf "%.2fx", a / b }'; }
echo
printf '%-30s %12s %22s %22s %22s %22s\n' "" "host dir" "vm: virtio-fs volume" "vm: writable layer" "process: bind volume" "process: writable"
i=1
for row in "seq write MB/s" "seq read MB/s" "4K rand read IOPS" "4K rand write IOPS" "tar -x ms" "find ms (same container)" "find ms (new container)"; do
  h=\$(val host \$i)
  line=\$(printf '%-30s %12s' "\$row" "\$h")
  for c in vmvol vmroot procvol procroot; do
    v=\$(val \$c \$i)
    if [ -z "\$v" ]; then cell=-; else cell="\$v (\$(ratio "\$v" "\$h"))"; fi
    line=\$(printf '%s %22s' "\$line" "\$cell")
  done
  echo "\$line"
  i=\$((i + 1))
done
echo "(ratio: the figure over the host's; for times, above 1x is slower, for rates below 1x)"
echo "random I/O modes: \$(for c in host vmvol vmroot procvol procroot; do printf '%s %s; ' \$c "\$(grep -m1 rand-read \$W/\$c.log | awk '{print \$5}')"; done)"
echo "run took \$((\$(cut -d. -f1 /proc/uptime) - t0)) s"
rm -rf \$W "\$ARCA_STATE_DIR"
SCRIPT

if target/release/arca-vmm --check-kvm >/dev/null 2>&1; then
  cp "$subset" "$tmp/src.tar"
  B=$tmp ARCA_KERNEL=$kernel PATH="$PWD/target/release:$tmp:$(dirname "$virtiofsd"):$PATH" sh "$tmp/run.sh"
else
  echo "host KVM cannot boot standard guests: measuring inside the nested lab (L1 under TCG, files in RAM)"
  files=(--file "$tmp/busybox.tar:/bench/busybox.tar" --file "$tmp/run.sh:/bench/run.sh"
    --file "$subset:/bench/src.tar" --file "$tmp/io-bench:/opt/arca/bin/io-bench"
    --file "$virtiofsd:/usr/bin/virtiofsd" --file "$(command -v mke2fs):/usr/sbin/mkfs.ext4")
  ARCA_KERNEL=$kernel tests/lab/lab run --timeout 2400 "${files[@]}" -- 'B=/bench sh /bench/run.sh'
fi
