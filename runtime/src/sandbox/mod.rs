//! A container's sandbox: its own microVM (`arca-vmm` booting the guest kernel with the
//! agent initramfs, the image as a read-only ext4 disk and a vsock socket in the
//! container's directory) or, with process isolation, an `arca-agent serve` of its own
//! on a Unix socket there. Either way the same agent and protocol run the container.
//!
//! [`Sandbox`] owns the sandbox's life: joining the container's network before it
//! starts ([`network::Attachment`]), launching it, waiting for its agent while watching
//! that it lives, linking the container to the network, and its teardown, cleanly
//! after the container ended or at once when it failed. What the sandbox process says
//! goes to `sandbox.log`, so a failure is reported with its own words.

pub mod network;
pub mod shares;
pub mod template;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arca_agent_client::{AgentAddress, AgentClient, AgentClientError, Watch};
use arca_protocol::{
    ContainerSpec, Mount, MountSource, ProcessSpec, RestoredSandbox, Rootfs, WritableLayer,
};

use crate::container::pids::{alive, start_time};
use crate::container::{Isolation, RunOptions};
use crate::error::{RunError, io_err};
use crate::error_chain;
use crate::guest;
use crate::image::store::{Image, Store};
use crate::storage::{self, MountPoint, MountType};
use network::Attachment;
use shares::Shares;

/// How long a sandbox has to boot until its agent answers.
const BOOT_PATIENCE: Duration = Duration::from_secs(30);
/// How long a microVM restored from a template has until its agent answers, before it
/// is booted cold instead.
const WARM_PATIENCE: Duration = Duration::from_secs(10);
/// How often a waiting supervisor checks that the agent still answers, how long each
/// check may take, and how many missed checks in a row mean the sandbox is wedged.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_PATIENCE: Duration = Duration::from_secs(10);
/// How long a sandbox is given to end after its container did (a microVM's kernel
/// syncing its disk and powering off, a host agent exiting) before it is killed: a
/// guest that never powers off does not hold its container's teardown.
const END_PATIENCE: Duration = Duration::from_secs(10);
const PINGS_MISSED: u32 = 3;
/// The agent's vsock port in a microVM.
const AGENT_PORT: u32 = 1024;
/// What [`log_tail`] says of an empty log.
const NOTHING_SAID: &str = "it said nothing";

/// Removes the sockets a previous sandbox of the container in `dir` left (a VMM and
/// an agent bind theirs anew).
pub fn clear_sockets(dir: &Path) {
    for stale in ["vsock.sock", "agent.sock"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
}

/// A running sandbox. Dropping it kills what is left of it and gives its network
/// address back.
#[derive(Debug)]
pub struct Sandbox<'a> {
    isolation: Isolation,
    // Dropped before `network`: the link goes with the sandbox process.
    process: Reaped,
    // After the process: a jailed VMM's cgroup, should its supervisor have been killed
    // before it could remove it.
    cgroup: VmCgroup,
    // A microVM's virtiofsd daemons, after their VMM.
    _shares: Shares,
    mounts: Vec<MountPoint>,
    started: Option<u64>,
    address: AgentAddress,
    log: PathBuf,
    network: Attachment<'a>,
    /// For a VM restored from a template: what its agent is told first.
    restored: Option<RestoredSandbox>,
    /// For a VM restored from a template: how to boot it cold instead, should the
    /// restore fail.
    fallback: Option<ColdFallback>,
}

/// A warm start's way back: the cold boot's command and the template to forget.
#[derive(Debug)]
struct ColdFallback {
    command: Command,
    template: template::Template,
}

