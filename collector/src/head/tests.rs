//! The head under requests as large as ingest admits: sealing by bytes, cut attributes,
//! refusals that leave the head as it was, flushes due by size.

use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::*;
use crate::error::{Coded, ErrorCode};
use crate::spanrows::build::largest_column;
use crate::spanrows::to_traces_data;

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn span(n: u32, attributes: Vec<KeyValue>) -> Span {
    let mut span_id = vec![1; 8];
    span_id[4..].copy_from_slice(&n.to_be_bytes());
    Span {
        trace_id: vec![7; 16],
        span_id,
        name: "op".into(),
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        attributes,
        ..Default::default()
    }
}

fn request(scope_attrs: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { attributes: scope_attrs, ..Default::default() }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[test]
fn batches_are_sealed_by_bytes_so_no_column_outgrows_the_limit() {
    // The poison pill in miniature: every export carries one huge value and nothing cuts it;
    // rows alone (16k) would put all of them in one batch.
    let limits = HeadLimits {
        max_attribute_bytes: 0,
        seal_bytes: 1 << 20,
        max_request_bytes: 4 << 20,
        freeze_bytes: usize::MAX,
    };
    let head = SpanHead::with_limits(DedicatedColumns::default(), limits);
    let value = "x".repeat(200 << 10);
    for n in 0..130u32 {
        let req = request(vec![], vec![span(n, vec![kv("blob", &value)])]);
        head.apply(u64::from(n) + 1, "t", &req).unwrap();
    }
    // One span larger than a batch gets one of its own.
    let huge = "y".repeat(3 << 20);
    head.apply(131, "t", &request(vec![], vec![span(130, vec![kv("blob", &huge)])])).unwrap();
    let batches = head.snapshot("t").unwrap();
    assert_eq!(rows(&batches), 131);
    assert!(batches.len() >= 130 * 200 / 1024, "{} batches", batches.len());
    for b in &batches[..batches.len() - 1] {
        let largest = largest_column(b);
        assert!(largest <= 1 << 20, "a batch of {} rows holds {largest} bytes", b.num_rows());
    }
    let last = batches.last().unwrap();
    assert_eq!((last.num_rows(), largest_column(last) >= 3 << 20), (1, true));
    assert_eq!(head.take_attributes_truncated(), 0);
}

#[test]
fn a_request_larger_than_a_batch_is_split_and_reads_back_whole() {
    let limits = HeadLimits { seal_bytes: 64 << 10, ..HeadLimits::default() };
    let head = SpanHead::with_limits(DedicatedColumns::default(), limits);
    let value = "z".repeat(4 << 10);
    // The scope attribute repeats on each of the 100 spans: 400 KiB from a 4 KiB scope.
    let req = request(vec![kv("scope.big", &value)], (0..100).map(|n| span(n, vec![])).collect());
    head.apply(1, "t", &req).unwrap();
    let batches = head.snapshot("t").unwrap();
    assert!(batches.len() >= 6, "{} batches", batches.len());
    assert!(batches.iter().all(|b| largest_column(b) <= 64 << 10));
    let back = to_traces_data(&batches, &DedicatedColumns::default()).unwrap();
    assert_eq!(back.resource_spans[0].scope_spans[0].spans.len(), 100);
    assert_eq!(
        back.resource_spans[0].scope_spans[0].scope.as_ref().unwrap().attributes[0],
        req.resource_spans[0].scope_spans[0].scope.as_ref().unwrap().attributes[0]
    );
}

#[test]
fn the_poison_pill_is_cut_to_the_attribute_limit_and_counted() {
    // 130 exports of one span with a 16 MiB attribute overflowed a string column's 2 GiB.
    let head = SpanHead::new(DedicatedColumns::default());
    let req = request(vec![], vec![span(1, vec![kv("blob", &"é".repeat(8 << 20))])]);
    for seq in 1..=130 {
        head.apply(seq, "t", &req).unwrap();
    }
    let batches = head.snapshot("t").unwrap();
    assert_eq!(rows(&batches), 130);
    let data = to_traces_data(&batches, &DedicatedColumns::default()).unwrap();
    for s in data.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans) {
        let Some(Value::StringValue(v)) =
            s.attributes[0].value.as_ref().and_then(|v| v.value.as_ref())
        else {
            panic!("{s:?}")
        };
        assert_eq!(v.len(), DEFAULT_MAX_ATTRIBUTE_BYTES, "64 KiB of two-byte characters");
    }
    assert!(head.stats().bytes < 64 << 20, "{:?}", head.stats());
    assert_eq!(head.stats().attributes_truncated, 130);
    assert_eq!(head.take_attributes_truncated(), 130);
    assert_eq!(head.take_attributes_truncated(), 0, "handed out once");
    assert_eq!(head.stats().attributes_truncated, 130);
}

#[test]
fn a_request_that_would_expand_past_the_limit_is_refused_whole() {
    let limits = HeadLimits { max_request_bytes: 1 << 20, ..HeadLimits::default() };
    let head = SpanHead::with_limits(DedicatedColumns::default(), limits);
    head.apply(1, "t", &request(vec![], vec![span(1, vec![])])).unwrap();
    let before = (rows(&head.snapshot("t").unwrap()), head.unflushed_spans(), head.time_range("t"));

    // A good resource first, then 10 KiB of scope attributes on each of 200 spans: 2 MiB.
    let mut bomb = request(vec![], vec![span(2, vec![])]);
    let repeated = request(
        vec![kv("scope", &"s".repeat(10 << 10))],
        (3..203).map(|n| span(n, vec![])).collect(),
    );
    bomb.resource_spans.extend(repeated.resource_spans);
    let err = head.check(&bomb).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("limit of 1048576"), "{err}");
    let err = head.apply(2, "t", &bomb).unwrap_err();
    assert!(matches!(err, HeadError::Refused(_)), "{err:?}");

    let after = (rows(&head.snapshot("t").unwrap()), head.unflushed_spans(), head.time_range("t"));
    assert_eq!(after, before);
    assert_eq!(head.flushed_through(2), 0, "the refused record's sequence is not held either");
    head.apply(3, "t", &request(vec![], vec![span(3, vec![])])).unwrap();
    assert_eq!(rows(&head.snapshot("t").unwrap()), 2);
}

#[test]
fn a_tenant_holding_too_many_bytes_is_due_for_a_flush() {
    let limits =
        HeadLimits { max_attribute_bytes: 0, freeze_bytes: 100 << 10, ..HeadLimits::default() };
    let head = SpanHead::with_limits(DedicatedColumns::default(), limits);
    head.apply(1, "big", &request(vec![], vec![span(1, vec![kv("b", &"b".repeat(200 << 10))])]))
        .unwrap();
    head.apply(2, "small", &request(vec![], vec![span(2, vec![])])).unwrap();
    let frozen = head.freeze_due(1_000_000, Duration::from_secs(3600), false).unwrap();
    let tenants: Vec<&str> = frozen.iter().map(|f| f.tenant.as_str()).collect();
    assert_eq!(tenants, ["big"]);
}
