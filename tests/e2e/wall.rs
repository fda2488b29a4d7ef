//! The host side of the wall (issue 13): what another local user can reach of Arca's
//! state, and what a hostile image or guest can do to the host around the VM.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use arca_e2e::guest::busybox_image;
use arca_e2e::{assert_success, bin_dir, binary, is_root, repo_root, stdout};

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
