//! `agent-bench`: how fast a container starts, measured round-robin against a peer in
//! the same run. Prints medians and ratios.
//!
//! ```text
//! agent-bench vm --rounds N --kernel K --initrd AGENT.cpio --disk ROOTFS.ext4 [--qemu QEMU --qemu-dir DIR]
//! agent-bench process --rounds N --rootfs DIR [--crun CRUN]
//! agent-bench cli --rounds N --image-tar TAR --rootfs DIR [--crun CRUN] [--runc RUNC] [--kernel K --bare-initrd INIT.cpio]
//! ```
//!
//! `vm`: per round, `arca-vmm` boots the agent initramfs with the image on a read-only
//! virtio-blk disk; figures: spawn to the agent's "ready" console line, spawn to a
//! completed vsock hello (agent ready as the host sees it), `start` request to the
//! container's first stdout byte, and spawn to VMM exit for a whole `create, start,
//! wait, remove` of `echo` (the agent powers the VM off when idle). The peer is QEMU
//! microvm booting the same kernel and initramfs to the same console line.
//!
//! `process`: `arca-agent serve` and the same container on the host; the peer is
//! `crun run` of the same rootfs printing the same line.
//!
//! `vm` then snapshots a booted VM at its agent's hello (`--control`, `pause`,
//! `snapshot`) and, per round, restores it (`--restore`): spawn to the agent's hello
//! over vsock, beside the cold boot's; and the density of idle sandboxes: the host PSS
//! per VMM of 1, 5 and 10 VMs restored from the one snapshot (sharing its memory file's
//! pages), beside as many cold-booted ones.
//!
//! `cli`: `arca run --rm busybox true`, end to end through the CLI, with
//! `--isolation=vm` (warm: restored from the template; and cold: `--no-snapshot`) and
//! `--isolation=process`, beside `crun run` and `runc run` of the same rootfs, and, with
//! `--kernel K --bare-initrd INIT.cpio`, beside a bare cold boot of the same kernel to
//! init (spawn to the init's first console line, the VM as large as `arca run`'s).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arca_agent_client::{AgentAddress, AgentClient};
use arca_protocol::{
    ContainerSpec, NetworkMode, ProcessSpec, Resources, Rootfs, StdioStream, WritableLayer,
};

const READY_LINE: &str = "arca-agent: ready";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn row(metric: &str, ours: &[f64], peer: Option<&[f64]>) {
    let fmt = |x: Option<f64>| x.map_or("NA".to_string(), |x| format!("{x:.1}"));
    let o = median(ours);
    let p = peer.and_then(median);
    let ratio = match (o, p) {
        (Some(o), Some(p)) if p > 0.0 => format!("{:.2}x", o / p),
        _ => "-".into(),
    };
    println!("{metric:<44} {:>10} {:>10} {:>8}", fmt(o), fmt(p), ratio);
}

fn echo_spec(id: &str, rootfs: Rootfs) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        rootfs,
        process: ProcessSpec {
            args: vec!["echo".into(), "hello".into()],
            ..Default::default()
        },
        hostname: None,
        resources: Resources::default(),
        network: NetworkMode::Isolated,
        init: false,
        interfaces: Vec::new(),
        hosts: Vec::new(),
        dns: Vec::new(),
        mounts: Vec::new(),
        security: Default::default(),
        sysctls: Vec::new(),
    }
}

/// Waits until a line containing `marker` appears on `child`'s stdout; returns when.
fn wait_line(child: &mut Child, marker: &str) -> anyhow::Result<Instant> {
    let out = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        if line?.contains(marker) {
            let at = Instant::now();
            // Keep draining so the guest never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok(at);
        }
    }
    bail!("{marker:?} never appeared")
}

/// create, attach stdout, start (timed to the first output byte), wait, remove.
fn run_echo(client: &mut AgentClient, spec: ContainerSpec) -> anyhow::Result<Duration> {
    let id = spec.id.clone();
    client.create(spec)?;
    let mut out = client.address().attach(&id, None, StdioStream::Stdout)?;
    let t = Instant::now();
    client.start(&id)?;
    let mut byte = [0u8; 1];
    out.read_exact(&mut byte)?;
    let first = t.elapsed();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest)?;
    let status = client.wait(&id, None)?;
    anyhow::ensure!(status.code == 0, "echo exited {}", status.code);
    client.remove(&id, false)?;
    Ok(first)
}

