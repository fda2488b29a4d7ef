//! `arca-vmm`: one microVM per process.
//!
//! Exit codes: 0 the guest shut down (reboot/poweroff), 1 the VMM failed (bad
//! configuration, unusable KVM, vCPU failure), 2 the guest kernel panicked, 3 a vCPU
//! triple-faulted. A system call outside the VMM's seccomp filters kills it by SIGSYS
//! (after a line on stderr naming the thread and the call).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use arca_jail::{Ended, Fork};
use clap::{Parser, Subcommand};
use vmm::config::{
    Boot, ConfigFile, DiskFile, FsFile, JailFile, NetFile, RestoreFiles, VmConfig, VsockFile,
    host_memory_mib,
};
use vmm::error_chain;
use vmm::persist::Snapshot;
use vmm::seccomp::{EXIT_BAD_SYSCALL, Filters};

/// Arca's virtual machine monitor: boots one microVM and exits when it ends.
#[derive(Debug, Parser)]
#[command(
    name = "arca-vmm",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Talk to a running VMM's control socket instead of starting a VM.
    #[command(subcommand)]
    client: Option<Client>,
    /// Check whether this host's /dev/kvm can boot a standard Linux guest, say why not
    /// if it cannot, and exit 0 (usable) or 1 (not usable).
    #[arg(long, exclusive = true)]
    check_kvm: bool,
    /// JSON file with the VM's configuration (fields: kernel, initrd, cmdline, cpus,
    /// memory_mib, console, boot_protocol, disks: [{path, read_only, serial}], vsock:
    /// {cid, uds}, net: {tap, mac}, fs: [{tag, socket, queue_size}]); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Extra kernel command line, appended to Arca's base parameters.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32) [default: 1].
    #[arg(long, value_name = "N")]
    cpus: Option<u64>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "MiB")]
    memory: Option<u64>,
    /// Where the serial console goes: stdout, none or file:PATH [default: stdout].
    #[arg(long, value_name = "DEST")]
    console: Option<String>,
    /// Boot protocol: auto (PVH when the kernel has it), pvh or linux64 [default: auto].
    #[arg(long, value_name = "PROTO")]
    boot_protocol: Option<String>,
    /// Attach a disk image as a virtio-blk device: PATH[,ro][,serial=ID]. Repeat for
    /// more disks; the guest sees them as /dev/vda, /dev/vdb, ... in this order.
    #[arg(long = "disk", value_name = "SPEC")]
    disks: Vec<String>,
    /// Add a virtio-vsock device: cid=N,uds=PATH. Host programs reach guest port P by
    /// connecting to PATH and sending "CONNECT P\n"; guest connections to host port P
    /// go to the Unix socket PATH_P.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<String>,
    /// Add a virtio-net device on a host TAP interface: tap=NAME[,mac=AA:BB:CC:DD:EE:FF].
    /// The TAP is created if it does not exist (and then removed when the VMM exits);
    /// configure it (address, bridge, up) on the host. Without mac= the guest gets a
    /// locally administered address derived from NAME. The guest sees eth0, MTU 1500,
    /// with checksum and TCP segmentation offloads and mergeable rx buffers.
    #[arg(long, value_name = "SPEC")]
    net: Option<String>,
    /// Add a virtio-fs device served by a vhost-user backend (virtiofsd) listening on
    /// PATH: tag=NAME,socket=PATH[,queue-size=N]. The guest mounts it with
    /// `mount -t virtiofs NAME DIR`. Repeat for more; tags are 1 to 36 bytes and unique.
    /// Guest RAM is then a shared memfd the backend maps.
    #[arg(long = "fs", value_name = "SPEC")]
    fs: Vec<String>,
    /// Jail the VMM before the guest runs: root=DIR,uid=N,gid=N[,cgroup=PATH]
    /// [,cpu-quota=CPUS]. It forks into a new pid namespace (the parent waits and exits
    /// as the VMM did), joins the cgroup PATH (made, with memory.max = guest RAM + 64
    /// MiB, pids.max = vCPUs + 16 and cpu.max from CPUS), opens everything the VM
    /// needs, then enters new mount, ipc, uts, cgroup and network namespaces with an
    /// empty read-only root mounted on DIR (an empty directory), becomes uid:gid with
    /// no capabilities and no_new_privs. Needs root.
    #[arg(long, value_name = "SPEC")]
    jail: Option<String>,
    /// Restore a snapshot instead of booting a kernel: state=PATH,memory=PATH (the files
    /// `arca-vmm control ... snapshot` wrote). The snapshot fixes the vCPUs, memory and
    /// devices; --disk, --vsock and --net must give the host side of each saved device
    /// (every disk, in order, each as read-only as before; a new MAC is what the device
    /// reports from then on, but the guest read its own at boot), and --console, --jail
    /// and --control apply as for a boot. The guest goes on where it was paused: its
    /// vsock connections are reset, its monotonic clocks do not count the time the
    /// snapshot lay, and its wall clock is the restorer's to set.
    #[arg(long, value_name = "SPEC")]
    restore: Option<String>,
    /// Listen for pause, resume and snapshot requests on the Unix socket PATH (made
    /// owner-only; it must not exist). See `arca-vmm control --help`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Run without the seccomp filters. For debugging only: a guest that takes over
    /// the VMM then reaches every system call of the host kernel.
    #[arg(long)]
    no_seccomp: bool,
    /// Print boot timestamps to stderr when the VM ends.
    #[arg(long)]
    boot_timing: bool,
    /// Die (SIGKILL) when the process that started the VMM dies, so that no VM outlives
    /// a starter that was killed (`arca` starts its template VMs so). Not with --jail.
    #[arg(long, conflicts_with = "jail")]
    die_with_parent: bool,
}

