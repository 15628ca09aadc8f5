//! skein-instrument: trace context in RPC metadata, very cheap spans, OTLP export.
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let _guard = skein_instrument::init()?; // OTEL_* environment variables
//! let app = axum::Router::<()>::new()
//!     .route("/", axum::routing::get(|| async { "hi" }))
//!     .layer(skein_instrument::layer::HttpServerLayer::new());
//! # Ok(()) }
//! ```
//!
//! - [`init`] / [`Builder`]: configuration from `OTEL_*` variables or code, a pipeline that
//!   exports over OTLP gRPC or HTTP/protobuf, and (by default) a `tracing` subscriber whose
//!   spans nest under RPC spans and whose log lines carry `trace_id`/`span_id`.
//! - [`layer`]: tower layers for tonic servers and clients, axum/hyper servers and HTTP
//!   clients, and [`layer::RequestBuilderExt`] for reqwest.
//! - [`Span`]: the span API, for code that does not use `tracing`.
//! - [`propagation`]: W3C Trace Context, W3C Baggage and B3 codecs.
//! - [`profiling`]: a span-aware sampling CPU profiler (off unless `SKEIN_PROFILING=true` or
//!   [`Builder::profiling`]) that pushes pprof profiles labelled with span ids to `/ingest`.
//!
//! - [`otel`] (feature `opentelemetry`): the OpenTelemetry API (`opentelemetry::trace`) on
//!   skein's pipeline; [`init`] installs its tracer provider and propagator as OpenTelemetry's
//!   globals, so OpenTelemetry-API code and skein spans share one trace.
//!
//! No OpenTelemetry SDK type appears in this API: they change with every release. The
//! `opentelemetry` feature bridges to the (much more stable) API crate only.

pub mod config;
pub mod context;
pub mod export;
pub mod headers;
mod http_client;
pub mod layer;
#[cfg(feature = "opentelemetry")]
pub mod otel;
mod percent;
pub mod profiling;
pub mod propagation;
pub mod sampler;
pub mod span;
pub mod subscriber;
mod suppress;
pub mod tls;

pub use config::{BatchConfig, Config, ProfilingConfig, Protocol};
pub use context::{FutureExt, Instrumented, current_context, with_current_span};
pub use export::{Stats, stats};
pub use headers::Headers;
pub use profiling::ProfilingStats;
pub use sampler::Sampler;
pub use span::{KeyValue, Link, Span, SpanBuilder, SpanKind, Status, Value};
pub use tls::TlsConfig;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Profiling(#[from] profiling::ProfilingError),
    #[error("cannot install the tracing subscriber: {0}")]
    Subscriber(String),
}

/// Installs the pipeline configured from the `OTEL_*` environment variables, plus the
/// `tracing` subscriber (filtered by `RUST_LOG`, default `info`).
pub fn init() -> Result<Guard, InitError> {
    Builder::from_env()?.install()
}

/// Configuration in code; starts from the environment ([`Builder::from_env`]) or defaults.
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    config: Config,
    subscriber: bool,
    #[cfg(feature = "opentelemetry")]
    otel_globals: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::from_config(Config::default())
    }
}

impl Builder {
    pub fn from_env() -> Result<Builder, InitError> {
        Ok(Builder::from_config(Config::from_env()?))
    }

    pub fn from_config(config: Config) -> Builder {
        Builder {
            config,
            subscriber: true,
            #[cfg(feature = "opentelemetry")]
            otel_globals: true,
        }
    }

