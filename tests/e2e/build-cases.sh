#!/bin/sh
# The `arca build` scenario table, for one isolation mode of the RUN steps:
#   build-cases.sh vm|process IMAGE_TAR
# Needs `arca` on PATH (and what it needs). Prints "ok NAME" or "FAIL NAME: ..." per
# case; exits 1 if any failed. POSIX sh (the lab's busybox runs it too).
iso=$1 img=$2
fails=0
check() { # NAME EXPECTED_RC EXPECTED_STDOUT ACTUAL_RC ACTUAL_STDOUT
  if [ "$4" = "$2" ] && [ "$5" = "$3" ]; then echo "ok $1"; else echo "FAIL $1: rc $4 (want $2), stdout [$5] (want [$3])"; fails=$((fails+1)); fi
}
build() { arca build --isolation="$iso" "$@"; }
run() { arca run --rm --isolation="$iso" "$@"; }

state=${ARCA_STATE_DIR:-/var/lib/arca}
work="$state.build"
rm -rf "$work"; mkdir -p "$work"
arca load -i "$img" >/dev/null || { echo "FAIL load"; exit 1; }
# ctx NAME: a fresh context directory; its Dockerfile from stdin.
ctx() { rm -rf "$work/$1"; mkdir -p "$work/$1"; cat >"$work/$1/Dockerfile"; echo "$work/$1"; }

# Each instruction's effect, seen in the built image: ENV, WORKDIR (made), COPY into
# it, RUN that adds, changes and deletes files of the image, CMD.
c=$(ctx basic <<'EOF'
FROM busybox
ENV GREETING=hi
WORKDIR /app
COPY a.txt .
RUN echo "$GREETING from run" > said; cat a.txt >> said; rm /etc/motd; echo changed > /etc/group; echo streamed
CMD ["cat", "/app/said"]
EOF
)
echo hello >"$c/a.txt"
build -t basic "$c" 2>"$work/basic.err"; rc=$?
out=$(run basic); check build-runs 0 "hi from run
hello" $rc "$out"
out=$(run basic sh -c 'pwd; echo $GREETING; ls /etc/motd 2>&1 | grep -c "No such"; cat /etc/group'); check build-layers 0 "/app
hi
1
changed" $? "$out"
out=$(grep -c '^#[0-9]* \[[2-6]/6\]' "$work/basic.err"); check build-progress-numbers-steps 0 5 $? "$out"
out=$(grep -c '^#[0-9]* [0-9.]* streamed$' "$work/basic.err"); check build-run-output-streamed 0 1 $? "$out"

# The RUN step ran in the sandbox the mode says: in a microVM its kernel is the guest's.
c=$(ctx kernel <<'EOF'
FROM busybox
RUN uname -r > /kernel
EOF
)
build -q -t kernel "$c" >/dev/null 2>&1
built=$(run kernel cat /kernel); want=$(run busybox uname -r)
if [ "$iso" = vm ]; then host=$(uname -r); [ "$built" = "$want" ] && [ "$built" != "$host" ]; rc=$?; else [ "$built" = "$want" ]; rc=$?; fi
check run-step-isolation 0 "" $rc ""

# The cache: an unchanged rebuild hits every step and ends on the same image; a changed
# context file misses from its COPY on; --no-cache hits nothing.
id1=$(build -q "$work/basic" 2>/dev/null)
build "$work/basic" 2>"$work/cached.err"
out=$(grep -c 'CACHED' "$work/cached.err"); check cache-hit-all 0 3 $? "$out"
id2=$(build -q "$work/basic" 2>/dev/null); [ -n "$id1" ] && [ "$id1" = "$id2" ]; check cache-same-image 0 "" $? ""
# A fresh checkout's new modification times are no change (Docker's content checksums).
touch -d '2001-01-01 00:00:00' "$work/basic/a.txt"
id3=$(build -q "$work/basic" 2>/dev/null); [ "$id1" = "$id3" ]; check cache-ignores-mtime 0 "" $? ""
echo world >"$work/basic/a.txt"
build -t basic2 "$work/basic" 2>"$work/miss.err"
out=$(grep -c CACHED "$work/miss.err"); check cache-miss-after-change 0 1 $? "$out"
out=$(run basic2 cat /app/a.txt); check cache-miss-rebuilt 0 world $? "$out"
build --no-cache "$work/basic" 2>"$work/nocache.err"; rc=$?
out=$(grep -c CACHED "$work/nocache.err"); check no-cache 1 0 $? "$out"

