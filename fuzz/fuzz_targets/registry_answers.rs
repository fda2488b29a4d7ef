//! What a hostile registry sends back to a session: a `WWW-Authenticate` challenge and
//! a redirect's `Location`. Arbitrary bytes, split at the first newline into the two
//! (manifests are serde's derives, fuzzed upstream). Any refusal is fine; a panic is not, nor a redirect
//! that leaves HTTPS for plain HTTP, nor a challenge parameter with untrimmed space in
//! its name.

#![no_main]

use arca_runtime::image::registry::{bearer_challenge, redirect_target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (challenge, location) = text.split_once('\n').unwrap_or((text.as_ref(), ""));
    if let Some(params) = bearer_challenge(challenge) {
        for key in params.keys() {
            assert_eq!(key.trim(), key, "{challenge:?}");
        }
    }
    for current in [
        "https://reg.example/v2/app/blobs/sha256:ab?x=1",
        "http://127.0.0.1:5000/v2/app/manifests/latest",
    ] {
        if let Ok(target) = redirect_target(current, location) {
            if current.starts_with("https://") {
                assert!(target.starts_with("https://"), "{location:?} -> {target:?}");
            }
        }
    }
});
