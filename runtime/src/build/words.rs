//! Docker's word processing for Dockerfile arguments: quotes, the escape character and
//! variable substitution, as the Dockerfile reference describes them (`$var`,
//! `${var}`, `${var:-word}`, `${var-word}`, `${var:+word}`, `${var+word}`,
//! `${var:?message}`, `${var?message}`; escaping `$` with the escape character).
//!
//! - [`expand`]: one word, quotes removed, variables substituted (what `ENV` values,
//!   `WORKDIR`, `USER` and the like become).
//! - [`expand_fields`]: the same over a line, split into fields at unquoted blanks
//!   (`EXPOSE`, `VOLUME`, `COPY` sources); a variable's value is never split.
//! - [`name_values`]: `ENV`/`LABEL`/`ARG` text split into `name=value` pairs, values
//!   left raw (quotes and variables kept) for [`expand`] at build time.
//!
//! Single quotes keep everything literal; in double quotes the escape character
//! escapes only `"`, `$`, itself and a newline; outside quotes it escapes any
//! character. Bounded: a word may not grow past [`MAX_WORD`] bytes through
//! substitution (a variable holding itself many times over).

/// Errors of word processing; messages name the problem and the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordError {
    /// A quote is not closed.
    #[error("unterminated {0} quote in {1:?}")]
    Unterminated(&'static str, String),
    /// A `${` is not closed, or holds no name.
    #[error("bad substitution in {0:?}")]
    BadSubstitution(String),
    /// A `${...}` form Arca does not support.
    #[error(
        "unsupported substitution {0:?} (supported: ${{name}}, ${{name:-word}}, ${{name-word}}, ${{name:+word}}, ${{name+word}}, ${{name:?message}}, ${{name?message}})"
    )]
    Unsupported(String),
    /// `${name?message}` with `name` unset (or empty, with `:?`).
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// What the Dockerfile says.
        message: String,
    },
    /// Substitution made a word too long.
    #[error("a word grew past {MAX_WORD} bytes through variable substitution")]
    TooLong,
    /// A `name=value` pair without a name, or without `=`.
    #[error("{0}")]
    Pair(String),
}

/// The longest a word may become through substitution.
pub const MAX_WORD: usize = 1 << 20;

/// Variables: a name's value, if set.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Vars for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// `text` as one word: quotes removed, escapes applied, variables substituted.
pub fn expand(text: &str, vars: &dyn Vars, escape: char) -> Result<String, WordError> {
    let fields = Lexer::new(text, vars, escape).run(false)?;
    Ok(fields.into_iter().next().unwrap_or_default())
}

/// `text` as fields split at unquoted blanks, each processed as [`expand`] does. A
/// substituted value is not split; an empty pair of quotes is a field of its own.
pub fn expand_fields(text: &str, vars: &dyn Vars, escape: char) -> Result<Vec<String>, WordError> {
    Lexer::new(text, vars, escape).run(true)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    escape: char,
    text: &'a str,
    /// `${` open around the current position.
    depth: usize,
}

/// Deepest nesting of `${...}` (each level recurses).
const MAX_NESTING: usize = 64;

