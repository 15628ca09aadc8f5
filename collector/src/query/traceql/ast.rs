//! Syntax tree of the supported TraceQL subset.
//!
//! Every type implements [`std::fmt::Display`], printing canonical TraceQL
//! that [`super::parse`] reads back into an equal value (binary operators are
//! always parenthesised, so the printed form is unambiguous).

use std::fmt;

/// A whole query: spanset filters combined with `&&` / `||`.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Filter(Filter),
    /// Both spansets must match within the same trace.
    And(Box<Query>, Box<Query>),
    /// Either spanset matches.
    Or(Box<Query>, Box<Query>),
}

/// One spanset filter `{ ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// `None` for `{}`, which matches every span.
    pub expr: Option<FieldExpr>,
}

/// A boolean expression over the fields of one span.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldExpr {
    And(Box<FieldExpr>, Box<FieldExpr>),
    Or(Box<FieldExpr>, Box<FieldExpr>),
    Not(Box<FieldExpr>),
    Cmp(Comparison),
}

/// `attr op value`. The attribute is always on the left: a query written with
/// the literal on the left (`500 <= .status`) is stored with the operator
/// flipped (`.status >= 500`). A bare attribute (`{ .foo }`) is stored as
/// `.foo != nil`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub attr: Attribute,
    pub op: CmpOp,
    pub value: Literal,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    Intrinsic(Intrinsic),
    /// `resource.x`, `span.x` or `.x` (scope [`Scope::Any`]: span or resource).
    Scoped {
        scope: Scope,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intrinsic {
    /// `name`, `span:name`
    Name,
    /// `status`, `span:status`
    Status,
    /// `statusMessage`, `span:statusMessage`
    StatusMessage,
    /// `kind`, `span:kind`
    Kind,
    /// `duration`, `span:duration`
    Duration,
    /// `rootName`, `trace:rootName`
    RootName,
    /// `rootServiceName`, `trace:rootService`
    RootServiceName,
    /// `traceDuration`, `trace:duration`
    TraceDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `resource.x`
    Resource,
    /// `span.x`
    Span,
    /// `.x`: matches a span attribute or a resource attribute.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    /// `=~`: the value is a string holding a regular expression that compiles.
    Match,
    /// `!~`
    NotMatch,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds. Integers compared with `duration` / `traceDuration` are
    /// stored as this variant too.
    Duration(i64),
    Status(StatusLit),
    Kind(KindLit),
    Nil,
}

/// Span status keyword; discriminants are the OTLP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLit {
    Unset = 0,
    Ok = 1,
    Error = 2,
}

/// Span kind keyword; discriminants are the OTLP span kind codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindLit {
    Unspecified = 0,
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl Intrinsic {
    /// All intrinsics, in declaration order.
    pub const ALL: [Intrinsic; 8] = [
        Intrinsic::Name,
        Intrinsic::Status,
        Intrinsic::StatusMessage,
        Intrinsic::Kind,
        Intrinsic::Duration,
        Intrinsic::RootName,
        Intrinsic::RootServiceName,
        Intrinsic::TraceDuration,
    ];

    /// The classic (unscoped) spelling, which is also Tempo's tag name.
    pub fn as_str(self) -> &'static str {
        match self {
            Intrinsic::Name => "name",
            Intrinsic::Status => "status",
            Intrinsic::StatusMessage => "statusMessage",
            Intrinsic::Kind => "kind",
            Intrinsic::Duration => "duration",
            Intrinsic::RootName => "rootName",
            Intrinsic::RootServiceName => "rootServiceName",
            Intrinsic::TraceDuration => "traceDuration",
        }
    }

    /// The scoped spelling (`span:name`, `trace:rootService`, ...).
    pub fn scoped_str(self) -> &'static str {
        match self {
            Intrinsic::Name => "span:name",
            Intrinsic::Status => "span:status",
            Intrinsic::StatusMessage => "span:statusMessage",
            Intrinsic::Kind => "span:kind",
            Intrinsic::Duration => "span:duration",
            Intrinsic::RootName => "trace:rootName",
            Intrinsic::RootServiceName => "trace:rootService",
            Intrinsic::TraceDuration => "trace:duration",
        }
    }

    /// Accepts both spellings; case-sensitive, like Tempo.
    pub fn from_name(s: &str) -> Option<Intrinsic> {
        Intrinsic::ALL.into_iter().find(|i| i.as_str() == s || i.scoped_str() == s)
    }
}

