//! Volumes (`arca volume`, `-v NAME:/path`, `--mount type=volume`, image `VOLUME`s):
//! directories the runtime keeps apart from any container, as Docker's `local` driver.
//!
//! ```text
//! volumes/lock                 flock(2) for every change, and while a run claims one
//! volumes/<name>/volume.json   name, creation time, labels, anonymous or not
//! volumes/<name>/_data/        the content (what containers see at the mount point)
//! ```
//!
//! A volume is in use while a container record (running or not) names it: `volume rm`
//! refuses it then, as Docker. An anonymous volume (`-v /path`, an image's `VOLUME`)
//! goes with its container under `run --rm` and `rm -v`; a named one stays until
//! `volume rm` or `volume prune -a`. A new volume is filled from the image's content
//! at its mount point the first time a container mounts it (unless `nocopy`).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::container::record::{find as find_container, list as list_containers};
use crate::image::store::Image;
use crate::storage::{MountPoint, MountRequest, MountType, RequestKind, order_mounts};

/// What volume commands fail with.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// The name is not a volume name.
    #[error(
        "{0:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    )]
    BadName(String),
    /// No volume has that name.
    #[error("get {0}: no such volume")]
    NotFound(String),
    /// Containers use it.
    #[error("remove {name}: volume is in use - [{}]", users.join(", "))]
    InUse {
        /// The volume.
        name: String,
        /// The containers naming it.
        users: Vec<String>,
    },
    /// A mount cannot be made as asked.
    #[error("{0}")]
    Mount(String),
    /// An option `volume create` does not take.
    #[error("{0}")]
    Unsupported(String),
    /// `volume.json` is not a volume's.
    #[error("Corrupt volume record {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Filling a new volume from the image failed.
    #[error("Cannot copy the image's {target} into volume {name}: {reason}")]
    Populate {
        /// The volume.
        name: String,
        /// The mount point in the image.
        target: String,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("Cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

/// `volume.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    /// Its name (64 hex digits for an anonymous one).
    pub name: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// `--label`s.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Made for one container (`-v /path`, an image's `VOLUME`): goes with it under
    /// `run --rm` and `rm -v`, and is what `volume prune` removes by default.
    #[serde(default)]
    pub anonymous: bool,
    /// Filled from an image already (or made with content): never filled again.
    #[serde(default)]
    pub populated: bool,
}

/// `<state>/volumes`.
pub fn volumes_dir(state: &Path) -> PathBuf {
    state.join("volumes")
}

/// Docker's rule for local volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, and at most
/// 255 bytes (a file name).
pub fn validate_name(name: &str) -> Result<(), VolumeError> {
    let b = name.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadName(name.to_string()))
    }
}

/// The exclusive lock on the volumes; held while volumes are made, claimed by a
/// container record, or removed.
#[derive(Debug)]
pub struct VolumesLock(#[allow(dead_code)] std::fs::File);

/// Takes [`VolumesLock`].
pub fn lock(state: &Path) -> Result<VolumesLock, VolumeError> {
    let dir = volumes_dir(state);
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let path = dir.join("lock");
    let f = crate::state::lock_file(&path, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|(action, e)| io_err(action, &path)(e))?;
    Ok(VolumesLock(f))
}

/// Where volume `name`'s content lives (what `inspect` calls its Mountpoint).
pub fn data_dir(state: &Path, name: &str) -> PathBuf {
    volumes_dir(state).join(name).join("_data")
}

/// Reads volume `name`.
pub fn get(state: &Path, name: &str) -> Result<Volume, VolumeError> {
    validate_name(name)?;
    let path = volumes_dir(state).join(name).join("volume.json");
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        other => other.map_err(io_err("read", &path))?,
    };
    serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
        path,
        reason: e.to_string(),
    })
}

fn save(state: &Path, v: &Volume) -> Result<(), VolumeError> {
    let path = volumes_dir(state).join(&v.name).join("volume.json");
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| VolumeError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("write", &path))
}

