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

use super::clickhouse::{self, MixParams, MixQuery, RowsWriter, Survey};
use super::dataset::{DataSpec, Generated, Rng, TraceGenerator};
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
    /// The last this long of the spread is a burst: `--burst-share` of the spans start in it.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub burst: Duration,
    /// Share of the data set's spans that start within the burst (0 for none).
    #[arg(long, default_value_t = 0.5)]
    pub burst_share: f64,
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
    /// Python with chdb for the ClickHouse peer (default: .venv-bench/bin/python in or above
    /// the current directory, as `bench/setup-chdb.sh` makes it).
    #[arg(long)]
    pub chdb_python: Option<PathBuf>,
    /// Do not run the ClickHouse peer.
    #[arg(long)]
    pub no_clickhouse: bool,
}

impl QueryArgs {
    pub(crate) fn plan(&self, from_ns: u64, to_ns: u64) -> Plan {
        Plan::with_burst(
            self.spans,
            self.batch,
            self.spans_per_trace,
            from_ns,
            to_ns,
            self.burst.as_nanos() as u64,
            self.burst_share,
        )
    }
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
    #[serde(default)]
    pub burst_ns: u64,
    #[serde(default)]
    pub burst_share: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub batch: usize,
    /// Thresholds of the search mix, surveyed from the generated data.
    #[serde(default)]
    pub mix: Option<MixParams>,
}

/// Plan of the load: `requests` requests of `traces_per_request` traces, request `i` covering
/// the `i`-th slice of its period so the data arrives roughly in time order, as live data would.
/// The first `steady` requests cover [from, burst_from), the rest the burst [burst_from, to).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub requests: u64,
    pub traces_per_request: usize,
    pub from_ns: u64,
    pub to_ns: u64,
    pub burst_from_ns: u64,
    pub steady: u64,
}

impl Plan {
    /// A plan whose last `burst_share` of the requests all fall in the last `burst_ns`.
    pub fn with_burst(
        spans: u64,
        batch: usize,
        spans_per_trace: usize,
        from_ns: u64,
        to_ns: u64,
        burst_ns: u64,
        burst_share: f64,
    ) -> Self {
        let traces_per_request = (batch / spans_per_trace.max(1)).max(1);
        let per_request = (traces_per_request * spans_per_trace.max(1)) as u64;
        let requests = spans.div_ceil(per_request).max(1);
        let burst_ns = burst_ns.min(to_ns.saturating_sub(from_ns));
        let share = if burst_ns == 0 { 0.0 } else { burst_share.clamp(0.0, 1.0) };
        let burst = ((requests as f64 * share).round() as u64).min(requests);
        Plan {
            requests,
            traces_per_request,
            from_ns,
            to_ns,
            burst_from_ns: to_ns - burst_ns,
            steady: requests - burst,
        }
    }

    pub fn slot(&self, i: u64) -> (u64, u64) {
        let (from, to, k, n) = if i < self.steady {
            (self.from_ns, self.burst_from_ns, i, self.steady)
        } else {
            (self.burst_from_ns, self.to_ns, i - self.steady, self.requests - self.steady)
        };
        let width = to.saturating_sub(from) as u128;
        let a = from + (width * k as u128 / n.max(1) as u128) as u64;
        let b = from + (width * (k as u128 + 1) / n.max(1) as u128) as u64;
        (a, b.max(a + 1))
    }