impl Attribute {
    /// Canonical Tempo tag name: `name`, `status`, `duration`,
    /// `rootServiceName`, `resource.service.name`, `span.http.method`, and
    /// `.foo` for [`Scope::Any`].
    pub fn tag_name(&self) -> String {
        match self {
            Attribute::Intrinsic(i) => i.as_str().to_string(),
            Attribute::Scoped { scope, name } => {
                let prefix = match scope {
                    Scope::Resource => "resource.",
                    Scope::Span => "span.",
                    Scope::Any => ".",
                };
                format!("{prefix}{name}")
            }
        }
    }

    /// Inverse of [`Attribute::tag_name`] (also accepts the scoped intrinsic
    /// spellings). Names are taken verbatim: no quoting is interpreted.
    #[allow(dead_code)] // API for the HTTP layer; may be unused in the binary
    pub fn from_tag_name(tag: &str) -> Option<Attribute> {
        if let Some(i) = Intrinsic::from_name(tag) {
            return Some(Attribute::Intrinsic(i));
        }
        let (scope, name) = if let Some(n) = tag.strip_prefix("resource.") {
            (Scope::Resource, n)
        } else if let Some(n) = tag.strip_prefix("span.") {
            (Scope::Span, n)
        } else if let Some(n) = tag.strip_prefix('.') {
            (Scope::Any, n)
        } else {
            return None;
        };
        if name.is_empty() {
            return None;
        }
        Some(Attribute::Scoped { scope, name: name.to_string() })
    }
}

impl StatusLit {
    /// OTLP status code (0 unset, 1 ok, 2 error).
    #[allow(dead_code)] // API for the query layer; may be unused in the binary
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusLit::Unset => "unset",
            StatusLit::Ok => "ok",
            StatusLit::Error => "error",
        }
    }

    pub fn from_keyword(s: &str) -> Option<StatusLit> {
        match s {
            "unset" => Some(StatusLit::Unset),
            "ok" => Some(StatusLit::Ok),
            "error" => Some(StatusLit::Error),
            _ => None,
        }
    }
}

impl KindLit {
    /// OTLP span kind code (0 unspecified ... 5 consumer).
    #[allow(dead_code)] // API for the query layer; may be unused in the binary
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KindLit::Unspecified => "unspecified",
            KindLit::Internal => "internal",
            KindLit::Server => "server",
            KindLit::Client => "client",
            KindLit::Producer => "producer",
            KindLit::Consumer => "consumer",
        }
    }

    pub fn from_keyword(s: &str) -> Option<KindLit> {
        match s {
            "unspecified" => Some(KindLit::Unspecified),
            "internal" => Some(KindLit::Internal),
            "server" => Some(KindLit::Server),
            "client" => Some(KindLit::Client),
            "producer" => Some(KindLit::Producer),
            "consumer" => Some(KindLit::Consumer),
            _ => None,
        }
    }
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Match => "=~",
            CmpOp::NotMatch => "!~",
        }
    }

    /// The operator to use when both operands swap sides (`a < b` ⇔ `b > a`).
    /// `None` for the regex operators, which are not symmetric.
    pub fn flipped(self) -> Option<CmpOp> {
        match self {
            CmpOp::Eq => Some(CmpOp::Eq),
            CmpOp::Ne => Some(CmpOp::Ne),
            CmpOp::Gt => Some(CmpOp::Lt),
            CmpOp::Ge => Some(CmpOp::Le),
            CmpOp::Lt => Some(CmpOp::Gt),
            CmpOp::Le => Some(CmpOp::Ge),
            CmpOp::Match | CmpOp::NotMatch => None,
        }
    }
}

impl Literal {
    /// Human description of the literal's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Literal::String(_) => "string",
            Literal::Int(_) => "integer",
            Literal::Float(_) => "float",
            Literal::Bool(_) => "boolean",
            Literal::Duration(_) => "duration",
            Literal::Status(_) => "status keyword",
            Literal::Kind(_) => "kind keyword",
            Literal::Nil => "nil",
        }
    }
}

