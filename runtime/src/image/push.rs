//! `arca push`: an image from the store to a registry (registry v2), as an OCI image
//! manifest. Each blob the registry lacks (asked by `HEAD`) is uploaded in one `PUT`
//! (a monolithic upload after `POST .../blobs/uploads/`), the config last of the
//! blobs, then the manifest under the tag. Layers go as the store holds them:
//! compressed as they were pulled, uncompressed if they were loaded so (an OCI
//! `tar` layer, which registries accept as they do gzip). The session, with the
//! credentials of `arca login`, is [`super::registry`]'s.

use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use super::registry::{Payload, Registry, RegistryError, RemoteRef};
use super::store::{Store, StoreError};

/// Errors of a push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No image in the store has this tag.
    #[error("An image does not exist locally with the tag: {0}")]
    NoSuchTag(String),
    /// Both a tag and `--all-tags`.
    #[error("tag can't be used with --all-tags/-a")]
    TagWithAllTags,
    /// A blob of the image cannot be read.
    #[error("Cannot read {path}")]
    Io {
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a push reports as it goes (Docker's lines).
pub trait Progress {
    /// One line of output.
    fn line(&mut self, line: &str);
}

impl<F: FnMut(&str)> Progress for F {
    fn line(&mut self, line: &str) {
        self(line)
    }
}

/// One blob to send.
struct Blob {
    path: PathBuf,
    digest: String,
    size: u64,
    media_type: &'static str,
}

impl Blob {
    fn layer(path: PathBuf) -> Result<Self, PushError> {
        let io = |source| PushError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs::File::open(&path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).map_err(io)?;
        let hexpart = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            digest: format!("sha256:{hexpart}"),
            size,
            media_type: match &magic[..n] {
                [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
                [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => "application/vnd.oci.image.layer.v1.tar",
            },
            path,
        })
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        })
    }
}

/// What `push REFERENCE [-a]` sends, by Docker's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `registry/repository`, as Docker names it in "The push refers to repository".
    pub repository: String,
    /// The local tags to push: the reference's (`:latest` when it has none), or with
    /// `-a` every tag of its repository.
    pub tags: Vec<String>,
    /// No tag was given and `:latest` was taken (Docker says "Using default tag").
    pub default_tag: bool,
    /// What `push -q` prints: the reference, normalised.
    pub reference: String,
}

/// The [`Plan`] for `reference` (`all_tags`: `-a`). Docker's errors: a tag with `-a`,
/// and nothing local to push (named without its tag).
pub fn plan(store: &Store, reference: &str, all_tags: bool) -> Result<Plan, PushError> {
    let r = RemoteRef::parse(reference)?;
    let explicit_tag = r.digest.is_none()
        && reference
            .rsplit_once(':')
            .is_some_and(|(_, t)| !t.contains('/'));
    if all_tags && (explicit_tag || r.digest.is_some()) {
        return Err(PushError::TagWithAllTags);
    }
    if r.digest.is_some() {
        return Err(RegistryError::BadReference(reference.to_string()).into());
    }
    let name = r.local_name();
    let familiar = name
        .rsplit_once(':')
        .map_or(name.as_str(), |(n, _)| n)
        .to_string();
    let repository = format!("{}/{}", r.registry, r.repository);
    let tags = if all_tags {
        let mut tags: Vec<String> = store
            .list()?
            .into_iter()
            .flat_map(|i| i.tags)
            .filter(|t| t.rsplit_once(':').is_some_and(|(n, _)| n == familiar))
            .collect();
        tags.sort();
        tags.dedup();
        tags
    } else if store.resolve(&name).is_ok() {
        vec![name]
    } else {
        Vec::new()
    };
    if tags.is_empty() {
        return Err(PushError::NoSuchTag(familiar));
    }
    Ok(Plan {
        reference: if all_tags {
            repository.clone()
        } else {
            format!("{repository}:{}", r.tag)
        },
        repository,
        tags,
        default_tag: !all_tags && !explicit_tag,
    })
}

/// Pushes the local tag `tag` (from a [`Plan`]) to its registry; returns the
/// manifest's digest. `insecure` allows plain HTTP, as for `pull`.
pub fn push(
    store: &Store,
    tag: &str,
    insecure: bool,
    progress: &mut dyn Progress,
) -> Result<String, PushError> {
    let r = RemoteRef::parse(tag)?;
    let (image, config_path, layers) = store.push_source(tag)?;
    let mut reg = Registry::open(&r, insecure)?;
    let repo = &r.repository;
    let config = Blob {
        size: fs::metadata(&config_path)
            .map_err(|source| PushError::Io {
                path: config_path.clone(),
                source,
            })?
            .len(),
        path: config_path,
        digest: format!("sha256:{}", image.id),
        media_type: "application/vnd.oci.image.config.v1+json",
    };
    let layers: Vec<Blob> = layers
        .into_iter()
        .map(Blob::layer)
        .collect::<Result<_, _>>()?;
    for blob in &layers {
        let short = &blob.digest["sha256:".len()..][..12];
        if upload(&mut reg, repo, blob)? {
            progress.line(&format!("{short}: Pushed"));
        } else {
            progress.line(&format!("{short}: Layer already exists"));
        }
    }
    // The config goes last of the blobs; Docker reports layers only.
    upload(&mut reg, repo, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    }))
    .map_err(|e| reg.protocol(format!("manifest: {e}")))?;
    let digest = format!(
        "sha256:{}",
        super::store::hex(&<sha2::Sha256 as sha2::Digest>::digest(&manifest))
    );
    let what = format!("manifest {repo}:{}", r.tag);
    reg.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{}", r.tag),
        &[(
            "Content-Type".into(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        )],
        Payload::Bytes(&manifest),
        &[200, 201],
        &what,
    )?;
    progress.line(&format!(
        "{}: digest: {digest} size: {}",
        r.tag,
        manifest.len()
    ));
    let name = r.local_name();
    let repo_name = name.rsplit_once(':').map_or(name.as_str(), |(n, _)| n);
    store.event("push", &name, repo_name);
    Ok(digest)
}

/// Uploads `blob` unless the registry has it; whether it was sent.
fn upload(reg: &mut Registry, repo: &str, blob: &Blob) -> Result<bool, PushError> {
    let what = format!("blob {}", blob.digest);
    let head = reg.request(
        "HEAD",
        &format!("/v2/{repo}/blobs/{}", blob.digest),
        &[],
        Payload::Empty,
        &[200, 404],
        &what,
    )?;
    if head.status == 200 {
        return Ok(false);
    }
    let start = reg.request(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Payload::Empty,
        &[202],
        &format!("an upload of {what}"),
    )?;
    let location = start
        .headers
        .get("location")
        .cloned()
        .ok_or_else(|| reg.protocol("upload answer without Location"))?;
    let location = reg.resolve(&format!("/v2/{repo}/blobs/uploads/"), &location)?;
    let sep = if location.contains('?') { '&' } else { '?' };
    let target = format!("{location}{sep}digest={}", blob.digest.replace(':', "%3A"));
    reg.request(
        "PUT",
        &target,
        &[("Content-Type".into(), "application/octet-stream".into())],
        Payload::File(&blob.path),
        &[201, 204],
        &what,
    )?;
    Ok(true)
}
