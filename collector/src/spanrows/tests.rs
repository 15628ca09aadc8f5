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

/// Every string and bytes value in `data` (attributes at any depth), with where it was found.
fn leaf_values(data: &TracesData) -> Vec<(String, Vec<u8>)> {
    fn walk(at: &str, v: &Value, out: &mut Vec<(String, Vec<u8>)>) {
        match v {
            Value::StringValue(s) => out.push((at.to_string(), s.clone().into_bytes())),
            Value::BytesValue(b) => out.push((at.to_string(), b.clone())),
            Value::ArrayValue(a) => {
                for v in a.values.iter().filter_map(|v| v.value.as_ref()) {
                    walk(at, v, out);
                }
            }
            Value::KvlistValue(l) => attrs(at, &l.values, out),
            _ => {}
        }
    }
    fn attrs(at: &str, kvs: &[KeyValue], out: &mut Vec<(String, Vec<u8>)>) {
        for kv in kvs {
            if let Some(v) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                walk(&format!("{at}/{}", kv.key), v, out);
            }
        }
    }
    let mut out = Vec::new();
    for rs in &data.resource_spans {
        attrs("resource", rs.resource.as_ref().map_or(&[][..], |r| &r.attributes), &mut out);
        for ss in &rs.scope_spans {
            attrs("scope", ss.scope.as_ref().map_or(&[][..], |s| &s.attributes), &mut out);
            for span in &ss.spans {
                attrs("span", &span.attributes, &mut out);
                for e in &span.events {
                    attrs("event", &e.attributes, &mut out);
                }
                for l in &span.links {
                    attrs("link", &l.attributes, &mut out);
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn attribute_values_of_every_kind_are_cut_at_a_char_boundary_and_counted_once() {
    // 9 bytes: the limit of 8 falls inside the last "é", so 7 bytes are kept.
    let long = "aéééé";
    let mut span = plain_span(7);
    span.attributes = vec![
        kv("str", s(long)),
        kv("http.route", s(long)),
        kv("short", s("12345678")),
        kv("bytes", Value::BytesValue(vec![1; 9])),
        kv("array", array(vec![s(long), s("ok"), Value::IntValue(1 << 40)])),
        kv("kvlist", kvlist(vec![kv("inner", s(long))])),
    ];
    span.events =
        vec![Event { name: "e".into(), attributes: vec![kv("ev", s(long))], ..Default::default() }];
    span.links = vec![Link {
        trace_id: vec![3; 16],
        span_id: vec![4; 8],
        attributes: vec![kv("lk", s(long))],
        ..Default::default()
    }];
    let input = TracesData {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv(SERVICE_NAME_KEY, s(long)),
                    kv("deployment.environment", s(long)),
                    kv("host.name", s(long)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "lib".into(),
                    attributes: vec![kv("scope.attr", s(long))],
                    ..Default::default()
                }),
                // The scope's attribute is one value, however many spans repeat it.
                spans: vec![span, plain_span(8), plain_span(9)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut builder =
        SpanBatchBuilder::with_limits(&dedicated(), BuildLimits { max_attribute_bytes: 8 });
    let appended = builder.append_resource_spans(&input.resource_spans[0], |_| {});
    // resource: 3, scope: 1, span: str, route, bytes, one in the array, one in the kvlist;
    // event: 1, link: 1.
    assert_eq!(appended, Appended { rows: 3, truncated: 11 });
    let out = to_traces_data(&[builder.finish().unwrap()], &dedicated()).unwrap();

    let cut = "aééé".as_bytes().to_vec();
    let got = leaf_values(&out);
    let want: Vec<(String, Vec<u8>)> = [
        ("event/ev", cut.clone()),
        ("link/lk", cut.clone()),
        ("resource/deployment.environment", cut.clone()),
        ("resource/host.name", cut.clone()),
        ("resource/service.name", cut.clone()),
        ("scope/scope.attr", cut.clone()),
        ("span/array", cut.clone()),
        ("span/array", b"ok".to_vec()),
        ("span/bytes", vec![1; 8]),
        ("span/http.route", cut.clone()),
        ("span/kvlist/inner", cut.clone()),
        ("span/short", b"12345678".to_vec()),
        ("span/str", cut.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);
    let span = &out.resource_spans[0].scope_spans[0].spans[0];
    assert!(
        span.attributes.iter().any(|a| a.key == "array"
            && matches!(&a.value, Some(AnyValue { value: Some(Value::ArrayValue(v)) })
                if v.values.get(2) == Some(&AnyValue { value: Some(Value::IntValue(1 << 40)) }))),
        "non-string values are kept: {span:?}"
    );

    // No limit: everything comes back whole.
    let mut builder =
        SpanBatchBuilder::with_limits(&dedicated(), BuildLimits { max_attribute_bytes: 0 });
    let appended = builder.append_resource_spans(&input.resource_spans[0], |_| {});
    assert_eq!(appended.truncated, 0);
    let out = to_traces_data(&[builder.finish().unwrap()], &dedicated()).unwrap();
    assert!(leaf_values(&out).iter().any(|(_, v)| v == long.as_bytes()));
}

/// A request with large values everywhere, a scope attribute repeated on many spans and
/// several resources and scopes.
fn heavy_request(spans_per_scope: u8, value_bytes: usize) -> TracesData {
    let big = "v".repeat(value_bytes);
    let rs = |r: u8| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                kv(SERVICE_NAME_KEY, s(&format!("svc-{r}"))),
                kv("deployment.environment", s(&big)),
                kv("host.name", s(&format!("{r}{big}"))),
                kv("bytes", Value::BytesValue(big.clone().into_bytes())),
            ],
            ..Default::default()
        }),
        scope_spans: (0..2u8)
            .map(|sc| ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: format!("scope-{r}-{sc}"),
                    version: big.clone(),
                    attributes: vec![kv("scope.attr", s(&big))],
                    ..Default::default()
                }),
                spans: (0..spans_per_scope)
                    .map(|i| {
                        let mut span = rich_span();
                        span.span_id = vec![r, sc, i, 1, 1, 1, 1, 1];
                        span.name = format!("{i}{big}");
                        span.attributes.push(kv("big", s(&big)));
                        span.attributes.push(kv("http.route", s(&big)));
                        span.events[0].attributes.push(kv("big", s(&big)));
                        span.links[0].attributes.push(kv("big", array(vec![s(&big)])));
                        span.links[0].trace_state = big.clone();
                        span
                    })
                    .collect(),
                schema_url: big.clone(),
            })
            .collect(),
        schema_url: big.clone(),
    };
    TracesData { resource_spans: vec![rs(1), rs(2)] }
}