fn vm(opts: &Opts) -> anyhow::Result<()> {
    let kernel = opts.need("--kernel")?;
    let initrd = opts.need("--initrd")?;
    let disk = opts.need("--disk")?;
    let work = tempfile::tempdir()?;
    let (mut ready_console, mut ready_vsock, mut first_out, mut total) =
        (vec![], vec![], vec![], vec![]);
    let mut qemu_ready = vec![];
    for round in 0..opts.rounds {
        let uds = work.path().join(format!("v{round}.sock"));
        let t0 = Instant::now();
        let mut vmm = Command::new("arca-vmm")
            .args([
                "--kernel",
                kernel,
                "--initrd",
                initrd,
                "--memory",
                "128",
                "--cmdline",
                "quiet",
            ])
            .args(["--disk", &format!("{disk},ro")])
            .args(["--vsock", &format!("cid=3,uds={}", uds.display())])
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn arca-vmm")?;
        let console = wait_line(&mut vmm, READY_LINE);
        let addr = AgentAddress::Vsock {
            uds: uds.clone(),
            port: 1024,
        };
        let mut client = AgentClient::connect(&addr, Duration::from_secs(60))?;
        ready_vsock.push(ms(t0.elapsed()));
        ready_console.push(ms(console?.duration_since(t0)));
        let rootfs = Rootfs {
            source: "/dev/vda".into(),
            fstype: "ext4".into(),
            writable: WritableLayer::Tmpfs,
        };
        first_out.push(ms(run_echo(&mut client, echo_spec("bench", rootfs))?));
        // Removing the last container powers the VM off once we hang up.
        drop(client);
        let status = vmm.wait()?;
        total.push(ms(t0.elapsed()));
        anyhow::ensure!(status.success(), "arca-vmm exited {status}");

        if let Some(qemu) = opts.get("--qemu") {
            let dir = opts.get("--qemu-dir").unwrap_or("/usr/share/qemu");
            let append = format!("{} quiet", vmm::builder::BASE_CMDLINE);
            // The same devices as ours where this host can give them (vhost-vsock
            // needs /dev/vhost-vsock); without a vsock device the agent still listens.
            let vsock: &[&str] = if Path::new("/dev/vhost-vsock").exists() {
                &["-device", "vhost-vsock-device,guest-cid=3"]
            } else {
                &[]
            };
            let t0 = Instant::now();
            let mut q = Command::new(qemu)
                .args([
                    "-L",
                    dir,
                    "-enable-kvm",
                    "-cpu",
                    "host",
                    "-M",
                    "microvm,x-option-roms=off,rtc=off",
                ])
                .args([
                    "-device",
                    "i8042",
                    "-m",
                    "128",
                    "-smp",
                    "1",
                    "-nodefaults",
                    "-no-reboot",
                ])
                .args([
                    "-display", "none", "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
                ])
                .args(["-append", &append])
                .args([
                    "-drive",
                    &format!("file={disk},if=none,id=d0,format=raw,readonly=on"),
                ])
                .args(["-device", "virtio-blk-device,drive=d0"])
                .args(vsock)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("spawn qemu")?;
            let at = wait_line(&mut q, READY_LINE);
            let _ = q.kill();
            let _ = q.wait();
            qemu_ready.push(ms(at?.duration_since(t0)));
        }
    }
    println!(
        "rounds: {} each, round-robin; guest: 1 vCPU, 128 MiB, same kernel and agent initramfs",
        opts.rounds
    );
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "median ms", "arca-vmm", "qemu", "ratio"
    );
    let peer = (!qemu_ready.is_empty()).then_some(qemu_ready.as_slice());
    row(
        "spawn -> agent ready line on the console",
        &ready_console,
        peer,
    );
    row("spawn -> agent hello over vsock", &ready_vsock, None);
    row("start request -> first output byte", &first_out, None);
    row("spawn -> VM exit (create/start/wait/rm echo)", &total, None);
    restored(opts, work.path(), &ready_vsock)
}

