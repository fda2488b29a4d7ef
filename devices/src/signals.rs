//! What the guest tells the VMM without a driver: first console output, boot-progress
//! markers on the debug port, and a kernel panic seen on the console.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Moments and facts the VMM reports about a boot. Shared by the devices that observe
/// them and the VMM that prints them; every field is written once.
#[derive(Debug, Default)]
pub struct GuestSignals {
    first_output: OnceLock<Instant>,
    init_reached: OnceLock<Instant>,
    agent_ready: OnceLock<Instant>,
    panicked: AtomicBool,
}

impl GuestSignals {
    /// Notes that the guest wrote to its console (only the first time counts).
    pub fn note_output(&self) {
        let _ = self.first_output.set(Instant::now());
    }

    /// Notes that guest userspace reported it is running (only the first time counts).
    pub fn note_init_reached(&self) {
        let _ = self.init_reached.set(Instant::now());
    }

    /// Notes that the guest kernel panicked.
    pub fn note_panic(&self) {
        self.panicked.store(true, Ordering::SeqCst);
    }

    /// When the guest first wrote to its console.
    pub fn first_output(&self) -> Option<Instant> {
        self.first_output.get().copied()
    }

    /// When guest userspace first reported in.
    pub fn init_reached(&self) -> Option<Instant> {
        self.init_reached.get().copied()
    }

    /// Notes that the guest agent listens (first time only).
    pub fn note_agent_ready(&self) {
        let _ = self.agent_ready.set(Instant::now());
    }

    /// When the guest agent first reported ready.
    pub fn agent_ready(&self) -> Option<Instant> {
        self.agent_ready.get().copied()
    }

    /// Whether the guest kernel panicked.
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }
}
