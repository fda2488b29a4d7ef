//! The functions, and values printed as Go's `fmt` prints them.

use std::cmp::Ordering;

use serde_json::Value;

use super::exec::{Val, arg_json, owned, print_all, printf_all, to_json_text, truth};
use super::{Functions, MAX_OUTPUT};

/// The Go type a JSON value has once decoded into an `interface{}` (integers say `int`,
/// as Docker's typed fields mostly are).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// A value as `%v` prints it.
pub fn go_print(v: &Value) -> String {
    let mut out = String::new();
    print_into(&mut out, v);
    out
}

fn print_into(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number(n)),
        Value::String(s) => out.push_str(s),
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print_into(out, e);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push_str("map[");
            for (i, (k, e)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                print_into(out, e);
            }
            out.push(']');
        }
    }
}

fn number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    go_float(n.as_f64().unwrap_or(0.0))
}

/// `%v` of a float64 (Go's `%g` with the shortest digits): exponent form below 1e-4
/// and from 1e6, as `fmt.Println(1e6)` prints `1e+06`.
pub fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let s = f.to_string();
    s.strip_suffix(".0").map_or(s.clone(), str::to_string)
}

/// `json` as Docker's: encoding/json without HTML escaping.
pub fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn is_string(v: &Value) -> bool {
    matches!(v, Value::String(_))
}

/// `fmt.Sprint`: spaces between operands when neither is a string.
pub fn sprint(args: &[&Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !is_string(a) && !is_string(args[i - 1]) {
            out.push(' ');
        }
        print_into(&mut out, a);
    }
    out
}

/// `fmt.Sprintln`: spaces between all operands, and a newline.
pub fn sprintln(args: &[&Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        print_into(&mut out, a);
    }
    out.push('\n');
    out
}

/// Go's `strconv.Quote`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Spec {
    minus: bool,
    plus: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

fn bad_verb(verb: char, v: &Value) -> String {
    match v {
        Value::Null => format!("%!{verb}(<nil>)"),
        v => format!("%!{verb}({}={})", type_name(v), go_print(v)),
    }
}

