//! Replicas sharing one storage root: each writes and cleans only its own namespace
//! (`nodes/<node-id>/`), reads every other namespace's committed blocks and the root's, and
//! never touches what another replica is still writing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use skein_collector::cluster::{Cluster, ClusterConfig};
use skein_collector::head::SpanHead;
use skein_collector::query::QueryEngine;
use skein_collector::spanrows::DedicatedColumns;
use skein_collector::store::Store;
use skein_collector::store::durable::DurableStore;
use skein_collector::store::namespace::NodeId;
use skein_collector::store::shared::SharedBlocks;
use skein_collector::telemetry::Telemetry;

const T: &str = "shared-tenant";

async fn replica(
    root: &Arc<dyn object_store::ObjectStore>,
    node: Option<&str>,
) -> (Arc<Store>, SpanHead) {
    let node = node.map(|n| NodeId::new(n).unwrap());
    let metrics = Arc::new(Telemetry::new());
    let store = Store::open_in(root.clone(), node.as_ref(), DedicatedColumns::default(), metrics)
        .await
        .unwrap();
    (Arc::new(store), SpanHead::new(DedicatedColumns::default()))
}

async fn write(store: &Store, head: &SpanHead, seq: u64, trace_no: u64) {
    head.apply(seq, T, &request(vec![trace(trace_no, "svc", "GET /", now_nanos(), 5, 2, false)]))
        .unwrap();
    for f in head.freeze_due(1, Duration::from_secs(3600), true).unwrap() {
        store.flush(&f, || head.release(&f)).await.unwrap();
    }
}

fn engine_of(
    node: &str,
    store: Arc<Store>,
    root: &Arc<dyn object_store::ObjectStore>,
) -> QueryEngine {
    let metrics = Arc::new(Telemetry::new());
    let node = NodeId::new(node).unwrap();
    let shared = Arc::new(SharedBlocks::new(root.clone(), node.clone(), metrics.clone()));
    let cfg = ClusterConfig {
        node,
        peers: Vec::new(),
        timeout: Duration::from_secs(1),
        poll: Duration::from_secs(30),
        token: None,
        ca: None,
        identity: None,
        retention: Duration::from_secs(3600),
    };
    let cluster = Arc::new(Cluster::new(cfg, shared, metrics.clone()).unwrap());
    let head = Arc::new(SpanHead::new(DedicatedColumns::default()));
    QueryEngine::new(store, head, metrics, 64 << 20).unwrap().with_cluster(cluster)
}

#[tokio::test]
async fn replicas_read_each_others_blocks_and_leave_each_others_writes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root: Arc<dyn object_store::ObjectStore> = Arc::new(DurableStore::new(dir.path()).unwrap());
    // Written before namespaces existed: a block at the root.
    let (old, old_head) = replica(&root, None).await;
    write(&old, &old_head, 7, 10).await;
    let (a, a_head) = replica(&root, Some("a")).await;
    let (b, b_head) = replica(&root, Some("b")).await;
    write(&a, &a_head, 1, 1).await;
    write(&b, &b_head, 1, 2).await;
    assert!(
        dir.path().join("nodes/a").join(T).is_dir() && dir.path().join("nodes/b").join(T).is_dir()
    );

    // A write of `a` in progress: data without a meta. `b` restarting must not take it for
    // an interrupted write of its own and delete it.
    let pending = dir.path().join("nodes/a").join(T).join("01JAAAAAAAAAAAAAAAAAAAAAAA");
    std::fs::create_dir_all(&pending).unwrap();
    std::fs::write(pending.join("spans.parquet"), b"half written").unwrap();
    let (b, _) = replica(&root, Some("b")).await;

    let engine = engine_of("b", b.clone(), &root);
    engine.cluster.as_ref().unwrap().shared.refresh_all().await.unwrap();
    for (n, want) in [(1u64, 3usize), (2, 3), (10, 3)] {
        let got = engine.trace_by_id(T, id16(&trace_id(n)), None).await.unwrap();
        assert_eq!(span_ids(&got).len(), want, "trace {n} from b");
    }
    let blocks = engine.cluster.as_ref().unwrap().shared.namespace_blocks();
    assert_eq!(blocks, vec![(String::new(), 1), ("a".to_string(), 1)], "root and a, not b itself");
    assert!(pending.join("spans.parquet").exists(), "b deleted a's write in progress");

    // The root block's WAL records are this node's from before the upgrade: replay skips them.
    let (upgraded, _) = replica(&root, Some("a")).await;
    assert!(upgraded.covered()[T].contains(7), "{:?}", upgraded.covered());
}