# A failing RUN: the step and its exit code, exit 1, no image named, nothing left.
c=$(ctx failing <<'EOF'
FROM busybox
RUN echo partial > /partial; exit 3
EOF
)
err=$(build -t failing "$c" 2>&1 >/dev/null); rc=$?
out=$(echo "$err" | grep -c 'ERROR: failed to solve: process "/bin/sh -c echo partial > /partial; exit 3" did not complete successfully: exit code: 3'); check run-fails 1 1 $rc "$out"
out=$(arca images -q failing; arca ps -aq); check run-fails-leaves-nothing 0 "" $? "$out"

# Multi-stage: only the stages the target needs are built; COPY --from a stage.
c=$(ctx stages <<'EOF'
FROM busybox AS build
RUN echo built > /artifact
FROM busybox AS unused
RUN exit 9
FROM busybox
COPY --from=build /artifact /copied
CMD ["cat", "/copied"]
EOF
)
build -t stages "$c" 2>/dev/null; rc=$?
out=$(run stages); check multi-stage-copy-from $rc built 0 "$out"
build -t stage-build --target build "$c" 2>/dev/null; rc=$?
out=$(run stage-build sh -c 'cat /artifact; ls /copied 2>/dev/null | wc -l'); check target-stage 0 "built
0" $rc "$out"
out=$(build --target nope "$c" 2>&1 | grep -c 'target stage "nope" could not be found'); check target-unknown 0 1 $? "$out"
# A --from naming a later stage is an error, not an image to pull.
out=$(printf 'FROM busybox AS first\nCOPY --from=later /x /x\nFROM busybox AS later\n' | build --target first - 2>&1 | grep -c 'this stage or a later one'); check copy-from-later-stage 0 1 $? "$out"

# ARG and --build-arg: before FROM (in FROM), defaults, overrides, ENV from ARG, an
# unset ARG, ARG values in RUN's environment but not in the image's; unused warned.
c=$(ctx args <<'EOF'
ARG BASE=busybox
FROM $BASE
ARG WHO=world
ARG UNSET
ARG TARGETARCH
ENV GREETING="hello ${WHO}"
RUN echo "$WHO ${UNSET:-none} $GREETING $TARGETARCH" > /args
EOF
)
build -q -t args1 "$c" >/dev/null 2>&1
out=$(run args1 sh -c 'cat /args; echo "${WHO:-no WHO in the image}"'); check arg-defaults 0 "world none hello world amd64
no WHO in the image" $? "$out"
err=$(build -t args2 --build-arg WHO=arca --build-arg NOPE=1 "$c" 2>&1 >/dev/null)
out=$(run args2 cat /args; echo "$err" | grep -c 'build-args \[NOPE\] were not consumed'); check build-arg-override 0 "arca none hello arca amd64
1" $? "$out"

# .dockerignore: excluded files are not in the context.
c=$(ctx ignore <<'EOF'
FROM busybox
COPY . /ctx/
EOF
)
echo keep >"$c/keep.txt"; echo secret >"$c/secret.txt"; mkdir "$c/logs"; echo x >"$c/logs/1.log"
printf 'secret.txt\nlogs\n' >"$c/.dockerignore"
build -q -t ignore "$c" >/dev/null 2>&1
out=$(run ignore sh -c 'ls -A /ctx | sort | tr "\n" " "'); check dockerignore 0 ".dockerignore Dockerfile keep.txt " $? "$out"

# ADD: a local tar (plain and gzip) is unpacked; a URL is refused with a message.
c=$(ctx add <<'EOF'
FROM busybox
ADD bundle.tar /opt/
ADD bundle.tgz /srv/
ADD plain.txt /plain.txt
EOF
)
mkdir -p "$work/src/d"; echo inside >"$work/src/d/f"
tar -C "$work/src" -cf "$c/bundle.tar" d; tar -C "$work/src" -czf "$c/bundle.tgz" d; echo plain >"$c/plain.txt"
build -q -t add "$c" >/dev/null 2>&1
out=$(run add sh -c 'cat /opt/d/f /srv/d/f /plain.txt'); check add-unpacks-tars 0 "inside
inside
plain" $? "$out"
c=$(ctx addurl <<'EOF'
FROM busybox
ADD https://example.com/x.tar.gz /x
EOF
)
out=$(build "$c" 2>&1 | grep -c 'not supported by arca build'); check add-url-refused 0 1 $? "$out"

