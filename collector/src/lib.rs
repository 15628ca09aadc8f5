//! skein collector: durable OTLP ingest → columnar span store → Tempo-compatible queries.
//!
//! Data flows one way: `ingest` → `wal` → `head` → `store` (blocks) → `query` → `api`.

pub mod api;
pub mod bench;
pub mod config;
pub mod head;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod serve;
pub mod store;
pub mod wal;
