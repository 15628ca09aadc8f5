//! Shared by the profiling test binaries: a tiny collector stand-in on 127.0.0.1 that receives
//! `/ingest` (gzip pprof, decoded with skein's own prost messages) and OTLP/HTTP `/v1/traces`,
//! plus CPU-burning workloads with distinct frames.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use prost::Message;
use skein_instrument::profiling::pprof::Profile;

/// One push to `/ingest`.
#[derive(Debug, Clone)]
pub struct Push {
    pub query: HashMap<String, String>,
    pub tenant: Option<String>,
    pub headers: HeaderMap,
    pub gzip_bytes: usize,
    pub profile: Profile,
}

/// A span as exported over OTLP: name, id, trace id and `pyroscope.profile.id` if any.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub name: String,
    pub span_id: String,
    pub trace_id: String,
    pub profile_id: Option<String>,
}

#[derive(Clone)]
pub struct Received {
    pub pushes: Arc<Mutex<Vec<Push>>>,
    pub spans: Arc<Mutex<Vec<ExportedSpan>>>,
    /// Whether exported spans are kept (a soak only counts them).
    pub keep_spans: Arc<AtomicBool>,
    pub span_count: Arc<AtomicU64>,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            pushes: Arc::default(),
            spans: Arc::default(),
            keep_spans: Arc::new(AtomicBool::new(true)),
            span_count: Arc::default(),
        }
    }
}

/// Starts the stand-in collector on its own thread; returns its address.
pub fn start_server() -> (SocketAddr, Received) {
    let received = Received::default();
    let state = received.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/ingest", axum::routing::post(ingest))
                .route("/v1/traces", axum::routing::post(traces))
                .with_state(state);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), received)
}

async fn ingest(
    State(r): State<Received>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut raw).unwrap();
    let profile = Profile::decode(raw.as_slice()).unwrap();
    let tenant = headers.get("x-scope-orgid").and_then(|v| v.to_str().ok()).map(String::from);
    let gzip_bytes = body.len();
    r.pushes.lock().unwrap().push(Push { query, tenant, headers, gzip_bytes, profile });
    "ok"
}

async fn traces(State(r): State<Received>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    let n: usize =
        req.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
    r.span_count.fetch_add(n as u64, Ordering::Relaxed);
    if !r.keep_spans.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let mut spans = r.spans.lock().unwrap();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                let profile_id =
                    s.attributes.iter().find(|a| a.key == "pyroscope.profile.id").and_then(|a| {
                        match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Av::StringValue(v)) => Some(v.clone()),
                            _ => None,
                        }
                    });
                spans.push(ExportedSpan {
                    name: s.name,
                    span_id: hex(&s.span_id),
                    trace_id: hex(&s.trace_id),
                    profile_id,
                });
            }
        }
    }
    Vec::new()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// A flattened sample: its labels, stack (leaf first) and sample count.
#[derive(Debug, Clone)]
pub struct FlatSample {
    pub labels: HashMap<String, String>,
    pub stack: Vec<String>,
    pub count: i64,
    pub cpu_nanos: i64,
}

impl FlatSample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
    pub fn has_frame(&self, suffix: &str) -> bool {
        self.stack.iter().any(|f| f.ends_with(suffix))
    }
}

pub fn flatten(pushes: &[Push]) -> Vec<FlatSample> {
    let mut out = Vec::new();
    for push in pushes {
        let p = &push.profile;
        for s in &p.sample {
            let labels = s
                .label
                .iter()
                .map(|l| (p.str(l.key).to_string(), p.str(l.str).to_string()))
                .collect();
            out.push(FlatSample {
                labels,
                stack: p.stack(s).into_iter().map(String::from).collect(),
                count: s.value.get(1).copied().unwrap_or(0),
                cpu_nanos: s.value.first().copied().unwrap_or(0),
            });
        }
    }
    out
}

/// Total sample count of `samples` matching `f`.
pub fn count(samples: &[FlatSample], f: impl Fn(&FlatSample) -> bool) -> i64 {
    samples.iter().filter(|s| f(s)).map(|s| s.count).sum()
}

/// CPU work that shows up as its own frame.
#[inline(never)]
pub fn hot_work(iters: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..iters {
        x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9).wrapping_add(i);
    }
    black_box(x)
}

/// Different CPU work, with a different frame.
#[inline(never)]
pub fn cold_work(iters: u64) -> u64 {
    let mut x = 1u64;
    for i in 0..iters {
        x = x.rotate_left(7).wrapping_add(i.wrapping_mul(31)) ^ 0x5555;
    }
    black_box(x)
}

/// Calls `work` in small chunks for `d` of wall time.
pub fn spin(d: Duration, work: fn(u64) -> u64) {
    let t = Instant::now();
    while t.elapsed() < d {
        black_box(work(black_box(20_000)));
    }
}

/// CPU time this process has used (user + system).
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}
