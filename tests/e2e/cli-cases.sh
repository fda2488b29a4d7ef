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

state=${ARCA_STATE_DIR:-/var/lib/arca}
arca load -i "$img" >/dev/null || { echo "FAIL load"; exit 1; }
# volbox:latest: the same rootfs with VOLUME /srv/data.
arca load -i "${img%/*}/volbox.tar" >/dev/null || { echo "FAIL load volbox"; exit 1; }
out=$(run busybox echo hello); check echo 0 hello $? "$out"
out=$(run busybox sh -c 'echo err >&2; exit 3' 2>/dev/null); check exit-code 3 "" $? "$out"
err=$(run busybox sh -c 'echo err >&2' 2>&1 >/dev/null); check stderr 0 err $? "$err"
out=$(run busybox no-such-command 2>/dev/null); check not-found 127 "" $? "$out"
out=$(run busybox /etc/motd 2>/dev/null); check not-executable 126 "" $? "$out"
out=$(run -e A=1 -e B=two -w /work -u app busybox sh -c 'echo $A $B $(pwd) $(id -u):$(id -g)'); check env-workdir-user 0 "1 two /work 1000:1000" $? "$out"
out=$(run -u app busybox sh -c 'cat /sys/fs/cgroup/cgroup.procs >/dev/null && echo readable'); check user-reads-own-cgroup 0 readable $? "$out"
out=$(run busybox); check image-cmd 0 "" $? "$out"
out=$(run --entrypoint echo busybox from entrypoint); check entrypoint 0 "from entrypoint" $? "$out"
out=$(echo piped | run -i busybox cat); check stdin 0 piped $? "$out"
out=$(run busybox sh -c 'kill -9 $$; sleep 1; echo survived'); check pid1-ignores-own-sigkill 0 survived $? "$out"
arca run --rm --isolation="$iso" busybox sh -c 'trap "echo got-term; exit 9" TERM; echo ready; while true; do sleep 0.1; done' >"$state.sig" &
pid=$!
i=0; while ! grep -q ready "$state.sig" 2>/dev/null; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
kill -TERM $pid; wait $pid; rc=$?
out=$(tail -n 1 "$state.sig"); rm -f "$state.sig"; check signal-forwarded 9 got-term $rc "$out"
out=$(run -t busybox tty | tr -d '\r'); check tty 0 /dev/pts/0 $? "$out"
out=$(printf 'echo typed\nexit 4\n' | run -it busybox sh | tr -d '\r' | grep -c '^typed$'); check tty-interactive 0 1 $? "$out"
out=$(printf 'exit 4\n' | run -it busybox sh >/dev/null 2>&1); check tty-exit-code 4 "" $? "$out"
out=$(run --memory 32m busybox sh -c 'x=$(head -c 200000000 /dev/zero | tr "\0" a); echo survived' 2>/dev/null); rc=$?
if [ "$iso" = process ] && [ ! -e /sys/fs/cgroup/memory.max ] && ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  echo "skip memory-limit: no cgroup v2 memory controller on this host"
else
  check memory-limit 137 "" $rc "$out"
