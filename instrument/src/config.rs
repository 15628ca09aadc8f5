//! Configuration from the OpenTelemetry environment variables, or built in code.
//!
//! Reads `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`, `OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE`,
//! `OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_KEY`, `OTEL_PROPAGATORS`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` and `OTEL_SDK_DISABLED`, and skein's own
//! `SKEIN_PROFILING*` variables (the span-aware CPU profiler). Values are parsed from a lookup
//! function so tests (and callers with their own configuration source) need not touch the
//! process environment.

use std::path::PathBuf;
use std::time::Duration;

use crate::headers::{HeaderError, Headers};
use crate::percent::decode_lossy;
use crate::propagation::composite::{PropagationError, Propagators};
use crate::sampler::Sampler;
use crate::tls::TlsConfig;

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(transparent)]
    Propagators(#[from] PropagationError),
    #[error("invalid {var}: {message}")]
    Invalid { var: &'static str, message: String },
    #[error(transparent)]
    Header(#[from] HeaderError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    /// Base endpoint (`/v1/traces` is appended for HTTP).
    pub endpoint: String,
    /// Full traces URL, used as given (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub traces_endpoint: Option<String>,
    pub protocol: Protocol,
    /// Sent with every span export and profile push (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Headers,
    /// Sent with span exports, each over the one of the same name in `headers`
    /// (`OTEL_EXPORTER_OTLP_TRACES_HEADERS`).
    pub traces_headers: Headers,
    /// Certificate files for https endpoints, span exports and profile pushes
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`).
    pub tls: TlsConfig,
    /// Span exports only, each file over the one in `tls` (the `…_TRACES_…` variants).
    pub traces_tls: TlsConfig,
    pub propagators: Propagators,
    pub sampler: Sampler,
    pub batch: BatchConfig,
    /// `OTEL_SDK_DISABLED=true`: spans are neither recorded nor exported.
    pub disabled: bool,
    /// The span-aware CPU profiler, when enabled (`SKEIN_PROFILING=true`).
    pub profiling: Option<ProfilingConfig>,
}

/// The batch span processor settings (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_queue_size: usize,
    /// Longest a finished span waits before its batch is sent.
    pub scheduled_delay: Duration,
    pub max_export_batch_size: usize,
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        // OpenTelemetry's defaults, except a 1 s delay (5 s in the spec) so traces appear
        // promptly in a UI; OTEL_BSP_SCHEDULE_DELAY restores any value.
        BatchConfig {
            max_queue_size: 2048,
            scheduled_delay: Duration::from_secs(1),
            max_export_batch_size: 512,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            service_name: "unknown_service".into(),
            resource: Vec::new(),
            endpoint: "http://localhost:4317".into(),
            traces_endpoint: None,
            protocol: Protocol::Grpc,
            headers: Headers::default(),
            traces_headers: Headers::default(),
            tls: TlsConfig::default(),
            traces_tls: TlsConfig::default(),
            propagators: Propagators::default(),
            sampler: Sampler::ParentBased(1.0),
            batch: BatchConfig::default(),
            disabled: false,
            profiling: None,
        }
    }
}

/// Profiling settings (`SKEIN_PROFILING_*` variables, or [`crate::Builder::profiling`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilingConfig {
    /// Samples per second of CPU time (`SKEIN_PROFILING_HZ`, default 99).
    pub frequency_hz: u32,
    /// Collector HTTP base URL; profiles go to `<endpoint>/ingest`
    /// (`SKEIN_PROFILING_ENDPOINT`, default `http://localhost:3200`).
    pub endpoint: String,
    /// Span names that get a profile of their own (`pyroscope.profile.id`) besides local
    /// roots (`SKEIN_PROFILING_SPANS`, comma-separated).
    pub spans: Vec<String>,
    /// Spans slower than this get `pyroscope.profile.id` when they end, and their samples are
    /// labelled with their id (`SKEIN_PROFILING_SLOWER_THAN`, e.g. `100ms`).
    pub slower_than: Option<Duration>,
    /// How often a profile is pushed (`SKEIN_PROFILING_PUSH_INTERVAL`, default 10 s).
    pub push_interval: Duration,
    /// Sent as `X-Scope-OrgID` (`SKEIN_PROFILING_TENANT`).
    pub tenant: Option<String>,
    /// Sent with every push, each over the one of the same name in [`Config::headers`]
    /// (`SKEIN_PROFILING_HEADERS`, e.g. a token for a different profiles backend).
    pub headers: Headers,
}

impl Default for ProfilingConfig {
    fn default() -> Self {
        ProfilingConfig {
            frequency_hz: 99,
            endpoint: "http://localhost:3200".into(),
            spans: Vec::new(),
            slower_than: None,
            push_interval: Duration::from_secs(10),
            tenant: None,
            headers: Headers::default(),
        }
    }
}

fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, message: message.into() }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let val = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(attrs) = val("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in attrs.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    invalid("OTEL_RESOURCE_ATTRIBUTES", format!("{pair:?} is not key=value"))
                })?;
                // W3C-baggage-style percent-encoding.
                c.resource.push((decode_lossy(k.trim()), decode_lossy(v.trim())));
            }
        }
        // OTEL_SERVICE_NAME wins over service.name in the resource attributes.
        if let Some(name) = val("OTEL_SERVICE_NAME") {
            c.service_name = name;
        } else if let Some((_, v)) = c.resource.iter().find(|(k, _)| k == "service.name") {
            c.service_name = v.clone();
        }
        c.resource.retain(|(k, _)| k != "service.name");
        if let Some(p) = val("OTEL_EXPORTER_OTLP_PROTOCOL") {
            c.protocol = match p.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                other => {
                    return Err(invalid(
                        "OTEL_EXPORTER_OTLP_PROTOCOL",
                        format!("{other:?} (use grpc or http/protobuf)"),
                    ));
                }
            };
            if c.protocol == Protocol::HttpProtobuf {
                c.endpoint = "http://localhost:4318".into();
            }
        }
        if let Some(e) = val("OTEL_EXPORTER_OTLP_ENDPOINT") {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("{e:?} must start with http:// or https://"),
                ));
            }
            c.endpoint = e;
        }
        if let Some(e) = val("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    format!("{e:?} must start with http:// or https://"),
                ));
            }
            c.traces_endpoint = Some(e);
        }
        let headers =
            |var: &'static str| val(var).map(|v| Headers::parse(&v, var)).unwrap_or_default();
        c.headers = headers("OTEL_EXPORTER_OTLP_HEADERS");
        c.traces_headers = headers("OTEL_EXPORTER_OTLP_TRACES_HEADERS");
        let tls = |prefix: &str| {
            let path = |name: &str| val(&format!("{prefix}{name}")).map(PathBuf::from);
            TlsConfig {
                certificate: path("CERTIFICATE"),
                client_certificate: path("CLIENT_CERTIFICATE"),
                client_key: path("CLIENT_KEY"),
            }
        };
        c.tls = tls("OTEL_EXPORTER_OTLP_");
        c.traces_tls = tls("OTEL_EXPORTER_OTLP_TRACES_");
        let count = |var: &'static str, default: usize| -> Result<usize, ConfigError> {
            match val(var) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(var, format!("{v:?} is not a positive integer"))),
            }
        };
        let millis = |var: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match val(var) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| invalid(var, format!("{v:?} is not a number of milliseconds"))),
            }
        };
        let d = BatchConfig::default();
        let timeout = millis("OTEL_EXPORTER_OTLP_TIMEOUT", d.export_timeout)?;
        c.batch = BatchConfig {
            max_queue_size: count("OTEL_BSP_MAX_QUEUE_SIZE", d.max_queue_size)?,
            scheduled_delay: millis("OTEL_BSP_SCHEDULE_DELAY", d.scheduled_delay)?,
            max_export_batch_size: count(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                d.max_export_batch_size,
            )?,
            export_timeout: millis("OTEL_BSP_EXPORT_TIMEOUT", timeout)?,
        };
        c.disabled = val("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if let Some(p) = get("OTEL_PROPAGATORS") {
            c.propagators = Propagators::parse(&p)?;
        }
        let arg = val("OTEL_TRACES_SAMPLER_ARG");
        let ratio = || -> Result<f64, ConfigError> {
            match &arg {
                None => Ok(1.0),
                Some(a) => {
                    a.parse::<f64>().ok().filter(|r| (0.0..=1.0).contains(r)).ok_or_else(|| {
                        invalid(
                            "OTEL_TRACES_SAMPLER_ARG",
                            format!("{a:?} is not a ratio in [0, 1]"),
                        )
                    })
                }
            }
        };
        if let Some(s) = val("OTEL_TRACES_SAMPLER") {
            c.sampler = match s.as_str() {
                "always_on" => Sampler::AlwaysOn,
                "always_off" => Sampler::AlwaysOff,
                "traceidratio" => Sampler::Ratio(ratio()?),
                "parentbased_always_on" => Sampler::ParentBased(1.0),
                "parentbased_always_off" => Sampler::ParentBased(0.0),
                "parentbased_traceidratio" => Sampler::ParentBased(ratio()?),
                other => {
                    return Err(invalid(
                        "OTEL_TRACES_SAMPLER",
                        format!("unsupported sampler {other:?}"),
                    ));
                }
            };
        }
        c.profiling = profiling_from_lookup(&val)?;
        Ok(c)
    }
}

