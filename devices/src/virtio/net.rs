//! virtio-net over a host backend (a TAP device in the VMM): one rx and one tx queue,
//! a MAC address, no offloads.
//!
//! Every frame in either direction is preceded by the 12-byte `virtio_net_hdr_v1`. On
//! tx the device strips it and hands the bare Ethernet frame to the [`NetBackend`]; on
//! rx it writes a zeroed header (`num_buffers` = 1) and then the frame. No checksum or
//! segmentation offload is offered, so the header carries nothing the device needs.
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
//! read from the backend when the guest has no buffer waits in the device (one frame)
//! until the driver adds one.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET as ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
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
/// Largest Ethernet frame (without the virtio header) the device moves either way.
pub const MAX_FRAME_SIZE: usize = 65550;
/// The MTU the device reports (`VIRTIO_NET_F_MTU`); the host TAP should use the same.
pub const MTU: u16 = 1500;
/// An Ethernet header: a tx frame shorter than this is malformed.
const ETH_HLEN: usize = 14;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

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
/// calls move one whole Ethernet frame, without the virtio header, and must not block.
pub trait NetBackend: Send {
    /// Sends one frame to the host.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Reads the next frame from the host into `buf` and returns its length;
    /// `ErrorKind::WouldBlock` when there is none. A frame longer than `buf` may be cut
    /// short; the device passes a buffer one byte longer than [`MAX_FRAME_SIZE`], so a
    /// frame that fills it is too long and is dropped.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
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

/// A snapshot of [`NetCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (without headers).
    pub rx_bytes: u64,
    /// Frames from the host that were dropped: too long, no room in the guest's buffer,
    /// a buffer outside guest memory, or a backend read error.
    pub rx_dropped: u64,
    /// Frames sent to the host.
    pub tx_frames: u64,
    /// Bytes of those frames (without headers).
    pub tx_bytes: u64,
    /// Guest frames that were dropped: malformed chains, or refused by the backend.
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
    /// Header and frame of the tx chain being read.
    tx_buf: Vec<u8>,
    /// The frame read from the backend (one byte longer than the largest frame).
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` that waits for a guest buffer.
    rx_pending: Option<usize>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
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
}

impl Net {
    /// A device with address `mac` whose frames go to and come from `backend`.
    pub fn new(mac: MacAddr, backend: Box<dyn NetBackend>) -> Self {
        Self {
            mac,
            backend,
            counters: Arc::default(),
            tx_buf: Vec::with_capacity(NET_HDR_SIZE + MAX_FRAME_SIZE),
            rx_buf: vec![0; MAX_FRAME_SIZE + 1],
            rx_pending: None,
        }
    }

    /// The device's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The device's frame counters.
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// Sends every frame the guest queued on tx to the backend.
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
            match self.read_tx_chain(chain, mem) {
                Ok(()) => {
                    let frame = &self.tx_buf[NET_HDR_SIZE..];
                    match self.backend.send(frame) {
                        Ok(()) => {
                            NetCounters::add(&self.counters.tx_frames, 1);
                            NetCounters::add(&self.counters.tx_bytes, frame.len() as u64);
                        }
                        // The host could not take it (interface down, queue full): a
                        // network may lose frames, the guest's protocols recover.
                        Err(_) => NetCounters::add(&self.counters.tx_dropped, 1),
                    }
                }
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

    /// Delivers frames from the backend into guest rx buffers while both exist. The
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
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => match self.read_frame() {
                    Some(len) => len,
                    None => break,
                },
            };
            let Some(chain) = next_chain(queue, mem)? else {
                // No buffer: the frame waits, and the driver's next rx notification
                // (enabled by next_chain) brings it in.
                self.rx_pending = Some(len);
                break;
            };
            let head = chain.head_index();
            let written = self.write_rx_chain(chain, mem, len);
            queue
                .add_used(mem, head, written)
                .map_err(DeviceError::Queue)?;
            used = true;
        }
        if used {
            ctx.notify_used(RX_QUEUE);
        }
        Ok(())
    }

    /// Reads the next frame from the backend into `rx_buf`; `None` when there is none.
    fn read_frame(&mut self) -> Option<usize> {
        loop {
            match self.backend.recv(&mut self.rx_buf) {
                Ok(len) if (ETH_HLEN..=MAX_FRAME_SIZE).contains(&len) => return Some(len),
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

    /// Writes a header and the `len`-byte frame in `rx_buf` into an rx chain; returns the
    /// used length: 0 when the frame was dropped (the buffer is returned empty).
    fn write_rx_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        len: usize,
    ) -> u32 {
        let total = NET_HDR_SIZE + len;
        let delivered = match Writer::new(mem, chain) {
            // The whole frame fits, or none of it is written.
            Ok(mut writer) if writer.available_bytes() >= total => {
                let mut header = [0u8; NET_HDR_SIZE];
                header[NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
                writer.write_all(&header).is_ok() && writer.write_all(&self.rx_buf[..len]).is_ok()
            }
            // Too small, or outside guest memory.
            _ => false,
        };
        if delivered {
            NetCounters::add(&self.counters.rx_frames, 1);
            NetCounters::add(&self.counters.rx_bytes, len as u64);
            total as u32
        } else {
            NetCounters::add(&self.counters.rx_dropped, 1);
            0
        }
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
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_STATUS
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

    /// An in-memory host: frames sent, and frames waiting to be received.
    #[derive(Default, Clone)]
    struct Host {
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
        refuse_sends: Arc<Mutex<bool>>,
    }

    impl NetBackend for Host {
        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            if *self.refuse_sends.lock().unwrap() {
                return Err(io::Error::from_raw_os_error(5));
            }
            self.sent.lock().unwrap().push(frame.to_vec());
            Ok(())
        }

        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let frame = self
                .incoming
                .lock()
                .unwrap()
                .pop_front()
                .ok_or(io::ErrorKind::WouldBlock)?;
            let n = frame.len().min(buf.len());
            buf[..n].copy_from_slice(&frame[..n]);
            Ok(n)
        }
    }

    impl Host {
        fn sent(&self) -> Vec<Vec<u8>> {
            self.sent.lock().unwrap().clone()
        }
        fn push(&self, frame: Vec<u8>) {
            self.incoming.lock().unwrap().push_back(frame);
        }
        fn waiting(&self) -> usize {
            self.incoming.lock().unwrap().len()
        }
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

        /// Offers a tx frame: a header buffer, then the frame.
        fn send(&mut self, frame: &[u8], at: u64) {
            self.mem
                .write_slice(&[0u8; NET_HDR_SIZE], GuestAddress(at))
                .unwrap();
            let data = at + NET_HDR_SIZE as u64;
            self.mem.write_slice(frame, GuestAddress(data)).unwrap();
            self.offer(
                TX_QUEUE,
                &[(at, NET_HDR_SIZE as u32, 0), (data, frame.len() as u32, 0)],
            );
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
    fn tx_frames_reach_the_backend_without_the_header() {
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
        assert_eq!(low & 0xc7, 0, "no checksum or segmentation offloads");
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
