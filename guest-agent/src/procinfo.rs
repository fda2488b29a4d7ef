//! What `top` shows of a container's processes, read from `/proc` as `ps -ef` reads it:
//! parent, effective uid, start time, CPU time, terminal and command line.

use std::fs;

use arca_protocol::ProcessInfo;

/// `/proc`'s clock ticks per second (USER_HZ, 100 on every architecture Arca runs on).
const TICKS_PER_SECOND: u64 = 100;

/// The fields of `/proc/PID/stat` after the command name: state is [0], ppid [1],
/// tty_nr [4], utime [11], stime [12], starttime [19].
fn stat_fields(stat: &str) -> Option<(String, Vec<&str>)> {
    // The name is in parentheses and may hold spaces and parentheses itself.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    Some((comm, stat.get(close + 1..)?.split_whitespace().collect()))
}

/// `ps`'s name for terminal device number `tty_nr`.
fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        0 => "?".into(),
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 if minor < 64 => format!("tty{minor}"),
        4 => format!("ttyS{}", minor - 64),
        _ => "?".into(),
    }
}

/// When the system booted, seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> u64 {
    fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One process, if it still exists.
fn describe_one(pid: i32, boot: u64) -> Option<ProcessInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, f) = stat_fields(&stat)?;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cmd = if args.is_empty() {
        format!("[{comm}]")
    } else {
        args.join(" ")
    };
    Some(ProcessInfo {
        pid: u32::try_from(pid).ok()?,
        ppid: u32::try_from(num(1)).unwrap_or(0),
        uid,
        started: boot + num(19) / TICKS_PER_SECOND,
        cpu_ms: (num(11) + num(12)) * 1000 / TICKS_PER_SECOND,
        tty: tty_name(num(4)),
        cmd,
    })
}

/// The processes `pids` (those that are gone by now are left out), by pid.
pub fn describe(pids: &[i32]) -> Vec<ProcessInfo> {
    let boot = boot_time();
    let mut out: Vec<ProcessInfo> = pids.iter().filter_map(|&p| describe_one(p, boot)).collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// `root` and every process below it (from the parents in `/proc/*/stat`).
pub fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let (_, f) = stat_fields(&stat)?;
            Some((pid, f.get(1)?.parse().ok()?))
        })
        .collect();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(c, pp)| *pp == p && !out.contains(c))
                .map(|(c, _)| *c)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let (comm, f) = stat_fields(
            "42 (a) b (c)) S 7 42 42 34816 42 4194560 1 0 0 0 150 25 0 0 20 0 1 0 9000 0",
        )
        .unwrap();
        assert_eq!(comm, "a) b (c)");
        assert_eq!(
            (f[0], f[1], f[4], f[11], f[12], f[19]),
            ("S", "7", "34816", "150", "25", "9000")
        );
        assert_eq!(tty_name(34816), "pts/0");
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name((4 << 8) | 65), "ttyS1");
    }

    #[test]
    fn this_process_and_its_children_are_described() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let all = descendants(me);
        assert!(all.contains(&(child.id() as i32)), "{all:?}");
        let got = describe(&[me, child.id() as i32, i32::MAX]);
        assert_eq!(got.len(), 2);
        let c = got.iter().find(|p| p.pid == child.id()).unwrap();
        assert_eq!((c.ppid, c.cmd.as_str()), (me as u32, "sleep 5"));
        assert!(c.started > 1_700_000_000);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
