//! The inventory service: reserves stock for one order line at a time.
//!
//! Realistic misbehaviour: every call takes 1–5 ms, about 3% fail with `UNAVAILABLE` ("inventory
//! shard unavailable"), and [`catalog::OUT_OF_STOCK_SKU`] is never in stock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::catalog;
use crate::proto::inventory_server::{self, InventoryServer};
use crate::proto::{ReserveRequest, ReserveResponse};
use crate::rng;

/// Share of calls that fail as if a storage shard were down.
const UNAVAILABLE_RATE: f64 = 0.03;
/// Products that sell out are restocked with this many units.
const RESTOCK_UNITS: u32 = 500;

pub struct Inventory {
    stock: Mutex<HashMap<&'static str, u32>>,
    faults: bool,
}

impl Inventory {
    pub fn new(faults: bool) -> Inventory {
        let stock = catalog::PRODUCTS.iter().map(|p| (p.sku, p.initial_stock)).collect();
        Inventory { stock: Mutex::new(stock), faults }
    }

    fn take(&self, sku: &str, quantity: u32) -> Result<u32, Status> {
        let product =
            catalog::find(sku).ok_or_else(|| Status::not_found(format!("unknown sku {sku:?}")))?;
        let mut stock = self.stock.lock().map_err(|_| Status::internal("stock table poisoned"))?;
        let left = stock.entry(product.sku).or_insert(0);
        if *left < quantity && product.initial_stock > 0 {
            tracing::info!(sku, units = RESTOCK_UNITS, "restocked");
            *left = left.saturating_add(RESTOCK_UNITS.max(quantity));
        }
        if *left < quantity {
            return Err(Status::failed_precondition(format!("out of stock: {sku}")));
        }
        *left -= quantity;
        Ok(*left)
    }
}

/// The gRPC routes of the inventory service.
pub fn routes(inventory: Inventory) -> Routes {
    Routes::new(InventoryServer::new(inventory))
}

#[tonic::async_trait]
impl inventory_server::Inventory for Inventory {
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let req = request.into_inner();
        let item = req.item.ok_or_else(|| Status::invalid_argument("item is required"))?;
        if item.quantity == 0 {
            return Err(Status::invalid_argument("quantity must be at least 1"));
        }
        let (delay_ms, outage) = rng::with(|r| (r.between(1, 5), r.chance(UNAVAILABLE_RATE)));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if self.faults && outage {
            tracing::warn!(order_id = req.order_id, sku = item.sku, "inventory shard unavailable");
            return Err(Status::unavailable("inventory shard unavailable"));
        }
        match self.take(&item.sku, item.quantity) {
            Ok(remaining) => {
                tracing::info!(
                    order_id = req.order_id,
                    sku = item.sku,
                    quantity = item.quantity,
                    remaining,
                    "stock reserved"
                );
                Ok(Response::new(ReserveResponse { reservation_id: rng::id("res"), remaining }))
            }
            Err(status) => {
                tracing::warn!(
                    order_id = req.order_id,
                    sku = item.sku,
                    error = status.message(),
                    "reservation refused"
                );
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_stock_sku_is_refused_and_others_restock() {
        let inv = Inventory::new(false);
        let err = inv.take(catalog::OUT_OF_STOCK_SKU, 1).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        for _ in 0..100 {
            inv.take("espresso-machine", 3).unwrap();
        }
        assert_eq!(inv.take("nope", 1).unwrap_err().code(), tonic::Code::NotFound);
    }
}