/// A fresh anonymous volume name: 64 hex digits, as Docker's.
pub fn anonymous_name() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Volume `name` as it is, or made now (empty, `_data` mode 0755 owned by root as
/// Docker's). Call with the [`lock`] held. A half-made volume (no `volume.json`) is
/// made again.
pub fn ensure(
    state: &Path,
    _lock: &VolumesLock,
    name: &str,
    labels: std::collections::BTreeMap<String, String>,
    anonymous: bool,
) -> Result<(Volume, bool), VolumeError> {
    match get(state, name) {
        Ok(v) => return Ok((v, false)),
        Err(VolumeError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let dir = volumes_dir(state).join(name);
    let data = dir.join("_data");
    std::fs::create_dir_all(&data).map_err(io_err("create", &data))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("set the mode of", &data))?;
    let v = Volume {
        name: name.to_string(),
        created: crate::now(),
        labels,
        anonymous,
        populated: false,
    };
    save(state, &v)?;
    crate::events::emit(state, "volume", "create", name, &[("driver", "local")]);
    Ok((v, true))
}

/// Every volume, by name.
pub fn list(state: &Path) -> Result<Vec<Volume>, VolumeError> {
    let dir = volumes_dir(state);
    let entries = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(io_err("read", &dir))?,
    };
    let mut out: Vec<Volume> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| validate_name(n).is_ok())
        .filter_map(|n| get(state, &n).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The volumes container records name, each with those containers (the records are
/// read once).
pub fn in_use(state: &Path) -> std::collections::HashMap<String, Vec<String>> {
    let mut users = std::collections::HashMap::<String, Vec<String>>::new();
    for c in list_containers(state) {
        for name in c.mounts.iter().filter_map(|m| m.name.as_ref()) {
            let ids = users.entry(name.clone()).or_default();
            if !ids.contains(&c.id) {
                ids.push(c.id.clone());
            }
        }
    }
    users
}

/// The containers whose records name volume `name`.
pub fn users(state: &Path, name: &str) -> Vec<String> {
    in_use(state).remove(name).unwrap_or_default()
}

/// Removes volume `name`; refused while a container uses it (Docker's `volume rm -f`
/// refuses that too; it only forgives a missing volume).
pub fn remove(state: &Path, name: &str) -> Result<(), VolumeError> {
    let lock = lock(state)?;
    remove_locked(state, &lock, name)
}

fn remove_locked(state: &Path, _lock: &VolumesLock, name: &str) -> Result<(), VolumeError> {
    get(state, name)?;
    let users = users(state, name);
    if !users.is_empty() {
        return Err(VolumeError::InUse {
            name: name.to_string(),
            users,
        });
    }
    discard(state, name)
}

/// Removes a volume's files, its record first so a half-removed one is not listed.
fn discard(state: &Path, name: &str) -> Result<(), VolumeError> {
    let dir = volumes_dir(state).join(name);
    let record = dir.join("volume.json");
    match std::fs::remove_file(&record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err("remove", &record)(e));
        }
        _ => {}
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &dir)(e)),
        _ => {
            crate::events::emit(state, "volume", "destroy", name, &[("driver", "local")]);
            Ok(())
        }
    }
}

/// Removes the anonymous ones of `names` that no container uses any more (what
/// `run --rm` and `rm -v` do after the container is gone). Problems are warnings.
pub fn remove_anonymous(state: &Path, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let Ok(lock) = lock(state) else { return };
    for n in names {
        if get(state, n).is_ok_and(|v| v.anonymous)
            && let Err(e) = remove_locked(state, &lock, n)
        {
            eprintln!("arca: warning: {}", crate::error_chain(&e));
        }
    }
}

/// `volume prune`: removes the volumes no container uses, anonymous ones only unless
/// `all`. Returns their names and the bytes freed.
pub fn prune(state: &Path, all: bool) -> Result<(Vec<String>, u64), VolumeError> {
    let _lock = lock(state)?;
    let used = in_use(state);
    let (mut names, mut freed) = (Vec::new(), 0);
    for v in list(state)? {
        if (all || v.anonymous) && !used.contains_key(&v.name) {
            let size = dir_size(&data_dir(state, &v.name));
            discard(state, &v.name)?;
            names.push(v.name);
            freed += size;
        }
    }
    Ok((names, freed))
}

/// Bytes of the files under `dir` (not following links).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.size(),
            Err(_) => 0,
        })
        .sum()
}

