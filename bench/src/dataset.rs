//! Synthetic trace data shaped like the Jaeger/ClickHouse benchmark: a fixed number of spans per
//! trace arranged as a call tree over 10 services and ~50 operations, a fixed number of
//! attributes per span with realistic cardinalities, log-normal durations with a slow tail and
//! about 1% errors. Deterministic for a given seed.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};

/// A small, fast PRNG (SplitMix64): statistically fine for load shaping, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [0, n); `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Non-zero random bytes (an all-zero id is invalid in OTLP).
    pub fn id<const N: usize>(&mut self) -> [u8; N] {
        loop {
            let mut out = [0u8; N];
            for chunk in out.chunks_mut(8) {
                let v = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            if out.iter().any(|b| *b != 0) {
                return out;
            }
        }
    }
}

/// The SplitMix64 finaliser: a cheap bijective 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Shape of the generated data.
#[derive(Debug, Clone)]
pub struct DataSpec {
    pub spans_per_trace: usize,
    pub attributes: usize,
    pub services: usize,
    pub ops_per_service: usize,
    /// Fraction of spans with status ERROR.
    pub error_rate: f64,
    /// Median root-span duration.
    pub median_root_ms: f64,
    /// Fraction of traces that are ~10x slower (the tail).
    pub slow_rate: f64,
}

impl DataSpec {
    pub fn new(spans_per_trace: usize, attributes: usize) -> Self {
        DataSpec {
            spans_per_trace: spans_per_trace.max(1),
            attributes,
            services: 10,
            ops_per_service: 5,
            error_rate: 0.01,
            median_root_ms: 60.0,
            slow_rate: 0.02,
        }
    }
}

pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

struct Op {
    name: String,
    route: String,
    rpc_service: String,
    rpc_method: String,
    kind: span::SpanKind,
}

const RESOURCES: [&str; 10] = [
    "orders",
    "users",
    "cart",
    "payments",
    "inventory",
    "shipping",
    "reviews",
    "search",
    "prices",
    "auth",
];
const VERBS: [&str; 8] = ["Get", "List", "Create", "Update", "Delete", "Reserve", "Quote", "Check"];
const DB_STATEMENTS: [&str; 12] = [
    "SELECT * FROM orders WHERE id = $1",
    "SELECT id, total FROM orders WHERE user_id = $1 ORDER BY created DESC LIMIT 20",
    "INSERT INTO orders (id, user_id, total) VALUES ($1, $2, $3)",
    "UPDATE inventory SET reserved = reserved + $1 WHERE sku = $2",
    "SELECT sku, qty FROM inventory WHERE sku = ANY($1)",
    "SELECT * FROM users WHERE id = $1",
    "UPDATE users SET last_seen = now() WHERE id = $1",
    "SELECT * FROM cart_items WHERE cart_id = $1",
    "DELETE FROM cart_items WHERE cart_id = $1 AND sku = $2",
    "INSERT INTO payments (id, order_id, amount) VALUES ($1, $2, $3)",
    "SELECT price FROM prices WHERE sku = $1 AND region = $2",
    "SELECT count(*) FROM reviews WHERE sku = $1",
];
const METHODS: [(&str, u32); 4] = [("GET", 70), ("POST", 20), ("PUT", 6), ("DELETE", 4)];

