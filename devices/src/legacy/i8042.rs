//! The i8042 keyboard controller, as far as a microVM needs it: the CPU reset line.
//! A guest booted with `reboot=k` writes 0xfe to port 0x64 to reset the machine; the
//! device raises its reset event and the VMM ends the VM.

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// The controller, mapped at port 0x60 with length 5 (so 0x64 is offset 4). Reads
/// return 0: no key pending, input buffer empty, which lets the guest's reset code go on.
#[derive(Debug)]
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// A controller that writes `reset` when the guest pulses the reset line.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset)
            .map(|o| self.inner.read(o))
            .unwrap_or(0);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        // A failed eventfd write leaves nothing to do here: the guest resets again when
        // its reset does not take, and the VMM still sees the vCPU halt or shut down.
        let _ = self.inner.write(offset, *value);
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;

    fn device() -> (I8042, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        (
            I8042::new(EventFdTrigger::new(evt.try_clone().unwrap())),
            evt,
        )
    }

    #[test]
    fn writing_0xfe_to_the_command_port_raises_reset() {
        let (mut dev, evt) = device();
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_and_odd_sizes_do_not_reset() {
        let (mut dev, evt) = device();
        dev.write(4, &[0xd1]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0xfe]);
        dev.write(u64::MAX, &[0xfe]);
        assert!(evt.read().is_err(), "no reset expected");
        let mut data = [0xaa; 2];
        dev.read(4, &mut data);
        assert_eq!(data, [0, 0]);
    }
}
