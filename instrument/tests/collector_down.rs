//! With nothing listening at the OTLP endpoint, requests still succeed and every span is
//! dropped and counted — none waits in an unbounded queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use skein_instrument::layer::HttpServerLayer;
use skein_instrument::{BatchConfig, Builder, Protocol, stats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_succeed_and_spans_are_dropped_and_counted_when_the_collector_is_down() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let _guard = Builder::default()
        .service_name("collector-down")
        .endpoint(format!("http://{dead_addr}"), Protocol::Grpc)
        .batch(BatchConfig {
            max_queue_size: 64,
            scheduled_delay: Duration::from_millis(20),
            max_export_batch_size: 16,
            export_timeout: Duration::from_millis(200),
        })
        .tracing_subscriber(false)
        .install()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(HttpServerLayer::new());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    let client = reqwest::Client::new();
    let n = 300u64;
    let started = std::time::Instant::now();
    for _ in 0..n {
        let r = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // Export attempts time out in the background; requests never waited for them.
    assert!(started.elapsed() < Duration::from_secs(20));
    skein_instrument::flush();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats();
        if s.dropped_queue_full + s.dropped_export_failed == n {
            assert_eq!(s.exported, 0);
            assert!(s.dropped_export_failed > 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not all spans accounted for: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        skein_instrument::flush();
    }
}
