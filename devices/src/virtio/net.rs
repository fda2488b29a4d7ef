//! virtio-net over a host backend (a TAP device in the VMM): one rx and one tx queue,
//! a MAC address, checksum and TCP segmentation offloads both ways, and mergeable
//! receive buffers.
//!
//! Every frame in either direction is preceded by the 12-byte `virtio_net_hdr_v1`, and
//! the device passes it through: on tx the guest's header and frame go to the
//! [`NetBackend`] as they are (a TAP with `IFF_VNET_HDR` reads the same layout, and
//! finishes a partial checksum or segments a TSO frame on the host side); on rx the
//! backend's header comes with the frame, and the device only fills in `num_buffers`.
//! The header is checked against what the driver negotiated both ways: a tx header
//! asking for an offload the driver did not accept is dropped, an rx header the driver
//! could not read (a segmentation type it did not accept) is dropped too, and rx
//! checksum flags are cleared unless the driver accepted `GUEST_CSUM`. Which offloads
//! the host may use on rx is told to the backend when the driver activates the device
//! ([`NetBackend::set_offloads`]).
//!
//! Receiving: without `VIRTIO_NET_F_MRG_RXBUF` a frame goes into one rx chain (and is
//! dropped if it does not fit). With it, a frame is spread over as many chains as it
//! needs, `num_buffers` in the first chain's header saying how many; a frame is only
//! delivered whole: when the ring holds too few buffers it waits for more.
//!
//! Notifications: while the device works through a queue, the driver's notifications
//! for it are off; they are turned on again (`enable_notification`, which also keeps
//! event-idx's `avail_event` current) only when the device runs out of buffers and must
//! wait for the driver, with a second look at the ring for buffers that arrived in
//! between. Interrupts are raised once per batch, and only if `needs_notification`
//! says the driver wants one.
//!
//! Receiving is driven from two sides: the event loop runs the rx queue when the host
//! backend becomes readable, and the driver notifies it when it adds buffers. A frame
//! read from the backend when the guest has no room for it waits in the device (one
//! frame) until the driver adds buffers.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET as ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueT, Writer};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{DeviceError, QueueContext, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice};

/// `VIRTIO_ID_NET`.
pub const VIRTIO_ID_NET: u32 = ID_NET;
/// Host-to-guest frames.
pub const RX_QUEUE: usize = 0;
/// Guest-to-host frames.
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Size of `virtio_net_hdr_v1` (with `num_buffers`), in front of every frame.
pub const NET_HDR_SIZE: usize = 12;
/// Largest Ethernet frame (without the virtio header) the device moves either way: a
/// 64 KiB segmentation-offload frame and its Ethernet header.
pub const MAX_FRAME_SIZE: usize = 65550;
/// The MTU the device reports (`VIRTIO_NET_F_MTU`); the host TAP should use the same.
pub const MTU: u16 = 1500;
/// An Ethernet header: a frame shorter than this is malformed.
const ETH_HLEN: usize = 14;
/// Offset of `flags` in the header.
const FLAGS_OFFSET: usize = 0;
/// Offset of `gso_type` in the header.
const GSO_TYPE_OFFSET: usize = 1;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// `VIRTIO_NET_F_CSUM`: the device takes frames with a partial checksum.
pub const F_CSUM: u64 = bit(VIRTIO_NET_F_CSUM);
/// `VIRTIO_NET_F_GUEST_CSUM`: the driver takes frames with a partial checksum.
pub const F_GUEST_CSUM: u64 = bit(VIRTIO_NET_F_GUEST_CSUM);
/// `VIRTIO_NET_F_GUEST_TSO4`: the driver takes TCP/IPv4 frames still to be segmented.
pub const F_GUEST_TSO4: u64 = bit(VIRTIO_NET_F_GUEST_TSO4);
/// `VIRTIO_NET_F_GUEST_TSO6`: the driver takes TCP/IPv6 frames still to be segmented.
pub const F_GUEST_TSO6: u64 = bit(VIRTIO_NET_F_GUEST_TSO6);
/// `VIRTIO_NET_F_GUEST_ECN`: ... with the ECN bit (not offered).
pub const F_GUEST_ECN: u64 = bit(VIRTIO_NET_F_GUEST_ECN);
/// `VIRTIO_NET_F_HOST_TSO4`: the device takes TCP/IPv4 frames still to be segmented.
pub const F_HOST_TSO4: u64 = bit(VIRTIO_NET_F_HOST_TSO4);
/// `VIRTIO_NET_F_HOST_TSO6`: the device takes TCP/IPv6 frames still to be segmented.
pub const F_HOST_TSO6: u64 = bit(VIRTIO_NET_F_HOST_TSO6);
/// `VIRTIO_NET_F_HOST_ECN`: ... with the ECN bit (not offered).
pub const F_HOST_ECN: u64 = bit(VIRTIO_NET_F_HOST_ECN);
/// `VIRTIO_NET_F_MRG_RXBUF`: an rx frame may span several rx chains.
pub const F_MRG_RXBUF: u64 = bit(VIRTIO_NET_F_MRG_RXBUF);

/// Every feature the device offers.
const OFFERED: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_MRG_RXBUF;

const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;

/// Whether `features` respect the feature dependencies of virtio 1.x 5.1.3.1 for the
/// offloads: guest TSO and ECN need guest checksumming (and ECN a TSO), host TSO and
/// ECN need host checksumming (and ECN a TSO).
pub fn features_consistent(features: u64) -> bool {
    let has = |f: u64| features & f != 0;
    let guest_tso = has(F_GUEST_TSO4) || has(F_GUEST_TSO6);
    let host_tso = has(F_HOST_TSO4) || has(F_HOST_TSO6);
    (!guest_tso || has(F_GUEST_CSUM))
        && (!has(F_GUEST_ECN) || guest_tso)
        && (!host_tso || has(F_CSUM))
        && (!has(F_HOST_ECN) || host_tso)
}

/// What the host may hand the guest on rx, from the features the driver accepted: a
/// partial checksum (`GUEST_CSUM`), and TCP frames still to be segmented (`GUEST_TSO4`,
/// `GUEST_TSO6`, with the ECN bit for `GUEST_ECN`), each only where its dependencies
/// were accepted too.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestOffloads {
    /// Frames may carry a partial checksum (`NEEDS_CSUM`) for the guest to finish.
    pub csum: bool,
    /// TCP/IPv4 frames may be up to 64 KiB, to be segmented by the guest.
    pub tso4: bool,
    /// TCP/IPv6 frames may be up to 64 KiB, to be segmented by the guest.
    pub tso6: bool,
    /// Such frames may have the ECN bit set.
    pub tso_ecn: bool,
}

impl GuestOffloads {
    /// The rx offloads that `features` (as the driver accepted them) allow.
    pub fn from_features(features: u64) -> Self {
        let csum = features & F_GUEST_CSUM != 0;
        let tso4 = csum && features & F_GUEST_TSO4 != 0;
        let tso6 = csum && features & F_GUEST_TSO6 != 0;
        Self {
            csum,
            tso4,
            tso6,
            tso_ecn: (tso4 || tso6) && features & F_GUEST_ECN != 0,
        }
    }

    /// Whether none is allowed.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// Errors of this module: MAC addresses that cannot be a NIC's.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not six hex bytes separated by colons.
    #[error("Invalid MAC address {0:?}: use six hex bytes such as 02:00:00:00:00:01")]
    MacSyntax(String),
    /// A multicast (or broadcast) address.
    #[error("The MAC address {0} is multicast; a network interface needs a unicast address")]
    MacMulticast(MacAddr),
    /// All zeros.
    #[error("The MAC address 00:00:00:00:00:00 cannot be used")]
    MacZero,
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// The address with these bytes.
    pub const fn new(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }

