//! Span-aware sampling CPU profiler (off unless enabled).
//!
//! `SIGPROF` fires every 1/hz s of process CPU time on the thread that used it; the handler
//! copies that thread's registers, the top of its stack and the span record it published into
//! a preallocated ring. A drain thread unwinds the copies (framehop, `.eh_frame`), a push
//! thread symbolises, builds a pprof profile labelled `span_id`/`span_name`/`trace_id`/
//! `service_name` and POSTs it to `<endpoint>/ingest` every push interval. See `DESIGN.md`
//! beside this file for the design and the signal-safety argument.
//!
//! Hooks the span machinery calls (through `crate::span::hooks`) only while profiling is
//! enabled (one relaxed atomic load otherwise): `on_start` opens profile scopes (local roots
//! and spans named in the configuration carry `pyroscope.profile.id`), `publish` tells the
//! sampler which span is active on this thread (every context push/pop, i.e. every poll of an
//! instrumented future), `on_end` marks spans slower than the configured threshold.

//!
//! Without the `profiling` cargo feature (on by default) only the configuration, error and
//! statistics types remain: the profiler and its dependencies are not compiled, the span hooks
//! are empty, and [`install`] fails with [`ProfilingError::NotBuilt`].

#[cfg(feature = "profiling")]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(feature = "profiling")]
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use crate::config::Config;
#[cfg(feature = "profiling")]
use crate::http_client::HttpClient;
#[cfg(feature = "profiling")]
use crate::span::hooks::{self, Hooks};
#[cfg(feature = "profiling")]
use crate::span::{Inner, KeyValue, MAX_ATTRIBUTES, Record, Scope, Span};
#[cfg(feature = "profiling")]
use crate::tls::Tls;

#[cfg(feature = "profiling")]
mod collect;
#[cfg(feature = "profiling")]
mod modules;
#[cfg(feature = "profiling")]
pub mod pprof;
#[cfg(feature = "profiling")]
mod push;
#[cfg(feature = "profiling")]
mod sampler;
#[cfg(feature = "profiling")]
mod symbols;

pub use crate::config::ProfilingConfig;
/// Test probes: what SIGPROF and ITIMER_PROF are set to in this process.
#[cfg(all(feature = "profiling", any(test, feature = "test-support")))]
#[doc(hidden)]
pub use sampler::{SigprofDisposition, profiling_timer_armed, sigprof_disposition};

/// The attribute Grafana's traces-to-profiles link looks for.
pub const PROFILE_ID_ATTRIBUTE: &str = "pyroscope.profile.id";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfilingError {
    #[error("span profiling is only supported on Linux (x86_64, aarch64)")]
    Unsupported,
    #[error("span profiling is not built in (skein-instrument's `profiling` feature is off)")]
    NotBuilt,
    #[error("profiling was already started in this process")]
    AlreadyInstalled,
    #[error("another SIGPROF handler is installed (is another profiler running?)")]
    SignalInUse,
    #[error("invalid profiling frequency {0} Hz (1 to 10000)")]
    Frequency(u32),
    #[error("invalid profiling push interval {0:?}")]
    PushInterval(Duration),
    #[error("invalid profiling endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("profile push TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{what} failed: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a profiler thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Counters since profiling started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfilingStats {
    /// Samples the signal handler recorded.
    pub samples: u64,
    /// Samples dropped because no ring slot was free (the drain thread fell behind).
    pub dropped_ring_full: u64,
    /// Samples unwound by the drain thread.
    pub unwound: u64,
    /// Of those, stacks not unwound to their root (copy limit, thread without known stack).
    pub truncated: u64,
    /// Time spent unwinding, in total.
    pub unwind_nanos: u64,
    /// Samples dropped because a push interval already held too many distinct stacks.
    pub dropped_too_many_stacks: u64,
    pub profiles_pushed: u64,
    /// Pushes that failed or timed out (the profile is dropped).
    pub profiles_failed: u64,
    /// Profiles dropped because two were already waiting to be pushed.
    pub profiles_dropped: u64,
    /// Compressed bytes pushed successfully.
    pub bytes_pushed: u64,
    /// CPU time the process used while profiling, and the CPU time its samples account for
    /// (samples × period). The second falls short when the requested rate exceeds what the
    /// kernel delivers (about CONFIG_HZ signals per busy core per second; see DESIGN.md).
    pub process_cpu_nanos: u64,
    pub sampled_cpu_nanos: u64,
}

