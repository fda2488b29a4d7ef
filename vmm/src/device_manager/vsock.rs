//! The event loop side of virtio-vsock: its queue eventfds, the listening socket and
//! every connection socket, whose set changes as connections come and go, and a timerfd
//! armed only while a connection (or the unwatched listener) has a deadline.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::mmio::MmioTransport;
use devices::virtio::vsock::RX_QUEUE;
use devices::virtio::vsock::backend::{Backend, FdChange, LISTENER_TOKEN};
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::QueueEvents;

/// The timerfd's token: above the queues', below the backend's.
const TIMER_TOKEN: u32 = LISTENER_TOKEN - 1;

/// Queue eventfds use tokens 0..queues, the timer [`TIMER_TOKEN`]; sockets use the
/// backend's tokens (above).
pub struct VsockEvents {
    transport: Arc<Mutex<MmioTransport>>,
    backend: Arc<Mutex<Backend>>,
    queue_evts: Vec<EventFd>,
    /// Wakes the loop for the backend's next deadline; `None` if it could not be made
    /// (deadlines are then met at the next socket or queue event).
    timer: Option<TimerFd>,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
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
        let timer = TimerFd::new()
            .inspect_err(|e| eprintln!("arca-vmm: vsock: cannot create a timer: {e}"))
            .ok();
        Self {
            transport,
            backend,
            queue_evts,
            timer,
            armed: None,
        }
    }

    /// Arms the timer for `next`, the backend's next deadline, unless it is armed for
    /// that or sooner already (an early wake-up finds nothing due and re-arms).
    fn arm(&mut self, next: Option<Instant>) {
        let Some(timer) = self.timer.as_mut() else {
            return;
        };
        let Some(at) = next else {
            return; // nothing is timed; a pending wake-up just finds nothing due
        };
        if self.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        // A zero duration would disarm the timer.
        let wait = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match timer.reset(wait, None) {
            Ok(()) => self.armed = Some(at),
            Err(e) => eprintln!("arca-vmm: vsock: cannot arm the timer: {e}"),
        }
    }

    fn apply_changes(&mut self, ops: &mut EventOps) {
        let backend = self.backend.clone();
        let mut backend = backend.lock().unwrap_or_else(|p| p.into_inner());
        // Deadlines are met here too should the timer fail; it wakes the loop for the
        // next one.
        let now = Instant::now();
        if backend.next_deadline().is_some_and(|at| at <= now) {
            backend.tick(now);
        }
        self.arm(backend.next_deadline());
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
        if token == TIMER_TOKEN {
            if let Some(timer) = self.timer.as_mut() {
                let _ = timer.wait();
            }
            self.armed = None;
            self.backend
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .tick(Instant::now());
            // Resets for the guest go out; apply_changes re-arms for what is left.
            self.notify(RX_QUEUE);
            self.apply_changes(ops);
            return;
        }
        if let Some(evt) = self.queue_evts.get(token as usize) {
            let _ = evt.read();
            self.notify(token as usize);
            // Connections the guest opened may need watching at once, and a REQUEST
            // that reached an rx buffer starts a deadline the timer must wake for.
            self.apply_changes(ops);
            return;
        }
        {
            let mut backend = self.backend.lock().unwrap_or_else(|p| p.into_inner());
            if token == LISTENER_TOKEN {
                backend.accept();
            } else {
                // HANG_UP: the host side closed the socket whole; READ_HANG_UP alone is
                // a half-close, which the backend sees as an EOF on reading.
                let closed = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
                let hangup = closed || set.contains(EventSet::READ_HANG_UP);
                backend.host_event(
                    token,
                    hangup || set.contains(EventSet::IN),
                    hangup || set.contains(EventSet::OUT),
                    closed,
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
        if let Some(timer) = &self.timer
            && let Err(e) = ops.add(Events::with_data(timer, TIMER_TOKEN, EventSet::IN))
        {
            eprintln!("arca-vmm: vsock: cannot watch the timer: {e:?}");
            self.timer = None;
        }
        self.apply_changes(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use devices::legacy::EventFdTrigger;
    use devices::virtio::Interrupt;
    use devices::virtio::vsock::Vsock;
    use devices::virtio::vsock::backend::CONNECT_LINE_TIMEOUT;
    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn the_event_loop_drops_a_host_client_that_never_sends_its_connect_line() {
        // A local client connects to the VMM's socket and says nothing, to hold a slot
        // and a descriptor: the timer wakes the loop at the deadline with no other event.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let backend = Arc::new(Mutex::new(Backend::new(3, &path).unwrap()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let interrupt = Interrupt::new(EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let device = Box::new(Vsock::new(backend.clone()));
        let transport = MmioTransport::new(device, mem, interrupt).unwrap();
        let queues = QueueEvents {
            transport: Arc::new(Mutex::new(transport)),
            events: Vec::new(),
        };
        let mut manager: EventManager<Arc<Mutex<VsockEvents>>> = EventManager::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(VsockEvents::new(
            queues,
            backend.clone(),
        ))));

        let mut client = UnixStream::connect(&path).unwrap();
        client.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let closed_after = loop {
            manager.run_with_timeout(100).unwrap();
            match client.read(&mut buf) {
                Ok(0) => break start.elapsed(),
                Ok(_) => panic!("the VMM said something"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(
                start.elapsed() < CONNECT_LINE_TIMEOUT * 5,
                "the client was never dropped"
            );
        };
        assert!(closed_after >= CONNECT_LINE_TIMEOUT, "{closed_after:?}");
        let backend = backend.lock().unwrap();
        assert_eq!(backend.connections(), 0);
        assert_eq!(
            backend.next_deadline(),
            None,
            "and the timer has nothing left"
        );
    }
}
