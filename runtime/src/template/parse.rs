//! The lexer and parser: template text to a tree of [`Node`]s, as Go's `text/template/parse`.

use serde_json::Value;

use super::{MAX_DEPTH, TemplateError};

/// A piece of the tree.
#[derive(Debug, Clone)]
pub enum Node {
    /// Plain text.
    Text(String),
    /// `{{pipeline}}`.
    Action(Pipe),
    /// `{{if}}`, `{{with}}` or `{{range}}`.
    Branch(Box<Branch>),
    /// `{{break}}` (true) or `{{continue}}` (false).
    Loop(bool),
}

/// Which control structure a [`Branch`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    If,
    With,
    Range,
}

/// A control structure.
#[derive(Debug, Clone)]
pub struct Branch {
    pub kind: Kind,
    pub pipe: Pipe,
    pub list: Vec<Node>,
    pub else_list: Option<Vec<Node>>,
}

/// A pipeline, with the variables it declares or assigns.
#[derive(Debug, Clone)]
pub struct Pipe {
    pub pos: usize,
    pub decl: Vec<String>,
    pub assign: bool,
    pub cmds: Vec<Cmd>,
}

/// One command of a pipeline: a function and its arguments, or one operand.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub pos: usize,
    pub text: String,
    pub args: Vec<Arg>,
}

/// An operand.
#[derive(Debug, Clone)]
pub struct Arg {
    pub pos: usize,
    pub text: String,
    pub kind: ArgKind,
}

#[derive(Debug, Clone)]
pub enum ArgKind {
    /// `.`
    Dot,
    /// `nil`
    Nil,
    /// A literal.
    Const(Value),
    /// `.A.B` on dot.
    Field(Vec<String>),
    /// `$x.A.B` (`$` alone is the data).
    Var(String, Vec<String>),
    /// A function name.
    Func(String),
    /// `(pipeline).A.B`.
    Sub(Box<Pipe>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    Left,
    Right,
    Space,
    Field(String),
    Dot,
    Var(String),
    Ident(String),
    Str(String),
    Num(Value),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
    Eof,
}

#[derive(Debug, Clone)]
struct Item {
    tok: Tok,
    pos: usize,
    end: usize,
}

fn line_of(text: &str, pos: usize) -> usize {
    1 + text[..pos.min(text.len())].matches('\n').count()
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// The functions a template may name (Go's and Docker's).
pub const FUNCTIONS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "eq", "ne", "lt",
    "le", "gt", "ge", "json", "split", "join", "title", "lower", "upper", "pad", "truncate",
];

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    items: Vec<Item>,
    paren: usize,
}

impl<'a> Lexer<'a> {
    fn err(&self, pos: usize, message: impl Into<String>) -> TemplateError {
        TemplateError::Parse {
            line: line_of(self.text, pos),
            message: message.into(),
        }
    }

    fn push(&mut self, tok: Tok, pos: usize, end: usize) {
        self.items.push(Item { tok, pos, end });
    }

    fn run(mut self) -> Result<Vec<Item>, TemplateError> {
        let text = self.text;
        let bytes = text.as_bytes();
        while self.pos < text.len() {
            let start = self.pos;
            let Some(off) = text[start..].find("{{") else {
                self.push(Tok::Text(text[start..].to_string()), start, text.len());
                break;
            };
            let left = start + off;
            let trim_left = bytes.get(left + 2) == Some(&b'-')
                && bytes.get(left + 3).is_some_and(|b| is_space(*b));
            let mut chunk = &text[start..left];
            if trim_left {
                chunk = chunk.trim_end_matches([' ', '\t', '\r', '\n']);
            }
            if !chunk.is_empty() {
                self.push(Tok::Text(chunk.to_string()), start, left);
            }
            self.pos = left + 2 + if trim_left { 2 } else { 0 };
            // A comment.
            let rest = &text[self.pos..];
            if rest.starts_with("/*") {
                let Some(close) = rest.find("*/") else {
                    return Err(self.err(left, "unclosed comment"));
                };
                let mut after = self.pos + close + 2;
                let trim_right = text[after..].starts_with(" -}}")
                    || text[after..].starts_with("\t-}}")
                    || text[after..].starts_with("\n-}}")
                    || text[after..].starts_with("\r-}}");
                if trim_right {
                    after += 2;
                }
                if !text[after..].starts_with("}}") {
                    return Err(self.err(left, "comment ends before closing delimiter"));
                }
                self.pos = after + 2;
                if trim_right {
                    self.skip_space();
                }
                continue;
            }
            self.push(Tok::Left, left, self.pos);
            self.action()?;
        }
        let end = text.len();
        self.push(Tok::Eof, end, end);
        Ok(self.items)
    }

