//! Phase 1 of search over a block's `spans.parquet`, without a DataFusion plan, for filters the
//! search index cannot answer (attributes, events, ids…). The predicate runs as a Parquet row
//! filter over only the leaves it reads — of an attribute list, the keys and the value slots
//! it looks up, not the whole list — so the start and trace id of a span are decoded only when
//! it matches, and an attribute equality reads two of an attribute's six leaves. Blocks go
//! through the same newest-first driver with its moving floor as the index
//! ([`super::search_index::add_matches`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema};
use arrow::error::ArrowError;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::prelude::{Expr, SessionContext, col, lit};
use futures::TryStreamExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions};

use super::compile::physical;
use super::footers::BlockFiles;
use super::search::Hit;
use super::search_index::{Latest, TRIM_SLACK, index_of};
use super::udf::Slot;
use super::{QueryError, page_prune};
use crate::spanrows::{attr_field, col as c, dict_utf8};
use crate::store::block::{SPANS_FILE, trace_key};
use crate::store::{Block, StoreError};

/// One block's matching traces, as [`super::search_index`]'s reader of the index gives them;
/// `None` when the file lacks a column the predicate reads, or has it with another type (an
/// older layout, or a dedicated column this block does not have): a plan adapts those.
pub(super) async fn block_matches(
    files: BlockFiles,
    block: Arc<Block>,
    ctx: SessionContext,
    pred: Expr,
    limit: usize,
    ranked: bool,
    floor: Option<i64>,
) -> Result<Option<Vec<([u8; 16], Hit)>>, QueryError> {
    let pred = match floor {
        Some(f) => pred.and(col(c::START).gt_eq(lit(f))),
        None => pred,
    };
    let path = block.file(SPANS_FILE);
    let size = block.meta.spans_bytes;
    let meta = files.meta(&path, size).await?;
    let schema = meta.schema().clone();
    let Some(leaves) = predicate_leaves(&meta, &pred) else { return Ok(None) };
    let phys_full = match physical(&ctx, pred.clone(), &schema) {
        Ok(p) => p,
        // A column of another type than the query's schema expects: left to a plan.
        Err(_) => return Ok(None),
    };
    let pruning = PruningPredicateBuilder::new().with_file_schema(schema.clone()).build(phys_full);
    let selected = page_prune::select(&meta, pruning.as_deref())?;
    if selected.rows == 0 {
        return Ok(Some(Vec::new()));
    }
    // Attribute string values are read as dictionaries: a page's values are then decoded
    // once, not copied out for every attribute of every span.
    let meta = ArrowReaderMetadata::try_new(
        meta.metadata().clone(),
        ArrowReaderOptions::new().with_schema(Arc::new(dictionary_strings(&schema))),
    )
    .map_err(StoreError::from)?;
    let parquet_schema = meta.parquet_schema();
    let filter_mask = ProjectionMask::leaves(parquet_schema, leaves);
    // Compiled for the schema of the first batch the filter sees (its projected leaves).
    let mut compiled: Option<Arc<dyn PhysicalExpr>> = None;
    let filter = ArrowPredicateFn::new(filter_mask, move |b| {
        let phys = match &compiled {
            Some(p) => p.clone(),
            None => {
                let p = physical(&ctx, pred.clone(), &b.schema())
                    .map_err(|e| ArrowError::ComputeError(e.to_string()))?;
                compiled = Some(p.clone());
                p
            }
        };
        let matched = phys.evaluate(&b)?.into_array(b.num_rows())?;
        match matched.as_boolean_opt() {
            Some(m) => Ok(m.clone()),
            None => Err(ArrowError::ComputeError("search predicate is not boolean".into())),
        }
    });
    let (si, ti) = (index_of(&schema, c::START, &block)?, index_of(&schema, c::TRACE_ID, &block)?);
    let output = ProjectionMask::roots(parquet_schema, [si, ti]);
    let mut stream = files.filtered((path, size), meta, output, selected, Box::new(filter))?;
    let read = stream.schema().clone();
    let (si, ti) = (index_of(&read, c::START, &block)?, index_of(&read, c::TRACE_ID, &block)?);
    let mut latest: Latest<[u8; 16]> = Latest::new(limit, ranked, floor, TRIM_SLACK);
    while let Some(b) = stream.try_next().await.map_err(StoreError::from)? {
        let (Some(start), Some(ids)) =
            (b.column(si).as_primitive_opt::<Int64Type>(), b.column(ti).as_fixed_size_binary_opt())
        else {
            return Err(
                StoreError::Corrupt(format!("block {}: span column types", block.meta.id)).into()
            );
        };
        for i in 0..b.num_rows() {
            latest.add(trace_key(ids, i), start.value(i));
        }
        latest.trim();
    }
    Ok(Some(latest.finish()))
}