fi
# Storage: the writable layer lives on host disk (a sparse disk per microVM container),
# --tmpfs, --read-only, --storage-opt; hostile mount points refused.
out=$(run busybox sh -c 'dd if=/dev/zero of=/big bs=1M count=1024 2>/dev/null && sync && wc -c </big'); check write-1g-to-root 0 1073741824 $? "$out"
out=$(run --read-only busybox sh -c 'touch /x 2>/dev/null; echo $?; cat /etc/hostname | wc -l'); check read-only-root 0 "1
1" $? "$out"
out=$(run --read-only --tmpfs /tmp busybox sh -c 'touch /tmp/x && echo ok'); check read-only-with-tmpfs 0 ok $? "$out"
out=$(run --tmpfs /scratch:size=8m busybox sh -c "df -k /scratch | tail -n 1 | awk '{print \$2}'; stat -c %a /scratch; grep ' /scratch ' /proc/mounts | grep -c noexec"); check tmpfs-size-mode-noexec 0 "8192
1777
1" $? "$out"
out=$(run --tmpfs /deep/er:mode=700,exec busybox sh -c 'stat -c %a /deep/er; grep " /deep/er " /proc/mounts | grep -c noexec; true'); check tmpfs-made-with-options 0 "700
0" $? "$out"
out=$(run --tmpfs /a/../../etc busybox true 2>&1 >/dev/null | grep -c 'invalid --tmpfs'); check tmpfs-dotdot-refused 0 1 $? "$out"
out=$(run --tmpfs /bin/sh/x busybox true 2>&1 >/dev/null | grep -c 'is a symlink'); check tmpfs-through-image-symlink-refused 0 1 $? "$out"
out=$(run --tmpfs /bin/sh busybox true 2>/dev/null); check tmpfs-on-image-symlink-exit 125 "" $? "$out"
out=$(run busybox sh -c "df -k /dev/shm | tail -n 1 | awk '{print \$2}'"; run --shm-size 8m -u app busybox sh -c "df -k /dev/shm | tail -n 1 | awk '{print \$2}'; touch /dev/shm/x && echo writable"); check shm-size 0 "65536
8192
writable" $? "$out"
# --sysctl sets parameters of the container's own namespaces; a host-wide one, or net.*
# on the host's network, is what a hostile user would change the sandbox (with process
# isolation, the host) with: refused before anything starts, in Docker's words.
hostshm=$(cat /proc/sys/kernel/shmmni)
out=$(run --sysctl net.ipv4.ip_unprivileged_port_start=80 --sysctl kernel.shmmni=100 --sysctl fs.mqueue.msg_max=20 busybox cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shmmni /proc/sys/fs/mqueue/msg_max; cat /proc/sys/kernel/shmmni); check sysctl 0 "80
100
20
$hostshm" $? "$out"
out=$(run --sysctl vm.swappiness=1 busybox true 2>&1; echo "rc=$?"); check sysctl-host-wide-refused 0 "arca: invalid argument \"vm.swappiness=1\" for \"--sysctl\" flag: sysctl 'vm.swappiness=1' is not allowed
rc=125" $? "$out"
out=$(run --network host --sysctl net.ipv4.ip_forward=1 busybox true 2>&1; echo "rc=$?"); check sysctl-net-on-host-network-refused 0 'arca: sysctl "net.ipv4.ip_forward" not allowed in host network namespace
rc=125' $? "$out"
out=$(run --storage-opt dm.basesize=1g busybox true 2>&1 >/dev/null | grep -c 'unknown storage option'); check storage-opt-unknown 0 1 $? "$out"
if [ "$iso" = vm ]; then
  out=$(run --storage-opt size=100m busybox sh -c "df -k / | tail -n 1 | awk '{print (\$2 > 80000 && \$2 <= 102400)}'"); check storage-opt-size 0 1 $? "$out"
  # Warm starts: runs restore a template snapshot (made by the first run of a kind, in
  # the private state). Two restored guests must not share the template's random state
  # (the agent reseeds from the host), each has the host's time and its own MAC, and
  # --no-snapshot boots cold.
  a=$(run busybox sh -c 'head -c 16 /dev/urandom | md5sum')
  b=$(run busybox sh -c 'head -c 16 /dev/urandom | md5sum')
  out=$([ -n "$a" ] && [ "$a" != "$b" ] && echo differ; [ "$(ls "$state"/templates/*/state.json | wc -l)" -ge 1 ] && echo made; stat -c %a "$state/templates" "$state"/templates/*/memory.bin | sort -u | tr '\n' ' ')
  check warm-start-own-random-private 0 "differ
made
600 700 " $? "$out"
  out=$(g=$(run busybox date +%s); h=$(date +%s); d=$((h - g)); [ "${d#-}" -le 60 ] && echo close)
  check warm-start-host-time 0 close $? "$out"
  out=$(arca run -d --isolation=vm --name wm1 busybox sleep 100 >/dev/null; arca run -d --isolation=vm --name wm2 busybox sleep 100 >/dev/null
    m1=$(arca exec wm1 cat /sys/class/net/eth0/address); m2=$(arca exec wm2 cat /sys/class/net/eth0/address)
    [ "$m1" != "$m2" ] && [ "$m1" != 02:a7:ca:00:00:01 ] && echo own-macs; arca exec wm1 ping -c 1 -W 5 "$(arca inspect -f '{{.NetworkSettings.IPAddress}}' wm2)" >/dev/null && echo reach
    arca rm -f wm1 wm2 >/dev/null)
  check warm-start-own-mac-network 0 "own-macs
reach" $? "$out"
  out=$(run --no-snapshot busybox echo cold); check no-snapshot-boots-cold 0 cold $? "$out"
  # A template the host can no longer restore (here: its state file emptied) costs one
  # cold boot, with a warning, and is made again by the next run. (A state directory of
  # its own, no network: the table's templates stay as they are.)
  s2=$(mktemp -d)
  out=$(export ARCA_STATE_DIR="$s2"; arca load -i "$img" >/dev/null; run --network none busybox true
    for f in "$s2"/templates/*/state.json; do : >"$f"; done
    run --network none busybox echo fell-back 2>"$s2.err"; grep -c 'warm start failed' "$s2.err"
    run --network none busybox echo again 2>"$s2.err"; for f in "$s2"/templates/*/state.json; do [ -s "$f" ] && echo remade; done; cat "$s2.err")
  rm -rf "$s2" "$s2.err"
  check warm-start-falls-back-cold 0 "fell-back
1
again
remade" $? "$out"
else
  out=$(run --storage-opt size=100m busybox true 2>&1 >/dev/null | grep -c 'needs --isolation=vm'); check storage-opt-size-needs-vm 0 1 $? "$out"
fi
# Bind mounts and volumes (-v, --mount, --volumes-from, image VOLUMEs, arca volume);
# in microVMs they travel over virtio-fs. A hostile caller or image tries targets that
# climb out, a symlink at the mount point, a volume name that is a path: refused.
vt=$(mktemp -d)
mkdir "$vt/bind"
out=$(run -v "$vt/bind:/mnt" busybox sh -c 'echo hi >/mnt/f && chmod 640 /mnt/f && chown 1000:1000 /mnt/f && echo done'; stat -c '%a %u %s' "$vt/bind/f"); check bind-rw-owner-mode 0 "done
640 1000 3" $? "$out"
out=$(run -v "$vt/bind:/mnt:ro" busybox sh -c 'cat /mnt/f; touch /mnt/g 2>&1 | grep -c "Read-only file system"; (echo x >/mnt/f) 2>/dev/null || echo refused'; ls "$vt/bind"; cat "$vt/bind/f"); check bind-ro-erofs-host-untouched 0 "hi
1
refused
f
hi" $? "$out"
out=$(run --mount "type=bind,source=$vt/bind,target=/mnt,readonly" busybox cat /mnt/f); check mount-bind-readonly 0 hi $? "$out"
out=$(run -v "$vt/made/sub:/mnt" busybox true; stat -c %F "$vt/made/sub"); check bind-missing-source-made 0 directory $? "$out"
out=$(run --mount "type=bind,source=$vt/nope,target=/mnt" busybox true 2>&1 >/dev/null | grep -c 'bind source path does not exist'; ls "$vt" | grep -c nope); check mount-bind-missing-refused 1 "1
0" $? "$out"
out=$(cd "$vt" && run -v ./bind:/mnt busybox cat /mnt/f); check bind-relative-path 0 hi $? "$out"
out=$(run -v "$vt/bind/f:/etc/app.conf" busybox sh -c 'cat /etc/app.conf && echo more >>/etc/app.conf && echo ok'; cat "$vt/bind/f"); check file-bind 0 "hi
ok
hi
more" $? "$out"
out=$(run -v "$vt/bind/f:/app.conf:ro" busybox sh -c '(echo x >>/app.conf) 2>/dev/null || echo refused'; wc -l <"$vt/bind/f"); check file-bind-ro 0 "refused
2" $? "$out"
out=$(run -v vol1:/data busybox sh -c 'echo kept >/data/k'; run -v vol1:/data busybox cat /data/k); check named-volume-persists 0 kept $? "$out"
out=$(arca volume ls -q; arca volume inspect vol1 | grep -c '"Driver": "local"'); check volume-ls-inspect 0 "vol1
1" $? "$out"
out=$(arca volume rm vol1 && arca volume ls -q | wc -l && ls "$state/volumes" | grep -c vol1); check volume-rm 1 "vol1
0
0" $? "$out"
out=$(run -v popvol:/srv/data busybox sh -c 'cat /srv/data/seed; stat -c %u /srv/data'; arca volume rm popvol); check volume-filled-from-image 0 "seeded
1000
popvol" $? "$out"
out=$(run -v nocp:/srv/data:nocopy busybox ls /srv/data | wc -l; arca volume rm nocp); check volume-nocopy 0 "0
nocp" $? "$out"
arca run -d --isolation="$iso" --name user1 -v busy:/data busybox sleep 100 >/dev/null
out=$(arca volume rm busy 2>&1 >/dev/null | grep -c "volume is in use - \[$(arca inspect -f '{{.Id}}' user1)\]"; arca rm -f user1 >/dev/null; arca volume rm busy); check volume-in-use-refused 0 "1
busy" $? "$out"
out=$(run -v /anon busybox sh -c 'echo x >/anon/x'; arca volume ls -q | wc -l); check anonymous-volume-goes-with-rm 0 0 $? "$out"
out=$(run volbox sh -c 'cat /srv/data/seed; grep -c " /srv/data " /proc/mounts'; arca volume ls -q | wc -l); check image-volume-anonymous 0 "seeded
1
0" $? "$out"
arca run --isolation="$iso" --name keep -v named2:/n -v /anon busybox sh -c 'echo in >/n/f; echo a >/anon/a'
out=$(arca inspect -f '{{range .Mounts}}{{println .Destination}}{{end}}' keep | grep -c '^/anon$'; arca volume ls -q | wc -l; run --volumes-from keep:ro busybox sh -c 'cat /n/f /anon/a; touch /n/g 2>/dev/null || echo ro'); check volumes-from 0 "1
2
in
a
ro" $? "$out"
out=$(arca rm -v keep && arca volume ls -q); check rm-v-keeps-named 0 "keep
named2" $? "$out"
out=$(arca volume create --label team=ci named3 && arca volume ls -q --filter label=team=ci && arca volume ls -q --filter dangling=true | wc -l); check volume-create-label-filter 0 "named3
named3
2" $? "$out"
out=$(arca volume prune -f | tail -n 1; arca volume ls -q | wc -l; arca volume prune -a -f | grep -c named; arca volume ls -q | wc -l); check volume-prune 0 "Total reclaimed space: 0B
2
2
0" $? "$out"
out=$(arca volume create a/b 2>&1 >/dev/null | grep -c 'invalid characters'; arca volume rm no-such 2>/dev/null; echo $?; arca volume rm -f no-such; echo $?); check volume-bad-name-and-missing 0 "1
1
no-such
0" $? "$out"
out=$(arca volume create -o type=nfs v 2>&1 >/dev/null | grep -c 'not supported'); check volume-create-opt-refused 0 1 $? "$out"
out=$(run -v "$vt/bind:/a/../../etc" busybox true 2>&1 >/dev/null | grep -c 'invalid volume specification'); check volume-dotdot-target-refused 0 1 $? "$out"
out=$(run -v a/b:/data busybox true 2>&1 >/dev/null | grep -c 'invalid characters'); check volume-name-with-slash-refused 0 1 $? "$out"
out=$(run -v "$vt/bind:/bin/sh/x" busybox true 2>&1 >/dev/null | grep -c 'is a symlink'); check volume-through-image-symlink-refused 0 1 $? "$out"
out=$(run -v "$vt/bind:/d" --tmpfs /d busybox true 2>&1 >/dev/null | grep -c 'Duplicate mount point: /d'); check duplicate-mount-point 0 1 $? "$out"
out=$(run --mount type=tmpfs,target=/t,tmpfs-size=4m busybox sh -c "df -k /t | tail -n 1 | awk '{print \$2}'"); check mount-tmpfs 0 4096 $? "$out"
out=$(run --mount type=bind,source=/x,target=/y,bind-propagation=shared busybox true 2>/dev/null); check mount-propagation-refused 125 "" $? "$out"
left=$(arca volume ls -q | wc -l); check no-volumes-left 0 0 0 "$left"
rm -rf "$vt"
out=$(run no-such-image true 2>/dev/null); check unknown-image 125 "" $? "$out"
out=$(run BAD:REF true 2>/dev/null); check bad-reference 125 "" $? "$out"
out=$(run --bogus-flag busybox true 2>/dev/null); check unknown-flag 125 "" $? "$out"

# Image names: tag, inspect, rmi of a tag.
out=$(arca tag busybox mybox:v1 && run mybox:v1 echo tagged); check tag 0 tagged $? "$out"
out=$(arca inspect mybox:v1 | grep -c '"mybox:v1"'); check inspect-image 0 1 $? "$out"
out=$(arca inspect no-such-thing 2>/dev/null); check inspect-missing 1 "[]" $? "$out"
out=$(arca rmi mybox:v1); check rmi-untags 0 "Untagged: mybox:v1" $? "$out"
out=$(run busybox echo still-there); check rmi-keeps-other-tags 0 still-there $? "$out"

# save -> rmi -> load round trip; a failed save leaves no file.
saved=$(mktemp -d)
out=$(arca save -o "$saved/busybox.tar" busybox && arca rmi busybox >/dev/null && arca load -i "$saved/busybox.tar"); check save-load 0 "Loaded image: busybox:latest" $? "$out"
out=$(run busybox echo reloaded); check run-reloaded 0 reloaded $? "$out"
out=$(arca save -o "$saved/none.tar" no-such-image 2>/dev/null; echo $?; ls "$saved"); check save-unknown 0 "125
busybox.tar" 0 "$out"
rm -rf "$saved"

# Lifecycle: detached, ps, exec, stop, wait, logs, rm.
state=${ARCA_STATE_DIR:-/var/lib/arca}
# Docker's identity: run -d prints the 64-hex ID, ps -q the 12-digit short ID, which is
# also the default hostname; an ID prefix names the container.
id=$(arca run -d --isolation="$iso" --name lc busybox sh -c 'echo up; trap "echo bye; exit 5" TERM; while true; do sleep 0.1; done')
out=$(echo "$id" | grep -cx '[0-9a-f]\{64\}'); check detach-prints-id 0 1 $? "$out"
short=$(echo "$id" | cut -c1-12)
out=$(arca ps -q); check ps-lists-running 0 "$short" $? "$out"
out=$(arca ps --format '{{.ID}} {{.Names}}'); check ps-names 0 "$short lc" $? "$out"
out=$(arca exec lc sh -c 'echo in $(hostname)'); check exec 0 "in $short" $? "$out"
out=$(arca inspect -f '{{.Name}}' "$(echo "$id" | cut -c1-5)"); check id-prefix 0 /lc $? "$out"
out=$(arca exec lc no-such-command 2>/dev/null); check exec-not-found 127 "" $? "$out"
# exec -d returns at once with no output; the process runs on, its output (more than a
# pipe holds, which would block it were it kept for a reader) discarded.
out=$(arca exec -d lc sh -c 'yes | head -c 300000; touch /tmp/exec-d-done'); check exec-detached 0 "" $? "$out"
out=$(for i in $(seq 1 50); do arca exec lc test -f /tmp/exec-d-done && { echo done; break; }; sleep 0.2; done); check exec-detached-ran 0 done $? "$out"
# exec --privileged: every capability (without it, the container's set); with process
# isolation only when the operator allows it, as run --privileged.
# (CAP_SYS_ADMIN, bit 21, shows it: Docker's default set lacks it.)
out=$(a=$(arca exec lc grep CapEff /proc/self/status | cut -f2); b=$(ARCA_ALLOW_PRIVILEGED_PROCESS=1 arca exec --privileged lc grep CapEff /proc/self/status | cut -f2); echo $(( (0x$a >> 21) & 1 )) $(( (0x$b >> 21) & 1 ))); check exec-privileged 0 "0 1" $? "$out"
if [ "$iso" = process ]; then
  out=$(arca exec --privileged lc true 2>&1 | grep -c 'ARCA_ALLOW_PRIVILEGED_PROCESS=1'); check exec-privileged-process-refused 0 1 $? "$out"
fi
# exec inherits the container's environment, working directory and user (Docker's
# rules), -e/-w/-u override them; the primary group is in the supplementary list.
arca run -d --isolation="$iso" --name ev -e FOO=bar -w /tmp -u app busybox sleep 1000 >/dev/null
out=$(arca exec ev sh -c 'echo $FOO $(pwd) $(id -u) $(id -G)'; arca exec -e FOO=baz -w / -u root ev sh -c 'echo $FOO $(pwd) $(id -u)'); check exec-inherits-env-workdir-user 0 "bar /tmp 1000 1000 50
baz / 0" $? "$out"
arca rm -f ev >/dev/null
out=$(arca exec -t lc sh -c 'tty >/dev/null && echo is-a-tty' | tr -d '\r'); check exec-tty 0 is-a-tty $? "$out"
out=$(printf 'echo typed-in-exec\nexit 6\n' | arca exec -it lc sh | tr -d '\r' | grep -c '^typed-in-exec$'); check exec-tty-interactive 0 1 $? "$out"
out=$(printf 'exit 6\n' | arca exec -it lc sh >/dev/null 2>&1); check exec-tty-exit-code 6 "" $? "$out"
out=$(arca inspect -f '{{.State.Status}} {{.State.Running}} {{.Name}} {{.Config.Image}}' lc); check inspect-container 0 "running true /lc busybox" $? "$out"
out=$(arca stop -t 5 lc); check stop 0 lc $? "$out"
out=$(arca wait lc); check wait-code 0 5 $? "$out"
out=$(arca logs lc); check logs 0 "up
bye" $? "$out"
out=$(arca exec lc true 2>/dev/null); check exec-into-stopped 125 "" $? "$out"
out=$(arca rm lc); check rm 0 lc $? "$out"
# logs as Docker's: --tail counts records of both streams, -t prefixes RFC 3339 times with
# nanoseconds, --since/--until take durations and times, output without a final newline
# comes back as written.
arca run -d --isolation="$iso" --name lg busybox sh -c 'echo one; echo two >&2; sleep 0.5; echo three; printf no-newline' >/dev/null
arca wait lg >/dev/null
out=$(arca logs --tail 2 lg 2>/dev/null; echo; arca logs lg 2>/dev/null | wc -c; arca logs -n 0 lg 2>&1 | wc -c); check logs-tail-and-last-piece 0 "three
no-newline
20
0" $? "$out"
out=$(arca logs -t lg 2>/dev/null | grep -c '^20[0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]\.[0-9]\{9\}Z \(one\|three\|no-newline\)$'); check logs-timestamps 0 3 $? "$out"
out=$(arca logs --since 1h lg 2>/dev/null | head -n 1; arca logs --until 1h lg 2>&1 | wc -c; arca logs --since 2099-01-01 lg 2>&1 | wc -c; arca logs --until 2099-01-01T00:00:00Z lg 2>/dev/null | head -n 1); check logs-since-until 0 "one
0
0
one" $? "$out"
out=$(arca logs --since yesterday lg 2>&1); check logs-since-invalid 1 'arca: invalid value for "since": failed to parse value as time or duration: "yesterday"' $? "$out"
arca rm lg >/dev/null
# pause/unpause (the container's cgroup frozen by its agent; in a microVM the guest's):
# a paused counter stops printing, exec and attach are refused, ps and inspect say
# paused; unpause resumes it; stop ends a paused container. stats reads the cgroup.
arca run -d --isolation="$iso" --name pz busybox sh -c 'i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done' >/dev/null
out=$(arca pause pz && arca ps --filter name=pz --format '{{.Names}} {{.State}}' && arca inspect -f '{{.State.Status}} {{.State.Running}} {{.State.Paused}}' pz); check pause 0 "pz
pz paused
paused true true" $? "$out"
n1=$(arca logs pz | wc -l); sleep 1; n2=$(arca logs pz | wc -l)
out=$([ "$n1" = "$n2" ] && echo still; arca exec pz true 2>&1; echo "rc=$?"; arca pause pz 2>&1 | grep -c 'is already paused'); check paused-stays-still-exec-refused 0 "still
arca: Container $(arca inspect -f '{{.Id}}' pz) is paused, unpause the container before exec
rc=125
1" $? "$out"
out=$(arca unpause pz && sleep 1 && [ "$(arca logs pz | wc -l)" -gt "$n2" ] && echo moving; arca unpause pz 2>/dev/null; echo "rc=$?"); check unpause 0 "pz
moving
rc=1" $? "$out"
if [ "$iso" = process ] && ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  echo "skip stats-usage: no cgroup v2 memory controller on this host"
else
  out=$(arca stats --no-stream --format '{{.Name}} {{.MemUsage}} {{.PIDs}}' pz | awk '{print $1, ($2 != "0B"), ($NF > 0)}'); check stats-usage 0 "pz 1 1" $? "$out"
fi
out=$(arca stats --no-stream | head -n 1 | tr -s ' '); check stats-header 0 "CONTAINER ID NAME CPU % MEM USAGE / LIMIT MEM % NET I/O BLOCK I/O PIDS" $? "$out"
out=$(arca pause pz && arca stop -t 1 pz && arca inspect -f '{{.State.Status}}' pz); check stop-paused 0 "pz
pz
exited" $? "$out"
out=$(arca pause pz 2>&1; echo "rc=$?"); check pause-stopped 0 "arca: Container $(arca inspect -f '{{.Id}}' pz) is not running
rc=1" $? "$out"
arca rm pz >/dev/null
# top: the container's processes as ps -ef shows them (a microVM's are the guest's); ps
# options are refused; a hostile process title cannot reach the terminal raw.
arca run -d --isolation="$iso" --name tp busybox sh -c 'sh -c "sleep 1000; true" "$(printf "evil\033]0;x\007")" & sleep 1001' >/dev/null
sleep 1
out=$(arca top tp | head -n 1 | tr -s ' '; arca top tp | grep -c ' sleep 1000$'; arca top tp | grep -c "$(printf '\033')"; arca top tp | grep -c 'evil?]0;x?$'; arca top tp aux 2>&1 >/dev/null | grep -c 'top takes no ps options'); check top 0 "UID PID PPID C STIME TTY TIME CMD
1
0
1
1" $? "$out"
arca rm -f tp >/dev/null
# attach: to a detached container's stdin and output, and to its terminal.
arca run -d -i --isolation="$iso" --name att busybox sh -c 'while read l; do echo "got:$l"; done; exit 7' >/dev/null
printf 'one\ntwo\n' | arca attach att >"$state.att"; rc=$?
out=$(tr '\n' ' ' <"$state.att"); rm -f "$state.att"; check attach-stdin 7 "got:one got:two " $rc "$out"
out=$(arca wait att); check attach-exit-code 0 7 $? "$out"
arca rm att >/dev/null
arca run -d -it --isolation="$iso" --name atty busybox sh >/dev/null
out=$(printf 'echo typed-in-attach\nexit 3\n' | arca attach atty | tr -d '\r' | grep -c '^typed-in-attach$'); check attach-tty 0 1 $? "$out"
out=$(arca wait atty); check attach-tty-exit-code 0 3 $? "$out"
arca rm atty >/dev/null
out=$(arca attach lc-gone 2>/dev/null); check attach-missing 125 "" $? "$out"
arca run -d --isolation="$iso" --name rf busybox sleep 100 >/dev/null
out=$(arca rm rf 2>/dev/null); check rm-running-refused 1 "" $? "$out"
out=$(arca rm -f rf); check rm-force 0 rf $? "$out"
# A sandbox (VMM or agent) killed under its container: shown as exited, with the reason;
# what the container wrote to a volume and synced before is on the host.
arca run -d --isolation="$iso" --name crash -v crashv:/d busybox sh -c 'echo safe >/d/f && sync && touch /d/synced && sleep 100' >/dev/null
i=0; while [ ! -e "$state/volumes/crashv/_data/synced" ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
pid=$(sed -n 's/.*"sandbox_pid": *\([0-9]*\).*/\1/p' "$state/containers/$(arca inspect -f '{{.Id}}' crash | cut -c1-12)/state.json")
kill -9 "$pid"
out=$(cat "$state/volumes/crashv/_data/f"); check synced-volume-survives-sigkill 0 safe $? "$out"
i=0; while [ "$(arca inspect -f '{{.State.Status}}' crash)" != exited ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done
out=$(arca inspect -f '{{.State.Error}}' crash | grep -c "ended unexpectedly\|Lost the agent"); check crash-shows-reason 0 1 $? "$out"
out=$(arca rm crash && arca volume rm crashv); check crash-rm 0 "crash
crashv" $? "$out"
gone=$(arca run -d --rm --isolation="$iso" --name gone busybox true | cut -c1-12)
i=0; while [ -e "$state/containers/$gone" ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done
out=$(ls "$state/containers" "$state/names" | grep -c "gone\|$gone"); check detached-rm-cleans 1 0 $? "$out"
out=$(run --name named busybox true; run --name named busybox true 2>/dev/null); check name-reuse-after-rm 0 "" $? "$out"

# cp: both ways, tar streams both ways, Docker's path rules and errors (exit 1); a
# container symlink to / copies as a link and resolves inside the container.
ct=$(mktemp -d)
arca run -d --isolation="$iso" --name cpc busybox sh -c 'mkdir -p /d/sub && echo one >/d/f && echo two >/d/sub/g && chmod 750 /d/sub && ln -s / /rootlink && touch /ready && sleep 1000' >/dev/null
i=0; while ! arca exec cpc test -e /ready 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done
out=$(arca cp cpc:/d/f "$ct/f" && cat "$ct/f"); check cp-out-file 0 one $? "$out"
out=$(arca cp cpc:/d "$ct/" && cat "$ct/d/f" "$ct/d/sub/g" && stat -c %a "$ct/d/sub"); check cp-out-dir 0 "one
two
750" $? "$out"
out=$(mkdir "$ct/into" && arca cp cpc:/d/. "$ct/into" && ls "$ct/into"); check cp-out-contents 0 "f
sub" $? "$out"
out=$(arca cp cpc:/d/sub "$ct/newdir" && ls "$ct/newdir"); check cp-out-dir-to-new-name 0 g $? "$out"
out=$(arca cp cpc:/d - | tar -tf - | sort | tr -d / | tr '\n' ' '); check cp-out-stream 0 "d df dsub dsubg " $? "$out"
out=$(arca cp cpc:/rootlink "$ct/rl" && readlink "$ct/rl"); check cp-out-symlink-to-root-as-link 0 / $? "$out"
out=$(arca cp cpc:/rootlink/d/f "$ct/through" && cat "$ct/through"); check cp-out-through-symlink-stays-inside 0 one $? "$out"
echo host >"$ct/hf"; mkdir -p "$ct/hd/s"; echo deep >"$ct/hd/s/x"; chmod 700 "$ct/hd/s"; ln -s / "$ct/hd/hostroot"
out=$(arca cp "$ct/hf" cpc:/d/hf2 && arca exec cpc cat /d/hf2); check cp-in-file 0 host $? "$out"
out=$(arca cp "$ct/hd" cpc:/d && arca exec cpc sh -c 'cat /d/hd/s/x; stat -c "%a %u" /d/hd/s; readlink /d/hd/hostroot'); check cp-in-dir 0 "deep
700 0
/" $? "$out"
out=$(arca cp "$ct/hd/." cpc:/d/sub && arca exec cpc ls /d/sub); check cp-in-contents 0 "g
hostroot
s" $? "$out"
out=$(tar -cf - -C "$ct" hf | arca cp - cpc:/d/sub && arca exec cpc cat /d/sub/hf); check cp-in-stream 0 host $? "$out"
out=$(arca cp "$ct/hf" cpc:/rootlink/d/via && arca exec cpc cat /d/via; ls /d/via 2>/dev/null | wc -l); check cp-in-through-symlink-stays-inside 0 "host
0" $? "$out"
out=$(arca cp cpc:/nope "$ct/x" 2>"$ct/err"; echo $?; grep -c 'Could not find the file /nope in container cpc' "$ct/err"); check cp-missing-source 0 "1
1" $? "$out"
out=$(arca cp cpc:/d "$ct/f" 2>"$ct/err"; echo $?; grep -c 'Cannot copy a directory to a file' "$ct/err"); check cp-dir-to-file 0 "1
1" $? "$out"
out=$(arca cp "$ct/hd" cpc:/d/f 2>"$ct/err"; echo $?; grep -c 'Cannot copy a directory to a file' "$ct/err"); check cp-in-dir-to-file 0 "1
1" $? "$out"
out=$(arca cp cpc:/d/f "$ct/nodir/" 2>"$ct/err"; echo $?; grep -c 'destination directory must exist' "$ct/err"); check cp-dest-dir-missing 0 "1
1" $? "$out"
out=$(arca cp "$ct/hf" cpc:/nodir/ 2>"$ct/err"; echo $?; grep -c 'destination directory must exist' "$ct/err"); check cp-in-dest-dir-missing 0 "1
1" $? "$out"
out=$(arca cp cpc:/d/f cpc:/x 2>"$ct/err"; echo $?; grep -c 'between containers' "$ct/err"); check cp-both-containers 0 "1
1" $? "$out"
out=$(arca cp "$ct/hf" "$ct/hf3" 2>"$ct/err"; echo $?; grep -c 'at least one container' "$ct/err"); check cp-no-container 0 "1
1" $? "$out"
# -a keeps the uid and gid of what is copied in (root's otherwise); -L copies what a
# symlink leads to, under the link's name, both ways; without a terminal on stdout
# nothing is said (as with -q), on a terminal Docker's summary.
echo owned >"$ct/owned"; chown 1234:5678 "$ct/owned"
out=$(arca cp "$ct/owned" cpc:/d/plain && arca cp -a "$ct/owned" cpc:/d/kept && arca exec cpc stat -c '%u:%g' /d/plain /d/kept); check cp-archive-keeps-owners 0 "0:0
1234:5678" $? "$out"
arca exec cpc ln -s /d/f /d/flink
out=$(arca cp cpc:/d/flink "$ct/asis" && arca cp -L cpc:/d/flink "$ct/followed" && readlink "$ct/asis"; cat "$ct/followed"; test -L "$ct/followed" || echo regular); check cp-out-follow-link 0 "/d/f
one
regular" $? "$out"
ln -s "$ct/hf" "$ct/hlink"
out=$(arca cp -L "$ct/hlink" cpc:/d/ && arca exec cpc sh -c 'cat /d/hlink; test -L /d/hlink || echo regular'); check cp-in-follow-link 0 "host
regular" $? "$out"
out=$(arca cp cpc:/d/f "$ct/quiet" 2>&1); check cp-quiet-without-terminal 0 "" $? "$out"
if command -v script >/dev/null; then
  # Docker's wording: the file's size, and the archive's when it differs.
  out=$(script -qec "arca cp cpc:/d/f $ct/loud" /dev/null | tr -d '\r' | grep -c "^Successfully copied 4B (transferred [0-9.]*kB) to $ct/loud\$"); check cp-summary-on-a-terminal 0 1 $? "$out"
  out=$(script -qec "arca cp -q cpc:/d/f $ct/loud2" /dev/null | tr -d '\r'); check cp-q-on-a-terminal 0 "" $? "$out"
else
  echo "skipped cp-summary-on-a-terminal: no script(1)"
fi
# diff: what changed against the image, as `docker diff` lists it (sorted by path; A, C,
# D); the agent's own /etc files and mount points are not listed; a stopped container
# too; an unknown one exits 1.
arca run -d --isolation="$iso" --name dfc busybox sh -c 'mkdir /newdir && echo x >/newdir/f && rm /etc/group && echo y >/tmp/t && touch /ready && sleep 1000' >/dev/null
i=0; while ! arca exec dfc test -e /ready 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done
out=$(arca diff dfc); check diff-lists-changes 0 "C /etc
D /etc/group
A /newdir
A /newdir/f
A /ready
C /tmp
A /tmp/t" $? "$out"
arca kill dfc >/dev/null; arca wait dfc >/dev/null
out=$(arca diff dfc | tr '\n' ' '); check diff-stopped-container 0 "C /etc D /etc/group A /newdir A /newdir/f A /ready C /tmp A /tmp/t " $? "$out"
out=$(arca diff nosuch 2>&1; echo $?); check diff-unknown-container 0 "arca: No such container: nosuch
1" $? "$out"
arca rm dfc >/dev/null
# A stopped container, as Docker's: what it wrote is copied out, and what is copied in
# is there when it runs again (it is brought up in a sandbox of its own for the copy,
# running none of its commands: the kill below is its last signal).
arca kill cpc >/dev/null; arca wait cpc >/dev/null
out=$(arca cp cpc:/d/hf2 "$ct/s" && cat "$ct/s"; arca cp "$ct/hf" cpc:/d/while-stopped && arca inspect -f '{{.State.Status}}' cpc); check cp-stopped-container 0 "host
exited" $? "$out"
arca rm cpc >/dev/null
arca create --isolation="$iso" --name cpn busybox cat /root/in >/dev/null
out=$(arca cp "$ct/hf" cpn:/root/in && arca start -a cpn); check cp-into-created-container 0 host $? "$out"
arca rm cpn >/dev/null
rm -rf "$ct"

# create, start, restart (Docker's reference: `create` makes the container without
# running it, `ps` lists it only with -a as Created; `start` runs it again with its
# writable layer, volumes and logs; `start -a` attaches first and returns its exit code;
# `restart` stops and starts).
out=$(arca create --isolation="$iso" --name life busybox sh -c 'echo run; cat /count 2>/dev/null; echo x >>/count; exit 3' | grep -cx '[0-9a-f]\{64\}'; arca ps --format '{{.Names}}' | grep -c '^life$'; arca ps -a --format '{{.Names}} {{.Status}}' | grep '^life ' | grep -c Created); check create-not-running 0 "1
0
1" $? "$out"
out=$(arca start life; arca wait life; arca logs life); check start-then-logs 0 "life
3
run" $? "$out"
out=$(arca start -a life); check start-attach-exit-code-and-layer-kept 3 "run
x" $? "$out"
out=$(arca restart life >/dev/null; arca wait life; arca logs life | tr '\n' ' '); check restart-logs-accumulate 0 "3
run run x run x x " $? "$out"
arca rm life >/dev/null
out=$(arca create -i --isolation="$iso" --name life-i busybox cat >/dev/null; echo typed | arca start -ai life-i); check start-attach-interactive 0 typed $? "$out"
arca rm life-i >/dev/null
arca run -d --isolation="$iso" --name life-up busybox sh -c 'echo up; sleep 1000' >/dev/null
out=$(arca restart -t 1 life-up && arca ps --format '{{.Names}} {{.Status}}' | grep -c '^life-up ' && arca logs life-up); check restart-running 0 "life-up
1
up
up" $? "$out"
arca rm -f life-up >/dev/null
out=$(arca create --isolation="$iso" --name life-bad busybox no-such-command >/dev/null; arca start life-bad 2>&1 >/dev/null; arca ps -a --format '{{.Names}} {{.Status}}' | grep '^life-bad ' | grep -c 'Exited (127)'); check start-failure-kept-with-reason 0 'arca: exec: "no-such-command": executable file not found in $PATH
1' $? "$out"
arca rm life-bad >/dev/null
out=$(arca start no-such-container 2>&1); check start-unknown 1 "arca: No such container: no-such-container" $? "$out"
out=$(arca create -d busybox true 2>/dev/null); check create-refuses-detach 125 "" $? "$out"

# Names and IDs, as Docker's: an unnamed container gets an adjective_surname name; a
# taken name is refused with Docker's conflict message and nothing is made; rename keeps
# the ID and frees the old name; ps filters (same key: any; different keys: all), -n, -l,
# --no-trunc; an unknown filter exits 1.
gen=$(arca create --isolation="$iso" busybox true | cut -c1-12)
out=$(arca ps -a --filter "id=$gen" --format '{{.Names}}' | grep -cx '[a-z]*_[a-z]*[0-9]*'); check generated-name 0 1 $? "$out"
arca create --isolation="$iso" --name nm1 --label team=a busybox true >/dev/null
out=$(arca create --isolation="$iso" --name nm1 busybox true 2>&1; echo "rc=$?"; arca ps -aq | wc -l); check name-conflict 0 'arca: Conflict. The container name "/nm1" is already in use by another container. You have to remove (or rename) that container to be able to reuse that name.
rc=125
2' $? "$out"
id1=$(arca inspect -f '{{.Id}}' nm1)
# (The filter matches substrings: `nm2`, which no generated name (adjective_surname,
# letters only) contains.)
out=$(arca rename nm1 nm2 && arca inspect -f '{{.Name}}' "$id1" && arca ps -a --filter name=nm2 --format '{{.Names}}'; arca inspect nm1 >/dev/null 2>&1 || echo old-name-free); check rename 0 "/nm2
nm2
old-name-free" $? "$out"
genname=$(arca ps -a --filter "id=$gen" --format '{{.Names}}')
out=$(arca rename nm2 "$genname" 2>&1); check rename-to-taken-name 1 "arca: Conflict. The container name \"/$genname\" is already in use by another container. You have to remove (or rename) that container to be able to reuse that name." $? "$out"
out=$(arca rename nm2 'bad name' 2>&1); check rename-invalid 1 "arca: Invalid container name (bad name), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed" $? "$out"
out=$(arca ps -a --filter label=team=a --filter status=created --format '{{.Names}} {{.Labels}}'); check ps-filter-label-and-status 0 "nm2 team=a" $? "$out"
out=$(arca ps -a --filter name=nm2 --filter "name=$genname" -q | wc -l; arca ps -a --filter name=nm2 --filter "id=$gen" -q | wc -l); check ps-filter-same-key-any-other-keys-all 0 "2
0" $? "$out"
out=$(arca ps -l --format '{{.Names}}'; arca ps -n 2 -q | wc -l; arca ps -aq --no-trunc --filter name=nm2); check ps-latest-last-no-trunc 0 "nm2
2
$id1" $? "$out"
out=$(arca ps --filter bogus=1 2>&1); check ps-filter-unknown 1 "arca: invalid filter 'bogus'" $? "$out"
# Docker's daemon: a status filter looks at every container, an exit code filter only
# with -a.
arca run --isolation="$iso" --name ex0 busybox true
out=$(arca ps --filter exited=0 --filter name=ex0 -q | wc -l; arca ps -a --filter exited=0 --filter name=ex0 --format '{{.Names}}'; arca ps --filter status=exited --filter name=ex0 --format '{{.Names}}'); check ps-exited-needs-all-status-does-not 0 "0
ex0
ex0" $? "$out"
arca rm ex0 >/dev/null
# run -a: only the attached streams show, every stream reaches the logs; -a with -d
# conflicts, an unknown stream is refused (exit 125).
out=$(arca run --isolation="$iso" --name att -a stderr busybox sh -c 'echo out; echo err >&2' 2>&1); check run-attach-stderr 0 "err" $? "$out"
out=$(arca logs att 2>&1 | sort; arca rm att); check run-attach-logs-every-stream 0 "err
out
att" $? "$out"
out=$(arca run -d -a stdout busybox true 2>&1); check run-attach-detach-conflict 125 "arca: Conflicting options: -a and -d" $? "$out"
out=$(arca run -a bogus busybox true 2>&1 | grep -c 'valid streams are STDIN, STDOUT and STDERR'); check run-attach-unknown-stream 0 1 $? "$out"
# events: what happened, as Docker reports it (create, start, die with the exit code,
# destroy), filtered and formatted; a follower sees events as they come; an unknown
# filter exits 1.
t0=$(date +%s)
ev=$(mktemp)
arca events --since "$t0" --filter container=evf --format '{{.Action}}' >"$ev" &
evpid=$!
arca run --isolation="$iso" --name evx --label team=ev busybox sh -c 'exit 3'
arca rm evx >/dev/null
arca create --isolation="$iso" --name evf busybox true >/dev/null; arca rm evf >/dev/null
out=$(arca events --since "$t0" --until 0s --filter container=evx --format '{{.Action}}' | tr '\n' ' '; arca events --since "$t0" --until 0s --filter event=die --filter label=team=ev --format '{{.Actor.Attributes.exitCode}} {{.Actor.Attributes.name}}'); check events 0 "create start die destroy 3 evx" $? "$out"
i=0; while ! grep -q destroy "$ev" && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
kill $evpid; wait $evpid 2>/dev/null
out=$(tr '\n' ' ' <"$ev"); check events-follow 0 "create destroy " $? "$out"
rm -f "$ev"
out=$(arca events --filter bogus=1 2>&1); check events-filter-unknown 1 "arca: invalid filter 'bogus'" $? "$out"
arca rm "$gen" nm2 >/dev/null

# --restart (Docker's policies, carried out by the container's monitor with backoff):
# on-failure:2 runs a failing command three times and stops; always restarts a command
# that exits 0 until `stop`, after which it stays stopped.
arca run -d --isolation="$iso" --name rp-fail --restart on-failure:2 busybox sh -c 'echo go; exit 1' >/dev/null
i=0; while ! arca ps -a --format '{{.Names}} {{.Status}}' | grep '^rp-fail ' | grep -q 'Exited (1)' || [ "$(arca logs rp-fail | wc -l)" -lt 3 ]; do i=$((i+1)); [ $i -gt 1200 ] && break; sleep 0.1; done
sleep 1
out=$(arca logs rp-fail | wc -l; arca inspect -f '{{.RestartCount}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}' rp-fail); check restart-on-failure-retries 0 "3
2 on-failure 2" $? "$out"
arca rm -f rp-fail >/dev/null
arca run -d --isolation="$iso" --name rp-always --restart always busybox sh -c 'echo a' >/dev/null
i=0; while [ "$(arca logs rp-always | wc -l)" -lt 2 ]; do i=$((i+1)); [ $i -gt 1200 ] && break; sleep 0.1; done
arca stop -t 1 rp-always >/dev/null
n=$(arca logs rp-always | wc -l); sleep 2
out=$(arca ps -a --format '{{.Names}} {{.Status}}' | grep '^rp-always ' | grep -c Exited; [ "$(arca logs rp-always | wc -l)" = "$n" ] && echo stayed-stopped); check restart-always-until-stopped 0 "1
stayed-stopped" $? "$out"
arca rm -f rp-always >/dev/null
out=$(run --restart always busybox true 2>&1); check restart-with-rm-refused 125 "arca: Conflicting options: --restart and --rm" $? "$out"
out=$(arca run --restart sometimes busybox true 2>&1 | grep -c "unknown policy 'sometimes'"); check restart-unknown-policy 0 1 $? "$out"

# Confinement (issue 14): Docker's default seccomp profile, capabilities,
# no-new-privileges, --privileged, pids limits. A hostile container process tries new
# user namespaces, the keyring, BPF, mount, userfaultfd, namespace clones and vsock (the
# agent's own transport): each fails with EPERM as under Docker (clone3 with ENOSYS, so
# libcs fall back to clone), in its main process and in an exec.
probes="unshare keyctl add_key request_key bpf mount userfaultfd clone3 vsock ptrace personality getpid"
denied="unshare=EPERM keyctl=EPERM add_key=EPERM request_key=EPERM bpf=EPERM mount=EPERM userfaultfd=EPERM clone3=ENOSYS vsock=EPERM ptrace=ok personality=ok getpid=ok"
out=$(run busybox sh -c "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t'; syscall-probe $probes | tr '\n' ' '"); check seccomp-default-profile 0 "NoNewPrivs:0
Seccomp:2
$denied " $? "$out"
arca run -d --isolation="$iso" --name secx busybox sleep 1000 >/dev/null
out=$(arca exec secx syscall-probe $probes | tr '\n' ' '); check seccomp-in-exec 0 "$denied " $? "$out"
out=$(arca exec -u app secx sh -c "grep '^Seccomp:' /proc/self/status | tr -d ' \t'"); check seccomp-in-exec-as-user 0 Seccomp:2 $? "$out"
arca rm -f secx >/dev/null
out=$(run --security-opt seccomp=unconfined busybox sh -c "grep '^Seccomp:' /proc/self/status | tr -d ' \t'; syscall-probe unshare"); check seccomp-unconfined 0 "Seccomp:0
unshare=ok" $? "$out"
sp=$(mktemp -d)
printf '%s' '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}' >"$sp/deny-mkdir.json"
out=$(run --security-opt "seccomp=$sp/deny-mkdir.json" busybox sh -c 'mkdir /x 2>&1; syscall-probe unshare'); check seccomp-profile-file 0 "mkdir: can't create directory '/x': Permission denied
unshare=ok" $? "$out"
printf '{"defaultAction":' >"$sp/broken.json"
out=$(run --security-opt "seccomp=$sp/broken.json" busybox true 2>&1 >/dev/null | grep -c 'Decoding seccomp profile failed'); check seccomp-profile-broken 0 1 $? "$out"
out=$(run --security-opt "seccomp=$sp/none.json" busybox true 2>/dev/null); check seccomp-profile-missing-exit 125 "" $? "$out"
rm -rf "$sp"
out=$(run --security-opt no-new-privileges busybox sh -c "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t'"); check no-new-privileges 0 "NoNewPrivs:1
Seccomp:2" $? "$out"
out=$(run --security-opt apparmor=docker-default busybox true 2>&1 >/dev/null | grep -c 'no AppArmor or SELinux'); check security-opt-apparmor-refused 0 1 $? "$out"
out=$(run --security-opt bogus busybox true 2>&1 >/dev/null); check security-opt-invalid 125 'arca: invalid --security-opt: "bogus"' $? "$out"
out=$(run --cap-drop ALL --cap-add net_bind_service busybox sh -c "grep -E '^Cap(Eff|Bnd):' /proc/self/status | tr -d ' \t'"); check cap-drop-all-add-one 0 "CapEff:0000000000000400
CapBnd:0000000000000400" $? "$out"
out=$(run busybox sh -c "grep '^CapEff:' /proc/self/status | tr -d ' \t'"); check cap-default-set 0 CapEff:00000000a00425fb $? "$out"
out=$(run --cap-drop chown busybox sh -c 'chown 1 /tmp 2>/dev/null || echo denied'); check cap-drop-chown 0 denied $? "$out"
out=$(run --cap-add SYS_ADMIN busybox syscall-probe unshare keyctl); check cap-add-sys-admin-opens-its-calls 0 "unshare=ok
keyctl=EPERM" $? "$out"
out=$(run --cap-add FOO busybox true 2>&1 >/dev/null); check cap-unknown 125 'arca: invalid CapAdd: unknown capability: "CAP_FOO"' $? "$out"
if [ "$iso" = vm ]; then
  # Privileged inside its own microVM: every capability, no filter, /sys writable.
  out=$(run --privileged busybox sh -c "grep -E '^(CapEff|Seccomp):' /proc/self/status | tr -d ' \t'; grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1"); check privileged-in-its-vm 0 "CapEff:000001ffffffffff
Seccomp:0
rw" $? "$out"
  out=$(run --pids-limit 100 busybox cat /sys/fs/cgroup/pids.max); check pids-limit 0 100 $? "$out"
  out=$(run busybox cat /sys/fs/cgroup/pids.max); check pids-unlimited-in-a-vm 0 max $? "$out"
else
  out=$(run --privileged busybox true 2>&1 >/dev/null | grep -c 'ARCA_ALLOW_PRIVILEGED_PROCESS=1'); check privileged-process-refused 0 1 $? "$out"
  out=$(ARCA_ALLOW_PRIVILEGED_PROCESS=1 arca run --rm --isolation=process --privileged busybox sh -c "grep '^Seccomp:' /proc/self/status | tr -d ' \t'"); check privileged-process-allowed-by-operator 0 Seccomp:0 $? "$out"
  if grep -qw pids "$(grep -m1 ' cgroup2 ' /proc/mounts | cut -d' ' -f2)/cgroup.controllers" 2>/dev/null; then
    out=$(run busybox cat /sys/fs/cgroup/pids.max); check pids-default-4096 0 4096 $? "$out"
    out=$(run --pids-limit -1 busybox cat /sys/fs/cgroup/pids.max); check pids-limit-unlimited 0 max $? "$out"
  else
    out=$(run --pids-limit 100 busybox true 2>&1 >/dev/null | grep -c 'pids controller is not available'); check pids-limit-needs-the-controller 0 1 $? "$out"
  fi
fi

# Health checks, by Docker's rules, run by the container's monitor through its agent (as
# exec): starting until a probe passes or --health-retries fail in a row (unhealthy;
# failures in the start period do not count),
# healthy once one passes; ps shows and filters it, inspect has State.Health (the last
# probes) and Config.Healthcheck, each change is a health_status event. A hostile probe:
# one that floods output has it cut at 4 KiB; one that never ends is killed at its
# timeout (exit -1) before the next starts, so probes do not pile up.
waith() { i=0; while [ "$(arca inspect -f '{{.State.Health.Status}}' "$1")" != "$2" ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.1; done; }
t0=$(date +%s)
arca run -d --isolation="$iso" --name hc --health-cmd 'test -f /tmp/ok' --health-interval 1s --health-retries 3 busybox sleep 1000 >/dev/null
arca run -d --isolation="$iso" --name hflood --health-cmd 'head -c 100000 /dev/zero | tr "\0" x' --health-interval 1s busybox sleep 1000 >/dev/null
arca run -d --isolation="$iso" --name hslow --health-cmd 'exec sleep 1000' --health-interval 1s --health-timeout 1s --health-retries 1 busybox sleep 999 >/dev/null
arca run -d --isolation="$iso" --name hstart --health-cmd false --health-interval 1s --health-start-period 5m busybox sleep 1000 >/dev/null
sleep 2
out=$(arca inspect -f '{{.State.Health.Status}} {{.State.Health.FailingStreak}} {{json .Config.Healthcheck}}' hstart; arca ps --filter name=hstart --format '{{.Status}}' | grep -o '(health: starting)$'); check health-starting 0 'starting 0 {"Interval":1000000000,"StartPeriod":300000000000,"Test":["CMD-SHELL","false"]}
(health: starting)' $? "$out"
arca rm -f hstart >/dev/null
waith hc unhealthy; waith hslow unhealthy
out=$(arca inspect -f '{{.State.Health.Status}} {{ge .State.Health.FailingStreak 3}} {{(index .State.Health.Log 0).ExitCode}}' hc; arca ps --filter health=unhealthy --format '{{.Names}} {{.Status}}' | sed 's/ Up .* (/ Up (/'); check health-unhealthy 0 "unhealthy true 1
hslow Up (unhealthy)
hc Up (unhealthy)" $? "$out"
arca exec hc touch /tmp/ok; waith hc healthy
out=$(arca inspect -f '{{.State.Health.Status}} {{.State.Health.FailingStreak}}' hc; arca ps --filter health=healthy --filter name=hc --format '{{.Names}} {{.Status}}' | sed 's/ Up .* (/ Up (/'; arca ps --filter health=none --format '{{.Names}}' | grep -c '^hc$' || true); check health-healthy 0 "healthy 0
hc Up (healthy)
0" $? "$out"
out=$(arca events --since "$t0" --until 0s --filter container=hc --filter event=health_status --format '{{.Action}}'); check health-events 0 "health_status: unhealthy
health_status: healthy" $? "$out"
waith hflood healthy
out=$(arca inspect -f '{{(index .State.Health.Log 0).Output}}' hflood | tr -d '\n' | wc -c; arca inspect -f '{{(index .State.Health.Log 0).Output}}' hflood | grep -c 'xxx[.][.][.]$'); check health-output-cut 0 "4099
1" $? "$out"
sleep 3
out=$(arca inspect -f '{{(index .State.Health.Log 0).ExitCode}} {{(index .State.Health.Log 0).Output}}' hslow; n=$(arca exec hslow ps | grep -c '[s]leep 1000'); [ "$n" -le 1 ] && echo at-most-one-probe); check health-timeout-kills 0 "-1 Health check exceeded timeout (1s)
at-most-one-probe" $? "$out"
arca rm -f hc hflood hslow >/dev/null
out=$(arca run --no-healthcheck --health-retries 2 busybox true 2>&1; echo "rc=$?"; arca run --health-interval -1s busybox true 2>&1; arca run --health-interval 10us --health-cmd true busybox true 2>&1; echo "rc=$?"); check health-flags-refused 0 "arca: --no-healthcheck conflicts with --health-* options
rc=125
arca: --health-interval cannot be negative
arca: Interval in Healthcheck cannot be less than 1ms
rc=125" $? "$out"
out=$(arca ps --filter health=sick 2>&1; echo "rc=$?"); check health-filter-unknown 0 "arca: Unrecognised filter value for health: sick
rc=1" $? "$out"

# Docker's management commands and housekeeping: container ls, image ls, images' table,
# completion scripts; system df counts containers; container prune removes the stopped
# ones only (a label filter first), printing their IDs; image prune keeps what is used.
arca create --isolation="$iso" --name pr1 --label keep=yes busybox true >/dev/null
pr2=$(arca run -d --isolation="$iso" --name pr2 busybox sleep 1000)
arca create --isolation="$iso" --name pr3 busybox true >/dev/null
pr3=$(arca inspect -f '{{.Id}}' pr3)
out=$(arca container ls --format '{{.Names}}'; arca image ls --format '{{.Repository}}:{{.Tag}}' busybox; arca images busybox | head -n 1 | tr -s ' '); check management-aliases 0 "pr2
busybox:latest
REPOSITORY TAG IMAGE ID CREATED SIZE" $? "$out"
out=$(arca history busybox | head -n 1 | tr -s ' '; [ "$(arca image history -q busybox | head -n 1)" = "$(arca images -q busybox)" ] && echo same-id; arca history no-such-image 2>&1; echo "rc=$?"); check history 0 "IMAGE CREATED CREATED BY SIZE COMMENT
same-id
arca: No such image: no-such-image
rc=1" $? "$out"
out=$(arca system df | awk 'NR == 1 {print $1, $2, $3} $1 == "Containers" {print $1, $2, $3}'); check system-df 0 "TYPE TOTAL ACTIVE
Containers 3 1" $? "$out"
out=$(arca container prune -f --filter 'label!=keep' | head -n 2; arca ps -a --format '{{.Names}}' | sort | tr '\n' ' '); check container-prune 0 "Deleted Containers:
$pr3
pr1 pr2 " $? "$out"
out=$(echo n | arca container prune 2>/dev/null; arca ps -aq | wc -l); check container-prune-asks 0 2 $? "$out"
out=$(arca image prune -f | tail -n 1; arca image prune -af | grep -c '^untagged: volbox:latest$'; arca images --format '{{.Repository}}'); check image-prune-keeps-used 0 "Total reclaimed space: 0B
1
busybox" $? "$out"
# A reader that hangs up early ends arca quietly with SIGPIPE's 141, not a panic.
out=$({ arca completion bash 2>"$state.pipe"; echo "rc=$?" >>"$state.pipe"; } | head -c 1 >/dev/null; grep -c panicked "$state.pipe"; grep -o 'rc=[0-9]*' "$state.pipe"); rm -f "$state.pipe"
check broken-pipe-quiet 0 "0
rc=141" $? "$out"
out=$(arca completion bash | grep -c '_arca()'; arca completion fish | grep -c '^complete -c arca -n "__fish_arca_needs_command" -f -a "run"'; arca completion tcsh 2>/dev/null; echo "rc=$?"); check completion 0 "1
1
rc=125" $? "$out"
arca rm -f pr1 "$pr2" >/dev/null
# system prune removes the warm-start templates too (the next run makes one again).
out=$(arca system prune -f >/dev/null; ls "$state/templates" 2>/dev/null | wc -l; run busybox echo again); check system-prune-templates 0 "0
again" $? "$out"

left=$(ls "$state/containers" 2>/dev/null | wc -l); check nothing-left 0 0 0 "$left"
[ $fails -eq 0 ]
