//! The merged Compose document read into a [`Project`]: each key checked (supported,
//! refused by name, or unknown with a warning), short and long syntaxes read, and each
//! service turned into the [`RunOptions`] of its container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::ComposeError;
use super::load::{Loaded, key_text, scalar_text};
use crate::container::config::{self, RestartPolicy, RunOptions, SecurityFlags};
use crate::container::health::HealthConfig;
use crate::container::record::Isolation;
use crate::storage::{MountRequest, RequestKind};

/// Service keys of the Compose specification Arca does not carry out: refused by name.
const SERVICE_REFUSED: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cgroup_parent",
    "configs",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns_opt",
    "dns_search",
    "domainname",
    "external_links",
    "extends",
    "gpus",
    "ipc",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "post_start",
    "pre_stop",
    "provider",
    "runtime",
    "secrets",
    "storage_opt",
    "use_api_socket",
    "userns_mode",
    "uts",
];

/// A project: its services, networks and volumes.
#[derive(Debug, Clone)]
pub struct Project {
    /// `-p`, the file's `name`, or the directory's.
    pub name: String,
    /// Relative paths are against it.
    pub dir: PathBuf,
    /// The files it was read from.
    pub files: Vec<PathBuf>,
    /// By name.
    pub services: BTreeMap<String, Service>,
    /// By the file's key (`default` is added when a service uses it).
    pub networks: BTreeMap<String, NetworkDef>,
    /// By the file's key.
    pub volumes: BTreeMap<String, VolumeDef>,
    /// What the user should know.
    pub warnings: Vec<String>,
    /// The merged document, for `config`.
    pub doc: Value,
    /// Services whose profiles are not active: not part of this run, but still the
    /// project's (their containers are no orphans).
    pub disabled: BTreeMap<String, Vec<String>>,
}

/// A top-level network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// The Arca network's name (`PROJECT_KEY`, or the file's `name`).
    pub name: String,
    /// Made elsewhere: must exist, never made or removed here.
    pub external: bool,
    /// `ipam.config[0].subnet`.
    pub subnet: Option<String>,
}

/// A top-level volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDef {
    /// The Arca volume's name (`PROJECT_KEY`, or the file's `name`).
    pub name: String,
    /// Made elsewhere: must exist, never made or removed here.
    pub external: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// When a dependency counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Its container runs.
    Started,
    /// Its health check says healthy.
    Healthy,
    /// It exited with 0.
    CompletedSuccessfully,
    /// It runs (`up --wait` for a service without a health check; fails when it
    /// exited).
    Running,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dependency {
    /// What to wait for.
    pub condition: Condition,
    /// `required: false`: a dependency that is not in the project is skipped.
    pub required: bool,
}

/// `build:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDef {
    /// The context directory, absolute.
    pub context: PathBuf,
    /// The Dockerfile, absolute (`context/Dockerfile` when not given).
    pub dockerfile: Option<PathBuf>,
    /// `args`, as `K=V` (or `K`, taken from the environment).
    pub args: Vec<String>,
    /// `target`.
    pub target: Option<String>,
}

/// One service.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// `image` (the built image's name when it also has `build`).
    pub image: String,
    /// `build`.
    pub build: Option<BuildDef>,
    /// `depends_on`, by service.
    pub depends_on: BTreeMap<String, Dependency>,
    /// `pull_policy`: `always`, `missing` (default), `never` or `build`.
    pub pull_policy: String,
    /// `container_name`.
    pub container_name: Option<String>,
    /// The network's key in [`Project::networks`] and its aliases, or `none`/`host`
    /// (`network_mode`) with no key.
    pub network: ServiceNetwork,
    /// `stop_grace_period`.
    pub stop_grace_period: Option<Duration>,
    /// `scale` or `deploy.replicas` (`up --scale` changes it): its containers,
    /// numbered from 1.
    pub replicas: u32,
    /// Everything else, as `run` takes it (name, labels, network and its aliases are
    /// set per container by [`Project::run_options`]).
    pub run: RunOptions,
}

/// Where a service's container is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceNetwork {
    /// A project network (by its key) with these aliases.
    Project {
        /// Its key in the file.
        key: String,
        /// `aliases`.
        aliases: Vec<String>,
    },
    /// `network_mode: none|host|bridge` (`bridge` is Arca's default network).
    Mode(String),
}

impl Project {
    /// Reads the loaded document.
    pub fn from_loaded(l: Loaded) -> Result<Self, ComposeError> {
        let mut warnings = l.warnings.clone();
        let top = l.doc.as_mapping().cloned().unwrap_or_default();
        for (k, v) in &top {
            let key = key_text(k);
            match key.as_str() {
                "name" | "services" | "networks" | "volumes" => {}
                "version" => warnings.push(
                    "the attribute `version` is obsolete, it will be ignored, please remove it to avoid potential confusion".into(),
                ),
                k if k.starts_with("x-") => {}
                "secrets" | "configs" | "include" | "models" if !v.is_null() => {
                    return Err(unsupported(&key, "top-level"));
                }
                "secrets" | "configs" | "include" | "models" => {}
                _ => warnings.push(format!("top-level key {key:?} is unknown: ignored")),
            }
        }
        let default_isolation = match top.get("x-arca").and_then(|x| x.get("isolation")) {
            Some(v) => Some(isolation(v, "x-arca.isolation")?),
            None => None,
        };
        let mut networks = BTreeMap::new();
        for (k, v) in mapping_of(top.get("networks"), "networks")? {
            networks.insert(k.clone(), network_def(&l.name, &k, &v, &mut warnings)?);
        }
        let mut volumes = BTreeMap::new();
        for (k, v) in mapping_of(top.get("volumes"), "volumes")? {
            volumes.insert(k.clone(), volume_def(&l.name, &k, &v)?);
        }
        let mut services = BTreeMap::new();
        let mut defined = mapping_of(top.get("services"), "services")?;
        if defined.is_empty() {
            return Err(ComposeError::Invalid(
                "no service defined in the Compose file".into(),
            ));
        }
        // Profiles: a service that has some is part of this run only when one of them
        // is active (`*`: all) or it is named on the command line.
        let mut disabled = BTreeMap::new();
        let mut enabled = Vec::new();
        // A service named on the command line brings its profiles along (the
        // specification's rule), so what it depends on in them is enabled too.
        let mut active = l.profiles.clone();
        for (name, v) in &defined {
            if l.targeted.contains(name)
                && let Some(p) = v.get("profiles")
            {
                active.extend(texts(p, &format!("services.{name}.profiles"))?);
            }
        }
        for (name, v) in defined.drain(..) {
            let profiles = match v.get("profiles") {
                Some(p) => texts(p, &format!("services.{name}.profiles"))?,
                None => Vec::new(),
            };
            let on = profiles.is_empty()
                || l.targeted.contains(&name)
                || active.iter().any(|a| a == "*" || profiles.contains(a));
            if on {
                enabled.push((name, v));
            } else {
                disabled.insert(name, profiles);
            }
        }
        let defined = enabled;
        for (name, v) in &defined {
            if !valid_service_name(name) {
                return Err(ComposeError::Invalid(format!(
                    "invalid service name {name:?}: letters, digits, '.', '_' and '-', starting with a letter or digit"
                )));
            }
            let ctx = Ctx {
                project: &l.name,
                dir: &l.dir,
                env: &l.env,
                networks: &networks,
                volumes: &volumes,
                default_isolation,
            };
            let s = service(&ctx, name, v, &mut warnings)?;
            services.insert(name.clone(), s);
        }
        // A service on the default network makes it.
        let uses_default = services
            .values()
            .any(|s| matches!(&s.network, ServiceNetwork::Project { key, .. } if key == "default"));
        if uses_default && !networks.contains_key("default") {
            networks.insert(
                "default".into(),
                NetworkDef {
                    name: format!("{}_default", l.name),
                    external: false,
                    subnet: None,
                },
            );
        }
        for (name, s) in &services {
            for dep in s.depends_on.keys() {
                if let Some(profiles) = disabled.get(dep)
                    && s.depends_on[dep].required
                {
                    return Err(ComposeError::Invalid(format!(
                        "service {dep:?} is required by {name:?} but is disabled. Can be enabled by profiles [{}]",
                        profiles.join(" ")
                    )));
                }
                if !services.contains_key(dep) && s.depends_on[dep].required {
                    return Err(ComposeError::Invalid(format!(
                        "service {name:?} depends on undefined service {dep:?}: invalid compose project"
                    )));
                }
            }
            for from in &s.run.volumes_from {
                let svc = from.split(':').next().unwrap_or_default();
                if !services.contains_key(svc) {
                    return Err(ComposeError::Invalid(format!(
                        "service {name:?} takes volumes from undefined service {svc:?}"
                    )));
                }
            }
        }
        let project = Project {
            name: l.name,
            dir: l.dir,
            files: l.files,
            services,
            networks,
            volumes,
            warnings,
            doc: l.doc,
            disabled,
        };
        project.order(&project.services.keys().cloned().collect::<Vec<_>>())?;
        Ok(project)
    }

