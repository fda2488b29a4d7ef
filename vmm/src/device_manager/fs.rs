//! The event loop side of virtio-fs: the eventfds the backend (virtiofsd) signals when it
//! used buffers, relayed into the device's interrupt (a virtio-mmio interrupt must set
//! the ISR status bit, so the backend cannot raise the irqfd itself), and the backend's
//! socket, whose hang-up means the backend is gone. From then on the device answers the
//! queues itself (with `EIO`), so the queue eventfds, which the backend had, are watched
//! here too.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use devices::virtio::fs::BackendHealth;
use devices::virtio::mmio::MmioTransport;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::QueueEvents;

/// The backend socket's token; call eventfds use their queue indexes, and queue
/// eventfds (once the backend is gone) `QUEUE_TOKEN_BASE` plus theirs.
const SOCKET_TOKEN: u32 = 64;
const QUEUE_TOKEN_BASE: u32 = 128;

/// The subscriber for one virtio-fs device.
pub struct FsEvents {
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// Watched until the backend hangs up.
    socket: Option<OwnedFd>,
    health: Arc<BackendHealth>,
    tag: String,
}

impl std::fmt::Debug for FsEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsEvents")
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl FsEvents {
    /// The subscriber for a virtio-fs device added as `queues`, whose backend signals
    /// `calls` and is reached through `socket` (a duplicate of the device's).
    pub fn new(
        queues: QueueEvents,
        calls: Vec<EventFd>,
        socket: OwnedFd,
        health: Arc<BackendHealth>,
        tag: String,
    ) -> Self {
        let (transport, queue_evts) = queues.into_parts();
        Self {
            transport,
            queue_evts,
            calls,
            socket: Some(socket),
            health,
            tag,
        }
    }

    fn notify(&self, queue: usize) {
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(queue);
    }

    /// The backend hung up (or the device shut its socket after a failure or timeout):
    /// take the queues over.
    fn backend_gone(&mut self, ops: &mut EventOps) {
        self.health
            .mark_gone("virtiofsd closed its socket (it exited or was killed)");
        let why = self.health.why().unwrap_or_default();
        eprintln!(
            "arca-vmm: virtio-fs {:?}: the backend is gone: {why}; the guest gets I/O errors on this file system",
            self.tag
        );
        if let Some(socket) = self.socket.take() {
            let _ = ops.remove(Events::empty(&socket));
        }
        for (index, evt) in self.queue_evts.iter().enumerate() {
            let token = QUEUE_TOKEN_BASE + index as u32;
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                eprintln!("arca-vmm: virtio-fs: cannot watch queue {index}: {e:?}");
            }
        }
        // Requests already waiting, and those the backend took and never answered.
        for index in 0..self.queue_evts.len() {
            self.notify(index);
        }
    }
}

impl MutEventSubscriber for FsEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        if token == SOCKET_TOKEN {
            self.backend_gone(ops);
        } else if token >= QUEUE_TOKEN_BASE {
            let index = (token - QUEUE_TOKEN_BASE) as usize;
            if let Some(evt) = self.queue_evts.get(index) {
                let _ = evt.read();
                self.notify(index);
            }
        } else if let Some(call) = self.calls.get(token as usize) {
            let _ = call.read();
            self.transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .interrupt()
                .signal_used_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.calls.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                eprintln!("arca-vmm: virtio-fs: cannot watch the backend's queue {index}: {e:?}");
            }
        }
        // Only the hang-up: the socket is readable while a vCPU thread waits for a
        // reply, which is not this loop's to read. HANG_UP and ERROR always report.
        if let Some(socket) = &self.socket
            && let Err(e) = ops.add(Events::with_data(
                socket,
                SOCKET_TOKEN,
                EventSet::READ_HANG_UP,
            ))
        {
            eprintln!("arca-vmm: virtio-fs: cannot watch the backend's socket: {e:?}");
        }
    }
}
