//! The fuzz harnesses' entry points (`skein_collector::fuzzing`) over the committed seed corpus
//! (`fuzz/corpus/<target>/`) and deterministic mutations of it: CI's stand-in for
//! `cargo fuzz run`, which needs an instrumented build of the whole collector (FUZZING.md).
//! `write_seed_corpus` (ignored) regenerates the seeds: `cargo test --workspace --test
//! integration fuzz_corpus::write_seed_corpus -- --ignored`.

use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use skein_collector::fuzzing;
use skein_collector::profile::pprof::pb;
use skein_collector::wal;

type Entry = fn(&[u8]);

const TARGETS: &[(&str, Entry)] = &[
    ("otlp_proto", fuzzing::otlp_proto),
    ("otlp_json", fuzzing::otlp_json),
    ("traceql", fuzzing::traceql),
    ("promql", fuzzing::promql),
    ("pprof", fuzzing::pprof),
    ("folded", fuzzing::folded),
    ("multipart", fuzzing::multipart),
    ("wal_record", fuzzing::wal_record),
    ("alert_template", fuzzing::alert_template),
];

/// Mutations per corpus file; with a handful of seeds per target, a few thousand runs each.
const MUTATIONS: u64 = 400;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// xorshift64*: small, seeded, the same runs on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// One to four edits of `seed`: bit flips, interesting bytes, truncation, duplicated or
/// removed ranges.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0x00, 0xff, 0x7f, 0x80, b'{', b'(', b'"', b'\n'][rng.below(8)];
            }
            2 => v.truncate(rng.below(v.len() + 1)),
            3 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + 1 + rng.below(64)).min(v.len());
                let piece = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, piece);
            }
            4 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = (a + 1 + rng.below(16)).min(v.len());
                v.drain(a..b);
            }
            _ => {
                let at = rng.below(v.len() + 1);
                v.insert(at, rng.next() as u8);
            }
        }
    }
    v
}

fn run_caught(entry: Entry, input: &[u8]) -> Result<(), String> {
    std::panic::catch_unwind(|| entry(input)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (target, _) in TARGETS {
        let seeds = files(&corpus_dir(target));
        assert!(seeds.len() >= 3, "{target}: {} seed files", seeds.len());
        let bytes: usize = seeds.iter().map(|(_, b)| b.len()).sum();
        assert!(bytes < 16 << 10, "{target}: the seed corpus is {bytes} bytes; keep it small");
    }
}

#[test]
fn entry_points_survive_the_corpus_and_its_mutations() {
    let mut failures = Vec::new();
    for (ti, (target, entry)) in TARGETS.iter().enumerate() {
        // fuzz/regressions/ holds open findings in other modules; once fixed they move here.
        let mut inputs = files(&corpus_dir(target));
        // The generator's seeds too, so a seed not yet written to the corpus is still run.
        inputs.extend(seeds().into_iter().filter(|(t, ..)| t == target).map(|(_, n, b)| (n, b)));
        let mut runs = 0u64;
        for (name, seed) in &inputs {
            if let Err(m) = run_caught(*entry, seed) {
                failures.push(format!("{target}/{name}: {m}"));
            }
            let mut rng = Rng(0x5eed ^ ((ti as u64) << 32) ^ name.len() as u64 ^ seed.len() as u64);
            for i in 0..MUTATIONS {
                let input = mutate(seed, &mut rng);
                runs += 1;
                if let Err(m) = run_caught(*entry, &input) {
                    failures.push(format!("{target}/{name} mutation {i} ({:02x?}): {m}", input));
                }
            }
        }
        eprintln!("{target}: {} inputs, {runs} mutations", inputs.len());
    }
    assert!(failures.is_empty(), "{} failing inputs:\n{}", failures.len(), failures.join("\n"));
}

// --- seed corpus -----------------------------------------------------------------------------

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn request(spans: Vec<Span>, service: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s(service)),
                    kv("deployment.environment", s("prod")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "seed".into(),
                    version: "1".into(),
                    attributes: vec![kv("scope.attr", any_value::Value::BoolValue(true))],
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn span(trace: u8, id: u8, parent: Option<u8>, name: &str) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            kv("http.route", s("/api/orders")),
            kv("http.status_code", any_value::Value::IntValue(500)),
            kv("ratio", any_value::Value::DoubleValue(0.5)),
        ],
        status: Some(Status { code: 2, message: "boom".into() }),
        ..Default::default()
    }
}