    /// Its bytes, first octet first.
    pub const fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// A locally administered unicast address derived from `seed` (such as the TAP's
    /// name): the same seed always gives the same address.
    pub fn derived_from(seed: &str) -> Self {
        // FNV-1a: stable across Rust versions, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in b"arca-net:".iter().chain(seed.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let h = hash.to_le_bytes();
        // Bit 1 of the first octet: locally administered; bit 0 clear: unicast.
        Self([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = NetError;

    /// Parses `AA:BB:CC:DD:EE:FF` (either case); refuses multicast and all-zero
    /// addresses, which no interface may have.
    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = || NetError::MacSyntax(s.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = MacAddr(bytes);
        if bytes[0] & 1 != 0 {
            return Err(NetError::MacMulticast(mac));
        }
        if bytes == [0; 6] {
            return Err(NetError::MacZero);
        }
        Ok(mac)
    }
}

/// The host side of a network device: where tx frames go and rx frames come from. Both
/// calls move one whole packet: a `virtio_net_hdr_v1` ([`NET_HDR_SIZE`] bytes, in the
/// layout of a TAP with `IFF_VNET_HDR` and a header size of 12) followed by one
/// Ethernet frame. Neither may block.
pub trait NetBackend: Send {
    /// Sends one header and frame to the host.
    fn send(&mut self, packet: &[u8]) -> io::Result<()>;
    /// Reads the next header and frame from the host into `buf` and returns their
    /// length; `ErrorKind::WouldBlock` when there is none. A packet longer than `buf`
    /// may be cut short; the device passes a buffer one byte longer than a header and
    /// [`MAX_FRAME_SIZE`], so a packet that fills it is too long and is dropped. The
    /// header's `num_buffers` need not be set.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// From now on, hand the guest only frames it can take with `offloads` (checksums
    /// left partial, TCP frames not yet segmented): called when the driver activates
    /// the device, and with none at reset. A backend that cannot offload refuses any.
    fn set_offloads(&mut self, offloads: GuestOffloads) -> io::Result<()> {
        if offloads.is_none() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this network backend cannot pass offloads to the guest",
            ))
        }
    }
}

/// Frame counters, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
}

/// A snapshot of [`NetCounters`]. With segmentation offloads, a "frame" is what crossed
/// the device in one piece: a TSO frame of up to 64 KiB counts once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (without headers).
    pub rx_bytes: u64,
    /// Frames from the host that were dropped: too long or too short, a header the
    /// driver could not read, no room in the guest's buffers, a buffer outside guest
    /// memory, or a backend read error.
    pub rx_dropped: u64,
    /// Frames sent to the host.
    pub tx_frames: u64,
    /// Bytes of those frames (without headers).
    pub tx_bytes: u64,
    /// Guest frames that were dropped: malformed chains, headers asking for an offload
    /// the driver did not negotiate, or refused by the backend.
    pub tx_dropped: u64,
}

impl NetCounters {
    /// The counters now.
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The virtio-net device.
pub struct Net {
    mac: MacAddr,
    backend: Box<dyn NetBackend>,
    counters: Arc<NetCounters>,
    /// The features the driver accepted (0 until it activates the device).
    acked: u64,
    /// Header and frame of the tx chain being read.
    tx_buf: Vec<u8>,
    /// Header and frame read from the backend (one byte longer than the largest).
    rx_buf: Vec<u8>,
    /// Length (header included) of the packet in `rx_buf` that waits for guest buffers.
    rx_pending: Option<usize>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("acked", &format_args!("{:#x}", self.acked))
            .field("rx_pending", &self.rx_pending)
            .finish_non_exhaustive()
    }
}

/// Why a tx chain was dropped.
#[derive(Debug, PartialEq, Eq)]
enum Malformed {
    /// A descriptor the device may only write.
    WriteOnly,
    /// A buffer outside guest memory.
    OutOfMemory,
    /// The chain loops, is longer than the queue, or links past the table.
    Unterminated,
    /// More than a header and [`MAX_FRAME_SIZE`] bytes.
    TooLong,
    /// Less than a header and an Ethernet header.
    TooShort,
    /// The header asks for an offload the driver did not negotiate.
    Offload,
}

/// What became of one rx packet.
#[derive(Debug, PartialEq, Eq)]
enum Rx {
    /// Delivered, or dropped with the buffers taken for it returned empty: used
    /// entries were added.
    Used,
    /// Dropped without touching the ring.
    Skipped,
    /// The ring has too few buffers for it yet: it waits, nothing was taken.
    Wait,
}

impl Net {
    /// A device with address `mac` whose frames go to and come from `backend`.
    pub fn new(mac: MacAddr, backend: Box<dyn NetBackend>) -> Self {
        Self {
            mac,
            backend,
            counters: Arc::default(),
            acked: 0,
            tx_buf: Vec::with_capacity(NET_HDR_SIZE + MAX_FRAME_SIZE),
            rx_buf: vec![0; NET_HDR_SIZE + MAX_FRAME_SIZE + 1],
            rx_pending: None,
        }
    }

