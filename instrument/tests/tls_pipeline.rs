//! The installed pipeline, configured only by `OTEL_*`/`SKEIN_PROFILING*` variables (through a
//! lookup function), against a TLS server that requires client certificates: spans exported
//! over OTLP/gRPC and profiles pushed to `/ingest` both arrive over mTLS with the configured
//! headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tls_support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use skein_instrument::{Builder, Config, Span};
use tls_support::{GRPC_EXPORT, Pki, start_tls_server};

fn spin(d: Duration) -> u64 {
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

#[test]
fn spans_and_profiles_reach_an_mtls_collector_with_the_configured_headers() {
    let pki = Pki::new();
    let (addr, rec) = start_tls_server(&pki, true);
    let (grpc, http) = (
        format!("https://127.0.0.1:{}", addr.port()),
        format!("https://localhost:{}", addr.port()),
    );
    let vars: HashMap<&str, String> = [
        ("OTEL_SERVICE_NAME", "tls-pipeline".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", grpc),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20tok-1,x-scope-orgid=team-a".into()),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-traces-only=t".into()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca.display().to_string()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.client_cert.display().to_string()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.client_key.display().to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ("SKEIN_PROFILING", "true".into()),
        ("SKEIN_PROFILING_ENDPOINT", http),
        ("SKEIN_PROFILING_PUSH_INTERVAL", "200ms".into()),
        ("SKEIN_PROFILING_HEADERS", "x-profiles-only=p".into()),
    ]
    .into_iter()
    .collect();
    let cfg = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let guard = Builder::from_config(cfg).tracing_subscriber(false).install().unwrap();

    let mut root = Span::new("busy");
    root.in_scope(|| spin(Duration::from_millis(400)));
    drop(root);
    skein_instrument::flush();
    rec.wait_for(Duration::from_secs(10), "a profile push", |r| {
        !r.requests_to("/ingest").is_empty()
    });
    drop(guard);

    assert!(rec.spans.load(Ordering::Relaxed) >= 1);
    assert_eq!(skein_instrument::stats().dropped_export_failed, 0);
    let exports = rec.requests_to(GRPC_EXPORT);
    assert!(!exports.is_empty());
    for e in &exports {
        assert_eq!(e.header("authorization"), Some("Bearer tok-1"));
        assert_eq!(e.header("x-scope-orgid"), Some("team-a"));
        assert_eq!(e.header("x-traces-only"), Some("t"));
        assert_eq!(e.header("x-profiles-only"), None);
    }
    let pushes = rec.requests_to("/ingest");
    for p in &pushes {
        assert_eq!(p.header("authorization"), Some("Bearer tok-1"));
        assert_eq!(p.header("x-scope-orgid"), Some("team-a"));
        assert_eq!(p.header("x-profiles-only"), Some("p"));
        // Traces-only headers stay with the traces.
        assert_eq!(p.header("x-traces-only"), None);
    }
    let stats = skein_instrument::profiling::stats();
    assert_eq!(stats.profiles_failed, 0, "{stats:?}");
    assert!(stats.profiles_pushed >= 1, "{stats:?}");
}