#[test]
fn the_cost_bounds_every_variable_length_column() {
    let input = heavy_request(20, 3000);
    let limits = BuildLimits { max_attribute_bytes: 0 };
    let mut builder = SpanBatchBuilder::with_limits(&dedicated(), limits);
    let mut claimed = 0;
    for rs in &input.resource_spans {
        claimed += resource_spans_cost(rs, limits);
        builder.append_resource_spans(rs, |_| {});
    }
    let cost = builder.cost();
    assert!(cost <= claimed, "measured before building: {claimed}, built: {cost}");
    let batch = builder.finish().unwrap();
    let largest = build::largest_column(&batch);
    // The scope attribute alone is repeated 3000 bytes × 40 spans.
    assert!(largest >= 40 * 3000, "{largest}");
    assert!(largest <= cost, "largest column {largest} > cost {cost}");
    assert_eq!(builder.cost(), 0, "finish resets the cost");
}

#[test]
fn a_sealing_builder_splits_a_request_into_batches_within_the_limit() {
    let input = heavy_request(25, 1000);
    let mut whole = SpanBatchBuilder::new(&dedicated());
    let mut sealing = SpanBatchBuilder::new(&dedicated());
    let seal = 40_000;
    let mut batches = Vec::new();
    let mut rows = 0;
    for rs in &input.resource_spans {
        whole.append_resource_spans(rs, |_| {});
        let a =
            sealing.append_resource_spans_sealing(rs, |_| rows += 1, seal, &mut batches).unwrap();
        assert_eq!(a.rows, 50);
    }
    assert!(sealing.cost() <= seal);
    batches.push(sealing.finish().unwrap());
    assert_eq!(rows, 100);
    assert!(batches.len() >= 10, "{} batches", batches.len());
    for b in &batches {
        let largest = build::largest_column(b);
        assert!(largest <= seal, "a batch of {} rows has a column of {largest}", b.num_rows());
    }
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    // Cut anywhere (within scopes too), the rows read back as the unsplit request does.
    let want = to_traces_data(&[whole.finish().unwrap()], &dedicated()).unwrap();
    assert_eq!(to_traces_data(&batches, &dedicated()).unwrap(), want);
    assert_eq!(want.resource_spans.len(), 2);

    // A span costing more than the limit on its own gets a batch of its own.
    let mut batches = Vec::new();
    let mut b = SpanBatchBuilder::new(&dedicated());
    for rs in &input.resource_spans {
        b.append_resource_spans_sealing(rs, |_| {}, 1, &mut batches).unwrap();
    }
    batches.push(b.finish().unwrap());
    assert!(batches.iter().all(|b| b.num_rows() == 1), "one span per batch");
    assert_eq!(to_traces_data(&batches, &dedicated()).unwrap(), want);
}