impl<'a> Sandbox<'a> {
    /// Joins container `id`'s network (leasing its address) and starts its sandbox,
    /// whose files live in `dir`.
    pub fn launch(
        state: &'a Path,
        store: &Store,
        image: &Image,
        opts: &RunOptions,
        mounts: &[MountPoint],
        dir: &Path,
        id: &str,
    ) -> Result<Self, RunError> {
        let network = Attachment::prepare(state, opts, id)?;
        let shares = match opts.isolation {
            Isolation::Vm => shares::start(dir, mounts)?,
            Isolation::Process => Shares::default(),
        };
        let log = dir.join("sandbox.log");
        let stderr = std::fs::File::create(&log).map_err(io_err("create the sandbox log"))?;
        let mut cgroup = VmCgroup(None);
        let mut restored = None;
        let mut fallback = None;
        let (command, address) = match opts.isolation {
            Isolation::Process => {
                let sock = dir.join("agent.sock");
                let mut agent = Command::new(guest::agent_binary()?);
                agent
                    .args(["serve", "--listen"])
                    .arg(&sock)
                    .arg("--run-dir")
                    .arg(dir.join("run"));
                (agent, AgentAddress::Unix(sock))
            }
            Isolation::Vm => {
                let uds = dir.join("vsock.sock");
                let launch = VmLaunch {
                    state,
                    store,
                    image,
                    opts,
                    dir,
                    uds: &uds,
                    network: &network,
                    shares: &shares,
                };
                let files = GuestFiles::find(&launch)?;
                let cold = vmm_command(&launch, &files);
                let mut vmm = match warm_command(&launch, &files)? {
                    Some((command, told, template)) => {
                        restored = Some(told);
                        fallback = Some(ColdFallback {
                            command: cold,
                            template,
                        });
                        command
                    }
                    None => cold,
                };
                if let Some(spec) = jail_spec(dir, id, opts)? {
                    vmm.arg("--jail").arg(&spec.arg);
                    if let Some(f) = &mut fallback {
                        f.command.arg("--jail").arg(&spec.arg);
                    }
                    cgroup = VmCgroup(Some(spec.cgroup));
                }
                (
                    vmm,
                    AgentAddress::Vsock {
                        uds,
                        port: AGENT_PORT,
                    },
                )
            }
        };
        let child = spawn(command, stderr, opts.isolation)?;
        Ok(Sandbox {
            isolation: opts.isolation,
            started: start_time(child.id()),
            process: Reaped(child),
            cgroup,
            _shares: shares,
            mounts: mounts.to_vec(),
            address,
            log,
            network,
            restored,
            fallback,
        })
    }

    /// The sandbox process's pid and start time.
    pub fn pid(&self) -> (u32, Option<u64>) {
        (self.process.0.id(), self.started)
    }

