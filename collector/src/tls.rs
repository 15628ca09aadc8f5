//! TLS for the three listeners (`--tls-cert`, `--tls-key`, optionally `--tls-client-ca` for
//! mutual TLS), with rustls and its ring provider.
//!
//! A [`Tls`] holds the server configuration of the moment; [`Tls::reload`] (on SIGHUP) reads
//! the files again and swaps it, so renewed certificates take effect for new connections
//! without a restart, and files that fail to load leave the running configuration as it was.
//! [`TlsListener`] accepts TCP connections and runs each handshake in its own task under a
//! timeout, so a client that connects and stays silent holds neither the accept loop nor
//! other clients' handshakes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;

use crate::error::{Coded, ErrorCode};

/// A handshake that has not completed by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight per listener; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path}: {message}")]
    Invalid { what: &'static str, path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl Coded for TlsError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidArgument
    }
}

/// The PEM files of the server's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must be signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// What a listener speaks over TLS (its ALPN protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// OTLP/gRPC: HTTP/2 only (gRPC clients insist on negotiating `h2`).
    Grpc,
    /// OTLP/HTTP and the query API: HTTP/2 or HTTP/1.1.
    Http,
}

struct Configs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

pub struct Tls {
    files: TlsFiles,
    current: RwLock<Configs>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let invalid = |message: String| TlsError::Invalid { what, path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn configs(files: &TlsFiles) -> Result<Configs, TlsError> {
    let chain = certs("certificate", &files.cert)?;
    let key_pem = read("private key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
        what: "private key",
        path: files.key.clone(),
        message: format!("no PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("client CA", ca)? {
                roots.add(c).map_err(|e| TlsError::Invalid {
                    what: "client CA",
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let base = builder.with_single_cert(chain, key).map_err(|e| TlsError::Invalid {
        what: "certificate and key",
        path: files.cert.clone(),
        message: e.to_string(),
    })?;
    let with_alpn = |protocols: &[&[u8]]| {
        let mut c = base.clone();
        c.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    };
    Ok(Configs { grpc: with_alpn(&[b"h2"]), http: with_alpn(&[b"h2", b"http/1.1"]) })
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let current = RwLock::new(configs(&files)?);
        Ok(Arc::new(Tls { files, current }))
    }

    /// Reads the files again; on failure the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = configs(&self.files)?;
        *self.current.write() = fresh;
        Ok(())
    }

    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn acceptor(&self, p: Protocols) -> tokio_rustls::TlsAcceptor {
        let c = self.current.read();
        tokio_rustls::TlsAcceptor::from(match p {
            Protocols::Grpc => c.grpc.clone(),
            Protocols::Http => c.http.clone(),
        })
    }
}

/// A TLS connection, as the servers see it.
pub struct TlsConn(TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

/// Completed TLS connections of one listening socket.
pub struct TlsListener {
    local: SocketAddr,
    conns: mpsc::Receiver<(TlsConn, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `tcp` in a background task (ended when the listener is dropped).
    pub fn new(tcp: TcpListener, tls: Arc<Tls>, protocols: Protocols) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, conns) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, tls, protocols, tx));
        Ok(TlsListener { local, conns })
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> {
        futures::stream::unfold(self.conns, |mut rx| async move {
            rx.recv().await.map(|(c, _)| (Ok(c), rx))
        })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Arc<Tls>,
    protocols: Protocols,
    tx: mpsc::Sender<(TlsConn, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = tls.acceptor(protocols);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send((TlsConn(conn), peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
