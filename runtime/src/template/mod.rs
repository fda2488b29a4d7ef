//! Go `text/template`, as Docker's `--format` uses it, over JSON values: our own engine.
//! (`gtmpl` 0.7.1 was weighed; our own keeps Go's printing of JSON values, Docker's error
//! texts and bounded work, which a fuzzed CLI input needs, under our control.)
//!
//! The language: text and `{{actions}}` with the `{{-`/`-}}` trim markers and `{{/* */}}`
//! comments; field chains on maps (`.State.Status`, `$x.A`, `(pipeline).A`), `.`, `$`,
//! variables (`$x := …`, `$x = …`), pipelines (`{{.A | json}}`), parenthesized
//! pipelines; string, raw string, character, number, `true`/`false`/`nil` literals;
//! `if`/`else if`/`else`, `range` (arrays, maps in sorted key order, integers; `$i, $e
//! :=`; `break`/`continue`), `with`/`else with`. Go's functions `and or not len index
//! print printf println eq ne lt le gt ge slice`, and Docker's `json split join title
//! lower upper pad truncate`.
//!
//! Go's behaviour kept: a missing map key prints `<no value>`; a nil (JSON `null`) in a
//! field chain is an error; truthiness (false, 0, "", empty arrays and maps, nil are
//! false); errors read `template: :LINE:COL: executing "" at <NODE>: …`, as Go writes
//! them for Docker's unnamed templates. Differences: values are JSON, so there are no
//! methods (`.Label "k"` is refused unless the caller maps it), maps print as Go prints
//! a `map[string]interface{}`, and `define`/`template`/`block`, `call`, `html`, `js`
//! and `urlquery` are not supported. Work is bounded ([`MAX_OUTPUT`], [`MAX_STEPS`],
//! [`MAX_DEPTH`]) so that no template runs away.

mod exec;
mod format;
mod parse;
pub mod table;

pub use format::quote;
pub use table::{ListFormat, render_list};

use serde_json::Value;

/// Most bytes one execution writes (and most bytes its values hold, summed).
pub const MAX_OUTPUT: usize = 1 << 20;
/// Most steps (actions, commands, loop iterations) one execution takes.
pub const MAX_STEPS: u64 = 1_000_000;
/// Deepest nesting of control structures and parentheses a template may have.
pub const MAX_DEPTH: usize = 64;

/// What templates fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("template: :{line}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The template parsed but failed on this data.
    #[error("template: :{line}:{col}: executing \"\" at <{context}>: {message}")]
    Exec {
        /// 1-based line.
        line: usize,
        /// Byte column (0-based, as Go counts).
        col: usize,
        /// The failing node's text.
        context: String,
        /// What is wrong.
        message: String,
    },
}

/// Which function set a template runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Functions {
    /// Go's and Docker's.
    Normal,
    /// Docker's header functions, for a table's header row: `json split join title
    /// lower upper truncate` return their first argument unchanged.
    Header,
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    text: String,
    nodes: Vec<parse::Node>,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let nodes = parse::parse(text)?;
        Ok(Self {
            text: text.to_string(),
            nodes,
        })
    }

    /// Runs the template on `data`. With `strict`, a missing map key is an error (Go's
    /// `missingkey=error`, and what Docker's typed rows do for an unknown field).
    pub fn execute_with(
        &self,
        data: &Value,
        functions: Functions,
        strict: bool,
    ) -> Result<String, TemplateError> {
        exec::execute(&self.text, &self.nodes, data, functions, strict)
    }

    /// Runs the template on `data` as Docker's `inspect -f` does.
    pub fn execute(&self, data: &Value) -> Result<String, TemplateError> {
        self.execute_with(data, Functions::Normal, false)
    }
}

/// Parses and runs `text` on `data` once.
pub fn render(text: &str, data: &Value) -> Result<String, TemplateError> {
    Template::parse(text)?.execute(data)
}

#[cfg(test)]
mod tests;
