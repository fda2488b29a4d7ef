//! The image store: content-addressed blobs, unpacked root filesystems and tags under
//! `<state>/images`, changed only under an exclusive lock.
//!
//! ```text
//! images/lock                      flock(2) for every change
//! images/tags.json                 {"busybox:latest": "<image id>"}
//! images/blobs/sha256/<hex>        config and layer blobs, verified by digest
//! images/by-id/<id>/config.json    the image config
//! images/by-id/<id>/rootfs/        the layers applied in order (read-only lower layer)
//! images/tmp/                      work in progress, removed on failure
//! ```
//!
//! The image id is the hex SHA-256 of the image config, as Docker's.
//!
//! An image may decompress to at most [`DEFAULT_MAX_IMAGE_SIZE`] (or
//! `$ARCA_MAX_IMAGE_SIZE`, or [`Store::with_max_image_size`]): the layers' decompressed
//! bytes are counted while their `diff_id`s are checked, before anything is unpacked,
//! and again while unpacking (see [`super::unpack::SizeCap`]). Whatever an import left
//! in `tmp/` (a failure, or a killed `arca`) is removed there and then, or by the next
//! import: every user of `tmp/` holds the store lock.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::unpack::{SizeCap, UnpackError, apply_layer, capped, decompressed};

/// The default cap on an image's decompressed size: 64 GiB. Far above real images (the
/// largest public ones, CUDA and ML stacks, stay under 30 GiB unpacked) and equal to
/// the largest layer a pull downloads, while a gzip bomb (1000:1 and more) stops long
/// before it fills a disk.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 64 << 30;

/// The environment variable that sets the cap, in bytes with an optional `k`, `m`, `g`
/// or `t` suffix (powers of 1024).
pub const MAX_IMAGE_SIZE_VAR: &str = "ARCA_MAX_IMAGE_SIZE";

/// `n` bytes for people: `64 GiB`, `1.5 MiB`, `512 bytes`.
pub fn show_size(n: u64) -> String {
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in units {
        if n >= 1 << shift {
            let v = n as f64 / (1u64 << shift) as f64;
            return if n.is_multiple_of(1 << shift) {
                format!("{} {unit}", n >> shift)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{n} bytes")
}

/// Errors of the image store. Messages name the image or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image is used by a container.
    #[error(
        "Conflict: unable to remove image {image}: container {container} uses it (remove the container first)"
    )]
    InUse {
        /// The image.
        image: String,
        /// The container.
        container: String,
    },
    /// No image by that name or id.
    #[error("No such image: {0}")]
    NotFound(String),
    /// The reference does not parse.
    #[error("Invalid reference format: {0:?} (use NAME[:TAG] in lowercase)")]
    BadReference(String),
    /// The archive is neither a `docker save` tarball nor an OCI layout.
    #[error("{path} is not an image archive: {why}")]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A blob's content does not match its digest.
    #[error("Blob {name} fails verification: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        /// The blob's name in the archive.
        name: String,
        /// Its digest as announced.
        expected: String,
        /// Its actual digest.
        actual: String,
    },
    /// A layer could not be applied.
    #[error("Layer {layer} of image {image} cannot be applied")]
    Layer {
        /// The image.
        image: String,
        /// The layer's digest or name.
        layer: String,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// An image decompresses past the size cap.
    #[error(
        "Image {image} is larger than the size cap of {} ({limit} bytes): it passes it at layer {layer} (raise the cap with ARCA_MAX_IMAGE_SIZE)",
        show_size(*.limit)
    )]
    TooLarge {
        /// The image id.
        image: String,
        /// The digest (`diff_id`) of the layer at which the cap was passed.
        layer: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// A setting from the environment does not parse.
    #[error(
        "Invalid {name} {value:?}: give a size in bytes, with an optional k, m, g or t suffix (powers of 1024)"
    )]
    BadSetting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A JSON document of the image is malformed.
    #[error("Malformed {what} in {path}")]
    Json {
        /// Which document.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The parts of an image config the runtime uses (Docker's field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `architecture`.
    #[serde(default)]
    pub architecture: String,
    /// `os`.
    #[serde(default)]
    pub os: String,
    /// `config`: how to run it.
    #[serde(default)]
    pub config: RunConfig,
    /// `rootfs.diff_ids`: digests of the uncompressed layers.
    #[serde(default)]
    pub rootfs: RootfsConfig,
    /// `created`.
    #[serde(default)]
    pub created: Option<String>,
    /// `history`: how each layer was made, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// One step of an image config's `history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When, RFC 3339.
    #[serde(default)]
    pub created: Option<String>,
    /// The command that made it.
    #[serde(default)]
    pub created_by: Option<String>,
    /// A step that made no layer (`ENV`, `CMD`, ...).
    #[serde(default)]
    pub empty_layer: bool,
    /// A comment.
    #[serde(default)]
    pub comment: Option<String>,
}

/// `config` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `Env`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `User`.
    #[serde(default)]
    pub user: Option<String>,
    /// `Volumes`: mount points that get an anonymous volume unless the run mounts
    /// something there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// `StopSignal`: what `stop` sends first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `Labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// `ExposedPorts`: `{"80/tcp": {}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// `Healthcheck`: `{"Test": [...], "Interval": ns, ...}` (stored, not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    /// `OnBuild`: the triggers a build `FROM` this image runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// `Shell`: the shell of shell-form commands in builds from this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsConfig {
    /// `diff_ids`.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// Hex SHA-256 of the config.
    pub id: String,
    /// The config.
    pub config: ImageConfig,
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    /// Tags naming it.
    pub tags: Vec<String>,
}

impl Image {
    /// The image's size, one measure for `images`, `ps -s`, `system df` and the prunes:
    /// the blocks its directory (`by-id/<id>`: the unpacked root filesystem and its
    /// config) takes on the host disk.
    pub fn usage(&self) -> u64 {
        self.rootfs.parent().map_or(0, crate::storage::disk_usage)
    }
}

