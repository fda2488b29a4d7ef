//! An `ADD` archive from an untrusted build context: arbitrary bytes read as a tar and
//! rewritten under a destination, as `arca build` writes the step's layer. Any error is
//! fine; a panic is not, nor a layer entry outside the destination, nor more content
//! than the limit.

#![no_main]

use arca_runtime::build::add::rewrite;
use arca_runtime::build::context::CopyOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = CopyOptions {
        owner: None,
        mode: None,
        limit: 64 << 10,
    };
    let mut tar = tar::Builder::new(Vec::new());
    if rewrite(data, "fuzz.tar", "dest", &opts, &mut tar).is_err() {
        return;
    }
    let layer = tar.into_inner().expect("a finished layer");
    let mut archive = tar::Archive::new(layer.as_slice());
    let mut content = 0u64;
    for entry in archive.entries().expect("the layer reads back") {
        let entry = entry.expect("each entry reads back");
        let path = entry.path().expect("a path").into_owned();
        assert!(path.starts_with("dest"), "{} is outside the destination", path.display());
        assert!(
            !path.components().any(|c| c == std::path::Component::ParentDir),
            "{} climbs",
            path.display()
        );
        content += entry.size();
    }
    assert!(content <= opts.limit, "{content} bytes of content past the limit");
});
