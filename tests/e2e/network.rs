//! Container networking: the scenario table of `tests/e2e/network-cases.sh` (networks
//! created, listed and refused; `-p` fetched from the host and refused when the port is
//! taken; containers reaching each other by name, not across networks, not from
//! `--network none`; nothing left after `rm -f`, after the sandbox is SIGKILLed, or
//! after the monitor and sandbox are SIGKILLed and `arca ps` runs), with
//! `--isolation=process` on this host, and in one lab run with `--isolation=vm` and
//! `--isolation=process` on L1.

use arca_e2e::{assert_success, binary, case_table_on_host, case_table_with_kvm, is_root, stdout};

fn tool(name: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(name).exists())
}

#[test]
fn network_cases_pass_with_process_isolation_on_this_host() {
    if !is_root() {
        eprintln!("SKIP: container networking needs root");
        return;
    }
    if !["ip", "nft", "wget", "socat"].iter().all(|t| tool(t))
        || !std::path::Path::new("/dev/net/tun").exists()
    {
        eprintln!("SKIP: ip, nft, wget and socat are needed (make test installs them)");
        return;
    }
    binary("arca");
    let out = case_table_on_host("network-cases.sh");
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}

#[test]
fn network_cases_pass_in_microvms_and_with_process_isolation_in_the_lab() {
    binary("arca");
    let out = case_table_with_kvm("network-cases.sh", 1500);
    eprintln!("{}", stdout(&out));
    assert_success(&out);
}
