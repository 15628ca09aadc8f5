//! Tokenizer. Produces one token at a time so that errors are reported in
//! source order together with parse errors.

use super::ParseError;
use super::ast::{Scope, is_attr_name_char};
use super::duration::{UNITS_HELP, parse_duration};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    AndAnd,
    OrOr,
    /// `!` not followed by `=` or `~`
    Not,
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Match,
    NotMatch,
    /// single `|` (pipelines, unsupported)
    Pipe,
    /// single `&` (structural operators such as `&>`, unsupported)
    Amp,
    /// `~` (sibling operator, unsupported)
    Tilde,
    /// `>>` (descendant operator, unsupported)
    Shr,
    /// `<<` (ancestor operator, unsupported)
    Shl,
    Str(String),
    Int(i64),
    Float(f64),
    /// nanoseconds
    Duration(i64),
    /// bare word: intrinsic (`name`, `span:name`), keyword (`true`, `nil`,
    /// `error`, `server`, ...) or unknown
    Ident(String),
    /// `.x`, `span.x`, `resource.x` (also with a quoted name)
    Attr {
        scope: Scope,
        name: String,
    },
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub kind: Tok,
    /// byte offsets into the source
    pub start: usize,
    pub end: usize,
}

const MAX_SNIPPET_CHARS: usize = 32;

impl Token {
    /// How the token reads in an error message ("found ...").
    pub fn describe(&self, src: &str) -> String {
        match self.kind {
            Tok::Eof => "end of input".to_string(),
            Tok::Str(_) => format!("string {}", self.snippet(src)),
            _ => self.snippet(src),
        }
    }

    /// The token's source text, shortened and quoted for error messages
    /// (strings keep their own quotes).
    pub fn snippet(&self, src: &str) -> String {
        let text = src.get(self.start..self.end).unwrap_or("");
        let mut short: String = text.chars().take(MAX_SNIPPET_CHARS).collect();
        if text.chars().count() > MAX_SNIPPET_CHARS {
            short.push('…');
        }
        match self.kind {
            Tok::Str(_) => short,
            _ => format!("'{short}'"),
        }
    }
}

pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_char_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.src, offset, message)
    }

    /// Advances past characters matching `f`, returning the consumed slice.
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        let len =
            self.rest().char_indices().find(|&(_, c)| !f(c)).map_or(self.rest().len(), |(i, _)| i);
        self.pos += len;
        &self.src[start..self.pos]
    }

    pub fn next_token(&mut self) -> Result<Token, ParseError> {
        self.take_while(char::is_whitespace);
        let start = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok(Token { kind: Tok::Eof, start, end: start });
        };
        let next = self.peek_char_at(1);
        let (kind, len) = match (c, next) {
            ('{', _) => (Tok::LBrace, 1),
            ('}', _) => (Tok::RBrace, 1),
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            (',', _) => (Tok::Comma, 1),
            ('&', Some('&')) => (Tok::AndAnd, 2),
            ('&', _) => (Tok::Amp, 1),
            ('|', Some('|')) => (Tok::OrOr, 2),
            ('|', _) => (Tok::Pipe, 1),
            ('=', Some('~')) => (Tok::Match, 2),
            ('=', Some('=')) => {
                return Err(self.err(start, "unexpected '==': use '=' to test equality"));
            }
            ('=', _) => (Tok::Eq, 1),
            ('!', Some('=')) => (Tok::Ne, 2),
            ('!', Some('~')) => (Tok::NotMatch, 2),
            ('!', _) => (Tok::Not, 1),
            ('>', Some('=')) => (Tok::Ge, 2),
            ('>', Some('>')) => (Tok::Shr, 2),
            ('>', _) => (Tok::Gt, 1),
            ('<', Some('=')) => (Tok::Le, 2),
            ('<', Some('<')) => (Tok::Shl, 2),
            ('<', _) => (Tok::Lt, 1),
            ('~', _) => (Tok::Tilde, 1),
            ('"' | '`', _) => {
                let s = self.string()?;
                return Ok(self.token(Tok::Str(s), start));
            }
            ('.', _) => {
                self.pos += 1;
                let name = self.attr_name(".", start)?;
                return Ok(self.token(Tok::Attr { scope: Scope::Any, name }, start));
            }
            ('-', Some(d)) if d.is_ascii_digit() => return self.number(),
            (d, _) if d.is_ascii_digit() => return self.number(),
            (c, _) if is_ident_start(c) => return self.word(),
            ('-', _) => {
                return Err(self.err(
                    start,
                    "unexpected '-': arithmetic is not supported (a negative number is written without a space, e.g. -5)",
                ));
            }
            (c, _) => {
                return Err(self.err(start, format!("unexpected character '{c}'")));
            }
        };
        // all fixed tokens above are ASCII, so `len` is in bytes
        self.pos += len;
        Ok(self.token(kind, start))
    }

    fn token(&self, kind: Tok, start: usize) -> Token {
        Token { kind, start, end: self.pos }
    }

    /// A string starting at the current position, which holds `"` or `` ` ``.
    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let mut chars = self.rest().char_indices();
        let Some((_, quote)) = chars.next() else {
            return Err(self.err(start, "expected a string"));
        };
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos = start + i + c.len_utf8();
                return Ok(out);
            }
            if c == '\\' && quote == '"' {
                let escaped = match chars.next() {
                    Some((_, '"')) => '"',
                    Some((_, '\\')) => '\\',
                    Some((_, 'n')) => '\n',
                    Some((_, 't')) => '\t',
                    Some((_, 'r')) => '\r',
                    Some((_, '\'')) => '\'',
                    Some((_, other)) => {
                        return Err(self.err(
                            start + i,
                            format!(
                                "unknown escape sequence '\\{other}' in string (supported: \\\" \\\\ \\n \\t \\r \\'; use a `backtick` string for raw text such as regular expressions)"
                            ),
                        ));
                    }
                    None => break,
                };
                out.push(escaped);
            } else {
                out.push(c);
            }
        }
        Err(self.err(start, format!("unterminated string: missing closing {quote}")))
    }

    /// An attribute name right after `prefix` (`.`, `span.`, `resource.`),
    /// either bare or quoted. `start` is where the attribute began.
    fn attr_name(&mut self, prefix: &str, start: usize) -> Result<String, ParseError> {
        match self.peek_char() {
            Some('"' | '`') => {
                let quote_at = self.pos;
                let name = self.string()?;
                if name.is_empty() {
                    return Err(self.err(quote_at, "attribute name must not be empty"));
                }
                Ok(name)
            }
            Some(c) if is_attr_name_char(c) => Ok(self.take_while(is_attr_name_char).to_string()),
            _ => Err(self.err(
                start,
                format!(
                    "expected an attribute name right after '{prefix}' (e.g. '{prefix}http.method' or '{prefix}\"name with spaces\"')"
                ),
            )),
        }
    }

    /// An identifier, a scoped intrinsic (`span:name`) or a scoped attribute
    /// (`span.x`, `resource.x`).
    fn word(&mut self) -> Result<Token, ParseError> {
        let start = self.pos;
        let word = self.take_while(is_ident_char);
        match (self.peek_char(), self.peek_char_at(1)) {
            (Some('.'), Some(c)) if is_attr_name_char(c) || c == '"' || c == '`' => {
                let scope = match word {
                    "span" => Scope::Span,
                    "resource" => Scope::Resource,
                    other => {
                        return Err(self.err(
                            start,
                            format!(
                                "unsupported attribute scope '{other}.': only 'span.', 'resource.' and unscoped '.' attributes are supported"
                            ),
                        ));
                    }
                };
                self.pos += 1;
                let prefix = format!("{word}.");
                let name = self.attr_name(&prefix, start)?;
                Ok(self.token(Tok::Attr { scope, name }, start))
            }
            (Some('.'), _) if word == "span" || word == "resource" => {
                Err(self.err(
                    start,
                    format!(
                        "expected an attribute name right after '{word}.' (e.g. '{word}.http.method' or '{word}.\"name with spaces\"')"
                    ),
                ))
            }
            (Some(':'), Some(c)) if is_ident_start(c) => {
                self.pos += 1;
                self.take_while(is_ident_char);
                let full = self.src[start..self.pos].to_string();
                Ok(self.token(Tok::Ident(full), start))
            }
            _ => Ok(self.token(Tok::Ident(word.to_string()), start)),
        }
    }

    /// An integer, float or duration, optionally negative.
    fn number(&mut self) -> Result<Token, ParseError> {
        let start = self.pos;
        if self.peek_char() == Some('-') {
            self.pos += 1;
        }
        // Take the longest run that can belong to a number or duration:
        // digits, letters (units, exponent), '.', and a sign right after an
        // exponent marker.
        loop {
            self.take_while(|c| c.is_alphanumeric() || c == '.');
            let text = &self.src[start..self.pos];
            let exponent_sign = matches!(self.peek_char(), Some('+' | '-'))
                && (text.ends_with('e') || text.ends_with('E'))
                && text[..text.len() - 1]
                    .trim_start_matches('-')
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.');
            if exponent_sign && self.peek_char_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            } else {
                break;
            }
        }
        let text = &self.src[start..self.pos];
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let kind = if unsigned.bytes().all(|b| b.is_ascii_digit()) {
            match text.parse::<i64>() {
                Ok(i) => Tok::Int(i),
                Err(_) => {
                    return Err(self.err(
                        start,
                        format!(
                            "integer {text} is out of range (must be between {} and {})",
                            i64::MIN,
                            i64::MAX
                        ),
                    ));
                }
            }
        } else if is_float_syntax(unsigned) {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Tok::Float(f),
                _ => return Err(self.err(start, format!("float {text} is out of range"))),
            }
        } else if let Some(d) = parse_duration(text) {
            Tok::Duration(d)
        } else if unsigned.chars().any(|c| c.is_alphabetic() && c != 'e' && c != 'E') {
            return Err(self.err(
                start,
                format!(
                    "invalid duration '{text}' (use a number followed by a unit: {UNITS_HELP}; parts may be combined, e.g. 1m30s)"
                ),
            ));
        } else {
            return Err(self.err(
                start,
                format!(
                    "invalid number '{text}' (expected an integer such as 42, a float such as 1.5 or 1e3, or a duration such as 100ms)"
                ),
            ));
        };
        Ok(self.token(kind, start))
    }
}

/// `digits ('.' digits)? ([eE] [+-]? digits)?` with a fraction or an exponent.
fn is_float_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let from = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > from
    };
    if !digits(&mut i) {
        return false;
    }
    let mut fraction_or_exponent = false;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
        fraction_or_exponent = true;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
        fraction_or_exponent = true;
    }
    i == b.len() && fraction_or_exponent
}
