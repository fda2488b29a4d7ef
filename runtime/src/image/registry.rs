//! Registry v2 sessions, shared by `pull`, `push` and `login`: the HTTP(S) transport
//! (ureq over rustls) with arca's checks, and authentication (bearer tokens from the
//! registry's realm, basic credentials from Docker's `config.json`, see [`super::auth`]).
//!
//! Registries are spoken to over HTTPS, trusting the system's CA certificates plus any
//! `*.crt` in `<config>/certs.d/<registry>/` (Docker's `certs.d` layout; see
//! [`certs_dir`]). Plain HTTP is used only for loopback registries and those named with
//! `--insecure`, and only when the registry does not speak TLS: as Docker does, HTTPS
//! is tried first. A registry is hostile too:
//! - a redirect from HTTPS to plain HTTP is refused (so is a plain-HTTP token realm for
//!   an HTTPS registry);
//! - a bearer-token realm must be on the registry's own host, unless
//!   `<config>/token-realms` lets it (see [`token_realms_file`]; Docker Hub's
//!   `auth.docker.io` is built in);
//! - credentials (basic or bearer) go only to the registry's own origin and its allowed
//!   realm, never along a redirect to another host;
//! - every answer is read with a bound (headers by ureq, bodies by the callers), and a
//!   connection that stalls for 60 s fails.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;

use super::auth::{AuthError, Credentials};
use super::store::normalize_reference;

