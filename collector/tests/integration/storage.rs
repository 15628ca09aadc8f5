//! Durability and block lifecycle: flush, restart, WAL replay idempotence, compaction,
//! retention, bounded query memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::common::*;
use prost::Message;
use skein_collector::head::SpanHead;
use skein_collector::query::{QueryEngine, QueryError};
use skein_collector::spanrows::DedicatedColumns;
use skein_collector::store::durable::DurableStore;
use skein_collector::store::faults::FaultyStore;
use skein_collector::store::prefix::PrefixedStore;
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
async fn compacted_inputs_a_query_still_reads_are_deleted_only_after_it_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let (store, head, _engine) = offline_store(dir.path()).await;
    let now = now_nanos();
    for b in 0..4u64 {
        head.apply(b + 1, T, &request(vec![trace(20 + b, "a", "GET /", now, 5, 2, false)]))
            .unwrap();
        flush_all(&store, &head).await;
    }
    let spans_files =
        || -> usize { walkdir(dir.path()).iter().filter(|p| p.ends_with("spans.parquet")).count() };
    assert_eq!(spans_files(), 4);
    // A query's view of the catalog, taken before the merge swaps its blocks out.
    let reading = store.blocks(T);
    assert_eq!(store.compact(20).await.unwrap(), 4);
    assert_eq!(store.blocks(T).len(), 1);
    assert_eq!(spans_files(), 5, "the inputs a query holds keep their files");
    for b in &reading {
        let path = b.file("spans.parquet");
        assert!(
            object_store::ObjectStoreExt::head(&store.object_store, &path).await.is_ok(),
            "{path} is readable"
        );
    }
    drop(reading);
    // The next round (nothing left to merge) deletes what no query reads any more.
    assert_eq!(store.compact(20).await.unwrap(), 0);
    assert_eq!(spans_files(), 1);
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

/// A store of `n` blocks of tenant `T`, block `k` holding trace `k` (4 spans); returns the
/// block directory root and each block's id, in trace order.
async fn blocks_on_disk(dir: &std::path::Path, n: u64) -> (std::path::PathBuf, Vec<String>) {
    let (store, head, _) = offline_store(dir).await;
    let now = now_nanos();
    let mut ids = Vec::new();
    for k in 0..n {
        head.apply(k + 1, T, &request(vec![trace(k, "a", "GET /", now, 5, 3, false)])).unwrap();
        flush_all(&store, &head).await;
        let newest = store.blocks(T).into_iter().map(|b| b.meta.id.clone()).max().unwrap();
        ids.push(newest);
    }
    let url = config(dir, |_| {}).store.url;
    (std::path::PathBuf::from(url.trim_start_matches("file://")), ids)
}

/// Relative paths of every file under `root/sub`, sorted.
fn files_under(root: &std::path::Path, sub: &str) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), root, out);
            } else {
                out.push(e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join(sub), root, &mut out);
    out.sort();
    out
}

async fn open_with_metrics(dir: &std::path::Path) -> (Arc<Store>, QueryEngine, Arc<Telemetry>) {
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
    let engine = QueryEngine::new(store.clone(), head, metrics.clone(), 64 << 20).unwrap();
    (store, engine, metrics)
}

fn quarantined(metrics: &Telemetry) -> u64 {
    metrics.blocks_quarantined.with_label_values(&["spans"]).get()
}

#[tokio::test]
async fn damaged_blocks_are_quarantined_at_start_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (root, ids) = blocks_on_disk(dir.path(), 6).await;
    let block = |k: usize| root.join(T).join(&ids[k]);
    // 0: torn meta (a power loss mid-write), 1: empty meta, 2: bloom filter missing,
    // 3: bloom filter of the wrong length, 4: spans file shorter than its meta says. 5 is intact.
    let meta = std::fs::read(block(0).join("meta.json")).unwrap();
    std::fs::write(block(0).join("meta.json"), &meta[..meta.len() / 2]).unwrap();
    std::fs::write(block(1).join("meta.json"), b"").unwrap();
    std::fs::remove_file(block(2).join("bloom.bin")).unwrap();
    std::fs::write(block(3).join("bloom.bin"), b"12345").unwrap();
    let spans = std::fs::read(block(4).join("spans.parquet")).unwrap();
    std::fs::write(block(4).join("spans.parquet"), &spans[..spans.len() - 10]).unwrap();

    let (store, engine, metrics) = open_with_metrics(dir.path()).await;
    let served: Vec<String> = store.blocks(T).iter().map(|b| b.meta.id.clone()).collect();
    assert_eq!(served, vec![ids[5].clone()]);
    assert_eq!(quarantined(&metrics), 5);
    let t5 = engine.trace_by_id(T, id16(&trace_id(5)), None).await.unwrap();
    assert_eq!(span_ids(&t5).len(), 4);
    for (k, id) in ids.iter().enumerate().take(5) {
        assert!(files_under(&root, &format!("{T}/{id}")).is_empty(), "block {k} left in place");
        let moved = files_under(&root, &format!("quarantine/{T}/{id}"));
        assert!(moved.iter().any(|f| f.ends_with("meta.json")), "block {k}: {moved:?}");
    }
    assert_eq!(files_under(&root, &format!("quarantine/{T}/{}", ids[2])).len(), 4);

    // Quarantined files are never taken for blocks again, nor deleted as incomplete ones.
    let before = files_under(&root, "quarantine");
    let (store, _, metrics) = open_with_metrics(dir.path()).await;
    assert_eq!(store.blocks(T).len(), 1);
    assert_eq!(quarantined(&metrics), 0);
    assert_eq!(files_under(&root, "quarantine"), before);
}

