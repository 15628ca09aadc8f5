//! Durability and block lifecycle: flush, restart, WAL replay idempotence, compaction,
//! retention, bounded query memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::common::*;
use prost::Message;
use skein_collector::head::SpanHead;
use skein_collector::query::{QueryEngine, QueryError};
use skein_collector::spanrows::DedicatedColumns;
use skein_collector::store::{Store, open_object_store};
use skein_collector::telemetry::Telemetry;
use skein_collector::wal::{Wal, WalConfig};

const T: &str = "single-tenant";

#[tokio::test]
async fn spans_survive_flush_and_restart_exactly_once() {
    let mut c = Collector::start(|a| a.head_max_age = Some("100ms".into())).await;
    let now = now_nanos();
    c.r()
        .ingestor
        .export(
            T.into(),
            request(vec![trace(1, "a", "GET /", now, 5, 4, false)]),
            None,
            skein_collector::ingest::Protocol::Grpc,
        )
        .await
        .unwrap();
    c.wait_flushed(T).await;
    // A second export stays in the WAL/head only.
    c.r()
        .ingestor
        .export(
            T.into(),
            request(vec![trace(2, "a", "GET /x", now, 5, 1, false)]),
            None,
            skein_collector::ingest::Protocol::Grpc,
        )
        .await
        .unwrap();
    c.restart().await;
    let one = c.r().engine.trace_by_id(T, id16(&trace_id(1)), None).await.unwrap();
    assert_eq!(span_ids(&one).len(), 5);
    let two = c.r().engine.trace_by_id(T, id16(&trace_id(2)), None).await.unwrap();
    assert_eq!(span_ids(&two).len(), 2);
    c.stop().await;
}

/// A crash after a block is committed but before the WAL is truncated must not duplicate
/// spans on replay: the block's WAL watermark makes replay skip them.
#[tokio::test]
async fn replay_after_crash_between_flush_and_wal_truncation_does_not_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |_| {});
    let req = request(vec![trace(7, "a", "GET /", now_nanos(), 5, 3, false)]);
    {
        let (mut wal, _) = Wal::open(WalConfig::new(cfg.data_dir.join("wal"))).unwrap();
        let seq = wal.append_batch(&[(T, &req.encode_to_vec())]).unwrap();
        let metrics = Arc::new(Telemetry::new());
        let store = Store::open(
            open_object_store(&cfg.store.url, &metrics).unwrap(),
            DedicatedColumns::default(),
            metrics,
        )
        .await
        .unwrap();
        let head = SpanHead::new(DedicatedColumns::default());
        head.apply(seq, T, &req).unwrap();
        for f in head.freeze_due(1, std::time::Duration::from_secs(3600), true).unwrap() {
            store.flush(&f, || {}).await.unwrap();
        }
        // "Crash": the WAL is never truncated.
    }
    let running = skein_collector::serve::start(&cfg).await.unwrap();
    let data = running.engine.trace_by_id(T, id16(&trace_id(7)), None).await.unwrap();
    let ids = span_ids(&data);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), 4, "spans duplicated or lost: {ids:?}");
    assert_eq!(ids, unique);
    running.stop().await.unwrap();
}

async fn offline_store(dir: &std::path::Path) -> (Arc<Store>, Arc<SpanHead>, QueryEngine) {
    offline_store_with_memory(dir, 64 << 20).await
}

async fn offline_store_with_memory(
    dir: &std::path::Path,
    memory: usize,
) -> (Arc<Store>, Arc<SpanHead>, QueryEngine) {
    let cfg = config(dir, |_| {});
    let metrics = Arc::new(Telemetry::new());
    let store = Arc::new(
        Store::open(
            open_object_store(&cfg.store.url, &metrics).unwrap(),
            DedicatedColumns::default(),
            metrics.clone(),
        )
        .await
        .unwrap(),
    );
    let head = Arc::new(SpanHead::new(DedicatedColumns::default()));
    let engine = QueryEngine::new(store.clone(), head.clone(), metrics, memory).unwrap();
    (store, head, engine)
}

