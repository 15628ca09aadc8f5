//! Prometheus rule files: `groups: [{name, interval, limit, rules: [{alert, expr, for,
//! keep_firing_for, labels, annotations} | {record, expr, labels}]}]`, parsed and validated as
//! Prometheus' `rulefmt` does (unknown fields are errors), plus one check of skein's own: each
//! expression is dry-run against an empty store, so constructs skein's PromQL does not
//! evaluate are reported at load time instead of failing every evaluation.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use promql_parser::parser::Expr;
use promql_parser::parser::value::ValueType;
use regex::Regex;
use serde::Deserialize;

use super::error::AlertError;
use super::template::Template;
use crate::promql::{self, PromqlError, Storage};
use crate::tenant::DEFAULT_TENANT;

/// Group interval when the file gives none (Prometheus' global default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: String,
    interval: Option<String>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    record: Option<String>,
    alert: Option<String>,
    #[serde(default)]
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Group {
    /// Whose span metrics the group reads (`layout` says which files are whose).
    pub tenant: String,
    pub name: String,
    /// The file it came from, as given (shown by `/api/v1/rules`).
    pub file: PathBuf,
    pub interval: Duration,
    /// Most alerts (or recorded series) one rule may produce; 0 = no limit.
    pub limit: usize,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub enum Rule {
    Alerting(AlertingRule),
    Recording(RecordingRule),
}

impl Rule {
    pub fn name(&self) -> &str {
        match self {
            Rule::Alerting(r) => &r.name,
            Rule::Recording(r) => &r.name,
        }
    }

    pub fn query(&self) -> &str {
        match self {
            Rule::Alerting(r) => &r.query,
            Rule::Recording(r) => &r.query,
        }
    }

    pub fn expr(&self) -> &Expr {
        match self {
            Rule::Alerting(r) => &r.expr,
            Rule::Recording(r) => &r.expr,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AlertingRule {
    pub name: String,
    pub query: String,
    pub expr: Expr,
    /// Set for latency alerts: which exemplars their annotations list.
    pub exemplars: Option<super::exemplars::Focus>,
    pub hold: Duration,
    pub keep_firing_for: Duration,
    pub labels: Vec<(String, Template)>,
    pub annotations: Vec<(String, Template)>,
}

#[derive(Debug, Clone)]
pub struct RecordingRule {
    pub name: String,
    pub query: String,
    pub expr: Expr,
    pub labels: BTreeMap<String, String>,
}

static DURATION: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
        .ok()
});
static METRIC_NAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$").ok());
static LABEL_NAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z_][a-zA-Z0-9_]*$").ok());

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|r| r.is_match(s))
}

/// A Prometheus duration (`90s`, `1h30m`, `1m0s`, `0`; units y w d h m s ms, largest first).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("not a valid duration string: {s:?}");
    let re = DURATION.as_ref().ok_or_else(bad)?;
    let caps = re.captures(s).filter(|_| !s.is_empty()).ok_or_else(bad)?;
    const UNIT_MS: [u64; 7] =
        [365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1];
    let mut ms: u64 = 0;
    for (i, unit) in UNIT_MS.iter().enumerate() {
        if let Some(m) = caps.get(i + 1) {
            let n: u64 = m.as_str().parse().map_err(|_| bad())?;
            ms = n.checked_mul(*unit).and_then(|v| ms.checked_add(v)).ok_or_else(bad)?;
        }
    }
    Ok(Duration::from_millis(ms))
}

/// Prometheus prints durations as `1m`, `1h30m`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("y", 365 * 86_400_000u128),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// Store without series: dry runs find unsupported constructs without data.
struct NoData;

impl Storage for NoData {
    fn select(
        &self,
        _: &dyn Fn(&crate::promql::labels::Labels) -> bool,
        _: i64,
        _: i64,
    ) -> Result<Vec<crate::promql::value::Series>, PromqlError> {
        Ok(Vec::new())
    }
}

