#!/bin/sh
# The arca-runtime (OCI runtime CLI) scenario table, with process isolation on this host:
#   oci-cases.sh IMAGE_TAR
# Needs arca-runtime and arca-agent on PATH, root, and the busybox rootfs beside
# IMAGE_TAR (tests/e2e/guest.rs makes both). With podman installed, podman runs a
# container through arca-runtime too. Prints "ok NAME" or "FAIL NAME: ..." per case;
# exits 1 if any failed.
img=$1
rootfs=${img%/*}/rootfs
fails=0
check() { # NAME EXPECTED_RC EXPECTED_STDOUT ACTUAL_RC ACTUAL_STDOUT
  if [ "$4" = "$2" ] && [ "$5" = "$3" ]; then echo "ok $1"; else echo "FAIL $1: rc $4 (want $2), stdout [$5] (want [$3])"; fails=$((fails+1)); fi
}
# A pids limit where cgroup v2 has the pids controller (on a hybrid host, v1 keeps it
# and Arca, which uses v2 only, refuses the limit rather than drop it).
cg2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
if grep -qw pids "$cg2/cgroup.controllers" 2>/dev/null; then
  pids='"resources": {"pids": {"limit": 64}},' pidsmax=64 podmanpids=
else
  pids= pidsmax=no-pids podmanpids='--pids-limit -1'
fi
# podman's default rlimits (nofile and nproc 1048576) are above what a sandboxed CI
# root may set: the host's own, as numbers.
podmanargs="$podmanpids --ulimit nofile=$(ulimit -Sn):$(ulimit -Hn) --ulimit nproc=1024:1024"
work=$(mktemp -d)
mkdir "$work/bindsrc"
root=$work/root
rt() { arca-runtime --root "$root" "$@"; }
# bundle NAME ARGS_JSON [EXTRA_TOP_LEVEL_JSON [ANNOTATION_JSON]]: a bundle whose
# config.json runs ARGS_JSON in the busybox rootfs, as runc's default spec has it.
bundle() {
  b=$work/$1; mkdir -p "$b"
  ann=${4-'"io.arca.isolation": "process"'}
  cat >"$b/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": $2,
    "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FOO=bar"], "cwd": "/",
    "capabilities": {"bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"]},
    "noNewPrivileges": true},
  "root": {"path": "$rootfs", "readonly": false},
  "hostname": "oci",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/mnt", "type": "bind", "source": "$work/bindsrc", "options": ["rbind", "ro", "noexec", "nosuid", "nodev"]}
  ],
  "annotations": {$ann},
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "sysctl": {"net.ipv4.ip_unprivileged_port_start": "80"},
    $pids
    "maskedPaths": ["/proc/kcore", "/proc/cmdline"], "readonlyPaths": ["/proc/sys"]
  }${3:+, $3}
}
JSON
  echo "$b"
}

b=$(bundle echo '["echo", "hello"]')
out=$(rt run -b "$b" c-echo); check run-echo 0 hello $? "$out"
out=$(rt list -q); check run-removes-its-container 0 "" $? "$out"
b=$(bundle exit '["sh", "-c", "echo err >&2; exit 3"]')
out=$(rt run -b "$b" c-exit 2>/dev/null); check run-exit-code 3 "" $? "$out"
b=$(bundle conf '["sh", "-c", "hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; cat /sys/fs/cgroup/pids.max 2>/dev/null || echo no-pids; grep ^CapEff /proc/self/status; wc -c </proc/timer_list; wc -c </proc/cmdline; grep \" /mnt \" /proc/mounts | grep -c ro,nosuid,nodev,noexec"]')
out=$(rt run -b "$b" c-conf 2>/dev/null); check config-applied 0 "oci
80
$pidsmax
CapEff:	0000000000000420
0
0
1" $? "$out"
out=$(echo piped | rt run -b "$(bundle stdin '["cat"]')" c-stdin); check run-stdin 0 piped $? "$out"
# The root filesystem is the bundle's, written in place as runc writes it.
out=$(rt run -b "$(bundle write '["sh", "-c", "echo kept > /oci-wrote"]')" c-write; cat "$rootfs/oci-wrote"; rm -f "$rootfs/oci-wrote"); check writes-in-place 0 kept $? "$out"

# The lifecycle as podman and containerd drive it: create (stdio handed over, the
# monitor's pid in the pid file), state, start, exec, ps, kill, delete.
b=$(bundle life '["sh", "-c", "echo started; exec sleep 1000"]')
rt create -b "$b" --pid-file "$work/life.pid" c-life >"$work/life.out" 2>&1; rc=$?
pid=$(cat "$work/life.pid" 2>/dev/null)
st=$(rt state c-life | grep -E '"(status|pid)"' | tr -d ' ,')
out=$(cat "$work/life.out"; echo "$st"); check create 0 "\"pid\":$pid
\"status\":\"created\"" $rc "$out"
rt start c-life; i=0; while ! grep -q started "$work/life.out" && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
out=$(cat "$work/life.out"; rt state c-life | grep '"status"' | tr -d ' ,'); check start 0 'started
"status":"running"' $? "$out"
out=$(rt start c-life 2>&1; echo "rc=$?"); check start-twice-refused 0 "arca-runtime: cannot start a container in the running state
rc=1" $? "$out"
out=$(rt exec c-life sh -c 'echo in-$(hostname)-$FOO; exit 4'); check exec-inherits-the-containers-process 4 in-oci-bar $? "$out"
out=$(rt kill c-life 0; echo "rc=$?"); check kill-0-asks-whether-it-runs 0 "rc=0" $? "$out"
rt exec --detach --pid-file "$work/exec.pid" c-life sh -c 'sleep 0.3; echo later' >"$work/exec.out"; rc=$?
epid=$(cat "$work/exec.pid"); i=0; while [ -d "/proc/$epid" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
out=$(cat "$work/exec.out"); check exec-detached 0 later $rc "$out"
out=$(rt ps --format json c-life | grep -c '^\[[0-9]'); check ps-json 0 1 $? "$out"
out=$(rt delete c-life 2>&1; echo "rc=$?"); check delete-running-refused 0 "arca-runtime: cannot delete container c-life that is not stopped: running
rc=1" $? "$out"
rt kill c-life KILL
i=0; while [ -d "/proc/$pid" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
out=$(rt state c-life | grep -E '"(status|pid)"' | tr -d ' ,'); check kill-stops 0 '"pid":0
"status":"stopped"' $? "$out"
agent=$(sed -n 's/.*"agent_pid": \([0-9]*\).*/\1/p' "$root/c-life/state.json")
rt delete c-life
out=$([ -e "$root/c-life" ] && echo dir-left; [ -n "$agent" ] && [ -d "/proc/$agent" ] && echo agent-left; [ -e /sys/fs/cgroup/arca-runtime/c-life ] && echo cgroup-left; echo done); check delete-leaves-nothing 0 done $? "$out"

# A created container deleted before it started, and one deleted by force while running.
rt create -b "$(bundle never '["true"]')" c-never >/dev/null 2>&1
out=$(rt delete --force c-never && rt list -q); check delete-created 0 "" $? "$out"
rt run -d -b "$(bundle force '["sleep", "1000"]')" c-force >/dev/null 2>&1
out=$(rt delete --force c-force && rt list -q); check delete-force-running 0 "" $? "$out"
out=$(rt delete --force c-never 2>&1; echo "rc=$?"); check delete-force-missing 0 "rc=0" $? "$out"
out=$(rt state c-never 2>&1; echo "rc=$?"); check state-missing 0 "arca-runtime: container c-never does not exist
rc=1" $? "$out"

# Refused before anything is made: what Arca cannot apply (named), a microVM for now,
# ids that would leave the root. Other local users cannot read the root.
out=$(rt run -b "$(bundle tty '["true"]' '"hooks": {"prestart": [{"path": "/bin/true"}]}')" c-hooks 2>&1; echo "rc=$?"; rt list -q); check refused-hooks 0 "arca-runtime: config.json: hooks is not supported by arca-runtime
rc=1" $? "$out"
out=$(rt run -b "$(bundle vm '["true"]' '' '"io.arca.isolation": "vm"')" c-vm 2>&1 | grep -c 'annotation io.arca.isolation=process'); check vm-refused-for-now 0 1 $? "$out"
# CAP_MKNOD without a device filter: root in the container could make a node for a host
# disk and write to it.
b=$(bundle mknod '["true"]')
sed -i 's/"bounding": \["CAP_KILL"/"bounding": ["CAP_MKNOD", "CAP_KILL"/' "$b/config.json"
out=$(rt run -b "$b" c-mknod 2>&1; echo "rc=$?"; rt list -q); check refused-mknod 0 "arca-runtime: config.json: CAP_MKNOD (Arca has no device filter to make it harmless) is not supported by arca-runtime
rc=1" $? "$out"
out=$(rt run -b "$b" ../escape 2>&1; echo "rc=$?"; ls "$work" | grep -c escape; true); check id-escaping-root-refused 0 "arca-runtime: Invalid container id \"../escape\": use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit
rc=1
0" $? "$out"
out=$(rt run -b "$(bundle hostile '["sh", "-c", "echo 1 > /proc/sys/kernel/pid_max 2>/dev/null || echo denied"]')" c-hostile); check container-cannot-set-host-sysctl 0 denied $? "$out"
out=$(stat -c %a "$root"); check root-private 0 700 $? "$out"

# podman, through arca-runtime (Debian's podman: conmon holds the monitor, podman
# deletes the container with --rm).
if command -v podman >/dev/null 2>&1; then
  P="podman --root $work/podman --runroot $work/podman-run --storage-driver vfs --cgroup-manager cgroupfs --runtime $(command -v arca-runtime)"
  podmanargs="$podmanargs --cgroup-parent /arca-e2e-$$"
  $P load -i "$img" >/dev/null 2>&1
  out=$($P run --rm --annotation io.arca.isolation=process --network none $podmanargs busybox sh -c 'echo via-podman; hostname | wc -c' 2>&1); check podman-run 0 "via-podman
13" $? "$out"
  out=$($P run --rm --annotation io.arca.isolation=process --network none $podmanargs busybox sh -c 'exit 5' >/dev/null 2>&1; echo "rc=$?"; $P ps -aq | wc -l); check podman-exit-code 0 "rc=5
0" $? "$out"
  out=$(ls "$cg2/arca-e2e-$$" 2>/dev/null | grep -c libpod-; true); check podman-cgroups-removed 0 0 $? "$out"
  $P rm -af >/dev/null 2>&1
  rmdir "$cg2/arca-e2e-$$" 2>/dev/null
else
  echo "skip podman: not installed (make test-deps installs it)"
fi
out=$(rt list -q); check nothing-left 0 "" $? "$out"
rm -rf "$work"
[ "$fails" -eq 0 ]
