//! virtio-blk backed by a host file: read, write, flush (a real `fsync` of the file),
//! get-id; read-only disks refuse writes with `VIRTIO_BLK_S_IOERR`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{DeviceError, QueueContext, VirtioDevice};

/// Bytes per sector, the unit of virtio-blk addresses.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the one request queue.
const QUEUE_SIZE: u16 = 256;
/// Most data segments in one request the driver may use (`seg_max`).
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Bytes moved per host read or write; a request is done in pieces of this size.
const CHUNK: usize = 128 << 10;

/// Errors of opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The backing file cannot be opened.
    #[error("Cannot open the disk image {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Its size is not whole sectors.
    #[error("The disk image {path} is {size} bytes, not a multiple of {SECTOR_SIZE}")]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The serial is too long.
    #[error("Disk serial {0:?} is longer than 20 bytes")]
    Serial(String),
}

/// A disk as the user described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Backing file.
    pub path: PathBuf,
    /// Refuse guest writes (and open the file read-only).
    pub read_only: bool,
    /// What GET_ID returns (at most 20 bytes); the file name when not given.
    pub serial: Option<String>,
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Block {
    file: File,
    capacity: u64,
    read_only: bool,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    buffer: Vec<u8>,
}

/// How a request ended.
enum Status {
    Ok,
    IoErr,
    Unsupported,
}

impl Status {
    fn code(&self) -> u8 {
        (match self {
            Status::Ok => VIRTIO_BLK_S_OK,
            Status::IoErr => VIRTIO_BLK_S_IOERR,
            Status::Unsupported => VIRTIO_BLK_S_UNSUPP,
        }) as u8
    }
}

impl Block {
    /// Opens the disk image.
    pub fn new(config: &DiskConfig) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open {
            path: config.path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(open_err(std::io::Error::other("not a regular file")));
        }
        let size = meta.len();
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::Size {
                path: config.path.clone(),
                size,
            });
        }
        let serial_text = match &config.serial {
            Some(s) => s.clone(),
            None => default_serial(&config.path),
        };
        if serial_text.len() > VIRTIO_BLK_ID_BYTES as usize {
            return Err(BlockError::Serial(serial_text));
        }
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        serial[..serial_text.len()].copy_from_slice(serial_text.as_bytes());
        Ok(Self {
            file,
            capacity: size / SECTOR_SIZE,
            read_only: config.read_only,
            serial,
            buffer: vec![0; CHUNK],
        })
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Serves one request; returns the bytes written into guest buffers.
    fn handle(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            // Buffers outside guest memory, or lengths that overflow: there is nowhere
            // to put a status, so the request completes with nothing written.
            return 0;
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            return 0;
        }
        let Ok(mut status_writer) = writer.split_at(writable - 1) else {
            return 0;
        };
        let status = match read_header(&mut reader) {
            Some((kind, sector)) => self.execute(kind, sector, &mut reader, &mut writer),
            None => Status::IoErr,
        };
        let data_written = writer.bytes_written();
        if status_writer.write_all(&[status.code()]).is_err() {
            return data_written as u32;
        }
        (data_written + 1) as u32
    }

    fn execute(
        &mut self,
        kind: u32,
        sector: u64,
        reader: &mut Reader<'_>,
        writer: &mut Writer<'_>,
    ) -> Status {
        match kind {
            VIRTIO_BLK_T_IN => match self.range(sector, writer.available_bytes()) {
                Some(offset) => self.read_into(offset, writer),
                None => Status::IoErr,
            },
            VIRTIO_BLK_T_OUT if self.read_only => Status::IoErr,
            VIRTIO_BLK_T_OUT => match self.range(sector, reader.available_bytes()) {
                Some(offset) => self.write_from(offset, reader),
                None => Status::IoErr,
            },
            VIRTIO_BLK_T_FLUSH => match self.file.sync_all() {
                Ok(()) => Status::Ok,
                Err(_) => Status::IoErr,
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = writer.available_bytes().min(self.serial.len());
                match writer.write_all(&self.serial[..n]) {
                    Ok(()) => Status::Ok,
                    Err(_) => Status::IoErr,
                }
            }
            _ => Status::Unsupported,
        }
    }

    /// The byte offset of `sector` if `len` bytes from there are whole sectors on disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        let end_sector = sector.checked_add(len / SECTOR_SIZE)?;
        (len.is_multiple_of(SECTOR_SIZE) && end_sector <= self.capacity)
            .then(|| sector * SECTOR_SIZE)
    }

    fn read_into(&mut self, mut offset: u64, writer: &mut Writer<'_>) -> Status {
        while writer.available_bytes() > 0 {
            let n = writer.available_bytes().min(CHUNK);
            let buf = &mut self.buffer[..n];
            if self.file.read_exact_at(buf, offset).is_err() || writer.write_all(buf).is_err() {
                return Status::IoErr;
            }
            offset += n as u64;
        }
        Status::Ok
    }

    fn write_from(&mut self, mut offset: u64, reader: &mut Reader<'_>) -> Status {
        while reader.available_bytes() > 0 {
            let n = reader.available_bytes().min(CHUNK);
            let buf = &mut self.buffer[..n];
            if reader.read_exact(buf).is_err() || self.file.write_all_at(buf, offset).is_err() {
                return Status::IoErr;
            }
            offset += n as u64;
        }
        Status::Ok
    }
}

