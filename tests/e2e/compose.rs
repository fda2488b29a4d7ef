//! `arca compose`: the scenario table of `tests/e2e/compose-cases.sh` (the issue's
//! three-service application: a one-shot job filling a named volume, a web server that
//! waits for it to complete and is healthy after, a client that fetches it by service
//! name; the published port from the host; `ps`, `logs`, `exec`, `run --rm`, `stop`,
//! `start`, a second file merged over the first recreating only what changed; `down -v`
//! leaving no container, network, volume, link or nft table; a failing dependency, a
//! foreground `up`, and bad input named with exit 1), with `--isolation=process` on this
//! host and in microVMs in the lab.

use arca_e2e::{
    assert_success, binary, case_table_on_host, is_root, stdout, vm_case_table_with_kvm,
};

fn tool(name: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(name).exists())
}

#[test]
fn compose_cases_pass_with_process_isolation_on_this_host() {
    if !is_root() {
        eprintln!("SKIP: container networking needs root");
        return;
    }
    if !["ip", "nft", "wget"].iter().all(|t| tool(t)) {
        eprintln!("SKIP: ip, nft and wget are needed (make test installs them)");
        return;
    }
    binary("arca");
    let out = case_table_on_host("compose-cases.sh");
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

#[test]
fn compose_cases_pass_in_microvms() {
    binary("arca");
    let out = vm_case_table_with_kvm("compose-cases.sh", 900);
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}
