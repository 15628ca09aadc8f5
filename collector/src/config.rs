//! `skein serve` configuration: flags, `SKEIN_*` environment variables and a TOML file.
//!
//! Precedence (highest first): command-line flag, environment variable, config file, default.
//! clap resolves flag-vs-env; values it did not see fall back to the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::alert::rules::Group;
use crate::ingest::admission::IngestLimits;
use crate::profile::ProfileConfig;
use crate::profile::limits as profile_limits;
use crate::span_metrics::SpanMetricsConfig;
use crate::spanrows::DedicatedColumns;
use crate::traces::{HeadConfig, StoreConfig, TracesConfig};
use crate::wal::{FsyncPolicy, WalConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl crate::error::Coded for ConfigError {
    fn code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::InvalidArgument
    }
}

/// WAL fsync policy as configured; `always` is the default and survives `kill -9` and power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    Always,
    Interval,
    Never,
}

/// Raw flags; every field is optional so that the config file can fill the gaps.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML config file with the same keys as the flags (kebab-case).
    #[arg(long, env = "SKEIN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for the WAL and (by default) Parquet blocks.
    #[arg(long, env = "SKEIN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Block storage: file:///path (default: <data-dir>/blocks) or s3://bucket/prefix.
    #[arg(long, env = "SKEIN_STORAGE")]
    pub storage: Option<String>,
    #[arg(long, env = "SKEIN_OTLP_GRPC_ADDR")]
    pub otlp_grpc_addr: Option<String>,
    #[arg(long, env = "SKEIN_OTLP_HTTP_ADDR")]
    pub otlp_http_addr: Option<String>,
    /// Query APIs, web UI and /metrics.
    #[arg(long, env = "SKEIN_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Prometheus rule file (the default tenant's), or a directory: its *.yml / *.yaml rule
    /// files are the default tenant's, each sub-directory named by a tenant id holds that
    /// tenant's.
    #[arg(long, env = "SKEIN_RULES")]
    pub rules: Option<PathBuf>,
    /// Alertmanager base URL(s), comma separated; alerts go to {url}/api/v2/alerts.
    #[arg(long, env = "SKEIN_ALERTMANAGER_URL")]
    pub alertmanager_url: Option<String>,
    /// Also POST every alert notification (the same JSON array) to this URL.
    #[arg(long, env = "SKEIN_ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,
    /// Re-send firing alerts this often, e.g. 1m.
    #[arg(long, env = "SKEIN_ALERT_RESEND_DELAY")]
    pub alert_resend_delay: Option<String>,
    /// URL under which users reach skein (links in alerts); default http://<http-addr>.
    #[arg(long, env = "SKEIN_EXTERNAL_URL")]
    pub external_url: Option<String>,
    /// Labels added to every alert sent, e.g. cluster=eu1,env=prod ($externalLabels).
    #[arg(long, env = "SKEIN_EXTERNAL_LABELS", value_delimiter = ',')]
    pub external_labels: Option<Vec<String>>,
    /// How long blocks are kept, e.g. 336h.
    #[arg(long, env = "SKEIN_RETENTION")]
    pub retention: Option<String>,
    /// Largest accepted OTLP request after decompression, in bytes.
    #[arg(long, env = "SKEIN_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Attribute values (strings and bytes, also inside arrays and kvlists) longer than this are
    /// cut to it, at a UTF-8 character boundary, and counted in
    /// skein_attributes_truncated_total; keys are kept whole. 0: no limit. Default 65536, like
    /// OpenTelemetry's attribute value length limit.
    #[arg(long, env = "SKEIN_MAX_ATTRIBUTE_BYTES")]
    pub max_attribute_bytes: Option<usize>,
    /// Bytes of accepted-but-not-yet-durable exports before ingest answers 429 / UNAVAILABLE.
    #[arg(long, env = "SKEIN_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<usize>,
    /// Spans one OTLP export may hold, counted before decoding (413 / RESOURCE_EXHAUSTED).
    #[arg(long, env = "SKEIN_MAX_SPANS_PER_REQUEST")]
    pub max_spans_per_request: Option<usize>,
    /// Estimated in-memory size of one decoded export, checked before decoding; default 8 ×
    /// --max-body-bytes (413 / RESOURCE_EXHAUSTED).
    #[arg(long, env = "SKEIN_MAX_DECODED_BYTES")]
    pub max_decoded_bytes: Option<usize>,
    /// Sustained spans per second one tenant may send, with a burst of twice that (429 with
    /// Retry-After / RESOURCE_EXHAUSTED with RetryInfo). 0: unlimited.
    #[arg(long, env = "SKEIN_MAX_SPANS_PER_SECOND_PER_TENANT")]
    pub max_spans_per_second_per_tenant: Option<u64>,
    /// Distinct tenants ingest accepts spans from; a new one beyond it gets 403 /
    /// PERMISSION_DENIED. 0: unlimited.
    #[arg(long, env = "SKEIN_MAX_TENANTS")]
    pub max_tenants: Option<usize>,
    /// Span-metric and service-graph series per tenant; new series beyond it are dropped and
    /// counted in skein_span_metric_series_dropped_total.
    #[arg(long, env = "SKEIN_MAX_SPAN_METRIC_SERIES")]
    pub max_span_metric_series: Option<usize>,
    #[arg(long, env = "SKEIN_FSYNC", value_enum)]
    pub fsync: Option<FsyncMode>,
    /// Flush the in-memory head to a block after this many spans (per tenant).
    #[arg(long, env = "SKEIN_HEAD_MAX_SPANS")]
    pub head_max_spans: Option<usize>,
    /// Flush the head at the latest after this age, e.g. 60s.
    #[arg(long, env = "SKEIN_HEAD_MAX_AGE")]
    pub head_max_age: Option<String>,
    /// Compact blocks smaller than this many spans together.
    #[arg(long, env = "SKEIN_BLOCK_TARGET_SPANS")]
    pub block_target_spans: Option<usize>,
    /// Memory available to one query, e.g. 512MiB in bytes.
    #[arg(long, env = "SKEIN_QUERY_MEMORY_BYTES")]
    pub query_memory_bytes: Option<usize>,
    /// Time one query (any query endpoint) may run before it is stopped with 503, e.g. 60s.
    #[arg(long, env = "SKEIN_QUERY_TIMEOUT")]
    pub query_timeout: Option<String>,
    /// Queries running at once (default 2 x cores, at least 4); more wait 1 s, then get 429.
    #[arg(long, env = "SKEIN_MAX_CONCURRENT_QUERIES")]
    pub max_concurrent_queries: Option<usize>,
    /// Threads of the query runtime, apart from the ingest runtime (default: cores, at least 2).
    #[arg(long, env = "SKEIN_QUERY_THREADS")]
    pub query_threads: Option<usize>,
    /// Trace ids a search with several spansets may collect before it is refused with 422.
    #[arg(long, env = "SKEIN_MAX_SEARCH_TRACE_IDS")]
    pub max_search_trace_ids: Option<usize>,
    /// Series one PromQL / TraceQL-metrics answer may hold; more is refused with 422.
    #[arg(long, env = "SKEIN_MAX_QUERY_SERIES")]
    pub max_query_series: Option<usize>,
    /// Samples one PromQL / TraceQL-metrics answer may hold; more is refused with 422.
    #[arg(long, env = "SKEIN_MAX_QUERY_SAMPLES")]
    pub max_query_samples: Option<usize>,
    /// Span attributes stored in their own column (comma separated).
    #[arg(long, env = "SKEIN_DEDICATED_SPAN_ATTRIBUTES", value_delimiter = ',')]
    pub dedicated_span_attributes: Option<Vec<String>>,
    /// Resource attributes stored in their own column (comma separated).
    #[arg(long, env = "SKEIN_DEDICATED_RESOURCE_ATTRIBUTES", value_delimiter = ',')]
    pub dedicated_resource_attributes: Option<Vec<String>>,
    /// Span-metrics latency histogram bounds in seconds (comma separated; Tempo's defaults,
    /// 0.002 doubling to 16.384).
    #[arg(long, env = "SKEIN_SPANMETRICS_BUCKETS", value_delimiter = ',')]
    pub spanmetrics_buckets: Option<Vec<f64>>,
    /// Extra span-metrics labels from these attributes (comma separated, e.g. http.route).
    #[arg(long, env = "SKEIN_SPANMETRICS_DIMENSIONS", value_delimiter = ',')]
    pub spanmetrics_dimensions: Option<Vec<String>>,
    /// How long a client or server span waits for its partner in the service graph, e.g. 10s.
    #[arg(long, env = "SKEIN_SERVICEGRAPH_WAIT")]
    pub servicegraph_wait: Option<String>,
    /// How often span metrics and service-graph series are sampled into history, e.g. 15s.
    #[arg(long, env = "SKEIN_METRICS_SCRAPE_INTERVAL")]
    pub metrics_scrape_interval: Option<String>,
    // Hostile profile pushes (profile/limits.rs).
    /// A profile push may decode into at most this many times --max-body-bytes of memory
    /// (samples, frames, labels, protobuf structs); beyond it the push is refused with 413.
    #[arg(long, env = "SKEIN_PROFILE_DECODE_FACTOR")]
    pub profile_decode_factor: Option<usize>,
    /// Profile pushes decoded at once; others wait up to 2 s, then get 429.
    #[arg(long, env = "SKEIN_PROFILE_DECODE_CONCURRENCY")]
    pub profile_decode_concurrency: Option<usize>,
    /// Distinct service names a tenant may push profiles for within an hour; pushes naming
    /// more are refused with 403.
    #[arg(long, env = "SKEIN_PROFILE_MAX_APPS")]
    pub profile_max_apps: Option<usize>,
    // Security (tls.rs, tenant/): TLS on every listener and token authentication.
    /// PEM certificate chain served on all three listeners (with --tls-key).
    #[arg(long, env = "SKEIN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SKEIN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "SKEIN_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// TOML file of [[token]] entries (token or token_sha256, tenants, role); every surface
    /// but /healthz and /ready then needs a token. Re-read on SIGHUP.
    #[arg(long, env = "SKEIN_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    // Replicas sharing one storage root (cluster/).
    /// This replica's name: its namespace (nodes/<id>/) on the storage and the skein_node
    /// label of its span-metric series. Default: the host name.
    #[arg(long, env = "SKEIN_NODE_ID")]
    pub node_id: Option<String>,
    /// The other replicas' HTTP API base URLs, comma separated, or dns+http://NAME:PORT
    /// (every address NAME resolves to, re-resolved every 15 s).
    #[arg(long, env = "SKEIN_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// How long one call to a peer may take before it is skipped (the answer is then
    /// partial), e.g. 5s.
    #[arg(long, env = "SKEIN_PEER_TIMEOUT")]
    pub peer_timeout: Option<String>,
    /// How often the other replicas' namespaces are listed for new blocks, e.g. 30s.
    #[arg(long, env = "SKEIN_PEER_POLL_INTERVAL")]
    pub peer_poll_interval: Option<String>,
    /// File holding the token sent to peers (one of theirs, role read or admin, tenants "*").
    #[arg(long, env = "SKEIN_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,
    /// PEM CA that signed the peers' certificates (https peers).
    #[arg(long, env = "SKEIN_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,
    /// PEM client certificate for peers that require one (with --peer-tls-key).
    #[arg(long, env = "SKEIN_PEER_TLS_CERT")]
    pub peer_tls_cert: Option<PathBuf>,
    #[arg(long, env = "SKEIN_PEER_TLS_KEY")]
    pub peer_tls_key: Option<PathBuf>,
}

