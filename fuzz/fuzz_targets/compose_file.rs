//! A Compose file and `.env` file as a user may have been handed them (a cloned
//! repository's): arbitrary text through dotenv parsing, interpolation, YAML parsing
//! and the project model. Any project or error is fine; a panic is not, nor
//! interpolation output past its cap.

#![no_main]

use std::collections::BTreeMap;

use arca_runtime::compose::interpolate::{interpolate, parse_dotenv};
use arca_runtime::compose::load::Loaded;
use arca_runtime::compose::model::Project;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_dotenv(text);
    let env: BTreeMap<String, String> = [("A", "1"), ("EMPTY", ""), ("ISO", "process")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |n: &str| env.get(n).cloned();
    let mut unset = Vec::new();
    if let Ok(out) = interpolate(text, &lookup, &mut unset) {
        assert!(out.len() <= (1 << 20) + text.len(), "{} bytes", out.len());
    }
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(text) else {
        return;
    };
    // A directory with no files: env_file entries are not found.
    let loaded = Loaded {
        name: "fuzz".into(),
        dir: "/nonexistent-arca-fuzz".into(),
        files: Vec::new(),
        env,
        doc,
        warnings: Vec::new(),
        profiles: vec!["dev".into()],
        targeted: Vec::new(),
    };
    if let Ok(p) = Project::from_loaded(loaded) {
        for s in p.services.values() {
            for (n, name) in p.container_names(s).iter().enumerate() {
                let _ = p.run_options(s, name, n as u32 + 1, false);
            }
        }
        let names: Vec<String> = p.services.keys().cloned().collect();
        let _ = p.order(&names);
    }
});