    fn skip_space(&mut self) {
        let b = self.text.as_bytes();
        while self.pos < b.len() && is_space(b[self.pos]) {
            self.pos += 1;
        }
    }

    /// Inside `{{ }}`, up to and including the closing delimiter.
    fn action(&mut self) -> Result<(), TemplateError> {
        let text = self.text;
        let b = text.as_bytes();
        self.paren = 0;
        loop {
            let start = self.pos;
            let Some(&c) = b.get(start) else {
                return Err(self.err(start, "unclosed action"));
            };
            // ` -}}`
            if is_space(c) {
                let mut p = start;
                while p < b.len() && is_space(b[p]) {
                    p += 1;
                }
                if text[p..].starts_with("-}}") && p > start {
                    self.push(Tok::Right, p, p + 3);
                    self.pos = p + 3;
                    self.skip_space();
                    return Ok(());
                }
                self.push(Tok::Space, start, p);
                self.pos = p;
                continue;
            }
            if text[start..].starts_with("}}") {
                if self.paren > 0 {
                    return Err(self.err(start, "unclosed left paren"));
                }
                self.push(Tok::Right, start, start + 2);
                self.pos = start + 2;
                return Ok(());
            }
            match c {
                b'|' => self.single(Tok::Pipe),
                b',' => self.single(Tok::Comma),
                b'(' => {
                    self.paren += 1;
                    self.single(Tok::LParen);
                }
                b')' => {
                    if self.paren == 0 {
                        return Err(self.err(start, "unexpected right paren"));
                    }
                    self.paren -= 1;
                    self.single(Tok::RParen);
                }
                b'=' => self.single(Tok::Assign),
                b':' => {
                    if b.get(start + 1) != Some(&b'=') {
                        return Err(self.err(start, "expected :="));
                    }
                    self.pos = start + 2;
                    self.push(Tok::Declare, start, self.pos);
                }
                b'"' => self.quoted()?,
                b'`' => {
                    let Some(close) = text[start + 1..].find('`') else {
                        return Err(self.err(start, "unterminated raw quoted string"));
                    };
                    let end = start + 1 + close;
                    self.pos = end + 1;
                    self.push(Tok::Str(text[start + 1..end].to_string()), start, self.pos);
                }
                b'\'' => self.char_const()?,
                b'$' => {
                    let end = self.word_end(start + 1);
                    self.pos = end;
                    self.push(Tok::Var(text[start..end].to_string()), start, end);
                }
                b'.' => {
                    if b.get(start + 1).is_some_and(u8::is_ascii_digit) {
                        self.number()?;
                    } else {
                        let end = self.word_end(start + 1);
                        self.pos = end;
                        if end == start + 1 {
                            self.push(Tok::Dot, start, end);
                        } else {
                            self.push(Tok::Field(text[start + 1..end].to_string()), start, end);
                        }
                    }
                }
                b'+' | b'-' | b'0'..=b'9' => self.number()?,
                _ => {
                    let ch = text[start..].chars().next().unwrap_or(' ');
                    if !is_alnum(ch) {
                        return Err(self.err(start, format!("unexpected {ch:?} in command")));
                    }
                    let end = self.word_end(start);
                    self.pos = end;
                    self.push(Tok::Ident(text[start..end].to_string()), start, end);
                }
            }
        }
    }

    fn single(&mut self, tok: Tok) {
        let start = self.pos;
        self.pos += 1;
        self.push(tok, start, self.pos);
    }

    fn word_end(&self, from: usize) -> usize {
        let mut end = from;
        for (i, ch) in self.text[from..].char_indices() {
            if !is_alnum(ch) {
                return from + i;
            }
            end = from + i + ch.len_utf8();
        }
        end
    }