/// Resolved configuration, built once from [`ServeArgs`]: one section per subsystem, each
/// handed to that subsystem as it is. Sections named `*Section` are settings only this module
/// defines; the others are the subsystems' own config types.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the WALs and the span-metrics history (and, by default, the blocks).
    pub data_dir: PathBuf,
    pub listen: ListenSection,
    pub ingest: IngestSection,
    /// The span WAL.
    pub wal: WalConfig,
    pub head: HeadConfig,
    pub store: StoreConfig,
    pub query: QuerySection,
    pub span_metrics: SpanMetricsConfig,
    pub alerting: AlertingSection,
    pub profiles: ProfileConfig,
    pub security: SecuritySection,
    /// This replica among the others sharing the storage root.
    pub cluster: crate::cluster::ClusterConfig,
}

/// TLS and authentication, loaded (and so checked) when the configuration is resolved.
#[derive(Debug, Clone)]
pub struct SecuritySection {
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub access: Arc<crate::tenant::Access>,
}

impl Config {
    /// What the span write path is opened with.
    pub fn traces(&self) -> TracesConfig {
        TracesConfig {
            wal: self.wal.clone(),
            head: self.head.clone(),
            store: StoreConfig { node: Some(self.cluster.node.clone()), ..self.store.clone() },
            max_inflight_bytes: self.ingest.max_inflight_bytes,
            quarantine_dir: self.data_dir.join("quarantine"),
            max_attribute_bytes: self.ingest.max_attribute_bytes,
        }
    }
}