    /// The device's frame counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    fn acked(&self, feature: u64) -> bool {
        self.acked & feature != 0
    }

    /// Sends every frame the guest queued on tx to the backend, header included.
    pub fn process_tx(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(TX_QUEUE).filter(|q| q.ready()) else {
            return Ok(());
        };
        queue
            .disable_notification(mem)
            .map_err(DeviceError::Queue)?;
        let mut used = false;
        while let Some(chain) = next_chain(queue, mem)? {
            let head = chain.head_index();
            match self
                .read_tx_chain(chain, mem)
                .and_then(|()| self.check_tx_header())
            {
                Ok(()) => match self.backend.send(&self.tx_buf) {
                    Ok(()) => {
                        let len = self.tx_buf.len() - NET_HDR_SIZE;
                        NetCounters::add(&self.counters.tx_frames, 1);
                        NetCounters::add(&self.counters.tx_bytes, len as u64);
                    }
                    // The host could not take it (interface down, queue full, a header
                    // it found invalid): a network may lose frames, the guest's
                    // protocols recover.
                    Err(_) => NetCounters::add(&self.counters.tx_dropped, 1),
                },
                Err(_) => NetCounters::add(&self.counters.tx_dropped, 1),
            }
            queue.add_used(mem, head, 0).map_err(DeviceError::Queue)?;
            used = true;
        }
        if used {
            ctx.notify_used(TX_QUEUE);
        }
        Ok(())
    }

    /// Copies header and frame of a tx chain into `tx_buf`, checking every descriptor.
    fn read_tx_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), Malformed> {
        self.tx_buf.clear();
        let mut linked = false;
        for desc in chain {
            linked = desc.has_next();
            if desc.is_write_only() {
                return Err(Malformed::WriteOnly);
            }
            let start = self.tx_buf.len();
            let len = desc.len() as usize;
            if len > NET_HDR_SIZE + MAX_FRAME_SIZE - start {
                return Err(Malformed::TooLong);
            }
            self.tx_buf.resize(start + len, 0);
            mem.read_slice(&mut self.tx_buf[start..], desc.addr())
                .map_err(|_| Malformed::OutOfMemory)?;
        }
        // The chain iterator stops after queue-size descriptors, or at a link outside
        // the table: a last descriptor that still links somewhere ended neither way.
        if linked {
            return Err(Malformed::Unterminated);
        }
        if self.tx_buf.len() < NET_HDR_SIZE + ETH_HLEN {
            return Err(Malformed::TooShort);
        }
        Ok(())
    }

    /// Refuses a tx header that uses what the driver did not negotiate: a partial
    /// checksum without `CSUM`, segmentation of a kind without its `HOST_TSO*` (ECN and
    /// UDP segmentation are never offered), or flags a driver may not set on tx. The
    /// rest of the header (lengths and offsets) is the host kernel's to check, as for
    /// any TAP writer.
    fn check_tx_header(&self) -> Result<(), Malformed> {
        let flags = self.tx_buf[FLAGS_OFFSET];
        let flags_ok = flags == 0 || (flags == NEEDS_CSUM && self.acked(F_CSUM));
        let gso_ok = match self.tx_buf[GSO_TYPE_OFFSET] {
            GSO_NONE => true,
            GSO_TCPV4 => self.acked(F_HOST_TSO4),
            GSO_TCPV6 => self.acked(F_HOST_TSO6),
            _ => false,
        };
        if flags_ok && gso_ok {
            Ok(())
        } else {
            Err(Malformed::Offload)
        }
    }

    /// Delivers packets from the backend into guest rx buffers while both exist. The
    /// event loop runs this (through the transport's rx notification) when the backend
    /// becomes readable; the driver's rx notifications run it when buffers arrive.
    pub fn process_rx(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(RX_QUEUE).filter(|q| q.ready()) else {
            return Ok(());
        };
        queue
            .disable_notification(mem)
            .map_err(DeviceError::Queue)?;
        let mut used = false;
        loop {
            let total = match self.rx_pending.take() {
                Some(total) => total,
                None => match self.read_packet() {
                    Some(total) => total,
                    None => break,
                },
            };
            let outcome = if self.acked(F_MRG_RXBUF) {
                self.deliver_merged(queue, mem, total)?
            } else {
                self.deliver_single(queue, mem, total)?
            };
            match outcome {
                Rx::Used => used = true,
                Rx::Skipped => {}
                // No room: the packet waits, and the driver's next rx notification
                // (enabled by next_chain) brings it in.
                Rx::Wait => {
                    self.rx_pending = Some(total);
                    break;
                }
            }
        }
        if used {
            ctx.notify_used(RX_QUEUE);
        }
        Ok(())
    }

    /// Reads the next header and frame from the backend into `rx_buf` and makes the
    /// header fit what the driver negotiated; returns their length, `None` when there
    /// is nothing to read.
    fn read_packet(&mut self) -> Option<usize> {
        const SIZES: std::ops::RangeInclusive<usize> =
            NET_HDR_SIZE + ETH_HLEN..=NET_HDR_SIZE + MAX_FRAME_SIZE;
        loop {
            match self.backend.recv(&mut self.rx_buf) {
                Ok(len) if SIZES.contains(&len) && self.fix_rx_header() => return Some(len),
                Ok(_) => NetCounters::add(&self.counters.rx_dropped, 1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => {
                    NetCounters::add(&self.counters.rx_dropped, 1);
                    return None;
                }
            }
        }
    }

    /// Checks the header in `rx_buf` against the driver's features: flags other than a
    /// partial or validated checksum are cleared, and all of them without
    /// `GUEST_CSUM` (virtio 1.x 5.1.6.4.1); a partial checksum the driver cannot finish,
    /// or a segmentation type it did not accept, makes the frame unusable (`false`).
    /// The backend was told which offloads to use, so this only catches frames queued
    /// before that, or a backend that ignored it.
    fn fix_rx_header(&mut self) -> bool {
        let flags = self.rx_buf[FLAGS_OFFSET];
        let gso_ok = match self.rx_buf[GSO_TYPE_OFFSET] {
            GSO_NONE => true,
            GSO_TCPV4 => self.acked(F_GUEST_TSO4),
            GSO_TCPV6 => self.acked(F_GUEST_TSO6),
            _ => false,
        };
        if self.acked(F_GUEST_CSUM) {
            self.rx_buf[FLAGS_OFFSET] = flags & (NEEDS_CSUM | DATA_VALID);
        } else if flags & NEEDS_CSUM != 0 {
            return false;
        } else {
            self.rx_buf[FLAGS_OFFSET] = 0;
        }
        gso_ok
    }

    /// Sets `num_buffers` in the header in `rx_buf`.
    fn set_num_buffers(&mut self, n: u16) {
        self.rx_buf[NUM_BUFFERS_OFFSET..NET_HDR_SIZE].copy_from_slice(&n.to_le_bytes());
    }

    /// Without mergeable buffers: the `total`-byte packet in `rx_buf` goes into one
    /// chain whole, or the chain is returned empty and the packet dropped.
    fn deliver_single(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        total: usize,
    ) -> Result<Rx, DeviceError> {
        let Some(chain) = next_chain(queue, mem)? else {
            return Ok(Rx::Wait);
        };
        let head = chain.head_index();
        self.set_num_buffers(1);
        let delivered = match Writer::new(mem, chain) {
            // The whole packet fits, or none of it is written.
            Ok(mut writer) if writer.available_bytes() >= total => {
                writer.write_all(&self.rx_buf[..total]).is_ok()
            }
            // Too small, or outside guest memory.
            _ => false,
        };
        let written = if delivered {
            self.count_delivered(total);
            total as u32
        } else {
            NetCounters::add(&self.counters.rx_dropped, 1);
            0
        };
        queue
            .add_used(mem, head, written)
            .map_err(DeviceError::Queue)?;
        Ok(Rx::Used)
    }

    /// With mergeable buffers: the `total`-byte packet in `rx_buf` is spread over as
    /// many chains as it needs, each filled in turn and used with the length written
    /// to it, the first one's header saying how many. Chains are taken only once
    /// enough are there: otherwise those taken are put back and the packet waits. A
    /// chain that cannot be used (outside guest memory, smaller than a header, which
    /// the driver must not offer) drops the packet, and every chain taken for it is
    /// returned empty, in order, so that no used entry falls between a packet's
    /// chains. A packet larger than the whole ring is dropped, the ring untouched.
    fn deliver_merged(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        total: usize,
    ) -> Result<Rx, DeviceError> {
        let mut chains: Vec<(u16, Writer<'_>)> = Vec::new();
        let mut room = 0usize;
        // Where the ring stood, to put back chains taken for a packet that waits.
        let start = queue.next_avail();
        while room < total {
            if chains.len() >= usize::from(queue.size()) {
                // Even a full ring does not hold it.
                queue.set_next_avail(start);
                NetCounters::add(&self.counters.rx_dropped, 1);
                return Ok(Rx::Skipped);
            }
            let Some(chain) = next_chain(queue, mem)? else {
                queue.set_next_avail(start);
                return Ok(Rx::Wait);
            };
            let head = chain.head_index();
            match Writer::new(mem, chain) {
                Ok(writer) if writer.available_bytes() >= NET_HDR_SIZE => {
                    room = room.saturating_add(writer.available_bytes());
                    chains.push((head, writer));
                }
                _ => {
                    for head in chains.iter().map(|&(h, _)| h).chain([head]) {
                        queue.add_used(mem, head, 0).map_err(DeviceError::Queue)?;
                    }
                    NetCounters::add(&self.counters.rx_dropped, 1);
                    return Ok(Rx::Used);
                }
            }
        }
        // At most a queue's worth of chains: the count fits num_buffers.
        self.set_num_buffers(chains.len() as u16);
        let mut offset = 0;
        let mut whole = true;
        for (head, mut writer) in chains {
            // Every chain but the last is filled; the last holds the rest (at least a
            // byte, or it would not have been taken).
            let n = writer.available_bytes().min(total - offset);
            whole &= writer.write_all(&self.rx_buf[offset..offset + n]).is_ok();
            queue
                .add_used(mem, head, n as u32)
                .map_err(DeviceError::Queue)?;
            offset += n;
        }
        if whole {
            self.count_delivered(total);
        } else {
            // Cannot happen: every buffer was resolved in guest memory above.
            NetCounters::add(&self.counters.rx_dropped, 1);
        }
        Ok(Rx::Used)
    }

    fn count_delivered(&self, total: usize) {
        NetCounters::add(&self.counters.rx_frames, 1);
        NetCounters::add(&self.counters.rx_bytes, (total - NET_HDR_SIZE) as u64);
    }
}

/// The next available chain of `queue`. When there is none, notifications are turned on
/// again (the device will wait for the driver), and the ring is looked at once more for
/// buffers added just before that.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, DeviceError> {
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        return Ok(Some(chain));
    }
    if !queue.enable_notification(mem).map_err(DeviceError::Queue)? {
        return Ok(None);
    }
    queue
        .disable_notification(mem)
        .map_err(DeviceError::Queue)?;
    match queue.pop_descriptor_chain(mem) {
        Some(chain) => Ok(Some(chain)),
        // The available index moved, yet nothing can be popped: it ran more than a
        // queue ahead. Going on would spin; the device needs a reset.
        None => Err(DeviceError::Protocol(
            "available ring index out of range".to_owned(),
        )),
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        OFFERED
    }

    fn accepts_features(&self, features: u64) -> bool {
        features_consistent(features)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio 1.x 5.1.4: mac[6] at 0, status (le16) at 6, max_virtqueue_pairs (le16)
        // at 8, mtu (le16) at 10.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac.bytes());
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&MTU.to_le_bytes());
        super::copy_config(&config, offset, data);
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        if !features_consistent(features) {
            return Err(DeviceError::Protocol(format!(
                "inconsistent virtio-net features {features:#x}"
            )));
        }
        self.backend
            .set_offloads(GuestOffloads::from_features(features))
            .map_err(DeviceError::Backend)?;
        self.acked = features;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        ctx: &mut QueueContext<'_>,
    ) -> Result<(), DeviceError> {
        match index {
            RX_QUEUE => self.process_rx(ctx),
            TX_QUEUE => self.process_tx(ctx),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        self.rx_pending = None;
        self.acked = 0;
        // Until the driver negotiates again nothing is read; should this fail, frames
        // with offloads the next driver does not take are dropped by fix_rx_header.
        let _ = self.backend.set_offloads(GuestOffloads::default());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;
    use crate::legacy::EventFdTrigger;
    use crate::virtio::Interrupt;
    use crate::virtio::mmio::tests::{memory, r, transport, w};

    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    /// Queue size in these tests.
    const SIZE: u16 = 16;
    const MAC: MacAddr = MacAddr::new([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);

    /// An in-memory host: packets (header and frame) sent, packets waiting to be
    /// received, and the offloads the device asked for.
    #[derive(Default, Clone)]
    struct Host {
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
        refuse_sends: Arc<Mutex<bool>>,
        offloads: Arc<Mutex<Vec<GuestOffloads>>>,
    }

    impl NetBackend for Host {
        fn send(&mut self, packet: &[u8]) -> io::Result<()> {
            if *self.refuse_sends.lock().unwrap() {
                return Err(io::Error::from_raw_os_error(5));
            }
            self.sent.lock().unwrap().push(packet.to_vec());
            Ok(())
        }

        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let packet = self
                .incoming
                .lock()
                .unwrap()
                .pop_front()
                .ok_or(io::ErrorKind::WouldBlock)?;
            let n = packet.len().min(buf.len());
            buf[..n].copy_from_slice(&packet[..n]);
            Ok(n)
        }

        fn set_offloads(&mut self, offloads: GuestOffloads) -> io::Result<()> {
            self.offloads.lock().unwrap().push(offloads);
            Ok(())
        }
    }

    impl Host {
        /// The frames sent, without their headers (which must be all zeros).
        fn sent(&self) -> Vec<Vec<u8>> {
            self.sent_packets()
                .into_iter()
                .map(|p| {
                    assert_eq!(p[..NET_HDR_SIZE], [0; NET_HDR_SIZE], "a plain header");
                    p[NET_HDR_SIZE..].to_vec()
                })
                .collect()
        }
        /// The packets sent, headers and frames.
        fn sent_packets(&self) -> Vec<Vec<u8>> {
            self.sent.lock().unwrap().clone()
        }
        /// A frame for the guest, after a zeroed header (as a TAP without offloads).
        fn push(&self, frame: Vec<u8>) {
            self.push_packet(&[0; NET_HDR_SIZE], &frame);
        }
        /// A frame for the guest after `header`.
        fn push_packet(&self, header: &[u8; NET_HDR_SIZE], frame: &[u8]) {
            let mut packet = header.to_vec();
            packet.extend_from_slice(frame);
            self.incoming.lock().unwrap().push_back(packet);
        }
        fn waiting(&self) -> usize {
            self.incoming.lock().unwrap().len()
        }
        fn offloads(&self) -> Vec<GuestOffloads> {
            self.offloads.lock().unwrap().clone()
        }
    }

    /// A `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
    /// csum_offset, num_buffers.
    fn header(flags: u8, gso_type: u8, fields: [u16; 5]) -> [u8; NET_HDR_SIZE] {
        let mut h = [0u8; NET_HDR_SIZE];
        h[0] = flags;
        h[1] = gso_type;
        for (i, v) in fields.iter().enumerate() {
            h[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// A test frame of `len` bytes: an Ethernet header and a counting payload.
    fn frame(len: usize, tag: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_add(tag)).collect()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// The driver's side of both queues, and the device. The rings are laid out by hand
    /// rather than with virtio-queue's `MockSplitQueue`, whose used ring overlaps the
    /// available ring's tail (and its `used_event`), which event-idx tests need intact.
    struct Driver<'m> {
        mem: &'m GuestMemoryMmap,
        next_desc: [u16; 2],
        queues: Vec<Queue>,
        interrupt: Interrupt,
        net: Net,
        host: Host,
    }

    /// Queue `q`'s descriptor table; the available ring is 0x100 above, the used ring
    /// 0x200 above.
    fn ring_base(q: usize) -> u64 {
        0x1000 * (q as u64 + 1)
    }

    fn avail_addr(q: usize) -> u64 {
        ring_base(q) + 0x100
    }

    fn used_addr(q: usize) -> u64 {
        ring_base(q) + 0x200
    }

    impl<'m> Driver<'m> {
        fn new(mem: &'m GuestMemoryMmap, event_idx: bool) -> Self {
            let queues = (0..2)
                .map(|q| {
                    let mut queue = Queue::new(SIZE).unwrap();
                    queue.set_size(SIZE);
                    let (d, a, u) = (ring_base(q), avail_addr(q), used_addr(q));
                    queue.set_desc_table_address(Some(d as u32), Some(0));
                    queue.set_avail_ring_address(Some(a as u32), Some(0));
                    queue.set_used_ring_address(Some(u as u32), Some(0));
                    queue.set_ready(true);
                    queue.set_event_idx(event_idx);
                    assert!(queue.is_valid(mem));
                    queue
                })
                .collect();
            let host = Host::default();
            let evt = EventFd::new(EFD_NONBLOCK).unwrap();
            Self {
                mem,
                next_desc: [0; 2],
                queues,
                interrupt: Interrupt::new(EventFdTrigger::new(evt)),
                net: Net::new(MAC, Box::new(host.clone())),
                host,
            }
        }

        fn u16_at(&self, at: u64) -> u16 {
            self.mem.read_obj(GuestAddress(at)).unwrap()
        }

        fn set_avail_idx(&self, q: usize, idx: u16) {
            self.mem
                .write_obj(idx, GuestAddress(avail_addr(q) + 2))
                .unwrap();
        }

        /// Offers a chain of (address, length, flags) buffers, linked in order.
        fn offer(&mut self, q: usize, bufs: &[(u64, u32, u16)]) -> u16 {
            let first = self.next_desc[q];
            let descs: Vec<_> = bufs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, flags))| {
                    let index = (first + i as u16) % SIZE;
                    let last = i + 1 == bufs.len();
                    let flags = if last { flags } else { flags | NEXT };
                    (index, desc(addr, len, flags, (index + 1) % SIZE))
                })
                .collect();
            self.offer_raw(q, &descs, first)
        }

        /// Offers descriptors exactly as given, with `head` as the chain's head.
        fn offer_raw(&mut self, q: usize, descs: &[(u16, RawDescriptor)], head: u16) -> u16 {
            for &(index, d) in descs {
                let at = ring_base(q) + 16 * u64::from(index);
                self.mem.write_obj(d, GuestAddress(at)).unwrap();
            }
            self.next_desc[q] = (self.next_desc[q] + descs.len() as u16) % SIZE;
            let idx = self.u16_at(avail_addr(q) + 2);
            let slot = avail_addr(q) + 4 + 2 * u64::from(idx % SIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.set_avail_idx(q, idx.wrapping_add(1));
            head
        }

        /// Offers a tx frame: a zeroed header buffer, then the frame.
        fn send(&mut self, frame: &[u8], at: u64) {
            self.send_with(&[0; NET_HDR_SIZE], frame, at);
        }

        /// Offers a tx frame: a buffer with `header`, then the frame.
        fn send_with(&mut self, header: &[u8; NET_HDR_SIZE], frame: &[u8], at: u64) {
            self.mem.write_slice(header, GuestAddress(at)).unwrap();
            let data = at + NET_HDR_SIZE as u64;
            self.mem.write_slice(frame, GuestAddress(data)).unwrap();
            self.offer(
                TX_QUEUE,
                &[(at, NET_HDR_SIZE as u32, 0), (data, frame.len() as u32, 0)],
            );
        }

        /// The driver accepts `features` and sets DRIVER_OK.
        fn activate(&mut self, features: u64) {
            self.net.activate(features).unwrap();
        }

        fn run(&mut self, q: usize) -> Result<(), DeviceError> {
            let mut ctx = QueueContext {
                queues: &mut self.queues,
                mem: self.mem,
                interrupt: &self.interrupt,
            };
            self.net.process_queue(q, &mut ctx)
        }

        /// The used entries of queue `q` so far, as (head, len).
        fn used(&self, q: usize) -> Vec<(u32, u32)> {
            (0..self.u16_at(used_addr(q) + 2))
                .map(|i| {
                    let at = used_addr(q) + 4 + 8 * u64::from(i % SIZE);
                    let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                    let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                    (id, len)
                })
                .collect()
        }

        /// The used ring's flags (`VRING_USED_F_NO_NOTIFY`).
        fn used_flags(&self, q: usize) -> u16 {
            self.u16_at(used_addr(q))
        }

        /// Whether an interrupt was raised since the last look.
        fn interrupted(&self) -> bool {
            let raised = self.interrupt.status() & 1 != 0;
            self.interrupt.ack(1);
            raised
        }

        /// Sets the driver's `used_event` for queue `q`.
        fn set_used_event(&self, q: usize, value: u16) {
            let at = avail_addr(q) + 4 + 2 * u64::from(SIZE);
            self.mem.write_obj(value, GuestAddress(at)).unwrap();
        }

        /// The device's `avail_event` for queue `q`.
        fn avail_event(&self, q: usize) -> u16 {
            self.u16_at(used_addr(q) + 4 + 8 * u64::from(SIZE))
        }

        fn stats(&self) -> NetStats {
            self.net.counters().snapshot()
        }

        fn read(&self, at: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0; len];
            self.mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
            buf
        }
    }

    const BUF: u64 = 0x10000;

    #[test]
    fn tx_frames_reach_the_backend_after_their_header() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        let first = frame(60, 1);
        d.send(&first, BUF);
        // Header and frame in one buffer work as well.
        let second = frame(1514, 2);
        let mut one = vec![0u8; NET_HDR_SIZE];
        one.extend_from_slice(&second);
        mem.write_slice(&one, GuestAddress(BUF + 0x1000)).unwrap();
        d.offer(TX_QUEUE, &[(BUF + 0x1000, one.len() as u32, 0)]);
        d.run(TX_QUEUE).unwrap();
        assert_eq!(d.host.sent(), vec![first, second]);
        assert_eq!(d.used(TX_QUEUE), vec![(0, 0), (2, 0)]);
        assert!(d.interrupted());
        let stats = d.stats();
        assert_eq!((stats.tx_frames, stats.tx_bytes), (2, 60 + 1514));
        assert_eq!(stats.tx_dropped, 0);
    }

    #[test]
    fn rx_frames_land_after_a_header_with_one_buffer() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        let f = frame(60, 7);
        d.host.push(f.clone());
        mem.write_slice(&[0xff; 100], GuestAddress(BUF)).unwrap();
        d.offer(RX_QUEUE, &[(BUF, 1526, WRITE)]);
        d.run(RX_QUEUE).unwrap();
        assert_eq!(d.used(RX_QUEUE), vec![(0, (NET_HDR_SIZE + 60) as u32)]);
        let mut header = [0u8; NET_HDR_SIZE];
        header[10] = 1;
        assert_eq!(d.read(BUF, NET_HDR_SIZE), header);
        assert_eq!(d.read(BUF + NET_HDR_SIZE as u64, 60), f);
        assert!(d.interrupted());
        // A chain of several writable buffers holds a frame across them.
        let g = frame(100, 9);
        d.host.push(g.clone());
        d.offer(
            RX_QUEUE,
            &[
                (BUF + 0x1000, 12, WRITE),
                (BUF + 0x2000, 50, WRITE),
                (BUF + 0x3000, 50, WRITE),
            ],
        );
        d.run(RX_QUEUE).unwrap();
        assert_eq!(d.used(RX_QUEUE)[1], (1, 112));
        let mut got = d.read(BUF + 0x2000, 50);
        got.extend(d.read(BUF + 0x3000, 50));
        assert_eq!(got, g);
        let stats = d.stats();
        assert_eq!(
            (stats.rx_frames, stats.rx_bytes, stats.rx_dropped),
            (2, 160, 0)
        );
    }

    #[test]
    fn a_frame_without_a_buffer_waits_for_the_driver() {
        for event_idx in [false, true] {
            let mem = memory();
            let mut d = Driver::new(&mem, event_idx);
            let (a, b) = (frame(60, 1), frame(70, 2));
            d.host.push(a.clone());
            d.host.push(b.clone());
            // The backend became readable, but the guest has no buffer: one frame is
            // taken and kept, the other stays with the host.
            d.run(RX_QUEUE).unwrap();
            assert_eq!(d.host.waiting(), 1);
            assert!(d.used(RX_QUEUE).is_empty());
            assert!(!d.interrupted());
            if event_idx {
                assert_eq!(
                    d.avail_event(RX_QUEUE),
                    0,
                    "asks to hear of the next buffer"
                );
            } else {
                assert_eq!(d.used_flags(RX_QUEUE), 0, "notifications on");
            }
            // The driver adds a buffer and notifies: the kept frame goes first, the next
            // one is read and waits again.
            d.offer(RX_QUEUE, &[(BUF, 1526, WRITE)]);
            d.run(RX_QUEUE).unwrap();
            assert_eq!(d.used(RX_QUEUE), vec![(0, 72)]);
            assert_eq!(d.read(BUF + NET_HDR_SIZE as u64, 60), a);
            assert_eq!(d.host.waiting(), 0);
            if event_idx {
                assert_eq!(d.avail_event(RX_QUEUE), 1);
            }
            d.offer(RX_QUEUE, &[(BUF + 0x1000, 1526, WRITE)]);
            d.run(RX_QUEUE).unwrap();
            assert_eq!(d.used(RX_QUEUE)[1], (1, 82));
            assert_eq!(d.read(BUF + 0x1000 + NET_HDR_SIZE as u64, 70), b);
            assert_eq!(d.stats().rx_frames, 2);
        }
    }

    #[test]
    fn rx_frames_that_do_not_fit_are_dropped_and_the_buffer_returned_empty() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        // Too small for header and frame: nothing is written, used length 0.
        d.host.push(frame(100, 1));
        mem.write_slice(&[0xee; 64], GuestAddress(BUF)).unwrap();
        d.offer(RX_QUEUE, &[(BUF, 64, WRITE)]);
        // Outside guest memory.
        d.host.push(frame(100, 2));
        d.offer(RX_QUEUE, &[(1 << 40, 2048, WRITE)]);
        // Longer than any frame may be, and shorter than an Ethernet header.
        d.host.push(frame(MAX_FRAME_SIZE + 1, 3));
        d.host.push(frame(10, 3));
        // Then a good frame into a good buffer.
        let good = frame(60, 4);
        d.host.push(good.clone());
        d.offer(RX_QUEUE, &[(BUF + 0x1000, 1526, WRITE)]);
        d.run(RX_QUEUE).unwrap();
        assert_eq!(d.used(RX_QUEUE), vec![(0, 0), (1, 0), (2, 72)]);
        assert_eq!(d.read(BUF, 64), vec![0xee; 64], "nothing half-written");
        assert_eq!(d.read(BUF + 0x1000 + NET_HDR_SIZE as u64, 60), good);
        let stats = d.stats();
        assert_eq!((stats.rx_frames, stats.rx_dropped), (1, 4));
    }

    #[test]
    fn malformed_tx_chains_are_dropped_and_the_queue_keeps_working() {
        let hdr = NET_HDR_SIZE as u32;
        let max = (NET_HDR_SIZE + MAX_FRAME_SIZE) as u32;
        // (name, descriptors as (index, descriptor), head)
        type Case = (&'static str, Vec<(u16, RawDescriptor)>);
        let cases: Vec<Case> = vec![
            ("shorter than a header", vec![(0, desc(BUF, 8, 0, 0))]),
            ("header only", vec![(0, desc(BUF, hdr, 0, 0))]),
            (
                "write-only descriptor",
                vec![
                    (0, desc(BUF, hdr, NEXT, 1)),
                    (1, desc(BUF + 0x100, 60, WRITE, 0)),
                ],
            ),
            (
                "buffer outside guest memory",
                vec![(0, desc(BUF, hdr, NEXT, 1)), (1, desc(1 << 40, 60, 0, 0))],
            ),
            (
                "buffer running off the end of memory",
                vec![(0, desc(0xf_ff00, 0x200, 0, 0))],
            ),
            (
                "looping chain",
                vec![
                    (0, desc(BUF, hdr, NEXT, 1)),
                    (1, desc(BUF + 0x100, 60, NEXT, 0)),
                ],
            ),
            (
                "link past the descriptor table",
                vec![
                    (0, desc(BUF, hdr, NEXT, 1)),
                    (1, desc(BUF + 0x100, 60, NEXT, 200)),
                ],
            ),
            ("oversized frame", vec![(0, desc(BUF, max + 1, 0, 0))]),
            (
                "oversized over several buffers",
                vec![(0, desc(BUF, max, NEXT, 1)), (1, desc(BUF, 1, 0, 0))],
            ),
            ("giant length", vec![(0, desc(BUF, u32::MAX, 0, 0))]),
        ];
        for (name, descs) in cases {
            let mem = memory();
            let mut d = Driver::new(&mem, false);
            d.offer_raw(TX_QUEUE, &descs, 0);
            // A good frame behind it still goes out.
            let good = frame(60, 5);
            d.next_desc[TX_QUEUE] = 4;
            d.send(&good, BUF + 0x4_0000);
            d.run(TX_QUEUE).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(d.host.sent(), vec![good], "{name}");
            assert_eq!(d.used(TX_QUEUE), vec![(0, 0), (4, 0)], "{name}");
            let stats = d.stats();
            assert_eq!((stats.tx_frames, stats.tx_dropped), (1, 1), "{name}");
        }
    }

    #[test]
    fn the_largest_frame_is_sent() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        let big = frame(MAX_FRAME_SIZE, 3);
        d.send(&big, BUF);
        d.run(TX_QUEUE).unwrap();
        assert_eq!(d.host.sent(), vec![big]);
    }

    #[test]
    fn frames_the_backend_refuses_are_counted_and_the_queue_goes_on() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        *d.host.refuse_sends.lock().unwrap() = true;
        d.send(&frame(60, 1), BUF);
        d.run(TX_QUEUE).unwrap();
        assert_eq!(d.used(TX_QUEUE).len(), 1);
        assert_eq!(d.stats().tx_dropped, 1);
        *d.host.refuse_sends.lock().unwrap() = false;
        d.send(&frame(60, 2), BUF + 0x1000);
        d.run(TX_QUEUE).unwrap();
        assert_eq!(d.host.sent().len(), 1);
    }

    #[test]
    fn event_idx_interrupts_only_when_the_driver_asks() {
        let mem = memory();
        let mut d = Driver::new(&mem, true);
        // The driver wants an interrupt once the used index passes 3 (the 4th entry).
        d.set_used_event(TX_QUEUE, 3);
        d.send(&frame(60, 1), BUF);
        d.run(TX_QUEUE).unwrap();
        assert_eq!(d.host.sent().len(), 1);
        assert!(!d.interrupted(), "used_event 3 not reached");
        // Notifications are back on from the next available entry.
        assert_eq!(d.avail_event(TX_QUEUE), 1);
        for i in 0..3 {
            d.send(&frame(60, i), BUF + 0x1000 * (u64::from(i) + 1));
        }
        d.run(TX_QUEUE).unwrap();
        assert_eq!(d.host.sent().len(), 4);
        assert!(d.interrupted(), "used index went past used_event");
        assert_eq!(d.avail_event(TX_QUEUE), 4);
        // Without event-idx every batch interrupts.
        let mut d = Driver::new(&mem, false);
        d.set_used_event(TX_QUEUE, 3);
        d.send(&frame(60, 1), BUF);
        d.run(TX_QUEUE).unwrap();
        assert!(d.interrupted());
        // Notifications were off while draining and are on again now.
        assert_eq!(d.used_flags(TX_QUEUE), 0);
    }

    #[test]
    fn an_avail_index_far_ahead_needs_a_reset_instead_of_spinning() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        d.set_avail_idx(TX_QUEUE, 100);
        assert!(matches!(d.run(TX_QUEUE), Err(DeviceError::Protocol(_))));
        d.set_avail_idx(RX_QUEUE, 100);
        d.host.push(frame(60, 1));
        assert!(matches!(d.run(RX_QUEUE), Err(DeviceError::Protocol(_))));
    }

    #[test]
    fn reset_forgets_a_waiting_frame() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        d.host.push(frame(60, 1));
        d.run(RX_QUEUE).unwrap();
        assert!(d.net.rx_pending.is_some());
        d.net.reset();
        d.offer(RX_QUEUE, &[(BUF, 1526, WRITE)]);
        d.run(RX_QUEUE).unwrap();
        assert!(d.used(RX_QUEUE).is_empty());
    }

    #[test]
    fn queues_that_are_not_ready_are_left_alone() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        d.queues[RX_QUEUE].set_ready(false);
        d.host.push(frame(60, 1));
        d.run(RX_QUEUE).unwrap();
        assert_eq!(d.host.waiting(), 1, "nothing read for a queue not in use");
    }

    #[test]
    fn config_space_holds_mac_status_pairs_and_mtu() {
        let (mut t, _) = transport(Box::new(Net::new(MAC, Box::new(Host::default()))));
        assert_eq!(r(&mut t, 0x8), VIRTIO_ID_NET);
        w(&mut t, 0x14, 0);
        let low = r(&mut t, 0x10);
        for bit in [VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS] {
            assert_ne!(low & (1 << bit), 0, "feature {bit}");
        }
        assert_ne!(low & (1 << 29), 0, "event-idx");
        for f in [
            F_CSUM,
            F_GUEST_CSUM,
            F_GUEST_TSO4,
            F_GUEST_TSO6,
            F_HOST_TSO4,
            F_HOST_TSO6,
            F_MRG_RXBUF,
        ] {
            assert_ne!(u64::from(low) & f, 0, "offload {f:#x}");
        }
        let not_offered = F_GUEST_ECN | F_HOST_ECN | 1 << 10 | 1 << 14 | 1 << 17 | 1 << 22;
        assert_eq!(
            u64::from(low) & not_offered,
            0,
            "no ECN, UFO, control queue or MQ"
        );
        let mut mac = [0u8; 6];
        crate::bus::BusDevice::read(&mut t, 0x100, &mut mac);
        assert_eq!(mac, MAC.bytes());
        let mut field = [0u8; 2];
        crate::bus::BusDevice::read(&mut t, 0x106, &mut field);
        assert_eq!(u16::from_le_bytes(field), 1, "link up");
        crate::bus::BusDevice::read(&mut t, 0x108, &mut field);
        assert_eq!(u16::from_le_bytes(field), 1, "one queue pair");
        crate::bus::BusDevice::read(&mut t, 0x10a, &mut field);
        assert_eq!(u16::from_le_bytes(field), MTU);
        assert_eq!(r(&mut t, 0x10c), 0, "nothing beyond");
    }

    /// Every offload the device offers, accepted.
    const ALL: u64 = OFFERED;

    #[test]
    fn tx_headers_pass_through_unchanged() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        d.activate(ALL);
        // A 40 KiB TCP/IPv4 frame for the host to segment, its checksum left partial.
        let tso = header(NEEDS_CSUM, GSO_TCPV4, [66, 1448, 34, 16, 0]);
        let big = frame(40_000, 1);
        d.send_with(&tso, &big, BUF);
        // IPv6 as well, and a frame with only a partial checksum.
        let tso6 = header(NEEDS_CSUM, GSO_TCPV6, [86, 1428, 54, 16, 0]);
        d.send_with(&tso6, &frame(20_000, 2), BUF + 0x1_0000);
        let csum = header(NEEDS_CSUM, GSO_NONE, [0, 0, 34, 6, 0]);
        d.send_with(&csum, &frame(1000, 3), BUF + 0x2_0000);
        d.run(TX_QUEUE).unwrap();
        let sent = d.host.sent_packets();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0][..NET_HDR_SIZE], tso, "header intact");
        assert_eq!(sent[0][NET_HDR_SIZE..], big, "frame intact");
        assert_eq!(sent[1][..NET_HDR_SIZE], tso6);
        assert_eq!(sent[2][..NET_HDR_SIZE], csum);
        let stats = d.stats();
        assert_eq!((stats.tx_frames, stats.tx_bytes), (3, 61_000));
        // Header and frame in a single buffer go through as they are too.
        let mut one = tso.to_vec();
        one.extend_from_slice(&frame(3000, 4));
        mem.write_slice(&one, GuestAddress(BUF + 0x3_0000)).unwrap();
        d.offer(TX_QUEUE, &[(BUF + 0x3_0000, one.len() as u32, 0)]);
        d.run(TX_QUEUE).unwrap();
        assert_eq!(d.host.sent_packets()[3], one);
    }

    #[test]
    fn tx_headers_asking_for_offloads_not_negotiated_are_dropped() {
        let plain = [0u8; NET_HDR_SIZE];
        let csum = header(NEEDS_CSUM, GSO_NONE, [0, 0, 34, 16, 0]);
        let tso4 = header(NEEDS_CSUM, GSO_TCPV4, [66, 1448, 34, 16, 0]);
        let tso6 = header(NEEDS_CSUM, GSO_TCPV6, [86, 1428, 54, 16, 0]);
        let ecn = header(NEEDS_CSUM, GSO_TCPV4 | 0x80, [66, 1448, 34, 16, 0]);
        let udp = header(NEEDS_CSUM, 3, [42, 1472, 34, 6, 0]);
        let udp_l4 = header(NEEDS_CSUM, 5, [42, 1472, 34, 6, 0]);
        let data_valid = header(DATA_VALID, GSO_NONE, [0; 5]);
        let unknown_flag = header(0x80, GSO_NONE, [0; 5]);
        // (features accepted, header, goes out)
        let cases: Vec<(u64, [u8; NET_HDR_SIZE], bool)> = vec![
            (0, plain, true),
            (0, csum, false),
            (0, tso4, false),
            (F_CSUM, csum, true),
            (F_CSUM, tso4, false),
            (F_CSUM | F_HOST_TSO4, tso4, true),
            (F_CSUM | F_HOST_TSO4, tso6, false),
            (F_CSUM | F_HOST_TSO6, tso6, true),
            (F_CSUM | F_HOST_TSO6, tso4, false),
            (ALL, ecn, false),
            (ALL, udp, false),
            (ALL, udp_l4, false),
            (ALL, data_valid, false),
            (ALL, unknown_flag, false),
            (ALL & !F_CSUM & !F_HOST_TSO4 & !F_HOST_TSO6, csum, false),
        ];
        for (i, (features, hdr, goes)) in cases.into_iter().enumerate() {
            let mem = memory();
            let mut d = Driver::new(&mem, false);
            d.activate(VIRTIO_F_VERSION_1 | features);
            d.send_with(&hdr, &frame(2000, 1), BUF);
            // A plain frame behind it goes out either way.
            d.send(&frame(60, 2), BUF + 0x1_0000);
            d.run(TX_QUEUE).unwrap();
            let sent = d.host.sent_packets();
            assert_eq!(sent.len(), if goes { 2 } else { 1 }, "case {i}");
            if goes {
                assert_eq!(sent[0][..NET_HDR_SIZE], hdr, "case {i}");
            }
            assert_eq!(d.stats().tx_dropped, u64::from(!goes), "case {i}");
            assert_eq!(d.used(TX_QUEUE).len(), 2, "case {i}: both chains used");
        }
    }

    /// Offers `n` rx chains of one `len`-byte buffer each, 4 KiB apart from `at`.
    fn offer_rx(d: &mut Driver<'_>, at: u64, n: u64, len: u32) {
        for i in 0..n {
            d.offer(RX_QUEUE, &[(at + 0x1000 * i, len, WRITE)]);
        }
    }

    #[test]
    fn a_large_rx_frame_spreads_over_merged_buffers() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        d.activate(ALL);
        // A 40 KiB TCP frame the guest segments (or rather: takes as it is).
        let tso = header(NEEDS_CSUM | DATA_VALID, GSO_TCPV4, [66, 1448, 34, 16, 0]);
        let big = frame(40_000, 5);
        d.host.push_packet(&tso, &big);
        let small = frame(60, 6);
        d.host.push(small.clone());
        mem.write_slice(&[0xee; 0x1000 * 12], GuestAddress(BUF))
            .unwrap();
        offer_rx(&mut d, BUF, 12, 4096);
        d.run(RX_QUEUE).unwrap();
        // 12 + 40000 bytes: nine full chains and 3148 bytes in the tenth; the small
        // frame has the eleventh to itself.
        let mut want: Vec<(u32, u32)> = (0..9).map(|i| (i, 4096)).collect();
        want.push((9, 3148));
        want.push((10, 72));
        assert_eq!(d.used(RX_QUEUE), want);
        let mut expected_hdr = tso;
        expected_hdr[NUM_BUFFERS_OFFSET] = 10;
        assert_eq!(d.read(BUF, NET_HDR_SIZE), expected_hdr, "num_buffers 10");
        let mut got = d.read(BUF, 4096)[NET_HDR_SIZE..].to_vec();
        for i in 1..9 {
            got.extend(d.read(BUF + 0x1000 * i, 4096));
        }
        got.extend(d.read(BUF + 0x9000, 3148));
        assert_eq!(got, big);
        assert_eq!(d.read(BUF + 0x9000 + 3148, 4), [0xee; 4], "nothing beyond");
        let mut one = [0u8; NET_HDR_SIZE];
        one[NUM_BUFFERS_OFFSET] = 1;
        assert_eq!(d.read(BUF + 0xa000, NET_HDR_SIZE), one);
        assert_eq!(d.read(BUF + 0xa000 + NET_HDR_SIZE as u64, 60), small);
        assert!(d.interrupted());
        let stats = d.stats();
        assert_eq!(
            (stats.rx_frames, stats.rx_bytes, stats.rx_dropped),
            (2, 40_060, 0)
        );
    }

    #[test]
    fn a_merged_rx_frame_waits_until_enough_buffers_are_there() {
        for event_idx in [false, true] {
            let mem = memory();
            let mut d = Driver::new(&mem, event_idx);
            d.activate(ALL);
            let big = frame(40_000, 7);
            d.host.push(big.clone());
            // Five chains are not enough: none is used, the frame waits.
            offer_rx(&mut d, BUF, 5, 4096);
            d.run(RX_QUEUE).unwrap();
            assert!(d.used(RX_QUEUE).is_empty(), "no partial frame");
            assert!(d.net.rx_pending.is_some());
            assert!(!d.interrupted());
            if event_idx {
                assert_eq!(
                    d.avail_event(RX_QUEUE),
                    5,
                    "asks to hear of the next buffer"
                );
            } else {
                assert_eq!(d.used_flags(RX_QUEUE), 0, "notifications on");
            }
            // A backend edge in between changes nothing.
            d.run(RX_QUEUE).unwrap();
            assert!(d.used(RX_QUEUE).is_empty());
            // Five more: the frame goes into the first ten, in order.
            offer_rx(&mut d, BUF + 0x5000, 5, 4096);
            d.run(RX_QUEUE).unwrap();
            let used = d.used(RX_QUEUE);
            let heads: Vec<u32> = used.iter().map(|&(h, _)| h).collect();
            assert_eq!(heads, (0..10).collect::<Vec<_>>());
            assert_eq!(used.iter().map(|&(_, l)| l).sum::<u32>(), 40_012);
            assert_eq!(d.read(BUF + NET_HDR_SIZE as u64, 100), big[..100]);
            assert_eq!(
                d.read(BUF + 0x9000, 3148)[3148 - 100..],
                big[40_000 - 100..]
            );
            assert_eq!(
                u16::from_le_bytes([d.read(BUF + 10, 2)[0], d.read(BUF + 11, 1)[0]]),
                10
            );
            assert!(d.interrupted());
            assert!(d.net.rx_pending.is_none());
        }
    }

    #[test]
    fn without_mergeable_buffers_a_frame_takes_one_chain_or_is_dropped() {
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        d.activate(ALL & !F_MRG_RXBUF);
        // A frame larger than the chain is dropped as before, not spread.
        d.host.push(frame(3000, 1));
        offer_rx(&mut d, BUF, 2, 1526);
        d.run(RX_QUEUE).unwrap();
        // The next frame went into the next chain, num_buffers 1.
        d.host.push(frame(1000, 2));
        d.run(RX_QUEUE).unwrap();
        assert_eq!(d.used(RX_QUEUE), vec![(0, 0), (1, 1012)]);
        let mut one = [0u8; NET_HDR_SIZE];
        one[NUM_BUFFERS_OFFSET] = 1;
        assert_eq!(d.read(BUF + 0x1000, NET_HDR_SIZE), one);
        // A 40 KiB TSO frame fits a chain of big buffers (the driver's "big packets").
        let tso = header(NEEDS_CSUM, GSO_TCPV4, [66, 1448, 34, 16, 0]);
        let big = frame(40_000, 3);
        d.host.push_packet(&tso, &big);
        let bufs: Vec<(u64, u32, u16)> = (0..10)
            .map(|i| (BUF + 0x1_0000 + 0x1000 * i, 4096, WRITE))
            .collect();
        d.offer(RX_QUEUE, &bufs);
        d.run(RX_QUEUE).unwrap();
        assert_eq!(d.used(RX_QUEUE)[2], (2, 40_012));
        let mut want = tso;
        want[NUM_BUFFERS_OFFSET] = 1;
        assert_eq!(d.read(BUF + 0x1_0000, NET_HDR_SIZE), want);
        let stats = d.stats();
        assert_eq!((stats.rx_frames, stats.rx_dropped), (2, 1));
    }

    #[test]
    fn rx_headers_carry_only_what_the_driver_negotiated() {
        let tso4 = header(NEEDS_CSUM, GSO_TCPV4, [66, 1448, 34, 16, 0]);
        let tso6 = header(NEEDS_CSUM, GSO_TCPV6, [86, 1428, 54, 16, 0]);
        let csum = header(NEEDS_CSUM, GSO_NONE, [0, 0, 34, 16, 0]);
        let valid = header(DATA_VALID, GSO_NONE, [0; 5]);
        let rsc = header(DATA_VALID | 4, GSO_NONE, [0; 5]);
        let ecn = header(NEEDS_CSUM, GSO_TCPV4 | 0x80, [66, 1448, 34, 16, 0]);
        let udp = header(NEEDS_CSUM, 3, [42, 1472, 34, 6, 0]);
        // (features, header from the host, flags the guest sees or None for dropped)
        let cases: Vec<(u64, [u8; NET_HDR_SIZE], Option<u8>)> = vec![
            (ALL, tso4, Some(NEEDS_CSUM)),
            (ALL, tso6, Some(NEEDS_CSUM)),
            (ALL, valid, Some(DATA_VALID)),
            (ALL, rsc, Some(DATA_VALID)),
            (ALL, ecn, None),
            (ALL, udp, None),
            (ALL & !F_GUEST_TSO4, tso4, None),
            (ALL & !F_GUEST_TSO6, tso6, None),
            (F_GUEST_CSUM, csum, Some(NEEDS_CSUM)),
            (0, csum, None),
            (0, valid, Some(0)),
            (0, tso4, None),
        ];
        for (i, (features, hdr, flags)) in cases.into_iter().enumerate() {
            let mem = memory();
            let mut d = Driver::new(&mem, false);
            d.activate(VIRTIO_F_VERSION_1 | features);
            d.host.push_packet(&hdr, &frame(2000, 1));
            d.host.push(frame(60, 2));
            offer_rx(&mut d, BUF, 2, 4096);
            d.run(RX_QUEUE).unwrap();
            match flags {
                Some(flags) => {
                    assert_eq!(d.used(RX_QUEUE)[0], (0, 2012), "case {i}");
                    let got = d.read(BUF, NET_HDR_SIZE);
                    assert_eq!(got[0], flags, "case {i}");
                    assert_eq!(got[1..NUM_BUFFERS_OFFSET], hdr[1..NUM_BUFFERS_OFFSET]);
                }
                None => {
                    assert_eq!(d.used(RX_QUEUE), vec![(0, 72)], "case {i}");
                    assert_eq!(d.stats().rx_dropped, 1, "case {i}");
                }
            }
        }
    }

    #[test]
    fn negotiated_offloads_reach_the_backend() {
        let none = GuestOffloads::default();
        let cases = [
            (
                ALL,
                GuestOffloads {
                    csum: true,
                    tso4: true,
                    tso6: true,
                    tso_ecn: false,
                },
            ),
            (F_GUEST_CSUM, GuestOffloads { csum: true, ..none }),
            (
                F_GUEST_CSUM | F_GUEST_TSO6,
                GuestOffloads {
                    csum: true,
                    tso6: true,
                    ..none
                },
            ),
            (F_CSUM | F_HOST_TSO4 | F_MRG_RXBUF, none),
            (0, none),
        ];
        for (features, want) in cases {
            let mem = memory();
            let mut d = Driver::new(&mem, false);
            d.activate(VIRTIO_F_VERSION_1 | features);
            assert_eq!(d.host.offloads(), vec![want], "{features:#x}");
            d.net.reset();
            assert_eq!(d.host.offloads(), vec![want, none], "reset turns them off");
        }
        // The dependencies hold even for a set the transport would have refused.
        let odd = GuestOffloads::from_features(F_GUEST_TSO4 | F_GUEST_ECN);
        assert_eq!(odd, none);
        let ecn = GuestOffloads::from_features(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_ECN);
        assert!(ecn.tso4 && ecn.tso_ecn);

        // Through the transport: a consistent set gets to DRIVER_OK with its offloads
        // set; one that breaks the feature dependencies is refused at FEATURES_OK.
        use crate::virtio::mmio::tests::bring_up;
        for (features, accepted) in [
            (ALL, true),
            (VIRTIO_F_VERSION_1 | F_GUEST_TSO4, false),
            (VIRTIO_F_VERSION_1 | F_HOST_TSO6, false),
            (
                VIRTIO_F_VERSION_1 | F_GUEST_CSUM | F_CSUM | F_HOST_TSO6,
                true,
            ),
        ] {
            let host = Host::default();
            let (mut t, _) = transport(Box::new(Net::new(MAC, Box::new(host.clone()))));
            bring_up(&mut t, features, &[16, 16]);
            assert_eq!(r(&mut t, 0x70) == 15, accepted, "{features:#x}");
            assert_eq!(
                host.offloads().len(),
                usize::from(accepted),
                "{features:#x}"
            );
        }

        // A backend that cannot offload refuses, and the device then needs a reset.
        struct Plain;
        impl NetBackend for Plain {
            fn send(&mut self, _: &[u8]) -> io::Result<()> {
                Ok(())
            }
            fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
        let mut net = Net::new(MAC, Box::new(Plain));
        assert!(net.activate(VIRTIO_F_VERSION_1 | F_MRG_RXBUF).is_ok());
        assert!(matches!(net.activate(ALL), Err(DeviceError::Backend(_))));
    }

    #[test]
    fn hostile_chains_among_merged_buffers_drop_the_frame_not_the_vmm() {
        let hdr = NET_HDR_SIZE as u32;
        // (name, the second chain's descriptors as (address, length, flags))
        type Case = (&'static str, Vec<(u64, u32, u16)>);
        let cases: Vec<Case> = vec![
            ("outside guest memory", vec![(1 << 40, 4096, WRITE)]),
            (
                "running off the end of memory",
                vec![(0xf_ff00, 0x200, WRITE)],
            ),
            (
                "smaller than a header",
                vec![(BUF + 0x1000, hdr - 1, WRITE)],
            ),
            ("nothing writable", vec![(BUF + 0x1000, 4096, 0)]),
            (
                "giant lengths",
                vec![
                    (BUF + 0x1000, u32::MAX, WRITE),
                    (BUF + 0x2000, u32::MAX, WRITE),
                ],
            ),
        ];
        for (name, bad) in cases {
            let mem = memory();
            let mut d = Driver::new(&mem, false);
            d.activate(ALL);
            d.host.push(frame(10_000, 1));
            let good = frame(60, 2);
            d.host.push(good.clone());
            d.offer(RX_QUEUE, &[(BUF, 4096, WRITE)]);
            let bad_head = d.offer(RX_QUEUE, &bad);
            offer_rx(&mut d, BUF + 0x4000, 4, 4096);
            d.run(RX_QUEUE).unwrap_or_else(|e| panic!("{name}: {e}"));
            let used = d.used(RX_QUEUE);
            // The first chain and the bad one come back empty, before anything else;
            // the small frame takes the next good chain.
            assert_eq!(used[0], (0, 0), "{name}");
            assert_eq!(used[1], (u32::from(bad_head), 0), "{name}");
            assert_eq!(used[2].1, 72, "{name}");
            assert_eq!(used.len(), 3, "{name}");
            let at = BUF + 0x4000 + NET_HDR_SIZE as u64;
            assert_eq!(d.read(at, 60), good, "{name}");
            let stats = d.stats();
            assert_eq!((stats.rx_frames, stats.rx_dropped), (1, 1), "{name}");
        }
        // A frame no full ring can hold is dropped, the ring left as it was.
        let mem = memory();
        let mut d = Driver::new(&mem, false);
        d.activate(ALL);
        d.host.push(frame(10_000, 3));
        let good = frame(60, 4);
        d.host.push(good.clone());
        offer_rx(&mut d, BUF, u64::from(SIZE), 100);
        d.run(RX_QUEUE).unwrap();
        assert_eq!(d.used(RX_QUEUE), vec![(0, 72)]);
        assert_eq!(d.read(BUF + NET_HDR_SIZE as u64, 60), good);
        assert_eq!(d.stats().rx_dropped, 1);
    }

    #[test]
    fn mac_addresses_parse_print_and_derive() {
        let mac: MacAddr = "02:AA:bb:0c:dd:0E".parse().unwrap();
        assert_eq!(mac.bytes(), [0x02, 0xaa, 0xbb, 0x0c, 0xdd, 0x0e]);
        assert_eq!(mac.to_string(), "02:aa:bb:0c:dd:0e");
        for bad in [
            "",
            "02:aa:bb:cc:dd",
            "02:aa:bb:cc:dd:ee:ff",
            "2:aa:bb:cc:dd:ee",
            "02-aa-bb-cc-dd-ee",
            "0x:aa:bb:cc:dd:ee",
            "+2:aa:bb:cc:dd:ee",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(NetError::MacSyntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(NetError::MacMulticast(_))
        ));
        assert!(matches!(
            "ff:ff:ff:ff:ff:ff".parse::<MacAddr>(),
            Err(NetError::MacMulticast(_))
        ));
        assert!(matches!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(NetError::MacZero)
        ));
        let a = MacAddr::derived_from("tap0");
        assert_eq!(a, MacAddr::derived_from("tap0"), "deterministic");
        assert_ne!(a, MacAddr::derived_from("tap1"));
        for seed in ["tap0", "tap1", "", "a-much-longer-name"] {
            let first = MacAddr::derived_from(seed).bytes()[0];
            assert_eq!(first & 0b11, 0b10, "{seed:?}: locally administered unicast");
            assert!(
                MacAddr::derived_from(seed)
                    .to_string()
                    .parse::<MacAddr>()
                    .is_ok()
            );
        }
    }
}