    /// Where its agent listens.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// Its place on the network.
    pub fn network(&self) -> &Attachment<'a> {
        &self.network
    }

    /// Waits until its agent answers (at most [`BOOT_PATIENCE`], and no longer than
    /// the sandbox lives: a VMM that dies at start fails at once, in its own words).
    /// From then on a sandbox that dies or stops answering ends every wait on the
    /// client. A microVM's TAP joins its bridge once the guest is up. A microVM
    /// restored from a template that fails to come up (a host whose KVM no longer takes
    /// the snapshot, a template pruned under the run) is booted cold instead, once, and
    /// the template forgotten.
    pub fn connect(&mut self) -> Result<AgentClient, RunError> {
        match self.connect_once() {
            Err(e) if self.fallback.is_some() => {
                let Some(fallback) = self.fallback.take() else {
                    return Err(e);
                };
                eprintln!(
                    "arca: warning: the microVM's warm start failed ({}); booting it cold",
                    error_chain(&e)
                );
                template::discard(&fallback.template);
                self.restored = None;
                let _ = self.process.0.kill();
                let _ = self.process.0.wait();
                if let Some(path) = &self.cgroup.0 {
                    crate::container::record::end_vm_cgroup(path);
                }
                if let AgentAddress::Vsock { uds, .. } = &self.address {
                    let _ = std::fs::remove_file(uds);
                }
                let stderr =
                    std::fs::File::create(&self.log).map_err(io_err("create the sandbox log"))?;
                let child = spawn(fallback.command, stderr, self.isolation)?;
                self.started = start_time(child.id());
                self.process = Reaped(child);
                self.connect_once()
            }
            other => other,
        }
    }

    fn connect_once(&mut self) -> Result<AgentClient, RunError> {
        let (pid, started) = self.pid();
        let program = program(self.isolation);
        let booting: Watch =
            Box::new(move || (!alive(pid, started)).then(|| format!("{program} exited")));
        let patience = if self.restored.is_some() {
            WARM_PATIENCE
        } else {
            BOOT_PATIENCE
        };
        let mut client = match AgentClient::connect_watched(&self.address, patience, booting) {
            Ok(c) => c,
            Err(AgentClientError::SandboxGone(_)) => {
                let status = self
                    .process
                    .0
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(RunError::SandboxFailed {
                    program,
                    status,
                    output: log_tail(&self.log),
                });
            }
            Err(e) => return Err(e.into()),
        };
        client.set_watch(watch(pid, started, self.address.clone(), program));
        if let Some(mut restored) = self.restored.take() {
            // Before anything else: the restored guest's entropy, clock, MAC and disks.
            restored.time_ns = template::now_ns();
            client.restored(restored)?;
        }
        if self.isolation == Isolation::Vm
            && let Some((tap, bridge)) = self.network.link()
        {
            // The VMM made its TAP before the guest booted; the agent answering means
            // the guest is up. The TAP joins the bridge with its rules.
            self.network.remember_link();
            self.network
                .guard(|| crate::netlink::set_master_up(&tap, &bridge).map_err(Into::into))?;
        }
        Ok(client)
    }

    /// What the agent is asked to create: `process` in the image as this sandbox sees
    /// it, on its network.
    pub fn container_spec(
        &self,
        dir: &Path,
        id: &str,
        image: &Image,
        opts: &RunOptions,
        process: ProcessSpec,
    ) -> ContainerSpec {
        // The writable layer is on host disk: a directory of the container's with
        // process isolation, the guest's second disk (see `vmm_command`) in a microVM.
        let writable = match self.isolation {
            _ if opts.read_only => WritableLayer::ReadOnly,
            Isolation::Process => WritableLayer::Dir {
                path: storage::layer_dir(dir).display().to_string(),
            },
            Isolation::Vm => WritableLayer::Disk {
                device: "/dev/vdb".into(),
                fstype: "ext4".into(),
            },
        };
        let rootfs = match self.isolation {
            Isolation::Process => Rootfs {
                source: image.rootfs.display().to_string(),
                fstype: "dir".into(),
                writable,
            },
            Isolation::Vm => Rootfs {
                source: "/dev/vda".into(),
                fstype: "ext4".into(),
                writable,
            },
        };
        ContainerSpec {
            id: id.to_string(),
            rootfs,
            process,
            hostname: opts.hostname.clone(),
            resources: opts.resources(),
            network: self.network.mode(self.isolation),
            init: opts.init,
            interfaces: self.network.interfaces(),
            hosts: opts.add_hosts.clone(),
            dns: self.network.name_servers(&opts.dns),
            mounts: self
                .mounts
                .iter()
                .enumerate()
                .map(|(i, m)| self.mount(i, m))
                .collect(),
            security: opts.security.clone(),
            sysctls: opts.sysctls.clone(),
        }
    }

    /// Mount `m`, the `index`th of the container, as this sandbox makes it: a host
    /// directory is bound straight in with process isolation and served over virtio-fs
    /// in a microVM.
    fn mount(&self, index: usize, m: &MountPoint) -> Mount {
        let source = match (m.kind, self.isolation) {
            (MountType::Tmpfs, _) => {
                let t = m.tmpfs.unwrap_or(storage::TmpfsOptions {
                    size: None,
                    mode: None,
                    noexec: true,
                });
                MountSource::Tmpfs {
                    size: t.size,
                    mode: t.mode,
                    noexec: t.noexec,
                }
            }
            (_, Isolation::Process) => MountSource::Bind {
                path: m.source.display().to_string(),
                nosuid: false,
                nodev: false,
                noexec: false,
            },
            (_, Isolation::Vm) => MountSource::Virtiofs {
                tag: shares::tag(index),
                file: m.source.is_file().then(|| shares::SHARED_FILE.to_string()),
            },
        };
        Mount {
            target: m.destination.clone(),
            source,
            readonly: !m.rw,
        }
    }

    /// With process isolation, once the container exists (its PID 1 is
    /// `container_pid`): its end of the link goes straight into its namespace, named
    /// eth0, with the MAC its rules allow; the host end joins the bridge with its rules.
    /// A failure removes the container and ends the sandbox.
    pub fn link_container(
        &self,
        client: &mut AgentClient,
        id: &str,
        container_pid: u32,
    ) -> Result<(), RunError> {
        if self.isolation != Isolation::Process {
            return Ok(());
        }
        let (Some((veth, bridge)), Some(mac)) = (self.network.link(), self.network.mac_bytes())
        else {
            return Ok(());
        };
        let linked = self.network.guard(|| {
            crate::netlink::add_veth(&veth, "eth0", mac, container_pid, &bridge).map_err(Into::into)
        });
        self.network.remember_link();
        if let Err(e) = linked {
            self.abort(client, id);
            return Err(e.into());
        }
        Ok(())
    }

    /// The container could not start: it goes from the sandbox, and a host agent with
    /// it (a microVM's agent powers off once it has no container).
    pub fn abort(&self, client: &mut AgentClient, id: &str) {
        let _ = client.remove(id, true);
        if self.isolation == Isolation::Process {
            let _ = client.shutdown();
        }
    }

    /// The sandbox failed under the container (it died, or stopped answering: `e` is
    /// how its agent was lost): it goes, and the reason returned says why, with the
    /// sandbox's last words.
    pub fn lost(&mut self, e: &AgentClientError) -> String {
        let _ = self.process.0.kill();
        let gone = self.process.0.wait().ok();
        let mut reason = match (e, gone) {
            (AgentClientError::SandboxGone(why), Some(st)) => {
                format!("The sandbox ended unexpectedly: {why} ({st})")
            }
            (_, Some(st)) => format!("The sandbox ended unexpectedly ({st}): {}", error_chain(e)),
            (_, None) => format!("Lost the agent: {}", error_chain(e)),
        };
        let said = log_tail(&self.log);
        if said != NOTHING_SAID {
            reason.push_str(&format!("; {} said: {said}", program(self.isolation)));
        }
        reason
    }

    /// After the container ended: it is removed from the sandbox, and the sandbox ends
    /// (a host agent is told to; a microVM's agent powers off once its last container
    /// is gone, having synced the writable layer's disk). With `discard` (`--rm`: the
    /// disk goes too) a microVM is killed as soon as the container is out of it, rather
    /// than waited for while its kernel shuts down; one that does not end within
    /// [`END_PATIENCE`] is killed. Teardown problems are warnings: the container's exit
    /// code stands.
    pub fn finish(mut self, mut client: AgentClient, id: &str, discard: bool) {
        let removed = client.remove(id, false);
        if let Err(e) = &removed {
            eprintln!(
                "arca: warning: removing {id} from its sandbox: {}",
                error_chain(e)
            );
        }
        if discard && removed.is_ok() && self.isolation == Isolation::Vm {
            let _ = self.process.0.kill();
            let _ = self.process.0.wait();
            // The jailed VMM under the supervisor goes with its cgroup, and its TAP
            // with it (the link is deleted on drop should it still be there).
            if let Some(path) = self.cgroup.0.take() {
                crate::container::record::end_vm_cgroup(&path);
            }
            return;
        }
        if self.isolation == Isolation::Process
            && let Err(e) = client.shutdown()
        {
            eprintln!(
                "arca: warning: stopping the agent of {id}: {}",
                error_chain(&e)
            );
        }
        drop(client);
        let deadline = Instant::now() + END_PATIENCE;
        let ended = loop {
            match self.process.0.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    eprintln!(
                        "arca: warning: {} of {id} did not end within {} s after its container: killed",
                        program(self.isolation),
                        END_PATIENCE.as_secs()
                    );
                    let _ = self.process.0.kill();
                    let _ = self.process.0.wait();
                    break false;
                }
            }
        };
        // Its link went with it.
        self.network.ended.set(ended);
    }
}

