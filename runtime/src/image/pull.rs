//! `arca pull`: images from an OCI distribution (registry v2) endpoint.
//!
//! Manifest lists and OCI indexes resolve to their linux/amd64 image; OCI and Docker
//! schema 2 manifests are accepted; every manifest and blob is checked against its
//! digest before it is used; layers download in parallel into `images/partial/`, where
//! an interrupted download resumes (HTTP Range) on the next pull. An image whose
//! compressed layers already pass the store's size cap is refused before any download.
//! The session with the registry (TLS, plain HTTP, redirects, token realms,
//! credentials) is [`super::registry`]'s.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::registry::{Registry, RegistryError, RemoteRef};
use super::store::{Descriptor, Found, OciDocument, Store, StoreError, hex, sha256_file};

/// Errors of a pull. Messages name the registry, image or blob concerned.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Content does not match its digest.
    #[error("{what} fails verification: expected {expected}, got sha256:{actual}")]
    DigestMismatch {
        /// Which manifest or blob.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// The image has nothing for this platform.
    #[error("Image {0} has no linux/amd64 variant")]
    NoPlatform(String),
    /// A local file operation failed.
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
    /// The image's compressed layers already pass the store's size cap.
    #[error(
        "Image {image} is larger than the size cap of {}: its compressed layers pass it at layer {layer} (raise the cap with ARCA_MAX_IMAGE_SIZE)",
        super::store::show_size(*.limit)
    )]
    TooLarge {
        /// The reference pulled.
        image: String,
        /// The layer (blob digest) at which the sum passes the cap.
        layer: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// Speaking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Importing into the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PullError + 'a {
    move |source| PullError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest blob accepted (a layer); the config must fit in [`MAX_MANIFEST`].
const MAX_BLOB: u64 = 64 << 30;

/// A manifest (or index) by tag or digest, verified when the digest is known.
fn manifest(
    reg: &mut Registry,
    repo: &str,
    reference: &str,
) -> Result<(Vec<u8>, String), PullError> {
    let accept = vec![("Accept".to_string(), MANIFEST_TYPES.to_string())];
    let what = format!("manifest {repo}:{reference}");
    let a = reg.get(&format!("/v2/{repo}/manifests/{reference}"), &accept, &what)?;
    let mut body = Vec::new();
    a.body
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut body)
        .map_err(|e| reg.read_failed(e))?;
    if body.len() as u64 > MAX_MANIFEST {
        return Err(reg.protocol(format!("{what} is larger than 4 MiB")).into());
    }
    let actual = hex(&Sha256::digest(&body));
    let expected = if reference.starts_with("sha256:") {
        Some(reference.to_string())
    } else {
        a.headers.get("docker-content-digest").cloned()
    };
    if let Some(e) = expected
        && e != format!("sha256:{actual}")
    {
        return Err(PullError::DigestMismatch {
            what,
            expected: e,
            actual,
        });
    }
    Ok((body, format!("sha256:{actual}")))
}

/// The layer at which the announced (compressed) sizes add up past `limit`.
fn layer_past_cap(layers: &[Descriptor], limit: u64) -> Option<&Descriptor> {
    let mut total = 0u64;
    layers.iter().find(|l| {
        total = total.saturating_add(l.size);
        total > limit
    })
}

fn valid_digest(d: &str) -> Option<&str> {
    let h = d.strip_prefix("sha256:")?;
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then_some(h)
}

/// Downloads one blob into `partial/<hex>`, resuming a previous partial download, and
/// returns the verified file. A resumed download that fails verification is retried
/// once from the start (the kept prefix may have been bad).
fn fetch_blob(
    reg: &mut Registry,
    repo: &str,
    desc: &Descriptor,
    partial: &Path,
    progress: bool,
) -> Result<PathBuf, PullError> {
    match fetch_blob_once(reg, repo, desc, partial, progress) {
        Err(PullError::DigestMismatch { .. }) if resumed(partial, desc) => {
            fetch_blob_once(reg, repo, desc, partial, progress)
        }
        other => other,
    }
}

/// Whether the last attempt resumed (its marker is left by `fetch_blob_once`).
fn resumed(partial: &Path, desc: &Descriptor) -> bool {
    valid_digest(&desc.digest)
        .is_some_and(|h| fs::remove_file(partial.join(format!("{h}.resumed"))).is_ok())
}

