//! `skein-bench query`: loads a Jaeger/ClickHouse-benchmark-shaped data set (10 spans/trace,
//! 11 attributes/span, 10 services, ~50 operations, log-normal durations with a tail, 1% errors)
//! into a spawned `skein serve` over OTLP/gRPC, waits until it is flushed into blocks and
//! compaction has settled, then measures bytes/span on disk, trace-by-id latency without a
//! time range and TraceQL search latency over a 1 h window.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::dataset::{DataSpec, Rng, TraceGenerator};
use super::ingest::{fetch_metrics, metric_sum, now_ns};
use super::procs::{self, RssSampler, ScratchDir, Spawned};
use super::report::{Report, Row, Samples, Summary, fmt_count, fmt_mib, fmt_ms, machine_line};
use super::rpc::RawTraceClient;
use super::{BenchError, parse_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Spans in the data set.
    #[arg(long, default_value_t = 10_000_000)]
    pub spans: u64,
    #[arg(long, default_value_t = 10)]
    pub spans_per_trace: usize,
    #[arg(long, default_value_t = 11)]
    pub attributes: usize,
    /// Spans per export request while loading.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent exporters while loading.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The data set's spans start within this long before the load begins.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub spread: Duration,
    /// Search window (ending at the newest data).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub window: Duration,
    /// Passed to `skein serve` so the head is flushed soon after loading.
    #[arg(long, default_value = "5s")]
    pub head_max_age: String,
    /// How long block count, flushes and compactions must stay unchanged to call it settled.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Give up waiting for flush and compaction after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub settle_timeout: Duration,
    /// Sequential trace-by-id requests.
    #[arg(long, default_value_t = 200)]
    pub trace_queries: usize,
    /// Sequential requests per search query.
    #[arg(long, default_value_t = 50)]
    pub search_queries: usize,
    /// Keep the data set here: loaded on the first run, reused (no load) when it already
    /// holds one from an earlier run with the same shape.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the scratch data dir goes when --data-dir is not given (default: the temp dir).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    pub fsync: String,
    /// Extra flag for the spawned `skein serve` (repeatable).
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub(crate) const MANIFEST: &str = "bench-dataset.json";
const SAMPLE_IDS: usize = 2000;

/// What was loaded, kept next to the data so later runs can reuse it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub spans: u64,
    pub traces: u64,
    pub spans_per_trace: usize,
    pub attributes: usize,
    pub from_ns: u64,
    pub to_ns: u64,
    pub sample_trace_ids: Vec<String>,
    pub load_seconds: f64,
    pub load_spans_per_sec: f64,
}

/// Plan of the load: `requests` requests of `traces_per_request` traces, request `i` covering
/// the `i`-th slice of [from, to) so the data arrives roughly in time order, as live data would.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub requests: u64,
    pub traces_per_request: usize,
    pub from_ns: u64,
    pub to_ns: u64,
}

impl Plan {
    pub fn new(spans: u64, batch: usize, spans_per_trace: usize, from_ns: u64, to_ns: u64) -> Self {
        let traces_per_request = (batch / spans_per_trace.max(1)).max(1);
        let per_request = (traces_per_request * spans_per_trace.max(1)) as u64;
        Plan { requests: spans.div_ceil(per_request).max(1), traces_per_request, from_ns, to_ns }
    }

    pub fn slot(&self, i: u64) -> (u64, u64) {
        let width = (self.to_ns - self.from_ns) as u128;
        let a = self.from_ns + (width * i as u128 / self.requests as u128) as u64;
        let b = self.from_ns + (width * (i as u128 + 1) / self.requests as u128) as u64;
        (a, b.max(a + 1))
    }
}

struct HttpTarget {
    client: reqwest::Client,
    base: String,
}

impl HttpTarget {
    async fn get(&self, path_and_query: &str, accept: &str) -> Result<(u16, Bytes), String> {
        let r = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .header("accept", accept)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }
}

