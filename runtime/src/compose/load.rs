//! Finding, reading, interpolating and merging a project's Compose files into one
//! YAML document (what `arca compose config` prints and [`super::model`] reads).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::ComposeError;
use super::interpolate::{interpolate, parse_dotenv};

/// The file names looked for in the working directory, in Compose's order.
const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
/// Their override files, merged over them when present.
const OVERRIDE_FILES: [&str; 4] = [
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];
/// The largest Compose or env file read.
const MAX_FILE: u64 = 4 << 20;

/// How the project was named and found (`-f`, `-p`, `--project-directory`,
/// `--env-file`).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f`, in order (`-` is stdin); the default files when empty.
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--project-directory` (the first file's directory when absent).
    pub project_dir: Option<PathBuf>,
    /// `--env-file` (the project directory's `.env` when empty).
    pub env_files: Vec<PathBuf>,
    /// `--profile` (with `COMPOSE_PROFILES`' too).
    pub profiles: Vec<String>,
    /// Services named on the command line (enabled whatever their profiles).
    pub targeted: Vec<String>,
}

/// The project's files read, interpolated and merged.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The project's name.
    pub name: String,
    /// Its directory: relative paths in the files are against it.
    pub dir: PathBuf,
    /// The files, absolute.
    pub files: Vec<PathBuf>,
    /// The variables interpolation saw: this process's environment over the env files.
    pub env: BTreeMap<String, String>,
    /// The merged document.
    pub doc: Value,
    /// What the user should know (unset variables, obsolete keys).
    pub warnings: Vec<String>,
    /// The active profiles: `--profile` and `COMPOSE_PROFILES` (`*`: all).
    pub profiles: Vec<String>,
    /// Services named on the command line.
    pub targeted: Vec<String>,
}

/// Reads the project `opts` names; `cwd` is where default files are looked for.
pub fn load(opts: &LoadOptions, cwd: &Path) -> Result<Loaded, ComposeError> {
    let files = if opts.files.is_empty() {
        // Looked for in the project directory when one is given, as Compose.
        default_files(
            &opts
                .project_dir
                .as_ref()
                .map_or(cwd.to_path_buf(), |d| absolute(cwd, d)),
        )?
    } else {
        opts.files
            .iter()
            .map(|f| {
                if f.as_os_str() == "-" {
                    f.clone()
                } else {
                    absolute(cwd, f)
                }
            })
            .collect()
    };
    let dir = match &opts.project_dir {
        Some(d) => absolute(cwd, d),
        None => match files.first() {
            Some(f) if f.as_os_str() != "-" => {
                f.parent().map_or(cwd.to_path_buf(), Path::to_path_buf)
            }
            _ => cwd.to_path_buf(),
        },
    };
    // Variables: the env files, then this process's environment over them.
    let mut env = BTreeMap::new();
    let env_files: Vec<PathBuf> = if opts.env_files.is_empty() {
        let dotenv = dir.join(".env");
        if dotenv.is_file() {
            vec![dotenv]
        } else {
            Vec::new()
        }
    } else {
        opts.env_files.iter().map(|f| absolute(cwd, f)).collect()
    };
    for f in &env_files {
        let text = read_text(f)?;
        let vars = parse_dotenv(&text)
            .map_err(|e| ComposeError::Invalid(format!("failed to read {}: {e}", f.display())))?;
        for (k, v) in vars {
            if let Some(v) = v {
                env.insert(k, v);
            }
        }
    }
    env.extend(std::env::vars());
    let mut warnings = Vec::new();
    let mut merged: Option<Value> = None;
    for f in &files {
        let text = if f.as_os_str() == "-" {
            read_stdin()?
        } else {
            read_text(f)?
        };
        let mut doc: Value = serde_norway::from_str(&text).map_err(|e| ComposeError::Yaml {
            file: f.display().to_string(),
            source: e,
        })?;
        doc.apply_merge().map_err(|e| ComposeError::Yaml {
            file: f.display().to_string(),
            source: e,
        })?;
        if doc.is_null() {
            doc = Value::Mapping(Mapping::new());
        }
        if !doc.is_mapping() {
            return Err(ComposeError::Invalid(format!(
                "{}: top-level object must be a mapping",
                f.display()
            )));
        }
        let mut unset = Vec::new();
        interpolate_value(&mut doc, &env, &mut unset, "")?;
        for name in unset {
            let w = format!("The {name:?} variable is not set. Defaulting to a blank string.");
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        normalize(&mut doc);
        merged = Some(match merged {
            None => doc,
            Some(mut base) => {
                merge(&mut base, doc, &[]);
                base
            }
        });
    }
    let doc = merged.unwrap_or_else(|| Value::Mapping(Mapping::new()));
    let name = project_name(opts, &env, &doc, &dir)?;
    // COMPOSE_PROFILES when no --profile is given, as Compose.
    let mut profiles = opts.profiles.clone();
    if let Some(p) = env.get("COMPOSE_PROFILES").filter(|_| profiles.is_empty()) {
        profiles.extend(
            p.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string),
        );
    }
    Ok(Loaded {
        name,
        dir,
        files,
        env,
        doc,
        warnings,
        profiles,
        targeted: opts.targeted.clone(),
    })
}

/// The first default file of `cwd` (or of its nearest parent that has one), and its
/// override file.
fn default_files(cwd: &Path) -> Result<Vec<PathBuf>, ComposeError> {
    for dir in cwd.ancestors() {
        if let Some(f) = DEFAULT_FILES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
        {
            let mut files = vec![f];
            if let Some(o) = OVERRIDE_FILES
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
            {
                files.push(o);
            }
            return Ok(files);
        }
    }
    Err(ComposeError::NoFile)
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn read_text(path: &Path) -> Result<String, ComposeError> {
    let what = format!("read {}", path.display());
    let io = |source| ComposeError::Io {
        what: what.clone(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(ComposeError::Invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    read_capped(f, &what, &path.display().to_string())
}

fn read_stdin() -> Result<String, ComposeError> {
    read_capped(
        std::io::stdin(),
        "read the Compose file from stdin",
        "the Compose file on stdin",
    )
}

/// At most [`MAX_FILE`] bytes of text from `from`; more is refused, naming `name`.
fn read_capped(from: impl std::io::Read, what: &str, name: &str) -> Result<String, ComposeError> {
    use std::io::Read;
    let mut text = String::new();
    from.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|source| ComposeError::Io {
            what: what.to_string(),
            source,
        })?;
    if text.len() as u64 > MAX_FILE {
        return Err(ComposeError::Invalid(format!(
            "{name} is larger than {} MiB",
            MAX_FILE >> 20
        )));
    }
    Ok(text)
}

/// Compose's rule for project names.
pub fn valid_project_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `-p`, else `COMPOSE_PROJECT_NAME`, else the file's `name`, else the project
/// directory's name made valid (lower case, other characters dropped), as Compose.
fn project_name(
    opts: &LoadOptions,
    env: &BTreeMap<String, String>,
    doc: &Value,
    dir: &Path,
) -> Result<String, ComposeError> {
    let given = opts
        .project_name
        .clone()
        .or_else(|| {
            env.get("COMPOSE_PROJECT_NAME")
                .filter(|n| !n.is_empty())
                .cloned()
        })
        .or_else(|| doc.get("name").and_then(Value::as_str).map(str::to_string));
    if let Some(name) = given {
        if !valid_project_name(&name) {
            return Err(ComposeError::Invalid(format!(
                "invalid project name {name:?}: must consist only of lowercase alphanumeric characters, hyphens, and underscores as well as start with a letter or number"
            )));
        }
        return Ok(name);
    }
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    let name = name.trim_start_matches(['-', '_']).to_string();
    if name.is_empty() {
        return Err(ComposeError::Invalid(format!(
            "project name must not be empty: the directory {} gives none; use -p",
            dir.display()
        )));
    }
    Ok(name)
}

/// Interpolates every string value (not keys) of `v`; `path` names it in errors.
fn interpolate_value(
    v: &mut Value,
    env: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
    path: &str,
) -> Result<(), ComposeError> {
    match v {
        Value::String(s) => {
            let lookup = |n: &str| env.get(n).cloned();
            *s = interpolate(s, &lookup, unset).map_err(|e| {
                ComposeError::Invalid(format!("{}: {e}", if path.is_empty() { "." } else { path }))
            })?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, env, unset, &format!("{path}[{i}]"))?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = key_text(k);
                let p = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                interpolate_value(item, env, unset, &p)?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, env, unset, path)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A mapping key as text.
pub fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => scalar_text(other).unwrap_or_else(|| format!("{other:?}")),
    }
}

/// A scalar as Compose reads it where text is wanted (`8080`, `true`).
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Short syntaxes written as their long forms, so that files merge key by key:
/// `environment` and `labels` lists become mappings, `depends_on` lists mappings with
/// conditions, `networks` lists mappings, `build` strings mappings, `env_file` strings
/// lists.
fn normalize(doc: &mut Value) {
    let Some(services) = doc.get_mut("services").and_then(Value::as_mapping_mut) else {
        return;
    };
    for (_, service) in services.iter_mut() {
        let Some(s) = service.as_mapping_mut() else {
            continue;
        };
        for key in ["environment", "labels"] {
            if let Some(v) = s.get_mut(key) {
                list_to_map(v, '=');
            }
        }
        if let Some(b) = s.get_mut("build").and_then(|b| b.as_mapping_mut())
            && let Some(args) = b.get_mut("args")
        {
            list_to_map(args, '=');
        }
        if let Some(v) = s.get_mut("depends_on") {
            if let Value::Sequence(items) = v {
                let mut m = Mapping::new();
                for i in items.iter() {
                    let mut cond = Mapping::new();
                    cond.insert("condition".into(), "service_started".into());
                    m.insert(i.clone(), Value::Mapping(cond));
                }
                *v = Value::Mapping(m);
            }
            if let Value::Mapping(m) = v {
                for (_, d) in m.iter_mut() {
                    if d.is_null() {
                        *d = Value::Mapping(Mapping::new());
                    }
                    if let Some(d) = d.as_mapping_mut() {
                        if !d.contains_key("condition") {
                            d.insert("condition".into(), "service_started".into());
                        }
                        if !d.contains_key("required") {
                            d.insert("required".into(), true.into());
                        }
                    }
                }
            }
        }
        if let Some(v) = s.get_mut("networks")
            && let Value::Sequence(items) = v
        {
            let m: Mapping = items.iter().map(|i| (i.clone(), Value::Null)).collect();
            *v = Value::Mapping(m);
        }
        if let Some(v) = s.get_mut("build")
            && let Value::String(ctx) = v
        {
            let mut m = Mapping::new();
            m.insert("context".into(), Value::String(ctx.clone()));
            *v = Value::Mapping(m);
        }
        if let Some(v) = s.get_mut("env_file")
            && v.is_string()
        {
            *v = Value::Sequence(vec![v.clone()]);
        }
    }
}

/// `["A=1", "B"]` as `{A: "1", B: null}`; mapping values that are numbers or booleans
/// become text.
fn list_to_map(v: &mut Value, sep: char) {
    match v {
        Value::Sequence(items) => {
            let mut m = Mapping::new();
            for i in items.iter() {
                let text = scalar_text(i).unwrap_or_default();
                match text.split_once(sep) {
                    Some((k, val)) => m.insert(k.into(), val.into()),
                    None => m.insert(text.into(), Value::Null),
                };
            }
            *v = Value::Mapping(m);
        }
        Value::Mapping(m) => {
            for (_, val) in m.iter_mut() {
                if let Some(t) = scalar_text(val) {
                    *val = Value::String(t);
                }
            }
        }
        _ => {}
    }
}

/// Merges `over` into `base` by Compose's rules: mappings key by key; `command`,
/// `entrypoint` and `healthcheck.test` replaced; a service's `volumes` by target
/// (the later file's mount wins); other sequences appended, without repeats; scalars
/// replaced.
fn merge(base: &mut Value, over: Value, path: &[String]) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                let mut p = path.to_vec();
                p.push(key_text(&k));
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v, &p),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) => {
            let service_key = match path {
                [s, _, key] if s == "services" => Some(key.as_str()),
                [s, _, h, t] if s == "services" && h == "healthcheck" && t == "test" => {
                    Some("healthcheck.test")
                }
                _ => None,
            };
            match service_key {
                Some("command" | "entrypoint" | "healthcheck.test") => *b = o,
                Some("volumes") => {
                    for v in o {
                        let t = mount_target(&v);
                        b.retain(|e| t.is_none() || mount_target(e) != t);
                        b.push(v);
                    }
                }
                _ => {
                    for v in o {
                        if !b.contains(&v) {
                            b.push(v);
                        }
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// A service volume's target, short or long syntax.
fn mount_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [t] => Some(t.to_string()),
                [_, t] | [_, t, _] => Some(t.to_string()),
                _ => None,
            }
        }
        Value::Mapping(m) => m.get("target").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        let mut v: Value = serde_norway::from_str(text).unwrap();
        normalize(&mut v);
        v
    }

    #[test]
    fn short_syntaxes_become_long() {
        let v = yaml(
            "services:\n  web:\n    build: ./app\n    environment: [A=1, B]\n    labels: {n: 3}\n    depends_on: [db]\n    networks: [front]\n    env_file: web.env\n",
        );
        let web = &v["services"]["web"];
        assert_eq!(web["build"]["context"], "./app");
        assert_eq!(web["environment"]["A"], "1");
        assert!(web["environment"]["B"].is_null());
        assert_eq!(web["labels"]["n"], "3");
        assert_eq!(web["depends_on"]["db"]["condition"], "service_started");
        assert_eq!(web["depends_on"]["db"]["required"], true);
        assert!(web["networks"].as_mapping().unwrap().contains_key("front"));
        assert_eq!(web["env_file"][0], "web.env");
    }

    #[test]
    fn files_merge_by_compose_rules() {
        let mut base = yaml(
            "services:\n  web:\n    image: a\n    command: [x, y]\n    ports: ['80']\n    environment: {A: '1', B: '2'}\n    volumes: ['./a:/data', '/cache']\n    healthcheck: {test: [CMD, a], retries: 3}\n",
        );
        let over = yaml(
            "services:\n  web:\n    image: b\n    command: [z]\n    ports: ['80', '443']\n    environment: [B=3]\n    volumes: ['./b:/data']\n    healthcheck: {test: [CMD, b]}\n  db:\n    image: pg\n",
        );
        merge(&mut base, over, &[]);
        let web = &base["services"]["web"];
        assert_eq!(web["image"], "b");
        assert_eq!(web["command"], yaml("[z]"));
        assert_eq!(web["ports"], yaml("['80', '443']"));
        assert_eq!(web["environment"]["A"], "1");
        assert_eq!(web["environment"]["B"], "3");
        assert_eq!(web["volumes"], yaml("['/cache', './b:/data']"));
        assert_eq!(web["healthcheck"]["test"], yaml("[CMD, b]"));
        assert_eq!(web["healthcheck"]["retries"], 3);
        assert_eq!(base["services"]["db"]["image"], "pg");
    }

    #[test]
    fn project_names() {
        let doc = yaml("name: fromfile\n");
        let env = BTreeMap::new();
        let dir = Path::new("/x/My App.1");
        let mut o = LoadOptions::default();
        assert_eq!(project_name(&o, &env, &doc, dir).unwrap(), "fromfile");
        assert_eq!(project_name(&o, &env, &Value::Null, dir).unwrap(), "myapp1");
        o.project_name = Some("Bad Name".into());
        assert!(
            project_name(&o, &env, &doc, dir)
                .unwrap_err()
                .to_string()
                .contains("invalid project name \"Bad Name\"")
        );
        o.project_name = Some("ok-1_x".into());
        assert_eq!(project_name(&o, &env, &doc, dir).unwrap(), "ok-1_x");
    }

    #[test]
    fn loading_interpolates_with_dotenv_and_warns_of_unset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services:\n  web:\n    image: \"busybox:${TAG:-latest}\"\n    ports: [\"${ARCA_TEST_PORT_Q}:80\"]\n    command: echo $$HOME ${ARCA_TEST_UNSET_Q}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".env"), "TAG=1.36\nARCA_TEST_PORT_Q=8081\n").unwrap();
        std::fs::write(
            dir.path().join("compose.override.yaml"),
            "services:\n  web:\n    hostname: h\n",
        )
        .unwrap();
        let l = load(&LoadOptions::default(), dir.path()).unwrap();
        let web = &l.doc["services"]["web"];
        assert_eq!(web["image"], "busybox:1.36");
        assert_eq!(web["ports"][0], "8081:80");
        assert_eq!(web["command"], "echo $HOME ");
        assert_eq!(web["hostname"], "h");
        assert_eq!(l.files.len(), 2);
        assert_eq!(
            l.warnings,
            ["The \"ARCA_TEST_UNSET_Q\" variable is not set. Defaulting to a blank string."]
        );
    }

    #[test]
    fn missing_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("deep");
        std::fs::create_dir(&sub).unwrap();
        // Nothing here or above (a temporary directory's parents have no compose file).
        assert!(matches!(
            load(&LoadOptions::default(), &sub),
            Err(ComposeError::NoFile)
        ));
        std::fs::write(dir.path().join("compose.yaml"), "services: [\n").unwrap();
        let e = load(&LoadOptions::default(), &sub).unwrap_err().to_string();
        assert!(e.contains("compose.yaml"), "{e}");
        std::fs::write(dir.path().join("compose.yaml"), "- a\n").unwrap();
        let e = load(&LoadOptions::default(), &sub).unwrap_err().to_string();
        assert!(e.contains("top-level object must be a mapping"), "{e}");
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services:\n  a:\n    image: ${X:?need X}\n",
        )
        .unwrap();
        let e = load(&LoadOptions::default(), &sub).unwrap_err().to_string();
        assert_eq!(
            e,
            "services.a.image: required variable X is missing a value: need X"
        );
    }
}