/// The three listeners.
#[derive(Debug, Clone)]
pub struct ListenSection {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    /// Query APIs, web UI and /metrics.
    pub http: SocketAddr,
}

/// What OTLP ingest admits.
#[derive(Debug, Clone)]
pub struct IngestSection {
    /// Largest request after decompression (profile pushes too).
    pub max_body_bytes: usize,
    /// Bytes of accepted-but-not-yet-durable exports before ingest answers 429 / UNAVAILABLE.
    pub max_inflight_bytes: usize,
    /// Attribute values are cut to this many bytes when spans enter the head; 0: no limit.
    pub max_attribute_bytes: usize,
    pub max_spans_per_request: usize,
    pub max_decoded_bytes: usize,
    pub max_spans_per_second_per_tenant: u64,
    pub max_tenants: usize,
}

impl IngestSection {
    /// What the ingestor admits.
    pub fn limits(&self) -> IngestLimits {
        IngestLimits {
            max_body_bytes: self.max_body_bytes,
            max_spans_per_request: self.max_spans_per_request,
            max_decoded_bytes: self.max_decoded_bytes,
            max_spans_per_second_per_tenant: self.max_spans_per_second_per_tenant,
            max_tenants: self.max_tenants,
        }
    }
}

/// What queries may use and where they run.
pub type QuerySection = crate::query::QueryLimits;

/// Rules and where their alerts go. Becomes an [`crate::alert::AlertingConfig`] at start, once
/// the HTTP address (the default external URL) is bound.
#[derive(Debug, Clone)]
pub struct AlertingSection {
    /// The rule file or directory, as given.
    pub rules: Option<PathBuf>,
    /// Every tenant's rules, parsed (and checked) here once.
    pub groups: Vec<Group>,
    pub alertmanager_urls: Vec<String>,
    pub webhook_url: Option<String>,
    pub resend_delay: Duration,
    /// None: derived from the bound HTTP address at start.
    pub external_url: Option<String>,
    pub external_labels: BTreeMap<String, String>,
}

