//! Recursive-descent parser and semantic checks.
//!
//! Grammar (`&&` binds tighter than `||` at both levels):
//!
//! ```text
//! query      := spanset_or EOF
//! spanset_or := spanset_and ('||' spanset_and)*
//! spanset_and:= spanset     ('&&' spanset)*
//! spanset    := '{' field_or? '}' | '(' spanset_or ')'
//! field_or   := field_and ('||' field_and)*
//! field_and  := field_un  ('&&' field_un)*
//! field_un   := '!' field_un | '(' field_or ')' | comparison
//! comparison := attribute (cmp_op literal)? | literal cmp_op attribute
//! ```

use super::ParseError;
use super::ast::{
    Attribute, CmpOp, Comparison, FieldExpr, Filter, Intrinsic, KindLit, Literal, Query, StatusLit,
};
use super::lexer::{Lexer, Tok, Token};

/// Maximum nesting of parentheses and `!` (bounds the parser's recursion).
pub(crate) const MAX_NESTING: usize = 64;
/// Maximum depth of the resulting tree, counting every `&&`, `||` and `!`
/// node (bounds the recursion of whoever walks or drops the tree).
pub(crate) const MAX_DEPTH: usize = 256;

const COMPARISON_OPS: &str = "=, !=, >, >=, <, <=, =~, !~";

pub(crate) fn parse_query(src: &str) -> Result<Query, ParseError> {
    if src.trim().is_empty() {
        return Err(ParseError::new(
            src,
            0,
            "empty query: expected a spanset filter such as '{ }' or '{ resource.service.name = \"api\" }'",
        ));
    }
    let mut p = Parser::new(src);
    let (query, _) = p.spanset_or()?;
    let tok = p.bump()?;
    match tok.kind {
        Tok::Eof => Ok(query),
        Tok::RParen => Err(p.err(tok.start, "unmatched ')': no '(' is open here")),
        _ => Err(p.after_spanset_error(&tok, "'&&', '||' or end of input")),
    }
}

pub(super) enum Operand {
    Attr(Attribute),
    Lit(Literal),
}

pub(super) struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    peeked: Option<Token>,
    nesting: usize,
}

fn cmp_op(tok: &Tok) -> Option<CmpOp> {
    Some(match tok {
        Tok::Eq => CmpOp::Eq,
        Tok::Ne => CmpOp::Ne,
        Tok::Gt => CmpOp::Gt,
        Tok::Ge => CmpOp::Ge,
        Tok::Lt => CmpOp::Lt,
        Tok::Le => CmpOp::Le,
        Tok::Match => CmpOp::Match,
        Tok::NotMatch => CmpOp::NotMatch,
        _ => return None,
    })
}

fn supported_intrinsics() -> String {
    let mut names: Vec<&str> = Intrinsic::ALL.iter().map(|i| i.as_str()).collect();
    names.extend(Intrinsic::ALL.iter().map(|i| i.scoped_str()));
    names.join(", ")
}

impl<'a> Parser<'a> {
    pub(super) fn new(src: &'a str) -> Self {
        Parser { src, lexer: Lexer::new(src), peeked: None, nesting: 0 }
    }

