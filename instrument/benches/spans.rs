//! One span create → end → queued for export, skein-instrument against its peers in the same
//! run (goal: ≤ 60 ns per span, ≤ 1.5× fastrace, ≤ 0.1× tracing + tracing-opentelemetry):
//!
//! - `skein`: `skein_instrument` with its own OTLP/gRPC exporter;
//! - `fastrace`: fastrace 0.7 with `fastrace_opentelemetry::OpenTelemetryReporter` over an
//!   `opentelemetry-otlp` tonic exporter;
//! - `tracing_otel`: `tracing` + `tracing-opentelemetry` 0.34 with an `opentelemetry_sdk`
//!   `BatchSpanProcessor` over an `opentelemetry-otlp` tonic exporter.
//!
//! All three export over OTLP/gRPC to one in-process `TraceService` that counts spans per
//! `service.name` and discards them. skein and the OTel `BatchSpanProcessor` both have a 65,536
//! span queue and 512-span batches (fastrace's queues are unbounded).
//!
//! Spans are produced in bursts of at most [`BURST`] spans; after each burst the system's
//! pipeline is flushed (untimed), so the queues never fill and memory stays bounded: the timed
//! figure is the request-path cost when the exporter keeps up. Export work that overlaps a burst
//! (skein and the BatchSpanProcessor export from their own threads as soon as a batch is ready)
//! competes for the same two cores, as it would in a service.
//!
//! Besides criterion's estimates (wall time), the bench prints (1) an interleaved same-run table:
//! rounds of skein, fastrace, tracing_otel bursts, medians and per-round ratios, in wall time
//! and in the producing thread's CPU time (which leaves out the time the thread was preempted,
//! e.g. by the in-process exporter threads and sink on this 2-core machine), (2) the CPU per
//! span including the background export work, excluding the sink, and (3) the drop counts.
//!
//! `cargo bench --bench spans -- <filter>` runs only the matching criterion benches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::Criterion;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use skein_instrument::{BatchConfig, Builder, Protocol, Span};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// Largest number of spans produced between two flushes: well below the 65,536-span queues,
/// and fastrace's per-thread command queue (10,240 commands, 3 per root span) does not overflow.
const BURST: u64 = 3_000;
/// Children per parent in the nested benches (the parent is ended and replaced after this
/// many children; its cost is part of the timed loop, i.e. 1/64 of a root span per child).
const CHILDREN: u64 = 64;
const QUEUE: usize = 65_536;
const BATCH: usize = 512;
const DELAY: Duration = Duration::from_secs(1);

// ---- the OTLP sink --------------------------------------------------------------------------

/// Counts received spans per `service.name` and discards them.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<HashMap<String, u64>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = req.into_inner();
        let mut counts = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Av::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let n: usize = rs.scope_spans.iter().map(|s| s.spans.len()).sum();
            *counts.entry(service).or_default() += n as u64;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Sink {
    fn received(&self, service: &str) -> u64 {
        self.0.lock().unwrap().get(service).copied().unwrap_or(0)
    }
}

fn start_sink(sink: Sink) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-sink")
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
                .await
                .unwrap();
        });
    });
    addr
}

// ---- the three pipelines --------------------------------------------------------------------