    /// `names` and what they depend on, each after its dependencies (a cycle is an
    /// error naming it).
    pub fn order(&self, names: &[String]) -> Result<Vec<String>, ComposeError> {
        fn visit(
            p: &Project,
            name: &str,
            stack: &mut Vec<String>,
            out: &mut Vec<String>,
        ) -> Result<(), ComposeError> {
            if out.iter().any(|o| o == name) {
                return Ok(());
            }
            if let Some(at) = stack.iter().position(|s| s == name) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(name.to_string());
                return Err(ComposeError::Invalid(format!(
                    "dependency cycle detected: {}",
                    cycle.join(" -> ")
                )));
            }
            let Some(s) = p.services.get(name) else {
                return Err(ComposeError::NoService(name.to_string()));
            };
            stack.push(name.to_string());
            let from = s
                .run
                .volumes_from
                .iter()
                .filter_map(|f| f.split(':').next());
            for dep in s.depends_on.keys().map(String::as_str).chain(from) {
                if p.services.contains_key(dep) {
                    visit(p, dep, stack, out)?;
                }
            }
            stack.pop();
            out.push(name.to_string());
            Ok(())
        }
        let mut out = Vec::new();
        for n in names {
            visit(self, n, &mut Vec::new(), &mut out)?;
        }
        Ok(out)
    }

    /// The names of `service`'s containers, one per replica.
    pub fn container_names(&self, service: &Service) -> Vec<String> {
        (1..=service.replicas)
            .map(|n| self.container_name(service, n))
            .collect()
    }

    /// The container name of `service`'s container number `n` (`PROJECT-SERVICE-N`, or
    /// its `container_name`).
    pub fn container_name(&self, service: &Service, n: u32) -> String {
        service
            .container_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}-{n}", self.name, service.name))
    }

    /// What `run` is asked for `service`'s container `name`: its options with
    /// Compose's labels, the project network and the service's name as an alias.
    pub fn run_options(
        &self,
        service: &Service,
        name: &str,
        number: u32,
        oneoff: bool,
    ) -> RunOptions {
        let mut o = service.run.clone();
        o.name = Some(name.to_string());
        o.detach = true;
        // `volumes_from: [service[:ro]]` names the service's container.
        o.volumes_from = o
            .volumes_from
            .iter()
            .map(|f| {
                let (svc, mode) = f
                    .split_once(':')
                    .map_or((f.as_str(), None), |(a, b)| (a, Some(b)));
                let c = self
                    .services
                    .get(svc)
                    .map_or_else(|| svc.to_string(), |s| self.container_name(s, 1));
                mode.map_or(c.clone(), |m| format!("{c}:{m}"))
            })
            .collect();
        match &service.network {
            ServiceNetwork::Project { key, aliases } => {
                o.network = self.networks.get(key).map(|n| n.name.clone());
                // One-off containers answer to their own name only (Compose gives them
                // the service's with `--use-aliases`).
                let mut all = Vec::new();
                if !oneoff {
                    all.push(service.name.clone());
                    all.extend(aliases.iter().cloned());
                }
                all.retain(|a| a != name);
                all.dedup();
                o.network_aliases = all;
            }
            ServiceNetwork::Mode(m) if m == "bridge" => o.network = None,
            ServiceNetwork::Mode(m) => o.network = Some(m.clone()),
        }
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let labels = [
            ("com.docker.compose.project", self.name.clone()),
            ("com.docker.compose.service", service.name.clone()),
            ("com.docker.compose.container-number", number.to_string()),
            (
                "com.docker.compose.oneoff",
                if oneoff { "True" } else { "False" }.to_string(),
            ),
            (
                "com.docker.compose.project.working_dir",
                self.dir.display().to_string(),
            ),
            ("com.docker.compose.project.config_files", files.join(",")),
            ("com.docker.compose.config-hash", self.config_hash(service)),
            (
                "com.docker.compose.depends_on",
                service
                    .depends_on
                    .iter()
                    .map(|(d, dep)| {
                        let c = match dep.condition {
                            Condition::Started => "service_started",
                            Condition::Healthy => "service_healthy",
                            Condition::CompletedSuccessfully => "service_completed_successfully",
                            Condition::Running => "service_started",
                        };
                        format!("{d}:{c}:false")
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("com.docker.compose.image", service.image.clone()),
        ];
        for (k, v) in labels {
            o.labels.insert(k.into(), v);
        }
        o
    }

    /// A digest of what the service's container is made from (its options as
    /// resolved: `env_file` contents, paths and volume names included, and its
    /// network): a container whose label differs is made again by `up`.
    pub fn config_hash(&self, service: &Service) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(serde_json::to_vec(&service.run).unwrap_or_default());
        let network = match &service.network {
            ServiceNetwork::Project { key, aliases } => {
                let name = self
                    .networks
                    .get(key)
                    .map(|n| n.name.as_str())
                    .unwrap_or_default();
                format!("{name} {aliases:?}")
            }
            ServiceNetwork::Mode(m) => m.clone(),
        };
        h.update(network.as_bytes());
        h.update(
            service
                .container_name
                .as_deref()
                .unwrap_or_default()
                .as_bytes(),
        );
        crate::image::store::hex(&h.finalize())
    }
}

/// Compose's rule for service names.
fn valid_service_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn unsupported(key: &str, where_: &str) -> ComposeError {
    ComposeError::Unsupported(format!("{where_} key {key:?}"))
}

/// A mapping's entries by text key (`null` is empty).
fn mapping_of(v: Option<&Value>, path: &str) -> Result<Vec<(String, Value)>, ComposeError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Mapping(m)) => Ok(m.iter().map(|(k, v)| (key_text(k), v.clone())).collect()),
        Some(_) => Err(ComposeError::Invalid(format!("{path} must be a mapping"))),
    }
}

