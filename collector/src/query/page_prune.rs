//! Which rows of a Parquet file a predicate can match, from the file's page statistics: each
//! data page (or, without a page index, each row group) is a container for DataFusion's
//! `PruningPredicate`, and the pages it cannot rule out become a `RowSelection`. Used where
//! skein reads block files without a DataFusion plan (search over the block index), so that a
//! query pays only for the pages of the service and window it asks about.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, UInt64Array};
use datafusion::common::{Column, ScalarValue, pruning::PruningStatistics};
use datafusion::physical_optimizer::pruning::PruningPredicate;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection, RowSelector};
use parquet::file::metadata::RowGroupMetaData;

use super::QueryError;
use crate::store::StoreError;

/// Rows worth reading: the row groups with any, and the selection within them (over the
/// listed groups' rows only, in order).
pub struct Selected {
    pub row_groups: Vec<usize>,
    pub selection: RowSelection,
    pub rows: usize,
}

/// The rows of the file `meta` describes that `pred` cannot rule out (all rows without one).
pub fn select(
    meta: &ArrowReaderMetadata,
    pred: Option<&PruningPredicate>,
) -> Result<Selected, QueryError> {
    let md = meta.metadata();
    let Some(pred) = pred else {
        let row_groups: Vec<usize> = (0..md.num_row_groups()).collect();
        let rows = usize::try_from(md.file_metadata().num_rows()).unwrap_or(0);
        return Ok(Selected {
            row_groups,
            selection: RowSelection::from(vec![RowSelector::select(rows)]),
            rows,
        });
    };
    let mut out = Builder::default();
    for (rg, rg_meta) in md.row_groups().iter().enumerate() {
        let rg_rows = usize::try_from(rg_meta.num_rows()).unwrap_or(0);
        if rg_rows == 0 {
            continue;
        }
        let stats = match pages(meta, rg, pred) {
            Some(p) => Stats::Pages(p),
            None => Stats::Group(rg_meta),
        };
        let containers = Containers { meta, rg, stats: &stats };
        let keep = pred.prune(&containers)?;
        let lengths: Vec<usize> = match &stats {
            Stats::Pages(p) => p.lengths.clone(),
            Stats::Group(_) => vec![rg_rows],
        };
        out.group(rg, lengths, keep);
    }
    Ok(out.finish())
}

/// Exactly the rows of `ranges` (row numbers in the file, ascending, not overlapping).
pub fn select_rows(meta: &ArrowReaderMetadata, ranges: &[std::ops::Range<u64>]) -> Selected {
    let mut out = Builder::default();
    let mut first = 0u64;
    let mut next = 0;
    for (rg, rg_meta) in meta.metadata().row_groups().iter().enumerate() {
        let end = first.saturating_add(u64::try_from(rg_meta.num_rows()).unwrap_or(0));
        let (mut lengths, mut keep) = (Vec::new(), Vec::new());
        let mut at = first;
        let mut part = |from: u64, to: u64, k: bool| {
            if to > from {
                lengths.push(usize::try_from(to - from).unwrap_or(usize::MAX));
                keep.push(k);
            }
        };
        while let Some(r) = ranges.get(next)
            && r.start < end
        {
            let (s, e) = (r.start.max(at), r.end.min(end));
            part(at, s, false);
            part(s, e, true);
            at = at.max(e);
            if r.end > end {
                break;
            }
            next += 1;
        }
        part(at, end, false);
        out.group(rg, lengths, keep);
        first = end;
    }
    out.finish()
}

/// A [`Selected`] built row group by row group.
#[derive(Default)]
struct Builder {
    row_groups: Vec<usize>,
    selectors: Vec<RowSelector>,
    rows: usize,
}

