//! The nested lab itself: what other end-to-end tests rely on.

use std::io::Write;
use std::process::Command;

use arca_e2e::{TestFile, lab, run_with_kvm, stderr, stdout};

#[test]
fn lab_returns_the_commands_stdout_stderr_and_exit_status() {
    let out = lab(
        &[],
        "echo hi; echo oops >&2; printf 'no newline'; exit 3",
        120,
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hi\nno newline");
    assert_eq!(stderr(&out), "oops\n");
}

#[test]
fn lab_passes_binary_output_through_unchanged() {
    // Every byte value, CR and LF among them, must survive the serial line.
    let out = lab(
        &[],
        "i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done",
        120,
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let expected: Vec<u8> = (0..=255).collect();
    assert_eq!(out.stdout, expected);
}

#[test]
fn lab_copies_files_and_provides_binaries_kernel_and_mounts() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"payload from the host\n").unwrap();
    let args = [
        "--file".to_owned(),
        format!("{}:/data/in.txt", file.path().display()),
    ];
    let script = r#"
        cat /data/in.txt
        command -v arca-vmm
        test -f "$ARCA_KERNEL" && echo kernel-present
        grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts && echo cgroup2
        grep -q ' /dev devtmpfs ' /proc/mounts && echo devtmpfs
        echo scratch > /tmp/scratch && cat /tmp/scratch
    "#;
    let out = lab(&args, script, 120);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "payload from the host\n/opt/arca/bin/arca-vmm\nkernel-present\ncgroup2\ndevtmpfs\nscratch\n"
    );
}

#[test]
fn lab_reports_a_frozen_l1_with_75_and_the_cpu_state() {
    // The command stops L1's heartbeat (SIGSTOP to its sleep), as a frozen L1 would;
    // the lab must notice within ARCA_LAB_FROZEN_SECS, not at the timeout.
    let out = Command::new(arca_e2e::repo_root().join("tests/lab/lab"))
        .args(["run", "--timeout", "300", "--"])
        .arg(r#"sleep 6; kill -STOP $(ps -o pid,args | awk '/[s]leep 5/{print $1}'); echo stopped; sleep 600"#)
        .env("ARCA_LAB_FROZEN_SECS", "10")
        .env("ARCA_BIN_DIR", arca_e2e::bin_dir())
        .env("ARCA_KERNEL", arca_e2e::kernel())
        .output()
        .unwrap();
    assert!(
        arca_e2e::l1_froze(&out),
        "exit {:?}, stderr: {}",
        out.status.code(),
        stderr(&out)
    );
    assert_eq!(stdout(&out), "stopped\n");
    let err = stderr(&out);
    assert!(err.contains("lab: monitor: RIP="), "stderr: {err}");
    assert!(err.contains("lab: monitor: LVTT"), "stderr: {err}");
}

#[test]
fn lab_times_out_with_124_and_leaves_no_process_or_file_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(arca_e2e::repo_root().join("tests/lab/lab"))
        .args(["run", "--timeout", "5", "--", "sleep 600"])
        .env("TMPDIR", tmp.path())
        .env("ARCA_BIN_DIR", arca_e2e::bin_dir())
        .env("ARCA_KERNEL", arca_e2e::kernel())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 5 s"),
        "stderr: {}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let needle = tmp.path().to_string_lossy().into_owned();
    assert!(
        !stdout(&ps).lines().any(|l| l.contains(&needle)),
        "a process of the timed-out run is still alive"
    );
}

#[test]
fn lab_rejects_bad_usage_with_125() {
    for args in [
        vec!["run"],
        vec!["run", "--file", "/nonexistent:/x", "--", "true"],
        vec!["run", "--timeout", "soon", "--", "true"],
    ] {
        let out = Command::new(arca_e2e::repo_root().join("tests/lab/lab"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("lab: error: "),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn kvm_runs_guest_code_where_end_to_end_tests_run() {
    // The host check creates a VM and runs a small real-mode program through KVM_RUN.
    let marker = tempfile::NamedTempFile::new().unwrap();
    let files = [TestFile {
        source: marker.path().to_owned(),
        name: "marker".into(),
    }];
    let out = run_with_kvm(
        "test -f \"$ARCA_E2E_DIR/marker\" && arca-vmm --check-kvm",
        &files,
        120,
    );
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).starts_with("KVM usable: /dev/kvm (API version 12"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("a test guest ran through KVM_RUN"));
}