impl FsyncMode {
    /// The WAL policy this mode stands for.
    pub fn policy(self) -> FsyncPolicy {
        match self {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => FsyncPolicy::Interval(Duration::from_secs(1)),
            FsyncMode::Never => FsyncPolicy::Never,
        }
    }
}

/// At most this many dedicated columns per scope: each one widens every block.
const MAX_DEDICATED: usize = 10;

impl ServeArgs {
    /// Fills unset fields from the config file named by `--config`, then resolves defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => ServeArgs::default(),
        };
        let a = self.merge(file);
        let data_dir = a.data_dir.unwrap_or_else(|| PathBuf::from("./skein-data"));
        let storage = match a.storage {
            Some(s) => s,
            None => {
                let dir = absolute(&data_dir.join("blocks"))?;
                format!("file://{}", dir.display())
            }
        };
        validate_storage(&storage)?;
        let dedicated =
            dedicated_columns(a.dedicated_span_attributes, a.dedicated_resource_attributes)?;
        let spanmetrics_buckets = latency_buckets(a.spanmetrics_buckets)?;
        let spanmetrics_dimensions = span_dimensions(a.spanmetrics_dimensions)?;
        let alerting = alerting_section(
            a.rules,
            a.alertmanager_url,
            a.alert_webhook_url,
            a.alert_resend_delay,
            a.external_url,
            a.external_labels,
        )?;
        let retention = duration("retention", a.retention.as_deref(), "336h")?;
        let max_body_bytes = positive("max-body-bytes", a.max_body_bytes, 16 << 20)?;
        let query_memory_bytes = positive("query-memory-bytes", a.query_memory_bytes, 1 << 30)?;
        let fsync = a.fsync.unwrap_or(FsyncMode::Always).policy();
        let max_spans = positive("head-max-spans", a.head_max_spans, 100_000)?;
        let head = HeadConfig {
            max_spans,
            max_age: duration("head-max-age", a.head_max_age.as_deref(), "60s")?,
            // Back-pressure once unflushed spans reach a few heads' worth (at least 100k
            // spans, ~45 MB): bounds memory when block writing cannot keep up with ingest.
            max_unflushed_spans: max_spans.saturating_mul(4).max(100_000),
        };
        let cfg = Config {
            listen: ListenSection {
                otlp_grpc: addr("otlp-grpc-addr", a.otlp_grpc_addr, "127.0.0.1:4317")?,
                otlp_http: addr("otlp-http-addr", a.otlp_http_addr, "127.0.0.1:4318")?,
                http: addr("http-addr", a.http_addr, "127.0.0.1:3200")?,
            },
            ingest: IngestSection {
                max_body_bytes,
                max_inflight_bytes: positive(
                    "max-inflight-bytes",
                    a.max_inflight_bytes,
                    256 << 20,
                )?,
                max_attribute_bytes: a
                    .max_attribute_bytes
                    .unwrap_or(crate::spanrows::DEFAULT_MAX_ATTRIBUTE_BYTES),
                max_spans_per_request: positive(
                    "max-spans-per-request",
                    a.max_spans_per_request,
                    100_000,
                )?,
                max_decoded_bytes: positive(
                    "max-decoded-bytes",
                    a.max_decoded_bytes,
                    max_body_bytes.saturating_mul(8),
                )?,
                max_spans_per_second_per_tenant: a
                    .max_spans_per_second_per_tenant
                    .unwrap_or(250_000),
                max_tenants: a.max_tenants.unwrap_or(1000),
            },
            wal: WalConfig {
                dir: data_dir.join("wal"),
                fsync,
                segment_bytes: crate::wal::DEFAULT_SEGMENT_BYTES,
            },
            store: StoreConfig {
                url: storage,
                dedicated,
                block_target_spans: positive(
                    "block-target-spans",
                    a.block_target_spans,
                    2_000_000,
                )?,
                retention,
                node: None,
            },
            query: query_section(
                query_memory_bytes,
                a.query_timeout.as_deref(),
                a.max_concurrent_queries,
                a.query_threads,
                a.max_search_trace_ids,
                crate::promql::answer_limits::AnswerLimits {
                    max_series: positive(
                        "max-query-series",
                        a.max_query_series,
                        crate::promql::answer_limits::DEFAULT_MAX_SERIES,
                    )?,
                    max_samples: positive(
                        "max-query-samples",
                        a.max_query_samples,
                        crate::promql::answer_limits::DEFAULT_MAX_SAMPLES,
                    )?,
                    deadline: None,
                },
            )?,
            span_metrics: SpanMetricsConfig {
                buckets: spanmetrics_buckets,
                dimensions: spanmetrics_dimensions,
                wait: duration("servicegraph-wait", a.servicegraph_wait.as_deref(), "10s")?,
                interval: duration(
                    "metrics-scrape-interval",
                    a.metrics_scrape_interval.as_deref(),
                    "15s",
                )?,
                retention,
                dir: data_dir.join("spanmetrics"),
                max_series: positive(
                    "max-span-metric-series",
                    a.max_span_metric_series,
                    crate::span_metrics::DEFAULT_MAX_SERIES,
                )?,
            },
            alerting,
            profiles: ProfileConfig {
                wal_dir: data_dir.join("profiles-wal"),
                fsync,
                max_body_bytes,
                query_memory_bytes,
                head_max_age: head.max_age,
                head_max_samples: head.max_spans,
                retention,
                decode_factor: positive(
                    "profile-decode-factor",
                    a.profile_decode_factor,
                    profile_limits::DEFAULT_DECODE_FACTOR,
                )?,
                decode_concurrency: positive(
                    "profile-decode-concurrency",
                    a.profile_decode_concurrency,
                    profile_limits::DEFAULT_DECODE_CONCURRENCY,
                )?,
                max_apps: positive(
                    "profile-max-apps",
                    a.profile_max_apps,
                    profile_limits::DEFAULT_MAX_APPS,
                )?,
            },
            security: security_section(a.tls_cert, a.tls_key, a.tls_client_ca, a.auth_file)?,
            cluster: cluster_section(ClusterArgs {
                node_id: a.node_id,
                peers: a.peers,
                timeout: a.peer_timeout,
                poll: a.peer_poll_interval,
                token_file: a.peer_token_file,
                ca: a.peer_tls_ca,
                cert: a.peer_tls_cert,
                key: a.peer_tls_key,
                retention,
            })?,
            head,
            data_dir,
        };
        Ok(cfg)
    }

    fn merge(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            data_dir: self.data_dir.or(file.data_dir),
            storage: self.storage.or(file.storage),
            otlp_grpc_addr: self.otlp_grpc_addr.or(file.otlp_grpc_addr),
            otlp_http_addr: self.otlp_http_addr.or(file.otlp_http_addr),
            http_addr: self.http_addr.or(file.http_addr),
            rules: self.rules.or(file.rules),
            alertmanager_url: self.alertmanager_url.or(file.alertmanager_url),
            alert_webhook_url: self.alert_webhook_url.or(file.alert_webhook_url),
            alert_resend_delay: self.alert_resend_delay.or(file.alert_resend_delay),
            external_url: self.external_url.or(file.external_url),
            external_labels: self.external_labels.or(file.external_labels),
            retention: self.retention.or(file.retention),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_inflight_bytes: self.max_inflight_bytes.or(file.max_inflight_bytes),
            max_spans_per_request: self.max_spans_per_request.or(file.max_spans_per_request),
            max_decoded_bytes: self.max_decoded_bytes.or(file.max_decoded_bytes),
            max_spans_per_second_per_tenant: self
                .max_spans_per_second_per_tenant
                .or(file.max_spans_per_second_per_tenant),
            max_tenants: self.max_tenants.or(file.max_tenants),
            max_span_metric_series: self.max_span_metric_series.or(file.max_span_metric_series),
            max_attribute_bytes: self.max_attribute_bytes.or(file.max_attribute_bytes),
            fsync: self.fsync.or(file.fsync),
            head_max_spans: self.head_max_spans.or(file.head_max_spans),
            head_max_age: self.head_max_age.or(file.head_max_age),
            block_target_spans: self.block_target_spans.or(file.block_target_spans),
            query_memory_bytes: self.query_memory_bytes.or(file.query_memory_bytes),
            query_timeout: self.query_timeout.or(file.query_timeout),
            max_concurrent_queries: self.max_concurrent_queries.or(file.max_concurrent_queries),
            query_threads: self.query_threads.or(file.query_threads),
            max_search_trace_ids: self.max_search_trace_ids.or(file.max_search_trace_ids),
            max_query_series: self.max_query_series.or(file.max_query_series),
            max_query_samples: self.max_query_samples.or(file.max_query_samples),
            dedicated_span_attributes: self
                .dedicated_span_attributes
                .or(file.dedicated_span_attributes),
            dedicated_resource_attributes: self
                .dedicated_resource_attributes
                .or(file.dedicated_resource_attributes),
            spanmetrics_buckets: self.spanmetrics_buckets.or(file.spanmetrics_buckets),
            spanmetrics_dimensions: self.spanmetrics_dimensions.or(file.spanmetrics_dimensions),
            servicegraph_wait: self.servicegraph_wait.or(file.servicegraph_wait),
            metrics_scrape_interval: self.metrics_scrape_interval.or(file.metrics_scrape_interval),
            profile_decode_factor: self.profile_decode_factor.or(file.profile_decode_factor),
            profile_decode_concurrency: self
                .profile_decode_concurrency
                .or(file.profile_decode_concurrency),
            profile_max_apps: self.profile_max_apps.or(file.profile_max_apps),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_client_ca: self.tls_client_ca.or(file.tls_client_ca),
            auth_file: self.auth_file.or(file.auth_file),
            node_id: self.node_id.or(file.node_id),
            peers: self.peers.or(file.peers),
            peer_timeout: self.peer_timeout.or(file.peer_timeout),
            peer_poll_interval: self.peer_poll_interval.or(file.peer_poll_interval),
            peer_token_file: self.peer_token_file.or(file.peer_token_file),
            peer_tls_ca: self.peer_tls_ca.or(file.peer_tls_ca),
            peer_tls_cert: self.peer_tls_cert.or(file.peer_tls_cert),
            peer_tls_key: self.peer_tls_key.or(file.peer_tls_key),
        }
    }
}

