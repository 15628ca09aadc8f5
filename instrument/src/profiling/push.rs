//! The push thread: symbolises a batch, builds the pprof profile with span labels, gzips it
//! and POSTs it to `<endpoint>/ingest`. A failed or timed-out push is dropped and counted (no
//! retry queue); at most two batches wait, so memory stays bounded while the collector is down.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::collect::{Batch, SpanLabels};
use super::pprof::{self, Line, Mapping, Profile};
use super::symbols::Symbolizer;
use super::{COUNTERS, ProfilingStats, bump};
use crate::http_client::{self, HttpClient};
use crate::propagation::hex;

/// How long one push may take.
pub(super) const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans remembered as "slower than" per interval; beyond this they are not relabelled.
const SLOW_MAX: usize = 10_000;

/// Spans that ended slower than `SKEIN_PROFILING_SLOWER_THAN`, by id: their samples are
/// labelled with their own id (they got `pyroscope.profile.id` when they ended). Kept for two
/// builds, so samples still in flight when the span ended are relabelled too.
#[derive(Default)]
pub(super) struct SlowSpans {
    current: HashMap<[u8; 8], Arc<str>>,
    previous: HashMap<[u8; 8], Arc<str>>,
}

pub(super) static SLOW: Mutex<Option<SlowSpans>> = Mutex::new(None);

/// Remembers a slow span (called from `on_end`, for spans over the threshold only).
pub(super) fn remember_slow(id: [u8; 8], name: &str) {
    let mut slow = SLOW.lock().unwrap_or_else(|e| e.into_inner());
    let slow = slow.get_or_insert_with(SlowSpans::default);
    if slow.current.len() < SLOW_MAX {
        slow.current.insert(id, Arc::from(name));
    }
}

impl SlowSpans {
    fn get(&self, id: &[u8; 8]) -> Option<&Arc<str>> {
        self.current.get(id).or_else(|| self.previous.get(id))
    }

    /// The span a sample's profile belongs to: the innermost span of its scope that ended
    /// slow, else the scope.
    fn scope_of<'a>(&'a self, s: &'a SpanLabels) -> ([u8; 8], &'a str) {
        for id in s.chain.iter() {
            if *id == s.scope_id {
                break;
            }
            if let Some(name) = self.get(id) {
                return (*id, name);
            }
        }
        (s.scope_id, &s.scope_name)
    }

    fn rotate(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }
}

/// What the push thread needs to know.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub ingest: reqwest::Url,
    pub service: String,
    pub hz: u32,
    pub tenant: Option<String>,
}