/// Starts the sandbox process, its stderr to `stderr`, out of the terminal's process
/// group (a Ctrl-C there does not reach it).
fn spawn(
    mut command: Command,
    stderr: std::fs::File,
    isolation: Isolation,
) -> Result<Child, RunError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(io_err(format!("start {}", program(isolation))))
}

/// `arca-vmm` or `arca-agent`.
fn program(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::Vm => "arca-vmm",
        Isolation::Process => "arca-agent",
    }
}

/// What a microVM sandbox is launched with.
struct VmLaunch<'l, 'a> {
    state: &'l Path,
    store: &'l Store,
    image: &'l Image,
    opts: &'l RunOptions,
    dir: &'l Path,
    uds: &'l Path,
    network: &'l Attachment<'a>,
    shares: &'l Shares,
}

/// What a microVM's VMM is given, found once per launch (a warm start keeps the cold
/// boot's command ready as its fallback): the binary, kernel, agent initramfs, the
/// image's disk, and the writable layer unless the root is read-only.
struct GuestFiles {
    vmm: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    layer: Option<PathBuf>,
}

impl GuestFiles {
    fn find(l: &VmLaunch<'_, '_>) -> Result<Self, RunError> {
        Ok(Self {
            vmm: guest::vmm_binary()?,
            kernel: guest::kernel()?,
            initrd: guest::agent_initramfs(l.state)?,
            disk: guest::image_disk(l.store, l.image)?,
            layer: if l.opts.read_only {
                None
            } else {
                Some(layer_image(l)?)
            },
        })
    }
}

