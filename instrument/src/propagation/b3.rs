//! B3 propagation: the single `b3` header and the `x-b3-*` multi-header form. 64-bit trace
//! ids are accepted and left-padded to 128 bits.

use super::{SpanContext, SpanId, TraceId, lower_hex};

pub const B3: &str = "b3";
pub const TRACE_ID: &str = "x-b3-traceid";
pub const SPAN_ID: &str = "x-b3-spanid";
pub const PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const SAMPLED: &str = "x-b3-sampled";
pub const FLAGS: &str = "x-b3-flags";

fn parse_trace_id(s: &str) -> Option<TraceId> {
    let id = match s.len() {
        16 => {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&lower_hex::<8>(s)?);
            id
        }
        32 => lower_hex::<16>(s)?,
        _ => return None,
    };
    let id = TraceId(id);
    id.is_valid().then_some(id)
}

fn parse_span_id(s: &str) -> Option<SpanId> {
    let id = SpanId(lower_hex::<8>(s)?);
    id.is_valid().then_some(id)
}

/// Parses the single header `{trace}-{span}[-{sampling}[-{parent}]]`. A lone sampling decision
/// (`0`, `1`, `d`) carries no parent and yields `None`.
pub fn extract_single(b3: &str) -> Option<SpanContext> {
    let mut parts = b3.trim().split('-');
    let trace_id = parse_trace_id(parts.next()?)?;
    let span_id = parse_span_id(parts.next()?)?;
    let (sampled, debug) = match parts.next() {
        None => (false, false),
        Some("1") => (true, false),
        Some("0") => (false, false),
        Some("d") => (true, true),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(SpanContext { trace_id, span_id, sampled, debug, trace_state: Vec::new() })
}

/// Parses the multi-header form from a header lookup (names are lowercase).
pub fn extract_multi<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<SpanContext> {
    let trace_id = parse_trace_id(get(TRACE_ID)?.trim())?;
    let span_id = parse_span_id(get(SPAN_ID)?.trim())?;
    if let Some(p) = get(PARENT_SPAN_ID) {
        parse_span_id(p.trim())?;
    }
    let debug = get(FLAGS).is_some_and(|f| f.trim() == "1");
    let sampled = debug
        || match get(SAMPLED).map(str::trim) {
            Some("1") | Some("true") => true,
            None | Some("0") | Some("false") => false,
            Some(_) => return None,
        };
    Some(SpanContext { trace_id, span_id, sampled, debug, trace_state: Vec::new() })
}

/// Single-header value for `ctx`.
pub fn single(ctx: &SpanContext) -> String {
    let flag = if ctx.debug {
        "d"
    } else if ctx.sampled {
        "1"
    } else {
        "0"
    };
    format!("{}-{}-{flag}", ctx.trace_id.to_hex(), ctx.span_id.to_hex())
}

/// Multi-header `(name, value)` pairs for `ctx`.
pub fn multi(ctx: &SpanContext) -> Vec<(&'static str, String)> {
    let mut out = vec![(TRACE_ID, ctx.trace_id.to_hex()), (SPAN_ID, ctx.span_id.to_hex())];
    if ctx.debug {
        out.push((FLAGS, "1".into()));
    } else {
        out.push((SAMPLED, if ctx.sampled { "1" } else { "0" }.into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::fuzz::Gen;
    use std::collections::HashMap;

    #[test]
    fn single_header_forms() {
        let ctx =
            extract_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
                .unwrap();
        assert!(ctx.sampled && !ctx.debug);
        assert_eq!(single(&ctx), "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
        let short = extract_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d").unwrap();
        assert_eq!(short.trace_id.to_hex(), "000000000000000064fe8b2a57d3eff7");
        assert!(short.debug && short.sampled);
        for bad in [
            "0",
            "1",
            "d",
            "",
            "x-y",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
        ] {
            assert!(extract_single(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn multi_header_forms() {
        let h: HashMap<&str, &str> = [
            (TRACE_ID, "463ac35c9f6413ad"),
            (SPAN_ID, "a2fb4a1d1a96d312"),
            (PARENT_SPAN_ID, "0020000000000001"),
            (SAMPLED, "true"),
        ]
        .into();
        let ctx = extract_multi(|k| h.get(k).copied()).unwrap();
        assert!(ctx.sampled);
        let back: HashMap<&str, String> = multi(&ctx).into_iter().collect();
        let again = extract_multi(|k| back.get(k).map(|s| s.as_str())).unwrap();
        assert_eq!(again, ctx);
        let none: HashMap<&str, &str> = [(SPAN_ID, "a2fb4a1d1a96d312")].into();
        assert!(extract_multi(|k| none.get(k).copied()).is_none());
    }

    #[test]
    fn decoders_never_panic_and_accepted_input_round_trips() {
        let mut g = Gen::new(2);
        let frags = ["80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", "-", "1", "d", "0"];
        for _ in 0..50_000 {
            let s = g.string(&frags);
            if let Some(ctx) = extract_single(&s) {
                assert_eq!(extract_single(&single(&ctx)).unwrap(), ctx, "{s:?}");
            }
            let _ = extract_multi(|_| Some(s.as_str()));
        }
    }
}
