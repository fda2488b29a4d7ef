//! Helpers for Arca's end-to-end tests.
//!
//! An end-to-end test needs a host whose KVM boots a standard Linux guest. On such a host
//! the tests run their commands directly; on any other (kvm_pvm, no /dev/kvm) they run
//! them inside the nested lab, `tests/lab/lab`. Either way a command sees the release
//! binaries on `PATH`, the guest kernel in `$ARCA_KERNEL`, and the test's files under
//! `$ARCA_E2E_DIR`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod guest;

/// Where end-to-end commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// Directly on this host, which has a usable KVM.
    Host,
    /// Inside an L1 VM of the nested lab.
    Lab,
}

/// Where a test's files land inside the lab.
const LAB_E2E_DIR: &str = "/e2e";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The directory with the release binaries (`$ARCA_BIN_DIR`, default target/release).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("ARCA_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release"))
}

/// `$PATH` with the release binaries first.
pub fn path_with_binaries() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The path of release binary `name`; panics with what to do when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: end-to-end tests need release binaries (run `make test`, or `cargo build --release` first)",
        path.display()
    );
    path
}

/// The guest kernel: `$ARCA_KERNEL`, else the cached build of `kernels/build.sh`.
pub fn kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("ARCA_KERNEL") {
        return PathBuf::from(k);
    }
    let out = Command::new(repo_root().join("kernels/build.sh"))
        .arg("--path")
        .output()
        .expect("kernels/build.sh runs");
    assert!(
        out.status.success(),
        "the guest kernel is not built: run `make kernel` (or `make test`), or set ARCA_KERNEL"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Where this host's end-to-end commands run: `$ARCA_E2E_RUNNER` (`host` or `lab`) when
/// set, else `host` when `arca-vmm --check-kvm` passes here and `lab` otherwise.
pub fn runner() -> Runner {
    static RUNNER: OnceLock<Runner> = OnceLock::new();
    *RUNNER.get_or_init(|| match std::env::var("ARCA_E2E_RUNNER").as_deref() {
        Ok("host") => Runner::Host,
        Ok("lab") => Runner::Lab,
        Ok(other) => panic!("ARCA_E2E_RUNNER must be `host` or `lab`, not {other:?}"),
        Err(_) => {
            let usable = Command::new(binary("arca-vmm"))
                .arg("--check-kvm")
                .output()
                .is_ok_and(|o| o.status.success());
            if usable { Runner::Host } else { Runner::Lab }
        }
    })
}

/// A file a test hands to its command, which finds it at `$ARCA_E2E_DIR/<name>`.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// The file on this host.
    pub source: PathBuf,
    /// Its name under `$ARCA_E2E_DIR`.
    pub name: String,
}

/// Runs `script` with `sh` where KVM works (see [`runner`]) and returns its output.
pub fn run_with_kvm(script: &str, files: &[TestFile], timeout_secs: u32) -> Output {
    match runner() {
        Runner::Lab => {
            let args: Vec<String> = files
                .iter()
                .flat_map(|f| {
                    [
                        "--file".to_owned(),
                        format!("{}:{LAB_E2E_DIR}/{}", f.source.display(), f.name),
                    ]
                })
                .collect();
            lab(
                &args,
                &format!("export ARCA_E2E_DIR={LAB_E2E_DIR}\n{script}"),
                timeout_secs,
            )
        }
        Runner::Host => {
            let dir = tempfile::tempdir().expect("create a temporary directory");
            for f in files {
                std::fs::copy(&f.source, dir.path().join(&f.name)).expect("copy a test file");
            }
            let path = path_with_binaries();
            Command::new("timeout")
                .arg(timeout_secs.to_string())
                .args(["sh", "-c", script])
                .env("PATH", path)
                .env("ARCA_KERNEL", kernel())
                .env("ARCA_E2E_DIR", dir.path())
                .output()
                .expect("run sh")
        }
    }
}

/// Runs `tests/lab/lab run <args> --timeout <secs> -- <script>`.
///
/// When L1 itself froze (the lab's exit 75 with "lab: L1 froze": its heartbeat stopped
/// and an NMI did not revive it, which QEMU's TCG with nested SVM does now and then,
/// see docs/testing.md), the command runs again in a new L1, at most twice, each time
/// with another L1 memory size (the freezes came at the same point of one workload:
/// the machine's layout and timing change with its size). What the frozen runs said
/// leads the returned stderr, so a retry shows. A failure of the command itself is
/// never retried.
pub fn lab(args: &[String], script: &str, timeout_secs: u32) -> Output {
    // Fail early and clearly when the binaries the lab would copy were never built.
    binary("arca-vmm");
    let run = |memory: Option<&str>| {
        let mut cmd = Command::new(repo_root().join("tests/lab/lab"));
        cmd.arg("run").args(args);
        if let Some(m) = memory {
            cmd.args(["--memory", m]);
        }
        cmd.args(["--timeout", &timeout_secs.to_string(), "--", script])
            .env("ARCA_KERNEL", kernel())
            .env("ARCA_BIN_DIR", bin_dir())
            .output()
            .expect("tests/lab/lab runs")
    };
    let mut out = run(None);
    let mut notes = Vec::new();
    for memory in ["5120", "7168"] {
        if !l1_froze(&out) {
            break;
        }
        let note = format!(
            "lab: L1 froze; that run said:\n{}{}lab: running the command again in a new L1 of {memory} MiB\n",
            stdout(&out),
            stderr(&out)
        );
        eprint!("{note}");
        notes.push(note.into_bytes());
        out = run(Some(memory));
    }
    notes.push(out.stderr);
    out.stderr = notes.concat();
    out
}

