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
leftovers() { # arca links and the nft tables of arca bridges
  n=$(ip -o link | grep -c ' arca')
  t=$(nft list tables 2>/dev/null | grep -c ' arca_arcabr')
  echo "links=$n tables=$t"
}
mac_of() { # ADDRESS: the MAC Arca gives the container holding it (02:42 and its bytes)
  printf '02:42:%02x:%02x:%02x:%02x' $(echo "$1" | tr . ' ')
}
link_local_of() { # ADDRESS: the IPv6 link-local address its MAC makes (EUI-64)
  set -- $(echo "$1" | tr . ' ')
  printf 'fe80::42:%xff:fe%02x:%x' "$1" "$2" $(($3 * 256 + $4))
}
fwd0=$(cat /proc/sys/net/ipv4/ip_forward)
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

# -P: every port the image EXPOSEs and --expose adds, each on a free host port; a -p
# of the same port wins; --expose refuses a bad port.
printf 'FROM busybox\nEXPOSE 80 53/udp\n' | arca build -q -t exposer - >/dev/null 2>&1; check exposer-build 0 "" $? ""
arca run -d --isolation="$iso" --name pall -P --expose 7000-7001 -p 18081:53/udp --network testnet exposer \
  sh -c "mkdir -p /www && echo hello from pall > /www/index.html && exec httpd -f -p 80 -h /www" >/dev/null
