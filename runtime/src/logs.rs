//! Container logs: `stdout.log` and `stderr.log` in the container's directory, rotated
//! like Docker's `local` log driver (`--log-opt max-size=..`, `max-file=..`; defaults
//! 20 MiB and 5 files per stream), so a container that prints without end cannot fill
//! the host's disk. Rotated files are `NAME.1` (the newest) to `NAME.<max-file - 1>`;
//! readers go through them oldest first, and a follower crosses a rotation.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of log options.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A `--log-opt` Arca does not know or cannot honour.
    #[error(
        "Unknown log opt '{0}' for the local log driver (Arca knows max-size, max-file and compress)"
    )]
    UnknownOption(String),
    /// A value that does not parse.
    #[error("Invalid value for log opt {key}: {value:?} ({why})")]
    BadValue {
        /// The option.
        key: &'static str,
        /// What was given.
        value: String,
        /// What is expected.
        why: &'static str,
    },
}

/// How logs rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Largest size of one file, bytes.
    pub max_size: u64,
    /// Most files kept per stream, the one written included.
    pub max_file: u32,
}

impl Default for LogOptions {
    /// Docker's `local` driver: 20 MiB, 5 files.
    fn default() -> Self {
        Self {
            max_size: 20 << 20,
            max_file: 5,
        }
    }
}

impl LogOptions {
    /// Parses `--log-opt` values (`key=value`, or several joined by commas) over the
    /// defaults.
    pub fn parse(opts: &[String]) -> Result<Self, LogError> {
        let mut o = Self::default();
        for item in opts.iter().flat_map(|s| s.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            match key {
                "max-size" => {
                    o.max_size = crate::parse_size(value).ok_or_else(|| LogError::BadValue {
                        key: "max-size",
                        value: value.into(),
                        why: "a positive size such as 10m or 512k",
                    })?;
                }
                "max-file" => {
                    o.max_file = value
                        .parse()
                        .ok()
                        .filter(|&n: &u32| (1..=1000).contains(&n))
                        .ok_or_else(|| LogError::BadValue {
                            key: "max-file",
                            value: value.into(),
                            why: "a count from 1 to 1000",
                        })?;
                }
                // Docker's local driver compresses rotated files; Arca keeps them
                // plain (`arca logs` reads them as they are): accepted, no effect.
                "compress" if matches!(value, "true" | "false") => {}
                _ => return Err(LogError::UnknownOption(item.into())),
            }
        }
        Ok(o)
    }
}

/// `path` with `.N` appended (`N` = 0 is `path` itself).
fn numbered(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// A log file that rotates once it would pass `max_size`.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    opts: LogOptions,
    file: File,
    written: u64,
}

impl RotatingLog {
    /// Opens `path` for appending (creating it).
    pub fn create(path: &Path, opts: LogOptions) -> io::Result<Self> {
        // A restarted container's log goes on where the last run's ended, as Docker's.
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            opts,
            file,
            written,
        })
    }

    /// `NAME` -> `NAME.1` -> ... ; the oldest beyond `max_file` goes.
    fn rotate(&mut self) -> io::Result<()> {
        if self.opts.max_file <= 1 {
            self.file = File::create(&self.path)?;
        } else {
            for n in (1..self.opts.max_file - 1).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, numbered(&self.path, 1))?;
            self.file = File::create(&self.path)?;
        }
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.opts.max_size {
            self.rotate()?;
        }
        // One write never makes a file larger than max_size: a longer buffer is split.
        let room = (self.opts.max_size - self.written).max(1) as usize;
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Reads a stream's log from its oldest rotated file on, and (with [`Self::follow`])
/// keeps reading as it grows and rotates.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    /// Rotated files still to read, oldest first.
    backlog: Vec<File>,
    current: Option<(File, u64)>,
}

impl LogReader {
    /// Opens every file of `path`'s stream that exists now.
    pub fn open(path: &Path) -> Self {
        let mut backlog = Vec::new();
        for n in (1..=1000).rev() {
            if let Ok(f) = File::open(numbered(path, n)) {
                backlog.push(f);
            }
        }
        let current = File::open(path)
            .ok()
            .and_then(|f| f.metadata().ok().map(|m| (f, m.ino())));
        Self {
            path: path.to_path_buf(),
            backlog,
            current,
        }
    }