/// Generates OTLP export requests of whole traces. Operations and resources are fixed per spec.
pub struct TraceGenerator {
    spec: DataSpec,
    services: Vec<String>,
    ops: Vec<Vec<Op>>,
    scope: InstrumentationScope,
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn i(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

/// Generated trace ids of one request, in the order their first spans were encoded.
pub struct Generated {
    pub req: ExportTraceServiceRequest,
    pub trace_ids: Vec<[u8; 16]>,
    pub spans: usize,
}

struct GenSpan {
    service: usize,
    span: Span,
}

impl TraceGenerator {
    pub fn new(spec: DataSpec) -> Self {
        let services: Vec<String> = (0..spec.services).map(service_name).collect();
        let ops = (0..spec.services)
            .map(|svc| {
                let res = RESOURCES[svc % RESOURCES.len()];
                let rpc_service = format!("shop.{}{}Service", &res[..1].to_uppercase(), &res[1..]);
                (0..spec.ops_per_service)
                    .map(|o| {
                        let verb = VERBS[(svc + o) % VERBS.len()];
                        let route = if o % 2 == 0 {
                            format!("/api/v1/{res}/{{id}}")
                        } else {
                            format!("/api/v1/{res}")
                        };
                        let route =
                            if o >= 2 { format!("{route}/{}", verb.to_lowercase()) } else { route };
                        let rpc_method =
                            format!("{verb}{}", if o >= 2 { o.to_string() } else { String::new() });
                        let (name, kind) = if o % 3 == 2 {
                            (format!("{rpc_service}/{rpc_method}"), span::SpanKind::Server)
                        } else if o % 3 == 1 {
                            (
                                format!("{} {route}", METHODS[o % METHODS.len()].0),
                                span::SpanKind::Server,
                            )
                        } else {
                            (format!("{verb} {res}"), span::SpanKind::Internal)
                        };
                        Op { name, route, rpc_service: rpc_service.clone(), rpc_method, kind }
                    })
                    .collect()
            })
            .collect();
        TraceGenerator {
            spec,
            services,
            ops,
            scope: InstrumentationScope {
                name: "skein-bench".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            },
        }
    }

    #[cfg(test)]
    fn operations(&self) -> usize {
        self.ops.iter().map(|o| o.len()).sum()
    }

    fn method(rng: &mut Rng) -> &'static str {
        let mut r = rng.below(100) as u32;
        for (m, w) in METHODS {
            if r < w {
                return m;
            }
            r -= w;
        }
        "GET"
    }

    fn attributes(&self, rng: &mut Rng, op: &Op, error: bool, peer: usize) -> Vec<KeyValue> {
        let n = self.spec.attributes;
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let a = match k {
                0 => kv("http.method", s(Self::method(rng))),
                1 => kv("http.route", s(op.route.as_str())),
                2 => {
                    let code = if error {
                        [500, 502, 503][rng.below(3) as usize]
                    } else {
                        match rng.below(100) {
                            0..=84 => 200,
                            85..=89 => 201,
                            90..=93 => 204,
                            94..=96 => 304,
                            _ => 404,
                        }
                    };
                    kv("http.status_code", i(code))
                }
                3 => kv("rpc.system", s("grpc")),
                4 => kv("rpc.service", s(op.rpc_service.as_str())),
                5 => kv("rpc.method", s(op.rpc_method.as_str())),
                6 => kv(
                    "db.statement",
                    s(DB_STATEMENTS[rng.below(DB_STATEMENTS.len() as u64) as usize]),
                ),
                7 => kv(
                    "net.peer.name",
                    s(format!("{}.shop.svc.cluster.local", self.services[peer])),
                ),
                8 => kv(
                    "net.peer.port",
                    i(if op.kind == span::SpanKind::Server { 8080 } else { 50051 }),
                ),
                9 => kv("enduser.id", s(format!("user-{}", rng.below(100_000)))),
                10 => {
                    // Log-uniform 100 B .. 100 kB.
                    let len = 100.0 * 1000f64.powf(rng.unit());
                    kv("http.response_content_length", i(len as i64))
                }
                _ => kv(&format!("attr.{k}"), s(format!("value-{}", rng.below(100)))),
            };
            out.push(a);
        }
        out
    }

    fn resource(&self, rng: &mut Rng, svc: usize) -> Resource {
        let pod = rng.below(3);
        let name = &self.services[svc];
        Resource {
            attributes: vec![
                kv("service.name", s(name.as_str())),
                kv("service.namespace", s("shop")),
                kv("service.version", s("1.4.2")),
                kv("service.instance.id", s(format!("{name}-{pod}"))),
                kv("host.name", s(format!("node-{}", (svc + pod as usize) % 4))),
                kv("telemetry.sdk.language", s("rust")),
                kv("telemetry.sdk.name", s("opentelemetry")),
                kv("telemetry.sdk.version", s("0.33.0")),
            ],
            ..Default::default()
        }
    }

