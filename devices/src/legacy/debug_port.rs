//! Arca's boot debug port: guest userspace writes a byte here (through `/dev/port`) to
//! mark boot progress, so the VMM can time the boot without parsing console text.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::signals::GuestSignals;

/// The marker guest init writes once it runs.
pub const BOOT_MARKER_INIT: u8 = 0x01;
/// The marker `arca-agent` writes once it accepts connections.
pub const BOOT_MARKER_AGENT_READY: u8 = 0x02;

/// The device: writes of [`BOOT_MARKER_INIT`] and [`BOOT_MARKER_AGENT_READY`] are
/// noted; other values are ignored (reserved for later markers). Reads return 0.
#[derive(Debug)]
pub struct DebugPort {
    signals: Arc<GuestSignals>,
}

impl DebugPort {
    /// A port that reports to `signals`.
    pub fn new(signals: Arc<GuestSignals>) -> Self {
        Self { signals }
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.first()) {
            (0, Some(&BOOT_MARKER_INIT)) => self.signals.note_init_reached(),
            (0, Some(&BOOT_MARKER_AGENT_READY)) => self.signals.note_agent_ready(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_marker_is_noted_once_and_other_values_are_ignored() {
        let signals = Arc::new(GuestSignals::default());
        let mut port = DebugPort::new(signals.clone());
        port.write(0, &[0x7f]);
        port.write(0, &[]);
        assert!(signals.init_reached().is_none());
        port.write(0, &[BOOT_MARKER_INIT]);
        let first = signals.init_reached().unwrap();
        port.write(0, &[BOOT_MARKER_INIT]);
        assert_eq!(signals.init_reached(), Some(first));
        assert!(signals.agent_ready().is_none());
        port.write(0, &[BOOT_MARKER_AGENT_READY]);
        assert!(signals.agent_ready().is_some());
    }
}
