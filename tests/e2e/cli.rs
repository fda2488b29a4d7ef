//! The `arca` CLI: the scenario table of `tests/e2e/cli-cases.sh` (output, exit codes
//! 0/3/125/126/127, stderr, env/workdir/user, image Cmd, --entrypoint, stdin, PID 1
//! signal protection, memory limit, unknown image, bad reference, unknown or
//! unsupported flags, nothing left behind) with `--isolation=process` on this host and
//! in the lab's L1 (cgroup v2), and with `--isolation=vm` where KVM works; and image
//! archives that must be refused.

use std::process::Command;

use arca_e2e::guest::busybox_image;
use arca_e2e::{
    assert_success, binary, case_table_on_host, case_table_with_kvm, is_root, stderr, stdout,
};

#[test]
fn cli_cases_pass_with_process_isolation_on_this_host() {
    if !is_root() {
        eprintln!("SKIP: process isolation needs root");
        return;
    }
    binary("arca");
    let out = case_table_on_host("cli-cases.sh");
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

#[test]
fn cli_cases_pass_in_microvms_and_with_process_isolation_on_a_cgroup_v2_host() {
    binary("arca");
    let out = case_table_with_kvm("cli-cases.sh", 1500);
    eprintln!("{}", stdout(&out));
    assert_success(&out);
    assert!(!stdout(&out).contains("skip"), "{}", stdout(&out));
}

#[test]
fn tampered_and_malformed_archives_are_refused_with_nothing_loaded() {
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let tar = busybox_image(dir.path());
    let state = dir.path().join("state");
    // A layer changed after its digest was recorded.
    let script = r#"set -e
        mkdir t && tar -C t -xf "$1"
        layer=$(ls t/*/layer.tar)
        echo tampered > extra && tar -rf "$layer" extra
        tar -C t -cf tampered.tar .
        echo not an archive > junk.tar
        printf '[{"Config":"../../etc/passwd","Layers":[]}]' > manifest.json && tar -cf escape.tar manifest.json"#;
    let prep = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&tar)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_success(&prep);
    for (archive, needle) in [
        ("tampered.tar", "fails verification"),
        ("junk.tar", "not an image archive"),
        ("escape.tar", "bad path"),
        ("missing.tar", "Cannot open"),
    ] {
        let out = Command::new(binary("arca"))
            .args(["load", "-i"])
            .arg(dir.path().join(archive))
            .env("ARCA_STATE_DIR", &state)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{archive}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{archive}: {}", stderr(&out));
        let images = Command::new(binary("arca"))
            .args(["images", "-q"])
            .env("ARCA_STATE_DIR", &state)
            .output()
            .unwrap();
        assert!(stdout(&images).trim().is_empty(), "{archive} left an image");
    }
    let leftovers: Vec<_> = std::fs::read_dir(state.join("images/tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "work files left: {leftovers:?}");
}

#[test]
fn oci_layout_archives_from_skopeo_load_and_save_back() {
    binary("arca");
    let has_skopeo = Command::new("sh")
        .args(["-c", "command -v skopeo"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_skopeo {
        eprintln!("SKIP: skopeo is needed (make test installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = busybox_image(dir.path());
    let oci = dir.path().join("oci.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("docker-archive:{}", tar.display()))
        .arg(format!("oci-archive:{}:busybox:oci", oci.display()))
        .output()
        .unwrap();
    assert_success(&out);
    let state = dir.path().join("state");
    let arca = |args: &[&str]| {
        Command::new(binary("arca"))
            .args(args)
            .env("ARCA_STATE_DIR", &state)
            .output()
            .unwrap()
    };
    let out = arca(&["load", "-i", oci.to_str().unwrap()]);
    assert_success(&out);
    assert_eq!(stdout(&out), "Loaded image: busybox:oci\n");
    // Saved back as a docker archive, it loads into a fresh store with the same id.
    let saved = dir.path().join("saved.tar");
    assert_success(&arca(&[
        "save",
        "-o",
        saved.to_str().unwrap(),
        "busybox:oci",
    ]));
    let id = stdout(&arca(&["images", "-q"]));
    let out = Command::new(binary("arca"))
        .args(["load", "-i", saved.to_str().unwrap()])
        .env("ARCA_STATE_DIR", dir.path().join("state2"))
        .output()
        .unwrap();
    assert_success(&out);
    let id2 = Command::new(binary("arca"))
        .args(["images", "-q"])
        .env("ARCA_STATE_DIR", dir.path().join("state2"))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&id2),
        id,
        "the image id (config digest) survives save and load"
    );
}