    fn quoted(&mut self) -> Result<(), TemplateError> {
        let start = self.pos;
        let mut out = String::new();
        let mut chars = self.text[start + 1..].char_indices();
        loop {
            let Some((i, ch)) = chars.next() else {
                return Err(self.err(start, "unterminated quoted string"));
            };
            match ch {
                '"' => {
                    self.pos = start + 1 + i + 1;
                    break;
                }
                '\n' => return Err(self.err(start, "unterminated quoted string")),
                '\\' => {
                    let Some((_, e)) = chars.next() else {
                        return Err(self.err(start, "unterminated quoted string"));
                    };
                    let simple = match e {
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        'f' => Some('\x0c'),
                        'v' => Some('\x0b'),
                        '\\' => Some('\\'),
                        '"' => Some('"'),
                        '\'' => Some('\''),
                        _ => None,
                    };
                    if let Some(s) = simple {
                        out.push(s);
                        continue;
                    }
                    let digits = match e {
                        'x' => 2,
                        'u' => 4,
                        'U' => 8,
                        _ => return Err(self.err(start, "invalid syntax in quoted string")),
                    };
                    let mut code = 0u32;
                    for _ in 0..digits {
                        let d = chars.next().and_then(|(_, d)| d.to_digit(16));
                        let Some(d) = d else {
                            return Err(self.err(start, "invalid syntax in quoted string"));
                        };
                        code = code * 16 + d;
                    }
                    match char::from_u32(code) {
                        Some(c) => out.push(c),
                        None => return Err(self.err(start, "invalid syntax in quoted string")),
                    }
                }
                c => out.push(c),
            }
        }
        self.push(Tok::Str(out), start, self.pos);
        Ok(())
    }

    fn char_const(&mut self) -> Result<(), TemplateError> {
        let start = self.pos;
        let rest = &self.text[start + 1..];
        let mut it = rest.char_indices();
        let (ch, len) = match it.next() {
            Some((_, '\\')) => match it.next() {
                Some((i, e)) => {
                    let c = match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' => '\\',
                        '\'' => '\'',
                        '0' => '\0',
                        _ => return Err(self.err(start, "invalid syntax in character constant")),
                    };
                    (c, i + e.len_utf8())
                }
                None => return Err(self.err(start, "unterminated character constant")),
            },
            Some((i, c)) if c != '\'' => (c, i + c.len_utf8()),
            _ => return Err(self.err(start, "malformed character constant")),
        };
        if !rest[len..].starts_with('\'') {
            return Err(self.err(start, "unterminated character constant"));
        }
        self.pos = start + 1 + len + 1;
        self.push(Tok::Num(Value::from(ch as u32)), start, self.pos);
        Ok(())
    }

    fn number(&mut self) -> Result<(), TemplateError> {
        let start = self.pos;
        let b = self.text.as_bytes();
        let mut end = start;
        if matches!(b.get(end), Some(b'+' | b'-')) {
            end += 1;
        }
        while end < b.len()
            && (b[end].is_ascii_alphanumeric()
                || b[end] == b'.'
                || b[end] == b'_'
                || (matches!(b[end], b'+' | b'-') && matches!(b[end - 1], b'e' | b'E')))
        {
            end += 1;
        }
        let word = &self.text[start..end];
        self.pos = end;
        let Some(v) = parse_number(word) else {
            return Err(self.err(start, format!("bad number syntax: {word:?}")));
        };
        self.push(Tok::Num(v), start, end);
        Ok(())
    }
}

fn parse_number(word: &str) -> Option<Value> {
    let clean = word.replace('_', "");
    let (neg, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let lower = digits.to_ascii_lowercase();
    let radix = if lower.starts_with("0x") {
        Some((16, &digits[2..]))
    } else if lower.starts_with("0o") {
        Some((8, &digits[2..]))
    } else if lower.starts_with("0b") {
        Some((2, &digits[2..]))
    } else if digits.len() > 1
        && digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        Some((8, &digits[1..]))
    } else {
        None
    };
    if let Some((radix, d)) = radix {
        let n = i64::from_str_radix(d, radix).ok()?;
        return Some(Value::from(if neg { -n } else { n }));
    }
    if digits.is_empty()
        || !digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b"eE.+-".contains(&b))
    {
        return None;
    }
    if let Ok(n) = digits.parse::<i64>() {
        return Some(Value::from(if neg { -n } else { n }));
    }
    if !neg && let Ok(n) = digits.parse::<u64>() {
        return Some(Value::from(n));
    }
    let f: f64 = digits.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    let f = if neg { -f } else { f };
    // Go keeps an integral float constant an integer.
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Some(Value::from(f as i64));
    }
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// Parses template text.
pub fn parse(text: &str) -> Result<Vec<Node>, TemplateError> {
    let items = Lexer {
        text,
        pos: 0,
        items: Vec::new(),
        paren: 0,
    }
    .run()?;
    let mut p = Parser {
        text,
        items,
        at: 0,
        vars: vec!["$".to_string()],
        depth: 0,
        loops: 0,
    };
    let (nodes, end) = p.list()?;
    match end {
        Close::Eof => Ok(nodes),
        Close::End(pos) => Err(p.err(pos, "unexpected {{end}}")),
        Close::Else(pos, _) => Err(p.err(pos, "unexpected {{else}}")),
    }
}