fn otlp_seeds() -> Vec<(&'static str, ExportTraceServiceRequest)> {
    let mut with_events = span(3, 1, None, "GET /x");
    with_events.events = vec![span::Event {
        time_unix_nano: 1_700_000_000_100_000_000,
        name: "exception".into(),
        attributes: vec![kv("exception.message", s("bad"))],
        dropped_attributes_count: 1,
    }];
    with_events.links = vec![span::Link {
        trace_id: vec![9; 16],
        span_id: vec![8; 8],
        trace_state: "k=v".into(),
        attributes: vec![kv("l", any_value::Value::BytesValue(vec![1, 2]))],
        ..Default::default()
    }];
    let mut nested = span(4, 1, None, "nested");
    nested.attributes.push(kv(
        "list",
        any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
            values: vec![
                AnyValue { value: Some(s("a")) },
                AnyValue { value: Some(any_value::Value::IntValue(1)) },
            ],
        }),
    ));
    vec![
        ("one-trace", request(vec![span(1, 1, None, "root"), span(1, 2, Some(1), "child")], "api")),
        ("events-and-links", request(vec![with_events], "shop")),
        ("nested-values", request(vec![nested], "db")),
        ("invalid-ids", request(vec![span(0, 1, None, "zero-trace"), span(2, 2, None, "ok")], "x")),
    ]
}

