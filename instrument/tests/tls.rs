//! Span exports over https with the `OTEL_EXPORTER_OTLP_*` TLS and header variables, against a
//! real TLS server: one export request per case through the transport the export thread uses
//! (configuration from a lookup function, never the process environment).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tls_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use skein_instrument::Config;
use skein_instrument::export::{ExportError, export_once};
use tls_support::{GRPC_EXPORT, Pki, Recorded, start_tls_server};

struct Servers {
    pki: Pki,
    /// Server certificate only.
    tls: (SocketAddr, Recorded),
    /// Also requires a client certificate signed by the test CA.
    mtls: (SocketAddr, Recorded),
}

fn servers() -> &'static Servers {
    static S: OnceLock<Servers> = OnceLock::new();
    S.get_or_init(|| {
        let pki = Pki::new();
        let tls = start_tls_server(&pki, false);
        let mtls = start_tls_server(&pki, true);
        Servers { pki, tls, mtls }
    })
}

fn config(vars: &[(&str, &str)]) -> Config {
    let m: HashMap<String, String> =
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|k| m.get(k).cloned()).unwrap()
}

fn one_span(name: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![OtlpSpan {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: name.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn export(vars: &[(&str, &str)]) -> Result<Result<(), String>, ExportError> {
    let cfg = config(vars);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(export_once(&cfg, one_span("s")))
}

/// The path of an export over `protocol` and its endpoint variable's value for `addr`.
fn endpoint(protocol: &str, addr: SocketAddr) -> (&'static str, String) {
    match protocol {
        "grpc" => (GRPC_EXPORT, format!("https://127.0.0.1:{}", addr.port())),
        _ => ("/v1/traces", format!("https://localhost:{}", addr.port())),
    }
}

#[test]
fn exports_over_https_with_the_configured_ca_carry_the_configured_headers() {
    let s = servers();
    let ca = s.pki.ca.to_str().unwrap();
    for protocol in ["grpc", "http/protobuf"] {
        let (addr, rec) = &s.tls;
        let (path, url) = endpoint(protocol, *addr);
        let before = rec.requests_to(path).len();
        let spans = rec.spans.load(Ordering::Relaxed);
        let sent = export(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Bearer%20general, x-scope-orgid = team-a ,x-general=1",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer%20traces-token"),
        ]);
        assert!(matches!(sent, Ok(Ok(()))), "{protocol}: {sent:?}");
        let seen = rec.requests_to(path);
        assert_eq!(seen.len(), before + 1, "{protocol}");
        let last = seen.last().unwrap();
        // The traces-specific variable wins for its key; the general ones still apply.
        assert_eq!(last.header("authorization"), Some("Bearer traces-token"), "{protocol}");
        assert_eq!(last.header("x-scope-orgid"), Some("team-a"), "{protocol}");
        assert_eq!(last.header("x-general"), Some("1"), "{protocol}");
        assert_eq!(rec.spans.load(Ordering::Relaxed), spans + 1, "{protocol}");
    }
}

#[test]
fn without_the_ca_the_export_fails_and_reaches_no_handler() {
    let s = servers();
    let (addr, rec) = &s.tls;
    for protocol in ["grpc", "http/protobuf"] {
        let (path, url) = endpoint(protocol, *addr);
        let before = rec.requests_to(path).len();
        // Trusting another CA: the server's certificate is refused.
        let sent = export(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", s.pki.other_ca.to_str().unwrap()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret"),
        ]);
        match &sent {
            Ok(Err(e)) => assert!(!e.contains("s3cret"), "{e}"),
            other => panic!("{protocol} with another CA: {other:?}"),
        }
        // No CA configured: the system roots do not hold the test CA (or there are none,
        // which is an error at once).
        let sent = export(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
        ]);
        assert!(!matches!(sent, Ok(Ok(()))), "{protocol} without a CA: {sent:?}");
        assert_eq!(rec.requests_to(path).len(), before, "{protocol}: a request got through");
    }
    let http_err = export(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint("http", *addr).1),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", s.pki.other_ca.to_str().unwrap()),
    ]);
    // The reason is in the error the drop warning reports.
    assert!(format!("{http_err:?}").contains("certificate"), "{http_err:?}");
}

