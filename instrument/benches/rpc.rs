//! A tonic unary RPC on loopback, instrumented with skein-instrument's `GrpcServerLayer` and
//! `GrpcClientLayer` (pipeline installed, exporting over OTLP/gRPC to an in-process sink)
//! against the same RPC with no instrumentation at all (goal: ≤ +5 % p50 latency).
//!
//! The pipeline is process-wide, so both variants run in this process: two servers on one
//! runtime (one with the server layer) and two clients (one with the client layer). The plain
//! pair creates no spans. The RPC is the OTLP `TraceService/Export` from opentelemetry-proto with
//! an empty request, answered by a handler that does nothing.
//!
//! Criterion measures the mean/median of sequential calls; the bench then prints p50/p99 from
//! its own per-request timings (plain and instrumented rounds interleaved), the throughput of
//! `CALLERS` concurrent callers, and the CPU time per call of each thread group (client, servers,
//! skein's export thread, sink). The sink decodes in this process, so it competes for the same
//! two cores; its CPU is shown separately.
//!
//! `cargo bench --bench rpc -- <filter>` runs only the matching criterion benches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use skein_instrument::layer::{GrpcClient, GrpcClientLayer, GrpcServerLayer};
use skein_instrument::{BatchConfig, Builder, Protocol};
use tonic::transport::Channel;

/// Concurrent callers in the throughput measurement.
const CALLERS: usize = 16;

/// The RPC under test (answers at once), and the OTLP sink (counts spans, discards them).
#[derive(Clone, Default)]
struct Svc {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn incoming(l: std::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(tokio::net::TcpListener::from_std(l).unwrap())
}

struct Servers {
    sink: Svc,
    plain: SocketAddr,
    instrumented: SocketAddr,
}

/// The sink on its own runtime; both servers under test on one shared two-worker runtime.
fn start_servers() -> Servers {
    let sink = Svc::default();
    let (sink_l, sink_addr) = listener();
    let s = sink.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-sink")
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(s))
                .serve_with_incoming(incoming(sink_l))
                .await
                .unwrap();
        });
    });
    let guard = Builder::default()
        .service_name("rpc-bench")
        .endpoint(format!("http://{sink_addr}"), Protocol::Grpc)
        .batch(BatchConfig {
            max_queue_size: 65_536,
            scheduled_delay: Duration::from_secs(1),
            max_export_batch_size: 512,
            export_timeout: Duration::from_secs(10),
        })
        .tracing_subscriber(false)
        .install()
        .unwrap();
    // The pipeline lives as long as the process.
    std::mem::forget(guard);

    let (plain_l, plain) = listener();
    let (instr_l, instrumented) = listener();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rpc-server")
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let plain = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Svc::default()))
                .serve_with_incoming(incoming(plain_l));
            let instrumented = tonic::transport::Server::builder()
                .layer(GrpcServerLayer::new())
                .add_service(TraceServiceServer::new(Svc::default()))
                .serve_with_incoming(incoming(instr_l));
            let (a, b) = tokio::join!(plain, instrumented);
            a.unwrap();
            b.unwrap();
        });
    });
    Servers { sink, plain, instrumented }
}

/// A client of either kind.
#[derive(Clone)]
enum Client {
    Plain(TraceServiceClient<Channel>),
    Instrumented(TraceServiceClient<GrpcClient<Channel>>),
}

impl Client {
    async fn connect(addr: SocketAddr, instrumented: bool) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        if instrumented {
            let svc = tower::ServiceBuilder::new().layer(GrpcClientLayer::new()).service(channel);
            Client::Instrumented(TraceServiceClient::new(svc))
        } else {
            Client::Plain(TraceServiceClient::new(channel))
        }
    }

    async fn call(&mut self) {
        let req = ExportTraceServiceRequest::default();
        match self {
            Client::Plain(c) => c.export(req).await.unwrap(),
            Client::Instrumented(c) => c.export(req).await.unwrap(),
        };
    }
}

/// `n` sequential calls; per-call latencies in nanoseconds.
async fn sequential(client: &mut Client, n: usize, out: &mut Vec<u64>) {
    for _ in 0..n {
        let t = Instant::now();
        client.call().await;
        out.push(t.elapsed().as_nanos() as u64);
    }
}

/// Calls completed by `CALLERS` concurrent callers in `d`, per second.
fn throughput(rt: &tokio::runtime::Runtime, client: &Client, d: Duration) -> f64 {
    rt.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + d;
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let mut c = client.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        c.call().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    })
}