impl Builder {
    /// Row group `rg`, whose containers have `lengths` rows and are kept where `keep` says.
    fn group(&mut self, rg: usize, lengths: Vec<usize>, keep: Vec<bool>) {
        if !keep.iter().any(|k| *k) {
            return;
        }
        self.row_groups.push(rg);
        for (len, k) in lengths.into_iter().zip(keep) {
            if k {
                self.rows = self.rows.saturating_add(len);
            }
            push(
                &mut self.selectors,
                if k { RowSelector::select(len) } else { RowSelector::skip(len) },
            );
        }
    }

    fn finish(self) -> Selected {
        Selected {
            row_groups: self.row_groups,
            selection: RowSelection::from(self.selectors),
            rows: self.rows,
        }
    }
}

/// Appends, merging with the previous selector of the same kind.
fn push(out: &mut Vec<RowSelector>, s: RowSelector) {
    if s.row_count == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.skip == s.skip => {
            last.row_count = last.row_count.saturating_add(s.row_count)
        }
        _ => out.push(s),
    }
}

/// Page boundaries of row group `rg` shared by every column the predicate reads; `None`
/// without a page index or when the columns' pages do not line up.
struct Pages {
    lengths: Vec<usize>,
}

fn pages(meta: &ArrowReaderMetadata, rg: usize, pred: &PruningPredicate) -> Option<Pages> {
    let md = meta.metadata();
    let offsets = md.offset_index()?.get(rg)?;
    md.column_index()?;
    let rg_rows = md.row_group(rg).num_rows();
    let mut firsts: Option<Vec<i64>> = None;
    for name in required(pred) {
        let conv =
            StatisticsConverter::try_new(&name, meta.schema(), meta.parquet_schema()).ok()?;
        let idx = conv.parquet_column_index()?;
        let these: Vec<i64> =
            offsets.get(idx)?.page_locations().iter().map(|p| p.first_row_index).collect();
        match &firsts {
            Some(f) if *f != these => return None,
            Some(_) => {}
            None => firsts = Some(these),
        }
    }
    let firsts = firsts?;
    let mut lengths = Vec::with_capacity(firsts.len());
    for (i, first) in firsts.iter().enumerate() {
        let end = firsts.get(i + 1).copied().unwrap_or(rg_rows);
        lengths.push(usize::try_from(end.checked_sub(*first)?).ok()?);
    }
    Some(Pages { lengths })
}

/// Names of the columns the predicate reads.
fn required(pred: &PruningPredicate) -> Vec<String> {
    datafusion::physical_expr::utils::collect_columns(pred.orig_expr())
        .into_iter()
        .map(|c| c.name().to_string())
        .collect()
}

enum Stats<'a> {
    Pages(Pages),
    Group(&'a RowGroupMetaData),
}

struct Containers<'a> {
    meta: &'a ArrowReaderMetadata,
    rg: usize,
    stats: &'a Stats<'a>,
}

impl Containers<'_> {
    fn converter(&self, column: &Column) -> Option<StatisticsConverter<'_>> {
        StatisticsConverter::try_new(&column.name, self.meta.schema(), self.meta.parquet_schema())
            .ok()
    }

    fn page_index(
        &self,
    ) -> Option<(
        &parquet::file::metadata::ParquetColumnIndex,
        &parquet::file::metadata::ParquetOffsetIndex,
    )> {
        let md = self.meta.metadata();
        Some((md.column_index()?, md.offset_index()?))
    }
}

