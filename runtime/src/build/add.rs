//! `ADD`'s local archives: a source that is a tar (plain or gzip) is unpacked at the
//! destination, as Docker's `ADD` does; its entries are rewritten under the
//! destination into the step's layer.
//!
//! An archive is as untrusted as the context it is in: an entry that climbs out of the
//! destination (`..`, through the archive's root) is refused, a hard link must point
//! inside the archive, device nodes are left out, and the bytes written are bounded by
//! the image size cap (a tar bomb stops there). Archives compressed with bzip2 or xz
//! are refused with a message (Docker would unpack them; arca has no decompressor for
//! them), rather than copied as files where Docker would unpack them.

use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path};

use super::context::{Context, ContextError, CopyOptions, ImageKind, Written};

/// The most entries one archive may have.
const MAX_ENTRIES: usize = 1_000_000;

/// How an archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// Which of `found` (context paths) are archives to unpack. Several sources with an
/// archive among them are refused (arca unpacks one archive per `ADD`).
pub fn archive_sources(
    ctx: &Context,
    found: &[String],
) -> Result<Vec<(String, Compression)>, ContextError> {
    let mut out = Vec::new();
    for src in found {
        let Some(mut f) = ctx.open_file(src)? else {
            continue;
        };
        let mut head = [0u8; 512];
        let n = read_up_to(&mut f, &mut head).map_err(|e| io(src, e))?;
        let head = &head[..n];
        let kind = if head.starts_with(&[0x1f, 0x8b]) {
            // Compressed: a tar only if what it holds is one.
            let _ = f.rewind();
            let mut inner = [0u8; 512];
            let m = read_up_to(&mut flate2::read::GzDecoder::new(&mut f), &mut inner).unwrap_or(0);
            is_tar(&inner[..m]).then_some(Compression::Gzip)
        } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            return Err(ContextError::Archive(format!(
                "ADD {src}: arca build unpacks plain and gzip tar archives only; unpack this one in a RUN step, or recompress it with gzip"
            )));
        } else {
            is_tar(head).then_some(Compression::None)
        };
        if let Some(k) = kind {
            out.push((src.clone(), k));
        }
    }
    if !out.is_empty() && found.len() > 1 {
        return Err(ContextError::Archive(
            "ADD with a local archive among several sources is not supported by arca build: give the archive an ADD of its own".into(),
        ));
    }
    Ok(out)
}

