//! What a hostile container sends its network's resolver: arbitrary bytes as a DNS
//! query, decided against a table of names. Any answer or a forward is fine; a panic
//! is not, nor an answer that does not carry the query's id, nor one longer than a
//! query could make it.

#![no_main]

use std::net::Ipv4Addr;

use guest_agent::dns::{Decision, Names};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let names = Names::new(&[
        (Ipv4Addr::new(10, 89, 0, 2), vec!["web".into(), "0123456789ab".into()]),
        (Ipv4Addr::new(10, 89, 0, 3), vec!["db".into(), "web".into()]),
    ]);
    if let Decision::Answer(reply) = names.decide(data) {
        if !reply.is_empty() {
            assert!(reply.len() >= 12, "an answer has a header");
            assert_eq!(reply[..2], data[..2], "an answer carries the query's id");
            assert!(reply[2] & 0x80 != 0, "an answer is a response");
        }
        // The question (at most the message) and at most 32 records of 16 bytes or a
        // name of 255.
        assert!(reply.len() <= data.len() + 32 * 16 + 300, "{} bytes", reply.len());
    }
});