/// `SKEIN_PROFILING=true` and its settings; the other variables only count when it is set.
fn profiling_from_lookup(
    val: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ProfilingConfig>, ConfigError> {
    if !val("SKEIN_PROFILING").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let duration = |var: &'static str| -> Result<Option<Duration>, ConfigError> {
        val(var)
            .map(|v| {
                humantime::parse_duration(&v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| invalid(var, format!("{v:?} is not a duration like 100ms")))
            })
            .transpose()
    };
    let d = ProfilingConfig::default();
    let frequency_hz = match val("SKEIN_PROFILING_HZ") {
        None => d.frequency_hz,
        Some(v) => {
            v.parse::<u32>().ok().filter(|hz| (1..=10_000).contains(hz)).ok_or_else(|| {
                invalid("SKEIN_PROFILING_HZ", format!("{v:?} is not a frequency in 1..=10000"))
            })?
        }
    };
    let endpoint = match val("SKEIN_PROFILING_ENDPOINT") {
        None => d.endpoint,
        Some(e) if e.starts_with("http://") || e.starts_with("https://") => e,
        Some(e) => {
            return Err(invalid(
                "SKEIN_PROFILING_ENDPOINT",
                format!("{e:?} must start with http:// or https://"),
            ));
        }
    };
    Ok(Some(ProfilingConfig {
        frequency_hz,
        endpoint,
        spans: val("SKEIN_PROFILING_SPANS")
            .map(|v| {
                v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            })
            .unwrap_or_default(),
        slower_than: duration("SKEIN_PROFILING_SLOWER_THAN")?,
        push_interval: duration("SKEIN_PROFILING_PUSH_INTERVAL")?.unwrap_or(d.push_interval),
        tenant: val("SKEIN_PROFILING_TENANT"),
        headers: val("SKEIN_PROFILING_HEADERS")
            .map(|v| Headers::parse(&v, "SKEIN_PROFILING_HEADERS"))
            .unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_without_environment() {
        assert_eq!(cfg(&[]).unwrap(), Config::default());
    }

    #[test]
    fn reads_every_variable() {
        let c = cfg(&[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=fromres,deployment.environment=prod%20eu"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_PROPAGATORS", "b3multi"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(c.service_name, "fromres");
        assert_eq!(c.resource, vec![("deployment.environment".into(), "prod eu".into())]);
        assert_eq!(c.endpoint, "http://localhost:4318");
        assert_eq!(c.sampler, Sampler::ParentBased(0.25));
        let c = cfg(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://h:1/custom"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])
        .unwrap();
        assert_eq!(c.batch.max_queue_size, 100);
        assert_eq!(c.batch.scheduled_delay, Duration::from_millis(50));
        assert_eq!(c.batch.export_timeout, Duration::from_secs(2));
        assert_eq!(c.traces_endpoint.as_deref(), Some("http://h:1/custom"));
        assert!(c.disabled);
        let c =
            cfg(&[("OTEL_SERVICE_NAME", "svc"), ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x")])
                .unwrap();
        assert_eq!(c.service_name, "svc");
    }

    #[test]
    fn profiling_is_off_unless_enabled_and_reads_its_variables() {
        assert_eq!(cfg(&[("SKEIN_PROFILING_HZ", "999")]).unwrap().profiling, None);
        let p = cfg(&[("SKEIN_PROFILING", "true")]).unwrap().profiling.unwrap();
        assert_eq!(p, ProfilingConfig::default());
        assert_eq!(p.frequency_hz, 99);
        assert_eq!(p.endpoint, "http://localhost:3200");
        assert_eq!(p.push_interval, Duration::from_secs(10));
        let p = cfg(&[
            ("SKEIN_PROFILING", "TRUE"),
            ("SKEIN_PROFILING_HZ", "999"),
            ("SKEIN_PROFILING_ENDPOINT", "http://collector:3200/"),
            ("SKEIN_PROFILING_SPANS", "checkout, GET /cart,,"),
            ("SKEIN_PROFILING_SLOWER_THAN", "100ms"),
            ("SKEIN_PROFILING_PUSH_INTERVAL", "15s"),
            ("SKEIN_PROFILING_TENANT", "team-a"),
        ])
        .unwrap()
        .profiling
        .unwrap();
        assert_eq!(p.frequency_hz, 999);
        assert_eq!(p.endpoint, "http://collector:3200/");
        assert_eq!(p.spans, vec!["checkout".to_string(), "GET /cart".to_string()]);
        assert_eq!(p.slower_than, Some(Duration::from_millis(100)));
        assert_eq!(p.push_interval, Duration::from_secs(15));
        assert_eq!(p.tenant.as_deref(), Some("team-a"));
        for (k, v) in [
            ("SKEIN_PROFILING_HZ", "0"),
            ("SKEIN_PROFILING_HZ", "fast"),
            ("SKEIN_PROFILING_ENDPOINT", "collector:3200"),
            ("SKEIN_PROFILING_SLOWER_THAN", "slow"),
            ("SKEIN_PROFILING_PUSH_INTERVAL", "0s"),
        ] {
            let e = cfg(&[("SKEIN_PROFILING", "true"), (k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
    }

    #[test]
    fn headers_and_certificate_files_per_signal() {
        let c = cfg(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20a,x-a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Authorization=Bearer%20b"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", " /etc/key.pem "),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/traces-ca.pem"),
            ("SKEIN_PROFILING", "true"),
            ("SKEIN_PROFILING_HEADERS", "x-p=2"),
        ])
        .unwrap();
        let value = |h: &Headers, n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(String::from);
        let traces = c.headers.merged(&c.traces_headers);
        assert_eq!(value(&traces, "authorization").as_deref(), Some("Bearer b"));
        assert_eq!(value(&traces, "x-a").as_deref(), Some("1"));
        assert_eq!(value(&c.headers, "authorization").as_deref(), Some("Bearer a"));
        let p = c.profiling.as_ref().map(|p| p.headers.clone()).unwrap_or_default();
        assert_eq!(p.names().collect::<Vec<_>>(), vec!["x-p"]);
        assert_eq!(c.tls.certificate, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.tls.client_key, Some(PathBuf::from("/etc/key.pem")));
        let t = c.traces_tls.or(&c.tls);
        assert_eq!(t.certificate, Some(PathBuf::from("/etc/traces-ca.pem")));
        assert_eq!(t.client_key, Some(PathBuf::from("/etc/key.pem")));
        // A malformed entry is skipped, not an error; its value is in no output.
        let c = cfg(&[("OTEL_EXPORTER_OTLP_HEADERS", "Bearer s3cret,ok=1")]).unwrap();
        assert_eq!(c.headers.names().collect::<Vec<_>>(), vec!["ok"]);
        assert_eq!(c.headers.skipped().len(), 1);
        assert!(!format!("{c:?}{:?}", c.headers.skipped()).contains("s3cret"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
        let e = cfg(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")])
            .unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"));
    }
}
