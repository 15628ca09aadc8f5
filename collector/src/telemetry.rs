//! The collector's own Prometheus metrics, served at `/metrics`.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

pub struct Telemetry {
    registry: Registry,
    pub spans_received: ClientLabeled,
    pub spans_rejected: ClientLabeled,
    pub requests_refused: IntCounterVec,
    pub wal_bytes: IntGauge,
    pub wal_segments: IntGauge,
    pub wal_fsync_seconds: Histogram,
    pub head_spans: IntGauge,
    pub head_bytes: IntGauge,
    pub blocks: IntGauge,
    pub block_bytes: IntGauge,
    pub flush_seconds: Histogram,
    pub flushes: IntCounter,
    pub compactions: IntCounter,
    pub blocks_deleted_retention: IntCounter,
    pub query_seconds: prometheus::HistogramVec,
    pub profile_samples_received: ClientLabeled,
    /// Push request bodies as received (compressed), per pushing application.
    pub profile_push_bytes: ClientLabeled,
    /// Resident set size, refreshed on every render (Linux; stays 0 elsewhere).
    pub resident_memory_bytes: IntGauge,
    // Failures and what was done about them (the faults a durable write path must survive).
    /// WAL I/O failures by operation (`write`, `fsync`, `create`, `remove`).
    pub wal_failures: IntCounterVec,
    /// Flushes of a frozen head part that failed (each retry that fails counts again).
    pub flush_failures: IntCounter,
    /// Object-store calls that failed, by operation (`put`, `get`, `list`, `delete`, `copy`).
    pub storage_failures: IntCounterVec,
    /// Damaged blocks moved aside at start-up, by kind (`spans`, `profiles`).
    pub blocks_quarantined: IntCounterVec,
    /// WAL records replay could not apply, written to the quarantine directory.
    pub records_quarantined: IntCounter,
    /// Frozen head parts that could never be written as a block, written to the quarantine
    /// directory instead.
    pub parts_quarantined: IntCounter,
    /// Attribute values cut to `--max-attribute-bytes`.
    pub attributes_truncated: IntCounter,
    /// Spans dropped at ingest because the same (trace id, span id) was stored recently.
    pub spans_deduplicated: IntCounter,
    /// 1 when `/ready` answers 200.
    pub ready: IntGauge,
    // Hostile-ingest limits.
    /// Exports refused by an ingest limit, by reason (`spans_per_request`, `decoded_bytes`,
    /// `rate`, `tenants`).
    pub exports_limited: IntCounterVec,
    /// New span-metric or service-graph series not created because the tenant's series cap
    /// (--max-span-metric-series) was reached.
    pub span_metric_series_dropped: IntCounter,
    /// Queries refused, by reason (`timeout`, `concurrency`, `too_complex`, `function`,
    /// `memory`, `search_trace_ids`, `time_range`, `depth`, `series`, `samples`).
    pub queries_refused: IntCounterVec,
    /// Profile pushes refused by a limit (`too_large`, `too_complex`, `busy`, `too_many_apps`).
    pub profile_pushes_refused: IntCounterVec,
    // Replicas sharing one storage root (cluster/).
    /// Peer calls that failed (timeout, refused, error answer), by internal endpoint; each
    /// made the answer it was for partial.
    pub peer_failures: IntCounterVec,
    /// Peer calls that answered, by internal endpoint.
    pub peer_seconds: prometheus::HistogramVec,
    /// Blocks of the other namespaces of the storage root, by namespace (`(root)`: blocks at
    /// the root, from before namespaces).
    pub peer_namespace_blocks: prometheus::IntGaugeVec,
    /// Answers that lacked a peer's part, by API surface.
    pub partial_answers: IntCounterVec,
}

/// Distinct combinations of client-chosen label values (tenants, applications) one family
/// keeps; later combinations are counted under [`OTHER`], so a scrape stays bounded whatever
/// ids clients send.
pub const MAX_CLIENT_LABEL_SETS: usize = 1000;

/// The label value standing for every combination beyond the cap.
pub const OTHER: &str = "__other__";

/// A counter family whose first `client` labels carry client-chosen values, bounded to
/// [`MAX_CLIENT_LABEL_SETS`] combinations.
#[derive(Clone)]
pub struct ClientLabeled {
    inner: IntCounterVec,
    client: usize,
    seen: Arc<Mutex<HashSet<Vec<String>>>>,
}

