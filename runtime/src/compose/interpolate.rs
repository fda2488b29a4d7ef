//! Compose's variable interpolation and `.env` files, pure (no I/O).
//!
//! Interpolation is the Compose specification's: `$VAR` and `${VAR}`, with
//! `${VAR:-default}` / `${VAR-default}` (default when unset or empty / unset),
//! `${VAR:?message}` / `${VAR?message}` (an error), `${VAR:+other}` / `${VAR+other}`
//! (the other text when set and non-empty / set); defaults and other texts are
//! interpolated in turn. `$$` is a literal `$`. An unset variable without a default is
//! the empty string (the caller warns, as Compose does).

/// Why a text could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// A `${` without its `}`, an empty or bad name, or an unknown operator.
    #[error(
        "invalid interpolation format for {text:?}: you may need to escape any $ with another $"
    )]
    Format {
        /// The text as written.
        text: String,
    },
    /// `${VAR:?message}` with VAR unset or empty (or `?` with VAR unset).
    #[error("required variable {name} is missing a value: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message the file gave (or Compose's default words).
        message: String,
    },
}

/// The longest text one interpolation may produce (a guard against defaults nested
/// so as to blow up).
const MAX_OUTPUT: usize = 1 << 20;

/// Interpolates `text`, looking variables up with `lookup`; names of unset variables
/// used without a default are pushed to `unset`.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, InterpolateError> {
    let bad = || InterpolateError::Format {
        text: text.to_string(),
    };
    let mut out = String::new();
    expand(text, lookup, unset, &mut out, 0).map_err(|e| match e {
        Expand::Format => bad(),
        Expand::Required(name, message) => InterpolateError::Required { name, message },
    })?;
    Ok(out)
}

enum Expand {
    Format,
    Required(String, String),
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
    out: &mut String,
    depth: usize,
) -> Result<(), Expand> {
    if depth > 16 {
        return Err(Expand::Format);
    }
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = closing_brace(r).ok_or(Expand::Format)?;
            substitute(&r[..end], lookup, unset, out, depth)?;
            rest = &r[end + 1..];
        } else if after.starts_with(is_name_start) {
            let end = after
                .find(|c: char| !is_name_char(c))
                .unwrap_or(after.len());
            let name = &after[..end];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => unset.push(name.to_string()),
            }
            rest = &after[end..];
        } else {
            // A `$` before anything else stays, as Compose leaves it.
            out.push('$');
            rest = after;
        }
        if out.len() > MAX_OUTPUT {
            return Err(Expand::Format);
        }
    }
    out.push_str(rest);
    Ok(())
}

/// Where the `}` closing a `${` is in `text` (after the `{`), counting nested `${`.
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// One `${...}` body.
fn substitute(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
    out: &mut String,
    depth: usize,
) -> Result<(), Expand> {
    let end = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let (name, op) = body.split_at(end);
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(Expand::Format);
    }
    let value = lookup(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    // With a colon an empty value counts as unset.
    let set = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
    let Some(kind) = op.chars().next() else {
        if colon {
            return Err(Expand::Format);
        }
        match value {
            Some(v) => out.push_str(&v),
            None => unset.push(name.to_string()),
        }
        return Ok(());
    };
    let arg = &op[kind.len_utf8()..];
    match kind {
        '-' if set => out.push_str(value.as_deref().unwrap_or_default()),
        '-' => expand(arg, lookup, unset, out, depth + 1)?,
        '+' if set => expand(arg, lookup, unset, out, depth + 1)?,
        '+' => {}
        '?' if set => out.push_str(value.as_deref().unwrap_or_default()),
        '?' => {
            let mut message = String::new();
            expand(arg, lookup, unset, &mut message, depth + 1)?;
            if message.is_empty() {
                message = format!("variable {name} is not set");
            }
            return Err(Expand::Required(name.to_string(), message));
        }
        _ => return Err(Expand::Format),
    }
    Ok(())
}

/// Why a `.env` (or `env_file`) line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct DotenvError {
    /// 1-based.
    pub line: usize,
    /// What is wrong.
    pub why: String,
}

/// Parses a dotenv file as Compose reads `.env` and `env_file`: `KEY=VALUE` lines (an
/// `export ` before the key is allowed), blank lines and `#` comments skipped; values
/// in single quotes are literal, in double quotes take `\n`, `\t`, `\\` and `\"`
/// escapes and may span lines, unquoted ones end at ` #` and are trimmed. A line with
/// a key alone (`KEY`) is returned with no value.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, Option<String>)>, DotenvError> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((n, raw)) = lines.next() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let bad = |why: &str| DotenvError {
            line: n + 1,
            why: why.to_string(),
        };
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim_end(), Some(v)),
            None => (line.trim_end(), None),
        };
        if key.is_empty() || !key.chars().all(|c| is_name_char(c) || c == '.' || c == '-') {
            return Err(bad(&format!("invalid variable name {key:?}")));
        }
        let Some(value) = value else {
            out.push((key.to_string(), None));
            continue;
        };
        let value = value.trim_start();
        let parsed = if let Some(v) = value.strip_prefix('\'') {
            let end = v
                .find('\'')
                .ok_or_else(|| bad("unterminated single quote"))?;
            v[..end].to_string()
        } else if let Some(v) = value.strip_prefix('"') {
            let mut text = v.to_string();
            let mut s = String::new();
            loop {
                if unquote_double(&text, &mut s).is_some() {
                    break;
                }
                // The quote goes on past this line.
                let Some((_, next)) = lines.next() else {
                    return Err(bad("unterminated double quote"));
                };
                s.push('\n');
                text = next.to_string();
            }
            s
        } else {
            let v = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            };
            v.trim_end().to_string()
        };
        out.push((key.to_string(), Some(parsed)));
    }
    Ok(out)
}

