//! Label and annotation templates: the part of Go's text/template that Prometheus rule files
//! use in practice. Variables `$value`, `$labels`, `$externalLabels`, `$externalURL` (and the
//! same as `.Value`, `.Labels.x`, …), field access (`$labels.service`), string and number
//! literals, pipelines (`$value | humanize`), and the functions `humanize`, `humanize1024`,
//! `humanizeDuration`, `humanizePercentage`, `printf`, `toUpper`, `toLower`, `title`.
//!
//! Anything else (`if`, `range`, `query`, parentheses, assignments, …) is refused when the rule
//! file is loaded, naming the construct, so a rule never expands to something unexpected.
//! Expansion errors at evaluation (say `humanize "abc"`) give Prometheus' text
//! `<error expanding template: …>` instead of failing the rule.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::error::AlertError;

/// What a template sees.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

/// One stage of a pipeline: a function with arguments, or a lone operand.
#[derive(Debug, Clone, PartialEq)]
struct Command {
    func: Option<Func>,
    args: Vec<Operand>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Humanize,
    Humanize1024,
    HumanizeDuration,
    HumanizePercentage,
    Printf,
    ToUpper,
    ToLower,
    Title,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    Labels,
    ExternalLabels,
    ExternalUrl,
    Value,
    /// `.` or `$`: the whole data.
    Data,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Root, Vec<String>),
    Str(String),
    Num(f64),
}

/// A value during expansion.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Num(f64),
    Map(BTreeMap<String, String>),
    /// A missing map key, printed as Go prints it.
    NoValue,
}

fn err(msg: impl Into<String>) -> AlertError {
    AlertError::Template(msg.into())
}

impl Template {
    /// Parses `source`; whatever the subset does not cover is an error naming it.
    pub fn parse(source: &str) -> Result<Template, AlertError> {
        let mut nodes = Vec::new();
        let mut rest = source;
        let mut trim_next = false;
        while !rest.is_empty() {
            let Some(open) = rest.find("{{") else {
                push_text(&mut nodes, rest, trim_next, false);
                break;
            };
            let inner_start = open + 2;
            let trim_left = rest[inner_start..].starts_with("- ")
                || rest[inner_start..].starts_with("-\t")
                || rest[inner_start..].starts_with("-\n");
            push_text(&mut nodes, &rest[..open], trim_next, trim_left);
            let after = &rest[inner_start..];
            let Some(close) = after.find("}}") else {
                return Err(err(format!("{source:?}: unclosed action")));
            };
            let mut inner = &after[..close];
            if trim_left {
                inner = &inner[1..];
            }
            trim_next = inner.ends_with(" -") || inner.ends_with("\t-") || inner.ends_with("\n-");
            if trim_next {
                inner = &inner[..inner.len() - 1];
            }
            let inner = inner.trim();
            if !(inner.starts_with("/*") && inner.ends_with("*/")) {
                let cmds = parse_pipeline(inner).map_err(|m| err(format!("{source:?}: {m}")))?;
                nodes.push(Node::Action(cmds));
            }
            rest = &after[close + 2..];
        }
        Ok(Template { source: source.to_string(), nodes })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Expands the template; errors become Prometheus' `<error expanding template: …>`.
    pub fn expand(&self, data: &Data<'_>) -> String {
        match self.try_expand(data) {
            Ok(s) => s,
            Err(m) => format!("<error expanding template: {m}>"),
        }
    }

    fn try_expand(&self, data: &Data<'_>) -> Result<String, String> {
        let mut out = String::new();
        for n in &self.nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(cmds) => {
                    let v = run(cmds, data)?;
                    out.push_str(&print(&v));
                }
            }
        }
        Ok(out)
    }
}

