//! A Dockerfile and a `.dockerignore` from an untrusted build context: arbitrary bytes
//! parsed as a Dockerfile, and every argument that the builder would substitute
//! variables in run through Docker's word processing with a fixed environment (one
//! variable holding a large value); the same bytes as a `.dockerignore`, matched
//! against a few paths. Any error is fine; a panic is not, nor a word past the bound,
//! nor a parse that differs the second time.

#![no_main]

use arca_runtime::build::dockerfile::{self, Kind};
use arca_runtime::build::ignore::Ignore;
use arca_runtime::build::words::{self, MAX_WORD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ignore) = Ignore::parse(text) {
        for path in ["a", "a/b/c.txt", ".", "../x", "Dockerfile", "node_modules/x/y"] {
            let _ = ignore.excludes(path);
        }
    }
    let Ok(file) = dockerfile::parse(text) else {
        return;
    };
    assert_eq!(dockerfile::parse(text).ok(), Some(file.clone()), "parses the same way twice");
    let big = "x".repeat(64 * 1024);
    let env = move |name: &str| match name {
        "BIG" => Some(big.clone()),
        "EMPTY" => Some(String::new()),
        "A" => Some("a b".to_string()),
        _ => None,
    };
    let mut texts: Vec<String> = Vec::new();
    for i in &file.instructions {
        match &i.kind {
            Kind::Env(pairs) | Kind::Label(pairs) => {
                texts.extend(pairs.iter().map(|(_, v)| v.clone()));
            }
            Kind::Arg(pairs) => texts.extend(pairs.iter().filter_map(|(_, v)| v.clone())),
            Kind::Workdir(t) | Kind::User(t) | Kind::Expose(t) | Kind::StopSignal(t) => {
                texts.push(t.clone())
            }
            Kind::From { image, .. } => texts.push(image.clone()),
            Kind::Copy(s) | Kind::Add(s) => {
                texts.extend(s.sources.iter().cloned());
                texts.push(s.dest.clone());
            }
            _ => {}
        }
    }
    for t in texts {
        if let Ok(w) = words::expand(&t, &env, file.escape) {
            assert!(w.len() <= MAX_WORD);
        }
        if let Ok(fields) = words::expand_fields(&t, &env, file.escape) {
            assert!(fields.iter().all(|f| f.len() <= MAX_WORD));
        }
    }
});
