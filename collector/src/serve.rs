//! `skein serve`: wiring only. Opens the subsystems (span write path, profiles, span metrics,
//! query engine, alerting), builds the routers, starts the listeners and the subsystems'
//! background loops, and shuts them down in order.

use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::alert::notify::Targets;
use crate::alert::{Alerting, AlertingConfig};
use crate::api::{self, AppState};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::health::Health;
use crate::ingest::{self, Ingestor};
use crate::profile::Profiles;
use crate::query::QueryEngine;
use crate::span_metrics::SpanMetrics;
use crate::store::open_object_store;
use crate::store::shared::SharedBlocks;
use crate::telemetry::Telemetry;
use crate::tenant::{Access, Gate, Role};
use crate::tls::{Protocols, Tls, TlsListener};
use crate::traces::{Traces, TracesError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Traces(#[from] TracesError),
    #[error("query engine: {0}")]
    Query(#[from] crate::query::QueryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("OTLP/gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("profiles: {0}")]
    Profiles(#[from] crate::profile::ProfileError),
    #[error("span metrics: {0}")]
    SpanMetrics(#[from] crate::span_metrics::SpanMetricsError),
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("peers: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl crate::error::Coded for ServeError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            ServeError::Store(e) => e.code(),
            ServeError::Traces(e) => e.code(),
            ServeError::Query(e) => e.code(),
            ServeError::Profiles(e) => e.code(),
            ServeError::SpanMetrics(e) => e.code(),
            ServeError::Bind { .. } | ServeError::Io(_) | ServeError::Grpc(_) => {
                ErrorCode::Unavailable
            }
            ServeError::Task(_) => ErrorCode::Internal,
            ServeError::Cluster(e) => e.code(),
        }
    }
}

/// Object storage failing for longer than this makes the collector not ready (shorter
/// outages are retried without a word to load balancers).
const STORAGE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// Background work (a flush, a group commit) running longer than this means a wedged process.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// A running collector (used by `serve`, `demo`, benchmarks and tests).
pub struct Running {
    pub engine: Arc<QueryEngine>,
    pub profiles: Arc<Profiles>,
    pub span_metrics: Arc<SpanMetrics>,
    pub alerting: Arc<Alerting>,
    /// Bound addresses (differ from the configured ones when those use port 0).
    pub http_addr: std::net::SocketAddr,
    pub otlp_http_addr: std::net::SocketAddr,
    pub otlp_grpc_addr: std::net::SocketAddr,
    pub ingestor: Ingestor,
    pub traces: Arc<Traces>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        for t in self.tasks {
            match t.await {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "task panicked"),
            }
        }
        // The maintenance loop has stopped: no flush or truncation races the writer's exit.
        self.traces.stop();
        result
    }

    /// Resolves when any listener stops (e.g. on an error).
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let (r, _, rest) = futures::future::select_all(self.tasks.drain(..)).await;
        self.tasks = rest;
        match r {
            Ok(r) => r,
            Err(e) => Err(ServeError::Task(e)),
        }
    }
}

fn nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// The HTTP service while the collector starts: `/ready` says why it is not ready yet
/// (replaying the WAL), `/healthz` that the process is alive, `/metrics` the collector's own
/// metrics (`skein_ready 0`), everything else 503 with Retry-After; once `app` is set, every
/// request goes to it.
fn front_door(
    app: Arc<std::sync::OnceLock<axum::Router>>,
    health: Arc<Health>,
    metrics: Arc<Telemetry>,
    access: Arc<Access>,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (app, health, metrics) = (app.clone(), health.clone(), metrics.clone());
        let access = access.clone();
        async move {
            if let Some(app) = app.get() {
                return match app.clone().oneshot(req).await {
                    Ok(r) => r.into_response(),
                    Err(never) => match never {},
                };
            }
            let unavailable = |body: String| {
                (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], body).into_response()
            };
            match req.uri().path() {
                "/healthz" => "ok\n".into_response(),
                "/metrics" => {
                    if let Err(e) = access.resolve(req.headers(), Role::Admin) {
                        return e.into_response();
                    }
                    metrics.ready.set(0);
                    ([("content-type", "text/plain; version=0.0.4")], metrics.render())
                        .into_response()
                }
                "/ready" => unavailable(health.readiness().lines.join("\n") + "\n"),
                _ => unavailable("starting: replaying the WAL\n".to_string()),
            }
        }
    })
}