fn push_text(nodes: &mut Vec<Node>, text: &str, trim_start: bool, trim_end: bool) {
    let mut t = text;
    if trim_start {
        t = t.trim_start();
    }
    if trim_end {
        t = t.trim_end();
    }
    if !t.is_empty() {
        nodes.push(Node::Text(t.to_string()));
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Pipe,
    Word(String),
    Var(String),
    Field(String),
    Str(String),
    Num(f64),
}

fn tokens(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    let ident_end = |mut j: usize| {
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'.') {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'|' => {
                out.push(Token::Pipe);
                i += 1;
            }
            b'"' => {
                let mut v = String::new();
                let mut j = i + 1;
                let mut chars = s[j..].char_indices();
                let mut closed = false;
                while let Some((k, ch)) = chars.next() {
                    match ch {
                        '"' => {
                            j += k + 1;
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, 't')) => v.push('\t'),
                            Some((_, '\\')) => v.push('\\'),
                            Some((_, '"')) => v.push('"'),
                            Some((_, other)) => {
                                return Err(format!("unsupported escape \\{other}"));
                            }
                            None => break,
                        },
                        ch => v.push(ch),
                    }
                }
                if !closed {
                    return Err("unterminated string".into());
                }
                out.push(Token::Str(v));
                i = j;
            }
            b'`' => {
                let Some(end) = s[i + 1..].find('`') else {
                    return Err("unterminated raw string".into());
                };
                out.push(Token::Str(s[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'$' => {
                let j = ident_end(i + 1);
                out.push(Token::Var(s[i..j].to_string()));
                i = j;
            }
            b'.' => {
                let j = ident_end(i + 1);
                out.push(Token::Field(s[i..j].to_string()));
                i = j;
            }
            b'-' | b'+' | b'0'..=b'9' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'.' | b'_')) {
                    j += 1;
                }
                let lit = &s[i..j];
                let n = lit
                    .replace('_', "")
                    .parse::<f64>()
                    .map_err(|_| format!("bad number {lit:?}"))?;
                out.push(Token::Num(n));
                i = j;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let j = ident_end(i);
                out.push(Token::Word(s[i..j].to_string()));
                i = j;
            }
            b'(' | b')' => return Err("parentheses are not supported".into()),
            b':' | b'=' => return Err("variable assignments are not supported".into()),
            _ => return Err(format!("unexpected character {:?}", char::from(c))),
        }
    }
    Ok(out)
}

fn path(root: &str, full: &str) -> Result<Operand, String> {
    let mut parts = full.split('.');
    let first = parts.next().unwrap_or_default();
    let fields: Vec<String> = parts.map(String::from).collect();
    if fields.iter().any(|f| f.is_empty()) {
        return Err(format!("bad field access {full:?}"));
    }
    let (root, fields) = match (root, first) {
        ("$", "$") | (".", "") => {
            // `$.Labels.x` / `.Labels.x`: the first field names the member.
            let Some((member, rest)) = fields.split_first() else {
                return Ok(Operand::Path(Root::Data, Vec::new()));
            };
            let r = match member.as_str() {
                "Labels" => Root::Labels,
                "ExternalLabels" => Root::ExternalLabels,
                "ExternalURL" => Root::ExternalUrl,
                "Value" => Root::Value,
                other => return Err(format!("can't evaluate field {other}")),
            };
            (r, rest.to_vec())
        }
        ("$", "$labels") => (Root::Labels, fields),
        ("$", "$externalLabels") => (Root::ExternalLabels, fields),
        ("$", "$externalURL") => (Root::ExternalUrl, fields),
        ("$", "$value") => (Root::Value, fields),
        ("$", v) => return Err(format!("undefined variable {v:?}")),
        _ => return Err(format!("bad operand {full:?}")),
    };
    if matches!(root, Root::ExternalUrl | Root::Value) && !fields.is_empty() {
        return Err(format!(
            "{full:?}: a {} has no fields",
            if root == Root::Value { "number" } else { "string" }
        ));
    }
    Ok(Operand::Path(root, fields))
}

fn func(name: &str) -> Result<Func, String> {
    Ok(match name {
        "humanize" => Func::Humanize,
        "humanize1024" => Func::Humanize1024,
        "humanizeDuration" => Func::HumanizeDuration,
        "humanizePercentage" => Func::HumanizePercentage,
        "printf" => Func::Printf,
        "toUpper" => Func::ToUpper,
        "toLower" => Func::ToLower,
        "title" => Func::Title,
        "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block" | "break"
        | "continue" => return Err(format!("{name:?} actions are not supported")),
        other => return Err(format!("function {other:?} is not supported")),
    })
}

