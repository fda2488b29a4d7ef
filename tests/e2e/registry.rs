//! `arca pull`, `push` and `login` against a real registry: Debian's `docker-registry`
//! on loopback, with images pushed by `skopeo`. A pull by tag and by digest, a
//! multi-arch index whose linux/amd64 entry must be chosen, a tampered blob that must be
//! rejected, a resumed download, a registry that is down, and a registry with htpasswd
//! (basic) auth that arca logs in to, pushes to and pulls back from.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use arca_e2e::guest::busybox_image;
use arca_e2e::{binary, is_root, stderr, stdout};

struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools_present() -> bool {
    ["docker-registry", "skopeo"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn start_registry(dir: &Path) -> Registry {
    start_registry_with(dir, "")
}

/// A registry whose `http:` section gets `extra` (indented YAML lines).
fn start_registry_with(dir: &Path, extra: &str) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let storage = dir.join("registry");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
            storage.display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry {
        child,
        port,
        storage,
    }
}

/// A plain-HTTP registry in `dir` holding the busybox image as `busybox:latest`, and
/// that image's archive.
fn registry_with_busybox(dir: &Path) -> (Registry, PathBuf) {
    let tar = busybox_image(dir);
    let reg = start_registry(dir);
    push(&tar, reg.port, "busybox:latest");
    (reg, tar)
}

fn push(tar: &Path, port: u16, name: &str) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("docker-archive:{}", tar.display()))
        .arg(format!("docker://127.0.0.1:{port}/{name}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
}

fn arca(state: &Path, args: &[&str]) -> Output {
    Command::new(binary("arca"))
        .args(args)
        .env("ARCA_STATE_DIR", state)
        .env("ARCA_CONFIG_DIR", state.join("config"))
        .env("DOCKER_CONFIG", state.join("docker"))
        .output()
        .unwrap()
}

/// `arca` with Docker's credentials in `docker` and `input` on stdin.
fn arca_as(state: &Path, docker: &Path, args: &[&str], input: &str) -> Output {
    arca_env(state, docker, args, input, &[])
}

/// [`arca_as`] with more environment.
fn arca_env(
    state: &Path,
    docker: &Path,
    args: &[&str],
    input: &str,
    env: &[(&str, &str)],
) -> Output {
    let mut child = Command::new(binary("arca"))
        .args(args)
        .envs(env.iter().copied())
        .env("ARCA_STATE_DIR", state)
        .env("ARCA_CONFIG_DIR", state.join("config"))
        .env("DOCKER_CONFIG", docker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // arca may end before it reads its input (a refusal): a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

/// A raw HTTP request to the registry; returns status, headers and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, resp[split + 4..].to_vec())
}

fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn pulls_verify_every_digest_pick_linux_amd64_and_resume() {
    if !tools_present() {
        eprintln!("SKIP: docker-registry and skopeo are needed (make test installs them)");
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = registry_with_busybox(dir.path());
    let port = reg.port;

    // By tag.
    let state = dir.path().join("state");
    let name = format!("127.0.0.1:{port}/busybox:latest");
    let out = arca(&state, &["pull", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("Digest: ").map(String::from))
        .expect("a digest line");
    let images = arca(&state, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(stdout(&images).contains(&name), "{}", stdout(&images));
    // By digest, into a fresh store.
    let state2 = dir.path().join("state2");
    let out = arca(
        &state2,
        &["pull", &format!("127.0.0.1:{port}/busybox@{digest}")],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A multi-arch index: an arm64 entry first, then amd64.
    let accept = "application/vnd.docker.distribution.manifest.v2+json";
    let (st, head, manifest) = http(
        port,
        "GET",
        "/v2/busybox/manifests/latest",
        &[("Accept", accept)],
        b"",
    );
    assert_eq!(st, 200);
    let size = manifest.len();
    let mdigest = header(&head, "Docker-Content-Digest");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {{"mediaType":"{accept}","digest":"{mdigest}","size":{size},"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{accept}","digest":"{mdigest}","size":{size},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
    );
    let (st, head, _) = http(
        port,
        "PUT",
        "/v2/busybox/manifests/multi",
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )],
        index.as_bytes(),
    );
    assert_eq!(st, 201, "{head}");
    let state3 = dir.path().join("state3");
    let out = arca(
        &state3,
        &["pull", &format!("127.0.0.1:{port}/busybox:multi")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("Digest: {mdigest}")),
        "{}",
        stdout(&out)
    );
    // An index without linux/amd64 is refused by name.
    let arm_only = index.replace("\"amd64\"", "\"riscv64\"");
    let (st, _, _) = http(
        port,
        "PUT",
        "/v2/busybox/manifests/armonly",
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )],
        arm_only.as_bytes(),
    );
    assert_eq!(st, 201);
    let out = arca(
        &state3,
        &["pull", &format!("127.0.0.1:{port}/busybox:armonly")],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no linux/amd64"), "{}", stderr(&out));

    // A resumed download: the first half of the layer is already there.
    let state4 = dir.path().join("state4");
    let layer = layer_file(&reg.storage, &manifest);
    let bytes = std::fs::read(&layer).unwrap();
    let hexname = layer
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let partial = state4.join("images/partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join(&hexname), &bytes[..bytes.len() / 2]).unwrap();
    let out = arca(&state4, &["pull", &name]);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    // A bad kept prefix is detected and the blob fetched again from the start.
    let state5 = dir.path().join("state5");
    std::fs::create_dir_all(state5.join("images/partial")).unwrap();
    std::fs::write(
        state5.join("images/partial").join(&hexname),
        vec![0u8; bytes.len() / 2],
    )
    .unwrap();
    let out = arca(&state5, &["pull", &name]);
    assert!(out.status.success(), "bad prefix: {}", stderr(&out));

    // A tampered blob in the registry: refused, nothing tagged.
    // Same size, one byte changed: only the digest can tell.
    let mut tampered = bytes.clone();
    tampered[bytes.len() / 2] ^= 0xff;
    std::fs::write(&layer, &tampered).unwrap();
    let state6 = dir.path().join("state6");
    let out = arca(&state6, &["pull", &name]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    // Refused for its size (it grew) or, were the size kept, for its digest.
    assert!(
        stderr(&out).contains("fails verification")
            || stderr(&out).contains("larger than its announced"),
        "{}",
        stderr(&out)
    );
    let images = arca(&state6, &["images", "-q"]);
    assert!(stdout(&images).trim().is_empty(), "{}", stdout(&images));

    // Unknown tags and a registry that is down: one line, 125.
    std::fs::write(&layer, &bytes).unwrap();
    let out = arca(
        &state6,
        &["pull", &format!("127.0.0.1:{port}/busybox:nope")],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    // `run` pulls a missing image first, as Docker does.
    if is_root() {
        let state7 = dir.path().join("state7");
        let out = arca(
            &state7,
            &[
                "run",
                "--rm",
                "--isolation=process",
                &name,
                "echo",
                "pulled and ran",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "pulled and ran\n");
        assert!(
            stderr(&out).contains("Unable to find image"),
            "{}",
            stderr(&out)
        );
    }
    drop(reg);
    let out = arca(&state6, &["pull", &name]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("Cannot reach registry"),
        "{}",
        stderr(&out)
    );
}

/// The registry's storage file of the (only) layer of `manifest`.
fn layer_file(storage: &Path, manifest: &[u8]) -> PathBuf {
    let text = String::from_utf8_lossy(manifest);
    let layers = text.split("\"layers\"").nth(1).expect("a layers field");
    let digest = layers.split("sha256:").nth(1).expect("a layer digest");
    let hexpart = &digest[..64];
    storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hexpart}/data",
        &hexpart[..2]
    ))
}

/// A CA and a server certificate for `127.0.0.1` and `localhost`, made by `openssl`.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .args(["-ec", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl: {}", stderr(&out));
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=arca-test-ca \
        -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
        -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days 2 -extfile ext.cnf -out server.crt 2>/dev/null",
    );
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[test]
fn pulls_over_tls_trust_the_registrys_own_ca_and_nothing_else() {
    if !tools_present() || Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP: docker-registry, skopeo and openssl are needed (make test installs them)");
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let tar = busybox_image(dir.path());
    let reg = start_registry_with(
        dir.path(),
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ),
    );
    push(&tar, reg.port, "busybox:tls");
    let name = format!("127.0.0.1:{}/busybox:tls", reg.port);

    // Without the CA the certificate is refused, and arca says where a CA goes; it does
    // not fall back to plain HTTP.
    let state = dir.path().join("state");
    let out = arca(&state, &["pull", &name]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let certs = state
        .join("config/certs.d")
        .join(format!("127.0.0.1:{}", reg.port));
    assert!(
        stderr(&out).contains("certificate") && stderr(&out).contains(&*certs.to_string_lossy()),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&arca(&state, &["images", "-q"])).trim().is_empty());

    // With the CA in certs.d the pull goes through TLS.
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let out = arca(&state, &["pull", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&arca(
            &state,
            &["images", "--format", "{{.Repository}}:{{.Tag}}"]
        ))
        .contains(&name)
    );

    // A certificate file that is not PEM is named in the error.
    std::fs::write(
        certs.join("broken.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    )
    .unwrap();
    let out = arca(&state, &["pull", &name]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("broken.crt"), "{}", stderr(&out));
}

/// A registry front that demands a bearer token, as Docker Hub does: `/token` hands out
/// one token for `repository:busybox:pull`, and requests bearing it are passed to the
/// real registry behind. Returns the address and the scopes the token endpoint saw.
/// The realm is on the front's own host (`127.0.0.2`), or with `realm_host` on that
/// address (which must be `127.0.0.1`: the front listens there too, on the same port).
fn token_front(
    backend: u16,
    realm_host: Option<&str>,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::sync::{Arc, Mutex};
    // 127.0.0.2: loopback in fact, but not a name arca trusts with plain HTTP unasked.
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let realm = format!("http://{}:{port}/token", realm_host.unwrap_or("127.0.0.2"));
    let scopes = Arc::new(Mutex::new(Vec::new()));
    if realm_host.is_some() {
        let other = TcpListener::bind(("127.0.0.1", port)).unwrap();
        serve_front(other, backend, realm.clone(), Arc::clone(&scopes));
    }
    serve_front(listener, backend, realm, Arc::clone(&scopes));
    (port, scopes)
}

fn serve_front(
    listener: TcpListener,
    backend: u16,
    realm: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::sync::Arc;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let seen = Arc::clone(&seen);
            let realm = realm.clone();
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                    // A TLS hello, not HTTP: hang up as a plain server would.
                    if !head[0].is_ascii_uppercase() {
                        return;
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                if let Some(query) = path.strip_prefix("/token?") {
                    seen.lock().unwrap().push(query.to_string());
                    let body = r#"{"token":"t0k3n"}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                } else if header(&text, "Authorization") == "Bearer t0k3n" {
                    // One request a connection: the registry closes after answering
                    // (and says so, so that the client does not reuse it).
                    let mut back = TcpStream::connect(("127.0.0.1", backend)).unwrap();
                    back.write_all(&head[..head.len() - 2]).unwrap();
                    back.write_all(b"Connection: close\r\n\r\n").unwrap();
                    let _ = std::io::copy(&mut back, &mut conn);
                } else {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"arca-test\",scope=\"repository:busybox:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            });
        }
    });
}

#[test]
fn pulls_follow_bearer_token_auth_and_plain_http_needs_insecure_off_localhost() {
    if !tools_present() {
        eprintln!("SKIP: docker-registry and skopeo are needed (make test installs them)");
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = registry_with_busybox(dir.path());
    let (front, scopes) = token_front(reg.port, None);
    let name = format!("127.0.0.2:{front}/busybox:latest");
    let state = dir.path().join("state");

    // Not a loopback name: plain HTTP only when asked for.
    let out = arca(&state, &["pull", &name]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("--insecure"), "{}", stderr(&out));
    assert!(scopes.lock().unwrap().is_empty());

    let out = arca(&state, &["pull", "--insecure", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&arca(
            &state,
            &["images", "--format", "{{.Repository}}:{{.Tag}}"]
        ))
        .contains(&name)
    );
    let seen = scopes.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|q| q.contains("service=arca-test") && q.contains("scope=repository:busybox:pull")),
        "{seen:?}"
    );
}

/// A hostile registry names a token realm on another host, to make arca fetch a URL of
/// its choosing: refused, naming the `token-realms` line that would allow it, and the
/// realm is never asked; with that line in arca's config directory the pull goes
/// through.
#[test]
fn token_realms_on_another_host_need_the_token_realms_file() {
    if !tools_present() {
        eprintln!("SKIP: docker-registry and skopeo are needed (make test installs them)");
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = registry_with_busybox(dir.path());
    let (front, scopes) = token_front(reg.port, Some("127.0.0.1"));
    let name = format!("127.0.0.2:{front}/busybox:latest");
    let state = dir.path().join("state");

    let out = arca(&state, &["pull", "--insecure", &name]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let line = format!("127.0.0.2:{front} 127.0.0.1");
    assert!(
        stderr(&out).contains(&line) && stderr(&out).contains("token-realms"),
        "{}",
        stderr(&out)
    );
    assert!(
        scopes.lock().unwrap().is_empty(),
        "the foreign realm was asked"
    );
    assert!(stdout(&arca(&state, &["images", "-q"])).trim().is_empty());

    std::fs::create_dir_all(state.join("config")).unwrap();
    std::fs::write(
        state.join("config/token-realms"),
        format!("# the test's token server\n{line}\n"),
    )
    .unwrap();
    let out = arca(&state, &["pull", "--insecure", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!scopes.lock().unwrap().is_empty());
    assert!(
        stdout(&arca(
            &state,
            &["images", "--format", "{{.Repository}}:{{.Tag}}"]
        ))
        .contains(&name)
    );
}

/// `arca` with `ARCA_MAX_IMAGE_SIZE` set to `cap`.
fn arca_capped(state: &Path, cap: &str, args: &[&str]) -> Output {
    Command::new(binary("arca"))
        .args(args)
        .env("ARCA_STATE_DIR", state)
        .env("ARCA_CONFIG_DIR", state.join("config"))
        .env("DOCKER_CONFIG", state.join("docker"))
        .env("ARCA_MAX_IMAGE_SIZE", cap)
        .output()
        .unwrap()
}

/// A hostile registry serves an image that unpacks to more than the host should give
/// it. With the cap below the announced (compressed) layer sizes nothing is downloaded;
/// with it between compressed and decompressed size the layer is downloaded, found too
/// large while its digest is checked, and nothing is unpacked or kept. A cap that does
/// not parse is named.
#[test]
fn images_past_the_size_cap_are_refused_and_leave_nothing() {
    if !tools_present() {
        eprintln!("SKIP: docker-registry and skopeo are needed (make test installs them)");
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = registry_with_busybox(dir.path());
    let name = format!("127.0.0.1:{}/busybox:latest", reg.port);
    let (st, _, manifest) = http(
        reg.port,
        "GET",
        "/v2/busybox/manifests/latest",
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
        b"",
    );
    assert_eq!(st, 200);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let compressed: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let state = dir.path().join("state");
    let nothing_kept = |state: &Path| {
        assert!(stdout(&arca(state, &["images", "-q"])).trim().is_empty());
        for sub in ["tmp", "by-id"] {
            let d = state.join("images").join(sub);
            let left: Vec<_> = std::fs::read_dir(&d)
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "left in {}: {left:?}", d.display());
        }
    };

    let out = arca_capped(&state, "1k", &["pull", &name]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("size cap of 1 KiB")
            && stderr(&out).contains("compressed layers")
            && stderr(&out).contains("ARCA_MAX_IMAGE_SIZE"),
        "{}",
        stderr(&out)
    );
    assert!(
        !state.join("images/partial").exists(),
        "something was downloaded"
    );
    nothing_kept(&state);

    // Downloaded, but it decompresses past the cap.
    let cap = (compressed + 1).to_string();
    let out = arca_capped(&state, &cap, &["pull", &name]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is larger than the size cap")
            && !stderr(&out).contains("compressed layers")
            && stderr(&out).contains("passes it at layer sha256:"),
        "{}",
        stderr(&out)
    );
    nothing_kept(&state);

    let out = arca_capped(&state, "12x", &["pull", &name]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Invalid ARCA_MAX_IMAGE_SIZE \"12x\""),
        "{}",
        stderr(&out)
    );

    // With room, it goes through.
    let out = arca_capped(&state, "1g", &["pull", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Debian's `docker-registry` with htpasswd auth (users and registries behave as with
/// Docker): a push before `login` is refused naming `arca login`; a wrong password is
/// refused and stores nothing; `login` writes Docker's `config.json` readable by its
/// owner only (other local users are hostile), in the format other clients read
/// (skopeo finds the credentials there); `push` uploads each blob once and the manifest
/// (a second push finds the layers there), `-a` pushes every tag of the repository,
/// the image pulled back has the same ID; `logout` removes the credentials, and a pull
/// then is refused; an unreadable config file is a warning, not a failed pull; a
/// credential helper named by `credsStore` stores, gives and erases the credentials.
#[test]
fn login_push_and_pull_back_through_htpasswd_auth() {
    let htpasswd_present = Command::new("sh")
        .args(["-c", "command -v htpasswd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !tools_present() || !htpasswd_present {
        eprintln!(
            "SKIP: docker-registry, skopeo and htpasswd (apache2-utils) are needed (make test installs them)"
        );
        return;
    }
    binary("arca");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("htpasswd");
    let made = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&users)
        .args(["alice", "s3cret"])
        .output()
        .unwrap();
    assert!(made.status.success(), "htpasswd: {}", stderr(&made));
    let reg = start_registry_with(
        dir.path(),
        &format!(
            "auth:\n  htpasswd:\n    realm: arca-test\n    path: {}\n",
            users.display()
        ),
    );
    let server = format!("127.0.0.1:{}", reg.port);
    let state = dir.path().join("state");
    let docker = dir.path().join("docker");
    let config = docker.join("config.json");
    let run = |args: &[&str], input: &str| arca_as(&state, &docker, args, input);
    let tar = busybox_image(dir.path());
    let out = run(&["load", "-i", tar.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let v1 = format!("{server}/team/bb:v1");
    let v2 = format!("{server}/team/bb:v2");
    for tag in [&v1, &v2] {
        let out = run(&["tag", "busybox:latest", tag], "");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let id = stdout(&run(&["images", "-q", "--no-trunc", &v1], ""))
        .trim()
        .to_string();
    assert!(id.starts_with("sha256:"), "{id}");

    // Not logged in: refused, pointing at login.
    let out = run(&["push", &v1], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("arca login {server}")),
        "{}",
        stderr(&out)
    );
    let out = run(&["push", &format!("{server}/team/none:v1")], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("An image does not exist locally with the tag"),
        "{}",
        stderr(&out)
    );

    // A wrong password: refused, nothing stored.
    let out = run(
        &["login", "-u", "alice", "--password-stdin", &server],
        "guess\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("incorrect username or password"),
        "{}",
        stderr(&out)
    );
    assert!(!config.exists());
    let out = run(&["login", "--password-stdin", &server], "s3cret\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Must provide --username with --password-stdin"));
    let out = run(&["login", &server], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Cannot perform an interactive login from a non TTY device"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &["login", "-u", "alice", "--password-stdin", &server],
        "s3cret\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "Login Succeeded");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials readable by other local users");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(saved["auths"][&server]["auth"], "YWxpY2U6czNjcmV0");
    // The stored credentials are found again without a password.
    let out = run(&["login", &server], "");
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(&["push", &v1], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("The push refers to repository [{server}/team/bb]")),
        "{text}"
    );
    // One layer (the config is sent too, but Docker reports layers only).
    assert_eq!(text.matches(": Pushed").count(), 1, "{text}");
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("v1: digest: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest line: {text}"))
        .to_string();
    let out = run(&["push", &v1], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).matches(": Layer already exists").count(), 1);
    assert!(stdout(&out).contains(&format!("v1: digest: {digest} ")));
    let out = run(&["push", "-q", "-a", &format!("{server}/team/bb")], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{server}/team/bb\n"));
    let out = run(&["push", "-a", &v1], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("tag can't be used with --all-tags/-a"));

    // Another client reads what login wrote, and sees what push sent.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{v1}"))
        .env("DOCKER_CONFIG", &docker)
        .env("REGISTRY_AUTH_FILE", &config)
        .output()
        .unwrap();
    assert!(inspect.status.success(), "skopeo: {}", stderr(&inspect));
    let seen: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(seen["Digest"], digest.as_str());

    // Pulled back into another store: the same image.
    let other = dir.path().join("other");
    let out = arca_as(&other, &docker, &["pull", &v2], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let pulled = stdout(&arca_as(
        &other,
        &docker,
        &["images", "-q", "--no-trunc", &v2],
        "",
    ));
    assert_eq!(pulled.trim(), id);

    let out = run(&["logout", &server], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("Removing login credentials for {server}")
    );
    let out = run(&["logout", &server], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let third = dir.path().join("third");
    let out = arca_as(&third, &docker, &["pull", &v1], "");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));

    // A config file that cannot be parsed: a warning, and an anonymous pull (of an
    // image the registry refuses anonymously: access denied, not a config error).
    std::fs::write(&config, "{not json").unwrap();
    let out = arca_as(&third, &docker, &["pull", &v1], "");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("WARNING: Error loading config file")
            && stderr(&out).contains("access denied"),
        "{}",
        stderr(&out)
    );

    // A credential helper (Docker's protocol) named by credsStore: login stores through
    // it, leaving an empty marker in auths; pull gets the credentials from it; logout
    // erases them there.
    let helpers = dir.path().join("helpers");
    std::fs::create_dir_all(&helpers).unwrap();
    let helper = helpers.join("docker-credential-arcatest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nf=\"$(dirname \"$0\")/store.json\"\ncase \"$1\" in\n  store) cat > \"$f\" ;;\n  get) read server; [ -s \"$f\" ] && cat \"$f\" || { echo 'credentials not found in native keychain'; exit 1; } ;;\n  erase) read server; rm -f \"$f\" ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&config, r#"{"credsStore":"arcatest"}"#).unwrap();
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let with_helper = |state: &Path, args: &[&str], input: &str| {
        arca_env(state, &docker, args, input, &[("PATH", &path)])
    };
    let out = with_helper(
        &state,
        &["login", "-u", "alice", "--password-stdin", &server],
        "s3cret\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("unencrypted"), "{}", stderr(&out));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(saved["auths"][&server], serde_json::json!({}));
    assert_eq!(saved["credsStore"], "arcatest");
    let stored = std::fs::read_to_string(helpers.join("store.json")).unwrap();
    assert!(stored.contains("\"Secret\":\"s3cret\""), "{stored}");
    let fourth = dir.path().join("fourth");
    let out = with_helper(&fourth, &["pull", &v1], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with_helper(&state, &["logout", &server], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!helpers.join("store.json").exists());
}