/// `schema` with the string value slot of every attribute list read as a dictionary.
fn dictionary_strings(schema: &Schema) -> Schema {
    let fields: Vec<Arc<Field>> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::List(item) => match item.data_type() {
                DataType::Struct(entries) if entries.find(attr_field::STR).is_some() => {
                    let entries: Fields = entries
                        .iter()
                        .map(|e| match e.name() == attr_field::STR {
                            true => Arc::new(e.as_ref().clone().with_data_type(dict_utf8())),
                            false => e.clone(),
                        })
                        .collect();
                    let item = item.as_ref().clone().with_data_type(DataType::Struct(entries));
                    Arc::new(f.as_ref().clone().with_data_type(DataType::List(Arc::new(item))))
                }
                _ => f.clone(),
            },
            _ => f.clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// The Parquet leaves `pred` reads: every leaf of a column it names, except that of an
/// attribute list only looked up by key (the attribute functions), only the key and the
/// looked-up value slots. `None` if the file lacks a column.
fn predicate_leaves(meta: &ArrowReaderMetadata, pred: &Expr) -> Option<Vec<usize>> {
    let mut whole: BTreeSet<String> = BTreeSet::new();
    let mut slots: BTreeSet<(String, &'static str)> = BTreeSet::new();
    reads(pred, &mut whole, &mut slots);
    let schema: &Schema = meta.schema();
    let names = whole.iter().chain(slots.iter().map(|(n, _)| n));
    if names.clone().any(|n| schema.field_with_name(n).is_err()) {
        return None;
    }
    let mut out = Vec::new();
    let mut looked_up: BTreeSet<&str> = BTreeSet::new();
    for (i, leaf) in meta.parquet_schema().columns().iter().enumerate() {
        let parts = leaf.path().parts();
        let (Some(root), Some(last)) = (parts.first(), parts.last()) else { continue };
        if whole.contains(root) {
            out.push(i);
            continue;
        }
        let wanted: Vec<&'static str> =
            slots.iter().filter(|(n, _)| n == root).map(|(_, f)| *f).collect();
        if wanted.is_empty() {
            continue;
        }
        // A list of attribute structs has a key leaf and one leaf per value slot; anything
        // else (the dictionary-encoded resources) is read whole.
        let is_list =
            matches!(schema.field_with_name(root).map(|f| f.data_type()), Ok(DataType::List(_)));
        if !is_list
            || parts.len() == 1
            || *last == attr_field::KEY
            || wanted.contains(&last.as_str())
        {
            looked_up.insert(root.as_str());
            out.push(i);
        }
    }
    // Every looked-up list must have given its key and slots.
    if slots.iter().any(|(n, _)| !looked_up.contains(n.as_str())) {
        return None;
    }
    Some(out)
}

/// Columns `e` reads whole, and (column, value slot) pairs it only looks attributes up in.
fn reads(e: &Expr, whole: &mut BTreeSet<String>, slots: &mut BTreeSet<(String, &'static str)>) {
    // The walk's closure never fails.
    let _ = e.apply(|n| {
        if let Expr::ScalarFunction(f) = n
            && let Some(slot) = Slot::of_fn(f.name())
            && let Some(Expr::Column(list)) = f.args.first()
        {
            slots.insert((list.name.clone(), slot.value_field()));
            for a in f.args.iter().skip(1) {
                reads(a, whole, slots);
            }
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Expr::Column(cl) = n {
            whole.insert(cl.name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
}
