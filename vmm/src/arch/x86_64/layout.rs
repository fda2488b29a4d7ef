//! Where things go in guest physical memory, and the e820 map the guest is given.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)         0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH start_info          0x0000_6040  PVH module list (initrd)
//! 0x0000_7000  zero page / PVH memmap  0x0000_8ff0  boot stack (64-bit protocol)
//! 0x0000_9000  PML4, PDPT, PD          0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA)         0x0010_0000  high memory: kernel, initrd at top
//! 0xd000_0000  MMIO gap: virtio-mmio slots, IOAPIC, LAPIC, TSS, identity map
//! 0x1_0000_0000 RAM above the gap
//! ```

use vm_memory::GuestAddress;

/// Boot GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (one null entry).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map; the same page holds the zero page for the 64-bit protocol.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for the 64-bit protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables identity-mapping the first GiB for the 64-bit protocol.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 × 2 MiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy BIOS area.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (3.25 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Where virtio-mmio device slots start (inside the gap).
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// First and last GSI for virtio devices (IRQs 0-4 are legacy).
pub const VIRTIO_IRQ_RANGE: std::ops::RangeInclusive<u32> = 5..=23;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS for real-mode emulation.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page (EPT real mode).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

// The stack grows down from between the zero page and the page tables, and KVM's
// identity-map page sits just below its TSS pages.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 <= KVM_TSS_ADDRESS);

/// Smallest guest memory Arca boots: the kernel loads at 16 MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory Arca accepts, whatever the host has.
pub const MAX_MEMORY_MIB: u64 = 1 << 20; // 1 TiB

/// The guest RAM regions for `size` bytes of memory: below the MMIO gap, and the rest
/// above 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// e820 entry kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (type 1).
    Ram = 1,
    /// Reserved (type 2).
    Reserved = 2,
}

/// One entry of the memory map given to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

/// The memory map of a guest with `size` bytes of RAM (at least [`HIMEM_START`]): low
/// RAM up to the EBDA, the EBDA and BIOS area reserved (the MP table lives there), RAM
/// from 1 MiB to the MMIO gap, and RAM above 4 GiB.
pub fn memory_map(size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        },
    ];
    let low_end = size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Kind::Ram,
        });
    }
    if size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: size - MMIO_GAP_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_guests_have_one_ram_region_from_zero() {
        assert_eq!(ram_regions(128 * MIB), vec![(GuestAddress(0), 128 * MIB)]);
        assert_eq!(
            ram_regions(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START)]
        );
    }

    #[test]
    fn large_guests_skip_the_mmio_gap() {
        let regions = ram_regions(4096 * MIB);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(1 << 32), 4096 * MIB - MMIO_GAP_START)
            ]
        );
        let total: u64 = regions.iter().map(|r| r.1).sum();
        assert_eq!(total, 4096 * MIB);
    }

    #[test]
    fn memory_map_reserves_the_ebda_and_covers_all_ram() {
        let map = memory_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: 0x100000,
                    size: 127 * MIB,
                    kind: E820Kind::Ram
                },
            ]
        );
    }

    #[test]
    fn memory_map_of_a_large_guest_has_ram_above_4g_and_none_in_the_gap() {
        let size = 6144 * MIB;
        let map = memory_map(size);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // All RAM but the EBDA/BIOS hole is reported.
        assert_eq!(ram, size - (HIMEM_START - EBDA_START));
        for e in &map {
            let end = e.addr + e.size;
            assert!(
                end <= MMIO_GAP_START || e.addr >= MMIO_GAP_END,
                "{e:?} overlaps the gap"
            );
        }
        assert_eq!(
            map.last().unwrap().addr + map.last().unwrap().size,
            (1 << 32) + size - MMIO_GAP_START
        );
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 4 * 8),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x100),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0x400),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(
                pair[0].0 + pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
        for addr in [
            IOAPIC_START,
            APIC_START,
            KVM_TSS_ADDRESS,
            KVM_IDENTITY_MAP_ADDRESS,
        ] {
            assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&addr));
        }
    }
}