/// Normalises `NAME[:TAG]` the way Docker does for local names: `docker.io/library/`
/// and `docker.io/` dropped, `:latest` added.
pub fn normalize_reference(reference: &str) -> Result<String, StoreError> {
    let bad = || StoreError::BadReference(reference.to_string());
    let r = reference
        .strip_prefix("docker.io/library/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .unwrap_or(reference);
    let (name, tag) = match r.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (r, "latest"),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
        })
        && !name.starts_with(['/', '.', '-'])
        && !name.ends_with('/');
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name_ok && tag_ok {
        Ok(format!("{name}:{tag}"))
    } else {
        Err(bad())
    }
}

/// Hex SHA-256 of everything `reader` yields (`path` names it in errors).
fn sha256_reader(mut reader: impl Read, path: &Path) -> Result<String, StoreError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// The mark of a build step's image (see [`Store::commit_on`]).
const INTERMEDIATE: &str = "intermediate";

/// Copies the tree `from` to `to` (which must not exist), files as hard links,
/// directories anew with their owners, modes and times (`cp -al`).
fn link_tree(from: &Path, to: &Path) -> Result<(), StoreError> {
    let out = std::process::Command::new("cp")
        .arg("-al")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .map_err(io_err("run cp to copy", from))?;
    if !out.status.success() {
        return Err(io_err("copy", from)(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )));
    }
    Ok(())
}

/// Hex SHA-256 of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<String, StoreError> {
    sha256_reader(fs::File::open(path).map_err(io_err("open", path))?, path)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a layer's uncompressed tar stream (its `diff_id`), read no further than
/// `cap` leaves ([`UnpackError::TooLarge`] past it), and the stream's length.
fn diff_id(path: &Path, cap: &SizeCap) -> Result<(String, u64), UnpackError> {
    let (mut reader, count) = decompressed(path, cap)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(hex(&h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(source) => {
                break Err(UnpackError::Archive {
                    layer: path.to_path_buf(),
                    source,
                });
            }
        }
    };
    Ok((capped(result, &count, cap, path)?, count.get()))
}

/// What the store lock protects in `tmp/` is never in use when the lock is taken:
/// anything there was left by a failed or killed import.
fn clear_tmp(tmp: &Path) {
    if let Ok(entries) = fs::read_dir(tmp) {
        for e in entries.flatten() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Json {
        what: "document",
        path: path.to_path_buf(),
        source,
    })?;
    fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("replace", path))
}

/// `manifest.json` of a `docker save` archive.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An OCI (or Docker schema 2) descriptor: the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

/// A descriptor's platform.
#[derive(Debug, Deserialize)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
}

/// An OCI index or manifest, or a Docker manifest list or manifest (the fields used).
#[derive(Debug, Deserialize)]
pub(crate) struct OciDocument {
    #[serde(default)]
    pub(crate) manifests: Vec<Descriptor>,
    #[serde(default)]
    pub(crate) config: Option<Descriptor>,
    #[serde(default)]
    pub(crate) layers: Vec<Descriptor>,
}

impl OciDocument {
    /// The linux/amd64 entry of an index.
    pub(crate) fn linux_amd64(&self) -> Option<&Descriptor> {
        self.manifests.iter().find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
    }
}

/// One image to import: tags, config file, layer files in order.
pub(crate) struct Found {
    pub(crate) tags: Vec<String>,
    pub(crate) config: PathBuf,
    pub(crate) layers: Vec<PathBuf>,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    max_image_size: Option<u64>,
}