/// `arca-vmm` booting the bench's guest (agent initramfs, the disk read-only, 128 MiB),
/// with vsock at `uds` and `extra` arguments.
fn boot_vmm(opts: &Opts, uds: &Path, extra: &[&str]) -> anyhow::Result<Child> {
    Command::new("arca-vmm")
        .args(["--kernel", opts.need("--kernel")?])
        .args(["--initrd", opts.need("--initrd")?])
        .args(["--memory", "128", "--cmdline", "quiet", "--console", "none"])
        .args(["--disk", &format!("{},ro", opts.need("--disk")?)])
        .args(["--vsock", &format!("cid=3,uds={}", uds.display())])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .context("spawn arca-vmm")
}

/// `arca-vmm` restoring the snapshot in `dir` (with the bench's disk), vsock at `uds`.
fn restore_vmm(opts: &Opts, dir: &Path, uds: &Path) -> anyhow::Result<Child> {
    Command::new("arca-vmm")
        .arg("--restore")
        .arg(format!(
            "state={},memory={}",
            dir.join("state.json").display(),
            dir.join("memory.bin").display()
        ))
        .args(["--disk", &format!("{},ro", opts.need("--disk")?)])
        .args(["--vsock", &format!("cid=3,uds={}", uds.display())])
        .stdout(Stdio::null())
        .spawn()
        .context("spawn arca-vmm --restore")
}

fn agent_at(uds: &Path) -> anyhow::Result<AgentClient> {
    let addr = AgentAddress::Vsock {
        uds: uds.to_owned(),
        port: 1024,
    };
    Ok(AgentClient::connect(&addr, Duration::from_secs(60))?)
}

/// The host PSS of process `pid` in KiB (`/proc/PID/smaps_rollup`).
fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no Pss in smaps_rollup")
}

/// N idle sandboxes side by side, each up to its agent's hello: their PSS per VMM (MiB).
fn density(
    n: usize,
    mut spawn: impl FnMut(&Path) -> anyhow::Result<Child>,
    work: &Path,
) -> anyhow::Result<f64> {
    let mut vms = Vec::new();
    let mut clients = Vec::new();
    for i in 0..n {
        let uds = work.join(format!("d{i}.sock"));
        let _ = std::fs::remove_file(&uds);
        vms.push(spawn(&uds)?);
        clients.push(agent_at(&uds)?);
    }
    // Settled: what the guests touched on their way up is in.
    std::thread::sleep(Duration::from_millis(500));
    let mut total = 0;
    for vm in &vms {
        total += pss_kib(vm.id())?;
    }
    drop(clients);
    for mut vm in vms {
        let _ = vm.kill();
        let _ = vm.wait();
    }
    Ok(total as f64 / 1024.0 / n as f64)
}

/// Snapshot a booted VM at its agent's hello; restore it per round; then density.
fn restored(opts: &Opts, work: &Path, cold_hello: &[f64]) -> anyhow::Result<()> {
    let snap = work.join("snapshot");
    std::fs::create_dir_all(&snap)?;
    let uds = work.join("template.sock");
    let control = work.join("control.sock");
    let mut template = boot_vmm(opts, &uds, &["--control", &control.display().to_string()])?;
    let client = agent_at(&uds)?;
    for request in [
        vec!["pause".to_owned()],
        vec![
            "snapshot".to_owned(),
            "--state".to_owned(),
            snap.join("state.json").display().to_string(),
            "--memory".to_owned(),
            snap.join("memory.bin").display().to_string(),
        ],
    ] {
        let status = Command::new("arca-vmm")
            .arg("control")
            .arg(&control)
            .args(&request)
            .status()?;
        anyhow::ensure!(status.success(), "arca-vmm control {request:?} failed");
    }
    drop(client);
    let _ = template.kill();
    let _ = template.wait();
    let mut hello = Vec::new();
    for round in 0..opts.rounds {
        let uds = work.join(format!("r{round}.sock"));
        let t0 = Instant::now();
        let mut vmm = restore_vmm(opts, &snap, &uds)?;
        let client = agent_at(&uds)?;
        hello.push(ms(t0.elapsed()));
        drop(client);
        let _ = vmm.kill();
        let _ = vmm.wait();
    }
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "median ms", "restored", "cold boot", "ratio"
    );
    row("spawn -> agent hello over vsock", &hello, Some(cold_hello));
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "PSS per idle VMM, MiB (one measure)", "restored", "cold boot", "ratio"
    );
    for n in [1, 5, 10] {
        let warm = density(n, |uds| restore_vmm(opts, &snap, uds), work)?;
        let cold = density(n, |uds| boot_vmm(opts, uds, &[]), work)?;
        row(
            &format!("{n} sandboxes side by side"),
            &[warm],
            Some(&[cold]),
        );
    }
    Ok(())
}

