//! `arca-runtime`, the OCI runtime command line: the scenario table of
//! `tests/e2e/oci-cases.sh` with process isolation on this host (bundles written as
//! runc's default spec has them: `run`, its exit code and stdin; the config's hostname,
//! sysctl, pids limit, capabilities and masked paths applied; the lifecycle podman and
//! containerd drive: `create` with a pid file, `state`, `start`, `exec` and `exec
//! --detach`, `ps`, `kill`, `delete` leaving no directory, agent or cgroup; what Arca
//! cannot apply refused by name with nothing made; ids that would leave the root; a
//! hostile container setting a host-wide sysctl; the root private), and podman running
//! a container through it when podman is installed.

use std::process::Command;

use arca_e2e::{assert_success, binary, guest, is_root, path_with_binaries, repo_root, stdout};

#[test]
fn oci_cases_pass_with_process_isolation_on_this_host() {
    if !is_root() {
        eprintln!("SKIP: arca-runtime needs root (namespaces, mounts, cgroups)");
        return;
    }
    binary("arca-runtime");
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let tar = guest::busybox_image(dir.path());
    let out = Command::new("sh")
        .arg(repo_root().join("tests/e2e/oci-cases.sh"))
        .arg(&tar)
        .env("PATH", path_with_binaries())
        .output()
        .expect("run sh");
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}
