//! Immutable profile blocks under `profiles/<tenant>/<ulid>/` on the span object store:
//! `samples.parquet` (samples sorted by time), `stacks.parquet` (the stacks they refer to) and
//! `meta.json`, written last: a block exists once its meta exists.

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use bytes::Bytes;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::ProfileError;
use super::schema::{col, samples_schema};

/// Top-level prefix of profile blocks; span blocks live at `<tenant>/<ulid>/`, one level
/// shallower, so neither store mistakes the other's files for its own.
pub const PREFIX: &str = crate::store::blocks::PROFILES_DIR;
pub const META_FILE: &str = "meta.json";
pub const SAMPLES_FILE: &str = "samples.parquet";
pub const STACKS_FILE: &str = "stacks.parquet";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BlockMeta {
    pub format: u32,
    pub id: String,
    pub tenant: String,
    /// Earliest and latest sample time, unix nanoseconds.
    pub min_time: i64,
    pub max_time: i64,
    pub samples: u64,
    pub stacks: u64,
    pub samples_bytes: u64,
    pub stacks_bytes: u64,
    /// Highest profile WAL sequence of this tenant in the block.
    pub wal_seq: u64,
    /// The tenant's profile WAL sequences whose records this block holds (empty in blocks
    /// written before ranges were recorded: then `1..=wal_seq`).
    #[serde(default)]
    pub wal_ranges: crate::wal::SeqRanges,
    pub profile_types: BTreeSet<String>,
    /// Label names present in the block (without the ones derived from the profile type).
    pub label_names: BTreeSet<String>,
    #[serde(default)]
    pub compacted_from: Vec<String>,
    pub created_unix: i64,
}

impl crate::store::blocks::BlockMetaFile for BlockMeta {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn compacted_from(&self) -> &[String] {
        &self.compacted_from
    }
    fn recorded_size(&self, file: &str) -> Option<u64> {
        match file {
            SAMPLES_FILE => Some(self.samples_bytes),
            STACKS_FILE => Some(self.stacks_bytes),
            _ => None,
        }
    }
}

impl crate::store::catalog::CatalogEntry for BlockMeta {
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn min_time(&self) -> i64 {
        self.min_time
    }
    fn max_time(&self) -> i64 {
        self.max_time
    }
    fn wal_ranges(&self) -> crate::wal::SeqRanges {
        crate::store::block::legacy_covered(&self.wal_ranges, self.wal_seq)
    }
    fn rows(&self) -> u64 {
        self.samples
    }
    fn created_unix(&self) -> i64 {
        self.created_unix
    }
}

impl BlockMeta {
    pub fn dir(tenant: &str, id: &str) -> Path {
        Path::from(format!("{PREFIX}/{tenant}/{id}"))
    }
    pub fn file(&self, name: &str) -> Path {
        Self::dir(&self.tenant, &self.id).join(name)
    }
    pub fn bytes(&self) -> u64 {
        self.samples_bytes + self.stacks_bytes
    }
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        self.min_time <= end && self.max_time >= start
    }
}

fn props() -> WriterProperties {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default());
    let mut b = WriterProperties::builder()
        .set_compression(zstd)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(64 * 1024));
    // Sorted times and random 64-bit ids gain nothing from a dictionary; byte-stream-split lets
    // zstd find the slowly changing high bytes.
    for c in [col::TIME, col::STACK_ID, col::VALUE] {
        b = b
            .set_column_dictionary_enabled(ColumnPath::from(c), false)
            .set_column_encoding(ColumnPath::from(c), Encoding::BYTE_STREAM_SPLIT);
    }
    for c in [col::SPAN_ID, col::TRACE_ID] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), false);
    }
    b.build()
}

pub fn encode(batch: &RecordBatch) -> Result<Bytes, ProfileError> {
    let mut buf = Vec::with_capacity(1 << 16);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props()))?;
    w.write(batch)?;
    w.close()?;
    Ok(Bytes::from(buf))
}

/// Head batches as one batch sorted by time (queries and retention read blocks by time).
pub fn sort_samples(batches: &[RecordBatch]) -> Result<RecordBatch, ProfileError> {
    let all = concat_batches(&samples_schema(), batches)?;
    let time = all
        .column_by_name(col::TIME)
        .ok_or_else(|| ProfileError::Internal("samples without time".into()))?;
    let order = sort_to_indices(time, None, None)?;
    Ok(take_record_batch(&all, &order)?)
}

/// Decodes a whole Parquet file batch by batch.
pub fn read(
    file: Bytes,
) -> Result<impl Iterator<Item = Result<RecordBatch, ProfileError>>, ProfileError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.with_batch_size(8192).build()?;
    Ok(reader.map(|b| b.map_err(ProfileError::from)))
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::schema::{BatchView, Row, RowsBuilder};

    #[test]
    fn samples_sort_by_time_and_survive_parquet() {
        let mut b = RowsBuilder::new("t");
        for (i, t) in [30, 10, 20].into_iter().enumerate() {
            b.push(&Row {
                time: t,
                profile_type: "a:b:c:d:e",
                service_name: "s",
                span_id: None,
                span_name: Some("op"),
                trace_id: None,
                labels: &[("k", "v")],
                stack_id: i as u64,
                value: t,
            })
            .unwrap();
        }
        let first = b.finish().unwrap();
        let sorted = sort_samples(&[first]).unwrap();
        let file = encode(&sorted).unwrap();
        let batches: Vec<RecordBatch> = read(file).unwrap().collect::<Result<_, _>>().unwrap();
        let v = BatchView::new(&batches[0]).unwrap();
        assert_eq!(v.time.values().to_vec(), vec![10, 20, 30]);
        assert_eq!(v.label(0, "span_name").as_deref(), Some("op"));
        assert_eq!(v.label(0, "k").as_deref(), Some("v"));
    }
}
