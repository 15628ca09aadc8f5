//! What one profile push may cost, and how many may be decoded at once. See DESIGN.md,
//! "Hostile pushes".
//!
//! - [`Budget`]: per push, the memory decoding may produce (prost structs estimated on the wire,
//!   frames, samples, labels) — `--profile-decode-factor` times `--max-body-bytes` — and the sum
//!   of inflated gzip profiles (`--max-body-bytes`, summed over all profiles of the push).
//! - [`DecodeSlots`]: at most `--profile-decode-concurrency` pushes decode at once; others wait
//!   briefly, then get 429.
//! - [`AppCensus`]: at most `--profile-max-apps` distinct service names per tenant pushed within
//!   the last hour; pushes naming further ones are refused with 403.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::ProfileError;

/// Default of `--profile-decode-factor`: a push may decode into this many times the body limit.
pub const DEFAULT_DECODE_FACTOR: usize = 8;
/// Default of `--profile-decode-concurrency`.
pub const DEFAULT_DECODE_CONCURRENCY: usize = 4;
/// Default of `--profile-max-apps`.
pub const DEFAULT_MAX_APPS: usize = 1000;
/// How long a push waits for a decode slot before it is refused (agents retry).
pub const DECODE_WAIT: Duration = Duration::from_secs(2);
/// An application not pushed for this long no longer counts against `--profile-max-apps`.
pub const APP_IDLE: Duration = Duration::from_secs(3600);
/// Longest service name kept (Pyroscope's `max_label_value_length`).
pub const MAX_APP_NAME_BYTES: usize = 2048;
/// Largest `sample_type_config` part of a multipart push (real ones are a few hundred bytes).
pub const MAX_SAMPLE_TYPE_CONFIG_BYTES: usize = 64 * 1024;

/// The decoding allowance of one push.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    inflate_limit: usize,
    inflated: usize,
}

impl Budget {
    /// A push under `body_limit` may produce `factor * body_limit` bytes of decoded memory.
    pub fn new(body_limit: usize, factor: usize) -> Budget {
        Budget {
            limit: body_limit.saturating_mul(factor.max(1)),
            used: 0,
            inflate_limit: body_limit,
            inflated: 0,
        }
    }

    /// Takes `n` bytes of decoded memory, or refuses the push.
    pub fn charge(&mut self, n: usize) -> Result<(), ProfileError> {
        match self.used.checked_add(n) {
            Some(u) if u <= self.limit => {
                self.used = u;
                Ok(())
            }
            _ => Err(ProfileError::TooComplex { limit: self.limit }),
        }
    }

    /// Gives back memory that was freed (a decoded pprof message once converted).
    pub fn release(&mut self, n: usize) {
        self.used = self.used.saturating_sub(n);
    }

    pub fn used(&self) -> usize {
        self.used
    }

    /// Inflates a gzip profile within what is left of the push's inflation allowance.
    pub fn gunzip(&mut self, raw: &[u8]) -> Result<Vec<u8>, ProfileError> {
        let left = self.inflate_limit.saturating_sub(self.inflated);
        let out = super::gunzip(raw, left).map_err(|e| match e {
            ProfileError::TooLarge { .. } => ProfileError::TooLarge { limit: self.inflate_limit },
            e => e,
        })?;
        self.inflated = self.inflated.saturating_add(out.len());
        Ok(out)
    }
}

/// Bounds concurrent decodes so profile pushes cannot take every core from span ingest.
pub struct DecodeSlots {
    slots: tokio::sync::Semaphore,
    wait: Duration,
}

impl DecodeSlots {
    pub fn new(concurrency: usize, wait: Duration) -> DecodeSlots {
        DecodeSlots { slots: tokio::sync::Semaphore::new(concurrency.max(1)), wait }
    }

    /// A slot, or `Overloaded` (429 with Retry-After) if none frees up within the wait.
    pub async fn acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ProfileError> {
        match tokio::time::timeout(self.wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ProfileError::Busy),
        }
    }
}