/// Errors of a registry session. Messages name the registry and what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("Invalid reference format: {0:?}")]
    BadReference(String),
    /// The registry does not speak TLS and may not be used over plain HTTP.
    #[error(
        "Registry {0} does not speak HTTPS; if it is a plain-HTTP registry you trust, use --insecure"
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
        source: ureq::Error,
    },
    /// The registry cannot be reached.
    #[error("Cannot reach registry {registry}")]
    Unreachable {
        /// host:port.
        registry: String,
        /// The cause.
        #[source]
        source: ureq::Error,
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
    /// A redirect or a token realm would leave HTTPS for plain HTTP.
    #[error(
        "Registry {registry} sent arca from {from} to plain HTTP ({to}): refused, a session over HTTPS stays on HTTPS"
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
    /// A local file (a certificate, the realms file, a blob to send) cannot be read.
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
    /// The registry refused the credentials.
    #[error("Login to {0} failed: unauthorized: incorrect username or password")]
    LoginRefused(String),
    /// The credentials file cannot be used.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
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
    pub fn parse(reference: &str) -> Result<Self, RegistryError> {
        let bad = || RegistryError::BadReference(reference.to_string());
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

    /// Whether the registry is on a loopback address (plain HTTP allowed unasked).
    pub fn is_loopback(&self) -> bool {
        is_loopback(&self.registry)
    }
}

/// Whether registry `name` (`host[:port]`) is on a loopback address.
pub fn is_loopback(name: &str) -> bool {
    let host = name.rsplit_once(':').map_or(name, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            name
        }
    });
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
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
pub fn redirect_target(current: &str, location: &str) -> Result<String, String> {
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

/// The TLS configuration for `registry`: the system's roots plus the registry's own
/// CAs from [`certs_dir`] (each checked to be a usable CA certificate), rustls on ring.
fn tls_config(registry: &str) -> Result<ureq::tls::TlsConfig, RegistryError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    // Unreadable system certificates are skipped, as every TLS client does.
    let native = rustls_native_certs::load_native_certs();
    let mut roots: Vec<Certificate<'static>> = native
        .certs
        .iter()
        .map(|der| Certificate::from_der(der).to_owned())
        .collect();
    let dir = certs_dir(registry);
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for f in files {
            let bad = |e: String| {
                io_err("use the certificates in", &f)(io::Error::new(io::ErrorKind::InvalidData, e))
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| bad(e.to_string()))?;
            for c in certs {
                // rustls's own check of a trust anchor: a file that is no CA fails here,
                // naming it, not later as an untrusted registry.
                rustls::RootCertStore::empty()
                    .add(c.clone())
                    .map_err(|e| bad(e.to_string()))?;
                roots.push(Certificate::from_der(&c).to_owned());
            }
        }
    }
    Ok(TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// The HTTP client for one registry: redirects and error statuses come back to the
/// session (which checks them), connections time out after 10 s, and every read or
/// write that stalls for 60 s fails. Registries are reached directly: proxy variables
/// are not used (ureq's matching of `NO_PROXY` and its fallbacks differ from Docker's,
/// and a SOCKS `ALL_PROXY` would be skipped silently; a proxy half-honoured is worse
/// than none said plainly).
fn agent(tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(tls)
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(format!("arca/{}", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .timeout_per_write(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Whether `e` is rustls refusing the peer's certificate.
fn is_certificate_error(e: &ureq::Error) -> bool {
    let refused = |r: &rustls::Error| {
        matches!(
            r,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        )
    };
    match e {
        ureq::Error::Rustls(r) => refused(r),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(refused),
        _ => false,
    }
}

/// Whether `e` says nothing answers at the address (as opposed to something that does
/// not speak TLS).
fn is_unreachable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::TimedOut
                | io::ErrorKind::NotFound
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
        ),
        _ => false,
    }
}

/// One HTTP answer: status, headers (lower-case names) and the body, unread.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Box<dyn Read + Send>,
}

/// What a request carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Payload<'a> {
    /// Nothing.
    Empty,
    /// These bytes.
    Bytes(&'a [u8]),
    /// This file's content (opened anew for each attempt).
    File(&'a Path),
}

/// A payload, ready to send.
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File(fs::File),
}

/// One request, no redirects followed, no auth added.
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Body<'_>,
) -> Result<Answer, ureq::Error> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let response = match body {
        Body::Empty => agent.run(req.body(())?)?,
        Body::Bytes(b) => agent.run(req.body(b)?)?,
        Body::File(f) => agent.run(req.body(f)?)?,
    };
    let (parts, body) = response.into_parts();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let (k, v) = (
            k.as_str().to_ascii_lowercase(),
            String::from_utf8_lossy(v.as_bytes()),
        );
        // Of several challenges, the bearer one (which arca answers best); of other
        // repeated headers, the last.
        let keep_bearer = k == "www-authenticate"
            && map
                .get(&k)
                .is_some_and(|old| bearer_challenge(old).is_some())
            && bearer_challenge(&v).is_none();
        if !keep_bearer {
            map.insert(k, v.into_owned());
        }
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: map,
        body: Box::new(body.into_reader()),
    })
}

/// A registry session: where it is, how it is spoken to, and the credentials and token
/// it has asked for.
#[derive(Clone)]
pub struct Registry {
    base: String,
    name: String,
    agent: ureq::Agent,
    token: Option<String>,
    /// When the token runs out (its `expires_in`, 60 s when not said): a fresh one is
    /// asked before, so that a long push never sends a large body on an expired token.
    token_expires: Option<Instant>,
    /// The last bearer challenge, to ask for a fresh token with.
    challenge: Option<String>,
    credentials: Option<Credentials>,
    /// The registry asked for basic auth: credentials go with every request to it.
    basic: bool,
    /// Realm hosts allowed besides the registry's own (see [`allowed_realms`]).
    realms: Vec<String>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials or the token.
        f.debug_struct("Registry")
            .field("base", &self.base)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A session with the registry of `r`, with the credentials `config.json` holds
    /// for it (see [`super::auth`]). Plain HTTP is allowed for loopback registries and
    /// with `insecure`.
    pub fn open(r: &RemoteRef, insecure: bool) -> Result<Self, RegistryError> {
        // No home directory: nobody is logged in. A credentials file that cannot be read
        // is warned about and the session goes on anonymously, as Docker's does.
        let credentials = match super::auth::config_file() {
            Ok(file) => super::auth::lookup(&file, &r.registry).unwrap_or_else(|e| {
                eprintln!(
                    "WARNING: Error loading config file: {}",
                    crate::error_chain(&e)
                );
                None
            }),
            Err(_) => None,
        };
        Self::connect(&r.registry, insecure || r.is_loopback(), credentials)
    }

