//! Span rows of one tenant sealed for writing a block, with the facts the block needs.

use arrow::array::RecordBatch;

use super::tags::TagKeys;

/// Rows of one tenant taken out of the head (still visible to queries there) until their
/// block is committed.
#[derive(Debug)]
pub struct SealedRows {
    /// Identifies this part within the head, for releasing it after the flush.
    pub id: u64,
    pub tenant: String,
    pub batches: Vec<RecordBatch>,
    pub spans: usize,
    pub min_time: i64,
    pub max_time: i64,
    /// Lowest and highest WAL sequence whose spans are in `batches`.
    pub min_seq: u64,
    pub max_seq: u64,
    pub tags: TagKeys,
}