    pub(super) fn err(&self, offset: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.src, offset, message)
    }

    pub(super) fn peek(&mut self) -> Result<&Token, ParseError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lexer.next_token()?);
        }
        match &self.peeked {
            Some(tok) => Ok(tok),
            None => Err(self.err(self.src.len(), "internal error: no token")),
        }
    }

    fn peek_kind_is(&mut self, kind: &Tok) -> Result<bool, ParseError> {
        Ok(&self.peek()?.kind == kind)
    }

    pub(super) fn bump(&mut self) -> Result<Token, ParseError> {
        match self.peeked.take() {
            Some(tok) => Ok(tok),
            None => self.lexer.next_token(),
        }
    }

    /// Consumes the next token if it is `kind`.
    pub(super) fn bump_if(&mut self, kind: &Tok) -> Result<bool, ParseError> {
        if self.peek_kind_is(kind)? {
            self.bump()?;
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) fn expected(&self, what: &str, found: &Token) -> ParseError {
        let hint = match found.kind {
            Tok::Amp => " (did you mean '&&'?)",
            Tok::Pipe => " (did you mean '||'?)",
            _ => "",
        };
        self.err(found.start, format!("expected {what}, found {}{hint}", found.describe(self.src)))
    }

    fn enter(&mut self, at: &Token) -> Result<(), ParseError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(self.err(
                at.start,
                format!("query too complex: more than {MAX_NESTING} nested parentheses or '!'"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    fn check_depth(&self, depth: usize, at: &Token) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(self.err(
                at.start,
                format!(
                    "query too complex: more than {MAX_DEPTH} levels of '&&', '||' and '!' (split it into several queries)"
                ),
            ));
        }
        Ok(())
    }

    /// Error for a token that cannot follow a complete spanset expression.
    pub(super) fn after_spanset_error(&self, tok: &Token, expected: &str) -> ParseError {
        match tok.kind {
            Tok::Pipe => self.err(
                tok.start,
                "unsupported: pipelines ('|' after a spanset filter, e.g. '| select(...)', '| count() > 2'); only spanset filters combined with '&&', '||' and parentheses are supported",
            ),
            Tok::Gt | Tok::Lt | Tok::Shr | Tok::Shl | Tok::Tilde | Tok::Not | Tok::Amp => {
                let op: String = self.src[tok.start..]
                    .chars()
                    .take_while(|c| matches!(c, '!' | '&' | '<' | '>' | '~'))
                    .collect();
                self.err(
                    tok.start,
                    format!(
                        "unsupported: structural operator '{op}' between spansets; only '&&' and '||' are supported"
                    ),
                )
            }
            _ => self.expected(expected, tok),
        }
    }

    // ---------------------------------------------------------------
    // spanset level
    // ---------------------------------------------------------------

    pub(super) fn spanset_or(&mut self) -> Result<(Query, usize), ParseError> {
        let (mut lhs, mut depth) = self.spanset_and()?;
        while self.peek_kind_is(&Tok::OrOr)? {
            let op = self.bump()?;
            let (rhs, rd) = self.spanset_and()?;
            depth = 1 + depth.max(rd);
            self.check_depth(depth, &op)?;
            lhs = Query::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok((lhs, depth))
    }

    fn spanset_and(&mut self) -> Result<(Query, usize), ParseError> {
        let (mut lhs, mut depth) = self.spanset()?;
        while self.peek_kind_is(&Tok::AndAnd)? {
            let op = self.bump()?;
            let (rhs, rd) = self.spanset()?;
            depth = 1 + depth.max(rd);
            self.check_depth(depth, &op)?;
            lhs = Query::And(Box::new(lhs), Box::new(rhs));
        }
        Ok((lhs, depth))
    }

    fn spanset(&mut self) -> Result<(Query, usize), ParseError> {
        let open = self.bump()?;
        match open.kind {
            Tok::LBrace => {
                let (filter, depth) = self.filter_body(&open)?;
                Ok((Query::Filter(filter), depth))
            }
            Tok::LParen => {
                self.enter(&open)?;
                let inner = self.spanset_or()?;
                self.leave();
                let close = self.bump()?;
                match close.kind {
                    Tok::RParen => Ok(inner),
                    Tok::Eof => Err(self.err(
                        open.start,
                        "unclosed '(': expected ')' before end of input",
                    )),
                    _ => Err(self.after_spanset_error(&close, "'&&', '||' or ')'")),
                }
            }
            Tok::Attr { .. } | Tok::Ident(_) | Tok::Str(_) => Err(self.expected(
                "'{' to start a spanset filter (conditions are written in braces, e.g. '{ .foo = \"bar\" }')",
                &open,
            )),
            _ => Err(self.expected("'{' to start a spanset filter, or '('", &open)),
        }
    }

    fn filter_body(&mut self, open: &Token) -> Result<(Filter, usize), ParseError> {
        match self.peek()?.kind {
            Tok::RBrace => {
                self.bump()?;
                return Ok((Filter { expr: None }, 0));
            }
            Tok::Eof => {
                return Err(self.err(open.start, "unclosed '{': expected '}' before end of input"));
            }
            _ => {}
        }
        let (expr, depth) = self.field_or()?;
        let close = self.bump()?;
        match close.kind {
            Tok::RBrace => Ok((Filter { expr: Some(expr) }, depth)),
            Tok::Eof => Err(self.err(open.start, "unclosed '{': expected '}' before end of input")),
            _ => Err(self.expected("'&&', '||' or '}'", &close)),
        }
    }

    // ---------------------------------------------------------------
    // field level
    // ---------------------------------------------------------------

    fn field_or(&mut self) -> Result<(FieldExpr, usize), ParseError> {
        let (mut lhs, mut depth) = self.field_and()?;
        while self.peek_kind_is(&Tok::OrOr)? {
            let op = self.bump()?;
            let (rhs, rd) = self.field_and()?;
            depth = 1 + depth.max(rd);
            self.check_depth(depth, &op)?;
            lhs = FieldExpr::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok((lhs, depth))
    }

    fn field_and(&mut self) -> Result<(FieldExpr, usize), ParseError> {
        let (mut lhs, mut depth) = self.field_unary()?;
        while self.peek_kind_is(&Tok::AndAnd)? {
            let op = self.bump()?;
            let (rhs, rd) = self.field_unary()?;
            depth = 1 + depth.max(rd);
            self.check_depth(depth, &op)?;
            lhs = FieldExpr::And(Box::new(lhs), Box::new(rhs));
        }
        Ok((lhs, depth))
    }

    fn field_unary(&mut self) -> Result<(FieldExpr, usize), ParseError> {
        match self.peek()?.kind {
            Tok::Not => {
                let not = self.bump()?;
                let next = self.peek()?;
                if !matches!(next.kind, Tok::LParen | Tok::Not) {
                    let next = next.clone();
                    return Err(self.expected(
                        "'(' after '!' (negation applies to a parenthesised expression, e.g. '!(.foo = 1)')",
                        &next,
                    ));
                }
                self.enter(&not)?;
                let (inner, depth) = self.field_unary()?;
                self.leave();
                self.check_depth(depth + 1, &not)?;
                Ok((FieldExpr::Not(Box::new(inner)), depth + 1))
            }
            Tok::LParen => {
                let open = self.bump()?;
                self.enter(&open)?;
                let inner = self.field_or()?;
                self.leave();
                let close = self.bump()?;
                match close.kind {
                    Tok::RParen => Ok(inner),
                    Tok::Eof => {
                        Err(self.err(open.start, "unclosed '(': expected ')' before end of input"))
                    }
                    _ => Err(self.expected("'&&', '||' or ')'", &close)),
                }
            }
            _ => Ok((FieldExpr::Cmp(self.comparison()?), 0)),
        }
    }

    /// Turns a token into an attribute or a literal; `Ok(None)` if the token
    /// can be neither.
    pub(super) fn operand(
        &self,
        tok: &Token,
        is_value: bool,
    ) -> Result<Option<Operand>, ParseError> {
        let operand = match &tok.kind {
            Tok::Attr { scope, name } => {
                Operand::Attr(Attribute::Scoped { scope: *scope, name: name.clone() })
            }
            Tok::Str(s) => Operand::Lit(Literal::String(s.clone())),
            Tok::Int(i) => Operand::Lit(Literal::Int(*i)),
            Tok::Float(f) => Operand::Lit(Literal::Float(*f)),
            Tok::Duration(d) => Operand::Lit(Literal::Duration(*d)),
            Tok::Ident(word) => {
                if let Some(i) = Intrinsic::from_name(word) {
                    Operand::Attr(Attribute::Intrinsic(i))
                } else if let Some(s) = StatusLit::from_keyword(word) {
                    Operand::Lit(Literal::Status(s))
                } else if let Some(k) = KindLit::from_keyword(word) {
                    Operand::Lit(Literal::Kind(k))
                } else {
                    match word.as_str() {
                        "true" => Operand::Lit(Literal::Bool(true)),
                        "false" => Operand::Lit(Literal::Bool(false)),
                        "nil" => Operand::Lit(Literal::Nil),
                        _ if word.contains(':') => {
                            return Err(self.err(
                                tok.start,
                                format!(
                                    "unsupported intrinsic '{word}' (supported: {})",
                                    supported_intrinsics()
                                ),
                            ));
                        }
                        _ if is_value => {
                            return Err(self.err(
                                tok.start,
                                format!(
                                    "unknown identifier '{word}': a string value must be quoted (\"{word}\"); keywords are true, false, nil, ok, error, unset, unspecified, internal, server, client, producer, consumer"
                                ),
                            ));
                        }
                        _ => {
                            return Err(self.err(
                                tok.start,
                                format!(
                                    "unknown identifier '{word}': attributes need a scope, e.g. '.{word}', 'span.{word}' or 'resource.{word}' (intrinsics: {})",
                                    Intrinsic::ALL.map(Intrinsic::as_str).join(", ")
                                ),
                            ));
                        }
                    }
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(operand))
    }

    fn comparison(&mut self) -> Result<Comparison, ParseError> {
        let first = self.bump()?;
        match self.operand(&first, false)? {
            None => Err(self.expected(
                "a condition: an attribute (e.g. '.foo', 'span.foo', 'resource.foo', 'name'), '(' or '!'",
                &first,
            )),
            Some(Operand::Attr(attr)) => {
                let next = self.peek()?;
                let Some(op) = cmp_op(&next.kind) else {
                    if matches!(
                        next.kind,
                        Tok::Str(_)
                            | Tok::Int(_)
                            | Tok::Float(_)
                            | Tok::Duration(_)
                            | Tok::Ident(_)
                            | Tok::Attr { .. }
                    ) {
                        let next = next.clone();
                        return Err(self.expected(
                            &format!("a comparison operator ({COMPARISON_OPS}) after '{attr}'"),
                            &next,
                        ));
                    }
                    // bare attribute: existence test
                    return Ok(Comparison {
                        attr,
                        op: CmpOp::Ne,
                        value: Literal::Nil,
                    });
                };
                let op_tok = self.bump()?;
                let value_tok = self.bump()?;
                match self.operand(&value_tok, true)? {
                    None => Err(self.expected(
                        &format!(
                            "a value after '{op}' (a string, number, duration, true, false, nil, or a status or kind keyword)"
                        ),
                        &value_tok,
                    )),
                    Some(Operand::Attr(_)) => Err(self.err(
                        value_tok.start,
                        format!(
                            "comparing two attributes is not supported: the right-hand side of '{op}' must be a value"
                        ),
                    )),
                    Some(Operand::Lit(value)) => {
                        self.check(attr, op, &op_tok, value, &value_tok)
                    }
                }
            }
            Some(Operand::Lit(value)) => {
                let op_tok = self.bump()?;
                let Some(op) = cmp_op(&op_tok.kind) else {
                    return Err(self.expected(
                        &format!(
                            "a comparison operator ({COMPARISON_OPS}) after {}",
                            first.describe(self.src)
                        ),
                        &op_tok,
                    ));
                };
                let attr_tok = self.bump()?;
                match self.operand(&attr_tok, false)? {
                    None => Err(self.expected(
                        &format!("an attribute after '{op}'"),
                        &attr_tok,
                    )),
                    Some(Operand::Lit(_)) => Err(self.err(
                        first.start,
                        "comparing two values is not supported: one side must be an attribute",
                    )),
                    Some(Operand::Attr(attr)) => {
                        let Some(flipped) = op.flipped() else {
                            return Err(self.err(
                                op_tok.start,
                                format!(
                                    "the regular expression must be on the right-hand side of '{op}' (write: {attr} {op} \"regex\")"
                                ),
                            ));
                        };
                        self.check(attr, flipped, &op_tok, value, &first)
                    }
                }
            }
        }
    }

    /// Type checks of one comparison, normalising integer durations.
    fn check(
        &self,
        attr: Attribute,
        op: CmpOp,
        op_tok: &Token,
        value: Literal,
        value_tok: &Token,
    ) -> Result<Comparison, ParseError> {
        let value_text = || format!("{} {}", value.type_name(), value_tok.snippet(self.src));
        let equality_only = |what: &str| {
            self.err(
                op_tok.start,
                format!("{what} can only be compared with '=' or '!=', found '{op}'"),
            )
        };
        if value == Literal::Nil {
            if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                return Err(equality_only("nil"));
            }
            return Ok(Comparison { attr, op, value });
        }

        if matches!(op, CmpOp::Match | CmpOp::NotMatch) {
            if let Attribute::Intrinsic(
                i @ (Intrinsic::Status
                | Intrinsic::Kind
                | Intrinsic::Duration
                | Intrinsic::TraceDuration),
            ) = attr
            {
                return Err(self.err(
                    op_tok.start,
                    format!(
                        "'{}' cannot be matched against a regular expression ('{op}')",
                        i.as_str()
                    ),
                ));
            }
            let Literal::String(pattern) = &value else {
                return Err(self.err(
                    value_tok.start,
                    format!(
                        "'{op}' needs a string holding a regular expression, found {}",
                        value_text()
                    ),
                ));
            };
            if let Err(e) = regex::Regex::new(pattern) {
                return Err(self.err(
                    value_tok.start,
                    format!("invalid regular expression: {}", regex_error_message(&e)),
                ));
            }
            return Ok(Comparison { attr, op, value });
        }

        match &attr {
            Attribute::Intrinsic(Intrinsic::Status) => {
                if !matches!(value, Literal::Status(_)) {
                    return Err(self.err(
                        value_tok.start,
                        format!(
                            "'status' can only be compared with ok, error, unset or nil, found {}",
                            value_text()
                        ),
                    ));
                }
                if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    return Err(equality_only("'status'"));
                }
            }
            Attribute::Intrinsic(Intrinsic::Kind) => {
                if !matches!(value, Literal::Kind(_)) {
                    return Err(self.err(
                        value_tok.start,
                        format!(
                            "'kind' can only be compared with unspecified, internal, server, client, producer, consumer or nil, found {}",
                            value_text()
                        ),
                    ));
                }
                if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    return Err(equality_only("'kind'"));
                }
            }
            Attribute::Intrinsic(i @ (Intrinsic::Duration | Intrinsic::TraceDuration)) => {
                let nanos = match value {
                    Literal::Duration(d) | Literal::Int(d) => d,
                    _ => {
                        return Err(self.err(
                            value_tok.start,
                            format!(
                                "'{}' can only be compared with a duration (e.g. 100ms, 1.5s, 1m30s) or an integer number of nanoseconds, found {}",
                                i.as_str(),
                                value_text()
                            ),
                        ));
                    }
                };
                return Ok(Comparison { attr, op, value: Literal::Duration(nanos) });
            }
            Attribute::Intrinsic(
                i @ (Intrinsic::Name
                | Intrinsic::StatusMessage
                | Intrinsic::RootName
                | Intrinsic::RootServiceName),
            ) => {
                if !matches!(value, Literal::String(_)) {
                    return Err(self.err(
                        value_tok.start,
                        format!(
                            "'{}' is a string and can only be compared with a string or nil, found {}",
                            i.as_str(),
                            value_text()
                        ),
                    ));
                }
            }
            Attribute::Scoped { .. } => match value {
                Literal::Status(s) => {
                    return Err(self.err(
                        value_tok.start,
                        format!(
                            "status keyword '{s}' can only be compared with 'status', not with '{attr}'"
                        ),
                    ));
                }
                Literal::Kind(k) => {
                    return Err(self.err(
                        value_tok.start,
                        format!(
                            "kind keyword '{k}' can only be compared with 'kind', not with '{attr}'"
                        ),
                    ));
                }
                Literal::Bool(_) if !matches!(op, CmpOp::Eq | CmpOp::Ne) => {
                    return Err(equality_only("a boolean"));
                }
                _ => {}
            },
        }
        Ok(Comparison { attr, op, value })
    }
}

/// The regex crate renders syntax errors as a multi-line diagram ending in
/// `error: <reason>`; keep just the reason.
fn regex_error_message(e: &regex::Error) -> String {
    let text = e.to_string();
    if let Some(reason) = text.lines().rev().find_map(|l| l.trim().strip_prefix("error: ")) {
        return reason.to_string();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
