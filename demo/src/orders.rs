//! The orders service: prices an order, reserves each line in inventory (one call per item, in
//! order), then charges the card through payment.

use std::time::Duration;

use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

use crate::catalog;
use crate::grpc::GrpcChannel;
use crate::proto::inventory_client::InventoryClient;
use crate::proto::orders_server::{self, OrdersServer};
use crate::proto::payment_client::PaymentClient;
use crate::proto::{ChargeRequest, PlaceOrderRequest, PlaceOrderResponse, ReserveRequest};
use crate::rng;

const INVENTORY_TIMEOUT: Duration = Duration::from_secs(1);
/// The bank may take most of a second; allow for it.
const PAYMENT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Orders {
    inventory: InventoryClient<GrpcChannel>,
    payment: PaymentClient<GrpcChannel>,
}

impl Orders {
    pub fn new(inventory: GrpcChannel, payment: GrpcChannel) -> Orders {
        Orders { inventory: InventoryClient::new(inventory), payment: PaymentClient::new(payment) }
    }
}

/// The gRPC routes of the orders service.
pub fn routes(orders: Orders) -> Routes {
    Routes::new(OrdersServer::new(orders))
}

/// Maps a downstream failure to what the caller of orders should see: business refusals (out of
/// stock, declined card, bad input) keep their code; outages become `UNAVAILABLE`; anything else
/// is an internal error of the order flow.
fn downstream_status(dependency: &str, status: &Status) -> Status {
    let message = status.message();
    match status.code() {
        Code::FailedPrecondition | Code::PermissionDenied | Code::InvalidArgument => {
            Status::new(status.code(), message)
        }
        Code::NotFound => Status::invalid_argument(message),
        Code::Unavailable | Code::ResourceExhausted => {
            Status::unavailable(format!("{dependency} unavailable: {message}"))
        }
        Code::DeadlineExceeded => Status::deadline_exceeded(format!("{dependency} timed out")),
        Code::Cancelled => Status::cancelled(format!("{dependency} call cancelled")),
        code => Status::internal(format!("{dependency} failed ({code:?}): {message}")),
    }
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

#[tonic::async_trait]
impl orders_server::Orders for Orders {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, Status> {
        let req = request.into_inner();
        if req.items.is_empty() {
            return Err(Status::invalid_argument("an order needs at least one item"));
        }
        let amount_cents = catalog::order_total(&req.items)
            .map_err(|sku| Status::invalid_argument(format!("unknown sku {sku:?}")))?;
        let order_id = rng::id("ord");

        let mut inventory = self.inventory.clone();
        for item in &req.items {
            let reserve = ReserveRequest { order_id: order_id.clone(), item: Some(item.clone()) };
            if let Err(status) = inventory.reserve(with_timeout(reserve, INVENTORY_TIMEOUT)).await {
                tracing::warn!(
                    order_id,
                    sku = item.sku,
                    code = ?status.code(),
                    error = status.message(),
                    "inventory error"
                );
                return Err(downstream_status("inventory", &status));
            }
        }

        let charge = ChargeRequest {
            order_id: order_id.clone(),
            customer: req.customer.clone(),
            amount_cents,
            card_token: req.card_token,
            items: req.items,
        };
        let charged = match self.payment.clone().charge(with_timeout(charge, PAYMENT_TIMEOUT)).await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(
                    order_id,
                    code = ?status.code(),
                    error = status.message(),
                    "payment error"
                );
                return Err(downstream_status("payment", &status));
            }
        };
        tracing::info!(
            order_id,
            customer = req.customer,
            amount_cents,
            payment_id = charged.payment_id,
            "order placed"
        );
        Ok(Response::new(PlaceOrderResponse {
            order_id,
            amount_cents,
            payment_id: charged.payment_id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_codes_map_to_meaningful_statuses() {
        for (code, expected) in [
            (Code::FailedPrecondition, Code::FailedPrecondition),
            (Code::PermissionDenied, Code::PermissionDenied),
            (Code::NotFound, Code::InvalidArgument),
            (Code::Unavailable, Code::Unavailable),
            (Code::ResourceExhausted, Code::Unavailable),
            (Code::DeadlineExceeded, Code::DeadlineExceeded),
            (Code::Unknown, Code::Internal),
        ] {
            let got = downstream_status("inventory", &Status::new(code, "x"));
            assert_eq!(got.code(), expected, "{code:?}");
        }
    }
}
