//! `.dockerignore`: which files of a build context the build leaves out, with Docker's
//! rules (moby's `patternmatcher`): one pattern a line, `#` comments, blank lines
//! skipped, patterns cleaned as paths (`./a/../b` is `b`, a leading `/` dropped), `!`
//! for an exception; `*` matches any run of characters but `/`, `?` one character but
//! `/`, `[...]` a class, `**` any number of directories (zero included), and the
//! escape `\`. A path is excluded if the last pattern matching it, or one of its parent
//! directories, excludes it.
//!
//! Matching is linear in the pattern's and the path's lengths (no backtracking blowup
//! on hostile patterns); files over [`MAX_IGNORE_FILE`] bytes are refused.

/// The largest `.dockerignore` accepted.
pub const MAX_IGNORE_FILE: usize = 1 << 20;

/// Errors of reading a `.dockerignore`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreError {
    /// A pattern cannot be compiled.
    #[error(".dockerignore line {line}: {reason}")]
    Pattern {
        /// Its line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file is too large.
    #[error(".dockerignore is larger than {} KiB", MAX_IGNORE_FILE >> 10)]
    TooLarge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`.
    One,
    /// `*`.
    Star,
    /// `**` followed by more pattern: any run of whole directories, `(.*/)?`.
    Dirs,
    /// `**` at the end: anything.
    Rest,
    /// `[...]`: ranges, negated or not.
    Class(Vec<(char, char)>, bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    tokens: Vec<Token>,
    exception: bool,
}

/// The patterns of a `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

impl Ignore {
    /// Parses a `.dockerignore`'s text.
    pub fn parse(text: &str) -> Result<Self, IgnoreError> {
        if text.len() > MAX_IGNORE_FILE {
            return Err(IgnoreError::TooLarge);
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let cleaned = clean(pattern);
            let tokens = compile(&cleaned).map_err(|reason| IgnoreError::Pattern {
                line: i + 1,
                reason,
            })?;
            patterns.push(Pattern { tokens, exception });
        }
        Ok(Ignore { patterns })
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for p in &self.patterns {
            // Only a pattern that can change the verdict is looked at.
            if p.exception != excluded {
                continue;
            }
            let mut hit = matches(&p.tokens, &path);
            if !hit && parents.len() > 1 {
                hit = (1..parents.len()).any(|n| matches(&p.tokens, &parents[..n].join("/")));
            }
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether any pattern is an exception (a directory that is excluded may then still
    /// have files that are not, and must be walked).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }
}

/// One pattern in `.dockerignore`'s syntax, matched against whole paths (`COPY`'s
/// source patterns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<Token>);

impl Glob {
    /// Compiles `pattern` (cleaned as a path first); the reason when it cannot be.
    pub fn new(pattern: &str) -> Result<Self, String> {
        compile(&clean(pattern)).map(Glob)
    }

    /// Whether it matches all of `path` (cleaned), not one of its parents.
    pub fn matches(&self, path: &str) -> bool {
        matches(&self.0, &clean(path))
    }
}

/// A path cleaned as Go's `filepath.Clean` does, without a leading `/`: `.` and empty
/// components dropped, `..` taking the previous one (kept at the start).
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ => {
                    if !path.starts_with('/') {
                        parts.push("..");
                    }
                }
            },
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::Dirs
                });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '\\' => match chars.get(i) {
                Some(&n) => {
                    i += 1;
                    tokens.push(Token::Char(n));
                }
                None => return Err(format!("pattern {pattern:?} ends with an escape")),
            },
            '[' => {
                let negated = matches!(chars.get(i), Some('^' | '!'));
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(format!("pattern {pattern:?} has an unclosed '['"));
                    };
                    i += 1;
                    if c == ']' && !first {
                        break;
                    }
                    first = false;
                    let lo = if c == '\\' {
                        let Some(&n) = chars.get(i) else {
                            return Err(format!("pattern {pattern:?} has an unclosed '['"));
                        };
                        i += 1;
                        n
                    } else {
                        c
                    };
                    let hi = if chars.get(i) == Some(&'-')
                        && chars.get(i + 1).is_some_and(|&n| n != ']')
                    {
                        let hi = chars[i + 1];
                        i += 2;
                        hi
                    } else {
                        lo
                    };
                    if hi < lo {
                        return Err(format!(
                            "pattern {pattern:?} has a backwards range {lo}-{hi}"
                        ));
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class(ranges, negated));
            }
            c => tokens.push(Token::Char(c)),
        }
    }
    Ok(tokens)
}

