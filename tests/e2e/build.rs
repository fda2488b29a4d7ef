//! `arca build`: the scenario table of `tests/e2e/build-cases.sh` (each instruction's
//! effect in the built image, the cache, multi-stage and `--target`, `ARG` and
//! `--build-arg`, `.dockerignore`, `ADD`'s archives, a failing `RUN`, a Dockerfile on
//! stdin, hostile contexts) with `RUN` steps in host containers (`--isolation=process`)
//! on this host and in microVMs (`--isolation=vm`) where KVM works, where the table
//! also checks that the step ran under the guest kernel.

use arca_e2e::{
    assert_success, binary, case_table_on_host, is_root, stdout, vm_case_table_with_kvm,
};

#[test]
fn build_cases_pass_with_process_isolation_on_this_host() {
    if !is_root() {
        eprintln!("SKIP: process isolation needs root");
        return;
    }
    binary("arca");
    let out = case_table_on_host("build-cases.sh");
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

#[test]
fn build_cases_pass_in_microvms() {
    binary("arca");
    let out = vm_case_table_with_kvm("build-cases.sh", 1500);
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}
