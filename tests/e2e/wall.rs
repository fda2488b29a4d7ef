//! The host side of the wall (issues 13 and 14): what another local user can reach of
//! Arca's state, what a hostile image or guest can do to the host around the VM, and
//! what a guest that took over its VMM would hold (the jail).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use arca_e2e::guest::busybox_image;
use arca_e2e::{
    TestFile, assert_success, binary, is_root, path_with_binaries, repo_root, run_with_kvm, stdout,
};

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `tests/e2e/local-user-cases.sh`: as `nobody`, after root loaded an image and ran
/// containers with a secret, listing, reading or running anything below the state root
/// fails, every socket refuses, and a loosened state directory is tightened again.
#[test]
fn another_local_user_reaches_nothing_below_the_state_root() {
    if !is_root() || !has("setpriv") || !has("socat") {
        eprintln!("SKIP: needs root, setpriv and socat");
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    // Only Arca's own modes may stand between nobody and the state.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tar = busybox_image(dir.path());
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("sh")
        .arg(repo_root().join("tests/e2e/local-user-cases.sh"))
        .arg(&tar)
        .env("PATH", path_with_binaries())
        .env("ARCA_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

/// A VMM that fails at start (here: a guest kernel that is no kernel) fails `arca run`
/// at once, with exit 125 and the VMM's own words, instead of a wait for an agent that
/// will never come.
#[test]
fn a_vmm_that_dies_at_start_fails_the_run_at_once_with_its_message() {
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let tar = busybox_image(dir.path());
    let state = dir.path().join("state");
    let bogus = dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"this is not a kernel").unwrap();
    let arca = |args: &[&str]| {
        Command::new(binary("arca"))
            .args(args)
            .env("ARCA_STATE_DIR", &state)
            .env("ARCA_KERNEL", &bogus)
            .output()
            .unwrap()
    };
    assert_success(&arca(&["load", "-i", tar.to_str().unwrap()]));
    let start = std::time::Instant::now();
    let out = arca(&["run", "--rm", "--network", "none", "busybox", "true"]);
    let took = start.elapsed();
    let err = arca_e2e::stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("arca-vmm ended before the container's agent answered (exit status: 1)"),
        "{err}"
    );
    // The VMM's own message follows (which one depends on the host's KVM).
    assert!(err.trim_end().len() > 90, "{err}");
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    // Nothing is left of the container.
    let ps = arca(&["ps", "-aq"]);
    assert_eq!(stdout(&ps), "");
}

/// Real images in both isolations: Debian bookworm from debootstrap under two more
/// layers (3000 files, 255-byte names, hard links across directories, a 64 MiB random
/// file, a size that is no multiple of 512, whiteouts): its disk is built and booted in
/// a microVM (where KVM works: the lab here) and its rootfs used on this host, and the
/// container sees every layer as written; under Docker's seccomp profile (`Seccomp: 2`)
/// its apt and dpkg still work.
#[test]
fn a_large_debian_image_runs_in_a_microvm_and_on_the_host() {
    binary("arca");
    if !is_root() || !has("debootstrap") {
        eprintln!("SKIP: needs root and debootstrap (make test installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("big.tar");
    let made = Command::new(repo_root().join("tests/guest/mkbigimage"))
        .arg(&tar)
        .output()
        .unwrap();
    assert_success(&made);
    let expect = std::fs::read_to_string(dir.path().join("big.tar.expect")).unwrap();
    let get = |k: &str| {
        expect
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing from {expect}"))
            .to_string()
    };
    let check = r#"cat /etc/debian_version; md5sum /random.bin | cut -d' ' -f1
        find /many -type f | wc -l; stat -c %h /links/a/one
        [ /links/a/one -ef /links/b/three ] && echo same-file
        ls /many | awk 'length($0) == 255' | wc -l
        [ -e /etc/issue ] && echo issue-present || echo issue-gone
        ls -A /usr/share/doc | wc -l; stat -c %s /odd-size
        apt-get -qq check && dpkg-query -W -f="\${Status}\n" apt && echo apt-ok
        grep -c "^Seccomp:.2" /proc/self/status"#;
    let want = format!(
        "{}\n{}\n{}\n3\nsame-file\n2\nissue-gone\n0\n1000001\ninstall ok installed\napt-ok\n1\n",
        get("debian_version"),
        get("random_md5"),
        get("many_files")
    );
    let script = |iso: &str| {
        format!(
            r#"set -e
            arca load -i "$ARCA_E2E_DIR/big.tar" >/dev/null
            arca run --rm --isolation={iso} --network none bigimage sh -c '{}'"#,
            check.replace('\'', r#"'\''"#)
        )
    };
    // On this host: process isolation.
    let state = dir.path().join("state");
    let host = Command::new("sh")
        .args(["-c", &script("process")])
        .env("PATH", path_with_binaries())
        .env("ARCA_STATE_DIR", &state)
        .env("ARCA_E2E_DIR", dir.path())
        .output()
        .unwrap();
    assert_success(&host);
    assert_eq!(stdout(&host), want);
    // In a microVM.
    let files = [
        arca_e2e::TestFile {
            source: tar.clone(),
            name: "big.tar".into(),
        },
        arca_e2e::TestFile {
            source: std::path::PathBuf::from("/sbin/mke2fs"),
            name: "mkfs.ext4".into(),
        },
    ];
    let vm = arca_e2e::run_with_kvm(
        &format!(
            "export PATH=\"$ARCA_E2E_DIR:$PATH\" ARCA_STATE_DIR=/tmp/arca-big\n{}",
            script("vm")
        ),
        &files,
        1200,
    );
    assert_success(&vm);
    assert_eq!(stdout(&vm), want);
}

/// `tests/e2e/hostile-cases.sh` with process isolation on this host: a container that
/// floods its output stays within its log cap; a wedged sandbox does not hold `stop`,
/// `rm -f` or `wait`.
#[test]
fn hostile_cases_pass_with_process_isolation_on_this_host() {
    if !is_root() {
        eprintln!("SKIP: process isolation needs root");
        return;
    }
    binary("arca");
    let out = arca_e2e::case_table_on_host("hostile-cases.sh");
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

/// The same table in microVMs (and with process isolation on the lab's L1).
#[test]
fn hostile_cases_pass_in_microvms() {
    binary("arca");
    let out = arca_e2e::case_table_with_kvm("hostile-cases.sh", 900);
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

/// `tests/e2e/jail-cases.sh` (issue 14): while a microVM runs, its `arca-vmm` has the
/// jail's uid and gid, no capabilities in any set, `NoNewPrivs: 1`, `Seccomp: 2` on
/// every thread, an empty root, its own pid, mount, network, ipc and uts namespaces and
/// its own cgroup with `memory.max`, `cpu.max` (`--cpus 0.5` holds a busy loop near
/// half a CPU) and `pids.max`; it still boots and serves its disks, vsock, network and a
/// published port, stops cleanly, dies with its supervisor, and leaves no cgroup.
#[test]
fn a_running_vmm_is_jailed_and_still_serves_its_vm() {
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let files = [
        TestFile {
            source: busybox_image(dir.path()),
            name: "busybox.tar".into(),
        },
        TestFile {
            source: repo_root().join("tests/e2e/jail-cases.sh"),
            name: "jail-cases.sh".into(),
        },
        TestFile {
            source: PathBuf::from("/sbin/mke2fs"),
            name: "mkfs.ext4".into(),
        },
    ];
    let out = run_with_kvm(
        r#"export PATH="$ARCA_E2E_DIR:$PATH" ARCA_STATE_DIR=/tmp/arca-jail
        sh "$ARCA_E2E_DIR/jail-cases.sh" "$ARCA_E2E_DIR/busybox.tar""#,
        &files,
        600,
    );
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}
