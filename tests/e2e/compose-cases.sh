#!/bin/sh
# The `arca compose` scenario table, for one isolation mode:
#   compose-cases.sh vm|process IMAGE_TAR
# Needs root, `arca` on PATH (and what it needs), iproute2's `ip`, `nft` and a `wget`.
# Prints "ok NAME" or "FAIL NAME: ..." per case; exits 1 if any failed. POSIX sh, so it
# runs in the lab's busybox too.
iso=$1 img=$2
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
leftovers() { # arca links and the nft tables of arca bridges
  n=$(ip -o link | grep -c ' arca')
  t=$(nft list tables 2>/dev/null | grep -c ' arca_arcabr')
  echo "links=$n tables=$t"
}
waitfor() { # TEXT COMMAND...: until the command's output has TEXT (30 s)
  want=$1; shift; i=0
  while [ $i -lt 300 ]; do "$@" 2>/dev/null | grep -q "$want" && return 0; i=$((i+1)); sleep 0.1; done
  return 1
}
arca load -i "$img" >/dev/null || { echo "FAIL load"; exit 1; }
before=$(leftovers)
proj=$(mktemp -d)
cd "$proj" || exit 1
# The issue's application: a one-shot job fills a named volume, the web server serves
# it once the job completed successfully (and is healthy after that), a client fetches
# it by service name in a loop; the web server's port is published on the host.
# Variables come from .env (the port) and the environment (the isolation).
port=$((31000 + $$ % 1000))
echo "WEB_PORT=$port" >.env
cat >compose.yaml <<'YAML'
name: demo
x-arca:
  isolation: ${ISO:?ISO names the isolation}
services:
  seed:
    image: busybox
    command: ["sh", "-c", "echo hello-from-seed > /www/index.html"]
    volumes: [site:/www]
  web:
    image: busybox
    command: httpd -f -p 80 -h /www
    ports: ["${WEB_PORT}:80"]
    volumes: [site:/www]
    environment: [GREETING=hi]
    depends_on:
      seed: {condition: service_completed_successfully}
    healthcheck:
      test: printf 'GET / HTTP/1.0\r\n\r\n' | nc 127.0.0.1 80 | grep -q hello
      interval: 1s
      retries: 60
  client:
    image: busybox
    command: ["sh", "-c", "while true; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc web 80 | tail -n 1; sleep 1; done"]
    depends_on:
      web: {condition: service_healthy}
    stop_grace_period: 1s
volumes:
  site: {}
YAML
export ISO="$iso"
out=$(arca compose config --services; arca compose config | grep -c "$port:80"); check config-resolved 0 "client
seed
web
1" $? "$out"
arca compose up -d 2>"$proj.up"; rc=$?
# Dependency order: the job exited before the web server was made, which was healthy
# before the client was made.
line() { grep -n "$1" "$proj.up" | head -n 1 | cut -d: -f1; }
out=$([ "$(line 'demo-seed-1  Exited')" -lt "$(line 'demo-web-1  Created')" ] && [ "$(line 'demo-web-1  Healthy')" -lt "$(line 'demo-client-1  Created')" ] && echo ordered; grep -c 'Network demo_default  Created\|Volume demo_site  Created' "$proj.up")
check up-in-dependency-order 0 "ordered
2" $rc "$out"
[ "$rc" = 0 ] || cat "$proj.up"
out=$(waitfor hello-from-seed arca compose logs --no-log-prefix client && echo by-name); check client-reaches-web-by-service-name 0 by-name $? "$out"
out=$(fetch "http://127.0.0.1:$port/"); check host-reaches-published-port 0 hello-from-seed $? "$out"
out=$(arca compose ps --services; arca compose ps -a -q | wc -l; arca compose ps | sed -n 1p | tr -s ' '; arca compose ps | grep -c "0.0.0.0:$port->80/tcp")
check ps 0 "client
web
3
NAME IMAGE COMMAND SERVICE CREATED STATUS PORTS
1" $? "$out"
out=$(arca compose ps web | grep -c '(healthy)'); check ps-health 0 1 $? "$out"
out=$(arca compose logs client | head -n 1 | sed 's/ *|.*/|/'); check logs-prefix 0 "demo-client-1|" $? "$out"
out=$(arca compose exec -T web sh -c 'cat /www/index.html; echo $GREETING'); check exec 0 "hello-from-seed
hi" $? "$out"
out=$(arca compose exec -T web sh -c 'exit 3'); check exec-exit-code 3 "" $? "$out"
out=$(arca inspect -f '{{index .Config.Labels "com.docker.compose.project"}} {{index .Config.Labels "com.docker.compose.service"}} {{index .Config.Labels "com.docker.compose.oneoff"}}' demo-web-1); check labels 0 "demo web False" $? "$out"
n=$(arca ps -aq | wc -l)
out=$(arca compose run --rm -T --no-deps client sh -c 'echo one-off; nslookup web >/dev/null && echo resolves'; arca ps -aq | wc -l); check run-rm 0 "one-off
resolves
$n" $? "$out"
out=$(arca compose run --rm -T --no-deps client sh -c 'exit 4'); check run-exit-code 4 "" $? "$out"
out=$(arca compose stop client 2>/dev/null; arca compose ps --services; arca compose start client 2>/dev/null; arca compose ps --services | wc -l); check stop-start 0 "web
2" $? "$out"
# A second file merged over the first changes the client: only it is made again.
cat >override.yaml <<'YAML'
services:
  client:
    environment: {CHANGED: "1"}