fn pprof_seed(gzip: bool) -> Vec<u8> {
    let strings: Vec<String> = [
        "",
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "main",
        "work",
        "leaf",
        "span_id",
        "0102030405060708",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let func = |id: u64, name: i64| pb::Function { id, name, ..Default::default() };
    let loc = |id: u64, f: u64| pb::Location {
        id,
        line: vec![pb::Line { function_id: f, line: 1, column: 0 }],
        ..Default::default()
    };
    let p = pb::Profile {
        sample_type: vec![
            pb::ValueType { r#type: 1, unit: 2 },
            pb::ValueType { r#type: 3, unit: 4 },
        ],
        sample: vec![
            pb::Sample {
                location_id: vec![3, 2, 1],
                value: vec![2, 20_000_000],
                label: vec![pb::Label { key: 8, str: 9, ..Default::default() }],
            },
            pb::Sample { location_id: vec![2, 1], value: vec![1, 10_000_000], label: vec![] },
            // An unsymbolised location: only its address.
            pb::Sample { location_id: vec![5], value: vec![1, 1], label: vec![] },
        ],
        location: vec![
            loc(1, 1),
            loc(2, 2),
            loc(3, 3),
            pb::Location { id: 5, address: 0x4000, ..Default::default() },
        ],
        function: vec![func(1, 5), func(2, 6), func(3, 7)],
        string_table: strings,
        period_type: Some(pb::ValueType { r#type: 3, unit: 4 }),
        period: 10_000_000,
        time_nanos: 1_700_000_000_000_000_000,
        ..Default::default()
    };
    let raw = p.encode_to_vec();
    if !gzip {
        return raw;
    }
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&raw).unwrap();
    enc.finish().unwrap()
}

fn multipart_seed(boundary: &str, config: bool) -> Vec<u8> {
    let mut out = format!("multipart/form-data; boundary={boundary}\n").into_bytes();
    out.extend(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).as_bytes());
    out.extend(pprof_seed(true));
    if config {
        out.extend(format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"sample_type_config\"\r\n\r\n{{\"cpu\":{{\"units\":\"nanoseconds\",\"display-name\":\"cpu_time\"}}}}"
        ).as_bytes());
    }
    out.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Raw mode (first byte even): a segment file as the writer leaves it, OTLP payloads inside.
fn wal_raw_seed(records: &[(u64, &str, Vec<u8>)], torn_tail: bool) -> Vec<u8> {
    let refs: Vec<(u64, &str, &[u8])> =
        records.iter().map(|(s, t, p)| (*s, *t, p.as_slice())).collect();
    let mut out = vec![0u8];
    out.extend(wal::encode_segment(refs.first().map_or(1, |r| r.0), &refs).unwrap());
    if torn_tail {
        out.extend(b"SKR1\x40\0\0\0");
    }
    out
}

/// Structured mode (first byte odd): records framed by the harness with valid checksums.
fn wal_structured_seed(
    first_seq: u64,
    records: &[(Option<u64>, &str, &[u8])],
    tail: &[u8],
) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend(first_seq.to_le_bytes());
    for (i, (seq, tenant, payload)) in records.iter().enumerate() {
        let last = i + 1 == records.len() && !tail.is_empty();
        out.push(u8::from(seq.is_some()) | if last { 2 } else { 0 });
        if let Some(seq) = seq {
            out.extend(seq.to_le_bytes());
        }
        out.push(tenant.len() as u8);
        out.extend(tenant.as_bytes());
        out.extend((payload.len() as u16).to_le_bytes());
        out.extend(*payload);
    }
    out.extend(tail);
    out
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add =
        |t: &'static str, name: &str, bytes: Vec<u8>| out.push((t, name.to_string(), bytes));
    for (name, req) in otlp_seeds() {
        add("otlp_proto", name, req.encode_to_vec());
        add("otlp_json", name, serde_json::to_vec(&req).unwrap());
    }
    add(
        "otlp_json",
        "hex-ids",
        br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a"}}]},"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"x","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{"key":"n","value":{"intValue":"7"}}]}]}]}]}"#.to_vec(),
    );
    for (name, q) in [
        (
            "and-or",
            r#"{ resource.service.name = "api" && span.http.status_code >= 500 } || { .a = 1 }"#,
        ),
        (
            "regex-duration",
            r#"({ .a = 1 } || { .b = 2 }) && { name =~ "GET .*" && duration > 1.5s }"#,
        ),
        (
            "status-kind-not",
            r#"{ status = error } && { kind = server && !(.http.route = "/health") }"#,
        ),
        (
            "trace-level",
            r#"{ rootServiceName = "api" && traceDuration > 2s && span.http.route != nil }"#,
        ),
        ("metrics-rate", r#"{ status = error } | rate() by(resource.service.name)"#),
        (
            "metrics-quantile",
            r#"{ } | quantile_over_time(duration, 0.5, 0.99) by(span.http.route)"#,
        ),
        ("literals", r#"{ .f = 1.5 && .b = true && .s !~ "x|y" && .i <= -3 && kind = client }"#),
    ] {
        add("traceql", name, q.as_bytes().to_vec());
    }
    for (name, q) in [
        ("rate-sum", "sum by (service) (rate(traces_spanmetrics_calls_total[1m]))"),
        (
            "error-ratio",
            r#"sum(rate(traces_spanmetrics_calls_total{status_code="STATUS_CODE_ERROR"}[5m])) by (service) / sum(rate(traces_spanmetrics_calls_total[5m])) by (service)"#,
        ),
        (
            "quantile",
            "histogram_quantile(0.9, sum by (le) (rate(traces_spanmetrics_latency_bucket[5m])))",
        ),
        ("topk-offset", "topk(1, increase(traces_spanmetrics_calls_total[2m] offset 1m)) > bool 3"),
        (
            "regex-matchers",
            r#"count({__name__=~"traces_.*", service!~"b"}) + scalar(vector(2)) * 1e3"#,
        ),
        (
            "at-and-functions",
            "abs(clamp_max(delta(traces_service_graph_request_total[5m] @ 300), 10)) or on() vector(time())",
        ),
    ] {
        add("promql", name, q.as_bytes().to_vec());
    }
    add("pprof", "cpu-plain", pprof_seed(false));
    add("pprof", "cpu-gzip", pprof_seed(true));
    add("pprof", "empty", Vec::new());
    add("folded", "stacks", b"main;work;leaf 3\nmain;idle 1\n".to_vec());
    add("folded", "crlf-spaces", b"main;GET /a b 2\r\nmain;work 10\r\n\r\n".to_vec());
    add("folded", "lines", b"a;b;c\na;b\na\n".to_vec());
    add("multipart", "profile", multipart_seed("abc123", false));
    add("multipart", "with-config", multipart_seed("----WebKitFormBoundary7MA4YWxkTrZu0gW", true));
    add("multipart", "quoted-boundary", {
        let mut m = multipart_seed("q\"x", false);
        let nl = m.iter().position(|b| *b == b'\n').unwrap();
        m.splice(..nl, b"multipart/form-data; charset=utf-8; boundary=\"q\"x\"".iter().copied());
        m
    });
    let payloads: Vec<Vec<u8>> = otlp_seeds().into_iter().map(|(_, r)| r.encode_to_vec()).collect();
    add(
        "wal_record",
        "segment",
        wal_raw_seed(&[(1, "t", payloads[0].clone()), (2, "u", payloads[1].clone())], false),
    );
    add("wal_record", "torn-tail", wal_raw_seed(&[(5, "t", payloads[0].clone())], true));
    add("wal_record", "empty-segment", wal_raw_seed(&[], false));
    add(
        "wal_record",
        "structured",
        wal_structured_seed(
            7,
            &[(None, "t", &payloads[0]), (None, "t", &payloads[0]), (None, "", b"junk")],
            b"",
        ),
    );
    add(
        "wal_record",
        "structured-gap-and-tail",
        wal_structured_seed(1, &[(None, "a", b"x"), (Some(9), "b", b"y")], b"SKR1garbage"),
    );
    for (name, t) in [
        ("labels-value", "{{ $labels.service }} is at {{ $value | humanize }}"),
        ("printf", r#"{{ printf "%.2f%% of %s" $value $labels.span_name }}"#),
        (
            "durations",
            "{{ $value | humanizeDuration }} / {{ $value | humanizePercentage }} / {{ humanize1024 $value }}",
        ),
        (
            "trim-and-comment",
            "a {{- /* note */ -}} b {{ .Labels.le | toUpper }} {{ $externalLabels.cluster | title }} {{ $externalURL }}",
        ),
    ] {
        add("alert_template", name, t.as_bytes().to_vec());
    }
    out
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand when the seeds change"]
fn write_seed_corpus() {
    for (target, name, bytes) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn the_committed_corpus_is_what_the_generator_writes() {
    for (target, name, bytes) in seeds() {
        // gzip output may differ between flate2 backends; those seeds are only checked to exist.
        let path = corpus_dir(target).join(&name);
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if !name.contains("gzip") && target != "multipart" {
            assert_eq!(committed, bytes, "{target}/{name} is stale: run write_seed_corpus");
        }
    }
}
