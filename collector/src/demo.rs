//! `skein demo`: the collector plus the demo shop (one child process per service) with generated
//! traffic; and the hidden `skein shop SERVICE` that runs one shop service for it.
//!
//! Children are started from this same executable, in their own process group (a terminal's
//! Ctrl-C reaches only `skein demo`, which then stops them in order), and exit when their stdin
//! closes, so they never outlive `skein demo`, even after `kill -9`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServeArgs;
use crate::serve::{self, Running};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use parking_lot::Mutex;
use skein_demo::loadgen::{self, LoadgenOptions};
use skein_demo::{Service, ServiceOptions};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// How long a shop service may take to print its `LISTENING` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shop service may take to exit once asked to, before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const RESOURCE_ATTRIBUTES: &str = "service.namespace=shop,deployment.environment=demo";

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Where the shop's HTTP gateway listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway_addr: SocketAddr,
    /// Requests per second sent to the gateway (0: no generated traffic).
    #[arg(long, default_value_t = 5)]
    rps: u32,
    /// Span profiling rate of the shop's services in Hz (0: profiling off).
    #[arg(long, default_value_t = 99)]
    profiling_hz: u32,
    /// Seed of the generated traffic: the same seed sends the same sequence of requests
    /// (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Plain HTTP and no tokens. By default the demo runs as a deploy should: TLS and token
    /// authentication on every listener, with a development CA, certificates and tokens kept in
    /// `<data-dir>/dev-tls` (made by `skein certs` on first use), and the shop exporting with
    /// the write token over TLS. `--tls-*`/`--auth-file` given explicitly win.
    #[arg(long)]
    insecure: bool,
}

#[derive(Debug, Args)]
pub struct ShopArgs {
    /// The service to run.
    #[arg(value_parser = PossibleValuesParser::new(Service::ALL.map(Service::name))
        .try_map(|s| s.parse::<Service>()))]
    service: Service,
    /// Address to listen on (port 0 picks a free port; the bound address is printed as
    /// `LISTENING <addr>`).
    #[arg(long)]
    listen: SocketAddr,
    /// The orders service (for the gateway).
    #[arg(long)]
    orders: Option<String>,
    /// The inventory service (for orders).
    #[arg(long)]
    inventory: Option<String>,
    /// The payment service (for orders).
    #[arg(long)]
    payment: Option<String>,
    /// Keep running when stdin closes (by default the service exits then).
    #[arg(long)]
    ignore_stdin: bool,
    /// Turn off the injected faults (random inventory outages, slow bank calls).
    #[arg(long)]
    no_faults: bool,
    /// HTTP service the gateway asks for a shipping quote after each order.
    #[arg(long)]
    shipping_url: Option<String>,
    /// A file holding the collector's write token, sent as `Authorization: Bearer` with traces
    /// and profile pushes (containers, where the token is a mounted secret rather than an
    /// environment variable).
    #[arg(long)]
    otlp_token_file: Option<std::path::PathBuf>,
}

