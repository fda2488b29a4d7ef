//! Container networking: the scenario table of `tests/e2e/network-cases.sh` (networks
//! created, listed and refused; `-p` fetched from the host and refused when the port is
//! taken; containers reaching each other by name, not across networks, not from
//! `--network none`; nothing left after `rm -f`, after the sandbox is SIGKILLed, or
//! after the monitor and sandbox are SIGKILLed and `arca ps` runs), with
//! `--isolation=process` on this host, and in one lab run with `--isolation=vm` and
//! `--isolation=process` on L1.

use std::path::PathBuf;
use std::process::Command;

use arca_e2e::guest::busybox_image;
use arca_e2e::{
    TestFile, assert_success, bin_dir, binary, is_root, repo_root, run_with_kvm, stdout,
};

fn tool(name: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(name).exists())
}

#[test]
fn network_cases_pass_with_process_isolation_on_this_host() {
    if !is_root() {
        eprintln!("SKIP: container networking needs root");
        return;
    }
    if !["ip", "nft", "wget"].iter().all(|t| tool(t))
        || !std::path::Path::new("/dev/net/tun").exists()
    {
        eprintln!("SKIP: ip, nft and wget are needed (make test installs them)");
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let tar = busybox_image(dir.path());
    let out = Command::new("sh")
        .arg(repo_root().join("tests/e2e/network-cases.sh"))
        .arg("process")
        .arg(&tar)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("ARCA_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

#[test]
fn network_cases_pass_in_microvms_and_with_process_isolation_in_the_lab() {
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let tar = busybox_image(dir.path());
    let files = [
        TestFile {
            source: tar,
            name: "busybox.tar".into(),
        },
        TestFile {
            source: repo_root().join("tests/e2e/network-cases.sh"),
            name: "network-cases.sh".into(),
        },
        TestFile {
            source: PathBuf::from("/sbin/mke2fs"),
            name: "mkfs.ext4".into(),
        },
    ];
    let script = r#"export PATH="$ARCA_E2E_DIR:$PATH"
        echo "== vm"; ARCA_STATE_DIR=/tmp/arca-vm sh "$ARCA_E2E_DIR/network-cases.sh" vm "$ARCA_E2E_DIR/busybox.tar"; vm=$?
        pr=0
        if [ -n "$ARCA_LAB" ]; then
          echo "== process"; ARCA_STATE_DIR=/tmp/arca-pr sh "$ARCA_E2E_DIR/network-cases.sh" process "$ARCA_E2E_DIR/busybox.tar"; pr=$?
        fi
        [ $vm -eq 0 ] && [ $pr -eq 0 ]"#;
    let out = run_with_kvm(script, &files, 900);
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}