/// The VMM's command line for a cold boot: the guest kernel, the agent initramfs, the
/// image's disk read-only, the container's writable layer (unless its root is
/// read-only), then the devices every launch has (see [`common_devices`]).
fn vmm_command(l: &VmLaunch<'_, '_>, files: &GuestFiles) -> Command {
    let mut vmm = Command::new(&files.vmm);
    vmm.arg("--kernel")
        .arg(&files.kernel)
        .arg("--initrd")
        .arg(&files.initrd)
        .args([
            "--memory",
            &guest_memory_mib(l.opts).to_string(),
            "--cpus",
            &guest_cpus(l.opts).to_string(),
        ])
        .args(["--cmdline", "quiet"])
        .arg("--disk")
        .arg(format!("{},ro", files.disk.display()));
    if let Some(layer) = &files.layer {
        vmm.arg("--disk").arg(layer);
    }
    common_devices(&mut vmm, l);
    for (tag, socket) in &l.shares.devices {
        vmm.arg("--fs")
            .arg(format!("tag={tag},socket={}", socket.display()));
    }
    vmm
}

/// For a warm start (see [`template`]): the VMM's command line restoring the template
/// of this VM's size and layout (made first if there is none), with the image's disk,
/// the writable layer (an empty placeholder when the root is read-only) and the
/// container's own devices in the template's places; and what the agent is told
/// first. `None` when this launch boots cold: `--no-snapshot`, `$ARCA_SNAPSHOTS=0`, a
/// virtio-fs mount, or a template that cannot be made (said in a warning).
fn warm_command(
    l: &VmLaunch<'_, '_>,
    files: &GuestFiles,
) -> Result<Option<(Command, RestoredSandbox, template::Template)>, RunError> {
    if l.opts.no_snapshot || !template::enabled() || !l.shares.devices.is_empty() {
        return Ok(None);
    }
    let layout = template::Layout {
        memory_mib: guest_memory_mib(l.opts),
        cpus: guest_cpus(l.opts),
        net: l.network.link().is_some(),
    };
    let guest = template::Guest {
        vmm: &files.vmm,
        kernel: &files.kernel,
        initrd: &files.initrd,
    };
    let made = match template::ensure(l.state, guest, layout) {
        Ok(made) => made,
        Err(e) => {
            eprintln!(
                "arca: warning: booting the microVM cold: {}",
                error_chain(&e)
            );
            return Ok(None);
        }
    };
    let layer = files.layer.as_ref().unwrap_or(&made.empty_disk);
    let told = template::restored_sandbox(
        l.network.mac().as_deref(),
        &[("vda", &files.disk), ("vdb", layer)],
    )
    .map_err(|e| RunError::Invalid(error_chain(&e)))?;
    let mut vmm = Command::new(&files.vmm);
    vmm.arg("--restore")
        .arg(format!(
            "state={},memory={}",
            made.state.display(),
            made.memory.display()
        ))
        .arg("--disk")
        .arg(format!("{},ro", files.disk.display()))
        .arg("--disk")
        .arg(layer);
    common_devices(&mut vmm, l);
    Ok(Some((vmm, told, made)))
}

/// The container's writable layer image (`--storage-opt size=`, or the default size).
fn layer_image(l: &VmLaunch<'_, '_>) -> Result<PathBuf, RunError> {
    let size = l.opts.storage_size.unwrap_or(storage::DEFAULT_LAYER_SIZE);
    let blanks = l.state.join("guest");
    Ok(storage::layer_image(l.dir, size, Some(&blanks))?)
}

/// What a cold boot and a warm start both give the VMM: the vsock socket, a console
/// only when asked for (the guest's to fill, capped by the VMM), and the TAP of the
/// container's network link with its MAC.
fn common_devices(vmm: &mut Command, l: &VmLaunch<'_, '_>) {
    vmm.arg("--vsock")
        .arg(format!("cid=3,uds={}", l.uds.display()))
        .arg("--console")
        .arg(if l.opts.guest_console {
            format!("file:{}", l.dir.join("console.log").display())
        } else {
            "none".into()
        });
    if let (Some((tap, _)), Some(mac)) = (l.network.link(), l.network.mac()) {
        vmm.arg("--net").arg(format!("tap={tap},mac={mac}"));
    }
}

/// A microVM's vCPUs for a container run with `opts`: `--cpus` rounded up, at least 1.
fn guest_cpus(opts: &RunOptions) -> u32 {
    opts.cpus.map_or(1, |c| c.ceil().max(1.0) as u32)
}