fn text(v: &Value, path: &str) -> Result<String, ComposeError> {
    scalar_text(v).ok_or_else(|| ComposeError::Invalid(format!("{path} must be a string")))
}

fn boolean(v: &Value, path: &str) -> Result<bool, ComposeError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if matches!(s.as_str(), "true" | "false") => Ok(s == "true"),
        _ => Err(ComposeError::Invalid(format!("{path} must be a boolean"))),
    }
}

fn texts(v: &Value, path: &str) -> Result<Vec<String>, ComposeError> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, x)| text(x, &format!("{path}[{i}]")))
            .collect(),
        Value::Null => Ok(Vec::new()),
        other => Ok(vec![text(other, path)?]),
    }
}

/// `command`/`entrypoint`: a list as is, a string split as a shell would (without
/// running one), as Compose does.
fn words(v: &Value, path: &str) -> Result<Vec<String>, ComposeError> {
    match v {
        Value::String(s) => split_words(s)
            .ok_or_else(|| ComposeError::Invalid(format!("{path}: unterminated quote in {s:?}"))),
        Value::Sequence(_) => texts(v, path),
        _ => Err(ComposeError::Invalid(format!(
            "{path} must be a string or a list"
        ))),
    }
}

/// Splits `text` into words: blanks separate, single quotes are literal, double quotes
/// take `\"`, `\\` and `\$`, a backslash outside quotes takes the next character.
pub fn split_words(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    out.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => w.push(c),
                            c => {
                                w.push('\\');
                                w.push(c);
                            }
                        },
                        c => w.push(c),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                if let Some(c) = chars.next() {
                    w.push(c);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    Some(out)
}

fn duration(v: &Value, path: &str) -> Result<Duration, ComposeError> {
    let t = text(v, path)?;
    crate::parse_go_duration(&t).ok_or_else(|| {
        ComposeError::Invalid(format!("{path}: invalid duration {t:?} (e.g. 10s, 1m30s)"))
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn isolation(v: &Value, path: &str) -> Result<Isolation, ComposeError> {
    match text(v, path)?.as_str() {
        "vm" => Ok(Isolation::Vm),
        "process" => Ok(Isolation::Process),
        other => Err(ComposeError::Invalid(format!(
            "{path}: isolation {other:?} is not vm or process"
        ))),
    }
}

fn size(v: &Value, path: &str) -> Result<u64, ComposeError> {
    let t = text(v, path)?;
    crate::parse_size(&t)
        .filter(|&b| b > 0)
        .ok_or_else(|| ComposeError::Invalid(format!("{path}: invalid size {t:?} (e.g. 64m, 1g)")))
}

fn cpus(v: &Value, path: &str) -> Result<f64, ComposeError> {
    text(v, path)?
        .parse::<f64>()
        .ok()
        .filter(|c| *c > 0.0 && c.is_finite())
        .ok_or_else(|| ComposeError::Invalid(format!("{path} must be a positive number")))
}

fn network_def(
    project: &str,
    key: &str,
    v: &Value,
    warnings: &mut Vec<String>,
) -> Result<NetworkDef, ComposeError> {
    let path = format!("networks.{key}");
    let mut def = NetworkDef {
        name: format!("{project}_{key}"),
        external: false,
        subnet: None,
    };
    for (k, val) in mapping_of(Some(v), &path)? {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "name" => def.name = text(&val, &p)?,
            "external" => def.external = boolean(&val, &p)?,
            "driver" => {
                let d = text(&val, &p)?;
                if d != "bridge" {
                    return Err(ComposeError::Unsupported(format!(
                        "{p} {d:?} (Arca networks are bridges)"
                    )));
                }
            }
            "ipam" => {
                for (ik, iv) in mapping_of(Some(&val), &p)? {
                    match ik.as_str() {
                        "driver" if text(&iv, &p)? == "default" => {}
                        "config" => {
                            let configs = match &iv {
                                Value::Sequence(c) => c.clone(),
                                _ => {
                                    return Err(ComposeError::Invalid(format!(
                                        "{p}.config must be a list"
                                    )));
                                }
                            };
                            if configs.len() > 1 {
                                return Err(ComposeError::Unsupported(format!(
                                    "{p}.config with more than one subnet"
                                )));
                            }
                            if let Some(c) = configs.first() {
                                for (ck, cv) in mapping_of(Some(c), &p)? {
                                    match ck.as_str() {
                                        "subnet" => def.subnet = Some(text(&cv, &p)?),
                                        other => {
                                            return Err(ComposeError::Unsupported(format!(
                                                "{p}.config key {other:?}"
                                            )));
                                        }
                                    }
                                }
                            }
                        }
                        other => {
                            return Err(ComposeError::Unsupported(format!("{p} key {other:?}")));
                        }
                    }
                }
            }
            "labels" | "attachable" => {
                warnings.push(format!("{p} is ignored: Arca networks have none"));
            }
            "enable_ipv6" if !boolean(&val, &p)? => {}
            "internal" if !boolean(&val, &p)? => {}
            "driver_opts" | "enable_ipv6" | "internal" => return Err(unsupported(&k, &path)),
            _ => warnings.push(format!("{p} is unknown: ignored")),
        }
    }
    if !crate::network::valid_name(&def.name) {
        return Err(ComposeError::Invalid(format!(
            "{path}: invalid network name {:?}",
            def.name
        )));
    }
    Ok(def)
}

fn volume_def(project: &str, key: &str, v: &Value) -> Result<VolumeDef, ComposeError> {
    let path = format!("volumes.{key}");
    let mut def = VolumeDef {
        name: format!("{project}_{key}"),
        external: false,
        labels: BTreeMap::new(),
    };
    for (k, val) in mapping_of(Some(v), &path)? {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "name" => def.name = text(&val, &p)?,
            "external" => def.external = boolean(&val, &p)?,
            "driver" => {
                let d = text(&val, &p)?;
                if d != "local" {
                    return Err(ComposeError::Unsupported(format!(
                        "{p} {d:?} (Arca volumes are local)"
                    )));
                }
            }
            "labels" => def.labels = labels(&val, &p)?,
            _ => return Err(unsupported(&k, &path)),
        }
    }
    crate::volume::validate_name(&def.name)
        .map_err(|e| ComposeError::Invalid(format!("{path}: {e}")))?;
    Ok(def)
}

fn labels(v: &Value, path: &str) -> Result<BTreeMap<String, String>, ComposeError> {
    match v {
        Value::Sequence(_) => Ok(crate::parse_labels(&texts(v, path)?)),
        _ => Ok(mapping_of(Some(v), path)?
            .into_iter()
            .map(|(k, v)| (k, scalar_text(&v).unwrap_or_default()))
            .collect()),
    }
}

/// What reading a service needs from the project.
struct Ctx<'a> {
    project: &'a str,
    dir: &'a Path,
    env: &'a BTreeMap<String, String>,
    networks: &'a BTreeMap<String, NetworkDef>,
    volumes: &'a BTreeMap<String, VolumeDef>,
    default_isolation: Option<Isolation>,
}