#[derive(Clone, PartialEq, Message)]
struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    trace: Option<TracesData>,
}

fn span_count(t: &TracesData) -> usize {
    t.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()
}

pub(crate) async fn load(
    args: &QueryArgs,
    serve: &Spawned,
    manifest_path: &Path,
) -> Result<Manifest, BenchError> {
    let spec = DataSpec::new(args.spans_per_trace, args.attributes);
    let to_ns = now_ns();
    let from_ns = to_ns - args.spread.as_nanos() as u64;
    let plan = Plan::new(args.spans, args.batch, spec.spans_per_trace, from_ns, to_ns);
    let total_spans = plan.requests * (plan.traces_per_request * spec.spans_per_trace) as u64;
    eprintln!(
        "loading {} spans ({} requests × {} traces × {} spans, {} attributes/span) spread over {}",
        fmt_count(total_spans as f64),
        plan.requests,
        plan.traces_per_request,
        spec.spans_per_trace,
        spec.attributes,
        humantime::format_duration(args.spread)
    );

    // Generation runs on its own thread, a little ahead of the exporters.
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Bytes, usize)>(args.concurrency * 4);
    let seed = args.seed;
    let every = (plan.requests as usize / SAMPLE_IDS).max(1) as u64;
    let generator = tokio::task::spawn_blocking(move || {
        let g = TraceGenerator::new(spec);
        let mut rng = Rng::new(seed);
        let mut sample = Vec::new();
        for i in 0..plan.requests {
            let (a, b) = plan.slot(i);
            let out = g.request(&mut rng, plan.traces_per_request, a, b);
            if i % every == 0 {
                let k = rng.below(out.trace_ids.len() as u64) as usize;
                sample.push(hex::encode(out.trace_ids[k]));
            }
            let body = Bytes::from(out.req.encode_to_vec());
            if tx.blocking_send((i, body, out.spans)).is_err() {
                break;
            }
        }
        sample
    });
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::new(total_spans);
    bar.set_style(
        ProgressStyle::with_template("  load [{bar:30}] {pos}/{len} spans {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let mut client = RawTraceClient::connect(serve.grpc, false).await?;
        let rx = rx.clone();
        let acked = acked.clone();
        let refused = refused.clone();
        let bar = bar.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((i, body, spans)) = next else { return Ok::<(), BenchError>(()) };
                let mut failures = 0;
                loop {
                    match client.export(body.clone()).await {
                        Ok(rejected) if rejected > 0 => {
                            return Err(BenchError::Failed(format!(
                                "request {i}: collector rejected {rejected} spans"
                            )));
                        }
                        Ok(_) => {
                            let n = acked.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
                            bar.set_position(n);
                            let secs = started.elapsed().as_secs_f64();
                            bar.set_message(format!("{} spans/s", fmt_count(n as f64 / secs)));
                            break;
                        }
                        Err(s) if s.code() == tonic::Code::Unavailable => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(s) => {
                            failures += 1;
                            if failures >= 5 {
                                return Err(BenchError::Failed(format!(
                                    "request {i} failed {failures} times: {:?} {}",
                                    s.code(),
                                    s.message()
                                )));
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }));
    }
    let mut failure = None;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(BenchError::Failed(e.to_string()))),
        }
    }
    // Workers that failed dropped their receiver share; make the generator stop too.
    drop(rx);
    let sample = generator.await.map_err(|e| BenchError::Failed(e.to_string()))?;
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    let secs = started.elapsed().as_secs_f64();
    let spans = acked.load(Ordering::Relaxed);
    let m = Manifest {
        spans,
        traces: spans / args.spans_per_trace as u64,
        spans_per_trace: args.spans_per_trace,
        attributes: args.attributes,
        from_ns,
        to_ns,
        sample_trace_ids: sample,
        load_seconds: secs,
        load_spans_per_sec: spans as f64 / secs,
    };
    eprintln!(
        "loaded {} spans in {secs:.1} s ({} spans/s, {} refusals retried)",
        fmt_count(spans as f64),
        fmt_count(m.load_spans_per_sec),
        refused.load(Ordering::Relaxed)
    );
    let text = serde_json::to_string(&m).map_err(|e| BenchError::Failed(e.to_string()))?;
    std::fs::write(manifest_path, text).map_err(|e| {
        BenchError::Failed(format!("cannot write {}: {e}", manifest_path.display()))
    })?;
    Ok(m)
}

