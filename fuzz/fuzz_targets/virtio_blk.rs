//! Arbitrary descriptor chains, and arbitrary bytes where the request headers usually
//! are, through virtio-blk: any outcome but a panic or hang is fine.

#![no_main]

mod common;

use devices::virtio::{QueueContext, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(256);
    let (descs, payload) = data.split_at(split);
    let mem = common::memory();
    let _ = mem.write_slice(&payload[..payload.len().min(4096)], GuestAddress(0x1_0000));
    let vq = MockSplitQueue::new(&mem, 16);
    if vq.add_desc_chains(&common::descriptors(descs), 0).is_err() {
        return;
    }
    let Ok(mut queue) = vq.create_queue::<virtio_queue::Queue>() else { return };
    let interrupt = common::interrupt();
    let mut block = common::block();
    let mut ctx = QueueContext { queues: std::slice::from_mut(&mut queue), mem: &mem, interrupt: &interrupt };
    let _ = block.process_queue(0, &mut ctx);
});