impl<'a> Lexer<'a> {
    fn new(text: &'a str, vars: &'a dyn Vars, escape: char) -> Self {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            vars,
            escape,
            text,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn run(mut self, split: bool) -> Result<Vec<String>, WordError> {
        let mut fields = Vec::new();
        let mut word = String::new();
        // Whether the current field exists even if empty (it had quotes).
        let mut started = false;
        while let Some(c) = self.peek() {
            self.pos += 1;
            if split && c.is_whitespace() {
                if started || !word.is_empty() {
                    fields.push(std::mem::take(&mut word));
                }
                started = false;
                continue;
            }
            match c {
                '\'' => {
                    started = true;
                    loop {
                        match self.peek() {
                            None => {
                                return Err(WordError::Unterminated("single", self.text.into()));
                            }
                            Some('\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(c) => {
                                self.pos += 1;
                                word.push(c);
                            }
                        }
                    }
                }
                '"' => {
                    started = true;
                    loop {
                        match self.peek() {
                            None => {
                                return Err(WordError::Unterminated("double", self.text.into()));
                            }
                            Some('"') => {
                                self.pos += 1;
                                break;
                            }
                            Some(c) if c == self.escape => {
                                self.pos += 1;
                                match self.peek() {
                                    Some(n)
                                        if n == '"'
                                            || n == '$'
                                            || n == self.escape
                                            || n == '\n' =>
                                    {
                                        self.pos += 1;
                                        word.push(n);
                                    }
                                    _ => word.push(c),
                                }
                            }
                            Some('$') => {
                                self.pos += 1;
                                let value = self.dollar()?;
                                word.push_str(&value);
                            }
                            Some(c) => {
                                self.pos += 1;
                                word.push(c);
                            }
                        }
                        bounded(&word)?;
                    }
                }
                '$' => {
                    let value = self.dollar()?;
                    word.push_str(&value);
                }
                c if c == self.escape => match self.peek() {
                    Some(n) => {
                        self.pos += 1;
                        word.push(n);
                    }
                    // A trailing escape stays.
                    None => word.push(c),
                },
                c => word.push(c),
            }
            bounded(&word)?;
        }
        if started || !word.is_empty() || !split {
            fields.push(word);
        }
        Ok(fields)
    }

    /// After a `$`: a variable's substitution, or `$` itself when no name follows.
    fn dollar(&mut self) -> Result<String, WordError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    return Err(WordError::BadSubstitution(format!(
                        "{} (nested more than {MAX_NESTING} deep)",
                        self.text.chars().take(64).collect::<String>()
                    )));
                }
                let value = self.braced();
                self.depth -= 1;
                value
            }
            Some(c) if c == '_' || c.is_ascii_alphanumeric() => {
                let name = self.name();
                Ok(self.vars.get(&name).unwrap_or_default())
            }
            _ => Ok("$".into()),
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c == '_' || c.is_ascii_alphanumeric() {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    /// After `${`: the substitution of `name}`, or of `name` with an operator and word.
    fn braced(&mut self) -> Result<String, WordError> {
        let name = self.name();
        if name.is_empty() {
            return Err(WordError::BadSubstitution(self.text.into()));
        }
        let value = self.vars.get(&name);
        let op = match self.peek() {
            Some('}') => {
                self.pos += 1;
                return Ok(value.unwrap_or_default());
            }
            Some(':') => {
                self.pos += 1;
                match self.peek() {
                    Some(c @ ('-' | '+' | '?')) => {
                        self.pos += 1;
                        (true, c)
                    }
                    _ => return Err(self.unsupported()),
                }
            }
            Some(c @ ('-' | '+' | '?')) => {
                self.pos += 1;
                (false, c)
            }
            None => return Err(WordError::BadSubstitution(self.text.into())),
            _ => return Err(self.unsupported()),
        };
        let word = self.operand()?;
        // With ':', an empty value counts as unset.
        let set = match (&value, op.0) {
            (None, _) => false,
            (Some(v), true) => !v.is_empty(),
            (Some(_), false) => true,
        };
        match op.1 {
            '-' => Ok(if set { value.unwrap_or_default() } else { word }),
            '+' => Ok(if set { word } else { String::new() }),
            _ => {
                if set {
                    Ok(value.unwrap_or_default())
                } else {
                    Err(WordError::Required {
                        name,
                        message: if word.is_empty() {
                            "parameter not set or null".into()
                        } else {
                            word
                        },
                    })
                }
            }
        }
    }

    /// The word after an operator, up to the matching `}`, itself processed (quotes,
    /// escapes, nested variables).
    fn operand(&mut self) -> Result<String, WordError> {
        let mut word = String::new();
        loop {
            match self.peek() {
                None => return Err(WordError::BadSubstitution(self.text.into())),
                Some('}') => {
                    self.pos += 1;
                    return Ok(word);
                }
                Some('$') => {
                    self.pos += 1;
                    let v = self.dollar()?;
                    word.push_str(&v);
                }
                Some(c) if c == self.escape => {
                    self.pos += 1;
                    if let Some(n) = self.peek() {
                        self.pos += 1;
                        word.push(n);
                    }
                }
                Some(q @ ('\'' | '"')) => {
                    self.pos += 1;
                    loop {
                        match self.peek() {
                            None => {
                                let kind = if q == '\'' { "single" } else { "double" };
                                return Err(WordError::Unterminated(kind, self.text.into()));
                            }
                            Some(c) if c == q => {
                                self.pos += 1;
                                break;
                            }
                            Some('$') if q == '"' => {
                                self.pos += 1;
                                let v = self.dollar()?;
                                word.push_str(&v);
                            }
                            Some(c) => {
                                self.pos += 1;
                                word.push(c);
                            }
                        }
                    }
                }
                Some(c) => {
                    self.pos += 1;
                    word.push(c);
                }
            }
            bounded(&word)?;
        }
    }

    fn unsupported(&mut self) -> WordError {
        // The rest of the braces, for the message.
        let start = self
            .text
            .char_indices()
            .nth(self.pos)
            .map_or(self.text.len(), |(i, _)| i);
        let rest = &self.text[start..];
        let end = rest.find('}').map_or(rest.len(), |i| i + 1);
        let shown = self.text[..start].rfind("${").map_or_else(
            || rest[..end].to_string(),
            |i| self.text[i..start].to_string() + &rest[..end],
        );
        WordError::Unsupported(shown)
    }
}

