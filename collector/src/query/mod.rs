//! Queries over head + blocks with DataFusion: trace by id, TraceQL search and metrics, tag
//! names/values.
//!
//! Every query first prunes blocks (by time range, or by the trace-id bloom filters), then
//! builds a DataFusion plan over exactly those Parquet files plus a snapshot of the head. All
//! queries share one bounded memory pool: a query that needs more fails with
//! `ResourcesExhausted` instead of taking the process down.
//!
//! [`QueryEngine`] (`engine.rs`) lists the questions; each is worked out in its own module
//! (`trace`, `search`, `tags`, `metrics_eval`, `critical_path`, `operation`, `compare`) over the
//! tables `tables.rs` assembles. `traceql` parses the query language; `compile` and `udf` turn
//! its filters into DataFusion expressions. `runner` is where and for how long queries run
//! (their own runtime, a concurrency limit, a timeout); `sql` guards ad-hoc SQL
//! (`query/DESIGN.md`).

pub mod compare;
pub mod compile;
pub mod critical_path;
mod engine;
mod footers;
pub mod metrics_eval;
pub mod operation;
mod page_prune;
pub mod peer;
pub mod runner;
pub mod search;
mod search_index;
mod span_scan;
pub mod sql;
mod tables;
pub mod tags;
pub mod trace;
mod trace_rows;
mod trace_scan;
pub mod traceql;
pub mod udf;

use datafusion::common::DataFusionError;

use crate::store::StoreError;
pub use engine::QueryEngine;
pub use runner::{QueryLimits, QueryRunner};
pub use tables::Tables;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid TraceQL: {0}")]
    TraceQl(#[from] traceql::ParseError),
    #[error("not found")]
    NotFound,
    #[error("query needs more memory than allowed: {0}")]
    ResourcesExhausted(String),
    /// A query limit other than memory was exceeded (e.g. `--max-search-trace-ids`).
    #[error("query too expensive: {0}")]
    TooExpensive(String),
    #[error("query timed out: {0}")]
    Timeout(String),
    #[error("too many queries: {0}")]
    Busy(String),
    #[error("query failed: {0}")]
    Internal(String),
    #[error("query failed: {0}")]
    DataFusion(#[source] DataFusionError),
    #[error("query failed: {0}")]
    Store(#[from] StoreError),
    #[error("query failed: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("query failed: {0}")]
    Head(#[from] crate::head::HeadError),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => QueryError::ResourcesExhausted(m.clone()),
            _ => QueryError::DataFusion(e),
        }
    }
}

impl crate::error::Coded for QueryError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            QueryError::BadRequest(_) | QueryError::TraceQl(_) => ErrorCode::InvalidArgument,
            QueryError::NotFound => ErrorCode::NotFound,
            QueryError::ResourcesExhausted(_) | QueryError::TooExpensive(_) => {
                ErrorCode::ResourceExhausted
            }
            QueryError::Timeout(_) => ErrorCode::Unavailable,
            QueryError::Busy(_) => ErrorCode::Overloaded,
            QueryError::Internal(_)
            | QueryError::DataFusion(_)
            | QueryError::Store(_)
            | QueryError::Arrow(_)
            | QueryError::Head(_) => ErrorCode::Internal,
        }
    }
}

/// Unix seconds → nanoseconds, saturating.
pub fn secs_to_nanos(s: i64) -> i64 {
    s.saturating_mul(1_000_000_000)
}

pub fn parse_trace_id(s: &str) -> Result<[u8; 16], QueryError> {
    let s = s.trim();
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(QueryError::BadRequest(format!(
            "invalid trace id {s:?}: expected up to 32 hex digits"
        )));
    }
    // Shorter ids (64-bit B3) are left-padded with zeros, as Tempo does.
    let padded = format!("{s:0>32}");
    let mut out = [0u8; 16];
    hex::decode_to_slice(&padded, &mut out)
        .map_err(|e| QueryError::BadRequest(format!("invalid trace id: {e}")))?;
    Ok(out)
}