fn pad(spec: &Spec, body: String, numeric: bool) -> String {
    let width = spec.width.unwrap_or(0).min(MAX_OUTPUT);
    let len = body.chars().count();
    if len >= width {
        return body;
    }
    let fill = width - len;
    if spec.minus {
        format!("{body}{}", " ".repeat(fill))
    } else if spec.zero && numeric {
        let (sign, digits) = match body.strip_prefix(['-', '+']) {
            Some(d) => (&body[..1], d),
            None => ("", body.as_str()),
        };
        format!("{sign}{}{digits}", "0".repeat(fill))
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

fn one(verb: char, spec: &Spec, v: &Value) -> String {
    let int = v.as_i64().map(i128::from).or(v.as_u64().map(i128::from));
    let is_int = matches!(v, Value::Number(n) if !n.is_f64());
    match verb {
        'v' => pad(spec, go_print(v), false),
        's' => match v {
            Value::String(s) => {
                let s = match spec.prec {
                    Some(p) => s.chars().take(p).collect(),
                    None => s.clone(),
                };
                pad(spec, s, false)
            }
            Value::Array(_) | Value::Object(_) => pad(spec, go_print(v), false),
            _ => bad_verb(verb, v),
        },
        'q' => match (v, int) {
            (Value::String(s), _) => pad(spec, quote(s), false),
            (_, Some(i)) if is_int => match u32::try_from(i).ok().and_then(char::from_u32) {
                Some(c) => pad(spec, format!("'{c}'"), false),
                None => bad_verb(verb, v),
            },
            _ => bad_verb(verb, v),
        },
        'd' | 'x' | 'X' | 'o' | 'b' | 'c' if is_int => {
            let i = int.unwrap_or(0);
            let body = match verb {
                'd' if spec.plus && i >= 0 => format!("+{i}"),
                'd' => i.to_string(),
                'x' => sign_radix(i, |u| format!("{u:x}")),
                'X' => sign_radix(i, |u| format!("{u:X}")),
                'o' => sign_radix(i, |u| format!("{u:o}")),
                'b' => sign_radix(i, |u| format!("{u:b}")),
                _ => u32::try_from(i)
                    .ok()
                    .and_then(char::from_u32)
                    .map_or("\u{fffd}".to_string(), String::from),
            };
            pad(spec, body, verb != 'c')
        }
        'x' | 'X' if is_string(v) => {
            let s = v.as_str().unwrap_or_default();
            let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            pad(
                spec,
                if verb == 'X' { hex.to_uppercase() } else { hex },
                false,
            )
        }
        'f' | 'F' | 'e' | 'g' if matches!(v, Value::Number(n) if n.is_f64()) => {
            let f = v.as_f64().unwrap_or(0.0);
            let body = match verb {
                'f' | 'F' => format!("{f:.*}", spec.prec.unwrap_or(6).min(64)),
                'e' => {
                    let s = format!("{f:.*e}", spec.prec.unwrap_or(6).min(64));
                    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
                    let e: i32 = e.parse().unwrap_or(0);
                    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
                }
                _ => go_float(f),
            };
            let body = if spec.plus && f >= 0.0 {
                format!("+{body}")
            } else {
                body
            };
            pad(spec, body, true)
        }
        't' => match v {
            Value::Bool(b) => pad(spec, b.to_string(), false),
            _ => bad_verb(verb, v),
        },
        _ => bad_verb(verb, v),
    }
}

fn sign_radix(i: i128, f: impl Fn(u128) -> String) -> String {
    if i < 0 {
        format!("-{}", f(i.unsigned_abs()))
    } else {
        f(i as u128)
    }
}

/// `fmt.Sprintf` for the verbs templates use: `%v %s %q %d %x %X %o %b %c %f %e %g %t
/// %%`, flags `-+0`, width and precision.
pub fn printf(format: &str, args: &[&Value]) -> String {
    let mut out = String::new();
    let mut next = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec {
            minus: false,
            plus: false,
            zero: false,
            width: None,
            prec: None,
        };
        while let Some(&f) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '0' => spec.zero = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let digits = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
            let mut n: Option<usize> = None;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
                chars.next();
            }
            n
        };
        spec.width = digits(&mut chars);
        if chars.peek() == Some(&'.') {
            chars.next();
            spec.prec = Some(digits(&mut chars).unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        out.push_str(&one(verb, &spec, arg));
        if out.len() > MAX_OUTPUT {
            break;
        }
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        for (i, a) in args[next..].iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match a {
                Value::Null => out.push_str("<nil>"),
                a => out.push_str(&format!("{}={}", type_name(a), go_print(a))),
            }
        }
        out.push(')');
    }
    out
}

/// Go's `strings.Title`: each word's first letter in upper case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_sep = true;
    for c in s.chars() {
        if prev_sep {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev_sep = if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else {
            !(c.is_alphanumeric())
        };
    }
    out
}

fn want_string(v: &Value) -> Result<&str, String> {
    match v {
        Value::String(s) => Ok(s),
        Value::Null => Err("invalid value; expected string".to_string()),
        v => Err(format!(
            "wrong type for value; expected string; got {}",
            type_name(v)
        )),
    }
}

fn want_int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) if !n.is_f64() => n
            .as_i64()
            .ok_or_else(|| format!("{} overflows int", go_print(v))),
        Value::Null => Err("invalid value; expected int".to_string()),
        v => Err(format!(
            "wrong type for value; expected int; got {}",
            type_name(v)
        )),
    }
}

fn arity(name: &str, got: usize, want: usize) -> Result<(), String> {
    if got != want {
        return Err(format!(
            "wrong number of args for {name}: want {want} got {got}"
        ));
    }
    Ok(())
}

#[derive(PartialEq)]
enum Basic<'v> {
    Bool(bool),
    Num(f64),
    Str(&'v str),
    Nil,
}

fn basic(v: &Value) -> Option<Basic<'_>> {
    match v {
        Value::Null => Some(Basic::Nil),
        Value::Bool(b) => Some(Basic::Bool(*b)),
        Value::Number(n) => n.as_f64().map(Basic::Num),
        Value::String(s) => Some(Basic::Str(s)),
        _ => None,
    }
}

fn eq(a: &Value, b: &Value) -> Result<bool, String> {
    let (Some(x), Some(y)) = (basic(a), basic(b)) else {
        return Err(format!(
            "error calling eq: non-comparable types {}: {}, {}: {}",
            go_print(a),
            type_name(a),
            type_name(b),
            go_print(b)
        ));
    };
    match (&x, &y) {
        (Basic::Nil, _) | (_, Basic::Nil) => Ok(x == y),
        (Basic::Bool(_), Basic::Bool(_))
        | (Basic::Num(_), Basic::Num(_))
        | (Basic::Str(_), Basic::Str(_)) => Ok(x == y),
        _ => Err("error calling eq: incompatible types for comparison".to_string()),
    }
}