    /// Generates the plan's requests in order, as `load` sends them, with a sample of trace
    /// ids (one per `every` requests). Deterministic for a seed, so the same rows can be
    /// generated again for a peer.
    pub fn generate(
        &self,
        spec: DataSpec,
        seed: u64,
        mut each: impl FnMut(u64, &Generated) -> bool,
    ) -> Vec<String> {
        let g = TraceGenerator::new(spec);
        let mut rng = Rng::new(seed);
        let every = (self.requests as usize / SAMPLE_IDS).max(1) as u64;
        let mut sample = Vec::new();
        for i in 0..self.requests {
            let (a, b) = self.slot(i);
            let out = g.request(&mut rng, self.traces_per_request, a, b);
            if i % every == 0 {
                let k = rng.below(out.trace_ids.len() as u64) as usize;
                sample.push(hex::encode(out.trace_ids[k]));
            }
            if !each(i, &out) {
                break;
            }
        }
        sample
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
    let plan = args.plan(from_ns, to_ns);
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
    let generator = tokio::task::spawn_blocking(move || {
        plan.generate(spec, seed, |i, out| {
            let body = Bytes::from(out.req.encode_to_vec());
            tx.blocking_send((i, body, out.spans)).is_ok()
        })
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
        burst_ns: args.burst.as_nanos() as u64,
        burst_share: args.burst_share,
        seed: args.seed,
        batch: args.batch,
        mix: None,
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
    /// Trace ids of the first search answer.
    first_ids: Vec<String>,
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
    Timed {
        latency: samples.summary(),
        failures,
        first_failure,
        result_size: size,
        mismatches,
        first_ids: Vec::new(),
    }
}

async fn repeated(t: &HttpTarget, label: &str, path_and_query: &str, n: usize) -> Timed {
    let mut samples = Samples::default();
    let (mut failures, mut first_failure, mut size) = (0, None, None);
    let mut first_ids: Option<Vec<String>> = None;
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
                if first_ids.is_none() {
                    first_ids = v["traces"].as_array().map(|a| {
                        a.iter().filter_map(|t| t["traceID"].as_str().map(str::to_string)).collect()
                    });
                }
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
    Timed {
        latency: samples.summary(),
        failures,
        first_failure,
        result_size: size,
        mismatches: 0,
        first_ids: first_ids.unwrap_or_default(),
    }
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
        && m.burst_ns == args.burst.as_nanos() as u64
        && m.burst_share == args.burst_share
        && m.seed == args.seed
        && m.batch == args.batch
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
    let python = if args.no_clickhouse {
        None
    } else {
        clickhouse::find_python(args.chdb_python.as_deref())
    };
    let ch_dir = data.join("clickhouse");
    let ch_loaded = ch_dir.join("loaded.json");
    let need_rows = python.is_some() && !ch_loaded.is_file();
    let mix_params = match (manifest.mix, need_rows) {
        (Some(m), false) => m,
        _ => {
            let m = survey(&args, &manifest, need_rows.then(|| ch_dir.join("rows")).as_deref())?;
            let mut saved = manifest.clone();
            saved.mix = Some(m);
            let text =
                serde_json::to_string(&saved).map_err(|e| BenchError::Failed(e.to_string()))?;
            std::fs::write(data.join(MANIFEST), text)
                .map_err(|e| BenchError::Failed(format!("cannot write the manifest: {e}")))?;
            m
        }
    };
    let before_queries = phase_started.elapsed();

    let blocks_dir = data.join("blocks");
    let parquet = procs::dir_bytes(&blocks_dir, ".parquet");
    let spans_file = procs::dir_bytes(&blocks_dir, "spans.parquet");
    let traces_file = procs::dir_bytes(&blocks_dir, "traces.parquet");
    let search_file = procs::dir_bytes(&blocks_dir, "search.parquet");
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
    let hour = (start_s, end_s);
    let burst = (end_s - args.burst.as_secs().max(1), end_s);
    let queries = clickhouse::mix(&mix_params, burst, hour);
    let mut searches = Vec::with_capacity(queries.len());
    for q in &queries {
        let path = search_path(&q.traceql, q.window.0, q.window.1);
        searches.push(repeated(&target, &q.name, &path, args.search_queries).await);
    }
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
    // The peer runs after skein has stopped, so neither competes with the other for the cores.
    let ch = match &python {
        Some(py) => Some(run_clickhouse(py, &ch_dir, &manifest, &queries, &args).await?),
        None => {
            eprintln!(
                "chdb not found (--chdb-python, or bench/setup-chdb.sh for .venv-bench): no ClickHouse figures"
            );
            None
        }
    };
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
    let mut rows = vec![
        Row::new("data set spans", fmt_count(manifest.spans as f64)),
        Row::new(
            if was_reused {
                "load rate (OTLP/gRPC, when the reused data set was loaded)"
            } else {
                "load rate (OTLP/gRPC, while loading)"
            },
            format!("{} spans/s", fmt_count(manifest.load_spans_per_sec)),
        ),
        disk_row(bps, spans as f64, ch.as_ref()),
        peer_row(
            "trace by id, no time range, p50 / p99",
            &by_id,
            ch.as_ref().map(|c| &c.trace_by_id),
            0.33,
            Some(10),
        ),
        red_row,
    ];
    for (k, (q, t)) in queries.iter().zip(&searches).enumerate() {
        let budget = (k < 2).then_some(30);
        let label = format!("search {}, p50 / p99", q.name);
        rows.push(peer_row(&label, t, ch.as_ref().map(|c| &c.searches[k]), 1.0, budget));
    }
    rows.extend([
        Row::new(
            "collector peak RSS while loading",
            if was_reused { "— (data set reused)".into() } else { fmt_mib(rss_load_peak) },
        ),
        Row::new("collector peak RSS during queries", fmt_mib(rss_query_peak)),
    ]);
    let mut notes = vec![
        format!(
            "disk: spans.parquet {:.1} B/span, traces.parquet {:.1} B/span, search.parquet (index) {:.1} B/span, all block files (incl. bloom, meta) {:.1} B/span; {} blocks; WAL left {}",
            spans_file as f64 / spans as f64,
            traces_file as f64 / spans as f64,
            search_file as f64 / spans as f64,
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
    ];
    for q in &queries {
        notes.push(format!("{}: {} over [{}, {}]", q.name, q.traceql, q.window.0, q.window.1));
    }
    if let Some(c) = &ch {
        notes.push(format!(
            "ClickHouse {} (chdb, embedded, timed in-process: no HTTP): Jaeger v2's span table (ORDER BY service_name, name, start_time; bloom filter on trace_id and string attributes; minmax on start_time and duration), parts merged (OPTIMIZE FINAL); spans table {:.1} B/span, trace_id_timestamps {:.1} B/span",
            c.version,
            c.spans_bytes as f64 / spans as f64,
            c.timestamps_bytes as f64 / spans as f64
        ));
        for (q, (t, p)) in queries.iter().zip(searches.iter().zip(&c.searches)) {
            let mine: std::collections::BTreeSet<&String> = t.first_ids.iter().collect();
            let theirs: std::collections::BTreeSet<&String> = p.ids.iter().collect();
            if mine != theirs {
                notes.push(format!(
                    "{}: skein and ClickHouse found different traces ({} vs {}, {} in common)",
                    q.name,
                    mine.len(),
                    theirs.len(),
                    mine.intersection(&theirs).count()
                ));
            }
            if let Some(e) = &p.error {
                notes.push(format!("{}: ClickHouse failed: {e}", q.name));
            }
        }
    }
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
    let labelled = [("trace by id".to_string(), &by_id), ("RED query_range".to_string(), &red)];
    let searched = queries.iter().map(|q| q.name.clone()).zip(searches.iter());
    for (label, t) in labelled.into_iter().chain(searched) {
        let label = label.as_str();
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
            "search_parquet_bytes": search_file,
            "block_files_bytes": all_block_files,
            "wal_bytes": wal,
            "bytes_per_span_parquet": (bps * 100.0).round() / 100.0,
            "spans_parquet_column_bytes_per_span": columns
                .iter()
                .map(|(c, b)| (c.clone(), json!((*b as f64 / spans as f64 * 100.0).round() / 100.0)))
                .collect::<serde_json::Map<String, Value>>(),
        },
        "trace_by_id": json_t(&by_id),
        "searches": queries.iter().zip(&searches).map(|(q, t)| {
            let mut v = json_t(t);
            v["name"] = json!(q.name);
            v["traceql"] = json!(q.traceql);
            v["clickhouse_sql"] = json!(q.sql);
            v
        }).collect::<Vec<_>>(),
        "mix_params": mix_params,
        "clickhouse": ch.as_ref().map(|c| c.json.clone()),
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
            "skein serve (spawned, fsync={}, --head-max-age={}) with {} spans ({} spans/trace, {} attributes/span, 10 services, 50 operations) over {} ({} of the spans in the last {}); peer: ClickHouse via chdb on the same rows, when installed; {}",
            args.fsync,
            args.head_max_age,
            fmt_count(manifest.spans as f64),
            args.spans_per_trace,
            args.attributes,
            humantime::format_duration(args.spread),
            args.burst_share,
            humantime::format_duration(args.burst),
            machine_line()
        ),
        rows,
        notes,
        data: data_json,
    };
    report.finish(args.json.as_deref())
}

/// One pass over the data set as generated (the same rows `load` sent): the mix's thresholds,
/// and ClickHouse's rows written to `rows` when given.
fn survey(args: &QueryArgs, m: &Manifest, rows: Option<&Path>) -> Result<MixParams, BenchError> {
    let plan = args.plan(m.from_ns, m.to_ns);
    let end_s = m.to_ns / 1_000_000_000;
    let burst_from = (end_s - args.burst.as_secs().max(1)) * 1_000_000_000;
    let window_from = (end_s - args.window.as_secs()) * 1_000_000_000;
    let mut writer = match rows {
        Some(dir) => {
            let _ = std::fs::remove_dir_all(dir);
            Some(RowsWriter::new(dir)?)
        }
        None => None,
    };
    let bar = ProgressBar::new(plan.requests);
    bar.set_style(
        ProgressStyle::with_template(if rows.is_some() {
            "  rows for ClickHouse [{bar:30}] {pos}/{len} requests ETA {eta}"
        } else {
            "  surveying the data set [{bar:30}] {pos}/{len} requests ETA {eta}"
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut survey = Survey::default();
    let mut failed = None;
    let spec = DataSpec::new(args.spans_per_trace, args.attributes);
    plan.generate(spec, args.seed, |_, g: &Generated| {
        survey.add(g, burst_from, window_from);
        if let Some(w) = writer.as_mut()
            && let Err(e) = w.add(g)
        {
            failed = Some(e);
            return false;
        }
        bar.inc(1);
        true
    });
    bar.finish_and_clear();
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(w) = writer {
        w.finish()?;
    }
    Ok(survey.finish())
}

/// What the ClickHouse peer measured.
struct ChResults {
    version: String,
    spans_bytes: u64,
    timestamps_bytes: u64,
    trace_by_id: PeerTimed,
    searches: Vec<PeerTimed>,
    json: Value,
}

struct PeerTimed {
    latency: Option<Summary>,
    ids: Vec<String>,
    error: Option<String>,
}

async fn run_clickhouse(
    python: &Path,
    dir: &Path,
    m: &Manifest,
    queries: &[MixQuery],
    args: &QueryArgs,
) -> Result<ChResults, BenchError> {
    let db = dir.join("db");
    let loaded_path = dir.join("loaded.json");
    let db_arg = db.to_string_lossy().to_string();
    let loaded =
        match std::fs::read(&loaded_path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
            Some(v) => v,
            None => {
                let _ = std::fs::remove_dir_all(&db);
                let rows = dir.join("rows");
                eprintln!("loading the same rows into ClickHouse ({})", python.display());
                let rows_arg = rows.to_string_lossy().to_string();
                let v = clickhouse::peer(
                    python,
                    &["load", "--db", &db_arg, "--rows", &rows_arg],
                    json!({}),
                )
                .await?;
                std::fs::write(&loaded_path, v.to_string())
                    .map_err(|e| BenchError::Failed(format!("{}: {e}", loaded_path.display())))?;
                // The rows are in ClickHouse now; keep only its database.
                let _ = std::fs::remove_dir_all(&rows);
                v
            }
        };
    let spec =
        clickhouse::run_spec(queries, args.search_queries, &m.sample_trace_ids, args.trace_queries);
    eprintln!("querying ClickHouse");
    let out = clickhouse::peer(python, &["run", "--db", &db_arg], spec).await?;
    let results = out["results"].as_array().cloned().unwrap_or_default();
    let timed = |v: &Value| PeerTimed {
        latency: Samples(
            v["samples_ns"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
        )
        .summary(),
        ids: v["first"]
            .as_array()
            .map(|rows| rows.iter().filter_map(|r| r[0].as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        error: v["error"].as_str().map(str::to_string),
    };
    let trace_by_id = results.first().map(timed).unwrap_or(PeerTimed {
        latency: None,
        ids: Vec::new(),
        error: Some("no result".into()),
    });
    let searches = (0..queries.len())
        .map(|k| {
            results.get(k + 1).map(timed).unwrap_or(PeerTimed {
                latency: None,
                ids: Vec::new(),
                error: Some("no result".into()),
            })
        })
        .collect();
    let bytes = |t: &str| out["disk"][t]["bytes"].as_u64().unwrap_or(0);
    Ok(ChResults {
        version: loaded["version"].as_str().unwrap_or("?").to_string(),
        spans_bytes: bytes("spans"),
        timestamps_bytes: bytes("trace_id_timestamps"),
        trace_by_id,
        searches,
        json: json!({ "load": loaded, "run": out }),
    })
}

fn disk_row(bps: f64, spans: f64, ch: Option<&ChResults>) -> Row {
    let row = Row::new("bytes/span on disk (Parquet, no WAL)", format!("{bps:.1} B"));
    match ch {
        Some(c) if c.spans_bytes > 0 => {
            // ClickHouse's figure counts the tables a search reads: spans and trace_id_timestamps.
            let theirs = (c.spans_bytes + c.timestamps_bytes) as f64 / spans;
            let ratio = bps / theirs;
            row.peer(format!("{theirs:.1} B"), Some(ratio))
                .goal("≤ 25 B and ≤ 0.45×", Some(bps <= 25.0 && ratio <= 0.45))
        }
        _ => row.goal("≤ 25 B", Some(bps <= 25.0)),
    }
}

fn peer_row(
    label: &str,
    t: &Timed,
    p: Option<&PeerTimed>,
    max_ratio: f64,
    max_ms: Option<u64>,
) -> Row {
    let lat = |l: Option<Summary>| match l {
        Some(l) => format!("{} / {}", fmt_ms(l.p50), fmt_ms(l.p99)),
        None => "—".into(),
    };
    let mine = t.latency.map(|l| l.p50);
    let row = Row::new(label, lat(t.latency));
    let within_ms = |v: u64| max_ms.is_none_or(|m| v <= m * 1_000_000);
    let ms_goal = max_ms.map(|m| format!(" and ≤ {m} ms")).unwrap_or_default();
    match p {
        Some(p) => {
            let ratio = match (mine, p.latency) {
                (Some(a), Some(b)) if b.p50 > 0 => Some(a as f64 / b.p50 as f64),
                _ => None,
            };
            row.peer(lat(p.latency), ratio).goal(
                &format!("p50 ≤ {max_ratio}× ClickHouse{ms_goal}"),
                ratio.zip(mine).map(|(r, v)| r <= max_ratio && within_ms(v)),
            )
        }
        None => row.goal(
            &format!("p50{}", if ms_goal.is_empty() { " —".to_string() } else { ms_goal }),
            mine.map(within_ms),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_the_spread_in_order_without_gaps() {
        let p = Plan::with_burst(10_000, 1000, 10, 1_000, 11_000, 0, 0.0);
        assert_eq!(p.requests, 10);
        assert_eq!(p.traces_per_request, 100);
        assert_eq!(p.slot(0), (1_000, 2_000));
        assert_eq!(p.slot(9), (10_000, 11_000));
        for i in 1..10 {
            assert_eq!(p.slot(i - 1).1, p.slot(i).0);
        }
        // Partial last request rounds up.
        assert_eq!(Plan::with_burst(10_001, 1000, 10, 0, 1, 0, 0.0).requests, 11);
        assert_eq!(Plan::with_burst(5, 1000, 10, 0, 1, 0, 0.0).requests, 1);
    }

    #[test]
    fn a_burst_plan_puts_its_share_of_requests_in_the_last_stretch_in_order() {
        let p = Plan::with_burst(10_000, 1000, 10, 0, 100_000, 1_000, 0.5);
        assert_eq!((p.requests, p.steady), (10, 5));
        assert_eq!(p.slot(0), (0, 19_800));
        assert_eq!(p.slot(4).1, 99_000);
        assert_eq!(p.slot(5), (99_000, 99_200));
        assert_eq!(p.slot(9).1, 100_000);
        for i in 1..10 {
            assert_eq!(p.slot(i - 1).1, p.slot(i).0);
        }
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