    /// One trace; its root starts at `start_ns`.
    fn trace(&self, rng: &mut Rng, start_ns: u64, out: &mut Vec<GenSpan>) -> [u8; 16] {
        let trace_id: [u8; 16] = rng.id();
        let n = self.spec.spans_per_trace;
        let first = out.len();
        // Root: an entry service (svc-0 or svc-1), log-normal duration with a slow tail.
        let root_svc = (rng.below(2) as usize).min(self.spec.services - 1);
        let mut dur_ms = self.spec.median_root_ms * (0.9 * rng.normal()).exp();
        if rng.chance(self.spec.slow_rate) {
            dur_ms *= 10.0;
        }
        let dur = (dur_ms * 1e6) as u64;
        for k in 0..n {
            let (parent, svc, start, dur) = if k == 0 {
                (None, root_svc, start_ns, dur.max(1000))
            } else {
                // Parent among the earlier spans, biased to recent ones (deeper trees).
                let p = first + k - 1 - (rng.below(k as u64).min(rng.below(k as u64))) as usize;
                let ps = &out[p];
                let pstart = ps.span.start_time_unix_nano;
                let pdur = ps.span.end_time_unix_nano - pstart;
                let offset = (pdur as f64 * 0.3 * rng.unit()) as u64;
                let d = ((pdur - offset) as f64 * (0.2 + 0.7 * rng.unit())) as u64;
                let svc = (ps.service + 1 + rng.below(self.spec.services as u64 - 1) as usize)
                    % self.spec.services;
                let svc = if self.spec.services == 1 { 0 } else { svc };
                (Some(ps.span.span_id.clone()), svc, pstart + offset, d.max(1000))
            };
            let op_idx = rng.below(self.ops[svc].len() as u64) as usize;
            let op = &self.ops[svc][op_idx];
            let error = rng.chance(self.spec.error_rate);
            let peer = (svc + 1 + k) % self.spec.services;
            let span_id: [u8; 8] = rng.id();
            let kind = if k == 0 { span::SpanKind::Server } else { op.kind };
            out.push(GenSpan {
                service: svc,
                span: Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    parent_span_id: parent.unwrap_or_default(),
                    flags: 0x101,
                    name: op.name.clone(),
                    kind: kind as i32,
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + dur,
                    attributes: self.attributes(rng, op, error, peer),
                    status: Some(if error {
                        Status {
                            code: status::StatusCode::Error as i32,
                            message: "upstream failed".into(),
                        }
                    } else {
                        Status { code: status::StatusCode::Unset as i32, message: String::new() }
                    }),
                    ..Default::default()
                },
            });
        }
        trace_id
    }

    /// A request of `traces` whole traces whose roots start uniformly in [from_ns, to_ns).
    /// Spans are grouped into one `ResourceSpans` per service, as an agent's batch would be.
    pub fn request(&self, rng: &mut Rng, traces: usize, from_ns: u64, to_ns: u64) -> Generated {
        let mut spans = Vec::with_capacity(traces * self.spec.spans_per_trace);
        let mut trace_ids = Vec::with_capacity(traces);
        let width = to_ns.saturating_sub(from_ns).max(1);
        for _ in 0..traces {
            let start = from_ns + rng.below(width);
            trace_ids.push(self.trace(rng, start, &mut spans));
        }
        let total = spans.len();
        let mut by_service: HashMap<usize, Vec<Span>> = HashMap::new();
        for g in spans {
            by_service.entry(g.service).or_default().push(g.span);
        }
        let mut keys: Vec<usize> = by_service.keys().copied().collect();
        keys.sort_unstable();
        let resource_spans = keys
            .into_iter()
            .map(|svc| ResourceSpans {
                resource: Some(self.resource(rng, svc)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans: by_service.remove(&svc).unwrap_or_default(),
                    schema_url: String::new(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            })
            .collect();
        Generated { req: ExportTraceServiceRequest { resource_spans }, trace_ids, spans: total }
    }
}

/// A pre-encoded request whose trace ids can be varied cheaply: `offsets` are the positions of
/// every span's 16-byte trace id in `bytes`.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub offsets: Vec<usize>,
    pub spans: usize,
}

impl Encoded {
    /// Encodes `g` and finds its trace ids (field 1 of `Span`: tag 0x0a, length 0x10).
    pub fn new(g: &Generated) -> Self {
        use prost::Message;
        let bytes = g.req.encode_to_vec();
        let ids: std::collections::HashSet<&[u8]> =
            g.trace_ids.iter().map(|t| t.as_slice()).collect();
        let mut offsets = Vec::with_capacity(g.spans);
        let mut p = 0;
        while p + 18 <= bytes.len() {
            if bytes[p] == 0x0a && bytes[p + 1] == 0x10 && ids.contains(&bytes[p + 2..p + 18]) {
                offsets.push(p + 2);
                p += 18;
            } else {
                p += 1;
            }
        }
        Encoded { bytes, offsets, spans: g.spans }
    }

