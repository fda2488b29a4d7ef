//! CPUID for each vCPU: what KVM supports, patched so the guest sees its own APIC ID,
//! the VM's real topology (N single-thread cores in one socket), that it runs under a
//! hypervisor, and the KVM leaves (so it uses kvm-clock). No PMU and no nested
//! virtualization (VMX/SVM) are exposed: a sandbox has no use for them, and each is
//! attack surface.

use kvm_bindings::{KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: perfmon and debug capability (a PMU we do not expose).
const LEAF1_ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 ECX: the LAPIC timer has TSC-deadline mode (KVM emulates it when it has
/// `KVM_CAP_TSC_DEADLINE_TIMER`, but leaves the bit to userspace). With it the guest
/// skips calibrating the LAPIC timer, which costs a boot about 100 ms.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: VMX. Guests get no nested virtualization.
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// Leaf 0x8000_0001 ECX: SVM. Guests get no nested virtualization.
const LEAF_8000_0001_ECX_SVM: u32 = 1 << 2;
/// Leaf 1 EDX: hyper-threading / multi-core package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb/0x1f level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// KVM's hypervisor signature leaf.
pub const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
pub const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Errors of CPUID normalisation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    /// The host's supported CPUID lacks a leaf Arca needs.
    #[error("Host CPUID lacks leaf {0:#x}")]
    MissingLeaf(u32),
    /// The host's KVM leaves are missing or do not say "KVMKVMKVM".
    #[error(
        "Host CPUID has no KVM signature at leaf 0x40000000; the guest could not use kvm-clock"
    )]
    NoKvmSignature,
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u8) -> u32 {
    u32::from(count.max(1)).next_power_of_two().trailing_zeros()
}