/// Appends the double-quoted text of `text` to `out`; `Some(())` when its closing
/// quote was found on this line.
fn unquote_double(text: &str, out: &mut String) -> Option<()> {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(()),
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(o @ ('\\' | '"' | '$')) => out.push(o),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> (Result<String, InterpolateError>, Vec<String>) {
        let mut unset = Vec::new();
        let r = interpolate(text, &env, &mut unset);
        (r, unset)
    }

    fn ok(text: &str) -> String {
        run(text).0.unwrap()
    }

    #[test]
    fn plain_and_braced_names() {
        assert_eq!(ok("a $SET b ${SET}c"), "a value b valuec");
        assert_eq!(ok("${PORT}:80"), "8080:80");
        assert_eq!(ok("no variables"), "no variables");
    }

    #[test]
    fn dollar_dollar_is_a_dollar_and_a_lone_dollar_stays() {
        assert_eq!(ok("$$SET $$${SET}"), "$SET $value");
        assert_eq!(ok("cost: 5$ (x) $1"), "cost: 5$ (x) $1");
    }

    #[test]
    fn defaults_with_and_without_colon() {
        assert_eq!(ok("${MISSING:-d}"), "d");
        assert_eq!(ok("${EMPTY:-d}"), "d");
        assert_eq!(ok("${EMPTY-d}"), "");
        assert_eq!(ok("${MISSING-d}"), "d");
        assert_eq!(ok("${SET:-d}"), "value");
        assert_eq!(ok("${MISSING:-${SET}-x}"), "value-x");
        assert_eq!(ok("${MISSING:-${ALSO:-deep}}"), "deep");
        assert_eq!(ok("${MISSING:-}"), "");
    }

    #[test]
    fn alternatives() {
        assert_eq!(ok("${SET:+alt}"), "alt");
        assert_eq!(ok("${EMPTY:+alt}"), "");
        assert_eq!(ok("${EMPTY+alt}"), "alt");
        assert_eq!(ok("${MISSING+alt}"), "");
    }

    #[test]
    fn required_variables() {
        assert_eq!(
            run("${MISSING:?set it}").0,
            Err(InterpolateError::Required {
                name: "MISSING".into(),
                message: "set it".into()
            })
        );
        assert!(run("${EMPTY:?x}").0.is_err());
        assert_eq!(ok("${EMPTY?x}"), "");
        assert_eq!(ok("${SET:?x}"), "value");
        let e = run("${MISSING?}").0.unwrap_err().to_string();
        assert_eq!(
            e,
            "required variable MISSING is missing a value: variable MISSING is not set"
        );
    }

    #[test]
    fn unset_names_are_reported() {
        let (r, unset) = run("$MISSING-${OTHER}-${SET}-${DEF:-x}");
        assert_eq!(r.unwrap(), "--value-x");
        assert_eq!(unset, ["MISSING", "OTHER"]);
    }

    #[test]
    fn bad_formats() {
        for t in [
            "${",
            "${SET",
            "${}",
            "${1A}",
            "${SET:}",
            "${SET%x}",
            "${A B}",
            "${SET€x}",
        ] {
            assert!(
                matches!(run(t).0, Err(InterpolateError::Format { .. })),
                "{t}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let text = format!("{}x{}", "${A:-".repeat(40), "}".repeat(40));
        assert!(run(&text).0.is_err());
    }

    #[test]
    fn dotenv_lines() {
        let text = "# comment\n\nA=1\nexport B = two words # note\nC='lit $X \\n'\nD=\"a\\nb \\\"q\\\"\"\nE\nF=\nG=\"multi\nline\"\nH=x#y\n";
        let got = parse_dotenv(text).unwrap();
        let want: Vec<(String, Option<String>)> = vec![
            ("A".into(), Some("1".into())),
            ("B".into(), Some("two words".into())),
            ("C".into(), Some("lit $X \\n".into())),
            ("D".into(), Some("a\nb \"q\"".into())),
            ("E".into(), None),
            ("F".into(), Some(String::new())),
            ("G".into(), Some("multi\nline".into())),
            ("H".into(), Some("x#y".into())),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn dotenv_errors_name_the_line() {
        assert_eq!(
            parse_dotenv("A=1\nB='open\n").unwrap_err().to_string(),
            "line 2: unterminated single quote"
        );
        assert_eq!(parse_dotenv("A=\"open\n").unwrap_err().line, 1);
        assert!(parse_dotenv("BAD KEY=1").is_err());
        assert!(parse_dotenv("=1").is_err());
    }
}
