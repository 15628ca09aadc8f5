//! Entry points of the fuzz harnesses (`fuzz/`, FUZZING.md): each takes arbitrary bytes, runs
//! them through one input path the way the collector does, and checks what must hold whatever
//! the input. Errors are expected answers; only a panic (a failed check included) is a finding.
//! The integration test `fuzz_corpus` runs the same functions over the committed corpus, so CI
//! exercises them without the instrumented build.

#![deny(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::alert::template::{Data, Template};
use crate::head::SpanHead;
use crate::ingest;
use crate::profile::model::{Batch, Label, Profile};
use crate::profile::push::{self, IngestParams};
use crate::promql;
use crate::promql::labels::Labels;
use crate::promql::value::Series;
use crate::query::compile::filter_expr;
use crate::query::traceql::{self, Query};
use crate::spanrows::{DedicatedColumns, to_traces_data};
use crate::traces::dedupe::RecentSpans;
use crate::wal::{self, Wal, WalConfig, WalRecord};

/// Inflated profile bodies are bounded like the server bounds them (smaller, to keep runs fast).
const PROFILE_LIMIT: usize = 4 << 20;
/// Dedicated columns used wherever rows are built or filters compiled, so both the dedicated
/// and the generic attribute paths run.
fn dedicated() -> DedicatedColumns {
    DedicatedColumns {
        span: vec!["http.route".into()],
        resource: vec!["deployment.environment".into()],
    }
}

/// OTLP/HTTP protobuf body: decode, validate, and apply to a head as ingest and the writer do.
pub fn otlp_proto(data: &[u8]) {
    if let Ok(req) = ingest::decode_protobuf(data) {
        ingest_request(req);
    }
}

/// OTLP/HTTP JSON body, the same path as [`otlp_proto`].
pub fn otlp_json(data: &[u8]) {
    if let Ok(req) = ingest::decode_json(data) {
        ingest_request(req);
    }
}

/// What happens to a decoded export: invalid spans are dropped, the rest must either be
/// refused whole by the head's check or be applied, and then be readable back, every one.
fn ingest_request(mut req: ExportTraceServiceRequest) {
    let v = ingest::validate(&mut req);
    let spans: usize =
        req.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
    assert_eq!(spans, v.accepted, "validation kept a different number of spans than it accepted");
    if v.accepted == 0 {
        return;
    }
    let head = SpanHead::new(dedicated());
    if head.check(&req).is_err() {
        return;
    }
    // The WAL payload ingest writes when it had to re-encode; replay decodes the same.
    let payload = req.encode_to_vec();
    // Compared as bytes: a NaN attribute is a valid value that `==` never equals.
    let replayed = ExportTraceServiceRequest::decode(payload.as_slice());
    assert!(
        replayed.as_ref().is_ok_and(|r| r.encode_to_vec() == payload),
        "the WAL payload does not decode to the request"
    );
    if let Err(e) = head.apply(1, "fuzz", &req) {
        panic!("the head refused a request its check accepted: {e}");
    }
    read_back(&head, v.accepted);
}

/// Every applied span is in the head's snapshot and decodes back to OTLP.
fn read_back(head: &SpanHead, spans: usize) {
    let batches = match head.snapshot("fuzz") {
        Ok(b) => b,
        Err(e) => panic!("snapshot of an applied request failed: {e}"),
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, spans, "the head holds a different number of spans than were applied");
    match to_traces_data(&batches, head.dedicated()) {
        Ok(td) => {
            let decoded: usize = td
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum();
            assert_eq!(decoded, spans, "rows decoded to a different number of spans");
        }
        Err(e) => panic!("rows built by the head do not decode: {e}"),
    }
}

/// A TraceQL query, as search and metrics read it: parse, print and parse again (the printed
/// form is canonical), and compile every filter.
pub fn traceql(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    if let Ok(q) = traceql::parse(src) {
        let printed = q.to_string();
        match traceql::parse(&printed) {
            Ok(again) => assert_eq!(again.to_string(), printed, "printing is not canonical"),
            Err(e) => panic!("the printed form {printed:?} of {src:?} does not parse: {e}"),
        }
        compile(&q);
    }
    if let Ok(m) = traceql::parse_metrics(src) {
        compile(&m.spans);
    }
}

fn compile(q: &Query) {
    match q {
        Query::Filter(f) => {
            // Refusals (a bad regex, a type mismatch) are answers.
            let _ = filter_expr(f, &dedicated());
        }
        Query::And(a, b) | Query::Or(a, b) => {
            compile(a);
            compile(b);
        }
    }
}

