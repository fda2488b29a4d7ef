//! The agent's builtins ([`Builtin`]): `arca cp`'s stat, tar out, tar in and hold, run by an
//! exec'd process in place of a command, after it took the container's namespaces,
//! cgroup, credentials and capability limits ([`crate::helper`]). So they are exactly
//! as confined as a container process: a hostile container can do nothing to them that
//! it cannot do to itself, and a tar from the host cannot leave the container's root.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use arca_protocol::Builtin;

/// Runs `b`; the exit code (0, or 1 after the reason went to stderr).
pub fn run(b: &Builtin) -> i32 {
    let result = match b {
        Builtin::Stat { path } => stat(path),
        Builtin::TarOut { path } => tar_out(path),
        Builtin::TarIn { dir, keep_owners } => tar_in(dir, *keep_owners),
        Builtin::Hold => hold(),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{e}");
            1
        }
    }
}

/// Reads stdin to its end (the host closing it, or going away) and ends.
fn hold() -> Result<(), String> {
    io::copy(&mut io::stdin(), &mut io::sink()).map_err(|e| format!("stdin: {e}"))?;
    Ok(())
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// One JSON line: kind, size and mode of `path` (a final symlink is not followed
/// unless the path ends with `/`).
fn stat(path: &str) -> Result<(), String> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if not_found(&e) => return Err("not found".into()),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let t = m.file_type();
    let kind = if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "other"
    };
    let mut line = serde_json::json!({"kind": kind, "size": m.len(), "mode": m.mode()});
    if t.is_symlink()
        && let Ok(target) = fs::read_link(path)
    {
        line["target"] = target.to_string_lossy().into();
    }
    writeln!(io::stdout(), "{line}").map_err(|e| e.to_string())
}

/// Pseudo file systems whose contents are not copied (the directory itself is).
fn pseudo_fs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| {
        matches!(
            s.f_type,
            libc::PROC_SUPER_MAGIC
                | libc::SYSFS_MAGIC
                | libc::DEVPTS_SUPER_MAGIC
                | libc::CGROUP2_SUPER_MAGIC
                | libc::CGROUP_SUPER_MAGIC
        )
    })
}

/// A tar of `path` on stdout, its top entry named after the path's base name.
fn tar_out(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    match fs::symlink_metadata(p) {
        Ok(_) => {}
        Err(e) if not_found(&e) => return Err("not found".into()),
        Err(e) => return Err(format!("{path}: {e}")),
    }
    let name = PathBuf::from(p.file_name().unwrap_or("root".as_ref()));
    let out = io::BufWriter::with_capacity(64 << 10, io::stdout().lock());
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    append(&mut b, p, &name)?;
    let mut out = b.into_inner().map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

fn append<W: Write>(b: &mut tar::Builder<W>, path: &Path, name: &Path) -> Result<(), String> {
    let err = |e: io::Error| format!("{}: {e}", path.display());
    let m = fs::symlink_metadata(path).map_err(err)?;
    let t = m.file_type();
    if t.is_socket() {
        return Ok(());
    }
    if t.is_symlink()
        && let Ok(target) = fs::read_link(path)
    {
        // Written as it is: the tar builder's own path handling turns `/` into `//`.
        use std::os::unix::ffi::OsStrExt;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        if header
            .set_link_name_literal(target.as_os_str().as_bytes())
            .is_ok()
        {
            return b.append_data(&mut header, name, io::empty()).map_err(err);
        }
    }
    if !t.is_dir() {
        return b.append_path_with_name(path, name).map_err(err);
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
    header.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut header, name, io::empty()).map_err(err)?;
    if pseudo_fs(path) {
        return Ok(());
    }
    let mut children: Vec<_> = fs::read_dir(path)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    children.sort();
    for c in children {
        append(b, &path.join(&c), &name.join(&c))?;
    }
    Ok(())
}

/// Extracts the tar on stdin into the directory `dir`: modes and times kept, owners
/// only with `keep_owners` (else the container's root owns what it writes), entries
/// climbing out refused, device nodes skipped (a container has no `CAP_MKNOD`).
fn tar_in(dir: &str, keep_owners: bool) -> Result<(), String> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{dir} is not a directory")),
        Err(e) if not_found(&e) => return Err("not found".into()),
        Err(e) => return Err(format!("{dir}: {e}")),
    }
    let mut a = tar::Archive::new(io::stdin().lock());
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(keep_owners);
    a.set_overwrite(true);
    let bad = |e: io::Error| format!("Cannot read the archive: {e}");
    for entry in a.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        }) {
            return Err(format!(
                "Archive entry {} is outside the destination",
                path.display()
            ));
        }
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block
        ) {
            let _ = writeln!(io::stderr(), "skipped device node {}", path.display());
            continue;
        }
        entry
            .unpack_in(dir)
            .map_err(|e| format!("Cannot extract {}: {e}", path.display()))?;
    }
    Ok(())
}
