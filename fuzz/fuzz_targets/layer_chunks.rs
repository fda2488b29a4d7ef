//! What a hostile guest agent sends as a container's layer (`Channel::Layer`, `arca
//! build`'s `RUN` steps): arbitrary bytes through the host's chunk reader. Any error is
//! fine; a panic is not, nor more bytes passed on than the limit, nor success without
//! an end chunk in the input.

#![no_main]

use arca_agent_client::read_layer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit (small ones exercise the bound).
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let limit = u64::from(pick) * 97;
    let mut input = stream;
    let mut out = Vec::new();
    if let Ok(n) = read_layer(&mut input, &mut out, limit) {
        assert_eq!(n, out.len() as u64, "the size returned is what was passed on");
        // An end chunk (four zero bytes) was read, after the data it announces.
        assert!(stream.len() >= 4 + out.len(), "success without an end chunk");
    }
    assert!(out.len() as u64 <= limit, "{} bytes past the limit {limit}", out.len());
});