fn io(src: &str, e: io::Error) -> ContextError {
    ContextError::Io {
        action: "read",
        path: src.into(),
        source: e,
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A tar header block: `ustar` magic, or an old-style header whose checksum holds.
fn is_tar(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    let text = String::from_utf8_lossy(&block[148..156]);
    let Ok(want) = u32::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == want && block[0] != 0
}

/// `path` of an archive entry, cleaned; `None` if it climbs out.
fn clean(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// The layer of `ADD ARCHIVE DEST`: the archive's entries under `dest` (a directory,
/// made with the parents the image lacks), owners kept unless `--chown` says, modes
/// unless `--chmod` says.
pub fn extract_layer(
    ctx: &Context,
    found: &[String],
    archives: &[(String, Compression)],
    dest: &str,
    opts: &CopyOptions,
    image: &dyn Fn(&str) -> Option<ImageKind>,
    out: impl Write,
) -> Result<Written, ContextError> {
    let [(src, compression)] = archives else {
        return Err(ContextError::Archive(
            "ADD unpacks one archive at a time".into(),
        ));
    };
    debug_assert_eq!(found.len(), 1);
    let dest_rel = dest.trim_matches('/').to_string();
    let mut tar = tar::Builder::new(out);
    let now = crate::now();
    // The destination and its missing parents.
    let mut at = String::new();
    for part in dest_rel.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        match image(&format!("/{at}")) {
            Some(ImageKind::Dir) => continue,
            Some(ImageKind::Other) => {
                return Err(ContextError::DirectoryToFile(src.clone(), dest.to_string()));
            }
            None => {}
        }
        tar.append_data(&mut made_dir(now), &at, io::empty())
            .map_err(|e| io(src, e))?;
    }
    let file = ctx
        .open_file(src)?
        .ok_or_else(|| ContextError::NotFound(src.clone()))?;
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
    };
    let written = rewrite(reader, src, &dest_rel, opts, &mut tar)?;
    tar.finish().map_err(|e| io(src, e))?;
    Ok(written)
}

/// The header of a directory a layer makes where the image has none: 0755, root's.
pub(super) fn made_dir(mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

/// The entries of archive `reader` (named `src` in messages) under `dest_rel` (relative
/// to the image's root, no leading `/`), appended to `tar`: what [`extract_layer`]
/// does with an archive once found. The archive is hostile: entries climbing out are
/// refused, device nodes left out, content bounded by `opts.limit`.
pub fn rewrite<W: Write>(
    reader: impl Read,
    src: &str,
    dest_rel: &str,
    opts: &CopyOptions,
    tar: &mut tar::Builder<W>,
) -> Result<Written, ContextError> {
    let src = &src.to_string();
    let dest_rel = dest_rel.to_string();
    let now = crate::now();
    let outside = |name: &str| ContextError::Outside(format!("{name} (in {src})"));
    let mut archive = tar::Archive::new(reader);
    let mut written = Written::default();
    let under = |rel: &str| {
        if dest_rel.is_empty() {
            rel.to_string()
        } else if rel.is_empty() {
            dest_rel.clone()
        } else {
            format!("{dest_rel}/{rel}")
        }
    };
    let bad =
        |e: io::Error| ContextError::Archive(format!("ADD {src}: not a readable tar archive: {e}"));
    for (n, entry) in archive.entries().map_err(bad)?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(ContextError::Archive(format!(
                "ADD {src}: the archive has more than {MAX_ENTRIES} entries"
            )));
        }
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let shown = raw.display().to_string();
        let rel = clean(&raw).ok_or_else(|| outside(&shown))?;
        let kind = entry.header().entry_type();
        let mut h = tar::Header::new_gnu();
        let src_h = entry.header();
        let mode = src_h.mode().unwrap_or(0o644) & 0o7777;
        h.set_mode(opts.mode.unwrap_or(mode));
        let (uid, gid) = opts.owner.unwrap_or((
            src_h.uid().unwrap_or(0) as u32,
            src_h.gid().unwrap_or(0) as u32,
        ));
        h.set_uid(u64::from(uid));
        h.set_gid(u64::from(gid));
        h.set_mtime(src_h.mtime().unwrap_or(now));
        let path = under(&rel);
        if path.is_empty() {
            continue;
        }
        match kind {
            tar::EntryType::Directory => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &path, io::empty())
                    .map_err(|e| io(src, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                written.bytes += size;
                if written.bytes > opts.limit {
                    return Err(ContextError::TooLarge(crate::image::store::show_size(
                        opts.limit,
                    )));
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(size);
                tar.append_data(&mut h, &path, &mut entry)
                    .map_err(|e| io(src, e))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(bad)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                // A symlink is only ever resolved inside the container.
                tar.append_link(&mut h, &path, &target)
                    .map_err(|e| io(src, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(bad)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let t = clean(&target)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| outside(&target.display().to_string()))?;
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                tar.append_link(&mut h, &path, under(&t))
                    .map_err(|e| io(src, e))?;
            }
            tar::EntryType::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                tar.append_data(&mut h, &path, io::empty())
                    .map_err(|e| io(src, e))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => written.skipped.push(format!("{shown} ({other:?})")),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn archive(entries: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o640);
            h.set_uid(7);
            // Raw names: a hostile archive's `..` is written as it is.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        if !gzip {
            return bytes;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap()
    }

    fn names(layer: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(layer);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                format!(
                    "{} {}",
                    e.path().unwrap().display(),
                    e.header().uid().unwrap()
                )
            })
            .collect()
    }

    fn opts() -> CopyOptions {
        CopyOptions {
            owner: None,
            mode: None,
            limit: 1 << 20,
        }
    }

    #[test]
    fn plain_and_gzip_tars_unpack_under_the_destination() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("a.tar"),
            archive(&[("x/y.txt", b"hi")], false),
        )
        .unwrap();
        fs::write(t.path().join("b.tgz"), archive(&[("z", b"z")], true)).unwrap();
        fs::write(t.path().join("c.txt"), "not an archive").unwrap();
        let ctx = Context::dir(t.path()).unwrap();
        let found = |s: &str| vec![s.to_string()];
        assert_eq!(
            archive_sources(&ctx, &found("a.tar")).unwrap(),
            [("a.tar".to_string(), Compression::None)]
        );
        assert_eq!(
            archive_sources(&ctx, &found("b.tgz")).unwrap(),
            [("b.tgz".to_string(), Compression::Gzip)]
        );
        assert!(archive_sources(&ctx, &found("c.txt")).unwrap().is_empty());
        let a = archive_sources(&ctx, &found("a.tar")).unwrap();
        let mut out = Vec::new();
        extract_layer(
            &ctx,
            &found("a.tar"),
            &a,
            "/opt/app/",
            &opts(),
            &|p| (p == "/opt").then_some(ImageKind::Dir),
            &mut out,
        )
        .unwrap();
        assert_eq!(names(&out), ["opt/app 0", "opt/app/x/y.txt 7"]);
    }

    /// A hostile archive: an entry climbing out of the destination is refused; a tar
    /// bomb stops at the cap; an xz archive is refused by name.
    #[test]
    fn hostile_archives_are_refused_or_bounded() {
        let t = tempfile::tempdir().unwrap();
        fs::write(
            t.path().join("evil.tar"),
            archive(&[("../../etc/passwd", b"x")], false),
        )
        .unwrap();
        let big = vec![0u8; 300 << 10];
        fs::write(
            t.path().join("bomb.tgz"),
            archive(&[("a", &big), ("b", &big), ("c", &big), ("d", &big)], true),
        )
        .unwrap();
        fs::write(
            t.path().join("x.tar.xz"),
            [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2],
        )
        .unwrap();
        let ctx = Context::dir(t.path()).unwrap();
        let run = |name: &str| {
            let found = vec![name.to_string()];
            let a = archive_sources(&ctx, &found)?;
            extract_layer(&ctx, &found, &a, "/d", &opts(), &|_| None, io::sink())
        };
        let e = run("evil.tar").unwrap_err().to_string();
        assert!(e.contains("outside the build context"), "{e}");
        let e = run("bomb.tgz").unwrap_err().to_string();
        assert!(e.contains("more than 1 MiB"), "{e}");
        let e = run("x.tar.xz").unwrap_err().to_string();
        assert!(e.contains("plain and gzip tar archives only"), "{e}");
    }

    /// The `add_archive` fuzz target's properties on mutations of a real archive (for
    /// where cargo-fuzz is missing): whatever is rewritten stays under the destination
    /// and within the limit.
    #[test]
    fn mutated_archives_stay_under_the_destination() {
        let good = archive(&[("a/b", b"hello"), ("c", &[1u8; 600])], false);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = good.clone();
            for k in 0..3 {
                let at = ((seed >> (k * 16)) as usize) % m.len();
                m[at] = (seed >> (k * 8)) as u8;
            }
            let opts = CopyOptions {
                owner: None,
                mode: None,
                limit: 700,
            };
            let mut tar = tar::Builder::new(Vec::new());
            if rewrite(m.as_slice(), "m.tar", "dest", &opts, &mut tar).is_err() {
                continue;
            }
            let layer = tar.into_inner().unwrap();
            let mut content = 0;
            for e in tar::Archive::new(layer.as_slice()).entries().unwrap() {
                let e = e.unwrap();
                let p = e.path().unwrap().into_owned();
                assert!(p.starts_with("dest"), "{}", p.display());
                assert!(!p.components().any(|c| c == Component::ParentDir));
                content += e.size();
            }
            assert!(content <= 700);
        }
    }
}
