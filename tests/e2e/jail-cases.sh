#!/bin/sh
# The jail of arca-vmm (issue 14), seen from the host while a microVM runs:
#   jail-cases.sh IMAGE_TAR
# Needs root, KVM, `arca` on PATH (and what it needs), cgroup v2 and a `wget`.
# Prints "ok NAME" or "FAIL NAME: ..." per case; exits 1 if any failed. POSIX sh.
#
# What a guest that took over its VMM would hold is what the VMM process holds: these
# cases check it holds no privilege (uid, capabilities, no_new_privs, seccomp), sees no
# host file (an empty root), shares no namespace with the host (pid, mount, network,
# ipc), and is held to its cgroup's limits, while the VM still boots and serves its
# disks, vsock, network and published ports, and ends cleanly.
img=$1
fails=0
check() { # NAME EXPECTED_RC EXPECTED_STDOUT ACTUAL_RC ACTUAL_STDOUT
  if [ "$4" = "$2" ] && [ "$5" = "$3" ]; then echo "ok $1"; else echo "FAIL $1: rc $4 (want $2), stdout [$5] (want [$3])"; fails=$((fails+1)); fi
}
fetch() { # URL: the page, retrying while the server comes up
  i=0
  while [ $i -lt 50 ]; do
    page=$(timeout 5 wget -q -O - "$1" 2>/dev/null) && { echo "$page"; return 0; }
    i=$((i+1)); sleep 0.2
  done
  return 1
}
field() { arca inspect "$1" | grep "\"$2\"" | head -n 1 | sed 's/.*: *"\{0,1\}\([^",]*\)"\{0,1\},\{0,1\}$/\1/'; }
status() { grep "^$2:" "/proc/$1/status" | cut -f 2- | tr -s '\t ' ' '; }
# The jailed VMM: the arca-vmm process whose uid is the jail's.
jailed_vmm() { # UID
  for s in /proc/[0-9]*/status; do
    grep -q '^Name:.arca-vmm' "$s" 2>/dev/null && grep -q "^Uid:.$1" "$s" && { p=${s#/proc/}; echo "${p%/status}"; return 0; }
  done
  return 1
}

arca load -i "$img" >/dev/null || { echo "FAIL load"; exit 1; }
arca run -d --name jailed --cpus 0.5 -p 18081:80 busybox sh -c \
  'mkdir -p /www && echo served > /www/index.html && httpd -p 80 -h /www && while :; do :; done' >/dev/null
out=$(fetch http://127.0.0.1:18081/); check boots-and-serves-published-port 0 served $? "$out"
vmm=$(jailed_vmm 64064); check vmm-found 0 1 $? "$( [ -n "$vmm" ] && echo 1)"
sup=$(status "$vmm" PPid)
# A hostile VMM would try to use root's privileges: it has none.
out=$(status "$vmm" Uid); check vmm-uid 0 "64064 64064 64064 64064" $? "$out"
out=$(status "$vmm" Gid); check vmm-gid 0 "64064 64064 64064 64064" $? "$out"
out=$(status "$vmm" Groups | tr -d ' '); check vmm-no-groups 0 "" $? "$out"
out=$(for c in CapInh CapPrm CapEff CapBnd CapAmb; do status "$vmm" $c; done | sort -u); check vmm-no-capabilities 0 0000000000000000 $? "$out"
out=$(status "$vmm" NoNewPrivs); check vmm-no-new-privs 0 1 $? "$out"
# Its threads (main, vCPU) each run under their own filter.
out=$(for t in /proc/$vmm/task/*; do grep '^Seccomp:' $t/status | cut -f 2; done | sort -u); check vmm-seccomp-every-thread 0 2 $? "$out"
# It would read host files (keys, other containers' disks): its root is empty.
out=$(ls -A /proc/$vmm/root/ | wc -l); check vmm-root-empty 0 0 $? "$out"
out=$(ls -A "$(dirname "$(ls -d ${ARCA_STATE_DIR:-/var/lib/arca}/containers/*/jail)")/jail" | wc -l); check host-jail-dir-empty 0 0 $? "$out"
# It would reach host services or other processes: separate namespaces.
for ns in pid mnt net ipc uts; do
  out=$([ "$(readlink /proc/$vmm/ns/$ns)" != "$(readlink /proc/self/ns/$ns)" ] && echo own); check "vmm-own-$ns-namespace" 0 own $? "$out"
done
out=$(status "$vmm" NSpid | awk '{print $NF}'); check vmm-is-pid-1-of-its-namespace 0 1 $? "$out"
out=$(status "$sup" Uid | cut -d ' ' -f 1); check supervisor-outside-is-root 0 0 $? "$out"
# It would take the host's memory or CPU: its cgroup holds it.
cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/$vmm/cgroup)
out=$(echo "$cg" | grep -c '/arca-vm/'); check vmm-own-cgroup 0 1 $? "$out"
# Guest RAM (256 MiB) + 64 MiB, + the writable layer's 10 GiB when the state directory
# is on tmpfs (the lab's), where what the guest writes to it is memory.
want=$(((256 + 64) << 20))
[ "$(stat -f -c %T "${ARCA_STATE_DIR:-/var/lib/arca}")" = tmpfs ] && want=$((want + (10 << 30)))
out=$(cat "$cg/memory.max"); check vmm-memory-max 0 $want $? "$out"
out=$(cat "$cg/cpu.max"); check vmm-cpu-max 0 "50000 100000" $? "$out"
out=$(cat "$cg/pids.max"); check vmm-pids-max 0 17 $? "$out"
# --cpus 0.5: the busy loop gets about half a CPU (cgroup usage over wall time).
centis() { cut -d ' ' -f 1 /proc/uptime | tr -d .; }
u0=$(sed -n 's/^usage_usec //p' "$cg/cpu.stat"); t0=$(centis)
sleep 3
u1=$(sed -n 's/^usage_usec //p' "$cg/cpu.stat"); t1=$(centis)
pct=$(( (u1 - u0) / (t1 - t0) / 100 ))
out=$([ $pct -ge 30 ] && [ $pct -le 60 ] && echo half); check cpus-half-a-cpu 0 half $? "$out"
[ "$out" = half ] || echo "  (usage was $pct% of one CPU)"
# Still a working VM: vsock (exec), its disks (the writable layer), the network.
out=$(arca exec jailed sh -c 'echo written > /w && cat /w'); check exec-over-vsock-and-disk 0 written $? "$out"
ip=$(field jailed ip)
out=$(fetch "http://$ip/"); check container-network 0 served $? "$out"
gone() { # PID: waits up to 10 s for it to be reaped
  i=0; while [ -d "/proc/$1" ] && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
  [ -d "/proc/$1" ] && echo alive || echo gone
}
arca stop -t 1 jailed >/dev/null
out=$(gone "$sup"); check stops-cleanly 0 gone $? "$out"
out=$([ -e "$cg" ] && echo left || echo removed); check cgroup-removed 0 removed $? "$out"
arca rm jailed >/dev/null
# Killing the supervisor takes the jailed VMM with it.
arca run -d --name killed busybox sleep 1000 >/dev/null
vmm=$(jailed_vmm 64064); sup=$(status "$vmm" PPid)
kill -9 "$sup"
out=$(gone "$vmm"); check vmm-dies-with-supervisor 0 gone $? "$out"
arca rm -f killed >/dev/null 2>&1
out=$(find /sys/fs/cgroup/arca-vm -mindepth 1 -type d 2>/dev/null | wc -l); check no-cgroup-left 0 0 $? "$out"
[ $fails -eq 0 ]
