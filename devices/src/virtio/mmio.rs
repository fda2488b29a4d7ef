//! The virtio-mmio transport, version 2: the register block a driver uses to discover,
//! negotiate with and drive a device. Registers are 32-bit; configuration space starts
//! at 0x100.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    Interrupt, QueueContext, QueueSetup, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice,
};
use crate::bus::BusDevice;

/// "virt".
const MAGIC: u32 = 0x7472_6976;
/// The modern MMIO layout.
const VERSION: u32 = 2;
/// "ARCA".
const VENDOR_ID: u32 = 0x4143_5241;
/// Size of the register block, and of the bus slot a transport takes.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds are registered).
pub const NOTIFY_OFFSET: u64 = 0x50;
const CONFIG_OFFSET: u64 = 0x100;

/// Status bits in the order a driver must set them.
const STATUS_ORDER: [u32; 4] = [
    VIRTIO_CONFIG_S_ACKNOWLEDGE,
    VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_DRIVER_OK,
];

/// One virtqueue as a snapshot keeps it (virtio-queue's `QueueState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The largest size the device offers.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver made it ready.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// The next available-ring entry the device reads.
    pub next_avail: u16,
    /// The next used-ring entry the device writes.
    pub next_used: u16,
    /// Whether notifications go through event indexes.
    pub event_idx: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A transport's registers and queues as a snapshot keeps them. The device behind it
/// keeps nothing of its own that the guest could tell apart after a restore: its
/// negotiated features are the transport's, and it is activated again with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device's virtio ID, checked on restore.
    pub device_type: u32,
    /// The queues, in index order.
    pub queues: Vec<QueueSnapshot>,
    /// QueueSel.
    pub queue_select: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// What the driver accepted.
    pub driver_features: u64,
    /// The device status register.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// The interrupt status bits not yet acknowledged.
    pub interrupt_status: u32,
}