impl Ctx<'_> {
    /// A host path of the file: relative to the project directory, `~` the home.
    fn host_path(&self, p: &str) -> PathBuf {
        let path = if let Some(rest) = p.strip_prefix("~/") {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/".into())).join(rest)
        } else {
            self.dir.join(p)
        };
        // Lexically, as the docker CLI resolves `-v ./x`.
        let mut out = PathBuf::from("/");
        for c in path.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::Normal(n) => out.push(n),
                _ => {}
            }
        }
        out
    }

    /// A named volume's Arca name (it must be declared).
    fn volume(&self, key: &str, path: &str) -> Result<String, ComposeError> {
        self.volumes
            .get(key)
            .map(|v| v.name.clone())
            .ok_or_else(|| {
                ComposeError::Invalid(format!(
                    "{path} refers to undefined volume {key}: invalid compose project"
                ))
            })
    }
}

fn service(
    ctx: &Ctx,
    name: &str,
    v: &Value,
    warnings: &mut Vec<String>,
) -> Result<Service, ComposeError> {
    let path = format!("services.{name}");
    let m: Mapping = match v {
        Value::Mapping(m) => m.clone(),
        Value::Null => Mapping::new(),
        _ => return Err(ComposeError::Invalid(format!("{path} must be a mapping"))),
    };
    let mut o = RunOptions {
        isolation: ctx.default_isolation.unwrap_or(Isolation::Vm),
        ..RunOptions::default()
    };
    let mut image = None;
    let mut build = None;
    let mut depends_on = BTreeMap::new();
    let mut pull_policy = "missing".to_string();
    let mut container_name = None;
    let mut network = ServiceNetwork::Project {
        key: "default".into(),
        aliases: Vec::new(),
    };
    let mut networks_given = false;
    let mut network_mode = None;
    let mut stop_grace_period = None;
    let mut replicas = 1;
    let mut entrypoint: Option<Vec<String>> = None;
    let mut command: Option<Vec<String>> = None;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut env_files: Vec<(PathBuf, bool)> = Vec::new();
    let mut environment: Vec<(String, Option<String>)> = Vec::new();
    let mut security = SecurityFlags::default();
    let mut shm_size = None;
    let mut sysctls: Vec<String> = Vec::new();
    let mut tmpfs: Vec<String> = Vec::new();
    for (k, val) in &m {
        let key = key_text(k);
        let p = format!("{path}.{key}");
        match key.as_str() {
            "image" => image = Some(text(val, &p)?),
            "build" => build = Some(build_def(ctx, val, &p)?),
            "command" => command = Some(words(val, &p)?),
            "entrypoint" => entrypoint = Some(words(val, &p)?),
            "environment" => {
                for (k, v) in mapping_of(Some(val), &p)? {
                    environment.push((k, scalar_text(&v)));
                }
            }
            "env_file" => {
                let items = match val {
                    Value::Sequence(items) => items.clone(),
                    other => vec![other.clone()],
                };
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    match item {
                        Value::Mapping(_) => {
                            let file = item.get("path").ok_or_else(|| {
                                ComposeError::Invalid(format!("{ip}.path is missing"))
                            })?;
                            let required = match item.get("required") {
                                Some(r) => boolean(r, &ip)?,
                                None => true,
                            };
                            env_files.push((ctx.host_path(&text(file, &ip)?), required));
                        }
                        other => env_files.push((ctx.host_path(&text(other, &ip)?), true)),
                    }
                }
            }
            "ports" => {
                let items = match val {
                    Value::Sequence(items) => items.clone(),
                    _ => return Err(ComposeError::Invalid(format!("{p} must be a list"))),
                };
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    let spec = port_spec(item, &ip)?;
                    let mapped = crate::ports::parse(&spec)
                        .map_err(|e| ComposeError::Invalid(format!("{ip}: {e}")))?;
                    o.publish.extend(mapped);
                }
            }
            "expose" => {
                for e in texts(val, &p)? {
                    crate::ports::expose_keys(&e, None)
                        .map_err(|err| ComposeError::Invalid(format!("{p}: {err}")))?;
                    o.expose.push(e);
                }
            }
            "volumes" => {
                let items = match val {
                    Value::Sequence(items) => items.clone(),
                    _ => return Err(ComposeError::Invalid(format!("{p} must be a list"))),
                };
                for (i, item) in items.iter().enumerate() {
                    o.mounts
                        .push(service_volume(ctx, item, &format!("{p}[{i}]"))?);
                }
            }
            "tmpfs" => tmpfs.extend(texts(val, &p)?),
            "networks" => {
                networks_given = true;
                let nets = mapping_of(Some(val), &p)?;
                if nets.len() > 1 {
                    return Err(ComposeError::Unsupported(format!(
                        "{p} with {} networks (an Arca container is on one network)",
                        nets.len()
                    )));
                }
                if let Some((key, def)) = nets.first() {
                    if !ctx.networks.contains_key(key) && key != "default" {
                        return Err(ComposeError::Invalid(format!(
                            "service {name:?} refers to undefined network {key}: invalid compose project"
                        )));
                    }
                    let mut aliases = Vec::new();
                    for (nk, nv) in mapping_of(Some(def), &format!("{p}.{key}"))? {
                        let np = format!("{p}.{key}.{nk}");
                        match nk.as_str() {
                            "aliases" => {
                                for a in texts(&nv, &np)? {
                                    if !arca_protocol::valid_host_name(&a) {
                                        return Err(ComposeError::Invalid(format!(
                                            "{np}: invalid alias {a:?}"
                                        )));
                                    }
                                    aliases.push(a);
                                }
                            }
                            other => return Err(unsupported(other, &format!("{p}.{key}"))),
                        }
                    }
                    network = ServiceNetwork::Project {
                        key: key.clone(),
                        aliases,
                    };
                }
            }
            "network_mode" => {
                let mode = text(val, &p)?;
                if !matches!(mode.as_str(), "none" | "host" | "bridge") {
                    return Err(ComposeError::Unsupported(format!(
                        "{p} {mode:?} (Arca takes none, host and bridge)"
                    )));
                }
                network_mode = Some(mode);
            }
            "depends_on" => {
                for (dep, d) in mapping_of(Some(val), &p)? {
                    let dp = format!("{p}.{dep}");
                    let mut condition = Condition::Started;
                    let mut required = true;
                    for (dk, dv) in mapping_of(Some(&d), &dp)? {
                        match dk.as_str() {
                            "condition" => {
                                condition = match text(&dv, &dp)?.as_str() {
                                    "service_started" => Condition::Started,
                                    "service_healthy" => Condition::Healthy,
                                    "service_completed_successfully" => {
                                        Condition::CompletedSuccessfully
                                    }
                                    other => {
                                        return Err(ComposeError::Invalid(format!(
                                            "{dp}.condition: unknown condition {other:?}"
                                        )));
                                    }
                                }
                            }
                            "required" => required = boolean(&dv, &dp)?,
                            "restart" => {
                                warnings.push(format!("{dp}.restart is ignored by arca compose"));
                            }
                            other => return Err(unsupported(other, &dp)),
                        }
                    }
                    if dep == name {
                        return Err(ComposeError::Invalid(format!(
                            "dependency cycle detected: {name} -> {name}"
                        )));
                    }
                    depends_on.insert(
                        dep,
                        Dependency {
                            condition,
                            required,
                        },
                    );
                }
            }
            "healthcheck" => o.healthcheck = Some(healthcheck(val, &p)?),
            "restart" => {
                let r = text(val, &p)?;
                o.restart = RestartPolicy::parse(&r)
                    .map_err(|e| ComposeError::Invalid(format!("{p}: {e}")))?;
            }
            "user" => o.user = Some(text(val, &p)?),
            "working_dir" => o.workdir = Some(text(val, &p)?),
            "hostname" => o.hostname = Some(text(val, &p)?),
            "labels" => o.labels.extend(labels(val, &p)?),
            "mem_limit" => o.memory = Some(size(val, &p)?),
            "cpus" => o.cpus = Some(cpus(val, &p)?),
            "pids_limit" => {
                o.pids_limit = Some(
                    text(val, &p)?
                        .parse()
                        .map_err(|_| ComposeError::Invalid(format!("{p} must be a number")))?,
                )
            }
            "deploy" => deploy(val, &p, &mut o, &mut replicas, warnings)?,
            "init" => o.init = boolean(val, &p)?,
            "stop_signal" => {
                let s = text(val, &p)?;
                crate::container::lifecycle::parse_signal(&s)
                    .map_err(|e| ComposeError::Invalid(format!("{p}: {e}")))?;
                o.stop_signal = Some(s);
            }
            "stop_grace_period" => stop_grace_period = Some(duration(val, &p)?),
            // Read by `Project::from_loaded` (a service here is enabled).
            "profiles" => {}
            "isolation" => o.isolation = isolation(val, &p)?,
            "container_name" => {
                let n = text(val, &p)?;
                crate::container::names::validate(&n)
                    .map_err(|e| ComposeError::Invalid(format!("{p}: {e}")))?;
                container_name = Some(n);
            }
            "read_only" => o.read_only = boolean(val, &p)?,
            "tty" => o.tty = boolean(val, &p)?,
            "stdin_open" => o.interactive = boolean(val, &p)?,
            "privileged" => security.privileged = boolean(val, &p)?,
            "cap_add" => security.cap_add = texts(val, &p)?,
            "cap_drop" => security.cap_drop = texts(val, &p)?,
            "security_opt" => security.security_opt = texts(val, &p)?,
            "dns" => {
                for d in texts(val, &p)? {
                    o.dns.push(d.parse().map_err(|_| {
                        ComposeError::Invalid(format!("{p}: {d:?} is not an IPv4 address"))
                    })?);
                }
            }
            "extra_hosts" => {
                let hosts: Vec<String> = match val {
                    Value::Mapping(_) => mapping_of(Some(val), &p)?
                        .into_iter()
                        .map(|(h, ip)| format!("{h}:{}", scalar_text(&ip).unwrap_or_default()))
                        .collect(),
                    _ => texts(val, &p)?
                        .into_iter()
                        .map(|h| h.replacen('=', ":", 1))
                        .collect(),
                };
                for h in hosts {
                    o.add_hosts.push(
                        config::parse_add_host(&h)
                            .map_err(|e| ComposeError::Invalid(format!("{p}: {e}")))?,
                    );
                }
            }
            "group_add" => o.group_add = texts(val, &p)?,
            "sysctls" => {
                sysctls = match val {
                    Value::Sequence(_) => texts(val, &p)?,
                    _ => mapping_of(Some(val), &p)?
                        .into_iter()
                        .map(|(k, v)| format!("{k}={}", scalar_text(&v).unwrap_or_default()))
                        .collect(),
                }
            }
            "shm_size" => shm_size = Some(size(val, &p)?),
            "ulimits" => {
                for (lk, lv) in mapping_of(Some(val), &p)? {
                    let spec = match &lv {
                        Value::Mapping(_) => {
                            let soft = lv.get("soft").and_then(scalar_text).unwrap_or_default();
                            let hard = lv.get("hard").and_then(scalar_text).unwrap_or_default();
                            format!("{lk}={soft}:{hard}")
                        }
                        other => format!("{lk}={}", text(other, &p)?),
                    };
                    o.ulimits.push(
                        config::parse_ulimit(&spec)
                            .map_err(|e| ComposeError::Invalid(format!("{p}: {e}")))?,
                    );
                }
            }
            "platform" => {
                let pl = text(val, &p)?;
                if !matches!(
                    pl.as_str(),
                    "linux/amd64" | "linux/x86_64" | "amd64" | "x86_64" | "linux"
                ) {
                    return Err(ComposeError::Unsupported(format!(
                        "{p} {pl:?} (Arca runs linux/amd64 containers only)"
                    )));
                }
            }
            "pull_policy" => {
                let pp = text(val, &p)?;
                if !matches!(
                    pp.as_str(),
                    "always" | "missing" | "never" | "build" | "if_not_present"
                ) {
                    return Err(ComposeError::Invalid(format!(
                        "{p}: invalid pull policy {pp:?}"
                    )));
                }
                pull_policy = if pp == "if_not_present" {
                    "missing".into()
                } else {
                    pp
                };
            }
            "scale" => replicas = count(val, &p)?,
            "volumes_from" => {
                for f in texts(val, &p)? {
                    if f.starts_with("container:") {
                        return Err(ComposeError::Unsupported(format!("{p} {f:?}")));
                    }
                    o.volumes_from.push(f);
                }
            }
            "x-arca" => {
                for (xk, xv) in mapping_of(Some(val), &p)? {
                    match xk.as_str() {
                        "isolation" => o.isolation = isolation(&xv, &format!("{p}.isolation"))?,
                        other => {
                            return Err(ComposeError::Invalid(format!(
                                "{p}: unknown key {other:?}"
                            )));
                        }
                    }
                }
            }
            k if k.starts_with("x-") => {}
            k if SERVICE_REFUSED.contains(&k) => return Err(unsupported(k, &path)),
            _ => warnings.push(format!("{p} is unknown: ignored")),
        }
    }
    if let Some(mode) = network_mode {
        if networks_given {
            return Err(ComposeError::Invalid(format!(
                "{path}: network_mode and networks cannot be combined"
            )));
        }
        network = ServiceNetwork::Mode(mode);
    }
    // env_file first, environment over it; a name without a value takes this
    // environment's (or is dropped), as Compose.
    for (file, required) in env_files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => {
                return Err(ComposeError::Io {
                    what: format!("read env file {}", file.display()),
                    source: e,
                });
            }
        };
        let vars = super::interpolate::parse_dotenv(&text)
            .map_err(|e| ComposeError::Invalid(format!("env file {}: {e}", file.display())))?;
        for (k, v) in vars {
            match v.or_else(|| ctx.env.get(&k).cloned()) {
                Some(v) => env.insert(k, v),
                None => env.remove(&k),
            };
        }
    }
    for (k, v) in environment {
        match v.or_else(|| ctx.env.get(&k).cloned()) {
            Some(v) => env.insert(k, v),
            None => env.remove(&k),
        };
    }
    o.env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(bytes) = shm_size
        && !tmpfs
            .iter()
            .any(|t| t.split(':').next() == Some("/dev/shm"))
    {
        tmpfs.push(format!("/dev/shm:size={bytes},mode=1777"));
    }
    for t in &tmpfs {
        o.mounts.push(
            crate::storage::parse_tmpfs(t)
                .map_err(|e| ComposeError::Invalid(format!("{path}.tmpfs: {e}")))?,
        );
    }
    o.security = config::security(&security, o.isolation)
        .map_err(|e| ComposeError::Invalid(format!("{path}: {e}")))?;
    let host_network = matches!(&network, ServiceNetwork::Mode(m) if m == "host");
    for s in &sysctls {
        o.sysctls.push(
            config::parse_sysctl(s, host_network.then_some("host"))
                .map_err(|e| ComposeError::Invalid(format!("{path}.sysctls: {e}")))?,
        );
    }
    // Entrypoint: Docker's takes one word; a longer one puts the rest before the
    // command (which the image's Cmd then does not fill, as with Compose).
    match entrypoint {
        Some(mut e) if !e.is_empty() => {
            o.entrypoint = Some(e.remove(0));
            e.extend(command.unwrap_or_default());
            o.args = e;
        }
        Some(_) => {
            o.entrypoint = Some(String::new());
            o.args = command.unwrap_or_default();
        }
        None => o.args = command.unwrap_or_default(),
    }
    let image = match (image, &build) {
        (Some(i), _) => i,
        (None, Some(_)) => format!("{}-{name}", ctx.project),
        (None, None) => {
            return Err(ComposeError::Invalid(format!(
                "service {name:?} has neither an image nor a build context specified: invalid compose project"
            )));
        }
    };
    o.image = image.clone();
    o.stop_timeout = stop_grace_period.map(|d| d.as_secs_f64().ceil() as u64);
    o.pull = Some(match pull_policy.as_str() {
        "build" => "never".into(),
        p => p.to_string(),
    });
    if container_name.is_some() && replicas > 1 {
        return Err(ComposeError::Invalid(format!(
            "{path}: container_name and {replicas} replicas cannot go together (container names are unique)"
        )));
    }
    Ok(Service {
        replicas,
        name: name.to_string(),
        image,
        build,
        depends_on,
        pull_policy,
        container_name,
        network,
        stop_grace_period,
        run: o,
    })
}

