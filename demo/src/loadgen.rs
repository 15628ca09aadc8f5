//! The load generator: drives the gateway at a steady rate with a mix of catalogue reads (~20%)
//! and checkouts (~80%) by random customers, including a few that are refused (out of stock,
//! unknown product, declined card). Prints a one-line status to stdout at a fixed interval.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::catalog::OUT_OF_STOCK_SKU;
use crate::gateway::{Checkout, CheckoutItem};
use crate::payment::DECLINED_CARD;
use crate::rng::XorShift;

/// Share of requests that read the catalogue (`GET /`); the rest are checkouts.
const CATALOGUE_SHARE: f64 = 0.2;
/// Products generated checkouts usually buy; the espresso machine (large orders, more declines)
/// is rarer.
const POPULAR_SKUS: &[&str] = &[
    "espresso-beans",
    "espresso-beans",
    "paper-filters",
    "paper-filters",
    "moka-pot",
    "milk-frother",
    "gooseneck-kettle",
    "burr-grinder",
];
const EXPENSIVE_SKU: &str = "espresso-machine";
/// A product the shop does not sell: its checkouts are rejected by the gateway (400).
pub const UNKNOWN_SKU: &str = "gift-card";
/// How long stopping waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// Requests per second; 0 sends nothing.
    pub rps: u32,
    /// How often to print a status line.
    pub status_every: Duration,
    /// Requests waiting for an answer beyond which new ones are skipped (and counted).
    pub max_in_flight: usize,
    /// Fixed seed for a reproducible request sequence; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl LoadgenOptions {
    pub fn new(gateway: impl Into<String>, rps: u32) -> LoadgenOptions {
        LoadgenOptions {
            gateway: gateway.into(),
            rps,
            status_every: Duration::from_secs(10),
            max_in_flight: 512,
            seed: None,
        }
    }
}

/// One generated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Planned {
    Catalogue,
    Checkout(Checkout),
}

/// Draws the next request: ~20% catalogue reads; checkouts of 1–3 lines of 1–3 units, about 2%
/// with the out-of-stock product, 1% with an unknown product and 1% with a declined card.
pub(crate) fn plan(rng: &mut XorShift) -> Planned {
    if rng.chance(CATALOGUE_SHARE) {
        return Planned::Catalogue;
    }
    let customer = format!("customer-{:03}", rng.between(1, 250));
    let lines = rng.between(1, 3);
    let mut items: Vec<CheckoutItem> = (0..lines)
        .map(|_| {
            let sku = if rng.chance(0.05) {
                EXPENSIVE_SKU
            } else {
                rng.pick(POPULAR_SKUS).copied().unwrap_or(EXPENSIVE_SKU)
            };
            CheckoutItem { sku: sku.to_string(), quantity: rng.between(1, 3) as u32 }
        })
        .collect();
    let refusal = rng.unit();
    let mut card = rng.chance(0.5).then(|| "tok_visa".to_string());
    if refusal < 0.02 {
        items.push(CheckoutItem { sku: OUT_OF_STOCK_SKU.to_string(), quantity: 1 });
    } else if refusal < 0.03 {
        items.push(CheckoutItem { sku: UNKNOWN_SKU.to_string(), quantity: 1 });
    } else if refusal < 0.04 {
        card = Some(DECLINED_CARD.to_string());
    }
    Planned::Checkout(Checkout { customer, items, card })
}

/// How one request ended.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// HTTP status, `None` when no answer came (connection refused, timeout).
    status: Option<u16>,
    latency: Duration,
}

/// Counts of requests and their outcomes.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub requests: u64,
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    /// No HTTP answer.
    pub failed: u64,
    /// Not sent because too many requests were waiting.
    pub skipped: u64,
    pub latency_sum: Duration,
    pub latency_max: Duration,
    /// Latencies of the current status window, in microseconds (for percentiles).
    window_latencies_us: Vec<u64>,
}

impl Tally {
    fn record(&mut self, o: Outcome) {
        self.requests += 1;
        match o.status {
            Some(200..=399) => self.ok += 1,
            Some(400..=499) => self.client_errors += 1,
            Some(_) => self.server_errors += 1,
            None => self.failed += 1,
        }
        self.latency_sum += o.latency;
        self.latency_max = self.latency_max.max(o.latency);
        self.window_latencies_us.push(o.latency.as_micros() as u64);
    }

    /// Adds `other`'s counts (not its per-window latencies).
    fn absorb(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        self.client_errors += other.client_errors;
        self.server_errors += other.server_errors;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.latency_sum += other.latency_sum;
        self.latency_max = self.latency_max.max(other.latency_max);
    }

    /// The `q` quantile (0..=1) of the latencies recorded in this window.
    fn window_quantile(&mut self, q: f64) -> Option<Duration> {
        self.window_latencies_us.sort_unstable();
        let n = self.window_latencies_us.len();
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1;
        self.window_latencies_us.get(i).map(|&us| Duration::from_micros(us))
    }