/// Whether `tokens` match all of `path`: a simulation of the pattern's automaton over
/// the path, one set of states a character (linear, no backtracking).
fn matches(tokens: &[Token], path: &str) -> bool {
    // A state is a token index; `inside[i]`: within the `(.*/)` of a `Dirs` at i.
    let n = tokens.len();
    let mut at = vec![false; n + 1];
    let mut inside = vec![false; n + 1];
    at[0] = true;
    close(tokens, &mut at);
    for c in path.chars() {
        let mut next = vec![false; n + 1];
        let mut next_inside = vec![false; n + 1];
        for i in 0..n {
            if inside[i] {
                // Still inside: any character; a '/' may end the group.
                next_inside[i] = true;
                if c == '/' {
                    next[i + 1] = true;
                }
            }
            if !at[i] {
                continue;
            }
            match &tokens[i] {
                Token::Char(t) if *t == c => next[i + 1] = true,
                Token::Char(_) => {}
                Token::One if c != '/' => next[i + 1] = true,
                Token::One => {}
                Token::Star if c != '/' => next[i] = true,
                Token::Star => {}
                Token::Rest => next[i] = true,
                Token::Dirs => {
                    next_inside[i] = true;
                    if c == '/' {
                        next[i + 1] = true;
                    }
                }
                Token::Class(ranges, negated) => {
                    let hit = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                    if hit != *negated && c != '/' {
                        next[i + 1] = true;
                    }
                }
            }
        }
        close(tokens, &mut next);
        at = next;
        inside = next_inside;
        if !at.iter().any(|&s| s) && !inside.iter().any(|&s| s) {
            return false;
        }
    }
    at[n]
}

/// Adds the states reachable without a character: past a `*`, `**` or `**/` that
/// matches nothing.
fn close(tokens: &[Token], at: &mut [bool]) {
    for i in 0..tokens.len() {
        if at[i] && matches!(tokens[i], Token::Star | Token::Dirs | Token::Rest) {
            at[i + 1] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> Ignore {
        Ignore::parse(text).unwrap()
    }

    /// The Dockerfile reference's `.dockerignore` example and rules.
    #[test]
    fn the_reference_examples() {
        let i = ignore("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(i.excludes("somedir/temporary.txt"));
        assert!(i.excludes("somedir/temp"));
        assert!(i.excludes("somedir/subdir/temporary.txt"));
        assert!(i.excludes("tempa"));
        assert!(i.excludes("tempb"));
        assert!(!i.excludes("temporary.txt"));
        assert!(!i.excludes("a/b/c/temp"));

        let i = ignore("**/*.go\n");
        assert!(i.excludes("main.go"));
        assert!(i.excludes("a/b/c.go"));
        assert!(!i.excludes("a/b/c.goo"));

        let i = ignore("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(i.excludes("CHANGES.md"));
        assert!(!i.excludes("README.md"));
        assert!(i.excludes("README-secret.md"));

        let i = ignore("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!i.excludes("README-secret.md"));
    }

    #[test]
    fn directories_exclude_what_is_in_them() {
        let i = ignore("node_modules\n/build/\n./dist/../out\n");
        assert!(i.excludes("node_modules"));
        assert!(i.excludes("node_modules/x/y.js"));
        assert!(i.excludes("build/a.o"));
        assert!(i.excludes("out/bin"));
        assert!(!i.excludes("dist/x"));
        assert!(!i.excludes("src/node_modules"));
        let i = ignore("**/node_modules\n");
        assert!(i.excludes("src/node_modules/z"));
        let i = ignore("docs\n!docs/keep.md\n");
        assert!(i.excludes("docs/a.md"));
        assert!(!i.excludes("docs/keep.md"));
        assert!(i.has_exceptions());
    }

    #[test]
    fn classes_escapes_and_double_stars() {
        let i = ignore("[a-c]?.txt\n[!x]y\nlit\\*\na/**/b\nlogs/**\n");
        assert!(i.excludes("b1.txt"));
        assert!(!i.excludes("d1.txt"));
        assert!(i.excludes("zy"));
        assert!(!i.excludes("xy"));
        assert!(i.excludes("lit*"));
        assert!(!i.excludes("litx"));
        assert!(i.excludes("a/b"));
        assert!(i.excludes("a/x/y/b"));
        assert!(!i.excludes("a/xb"));
        assert!(i.excludes("logs/2026/x.log"));
        // `*` and `?` never cross a '/'.
        let i = ignore("a*c\na?c\n");
        assert!(!i.excludes("a/c"));
        assert!(i.excludes("abbc"));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        assert_eq!(
            Ignore::parse("ok\n[abc\n").unwrap_err().to_string(),
            ".dockerignore line 2: pattern \"[abc\" has an unclosed '['"
        );
        assert!(Ignore::parse("x\\").is_err());
        assert!(Ignore::parse("[z-a]").is_err());
        assert_eq!(
            Ignore::parse(&"a\n".repeat(MAX_IGNORE_FILE)).unwrap_err(),
            IgnoreError::TooLarge
        );
        // Blank lines, comments and a byte-order mark are nothing.
        assert_eq!(ignore("\u{feff}# c\n\n   \n"), Ignore::default());
    }

    #[test]
    fn hostile_patterns_match_in_linear_time() {
        let pattern = "*a".repeat(200) + "b";
        let i = ignore(&pattern);
        let path = "a".repeat(4000);
        let t = std::time::Instant::now();
        assert!(!i.excludes(&path));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
