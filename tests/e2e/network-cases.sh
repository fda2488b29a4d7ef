#!/bin/sh
# The networking scenario table, for one isolation mode:
#   network-cases.sh vm|process IMAGE_TAR
# Needs root, `arca` on PATH (and what it needs), iproute2's `ip`, `nft` and a `wget`.
# Prints "ok NAME" or "FAIL NAME: ..." per case; exits 1 if any failed. POSIX sh, so
# it runs in the lab's busybox too.
iso=$1 img=$2
fails=0
check() { # NAME EXPECTED_RC EXPECTED_STDOUT ACTUAL_RC ACTUAL_STDOUT
  if [ "$4" = "$2" ] && [ "$5" = "$3" ]; then echo "ok $1"; else echo "FAIL $1: rc $4 (want $2), stdout [$5] (want [$3])"; fails=$((fails+1)); fi
}
run() { arca run --rm --isolation="$iso" "$@"; }
fetch() { # URL: the page, retrying while the server comes up
  i=0
  while [ $i -lt 50 ]; do
    page=$(timeout 5 wget -q -O - "$1" 2>/dev/null) && { echo "$page"; return 0; }
    i=$((i+1)); sleep 0.2
  done
  return 1
}
field() { arca inspect "$1" | grep "\"$2\"" | head -n 1 | sed 's/.*: *"\{0,1\}\([^",]*\)"\{0,1\},\{0,1\}$/\1/'; }
leftovers() { # arca links, arca nft tables, and listeners on the given port
  n=$(ip -o link | grep -c ' arca')
  t=$(nft list tables 2>/dev/null | grep -c ' arca')
  echo "links=$n tables=$t"
}
web() { # NAME PORT [NETWORK]: a detached httpd serving "hello from NAME"
  arca run -d --isolation="$iso" --name "$1" -p "$2:80" ${3:+--network "$3"} busybox \
    sh -c "mkdir -p /www && echo hello from $1 > /www/index.html && exec httpd -f -p 80 -h /www" >/dev/null
}

arca load -i "$img" >/dev/null || { echo "FAIL load"; exit 1; }

# Networks: create, list, inspect, refuse bad input.
out=$(arca network create testnet); check network-create 0 testnet $? "$out"
out=$(arca network create testnet 2>/dev/null); check network-create-duplicate 1 "" $? "$out"
out=$(arca network create --subnet 10.89.77.5/24 badnet 2>&1 >/dev/null | grep -c 'host bits'); check network-bad-subnet 0 1 $? "$out"
out=$(arca network ls -q | tr '\n' ' '); check network-ls 0 "bridge testnet " $? "$out"
out=$(arca network inspect testnet | grep -c '"bridge": "arcabr'); check network-inspect 0 1 $? "$out"
out=$(run --network nosuchnet busybox true 2>&1 >/dev/null | grep -c 'network nosuchnet not found'); check run-unknown-network 0 1 $? "$out"