fn parse_pipeline(s: &str) -> Result<Vec<Command>, String> {
    if s.is_empty() {
        return Err("empty action".into());
    }
    let toks = tokens(s)?;
    let mut cmds = Vec::new();
    for (i, part) in toks.split(|t| *t == Token::Pipe).enumerate() {
        let Some((first, rest)) = part.split_first() else {
            return Err("missing command in pipeline".into());
        };
        let operand = |t: &Token| -> Result<Operand, String> {
            match t {
                Token::Var(v) => path("$", v),
                Token::Field(f) => path(".", f),
                Token::Str(s) => Ok(Operand::Str(s.clone())),
                Token::Num(n) => Ok(Operand::Num(*n)),
                Token::Word(w) => Err(format!(
                    "{w:?} used as an argument (functions need parentheses, which are not supported)"
                )),
                Token::Pipe => Err("unexpected |".into()),
            }
        };
        let cmd = match first {
            Token::Word(w) => {
                let f = func(w)?;
                let args = rest.iter().map(operand).collect::<Result<Vec<_>, _>>()?;
                let given = args.len() + usize::from(i > 0);
                let ok = match f {
                    Func::Printf => given >= 1,
                    _ => given == 1,
                };
                if !ok {
                    return Err(format!("wrong number of arguments for {w}: {given}"));
                }
                if f == Func::Printf
                    && let Some(Operand::Str(fmt)) = args.first()
                {
                    check_format(fmt)?;
                }
                Command { func: Some(f), args }
            }
            t => {
                if i > 0 {
                    return Err("only functions can follow |".into());
                }
                if !rest.is_empty() {
                    return Err(format!("can't give argument to non-function {s:?}"));
                }
                Command { func: None, args: vec![operand(t)?] }
            }
        };
        cmds.push(cmd);
    }
    Ok(cmds)
}

fn resolve(op: &Operand, d: &Data<'_>) -> Result<Val, String> {
    match op {
        Operand::Str(s) => Ok(Val::Str(s.clone())),
        Operand::Num(n) => Ok(Val::Num(*n)),
        Operand::Path(root, fields) => {
            let map = match root {
                Root::Value => return Ok(Val::Num(d.value)),
                Root::ExternalUrl => return Ok(Val::Str(d.external_url.to_string())),
                Root::Data => {
                    return Err("printing the whole template data is not supported".into());
                }
                Root::Labels => d.labels,
                Root::ExternalLabels => d.external_labels,
            };
            match fields.as_slice() {
                [] => Ok(Val::Map(map.clone())),
                [f] => Ok(map.get(f).map_or(Val::NoValue, |v| Val::Str(v.clone()))),
                _ => Err(format!("can't evaluate field {} of a string", fields[1])),
            }
        }
    }
}

fn run(cmds: &[Command], d: &Data<'_>) -> Result<Val, String> {
    let mut piped: Option<Val> = None;
    for c in cmds {
        let mut args = c.args.iter().map(|a| resolve(a, d)).collect::<Result<Vec<_>, _>>()?;
        args.extend(piped.take());
        let v = match c.func {
            None => args.pop().ok_or("empty command")?,
            Some(f) => call(f, args)?,
        };
        piped = Some(v);
    }
    piped.ok_or_else(|| "empty pipeline".to_string())
}

fn number(v: &Val) -> Result<f64, String> {
    match v {
        Val::Num(n) => Ok(*n),
        Val::Str(s) => {
            s.trim().parse::<f64>().map_err(|e| format!("strconv.ParseFloat: parsing {s:?}: {e}"))
        }
        other => Err(format!("can't convert {} to float", print(other))),
    }
}