YAML
out=$(arca compose -f compose.yaml -f override.yaml up -d 2>&1 | grep -E 'Recreated|Running' | sort); check up-again-recreates-changed-only 0 " Container demo-client-1  Recreated
 Container demo-web-1  Running" $? "$out"
out=$(arca compose exec -T client sh -c 'echo $CHANGED'); check override-merged 0 1 $? "$out"
arca compose down -v 2>"$proj.down"; rc=$?
out=$(arca ps -aq | wc -l; arca network ls -q | grep -c demo; arca volume ls -q | wc -l; leftovers)
check down-leaves-nothing 0 "0
0
0
$before" $rc "$out"
[ "$rc" = 0 ] || cat "$proj.down"
# A network of the project's name that Compose did not make is refused by `up` (with
# Compose's warning and error: declare it external to use it) and left by `down`.
arca network create --label owner=me demo_default >/dev/null
msg=$(arca compose up -d --no-deps client 2>&1); rc=$?
out=$(echo "$msg" | grep -c 'a network with name demo_default exists but was not created by compose'
  echo "$msg" | grep -c 'network demo_default was found but has incorrect label com.docker.compose.network set to "" (expected: "default")'
  arca compose down -v 2>/dev/null; arca network ls -q | grep -c '^demo_default$'; arca network inspect demo_default | grep -c '"owner": "me"'; arca ps -aq | wc -l)
check foreign-network-refused 1 "1
1
1
1
0" $rc "$out"
arca network rm demo_default >/dev/null
# Replicas: deploy.replicas containers numbered from 1, all answering to the service's
# name; up --scale changes the count (the highest numbers go).
mkdir -p "$proj/sc" && cd "$proj/sc" || exit 1
cat >compose.yaml <<'YAML'
x-arca: {isolation: "${ISO}"}
services:
  w:
    image: busybox
    command: sleep 1000
    stop_signal: KILL
    deploy: {replicas: 2}
YAML
arca compose -p sc up -d >/dev/null 2>&1
# The resolver reads a new container's names as its lease appears (within a second):
# asked for up to 3 s until both replicas answer.
out=$(arca compose -p sc ps | awk 'NR > 1 {print $1}'; arca compose -p sc run --rm -T w sh -c 'i=0; while [ $(nslookup w | grep -c "^Address: 10\.") -lt 2 ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; nslookup w | grep -c "^Address: 10\."')
check replicas 0 "sc-w-1
sc-w-2
2" $? "$out"
out=$(arca compose -p sc up -d --scale w=1 2>&1 | grep 'sc-w-2  Removed'; arca compose -p sc ps -q | wc -l)
check scale-down 0 " Container sc-w-2  Removed
1" $? "$out"
arca compose -p sc down >/dev/null 2>&1
cd "$proj" || exit 1
# A job that fails stops `up` before what waits on it, with Compose's words.
mkdir -p "$proj/fail" && cd "$proj/fail" || exit 1
cat >compose.yaml <<'YAML'
x-arca: {isolation: "${ISO}"}
services:
  job: {image: busybox, command: ["sh", "-c", "exit 3"], network_mode: none}
  after:
    image: busybox
    network_mode: none
    depends_on: {job: {condition: service_completed_successfully}}
