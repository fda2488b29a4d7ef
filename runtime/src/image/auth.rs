//! Registry credentials in Docker's `config.json`, shared with the Docker CLI:
//! `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. Its `auths` map a
//! registry to `{"auth": base64("user:password")}`; Docker Hub's key is
//! `https://index.docker.io/v1/`, any other registry's its `host[:port]` (keys written
//! as URLs, `https://host/v1/`, are read too).
//!
//! Credential helpers are Docker's: `credHelpers[registry]`, else `credsStore`, names a
//! `docker-credential-NAME` program on `PATH` that `get`s, `store`s and `erase`s
//! credentials (JSON on stdin and stdout); with one set up, `login` stores through it
//! and leaves only an empty marker in `auths`, as Docker does. Identity tokens (a
//! helper's `<token>` user) are not used. arca changes `auths` only, keeping every other
//! key of the file as it finds it. The file is replaced atomically, keeps its owner
//! (a `sudo -E arca login` does not take the user's file from them), and is written
//! readable by its owner only (mode 0600, its directory 0700): other local users are
//! hostile and must not read it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Errors of the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file cannot be read or written.
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
    /// The file is not the JSON object Docker writes.
    #[error("{path} is not a valid Docker config file: {why}")]
    Malformed {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A credential helper failed.
    #[error("Credential helper docker-credential-{helper} failed to {action}: {why}")]
    Helper {
        /// The helper's name (after `docker-credential-`).
        helper: String,
        /// `get`, `store` or `erase`.
        action: &'static str,
        /// Its message, or why it could not run.
        why: String,
    },
    /// No home directory to find `~/.docker` in.
    #[error("Cannot find the credentials file: neither DOCKER_CONFIG nor HOME is set")]
    NoHome,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AuthError + 'a {
    move |source| AuthError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A user name and password (or access token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `base64(user:password)`: HTTP basic auth and `config.json`'s `auth`.
    pub fn encoded(&self) -> String {
        STANDARD.encode(format!("{}:{}", self.username, self.password))
    }

    fn decode(auth: &str) -> Option<Self> {
        let raw = STANDARD.decode(auth.trim()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        Some(Self {
            username: u.to_string(),
            password: p.to_string(),
        })
    }
}

/// The credentials file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn config_file() -> Result<PathBuf, AuthError> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
        .ok_or(AuthError::NoHome)
}

/// The registry a `login`/`logout` SERVER argument or an `auths` key names, as image
/// references name it: `docker.io` for Docker Hub (`index.docker.io`,
/// `registry-1.docker.io`, `https://index.docker.io/v1/`), else `host[:port]`,
/// lower-cased, without scheme or path.
pub fn registry_name(server: &str) -> String {
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let host = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// The `auths` key Docker uses for `registry` (a [`registry_name`]).
pub fn auths_key(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".into()
    } else {
        registry.to_string()
    }
}

fn read(file: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>, AuthError> {
    let text = match fs::read(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", file)(e)),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(serde_json::Map::new()));
    }
    match serde_json::from_slice(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(AuthError::Malformed {
            path: file.to_path_buf(),
            why: "not a JSON object".into(),
        }),
        Err(e) => Err(AuthError::Malformed {
            path: file.to_path_buf(),
            why: e.to_string(),
        }),
    }
}

/// The credential helper `config` names for `registry`: its `credHelpers` entry, else
/// `credsStore`.
fn helper_for(
    config: &serde_json::Map<String, serde_json::Value>,
    registry: &str,
) -> Option<String> {
    let named = |v: &serde_json::Value| v.as_str().filter(|n| !n.is_empty()).map(String::from);
    if let Some(serde_json::Value::Object(helpers)) = config.get("credHelpers")
        && let Some(name) = helpers
            .iter()
            .find(|(k, _)| registry_name(k) == registry)
            .and_then(|(_, v)| named(v))
    {
        return Some(name);
    }
    config.get("credsStore").and_then(named)
}

/// Runs `docker-credential-HELPER ACTION` with `input` on stdin; its stdout, or `None`
/// when it says it has no such credentials.
fn run_helper(
    helper: &str,
    action: &'static str,
    input: &[u8],
) -> Result<Option<Vec<u8>>, AuthError> {
    let fail = |why: String| AuthError::Helper {
        helper: helper.to_string(),
        action,
        why,
    };
    // A name, not a path: the program is looked up on PATH as Docker does.
    if !helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(fail("not a helper name".into()));
    }
    let mut child = std::process::Command::new(format!("docker-credential-{helper}"))
        .arg(action)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        return Ok(Some(out.stdout));
    }
    let said = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .trim()
    .to_string();
    if said.contains("credentials not found") {
        return Ok(None);
    }
    Err(fail(said))
}

