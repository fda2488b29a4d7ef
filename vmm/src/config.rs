//! What a VM is made of, from command-line flags or a JSON file, checked before anything
//! is created.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use devices::virtio::block::DiskConfig;
use devices::virtio::fs::{self as virtio_fs, FsConfig};
use devices::virtio::net::{MacAddr, NetError};

use crate::arch::x86_64::layout::{MAX_MEMORY_MIB, MIN_MEMORY_MIB, VIRTIO_IRQ_RANGE};
use crate::arch::x86_64::mptable::MAX_VCPUS;
use crate::device_manager::tap;
use crate::loader::ProtocolChoice;

/// Errors in a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("Cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON of the expected shape.
    #[error("Invalid config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// No kernel was given.
    #[error("No kernel given: pass --kernel PATH or set \"kernel\" in the config file")]
    NoKernel,
    /// A file the VM needs does not exist or is not a regular file.
    #[error("The {what} {path} does not exist or is not a file")]
    MissingFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The vCPU count is out of range.
    #[error("Invalid vCPU count {0}: Arca runs 1 to {MAX_VCPUS} vCPUs")]
    Cpus(u64),
    /// The memory size is out of range.
    #[error(
        "Invalid memory size {mib} MiB: it must be at least {MIN_MEMORY_MIB} MiB and at most {max} MiB{why}"
    )]
    Memory {
        /// The size asked for.
        mib: u64,
        /// The largest size allowed here.
        max: u64,
        /// Why the limit is what it is.
        why: &'static str,
    },
    /// The console spec is not `stdout` or `file:PATH`.
    #[error("Invalid console {0:?}: use `stdout`, `none` or `file:PATH`")]
    Console(String),
    /// A `--disk` value does not parse.
    #[error("Invalid disk {0:?}: use PATH[,ro][,serial=ID]")]
    DiskSpec(String),
    /// The same image is attached twice.
    #[error("The disk image {0} is attached twice")]
    DuplicateDisk(PathBuf),
    /// More disks than device slots.
    #[error("Too many disks: {0} given, at most {max} fit", max = VIRTIO_IRQ_RANGE.count())]
    TooManyDisks(usize),
    /// A `--vsock` value does not parse.
    #[error("Invalid vsock {0:?}: use cid=N,uds=PATH (N from 3 to 4294967294)")]
    VsockSpec(String),
    /// The vsock socket path is taken.
    #[error(
        "The vsock socket {0} already exists (another VM's?); remove it or choose another path"
    )]
    VsockPathTaken(PathBuf),
    /// A `--net` value does not parse.
    #[error("Invalid network device {0:?}: use tap=NAME[,mac=XX:XX:XX:XX:XX:XX]")]
    NetSpec(String),
    /// The TAP name is not a valid interface name.
    #[error(
        "Invalid TAP name {0:?}: use 1 to {max} bytes without '/', ':', '%' or whitespace",
        max = tap::MAX_NAME_LEN
    )]
    TapName(String),
    /// The MAC address cannot be a network interface's.
    #[error("Cannot use the network device's MAC address")]
    Mac(#[source] NetError),
    /// A `--fs` value does not parse.
    #[error("Invalid virtio-fs device {0:?}: use tag=NAME,socket=PATH[,queue-size=N]")]
    FsSpec(String),
    /// The tag or queue size of a virtio-fs device cannot be used.
    #[error("Cannot use the virtio-fs device {0:?}")]
    Fs(String, #[source] virtio_fs::FsError),
    /// Two virtio-fs devices have one tag.
    #[error("The virtio-fs tag {0:?} is given twice: each device needs its own")]
    DuplicateFsTag(String),
    /// The backend's socket is not there.
    #[error("The virtio-fs socket {0} does not exist (start virtiofsd with --socket-path first)")]
    FsSocket(PathBuf),
    /// More devices than slots.
    #[error("Too many virtio devices: {0} given, at most {max} fit", max = VIRTIO_IRQ_RANGE.count())]
    TooManyDevices(usize),
    /// A `--restore` value does not parse.
    #[error("Invalid restore {0:?}: use state=PATH,memory=PATH")]
    RestoreSpec(String),
    /// The control socket path is taken.
    #[error(
        "The control socket {0} already exists (another VM's?); remove it or choose another path"
    )]
    ControlPathTaken(PathBuf),
    /// A `--jail` value does not parse.
    #[error(
        "Invalid jail {0:?}: use root=DIR,uid=N,gid=N[,cgroup=PATH][,cpu-quota=CPUS] (uid and gid not 0, CPUS above 0)"
    )]
    JailSpec(String),
    /// A flag that describes the machine was given with `--restore`: the snapshot
    /// fixes it.
    #[error("{0} cannot be given with --restore: the snapshot fixes the VM's {1}")]
    NotOnRestore(&'static str, &'static str),
    /// The devices given with `--restore` are not laid out as the snapshot's.
    #[error("The devices given do not match the snapshot's: {0}")]
    RestoreLayout(String),
    /// The boot protocol is not one Arca knows.
    #[error("Invalid boot protocol {0:?}: use `auto`, `pvh` or `linux64`")]
    Protocol(String),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Console {
    /// The VMM's standard output.
    Stdout,
    /// Nowhere.
    None,
    /// A file, created or truncated.
    File(PathBuf),
}

impl std::str::FromStr for Console {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdout" => Ok(Console::Stdout),
            "none" => Ok(Console::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(Console::File(PathBuf::from(path))),
                _ => Err(ConfigError::Console(s.to_owned())),
            },
        }
    }
}

