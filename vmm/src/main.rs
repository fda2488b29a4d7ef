//! `arca-vmm`: one microVM per process.

use std::process::ExitCode;

use clap::Parser;

/// Arca's virtual machine monitor.
#[derive(Debug, Parser)]
#[command(name = "arca-vmm", version, about)]
struct Args {
    /// Check whether this host's /dev/kvm can boot a standard Linux guest, say why not
    /// if it cannot, and exit 0 (usable) or 1 (not usable).
    #[arg(long, required = true)]
    check_kvm: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check_kvm {
        return check_kvm();
    }
    ExitCode::SUCCESS
}

fn check_kvm() -> ExitCode {
    match vmm::kvm_probe::probe_host() {
        Ok(kvm) => {
            let module = kvm
                .module
                .map(|m| format!(", module {m}"))
                .unwrap_or_default();
            println!(
                "KVM usable: {} (API version {}{module}); a test guest ran through KVM_RUN",
                kvm.device.display(),
                kvm.api_version
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("arca-vmm: KVM not usable: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// `err` and its sources, joined with ": ".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
