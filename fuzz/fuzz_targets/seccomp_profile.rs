//! A seccomp profile from `--security-opt seccomp=FILE` (Docker's JSON format): arbitrary
//! bytes through the parser, the resolution for a capability set and architecture (both
//! from the input), and the agent's compiler. Any error is fine; a panic is not, nor a
//! compiled filter longer than the kernel takes. A profile that parses must serialize
//! and parse back to itself.

#![no_main]

use arca_protocol::{Capabilities, Platform, SeccompProfile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, json) = data.split_at(data.len().min(9));
    let mut caps = [0u8; 8];
    caps[..head.len().min(8)].copy_from_slice(&head[..head.len().min(8)]);
    let caps = Capabilities(u64::from_le_bytes(caps) & Capabilities::all().0);
    let arch = match head.get(8).copied().unwrap_or(0) % 4 {
        0 => "amd64",
        1 => "arm64",
        2 => "s390x",
        _ => "x86",
    };
    let Ok(profile) = SeccompProfile::from_json(json) else {
        return;
    };
    let text = serde_json::to_vec(&profile).expect("a parsed profile serializes");
    assert_eq!(SeccompProfile::from_json(&text).expect("re-parses"), profile);
    let Ok(resolved) = profile.resolve(caps, Platform { arch, kernel: (6, 12) }) else {
        return;
    };
    if let Ok(filters) = guest_agent::seccomp::compile(&resolved) {
        assert!(filters.len() <= 1 + resolved.rules.len());
    }
});
