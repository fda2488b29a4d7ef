//! What a hostile guest agent sends the host: arbitrary bytes, cut into arbitrary
//! reads, through the frame decoder the VMM's agent client uses (a `HelloReply`, then
//! `Response`s, as `guest-agent/client` reads them). Any error is fine; a panic,
//! or a buffer beyond one unfinished frame and the latest read, is not. Every message
//! that decodes must encode and decode back to itself.

#![no_main]

use arca_protocol::{FrameDecoder, HEADER_LEN, HelloReply, MAX_FRAME_LEN, Response, encode_frame};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A message the host decoded must encode, and decode back to itself.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(message: &T) {
    let frame = encode_frame(message).expect("a decoded message encodes");
    let mut again = FrameDecoder::new();
    again.push(&frame);
    let back: T = again.next().expect("re-decodes").expect("whole");
    assert_eq!(&back, message, "round trip");
}

fuzz_target!(|data: &[u8]| {
    // The first bytes give the read sizes (1 to 256 bytes each, in turn), the rest is
    // the stream.
    let split = data.len().min(8);
    let (sizes, mut stream) = data.split_at(split);
    let mut decoder = FrameDecoder::new();
    let mut hello = false;
    let mut turn = 0;
    while !stream.is_empty() {
        let size = sizes.get(turn % sizes.len().max(1)).map_or(1, |&s| usize::from(s) + 1);
        turn += 1;
        let (read, rest) = stream.split_at(size.min(stream.len()));
        stream = rest;
        decoder.push(read);
        // Bounded memory: what is held is at most one unfinished frame and this read.
        assert!(
            decoder.buffered() <= HEADER_LEN + MAX_FRAME_LEN + read.len(),
            "{} bytes buffered",
            decoder.buffered()
        );
        // The hello reply comes first, then responses, until the stream breaks (the
        // client drops the connection then).
        if !hello {
            match decoder.next::<HelloReply>() {
                Ok(Some(reply)) => {
                    round_trip(&reply);
                    hello = true;
                }
                Ok(None) => continue,
                Err(_) => return,
            }
        }
        loop {
            match decoder.next::<Response>() {
                Ok(Some(response)) => round_trip(&response),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
    let _ = decoder.take_remainder();
});
