//! The demo shop that `skein demo` runs: an HTTP `gateway` in front of three gRPC services,
//! `orders` → `inventory` and `payment`, plus a load generator.
//!
//! The shop exists to produce interesting traces: inventory fails now and then and one product is
//! always out of stock, a few payments are slow ("bank gateway slow"), big orders may be declined,
//! and every charge runs a CPU-heavy [`payment::fraud_score`] inline so that a CPU profiler has a
//! hot path to find.
//!
//! Each service runs on its own listener: [`bind`] a [`Service`] with its [`ServiceOptions`], read
//! the bound address, then [`Listening::serve`] until a shutdown signal. gRPC servers and clients
//! are built in [`grpc`], the HTTP router in [`gateway::router`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod catalog;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod inventory;
pub mod loadgen;
pub mod orders;
pub mod payment;
mod rng;

pub use error::DemoError;

/// Messages, clients and servers generated from `proto/shop.proto` (package `shop.v1`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("shop.v1");
}

/// How long a stopping service waits for open requests and connections before it exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One of the shop's four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Gateway,
    Orders,
    Inventory,
    Payment,
}

impl Service {
    pub const ALL: [Service; 4] =
        [Service::Gateway, Service::Orders, Service::Inventory, Service::Payment];

    /// The service's name, also its default `service.name`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Orders => "orders",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
        }
    }

    /// `OTEL_SERVICE_NAME` when it is set, otherwise [`Service::name`].
    pub fn otel_service_name(self) -> String {
        std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.name().to_string())
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Service {
    type Err = DemoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.name() == s)
            .ok_or_else(|| DemoError::UnknownService(s.to_string()))
    }
}

/// Where a service listens and where it finds the services it calls.
///
/// Downstream addresses are `host:port` or a URL such as `http://orders:50051`.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub listen: SocketAddr,
    /// Used by the gateway.
    pub orders: Option<String>,
    /// Used by orders.
    pub inventory: Option<String>,
    /// Used by orders.
    pub payment: Option<String>,
    /// Injected faults: random inventory outages and slow bank calls (on by default; tests turn
    /// them off for predictable answers).
    pub faults: bool,
    /// An HTTP shipping-quote service the gateway calls after each placed order (optional;
    /// any HTTP server answering POST, e.g. one instrumented with another SDK).
    pub shipping: Option<String>,
}

impl ServiceOptions {
    pub fn new(listen: SocketAddr) -> ServiceOptions {
        ServiceOptions {
            listen,
            orders: None,
            inventory: None,
            payment: None,
            faults: true,
            shipping: None,
        }
    }

    fn downstream(&self, service: Service, dependency: Service) -> Result<&str, DemoError> {
        let addr = match dependency {
            Service::Orders => &self.orders,
            Service::Inventory => &self.inventory,
            Service::Payment => &self.payment,
            Service::Gateway => &None,
        };
        addr.as_deref().ok_or(DemoError::MissingDependency { service, dependency })
    }
}

/// A service whose listener is bound (so its address is known) but that does not serve yet.
pub struct Listening {
    service: Service,
    listener: TcpListener,
    addr: SocketAddr,
    options: ServiceOptions,
}

/// Checks the options and binds the service's listener (port 0 picks a free port).
pub async fn bind(service: Service, options: ServiceOptions) -> Result<Listening, DemoError> {
    let deps: &[Service] = match service {
        Service::Gateway => &[Service::Orders],
        Service::Orders => &[Service::Inventory, Service::Payment],
        Service::Inventory | Service::Payment => &[],
    };
    for &dep in deps {
        grpc::endpoint(options.downstream(service, dep)?)?;
    }
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| DemoError::Bind { addr: options.listen, source })?;
    let addr = listener.local_addr()?;
    Ok(Listening { service, listener, addr, options })
}

/// Binds and serves `service` until the process ends.
pub async fn run_service(service: Service, options: ServiceOptions) -> Result<(), DemoError> {
    bind(service, options).await?.serve(std::future::pending()).await
}

impl Listening {
    pub fn service(&self) -> Service {
        self.service
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then lets open requests finish (for a few seconds at
    /// most).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DemoError> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let stopped = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        let service = self.service;
        tracing::info!(service = %service, addr = %self.addr, "shop service listening");
        let server = self.serve_until(stopped);
        tokio::pin!(server);
        tokio::select! {
            r = &mut server => return r,
            () = shutdown => {}
        }
        tracing::info!(service = %service, "shop service stopping");
        let _ = stop_tx.send(true);
        match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(service = %service, "requests still open after the drain timeout");
                Ok(())
            }
        }
    }

    async fn serve_until(
        self,
        stopped: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DemoError> {
        let Listening { service, listener, options, .. } = self;
        let routes = match service {
            Service::Gateway => {
                let orders = grpc::grpc_channel(options.downstream(service, Service::Orders)?)?;
                let app = gateway::router(gateway::Gateway::new(orders, options.shipping));
                axum::serve(listener, app).with_graceful_shutdown(stopped).await?;
                return Ok(());
            }
            Service::Orders => orders::routes(orders::Orders::new(
                grpc::grpc_channel(options.downstream(service, Service::Inventory)?)?,
                grpc::grpc_channel(options.downstream(service, Service::Payment)?)?,
            )),
            Service::Inventory => inventory::routes(inventory::Inventory::new(options.faults)),
            Service::Payment => payment::routes(payment::Payment::new(options.faults)),
        };
        grpc::serve(listener, routes, stopped).await
    }
}
