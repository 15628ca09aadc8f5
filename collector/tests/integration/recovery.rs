//! Retried exports and restarts: every acknowledged span is answered once, wherever its first
//! copy was (head, block or WAL) when the retry came.

use super::common::*;
use skein_collector::ingest::Protocol;

const T: &str = "recovery";

async fn export(
    c: &Collector,
    req: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) {
    c.r().ingestor.export(T.into(), req.clone(), None, Protocol::Grpc).await.unwrap();
}

async fn assert_once(c: &Collector, n: u64, spans: usize) {
    let t = c.r().engine.trace_by_id(T, id16(&trace_id(n)), None).await.unwrap();
    let ids = span_ids(&t);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), spans, "trace {n}: {} spans, want {spans}", ids.len());
    assert_eq!(unique.len(), spans, "trace {n} holds a span twice");
}

#[tokio::test]
async fn a_retried_export_is_answered_once_wherever_its_first_copy_is() {
    let mut c = Collector::start(|a| a.head_max_age = Some("100ms".into())).await;
    let now = now_nanos();
    let flushed = request(vec![trace(11, "a", "GET /", now, 5, 4, false)]);
    export(&c, &flushed).await;
    c.wait_flushed(T).await;
    // The client lost the ack and sends it again: the first copy is in a block.
    export(&c, &flushed).await;
    let twice_in_head = request(vec![trace(12, "a", "GET /b", now, 5, 2, false)]);
    export(&c, &twice_in_head).await;
    export(&c, &twice_in_head).await;
    assert_once(&c, 11, 5).await;
    assert_once(&c, 12, 3).await;
    let before = c.r().engine.metrics.spans_deduplicated.get();
    assert!(before >= 8, "{before} spans counted as deduplicated");

    // After a restart (replay, blocks written just before it) retries are still recognised.
    c.restart().await;
    export(&c, &flushed).await;
    export(&c, &twice_in_head).await;
    assert_once(&c, 11, 5).await;
    assert_once(&c, 12, 3).await;
    assert_eq!(c.r().engine.metrics.spans_deduplicated.get(), 8);
    c.wait_flushed(T).await;
    assert_once(&c, 11, 5).await;
    assert_once(&c, 12, 3).await;
    c.stop().await;
}