/// The uid and gid jailed VMMs run as unless `$ARCA_VMM_UID`/`$ARCA_VMM_GID` say
/// otherwise: one identity no host account has (a VMM holds nothing of another's: each
/// has its own pid, mount, ipc and network namespace, an empty root, and is not
/// dumpable).
pub const DEFAULT_VMM_ID: u32 = 64064;

/// `--jail`'s value for the VMM of container `id`, and its cgroup.
#[derive(Debug)]
struct JailSpec {
    arg: String,
    cgroup: PathBuf,
}

/// The jail of container `id`'s VMM (see docs/architecture.md, "Security model"): an
/// empty root on `<dir>/jail`, the unprivileged identity, the cgroup
/// `<cgroup2>/arca-vm/<id>` with `--cpus` as its CPU quota. `$ARCA_VMM_JAIL=0` runs the
/// VMM unjailed, for measurements and debugging only, and says so.
fn jail_spec(dir: &Path, id: &str, opts: &RunOptions) -> Result<Option<JailSpec>, RunError> {
    if std::env::var_os("ARCA_VMM_JAIL").is_some_and(|v| v == "0") {
        eprintln!(
            "arca: warning: ARCA_VMM_JAIL=0: the microVM's VMM runs unjailed, as root with every capability (for measurements and debugging only)"
        );
        return Ok(None);
    }
    let id_var = |name: &str| -> Result<u32, RunError> {
        match std::env::var(name) {
            Err(_) => Ok(DEFAULT_VMM_ID),
            Ok(v) => v.parse().ok().filter(|n| *n != 0).ok_or_else(|| {
                RunError::Invalid(format!(
                    "invalid ${name} {v:?}: the VMM's jail needs a numeric id other than 0"
                ))
            }),
        }
    };
    let (uid, gid) = (id_var("ARCA_VMM_UID")?, id_var("ARCA_VMM_GID")?);
    let root = dir.join("jail");
    match std::fs::create_dir(&root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io_err("create the VMM's jail directory")(e));
        }
        _ => {}
    }
    let cgroup = crate::container::record::vm_cgroup(id);
    let mut arg = format!(
        "root={},uid={uid},gid={gid},cgroup={}",
        root.display(),
        cgroup.display()
    );
    if let Some(cpus) = opts.cpus {
        arg.push_str(&format!(",cpu-quota={cpus}"));
    }
    Ok(Some(JailSpec { arg, cgroup }))
}

/// A jailed VMM's cgroup. Dropped after the sandbox process (the VMM's supervisor) was
/// reaped: what is left in it (a VMM whose supervisor was killed, still giving back its
/// guest's memory) is killed and waited for, then the cgroup goes.
#[derive(Debug)]
struct VmCgroup(Option<PathBuf>);

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            crate::container::record::end_vm_cgroup(path);
        }
    }
}

/// What a supervisor asks while it waits on the agent: whether the sandbox process is
/// still there, and every [`PING_EVERY`] whether its agent still answers a ping on a
/// connection of its own. A dead sandbox, or one whose agent missed [`PINGS_MISSED`]
/// checks in a row (a wedged VMM or guest), ends the wait instead of hanging it.
fn watch(pid: u32, started: Option<u64>, address: AgentAddress, program: &'static str) -> Watch {
    let mut last = Instant::now();
    let mut missed = 0;
    Box::new(move || {
        if !alive(pid, started) {
            return Some(format!("{program} exited"));
        }
        if last.elapsed() < PING_EVERY {
            return None;
        }
        let answered = AgentClient::connect(&address, PING_PATIENCE)
            .map(|c| c.with_patience(PING_PATIENCE))
            .and_then(|mut c| c.ping())
            .is_ok();
        last = Instant::now();
        missed = if answered { 0 } else { missed + 1 };
        (missed >= PINGS_MISSED).then(|| {
            format!(
                "{program} stopped answering (its agent missed {missed} liveness checks in a row)"
            )
        })
    })
}

/// The last lines of a sandbox's stderr (at most 2 KiB), for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(2048)..];
    let tail = String::from_utf8_lossy(tail);
    let tail = tail.trim();
    if tail.is_empty() {
        NOTHING_SAID.into()
    } else {
        tail.replace('\n', "; ")
    }
}

/// A child process killed if still running when dropped.
#[derive(Debug)]
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A microVM's RAM for a container run with `opts`: room for its kernel, the agent and
/// the container's `--memory` (256 MiB without one).
pub fn guest_memory_mib(opts: &RunOptions) -> u64 {
    opts.memory.map_or(256, |m| (m >> 20) + 128).max(128)
}