fn build_def(ctx: &Ctx, v: &Value, path: &str) -> Result<BuildDef, ComposeError> {
    let mut def = BuildDef {
        context: ctx.dir.to_path_buf(),
        dockerfile: None,
        args: Vec::new(),
        target: None,
    };
    for (k, val) in mapping_of(Some(v), path)? {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "context" => {
                let c = text(&val, &p)?;
                if c.contains("://") || c.starts_with("git@") {
                    return Err(ComposeError::Unsupported(format!(
                        "{p} {c:?} (a remote context; give a directory)"
                    )));
                }
                def.context = ctx.host_path(&c);
            }
            "dockerfile" => def.dockerfile = Some(PathBuf::from(text(&val, &p)?)),
            "args" => {
                for (ak, av) in mapping_of(Some(&val), &p)? {
                    def.args.push(match scalar_text(&av) {
                        Some(v) => format!("{ak}={v}"),
                        None => ak,
                    });
                }
            }
            "target" => def.target = Some(text(&val, &p)?),
            "labels"
            | "cache_from"
            | "cache_to"
            | "network"
            | "shm_size"
            | "extra_hosts"
            | "secrets"
            | "ssh"
            | "platforms"
            | "tags"
            | "pull"
            | "no_cache"
            | "additional_contexts"
            | "dockerfile_inline"
            | "isolation"
            | "privileged"
            | "ulimits"
            | "entitlements"
            | "provenance"
            | "sbom" => {
                return Err(unsupported(&k, path));
            }
            _ => return Err(ComposeError::Invalid(format!("{p} is unknown"))),
        }
    }
    def.dockerfile = def.dockerfile.map(|d| def.context.join(d));
    Ok(def)
}

