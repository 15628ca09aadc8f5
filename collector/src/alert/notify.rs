//! Notifications: Alertmanager's v2 API (`POST {url}/api/v2/alerts`, a JSON array of alerts)
//! and a generic webhook that gets the same array. Like Prometheus' notifier, a failed send is
//! not retried on its own — firing alerts are re-sent every resend delay and resolved ones for
//! 15 minutes, which repairs a lost request — and when the queue is full new batches are dropped
//! (counted), so evaluation never waits for a slow receiver.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use super::error::AlertError;
use super::state::Alert;

/// Alerts per request (Prometheus' notifier sends at most 64 at a time).
pub const MAX_BATCH: usize = 64;
/// Batches waiting to be sent; evaluation never blocks on a slow receiver.
const QUEUE: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The label every notification names its tenant by. It is set last, over the rule's labels
/// and the external labels, so no tenant's rule can route as another tenant's.
pub const TENANT_LABEL: &str = "tenant";

/// One alert as Alertmanager's `postableAlert`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    /// Empty (and left out) when there is no link that shows only the alert's tenant's data.
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

/// RFC 3339 in UTC with milliseconds when there are any (`2024-05-01T10:00:00.25Z`).
pub fn rfc3339(ms: i64) -> String {
    let t = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    let s = humantime::format_rfc3339_millis(t).to_string();
    match s.strip_suffix("Z").map(|b| b.trim_end_matches('0').trim_end_matches('.')) {
        Some(base) => format!("{base}Z"),
        None => s,
    }
}

impl WireAlert {
    /// `external_labels` are added where the alert has no label of that name; the
    /// [`TENANT_LABEL`] is `tenant`, whatever the alert's labels say.
    pub fn new(
        a: &Alert,
        tenant: &str,
        external_labels: &BTreeMap<String, String>,
        generator_url: &str,
    ) -> Self {
        let mut labels: BTreeMap<String, String> = external_labels.clone();
        labels.extend(a.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        labels.insert(TENANT_LABEL.to_string(), tenant.to_string());
        WireAlert {
            labels,
            annotations: a.annotations.clone(),
            starts_at: rfc3339(a.fired_at.unwrap_or(a.active_at)),
            ends_at: rfc3339(a.resolved_at.unwrap_or(a.valid_until)),
            generator_url: generator_url.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Targets {
    /// Alertmanager base URLs (`/api/v2/alerts` is appended).
    pub alertmanagers: Vec<String>,
    /// Webhook URLs, posted to as given.
    pub webhooks: Vec<String>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.alertmanagers.is_empty() && self.webhooks.is_empty()
    }

    fn urls(&self) -> Vec<String> {
        self.alertmanagers
            .iter()
            .map(|u| format!("{}/api/v2/alerts", u.trim_end_matches('/')))
            .chain(self.webhooks.iter().cloned())
            .collect()
    }
}

/// Counters for `/metrics`-style introspection and tests.
#[derive(Debug, Default)]
pub struct NotifyStats {
    pub sent: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
}

/// The sending side; `Notifier::queue` never waits.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Vec<WireAlert>>>,
    pub stats: std::sync::Arc<NotifyStats>,
}

impl Notifier {
    /// Starts the sender task (none when there are no targets).
    pub fn start(targets: Targets) -> Notifier {
        let stats = std::sync::Arc::new(NotifyStats::default());
        if targets.is_empty() {
            return Notifier { tx: None, stats };
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(targets.urls(), rx, stats.clone()));
        Notifier { tx: Some(tx), stats }
    }

    pub fn queue(&self, alerts: Vec<WireAlert>) {
        let Some(tx) = &self.tx else { return };
        for chunk in alerts.chunks(MAX_BATCH) {
            if tx.try_send(chunk.to_vec()).is_err() {
                self.stats
                    .dropped
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(alerts = chunk.len(), "alert notification queue full; dropped");
            }
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, alerts: &[WireAlert]) -> Result<(), AlertError> {
    let err = |message: String| AlertError::Notify { url: url.to_string(), message };
    let resp = client
        .post(url)
        .json(alerts)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(err(format!("HTTP {status}: {}", body.chars().take(200).collect::<String>())))
}

async fn send_loop(
    urls: Vec<String>,
    mut rx: mpsc::Receiver<Vec<WireAlert>>,
    stats: std::sync::Arc<NotifyStats>,
) {
    let client = reqwest::Client::new();
    while let Some(batch) = rx.recv().await {
        let sends = urls.iter().map(|u| post(&client, u, &batch));
        for r in futures::future::join_all(sends).await {
            match r {
                Ok(()) => {
                    stats.sent.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    stats.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, "alert notification failed");
                }
            }
        }
    }
}

/// Now, for callers without a clock of their own.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::state::AlertState;
    use crate::promql::labels::Labels;

    #[test]
    fn alertmanager_shape_with_external_labels_tenant_and_ends_at() {
        let a = Alert {
            labels: Labels::new([("alertname", "Slow"), ("cluster", "mine"), ("tenant", "b")]),
            annotations: BTreeMap::from([("summary".to_string(), "s".to_string())]),
            state: AlertState::Firing,
            value: 1.0,
            active_at: 1_700_000_000_000,
            fired_at: Some(1_700_000_060_250),
            resolved_at: None,
            last_sent_at: None,
            valid_until: 1_700_000_300_000,
            keep_firing_since: None,
        };
        let ext = BTreeMap::from([
            ("cluster".to_string(), "eu1".to_string()),
            ("region".to_string(), "x".to_string()),
            ("tenant".to_string(), "c".to_string()),
        ]);
        let w = serde_json::to_value(WireAlert::new(&a, "a", &ext, "http://s/q")).unwrap();
        assert_eq!(
            w,
            serde_json::json!({
                "labels": {"alertname": "Slow", "cluster": "mine", "region": "x", "tenant": "a"},
                "annotations": {"summary": "s"},
                "startsAt": "2023-11-14T22:14:20.25Z",
                "endsAt": "2023-11-14T22:18:20Z",
                "generatorURL": "http://s/q",
            })
        );
        let w = serde_json::to_value(WireAlert::new(&a, "a", &ext, "")).unwrap();
        assert!(w.get("generatorURL").is_none(), "{w}");
    }
}
