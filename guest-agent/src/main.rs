//! `arca-agent`: PID 1 of an Arca microVM.
//!
//! This first version reads and validates its settings from the kernel command line and
//! reports them; the init duties and the container protocol come with the guest-agent
//! work (see docs/architecture.md).

use anyhow::Context;
use guest_agent::cmdline::AgentSettings;

fn main() -> anyhow::Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("Cannot read /proc/cmdline")?;
    let settings = AgentSettings::from_cmdline(&cmdline).context("Bad kernel command line")?;
    println!("arca-agent: settings {settings:?}");
    Ok(())
}
