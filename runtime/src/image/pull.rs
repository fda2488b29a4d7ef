//! `arca pull`: images from an OCI distribution (registry v2) endpoint.
//!
//! Manifest lists and OCI indexes resolve to their linux/amd64 image; OCI and Docker
//! schema 2 manifests are accepted; every manifest and blob is checked against its
//! digest before it is used; bearer-token auth is followed when the registry asks for
//! it; layers download in parallel into `images/partial/`, where an interrupted
//! download resumes (HTTP Range) on the next pull.
//!
//! Registries are spoken to over HTTPS (rustls), trusting the system's CA certificates
//! plus any `*.crt` in `<config>/certs.d/<registry>/` (Docker's `certs.d` layout; see
//! [`certs_dir`]). Plain HTTP is used only for loopback registries and those named with
//! `--insecure`, and only when the registry does not speak TLS: as Docker does, HTTPS
//! is tried first. A registry is hostile too: a redirect from HTTPS to plain HTTP is
//! refused (so is a plain-HTTP token realm for an HTTPS registry), and a bearer-token
//! realm must be on the registry's own host, unless `<config>/token-realms` lets it
//! (see [`token_realms_file`]; Docker Hub's `auth.docker.io` is built in). An image
//! whose compressed layers already pass the store's size cap is refused before any
//! download.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::store::{
    Descriptor, Found, OciDocument, Store, StoreError, hex, normalize_reference, sha256_file,
};

/// Errors of a pull. Messages name the registry, image or blob concerned.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error("Invalid reference format: {0:?}")]
    BadReference(String),
    /// The registry does not speak TLS and may not be used over plain HTTP.
    #[error(
        "Registry {0} does not speak HTTPS; if it is a plain-HTTP registry you trust, pull with --insecure"
    )]
    NeedsTls(String),
    /// The registry's TLS certificate is not trusted.
    #[error(
        "Registry {registry} presented a certificate arca does not trust (put its CA in {certs}/ca.crt)"
    )]
    Untrusted {
        /// host:port.
        registry: String,
        /// Where a CA for it is looked for.
        certs: PathBuf,
        /// rustls's verdict.
        #[source]
        source: io::Error,
    },
    /// The registry cannot be reached.
    #[error("Cannot reach registry {registry}")]
    Unreachable {
        /// host:port.
        registry: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The registry answered with an error status.
    #[error("Registry {registry} answered {status} for {what}{hint}")]
    Status {
        /// host:port.
        registry: String,
        /// HTTP status.
        status: u16,
        /// What was asked.
        what: String,
        /// Extra explanation.
        hint: String,
    },
    /// The registry's answer is malformed.
    #[error("Malformed answer from registry {registry}: {why}")]
    Protocol {
        /// host:port.
        registry: String,
        /// What is wrong.
        why: String,
    },
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
    /// A redirect or a token realm would leave HTTPS for plain HTTP.
    #[error(
        "Registry {registry} sent arca from {from} to plain HTTP ({to}): refused, a pull over HTTPS stays on HTTPS"
    )]
    Downgrade {
        /// host:port.
        registry: String,
        /// The URL asked (or the registry, for a token realm).
        from: String,
        /// Where the redirect or realm pointed.
        to: String,
    },
    /// The registry sends for tokens to a host arca is not told to trust with that.
    #[error(
        "Registry {registry} sends for tokens to {realm}, which is not on its host: refused (if you trust it, add the line \"{registry} {realm_host}\" to {file})"
    )]
    ForeignRealm {
        /// host:port as named in the reference.
        registry: String,
        /// The realm URL.
        realm: String,
        /// The realm's host.
        realm_host: String,
        /// The file that allows realms.
        file: PathBuf,
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

/// A parsed remote reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `host[:port]`.
    pub registry: String,
    /// Repository path in the registry (`library/busybox`).
    pub repository: String,
    /// Tag, when no digest is given (`latest` by default).
    pub tag: String,
    /// `sha256:...` when pinned.
    pub digest: Option<String>,
}