fn oci_config(rootfs: &Path) -> serde_json::Value {
    let mnt = |dest: &str, typ: &str, src: &str, opts: &[&str]| serde_json::json!({"destination": dest, "type": typ, "source": src, "options": opts});
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["echo", "hello"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/"
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bench",
        "mounts": [
            mnt("/proc", "proc", "proc", &[]),
            mnt("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mnt("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
            mnt("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            mnt("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    })
}

fn process(opts: &Opts) -> anyhow::Result<()> {
    let rootfs = PathBuf::from(opts.need("--rootfs")?);
    let work = tempfile::tempdir()?;
    let (mut ready, mut first_out, mut total) = (vec![], vec![], vec![]);
    let (mut crun_first, mut crun_total) = (vec![], vec![]);
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    std::fs::write(bundle.join("config.json"), oci_config(&rootfs).to_string())?;
    for round in 0..opts.rounds {
        let sock = work.path().join(format!("a{round}.sock"));
        let t0 = Instant::now();
        let mut agent = Command::new("arca-agent")
            .args(["serve", "--listen"])
            .arg(&sock)
            .arg("--run-dir")
            .arg(work.path().join("run"))
            .spawn()
            .context("spawn arca-agent serve")?;
        let mut client =
            AgentClient::connect(&AgentAddress::Unix(sock.clone()), Duration::from_secs(10))?;
        ready.push(ms(t0.elapsed()));
        let rootfs = Rootfs {
            source: rootfs.display().to_string(),
            fstype: "dir".into(),
            writable: WritableLayer::Tmpfs,
        };
        first_out.push(ms(run_echo(
            &mut client,
            echo_spec(&format!("bench{round}"), rootfs),
        )?));
        client.shutdown()?;
        drop(client);
        agent.wait()?;
        total.push(ms(t0.elapsed()));

        if let Some(crun) = opts.get("--crun") {
            let t0 = Instant::now();
            let mut c = Command::new(crun)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("crun-bench-{}-{round}", std::process::id()))
                .stdout(Stdio::piped())
                .spawn()
                .context("spawn crun")?;
            let mut byte = [0u8; 1];
            c.stdout.as_mut().context("stdout")?.read_exact(&mut byte)?;
            crun_first.push(ms(t0.elapsed()));
            let status = c.wait()?;
            anyhow::ensure!(status.success(), "crun exited {status}");
            crun_total.push(ms(t0.elapsed()));
        }
    }
    println!(
        "rounds: {} each, round-robin; same busybox rootfs, `echo hello`",
        opts.rounds
    );
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "median ms", "arca", "crun", "ratio"
    );
    fn peer(v: &[f64]) -> Option<&[f64]> {
        (!v.is_empty()).then_some(v)
    }
    row("agent spawn -> ready (hello answered)", &ready, None);
    row("start request -> first output byte", &first_out, None);
    row(
        "spawn -> first output (crun: run)",
        &first_out
            .iter()
            .zip(&ready)
            .map(|(a, b)| a + b)
            .collect::<Vec<_>>(),
        peer(&crun_first),
    );
    row(
        "spawn -> all done (arca: agent exit)",
        &total,
        peer(&crun_total),
    );
    Ok(())
}

