//! Retried exports and restarts: every acknowledged span is answered once, wherever its first
//! copy was (head, block or WAL) when the retry came.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use prost::Message;

use super::common::*;
use skein_collector::config::Config;
use skein_collector::health::{Check, Health};
use skein_collector::ingest::Protocol;
use skein_collector::query::QueryEngine;
use skein_collector::store::faults::FaultyStore;
use skein_collector::store::open_object_store;
use skein_collector::telemetry::Telemetry;
use skein_collector::traces::Traces;

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

/// Opens the span write path of `cfg` over `store` (no maintenance loop: tests drive flushes).
async fn open_traces(cfg: &Config, store: Arc<dyn ObjectStore>) -> (Arc<Traces>, Arc<Health>) {
    let health = Health::new(Duration::ZERO, Duration::from_secs(600));
    let traces =
        Traces::open(store, cfg.traces(), Arc::new(Telemetry::new()), health.clone(), None)
            .await
            .unwrap();
    (traces, health)
}

async fn write(traces: &Traces, n: u64) {
    let req = request(vec![trace(n, "a", "GET /", now_nanos(), 5, 2, false)]);
    let payload = bytes::Bytes::from(req.encode_to_vec());
    traces.write(T.into(), req, payload).await.unwrap();
}

/// Span ids of trace `n` as the write path answers them (head and blocks).
async fn stored(traces: &Traces, n: u64) -> Vec<Vec<u8>> {
    let engine = QueryEngine::new(
        traces.store().clone(),
        traces.head().clone(),
        Arc::new(Telemetry::new()),
        64 << 20,
    )
    .unwrap();
    match engine.trace_by_id(T, id16(&trace_id(n)), None).await {
        Ok(t) => span_ids(&t),
        Err(_) => Vec::new(),
    }
}

fn local(cfg: &Config) -> Arc<dyn ObjectStore> {
    open_object_store(&cfg.store.url, &Telemetry::new()).unwrap()
}

#[tokio::test]
async fn an_older_part_whose_flush_failed_is_replayed_although_a_newer_part_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |_| {});
    let faulty = FaultyStore::new(local(&cfg));
    {
        let (traces, _) = open_traces(&cfg, faulty.clone()).await;
        write(&traces, 21).await;
        let older = traces.head().freeze_due(1, Duration::from_secs(3600), true).unwrap();
        faulty.fail_next_puts(1);
        for part in &older {
            assert!(traces.store().flush(part, || traces.head().release(part)).await.is_err());
        }
        write(&traces, 22).await;
        let newer = traces.head().freeze_due(1, Duration::from_secs(3600), true).unwrap();
        for part in &newer {
            traces.store().flush(part, || traces.head().release(part)).await.unwrap();
        }
        // "Crash": the older part is never retried, the WAL never truncated.
        traces.stop();
    }
    let (traces, _) = open_traces(&cfg, local(&cfg)).await;
    assert_eq!(stored(&traces, 21).await.len(), 3, "the older part's spans were lost");
    assert_eq!(stored(&traces, 22).await.len(), 3, "the newer part's spans were replayed again");
    traces.stop();
}

#[tokio::test]
async fn flushes_failing_during_an_outage_are_retried_and_ready_tells_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |a| a.head_max_age = Some("50ms".into()));
    let faulty = FaultyStore::new(local(&cfg));
    let (traces, health) = open_traces(&cfg, faulty.clone()).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(traces.clone().run(async move {
        let _ = stop_rx.await;
    }));
    faulty.set_down(true);
    write(&traces, 31).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !health.is_failing(Check::Storage) {
        assert!(Instant::now() < deadline, "a failing flush was not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!health.readiness().ok, "storage down past the grace period: not ready");
    assert_eq!(stored(&traces, 31).await.len(), 3, "still answered from the head");
    faulty.set_down(false);
    while !(traces.store().blocks(T).len() == 1 && traces.head().snapshot(T).unwrap().is_empty()) {
        assert!(Instant::now() < deadline, "the part was not flushed after the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!health.is_failing(Check::Storage));
    assert!(health.readiness().ok);
    let _ = stop_tx.send(());
    run.await.unwrap();
    traces.stop();
    let (traces, _) = open_traces(&cfg, local(&cfg)).await;
    assert_eq!(stored(&traces, 31).await.len(), 3);
    traces.stop();
}
