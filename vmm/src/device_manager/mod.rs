//! Wiring virtio devices into a VM: an MMIO slot and an interrupt line each, an
//! ioeventfd per queue so that guest notifications skip the VMM's vCPU threads, the
//! `virtio_mmio.device=` command-line entry the guest discovers them by, and an event
//! loop subscriber that hands queue notifications to the device.

pub mod fs;
pub mod net;
pub mod tap;
pub mod vsock;

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::legacy::EventFdTrigger;
use devices::virtio::mmio::{
    MMIO_SIZE, MmioTransport, NOTIFY_OFFSET, TransportRestoreError, TransportState,
};
use devices::virtio::{Interrupt, VirtioDevice};
use event_manager::{EventOps, Events, MutEventSubscriber};
use linux_loader::loader::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::x86_64::layout::{VIRTIO_IRQ_RANGE, VIRTIO_MMIO_START};
use crate::vstate::vcpu::IoBuses;
use crate::vstate::vm::{Vm, VmError};

/// Errors of device wiring.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// All interrupt lines for virtio devices are taken.
    #[error("Too many devices: only {} virtio devices fit", VIRTIO_IRQ_RANGE.count())]
    TooManyDevices,
    /// An eventfd could not be made.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an irqfd or ioeventfd.
    #[error("Cannot wire a device into KVM")]
    Kvm(#[source] VmError),
    /// A saved transport cannot be restored.
    #[error("Cannot restore a virtio device")]
    Restore(#[source] TransportRestoreError),
    /// The slot collides with another device.
    #[error("Cannot place a device on the MMIO bus")]
    Bus(#[source] devices::bus::BusError),
    /// The command line has no room for the device entry.
    #[error("Cannot add the device to the kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
}

/// Hands out MMIO slots and interrupt lines to virtio devices.
#[derive(Debug, Default)]
pub struct MmioDeviceManager {
    count: u32,
}

/// The event loop side of a device: its queue eventfds.
pub struct QueueEvents {
    transport: Arc<Mutex<MmioTransport>>,
    events: Vec<EventFd>,
}

impl std::fmt::Debug for QueueEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueEvents")
            .field("queues", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl MmioDeviceManager {
    /// A manager with every slot free.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` to the VM (with `state`, its transport as a snapshot saved it);
    /// returns the subscriber the event loop must run.
    pub fn add_virtio(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        buses: &mut IoBuses,
        cmdline: &mut Cmdline,
        device: Box<dyn VirtioDevice>,
        state: Option<&TransportState>,
    ) -> Result<QueueEvents, DeviceManagerError> {
        let irq = VIRTIO_IRQ_RANGE.start() + self.count;
        if !VIRTIO_IRQ_RANGE.contains(&irq) {
            return Err(DeviceManagerError::TooManyDevices);
        }
        let base = VIRTIO_MMIO_START + u64::from(self.count) * MMIO_SIZE;

        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(DeviceManagerError::Kvm)?;
        let interrupt = Interrupt::new(EventFdTrigger::new(irq_evt));
        let transport = match state {
            None => MmioTransport::new(device, mem.clone(), interrupt)
                .map_err(DeviceManagerError::EventFd)?,
            Some(state) => MmioTransport::restore(device, mem.clone(), interrupt, state)
                .map_err(DeviceManagerError::Restore)?,
        };
        let mut events = Vec::new();
        for (index, evt) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(evt, base + NOTIFY_OFFSET, index as u32)
                .map_err(DeviceManagerError::Kvm)?;
            events.push(evt.try_clone().map_err(DeviceManagerError::EventFd)?);
        }
        let transport = Arc::new(Mutex::new(transport));
        buses
            .mmio
            .insert(transport.clone(), base, MMIO_SIZE)
            .map_err(DeviceManagerError::Bus)?;
        cmdline
            .add_virtio_mmio_device(MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(DeviceManagerError::Cmdline)?;
        self.count += 1;
        Ok(QueueEvents { transport, events })
    }
}

impl QueueEvents {
    /// The device's transport.
    pub fn transport(&self) -> Arc<Mutex<MmioTransport>> {
        self.transport.clone()
    }

    /// The transport and its queue eventfds.
    pub fn into_parts(self) -> (Arc<Mutex<MmioTransport>>, Vec<EventFd>) {
        (self.transport, self.events)
    }
}

impl MutEventSubscriber for QueueEvents {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        if let Some(evt) = self.events.get(index) {
            let _ = evt.read();
        }
        let mut transport = self.transport.lock().unwrap_or_else(|p| p.into_inner());
        transport.notify(index);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                eprintln!(
                    "arca-vmm: cannot watch queue {index} (fd {}): {e:?}",
                    evt.as_raw_fd()
                );
            }
        }
    }
}
