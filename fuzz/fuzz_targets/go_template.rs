//! A user's `--format`/`inspect -f` template: arbitrary bytes as template text, parsed
//! and run against a fixed `docker inspect`-shaped value, with the normal and the
//! header functions and as a list row (strict). Any error is fine; a panic is not, nor
//! output past the engine's bound, nor a parse that succeeds once and fails again.

#![no_main]

use arca_runtime::template::{Functions, MAX_OUTPUT, Template};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = Template::parse(text) else {
        return;
    };
    assert!(Template::parse(text).is_ok(), "parses the same way twice");
    let value = json!({
        "Id": "0123456789abcdef",
        "Name": "/web",
        "Args": ["-c", "sleep 1000"],
        "State": {"Status": "running", "Running": true, "Pid": 42, "ExitCode": 0},
        "Config": {"Env": ["A=1", "B=2"], "Labels": {"a": "b"}, "Entrypoint": null},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2"}}},
        "Ratio": 0.5,
        "Big": 1_000_000,
    });
    for (functions, strict) in [
        (Functions::Normal, false),
        (Functions::Header, false),
        (Functions::Normal, true),
    ] {
        if let Ok(out) = template.execute_with(&value, functions, strict) {
            assert!(out.len() <= MAX_OUTPUT);
        }
    }
});