/// `skein shop SERVICE`: runs one shop service until stdin closes, SIGTERM or Ctrl-C.
pub async fn shop(args: ShopArgs) -> ExitCode {
    let service = args.service;
    // Traces, `tracing` spans and log lines with trace ids, configured by the OTEL_* variables
    // (`skein demo` points them at its collector); flushed when the guard drops.
    let token = match &args.otlp_token_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("skein shop {service}: --otlp-token-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let instrumentation = skein_instrument::Builder::from_env().and_then(|b| {
        let named = b.config().service_name != skein_instrument::Config::default().service_name;
        let b = if named { b } else { b.service_name(service.otel_service_name()) };
        let b = match &token {
            Some(t) => b.header("authorization", &format!("Bearer {t}"))?,
            None => b,
        };
        b.install()
    });
    let _guard = match instrumentation {
        Ok(g) => g,
        Err(e) => {
            eprintln!("skein shop {service}: {e}");
            return ExitCode::from(2);
        }
    };
    let options = ServiceOptions {
        listen: args.listen,
        orders: args.orders,
        inventory: args.inventory,
        payment: args.payment,
        faults: !args.no_faults,
        shipping: args.shipping_url,
    };
    let listening = match skein_demo::bind(service, options).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skein shop {service}: {e}");
            return ExitCode::from(if e.is_config() { 2 } else { 1 });
        }
    };
    // `skein demo` reads this line to learn the address.
    let mut stdout = std::io::stdout();
    if let Err(e) =
        writeln!(stdout, "LISTENING {}", listening.local_addr()).and_then(|()| stdout.flush())
    {
        eprintln!("skein shop {service}: cannot write to stdout: {e}");
        return ExitCode::from(1);
    }
    tracing::info!(service_name = service.otel_service_name(), "shop service started");
    let watch_stdin = !args.ignore_stdin;
    let stop = async move {
        tokio::select! {
            () = serve::shutdown_signal() => {}
            () = stdin_closed(), if watch_stdin => tracing::info!("stdin closed"),
        }
    };
    match listening.serve(stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skein shop {service}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Resolves when stdin reaches end of file (the parent closed it or died).
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("stdin-eof".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 512];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    });
    match spawned {
        Ok(_) => {
            let _ = rx.await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch stdin; stop with SIGTERM");
            std::future::pending::<()>().await;
        }
    }
}

/// `skein demo`.
pub async fn demo(mut args: DemoArgs) -> ExitCode {
    let secure = match (!args.insecure).then(|| secure(&mut args.serve)).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skein: {e}");
            return ExitCode::from(1);
        }
    };
    let cfg = match args.serve.clone().resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skein: {e}");
            return ExitCode::from(2);
        }
    };
    let mut running = match serve::start(&cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skein: {e}");
            return ExitCode::from(1);
        }
    };
    let mut shop = Shop::default();
    let outcome = run(&mut running, &mut shop, &args, secure.as_ref()).await;
    shop.stop().await;
    let stopped = running.stop().await.map_err(|e| e.to_string());
    match outcome.and(stopped) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skein: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the secure demo set up: the CA clients must trust and the tokens.
struct Secure {
    ca: std::path::PathBuf,
    tokens: crate::devcerts::DevTokens,
}

/// Points the collector's TLS and auth flags at the dev PKI in `<data-dir>/dev-tls`.
fn secure(serve: &mut ServeArgs) -> Result<Secure, crate::devcerts::CertsError> {
    use crate::devcerts as dev;
    let data = serve.data_dir.clone().unwrap_or_else(|| "./skein-data".into());
    let dir = data.join("dev-tls");
    let tokens = dev::ensure(&dir, &[])?;
    let absolute = |f: &str| std::path::absolute(dir.join(f)).unwrap_or_else(|_| dir.join(f));
    serve.tls_cert.get_or_insert_with(|| absolute(dev::SERVER_CERT));
    serve.tls_key.get_or_insert_with(|| absolute(dev::SERVER_KEY));
    serve.auth_file.get_or_insert_with(|| absolute(dev::AUTH_FILE));
    Ok(Secure { ca: absolute(dev::CA), tokens })
}

/// Starts the shop and the load generator, then waits for a shutdown signal or a failure.
async fn run(
    running: &mut Running,
    shop: &mut Shop,
    args: &DemoArgs,
    secure: Option<&Secure>,
) -> Result<(), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the skein executable: {e}"))?;
    let scheme = if secure.is_some() { "https" } else { "http" };
    let endpoints = ShopEnv {
        otlp: format!("{scheme}://{}", connectable(running.otlp_grpc_addr)),
        http: format!("{scheme}://{}", connectable(running.http_addr)),
        profiling_hz: args.profiling_hz,
        secure: secure.map(|s| (s.ca.clone(), s.tokens.write.clone())),
    };
    let any_port = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let inventory = shop.spawn(&exe, Service::Inventory, any_port, &[], &endpoints).await?;
    let payment = shop.spawn(&exe, Service::Payment, any_port, &[], &endpoints).await?;
    let orders = shop
        .spawn(
            &exe,
            Service::Orders,
            any_port,
            &[("--inventory", inventory), ("--payment", payment)],
            &endpoints,
        )
        .await?;
    let gateway = shop
        .spawn(&exe, Service::Gateway, args.gateway_addr, &[("--orders", orders)], &endpoints)
        .await?;
    let gateway = format!("http://{}", connectable(gateway));
    print_welcome(running, &gateway, args.rps, secure);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loadgen_started = std::time::Instant::now();
    let mut traffic = LoadgenOptions::new(gateway, args.rps);
    traffic.seed = args.seed;
    let loadgen = tokio::spawn(loadgen::run(traffic, async {
        let _ = stop_rx.await;
    }));
    let outcome = tokio::select! {
        () = serve::shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        r = running.wait() => Err(match r {
            Ok(()) => "the collector stopped".to_string(),
            Err(e) => e.to_string(),
        }),
        e = shop.exited() => Err(e),
    };
    let _ = stop_tx.send(());
    if let Ok(Ok(mut total)) = tokio::time::timeout(Duration::from_secs(5), loadgen).await
        && args.rps > 0
    {
        println!("{} (total)", total.status_line(loadgen_started.elapsed()));
    }
    outcome
}

