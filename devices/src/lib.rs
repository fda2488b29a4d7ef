//! Arca's device models.
//!
//! Devices are state machines behind a [`bus::Bus`]: a vCPU thread hands every port or
//! MMIO access to the bus, which finds the device whose range holds the address. Nothing
//! here touches KVM, so every device is unit-testable without `/dev/kvm`.

#![forbid(unsafe_code)]

pub mod bus;
pub mod legacy;
pub mod signals;
pub mod virtio;