impl ClientLabeled {
    pub fn with_label_values(&self, values: &[&str]) -> IntCounter {
        let split = self.client.min(values.len());
        let (chosen, fixed) = values.split_at(split);
        let known = {
            let mut seen = self.seen.lock();
            let key: Vec<String> = chosen.iter().map(|v| v.to_string()).collect();
            seen.contains(&key)
                || (seen.len() < MAX_CLIENT_LABEL_SETS && {
                    seen.insert(key);
                    true
                })
        };
        if known {
            return self.inner.with_label_values(values);
        }
        let bounded: Vec<&str> =
            std::iter::repeat_n(OTHER, chosen.len()).chain(fixed.iter().copied()).collect();
        self.inner.with_label_values(&bounded)
    }
}

fn client_labeled(
    r: &Registry,
    name: &str,
    help: &str,
    client: &[&str],
    fixed: &[&str],
) -> ClientLabeled {
    let labels: Vec<&str> = client.iter().chain(fixed).copied().collect();
    ClientLabeled {
        inner: counter_vec(r, name, help, &labels),
        client: client.len(),
        seen: Arc::default(),
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(h.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
    h
}

impl Telemetry {
    /// Registration only fails on a duplicate or malformed name: a programming error caught by
    /// the first test that builds `Telemetry`, never by input.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let r = Registry::new();
        let fast = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
        let slow = vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        Telemetry {
            spans_received: client_labeled(
                &r,
                "skein_spans_received_total",
                "Spans accepted and stored.",
                &["tenant"],
                &["protocol"],
            ),
            spans_rejected: client_labeled(
                &r,
                "skein_spans_rejected_total",
                "Spans rejected (invalid ids, malformed, too large).",
                &["tenant"],
                &["reason"],
            ),
            requests_refused: counter_vec(
                &r,
                "skein_requests_refused_total",
                "Export requests refused because the write path was full.",
                &["protocol"],
            ),
            wal_bytes: gauge(&r, "skein_wal_bytes", "Bytes in WAL segments on disk."),
            wal_segments: gauge(&r, "skein_wal_segments", "WAL segment files on disk."),
            wal_fsync_seconds: histogram(
                &r,
                "skein_wal_fsync_seconds",
                "WAL fsync latency.",
                fast.clone(),
            ),
            head_spans: gauge(&r, "skein_head_spans", "Spans in the in-memory head, all tenants."),
            head_bytes: gauge(
                &r,
                "skein_head_bytes",
                "Approximate bytes held by the in-memory head.",
            ),
            blocks: gauge(&r, "skein_blocks", "Committed blocks, all tenants."),
            block_bytes: gauge(&r, "skein_block_bytes", "Bytes of committed blocks."),
            flush_seconds: histogram(
                &r,
                "skein_flush_duration_seconds",
                "Head-to-block flush duration.",
                slow,
            ),
            flushes: counter(&r, "skein_flushes_total", "Head flushes committed."),
            compactions: counter(&r, "skein_compactions_total", "Compactions committed."),
            blocks_deleted_retention: counter(
                &r,
                "skein_retention_deleted_blocks_total",
                "Blocks deleted by retention.",
            ),
            query_seconds: {
                let h = prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "skein_query_duration_seconds",
                        "Query duration by endpoint.",
                    )
                    .buckets(fast),
                    &["endpoint"],
                )
                .unwrap_or_else(|e| panic!("skein_query_duration_seconds: {e}"));
                r.register(Box::new(h.clone())).unwrap_or_else(|e| panic!("query: {e}"));
                h
            },
            profile_samples_received: client_labeled(
                &r,
                "skein_profile_samples_received_total",
                "Profile samples (one per stack and profile type) accepted and stored.",
                &["tenant"],
                &[],
            ),
            profile_push_bytes: client_labeled(
                &r,
                "skein_profile_push_bytes_total",
                "Bytes of accepted profile push bodies (as sent, before decompression).",
                &["tenant", "app"],
                &[],
            ),
            profile_pushes_refused: counter_vec(
                &r,
                "skein_profile_pushes_refused_total",
                "Profile pushes refused by a limit (too large, too complex to decode, decode slots busy, too many apps).",
                &["reason"],
            ),
            resident_memory_bytes: gauge(
                &r,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            wal_failures: counter_vec(
                &r,
                "skein_wal_failures_total",
                "WAL I/O failures by operation.",
                &["op"],
            ),
            flush_failures: counter(
                &r,
                "skein_flush_failures_total",
                "Failed attempts to write a frozen head part as a block.",
            ),
            storage_failures: counter_vec(
                &r,
                "skein_storage_failures_total",
                "Object-store calls that failed, by operation.",
                &["op"],
            ),
            blocks_quarantined: counter_vec(
                &r,
                "skein_blocks_quarantined_total",
                "Damaged blocks moved aside at start-up.",
                &["kind"],
            ),
            records_quarantined: counter(
                &r,
                "skein_wal_records_quarantined_total",
                "WAL records that could not be applied, moved to the quarantine directory.",
            ),
            parts_quarantined: counter(
                &r,
                "skein_head_parts_quarantined_total",
                "Head parts that could not be written as blocks, moved to the quarantine directory.",
            ),
            attributes_truncated: counter(
                &r,
                "skein_attributes_truncated_total",
                "Attribute values truncated to --max-attribute-bytes.",
            ),
            spans_deduplicated: counter(
                &r,
                "skein_spans_deduplicated_total",
                "Spans dropped at ingest as copies of a recently stored (trace id, span id).",
            ),
            ready: gauge(&r, "skein_ready", "1 when /ready answers 200, else 0."),
            exports_limited: counter_vec(
                &r,
                "skein_exports_limited_total",
                "OTLP exports refused by an ingest limit, by reason.",
                &["reason"],
            ),
            span_metric_series_dropped: counter(
                &r,
                "skein_span_metric_series_dropped_total",
                "New span-metric and service-graph series dropped at the per-tenant series cap.",
            ),
            queries_refused: counter_vec(
                &r,
                "skein_queries_refused_total",
                "Queries refused or stopped by a query limit.",
                &["reason"],
            ),
            peer_failures: counter_vec(
                &r,
                "skein_peer_failures_total",
                "Calls to peer replicas that failed (the answer was partial), by endpoint.",
                &["endpoint"],
            ),
            peer_seconds: {
                let h = prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "skein_peer_request_duration_seconds",
                        "Calls to peer replicas that answered, by endpoint.",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                    &["endpoint"],
                )
                .unwrap_or_else(|e| panic!("skein_peer_request_duration_seconds: {e}"));
                r.register(Box::new(h.clone())).unwrap_or_else(|e| panic!("peer: {e}"));
                h
            },
            peer_namespace_blocks: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "skein_peer_namespace_blocks",
                        "Blocks of other replicas' namespaces of the storage root.",
                    ),
                    &["namespace"],
                )
                .unwrap_or_else(|e| panic!("skein_peer_namespace_blocks: {e}"));
                r.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("namespaces: {e}"));
                g
            },
            partial_answers: counter_vec(
                &r,
                "skein_partial_answers_total",
                "Query answers that lacked a peer replica's part, by API surface.",
                &["api"],
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        if let Some(rss) = resident_bytes() {
            self.resident_memory_bytes.set(rss);
        }
        let families = self.registry.gather();
        let mut out = String::new();
        // TextEncoder only fails on invalid families, which `new` cannot register.
        let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
        out
    }
}

/// Resident set size from the `VmRSS` line of `/proc/self/status` (Linux only).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: i64 = kib.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_chosen_label_values_are_bounded() {
        let t = Telemetry::new();
        for i in 0..MAX_CLIENT_LABEL_SETS + 50 {
            t.spans_received.with_label_values(&[format!("t{i}").as_str(), "grpc"]).inc();
            t.profile_push_bytes.with_label_values(&["a", format!("app{i}").as_str()]).inc();
        }
        t.spans_received.with_label_values(&["t0", "http_json"]).inc();
        let out = t.render();
        let count = |name: &str| out.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(count("skein_spans_received_total{"), MAX_CLIENT_LABEL_SETS + 2);
        assert_eq!(count("skein_profile_push_bytes_total{"), MAX_CLIENT_LABEL_SETS + 1);
        assert!(
            out.contains("skein_spans_received_total{protocol=\"grpc\",tenant=\"__other__\"} 50")
        );
        assert!(out.contains("app=\"__other__\",tenant=\"__other__\"} 50"), "{out}");
    }
}
