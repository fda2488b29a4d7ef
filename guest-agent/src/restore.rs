//! A microVM restored from a snapshot makes itself its own (`Request::Restored`): every
//! VM restored from one template woke with the template's kernel random state, its
//! clock, its network device's MAC and empty placeholder disks.

use std::time::{Duration, Instant};

use arca_protocol::{AgentError, ErrorCode, MAX_ENTROPY, MIN_ENTROPY, RestoredSandbox};

use crate::sys;

/// How long the guest's block layer has to read the sizes of its new disks.
const DISK_PATIENCE: Duration = Duration::from_secs(5);

/// Credits and reseeds the host's entropy, sets the host's time and `eth0`'s MAC, and
/// waits until each disk has its new size.
pub fn apply(r: &RestoredSandbox) -> Result<(), AgentError> {
    let bad = |m: String| AgentError::new(ErrorCode::BadRequest, m);
    let failed = |what: &str, e: std::io::Error| {
        AgentError::new(
            ErrorCode::Internal,
            format!("Cannot {what} after a restore: {e}"),
        )
    };
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&r.entropy.len()) {
        return Err(bad(format!(
            "A restore brings {MIN_ENTROPY} to {MAX_ENTROPY} bytes of entropy, not {}",
            r.entropy.len()
        )));
    }
    for disk in &r.disks {
        if !valid_disk_name(&disk.name) {
            return Err(bad(format!("Invalid disk name {:?}", disk.name)));
        }
    }
    sys::add_entropy(&r.entropy).map_err(|e| failed("reseed the random number generator", e))?;
    sys::set_time(r.time_ns).map_err(|e| failed("set the clock", e))?;
    if let Some(mac) = r.mac {
        sys::set_mac("eth0", mac).map_err(|e| failed("set eth0's MAC address", e))?;
    }
    let deadline = Instant::now() + DISK_PATIENCE;
    for disk in &r.disks {
        let path = format!("/sys/block/{}/size", disk.name);
        loop {
            let seen = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            if seen == Some(disk.sectors) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(AgentError::new(
                    ErrorCode::Internal,
                    format!(
                        "The guest still sees {} as {} sectors, not {}, {} s after a restore",
                        disk.name,
                        seen.map_or("no".to_owned(), |n| n.to_string()),
                        disk.sectors,
                        DISK_PATIENCE.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// A block device name as the guest's virtio-blk driver makes them.
fn valid_disk_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_cannot_leave_sys_block() {
        assert!(valid_disk_name("vda"));
        assert!(valid_disk_name("vdb1"));
        for bad in ["", "../vda", "vda/size", "VDA", "a".repeat(16).as_str()] {
            assert!(!valid_disk_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn too_little_or_too_much_entropy_is_refused_before_anything_changes() {
        for len in [0, MIN_ENTROPY - 1, MAX_ENTROPY + 1] {
            let r = RestoredSandbox {
                entropy: vec![1; len],
                time_ns: 0,
                mac: None,
                disks: vec![],
            };
            let err = apply(&r).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{len}");
        }
    }
}