    /// One line: counts, rate over `elapsed` and latencies (percentiles for a status window, the
    /// maximum for totals).
    pub fn status_line(&mut self, elapsed: Duration) -> String {
        let rate = self.requests as f64 / elapsed.as_secs_f64().max(0.001);
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut line = format!(
            "loadgen: {} requests in {}s ({rate:.1}/s): {} ok, {} 4xx, {} 5xx, {} failed",
            self.requests,
            elapsed.as_secs(),
            self.ok,
            self.client_errors,
            self.server_errors,
            self.failed,
        );
        if self.skipped > 0 {
            line.push_str(&format!(", {} skipped", self.skipped));
        }
        let max = ms(self.latency_max);
        match (self.window_quantile(0.5), self.window_quantile(0.99)) {
            (Some(p50), Some(p99)) => {
                line.push_str(&format!("; latency p50 {} p99 {} max {max}", ms(p50), ms(p99)));
            }
            _ if self.requests > 0 => line.push_str(&format!("; latency max {max}")),
            _ => {}
        }
        line
    }
}

async fn send(client: reqwest::Client, gateway: Arc<str>, planned: Planned) -> Outcome {
    let started = Instant::now();
    let request = match &planned {
        Planned::Catalogue => client.get(format!("{gateway}/")),
        Planned::Checkout(c) => client.post(format!("{gateway}/checkout")).json(c),
    };
    let status = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body so the connection can be reused.
            response.bytes().await.ok().map(|_| status)
        }
        Err(_) => None,
    };
    Outcome { status, latency: started.elapsed() }
}

/// Sends requests until `stop` resolves, printing a status line every `status_every`; returns
/// the totals.
pub async fn run(options: LoadgenOptions, stop: impl Future<Output = ()>) -> Tally {
    let mut total = Tally::default();
    if options.rps == 0 {
        stop.await;
        return total;
    }
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "loadgen: cannot build HTTP client");
            stop.await;
            return total;
        }
    };
    let gateway: Arc<str> = options.gateway.trim_end_matches('/').into();
    let mut rng = options.seed.map_or_else(XorShift::from_time, XorShift::new);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rps)));
    let every = options.status_every.max(Duration::from_millis(100));
    let mut status = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut in_flight = JoinSet::new();
    let mut window = Tally::default();
    let mut window_started = Instant::now();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {
                if in_flight.len() >= options.max_in_flight {
                    window.skipped += 1;
                } else {
                    in_flight.spawn(send(client.clone(), gateway.clone(), plan(&mut rng)));
                }
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(outcome) = done {
                    window.record(outcome);
                }
            }
            _ = status.tick() => {
                println!("{}", window.status_line(window_started.elapsed()));
                total.absorb(&window);
                window = Tally::default();
                window_started = Instant::now();
            }
        }
    }
    let drain = async {
        while let Some(done) = in_flight.join_next().await {
            if let Ok(outcome) = done {
                window.record(outcome);
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    in_flight.abort_all();
    total.absorb(&window);
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{CheckoutError, validate};

    #[test]
    fn request_mix_is_mostly_valid_checkouts() {
        let mut rng = XorShift::new(42);
        let n = 20_000;
        let (mut catalogue, mut valid, mut unknown, mut out_of_stock, mut declined) =
            (0, 0, 0, 0, 0);
        for _ in 0..n {
            match plan(&mut rng) {
                Planned::Catalogue => catalogue += 1,
                Planned::Checkout(c) => {
                    let body = serde_json::to_vec(&c).unwrap();
                    match validate(&body) {
                        Ok(order) => {
                            valid += 1;
                            if order.items.iter().any(|i| i.sku == OUT_OF_STOCK_SKU) {
                                out_of_stock += 1;
                            }
                            if order.card_token == DECLINED_CARD {
                                declined += 1;
                            }
                        }
                        Err(CheckoutError::UnknownSku(sku)) => {
                            assert_eq!(sku, UNKNOWN_SKU);
                            unknown += 1;
                        }
                        Err(e) => panic!("generated an invalid checkout: {e}"),
                    }
                }
            }
        }
        let share = |k: i32| f64::from(k) / f64::from(n);
        assert!((0.18..0.22).contains(&share(catalogue)), "catalogue {}", share(catalogue));
        assert!((0.77..0.83).contains(&share(valid + unknown)));
        for (what, k, expected) in [
            ("unknown", unknown, 0.008),
            ("out of stock", out_of_stock, 0.016),
            ("declined", declined, 0.008),
        ] {
            assert!((share(k) - expected).abs() < 0.005, "{what}: {}", share(k));
        }
        // Same seed, same sequence.
        assert_eq!(plan(&mut XorShift::new(1)), plan(&mut XorShift::new(1)));
    }

    #[test]
    fn tally_counts_and_status_line() {
        let mut t = Tally::default();
        for (status, ms) in [(Some(200), 10), (Some(200), 20), (Some(409), 30), (Some(503), 40)] {
            t.record(Outcome { status, latency: Duration::from_millis(ms) });
        }
        t.record(Outcome { status: None, latency: Duration::from_millis(1_000) });
        assert_eq!((t.ok, t.client_errors, t.server_errors, t.failed), (2, 1, 1, 1));
        let line = t.status_line(Duration::from_secs(10));
        assert_eq!(
            line,
            "loadgen: 5 requests in 10s (0.5/s): 2 ok, 1 4xx, 1 5xx, 1 failed; \
             latency p50 30ms p99 1000ms max 1000ms"
        );
        let mut total = Tally::default();
        total.absorb(&t);
        assert_eq!(total.requests, 5);
        assert_eq!(
            Tally::default().status_line(Duration::from_secs(10)),
            "loadgen: 0 requests in 10s (0.0/s): 0 ok, 0 4xx, 0 5xx, 0 failed"
        );
        assert!(total.status_line(Duration::from_secs(10)).ends_with("; latency max 1000ms"));
    }
}