fn call(f: Func, args: Vec<Val>) -> Result<Val, String> {
    let one = || args.first().cloned().ok_or_else(|| "missing argument".to_string());
    Ok(Val::Str(match f {
        Func::Humanize => humanize(number(&one()?)?),
        Func::Humanize1024 => humanize1024(number(&one()?)?),
        Func::HumanizeDuration => humanize_duration(number(&one()?)?),
        Func::HumanizePercentage => format!("{}%", go_g(number(&one()?)? * 100.0, 4)),
        Func::ToUpper => print(&one()?).to_uppercase(),
        Func::ToLower => print(&one()?).to_lowercase(),
        Func::Title => title(&print(&one()?)),
        Func::Printf => {
            let mut it = args.into_iter();
            let fmt = match it.next() {
                Some(Val::Str(s)) => s,
                Some(other) => {
                    return Err(format!("printf format must be a string, got {}", print(&other)));
                }
                None => return Err("printf needs a format".into()),
            };
            printf(&fmt, &it.collect::<Vec<_>>())?
        }
    }))
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

/// How Go's `fmt` prints a value with `%v` (what `{{ $value }}` shows).
fn print(v: &Val) -> String {
    match v {
        Val::Str(s) => s.clone(),
        Val::Num(n) => go_v(*n),
        Val::NoValue => "<no value>".into(),
        Val::Map(m) => {
            let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("map[{}]", inner.join(" "))
        }
    }
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v == f64::INFINITY {
        Some("+Inf".into())
    } else if v == f64::NEG_INFINITY {
        Some("-Inf".into())
    } else {
        None
    }
}

/// Go's exponent form: at least two exponent digits with a sign (`1e+06`).
fn go_exp(mantissa: &str, exp: i32) -> String {
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// Splits Rust's `{:e}` output (`1.5e-7`) into mantissa and exponent.
fn split_exp(s: &str) -> (&str, i32) {
    match s.split_once('e') {
        Some((m, e)) => (m, e.parse().unwrap_or(0)),
        None => (s, 0),
    }
}

/// `%v` of a float64 (strconv's `'g'` with the shortest digits): exponent form below 1e-4 and
/// from 1e6 on, as `fmt.Println(1e6)` prints `1e+06`.
pub fn go_v(v: f64) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let e = format!("{v:e}");
    let (m, exp) = split_exp(&e);
    if !(-4..6).contains(&exp) { go_exp(m, exp) } else { format!("{v}") }
}

/// `%.{prec}g` of a float64: `prec` significant digits, trailing zeros removed.
pub fn go_g(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let prec = prec.max(1);
    if v == 0.0 {
        return "0".into();
    }
    let e = format!("{v:.*e}", prec - 1);
    let (m, exp) = split_exp(&e);
    if exp < -4 || exp >= prec as i32 {
        go_exp(trim_zeros(m), exp)
    } else {
        let decimals = (prec as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
}

pub fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_g(v, 4))
}

pub fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_g(v, 4))
}

pub fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    if v == 0.0 {
        return format!("{}s", go_g(v, 4));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        return if days != 0 {
            format!("{sign}{days}d {h}h {m}m {s}s")
        } else if h != 0 {
            format!("{sign}{h}h {m}m {s}s")
        } else if m != 0 {
            format!("{sign}{m}m {s}s")
        } else {
            format!("{sign}{}s", go_g(v, 4))
        };
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_g(v, 4))
}

/// One `%` directive: flags, width, precision and verb.
struct Spec {
    minus: bool,
    plus: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
    verb: char,
}

const VERBS: &str = "vsdfFeEgGxXq%";

/// Splits a format string into literal text and directives.
fn directives(fmt: &str) -> Result<Vec<Result<String, Spec>>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            lit.push(c);
            continue;
        }
        let mut spec =
            Spec { minus: false, plus: false, zero: false, width: None, prec: None, verb: 'v' };
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
        let num = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
            let mut n: Option<usize> = None;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize).min(1000));
                chars.next();
            }
            n
        };
        spec.width = num(&mut chars);
        if chars.peek() == Some(&'.') {
            chars.next();
            spec.prec = Some(num(&mut chars).unwrap_or(0));
        }
        let Some(verb) = chars.next() else { return Err("printf format ends in %".into()) };
        if !VERBS.contains(verb) {
            return Err(format!("printf verb %{verb} is not supported"));
        }
        spec.verb = verb;
        if verb == '%' {
            lit.push('%');
            continue;
        }
        out.push(Ok(std::mem::take(&mut lit)));
        out.push(Err(spec));
    }
    out.push(Ok(lit));
    Ok(out)
}