/// The request header: type, reserved, sector.
fn read_header(reader: &mut Reader<'_>) -> Option<(u32, u64)> {
    let kind = reader.read_obj::<u32>().ok()?;
    let _reserved = reader.read_obj::<u32>().ok()?;
    let sector = reader.read_obj::<u64>().ok()?;
    Some((u32::from_le(kind), u64::from_le(sector)))
}

/// The image's file name, cut to 20 bytes at a character boundary.
fn default_serial(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = name.len().min(VIRTIO_BLK_ID_BYTES as usize);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    /// A restored disk may be another file than the one the driver sized at boot (a
    /// warm start's template had empty placeholders): the configuration-change interrupt
    /// has the driver read the capacity again.
    fn restored(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), DeviceError> {
        ctx.interrupt.signal_config_change();
        Ok(())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (le64) at 0, size_max (le32) at 8, seg_max (le32) at 12.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        super::copy_config(&config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        ctx: &mut QueueContext<'_>,
    ) -> Result<(), DeviceError> {
        if index != 0 {
            return Ok(());
        }
        let mem = ctx.mem;
        let mut used = false;
        loop {
            let Some(queue) = ctx.queues.get_mut(0) else {
                return Ok(());
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = self.handle(chain, mem);
            queue.add_used(mem, head, len).map_err(DeviceError::Queue)?;
            used = true;
        }
        if used {
            ctx.notify_used(0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::mmio::tests::{bring_up, memory, r, transport};
    use crate::virtio::{Interrupt, VIRTIO_F_VERSION_1};

    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    fn disk(sectors: u64, read_only: bool) -> (tempfile::NamedTempFile, Block) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        f.write_all(&data).unwrap();
        let config = DiskConfig {
            path: f.path().to_owned(),
            read_only,
            serial: Some("arca-disk-1".into()),
        };
        let block = Block::new(&config).unwrap();
        (f, block)
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        mem.write_obj(kind.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(at + 8)).unwrap();
    }

    /// Runs one chain through the device; returns (used len, status byte at `status_at`).
    fn run(
        block: &mut Block,
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        status_at: u64,
    ) -> (u32, u8) {
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut queue: virtio_queue::Queue = vq.create_queue().unwrap();
        mem.write_obj(0xffu8, GuestAddress(status_at)).unwrap();
        let evt = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(crate::legacy::EventFdTrigger::new(evt));
        let mut ctx = QueueContext {
            queues: std::slice::from_mut(&mut queue),
            mem,
            interrupt: &interrupt,
        };
        block.process_queue(0, &mut ctx).unwrap();
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(vq.used().idx().load(), 1, "one request completed");
        (
            used.len(),
            mem.read_obj::<u8>(GuestAddress(status_at)).unwrap(),
        )
    }

    const H: u64 = 0x10000; // header
    const D: u64 = 0x20000; // data
    const S: u64 = 0x30000; // status

    #[test]
    fn reads_sectors_into_guest_buffers() {
        let mem = memory();
        let (_f, mut block) = disk(8, false);
        header(&mem, H, VIRTIO_BLK_T_IN, 2);
        let (len, status) = run(
            &mut block,
            &mem,
            &[
                desc(H, 16, NEXT, 1),
                desc(D, 1024, NEXT | WRITE, 2),
                desc(S, 1, WRITE, 0),
            ],
            S,
        );
        assert_eq!((len, status), (1025, VIRTIO_BLK_S_OK as u8));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(D)).unwrap(), 2);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(D + 1023)).unwrap(), 3);
    }

    #[test]
    fn writes_reach_the_file_and_flush_succeeds() {
        let mem = memory();
        let (f, mut block) = disk(8, false);
        header(&mem, H, VIRTIO_BLK_T_OUT, 5);
        mem.write_slice(&[0xab; 512], GuestAddress(D)).unwrap();
        let (len, status) = run(
            &mut block,
            &mem,
            &[
                desc(H, 16, NEXT, 1),
                desc(D, 512, NEXT, 2),
                desc(S, 1, WRITE, 0),
            ],
            S,
        );
        assert_eq!((len, status), (1, VIRTIO_BLK_S_OK as u8));
        let on_disk = std::fs::read(f.path()).unwrap();
        assert!(on_disk[5 * 512..6 * 512].iter().all(|&b| b == 0xab));
        assert_eq!(on_disk[4 * 512], 4);
        header(&mem, H, VIRTIO_BLK_T_FLUSH, 0);
        let (_, status) = run(
            &mut block,
            &mem,
            &[desc(H, 16, NEXT, 1), desc(S, 1, WRITE, 0)],
            S,
        );
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let mem = memory();
        let (f, mut block) = disk(4, true);
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        header(&mem, H, VIRTIO_BLK_T_OUT, 0);
        let (_, status) = run(
            &mut block,
            &mem,
            &[
                desc(H, 16, NEXT, 1),
                desc(D, 512, NEXT, 2),
                desc(S, 1, WRITE, 0),
            ],
            S,
        );
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(std::fs::read(f.path()).unwrap()[0], 0);
    }

    #[test]
    fn get_id_returns_the_serial() {
        let mem = memory();
        let (_f, mut block) = disk(1, false);
        header(&mem, H, VIRTIO_BLK_T_GET_ID, 0);
        let (len, status) = run(
            &mut block,
            &mem,
            &[
                desc(H, 16, NEXT, 1),
                desc(D, 20, NEXT | WRITE, 2),
                desc(S, 1, WRITE, 0),
            ],
            S,
        );
        assert_eq!((len, status), (21, 0));
        let mut id = [0u8; 11];
        mem.read_slice(&mut id, GuestAddress(D)).unwrap();
        assert_eq!(&id, b"arca-disk-1");
    }

    #[test]
    fn malformed_requests_get_an_error_status_or_complete_empty() {
        let mem = memory();
        let (_f, mut block) = disk(8, false);
        // (name, request type, sector, chain, expected (used len, status byte))
        type Case = (&'static str, u32, u64, Vec<RawDescriptor>, (u32, u8));
        let cases: Vec<Case> = vec![
            (
                "read past the end",
                VIRTIO_BLK_T_IN,
                7,
                vec![
                    desc(H, 16, NEXT, 1),
                    desc(D, 1024, NEXT | WRITE, 2),
                    desc(S, 1, WRITE, 0),
                ],
                (1, 1),
            ),
            (
                "sector overflow",
                VIRTIO_BLK_T_IN,
                u64::MAX,
                vec![
                    desc(H, 16, NEXT, 1),
                    desc(D, 512, NEXT | WRITE, 2),
                    desc(S, 1, WRITE, 0),
                ],
                (1, 1),
            ),
            (
                "partial sector",
                VIRTIO_BLK_T_OUT,
                0,
                vec![
                    desc(H, 16, NEXT, 1),
                    desc(D, 100, NEXT, 2),
                    desc(S, 1, WRITE, 0),
                ],
                (1, 1),
            ),
            (
                "short header",
                VIRTIO_BLK_T_IN,
                0,
                vec![desc(H, 8, NEXT, 1), desc(S, 1, WRITE, 0)],
                (1, 1),
            ),
            (
                "unknown type",
                77,
                0,
                vec![desc(H, 16, NEXT, 1), desc(S, 1, WRITE, 0)],
                (1, 2),
            ),
            (
                "no writable status",
                VIRTIO_BLK_T_IN,
                0,
                vec![desc(H, 16, NEXT, 1), desc(D, 512, 0, 0)],
                (0, 0xff),
            ),
            (
                "buffer outside memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    desc(H, 16, NEXT, 1),
                    desc(1 << 40, 512, NEXT | WRITE, 2),
                    desc(S, 1, WRITE, 0),
                ],
                (0, 0xff),
            ),
            (
                "giant length",
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    desc(H, 16, NEXT, 1),
                    desc(D, u32::MAX, NEXT | WRITE, 2),
                    desc(S, 1, WRITE, 0),
                ],
                (0, 0xff),
            ),
            (
                "write-only header",
                VIRTIO_BLK_T_IN,
                0,
                vec![desc(H, 16, NEXT | WRITE, 1), desc(S, 1, WRITE, 0)],
                (1, 1),
            ),
        ];
        for (name, kind, sector, descs, expected) in cases {
            header(&mem, H, kind, sector);
            assert_eq!(run(&mut block, &mem, &descs, S), expected, "{name}");
        }
    }

    #[test]
    fn a_looping_chain_ends_without_hanging() {
        let mem = memory();
        let (_f, mut block) = disk(8, false);
        header(&mem, H, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 0 -> ...: the chain iterator stops after the queue size.
        let (len, _) = run(
            &mut block,
            &mem,
            &[desc(H, 16, NEXT, 1), desc(D, 512, NEXT | WRITE, 0)],
            S,
        );
        assert!(len <= 16 * 512 + 1);
    }

    #[test]
    fn images_that_are_not_whole_sectors_or_missing_are_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 1000]).unwrap();
        let err = Block::new(&DiskConfig {
            path: f.path().to_owned(),
            read_only: false,
            serial: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("not a multiple of 512"), "{err}");
        let missing = DiskConfig {
            path: "/nonexistent/disk.img".into(),
            read_only: true,
            serial: None,
        };
        assert!(matches!(Block::new(&missing), Err(BlockError::Open { .. })));
        let long = DiskConfig {
            path: f.path().to_owned(),
            read_only: true,
            serial: Some("x".repeat(21)),
        };
        f.as_file().set_len(512).unwrap();
        assert!(matches!(Block::new(&long), Err(BlockError::Serial(_))));
    }

    #[test]
    fn config_space_holds_capacity_and_seg_max() {
        let (_f, block) = disk(8, false);
        let (mut t, _) = transport(Box::new(block));
        assert_eq!(r(&mut t, 0x8), VIRTIO_ID_BLOCK);
        assert_eq!(r(&mut t, 0x100), 8);
        assert_eq!(r(&mut t, 0x104), 0);
        assert_eq!(r(&mut t, 0x10c), SEG_MAX);
        // Narrow and ragged reads: config space may be read at any size and offset.
        let mut narrow = [0xffu8; 2];
        crate::bus::BusDevice::read(&mut t, 0x10c, &mut narrow);
        assert_eq!(narrow, [SEG_MAX as u8, 0]);
        let mut beyond = [0xffu8; 4];
        crate::bus::BusDevice::read(&mut t, 0x10e, &mut beyond);
        assert_eq!(beyond, [0; 4]);
        bring_up(
            &mut t,
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_BLK_F_FLUSH),
            &[16],
        );
        assert_eq!(r(&mut t, 0x70), 15);
    }
}