    /// A session with registry `name` (`host[:port]`, `docker.io` for Docker Hub)
    /// using `credentials`. Chooses the scheme: HTTPS, or plain HTTP when `plain_ok`
    /// and the registry does not speak TLS. Asks `/v2/`, which answers 200 or 401 on a
    /// registry.
    pub fn connect(
        name: &str,
        plain_ok: bool,
        credentials: Option<Credentials>,
    ) -> Result<Self, RegistryError> {
        let host = if name == "docker.io" {
            "registry-1.docker.io"
        } else {
            name
        };
        let file = token_realms_file();
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("read", &file)(e)),
        };
        let mut reg = Registry {
            base: format!("https://{host}"),
            name: name.to_string(),
            agent: agent(tls_config(name)?),
            token: None,
            token_expires: None,
            challenge: None,
            credentials,
            basic: false,
            realms: allowed_realms(name, &text),
        };
        let probe = send(
            &reg.agent,
            "GET",
            &format!("{}/v2/", reg.base),
            &[],
            Body::Empty,
        );
        match probe {
            Ok(_) => Ok(reg),
            Err(e) if is_certificate_error(&e) => Err(reg.unreachable(e)),
            Err(e) if !plain_ok => Err(if is_unreachable(&e) {
                reg.unreachable(e)
            } else {
                RegistryError::NeedsTls(name.to_string())
            }),
            Err(_) => {
                reg.base = format!("http://{host}");
                Ok(reg)
            }
        }
    }

    /// The registry's name (`host[:port]`, `docker.io`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the session speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.base.starts_with("https://")
    }

    fn unreachable(&self, source: ureq::Error) -> RegistryError {
        if is_certificate_error(&source) {
            return RegistryError::Untrusted {
                registry: self.name.clone(),
                certs: certs_dir(&self.name),
                source,
            };
        }
        RegistryError::Unreachable {
            registry: self.name.clone(),
            source,
        }
    }

    /// A failed read of an answer's body.
    pub(crate) fn read_failed(&self, e: io::Error) -> RegistryError {
        self.unreachable(ureq::Error::Io(e))
    }

    /// A malformed answer.
    pub(crate) fn protocol(&self, why: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.name.clone(),
            why: why.into(),
        }
    }

    /// Where a `Location` the registry gave in answer to `asked` (a path on it) leads:
    /// resolved as a redirect is, never from HTTPS to plain HTTP.
    pub(crate) fn resolve(&self, asked: &str, location: &str) -> Result<String, RegistryError> {
        let from = format!("{}{asked}", self.base);
        redirect_target(&from, location).map_err(|to| RegistryError::Downgrade {
            registry: self.name.clone(),
            from,
            to,
        })
    }

    /// Whether `url` is on the registry's own origin (credentials go nowhere else).
    fn same_origin(&self, url: &str) -> bool {
        match (parse_url(url), parse_url(&self.base)) {
            (Some(a), Some(b)) => {
                a.host.eq_ignore_ascii_case(&b.host) && a.port == b.port && a.tls == b.tls
            }
            _ => false,
        }
    }

    /// GET `path` (relative to the registry) with auth, following redirects; 200 or
    /// 206 is success.
    pub(crate) fn get(
        &mut self,
        path: &str,
        extra: &[(String, String)],
        what: &str,
    ) -> Result<Answer, RegistryError> {
        self.request("GET", path, extra, Payload::Empty, &[200, 206], what)
    }

    /// `method` on `target` (a path on the registry, or an absolute URL it gave, such
    /// as an upload's location) with auth: a 401 is answered once with basic
    /// credentials or a fresh bearer token, as the registry asks; GET and HEAD follow
    /// redirects (never from HTTPS to plain HTTP). A status in `ok` is success.
    pub(crate) fn request(
        &mut self,
        method: &str,
        target: &str,
        extra: &[(String, String)],
        payload: Payload<'_>,
        ok: &[u16],
        what: &str,
    ) -> Result<Answer, RegistryError> {
        let mut url = if target.starts_with("https://") || target.starts_with("http://") {
            redirect_target(&self.base, target).map_err(|to| RegistryError::Downgrade {
                registry: self.name.clone(),
                from: self.base.clone(),
                to,
            })?
        } else {
            format!("{}{target}", self.base)
        };
        let follow = matches!(method, "GET" | "HEAD");
        let mut authed_retry = false;
        for _ in 0..6 {
            let mut headers: Vec<(String, String)> = extra.to_vec();
            if matches!(payload, Payload::Empty) && matches!(method, "POST" | "PUT") {
                // Not chunked: some front proxies refuse a chunked request.
                headers.push(("Content-Length".into(), "0".into()));
            }
            if self.token_expires.is_some_and(|t| Instant::now() >= t)
                && let Some(challenge) = self.challenge.clone()
            {
                self.token = Some(self.fetch_token(&challenge)?);
            }
            if self.same_origin(&url) {
                if let Some(t) = &self.token {
                    headers.push(("Authorization".into(), format!("Bearer {t}")));
                } else if let (true, Some(c)) = (self.basic, &self.credentials) {
                    headers.push(("Authorization".into(), format!("Basic {}", c.encoded())));
                }
            }
            let body = match payload {
                Payload::Empty => Body::Empty,
                Payload::Bytes(b) => Body::Bytes(b),
                Payload::File(p) => Body::File(fs::File::open(p).map_err(io_err("read", p))?),
            };
            let a =
                send(&self.agent, method, &url, &headers, body).map_err(|e| self.unreachable(e))?;
            match a.status {
                s if ok.contains(&s) => return Ok(a),
                301 | 302 | 303 | 307 | 308 if follow => {
                    let loc = a
                        .headers
                        .get("location")
                        .cloned()
                        .ok_or_else(|| self.protocol("redirect without Location"))?;
                    url = redirect_target(&url, &loc).map_err(|to| RegistryError::Downgrade {
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
                    if challenge
                        .get(..6)
                        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
                    {
                        if self.credentials.is_none() || self.basic {
                            return Err(self.status_error(401, method, what));
                        }
                        self.basic = true;
                    } else {
                        self.token = Some(self.fetch_token(&challenge)?);
                        self.challenge = Some(challenge);
                    }
                    authed_retry = true;
                }
                status => return Err(self.status_error(status, method, what)),
            }
        }
        Err(self.protocol(format!("too many redirects for {what}")))
    }

    fn status_error(&self, status: u16, method: &str, what: &str) -> RegistryError {
        let hint = match status {
            404 if method == "GET" && what.starts_with("manifest") => {
                " (no such image or tag)".to_string()
            }
            401 | 403 if self.credentials.is_none() => format!(
                " (access denied; if it needs credentials, log in with `arca login {}`)",
                self.name
            ),
            401 | 403 => " (access denied)".to_string(),
            _ => String::new(),
        };
        RegistryError::Status {
            registry: self.name.clone(),
            status,
            what: what.to_string(),
            hint,
        }
    }

    /// `Bearer realm="...",service="...",scope="..."` -> a token from the realm,
    /// asked with the session's credentials when it has some.
    fn fetch_token(&mut self, challenge: &str) -> Result<String, RegistryError> {
        let fields = bearer_challenge(challenge)
            .ok_or_else(|| self.protocol(format!("unsupported authentication {challenge:?}")))?;
        let realm = fields
            .get("realm")
            .ok_or_else(|| self.protocol("token challenge without realm"))?;
        let mut url = realm.clone();
        let query: Vec<String> = ["service", "scope"]
            .iter()
            .filter_map(|k| fields.get(*k).map(|v| format!("{k}={}", query_escape(v))))
            .collect();
        if !query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&query.join("&"));
        }
        let (Some(realm_url), Some(base)) = (parse_url(&url), parse_url(&self.base)) else {
            return Err(self.protocol(format!("token realm {realm:?} is not an HTTP(S) URL")));
        };
        match realm_refusal(&base, &realm_url, &self.realms) {
            None => {}
            Some(RealmRefusal::PlainHttp) => {
                return Err(RegistryError::Downgrade {
                    registry: self.name.clone(),
                    from: self.base.clone(),
                    to: realm.clone(),
                });
            }
            Some(RealmRefusal::OtherHost) => {
                return Err(RegistryError::ForeignRealm {
                    registry: self.name.clone(),
                    realm: realm.clone(),
                    realm_host: realm_url.host,
                    file: token_realms_file(),
                });
            }
        }
        let headers: Vec<(String, String)> = self
            .credentials
            .iter()
            .map(|c| {
                (
                    "Authorization".to_string(),
                    format!("Basic {}", c.encoded()),
                )
            })
            .collect();
        let a = send(&self.agent, "GET", &url, &headers, Body::Empty)
            .map_err(|e| self.unreachable(e))?;
        if a.status != 200 {
            return Err(self.status_error(a.status, "GET", "a token"));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let mut body = Vec::new();
        a.body
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|e| self.read_failed(e))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("token answer: {e}")))?;
        // Asked again a tenth before it runs out (at least 5 s before).
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).clamp(10, 86_400));
        self.token_expires = Some(Instant::now() + life - (life / 10).max(Duration::from_secs(5)));
        t.token
            .or(t.access_token)
            .ok_or_else(|| self.protocol("token answer without a token"))
    }

    /// `login`'s check: the registry's `/v2/` answers 200 with the session's
    /// credentials.
    pub fn check_login(&mut self) -> Result<(), RegistryError> {
        match self.get("/v2/", &[], "login") {
            Ok(_) => Ok(()),
            Err(RegistryError::Status {
                status: 401 | 403, ..
            }) => Err(RegistryError::LoginRefused(self.name.clone())),
            Err(e) => Err(e),
        }
    }
}

