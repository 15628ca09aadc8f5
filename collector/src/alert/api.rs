//! `/api/v1/rules` and `/api/v1/alerts` data, in Prometheus' JSON shape (what Grafana's
//! Prometheus datasource and alerting UI parse): durations in seconds, times in RFC 3339, alert
//! values as Go's `%e` strings, `lastError` only when there is one. Each answer is one
//! tenant's: its groups and their alerts (none, for a tenant without rules).

use serde_json::{Map, Value as Json, json};

use super::eval::{Alerting, GroupStatus, RuleStatus};
use super::notify::rfc3339;
use super::rules::Rule;
use super::state::Alert;
use super::template::Template;

/// Go's zero time, which Prometheus shows for a rule never evaluated.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `/api/v1/rules` filters (`type`, `rule_name[]`, `rule_group[]`, `file[]`).
#[derive(Debug, Default, Clone)]
pub struct RuleFilter {
    /// `alert` or `record`.
    pub kind: Option<String>,
    pub names: Vec<String>,
    pub groups: Vec<String>,
    pub files: Vec<String>,
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`.
pub fn format_e(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let s = format!("{v:e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

fn time(ms: Option<i64>) -> String {
    ms.map_or_else(|| ZERO_TIME.to_string(), rfc3339)
}

fn labels_json(l: &crate::promql::labels::Labels) -> Json {
    l.to_json()
}

fn map_json<'a>(m: impl Iterator<Item = (&'a str, &'a str)>) -> Json {
    Json::Object(m.map(|(k, v)| (k.to_string(), Json::from(v))).collect::<Map<_, _>>())
}

fn templates_json(t: &[(String, Template)]) -> Json {
    map_json(t.iter().map(|(k, v)| (k.as_str(), v.source())))
}

pub fn alert_json(a: &Alert) -> Json {
    let mut o = json!({
        "labels": labels_json(&a.labels),
        "annotations": map_json(a.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "value": format_e(a.value),
    });
    if let (Some(since), Some(obj)) = (a.keep_firing_since, o.as_object_mut()) {
        obj.insert("keepFiringSince".into(), Json::from(rfc3339(since)));
    }
    o
}

fn common(o: &mut Map<String, Json>, st: &RuleStatus) {
    o.insert("health".into(), Json::from(st.health.as_str()));
    if let Some(e) = &st.last_error {
        o.insert("lastError".into(), Json::from(e.as_str()));
    }
    o.insert("evaluationTime".into(), Json::from(st.eval_seconds));
    o.insert("lastEvaluation".into(), Json::from(time(st.last_eval)));
}

fn rule_json(rule: &Rule, st: &RuleStatus) -> Json {
    let mut o = Map::new();
    match rule {
        Rule::Alerting(r) => {
            o.insert("state".into(), Json::from(st.alerts.state().as_str()));
            o.insert("name".into(), Json::from(r.name.as_str()));
            o.insert("query".into(), Json::from(r.query.as_str()));
            o.insert("duration".into(), Json::from(r.hold.as_secs_f64()));
            o.insert("keepFiringFor".into(), Json::from(r.keep_firing_for.as_secs_f64()));
            o.insert("labels".into(), templates_json(&r.labels));
            o.insert("annotations".into(), templates_json(&r.annotations));
            o.insert("alerts".into(), Json::Array(st.alerts.live().map(alert_json).collect()));
            common(&mut o, st);
            o.insert("type".into(), Json::from("alerting"));
        }
        Rule::Recording(r) => {
            o.insert("name".into(), Json::from(r.name.as_str()));
            o.insert("query".into(), Json::from(r.query.as_str()));
            o.insert(
                "labels".into(),
                map_json(r.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            );
            common(&mut o, st);
            o.insert("type".into(), Json::from("recording"));
        }
    }
    Json::Object(o)
}

fn keep(list: &[String], v: &str) -> bool {
    list.is_empty() || list.iter().any(|x| x == v)
}

impl Alerting {
    /// The `data` of `/api/v1/rules` for `tenant`.
    pub fn rules_json(&self, tenant: &str, f: &RuleFilter) -> Json {
        let mut groups = Vec::new();
        for g in self.groups_of(tenant) {
            let file = g.group.file.display().to_string();
            if !keep(&f.groups, &g.group.name) || !keep(&f.files, &file) {
                continue;
            }
            let st: GroupStatus = g.status.lock().clone();
            let rules: Vec<Json> =
                g.group
                    .rules
                    .iter()
                    .zip(&st.rules)
                    .filter(|(r, _)| match (f.kind.as_deref(), r) {
                        (Some("alert"), Rule::Recording(_))
                        | (Some("record"), Rule::Alerting(_)) => false,
                        _ => keep(&f.names, r.name()),
                    })
                    .map(|(r, s)| rule_json(r, s))
                    .collect();
            // Prometheus leaves out groups a rule filter emptied.
            if rules.is_empty() && (!f.names.is_empty() || f.kind.is_some()) {
                continue;
            }
            groups.push(json!({
                "name": g.group.name,
                "file": file,
                "rules": rules,
                "interval": g.group.interval.as_secs_f64(),
                "limit": g.group.limit,
                "evaluationTime": st.eval_seconds,
                "lastEvaluation": time(st.last_eval),
            }));
        }
        json!({ "groups": groups })
    }

    /// The `data` of `/api/v1/alerts` for `tenant`.
    pub fn alerts_json(&self, tenant: &str) -> Json {
        let alerts: Vec<Json> =
            self.live_alerts(tenant).iter().map(|(_, a)| alert_json(a)).collect();
        json!({ "alerts": alerts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_go_e_format() {
        assert_eq!(format_e(1.0), "1e+00");
        assert_eq!(format_e(0.742), "7.42e-01");
        assert_eq!(format_e(12345.0), "1.2345e+04");
        assert_eq!(format_e(f64::NAN), "NaN");
        assert_eq!(format_e(f64::NEG_INFINITY), "-Inf");
    }
}