/// Parses a boot protocol name.
pub fn parse_protocol(s: &str) -> Result<ProtocolChoice, ConfigError> {
    match s {
        "auto" => Ok(ProtocolChoice::Auto),
        "pvh" => Ok(ProtocolChoice::Pvh),
        "linux64" => Ok(ProtocolChoice::Linux64),
        _ => Err(ConfigError::Protocol(s.to_owned())),
    }
}

/// A disk in the JSON form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// Backing file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes).
    pub serial: Option<String>,
}

impl DiskFile {
    /// Parses the `--disk` form: `PATH[,ro][,serial=ID]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::DiskSpec(spec.to_owned());
        let mut parts = spec.split(',');
        let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let mut disk = DiskFile {
            path: PathBuf::from(path),
            read_only: false,
            serial: None,
        };
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" => disk.read_only = true,
                None if option == "rw" => disk.read_only = false,
                Some(("serial", id)) if !id.is_empty() => disk.serial = Some(id.to_owned()),
                _ => return Err(bad()),
            }
        }
        Ok(disk)
    }
}

/// The vsock device in the JSON form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockFile {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// Host Unix socket for host-initiated connections; guest-initiated ones go to
    /// `<uds>_<port>`.
    pub uds: PathBuf,
}

impl VsockFile {
    /// Parses the `--vsock` form: `cid=N,uds=PATH`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::VsockSpec(spec.to_owned());
        let (mut cid, mut uds) = (None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("cid", n)) => cid = Some(n.parse().map_err(|_| bad())?),
                Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
                _ => return Err(bad()),
            }
        }
        match (cid, uds) {
            (Some(cid), Some(uds)) => Ok(VsockFile { cid, uds }),
            _ => Err(bad()),
        }
    }
}

/// The network device in the JSON form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetFile {
    /// The host TAP interface (created if it does not exist).
    pub tap: String,
    /// The guest's MAC address, `AA:BB:CC:DD:EE:FF`; derived from the TAP name when
    /// not given.
    pub mac: Option<String>,
}

impl NetFile {
    /// Parses the `--net` form: `tap=NAME[,mac=AA:BB:CC:DD:EE:FF]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::NetSpec(spec.to_owned());
        let (mut tap, mut mac) = (None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) if tap.is_none() && !name.is_empty() => {
                    tap = Some(name.to_owned())
                }
                Some(("mac", m)) if mac.is_none() && !m.is_empty() => mac = Some(m.to_owned()),
                _ => return Err(bad()),
            }
        }
        Ok(NetFile {
            tap: tap.ok_or_else(bad)?,
            mac,
        })
    }
}

/// A virtio-fs device in the JSON form.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FsFile {
    /// What the guest mounts: `mount -t virtiofs TAG DIR` (1 to 36 bytes).
    pub tag: String,
    /// The vhost-user socket of the backend (virtiofsd's `--socket-path`).
    pub socket: PathBuf,
    /// Size of each of its queues (a power of two, 2 to 32768); 1024 when not given.
    pub queue_size: Option<u32>,
}

impl FsFile {
    /// Parses the `--fs` form: `tag=NAME,socket=PATH[,queue-size=N]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::FsSpec(spec.to_owned());
        let (mut tag, mut socket, mut queue_size) = (None, None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("tag", t)) if tag.is_none() => tag = Some(t.to_owned()),
                Some(("socket", p)) if socket.is_none() && !p.is_empty() => {
                    socket = Some(PathBuf::from(p))
                }
                Some(("queue-size", n)) if queue_size.is_none() => {
                    queue_size = Some(n.parse().map_err(|_| bad())?)
                }
                _ => return Err(bad()),
            }
        }
        Ok(FsFile {
            tag: tag.ok_or_else(bad)?,
            socket: socket.ok_or_else(bad)?,
            queue_size,
        })
    }
}

/// The jail in the JSON form (see the `arca-jail` crate).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JailFile {
    /// An empty directory: the mount point of the jail's empty root.
    pub root: PathBuf,
    /// The uid the VMM runs as once jailed (not 0).
    pub uid: u32,
    /// The gid the VMM runs as once jailed (not 0).
    pub gid: u32,
    /// The VM's cgroup (a directory below the cgroup2 mount, made with its parents);
    /// none leaves the VMM in its parent's cgroup.
    pub cgroup: Option<PathBuf>,
    /// CPU time per 100 ms period, in microseconds (`cpu.max`); none is unlimited.
    pub cpu_quota_us: Option<u64>,
}

/// `cpu.max`'s period.
pub const CPU_PERIOD_US: u64 = 100_000;
/// What the VMM may use beside guest RAM before its cgroup's `memory.max` stops it:
/// its own heap and stacks, KVM's page tables and vCPU state, socket buffers, page
/// cache of the disks it serves.
pub const VMM_MEMORY_OVERHEAD_MIB: u64 = 64;
/// Threads beside the vCPUs: the main thread, virtio-fs watchdogs.
pub const VMM_EXTRA_TASKS: u64 = 16;
/// Open files: the vsock connection limit with its reserve, and the devices.
pub const VMM_OPEN_FILES: u64 = 4096;