/// The replica flags, as given.
struct ClusterArgs {
    node_id: Option<String>,
    peers: Option<Vec<String>>,
    timeout: Option<String>,
    poll: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    retention: Duration,
}

fn cluster_section(a: ClusterArgs) -> Result<crate::cluster::ClusterConfig, ConfigError> {
    use crate::cluster::{ClusterConfig, PeerSource};
    use crate::store::namespace::NodeId;
    let node = match a.node_id {
        Some(id) => NodeId::new(id.trim())
            .map_err(|e| ConfigError::Invalid { key: "node-id", message: e.to_string() })?,
        None => NodeId::from_host(),
    };
    let peers = a
        .peers
        .unwrap_or_default()
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| PeerSource::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ConfigError::Invalid { key: "peers", message })?;
    let token = match a.token_file {
        Some(path) => {
            let t = std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "peer-token-file",
                    message: format!("{} is empty", path.display()),
                });
            }
            Some(t)
        }
        None => None,
    };
    let identity = match (a.cert, a.key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid {
                key: "peer-tls-cert",
                message: "--peer-tls-cert and --peer-tls-key go together".into(),
            });
        }
    };
    Ok(ClusterConfig {
        node,
        peers,
        timeout: duration("peer-timeout", a.timeout.as_deref(), "5s")?,
        poll: duration("peer-poll-interval", a.poll.as_deref(), "30s")?,
        token,
        ca: a.ca,
        identity,
        retention: a.retention,
    })
}