/// A `ports` entry as `-p` takes it.
fn port_spec(v: &Value, path: &str) -> Result<String, ComposeError> {
    match v {
        Value::Mapping(_) => {
            let mut target = None;
            let (mut published, mut host_ip, mut protocol) = (None, None, None);
            for (k, val) in mapping_of(Some(v), path)? {
                let p = format!("{path}.{k}");
                match k.as_str() {
                    "target" => target = Some(text(&val, &p)?),
                    "published" => published = Some(text(&val, &p)?),
                    "host_ip" => host_ip = Some(text(&val, &p)?),
                    "protocol" => protocol = Some(text(&val, &p)?),
                    "mode" if text(&val, &p)? == "host" || text(&val, &p)? == "ingress" => {}
                    "name" | "app_protocol" => {}
                    other => return Err(unsupported(other, path)),
                }
            }
            let target =
                target.ok_or_else(|| ComposeError::Invalid(format!("{path}.target is missing")))?;
            let mut spec = String::new();
            if let Some(ip) = host_ip {
                spec.push_str(&format!("{ip}:{}:", published.clone().unwrap_or_default()));
            } else if let Some(p) = &published {
                spec.push_str(&format!("{p}:"));
            }
            spec.push_str(&target);
            if let Some(proto) = protocol {
                spec.push_str(&format!("/{proto}"));
            }
            Ok(spec)
        }
        other => text(other, path),
    }
}

/// A `volumes` entry of a service.
fn service_volume(ctx: &Ctx, v: &Value, path: &str) -> Result<MountRequest, ComposeError> {
    let invalid = |e: crate::storage::StorageError| ComposeError::Invalid(format!("{path}: {e}"));
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, rest) = match parts.as_slice() {
                [_] => (None, s.as_str()),
                [src, ..] => (Some(*src), &s[src.len() + 1..]),
                [] => (None, s.as_str()),
            };
            let spec = match source {
                None => rest.to_string(),
                Some(src) if src.starts_with(['.', '/', '~']) => {
                    format!("{}:{rest}", ctx.host_path(src).display())
                }
                Some(key) => format!("{}:{rest}", ctx.volume(key, path)?),
            };
            crate::storage::parse_volume(&spec).map_err(invalid)
        }
        Value::Mapping(_) => {
            let mut kind = "volume".to_string();
            let (mut source, mut target, mut readonly) = (None, None, false);
            let (mut create_host_path, mut nocopy) = (false, false);
            let mut tmpfs_opts: Vec<String> = Vec::new();
            for (k, val) in mapping_of(Some(v), path)? {
                let p = format!("{path}.{k}");
                match k.as_str() {
                    "type" => kind = text(&val, &p)?,
                    "source" => source = Some(text(&val, &p)?),
                    "target" => target = Some(text(&val, &p)?),
                    "read_only" => readonly = boolean(&val, &p)?,
                    "bind" => {
                        for (bk, bv) in mapping_of(Some(&val), &p)? {
                            match bk.as_str() {
                                "create_host_path" => create_host_path = boolean(&bv, &p)?,
                                "propagation" if text(&bv, &p)? == "rprivate" => {}
                                other => return Err(unsupported(other, &p)),
                            }
                        }
                    }
                    "volume" => {
                        for (vk, vv) in mapping_of(Some(&val), &p)? {
                            match vk.as_str() {
                                "nocopy" => nocopy = boolean(&vv, &p)?,
                                other => return Err(unsupported(other, &p)),
                            }
                        }
                    }
                    "tmpfs" => {
                        for (tk, tv) in mapping_of(Some(&val), &p)? {
                            match tk.as_str() {
                                "size" => tmpfs_opts.push(format!("size={}", text(&tv, &p)?)),
                                "mode" => tmpfs_opts.push(format!(
                                    "mode={:o}",
                                    text(&tv, &p)?.parse::<u32>().map_err(|_| {
                                        ComposeError::Invalid(format!("{p}.mode must be a number"))
                                    })?
                                )),
                                other => return Err(unsupported(other, &p)),
                            }
                        }
                    }
                    "consistency" => {}
                    other => return Err(unsupported(other, path)),
                }
            }
            let target =
                target.ok_or_else(|| ComposeError::Invalid(format!("{path}.target is missing")))?;
            let ro = if readonly { ":ro" } else { "" };
            let req = match kind.as_str() {
                "bind" => {
                    let src = source.ok_or_else(|| {
                        ComposeError::Invalid(format!("{path}.source is missing"))
                    })?;
                    let host = ctx.host_path(&src);
                    // A missing source is made only when asked (the short syntax always
                    // makes it), as Compose.
                    let mut m =
                        crate::storage::parse_volume(&format!("{}:{target}{ro}", host.display()));
                    if let Ok(MountRequest {
                        kind: RequestKind::Bind { create, .. },
                        ..
                    }) = &mut m
                    {
                        *create = create_host_path;
                    }
                    m
                }
                "volume" => {
                    let mut spec = match &source {
                        Some(key) => format!("{}:{target}", ctx.volume(key, path)?),
                        None => target.clone(),
                    };
                    let mut opts = Vec::new();
                    if readonly {
                        opts.push("ro");
                    }
                    if nocopy {
                        opts.push("nocopy");
                    }
                    // (An anonymous volume with options is DEST:OPTIONS.)
                    if !opts.is_empty() {
                        spec = format!("{spec}:{}", opts.join(","));
                    }
                    crate::storage::parse_volume(&spec)
                }
                "tmpfs" => {
                    let mut opts = tmpfs_opts;
                    if readonly {
                        opts.push("ro".into());
                    }
                    crate::storage::parse_tmpfs(&if opts.is_empty() {
                        target.clone()
                    } else {
                        format!("{target}:{}", opts.join(","))
                    })
                }
                other => {
                    return Err(ComposeError::Unsupported(format!(
                        "{path}.type {other:?} (Arca takes bind, volume and tmpfs)"
                    )));
                }
            };
            req.map_err(invalid)
        }
        _ => Err(ComposeError::Invalid(format!(
            "{path} must be a string or a mapping"
        ))),
    }
}