impl JailFile {
    /// Parses the `--jail` form: `root=DIR,uid=N,gid=N[,cgroup=PATH][,cpu-quota=CPUS]`,
    /// CPUS a decimal count of CPUs (`0.5`: half a CPU).
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::JailSpec(spec.to_owned());
        let (mut root, mut uid, mut gid, mut cgroup, mut quota) = (None, None, None, None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("root", p)) if root.is_none() && !p.is_empty() => {
                    root = Some(PathBuf::from(p))
                }
                Some(("uid", n)) if uid.is_none() => uid = Some(n.parse().map_err(|_| bad())?),
                Some(("gid", n)) if gid.is_none() => gid = Some(n.parse().map_err(|_| bad())?),
                Some(("cgroup", p)) if cgroup.is_none() && !p.is_empty() => {
                    cgroup = Some(PathBuf::from(p))
                }
                Some(("cpu-quota", n)) if quota.is_none() => {
                    let cpus: f64 = n.parse().map_err(|_| bad())?;
                    if !(cpus.is_finite() && cpus > 0.0 && cpus <= f64::from(MAX_VCPUS)) {
                        return Err(bad());
                    }
                    quota = Some(((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000));
                }
                _ => return Err(bad()),
            }
        }
        match (root, uid, gid) {
            (Some(root), Some(uid), Some(gid)) if uid != 0 && gid != 0 => Ok(JailFile {
                root,
                uid,
                gid,
                cgroup,
                cpu_quota_us: quota,
            }),
            _ => Err(bad()),
        }
    }

    /// The jail of a VM with `cpus` vCPUs, `memory_mib` of RAM and `disks`. A writable
    /// disk whose file lives on tmpfs (the lab's state directory) adds its size to
    /// `memory.max`: what the guest writes there is memory charged to the VMM.
    fn limits(self, cpus: u64, memory_mib: u64, disks: &[DiskConfig]) -> arca_jail::JailConfig {
        // The root (an empty directory) and the ids (not 0) are checked by
        // `arca_jail::fork`, before anything is made.
        arca_jail::JailConfig {
            root: self.root,
            uid: self.uid,
            gid: self.gid,
            cgroup: self.cgroup.map(|path| arca_jail::CgroupLimits {
                path,
                memory_max: ((memory_mib + VMM_MEMORY_OVERHEAD_MIB) << 20)
                    + memory_backed_disks(disks),
                cpu_max: self.cpu_quota_us.map(|q| (q, CPU_PERIOD_US)),
                pids_max: cpus + VMM_EXTRA_TASKS,
            }),
            nofile: VMM_OPEN_FILES,
        }
    }
}

/// The bytes of the writable disks whose files live in memory (tmpfs).
fn memory_backed_disks(disks: &[DiskConfig]) -> u64 {
    disks
        .iter()
        .filter(|d| !d.read_only && arca_jail::is_memory_backed(&d.path))
        .filter_map(|d| std::fs::metadata(&d.path).ok())
        .map(|m| m.len())
        .sum()
}

/// Checks the virtio-fs devices: tags valid and unique, queue sizes usable, sockets
/// present.
fn check_fs(list: Vec<FsFile>) -> Result<Vec<FsConfig>, ConfigError> {
    let mut out: Vec<FsConfig> = Vec::with_capacity(list.len());
    for fs in list {
        virtio_fs::check_tag(&fs.tag).map_err(|e| ConfigError::Fs(fs.tag.clone(), e))?;
        let queue_size = virtio_fs::check_queue_size(
            fs.queue_size
                .unwrap_or(u32::from(virtio_fs::DEFAULT_QUEUE_SIZE)),
        )
        .map_err(|e| ConfigError::Fs(fs.tag.clone(), e))?;
        if out.iter().any(|o| o.tag == fs.tag) {
            return Err(ConfigError::DuplicateFsTag(fs.tag));
        }
        if !fs.socket.exists() {
            return Err(ConfigError::FsSocket(fs.socket));
        }
        out.push(FsConfig {
            tag: fs.tag,
            socket: fs.socket,
            queue_size,
        });
    }
    Ok(out)
}

/// A checked network device configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Host TAP interface.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: MacAddr,
}

impl NetConfig {
    /// Checks the TAP name and the MAC address, or derives the address from the name.
    fn check(file: NetFile) -> Result<Self, ConfigError> {
        if !tap::valid_name(&file.tap) {
            return Err(ConfigError::TapName(file.tap));
        }
        let mac = match &file.mac {
            Some(text) => text.parse().map_err(ConfigError::Mac)?,
            None => MacAddr::derived_from(&file.tap),
        };
        Ok(NetConfig { tap: file.tap, mac })
    }
}

/// A checked vsock configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// Guest context ID.
    pub cid: u64,
    /// Host socket path.
    pub uds: PathBuf,
}

/// The JSON form of a VM configuration; every field is optional so that flags can fill
/// in or override it.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Kernel image (ELF vmlinux or bzImage).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line.
    pub cmdline: Option<String>,
    /// vCPU count.
    pub cpus: Option<u64>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// `stdout`, `none` or `file:PATH`.
    pub console: Option<String>,
    /// `auto`, `pvh` or `linux64`.
    pub boot_protocol: Option<String>,
    /// Disks, in order.
    pub disks: Option<Vec<DiskFile>>,
    /// The vsock device.
    pub vsock: Option<VsockFile>,
    /// The network device.
    pub net: Option<NetFile>,
    /// virtio-fs devices.
    pub fs: Option<Vec<FsFile>>,
    /// The jail the VMM enters before the guest runs.
    pub jail: Option<JailFile>,
    /// The control socket's path.
    pub control: Option<PathBuf>,
}