/// Where to connect to reach a listener bound to `addr` (a wildcard address means loopback).
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn print_welcome(running: &Running, gateway: &str, rps: u32, secure: Option<&Secure>) {
    let scheme = if secure.is_some() { "https" } else { "http" };
    let http = format!("{scheme}://{}", connectable(running.http_addr));
    let grpc = connectable(running.otlp_grpc_addr);
    let otlp_http = connectable(running.otlp_http_addr);
    let (curl, security) = match secure {
        None => (String::new(), String::new()),
        Some(s) => (
            format!("--cacert {} -H 'Authorization: Bearer {}' ", s.ca.display(), s.tokens.read),
            format!(
                "
  TLS CA                  {ca}  (trust it, or accept the browser's warning)
  Tokens                  read {read}  write {write}  admin {admin}
                          (the web UI asks for one; Grafana: basic auth, any user, token as password)
",
                ca = s.ca.display(),
                read = s.tokens.read,
                write = s.tokens.write,
                admin = s.tokens.admin,
            ),
        ),
    };
    let traffic = match rps {
        0 => "none (--rps 0)".to_string(),
        n => format!("{n} requests/s (a status line every 10 s)"),
    };
    println!(
        "
skein demo is running: the collector and the shop (gateway -> orders -> inventory, payment).

  Collector               {http}/
  Tempo API               {http}/api/search?limit=20
  Slow checkouts          curl -G {curl}{http}/api/search \\
                            --data-urlencode 'q={{resource.service.name=\"gateway\" && duration > 300ms}}'
  OTLP                    grpc {scheme}://{grpc}  http {scheme}://{otlp_http}
  Grafana                 add a Tempo datasource with URL {http}
  Shop gateway            {gateway}/
  Generated traffic       {traffic}
{security}
Place your own order:
  curl -X POST {gateway}/checkout -H 'content-type: application/json' \\
    -d '{{\"customer\":\"ada\",\"items\":[{{\"sku\":\"moka-pot\",\"quantity\":1}}]}}'

Ctrl-C stops everything.
"
    );
}

/// The shop's child processes.
#[derive(Default)]
struct Shop {
    processes: Vec<ShopProcess>,
}

struct ShopProcess {
    service: Service,
    child: Child,
    /// Closing it asks the service to stop.
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<()>>,
    /// The last line the service wrote to stderr (its reason when it fails).
    last_line: Arc<Mutex<String>>,
}

impl ShopProcess {
    /// Why the service stopped: its last stderr line, or its exit status.
    async fn failure(&mut self, status: Option<std::process::ExitStatus>) -> String {
        if let Some(forwarder) = self.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), forwarder).await;
        }
        let service = self.service;
        let last = self.last_line.lock().clone();
        let prefix = format!("skein shop {service}: ");
        match (last.strip_prefix(&prefix), status) {
            (Some(reason), _) => format!("{service}: {reason}"),
            (None, Some(status)) => format!("{service} stopped ({status})"),
            (None, None) => format!("{service} stopped"),
        }
    }
}