fn check_format(fmt: &str) -> Result<(), String> {
    directives(fmt).map(|_| ())
}

fn printf(fmt: &str, args: &[Val]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    for d in directives(fmt)? {
        let spec = match d {
            Ok(text) => {
                out.push_str(&text);
                continue;
            }
            Err(spec) => spec,
        };
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{}(MISSING)", spec.verb);
            continue;
        };
        let body = match (spec.verb, arg) {
            ('s' | 'v', v) => match (spec.prec, v) {
                (Some(p), Val::Num(n)) if spec.verb == 'v' => go_g(*n, p),
                (Some(p), v) => print(v).chars().take(p).collect(),
                (None, v) => print(v),
            },
            ('q', v) => format!("{:?}", print(v)),
            (verb, v) => {
                let n = match v {
                    Val::Num(n) => *n,
                    Val::Str(s) => match s.trim().parse::<f64>() {
                        Ok(n) => n,
                        Err(_) => {
                            let _ = write!(out, "%!{verb}(string={s})");
                            continue;
                        }
                    },
                    other => {
                        let _ = write!(out, "%!{verb}({})", print(other));
                        continue;
                    }
                };
                let s = match verb {
                    'd' => format!("{}", n.trunc() as i64),
                    'f' | 'F' => {
                        special(n).unwrap_or_else(|| format!("{n:.*}", spec.prec.unwrap_or(6)))
                    }
                    'e' | 'E' => special(n).unwrap_or_else(|| {
                        let e = format!("{n:.*e}", spec.prec.unwrap_or(6));
                        let (m, exp) = split_exp(&e);
                        go_exp(m, exp)
                    }),
                    'g' | 'G' => match spec.prec {
                        Some(p) => go_g(n, p),
                        None => go_v(n),
                    },
                    'x' | 'X' => format!("{:x}", n.trunc() as i64),
                    _ => go_v(n),
                };
                let s = if verb.is_ascii_uppercase() { s.to_uppercase() } else { s };
                if spec.plus && n >= 0.0 && !s.starts_with('+') { format!("+{s}") } else { s }
            }
        };
        let width = spec.width.unwrap_or(0);
        let len = body.chars().count();
        if len >= width {
            out.push_str(&body);
        } else if spec.minus {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', width - len));
        } else if spec.zero && !matches!(spec.verb, 's' | 'q' | 'v') {
            let (sign, digits) = match body.strip_prefix(['-', '+']) {
                Some(d) => (&body[..1], d),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', width - len));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', width - len));
            out.push_str(&body);
        }
    }
    let extra: Vec<String> = args.map(print).collect();
    if !extra.is_empty() {
        let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(src: &str, value: f64) -> String {
        let labels: BTreeMap<String, String> = [("service", "payment"), ("span_name", "charge")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let ext: BTreeMap<String, String> = [("cluster".to_string(), "eu1".to_string())].into();
        let d = Data {
            labels: &labels,
            external_labels: &ext,
            external_url: "http://skein:3200",
            value,
        };
        Template::parse(src).unwrap().expand(&d)
    }

    #[test]
    fn variables_fields_and_literals() {
        assert_eq!(
            expand("p99 of {{ $labels.service }} is {{ $value }}s", 0.5),
            "p99 of payment is 0.5s"
        );
        assert_eq!(expand("{{$value}}", 1e6), "1e+06");
        assert_eq!(expand("{{ .Labels.span_name }}/{{ .Value }}", 2.0), "charge/2");
        assert_eq!(
            expand("{{ $externalLabels.cluster }} {{ $externalURL }}", 0.0),
            "eu1 http://skein:3200"
        );
        assert_eq!(expand("{{ $labels.missing }}", 0.0), "<no value>");
        assert_eq!(expand("{{ $externalLabels }}", 0.0), "map[cluster:eu1]");
        assert_eq!(expand("{{ \"a\\\"b\" }} {{ `raw` }} {{ 3 }}", 0.0), "a\"b raw 3");
        assert_eq!(expand("no actions", 0.0), "no actions");
        assert_eq!(expand("a {{- \" b \" -}} c", 0.0), "a b c");
        assert_eq!(expand("x{{/* note */}}y", 0.0), "xy");
    }

    #[test]
    fn functions_and_pipelines() {
        assert_eq!(expand("{{ $value | humanize }}", 1234567.0), "1.235M");
        assert_eq!(expand("{{ humanize $value }}", 0.000123), "123u");
        assert_eq!(expand("{{ $value | humanizeDuration }}", 0.742), "742ms");
        assert_eq!(expand("{{ $value | humanizeDuration }}", 3725.0), "1h 2m 5s");
        assert_eq!(expand("{{ $value | humanizeDuration }}", 1.5), "1.5s");
        assert_eq!(expand("{{ $value | humanizePercentage }}", 0.1234), "12.34%");
        assert_eq!(expand("{{ $value | humanize1024 }}", 2048.0), "2ki");
        assert_eq!(expand("{{ printf \"%.2f\" $value }}", 0.74219), "0.74");
        assert_eq!(expand("{{ $value | printf \"%.2f\" }}", 0.74219), "0.74");
        assert_eq!(
            expand("{{ printf \"%s is %5.1f%%\" $labels.service $value }}", 12.34),
            "payment is  12.3%"
        );
        assert_eq!(expand("{{ printf \"%d\" $value }}", 42.9), "42");
        assert_eq!(expand("{{ $labels.service | toUpper }}", 0.0), "PAYMENT");
        assert_eq!(expand("{{ title \"slow payment\" }}", 0.0), "Slow Payment");
        assert_eq!(expand("{{ \"0.25\" | humanizeDuration }}", 0.0), "250ms");
    }

    #[test]
    fn expansion_errors_are_text_not_panics() {
        assert_eq!(
            expand("{{ $labels.service | humanize }}", 0.0),
            "<error expanding template: strconv.ParseFloat: parsing \"payment\": invalid float literal>"
        );
        assert_eq!(expand("{{ printf \"%s %s\" 1 }}", 0.0), "1 %!s(MISSING)");
    }

    #[test]
    fn go_float_formatting() {
        assert_eq!(go_v(0.1), "0.1");
        assert_eq!(go_v(123456.0), "123456");
        assert_eq!(go_v(123456789.0), "1.23456789e+08");
        assert_eq!(go_v(1e21), "1e+21");
        assert_eq!(go_v(0.00001), "1e-05");
        assert_eq!(go_v(f64::NAN), "NaN");
        assert_eq!(go_g(1234.5678, 4), "1235");
        assert_eq!(go_g(12345.0, 4), "1.234e+04");
        assert_eq!(go_g(0.5, 4), "0.5");
        assert_eq!(go_g(f64::INFINITY, 4), "+Inf");
    }

    #[test]
    fn unsupported_syntax_is_refused_at_parse_time() {
        for (src, why) in [
            ("{{ if $value }}x{{ end }}", "\"if\" actions"),
            ("{{ range $labels }}{{ end }}", "\"range\" actions"),
            ("{{ query \"up\" }}", "function \"query\""),
            ("{{ $x := 1 }}", "assignments"),
            ("{{ $foo }}", "undefined variable"),
            ("{{ humanize (1) }}", "parentheses"),
            ("{{ $value", "unclosed"),
            ("{{ printf \"%y\" 1 }}", "%y"),
            ("{{ }}", "empty action"),
            ("{{ .Nope }}", "can't evaluate field Nope"),
            ("{{ $value.x }}", "has no fields"),
            ("{{ humanize 1 2 }}", "wrong number of arguments"),
        ] {
            let e = Template::parse(src).unwrap_err().to_string();
            assert!(e.contains(why), "{src}: {e}");
        }
    }
}
