//! The gateway: the shop's HTTP front door. `GET /` lists the catalogue, `POST /checkout` places an
//! order through the orders service, `GET /healthz` answers `ok`.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::catalog;
use crate::grpc::GrpcChannel;
use crate::proto::orders_client::OrdersClient;
use crate::proto::{Item, PlaceOrderRequest};

/// Card token used when a checkout names none.
pub const DEFAULT_CARD: &str = "tok_visa";
const MAX_ITEMS: usize = 20;
const MAX_QUANTITY: u32 = 99;
const MAX_TEXT: usize = 64;
const ORDERS_TIMEOUT: Duration = Duration::from_secs(5);
const SHIPPING_TIMEOUT: Duration = Duration::from_secs(2);

/// A checkout as posted by clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkout {
    pub customer: String,
    pub items: Vec<CheckoutItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutItem {
    pub sku: String,
    pub quantity: u32,
}

/// The answer to a successful checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub order_id: String,
    pub payment_id: String,
    pub amount_cents: u64,
    /// The amount as text, e.g. `"74.90"`.
    pub amount: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
    #[error("{}", .0.message())]
    Orders(tonic::Status),
}

impl CheckoutError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            CheckoutError::Json(_) | CheckoutError::Invalid(_) | CheckoutError::UnknownSku(_) => {
                StatusCode::BAD_REQUEST
            }
            CheckoutError::Orders(status) => match status.code() {
                Code::InvalidArgument => StatusCode::BAD_REQUEST,
                Code::PermissionDenied => StatusCode::PAYMENT_REQUIRED,
                Code::FailedPrecondition => StatusCode::CONFLICT,
                Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }
}

impl IntoResponse for CheckoutError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status_code(), Json(body)).into_response()
    }
}

/// Parses and checks a checkout body, producing the request for the orders service.
pub fn validate(body: &[u8]) -> Result<PlaceOrderRequest, CheckoutError> {
    let checkout: Checkout =
        serde_json::from_slice(body).map_err(|e| CheckoutError::Json(e.to_string()))?;
    let text = |field: &str, value: &str| {
        if value.trim().is_empty() || value.len() > MAX_TEXT {
            Err(CheckoutError::Invalid(format!("{field} must be 1 to {MAX_TEXT} characters")))
        } else {
            Ok(())
        }
    };
    text("customer", &checkout.customer)?;
    if let Some(card) = &checkout.card {
        text("card", card)?;
    }
    if checkout.items.is_empty() || checkout.items.len() > MAX_ITEMS {
        return Err(CheckoutError::Invalid(format!("items must list 1 to {MAX_ITEMS} products")));
    }
    let mut items = Vec::with_capacity(checkout.items.len());
    for item in checkout.items {
        if catalog::find(&item.sku).is_none() {
            return Err(CheckoutError::UnknownSku(item.sku));
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(CheckoutError::Invalid(format!(
                "quantity of {} must be 1 to {MAX_QUANTITY}",
                item.sku
            )));
        }
        items.push(Item { sku: item.sku, quantity: item.quantity });
    }
    Ok(PlaceOrderRequest {
        customer: checkout.customer,
        items,
        card_token: checkout.card.unwrap_or_else(|| DEFAULT_CARD.to_string()),
    })
}

/// The gateway's state: a client of the orders service and, optionally, of an HTTP
/// shipping-quote service.
#[derive(Clone)]
pub struct Gateway {
    orders: OrdersClient<GrpcChannel>,
    shipping: Option<(reqwest::Client, String)>,
}

impl Gateway {
    pub fn new(orders: GrpcChannel, shipping: Option<String>) -> Gateway {
        let shipping = shipping.map(|url| {
            let client = reqwest::Client::builder()
                .timeout(SHIPPING_TIMEOUT)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new());
            (client, url)
        });
        Gateway { orders: OrdersClient::new(orders), shipping }
    }

    /// Asks the shipping service for a quote; best effort (the order is already placed).
    async fn shipping_quote(&self, order_id: &str) {
        use skein_instrument::layer::RequestBuilderExt;
        let Some((client, url)) = &self.shipping else { return };
        let body = serde_json::json!({ "order_id": order_id });
        match client.post(url.as_str()).json(&body).send_traced().await {
            Ok(r) if r.status().is_success() => tracing::info!(order_id, "shipping quoted"),
            Ok(r) => {
                tracing::warn!(order_id, status = r.status().as_u16(), "shipping quote refused")
            }
            Err(e) => tracing::warn!(order_id, error = %e, "shipping service unreachable"),
        }
    }
}

