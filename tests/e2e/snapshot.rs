//! `arca-vmm` snapshots: a guest paused mid-workload, saved through the control socket,
//! and restored (twice, side by side) goes on where it was, with its disk, its console
//! count and a reconnecting vsock client; damaged or foreign snapshot files are refused
//! by name.

use arca_e2e::guest::initramfs_with;
use arca_e2e::{TestFile, assert_success, run_with_kvm, stderr, stdout};

#[test]
fn a_snapshotted_guest_goes_on_where_it_was_in_two_restored_vms() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.ext4");
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .arg("8M")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs) runs");
    assert!(status.success());
    let files = [
        initramfs_with(dir.path(), "init-snapshot", &["/usr/bin/socat:/bin/socat"]),
        TestFile {
            source: disk,
            name: "disk.ext4".into(),
        },
        TestFile {
            source: "/usr/bin/socat".into(),
            name: "socat".into(),
        },
        TestFile {
            source: "/usr/sbin/debugfs".into(),
            name: "debugfs".into(),
        },
    ];
    let out = run_with_kvm(
        r#"
        cd "$ARCA_E2E_DIR"
        export PATH="$PWD:$PATH"
        D=$(mktemp -d)
        wait_for() { for i in $(seq 1200); do grep -aq "$1" "$2" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
        counts() { tr -d '\r' < "$1" | grep -a '^COUNT' | cut -d' ' -f2; }
        last_count() { counts "$1" | tail -n 1; }
        echo_over() { for i in $(seq 100); do
            r=$(printf 'CONNECT 5000\n%s\n' "$2" | socat -t 2 - UNIX-CONNECT:$1 2>/dev/null | tail -n 1)
            [ "$r" = "$2" ] && { echo "$r"; return 0; }; sleep 0.2; done; return 1; }
        arca-vmm --kernel "$ARCA_KERNEL" --initrd init-snapshot.cpio --cmdline "quiet snap_end=70" \
            --disk disk.ext4 --vsock cid=3,uds=$D/v1.sock --control $D/c1.sock \
            --console file:$D/c1.log &
        vmm=$!
        wait_for '^COUNT 10' $D/c1.log || echo "HOST: the guest never counted to 10"
        echo "HOST: before $(echo_over $D/v1.sock before)"
        arca-vmm control $D/c1.sock snapshot --state $D/s0.json --memory $D/m0.bin 2>&1 | sed 's/^/HOST: running: /'
        arca-vmm control $D/c1.sock pause && echo "HOST: paused"
        at=$(last_count $D/c1.log)
        sleep 1
        [ "$(last_count $D/c1.log)" = "$at" ] && echo "HOST: a paused guest does not count"
        arca-vmm control $D/c1.sock snapshot --state $D/s.json --memory $D/m.bin && echo "HOST: snapshot taken"
        arca-vmm control $D/c1.sock snapshot --state $D/s.json --memory $D/m9.bin 2>&1 | sed 's/^/HOST: again: /'
        echo "HOST: state mode $(stat -c %a $D/s.json) memory mode $(stat -c %a $D/m.bin)"
        echo "HOST: memory file $(stat -c %s $D/m.bin) bytes, $(( $(stat -c %b $D/m.bin) * 512 )) on disk"
        kill -9 $vmm; wait $vmm
        cp disk.ext4 disk2.ext4
        md5sum $D/m.bin > $D/m.md5

        # Damaged and foreign files are refused, naming the problem.
        head -c 300 $D/s.json > $D/short.json
        sed 's/"version":1,/"version":99,/' $D/s.json > $D/v99.json
        head -c 1048576 $D/m.bin > $D/short.bin
        arca-vmm --restore state=$D/short.json,memory=$D/m.bin 2>&1 | sed 's/^/HOST: short state: /'
        arca-vmm --restore state=$D/v99.json,memory=$D/m.bin 2>&1 | sed 's/^/HOST: v99: /'
        arca-vmm --restore state=$D/s.json,memory=$D/short.bin --disk disk2.ext4 --vsock cid=3,uds=$D/vx.sock 2>&1 | sed 's/^/HOST: short memory: /'
        arca-vmm --restore state=$D/s.json,memory=$D/m.bin --memory 512 2>&1 | sed 's/^/HOST: memory flag: /'
        arca-vmm --restore state=$D/s.json,memory=$D/m.bin 2>&1 | sed 's/^/HOST: no host sides: /'

        # Two restores from the one snapshot, side by side, each with its own disk copy.
        arca-vmm --restore state=$D/s.json,memory=$D/m.bin --disk disk.ext4 --vsock cid=3,uds=$D/v2.sock \
            --console file:$D/c2.log &
        r2=$!
        arca-vmm --restore state=$D/s.json,memory=$D/m.bin --vsock cid=4,uds=$D/v3.sock \
            --disk disk2.ext4 --console file:$D/c3.log &
        r3=$!
        echo "HOST: after $(echo_over $D/v2.sock after)"
        echo "HOST: other $(echo_over $D/v3.sock other)"
        wait $r2; echo "HOST: restored vmm exit $?"
        wait $r3; echo "HOST: second vmm exit $?"
        echo "HOST: saved at $at"
        echo "HOST: restored first $(counts $D/c2.log | head -n 1) last $(last_count $D/c2.log)"
        echo "HOST: second first $(counts $D/c3.log | head -n 1) last $(last_count $D/c3.log)"
        tr -d '\r' < $D/c2.log | grep -a "SNAP: disk says" | sed 's/^/HOST: restored /'
        echo "HOST: disk $(./debugfs -R 'cat /count' disk.ext4 2>/dev/null) disk2 $(./debugfs -R 'cat /count' disk2.ext4 2>/dev/null)"
        md5sum -c $D/m.md5 >/dev/null && echo "HOST: memory file unchanged by the restored guests"
        "#,
        &files,
        400,
    );
    let text = stdout(&out);
    let err = stderr(&out);
    assert_success(&out);
    for want in [
        "HOST: before before",
        "HOST: running: arca-vmm: error: The VMM refused: the VM is not paused: pause it first",
        "HOST: paused",
        "HOST: a paused guest does not count",
        "HOST: snapshot taken",
        "HOST: state mode 600 memory mode 600",
        "HOST: short state: arca-vmm: error: The snapshot state file",
        "is damaged or truncated",
        "HOST: v99: arca-vmm: error: The snapshot",
        "has state format version 99, but this arca-vmm reads only version 1",
        "(a truncated or foreign file)",
        "HOST: memory flag: arca-vmm: error: --memory cannot be given with --restore",
        "HOST: again: arca-vmm: error: Cannot open",
        "HOST: no host sides: arca-vmm: error: The devices given do not match the snapshot's: the snapshot's devices need their host side given: --disk for each of its disks (the paths in a state file are not trusted)",
        "HOST: after after",
        "HOST: other other",
        "HOST: restored vmm exit 0",
        "HOST: second vmm exit 0",
        "HOST: restored SNAP: disk says 70",
        "HOST: disk 70 disk2 70",
        "HOST: memory file unchanged by the restored guests",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} in:\n{text}\nstderr:\n{err}"
        );
    }
    // Each restored guest counts on from the count it was paused at, not from 1.
    let number = |prefix: &str, field: usize| -> u32 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"));
        line.split_whitespace().nth(field).unwrap().parse().unwrap()
    };
    let saved = number("HOST: saved at", 3);
    assert!(saved >= 10, "{text}");
    assert_eq!(number("HOST: restored first", 3), saved + 1, "{text}");
    assert_eq!(number("HOST: second first", 3), saved + 1, "{text}");
    assert_eq!(number("HOST: restored first", 5), 70, "{text}");
    assert_eq!(number("HOST: second first", 5), 70, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("HOST: memory file ") && !l.contains(" 0 on disk")),
        "{text}"
    );
}
