#!/bin/sh
# The hostile-guest table, for one isolation mode:
#   hostile-cases.sh vm|process IMAGE_TAR
# What a hostile container or a wedged sandbox tries against the host around it, and
# what bounds it. POSIX sh (it runs in the lab's busybox too). Prints "ok NAME" or
# "FAIL NAME: ..." per case; exits 1 if any failed.
iso=$1 img=$2
state=${ARCA_STATE_DIR:-/var/lib/arca}
fails=0
ok() { echo "ok $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }
run_d() { arca run -d --isolation="$iso" --network none "$@" >/dev/null; }
cdir() { echo "$state/containers/$(arca inspect -f '{{.Id}}' "$1" | cut -c1-12)"; } # NAME: its directory
sandbox_pid() { # NAME: the VMM (a jailed one is its supervisor's child) or host agent
  p=$(grep -o '"sandbox_pid": [0-9]*' "$(cdir "$1")/state.json" | grep -o '[0-9]*$')
  for s in /proc/[0-9]*/status; do
    grep -q "^PPid:.$p\$" "$s" 2>/dev/null && grep -q '^Name:.arca-vmm' "$s" && { c=${s#/proc/}; echo "${c%/status}"; return; }
  done
  echo "$p"
}
now() { cut -d. -f1 /proc/uptime; }

arca load -i "$img" >/dev/null || { echo "FAIL load"; exit 1; }

# A container that prints without end: its logs rotate within the cap, and the newest
# output is still there.
run_d --name flood --log-opt max-size=64k,max-file=2 busybox sh -c 'while :; do echo floodfloodfloodflood; done'
d=$(cdir flood)
i=0
while [ ! -e "$d/stdout.log.1" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
sleep 3
if [ -e "$d/stdout.log.1" ]; then ok flood-rotates; else bad "flood-rotates: no rotation after 30 s"; fi
# The writable layer (a sparse disk, a few MiB of ext4 metadata, or a directory) is not
# the logs: it is left out.
layer=$(du -sk "$d/rw.ext4" "$d/rw" 2>/dev/null | awk '{s += $1} END {print s + 0}')
kb=$(($(du -sk "$d" | cut -f1) - layer))
# Two files of 64 KiB for stdout (stderr is empty), and the records.
[ "$kb" -le 200 ] && ok "flood-capped ($kb KiB)" || bad "flood-capped: $kb KiB on disk"
[ ! -e "$d/stdout.log.2" ] && ok flood-max-file || bad "flood-max-file: a third file"
# The flood goes on: the last record read may be a piece of a line (a partial record,
# no newline yet); the last whole line is what must be intact.
o=$(mktemp)
arca logs flood >"$o"
if [ -n "$(tail -c 1 "$o")" ]; then last=$(tail -n 2 "$o" | head -n 1); else last=$(tail -n 1 "$o"); fi
rm -f "$o"
[ "$last" = floodfloodfloodflood ] && ok flood-logs-read || bad "flood-logs-read: [$last]"
arca rm -f flood >/dev/null || bad flood-rm

# A sandbox that stops answering (a wedged VMM or guest; here SIGSTOPped): stop, rm -f
# and wait each end within their deadlines, and say why.
run_d --name wedged1 busybox sleep 1000
kill -STOP "$(sandbox_pid wedged1)"
t0=$(now)
arca stop -t 1 wedged1 >/dev/null; rc=$?
t=$(($(now) - t0))
[ $rc = 0 ] && [ $t -le 40 ] && ok "wedged-stop (${t} s)" || bad "wedged-stop: rc $rc after $t s"
status=$(arca inspect -f '{{.State.Status}}' wedged1)
[ "$status" = exited ] && ok wedged-stop-exited || bad "wedged-stop-exited: $(arca ps -a)"
arca rm wedged1 >/dev/null || bad wedged-stop-rm

run_d --name wedged2 busybox sleep 1000
pid=$(sandbox_pid wedged2)
kill -STOP "$pid"
t0=$(now)
arca rm -f wedged2 >/dev/null; rc=$?
t=$(($(now) - t0))
[ $rc = 0 ] && [ $t -le 40 ] && ok "wedged-rm-f (${t} s)" || bad "wedged-rm-f: rc $rc after $t s"
[ ! -d "/proc/$pid" ] || grep -q '^State:.*Z' "/proc/$pid/status" && ok wedged-rm-f-sandbox-gone || bad "wedged-rm-f: sandbox $pid still there"
[ -z "$(arca ps -aq)" ] && ok wedged-rm-f-nothing-left || bad "wedged-rm-f: $(arca ps -aq)"

run_d --name wedged3 busybox sleep 1000
kill -STOP "$(sandbox_pid wedged3)"
t0=$(now)
code=$(arca wait wedged3)
t=$(($(now) - t0))
[ "$code" = 137 ] && [ $t -le 120 ] && ok "wedged-wait (${t} s)" || bad "wedged-wait: [$code] after $t s"
why=$(arca inspect -f '{{.State.Error}}' wedged3 | grep -c 'stopped answering')
[ "$why" = 1 ] && ok wedged-wait-reason || bad "wedged-wait-reason: $(arca ps -a)"
arca rm wedged3 >/dev/null || bad wedged-wait-rm

# A guest that opens connection after connection to a host listener (vm only: the VMM's
# vsock muxer): it gets at most the guest's share of the slots, the VMM does not spin,
# and the runtime's own connections (exec) still go through. A jailed VMM reaches no
# host listener (its root is empty: a flooding guest is refused at once), so this case,
# which checks the muxer's own caps, runs its VMM unjailed; and the container's seccomp
# filter refuses AF_VSOCK sockets, so the flooding container runs unconfined (the guest
# kernel itself is what this case plays).
if [ "$iso" = vm ]; then
  (export ARCA_VMM_JAIL=0; run_d --name vflood --security-opt seccomp=unconfined busybox sleep 1000 2>/dev/null)
  uds=$(sed -n 's/.*"uds": *"\([^"]*\)".*/\1/p' "$(cdir vflood)/state.json")
  flood=$(find "$state/images" -path '*/rootfs/bin/vsock-flood' | head -1)
  "$flood" listen "${uds}_5000" &
  lpid=$!
  vmm=$(sandbox_pid vflood)
  arca exec vflood vsock-flood connect 1500 5000 20 >"$state.vflood" 2>&1 &
  epid=$!
  i=0
  while ! grep -q connected= "$state.vflood" && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
  got=$(cat "$state.vflood")
  connected=${got#connected=}; connected=${connected%% *}
  refused=${got##*refused=}
  [ -n "$connected" ] && [ "$connected" -gt 100 ] && [ "$connected" -le 960 ] && [ "$refused" -gt 0 ] &&
    ok "vsock-flood-capped ($got)" || bad "vsock-flood-capped: [$got]"
  ticks() { awk '{print $14 + $15}' "/proc/$vmm/stat"; }
  c0=$(ticks); sleep 3; c1=$(ticks)
  # 3 s is 300 ticks: a VMM spinning on its listener would use most of them.
  [ $((c1 - c0)) -lt 100 ] && ok "vsock-flood-no-spin ($((c1 - c0)) ticks in 3 s)" || bad "vsock-flood-no-spin: $((c1 - c0)) ticks in 3 s"
  out=$(arca exec vflood echo alive)
  [ "$out" = alive ] && ok vsock-flood-exec-still-works || bad "vsock-flood-exec-still-works: [$out]"
  kill $lpid 2>/dev/null
  arca rm -f vflood >/dev/null || bad vflood-rm
  wait $epid 2>/dev/null
  rm -f "$state.vflood"
fi

echo "$fails failed"
[ "$fails" -eq 0 ]
