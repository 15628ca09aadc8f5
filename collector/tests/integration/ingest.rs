//! OTLP ingest over real gRPC and HTTP clients: acknowledgements, partial success, limits,
//! back-pressure and tenants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic_types::StatusExt;

const TENANT: &str = "single-tenant";

#[tokio::test]
async fn grpc_gzip_export_is_acknowledged_and_readable_by_id() {
    let c = Collector::start(|_| {}).await;
    let mut client = TraceServiceClient::connect(c.grpc())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let resp = client
        .export(request(vec![trace(1, "shop", "GET /", now_nanos(), 5, 3, false)]))
        .await
        .unwrap();
    assert!(resp.into_inner().partial_success.is_none());
    let data = c.r().engine.trace_by_id(TENANT, id16(&trace_id(1)), None).await.unwrap();
    assert_eq!(span_ids(&data).len(), 4);
    c.stop().await;
}

#[tokio::test]
async fn invalid_span_ids_are_rejected_individually_via_partial_success() {
    let c = Collector::start(|_| {}).await;
    let mut rs = trace(2, "shop", "GET /", now_nanos(), 5, 2, false);
    rs.scope_spans[0].spans[1].span_id = vec![0; 8];
    rs.scope_spans[0].spans[2].trace_id = vec![1; 15];
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let resp = client.export(request(vec![rs])).await.unwrap().into_inner();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(partial.error_message.contains("rejected"), "{}", partial.error_message);
    let data = c.r().engine.trace_by_id(TENANT, id16(&trace_id(2)), None).await.unwrap();
    assert_eq!(span_ids(&data), vec![span_id(2, 0)]);
    c.stop().await;
}

#[tokio::test]
async fn grpc_oversize_and_gzip_bomb_are_resource_exhausted() {
    let c = Collector::start(|a| a.max_body_bytes = Some(64 * 1024)).await;
    let mut big = trace(3, "shop", "GET /", now_nanos(), 5, 1, false);
    big.scope_spans[0].spans[0].attributes.push(s("blob", &"x".repeat(200 * 1024)));
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let err = client.export(request(vec![big.clone()])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // Highly compressible: small on the wire, larger than the limit once inflated.
    let mut gz = TraceServiceClient::connect(c.grpc())
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip);
    let err = gz.export(request(vec![big])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(c.r().engine.trace_by_id(TENANT, id16(&trace_id(3)), None).await.is_err());
    c.stop().await;
}

#[tokio::test]
async fn invalid_tenant_header_is_invalid_argument() {
    let c = Collector::start(|_| {}).await;
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let mut req =
        tonic::Request::new(request(vec![trace(4, "shop", "GET /", now_nanos(), 5, 0, false)]));
    req.metadata_mut().insert("x-scope-orgid", "../etc".parse().unwrap());
    let err = client.export(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    c.stop().await;
}

#[tokio::test]
async fn full_write_path_answers_unavailable_with_retry_info_and_429() {
    // One byte of in-flight budget: concurrent exports beyond the first are refused.
    let c = Collector::start(|a| a.max_inflight_bytes = Some(1)).await;
    let client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..200u64 {
        let mut cl = client.clone();
        tasks.push(tokio::spawn(async move {
            cl.export(request(vec![trace(100 + n, "shop", "GET /", now_nanos(), 5, 5, false)]))
                .await
        }));
    }
    let mut refused = 0;
    for t in tasks {
        if let Err(status) = t.await.unwrap() {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            let retry = status.get_details_retry_info().expect("RetryInfo detail");
            assert!(retry.retry_delay.is_some());
            refused += 1;
        }
    }
    assert!(refused > 0, "no export was refused");

    let body = request(vec![trace(900, "shop", "GET /", now_nanos(), 5, 5, false)]).encode_to_vec();
    let http = reqwest::Client::new();
    let mut saw_429 = false;
    let mut futs = Vec::new();
    for _ in 0..100 {
        futs.push(
            http.post(format!("{}/v1/traces", c.otlp_http()))
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send(),
        );
    }
    for r in futures::future::join_all(futs).await {
        let r = r.unwrap();
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            saw_429 = true;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(saw_429, "no HTTP export was refused");
    c.stop().await;
}

#[tokio::test]
async fn http_protobuf_json_and_errors() {
    let c = Collector::start(|a| a.max_body_bytes = Some(64 * 1024)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/traces", c.otlp_http());

    let body = request(vec![trace(5, "shop", "GET /", now_nanos(), 5, 1, false)]).encode_to_vec();
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let resp = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert!(resp.partial_success.is_none());

    let json =
        serde_json::to_vec(&request(vec![trace(6, "shop", "GET /", now_nanos(), 5, 1, false)]))
            .unwrap();
    let r =
        http.post(&url).header("content-type", "application/json").body(json).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");

    for (ct, body) in [
        ("application/x-protobuf", vec![0xff, 0xff, 0xff]),
        ("application/json", b"{nope".to_vec()),
    ] {
        let r = http.post(&url).header("content-type", ct).body(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{ct}");
        assert!(!r.text().await.unwrap().is_empty());
    }
    let big = vec![b' '; 100 * 1024];
    let r =
        http.post(&url).header("content-type", "application/json").body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);

    let data5 = c.r().engine.trace_by_id(TENANT, id16(&trace_id(5)), None).await.unwrap();
    let data6 = c.r().engine.trace_by_id(TENANT, id16(&trace_id(6)), None).await.unwrap();
    assert_eq!(span_ids(&data5).len() + span_ids(&data6).len(), 4);
    c.stop().await;
}

/// The value of `key` on the first span of `data`, as a string.
fn string_attr(data: &opentelemetry_proto::tonic::trace::v1::TracesData, key: &str) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let span = &data.resource_spans[0].scope_spans[0].spans[0];
    match span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()) {
        Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(Value::StringValue(v)),
        }) => v,
        other => panic!("{key}: {other:?}"),
    }
}

