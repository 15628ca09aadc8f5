//! The alert state machine of one alerting rule, as Prometheus runs it: each label set the
//! expression returns is an alert that is `pending` until it has been returned for `for`, then
//! `firing`; when it stops being returned it is `inactive` (resolved) at once, or after
//! `keep_firing_for` if it was firing. Resolved alerts are kept (and re-sent as resolved) for
//! [`RESOLVED_RETENTION`] so that a lost notification is repaired. Time is whatever the caller
//! passes: evaluation passes its clock, tests pass a fake one.

use std::collections::BTreeMap;

use crate::promql::labels::Labels;

/// How long a resolved alert is still reported to Alertmanager (Prometheus: 15m).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of a rule (times in ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    pub value: f64,
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    /// `endsAt` sent with a firing alert: Alertmanager resolves it by itself after this if we
    /// stop sending (e.g. skein went away).
    pub valid_until: i64,
    /// Since when the expression stopped returning a firing alert held by `keep_firing_for`.
    pub keep_firing_since: Option<i64>,
}

impl Alert {
    fn needs_sending(&self, ts: i64, resend_delay_ms: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        // Resolved since the last send: tell Alertmanager now.
        if let Some(r) = self.resolved_at
            && self.last_sent_at.is_none_or(|s| r > s)
        {
            return true;
        }
        self.last_sent_at.is_none_or(|s| s + resend_delay_ms < ts)
    }
}

/// What one evaluation returned for one label set.
#[derive(Debug, Clone, PartialEq)]
pub struct Returned {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct RuleAlerts {
    pub hold_ms: i64,
    pub keep_firing_for_ms: i64,
    /// Alerts by label set; resolved ones stay for the retention.
    pub active: BTreeMap<Labels, Alert>,
}

impl RuleAlerts {
    pub fn new(hold_ms: i64, keep_firing_for_ms: i64) -> Self {
        RuleAlerts { hold_ms, keep_firing_for_ms, active: BTreeMap::new() }
    }

    /// Applies one evaluation at `ts`.
    pub fn update(&mut self, ts: i64, results: Vec<Returned>) {
        let mut returned = std::collections::HashSet::new();
        for r in results {
            returned.insert(r.labels.clone());
            match self.active.get_mut(&r.labels) {
                Some(a) if a.state != AlertState::Inactive => {
                    a.value = r.value;
                    a.annotations = r.annotations;
                }
                // New, or back after being resolved: a new alert, pending from now.
                _ => {
                    self.active.insert(
                        r.labels.clone(),
                        Alert {
                            labels: r.labels,
                            annotations: r.annotations,
                            state: AlertState::Pending,
                            value: r.value,
                            active_at: ts,
                            fired_at: None,
                            resolved_at: None,
                            last_sent_at: None,
                            valid_until: 0,
                            keep_firing_since: None,
                        },
                    );
                }
            }
        }
        let (hold, keep) = (self.hold_ms, self.keep_firing_for_ms);
        self.active.retain(|labels, a| {
            if !returned.contains(labels) {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && keep > 0 {
                    let since = *a.keep_firing_since.get_or_insert(ts);
                    keep_firing = ts - since < keep;
                }
                // Pending alerts vanish at once; resolved ones after the retention.
                if a.state == AlertState::Pending
                    || a.resolved_at.is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
                {
                    return false;
                }
                if a.state != AlertState::Inactive && !keep_firing {
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(ts);
                }
                if !keep_firing {
                    return true;
                }
            } else {
                a.keep_firing_since = None;
            }
            if a.state == AlertState::Pending && ts - a.active_at >= hold {
                a.state = AlertState::Firing;
                a.fired_at = Some(ts);
            }
            true
        });
    }

    /// Alerts to notify at `ts` (firing ones every `resend_delay`, resolved ones once and then
    /// with the resends), marked as sent.
    pub fn to_send(&mut self, ts: i64, resend_delay_ms: i64, interval_ms: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        for a in self.active.values_mut() {
            if a.needs_sending(ts, resend_delay_ms) {
                a.last_sent_at = Some(ts);
                // Two missed evaluations or sends do not resolve it in Alertmanager.
                a.valid_until = ts + 4 * resend_delay_ms.max(interval_ms);
                out.push(a.clone());
            }
        }
        out
    }

    /// Pending and firing alerts (what `/api/v1/alerts` lists).
    pub fn live(&self) -> impl Iterator<Item = &Alert> {
        self.active.values().filter(|a| a.state != AlertState::Inactive)
    }

