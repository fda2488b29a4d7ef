//! Arca's virtual machine monitor: one process per microVM.
//!
//! Every KVM ioctl lives under [`vstate`]; the rest of the crate composes those pieces
//! into a VM. See `docs/architecture.md` for the crate map and threads.

pub mod kvm_probe;
pub mod vstate;
