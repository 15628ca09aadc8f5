//! Shared by the TLS test binaries: certificates made in the test (rcgen), and a collector
//! stand-in on 127.0.0.1 speaking TLS (optionally requiring client certificates) that serves
//! OTLP/gRPC, OTLP/HTTP `/v1/traces` and `/ingest` on one port and records every request's
//! headers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

/// A CA, a server certificate for `localhost`/127.0.0.1 and a client certificate signed by
/// it, and an unrelated CA; PEM files in a temporary directory.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A key that is not the client certificate's.
    pub wrong_key: PathBuf,
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let pem = p.self_signed(&key).unwrap().pem();
    (p, key, pem)
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![usage];
    (p.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_params, ca_key, ca_pem) = ca("skein test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let (server_cert_pem, server_key_pem) =
            leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        let (client_cert_pem, client_key_pem) =
            leaf(&["test-client"], ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        let (_, _, other_pem) = ca("some other CA");
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            other_ca: write("other-ca.pem", &other_pem),
            client_cert: write("client.pem", &client_cert_pem),
            client_key: write("client-key.pem", &client_key_pem),
            wrong_key: write("wrong-key.pem", &KeyPair::generate().unwrap().serialize_pem()),
            ca_pem,
            server_cert_pem,
            server_key_pem,
            _dir: dir,
        }
    }

    fn server_config(&self, require_client_cert: bool) -> ServerConfig {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).unwrap();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder.with_single_cert(chain, key).unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    }
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Default)]
pub struct Recorded {
    pub requests: Arc<Mutex<Vec<Seen>>>,
    pub spans: Arc<AtomicU64>,
    /// TLS handshakes the server refused (no or untrusted client certificate, …).
    pub failed_handshakes: Arc<AtomicU64>,
}

impl Recorded {
    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }

    /// Polls until `f` holds (or panics after `within`).
    pub fn wait_for(&self, within: Duration, what: &str, f: impl Fn(&Recorded) -> bool) {
        let deadline = Instant::now() + within;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: {:?}",
                self.requests.lock().unwrap().iter().map(|s| &s.path).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone)]
struct Sink(Recorded);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.spans.fetch_add(span_count(&req.into_inner()), Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn span_count(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len() as u64).sum()
}

async fn record(State(r): State<Recorded>, req: Request, next: Next) -> Response {
    let seen = Seen { path: req.uri().path().to_string(), headers: req.headers().clone() };
    r.requests.lock().unwrap().push(seen);
    next.run(req).await
}

async fn http_traces(State(r): State<Recorded>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    r.spans.fetch_add(span_count(&req), Ordering::Relaxed);
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// Starts the stand-in on its own thread; `require_client_cert`: mTLS against the test CA.
pub fn start_tls_server(pki: &Pki, require_client_cert: bool) -> (SocketAddr, Recorded) {
    let recorded = Recorded::default();
    let state = recorded.clone();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(require_client_cert)));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let http = axum::Router::new()
                .route("/v1/traces", axum::routing::post(http_traces))
                .route("/ingest", axum::routing::post(|| async { "ok" }))
                .with_state(state.clone());
            let app = tonic::service::Routes::new(TraceServiceServer::new(Sink(state.clone())))
                .into_axum_router()
                .merge(http)
                .layer(axum::middleware::from_fn_with_state(state.clone(), record));
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let Ok((tcp, _)) = l.accept().await else { continue };
                let (acceptor, app, state) = (acceptor.clone(), app.clone(), state.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            state.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
    });
    (rx.recv().unwrap(), recorded)
}
