//! Guest RAM: anonymous private mappings, aligned to 2 MiB so that the host can back
//! them with transparent huge pages and KVM can map them to the guest with huge pages.
//!
//! Each first touch of a guest page is a nested page fault; with 2 MiB pages there are
//! up to 512 times fewer of them. A plain `mmap` is only page aligned, which rules huge
//! pages out for the whole guest (measured in the lab: guest boot ~25% slower).
//!
//! A VM with a vhost-user device (virtio-fs) needs RAM that another process can map:
//! then guest RAM is a memfd mapped shared ([`GuestRam::new_shared`]), whose regions
//! carry the file and offset the device sends its backend. It is a hugetlbfs memfd when
//! the host has huge pages reserved for it, else a shmem memfd advised `MADV_HUGEPAGE`
//! (which takes effect where `/sys/kernel/mm/transparent_hugepage/shmem_enabled` says
//! `advise`, `within_size` or `always`; Debian's default is `never`).
//!
//! A VM restored from a snapshot maps the snapshot's memory file private
//! ([`GuestRam::from_snapshot`]): pages come from the page cache as the guest touches
//! them, and are copied only when it writes them, so VMs restored from one file share
//! every page they have not written.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Alignment of every guest RAM mapping.
pub const HUGE_PAGE: usize = 2 << 20;