/// Fills a new, empty volume from the image's `rootfs` at `target`, as Docker does the
/// first time a volume is mounted: content, owners, modes and the mount point's own
/// mode and owner. Nothing happens when the volume was filled before, has content, or
/// the image has nothing there. A symlink on the way in the image is not followed (the
/// image is untrusted: it would copy host files into the volume); the mount is refused
/// later for the same reason.
pub fn populate(
    state: &Path,
    _lock: &VolumesLock,
    name: &str,
    rootfs: &Path,
    target: &str,
) -> Result<(), VolumeError> {
    let mut v = get(state, name)?;
    if v.populated {
        return Ok(());
    }
    let data = data_dir(state, name);
    let empty = std::fs::read_dir(&data)
        .map_err(io_err("read", &data))?
        .next()
        .is_none();
    let mut source = rootfs.to_path_buf();
    let mut real_dir = true;
    for part in target.split('/').filter(|c| !c.is_empty()) {
        source.push(part);
        match std::fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => {}
            _ => {
                real_dir = false;
                break;
            }
        }
    }
    if empty && real_dir {
        let out = Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(source.join("."))
            .arg(&data)
            .output();
        let failed = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(format!("cannot run cp: {e}")),
        };
        if let Some(reason) = failed {
            return Err(VolumeError::Populate {
                name: name.to_string(),
                target: target.to_string(),
                reason,
            });
        }
    }
    v.populated = true;
    save(state, &v)
}

/// The container's mounts, made: `requests` (`-v`, `--mount`, `--tmpfs`), the mounts
/// of the `--volumes-from` containers (`NAME[:ro|rw]`) that `requests` do not cover,
/// and an anonymous volume for each of the image's `VOLUME`s that nothing else covers.
/// Volumes are made (anonymous ones named) and new ones filled from the image; a
/// missing bind source is made for `-v` and refused for `--mount`. Parents come before
/// the mounts inside them; a target twice is refused. Call with the [`lock`] held and
/// keep it until the container's record names the volumes. On error, the anonymous
/// volumes made here are removed again.
pub fn resolve(
    state: &Path,
    lock: &VolumesLock,
    image: &Image,
    requests: &[MountRequest],
    volumes_from: &[String],
) -> Result<Vec<MountPoint>, VolumeError> {
    let mut made = Vec::new();
    let result = resolve_into(state, lock, image, requests, volumes_from, &mut made);
    if result.is_err() {
        for n in &made {
            let _ = discard(state, n);
        }
    }
    result
}

fn resolve_into(
    state: &Path,
    lock: &VolumesLock,
    image: &Image,
    requests: &[MountRequest],
    volumes_from: &[String],
    made: &mut Vec<String>,
) -> Result<Vec<MountPoint>, VolumeError> {
    let norm = |t: &str| {
        format!(
            "/{}",
            t.split('/')
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join("/")
        )
    };
    let mut points: Vec<MountPoint> = Vec::new();
    let covered =
        |points: &[MountPoint], t: &str| points.iter().any(|p| norm(&p.destination) == norm(t));
    for r in requests {
        let point = match &r.kind {
            RequestKind::Bind { source, create } => {
                match std::fs::metadata(source) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && *create => {
                        std::fs::create_dir_all(source).map_err(io_err("create", source))?;
                        std::fs::set_permissions(source, std::fs::Permissions::from_mode(0o755))
                            .map_err(io_err("set the mode of", source))?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(VolumeError::Mount(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            source.display()
                        )));
                    }
                    Err(e) => return Err(io_err("inspect", source)(e)),
                }
                MountPoint {
                    kind: MountType::Bind,
                    name: None,
                    source: source.clone(),
                    destination: r.target.clone(),
                    rw: !r.readonly,
                    tmpfs: None,
                    anonymous: false,
                }
            }
            RequestKind::Volume { name, nocopy } => volume_point(
                state,
                lock,
                image,
                name.as_deref(),
                &r.target,
                *nocopy,
                !r.readonly,
                made,
            )?,
            RequestKind::Tmpfs(t) => MountPoint {
                kind: MountType::Tmpfs,
                name: None,
                source: PathBuf::new(),
                destination: r.target.clone(),
                rw: !r.readonly,
                tmpfs: Some(*t),
                anonymous: false,
            },
        };
        points.push(point);
    }
    for from in volumes_from {
        let (name, mode) = match from.rsplit_once(':') {
            Some((n, m @ ("ro" | "rw"))) => (n, Some(m == "rw")),
            Some((_, m)) => {
                return Err(VolumeError::Mount(format!(
                    "invalid --volumes-from {from:?}: mode {m:?} (use ro or rw)"
                )));
            }
            None => (from.as_str(), None),
        };
        let (_, rec) = find_container(state, name)
            .map_err(|e| VolumeError::Mount(format!("--volumes-from {name}: {e}")))?;
        for p in rec.mounts.iter().filter(|p| p.kind != MountType::Tmpfs) {
            if !covered(&points, &p.destination) {
                let mut p = p.clone();
                p.rw = mode.unwrap_or(p.rw);
                // It stays the other container's: only that one's --rm or rm -v removes it.
                p.anonymous = false;
                points.push(p);
            }
        }
    }
    let image_volumes = image.config.config.volumes.clone().unwrap_or_default();
    for target in image_volumes.keys() {
        let t = norm(target);
        if arca_protocol::validate_mount_target(&t).is_err() || !target.starts_with('/') {
            return Err(VolumeError::Mount(format!(
                "The image's VOLUME {target:?} is not a valid mount point (an absolute path without . or ..)"
            )));
        }
        if !covered(&points, &t) {
            let p = volume_point(state, lock, image, None, &t, false, true, made)?;
            points.push(p);
        }
    }
    order_mounts(&mut points).map_err(|e| VolumeError::Mount(e.to_string()))?;
    Ok(points)
}

