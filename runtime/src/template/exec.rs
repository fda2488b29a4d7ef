//! Running a parsed template on a JSON value, as Go's `text/template` runs one on a
//! `map[string]interface{}`.

use serde_json::Value;

use super::format::{go_print, json_text, printf, sprint, sprintln, type_name};
use super::parse::{Arg, ArgKind, Branch, Cmd, Kind, Node, Pipe};
use super::{Functions, MAX_OUTPUT, MAX_STEPS, TemplateError};

/// A value during execution: Go's invalid `reflect.Value` (a missing map key), or JSON.
#[derive(Debug, Clone)]
pub enum Val<'a> {
    Missing,
    Ref(&'a Value),
    Own(Value),
}

const NULL: Value = Value::Null;

impl<'a> Val<'a> {
    fn json(&self) -> &Value {
        match self {
            Val::Missing => &NULL,
            Val::Ref(v) => v,
            Val::Own(v) => v,
        }
    }

    fn truth(&self) -> bool {
        truth(self.json())
    }

    /// What a pipeline yields: Go turns a nil interface into an invalid value.
    fn settle(self) -> Self {
        if self.json().is_null() {
            Val::Missing
        } else {
            self
        }
    }

    fn size(&self) -> usize {
        match self {
            Val::Own(v) => approx_size(v),
            _ => 0,
        }
    }
}

fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => 8 + a.iter().map(approx_size).sum::<usize>(),
        Value::Object(m) => {
            8 + m
                .iter()
                .map(|(k, v)| k.len() + approx_size(v))
                .sum::<usize>()
        }
        _ => 8,
    }
}