fn bounded(word: &str) -> Result<(), WordError> {
    if word.len() > MAX_WORD {
        Err(WordError::TooLong)
    } else {
        Ok(())
    }
}

/// `ENV`/`LABEL`/`ARG` arguments as `name=value` pairs, split at unquoted blanks; the
/// values keep their quotes and variables (for [`expand`]), names are unquoted. With
/// `legacy` (`ENV name value`, `LABEL name value`), text without `=` in its first word
/// is one pair: the first word and the rest. `ARG` passes `allow_bare` for `ARG name`
/// without a value (returned with `None`).
pub fn name_values(
    text: &str,
    escape: char,
    legacy: bool,
    allow_bare: bool,
) -> Result<Vec<(String, Option<String>)>, WordError> {
    let words = raw_words(text, escape)?;
    let Some(first) = words.first() else {
        return Err(WordError::Pair("at least one argument is needed".into()));
    };
    if legacy && !first.contains('=') {
        let rest = text.trim_start()[first.len()..].trim();
        if rest.is_empty() && !allow_bare {
            return Err(WordError::Pair(format!(
                "{first} needs a value ({first}=VALUE or {first} VALUE)"
            )));
        }
        return Ok(vec![(unquote(first, escape)?, Some(rest.to_string()))]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(WordError::Pair(format!("{w:?} has no name before '='"))),
            Some((name, value)) => Ok((unquote(name, escape)?, Some(value.to_string()))),
            None if allow_bare => Ok((unquote(&w, escape)?, None)),
            None => Err(WordError::Pair(format!(
                "{w:?} is not NAME=VALUE (give every pair an '=')"
            ))),
        })
        .collect()
}

/// A name, quotes removed, no variables.
fn unquote(name: &str, escape: char) -> Result<String, WordError> {
    let none = |_: &str| None::<String>;
    let raw = name.replace('$', &format!("{escape}$"));
    expand(&raw, &none, escape)
}