/// The dedicated attribute columns, defaulted and checked.
fn dedicated_columns(
    span: Option<Vec<String>>,
    resource: Option<Vec<String>>,
) -> Result<DedicatedColumns, ConfigError> {
    let dedicated_span_attributes = span
        .unwrap_or_else(|| ["http.route", "rpc.service", "rpc.method"].map(String::from).to_vec());
    let dedicated_resource_attributes =
        resource.unwrap_or_else(|| vec!["service.namespace".to_string()]);
    for (key, list) in [
        ("dedicated-span-attributes", &dedicated_span_attributes),
        ("dedicated-resource-attributes", &dedicated_resource_attributes),
    ] {
        if list.len() > MAX_DEDICATED {
            return Err(ConfigError::Invalid {
                key,
                message: format!("at most {MAX_DEDICATED} attributes"),
            });
        }
        if list.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::Invalid { key, message: "empty attribute name".into() });
        }
    }
    Ok(DedicatedColumns {
        span: dedicated_span_attributes,
        resource: dedicated_resource_attributes,
    })
}

/// Span-metrics latency bucket bounds: finite and ascending.
fn latency_buckets(buckets: Option<Vec<f64>>) -> Result<Vec<f64>, ConfigError> {
    let spanmetrics_buckets =
        buckets.unwrap_or_else(|| crate::span_metrics::calls::DEFAULT_BUCKETS.to_vec());
    let ascending = spanmetrics_buckets.windows(2).all(|w| w[0] < w[1]);
    if spanmetrics_buckets.is_empty()
        || !ascending
        || spanmetrics_buckets.iter().any(|b| !b.is_finite())
    {
        return Err(ConfigError::Invalid {
            key: "spanmetrics-buckets",
            message: "need finite bounds in ascending order".into(),
        });
    }
    Ok(spanmetrics_buckets)
}

/// Extra span-metrics dimensions (attribute names).
fn span_dimensions(dimensions: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let spanmetrics_dimensions = dimensions.unwrap_or_default();
    if spanmetrics_dimensions.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::Invalid {
            key: "spanmetrics-dimensions",
            message: "empty attribute name".into(),
        });
    }
    Ok(spanmetrics_dimensions)
}

/// TLS files and the token file, read now so that a bad one stops start-up with its reason.
fn security_section(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    auth_file: Option<PathBuf>,
) -> Result<SecuritySection, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let tls = match (cert, key, client_ca) {
        (None, None, None) => None,
        (Some(cert), Some(key), client_ca) => Some(
            crate::tls::Tls::load(crate::tls::TlsFiles { cert, key, client_ca })
                .map_err(|e| invalid("tls-cert", e.to_string()))?,
        ),
        (None, _, Some(_)) => {
            return Err(invalid("tls-client-ca", "needs --tls-cert and --tls-key".into()));
        }
        (Some(_), None, _) => return Err(invalid("tls-key", "--tls-cert needs it".into())),
        (None, Some(_), _) => return Err(invalid("tls-cert", "--tls-key needs it".into())),
    };
    let access = match auth_file {
        None => crate::tenant::Access::open(),
        Some(path) => crate::tenant::Access::from_file(&path)
            .map_err(|e| invalid("auth-file", e.to_string()))?,
    };
    Ok(SecuritySection { tls, access })
}