impl RemoteRef {
    /// Docker's rules: the first component is a registry if it has a `.` or `:` or is
    /// `localhost`; otherwise the registry is docker.io and one-word names live under
    /// `library/`.
    pub fn parse(reference: &str) -> Result<Self, PullError> {
        let bad = || PullError::BadReference(reference.to_string());
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => {
                let hexpart = d.strip_prefix("sha256:").ok_or_else(bad)?;
                if hexpart.len() != 64 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                (r, Some(d.to_string()))
            }
            None => (reference, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t.to_string()),
            _ => (rest, "latest".to_string()),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            Some(("docker.io", path)) if !path.contains('/') => {
                ("docker.io".to_string(), format!("library/{path}"))
            }
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        // The local name must be valid too.
        normalize_reference(&format!("{registry}/{repository}:{tag}")).map_err(|_| bad())?;
        if repository.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The name the image gets in the local store.
    pub fn local_name(&self) -> String {
        if self.registry == "docker.io" {
            let repo = self
                .repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository);
            format!("{repo}:{}", self.tag)
        } else {
            format!("{}/{}:{}", self.registry, self.repository, self.tag)
        }
    }

    fn is_loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    self.registry.as_str()
                }
            });
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }
}

/// One HTTP answer.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Box<dyn Read + Send>,
}

/// `http[s]://host:port/path?query` split up.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Option<Url> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://")?),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h.to_string(), p.parse().ok()?),
        _ => (hostport.to_string(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() || host.starts_with(':') {
        return None;
    }
    Some(Url {
        tls,
        host,
        port,
        path: path.to_string(),
    })
}

/// Where CA certificates for `registry` (`host[:port]`) are looked for:
/// `<config>/certs.d/<registry>` (see [`config_dir`]).
pub fn certs_dir(registry: &str) -> PathBuf {
    config_dir().join("certs.d").join(registry)
}

/// Token realms allowed on other hosts than their registry's: `<config>/token-realms`
/// (see [`config_dir`]), one `REGISTRY REALM-HOST` pair a line (`REGISTRY` as in the
/// image reference, `host[:port]`; `REALM-HOST` without a port), `#` comments.
pub fn token_realms_file() -> PathBuf {
    config_dir().join("token-realms")
}

/// Realms arca allows without configuration: Docker Hub's
/// (`registry-1.docker.io` sends for tokens to `auth.docker.io`) and GitLab.com's
/// (`registry.gitlab.com` to `gitlab.com`).
const BUILTIN_REALMS: &[(&str, &str)] = &[
    ("docker.io", "auth.docker.io"),
    ("registry.gitlab.com", "gitlab.com"),
];

/// The realm hosts allowed for `registry` by [`BUILTIN_REALMS`] and the `text` of a
/// [`token_realms_file`].
fn allowed_realms(registry: &str, text: &str) -> Vec<String> {
    let from_file = text.lines().filter_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(r), Some(host), None) if r == registry => Some(host.to_ascii_lowercase()),
            _ => None,
        }
    });
    BUILTIN_REALMS
        .iter()
        .filter(|(r, _)| *r == registry)
        .map(|(_, h)| h.to_string())
        .chain(from_file)
        .collect()
}

/// Why a token realm is refused.
#[derive(Debug, PartialEq, Eq)]
enum RealmRefusal {
    /// A plain-HTTP realm for an HTTPS registry: the token would travel in the clear.
    PlainHttp,
    /// A realm on another host than the registry's, not allowed: a hostile registry
    /// would make arca fetch any URL (a host-local service, a cloud metadata address).
    OtherHost,
}

/// Whether the token realm `realm` of the registry at `base` is refused; `allowed`
/// lists the other hosts allowed for it.
fn realm_refusal(base: &Url, realm: &Url, allowed: &[String]) -> Option<RealmRefusal> {
    if base.tls && !realm.tls {
        return Some(RealmRefusal::PlainHttp);
    }
    let host = realm.host.to_ascii_lowercase();
    if host != base.host.to_ascii_lowercase() && !allowed.contains(&host) {
        return Some(RealmRefusal::OtherHost);
    }
    None
}