async fn flush_all(store: &Store, head: &SpanHead) {
    for f in head.freeze_due(1, std::time::Duration::from_secs(3600), true).unwrap() {
        store.flush(&f, || head.release(&f)).await.unwrap();
    }
}

#[tokio::test]
async fn compaction_merges_small_blocks_and_keeps_every_span() {
    let dir = tempfile::tempdir().unwrap();
    let (store, head, engine) = offline_store(dir.path()).await;
    let now = now_nanos();
    for b in 0..6u64 {
        // Trace 1 is split over every block; each block also has its own trace.
        let mut split = trace(1, "a", "GET /", now, 5, 0, false);
        split.scope_spans[0].spans[0].span_id = span_id(1, b);
        if b > 0 {
            split.scope_spans[0].spans[0].parent_span_id = span_id(1, 0);
        }
        head.apply(b + 1, T, &request(vec![split, trace(10 + b, "a", "GET /", now, 5, 2, false)]))
            .unwrap();
        flush_all(&store, &head).await;
    }
    assert_eq!(store.blocks(T).len(), 6);
    // 24 spans of young small blocks are below half of a 100-span target: not worth a rewrite yet.
    assert_eq!(store.compact(100).await.unwrap(), 0);
    assert_eq!(store.blocks(T).len(), 6);
    let merged = store.compact(40).await.unwrap();
    assert_eq!(merged, 6);
    let blocks = store.blocks(T);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].meta.spans, 6 * 4);
    assert_eq!(blocks[0].meta.wal_seq, 6);
    let split = engine.trace_by_id(T, id16(&trace_id(1)), None).await.unwrap();
    assert_eq!(span_ids(&split).len(), 6);
    for b in 0..6 {
        let t = engine.trace_by_id(T, id16(&trace_id(10 + b)), None).await.unwrap();
        assert_eq!(span_ids(&t).len(), 3);
    }
    // The inputs are gone from storage, and a reopened store sees only the merged block.
    let (reopened, _, _) = offline_store(dir.path()).await;
    assert_eq!(reopened.blocks(T).len(), 1);
}

#[tokio::test]
async fn retention_deletes_expired_blocks_only() {
    let dir = tempfile::tempdir().unwrap();
    let (store, head, engine) = offline_store(dir.path()).await;
    let now = now_nanos();
    let old = now - 48 * 3600 * 1_000_000_000;
    head.apply(1, T, &request(vec![trace(1, "a", "old", old, 5, 1, false)])).unwrap();
    flush_all(&store, &head).await;
    head.apply(2, T, &request(vec![trace(2, "a", "new", now, 5, 1, false)])).unwrap();
    flush_all(&store, &head).await;
    let deleted = store.apply_retention(std::time::Duration::from_secs(24 * 3600)).await.unwrap();
    assert_eq!(deleted, 1);
    assert!(matches!(
        engine.trace_by_id(T, id16(&trace_id(1)), None).await,
        Err(QueryError::NotFound)
    ));
    assert!(engine.trace_by_id(T, id16(&trace_id(2)), None).await.is_ok());
    let (reopened, _, _) = offline_store(dir.path()).await;
    assert_eq!(reopened.blocks(T).len(), 1);
}

#[tokio::test]
async fn too_large_query_fails_with_resources_exhausted_and_engine_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, head, engine) = offline_store_with_memory(dir.path(), 32 * 1024).await;
    let now = now_nanos();
    let traces: Vec<_> = (0..3000).map(|n| trace(n, "a", "GET /", now, 5, 2, false)).collect();
    head.apply(1, T, &request(traces)).unwrap();
    let all = skein_collector::query::search::SearchRequest {
        query: skein_collector::query::traceql::parse("{}").unwrap(),
        limit: 20,
        spss: 3,
        range: None,
    };
    match engine.search(T, all).await {
        Err(QueryError::ResourcesExhausted(_)) => {}
        other => panic!("expected ResourcesExhausted, got {other:?}"),
    }
    // Point lookups still work within the budget.
    assert!(engine.trace_by_id(T, id16(&trace_id(5)), None).await.is_ok());
}
