//! `arca-agent`, PID 1 of an Arca microVM, and the container library it shares with the
//! host for `--isolation=process`.
//!
//! - [`cmdline`]: the agent's settings from the kernel command line.
//! - [`init`]: PID 1 duties in the guest (mounts, hostname, loopback, power-off).
//! - [`container`]: containers: cgroup, namespaces, rootfs, processes and their stdio.
//! - [`server`]: the protocol server on vsock (guest) or a Unix socket (host).
//! - [`helper`]: the re-executed helper that sets up a container's namespaces and runs
//!   its processes; the agent starts it as `/proc/self/exe __container-init|__exec`.
//! - [`builtin`]: `arca cp`'s operations, run by an exec in place of a command.
//! - [`seccomp`]: a container's seccomp profile compiled to BPF filters.
//! - [`dns`], [`resolver`]: DNS messages, and a network's resolver (`__dns`, run on
//!   the host by `arca`), jailed, that answers the names on the network.
//!
//! `unsafe` is confined to [`sys`]: fork, the pre-exec hook, vsock sockets, one
//! interface ioctl and the seccomp filter install.

pub mod builtin;
pub mod cgroup;
pub mod changes;
pub mod cmdline;
pub mod container;
pub mod dns;
pub mod helper;
pub mod init;
pub mod layer;
pub mod procinfo;
pub mod reaper;
pub mod resolver;
pub mod restore;
pub mod seccomp;
pub mod server;
pub mod sys;
pub mod user;