/// Rules (parsed and checked once) and where their alerts go.
fn alerting_section(
    rules: Option<PathBuf>,
    alertmanager_url: Option<String>,
    alert_webhook_url: Option<String>,
    alert_resend_delay: Option<String>,
    external_url: Option<String>,
    label_pairs: Option<Vec<String>>,
) -> Result<AlertingSection, ConfigError> {
    let groups = match &rules {
        Some(rules) => crate::alert::layout::load_groups(rules).map_err(|errors| {
            let more = match errors.len() {
                1 => String::new(),
                n => format!(" (and {} more; see skein rules check)", n - 1),
            };
            let first =
                errors.first().map(|e| e.to_string().replace('\n', " ")).unwrap_or_default();
            ConfigError::Invalid { key: "rules", message: format!("{first}{more}") }
        })?,
        None => Vec::new(),
    };
    let alertmanager_urls: Vec<String> = alertmanager_url
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    for u in &alertmanager_urls {
        http_url("alertmanager-url", u)?;
    }
    if let Some(u) = &alert_webhook_url {
        http_url("alert-webhook-url", u)?;
    }
    if let Some(u) = &external_url {
        http_url("external-url", u)?;
    }
    let mut external_labels = BTreeMap::new();
    for kv in label_pairs.unwrap_or_default() {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                external_labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => {
                return Err(ConfigError::Invalid {
                    key: "external-labels",
                    message: format!("{kv:?} is not name=value"),
                });
            }
        }
    }
    Ok(AlertingSection {
        rules,
        groups,
        alertmanager_urls,
        webhook_url: alert_webhook_url,
        resend_delay: duration("alert-resend-delay", alert_resend_delay.as_deref(), "1m")?,
        external_url: external_url.map(|u| u.trim_end_matches('/').to_string()),
        external_labels,
    })
}

fn load_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })
}

fn absolute(p: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(p)
        .map_err(|e| ConfigError::Invalid { key: "data-dir", message: e.to_string() })
}

fn validate_storage(url: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| ConfigError::Invalid { key: "storage", message: format!("{url}: {e}") })?;
    match parsed.scheme() {
        "file" | "s3" => Ok(()),
        other => Err(ConfigError::Invalid {
            key: "storage",
            message: format!("unsupported scheme {other:?} (use file:// or s3://)"),
        }),
    }
}

fn http_url(key: &'static str, u: &str) -> Result<(), ConfigError> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") => Ok(()),
        Ok(_) => {
            Err(ConfigError::Invalid { key, message: format!("{u:?}: use http:// or https://") })
        }
        Err(e) => Err(ConfigError::Invalid { key, message: format!("{u:?}: {e}") }),
    }
}

fn addr(key: &'static str, v: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = v.unwrap_or_else(|| default.to_string());
    s.parse().map_err(|_| ConfigError::Invalid {
        key,
        message: format!("{s:?} is not an address like 127.0.0.1:3200"),
    })
}

fn duration(key: &'static str, v: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let s = v.unwrap_or(default);
    let d = humantime::parse_duration(s)
        .map_err(|e| ConfigError::Invalid { key, message: format!("{s:?}: {e}") })?;
    if d.is_zero() {
        return Err(ConfigError::Invalid { key, message: "must be greater than zero".into() });
    }
    Ok(d)
}

/// The query limits: flags over [`crate::query::QueryLimits::with_memory`]'s defaults.
fn query_section(
    memory_bytes: usize,
    timeout: Option<&str>,
    max_concurrent: Option<usize>,
    threads: Option<usize>,
    max_search_trace_ids: Option<usize>,
    answer: crate::promql::answer_limits::AnswerLimits,
) -> Result<QuerySection, ConfigError> {
    let d = QuerySection::with_memory(memory_bytes);
    Ok(QuerySection {
        timeout: duration("query-timeout", timeout, "60s")?,
        max_concurrent: positive("max-concurrent-queries", max_concurrent, d.max_concurrent)?,
        threads: positive("query-threads", threads, d.threads)?,
        max_search_trace_ids: positive(
            "max-search-trace-ids",
            max_search_trace_ids,
            d.max_search_trace_ids,
        )?,
        answer,
        ..d
    })
}

