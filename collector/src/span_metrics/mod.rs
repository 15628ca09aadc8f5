//! Ingest-time aggregation (Tempo's metrics-generator, inside skein): span metrics and
//! service-graph edges per tenant, updated as each export is applied, sampled into a compact
//! time-series store every interval, snapshotted to Parquet under the data dir and kept for
//! the retention period. Counters restart from zero when the collector restarts — a counter
//! reset in Prometheus terms, which `rate()` and `increase()` handle.

pub mod calls;
pub mod exposition;
pub mod registry;
pub mod servicegraph;
pub mod snapshot;
pub mod tsdb;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use parking_lot::{Mutex, RwLock};

use crate::promql::labels::Labels;
use crate::promql::value::Series;
use crate::promql::{PromqlError, Storage};
use crate::traces::ApplyObserver;
use calls::CallMetrics;
use registry::{Exemplar, Registry};
use servicegraph::ServiceGraph;
use tsdb::Tsdb;

#[derive(Debug, thiserror::Error)]
pub enum SpanMetricsError {
    #[error("metrics snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("metrics snapshot: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("metrics snapshot: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("corrupt metrics snapshot: {0}")]
    Corrupt(String),
}

impl crate::error::Coded for SpanMetricsError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            SpanMetricsError::Io(_) => ErrorCode::Unavailable,
            SpanMetricsError::Parquet(_)
            | SpanMetricsError::Arrow(_)
            | SpanMetricsError::Corrupt(_) => ErrorCode::Internal,
        }
    }
}

/// Series not updated for this long are no longer sampled nor exposed (Tempo's default
/// stale duration), so finished operations drop out of dashboards after the lookback.
pub const STALE_MS: i64 = 15 * 60 * 1000;

/// Series not updated for this long are removed from the live registry, making room under
/// `--max-span-metric-series` (ids in span names or client-chosen service names would
/// otherwise grow it without end). The same as [`STALE_MS`]: such series are no longer sampled
/// nor exposed anyway, so evicting them changes no query; one that comes back restarts from 0,
/// a counter reset.
pub const EVICT_MS: i64 = STALE_MS;

/// Default of `--max-span-metric-series`.
pub const DEFAULT_MAX_SERIES: usize = 50_000;

/// How often sampled history is written to disk; a crash loses at most this much history.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct SpanMetricsConfig {
    /// Latency histogram bounds in seconds, ascending.
    pub buckets: Vec<f64>,
    /// Extra span-metrics labels from these attributes (resource first, then span).
    pub dimensions: Vec<String>,
    /// How long half an edge waits for the other.
    pub wait: Duration,
    /// Sampling interval of the time-series store (a Prometheus scrape interval).
    pub interval: Duration,
    pub retention: Duration,
    /// Snapshot directory (one subdirectory per tenant).
    pub dir: PathBuf,
    /// Live series per tenant (span metrics and service graph together).
    pub max_series: usize,
}

/// An attribute's value as a string (Tempo stringifies non-string values too).
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match v {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        _ => return None,
    })
    .filter(|s| !s.is_empty())
}

#[cfg(test)]
pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

struct Live {
    registry: Registry,
    spans: CallMetrics,
    graph: ServiceGraph,
}

/// One tenant's live series and sampled history.
pub struct Tenant {
    live: Mutex<Live>,
    tsdb: RwLock<Tsdb>,
    /// First tick not yet in a snapshot file.
    persisted: Mutex<usize>,
}

impl Storage for Tenant {
    fn select(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        Ok(self.tsdb.read().select(matches, start, end))
    }
}

/// An empty tenant, for reads of tenants that never sent spans.
struct Empty;

impl Storage for Empty {
    fn select(
        &self,
        _: &dyn Fn(&Labels) -> bool,
        _: i64,
        _: i64,
    ) -> Result<Vec<Series>, PromqlError> {
        Ok(Vec::new())
    }
}