    /// Whether [`Builder::install`] makes skein OpenTelemetry's global tracer provider and
    /// text-map propagator (default true; feature `opentelemetry`).
    #[cfg(feature = "opentelemetry")]
    pub fn opentelemetry_globals(mut self, install: bool) -> Self {
        self.otel_globals = install;
        self
    }

    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.config.service_name = name.into();
        self
    }

    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.resource.push((key.into(), value.into()));
        self
    }

    /// OTLP endpoint, e.g. `http://127.0.0.1:4317` (gRPC) or `http://127.0.0.1:4318` (HTTP).
    pub fn endpoint(mut self, url: impl Into<String>, protocol: Protocol) -> Self {
        self.config.endpoint = url.into();
        self.config.traces_endpoint = None;
        self.config.protocol = protocol;
        self
    }

    /// `tracecontext,baggage,b3,b3multi` as in `OTEL_PROPAGATORS`.
    pub fn propagators(mut self, value: &str) -> Result<Self, InitError> {
        self.config.propagators =
            propagation::composite::Propagators::parse(value).map_err(config::ConfigError::from)?;
        Ok(self)
    }

    /// A header sent with every span export and profile push, e.g.
    /// `("authorization", "Bearer …")` (as in `OTEL_EXPORTER_OTLP_HEADERS`; it replaces one of
    /// the same name from the environment, also from `OTEL_EXPORTER_OTLP_TRACES_HEADERS`).
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, InitError> {
        self.config.headers.insert(name, value).map_err(config::ConfigError::from)?;
        self.config.traces_headers.remove(name);
        Ok(self)
    }

    /// Certificate files for https endpoints, span exports and profile pushes (as the
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_CLIENT_CERTIFICATE` and `…_CLIENT_KEY` variables);
    /// replaces those from the environment, also the `…_TRACES_…` ones.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = tls;
        self.config.traces_tls = TlsConfig::default();
        self
    }

    pub fn sampler(mut self, sampler: Sampler) -> Self {
        self.config.sampler = sampler;
        self
    }

    pub fn batch(mut self, batch: BatchConfig) -> Self {
        self.config.batch = batch;
        self
    }

    /// Turns on the span-aware CPU profiler (as `SKEIN_PROFILING=true` does): profiles are
    /// pushed to `<endpoint>/ingest`, and root spans carry `pyroscope.profile.id`.
    pub fn profiling(mut self, profiling: ProfilingConfig) -> Self {
        self.config.profiling = Some(profiling);
        self
    }

    /// Whether [`Builder::install`] also installs the global `tracing` subscriber (default
    /// true). Without it, add [`subscriber::layer`] to your own subscriber.
    pub fn tracing_subscriber(mut self, install: bool) -> Self {
        self.subscriber = install;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn install(self) -> Result<Guard, InitError> {
        if self.subscriber {
            install_subscriber()?;
        }
        #[cfg(feature = "opentelemetry")]
        if self.otel_globals {
            // Also when disabled: OpenTelemetry-API spans then cost as little as skein's.
            otel::install_globals(&self.config.propagators);
        }
        if !self.config.disabled {
            export::install(&self.config)?;
            if let Some(p) = &self.config.profiling
                && let Err(e) = profiling::install(&self.config, p)
            {
                // No guard is returned, so nothing would ever stop the span pipeline.
                shutdown_spans();
                return Err(e.into());
            }
        }
        Ok(Guard { _private: () })
    }
}

fn install_subscriber() -> Result<(), InitError> {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    use tracing_subscriber::prelude::*;
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        // `#[tracing::instrument]` spans are INFO by default; DEBUG/TRACE spans (hyper, h2
        // internals) would only add noise and cost.
        .with(subscriber::layer().with_filter(LevelFilter::INFO))
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(subscriber::LogFormat)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .with_filter(logs),
        )
        .try_init()
        .map_err(|e| InitError::Subscriber(e.to_string()))
}

/// Flushes and stops the export pipeline (and the profiler, pushing a last profile) when
/// dropped (or on [`Guard::shutdown`]).
#[must_use = "dropping the guard shuts the pipeline down"]
#[derive(Debug)]
pub struct Guard {
    _private: (),
}

impl Guard {
    pub fn shutdown(self) {}
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The last profile first: its push may take a while, spans are already queued.
        profiling::shutdown();
        shutdown_spans();
    }
}

/// Exports every span finished so far (this thread's buffer and the queue) and waits for the
/// attempt to complete, up to the export timeout.
pub fn flush() {
    span::context::flush_local();
    export::flush_queue();
}

/// Flushes, stops the export thread and disables span recording.
fn shutdown_spans() {
    span::context::flush_local();
    export::stop();
}