/// The gateway's HTTP routes.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/", get(catalogue))
        .route("/checkout", post(checkout))
        .route("/healthz", get(|| async { "ok" }))
        // Router::layer runs after routing, so spans get `http.route`.
        .layer(skein_instrument::layer::HttpServerLayer::new())
        .with_state(gateway)
}

async fn catalogue() -> Json<serde_json::Value> {
    tracing::info!(products = catalog::PRODUCTS.len(), "catalogue listed");
    Json(serde_json::json!({ "currency": "USD", "products": catalog::PRODUCTS }))
}

async fn checkout(
    State(gateway): State<Gateway>,
    body: Bytes,
) -> Result<Json<Receipt>, CheckoutError> {
    let order = validate(&body).inspect_err(|e| {
        tracing::warn!(error = %e, "checkout rejected");
    })?;
    let customer = order.customer.clone();
    let mut request = tonic::Request::new(order);
    request.set_timeout(ORDERS_TIMEOUT);
    match gateway.orders.clone().place_order(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            gateway.shipping_quote(&reply.order_id).await;
            tracing::info!(
                order_id = reply.order_id,
                customer,
                amount_cents = reply.amount_cents,
                "checkout complete"
            );
            Ok(Json(Receipt {
                amount: catalog::format_cents(reply.amount_cents),
                order_id: reply.order_id,
                payment_id: reply.payment_id,
                amount_cents: reply.amount_cents,
            }))
        }
        Err(status) => {
            tracing::warn!(
                customer,
                code = ?status.code(),
                error = status.message(),
                "checkout failed"
            );
            Err(CheckoutError::Orders(status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> CheckoutError {
        validate(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn valid_checkout_becomes_an_order_with_the_default_card() {
        let order = validate(
            br#"{"customer":"ada","items":[{"sku":"moka-pot","quantity":2},{"sku":"paper-filters","quantity":1}]}"#,
        )
        .unwrap();
        assert_eq!(order.customer, "ada");
        assert_eq!(order.card_token, DEFAULT_CARD);
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.items[0].quantity, 2);
        let order = validate(
            br#"{"customer":"bo","items":[{"sku":"moka-pot","quantity":1}],"card":"tok_declined"}"#,
        )
        .unwrap();
        assert_eq!(order.card_token, "tok_declined");
    }

    #[test]
    fn bad_checkouts_are_400_with_a_reason() {
        for (body, needle) in [
            ("not json", "invalid JSON"),
            (r#"{"customer":"ada"}"#, "items"),
            (r#"{"customer":"ada","items":[]}"#, "items"),
            (r#"{"customer":" ","items":[{"sku":"moka-pot","quantity":1}]}"#, "customer"),
            (r#"{"customer":"ada","items":[{"sku":"nope","quantity":1}]}"#, "unknown sku"),
            (r#"{"customer":"ada","items":[{"sku":"moka-pot","quantity":0}]}"#, "quantity"),
            (r#"{"customer":"ada","items":[{"sku":"moka-pot","quantity":-1}]}"#, "invalid JSON"),
            (r#"{"customer":"ada","items":[{"sku":"moka-pot","quantity":1}],"x":1}"#, "unknown"),
        ] {
            let e = err(body);
            assert_eq!(e.status_code(), StatusCode::BAD_REQUEST, "{body}");
            assert!(e.to_string().contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn order_failures_map_to_http_statuses() {
        for (code, http) in [
            (Code::FailedPrecondition, StatusCode::CONFLICT),
            (Code::PermissionDenied, StatusCode::PAYMENT_REQUIRED),
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            (Code::Internal, StatusCode::BAD_GATEWAY),
        ] {
            assert_eq!(CheckoutError::Orders(tonic::Status::new(code, "x")).status_code(), http);
        }
    }
}