async fn metric(c: &Collector, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", c.http())).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test]
async fn exports_with_huge_attributes_keep_being_acked_cut_and_survive_a_restart() {
    // The poison pill: exports of one span with an attribute as large as the body limit
    // allows used to overflow the head's string column, and kill the applier, after ~130.
    const PILLS: u64 = 130;
    let mut c = Collector::start(|_| {}).await;
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    let huge = "é".repeat(((16 << 20) - 1024) / 2);
    for n in 0..PILLS {
        let mut rs = trace(7000 + n, "shop", "GET /", now_nanos(), 5, 0, false);
        rs.scope_spans[0].spans[0].attributes.push(s("blob", &huge));
        client.export(request(vec![rs])).await.unwrap();
        // Other exports are acknowledged in between, as ever.
        client
            .export(request(vec![trace(8000 + n, "shop", "GET /", now_nanos(), 5, 1, false)]))
            .await
            .unwrap();
    }
    assert_eq!(metric(&c, "skein_attributes_truncated_total").await, PILLS as f64);
    for n in [0, PILLS - 1] {
        let data = c.r().engine.trace_by_id(TENANT, id16(&trace_id(7000 + n)), None).await.unwrap();
        let blob = string_attr(&data, "blob");
        assert_eq!(blob.len(), 65536, "cut to the limit, at a character boundary");
        assert!(huge.starts_with(&blob));
    }

    // A request whose scope attributes would repeat on thousands of spans is refused whole, as
    // a client error, before it reaches the WAL.
    let mut bomb = trace(9000, "shop", "GET /", now_nanos(), 5, 0, false);
    let template = bomb.scope_spans[0].spans[0].clone();
    bomb.scope_spans[0].spans = (0..5000u64)
        .map(|i| {
            let mut sp = template.clone();
            sp.span_id = span_id(9000, i);
            sp
        })
        .collect();
    bomb.scope_spans[0]
        .scope
        .get_or_insert_default()
        .attributes
        .push(s("big", &"b".repeat(60_000)));
    let err = client.export(request(vec![bomb.clone()])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("limit"), "{err:?}");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.otlp_http()))
        .header("content-type", "application/x-protobuf")
        .body(request(vec![bomb]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("limit"));
    assert!(c.r().engine.trace_by_id(TENANT, id16(&trace_id(9000)), None).await.is_err());

    // Replay applies every record again (cutting them again) and the collector comes up.
    c.restart().await;
    let mut client = TraceServiceClient::connect(c.grpc()).await.unwrap();
    client
        .export(request(vec![trace(9001, "shop", "GET /", now_nanos(), 5, 0, false)]))
        .await
        .unwrap();
    for id in [7000, 7000 + PILLS - 1, 8000, 9001] {
        let data = c.r().engine.trace_by_id(TENANT, id16(&trace_id(id)), None).await.unwrap();
        assert!(!span_ids(&data).is_empty(), "trace {id}");
    }
    let data = c.r().engine.trace_by_id(TENANT, id16(&trace_id(7000)), None).await.unwrap();
    assert_eq!(string_attr(&data, "blob").len(), 65536);
    c.stop().await;
}