impl ConfigFile {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Fields set in `overrides` win over this file's.
    pub fn merge(self, overrides: ConfigFile) -> ConfigFile {
        ConfigFile {
            kernel: overrides.kernel.or(self.kernel),
            initrd: overrides.initrd.or(self.initrd),
            cmdline: overrides.cmdline.or(self.cmdline),
            cpus: overrides.cpus.or(self.cpus),
            memory_mib: overrides.memory_mib.or(self.memory_mib),
            console: overrides.console.or(self.console),
            boot_protocol: overrides.boot_protocol.or(self.boot_protocol),
            disks: overrides.disks.or(self.disks),
            vsock: overrides.vsock.or(self.vsock),
            net: overrides.net.or(self.net),
            fs: overrides.fs.or(self.fs),
            jail: overrides.jail.or(self.jail),
            control: overrides.control.or(self.control),
        }
    }
}

/// How the guest starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A kernel boots from its entry point.
    Kernel(KernelBoot),
    /// A snapshot's state and memory are restored, and the guest goes on from there.
    Restore(RestoreFiles),
}

/// A kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, after Arca's base parameters.
    pub cmdline: Option<String>,
    /// Boot protocol.
    pub protocol: ProtocolChoice,
}

/// A snapshot's two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFiles {
    /// The state file (vCPUs, interrupt controllers, devices).
    pub state: PathBuf,
    /// Guest memory.
    pub memory: PathBuf,
}

impl RestoreFiles {
    /// Parses the `--restore` form: `state=PATH,memory=PATH`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::RestoreSpec(spec.to_owned());
        let (mut state, mut memory) = (None, None);
        for option in spec.split(',') {
            match option.split_once('=') {
                Some(("state", p)) if !p.is_empty() => state = Some(PathBuf::from(p)),
                Some(("memory", p)) if !p.is_empty() => memory = Some(PathBuf::from(p)),
                _ => return Err(bad()),
            }
        }
        Ok(RestoreFiles {
            state: state.ok_or_else(bad)?,
            memory: memory.ok_or_else(bad)?,
        })
    }
}

/// A checked VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// How the guest starts.
    pub boot: Boot,
    /// vCPU count.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Serial console destination.
    pub console: Console,
    /// Disks, in the order the guest sees them.
    pub disks: Vec<DiskConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// The network device, if any.
    pub net: Option<NetConfig>,
    /// virtio-fs devices (guest RAM is then shared with their backends).
    pub fs: Vec<FsConfig>,
    /// The jail, if any.
    pub jail: Option<arca_jail::JailConfig>,
    /// Where the VMM listens for pause, resume and snapshot requests, if anywhere.
    pub control: Option<PathBuf>,
}

/// Default vCPU count.
pub const DEFAULT_CPUS: u64 = 1;
/// Default memory size in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 128;

impl VmConfig {
    /// Checks `file` (flags merged in) against the limits of this host, whose RAM is
    /// `host_mem_mib` MiB when known.
    pub fn from_file(file: ConfigFile, host_mem_mib: Option<u64>) -> Result<Self, ConfigError> {
        let kernel = file.kernel.clone().ok_or(ConfigError::NoKernel)?;
        if !kernel.is_file() {
            return Err(ConfigError::MissingFile {
                what: "kernel",
                path: kernel,
            });
        }
        if let Some(initrd) = &file.initrd
            && !initrd.is_file()
        {
            return Err(ConfigError::MissingFile {
                what: "initrd",
                path: initrd.clone(),
            });
        }
        let boot = Boot::Kernel(KernelBoot {
            kernel,
            initrd: file.initrd.clone(),
            cmdline: file.cmdline.clone(),
            protocol: parse_protocol(file.boot_protocol.as_deref().unwrap_or("auto"))?,
        });
        Self::check(file, boot, host_mem_mib)
    }