    /// A copy whose trace ids are all XOR-ed with a value derived from `salt`: different salts
    /// give different ids, spans of one trace keep sharing theirs.
    pub fn salted(&self, salt: u64) -> bytes::Bytes {
        let mut b = self.bytes.clone();
        let x = mix64(salt.wrapping_add(1)).to_le_bytes();
        for &o in &self.offsets {
            for (dst, k) in b[o..o + 8].iter_mut().zip(x) {
                *dst ^= k;
            }
        }
        bytes::Bytes::from(b)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;
    use std::collections::{HashMap, HashSet};

    fn spans(req: &ExportTraceServiceRequest) -> Vec<&Span> {
        req.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect()
    }

    #[test]
    fn traces_have_the_requested_shape() {
        let g = TraceGenerator::new(DataSpec::new(10, 11));
        let mut rng = Rng::new(7);
        let out = g.request(&mut rng, 100, 1_000_000_000, 2_000_000_000);
        let all = spans(&out.req);
        assert_eq!(all.len(), 1000);
        assert_eq!(out.spans, 1000);
        assert_eq!(out.trace_ids.len(), 100);
        let mut per_trace: HashMap<&[u8], Vec<&Span>> = HashMap::new();
        for s in &all {
            assert_eq!(s.attributes.len(), 11, "attributes per span");
            assert!(s.end_time_unix_nano > s.start_time_unix_nano);
            per_trace.entry(s.trace_id.as_slice()).or_default().push(s);
        }
        assert_eq!(per_trace.len(), 100);
        for spans in per_trace.values() {
            assert_eq!(spans.len(), 10, "spans per trace");
            let roots: Vec<_> = spans.iter().filter(|s| s.parent_span_id.is_empty()).collect();
            assert_eq!(roots.len(), 1, "one root per trace");
            let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
            for s in spans.iter().filter(|s| !s.parent_span_id.is_empty()) {
                assert!(ids.contains(s.parent_span_id.as_slice()), "parent inside the trace");
            }
            let root = roots[0];
            assert!(
                root.start_time_unix_nano >= 1_000_000_000
                    && root.start_time_unix_nano < 2_000_000_000
            );
        }
        // One resource per service present, each carrying service.name.
        for rs in &out.req.resource_spans {
            let r = rs.resource.as_ref().unwrap();
            assert!(r.attributes.iter().any(|kv| kv.key == "service.name"));
        }
        assert!(out.req.resource_spans.len() <= 10);
    }

    #[test]
    fn attribute_count_follows_the_spec_beyond_the_named_ones() {
        let g = TraceGenerator::new(DataSpec::new(3, 14));
        let out = g.request(&mut Rng::new(1), 5, 0, 10);
        for s in spans(&out.req) {
            assert_eq!(s.attributes.len(), 14);
            let keys: HashSet<&str> = s.attributes.iter().map(|k| k.key.as_str()).collect();
            assert_eq!(keys.len(), 14, "attribute keys are distinct");
            assert!(keys.contains("http.status_code") && keys.contains("attr.13"));
        }
        let g = TraceGenerator::new(DataSpec::new(1, 0));
        let out = g.request(&mut Rng::new(1), 2, 0, 10);
        assert!(spans(&out.req).iter().all(|s| s.attributes.is_empty()));
    }

    #[test]
    fn data_set_has_about_fifty_operations_and_ten_services() {
        let g = TraceGenerator::new(DataSpec::new(10, 11));
        assert_eq!(g.operations(), 50);
        let out = g.request(&mut Rng::new(3), 2000, 0, 1);
        let all = spans(&out.req);
        let names: HashSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert!(names.len() >= 40 && names.len() <= 50, "{} distinct names", names.len());
        assert_eq!(out.req.resource_spans.len(), 10);
        let errors =
            all.iter().filter(|s| s.status.as_ref().is_some_and(|st| st.code == 2)).count();
        let rate = errors as f64 / all.len() as f64;
        assert!((0.005..0.02).contains(&rate), "error rate {rate}");
    }

    #[test]
    fn salting_changes_every_trace_id_consistently() {
        let g = TraceGenerator::new(DataSpec::new(10, 11));
        let gen_out = g.request(&mut Rng::new(9), 100, 0, 1_000_000);
        let enc = Encoded::new(&gen_out);
        assert_eq!(enc.offsets.len(), 1000, "one trace id per span found");
        let a = ExportTraceServiceRequest::decode(enc.salted(1)).unwrap();
        let b = ExportTraceServiceRequest::decode(enc.salted(2)).unwrap();
        let ids = |r: &ExportTraceServiceRequest| -> HashSet<Vec<u8>> {
            spans(r).iter().map(|s| s.trace_id.clone()).collect()
        };
        let (ia, ib) = (ids(&a), ids(&b));
        assert_eq!(ia.len(), 100);
        assert_eq!(ib.len(), 100);
        assert!(ia.is_disjoint(&ib));
        let orig: HashSet<Vec<u8>> = gen_out.trace_ids.iter().map(|t| t.to_vec()).collect();
        assert!(ia.is_disjoint(&orig));
        // Everything but the ids is unchanged.
        assert_eq!(spans(&a).len(), 1000);
        assert_eq!(spans(&a)[5].name, spans(&gen_out.req)[5].name);
    }

    #[test]
    fn rng_is_deterministic_and_roughly_uniform() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        assert_eq!(a.next_u64(), b.next_u64());
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[a.below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (9_000..11_000).contains(c)), "{counts:?}");
        let mean: f64 = (0..100_000).map(|_| a.normal()).sum::<f64>() / 100_000.0;
        assert!(mean.abs() < 0.02, "{mean}");
    }
}
