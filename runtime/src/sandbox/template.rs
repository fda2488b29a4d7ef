//! Warm starts: a microVM restored from a template snapshot instead of booted.
//!
//! A template is a VM booted with the guest kernel and the agent initramfs, snapshotted
//! (`arca-vmm --control`, `pause`, `snapshot`) as soon as its agent answers, before any
//! container exists. Its devices are those of a container's VM: the image disk
//! (`/dev/vda`, read-only) and the writable layer (`/dev/vdb`) as empty placeholder
//! files, vsock, and a network device when the container has a network. A run restores
//! the template with its own files in their places (`arca-vmm --restore`), then tells
//! the agent first thing (`Request::Restored`): fresh host entropy (VMs restored from one
//! template would otherwise share the kernel's random state), the host's time, the
//! container's MAC address, and the disks' sizes to wait for.
//!
//! Templates are keyed by what the snapshot depends on: the `arca-vmm` binary, the
//! kernel, the agent initramfs (each by path, inode, size and modification time), the
//! VM's memory and vCPUs, and whether it has a network device. A change to any of them
//! makes a new template at the next run; `arca system prune` removes them all. They
//! live in `<state>/templates/`, private like the rest of the state. The template VM
//! runs only Arca's kernel and agent, never a container's code.
//!
//! Containers with virtio-fs mounts (`-v`, `--mount`) boot cold: a VM with virtio-fs
//! devices cannot be snapshotted (virtiofsd keeps state of its own). So does `run
//! --no-snapshot`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arca_agent_client::{AgentAddress, AgentClient};
use arca_protocol::{DiskSize, RestoredSandbox};
use sha2::{Digest, Sha256};

use crate::guest;

/// How long a template VM has to boot until its agent answers.
const BOOT_PATIENCE: Duration = Duration::from_secs(30);
/// The agent's vsock port.
const AGENT_PORT: u32 = 1024;
/// The template's format: part of the key, so a change makes new templates.
const TEMPLATE_FORMAT: &str = "arca-template-1";
/// The MAC address a template's network device boots with (the agent sets the
/// container's after the restore).
const TEMPLATE_MAC: &str = "02:a7:ca:00:00:01";

/// Errors of templates.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The template VM did not come up, or could not be snapshotted.
    #[error("Cannot make the warm-start template: {0}")]
    Build(String),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TemplateError + 'a {
    move |source| TemplateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a template's VM is made of, beyond the kernel, agent and VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Whether it has a network device.
    pub net: bool,
}

/// A template's files.
#[derive(Debug, Clone)]
pub struct Template {
    /// The snapshot's state file.
    pub state: PathBuf,
    /// Its memory file.
    pub memory: PathBuf,
    /// An empty disk, for the writable layer of a container that has none.
    pub empty_disk: PathBuf,
}

impl Template {
    fn in_dir(dir: &Path) -> Self {
        Self {
            state: dir.join("state.json"),
            memory: dir.join("memory.bin"),
            empty_disk: dir.join("vdb.img"),
        }
    }
}

/// The directory of every template.
pub fn templates_dir(state: &Path) -> PathBuf {
    state.join("templates")
}

/// Whether warm starts are on: `$ARCA_SNAPSHOTS=0` turns them off for every run.
pub fn enabled() -> bool {
    std::env::var_os("ARCA_SNAPSHOTS").is_none_or(|v| v != "0")
}

/// A file's identity for the key (see `guest::file_identity`).
fn identity(path: &Path) -> Result<String, TemplateError> {
    guest::file_identity(path).map_err(io_err("read", path))
}

/// The guest a template boots: the VMM binary, kernel and agent initramfs.
#[derive(Debug, Clone, Copy)]
pub struct Guest<'g> {
    /// `arca-vmm`.
    pub vmm: &'g Path,
    /// The guest kernel.
    pub kernel: &'g Path,
    /// The agent initramfs.
    pub initrd: &'g Path,
}

