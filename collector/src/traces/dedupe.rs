//! Ingest-time deduplication of spans by (trace id, span id).
//!
//! An exporter that loses an ack (the collector died after answering, or the connection broke)
//! retries the same spans, and without this every answer would show them twice. Tempo answers
//! each span id once; so do we: before an export is applied to the head, spans whose key was
//! stored recently for the same tenant are dropped (counted in
//! `skein_spans_deduplicated_total`). WAL replay runs the same filter in the same order, so a
//! restart rebuilds the window from the records it replays, and `Traces::open` seeds it with the
//! span keys of blocks written within the window.
//!
//! The window is two generations of 64-bit key hashes per tenant: a generation is retired when it
//! holds `max_keys` keys or is `max_age` old, so a key is remembered for at least one generation
//! (`max_keys` spans or `max_age`, whichever comes first) and memory stays bounded at about
//! 2 × `max_keys` × 10 bytes per active tenant. Copies outside the window are still answered once
//! by trace by id and merged away by compaction. A 64-bit hash makes a false "seen" (dropping a
//! distinct span) about `max_keys` / 2⁶⁴ per span: negligible.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;

/// Keys are already well mixed: hashing them again would only cost time.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeySet = HashSet<u64, BuildHasherDefault<Identity>>;

/// The 64-bit key of a span: its trace id and span id, mixed (splitmix64 finaliser) so that
/// sequential or structured ids spread evenly.
pub fn span_key(trace_id: &[u8], span_id: &[u8]) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in trace_id.chunks(8).chain(span_id.chunks(8)) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h ^= u64::from_le_bytes(w);
        h = mix(h);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Window {
    current: KeySet,
    previous: KeySet,
    since: Instant,
}

impl Window {
    fn new() -> Self {
        Window { current: KeySet::default(), previous: KeySet::default(), since: Instant::now() }
    }

    fn rotate_if_due(&mut self, max_keys: usize, max_age: Duration) {
        if self.current.len() >= max_keys || self.since.elapsed() >= max_age {
            self.previous = std::mem::take(&mut self.current);
            self.since = Instant::now();
        }
    }

    /// Remembers `key`; false when it was already remembered.
    fn insert(&mut self, key: u64) -> bool {
        !self.previous.contains(&key) && self.current.insert(key)
    }
}

/// The per-tenant windows of recently stored span keys.
pub struct RecentSpans {
    tenants: Mutex<HashMap<String, Window>>,
    max_keys: usize,
    max_age: Duration,
}

impl RecentSpans {
    pub fn new(max_keys: usize, max_age: Duration) -> Self {
        RecentSpans { tenants: Mutex::new(HashMap::new()), max_keys: max_keys.max(1), max_age }
    }

    /// Drops from `req` every span stored recently for `tenant` (or earlier in `req` itself) and
    /// remembers the others. Returns how many spans were dropped.
    pub fn filter(&self, tenant: &str, req: &mut ExportTraceServiceRequest) -> usize {
        let mut tenants = self.tenants.lock();
        let w = match tenants.get_mut(tenant) {
            Some(w) => w,
            None => tenants.entry(tenant.to_string()).or_insert_with(Window::new),
        };
        let mut dropped = 0;
        for rs in &mut req.resource_spans {
            for ss in &mut rs.scope_spans {
                ss.spans.retain(|s| {
                    w.rotate_if_due(self.max_keys, self.max_age);
                    let fresh = w.insert(span_key(&s.trace_id, &s.span_id));
                    dropped += usize::from(!fresh);
                    fresh
                });
            }
        }
        dropped
    }

    /// Remembers keys of spans stored before (in blocks written within the window).
    pub fn remember(&self, tenant: &str, keys: impl IntoIterator<Item = u64>) {
        let mut tenants = self.tenants.lock();
        let w = tenants.entry(tenant.to_string()).or_insert_with(Window::new);
        for k in keys {
            w.rotate_if_due(self.max_keys, self.max_age);
            w.insert(k);
        }
    }

    /// Forgets tenants that stored nothing for two generations' age, so idle tenants cost no
    /// memory.
    pub fn sweep(&self) {
        let twice = self.max_age.saturating_mul(2);
        let mut tenants = self.tenants.lock();
        tenants.retain(|_, w| w.since.elapsed() < twice);
        for w in tenants.values_mut() {
            w.rotate_if_due(self.max_keys, self.max_age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(ids: &[u8]) -> ExportTraceServiceRequest {
        let spans = ids
            .iter()
            .map(|&i| Span { trace_id: vec![7; 16], span_id: vec![i; 8], ..Default::default() })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn span_ids(req: &ExportTraceServiceRequest) -> Vec<u8> {
        req.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.span_id[0]).collect()
    }

    #[test]
    fn a_retried_export_is_dropped_and_new_spans_in_it_are_kept() {
        let r = RecentSpans::new(1000, Duration::from_secs(600));
        let mut first = request(&[1, 2, 3]);
        assert_eq!(r.filter("t", &mut first), 0);
        let mut retry = request(&[1, 2, 3, 4]);
        assert_eq!(r.filter("t", &mut retry), 3);
        assert_eq!(span_ids(&retry), vec![4]);
        let mut other_tenant = request(&[1]);
        assert_eq!(r.filter("u", &mut other_tenant), 0, "tenants are apart");
        let mut twice_in_one = request(&[9, 9]);
        assert_eq!(r.filter("t", &mut twice_in_one), 1);
    }

    #[test]
    fn keys_are_remembered_for_at_least_one_full_generation() {
        let r = RecentSpans::new(4, Duration::from_secs(600));
        r.filter("t", &mut request(&[1, 2, 3, 4]));
        // The generation holding 1..4 is full; it is retired, not dropped, when 5 arrives.
        r.filter("t", &mut request(&[5, 6]));
        let mut retry = request(&[1, 5]);
        assert_eq!(r.filter("t", &mut retry), 2);
        r.filter("t", &mut request(&[10, 11, 12, 13, 14]));
        let mut old = request(&[1]);
        assert_eq!(r.filter("t", &mut old), 0, "two generations later a key is forgotten");
    }

    #[test]
    fn seeded_keys_drop_later_copies() {
        let r = RecentSpans::new(100, Duration::from_secs(600));
        r.remember("t", [span_key(&[7; 16], &[3; 8])]);
        let mut req = request(&[3, 4]);
        assert_eq!(r.filter("t", &mut req), 1);
        assert_eq!(span_ids(&req), vec![4]);
    }

    #[test]
    fn keys_differ_when_either_id_differs() {
        let a = span_key(&[1; 16], &[2; 8]);
        assert_ne!(a, span_key(&[1; 16], &[3; 8]));
        assert_ne!(a, span_key(&[2; 16], &[2; 8]));
        assert_eq!(a, span_key(&[1; 16], &[2; 8]));
    }
}