#[test]
fn a_server_requiring_client_certificates_accepts_only_exports_that_present_one() {
    let s = servers();
    let (addr, rec) = &s.mtls;
    let ca = s.pki.ca.to_str().unwrap();
    let (cert, key) = (s.pki.client_cert.to_str().unwrap(), s.pki.client_key.to_str().unwrap());
    for protocol in ["grpc", "http/protobuf"] {
        let (path, url) = endpoint(protocol, *addr);
        let refused = rec.failed_handshakes.load(Ordering::Relaxed);
        let before = rec.requests_to(path).len();
        let base = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t"),
        ];
        let sent = export(&base);
        assert!(matches!(sent, Ok(Err(_))), "{protocol} without a client cert: {sent:?}");
        rec.wait_for(std::time::Duration::from_secs(5), "handshake refused", |r| {
            r.failed_handshakes.load(Ordering::Relaxed) > refused
        });
        assert_eq!(rec.requests_to(path).len(), before, "{protocol}");

        let general = [
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key),
        ];
        let traces_only = [
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", cert),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", key),
        ];
        for client in [general, traces_only] {
            let vars: Vec<(&str, &str)> = base.iter().chain(client.iter()).copied().collect();
            let sent = export(&vars);
            assert!(matches!(sent, Ok(Ok(()))), "{protocol} with {client:?}: {sent:?}");
        }
        let seen = rec.requests_to(path);
        assert_eq!(seen.len(), before + 2, "{protocol}");
        assert!(seen.iter().all(|r| r.header("authorization") == Some("Bearer t")));
    }
}

#[test]
fn unreadable_or_mismatched_certificate_files_fail_at_init_naming_the_file() {
    let s = servers();
    let (_, url) = endpoint("grpc", s.tls.0);
    let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str())];
    let init_error = |extra: &[(&str, &str)]| -> String {
        let vars: Vec<(&str, &str)> = base.iter().chain(extra.iter()).copied().collect();
        match export(&vars) {
            Err(e) => e.to_string(),
            other => panic!("expected an init error for {extra:?}: {other:?}"),
        }
    };
    let e = init_error(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]);
    assert!(e.contains("/nonexistent/ca.pem") && e.contains("CA certificate"), "{e}");
    let e = init_error(&[(
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        s.pki.client_key.to_str().unwrap(),
    )]);
    assert!(e.contains("client-key.pem") && e.contains("no PEM certificate"), "{e}");
    let e = init_error(&[
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", s.pki.client_cert.to_str().unwrap()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", s.pki.wrong_key.to_str().unwrap()),
    ]);
    // The key file's text never appears in an error.
    let key = std::fs::read_to_string(&s.pki.wrong_key).unwrap();
    assert!(!e.contains(key.lines().nth(1).unwrap()), "{e}");
    assert!(e.contains("wrong-key.pem") && e.contains("does not fit"), "{e}");
    let e = init_error(&[(
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        s.pki.client_cert.to_str().unwrap(),
    )]);
    assert!(e.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"), "{e}");
    let e = init_error(&[
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", s.pki.client_cert.to_str().unwrap()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", s.pki.client_cert.to_str().unwrap()),
    ]);
    assert!(e.contains("no PEM private key"), "{e}");
}

#[test]
fn configuration_debug_output_never_shows_header_values() {
    let cfg = config(&[
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cret-general"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer%20s3cret-traces"),
        ("SKEIN_PROFILING", "true"),
        ("SKEIN_PROFILING_HEADERS", "x-token=s3cret-profiles"),
    ]);
    let d = format!("{cfg:?}");
    assert!(d.contains("authorization") && d.contains("x-token"), "{d}");
    assert!(!d.contains("s3cret"), "{d}");
    let b = skein_instrument::Builder::from_config(cfg).header("x-more", "s3cret-code").unwrap();
    assert!(!format!("{b:?}").contains("s3cret"));
}
