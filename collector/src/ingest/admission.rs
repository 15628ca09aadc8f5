//! What ingest admits before anything is decoded or stored: the request-size limits handed to
//! the scan, the number of tenants, and each tenant's span rate (a token bucket).
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::scan::ScanLimits;
use crate::error::{Coded, ErrorCode};

/// A tenant may send this many seconds' worth of its rate at once.
pub const BURST_SECONDS: f64 = 2.0;

/// The ingest limits, built by the configuration (`Config::ingest.limits()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    /// Largest request body, compressed or not.
    pub max_body_bytes: usize,
    pub max_spans_per_request: usize,
    /// Estimated size of a decoded request.
    pub max_decoded_bytes: usize,
    /// Sustained spans per second per tenant; 0: unlimited.
    pub max_spans_per_second_per_tenant: u64,
    /// Distinct tenants ingest accepts spans for; 0: unlimited.
    pub max_tenants: usize,
}

impl IngestLimits {
    pub fn scan(&self) -> ScanLimits {
        ScanLimits {
            max_spans: self.max_spans_per_request,
            max_decoded_bytes: self.max_decoded_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("tenant {tenant:?} is over its rate of {rate} spans/s, retry in {retry_after:?}")]
    RateLimited { tenant: String, rate: u64, retry_after: Duration },
    #[error(
        "tenant {tenant:?} is new and the collector already serves {limit} tenants (--max-tenants)"
    )]
    TooManyTenants { tenant: String, limit: usize },
}

impl Refusal {
    /// The `reason` label of `skein_exports_limited_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::RateLimited { .. } => "rate",
            Refusal::TooManyTenants { .. } => "tenants",
        }
    }
}

impl Coded for Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::RateLimited { .. } => ErrorCode::RateLimited,
            Refusal::TooManyTenants { .. } => ErrorCode::PermissionDenied,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The tenants seen and their buckets. Tenants are those that sent spans since start (the
/// cap is on what this process holds per tenant: heads, series, buckets).
pub struct Admission {
    limits: IngestLimits,
    tenants: Mutex<HashMap<String, Bucket>>,
}

impl Admission {
    pub fn new(limits: IngestLimits) -> Self {
        Admission { limits, tenants: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    /// Admits `spans` spans of `tenant` at `now`, taking them from its bucket.
    pub fn admit(&self, tenant: &str, spans: usize, now: Instant) -> Result<(), Refusal> {
        let rate = self.limits.max_spans_per_second_per_tenant;
        let capacity = (rate as f64) * BURST_SECONDS;
        let mut tenants = self.tenants.lock();
        if !tenants.contains_key(tenant) {
            let limit = self.limits.max_tenants;
            if limit > 0 && tenants.len() >= limit {
                return Err(Refusal::TooManyTenants { tenant: tenant.to_string(), limit });
            }
            tenants.insert(tenant.to_string(), Bucket { tokens: capacity, at: now });
        }
        if rate == 0 {
            return Ok(());
        }
        let Some(b) = tenants.get_mut(tenant) else { return Ok(()) };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate as f64).min(capacity);
        b.at = now;
        let want = spans as f64;
        // A request larger than the burst passes when the bucket is full, leaving it in debt;
        // otherwise it could never pass.
        let need = want.min(capacity);
        if b.tokens >= need {
            b.tokens -= want;
            return Ok(());
        }
        let wait = ((need - b.tokens) / rate as f64).max(0.001);
        Err(Refusal::RateLimited {
            tenant: tenant.to_string(),
            rate,
            retry_after: Duration::from_secs_f64(wait.min(3600.0)),
        })
    }

    pub fn tenants(&self) -> usize {
        self.tenants.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn limits(rate: u64, tenants: usize) -> IngestLimits {
        IngestLimits {
            max_body_bytes: 1 << 20,
            max_spans_per_request: 1000,
            max_decoded_bytes: 8 << 20,
            max_spans_per_second_per_tenant: rate,
            max_tenants: tenants,
        }
    }

    #[test]
    fn a_tenant_gets_its_burst_then_its_rate() {
        let a = Admission::new(limits(100, 0));
        let t0 = Instant::now();
        assert!(a.admit("a", 150, t0).is_ok());
        assert!(a.admit("a", 50, t0).is_ok(), "burst is two seconds' worth");
        let Err(Refusal::RateLimited { retry_after, .. }) = a.admit("a", 10, t0) else {
            panic!("expected a refusal")
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100));
        assert!(a.admit("b", 200, t0).is_ok(), "tenants have their own buckets");
        let later = t0 + Duration::from_millis(200);
        assert!(a.admit("a", 10, later).is_ok(), "refilled");
        assert_eq!(a.admit("a", 11, later).unwrap_err().code(), ErrorCode::RateLimited);
    }

    #[test]
    fn a_request_larger_than_the_burst_passes_only_on_a_full_bucket() {
        let a = Admission::new(limits(10, 0));
        let t0 = Instant::now();
        assert!(a.admit("a", 500, t0).is_ok());
        assert!(a.admit("a", 1, t0 + Duration::from_secs(2)).is_err(), "still in debt");
        assert!(a.admit("a", 500, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn new_tenants_beyond_the_cap_are_forbidden() {
        let a = Admission::new(limits(0, 2));
        let t0 = Instant::now();
        assert!(a.admit("a", 1, t0).is_ok());
        assert!(a.admit("b", 1, t0).is_ok());
        let e = a.admit("c", 1, t0).unwrap_err();
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert_eq!(e.reason(), "tenants");
        assert!(a.admit("a", 1_000_000, t0).is_ok(), "known tenants and no rate limit");
        assert_eq!(a.tenants(), 2);
    }
}
