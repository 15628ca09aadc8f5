//! skein collector: durable OTLP ingest → columnar span store → Tempo-compatible queries, and
//! profile push → columnar profile store → Pyroscope-compatible queries.
//!
//! Data flows one way: `ingest` → `wal` → `head` → `store` (blocks) → `query` → `api`; profiles
//! take the same path inside `profile` (its own WAL and head, blocks beside the span blocks).
//! `metrics_gen` aggregates spans into span-metrics and service-graph series at ingest;
//! `promql` evaluates Prometheus queries over them.
//!
//! Below everything: `error` (which kind of failure an error is, so the API answers it
//! consistently) and `tenant` (the one reader of `X-Scope-OrgID`, for HTTP and gRPC).

pub mod alert;
pub mod api;
pub mod bench;
pub mod config;
pub mod demo;
pub mod error;
pub mod head;
pub mod ingest;
pub mod metrics;
pub mod metrics_gen;
pub mod profile;
pub mod promql;
pub mod query;
pub mod serve;
pub mod store;
pub mod tenant;
pub mod wal;