#[tokio::test]
async fn a_span_file_that_is_not_parquet_is_quarantined_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (root, ids) = blocks_on_disk(dir.path(), 2).await;
    let spans = root.join(T).join(&ids[0]).join("spans.parquet");
    let len = std::fs::metadata(&spans).unwrap().len() as usize;
    std::fs::write(&spans, vec![0x5a; len]).unwrap();

    let (store, engine, metrics) = open_with_metrics(dir.path()).await;
    assert_eq!(store.blocks(T).len(), 1, "the block without Parquet magic is moved aside");
    assert_eq!(quarantined(&metrics), 1);
    let t1 = engine.trace_by_id(T, id16(&trace_id(1)), None).await.unwrap();
    assert_eq!(span_ids(&t1).len(), 4);
}

#[tokio::test]
async fn garbage_inside_a_well_framed_span_file_fails_its_queries_but_not_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (root, ids) = blocks_on_disk(dir.path(), 2).await;
    let spans = root.join(T).join(&ids[0]).join("spans.parquet");
    let len = std::fs::metadata(&spans).unwrap().len() as usize;
    let mut garbage = vec![0x5a; len];
    garbage[..4].copy_from_slice(b"PAR1");
    // A footer length that fits: the framing is right, the metadata is garbage.
    garbage[len - 8..len - 4].copy_from_slice(&100u32.to_le_bytes());
    garbage[len - 4..].copy_from_slice(b"PAR1");
    std::fs::write(&spans, garbage).unwrap();

    let (store, engine, metrics) = open_with_metrics(dir.path()).await;
    assert_eq!(store.blocks(T).len(), 2, "sizes, magic and bloom filter are fine: served");
    assert_eq!(quarantined(&metrics), 0);
    assert!(engine.trace_by_id(T, id16(&trace_id(0)), None).await.is_err());
    let t1 = engine.trace_by_id(T, id16(&trace_id(1)), None).await.unwrap();
    assert_eq!(span_ids(&t1).len(), 4);
}

#[tokio::test]
async fn a_damaged_input_of_a_committed_compaction_is_deleted_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let (root, ids) = blocks_on_disk(dir.path(), 2).await;
    // Keep copies of the inputs, merge them, then put the inputs back (a crash before their
    // deletion), one of them torn.
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    let saved = dir.path().join("saved");
    for id in &ids {
        copy(&root.join(T).join(id), &saved.join(id));
    }
    let (store, _, _) = offline_store(dir.path()).await;
    // Two blocks of 4 spans are over half of a 10-span target.
    assert_eq!(store.compact(10).await.unwrap(), 2);
    for id in &ids {
        copy(&saved.join(id), &root.join(T).join(id));
    }
    std::fs::write(root.join(T).join(&ids[0]).join("meta.json"), b"{").unwrap();

    let (store, engine, metrics) = open_with_metrics(dir.path()).await;
    assert_eq!(store.blocks(T).len(), 1);
    assert_eq!(quarantined(&metrics), 0);
    assert!(files_under(&root, "quarantine").is_empty());
    for id in &ids {
        assert!(files_under(&root, &format!("{T}/{id}")).is_empty(), "input {id} left");
    }
    for k in 0..2 {
        let t = engine.trace_by_id(T, id16(&trace_id(k)), None).await.unwrap();
        assert_eq!(span_ids(&t).len(), 4, "each span once");
    }
}

/// A store over `FaultyStore` wrapping the real local block directory.
async fn faulty_store(dir: &std::path::Path) -> (Arc<Store>, Arc<SpanHead>, Arc<FaultyStore>) {
    let cfg = config(dir, |_| {});
    let metrics = Arc::new(Telemetry::new());
    let faulty = FaultyStore::new(open_object_store(&cfg.store.url, &metrics).unwrap());
    let store = Store::open(faulty.clone(), DedicatedColumns::default(), metrics).await.unwrap();
    (Arc::new(store), Arc::new(SpanHead::new(DedicatedColumns::default())), faulty)
}