/// A volume mount: named volume `name` (made if missing) or a new anonymous one, filled
/// from the image at `target` unless `nocopy`.
#[allow(clippy::too_many_arguments)]
fn volume_point(
    state: &Path,
    lock: &VolumesLock,
    image: &Image,
    name: Option<&str>,
    target: &str,
    nocopy: bool,
    rw: bool,
    made: &mut Vec<String>,
) -> Result<MountPoint, VolumeError> {
    let anonymous = name.is_none();
    let name = name.map_or_else(anonymous_name, String::from);
    let (_, new) = ensure(state, lock, &name, Default::default(), anonymous)?;
    if new && anonymous {
        made.push(name.clone());
    }
    if !nocopy {
        populate(state, lock, &name, &image.rootfs, target)?;
    }
    Ok(MountPoint {
        kind: MountType::Volume,
        source: data_dir(state, &name),
        name: Some(name),
        destination: target.to_string(),
        rw,
        tmpfs: None,
        anonymous,
    })
}

/// The anonymous volumes among a container's mounts (what `run --rm` and `rm -v`
/// remove with it).
pub fn anonymous_of(mounts: &[MountPoint]) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| m.anonymous)
        .filter_map(|m| m.name.clone())
        .collect()
}

/// `volume create` options: `-d/--driver` must be `local` and `-o/--opt` is refused
/// (Arca's volumes are directories; Docker's `local` driver options mount other
/// filesystems).
pub fn check_create_options(driver: Option<&str>, opts: &[String]) -> Result<(), VolumeError> {
    if let Some(d) = driver.filter(|d| *d != "local") {
        return Err(VolumeError::Unsupported(format!(
            "volume driver {d:?} is not supported: Arca has the local driver only"
        )));
    }
    if let Some(o) = opts.first() {
        return Err(VolumeError::Unsupported(format!(
            "volume option {o:?} is not supported: Arca's local volumes are plain directories (no type=, device= or o= mounts)"
        )));
    }
    Ok(())
}

/// `volume inspect`'s view of `v`, Docker's fields.
pub fn inspect_json(state: &Path, v: &Volume) -> serde_json::Value {
    serde_json::json!({
        "CreatedAt": crate::rfc3339(v.created),
        "Driver": "local",
        "Labels": v.labels,
        "Mountpoint": data_dir(state, &v.name),
        "Name": v.name,
        "Options": serde_json::Value::Null,
        "Scope": "local",
    })
}

/// `volume ls --format table`: Docker's default columns.
pub const VOLUMES_TABLE: &str = "table {{.Driver}}\\t{{.Name}}";

