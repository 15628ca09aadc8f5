//! Shared helpers: an in-process collector on free ports and OTLP request builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use skein_collector::config::{Config, ServeArgs};
use skein_collector::serve::{self, Running};

pub struct Collector {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub cfg: Config,
}

pub fn config(dir: &std::path::Path, extra: impl FnOnce(&mut ServeArgs)) -> Config {
    let mut args = ServeArgs {
        data_dir: Some(dir.to_path_buf()),
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        http_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    extra(&mut args);
    args.resolve().unwrap()
}

impl Collector {
    pub async fn start(extra: impl FnOnce(&mut ServeArgs)) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), extra);
        let running = serve::start(&cfg).await.unwrap();
        Collector { running: Some(running), dir, cfg }
    }

    pub fn r(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        self.running = Some(serve::start(&self.cfg).await.unwrap());
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.r().http_addr)
    }

    pub fn otlp_http(&self) -> String {
        format!("http://{}", self.r().otlp_http_addr)
    }

    pub fn grpc(&self) -> String {
        format!("http://{}", self.r().otlp_grpc_addr)
    }

    /// Waits until `tenant` has no spans left in the head (all flushed into blocks).
    pub async fn wait_flushed(&self, tenant: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let flushed = self.r().engine.head.snapshot(tenant).unwrap().is_empty()
                && !self.r().engine.store.blocks(tenant).is_empty();
            if flushed {
                return;
            }
            assert!(Instant::now() < deadline, "head of {tenant} was not flushed in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

pub fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

pub fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

pub fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

pub fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

pub fn trace_id(n: u64) -> Vec<u8> {
    let mut id = vec![0xab; 8];
    id.extend_from_slice(&n.to_be_bytes());
    id
}

pub fn span_id(trace: u64, n: u64) -> Vec<u8> {
    ((trace << 16) | (n + 1)).to_be_bytes().to_vec()
}

/// One trace: a SERVER root of `service` and `children` CLIENT children, root lasting
/// `root_ms` ms starting at `start`. Child 0 fails when `error`.
pub fn trace(
    n: u64,
    service: &str,
    root_name: &str,
    start: u64,
    root_ms: u64,
    children: u64,
    error: bool,
) -> ResourceSpans {
    let tid = trace_id(n);
    let mut spans = vec![Span {
        trace_id: tid.clone(),
        span_id: span_id(n, 0),
        name: root_name.into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: start + root_ms * 1_000_000,
        attributes: vec![s("http.route", root_name), i("http.response.status_code", 200)],
        ..Default::default()
    }];
    for c in 0..children {
        spans.push(Span {
            trace_id: tid.clone(),
            span_id: span_id(n, c + 1),
            parent_span_id: span_id(n, 0),
            name: format!("child-{c}"),
            kind: 3,
            start_time_unix_nano: start + 1_000_000,
            end_time_unix_nano: start + 2_000_000,
            attributes: vec![i("attempt", c as i64)],
            status: (error && c == 0).then(|| Status { code: 2, message: "failed".into() }),
            ..Default::default()
        });
    }
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![s("service.name", service), s("host.name", "h1")],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "test".into(),
                version: "1".into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn request(rs: Vec<ResourceSpans>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest { resource_spans: rs }
}

/// Span ids of a stored trace, sorted, with multiplicity.
pub fn span_ids(data: &opentelemetry_proto::tonic::trace::v1::TracesData) -> Vec<Vec<u8>> {
    let mut ids: Vec<Vec<u8>> = data
        .resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter())
        .map(|s| s.span_id.clone())
        .collect();
    ids.sort();
    ids
}

pub fn id16(v: &[u8]) -> [u8; 16] {
    v.try_into().unwrap()
}

/// An empty store in `dir` and an empty head, both with `http.route` as a dedicated span
/// column: the parts of a query-engine fixture.
pub async fn store_and_head(
    dir: &std::path::Path,
) -> (
    std::sync::Arc<skein_collector::store::Store>,
    std::sync::Arc<skein_collector::head::SpanHead>,
    std::sync::Arc<skein_collector::telemetry::Telemetry>,
) {
    use skein_collector::spanrows::DedicatedColumns;
    use skein_collector::store::{Store, open_object_store};
    use std::sync::Arc;
    let cfg = config(dir, |_| {});
    let metrics = Arc::new(skein_collector::telemetry::Telemetry::new());
    let dedicated = DedicatedColumns { span: vec!["http.route".into()], resource: vec![] };
    let store = Arc::new(
        Store::open(
            open_object_store(&cfg.store.url, &metrics).unwrap(),
            dedicated.clone(),
            metrics.clone(),
        )
        .await
        .unwrap(),
    );
    (store, Arc::new(skein_collector::head::SpanHead::new(dedicated)), metrics)
}
