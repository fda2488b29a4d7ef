//! virtio-vsock: stream sockets between guest and host, with the host side on Unix
//! domain sockets (see [`backend`]).

pub mod backend;
pub mod packet;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};

use self::backend::{Backend, MAX_PAYLOAD};
use self::packet::{HDR_SIZE, Header};
use super::{DeviceError, QueueContext, VirtioDevice};

/// `VIRTIO_ID_VSOCK`.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// Queue indexes.
pub const RX_QUEUE: usize = 0;
/// Guest-to-host packets.
pub const TX_QUEUE: usize = 1;
/// Transport events: a transport reset after a snapshot restore.
pub const EVENT_QUEUE: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

/// The vsock device; its host side is shared with the event loop, which feeds it
/// socket events.
#[derive(Debug)]
pub struct Vsock {
    backend: Arc<Mutex<Backend>>,
    /// After a restore, until the driver gives an event buffer back: the event queue's
    /// available index when the transport-reset event went out.
    reset_pending: Option<std::num::Wrapping<u16>>,
}

impl Vsock {
    /// A device for `backend`.
    pub fn new(backend: Arc<Mutex<Backend>>) -> Self {
        Self {
            backend,
            reset_pending: None,
        }
    }

    fn backend(&self) -> MutexGuard<'_, Backend> {
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every packet the guest queued on tx.
    fn process_tx(&mut self, ctx: &mut QueueContext<'_>) -> Result<bool, DeviceError> {
        let mem = ctx.mem;
        let mut used = false;
        let mut data = Vec::new();
        while let Some(queue) = ctx.queues.get_mut(TX_QUEUE) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            if let Ok(mut reader) = Reader::new(mem, chain) {
                let mut raw = [0u8; HDR_SIZE];
                if reader.read_exact(&mut raw).is_ok() {
                    let header = Header::from_bytes(&raw);
                    let len = header.len as usize;
                    // A payload longer than its buffers, or than any packet may be, is
                    // dropped, and its connection reset: the guest counted those bytes
                    // as sent, so the connection could never be whole again.
                    let whole = len <= reader.available_bytes() && len <= MAX_PAYLOAD && {
                        data.resize(len, 0);
                        reader.read_exact(&mut data).is_ok()
                    };
                    if whole {
                        self.backend().from_guest(&header, &data);
                    } else {
                        self.backend().reject(&header);
                    }
                }
            }
            queue.add_used(mem, head, 0).map_err(DeviceError::Queue)?;
            used = true;
        }
        if used {
            ctx.notify_used(TX_QUEUE);
        }
        Ok(used)
    }

    /// Fills guest rx buffers with whatever the host side has for the guest.
    fn process_rx(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let mut used = false;
        let mut backend = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        while backend.has_rx() {
            let Some(queue) = ctx.queues.get_mut(RX_QUEUE) else {
                break;
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut writer) if writer.available_bytes() >= HDR_SIZE => {
                    match backend.next_rx(writer.available_bytes() - HDR_SIZE) {
                        Some(packet) => {
                            let ok = writer.write_all(&packet.header.to_bytes()).is_ok()
                                && writer.write_all(&packet.data).is_ok();
                            if ok {
                                (HDR_SIZE + packet.data.len()) as u32
                            } else {
                                0
                            }
                        }
                        // Only control packets fit a header-sized buffer: with none
                        // waiting it would block every connection's data at the head
                        // of the ring, so it goes back used and empty (the driver
                        // drops it and posts another).
                        None if writer.available_bytes() == HDR_SIZE => 0,
                        None => {
                            // Nothing after all: give the buffer back.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                }
                // A buffer too small for a header, or outside guest memory.
                _ => 0,
            };
            queue
                .add_used(mem, head, written)
                .map_err(DeviceError::Queue)?;
            used = true;
        }
        drop(backend);
        if used {
            ctx.notify_used(RX_QUEUE);
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // guest_cid (le64) at 0.
        let config = self.backend().guest_cid().to_le_bytes();
        super::copy_config(&config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        ctx: &mut QueueContext<'_>,
    ) -> Result<(), DeviceError> {
        match index {
            TX_QUEUE => {
                self.process_tx(ctx)?;
                // Replies (RESPONSE, RST, credit) go out at once.
                self.process_rx(ctx)
            }
            RX_QUEUE => self.process_rx(ctx),
            // The driver posts the event buffer again once it has handled the event in
            // it (a transport reset after a restore): its available index moves.
            EVENT_QUEUE => {
                if let Some(at) = self.reset_pending {
                    let now = ctx
                        .queues
                        .get(EVENT_QUEUE)
                        .map(|q| q.avail_idx(ctx.mem, std::sync::atomic::Ordering::Acquire));
                    if !matches!(now, Some(Ok(idx)) if idx == at) {
                        self.reset_pending = None;
                        self.backend().transport_reset_seen();
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        if self.reset_pending.take().is_some() {
            self.backend().transport_reset_seen();
        }
        self.backend().reset();
    }

    /// The host side starts with no connections after a restore: the transport-reset
    /// event has the driver reset every socket it had (and reread the guest CID), as
    /// after a live migration; host clients wait until it has (see
    /// `Backend::hold_for_transport_reset`). A driver that posted no event buffer misses
    /// it; its sockets then learn of the loss at their next packet, which the backend
    /// answers with a reset.
    fn restored(&mut self, ctx: &mut QueueContext<'_>) -> Result<(), DeviceError> {
        let mem = ctx.mem;
        let Some(queue) = ctx.queues.get_mut(EVENT_QUEUE) else {
            return Ok(());
        };
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return Ok(());
        };
        let head = chain.head_index();
        let written = match Writer::new(mem, chain) {
            Ok(mut writer) => {
                if writer
                    .write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                    .is_ok()
                {
                    4
                } else {
                    0
                }
            }
            Err(_) => 0,
        };
        queue
            .add_used(mem, head, written)
            .map_err(DeviceError::Queue)?;
        if let Ok(idx) = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
            self.reset_pending = Some(idx);
            self.backend().hold_for_transport_reset();
        }
        ctx.notify_used(EVENT_QUEUE);
        Ok(())
    }
}
