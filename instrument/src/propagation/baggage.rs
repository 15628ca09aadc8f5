//! W3C Baggage: `key=value;prop, key2=value2`, values percent-encoded UTF-8.
//!
//! Limits follow the OpenTelemetry SDKs: at most 64 members and 8192 bytes of header; members
//! past either limit, and malformed members, are dropped individually.

use crate::percent::decode_strict;

pub const BAGGAGE: &str = "baggage";
pub const MAX_MEMBERS: usize = 64;
pub const MAX_BYTES: usize = 8192;

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    pub key: String,
    /// Decoded value.
    pub value: String,
    /// Properties after the value, kept verbatim (`;`-separated, without the leading `;`).
    pub properties: String,
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// Characters allowed unencoded in a value (baggage-octet minus `%`).
fn plain(c: u8) -> bool {
    matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e) && c != b'%'
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if plain(c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Parses a `baggage` header.
pub fn extract(header: &str) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::new();
    if header.len() > MAX_BYTES {
        return out;
    }
    for raw in header.split(',') {
        if out.len() >= MAX_MEMBERS {
            break;
        }
        let (kv, props) = raw.split_once(';').unwrap_or((raw, ""));
        let Some((k, v)) = kv.split_once('=') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if !is_token(k) {
            continue;
        }
        let Some(value) = decode_strict(v) else { continue };
        out.retain(|m| m.key != k);
        out.push(Member { key: k.to_string(), value, properties: props.trim().to_string() });
    }
    out
}

/// Encodes members, stopping before a member would exceed the count or byte limit.
pub fn inject(members: &[Member]) -> Option<String> {
    let mut out = String::new();
    for (n, m) in members.iter().enumerate() {
        if n >= MAX_MEMBERS || !is_token(&m.key) {
            break;
        }
        let mut item = format!("{}={}", m.key, percent_encode(&m.value));
        if !m.properties.is_empty() {
            item.push(';');
            item.push_str(&m.properties);
        }
        let extra = item.len() + usize::from(!out.is_empty());
        if out.len() + extra > MAX_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&item);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::fuzz::Gen;

    #[test]
    fn parses_values_properties_and_percent_encoding() {
        let m = extract("userId=alice, serverNode = DF%2028 ;meta=1,isProduction=false,bad key=x");
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].value, "DF 28");
        assert_eq!(m[1].properties, "meta=1");
        let back = inject(&m).unwrap();
        assert_eq!(extract(&back), m);
    }

    #[test]
    fn unicode_values_round_trip() {
        let m = vec![Member {
            key: "k".into(),
            value: "héllo, wörld=1;x".into(),
            properties: String::new(),
        }];
        let h = inject(&m).unwrap();
        assert!(h.is_ascii() && !h[2..].contains(',') && !h[2..].contains(';'));
        assert_eq!(extract(&h), m);
    }

    #[test]
    fn limits_are_enforced() {
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        assert_eq!(extract(&many.join(",")).len(), MAX_MEMBERS);
        let big = format!("k={}", "x".repeat(MAX_BYTES));
        assert!(extract(&big).is_empty());
        let members: Vec<Member> = (0..40)
            .map(|i| Member {
                key: format!("k{i}"),
                value: "v".repeat(300),
                properties: String::new(),
            })
            .collect();
        assert!(inject(&members).unwrap().len() <= MAX_BYTES);
    }

    #[test]
    fn decoder_never_panics_and_round_trips() {
        let mut g = Gen::new(3);
        let frags = ["k=v", ",", ";p", "%2", "%20", "=", "é"];
        for _ in 0..50_000 {
            let s = g.string(&frags);
            let m = extract(&s);
            if let Some(h) = inject(&m) {
                assert_eq!(extract(&h), m, "{s:?}");
            }
        }
    }
}