fn compare(name: &str, a: &Value, b: &Value) -> Result<Ordering, String> {
    match (basic(a), basic(b)) {
        (Some(Basic::Num(x)), Some(Basic::Num(y))) => {
            Ok(x.partial_cmp(&y).unwrap_or(Ordering::Equal))
        }
        (Some(Basic::Str(x)), Some(Basic::Str(y))) => Ok(x.cmp(y)),
        (Some(Basic::Num(_) | Basic::Str(_)), Some(Basic::Num(_) | Basic::Str(_))) => Err(format!(
            "error calling {name}: incompatible types for comparison"
        )),
        _ => Err(format!("error calling {name}: invalid type for comparison")),
    }
}

fn index_one(item: &Value, key: &Value) -> Result<Value, String> {
    match item {
        Value::Array(a) => {
            let i = match key {
                Value::Number(n) if !n.is_f64() => n.as_i64().unwrap_or(-1),
                Value::Null => {
                    return Err("error calling index: cannot index slice/array with nil".into());
                }
                k => {
                    return Err(format!(
                        "error calling index: cannot index slice/array with type {}",
                        type_name(k)
                    ));
                }
            };
            usize::try_from(i)
                .ok()
                .and_then(|i| a.get(i))
                .cloned()
                .ok_or_else(|| format!("error calling index: index out of range: {i}"))
        }
        Value::Object(m) => match key {
            Value::String(k) => Ok(m.get(k).cloned().unwrap_or(Value::Null)),
            k => Err(format!(
                "error calling index: value has type {}; should be string",
                type_name(k)
            )),
        },
        Value::String(s) => {
            let i = want_int(key).map_err(|e| format!("error calling index: {e}"))?;
            usize::try_from(i)
                .ok()
                .and_then(|i| s.as_bytes().get(i))
                .map(|b| Value::from(*b))
                .ok_or_else(|| format!("error calling index: index out of range: {i}"))
        }
        Value::Null => Err("error calling index: index of untyped nil".into()),
        v => Err(format!(
            "error calling index: can't index item of type {}",
            type_name(v)
        )),
    }
}