    /// The rule's state: its most severe alert's.
    pub fn state(&self) -> AlertState {
        self.live().map(|a| a.state).max().unwrap_or(AlertState::Inactive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn res(svc: &str, v: f64) -> Returned {
        Returned {
            labels: Labels::new([("alertname", "Slow"), ("service", svc)]),
            annotations: BTreeMap::from([("v".to_string(), v.to_string())]),
            value: v,
        }
    }

    fn state(r: &RuleAlerts, svc: &str) -> Option<AlertState> {
        r.active.values().find(|a| a.labels.get("service") == Some(svc)).map(|a| a.state)
    }

    /// A fake clock: evaluations every 10 s from t0.
    struct Clock(i64);
    impl Clock {
        fn tick(&mut self) -> i64 {
            self.0 += 10 * S;
            self.0
        }
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved() {
        let mut r = RuleAlerts::new(30 * S, 0);
        let mut c = Clock(1_000_000);
        let t0 = c.tick();
        r.update(t0, vec![res("a", 1.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Pending));
        assert!(r.to_send(t0, 60 * S, 10 * S).is_empty(), "pending alerts are not sent");
        for _ in 0..2 {
            let t = c.tick();
            r.update(t, vec![res("a", 2.0)]);
            assert_eq!(state(&r, "a"), Some(AlertState::Pending));
        }
        let t = c.tick();
        r.update(t, vec![res("a", 3.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Firing));
        let a = &r.active.values().next().unwrap();
        assert_eq!((a.active_at, a.fired_at, a.value), (t0, Some(t), 3.0));
        assert_eq!(a.annotations["v"], "3", "annotations follow the latest value");
        let sent = r.to_send(t, 60 * S, 10 * S);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].valid_until, t + 240 * S);
        // Resent only after the resend delay.
        let t = c.tick();
        r.update(t, vec![res("a", 3.0)]);
        assert!(r.to_send(t, 60 * S, 10 * S).is_empty());
        // Gone from the result: resolved at once, sent once as resolved.
        let t = c.tick();
        r.update(t, vec![]);
        assert_eq!(state(&r, "a"), Some(AlertState::Inactive));
        assert_eq!(r.state(), AlertState::Inactive);
        let sent = r.to_send(t, 60 * S, 10 * S);
        assert_eq!(sent[0].resolved_at, Some(t));
        assert!(r.to_send(t + 1, 60 * S, 10 * S).is_empty());
        // Kept for 15 minutes, then dropped.
        r.update(t + RESOLVED_RETENTION_MS, vec![]);
        assert!(!r.active.is_empty());
        r.update(t + RESOLVED_RETENTION_MS + 1, vec![]);
        assert!(r.active.is_empty());
    }

    #[test]
    fn a_pending_alert_that_goes_away_is_dropped_and_restarts_its_for() {
        let mut r = RuleAlerts::new(30 * S, 0);
        r.update(10 * S, vec![res("a", 1.0)]);
        r.update(20 * S, vec![]);
        assert!(r.active.is_empty());
        r.update(30 * S, vec![res("a", 1.0)]);
        r.update(50 * S, vec![res("a", 1.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Pending), "for counts from 30 s");
        r.update(60 * S, vec![res("a", 1.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Firing));
    }

    #[test]
    fn zero_for_fires_in_the_first_evaluation_and_alerts_are_per_label_set() {
        let mut r = RuleAlerts::new(0, 0);
        r.update(S, vec![res("a", 1.0), res("b", 1.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Firing));
        assert_eq!(state(&r, "b"), Some(AlertState::Firing));
        r.update(2 * S, vec![res("b", 1.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Inactive));
        assert_eq!(state(&r, "b"), Some(AlertState::Firing));
        assert_eq!(r.live().count(), 1);
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert_then_resolves_it() {
        let mut r = RuleAlerts::new(0, 30 * S);
        r.update(10 * S, vec![res("a", 1.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Firing));
        r.update(20 * S, vec![]);
        r.update(40 * S, vec![]);
        assert_eq!(state(&r, "a"), Some(AlertState::Firing), "held for 30 s from 20 s");
        // Back in the result: the hold is reset.
        r.update(45 * S, vec![res("a", 1.0)]);
        assert_eq!(r.active.values().next().unwrap().keep_firing_since, None);
        r.update(50 * S, vec![]);
        r.update(79 * S, vec![]);
        assert_eq!(state(&r, "a"), Some(AlertState::Firing));
        r.update(80 * S, vec![]);
        assert_eq!(state(&r, "a"), Some(AlertState::Inactive));
        assert_eq!(r.active.values().next().unwrap().resolved_at, Some(80 * S));
    }

    #[test]
    fn keep_firing_for_does_not_hold_pending_alerts() {
        let mut r = RuleAlerts::new(60 * S, 300 * S);
        r.update(10 * S, vec![res("a", 1.0)]);
        r.update(20 * S, vec![]);
        assert!(r.active.is_empty());
    }

    #[test]
    fn a_resolved_alert_that_comes_back_is_a_new_pending_alert() {
        let mut r = RuleAlerts::new(20 * S, 0);
        r.update(0, vec![res("a", 1.0)]);
        r.update(20 * S, vec![res("a", 1.0)]);
        assert_eq!(state(&r, "a"), Some(AlertState::Firing));
        r.update(30 * S, vec![]);
        r.update(40 * S, vec![res("a", 1.0)]);
        let a = r.active.values().next().unwrap();
        assert_eq!((a.state, a.active_at, a.resolved_at), (AlertState::Pending, 40 * S, None));
    }
}
