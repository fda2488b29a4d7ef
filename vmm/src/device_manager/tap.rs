//! Host TAP devices, the host end of virtio-net: `/dev/net/tun` attached to a named TAP
//! interface with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking, one packet per
//! read or write: a 12-byte `virtio_net_hdr_v1` (`TUNSETVNETHDRSZ`) and an Ethernet
//! frame, which is exactly what the guest's driver puts in front of its frames, so the
//! device passes headers through. The kernel then finishes partial checksums and
//! segments TSO frames the guest sends, and hands the guest frames with partial
//! checksums or still to be segmented as far as `TUNSETOFFLOAD` allows, which is set
//! from what the guest's driver negotiated ([`NetBackend::set_offloads`]); until then,
//! none.
//!
//! Attaching creates the interface if it does not exist (it then disappears with the
//! VMM); a persistent one made beforehand (`ip tuntap add NAME mode tap`) is attached
//! to as it is, with its addresses, bridge and MTU. Either needs `CAP_NET_ADMIN`, or a
//! persistent TAP owned by the VMM's user.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use devices::virtio::net::{GuestOffloads, NET_HDR_SIZE, NetBackend};

/// Longest interface name (`IFNAMSIZ` less its NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
const TUN_PATH: &str = "/dev/net/tun";

/// Errors of opening a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is not one Linux accepts.
    #[error(
        "Invalid TAP name {0:?}: use 1 to {MAX_NAME_LEN} bytes without '/', ':', '%' or whitespace"
    )]
    Name(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("Cannot open {TUN_PATH}")]
    Open(#[source] io::Error),
    /// `TUNSETIFF` refused the interface.
    #[error("Cannot attach to the TAP device {name}")]
    Attach {
        /// The interface.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The TAP refused the virtio header size or the offloads (a kernel without
    /// `IFF_VNET_HDR` support).
    #[error("Cannot set up virtio headers on the TAP device {name}")]
    VnetHdr {
        /// The interface.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The descriptor could not be duplicated for the event loop.
    #[error("Cannot duplicate the TAP device's descriptor")]
    Dup(#[source] io::Error),
}

/// Whether Linux would accept `name` for an interface (`dev_valid_name`), without the
/// `%d` pattern (Arca wants to know which interface it gets).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace())
}

/// `struct ifreq` as `TUNSETIFF` uses it: the name, the flags, and the rest of the
/// union, all initialised.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());

/// The virtio header in front of every packet: `virtio_net_hdr_v1`, with `num_buffers`.
const VNET_HDR_SIZE: libc::c_int = NET_HDR_SIZE as libc::c_int;

/// The `TUNSETOFFLOAD` flags for `offloads`: what the TAP may hand the guest. TSO needs
/// checksum offload (the kernel refuses it alone), and ECN a TSO.
pub fn tun_offload_flags(offloads: GuestOffloads) -> libc::c_uint {
    let mut flags = 0;
    if offloads.csum {
        flags |= libc::TUN_F_CSUM;
        if offloads.tso4 {
            flags |= libc::TUN_F_TSO4;
        }
        if offloads.tso6 {
            flags |= libc::TUN_F_TSO6;
        }
        if offloads.tso_ecn && (offloads.tso4 || offloads.tso6) {
            flags |= libc::TUN_F_TSO_ECN;
        }
    }
    flags
}

/// A TAP interface attached to this process.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to (or creates) the TAP interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::Name(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: the descriptor is an open /dev/net/tun that `file` owns for the whole
        // call; `req` is a fully initialised, writable value with the size and layout
        // of `struct ifreq` (checked above), which TUNSETIFF reads and writes back only
        // within that size, and it outlives the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let end = req
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(req.name.len());
        let tap = Self {
            file,
            name: String::from_utf8_lossy(&req.name[..end]).into_owned(),
        };
        let vnet_error = |source| TapError::VnetHdr {
            name: tap.name.clone(),
            source,
        };
        let size = VNET_HDR_SIZE;
        // SAFETY: the descriptor is an open /dev/net/tun that `tap` owns for the whole
        // call, attached above; TUNSETVNETHDRSZ reads one `c_int` through the pointer,
        // which points to `size`, an initialised c_int that outlives the call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(vnet_error(io::Error::last_os_error()));
        }
        // A persistent TAP keeps the offloads its last user set: none until the guest
        // says what it takes.
        tap.set_tun_offload(0).map_err(vnet_error)?;
        Ok(tap)
    }

    /// Tells the TAP which offloads the reader (the guest) takes: `TUN_F_*` flags.
    fn set_tun_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: the descriptor is an open /dev/net/tun that `self.file` owns for the
        // whole call, attached with TUNSETIFF; TUNSETOFFLOAD takes its argument by
        // value (an unsigned long of flags), so no memory is passed or touched.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The interface's name, as the kernel reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second descriptor for the same TAP queue, for the event loop to watch.
    pub fn watch_fd(&self) -> Result<OwnedFd, TapError> {
        self.file
            .as_fd()
            .try_clone_to_owned()
            .map_err(TapError::Dup)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl NetBackend for Tap {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        // A TAP write is one header and frame: all of it or an error (the kernel checks
        // the header, as for any TAP writer).
        let n = self.file.write(packet)?;
        if n != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("TAP took {n} of {} bytes", packet.len()),
            ));
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn set_offloads(&mut self, offloads: GuestOffloads) -> io::Result<()> {
        self.set_tun_offload(tun_offload_flags(offloads))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn offloads_map_to_tun_flags() {
        let none = GuestOffloads::default();
        let csum = GuestOffloads { csum: true, ..none };
        let cases = [
            (none, 0),
            (csum, libc::TUN_F_CSUM),
            (
                GuestOffloads {
                    tso4: true,
                    tso6: true,
                    ..csum
                },
                libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
            ),
            (
                GuestOffloads { tso6: true, ..csum },
                libc::TUN_F_CSUM | libc::TUN_F_TSO6,
            ),
            (
                GuestOffloads {
                    tso4: true,
                    tso_ecn: true,
                    ..csum
                },
                libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN,
            ),
            // Never TSO without checksums, nor ECN without TSO: the kernel refuses both.
            (
                GuestOffloads {
                    tso4: true,
                    tso6: true,
                    tso_ecn: true,
                    ..none
                },
                0,
            ),
            (
                GuestOffloads {
                    tso_ecn: true,
                    ..csum
                },
                libc::TUN_F_CSUM,
            ),
        ];
        for (offloads, flags) in cases {
            assert_eq!(tun_offload_flags(offloads), flags, "{offloads:?}");
        }
    }

    #[test]
    fn interface_names_are_checked() {
        for good in ["tap0", "a", "arca-net-123456", "x.y_z"] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "tap%d",
            "a/b",
            "a:1",
            "a b",
            "tab\t",
            "sixteen-chars-xx",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(matches!(Tap::open(bad), Err(TapError::Name(_))), "{bad:?}");
        }
    }

    /// An AF_PACKET socket bound to one interface: the far side of a TAP.
    struct PacketSocket(OwnedFd);

    const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
    /// IEEE 802 local experimental ethertype: no host traffic uses it.
    const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

    impl PacketSocket {
        fn bind(ifname: &str) -> io::Result<Self> {
            let name = CString::new(ifname).map_err(io::Error::other)?;
            // SAFETY: `name` is a NUL-terminated string that lives across the call.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            let kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
            // SAFETY: socket(2) takes no pointers; the result is checked below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, kind, i32::from(ETH_P_ALL.to_be())) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
            let sock = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
            let addr = libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as u16,
                sll_protocol: ETH_P_ALL.to_be(),
                sll_ifindex: index as i32,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 0,
                sll_addr: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let ptr = (&raw const addr).cast::<libc::sockaddr>();
            // SAFETY: `ptr` points to an initialised sockaddr_ll of `len` bytes that
            // lives across the call; the socket is open.
            if unsafe { libc::bind(sock.0.as_raw_fd(), ptr, len) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(sock)
        }

        fn send(&self, frame: &[u8]) -> io::Result<()> {
            let fd = self.0.as_raw_fd();
            // SAFETY: the buffer is valid for `frame.len()` bytes of reading during
            // the call; the socket is open.
            let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let fd = self.0.as_raw_fd();
            // SAFETY: the buffer is valid for `buf.len()` bytes of writing during the
            // call; the socket is open.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        }
    }

    /// A frame from `src` to broadcast with the experimental ethertype and `payload`.
    fn test_frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ETHERTYPE);
        f.extend_from_slice(payload);
        f
    }

    /// Reads frames with `read` until one that `want` accepts arrives, for up to 5
    /// seconds; the host may send its own (IPv6 neighbour discovery and the like) in
    /// between.
    fn wait_for(
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
        want: impl Fn(&[u8]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            match read(&mut buf) {
                Ok(n) if want(&buf[..n]) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
        false
    }

    /// Frames go both ways through a real TAP. Needs root and /dev/net/tun (and `ip`
    /// to bring the interface up); skipped, with the reason printed, without them.
    #[test]
    fn frames_cross_a_real_tap_both_ways() {
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a TAP needs root");
            return;
        }
        if !std::path::Path::new(TUN_PATH).exists() {
            eprintln!("skipped: no {TUN_PATH}");
            return;
        }
        let name = format!("arcat{}", std::process::id());
        let mut tap = match Tap::open(&name) {
            Ok(tap) => tap,
            Err(e) => {
                eprintln!("skipped: {}", crate::error_chain(&e));
                return;
            }
        };
        assert_eq!(tap.name(), name);
        let up = std::process::Command::new("ip")
            .args(["link", "set", "dev", &name, "up"])
            .status();
        if !matches!(up, Ok(s) if s.success()) {
            eprintln!("skipped: cannot bring {name} up with `ip` ({up:?})");
            return;
        }
        let host = PacketSocket::bind(&name).expect("packet socket on the TAP");

        // Guest to host: what the device sends, a header and a frame, appears on the
        // interface as the frame.
        let out = test_frame([0x02, 0, 0, 0, 0, 1], b"from the guest");
        let mut packet = vec![0u8; NET_HDR_SIZE];
        packet.extend_from_slice(&out);
        tap.send(&packet).expect("write to the TAP");
        assert!(
            wait_for(|b| host.recv(b), |f| f == out),
            "frame never reached the host"
        );

        // Host to guest: what the host sends out of the interface is read from the TAP
        // after a header: no checksum to finish, no segmentation (num_buffers, the
        // last two bytes, is the device's to fill in).
        let back = test_frame([0x02, 0, 0, 0, 0, 2], b"from the host");
        host.send(&back).expect("send on the interface");
        assert!(
            wait_for(
                |b| tap.recv(b),
                |p| p.len() == NET_HDR_SIZE + back.len()
                    && p[..10] == [0; 10]
                    && p[NET_HDR_SIZE..] == back
            ),
            "frame never came out of the TAP"
        );

        // Every offload set the guest can negotiate is one the TAP takes; TSO without
        // checksum offload is not (which tun_offload_flags never asks for).
        let all = GuestOffloads {
            csum: true,
            tso4: true,
            tso6: true,
            tso_ecn: true,
        };
        for offloads in [
            all,
            GuestOffloads {
                tso_ecn: false,
                ..all
            },
            GuestOffloads {
                csum: true,
                ..GuestOffloads::default()
            },
            GuestOffloads::default(),
        ] {
            tap.set_offloads(offloads)
                .unwrap_or_else(|e| panic!("{offloads:?}: {e}"));
        }
        assert!(tap.set_tun_offload(libc::TUN_F_TSO4).is_err());
        // With nothing more for it, a read says so at once.
        let mut buf = [0u8; 2048];
        loop {
            match tap.recv(&mut buf) {
                Ok(_) => continue,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
        }
    }
}