/// Builds the pprof profile of a batch.
pub(super) fn build(batch: &Batch, sym: &mut Symbolizer, t: &Target, slow: &SlowSpans) -> Profile {
    let period = 1_000_000_000 / i64::from(t.hz.max(1));
    let mut b = pprof::Builder::new();
    let cpu = b.value_type("cpu", "nanoseconds");
    let count = b.value_type("samples", "count");
    let mapping_ids: Vec<u64> = batch
        .modules
        .iter()
        .map(|m| {
            let mapping = Mapping {
                memory_start: m.text.start,
                memory_limit: m.text.end,
                filename: b.string(&m.name),
                build_id: b.string(&m.build_id),
                has_functions: true,
                has_filenames: true,
                has_line_numbers: true,
                has_inline_frames: true,
                ..Default::default()
            };
            b.mapping(mapping)
        })
        .collect();
    let mut locations: HashMap<u64, u64> = HashMap::new();
    let mut truncated_location = None;
    let service = b.label("service_name", &t.service);
    let mut samples = Vec::with_capacity(batch.samples.len());
    for (key, &n) in &batch.samples {
        let mut ids = Vec::with_capacity(key.frames.len() + 1);
        for &addr in key.frames.iter() {
            let id = match locations.get(&addr) {
                Some(&id) => id,
                None => {
                    let lines = sym
                        .resolve(&batch.modules, addr)
                        .iter()
                        .map(|f| Line {
                            function_id: b.function(&f.function, &f.file),
                            line: i64::from(f.line),
                            column: 0,
                        })
                        .collect();
                    let mapping = super::modules::find(&batch.modules, addr)
                        .and_then(|(i, _)| mapping_ids.get(i).copied())
                        .unwrap_or(0);
                    let id = b.location(mapping, addr, lines);
                    locations.insert(addr, id);
                    id
                }
            };
            ids.push(id);
        }
        if key.truncated {
            // One synthetic root for stacks that were not unwound to the end, so they group
            // together in a flame graph instead of posing as roots of their own.
            let id = *truncated_location.get_or_insert_with(|| {
                let f = b.function("[truncated stack]", "");
                b.location(0, 0, vec![Line { function_id: f, line: 0, column: 0 }])
            });
            ids.push(id);
        }
        let mut label = vec![service];
        if let Some(s) = &key.span {
            let (scope, scope_name) = slow.scope_of(s);
            label.extend([
                b.label("span_id", &hex(&scope)),
                b.label("span_name", scope_name),
                b.label("trace_id", &hex(&s.trace_id)),
                b.label("skein_span_id", &hex(&s.span_id)),
                b.label("skein_span_name", &s.span_name),
            ]);
        }
        samples.push(pprof::Sample {
            location_id: ids,
            value: vec![period.saturating_mul(n as i64), n as i64],
            label,
        });
    }
    let from = unix_nanos(batch.from);
    let p = b.profile_mut();
    p.sample = samples;
    p.sample_type = vec![cpu, count];
    p.default_sample_type = cpu.r#type;
    p.period_type = Some(cpu);
    p.period = period;
    p.time_nanos = from;
    p.duration_nanos = unix_nanos(batch.until).saturating_sub(from).max(0);
    b.finish()
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// `<endpoint>/ingest?name=<svc>.cpu{service_name=<svc>}&from&until&format=pprof&…`
pub(super) fn ingest_url(t: &Target, from: SystemTime, until: SystemTime) -> reqwest::Url {
    // The name is parsed as `app{label=value,…}`: keep the service name from breaking it.
    let svc: String =
        t.service.chars().map(|c| if "{}=,\"".contains(c) { '_' } else { c }).collect();
    let mut url = t.ingest.clone();
    url.query_pairs_mut()
        .append_pair("name", &format!("{svc}.cpu{{service_name={svc}}}"))
        .append_pair("from", &unix_secs(from).to_string())
        .append_pair("until", &unix_secs(until).max(unix_secs(from)).to_string())
        .append_pair("format", "pprof")
        .append_pair("sampleRate", &t.hz.to_string())
        .append_pair("spyName", "skein-instrument");
    url
}

async fn send(
    client: &HttpClient,
    url: reqwest::Url,
    body: Vec<u8>,
    tenant: Option<&str>,
) -> Result<(), String> {
    let mut extra = vec![(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    )];
    if let Some(t) = tenant {
        let v = http::HeaderValue::from_str(t).map_err(|_| "invalid tenant header".to_string())?;
        extra.push((http::HeaderName::from_static("x-scope-orgid"), v));
    }
    client.post(http_client::uri(url.as_str())?, &extra, body).await
}

/// The push thread: one batch at a time until the final one.
pub(super) fn run(rx: std::sync::mpsc::Receiver<Batch>, t: Target, client: HttpClient) {
    crate::suppress::suppress_on_this_thread();
    super::sampler::register_current_thread();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skein-instrument: cannot start the profile push runtime: {e}");
            return;
        }
    };
    let mut sym = Symbolizer::new();
    let mut reporter = Reporter::default();
    while let Ok(batch) = rx.recv() {
        let sampled: u64 =
            batch.samples.values().sum::<u64>() * (1_000_000_000 / u64::from(t.hz.max(1)));
        let cpu = batch.cpu_time.as_nanos() as u64;
        bump(&COUNTERS.process_cpu_nanos, cpu);
        bump(&COUNTERS.sampled_cpu_nanos, sampled);
        // Samples account for much less CPU than was used: the rate is saturated.
        if cpu >= 200_000_000 && sampled < cpu / 4 * 3 {
            reporter.saturated = Some((sampled, cpu));
        }
        if !batch.samples.is_empty() {
            let profile = {
                let mut slow = SLOW.lock().unwrap_or_else(|e| e.into_inner());
                let slow = slow.get_or_insert_with(SlowSpans::default);
                let p = build(&batch, &mut sym, &t, slow);
                slow.rotate();
                p
            };
            let body = gzip(&profile.encode_to_vec());
            let len = body.len() as u64;
            let url = ingest_url(&t, batch.from, batch.until);
            let sent = rt.block_on(async {
                tokio::time::timeout(PUSH_TIMEOUT, send(&client, url, body, t.tenant.as_deref()))
                    .await
                    .unwrap_or_else(|_| Err(format!("timed out after {PUSH_TIMEOUT:?}")))
            });
            match sent {
                Ok(()) => {
                    bump(&COUNTERS.profiles_pushed, 1);
                    bump(&COUNTERS.bytes_pushed, len);
                }
                Err(e) => {
                    bump(&COUNTERS.profiles_failed, 1);
                    reporter.last_error = Some(e);
                }
            }
        }
        reporter.maybe_report(&super::stats(), batch.last);
        if batch.last {
            return;
        }
    }
}

/// Warns about dropped samples and failed pushes, at most every ten seconds (and at shutdown),
/// like the span exporter does for dropped spans.
#[derive(Default)]
struct Reporter {
    reported: ProfilingStats,
    at: Option<Instant>,
    last_error: Option<String>,
    /// (sampled, used) CPU nanoseconds of an interval whose samples fell short.
    saturated: Option<(u64, u64)>,
}

