//! Service-graph edges as Tempo's metrics-generator builds them: a CLIENT (or PRODUCER) span
//! and the SERVER (or CONSUMER) span whose parent it is form one request from the client's
//! service to the server's. Halves wait up to `wait` for their partner; an unpaired client
//! span with a peer attribute becomes an edge to a virtual node named by it, an unpaired root
//! server span an edge from the virtual client `user`.

use std::collections::{HashMap, HashSet, VecDeque};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};

use super::attr;
use super::calls::{duration_seconds, exemplar, is_error};
use super::registry::{Exemplar, Histogram, Registry, renumber};
use crate::promql::labels::Labels;

pub const REQUEST_TOTAL: &str = "traces_service_graph_request_total";
pub const REQUEST_FAILED_TOTAL: &str = "traces_service_graph_request_failed_total";
pub const SERVER_SECONDS: &str = "traces_service_graph_request_server_seconds";
pub const CLIENT_SECONDS: &str = "traces_service_graph_request_client_seconds";

/// Tempo's default service-graph buckets (seconds): 0.1 doubling to 12.8.
pub const BUCKETS: [f64; 8] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8];

/// Edges waiting for their other half at most; beyond it new halves are dropped (counted).
pub const MAX_PENDING: usize = 10_000;

/// Span attributes naming an uninstrumented peer, in order of preference.
const PEER_ATTRIBUTES: [&str; 5] =
    ["peer.service", "server.address", "db.name", "db.system", "messaging.system"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Connection {
    Direct,
    Database,
    Messaging,
    Virtual,
}

impl Connection {
    fn label(self) -> &'static str {
        match self {
            Connection::Direct => "",
            Connection::Database => "database",
            Connection::Messaging => "messaging_system",
            Connection::Virtual => "virtual_node",
        }
    }
}

#[derive(Debug, Default)]
struct Edge {
    client: String,
    server: String,
    client_seconds: f64,
    server_seconds: f64,
    failed: bool,
    peer: Option<String>,
    connection: Option<Connection>,
    /// A server span without parent: the request came from outside.
    root: bool,
    exemplar: Option<Exemplar>,
}

type Key = ([u8; 16], [u8; 8]);

/// Series ids of one edge: request and failed counters, server and client histograms.
type EdgeSeries = (usize, usize, Histogram, Histogram);

pub struct ServiceGraph {
    wait_ms: i64,
    pending: HashMap<Key, Edge>,
    /// Keys in arrival order, for expiry.
    queue: VecDeque<(Key, i64)>,
    handles: HashMap<(String, String, Connection), EdgeSeries>,
    pub dropped_spans: u64,
    pub expired_edges: u64,
}

fn id<const N: usize>(b: &[u8]) -> [u8; N] {
    b.try_into().unwrap_or([0; N])
}

impl ServiceGraph {
    pub fn new(wait: std::time::Duration) -> Self {
        ServiceGraph {
            wait_ms: i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            handles: HashMap::new(),
            dropped_spans: 0,
            expired_edges: 0,
        }
    }

    pub fn observe(
        &mut self,
        reg: &mut Registry,
        service: &str,
        resource: &[KeyValue],
        span: &Span,
        now_ms: i64,
    ) {
        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let (client_side, messaging) = match kind {
            SpanKind::Client => (true, false),
            SpanKind::Producer => (true, true),
            SpanKind::Server => (false, false),
            SpanKind::Consumer => (false, true),
            _ => return,
        };
        let trace = id::<16>(&span.trace_id);
        let key = if client_side {
            (trace, id::<8>(&span.span_id))
        } else {
            (trace, id::<8>(&span.parent_span_id))
        };
        if !self.pending.contains_key(&key) {
            if self.pending.len() >= MAX_PENDING {
                self.dropped_spans += 1;
                return;
            }
            self.queue.push_back((key, now_ms + self.wait_ms));
        }
        let e = self.pending.entry(key).or_default();
        let secs = duration_seconds(span);
        e.failed |= is_error(span);
        if messaging {
            e.connection = Some(Connection::Messaging);
        }
        if e.exemplar.is_none() || client_side {
            e.exemplar = exemplar(span, secs, now_ms);
        }
        let find = |k: &str| attr(&span.attributes, k).or_else(|| attr(resource, k));
        if client_side {
            e.client = service.to_string();
            e.client_seconds = secs;
            e.peer = PEER_ATTRIBUTES.iter().find_map(|k| find(k));
            // Database calls have no server span: the edge is complete at once.
            let db_name = find("db.name");
            if db_name.is_some() || find("db.system").is_some() {
                e.connection = Some(Connection::Database);
                e.server_seconds = secs;
                if let Some(s) =
                    ["peer.service", "server.address"].iter().find_map(|k| find(k)).or(db_name)
                {
                    e.server = s;
                }
            }
        } else {
            e.server = service.to_string();
            e.server_seconds = secs;
            e.root = span.parent_span_id.is_empty();
        }
        if !e.client.is_empty()
            && !e.server.is_empty()
            && let Some(e) = self.pending.remove(&key)
        {
            self.complete(reg, e, now_ms);
        }
    }