/// Starts everything and returns once all listeners are bound and the WAL is replayed. The
/// HTTP listener answers from the start (`/ready` is 503 until replay is done); the OTLP
/// listeners accept connections only once writes can be taken.
pub async fn start(cfg: &Config) -> Result<Running, ServeError> {
    let metrics = Arc::new(Telemetry::new());
    let health = Health::new(STORAGE_GRACE, STALL_LIMIT);
    health.fail(crate::health::Check::Replay, "opening storage and replaying the WAL");
    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = Vec::new();
    let access = cfg.security.access.clone();
    let tls = cfg.security.tls.clone();
    warn_if_exposed(cfg, &access);
    let http_listener = bind(cfg.listen.http).await?;
    let http_addr = http_listener.local_addr()?;
    let app_cell = Arc::new(std::sync::OnceLock::new());
    let front = front_door(app_cell.clone(), health.clone(), metrics.clone(), access.clone());
    tasks.push(tokio::spawn(serve_http(http_listener, tls.clone(), front, stopped(rx.clone()))));
    tasks.push(tokio::spawn(reload_on_hangup(access.clone(), tls.clone(), stopped(rx.clone()))));

    let object_store = open_object_store(&cfg.store.url, &metrics)?;
    let span_metrics = Arc::new(
        SpanMetrics::open(cfg.span_metrics.clone())?
            .counting_drops_in(metrics.span_metric_series_dropped.clone()),
    );
    let traces = Traces::open(
        object_store.clone(),
        cfg.traces(),
        metrics.clone(),
        health.clone(),
        Some(span_metrics.clone()),
    )
    .await?;
    let ingestor = Ingestor::new(traces.clone(), metrics.clone(), cfg.ingest.limits());
    let node = &cfg.cluster.node;
    // Profile blocks stay at the root for a replica alone (where they always were); replicas
    // sharing the root keep theirs in their own namespaces, and queries ask the peers.
    let profile_root = if cfg.cluster.peers.is_empty() {
        object_store.clone()
    } else {
        crate::store::namespace::within(&object_store, &node.dir())
    };
    let profiles = Profiles::open(profile_root, cfg.profiles.clone(), metrics.clone()).await?;
    // The other replicas' blocks (and blocks at the root, from before namespaces), listed once
    // before the first query and then every poll interval.
    let shared = Arc::new(SharedBlocks::new(object_store, node.clone(), metrics.clone()));
    if let Err(e) = shared.refresh_all().await {
        tracing::warn!(error = %e, "cannot list the other replicas' blocks yet");
    }
    let cluster = Arc::new(Cluster::new(cfg.cluster.clone(), shared, metrics.clone())?);
    let engine = Arc::new(
        QueryEngine::with_limits(
            traces.store().clone(),
            traces.head().clone(),
            metrics.clone(),
            cfg.query.clone(),
        )?
        .with_cluster(cluster.clone()),
    );
    profiles.set_cluster(cluster.clone());

    let otlp_http_listener = bind(cfg.listen.otlp_http).await?;
    // Bind gRPC ourselves too, so a busy port fails start-up instead of a background task.
    let grpc_listener = bind(cfg.listen.otlp_grpc).await?;
    let otlp_http_addr = otlp_http_listener.local_addr()?;
    let otlp_grpc_addr = grpc_listener.local_addr()?;

    let alerting = Alerting::from_groups(
        AlertingConfig {
            rules: cfg.alerting.rules.clone(),
            external_url: cfg
                .alerting
                .external_url
                .clone()
                .unwrap_or_else(|| format!("http://{http_addr}")),
            external_labels: cfg.alerting.external_labels.clone(),
            resend_delay: cfg.alerting.resend_delay,
            targets: Targets {
                alertmanagers: cfg.alerting.alertmanager_urls.clone(),
                webhooks: cfg.alerting.webhook_url.iter().cloned().collect(),
            },
        },
        cfg.alerting.groups.clone(),
        span_metrics.clone(),
    );
    alerting.set_cluster(cluster.clone());
    // The Prometheus API finds the rules' state (and recorded series) as an extension, so the
    // shared AppState stays as it is.
    let app = api::router(AppState {
        engine: engine.clone(),
        profiles: profiles.clone(),
        span_metrics: span_metrics.clone(),
        health: health.clone(),
        access: access.clone(),
    })
    .layer(axum::Extension(alerting.clone()))
    .layer(axum::Extension(cfg.query.answer));
    // The front door was answering for the starting collector; from now on it hands over.
    let _ = app_cell.set(app);
    let write =
        Gate { access: access.clone(), role: Role::Write, reject: api::error::refuse::text };
    let otlp_app = ingest::http::router(ingestor.clone(), write);
    let s = stopped(rx.clone());
    tasks.push(tokio::spawn(serve_http(otlp_http_listener, tls.clone(), otlp_app, s)));
    let (ing, a, s) = (ingestor.clone(), access.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(serve_grpc(grpc_listener, tls.clone(), ing, a, s)));
    let (t, s, h) = (traces.clone(), stopped(rx.clone()), health.clone());
    tasks.push(tokio::spawn(async move {
        // A panic in the maintenance loop must show in /ready, not only end a task.
        if let Err(e) = tokio::spawn(async move { t.run(s).await }).await {
            tracing::error!(error = %e, "span maintenance loop died");
            h.fail(crate::health::Check::Flusher, format!("maintenance loop died: {e}"));
        }
        Ok(())
    }));
    let (c, s) = (cluster.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(async move {
        c.run(Box::pin(s)).await;
        Ok(())
    }));
    let (p, s) = (profiles.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(async move {
        p.run(s).await;
        Ok(())
    }));
    let (g, s) = (span_metrics.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(async move {
        g.run(s).await;
        Ok(())
    }));
    let (a, s) = (alerting.clone(), stopped(rx.clone()));
    tasks.push(tokio::spawn(async move {
        a.run(s).await;
        Ok(())
    }));
    tracing::info!(
        otlp_grpc = %otlp_grpc_addr,
        otlp_http = %otlp_http_addr,
        http = %http_addr,
        storage = cfg.store.url,
        "skein ready"
    );
    Ok(Running {
        engine,
        profiles,
        span_metrics,
        alerting,
        http_addr,
        otlp_http_addr,
        otlp_grpc_addr,
        ingestor,
        traces,
        shutdown: tx,
        tasks,
    })
}