/// A fixed set of span-metrics series: counters and a histogram every 15 s over 10 minutes.
fn fixed_series() -> promql::MemStorage {
    {
        let series = |labels: &[(&str, &str)], per_step: f64| Series {
            labels: Labels::new(labels.iter().copied()),
            points: (0..=40i32)
                .map(|i| (i64::from(i).saturating_mul(15_000), per_step * f64::from(i)))
                .collect(),
        };
        let calls = "traces_spanmetrics_calls_total";
        let bucket = "traces_spanmetrics_latency_bucket";
        promql::MemStorage(vec![
            series(
                &[("__name__", calls), ("service", "a"), ("status_code", "STATUS_CODE_UNSET")],
                30.0,
            ),
            series(
                &[("__name__", calls), ("service", "a"), ("status_code", "STATUS_CODE_ERROR")],
                15.0,
            ),
            series(
                &[("__name__", calls), ("service", "b"), ("status_code", "STATUS_CODE_UNSET")],
                15.0,
            ),
            series(&[("__name__", bucket), ("service", "a"), ("le", "0.1")], 15.0),
            series(&[("__name__", bucket), ("service", "a"), ("le", "0.2")], 30.0),
            series(&[("__name__", bucket), ("service", "a"), ("le", "+Inf")], 45.0),
            series(
                &[
                    ("__name__", "traces_service_graph_request_total"),
                    ("client", "a"),
                    ("server", "b"),
                ],
                1.0,
            ),
        ])
    }
}

/// A PromQL query evaluated as `/api/v1/query` and `/api/v1/query_range` do, over [`fixed_series`].
pub fn promql(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(expr) = promql::parse(src) else { return };
    let store = fixed_series();
    let _ = promql::instant(&store, &expr, 600_000);
    let limits = crate::promql::answer_limits::AnswerLimits::default();
    if let Ok(steps) =
        crate::promql::time_range::Steps::new(crate::promql::time_range::MILLIS, 0, 600_000, 60_000)
    {
        let _ = promql::range(&store, &expr, &steps, &limits);
    }
}

/// Checks what every decoded profile must satisfy before it goes to the WAL and the head.
fn check_profiles(profiles: &[Profile]) {
    for p in profiles {
        for s in &p.samples {
            assert_eq!(
                s.values.len(),
                p.profile_types.len(),
                "a sample's values do not match the types"
            );
            assert!(
                s.frames.iter().all(|f| usize::try_from(*f).is_ok_and(|f| f < p.functions.len())),
                "a sample refers to a function the profile does not hold"
            );
            assert!(
                s.frames.len() <= crate::profile::model::MAX_STACK_DEPTH,
                "a stack is too deep"
            );
        }
    }
    let batch = Batch { profiles: profiles.to_vec() };
    let wal = batch.encode_to_vec();
    assert!(
        Batch::decode_wal(&wal).is_ok_and(|b| b == batch),
        "a profile batch does not survive its WAL encoding"
    );
}

/// The decode budget one push gets with the default limits.
fn budget() -> crate::profile::limits::Budget {
    crate::profile::limits::Budget::new(
        PROFILE_LIMIT,
        crate::profile::limits::DEFAULT_DECODE_FACTOR,
    )
}

/// A pprof profile as `push.v1` carries it (gzip or plain), decoded and normalised.
pub fn pprof(data: &[u8]) {
    let labels = vec![Label::new("__name__", "process_cpu"), Label::new("service_name", "fuzz")];
    if let Ok(profiles) = push::series(labels, &[data], 1_700_000_000_000_000_000, &mut budget()) {
        check_profiles(&profiles);
    }
}

