//! `user[:group]` to uid, gid, supplementary groups and home, from a container's
//! /etc/passwd and /etc/group, as Docker resolves `--user`.
//!
//! Those files are the image's (or a running container's, for `exec`): [`read_file`]
//! reads them as hostile. The path resolves inside the given root only
//! (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: a symlink to `/etc/shadow` of
//! the host, `../..` or `/proc/self/fd/N` cannot lead out; a symlink inside the root
//! is followed, as Docker does: Nix-built images link `/etc/passwd` into `/nix/store`),
//! the file is opened `O_NONBLOCK | O_NOCTTY` (a FIFO cannot block the opener), must be
//! a regular file (fstat) and is read up to [`MAX_FILE`] bytes; a missing file reads as
//! empty. Kernels without `openat2` (before 5.6) get `O_NOFOLLOW` instead: a symlinked
//! file is refused there.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The largest passwd or group file read: 4 MiB, some 50,000 entries.
pub const MAX_FILE: u64 = 4 << 20;

/// Errors in user resolution.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A user name is not in /etc/passwd.
    #[error("Unable to find user {0}: no matching entries in passwd file")]
    NoSuchUser(String),
    /// A group name is not in /etc/group.
    #[error("Unable to find group {0}: no matching entries in group file")]
    NoSuchGroup(String),
    /// The user spec is empty or has an empty part.
    #[error("Invalid user {0:?}: use user, uid, user:group or uid:gid")]
    Invalid(String),
    /// The container's passwd or group file is not one arca reads.
    #[error("Cannot read {path} in the container: {why}")]
    File {
        /// The file, as the container sees it.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Reads `path` (relative, `etc/passwd`) below the directory `root` as described in
/// the module's documentation: `""` when it does not exist, an error naming it when it
/// is not a regular file (a FIFO, a device, a directory, a symlink out of the root
/// through `/proc`), is larger than [`MAX_FILE`] or cannot be read.
pub fn read_file(root: BorrowedFd<'_>, path: &str) -> Result<String, UserError> {
    let err = |why: String| UserError::File {
        path: format!("/{}", path.trim_start_matches('/')),
        why,
    };
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let opened = match rustix::fs::openat2(
        root,
        path,
        flags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Err(Errno::NOSYS) => {
            rustix::fs::openat(root, path, flags | OFlags::NOFOLLOW, Mode::empty())
        }
        other => other,
    };
    let fd = match opened {
        Ok(fd) => fd,
        // No file, or no /etc directory: no entries, as before the image had any.
        Err(Errno::NOENT | Errno::NOTDIR) => return Ok(String::new()),
        Err(Errno::LOOP) => {
            return Err(err(
                "it is a symbolic link arca does not follow (a loop, a /proc magic link, or any link on kernels before 5.6)".into(),
            ));
        }
        Err(e) => return Err(err(e.to_string())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| err(e.to_string()))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    let what = match kind {
        FileType::RegularFile => None,
        FileType::Fifo => Some("a FIFO"),
        FileType::Directory => Some("a directory"),
        FileType::CharacterDevice | FileType::BlockDevice => Some("a device"),
        FileType::Socket => Some("a socket"),
        _ => Some("something else"),
    };
    if let Some(what) = what {
        return Err(err(format!("it is {what}, not a regular file")));
    }
    let too_large = || err(format!("it is larger than {} MiB", MAX_FILE >> 20));
    if u64::try_from(st.st_size).unwrap_or(u64::MAX) > MAX_FILE {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // Counted again while reading: the file may grow after the fstat.
    std::fs::File::from(fd)
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_large());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The process's own root directory, for [`read_file`]: in the helper, after the
/// pivot (or `setns` into the container's mount namespace), the container's root.
pub fn own_root() -> Result<impl AsFd, UserError> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UserError::File {
        path: "/".into(),
        why: e.to_string(),
    })
}

/// Resolved credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

fn lookup_group(group: &str, spec: &str) -> Result<u32, UserError> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    group_entries(group)
        .find(|g| g.name == spec)
        .map(|g| g.gid)
        .ok_or_else(|| UserError::NoSuchGroup(spec.to_string()))
}

