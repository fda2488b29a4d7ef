//! Container logs: `stdout.log` and `stderr.log` in the container's directory, rotated
//! like Docker's `local` log driver (`--log-opt max-size=..`, `max-file=..`; defaults
//! 20 MiB and 5 files per stream), so a container that prints without end cannot fill
//! the host's disk. Rotated files are `NAME.1` (the newest) to `NAME.<max-file - 1>`;
//! readers go through them oldest first, and a follower crosses a rotation.
//!
//! Each file holds records in the CRI logging format that containerd and the kubelet
//! write: `TIME STREAM F|P CONTENT`, a line each, `TIME` in RFC 3339 with nanoseconds,
//! `F` for content that ended a line and `P` for a piece of one (output that came
//! without its newline yet, or a line longer than 16 KiB). `logs -t`, `--since`,
//! `--until` and `--tail` read them; a rotation falls between records.

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

/// Longest content of one record: a longer line is written as several `P` records
/// (Docker's and containerd's 16 KiB).
const MAX_RECORD: usize = 16 << 10;

/// Bytes of a record before its content: `2026-12-06T20:42:04.123456789Z stdout F `.
const HEADER_LEN: usize = 40;

/// The time now: seconds and nanoseconds since the epoch.
fn now_nanos() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// A log file that rotates once it would pass `max_size`, written as records.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    opts: LogOptions,
    file: File,
    written: u64,
    /// `stdout` or `stderr`, from the file's name.
    stream: &'static str,
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
        let stream = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) if n.starts_with("stderr") => "stderr",
            _ => "stdout",
        };
        Ok(Self {
            path: path.to_path_buf(),
            opts,
            file,
            written,
            stream,
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

    /// Writes one record, in one write, rotating first if it would not fit.
    fn record(&mut self, content: &[u8], full: bool) -> io::Result<()> {
        let (secs, nanos) = now_nanos();
        let tag = if full { 'F' } else { 'P' };
        let mut rec = format!(
            "{} {} {tag} ",
            crate::rfc3339_nanos(secs, nanos),
            self.stream
        )
        .into_bytes();
        rec.extend_from_slice(content);
        rec.push(b'\n');
        if self.written > 0 && self.written + rec.len() as u64 > self.opts.max_size {
            self.rotate()?;
        }
        self.file.write_all(&rec)?;
        self.written += rec.len() as u64;
        Ok(())
    }
}

impl Write for RotatingLog {
    /// Takes all of `buf`: a record per line, and a `P` record for what comes
    /// without its newline or would make a record longer than a file may be.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = usize::try_from(self.opts.max_size)
            .unwrap_or(usize::MAX)
            .saturating_sub(HEADER_LEN + 1)
            .clamp(1, MAX_RECORD);
        let mut rest = buf;
        while !rest.is_empty() {
            let (piece, full, used) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) if i <= room => (&rest[..i], true, i + 1),
                _ => {
                    let n = rest.len().min(room);
                    (&rest[..n], false, n)
                }
            };
            self.record(piece, full)?;
            rest = &rest[used..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// One record of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When it was written: seconds and nanoseconds since the epoch (0 for a line of a
    /// log written before records existed).
    pub time: (u64, u32),
    /// Whether it is a piece of a line (no newline after it).
    pub partial: bool,
    /// What the container wrote, without the newline.
    pub content: Vec<u8>,
}

impl LogEntry {
    /// Parses a record (without its newline); a line that is not one is kept whole as
    /// a line of unknown time.
    pub fn parse(line: &[u8]) -> Self {
        let parsed = (|| {
            let mut parts = line.splitn(4, |&b| b == b' ');
            let time = crate::parse_rfc3339_nanos(std::str::from_utf8(parts.next()?).ok()?)?;
            let stream = parts.next()?;
            if stream != b"stdout" && stream != b"stderr" {
                return None;
            }
            let partial = match parts.next()? {
                b"F" => false,
                b"P" => true,
                _ => return None,
            };
            Some(Self {
                time,
                partial,
                content: parts.next().unwrap_or_default().to_vec(),
            })
        })();
        parsed.unwrap_or_else(|| Self {
            time: (0, 0),
            partial: false,
            content: line.to_vec(),
        })
    }

    /// The bytes the container wrote: its content, and the newline of a whole line.
    pub fn output(&self) -> Vec<u8> {
        let mut out = self.content.clone();
        if !self.partial {
            out.push(b'\n');
        }
        out
    }
}

/// Reads a stream's log from its oldest rotated file on, and (with repeated
/// [`Self::drain`]) keeps reading as it grows and rotates.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    /// Rotated files still to read, oldest first.
    backlog: Vec<File>,
    current: Option<(File, u64)>,
    /// The start of a record not yet written whole.
    pending: Vec<u8>,
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
            pending: Vec::new(),
        }
    }

    /// Reads the records there now into `out`; returns whether anything was read.
    pub fn drain(&mut self, out: &mut Vec<LogEntry>) -> io::Result<bool> {
        let mut any = false;
        for mut f in std::mem::take(&mut self.backlog) {
            any |= self.read_records(&mut f, out)?;
            self.end_of_file(out);
        }
        loop {
            if let Some((mut f, ino)) = self.current.take() {
                any |= self.read_records(&mut f, out)?;
                self.current = Some((f, ino));
            }
            // The file we hold was rotated away (we read it to its end): go on with
            // the new one.
            let now = fs::metadata(&self.path).ok().map(|m| m.ino());
            match (&self.current, now) {
                (Some((_, ino)), Some(new)) if *ino == new => return Ok(any),
                (_, None) => return Ok(any),
                _ => {
                    // What the writer added to the file we hold before it rotated it
                    // away (it no longer grows).
                    if let Some((mut f, ino)) = self.current.take() {
                        any |= self.read_records(&mut f, out)?;
                        self.current = Some((f, ino));
                    }
                    self.end_of_file(out);
                    // What rotated in after the file we held (several rotations may
                    // have come since the last drain), oldest first.
                    let held = self.current.as_ref().map(|(_, ino)| *ino);
                    let mut newer = Vec::new();
                    for n in 1..=1000 {
                        let Ok(f) = File::open(numbered(&self.path, n)) else {
                            break;
                        };
                        if held.is_some() && f.metadata().ok().map(|m| m.ino()) == held {
                            break;
                        }
                        newer.push(f);
                    }
                    for mut f in newer.into_iter().rev() {
                        any |= self.read_records(&mut f, out)?;
                        self.end_of_file(out);
                    }
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

    /// Reads `from` to its end, keeping a last record without its newline pending.
    fn read_records(&mut self, from: &mut File, out: &mut Vec<LogEntry>) -> io::Result<bool> {
        let mut buf = [0u8; 65536];
        let mut any = false;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                return Ok(any);
            }
            any = true;
            self.pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(i) = self.pending[start..].iter().position(|&b| b == b'\n') {
                out.push(LogEntry::parse(&self.pending[start..start + i]));
                start += i + 1;
            }
            self.pending.drain(..start);
        }
    }

    /// A file read to its end that will not grow: what is pending in it is a record.
    fn end_of_file(&mut self, out: &mut Vec<LogEntry>) {
        if !self.pending.is_empty() {
            out.push(LogEntry::parse(&std::mem::take(&mut self.pending)));
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

    /// What a reader gets back, as the container wrote it.
    fn read_back(path: &Path) -> Vec<u8> {
        let mut got = Vec::new();
        LogReader::open(path).drain(&mut got).unwrap();
        got.iter().flat_map(LogEntry::output).collect()
    }

    #[test]
    fn a_container_printing_without_end_uses_at_most_max_size_times_max_file() {
        // Hostile: a container that never stops printing, in lines and in one long
        // line without a newline.
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
        let got = read_back(&path);
        assert!(!got.is_empty());
        assert!(expected.ends_with(&got));
    }

    #[test]
    fn records_are_cri_lines_with_times_and_pieces_rebuild_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr.log");
        let mut log = RotatingLog::create(&path, LogOptions::default()).unwrap();
        log.write_all(b"one\ntw").unwrap();
        log.write_all(b"o\n").unwrap();
        log.write_all(&[b'y'; 40000]).unwrap();
        log.write_all(b"no newline").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("Z stderr F one"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stderr P tw"), "{}", lines[1]);
        assert!(lines[2].ends_with(" stderr F o"), "{}", lines[2]);
        // 40000 bytes: three pieces of at most 16 KiB.
        assert_eq!(lines.len(), 7);
        let mut got = Vec::new();
        LogReader::open(&path).drain(&mut got).unwrap();
        assert!(got[0].time.0 > 1_700_000_000);
        assert!(got.windows(2).all(|w| w[0].time <= w[1].time));
        let mut expected = b"one\ntwo\n".to_vec();
        expected.extend_from_slice(&[b'y'; 40000]);
        expected.extend_from_slice(b"no newline");
        assert_eq!(
            got.iter().flat_map(LogEntry::output).collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn a_log_written_before_records_reads_as_lines_of_unknown_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        fs::write(&path, b"plain\n2026-12-06T00:00:00Z stdout X odd\nlast").unwrap();
        let mut got = Vec::new();
        LogReader::open(&path).drain(&mut got).unwrap();
        assert_eq!(got.len(), 2, "the unfinished last line stays pending");
        assert_eq!(got[0].time, (0, 0));
        assert_eq!(got[1].content, b"2026-12-06T00:00:00Z stdout X odd");
    }

    #[test]
    fn a_restarted_container_appends_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        RotatingLog::create(&path, opts(100, 2))
            .unwrap()
            .write_all(b"first\n")
            .unwrap();
        let mut again = RotatingLog::create(&path, opts(100, 2)).unwrap();
        again.write_all(b"2nd\n").unwrap();
        assert_eq!(read_back(&path), b"first\n2nd\n");
        // The size already there counts toward rotation.
        again.write_all(b"third\n").unwrap();
        assert_eq!(read_back(&numbered(&path, 1)), b"first\n2nd\n");
        assert_eq!(read_back(&path), b"first\n2nd\nthird\n");
    }

    #[test]
    fn one_file_means_the_log_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::create(&path, opts(50, 1)).unwrap();
        log.write_all(b"0123456789").unwrap();
        log.write_all(b"abc").unwrap();
        assert_eq!(read_back(&path), b"abc");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_follower_crosses_a_rotation_without_losing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let mut log = RotatingLog::create(&path, opts(50, 5)).unwrap();
        let mut reader = LogReader::open(&path);
        let mut got = Vec::new();
        log.write_all(b"aaaa\n").unwrap();
        reader.drain(&mut got).unwrap();
        // Two rotations before the next read: aaaa is in stdout.log.2, bbbb in .1.
        log.write_all(b"bbbb\n").unwrap();
        log.write_all(b"cc\n").unwrap();
        assert!(numbered(&path, 2).exists());
        reader.drain(&mut got).unwrap();
        let text: Vec<u8> = got.iter().flat_map(LogEntry::output).collect();
        assert_eq!(text, b"aaaa\nbbbb\ncc\n");
        assert!(!reader.drain(&mut got).unwrap(), "nothing new");
    }
}
