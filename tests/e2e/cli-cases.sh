#!/bin/sh
# The arca CLI scenario table, for one isolation mode:
#   cli-cases.sh vm|process IMAGE_TAR
# Needs `arca` on PATH (and what it needs: arca-agent, arca-vmm, a kernel, mkfs.ext4).
# Prints "ok NAME" or "FAIL NAME: ..." per case; exits 1 if any failed. POSIX sh, so
# it runs in the lab's busybox too.
iso=$1 img=$2
fails=0
check() { # NAME EXPECTED_RC EXPECTED_STDOUT ACTUAL_RC ACTUAL_STDOUT
  if [ "$4" = "$2" ] && [ "$5" = "$3" ]; then echo "ok $1"; else echo "FAIL $1: rc $4 (want $2), stdout [$5] (want [$3])"; fails=$((fails+1)); fi
}
run() { arca run --rm --isolation="$iso" "$@"; }

arca load -i "$img" >/dev/null || { echo "FAIL load"; exit 1; }
out=$(run busybox echo hello); check echo 0 hello $? "$out"
out=$(run busybox sh -c 'echo err >&2; exit 3' 2>/dev/null); check exit-code 3 "" $? "$out"
err=$(run busybox sh -c 'echo err >&2' 2>&1 >/dev/null); check stderr 0 err $? "$err"
out=$(run busybox no-such-command 2>/dev/null); check not-found 127 "" $? "$out"
out=$(run busybox /etc/motd 2>/dev/null); check not-executable 126 "" $? "$out"
out=$(run -e A=1 -e B=two -w /work -u app busybox sh -c 'echo $A $B $(pwd) $(id -u):$(id -g)'); check env-workdir-user 0 "1 two /work 1000:1000" $? "$out"
out=$(run busybox); check image-cmd 0 "" $? "$out"
out=$(run --entrypoint echo busybox from entrypoint); check entrypoint 0 "from entrypoint" $? "$out"
out=$(echo piped | run -i busybox cat); check stdin 0 piped $? "$out"
out=$(run busybox sh -c 'kill -9 $$; sleep 1; echo survived'); check pid1-ignores-own-sigkill 0 survived $? "$out"
out=$(run --memory 32m busybox sh -c 'x=$(head -c 200000000 /dev/zero | tr "\0" a); echo survived' 2>/dev/null); rc=$?
if [ "$iso" = process ] && [ ! -e /sys/fs/cgroup/memory.max ] && ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  echo "skip memory-limit: no cgroup v2 memory controller on this host"
else
  check memory-limit 137 "" $rc "$out"
fi
out=$(run no-such-image true 2>/dev/null); check unknown-image 125 "" $? "$out"
out=$(run BAD:REF true 2>/dev/null); check bad-reference 125 "" $? "$out"
out=$(run --bogus-flag busybox true 2>/dev/null); check unknown-flag 125 "" $? "$out"
out=$(run -d busybox true 2>/dev/null); check detach-unsupported 125 "" $? "$out"
left=$(ls "${ARCA_STATE_DIR:-/var/lib/arca}/containers" 2>/dev/null | wc -l); check nothing-left 0 0 0 "$left"
[ $fails -eq 0 ]