    /// Reads what is there now into `out`; returns whether anything was read.
    pub fn drain(&mut self, out: &mut dyn Write) -> io::Result<bool> {
        let mut any = false;
        for mut f in std::mem::take(&mut self.backlog) {
            any |= io::copy(&mut f, out)? > 0;
        }
        loop {
            if let Some((f, _)) = &mut self.current {
                any |= copy_all(f, out)?;
            }
            // The file we hold was rotated away (we read it to its end): go on with
            // the new one.
            let now = fs::metadata(&self.path).ok().map(|m| m.ino());
            match (&self.current, now) {
                (Some((_, ino)), Some(new)) if *ino == new => return Ok(any),
                (_, None) => return Ok(any),
                _ => {
                    self.current = File::open(&self.path)
                        .ok()
                        .and_then(|f| f.metadata().ok().map(|m| (f, m.ino())));
                    if self.current.is_none() {
                        return Ok(any);
                    }
                }
            }
        }
    }
}

fn copy_all(from: &mut File, out: &mut dyn Write) -> io::Result<bool> {
    let mut buf = [0u8; 65536];
    let mut any = false;
    loop {
        match from.read(&mut buf)? {
            0 => return Ok(any),
            n => {
                out.write_all(&buf[..n])?;
                any = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(max_size: u64, max_file: u32) -> LogOptions {
        LogOptions { max_size, max_file }
    }

    #[test]
    fn log_opts_parse_like_docker_and_bad_ones_are_named() {
        assert_eq!(LogOptions::parse(&[]).unwrap(), LogOptions::default());
        let o = LogOptions::parse(&["max-size=10m".into(), "max-file=3".into()]).unwrap();
        assert_eq!(o, opts(10 << 20, 3));
        let o = LogOptions::parse(&["max-size=512k,max-file=2,compress=false".into()]).unwrap();
        assert_eq!(o, opts(512 << 10, 2));
        for (bad, needle) in [
            ("max-size=lots", "max-size"),
            ("max-size=0", "max-size"),
            ("max-file=0", "max-file"),
            ("mode=non-blocking", "Unknown log opt 'mode=non-blocking'"),
        ] {
            let e = LogOptions::parse(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn a_container_printing_without_end_uses_at_most_max_size_times_max_file() {
        // Hostile: a container that never stops printing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::create(&path, opts(1000, 3)).unwrap();
        let mut expected = Vec::new();
        for i in 0..500u32 {
            let line = format!("line {i}\n");
            log.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        log.write_all(&[b'x'; 5000]).unwrap();
        expected.extend_from_slice(&[b'x'; 5000]);
        let mut total = 0;
        for e in fs::read_dir(dir.path()).unwrap() {
            let len = e.unwrap().metadata().unwrap().len();
            assert!(len <= 1000, "a file of {len} bytes");
            total += len;
        }
        assert!(total <= 3000, "{total} bytes kept");
        assert!(!numbered(&path, 3).exists());
        // What is kept is the newest output, in order, read across the rotated files.
        let mut got = Vec::new();
        LogReader::open(&path).drain(&mut got).unwrap();
        assert_eq!(got.len() as u64, total);
        assert!(expected.ends_with(&got));
    }

    #[test]
    fn a_restarted_container_appends_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        RotatingLog::create(&path, opts(10, 2))
            .unwrap()
            .write_all(b"first\n")
            .unwrap();
        let mut again = RotatingLog::create(&path, opts(10, 2)).unwrap();
        again.write_all(b"2nd\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first\n2nd\n");
        // The size already there counts toward rotation.
        again.write_all(b"third\n").unwrap();
        assert_eq!(fs::read(numbered(&path, 1)).unwrap(), b"first\n2nd\n");
    }

    #[test]
    fn one_file_means_the_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::create(&path, opts(10, 1)).unwrap();
        log.write_all(b"0123456789").unwrap();
        log.write_all(b"abc").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_follower_crosses_a_rotation_without_losing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::create(&path, opts(8, 5)).unwrap();
        let mut reader = LogReader::open(&path);
        let mut got = Vec::new();
        log.write_all(b"aaaa\n").unwrap();
        reader.drain(&mut got).unwrap();
        log.write_all(b"bbbb\n").unwrap(); // rotates: aaaa is now stdout.log.1
        log.write_all(b"cc\n").unwrap();
        assert!(numbered(&path, 1).exists());
        reader.drain(&mut got).unwrap();
        assert_eq!(got, b"aaaa\nbbbb\ncc\n");
        assert!(!reader.drain(&mut got).unwrap(), "nothing new");
    }
}
