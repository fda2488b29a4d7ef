//! Architecture facts and pure computations: layout, memory map, CPUID, MSRs, boot
//! registers and the MP table. Nothing here makes a KVM ioctl (that is `vstate`'s job),
//! so all of it is unit-tested without `/dev/kvm`.

pub mod x86_64;
