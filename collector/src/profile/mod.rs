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
pub mod federate;
pub mod folded;
pub mod head;
pub mod limits;
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
pub mod wire;

pub use query::{MergeRequest, Series, SeriesRequest};
pub use service::{ProfileConfig, Profiles};
pub use tree::{Tree, TreeNode};

use crate::error::{Coded, ErrorCode};
use crate::ingest::IngestError;
use crate::tenant::InvalidTenant;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    BadRequest(String),
    #[error("malformed profile: {0}")]
    Malformed(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    InvalidTenant(#[from] InvalidTenant),
    #[error("profile write path is full, retry later")]
    Overloaded,
    #[error(
        "profile decodes to more than {limit} bytes (--profile-decode-factor times --max-body-bytes): too many samples, frames or labels for its size"
    )]
    TooComplex { limit: usize },
    #[error("too many profile pushes are being decoded, retry later")]
    Busy,
    #[error(
        "too many applications: this tenant pushed {limit} distinct service names within the last hour (--profile-max-apps)"
    )]
    TooManyApps { limit: usize },
    #[error("query needs more memory than allowed: {0}")]
    ResourcesExhausted(String),
    #[error("storage failure: object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("storage failure: {0}")]
    Wal(#[from] crate::wal::WalError),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("internal error: arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("internal error: parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
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

impl Coded for ProfileError {
    fn code(&self) -> ErrorCode {
        match self {
            ProfileError::BadRequest(_) | ProfileError::Malformed(_) => ErrorCode::InvalidArgument,
            ProfileError::InvalidTenant(e) => e.code(),
            ProfileError::TooLarge { .. } | ProfileError::TooComplex { .. } => ErrorCode::TooLarge,
            ProfileError::Overloaded | ProfileError::Busy => ErrorCode::Overloaded,
            ProfileError::TooManyApps { .. } => ErrorCode::PermissionDenied,
            ProfileError::ResourcesExhausted(_) => ErrorCode::ResourceExhausted,
            ProfileError::ObjectStore(_) | ProfileError::Wal(_) => ErrorCode::Unavailable,
            ProfileError::Internal(_) | ProfileError::Arrow(_) | ProfileError::Parquet(_) => {
                ErrorCode::Internal
            }
        }
    }
}

/// Inflates gzip up to `limit` bytes (a bomb stops there).
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, ProfileError> {
    Ok(crate::ingest::gunzip_bounded(raw, limit)?)
}
