//! Persistence of sampled history: every few minutes the ticks since the last snapshot are
//! written as one Parquet file per tenant (`<dir>/<tenant>/<first_ms>-<last_ms>.parquet`,
//! rows of label set, time, value; the label column is dictionary-encoded so each series' labels
//! are stored once per file). Files past retention are deleted whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::SpanMetricsError;
use crate::promql::labels::Labels;

/// Column names of a snapshot file.
mod col {
    /// The label set as a JSON object.
    pub const LABELS: &str = "labels";
    /// Sample time, unix milliseconds.
    pub const TIME: &str = "t";
    pub const VALUE: &str = "v";
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(col::LABELS, DataType::Utf8, false),
        Field::new(col::TIME, DataType::Int64, false),
        Field::new(col::VALUE, DataType::Float64, false),
    ]))
}

fn labels_json(l: &Labels) -> String {
    l.to_json().to_string()
}

fn parse_labels(s: &str) -> Result<Labels, SpanMetricsError> {
    let map: std::collections::BTreeMap<String, String> = serde_json::from_str(s)
        .map_err(|e| SpanMetricsError::Corrupt(format!("label set {s:?}: {e}")))?;
    Ok(Labels::new(map))
}

/// Writes one snapshot file atomically (temporary name, fsync, rename).
pub fn write(
    dir: &Path,
    samples: &[(&Labels, i64, f64)],
) -> Result<Option<PathBuf>, SpanMetricsError> {
    let (Some(first), Some(last)) =
        (samples.iter().map(|s| s.1).min(), samples.iter().map(|s| s.1).max())
    else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir)?;
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(samples.iter().map(|s| labels_json(s.0)))),
            Arc::new(Int64Array::from_iter_values(samples.iter().map(|s| s.1))),
            Arc::new(Float64Array::from_iter_values(samples.iter().map(|s| s.2))),
        ],
    )?;
    let path = dir.join(format!("{first:013}-{last:013}.parquet"));
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w = ArrowWriter::try_new(file, schema(), Some(props))?;
    w.write(&batch)?;
    let file = w.into_inner()?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Some(path))
}

/// Snapshot files of a tenant in time order, with their last timestamp.
pub fn files(dir: &Path) -> Result<Vec<(PathBuf, i64)>, SpanMetricsError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(stem) = name.strip_suffix(".parquet")
            && let Some((_, last)) = stem.split_once('-')
            && let Ok(last) = last.parse::<i64>()
        {
            out.push((path, last));
        } else if name.ends_with(".tmp") {
            // A snapshot interrupted by a crash; its ticks are lost, as documented.
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads one snapshot file back.
pub fn read(path: &Path) -> Result<Vec<(Labels, i64, f64)>, SpanMetricsError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path)?)?.build()?;
    let mut out = Vec::new();
    let mut cache: std::collections::HashMap<String, Labels> = Default::default();
    for batch in reader {
        let batch = batch?;
        let column = |name: &str| batch.column_by_name(name).map(|c| c.as_any());
        let labels = column(col::LABELS).and_then(|c| c.downcast_ref::<StringArray>());
        let t = column(col::TIME).and_then(|c| c.downcast_ref::<Int64Array>());
        let v = column(col::VALUE).and_then(|c| c.downcast_ref::<Float64Array>());
        let (Some(labels), Some(t), Some(v)) = (labels, t, v) else {
            return Err(SpanMetricsError::Corrupt(format!(
                "{}: unexpected columns",
                path.display()
            )));
        };
        for i in 0..batch.num_rows() {
            let text = labels.value(i);
            let l = match cache.get(text) {
                Some(l) => l.clone(),
                None => {
                    let l = parse_labels(text)?;
                    cache.insert(text.to_string(), l.clone());
                    l
                }
            };
            out.push((l, t.value(i), v.value(i)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_list_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = Labels::new([("__name__", "m"), ("service", "x\"y")]);
        let b = Labels::new([("__name__", "n")]);
        write(dir.path(), &[(&a, 2000, 1.5), (&b, 3000, 2.0)]).unwrap();
        write(dir.path(), &[(&a, 1000, 0.5)]).unwrap();
        assert!(write(dir.path(), &[]).unwrap().is_none());
        let f = files(dir.path()).unwrap();
        assert_eq!(f.iter().map(|x| x.1).collect::<Vec<_>>(), vec![1000, 3000]);
        assert_eq!(read(&f[1].0).unwrap(), vec![(a.clone(), 2000, 1.5), (b, 3000, 2.0)]);
        assert_eq!(read(&f[0].0).unwrap(), vec![(a, 1000, 0.5)]);
    }
}
