//! The event loop side of virtio-vsock: its queue eventfds, the listening socket and
//! every connection socket, whose set changes as connections come and go.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use devices::virtio::mmio::MmioTransport;
use devices::virtio::vsock::backend::{Backend, FdChange, LISTENER_TOKEN};
use devices::virtio::vsock::{RX_QUEUE, TX_QUEUE};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::QueueEvents;

/// Queue eventfds use tokens 0..queues; sockets use the backend's tokens (above).
pub struct VsockEvents {
    transport: Arc<Mutex<MmioTransport>>,
    backend: Arc<Mutex<Backend>>,
    queue_evts: Vec<EventFd>,
}

impl std::fmt::Debug for VsockEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockEvents").finish_non_exhaustive()
    }
}

impl VsockEvents {
    /// The subscriber for a vsock device added as `queues` with host side `backend`.
    pub fn new(queues: QueueEvents, backend: Arc<Mutex<Backend>>) -> Self {
        let (transport, queue_evts) = queues.into_parts();
        Self {
            transport,
            backend,
            queue_evts,
        }
    }

    fn apply_changes(&mut self, ops: &mut EventOps) {
        let mut backend = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        for change in backend.take_changes() {
            let result = match change {
                FdChange::Add { fd, token } => {
                    let set = if token == LISTENER_TOKEN {
                        EventSet::IN
                    } else {
                        EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED
                    };
                    ops.add(Events::with_data_raw(fd, token, set))
                }
                FdChange::Remove { fd } => ops.remove(Events::empty_raw(fd as RawFd)),
            };
            if let Err(e) = result {
                eprintln!("arca-vmm: vsock: cannot update the watched sockets: {e:?}");
            }
        }
        backend.release_closed();
    }

    fn notify(&self, queue: usize) {
        self.transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(queue);
    }
}

impl MutEventSubscriber for VsockEvents {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        let set = events.event_set();
        if let Some(evt) = self.queue_evts.get(token as usize) {
            let _ = evt.read();
            self.notify(token as usize);
            if token as usize == TX_QUEUE {
                // Connections the guest opened may need watching at once.
                self.apply_changes(ops);
            }
            return;
        }
        {
            let mut backend = self.backend.lock().unwrap_or_else(|p| p.into_inner());
            if token == LISTENER_TOKEN {
                backend.accept();
            } else {
                let hangup =
                    set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR);
                backend.host_event(
                    token,
                    hangup || set.contains(EventSet::IN),
                    hangup || set.contains(EventSet::OUT),
                );
            }
        }
        // Deliver whatever the host side now has for the guest.
        self.notify(RX_QUEUE);
        self.apply_changes(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                eprintln!("arca-vmm: vsock: cannot watch queue {index}: {e:?}");
            }
        }
        self.apply_changes(ops);
    }
}
