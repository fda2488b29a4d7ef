//! A container's writable layer as an OCI layer tar (`Channel::Layer`, for `arca
//! build`'s `RUN` steps): the overlay's upper directory, walked through the descriptor
//! the container's init helper passed, beside the image's (lower) directory.
//!
//! As the OCI image spec says: a file deleted from the image is a `.wh.NAME` entry, a
//! directory overlayfs made opaque (it replaced the image's) is followed by
//! `DIR/.wh..wh..opq`, a file linked twice in the layer is one file and a hard link.
//! Left out as Docker leaves them out: the files the agent writes into every container
//! (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`), the mount points it makes
//! (`/proc`, `/sys`, `/dev`), sockets, and directories only copied up on the way to
//! such files (same owner and mode as the image's, nothing kept below them).
//!
//! The upper directory is the container's to write: walked as [`crate::changes`] walks
//! it (relative to descriptors, never following a symlink, bounded), and each file is
//! opened by its own name with `O_NOFOLLOW | O_NONBLOCK`, checked to be the inode the
//! walk saw, and read to exactly the size the walk recorded. The host treats the tar as
//! hostile anyway (it unpacks it as a pulled layer).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use arca_protocol::{MAX_CHUNK, chunk_header, error_chunk};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::changes::{AGENT_FILES, MAX_DEPTH, MAX_ENTRIES, MAX_PATH_BYTES, MOUNT_POINTS};
use crate::changes::{list, opaque, reopen};

/// The prefix of a whiteout entry.
const WHITEOUT: &[u8] = b".wh.";
/// The entry that makes its directory opaque.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Writes the layer of `upper` over `lower` to `out` in chunks
/// ([`arca_protocol::LayerChunk`]): the tar and the end chunk, or as much of it as was
/// made and a failure chunk. Returns the failure, if any (also for the agent's log).
pub fn send(upper: BorrowedFd<'_>, lower: BorrowedFd<'_>, out: impl Write) -> Result<(), String> {
    let mut chunks = Chunks {
        out,
        buf: Vec::with_capacity(MAX_CHUNK as usize),
    };
    let made = write(upper, lower, &mut chunks);
    match made {
        Ok(()) => {
            chunks
                .flush_chunk()
                .and_then(|()| chunks.out.write_all(&chunk_header(0)))
                .and_then(|()| chunks.out.flush())
                .map_err(|e| format!("Cannot send the layer: {e}"))?;
            Ok(())
        }
        Err(why) => {
            // What was buffered is dropped: the host discards the whole layer anyway.
            let _ = chunks.out.write_all(&error_chunk(&why));
            let _ = chunks.out.flush();
            Err(why)
        }
    }
}