/// Where a redirect from `current` to `location` leads: an absolute URL, a path on
/// `current`'s origin, or a path relative to `current`'s. `Err` with the target when
/// it would leave HTTPS for plain HTTP.
fn redirect_target(current: &str, location: &str) -> Result<String, String> {
    let target = if location.starts_with("https://") || location.starts_with("http://") {
        location.to_string()
    } else {
        let origin_end = current
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| current[start..].find('/').map(|j| start + j))
            .unwrap_or(current.len());
        if location.starts_with('/') {
            format!("{}{location}", &current[..origin_end])
        } else {
            let path = &current[..current.find('?').unwrap_or(current.len())];
            let cut = path
                .rfind('/')
                .filter(|&i| i >= origin_end)
                .map_or(path.len(), |i| i + 1);
            let sep = if cut == path.len() && !path.ends_with('/') {
                "/"
            } else {
                ""
            };
            format!("{}{sep}{location}", &path[..cut])
        }
    };
    if current.starts_with("https://") && !target.starts_with("https://") {
        return Err(target);
    }
    Ok(target)
}

/// arca's config directory: `$ARCA_CONFIG_DIR`, else `/etc/arca` for root and
/// `$XDG_CONFIG_HOME/arca` (`~/.config/arca`) otherwise.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ARCA_CONFIG_DIR") {
        PathBuf::from(d)
    } else if rustix::process::geteuid().is_root() {
        PathBuf::from("/etc/arca")
    } else {
        std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("/etc"))
            .join("arca")
    }
}

/// The TLS client configuration for `registry`: the system's roots plus the
/// registry's own CAs from [`certs_dir`].
fn tls_config(registry: &str) -> Result<Arc<rustls::ClientConfig>, PullError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped, as every TLS client does.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    let dir = certs_dir(registry);
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for f in files {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| {
                    io_err("read certificates from", &f)(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e.to_string(),
                    ))
                })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    io_err("use the certificate in", &f)(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e.to_string(),
                    ))
                })?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PullError::Protocol {
            registry: registry.to_string(),
            why: format!("TLS setup: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Whether `e` is rustls refusing the peer's certificate.
fn is_certificate_error(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// Reads an HTTP/1.1 chunked body.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let line = bounded_line(&mut self.inner)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body cut short",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 {
            bounded_line(&mut self.inner)?;
        }
        Ok(n)
    }
}

/// Reads one line of at most 8 KiB (a hostile server must not make us buffer more).
fn bounded_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = String::new();
    r.take(8192).read_line(&mut line)?;
    if line.len() >= 8192 && !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "HTTP line longer than 8 KiB",
        ));
    }
    Ok(line)
}

fn http_get(
    url: &str,
    headers: &[(String, String)],
    tls: &Arc<rustls::ClientConfig>,
) -> io::Result<Answer> {
    let u = parse_url(url).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported URL {url}"),
        )
    })?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(u.host.as_str(), u.port))?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no address for {}", u.host),
            )
        })?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut conn = if u.tls {
        let name = ServerName::try_from(u.host.trim_matches(['[', ']']).to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let client = rustls::ClientConnection::new(Arc::clone(tls), name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut s = rustls::StreamOwned::new(client, stream);
        // Handshake now, so that a certificate problem is reported as such.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Conn::Tls(Box::new(s))
    } else {
        Conn::Plain(stream)
    };
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: arca/{}\r\nConnection: close\r\n",
        u.path,
        u.host,
        u.port,
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())?;
    conn.flush()?;
    let mut r = BufReader::new(conn);
    let status_line = bounded_line(&mut r)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let mut map = BTreeMap::new();
    for n in 0.. {
        if n > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than 100 HTTP headers",
            ));
        }
        let line = bounded_line(&mut r)?;
        if line.is_empty() {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let chunked = map.get("transfer-encoding").is_some_and(|t| {
        t.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    });
    let body: Box<dyn Read + Send> = if chunked {
        Box::new(Chunked {
            inner: r,
            left: 0,
            done: false,
        })
    } else if let Some(len) = map
        .get("content-length")
        .and_then(|l| l.parse::<u64>().ok())
    {
        Box::new(r.take(len))
    } else {
        Box::new(r)
    };
    Ok(Answer {
        status,
        headers: map,
        body,
    })
}