fn healthcheck(v: &Value, path: &str) -> Result<HealthConfig, ComposeError> {
    let mut h = HealthConfig::default();
    let mut disable = false;
    for (k, val) in mapping_of(Some(v), path)? {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "test" => {
                h.test = match &val {
                    Value::String(s) => vec!["CMD-SHELL".into(), s.clone()],
                    _ => texts(&val, &p)?,
                };
                if !matches!(
                    h.test.first().map(String::as_str),
                    Some("CMD" | "CMD-SHELL" | "NONE") | None
                ) {
                    return Err(ComposeError::Invalid(format!(
                        "{p} must start with CMD, CMD-SHELL or NONE"
                    )));
                }
            }
            "interval" => h.interval = nanos(duration(&val, &p)?),
            "timeout" => h.timeout = nanos(duration(&val, &p)?),
            "start_period" => h.start_period = nanos(duration(&val, &p)?),
            "start_interval" => h.start_interval = nanos(duration(&val, &p)?),
            "retries" => {
                h.retries = text(&val, &p)?
                    .parse()
                    .map_err(|_| ComposeError::Invalid(format!("{p} must be a number")))?
            }
            "disable" => disable = boolean(&val, &p)?,
            other => return Err(unsupported(other, path)),
        }
    }
    if disable {
        h = HealthConfig {
            test: vec!["NONE".into()],
            ..HealthConfig::default()
        };
    }
    Ok(h)
}

/// A replica count.
fn count(v: &Value, path: &str) -> Result<u32, ComposeError> {
    text(v, path)?
        .parse()
        .ok()
        .filter(|n| *n <= 100)
        .ok_or_else(|| ComposeError::Invalid(format!("{path} must be a count from 0 to 100")))
}

