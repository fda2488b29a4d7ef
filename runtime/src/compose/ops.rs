//! The `arca compose` commands over a [`Project`]: containers made, started, stopped
//! and removed with the single-container functions, found again by Compose's labels.
//! Progress goes to stderr as Compose's plain progress (` Container NAME  Started`).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::ComposeError;
use super::model::{Condition, Project, Service};
use crate::container::health::HealthStatus;
use crate::container::lifecycle;
use crate::container::names;
use crate::container::record::{self, ContainerRecord, RecordError, Status};
use crate::image::store::Store;
use crate::logs::{LogEntry, LogReader};
use crate::run::Interrupt;
use crate::{network, volume};

/// The label that names a container's project.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// The label that names a container's service.
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// `True` on `compose run` containers.
pub const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";
/// The digest of the service's definition the container was made from.
pub const HASH_LABEL: &str = "com.docker.compose.config-hash";

fn say(kind: &str, name: &str, what: &str) {
    eprintln!(" {kind} {name}  {what}");
}

/// A container of a project.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its record.
    pub record: ContainerRecord,
    /// Its service (label).
    pub service: String,
    /// Made by `compose run`.
    pub oneoff: bool,
}

/// The containers labelled as `project`'s, oldest first.
pub fn members(state: &Path, project: &str) -> Vec<Member> {
    let mut out: Vec<Member> = record::list(state)
        .into_iter()
        .filter(|r| r.labels.get(PROJECT_LABEL).map(String::as_str) == Some(project))
        .map(|r| Member {
            service: r.labels.get(SERVICE_LABEL).cloned().unwrap_or_default(),
            oneoff: r.labels.get(ONEOFF_LABEL).map(String::as_str) == Some("True"),
            record: r,
        })
        .collect();
    out.reverse();
    out
}

/// The services `names` asks for (all when empty), each checked.
fn selected(p: &Project, names: &[String]) -> Result<Vec<String>, ComposeError> {
    if names.is_empty() {
        return Ok(p.services.keys().cloned().collect());
    }
    for n in names {
        if !p.services.contains_key(n) {
            return Err(ComposeError::NoService(n.clone()));
        }
    }
    Ok(names.to_vec())
}

