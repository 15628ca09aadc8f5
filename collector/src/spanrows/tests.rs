//! OTLP → span rows → OTLP round trips: what the codec keeps, and exactly what it does not.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, TracesData, span::Event, span::Link,
};

use super::*;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn array(values: Vec<Value>) -> Value {
    Value::ArrayValue(ArrayValue {
        values: values.into_iter().map(|v| AnyValue { value: Some(v) }).collect(),
    })
}

fn kvlist(values: Vec<KeyValue>) -> Value {
    Value::KvlistValue(KeyValueList { values })
}

/// One attribute of every `AnyValue` type, nested ones included.
fn every_value_type() -> Vec<KeyValue> {
    vec![
        kv("str", s("text")),
        kv("bool", Value::BoolValue(true)),
        kv("int", Value::IntValue(-42)),
        kv("double", Value::DoubleValue(2.5)),
        kv("bytes", Value::BytesValue(vec![0, 1, 255])),
        kv("array", array(vec![s("a"), Value::IntValue(1), Value::BoolValue(false)])),
        kv(
            "kvlist",
            kvlist(vec![
                kv("inner", Value::DoubleValue(-0.5)),
                kv(
                    "nested",
                    kvlist(vec![kv("deep", array(vec![array(vec![Value::BytesValue(vec![7])])]))]),
                ),
            ]),
        ),
    ]
}

fn dedicated() -> DedicatedColumns {
    DedicatedColumns {
        span: vec!["http.route".into()],
        resource: vec!["deployment.environment".into()],
    }
}

fn rich_span() -> Span {
    let start = 1_700_000_000_123_456_789;
    let mut attributes = every_value_type();
    // Dedicated columns come back after the generic attributes, so put them last here.
    attributes.push(kv("http.route", s("/users/{id}")));
    Span {
        trace_id: (1..=16).collect(),
        span_id: (1..=8).collect(),
        trace_state: "vendor=value".into(),
        parent_span_id: vec![9; 8],
        flags: 0x301,
        name: "GET /users/{id}".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 5_000_000,
        attributes,
        dropped_attributes_count: 1,
        events: vec![
            Event {
                time_unix_nano: start + 10,
                name: "exception".into(),
                attributes: every_value_type(),
                dropped_attributes_count: 4,
            },
            Event { time_unix_nano: start + 20, name: "empty".into(), ..Default::default() },
        ],
        dropped_events_count: 2,
        links: vec![Link {
            trace_id: vec![3; 16],
            span_id: vec![4; 8],
            trace_state: "other=1".into(),
            attributes: every_value_type(),
            dropped_attributes_count: 5,
            flags: 0x100,
        }],
        dropped_links_count: 3,
        status: Some(Status { message: "boom".into(), code: 2 }),
    }
}

fn plain_span(id: u8) -> Span {
    Span {
        trace_id: vec![id; 16],
        span_id: vec![id; 8],
        name: format!("span {id}"),
        start_time_unix_nano: 1_000 + u64::from(id),
        end_time_unix_nano: 2_000 + u64::from(id),
        ..Default::default()
    }
}

fn round_trip(input: &TracesData) -> TracesData {
    let mut builder = SpanBatchBuilder::new(&dedicated());
    let mut rows = 0;
    for rs in &input.resource_spans {
        builder.append_resource_spans(rs, |_| rows += 1);
    }
    assert_eq!(builder.rows(), rows);
    let batch = builder.finish().unwrap();
    assert_eq!(batch.schema(), span_schema(&dedicated()));
    to_traces_data(&[batch], &dedicated()).unwrap()
}

#[test]
fn every_span_field_and_value_type_survives_the_round_trip() {
    let input = TracesData {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Resource {
                    // `service.name` comes back first and dedicated attributes last.
                    attributes: vec![
                        kv(SERVICE_NAME_KEY, s("checkout")),
                        kv("host.name", s("node-1")),
                        kv("process.pid", Value::IntValue(1234)),
                        kv("resource.kv", kvlist(vec![kv("k", Value::BoolValue(true))])),
                        kv("deployment.environment", s("prod")),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "skein-instrument".into(),
                            version: "1.2.3".into(),
                            attributes: every_value_type(),
                            ..Default::default()
                        }),
                        spans: vec![rich_span(), plain_span(2)],
                        schema_url: "https://example.com/scope-schema".into(),
                    },
                    ScopeSpans { scope: None, spans: vec![plain_span(3)], schema_url: "".into() },
                ],
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            },
            ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("only.generic", Value::DoubleValue(1.0))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "other".into(),
                        ..Default::default()
                    }),
                    spans: vec![plain_span(4)],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    assert_eq!(round_trip(&input), input);
}

#[test]
fn what_the_codec_does_not_keep() {
    let mut span = plain_span(5);
    // An all-zero parent id means "no parent".
    span.parent_span_id = vec![0; 8];
    // An unset status with an empty message is no status.
    span.status = Some(Status::default());
    // An attribute without a value comes back with an empty value.
    span.attributes = vec![KeyValue { key: "no.value".into(), value: None, ..Default::default() }];
    // Kind and status code are stored as i8.
    span.kind = 300;
    let resource = Resource {
        attributes: vec![kv("a", s("1")), kv(SERVICE_NAME_KEY, s("late"))],
        dropped_attributes_count: 7,
        ..Default::default()
    };
    let scope = InstrumentationScope {
        name: "lib".into(),
        dropped_attributes_count: 8,
        ..Default::default()
    };
    let rs = |spans: Vec<Span>| ResourceSpans {
        resource: Some(resource.clone()),
        scope_spans: vec![ScopeSpans { scope: Some(scope.clone()), spans, ..Default::default() }],
        ..Default::default()
    };
    // Identical resources and scopes are merged.
    let input =
        TracesData { resource_spans: vec![rs(vec![span.clone()]), rs(vec![plain_span(6)])] };

    let mut want_span = span;
    want_span.parent_span_id = Vec::new();
    want_span.status = None;
    want_span.attributes[0].value = Some(AnyValue { value: None });
    want_span.kind = 127;
    let want = TracesData {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                // `service.name` moves first; dropped attribute counts of resources and scopes
                // are not kept.
                attributes: vec![kv(SERVICE_NAME_KEY, s("late")), kv("a", s("1"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "lib".into(), ..Default::default() }),
                spans: vec![want_span, plain_span(6)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    assert_eq!(round_trip(&input), want);
}

#[test]
fn tag_keys_come_from_dictionaries_and_dedicated_columns() {
    let input = TracesData {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv(SERVICE_NAME_KEY, s("svc")),
                    kv("host.name", s("h")),
                    kv("deployment.environment", s("prod")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans: vec![rich_span()], ..Default::default() }],
            ..Default::default()
        }],
    };
    let mut builder = SpanBatchBuilder::new(&dedicated());
    builder.append_resource_spans(&input.resource_spans[0], |_| {});
    let tags = tag_keys_of(&[builder.finish().unwrap()], &dedicated());
    let resource: Vec<&str> = tags.resource.iter().map(String::as_str).collect();
    assert_eq!(resource, ["deployment.environment", "host.name", SERVICE_NAME_KEY]);
    let span: Vec<&str> = tags.span.iter().map(String::as_str).collect();
    assert_eq!(
        span,
        ["array", "bool", "bytes", "double", "http.route", "int", "kvlist", "str"],
        "span attribute keys only, not those of events or links"
    );
}