/// What the shop's services are told: where to send traces (OTLP/gRPC) and profiles (HTTP
/// `/ingest`), and how often to sample CPU.
struct ShopEnv {
    otlp: String,
    http: String,
    profiling_hz: u32,
    /// The secure demo: the CA to trust and the token to send.
    secure: Option<(std::path::PathBuf, String)>,
}

impl Shop {
    /// Starts `skein shop SERVICE` and returns the address it listens on.
    async fn spawn(
        &mut self,
        exe: &Path,
        service: Service,
        listen: SocketAddr,
        downstream: &[(&str, SocketAddr)],
        collector: &ShopEnv,
    ) -> Result<SocketAddr, String> {
        let mut cmd = Command::new(exe);
        cmd.arg("shop").arg(service.name()).arg("--listen").arg(listen.to_string());
        for (flag, addr) in downstream {
            cmd.arg(flag).arg(addr.to_string());
        }
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.otlp)
            // Span profiling on: CPU samples per span, pushed to the collector's /ingest.
            .env("SKEIN_PROFILING", if collector.profiling_hz > 0 { "true" } else { "false" })
            .env("SKEIN_PROFILING_HZ", collector.profiling_hz.max(1).to_string())
            .env("SKEIN_PROFILING_ENDPOINT", &collector.http)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_SERVICE_NAME", service.name())
            .env("OTEL_RESOURCE_ATTRIBUTES", RESOURCE_ATTRIBUTES)
            // The shop's INFO lines would bury the welcome text; RUST_LOG=info shows them.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((ca, token)) = &collector.secure {
            // Traces and profile pushes both use these (skein-instrument's TLS and headers).
            cmd.env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)
                .env("OTEL_EXPORTER_OTLP_HEADERS", format!("authorization=Bearer%20{token}"));
        }
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {service}: {e}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(format!("cannot start {service}: no pipes"));
        };
        let last_line = Arc::new(Mutex::new(String::new()));
        let forwarder = tokio::spawn(forward_stderr(service, stderr, last_line.clone()));
        tracing::debug!(%service, pid = child.id(), "shop service started");
        self.processes.push(ShopProcess {
            service,
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
            stderr: Some(forwarder),
            last_line,
        });
        let Some(p) = self.processes.last_mut() else {
            return Err(format!("cannot start {service}"));
        };
        let line = match tokio::time::timeout(START_TIMEOUT, p.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = tokio::time::timeout(Duration::from_secs(2), p.child.wait()).await;
                return Err(p.failure(status.ok().and_then(Result::ok)).await);
            }
            Err(_) => return Err(format!("{service} did not start within {START_TIMEOUT:?}")),
        };
        line.strip_prefix("LISTENING ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("{service} printed {line:?} instead of its address"))
    }

    /// Resolves when any service exits, with the reason.
    async fn exited(&mut self) -> String {
        if self.processes.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.processes.iter_mut().map(|p| {
            Box::pin(async move {
                let status = p.child.wait().await.ok();
                p.failure(status).await
            })
        });
        let (reason, _, _) = futures::future::select_all(waits).await;
        reason
    }

    /// Asks every service to stop (closes their stdin), waits for them and kills stragglers.
    async fn stop(&mut self) {
        for p in &mut self.processes {
            p.stdin.take();
        }
        for p in &mut self.processes {
            let service = p.service;
            match tokio::time::timeout(STOP_TIMEOUT, p.child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    tracing::warn!(%service, %status, "shop service exited with a failure");
                }
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(%service, "shop service did not stop in time; killing it");
                    let _ = p.child.kill().await;
                }
            }
            if let Some(forwarder) = p.stderr.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), forwarder).await;
            }
        }
    }
}

/// Copies a service's stderr to ours, each line prefixed with the service name.
async fn forward_stderr(service: Service, stderr: ChildStderr, last_line: Arc<Mutex<String>>) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                eprintln!("{:>9} | {line}", service.name());
                *last_line.lock() = line.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:3200".parse().unwrap();
        assert_eq!(connectable(any).to_string(), "127.0.0.1:3200");
        let any6: SocketAddr = "[::]:3200".parse().unwrap();
        assert_eq!(connectable(any6).to_string(), "[::1]:3200");
        let set: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(connectable(set), set);
    }
}
