//! `skein-bench ingest`: a built-in OTLP/gRPC load generator run against a spawned
//! `skein serve` (durable: fsync=always by default) and, in the same run, against
//! `rotel-agent --exporter blackhole` with the identical pre-encoded load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::dataset::{DataSpec, Encoded, Rng, TraceGenerator};
use super::procs::{self, RssSampler, ScratchDir, Spawned};
use super::report::{Report, Row, Samples, Summary, fmt_count, fmt_mib, fmt_ms, machine_line};
use super::rpc::RawTraceClient;
use super::{BenchError, parse_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Spans per generated trace.
    #[arg(long, default_value_t = 10)]
    pub spans_per_trace: usize,
    /// Attributes per span (http.*, rpc.*, db.statement, peer, user id, ...).
    #[arg(long, default_value_t = 11)]
    pub attributes: usize,
    /// Spans per export request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent exporters (one HTTP/2 connection each).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// How long to send (after the warm-up).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Send this many spans instead of running for --duration.
    #[arg(long)]
    pub spans: Option<u64>,
    /// Not counted at the start of each run.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Target rate in spans/s (paced, open loop) instead of as fast as acknowledged.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Send to this OTLP/gRPC endpoint (host:port or http://host:port) instead of spawning
    /// `skein serve`.
    #[arg(long)]
    pub target: Option<String>,
    /// With --target: the collector's pid, for RSS and CPU figures.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// rotel-agent executable (default: PATH, then .venv/lib/python3*/site-packages/rotel).
    #[arg(long)]
    pub rotel: Option<PathBuf>,
    /// Do not run the rotel peer.
    #[arg(long)]
    pub no_rotel: bool,
    /// WAL fsync policy of the spawned collector.
    #[arg(long, default_value = "always", value_parser = ["always", "interval", "never"])]
    pub fsync: String,
    /// Extra flag for the spawned `skein serve` (repeatable), e.g. --serve-arg=--head-max-spans=500000.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Distinct pre-encoded requests; trace ids are varied per send.
    #[arg(long, default_value_t = 64)]
    pub pool: usize,
    /// Gzip requests (costs the generator CPU on the same machine).
    #[arg(long)]
    pub gzip: bool,
    /// Where the spawned collector keeps its scratch data dir (default: the temp dir).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The request pool: built once, shared by every run.
pub struct Pool {
    pub requests: Vec<Encoded>,
}

impl Pool {
    pub fn build(args: &IngestArgs) -> Self {
        let spec = DataSpec::new(args.spans_per_trace, args.attributes);
        let traces = (args.batch / spec.spans_per_trace).max(1);
        let generator = TraceGenerator::new(spec);
        let mut rng = Rng::new(args.seed);
        let now = now_ns();
        let requests = (0..args.pool.max(1))
            .map(|_| Encoded::new(&generator.request(&mut rng, traces, now - 10_000_000_000, now)))
            .collect();
        Pool { requests }
    }

    pub fn spans_per_request(&self) -> usize {
        self.requests.first().map(|r| r.spans).unwrap_or(0)
    }

    pub fn mean_bytes(&self) -> usize {
        self.requests.iter().map(|r| r.bytes.len()).sum::<usize>() / self.requests.len().max(1)
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What one run against one collector measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub name: String,
    /// Spans acknowledged by requests completing inside the measured window, per second.
    pub spans_per_sec: f64,
    pub window: Duration,
    pub acked_in_window: u64,
    pub acked_total: u64,
    pub requests_ok: u64,
    pub rejected_spans: i64,
    pub refused: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Option<Summary>,
    /// Requests that started late against the --rate schedule by more than 100 ms.
    pub behind_schedule: u64,
    pub rss_peak: u64,
    pub rss_hwm: u64,
    pub rss_steady: Option<u64>,
    /// (seconds since start, RSS MiB), one point per second.
    pub rss_timeline: Vec<(f64, u64)>,
    pub cpu_cores: Option<f64>,
    pub generator_cores: Option<f64>,
    /// CPU used by everything else on the machine during the window (noise indicator).
    pub other_cores: Option<f64>,
    pub first_error: Option<String>,
}

impl LoadResult {
    fn json(&self) -> Value {
        json!({
            "spans_per_sec": self.spans_per_sec.round(),
            "window_s": self.window.as_secs_f64(),
            "acked_spans_in_window": self.acked_in_window,
            "acked_spans_total": self.acked_total,
            "requests_ok": self.requests_ok,
            "rejected_spans": self.rejected_spans,
            "refused_requests": self.refused,
            "errors": self.errors,
            "first_error": self.first_error,
            "latency": self.latency.map(|l| l.json()),
            "behind_schedule": self.behind_schedule,
            "rss_peak_bytes": self.rss_peak,
            "rss_hwm_bytes": self.rss_hwm,
            "rss_steady_bytes": self.rss_steady,
            "rss_timeline_s_mib": self.rss_timeline,
            "cpu_cores": self.cpu_cores,
            "cpu_us_per_span": self.cpu_us_per_span(),
            "generator_cpu_cores": self.generator_cores,
            "other_processes_cpu_cores": self.other_cores,
        })
    }

    fn cpu_us_per_span(&self) -> Option<f64> {
        let c = self.cpu_cores?;
        (self.spans_per_sec > 0.0).then(|| (c / self.spans_per_sec * 1e6 * 100.0).round() / 100.0)
    }
}

#[derive(Default)]
struct WorkerOut {
    latency: Samples,
    errors: BTreeMap<String, u64>,
    refused: u64,
    requests_ok: u64,
    rejected: i64,
    behind: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

struct Shared {
    next: AtomicU64,
    stop: AtomicBool,
    acked_total: AtomicU64,
    acked_window: AtomicU64,
}

/// Drives `concurrency` exporters against `addr` with the pool's requests.
pub async fn drive(
    name: &str,
    addr: SocketAddr,
    pid: Option<u32>,
    pool: Arc<Pool>,
    args: &IngestArgs,
) -> Result<LoadResult, BenchError> {
    let spans_per_req = pool.spans_per_request() as u64;
    let max_requests = args.spans.map(|s| s.div_ceil(spans_per_req.max(1)));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        clients.push(RawTraceClient::connect(addr, args.gzip).await?);
    }
    let shared = Arc::new(Shared {
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        acked_total: AtomicU64::new(0),
        acked_window: AtomicU64::new(0),
    });
    let (sampler, sampler_task) = match pid {
        Some(p) => {
            let (s, t) = RssSampler::start(p, Duration::from_millis(200));
            (Some(s), Some(t))
        }
        None => (None, None),
    };
    let t0 = Instant::now();
    let warm_at = t0 + args.warmup;
    let deadline = max_requests.is_none().then(|| warm_at + args.duration);
    let interval = args
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(spans_per_req as f64 / r as f64));
    let cpu_at_warm = {
        let pid = pid.map(|p| p.to_string());
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_at.into()).await;
            (
                pid.and_then(|p| procs::cpu_seconds(&p)),
                procs::cpu_seconds("self"),
                procs::machine_busy_seconds(),
                Instant::now(),
            )
        })
    };

    let bar = match (deadline, max_requests) {
        (Some(_), _) => ProgressBar::new((args.warmup + args.duration).as_secs()),
        (None, Some(n)) => ProgressBar::new(n * spans_per_req),
        _ => ProgressBar::new(0),
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{name:>6} [{{bar:30}}] {{pos}}/{{len}}{} {{msg}}",
            if deadline.is_some() { " s" } else { " spans" }
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticker = {
        let bar = bar.clone();
        let shared = shared.clone();
        let by_time = deadline.is_some();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let acked = shared.acked_total.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (acked - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, acked);
                bar.set_position(if by_time { t0.elapsed().as_secs() } else { acked });
                bar.set_message(format!("{} spans/s", fmt_count(rate)));
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        })
    };

    let mut workers = Vec::new();
    for mut client in clients {
        let shared = shared.clone();
        let pool = pool.clone();
        workers.push(tokio::spawn(async move {
            let mut out = WorkerOut::default();
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let seq = shared.next.fetch_add(1, Ordering::Relaxed);
                if max_requests.is_some_and(|m| seq >= m) {
                    break;
                }
                if let Some(iv) = interval {
                    let slot = t0 + iv.mul_f64(seq as f64);
                    if deadline.is_some_and(|d| slot >= d) {
                        break;
                    }
                    let now = Instant::now();
                    if slot > now {
                        tokio::time::sleep_until(slot.into()).await;
                    } else if now - slot > Duration::from_millis(100) {
                        out.behind += 1;
                    }
                }
                let req = &pool.requests[(seq % pool.requests.len() as u64) as usize];
                let body = req.salted(seq);
                let sent = Instant::now();
                if deadline.is_some_and(|d| sent >= d) {
                    break;
                }
                let r = client.export(body).await;
                let done = Instant::now();
                out.last_done = Some(done);
                match r {
                    Ok(rejected) => {
                        let acked = req.spans as u64 - rejected.clamp(0, req.spans as i64) as u64;
                        out.requests_ok += 1;
                        out.rejected += rejected;
                        shared.acked_total.fetch_add(acked, Ordering::Relaxed);
                        if done >= warm_at && deadline.is_none_or(|d| done <= d) {
                            shared.acked_window.fetch_add(acked, Ordering::Relaxed);
                        }
                        if sent >= warm_at {
                            out.latency.push(done - sent);
                        }
                    }
                    Err(status) => {
                        let code = format!("{:?}", status.code());
                        *out.errors.entry(code).or_default() += 1;
                        if out.first_error.is_none() {
                            out.first_error =
                                Some(format!("{:?}: {}", status.code(), status.message()));
                        }
                        if status.code() == tonic::Code::Unavailable {
                            out.refused += 1;
                            // An exporter backs off on UNAVAILABLE; keep it short to stay busy.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        } else if status.code() == tonic::Code::Unknown
                            || status.code() == tonic::Code::Internal
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            out
        }));
    }
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
        shared.stop.store(true, Ordering::Relaxed);
    }
    let mut merged = WorkerOut::default();
    for w in workers {
        let o = w.await.map_err(|e| BenchError::Failed(format!("load worker failed: {e}")))?;
        merged.latency.extend(o.latency);
        for (k, v) in o.errors {
            *merged.errors.entry(k).or_default() += v;
        }
        merged.refused += o.refused;
        merged.requests_ok += o.requests_ok;
        merged.rejected += o.rejected;
        merged.behind += o.behind;
        merged.first_error = merged.first_error.or(o.first_error);
        merged.last_done = merged.last_done.max(o.last_done);
    }
    shared.stop.store(true, Ordering::Relaxed);
    let end = match deadline {
        Some(d) => d,
        None => merged.last_done.unwrap_or_else(Instant::now).max(warm_at),
    };
    let _ = ticker.await;
    bar.finish_and_clear();
    let (cpu_warm, self_warm, machine_warm, warm_seen) =
        cpu_at_warm.await.unwrap_or((None, None, None, warm_at));
    let window = end.saturating_duration_since(warm_at);
    let elapsed_cpu = Instant::now().saturating_duration_since(warm_seen).as_secs_f64();
    let cores = |before: Option<f64>, now: Option<f64>| -> Option<f64> {
        let (b, n) = (before?, now?);
        (elapsed_cpu > 0.0).then(|| ((n - b) / elapsed_cpu * 100.0).round() / 100.0)
    };
    let cpu_cores = cores(cpu_warm, pid.and_then(|p| procs::cpu_seconds(&p.to_string())));
    let generator_cores = cores(self_warm, procs::cpu_seconds("self"));
    let machine_cores = cores(machine_warm, procs::machine_busy_seconds());
    let other_cores = match (machine_cores, cpu_cores, generator_cores) {
        (Some(m), Some(c), Some(g)) => Some((((m - c - g) * 100.0).round() / 100.0).max(0.0)),
        _ => None,
    };
    if let Some(t) = sampler_task {
        t.abort();
    }
    let (rss_peak, rss_hwm, rss_steady) = match (&sampler, pid) {
        (Some(s), Some(p)) => {
            let hwm = procs::memory(p).map(|m| m.1).unwrap_or(0);
            let half = args.warmup + window / 2;
            (s.peak().max(procs::memory(p).map(|m| m.0).unwrap_or(0)), hwm, s.median_since(half))
        }
        _ => (0, 0, None),
    };
    let acked_in_window = shared.acked_window.load(Ordering::Relaxed);
    let secs = window.as_secs_f64();
    Ok(LoadResult {
        name: name.into(),
        spans_per_sec: if secs > 0.0 { acked_in_window as f64 / secs } else { 0.0 },
        window,
        acked_in_window,
        acked_total: shared.acked_total.load(Ordering::Relaxed),
        requests_ok: merged.requests_ok,
        rejected_spans: merged.rejected,
        refused: merged.refused,
        errors: merged.errors,
        latency: merged.latency.summary(),
        behind_schedule: merged.behind,
        rss_peak,
        rss_hwm,
        rss_steady,
        rss_timeline: sampler
            .as_ref()
            .map(|s| s.timeline_mib(Duration::from_secs(1)))
            .unwrap_or_default(),
        cpu_cores,
        generator_cores,
        other_cores,
        first_error: merged.first_error,
    })
}

fn parse_target(t: &str) -> Result<SocketAddr, BenchError> {
    let s = t.trim_start_matches("http://").trim_end_matches('/');
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| BenchError::Usage(format!("--target {t:?} is not host:port")))
}

