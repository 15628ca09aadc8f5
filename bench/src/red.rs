//! `skein-bench red`: latency of the RED panels' `query_range` (1 h at a 15 s step) over span
//! metrics with the demo shop's shape and cardinality, against a real Prometheus holding the
//! very same samples, in the same run.
//!
//! The history is made, not waited for: a demo-shaped trace stream (gateway → orders →
//! inventory / payment, errors and a slow tail) is fed through skein's own span-metrics and
//! service-graph generator on a simulated clock, sampled every scrape interval, and written as
//! span-metrics snapshots into a fresh data dir that a spawned `skein serve` loads. The same
//! samples go to Prometheus as OpenMetrics through `promtool tsdb create-blocks-from
//! openmetrics`. Both are then asked the same Grafana panel queries over HTTP, alternately.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Value, json};
use tokio::process::Command;

use super::dataset::Rng;
use super::procs::{self, ScratchDir, Spawned};
use super::report::{Report, Row, Samples, Summary, fmt_mib, fmt_ms, machine_line};
use super::{BenchError, parse_duration};
use skein_collector::ingest::DEFAULT_TENANT;
use skein_collector::promql::labels::Labels;
use skein_collector::span_metrics::{SpanMetrics, SpanMetricsConfig, calls};

#[derive(Debug, Clone, clap::Args)]
pub struct RedArgs {
    /// History to build and to query (the panels' time range).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub window: Duration,
    /// Query step (Grafana's `step` for a 1 h panel is 15 s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub step: Duration,
    /// Simulated checkouts per second (each is 8 spans over 4 services).
    #[arg(long, default_value_t = 20)]
    pub rps: u32,
    /// Sequential requests per query and target.
    #[arg(long, default_value_t = 50)]
    pub queries: usize,
    /// The Prometheus peer (default: `prometheus` on PATH; skipped when absent).
    #[arg(long)]
    pub prometheus: Option<PathBuf>,
    /// `promtool`, to load the same samples into Prometheus (default: on PATH).
    #[arg(long)]
    pub promtool: Option<PathBuf>,
    /// Where the scratch data goes (default: the temp dir).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The panels of a RED dashboard, as Grafana's Prometheus datasource sends them.
const QUERIES: [(&str, &str); 4] = [
    (
        "rate by service",
        r#"sum by (service) (rate(traces_spanmetrics_calls_total{span_kind="SPAN_KIND_SERVER"}[1m]))"#,
    ),
    (
        "error ratio by service",
        r#"sum by (service) (rate(traces_spanmetrics_calls_total{span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"}[1m])) / sum by (service) (rate(traces_spanmetrics_calls_total{span_kind="SPAN_KIND_SERVER"}[1m]))"#,
    ),
    (
        "p99 by service",
        r#"histogram_quantile(0.99, sum by (le, service) (rate(traces_spanmetrics_latency_bucket{span_kind="SPAN_KIND_SERVER"}[1m])))"#,
    ),
    (
        "p90 by operation (payment)",
        r#"histogram_quantile(0.9, sum by (le, span_name) (rate(traces_spanmetrics_latency_bucket{service="payment"}[1m])))"#,
    ),
];

pub async fn run(args: RedArgs) -> Result<(), BenchError> {
    if args.step.is_zero() || args.window < args.step * 4 {
        return Err(BenchError::Usage("--window must span at least four --step".into()));
    }
    let scratch = ScratchDir::new(args.scratch_dir.as_deref(), "skein-bench-red")?;
    let skein_dir = scratch.path.join("skein");
    let end_ms = now_ms();
    // Five extra minutes of history so the first point's 1m rate window and 5m lookback are full.
    let start_ms = end_ms - millis(args.window) - 5 * 60_000;

    let history = build_history(&args, &skein_dir, start_ms, end_ms)?;
    let om = scratch.path.join("red.om");
    write_openmetrics(&om, &history.series)?;

    let prom_bins = find_prometheus(&args);
    let mut prom = match &prom_bins {
        Some((prometheus, promtool)) => {
            Some(spawn_prometheus(prometheus, promtool, &om, &scratch.path.join("prom")).await?)
        }
        None => None,
    };
    let serve = procs::spawn_skein(&skein_dir, "never", &[]).await?;
    let skein_base = format!("http://{}", serve.http.map(|a| a.to_string()).unwrap_or_default());

    let client = reqwest::Client::new();
    let (q_start, q_end) = ((end_ms - millis(args.window)) / 1000, end_ms / 1000);
    let step_s = args.step.as_secs_f64();
    let mut rows = Vec::new();
    let mut data = serde_json::Map::new();
    let (mut all_skein, mut all_prom) = (Samples::default(), Samples::default());
    let mut agreement = Vec::new();
    for (label, q) in QUERIES {
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("query", q)
            .append_pair("start", &q_start.to_string())
            .append_pair("end", &q_end.to_string())
            .append_pair("step", &step_s.to_string())
            .finish();
        let skein_url = format!("{skein_base}/prometheus/api/v1/query_range?{qs}");
        let prom_url = prom.as_ref().map(|p| format!("{}/api/v1/query_range?{qs}", p.base));
        let bar = ProgressBar::new(args.queries as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!("  {label} [{{bar:30}}] {{pos}}/{{len}}"))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (mut s, mut p) = (Samples::default(), Samples::default());
        let (mut s_body, mut p_body) = (Value::Null, Value::Null);
        // Two warm-up rounds, then alternate so both see the same machine noise.
        for k in 0..args.queries + 2 {
            let (took, body) = timed_get(&client, &skein_url).await?;
            if k >= 2 {
                s.push(took);
            }
            s_body = body;
            if let Some(url) = &prom_url {
                let (took, body) = timed_get(&client, url).await?;
                if k >= 2 {
                    p.push(took);
                }
                p_body = body;
            }
            if k >= 2 {
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let agree = prom_url.as_ref().map(|_| compare(&s_body, &p_body));
        if let Some(a) = &agree {
            agreement.push(format!("{label}: {a}"));
        }
        let (ss, ps) = (s.summary(), p.summary());
        let ratio = match (ss, ps) {
            (Some(a), Some(b)) if b.p50 > 0 => Some(a.p50 as f64 / b.p50 as f64),
            _ => None,
        };
        let mut row = Row::new(&format!("{label}, p50 / p99"), lat(ss));
        if let Some(ps) = ps {
            row = row.peer(lat(Some(ps)), ratio);
        }
        rows.push(row.goal("p50 ≤ 20 ms", ss.map(|l| l.p50 <= 20_000_000)));
        data.insert(
            label.into(),
            json!({"query": q, "skein": ss.map(|l| l.json()), "prometheus": ps.map(|l| l.json()),
                   "series": series_count(&s_body), "agreement": agree}),
        );
        all_skein.extend(s);
        all_prom.extend(p);
    }
    let (all_s, all_p) = (all_skein.summary(), all_prom.summary());
    let all_ratio = match (all_s, all_p) {
        (Some(a), Some(b)) if b.p50 > 0 => Some(a.p50 as f64 / b.p50 as f64),
        _ => None,
    };
    let mut all_row = Row::new("all RED panels, p50 / p99", lat(all_s));
    if all_p.is_some() {
        all_row = all_row.peer(lat(all_p), all_ratio);
    }
    rows.insert(0, all_row.goal("p50 ≤ 20 ms", all_s.map(|l| l.p50 <= 20_000_000)));

    let skein_rss = procs::memory(serve.pid).map(|m| m.0).unwrap_or(0);
    let prom_rss = prom.as_ref().and_then(|p| procs::memory(p.proc.pid)).map(|m| m.0);
    rows.push(Row::new(
        "stored series / samples",
        format!("{} / {}", history.series.len(), history.samples),
    ));
    rows.push(Row::new(
        "memory per stored series (1 h history: values + labels)",
        format!("{:.0} B", history.bytes as f64 / history.series.len().max(1) as f64),
    ));
    let mut rss_row = Row::new("process RSS after the queries", fmt_mib(skein_rss));
    if let Some(r) = prom_rss {
        rss_row = rss_row.peer(fmt_mib(r), (r > 0).then(|| skein_rss as f64 / r as f64));
    }
    rows.push(rss_row);

    let alive = if let Some(p) = prom.as_mut() { p.proc.check_alive() } else { Ok(()) };
    serve.stop().await;
    if let Some(p) = prom.take() {
        p.proc.stop().await;
    }
    alive?;
    let mut notes = vec![
        format!(
            "history: {} of demo-shaped traffic at {} checkouts/s (8 spans each), sampled every {}s; \
             queries over the last {}, step {}s, {} requests each per target after 2 warm-ups",
            humantime::format_duration(args.window + Duration::from_secs(300)),
            args.rps,
            spanmetrics_interval().as_secs(),
            humantime::format_duration(args.window),
            step_s,
            args.queries
        ),
        "both over HTTP on loopback, GET, requests alternating between the two targets".into(),
    ];
    match &prom_bins {
        Some(_) => {
            notes.push(format!("answers compared point by point — {}", agreement.join("; ")))
        }
        None => notes.push("no prometheus/promtool on PATH: no peer in this run".into()),
    }
    notes.push(machine_line());
    let report = Report {
        title: "skein-bench red — RED panel query_range over span metrics".into(),
        against: "peer: Prometheus (same samples, loaded with promtool), same run".into(),
        rows,
        notes,
        data: Value::Object(data),
    };
    report.finish(args.json.as_deref())
}

fn lat(s: Option<Summary>) -> String {
    s.map(|l| format!("{} / {}", fmt_ms(l.p50), fmt_ms(l.p99))).unwrap_or_else(|| "—".into())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The scrape interval `skein serve` samples span metrics at by default.
fn spanmetrics_interval() -> Duration {
    Duration::from_secs(15)
}

struct History {
    series: Vec<skein_collector::promql::value::Series>,
    samples: usize,
    /// Values (8 bytes per tick, as the store keeps them) plus label bytes.
    bytes: usize,
}

/// Feeds simulated demo traffic through the generator tick by tick and snapshots it where
/// `skein serve --data-dir dir` loads span-metrics history from.
fn build_history(
    args: &RedArgs,
    dir: &Path,
    start_ms: i64,
    end_ms: i64,
) -> Result<History, BenchError> {
    let failed = |e: &dyn std::fmt::Display| BenchError::Failed(e.to_string());
    let interval = spanmetrics_interval();
    let generator = SpanMetrics::open(SpanMetricsConfig {
        buckets: calls::DEFAULT_BUCKETS.to_vec(),
        dimensions: Vec::new(),
        wait: Duration::from_secs(10),
        interval,
        retention: Duration::from_secs(336 * 3600),
        dir: dir.join("spanmetrics"),
        // History is built offline from the bench's own spans: no cap.
        max_series: usize::MAX,
    })
    .map_err(|e| failed(&e))?;
    let ticks = ((end_ms - start_ms) / millis(interval)).max(1) as u64;
    let bar = ProgressBar::new(ticks);
    bar.set_style(
        ProgressStyle::with_template("  building history [{bar:30}] {pos}/{len} ticks")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rng = Rng::new(args.seed);
    let per_tick = (f64::from(args.rps) * interval.as_secs_f64()).round() as usize;
    for k in 1..=ticks as i64 {
        let t = start_ms + k * millis(interval);
        let req = checkouts(&mut rng, per_tick, t);
        generator.process(DEFAULT_TENANT, &req, t);
        generator.tick(t);
        bar.inc(1);
    }
    bar.finish_and_clear();
    generator.persist(end_ms).map_err(|e| failed(&e))?;
    let series = generator
        .storage(DEFAULT_TENANT)
        .select(&|_: &Labels| true, i64::MIN, i64::MAX)
        .map_err(|e| failed(&e))?;
    let stats = generator.stats();
    let label_bytes: usize =
        series.iter().flat_map(|s| s.labels.iter()).map(|(k, v)| k.len() + v.len()).sum();
    Ok(History {
        samples: stats.stored_samples,
        bytes: series.len() * ticks as usize * 8 + label_bytes,
        series,
    })
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

/// `n` checkouts ending around `t_ms`, shaped like the demo shop: the gateway's HTTP server
/// span, orders called over gRPC, which reserves stock (3 % unavailable) and charges payment
/// (2 % declined, 5 % slow bank), whose fraud scoring is an internal span; plus catalogue reads.
fn checkouts(rng: &mut Rng, n: usize, t_ms: i64) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    let end_ns = (t_ms as u64) * 1_000_000;
    let ms = |x: f64| (x * 1e6) as u64;
    for _ in 0..n {
        let trace_id = rng.id::<16>().to_vec();
        let mut span = |service: &'static str,
                        name: &str,
                        kind: SpanKind,
                        parent: &[u8],
                        dur_ns: u64,
                        error: bool,
                        rng: &mut Rng| {
            let id = rng.id::<8>().to_vec();
            by_service.entry(service).or_default().push(Span {
                trace_id: trace_id.clone(),
                span_id: id.clone(),
                parent_span_id: parent.to_vec(),
                name: name.into(),
                kind: kind as i32,
                start_time_unix_nano: end_ns - dur_ns,
                end_time_unix_nano: end_ns,
                status: error
                    .then(|| Status { code: StatusCode::Error as i32, ..Default::default() }),
                ..Default::default()
            });
            id
        };
        if rng.chance(0.2) {
            let d = ms(1.0 + rng.unit() * 2.0);
            span("gateway", "GET /", SpanKind::Server, &[], d, false, rng);
            continue;
        }
        let unavailable = rng.chance(0.03);
        let declined = !unavailable && rng.chance(0.02);
        let slow_bank = rng.chance(0.05);
        let fraud = ms(2.0 + rng.unit() * 6.0);
        let bank =
            if slow_bank { ms(300.0 + rng.unit() * 600.0) } else { ms(5.0 + rng.unit() * 10.0) };
        let reserve = ms(1.0 + (rng.normal().abs() * 2.0));
        let charge = if unavailable { 0 } else { fraud + bank };
        let orders = reserve + charge + ms(1.0);
        let gw = orders + ms(0.5);
        let error = unavailable || declined;
        let root = span("gateway", "POST /checkout", SpanKind::Server, &[], gw, error, rng);
        let c = span(
            "gateway",
            "shop.v1.Orders/PlaceOrder",
            SpanKind::Client,
            &root,
            orders,
            error,
            rng,
        );
        let o =
            span("orders", "shop.v1.Orders/PlaceOrder", SpanKind::Server, &c, orders, error, rng);
        let c = span(
            "orders",
            "shop.v1.Inventory/Reserve",
            SpanKind::Client,
            &o,
            reserve,
            unavailable,
            rng,
        );
        span(
            "inventory",
            "shop.v1.Inventory/Reserve",
            SpanKind::Server,
            &c,
            reserve,
            unavailable,
            rng,
        );
        if !unavailable {
            let c = span(
                "orders",
                "shop.v1.Payment/Charge",
                SpanKind::Client,
                &o,
                charge,
                declined,
                rng,
            );
            let p = span(
                "payment",
                "shop.v1.Payment/Charge",
                SpanKind::Server,
                &c,
                charge,
                declined,
                rng,
            );
            span("payment", "fraud_score", SpanKind::Internal, &p, fraud, false, rng);
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The samples as OpenMetrics text (one family's series together, `# EOF` at the end), the
/// input `promtool tsdb create-blocks-from openmetrics` takes.
fn write_openmetrics(
    path: &Path,
    series: &[skein_collector::promql::value::Series],
) -> Result<(), BenchError> {
    let mut sorted: Vec<&skein_collector::promql::value::Series> = series.iter().collect();
    sorted.sort_by(|a, b| a.labels.get("__name__").cmp(&b.labels.get("__name__")));
    let mut out = String::new();
    for s in sorted {
        let name = s.labels.get("__name__").unwrap_or_default();
        let labels: Vec<String> = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        for (t, v) in &s.points {
            if v.is_nan() {
                continue;
            }
            let _ =
                writeln!(out, "{name}{{{}}} {v} {}.{:03}", labels.join(","), t / 1000, t % 1000);
        }
    }
    out.push_str("# EOF\n");
    std::fs::write(path, out)
        .map_err(|e| BenchError::Failed(format!("cannot write {}: {e}", path.display())))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn find_prometheus(args: &RedArgs) -> Option<(PathBuf, PathBuf)> {
    let prometheus = args.prometheus.clone().or_else(|| on_path("prometheus"))?;
    let promtool = args.promtool.clone().or_else(|| on_path("promtool"))?;
    Some((prometheus, promtool))
}

struct Prometheus {
    proc: Spawned,
    base: String,
}

async fn spawn_prometheus(
    prometheus: &Path,
    promtool: &Path,
    openmetrics: &Path,
    dir: &Path,
) -> Result<Prometheus, BenchError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| BenchError::Failed(format!("{what}: {e}"));
    let tsdb = dir.join("data");
    std::fs::create_dir_all(&tsdb).map_err(|e| failed("prometheus dir", &e))?;
    let out = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(openmetrics)
        .arg(&tsdb)
        .output()
        .await
        .map_err(|e| failed("cannot run promtool", &e))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "promtool could not load the samples: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        .map_err(|e| failed("prometheus config", &e))?;
    let http: std::net::SocketAddr = ([127, 0, 0, 1], procs::free_port()?).into();
    let log = dir.join("prometheus.log");
    let log_file = std::fs::File::create(&log).map_err(|e| failed("prometheus log", &e))?;
    let child = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg(format!("--web.listen-address={http}"))
        .arg("--storage.tsdb.retention.time=30d")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(&format!("cannot start {}", prometheus.display()), &e))?;
    let pid = child.id().unwrap_or(0);
    let mut proc = Spawned { name: "prometheus".into(), child, pid, grpc: http, http: None, log };
    let base = format!("http://{http}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        proc.check_alive()?;
        if client.get(format!("{base}/-/ready")).send().await.is_ok_and(|r| r.status().is_success())
        {
            return Ok(Prometheus { proc, base });
        }
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "prometheus did not become ready; log {}:\n{}",
                proc.log.display(),
                proc.log_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn timed_get(client: &reqwest::Client, url: &str) -> Result<(Duration, Value), BenchError> {
    let started = Instant::now();
    let r =
        client.get(url).send().await.map_err(|e| BenchError::Failed(format!("GET {url}: {e}")))?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| BenchError::Failed(format!("GET {url}: {e}")))?;
    let took = started.elapsed();
    if !status.is_success() {
        return Err(BenchError::Failed(format!(
            "GET {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )));
    }
    let v = serde_json::from_slice(&body)
        .map_err(|e| BenchError::Failed(format!("GET {url}: not JSON: {e}")))?;
    Ok((took, v))
}

fn series_count(body: &Value) -> usize {
    body["data"]["result"].as_array().map_or(0, Vec::len)
}

/// Matches series by labels and compares their points: how many series each side returned,
/// and the largest relative difference over points both have.
fn compare(skein: &Value, prom: &Value) -> String {
    let index = |body: &Value| -> BTreeMap<String, BTreeMap<i64, f64>> {
        body["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let points = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let t = (p[0].as_f64()? * 1000.0).round() as i64;
                        let v: f64 = p[1].as_str()?.parse().ok()?;
                        Some((t, v))
                    })
                    .collect();
                (s["metric"].to_string(), points)
            })
            .collect()
    };
    let (a, b) = (index(skein), index(prom));
    let (mut compared, mut worst) = (0usize, 0f64);
    for (labels, pa) in &a {
        let Some(pb) = b.get(labels) else { continue };
        for (t, va) in pa {
            let Some(vb) = pb.get(t) else { continue };
            if va.is_nan() && vb.is_nan() {
                continue;
            }
            compared += 1;
            let denom = va.abs().max(vb.abs()).max(1e-12);
            worst = worst.max((va - vb).abs() / denom);
        }
    }
    format!(
        "{} vs {} series, {compared} points compared, max relative difference {worst:.2e}",
        a.len(),
        b.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_checkouts_have_the_demo_topology() {
        let mut rng = Rng::new(7);
        let req = checkouts(&mut rng, 200, 1_800_000_000_000);
        let services: Vec<&str> = req
            .resource_spans
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .filter_map(|r| r.attributes.first())
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(services, ["gateway", "inventory", "orders", "payment"]);
        let spans: Vec<&Span> =
            req.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
        // Every non-root span's parent is in the same request (service-graph edges pair up).
        let ids: std::collections::HashSet<&[u8]> = spans.iter().map(|s| &s.span_id[..]).collect();
        assert!(
            spans
                .iter()
                .all(|s| s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id[..]))
        );
        assert!(spans.iter().any(|s| s.status.is_some()), "some calls fail");
        assert!(spans.iter().all(|s| s.end_time_unix_nano >= s.start_time_unix_nano));
    }

    #[test]
    fn agreement_reports_series_and_worst_difference() {
        let a =
            json!({"data":{"result":[{"metric":{"service":"a"},"values":[[1.0,"2"],[2.0,"4"]]}]}});
        let b =
            json!({"data":{"result":[{"metric":{"service":"a"},"values":[[1.0,"2"],[2.0,"5"]]}]}});
        let r = compare(&a, &b);
        assert!(r.starts_with("1 vs 1 series, 2 points compared"), "{r}");
        assert!(r.ends_with("2.00e-1"), "{r}");
    }
}