/// CPU time (ns) per thread group: the calling thread ("client"), the servers, skein's export
/// thread, the sink; from /proc/self/task/*/schedstat.
fn cpu_by_group() -> [u64; 4] {
    let me = std::fs::read_link("/proc/thread-self").unwrap_or_default();
    let me = me.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = [0; 4];
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let group = if task.file_name().to_string_lossy() == me {
            0
        } else if comm.starts_with("rpc-server") {
            1
        } else if comm.starts_with("skein-export") {
            2
        } else if comm.starts_with("bench-sink") {
            3
        } else {
            continue;
        };
        let sched = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        out[group] += sched.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let servers = start_servers();
    // Sequential calls: a current-thread client runtime (the caller's thread drives its
    // connection); the servers run on their own two workers.
    let seq_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut plain, mut instr) = seq_rt.block_on(async {
        (
            Client::connect(servers.plain, false).await,
            Client::connect(servers.instrumented, true).await,
        )
    });

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    {
        let mut g = c.benchmark_group("rpc_unary");
        for (name, client) in [("plain", &mut plain), ("instrumented", &mut instr)] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    seq_rt.block_on(async {
                        let t = Instant::now();
                        for _ in 0..iters {
                            client.call().await;
                        }
                        t.elapsed()
                    })
                })
            });
        }
        g.finish();
    }
    c.final_summary();
    if filtered {
        return;
    }

    let (rounds, per_round, tp_rounds, tp_time) = if test_mode {
        (2, 50, 1, Duration::from_millis(100))
    } else {
        (40, 1_000, 5, Duration::from_secs(2))
    };
    // Latency: interleaved rounds, plain first in even rounds and second in odd ones.
    let (mut lat_p, mut lat_i) = (Vec::new(), Vec::new());
    let mut round_p50_delta = Vec::new();
    seq_rt.block_on(async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sequential(&mut plain, per_round / 2, &mut a).await;
        sequential(&mut instr, per_round / 2, &mut b).await;
        for r in 0..rounds {
            let (mut a, mut b) = (Vec::with_capacity(per_round), Vec::with_capacity(per_round));
            if r % 2 == 0 {
                sequential(&mut plain, per_round, &mut a).await;
                sequential(&mut instr, per_round, &mut b).await;
            } else {
                sequential(&mut instr, per_round, &mut b).await;
                sequential(&mut plain, per_round, &mut a).await;
            }
            a.sort_unstable();
            b.sort_unstable();
            round_p50_delta.push(percentile(&b, 0.5) / percentile(&a, 0.5) - 1.0);
            lat_p.extend(a);
            lat_i.extend(b);
        }
    });
    lat_p.sort_unstable();
    lat_i.sort_unstable();

    // CPU per sequential call, by thread group (the export thread works in the background: a
    // flush at the end charges the instrumented calls with all of their export work).
    let calls = per_round * 4;
    let mut cpu = [[0.0; 4]; 2];
    for (v, client) in [&mut plain, &mut instr].into_iter().enumerate() {
        skein_instrument::flush();
        let before = cpu_by_group();
        seq_rt.block_on(async {
            for _ in 0..calls {
                client.call().await;
            }
        });
        skein_instrument::flush();
        let after = cpu_by_group();
        for g in 0..4 {
            cpu[v][g] = (after[g] - before[g]) as f64 / calls as f64 / 1000.0;
        }
    }

    // Throughput: CALLERS concurrent callers on a two-worker client runtime.
    let tp_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rpc-client")
        .enable_all()
        .build()
        .unwrap();
    let (tp_plain, tp_instr) = tp_rt.block_on(async {
        (
            Client::connect(servers.plain, false).await,
            Client::connect(servers.instrumented, true).await,
        )
    });
    throughput(&tp_rt, &tp_plain, tp_time / 4);
    throughput(&tp_rt, &tp_instr, tp_time / 4);
    let (mut tps_p, mut tps_i) = (Vec::new(), Vec::new());
    for r in 0..tp_rounds {
        if r % 2 == 0 {
            tps_p.push(throughput(&tp_rt, &tp_plain, tp_time));
            tps_i.push(throughput(&tp_rt, &tp_instr, tp_time));
        } else {
            tps_i.push(throughput(&tp_rt, &tp_instr, tp_time));
            tps_p.push(throughput(&tp_rt, &tp_plain, tp_time));
        }
    }
    let (tp_p, tp_i) = (median(&mut tps_p), median(&mut tps_i));

    let n = lat_p.len();
    println!("\n## tonic unary RPC on loopback ({rounds} interleaved rounds, {n} calls each)");
    println!("| variant | p50 µs | p90 µs | p99 µs | throughput ({CALLERS} callers), req/s |");
    println!("|---|---|---|---|---|");
    for (name, lat, tp) in [("plain", &lat_p, tp_p), ("instrumented", &lat_i, tp_i)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.0} |",
            percentile(lat, 0.5),
            percentile(lat, 0.9),
            percentile(lat, 0.99),
            tp
        );
    }
    let pct = |a: f64, b: f64| 100.0 * (b / a - 1.0);
    println!(
        "| delta | {:+.1} % | {:+.1} % | {:+.1} % | {:+.1} % |",
        pct(percentile(&lat_p, 0.5), percentile(&lat_i, 0.5)),
        pct(percentile(&lat_p, 0.9), percentile(&lat_i, 0.9)),
        pct(percentile(&lat_p, 0.99), percentile(&lat_i, 0.99)),
        pct(tp_p, tp_i)
    );
    println!("median of the per-round p50 deltas: {:+.1} %", 100.0 * median(&mut round_p50_delta));
    println!("\n## CPU per sequential call, µs ({calls} calls each, thread CPU time)");
    println!("| variant | client thread | server threads | skein-export | sink | total |");
    println!("|---|---|---|---|---|---|");
    for (name, c) in [("plain", cpu[0]), ("instrumented", cpu[1])] {
        let total: f64 = c.iter().sum();
        println!("| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {total:.1} |", c[0], c[1], c[2], c[3]);
    }

    skein_instrument::flush();
    std::thread::sleep(Duration::from_millis(200));
    let s = skein_instrument::stats();
    println!(
        "skein stats(): exported {}, dropped_queue_full {}, dropped_export_failed {}; sink \
         received {} spans",
        s.exported,
        s.dropped_queue_full,
        s.dropped_export_failed,
        servers.sink.spans.load(Ordering::Relaxed)
    );
}
