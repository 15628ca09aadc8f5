//! Label selectors as Pyroscope queries carry them: `{service_name="shop", span_name=~"GET .*"}`
//! with `=`, `!=`, `=~`, `!~` (regexes are anchored, as in Prometheus). A label a row does not
//! have reads as the empty string, so `{x=""}` matches rows without `x` and `{x!="a"}` matches
//! them too.

use std::borrow::Cow;

use regex::Regex;

use super::ProfileError;

/// Compiled regexes may not grow past this: a selector comes from the network.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Re,
    NotRe,
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: Op,
    pub value: String,
    re: Option<Regex>,
}

impl Matcher {
    pub fn new(name: &str, op: Op, value: &str) -> Result<Matcher, ProfileError> {
        let re = match op {
            Op::Re | Op::NotRe => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        ProfileError::BadRequest(format!("invalid regex for {name}: {e}"))
                    })?,
            ),
            Op::Eq | Op::Ne => None,
        };
        Ok(Matcher { name: name.to_string(), op, value: value.to_string(), re })
    }

    pub fn matches(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        match (&self.op, &self.re) {
            (Op::Eq, _) => v == self.value,
            (Op::Ne, _) => v != self.value,
            (Op::Re, Some(re)) => re.is_match(v),
            (Op::NotRe, Some(re)) => !re.is_match(v),
            // `new` always compiles a regex for the regex operators.
            (Op::Re | Op::NotRe, None) => false,
        }
    }
}

/// A conjunction of matchers; empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// `get` returns a row's value of a label, if it has one.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<Cow<'a, str>>) -> bool {
        self.matchers.iter().all(|m| m.matches(get(&m.name).as_deref()))
    }

    /// The value an equality matcher pins `name` to, if any (used to skip whole blocks).
    pub fn equals(&self, name: &str) -> Option<&str> {
        self.matchers.iter().find(|m| m.name == name && m.op == Op::Eq).map(|m| m.value.as_str())
    }
}

fn bad(s: &str, why: &str) -> ProfileError {
    ProfileError::BadRequest(format!("invalid label selector {s:?}: {why}"))
}

/// Parses `{a="x", b!~"y.*"}`. An empty string or `{}` selects everything.
pub fn parse(s: &str) -> Result<Selector, ProfileError> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(Selector::default());
    }
    let inner = t
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| bad(s, "expected {name=\"value\", ...}"))?;
    let mut chars = inner.chars().peekable();
    let mut matchers = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let name: String =
            std::iter::from_fn(|| chars.next_if(|c| c.is_alphanumeric() || matches!(c, '_' | '.')))
                .collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(bad(s, "expected a label name"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let op = match (chars.next(), chars.peek()) {
            (Some('='), Some('~')) => Op::Re,
            (Some('='), _) => Op::Eq,
            (Some('!'), Some('=')) => Op::Ne,
            (Some('!'), Some('~')) => Op::NotRe,
            _ => return Err(bad(s, &format!("expected =, !=, =~ or !~ after {name}"))),
        };
        if matches!(op, Op::Re | Op::Ne | Op::NotRe) {
            chars.next();
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = quoted(&mut chars)
            .ok_or_else(|| bad(s, &format!("expected a quoted value for {name}")))?;
        matchers.push(Matcher::new(&name, op, &value)?);
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => return Err(bad(s, &format!("unexpected {c:?} after the value of {name}"))),
        }
    }
    Ok(Selector { matchers })
}

/// A `"..."`, `'...'` or `` `...` `` string; backslash escapes in the first two.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let q = chars.next_if(|c| matches!(c, '"' | '\'' | '`'))?;
    let mut out = String::new();
    loop {
        match chars.next()? {
            c if c == q => return Some(out),
            '\\' if q != '`' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
}

/// Matchers given as a list (LabelNames, LabelValues): a row matches if any selector does; no
/// selector, or only empty ones, matches everything.
pub fn parse_any(list: &[String]) -> Result<Vec<Selector>, ProfileError> {
    let sels = list.iter().map(|s| parse(s)).collect::<Result<Vec<_>, _>>()?;
    if sels.iter().any(|s| s.is_empty()) { Ok(Vec::new()) } else { Ok(sels) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<Cow<'a, str>> {
        move |n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| Cow::Borrowed(*v))
    }

    #[test]
    fn all_four_operators_parse_and_match() {
        let s =
            parse(r#"{service_name="shop", span_name=~"GET .*", env!="dev", x!~"a|b"}"#).unwrap();
        assert_eq!(s.matchers.len(), 4);
        assert!(s.matches(get(&[("service_name", "shop"), ("span_name", "GET /a")])));
        assert!(!s.matches(get(&[("service_name", "shop"), ("span_name", "POST /a")])));
        assert!(!s.matches(get(&[("service_name", "shop"), ("span_name", "GET /"), ("x", "a")])));
        assert!(!s.matches(get(&[("service_name", "shop"), ("span_name", "GET"), ("env", "dev")])));
        assert_eq!(s.equals("service_name"), Some("shop"));
    }

    #[test]
    fn regexes_are_anchored_and_missing_labels_read_as_empty() {
        let s = parse(r#"{a=~"b"}"#).unwrap();
        assert!(!s.matches(get(&[("a", "abc")])));
        assert!(parse(r#"{a=""}"#).unwrap().matches(get(&[])));
        assert!(parse(r#"{a!="x"}"#).unwrap().matches(get(&[])));
    }

    #[test]
    fn empty_selectors_match_everything_and_escapes_decode() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse(" {} ").unwrap().is_empty());
        let s = parse(r#"{a="x\"y", b='z'}"#).unwrap();
        assert_eq!(s.matchers[0].value, "x\"y");
        assert_eq!(s.matchers[1].value, "z");
        assert!(parse_any(&["{}".into(), r#"{a="b"}"#.into()]).unwrap().is_empty());
    }

    #[test]
    fn malformed_selectors_are_bad_requests() {
        for s in [
            "service_name=\"x\"",
            "{service_name}",
            "{service_name=x}",
            "{service_name=\"x}",
            "{a=\"b\" c=\"d\"}",
            "{a=~\"(\"}",
            "{=\"x\"}",
        ] {
            assert!(matches!(parse(s), Err(ProfileError::BadRequest(_))), "{s}");
        }
    }
}
