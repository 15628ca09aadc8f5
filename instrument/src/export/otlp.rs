//! Finished spans → OTLP protobuf messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span as otlp_span, status,
};

use crate::propagation::w3c;
use crate::span::{self, Record, SpanKind, Value};

// OTLP `Span.flags`: W3C trace flags in bits 0-7, then "has is_remote" and "is_remote".
const FLAG_SAMPLED: u32 = 0x1;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// Maps the monotonic span clock to wall time. Taken fresh for every export batch, so clock
/// steps and drift reach spans within one export interval.
#[derive(Clone, Copy)]
pub(crate) struct Anchor {
    wall_ns: u64,
    mono: span::clock::Instant,
}

impl Anchor {
    pub fn now() -> Anchor {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Anchor { wall_ns: wall.as_nanos() as u64, mono: span::clock::now() }
    }

    pub fn unix_nanos(&self, t: span::clock::Instant) -> u64 {
        match t.checked_duration_since(self.mono) {
            Some(after) => self.wall_ns.saturating_add(after.as_nanos() as u64),
            None => self.wall_ns.saturating_sub(self.mono.duration_since(t).as_nanos() as u64),
        }
    }
}

pub(crate) fn any_value(v: Value) -> AnyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s.into_owned()),
        Value::I64(i) => any_value::Value::IntValue(i),
        Value::F64(f) => any_value::Value::DoubleValue(f),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    };
    AnyValue { value: Some(value) }
}

pub(crate) fn key_value(kv: span::KeyValue) -> KeyValue {
    KeyValue { key: kv.key.into_owned(), value: Some(any_value(kv.value)), ..Default::default() }
}

fn kind(k: SpanKind) -> i32 {
    (match k {
        SpanKind::Internal => otlp_span::SpanKind::Internal,
        SpanKind::Server => otlp_span::SpanKind::Server,
        SpanKind::Client => otlp_span::SpanKind::Client,
        SpanKind::Producer => otlp_span::SpanKind::Producer,
        SpanKind::Consumer => otlp_span::SpanKind::Consumer,
    }) as i32
}

fn to_span(r: Record, anchor: &Anchor) -> OtlpSpan {
    let extra = r.extra.map(|b| *b).unwrap_or_default();
    let status = match extra.status {
        span::Status::Unset => None,
        span::Status::Ok => {
            Some(Status { code: status::StatusCode::Ok as i32, ..Default::default() })
        }
        span::Status::Error(m) => {
            Some(Status { code: status::StatusCode::Error as i32, message: m.into_owned() })
        }
    };
    let links = extra
        .links
        .into_iter()
        .map(|l| otlp_span::Link {
            trace_id: l.context.trace_id.0.to_vec(),
            span_id: l.context.span_id.0.to_vec(),
            trace_state: w3c::tracestate(&l.context).unwrap_or_default(),
            attributes: l.attributes.into_iter().map(key_value).collect(),
            dropped_attributes_count: 0,
            // Whether the linked span is remote is not known: only the W3C flags.
            flags: if l.context.sampled { FLAG_SAMPLED } else { 0 },
        })
        .collect();
    let mut flags = FLAG_HAS_IS_REMOTE | if r.ctx.sampled { FLAG_SAMPLED } else { 0 };
    if r.remote_parent {
        flags |= FLAG_IS_REMOTE;
    }
    OtlpSpan {
        trace_id: r.ctx.trace_id.0.to_vec(),
        span_id: r.ctx.span_id.0.to_vec(),
        trace_state: r
            .ctx
            .trace_state
            .as_deref()
            .map(|ts| ts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        parent_span_id: r.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags,
        name: r.name.into_owned(),
        kind: kind(r.kind),
        start_time_unix_nano: anchor.unix_nanos(r.start),
        end_time_unix_nano: anchor.unix_nanos(r.end),
        attributes: r.attributes.into_iter().map(key_value).collect(),
        dropped_attributes_count: extra.dropped_attributes,
        events: extra
            .events
            .into_iter()
            .map(|e| otlp_span::Event {
                time_unix_nano: anchor.unix_nanos(e.time),
                name: e.name.into_owned(),
                attributes: e.attributes.into_iter().map(key_value).collect(),
                dropped_attributes_count: 0,
            })
            .collect(),
        dropped_events_count: extra.dropped_events,
        links,
        dropped_links_count: extra.dropped_links,
        status,
    }
}

/// One request for a batch of spans, all under this process's resource and skein's scope.
pub(crate) fn request(
    resource: &Resource,
    spans: Vec<Record>,
    anchor: &Anchor,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "skein-instrument".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.into_iter().map(|r| to_span(r, anchor)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The process resource: `service.name`, the configured attributes and the SDK's identity.
pub(crate) fn resource(service_name: &str, attrs: &[(String, String)]) -> Resource {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    };
    let mut attributes = vec![kv("service.name", service_name)];
    attributes.extend(attrs.iter().map(|(k, v)| kv(k, v)));
    for (k, v) in [
        ("telemetry.sdk.name", "skein-instrument"),
        ("telemetry.sdk.language", "rust"),
        ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
    ] {
        if !attrs.iter().any(|(key, _)| key == k) {
            attributes.push(kv(k, v));
        }
    }
    attributes.push(KeyValue {
        key: "process.pid".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(i64::from(std::process::id()))),
        }),
        ..Default::default()
    });
    Resource { attributes, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_maps_monotonic_instants_both_ways() {
        let a = Anchor::now();
        // The clock counts TSC cycles: durations round to a cycle or two.
        let later = a.mono + Duration::from_millis(5);
        assert!(a.unix_nanos(later).abs_diff(a.wall_ns + 5_000_000) <= 2);
        let earlier = a.mono - Duration::from_millis(5);
        assert!(a.unix_nanos(earlier).abs_diff(a.wall_ns - 5_000_000) <= 2);
    }

    #[test]
    fn resource_has_service_name_first_and_sdk_identity() {
        let r = resource("svc", &[("deployment.environment".into(), "demo".into())]);
        let keys: Vec<&str> = r.attributes.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys[0], "service.name");
        assert!(keys.contains(&"telemetry.sdk.language"));
        assert!(keys.contains(&"deployment.environment"));
    }
}