/// Sizes for `/metrics` and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpanMetricsStats {
    pub live_series: usize,
    pub stored_series: usize,
    pub stored_samples: usize,
    pub pending_edges: usize,
    /// New series dropped at the cap since start.
    pub dropped_series: u64,
}

pub struct SpanMetrics {
    cfg: SpanMetricsConfig,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    dropped: AtomicU64,
    /// Also counts drops, for `/metrics`.
    dropped_counter: Option<prometheus::IntCounter>,
}

fn now_ms() -> i64 {
    crate::promql::now_ms()
}

impl SpanMetrics {
    /// Loads the snapshots within retention; deletes older ones.
    pub fn open(cfg: SpanMetricsConfig) -> Result<Self, SpanMetricsError> {
        let generator = SpanMetrics {
            cfg,
            tenants: RwLock::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            dropped_counter: None,
        };
        let min_t =
            now_ms() - i64::try_from(generator.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        let dirs = match std::fs::read_dir(&generator.cfg.dir) {
            Ok(d) => d.collect::<Result<Vec<_>, _>>()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for d in dirs {
            let Some(name) = d.file_name().to_str().map(String::from) else { continue };
            if !d.path().is_dir() {
                continue;
            }
            let mut ticks: BTreeMap<i64, Vec<(Labels, f64)>> = BTreeMap::new();
            for (path, last) in snapshot::files(&d.path())? {
                if last < min_t {
                    std::fs::remove_file(&path)?;
                    continue;
                }
                for (l, t, v) in snapshot::read(&path)? {
                    ticks.entry(t).or_default().push((l, v));
                }
            }
            let tenant = generator.tenant(&name);
            let mut db = tenant.tsdb.write();
            for (t, samples) in ticks.range(min_t..) {
                db.append(*t, samples.iter().map(|(l, v)| (l, *v)));
            }
            *tenant.persisted.lock() = db.next_tick();
            tracing::info!(
                tenant = name,
                series = db.series_count(),
                "span metrics history loaded"
            );
        }
        Ok(generator)
    }

    /// Counts dropped series in `c` as well (`skein_span_metric_series_dropped_total`).
    pub fn counting_drops_in(mut self, c: prometheus::IntCounter) -> Self {
        self.dropped_counter = Some(c);
        self
    }

    fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            if let Some(c) = &self.dropped_counter {
                c.inc_by(n);
            }
        }
    }

    pub fn config(&self) -> &SpanMetricsConfig {
        &self.cfg
    }