struct Env {
    sink: Sink,
    otel: SdkTracerProvider,
    /// Runs the tonic channels of the two opentelemetry-otlp exporters.
    _otel_rt: tokio::runtime::Runtime,
    _skein: skein_instrument::Guard,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn otlp_exporter(endpoint: &str) -> opentelemetry_otlp::SpanExporter {
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn setup() -> &'static Env {
    ENV.get_or_init(|| {
        let sink = Sink::default();
        let endpoint = format!("http://{}", start_sink(sink.clone()));

        let skein = Builder::default()
            .service_name("skein")
            .endpoint(endpoint.clone(), Protocol::Grpc)
            .batch(BatchConfig {
                max_queue_size: QUEUE,
                scheduled_delay: DELAY,
                max_export_batch_size: BATCH,
                export_timeout: Duration::from_secs(10),
            })
            .tracing_subscriber(false)
            .install()
            .unwrap();

        let otel_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otel-rt")
            .enable_all()
            .build()
            .unwrap();
        let _rt = otel_rt.enter();

        // tracing + tracing-opentelemetry + BatchSpanProcessor. Location, thread and
        // busy/idle attributes are off so its spans carry what skein's carry (name, ids, times).
        let bsp = BatchSpanProcessor::builder(otlp_exporter(&endpoint))
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_max_export_batch_size(BATCH)
                    .with_scheduled_delay(DELAY)
                    .build(),
            )
            .build();
        let otel = SdkTracerProvider::builder()
            .with_span_processor(bsp)
            .with_resource(Resource::builder().with_service_name("tracing_otel").build())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(otel.tracer("bench"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false);
        // INFO: the h2/tonic debug spans of the exporters and the sink stay out.
        tracing_subscriber::registry().with(LevelFilter::INFO).with(layer).init();

        // fastrace with the OpenTelemetry reporter over the same kind of OTLP exporter.
        let handle = otel_rt.handle().clone();
        let reporter = fastrace_opentelemetry::OpenTelemetryReporter::new(
            otlp_exporter(&endpoint),
            Cow::Owned(Resource::builder().with_service_name("fastrace").build()),
            opentelemetry::InstrumentationScope::builder("bench").build(),
        )
        .with_block_on(move |f| handle.block_on(f));
        fastrace::set_reporter(reporter, fastrace::collector::Config::default());

        drop(_rt);
        Env { sink, otel, _otel_rt: otel_rt, _skein: skein }
    })
}

// ---- what is measured -----------------------------------------------------------------------

fn skein_root(n: u64) {
    for _ in 0..n {
        let s = Span::builder("root").root().start();
        drop(s);
    }
}

fn skein_nested(n: u64) {
    let mut left = n;
    while left > 0 {
        let k = left.min(CHILDREN);
        let mut parent = Span::builder("request").root().start();
        {
            let _entered = parent.enter();
            for _ in 0..k {
                drop(Span::new("child"));
            }
        }
        drop(parent);
        left -= k;
    }
}

fn fastrace_root(n: u64) {
    for _ in 0..n {
        let s = fastrace::Span::root("root", fastrace::collector::SpanContext::random());
        drop(s);
    }
}

fn fastrace_nested(n: u64) {
    let mut left = n;
    while left > 0 {
        let k = left.min(CHILDREN);
        let parent = fastrace::Span::root("request", fastrace::collector::SpanContext::random());
        {
            let _guard = parent.set_local_parent();
            for _ in 0..k {
                drop(fastrace::local::LocalSpan::enter_with_local_parent("child"));
            }
        }
        drop(parent);
        left -= k;
    }
}

fn tracing_root(n: u64) {
    for _ in 0..n {
        drop(tracing::info_span!(parent: None, "root"));
    }
}

fn tracing_nested(n: u64) {
    let mut left = n;
    while left > 0 {
        let k = left.min(CHILDREN);
        let parent = tracing::info_span!(parent: None, "request");
        {
            let _entered = parent.enter();
            for _ in 0..k {
                drop(tracing::info_span!("child"));
            }
        }
        drop(parent);
        left -= k;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Root,
    Nested,
}

impl Shape {
    /// Spans a call with `n` iterations creates.
    fn spans(self, n: u64) -> u64 {
        match self {
            Shape::Root => n,
            Shape::Nested => n + n.div_ceil(CHILDREN),
        }
    }
}

struct System {
    name: &'static str,
    root: fn(u64),
    nested: fn(u64),
    flush: fn(),
    created: AtomicU64,
}

fn flush_skein() {
    skein_instrument::flush();
}

fn flush_fastrace() {
    fastrace::flush();
}

fn flush_otel() {
    setup().otel.force_flush().unwrap();
}

static SYSTEMS: [System; 3] = [
    System {
        name: "skein",
        root: skein_root,
        nested: skein_nested,
        flush: flush_skein,
        created: AtomicU64::new(0),
    },
    System {
        name: "fastrace",
        root: fastrace_root,
        nested: fastrace_nested,
        flush: flush_fastrace,
        created: AtomicU64::new(0),
    },
    System {
        name: "tracing_otel",
        root: tracing_root,
        nested: tracing_nested,
        flush: flush_otel,
        created: AtomicU64::new(0),
    },
];

impl System {
    /// `iters` spans of `shape` (children, for nested) in flushed bursts. Returns the timed
    /// part's wall time and this thread's CPU time.
    fn run(&self, shape: Shape, iters: u64) -> (Duration, Duration) {
        let op = match shape {
            Shape::Root => self.root,
            Shape::Nested => self.nested,
        };
        let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
        let mut left = iters;
        while left > 0 {
            let n = left.min(BURST);
            let c = cpu_time::ThreadTime::now();
            let t = Instant::now();
            op(n);
            wall += t.elapsed();
            cpu += c.elapsed();
            self.created.fetch_add(shape.spans(n), Ordering::Relaxed);
            (self.flush)();
            left -= n;
        }
        (wall, cpu)
    }
}

// ---- CPU accounting -------------------------------------------------------------------------

/// Process CPU time (user + system, all threads including exited ones), in clock ticks.
fn process_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CPU time of the sink's threads, in nanoseconds.
fn sink_cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("bench-sink") {
            let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += sched.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    total
}

/// Linux reports /proc CPU times in USER_HZ (100 on every mainstream architecture).
const TICK_NS: u64 = 10_000_000;

// ---- main -----------------------------------------------------------------------------------

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn criterion_benches(c: &mut Criterion) {
    for (shape, group) in [(Shape::Root, "span_root"), (Shape::Nested, "span_nested")] {
        let mut g = c.benchmark_group(group);
        g.throughput(criterion::Throughput::Elements(1));
        for sys in &SYSTEMS {
            g.bench_function(sys.name, |b| b.iter_custom(|iters| sys.run(shape, iters).0));
        }
        g.finish();
    }
}

/// Rounds of skein, fastrace, tracing_otel bursts: per-span medians (wall time and the
/// producing thread's CPU time) and per-round ratios.
fn interleaved(rounds: usize, burst: u64) {
    println!("\n## same-run interleaved table ({rounds} rounds, medians; ns per span)");
    println!(
        "| shape | clock | skein | fastrace | tracing_otel | skein/fastrace | skein/tracing_otel |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (shape, label) in [(Shape::Root, "root"), (Shape::Nested, "nested child")] {
        // [clock][system] per-round ns/span; clock 0 = wall, 1 = thread CPU.
        let mut ns: [[Vec<f64>; 3]; 2] = Default::default();
        for _ in 0..rounds {
            for (i, sys) in SYSTEMS.iter().enumerate() {
                // tracing_otel is ~10x slower: a shorter burst keeps the rounds short.
                let n = if i == 2 { burst / 4 } else { burst };
                let (wall, cpu) = sys.run(shape, n);
                ns[0][i].push(wall.as_nanos() as f64 / n as f64);
                ns[1][i].push(cpu.as_nanos() as f64 / n as f64);
            }
        }
        for (clock, name) in [(0, "wall"), (1, "thread CPU")] {
            let per = &ns[clock];
            let ratio = |j: usize| {
                let mut r: Vec<f64> = per[0].iter().zip(&per[j]).map(|(a, b)| a / b).collect();
                median(&mut r)
            };
            let (r_fr, r_to) = (ratio(1), ratio(2));
            let [a, b, c] = per.clone();
            let (a, b, c) = (median(&mut { a }), median(&mut { b }), median(&mut { c }));
            println!("| {label} | {name} | {a:.1} | {b:.1} | {c:.1} | {r_fr:.2}× | {r_to:.3}× |");
        }
    }
}

/// CPU of the whole process except the sink, per span, for root spans: request path plus
/// conversion, batching, OTLP encoding and the gRPC client.
fn cpu_per_span(bursts: u64) {
    println!("\n## CPU per root span including background export (sink excluded)");
    println!("| system | spans | CPU ns/span (all threads but the sink) |");
    println!("|---|---|---|");
    for (i, sys) in SYSTEMS.iter().enumerate() {
        let n = if i == 2 { BURST / 4 } else { BURST };
        (sys.flush)();
        let (t0, s0) = (process_cpu_ticks(), sink_cpu_ns());
        for _ in 0..bursts {
            sys.run(Shape::Root, n);
        }
        let (t1, s1) = (process_cpu_ticks(), sink_cpu_ns());
        let cpu = ((t1 - t0) * TICK_NS).saturating_sub(s1 - s0);
        let spans = bursts * n;
        println!("| {} | {spans} | {:.0} |", sys.name, cpu as f64 / spans as f64);
    }
}

fn drops() {
    let env = setup();
    for sys in &SYSTEMS {
        (sys.flush)();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && SYSTEMS.iter().any(|s| env.sink.received(s.name) < s.created.load(Ordering::Relaxed))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("\n## spans created vs received by the sink");
    println!("| system | created | received | not received |");
    println!("|---|---|---|---|");
    for sys in &SYSTEMS {
        let created = sys.created.load(Ordering::Relaxed);
        let got = env.sink.received(sys.name);
        println!("| {} | {created} | {got} | {} |", sys.name, created.saturating_sub(got));
    }
    let s = skein_instrument::stats();
    println!(
        "skein stats(): exported {}, dropped_queue_full {}, dropped_export_failed {}",
        s.exported, s.dropped_queue_full, s.dropped_export_failed
    );
}

/// Whether a criterion filter was given (`cargo bench --bench NAME -- FILTER`): then only the
/// matching criterion benches run.
fn has_filter() -> bool {
    // criterion's options that take a value (the value is not a filter).
    const VALUED: &[&str] = &[
        "-c",
        "--color",
        "-s",
        "--save-baseline",
        "-b",
        "--baseline",
        "--baseline-lenient",
        "--format",
        "--profile-time",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if VALUED.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            return true;
        }
    }
    false
}

fn main() {
    let test_mode = std::env::args().any(|a| a == "--test");
    let filtered = has_filter();
    setup();
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    if filtered {
        return;
    }
    if test_mode {
        interleaved(1, 256);
        cpu_per_span(1);
    } else {
        interleaved(31, BURST);
        cpu_per_span(40);
    }
    drops();
}
