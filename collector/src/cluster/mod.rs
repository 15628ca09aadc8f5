//! Replicas that share one storage root: who the peers are (`--peers`, a static list or
//! `dns+http://NAME:PORT` re-resolved), the client of their internal API (timeouts, the peer
//! credential, the tenant), the wire format of its answers, and the other namespaces' blocks
//! ([`SharedBlocks`]). Queries use it to see what the peers hold in memory; see
//! `cluster/DESIGN.md`.

pub mod peers;
pub mod series;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::store::namespace::NodeId;
use crate::store::shared::SharedBlocks;
use crate::telemetry::Telemetry;
pub use peers::PeerSource;

/// The header every internal answer names its replica in.
pub const NODE_HEADER: &str = "x-skein-node";
/// Version of the internal API; a replica answers only requests of its own version.
pub const API_VERSION: &str = "v1";
/// What queries that could not reach every peer say they are (a response header, beside
/// Prometheus `warnings`).
pub const PARTIAL_HEADER: &str = "x-skein-partial";

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node: NodeId,
    pub peers: Vec<PeerSource>,
    /// How long one peer call may take before the peer is skipped.
    pub timeout: Duration,
    /// How often other namespaces are listed for new blocks.
    pub poll: Duration,
    /// Bearer token sent to peers (a token of theirs with role read or admin for every tenant).
    pub token: Option<String>,
    /// CA that signed the peers' certificates (https peers).
    pub ca: Option<PathBuf>,
    /// Client certificate and key for peers that require one (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Blocks older than this are out of every answer (and deleted by their owner).
    pub retention: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("peer {peer}: {message}")]
    Peer { peer: String, message: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("peer client: {0}")]
    Client(String),
    #[error("peer answer: {0}")]
    Wire(String),
}

impl crate::error::Coded for ClusterError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            ClusterError::Peer { .. } => ErrorCode::Unavailable,
            ClusterError::Read { .. } | ClusterError::Client(_) => ErrorCode::InvalidArgument,
            ClusterError::Wire(_) => ErrorCode::Internal,
        }
    }
}

/// One peer's answer.
pub struct Reply {
    /// The replica that answered (its namespace).
    pub node: String,
    /// Its base URL (to ask it again, [`Cluster::ask_one`]).
    pub base: String,
    pub body: bytes::Bytes,
}

/// What a query asks of the peers for one tenant's spans that are not in blocks yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpanScope {
    /// Only the spans of these traces (hex); empty: no such restriction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace_ids: Vec<String>,
    /// Only the traces holding a span that matches one of this TraceQL query's spanset
    /// filters (all their spans); a superset of what the query can use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceql: Option<String>,
    /// Nothing when the head holds no span overlapping this range (unix ns, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(i64, i64)>,
}

pub struct Cluster {
    pub node: NodeId,
    pub shared: Arc<SharedBlocks>,
    peers: peers::Peers,
    client: peer_http::Client,
    token: Option<String>,
    timeout: Duration,
    poll: Duration,
    retention: Duration,
    metrics: Arc<Telemetry>,
    /// Base URLs that answered as this replica (a DNS name lists every replica, this one too).
    myself: Mutex<Vec<String>>,
}