# Destinations resolve through the image's own symlinks (merged /usr, as Debian's
# /bin -> usr/bin), inside its root; a file replaced by a directory in a RUN step.
c=$(ctx links <<'EOF'
FROM busybox
RUN mkdir -p /usr/lib2 && ln -s usr/lib2 /lib2 && ln -s / /up && rm /etc/motd && mkdir /etc/motd && echo d > /etc/motd/f
COPY a.txt /lib2/
COPY a.txt /up/etc/copied
WORKDIR /lib2/work
EOF
)
echo linked >"$c/a.txt"
build -q -t links "$c" >/dev/null 2>&1
out=$(run links sh -c 'cat /usr/lib2/a.txt /etc/copied /etc/motd/f; pwd; ls -d /usr/lib2/work'); check destinations-through-image-symlinks 0 "linked
linked
d
/usr/lib2/work
/usr/lib2/work" $? "$out"

# The config fields: EXPOSE, LABEL, USER, VOLUME, STOPSIGNAL, ENTRYPOINT, HEALTHCHECK,
# SHELL, ONBUILD (run by a child build, not by a grandchild).
c=$(ctx config <<'EOF'
FROM busybox
LABEL org.example.team="build team" version=1
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD true
SHELL ["/bin/sh", "-ec"]
USER app
ENTRYPOINT ["echo", "entry"]
ONBUILD RUN echo triggered > /tmp/onbuild
EOF
)
build -q -t config "$c" >/dev/null 2>&1
out=$(arca image inspect --format '{{json .Config.Labels}} {{json .Config.ExposedPorts}} {{json .Config.Volumes}} {{.Config.StopSignal}} {{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Healthcheck}} {{json .Config.Shell}} {{json .Config.OnBuild}}' config)
check config-fields 0 '{"org.example.team":"build team","version":"1"} {"53/udp":{},"80/tcp":{}} {"/data":{}} SIGINT app ["echo","entry"] {"Interval":5000000000,"Retries":2,"Test":["CMD-SHELL","true"]} ["/bin/sh","-ec"] ["RUN echo triggered > /tmp/onbuild"]' $? "$out"
out=$(run config x); check entrypoint-runs 0 "entry x" $? "$out"
c=$(ctx child <<'EOF'
FROM config
USER root
EOF
)
build -q -t child "$c" >/dev/null 2>&1
printf 'FROM child\n' >"$c/Dockerfile"; build -q -t grandchild "$c" >/dev/null 2>&1
out=$(run --entrypoint cat child /tmp/onbuild; arca image inspect --format '{{json .Config.OnBuild}}' child; run --entrypoint ls grandchild /tmp/onbuild 2>/dev/null | wc -l); check onbuild 0 "triggered
null
1" $? "$out"