/// What a snapshot's vCPU state depends on of the host: its kernel (KVM's CPUID and
/// MSRs), and its CPU (model, microcode, features).
fn host_identity() -> String {
    use std::io::BufRead;
    let mut id = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Ok(cpuinfo) = fs::File::open("/proc/cpuinfo") {
        for line in std::io::BufReader::new(cpuinfo)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.is_empty())
        {
            let key = line.split(':').next().unwrap_or_default().trim();
            if matches!(key, "vendor_id" | "model name" | "microcode" | "flags") {
                id.push_str(&line);
                id.push('\n');
            }
        }
    }
    id
}

/// The template for `layout` with `guest` on this host, made first if there is none
/// (under a lock, so that concurrent runs make it once).
pub fn ensure(state: &Path, guest: Guest<'_>, layout: Layout) -> Result<Template, TemplateError> {
    let mut hash = Sha256::new();
    for part in [
        TEMPLATE_FORMAT.to_owned(),
        identity(guest.vmm)?,
        identity(guest.kernel)?,
        identity(guest.initrd)?,
        host_identity(),
        format!("{}:{}:{}", layout.memory_mib, layout.cpus, layout.net),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let key = hex(&hash.finalize()[..8]);
    let root = templates_dir(state);
    let dir = root.join(&key);
    let template = Template::in_dir(&dir);
    if template.state.is_file() {
        return Ok(template);
    }
    fs::create_dir_all(&root).map_err(io_err("create", &root))?;
    let lock_path = root.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
    if template.state.is_file() {
        return Ok(template);
    }
    clear_leftovers(&root);
    // A template directory without its state is what a prune or a crash left.
    let _ = fs::remove_dir_all(&dir);
    let build = root.join(format!(".build-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    fs::create_dir(&build).map_err(io_err("create", &build))?;
    let made = make(&build, guest, layout);
    if let Err(e) = made.and_then(|()| fs::rename(&build, &dir).map_err(io_err("store", &dir))) {
        let _ = fs::remove_dir_all(&build);
        return Err(e);
    }
    Ok(template)
}

/// Removes the build directories of builders that died (a killed `arca`): their pid is
/// the name's last part. Called under the lock, so no live builder's goes.
fn clear_leftovers(root: &Path) {
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.starts_with(".build-"))
            .and_then(|n| n.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !crate::container::pids::alive(pid, None) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the template `made` (one a restore failed on: the next run makes it again).
pub fn discard(made: &Template) {
    if let Some(dir) = made.state.parent() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Boots the template VM in `dir`, waits for its agent, snapshots it there, and ends it.
fn make(dir: &Path, guest: Guest<'_>, layout: Layout) -> Result<(), TemplateError> {
    let Guest {
        vmm,
        kernel,
        initrd,
    } = guest;
    for placeholder in ["vda.img", "vdb.img"] {
        let path = dir.join(placeholder);
        fs::File::create(&path).map_err(io_err("create", &path))?;
    }
    let uds = dir.join("vsock.sock");
    let control = dir.join("control.sock");
    let log = dir.join("vmm.log");
    let stderr = fs::File::create(&log).map_err(io_err("create", &log))?;
    let mut command = Command::new(vmm);
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--memory", &layout.memory_mib.to_string()])
        .args(["--cpus", &layout.cpus.to_string()])
        .args(["--cmdline", "quiet", "--console", "none"])
        .arg("--disk")
        .arg(format!("{},ro", dir.join("vda.img").display()))
        .arg("--disk")
        .arg(dir.join("vdb.img"))
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg("--control")
        .arg(&control)
        // A killed arca leaves no template VM behind.
        .arg("--die-with-parent");
    if layout.net {
        // A TAP of its own, made by the VMM and gone with it.
        command.arg("--net").arg(format!(
            "tap=arcatpl{},mac={TEMPLATE_MAC}",
            std::process::id()
        ));
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(io_err("start", vmm))?;
    let child = Killed(child);
    let said = || {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!("; arca-vmm said: {}", text.replace('\n', "; "))
        }
    };
    let pid = child.0.id();
    let booting: arca_agent_client::Watch = Box::new(move || {
        (!crate::container::pids::alive(pid, None)).then(|| "arca-vmm exited".to_owned())
    });
    let address = AgentAddress::Vsock {
        uds: uds.clone(),
        port: AGENT_PORT,
    };
    AgentClient::connect_watched(&address, BOOT_PATIENCE, booting)
        .map_err(|e| TemplateError::Build(format!("{}{}", crate::error_chain(&e), said())))?;
    for request in [
        vec!["pause".to_owned()],
        vec![
            "snapshot".to_owned(),
            "--state".to_owned(),
            dir.join("state.json").display().to_string(),
            "--memory".to_owned(),
            dir.join("memory.bin").display().to_string(),
        ],
    ] {
        let out = Command::new(vmm)
            .arg("control")
            .arg(&control)
            .args(&request)
            .output()
            .map_err(io_err("run", vmm))?;
        if !out.status.success() {
            return Err(TemplateError::Build(format!(
                "arca-vmm control {}: {}{}",
                request[0],
                String::from_utf8_lossy(&out.stderr).trim(),
                said()
            )));
        }
    }
    drop(child);
    for leftover in [&uds, &control, &log] {
        let _ = fs::remove_file(leftover);
    }
    Ok(())
}

/// The template VM, killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the agent of a VM restored from a template is told first: fresh entropy, the
/// host's time (set again right before it is sent), the container's MAC (`mac`, as `aa:bb:cc:dd:ee:ff`) and the sizes of
/// its disks (`disks`: the guest's name and the backing file).
pub fn restored_sandbox(
    mac: Option<&str>,
    disks: &[(&str, &Path)],
) -> Result<RestoredSandbox, TemplateError> {
    let mut entropy = vec![0u8; 64];
    let urandom = Path::new("/dev/urandom");
    fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut entropy))
        .map_err(io_err("read", urandom))?;
    let time_ns = now_ns();
    let mac = match mac {
        None => None,
        Some(text) => Some(
            parse_mac(text)
                .ok_or_else(|| TemplateError::Build(format!("invalid MAC address {text:?}")))?,
        ),
    };
    let disks = disks
        .iter()
        .map(|(name, path)| {
            let len = fs::metadata(path).map_err(io_err("read", path))?.len();
            Ok(DiskSize {
                name: (*name).to_owned(),
                sectors: len / 512,
            })
        })
        .collect::<Result<_, TemplateError>>()?;
    Ok(RestoredSandbox {
        entropy,
        time_ns,
        mac,
        disks,
    })
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Removes every template; returns the bytes freed.
pub fn prune(state: &Path) -> u64 {
    let root = templates_dir(state);
    let Ok(lock) = fs::File::create(root.join(".lock")) else {
        return 0;
    };
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).is_err() {
        return 0;
    }
    let mut freed = 0;
    for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
        if entry.file_name() == ".lock" {
            continue;
        }
        let path = entry.path();
        freed += fs::read_dir(&path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum::<u64>();
        let _ = fs::remove_dir_all(&path);
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_as_the_network_writes_them() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "zz:42:ac:11:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_restored_sandbox_gets_fresh_entropy_and_the_disk_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d");
        fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
        let a = restored_sandbox(Some("02:00:00:00:00:07"), &[("vda", &disk)]).unwrap();
        let b = restored_sandbox(None, &[]).unwrap();
        assert_eq!(a.entropy.len(), 64);
        assert_ne!(a.entropy, b.entropy);
        assert_eq!(a.mac, Some([2, 0, 0, 0, 0, 7]));
        assert_eq!(a.disks[0].sectors, 2048);
        assert!(a.time_ns > 1_700_000_000_000_000_000);
    }
}
