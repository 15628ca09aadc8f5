//! Profiling off (the default): no SIGPROF handler, no timer, no samples, no profile ids —
//! even with a pipeline installed and CPU-heavy spans running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod profiling_support;

use std::time::Duration;

use profiling_support::{spin, start_server};
use skein_instrument::profiling::{SigprofDisposition, profiling_timer_armed, sigprof_disposition};
use skein_instrument::{BatchConfig, Builder, Config, Protocol, Span};

#[test]
fn without_profiling_nothing_is_installed_and_nothing_is_sampled() {
    // The environment does not turn it on by itself.
    let cfg = Config::from_lookup(|k| (k == "SKEIN_PROFILING_HZ").then(|| "999".into())).unwrap();
    assert!(cfg.profiling.is_none());

    let (addr, received) = start_server();
    let guard = Builder::from_config(cfg)
        .service_name("no-prof")
        .tracing_subscriber(false)
        .endpoint(format!("http://{addr}"), Protocol::HttpProtobuf)
        .batch(BatchConfig { scheduled_delay: Duration::from_millis(50), ..Default::default() })
        .install()
        .unwrap();
    assert_eq!(sigprof_disposition(), SigprofDisposition::Default);
    assert!(!profiling_timer_armed());
    let mut root = Span::new("busy-root");
    root.in_scope(|| {
        Span::new("busy-child")
            .in_scope(|| spin(Duration::from_millis(300), profiling_support::hot_work));
    });
    drop(root);
    skein_instrument::flush();
    drop(guard);

    assert_eq!(sigprof_disposition(), SigprofDisposition::Default);
    assert!(!profiling_timer_armed());
    let stats = skein_instrument::profiling::stats();
    assert_eq!(stats, skein_instrument::ProfilingStats::default());
    assert!(received.pushes.lock().unwrap().is_empty());
    let spans = received.spans.lock().unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(spans.iter().all(|s| s.profile_id.is_none()), "{spans:?}");
}