    /// Edges whose wait is over: virtual nodes where Tempo infers them, dropped otherwise.
    pub fn expire(&mut self, reg: &mut Registry, now_ms: i64) {
        while let Some(&(key, at)) = self.queue.front() {
            if at > now_ms {
                break;
            }
            self.queue.pop_front();
            let Some(mut e) = self.pending.remove(&key) else { continue };
            self.expired_edges += 1;
            e.connection = Some(Connection::Virtual);
            if e.client.is_empty() {
                if e.root {
                    e.client = "user".into();
                    self.complete(reg, e, now_ms);
                }
            } else if e.server.is_empty()
                && let Some(peer) = e.peer.take()
            {
                e.server = peer;
                self.complete(reg, e, now_ms);
            }
        }
    }

    fn complete(&mut self, reg: &mut Registry, e: Edge, now_ms: i64) {
        let conn = e.connection.unwrap_or(Connection::Direct);
        let key = (e.client.clone(), e.server.clone(), conn);
        // A new edge needs two counters and two histograms (buckets, +Inf, sum, count).
        if !self.handles.contains_key(&key)
            && !reg.room_for(BUCKETS.len().saturating_add(3).saturating_mul(2).saturating_add(2))
        {
            return;
        }
        let (total, failed, server, client) = self.handles.entry(key).or_insert_with(|| {
            let base = Labels::new([
                ("client", e.client.as_str()),
                ("server", e.server.as_str()),
                ("connection_type", conn.label()),
            ]);
            (
                reg.counter(REQUEST_TOTAL, &base),
                reg.counter(REQUEST_FAILED_TOTAL, &base),
                reg.histogram(SERVER_SECONDS, &base, &BUCKETS),
                reg.histogram(CLIENT_SECONDS, &base, &BUCKETS),
            )
        });
        reg.add(*total, 1.0, now_ms);
        if e.failed {
            // Touch before adding so a failure-only series starts with its first increment.
            reg.add(*failed, 1.0, now_ms);
            if let Some(x) = e.exemplar {
                reg.exemplar(*failed, x);
            }
        }
        let ex = |v| e.exemplar.map(|x| Exemplar { value: v, ..x });
        reg.observe(server, &BUCKETS, e.server_seconds, now_ms, ex(e.server_seconds));
        reg.observe(client, &BUCKETS, e.client_seconds, now_ms, ex(e.client_seconds));
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Forgets edges whose request counter was last updated before `cutoff_ms`; their
    /// series ids go to `dead` (for [`Registry::remove`], then [`ServiceGraph::renumber`]).
    pub fn evict(&mut self, reg: &Registry, cutoff_ms: i64, dead: &mut HashSet<usize>) {
        self.handles.retain(|_, (total, failed, server, client)| {
            let live = reg.series.get(*total).is_some_and(|s| s.touched_ms >= cutoff_ms);
            if !live {
                dead.extend([*total, *failed]);
                for h in [&*server, &*client] {
                    dead.extend(h.buckets.iter().copied());
                    dead.extend([h.sum, h.count]);
                }
            }
            live
        });
    }

    pub fn renumber(&mut self, map: &[Option<usize>]) {
        self.handles.retain(|_, (total, failed, server, client)| {
            let ids = (
                renumber(map, *total),
                renumber(map, *failed),
                server.renumber(map),
                client.renumber(map),
            );
            match ids {
                (Some(t), Some(f), Some(s), Some(c)) => {
                    (*total, *failed, *server, *client) = (t, f, s, c);
                    true
                }
                _ => false,
            }
        });
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::kv;
    use super::*;

    fn span(kind: SpanKind, id: u8, parent: Option<u8>, ms: u64) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
            kind: kind as i32,
            start_time_unix_nano: 0,
            end_time_unix_nano: ms * 1_000_000,
            ..Default::default()
        }
    }

    fn value(r: &Registry, name: &str, client: &str, server: &str) -> Option<(f64, String)> {
        r.series
            .iter()
            .find(|s| {
                s.labels.get("__name__") == Some(name)
                    && s.labels.get("client") == Some(client)
                    && s.labels.get("server") == Some(server)
            })
            .map(|s| (s.value, s.labels.get("connection_type").unwrap_or("").to_string()))
    }

