//! The payment service: scores each charge for fraud (CPU work, inline on the request), then
//! "calls the bank".
//!
//! About 5% of bank calls are slow (300–900 ms, "bank gateway slow"); charges scoring at or
//! above [`DECLINE_THRESHOLD`] and cards with the token [`DECLINED_CARD`] are declined with
//! `PERMISSION_DENIED`. Cards with the token [`SLOW_BANK_CARD`] always meet a very slow bank,
//! so anyone (a test, a person trying the alerts) can turn payment latency up at will.

use std::time::Duration;

use tonic::service::Routes;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::proto::payment_server::{self, PaymentServer};
use crate::proto::{ChargeRequest, ChargeResponse};
use crate::rng::{self, splitmix64};

/// Charges scoring at least this are declined. Only large orders can reach it.
pub const DECLINE_THRESHOLD: f64 = 0.85;
/// A card token the issuer always declines (like a payment provider's test cards).
pub const DECLINED_CARD: &str = "tok_declined";
/// A card token whose bank calls always take [`SLOW_BANK_CARD_MS`] (faults on or off).
pub const SLOW_BANK_CARD: &str = "tok_slow_bank";
const SLOW_BANK_CARD_MS: std::ops::RangeInclusive<u64> = 1500..=2500;
/// Share of bank calls that take 300–900 ms.
const SLOW_BANK_RATE: f64 = 0.05;

/// Mixing rounds every charge costs (about 2 ms of CPU in a release build).
const BASE_ROUNDS: u64 = 600_000;
/// Extra rounds per unit ordered, up to [`MAX_SCORED_UNITS`].
const ROUNDS_PER_UNIT: u64 = 120_000;
const MAX_SCORED_UNITS: u64 = 60;
/// Orders of this amount or more carry the full amount risk.
const HIGH_AMOUNT_CENTS: f64 = 50_000.0;

/// How much mixing [`fraud_score`] does for `req`: grows with the number of units ordered.
pub fn fraud_rounds(req: &ChargeRequest) -> u64 {
    let units: u64 = req.items.iter().map(|i| u64::from(i.quantity)).sum();
    BASE_ROUNDS + ROUNDS_PER_UNIT * units.min(MAX_SCORED_UNITS)
}

/// A deterministic "fraud model": iterated hashing over the charge, in `[0, 1)`. Deliberately
/// CPU-heavy (milliseconds, more for large orders) and synchronous, so it shows up in CPU
/// profiles of the payment service (never inlined, so it keeps its own frame).
#[inline(never)]
pub fn fraud_score(req: &ChargeRequest) -> f64 {
    let mut h = fnv1a(req.order_id.as_bytes())
        ^ fnv1a(req.customer.as_bytes()).rotate_left(21)
        ^ fnv1a(req.card_token.as_bytes()).rotate_left(42)
        ^ req.amount_cents;
    for item in &req.items {
        h = splitmix64(h ^ fnv1a(item.sku.as_bytes()) ^ u64::from(item.quantity));
    }
    let rounds = std::hint::black_box(fraud_rounds(req));
    for i in 0..rounds {
        h = splitmix64(h.wrapping_add(i));
    }
    let noise = (h >> 11) as f64 / (1u64 << 53) as f64;
    let amount_risk = (req.amount_cents as f64 / HIGH_AMOUNT_CENTS).min(1.0);
    0.75 * noise + 0.25 * amount_risk
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

pub struct Payment {
    faults: bool,
}

impl Payment {
    pub fn new(faults: bool) -> Payment {
        Payment { faults }
    }
}

/// The gRPC routes of the payment service.
pub fn routes(payment: Payment) -> Routes {
    Routes::new(PaymentServer::new(payment))
}

#[tonic::async_trait]
impl payment_server::Payment for Payment {
    async fn charge(
        &self,
        request: Request<ChargeRequest>,
    ) -> Result<Response<ChargeResponse>, Status> {
        let req = request.into_inner();
        if req.amount_cents == 0 {
            return Err(Status::invalid_argument("amount must be positive"));
        }
        if req.card_token.is_empty() {
            return Err(Status::invalid_argument("card token is required"));
        }
        let score = tracing::info_span!("fraud_score", fraud.rounds = fraud_rounds(&req))
            .in_scope(|| fraud_score(&req));
        let slow = if req.card_token == SLOW_BANK_CARD {
            Some(rng::with(|r| r.between(*SLOW_BANK_CARD_MS.start(), *SLOW_BANK_CARD_MS.end())))
        } else {
            rng::with(|r| r.chance(SLOW_BANK_RATE).then(|| r.between(300, 900)))
                .filter(|_| self.faults)
        };
        // Slow bank calls take the bank's fallback route: an attribute and a child span that the
        // slow-vs-normal comparison can find, as a real cause would leave behind.
        let route = if slow.is_some() { "fallback" } else { "primary" };
        skein_instrument::with_current_span(|s| s.set_attribute("payment.bank_route", route));
        let bank_ms = slow.unwrap_or_else(|| rng::with(|r| r.between(1, 4)));
        async {
            if slow.is_some() {
                tracing::warn!(order_id = req.order_id, delay_ms = bank_ms, "bank gateway slow");
            }
            tokio::time::sleep(Duration::from_millis(bank_ms)).await;
        }
        .instrument(tracing::info_span!("bank.authorize", bank.route = route))
        .await;
        if req.card_token == DECLINED_CARD || score >= DECLINE_THRESHOLD {
            tracing::warn!(
                order_id = req.order_id,
                customer = req.customer,
                amount_cents = req.amount_cents,
                fraud_score = score,
                "card declined"
            );
            return Err(Status::permission_denied("card declined"));
        }
        let payment_id = rng::id("pay");
        tracing::info!(
            order_id = req.order_id,
            payment_id,
            amount_cents = req.amount_cents,
            fraud_score = score,
            "card charged"
        );
        Ok(Response::new(ChargeResponse { payment_id, fraud_score: score }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Item;

    fn charge(quantity: u32, amount_cents: u64) -> ChargeRequest {
        ChargeRequest {
            order_id: "ord_1".into(),
            customer: "ada".into(),
            amount_cents,
            card_token: "tok_visa".into(),
            items: vec![Item { sku: "moka-pot".into(), quantity }],
        }
    }

    #[test]
    fn fraud_score_is_deterministic_and_bounded() {
        let req = charge(1, 3_450);
        let a = fraud_score(&req);
        assert_eq!(a, fraud_score(&req));
        assert!((0.0..1.0).contains(&a), "{a}");
        // Small orders can never reach the decline threshold.
        assert!(a < DECLINE_THRESHOLD);
        let other = ChargeRequest { order_id: "ord_2".into(), ..req };
        assert_ne!(a, fraud_score(&other));
    }

    #[test]
    fn large_orders_cost_more_work() {
        assert!(fraud_rounds(&charge(40, 1)) > 4 * fraud_rounds(&charge(1, 1)));
        assert_eq!(
            fraud_rounds(&charge(1_000, 1)),
            fraud_rounds(&charge(MAX_SCORED_UNITS as u32, 1))
        );
    }

    #[tokio::test]
    async fn the_slow_bank_card_is_slow_even_without_faults() {
        use payment_server::Payment as _;
        let payment = Payment { faults: false };
        let req = ChargeRequest { card_token: SLOW_BANK_CARD.into(), ..charge(1, 3_450) };
        let started = std::time::Instant::now();
        let res = payment.charge(Request::new(req)).await;
        assert!(res.is_ok(), "{res:?}");
        assert!(started.elapsed() >= Duration::from_millis(*SLOW_BANK_CARD_MS.start()));
    }
}
