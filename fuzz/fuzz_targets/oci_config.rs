//! An OCI bundle's `config.json` as podman, containerd or a hostile caller may write
//! it: arbitrary bytes through `oci-spec`'s parsing and Arca's mapping to the agent's
//! spec. Any container or refusal is fine; a panic is not, nor a mapped spec that the
//! agent's own checks would refuse.

#![no_main]

use arca_oci::spec::{parse, translate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = parse(data) else {
        return;
    };
    if let Ok(c) = translate(&spec, std::path::Path::new("/bundle"), "fuzz") {
        c.spec.validate().expect("a mapped spec passes the agent's checks");
        for s in &c.spec.sysctls {
            assert!(s.proc_path().starts_with("/proc/sys/") && !s.proc_path().contains(".."));
        }
    }
});