/// `volume ls --format`: Docker's fields (all strings) and column titles, one row per
/// volume. Arca does not measure volumes here: `Size` is `N/A` as in Docker's list.
pub fn ls_formatted(
    state: &Path,
    volumes: &[Volume],
    format: &str,
) -> Result<String, crate::template::TemplateError> {
    let header = serde_json::json!({
        "Name": "VOLUME NAME",
        "Driver": "DRIVER",
        "Scope": "SCOPE",
        "Mountpoint": "MOUNTPOINT",
        "Labels": "LABELS",
        "Links": "LINKS",
        "Size": "SIZE",
        "CreatedAt": "CREATED AT",
    });
    let rows: Vec<serde_json::Value> = volumes
        .iter()
        .map(|v| {
            let labels = crate::labels_text(&v.labels);
            serde_json::json!({
                "Name": v.name,
                "Driver": "local",
                "Scope": "local",
                "Mountpoint": data_dir(state, &v.name).to_string_lossy(),
                "Labels": labels,
                "Links": "N/A",
                "Size": "N/A",
                "CreatedAt": crate::go_time(v.created),
            })
        })
        .collect();
    crate::template::render_list(
        &crate::template::ListFormat::new(format, VOLUMES_TABLE),
        &header,
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn names_follow_dockers_rule() {
        for good in ["ab", "data", "my_vol.1-x", &"a".repeat(255)] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            "a",
            "a/b",
            "../x",
            ".hidden",
            "-x",
            "a b",
            "é1",
            &"a".repeat(256),
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid characters"), "{bad}: {err}");
        }
    }

    #[test]
    fn volumes_are_made_once_listed_and_removed_when_unused() {
        let s = state();
        let l = lock(s.path()).unwrap();
        let (v, made) = ensure(s.path(), &l, "data", Default::default(), false).unwrap();
        assert!(made && !v.anonymous);
        std::fs::write(data_dir(s.path(), "data").join("f"), "x").unwrap();
        let (_, made) = ensure(s.path(), &l, "data", Default::default(), false).unwrap();
        assert!(!made, "an existing volume is kept, content and all");
        assert!(data_dir(s.path(), "data").join("f").exists());
        let mode = std::fs::metadata(data_dir(s.path(), "data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let anon = anonymous_name();
        assert_eq!(anon.len(), 64);
        ensure(s.path(), &l, &anon, Default::default(), true).unwrap();
        drop(l);
        let names: Vec<_> = list(s.path())
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names.len(), 2);
        assert!(matches!(
            get(s.path(), "nope"),
            Err(VolumeError::NotFound(_))
        ));
        let (pruned, freed) = prune(s.path(), false).unwrap();
        assert_eq!((pruned, freed), (vec![anon], 0));
        let (pruned, freed) = prune(s.path(), true).unwrap();
        assert_eq!((pruned, freed), (vec!["data".to_string()], 1));
        assert!(list(s.path()).unwrap().is_empty());
        assert!(!volumes_dir(s.path()).join("data").exists());
    }

    /// A hostile image puts a symlink to a host directory where a volume is mounted:
    /// nothing of the host is copied into the volume.
    #[test]
    fn population_copies_the_image_and_never_follows_its_symlinks() {
        let s = state();
        let rootfs = s.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("srv/data/sub")).unwrap();
        std::fs::write(rootfs.join("srv/data/sub/f"), "image").unwrap();
        std::fs::set_permissions(
            rootfs.join("srv/data"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        let secret = s.path().join("host-secret");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("key"), "secret").unwrap();
        std::os::unix::fs::symlink(&secret, rootfs.join("evil")).unwrap();
        let l = lock(s.path()).unwrap();
        for n in ["v1", "v2", "v3"] {
            ensure(s.path(), &l, n, Default::default(), false).unwrap();
        }
        populate(s.path(), &l, "v1", &rootfs, "/srv/data").unwrap();
        let d = data_dir(s.path(), "v1");
        assert_eq!(std::fs::read_to_string(d.join("sub/f")).unwrap(), "image");
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o1777,
            "the mount point's mode comes along"
        );
        // Filled once: a later container's mount does not copy again.
        std::fs::remove_file(d.join("sub/f")).unwrap();
        populate(s.path(), &l, "v1", &rootfs, "/srv/data").unwrap();
        assert!(!d.join("sub/f").exists());
        populate(s.path(), &l, "v2", &rootfs, "/evil").unwrap();
        assert!(!data_dir(s.path(), "v2").join("key").exists());
        populate(s.path(), &l, "v3", &rootfs, "/evil/x").unwrap();
        assert_eq!(
            std::fs::read_dir(data_dir(s.path(), "v3")).unwrap().count(),
            0
        );
    }

    #[test]
    fn create_refuses_other_drivers_and_options() {
        check_create_options(None, &[]).unwrap();
        check_create_options(Some("local"), &[]).unwrap();
        assert!(check_create_options(Some("nfs"), &[]).is_err());
        let err = check_create_options(None, &["type=nfs".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("type=nfs"), "{err}");
    }
}
