//! `arca-agent` runs containers: the scenario table of `agent-scenarios` (output, exit
//! codes 0/1/126/127/137, env/workdir/user, memory and pids limits, isolation, stdin,
//! tty, exec, signals, bad requests) against the agent on this host (process
//! isolation), on the lab's L1 host (process isolation with cgroup v2), and as PID 1 of
//! a microVM over vsock.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arca_e2e::{
    TestFile, assert_success, binary, is_root, lab, repo_root, run_with_kvm, stderr, stdout,
};

/// Builds the busybox test rootfs as a directory and, if asked, an ext4 image of it.
fn rootfs(dir: &Path, image: bool) -> TestFile {
    let tree = dir.join("rootfs");
    let img = dir.join("rootfs.ext4");
    let mut cmd = Command::new(repo_root().join("tests/guest/mkrootfs"));
    cmd.arg(&tree);
    if image {
        cmd.arg(&img);
    }
    assert!(
        cmd.status().expect("run mkrootfs").success(),
        "mkrootfs failed"
    );
    TestFile {
        source: if image { img } else { tree },
        name: "rootfs.ext4".into(),
    }
}

fn agent_initramfs(dir: &Path) -> TestFile {
    let out = dir.join("agent.cpio");
    let status = Command::new(repo_root().join("guest-agent/mkinitramfs"))
        .arg(&out)
        .arg(binary("arca-agent"))
        .status()
        .expect("run guest-agent/mkinitramfs");
    assert!(status.success(), "guest-agent/mkinitramfs failed");
    TestFile {
        source: out,
        name: "agent.cpio".into(),
    }
}

