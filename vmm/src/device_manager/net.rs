//! The event loop side of virtio-net: its two queue eventfds and the TAP descriptor.
//!
//! The TAP is watched edge-triggered for input. An edge runs the device's rx path
//! (through the transport, as an rx notification would), which reads frames until the
//! TAP is empty or the guest has no buffer left; in the second case the device keeps
//! one frame and has the driver's notifications on, so the guest's next rx notification
//! resumes reading. Every new frame raises a new edge, so none is left behind. Queue
//! eventfds are level-triggered and read on each event.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::RX_QUEUE;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::QueueEvents;

/// The TAP's token; queue eventfds use their indexes (0 and 1).
const TAP_TOKEN: u32 = 16;

/// The subscriber for one virtio-net device.
pub struct NetEvents {
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
    tap: OwnedFd,
}

impl std::fmt::Debug for NetEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetEvents").finish_non_exhaustive()
    }
}

impl NetEvents {
    /// The subscriber for a net device added as `queues`, whose backend is the TAP that
    /// `tap` (a duplicate of its descriptor) refers to.
    pub fn new(queues: QueueEvents, tap: OwnedFd) -> Self {
        let (transport, queue_evts) = queues.into_parts();
        Self {
            transport,
            queue_evts,
            tap,
        }
    }

    fn notify(&self, queue: usize) {
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(queue);
    }
}

impl MutEventSubscriber for NetEvents {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        if token == TAP_TOKEN {
            // Readable (or in error, which the rx path reads and counts).
            self.notify(RX_QUEUE);
        } else if let Some(evt) = self.queue_evts.get(token as usize) {
            let _ = evt.read();
            self.notify(token as usize);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                eprintln!("arca-vmm: net: cannot watch queue {index}: {e:?}");
            }
        }
        let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if let Err(e) = ops.add(Events::with_data(&self.tap, TAP_TOKEN, set)) {
            eprintln!("arca-vmm: net: cannot watch the TAP device: {e:?}");
        }
    }
}