/// `text` split at unquoted blanks, quotes and escapes kept as they are.
fn raw_words(text: &str, escape: char) -> Result<Vec<String>, WordError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                word.push(c);
                if c == escape && q == '"' {
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => {
                word.push(c);
                if c == escape {
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                } else if c == '\'' || c == '"' {
                    quote = Some(c);
                }
            }
        }
    }
    if let Some(q) = quote {
        let kind = if q == '\'' { "single" } else { "double" };
        return Err(WordError::Unterminated(kind, text.into()));
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "abc" => Some("bar".into()),
            "empty" => Some(String::new()),
            "spaced" => Some("a b".into()),
            "X" => Some("x".into()),
            _ => None,
        }
    }

    fn ex(text: &str) -> String {
        expand(text, &env, '\\').unwrap()
    }

    /// The Dockerfile reference's examples (environment replacement).
    #[test]
    fn substitution_follows_the_reference() {
        assert_eq!(ex("$abc"), "bar");
        assert_eq!(ex("${abc}"), "bar");
        assert_eq!(ex("${abc}_x"), "bar_x");
        assert_eq!(ex("$abc_x"), "");
        assert_eq!(ex("${unset:-word}"), "word");
        assert_eq!(ex("${empty:-word}"), "word");
        assert_eq!(ex("${empty-word}"), "");
        assert_eq!(ex("${unset-word}"), "word");
        assert_eq!(ex("${abc:+word}"), "word");
        assert_eq!(ex("${empty:+word}"), "");
        assert_eq!(ex("${empty+word}"), "word");
        assert_eq!(ex("${unset+word}"), "");
        assert_eq!(ex("${unset:-$abc}"), "bar");
        assert_eq!(ex("${unset:-${X}y}"), "xy");
        assert_eq!(ex("\\$abc"), "$abc");
        assert_eq!(ex("\\${abc}"), "${abc}");
        assert_eq!(ex("'$abc'"), "$abc");
        assert_eq!(ex("\"$abc\""), "bar");
        assert_eq!(ex("\"\\$abc\""), "$abc");
        assert_eq!(ex("a$"), "a$");
        assert_eq!(ex("$ a"), "$ a");
        assert_eq!(expand("`$abc", &env, '`').unwrap(), "$abc");
        let e = expand("${unset:?must be set}", &env, '\\').unwrap_err();
        assert_eq!(e.to_string(), "unset: must be set");
        assert!(expand("${abc?x}", &env, '\\').is_ok());
        assert!(expand("${empty:?}", &env, '\\').is_err());
    }

    #[test]
    fn quotes_and_escapes_are_removed_as_a_shell_would() {
        assert_eq!(ex("\"hello world\""), "hello world");
        assert_eq!(ex("'it''s'"), "its");
        assert_eq!(ex("a\\ b"), "a b");
        assert_eq!(ex("\"a\\\"b\""), "a\"b");
        assert_eq!(ex("\"a\\nb\""), "a\\nb");
        assert_eq!(ex("C:\\\\path"), "C:\\path");
        assert_eq!(ex(""), "");
    }

    #[test]
    fn fields_split_at_unquoted_blanks_only() {
        let f = |t: &str| expand_fields(t, &env, '\\').unwrap();
        assert_eq!(f("80/tcp  443"), ["80/tcp", "443"]);
        assert_eq!(f("$spaced c"), ["a b", "c"]);
        assert_eq!(f("\"a b\" '' c"), ["a b", "", "c"]);
        assert_eq!(f("a\\ b c"), ["a b", "c"]);
        assert!(f("   ").is_empty());
    }

    #[test]
    fn bad_text_is_refused_with_what_is_wrong() {
        for (text, want) in [
            ("'open", "unterminated single quote"),
            ("\"open", "unterminated double quote"),
            ("${}", "bad substitution"),
            ("${abc", "bad substitution"),
            ("${abc#x}", "unsupported substitution \"${abc#x}\""),
            ("${abc:x}", "unsupported substitution"),
        ] {
            let e = expand(text, &env, '\\').unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "${a:-".repeat(100_000) + &"}".repeat(100_000);
        assert!(matches!(
            expand(&deep, &env, '\\'),
            Err(WordError::BadSubstitution(_))
        ));
        let ok = "${a:-".repeat(10) + "x" + &"}".repeat(10);
        assert_eq!(expand(&ok, &env, '\\').unwrap(), "x");
    }

    #[test]
    fn substitution_cannot_blow_up() {
        let big = "y".repeat(MAX_WORD / 2 + 1);
        let vars = move |n: &str| (n == "big").then(|| big.clone());
        assert_eq!(expand("$big$big$big", &vars, '\\'), Err(WordError::TooLong));
    }

    #[test]
    fn pairs_keep_values_raw_and_names_unquoted() {
        let p = |t: &str| name_values(t, '\\', true, false).unwrap();
        assert_eq!(
            p("MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog MY_CAT=fluffy"),
            [
                ("MY_NAME".into(), Some("\"John Doe\"".into())),
                ("MY_DOG".into(), Some("Rex\\ The\\ Dog".into())),
                ("MY_CAT".into(), Some("fluffy".into())),
            ]
        );
        assert_eq!(
            p("MY_VAR my-value with spaces"),
            [("MY_VAR".into(), Some("my-value with spaces".into()))]
        );
        assert_eq!(
            p("\"com.example.vendor\"=ACME"),
            [("com.example.vendor".into(), Some("ACME".into()))]
        );
        assert_eq!(p("A="), [("A".into(), Some(String::new()))]);
        assert_eq!(
            name_values("user1 b=2", '\\', false, true).unwrap(),
            [("user1".into(), None), ("b".into(), Some("2".into()))]
        );
        for bad in ["=x", "A=1 B", "ONLY"] {
            assert!(
                name_values(bad, '\\', bad != "A=1 B", false).is_err(),
                "{bad}"
            );
        }
        assert!(name_values("A=\"open", '\\', true, false).is_err());
    }
}
