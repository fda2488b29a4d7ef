#!/bin/sh
# The local-user table: what another local user (nobody) can reach of Arca's state after
# root loaded an image and ran containers with a secret in their environment.
#   sh local-user-cases.sh IMAGE_TAR
# Needs root, setpriv and socat; $ARCA_STATE_DIR must be inside a directory nobody can
# traverse (so that only Arca's own modes stand between nobody and the state).
set -u
image=$1
state=${ARCA_STATE_DIR:?}
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }

arca load -i "$image" >/dev/null || { echo "FAIL load"; exit 1; }
arca run --rm --isolation=process --network none -e SECRET=hunter2 busybox true ||
  bad "a foreground run"
arca run -d --name secret --isolation=process --network none -e SECRET=hunter2 busybox \
  sh -c 'while :; do echo tick; sleep 0.2; done' >/dev/null || bad "a detached run"
# Give the monitor time to serve attach.sock.
dir="$state/containers/$(arca inspect -f '{{.Id}}' secret | cut -c1-12)"
i=0
while [ ! -S "$dir/attach.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done

# Hostile: nobody lists, reads, runs and connects to everything root can see below the
# state root.
paths=$(find "$state" -mindepth 1 | wc -l)
[ "$paths" -gt 50 ] && ok "root sees $paths paths below the state root" || bad "only $paths paths"
if as_nobody ls "$state" >/dev/null 2>&1; then bad "nobody lists the state root"; else ok "nobody cannot list the state root"; fi
reached=$(find "$state" -mindepth 1 | while read -r p; do
  as_nobody stat "$p" >/dev/null 2>&1 && echo "$p"
done | head -5)
[ -z "$reached" ] && ok "nobody reaches no path below the state root" || bad "nobody reaches: $reached"
secret_files=$(grep -rl hunter2 "$state" 2>/dev/null | head -3)
for f in $secret_files; do
  if as_nobody cat "$f" >/dev/null 2>&1; then bad "nobody reads $f"; fi
done
[ -n "$secret_files" ] && ok "the files that hold -e values are not readable by nobody"
exe=$(find "$state/images" -path '*/rootfs/bin/busybox' | head -1)
# (From a shell of nobody's: setpriv finds its command before it drops privileges.)
if [ -n "$exe" ] && as_nobody sh -c '"$1" true' sh "$exe" 2>/dev/null; then bad "nobody runs an image's binary"; else ok "nobody cannot run an image's binaries"; fi
for s in $(find "$state" -type s); do
  if as_nobody socat -u OPEN:/dev/null "UNIX-CONNECT:$s" 2>/dev/null; then bad "nobody connects to $s"; fi
done
ok "nobody cannot connect to any of $(find "$state" -type s | wc -l) sockets"
mode=$(stat -c %a "$state")
[ "$mode" = 700 ] && ok "the state root is 0700" || bad "the state root is $mode"
# Images' and containers' own files (rootfs, writable layers, volumes) keep their modes:
# the 0700 directories above them keep nobody out (checked above).
loose=$(find "$state" -mindepth 1 \( -type f -o -type s \) -perm /077 ! -path '*/rootfs/*' \
  ! -path '*/rw/upper/*' ! -path '*/volumes/*/_data/*' | head -3)
[ -z "$loose" ] && ok "records, logs, disks and sockets are private (0600)" || bad "loose files: $loose"

# A second wall: were the directories opened up by mistake, the servers still refuse
# another user (SO_PEERCRED).
chmod 755 "$state" "$state/containers" "$dir"
got=$(as_nobody timeout 3 socat -u "UNIX-CONNECT:$dir/attach.sock" - 2>/dev/null | head -c 100)
[ -z "$got" ] && ok "attach.sock gives nobody nothing" || bad "attach.sock gave nobody: $got"
got=$(timeout 2 socat -u "UNIX-CONNECT:$dir/attach.sock" - 2>/dev/null | head -c 100)
case $got in *tick*) ok "attach.sock serves root" ;; *) bad "attach.sock gave root: $got" ;; esac
# The host agent answers a hello from root, and closes on nobody without a word.
hello='{"version":2,"channel":"control"}'
frame() { len=${#1}; printf "\\$(printf %03o $((len >> 24 & 255)))\\$(printf %03o $((len >> 16 & 255)))\\$(printf %03o $((len >> 8 & 255)))\\$(printf %03o $((len & 255)))%s" "$1"; }
got=$(frame "$hello" | as_nobody timeout 3 socat -t 2 - "UNIX-CONNECT:$dir/agent.sock" 2>/dev/null | wc -c)
[ "$got" = 0 ] && ok "the host agent refuses nobody" || bad "the host agent answered nobody ($got bytes)"
got=$(frame "$hello" | timeout 3 socat -t 2 - "UNIX-CONNECT:$dir/agent.sock" 2>/dev/null | wc -c)
[ "$got" -gt 0 ] && ok "the host agent answers root" || bad "the host agent did not answer root"
# Any arca command tightens a loosened state directory again.
arca ps >/dev/null
modes=$(stat -c %a "$state" "$state/containers" "$dir" | tr '\n' ' ')
[ "$modes" = "700 700 700 " ] && ok "arca tightens a loosened state directory" || bad "modes after arca ps: $modes"

arca rm -f secret >/dev/null || bad "rm -f"
echo "$fails failed"
[ "$fails" -eq 0 ]