#[test]
fn scenarios_pass_on_this_host_with_process_isolation() {
    if !is_root() {
        eprintln!("SKIP: process isolation needs root (namespaces, mounts, cgroups)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = rootfs(dir.path(), false).source;
    let (mut agent, sock) = serve(dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new(binary("agent-scenarios"))
        .arg("--unix")
        .arg(&sock)
        .arg("--rootfs")
        .arg(&tree)
        .args(["--fstype", "dir", "--shutdown"])
        .output()
        .expect("run agent-scenarios");
    let status = agent.0.wait().expect("agent exits after shutdown");
    eprintln!("{}", stdout(&out));
    assert_success(&out);
    assert!(status.success(), "agent exit {status:?}");
    // Skips are allowed only for limits this host's cgroup v2 lacks.
    for line in stdout(&out).lines().filter(|l| l.starts_with("SKIP")) {
        assert!(line.contains("cgroup v2"), "unexpected skip: {line}");
    }
}

#[test]
fn scenarios_pass_with_process_isolation_on_a_cgroup_v2_host() {
    // The lab's L1 is a stock Debian kernel with cgroup v2 mounted: every scenario,
    // limits included, must pass there.
    let dir = tempfile::tempdir().unwrap();
    let tree = rootfs(dir.path(), false).source;
    let args = vec![
        "--file".to_string(),
        format!("{}:/tmp/rootfs", tree.display()),
        "--file".to_string(),
        format!(
            "{}:/opt/arca/bin/agent-scenarios",
            binary("agent-scenarios").display()
        ),
    ];
    let out = lab(
        &args,
        "arca-agent serve --listen /tmp/agent.sock --run-dir /run/arca & \
         while [ ! -S /tmp/agent.sock ]; do sleep 0.05; done; \
         agent-scenarios --unix /tmp/agent.sock --rootfs /tmp/rootfs --fstype dir --shutdown; rc=$?; \
         wait; exit $rc",
        600,
    );
    eprintln!("{}", stdout(&out));
    assert_success(&out);
    assert!(!stdout(&out).contains("SKIP"), "{}", stdout(&out));
}

#[test]
fn scenarios_pass_in_a_microvm_over_vsock() {
    let dir = tempfile::tempdir().unwrap();
    let image = rootfs(dir.path(), true);
    let initramfs = agent_initramfs(dir.path());
    let scenarios = TestFile {
        source: binary("agent-scenarios"),
        name: "agent-scenarios".into(),
    };
    let out = run_with_kvm(
        r#"arca-vmm --kernel "$ARCA_KERNEL" --initrd "$ARCA_E2E_DIR/agent.cpio" --memory 256 \
             --cmdline arca.poweroff_when_idle=0 --disk "$ARCA_E2E_DIR/rootfs.ext4,ro" --vsock cid=3,uds=/tmp/agent.vsock \
             --console file:/tmp/console.log --boot-timing 2>/tmp/vmm.err &
           vmm=$!
           "$ARCA_E2E_DIR/agent-scenarios" --vsock /tmp/agent.vsock:1024 --rootfs /dev/vda --fstype ext4 --shutdown
           rc=$?
           wait $vmm; echo "vmm-exit=$?"
           cat /tmp/vmm.err >&2; tail -n 20 /tmp/console.log >&2
           exit $rc"#,
        &[image, initramfs, scenarios],
        600,
    );
    eprintln!("{}", stdout(&out));
    assert_success(&out);
    let text = stdout(&out);
    assert!(!text.contains("SKIP"), "{text}");
    assert!(
        text.contains("vmm-exit=0"),
        "the VM did not power off cleanly:\n{text}\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("agent-ready"), "{}", stderr(&out));
}

/// An agent process killed when the test ends, passed or not (a leftover would keep
/// the test harness's output pipe open).
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `arca-agent serve` in `dir`; returns the child and its socket.
fn serve(dir: &Path) -> (Agent, std::path::PathBuf) {
    let sock = dir.join("agent.sock");
    let child = Command::new(binary("arca-agent"))
        .args(["serve", "--listen"])
        .arg(&sock)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args([
            "--cgroup-parent",
            &format!("arca-e2e-h{}", std::process::id()),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start arca-agent serve");
    (Agent(child), sock)
}

#[test]
fn a_hostile_image_cannot_make_the_agent_write_or_mount_outside_its_rootfs() {
    use arca_agent_client::{AgentAddress, AgentClient, AgentClientError};
    use arca_protocol::{ContainerSpec, ErrorCode, ProcessSpec, Rootfs, StdioStream};
    if !is_root() {
        eprintln!("SKIP: process isolation needs root (namespaces, mounts, cgroups)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = rootfs(dir.path(), false).source;
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // /etc/hostname and /etc/hosts point at host paths; a FIFO would block a naive open.
    for (name, target) in [
        ("hostname", outside.join("hostname")),
        ("hosts", outside.join("hosts")),
    ] {
        let p = tree.join("etc").join(name);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(&target, &p).unwrap();
    }
    let status = Command::new("mkfifo")
        .arg(tree.join("etc/fifo"))
        .status()
        .unwrap();
    assert!(status.success());
    let (mut agent, sock) = serve(dir.path());
    let addr = AgentAddress::Unix(sock);
    let mut c = AgentClient::connect(&addr, Duration::from_secs(10)).unwrap();
    let spec = |id: &str, root: &Path| ContainerSpec {
        id: id.into(),
        rootfs: Rootfs {
            source: root.display().to_string(),
            fstype: "dir".into(),
            writable: Default::default(),
        },
        process: ProcessSpec {
            args: vec![
                "sh".into(),
                "-c".into(),
                "cat /etc/hostname; hostname".into(),
            ],
            ..Default::default()
        },
        hostname: Some("boxy".into()),
        resources: Default::default(),
        network: Default::default(),
        init: false,
        interfaces: Vec::new(),
        hosts: Vec::new(),
        dns: Vec::new(),
        mounts: Vec::new(),
        security: Default::default(),
        sysctls: Vec::new(),
    };
    c.create(spec("hostile", &tree)).unwrap();
    let out = addr.attach("hostile", None, StdioStream::Stdout).unwrap();
    c.start("hostile").unwrap();
    let text = String::from_utf8_lossy(&out.read_to_end_vec().unwrap()).into_owned();
    // `cat` fails on the dangling link; `hostname` answers from the kernel.
    assert_eq!(c.wait("hostile", None).unwrap().code, 0, "{text}");
    assert!(text.ends_with("boxy\n"), "{text}");
    c.remove("hostile", false).unwrap();
    let leaked: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(
        leaked.is_empty(),
        "the agent wrote outside the rootfs: {leaked:?}"
    );

    // A mount point that is a symlink out of the image is refused, not followed.
    let tree2 = dir.path().join("rootfs2");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(&tree2)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_dir(tree2.join("proc")).unwrap();
    std::os::unix::fs::symlink(&outside, tree2.join("proc")).unwrap();
    let e = c.create(spec("hostile2", &tree2)).unwrap_err();
    assert!(
        matches!(&e, AgentClientError::Agent(a) if a.code == ErrorCode::BadRequest && a.message.contains("not a directory")),
        "{e}"
    );
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "something was mounted outside"
    );
    c.shutdown().unwrap();
    assert!(agent.0.wait().unwrap().success());
}