/// `arca run --rm busybox true` end to end, both isolations, beside crun and runc
/// running `true` from the same rootfs.
fn cli(opts: &Opts) -> anyhow::Result<()> {
    let tar = opts.need("--image-tar")?;
    let rootfs = PathBuf::from(opts.need("--rootfs")?);
    let work = tempfile::tempdir()?;
    let state = work.path().join("state");
    let arca = |args: &[&str]| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let status = Command::new("arca")
            .args(args)
            .env("ARCA_STATE_DIR", &state)
            .stdout(Stdio::null())
            .status()
            .context("run arca")?;
        anyhow::ensure!(status.success(), "arca {args:?} exited {status}");
        Ok(t.elapsed())
    };
    arca(&["load", "-i", tar])?;
    // Build the per-image disk and the agent initramfs once: later runs are "cold" in
    // the sense that no VM or agent is running, with caches in place.
    arca(&["run", "--rm", "--isolation=vm", "busybox", "true"])?;
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    let mut config = oci_config(&rootfs);
    config["process"]["args"] = serde_json::json!(["true"]);
    std::fs::write(bundle.join("config.json"), config.to_string())?;
    let peer = |tool: &str, round: usize| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let status = Command::new(tool)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("bench-{}-{round}", std::process::id()))
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("run {tool}"))?;
        anyhow::ensure!(status.success(), "{tool} exited {status}");
        Ok(t.elapsed())
    };
    let (mut vm, mut process, mut crun, mut runc) = (vec![], vec![], vec![], vec![]);
    let (mut cold, mut bare) = (vec![], vec![]);
    for round in 0..opts.rounds {
        vm.push(ms(arca(&[
            "run",
            "--rm",
            "--isolation=vm",
            "busybox",
            "true",
        ])?));
        cold.push(ms(arca(&[
            "run",
            "--rm",
            "--isolation=vm",
            "--no-snapshot",
            "busybox",
            "true",
        ])?));
        if let (Some(kernel), Some(initrd)) = (opts.get("--kernel"), opts.get("--bare-initrd")) {
            let t0 = Instant::now();
            let mut vmm = Command::new("arca-vmm")
                .args(["--kernel", kernel, "--initrd", initrd])
                .args(["--memory", "256", "--cmdline", "quiet"])
                .stdout(Stdio::piped())
                .spawn()
                .context("spawn arca-vmm")?;
            let at = wait_line(&mut vmm, "ARCA-GUEST-READY");
            let _ = vmm.wait();
            bare.push(ms(at?.duration_since(t0)));
        }
        process.push(ms(arca(&[
            "run",
            "--rm",
            "--isolation=process",
            "busybox",
            "true",
        ])?));
        if let Some(c) = opts.get("--crun") {
            crun.push(ms(peer(c, round)?));
        }
        if let Some(r) = opts.get("--runc") {
            runc.push(ms(peer(r, round)?));
        }
    }
    println!(
        "rounds: {} each, round-robin; `true` in the busybox image; vm: 1 vCPU, 256 MiB",
        opts.rounds
    );
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "median ms", "arca", "peer", "ratio"
    );
    fn peer_of(v: &[f64]) -> Option<&[f64]> {
        (!v.is_empty()).then_some(v)
    }
    row(
        "arca run --rm --isolation=vm vs crun run",
        &vm,
        peer_of(&crun),
    );
    row("vm, warm vs bare cold boot to init", &vm, peer_of(&bare));
    row("vm, warm vs cold (--no-snapshot)", &vm, peer_of(&cold));
    row("vm, cold vs bare cold boot to init", &cold, peer_of(&bare));
    row(
        "arca run --rm --isolation=process vs crun run",
        &process,
        peer_of(&crun),
    );
    row(
        "arca run --rm --isolation=process vs runc run",
        &process,
        peer_of(&runc),
    );
    Ok(())
}

struct Opts {
    rounds: usize,
    pairs: Vec<(String, String)>,
}

impl Opts {
    fn get(&self, k: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, k: &str) -> anyhow::Result<&str> {
        self.get(k).with_context(|| format!("{k} is required"))
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = args
        .split_first()
        .context("usage: agent-bench vm|process [options]")?;
    let mut pairs = Vec::new();
    for pair in rest.chunks(2) {
        match pair {
            [k, v] if k.starts_with("--") => pairs.push((k.clone(), v.clone())),
            _ => bail!("options come as --name value pairs"),
        }
    }
    let mut opts = Opts { rounds: 5, pairs };
    if let Some(r) = opts.get("--rounds") {
        opts.rounds = r.parse().context("--rounds")?;
    }
    match mode.as_str() {
        "vm" => vm(&opts),
        "process" => process(&opts),
        "cli" => cli(&opts),
        other => bail!("unknown mode {other} (vm or process)"),
    }
}