/// Serves `app` on `tcp`, over TLS when configured, until `shutdown` resolves.
async fn serve_http(
    tcp: TcpListener,
    tls: Option<Arc<Tls>>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    match tls {
        None => axum::serve(tcp.tap_io(nodelay), app).with_graceful_shutdown(shutdown).await?,
        Some(tls) => {
            let listener = TlsListener::new(tcp, tls, Protocols::Http)?;
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?
        }
    }
    Ok(())
}

/// Serves OTLP/gRPC on `tcp`, over TLS when configured, until `shutdown` resolves.
async fn serve_grpc(
    tcp: TcpListener,
    tls: Option<Arc<Tls>>,
    ingestor: Ingestor,
    access: Arc<Access>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    match tls {
        None => {
            // Small responses on long-lived connections: Nagle's algorithm would delay acks by
            // tens of milliseconds against the client's delayed ACK.
            let incoming =
                tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true));
            ingest::grpc::serve(incoming, ingestor, access, shutdown).await?
        }
        Some(tls) => {
            let incoming = TlsListener::new(tcp, tls, Protocols::Grpc)?.into_stream();
            ingest::grpc::serve(incoming, ingestor, access, shutdown).await?
        }
    }
    Ok(())
}

/// Anyone who can reach a listener on a non-loopback address can write and read every tenant's
/// data unless tokens are required.
fn warn_if_exposed(cfg: &Config, access: &Access) {
    if access.enabled() {
        return;
    }
    let l = &cfg.listen;
    for (name, addr) in [("otlp-grpc", l.otlp_grpc), ("otlp-http", l.otlp_http), ("http", l.http)] {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                listener = name,
                %addr,
                "listening on a non-loopback address without authentication (--auth-file): \
                 anyone who can reach it can write and read every tenant's data"
            );
        }
    }
}

/// SIGHUP re-reads the token file and the TLS certificate, key and client CA; a file that
/// fails to load is logged and the configuration in force stays.
async fn reload_on_hangup(
    access: Arc<Access>,
    tls: Option<Arc<Tls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                got = hup.recv() => if got.is_none() { return Ok(()) },
            }
            match access.reload() {
                Ok(0) => {}
                Ok(n) => tracing::info!(tokens = n, "auth file reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "auth file not reloaded; the old tokens stay")
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files not reloaded; the old ones stay")
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (access, tls);
        shutdown.await;
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
