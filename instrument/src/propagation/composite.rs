//! The propagators chosen by `OTEL_PROPAGATORS` (`tracecontext,baggage,b3,b3multi`, `none`),
//! applied over any carrier through a lookup / setter pair.

use super::baggage::{self, Member};
use super::{SpanContext, b3, w3c};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TraceContext,
    Baggage,
    B3,
    B3Multi,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PropagationError {
    #[error(
        "unknown propagator {0:?} in OTEL_PROPAGATORS (use tracecontext, baggage, b3, b3multi or none)"
    )]
    Unknown(String),
}

/// What a request carried.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extracted {
    pub parent: Option<SpanContext>,
    pub baggage: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Propagators(Vec<Format>);

impl Default for Propagators {
    /// The OpenTelemetry default: `tracecontext,baggage`.
    fn default() -> Self {
        Propagators(vec![Format::TraceContext, Format::Baggage])
    }
}

impl Propagators {
    pub fn new(formats: Vec<Format>) -> Self {
        Propagators(formats)
    }

    /// Parses an `OTEL_PROPAGATORS` value; empty means the default, `none` means nothing.
    pub fn parse(value: &str) -> Result<Self, PropagationError> {
        let mut out = Vec::new();
        for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let f = match name.to_ascii_lowercase().as_str() {
                "tracecontext" => Format::TraceContext,
                "baggage" => Format::Baggage,
                "b3" => Format::B3,
                "b3multi" => Format::B3Multi,
                "none" => return Ok(Propagators(Vec::new())),
                other => return Err(PropagationError::Unknown(other.to_string())),
            };
            if !out.contains(&f) {
                out.push(f);
            }
        }
        Ok(if out.is_empty() { Propagators::default() } else { Propagators(out) })
    }

    pub fn formats(&self) -> &[Format] {
        &self.0
    }

    /// Extracts with every configured format in order; a later valid parent replaces an
    /// earlier one, as OpenTelemetry's composite propagator does.
    pub fn extract<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> Extracted {
        let mut out = Extracted::default();
        for f in &self.0 {
            match f {
                Format::TraceContext => {
                    if let Some(tp) = get(w3c::TRACEPARENT)
                        && let Some(ctx) = w3c::extract(tp, get(w3c::TRACESTATE))
                    {
                        out.parent = Some(ctx);
                    }
                }
                Format::Baggage => {
                    if let Some(h) = get(baggage::BAGGAGE) {
                        out.baggage = baggage::extract(h);
                    }
                }
                Format::B3 => {
                    if let Some(ctx) = get(b3::B3).and_then(b3::extract_single) {
                        out.parent = Some(ctx);
                    }
                }
                Format::B3Multi => {
                    if let Some(ctx) = b3::extract_multi(&get) {
                        out.parent = Some(ctx);
                    }
                }
            }
        }
        out
    }

    /// Injects `ctx` (and `baggage`) in every configured format.
    pub fn inject(
        &self,
        ctx: &SpanContext,
        bag: &[Member],
        mut set: impl FnMut(&'static str, String),
    ) {
        for f in &self.0 {
            match f {
                Format::TraceContext => {
                    set(w3c::TRACEPARENT, w3c::traceparent(ctx));
                    if let Some(ts) = w3c::tracestate(ctx) {
                        set(w3c::TRACESTATE, ts);
                    }
                }
                Format::Baggage => {
                    if let Some(b) = baggage::inject(bag) {
                        set(baggage::BAGGAGE, b);
                    }
                }
                Format::B3 => set(b3::B3, b3::single(ctx)),
                Format::B3Multi => {
                    for (k, v) in b3::multi(ctx) {
                        set(k, v);
                    }
                }
            }
        }
    }
}

/// `http::HeaderMap` carrier (hyper, axum, reqwest).
pub mod http_headers {
    use super::{Extracted, Member, Propagators, SpanContext};
    use http::{HeaderMap, HeaderName, HeaderValue};