#[cfg(feature = "profiling")]
struct Counters {
    unwound: AtomicU64,
    truncated: AtomicU64,
    unwind_nanos: AtomicU64,
    dropped_too_many_stacks: AtomicU64,
    profiles_pushed: AtomicU64,
    profiles_failed: AtomicU64,
    profiles_dropped: AtomicU64,
    bytes_pushed: AtomicU64,
    process_cpu_nanos: AtomicU64,
    sampled_cpu_nanos: AtomicU64,
}

#[cfg(feature = "profiling")]
static COUNTERS: Counters = Counters {
    unwound: AtomicU64::new(0),
    truncated: AtomicU64::new(0),
    unwind_nanos: AtomicU64::new(0),
    dropped_too_many_stacks: AtomicU64::new(0),
    profiles_pushed: AtomicU64::new(0),
    profiles_failed: AtomicU64::new(0),
    profiles_dropped: AtomicU64::new(0),
    bytes_pushed: AtomicU64::new(0),
    process_cpu_nanos: AtomicU64::new(0),
    sampled_cpu_nanos: AtomicU64::new(0),
};

#[cfg(feature = "profiling")]
fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(feature = "profiling")]
pub fn stats() -> ProfilingStats {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    ProfilingStats {
        samples: get(&sampler::COUNTERS.samples),
        dropped_ring_full: get(&sampler::COUNTERS.dropped_ring_full),
        unwound: get(&COUNTERS.unwound),
        truncated: get(&COUNTERS.truncated),
        unwind_nanos: get(&COUNTERS.unwind_nanos),
        dropped_too_many_stacks: get(&COUNTERS.dropped_too_many_stacks),
        profiles_pushed: get(&COUNTERS.profiles_pushed),
        profiles_failed: get(&COUNTERS.profiles_failed),
        profiles_dropped: get(&COUNTERS.profiles_dropped),
        bytes_pushed: get(&COUNTERS.bytes_pushed),
        process_cpu_nanos: get(&COUNTERS.process_cpu_nanos),
        sampled_cpu_nanos: get(&COUNTERS.sampled_cpu_nanos),
    }
}