fn check_expr(query: &str) -> Result<Expr, String> {
    if query.trim().is_empty() {
        return Err("field 'expr' must be set in rule".into());
    }
    let expr = promql::parse(query).map_err(|e| format!("could not parse expression: {e}"))?;
    if !matches!(expr.value_type(), ValueType::Vector | ValueType::Scalar) {
        return Err(format!(
            "expression must be an instant vector or a scalar, not a {}",
            match expr.value_type() {
                ValueType::Matrix => "range vector",
                _ => "string",
            }
        ));
    }
    match promql::instant(&NoData, &expr, promql::now_ms()) {
        Err(e @ PromqlError::Unsupported(_)) => Err(e.to_string()),
        _ => Ok(expr),
    }
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for name in labels.keys() {
        if name == "__name__" {
            return Err("invalid label name: __name__".into());
        }
        if !matches(&LABEL_NAME, name) {
            return Err(format!("invalid label name: {name}"));
        }
    }
    Ok(())
}

fn templates(m: &BTreeMap<String, String>, what: &str) -> Result<Vec<(String, Template)>, String> {
    m.iter()
        .map(|(k, v)| {
            Template::parse(v).map(|t| (k.clone(), t)).map_err(|e| format!("{what} {k:?}: {e}"))
        })
        .collect()
}

fn build_rule(r: RawRule) -> Result<Rule, String> {
    let expr = check_expr(&r.expr);
    match (r.record, r.alert) {
        (Some(_), Some(_)) => Err("only one of 'record' and 'alert' must be set".into()),
        (None, None) => Err("one of 'record' or 'alert' must be set".into()),
        (Some(name), None) => {
            if !matches(&METRIC_NAME, &name) {
                return Err(format!("invalid recording rule name: {name}"));
            }
            if r.for_.is_some() {
                return Err("invalid field 'for' in recording rule".into());
            }
            if r.keep_firing_for.is_some() {
                return Err("invalid field 'keep_firing_for' in recording rule".into());
            }
            if !r.annotations.is_empty() {
                return Err("invalid field 'annotations' in recording rule".into());
            }
            check_labels(&r.labels)?;
            Ok(Rule::Recording(RecordingRule {
                name,
                query: r.expr,
                expr: expr?,
                labels: r.labels,
            }))
        }
        (None, Some(name)) => {
            if name.is_empty() {
                return Err("field 'alert' must not be empty".into());
            }
            let dur = |v: &Option<String>, field: &str| match v {
                None => Ok(Duration::ZERO),
                Some(s) => parse_duration(s).map_err(|e| format!("field '{field}': {e}")),
            };
            let hold = dur(&r.for_, "for")?;
            let keep_firing_for = dur(&r.keep_firing_for, "keep_firing_for")?;
            check_labels(&r.labels)?;
            for k in r.annotations.keys() {
                if !matches(&LABEL_NAME, k) {
                    return Err(format!("invalid annotation name: {k}"));
                }
            }
            let labels = templates(&r.labels, "label")?;
            let annotations = templates(&r.annotations, "annotation")?;
            let expr = expr?;
            Ok(Rule::Alerting(AlertingRule {
                name,
                exemplars: super::exemplars::Focus::of(&r.expr, &expr),
                query: r.expr,
                expr,
                hold,
                keep_firing_for,
                labels,
                annotations,
            }))
        }
    }
}

