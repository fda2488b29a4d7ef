//! Virtio devices over the MMIO transport (virtio 1.x, transport version 2).
//!
//! [`mmio::MmioTransport`] owns a device, its queues and its interrupt; a device model
//! implements [`VirtioDevice`] and sees only its queues, guest memory, and the interrupt
//! to raise. Everything the guest puts in a queue is hostile: a malformed request is
//! answered with an error status, or dropped with the device marked as needing reset,
//! never allowed to panic the VMM.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::legacy::EventFdTrigger;

/// `VIRTIO_F_VERSION_1`: the modern interface, the only one Arca offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_EVENT_IDX`: notification suppression through the rings' `used_event`
/// and `avail_event` fields. A device that offers it must keep the driver's `avail_event`
/// current with `enable_notification` whenever it waits for buffers; the transport turns
/// it on in every queue when the driver accepts it.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Errors a device model reports while handling a queue.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The guest broke the protocol badly enough that the device cannot go on.
    #[error("Guest violated the virtio protocol: {0}")]
    Protocol(String),
    /// The queue itself is unusable (its rings lie outside guest memory).
    #[error("Virtqueue failure")]
    Queue(#[source] virtio_queue::Error),
    /// The host side of the device failed (a backend refused what the driver asked).
    #[error("Device backend failure")]
    Backend(#[source] std::io::Error),
}

/// The device's interrupt line and its ISR status bits.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    trigger: EventFdTrigger,
}

impl Interrupt {
    /// An interrupt raised through `trigger`.
    pub fn new(trigger: EventFdTrigger) -> Self {
        Self {
            status: AtomicU32::new(0),
            trigger,
        }
    }

    /// Tells the driver that a used ring has new entries.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that the configuration (or device status) changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_MMIO_INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // A full eventfd already holds a pending interrupt: nothing is lost.
        let _ = vm_superio::Trigger::trigger(&self.trigger);
    }

    /// The ISR status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the bits the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// Serves a read of `data.len()` bytes at `offset` from a device's configuration space
/// `config`; bytes past its end are left as they are (the transport zeroes them).
pub fn copy_config(config: &[u8], offset: u64, data: &mut [u8]) {
    if let Ok(start) = usize::try_from(offset)
        && let Some(src) = config.get(start..)
    {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// What a device works with while it handles a queue.
#[derive(Debug)]
pub struct QueueContext<'a> {
    /// The device's queues, in index order.
    pub queues: &'a mut [Queue],
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: &'a Interrupt,
}

impl QueueContext<'_> {
    /// Raises the used-ring interrupt for `index` unless the driver suppressed it.
    pub fn notify_used(&mut self, index: usize) {
        use virtio_queue::QueueT;
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        // If the check itself fails (rings moved out of memory), interrupt anyway: a
        // spurious interrupt is harmless, a lost one hangs the driver.
        if queue.needs_notification(self.mem).unwrap_or(true) {
            self.interrupt.signal_used_queue();
        }
    }
}

/// What a device gets at activation when its queues are served elsewhere (by an
/// external vhost-user backend): the queues as the driver set them up, the eventfds its
/// notifications signal (KVM's ioeventfds), and guest memory.
#[derive(Debug)]
pub struct QueueSetup<'a> {
    /// The device's queues, in index order (sizes, ring addresses, readiness).
    pub queues: &'a [Queue],
    /// One eventfd per queue, signalled by the driver's QueueNotify writes.
    pub queue_events: &'a [EventFd],
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Whether the device can work with `features`, a subset of what it offered, that
    /// the driver accepted: FEATURES_OK is refused otherwise (such as a set breaking
    /// the spec's feature dependencies).
    fn accepts_features(&self, _features: u64) -> bool {
        true
    }
    /// Reads device configuration space at `offset`. Bytes beyond it read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; ignored unless the device has writable fields.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these features; the queues are ready.
    fn activate(&mut self, _features: u64) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Activation for devices whose queues are handed to an external backend: the
    /// transport calls this (not [`VirtioDevice::activate`] directly) when the driver
    /// sets DRIVER_OK. The default is `activate`; such a device overrides it to send
    /// the queues, their eventfds and guest memory to its backend.
    fn activate_queues(
        &mut self,
        features: u64,
        _setup: QueueSetup<'_>,
    ) -> Result<(), DeviceError> {
        self.activate(features)
    }
    /// The driver notified queue `index`.
    fn process_queue(
        &mut self,
        index: usize,
        ctx: &mut QueueContext<'_>,
    ) -> Result<(), DeviceError>;
    /// The driver reset the device: drop any in-flight state.
    fn reset(&mut self) {}
    /// The VM was restored from a snapshot and its transport activated again: tell the
    /// driver what it must know (vsock: every connection is gone). Called once, before
    /// every queue is served.
    fn restored(&mut self, _ctx: &mut QueueContext<'_>) -> Result<(), DeviceError> {
        Ok(())
    }
}