#[cfg(feature = "profiling")]
struct Profiler {
    spans: Vec<String>,
    slower_than: Option<Duration>,
    stop: AtomicBool,
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

#[cfg(feature = "profiling")]
static PROFILER: OnceLock<Profiler> = OnceLock::new();

#[cfg(feature = "profiling")]
/// Starts profiling for `service`: installs the SIGPROF handler, arms the timer and starts
/// the drain and push threads. Once per process.
/// Pushes carry `config`'s general headers (under `cfg.headers`) and use its general TLS files.
pub(crate) fn install(config: &Config, cfg: &ProfilingConfig) -> Result<(), ProfilingError> {
    if !sampler::SUPPORTED {
        return Err(ProfilingError::Unsupported);
    }
    if !(1..=10_000).contains(&cfg.frequency_hz) {
        return Err(ProfilingError::Frequency(cfg.frequency_hz));
    }
    if cfg.push_interval.is_zero() {
        return Err(ProfilingError::PushInterval(cfg.push_interval));
    }
    let base = cfg.endpoint.trim_end_matches('/');
    let ingest = reqwest::Url::parse(&format!("{base}/ingest"))
        .map_err(|e| ProfilingError::Endpoint(cfg.endpoint.clone(), e.to_string()))?;
    if !matches!(ingest.scheme(), "http" | "https") {
        return Err(ProfilingError::Endpoint(cfg.endpoint.clone(), "not http(s)".into()));
    }
    let tls = Tls::load(&config.tls)?;
    let client = HttpClient::new(
        ingest.scheme() == "https",
        &tls,
        &config.headers.merged(&cfg.headers),
        push::PUSH_TIMEOUT,
    )?;
    cfg.headers.warn_skipped();
    let (done_tx, done_rx) = mpsc::channel();
    let profiler = Profiler {
        spans: cfg.spans.clone(),
        slower_than: cfg.slower_than,
        stop: AtomicBool::new(false),
        done: Mutex::new(Some(done_rx)),
    };
    if PROFILER.set(profiler).is_err() {
        return Err(ProfilingError::AlreadyInstalled);
    }
    let Some(p) = PROFILER.get() else { return Err(ProfilingError::AlreadyInstalled) };
    // Only this profiler installs hooks, and only once (PROFILER was unset).
    hooks::install(Hooks { on_start, publish, on_end });
    let target = push::Target {
        ingest,
        service: config.service_name.clone(),
        hz: cfg.frequency_hz,
        tenant: cfg.tenant.clone(),
    };
    let (tx, rx) = mpsc::sync_channel(2);
    std::thread::Builder::new().name("skein-profile-push".into()).spawn(move || {
        push::run(rx, target, client);
        let _ = done_tx.send(());
    })?;
    let interval = cfg.push_interval;
    let ring = sampler::ring_or_init();
    let drain = std::thread::Builder::new()
        .name("skein-profile-drain".into())
        .spawn(move || collect::run(&p.stop, ring, interval, tx));
    if let Err(e) = drain {
        // The push thread ends when its channel's sender (moved into the failed spawn
        // closure, now dropped) disconnects.
        p.stop.store(true, Ordering::Release);
        return Err(ProfilingError::Thread(e));
    }
    // The installing thread (usually main) has its stack bounds recorded now; other threads
    // get theirs at their first span (or via `register_current_thread`).
    sampler::register_current_thread();
    if let Err(e) = sampler::start(cfg.frequency_hz) {
        stop_threads(p, Duration::from_secs(1));
        return Err(e);
    }
    hooks::set_enabled(true);
    Ok(())
}

#[cfg(feature = "profiling")]
/// Stops sampling, pushes a last profile and waits for it (up to the push timeout).
pub(crate) fn shutdown() {
    let Some(p) = PROFILER.get() else { return };
    if p.stop.load(Ordering::Acquire) {
        return;
    }
    hooks::set_enabled(false);
    sampler::stop();
    stop_threads(p, push::PUSH_TIMEOUT + Duration::from_secs(2));
}

#[cfg(feature = "profiling")]
fn stop_threads(p: &Profiler, wait: Duration) {
    p.stop.store(true, Ordering::Release);
    if let Some(ring) = sampler::ring() {
        ring.wake();
    }
    let done = p.done.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(done) = done {
        let _ = done.recv_timeout(wait);
    }
}

#[cfg(feature = "profiling")]
/// Records the calling thread's stack bounds, so its samples carry full stacks even before it
/// runs its first span (threads that never do otherwise get leaf-only samples). Cheap to call
/// more than once; e.g. from tokio's `on_thread_start`.
pub fn register_current_thread() {
    sampler::register_current_thread();
}

#[cfg(feature = "profiling")]
/// A span starts (hook): local roots (no in-process parent) and spans whose name was
/// configured open a profile scope of their own and carry `pyroscope.profile.id`.
fn on_start(r: &mut Record) {
    let named = PROFILER.get().is_some_and(|p| p.spans.iter().any(|n| *n == *r.name));
    if named || r.ctx.profile_scope.is_none() {
        r.ctx.profile_scope = Some(Scope { id: r.ctx.span_id, name: Arc::from(&*r.name) });
        add_profile_id(r);
    }
}

#[cfg(feature = "profiling")]
fn add_profile_id(r: &mut Record) {
    if r.attributes.len() < MAX_ATTRIBUTES {
        r.attributes.push(KeyValue::new(PROFILE_ID_ATTRIBUTE, r.ctx.span_id.to_hex()));
    } else {
        r.extra().dropped_attributes += 1;
    }
}

#[cfg(feature = "profiling")]
/// The active span of this thread changed (hook): `stack` is the thread's span stack,
/// innermost last.
fn publish(stack: &[Span]) {
    let top = match stack.last() {
        Some(Span(Inner::Recording(r))) => r,
        // No span, or one that is not recorded (its trace is not exported: nothing to link).
        _ => return sampler::publish(sampler::Key::NONE, |s| *s = sampler::Snapshot::EMPTY),
    };
    let key = sampler::Key {
        span: u64::from_ne_bytes(top.ctx.span_id.0),
        name_ptr: top.name.as_ptr() as usize,
        name_len: top.name.len(),
        depth: stack.len(),
    };
    let chain = PROFILER.get().is_some_and(|p| p.slower_than.is_some());
    sampler::publish(key, |s| {
        s.active = true;
        s.trace_id = top.ctx.trace_id.0;
        s.span_id = top.ctx.span_id.0;
        s.set_span_name(&top.name);
        let scope_id = match &top.ctx.profile_scope {
            // The scope's own current name (it may have been renamed since it started).
            Some(scope) if scope.id == top.ctx.span_id => {
                s.set_scope_name(&top.name);
                scope.id
            }
            Some(scope) => {
                s.set_scope_name(&scope.name);
                scope.id
            }
            // Started before profiling was enabled: it is its own scope.
            None => {
                s.set_scope_name(&top.name);
                top.ctx.span_id
            }
        };
        s.scope_id = scope_id.0;
        s.chain_len = 0;
        if chain {
            for span in stack.iter().rev() {
                let Span(Inner::Recording(r)) = span else { break };
                let scope = r.ctx.profile_scope.as_ref().map_or(r.ctx.span_id, |s| s.id);
                if scope != scope_id || usize::from(s.chain_len) >= sampler::CHAIN_CAP {
                    break;
                }
                s.chain[usize::from(s.chain_len)] = r.ctx.span_id.0;
                s.chain_len += 1;
                if r.ctx.span_id == scope_id {
                    break;
                }
            }
        }
    });
}

#[cfg(feature = "profiling")]
/// A span ends (hook): if it ran longer than the configured threshold and is not a scope already,
/// it gets `pyroscope.profile.id` and its samples (those still to be pushed) its id.
fn on_end(r: &mut Record) {
    let Some(limit) = PROFILER.get().and_then(|p| p.slower_than) else { return };
    if r.ctx.profile_scope.as_ref().is_some_and(|s| s.id == r.ctx.span_id) {
        return;
    }
    if r.end.saturating_duration_since(r.start) >= limit {
        add_profile_id(r);
        push::remember_slow(r.ctx.span_id.0, &r.name);
    }
}

#[cfg(feature = "profiling")]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_profiling_the_hooks_are_off_and_no_handler_is_installed() {
        // The unit-test binary never starts profiling.
        assert!(!hooks::enabled());
        assert_eq!(sigprof_disposition(), SigprofDisposition::Default);
        assert!(!profiling_timer_armed());
        assert_eq!(stats().samples, 0);
    }
}

/// Without the `profiling` feature: all zero.
#[cfg(not(feature = "profiling"))]
pub fn stats() -> ProfilingStats {
    ProfilingStats::default()
}

#[cfg(not(feature = "profiling"))]
pub(crate) fn install(_: &Config, _: &ProfilingConfig) -> Result<(), ProfilingError> {
    Err(ProfilingError::NotBuilt)
}

#[cfg(not(feature = "profiling"))]
pub(crate) fn shutdown() {}

/// Without the `profiling` feature: does nothing.
#[cfg(not(feature = "profiling"))]
pub fn register_current_thread() {}

#[cfg(all(test, not(feature = "profiling")))]
mod off_tests {
    use super::*;

    #[test]
    fn without_the_feature_profiling_cannot_be_installed_and_reports_nothing() {
        let cfg = Config::default();
        let p = ProfilingConfig::default();
        assert!(matches!(install(&cfg, &p), Err(ProfilingError::NotBuilt)));
        assert_eq!(stats(), ProfilingStats::default());
    }
}
