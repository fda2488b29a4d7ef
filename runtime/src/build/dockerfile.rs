//! Dockerfiles parsed as the Dockerfile reference says: parser directives (`# syntax=`
//! noted and ignored, `# escape=`), comments, line continuations with the escape
//! character, instructions case-insensitive, and each instruction's arguments in its
//! forms (exec form as a JSON array, shell form as text; `name=value` pairs; flags as
//! `--name=value`). Values stay as written (quotes and variables kept) where the builder
//! substitutes variables at build time ([`super::words`]).
//!
//! Errors name the line (the first of an instruction continued over several) as
//! Docker's do: `Dockerfile parse error on line N: ...`. Bounded: a Dockerfile of more
//! than [`MAX_DOCKERFILE`] bytes is refused.

use std::collections::HashSet;

use super::words::{self, WordError};

/// The largest Dockerfile accepted.
pub const MAX_DOCKERFILE: usize = 4 << 20;

/// Errors of parsing a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    /// Something is wrong on a line.
    #[error("Dockerfile parse error on line {line}: {reason}")]
    Line {
        /// The (first) line of the instruction.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file as a whole is unusable.
    #[error("{0}")]
    File(String),
}

/// A command in exec form (a JSON array: run as is) or shell form (run by the shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Exec(Vec<String>),
    Shell(String),
}

/// `COPY` and `ADD`: sources, destination, and flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopySpec {
    pub sources: Vec<String>,
    pub dest: String,
    /// `--from=STAGE|IMAGE` (COPY only).
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// The exec form (a JSON array) was used: no variable substitution of blanks.
    pub json: bool,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// `HEALTHCHECK NONE`: the base image's check is disabled.
    None,
    Check {
        command: Command,
        interval: Option<String>,
        timeout: Option<String>,
        start_period: Option<String>,
        start_interval: Option<String>,
        retries: Option<String>,
    },
}

/// One instruction and its arguments, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Run {
        command: Command,
        /// `--network=default|none|host`.
        network: Option<String>,
    },
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    Copy(CopySpec),
    Add(CopySpec),
    /// Pairs with their values raw.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    /// Names and raw defaults.
    Arg(Vec<(String, Option<String>)>),
    Workdir(String),
    User(String),
    Expose(String),
    Volume(Vec<String>),
    StopSignal(String),
    Healthcheck(Health),
    /// The trigger as written, and what it parses to.
    Onbuild(String, Box<Kind>),
    Maintainer(String),
}

/// An instruction: where it starts, its text (for the image's history), and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    pub text: String,
    pub kind: Kind,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `# syntax=` (noted, not followed: Arca has one builder).
    pub syntax: Option<String>,
    /// The escape character (`\` unless `# escape=` says `` ` ``).
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// Parses `text`.
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    if text.len() > MAX_DOCKERFILE {
        return Err(DockerfileError::File(format!(
            "The Dockerfile is larger than {} MiB",
            MAX_DOCKERFILE >> 20
        )));
    }
    let lines: Vec<&str> = text.lines().collect();
    let (syntax, escape, first) = directives(&lines)?;
    let mut instructions = Vec::new();
    let mut i = first;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        // Join continued lines; comment lines inside are dropped, as are blank ones.
        let start = i;
        let mut joined = String::new();
        let mut current = line.to_string();
        loop {
            let (body, continued) = continuation(&current, escape);
            joined.push_str(body);
            i += 1;
            if !continued {
                break;
            }
            loop {
                match lines.get(i) {
                    None => break,
                    Some(l) if l.trim().is_empty() || l.trim_start().starts_with('#') => i += 1,
                    Some(_) => break,
                }
            }
            match lines.get(i) {
                Some(next) => current = next.to_string(),
                None => break,
            }
        }
        let at = |reason: String| DockerfileError::Line {
            line: start + 1,
            reason,
        };
        let text = joined.trim().to_string();
        let kind = instruction(&text, escape, false).map_err(at)?;
        instructions.push(Instruction {
            line: start + 1,
            text,
            kind,
        });
    }
    match instructions.first() {
        None => Err(DockerfileError::File(
            "The Dockerfile has no instructions".into(),
        )),
        Some(first) => match first.kind {
            Kind::From { .. } | Kind::Arg(_) => {
                if let Some(bad) = instructions
                    .iter()
                    .take_while(|i| !matches!(i.kind, Kind::From { .. }))
                    .find(|i| !matches!(i.kind, Kind::Arg(_)))
                {
                    return Err(DockerfileError::Line {
                        line: bad.line,
                        reason: "only ARG may come before the first FROM".into(),
                    });
                }
                if !instructions
                    .iter()
                    .any(|i| matches!(i.kind, Kind::From { .. }))
                {
                    return Err(DockerfileError::File(
                        "The Dockerfile has no FROM instruction".into(),
                    ));
                }
                check_stage_names(&instructions)?;
                Ok(Dockerfile {
                    syntax,
                    escape,
                    instructions,
                })
            }
            _ => Err(DockerfileError::Line {
                line: first.line,
                reason: "the first instruction must be FROM (or ARG before it)".into(),
            }),
        },
    }
}

