//! The Intel MultiProcessor table (spec 1.4), which tells a guest without ACPI how many
//! CPUs it has and how the IOAPIC routes interrupts. It lives in the EBDA, where Linux
//! looks for the `_MP_` floating pointer.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_START};

/// Most vCPUs Arca gives a VM (the guest kernel's `CONFIG_NR_CPUS`, and what fits the
/// 1 KiB of EBDA the table lives in).
pub const MAX_VCPUS: u8 = 32;
/// IOAPIC input pins routed 1:1 to ISA IRQs.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const MP_SPEC_REVISION: u8 = 4;

const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;

/// Errors of MP table construction.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Zero vCPUs, or more than [`MAX_VCPUS`].
    #[error("Cannot describe {0} vCPUs in the MP table (1 to {MAX_VCPUS})")]
    VcpuCount(u8),
    /// Guest memory does not cover the EBDA.
    #[error("Cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Two's complement of the byte sum, so that the sum including it is 0.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP floating pointer and configuration table for `cpus` vCPUs (APIC IDs 0..cpus),
/// as the bytes to place at [`EBDA_START`].
pub fn mptable_bytes(cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(MptableError::VcpuCount(cpus));
    }
    let ioapic_id = cpus; // the first APIC ID no CPU uses
    let table_start = EBDA_START as u32 + 16;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_CPU, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // APIC and FPU present
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_INTSRC, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(MP_SPEC_REVISION);
    table.push(0); // checksum, below
    table.extend_from_slice(b"ARCA    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length and checksum
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_start.to_le_bytes());
    floating.extend_from_slice(&[1, MP_SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut bytes = floating;
    bytes.extend_from_slice(&table);
    debug_assert!(EBDA_START + bytes.len() as u64 <= 0xa0000);
    debug_assert!(EBDA_START + (bytes.len() as u64) < HIMEM_START);
    Ok(bytes)
}

/// Writes the MP table for `cpus` vCPUs at [`EBDA_START`].
pub fn write_mptable(memory: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = mptable_bytes(cpus)?;
    memory
        .write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for cpus in [1, 2, 7, MAX_VCPUS] {
            let b = mptable_bytes(cpus).unwrap();
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0, "floating pointer, {cpus} cpus");
            let len = u16::from_le_bytes([b[16 + 4], b[16 + 5]]) as usize;
            assert_eq!(16 + len, b.len());
            assert_eq!(&b[16..20], b"PCMP");
            assert_eq!(sum(&b[16..16 + len]), 0, "table, {cpus} cpus");
            assert_eq!(
                u32::from_le_bytes(b[4..8].try_into().unwrap()),
                EBDA_START as u32 + 16
            );
        }
    }

    #[test]
    fn table_lists_each_cpu_with_the_first_as_boot_processor() {
        let b = mptable_bytes(3).unwrap();
        let entries = &b[16 + 44..];
        for cpu in 0..3usize {
            let e = &entries[cpu * 20..cpu * 20 + 20];
            assert_eq!((e[0], e[1]), (ENTRY_CPU, cpu as u8));
            assert_eq!(e[3], if cpu == 0 { 3 } else { 1 });
        }
        let count = u16::from_le_bytes([b[16 + 34], b[16 + 35]]);
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        assert_eq!(b.len(), 16 + 44 + 3 * 20 + 8 + 8 + 24 * 8 + 2 * 8);
        // The IOAPIC takes the first free APIC ID and every IRQ routes to it 1:1.
        let ioapic = &entries[3 * 20 + 8..3 * 20 + 16];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 3));
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            IOAPIC_START as u32
        );
        let irq9 = &entries[3 * 20 + 16 + 9 * 8..3 * 20 + 16 + 10 * 8];
        assert_eq!(irq9, &[ENTRY_INTSRC, INT_TYPE_INT, 0, 0, 0, 9, 3, 9]);
    }

    #[test]
    fn the_largest_table_fits_below_640k() {
        let b = mptable_bytes(MAX_VCPUS).unwrap();
        assert!(EBDA_START + b.len() as u64 <= 0xa0000);
    }

    #[test]
    fn zero_or_too_many_vcpus_are_refused() {
        assert!(matches!(mptable_bytes(0), Err(MptableError::VcpuCount(0))));
        assert!(matches!(
            mptable_bytes(MAX_VCPUS + 1),
            Err(MptableError::VcpuCount(33))
        ));
    }

    #[test]
    fn table_is_written_into_the_ebda() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