# A web server published with -p, fetched from the host.
web web 18080 testnet
out=$(fetch http://127.0.0.1:18080/); check publish-fetch 0 "hello from web" $? "$out"
out=$(arca port web); check port 0 "80/tcp -> 0.0.0.0:18080" $? "$out"
out=$(run -p 18080:80 busybox true 2>&1 >/dev/null | grep -c 'port is already allocated'); check publish-port-in-use 0 1 $? "$out"
webip=$(field web ip)
out=$(run --network testnet busybox sh -c 'ip -o -4 addr show eth0 | grep -c "inet 10\.89\."'); check address 0 1 $? "$out"

# UDP: a datagram to the published port comes back from the container's server.
udp_ask() { # PORT MESSAGE: the answer, retrying while the server comes up
  i=0
  while [ $i -lt 20 ]; do
    answer=$(printf '%s' "$2" | socat -t 1 - "UDP:127.0.0.1:$1" 2>/dev/null)
    [ -n "$answer" ] && { echo "$answer"; return 0; }
    i=$((i+1)); sleep 0.2
  done
  return 1
}
arca run -d --isolation="$iso" --name echo --network testnet -p 15353:53/udp busybox udp-echo 53 >/dev/null
out=$(arca port echo); check port-udp 0 "53/udp -> 0.0.0.0:15353" $? "$out"
out=$(udp_ask 15353 hello); check publish-udp 0 "echo:hello" $? "$out"
out=$(run -p 15353:53/udp busybox true 2>&1 >/dev/null | grep -c 'port is already allocated'); check publish-udp-port-in-use 0 1 $? "$out"
out=$(arca rm -f echo); check rm-echo 0 echo $? "$out"
out=$(run -p 15353:53/udp busybox true); check udp-listener-gone 0 "" $? "$out"

# Reachability: by name on the same network; not from another network; not from none.
out=$(run --network testnet busybox wget -q -O - http://web/); check same-network-by-name 0 "hello from web" $? "$out"
web web2 18083 testnet
out=$(fetch http://127.0.0.1:18083/); check web2-serves 0 "hello from web2" $? "$out"
out=$(arca exec web wget -q -O - http://web2/); check earlier-container-resolves-later-one 0 "hello from web2" $? "$out"
out=$(arca rm -f web2); check rm-web2 0 web2 $? "$out"
out=$(run busybox sh -c "nc -w 2 $webip 80 </dev/null >/dev/null 2>&1 && echo reached || echo blocked"); check other-network-blocked 0 blocked $? "$out"
out=$(run --network none busybox sh -c "ls /sys/class/net | tr '\n' ' '; nc -w 2 $webip 80 </dev/null >/dev/null 2>&1 && echo reached || echo blocked"); check none-loopback-only 0 "lo blocked" $? "$out"
out=$(arca network rm testnet 2>&1 >/dev/null | grep -c 'active endpoints'); check network-rm-in-use 0 1 $? "$out"

# Data integrity across the link, where checksum and segmentation offloads would
# corrupt silently: 4 MiB of random bytes from a container to another by name (with
# microVMs: guest tx, TAP, bridge, TAP, guest rx), from a container to the host, and
# from the host to a container, md5 compared at both ends. A listening busybox nc
# whose stdin ends half-closes the connection, and the sending nc then stops: the
# listeners read stdin from a FIFO held open instead.
bb=$(command -v busybox 2>/dev/null)
sender() { # HOST PORT: a container command sending 4 MiB of random bytes, then printing their md5
  echo "dd if=/dev/urandom of=/tmp/d bs=65536 count=64 2>/dev/null; i=0; until nc $1 $2 </tmp/d 2>/dev/null; do i=\$((i+1)); [ \$i -lt 100 ] || exit 1; sleep 0.2; done; md5sum </tmp/d"
}
tmpd=$(mktemp -d)
arca run -d --isolation="$iso" --name sink --network testnet busybox \
  sh -c 'mkfifo /tmp/f && exec 3<>/tmp/f && nc -l -p 5000 <&3 | md5sum' >/dev/null
if sent=$(run --network testnet busybox sh -c "$(sender sink 5000)"); then rc=$(arca wait sink); else rc=none; fi
got=$(arca logs sink); arca rm -f sink >/dev/null
check integrity-container-to-container 0 "$sent" "$rc" "$got"
mkfifo "$tmpd/f"
( exec 3<>"$tmpd/f"; $bb nc -l -p 18090 <&3 | md5sum >"$tmpd/got" ) & l=$!
if sent=$(run busybox sh -c "$(sender 10.89.0.1 18090)"); then wait $l; rc=$?; else echo | $bb nc 127.0.0.1 18090 >/dev/null 2>&1; wait $l; rc=none; fi
check integrity-container-to-host 0 "$sent" "$rc" "$(cat "$tmpd/got")"
mkdir "$tmpd/www" && dd if=/dev/urandom of="$tmpd/www/data" bs=65536 count=64 2>/dev/null
$bb httpd -f -p 18091 -h "$tmpd/www" & h=$!
want=$(md5sum <"$tmpd/www/data")
out=$(run busybox sh -c 'wget -q -O - http://10.89.0.1:18091/data | md5sum'); check integrity-host-to-container 0 "$want" $? "$out"
kill $h; wait $h 2>/dev/null; rm -rf "$tmpd"

# rm -f: nothing left (no bridge, link, nft table or listener).
out=$(arca rm -f web); check rm-force 0 web $? "$out"
out=$(leftovers); check nothing-left-after-rm 0 "links=0 tables=0" $? "$out"
out=$(run -p 18080:80 busybox true); check listener-gone 0 "" $? "$out"

# SIGKILL of the sandbox (VMM or host agent): its monitor cleans up.
web crash1 18081 testnet
out=$(fetch http://127.0.0.1:18081/); check crash1-serves 0 "hello from crash1" $? "$out"
kill -9 "$(field crash1 sandbox_pid)"
i=0; while [ "$(field crash1 status)" != exited ] && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
out=$(arca ps -q; leftovers); check sandbox-killed-cleaned 0 "links=0 tables=0" $? "$out"
arca rm crash1 >/dev/null

# SIGKILL of the monitor and the sandbox together: the next `arca ps` cleans up.
web crash2 18082 testnet
out=$(fetch http://127.0.0.1:18082/); check crash2-serves 0 "hello from crash2" $? "$out"
kill -9 "$(field crash2 monitor_pid)" "$(field crash2 sandbox_pid)"
sleep 0.2
out=$(arca ps -q; leftovers); check all-killed-ps-cleans 0 "links=0 tables=0" $? "$out"
out=$(run -p 18082:80 busybox true); check crash2-listener-gone 0 "" $? "$out"
arca rm crash2 >/dev/null

out=$(arca network rm testnet); check network-rm 0 testnet $? "$out"
out=$(arca network ls -q | tr '\n' ' '); check network-gone 0 "bridge " $? "$out"

[ $fails -eq 0 ]
