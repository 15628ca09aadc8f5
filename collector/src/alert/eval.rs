//! Rule evaluation: each group runs on its own interval, its rules in order (a recording
//! rule's output is visible to the rules after it), with skein's PromQL evaluator over its
//! tenant's span metrics plus that tenant's recorded series. With peers the span metrics are
//! every replica's: each replica evaluates every rule over the whole cluster's series and
//! sends the same alerts, which Alertmanager deduplicates as it does for a Prometheus HA pair.
//! A group's tenant comes from where its file is (`layout`); everything the group writes or
//! reports (recorded series, `ALERTS`, rule state, notifications) is that tenant's alone.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::AlertError;
use super::exemplars;
use super::layout;
use super::notify::{Notifier, Targets, WireAlert};
use super::recorded::{Layered, Recorded};
use super::rules::{AlertingRule, Group, RecordingRule, Rule};
use super::state::{AlertState, Returned, RuleAlerts};
use super::template::Data;
use crate::cluster::Cluster;
use crate::promql::federation::{Federated, Recording};
use crate::promql::labels::{Labels, METRIC_NAME};
use crate::promql::value::Value;
use crate::promql::{self, Storage};
use crate::span_metrics::SpanMetrics;
use crate::tenant::DEFAULT_TENANT;

#[derive(Debug, Clone)]
pub struct AlertingConfig {
    /// A rule file or a directory of them (with a sub-directory per tenant).
    pub rules: Option<PathBuf>,
    /// Base of links in alerts (`generatorURL`, flamegraph links) and `$externalURL`.
    pub external_url: String,
    pub external_labels: BTreeMap<String, String>,
    /// Firing alerts are re-sent this often (Prometheus: `--rules.alert.resend-delay`, 1m).
    pub resend_delay: Duration,
    pub targets: Targets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuleStatus {
    pub health: Health,
    pub last_error: Option<String>,
    /// ms since the epoch; None before the first evaluation.
    pub last_eval: Option<i64>,
    pub eval_seconds: f64,
    /// Alerting rules only.
    pub alerts: RuleAlerts,
}

#[derive(Debug, Clone)]
pub struct GroupStatus {
    pub last_eval: Option<i64>,
    pub eval_seconds: f64,
    pub rules: Vec<RuleStatus>,
}

pub struct GroupRuntime {
    pub group: Group,
    pub status: Mutex<GroupStatus>,
}

pub struct Alerting {
    pub cfg: AlertingConfig,
    generator: Arc<SpanMetrics>,
    /// Rule output of each tenant that has rule groups.
    recorded: BTreeMap<String, Arc<Recorded>>,
    /// Every tenant's groups, tenant by tenant.
    pub groups: Vec<GroupRuntime>,
    notifier: Mutex<Option<Notifier>>,
    /// The replicas sharing this one's storage root: with peers, rules read every replica's
    /// series (set by `serve`).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
}

/// `ALERTS` and `ALERTS_FOR_STATE`, as Prometheus writes them for every pending or firing alert.
const ALERTS: &str = "ALERTS";
const ALERTS_FOR_STATE: &str = "ALERTS_FOR_STATE";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Alerting {
    /// Loads the rules; every problem in them is returned.
    pub fn new(
        cfg: AlertingConfig,
        generator: Arc<SpanMetrics>,
    ) -> Result<Arc<Self>, Vec<AlertError>> {
        let groups = match &cfg.rules {
            Some(p) => layout::load_groups(p)?,
            None => Vec::new(),
        };
        Ok(Self::from_groups(cfg, groups, generator))
    }

    /// Runs rules already loaded (`serve` has them from its configuration, parsed once).
    pub fn from_groups(
        cfg: AlertingConfig,
        groups: Vec<Group>,
        generator: Arc<SpanMetrics>,
    ) -> Arc<Self> {
        let recorded =
            groups.iter().map(|g| (g.tenant.clone(), Arc::new(Recorded::default()))).collect();
        let groups = groups
            .into_iter()
            .map(|group| {
                let rules = group
                    .rules
                    .iter()
                    .map(|r| RuleStatus {
                        health: Health::Unknown,
                        last_error: None,
                        last_eval: None,
                        eval_seconds: 0.0,
                        alerts: match r {
                            Rule::Alerting(a) => {
                                RuleAlerts::new(millis(a.hold), millis(a.keep_firing_for))
                            }
                            Rule::Recording(_) => RuleAlerts::default(),
                        },
                    })
                    .collect();
                GroupRuntime {
                    group,
                    status: Mutex::new(GroupStatus { last_eval: None, eval_seconds: 0.0, rules }),
                }
            })
            .collect();
        Arc::new(Alerting {
            cfg,
            generator,
            recorded,
            groups,
            notifier: Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// What PromQL reads for `tenant`: its span metrics, plus its rules' output.
    pub fn storage(&self, tenant: &str) -> Arc<dyn Storage> {
        let base = self.generator.storage(tenant);
        match self.recorded.get(tenant) {
            Some(recorded) => Arc::new(Layered { base, recorded: recorded.clone() }),
            None => base,
        }
    }

    /// `tenant`'s rule output (recorded series and `ALERTS`), if it has rules.
    pub fn rule_output(&self, tenant: &str) -> Option<Arc<dyn Storage>> {
        self.recorded.get(tenant).map(|r| r.clone() as Arc<dyn Storage>)
    }

    /// Makes the rules read the series of every replica in `cluster` (when it has peers).
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// What group `gi`'s rules read at `t` when this replica has peers: its own series and
    /// rule output plus the peers' series of the rules' selectors, over the range a dry run
    /// of the rules over its own series reads. `None` without peers.
    async fn group_storage(self: &Arc<Self>, gi: usize, t: i64) -> Option<Arc<dyn Storage>> {
        let cluster = self.cluster.get().filter(|c| c.has_peers())?.clone();
        let g = self.groups.get(gi)?;
        let tenant = g.group.tenant.clone();
        let exprs: Vec<promql_parser::parser::Expr> =
            g.group.rules.iter().map(|r| r.expr().clone()).collect();
        let selectors: Vec<String> = exprs
            .iter()
            .flat_map(|e| promql::collect_selectors(e).into_iter().map(|vs| vs.to_string()))
            .collect();
        let recording = Arc::new(Recording::new(self.storage(&tenant)));
        let r = recording.clone();
        let dry = tokio::task::spawn_blocking(move || {
            for e in &exprs {
                let _ = promql::instant(r.as_ref(), e, t);
            }
        });
        if let Err(e) = dry.await {
            tracing::error!(error = %e, "dry run of a rule group panicked");
        }
        let remote = match recording.range() {
            Some((start, end)) => cluster.series(&tenant, selectors, start, end).await,
            None => Vec::new(),
        };
        Some(Arc::new(Federated {
            local: self.generator.storage(&tenant),
            node: Some(cluster.node.to_string()),
            remote,
            rules: self.rule_output(&tenant),
        }))
    }

    pub fn rule_count(&self) -> usize {
        self.groups.iter().map(|g| g.group.rules.len()).sum()
    }

    /// The tenants that have rule groups.
    pub fn tenants(&self) -> BTreeSet<&str> {
        self.groups.iter().map(|g| g.group.tenant.as_str()).collect()
    }

    /// `tenant`'s groups.
    pub fn groups_of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a GroupRuntime> {
        self.groups.iter().filter(move |g| g.group.tenant == tenant)
    }

    /// The query link of an alert. A link opened in a browser answers for the default tenant
    /// (it carries no `X-Scope-OrgID`), so other tenants' alerts get none.
    fn generator_url(&self, tenant: &str, query: &str) -> String {
        if tenant != DEFAULT_TENANT {
            return String::new();
        }
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish();
        format!("{}/prometheus/api/v1/query?{q}", self.cfg.external_url.trim_end_matches('/'))
    }

    /// Evaluates group `gi` at `t` (ms) over this replica's series and returns the alerts due
    /// for notification.
    pub fn eval_group(&self, gi: usize, t: i64) -> Vec<WireAlert> {
        self.eval_group_over(gi, t, None)
    }

    /// As [`Self::eval_group`], reading `storage` (every replica's series) when given.
    fn eval_group_over(
        &self,
        gi: usize,
        t: i64,
        storage: Option<Arc<dyn Storage>>,
    ) -> Vec<WireAlert> {
        let Some(g) = self.groups.get(gi) else { return Vec::new() };
        let started = Instant::now();
        let mut status = g.status.lock();
        let interval = millis(g.group.interval);
        let resend = millis(self.cfg.resend_delay);
        let mut out = Vec::new();
        let tenant = g.group.tenant.as_str();
        let storage = storage.unwrap_or_else(|| self.storage(tenant));
        for (rule, st) in g.group.rules.iter().zip(status.rules.iter_mut()) {
            let rule_started = Instant::now();
            let result = match rule {
                Rule::Recording(r) => self.record(storage.as_ref(), tenant, r, g.group.limit, t),
                Rule::Alerting(r) => {
                    self.alert(storage.as_ref(), tenant, r, g.group.limit, t, &mut st.alerts)
                }
            };
            match result {
                Ok(()) => {
                    st.health = Health::Ok;
                    st.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(tenant, group = g.group.name, rule = rule.name(), error = %e, "rule evaluation failed");
                    st.health = Health::Err;
                    st.last_error = Some(e.to_string());
                }
            }
            if let Rule::Alerting(r) = rule {
                let url = self.generator_url(tenant, &r.query);
                out.extend(
                    st.alerts
                        .to_send(t, resend, interval)
                        .iter()
                        .map(|a| WireAlert::new(a, tenant, &self.cfg.external_labels, &url)),
                );
                self.write_alert_series(tenant, &r.name, &st.alerts, t);
            }
            st.last_eval = Some(t);
            st.eval_seconds = rule_started.elapsed().as_secs_f64();
        }
        status.last_eval = Some(t);
        status.eval_seconds = started.elapsed().as_secs_f64();
        out
    }

    /// Instant query over `storage` (a tenant's series) at `t` as a list of samples (a scalar
    /// is one sample without labels).
    fn query(
        storage: &dyn Storage,
        expr: &promql_parser::parser::Expr,
        t: i64,
    ) -> Result<Vec<(Labels, f64)>, AlertError> {
        match promql::instant(storage, expr, t)? {
            Value::Vector(v) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect()),
            Value::Scalar(v) => Ok(vec![(Labels::default(), v)]),
            other => Err(AlertError::Config(format!(
                "rule result is not a vector or scalar but a {}",
                other.type_name()
            ))),
        }
    }

    fn record(
        &self,
        storage: &dyn Storage,
        tenant: &str,
        r: &RecordingRule,
        limit: usize,
        t: i64,
    ) -> Result<(), AlertError> {
        let samples = Self::query(storage, &r.expr, t)?;
        if limit > 0 && samples.len() > limit {
            return Err(AlertError::Config(format!(
                "exceeded limit of {limit} with {} series",
                samples.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(samples.len());
        for (mut labels, v) in samples {
            labels.set(METRIC_NAME, &r.name);
            for (k, val) in &r.labels {
                labels.set(k, val);
            }
            if !seen.insert(labels.clone()) {
                return Err(AlertError::Config(
                    "vector contains metrics with the same labelset after applying rule labels"
                        .into(),
                ));
            }
            out.push((labels, v));
        }
        if let Some(recorded) = self.recorded.get(tenant) {
            recorded.append(t, out);
        }
        Ok(())
    }

    fn alert(
        &self,
        storage: &dyn Storage,
        tenant: &str,
        r: &AlertingRule,
        limit: usize,
        t: i64,
        alerts: &mut RuleAlerts,
    ) -> Result<(), AlertError> {
        let samples = Self::query(storage, &r.expr, t)?;
        let mut seen = HashSet::new();
        let mut results = Vec::with_capacity(samples.len());
        for (sample_labels, value) in samples {
            let base = sample_labels.without_name();
            let template_labels: BTreeMap<String, String> =
                base.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let data = Data {
                labels: &template_labels,
                external_labels: &self.cfg.external_labels,
                external_url: &self.cfg.external_url,
                value,
            };
            let mut labels = base;
            for (k, tmpl) in &r.labels {
                labels.set(k, &tmpl.expand(&data));
            }
            labels.set("alertname", &r.name);
            let mut annotations: BTreeMap<String, String> =
                r.annotations.iter().map(|(k, tmpl)| (k.clone(), tmpl.expand(&data))).collect();
            if let Some(focus) = r.exemplars {
                exemplars::annotate(
                    &self.generator,
                    tenant,
                    &labels,
                    t,
                    focus,
                    &self.cfg.external_url,
                    &mut annotations,
                );
            }
            if !seen.insert(labels.clone()) {
                return Err(AlertError::Config(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .into(),
                ));
            }
            results.push(Returned { labels, annotations, value });
        }
        if limit > 0 && results.len() > limit {
            // As Prometheus: the rule's alerts are dropped, the rule reports the error.
            alerts.active.clear();
            return Err(AlertError::Config(format!(
                "exceeded limit of {limit} with {} alerts",
                results.len()
            )));
        }
        alerts.update(t, results);
        Ok(())
    }

    fn write_alert_series(&self, tenant: &str, name: &str, alerts: &RuleAlerts, t: i64) {
        let mut out = Vec::new();
        for a in alerts.live() {
            let mut l = a.labels.clone();
            l.set("alertname", name);
            let mut s = l.clone();
            s.set(METRIC_NAME, ALERTS);
            s.set("alertstate", a.state.as_str());
            out.push((s, 1.0));
            l.set(METRIC_NAME, ALERTS_FOR_STATE);
            out.push((l, a.active_at as f64 / 1000.0));
        }
        if let (false, Some(recorded)) = (out.is_empty(), self.recorded.get(tenant)) {
            recorded.append(t, out);
        }
    }

    /// Evaluates every group on its interval and sends notifications until `stop`.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let notifier = Notifier::start(self.cfg.targets.clone());
        *self.notifier.lock() = Some(notifier.clone());
        let mut loops = Vec::new();
        for gi in 0..self.groups.len() {
            let (me, n) = (self.clone(), notifier.clone());
            loops.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.groups[gi].group.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    let t = promql::now_ms();
                    let storage = me.group_storage(gi, t).await;
                    let me2 = me.clone();
                    let evaluated =
                        tokio::task::spawn_blocking(move || me2.eval_group_over(gi, t, storage))
                            .await;
                    match evaluated {
                        Ok(alerts) if !alerts.is_empty() => n.queue(alerts),
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "rule group evaluation panicked"),
                    }
                }
            }));
        }
        if !self.groups.is_empty() {
            tracing::info!(
                tenants = self.tenants().len(),
                groups = self.groups.len(),
                rules = self.rule_count(),
                "rule evaluation started"
            );
        }
        stop.await;
        for l in loops {
            l.abort();
        }
    }

    /// Notification counters (zero before `run`).
    pub fn notify_stats(&self) -> Option<Arc<super::notify::NotifyStats>> {
        self.notifier.lock().as_ref().map(|n| n.stats.clone())
    }

    /// Every pending and firing alert of `tenant`.
    pub fn live_alerts(&self, tenant: &str) -> Vec<(String, super::state::Alert)> {
        let mut out = Vec::new();
        for g in self.groups_of(tenant) {
            let st = g.status.lock();
            for (rule, rs) in g.group.rules.iter().zip(&st.rules) {
                out.extend(rs.alerts.live().map(|a| (rule.name().to_string(), a.clone())));
            }
        }
        out
    }

    /// The state (`firing` if any alert fires, …) of `tenant`'s rule `name`, for tests and logs.
    pub fn rule_state(&self, tenant: &str, name: &str) -> Option<AlertState> {
        self.groups_of(tenant).find_map(|g| {
            let st = g.status.lock();
            g.group
                .rules
                .iter()
                .zip(&st.rules)
                .find(|(r, _)| r.name() == name)
                .map(|(_, s)| s.alerts.state())
        })
    }
}
