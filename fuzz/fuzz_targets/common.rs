//! Shared pieces of the fuzz targets.

use std::path::PathBuf;
use std::sync::OnceLock;

use devices::legacy::EventFdTrigger;
use devices::virtio::Interrupt;
use devices::virtio::block::{Block, DiskConfig};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const MEM_SIZE: u64 = 1 << 20;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

pub fn interrupt() -> Interrupt {
    Interrupt::new(EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).expect("eventfd")))
}

/// A 64 KiB disk image shared by every run of this process.
pub fn block() -> Block {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("arca-fuzz-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0x5au8; 64 << 10]).expect("disk image");
        path
    });
    Block::new(&DiskConfig { path: path.clone(), read_only: false, serial: None }).expect("disk")
}

/// Up to 16 descriptors from 16-byte records: addresses wander in and out of guest
/// memory, lengths are small or absurd, flags and next links are arbitrary.
pub fn descriptors(data: &[u8]) -> Vec<RawDescriptor> {
    data.chunks_exact(16)
        .take(16)
        .map(|c| {
            let addr = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default()) % (2 * MEM_SIZE);
            let raw_len = u32::from_le_bytes(c[8..12].try_into().unwrap_or_default());
            let len = if c[15] & 1 == 1 { raw_len } else { raw_len % 0x2_0000 };
            let flags = u16::from_le_bytes([c[12], c[13]]) & 0x7;
            RawDescriptor::from(Descriptor::new(addr, len, flags, u16::from(c[14] % 16)))
        })
        .collect()
}