/// Errors of guest RAM allocation.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// `mmap` refused the size.
    #[error("Cannot map {size} bytes of guest RAM")]
    Map {
        /// The size asked for.
        size: usize,
        /// What mmap said.
        #[source]
        source: std::io::Error,
    },
    /// vm-memory refused the regions.
    #[error("Cannot build guest memory from the mapped regions: {0}")]
    Regions(String),
    /// A snapshot's memory file cannot be read.
    #[error("Cannot read the snapshot's memory file")]
    File(#[source] std::io::Error),
    /// A snapshot's memory file is not as long as the guest's RAM.
    #[error(
        "The snapshot's memory file holds {len} bytes, but the guest's RAM is {total} bytes (a truncated or foreign file)"
    )]
    FileSize {
        /// The file's length.
        len: u64,
        /// The RAM's size.
        total: u64,
    },
    /// The memfd for shared guest RAM cannot be made or sized.
    #[error("Cannot create a memfd of {size} bytes for shared guest RAM")]
    Memfd {
        /// Its size.
        size: u64,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What backs guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamBacking {
    /// Private anonymous memory (transparent huge pages where the host allows).
    Private,
    /// A shmem memfd mapped shared, for vhost-user backends.
    SharedMemfd,
    /// A hugetlbfs memfd (2 MiB pages) mapped shared, for vhost-user backends.
    SharedHugetlb,
    /// A snapshot's memory file, mapped private (copy on write).
    Snapshot,
}

/// One aligned anonymous mapping, unmapped when dropped.
#[derive(Debug)]
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the pointer is never
// dereferenced through `Mapping`, only handed back to munmap.
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` has no interior state to race on.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: [addr, addr + len) is the mapping this value created and owns; the
        // guest memory built on it is dropped first (see `GuestRam`'s field order).
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

impl Mapping {
    /// Maps `len` bytes of zeroed anonymous memory at a [`HUGE_PAGE`]-aligned address;
    /// with `file`, that file's bytes from `offset`, shared (or private, copy on write,
    /// when `shared` is false).
    fn new_aligned(
        len: usize,
        file: Option<(&File, u64)>,
        shared: bool,
    ) -> Result<Self, MemoryError> {
        let err = |size| MemoryError::Map {
            size,
            source: std::io::Error::last_os_error(),
        };
        let padded = len.checked_add(HUGE_PAGE).ok_or(MemoryError::Map {
            size: len,
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing
        // aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(err(len));
        }
        let start = base as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let head = aligned - start;
        let tail = padded - head - len;
        if let Some((file, offset)) = file {
            let offset = libc::off_t::try_from(offset).map_err(|_| MemoryError::Map {
                size: len,
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })?;
            // No MAP_NORESERVE: a hugetlbfs mapping must reserve its pages now (and
            // fail if there are too few), not SIGBUS on first touch.
            let kind = if shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
            // SAFETY: [aligned, aligned + len) lies inside the anonymous reservation just
            // made, which nothing refers to; MAP_FIXED replaces exactly that part with
            // the file's pages.
            let mapped = unsafe {
                libc::mmap(
                    aligned as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    kind | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    offset,
                )
            };
            if mapped == libc::MAP_FAILED {
                let e = err(len);
                // SAFETY: the reservation made above, unused.
                unsafe { libc::munmap(base, padded) };
                return Err(e);
            }
        }
        if head > 0 {
            // SAFETY: [base, aligned) lies inside the mapping just made and nothing
            // refers to it.
            unsafe { libc::munmap(base, head) };
        }
        if tail > 0 {
            // SAFETY: [aligned + len, base + padded) lies inside the mapping just made
            // and nothing refers to it; what remains is exactly [aligned, aligned + len).
            unsafe { libc::munmap((aligned + len) as *mut libc::c_void, tail) };
        }
        let addr = aligned as *mut libc::c_void;
        // SAFETY: the range is ours; MADV_HUGEPAGE changes how the host backs it, never
        // its contents. Failure (THP disabled) only costs speed.
        let _ = unsafe { libc::madvise(addr, len, libc::MADV_HUGEPAGE) };
        Ok(Self { addr, len })
    }
}

/// Guest memory and the mappings behind it.
#[derive(Debug)]
pub struct GuestRam {
    /// The guest's view: regions at guest physical addresses.
    pub memory: GuestMemoryMmap,
    /// What backs it.
    pub backing: RamBacking,
    // Declared after `memory` so that it is dropped after it.
    _mappings: Vec<Mapping>,
}

/// `memfd_create(name, flags)` as a `File`.
fn memfd(name: &std::ffi::CStr, flags: libc::c_uint) -> std::io::Result<File> {
    // SAFETY: `name` is a NUL-terminated string; the call only creates a descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl GuestRam {
    /// Maps private anonymous guest RAM for `regions` (guest address, size in bytes).
    pub fn new(regions: &[(GuestAddress, u64)]) -> Result<Self, MemoryError> {
        Self::build(regions, None)
    }

    /// Maps guest RAM for `regions` from one memfd, shared, so that a vhost-user
    /// backend can map it too: hugetlbfs pages when the host has enough reserved,
    /// else shmem.
    pub fn new_shared(regions: &[(GuestAddress, u64)]) -> Result<Self, MemoryError> {
        let total: u64 = regions.iter().map(|&(_, size)| size).sum();
        let huge = libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        let whole_huge_pages = regions
            .iter()
            .all(|&(_, size)| size.is_multiple_of(HUGE_PAGE as u64));
        if whole_huge_pages
            && let Ok(file) = memfd(c"arca-guest-ram", libc::MFD_CLOEXEC | huge)
            && file.set_len(total).is_ok()
            // Shared hugetlb mappings reserve their pages when made: too few fail here.
            && let Ok(ram) = Self::build(regions, Some(Arc::new(file)))
        {
            return Ok(Self {
                backing: RamBacking::SharedHugetlb,
                ..ram
            });
        }
        let memfd_err = |source| MemoryError::Memfd {
            size: total,
            source,
        };
        let file = memfd(c"arca-guest-ram", libc::MFD_CLOEXEC).map_err(memfd_err)?;
        file.set_len(total).map_err(memfd_err)?;
        Self::build(regions, Some(Arc::new(file)))
    }

    /// Maps guest RAM for `regions` from a snapshot's memory `file`, which holds them
    /// one after the other, private: the guest's writes never reach the file. The file
    /// must be exactly as long as the regions.
    pub fn from_snapshot(regions: &[(GuestAddress, u64)], file: File) -> Result<Self, MemoryError> {
        let total: u64 = regions.iter().map(|&(_, size)| size).sum();
        let len = file.metadata().map_err(MemoryError::File)?.len();
        if len != total {
            return Err(MemoryError::FileSize { len, total });
        }
        let ram = Self::build_mapped(regions, Some(Arc::new(file)), false)?;
        Ok(Self {
            backing: RamBacking::Snapshot,
            ..ram
        })
    }

    /// Maps each region: anonymous and private, or from `file` (consecutive offsets),
    /// shared.
    fn build(
        regions: &[(GuestAddress, u64)],
        file: Option<Arc<File>>,
    ) -> Result<Self, MemoryError> {
        Self::build_mapped(regions, file, true)
    }

    /// [`GuestRam::build`], with a file mapped shared or private.
    fn build_mapped(
        regions: &[(GuestAddress, u64)],
        file: Option<Arc<File>>,
        shared: bool,
    ) -> Result<Self, MemoryError> {
        let mut mappings = Vec::with_capacity(regions.len());
        let mut guest_regions = Vec::with_capacity(regions.len());
        let mut offset = 0u64;
        for &(gpa, size) in regions {
            let len = usize::try_from(size)
                .map_err(|_| MemoryError::Regions(format!("region size {size}")))?;
            let mapping = Mapping::new_aligned(len, file.as_deref().map(|f| (f, offset)), shared)?;
            let builder = MmapRegionBuilder::<()>::new(len);
            let builder = match &file {
                Some(f) => builder
                    .with_file_offset(FileOffset::from_arc(f.clone(), offset))
                    .with_mmap_flags(if shared {
                        libc::MAP_SHARED
                    } else {
                        libc::MAP_PRIVATE
                    }),
                None => builder
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
            };
            // SAFETY: `mapping` is a live read-write mapping of `len` bytes (anonymous
            // and private, or of `file` at `offset`, shared, as the builder says) that
            // outlives the region (see the field order of `GuestRam`), and no other
            // region uses it.
            let region = unsafe {
                builder
                    .with_raw_mmap_pointer(mapping.addr.cast())
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            }
            .build()
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
            offset += size;
            mappings.push(mapping);
            guest_regions.push(
                GuestRegionMmap::new(region, gpa)
                    .ok_or_else(|| MemoryError::Regions(format!("region at {gpa:?}")))?,
            );
        }
        let memory = GuestMemoryMmap::from_regions(guest_regions)
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
        Ok(Self {
            memory,
            backing: if file.is_some() && shared {
                RamBacking::SharedMemfd
            } else {
                RamBacking::Private
            },
            _mappings: mappings,
        })
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    #[test]
    fn regions_are_huge_page_aligned_zeroed_and_usable() {
        let ram =
            GuestRam::new(&[(GuestAddress(0), 6 << 20), (GuestAddress(1 << 32), 2 << 20)]).unwrap();
        for region in ram.memory.iter() {
            assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
        }
        assert_eq!(
            ram.memory.read_obj::<u64>(GuestAddress(5 << 20)).unwrap(),
            0
        );
        ram.memory
            .write_obj(0xfeed_u64, GuestAddress((1 << 32) + 8))
            .unwrap();
        assert_eq!(
            ram.memory
                .read_obj::<u64>(GuestAddress((1 << 32) + 8))
                .unwrap(),
            0xfeed
        );
        assert!(
            ram.memory.read_obj::<u64>(GuestAddress(6 << 20)).is_err(),
            "nothing between regions"
        );
    }

    #[test]
    fn shared_ram_is_one_memfd_at_consecutive_offsets() {
        use std::os::unix::fs::FileExt;
        let ram =
            GuestRam::new_shared(&[(GuestAddress(0), 6 << 20), (GuestAddress(1 << 32), 2 << 20)])
                .unwrap();
        assert_ne!(ram.backing, RamBacking::Private);
        let offsets: Vec<u64> = ram
            .memory
            .iter()
            .map(|r| {
                assert_eq!(r.as_ptr() as usize % HUGE_PAGE, 0);
                r.file_offset().unwrap().start()
            })
            .collect();
        assert_eq!(offsets, [0, 6 << 20]);
        // What the guest writes is in the file another process would map.
        ram.memory
            .write_obj(0xfeed_u64, GuestAddress((1 << 32) + 8))
            .unwrap();
        let region = ram.memory.iter().nth(1).unwrap();
        let mut bytes = [0u8; 8];
        region
            .file_offset()
            .unwrap()
            .file()
            .read_exact_at(&mut bytes, (6 << 20) + 8)
            .unwrap();
        assert_eq!(u64::from_ne_bytes(bytes), 0xfeed);
        assert_eq!(
            GuestRam::new(&[(GuestAddress(0), 2 << 20)])
                .unwrap()
                .backing,
            RamBacking::Private
        );
    }

    #[test]
    fn snapshot_ram_reads_the_file_and_never_writes_it() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        let mut bytes = vec![0u8; 8 << 20];
        bytes[(6 << 20) + 8] = 0x5a;
        bytes[16] = 0xa5;
        file.write_all(&bytes).unwrap();
        let regions = [(GuestAddress(0), 6 << 20), (GuestAddress(1 << 32), 2 << 20)];
        let ram = GuestRam::from_snapshot(&regions, file.try_clone().unwrap()).unwrap();
        assert_eq!(ram.backing, RamBacking::Snapshot);
        assert_eq!(ram.memory.read_obj::<u8>(GuestAddress(16)).unwrap(), 0xa5);
        assert_eq!(
            ram.memory
                .read_obj::<u8>(GuestAddress((1 << 32) + 8))
                .unwrap(),
            0x5a
        );
        ram.memory.write_obj(0xffu8, GuestAddress(16)).unwrap();
        drop(ram);
        use std::os::unix::fs::FileExt;
        let mut b = [0u8];
        file.read_exact_at(&mut b, 16).unwrap();
        assert_eq!(b, [0xa5], "the guest's write stayed private");
        // Hostile or damaged: a file of another length is refused.
        file.set_len(7 << 20).unwrap();
        let err = GuestRam::from_snapshot(&regions, file).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn absurd_sizes_are_errors() {
        assert!(GuestRam::new(&[(GuestAddress(0), u64::MAX)]).is_err());
        assert!(GuestRam::new(&[(GuestAddress(0), 1 << 50)]).is_err());
        assert!(GuestRam::new_shared(&[(GuestAddress(0), 1 << 50)]).is_err());
    }
}
