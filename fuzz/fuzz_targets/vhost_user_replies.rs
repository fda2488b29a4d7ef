//! What a hostile vhost-user backend (virtiofsd's place) answers the VMM's handshake:
//! arbitrary bytes, then end of stream. Setting up virtio-fs must return (a device, or
//! an error) without panicking or hanging.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use devices::virtio::fs::{Fs, FsConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("arca-fuzz-vu-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let socket = dir.join("backend.sock");
    let _ = std::fs::remove_file(&socket);
    let Ok(listener) = UnixListener::bind(&socket) else { return };
    let replies = data.to_vec();
    let backend = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let _ = s.write_all(&replies);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 4096];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    let config = FsConfig { tag: "fuzz".into(), socket, queue_size: 16 };
    // A short watchdog: a stream that ends is an error at once, so it rarely fires.
    drop(Fs::with_timeout(&config, Duration::from_millis(200)));
    let _ = backend.join();
});