/// The credentials `file` holds for `registry` (a [`registry_name`]), if any: through
/// its credential helper if one is set up, else from `auths`. An entry that does not
/// decode is no credentials (as Docker treats it).
pub fn lookup(file: &Path, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let Some(config) = read(file)? else {
        return Ok(None);
    };
    if let Some(helper) = helper_for(&config, registry) {
        #[derive(serde::Deserialize)]
        struct Got {
            #[serde(rename = "Username")]
            username: String,
            #[serde(rename = "Secret")]
            secret: String,
        }
        let key = auths_key(registry);
        if let Some(out) = run_helper(&helper, "get", key.as_bytes())? {
            let got: Got = serde_json::from_slice(&out).map_err(|e| AuthError::Helper {
                helper: helper.clone(),
                action: "get",
                why: format!("malformed answer: {e}"),
            })?;
            // `<token>`: an identity token, which arca does not use.
            if !got.username.is_empty() && got.username != "<token>" {
                return Ok(Some(Credentials {
                    username: got.username,
                    password: got.secret,
                }));
            }
        }
    }
    let Some(serde_json::Value::Object(auths)) = config.get("auths") else {
        return Ok(None);
    };
    // The exact key first, then any key naming the same registry.
    let key = auths_key(registry);
    let entry = auths.get(&key).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| registry_name(k) == registry)
            .map(|(_, v)| v)
    });
    let Some(serde_json::Value::Object(entry)) = entry else {
        return Ok(None);
    };
    if let Some(c) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
        .and_then(Credentials::decode)
    {
        return Ok(Some(c));
    }
    match (entry.get("username"), entry.get("password")) {
        (Some(serde_json::Value::String(u)), Some(serde_json::Value::String(p))) => {
            Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }))
        }
        _ => Ok(None),
    }
}

/// Writes `config` to `file` atomically, owner-only, keeping the file's owner.
fn write(
    file: &Path,
    config: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), AuthError> {
    use std::os::unix::fs::MetadataExt;
    // A config.json that is a symbolic link is written where it points, as Docker does.
    let file = fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let owner = fs::metadata(&file).ok().map(|m| (m.uid(), m.gid()));
    let dir = file.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create", dir))?;
    let mut text = serde_json::to_vec_pretty(config).map_err(|e| AuthError::Malformed {
        path: file.clone(),
        why: e.to_string(),
    })?;
    text.push(b'\n');
    let tmp = dir.join(format!(".config.json.arca-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        if let Some((uid, gid)) = owner {
            // Only root may give a file away; anyone else writes their own file anyway.
            let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        }
        f.sync_all()?;
        fs::rename(&tmp, &file)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("write", &file))
}

/// Stores `creds` for `registry` (a [`registry_name`]): through its credential helper
/// if one is set up (`auths` then holds an empty marker), else in `file`'s `auths`,
/// replacing any entry naming the same registry. Returns the helper used, if any.
pub fn store(
    file: &Path,
    registry: &str,
    creds: &Credentials,
) -> Result<Option<String>, AuthError> {
    let mut config = read(file)?.unwrap_or_default();
    let helper = helper_for(&config, registry);
    if let Some(h) = &helper {
        let input = serde_json::json!({
            "ServerURL": auths_key(registry),
            "Username": creds.username,
            "Secret": creds.password,
        });
        run_helper(h, "store", input.to_string().as_bytes())?;
    }
    let auths = config
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if !auths.is_object() {
        *auths = serde_json::Value::Object(Default::default());
    }
    let serde_json::Value::Object(auths) = auths else {
        unreachable!("made an object above");
    };
    auths.retain(|k, _| registry_name(k) != registry);
    let entry = if helper.is_some() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "auth": creds.encoded() })
    };
    auths.insert(auths_key(registry), entry);
    write(file, &config)?;
    Ok(helper)
}

