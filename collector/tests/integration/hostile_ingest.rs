//! Hostile OTLP clients: decode amplification (bodies of empty spans or attributes, in
//! protobuf, JSON and gzip, over HTTP and gRPC), per-tenant rates, the tenant cap, span-metric
//! series growth and client-chosen label values on `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic_types::StatusExt;

use crate::common::*;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn varint(mut v: usize, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field `number` holding `payload`.
fn field(number: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2];
    varint(payload.len(), &mut out);
    out.extend_from_slice(payload);
    out
}

/// An ExportTraceServiceRequest of one resource, one scope and `spans` (encoded spans).
fn wire_request(spans: &[u8]) -> Vec<u8> {
    field(1, &field(2, spans))
}

/// Just under 16 MiB of empty spans, two bytes each (~8 M spans; several GB decoded).
fn empty_span_bomb() -> Vec<u8> {
    let n = ((16 << 20) - 64) / 2;
    wire_request(&[0x12, 0x00].repeat(n))
}

/// One span with ~8 M empty attributes: a single span, but ~0.6 GB decoded.
fn empty_attribute_bomb() -> Vec<u8> {
    let n = ((16 << 20) - 64) / 2;
    wire_request(&field(2, &[0x4a, 0x00].repeat(n)))
}

/// Just under 16 MiB of `{}` spans in OTLP/JSON.
fn json_span_bomb() -> Vec<u8> {
    let mut body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":["#.to_vec();
    let n = ((16 << 20) - 64) / 3;
    body.extend_from_slice(&b"{},".repeat(n));
    body.extend_from_slice(b"{}]}]}]}");
    body
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

async fn post(
    c: &Collector,
    ct: &str,
    gz: bool,
    tenant: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.otlp_http()))
        .header("content-type", ct);
    if gz {
        r = r.header("content-encoding", "gzip");
    }
    if let Some(t) = tenant {
        r = r.header("x-scope-orgid", t);
    }
    r.body(if gz { gzip(&body) } else { body }).send().await.unwrap()
}

/// Sends raw message bytes to Export, as a hostile client would (no prost on our side).
#[derive(Clone, Copy, Default)]
struct RawClientCodec;
struct RawEncoder;
struct ResponseDecoder;

impl Codec for RawClientCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut DecodeBuf<'_>,
    ) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

async fn grpc_raw(
    c: &Collector,
    body: Vec<u8>,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::new(c.grpc()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).send_compressed(CompressionEncoding::Gzip);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(EXPORT);
    grpc.unary(tonic::Request::new(body), path, RawClientCodec).await.map(|r| r.into_inner())
}

