//! TraceQL parser for the subset of Tempo's query language that skein's
//! search API supports: spanset filters `{ ... }` combined with `&&`, `||`
//! and parentheses. Inside a filter, comparisons between an attribute and a
//! literal are combined with `&&`, `||`, `!( )` and parentheses. Pipelines
//! (`| select(...)`, `| count() > 2`), structural operators (`>>`, `~`, ...),
//! arithmetic and attribute-to-attribute comparisons are rejected with an
//! error that says so.
//!
//! ```text
//! { resource.service.name = "api" && span.http.status_code >= 500 }
//! ({ .a = 1 } || { .b = 2 }) && { name =~ "GET .*" && duration > 1.5s }
//! { status = error } && { kind = server && !(.http.route = "/health") }
//! ```
//!
//! Unlike Tempo (where `&&` and `||` share one precedence level), `&&` binds
//! tighter than `||`, in filters and between spansets.

mod ast;
mod duration;
mod lexer;
mod metrics_parser;
mod parser;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use ast::{
    Attribute, CmpOp, Comparison, FieldExpr, Filter, Intrinsic, KindLit, Literal, Query, Scope,
    StatusLit,
};
pub use duration::parse_duration;
pub use metrics_parser::{MetricsFunction, MetricsQuery};

/// Parses a TraceQL metrics query: a spanset query followed by a metrics pipeline such as
/// `| rate() by(resource.service.name)` (see [`metrics`] for the supported functions).
pub fn parse_metrics(input: &str) -> Result<MetricsQuery, ParseError> {
    metrics_parser::parse_metrics_query(input)
}

/// Parses a TraceQL query (see the module docs for the supported subset).
pub fn parse(input: &str) -> Result<Query, ParseError> {
    parser::parse_query(input)
}

/// A syntax or type error, with the position it refers to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parse error at line {line}, col {col}: {message}")]
pub struct ParseError {
    /// Byte offset into the query.
    pub offset: usize,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(src: &str, offset: usize, message: impl Into<String>) -> Self {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        ParseError { offset, line, col, message: message.into() }
    }
}