    /// The configuration of a VM restored from `files`, whose snapshot saved the
    /// machine `saved` (vCPUs, memory, devices). `flags` must give the host side of
    /// every saved device (the disk images, the vsock socket, the TAP): the state file's
    /// paths are not trusted (the guest may have taken over the VMM that wrote it).
    /// They must match the saved layout (as many disks, each as read-only as before;
    /// the network device keeps its MAC unless one is given). `flags` may give the
    /// console, the jail and the control socket; nothing that changes the machine.
    pub fn for_restore(
        saved: ConfigFile,
        flags: ConfigFile,
        files: RestoreFiles,
        host_mem_mib: Option<u64>,
    ) -> Result<Self, ConfigError> {
        let fixed: [(bool, &'static str, &'static str); 7] = [
            (flags.kernel.is_some(), "--kernel", "kernel"),
            (flags.initrd.is_some(), "--initrd", "initrd"),
            (flags.cmdline.is_some(), "--cmdline", "command line"),
            (flags.boot_protocol.is_some(), "--boot-protocol", "kernel"),
            (flags.cpus.is_some(), "--cpus", "vCPU count"),
            (flags.memory_mib.is_some(), "--memory", "memory size"),
            (flags.fs.is_some(), "--fs", "devices"),
        ];
        if let Some((_, flag, what)) = fixed.iter().find(|(given, _, _)| *given) {
            return Err(ConfigError::NotOnRestore(flag, what));
        }
        let saved_disks = saved.disks.as_deref().unwrap_or_default();
        let missing = [
            (
                flags.disks.is_none() && !saved_disks.is_empty(),
                "--disk for each of its disks",
            ),
            (flags.vsock.is_none() && saved.vsock.is_some(), "--vsock"),
            (flags.net.is_none() && saved.net.is_some(), "--net"),
        ];
        let missing = missing.iter().find(|(missing, _)| *missing).map(|(_, flag)| {
            ConfigError::RestoreLayout(format!(
                "the snapshot's devices need their host side given: {flag} (the paths in a state file are not trusted)"
            ))
        });
        if let Some(disks) = &flags.disks {
            if disks.len() != saved_disks.len() {
                return Err(ConfigError::RestoreLayout(format!(
                    "{} disks given, the snapshot has {}",
                    disks.len(),
                    saved_disks.len()
                )));
            }
            for (i, (given, was)) in disks.iter().zip(saved_disks).enumerate() {
                if given.read_only != was.read_only {
                    return Err(ConfigError::RestoreLayout(format!(
                        "disk {} was {}",
                        i + 1,
                        if was.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        }
                    )));
                }
            }
        }
        if flags.vsock.is_some() && saved.vsock.is_none() {
            return Err(ConfigError::RestoreLayout(
                "the snapshot has no vsock device".to_owned(),
            ));
        }
        let net = match (flags.net.clone(), &saved.net) {
            (Some(_), None) => {
                return Err(ConfigError::RestoreLayout(
                    "the snapshot has no network device".to_owned(),
                ));
            }
            // Without a MAC the saved one stays; a new one is what the device reports
            // from now, but the guest's driver read its MAC at boot: whoever restores
            // tells the guest (arca's agent sets it).
            (Some(given), Some(was)) => Some(NetFile {
                mac: given.mac.or_else(|| was.mac.clone()),
                tap: given.tap,
            }),
            (None, was) => was.clone(),
        };
        if let Some(missing) = missing {
            return Err(missing);
        }
        let merged = ConfigFile {
            net,
            ..saved.merge(ConfigFile { net: None, ..flags })
        };
        Self::check(merged, Boot::Restore(files), host_mem_mib)
    }

    /// Checks what a booted and a restored VM have in common.
    fn check(file: ConfigFile, boot: Boot, host_mem_mib: Option<u64>) -> Result<Self, ConfigError> {
        let cpus = file.cpus.unwrap_or(DEFAULT_CPUS);
        if cpus == 0 || cpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::Cpus(cpus));
        }
        let mib = file.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        let (max, why) = match host_mem_mib {
            Some(host) if host < MAX_MEMORY_MIB => (host, " (this host's RAM)"),
            _ => (MAX_MEMORY_MIB, ""),
        };
        if mib < MIN_MEMORY_MIB || mib > max {
            return Err(ConfigError::Memory { mib, max, why });
        }
        let console = file.console.as_deref().unwrap_or("stdout").parse()?;
        let disks = check_disks(file.disks.unwrap_or_default())?;
        let vsock = match file.vsock {
            Some(v) => {
                if !(3..u64::from(u32::MAX)).contains(&v.cid) {
                    return Err(ConfigError::VsockSpec(format!(
                        "cid={},uds={}",
                        v.cid,
                        v.uds.display()
                    )));
                }
                if v.uds.exists() {
                    return Err(ConfigError::VsockPathTaken(v.uds));
                }
                Some(VsockConfig {
                    cid: v.cid,
                    uds: v.uds,
                })
            }
            None => None,
        };
        let net = file.net.map(NetConfig::check).transpose()?;
        let fs = check_fs(file.fs.unwrap_or_default())?;
        let devices =
            disks.len() + usize::from(vsock.is_some()) + usize::from(net.is_some()) + fs.len();
        if devices > VIRTIO_IRQ_RANGE.count() {
            return Err(ConfigError::TooManyDevices(devices));
        }
        let jail = file.jail.map(|j| j.limits(cpus, mib, &disks));
        if let Some(path) = &file.control
            && path.exists()
        {
            return Err(ConfigError::ControlPathTaken(path.clone()));
        }
        Ok(VmConfig {
            boot,
            cpus: cpus as u8,
            memory_mib: mib,
            console,
            disks,
            vsock,
            net,
            fs,
            jail,
            control: file.control,
        })
    }
}

fn check_disks(disks: Vec<DiskFile>) -> Result<Vec<DiskConfig>, ConfigError> {
    if disks.len() > VIRTIO_IRQ_RANGE.count() {
        return Err(ConfigError::TooManyDisks(disks.len()));
    }
    let mut seen = Vec::new();
    let mut out = Vec::with_capacity(disks.len());
    for disk in disks {
        let real = std::fs::canonicalize(&disk.path)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| ConfigError::MissingFile {
                what: "disk image",
                path: disk.path.clone(),
            })?;
        if seen.contains(&real) {
            return Err(ConfigError::DuplicateDisk(disk.path));
        }
        seen.push(real);
        out.push(DiskConfig {
            path: disk.path,
            read_only: disk.read_only,
            serial: disk.serial,
        });
    }
    Ok(out)
}