fn positive(key: &'static str, v: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match v.unwrap_or(default) {
        0 => Err(ConfigError::Invalid { key, message: "must be greater than zero".into() }),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design_contract() {
        let cfg = ServeArgs::default().resolve().unwrap();
        assert_eq!(cfg.listen.otlp_grpc.to_string(), "127.0.0.1:4317");
        assert_eq!(cfg.listen.otlp_http.to_string(), "127.0.0.1:4318");
        assert_eq!(cfg.listen.http.to_string(), "127.0.0.1:3200");
        assert_eq!(cfg.store.retention, Duration::from_secs(336 * 3600));
        assert_eq!(cfg.ingest.max_body_bytes, 16 << 20);
        assert!(cfg.store.url.starts_with("file:///"));
        assert!(cfg.store.url.ends_with("skein-data/blocks"));
        assert_eq!(cfg.query.timeout, Duration::from_secs(60));
        assert!(cfg.query.max_concurrent >= 4);
        assert_eq!(cfg.query.max_search_trace_ids, 100_000);
    }

    #[test]
    fn hostile_ingest_limits_default_to_what_one_node_survives() {
        let cfg = ServeArgs::default().resolve().unwrap();
        let l = cfg.ingest.limits();
        assert_eq!(l.max_spans_per_request, 100_000);
        assert_eq!(l.max_decoded_bytes, 8 * (16 << 20));
        assert_eq!(l.max_spans_per_second_per_tenant, 250_000);
        assert_eq!(l.max_tenants, 1000);
        assert_eq!(cfg.span_metrics.max_series, 50_000);
        let cfg =
            ServeArgs { max_body_bytes: Some(1 << 20), ..Default::default() }.resolve().unwrap();
        assert_eq!(cfg.ingest.limits().max_decoded_bytes, 8 << 20);
        assert!(
            ServeArgs { max_spans_per_request: Some(0), ..Default::default() }.resolve().is_err()
        );
    }

    #[test]
    fn attribute_value_limit_defaults_to_64_kib_and_zero_means_none() {
        let cfg = ServeArgs::default().resolve().unwrap();
        assert_eq!(cfg.ingest.max_attribute_bytes, 65536);
        let cfg =
            ServeArgs { max_attribute_bytes: Some(0), ..Default::default() }.resolve().unwrap();
        assert_eq!(cfg.ingest.max_attribute_bytes, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skein.toml");
        std::fs::write(&path, "max-attribute-bytes = 1024\n").unwrap();
        let cfg = ServeArgs { config: Some(path.clone()), ..Default::default() }.resolve().unwrap();
        assert_eq!(cfg.ingest.max_attribute_bytes, 1024);
        let args =
            ServeArgs { config: Some(path), max_attribute_bytes: Some(8), ..Default::default() };
        assert_eq!(args.resolve().unwrap().ingest.max_attribute_bytes, 8, "the flag wins");
    }

    #[test]
    fn flags_override_config_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skein.toml");
        std::fs::write(&path, "http-addr = \"127.0.0.1:9999\"\nretention = \"24h\"\n").unwrap();
        let args =
            ServeArgs { config: Some(path), retention: Some("1h".into()), ..Default::default() };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.listen.http.to_string(), "127.0.0.1:9999");
        assert_eq!(cfg.store.retention, Duration::from_secs(3600));
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = ServeArgs { retention: Some("forever".into()), ..Default::default() }
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("retention"), "{err}");
        let err = ServeArgs { http_addr: Some("nope".into()), ..Default::default() }
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("http-addr"), "{err}");
        let err = ServeArgs { storage: Some("ftp://x".into()), ..Default::default() }
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("storage"), "{err}");
        let err = ServeArgs { spanmetrics_buckets: Some(vec![0.5, 0.1]), ..Default::default() }
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("spanmetrics-buckets"), "{err}");
    }

    #[test]
    fn span_metrics_defaults_follow_tempo() {
        let cfg = ServeArgs::default().resolve().unwrap();
        assert_eq!(cfg.span_metrics.buckets.first(), Some(&0.002));
        assert_eq!(cfg.span_metrics.buckets.last(), Some(&16.384));
        assert_eq!(cfg.span_metrics.wait, Duration::from_secs(10));
        assert_eq!(cfg.span_metrics.interval, Duration::from_secs(15));
    }

    #[test]
    fn alerting_flags() {
        let cfg = ServeArgs::default().resolve().unwrap();
        assert_eq!(cfg.alerting.resend_delay, Duration::from_secs(60));
        assert!(cfg.alerting.alertmanager_urls.is_empty() && cfg.alerting.external_url.is_none());
        let cfg = ServeArgs {
            alertmanager_url: Some("http://a:9093, http://b:9093/".into()),
            external_labels: Some(vec!["cluster=eu1".into()]),
            external_url: Some("https://skein.example/".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.alerting.alertmanager_urls, vec!["http://a:9093", "http://b:9093/"]);
        assert_eq!(cfg.alerting.external_labels.get("cluster").map(String::as_str), Some("eu1"));
        assert_eq!(cfg.alerting.external_url.as_deref(), Some("https://skein.example"));
        for (args, key) in [
            (
                ServeArgs { alertmanager_url: Some("nope".into()), ..Default::default() },
                "alertmanager-url",
            ),
            (
                ServeArgs { external_labels: Some(vec!["x".into()]), ..Default::default() },
                "external-labels",
            ),
            (
                ServeArgs { rules: Some("/nonexistent/rules.yml".into()), ..Default::default() },
                "rules",
            ),
        ] {
            let err = args.resolve().unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn unknown_config_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skein.toml");
        std::fs::write(&path, "htp-addr = \"x\"\n").unwrap();
        let err = ServeArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err();
        assert!(err.to_string().contains("htp-addr"), "{err}");
    }
}