fn fetch_blob_once(
    reg: &mut Registry,
    repo: &str,
    desc: &Descriptor,
    partial: &Path,
    progress: bool,
) -> Result<PathBuf, PullError> {
    let registry = reg.name().to_string();
    let proto = |why: String| {
        PullError::from(RegistryError::Protocol {
            registry: registry.clone(),
            why,
        })
    };
    let hexpart =
        valid_digest(&desc.digest).ok_or_else(|| proto(format!("bad digest {:?}", desc.digest)))?;
    let path = partial.join(hexpart);
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    // Another pull of the same blob waits here, then finds it complete.
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("lock", &path)(e.into()))?;
    let mut have = f.metadata().map_err(io_err("inspect", &path))?.len();
    let complete = |p: &Path| -> Result<bool, PullError> { Ok(sha256_file(p)? == hexpart) };
    if desc.size == 0 || desc.size > MAX_BLOB {
        return Err(proto(format!(
            "blob {} has an unusable size {}",
            desc.digest, desc.size
        )));
    }
    if have >= desc.size {
        if complete(&path)? {
            return Ok(path);
        }
        // Full length but wrong content: start over.
        f.set_len(0).map_err(io_err("truncate", &path))?;
        have = 0;
    }
    let mut headers = Vec::new();
    if have > 0 {
        headers.push(("Range".to_string(), format!("bytes={have}-")));
        let _ = fs::write(partial.join(format!("{hexpart}.resumed")), b"");
    }
    let what = format!("blob {}", desc.digest);
    let a = reg.get(
        &format!("/v2/{repo}/blobs/{}", desc.digest),
        &headers,
        &what,
    )?;
    let mut out = &f;
    let resumes_here = a.headers.get("content-range").is_some_and(|r| {
        r.trim_start_matches("bytes ")
            .starts_with(&format!("{have}-"))
    });
    if a.status == 206 && !resumes_here {
        f.set_len(0).map_err(io_err("truncate", &path))?;
        return Err(proto(format!(
            "{what}: a partial answer that does not continue the download"
        )));
    }
    if a.status == 200 && have > 0 {
        // The registry ignored the range: start over.
        f.set_len(0).map_err(io_err("truncate", &path))?;
        have = 0;
    }
    let mut body = a.body;
    let mut buf = vec![0u8; 1 << 16];
    let mut done = have;
    loop {
        let n = body.read(&mut buf).map_err(|e| reg.read_failed(e))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > desc.size {
            f.set_len(0).map_err(io_err("truncate", &path))?;
            return Err(proto(format!(
                "{what} is larger than its announced {} bytes",
                desc.size
            )));
        }
        out.write_all(&buf[..n]).map_err(io_err("write", &path))?;
        if progress {
            eprint!(
                "\r{}: {:.1}/{:.1} MB",
                &hexpart[..12],
                done as f64 / 1e6,
                desc.size as f64 / 1e6
            );
        }
    }
    if progress {
        eprintln!();
    }
    if !complete(&path)? {
        let actual = sha256_file(&path)?;
        let _ = fs::remove_file(&path);
        return Err(PullError::DigestMismatch {
            what,
            expected: desc.digest.clone(),
            actual,
        });
    }
    Ok(path)
}