/// Calls function `name` (known to the parser) on its evaluated arguments.
pub fn call<'a>(name: &str, vals: Vec<Val<'a>>, functions: Functions) -> Result<Val<'a>, String> {
    let js: Vec<&Value> = vals.iter().map(arg_json).collect();
    let n = js.len();
    if functions == Functions::Header
        && matches!(
            name,
            "json" | "split" | "join" | "title" | "lower" | "upper" | "truncate"
        )
    {
        let want = match name {
            "split" | "join" | "truncate" => 2,
            _ => 1,
        };
        arity(name, n, want)?;
        return Ok(owned(Value::String(match js[0] {
            Value::String(s) => s.clone(),
            v => go_print(v),
        })));
    }
    let string = |v: String| Ok(owned(Value::String(v)));
    match name {
        "not" => {
            arity(name, n, 1)?;
            Ok(owned(Value::Bool(!truth(js[0]))))
        }
        "len" => {
            arity(name, n, 1)?;
            let len = match js[0] {
                Value::String(s) => s.len(),
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                Value::Null => return Err("error calling len: len of nil pointer".into()),
                v => return Err(format!("error calling len: len of type {}", type_name(v))),
            };
            Ok(owned(Value::from(len)))
        }
        "index" => {
            if n == 0 {
                return Err("wrong number of args for index: want at least 1 got 0".into());
            }
            let mut item = js[0].clone();
            for key in &js[1..] {
                item = index_one(&item, key)?;
            }
            Ok(owned(item))
        }
        "slice" => {
            if n == 0 {
                return Err("wrong number of args for slice: want at least 1 got 0".into());
            }
            let mut idx = Vec::new();
            for k in &js[1..] {
                idx.push(want_int(k).map_err(|e| format!("error calling slice: {e}"))?);
            }
            if idx.len() > 2 {
                return Err("error calling slice: too many slice indexes".into());
            }
            let len = match js[0] {
                Value::String(s) => s.len(),
                Value::Array(a) => a.len(),
                v => {
                    return Err(format!(
                        "error calling slice: can't slice item of type {}",
                        type_name(v)
                    ));
                }
            };
            let from = idx.first().copied().unwrap_or(0);
            let to = idx.get(1).copied().unwrap_or(len as i64);
            if from < 0 || to < from || to > len as i64 {
                return Err(format!("error calling slice: index out of range: {to}"));
            }
            let (from, to) = (from as usize, to as usize);
            match js[0] {
                Value::String(s) => match s.get(from..to) {
                    Some(t) => string(t.to_string()),
                    None => Err("error calling slice: slice splits a character".into()),
                },
                Value::Array(a) => Ok(owned(Value::Array(a[from..to].to_vec()))),
                _ => unreachable!("checked above"),
            }
        }
        "print" => string(print_all(&vals, false)),
        "println" => string(print_all(&vals, true)),
        "printf" => {
            if n == 0 {
                return Err("wrong number of args for printf: want at least 1 got 0".into());
            }
            let format = want_string(js[0])?.to_string();
            string(printf_all(&format, &vals[1..]))
        }
        "eq" | "ne" => {
            if n < 2 {
                return Err(format!(
                    "error calling {name}: missing argument for comparison"
                ));
            }
            if name == "ne" {
                arity(name, n, 2)?;
                return Ok(owned(Value::Bool(
                    !eq(js[0], js[1]).map_err(|e| e.replacen("eq", "ne", 1))?,
                )));
            }
            let mut any = false;
            for b in &js[1..] {
                any |= eq(js[0], b)?;
            }
            Ok(owned(Value::Bool(any)))
        }
        "lt" | "le" | "gt" | "ge" => {
            arity(name, n, 2)?;
            let ord = compare(name, js[0], js[1])?;
            let r = match name {
                "lt" => ord == Ordering::Less,
                "le" => ord != Ordering::Greater,
                "gt" => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            };
            Ok(owned(Value::Bool(r)))
        }
        "json" => {
            arity(name, n, 1)?;
            string(to_json_text(&vals[0]))
        }
        "split" => {
            arity(name, n, 2)?;
            let s = want_string(js[0])?;
            let sep = want_string(js[1])?;
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| Value::String(c.to_string())).collect()
            } else {
                s.split(sep).map(|p| Value::String(p.to_string())).collect()
            };
            Ok(owned(Value::Array(parts)))
        }
        "join" => {
            arity(name, n, 2)?;
            let Value::Array(items) = js[0] else {
                return Err(format!(
                    "wrong type for value; expected []string; got {}",
                    type_name(js[0])
                ));
            };
            let mut parts = Vec::with_capacity(items.len());
            for i in items {
                match i {
                    Value::String(s) => parts.push(s.as_str()),
                    _ => {
                        return Err(
                            "wrong type for value; expected []string; got []interface {}".into(),
                        );
                    }
                }
            }
            let sep = want_string(js[1])?;
            string(parts.join(sep))
        }
        "title" => {
            arity(name, n, 1)?;
            string(title(want_string(js[0])?))
        }
        "lower" => {
            arity(name, n, 1)?;
            string(want_string(js[0])?.to_lowercase())
        }
        "upper" => {
            arity(name, n, 1)?;
            string(want_string(js[0])?.to_uppercase())
        }
        "pad" => {
            arity(name, n, 3)?;
            let s = want_string(js[0])?;
            let before = want_int(js[1])?;
            let after = want_int(js[2])?;
            if s.is_empty() {
                return string(String::new());
            }
            if before < 0 || after < 0 {
                return Err("error calling pad: negative Repeat count".into());
            }
            if before as u64 + after as u64 > MAX_OUTPUT as u64 {
                return Err(format!("error calling pad: longer than {MAX_OUTPUT} bytes"));
            }
            string(format!(
                "{}{s}{}",
                " ".repeat(before as usize),
                " ".repeat(after as usize)
            ))
        }
        "truncate" => {
            arity(name, n, 2)?;
            let s = want_string(js[0])?;
            let len = want_int(js[1])?;
            if (s.len() as i64) < len {
                return string(s.to_string());
            }
            if len < 0 {
                return Err("error calling truncate: slice bounds out of range".into());
            }
            let mut cut = len as usize;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            string(s[..cut].to_string())
        }
        _ => Err(format!("function {name:?} not defined")),
    }
}