impl Cluster {
    pub fn new(
        cfg: ClusterConfig,
        shared: Arc<SharedBlocks>,
        metrics: Arc<Telemetry>,
    ) -> Result<Cluster, ClusterError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ClusterError::Read { path: path.clone(), source })
        };
        let mut builder = peer_http::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(ca) = &cfg.ca {
            let cert = peer_http::Certificate::from_pem(&read(ca)?)
                .map_err(|e| ClusterError::Client(format!("{}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some((cert, key)) = &cfg.identity {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let id = peer_http::Identity::from_pem(&pem)
                .map_err(|e| ClusterError::Client(format!("{}: {e}", cert.display())))?;
            builder = builder.identity(id);
        }
        let client = builder.build().map_err(|e| ClusterError::Client(e.to_string()))?;
        Ok(Cluster {
            node: cfg.node,
            shared,
            peers: peers::Peers::new(cfg.peers),
            client,
            token: cfg.token,
            timeout: cfg.timeout,
            poll: cfg.poll,
            retention: cfg.retention,
            metrics,
            myself: Mutex::new(Vec::new()),
        })
    }

    /// True when `--peers` names any (a replica alone never labels or fetches anything).
    pub fn has_peers(&self) -> bool {
        self.peers.configured()
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Asks every peer `POST /internal/v1/<path>` with `body` for `tenant`, all at once, each
    /// within the peer timeout. Peers that fail are named in the current request's partial
    /// notes ([`crate::partial`]) and counted; this replica's own answer (a DNS name lists it
    /// too) is dropped.
    pub async fn ask<T: Serialize>(&self, path: &str, tenant: &str, body: &T) -> Vec<Reply> {
        let bases = self.peers.current().await;
        let skip = self.myself.lock().clone();
        let calls = bases
            .into_iter()
            .filter(|b| !skip.contains(b))
            .map(|base| async move { (base.clone(), self.call(&base, path, tenant, body).await) });
        let mut out = Vec::new();
        for (base, result) in futures::future::join_all(calls).await {
            match result {
                Ok(reply) if reply.node == self.node.as_str() => self.myself.lock().push(base),
                Ok(reply) => out.push(reply),
                Err(e) => {
                    tracing::warn!(peer = base, error = %e, "peer did not answer; the answer is partial");
                    self.metrics.peer_failures.with_label_values(&[path]).inc();
                    crate::partial::note(format!("peer {base} did not answer: {e}"));
                }
            }
        }
        out
    }

    /// Asks one peer (one that answered before); `None`, counted, when it fails now.
    pub async fn ask_one<T: Serialize>(
        &self,
        base: &str,
        path: &str,
        tenant: &str,
        body: &T,
    ) -> Option<Reply> {
        match self.call(base, path, tenant, body).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(peer = base, error = %e, "peer failed its share of a query");
                self.metrics.peer_failures.with_label_values(&[path]).inc();
                None
            }
        }
    }

    async fn call<T: Serialize>(
        &self,
        base: &str,
        path: &str,
        tenant: &str,
        body: &T,
    ) -> Result<Reply, ClusterError> {
        let peer = |message: String| ClusterError::Peer { peer: base.to_string(), message };
        let started = Instant::now();
        let url = format!("{base}/internal/{API_VERSION}/{path}");
        let mut req = self.client.post(&url).header("x-scope-orgid", tenant).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| peer(e.to_string()))?;
        let status = resp.status();
        let node =
            resp.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.bytes().await.map_err(|e| peer(e.to_string()))?;
        self.metrics
            .peer_seconds
            .with_label_values(&[path])
            .observe(started.elapsed().as_secs_f64());
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(peer(format!("{status}: {}", text.trim())));
        }
        let node = node.ok_or_else(|| peer(format!("no {NODE_HEADER} header")))?;
        Ok(Reply { node, base: base.to_string(), body })
    }

    /// Lists the other namespaces every poll interval (new blocks of peers that are down, and
    /// of replicas gone for good), and deletes long-expired blocks of retired replicas.
    pub async fn run(&self, mut stop: impl std::future::Future<Output = ()> + Unpin) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.shared.refresh_all().await {
                tracing::warn!(error = %e, "cannot list the other replicas' blocks");
            }
            self.shared.delete_abandoned(self.retention).await;
            for (ns, n) in self.shared.namespace_blocks() {
                let name = if ns.is_empty() { "(root)".to_string() } else { ns };
                self.metrics.peer_namespace_blocks.with_label_values(&[&name]).set(n as i64);
            }
        }
    }

    /// The timeout of one peer call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