out=$(arca port pall | sed '/:18081$/!s/0\.0\.0\.0:[0-9]*$/HOST/' | sort | tr '\n' ' '); check publish-all-ports 0 "53/udp -> 0.0.0.0:18081 7000/tcp -> HOST 7001/tcp -> HOST 80/tcp -> HOST " $? "$out"
hp=$(arca port pall | grep '^80/tcp' | sed 's/.*://')
out=$(fetch "http://127.0.0.1:$hp/"); check publish-all-fetch 0 "hello from pall" $? "$out"
out=$(arca rm -f pall); check rm-pall 0 pall $? "$out"
out=$(run --expose 0 busybox true 2>&1 >/dev/null | grep -c 'Invalid --expose'); check expose-invalid 0 1 $? "$out"

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
out=$(run --network testnet busybox wget -q -O - "http://$(arca inspect -f '{{.Id}}' web | cut -c1-12)/"); check same-network-by-short-id 0 "hello from web" $? "$out"
web web2 18083 testnet
out=$(fetch http://127.0.0.1:18083/); check web2-serves 0 "hello from web2" $? "$out"
# (The resolver reads a new container's names as its lease appears: asked for up to 3 s.)
out=$(arca exec web sh -c 'i=0; until wget -q -O - http://web2/ 2>/dev/null; do i=$((i+1)); [ $i -ge 30 ] && exit 1; sleep 0.1; done'); check earlier-container-resolves-later-one 0 "hello from web2" $? "$out"
out=$(arca rm -f web2); check rm-web2 0 web2 $? "$out"
out=$(run busybox sh -c "nc -w 2 $webip 80 </dev/null >/dev/null 2>&1 && echo reached || echo blocked"); check other-network-blocked 0 blocked $? "$out"
out=$(run --network none busybox sh -c "ls /sys/class/net | tr '\n' ' '; nc -w 2 $webip 80 </dev/null >/dev/null 2>&1 && echo reached || echo blocked"); check none-loopback-only 0 "lo blocked" $? "$out"
out=$(arca network rm testnet 2>&1 >/dev/null | grep -c 'active endpoints'); check network-rm-in-use 0 1 $? "$out"

# Embedded DNS (Docker's, served as Podman's aardvark-dns serves it: on the network's
# gateway, on the host): containers' resolv.conf names the gateway, whose resolver answers
# the names on the network at query time: a container started later, a --network-alias,
# a new name after rename, a restarted container's new address; a removed container no
# longer resolves; other names go to the upstream servers (here --dns: a stand-in for
# the outside world, answering *.test). A container still serves DNS on its own port 53
# (publish-udp above). A hostile container sends the resolver garbage and floods it: it
# keeps answering; the process that parses its queries is nobody, without capabilities,
# under seccomp.
ans() { # CONTAINER NAME: the address NAME resolves to there (retried for 3 s while none)
  i=0; while [ $i -lt 30 ]; do
    a=$(arca exec "$1" nslookup "$2" 2>/dev/null | sed -n 's/^Address: \([0-9.]*\)$/\1/p' | head -n 1)
    [ -n "$a" ] && { echo "$a"; return 0; }
    i=$((i+1)); sleep 0.1
  done
}
arca run -d --isolation="$iso" --name upstream --network testnet busybox udp-echo --dns 53 >/dev/null
upip=$(field upstream ip)
arca run -d --isolation="$iso" --name cl --network testnet --dns "$upip" busybox sleep 1000 >/dev/null
out=$(arca exec cl cat /etc/resolv.conf); check dns-resolv-conf 0 "nameserver $(echo "$upip" | sed 's/[0-9]*$/1/')" $? "$out"
arca run -d --isolation="$iso" --name late --network testnet --network-alias late-alias busybox sleep 1000 >/dev/null
lateip=$(field late ip)
out=$(ans cl late; ans cl late-alias; ans cl LATE); check dns-later-container-and-alias 0 "$lateip
$lateip
$lateip" $? "$out"
out=$(ans cl outside.test; arca logs upstream | grep -q '^asked:outside.test$' && echo asked-upstream); check dns-forwarded 0 "192.0.2.1
asked-upstream" $? "$out"
arca rename late moved; sleep 1.5
out=$(ans cl moved; arca exec cl nslookup late >/dev/null 2>&1 || echo late-gone); check dns-rename 0 "$lateip
late-gone" $? "$out"
arca stop -t 1 moved >/dev/null
arca run -d --isolation="$iso" --name filler --network testnet busybox sleep 1000 >/dev/null
arca start moved >/dev/null
movedip=$(field moved ip)
out=$([ "$movedip" != "$lateip" ] && echo new-address; ans cl moved; ans cl filler); check dns-restarted-new-address 0 "new-address
$movedip
$lateip" $? "$out"
arca rm -f moved >/dev/null; sleep 0.5
out=$(arca exec cl nslookup moved 2>&1 | grep -q "can't find moved: NXDOMAIN" && echo nxdomain); check dns-removed 0 "nxdomain" $? "$out"
gw=$(echo "$upip" | sed 's/[0-9]*$/1/')
out=$(arca exec cl sh -c "head -c 3000 /dev/urandom | nc -w 1 $gw 53; i=0; while [ \$i -lt 10 ]; do head -c 40 /dev/urandom | udp-echo --send $gw 53; printf '\001\002\001\000\000\001\000\000\000\000\000\000\300\014' | udp-echo --send $gw 53; i=\$((i+1)); done" >/dev/null 2>&1; ans cl filler); check dns-survives-garbage 0 "$lateip" $? "$out"
# A hostile container holds TCP connections to the resolver open, sending a byte at a
# time (the CVE-2024-8418 class): others' lookups are answered meanwhile. Nobody reaches
# the resolver's own port but through the gateway's port 53.
out=$(arca exec cl sh -c "printf '\\000\\030\\001\\002\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000\\006filler\\000\\000\\001\\000\\001' | nc -w 2 $gw 53 | wc -c"); check dns-over-tcp 0 42 $? "$out"
arca exec -d cl sh -c "for i in 1 2 3 4 5 6; do (printf '\\377\\377'; sleep 8) | nc $gw 53 & done; wait"
sleep 1
out=$(ans cl filler); check dns-slow-tcp-clients-stall-nobody 0 "$lateip" $? "$out"
set -- $(echo "$gw" | tr . ' ')
dnsport=$(( ($1 * 65536 + $2 * 256 + $3) % 10000 + 20000 ))
out=$(arca exec cl sh -c "printf '\\001\\002\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000\\003web\\000\\000\\001\\000\\001' | udp-echo --send $gw $dnsport; nc -w 2 $gw $dnsport </dev/null && echo reached || echo blocked"); check dns-resolver-port-only-through-53 0 blocked $? "$out"
pid=$(for p in /proc/[0-9]*; do tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "arca-agent __dns $gw" && { echo "${p#/proc/}"; break; }; done)
out=$(grep -E '^(Uid|CapEff|Seccomp|NoNewPrivs):' "/proc/$pid/status" | tr -s '\t ' ' '); check dns-resolver-jailed 0 "Uid: 65534 65534 65534 65534
CapEff: 0000000000000000
NoNewPrivs: 1
Seccomp: 2" $? "$out"
# A resolver killed (both processes) while containers run is started again by their
# monitors within seconds.
kill -9 "$(cat "${ARCA_STATE_DIR:-/var/lib/arca}/networks/testnet/dns.ready" 2>/dev/null)" "$pid" 2>/dev/null
t0=$(date +%s); out=""
while [ -z "$out" ] && [ $(( $(date +%s) - t0 )) -lt 30 ]; do
  out=$(arca exec cl nslookup filler 2>/dev/null | sed -n 's/^Address: \([0-9.]*\)$/\1/p' | head -n 1); sleep 0.2
done
check dns-resolver-killed-comes-back 0 "$lateip" 0 "$out"
out=$(run --network-alias x busybox true 2>&1; echo "rc=$?"); check network-alias-default-refused 0 "arca: network-scoped alias is supported only for containers in user defined networks
rc=125" $? "$out"
arca rm -f upstream cl filler >/dev/null

# Data integrity across the link, where checksum and segmentation offloads would
# corrupt silently: 4 MiB of random bytes from a container to another by name (with
# microVMs: guest tx, TAP, bridge, TAP, guest rx), from a container to the host, and
# from the host to a container, md5 compared at both ends (containers cannot open
# connections to the host: the host connects). A listening busybox nc whose stdin ends
# half-closes the connection, and the sending nc then stops: the listeners read stdin
# from a FIFO held open instead.
bb=$(command -v busybox 2>/dev/null)
sender() { # HOST PORT: a container command sending 4 MiB of random bytes, then printing their md5
  echo "dd if=/dev/urandom of=/tmp/d bs=65536 count=64 2>/dev/null; i=0; until nc $1 $2 </tmp/d 2>/dev/null; do i=\$((i+1)); [ \$i -lt 100 ] || exit 1; sleep 0.2; done; md5sum </tmp/d"
}
sink() { # NAME: a detached container printing the md5 of what its port 5000 receives
  arca run -d --isolation="$iso" --name "$1" --network testnet busybox \
    sh -c 'mkfifo /tmp/f && exec 3<>/tmp/f && nc -l -p 5000 <&3 | md5sum' >/dev/null
}
tmpd=$(mktemp -d)
sink sink
if sent=$(run --network testnet busybox sh -c "$(sender sink 5000)"); then rc=$(arca wait sink); else rc=none; fi
got=$(arca logs sink); arca rm -f sink >/dev/null
check integrity-container-to-container 0 "$sent" "$rc" "$got"
arca run -d --isolation="$iso" --name src --network testnet busybox sh -c \
  'mkdir /www && dd if=/dev/urandom of=/www/data bs=65536 count=64 2>/dev/null && md5sum </www/data && exec httpd -f -p 80 -h /www' >/dev/null
i=0; until timeout 10 wget -q -O "$tmpd/got" "http://$(field src ip)/data" 2>/dev/null || [ $i -ge 50 ]; do i=$((i+1)); sleep 0.2; done
check integrity-container-to-host 0 "$(arca logs src)" $? "$(md5sum <"$tmpd/got")"
arca rm -f src >/dev/null
sink sink2
dd if=/dev/urandom of="$tmpd/data" bs=65536 count=64 2>/dev/null
i=0; until $bb nc "$(field sink2 ip)" 5000 <"$tmpd/data" 2>/dev/null || [ $i -ge 100 ]; do i=$((i+1)); sleep 0.2; done
rc=$(arca wait sink2); got=$(arca logs sink2); arca rm -f sink2 >/dev/null
check integrity-host-to-container 0 "$(md5sum <"$tmpd/data")" "$rc" "$got"

# A hostile container against the host: it opens a connection to a service the host
# runs on 0.0.0.0, through its gateway (the bridge's address) and through the host's
# other addresses; it asks for the cloud's metadata at 169.254.169.254 (here an address
# of the host's loopback with a server on it). Arca's input rule drops all of it.
mkdir "$tmpd/www" && echo host-secret >"$tmpd/www/index.html"
$bb httpd -f -p 18092 -h "$tmpd/www" & h1=$!
ip addr add 169.254.169.254/32 dev lo
$bb httpd -f -p 169.254.169.254:18093 -h "$tmpd/www" & h2=$!
out=$(fetch http://127.0.0.1:18092/); check host-service-up 0 host-secret $? "$out"
out=$(fetch http://169.254.169.254:18093/); check metadata-service-up 0 host-secret $? "$out"
probe() { # ADDRESS PORT [NETWORK]: "reached" or "blocked", from a container
  run ${3:+--network "$3"} busybox sh -c "nc -w 2 $1 $2 </dev/null >/dev/null 2>&1 && echo reached || echo blocked"
}
out=$(probe 10.89.0.1 18092); check host-via-gateway-blocked 0 blocked $? "$out"
gw=$(arca network inspect testnet | grep '"gateway"' | sed 's/.*"\([0-9.]*\)".*/\1/')
out=$(probe "$gw" 18092 testnet); check host-via-user-network-gateway-blocked 0 blocked $? "$out"
hostip=$(ip -o -4 addr show scope global | grep -v ' arca' | head -n 1 | sed 's/.* inet \([0-9.]*\).*/\1/')
if [ -n "$hostip" ]; then
  out=$(probe "$hostip" 18092); check host-other-address-blocked 0 blocked $? "$out"
fi
out=$(probe 169.254.169.254 18093); check metadata-blocked 0 blocked $? "$out"
kill $h1 $h2; wait $h1 $h2 2>/dev/null
ip addr del 169.254.169.254/32 dev lo

# A hostile container against its peers: it sends UDP datagrams in frames it crafts
# (AF_PACKET, CAP_NET_RAW) to a peer's listener, from another container's (web's)
# address, from web's MAC, from both; broadcasts an ARP reply claiming the peer's
# address; pings the peer over IPv6 (link-local: Arca configures no IPv6); sends IPv4
# and ARP frames from a MAC not its own too short to hold their addresses (what the
# rules cannot check they drop: the bridge must not learn that MAC on its port). Only
# its honest datagram arrives; the host's neighbour entry for the peer keeps the peer's
# MAC. The bridge-family rules of its link drop the rest.
arca run -d --isolation="$iso" --name peer --network testnet busybox udp-echo 5001 >/dev/null
peerip=$(field peer ip); peermac=$(mac_of "$peerip"); webmac=$(mac_of "$webip")
i=0; until $bb ping -c 1 -W 1 "$peerip" >/dev/null 2>&1 || [ $i -ge 25 ]; do i=$((i+1)); sleep 0.2; done
bridge=$(arca network inspect testnet | grep '"bridge"' | sed 's/.*"\(arcabr[0-9a-f]*\)".*/\1/')
out=$(run --network testnet busybox sh -c "
  me=\$(ip -o -4 addr show eth0 | sed 's/.* inet \([0-9.]*\).*/\1/'); mac=\$(cat /sys/class/net/eth0/address)
  [ \$mac = \$(printf '02:42:%02x:%02x:%02x:%02x' \$(echo \$me | tr . ' ')) ] || echo \"unexpected MAC \$mac\"
  spoof-frame udp eth0 \$mac $webip $peermac $peerip 5001 spoofed-ip
  spoof-frame udp eth0 $webmac \$me $peermac $peerip 5001 spoofed-mac
  spoof-frame udp eth0 $webmac $webip $peermac $peerip 5001 spoofed-both
  sleep 1.2; spoof-frame arp eth0 \$mac $peerip
  spoof-frame udp eth0 \$mac \$me $peermac $peerip 5001 honest && echo sent
  ping -6 -c 1 -w 2 $(link_local_of "$peerip")%eth0 >/dev/null 2>&1 && echo ipv6-reached || true")
check spoof-sent-ipv6-dropped 0 sent $? "$out"
i=0; until arca logs peer | grep -q got:honest || [ $i -ge 25 ]; do i=$((i+1)); sleep 0.2; done; sleep 0.2
out=$(arca logs peer | tr '\n' ' '); check spoofed-source-ip-and-mac-dropped 0 "got:honest " $? "$out"
out=$(ip neigh show "$peerip" dev "$bridge" | grep -c "$peermac"); check arp-spoof-dropped 0 1 $? "$out"
# Frames too short to hold their addresses, from a MAC not its own: the bridge must not
# learn that MAC on the sender's port (learned entries go with the port, so the sender
# stays up while the host looks).
arca run -d --isolation="$iso" --name shorty --network testnet busybox sh -c \
  'spoof-frame short eth0 02:42:de:ad:be:ef ip; spoof-frame short eth0 02:42:de:ad:be:ee arp; echo sent; sleep 60' >/dev/null
i=0; until arca logs shorty 2>/dev/null | grep -q sent || [ $i -ge 50 ]; do i=$((i+1)); sleep 0.2; done; sleep 0.3
out=$(arca logs shorty; bridge fdb show br "$bridge" | grep -c '02:42:de:ad:be:e'); check short-frames-dropped-unlearned 1 "sent
0" $? "$out"
arca rm -f shorty >/dev/null
out=$(arca rm -f peer); check rm-peer 0 peer $? "$out"

# Forwarding: turned on only for Arca's bridges when Arca turned it on (it was off).
if [ "$fwd0" = 0 ]; then
  out=$(cat /proc/sys/net/ipv4/ip_forward; nft list table ip arca_forward | grep -c 'iifname != "arcabr\*" oifname != "arcabr\*" drop')
  check forwarding-only-for-arca-bridges 0 "1 1" $? "$(echo $out)"
fi

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
# Forwarding given back once no Arca bridge is left (on this host, other tests' may be).
if [ "$fwd0" = 0 ] && ! ip -o link | grep -q ' arcabr'; then
  out=$(cat /proc/sys/net/ipv4/ip_forward; nft list tables | grep -c arca_forward)
  check forwarding-given-back 0 "0 0" 0 "$(echo $out)"
fi
rm -rf "$tmpd"

[ $fails -eq 0 ]