fn ingest_params(name: &str, format: &str) -> Option<IngestParams> {
    let q: HashMap<String, String> =
        [("name", name), ("format", format), ("from", "1700000000"), ("sampleRate", "100")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    IngestParams::parse(&q, 1_700_000_000_000_000_000).ok()
}

/// An `/ingest` body in the `folded` and the `lines` format.
pub fn folded(data: &[u8]) {
    for format in ["folded", "lines"] {
        let Some(p) = ingest_params("fuzz.cpu{env=fuzz}", format) else { return };
        if let Ok(b) = push::ingest(&p, None, data, &mut budget()) {
            check_profiles(&b.profiles);
        }
    }
}

/// A multipart `/ingest` request as Pyroscope's agents send it: the first line is the
/// Content-Type header (with the boundary), the rest the body.
pub fn multipart(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let Ok(content_type) = std::str::from_utf8(head) else { return };
    let Some(p) = ingest_params("fuzz", "pprof") else { return };
    if let Ok(b) = push::ingest(&p, Some(content_type.trim_end_matches('\r')), body, &mut budget())
    {
        check_profiles(&b.profiles);
    }
}

/// Reads one little-endian u64 from the front of `data`, zero-padded.
fn take_u64(data: &mut &[u8]) -> u64 {
    let n = data.len().min(8);
    let (head, rest) = data.split_at(n);
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(head);
    *data = rest;
    u64::from_le_bytes(b)
}

fn take(data: &mut &[u8], n: usize) -> Vec<u8> {
    let n = data.len().min(n);
    let (head, rest) = data.split_at(n);
    *data = rest;
    head.to_vec()
}

/// The segment bytes a WAL input stands for. Even first bytes: the rest is a segment file as
/// is. Odd: the rest describes records that are framed with valid checksums (so replay gets
/// past them): `first_seq u64`, then per record a tag byte (bit 0: an explicit `seq u64`
/// follows, else the next seq; bit 1: the remaining bytes are raw garbage after the records),
/// a tenant (length byte, up to 15 bytes), a payload (length u16, bytes).
fn wal_segment(data: &[u8]) -> Option<(u64, Vec<u8>)> {
    let (&mode, mut rest) = data.split_first()?;
    if mode % 2 == 0 {
        let first = rest.get(8..16).map_or(1, |b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        });
        return Some((first.max(1), rest.to_vec()));
    }
    let first = take_u64(&mut rest).max(1);
    let mut owned: Vec<(u64, String, Vec<u8>)> = Vec::new();
    let mut seq = first;
    let mut tail = Vec::new();
    while let Some((&tag, r)) = rest.split_first() {
        rest = r;
        if tag & 1 == 1 {
            seq = take_u64(&mut rest);
        }
        let tlen = take(&mut rest, 1).first().map_or(0, |l| usize::from(*l % 16));
        let tenant = String::from_utf8_lossy(&take(&mut rest, tlen)).into_owned();
        let len = take(&mut rest, 2);
        let plen = usize::from(u16::from_le_bytes([
            len.first().copied().unwrap_or(0),
            len.get(1).copied().unwrap_or(0),
        ]));
        let payload = take(&mut rest, plen);
        owned.push((seq, tenant, payload));
        seq = seq.wrapping_add(1);
        if tag & 2 == 2 {
            tail = rest.to_vec();
            break;
        }
    }
    let records: Vec<(u64, &str, &[u8])> =
        owned.iter().map(|(s, t, p)| (*s, t.as_str(), p.as_slice())).collect();
    let mut bytes = wal::encode_segment(first, &records).ok()?;
    bytes.extend_from_slice(&tail);
    Some((first, bytes))
}

/// A private scratch directory, on tmpfs when there is one (the WAL fsyncs).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Option<Scratch> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("skein-fuzz-wal-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        Some(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A WAL segment (see [`wal_segment`] for how the bytes are read) opened and replayed as at
/// start-up. Replay returns an intact prefix in seq order; an append after it is durable, and
/// reopening returns the same records plus the appended one. The records are then applied to
/// a head as replay does.
pub fn wal_record(data: &[u8]) {
    let Some((first, bytes)) = wal_segment(data) else { return };
    let Some(dir) = Scratch::new() else { return };
    if std::fs::write(dir.0.join(wal::segment_file_name(first)), &bytes).is_err() {
        return;
    }
    let cfg = WalConfig::new(&dir.0);
    let Ok((mut w, records)) = Wal::open(cfg.clone()) else { return };
    let mut expect = first;
    for r in &records {
        assert_eq!(r.seq, expect, "replay returned records out of sequence");
        expect = expect.wrapping_add(1);
    }
    if let Some(last) = records.last() {
        assert_eq!(w.last_seq(), last.seq, "the WAL's last seq is not its last record's");
    }
    let appended = w.append_batch(&[("after", b"appended")]);
    drop(w);
    if let Ok(seq) = appended {
        match Wal::open(cfg) {
            Ok((_, again)) => {
                let mut want = records.clone();
                want.push(WalRecord { seq, tenant: "after".into(), payload: b"appended".to_vec() });
                assert!(again == want, "reopening after an append lost or changed records");
            }
            Err(e) => panic!("a WAL that was appended to cannot be reopened: {e}"),
        }
    }
    replay(&records);
}

/// What start-up replay does with each record: decode, drop copies, apply in seq order.
fn replay(records: &[WalRecord]) {
    let head = SpanHead::new(dedicated());
    let dedupe = RecentSpans::new(1024, std::time::Duration::from_secs(600));
    for r in records {
        let Ok(mut req) = ExportTraceServiceRequest::decode(r.payload.as_slice()) else { continue };
        dedupe.filter(&r.tenant, &mut req);
        let _ = head.apply(r.seq, &r.tenant, &req);
    }
    for tenant in head.tenants() {
        if let Err(e) = head.snapshot(&tenant) {
            panic!("snapshot after replay failed: {e}");
        }
    }
}

/// An alert label or annotation template: parsed as a rule file's are, expanded for a few
/// values, including the ones that format specially.
pub fn alert_template(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let Ok(t) = Template::parse(src) else { return };
    let labels: BTreeMap<String, String> =
        [("service", "api"), ("span_name", "GET /a"), ("le", "0.5")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let external: BTreeMap<String, String> =
        [("cluster".to_string(), "fuzz".to_string())].into_iter().collect();
    for value in [0.25, -3.0, 1e300, f64::NAN, f64::INFINITY, 5e-324] {
        let data =
            Data { labels: &labels, external_labels: &external, external_url: "http://x", value };
        let _ = t.expand(&data);
    }
}