    fn tenant(&self, name: &str) -> Arc<Tenant> {
        if let Some(t) = self.tenants.read().get(name) {
            return t.clone();
        }
        self.tenants
            .write()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Tenant {
                    live: Mutex::new(Live {
                        registry: Registry::with_limit(self.cfg.max_series),
                        spans: CallMetrics::new(self.cfg.buckets.clone(), &self.cfg.dimensions),
                        graph: ServiceGraph::new(self.cfg.wait),
                    }),
                    tsdb: RwLock::new(Tsdb::default()),
                    persisted: Mutex::new(0),
                })
            })
            .clone()
    }

    /// The store a tenant's queries read (empty for unknown tenants).
    pub fn storage(&self, tenant: &str) -> Arc<dyn Storage> {
        match self.tenants.read().get(tenant) {
            Some(t) => t.clone(),
            None => Arc::new(Empty),
        }
    }

    /// Aggregates one export at `now_ms`.
    pub fn process(&self, tenant: &str, req: &ExportTraceServiceRequest, now_ms: i64) {
        let t = self.tenant(tenant);
        let mut live = t.live.lock();
        let Live { registry, spans, graph } = &mut *live;
        for rs in &req.resource_spans {
            let resource: &[KeyValue] = rs.resource.as_ref().map_or(&[], |r| &r.attributes);
            let service = attr(resource, "service.name").unwrap_or_default();
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    spans.observe(registry, &service, resource, span, now_ms);
                    graph.observe(registry, &service, resource, span, now_ms);
                }
            }
        }
        let dropped = registry.take_dropped();
        drop(live);
        self.count_dropped(dropped);
    }

    /// Expires waiting edges and samples every active series at `now_ms`.
    pub fn tick(&self, now_ms: i64) {
        let tenants: Vec<Arc<Tenant>> = self.tenants.read().values().cloned().collect();
        for t in tenants {
            let mut live = t.live.lock();
            let Live { registry, graph, spans } = &mut *live;
            graph.expire(registry, now_ms);
            let cutoff = now_ms.saturating_sub(EVICT_MS);
            let mut dead = HashSet::new();
            spans.evict(registry, cutoff, &mut dead);
            graph.evict(registry, cutoff, &mut dead);
            if !dead.is_empty() {
                let map = registry.remove(&dead);
                spans.renumber(&map);
                graph.renumber(&map);
            }
            let dropped = registry.take_dropped();
            let active = registry
                .series
                .iter()
                .filter(|s| s.touched_ms > 0 && now_ms - s.touched_ms < STALE_MS)
                .map(|s| (&s.labels, s.value));
            t.tsdb.write().append(now_ms, active);
            self.count_dropped(dropped);
        }
    }

    /// Writes ticks since the last snapshot and applies retention.
    pub fn persist(&self, now_ms: i64) -> Result<(), SpanMetricsError> {
        let min_t = now_ms - i64::try_from(self.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        let tenants: Vec<(String, Arc<Tenant>)> =
            self.tenants.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, t) in tenants {
            let dir = self.cfg.dir.join(&name);
            let mut persisted = t.persisted.lock();
            let (next, samples) = {
                let db = t.tsdb.read();
                let s: Vec<(Labels, i64, f64)> =
                    db.since(*persisted).into_iter().map(|(l, t, v)| (l.clone(), t, v)).collect();
                (db.next_tick(), s)
            };
            let refs: Vec<(&Labels, i64, f64)> =
                samples.iter().map(|(l, t, v)| (l, *t, *v)).collect();
            snapshot::write(&dir, &refs)?;
            *persisted = next;
            t.tsdb.write().trim(min_t);
            for (path, last) in snapshot::files(&dir)? {
                if last < min_t {
                    std::fs::remove_file(path)?;
                }
            }
        }
        Ok(())
    }

    /// Samples every interval and snapshots every minute until `stop`, then snapshots once more.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_snapshot = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                _ = &mut stop => true,
                _ = tick.tick() => false,
            };
            if !stopping {
                self.tick(now_ms());
            }
            if stopping || last_snapshot.elapsed() >= SNAPSHOT_EVERY {
                last_snapshot = tokio::time::Instant::now();
                let g = self.clone();
                match tokio::task::spawn_blocking(move || g.persist(now_ms())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "span metrics snapshot failed"),
                    Err(e) => tracing::error!(error = %e, "span metrics snapshot task failed"),
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// The Prometheus text exposition of a tenant's active series.
    pub fn exposition(&self, tenant: &str) -> String {
        let Some(t) = self.tenants.read().get(tenant).cloned() else { return String::new() };
        let now = now_ms();
        let live = t.live.lock();
        exposition::render(
            live.registry
                .series
                .iter()
                .filter(|s| s.touched_ms > 0 && now - s.touched_ms < STALE_MS),
        )
    }

    /// Exemplars of live series matching `matches`, within `[start, end]` (ms).
    pub fn exemplars(
        &self,
        tenant: &str,
        matches: &dyn Fn(&Labels) -> bool,
        start: i64,
        end: i64,
    ) -> Vec<(Labels, Vec<Exemplar>)> {
        let Some(t) = self.tenants.read().get(tenant).cloned() else { return Vec::new() };
        let live = t.live.lock();
        live.registry
            .series
            .iter()
            .filter(|s| !s.exemplars.is_empty() && matches(&s.labels))
            .map(|s| {
                let ex = s
                    .exemplars
                    .iter()
                    .filter(|e| e.t_ms >= start && e.t_ms <= end)
                    .copied()
                    .collect();
                (s.labels.clone(), ex)
            })
            .filter(|(_, ex): &(Labels, Vec<Exemplar>)| !ex.is_empty())
            .collect()
    }

    pub fn stats(&self) -> SpanMetricsStats {
        let mut s = SpanMetricsStats::default();
        for t in self.tenants.read().values() {
            let live = t.live.lock();
            s.live_series += live.registry.len();
            s.pending_edges += live.graph.pending();
            let db = t.tsdb.read();
            s.stored_series += db.series_count();
            s.stored_samples += db.samples();
        }
        s.dropped_series = self.dropped.load(Ordering::Relaxed);
        s
    }
}

