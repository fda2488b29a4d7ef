//! Arca's virtual machine monitor: one process per microVM.
//!
//! [`builder::build_microvm`] is the boot recipe; [`microvm::Microvm::run`] runs the VM.
//! Every KVM ioctl lives under [`vstate`]; [`arch`] holds the pure x86 computations.
//! See `docs/architecture.md` for the crate map, the boot sequence and the threads.

pub mod arch;
pub mod builder;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod kvm_probe;
pub mod loader;
pub mod memory;
pub mod microvm;
pub mod persist;
pub mod seccomp;
pub mod vstate;

/// `err` and its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