/// The parameters of a `WWW-Authenticate: Bearer k="v",...` challenge (a registry's,
/// hostile input); `None` for another scheme.
pub fn bearer_challenge(challenge: &str) -> Option<BTreeMap<String, String>> {
    let params = challenge
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| &challenge[7..])?;
    let mut fields = BTreeMap::new();
    for part in split_params(params) {
        if let Some((k, v)) = part.split_once('=') {
            fields.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    Some(fields)
}

/// A challenge's `key="value"` parameters, split at commas outside quotes (a scope may
/// hold commas: `repository:app:pull,push`).
fn split_params(params: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&params[start..]);
    out
}

/// Percent-escapes a query value (RFC 3986 unreserved characters and `:`/`/` stay).
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
                // It hangs up after each answer, and says so (as a real server does), so
                // that the client never reuses a connection it is closing.
                let reply = answer(&head).replacen("\r\n", "\r\nConnection: close\r\n", 1);
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
            agent: agent(tls_config("127.0.0.1").unwrap()),
            token: None,
            token_expires: None,
            challenge: None,
            credentials: None,
            basic: false,
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
            if head
                .to_ascii_lowercase()
                .contains("authorization: bearer t0k3n")
            {
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
        assert!(matches!(e, RegistryError::ForeignRealm { .. }), "{e:?}");
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

    fn alice() -> Credentials {
        Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        }
    }

    fn authorization(head: &str) -> Option<String> {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().to_string())
        })
    }

    /// A registry asking for basic auth gets the logged-in credentials; when it then
    /// redirects to another host (a CDN, or a hostile registry aiming at a host of its
    /// choosing), the credentials stay behind.
    #[test]
    fn basic_credentials_go_to_the_registry_and_never_along_a_redirect() {
        let (cdn, cdn_seen) = fake_server("127.0.0.2", |_| {
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nblob".into()
        });
        let (port, seen) = fake_server("127.0.0.1", move |head| {
            if authorization(head).as_deref() == Some("Basic YWxpY2U6czNjcmV0") {
                format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.2:{cdn}/blob\r\nContent-Length: 0\r\n\r\n"
                )
            } else {
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"fake\"\r\nContent-Length: 0\r\n\r\n".into()
            }
        });
        let mut anonymous = fake_registry(port, &[]);
        let e = anonymous
            .get("/v2/app/blobs/sha256:ab", &[], "blob")
            .err()
            .expect("no credentials, no access");
        assert!(e.to_string().contains("arca login 127.0.0.1:"), "{e}");

        let mut reg = fake_registry(port, &[]);
        reg.credentials = Some(alice());
        let mut a = reg
            .get("/v2/app/blobs/sha256:ab", &[], "blob")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut body = String::new();
        a.body.read_to_string(&mut body).unwrap();
        assert_eq!(body, "blob");
        assert!(seen.lock().unwrap().len() >= 3);
        let at_cdn = cdn_seen.lock().unwrap().clone();
        assert_eq!(at_cdn.len(), 1);
        assert_eq!(authorization(&at_cdn[0]), None, "{}", at_cdn[0]);

        // Wrong credentials: refused once, not retried forever.
        let mut wrong = fake_registry(port, &[]);
        wrong.credentials = Some(Credentials {
            username: "alice".into(),
            password: "guess".into(),
        });
        assert!(matches!(
            wrong.check_login(),
            Err(RegistryError::LoginRefused(_))
        ));
    }

    /// The token realm (on the registry's host) is asked with the credentials and the
    /// challenge's whole scope, commas included (`pull,push` for a push).
    #[test]
    fn tokens_are_asked_with_credentials_and_the_whole_scope() {
        let (port, seen) = fake_server("127.0.0.1", |head| {
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            if path.starts_with("/token?") {
                let body = r#"{"access_token":"t0k3n"}"#;
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else if authorization(head).as_deref() == Some("Bearer t0k3n") {
                "HTTP/1.1 202 Accepted\r\nLocation: /v2/app/blobs/uploads/1\r\nContent-Length: 0\r\n\r\n".into()
            } else {
                let port = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("host: ")
                            .or_else(|| l.strip_prefix("Host: "))
                    })
                    .and_then(|h| h.trim().rsplit_once(':'))
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default();
                format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:app:pull,push\"\r\nContent-Length: 0\r\n\r\n"
                )
            }
        });
        let mut reg = fake_registry(port, &[]);
        reg.credentials = Some(alice());
        let a = reg
            .request(
                "POST",
                "/v2/app/blobs/uploads/",
                &[],
                Payload::Empty,
                &[202],
                "an upload",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.headers["location"], "/v2/app/blobs/uploads/1");
        let heads = seen.lock().unwrap().clone();
        let token = heads
            .iter()
            .find(|h| h.contains("/token?"))
            .expect("the realm was asked");
        assert!(
            token.contains("scope=repository:app:pull%2Cpush") && token.contains("service=fake"),
            "{token}"
        );
        assert_eq!(
            authorization(token).as_deref(),
            Some("Basic YWxpY2U6czNjcmV0")
        );
    }

    #[test]
    fn challenge_parameters_split_outside_quotes() {
        assert_eq!(
            split_params(r#"realm="https://a/t",scope="repository:x:pull,push",service="s""#),
            vec![
                r#"realm="https://a/t""#,
                r#"scope="repository:x:pull,push""#,
                r#"service="s""#
            ]
        );
        assert_eq!(query_escape("a b,c:d/e"), "a%20b%2Cc:d/e");
    }
}
