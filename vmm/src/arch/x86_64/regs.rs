//! Boot-time register state: the GDT, segments, control registers and general
//! registers for the two entry points Arca supports, and the identity-mapped page tables
//! of the 64-bit Linux boot protocol.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// The PVH entry of an ELF vmlinux: 32-bit protected mode, paging off, EBX =
    /// `hvm_start_info`.
    Pvh,
    /// The 64-bit Linux boot protocol: long mode, identity-mapped first GiB, RSI = zero
    /// page.
    Linux64,
}

/// Errors writing boot structures to guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The GDT, IDT or page tables do not fit in guest memory.
    #[error("Cannot write the boot {what} to guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// What vm-memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// A GDT entry from flags, base and limit (the hardware's scattered encoding).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT for `protocol`: null, code (0x08), data (0x10), TSS (0x18).
pub fn boot_gdt(protocol: BootProtocol) -> [u64; 4] {
    match protocol {
        BootProtocol::Linux64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
        BootProtocol::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xffff_ffff), // 32-bit code
            gdt_entry(0xc093, 0, 0xffff_ffff), // data
            gdt_entry(0x008b, 0, 0x67),        // TSS
        ],
    }
}

/// The `kvm_segment` that GDT entry `entry` at index `index` describes.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry & 0xff00_0000_0000_0000) >> 32)
            | ((entry & 0x0000_00ff_0000_0000) >> 16)
            | ((entry & 0x0000_0000_ffff_0000) >> 16),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT and IDT for `protocol` to guest memory and, for the 64-bit protocol,
/// the page tables identity-mapping the first GiB with 2 MiB pages.
pub fn write_boot_tables(
    memory: &GuestMemoryMmap,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let write = |what, value: u64, addr: u64| {
        memory
            .write_obj(value, GuestAddress(addr))
            .map_err(|source| RegsError::Write { what, source })
    };
    for (i, entry) in boot_gdt(protocol).into_iter().enumerate() {
        write("GDT", entry, BOOT_GDT_START + 8 * i as u64)?;
    }
    write("IDT", 0, BOOT_IDT_START)?;
    if protocol == BootProtocol::Linux64 {
        write("page tables", PDPTE_START | 0x03, PML4_START)?;
        write("page tables", PDE_START | 0x03, PDPTE_START)?;
        for i in 0..512u64 {
            // Present, writable, 2 MiB page.
            write("page tables", (i << 21) | 0x83, PDE_START + i * 8)?;
        }
    }
    Ok(())
}

/// Applies the segments, descriptor tables and control registers of `protocol` to
/// `sregs` (read from the vCPU first, so KVM's other state is kept).
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: BootProtocol) -> kvm_sregs {
    let gdt = boot_gdt(protocol);
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// General registers at the kernel's entry point `entry`.
pub fn boot_regs(protocol: BootProtocol, entry: u64) -> kvm_regs {
    match protocol {
        BootProtocol::Pvh => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootProtocol::Linux64 => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// The FPU state at reset: x87 control word 0x37f, SSE control 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;

    #[test]
    fn gdt_entries_encode_as_the_hardware_expects() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xffff_ffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x008b, 0, 0x67), 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn segments_decode_back_from_gdt_entries() {
        let s = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 2);
        assert_eq!(
            (s.base, s.limit, s.selector, s.type_, s.s, s.present, s.g),
            (0x1234_5678, 0xabcde, 0x10, 3, 1, 1, 0)
        );
        let null = segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }

    #[test]
    fn pvh_entry_is_flat_32_bit_protected_mode_with_start_info_in_ebx() {
        let sregs = boot_sregs(kvm_sregs::default(), BootProtocol::Pvh);
        assert_eq!(sregs.cr0, 0x11);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!(
            (sregs.cs.l, sregs.cs.db, sregs.cs.limit, sregs.cs.selector),
            (0, 1, 0xffff_ffff, 8)
        );
        assert_eq!(
            (sregs.ds.selector, sregs.ss.type_, sregs.ss.db),
            (0x10, 3, 1)
        );
        assert_eq!((sregs.tr.limit, sregs.tr.g, sregs.tr.type_), (0x67, 0, 0xb));
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
        let regs = boot_regs(BootProtocol::Pvh, 0x100_0000);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0000, 0x6000, 2));
    }

    #[test]
    fn linux64_entry_is_long_mode_with_paging_and_the_zero_page_in_rsi() {
        let sregs = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64);
        assert_eq!(sregs.cr0 & 0x8000_0001, 0x8000_0001);
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer & 0x500, 0x500);
        assert_eq!((sregs.cs.l, sregs.cs.db), (1, 0));
        let regs = boot_regs(BootProtocol::Linux64, 0x100_0200);
        assert_eq!((regs.rip, regs.rsi, regs.rsp), (0x100_0200, 0x7000, 0x8ff0));
    }

    #[test]
    fn linux64_page_tables_identity_map_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_boot_tables(&mem, BootProtocol::Linux64).unwrap();
        let read = |a| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(PML4_START), 0xa003);
        assert_eq!(read(PDPTE_START), 0xb003);
        assert_eq!(read(PDE_START), 0x83);
        assert_eq!(read(PDE_START + 511 * 8), (511 << 21) | 0x83);
        assert_eq!(read(BOOT_GDT_START + 8), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn boot_tables_that_do_not_fit_are_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write_boot_tables(&mem, BootProtocol::Pvh).is_ok());
        assert!(matches!(
            write_boot_tables(&mem, BootProtocol::Linux64),
            Err(RegsError::Write {
                what: "page tables",
                ..
            })
        ));
    }
}