# The built HEALTHCHECK runs in the image's containers (by their monitors, as run's
# --health-* checks): a --health-cmd over it keeps its interval and retries, and
# --no-healthcheck turns it off.
c=$(ctx health <<'EOF'
FROM busybox
HEALTHCHECK --interval=1s --retries=1 CMD ["sh", "-c", "test -f /tmp/ok"]
EOF
)
build -q -t health "$c" >/dev/null 2>&1
arca run -d --isolation="$iso" --name hi1 health sh -c 'touch /tmp/ok; exec sleep 1000' >/dev/null
arca run -d --isolation="$iso" --name hi2 health sleep 1000 >/dev/null
arca run -d --isolation="$iso" --name hi3 --health-cmd true health sleep 1000 >/dev/null
arca run -d --isolation="$iso" --name hi4 --no-healthcheck health sleep 1000 >/dev/null
waith() { i=0; while [ "$(arca inspect -f '{{.State.Health.Status}}' "$1")" != "$2" ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.1; done; echo "$1 $(arca inspect -f '{{.State.Health.Status}}' "$1")"; }
out=$(waith hi1 healthy; waith hi2 unhealthy; waith hi3 healthy; arca inspect -f '{{json .Config.Healthcheck}}' hi3; arca ps --filter health=none --format '{{.Names}}')
check image-healthcheck 0 'hi1 healthy
hi2 unhealthy
hi3 healthy
{"Interval":1000000000,"Retries":1,"Test":["CMD-SHELL","true"]}
hi4' $? "$out"
arca rm -f hi1 hi2 hi3 hi4 >/dev/null

# History: an entry per instruction (the test image has none of its own).
out=$(arca history basic | grep -c 'buildkit.dockerfile.v0'); check history 0 5 $? "$out"

# A Dockerfile on stdin with no context, as Docker's notes show.
out=$(printf 'FROM busybox\nRUN echo "hello world"\n' | build - 2>&1 | grep -c 'hello world$'); check stdin-dockerfile 0 1 $? "$out"
out=$(printf 'FROM busybox\nCOPY x /x\n' | build - 2>&1 | grep -c 'there is no build context'); check stdin-no-context 0 1 $? "$out"

# RUN's network: --network none leaves it loopback only.
c=$(ctx net <<'EOF'
FROM busybox
RUN ls /sys/class/net | tr "\n" " " > /links
EOF
)
build -q --network none -t net "$c" >/dev/null 2>&1
out=$(run net cat /links); check network-none 0 "lo " $? "$out"

# A hostile base image: an Env entry without `=` is not filled from arca's own
# environment (a CI token must not reach the image's RUN steps): such an image is
# refused, its entry named, the secret nowhere.
mkdir -p "$work/leak" && tar -C "$work/leak" -xf "$img"
cfg=$(cd "$work/leak" && ls *.json | grep -v manifest.json)
sed 's/"Env":\["/"Env":["ARCA_BUILD_SECRET","/' "$work/leak/$cfg" >"$work/leak/new.json"
new=$(sha256sum "$work/leak/new.json" | cut -d' ' -f1)
mv "$work/leak/new.json" "$work/leak/$new.json"; rm "$work/leak/$cfg"
sed -i "s/$cfg/$new.json/; s/busybox:latest/leaky:latest/" "$work/leak/manifest.json"
(cd "$work/leak" && tar -cf "$work/leaky.tar" .)
arca load -i "$work/leaky.tar" >/dev/null
out=$(printf 'FROM leaky\nRUN echo "[$ARCA_BUILD_SECRET]"\n' | ARCA_BUILD_SECRET=hunter2 build - 2>&1)
echo "$out" | grep -q 'ARCA_BUILD_SECRET" is not KEY=value'; rc=$?
out=$(echo "$out" | grep -c hunter2); check image-env-not-from-host 1 0 $? "$out"; check image-env-refused 0 "" $rc ""
# A Dockerfile (or a base image's trigger) cannot take the host's network for itself.
out=$(printf 'FROM busybox\nRUN --network=host true\n' | build - 2>&1 | grep -c 'needs `arca build --network host`'); check run-network-host-refused 0 1 $? "$out"

# Hostile contexts: a symlink out of the context resolves inside it; `..` is refused; a
# file past the image size cap and an ADD tar bomb are stopped; a bad Dockerfile and an
# unknown flag are refused.
c=$(ctx hostile <<'EOF'
FROM busybox
COPY link /x
EOF
)
ln -s /etc/passwd "$c/link"
out=$(build "$c" 2>&1 | grep -c 'file not found in build context'); check symlink-out-of-context 0 1 $? "$out"
printf 'FROM busybox\nCOPY ../x /x\n' >"$c/Dockerfile"
out=$(build "$c" 2>&1 | grep -c 'forbidden path outside the build context'); check dotdot-refused 0 1 $? "$out"
printf 'FROM busybox\nCOPY big /big\n' >"$c/Dockerfile"; head -c 3000000 /dev/zero >"$c/big"
out=$(ARCA_MAX_IMAGE_SIZE=2m build "$c" 2>&1 | grep -c 'more than 2 MiB'); check huge-file-bounded 0 1 $? "$out"
head -c 8000000 /dev/zero >"$work/src/zeros"; tar -C "$work/src" -czf "$c/bomb.tgz" zeros
printf 'FROM busybox\nADD bomb.tgz /b/\n' >"$c/Dockerfile"
out=$(ARCA_MAX_IMAGE_SIZE=2m build "$c" 2>&1 | grep -c 'more than 2 MiB'); check add-tar-bomb-bounded 0 1 $? "$out"
rm "$c/Dockerfile"; ln -s /etc/passwd "$c/Dockerfile"
out=$(build "$c" 2>&1 | grep -c 'failed to read dockerfile'); check dockerfile-symlink-out-of-context 0 1 $? "$out"
rm "$c/Dockerfile"; printf 'FROM busybox\nFROB x\n' >"$c/Dockerfile"
out=$(build "$c" 2>&1 | grep -c 'unknown instruction: FROB'); check bad-dockerfile 0 1 $? "$out"
arca build --squash "$c" >/dev/null 2>&1; check unknown-flag 125 "" $? ""
out=$(printf 'FROM busybox\nRUN <<EOF\necho hi\nEOF\n' | build - 2>&1 | grep -c 'heredocs (<<EOF) are not supported'); check heredoc-refused 0 1 $? "$out"
out=$(tar -C "$work/src" -cf - d | build - 2>&1 | grep -c 'a build context as a tar on stdin is not supported'); check tar-context-on-stdin-refused 0 1 $? "$out"
out=$(arca ps -aq); check nothing-left-running 0 "" $? "$out"

rm -rf "$work"
[ $fails -eq 0 ]