    pub fn extract(p: &Propagators, headers: &HeaderMap) -> Extracted {
        p.extract(|k| headers.get(k).and_then(|v| v.to_str().ok()))
    }

    pub fn inject(p: &Propagators, ctx: &SpanContext, bag: &[Member], headers: &mut HeaderMap) {
        p.inject(ctx, bag, |k, v| {
            // The value's buffer becomes the header's (no second copy). Encoders only produce
            // visible ASCII, so the check cannot fail in practice.
            if let Ok(mut v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(v.into_bytes())) {
                // Trace context never repeats: HPACK-indexing it would only evict entries
                // that do repeat. Baggage often does.
                v.set_sensitive(k != super::baggage::BAGGAGE);
                headers.insert(HeaderName::from_static(k), v);
            }
        });
    }
}

/// tonic `MetadataMap` carrier (gRPC; keys are lowercase ASCII metadata).
pub mod grpc_metadata {
    use super::{Extracted, Member, Propagators, SpanContext};
    use tonic::metadata::{MetadataMap, MetadataValue};

    pub fn extract(p: &Propagators, md: &MetadataMap) -> Extracted {
        p.extract(|k| md.get(k).and_then(|v| v.to_str().ok()))
    }

    pub fn inject(p: &Propagators, ctx: &SpanContext, bag: &[Member], md: &mut MetadataMap) {
        p.inject(ctx, bag, |k, v| {
            if let Ok(v) = MetadataValue::try_from(v.as_str()) {
                md.insert(k, v);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::{SpanId, TraceId};

    fn ctx() -> SpanContext {
        SpanContext {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([9; 8]),
            sampled: true,
            debug: false,
            trace_state: vec![("vendor".into(), "x".into())],
        }
    }

    #[test]
    fn otel_propagators_values_parse() {
        assert_eq!(Propagators::parse("").unwrap(), Propagators::default());
        assert_eq!(Propagators::parse("none").unwrap().formats(), &[]);
        assert_eq!(
            Propagators::parse("tracecontext, b3multi,B3").unwrap().formats(),
            &[Format::TraceContext, Format::B3Multi, Format::B3]
        );
        assert!(matches!(Propagators::parse("jaeger"), Err(PropagationError::Unknown(_))));
    }

    #[test]
    fn every_format_round_trips_through_http_headers_and_grpc_metadata() {
        let bag =
            vec![Member { key: "user".into(), value: "a b".into(), properties: String::new() }];
        for formats in
            [vec![Format::TraceContext, Format::Baggage], vec![Format::B3], vec![Format::B3Multi]]
        {
            let p = Propagators::new(formats.clone());
            let mut headers = http::HeaderMap::new();
            http_headers::inject(&p, &ctx(), &bag, &mut headers);
            let got = http_headers::extract(&p, &headers);
            let mut md = tonic::metadata::MetadataMap::new();
            grpc_metadata::inject(&p, &ctx(), &bag, &mut md);
            assert_eq!(grpc_metadata::extract(&p, &md), got, "{formats:?}");
            let parent = got.parent.expect("parent");
            assert_eq!(
                (parent.trace_id, parent.span_id, parent.sampled),
                (ctx().trace_id, ctx().span_id, true)
            );
            if formats.contains(&Format::TraceContext) {
                assert_eq!(parent.trace_state, ctx().trace_state);
                assert_eq!(got.baggage, bag);
            }
        }
    }

    #[test]
    fn later_valid_parent_wins_and_invalid_headers_are_ignored() {
        let p = Propagators::parse("tracecontext,b3").unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
        );
        h.insert("b3", "garbage".parse().unwrap());
        let got = http_headers::extract(&p, &h);
        assert_eq!(got.parent.unwrap().span_id.to_hex(), "00f067aa0ba902b7");
        h.insert("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0".parse().unwrap());
        let got = http_headers::extract(&p, &h);
        assert_eq!(got.parent.unwrap().span_id.to_hex(), "e457b5a2e4d86bd1");
    }
}