/// A container by name, if there is one.
fn find(state: &Path, name: &str) -> Result<Option<ContainerRecord>, ComposeError> {
    match record::find(state, name) {
        Ok((_, r)) if r.name == name => Ok(Some(r)),
        Ok(_) | Err(RecordError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `up`'s options.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// `-d`.
    pub detach: bool,
    /// `--build`: build images first even when they exist.
    pub build: bool,
    /// `--no-build`.
    pub no_build: bool,
    /// `--force-recreate`.
    pub force_recreate: bool,
    /// `--no-recreate`.
    pub no_recreate: bool,
    /// `--no-deps`: only the named services, not what they depend on.
    pub no_deps: bool,
    /// `--remove-orphans`.
    pub remove_orphans: bool,
    /// `--wait`: with `-d`, wait until the services run (and are healthy).
    pub wait: bool,
    /// `-t`: seconds `stop` waits when containers are made again or Ctrl-C ends a
    /// foreground `up`.
    pub timeout: Option<u64>,
    /// The services (all when empty).
    pub services: Vec<String>,
}

/// `compose up`: networks, volumes, images, then each service's container in
/// dependency order (each after its dependencies are ready by their condition);
/// in the foreground, their logs until they all exit (Ctrl-C stops them).
pub fn up(state: &Path, p: &Project, o: &UpOptions) -> Result<i32, ComposeError> {
    up_with(state, p, o, Interrupt::install())
}

/// [`up`] with the command's Ctrl-C handler (`run` has one already).
fn up_with(
    state: &Path,
    p: &Project,
    o: &UpOptions,
    interrupt: Option<std::sync::Arc<Interrupt>>,
) -> Result<i32, ComposeError> {
    let wanted = selected(p, &o.services)?;
    let order = if o.no_deps {
        wanted.clone()
    } else {
        p.order(&wanted)?
    };
    orphans(state, p, o.remove_orphans)?;
    ensure_networks(state, p, &order)?;
    ensure_volumes(state, p)?;
    let built = ensure_images(state, p, &order, o.build, o.no_build)?;
    let mut names = Vec::new();
    for name in &order {
        if interrupt.as_deref().is_some_and(Interrupt::interrupted) {
            return Err(ComposeError::Dependency("interrupted".into()));
        }
        let s = &p.services[name];
        if !o.no_deps {
            for (dep, d) in &s.depends_on {
                if p.services.contains_key(dep)
                    && let Err(e) = wait_ready(
                        state,
                        p,
                        &p.services[dep],
                        d.condition,
                        interrupt.as_deref(),
                    )
                {
                    // A foreground `up` stopped by Ctrl-C stops what it started.
                    if !o.detach && interrupt.as_deref().is_some_and(Interrupt::interrupted) {
                        stop_all(state, p, &order, o.timeout)?;
                    }
                    return Err(e);
                }
            }
        }
        for n in 1..=s.replicas {
            names.push(converge(state, p, s, n, o, built.contains(name))?);
        }
        // Replicas beyond the count go (highest first).
        let mut extra: Vec<Member> = members(state, &p.name)
            .into_iter()
            .filter(|m| m.service == *name && !m.oneoff && number(&m.record) > s.replicas)
            .collect();
        extra.sort_by_key(|m| std::cmp::Reverse(number(&m.record)));
        for m in extra {
            remove_container(
                state,
                &m.record.name,
                o.timeout.or(s.run.stop_timeout),
                false,
            )?;
        }
    }
    if o.detach {
        if o.wait {
            for name in &order {
                let s = &p.services[name];
                for cname in p.container_names(s) {
                    // Healthy when it has a check (its own or its image's), else running.
                    let checked = find(state, &cname)?.is_some_and(|r| r.health.is_some());
                    let c = if checked {
                        Condition::Healthy
                    } else {
                        Condition::Running
                    };
                    wait_one(state, s, &cname, c, interrupt.as_deref())?;
                }
            }
        }
        return Ok(0);
    }
    println!("Attaching to {}", names.join(", "));
    let opts = FollowOptions {
        follow: true,
        tail: None,
        timestamps: false,
        prefix: true,
        exits: true,
    };
    follow(state, &names, &opts, interrupt.as_deref())?;
    if interrupt.as_deref().is_some_and(Interrupt::interrupted) {
        eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
        stop_all(state, p, &order, o.timeout)?;
        return Ok(130);
    }
    Ok(0)
}

/// Orphans: containers of the project whose service is no longer in it; removed with
/// `remove`, else a warning names them, as Compose's.
fn orphans(state: &Path, p: &Project, remove: bool) -> Result<(), ComposeError> {
    let orphans: Vec<Member> = members(state, &p.name)
        .into_iter()
        .filter(|m| !p.services.contains_key(&m.service) && !p.disabled.contains_key(&m.service))
        .collect();
    if orphans.is_empty() {
        return Ok(());
    }
    if remove {
        for m in orphans {
            remove_container(state, &m.record.name, None, false)?;
        }
    } else {
        let names: Vec<&str> = orphans.iter().map(|m| m.record.name.as_str()).collect();
        eprintln!(
            "WARN Found orphan containers ({}) for this project. If you removed or renamed this service in your compose file, you can run this command with the --remove-orphans flag to clean it up.",
            names.join(", ")
        );
    }
    Ok(())
}

/// The networks the services use: made when missing; an external one must exist.
fn ensure_networks(state: &Path, p: &Project, order: &[String]) -> Result<(), ComposeError> {
    let mut keys: Vec<&str> = order
        .iter()
        .filter_map(|s| match &p.services[s].network {
            super::model::ServiceNetwork::Project { key, .. } => Some(key.as_str()),
            super::model::ServiceNetwork::Mode(_) => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        let def = &p.networks[key];
        match network::get(state, &def.name) {
            Ok(n) if !def.external => {
                // Compose's checks: a warning for the project label, a refusal for
                // the network label.
                match n.labels.get(PROJECT_LABEL) {
                    Some(owner) if *owner == p.name => {}
                    Some(_) => eprintln!(
                        "WARN[0000] a network with name {} exists but was not created for project \"{}\".\nSet `external: true` to use an existing network",
                        def.name, p.name
                    ),
                    None => eprintln!(
                        "WARN[0000] a network with name {} exists but was not created by compose.\nSet `external: true` to use an existing network",
                        def.name
                    ),
                }
                let label = n
                    .labels
                    .get("com.docker.compose.network")
                    .map_or("", String::as_str);
                if label != key {
                    return Err(ComposeError::Invalid(format!(
                        "network {} was found but has incorrect label com.docker.compose.network set to {label:?} (expected: {key:?})",
                        def.name
                    )));
                }
            }
            Ok(_) => {}
            Err(network::NetworkError::NotFound(_)) if def.external => {
                return Err(ComposeError::Invalid(format!(
                    "network {} declared as external, but could not be found",
                    def.name
                )));
            }
            Err(network::NetworkError::NotFound(_)) => {
                let labels = [
                    (PROJECT_LABEL.to_string(), p.name.clone()),
                    ("com.docker.compose.network".to_string(), key.to_string()),
                ]
                .into_iter()
                .collect();
                network::create_labelled(state, &def.name, def.subnet.as_deref(), labels)?;
                say("Network", &def.name, "Created");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The project's volumes: made when missing (with Compose's labels); an external
/// one must exist.
fn ensure_volumes(state: &Path, p: &Project) -> Result<(), ComposeError> {
    for (key, def) in &p.volumes {
        if def.external {
            if volume::get(state, &def.name).is_err() {
                return Err(ComposeError::Invalid(format!(
                    "external volume \"{}\" not found",
                    def.name
                )));
            }
            continue;
        }
        let mut labels = def.labels.clone();
        labels.insert(PROJECT_LABEL.into(), p.name.clone());
        labels.insert("com.docker.compose.volume".into(), key.clone());
        let lock = volume::lock(state)?;
        let (v, made) = volume::ensure(state, &lock, &def.name, labels, false)?;
        if made {
            say("Volume", &def.name, "Created");
        } else if v.labels.get(PROJECT_LABEL) != Some(&p.name) {
            eprintln!(
                "WARN[0000] volume \"{}\" already exists but was not created by Docker Compose. Use `external: true` to use an existing volume",
                def.name
            );
        }
    }
    Ok(())
}

/// Builds the images of services with `build` that need it (`--build`, a missing
/// image, `pull_policy: build`); returns the services built.
fn ensure_images(
    state: &Path,
    p: &Project,
    order: &[String],
    always: bool,
    never: bool,
) -> Result<HashSet<String>, ComposeError> {
    let store = Store::open(state).map_err(crate::error::RunError::from)?;
    let mut built = HashSet::new();
    for name in order {
        let s = &p.services[name];
        if s.build.is_none() || never {
            continue;
        }
        let missing = store.resolve(&s.image).is_err();
        if always || missing || s.pull_policy == "build" {
            build_service(state, s, false, false)?;
            built.insert(name.clone());
        }
    }
    Ok(built)
}

fn build_service(
    state: &Path,
    s: &Service,
    no_cache: bool,
    pull: bool,
) -> Result<(), ComposeError> {
    use crate::build::builder::{BuildOptions, BuildRequest, build_request};
    let Some(b) = &s.build else {
        return Ok(());
    };
    let req = BuildRequest {
        file: b.dockerfile.as_ref().map(|d| d.display().to_string()),
        context: b.context.display().to_string(),
        opts: BuildOptions {
            tags: vec![s.image.clone()],
            build_args: b.args.clone(),
            target: b.target.clone(),
            no_cache,
            pull,
            isolation: s.run.isolation,
            network: (!rustix::process::geteuid().is_root()).then(|| "none".to_string()),
            quiet: false,
        },
    };
    build_request(state, &req).map_err(|f| ComposeError::Build {
        service: s.name.clone(),
        message: f.message,
    })?;
    say("Service", &s.name, "Built");
    Ok(())
}

/// The service's container as the file says: kept (started if it is not running),
/// made again when its definition or image changed, or made.
fn converge(
    state: &Path,
    p: &Project,
    s: &Service,
    number: u32,
    o: &UpOptions,
    rebuilt: bool,
) -> Result<String, ComposeError> {
    let name = p.container_name(s, number);
    let mut opts = p.run_options(s, &name, number, false);
    if let Some(existing) = find(state, &name)? {
        if existing.labels.get(PROJECT_LABEL) != Some(&p.name) {
            return Err(ComposeError::Invalid(format!(
                "container name {name:?} is already in use by container {} outside project {}",
                names::short(&existing.id),
                p.name
            )));
        }
        // Its image changed (pulled or built again under the same name).
        let image_moved = Store::open(state)
            .ok()
            .and_then(|st| st.resolve(&s.image).ok())
            .is_some_and(|i| i.id != existing.image_id);
        let changed = existing.labels.get(HASH_LABEL) != opts.labels.get(HASH_LABEL)
            || rebuilt
            || image_moved;
        if !(o.force_recreate || changed && !o.no_recreate) {
            if matches!(
                existing.status,
                Status::Running | Status::Starting | Status::Restarting
            ) {
                say("Container", &name, "Running");
            } else {
                crate::run::start(state, &name, false)?;
                say("Container", &name, "Started");
            }
            return Ok(name);
        }
        say("Container", &name, "Recreate");
        // The new container takes over the old one's anonymous volumes, as Compose's,
        // and is made (under a temporary name) before the old one goes: a new one that
        // cannot be made leaves the old one as it was.
        for m in existing.mounts.iter().filter(|m| m.anonymous) {
            if let Some(vol) = &m.name
                && !opts.mounts.iter().any(|r| r.target == m.destination)
            {
                opts.mounts.push(crate::storage::MountRequest {
                    target: m.destination.clone(),
                    kind: crate::storage::RequestKind::Volume {
                        name: Some(vol.clone()),
                        nocopy: true,
                    },
                    readonly: !m.rw,
                });
            }
        }
        let temporary = format!("{}_{name}", names::short(&existing.id));
        opts.name = Some(temporary.clone());
        crate::run::create(state, &opts)?;
        if let Err(e) = remove_container(state, &name, o.timeout.or(s.run.stop_timeout), false) {
            let _ = lifecycle::rm(state, &temporary, true);
            return Err(e);
        }
        lifecycle::rename(state, &temporary, &name)?;
        say("Container", &name, "Recreated");
    } else {
        crate::run::create(state, &opts)?;
        say("Container", &name, "Created");
    }
    crate::run::start(state, &name, false)?;
    say("Container", &name, "Started");
    Ok(name)
}

/// Stops (SIGTERM, then SIGKILL after the grace) and removes a container; with
/// `anonymous` its anonymous volumes too (`down -v`).
fn remove_container(
    state: &Path,
    name: &str,
    grace: Option<u64>,
    anonymous: bool,
) -> Result<(), ComposeError> {
    if find(state, name)?.is_some_and(|r| r.status != Status::Exited && r.status != Status::Created)
    {
        lifecycle::stop(state, name, grace.map(Duration::from_secs))?;
        say("Container", name, "Stopped");
    }
    let removed = lifecycle::rm(state, name, true)?;
    if anonymous {
        volume::remove_anonymous(state, &volume::anonymous_of(&removed.mounts));
    }
    say("Container", name, "Removed");
    Ok(())
}

/// The containers of `service` (not one-off ones), lowest number first: every replica
/// there is, whatever the count in the file says now.
fn service_members(state: &Path, p: &Project, service: &str) -> Vec<String> {
    let mut found: Vec<Member> = members(state, &p.name)
        .into_iter()
        .filter(|m| !m.oneoff && m.service == service)
        .collect();
    found.sort_by_key(|m| number(&m.record));
    found.into_iter().map(|m| m.record.name).collect()
}

/// A container's number among its service's replicas (its label; 1 when absent).
fn number(r: &ContainerRecord) -> u32 {
    r.labels
        .get("com.docker.compose.container-number")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Waits until each of `s`'s containers meets `c`.
fn wait_ready(
    state: &Path,
    p: &Project,
    s: &Service,
    c: Condition,
    interrupt: Option<&Interrupt>,
) -> Result<(), ComposeError> {
    for name in p.container_names(s) {
        wait_one(state, s, &name, c, interrupt)?;
    }
    Ok(())
}

/// Waits until the container `name` of `s` meets `c`.
fn wait_one(
    state: &Path,
    s: &Service,
    name: &str,
    c: Condition,
    interrupt: Option<&Interrupt>,
) -> Result<(), ComposeError> {
    let name = name.to_string();
    let mut said = false;
    loop {
        if interrupt.is_some_and(Interrupt::interrupted) {
            return Err(ComposeError::Dependency("interrupted".into()));
        }
        let r = find(state, &name)?.ok_or_else(|| {
            ComposeError::Dependency(format!(
                "dependency failed to start: container {name} not found"
            ))
        })?;
        let running = r.status == Status::Running;
        // Exited, or exited and about to restart by its policy: not coming up now.
        let down = r.status == Status::Exited
            || r.status == Status::Restarting && r.exit_code.is_some_and(|c| c != 0);
        match c {
            Condition::Started => return Ok(()),
            Condition::Running if running => return Ok(()),
            Condition::Running if down => {
                return Err(ComposeError::Dependency(format!(
                    "container {name} exited ({})",
                    r.exit_code.unwrap_or(-1)
                )));
            }
            Condition::Running => {}
            Condition::Healthy => match r.health {
                Some(HealthStatus::Healthy) if running => {
                    say("Container", &name, "Healthy");
                    return Ok(());
                }
                Some(HealthStatus::Unhealthy) if running => {
                    return Err(ComposeError::Dependency(format!(
                        "dependency failed to start: container {name} is unhealthy"
                    )));
                }
                None if running => {
                    return Err(ComposeError::Dependency(format!(
                        "dependency failed to start: container {name} has no healthcheck configured"
                    )));
                }
                _ if down => {
                    return Err(ComposeError::Dependency(format!(
                        "dependency failed to start: container {name} exited ({})",
                        r.exit_code.unwrap_or(-1)
                    )));
                }
                _ => {}
            },
            Condition::CompletedSuccessfully => {
                if r.status == Status::Restarting && down {
                    return Err(ComposeError::Dependency(format!(
                        "service {:?} didn't complete successfully: exit {}",
                        s.name,
                        r.exit_code.unwrap_or(-1)
                    )));
                }
                if r.status == Status::Exited {
                    let code = r.exit_code.unwrap_or(-1);
                    if code != 0 {
                        return Err(ComposeError::Dependency(format!(
                            "service {:?} didn't complete successfully: exit {code}",
                            s.name
                        )));
                    }
                    say("Container", &name, "Exited");
                    return Ok(());
                }
            }
        }
        if !said {
            say("Container", &name, "Waiting");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the services' containers, dependents first.
fn stop_all(
    state: &Path,
    p: &Project,
    order: &[String],
    timeout: Option<u64>,
) -> Result<(), ComposeError> {
    for name in order.iter().rev() {
        let s = &p.services[name];
        for cname in service_members(state, p, name).into_iter().rev() {
            if let Some(r) = find(state, &cname)?
                && matches!(
                    r.status,
                    Status::Running | Status::Starting | Status::Restarting
                )
            {
                lifecycle::stop(
                    state,
                    &cname,
                    timeout.or(s.run.stop_timeout).map(Duration::from_secs),
                )?;
                say("Container", &cname, "Stopped");
            }
        }
    }
    Ok(())
}

/// `down`'s options.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownOptions {
    /// `-v`: the project's named volumes and the containers' anonymous ones too.
    pub volumes: bool,
    /// `--remove-orphans`.
    pub remove_orphans: bool,
    /// `-t`.
    pub timeout: Option<u64>,
}

/// `compose down`: the project's containers (dependents first), then its networks,
/// and with `-v` its volumes. External networks and volumes stay.
pub fn down(state: &Path, p: &Project, o: DownOptions) -> Result<(), ComposeError> {
    let order = p.order(&p.services.keys().cloned().collect::<Vec<_>>())?;
    let all = members(state, &p.name);
    let mut failed = None;
    // One-off containers and orphans first, then services, dependents first.
    let rank = |m: &Member| {
        if m.oneoff {
            0
        } else {
            match order.iter().position(|s| *s == m.service) {
                Some(i) => 1 + order.len() - i,
                None => 0,
            }
        }
    };
    let mut doomed: Vec<&Member> = all
        .iter()
        .filter(|m| {
            o.remove_orphans
                || m.oneoff
                || p.services.contains_key(&m.service)
                || p.disabled.contains_key(&m.service)
        })
        .collect();
    doomed.sort_by_key(|m| rank(m));
    let kept: Vec<&str> = all
        .iter()
        .filter(|m| !doomed.iter().any(|d| d.record.id == m.record.id))
        .map(|m| m.record.name.as_str())
        .collect();
    if !kept.is_empty() {
        eprintln!(
            "WARN Found orphan containers ({}) for this project. If you removed or renamed this service in your compose file, you can run this command with the --remove-orphans flag to clean it up.",
            kept.join(", ")
        );
    }
    for m in doomed {
        let grace = o
            .timeout
            .or_else(|| p.services.get(&m.service).and_then(|s| s.run.stop_timeout));
        if let Err(e) = remove_container(state, &m.record.name, grace, o.volumes) {
            eprintln!("arca compose: {}", crate::error_chain(&e));
            failed.get_or_insert(e);
        }
    }
    network::reconcile(state);
    // The networks this project made (by their label: disabled services' too; one of
    // the same name made otherwise, or by another project, stays).
    let ours: Vec<network::Network> = network::list(state)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.labels.get(PROJECT_LABEL) == Some(&p.name))
        .collect();
    for def in &ours {
        match network::remove(state, &def.name) {
            Ok(()) => say("Network", &def.name, "Removed"),
            Err(network::NetworkError::NotFound(_)) => {}
            Err(e) => {
                eprintln!("arca compose: {}", crate::error_chain(&e));
                failed.get_or_insert(e.into());
            }
        }
    }
    if o.volumes {
        // Only volumes this project made (a volume of the same name made otherwise
        // stays, as it would were it external).
        let ours = |name: &str| {
            volume::get(state, name).is_ok_and(|v| v.labels.get(PROJECT_LABEL) == Some(&p.name))
        };
        for def in p.volumes.values().filter(|v| !v.external && ours(&v.name)) {
            match volume::remove(state, &def.name) {
                Ok(()) => say("Volume", &def.name, "Removed"),
                Err(volume::VolumeError::NotFound(_)) => {}
                Err(e) => {
                    eprintln!("arca compose: {}", crate::error_chain(&e));
                    failed.get_or_insert(e.into());
                }
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// `ps`'s options.
#[derive(Debug, Clone, Default)]
pub struct PsOptions {
    /// `-a`: stopped containers too.
    pub all: bool,
    /// `-q`: IDs only.
    pub quiet: bool,
    /// `--services`: service names only.
    pub services: bool,
    /// The services (all when empty).
    pub only: Vec<String>,
}

/// `compose ps`: the project's containers (not one-off ones), Compose's columns, by
/// service.
pub fn ps(state: &Path, p: &Project, o: &PsOptions) -> Result<String, ComposeError> {
    let only = selected(p, &o.only)?;
    lifecycle::reap_crashed(state);
    // Every container of the project (disabled services' too) unless services are
    // named.
    let mut rows: Vec<Member> = members(state, &p.name)
        .into_iter()
        .filter(|m| !m.oneoff && (o.only.is_empty() || only.contains(&m.service)))
        .filter(|m| {
            o.all
                || matches!(
                    m.record.status,
                    Status::Running | Status::Starting | Status::Restarting
                )
        })
        .collect();
    // By service, then name, as Compose's.
    rows.sort_by(|a, b| (&a.service, &a.record.name).cmp(&(&b.service, &b.record.name)));
    let mut out = String::new();
    if o.services {
        let mut seen = Vec::new();
        for m in &rows {
            if !seen.contains(&m.service) {
                seen.push(m.service.clone());
                out.push_str(&format!("{}\n", m.service));
            }
        }
        return Ok(out);
    }
    if o.quiet {
        for m in &rows {
            out.push_str(&format!("{}\n", m.record.id));
        }
        return Ok(out);
    }
    let at = crate::now();
    let mut table = vec![[
        "NAME".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "SERVICE".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
    ]];
    for m in &rows {
        let v = crate::container::view::ps_row(&m.record, at, false, None);
        let f = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        table.push([
            f("Names"),
            f("Image"),
            f("Command"),
            m.service.clone(),
            f("RunningFor"),
            f("Status"),
            f("Ports"),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in &table {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i == 6 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// How logs are shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct FollowOptions {
    /// `-f`: until the containers exit.
    pub follow: bool,
    /// `--tail N`: the last N lines of each container first.
    pub tail: Option<usize>,
    /// `-t`.
    pub timestamps: bool,
    /// Each line after its container's name and ` | ` (`--no-log-prefix` drops it).
    pub prefix: bool,
    /// Say when each container exits (`up`).
    pub exits: bool,
}

/// `compose logs`: the services' containers' logs, interleaved by time.
pub fn logs(
    state: &Path,
    p: &Project,
    services: &[String],
    o: &FollowOptions,
) -> Result<i32, ComposeError> {
    let only = selected(p, services)?;
    let names: Vec<String> = members(state, &p.name)
        .into_iter()
        .filter(|m| !m.oneoff && (services.is_empty() || only.contains(&m.service)))
        .map(|m| m.record.name)
        .collect();
    let interrupt = if o.follow { Interrupt::install() } else { None };
    follow(state, &names, o, interrupt.as_deref())?;
    Ok(0)
}

/// Shows the logs of the containers `names` (stdout and stderr, both to stdout as
/// Compose's), following them with `o.follow` until they have all exited.
fn follow(
    state: &Path,
    names: &[String],
    o: &FollowOptions,
    interrupt: Option<&Interrupt>,
) -> Result<(), ComposeError> {
    struct Tracked {
        name: String,
        dir: std::path::PathBuf,
        readers: [LogReader; 2],
        exited: bool,
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut tracked = Vec::new();
    for n in names {
        let (dir, _) = record::find(state, n)?;
        tracked.push(Tracked {
            name: n.clone(),
            readers: [
                LogReader::open(&dir.join("stdout.log")),
                LogReader::open(&dir.join("stderr.log")),
            ],
            dir,
            exited: false,
        });
    }
    let mut first = true;
    loop {
        let mut entries: Vec<(usize, LogEntry)> = Vec::new();
        let mut any = false;
        for (i, t) in tracked.iter_mut().enumerate() {
            let mut mine = Vec::new();
            for r in t.readers.iter_mut() {
                any |= r.drain(&mut mine).unwrap_or(false);
            }
            mine.sort_by_key(|e| e.time);
            if first && let Some(n) = o.tail {
                mine.drain(..mine.len().saturating_sub(n));
            }
            entries.extend(mine.into_iter().map(|e| (i, e)));
        }
        first = false;
        entries.sort_by_key(|(_, e)| e.time);
        let mut out = std::io::stdout().lock();
        for (i, e) in &entries {
            let mut bytes = Vec::new();
            if o.prefix {
                bytes.extend_from_slice(format!("{:<width$} | ", tracked[*i].name).as_bytes());
            }
            if o.timestamps {
                bytes.extend_from_slice(crate::rfc3339_nanos(e.time.0, e.time.1).as_bytes());
                bytes.push(b' ');
            }
            bytes.extend_from_slice(&e.output());
            if out.write_all(&bytes).is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        drop(out);
        if !o.follow || interrupt.is_some_and(Interrupt::interrupted) {
            return Ok(());
        }
        let mut all_done = true;
        for t in tracked.iter_mut() {
            let r = ContainerRecord::observe(&t.dir).ok();
            let done = r.as_ref().is_none_or(|r| r.status == Status::Exited);
            if done && !t.exited && !any {
                t.exited = true;
                if o.exits {
                    let code = r.and_then(|r| r.exit_code).unwrap_or(-1);
                    println!("{} exited with code {code}", t.name);
                }
            }
            all_done &= t.exited;
        }
        if all_done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The container of `service` numbered `index` (1).
fn container_of(
    state: &Path,
    p: &Project,
    service: &str,
    index: u32,
) -> Result<String, ComposeError> {
    let s = p
        .services
        .get(service)
        .ok_or_else(|| ComposeError::NoService(service.to_string()))?;
    if index == 0 || index > s.replicas.max(1) || s.container_name.is_some() && index > 1 {
        return Err(ComposeError::Invalid(format!(
            "service {service:?} is not running container #{index}"
        )));
    }
    let name = p.container_name(s, index);
    match find(state, &name)? {
        Some(r) if matches!(r.status, Status::Running | Status::Starting) => Ok(name),
        _ if index > 1 => Err(ComposeError::Invalid(format!(
            "service {service:?} is not running container #{index}"
        ))),
        _ => Err(ComposeError::Invalid(format!(
            "service {service:?} is not running"
        ))),
    }
}

/// `compose exec SERVICE COMMAND`: in the service's running container.
pub fn exec(
    state: &Path,
    p: &Project,
    service: &str,
    index: u32,
    process: arca_protocol::ProcessSpec,
) -> Result<i32, ComposeError> {
    let name = container_of(state, p, service, index)?;
    Ok(crate::exec::exec(state, &name, process)?)
}

/// `compose run`'s options.
#[derive(Debug, Clone, Default)]
pub struct RunOneOff {
    /// `--rm`.
    pub rm: bool,
    /// `-d`.
    pub detach: bool,
    /// `--name`.
    pub name: Option<String>,
    /// `--entrypoint`.
    pub entrypoint: Option<String>,
    /// `-e`.
    pub env: Vec<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-T` (no terminal) unless false, and stdin a terminal.
    pub tty: bool,
    /// `-i` (Compose's default: on).
    pub interactive: bool,
    /// `--no-deps`.
    pub no_deps: bool,
    /// `--service-ports`: publish the service's ports (not published otherwise).
    pub service_ports: bool,
    /// `-p`.
    pub publish: Vec<crate::ports::PortMapping>,
    /// `-v`.
    pub mounts: Vec<crate::storage::MountRequest>,
    /// The command (the service's when empty).
    pub command: Vec<String>,
}

/// `compose run SERVICE [COMMAND]`: a one-off container of the service (its
/// dependencies started first), in the foreground; returns its exit code.
pub fn run(state: &Path, p: &Project, service: &str, o: &RunOneOff) -> Result<i32, ComposeError> {
    let s = p
        .services
        .get(service)
        .ok_or_else(|| ComposeError::NoService(service.to_string()))?;
    ensure_networks(state, p, &[service.to_string()])?;
    ensure_volumes(state, p)?;
    let deps: Vec<String> = s
        .depends_on
        .keys()
        .filter(|d| p.services.contains_key(*d))
        .cloned()
        .collect();
    if !o.no_deps && !deps.is_empty() {
        let interrupt = Interrupt::install();
        up_with(
            state,
            p,
            &UpOptions {
                detach: true,
                services: deps,
                ..UpOptions::default()
            },
            interrupt.clone(),
        )?;
        for (dep, d) in &s.depends_on {
            if let Some(ds) = p.services.get(dep) {
                wait_ready(state, p, ds, d.condition, interrupt.as_deref())?;
            }
        }
    }
    ensure_images(state, p, &[service.to_string()], false, false)?;
    let name = o
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}-run-{}", p.name, s.name, &names::new_id()[..12]));
    let mut opts = p.run_options(s, &name, 1, true);
    opts.detach = o.detach;
    opts.rm = o.rm;
    // A one-off command runs once, whatever the service's policy (as Compose's).
    opts.restart = Default::default();
    opts.tty = o.tty;
    opts.interactive = o.interactive;
    if !o.command.is_empty() {
        opts.args = o.command.clone();
    }
    if let Some(e) = &o.entrypoint {
        opts.entrypoint = Some(e.clone());
        if o.command.is_empty() {
            opts.args = Vec::new();
        }
    }
    opts.env.extend(o.env.iter().cloned());
    if o.user.is_some() {
        opts.user = o.user.clone();
    }
    if o.workdir.is_some() {
        opts.workdir = o.workdir.clone();
    }
    if !o.service_ports {
        opts.publish.clear();
    }
    opts.publish.extend(o.publish.iter().cloned());
    opts.mounts.extend(o.mounts.iter().cloned());
    Ok(crate::run::run(state, &opts)?)
}

/// `compose start [SERVICE...]`: their existing containers, dependencies first.
pub fn start(state: &Path, p: &Project, services: &[String]) -> Result<(), ComposeError> {
    let order = p.order(&selected(p, services)?)?;
    for name in &order {
        // As Compose's start: its dependencies' conditions first (a one-shot job it
        // started again has completed before its dependents start).
        for (dep, d) in &p.services[name].depends_on {
            if let Some(ds) = p.services.get(dep) {
                wait_ready(state, p, ds, d.condition, None)?;
            }
        }
        let mut any = false;
        for cname in service_members(state, p, name) {
            crate::run::start(state, &cname, false)?;
            say("Container", &cname, "Started");
            any = true;
        }
        if !any && services.contains(name) {
            return Err(ComposeError::Invalid(format!(
                "service {name:?} has no container to start"
            )));
        }
    }
    Ok(())
}

/// `compose stop [SERVICE...]`: dependents first.
pub fn stop(
    state: &Path,
    p: &Project,
    services: &[String],
    timeout: Option<u64>,
) -> Result<(), ComposeError> {
    let order = p.order(&selected(p, services)?)?;
    let order: Vec<String> = order
        .into_iter()
        .filter(|s| services.is_empty() || services.contains(s))
        .collect();
    stop_all(state, p, &order, timeout)
}

/// `compose restart [SERVICE...]`.
pub fn restart(
    state: &Path,
    p: &Project,
    services: &[String],
    timeout: Option<u64>,
) -> Result<(), ComposeError> {
    let order = p.order(&selected(p, services)?)?;
    for name in order
        .iter()
        .filter(|s| services.is_empty() || services.contains(s))
    {
        let s = &p.services[name];
        for cname in service_members(state, p, name) {
            crate::run::restart(
                state,
                &cname,
                timeout.or(s.run.stop_timeout).map(Duration::from_secs),
            )?;
            say("Container", &cname, "Started");
        }
    }
    Ok(())
}

/// `compose build [SERVICE...]`.
pub fn build(
    state: &Path,
    p: &Project,
    services: &[String],
    no_cache: bool,
    pull: bool,
) -> Result<(), ComposeError> {
    for name in selected(p, services)? {
        build_service(state, &p.services[&name], no_cache, pull)?;
    }
    Ok(())
}

/// `compose pull [SERVICE...]`: the images of services without `build` (whose images
/// `build` and `up` make).
pub fn pull(
    state: &Path,
    p: &Project,
    services: &[String],
    quiet: bool,
) -> Result<(), ComposeError> {
    let store = Store::open(state).map_err(crate::error::RunError::from)?;
    let mut done: BTreeMap<String, ()> = BTreeMap::new();
    for name in selected(p, services)? {
        let s = &p.services[&name];
        // Built here, not pulled (as `compose pull --ignore-buildable`).
        if s.build.is_some() || s.pull_policy == "build" {
            continue;
        }
        if done.insert(s.image.clone(), ()).is_some() {
            continue;
        }
        let tty = !quiet && rustix::termios::isatty(std::io::stderr());
        crate::image::pull::pull(&store, &s.image, false, tty)
            .map_err(|e| ComposeError::Run(e.into()))?;
        if !quiet {
            say("Image", &s.image, "Pulled");
        }
    }
    Ok(())
}

/// `compose config`: the resolved project as YAML (its name first).
pub fn config(p: &Project) -> Result<String, ComposeError> {
    let mut doc = serde_norway::Mapping::new();
    doc.insert("name".into(), p.name.clone().into());
    if let Some(m) = p.doc.as_mapping() {
        for (k, v) in m {
            match k.as_str() {
                Some("name") => {}
                // Disabled services (their profiles not active) are not part of it.
                Some("services") => {
                    let mut services = v.clone();
                    if let Some(sm) = services.as_mapping_mut() {
                        sm.retain(|name, _| {
                            name.as_str().is_some_and(|n| p.services.contains_key(n))
                        });
                    }
                    doc.insert(k.clone(), services);
                }
                _ => {
                    doc.insert(k.clone(), v.clone());
                }
            }
        }
    }
    serde_norway::to_string(&doc).map_err(|e| ComposeError::Yaml {
        file: "the resolved project".into(),
        source: e,
    })
}