/// Pulls `reference` into `store`; returns the local name and the manifest digest.
pub fn pull(
    store: &Store,
    reference: &str,
    insecure: bool,
    progress: bool,
) -> Result<(String, String), PullError> {
    let r = RemoteRef::parse(reference)?;
    let mut reg = Registry::open(&r, insecure)?;
    let want = r.digest.clone().unwrap_or_else(|| r.tag.clone());
    let (body, mut digest) = manifest(&mut reg, &r.repository, &want)?;
    let proto = |why: String| {
        PullError::from(RegistryError::Protocol {
            registry: r.registry.clone(),
            why,
        })
    };
    let mut doc: OciDocument =
        serde_json::from_slice(&body).map_err(|e| proto(format!("manifest: {e}")))?;
    if doc.config.is_none() && !doc.manifests.is_empty() {
        let pick = doc
            .linux_amd64()
            .ok_or_else(|| PullError::NoPlatform(reference.to_string()))?;
        if valid_digest(&pick.digest).is_none() {
            return Err(proto(format!(
                "index entry with a bad digest {:?}",
                pick.digest
            )));
        }
        let (body, d) = manifest(&mut reg, &r.repository, &pick.digest.clone())?;
        digest = d;
        doc = serde_json::from_slice::<OciDocument>(&body)
            .map_err(|e| proto(format!("manifest: {e}")))?;
    }
    let config = doc
        .config
        .ok_or_else(|| proto("manifest without a config".into()))?;
    if config.size > MAX_MANIFEST {
        return Err(proto(format!(
            "config blob of {} bytes (limit 4 MiB)",
            config.size
        )));
    }
    for l in &doc.layers {
        if l.media_type.contains("zstd") {
            return Err(proto(format!(
                "layer {} is zstd-compressed (unsupported)",
                l.digest
            )));
        }
    }
    // The compressed layers bound the image's size from below: past the cap, nothing is
    // downloaded.
    let limit = store.max_image_size()?;
    if let Some(l) = layer_past_cap(&doc.layers, limit) {
        return Err(PullError::TooLarge {
            image: reference.to_string(),
            layer: l.digest.clone(),
            limit,
        });
    }
    let partial = store.root().join("partial");
    fs::create_dir_all(&partial).map_err(io_err("create", &partial))?;
    let config_path = fetch_blob(&mut reg, &r.repository, &config, &partial, false)?;
    // Layers in parallel, a few at a time.
    let mut layer_paths: Vec<Option<PathBuf>> = vec![None; doc.layers.len()];
    for (chunk_i, chunk) in doc.layers.chunks(3).enumerate() {
        let results: Vec<Result<PathBuf, PullError>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|l| {
                    let mut reg = reg.clone();
                    let partial = &partial;
                    let repo = &r.repository;
                    s.spawn(move || fetch_blob(&mut reg, repo, l, partial, progress))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(PullError::from(RegistryError::Protocol {
                            registry: r.registry.clone(),
                            why: "download thread failed".into(),
                        }))
                    })
                })
                .collect()
        });
        for (i, res) in results.into_iter().enumerate() {
            layer_paths[chunk_i * 3 + i] = Some(res?);
        }
    }
    // A pull by digest gets no tag (it must not move `latest`).
    let tags = if r.digest.is_some() {
        vec![]
    } else {
        vec![r.local_name()]
    };
    let layers: Vec<PathBuf> = layer_paths.into_iter().flatten().collect();
    let found = Found {
        tags,
        config: config_path.clone(),
        layers: layers.clone(),
    };
    let names = store.import_found(found)?;
    // The image is unpacked: the downloads are no longer needed.
    for p in layers.iter().chain(std::iter::once(&config_path)) {
        let _ = fs::remove_file(p);
    }
    let name = names.into_iter().next().unwrap_or_default();
    // Docker's: `repo:tag` or `repo@digest` as actor, the repository as name.
    let tagged = r.local_name();
    let repo = tagged.rsplit_once(':').map_or(tagged.as_str(), |(n, _)| n);
    let actor = match &r.digest {
        Some(d) => format!("{repo}@{d}"),
        None => tagged.clone(),
    };
    store.event("pull", &actor, repo);
    Ok((name, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile registry announces layers that already add up past the cap (or lie
    /// with `u64::MAX`): refused before any download.
    #[test]
    fn compressed_layers_past_the_cap_are_refused_before_downloading() {
        let layers: Vec<Descriptor> = serde_json::from_str(
            r#"[{"digest":"sha256:a","size":600},{"digest":"sha256:b","size":600},
                {"digest":"sha256:c","size":18446744073709551615}]"#,
        )
        .unwrap();
        assert_eq!(layer_past_cap(&layers[..2], 1200).map(|l| &l.digest), None);
        assert_eq!(
            layer_past_cap(&layers, 1000).map(|l| l.digest.as_str()),
            Some("sha256:b")
        );
        assert_eq!(
            layer_past_cap(&layers, u64::MAX - 1).map(|l| l.digest.as_str()),
            Some("sha256:c")
        );
    }
}