YAML
msg=$(arca compose -p failing up -d 2>&1); rc=$?
out=$(echo "$msg" | grep -c "service \"job\" didn't complete successfully: exit 3"; arca ps -a --filter label=com.docker.compose.service=after -q | wc -l)
check failed-dependency-stops-up 1 "1
0" $rc "$out"
arca compose -p failing down >/dev/null 2>&1
# In the foreground: the logs of every container, prefixed, until they all exit.
cat >compose.yaml <<'YAML'
x-arca: {isolation: "${ISO}"}
services:
  once: {image: busybox, command: echo said-once, network_mode: none}
YAML
out=$(arca compose -p fg up 2>/dev/null | sed 's/  *|/ |/'); check up-foreground 0 "Attaching to fg-once-1
fg-once-1 | said-once
fg-once-1 exited with code 0" $? "$out"
arca compose -p fg down >/dev/null 2>&1
# A service built from a context (a build argument, the image named PROJECT-SERVICE),
# built by `run` because it is missing.
mkdir -p "$proj/b/app" && cd "$proj/b" || exit 1
printf 'FROM busybox\nARG WORD=none\nRUN echo "built-$WORD" >/built\nCMD ["cat", "/built"]\n' >app/Dockerfile
cat >compose.yaml <<'YAML'
x-arca: {isolation: "${ISO}"}
services:
  app:
    build: {context: ./app, args: {WORD: ok}}
    network_mode: none
YAML
out=$(arca compose -p bld run --rm -T app 2>/dev/null; arca images --format '{{.Repository}}' | grep -c '^bld-app$')
check build-context 0 "built-ok
1" $? "$out"
arca compose -p bld down >/dev/null 2>&1; arca rmi bld-app >/dev/null 2>&1
cd "$proj/fail" || exit 1
# Bad input: named, exit 1, nothing made.
out=$(arca compose up -d nosuch 2>&1); check unknown-service 1 "no such service: nosuch" $? "$out"
printf 'services:\n  a:\n    image: busybox\n    secrets: [s]\n' >compose.yaml
out=$(arca compose up -d 2>&1); check refused-key 1 'services.a key "secrets" is not supported by arca compose' $? "$out"
printf 'services:\n  a:\n    image: busybox\n    colour: blue\n    network_mode: none\n' >compose.yaml
out=$(arca compose config -q 2>&1); check unknown-key-warns 0 "WARN[0000] services.a.colour is unknown: ignored" $? "$out"
printf 'services:\n  a:\n    image: "${NOPE:?set NOPE}"\n' >compose.yaml
out=$(arca compose config 2>&1); check required-variable 1 "services.a.image: required variable NOPE is missing a value: set NOPE" $? "$out"
# Profiles: a service with some is part of a run only when one is active (--profile,
# COMPOSE_PROFILES) or it is named; what needs a disabled one is refused by name.
printf 'services:\n  a:\n    image: busybox\n  dbg:\n    image: busybox\n    profiles: [dev]\n' >compose.yaml
out=$(arca compose config --services; arca compose --profile dev config --services | wc -l; COMPOSE_PROFILES=dev arca compose config --services | wc -l; arca compose config --profiles)
check profiles 0 "a
2
2
dev" $? "$out"
printf 'services:\n  a:\n    image: busybox\n    depends_on: [dbg]\n  dbg:\n    image: busybox\n    profiles: [dev]\n' >compose.yaml
out=$(arca compose up -d 2>&1); check profile-disabled-dependency 1 'service "dbg" is required by "a" but is disabled. Can be enabled by profiles [dev]' $? "$out"
empty=$(mktemp -d) && cd "$empty" || exit 1
out=$(arca compose ps 2>&1 | grep -c 'no configuration file provided'); check no-file 0 1 $? "$out"
cd / && rm -rf "$proj" "$proj.up" "$proj.down" "$empty"
out=$(arca ps -aq | wc -l; arca volume ls -q | wc -l; leftovers); check nothing-left 0 "0
0
$before" $? "$out"
[ "$fails" = 0 ]
