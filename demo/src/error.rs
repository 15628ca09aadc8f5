//! Errors of starting and running a shop service.

use std::net::SocketAddr;

use crate::Service;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("unknown service {0:?} (expected gateway, orders, inventory or payment)")]
    UnknownService(String),
    #[error("{service} needs the address of {dependency} (--{dependency} ADDR)")]
    MissingDependency { service: Service, dependency: Service },
    #[error("invalid address {addr:?}: {message}")]
    InvalidAddress { addr: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl DemoError {
    /// True for mistakes in the options (a usage error), false for runtime failures.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DemoError::UnknownService(_)
                | DemoError::MissingDependency { .. }
                | DemoError::InvalidAddress { .. }
        )
    }
}