/// Go's truthiness.
pub fn truth(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

enum Flow {
    Break,
    Continue,
    Fail(TemplateError),
}

impl From<TemplateError> for Flow {
    fn from(e: TemplateError) -> Self {
        Flow::Fail(e)
    }
}

struct State<'a> {
    text: &'a str,
    vars: Vec<(String, Val<'a>)>,
    out: String,
    steps: u64,
    made: usize,
    functions: Functions,
    strict: bool,
}

pub fn execute(
    text: &str,
    nodes: &[Node],
    data: &Value,
    functions: Functions,
    strict: bool,
) -> Result<String, TemplateError> {
    let mut s = State {
        text,
        vars: vec![("$".to_string(), Val::Ref(data))],
        out: String::new(),
        steps: 0,
        made: 0,
        functions,
        strict,
    };
    match s.walk(&Val::Ref(data), nodes) {
        Ok(()) => Ok(s.out),
        Err(Flow::Fail(e)) => Err(e),
        // The parser allows break/continue only inside range.
        Err(_) => Ok(s.out),
    }
}

impl<'a> State<'a> {
    fn err(&self, pos: usize, context: &str, message: impl Into<String>) -> TemplateError {
        let before = &self.text[..pos.min(self.text.len())];
        let line = 1 + before.matches('\n').count();
        let col = before.rfind('\n').map_or(pos, |nl| pos - nl - 1);
        TemplateError::Exec {
            line,
            col,
            context: context.to_string(),
            message: message.into(),
        }
    }

    fn step(&mut self, pos: usize, context: &str) -> Result<(), TemplateError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(self.err(pos, context, format!("more than {MAX_STEPS} steps")));
        }
        Ok(())
    }

    fn write(&mut self, pos: usize, context: &str, text: &str) -> Result<(), TemplateError> {
        if self.out.len() + text.len() > MAX_OUTPUT {
            return Err(self.err(
                pos,
                context,
                format!("output longer than {MAX_OUTPUT} bytes"),
            ));
        }
        self.out.push_str(text);
        Ok(())
    }

    /// Counts a value a function made against the output bound.
    fn made(&mut self, pos: usize, context: &str, v: Val<'a>) -> Result<Val<'a>, TemplateError> {
        self.made += v.size();
        if self.made > 4 * MAX_OUTPUT {
            return Err(self.err(pos, context, "values larger than the output bound"));
        }
        Ok(v)
    }

    fn walk(&mut self, dot: &Val<'a>, nodes: &[Node]) -> Result<(), Flow> {
        for node in nodes {
            match node {
                Node::Text(t) => self.write(0, "", t)?,
                Node::Action(pipe) => {
                    let v = self.pipe(dot, pipe)?;
                    if pipe.decl.is_empty() {
                        let text = match &v {
                            Val::Missing => "<no value>".to_string(),
                            v => go_print(v.json()),
                        };
                        let ctx = pipe_text(pipe);
                        self.write(pipe.pos, &ctx, &text)?;
                    }
                }
                Node::Branch(b) => {
                    let mark = self.vars.len();
                    let r = self.branch(dot, b);
                    self.vars.truncate(mark);
                    r?;
                }
                Node::Loop(true) => return Err(Flow::Break),
                Node::Loop(false) => return Err(Flow::Continue),
            }
        }
        Ok(())
    }

    fn branch(&mut self, dot: &Val<'a>, b: &Branch) -> Result<(), Flow> {
        match b.kind {
            Kind::If | Kind::With => {
                let v = self.pipe(dot, &b.pipe)?;
                if v.truth() {
                    if b.kind == Kind::With {
                        self.walk(&v, &b.list)
                    } else {
                        self.walk(dot, &b.list)
                    }
                } else if let Some(e) = &b.else_list {
                    self.walk(dot, e)
                } else {
                    Ok(())
                }
            }
            Kind::Range => self.range(dot, b),
        }
    }

    fn range(&mut self, dot: &Val<'a>, b: &Branch) -> Result<(), Flow> {
        // The declared variables are set per iteration, not by the pipeline.
        let decl = b.pipe.decl.clone();
        let bare = Pipe {
            decl: Vec::new(),
            ..b.pipe.clone()
        };
        let v = self.pipe(dot, &bare)?;
        let ctx = pipe_text(&b.pipe);
        let mark = self.vars.len();
        for name in &decl {
            if b.pipe.assign {
                continue;
            }
            self.vars.push((name.clone(), Val::Missing));
        }
        let items: Vec<(Val<'a>, Val<'a>)> = match &v {
            Val::Missing => Vec::new(),
            Val::Ref(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, e)| (Val::Own(Value::from(i)), Val::Ref(e)))
                .collect(),
            Val::Ref(Value::Object(m)) => m
                .iter()
                .map(|(k, e)| (Val::Own(Value::String(k.clone())), Val::Ref(e)))
                .collect(),
            Val::Own(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, e)| (Val::Own(Value::from(i)), Val::Own(e.clone())))
                .collect(),
            Val::Own(Value::Object(m)) => m
                .iter()
                .map(|(k, e)| (Val::Own(Value::String(k.clone())), Val::Own(e.clone())))
                .collect(),
            other => match other.json().as_i64() {
                Some(n) if n >= 0 => {
                    if n as u64 > MAX_STEPS {
                        return Err(self
                            .err(b.pipe.pos, &ctx, format!("more than {MAX_STEPS} steps"))
                            .into());
                    }
                    (0..n)
                        .map(|i| (Val::Own(Value::from(i)), Val::Own(Value::from(i))))
                        .collect()
                }
                _ => {
                    let shown = go_print(other.json());
                    return Err(self
                        .err(
                            b.pipe.pos,
                            &ctx,
                            format!("range can't iterate over {shown}"),
                        )
                        .into());
                }
            },
        };
        let empty = items.is_empty();
        for (key, elem) in items {
            self.step(b.pipe.pos, &ctx)?;
            match decl.len() {
                1 => self.set_var(&decl[0], elem.clone(), b.pipe.assign),
                2 => {
                    self.set_var(&decl[0], key, b.pipe.assign);
                    self.set_var(&decl[1], elem.clone(), b.pipe.assign);
                }
                _ => {}
            }
            let inner = self.vars.len();
            let r = self.walk(&elem, &b.list);
            self.vars.truncate(inner);
            match r {
                Ok(()) | Err(Flow::Continue) => {}
                Err(Flow::Break) => break,
                Err(e) => return Err(e),
            }
        }
        if empty && let Some(e) = &b.else_list {
            self.vars.truncate(mark);
            return self.walk(dot, e);
        }
        Ok(())
    }

    fn set_var(&mut self, name: &str, v: Val<'a>, _assign: bool) {
        if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            slot.1 = v;
        }
    }

    fn var(&self, name: &str) -> Val<'a> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map_or(Val::Missing, |(_, v)| v.clone())
    }

    fn pipe(&mut self, dot: &Val<'a>, pipe: &Pipe) -> Result<Val<'a>, TemplateError> {
        let mut value: Option<Val<'a>> = None;
        for cmd in &pipe.cmds {
            self.step(cmd.pos, &cmd.text)?;
            value = Some(self.command(dot, cmd, value)?);
        }
        let value = value.unwrap_or(Val::Missing).settle();
        match pipe.decl.len() {
            0 => {}
            _ if pipe.assign => self.set_var(&pipe.decl[0], value.clone(), true),
            _ => self.vars.push((pipe.decl[0].clone(), value.clone())),
        }
        Ok(value)
    }

    fn command(
        &mut self,
        dot: &Val<'a>,
        cmd: &Cmd,
        last: Option<Val<'a>>,
    ) -> Result<Val<'a>, TemplateError> {
        let first = &cmd.args[0];
        if let ArgKind::Func(name) = &first.kind {
            return self.call(dot, first, name, &cmd.args[1..], last);
        }
        if cmd.args.len() > 1 || last.is_some() {
            let message = match &first.kind {
                ArgKind::Field(names) | ArgKind::Var(_, names) | ArgKind::Sub(_, names)
                    if !names.is_empty() =>
                {
                    format!(
                        "{} is not a method but has arguments",
                        names[names.len() - 1]
                    )
                }
                _ => format!("can't give argument to non-function {}", first.text),
            };
            return Err(self.err(first.pos, &first.text, message));
        }
        if let ArgKind::Nil = first.kind {
            return Err(self.err(first.pos, &first.text, "nil is not a command"));
        }
        self.arg(dot, first)
    }

    fn arg(&mut self, dot: &Val<'a>, arg: &Arg) -> Result<Val<'a>, TemplateError> {
        match &arg.kind {
            ArgKind::Dot => Ok(dot.clone()),
            ArgKind::Nil => Ok(Val::Own(Value::Null)),
            ArgKind::Const(v) => Ok(Val::Own(v.clone())),
            ArgKind::Field(names) => self.fields(arg, dot.clone(), names),
            ArgKind::Var(name, names) => {
                let base = self.var(name);
                self.fields(arg, base, names)
            }
            ArgKind::Func(name) => self.call(dot, arg, name, &[], None),
            ArgKind::Sub(pipe, names) => {
                let base = self.pipe(dot, pipe)?;
                self.fields(arg, base, names)
            }
        }
    }

    fn fields(
        &self,
        arg: &Arg,
        mut v: Val<'a>,
        names: &[String],
    ) -> Result<Val<'a>, TemplateError> {
        for name in names {
            v = match v {
                Val::Missing => {
                    if self.strict {
                        return Err(self.err(
                            arg.pos,
                            &arg.text,
                            format!("nil data; no entry for key {name:?}"),
                        ));
                    }
                    Val::Missing
                }
                Val::Ref(Value::Object(m)) => match m.get(name) {
                    Some(x) => Val::Ref(x),
                    None => self.missing(arg, name)?,
                },
                Val::Own(Value::Object(mut m)) => match m.remove(name) {
                    Some(x) => Val::Own(x),
                    None => self.missing(arg, name)?,
                },
                other => {
                    let message = match other.json() {
                        Value::Null => format!("nil pointer evaluating interface {{}}.{name}"),
                        j => format!("can't evaluate field {name} in type {}", type_name(j)),
                    };
                    return Err(self.err(arg.pos, &arg.text, message));
                }
            };
        }
        Ok(v)
    }

    fn missing(&self, arg: &Arg, name: &str) -> Result<Val<'a>, TemplateError> {
        if self.strict {
            return Err(self.err(
                arg.pos,
                &arg.text,
                format!("map has no entry for key {name:?}"),
            ));
        }
        Ok(Val::Missing)
    }

    fn call(
        &mut self,
        dot: &Val<'a>,
        at: &Arg,
        name: &str,
        args: &[Arg],
        last: Option<Val<'a>>,
    ) -> Result<Val<'a>, TemplateError> {
        let fail = |s: &Self, message: String| s.err(at.pos, &at.text, message);
        // `and` and `or` evaluate their arguments only as far as needed.
        if name == "and" || name == "or" {
            let total = args.len() + usize::from(last.is_some());
            if total == 0 {
                return Err(fail(
                    self,
                    format!("wrong number of args for {name}: want at least 1 got 0"),
                ));
            }
            let mut value = Val::Missing;
            for a in args {
                value = self.arg(dot, a)?;
                if value.truth() == (name == "or") {
                    return Ok(value);
                }
            }
            if let Some(l) = last {
                value = l;
            }
            return Ok(value);
        }
        let mut vals: Vec<Val<'a>> = Vec::with_capacity(args.len() + 1);
        for a in args {
            vals.push(self.arg(dot, a)?);
        }
        if let Some(l) = last {
            vals.push(l);
        }
        let out = super::format::call(name, vals, self.functions).map_err(|m| fail(self, m))?;
        self.made(at.pos, &at.text, out)
    }
}

fn pipe_text(pipe: &Pipe) -> String {
    pipe.cmds
        .iter()
        .map(|c| c.text.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// JSON `null` and a missing value, as function arguments get them.
pub fn arg_json<'v>(v: &'v Val<'_>) -> &'v Value {
    v.json()
}

/// A function's result.
pub fn owned<'a>(v: Value) -> Val<'a> {
    Val::Own(v)
}

/// For `json`.
pub fn to_json_text(v: &Val<'_>) -> String {
    json_text(v.json())
}

/// Sprint/Sprintln/Sprintf on values.
pub fn print_all(vals: &[Val<'_>], newline: bool) -> String {
    let js: Vec<&Value> = vals.iter().map(Val::json).collect();
    if newline { sprintln(&js) } else { sprint(&js) }
}

/// Sprintf.
pub fn printf_all(format: &str, vals: &[Val<'_>]) -> String {
    let js: Vec<&Value> = vals.iter().map(Val::json).collect();
    printf(format, &js)
}
