//! Snapshots: what a paused VM is made of, in two files.
//!
//! - The **state file** is JSON: a header (`format`, `version`), the machine as
//!   configured (vCPUs, memory, the devices and their host sides), the VM's interrupt
//!   controllers and clocks, each vCPU's registers, and each device's registers and
//!   queues. KVM's structures are kept as the bytes KVM gave.
//! - The **memory file** is guest RAM, its regions one after the other, written sparse
//!   (pages of zeroes are holes). A restore maps it private (`GuestRam::from_snapshot`).
//!
//! Versions: `VERSION` changes whenever the state file's meaning changes, and a VMM
//! reads only its own version; an older or newer file is refused with both numbers
//! named. Snapshots are a cache of a booted VM, not an archive: whoever keeps them
//! (`arca`'s templates) makes them again when the VMM changes.
//!
//! A state file is hostile input: the guest ran in the VM it describes (and may have
//! taken over the VMM that wrote it). Reading it is bounded in size, every count is
//! checked against the machine it claims, and what it holds goes only to KVM (which
//! checks registers itself) and to device models that check queues as they do a
//! driver's.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use devices::legacy::SerialSnapshot;
use devices::virtio::mmio::TransportState;
use serde::{Deserialize, Serialize};
use vm_memory::{
    Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::arch::x86_64::mptable::MAX_VCPUS;
use crate::config::{ConfigFile, DiskFile, NetFile, VmConfig, VsockFile};
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// What a state file says it is.
pub const FORMAT: &str = "arca-vmm-snapshot";
/// The state file version this VMM writes and reads.
pub const VERSION: u32 = 1;
/// The largest state file read (a real one is well under 1 MiB).
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Errors of reading and writing snapshots.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The state file cannot be read.
    #[error("Cannot read the snapshot state file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The state file is larger than any snapshot's.
    #[error("The snapshot state file {path} is larger than {MAX_STATE_BYTES} bytes")]
    TooBig {
        /// The file.
        path: PathBuf,
    },
    /// The file is not an Arca snapshot state file.
    #[error("{path} is not an arca-vmm snapshot state file")]
    NotASnapshot {
        /// The file.
        path: PathBuf,
    },
    /// The file is of another version.
    #[error(
        "The snapshot {path} has state format version {version}, but this arca-vmm reads only version {VERSION}: take the snapshot again with this VMM"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// The file does not parse (truncated, or damaged).
    #[error("The snapshot state file {path} is damaged or truncated")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The file parses but contradicts itself.
    #[error("The snapshot state file {path} is inconsistent: {why}")]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        why: String,
    },
    /// Writing a snapshot file failed.
    #[error("Cannot write the snapshot's {what}")]
    Write {
        /// Which file.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory could not be read for saving.
    #[error("Cannot read guest memory at {addr:#x}")]
    GuestMemory {
        /// The guest physical address.
        addr: u64,
    },
}

/// The machine a snapshot was taken of, as configured: what a restore rebuilds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMachine {
    /// vCPU count.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disks, in order.
    pub disks: Vec<DiskFile>,
    /// The vsock device.
    pub vsock: Option<VsockFile>,
    /// The network device.
    pub net: Option<NetFile>,
}

impl SavedMachine {
    /// The machine `config` describes.
    pub fn of(config: &VmConfig) -> Self {
        Self {
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            disks: config
                .disks
                .iter()
                .map(|d| DiskFile {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    serial: d.serial.clone(),
                })
                .collect(),
            vsock: config.vsock.as_ref().map(|v| VsockFile {
                cid: v.cid,
                uds: v.uds.clone(),
            }),
            net: config.net.as_ref().map(|n| NetFile {
                tap: n.tap.clone(),
                mac: Some(n.mac.to_string()),
            }),
        }
    }

    /// The machine as a config file, for [`VmConfig::for_restore`].
    pub fn config_file(&self) -> ConfigFile {
        ConfigFile {
            cpus: Some(u64::from(self.cpus)),
            memory_mib: Some(self.memory_mib),
            disks: Some(self.disks.clone()),
            vsock: self.vsock.clone(),
            net: self.net.clone(),
            ..Default::default()
        }
    }

    /// How many virtio devices the machine has, in the order they were added.
    fn virtio_devices(&self) -> usize {
        self.disks.len() + usize::from(self.vsock.is_some()) + usize::from(self.net.is_some())
    }
}

/// A whole snapshot's state (guest memory is in its own file).
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] when written by this VMM.
    pub version: u32,
    /// The machine.
    pub machine: SavedMachine,
    /// Interrupt controllers, PIT and kvm-clock.
    pub vm: VmState,
    /// Each vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// Each virtio device's transport, in the order they were added (the disks, the
    /// vsock device, the network device).
    pub devices: Vec<TransportState>,
}

/// What is read first, to refuse another format or version with a clear message.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    version: Option<u32>,
}

