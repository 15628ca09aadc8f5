//! Alerting per tenant: a `--rules` directory with a sub-directory per tenant, each tenant's
//! rule evaluated over that tenant's span metrics only, `/prometheus/api/v1/rules`, `/alerts`
//! and `ALERTS` answering the caller's tenant only, and notifications (Alertmanager v2 and the
//! webhook) naming the tenant in a `tenant` label no rule can override.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_collector::alert::exemplars::{FLAMEGRAPH_UI_URL, FLAMEGRAPH_URL, SLOW_TRACE_IDS};

use crate::alert::{posts, receiver, start_notifying};
use crate::common::*;

/// The same alert name in both tenants; A's rule also tries to route as B.
fn rule(tenant_label: Option<&str>) -> String {
    let labels =
        tenant_label.map(|t| format!("        labels: {{tenant: {t}}}\n")).unwrap_or_default();
    format!(
        r#"groups:
  - name: latency
    interval: 200ms
    rules:
      - record: service:latency_p99:2s
        expr: histogram_quantile(0.99, sum by (le, service) (rate(traces_spanmetrics_latency_bucket[2s])))
      - alert: Slow
        expr: histogram_quantile(0.99, sum by (le, service, span_name) (rate(traces_spanmetrics_latency_bucket{{service="payment"}}[2s]))) > 0.5
        for: 400ms
{labels}"#
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `n` payment calls of `ms` each as `tenant` (None: no header), trace numbers from `first`.
async fn send(c: &Collector, tenant: Option<&str>, first: u64, n: u64, ms: u64) {
    let start = now_nanos() - 5_000_000_000;
    let rs = (first..first + n).map(|i| trace(i, "payment", "charge", start, ms, 0, false));
    crate::promql::send(c, tenant, rs.collect()).await;
}

async fn get(c: &Collector, tenant: Option<&str>, path: &str) -> Value {
    let mut req = reqwest::Client::new().get(format!("{}{path}", c.http()));
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path} as {tenant:?}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v["data"].clone()
}

fn ids(range: std::ops::Range<u64>) -> BTreeSet<String> {
    range.map(|n| hex::encode(trace_id(n))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_alerts_on_its_own_spans_and_sees_only_its_own_rules() {
    let (base, got) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    write(&rules.join("A/latency.yml"), &rule(Some("B")));
    write(&rules.join("B/latency.yml"), &rule(None));
    let c = start_notifying(rules, &base).await;

    // Slow payment calls in A, and (to tell exemplars apart) in the default tenant, which has no
    // rules; none in B. Calls are fed at a steady pace until both receivers have A's alert.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut a_next, mut default_next) = (1u64, 1_000_000u64);
    while posts(&got, "/api/v2/alerts", "Slow").is_empty()
        || posts(&got, "/hook", "Slow").is_empty()
    {
        assert!(Instant::now() < deadline, "A's alert never fired; got {:?}", got.0.lock());
        send(&c, Some("A"), a_next, 5, 900).await;
        send(&c, None, default_next, 5, 2000).await;
        a_next += 5;
        default_next += 5;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Notifications: only A's, labelled tenant="A" over the rule's own `tenant: B`.
    for path in ["/api/v2/alerts", "/hook"] {
        let sent = posts(&got, path, "Slow");
        assert!(sent.iter().all(|a| a["labels"]["tenant"] == "A"), "{path}: {sent:?}");
    }
    let a = posts(&got, "/api/v2/alerts", "Slow").remove(0);
    assert_eq!(a["labels"]["service"], "payment");
    // Exemplars are A's slow calls, never the default tenant's slower ones.
    let slow: BTreeSet<String> =
        a["annotations"][SLOW_TRACE_IDS].as_str().unwrap().split(',').map(String::from).collect();
    assert!(!slow.is_empty() && slow.is_subset(&ids(1..a_next)), "{a}");
    // Links: only the web UI's, naming the tenant; no link that would answer for the default
    // tenant (the native flamegraph, the query API as generatorURL).
    let ui = a["annotations"][FLAMEGRAPH_UI_URL].as_str().unwrap();
    assert!(ui.starts_with(&format!("{}/flamegraph?service=payment&span_name=charge", c.http())));
    assert!(ui.ends_with("&tenant=A"), "{ui}");
    assert!(a["annotations"].get(FLAMEGRAPH_URL).is_none(), "{a}");
    assert!(a.get("generatorURL").is_none(), "{a}");

    // The API as B: B's rules (B's file), evaluated all along over B's (empty) series, and
    // nothing firing.
    let b_rules = get(&c, Some("B"), "/prometheus/api/v1/rules").await;
    assert_ne!(b_rules["groups"][0]["lastEvaluation"], "0001-01-01T00:00:00Z", "{b_rules}");
    let groups = b_rules["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{b_rules}");
    assert!(groups[0]["file"].as_str().unwrap().ends_with("B/latency.yml"), "{b_rules}");
    let slow_rule = &groups[0]["rules"][1];
    assert_eq!(
        (slow_rule["name"].as_str(), slow_rule["state"].as_str()),
        (Some("Slow"), Some("inactive"))
    );
    assert!(slow_rule["alerts"].as_array().unwrap().is_empty(), "{b_rules}");
    assert_eq!(slow_rule["labels"], serde_json::json!({}), "B's rule, not A's: {b_rules}");
    let b_alerts = get(&c, Some("B"), "/prometheus/api/v1/alerts").await;
    assert_eq!(b_alerts, serde_json::json!({"alerts": []}));
    let q = "/prometheus/api/v1/query?query=ALERTS";
    assert_eq!(get(&c, Some("B"), q).await["result"], serde_json::json!([]));
    let rec = "/prometheus/api/v1/query?query=service%3Alatency_p99%3A2s";
    assert_eq!(
        get(&c, Some("B"), rec).await["result"],
        serde_json::json!([]),
        "B recorded nothing"
    );

    // As A: A's firing alert, its ALERTS series and recorded series.
    let a_alerts = get(&c, Some("A"), "/prometheus/api/v1/alerts").await;
    let live = a_alerts["alerts"].as_array().unwrap();
    assert!(
        live.iter().any(|x| x["state"] == "firing" && x["labels"]["alertname"] == "Slow"),
        "{a_alerts}"
    );
    let a_rules = get(&c, Some("A"), "/prometheus/api/v1/rules").await;
    assert!(a_rules["groups"][0]["file"].as_str().unwrap().ends_with("A/latency.yml"));
    assert_eq!(a_rules["groups"][0]["rules"][1]["state"], "firing");
    let firing =
        get(&c, Some("A"), "/prometheus/api/v1/query?query=ALERTS%7Balertstate%3D%22firing%22%7D")
            .await;
    assert_eq!(firing["result"][0]["metric"]["alertname"], "Slow", "{firing}");
    assert!(!get(&c, Some("A"), rec).await["result"].as_array().unwrap().is_empty());

    // The default tenant, which has no rules: the empty, well-formed answers.
    assert_eq!(get(&c, None, "/prometheus/api/v1/rules").await, serde_json::json!({"groups": []}));
    assert_eq!(get(&c, None, "/prometheus/api/v1/alerts").await, serde_json::json!({"alerts": []}));
    assert_eq!(get(&c, None, q).await["result"], serde_json::json!([]));
    let none = get(&c, Some("nobody"), "/prometheus/api/v1/rules").await;
    assert_eq!(none, serde_json::json!({"groups": []}));
    c.stop().await;
}

#[tokio::test]
async fn a_rules_sub_directory_that_names_no_tenant_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    write(&rules.join("team a/latency.yml"), &rule(None));
    let err = skein_collector::config::ServeArgs {
        data_dir: Some(dir.path().join("data")),
        rules: Some(rules),
        ..Default::default()
    }
    .resolve()
    .unwrap_err()
    .to_string();
    assert!(err.contains("team a") && err.contains("tenant id"), "{err}");
}

#[test]
fn rules_check_reports_each_tenant() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("top.yml"), &rule(None));
    write(&dir.path().join("A/a.yml"), &rule(None));
    std::fs::create_dir_all(dir.path().join("B")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["rules", "check", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let d = dir.path().display();
    let want = [
        format!("{d}: tenant A: SUCCESS: 2 rules found"),
        format!("{d}: tenant B: SUCCESS: 0 rules found"),
        format!("{d}: SUCCESS: 2 rules found"),
    ];
    for w in &want {
        assert!(stdout.lines().any(|l| l == w), "missing {w:?} in {stdout}");
    }
    write(&dir.path().join("b@d/x.yml"), &rule(None));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["rules", "check", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("b@d"), "{out:?}");
}