/// Characters that may appear in an unquoted attribute name (after `.`,
/// `span.` or `resource.`): anything except whitespace, quotes and the
/// characters that delimit tokens.
pub(crate) fn is_attr_name_char(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '{' | '}'
                | '('
                | ')'
                | '='
                | '~'
                | '!'
                | '<'
                | '>'
                | '&'
                | '|'
                | '^'
                | ','
                | '"'
                | '`'
                | '\''
        )
}

fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

/// Formats nanoseconds as a compound duration (`1h2m3s4ms`) that the lexer
/// reads back exactly.
pub(crate) fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if nanos < 0 {
        out.push('-');
    }
    let mut rest = nanos.unsigned_abs();
    const UNITS: [(u64, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    for (size, unit) in UNITS {
        let n = rest / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            rest %= size;
        }
    }
    out
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Filter(filter) => write!(f, "{filter}"),
            Query::And(..) | Query::Or(..) => {
                f.write_str("(")?;
                self.chain(f)?;
                f.write_str(")")
            }
        }
    }
}

impl Query {
    /// A left-nested run of one operator printed flat (`(a && b && c)`, not
    /// `((a && b) && c)`): the parser, left-associative, reads it back as the same tree, and
    /// a long chain (which is what the parser builds) does not print deeper than its nesting
    /// limit. A right-nested operand keeps its parentheses.
    fn chain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, op) = match self {
            Query::And(a, b) => (a, b, "&&"),
            Query::Or(a, b) => (a, b, "||"),
            Query::Filter(_) => return write!(f, "{self}"),
        };
        for (i, side) in [a, b].into_iter().enumerate() {
            if i == 1 {
                write!(f, " {op} ")?;
            }
            match (i, self, &**side) {
                (0, Query::And(..), Query::And(..)) | (0, Query::Or(..), Query::Or(..)) => {
                    side.chain(f)?
                }
                _ => write!(f, "{side}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expr {
            None => f.write_str("{ }"),
            Some(e) => write!(f, "{{ {e} }}"),
        }
    }
}

impl fmt::Display for FieldExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldExpr::And(..) | FieldExpr::Or(..) => {
                f.write_str("(")?;
                self.chain(f)?;
                f.write_str(")")
            }
            FieldExpr::Not(e) => match **e {
                FieldExpr::Cmp(_) | FieldExpr::Not(_) => write!(f, "!({e})"),
                // already parenthesised by its own Display
                FieldExpr::And(..) | FieldExpr::Or(..) => write!(f, "!{e}"),
            },
            FieldExpr::Cmp(c) => write!(f, "{c}"),
        }
    }
}

impl FieldExpr {
    /// See [`Query::chain`].
    fn chain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, op) = match self {
            FieldExpr::And(a, b) => (a, b, "&&"),
            FieldExpr::Or(a, b) => (a, b, "||"),
            FieldExpr::Not(_) | FieldExpr::Cmp(_) => return write!(f, "{self}"),
        };
        for (i, side) in [a, b].into_iter().enumerate() {
            if i == 1 {
                write!(f, " {op} ")?;
            }
            match (i, self, &**side) {
                (0, FieldExpr::And(..), FieldExpr::And(..))
                | (0, FieldExpr::Or(..), FieldExpr::Or(..)) => side.chain(f)?,
                _ => write!(f, "{side}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.attr, self.op, self.value)
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Intrinsic(i) => f.write_str(i.as_str()),
            Attribute::Scoped { scope, name } => {
                f.write_str(match scope {
                    Scope::Resource => "resource.",
                    Scope::Span => "span.",
                    Scope::Any => ".",
                })?;
                if !name.is_empty() && name.chars().all(is_attr_name_char) {
                    f.write_str(name)
                } else {
                    write_quoted(f, name)
                }
            }
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for StatusLit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for KindLit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::String(s) => write_quoted(f, s),
            Literal::Int(i) => write!(f, "{i}"),
            // Debug keeps a `.0` / exponent so the value reads back as a float
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Duration(d) => f.write_str(&format_duration(*d)),
            Literal::Status(s) => write!(f, "{s}"),
            Literal::Kind(k) => write!(f, "{k}"),
            Literal::Nil => f.write_str("nil"),
        }
    }
}