/// The tar of `upper` over `lower`, written to `out` (no chunks).
pub fn write(upper: BorrowedFd<'_>, lower: BorrowedFd<'_>, out: impl Write) -> Result<(), String> {
    let mut walk = Walk {
        items: Vec::new(),
        seen: 0,
        bytes: 0,
    };
    let lower = reopen(lower).ok();
    walk.dir(upper, lower.as_ref().map(|l| l.as_fd()), b"", 0)?;
    let mut tar = tar::Builder::new(out);
    let mut linked: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    // The directories open on the way to the current item: (path, descriptor).
    let mut open: Vec<(Vec<u8>, OwnedFd)> = Vec::new();
    let root = reopen(upper).map_err(|e| format!("/: {e}"))?;
    for item in &walk.items {
        let (parent, name) = split(&item.path);
        while open.last().is_some_and(|(p, _)| p.as_slice() != parent) {
            open.pop();
        }
        let dir = open.last().map_or(root.as_fd(), |(_, fd)| fd.as_fd());
        let shown = String::from_utf8_lossy(&item.path).into_owned();
        let err = |e: &dyn std::fmt::Display| format!("/{shown}: {e}");
        let cname = CString::new(name).map_err(|e| err(&e))?;
        let path = OsStr::from_bytes(&item.path);
        let mut h = header(&item.stat);
        match item.what {
            What::Whiteout => {
                let mut wh = parent.to_vec();
                if !wh.is_empty() {
                    wh.push(b'/');
                }
                wh.extend_from_slice(WHITEOUT);
                wh.extend_from_slice(name);
                marker(&mut tar, &item.stat, &wh).map_err(|e| err(&e))?;
            }
            What::Dir { opaque } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, path, io::empty())
                    .map_err(|e| err(&e))?;
                if opaque {
                    let mut o = item.path.clone();
                    o.push(b'/');
                    o.extend_from_slice(OPAQUE);
                    marker(&mut tar, &item.stat, &o).map_err(|e| err(&e))?;
                }
                let fd = rustix::fs::openat(
                    dir,
                    cname.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| err(&e))?;
                same(&item.stat, fd.as_fd()).map_err(|e| err(&e))?;
                open.push((item.path.clone(), fd));
            }
            What::File => {
                let key = (item.stat.st_dev, item.stat.st_ino);
                if item.stat.st_nlink > 1
                    && let Some(first) = linked.get(&key)
                {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    tar.append_link(&mut h, path, OsStr::from_bytes(first))
                        .map_err(|e| err(&e))?;
                    continue;
                }
                let fd = rustix::fs::openat(
                    dir,
                    cname.as_c_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| err(&e))?;
                same(&item.stat, fd.as_fd()).map_err(|e| err(&e))?;
                // File capabilities (`setcap`, packages such as ping) go with the file.
                let mut cap = vec![0u8; 1024];
                if let Ok(n) = rustix::fs::fgetxattr(&fd, CAPABILITY, &mut cap) {
                    cap.truncate(n);
                    pax(&mut tar, &format!("SCHILY.xattr.{CAPABILITY}"), &cap)
                        .map_err(|e| err(&e))?;
                }
                let size = item.stat.st_size as u64;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                let file = std::fs::File::from(fd);
                let exact = Exact {
                    inner: file.take(size),
                    left: size,
                };
                tar.append_data(&mut h, path, exact).map_err(|e| err(&e))?;
                if item.stat.st_nlink > 1 {
                    linked.insert(key, item.path.clone());
                }
            }
            What::Symlink => {
                let target = rustix::fs::readlinkat(dir, cname.as_c_str(), Vec::new())
                    .map_err(|e| err(&e))?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, path, OsStr::from_bytes(target.as_bytes()))
                    .map_err(|e| err(&e))?;
            }
            What::Fifo | What::Device(_) => {
                h.set_size(0);
                if let What::Device(block) = item.what {
                    h.set_entry_type(if block {
                        tar::EntryType::Block
                    } else {
                        tar::EntryType::Char
                    });
                    let rdev = item.stat.st_rdev;
                    let _ = h.set_device_major(rustix::fs::major(rdev));
                    let _ = h.set_device_minor(rustix::fs::minor(rdev));
                } else {
                    h.set_entry_type(tar::EntryType::Fifo);
                }
                tar.append_data(&mut h, path, io::empty())
                    .map_err(|e| err(&e))?;
            }
        }
    }
    let mut out = tar
        .into_inner()
        .map_err(|e| format!("Cannot end the layer: {e}"))?;
    out.flush()
        .map_err(|e| format!("Cannot send the layer: {e}"))
}

/// The extended attribute a layer carries (file capabilities); others are the
/// guest's or the host's policy, or data the image does not need.
const CAPABILITY: &str = "security.capability";

/// A PAX extended header holding `key=value`, for the entry that follows.
fn pax<W: Write>(tar: &mut tar::Builder<W>, key: &str, value: &[u8]) -> io::Result<()> {
    // A record is "LEN KEY=VALUE\n", LEN counting its own digits.
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_path("PaxHeader")?;
    h.set_mode(0o644);
    h.set_size(record.len() as u64);
    h.set_cksum();
    tar.append(&h, record.as_slice())
}

/// An empty file whose name is its meaning (a whiteout, an opaque directory's mark),
/// with the owner and time of the entry it stands for.
fn marker<W: Write>(tar: &mut tar::Builder<W>, st: &Stat, path: &[u8]) -> io::Result<()> {
    let mut h = header(st);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(0);
    tar.append_data(&mut h, OsStr::from_bytes(path), io::empty())
}

/// A GNU tar header with an entry's owner, mode and time.
fn header(st: &Stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(st.st_mtime.max(0) as u64);
    h
}

/// `path` as its parent's path and its own name.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// The descriptor is the inode the walk saw (the upper directory is the container's:
/// nothing may stand in for an entry between the walk and its reading).
fn same(st: &Stat, fd: BorrowedFd<'_>) -> io::Result<()> {
    let now = rustix::fs::fstat(fd)?;
    if now.st_dev != st.st_dev || now.st_ino != st.st_ino || now.st_size != st.st_size {
        return Err(io::Error::other("changed while the layer was written"));
    }
    Ok(())
}

