//! Attribute keys present in span rows, for tag autocomplete.

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int32Type;

use super::decode::decode_resource;
use super::schema::{DedicatedColumns, SERVICE_NAME_KEY, attr_field, col};

/// Attribute keys seen, by scope.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TagKeys {
    pub resource: BTreeSet<String>,
    pub span: BTreeSet<String>,
}

impl TagKeys {
    pub fn extend(&mut self, other: &TagKeys) {
        self.resource.extend(other.resource.iter().cloned());
        self.span.extend(other.span.iter().cloned());
    }
}

/// Attribute keys present in span batches, read from the key dictionaries (already distinct)
/// and the dedicated columns, so ingest does no per-span bookkeeping for autocomplete.
pub fn tag_keys_of(batches: &[RecordBatch], dedicated: &DedicatedColumns) -> TagKeys {
    let mut tags = TagKeys::default();
    let keys_in = |b: &RecordBatch, column: &str, out: &mut BTreeSet<String>| {
        let Some(list) = b.column_by_name(column).and_then(|c| c.as_list_opt::<i32>()) else {
            return;
        };
        let Some(keys) = list.values().as_struct().column_by_name(attr_field::KEY) else { return };
        if let Some(dict) = keys.as_dictionary_opt::<Int32Type>() {
            let values = dict.values().as_string::<i32>();
            // A dictionary may keep values no row uses only after slicing; those are still keys
            // of this head, so listing them is harmless.
            for i in 0..values.len() {
                if !out.contains(values.value(i)) {
                    out.insert(values.value(i).to_string());
                }
            }
        }
    };
    for b in batches {
        if let Some(dict) =
            b.column_by_name(col::RESOURCE_ATTRS).and_then(|c| c.as_dictionary_opt::<Int32Type>())
        {
            let blobs = dict.values().as_binary::<i32>();
            for i in 0..blobs.len() {
                for kv in decode_resource(blobs.value(i)) {
                    if !tags.resource.contains(&kv.key) {
                        tags.resource.insert(kv.key);
                    }
                }
            }
        }
        keys_in(b, col::SPAN_ATTRS, &mut tags.span);
        let present = |name: &str| b.column_by_name(name).is_some_and(|c| c.null_count() < c.len());
        if present(col::SERVICE) {
            tags.resource.insert(SERVICE_NAME_KEY.to_string());
        }
        for k in &dedicated.span {
            if present(&DedicatedColumns::span_column(k)) {
                tags.span.insert(k.clone());
            }
        }
        for k in &dedicated.resource {
            if present(&DedicatedColumns::resource_column(k)) {
                tags.resource.insert(k.clone());
            }
        }
    }
    tags
}