impl ApplyObserver for SpanMetrics {
    fn applied(&self, tenant: &str, req: &ExportTraceServiceRequest) {
        self.process(tenant, req, now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn cfg(dir: &std::path::Path) -> SpanMetricsConfig {
        SpanMetricsConfig {
            buckets: calls::DEFAULT_BUCKETS.to_vec(),
            dimensions: Vec::new(),
            wait: Duration::from_secs(10),
            interval: Duration::from_secs(15),
            retention: Duration::from_secs(3600),
            dir: dir.to_path_buf(),
            max_series: 50_000,
        }
    }

    fn request(service: &str, n: usize) -> ExportTraceServiceRequest {
        let spans = (0..n)
            .map(|i| Span {
                trace_id: vec![1; 16],
                span_id: vec![i as u8 + 1; 8],
                name: "op".into(),
                kind: 2,
                start_time_unix_nano: 0,
                end_time_unix_nano: 5_000_000,
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn calls(g: &SpanMetrics, tenant: &str, t: i64) -> Vec<(i64, f64)> {
        let q = crate::promql::parse("traces_spanmetrics_calls_total[1h]").unwrap();
        let crate::promql::value::Value::Matrix(m) =
            crate::promql::instant(g.storage(tenant).as_ref(), &q, t).unwrap()
        else {
            panic!()
        };
        m.into_iter().flat_map(|s| s.points).collect()
    }

    #[test]
    fn tenants_are_aggregated_apart() {
        let dir = tempfile::tempdir().unwrap();
        let g = SpanMetrics::open(cfg(dir.path())).unwrap();
        let t0 = now_ms();
        g.process("a", &request("shop", 3), t0);
        g.process("b", &request("shop", 1), t0);
        g.tick(t0 + 1);
        assert_eq!(calls(&g, "a", t0 + 1), vec![(t0 + 1, 3.0)]);
        assert_eq!(calls(&g, "b", t0 + 1), vec![(t0 + 1, 1.0)]);
        assert!(calls(&g, "c", t0 + 1).is_empty());
        assert!(g.exposition("a").contains("traces_spanmetrics_calls_total{service=\"shop\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"op\",status_code=\"STATUS_CODE_UNSET\"} 3\n"));
    }

    #[test]
    fn history_survives_a_restart_and_counters_restart_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = now_ms();
        {
            let g = SpanMetrics::open(cfg(dir.path())).unwrap();
            g.process("a", &request("shop", 3), t0);
            g.tick(t0 + 1);
            g.tick(t0 + 2);
            g.persist(t0 + 2).unwrap();
            g.process("a", &request("shop", 1), t0 + 3);
            g.tick(t0 + 3);
            g.persist(t0 + 3).unwrap();
        }
        let g = SpanMetrics::open(cfg(dir.path())).unwrap();
        assert_eq!(calls(&g, "a", t0 + 3), vec![(t0 + 1, 3.0), (t0 + 2, 3.0), (t0 + 3, 4.0)]);
        g.process("a", &request("shop", 2), t0 + 4);
        g.tick(t0 + 4);
        assert_eq!(calls(&g, "a", t0 + 4).last(), Some(&(t0 + 4, 2.0)));
        let q = crate::promql::parse("increase(traces_spanmetrics_calls_total[1h])").unwrap();
        let crate::promql::value::Value::Vector(v) =
            crate::promql::instant(g.storage("a").as_ref(), &q, t0 + 4).unwrap()
        else {
            panic!()
        };
        // 3 → 3 → 4 → reset → 2: an increase of 1 + 2 within the samples (plus extrapolation).
        assert!(v[0].v >= 3.0, "{v:?}");
    }

    fn named(service: &str, names: impl Iterator<Item = String>) -> ExportTraceServiceRequest {
        let mut req = request(service, 0);
        req.resource_spans[0].scope_spans[0].spans = names
            .enumerate()
            .map(|(i, name)| Span {
                trace_id: vec![1; 16],
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name,
                kind: 2,
                end_time_unix_nano: 1_000_000,
                ..Default::default()
            })
            .collect();
        req
    }

    #[test]
    fn series_beyond_the_cap_are_dropped_and_idle_ones_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let per_key = calls::DEFAULT_BUCKETS.len() + 4;
        let mut c = cfg(dir.path());
        c.max_series = 10 * per_key;
        // No service-graph edge completes (root spans wait for their client side).
        c.wait = Duration::from_secs(86_400);
        let counter = prometheus::IntCounter::new("d", "d").unwrap();
        let g = SpanMetrics::open(c).unwrap().counting_drops_in(counter.clone());
        let t0 = now_ms();
        g.process("a", &named("shop", (0..25).map(|i| format!("GET /order/{i}"))), t0);
        let s = g.stats();
        assert_eq!(s.live_series, 10 * per_key);
        assert_eq!(s.dropped_series, 15);
        assert_eq!(counter.get(), 15);
        // Known series keep counting at the cap.
        g.process("a", &named("shop", std::iter::once("GET /order/0".to_string())), t0 + 1);
        assert_eq!(g.stats().dropped_series, 15);
        g.process("b", &named("shop", std::iter::once("x".to_string())), t0 + 1);
        assert_eq!(g.stats().dropped_series, 15, "the cap is per tenant");
        // After EVICT_MS idle, only the refreshed series remain and new ones fit again.
        let later = t0 + EVICT_MS;
        g.process("a", &named("shop", std::iter::once("GET /order/0".to_string())), later);
        g.tick(later + 1);
        assert_eq!(
            g.stats().live_series,
            per_key + per_key,
            "a keeps its refreshed series, b its recent one"
        );
        g.process("a", &named("shop", (100..109).map(|i| format!("GET /order/{i}"))), later + 2);
        assert_eq!(g.stats().dropped_series, 15);
        let exp = g.exposition("a");
        assert!(exp.contains("span_name=\"GET /order/0\"") && exp.contains("GET /order/108"));
        assert!(exp.contains("traces_spanmetrics_calls_total{service=\"shop\",span_kind=\"SPAN_KIND_SERVER\",span_name=\"GET /order/0\",status_code=\"STATUS_CODE_UNSET\"} 3\n"), "{exp}");
    }

    #[test]
    fn retention_deletes_old_history() {
        let dir = tempfile::tempdir().unwrap();
        let g = SpanMetrics::open(cfg(dir.path())).unwrap();
        let t0 = now_ms() - 7_200_000;
        g.process("a", &request("shop", 1), t0);
        g.tick(t0);
        g.persist(t0).unwrap();
        assert_eq!(snapshot::files(&dir.path().join("a")).unwrap().len(), 1);
        g.persist(now_ms()).unwrap();
        assert!(snapshot::files(&dir.path().join("a")).unwrap().is_empty());
        assert_eq!(g.stats().stored_series, 0);
    }
}