enum Close {
    Eof,
    End(usize),
    /// `{{else}}` (None) or `{{else if …}}`/`{{else with …}}`.
    Else(usize, Option<Kind>),
}

struct Parser<'a> {
    text: &'a str,
    items: Vec<Item>,
    at: usize,
    vars: Vec<String>,
    depth: usize,
    loops: usize,
}

impl Parser<'_> {
    fn err(&self, pos: usize, message: impl Into<String>) -> TemplateError {
        TemplateError::Parse {
            line: line_of(self.text, pos),
            message: message.into(),
        }
    }

    fn peek(&self) -> &Item {
        &self.items[self.at.min(self.items.len() - 1)]
    }

    fn next(&mut self) -> Item {
        let item = self.peek().clone();
        if self.at < self.items.len() {
            self.at += 1;
        }
        item
    }

    /// The next item that is not a space.
    fn next_non_space(&mut self) -> Item {
        loop {
            let item = self.next();
            if item.tok != Tok::Space {
                return item;
            }
        }
    }

    fn peek_non_space(&mut self) -> Item {
        let save = self.at;
        let item = self.next_non_space();
        self.at = save;
        item
    }

    fn expect_right(&mut self, context: &str) -> Result<(), TemplateError> {
        let item = self.next_non_space();
        if item.tok != Tok::Right {
            return Err(self.err(
                item.pos,
                format!("unexpected {} in {context}", describe(&item.tok)),
            ));
        }
        Ok(())
    }

    fn enter(&mut self, pos: usize) -> Result<(), TemplateError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(pos, format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    /// Nodes up to `{{end}}`, `{{else}}` or the end of the text.
    fn list(&mut self) -> Result<(Vec<Node>, Close), TemplateError> {
        let mut nodes = Vec::new();
        loop {
            let item = self.next();
            match item.tok {
                Tok::Eof => return Ok((nodes, Close::Eof)),
                Tok::Text(t) => nodes.push(Node::Text(t)),
                Tok::Left => {
                    let word = self.peek_non_space();
                    if let Tok::Ident(w) = &word.tok {
                        match w.as_str() {
                            "end" => {
                                self.next_non_space();
                                self.expect_right("end")?;
                                return Ok((nodes, Close::End(word.pos)));
                            }
                            "else" => {
                                self.next_non_space();
                                let after = self.peek_non_space();
                                let chain = match &after.tok {
                                    Tok::Ident(k) if k == "if" => Some(Kind::If),
                                    Tok::Ident(k) if k == "with" => Some(Kind::With),
                                    _ => None,
                                };
                                if chain.is_some() {
                                    self.next_non_space();
                                } else {
                                    self.expect_right("else")?;
                                }
                                return Ok((nodes, Close::Else(word.pos, chain)));
                            }
                            "if" | "with" | "range" => {
                                self.next_non_space();
                                let kind = match w.as_str() {
                                    "if" => Kind::If,
                                    "with" => Kind::With,
                                    _ => Kind::Range,
                                };
                                nodes.push(self.branch(kind, word.pos)?);
                                continue;
                            }
                            "break" | "continue" => {
                                self.next_non_space();
                                if self.loops == 0 {
                                    return Err(self.err(
                                        word.pos,
                                        format!("{{{{{w}}}}} outside {{{{range}}}}"),
                                    ));
                                }
                                self.expect_right(w)?;
                                nodes.push(Node::Loop(w == "break"));
                                continue;
                            }
                            "define" | "template" | "block" => {
                                return Err(
                                    self.err(word.pos, format!("{{{{{w}}}}} is not supported"))
                                );
                            }
                            _ => {}
                        }
                    }
                    let pipe = self.pipeline("command", true)?;
                    nodes.push(Node::Action(pipe));
                }
                other => return Err(self.err(item.pos, format!("unexpected {}", describe(&other)))),
            }
        }
    }

    /// `if`/`with`/`range` after its keyword, through its `{{end}}`.
    fn branch(&mut self, kind: Kind, pos: usize) -> Result<Node, TemplateError> {
        self.enter(pos)?;
        let mark = self.vars.len();
        let name = match kind {
            Kind::If => "if",
            Kind::With => "with",
            Kind::Range => "range",
        };
        let pipe = self.pipeline(name, kind == Kind::Range)?;
        if kind == Kind::Range {
            self.loops += 1;
        }
        let (list, end) = self.list()?;
        if kind == Kind::Range {
            self.loops -= 1;
        }
        let else_list = match end {
            Close::Eof => {
                return Err(self.err(self.text.len(), format!("unexpected EOF in {name}")));
            }
            Close::End(_) => None,
            Close::Else(_, None) => {
                let (list, end) = self.list()?;
                match end {
                    Close::End(_) => Some(list),
                    Close::Else(p, _) => return Err(self.err(p, "expected end; found {{else}}")),
                    Close::Eof => {
                        return Err(self.err(self.text.len(), format!("unexpected EOF in {name}")));
                    }
                }
            }
            Close::Else(epos, Some(chain)) => {
                // `{{else if x}}…{{end}}` is `{{else}}{{if x}}…{{end}}{{end}}`: the
                // nested branch consumes the shared `{{end}}`.
                Some(vec![self.branch(chain, epos)?])
            }
        };
        self.vars.truncate(mark);
        self.depth -= 1;
        Ok(Node::Branch(Box::new(Branch {
            kind,
            pipe,
            list,
            else_list,
        })))
    }

    /// A pipeline up to `}}` (or `)` inside parentheses when `paren`).
    fn pipeline(&mut self, context: &str, allow_decl: bool) -> Result<Pipe, TemplateError> {
        self.pipeline_to(context, allow_decl, false)
    }

    fn pipeline_to(
        &mut self,
        context: &str,
        allow_decl: bool,
        paren: bool,
    ) -> Result<Pipe, TemplateError> {
        let first = self.peek_non_space();
        let mut pipe = Pipe {
            pos: first.pos,
            decl: Vec::new(),
            assign: false,
            cmds: Vec::new(),
        };
        // Declarations: `$x :=`, `$x =`, `$i, $e :=`.
        if let Tok::Var(_) = first.tok {
            let save = self.at;
            let mut names = Vec::new();
            let mut ok = None;
            loop {
                let v = self.next_non_space();
                let Tok::Var(name) = v.tok else { break };
                names.push((name, v.pos));
                let sep = self.next_non_space();
                match sep.tok {
                    Tok::Declare => {
                        ok = Some(false);
                        break;
                    }
                    Tok::Assign => {
                        ok = Some(true);
                        break;
                    }
                    Tok::Comma if allow_decl && names.len() < 2 => continue,
                    _ => break,
                }
            }
            match ok {
                Some(assign) => {
                    if names.len() > 1 && context != "range" {
                        return Err(
                            self.err(first.pos, format!("too many declarations in {context}"))
                        );
                    }
                    for (name, pos) in &names {
                        if assign {
                            if !self.vars.contains(name) {
                                return Err(self.err(*pos, format!("undefined variable {name:?}")));
                            }
                        } else {
                            self.vars.push(name.clone());
                        }
                    }
                    pipe.assign = assign;
                    pipe.decl = names.into_iter().map(|(n, _)| n).collect();
                }
                None => self.at = save,
            }
        }
        loop {
            let item = self.peek_non_space();
            match item.tok {
                Tok::Right if !paren => {
                    self.next_non_space();
                    break;
                }
                Tok::RParen if paren => {
                    self.next_non_space();
                    break;
                }
                Tok::Right | Tok::RParen | Tok::Eof => {
                    return Err(self.err(
                        item.pos,
                        format!("unexpected {} in {context}", describe(&item.tok)),
                    ));
                }
                _ => {}
            }
            let cmd = self.command(context)?;
            pipe.cmds.push(cmd);
        }
        if pipe.cmds.is_empty() {
            return Err(self.err(pipe.pos, format!("missing value for {context}")));
        }
        for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
            if let Some(a) = c.args.first()
                && !matches!(
                    a.kind,
                    ArgKind::Func(_) | ArgKind::Field(_) | ArgKind::Var(..) | ArgKind::Sub(..)
                )
            {
                return Err(self.err(
                    a.pos,
                    format!("non executable command in pipeline stage {}", i + 1),
                ));
            }
        }
        Ok(pipe)
    }

    /// One command: operands up to `|`, `}}` or `)`.
    fn command(&mut self, context: &str) -> Result<Cmd, TemplateError> {
        let mut args = Vec::new();
        let start = self.peek_non_space().pos;
        let mut end = start;
        loop {
            let item = self.peek_non_space();
            match item.tok {
                Tok::Pipe => {
                    self.next_non_space();
                    if args.is_empty() {
                        return Err(self.err(item.pos, "missing command"));
                    }
                    break;
                }
                Tok::Right | Tok::RParen | Tok::Eof => break,
                _ => {}
            }
            if !args.is_empty() && self.peek().tok != Tok::Space {
                let item = self.peek().clone();
                return Err(self.err(
                    item.pos,
                    format!("unexpected {} in operand", describe(&item.tok)),
                ));
            }
            let arg = self.operand(context)?;
            end = end.max(self.items[self.at - 1].end);
            args.push(arg);
        }
        if args.is_empty() {
            return Err(self.err(start, "empty command"));
        }
        Ok(Cmd {
            pos: start,
            text: self.text[start..end.max(start)].to_string(),
            args,
        })
    }

    /// A term and the field chain after it.
    fn operand(&mut self, context: &str) -> Result<Arg, TemplateError> {
        let item = self.next_non_space();
        let pos = item.pos;
        let kind = match item.tok {
            Tok::Dot => ArgKind::Dot,
            Tok::Field(name) => {
                let mut names = vec![name];
                names.extend(self.chain());
                ArgKind::Field(names)
            }
            Tok::Var(name) => {
                if !self.vars.contains(&name) {
                    return Err(self.err(pos, format!("undefined variable {name:?}")));
                }
                ArgKind::Var(name, self.chain())
            }
            Tok::Str(s) => ArgKind::Const(Value::String(s)),
            Tok::Num(n) => ArgKind::Const(n),
            Tok::Ident(w) => match w.as_str() {
                "true" => ArgKind::Const(Value::Bool(true)),
                "false" => ArgKind::Const(Value::Bool(false)),
                "nil" => ArgKind::Nil,
                f if FUNCTIONS.contains(&f) => ArgKind::Func(w),
                _ => return Err(self.err(pos, format!("function {w:?} not defined"))),
            },
            Tok::LParen => {
                self.enter(pos)?;
                let pipe = self.pipeline_to("parenthesized pipeline", false, true)?;
                self.depth -= 1;
                ArgKind::Sub(Box::new(pipe), self.chain())
            }
            other => {
                return Err(self.err(pos, format!("unexpected {} in {context}", describe(&other))));
            }
        };
        if matches!(kind, ArgKind::Dot | ArgKind::Const(_) | ArgKind::Nil)
            && let Tok::Field(_) = self.peek().tok
        {
            return Err(self.err(self.peek().pos, "unexpected . after term"));
        }
        let end = self.items[self.at - 1].end;
        Ok(Arg {
            pos,
            text: self.text[pos..end].to_string(),
            kind,
        })
    }

    /// `.A.B` straight after a term.
    fn chain(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        while let Tok::Field(name) = &self.peek().tok {
            names.push(name.clone());
            self.next();
        }
        names
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Text(_) => "text".into(),
        Tok::Left => "\"{{\"".into(),
        Tok::Right => "\"}}\"".into(),
        Tok::Space => "space".into(),
        Tok::Field(f) => format!("<.{f}>"),
        Tok::Dot => "<.>".into(),
        Tok::Var(v) => format!("<{v}>"),
        Tok::Ident(i) => format!("<{i}>"),
        Tok::Str(s) => format!("{s:?}"),
        Tok::Num(n) => format!("<{n}>"),
        Tok::Pipe => "\"|\"".into(),
        Tok::LParen => "\"(\"".into(),
        Tok::RParen => "\")\"".into(),
        Tok::Declare => "\":=\"".into(),
        Tok::Assign => "\"=\"".into(),
        Tok::Comma => "\",\"".into(),
        Tok::Eof => "EOF".into(),
    }
}
