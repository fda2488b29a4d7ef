//! Model-specific registers set on every vCPU before it first runs.

use kvm_bindings::kvm_msr_entry;

/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `STAR`.
pub const MSR_STAR: u32 = 0xc000_0081;
/// `LSTAR`.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `CSTAR`.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `SYSCALL_MASK`.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `KERNEL_GS_BASE`.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// `IA32_TSC`.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `MTRRdefType`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// `IA32_MISC_ENABLE`: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// `MTRRdefType`: MTRRs on, default memory type write-back.
const MTRR_ENABLE_WRITE_BACK: u64 = 0x800 | 0x6;

/// The MSRs and values a vCPU starts with: syscall MSRs cleared, TSC at zero, fast
/// strings on, write-back memory by default.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// `IA32_TSC_DEADLINE`.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The MSRs a snapshot saves: every one KVM lists as saveable (`KVM_GET_MSR_INDEX_LIST`),
/// in KVM's order except that the TSC deadline comes last, after the TSC it is relative
/// to (restoring it first would arm the timer against the old TSC).
pub fn msrs_to_save(index_list: &[u32]) -> Vec<u32> {
    let mut list: Vec<u32> = index_list
        .iter()
        .copied()
        .filter(|&i| i != MSR_IA32_TSC_DEADLINE)
        .collect();
    if index_list.contains(&MSR_IA32_TSC_DEADLINE) {
        list.push(MSR_IA32_TSC_DEADLINE);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_deadline_is_saved_after_the_tsc() {
        let list = msrs_to_save(&[MSR_IA32_TSC_DEADLINE, MSR_STAR, MSR_IA32_TSC]);
        assert_eq!(list, [MSR_STAR, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE]);
        assert_eq!(msrs_to_save(&[MSR_STAR]), [MSR_STAR]);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_write_back_mtrrs_and_clear_syscall_msrs() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        for msr in [
            MSR_STAR,
            MSR_LSTAR,
            MSR_CSTAR,
            MSR_SYSCALL_MASK,
            MSR_KERNEL_GS_BASE,
            MSR_IA32_TSC,
        ] {
            assert_eq!(get(msr), Some(0), "{msr:#x}");
        }
        let mut indexes: Vec<_> = msrs.iter().map(|e| e.index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), msrs.len(), "no MSR twice");
    }
}
