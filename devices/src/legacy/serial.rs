//! The 8250/16550 UART (COM1), with the guest's console output going to a host writer.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;

use super::EventFdTrigger;
use crate::bus::BusDevice;
use crate::signals::GuestSignals;

/// The line the kernel prints first when it panics.
const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";
/// Longest console line the panic scan keeps; longer lines are scanned in pieces.
const LINE_LIMIT: usize = 256;

/// Where guest console output goes: the host writer, with the bytes watched for the
/// first output and for a kernel panic banner.
pub struct ConsoleWriter {
    out: Box<dyn Write + Send>,
    signals: Arc<GuestSignals>,
    line: Vec<u8>,
}

impl std::fmt::Debug for ConsoleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleWriter")
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl ConsoleWriter {
    /// Console output to `out`, reporting to `signals`.
    pub fn new(out: Box<dyn Write + Send>, signals: Arc<GuestSignals>) -> Self {
        Self {
            out,
            signals,
            line: Vec::with_capacity(LINE_LIMIT),
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' || self.line.len() == LINE_LIMIT {
                if contains(&self.line, PANIC_BANNER) {
                    self.signals.note_panic();
                }
                self.line.clear();
            }
            if b != b'\n' {
                self.line.push(b);
            }
        }
        // A banner can arrive without its newline before the guest resets.
        if contains(&self.line, PANIC_BANNER) {
            self.signals.note_panic();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.signals.note_output();
            self.scan(buf);
        }
        // Host-side output errors (a closed pipe, a full disk) must not stop the guest:
        // the bytes are dropped, as a UART with nothing attached would.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high bytes.
    pub divisor: [u8; 2],
    /// Interrupt enable.
    pub interrupt_enable: u8,
    /// Interrupt identification.
    pub interrupt_identification: u8,
    /// Line control.
    pub line_control: u8,
    /// Line status.
    pub line_status: u8,
    /// Modem control.
    pub modem_control: u8,
    /// Modem status.
    pub modem_status: u8,
    /// Scratch.
    pub scratch: u8,
    /// Received bytes the guest has not read.
    pub input: Vec<u8>,
}

/// A saved UART state that cannot be restored.
#[derive(Debug, thiserror::Error)]
#[error("Invalid saved serial port state: {0}")]
pub struct SerialRestoreError(String);

/// COM1, mapped at port 0x3f8 with length 8; its interrupt is the trigger it was given
/// (wired to IRQ 4).
#[derive(Debug)]
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, ConsoleWriter>,
}

impl Serial {
    /// A UART that raises `interrupt` and writes the guest's output to `out`.
    pub fn new(interrupt: EventFdTrigger, out: ConsoleWriter) -> Self {
        Self {
            inner: vm_superio::Serial::new(interrupt, out),
        }
    }

    /// A UART in the state `state` describes (see [`Serial::new`]).
    pub fn restore(
        interrupt: EventFdTrigger,
        out: ConsoleWriter,
        state: &SerialSnapshot,
    ) -> Result<Self, SerialRestoreError> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: state.divisor[0],
            baud_divisor_high: state.divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.input.clone(),
        };
        let inner = vm_superio::Serial::from_state(&state, interrupt, NoEvents, out)
            .map_err(|e| SerialRestoreError(format!("{e:?}")))?;
        Ok(Self { inner })
    }

    /// After a restore, once the vCPUs have their interrupt controllers back: raises the
    /// interrupt the saved registers say is pending (the one raised while restoring may
    /// have reached an interrupt controller that was then overwritten).
    pub fn resume_after_restore(&mut self) {
        // IIR bit 0 clear: an interrupt is pending.
        if self.inner.state().interrupt_identification & 1 == 0 {
            let _ = vm_superio::Trigger::trigger(self.inner.interrupt_evt());
        }
    }

    /// The registers and FIFO, for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            input: s.in_buffer,
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let n = input.len().min(self.inner.fifo_capacity());
        self.inner
            .enqueue_raw_bytes(&input[..n])
            .unwrap_or_default()
    }

    /// Free room in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) => self.inner.read(offset),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            // An interrupt that cannot be raised (eventfd full) is raised by the next one.
            let _ = self.inner.write(offset, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Shared, Arc<GuestSignals>, EventFd) {
        let out = Shared::default();
        let signals = Arc::new(GuestSignals::default());
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = Serial::new(
            EventFdTrigger::new(evt.try_clone().unwrap()),
            ConsoleWriter::new(Box::new(out.clone()), signals.clone()),
        );
        (dev, out, signals, evt)
    }

    fn put(dev: &mut Serial, text: &[u8]) {
        for b in text {
            dev.write(0, &[*b]);
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_host_writer_and_mark_first_output() {
        let (mut dev, out, signals, _) = serial();
        assert!(signals.first_output().is_none());
        put(&mut dev, b"hello\r\n");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\r\n");
        assert!(signals.first_output().is_some());
        assert!(!signals.panicked());
    }

    #[test]
    fn a_kernel_panic_banner_is_noticed_even_without_a_newline() {
        let (mut dev, _, signals, _) = serial();
        put(
            &mut dev,
            b"[    1.000] Kernel panic - not syncing: VFS: Unable to mount root",
        );
        assert!(signals.panicked());
    }

    #[test]
    fn the_banner_split_over_lines_is_not_a_panic() {
        let (mut dev, _, signals, _) = serial();
        put(&mut dev, b"Kernel panic\n - not syncing\n");
        put(&mut dev, &[b'x'; 1000]);
        assert!(!signals.panicked());
    }

    #[test]
    fn input_is_readable_from_the_receive_register_and_raises_the_interrupt() {
        let (mut dev, _, _, evt) = serial();
        dev.write(1, &[0x01]); // IER: received-data interrupt on
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert_eq!(evt.read().unwrap(), 1);
        let mut data = [0u8];
        dev.read(0, &mut data);
        assert_eq!(data, [b'o']);
    }

    #[test]
    fn a_restored_uart_has_the_saved_registers_and_input() {
        let (mut dev, _, _, _) = serial();
        dev.write(3, &[0x03]); // LCR: 8 bits
        dev.write(7, &[0x5a]); // scratch
        dev.enqueue_input(b"hi");
        let saved = dev.state();
        let (_, out, signals, evt) = serial();
        let mut back = Serial::restore(
            EventFdTrigger::new(evt),
            ConsoleWriter::new(Box::new(out), signals),
            &saved,
        )
        .unwrap();
        assert_eq!(back.state(), saved);
        let mut data = [0u8];
        back.read(7, &mut data);
        assert_eq!(data, [0x5a]);
        back.read(0, &mut data);
        assert_eq!(data, [b'h']);
        // Hostile: a state file with an overfull FIFO is refused, not trusted.
        let mut bad = saved;
        bad.input = vec![0; 1 << 20];
        let (_, out, signals, evt) = serial();
        assert!(
            Serial::restore(
                EventFdTrigger::new(evt),
                ConsoleWriter::new(Box::new(out), signals),
                &bad
            )
            .is_err()
        );
    }

    #[test]
    fn odd_sized_accesses_are_ignored() {
        let (mut dev, out, _, _) = serial();
        dev.write(0, b"ab");
        let mut data = [0u8; 2];
        dev.read(5, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