impl PruningStatistics for Containers<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        let conv = self.converter(column)?;
        match self.stats {
            Stats::Pages(_) => {
                let (ci, oi) = self.page_index()?;
                conv.data_page_mins(ci, oi, [&self.rg]).ok()
            }
            Stats::Group(g) => conv.row_group_mins([*g]).ok(),
        }
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        let conv = self.converter(column)?;
        match self.stats {
            Stats::Pages(_) => {
                let (ci, oi) = self.page_index()?;
                conv.data_page_maxes(ci, oi, [&self.rg]).ok()
            }
            Stats::Group(g) => conv.row_group_maxes([*g]).ok(),
        }
    }

    fn num_containers(&self) -> usize {
        match self.stats {
            Stats::Pages(p) => p.lengths.len(),
            Stats::Group(_) => 1,
        }
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        let conv = self.converter(column)?;
        let counts: UInt64Array = match self.stats {
            Stats::Pages(_) => {
                let (ci, oi) = self.page_index()?;
                conv.data_page_null_counts(ci, oi, [&self.rg]).ok()?
            }
            Stats::Group(g) => conv.row_group_null_counts([*g]).ok()?,
        };
        Some(Arc::new(counts))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        let counts: Vec<u64> = match self.stats {
            Stats::Pages(p) => p.lengths.iter().map(|l| *l as u64).collect(),
            Stats::Group(g) => vec![u64::try_from(g.num_rows()).unwrap_or(0)],
        };
        Some(Arc::new(UInt64Array::from(counts)))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// The rows of a file sorted by `column` (fixed-size binary, e.g. trace id) whose pages may
/// hold one of `values`: a page is kept when some value lies within its min and max.
pub fn select_containing(
    meta: &ArrowReaderMetadata,
    column: &str,
    values: &[&[u8]],
) -> Result<Selected, QueryError> {
    let md = meta.metadata();
    let conv = StatisticsConverter::try_new(column, meta.schema(), meta.parquet_schema())
        .map_err(StoreError::from)?;
    let idx = conv.parquet_column_index();
    let mut out = Builder::default();
    for (rg, rg_meta) in md.row_groups().iter().enumerate() {
        let rg_rows = usize::try_from(rg_meta.num_rows()).unwrap_or(0);
        let paged = match (md.column_index(), md.offset_index(), idx) {
            (Some(ci), Some(oi), Some(i)) => {
                let firsts: Vec<i64> = oi
                    .get(rg)
                    .and_then(|c| c.get(i))
                    .map(|o| o.page_locations().iter().map(|p| p.first_row_index).collect())
                    .unwrap_or_default();
                let mins = conv.data_page_mins(ci, oi, [&rg]).ok();
                let maxes = conv.data_page_maxes(ci, oi, [&rg]).ok();
                match (mins, maxes) {
                    (Some(lo), Some(hi)) if !firsts.is_empty() && lo.len() == firsts.len() => {
                        let mut lengths = Vec::with_capacity(firsts.len());
                        for (p, first) in firsts.iter().enumerate() {
                            let end = firsts.get(p + 1).copied().unwrap_or(rg_meta.num_rows());
                            lengths.push(usize::try_from(end.saturating_sub(*first)).unwrap_or(0));
                        }
                        Some((lengths, lo, hi))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let (lengths, lo, hi) = match paged {
            Some(p) => p,
            None => (
                vec![rg_rows],
                conv.row_group_mins([rg_meta]).map_err(StoreError::from)?,
                conv.row_group_maxes([rg_meta]).map_err(StoreError::from)?,
            ),
        };
        let (Some(lo), Some(hi)) = (lo.as_fixed_size_binary_opt(), hi.as_fixed_size_binary_opt())
        else {
            return Err(QueryError::Internal(format!(
                "{column} statistics are not fixed-size binary"
            )));
        };
        let keep: Vec<bool> = (0..lengths.len())
            .map(|p| {
                if lo.is_null(p) || hi.is_null(p) {
                    return true;
                }
                let (l, h) = (lo.value(p), hi.value(p));
                values.iter().any(|v| *v >= l && *v <= h)
            })
            .collect();
        out.group(rg, lengths, keep);
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{FixedSizeBinaryArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use bytes::Bytes;
    use datafusion::common::DFSchema;
    use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
    use datafusion::prelude::{SessionContext, col, lit};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ArrowReaderOptions;
    use parquet::file::metadata::PageIndexPolicy;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    const PAGE: usize = 8192;

    fn id(i: usize) -> [u8; 16] {
        (i as u128).to_be_bytes()
    }

    /// Three pages of 8192 rows: `v` and `id` ascend with the row number.
    fn file() -> ArrowReaderMetadata {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("id", DataType::FixedSizeBinary(16), false),
        ]));
        let n = 3 * PAGE;
        let v = Int64Array::from_iter_values(0..n as i64);
        let ids = FixedSizeBinaryArray::try_from_iter((0..n).map(id)).unwrap();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(v), Arc::new(ids)]).unwrap();
        let props = WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_row_count_limit(PAGE)
            .set_write_batch_size(1024)
            .build();
        let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        let bytes = Bytes::from(w.into_inner().unwrap());
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        ArrowReaderMetadata::load(&bytes, options).unwrap()
    }

    #[test]
    fn only_pages_whose_statistics_admit_the_predicate_are_selected() {
        let meta = file();
        let schema = meta.schema().clone();
        let pred = col("v").gt_eq(lit(9000i64)).and(col("v").lt_eq(lit(10000i64)));
        let phys = SessionContext::new()
            .create_physical_expr(pred, &DFSchema::try_from(schema.as_ref().clone()).unwrap())
            .unwrap();
        let pruning = PruningPredicateBuilder::new().with_file_schema(schema).build(phys).unwrap();
        let s = select(&meta, Some(&pruning)).unwrap();
        assert_eq!(s.rows, PAGE);
        assert_eq!(
            s.selection,
            RowSelection::from(vec![
                RowSelector::skip(PAGE),
                RowSelector::select(PAGE),
                RowSelector::skip(PAGE),
            ])
        );
        let all = select(&meta, None).unwrap();
        assert_eq!(all.rows, 3 * PAGE);
    }

    #[test]
    fn sorted_ids_select_only_the_pages_that_can_hold_them() {
        let meta = file();
        let (a, b) = (id(10), id(2 * PAGE + 5));
        let s = select_containing(&meta, "id", &[&a, &b]).unwrap();
        assert_eq!(s.rows, 2 * PAGE);
        assert_eq!(
            s.selection,
            RowSelection::from(vec![
                RowSelector::select(PAGE),
                RowSelector::skip(PAGE),
                RowSelector::select(PAGE),
            ])
        );
        let none = id(10 * PAGE);
        assert_eq!(select_containing(&meta, "id", &[&none]).unwrap().rows, 0);
    }

    /// Values 0..300 in three row groups of 100 rows, read back through `select_rows`.
    fn read_rows(ranges: &[std::ops::Range<u64>]) -> (Vec<usize>, Vec<i64>) {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let v = Int64Array::from_iter_values(0..300);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(v)]).unwrap();
        let props = WriterProperties::builder().set_max_row_group_row_count(Some(100)).build();
        let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        let bytes = Bytes::from(w.into_inner().unwrap());
        let meta = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::new()).unwrap();
        let s = select_rows(&meta, ranges);
        let read: Vec<i64> = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, meta)
            .with_row_groups(s.row_groups.clone())
            .with_row_selection(s.selection)
            .build()
            .unwrap()
            .flat_map(|b| {
                b.unwrap().column(0).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec()
            })
            .collect();
        assert_eq!(read.len(), s.rows);
        (s.row_groups, read)
    }

    #[test]
    fn row_ranges_select_exactly_their_rows_across_row_groups() {
        let (groups, read) = read_rows(&[5..10, 95..105, 250..300]);
        assert_eq!(groups, vec![0, 1, 2]);
        let want: Vec<i64> = (5..10).chain(95..105).chain(250..300).collect();
        assert_eq!(read, want);
        // A row group holding none of the rows is not read at all.
        let (groups, read) = read_rows(&[0..1, 299..300]);
        assert_eq!((groups, read), (vec![0, 2], vec![0, 299]));
        assert_eq!(read_rows(&[]).1, Vec::<i64>::new());
    }
}
