//! Arbitrary guest packets through the vsock host side, interleaved with delivery to
//! the guest, with deadlines passing (the clock jumps ahead) and `accept` failing now
//! and then: any outcome but a panic is fine.

#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use devices::virtio::vsock::backend::Backend;
use devices::virtio::vsock::packet::{HDR_SIZE, Header};
use libfuzzer_sys::fuzz_target;

fn backend() -> &'static Mutex<Backend> {
    static BACKEND: OnceLock<Mutex<Backend>> = OnceLock::new();
    BACKEND.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("arca-fuzz-vsock-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Mutex::new(Backend::new(3, &path).expect("vsock backend"))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut backend = backend().lock().unwrap_or_else(|p| p.into_inner());
    let mut rest = data;
    while rest.len() >= HDR_SIZE {
        let raw: [u8; HDR_SIZE] = rest[..HDR_SIZE].try_into().unwrap_or([0; HDR_SIZE]);
        let mut header = Header::from_bytes(&raw);
        // Aim most packets at the guest CID and host so they get past the first check.
        if raw[0] & 1 == 0 {
            header.src_cid = 3;
            header.dst_cid = 2;
            header.kind = 1;
        }
        rest = &rest[HDR_SIZE..];
        let len = (header.len as usize).min(rest.len());
        backend.from_guest(&header, &rest[..len]);
        rest = &rest[len..];
        while backend.next_rx(usize::from(raw[1]) * 64).is_some() {}
        match raw[2] {
            0xfe => backend.tick(Instant::now() + Duration::from_secs(3600)),
            0xfd => {
                let _ = backend.accept_failed(&std::io::Error::from_raw_os_error(24));
            }
            0xfc => backend.tick(Instant::now() + Duration::from_secs(1)),
            _ => {}
        }
        let _ = backend.next_deadline();
        backend.take_changes();
        backend.release_closed();
    }
});