/// Resolves `user` (None = root) plus `additional` groups against the file contents
/// (empty strings for missing files).
pub fn resolve(
    user: Option<&str>,
    additional: &[String],
    passwd: &str,
    group: &str,
) -> Result<Credentials, UserError> {
    let spec = user.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::NoSuchUser(user_part.to_string()))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user_part.parse().unwrap_or(0),
    };
    let mut gid = entry.as_ref().map_or(0, |e| e.gid);
    if let Some(g) = group_part {
        gid = lookup_group(group, g)?;
    }
    // The primary group first, as containerd and Docker (since CVE-2023-25173) put it
    // in the supplementary list: a process cannot drop it by setgroups and regain it.
    let mut groups = vec![gid];
    // As runc: /etc/group memberships count only when the group is not given.
    if let (Some(e), None) = (&entry, group_part) {
        for g in group_entries(group) {
            if g.members.contains(&e.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    for g in additional {
        let g = lookup_group(group, g)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let home = entry
        .as_ref()
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();
    Ok(Credentials {
        uid,
        gid,
        groups,
        home,
    })
}

/// Docker's environment rules: the image/user env, then `PATH` if missing, `HOSTNAME`,
/// `HOME` from the user's entry if missing, and `TERM=xterm` with a terminal.
pub fn process_env(env: &[String], hostname: &str, home: &str, terminal: bool) -> Vec<String> {
    let has = |k: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(key, _)| key == k))
    };
    let mut out = Vec::with_capacity(env.len() + 4);
    if !has("PATH") {
        out.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    }
    if !has("HOSTNAME") {
        out.push(format!("HOSTNAME={hostname}"));
    }
    if terminal && !has("TERM") {
        out.push("TERM=xterm".to_string());
    }
    out.extend(env.iter().cloned());
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1000:\naudio:x:29:app\n";

    #[test]
    fn no_user_is_root_with_roots_home() {
        let c = resolve(None, &[], PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn a_name_takes_uid_gid_home_and_supplementary_groups_from_the_files() {
        let c = resolve(Some("app"), &[], PASSWD, GROUP).unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 10, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn numbers_need_no_entry_and_groups_can_be_named() {
        let c = resolve(
            Some("4242:wheel"),
            &["audio".into(), "7".into()],
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: 4242,
                gid: 10,
                groups: vec![10, 29, 7],
                home: "/".into()
            }
        );
        let c = resolve(Some("1000"), &[], PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (1000, 1000, "/home/app"));
        // Without files at all, numbers still work.
        let c = resolve(Some("5:6"), &[], "", "").unwrap();
        assert_eq!((c.uid, c.gid), (5, 6));
    }

    #[test]
    fn an_explicit_group_drops_the_implicit_memberships_as_runc_does() {
        let c = resolve(Some("app:app"), &[], PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.groups.clone()), (1000, 1000, vec![1000]));
        let c = resolve(Some("app:app"), &["wheel".into()], PASSWD, GROUP).unwrap();
        assert_eq!(c.groups, vec![1000, 10]);
    }

    #[test]
    fn unknown_names_and_empty_parts_are_errors() {
        assert_eq!(
            resolve(Some("nobody"), &[], PASSWD, GROUP),
            Err(UserError::NoSuchUser("nobody".into()))
        );
        assert_eq!(
            resolve(Some("app:staff"), &[], PASSWD, GROUP),
            Err(UserError::NoSuchGroup("staff".into()))
        );
        assert!(matches!(
            resolve(Some("app:"), &[], PASSWD, GROUP),
            Err(UserError::Invalid(_))
        ));
        assert!(matches!(
            resolve(Some(":1"), &[], PASSWD, GROUP),
            Err(UserError::Invalid(_))
        ));
    }

    /// A container root in a temporary directory, beside a "host" file outside it.
    struct Root {
        _tmp: tempfile::TempDir,
        root: std::path::PathBuf,
        host_file: std::path::PathBuf,
        fd: std::fs::File,
    }

    fn root() -> Root {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let host_file = tmp.path().join("shadow");
        std::fs::write(&host_file, "root:HOST-SECRET:0:0::/root:/bin/sh\n").unwrap();
        let fd = std::fs::File::open(&root).unwrap();
        Root {
            _tmp: tmp,
            root,
            host_file,
            fd,
        }
    }

    fn read(r: &Root, path: &str) -> Result<String, UserError> {
        read_file(r.fd.as_fd(), path)
    }

    fn refused(r: &Root, path: &str, why: &str) {
        match read(r, path) {
            Err(UserError::File { path: p, why: w }) => {
                assert_eq!(p, format!("/{path}"));
                assert!(w.contains(why), "{w:?} does not say {why:?}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn a_plain_passwd_is_read_and_a_missing_one_is_empty() {
        let r = root();
        std::fs::write(r.root.join("etc/passwd"), PASSWD).unwrap();
        assert_eq!(read(&r, "etc/passwd").unwrap(), PASSWD);
        assert_eq!(read(&r, "etc/group").unwrap(), "");
        assert_eq!(read(&r, "nothing/here").unwrap(), "");
    }

    /// A hostile image links /etc/passwd to a host file, by absolute path or by
    /// climbing with `..`: the link resolves inside the container's root, where there is
    /// no such file, and the host's is never read. A link inside the root is followed,
    /// as Docker does (Nix-built images have one).
    #[test]
    fn symlinks_resolve_inside_the_container_root_only() {
        let r = root();
        let etc = r.root.join("etc");
        std::os::unix::fs::symlink(&r.host_file, etc.join("passwd")).unwrap();
        assert_eq!(read(&r, "etc/passwd").unwrap(), "");
        std::os::unix::fs::symlink("../../../../../../../shadow", etc.join("group")).unwrap();
        assert_eq!(read(&r, "etc/group").unwrap(), "");
        // /etc itself a link out.
        let r2 = root();
        std::fs::remove_dir(r2.root.join("etc")).unwrap();
        std::os::unix::fs::symlink(r2.host_file.parent().unwrap(), r2.root.join("etc")).unwrap();
        assert_eq!(read(&r2, "etc/shadow").unwrap(), "");
        // Inside the root: followed.
        let r3 = root();
        std::fs::create_dir_all(r3.root.join("nix/store/x")).unwrap();
        std::fs::write(r3.root.join("nix/store/x/passwd"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/nix/store/x/passwd", r3.root.join("etc/passwd")).unwrap();
        assert_eq!(read(&r3, "etc/passwd").unwrap(), PASSWD);
    }

    /// A /proc magic link (`/proc/self/fd/N`, `/proc/1/root/...`) could reach past any
    /// root: refused.
    #[test]
    fn proc_magic_links_are_refused() {
        let root = std::fs::File::open("/").unwrap();
        match read_file(root.as_fd(), "proc/self/fd/0") {
            Err(UserError::File { why, .. }) => assert!(why.contains("symbolic link"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    /// A hostile image makes /etc/passwd a FIFO (whose reader blocks until a writer
    /// comes, forever), a device, or a directory: refused at once, naming the file.
    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let r = root();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.root.join("etc/passwd"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        refused(&r, "etc/passwd", "a FIFO");
        std::os::unix::fs::symlink("/dev/null", r.root.join("etc/group")).unwrap();
        // /dev/null of the container root is whatever the image put there: nothing here.
        assert_eq!(read(&r, "etc/group").unwrap(), "");
        let host_null = std::fs::File::open("/").unwrap();
        match read_file(host_null.as_fd(), "dev/null") {
            Err(UserError::File { why, .. }) => assert!(why.contains("a device"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::create_dir(r.root.join("etc/shadow")).unwrap();
        refused(&r, "etc/shadow", "a directory");
    }

    /// A hostile image ships a 10 GB /etc/passwd (sparse here) to exhaust the agent's
    /// memory: refused by its size, naming the file.
    #[test]
    fn oversize_files_are_refused() {
        let r = root();
        let f = std::fs::File::create(r.root.join("etc/passwd")).unwrap();
        f.set_len(10 << 30).unwrap();
        refused(&r, "etc/passwd", "larger than 4 MiB");
        let f = std::fs::File::create(r.root.join("etc/group")).unwrap();
        f.set_len(MAX_FILE).unwrap();
        assert_eq!(read(&r, "etc/group").unwrap().len() as u64, MAX_FILE);
    }

    #[test]
    fn env_gets_dockers_defaults_without_overriding_given_values() {
        let env = process_env(&["A=1".into(), "HOME=/x".into()], "box", "/root", true);
        assert!(env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin")));
        assert!(env.contains(&"HOSTNAME=box".into()) && env.contains(&"TERM=xterm".into()));
        assert!(env.contains(&"HOME=/x".into()) && !env.contains(&"HOME=/root".into()));
        let env = process_env(&["PATH=/only".into()], "box", "/root", false);
        assert_eq!(
            env,
            vec![
                "HOSTNAME=box".to_string(),
                "PATH=/only".into(),
                "HOME=/root".into()
            ]
        );
    }
}