impl Reporter {
    fn maybe_report(&mut self, now: &ProfilingStats, force: bool) {
        let r = &self.reported;
        let ring = now.dropped_ring_full - r.dropped_ring_full;
        let stacks = now.dropped_too_many_stacks - r.dropped_too_many_stacks;
        let failed = now.profiles_failed - r.profiles_failed;
        let queued = now.profiles_dropped - r.profiles_dropped;
        if (ring + stacks + failed + queued == 0 && self.saturated.is_none())
            || (!force && self.at.is_some_and(|t| t.elapsed() < Duration::from_secs(10)))
        {
            return;
        }
        if let Some((sampled, used)) = self.saturated.take() {
            tracing::warn!(
                target: "skein_instrument",
                sampled_cpu_ms = sampled / 1_000_000,
                used_cpu_ms = used / 1_000_000,
                "profiling samples account for less CPU than the process used: the sampling \
                 rate is above what the kernel delivers; lower SKEIN_PROFILING_HZ"
            );
        }
        tracing::warn!(
            target: "skein_instrument",
            samples_ring_full = ring,
            samples_too_many_stacks = stacks,
            profiles_failed = failed,
            profiles_queue_full = queued,
            last_error = self.last_error.as_deref().unwrap_or(""),
            "profiling dropped data"
        );
        self.reported = *now;
        self.at = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiling::collect::StackKey;

    fn labels(scope: u8, chain: &[u8]) -> Arc<SpanLabels> {
        Arc::new(SpanLabels {
            trace_id: [9; 16],
            span_id: [chain.first().copied().unwrap_or(scope); 8],
            span_name: "inner".into(),
            scope_id: [scope; 8],
            scope_name: "root".into(),
            chain: chain.iter().map(|c| [*c; 8]).collect(),
        })
    }

    #[test]
    fn builds_a_labelled_cpu_profile_and_relabels_slow_spans() {
        let modules = Arc::new(super::super::modules::loaded_modules());
        let here = builds_a_labelled_cpu_profile_and_relabels_slow_spans as fn() as usize as u64;
        let mut samples = HashMap::new();
        samples.insert(StackKey { frames: vec![here + 1].into(), truncated: false, span: None }, 3);
        samples.insert(
            StackKey {
                frames: vec![here + 1].into(),
                truncated: true,
                span: Some(labels(1, &[3, 2, 1])),
            },
            2,
        );
        samples.insert(
            StackKey {
                frames: vec![here + 1].into(),
                truncated: false,
                span: Some(labels(1, &[4, 1])),
            },
            1,
        );
        let from = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let batch = Batch {
            from,
            until: from + Duration::from_secs(10),
            samples,
            modules,
            cpu_time: Duration::ZERO,
            last: false,
        };
        let t = Target {
            ingest: reqwest::Url::parse("http://127.0.0.1:3200/ingest").expect("url"),
            service: "svc".into(),
            hz: 100,
            tenant: None,
        };
        let mut slow = SlowSpans::default();
        slow.current.insert([2; 8], "slow-one".into());
        let p = build(&batch, &mut Symbolizer::new(), &t, &slow);
        let back = Profile::decode(gzip_roundtrip(&p.encode_to_vec()).as_slice()).expect("decode");
        assert_eq!(back, p);
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.str(p.sample_type[0].r#type), "cpu");
        assert_eq!(p.str(p.sample_type[1].unit), "count");
        assert_eq!(p.duration_nanos, 10_000_000_000);
        let mut by_span: Vec<(Option<&str>, Option<&str>, i64, i64)> = p
            .sample
            .iter()
            .map(|s| (p.label(s, "span_id"), p.label(s, "span_name"), s.value[0], s.value[1]))
            .collect();
        by_span.sort();
        assert_eq!(
            by_span,
            vec![
                (None, None, 30_000_000, 3),
                (Some("0101010101010101"), Some("root"), 10_000_000, 1),
                (Some("0202020202020202"), Some("slow-one"), 20_000_000, 2),
            ]
        );
        for s in &p.sample {
            assert_eq!(p.label(s, "service_name"), Some("svc"));
            let stack = p.stack(s);
            assert!(stack[0].ends_with("relabels_slow_spans"), "{stack:?}");
            if p.label(s, "span_id").is_some() {
                assert_eq!(p.label(s, "trace_id"), Some("09090909090909090909090909090909"));
                assert_eq!(p.label(s, "skein_span_name"), Some("inner"));
            } else {
                assert_eq!(s.label.len(), 1);
            }
        }
        let truncated = p.sample.iter().find(|s| p.label(s, "span_name") == Some("slow-one"));
        assert_eq!(truncated.map(|s| p.stack(s).last().copied()), Some(Some("[truncated stack]")));
        let url = ingest_url(&t, from, from + Duration::from_secs(10));
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:3200/ingest?name=svc.cpu%7Bservice_name%3Dsvc%7D&from=1700000000\
             &until=1700000010&format=pprof&sampleRate=100&spyName=skein-instrument"
        );
    }

    fn gzip_roundtrip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gzip(bytes).as_slice()).read_to_end(&mut out).expect("gunzip");
        out
    }
}
