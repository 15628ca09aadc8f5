//! TraceQL metrics pipelines: a spanset query followed by `| <function>(...) [by(...)]`,
//! optionally with trailing hints `with(k=v, ...)` (accepted and ignored: skein always answers
//! exactly, so `sample=true` and friends change nothing).
//!
//! ```text
//! metrics   := spanset_or '|' function [by] [with] EOF
//! function  := 'rate' '(' ')' | 'count_over_time' '(' ')'
//!            | 'quantile_over_time' '(' 'duration' (',' number)+ ')'
//!            | 'histogram_over_time' '(' 'duration' ')'
//! by        := 'by' '(' attribute (',' attribute)* ')'
//! with      := 'with' '(' ident '=' value (',' ident '=' value)* ')'
//! ```

use super::ParseError;
use super::ast::{Attribute, Intrinsic, Query};
use super::lexer::{Tok, Token};
use super::parser::{Operand, Parser};

/// At most this many `by()` attributes and quantiles: each multiplies the series count.
const MAX_BY: usize = 16;
const MAX_QUANTILES: usize = 16;

const SUPPORTED: &str = "rate(), count_over_time(), quantile_over_time(duration, q, ...), histogram_over_time(duration)";

/// `{ ... } | function(...) by(...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    pub spans: Query,
    pub function: MetricsFunction,
    /// Series are split by these attributes, in this order (also the label order).
    pub by: Vec<Attribute>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricsFunction {
    /// Matching spans per second, per step.
    Rate,
    /// Matching spans per step.
    CountOverTime,
    /// Exact quantiles of span durations per step, one series per quantile (label `p`).
    QuantileOverTime(Vec<f64>),
    /// Span counts per power-of-two duration bucket per step (label `__bucket`).
    HistogramOverTime,
}

impl MetricsFunction {
    /// The function's TraceQL name, which Tempo also uses as the `__name__` of ungrouped series.
    pub fn name(&self) -> &'static str {
        match self {
            MetricsFunction::Rate => "rate",
            MetricsFunction::CountOverTime => "count_over_time",
            MetricsFunction::QuantileOverTime(_) => "quantile_over_time",
            MetricsFunction::HistogramOverTime => "histogram_over_time",
        }
    }
}

/// Canonical text that parses back into the same query (what a replica sends its peers).
impl std::fmt::Display for MetricsQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} | ", self.spans)?;
        match &self.function {
            MetricsFunction::Rate => f.write_str("rate()")?,
            MetricsFunction::CountOverTime => f.write_str("count_over_time()")?,
            MetricsFunction::HistogramOverTime => f.write_str("histogram_over_time(duration)")?,
            MetricsFunction::QuantileOverTime(qs) => {
                f.write_str("quantile_over_time(duration")?;
                for q in qs {
                    write!(f, ", {q:?}")?;
                }
                f.write_str(")")?;
            }
        }
        if !self.by.is_empty() {
            let by: Vec<String> = self.by.iter().map(|a| a.to_string()).collect();
            write!(f, " by({})", by.join(", "))?;
        }
        Ok(())
    }
}

pub(crate) fn parse_metrics_query(src: &str) -> Result<MetricsQuery, ParseError> {
    let mut p = Parser::new(src);
    if src.trim().is_empty() {
        return Err(p.err(0, format!("empty query: expected e.g. '{{ }} | rate()' ({SUPPORTED})")));
    }
    let (spans, _) = p.spanset_or()?;
    let pipe = p.bump()?;
    match pipe.kind {
        Tok::Pipe => {}
        Tok::Eof => {
            return Err(p.err(
                pipe.start,
                format!("a metrics query needs a pipeline after the spanset filter, e.g. '| rate()' ({SUPPORTED})"),
            ));
        }
        _ => return Err(p.after_spanset_error(&pipe, "'|' and a metrics function")),
    }
    let function = function(&mut p)?;
    let mut by = Vec::new();
    let mut tok = p.bump()?;
    if is_word(&tok, "by") {
        by = by_list(&mut p)?;
        tok = p.bump()?;
    }
    if is_word(&tok, "with") {
        hints(&mut p)?;
        tok = p.bump()?;
    }
    match tok.kind {
        Tok::Eof => Ok(MetricsQuery { spans, function, by }),
        Tok::Pipe => Err(p.err(
            tok.start,
            "unsupported: second-stage pipelines (topk, bottomk, comparisons) after a metrics function",
        )),
        _ => Err(p.expected("'by(...)', 'with(...)' or end of input", &tok)),
    }
}

fn is_word(tok: &Token, word: &str) -> bool {
    matches!(&tok.kind, Tok::Ident(w) if w == word)
}

fn expect(p: &mut Parser<'_>, kind: Tok, what: &str) -> Result<Token, ParseError> {
    let tok = p.bump()?;
    if tok.kind == kind { Ok(tok) } else { Err(p.expected(what, &tok)) }
}

