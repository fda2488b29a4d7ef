//! Container identity: a 64-hex ID (its first 12 digits, the short ID, name its
//! directory and are its default hostname), a unique name (given with `--name` or
//! generated Docker-style as `adjective_scientist`), reserved as a symbolic link
//! `<state>/names/<name>` -> `../containers/<short id>`. Making the link is what
//! reserves a name, so two CLIs cannot take the same one; `rename` makes the new link
//! before it removes the old.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors reserving or releasing a name.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// Another container has it.
    #[error(
        "Conflict. The container name \"/{0}\" is already in use by another container. You have to remove (or rename) that container to be able to reuse that name."
    )]
    InUse(String),
    /// Not a name Docker allows.
    #[error("Invalid container name ({0}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    Invalid(String),
    /// The link could not be made or removed.
    #[error("Cannot {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a name given with `--name` or to `rename` (Docker's rule; at most 128
/// characters, so it fits a file name and the agent's container IDs).
pub fn validate(name: &str) -> Result<(), NameError> {
    let n = name.strip_prefix('/').unwrap_or(name);
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Invalid(name.into()))
    }
}

/// A new random 64-hex container ID.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        // Only a broken host lacks /dev/urandom; an ID from the clock and pid still
        // differs from every other one made here.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        eprintln!("arca: warning: /dev/urandom: {e}");
        bytes[..16].copy_from_slice(&t.to_le_bytes());
        bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 12 digits of an ID (an ID shorter than that, from a record made before
/// IDs existed, is its own short form).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Whether `s` could be (a prefix of) a container ID.
pub fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<state>/containers`: one directory per container, named by its short ID.
pub fn containers_dir(state: &Path) -> PathBuf {
    state.join("containers")
}

/// The file in a container's directory that holds its name (only `rename` rewrites it).
pub const NAME_FILE: &str = "name";

/// `<state>/names`.
pub fn names_dir(state: &Path) -> PathBuf {
    state.join("names")
}

/// The container directory name `name` is reserved for, if any (a link whose
/// container directory is gone counts as free).
pub fn lookup(state: &Path, name: &str) -> Option<String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let target = std::fs::read_link(names_dir(state).join(name)).ok()?;
    let key = target.file_name()?.to_str()?.to_string();
    containers_dir(state).join(&key).is_dir().then_some(key)
}

/// The names container `key` answers to on its networks: its name and its short ID.
pub fn host_names(state: &Path, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(name) = std::fs::read_to_string(containers_dir(state).join(key).join(NAME_FILE)) {
        out.push(name.trim().to_string());
    }
    if !out.iter().any(|n| n == key) {
        out.push(key.to_string());
    }
    out
}

/// Reserves `name` for the container whose directory is `key`.
pub fn reserve(state: &Path, name: &str, key: &str) -> Result<(), NameError> {
    let dir = names_dir(state);
    std::fs::create_dir_all(&dir).map_err(|source| NameError::Io {
        action: format!("create {}", dir.display()),
        source,
    })?;
    // One reservation at a time: taking over a stale link (check, remove, link) must
    // not race another CLI doing the same. Names never start with '.', so the lock
    // file is no name.
    let _lock = crate::state::lock_file(
        &dir.join(".lock"),
        rustix::fs::FlockOperation::LockExclusive,
    )
    .map_err(|(what, source)| NameError::Io {
        action: format!("{what} the names' lock"),
        source,
    })?;
    // A record made before names had links holds its name by its directory.
    if name != key
        && containers_dir(state)
            .join(name)
            .join("state.json")
            .is_file()
    {
        return Err(NameError::InUse(name.into()));
    }
    let link = dir.join(name);
    let target = Path::new("../containers").join(key);
    for _ in 0..2 {
        match std::os::unix::fs::symlink(&target, &link) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if lookup(state, name).is_some() {
                    return Err(NameError::InUse(name.into()));
                }
                // Left by a container whose removal was cut short.
                let _ = std::fs::remove_file(&link);
            }
            Err(source) => {
                return Err(NameError::Io {
                    action: format!("reserve the name {name}"),
                    source,
                });
            }
        }
    }
    Err(NameError::InUse(name.into()))
}

/// Gives `name` back, if it is still the container `key`'s.
pub fn release(state: &Path, name: &str, key: &str) {
    let link = names_dir(state).join(name);
    if std::fs::read_link(&link).is_ok_and(|t| t.file_name().is_some_and(|f| f == key)) {
        let _ = std::fs::remove_file(link);
    }
}

/// Reserves a generated name (`adjective_scientist`, as Docker makes them) for the
/// container `key`: after a few taken ones, a digit is added, as Docker does.
pub fn reserve_generated(state: &Path, key: &str) -> Result<String, NameError> {
    let mut seed = u64::from_str_radix(short(key), 16).unwrap_or(0x9e37_79b9);
    for attempt in 0..64u32 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let (a, b) = ((seed >> 33) as usize, (seed >> 17) as usize);
        let mut name = format!(
            "{}_{}",
            ADJECTIVES[a % ADJECTIVES.len()],
            SCIENTISTS[b % SCIENTISTS.len()]
        );
        if attempt >= 3 {
            name.push_str(&(seed % 10).to_string());
        }
        match reserve(state, &name, key) {
            Ok(()) => return Ok(name),
            Err(NameError::InUse(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    // 64 taken in a row: the container is still reachable by its short ID.
    let name = format!("arca_{}", short(key));
    reserve(state, &name, key).map(|()| name)
}

const ADJECTIVES: &[&str] = &[
    "admiring",
    "adoring",
    "affectionate",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "beautiful",
    "blissful",
    "bold",
    "brave",
    "busy",
    "charming",
    "clever",
    "compassionate",
    "competent",
    "confident",
    "cool",
    "cranky",
    "crazy",
    "dazzling",
    "determined",
    "distracted",
    "dreamy",
    "eager",
    "ecstatic",
    "elastic",
    "elated",
    "elegant",
    "eloquent",
    "epic",
    "exciting",
    "fervent",
    "festive",
    "flamboyant",
    "focused",
    "friendly",
    "frosty",
    "funny",
    "gallant",
    "gifted",
    "goofy",
    "gracious",
    "great",
    "happy",
    "hardcore",
    "heuristic",
    "hopeful",
    "hungry",
    "infallible",
    "inspiring",
    "intelligent",
    "interesting",
    "jolly",
    "jovial",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "musing",
    "mystifying",
    "naughty",
    "nervous",
    "nice",
    "nifty",
    "nostalgic",
    "objective",
    "optimistic",
    "peaceful",
    "pedantic",
    "pensive",
    "practical",
    "priceless",
    "quirky",
    "quizzical",
    "relaxed",
    "reverent",
    "romantic",
    "sad",
    "serene",
    "sharp",
    "silly",
    "sleepy",
    "stoic",
    "strange",
    "stupefied",
    "suspicious",
    "sweet",
    "tender",
    "thirsty",
    "trusting",
    "unruffled",
    "upbeat",
    "vibrant",
    "vigilant",
    "vigorous",
    "wizardly",
    "wonderful",
    "xenodochial",
    "youthful",
    "zealous",
    "zen",
];

const SCIENTISTS: &[&str] = &[
    "agnesi",
    "albattani",
    "allen",
    "archimedes",
    "babbage",
    "banach",
    "bardeen",
    "bartik",
    "bell",
    "bhabha",
    "blackwell",
    "bohr",
    "booth",
    "borg",
    "bose",
    "brahmagupta",
    "brattain",
    "burnell",
    "cannon",
    "carson",
    "cartwright",
    "cerf",
    "chandrasekhar",
    "chaum",
    "clarke",
    "colden",
    "cori",
    "cray",
    "curie",
    "darwin",
    "davinci",
    "dijkstra",
    "dirac",
    "easley",
    "einstein",
    "elion",
    "engelbart",
    "euclid",
    "euler",
    "faraday",
    "fermat",
    "fermi",
    "feynman",
    "franklin",
    "galileo",
    "gauss",
    "goldberg",
    "goodall",
    "hamilton",
    "hawking",
    "heisenberg",
    "hertz",
    "hodgkin",
    "hopper",
    "hypatia",
    "jackson",
    "jang",
    "jepsen",
    "johnson",
    "joliot",
    "kalam",
    "keller",
    "kepler",
    "khorana",
    "kilby",
    "knuth",
    "kowalevski",
    "lamarr",
    "lamport",
    "leakey",
    "leavitt",
    "lederberg",
    "lehmann",
    "liskov",
    "lovelace",
    "lumiere",
    "mayer",
    "mccarthy",
    "mcclintock",
    "meitner",
    "mendel",
    "merkle",
    "mirzakhani",
    "montalcini",
    "morse",
    "napier",
    "newton",
    "nobel",
    "noether",
    "noyce",
    "pare",
    "pascal",
    "pasteur",
    "payne",
    "perlman",
    "pike",
    "poincare",
    "ptolemy",
    "raman",
    "ramanujan",
    "ride",
    "ritchie",
    "rosalind",
    "sammet",
    "shamir",
    "shannon",
    "shaw",
    "sinoussi",
    "snyder",
    "spence",
    "stonebraker",
    "swanson",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "varahamihira",
    "villani",
    "wescoff",
    "wiles",
    "williams",
    "wilson",
    "wozniak",
    "wright",
    "yalow",
    "yonath",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 64);
        assert!(is_hex(&a));
        assert_ne!(a, b);
        assert_eq!(short(&a).len(), 12);
        assert_eq!(short("old-name"), "old-name");
    }

    #[test]
    fn names_are_reserved_once_and_stale_links_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let containers = super::containers_dir(state);
        std::fs::create_dir_all(containers.join("aaaaaaaaaaaa")).unwrap();
        std::fs::create_dir_all(containers.join("bbbbbbbbbbbb")).unwrap();
        reserve(state, "web", "aaaaaaaaaaaa").unwrap();
        assert!(matches!(
            reserve(state, "web", "bbbbbbbbbbbb"),
            Err(NameError::InUse(n)) if n == "web"
        ));
        assert_eq!(lookup(state, "web").as_deref(), Some("aaaaaaaaaaaa"));
        // Another container's release leaves the name alone.
        release(state, "web", "bbbbbbbbbbbb");
        assert!(lookup(state, "web").is_some());
        // A link to a removed container is free again.
        std::fs::remove_dir(containers.join("aaaaaaaaaaaa")).unwrap();
        assert_eq!(lookup(state, "web"), None);
        reserve(state, "web", "bbbbbbbbbbbb").unwrap();
        assert_eq!(lookup(state, "web").as_deref(), Some("bbbbbbbbbbbb"));
        assert_eq!(lookup(state, "../containers"), None);
    }

    #[test]
    fn generated_names_look_like_dockers_and_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let key = format!("{i:012x}");
            std::fs::create_dir_all(super::containers_dir(state).join(&key)).unwrap();
            let name = reserve_generated(state, &key).unwrap();
            let (adj, rest) = name.split_once('_').unwrap();
            assert!(ADJECTIVES.contains(&adj), "{name}");
            assert!(
                SCIENTISTS.contains(&rest.trim_end_matches(|c: char| c.is_ascii_digit())),
                "{name}"
            );
            assert!(seen.insert(name));
        }
    }
}
