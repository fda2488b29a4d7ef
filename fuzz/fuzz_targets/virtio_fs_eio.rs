//! Arbitrary descriptor chains and arbitrary FUSE headers through virtio-fs once its
//! backend is gone (the device then answers every request with EIO itself): any outcome
//! but a panic or hang is fine, and every chain completes.

#![no_main]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::{Mutex, OnceLock};

use devices::virtio::fs::{Fs, FsConfig};
use devices::virtio::{QueueContext, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

/// A device whose handshake went through with a minimal backend, then marked gone.
fn device() -> &'static Mutex<Fs> {
    static FS: OnceLock<Mutex<Fs>> = OnceLock::new();
    FS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("arca-fuzz-fs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let socket = dir.join("backend.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            // Replies to SET_OWNER (none), GET_FEATURES, GET_PROTOCOL_FEATURES (none
            // offered), then SET_PROTOCOL_FEATURES (none).
            let mut hdr = [0u8; 12];
            let reply = |s: &mut std::os::unix::net::UnixStream, code: u32, v: u64| {
                let mut out = Vec::new();
                out.extend_from_slice(&code.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
                s.write_all(&out).expect("reply");
            };
            while s.read_exact(&mut hdr).is_ok() {
                let code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
                let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
                let mut body = vec![0u8; size];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                match code {
                    1 => reply(&mut s, 1, 1 << 32 | 1 << 30),
                    15 => reply(&mut s, 15, 0),
                    _ => {}
                }
            }
        });
        let fs = Fs::new(&FsConfig { tag: "fuzz".into(), socket, queue_size: 16 }).expect("handshake");
        fs.health().mark_gone("fuzzing");
        Mutex::new(fs)
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(256);
    let (descs, payload) = data.split_at(split);
    let mem = common::memory();
    let _ = mem.write_slice(&payload[..payload.len().min(4096)], GuestAddress(0x1_0000));
    let vq = MockSplitQueue::new(&mem, 16);
    if vq.add_desc_chains(&common::descriptors(descs), 0).is_err() {
        return;
    }
    let Ok(queue) = vq.create_queue::<virtio_queue::Queue>() else { return };
    let Ok(hiprio) = virtio_queue::Queue::new(16) else { return };
    let mut queues = [hiprio, queue];
    let interrupt = common::interrupt();
    let mut fs = device().lock().unwrap_or_else(|p| p.into_inner());
    let mut ctx = QueueContext { queues: &mut queues, mem: &mem, interrupt: &interrupt };
    let _ = fs.process_queue(1, &mut ctx);
});
