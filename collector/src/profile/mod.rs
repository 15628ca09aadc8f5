//! Profiles: push ingest (Pyroscope `/ingest` and `push.v1`), durable storage in a WAL of its
//! own, an Arrow head, Parquet blocks beside the span blocks, and the queries the Pyroscope API
//! and skein's flame graphs are built on.
//!
//! Data flows one way: `push` (parse pprof / folded / multipart into a [`model::Batch`]) →
//! [`Profiles::ingest`] (profile WAL, fsynced per the `--fsync` policy, then the `head`) →
//! `store` (blocks under `profiles/<tenant>/`, compaction, retention) → `query`. Design notes:
//! `DESIGN.md` next to this file.
//!
//! # Merged call trees for other surfaces
//!
//! [`Profiles::merge_stacktraces`] is the entry point for flame graphs outside the Pyroscope
//! API (e.g. skein's native `/skein/api/flamegraph`):
//!
//! ```ignore
//! let tree: Tree = profiles
//!     .merge_stacktraces(
//!         "single-tenant",
//!         "process_cpu:cpu:nanoseconds:cpu:nanoseconds", // a profile type id
//!         r#"{service_name="shop", span_name=~"GET .*"}"#, // label selector ("" = all)
//!         Some(&["0102030405060708".to_string()]), // only samples of these spans (None = all)
//!         start_ns,
//!         end_ns, // inclusive, unix nanoseconds
//!     )
//!     .await?;
//! // tree.root is "total"; every node has name, total (incl. callees), self_value, children
//! // (sorted by name), frames from the root.
//! ```
//!
//! Errors: [`ProfileError::BadRequest`] for a bad type, selector or span id,
//! [`ProfileError::ResourcesExhausted`] when the query would exceed `--query-memory-bytes`.

pub mod block;
pub mod folded;
pub mod head;
pub mod model;
pub mod multipart;
pub mod pprof;
pub mod push;
pub mod query;
pub mod schema;
pub mod selector;
pub mod service;
pub mod stack;
pub mod store;
pub mod tree;

pub use query::{MergeRequest, Series, SeriesRequest};
pub use service::{ProfileConfig, Profiles};
pub use tree::{Tree, TreeNode};

use crate::ingest::IngestError;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    BadRequest(String),
    #[error("malformed profile: {0}")]
    Malformed(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid tenant id {0:?}: use 1-150 characters from [A-Za-z0-9_.-]")]
    InvalidTenant(String),
    #[error("profile write path is full, retry later")]
    Overloaded,
    #[error("query needs more memory than allowed: {0}")]
    ResourcesExhausted(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<IngestError> for ProfileError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Malformed(m) => ProfileError::Malformed(m),
            IngestError::TooLarge { limit } => ProfileError::TooLarge { limit },
            IngestError::InvalidTenant(t) => ProfileError::InvalidTenant(t),
            IngestError::Overloaded => ProfileError::Overloaded,
            other => ProfileError::Internal(other.to_string()),
        }
    }
}

impl From<arrow::error::ArrowError> for ProfileError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ProfileError::Internal(format!("arrow: {e}"))
    }
}

impl From<parquet::errors::ParquetError> for ProfileError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        ProfileError::Internal(format!("parquet: {e}"))
    }
}

impl From<object_store::Error> for ProfileError {
    fn from(e: object_store::Error) -> Self {
        ProfileError::Storage(format!("object store: {e}"))
    }
}

impl From<crate::store::blocks::BlockDirError> for ProfileError {
    fn from(e: crate::store::blocks::BlockDirError) -> Self {
        use crate::store::blocks::BlockDirError;
        match e {
            BlockDirError::ObjectStore(e) => e.into(),
            meta @ BlockDirError::Meta { .. } => {
                ProfileError::Internal(format!("profile block {meta}"))
            }
        }
    }
}

impl From<crate::wal::WalError> for ProfileError {
    fn from(e: crate::wal::WalError) -> Self {
        ProfileError::Storage(e.to_string())
    }
}

/// Inflates gzip up to `limit` bytes (a bomb stops there).
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, ProfileError> {
    Ok(crate::ingest::gunzip_bounded(raw, limit)?)
}

/// The tenant of a request (`X-Scope-OrgID`; absent means the default tenant).
pub fn tenant(value: Option<&[u8]>) -> Result<String, ProfileError> {
    Ok(crate::ingest::tenant_from(value)?)
}