    #[test]
    fn client_and_server_spans_pair_into_one_edge_in_either_order() {
        let (mut r, mut g) =
            (Registry::default(), ServiceGraph::new(std::time::Duration::from_secs(10)));
        g.observe(&mut r, "orders", &[], &span(SpanKind::Server, 3, Some(2), 40), 0);
        g.observe(&mut r, "gateway", &[], &span(SpanKind::Client, 2, Some(1), 50), 1);
        let mut failed = span(SpanKind::Client, 4, Some(1), 5);
        failed.status =
            Some(opentelemetry_proto::tonic::trace::v1::Status { code: 2, message: String::new() });
        g.observe(&mut r, "gateway", &[], &failed, 2);
        g.observe(&mut r, "orders", &[], &span(SpanKind::Server, 5, Some(4), 4), 3);
        assert_eq!(value(&r, REQUEST_TOTAL, "gateway", "orders"), Some((2.0, String::new())));
        assert_eq!(value(&r, REQUEST_FAILED_TOTAL, "gateway", "orders").map(|v| v.0), Some(1.0));
        let sum = value(&r, "traces_service_graph_request_server_seconds_sum", "gateway", "orders")
            .unwrap()
            .0;
        assert!((sum - 0.044).abs() < 1e-12, "{sum}");
        let sum = value(&r, "traces_service_graph_request_client_seconds_sum", "gateway", "orders")
            .unwrap()
            .0;
        assert!((sum - 0.055).abs() < 1e-12, "{sum}");
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn edges_beyond_the_series_cap_are_dropped_and_idle_edges_evicted() {
        let per_edge = 2 + 2 * (BUCKETS.len() + 3);
        let (mut r, mut g) = (
            Registry::with_limit(2 * per_edge),
            ServiceGraph::new(std::time::Duration::from_secs(10)),
        );
        // Client-chosen service names: one edge each.
        for (i, client) in ["a", "b", "c", "d"].iter().enumerate() {
            let id = 10 * (i as u8 + 1);
            g.observe(&mut r, client, &[], &span(SpanKind::Client, id, Some(1), 5), 0);
            g.observe(&mut r, "server", &[], &span(SpanKind::Server, id + 1, Some(id), 5), 0);
        }
        assert_eq!((g.len(), r.len(), r.take_dropped()), (2, 2 * per_edge, 2));
        g.observe(&mut r, "a", &[], &span(SpanKind::Client, 90, Some(1), 5), 100);
        g.observe(&mut r, "server", &[], &span(SpanKind::Server, 91, Some(90), 5), 100);
        let mut dead = HashSet::new();
        g.evict(&r, 50, &mut dead);
        assert_eq!(dead.len(), per_edge, "b's edge is idle");
        let map = r.remove(&dead);
        g.renumber(&map);
        assert_eq!((g.len(), r.len()), (1, per_edge));
        assert_eq!(value(&r, REQUEST_TOTAL, "a", "server").map(|v| v.0), Some(2.0));
        g.observe(&mut r, "c", &[], &span(SpanKind::Client, 30, Some(1), 5), 200);
        g.observe(&mut r, "server", &[], &span(SpanKind::Server, 31, Some(30), 5), 200);
        assert_eq!((g.len(), r.take_dropped()), (2, 0), "room again");
        assert_eq!(value(&r, REQUEST_TOTAL, "a", "server").map(|v| v.0), Some(2.0));
    }

    #[test]
    fn unpaired_client_spans_with_a_peer_become_virtual_nodes_after_the_wait() {
        let (mut r, mut g) =
            (Registry::default(), ServiceGraph::new(std::time::Duration::from_secs(10)));
        let mut s = span(SpanKind::Client, 2, Some(1), 10);
        s.attributes = vec![kv("peer.service", "bank")];
        g.observe(&mut r, "payment", &[], &s, 0);
        g.observe(&mut r, "payment", &[], &span(SpanKind::Client, 9, Some(1), 10), 0);
        g.expire(&mut r, 9_999);
        assert_eq!(value(&r, REQUEST_TOTAL, "payment", "bank"), None, "still waiting");
        g.expire(&mut r, 10_000);
        assert_eq!(value(&r, REQUEST_TOTAL, "payment", "bank"), Some((1.0, "virtual_node".into())));
        assert_eq!(g.pending(), 0, "the peerless client span is dropped");
        assert_eq!(
            r.series.iter().filter(|s| s.labels.get("__name__") == Some(REQUEST_TOTAL)).count(),
            1
        );
    }

    #[test]
    fn database_calls_are_edges_at_once_and_root_server_spans_come_from_user() {
        let (mut r, mut g) =
            (Registry::default(), ServiceGraph::new(std::time::Duration::from_secs(10)));
        let mut s = span(SpanKind::Client, 2, Some(1), 10);
        s.attributes = vec![kv("db.system", "postgresql"), kv("db.name", "stock")];
        g.observe(&mut r, "inventory", &[], &s, 0);
        assert_eq!(value(&r, REQUEST_TOTAL, "inventory", "stock"), Some((1.0, "database".into())));
        g.observe(&mut r, "gateway", &[], &span(SpanKind::Server, 1, None, 10), 0);
        g.expire(&mut r, 10_000);
        assert_eq!(value(&r, REQUEST_TOTAL, "user", "gateway"), Some((1.0, "virtual_node".into())));
    }
}