async fn metrics_text(c: &Collector) -> String {
    reqwest::get(format!("{}/metrics", c.http())).await.unwrap().text().await.unwrap()
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn amplification_bombs_are_refused_by_the_scan_before_decoding() {
    let c = Collector::start(|_| {}).await;
    let before = peak_rss();
    let started = Instant::now();

    let r = post(&c, "application/x-protobuf", true, None, empty_span_bomb()).await;
    assert_eq!(r.status(), 413);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("more than 100000 spans (--max-spans-per-request)"), "{msg}");

    let r = post(&c, "application/json", true, None, json_span_bomb()).await;
    assert_eq!(r.status(), 413);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("--max-spans-per-request"), "{msg}");

    let r = post(&c, "application/x-protobuf", false, None, empty_attribute_bomb()).await;
    assert_eq!(r.status(), 413);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("--max-decoded-bytes"), "{msg}");

    let err = grpc_raw(&c, empty_span_bomb()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-spans-per-request"), "{err:?}");
    let err = grpc_raw(&c, empty_attribute_bomb()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--max-decoded-bytes"), "{err:?}");
    // Truncated wire is a client error, found by the scan too.
    let mut cut = wire_request(&[0x12, 0x00].repeat(10));
    cut.truncate(cut.len() - 1);
    let err = grpc_raw(&c, cut).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let elapsed = started.elapsed();
    let grown = peak_rss().saturating_sub(before);
    eprintln!("five 16 MiB bombs refused in {elapsed:?}; peak RSS grew {} MiB", grown >> 20);
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");

    let text = metrics_text(&c).await;
    assert_eq!(sample(&text, "skein_exports_limited_total{reason=\"spans_per_request\"}"), 3.0);
    assert_eq!(sample(&text, "skein_exports_limited_total{reason=\"decoded_bytes\"}"), 2.0);

    // An ordinary export still goes through, over both protocols.
    let ok = request(vec![trace(1, "shop", "GET /", now_nanos(), 5, 3, false)]);
    let r = post(&c, "application/x-protobuf", true, None, ok.encode_to_vec()).await;
    assert_eq!(r.status(), 200);
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    client
        .export(request(vec![trace(2, "shop", "GET /", now_nanos(), 5, 3, false)]))
        .await
        .unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_then_recovers() {
    // 100 spans/s, so a burst of 200.
    let c = Collector::start(|a| a.max_spans_per_second_per_tenant = Some(100)).await;
    let body = |n| request(vec![trace(n, "shop", "GET /", now_nanos(), 5, 149, false)]);
    let r = post(&c, "application/x-protobuf", false, Some("fast"), body(10).encode_to_vec()).await;
    assert_eq!(r.status(), 200);
    let r = post(&c, "application/x-protobuf", false, Some("fast"), body(11).encode_to_vec()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let mut req = tonic::Request::new(body(12));
    req.metadata_mut().insert("x-scope-orgid", "fast".parse().unwrap());
    let err = client.export(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "{err:?}");
    // Nothing of the refused exports was stored.
    for n in [11, 12] {
        assert!(c.r().engine.trace_by_id("fast", id16(&trace_id(n)), None).await.is_err());
    }
    // Another tenant has its own bucket.
    let r = post(&c, "application/x-protobuf", false, Some("calm"), body(13).encode_to_vec()).await;
    assert_eq!(r.status(), 200);
    // The bucket refills: the retried export is accepted within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r =
            post(&c, "application/x-protobuf", false, Some("fast"), body(11).encode_to_vec()).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < deadline, "the rate limit never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics_text(&c).await;
    assert!(sample(&text, "skein_exports_limited_total{reason=\"rate\"}") >= 2.0, "{text}");
    c.stop().await;
}

#[tokio::test]
async fn a_new_tenant_beyond_the_cap_is_forbidden() {
    let c = Collector::start(|a| a.max_tenants = Some(2)).await;
    let body =
        |n| request(vec![trace(n, "shop", "GET /", now_nanos(), 5, 0, false)]).encode_to_vec();
    for (n, t) in [(20, "a"), (21, "b")] {
        assert_eq!(post(&c, "application/x-protobuf", false, Some(t), body(n)).await.status(), 200);
    }
    let r = post(&c, "application/x-protobuf", false, Some("c"), body(22)).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("--max-tenants"));
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let mut req =
        tonic::Request::new(request(vec![trace(23, "shop", "GET /", now_nanos(), 5, 0, false)]));
    req.metadata_mut().insert("x-scope-orgid", "d".parse().unwrap());
    assert_eq!(client.export(req).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    // Known tenants go on.
    assert_eq!(post(&c, "application/x-protobuf", false, Some("a"), body(24)).await.status(), 200);
    let text = metrics_text(&c).await;
    assert_eq!(sample(&text, "skein_exports_limited_total{reason=\"tenants\"}"), 2.0);
    c.stop().await;
}

#[tokio::test]
async fn span_metric_series_are_capped_then_evicted_when_idle() {
    use skein_collector::span_metrics::EVICT_MS;
    // Room for exactly 5 span names' worth of series (calls + 14-bucket histogram each); the
    // root spans also leave pending service-graph edges, which hold no series until complete.
    const PER_NAME: usize = 18;
    let c = Collector::start(|a| {
        a.max_span_metric_series = Some(5 * PER_NAME);
        // Root spans wait for a client side that never comes; keep them waiting so that no
        // edge completes during the test.
        a.servicegraph_wait = Some("1h".into());
    })
    .await;
    let rs: Vec<_> = (0..40)
        .map(|n| trace(300 + n, "shop", &format!("GET /order/{n}"), now_nanos(), 5, 0, false))
        .collect();
    let r = post(&c, "application/x-protobuf", false, None, request(rs).encode_to_vec()).await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.r().span_metrics.stats().dropped_series < 35 {
        assert!(Instant::now() < deadline, "{:?}", c.r().span_metrics.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = c.r().span_metrics.stats();
    assert_eq!((stats.live_series, stats.dropped_series), (5 * PER_NAME, 35));
    let text = metrics_text(&c).await;
    assert_eq!(sample(&text, "skein_span_metric_series_dropped_total"), 35.0);
    let exposition = reqwest::get(format!("{}/prometheus/metrics", c.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = exposition.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    assert!(series <= 5 * PER_NAME, "{series} series exposed");

    // Idle for the eviction period: the series go, and new names fit again.
    c.r().span_metrics.tick(skein_collector::promql::now_ms() + EVICT_MS + 1000);
    assert_eq!(c.r().span_metrics.stats().live_series, 0);
    let rs = vec![trace(400, "shop", "GET /new", now_nanos(), 5, 0, false)];
    let r = post(&c, "application/x-protobuf", false, None, request(rs).encode_to_vec()).await;
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.r().span_metrics.stats().live_series != PER_NAME {
        assert!(Instant::now() < deadline, "{:?}", c.r().span_metrics.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.r().span_metrics.stats().dropped_series, 35);
    c.stop().await;
}

#[tokio::test]
async fn client_chosen_tenants_on_metrics_are_bounded() {
    use skein_collector::telemetry::{MAX_CLIENT_LABEL_SETS, OTHER};
    let c = Collector::start(|_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/traces", c.otlp_http());
    // Malformed bodies are counted per tenant before any tenant limit applies.
    let n = MAX_CLIENT_LABEL_SETS + 100;
    let mut sent = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let futs = chunk.iter().map(|i| {
            http.post(&url)
                .header("content-type", "application/x-protobuf")
                .header("x-scope-orgid", format!("tenant-{i}"))
                .body(vec![0xff, 0xff])
                .send()
        });
        for r in futures::future::join_all(futs).await {
            assert_eq!(r.unwrap().status(), 400);
            sent += 1;
        }
    }
    assert_eq!(sent, n);
    let text = metrics_text(&c).await;
    let lines = text.lines().filter(|l| l.starts_with("skein_spans_rejected_total{")).count();
    assert!(lines <= MAX_CLIENT_LABEL_SETS + 1, "{lines} series");
    let other = format!("skein_spans_rejected_total{{reason=\"malformed\",tenant=\"{OTHER}\"}}");
    assert_eq!(sample(&text, &other), 100.0, "{text}");
    c.stop().await;
}
