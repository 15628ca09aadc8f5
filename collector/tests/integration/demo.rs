//! `skein demo` as a user runs it: the collector serves TLS and wants tokens (made on first use
//! in `<data-dir>/dev-tls`), the shop answers on the printed gateway URL and its traces reach the
//! collector over TLS with the write token, and SIGTERM stops everything with exit code 0 and no
//! leftover processes.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first stdout line containing `needle`, within `timeout`.
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?} on stdout: {e}"),
        }
    }
}

/// `GET path` over TLS trusting `ca`, with `Authorization: Bearer token`: (status, body).
async fn tls_get(
    addr: &str,
    ca: &std::path::Path,
    token: Option<&str>,
    path: &str,
) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Processes whose parent is `pid` (Linux).
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(str::trim);
        if ppid == Some(pid.to_string().as_str()) {
            found.push(child);
        }
    }
    found
}

/// True while `pid` runs (a zombie has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn demo_serves_the_shop_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_skein"))
        .arg("demo")
        .args(["--rps", "0", "--data-dir"])
        .arg(dir.path())
        .args(["--gateway-addr", "127.0.0.1:0", "--otlp-grpc-addr", "127.0.0.1:0"])
        .args(["--otlp-http-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("SKEIN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let line = wait_for_line(&lines, "  Collector ", Duration::from_secs(60));
    let collector = line.split_whitespace().last().unwrap().trim_end_matches('/').to_string();
    let collector = collector.strip_prefix("https://").expect("the demo serves TLS").to_string();
    let line = wait_for_line(&lines, "Shop gateway", Duration::from_secs(60));
    let gateway = line.split_whitespace().last().unwrap().trim_end_matches('/').to_string();
    assert!(gateway.starts_with("http://127.0.0.1:"), "{line}");
    let shop = children_of(demo.id());
    assert_eq!(shop.len(), 4, "one process per shop service: {shop:?}");

    let http = reqwest::Client::new();
    let catalogue: serde_json::Value =
        http.get(format!("{gateway}/")).send().await.unwrap().json().await.unwrap();
    assert!(catalogue["products"].as_array().is_some_and(|p| !p.is_empty()), "{catalogue}");
    // Inventory fails ~3% of calls on purpose; a few tries make an outage streak negligible.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = http
            .post(format!("{gateway}/checkout"))
            .json(&serde_json::json!({"customer": "ada", "items": [{"sku": "moka-pot", "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status().is_success() {
            let receipt: serde_json::Value = response.json().await.unwrap();
            assert_eq!(receipt["amount_cents"], 3450, "{receipt}");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");

    // The shop's spans arrive over TLS with the write token; reading needs the read token.
    let dev = dir.path().join("dev-tls");
    let ca = dev.join("ca.pem");
    let read = std::fs::read_to_string(dev.join("read.token")).unwrap();
    let (status, _) = tls_get(&collector, &ca, None, "/api/search?limit=5").await;
    assert_eq!(status, 401, "the demo collector wants a token");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = "/api/search?q=%7Bresource.service.name%3D%22gateway%22%7D&limit=5";
        let (status, body) = tls_get(&collector, &ca, Some(&read), q).await;
        if status == 200 && body.contains("traceID") {
            break;
        }
        assert!(Instant::now() < deadline, "no gateway trace reached the collector: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let kill = Command::new("kill").args(["-TERM", &demo.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "skein demo did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let left: Vec<u32> = shop.into_iter().filter(|&pid| alive(pid)).collect();
    assert!(left.is_empty(), "shop processes still running: {left:?}");
}