/// Whether a lab run ended because L1 froze (`tests/lab/lab`'s exit 75 and its words).
pub fn l1_froze(out: &Output) -> bool {
    out.status.code() == Some(75) && stderr(out).contains("lab: L1 froze")
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails the test with the command's exit status and both streams unless it succeeded.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

/// Whether the tests run as root (process isolation needs it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs the POSIX sh scenario table `tests/e2e/TABLE` (which takes `vm|process
/// IMAGE_TAR`) on the busybox image, on this host with `--isolation=process`, with
/// `arca` and its binaries on PATH and a fresh state directory.
pub fn case_table_on_host(table: &str) -> Output {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let tar = guest::busybox_image(dir.path());
    guest::volume_image(dir.path());
    Command::new("sh")
        .arg(repo_root().join("tests/e2e").join(table))
        .arg("process")
        .arg(&tar)
        .env("PATH", path_with_binaries())
        .env("ARCA_STATE_DIR", dir.path().join("state"))
        .output()
        .expect("run sh")
}

/// The virtiofsd on PATH or in cargo's bin directory (`make test-deps` installs it).
pub fn virtiofsd() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
}

/// Runs the scenario table `tests/e2e/TABLE` where KVM works (see [`run_with_kvm`]):
/// with `--isolation=vm`, and in the lab also with `--isolation=process` on L1.
pub fn case_table_with_kvm(table: &str, timeout_secs: u32) -> Output {
    table_with_kvm(table, timeout_secs, true)
}

/// [`case_table_with_kvm`] for microVMs only (a table whose process half runs on this
/// host instead, by [`case_table_on_host`]).
pub fn vm_case_table_with_kvm(table: &str, timeout_secs: u32) -> Output {
    table_with_kvm(table, timeout_secs, false)
}

fn table_with_kvm(table: &str, timeout_secs: u32, process_too: bool) -> Output {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut files = vec![
        TestFile {
            source: guest::busybox_image(dir.path()),
            name: "busybox.tar".into(),
        },
        // Beside busybox.tar, where the tables look for it.
        TestFile {
            source: guest::volume_image(dir.path()),
            name: "volbox.tar".into(),
        },
        TestFile {
            source: repo_root().join("tests/e2e").join(table),
            name: table.into(),
        },
        TestFile {
            source: PathBuf::from("/sbin/mke2fs"),
            name: "mkfs.ext4".into(),
        },
        // The UDP client of the network table.
        TestFile {
            source: PathBuf::from("/usr/bin/socat"),
            name: "socat".into(),
        },
        // A terminal for `arca cp`'s summary in the CLI table (L1 has no util-linux).
        TestFile {
            source: PathBuf::from("/usr/bin/script"),
            name: "script".into(),
        },
    ];
    // Volumes in microVMs need virtiofsd (its libraries come along).
    if let Some(v) = virtiofsd() {
        files.push(TestFile {
            source: v,
            name: "virtiofsd".into(),
        });
    }
    // A table whose command makes no progress for 300 s is shown stuck (what runs, each
    // container's last words) and that command is killed, so the table goes on and
    // fails there rather than at the lab's timeout with nothing said.
    let script = format!(
        r#"export PATH="$ARCA_E2E_DIR:$PATH"
        table() {{ # MODE STATE: the table, watched
          ARCA_STATE_DIR=$2 sh "$ARCA_E2E_DIR/{table}" $1 "$ARCA_E2E_DIR/busybox.tar" >/tmp/table.$1 2>&1 &
          tp=$!; last=0; still=0
          while kill -0 $tp 2>/dev/null; do
            sleep 5
            n=$(wc -l </tmp/table.$1)
            # Shown as it comes: a lab that dies keeps what was said.
            if [ "$n" = "$last" ]; then still=$((still+5)); else sed -n "$((last+1)),${{n}}p" /tmp/table.$1; still=0; last=$n; fi
            if [ $still -ge 300 ]; then
              echo "== no progress for 300 s after: $(tail -n 1 /tmp/table.$1)"
              ps -o pid,ppid,stat,args | grep -v ' \[' | grep -v '^ *[0-9]* *[0-9]* *[A-Z<N]* *\['
              for d in $2/containers/*/; do
                [ -d "$d" ] || continue
                echo "-- $(cat $d/name 2>/dev/null) $d"; tail -n 5 $d/sandbox.log $d/monitor.log 2>/dev/null
              done
              pkill -9 -P $tp; still=0
            fi
          done
          wait $tp; rc=$?
          sed -n "$((last+1)),\$p" /tmp/table.$1
          return $rc
        }}
        echo "== vm"; table vm /tmp/arca-vm; vm=$?
        pr=0
        if [ -n "$ARCA_LAB" ] && {process_too}; then
          echo "== process"; table process /tmp/arca-pr; pr=$?
        fi
        [ $vm -eq 0 ] && [ $pr -eq 0 ]"#
    );
    run_with_kvm(&script, &files, timeout_secs)
}