/// Requests to a running VMM (`--control PATH`); each prints nothing and exits 0 when
/// the VMM did it, or prints why not and exits 1.
#[derive(Debug, Subcommand)]
enum Client {
    /// Send a request to the VMM listening on SOCKET.
    Control {
        /// The VMM's control socket.
        socket: PathBuf,
        #[command(subcommand)]
        request: ControlRequest,
    },
}

#[derive(Debug, Subcommand)]
enum ControlRequest {
    /// Park every vCPU (devices still serve their host side).
    Pause,
    /// Let a paused VM run again.
    Resume,
    /// Save a paused VM to two files (made owner-only, or emptied); it stays paused.
    Snapshot {
        /// The state file (vCPUs, interrupt controllers, devices; versioned JSON).
        #[arg(long, value_name = "PATH")]
        state: PathBuf,
        /// The memory file (guest RAM, sparse).
        #[arg(long, value_name = "PATH")]
        memory: PathBuf,
    },
}

fn main() -> ExitCode {
    let started = Instant::now();
    let args = Args::parse();
    if args.check_kvm {
        return check_kvm();
    }
    if let Some(Client::Control { socket, request }) = &args.client {
        let result = match request {
            ControlRequest::Pause => vmm::control::send(socket, "pause", &[]),
            ControlRequest::Resume => vmm::control::send(socket, "resume", &[]),
            ControlRequest::Snapshot { state, memory } => {
                vmm::control::snapshot(socket, state, memory)
            }
        };
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("arca-vmm: error: {}", error_chain(&err));
                ExitCode::FAILURE
            }
        };
    }
    match run(args, started) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("arca-vmm: error: {}", error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, started: Instant) -> Result<u8, Box<dyn std::error::Error>> {
    if args.die_with_parent {
        let parent = rustix::process::getppid();
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        // The parent may have died before the signal was asked for.
        if rustix::process::getppid() != parent {
            return Err("the process that started arca-vmm is gone".into());
        }
    }
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let flags = ConfigFile {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory_mib: args.memory,
        console: args.console,
        boot_protocol: args.boot_protocol,
        disks: if args.disks.is_empty() {
            None
        } else {
            Some(
                args.disks
                    .iter()
                    .map(|d| DiskFile::parse(d))
                    .collect::<Result<_, _>>()?,
            )
        },
        vsock: args.vsock.as_deref().map(VsockFile::parse).transpose()?,
        net: args.net.as_deref().map(NetFile::parse).transpose()?,
        jail: args.jail.as_deref().map(JailFile::parse).transpose()?,
        fs: if args.fs.is_empty() {
            None
        } else {
            Some(
                args.fs
                    .iter()
                    .map(|f| FsFile::parse(f))
                    .collect::<Result<_, _>>()?,
            )
        },
        control: args.control,
    };
    let (config, snapshot) = match args.restore.as_deref() {
        None => (
            VmConfig::from_file(file.merge(flags), host_memory_mib())?,
            None,
        ),
        Some(spec) => {
            let files = RestoreFiles::parse(spec)?;
            let snapshot = Snapshot::load(&files.state)?;
            let saved = snapshot.machine.config_file();
            let config = VmConfig::for_restore(saved, file.merge(flags), files, host_memory_mib())?;
            (config, Some(snapshot))
        }
    };
    let filters = if args.no_seccomp {
        eprintln!(
            "arca-vmm: warning: --no-seccomp: the VMM runs without its seccomp filters (for debugging only; never with a guest you do not trust)"
        );
        None
    } else {
        Some(Filters::new()?)
    };
    // The jail's first step: a pid namespace and the VM's cgroup. This process stays
    // outside as the supervisor and ends as the VMM did.
    let jailed = match &config.jail {
        Some(jail) => match arca_jail::fork(jail)? {
            Fork::Supervisor(supervisor) => return Ok(relay(supervisor.wait()?)),
            Fork::Child(child) => Some((jail, child)),
        },
        None => None,
    };
    let microvm = match (&config.boot, snapshot) {
        (Boot::Restore(_), Some(snapshot)) => {
            vmm::builder::restore_microvm(&config, snapshot, started)?
        }
        _ => vmm::builder::build_microvm(&config, started)?,
    };
    // Everything is open: the rest of the jail, then the filters, then the guest.
    if let Some((jail, child)) = &jailed {
        arca_jail::lock_down(jail, child)?;
    }
    let report = microvm.run(filters.as_ref())?;
    let _ = std::io::stdout().flush();
    if args.boot_timing {
        eprintln!("arca-vmm: {}", report.timeline);
    }
    let code = report.outcome.exit_code();
    if code != 0 {
        eprintln!("arca-vmm: {}", report.outcome.describe());
    }
    Ok(code)
}

/// The supervisor's exit: the jailed VMM's code, or death by the signal that killed it
/// (SIGSYS also when the VMM, as its pid namespace's init, could only exit with
/// [`EXIT_BAD_SYSCALL`] after a seccomp violation).
fn relay(ended: Ended) -> u8 {
    match ended {
        Ended::Exited(EXIT_BAD_SYSCALL) => arca_jail::die_by_signal(libc::SIGSYS),
        Ended::Exited(code) => code.clamp(0, 255) as u8,
        Ended::Signaled(sig) => arca_jail::die_by_signal(sig),
    }
}

fn check_kvm() -> ExitCode {
    match vmm::kvm_probe::probe_host() {
        Ok(kvm) => {
            let module = kvm
                .module
                .map(|m| format!(", module {m}"))
                .unwrap_or_default();
            println!(
                "KVM usable: {} (API version {}{module}); a test guest ran through KVM_RUN",
                kvm.device.display(),
                kvm.api_version
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("arca-vmm: KVM not usable: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
