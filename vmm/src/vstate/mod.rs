//! The KVM state of a VM: the system fd, the VM fd, vCPU fds. Every KVM ioctl that Arca
//! makes is made in this module and its children, and nowhere else.

pub mod kvm;
pub mod vcpu;
pub mod vm;
