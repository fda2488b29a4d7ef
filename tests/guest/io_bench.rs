//! `io-bench`: the file I/O probe of `tests/bench/storage.sh` (the busybox image has no
//! fio, so the bench builds this with `rustc -C target-feature=+crt-static` and puts it
//! in the image). Each figure is printed as `RESULT NAME VALUE UNIT [NOTE]`.
//!
//!   io-bench files DIR MIB SECS   sequential write (1 MiB blocks, then fsync) and read
//!                                 of a MIB MiB file, then 4 KiB random reads and
//!                                 writes over it for SECS seconds each
//!   io-bench time CMD [ARG]...    runs CMD and prints its wall time (ms)
//!
//! Between the write and the read the file's pages are dropped from the page cache
//! (`posix_fadvise(DONTNEED)`, which works where `/proc/sys/vm/drop_caches` is
//! read-only, as in a container), so the read crosses to the storage. The random
//! phases open the file with `O_DIRECT` where the filesystem allows it (each request
//! then reaches the device or the virtio-fs server) and buffered otherwise (tmpfs,
//! where the page cache is the storage); the mode is printed.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const O_DIRECT: i32 = 0o40000;
const POSIX_FADV_DONTNEED: i32 = 4;
const BLOCK: usize = 1 << 20;
const PAGE: usize = 4096;

unsafe extern "C" {
    fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
}

/// A zeroed buffer aligned for `O_DIRECT`.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = Layout::from_size_align(len, PAGE).expect("buffer layout");
        // SAFETY: the layout has a non-zero size; a null result is checked.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, layout }
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: ptr was allocated with this layout and is freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// xorshift64: cheap and good enough to pick offsets and fill blocks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn drop_cache(f: &File) {
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is open.
    let rc = unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
    if rc != 0 {
        eprintln!("io-bench: posix_fadvise(DONTNEED) failed: errno {rc}");
    }
}

fn mbps(bytes: u64, d: Duration) -> String {
    format!("{:.1}", bytes as f64 / 1e6 / d.as_secs_f64())
}

/// Opens `path` for 4 KiB random I/O: `O_DIRECT` if the filesystem takes it.
fn open_random(path: &Path) -> std::io::Result<(File, &'static str)> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    match o.clone().custom_flags(O_DIRECT).open(path) {
        Ok(f) => Ok((f, "O_DIRECT")),
        Err(e) if e.raw_os_error() == Some(22) => Ok((o.open(path)?, "buffered")),
        Err(e) => Err(e),
    }
}

fn files(dir: &Path, mib: u64, secs: u64) -> std::io::Result<()> {
    let path = dir.join("io-bench.dat");
    let size = mib * BLOCK as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = Aligned::new(BLOCK);
    for chunk in buf.bytes().chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }

    let mut f = File::create(&path)?;
    let t = Instant::now();
    for _ in 0..mib {
        f.write_all(buf.bytes())?;
    }
    f.sync_all()?;
    println!("RESULT seq-write {} MB/s", mbps(size, t.elapsed()));
    drop_cache(&f);
    drop(f);

    let mut f = File::open(&path)?;
    drop_cache(&f);
    let t = Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(buf.bytes())?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let d = t.elapsed();
    assert_eq!(total, size, "short read");
    println!("RESULT seq-read {} MB/s", mbps(size, d));
    drop(f);

    let (f, mode) = open_random(&path)?;
    drop_cache(&f);
    let mut page = Aligned::new(PAGE);
    let pages = size / PAGE as u64;
    for (name, write) in [("rand-read", false), ("rand-write", true)] {
        let limit = Duration::from_secs(secs);
        let t = Instant::now();
        let mut ops = 0u64;
        while t.elapsed() < limit {
            // A batch between clock reads.
            for _ in 0..16 {
                let off = (rng.next() % pages) * PAGE as u64;
                if write {
                    page.bytes()[..8].copy_from_slice(&ops.to_le_bytes());
                    f.write_all_at(page.bytes(), off)?;
                } else {
                    f.read_exact_at(page.bytes(), off)?;
                }
                ops += 1;
            }
        }
        let iops = ops as f64 / t.elapsed().as_secs_f64();
        println!("RESULT {name} {iops:.0} IOPS {mode}");
    }
    f.sync_all()?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: io-bench files DIR MIB SECS | io-bench time CMD [ARG]...";
    match args.first().map(String::as_str) {
        Some("files") if args.len() == 4 => {
            let (mib, secs) = (args[2].parse().expect(usage), args[3].parse().expect(usage));
            if let Err(e) = files(Path::new(&args[1]), mib, secs) {
                eprintln!("io-bench: {}: {e}", args[1]);
                std::process::exit(1);
            }
        }
        Some("time") if args.len() >= 2 => {
            let t = Instant::now();
            let status = Command::new(&args[1])
                .args(&args[2..])
                .status()
                .unwrap_or_else(|e| panic!("run {}: {e}", args[1]));
            let ms = t.elapsed().as_millis();
            if !status.success() {
                eprintln!("io-bench: {} failed: {status}", args[1]);
                std::process::exit(1);
            }
            println!("RESULT time {ms} ms");
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