/// Holds the store lock until dropped.
#[derive(Debug)]
pub struct StoreLock(#[allow(dead_code)] fs::File);

/// Copies `from` to `to` as a private file (0600): `fs::copy` would keep the mode an
/// archive gave `from`.
fn copy_private(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::copy(from, to).map_err(io_err("store", to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o600)).map_err(io_err("store", to))
}

impl Store {
    /// Opens (creating) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let root = state_dir.join("images");
        for d in ["blobs/sha256", "by-id", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        Ok(Self {
            root,
            max_image_size: None,
        })
    }

    /// Caps the decompressed size of an image this store imports at `bytes` (instead
    /// of `$ARCA_MAX_IMAGE_SIZE` or [`DEFAULT_MAX_IMAGE_SIZE`]).
    pub fn with_max_image_size(mut self, bytes: u64) -> Self {
        self.max_image_size = Some(bytes);
        self
    }

    /// The cap on an image's decompressed size, in bytes.
    pub fn max_image_size(&self) -> Result<u64, StoreError> {
        if let Some(n) = self.max_image_size {
            return Ok(n);
        }
        match std::env::var(MAX_IMAGE_SIZE_VAR) {
            Ok(v) => crate::parse_size(&v).ok_or(StoreError::BadSetting {
                name: MAX_IMAGE_SIZE_VAR,
                value: v,
            }),
            Err(std::env::VarError::NotPresent) => Ok(DEFAULT_MAX_IMAGE_SIZE),
            Err(std::env::VarError::NotUnicode(v)) => Err(StoreError::BadSetting {
                name: MAX_IMAGE_SIZE_VAR,
                value: v.to_string_lossy().into_owned(),
            }),
        }
    }

    /// Takes the exclusive store lock (blocking until other `arca` processes let go).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let f = crate::state::lock_file(&path, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|(action, e)| io_err(action, &path)(e))?;
        Ok(StoreLock(f))
    }

    /// The store directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Imports one image whose files are already verified by digest (a pull).
    pub(crate) fn import_found(&self, found: Found) -> Result<Vec<String>, StoreError> {
        let _lock = self.lock()?;
        clear_tmp(&self.root.join("tmp"));
        let work = tempdir_in(&self.root.join("tmp"))?;
        let result = self.import(found, &work);
        let _ = fs::remove_dir_all(&work);
        result
    }

    fn tags_path(&self) -> PathBuf {
        self.root.join("tags.json")
    }

    fn tags(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let p = self.tags_path();
        if !p.exists() {
            return Ok(BTreeMap::new());
        }
        read_json(&p, "tag list")
    }

    /// Every image, with its tags.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let tags = self.tags()?;
        let dir = self.root.join("by-id");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            let id = e.file_name().to_string_lossy().into_owned();
            if !e.path().join("rootfs").is_dir() {
                continue;
            }
            out.push(self.image(&id, &tags)?);
        }
        out.sort_by(|a, b| a.tags.cmp(&b.tags).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn image(&self, id: &str, tags: &BTreeMap<String, String>) -> Result<Image, StoreError> {
        let dir = self.root.join("by-id").join(id);
        Ok(Image {
            id: id.to_string(),
            config: read_json(&dir.join("config.json"), "image config")?,
            rootfs: dir.join("rootfs"),
            tags: tags
                .iter()
                .filter(|(_, v)| *v == id)
                .map(|(k, _)| k.clone())
                .collect(),
        })
    }

    /// Finds an image by tag, full id or unique id prefix (at least 4 characters).
    pub fn resolve(&self, reference: &str) -> Result<Image, StoreError> {
        let tags = self.tags()?;
        if let Ok(name) = normalize_reference(reference)
            && let Some(id) = tags.get(&name)
        {
            return self.image(id, &tags);
        }
        let hexpart = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hexpart.len() >= 4 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
            let dir = self.root.join("by-id");
            let matches: Vec<String> = fs::read_dir(&dir)
                .map_err(io_err("read", &dir))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|id| id.starts_with(hexpart))
                .collect();
            if let [id] = matches.as_slice() {
                return self.image(id, &tags);
            }
        }
        normalize_reference(reference)?;
        Err(StoreError::NotFound(reference.to_string()))
    }

    /// A container (in `<state>/containers`) whose record names image `id`.
    fn container_using(&self, id: &str) -> Option<String> {
        let containers = self.root.parent()?.join("containers");
        fs::read_dir(containers)
            .ok()?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let text = fs::read_to_string(e.path().join("state.json")).ok()?;
                text.contains(&format!("\"image_id\": \"{id}\""))
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
    }

    /// Adds tag `target` to the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<String, StoreError> {
        let _lock = self.lock()?;
        let image = self.resolve(source)?;
        let name = normalize_reference(target)?;
        let mut tags = self.tags()?;
        tags.insert(name.clone(), image.id.clone());
        write_json(&self.tags_path(), &tags)?;
        self.event("tag", &format!("sha256:{}", image.id), &name);
        Ok(name)
    }

    /// The sizes of image `id`'s layers as stored (compressed if they came so), oldest
    /// first.
    pub fn layer_sizes(&self, id: &str) -> Vec<u64> {
        let layers: Vec<String> = read_json(
            &self.root.join("by-id").join(id).join("layers.json"),
            "layer list",
        )
        .unwrap_or_default();
        layers
            .iter()
            .map(|l| fs::metadata(self.root.join("blobs/sha256").join(l)).map_or(0, |m| m.len()))
            .collect()
    }

    /// `image prune`: removes the images no container uses that have no tag (with
    /// `all`, tagged ones too). Returns Docker's report lines (`untagged: TAG`,
    /// `deleted: sha256:ID`) and the bytes freed.
    pub fn prune(&self, all: bool) -> Result<(Vec<String>, u64), StoreError> {
        let mut lines = Vec::new();
        let mut freed = 0;
        for image in self.list()? {
            if (!all && !image.tags.is_empty()) || self.container_using(&image.id).is_some() {
                continue;
            }
            let size = image.usage();
            if let Ok(Some(id)) = self.remove(&image.id) {
                lines.extend(image.tags.iter().map(|t| format!("untagged: {t}")));
                lines.push(format!("deleted: sha256:{id}"));
                freed += size;
            }
        }
        Ok((lines, freed))
    }

    /// Removes a tag; the image goes when its last tag does (or when named by id).
    /// Returns the id if the image itself was deleted.
    pub fn remove(&self, reference: &str) -> Result<Option<String>, StoreError> {
        let _lock = self.lock()?;
        let image = self.resolve(reference)?;
        let mut tags = self.tags()?;
        let last_name = tags.values().filter(|v| **v == image.id).count() <= 1;
        if (last_name || !normalize_reference(reference).is_ok_and(|n| tags.contains_key(&n)))
            && let Some(user) = self.container_using(&image.id)
        {
            return Err(StoreError::InUse {
                image: reference.to_string(),
                container: user,
            });
        }
        let by_tag = normalize_reference(reference)
            .ok()
            .filter(|n| tags.contains_key(n));
        let untagged: Vec<String> = match by_tag {
            Some(name) => {
                tags.remove(&name);
                vec![name]
            }
            None => {
                let gone = tags
                    .iter()
                    .filter(|(_, v)| **v == image.id)
                    .map(|(k, _)| k.clone())
                    .collect();
                tags.retain(|_, v| *v != image.id);
                gone
            }
        };
        write_json(&self.tags_path(), &tags)?;
        let full_id = format!("sha256:{}", image.id);
        // Docker's: one untag a tag, the image ID as actor and name.
        for _ in &untagged {
            self.event("untag", &full_id, &full_id);
        }
        if tags.values().any(|v| *v == image.id) {
            return Ok(None);
        }
        let dir = self.root.join("by-id").join(&image.id);
        let layers: Vec<String> =
            read_json(&dir.join("layers.json"), "layer list").unwrap_or_default();
        let trash = tempdir_in(&self.root.join("tmp"))?.join("image");
        fs::rename(&dir, &trash).map_err(io_err("remove", &dir))?;
        fs::remove_dir_all(&trash).map_err(io_err("remove", &trash))?;
        // Layers no other image lists go too.
        let still_used: Vec<String> = fs::read_dir(self.root.join("by-id"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                read_json::<Vec<String>>(&e.path().join("layers.json"), "layer list").ok()
            })
            .flatten()
            .collect();
        for l in layers.iter().filter(|l| !still_used.contains(l)) {
            let _ = fs::remove_file(self.root.join("blobs/sha256").join(l));
        }
        self.event("delete", &full_id, &full_id);
        Ok(Some(image.id))
    }

    /// The digests (hex) of image `id`'s layer blobs as stored, oldest first (what
    /// `save` and `push` send); an image stored without them is named.
    fn stored_layers(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("by-id").join(id);
        read_json(&dir.join("layers.json"), "layer list").map_err(|_| StoreError::BadArchive {
            path: dir,
            why: "the image was stored without its layers (load or pull it again)".into(),
        })
    }

    /// What `push` sends for the image `reference` names: the image, its config file
    /// (checked against the image id) and its layer blobs as stored (compressed or
    /// not), oldest first.
    pub(crate) fn push_source(
        &self,
        reference: &str,
    ) -> Result<(Image, PathBuf, Vec<PathBuf>), StoreError> {
        let image = self.resolve(reference)?;
        let dir = self.root.join("by-id").join(&image.id);
        let layers = self.stored_layers(&image.id)?;
        let config = dir.join("config.json");
        let actual = sha256_file(&config)?;
        if actual != image.id {
            return Err(StoreError::DigestMismatch {
                name: config.display().to_string(),
                expected: image.id.clone(),
                actual,
            });
        }
        let blobs = layers
            .iter()
            .map(|l| self.root.join("blobs/sha256").join(l))
            .collect();
        Ok((image, config, blobs))
    }

    /// Writes `references` as one `docker save` tarball at `out` (written to a
    /// temporary file first, so a failure leaves nothing).
    pub fn save(&self, references: &[String], out: &Path) -> Result<(), StoreError> {
        let tmp = out.with_extension("arca-partial");
        let result = self.save_to(references, &tmp);
        match result {
            Ok(()) => fs::rename(&tmp, out).map_err(io_err("write", out)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn save_to(&self, references: &[String], out: &Path) -> Result<(), StoreError> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let file = fs::File::create(out).map_err(io_err("create", out))?;
        let mut tar = tar::Builder::new(io::BufWriter::new(file));
        let mut add = |name: &str, data: &mut dyn Read, size: u64| -> Result<(), StoreError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, data)
                .map_err(io_err("write", out))
        };
        let mut entries = Vec::new();
        let mut written: Vec<String> = Vec::new();
        for r in references {
            let image = self.resolve(r)?;
            let dir = self.root.join("by-id").join(&image.id);
            let layers = self.stored_layers(&image.id)?;
            let config = dir.join("config.json");
            let config_name = format!("{}.json", image.id);
            if !written.contains(&config_name) {
                let size = fs::metadata(&config)
                    .map_err(io_err("read", &config))?
                    .len();
                add(
                    &config_name,
                    &mut fs::File::open(&config).map_err(io_err("read", &config))?,
                    size,
                )?;
                written.push(config_name.clone());
            }
            let mut names = Vec::new();
            for (blob, diff) in layers.iter().zip(&image.config.rootfs.diff_ids) {
                let diff = diff.strip_prefix("sha256:").unwrap_or(diff);
                let name = format!("{diff}/layer.tar");
                if !written.contains(&name) {
                    // docker save layers are uncompressed: their digest is the diff_id.
                    let path = self.root.join("blobs/sha256").join(blob);
                    let mut f = fs::File::open(&path).map_err(io_err("read", &path))?;
                    let mut magic = [0u8; 2];
                    let gz = f.read(&mut magic).map_err(io_err("read", &path))? == 2
                        && magic == [0x1f, 0x8b];
                    let size = if gz {
                        let mut n = 0u64;
                        let mut d = flate2::read::GzDecoder::new(
                            fs::File::open(&path).map_err(io_err("read", &path))?,
                        );
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            let k = d.read(&mut buf).map_err(io_err("read", &path))?;
                            if k == 0 {
                                break n;
                            }
                            n += k as u64;
                        }
                    } else {
                        fs::metadata(&path).map_err(io_err("read", &path))?.len()
                    };
                    let f = fs::File::open(&path).map_err(io_err("read", &path))?;
                    let mut reader: Box<dyn Read> = if gz {
                        Box::new(flate2::read::GzDecoder::new(f))
                    } else {
                        Box::new(f)
                    };
                    add(&name, &mut reader, size)?;
                    written.push(name.clone());
                }
                names.push(name);
            }
            let repo_tags = match normalize_reference(r)
                .ok()
                .filter(|n| image.tags.contains(n))
            {
                Some(n) => vec![n],
                None => image.tags.clone(),
            };
            entries.push(Entry {
                config: config_name,
                repo_tags,
                layers: names,
            });
        }
        let manifest = serde_json::to_vec(&entries).map_err(|source| StoreError::Json {
            what: "manifest.json",
            path: out.to_path_buf(),
            source,
        })?;
        add("manifest.json", &mut &manifest[..], manifest.len() as u64)?;
        let mut w = tar.into_inner().map_err(io_err("write", out))?;
        io::Write::flush(&mut w).map_err(io_err("write", out))
    }

    /// Loads a `docker save` tarball or an OCI image layout tarball. Returns the tags
    /// (or ids, for untagged images) loaded.
    pub fn load(&self, archive: &Path) -> Result<Vec<String>, StoreError> {
        let _lock = self.lock()?;
        clear_tmp(&self.root.join("tmp"));
        let work = tempdir_in(&self.root.join("tmp"))?;
        let result = self.load_in(archive, &work);
        let _ = fs::remove_dir_all(&work);
        // Docker's: the image ID as actor and name, once an image.
        if let Ok(names) = &result {
            let mut ids: Vec<String> = names
                .iter()
                .filter_map(|n| self.resolve(n).ok())
                .map(|i| format!("sha256:{}", i.id))
                .collect();
            ids.dedup();
            for id in ids {
                self.event("load", &id, &id);
            }
        }
        result
    }

    /// Adds an image made on this host (`arca build`): `config` is Docker's image
    /// config, whose `rootfs` is filled here from `layers` (uncompressed tars, oldest
    /// first, checked and unpacked as a loaded image's are); `tags` name it. The same
    /// config and layers give the same image ID.
    pub fn commit(
        &self,
        mut config: serde_json::Value,
        layers: &[PathBuf],
        tags: &[String],
    ) -> Result<Image, StoreError> {
        let _lock = self.lock()?;
        clear_tmp(&self.root.join("tmp"));
        let work = tempdir_in(&self.root.join("tmp"))?;
        let result = (|| {
            let diff_ids = layers
                .iter()
                .map(|l| sha256_file(l).map(|d| format!("sha256:{d}")))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(object) = config.as_object_mut() else {
                return Err(StoreError::BadArchive {
                    path: work.join("config.json"),
                    why: "an image config must be a JSON object".into(),
                });
            };
            object.insert(
                "rootfs".into(),
                serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
            );
            let path = work.join("config.json");
            write_json(&path, &config)?;
            let names = self.import(
                Found {
                    tags: tags.to_vec(),
                    config: path,
                    layers: layers.to_vec(),
                },
                &work,
            )?;
            let first = names.first().cloned().unwrap_or_default();
            self.resolve(&first)
        })();
        let _ = fs::remove_dir_all(&work);
        result
    }

    /// Adds the image a build step made (`arca build`): `parent`'s layers (none for
    /// `scratch`) and `layer` (an uncompressed tar, untrusted: checked and unpacked as
    /// a pulled layer), with `config` (Docker's image config; its `rootfs` is filled
    /// here). Only the new layer is unpacked: the parent's root filesystem is copied as
    /// hard links (an unpacked layer replaces a file, never writes into it). An
    /// `intermediate` image is a step's, kept for the build cache and listed by
    /// `images -a` only while untagged.
    pub fn commit_on(
        &self,
        parent: Option<&Image>,
        mut config: serde_json::Value,
        layer: Option<&Path>,
        tags: &[String],
        intermediate: bool,
    ) -> Result<Image, StoreError> {
        let _lock = self.lock()?;
        clear_tmp(&self.root.join("tmp"));
        let work = tempdir_in(&self.root.join("tmp"))?;
        let result = (|| {
            let bad = |why: String| StoreError::BadArchive {
                path: work.join("config.json"),
                why,
            };
            let (mut diff_ids, mut kept) = match parent {
                Some(p) => {
                    let kept: Vec<String> = read_json(
                        &self.root.join("by-id").join(&p.id).join("layers.json"),
                        "layer list",
                    )?;
                    if kept.len() != p.config.rootfs.diff_ids.len() {
                        return Err(bad(format!(
                            "image {} keeps {} layers for {} diff IDs",
                            p.id,
                            kept.len(),
                            p.config.rootfs.diff_ids.len()
                        )));
                    }
                    (p.config.rootfs.diff_ids.clone(), kept)
                }
                None => (Vec::new(), Vec::new()),
            };
            let limit = self.max_image_size()?;
            let mut new_blob = None;
            if let Some(layer) = layer {
                let (digest, _) = diff_id(layer, &SizeCap::new(limit)).map_err(|e| match e {
                    UnpackError::TooLarge { .. } => StoreError::TooLarge {
                        image: "(build)".into(),
                        layer: layer.display().to_string(),
                        limit,
                    },
                    e => bad(e.to_string()),
                })?;
                diff_ids.push(format!("sha256:{digest}"));
                kept.push(digest.clone());
                new_blob = Some((layer, digest));
            }
            let Some(object) = config.as_object_mut() else {
                return Err(bad("an image config must be a JSON object".into()));
            };
            object.insert(
                "rootfs".into(),
                serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
            );
            let config_path = work.join("config.json");
            write_json(&config_path, &config)?;
            let id = sha256_file(&config_path)?;
            let dest = self.root.join("by-id").join(&id);
            if !dest.join("rootfs").is_dir() {
                let staging = work.join(format!("image-{id}"));
                fs::create_dir(&staging).map_err(io_err("create", &staging))?;
                let rootfs = staging.join("rootfs");
                match parent {
                    Some(p) => link_tree(&p.rootfs, &rootfs)?,
                    None => {
                        fs::create_dir(&rootfs).map_err(io_err("create", &rootfs))?;
                        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))
                            .map_err(io_err("create", &rootfs))?;
                    }
                }
                if let Some((layer, digest)) = &new_blob {
                    apply_layer(&rootfs, layer, &mut SizeCap::new(limit)).map_err(|source| {
                        StoreError::Layer {
                            image: id.clone(),
                            layer: format!("sha256:{digest}"),
                            source,
                        }
                    })?;
                    let blob = self.root.join("blobs/sha256").join(digest);
                    if !blob.exists() {
                        let tmp = blob.with_extension("tmp");
                        copy_private(layer, &tmp)?;
                        fs::rename(&tmp, &blob).map_err(io_err("store", &blob))?;
                    }
                }
                copy_private(&config_path, &staging.join("config.json"))?;
                write_json(&staging.join("layers.json"), &kept)?;
                if intermediate {
                    let mark = staging.join(INTERMEDIATE);
                    fs::write(&mark, b"").map_err(io_err("write", &mark))?;
                }
                let _ = fs::remove_dir_all(&dest);
                fs::rename(&staging, &dest).map_err(io_err("store", &dest))?;
            }
            if !tags.is_empty() {
                let mut all = self.tags()?;
                for t in tags {
                    all.insert(normalize_reference(t)?, id.clone());
                }
                write_json(&self.tags_path(), &all)?;
            }
            let all = self.tags()?;
            self.image(&id, &all)
        })();
        let _ = fs::remove_dir_all(&work);
        result
    }

    /// Makes image `id` an image of its own (a build's result), no longer only a
    /// step's: `images` lists it.
    pub fn keep(&self, id: &str) -> Result<(), StoreError> {
        let mark = self.root.join("by-id").join(id).join(INTERMEDIATE);
        match fs::remove_file(&mark) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &mark)(e)),
            _ => Ok(()),
        }
    }

    /// Whether image `id` is a build step's, kept for the build cache.
    pub fn is_intermediate(&self, id: &str) -> bool {
        self.root.join("by-id").join(id).join(INTERMEDIATE).exists()
    }

    /// The image the build cache holds for `key` (a step's cache key), if it is
    /// still in the store.
    pub fn cached(&self, key: &str) -> Option<Image> {
        let id = fs::read_to_string(self.root.join("build-cache").join(key)).ok()?;
        let id = id.trim();
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tags = self.tags().ok()?;
        self.root
            .join("by-id")
            .join(id)
            .join("rootfs")
            .is_dir()
            .then(|| self.image(id, &tags).ok())
            .flatten()
    }

    /// Records in the build cache that step `key` made image `id`.
    pub fn cache(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let dir = self.root.join("build-cache");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = dir.join(key);
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        fs::write(&tmp, id).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_err("replace", &path))
    }

    /// Records an image event (`events`) in the state directory the store is in.
    pub(crate) fn event(&self, action: &str, id: &str, name: &str) {
        if let Some(state) = self.root.parent() {
            crate::events::emit(state, "image", action, id, &[("name", name)]);
        }
    }

    fn load_in(&self, archive: &Path, work: &Path) -> Result<Vec<String>, StoreError> {
        let bad = |why: String| StoreError::BadArchive {
            path: archive.to_path_buf(),
            why,
        };
        let tree = work.join("archive");
        fs::create_dir(&tree).map_err(io_err("create", &tree))?;
        // The archive is untrusted: extract it with the layer rules (no escapes), and
        // the image size cap (it may be a compressed bomb too).
        let limit = self.max_image_size()?;
        apply_layer(&tree, archive, &mut SizeCap::new(limit)).map_err(|e| match e {
            UnpackError::TooLarge { .. } => bad(format!(
                "it unpacks to more than the image size cap of {} (raise the cap with ARCA_MAX_IMAGE_SIZE)",
                show_size(limit)
            )),
            e => bad(e.to_string()),
        })?;
        let found = if inside(&tree, "oci-layout").is_ok() {
            oci_layout(&tree).map_err(|e| match e {
                StoreError::BadArchive { why, .. } => bad(why),
                e => e,
            })?
        } else if inside(&tree, "manifest.json").is_ok() {
            docker_archive(&tree)?
        } else {
            return Err(bad(
                "no manifest.json (docker save) or oci-layout (OCI layout)".into(),
            ));
        };
        if found.is_empty() {
            return Err(bad("it holds no image".into()));
        }
        let mut loaded = Vec::new();
        for image in found {
            loaded.extend(self.import(image, work)?);
        }
        Ok(loaded)
    }

    fn import(&self, found: Found, work: &Path) -> Result<Vec<String>, StoreError> {
        let id = sha256_file(&found.config)?;
        let config: ImageConfig = read_json(&found.config, "image config")?;
        if config.rootfs.diff_ids.len() != found.layers.len() {
            return Err(StoreError::BadArchive {
                path: found.config.clone(),
                why: format!(
                    "the config lists {} layers, the manifest {}",
                    config.rootfs.diff_ids.len(),
                    found.layers.len()
                ),
            });
        }
        let limit = self.max_image_size()?;
        let too_large = |layer: &str| StoreError::TooLarge {
            image: id.clone(),
            layer: layer.to_string(),
            limit,
        };
        // The sum of the layers' decompressed sizes meets the cap here, before anything
        // is unpacked.
        let mut cap = SizeCap::new(limit);
        for (layer, want) in found.layers.iter().zip(&config.rootfs.diff_ids) {
            let (got, size) = diff_id(layer, &cap).map_err(|source| match source {
                UnpackError::TooLarge { .. } => too_large(want),
                source => StoreError::Layer {
                    image: id.clone(),
                    layer: want.clone(),
                    source,
                },
            })?;
            cap.add(size);
            let want = want.strip_prefix("sha256:").unwrap_or(want);
            if got != want {
                return Err(StoreError::DigestMismatch {
                    name: layer.display().to_string(),
                    expected: want.to_string(),
                    actual: got,
                });
            }
        }
        let names: Vec<String> = found
            .tags
            .iter()
            .map(|t| normalize_reference(t))
            .collect::<Result<_, _>>()?;
        let dest = self.root.join("by-id").join(&id);
        if !dest.join("rootfs").is_dir() {
            let staging = work.join(format!("image-{id}"));
            let rootfs = staging.join("rootfs");
            fs::create_dir_all(&rootfs).map_err(io_err("create", &rootfs))?;
            // The container's `/`, unless a layer says otherwise: not arca's 0700.
            fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))
                .map_err(io_err("create", &rootfs))?;
            // Counted again: the unpacking reads the layers anew.
            let mut cap = SizeCap::new(limit);
            for (layer, diff) in found.layers.iter().zip(&config.rootfs.diff_ids) {
                apply_layer(&rootfs, layer, &mut cap).map_err(|source| match source {
                    UnpackError::TooLarge { .. } => too_large(diff),
                    source => StoreError::Layer {
                        image: id.clone(),
                        layer: diff.clone(),
                        source,
                    },
                })?;
            }
            copy_private(&found.config, &staging.join("config.json"))?;
            // Keep the layers (as given, compressed or not) for `save`, by their own
            // digest; `layers.json` lists them in order.
            let mut kept = Vec::new();
            for layer in &found.layers {
                let digest = sha256_file(layer)?;
                let blob = self.root.join("blobs/sha256").join(&digest);
                if !blob.exists() {
                    let tmp = blob.with_extension("tmp");
                    copy_private(layer, &tmp)?;
                    fs::rename(&tmp, &blob).map_err(io_err("store", &blob))?;
                }
                kept.push(digest);
            }
            write_json(&staging.join("layers.json"), &kept)?;
            let _ = fs::remove_dir_all(&dest);
            fs::rename(&staging, &dest).map_err(io_err("store", &dest))?;
        }
        let mut tags = self.tags()?;
        for name in &names {
            tags.insert(name.clone(), id.clone());
        }
        write_json(&self.tags_path(), &tags)?;
        let mut names = names;
        if names.is_empty() {
            names.push(format!("sha256:{id}"));
        }
        Ok(names)
    }
}

