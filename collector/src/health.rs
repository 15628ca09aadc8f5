//! What `/ready` and `/healthz` report. Each subsystem records its own problems here (the WAL
//! thread a poisoned log, the maintenance loop failing storage, start-up the replay), so the
//! endpoints tell the truth instead of answering constants:
//! - **ready** (`/ready`): the collector can take writes and answer queries. Not ready while
//!   replaying, while the WAL is poisoned, when the applier or flusher is gone, or when storage
//!   has failed for longer than a grace period (a short S3 hiccup is retried, not reported).
//!   A full disk is *degraded*: writes are refused with 503 but queries are served, so the
//!   instance stays ready and says why in the body.
//! - **live** (`/healthz`): no background activity is stuck. A loop marks the work it is doing
//!   with [`Health::busy`]; work that has not finished after `stall` means a wedged process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One thing that can be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// WAL replay at start-up is still running.
    Replay,
    /// The WAL refuses writes until restart (an fsync failed).
    Wal,
    /// The thread applying durable writes to the head has died.
    Applier,
    /// The flush / maintenance loop has died.
    Flusher,
    /// Object storage calls are failing (ready again once they succeed).
    Storage,
    /// The WAL's filesystem is full: writes are refused until space returns (degraded).
    Disk,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Replay => "replay",
            Check::Wal => "wal",
            Check::Applier => "applier",
            Check::Flusher => "flusher",
            Check::Storage => "storage",
            Check::Disk => "disk",
        }
    }
}

#[derive(Debug, Clone)]
struct Problem {
    reason: String,
    since: Instant,
}

/// The answer of [`Health::readiness`] / [`Health::liveness`]: `ok` decides the status code;
/// `lines` explain it (and list degraded checks even when ok).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ok: bool,
    pub lines: Vec<String>,
}

pub struct Health {
    problems: Mutex<BTreeMap<Check, Problem>>,
    /// Work in progress, by loop name, and when it started.
    busy: Mutex<BTreeMap<&'static str, Instant>>,
    /// Storage failing for less than this still counts as ready.
    storage_grace: Duration,
    /// Work running longer than this makes the process not live.
    stall: Duration,
}

impl Health {
    pub fn new(storage_grace: Duration, stall: Duration) -> Arc<Health> {
        Arc::new(Health {
            problems: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(BTreeMap::new()),
            storage_grace,
            stall,
        })
    }

    /// Records a problem. A problem already recorded keeps its original `since` (so a storage
    /// outage is measured from its first failure), with the latest reason.
    pub fn fail(&self, check: Check, reason: impl Into<String>) {
        let reason = reason.into();
        let mut p = self.problems.lock();
        match p.get_mut(&check) {
            Some(existing) => existing.reason = reason,
            None => {
                tracing::warn!(check = check.name(), %reason, "health check failing");
                p.insert(check, Problem { reason, since: Instant::now() });
            }
        }
    }

    /// Clears a problem (a no-op when there is none).
    pub fn clear(&self, check: Check) {
        if self.problems.lock().remove(&check).is_some() {
            tracing::info!(check = check.name(), "health check recovered");
        }
    }

    pub fn is_failing(&self, check: Check) -> bool {
        self.problems.lock().contains_key(&check)
    }

    /// Marks `what` as running until the guard drops; see [`Health::liveness`].
    pub fn busy(self: &Arc<Self>, what: &'static str) -> BusyGuard {
        self.busy.lock().insert(what, Instant::now());
        BusyGuard { health: self.clone(), what }
    }

    pub fn readiness(&self) -> Report {
        let problems = self.problems.lock();
        let mut ok = true;
        let mut lines = Vec::new();
        for (check, p) in problems.iter() {
            let fatal = match check {
                Check::Disk => false,
                Check::Storage => p.since.elapsed() >= self.storage_grace,
                _ => true,
            };
            ok &= !fatal;
            let kind = if fatal { "not ready" } else { "degraded" };
            lines.push(format!("{kind}: {}: {}", check.name(), p.reason));
        }
        Report { ok, lines }
    }

    pub fn liveness(&self) -> Report {
        let busy = self.busy.lock();
        let lines: Vec<String> = busy
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.stall)
            .map(|(what, since)| format!("wedged: {what} busy for {}s", since.elapsed().as_secs()))
            .collect();
        Report { ok: lines.is_empty(), lines }
    }
}

/// Ends a [`Health::busy`] span when dropped.
pub struct BusyGuard {
    health: Arc<Health>,
    what: &'static str,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.health.busy.lock().remove(self.what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_problems_make_not_ready_and_a_full_disk_only_degrades() {
        let h = Health::new(Duration::from_secs(3600), Duration::from_secs(3600));
        assert!(h.readiness().ok);
        h.fail(Check::Disk, "no space left on device");
        let r = h.readiness();
        assert!(r.ok);
        assert_eq!(r.lines, vec!["degraded: disk: no space left on device".to_string()]);
        h.fail(Check::Wal, "fsync failed");
        assert!(!h.readiness().ok);
        h.clear(Check::Wal);
        h.clear(Check::Disk);
        assert_eq!(h.readiness(), Report { ok: true, lines: vec![] });
    }

    #[test]
    fn storage_failures_count_only_after_the_grace_period() {
        let h = Health::new(Duration::from_secs(3600), Duration::from_secs(3600));
        h.fail(Check::Storage, "503 from S3");
        assert!(h.readiness().ok, "within the grace period");
        let h = Health::new(Duration::ZERO, Duration::from_secs(3600));
        h.fail(Check::Storage, "503 from S3");
        assert!(!h.readiness().ok);
    }

    #[test]
    fn work_running_past_the_stall_limit_is_reported_until_it_ends() {
        let h = Health::new(Duration::ZERO, Duration::ZERO);
        let g = h.busy("flush");
        assert!(!h.liveness().ok);
        drop(g);
        assert!(h.liveness().ok);
    }
}
