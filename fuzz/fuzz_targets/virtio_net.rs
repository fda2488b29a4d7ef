//! What a hostile guest does to virtio-net: arbitrary tx and rx descriptor chains
//! (addresses in and out of guest memory, small and absurd lengths, arbitrary flags and
//! links), arbitrary headers and frames, any offered feature set, with event-idx on or
//! off, against an in-memory host that hands the device arbitrary packets (short,
//! oversize, any header). Any outcome but a panic or hang is fine, and the counters
//! must add up: every packet the host handed over is delivered, dropped, or the one
//! waiting; every packet sent to the host is a header and an Ethernet frame of a
//! possible size.

#![no_main]

#[allow(dead_code)]
mod common;

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use devices::virtio::net::{MAX_FRAME_SIZE, MacAddr, NET_HDR_SIZE, Net, NetBackend, RX_QUEUE, TX_QUEUE};
use devices::virtio::{QueueContext, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

/// A record length that stands for a packet as long as the device's buffer.
const OVERSIZE: u16 = u16::MAX;

#[derive(Default, Clone)]
struct Host {
    /// `None` is a packet as long as the device's whole buffer: one byte too long.
    incoming: Arc<Mutex<VecDeque<Option<Vec<u8>>>>>,
    sent: Arc<Mutex<Vec<usize>>>,
    refuse_sends: bool,
}

impl NetBackend for Host {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.refuse_sends {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.sent.lock().unwrap().push(packet.len());
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let packet = self.incoming.lock().unwrap().pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let Some(packet) = packet else {
            buf.fill(0);
            return Ok(buf.len());
        };
        let n = packet.len().min(buf.len());
        buf[..n].copy_from_slice(&packet[..n]);
        Ok(n)
    }

    fn set_offloads(&mut self, _: devices::virtio::net::GuestOffloads) -> io::Result<()> {
        Ok(())
    }
}

/// Host packets from `[len: u16 le][bytes]` records; `OVERSIZE` is a packet as long as
/// the device's buffer.
fn packets(mut data: &[u8]) -> VecDeque<Option<Vec<u8>>> {
    let mut out = VecDeque::new();
    while data.len() >= 2 && out.len() < 32 {
        let len = u16::from_le_bytes([data[0], data[1]]);
        data = &data[2..];
        if len == OVERSIZE {
            out.push_back(None);
            continue;
        }
        let n = usize::from(len).min(data.len());
        // A short record is padded: long frames need not cost the fuzzer as many bytes.
        let mut packet = data[..n].to_vec();
        packet.resize(usize::from(len), 0x5a);
        out.push_back(Some(packet));
        data = &data[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, rest) = data.split_at(12);
    let mask = u64::from_le_bytes(head[0..8].try_into().unwrap_or_default());
    let flags = head[8];
    let rx_len = usize::from(head[9] % 17) * 16;
    let tx_len = usize::from(head[10] % 17) * 16;
    let payload_len = usize::from(head[11]) * 16;
    let (rx_descs, rest) = rest.split_at(rx_len.min(rest.len()));
    let (tx_descs, rest) = rest.split_at(tx_len.min(rest.len()));
    let (payload, incoming) = rest.split_at(payload_len.min(rest.len()));

    let host = Host {
        refuse_sends: flags & 2 != 0,
        ..Host::default()
    };
    let offered = packets(incoming);
    let handed = offered.len();
    *host.incoming.lock().unwrap() = offered;
    let mut net = Net::new(MacAddr::new([2, 0, 0, 0, 0, 1]), Box::new(host.clone()));
    // Any subset of what the device offers; the device refuses inconsistent ones.
    if net.activate(net.features() & mask).is_err() {
        return;
    }

    let mem = common::memory();
    let _ = mem.write_slice(payload, GuestAddress(0x1_0000));
    let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x2000), 16);
    if rx.add_desc_chains(&common::descriptors(rx_descs), 0).is_err()
        || tx.add_desc_chains(&common::descriptors(tx_descs), 0).is_err()
    {
        return;
    }
    let (Ok(mut rxq), Ok(mut txq)) = (rx.create_queue::<virtio_queue::Queue>(), tx.create_queue::<virtio_queue::Queue>()) else {
        return;
    };
    rxq.set_event_idx(flags & 1 != 0);
    txq.set_event_idx(flags & 1 != 0);
    let mut queues = [rxq, txq];
    let interrupt = common::interrupt();
    let mut ctx = QueueContext { queues: &mut queues, mem: &mem, interrupt: &interrupt };
    for index in [TX_QUEUE, RX_QUEUE, RX_QUEUE] {
        if net.process_queue(index, &mut ctx).is_err() {
            break; // the device needs a reset: the transport would stop here
        }
    }

    let stats = net.counters().snapshot();
    let left = host.incoming.lock().unwrap().len();
    let taken = (handed - left) as u64;
    let settled = stats.rx_frames + stats.rx_dropped;
    assert!(settled <= taken && taken <= settled + 1, "{stats:?}, {taken} packets taken");
    let sent = host.sent.lock().unwrap();
    assert_eq!(sent.len() as u64, stats.tx_frames);
    for &len in sent.iter() {
        assert!((NET_HDR_SIZE + 14..=NET_HDR_SIZE + MAX_FRAME_SIZE).contains(&len), "sent {len} bytes");
    }
});
