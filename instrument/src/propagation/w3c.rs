//! W3C Trace Context: `traceparent` and `tracestate`.

use super::{SpanContext, SpanId, TraceId, lower_hex};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Most `tracestate` list members kept (the spec's limit).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 256;

/// Parses `traceparent` (and `tracestate` if present). Invalid input yields `None`; a
/// malformed `tracestate` is dropped but does not invalidate the parent.
pub fn extract(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let tp = traceparent.trim_matches(|c| c == ' ' || c == '\t');
    let mut parts = tp.split('-');
    let version = lower_hex::<1>(parts.next()?)?[0];
    // Version ff is forbidden; version 00 has exactly four fields; later versions may append
    // fields, which are ignored.
    if version == 0xff {
        return None;
    }
    let trace_id = TraceId(lower_hex::<16>(parts.next()?)?);
    let span_id = SpanId(lower_hex::<8>(parts.next()?)?);
    let flags = lower_hex::<1>(parts.next()?)?[0];
    if version == 0 && parts.next().is_some() {
        return None;
    }
    if !trace_id.is_valid() || !span_id.is_valid() {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        debug: false,
        trace_state: tracestate.and_then(parse_tracestate).unwrap_or_default(),
    })
}

/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// Writes the `traceparent` value for `ctx` (version 00) into a fixed buffer: no formatting
/// machinery and no allocation on the request path.
pub fn write_traceparent(ctx: &SpanContext, out: &mut [u8; TRACEPARENT_LEN]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = DIGITS[usize::from(b >> 4)];
            out[at + 2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
    };
    hex(3, &ctx.trace_id.0);
    hex(36, &ctx.span_id.0);
    out[..3].copy_from_slice(b"00-");
    out[35] = b'-';
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if ctx.sampled { b'1' } else { b'0' };
}

/// `traceparent` value for `ctx` (version 00).
pub fn traceparent(ctx: &SpanContext) -> String {
    let mut buf = [0u8; TRACEPARENT_LEN];
    write_traceparent(ctx, &mut buf);
    // Only ASCII hex digits and dashes were written: no replacement happens.
    String::from_utf8_lossy(&buf).into_owned()
}

/// `tracestate` value for `ctx`, or `None` when it has no members.
pub fn tracestate(ctx: &SpanContext) -> Option<String> {
    if ctx.trace_state.is_empty() {
        return None;
    }
    let members: Vec<String> = ctx.trace_state.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(members.join(","))
}

fn valid_key(k: &str) -> bool {
    let simple = |s: &str, first_digit_ok: bool| {
        let b = s.as_bytes();
        !b.is_empty()
            && (b[0].is_ascii_lowercase() || (first_digit_ok && b[0].is_ascii_digit()))
            && b.iter().all(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    };
    if k.len() > MAX_KEY {
        return false;
    }
    match k.split_once('@') {
        // Multi-tenant key: tenant@system, tenant may start with a digit (≤241 + ≤14 chars).
        Some((tenant, system)) => {
            tenant.len() <= 241
                && system.len() <= 14
                && simple(tenant, true)
                && simple(system, false)
        }
        None => simple(k, false),
    }
}

fn valid_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_VALUE
        && !v.ends_with(' ')
        && v.bytes().all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

/// Parses `tracestate`, keeping order. Empty members are skipped (the spec allows them);
/// any invalid or duplicate member, or more than 32 members, invalidates the whole header.
pub fn parse_tracestate(s: &str) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for member in s.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        let (k, v) = member.split_once('=')?;
        if !valid_key(k) || !valid_value(v) || out.iter().any(|(ek, _)| ek == k) {
            return None;
        }
        out.push((k.to_string(), v.to_string()));
        if out.len() > MAX_TRACESTATE_MEMBERS {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::fuzz::Gen;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparent_round_trips() {
        let ctx = extract(TP, Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert!(ctx.sampled);
        assert_eq!(ctx.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(traceparent(&ctx), TP);
        assert_eq!(tracestate(&ctx).unwrap(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    }

    #[test]
    fn invalid_traceparents_are_absent() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // v00 with extra field
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(extract(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn future_versions_may_append_fields() {
        let tp = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever";
        let ctx = extract(tp, None).unwrap();
        assert!(!ctx.sampled);
    }

    #[test]
    fn tracestate_rules() {
        assert_eq!(parse_tracestate("a=1,,b=2").unwrap().len(), 2);
        assert!(parse_tracestate("a=1,a=2").is_none(), "duplicate key");
        assert!(parse_tracestate("A=1").is_none(), "uppercase key");
        assert!(parse_tracestate("a=x,y").is_none(), "comma in value");
        assert!(parse_tracestate("t3n@sys=v").is_some(), "tenant key");
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tracestate(&many.join(",")).is_none(), "over 32 members");
        let ctx = extract(TP, Some("a=x,y")).unwrap();
        assert!(ctx.trace_state.is_empty(), "bad tracestate is dropped, parent kept");
    }

    #[test]
    fn decoders_never_panic_and_accepted_input_round_trips() {
        let mut g = Gen::new(1);
        let frags = [
            "00",
            "-",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            "01",
            "ff",
            "a=b",
            ",",
        ];
        for _ in 0..50_000 {
            let s = g.string(&frags);
            if let Some(ctx) = extract(&s, Some(&s)) {
                let again = extract(&traceparent(&ctx), tracestate(&ctx).as_deref()).unwrap();
                assert_eq!(again, ctx, "{s:?}");
            }
        }
    }
}
