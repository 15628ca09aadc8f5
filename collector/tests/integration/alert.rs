//! Alerting: rule evaluation over span metrics with a fake clock (pending → firing → resolved,
//! exemplar annotations, recorded and `ALERTS` series, the API shapes), the same through a
//! running collector that notifies an Alertmanager-like receiver and a webhook over HTTP, and
//! `skein rules check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use parking_lot::Mutex;
use prost::Message;
use serde_json::Value;
use skein_collector::alert::exemplars::{FLAMEGRAPH_UI_URL, FLAMEGRAPH_URL, SLOW_TRACE_IDS};
use skein_collector::alert::notify::Targets;
use skein_collector::alert::state::AlertState;
use skein_collector::alert::{Alerting, AlertingConfig};
use skein_collector::promql::{self, value::Value as PValue};
use skein_collector::span_metrics::calls::DEFAULT_BUCKETS;
use skein_collector::span_metrics::{SpanMetrics, SpanMetricsConfig};
use skein_collector::tenant::DEFAULT_TENANT;

use crate::common::*;

const RULES: &str = r#"
groups:
  - name: latency
    interval: 1s
    rules:
      - record: service:latency_p99:5s
        expr: histogram_quantile(0.99, sum by (le, service) (rate(traces_spanmetrics_latency_bucket[5s])))
      - alert: PaymentSlow
        expr: histogram_quantile(0.99, sum by (le, service) (rate(traces_spanmetrics_latency_bucket{service="payment"}[5s]))) > 0.5
        for: 3s
        labels:
          severity: page
          owner: "team-{{ $labels.service }}"
        annotations:
          summary: "p99 of {{ $labels.service }} is {{ $value | humanizeDuration }}"
          value: '{{ printf "%.2f" $value }}'
          cluster: "{{ $externalLabels.cluster }}"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `n` calls of `service`/`span` lasting `ms` each; trace numbers from `first`.
fn calls(
    service: &str,
    span: &str,
    first: u64,
    n: u64,
    ms: impl Fn(u64) -> u64,
) -> Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans> {
    let start = now_nanos() - 10_000_000_000;
    (first..first + n).map(|i| trace(i, service, span, start, ms(i), 0, false)).collect()
}

fn hex_id(n: u64) -> String {
    hex::encode(trace_id(n))
}