fn function(p: &mut Parser<'_>) -> Result<MetricsFunction, ParseError> {
    let name = p.bump()?;
    let Tok::Ident(word) = &name.kind else {
        return Err(p.expected(&format!("a metrics function ({SUPPORTED})"), &name));
    };
    let f = match word.as_str() {
        "rate" => MetricsFunction::Rate,
        "count_over_time" => MetricsFunction::CountOverTime,
        "quantile_over_time" => MetricsFunction::QuantileOverTime(Vec::new()),
        "histogram_over_time" => MetricsFunction::HistogramOverTime,
        "min_over_time" | "max_over_time" | "avg_over_time" | "sum_over_time" | "compare"
        | "topk" | "bottomk" | "select" | "count" | "avg" | "min" | "max" | "sum" | "coalesce" => {
            return Err(p.err(
                name.start,
                format!("unsupported: '{word}' in a metrics query (supported: {SUPPORTED})"),
            ));
        }
        _ => {
            return Err(p.err(
                name.start,
                format!("unknown metrics function '{word}' (supported: {SUPPORTED})"),
            ));
        }
    };
    expect(p, Tok::LParen, &format!("'(' after '{word}'"))?;
    let f = match f {
        MetricsFunction::QuantileOverTime(_) => {
            duration_arg(p, word)?;
            let mut qs = Vec::new();
            while p.bump_if(&Tok::Comma)? {
                let tok = p.bump()?;
                let q = match tok.kind {
                    Tok::Float(f) => f,
                    Tok::Int(i) => i as f64,
                    _ => return Err(p.expected("a quantile between 0 and 1, such as 0.9", &tok)),
                };
                if !(0.0..=1.0).contains(&q) {
                    return Err(p.err(tok.start, format!("quantile {q} is not between 0 and 1")));
                }
                if qs.len() == MAX_QUANTILES {
                    return Err(p.err(tok.start, format!("at most {MAX_QUANTILES} quantiles")));
                }
                qs.push(q);
            }
            if qs.is_empty() {
                let tok = p.bump()?;
                return Err(p.expected("',' and at least one quantile, e.g. (duration, 0.9)", &tok));
            }
            MetricsFunction::QuantileOverTime(qs)
        }
        MetricsFunction::HistogramOverTime => {
            duration_arg(p, word)?;
            f
        }
        other => other,
    };
    expect(p, Tok::RParen, &format!("')' to close '{word}('"))?;
    Ok(f)
}

/// The first argument of the duration-based functions: only span `duration` is supported.
fn duration_arg(p: &mut Parser<'_>, function: &str) -> Result<(), ParseError> {
    let tok = p.bump()?;
    match p.operand(&tok, false)? {
        Some(Operand::Attr(Attribute::Intrinsic(Intrinsic::Duration))) => Ok(()),
        Some(Operand::Attr(a)) => Err(p.err(
            tok.start,
            format!("unsupported: {function}({a}, ...); only span duration is supported"),
        )),
        _ => Err(p.expected(&format!("'duration' as the first argument of {function}"), &tok)),
    }
}

fn by_list(p: &mut Parser<'_>) -> Result<Vec<Attribute>, ParseError> {
    expect(p, Tok::LParen, "'(' after 'by'")?;
    let mut out = Vec::new();
    loop {
        let tok = p.bump()?;
        match p.operand(&tok, false)? {
            Some(Operand::Attr(a)) => {
                if out.len() == MAX_BY {
                    return Err(p.err(tok.start, format!("at most {MAX_BY} attributes in by()")));
                }
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            _ => return Err(p.expected("an attribute in by(), e.g. resource.service.name", &tok)),
        }
        let sep = p.bump()?;
        match sep.kind {
            Tok::Comma => {}
            Tok::RParen => return Ok(out),
            _ => return Err(p.expected("',' or ')' in by()", &sep)),
        }
    }
}

/// Skips `with(k=v, ...)`.
fn hints(p: &mut Parser<'_>) -> Result<(), ParseError> {
    expect(p, Tok::LParen, "'(' after 'with'")?;
    loop {
        let key = p.bump()?;
        if !matches!(key.kind, Tok::Ident(_)) {
            return Err(p.expected("a hint name, e.g. sample", &key));
        }
        expect(p, Tok::Eq, "'=' after the hint name")?;
        let value = p.bump()?;
        if !matches!(
            value.kind,
            Tok::Ident(_) | Tok::Int(_) | Tok::Float(_) | Tok::Str(_) | Tok::Duration(_)
        ) {
            return Err(p.expected("a hint value", &value));
        }
        let sep = p.bump()?;
        match sep.kind {
            Tok::Comma => {}
            Tok::RParen => return Ok(()),
            _ => return Err(p.expected("',' or ')' in with()", &sep)),
        }
    }
}