/// A file's content, exactly `left` bytes: one that shrank is an error, not a short
/// entry that would corrupt the tar.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::other("the file shrank while it was read"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Data chunks of at most [`MAX_CHUNK`] bytes.
struct Chunks<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> Chunks<W> {
    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.write_all(&chunk_header(self.buf.len()))?;
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for Chunks<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_CHUNK as usize - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK as usize {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    // Chunks go out when full and at the end; a flush in between sends nothing.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What an entry of the layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Whiteout,
    Dir {
        opaque: bool,
    },
    File,
    Symlink,
    Fifo,
    /// A device node other than a whiteout (block: `true`).
    Device(bool),
}

#[derive(Debug)]
struct Item {
    /// Relative to the root, no leading `/`.
    path: Vec<u8>,
    stat: Stat,
    what: What,
}

struct Walk {
    items: Vec<Item>,
    seen: usize,
    bytes: usize,
}

impl Walk {
    /// Collects what directory `upper` (at `prefix`, empty for the root) holds for the
    /// layer, beside `lower` (the image's directory there, if any); whether it holds
    /// anything.
    fn dir(
        &mut self,
        upper: BorrowedFd<'_>,
        lower: Option<BorrowedFd<'_>>,
        prefix: &[u8],
        depth: usize,
    ) -> Result<bool, String> {
        let shown = |p: &[u8]| format!("/{}", String::from_utf8_lossy(p));
        if depth > MAX_DEPTH {
            return Err(format!(
                "the writable layer nests directories more than {MAX_DEPTH} deep"
            ));
        }
        // At most what the whole walk has left (see `changes`).
        let names = list(upper, MAX_ENTRIES.saturating_sub(self.seen))
            .map_err(|e| format!("{}: {e}", shown(prefix)))?;
        let mut kept = false;
        for name in &names {
            self.seen += 1;
            if self.seen > MAX_ENTRIES {
                return Err(format!(
                    "the writable layer has more than {MAX_ENTRIES} entries"
                ));
            }
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            self.bytes += path.len();
            if self.bytes > MAX_PATH_BYTES {
                return Err(format!(
                    "the writable layer names more than {} MiB of paths",
                    MAX_PATH_BYTES >> 20
                ));
            }
            let absolute = {
                let mut a = b"/".to_vec();
                a.extend_from_slice(&path);
                a
            };
            let st = match rustix::fs::statat(upper, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err(format!("{}: {e}", shown(&path))),
            };
            let kind = FileType::from_raw_mode(st.st_mode);
            let what = match kind {
                FileType::CharacterDevice if st.st_rdev == 0 => What::Whiteout,
                FileType::Directory => What::Dir { opaque: false },
                FileType::RegularFile => What::File,
                FileType::Symlink => What::Symlink,
                FileType::Fifo => What::Fifo,
                FileType::CharacterDevice => What::Device(false),
                FileType::BlockDevice => What::Device(true),
                _ => continue,
            };
            if what != (What::Dir { opaque: false }) {
                if AGENT_FILES
                    .iter()
                    .any(|f| f.as_bytes() == absolute.as_slice())
                {
                    continue;
                }
                self.items.push(Item {
                    path,
                    stat: st,
                    what,
                });
                kept = true;
                continue;
            }
            if MOUNT_POINTS
                .iter()
                .any(|m| m.as_bytes() == absolute.as_slice())
            {
                continue;
            }
            let child = match rustix::fs::openat(
                upper,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err(format!("{}: {e}", shown(&path))),
            };
            let below = lower.and_then(|l| {
                rustix::fs::statat(l, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()
            });
            let was_dir = below
                .as_ref()
                .is_some_and(|b| FileType::from_raw_mode(b.st_mode) == FileType::Directory);
            let image_dir = match (was_dir, lower) {
                (true, Some(l)) => rustix::fs::openat(
                    l,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ok(),
                _ => None,
            };
            // A directory made where the image had a file is opaque to overlayfs too,
            // but has nothing of the image's to hide: the layer's directory replaces
            // the file.
            let is_opaque = opaque(child.as_fd()) && was_dir;
            // The directory's own entry comes before what it holds.
            let at = self.items.len();
            self.items.push(Item {
                path: path.clone(),
                stat: st,
                what: What::Dir { opaque: is_opaque },
            });
            let below_dir = if is_opaque {
                None
            } else {
                image_dir.as_ref().map(|d| d.as_fd())
            };
            let inner = self.dir(child.as_fd(), below_dir, &path, depth + 1)?;
            let retouched = below.as_ref().is_some_and(|b| {
                b.st_mode != st.st_mode || b.st_uid != st.st_uid || b.st_gid != st.st_gid
            });
            if inner || is_opaque || retouched || !was_dir {
                kept = true;
            } else {
                // Only copied up on the way to something left out.
                self.items.truncate(at);
            }
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn open(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let kind = e.header().entry_type();
                let mut body = String::new();
                if kind == tar::EntryType::Regular {
                    e.read_to_string(&mut body).unwrap();
                } else if let Some(l) = e.link_name_bytes() {
                    body = String::from_utf8_lossy(&l).into_owned();
                }
                (path, kind, body)
            })
            .collect()
    }

    /// An upper directory as overlayfs leaves it (whiteouts need root: mknod 0/0) over
    /// an image, as a layer: added and changed files with their content, a deleted file
    /// as a whiteout, an opaque directory, a hard link once, a symlink as itself (never
    /// followed), the agent's files and mount points left out, a directory only copied
    /// up left out.
    #[test]
    fn the_upper_directory_is_an_oci_layer() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: whiteouts and the opaque xattr need root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        for d in ["etc", "usr/bin", "var/cache", "opq"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        fs::write(lower.join("etc/group"), "g").unwrap();
        fs::write(lower.join("opq/old"), "o").unwrap();
        for d in ["etc", "usr/bin", "new/sub", "proc", "opq"] {
            fs::create_dir_all(upper.join(d)).unwrap();
        }
        fs::write(upper.join("etc/hosts"), "agent").unwrap();
        fs::write(upper.join("etc/passwd"), "changed").unwrap();
        fs::write(upper.join("new/sub/f"), "hello").unwrap();
        fs::hard_link(upper.join("new/sub/f"), upper.join("new/g")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", upper.join("new/link")).unwrap();
        fs::write(upper.join("opq/fresh"), "f").unwrap();
        rustix::fs::setxattr(
            upper.join("opq"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join("etc/group"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // A file capability (cap_net_raw+ep), as `setcap` writes it.
        let cap: [u8; 20] = [0, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        rustix::fs::setxattr(
            upper.join("etc/passwd"),
            CAPABILITY,
            &cap,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        // A directory where the image had a file: not opaque in the layer.
        fs::write(lower.join("wasfile"), "f").unwrap();
        fs::create_dir_all(upper.join("wasfile")).unwrap();
        rustix::fs::setxattr(
            upper.join("wasfile"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let mut out = Vec::new();
        write(open(&upper).as_fd(), open(&lower).as_fd(), &mut out).unwrap();
        let mut a = tar::Archive::new(out.as_slice());
        let caps: Vec<Vec<u8>> = a
            .entries()
            .unwrap()
            .filter_map(|e| {
                let mut e = e.unwrap();
                let exts = e.pax_extensions().unwrap()?;
                exts.flatten()
                    .find(|x| x.key() == Ok("SCHILY.xattr.security.capability"))
                    .map(|x| x.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(caps, [cap.to_vec()]);
        let got = entries(&out);
        let names: Vec<String> = got
            .iter()
            .map(|(p, k, b)| format!("{p} {k:?} {b}"))
            .collect();
        assert_eq!(
            names,
            [
                "etc Directory ",
                "etc/.wh.group Regular ",
                "etc/passwd Regular changed",
                "new Directory ",
                "new/g Regular hello",
                "new/link Symlink /etc/shadow",
                "new/sub Directory ",
                "new/sub/f Link new/g",
                "opq Directory ",
                "opq/.wh..wh..opq Regular ",
                "opq/fresh Regular f",
                "wasfile Directory ",
            ]
        );
    }

    /// The chunked stream reads back as the tar, and ends with the end chunk; a walk
    /// that fails ends with a failure chunk, never an end.
    #[test]
    fn chunks_end_with_the_end_or_a_failure() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        fs::create_dir_all(upper.join("d")).unwrap();
        fs::create_dir_all(&lower).unwrap();
        fs::write(upper.join("d/big"), vec![7u8; 3 << 20]).unwrap();
        let mut out = Vec::new();
        send(open(&upper).as_fd(), open(&lower).as_fd(), &mut out).unwrap();
        let mut tar_bytes = Vec::new();
        let mut rest = out.as_slice();
        loop {
            let h: [u8; 4] = rest[..4].try_into().unwrap();
            rest = &rest[4..];
            match arca_protocol::LayerChunk::parse(h).unwrap() {
                arca_protocol::LayerChunk::Data(n) => {
                    tar_bytes.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
                arca_protocol::LayerChunk::End => break,
                arca_protocol::LayerChunk::Error => panic!("failed"),
            }
        }
        assert!(rest.is_empty());
        let got = entries(&tar_bytes);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].2.len(), 3 << 20);
        // Too deep: the walk's bound.
        let mut deep = upper.clone();
        for _ in 0..=MAX_DEPTH + 1 {
            deep.push("x");
        }
        fs::create_dir_all(&deep).unwrap();
        let mut out = Vec::new();
        let e = send(open(&upper).as_fd(), open(&lower).as_fd(), &mut out).unwrap_err();
        assert!(e.contains("deep"), "{e}");
        let at = out.len() - 8 - e.len().min(arca_protocol::MAX_CHUNK_ERROR as usize);
        assert_eq!(&out[at..at + 4], &u32::MAX.to_be_bytes());
    }
}
