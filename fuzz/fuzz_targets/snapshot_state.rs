//! A snapshot state file, which a guest that took over its VMM could have written:
//! arbitrary bytes given to the parser a restore uses. Any refusal is fine; a panic is
//! not, nor a file accepted whose vCPU or device counts disagree with its machine.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmm::persist::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = Snapshot::parse(data, Path::new("fuzz.json")) {
        let m = &snapshot.machine;
        assert_eq!(snapshot.vcpus.len(), usize::from(m.cpus));
        let devices = m.disks.len() + usize::from(m.vsock.is_some()) + usize::from(m.net.is_some());
        assert_eq!(snapshot.devices.len(), devices);
    }
});