/// The parser directives at the top: `(syntax, escape, index of the first other line)`.
/// Directives end at the first line that is not one (a comment, a blank line, an
/// instruction); a directive twice is an error, an unknown one is a comment.
fn directives(lines: &[&str]) -> Result<(Option<String>, char, usize), DockerfileError> {
    let mut syntax = None;
    let mut escape = '\\';
    let mut seen = HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix('#') else {
            return Ok((syntax, escape, i));
        };
        let Some((key, value)) = rest.split_once('=') else {
            return Ok((syntax, escape, i));
        };
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphabetic()) {
            return Ok((syntax, escape, i));
        }
        let value = value.trim();
        let known = matches!(key.as_str(), "syntax" | "escape" | "check");
        if !known {
            return Ok((syntax, escape, i));
        }
        if !seen.insert(key.clone()) {
            return Err(DockerfileError::Line {
                line: i + 1,
                reason: format!("only one {key} parser directive can be used"),
            });
        }
        match key.as_str() {
            "syntax" => syntax = Some(value.to_string()),
            "escape" => {
                escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(DockerfileError::Line {
                            line: i + 1,
                            reason: format!("invalid escape token {other:?}: it must be \\ or `"),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Ok((syntax, escape, lines.len()))
}

/// A line without its trailing escape character (and the blanks after it), and whether
/// it had one.
fn continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end();
    match trimmed.strip_suffix(escape) {
        Some(body) => (body, true),
        None => (line, false),
    }
}

fn word_err(e: WordError) -> String {
    e.to_string()
}

/// One instruction's text: its keyword and arguments. `trigger`: inside `ONBUILD`.
/// An `ONBUILD` trigger as a base image's config keeps it (`RUN echo hi`), parsed as
/// the instruction it is; `FROM`, `MAINTAINER` and `ONBUILD` are refused.
pub fn trigger(text: &str, escape: char) -> Result<Kind, String> {
    let kind = instruction(text.trim(), escape, true)?;
    if matches!(
        kind,
        Kind::From { .. } | Kind::Maintainer(_) | Kind::Onbuild(..)
    ) {
        return Err(format!("{text:?} is not allowed as an ONBUILD trigger"));
    }
    Ok(kind)
}

fn instruction(text: &str, escape: char, trigger: bool) -> Result<Kind, String> {
    let (keyword, args) = match text.split_once(char::is_whitespace) {
        Some((k, a)) => (k, a.trim()),
        None => (text, ""),
    };
    if matches!(
        keyword.to_ascii_uppercase().as_str(),
        "RUN" | "COPY" | "ADD"
    ) && args.split_whitespace().any(|w| {
        w.strip_prefix("<<")
            .map(|r| r.trim_start_matches('-').trim_start_matches(['"', '\'']))
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
    }) {
        return Err(
            "heredocs (<<EOF) are not supported by arca build: write the lines into the instruction, or COPY a script".into(),
        );
    }
    let upper = keyword.to_ascii_uppercase();
    let needs_args = |what: &str| -> Result<(), String> {
        if args.is_empty() {
            Err(format!("{upper} requires {what}"))
        } else {
            Ok(())
        }
    };
    let kind = match upper.as_str() {
        "FROM" => {
            let (flags, rest) = flags(args, &["platform"])?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            let (image, name) = match words[..] {
                [image] => (image, None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => (image, Some(name)),
                _ => {
                    return Err("FROM takes an image and, optionally, AS and a stage name".into());
                }
            };
            if let Some(name) = name
                && !valid_stage_name(name)
            {
                return Err(format!(
                    "invalid stage name {name:?}: it must start with a letter and have only letters, digits, '-', '_' and '.'"
                ));
            }
            Kind::From {
                image: image.to_string(),
                name: name.map(|n| n.to_ascii_lowercase()),
                platform: flag(&flags, "platform"),
            }
        }
        "RUN" => {
            let (flags, rest) = flags(args, &["network"])?;
            if rest.is_empty() {
                return Err("RUN requires a command".into());
            }
            let network = flag(&flags, "network");
            if let Some(n) = &network
                && !matches!(n.as_str(), "default" | "none" | "host")
            {
                return Err(format!(
                    "RUN --network takes default, none or host, not {n:?}"
                ));
            }
            Kind::Run {
                command: command(rest),
                network,
            }
        }
        "CMD" => {
            needs_args("a command")?;
            Kind::Cmd(command(args))
        }
        "ENTRYPOINT" => {
            needs_args("a command")?;
            Kind::Entrypoint(command(args))
        }
        "SHELL" => match json_array(args) {
            Some(v) if !v.is_empty() => Kind::Shell(v),
            _ => return Err("SHELL requires a JSON array, such as [\"/bin/sh\", \"-c\"]".into()),
        },
        "COPY" | "ADD" => {
            let allowed: &[&str] = if upper == "COPY" {
                &["from", "chown", "chmod"]
            } else {
                &["chown", "chmod"]
            };
            let (flags, rest) = flags(args, allowed)?;
            let (mut parts, json) = match json_array(rest) {
                Some(v) => (v, true),
                None => (rest.split_whitespace().map(str::to_string).collect(), false),
            };
            if parts.len() < 2 {
                return Err(format!(
                    "{upper} requires at least two arguments: a source and a destination"
                ));
            }
            let dest = parts.pop().unwrap_or_default();
            let spec = CopySpec {
                sources: parts,
                dest,
                from: flag(&flags, "from"),
                chown: flag(&flags, "chown"),
                chmod: flag(&flags, "chmod"),
                json,
            };
            if upper == "COPY" {
                Kind::Copy(spec)
            } else {
                Kind::Add(spec)
            }
        }
        "ENV" => {
            needs_args("at least one argument")?;
            let pairs = words::name_values(args, escape, true, false).map_err(word_err)?;
            Kind::Env(
                pairs
                    .into_iter()
                    .map(|(n, v)| (n, v.unwrap_or_default()))
                    .collect(),
            )
        }
        "LABEL" => {
            needs_args("at least one argument")?;
            let pairs = words::name_values(args, escape, true, false).map_err(word_err)?;
            Kind::Label(
                pairs
                    .into_iter()
                    .map(|(n, v)| (n, v.unwrap_or_default()))
                    .collect(),
            )
        }
        "ARG" => {
            needs_args("at least one argument")?;
            let pairs = words::name_values(args, escape, false, true).map_err(word_err)?;
            for (name, _) in &pairs {
                if !valid_var_name(name) {
                    return Err(format!("invalid ARG name {name:?}"));
                }
            }
            Kind::Arg(pairs)
        }
        "WORKDIR" => {
            needs_args("exactly one argument")?;
            Kind::Workdir(args.to_string())
        }
        "USER" => {
            needs_args("exactly one argument")?;
            Kind::User(args.to_string())
        }
        "EXPOSE" => {
            needs_args("at least one argument")?;
            Kind::Expose(args.to_string())
        }
        "VOLUME" => {
            needs_args("at least one argument")?;
            Kind::Volume(
                json_array(args)
                    .unwrap_or_else(|| args.split_whitespace().map(str::to_string).collect()),
            )
        }
        "STOPSIGNAL" => {
            needs_args("exactly one argument")?;
            Kind::StopSignal(args.to_string())
        }
        "HEALTHCHECK" => healthcheck(args)?,
        "ONBUILD" => {
            if trigger {
                return Err("ONBUILD ONBUILD is not allowed".into());
            }
            needs_args("an instruction")?;
            let inner = instruction(args, escape, true)?;
            if matches!(inner, Kind::From { .. } | Kind::Maintainer(_)) {
                let word = args.split_whitespace().next().unwrap_or_default();
                return Err(format!(
                    "{} is not allowed as an ONBUILD trigger",
                    word.to_ascii_uppercase()
                ));
            }
            Kind::Onbuild(args.to_string(), Box::new(inner))
        }
        "MAINTAINER" => {
            needs_args("exactly one argument")?;
            Kind::Maintainer(args.to_string())
        }
        _ => return Err(format!("unknown instruction: {keyword}")),
    };
    Ok(kind)
}

fn healthcheck(args: &str) -> Result<Kind, String> {
    if args.eq_ignore_ascii_case("none") {
        return Ok(Kind::Healthcheck(Health::None));
    }
    let (flags, rest) = flags(
        args,
        &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
    )?;
    let (keyword, command_text) = match rest.split_once(char::is_whitespace) {
        Some((k, c)) => (k, c.trim()),
        None => (rest, ""),
    };
    if rest.eq_ignore_ascii_case("none") {
        return Err("HEALTHCHECK NONE takes no options".into());
    }
    if !keyword.eq_ignore_ascii_case("cmd") || command_text.is_empty() {
        return Err("HEALTHCHECK takes NONE, or options and CMD followed by a command".into());
    }
    if let Some(r) = flag(&flags, "retries")
        && r.parse::<u32>().map_or(true, |n| n == 0)
    {
        return Err(format!(
            "HEALTHCHECK --retries must be a positive number, not {r:?}"
        ));
    }
    Ok(Kind::Healthcheck(Health::Check {
        command: command(command_text),
        interval: flag(&flags, "interval"),
        timeout: flag(&flags, "timeout"),
        start_period: flag(&flags, "start-period"),
        start_interval: flag(&flags, "start-interval"),
        retries: flag(&flags, "retries"),
    }))
}

/// Exec form when `args` is a JSON array of strings, else shell form.
fn command(args: &str) -> Command {
    match json_array(args) {
        Some(v) => Command::Exec(v),
        None => Command::Shell(args.to_string()),
    }
}

/// `text` as a JSON array of strings, if it is one.
fn json_array(text: &str) -> Option<Vec<String>> {
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The leading `--name=value` flags of `args` (only those in `allowed`; each once) and
/// the rest.
/// An instruction's flags: `(name, value)` pairs.
type Flags = Vec<(String, String)>;

fn flags<'a>(args: &'a str, allowed: &[&str]) -> Result<(Flags, &'a str), String> {
    let mut out: Flags = Vec::new();
    let mut rest = args.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let word = &after[..end];
        let name = word.split_once('=').map_or(word, |(n, _)| n);
        if !allowed.contains(&name) {
            return Err(if allowed.is_empty() {
                format!("unknown flag: --{name}")
            } else {
                format!(
                    "unknown flag: --{name} (Arca supports {})",
                    allowed
                        .iter()
                        .map(|a| format!("--{a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
        let (_, value) = word
            .split_once('=')
            .ok_or_else(|| format!("flag --{word} needs a value (--{word}=VALUE)"))?;
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("flag --{name} given twice"));
        }
        out.push((name.to_string(), value.to_string()));
        rest = after[end..].trim_start();
    }
    Ok((out, rest))
}

fn flag(flags: &[(String, String)], name: &str) -> Option<String> {
    flags
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// A stage name (Docker: a letter, then letters, digits, `-`, `_`, `.`).
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A variable name: letters, digits and `_`, not starting with a digit.
pub fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Stage names are unique (case-insensitively, as Docker compares them).
fn check_stage_names(instructions: &[Instruction]) -> Result<(), DockerfileError> {
    let mut seen = HashSet::new();
    for i in instructions {
        if let Kind::From {
            name: Some(name), ..
        } = &i.kind
            && !seen.insert(name.clone())
        {
            return Err(DockerfileError::Line {
                line: i.line,
                reason: format!("duplicate stage name {name:?}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredocs_are_refused_by_name() {
        for text in [
            "FROM a\nRUN <<EOF\necho hi\nEOF\n",
            "FROM a\nRUN python3 <<-'PY'\nprint(1)\nPY\n",
            "FROM a\nCOPY <<EOF /x\nhi\nEOF\n",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains("heredocs (<<EOF) are not supported"),
                "{text}: {e}"
            );
        }
        // A shift or a here-string in shell text is not a heredoc.
        assert!(parse("FROM a\nRUN echo $((1 << 2)) && cat <<< x\n").is_ok());
    }

    fn kinds(text: &str) -> Vec<Kind> {
        parse(text)
            .unwrap()
            .instructions
            .into_iter()
            .map(|i| i.kind)
            .collect()
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_docker_notes_example_parses() {
        let d = parse("FROM busybox\nRUN echo \"hello world\"\n").unwrap();
        assert_eq!(d.escape, '\\');
        assert_eq!(
            d.instructions[1],
            Instruction {
                line: 2,
                text: "RUN echo \"hello world\"".into(),
                kind: Kind::Run {
                    command: Command::Shell("echo \"hello world\"".into()),
                    network: None
                }
            }
        );
    }

    #[test]
    fn continuations_comments_and_directives() {
        let d = parse(
            "# syntax=docker/dockerfile:1\n# escape=`\n\n# a comment\nFROM busybox AS Base\n\
             RUN echo a `\n  # dropped\n\n  && echo b\nrun  echo c\n",
        )
        .unwrap();
        assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(d.escape, '`');
        assert_eq!(d.instructions[1].line, 6);
        assert_eq!(
            d.instructions[1].kind,
            Kind::Run {
                command: Command::Shell("echo a   && echo b".into()),
                network: None
            }
        );
        assert_eq!(d.instructions[2].line, 10);
        // Directives end at the first other line; after it they are comments.
        let d = parse("FROM x\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(d.escape, '\\');
        assert_eq!(
            d.instructions[1].kind,
            Kind::Run {
                command: Command::Shell("a  b".into()),
                network: None
            }
        );
        assert!(error("# escape=x\nFROM x").contains("invalid escape token"));
        assert!(error("# syntax=a\n# syntax=b\nFROM x").contains("only one syntax"));
        // Stage names are compared without case.
        assert!(
            matches!(&kinds("FROM busybox AS Base")[0], Kind::From { name: Some(n), .. } if n == "base")
        );
    }

    #[test]
    fn exec_and_shell_forms() {
        let k = kinds(
            "FROM x\nCMD [\"echo\", \"hi\"]\nENTRYPOINT echo hi\nCMD [not json\nSHELL [\"/bin/bash\", \"-c\"]\n",
        );
        assert_eq!(
            k[1],
            Kind::Cmd(Command::Exec(vec!["echo".into(), "hi".into()]))
        );
        assert_eq!(k[2], Kind::Entrypoint(Command::Shell("echo hi".into())));
        assert_eq!(k[3], Kind::Cmd(Command::Shell("[not json".into())));
        assert_eq!(k[4], Kind::Shell(vec!["/bin/bash".into(), "-c".into()]));
        assert!(error("FROM x\nSHELL /bin/bash -c").contains("SHELL requires a JSON array"));
    }

    #[test]
    fn copy_add_and_their_flags() {
        let k = kinds(
            "FROM x\nCOPY --from=build --chown=1:2 --chmod=0644 a b /dst/\nADD [\"a b\", \"/d\"]\n",
        );
        assert_eq!(
            k[1],
            Kind::Copy(CopySpec {
                sources: vec!["a".into(), "b".into()],
                dest: "/dst/".into(),
                from: Some("build".into()),
                chown: Some("1:2".into()),
                chmod: Some("0644".into()),
                json: false,
            })
        );
        assert!(matches!(&k[2], Kind::Add(s) if s.sources == ["a b"] && s.json));
        assert!(error("FROM x\nADD --from=a b c").contains("unknown flag: --from"));
        assert!(error("FROM x\nCOPY --link a b").contains("unknown flag: --link"));
        assert!(error("FROM x\nCOPY a").contains("at least two arguments"));
        assert!(error("FROM x\nCOPY --chown a b").contains("needs a value"));
        assert!(error("FROM x\nCOPY --chown=1 --chown=2 a b").contains("given twice"));
    }

    #[test]
    fn env_label_arg_forms() {
        let k = kinds(
            "ARG VERSION=1.0\nFROM x:$VERSION\nENV A=1 B=\"two words\"\nENV LEGACY value with spaces\n\
             LABEL \"com.example\"=yes other=no\nARG a b=2\n",
        );
        assert_eq!(
            k[0],
            Kind::Arg(vec![("VERSION".into(), Some("1.0".into()))])
        );
        assert_eq!(
            k[2],
            Kind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"two words\"".into())
            ])
        );
        assert_eq!(
            k[3],
            Kind::Env(vec![("LEGACY".into(), "value with spaces".into())])
        );
        assert_eq!(
            k[4],
            Kind::Label(vec![
                ("com.example".into(), "yes".into()),
                ("other".into(), "no".into())
            ])
        );
        assert_eq!(
            k[5],
            Kind::Arg(vec![("a".into(), None), ("b".into(), Some("2".into()))])
        );
        assert!(error("FROM x\nARG 9x").contains("invalid ARG name"));
        assert!(error("FROM x\nENV").contains("ENV requires"));
        assert!(error("FROM x\nENV A=1 B").contains("is not NAME=VALUE"));
    }

    #[test]
    fn healthcheck_onbuild_and_the_rest() {
        let k = kinds(
            "FROM x\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/\nHEALTHCHECK NONE\n\
             ONBUILD RUN echo child\nEXPOSE 80/tcp 443\nVOLUME [\"/data\"]\nVOLUME /a /b\nUSER app:app\n\
             WORKDIR /src\nSTOPSIGNAL SIGTERM\nMAINTAINER me\nRUN --network=none true\n",
        );
        assert_eq!(
            k[1],
            Kind::Healthcheck(Health::Check {
                command: Command::Shell("curl -f http://localhost/".into()),
                interval: Some("5s".into()),
                timeout: None,
                start_period: None,
                start_interval: None,
                retries: Some("3".into()),
            })
        );
        assert_eq!(k[2], Kind::Healthcheck(Health::None));
        assert!(
            matches!(&k[3], Kind::Onbuild(t, inner) if t == "RUN echo child"
            && matches!(**inner, Kind::Run { .. }))
        );
        assert_eq!(k[4], Kind::Expose("80/tcp 443".into()));
        assert_eq!(k[5], Kind::Volume(vec!["/data".into()]));
        assert_eq!(k[6], Kind::Volume(vec!["/a".into(), "/b".into()]));
        assert_eq!(k[7], Kind::User("app:app".into()));
        assert!(matches!(&k[11], Kind::Run { network: Some(n), .. } if n == "none"));
        for (text, want) in [
            (
                "FROM x\nONBUILD ONBUILD RUN x",
                "ONBUILD ONBUILD is not allowed",
            ),
            (
                "FROM x\nONBUILD FROM y",
                "FROM is not allowed as an ONBUILD trigger",
            ),
            ("FROM x\nHEALTHCHECK curl", "CMD followed by a command"),
            (
                "FROM x\nHEALTHCHECK --retries=0 CMD true",
                "positive number",
            ),
            (
                "FROM x\nHEALTHCHECK --bogus=1 CMD true",
                "unknown flag: --bogus",
            ),
            ("FROM x\nRUN --network=bridge true", "default, none or host"),
            (
                "FROM x\nRUN --mount=type=cache,target=/x true",
                "unknown flag: --mount",
            ),
        ] {
            assert!(error(text).contains(want), "{text}: {}", error(text));
        }
    }

    /// What the fuzz target does, over mutations of a Dockerfile that uses every form
    /// (for hosts without cargo-fuzz): no panic, and the same result twice.
    #[test]
    fn mutated_dockerfiles_never_panic() {
        let seed = "# escape=\\\nARG V=1\nFROM busybox:${V} AS b\nRUN [\"sh\", \"-c\", \"echo\"]\n\
                    ENV A=\"x y\" B='z' C=${A:-d}\\\n  D=1\nLABEL \"k\"=v\nCOPY --from=b --chown=1 /a /b\n\
                    HEALTHCHECK --interval=1s CMD [\"true\"]\nONBUILD ADD . /x\nEXPOSE 80 ${P:+443}\n";
        let alphabet = b"\\`$'\"{}[]=:-+?# \n\tA";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let env = |n: &str| (n == "A").then(|| "a b".to_string());
        for _ in 0..3000 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..(next() % 6 + 1) {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let first = parse(&text);
            assert_eq!(first, parse(&text));
            if let Ok(d) = first {
                for i in &d.instructions {
                    let _ = words::expand(&i.text, &env, d.escape);
                    let _ = words::expand_fields(&i.text, &env, d.escape);
                }
            }
        }
    }

    #[test]
    fn structure_errors_name_the_line() {
        assert_eq!(
            error("FROM x\n\nFOO bar"),
            "Dockerfile parse error on line 3: unknown instruction: FOO"
        );
        assert_eq!(error(""), "The Dockerfile has no instructions");
        assert_eq!(
            error("# just a comment\n"),
            "The Dockerfile has no instructions"
        );
        assert!(error("RUN x\nFROM y").contains("line 1: the first instruction must be FROM"));
        assert!(
            error("ARG a\nRUN x").contains("no FROM instruction")
                || error("ARG a\nRUN x").contains("only ARG")
        );
        assert!(error("ARG a").contains("no FROM instruction"));
        assert!(error("FROM a AS b c").contains("FROM takes an image"));
        assert!(error("FROM a AS 1b").contains("invalid stage name"));
        assert!(error("FROM a AS s\nFROM b AS S").contains("line 2: duplicate stage name"));
        assert!(error(&"#".repeat(MAX_DOCKERFILE + 1)).contains("larger than"));
        // A continuation at the end of the file ends the instruction.
        assert!(
            matches!(&kinds("FROM x\nRUN a \\")[1], Kind::Run { command: Command::Shell(s), .. } if s == "a")
        );
    }
}