/// This host's RAM in MiB, from `/proc/meminfo`.
pub fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_boot(c: &VmConfig) -> &KernelBoot {
        match &c.boot {
            Boot::Kernel(k) => k,
            Boot::Restore(_) => panic!("not a kernel boot"),
        }
    }

    fn saved_machine(disk: &Path) -> ConfigFile {
        ConfigFile {
            cpus: Some(2),
            memory_mib: Some(256),
            disks: Some(vec![DiskFile {
                path: disk.to_owned(),
                read_only: true,
                serial: None,
            }]),
            net: Some(NetFile {
                tap: "tap-a".into(),
                mac: Some("02:00:00:00:00:01".into()),
            }),
            ..Default::default()
        }
    }

    fn files() -> RestoreFiles {
        RestoreFiles::parse("state=/s,memory=/m").unwrap()
    }

    #[test]
    fn a_restore_keeps_the_saved_machine_and_takes_new_host_sides() {
        let disk = kernel_file();
        let other = kernel_file();
        let flags = ConfigFile {
            disks: Some(vec![
                DiskFile::parse(&format!("{},ro", other.path().display())).unwrap(),
            ]),
            net: Some(NetFile::parse("tap=tap-b").unwrap()),
            console: Some("none".into()),
            ..Default::default()
        };
        let c = VmConfig::for_restore(saved_machine(disk.path()), flags, files(), None).unwrap();
        assert_eq!((c.cpus, c.memory_mib), (2, 256));
        assert_eq!(c.disks[0].path, other.path());
        let net = c.net.unwrap();
        assert_eq!(net.tap, "tap-b");
        assert_eq!(
            net.mac.to_string(),
            "02:00:00:00:00:01",
            "the guest keeps its MAC"
        );
        assert_eq!(c.console, Console::None);
        assert!(matches!(c.boot, Boot::Restore(_)));
        let flags = ConfigFile {
            disks: Some(vec![
                DiskFile::parse(&format!("{},ro", other.path().display())).unwrap(),
            ]),
            net: Some(NetFile::parse("tap=tap-c,mac=02:00:00:00:00:09").unwrap()),
            ..Default::default()
        };
        let c = VmConfig::for_restore(saved_machine(disk.path()), flags, files(), None).unwrap();
        assert_eq!(c.net.unwrap().mac.to_string(), "02:00:00:00:00:09");
    }

    #[test]
    fn a_restore_refuses_what_would_change_the_machine() {
        let disk = kernel_file();
        let saved = || saved_machine(disk.path());
        for (flags, want) in [
            (
                ConfigFile {
                    memory_mib: Some(512),
                    ..Default::default()
                },
                "--memory cannot be given with --restore",
            ),
            (
                ConfigFile {
                    kernel: Some("/k".into()),
                    ..Default::default()
                },
                "--kernel cannot be given",
            ),
            (
                ConfigFile {
                    disks: Some(vec![]),
                    ..Default::default()
                },
                "0 disks given, the snapshot has 1",
            ),
            (
                ConfigFile {
                    disks: Some(vec![
                        DiskFile::parse(&disk.path().display().to_string()).unwrap(),
                    ]),
                    ..Default::default()
                },
                "disk 1 was read-only",
            ),
            (
                ConfigFile {
                    vsock: Some(VsockFile::parse("cid=3,uds=/tmp/x").unwrap()),
                    ..Default::default()
                },
                "the snapshot has no vsock device",
            ),
        ] {
            let err = VmConfig::for_restore(saved(), flags, files(), None).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        let err = VmConfig::for_restore(saved(), ConfigFile::default(), files(), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("need their host side given: --disk for each of its disks"),
            "{err}"
        );
        let only_disk = ConfigFile {
            disks: Some(vec![
                DiskFile::parse(&format!("{},ro", disk.path().display())).unwrap(),
            ]),
            ..Default::default()
        };
        let err = VmConfig::for_restore(saved(), only_disk, files(), None).unwrap_err();
        assert!(err.to_string().contains("given: --net (the paths"), "{err}");
        assert!(RestoreFiles::parse("state=/s").is_err());
        assert!(RestoreFiles::parse("state=/s,memory=/m,x=1").is_err());
    }

    fn kernel_file() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    fn base(kernel: &Path) -> ConfigFile {
        ConfigFile {
            kernel: Some(kernel.to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_one_vcpu_128_mib_console_on_stdout() {
        let k = kernel_file();
        let c = VmConfig::from_file(base(k.path()), Some(4096)).unwrap();
        assert_eq!(
            (
                c.cpus,
                c.memory_mib,
                c.console.clone(),
                kernel_boot(&c).protocol
            ),
            (1, 128, Console::Stdout, ProtocolChoice::Auto)
        );
    }

    #[test]
    fn missing_kernel_or_initrd_is_named() {
        assert!(matches!(
            VmConfig::from_file(ConfigFile::default(), None),
            Err(ConfigError::NoKernel)
        ));
        let err = VmConfig::from_file(base(Path::new("/nonexistent/vmlinux")), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The kernel /nonexistent/vmlinux does not exist or is not a file"
        );
        let k = kernel_file();
        let cfg = ConfigFile {
            initrd: Some("/nonexistent/initrd".into()),
            ..base(k.path())
        };
        assert!(matches!(
            VmConfig::from_file(cfg, None),
            Err(ConfigError::MissingFile { what: "initrd", .. })
        ));
    }

    #[test]
    fn absurd_memory_sizes_and_vcpu_counts_are_refused() {
        let k = kernel_file();
        for mib in [0, 31] {
            let cfg = ConfigFile {
                memory_mib: Some(mib),
                ..base(k.path())
            };
            assert!(
                matches!(
                    VmConfig::from_file(cfg, Some(4096)),
                    Err(ConfigError::Memory { .. })
                ),
                "{mib}"
            );
        }
        let cfg = ConfigFile {
            memory_mib: Some(8192),
            ..base(k.path())
        };
        let err = VmConfig::from_file(cfg, Some(4096)).unwrap_err();
        assert!(
            err.to_string()
                .contains("at most 4096 MiB (this host's RAM)"),
            "{err}"
        );
        let cfg = ConfigFile {
            memory_mib: Some(u64::MAX),
            ..base(k.path())
        };
        assert!(VmConfig::from_file(cfg, None).is_err());
        for cpus in [0, 33, 1000] {
            let cfg = ConfigFile {
                cpus: Some(cpus),
                ..base(k.path())
            };
            assert!(
                matches!(VmConfig::from_file(cfg, None), Err(ConfigError::Cpus(_))),
                "{cpus}"
            );
        }
    }

    #[test]
    fn console_specs_parse_and_bad_ones_are_refused() {
        assert_eq!("stdout".parse::<Console>().unwrap(), Console::Stdout);
        assert_eq!("none".parse::<Console>().unwrap(), Console::None);
        assert_eq!(
            "file:/tmp/c.log".parse::<Console>().unwrap(),
            Console::File("/tmp/c.log".into())
        );
        for bad in ["file:", "stderr", ""] {
            assert!(bad.parse::<Console>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_files_parse_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(
            &path,
            r#"{"kernel": "/k", "cpus": 2, "memory_mib": 256, "cmdline": "quiet"}"#,
        )
        .unwrap();
        let file = ConfigFile::load(&path).unwrap();
        let merged = file.merge(ConfigFile {
            cpus: Some(4),
            ..Default::default()
        });
        assert_eq!(merged.cpus, Some(4));
        assert_eq!(merged.memory_mib, Some(256));
        assert_eq!(merged.kernel, Some(PathBuf::from("/k")));
    }

    #[test]
    fn disk_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            DiskFile::parse("/img/root.ext4,ro,serial=root").unwrap(),
            DiskFile {
                path: "/img/root.ext4".into(),
                read_only: true,
                serial: Some("root".into())
            }
        );
        assert!(!DiskFile::parse("/img/data").unwrap().read_only);
        for bad in [
            "",
            ",ro",
            "/img/x,readonly",
            "/img/x,serial=",
            "/img/x,ro=1",
        ] {
            assert!(
                matches!(DiskFile::parse(bad), Err(ConfigError::DiskSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vsock_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            VsockFile::parse("cid=3,uds=/run/v.sock").unwrap(),
            VsockFile {
                cid: 3,
                uds: "/run/v.sock".into()
            }
        );
        for bad in [
            "",
            "cid=3",
            "uds=/x",
            "cid=x,uds=/x",
            "cid=3,uds=",
            "cid=3,uds=/x,port=1",
        ] {
            assert!(
                matches!(VsockFile::parse(bad), Err(ConfigError::VsockSpec(_))),
                "{bad:?}"
            );
        }
        let k = kernel_file();
        for cid in [0, 2, u64::from(u32::MAX)] {
            let cfg = ConfigFile {
                vsock: Some(VsockFile {
                    cid,
                    uds: "/tmp/none.sock".into(),
                }),
                ..base(k.path())
            };
            assert!(
                matches!(
                    VmConfig::from_file(cfg, None),
                    Err(ConfigError::VsockSpec(_))
                ),
                "cid {cid}"
            );
        }
        let taken = ConfigFile {
            vsock: Some(VsockFile {
                cid: 3,
                uds: k.path().to_owned(),
            }),
            ..base(k.path())
        };
        assert!(matches!(
            VmConfig::from_file(taken, None),
            Err(ConfigError::VsockPathTaken(_))
        ));
    }

    #[test]
    fn net_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            NetFile::parse("tap=tap0,mac=02:00:00:00:00:01").unwrap(),
            NetFile {
                tap: "tap0".into(),
                mac: Some("02:00:00:00:00:01".into())
            }
        );
        assert_eq!(NetFile::parse("tap=vm1").unwrap().mac, None);
        for bad in [
            "",
            "tap0",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=a,mac=",
            "tap=a,mtu=9000",
            "tap=a,mac=02:00:00:00:00:01,mac=02:00:00:00:00:02",
        ] {
            assert!(
                matches!(NetFile::parse(bad), Err(ConfigError::NetSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn net_devices_are_checked_and_get_a_mac() {
        let k = kernel_file();
        let with = |tap: &str, mac: Option<&str>| ConfigFile {
            net: Some(NetFile {
                tap: tap.into(),
                mac: mac.map(Into::into),
            }),
            ..base(k.path())
        };
        let net = VmConfig::from_file(with("tap0", Some("02:AA:00:00:00:01")), None)
            .unwrap()
            .net
            .unwrap();
        assert_eq!(net.tap, "tap0");
        assert_eq!(net.mac.to_string(), "02:aa:00:00:00:01");
        let derived = VmConfig::from_file(with("tap0", None), None)
            .unwrap()
            .net
            .unwrap()
            .mac;
        assert_eq!(derived, MacAddr::derived_from("tap0"));
        assert_eq!(derived.bytes()[0] & 0b11, 0b10, "local unicast");
        for bad in [
            "02:00:00:00:00",
            "zz:00:00:00:00:01",
            "03:00:00:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let err = VmConfig::from_file(with("tap0", Some(bad)), None).unwrap_err();
            assert!(matches!(err, ConfigError::Mac(_)), "{bad:?}");
        }
        let err = VmConfig::from_file(with("tap0", Some("zz")), None).unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "Cannot use the network device's MAC address: Invalid MAC address \"zz\": \
             use six hex bytes such as 02:00:00:00:00:01"
        );
        for bad in ["", "a/b", "tap%d", "a-name-far-too-long"] {
            assert!(
                matches!(
                    VmConfig::from_file(with(bad, None), None),
                    Err(ConfigError::TapName(_))
                ),
                "{bad:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(
            &path,
            r#"{"net": {"tap": "tap1", "mac": "02:00:00:00:00:09"}}"#,
        )
        .unwrap();
        assert_eq!(
            ConfigFile::load(&path).unwrap().net,
            Some(NetFile {
                tap: "tap1".into(),
                mac: Some("02:00:00:00:00:09".into())
            })
        );
    }

    #[test]
    fn fs_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(
            FsFile::parse("tag=vol,socket=/run/vfs.sock,queue-size=256").unwrap(),
            FsFile {
                tag: "vol".into(),
                socket: "/run/vfs.sock".into(),
                queue_size: Some(256)
            }
        );
        assert_eq!(
            FsFile::parse("socket=/s,tag=data").unwrap().queue_size,
            None
        );
        for bad in [
            "",
            "tag=vol",
            "socket=/s",
            "tag=vol,socket=",
            "tag=vol,socket=/s,queue-size=x",
            "tag=a,tag=b,socket=/s",
            "tag=vol,socket=/s,cache=never",
        ] {
            assert!(
                matches!(FsFile::parse(bad), Err(ConfigError::FsSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fs_devices_are_checked_tags_unique_and_sockets_present() {
        let k = kernel_file();
        let socket = kernel_file();
        let fs = |tag: &str, queue_size: Option<u32>| FsFile {
            tag: tag.into(),
            socket: socket.path().to_owned(),
            queue_size,
        };
        let with = |list: Vec<FsFile>| ConfigFile {
            fs: Some(list),
            ..base(k.path())
        };
        let ok = VmConfig::from_file(with(vec![fs("vol", None), fs("data", Some(64))]), None)
            .unwrap()
            .fs;
        assert_eq!(
            ok.iter()
                .map(|f| (f.tag.as_str(), f.queue_size))
                .collect::<Vec<_>>(),
            [("vol", 1024), ("data", 64)]
        );
        let err =
            VmConfig::from_file(with(vec![fs("vol", None), fs("vol", None)]), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The virtio-fs tag \"vol\" is given twice: each device needs its own"
        );
        let long = "x".repeat(37);
        for (bad, size) in [
            ("", None),
            (long.as_str(), None),
            ("a b", None),
            ("vol", Some(1000)),
        ] {
            let err = VmConfig::from_file(with(vec![fs(bad, size)]), None).unwrap_err();
            assert!(matches!(err, ConfigError::Fs(..)), "{bad:?}: {err}");
        }
        let err = VmConfig::from_file(with(vec![fs(&long, None)]), None).unwrap_err();
        assert!(
            crate::error_chain(&err).contains("use 1 to 36 bytes"),
            "{}",
            crate::error_chain(&err)
        );
        let missing = FsFile {
            socket: "/nonexistent/vfs.sock".into(),
            ..fs("vol", None)
        };
        let err = VmConfig::from_file(with(vec![missing]), None).unwrap_err();
        assert!(matches!(err, ConfigError::FsSocket(_)), "{err}");
        let many = (0..20).map(|i| fs(&format!("t{i}"), None)).collect();
        assert!(matches!(
            VmConfig::from_file(with(many), None),
            Err(ConfigError::TooManyDevices(20))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(
            &path,
            r#"{"fs": [{"tag": "vol", "socket": "/run/vfs.sock", "queue_size": 128}]}"#,
        )
        .unwrap();
        assert_eq!(
            ConfigFile::load(&path).unwrap().fs,
            Some(vec![FsFile {
                tag: "vol".into(),
                socket: "/run/vfs.sock".into(),
                queue_size: Some(128)
            }])
        );
    }

    #[test]
    fn disks_must_exist_and_not_repeat() {
        let k = kernel_file();
        let d = kernel_file();
        let disk = |p: &Path| DiskFile {
            path: p.to_owned(),
            read_only: false,
            serial: None,
        };
        let cfg = ConfigFile {
            disks: Some(vec![disk(d.path())]),
            ..base(k.path())
        };
        assert_eq!(VmConfig::from_file(cfg, None).unwrap().disks.len(), 1);
        let cfg = ConfigFile {
            disks: Some(vec![disk(d.path()), disk(d.path())]),
            ..base(k.path())
        };
        assert!(matches!(
            VmConfig::from_file(cfg, None),
            Err(ConfigError::DuplicateDisk(_))
        ));
        let cfg = ConfigFile {
            disks: Some(vec![disk(Path::new("/nonexistent.img"))]),
            ..base(k.path())
        };
        let err = VmConfig::from_file(cfg, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The disk image /nonexistent.img does not exist or is not a file"
        );
        let many = (0..20).map(|_| disk(d.path())).collect();
        let cfg = ConfigFile {
            disks: Some(many),
            ..base(k.path())
        };
        assert!(matches!(
            VmConfig::from_file(cfg, None),
            Err(ConfigError::TooManyDisks(20))
        ));
    }

    #[test]
    fn config_files_with_unknown_fields_or_bad_json_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, r#"{"kernel": "/k", "vcpus": 2}"#).unwrap();
        let err = ConfigFile::load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(
            crate::error_chain(&err).contains("unknown field `vcpus`"),
            "{}",
            crate::error_chain(&err)
        );
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            ConfigFile::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            ConfigFile::load(&dir.path().join("none.json")),
            Err(ConfigError::Read { .. })
        ));
    }
}
