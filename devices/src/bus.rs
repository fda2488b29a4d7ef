//! An address space (port I/O or MMIO) of devices, each owning one address range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers accesses within the range it was inserted at.
///
/// `offset` is relative to the start of that range. Accesses come from the guest:
/// sizes and offsets are whatever the guest chose, and a device must not panic on them.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset`; the device fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of [`Bus::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or runs past the end of the address space.
    #[error("Invalid bus range: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The new range overlaps one that is already taken.
    #[error("Bus range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// First address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// First address of the range it collides with.
        other_base: u64,
        /// Length of the range it collides with.
        other_len: u64,
    },
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Slot {
    len: u64,
    device: SharedDevice,
}

/// Devices keyed by the first address of their range; ranges never overlap.
#[derive(Clone, Default)]
pub struct Bus {
    slots: BTreeMap<u64, Slot>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self
            .slots
            .iter()
            .map(|(base, slot)| format!("{base:#x}+{:#x}", slot.len))
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let overlap = |(&other_base, slot): (&u64, &Slot)| {
            (base < other_base + slot.len && other_base < base + len).then_some(BusError::Overlap {
                base,
                len,
                other_base,
                other_len: slot.len,
            })
        };
        // Only the nearest range below `base` and the first at or above it can collide.
        let below = self.slots.range(..base).next_back();
        let above = self.slots.range(base..).next();
        if let Some(err) = below.and_then(overlap).or_else(|| above.and_then(overlap)) {
            return Err(err);
        }
        self.slots.insert(base, Slot { len, device });
        Ok(())
    }

    /// The device whose range holds `addr`, with `addr`'s offset in that range.
    fn resolve(&self, addr: u64) -> Option<(&Slot, u64)> {
        let (base, slot) = self.slots.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < slot.len).then_some((slot, offset))
    }

    /// Hands a read at `addr` to its device. Returns false, leaving `data` untouched,
    /// when no device holds `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((slot, offset)) => {
                lock(&slot.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Hands a write at `addr` to its device. Returns false when no device holds `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((slot, offset)) => {
                lock(&slot.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if another thread panicked while holding it: device state is
/// plain data, and one failed vCPU thread must not wedge the others.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the accesses it saw and answers reads with its offset.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatches_to_the_device_holding_the_address_with_its_offset() {
        let mut bus = Bus::new();
        let serial = recorder();
        let other = recorder();
        bus.insert(serial.clone(), 0x3f8, 8).unwrap();
        bus.insert(other.clone(), 0x400, 4).unwrap();

        assert!(bus.write(0x3fd, &[7]));
        let mut data = [0u8; 1];
        assert!(bus.read(0x3ff, &mut data));
        assert_eq!(data, [7]);
        assert_eq!(serial.lock().unwrap().writes, vec![(5, vec![7])]);
        assert!(other.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn addresses_outside_every_range_are_unhandled() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x3f8, 8).unwrap();
        let mut data = [0xaau8; 2];
        assert!(!bus.read(0x3f7, &mut data));
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.write(0, &data));
        assert_eq!(data, [0xaa, 0xaa]);
    }

    #[test]
    fn rejects_overlapping_ranges_on_either_side() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();
        let err = bus.insert(recorder(), 0xf8, 0x10).unwrap_err();
        assert_eq!(
            err,
            BusError::Overlap {
                base: 0xf8,
                len: 0x10,
                other_base: 0x100,
                other_len: 0x10
            }
        );
        assert!(bus.insert(recorder(), 0x10f, 1).is_err());
        assert!(bus.insert(recorder(), 0x104, 2).is_err());
        // Touching ranges are fine.
        bus.insert(recorder(), 0xf0, 0x10).unwrap();
        bus.insert(recorder(), 0x110, 0x10).unwrap();
    }

    #[test]
    fn rejects_empty_and_wrapping_ranges() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(recorder(), 0x10, 0),
            Err(BusError::InvalidRange { base: 0x10, len: 0 })
        );
        assert!(bus.insert(recorder(), u64::MAX, 2).is_err());
    }
}
