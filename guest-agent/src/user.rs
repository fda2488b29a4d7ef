//! `user[:group]` to uid, gid, supplementary groups and home, from a container's
//! /etc/passwd and /etc/group, as Docker resolves `--user`.

/// Errors in user resolution.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// A user name is not in /etc/passwd.
    #[error("Unable to find user {0}: no matching entries in passwd file")]
    NoSuchUser(String),
    /// A group name is not in /etc/group.
    #[error("Unable to find group {0}: no matching entries in group file")]
    NoSuchGroup(String),
    /// The user spec is empty or has an empty part.
    #[error("Invalid user {0:?}: use user, uid, user:group or uid:gid")]
    Invalid(String),
}

/// Resolved credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME`).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

fn lookup_group(group: &str, spec: &str) -> Result<u32, UserError> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    group_entries(group)
        .find(|g| g.name == spec)
        .map(|g| g.gid)
        .ok_or_else(|| UserError::NoSuchGroup(spec.to_string()))
}

/// Resolves `user` (None = root) plus `additional` groups against the file contents
/// (empty strings for missing files).
pub fn resolve(
    user: Option<&str>,
    additional: &[String],
    passwd: &str,
    group: &str,
) -> Result<Credentials, UserError> {
    let spec = user.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::Invalid(spec.to_string()));
    }
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::NoSuchUser(user_part.to_string()))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user_part.parse().unwrap_or(0),
    };
    let mut gid = entry.as_ref().map_or(0, |e| e.gid);
    if let Some(g) = group_part {
        gid = lookup_group(group, g)?;
    }
    let mut groups = Vec::new();
    // As runc: /etc/group memberships count only when the group is not given.
    if let (Some(e), None) = (&entry, group_part) {
        for g in group_entries(group) {
            if g.members.contains(&e.name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    for g in additional {
        let g = lookup_group(group, g)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let home = entry
        .as_ref()
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();
    Ok(Credentials {
        uid,
        gid,
        groups,
        home,
    })
}

/// Docker's environment rules: the image/user env, then `PATH` if missing, `HOSTNAME`,
/// `HOME` from the user's entry if missing, and `TERM=xterm` with a terminal.
pub fn process_env(env: &[String], hostname: &str, home: &str, terminal: bool) -> Vec<String> {
    let has = |k: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(key, _)| key == k))
    };
    let mut out = Vec::with_capacity(env.len() + 4);
    if !has("PATH") {
        out.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    }
    if !has("HOSTNAME") {
        out.push(format!("HOSTNAME={hostname}"));
    }
    if terminal && !has("TERM") {
        out.push("TERM=xterm".to_string());
    }
    out.extend(env.iter().cloned());
    if !has("HOME") {
        out.push(format!("HOME={home}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1000:\naudio:x:29:app\n";

    #[test]
    fn no_user_is_root_with_roots_home() {
        let c = resolve(None, &[], PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn a_name_takes_uid_gid_home_and_supplementary_groups_from_the_files() {
        let c = resolve(Some("app"), &[], PASSWD, GROUP).unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: 1000,
                gid: 1000,
                groups: vec![10, 29],
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn numbers_need_no_entry_and_groups_can_be_named() {
        let c = resolve(
            Some("4242:wheel"),
            &["audio".into(), "7".into()],
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!(
            c,
            Credentials {
                uid: 4242,
                gid: 10,
                groups: vec![29, 7],
                home: "/".into()
            }
        );
        let c = resolve(Some("1000"), &[], PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_str()), (1000, 1000, "/home/app"));
        // Without files at all, numbers still work.
        let c = resolve(Some("5:6"), &[], "", "").unwrap();
        assert_eq!((c.uid, c.gid), (5, 6));
    }

    #[test]
    fn an_explicit_group_drops_the_implicit_memberships_as_runc_does() {
        let c = resolve(Some("app:app"), &[], PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.groups.clone()), (1000, 1000, vec![]));
        let c = resolve(Some("app:app"), &["wheel".into()], PASSWD, GROUP).unwrap();
        assert_eq!(c.groups, vec![10]);
    }

    #[test]
    fn unknown_names_and_empty_parts_are_errors() {
        assert_eq!(
            resolve(Some("nobody"), &[], PASSWD, GROUP),
            Err(UserError::NoSuchUser("nobody".into()))
        );
        assert_eq!(
            resolve(Some("app:staff"), &[], PASSWD, GROUP),
            Err(UserError::NoSuchGroup("staff".into()))
        );
        assert!(matches!(
            resolve(Some("app:"), &[], PASSWD, GROUP),
            Err(UserError::Invalid(_))
        ));
        assert!(matches!(
            resolve(Some(":1"), &[], PASSWD, GROUP),
            Err(UserError::Invalid(_))
        ));
    }

    #[test]
    fn env_gets_dockers_defaults_without_overriding_given_values() {
        let env = process_env(&["A=1".into(), "HOME=/x".into()], "box", "/root", true);
        assert!(env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin")));
        assert!(env.contains(&"HOSTNAME=box".into()) && env.contains(&"TERM=xterm".into()));
        assert!(env.contains(&"HOME=/x".into()) && !env.contains(&"HOME=/root".into()));
        let env = process_env(&["PATH=/only".into()], "box", "/root", false);
        assert_eq!(
            env,
            vec![
                "HOSTNAME=box".to_string(),
                "PATH=/only".into(),
                "HOME=/root".into()
            ]
        );
    }
}