impl Snapshot {
    /// Reads and checks the state file at `path`.
    pub fn load(path: &Path) -> Result<Self, PersistError> {
        let read = |source| PersistError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(PersistError::TooBig {
                path: path.to_owned(),
            });
        }
        Self::parse(&bytes, path)
    }

    /// Parses and checks a state file's bytes (`path` names it in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, PersistError> {
        let path = || path.to_owned();
        // A truncated file of the right kind still shows its header; anything else
        // that does not parse as one is not a snapshot.
        let header: Header = match serde_json::from_slice(bytes) {
            Ok(header) => header,
            Err(e) if e.is_eof() && bytes.starts_with(b"{\"format\":\"arca-vmm-snapshot\"") => {
                return Err(PersistError::Parse {
                    path: path(),
                    source: e,
                });
            }
            Err(_) => return Err(PersistError::NotASnapshot { path: path() }),
        };
        if header.format.as_deref() != Some(FORMAT) {
            return Err(PersistError::NotASnapshot { path: path() });
        }
        match header.version {
            Some(VERSION) => {}
            Some(version) => {
                return Err(PersistError::Version {
                    path: path(),
                    version,
                });
            }
            None => return Err(PersistError::NotASnapshot { path: path() }),
        }
        let snapshot: Snapshot =
            serde_json::from_slice(bytes).map_err(|source| PersistError::Parse {
                path: path(),
                source,
            })?;
        snapshot
            .check()
            .map_err(|why| PersistError::Inconsistent { path: path(), why })?;
        Ok(snapshot)
    }

    /// Checks that the parts agree with the machine.
    fn check(&self) -> Result<(), String> {
        let m = &self.machine;
        if m.cpus == 0 || m.cpus > MAX_VCPUS {
            return Err(format!("{} vCPUs", m.cpus));
        }
        if self.vcpus.len() != usize::from(m.cpus) {
            return Err(format!(
                "{} vCPU states for {} vCPUs",
                self.vcpus.len(),
                m.cpus
            ));
        }
        if self.devices.len() != m.virtio_devices() {
            return Err(format!(
                "{} device states for {} devices",
                self.devices.len(),
                m.virtio_devices()
            ));
        }
        Ok(())
    }

    /// Writes the state to `file` (from its start) and syncs it.
    pub fn write(&self, file: &File) -> Result<(), PersistError> {
        let write = |source| PersistError::Write {
            what: "state file",
            source,
        };
        let bytes = serde_json::to_vec(self).map_err(|e| write(std::io::Error::other(e)))?;
        file.set_len(0).map_err(write)?;
        let mut out = file;
        out.write_all(&bytes).map_err(write)?;
        file.sync_all().map_err(write)
    }
}

/// Bytes of guest memory copied out at a time.
const CHUNK: usize = 1 << 20;
/// The granule of zero detection: a page.
const PAGE: usize = 4096;

/// Writes guest memory to `file`, its regions one after the other from offset 0,
/// leaving holes for pages of zeroes, and syncs it. Every vCPU must be paused.
pub fn write_memory(file: &File, memory: &GuestMemoryMmap) -> Result<(), PersistError> {
    let write = |source| PersistError::Write {
        what: "memory file",
        source,
    };
    file.set_len(0).map_err(write)?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    for region in memory.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, MemoryRegionAddress(done))
                .map_err(|_| PersistError::GuestMemory {
                    addr: region.start_addr().0 + done,
                })?;
            write_nonzero_runs(file, chunk, offset + done).map_err(write)?;
            done += n as u64;
        }
        offset += len;
    }
    file.set_len(offset).map_err(write)?;
    file.sync_all().map_err(write)
}

/// Writes the runs of pages of `chunk` that are not all zeroes at `at` + their offset.
fn write_nonzero_runs(file: &File, chunk: &[u8], at: u64) -> std::io::Result<()> {
    let mut run: Option<usize> = None;
    for (i, page) in chunk.chunks(PAGE).enumerate() {
        let zero = page.iter().all(|&b| b == 0);
        match (run, zero) {
            (None, false) => run = Some(i * PAGE),
            (Some(start), true) => {
                file.write_all_at(&chunk[start..i * PAGE], at + start as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        file.write_all_at(&chunk[start..], at + start as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_format_or_version_or_a_truncated_file_is_refused_by_name() {
        let p = Path::new("/snap/state.json");
        let err =
            Snapshot::parse(b"{\"format\":\"arca-vmm-snapshot\",\"version\":7}", p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The snapshot /snap/state.json has state format version 7, but this arca-vmm reads only version 1: take the snapshot again with this VMM"
        );
        for bytes in [
            &b"{\"format\":\"something-else\",\"version\":1}"[..],
            b"not json",
            b"",
            b"[1,2]",
            b"{\"version\":1}",
        ] {
            let err = Snapshot::parse(bytes, p).unwrap_err();
            assert!(
                matches!(err, PersistError::NotASnapshot { .. }),
                "{bytes:?}: {err}"
            );
        }
        let truncated = b"{\"format\":\"arca-vmm-snapshot\",\"version\":1,\"machine\":{\"cpus\":1,";
        let err = Snapshot::parse(truncated, p).unwrap_err();
        assert!(err.to_string().contains("damaged or truncated"), "{err}");
        // The right header with a body of the wrong shape is damaged, not foreign.
        let err = Snapshot::parse(
            b"{\"format\":\"arca-vmm-snapshot\",\"version\":1,\"machine\":7}",
            p,
        )
        .unwrap_err();
        assert!(err.to_string().contains("damaged or truncated"), "{err}");
    }

    #[test]
    fn memory_is_written_whole_with_holes_for_zero_pages() {
        use vm_memory::GuestAddress;
        let memory = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 3 << 20),
            (GuestAddress(1 << 32), 1 << 20),
        ])
        .unwrap();
        memory.write_obj(0xabu8, GuestAddress(5)).unwrap();
        memory
            .write_obj(0xcdu8, GuestAddress((2 << 20) + 4095))
            .unwrap();
        memory
            .write_obj(0xefu8, GuestAddress((1 << 32) + 4096))
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        write_memory(&file, &memory).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4 << 20);
        let mut bytes = vec![0u8; 4 << 20];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let mut want = vec![0u8; 4 << 20];
        want[5] = 0xab;
        want[(2 << 20) + 4095] = 0xcd;
        want[(3 << 20) + 4096] = 0xef;
        assert!(bytes == want);
        use std::os::unix::fs::MetadataExt;
        assert!(
            file.metadata().unwrap().blocks() * 512 < 1 << 20,
            "zero pages are holes"
        );
    }
}