/// Removes every entry for `registry` from `file`, and from its credential helper if
/// one is set up; whether there was one.
pub fn erase(file: &Path, registry: &str) -> Result<bool, AuthError> {
    let Some(mut config) = read(file)? else {
        return Ok(false);
    };
    if let Some(h) = helper_for(&config, registry) {
        run_helper(&h, "erase", auths_key(registry).as_bytes())?;
    }
    let Some(serde_json::Value::Object(auths)) = config.get_mut("auths") else {
        return Ok(false);
    };
    let before = auths.len();
    auths.retain(|k, _| registry_name(k) != registry);
    if auths.len() == before {
        return Ok(false);
    }
    write(file, &config)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn servers_name_registries_as_references_do() {
        for hub in [
            "",
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
        ] {
            assert_eq!(registry_name(hub), "docker.io", "{hub:?}");
        }
        assert_eq!(registry_name("Reg.Example:5000"), "reg.example:5000");
        assert_eq!(registry_name("https://reg.example/v1/"), "reg.example");
        assert_eq!(registry_name("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(auths_key("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(auths_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    /// Docker's file, with keys arca does not use and entries in every form Docker
    /// writes or reads: a login keeps them all, replaces only its registry's entry and
    /// leaves the file readable by its owner only; logout removes every entry for the
    /// registry.
    #[test]
    fn login_and_logout_change_only_their_registrys_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("docker/config.json");
        let reg = "127.0.0.1:5000";
        assert_eq!(lookup(&file, reg).unwrap(), None);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(
            &file,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOmh1YnB3"},
                "http://127.0.0.1:5000/v2/":{"auth":"b2xkOm9sZA=="},
                "other.example":{"username":"u","password":"p:w"}},
               "credHelpers":{"gcr.io":"gcloud"},"psFormat":"table {{.ID}}"}"#,
        )
        .unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let found = |r: &str| lookup(&file, r).unwrap();
        assert_eq!(found(reg).unwrap().username, "old");
        assert_eq!(found("docker.io").unwrap().password, "hubpw");
        assert_eq!(found("other.example").unwrap().password, "p:w");
        assert_eq!(found("nowhere.example"), None);

        let creds = Credentials {
            username: "alice".into(),
            password: "s3cr:et".into(),
        };
        store(&file, reg, &creds).unwrap();
        assert_eq!(found(reg), Some(creds.clone()));
        let text: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        assert_eq!(text["psFormat"], "table {{.ID}}");
        assert_eq!(text["credHelpers"]["gcr.io"], "gcloud");
        assert_eq!(text["auths"][reg]["auth"], "YWxpY2U6czNjcjpldA==");
        assert!(text["auths"].get("http://127.0.0.1:5000/v2/").is_none());
        assert_eq!(found("docker.io").unwrap().username, "hub");
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "other local users must not read credentials");

        assert!(erase(&file, reg).unwrap());
        assert!(!erase(&file, reg).unwrap());
        assert_eq!(found(reg), None);
        assert_eq!(found("docker.io").unwrap().username, "hub");
    }

    #[test]
    fn a_malformed_file_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        fs::write(&file, "{not json").unwrap();
        let e = lookup(&file, "docker.io").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        let creds = Credentials {
            username: "a".into(),
            password: "b".into(),
        };
        assert!(store(&file, "docker.io", &creds).is_err());
        assert_eq!(fs::read_to_string(&file).unwrap(), "{not json");
    }

    #[test]
    fn credentials_never_show_their_password() {
        let c = Credentials {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