fn tempdir_in(parent: &Path) -> Result<PathBuf, StoreError> {
    for n in 0..1000u32 {
        let p = parent.join(format!("load-{}-{n}", std::process::id()));
        match fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("create", &p)(e)),
        }
    }
    Err(io_err("create", parent)(io::Error::other("no free name")))
}

/// A regular file inside the archive tree: no climbing out, no symlink on the way or
/// at the end, no FIFO or device (an archive is untrusted: its files must not lead to
/// the host's).
fn inside(tree: &Path, name: &str) -> Result<PathBuf, StoreError> {
    let bad = |why: String| StoreError::BadArchive {
        path: tree.to_path_buf(),
        why,
    };
    if name.is_empty()
        || Path::new(name)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad(format!("bad path {name:?} in the manifest")));
    }
    let mut at = tree.to_path_buf();
    let parts: Vec<_> = Path::new(name).components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let meta = fs::symlink_metadata(&at)
            .map_err(|_| bad(format!("{name} is missing from the archive")))?;
        let last = i + 1 == parts.len();
        let ok = if last {
            meta.file_type().is_file()
        } else {
            meta.is_dir()
        };
        if !ok {
            return Err(bad(format!("{name} is not a regular file in the archive")));
        }
    }
    Ok(at)
}

fn docker_archive(tree: &Path) -> Result<Vec<Found>, StoreError> {
    let manifests: Vec<DockerManifest> =
        read_json(&inside(tree, "manifest.json")?, "manifest.json")?;
    manifests
        .into_iter()
        .map(|m| {
            Ok(Found {
                tags: m.repo_tags.unwrap_or_default(),
                config: inside(tree, &m.config)?,
                layers: m
                    .layers
                    .iter()
                    .map(|l| inside(tree, l))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// A verified blob of an OCI layout.
fn oci_blob(tree: &Path, digest: &str) -> Result<PathBuf, StoreError> {
    let hexpart = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| StoreError::BadArchive {
            path: tree.to_path_buf(),
            why: format!("unsupported digest {digest:?} (sha256 only)"),
        })?;
    if hexpart.len() != 64 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::BadArchive {
            path: tree.to_path_buf(),
            why: format!("malformed digest {digest:?}"),
        });
    }
    let path = inside(tree, &format!("blobs/sha256/{hexpart}"))?;
    let actual = sha256_file(&path)?;
    if actual != hexpart {
        return Err(StoreError::DigestMismatch {
            name: format!("blobs/sha256/{hexpart}"),
            expected: hexpart.to_string(),
            actual,
        });
    }
    Ok(path)
}

fn oci_layout(tree: &Path) -> Result<Vec<Found>, StoreError> {
    let index: OciDocument = read_json(&inside(tree, "index.json")?, "index.json")?;
    let mut out = Vec::new();
    for desc in index.manifests {
        let tag = desc
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| desc.annotations.get("org.opencontainers.image.ref.name"))
            .cloned();
        let mut doc: OciDocument = read_json(&oci_blob(tree, &desc.digest)?, "manifest")?;
        // A multi-platform index: take linux/amd64.
        if doc.config.is_none() && !doc.manifests.is_empty() {
            let pick = doc.linux_amd64().ok_or_else(|| StoreError::BadArchive {
                path: tree.to_path_buf(),
                why: "its index has no linux/amd64 image".into(),
            })?;
            doc = read_json(&oci_blob(tree, &pick.digest)?, "manifest")?;
        }
        let config = doc.config.ok_or_else(|| StoreError::BadArchive {
            path: tree.to_path_buf(),
            why: format!("manifest {} has no config", desc.digest),
        })?;
        let layers = doc
            .layers
            .iter()
            .map(|l| {
                if l.media_type.contains("zstd") {
                    return Err(StoreError::BadArchive {
                        path: tree.to_path_buf(),
                        why: format!("layer {} is zstd-compressed (unsupported)", l.digest),
                    });
                }
                oci_blob(tree, &l.digest)
            })
            .collect::<Result<_, _>>()?;
        out.push(Found {
            // A bare OCI ref name ("latest") is a tag without a repository: keep only
            // full references.
            tags: tag
                .filter(|t| t.contains(':') || t.contains('/'))
                .into_iter()
                .collect(),
            config: oci_blob(tree, &config.digest)?,
            layers,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of one file `name` holding `size` zero bytes: (tar bytes, its diff_id).
    fn zeros_tar(name: &str, size: u64) -> (Vec<u8>, String) {
        let mut buf = Vec::new();
        {
            let mut b = tar::Builder::new(&mut buf);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
            h.set_mode(0o644);
            b.append_data(&mut h, name, io::repeat(0).take(size))
                .unwrap();
            b.finish().unwrap();
        }
        let id = hex(&Sha256::digest(&buf));
        (buf, id)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        io::Write::write_all(&mut gz, data).unwrap();
        gz.finish().unwrap()
    }

    /// A `docker save` archive of one image tagged `bomb:latest` whose layers are files
    /// of zeros of `sizes` bytes, gzipped (a few KiB each). Returns it and the diff_ids.
    fn zeros_image(dir: &Path, sizes: &[u64]) -> (PathBuf, Vec<String>) {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_names = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let (tar, id) = zeros_tar(&format!("zeros{i}"), *size);
            let name = format!("{id}/layer.tar");
            files.push((name.clone(), gzip(&tar)));
            layer_names.push(name);
            diff_ids.push(format!("sha256:{id}"));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let config_name = format!("{}.json", hex(&Sha256::digest(&config)));
        files.push((config_name.clone(), config));
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name, "RepoTags": ["bomb:latest"], "Layers": layer_names,
        }]))
        .unwrap();
        files.push(("manifest.json".into(), manifest));
        let out = dir.join("image.tar");
        let mut b = tar::Builder::new(fs::File::create(&out).unwrap());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.finish().unwrap();
        (out, diff_ids)
    }

    /// Nothing of a refused import stays: no image, no tag, nothing in `tmp/`.
    fn store_is_empty(store: &Store) {
        assert!(store.list().unwrap().is_empty());
        assert!(store.tags().unwrap().is_empty());
        let left: Vec<_> = fs::read_dir(store.root().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "left in tmp: {left:?}");
    }

    /// A hostile image is a gzip bomb: 8 MiB of zeros in a few KiB. With a 1 MiB cap
    /// it is refused, naming the layer and the cap, before it is unpacked.
    #[test]
    fn an_image_past_the_size_cap_is_refused_naming_the_layer_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, diff_ids) = zeros_image(dir.path(), &[8 << 20]);
        assert!(fs::metadata(&archive).unwrap().len() < 64 << 10);
        let store = Store::open(&dir.path().join("state"))
            .unwrap()
            .with_max_image_size(1 << 20);
        let e = store.load(&archive).unwrap_err();
        match &e {
            StoreError::TooLarge { layer, limit, .. } => {
                assert_eq!((layer, *limit), (&diff_ids[0], 1 << 20));
            }
            e => panic!("{e:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&diff_ids[0]) && msg.contains("1 MiB") && msg.contains(MAX_IMAGE_SIZE_VAR),
            "{msg}"
        );
        store_is_empty(&store);
        // Under a cap it fits, it loads.
        let store = store.with_max_image_size(16 << 20);
        assert_eq!(
            store.load(&archive).unwrap(),
            vec!["bomb:latest".to_string()]
        );
        let image = store.resolve("bomb").unwrap();
        assert_eq!(
            fs::metadata(image.rootfs.join("zeros0")).unwrap().len(),
            8 << 20
        );
    }

    /// Layers each under the cap are refused together: the cap is the image's, and the
    /// layer named is the one that passes it.
    #[test]
    fn the_size_cap_counts_all_layers_of_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, diff_ids) = zeros_image(dir.path(), &[600 << 10, 600 << 10]);
        let store = Store::open(&dir.path().join("state"))
            .unwrap()
            .with_max_image_size(1 << 20);
        match store.load(&archive).unwrap_err() {
            StoreError::TooLarge { layer, .. } => assert_eq!(layer, diff_ids[1]),
            e => panic!("{e:?}"),
        }
        store_is_empty(&store);
    }

    /// The archive itself can be the bomb (`docker save | gzip`): its extraction is
    /// capped too.
    #[test]
    fn a_compressed_archive_past_the_size_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, _) = zeros_tar("padding", 8 << 20);
        let archive = dir.path().join("bomb.tar.gz");
        fs::write(&archive, gzip(&tar)).unwrap();
        let store = Store::open(&dir.path().join("state"))
            .unwrap()
            .with_max_image_size(1 << 20);
        let e = store.load(&archive).unwrap_err();
        assert!(
            matches!(e, StoreError::BadArchive { .. })
                && e.to_string().contains("size cap of 1 MiB"),
            "{e}"
        );
        store_is_empty(&store);
    }

    /// An import killed half-way (its work directory stays in `tmp/`) is cleared by the
    /// next one.
    #[test]
    fn leftovers_of_a_killed_import_go_at_the_next_import() {
        let dir = tempfile::tempdir().unwrap();
        let (archive, _) = zeros_image(dir.path(), &[1 << 10]);
        let store = Store::open(&dir.path().join("state")).unwrap();
        let left = store.root().join("tmp/load-999999-0/image-x/rootfs/big");
        fs::create_dir_all(left.parent().unwrap()).unwrap();
        fs::write(&left, "half unpacked").unwrap();
        store.load(&archive).unwrap();
        let left: Vec<_> = fs::read_dir(store.root().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "left in tmp: {left:?}");
    }

    /// What `arca build` commits: a config and layer tars made here become an image
    /// as a loaded one would (unpacked, tagged, listed), with a stable ID.
    #[test]
    fn committed_images_are_images() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let (tar, diff) = zeros_tar("etc/built", 5);
        let layer = dir.path().join("layer.tar");
        fs::write(&layer, &tar).unwrap();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}}},
            "history": [{"created_by": "COPY built /etc/"}],
        });
        let image = store
            .commit(
                config.clone(),
                std::slice::from_ref(&layer),
                &["built:1".into()],
            )
            .unwrap();
        assert_eq!(image.config.rootfs.diff_ids, [format!("sha256:{diff}")]);
        assert_eq!(image.config.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(
            fs::metadata(image.rootfs.join("etc/built")).unwrap().len(),
            5
        );
        assert_eq!(store.resolve("built:1").unwrap().id, image.id);
        // Fields the runtime does not model are kept in the stored config.
        let stored =
            fs::read_to_string(image.rootfs.parent().unwrap().join("config.json")).unwrap();
        assert!(stored.contains("ExposedPorts"), "{stored}");
        let again = store.commit(config, &[layer], &[]).unwrap();
        assert_eq!(again.id, image.id);
        // A layer that is not a tar is refused, and nothing is left.
        let bad = dir.path().join("bad.tar");
        fs::write(&bad, b"not a tar at all, not even close").unwrap();
        assert!(
            store
                .commit(serde_json::json!({}), &[bad], &["bad:1".into()])
                .is_err()
        );
        assert!(store.resolve("bad:1").is_err());
        assert!(store.commit(serde_json::json!([1]), &[], &[]).is_err());
    }

    #[test]
    fn sizes_show_with_binary_units() {
        assert_eq!(show_size(DEFAULT_MAX_IMAGE_SIZE), "64 GiB");
        assert_eq!(show_size(1536 << 10), "1.5 MiB");
        assert_eq!(show_size(100), "100 bytes");
    }

    #[test]
    fn references_normalise_as_docker_does() {
        assert_eq!(normalize_reference("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalize_reference("docker.io/library/busybox:1.36").unwrap(),
            "busybox:1.36"
        );
        assert_eq!(
            normalize_reference("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_reference("localhost:5000/app:v1").unwrap(),
            "localhost:5000/app:v1"
        );
        for bad in ["", "UPPER", "a b", "/x", "x:", "x:bad tag", "x:a/b:"] {
            assert!(normalize_reference(bad).is_err(), "{bad:?}");
        }
    }
}
