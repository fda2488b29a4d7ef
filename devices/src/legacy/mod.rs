//! PC legacy devices: the 8250 UART, the i8042 controller (reset line only), and Arca's
//! boot debug port.

mod debug_port;
mod i8042;
mod serial;

pub use debug_port::{BOOT_MARKER_INIT, DebugPort};
pub use i8042::I8042;
pub use serial::{ConsoleWriter, Serial, SerialRestoreError, SerialSnapshot};

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line or event that a device raises by writing to an eventfd.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `fd`.
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }

    /// The eventfd behind the trigger.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
