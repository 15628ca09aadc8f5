//! skein collector: durable OTLP ingest → columnar span store → Tempo-compatible queries, and
//! profile push → columnar profile store → Pyroscope-compatible queries.
//!
//! Data flows one way: `ingest` → `traces` (the write path: `wal` → `head` → `store` blocks) →
//! `query` → `api`; profiles take the same path inside `profile` (its own WAL and head, blocks
//! beside the span blocks). `serve` only wires the subsystems together. `spanrows` (the span
//! table's Arrow schema and the OTLP ↔ rows codec) sits below `head`, `store` and `query`, and
//! uses none of them.
//! `span_metrics` aggregates spans into span-metrics and service-graph series at ingest;
//! `promql` evaluates Prometheus queries over them.
//! `cluster` is this replica among the others sharing one storage root: the peers, their
//! internal API's client, the other namespaces' blocks; `query` asks it for what the peers
//! hold in memory.
//!
//! Below everything: `error` (which kind of failure an error is, so the API answers it
//! consistently), `tenant` (the one reader of `X-Scope-OrgID`, for HTTP and gRPC) and `health`
//! (what `/ready` and `/healthz` report, recorded by each subsystem).

pub mod alert;
pub mod api;
pub mod cluster;
pub mod config;
pub mod deadline;
#[cfg(feature = "demo")]
pub mod demo;
pub mod devcerts;
pub mod error;
pub mod fuzzing;
pub mod head;
pub mod health;
pub mod ingest;
pub mod partial;
pub mod profile;
pub mod promql;
pub mod query;
pub mod serve;
pub mod span_metrics;
pub mod spanrows;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod traces;
pub mod wal;