/// Parses one file's text into the default tenant's groups. Every problem is reported, not
/// only the first.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Group>, Vec<AlertError>> {
    // An empty file is an empty rule set (promtool: "0 rules found").
    if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Ok(Vec::new());
    }
    let raw: RawFile = serde_yaml::from_str(text)
        .map_err(|e| vec![AlertError::Yaml { path: path.to_path_buf(), message: e.to_string() }])?;
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut seen = HashSet::new();
    for g in raw.groups {
        let group_err = |message: String| AlertError::Group {
            path: path.to_path_buf(),
            group: g.name.clone(),
            message,
        };
        if g.name.is_empty() {
            errors.push(group_err("groupname must not be empty".into()));
        } else if !seen.insert(g.name.clone()) {
            errors.push(group_err(format!("groupname: {:?} is repeated in the same file", g.name)));
        }
        let interval = match g.interval.as_deref().map(parse_duration) {
            None => DEFAULT_INTERVAL,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                errors.push(group_err("interval must be greater than zero".into()));
                DEFAULT_INTERVAL
            }
            Some(Err(e)) => {
                errors.push(group_err(format!("interval: {e}")));
                DEFAULT_INTERVAL
            }
        };
        let mut rules = Vec::new();
        for (i, r) in g.rules.into_iter().enumerate() {
            let name = r.alert.clone().or_else(|| r.record.clone()).unwrap_or_default();
            match build_rule(r) {
                Ok(rule) => rules.push(rule),
                Err(m) => errors.push(AlertError::in_rule(path, &g.name, i + 1, &name, m)),
            }
        }
        groups.push(Group {
            tenant: DEFAULT_TENANT.to_string(),
            name: g.name,
            file: path.to_path_buf(),
            interval,
            limit: g.limit,
            rules,
        });
    }
    if errors.is_empty() { Ok(groups) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Group>, Vec<String>> {
        parse_file(Path::new("r.yml"), text).map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_valid_file_with_both_rule_kinds() {
        let g = parse(
            r#"
groups:
  - name: latency
    interval: 1s
    limit: 10
    rules:
      - record: service:latency_p99:5m
        expr: histogram_quantile(0.99, sum by (le, service) (rate(traces_spanmetrics_latency_bucket[5m])))
        labels: {source: skein}
      - alert: HighLatency
        expr: service:latency_p99:5m > 0.5
        for: 1m30s
        keep_firing_for: 2m
        labels: {severity: page, team: "{{ $labels.service }}"}
        annotations:
          summary: "p99 of {{ $labels.service }} is {{ $value | humanizeDuration }}"
  - name: other
    rules: []
"#,
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].interval, Duration::from_secs(1));
        assert_eq!(g[0].limit, 10);
        assert_eq!(g[1].interval, DEFAULT_INTERVAL);
        let Rule::Alerting(a) = &g[0].rules[1] else { panic!() };
        assert_eq!(a.hold, Duration::from_secs(90));
        assert_eq!(a.keep_firing_for, Duration::from_secs(120));
        assert_eq!(a.labels.len(), 2);
        assert!(matches!(&g[0].rules[0], Rule::Recording(r) if r.name == "service:latency_p99:5m"));
    }

    #[test]
    fn every_error_names_file_group_and_rule() {
        let errs = parse(
            r#"
groups:
  - name: g
    interval: 1x
    rules:
      - alert: A
        expr: "sum("
      - record: "bad name"
        expr: up
      - alert: B
        record: b
        expr: up
      - alert: C
        expr: up
        for: soon
      - alert: D
        expr: up
        annotations: {summary: "{{ if $value }}hi{{ end }}"}
      - record: r
        expr: up
        for: 1m
      - alert: E
        expr: up[5m]
      - alert: F
        expr: predict_linear(up[5m], 60) > 1
      - alert: G
        expr: ""
  - name: g
    rules: []
"#,
        )
        .unwrap_err();
        let want = [
            "r.yml: group \"g\": interval: not a valid duration string: \"1x\"",
            "r.yml: group \"g\", rule 1 (A): could not parse expression",
            "rule 2 (bad name): invalid recording rule name",
            "rule 3 (B): only one of 'record' and 'alert' must be set",
            "rule 4 (C): field 'for': not a valid duration string",
            "rule 5 (D): annotation \"summary\": template",
            "rule 6 (r): invalid field 'for' in recording rule",
            "rule 7 (E): expression must be an instant vector or a scalar",
            "rule 8 (F): unsupported in skein's PromQL: function predict_linear()",
            "rule 9 (G): field 'expr' must be set",
            "groupname: \"g\" is repeated in the same file",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.contains(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        assert!(errs.iter().all(|e| !e.contains('\n')), "one line per error: {errs:#?}");
    }

    #[test]
    fn unknown_fields_and_non_yaml_are_errors() {
        let e = parse("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n        severity: x\n").unwrap_err();
        assert!(e[0].contains("unknown field `severity`"), "{e:?}");
        let e = parse("groups: [{name: g, evaluation_interval: 1m}]").unwrap_err();
        assert!(e[0].contains("unknown field `evaluation_interval`"), "{e:?}");
        assert!(parse(": : :").is_err());
        assert_eq!(parse("").unwrap().len(), 0);
    }

    #[test]
    fn prometheus_durations() {
        assert_eq!(parse_duration("1m0s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "1", "m", "30m1h", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