/// A registry session: base URL and, once obtained, a bearer token.
#[derive(Clone)]
struct Registry {
    base: String,
    name: String,
    token: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    /// Realm hosts allowed besides the registry's own (see [`allowed_realms`]).
    realms: Vec<String>,
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest blob accepted (a layer); the config must fit in [`MAX_MANIFEST`].
const MAX_BLOB: u64 = 64 << 30;

impl Registry {
    fn unreachable(&self, source: io::Error) -> PullError {
        if is_certificate_error(&source) {
            return PullError::Untrusted {
                registry: self.name.clone(),
                certs: certs_dir(&self.name),
                source,
            };
        }
        PullError::Unreachable {
            registry: self.name.clone(),
            source,
        }
    }

    /// Chooses the scheme: HTTPS, or plain HTTP when `plain_ok` and the registry does
    /// not speak TLS. Asks `/v2/`, which answers 200 or 401 on a registry.
    fn connect(host: &str, name: &str, plain_ok: bool) -> Result<Self, PullError> {
        let file = token_realms_file();
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("read", &file)(e)),
        };
        let mut reg = Registry {
            base: format!("https://{host}"),
            name: name.to_string(),
            token: None,
            tls: tls_config(name)?,
            realms: allowed_realms(name, &text),
        };
        let probe = http_get(&format!("{}/v2/", reg.base), &[], &reg.tls);
        match probe {
            Ok(_) => Ok(reg),
            Err(e) if is_certificate_error(&e) => Err(reg.unreachable(e)),
            Err(e) if !plain_ok => Err(match e.kind() {
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::TimedOut
                | io::ErrorKind::NotFound
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable => reg.unreachable(e),
                _ => PullError::NeedsTls(name.to_string()),
            }),
            Err(_) => {
                reg.base = format!("http://{host}");
                Ok(reg)
            }
        }
    }

    /// GET `path` (relative to the registry) with auth, following redirects.
    fn get(
        &mut self,
        path: &str,
        extra: &[(String, String)],
        what: &str,
    ) -> Result<Answer, PullError> {
        let mut url = format!("{}{path}", self.base);
        let mut authed_retry = false;
        for _ in 0..6 {
            let mut headers: Vec<(String, String)> = extra.to_vec();
            let same_host = match (parse_url(&url), parse_url(&self.base)) {
                (Some(a), Some(b)) => a.host == b.host && a.port == b.port && a.tls == b.tls,
                _ => false,
            };
            if let (Some(t), true) = (&self.token, same_host) {
                headers.push(("Authorization".into(), format!("Bearer {t}")));
            }
            let a = http_get(&url, &headers, &self.tls).map_err(|e| self.unreachable(e))?;
            match a.status {
                200 | 206 => return Ok(a),
                301 | 302 | 303 | 307 | 308 => {
                    let loc =
                        a.headers
                            .get("location")
                            .cloned()
                            .ok_or_else(|| PullError::Protocol {
                                registry: self.name.clone(),
                                why: "redirect without Location".into(),
                            })?;
                    url = redirect_target(&url, &loc).map_err(|to| PullError::Downgrade {
                        registry: self.name.clone(),
                        from: url.clone(),
                        to,
                    })?;
                }
                401 if !authed_retry => {
                    let challenge = a
                        .headers
                        .get("www-authenticate")
                        .cloned()
                        .unwrap_or_default();
                    self.token = Some(self.fetch_token(&challenge)?);
                    authed_retry = true;
                }
                status => {
                    let hint = match status {
                        404 => " (no such image or tag)".to_string(),
                        401 | 403 => " (access denied)".to_string(),
                        _ => String::new(),
                    };
                    return Err(PullError::Status {
                        registry: self.name.clone(),
                        status,
                        what: what.to_string(),
                        hint,
                    });
                }
            }
        }
        Err(PullError::Protocol {
            registry: self.name.clone(),
            why: format!("too many redirects for {what}"),
        })
    }

    /// `Bearer realm="...",service="...",scope="..."` -> a token from the realm.
    fn fetch_token(&self, challenge: &str) -> Result<String, PullError> {
        let proto = |why: String| PullError::Protocol {
            registry: self.name.clone(),
            why,
        };
        let params = challenge
            .strip_prefix("Bearer ")
            .ok_or_else(|| proto(format!("unsupported authentication {challenge:?}")))?;
        let mut fields = BTreeMap::new();
        for part in params.split(',') {
            if let Some((k, v)) = part.split_once('=') {
                fields.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
            }
        }
        let realm = fields
            .get("realm")
            .ok_or_else(|| proto("token challenge without realm".into()))?;
        let mut url = realm.clone();
        let query: Vec<String> = ["service", "scope"]
            .iter()
            .filter_map(|k| {
                fields
                    .get(*k)
                    .map(|v| format!("{k}={}", v.replace(' ', "%20")))
            })
            .collect();
        if !query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&query.join("&"));
        }
        let (Some(realm_url), Some(base)) = (parse_url(&url), parse_url(&self.base)) else {
            return Err(proto(format!(
                "token realm {realm:?} is not an HTTP(S) URL"
            )));
        };
        match realm_refusal(&base, &realm_url, &self.realms) {
            None => {}
            Some(RealmRefusal::PlainHttp) => {
                return Err(PullError::Downgrade {
                    registry: self.name.clone(),
                    from: self.base.clone(),
                    to: realm.clone(),
                });
            }
            Some(RealmRefusal::OtherHost) => {
                return Err(PullError::ForeignRealm {
                    registry: self.name.clone(),
                    realm: realm.clone(),
                    realm_host: realm_url.host,
                    file: token_realms_file(),
                });
            }
        }
        let a = http_get(&url, &[], &self.tls).map_err(|e| self.unreachable(e))?;
        if a.status != 200 {
            return Err(PullError::Status {
                registry: self.name.clone(),
                status: a.status,
                what: "a token".into(),
                hint: " (access denied)".into(),
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let mut body = Vec::new();
        a.body
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|e| self.unreachable(e))?;
        let t: Token =
            serde_json::from_slice(&body).map_err(|e| proto(format!("token answer: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| proto("token answer without a token".into()))
    }

    /// A manifest (or index) by tag or digest, verified when the digest is known.
    fn manifest(&mut self, repo: &str, reference: &str) -> Result<(Vec<u8>, String), PullError> {
        let accept = vec![("Accept".to_string(), MANIFEST_TYPES.to_string())];
        let what = format!("manifest {repo}:{reference}");
        let a = self.get(&format!("/v2/{repo}/manifests/{reference}"), &accept, &what)?;
        let mut body = Vec::new();
        a.body
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.unreachable(e))?;
        if body.len() as u64 > MAX_MANIFEST {
            return Err(PullError::Protocol {
                registry: self.name.clone(),
                why: format!("{what} is larger than 4 MiB"),
            });
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
    let registry_name = reg.name.clone();
    let proto = |why: String| PullError::Protocol {
        registry: registry_name.clone(),
        why,
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
        let n = body.read(&mut buf).map_err(|e| PullError::Unreachable {
            registry: reg.name.clone(),
            source: e,
        })?;
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
    let host = if r.registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        r.registry.as_str()
    };
    let mut reg = Registry::connect(host, &r.registry, insecure || r.is_loopback())?;
    let want = r.digest.clone().unwrap_or_else(|| r.tag.clone());
    let (body, mut digest) = reg.manifest(&r.repository, &want)?;
    let proto = |why: String| PullError::Protocol {
        registry: r.registry.clone(),
        why,
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
        let (body, d) = reg.manifest(&r.repository, &pick.digest.clone())?;
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
                        Err(PullError::Protocol {
                            registry: String::new(),
                            why: "download thread failed".into(),
                        })
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
    Ok((name, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_tag_and_digest() {
        let r = RemoteRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("docker.io", "library/busybox", "latest")
        );
        assert_eq!(r.local_name(), "busybox:latest");
        let r = RemoteRef::parse("localhost:5000/team/app:v2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("localhost:5000", "team/app", "v2")
        );
        assert!(r.is_loopback());
        assert_eq!(r.local_name(), "localhost:5000/team/app:v2");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = RemoteRef::parse(&format!("127.0.0.1:5000/app@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert!(!RemoteRef::parse("quay.io/x/y").unwrap().is_loopback());
        for bad in ["", "UPPER/x", "app@sha256:zz", "app@md5:00", "a b"] {
            assert!(RemoteRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_carry_scheme_host_port_and_path() {
        let u =
            parse_url("https://registry-1.docker.io/v2/library/busybox/manifests/latest").unwrap();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "registry-1.docker.io".into(),
                port: 443,
                path: "/v2/library/busybox/manifests/latest".into()
            }
        );
        let u = parse_url("http://127.0.0.1:5000").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 5000, "/"));
        let u = parse_url("https://[::1]:5443/v2/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 5443));
        for bad in ["ftp://x/", "https://", "http://:80/", "https://host:port/"] {
            assert!(parse_url(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn certificate_directories_follow_the_registry_name() {
        let dir = certs_dir("registry.example:5000");
        assert!(dir.ends_with("certs.d/registry.example:5000"), "{dir:?}");
    }

    /// A hostile registry (or whoever sits between arca and a CDN it redirects to)
    /// sends arca from HTTPS to plain HTTP, where the traffic can be read and changed.
    #[test]
    fn redirects_resolve_on_the_current_origin_and_never_leave_https() {
        let cur = "https://reg.example/v2/app/blobs/sha256:ab?x=1";
        assert_eq!(
            redirect_target(cur, "/v2/other"),
            Ok("https://reg.example/v2/other".into())
        );
        assert_eq!(
            redirect_target(cur, "sha256:cd"),
            Ok("https://reg.example/v2/app/blobs/sha256:cd".into())
        );
        assert_eq!(
            redirect_target("https://cdn.example:8443", "data"),
            Ok("https://cdn.example:8443/data".into())
        );
        assert_eq!(
            redirect_target(cur, "https://cdn.example/blob?sig=1"),
            Ok("https://cdn.example/blob?sig=1".into())
        );
        assert_eq!(
            redirect_target(cur, "http://cdn.example/blob"),
            Err("http://cdn.example/blob".into())
        );
        // A plain-HTTP registry (loopback or --insecure) may go either way.
        assert_eq!(
            redirect_target("http://127.0.0.1:5000/v2/x", "http://127.0.0.1:6000/y"),
            Ok("http://127.0.0.1:6000/y".into())
        );
        assert_eq!(
            redirect_target("http://127.0.0.1:5000/v2/x", "https://cdn.example/y"),
            Ok("https://cdn.example/y".into())
        );
    }

    /// A hostile registry names a token realm elsewhere to make arca fetch any URL (a
    /// service on the host, a cloud metadata address), or a plain-HTTP one for an HTTPS
    /// registry. Only the registry's own host and the allowed ones pass.
    #[test]
    fn token_realms_must_be_on_the_registrys_host_or_allowed() {
        let url = |u: &str| parse_url(u).unwrap();
        let hub = url("https://registry-1.docker.io");
        let hub_realms = allowed_realms("docker.io", "");
        assert_eq!(
            realm_refusal(&hub, &url("https://auth.docker.io/token"), &hub_realms),
            None,
            "Docker Hub works without configuration"
        );
        assert_eq!(
            realm_refusal(&hub, &url("http://auth.docker.io/token"), &hub_realms),
            Some(RealmRefusal::PlainHttp)
        );
        let reg = url("https://reg.example:5000");
        assert_eq!(
            realm_refusal(&reg, &url("https://REG.example:5001/token"), &[]),
            None,
            "the registry's own host, any port"
        );
        for evil in [
            "https://169.254.169.254/latest/meta-data",
            "https://localhost:8080/admin",
            "https://auth.docker.io/token",
        ] {
            assert_eq!(
                realm_refusal(&reg, &url(evil), &allowed_realms("reg.example:5000", "")),
                Some(RealmRefusal::OtherHost),
                "{evil}"
            );
        }
        let file = "# realms\nreg.example:5000 auth.example  # ours\nother.example evil.example\nbroken line here\n";
        let allowed = allowed_realms("reg.example:5000", file);
        assert_eq!(allowed, vec!["auth.example".to_string()]);
        assert_eq!(
            realm_refusal(&reg, &url("https://auth.example/t"), &allowed),
            None
        );
        assert_eq!(
            realm_refusal(&reg, &url("https://evil.example/t"), &allowed),
            Some(RealmRefusal::OtherHost)
        );
    }

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

    /// A one-thread HTTP server on `ip` answering each request with `answer` of its
    /// head; returns its port and the heads it saw.
    fn fake_server(
        ip: &str,
        answer: impl Fn(&str) -> String + Send + 'static,
    ) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let reply = answer(&head);
                log.lock().unwrap().push(head);
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        (port, seen)
    }

    fn fake_registry(port: u16, realms: &[&str]) -> Registry {
        Registry {
            base: format!("http://127.0.0.1:{port}"),
            name: format!("127.0.0.1:{port}"),
            token: None,
            tls: tls_config("127.0.0.1").unwrap(),
            realms: realms.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// A fake registry on 127.0.0.1 sends for tokens to 127.0.0.2 (another host):
    /// arca refuses, naming the file that would allow it, and the realm never
    /// hears from it; allowed, the token is fetched and used.
    #[test]
    fn a_registry_sending_for_tokens_to_another_host_is_refused_unless_allowed() {
        let (token_port, token_seen) = fake_server("127.0.0.2", |_| {
            let body = r#"{"token":"t0k3n"}"#;
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        });
        let (port, seen) = fake_server("127.0.0.1", move |head| {
            if head.contains("Authorization: Bearer t0k3n") {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".into()
            } else {
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.2:{token_port}/token\",service=\"fake\"\r\nContent-Length: 0\r\n\r\n"
                )
            }
        });
        let mut reg = fake_registry(port, &[]);
        let e = reg
            .get("/v2/app/manifests/latest", &[], "manifest app:latest")
            .err()
            .expect("a foreign realm is refused");
        assert!(matches!(e, PullError::ForeignRealm { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("127.0.0.2:{token_port}"))
                && msg.contains(&format!("\"127.0.0.1:{port} 127.0.0.2\""))
                && msg.contains("token-realms"),
            "{msg}"
        );
        assert!(token_seen.lock().unwrap().is_empty(), "the realm was asked");

        let mut reg = fake_registry(port, &["127.0.0.2"]);
        let mut a = reg
            .get("/v2/app/manifests/latest", &[], "manifest app:latest")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut body = String::new();
        a.body.read_to_string(&mut body).unwrap();
        assert_eq!((a.status, body.as_str()), (200, "{}"));
        assert_eq!(token_seen.lock().unwrap().len(), 1);
        assert!(seen.lock().unwrap().len() >= 3);
    }

    #[test]
    fn chunked_bodies_decode() {
        let wire = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        let mut c = Chunked {
            inner: &wire[..],
            left: 0,
            done: false,
        };
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "Wikipedia");
        let mut cut = Chunked {
            inner: &b"9\r\nabc"[..],
            left: 0,
            done: false,
        };
        assert!(cut.read_to_string(&mut String::new()).is_err());
    }
}