#[test]
fn latency_alert_pending_firing_resolved_on_a_fake_clock() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "latency.yml", RULES);
    let generator = Arc::new(
        SpanMetrics::open(SpanMetricsConfig {
            buckets: DEFAULT_BUCKETS.to_vec(),
            dimensions: vec![],
            wait: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
            dir: dir.path().join("spanmetrics"),
            max_series: skein_collector::span_metrics::DEFAULT_MAX_SERIES,
        })
        .unwrap(),
    );
    let alerting = Alerting::new(
        AlertingConfig {
            rules: Some(rules),
            external_url: "http://skein.test:3200".into(),
            external_labels: BTreeMap::from([("cluster".into(), "eu1".into())]),
            resend_delay: Duration::from_secs(5),
            targets: Targets { alertmanagers: vec![], webhooks: vec![] },
        },
        generator.clone(),
    )
    .unwrap();
    // A fake clock: one step a second, starting a minute ago.
    let t0 = promql::now_ms() - 60_000;
    let next = std::cell::Cell::new(1u64);
    let step = |i: i64, slow: bool| {
        let t = t0 + i * 1000;
        let payment = if slow {
            // 600..=990 ms, and one call of 3 s: the slowest.
            calls("payment", "charge", next.get(), 10, |k| {
                if k % 10 == 0 { 3000 } else { 600 + (k % 10) * 40 }
            })
        } else {
            calls("payment", "charge", next.get(), 10, |_| 10)
        };
        next.set(next.get() + 10);
        let mut rs = payment;
        rs.extend(calls("orders", "place", 10_000 + next.get(), 5, |_| 20));
        generator.process(DEFAULT_TENANT, &request(rs), t);
        generator.tick(t);
        (t, alerting.eval_group(0, t))
    };

    // t0: one sample, no rate yet; t1: pending.
    let (_, sent) = step(0, true);
    assert!(sent.is_empty());
    assert_eq!(alerting.rule_state(DEFAULT_TENANT, "PaymentSlow"), Some(AlertState::Inactive));
    let (t1, sent) = step(1, true);
    assert!(sent.is_empty(), "pending alerts are not sent");
    assert_eq!(alerting.rule_state(DEFAULT_TENANT, "PaymentSlow"), Some(AlertState::Pending));
    let alerts = alerting.alerts_json(DEFAULT_TENANT);
    assert_eq!(alerts["alerts"][0]["state"], "pending");
    step(2, true);
    step(3, true);
    assert_eq!(alerting.rule_state(DEFAULT_TENANT, "PaymentSlow"), Some(AlertState::Pending));
    // for: 3s after t1.
    let (t4, sent) = step(4, true);
    assert_eq!(alerting.rule_state(DEFAULT_TENANT, "PaymentSlow"), Some(AlertState::Firing));
    assert_eq!(sent.len(), 1, "{sent:?}");
    let a = &sent[0];
    assert_eq!(a.labels["alertname"], "PaymentSlow");
    assert_eq!(a.labels["service"], "payment");
    assert_eq!(a.labels["severity"], "page");
    assert_eq!(a.labels["owner"], "team-payment");
    assert_eq!(a.labels["cluster"], "eu1", "external labels are added");
    assert!(a.annotations["summary"].starts_with("p99 of payment is "), "{a:?}");
    assert_eq!(a.annotations["cluster"], "eu1");
    let v: f64 = a.annotations["value"].parse().unwrap();
    assert!(v > 0.5 && v < 4.1, "{a:?}");
    assert!(a.generator_url.starts_with("http://skein.test:3200/prometheus/api/v1/query?query="));
    // Exemplars: the 3 s calls first, then the slowest of the rest; all payment traces.
    let ids: Vec<&str> = a.annotations[SLOW_TRACE_IDS].split(',').collect();
    assert_eq!(ids.len(), 5, "{a:?}");
    let payment_ids: Vec<String> = (1..next.get()).map(hex_id).collect();
    assert!(ids.iter().all(|id| payment_ids.iter().any(|p| p == id)), "{ids:?}");
    let slowest: Vec<String> = (1..next.get()).filter(|k| k % 10 == 0).map(hex_id).collect();
    assert!(slowest.iter().any(|s| s == ids[0]), "the 3 s calls come first: {ids:?}");
    let fg = &a.annotations[FLAMEGRAPH_URL];
    assert!(
        fg.starts_with("http://skein.test:3200/skein/api/flamegraph?service=payment&span_name=charge&min_duration="),
        "{fg}"
    );
    assert!(
        a.annotations[FLAMEGRAPH_UI_URL]
            .starts_with("http://skein.test:3200/flamegraph?service=payment&")
    );
    assert_eq!(a.starts_at, skein_collector::alert::notify::rfc3339(t4));

    // API shapes while firing.
    let rules = alerting.rules_json(DEFAULT_TENANT, &Default::default());
    let g = &rules["groups"][0];
    assert_eq!(g["name"], "latency");
    assert_eq!(g["interval"], 1.0);
    let rec = &g["rules"][0];
    assert_eq!((rec["type"].as_str(), rec["health"].as_str()), (Some("recording"), Some("ok")));
    let r = &g["rules"][1];
    assert_eq!(r["type"], "alerting");
    assert_eq!(r["state"], "firing");
    assert_eq!(r["duration"], 3.0);
    assert_eq!(r["keepFiringFor"], 0.0);
    assert_eq!(r["labels"]["owner"], "team-{{ $labels.service }}", "rule labels are the templates");
    assert_eq!(r["health"], "ok");
    assert!(r.get("lastError").is_none());
    assert_eq!(r["alerts"][0]["state"], "firing");
    assert_eq!(r["alerts"][0]["activeAt"], skein_collector::alert::notify::rfc3339(t1));
    assert!(r["alerts"][0]["value"].as_str().unwrap().contains("e+00"), "{r}");
    for k in ["name", "query", "annotations", "evaluationTime", "lastEvaluation"] {
        assert!(r.get(k).is_some(), "{k} missing in {r}");
    }

    // Rule output is queryable: the recorded series and ALERTS / ALERTS_FOR_STATE.
    let storage = alerting.storage(DEFAULT_TENANT);
    let vector = |q: &str| match promql::instant(storage.as_ref(), &promql::parse(q).unwrap(), t4)
        .unwrap()
    {
        PValue::Vector(v) => v,
        other => panic!("{other:?}"),
    };
    let p99 = vector("service:latency_p99:5s{service=\"payment\"}");
    assert_eq!(p99.len(), 1);
    assert!(p99[0].v > 0.5);
    assert_eq!(vector("service:latency_p99:5s").len(), 2, "orders too");
    let firing = vector("ALERTS{alertname=\"PaymentSlow\", alertstate=\"firing\"}");
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0].labels.get("service"), Some("payment"));
    let for_state = vector("ALERTS_FOR_STATE{alertname=\"PaymentSlow\"}");
    assert_eq!(for_state[0].v, t1 as f64 / 1000.0);

    // Not re-sent before the resend delay (5 s).
    let (_, sent) = step(5, false);
    assert!(sent.is_empty());
    // Fast calls from now on: resolved once the 5 s window holds none of the slow ones.
    let mut resolved = None;
    for i in 6..20 {
        let (t, sent) = step(i, false);
        if alerting.rule_state(DEFAULT_TENANT, "PaymentSlow") == Some(AlertState::Inactive) {
            let a = sent
                .iter()
                .find(|a| a.labels["alertname"] == "PaymentSlow")
                .expect("resolved alert sent");
            assert_eq!(
                a.ends_at,
                skein_collector::alert::notify::rfc3339(t),
                "endsAt = resolution time"
            );
            resolved = Some(i);
            break;
        }
        // Still firing: re-sent every 5 s with a future endsAt.
        if i == 10 {
            assert_eq!(sent.len(), 1, "resend after 5 s");
        }
    }
    let i = resolved.expect("alert resolved");
    assert!((9..=12).contains(&i), "resolved at step {i}");
    assert_eq!(alerting.alerts_json(DEFAULT_TENANT)["alerts"].as_array().unwrap().len(), 0);
    let rules = alerting.rules_json(DEFAULT_TENANT, &Default::default());
    assert_eq!(rules["groups"][0]["rules"][1]["state"], "inactive");
    // The resolved alert is re-sent with the resends, not on every evaluation.
    let (_, sent) = step(i + 1, false);
    assert!(sent.is_empty());
}