/// Patches `entries` (from `KVM_GET_SUPPORTED_CPUID`) for vCPU `index` of `count`;
/// `tsc_deadline` says whether KVM emulates the TSC-deadline timer.
pub fn normalize(
    entries: &mut Vec<kvm_cpuid_entry2>,
    index: u8,
    count: u8,
    tsc_deadline: bool,
) -> Result<(), CpuidError> {
    let apic_id = u32::from(index);
    let count32 = u32::from(count);
    let core_bits = id_bits(count);
    let signature = entries.iter().find(|e| e.function == KVM_SIGNATURE_LEAF);
    if signature.map(|e| [e.ebx, e.ecx, e.edx]) != Some(KVM_SIGNATURE) {
        return Err(CpuidError::NoKvmSignature);
    }
    if !entries.iter().any(|e| e.function == 1) {
        return Err(CpuidError::MissingLeaf(1));
    }
    let amd = entries
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| [e.ebx, e.edx, e.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163]);

    // Leaf 0xb (and 0x1f, where KVM reports it): rebuilt from scratch, two levels.
    entries.retain(|e| e.function != 0xb && e.function != 0x1f);
    for function in [0xb, 0x1f] {
        for (sub, (shift, width, kind)) in [
            (0, 1, LEVEL_TYPE_SMT),
            (core_bits, count32, LEVEL_TYPE_CORE),
            (0, 0, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let sub = sub as u32;
            entries.push(kvm_cpuid_entry2 {
                function,
                index: sub,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: width,
                ecx: (kind << 8) | sub,
                edx: apic_id,
                ..Default::default()
            });
        }
    }

    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | (apic_id << 24)
                    | (count32.next_power_of_two().min(255) << 16);
                e.ecx = (e.ecx | LEAF1_ECX_HYPERVISOR) & !LEAF1_ECX_PDCM & !LEAF1_ECX_VMX;
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x8000_0001 => e.ecx &= !LEAF_8000_0001_ECX_SVM,
            // Intel deterministic cache parameters: caches are per core, L3 shared.
            4 if !amd => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    count32.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (count32.saturating_sub(1) << 26);
            }
            // Architectural performance monitoring: none.
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            // AMD: core count and APIC ID size.
            0x8000_0008 if amd => {
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | count32.saturating_sub(1);
            }
            // AMD extended APIC ID, one thread per core, one node.
            0x8000_001e if amd => {
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn host(amd: bool) -> Vec<kvm_cpuid_entry2> {
        let vendor = if amd {
            [0x6874_7541, 0x444d_4163, 0x6974_6e65] // "AuthenticAMD": ebx, ecx, edx
        } else {
            [0x756e_6547, 0x6c65_746e, 0x4965_6e69] // "GenuineIntel"
        };
        let mut v = vec![
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ebx: vendor[0],
                ecx: vendor[1],
                edx: vendor[2],
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff08_0800,
                ecx: LEAF1_ECX_PDCM | 1,
                edx: LEAF1_EDX_HTT,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                index: 0,
                eax: (1 << 5) | 0x21 | (7 << 26) | (1 << 14),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                index: 3,
                eax: (3 << 5) | 0x63 | (7 << 26) | (15 << 14),
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xa,
                eax: 0x0704_3002,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                eax: 1,
                ebx: 2,
                ecx: 0x100,
                edx: 9,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_SIGNATURE_LEAF,
                eax: 0x4000_0001,
                ebx: KVM_SIGNATURE[0],
                ecx: KVM_SIGNATURE[1],
                edx: KVM_SIGNATURE[2],
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: 0x0100_00fb,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ecx: 0x700f,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_001e,
                eax: 9,
                ebx: 0x0105,
                ecx: 0x300,
                ..Default::default()
            },
        ];
        v.push(leaf(0x8000_0000, 0));
        v
    }

    fn find(v: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *v.iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf_1_carries_the_apic_id_count_and_hypervisor_bit() {
        let mut v = host(false);
        normalize(&mut v, 2, 3, true).unwrap();
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC ID");
        assert_eq!(
            (l1.ebx >> 16) & 0xff,
            4,
            "logical processors, rounded to a power of two"
        );
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size and brand index kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_PDCM, 0);
        assert_eq!(l1.ecx & 1, 1, "other feature bits kept");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);

        let mut single = host(false);
        normalize(&mut single, 0, 1, false).unwrap();
        assert_eq!(find(&single, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&single, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn extended_topology_describes_n_single_thread_cores() {
        let mut v = host(false);
        normalize(&mut v, 1, 2, true).unwrap();
        for function in [0xb, 0x1f] {
            let smt = find(&v, function, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 1));
            let core = find(&v, function, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
            let end = find(&v, function, 2);
            assert_eq!((end.ecx >> 8) & 0xff, 0, "level type 0 ends the list");
            assert_eq!(v.iter().filter(|e| e.function == function).count(), 3);
            assert!(
                v.iter()
                    .filter(|e| e.function == function)
                    .all(|e| e.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
            );
        }
    }

    #[test]
    fn intel_cache_leaves_share_l3_only() {
        let mut v = host(false);
        normalize(&mut v, 0, 4, true).unwrap();
        let l1d = find(&v, 4, 0);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!(l1d.eax & 0x3fff, (1 << 5) | 0x21);
        let l3 = find(&v, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
    }

    #[test]
    fn amd_leaves_carry_core_count_and_apic_id() {
        let mut v = host(true);
        normalize(&mut v, 3, 4, true).unwrap();
        let l8 = find(&v, 0x8000_0008, 0);
        assert_eq!(l8.ecx & 0xff, 3);
        assert_eq!((l8.ecx >> 12) & 0xf, 2);
        let l1e = find(&v, 0x8000_001e, 0);
        assert_eq!(
            (l1e.eax, l1e.ebx & 0xff, l1e.ebx & 0xff00, l1e.ecx),
            (3, 3, 0, 0)
        );
    }

    #[test]
    fn nested_virtualization_is_hidden() {
        let mut v = host(true);
        v.push(kvm_cpuid_entry2 {
            function: 0x8000_0001,
            ecx: LEAF_8000_0001_ECX_SVM | 1,
            ..Default::default()
        });
        v.iter_mut()
            .filter(|e| e.function == 1)
            .for_each(|e| e.ecx |= LEAF1_ECX_VMX);
        normalize(&mut v, 0, 1, true).unwrap();
        assert_eq!(find(&v, 1, 0).ecx & LEAF1_ECX_VMX, 0);
        assert_eq!(find(&v, 0x8000_0001, 0).ecx, 1, "only SVM is cleared");
    }

    #[test]
    fn pmu_is_hidden_and_kvm_leaves_are_kept() {
        let mut v = host(false);
        normalize(&mut v, 0, 1, true).unwrap();
        let pmu = find(&v, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
        assert_eq!(find(&v, 0x4000_0001, 0).eax, 0x0100_00fb);
        let sig = find(&v, KVM_SIGNATURE_LEAF, 0);
        assert_eq!([sig.ebx, sig.ecx, sig.edx], KVM_SIGNATURE);
    }

    #[test]
    fn a_host_without_kvm_leaves_is_refused() {
        let mut v = host(false);
        v.retain(|e| e.function != KVM_SIGNATURE_LEAF);
        assert_eq!(
            normalize(&mut v, 0, 1, true),
            Err(CpuidError::NoKvmSignature)
        );
        let mut v = host(false);
        v.retain(|e| e.function != 1);
        assert_eq!(
            normalize(&mut v, 0, 1, true),
            Err(CpuidError::MissingLeaf(1))
        );
    }
}