#[tokio::test]
async fn a_failed_flush_leaves_no_block_behind_and_its_retry_stores_the_spans_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, head, faulty) = faulty_store(dir.path()).await;
    head.apply(1, T, &request(vec![trace(1, "a", "GET /", now_nanos(), 5, 3, false)])).unwrap();
    let parts = head.freeze_due(1, std::time::Duration::from_secs(3600), true).unwrap();
    // The meta's PUT fails after the data files were stored.
    faulty.fail_puts_where(|p| p.filename() == Some("meta.json"), 1);
    for f in &parts {
        assert!(store.flush(f, || head.release(f)).await.is_err());
    }
    assert_eq!(faulty.injected(), 1);
    assert!(store.blocks(T).is_empty());
    let url = config(dir.path(), |_| {}).store.url;
    let root = std::path::PathBuf::from(url.trim_start_matches("file://"));
    assert!(files_under(&root, T).is_empty(), "failed upload removed: {:?}", files_under(&root, T));
    for f in &parts {
        store.flush(f, || head.release(f)).await.unwrap();
    }
    let (reopened, engine, _) = open_with_metrics(dir.path()).await;
    assert_eq!(reopened.blocks(T).len(), 1);
    let t = engine.trace_by_id(T, id16(&trace_id(1)), None).await.unwrap();
    assert_eq!(span_ids(&t).len(), 4);
}

#[tokio::test]
async fn a_failing_compaction_group_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (store, head, faulty) = faulty_store(dir.path()).await;
    let now = now_nanos();
    for (seq, tenant) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
        head.apply(seq, tenant, &request(vec![trace(seq, "s", "GET /", now, 5, 3, false)]))
            .unwrap();
        for f in head.freeze_due(1, std::time::Duration::from_secs(3600), true).unwrap() {
            store.flush(&f, || head.release(&f)).await.unwrap();
        }
    }
    faulty.fail_puts_where(|p| p.as_ref().starts_with("a/"), 1);
    assert!(store.compact(10).await.is_err(), "the failure is reported");
    assert_eq!((store.blocks("a").len(), store.blocks("b").len()), (2, 1));
    assert_eq!(store.compact(10).await.unwrap(), 2, "retried at the next round");
    assert_eq!(store.blocks("a").len(), 1);
}

#[tokio::test]
async fn blocks_under_a_key_prefix_are_found_by_trace_by_id_and_search() {
    // A bucket shared with other data, the store under `team/skein` (what s3://bucket/prefix
    // opens): DataFusion must see keys relative to the prefix to find the block files.
    let bucket: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::memory::InMemory::new());
    let prefixed = Arc::new(PrefixedStore::new(bucket.clone(), "team/skein"));
    let metrics = Arc::new(Telemetry::new());
    let store = Arc::new(
        Store::open(prefixed.clone(), DedicatedColumns::default(), metrics.clone()).await.unwrap(),
    );
    let head = Arc::new(SpanHead::new(DedicatedColumns::default()));
    let engine = QueryEngine::new(store.clone(), head.clone(), metrics.clone(), 64 << 20).unwrap();
    head.apply(1, T, &request(vec![trace(1, "a", "GET /", now_nanos(), 5, 3, false)])).unwrap();
    flush_all(&store, &head).await;
    assert!(head.snapshot(T).unwrap().is_empty(), "only the block can answer");
    let keys: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(bucket.list(None))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    assert!(keys.iter().all(|k| k.starts_with(&format!("team/skein/{T}/"))), "{keys:?}");

    let t = engine.trace_by_id(T, id16(&trace_id(1)), None).await.unwrap();
    assert_eq!(span_ids(&t).len(), 4);
    let all = skein_collector::query::search::SearchRequest {
        query: skein_collector::query::traceql::parse("{}").unwrap(),
        limit: 20,
        spss: 3,
        range: None,
    };
    let found = engine.search(T, all).await.unwrap();
    assert_eq!(found.traces.len(), 1, "{found:?}");
    // And after a restart over the same bucket.
    let reopened = Store::open(prefixed, DedicatedColumns::default(), metrics).await.unwrap();
    assert_eq!(reopened.blocks(T).len(), 1);
}

#[tokio::test]
async fn a_flushed_block_is_fsynced_file_and_directories_before_flush_returns() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let synced = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = synced.clone();
    let hook_root = root.clone();
    let hook: skein_collector::store::durable::SyncHook = Arc::new(move |p: &std::path::Path| {
        let rel = p.strip_prefix(&hook_root).unwrap().to_string_lossy().into_owned();
        log.lock().unwrap().push(rel);
    });
    let durable = DurableStore::with_sync_hook(&root, hook).unwrap();
    let metrics = Arc::new(Telemetry::new());
    let store = Store::open(Arc::new(durable), DedicatedColumns::default(), metrics).await.unwrap();
    let head = SpanHead::new(DedicatedColumns::default());
    head.apply(1, T, &request(vec![trace(1, "a", "GET /", now_nanos(), 5, 3, false)])).unwrap();
    flush_all(&store, &head).await;
    let id = store.blocks(T)[0].meta.id.clone();
    let synced = synced.lock().unwrap().clone();
    let b = format!("{T}/{id}");
    let mut want = Vec::new();
    for f in ["spans.parquet", "traces.parquet", "search.parquet", "bloom.bin", "meta.json"] {
        want.extend([format!("{b}/{f}"), b.clone(), T.to_string(), String::new()]);
    }
    assert_eq!(synced, want, "each file, then its directories, meta last");
}

/// Every file under `dir`, recursively.
fn walkdir(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}
