//! The one place where the shop's gRPC servers and client channels are built.

use std::future::Future;
use std::time::Duration;

use skein_instrument::layer::{GrpcClient, GrpcClientLayer, GrpcServerLayer};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tower::Layer;
use tower::layer::util::{Identity, Stack};

use crate::DemoError;

/// The channel type every shop client uses: CLIENT spans and context injection on every call.
pub type GrpcChannel = GrpcClient<Channel>;

/// The builder every shop gRPC server starts from: a SERVER span per call, continuing the
/// caller's trace.
pub fn grpc_server_builder() -> Server<Stack<GrpcServerLayer, Identity>> {
    Server::builder().layer(GrpcServerLayer::new())
}

/// A lazily connecting channel to `addr` (`host:port` or an `http://` URL), so services can start
/// in any order.
pub fn grpc_channel(addr: &str) -> Result<GrpcChannel, DemoError> {
    Ok(GrpcClientLayer::new().layer(endpoint(addr)?.connect_lazy()))
}

pub(crate) fn endpoint(addr: &str) -> Result<Endpoint, DemoError> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| DemoError::InvalidAddress {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;
    Ok(endpoint.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true))
}

/// Serves `routes` on `listener` until `stopped` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    routes: Routes,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    grpc_server_builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stopped)
        .await?;
    Ok(())
}