fn deploy(
    v: &Value,
    path: &str,
    o: &mut RunOptions,
    replicas: &mut u32,
    warnings: &mut Vec<String>,
) -> Result<(), ComposeError> {
    for (k, val) in mapping_of(Some(v), path)? {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "replicas" => *replicas = count(&val, &p)?,
            "resources" => {
                for (rk, rv) in mapping_of(Some(&val), &p)? {
                    let rp = format!("{p}.{rk}");
                    match rk.as_str() {
                        "limits" => {
                            for (lk, lv) in mapping_of(Some(&rv), &rp)? {
                                let lp = format!("{rp}.{lk}");
                                match lk.as_str() {
                                    "memory" => o.memory = Some(size(&lv, &lp)?),
                                    "cpus" => o.cpus = Some(cpus(&lv, &lp)?),
                                    "pids" => {
                                        o.pids_limit =
                                            Some(text(&lv, &lp)?.parse().map_err(|_| {
                                                ComposeError::Invalid(format!(
                                                    "{lp} must be a number"
                                                ))
                                            })?)
                                    }
                                    other => return Err(unsupported(other, &rp)),
                                }
                            }
                        }
                        "reservations" => warnings.push(format!(
                            "{rp} is ignored: Arca reserves nothing ahead (limits are kept)"
                        )),
                        other => return Err(unsupported(other, &p)),
                    }
                }
            }
            other => return Err(unsupported(other, path)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::load::{LoadOptions, load};

    fn project(yaml: &str) -> Result<Project, ComposeError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
        let opts = LoadOptions {
            project_name: Some("demo".into()),
            ..LoadOptions::default()
        };
        let l = load(&opts, dir.path())?;
        Project::from_loaded(l)
    }

    const THREE: &str = r#"
x-arca: {isolation: process}
services:
  web:
    image: busybox
    command: httpd -f -p 80 -h /www
    ports: ["8080:80", {target: 81, published: "8081", host_ip: 127.0.0.1, protocol: tcp}]
    volumes: [site:/www, "./conf:/etc/conf:ro", {type: tmpfs, target: /run/x, tmpfs: {size: 1m}}]
    healthcheck: {test: "nc -z 127.0.0.1 80", interval: 1s, retries: 3}
    environment: {A: "1"}
    deploy: {resources: {limits: {memory: 64m, cpus: "0.5"}}}
    networks:
      front: {aliases: [www]}
  client:
    image: busybox
    entrypoint: [sh, -c]
    command: ["while true; do nc web 80; sleep 1; done"]
    depends_on:
      web: {condition: service_healthy}
      job: {condition: service_completed_successfully}
    networks: [front]
    x-arca: {isolation: vm}
  job:
    image: busybox
    command: ["true"]
    restart: "no"
  extra:
    image: busybox
    profiles: [dev]
    scale: 2
networks:
  front: {}
volumes:
  site: {labels: {kind: web}}
"#;

    #[test]
    fn a_three_service_project_reads_into_run_options() {
        let p = project(THREE).unwrap();
        assert_eq!(
            p.order(&["client".into()]).unwrap(),
            ["job", "web", "client"]
        );
        let web = &p.services["web"];
        assert_eq!(web.run.args, ["httpd", "-f", "-p", "80", "-h", "/www"]);
        assert_eq!(web.run.publish.len(), 2);
        assert_eq!(web.run.publish[1].host_port, 8081);
        assert_eq!(web.run.memory, Some(64 << 20));
        assert_eq!(web.run.cpus, Some(0.5));
        assert_eq!(web.run.isolation, Isolation::Process);
        assert_eq!(web.run.env, ["A=1"]);
        assert_eq!(web.run.healthcheck.as_ref().unwrap().test[0], "CMD-SHELL");
        assert!(matches!(
            &web.run.mounts[0].kind,
            RequestKind::Volume { name: Some(n), .. } if n == "demo_site"
        ));
        assert!(web.run.mounts[1].readonly);
        let client = &p.services["client"];
        assert_eq!(client.run.entrypoint.as_deref(), Some("sh"));
        assert_eq!(client.run.args[0], "-c");
        assert_eq!(client.run.isolation, Isolation::Vm);
        assert_eq!(
            client.depends_on["job"].condition,
            Condition::CompletedSuccessfully
        );
        assert_eq!(p.networks["front"].name, "demo_front");
        assert!(
            p.networks.contains_key("default"),
            "job is on the default network"
        );
        assert_eq!(p.volumes["site"].labels["kind"], "web");
        let o = p.run_options(web, "demo-web-1", 1, false);
        assert_eq!(o.network.as_deref(), Some("demo_front"));
        assert_eq!(o.network_aliases, ["web", "www"]);
        assert_eq!(o.labels["com.docker.compose.project"], "demo");
        assert_eq!(o.labels["com.docker.compose.service"], "web");
        assert_eq!(p.container_name(web, 1), "demo-web-1");
        let s = project("services:\n  w:\n    image: x\n    deploy: {replicas: 3}\n").unwrap();
        assert_eq!(
            s.container_names(&s.services["w"]),
            ["demo-w-1", "demo-w-2", "demo-w-3"]
        );
        assert!(
            project("services:\n  w:\n    image: x\n    scale: 2\n    container_name: c\n")
                .is_err()
        );
    }

    #[test]
    fn sysctls_read_as_a_list_or_mapping_under_runs_rule() {
        let p = project(
            "services:\n  a:\n    image: x\n    sysctls: {net.core.somaxconn: 1024, kernel.shmmni: 100}\n  b:\n    image: x\n    sysctls: [net.ipv4.ip_forward=1]\n",
        )
        .unwrap();
        let names = |s: &str| -> Vec<String> {
            p.services[s]
                .run
                .sysctls
                .iter()
                .map(|x| format!("{}={}", x.name, x.value))
                .collect()
        };
        assert_eq!(names("a"), ["net.core.somaxconn=1024", "kernel.shmmni=100"]);
        assert_eq!(names("b"), ["net.ipv4.ip_forward=1"]);
        for bad in [
            "services:\n  a:\n    image: x\n    sysctls: {vm.swappiness: 1}\n",
            "services:\n  a:\n    image: x\n    network_mode: host\n    sysctls: [net.ipv4.ip_forward=1]\n",
        ] {
            let e = project(bad).unwrap_err().to_string();
            assert!(e.contains("services.a.sysctls"), "{e}");
        }
    }

    #[test]
    fn profiles_enable_services() {
        let yaml = "services:\n  app:\n    image: x\n  debug:\n    image: x\n    profiles: [dev]\n";
        let p = project(yaml).unwrap();
        assert_eq!(p.services.keys().collect::<Vec<_>>(), ["app"]);
        assert_eq!(p.disabled["debug"], ["dev"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap();
        for (profiles, targeted) in [
            (vec!["dev"], vec![]),
            (vec!["*"], vec![]),
            (vec![], vec!["debug"]),
        ] {
            let opts = LoadOptions {
                project_name: Some("demo".into()),
                profiles: profiles.iter().map(|s| s.to_string()).collect(),
                targeted: targeted.iter().map(|s| s.to_string()).collect(),
                ..LoadOptions::default()
            };
            let p = Project::from_loaded(load(&opts, dir.path()).unwrap()).unwrap();
            assert_eq!(p.services.len(), 2, "{profiles:?} {targeted:?}");
        }
        let e = project("services:\n  app:\n    image: x\n    depends_on: [db]\n  db:\n    image: x\n    profiles: [data]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "service \"db\" is required by \"app\" but is disabled. Can be enabled by profiles [data]"
        );
    }

    #[test]
    fn refused_and_unknown_keys() {
        let e = project("services:\n  a:\n    image: x\n    secrets: [s]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "services.a key \"secrets\" is not supported by arca compose"
        );
        let p = project("services:\n  a:\n    image: x\n    colour: blue\n").unwrap();
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("services.a.colour is unknown"))
        );
        let p = project("version: '3'\nservices:\n  a:\n    image: x\n").unwrap();
        assert!(p.warnings[0].contains("`version` is obsolete"));
    }

    #[test]
    fn bad_projects_are_named() {
        for (yaml, want) in [
            (
                "services:\n  a:\n    command: x\n",
                "neither an image nor a build context",
            ),
            (
                "services:\n  a:\n    image: x\n    depends_on: [b]\n",
                "depends on undefined service \"b\"",
            ),
            (
                "services:\n  a:\n    image: x\n    volumes: [data:/d]\n",
                "refers to undefined volume data",
            ),
            (
                "services:\n  a:\n    image: x\n    networks: [n]\n",
                "refers to undefined network n",
            ),
            (
                "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
                "dependency cycle detected",
            ),
            (
                "services:\n  a:\n    image: x\n    ports: ['99999:80']\n",
                "services.a.ports[0]",
            ),
            (
                "services:\n  a:\n    image: x\n    healthcheck: {interval: soon}\n",
                "invalid duration",
            ),
            (
                "services:\n  a:\n    image: x\n    network_mode: 'service:b'\n",
                "network_mode",
            ),
            ("services: {}\n", "no service defined"),
        ] {
            let e = project(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    /// What the `compose_file` fuzz target does, over deterministic mutations of a real
    /// file, where cargo-fuzz is missing: no panic.
    #[test]
    fn mutated_files_never_panic() {
        use crate::compose::interpolate::{interpolate, parse_dotenv};
        let env: BTreeMap<String, String> = [("ISO", "process"), ("A", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let pieces: [&[u8]; 14] = [
            b"$",
            b"${",
            b"}",
            b":",
            b"'",
            b"\"",
            b"- ",
            b"[",
            b"]",
            b"\n  ",
            b"\xe2\x82\xac",
            b"&a",
            b"*a",
            b"<<: ",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n.max(1)
        };
        for _ in 0..3000 {
            let mut bytes = THREE.as_bytes().to_vec();
            for _ in 0..1 + next(4) {
                let at = next(bytes.len());
                match next(3) {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => {
                        let piece = pieces[next(pieces.len())];
                        bytes.splice(at..at, piece.iter().copied());
                    }
                    _ => {
                        let set = b" -:${}'\"[]\n";
                        bytes[at] = set[next(set.len())];
                    }
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            let _ = parse_dotenv(&text);
            let lookup = |n: &str| env.get(n).cloned();
            let _ = interpolate(&text, &lookup, &mut Vec::new());
            let Ok(doc) = serde_norway::from_str::<Value>(&text) else {
                continue;
            };
            let loaded = Loaded {
                name: "m".into(),
                dir: "/nonexistent-arca-test".into(),
                files: Vec::new(),
                env: env.clone(),
                doc,
                warnings: Vec::new(),
                profiles: Vec::new(),
                targeted: Vec::new(),
            };
            if let Ok(p) = Project::from_loaded(loaded) {
                for s in p.services.values() {
                    for (n, name) in p.container_names(s).iter().enumerate() {
                        let _ = p.run_options(s, name, n as u32 + 1, false);
                    }
                }
                let _ = p.order(&p.services.keys().cloned().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn words_split_like_a_shell_without_one() {
        assert_eq!(
            split_words(r#"sh -c 'echo "a b"' "x\"y" a\ b"#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "x\"y", "a b"]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert!(split_words("'open").is_none());
    }
}