/// Waits until the head is empty and flushes, compactions and the block count stop changing.
pub(crate) async fn settle(
    args: &QueryArgs,
    serve: &mut Spawned,
    http: &reqwest::Client,
) -> Result<(f64, Duration), BenchError> {
    let Some(addr) = serve.http else { return Ok((0.0, Duration::ZERO)) };
    let started = Instant::now();
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(200));
    let mut last: Option<(f64, f64, f64)> = None;
    let mut stable_since = Instant::now();
    loop {
        serve.check_alive()?;
        if started.elapsed() > args.settle_timeout {
            spinner.finish_and_clear();
            return Err(BenchError::Failed(format!(
                "head not flushed / compaction not settled after {:?}",
                args.settle_timeout
            )));
        }
        let text = fetch_metrics(http, addr).await.unwrap_or_default();
        let head = metric_sum(&text, "skein_head_spans").unwrap_or(f64::NAN);
        let state = (
            metric_sum(&text, "skein_blocks").unwrap_or(-1.0),
            metric_sum(&text, "skein_flushes_total").unwrap_or(-1.0),
            metric_sum(&text, "skein_compactions_total").unwrap_or(-1.0),
        );
        if head != 0.0 || last != Some(state) {
            stable_since = Instant::now();
        }
        last = Some(state);
        spinner.set_message(format!(
            "settling: head {} spans, {} blocks, {} flushes, {} compactions, stable {:.0}/{:.0} s",
            head,
            state.0,
            state.1,
            state.2,
            stable_since.elapsed().as_secs_f64(),
            args.settle.as_secs_f64()
        ));
        if head == 0.0 && stable_since.elapsed() >= args.settle {
            spinner.finish_and_clear();
            eprintln!(
                "settled after {:.0} s: {} blocks ({} flushes, {} compactions)",
                started.elapsed().as_secs_f64(),
                state.0,
                state.1,
                state.2
            );
            return Ok((state.0, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Timed {
    latency: Option<Summary>,
    failures: usize,
    first_failure: Option<String>,
    /// Per-request result size (spans for trace by id, traces for search), first request.
    result_size: Option<usize>,
    mismatches: usize,
}

async fn trace_by_id(
    t: &HttpTarget,
    ids: &[String],
    n: usize,
    expect_spans: usize,
    rng: &mut Rng,
) -> Timed {
    let mut samples = Samples::default();
    let (mut failures, mut mismatches, mut first_failure, mut size) = (0, 0, None, None);
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("  trace by id [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for k in 0..n + 5 {
        let id = &ids[rng.below(ids.len() as u64) as usize];
        let started = Instant::now();
        let r = t.get(&format!("/api/v2/traces/{id}"), "application/protobuf").await;
        let took = started.elapsed();
        if k < 5 {
            continue; // warm-up
        }
        bar.inc(1);
        match r {
            Ok((200, body)) => {
                samples.push(took);
                let spans = TraceByIdResponse::decode(body)
                    .ok()
                    .and_then(|r| r.trace)
                    .map(|t| span_count(&t))
                    .unwrap_or(0);
                size.get_or_insert(spans);
                if spans != expect_spans {
                    mismatches += 1;
                    first_failure.get_or_insert_with(|| {
                        format!("trace {id}: {spans} spans, expected {expect_spans}")
                    });
                }
            }
            Ok((status, body)) => {
                failures += 1;
                first_failure.get_or_insert_with(|| {
                    format!(
                        "trace {id}: HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )
                });
            }
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert(format!("trace {id}: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    Timed { latency: samples.summary(), failures, first_failure, result_size: size, mismatches }
}

async fn repeated(t: &HttpTarget, label: &str, path_and_query: &str, n: usize) -> Timed {
    let mut samples = Samples::default();
    let (mut failures, mut first_failure, mut size) = (0, None, None);
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("  {label} [{{bar:30}}] {{pos}}/{{len}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for k in 0..n + 3 {
        let started = Instant::now();
        let r = t.get(path_and_query, "application/json").await;
        let took = started.elapsed();
        if k < 3 {
            if let Ok((200, body)) = &r {
                let v: Value = serde_json::from_slice(body).unwrap_or_default();
                let n = v["traces"]
                    .as_array()
                    .map(|a| a.len())
                    .or_else(|| v["data"]["result"].as_array().map(|a| a.len()));
                size = size.or(n);
            }
            continue;
        }
        bar.inc(1);
        match r {
            Ok((200, _)) => samples.push(took),
            Ok((status, body)) => {
                failures += 1;
                first_failure.get_or_insert_with(|| {
                    format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )
                });
                if status == 404 {
                    break;
                }
            }
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    bar.finish_and_clear();
    Timed { latency: samples.summary(), failures, first_failure, result_size: size, mismatches: 0 }
}

pub(crate) fn search_path(q: &str, start: u64, end: u64) -> String {
    let qs: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("q", q)
        .append_pair("start", &start.to_string())
        .append_pair("end", &end.to_string())
        .append_pair("limit", "20")
        .finish();
    format!("/api/search?{qs}")
}

pub(crate) fn load_manifest(dir: &Path, args: &QueryArgs) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let m: Manifest = serde_json::from_str(&text).ok()?;
    let same = m.spans_per_trace == args.spans_per_trace
        && m.attributes == args.attributes
        && m.spans.abs_diff(args.spans) < (args.batch as u64).max(args.spans_per_trace as u64)
        && !m.sample_trace_ids.is_empty();
    same.then_some(m)
}

pub async fn run(args: QueryArgs) -> Result<(), BenchError> {
    if args.spans == 0 || args.batch == 0 || args.spans_per_trace == 0 || args.concurrency == 0 {
        return Err(BenchError::Usage(
            "--spans, --batch, --spans-per-trace and --concurrency must be > 0".into(),
        ));
    }
    if args.window > args.spread {
        return Err(BenchError::Usage("--window must not exceed --spread".into()));
    }
    let scratch = ScratchDir::new(args.scratch_dir.as_deref(), "skein-bench-query")?;
    let data = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| BenchError::Failed(format!("{}: {e}", d.display())))?;
            std::path::absolute(d).map_err(|e| BenchError::Failed(e.to_string()))?
        }
        None => scratch.path.join("data"),
    };
    std::fs::create_dir_all(&data)
        .map_err(|e| BenchError::Failed(format!("{}: {e}", data.display())))?;
    let reused = load_manifest(&data, &args);
    let was_reused = reused.is_some();
    let mut extra = vec![format!("--head-max-age={}", args.head_max_age)];
    extra.extend(args.serve_args.iter().cloned());
    let mut serve = procs::spawn_skein(&data, &args.fsync, &extra).await?;
    let http = reqwest::Client::new();
    let (sampler, sampler_task) = RssSampler::start(serve.pid, Duration::from_millis(250));
    let phase_started = Instant::now();
    let manifest = match reused {
        Some(m) => {
            eprintln!(
                "reusing the data set in {} ({} spans)",
                data.display(),
                fmt_count(m.spans as f64)
            );
            m
        }
        None => {
            if args.data_dir.is_some() && data.join("blocks").exists() {
                let _ = std::fs::remove_file(data.join(MANIFEST));
            }
            eprintln!("skein serve pid {}, data {}", serve.pid, data.display());
            match load(&args, &serve, &data.join(MANIFEST)).await {
                Ok(m) => m,
                Err(e) => {
                    let alive = serve.check_alive();
                    serve.stop().await;
                    alive?;
                    return Err(e);
                }
            }
        }
    };
    let rss_load_peak = sampler.peak();
    let settled = settle(&args, &mut serve, &http).await;
    let (blocks, settle_time) = match settled {
        Ok(v) => v,
        Err(e) => {
            serve.stop().await;
            return Err(e);
        }
    };
    let rss_settle_peak = sampler.peak();
    let before_queries = phase_started.elapsed();

    let blocks_dir = data.join("blocks");
    let parquet = procs::dir_bytes(&blocks_dir, ".parquet");
    let spans_file = procs::dir_bytes(&blocks_dir, "spans.parquet");
    let traces_file = procs::dir_bytes(&blocks_dir, "traces.parquet");
    let all_block_files = procs::dir_bytes(&blocks_dir, "");
    let wal = procs::dir_bytes(&data.join("wal"), "");
    let columns = procs::parquet_column_bytes(&blocks_dir, "spans.parquet");
    let spans = manifest.spans.max(1);

    let Some(http_addr) = serve.http else {
        return Err(BenchError::Failed("spawned collector has no HTTP address".into()));
    };
    let target = HttpTarget { client: http.clone(), base: format!("http://{http_addr}") };
    let noise_start = Instant::now();
    let busy_before = (
        procs::machine_busy_seconds(),
        procs::cpu_seconds(&serve.pid.to_string()),
        procs::cpu_seconds("self"),
    );
    let mut rng = Rng::new(args.seed ^ 0xA5A5);
    let by_id = trace_by_id(
        &target,
        &manifest.sample_trace_ids,
        args.trace_queries,
        args.spans_per_trace,
        &mut rng,
    )
    .await;
    let end_s = manifest.to_ns / 1_000_000_000;
    let start_s = end_s - args.window.as_secs();
    let q_slow = r#"{ resource.service.name = "svc-3" && duration > 500ms }"#;
    let q_svc = r#"{ resource.service.name = "svc-3" }"#;
    let s_slow = repeated(
        &target,
        "search svc+duration",
        &search_path(q_slow, start_s, end_s),
        args.search_queries,
    )
    .await;
    let s_svc =
        repeated(&target, "search svc", &search_path(q_svc, start_s, end_s), args.search_queries)
            .await;
    let red_qs: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "query",
            r#"sum by (span_name) (rate(traces_spanmetrics_calls_total{service="svc-3"}[1m]))"#,
        )
        .append_pair("start", &start_s.to_string())
        .append_pair("end", &end_s.to_string())
        .append_pair("step", "15")
        .finish();
    let red = repeated(
        &target,
        "RED query_range",
        &format!("/prometheus/api/v1/query_range?{red_qs}"),
        args.search_queries,
    )
    .await;
    let rss_query_peak = sampler.max_since(before_queries).unwrap_or(0);
    let busy_after = (
        procs::machine_busy_seconds(),
        procs::cpu_seconds(&serve.pid.to_string()),
        procs::cpu_seconds("self"),
    );
    let other_cores = match (busy_before, busy_after) {
        ((Some(m0), Some(c0), Some(s0)), (Some(m1), Some(c1), Some(s1))) => {
            let secs = noise_start.elapsed().as_secs_f64().max(1e-3);
            Some((((m1 - m0) - (c1 - c0) - (s1 - s0)) / secs).max(0.0))
        }
        _ => None,
    };
    let hwm = procs::memory(serve.pid).map(|m| m.1).unwrap_or(0);
    sampler_task.abort();
    let alive = serve.check_alive();
    let log = serve.log.clone();
    serve.stop().await;
    alive?;
    if args.data_dir.is_none() {
        drop(scratch);
    }

    // Report.
    let bps = parquet as f64 / spans as f64;
    let p50 = |t: &Timed| t.latency.map(|l| l.p50);
    let lat = |t: &Timed| -> String {
        match t.latency {
            Some(l) => format!("{} / {}", fmt_ms(l.p50), fmt_ms(l.p99)),
            None => "—".into(),
        }
    };
    let red_row = if red.latency.is_none()
        && red.first_failure.as_deref().is_some_and(|f| f.starts_with("HTTP 404"))
    {
        Row::new("RED query_range 1 h / 15 s step, p50 / p99", "n/a (endpoint answers 404)".into())
            .goal("p50 ≤ 20 ms", None)
    } else {
        Row::new("RED query_range 1 h / 15 s step, p50 / p99", lat(&red))
            .goal("p50 ≤ 20 ms", p50(&red).map(|v| v <= 20_000_000))
    };
    let rows = vec![
        Row::new("data set spans", fmt_count(manifest.spans as f64)),
        Row::new(
            if was_reused {
                "load rate (OTLP/gRPC, when the reused data set was loaded)"
            } else {
                "load rate (OTLP/gRPC, while loading)"
            },
            format!("{} spans/s", fmt_count(manifest.load_spans_per_sec)),
        ),
        Row::new("bytes/span on disk (Parquet, no WAL)", format!("{bps:.1} B"))
            .goal("≤ 25 B", Some(bps <= 25.0)),
        Row::new("trace by id, no time range, p50 / p99", lat(&by_id))
            .goal("p50 ≤ 10 ms", p50(&by_id).map(|v| v <= 10_000_000)),
        Row::new("search service + duration>500ms, 1 h, p50 / p99", lat(&s_slow))
            .goal("p50 ≤ 30 ms", p50(&s_slow).map(|v| v <= 30_000_000)),
        Row::new("search service only, 1 h, p50 / p99", lat(&s_svc)),
        red_row,
        Row::new(
            "collector peak RSS while loading",
            if was_reused { "— (data set reused)".into() } else { fmt_mib(rss_load_peak) },
        ),
        Row::new("collector peak RSS during queries", fmt_mib(rss_query_peak)),
    ];
    let mut notes = vec![
        format!(
            "disk: spans.parquet {:.1} B/span, traces.parquet {:.1} B/span, all block files (incl. bloom, meta) {:.1} B/span; {} blocks; WAL left {}",
            spans_file as f64 / spans as f64,
            traces_file as f64 / spans as f64,
            all_block_files as f64 / spans as f64,
            blocks,
            fmt_mib(wal)
        ),
        format!(
            "sequential requests: {} trace-by-id (random ids out of {} sampled), {} per search; search window [{start_s}, {end_s}] (unix s) = the newest {} of a {} spread",
            args.trace_queries,
            manifest.sample_trace_ids.len(),
            args.search_queries,
            humantime::format_duration(args.window),
            humantime::format_duration(args.spread)
        ),
        format!("queries: {}; {}", q_slow, q_svc),
    ];
    let top: Vec<String> = columns
        .iter()
        .take(8)
        .map(|(c, b)| format!("{c} {:.1}", *b as f64 / spans as f64))
        .collect();
    notes.push(format!("largest spans.parquet columns, B/span: {}", top.join(", ")));
    if let Some(c) = other_cores.filter(|c| *c > 0.15) {
        notes.push(format!(
            "other processes used {c:.2} cores while the queries ran: latencies are disturbed, re-run on a quiet machine"
        ));
    }
    for (label, t) in [
        ("trace by id", &by_id),
        ("search svc+duration", &s_slow),
        ("search svc", &s_svc),
        ("RED query_range", &red),
    ] {
        if t.failures > 0 || t.mismatches > 0 {
            notes.push(format!(
                "{label}: {} failed, {} wrong results; first: {} (log {})",
                t.failures,
                t.mismatches,
                t.first_failure.as_deref().unwrap_or("?"),
                log.display()
            ));
        }
        if let Some(n) = t.result_size {
            notes.push(format!(
                "{label}: first answer holds {n} {}",
                if label == "trace by id" { "spans" } else { "results" }
            ));
        }
    }
    let json_t = |t: &Timed| {
        json!({
            "latency": t.latency.map(|l| l.json()),
            "failures": t.failures,
            "wrong_results": t.mismatches,
            "first_failure": t.first_failure,
            "first_result_size": t.result_size,
        })
    };
    let data_json = json!({
        "params": {
            "spans": args.spans,
            "spans_per_trace": args.spans_per_trace,
            "attributes": args.attributes,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "spread_s": args.spread.as_secs(),
            "window_s": args.window.as_secs(),
            "head_max_age": args.head_max_age,
            "fsync": args.fsync,
            "serve_args": args.serve_args,
            "reused_data_set": was_reused,
        },
        "data_set": {
            "spans": manifest.spans,
            "traces": manifest.traces,
            "load_seconds": manifest.load_seconds,
            "load_spans_per_sec": manifest.load_spans_per_sec.round(),
            "settle_seconds": settle_time.as_secs_f64(),
            "blocks": blocks,
        },
        "disk": {
            "parquet_bytes": parquet,
            "spans_parquet_bytes": spans_file,
            "traces_parquet_bytes": traces_file,
            "block_files_bytes": all_block_files,
            "wal_bytes": wal,
            "bytes_per_span_parquet": (bps * 100.0).round() / 100.0,
            "spans_parquet_column_bytes_per_span": columns
                .iter()
                .map(|(c, b)| (c.clone(), json!((*b as f64 / spans as f64 * 100.0).round() / 100.0)))
                .collect::<serde_json::Map<String, Value>>(),
        },
        "trace_by_id": json_t(&by_id),
        "search_service_duration": json_t(&s_slow),
        "search_service": json_t(&s_svc),
        "red_query_range": json_t(&red),
        "rss": {
            "load_peak_bytes": rss_load_peak,
            "settle_peak_bytes": rss_settle_peak,
            "query_peak_bytes": rss_query_peak,
            "hwm_bytes": hwm,
        },
        "other_processes_cpu_cores_during_queries": other_cores,
    });
    let report = Report {
        title: "skein-bench query".into(),
        against: format!(
            "skein serve (spawned, fsync={}, --head-max-age={}) with {} spans ({} spans/trace, {} attributes/span, 10 services, 50 operations) over {}; no peer in this benchmark; {}",
            args.fsync,
            args.head_max_age,
            fmt_count(manifest.spans as f64),
            args.spans_per_trace,
            args.attributes,
            humantime::format_duration(args.spread),
            machine_line()
        ),
        rows,
        notes,
        data: data_json,
    };
    report.finish(args.json.as_deref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_the_spread_in_order_without_gaps() {
        let p = Plan::new(10_000, 1000, 10, 1_000, 11_000);
        assert_eq!(p.requests, 10);
        assert_eq!(p.traces_per_request, 100);
        assert_eq!(p.slot(0), (1_000, 2_000));
        assert_eq!(p.slot(9), (10_000, 11_000));
        for i in 1..10 {
            assert_eq!(p.slot(i - 1).1, p.slot(i).0);
        }
        // Partial last request rounds up.
        assert_eq!(Plan::new(10_001, 1000, 10, 0, 1).requests, 11);
        assert_eq!(Plan::new(5, 1000, 10, 0, 1).requests, 1);
    }

    #[test]
    fn search_paths_are_url_encoded() {
        let p = search_path(r#"{ resource.service.name = "svc-3" }"#, 10, 20);
        assert!(
            p.starts_with("/api/search?q=%7B+resource.service.name+%3D+%22svc-3%22+%7D"),
            "{p}"
        );
        assert!(p.ends_with("&start=10&end=20&limit=20"));
    }
}
