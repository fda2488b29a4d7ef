//! Arbitrary register reads and writes on a virtio-mmio transport with a virtio-blk
//! device behind it, queue notifications included: any outcome but a panic is fine.

#![no_main]

#[allow(dead_code)]
mod common;

use devices::bus::BusDevice;
use devices::virtio::mmio::MmioTransport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut transport) = MmioTransport::new(Box::new(common::block()), common::memory(), common::interrupt()) else {
        return;
    };
    for op in data.chunks_exact(8).take(512) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x180);
        let size = [1usize, 2, 4, 8][usize::from(op[3] % 4)];
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        if op[0] & 1 == 0 {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..size]);
        } else {
            let bytes = u64::from(value).to_le_bytes();
            transport.write(offset, &bytes[..size]);
        }
    }
});