/// Sums every sample of `name` in Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

pub async fn fetch_metrics(client: &reqwest::Client, http: SocketAddr) -> Option<String> {
    let r = client.get(format!("http://{http}/metrics")).send().await.ok()?;
    r.text().await.ok()
}

fn validate(args: &IngestArgs) -> Result<(), BenchError> {
    if args.batch == 0 || args.concurrency == 0 || args.pool == 0 {
        return Err(BenchError::Usage("--batch, --concurrency and --pool must be > 0".into()));
    }
    if args.spans_per_trace == 0 {
        return Err(BenchError::Usage("--spans-per-trace must be > 0".into()));
    }
    if args.duration.is_zero() && args.spans.is_none() {
        return Err(BenchError::Usage("--duration must be > 0".into()));
    }
    Ok(())
}

pub async fn run(args: IngestArgs) -> Result<(), BenchError> {
    validate(&args)?;
    let built = Instant::now();
    let pool = Arc::new(Pool::build(&args));
    let per_req = pool.spans_per_request();
    eprintln!(
        "request pool: {} requests × {} spans ({} spans/trace, {} attributes/span), {} KiB each on average, built in {:?}",
        pool.requests.len(),
        per_req,
        args.spans_per_trace,
        args.attributes,
        pool.mean_bytes() / 1024,
        built.elapsed()
    );
    let http = reqwest::Client::new();
    let scratch = ScratchDir::new(args.scratch_dir.as_deref(), "skein-bench-ingest")?;

    // skein (spawned or given).
    let skein = match &args.target {
        Some(t) => {
            let addr = parse_target(t)?;
            eprintln!("load → {addr} (given target)");
            let r = drive("target", addr, args.target_pid, pool.clone(), &args).await?;
            (r, None)
        }
        None => {
            let data = scratch.path.join("data");
            let mut serve = procs::spawn_skein(&data, &args.fsync, &args.serve_args).await?;
            eprintln!(
                "load → skein serve (pid {}, fsync={}, data {})",
                serve.pid,
                args.fsync,
                data.display()
            );
            let r = drive("skein", serve.grpc, Some(serve.pid), pool.clone(), &args).await;
            let alive = serve.check_alive();
            let received = match serve.http {
                Some(h) => fetch_metrics(&http, h)
                    .await
                    .and_then(|m| metric_sum(&m, "skein_spans_received_total")),
                None => None,
            };
            let log = serve.log.clone();
            serve.stop().await;
            alive?;
            // Let the kernel write back what the collector left before the next run starts.
            let _ = std::fs::remove_dir_all(&data);
            let _ = tokio::process::Command::new("sync").status().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            (r?, received.map(|v| (v, log)))
        }
    };
    let (skein, received) = skein;

    // rotel, same load.
    let rotel_exe = if args.no_rotel { None } else { procs::find_rotel(args.rotel.as_deref()) };
    let rotel = match &rotel_exe {
        Some(exe) => {
            let mut r = procs::spawn_rotel(exe, &scratch.path).await?;
            eprintln!("load → {} (pid {}, blackhole exporter)", procs::rotel_version(exe), r.pid);
            let res = drive("rotel", r.grpc, Some(r.pid), pool.clone(), &args).await;
            let alive = r.check_alive();
            Spawned::stop(r).await;
            alive?;
            Some(res?)
        }
        None => {
            eprintln!("rotel-agent not found (--rotel PATH, PATH, or .venv): no peer figures");
            None
        }
    };

    let report = build_report(&args, &pool, &skein, rotel.as_ref(), rotel_exe.as_deref(), received);
    report.finish(args.json.as_deref())
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn build_report(
    args: &IngestArgs,
    pool: &Pool,
    skein: &LoadResult,
    rotel: Option<&LoadResult>,
    rotel_exe: Option<&std::path::Path>,
    received: Option<(f64, PathBuf)>,
) -> Report {
    let mut rows = Vec::new();
    let name = if args.target.is_some() { "target" } else { "skein" };
    let tp_goal_met = match rotel {
        Some(r) => Some(skein.spans_per_sec >= r.spans_per_sec && skein.spans_per_sec >= 250_000.0),
        None => Some(skein.spans_per_sec >= 250_000.0),
    };
    let mut tp = Row::new("spans/s acknowledged", fmt_count(skein.spans_per_sec));
    if let Some(r) = rotel {
        tp = tp.peer(fmt_count(r.spans_per_sec), ratio(skein.spans_per_sec, r.spans_per_sec));
    }
    if args.rate.is_none() {
        tp = tp.goal("≥ 1.0× rotel, floor 250k/s", tp_goal_met);
    } else {
        let target = args.rate.unwrap_or(0) as f64;
        tp = tp.goal(
            &format!("= --rate {}", fmt_count(target)),
            Some(skein.spans_per_sec >= target * 0.97),
        );
    }
    rows.push(tp);
    for (label, f) in [("export latency p50", 0usize), ("export latency p99", 1)] {
        let get = |r: &LoadResult| r.latency.map(|l| if f == 0 { l.p50 } else { l.p99 });
        let mut row = Row::new(label, get(skein).map(fmt_ms).unwrap_or_else(|| "—".into()));
        if let Some(r) = rotel {
            let ratio = match (get(skein), get(r)) {
                (Some(a), Some(b)) => ratio(a as f64, b as f64),
                _ => None,
            };
            row = row.peer(get(r).map(fmt_ms).unwrap_or_else(|| "—".into()), ratio);
        }
        rows.push(row);
    }
    let with_peer = |row: Row, a: u64, b: Option<u64>| -> Row {
        match b {
            Some(b) => row.peer(fmt_mib(b), ratio(a as f64, b as f64)),
            None => row,
        }
    };
    if skein.rss_peak > 0 {
        let steady_goal = args.rate.is_some_and(|r| (45_000..=55_000).contains(&r));
        let mut row = Row::new(
            "collector RSS, steady (median of 2nd half)",
            skein.rss_steady.map(fmt_mib).unwrap_or_else(|| "—".into()),
        );
        row = with_peer(row, skein.rss_steady.unwrap_or(0), rotel.and_then(|r| r.rss_steady));
        if steady_goal {
            row = row.goal("≤ 512 MiB at 50k spans/s", skein.rss_steady.map(|v| v <= 512 << 20));
        }
        rows.push(row);
        let row = Row::new("collector RSS, peak sampled", fmt_mib(skein.rss_peak));
        rows.push(with_peer(row, skein.rss_peak, rotel.map(|r| r.rss_peak)));
        let row = Row::new("collector VmHWM", fmt_mib(skein.rss_hwm));
        rows.push(with_peer(row, skein.rss_hwm, rotel.map(|r| r.rss_hwm)));
    }
    if let Some(c) = skein.cpu_cores {
        let mut row = Row::new("collector CPU (cores busy)", format!("{c:.2}"));
        if let Some(rc) = rotel.and_then(|r| r.cpu_cores) {
            row = row.peer(format!("{rc:.2}"), ratio(c, rc));
        }
        rows.push(row);
        let us = |r: &LoadResult| r.cpu_us_per_span();
        let mut row = Row::new(
            "collector CPU per span",
            us(skein).map(|v| format!("{v:.2} µs")).unwrap_or_default(),
        );
        if let (Some(a), Some(b)) = (us(skein), rotel.and_then(us)) {
            row = row.peer(format!("{b:.2} µs"), ratio(a, b));
        }
        rows.push(row);
    }
    let errs = |r: &LoadResult| -> String {
        let other: u64 = r.errors.values().sum::<u64>() - r.refused;
        format!("{} / {} / {}", r.refused, other, r.rejected_spans)
    };
    let mut row = Row::new("refused / other errors / rejected spans", errs(skein));
    if let Some(r) = rotel {
        row = row.peer(errs(r), None);
    }
    rows.push(row);
    let gen_cores =
        |r: &LoadResult| r.generator_cores.map(|c| format!("{c:.2}")).unwrap_or_default();
    let mut row = Row::new("load generator CPU (cores busy)", gen_cores(skein));
    if let Some(r) = rotel {
        row = row.peer(gen_cores(r), None);
    }
    rows.push(row);

    let other = |r: &LoadResult| r.other_cores.map(|c| format!("{c:.2}")).unwrap_or_default();
    let mut row = Row::new("other processes' CPU (cores busy)", other(skein));
    if let Some(r) = rotel {
        row = row.peer(other(r), None);
    }
    rows.push(row);

    let mode = match (args.rate, args.spans) {
        (Some(r), _) => format!("paced at {} spans/s", fmt_count(r as f64)),
        (None, Some(n)) => format!("{} spans as fast as acknowledged", fmt_count(n as f64)),
        (None, None) => "as fast as acknowledged".into(),
    };
    let peer = match (rotel, rotel_exe) {
        (Some(_), Some(exe)) => format!("{} --exporter blackhole", procs::rotel_version(exe)),
        _ => "no peer (rotel-agent not found or --no-rotel)".into(),
    };
    let against = format!(
        "{name} ({}) vs {peer}; {} exporters, {} spans/request ({} spans/trace, {} attributes/span, ~{} KiB/request{}), {mode}, {:.1} s measured after {} warm-up; {}",
        if args.target.is_some() {
            "given target".to_string()
        } else {
            format!("spawned, fsync={}", args.fsync)
        },
        args.concurrency,
        pool.spans_per_request(),
        args.spans_per_trace,
        args.attributes,
        pool.mean_bytes() / 1024,
        if args.gzip { ", gzip" } else { "" },
        skein.window.as_secs_f64(),
        humantime::format_duration(args.warmup),
        machine_line(),
    );
    let mut notes = Vec::new();
    if let Some(e) = &skein.first_error {
        notes.push(format!("first {name} error: {e}"));
    }
    if let Some(e) = rotel.and_then(|r| r.first_error.as_ref()) {
        notes.push(format!("first rotel error: {e}"));
    }
    if skein.behind_schedule > 0 {
        notes.push(format!(
            "{} requests to {name} started >100 ms behind the --rate schedule",
            skein.behind_schedule
        ));
    }
    if let Some((received, log)) = &received {
        let acked = skein.acked_total as f64;
        if (received - acked).abs() > 0.5 {
            notes.push(format!(
                "collector counted {} spans received but the generator saw {} acknowledged (log {})",
                fmt_count(*received),
                fmt_count(acked),
                log.display()
            ));
        }
    }
    for r in std::iter::once(skein).chain(rotel) {
        if r.other_cores.is_some_and(|c| c > 0.15) {
            notes.push(format!(
                "other processes used {:.2} cores during the {} run: its figures are disturbed, re-run on a quiet machine",
                r.other_cores.unwrap_or(0.0),
                r.name
            ));
        }
    }
    notes.push("latency is per export request (send → acknowledgement), on loopback".into());
    let mut data = json!({
        "params": {
            "spans_per_trace": args.spans_per_trace,
            "attributes": args.attributes,
            "batch": args.batch,
            "spans_per_request": pool.spans_per_request(),
            "request_bytes_mean": pool.mean_bytes(),
            "concurrency": args.concurrency,
            "duration_s": args.duration.as_secs_f64(),
            "spans": args.spans,
            "warmup_s": args.warmup.as_secs_f64(),
            "rate": args.rate,
            "fsync": args.fsync,
            "gzip": args.gzip,
            "target": args.target,
            "serve_args": args.serve_args,
        },
        "rotel": rotel.map(|r| r.json()),
        "ratio_spans_per_sec": rotel.and_then(|r| ratio(skein.spans_per_sec, r.spans_per_sec)),
    });
    data[name] = skein.json();
    Report { title: "skein-bench ingest — OTLP/gRPC".into(), against, rows, notes, data }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_summed_by_exact_name() {
        let text = "# HELP skein_spans_received_total x\n\
            skein_spans_received_total{tenant=\"a\",protocol=\"grpc\"} 1000\n\
            skein_spans_received_total{tenant=\"b\",protocol=\"http\"} 24\n\
            skein_spans_received_totally 5\n\
            skein_head_spans 0\n";
        assert_eq!(metric_sum(text, "skein_spans_received_total"), Some(1024.0));
        assert_eq!(metric_sum(text, "skein_head_spans"), Some(0.0));
        assert_eq!(metric_sum(text, "missing"), None);
    }

    #[test]
    fn targets_accept_host_port_and_urls() {
        assert_eq!(parse_target("127.0.0.1:4317").unwrap().port(), 4317);
        assert_eq!(parse_target("http://127.0.0.1:4317/").unwrap().port(), 4317);
        assert!(parse_target("nope").is_err());
    }
}