/// What an Alertmanager-like receiver and a webhook got: (path, body).
#[derive(Clone, Default)]
pub(crate) struct Received(pub(crate) Arc<Mutex<Vec<(String, Value)>>>);

/// An Alertmanager-like receiver (`/api/v2/alerts`) and a webhook (`/hook`).
pub(crate) async fn receiver() -> (String, Received) {
    let got = Received::default();
    async fn keep(State(r): State<Received>, uri: axum::http::Uri, Json(v): Json<Value>) {
        r.0.lock().push((uri.path().to_string(), v));
    }
    let app = axum::Router::new()
        .route("/api/v2/alerts", post(keep))
        .route("/hook", post(keep))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

async fn send(c: &Collector, rs: Vec<opentelemetry_proto::tonic::trace::v1::ResourceSpans>) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/traces", c.otlp_http()))
        .header("content-type", "application/x-protobuf")
        .body(request(rs).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn get(c: &Collector, path: &str) -> Value {
    let resp = reqwest::Client::new().get(format!("{}{path}", c.http())).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

/// A collector running `rules` that notifies the [`receiver`] at `base` (Alertmanager and
/// webhook), resending every second and sampling span metrics every 100 ms.
pub(crate) async fn start_notifying(rules: PathBuf, base: &str) -> Collector {
    let (am, hook) = (base.to_string(), format!("{base}/hook"));
    Collector::start(move |a| {
        a.rules = Some(rules);
        a.alertmanager_url = Some(am);
        a.alert_webhook_url = Some(hook);
        a.alert_resend_delay = Some("1s".into());
        a.metrics_scrape_interval = Some("100ms".into());
    })
    .await
}

/// Posts received at `path` for alert `name`.
pub(crate) fn posts(got: &Received, path: &str, name: &str) -> Vec<Value> {
    got.0
        .lock()
        .iter()
        .filter(|(p, _)| p == path)
        .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
        .filter(|a| a["labels"]["alertname"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_evaluates_rules_serves_their_state_and_notifies() {
    let (base, got) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "fast.yml",
        r#"
groups:
  - name: fast
    interval: 200ms
    rules:
      - record: service:latency_p99:2s
        expr: histogram_quantile(0.99, sum by (le, service) (rate(traces_spanmetrics_latency_bucket[2s])))
      - alert: Slow
        expr: histogram_quantile(0.99, sum by (le, service, span_name) (rate(traces_spanmetrics_latency_bucket{service="payment"}[2s]))) > 0.5
        for: 600ms
        annotations:
          summary: "{{ $labels.span_name }} p99 {{ $value | humanizeDuration }}"
"#,
    );
    let c = start_notifying(rules.clone(), &base).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 1;
    // Slow calls until both receivers have the firing alert.
    while posts(&got, "/api/v2/alerts", "Slow").is_empty()
        || posts(&got, "/hook", "Slow").is_empty()
    {
        assert!(Instant::now() < deadline, "no firing alert; got {:?}", got.0.lock());
        send(&c, calls("payment", "charge", n, 5, |_| 900)).await;
        n += 5;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = posts(&got, "/api/v2/alerts", "Slow").remove(0);
    assert_eq!(a["labels"]["service"], "payment");
    assert_eq!(a["labels"]["span_name"], "charge");
    assert!(a["annotations"]["summary"].as_str().unwrap().starts_with("charge p99 "), "{a}");
    let ids = a["annotations"][SLOW_TRACE_IDS].as_str().unwrap();
    assert!(!ids.is_empty() && ids.split(',').count() <= 5, "{a}");
    let http = c.http();
    assert!(
        a["annotations"][FLAMEGRAPH_URL].as_str().unwrap().starts_with(&format!(
            "{http}/skein/api/flamegraph?service=payment&span_name=charge&min_duration="
        )),
        "external URL defaults to the HTTP address: {a}"
    );
    for k in ["startsAt", "endsAt", "generatorURL"] {
        assert!(a[k].is_string(), "{k}: {a}");
    }
    assert_eq!(
        posts(&got, "/hook", "Slow")[0]["labels"],
        a["labels"],
        "the webhook gets the same alerts"
    );

    // The API shows the firing alert and the rules.
    let alerts = get(&c, "/prometheus/api/v1/alerts").await;
    assert_eq!(alerts["status"], "success");
    let live = alerts["data"]["alerts"].as_array().unwrap();
    assert!(
        live.iter().any(|a| a["state"] == "firing" && a["labels"]["alertname"] == "Slow"),
        "{alerts}"
    );
    let rules = get(&c, "/prometheus/api/v1/rules").await;
    let g = &rules["data"]["groups"][0];
    assert_eq!(g["name"], "fast");
    assert_eq!(g["file"], rules_file_display(&rules_path_of(&c)));
    assert_eq!(g["interval"], 0.2);
    let only_alerts = get(&c, "/prometheus/api/v1/rules?type=alert").await;
    let r = only_alerts["data"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["type"], "alerting");
    let only_records = get(&c, "/prometheus/api/v1/rules?type=record").await;
    assert_eq!(only_records["data"]["groups"][0]["rules"][0]["name"], "service:latency_p99:2s");
    // Rule output through the query API.
    let q = get(&c, "/prometheus/api/v1/query?query=ALERTS%7Balertstate%3D%22firing%22%7D").await;
    assert_eq!(q["data"]["result"][0]["metric"]["alertname"], "Slow", "{q}");
    let q = get(&c, "/prometheus/api/v1/query?query=service%3Alatency_p99%3A2s").await;
    assert!(!q["data"]["result"].as_array().unwrap().is_empty(), "{q}");

    // Fast calls: the alert resolves and a notification with endsAt in the past arrives.
    let resolved = |got: &Received| {
        posts(got, "/api/v2/alerts", "Slow").iter().any(|a| {
            let ends = humantime::parse_rfc3339_weak(a["endsAt"].as_str().unwrap_or("")).ok();
            ends.is_some_and(|e| e <= std::time::SystemTime::now())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !resolved(&got) {
        assert!(Instant::now() < deadline, "no resolved notification");
        send(&c, calls("payment", "charge", n, 5, |_| 5)).await;
        n += 5;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alerts = get(&c, "/prometheus/api/v1/alerts").await;
    assert!(alerts["data"]["alerts"].as_array().unwrap().is_empty(), "{alerts}");
    c.stop().await;
}

fn rules_path_of(c: &Collector) -> PathBuf {
    c.cfg.alerting.rules.clone().unwrap()
}

fn rules_file_display(p: &Path) -> String {
    p.display().to_string()
}

fn skein(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_skein")).args(args).output().unwrap()
}

#[test]
fn rules_check_accepts_good_files_and_names_every_problem_in_bad_ones() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rules/skein-latency.rules.yml");
    let out = skein(&["rules", "check", shipped]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 5 rules found"), "{out:?}");

    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yml", RULES);
    let bad = write(
        dir.path(),
        "bad.yml",
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: 'sum('\n      - alert: B\n        expr: up\n        annotations: {x: '{{ query \"up\" }}'}\n",
    );
    let out = skein(&["rules", "check", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("bad.yml: group \"g\", rule 1 (A): could not parse expression"),
        "{err}"
    );
    assert!(lines[1].contains("rule 2 (B): annotation \"x\": template"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("good.yml: SUCCESS: 2 rules found"));

    // serve refuses bad rules as a configuration error.
    let data = tempfile::tempdir().unwrap();
    let out = skein(&[
        "serve",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--rules",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("rules") && err.contains("and 1 more"), "{err}");
}