/// Why a saved transport state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    /// The state is of another kind of device.
    #[error("Saved state of a virtio device of type {saved} given to one of type {device}")]
    DeviceType {
        /// The saved state's type.
        saved: u32,
        /// The device's.
        device: u32,
    },
    /// The state has another number of queues, or other queue sizes, than the device.
    #[error("Saved queues do not match the device's: {0}")]
    Queues(String),
    /// A saved queue is not one virtio-queue accepts.
    #[error("Saved queue {index} is invalid")]
    Queue {
        /// The queue's index.
        index: usize,
        /// What virtio-queue said.
        #[source]
        source: virtio_queue::Error,
    },
    /// The registers are not a state a driver could have brought the device to.
    #[error("Saved registers are not a reachable state: {0}")]
    Registers(String),
    /// The device refused the features it was running with.
    #[error("The device cannot be activated again")]
    Activate(#[source] super::DeviceError),
    /// An eventfd could not be made.
    #[error("Cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A device behind the virtio-mmio register block.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Interrupt,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`, which reaches guest memory through `mem` and raises `interrupt`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            // Queue::new only fails for sizes that are not powers of two; device
            // models give valid ones, and a bad one becomes an I/O error here.
            queues.push(
                Queue::new(max)
                    .map_err(|e| std::io::Error::other(format!("queue size {max}: {e}")))?,
            );
            queue_evts.push(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        })
    }

    /// The registers and queues, for a snapshot (taken while no vCPU runs and the
    /// event loop is not handling the device).
    pub fn state(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
        }
    }

    /// Wraps `device` as it was when `state` was saved: same registers and queues, and,
    /// if the driver had it running, activated again with the features it accepted.
    /// The state comes from a file the guest may have had a hand in: queue sizes must be
    /// the device's, and the rings are checked as on a driver's DRIVER_OK (a queue
    /// outside guest memory makes the device need a reset, as it would then).
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Interrupt,
        state: &TransportState,
    ) -> Result<Self, TransportRestoreError> {
        let mut transport =
            Self::new(device, mem, interrupt).map_err(TransportRestoreError::EventFd)?;
        let device_type = transport.device.device_type();
        if state.device_type != device_type {
            return Err(TransportRestoreError::DeviceType {
                saved: state.device_type,
                device: device_type,
            });
        }
        let max_sizes = transport.device.queue_max_sizes();
        let saved_sizes: Vec<u16> = state.queues.iter().map(|q| q.max_size).collect();
        if saved_sizes != max_sizes {
            return Err(TransportRestoreError::Queues(format!(
                "saved {saved_sizes:?}, device {max_sizes:?}"
            )));
        }
        // Only what a driver could have reached through write_status: offered features
        // the device accepts, status steps in order (NEEDS_RESET and FAILED aside).
        let offered = transport.device.features() | VIRTIO_F_VERSION_1;
        let known = STATUS_ORDER.iter().fold(
            VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED,
            |all, bit| all | bit,
        );
        let bad = |why: String| Err(TransportRestoreError::Registers(why));
        if state.driver_features & !offered != 0 {
            return bad(format!(
                "driver features {:#x} beyond the offered {offered:#x}",
                state.driver_features
            ));
        }
        if state.status & !known != 0 {
            return bad(format!("status {:#x} has unknown bits", state.status));
        }
        let steps = STATUS_ORDER
            .iter()
            .take_while(|&&bit| state.status & bit != 0)
            .count();
        if STATUS_ORDER[steps..]
            .iter()
            .any(|&bit| state.status & bit != 0)
        {
            return bad(format!("status {:#x} skips a step", state.status));
        }
        if state.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && (state.driver_features & VIRTIO_F_VERSION_1 == 0
                || !transport.device.accepts_features(state.driver_features))
        {
            return bad(format!(
                "features {:#x} the device does not accept",
                state.driver_features
            ));
        }
        transport.queues = state
            .queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                Queue::try_from(QueueState::from(*q))
                    .map_err(|source| TransportRestoreError::Queue { index, source })
            })
            .collect::<Result<_, _>>()?;
        transport.queue_select = state.queue_select;
        transport.device_features_select = state.device_features_select;
        transport.driver_features_select = state.driver_features_select;
        transport.driver_features = state.driver_features;
        transport.status = state.status;
        transport.config_generation = state.config_generation;
        transport
            .interrupt
            .status
            .store(state.interrupt_status, std::sync::atomic::Ordering::SeqCst);
        if transport.is_active() {
            let mem = &transport.mem;
            let bad_queue = transport
                .queues
                .iter()
                .any(|q| q.ready() && !q.is_valid(mem));
            if bad_queue {
                transport.needs_reset();
            } else {
                let setup = QueueSetup {
                    queues: &transport.queues,
                    queue_events: &transport.queue_evts,
                    mem,
                };
                transport
                    .device
                    .activate_queues(transport.driver_features, setup)
                    .map_err(TransportRestoreError::Activate)?;
            }
        }
        Ok(transport)
    }

    /// After a restore: serves every queue once (a notification the guest made just
    /// before the snapshot may never have reached the device), lets the device announce
    /// the restore to its driver, and raises the interrupt if one was pending. The
    /// configuration generation moves on: the device may be backed by other host files
    /// than the ones its driver read the configuration of.
    pub fn resume_after_restore(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if !self.is_active() {
            return;
        }
        let mut ctx = QueueContext {
            queues: &mut self.queues,
            mem: &self.mem,
            interrupt: &self.interrupt,
        };
        if self.device.restored(&mut ctx).is_err() {
            self.needs_reset();
            return;
        }
        for index in 0..self.queues.len() {
            self.notify(index);
        }
        if self.interrupt.status() != 0 {
            self.interrupt.raise(0);
        }
    }

    /// The eventfds that a guest's QueueNotify writes signal, one per queue, in order
    /// (registered as ioeventfds at [`NOTIFY_OFFSET`] with the queue index as datamatch).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device's interrupt: for relaying a used-buffer notification that an
    /// external backend signalled on an eventfd of its own.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    fn is_active(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
    }

    /// Handles a notification of queue `index` (from its eventfd, or a QueueNotify write
    /// that reached the transport).
    pub fn notify(&mut self, index: usize) {
        if !self.is_active() || index >= self.queues.len() {
            return;
        }
        let mut ctx = QueueContext {
            queues: &mut self.queues,
            mem: &self.mem,
            interrupt: &self.interrupt,
        };
        if self.device.process_queue(index, &mut ctx).is_err() {
            self.needs_reset();
        }
    }

    /// The device cannot go on until the driver resets it.
    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, while the
    /// selected queue is not ready.
    fn queue_writable(&mut self) -> bool {
        let configuring = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        configuring && self.selected_queue().is_some_and(|q| !q.ready())
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let features = self.device.features() | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x034 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.device_features_select = value,
            // Features are accepted between DRIVER and FEATURES_OK.
            0x020
                if self.status & (VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK)
                    == VIRTIO_CONFIG_S_DRIVER =>
            {
                let value = u64::from(value);
                match self.driver_features_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    _ => {}
                }
            }
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
            0x038 => {
                if self.queue_writable()
                    && let Some(q) = self.selected_queue()
                {
                    // virtio-queue keeps the old size for a bad one; is_valid() then
                    // catches a queue the driver never sized properly.
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            // A queue may be made ready, or not, while the device is being configured.
            0x044
                if self.status & (VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)
                    == VIRTIO_CONFIG_S_FEATURES_OK =>
            {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            0x050 => self.notify(value as usize),
            0x064 => self.interrupt.ack(value),
            0x070 => self.write_status(value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if self.queue_writable()
                    && let Some(q) = self.selected_queue()
                {
                    let (low, high) = if offset & 0x4 == 0 {
                        (Some(value), None)
                    } else {
                        (None, Some(value))
                    };
                    match offset & !0x7 {
                        0x080 => q.set_desc_table_address(low, high),
                        0x090 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // Bits may only be added, one step at a time, in the order of STATUS_ORDER.
        let added = value & !self.status;
        if value & self.status != self.status || added.count_ones() != 1 {
            return;
        }
        let Some(step) = STATUS_ORDER.iter().position(|&b| b == added) else {
            return;
        };
        if STATUS_ORDER[..step].iter().any(|&b| self.status & b == 0) {
            return;
        }
        match added {
            VIRTIO_CONFIG_S_FEATURES_OK => {
                let offered = self.device.features() | VIRTIO_F_VERSION_1;
                // The driver may accept only what was offered, must accept v1, and must
                // accept a set the device can work with.
                if self.driver_features & !offered != 0
                    || self.driver_features & VIRTIO_F_VERSION_1 == 0
                    || !self.device.accepts_features(self.driver_features)
                {
                    return;
                }
            }
            VIRTIO_CONFIG_S_DRIVER_OK => {
                // The queues follow the ring layout the driver agreed to: with event-idx,
                // interrupts and notifications are suppressed through used_event and
                // avail_event instead of the rings' flags.
                let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
                for q in &mut self.queues {
                    q.set_event_idx(event_idx);
                }
                let mem = &self.mem;
                let bad_queue = self.queues.iter().any(|q| q.ready() && !q.is_valid(mem));
                let setup = QueueSetup {
                    queues: &self.queues,
                    queue_events: &self.queue_evts,
                    mem,
                };
                if bad_queue
                    || self
                        .device
                        .activate_queues(self.driver_features, setup)
                        .is_err()
                {
                    self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
                    self.needs_reset();
                    return;
                }
            }
            _ => {}
        }
        self.status |= added;
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            self.device.read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if let (true, Ok(bytes)) = (offset.is_multiple_of(4), <[u8; 4]>::try_from(data)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::legacy::EventFdTrigger;
    use crate::virtio::DeviceError;

    /// A device that records what happens to it.
    #[derive(Default)]
    pub(crate) struct Probe {
        /// Offered on top of bit 3.
        pub extra_features: u64,
        pub activated: Arc<Mutex<Option<u64>>>,
        pub processed: Arc<Mutex<Vec<usize>>>,
        pub resets: Arc<Mutex<u32>>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 3 | self.extra_features
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
            *self.activated.lock().unwrap() = Some(features);
            Ok(())
        }
        fn process_queue(
            &mut self,
            index: usize,
            ctx: &mut QueueContext<'_>,
        ) -> Result<(), DeviceError> {
            self.processed.lock().unwrap().push(index);
            ctx.interrupt.signal_used_queue();
            Ok(())
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
    }

    pub(crate) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub(crate) fn transport(device: Box<dyn VirtioDevice>) -> (MmioTransport, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Interrupt::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        (MmioTransport::new(device, memory(), irq).unwrap(), evt)
    }

    pub(crate) fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    pub(crate) fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// Drives the transport through the driver's initialisation, with queue `i` at
    /// 0x1000 * (1 + 3i) and size `sizes[i]`.
    pub(crate) fn bring_up(t: &mut MmioTransport, features: u64, sizes: &[u16]) {
        w(t, 0x70, 1);
        w(t, 0x70, 3);
        w(t, 0x24, 0);
        w(t, 0x20, features as u32);
        w(t, 0x24, 1);
        w(t, 0x20, (features >> 32) as u32);
        w(t, 0x70, 11);
        for (i, &size) in sizes.iter().enumerate() {
            let base = 0x1000 * (1 + 3 * i as u32);
            w(t, 0x30, i as u32);
            w(t, 0x38, u32::from(size));
            w(t, 0x80, base);
            w(t, 0x84, 0);
            w(t, 0x90, base + 0x1000);
            w(t, 0x94, 0);
            w(t, 0xa0, base + 0x2000);
            w(t, 0xa4, 0);
            w(t, 0x44, 1);
        }
        w(t, 0x70, 15);
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let (mut t, _) = transport(Box::new(Probe::default()));
        assert_eq!(r(&mut t, 0x0), MAGIC);
        assert_eq!(r(&mut t, 0x4), 2);
        assert_eq!(r(&mut t, 0x8), 42);
        w(&mut t, 0x14, 0);
        assert_eq!(r(&mut t, 0x10), 1 << 3);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VIRTIO_F_VERSION_1 is bit 32");
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 8);
        w(&mut t, 0x30, 7);
        assert_eq!(r(&mut t, 0x34), 0, "no such queue");
    }

    #[test]
    fn negotiation_activates_the_device_and_notifications_reach_it() {
        let probe = Probe::default();
        let (activated, processed) = (probe.activated.clone(), probe.processed.clone());
        let (mut t, evt) = transport(Box::new(probe));
        bring_up(&mut t, VIRTIO_F_VERSION_1 | 1 << 3, &[16, 8]);
        assert_eq!(r(&mut t, 0x70), 15);
        assert_eq!(
            *activated.lock().unwrap(),
            Some(VIRTIO_F_VERSION_1 | 1 << 3)
        );
        w(&mut t, 0x50, 1);
        assert_eq!(*processed.lock().unwrap(), vec![1]);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(r(&mut t, 0x60), 1);
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);
        w(&mut t, 0x50, 9);
        assert_eq!(processed.lock().unwrap().len(), 1, "unknown queue ignored");
    }

    #[test]
    fn event_idx_is_on_in_every_queue_only_when_the_driver_accepts_it() {
        for accepted in [false, true] {
            let probe = Probe {
                extra_features: VIRTIO_RING_F_EVENT_IDX,
                ..Probe::default()
            };
            let (mut t, _) = transport(Box::new(probe));
            let mut features = VIRTIO_F_VERSION_1;
            if accepted {
                features |= VIRTIO_RING_F_EVENT_IDX;
            }
            bring_up(&mut t, features, &[16, 8]);
            assert_eq!(r(&mut t, 0x70), 15);
            for q in &t.queues {
                assert_eq!(q.event_idx_enabled(), accepted);
            }
            // A reset forgets it with the rest of the negotiation.
            w(&mut t, 0x70, 0);
            assert!(t.queues.iter().all(|q| !q.event_idx_enabled()));
        }
    }

    #[test]
    fn features_ok_is_refused_for_unoffered_features_or_without_version_1() {
        for features in [1 << 3, VIRTIO_F_VERSION_1 | 1 << 4] {
            let (mut t, _) = transport(Box::new(Probe::default()));
            w(&mut t, 0x70, 1);
            w(&mut t, 0x70, 3);
            w(&mut t, 0x24, 0);
            w(&mut t, 0x20, features as u32);
            w(&mut t, 0x24, 1);
            w(&mut t, 0x20, (features >> 32) as u32);
            w(&mut t, 0x70, 11);
            assert_eq!(
                r(&mut t, 0x70) & VIRTIO_CONFIG_S_FEATURES_OK,
                0,
                "{features:#x}"
            );
        }
    }

    #[test]
    fn status_steps_out_of_order_are_ignored_and_zero_resets() {
        let probe = Probe::default();
        let resets = probe.resets.clone();
        let (mut t, _) = transport(Box::new(probe));
        w(&mut t, 0x70, VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(r(&mut t, 0x70), 0);
        w(&mut t, 0x70, 1);
        w(&mut t, 0x70, 1 | VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(r(&mut t, 0x70), 1);
        bring_up(&mut t, VIRTIO_F_VERSION_1, &[16, 8]);
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert!(*resets.lock().unwrap() >= 1);
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x44), 0, "queues are not ready after reset");
    }

    #[test]
    fn queues_outside_guest_memory_make_the_device_need_reset() {
        let probe = Probe::default();
        let activated = probe.activated.clone();
        let (mut t, evt) = transport(Box::new(probe));
        w(&mut t, 0x70, 1);
        w(&mut t, 0x70, 3);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, 11);
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0);
        w(&mut t, 0x84, 0x10); // 64 GiB up: far outside
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 15);
        assert_ne!(r(&mut t, 0x70) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(*activated.lock().unwrap(), None);
        assert_eq!(evt.read().unwrap(), 1, "config interrupt");
        assert_eq!(r(&mut t, 0x60) & 2, 2);
    }

    #[test]
    fn queue_registers_are_frozen_once_running() {
        let (mut t, _) = transport(Box::new(Probe::default()));
        bring_up(&mut t, VIRTIO_F_VERSION_1, &[16, 8]);
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 4);
        w(&mut t, 0x80, 0xdead_0000);
        assert_eq!(t.queues[0].size(), 16);
        assert_eq!(t.queues[0].desc_table(), 0x1000);
    }

    #[test]
    fn a_saved_transport_comes_back_running_and_hostile_states_are_refused() {
        let probe = Probe::default();
        let activated = probe.activated.clone();
        let (mut t, _) = transport(Box::new(probe));
        bring_up(&mut t, VIRTIO_F_VERSION_1 | 1 << 3, &[16, 8]);
        let saved = t.state();
        let restore = |state: &TransportState| {
            let probe = Probe::default();
            let activated = probe.activated.clone();
            let evt = EventFd::new(EFD_NONBLOCK).unwrap();
            let irq = Interrupt::new(EventFdTrigger::new(evt));
            MmioTransport::restore(Box::new(probe), memory(), irq, state).map(|t| (t, activated))
        };
        let (mut back, back_activated) = restore(&saved).unwrap();
        assert_eq!(back.state(), saved);
        assert_eq!(*back_activated.lock().unwrap(), *activated.lock().unwrap());
        assert_eq!(r(&mut back, 0x70), 15);
        let generation = r(&mut back, 0xfc);
        back.resume_after_restore();
        assert_eq!(r(&mut back, 0xfc), generation.wrapping_add(1));
        // Hostile: a state file the guest's VMM wrote.
        for (change, want) in [
            (
                (|s: &mut TransportState| s.driver_features |= 1 << 20) as fn(&mut TransportState),
                "beyond the offered",
            ),
            (|s| s.status = 0x1 | 0x4, "skips a step"),
            (|s| s.status |= 0x1000, "unknown bits"),
            (|s| s.driver_features = 1 << 3, "does not accept"),
            (|s| s.device_type = 7, "of type 7"),
            (|s| s.queues[0].max_size = 1024, "do not match"),
            (|s| s.queues[1].size = 3, "queue 1 is invalid"),
        ] {
            let mut bad = saved.clone();
            change(&mut bad);
            let err = restore(&bad).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut t, _) = transport(Box::new(Probe::default()));
        let mut d = [0xffu8; 2];
        t.read(0x0, &mut d);
        assert_eq!(d, [0, 0]);
        t.write(0x70, &[1, 0]);
        t.write(0x71, &[1, 0, 0, 0]);
        assert_eq!(r(&mut t, 0x70), 0);
        let mut cfg = [0u8; 3];
        t.read(0x104, &mut cfg);
        assert_eq!(cfg, [4, 5, 6]);
        t.read(u64::MAX - 8, &mut [0u8; 8]);
        t.write(u64::MAX - 8, &[0u8; 8]);
    }
}
