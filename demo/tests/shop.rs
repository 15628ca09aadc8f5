//! All four shop services in one process on free ports, driven over HTTP like a user would.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use skein_demo::{DemoError, Service, ServiceOptions};
use tokio::sync::oneshot;

struct Shop {
    gateway: String,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), DemoError>>>,
}

impl Shop {
    /// Starts inventory, payment, orders and the gateway, each on its own listener; faults off so
    /// answers are predictable.
    async fn start() -> Shop {
        let mut shop = Shop { gateway: String::new(), stops: Vec::new(), tasks: Vec::new() };
        let inventory = shop.run(Service::Inventory, |_| {}).await;
        let payment = shop.run(Service::Payment, |_| {}).await;
        let orders = shop
            .run(Service::Orders, |o| {
                o.inventory = Some(inventory.to_string());
                o.payment = Some(format!("http://{payment}"));
            })
            .await;
        let gateway = shop.run(Service::Gateway, |o| o.orders = Some(orders.to_string())).await;
        shop.gateway = format!("http://{gateway}");
        shop
    }

    async fn run(
        &mut self,
        service: Service,
        opts: impl FnOnce(&mut ServiceOptions),
    ) -> SocketAddr {
        let mut options = ServiceOptions::new("127.0.0.1:0".parse().unwrap());
        options.faults = false;
        opts(&mut options);
        let listening = skein_demo::bind(service, options).await.unwrap();
        assert_eq!(listening.service(), service);
        let addr = listening.local_addr();
        assert_ne!(addr.port(), 0);
        let (tx, rx) = oneshot::channel();
        self.stops.push(tx);
        self.tasks.push(tokio::spawn(listening.serve(async move {
            let _ = rx.await;
        })));
        addr
    }

    async fn checkout(&self, body: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/checkout", self.gateway))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn stop(self) {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
        }
    }
}

#[tokio::test]
async fn checkout_through_all_four_services() {
    let shop = Shop::start().await;

    let catalogue: Value =
        reqwest::get(format!("{}/", shop.gateway)).await.unwrap().json().await.unwrap();
    let products = catalogue["products"].as_array().unwrap();
    assert!(products.iter().any(|p| p["sku"] == "moka-pot" && p["price_cents"] == 3450));
    let health = reqwest::get(format!("{}/healthz", shop.gateway)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let (status, receipt) = shop
        .checkout(r#"{"customer":"ada","items":[{"sku":"moka-pot","quantity":2},{"sku":"paper-filters","quantity":1}]}"#)
        .await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["amount_cents"], json!(2 * 3450 + 590));
    assert_eq!(receipt["amount"], "74.90");
    assert!(receipt["order_id"].as_str().unwrap().starts_with("ord_"), "{receipt}");
    assert!(receipt["payment_id"].as_str().unwrap().starts_with("pay_"), "{receipt}");

    for (body, expected, needle) in [
        ("{not json", 400, "invalid JSON"),
        (r#"{"customer":"ada","items":[{"sku":"gift-card","quantity":1}]}"#, 400, "unknown sku"),
        (
            r#"{"customer":"ada","items":[{"sku":"vintage-roaster","quantity":1}]}"#,
            409,
            "out of stock",
        ),
        (
            r#"{"customer":"ada","items":[{"sku":"moka-pot","quantity":1}],"card":"tok_declined"}"#,
            402,
            "declined",
        ),
    ] {
        let (status, error) = shop.checkout(body).await;
        assert_eq!(status, expected, "{body}: {error}");
        assert!(error["error"].as_str().unwrap().contains(needle), "{body}: {error}");
    }

    shop.stop().await;
}

#[tokio::test]
async fn gateway_without_orders_is_a_config_error_and_orders_down_is_503() {
    let options = ServiceOptions::new("127.0.0.1:0".parse().unwrap());
    let err = skein_demo::bind(Service::Gateway, options.clone()).await.err().unwrap();
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("--orders"), "{err}");
    assert!("shop".parse::<Service>().is_err());

    // Orders' address points at a closed port: checkouts fail as unavailable, not as a crash.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut shop = Shop { gateway: String::new(), stops: Vec::new(), tasks: Vec::new() };
    let gateway = shop.run(Service::Gateway, |o| o.orders = Some(closed.to_string())).await;
    shop.gateway = format!("http://{gateway}");
    let (status, error) =
        shop.checkout(r#"{"customer":"ada","items":[{"sku":"moka-pot","quantity":1}]}"#).await;
    assert_eq!(status, 503, "{error}");
    shop.stop().await;
}