/// Service names each tenant pushed recently, at most `max` per tenant.
pub struct AppCensus {
    max: usize,
    idle: Duration,
    tenants: HashMap<String, HashMap<String, Instant>>,
}

impl AppCensus {
    pub fn new(max: usize, idle: Duration) -> AppCensus {
        AppCensus { max, idle, tenants: HashMap::new() }
    }

    /// Admits a push naming `apps` for `tenant` (all of them or none), refreshing their
    /// last-seen time. Unconditional admission (`force`) is for WAL replay: what was accepted
    /// stays accepted.
    pub fn admit<'a>(
        &mut self,
        tenant: &str,
        apps: impl IntoIterator<Item = &'a str> + Clone,
        now: Instant,
        force: bool,
    ) -> Result<(), ProfileError> {
        for app in apps.clone() {
            if app.len() > MAX_APP_NAME_BYTES {
                return Err(ProfileError::BadRequest(format!(
                    "service name of {} bytes exceeds the limit of {MAX_APP_NAME_BYTES}",
                    app.len()
                )));
            }
        }
        let known = self.tenants.entry(tenant.to_string()).or_default();
        let mut new: Vec<&str> =
            apps.clone().into_iter().filter(|a| !known.contains_key(*a)).collect();
        new.sort_unstable();
        new.dedup();
        if !force && known.len().saturating_add(new.len()) > self.max {
            let idle = self.idle;
            known.retain(|_, seen| now.saturating_duration_since(*seen) < idle);
            if known.len().saturating_add(new.len()) > self.max {
                return Err(ProfileError::TooManyApps { limit: self.max });
            }
        }
        for app in apps {
            match known.get_mut(app) {
                Some(seen) => *seen = now,
                None => {
                    known.insert(app.to_string(), now);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::arithmetic_side_effects)]
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn budgets_refuse_once_spent_and_take_back_released_memory() {
        let mut b = Budget::new(100, 2);
        b.charge(150).unwrap();
        assert!(matches!(b.charge(51), Err(ProfileError::TooComplex { limit: 200 })));
        b.release(150);
        b.charge(200).unwrap();
        assert!(b.charge(usize::MAX).is_err());
    }

    #[test]
    fn inflation_is_bounded_by_the_sum_over_a_push() {
        let part = gz(&[0u8; 600]);
        let mut b = Budget::new(1000, 8);
        assert_eq!(b.gunzip(&part).unwrap().len(), 600);
        // Each part alone fits the body limit; together they do not.
        assert!(matches!(b.gunzip(&part), Err(ProfileError::TooLarge { limit: 1000 })));
    }

    #[tokio::test]
    async fn decode_slots_refuse_when_none_frees_up() {
        let slots = DecodeSlots::new(1, Duration::from_millis(20));
        let held = slots.acquire().await.unwrap();
        assert!(matches!(slots.acquire().await, Err(ProfileError::Busy)));
        drop(held);
        assert!(slots.acquire().await.is_ok());
    }

    #[test]
    fn app_census_caps_new_apps_per_tenant_and_forgets_idle_ones() {
        let t0 = Instant::now();
        let mut c = AppCensus::new(2, Duration::from_secs(10));
        c.admit("t", ["a", "b", "a"], t0, false).unwrap();
        assert!(matches!(c.admit("t", ["c"], t0, false), Err(ProfileError::TooManyApps { .. })));
        // Known apps and other tenants are unaffected.
        c.admit("t", ["a"], t0, false).unwrap();
        c.admit("u", ["c"], t0, false).unwrap();
        // Replay admits whatever was stored.
        c.admit("u", ["d", "e"], t0, true).unwrap();
        // Once "b" is idle (and "a" was seen recently), "c" fits.
        let later = t0 + Duration::from_secs(11);
        c.admit("t", ["a"], later, false).unwrap();
        c.admit("t", ["c"], later, false).unwrap();
        let long = "x".repeat(MAX_APP_NAME_BYTES + 1);
        assert!(matches!(
            c.admit("t", [long.as_str()], later, false),
            Err(ProfileError::BadRequest(_))
        ));
    }
}
