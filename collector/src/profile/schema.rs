//! The samples table: one row per (sample, profile type), in the head as Arrow batches and in
//! blocks as `samples.parquet`.
//!
//! | column | type | why |
//! |---|---|---|
//! | tenant, profile_type, service_name, span_name | Dictionary(Int32, Utf8) | few distinct values |
//! | time | Int64, unix ns | the profile's time |
//! | span_id / trace_id | FixedSizeBinary(8/16), null when absent | the span labels profilers attach, as binary like spans store them |
//! | labels | List<Struct{key, value}> | every other label, sorted by key |
//! | stack_id | UInt64 | into the stack table (`stack.rs`) |
//! | value | Int64 | in the profile type's unit |
//!
//! A `span_id` or `trace_id` label that is not valid hex stays in `labels` under its name, so
//! nothing a client sent is lost.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder,
    Int64Array, ListArray, RecordBatch, StringArray, StringDictionaryBuilder, StructArray,
    UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema, SchemaRef};

use super::ProfileError;

pub mod col {
    pub const TENANT: &str = "tenant";
    pub const TIME: &str = "time";
    pub const PROFILE_TYPE: &str = "profile_type";
    pub const SERVICE: &str = "service_name";
    pub const SPAN_ID: &str = "span_id";
    pub const SPAN_NAME: &str = "span_name";
    pub const TRACE_ID: &str = "trace_id";
    pub const LABELS: &str = "labels";
    pub const STACK_ID: &str = "stack_id";
    pub const VALUE: &str = "value";
}

fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Fields of an entry of the `labels` column.
pub mod label_field {
    pub const KEY: &str = "key";
    pub const VALUE: &str = "value";
}

fn label_fields() -> Fields {
    Fields::from(vec![
        Field::new(label_field::KEY, DataType::Utf8, false),
        Field::new(label_field::VALUE, DataType::Utf8, false),
    ])
}

fn labels_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Struct(label_fields()), false))
}

pub fn samples_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::TENANT, dict(), false),
        Field::new(col::TIME, DataType::Int64, false),
        Field::new(col::PROFILE_TYPE, dict(), false),
        Field::new(col::SERVICE, dict(), false),
        Field::new(col::SPAN_ID, DataType::FixedSizeBinary(8), true),
        Field::new(col::SPAN_NAME, dict(), true),
        Field::new(col::TRACE_ID, DataType::FixedSizeBinary(16), true),
        Field::new(col::LABELS, DataType::List(labels_item()), false),
        Field::new(col::STACK_ID, DataType::UInt64, false),
        Field::new(col::VALUE, DataType::Int64, false),
    ]))
}

/// One row to append.
pub struct Row<'a> {
    pub time: i64,
    pub profile_type: &'a str,
    pub service_name: &'a str,
    pub span_id: Option<[u8; 8]>,
    pub span_name: Option<&'a str>,
    pub trace_id: Option<[u8; 16]>,
    /// Sorted by key.
    pub labels: &'a [(&'a str, &'a str)],
    pub stack_id: u64,
    pub value: i64,
}

/// Accumulates rows of one tenant.
pub struct RowsBuilder {
    tenant: String,
    time: Vec<i64>,
    profile_type: StringDictionaryBuilder<Int32Type>,
    service: StringDictionaryBuilder<Int32Type>,
    span_id: FixedSizeBinaryBuilder,
    span_name: StringDictionaryBuilder<Int32Type>,
    trace_id: FixedSizeBinaryBuilder,
    label_offsets: Vec<i32>,
    label_keys: Vec<String>,
    label_values: Vec<String>,
    stack_id: Vec<u64>,
    value: Vec<i64>,
    bytes: usize,
}

impl RowsBuilder {
    pub fn new(tenant: &str) -> Self {
        RowsBuilder {
            tenant: tenant.to_string(),
            time: Vec::new(),
            profile_type: StringDictionaryBuilder::new(),
            service: StringDictionaryBuilder::new(),
            span_id: FixedSizeBinaryBuilder::new(8),
            span_name: StringDictionaryBuilder::new(),
            trace_id: FixedSizeBinaryBuilder::new(16),
            label_offsets: vec![0],
            label_keys: Vec::new(),
            label_values: Vec::new(),
            stack_id: Vec::new(),
            value: Vec::new(),
            bytes: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.time.len()
    }

    /// Rough memory held, for head accounting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, r: &Row<'_>) -> Result<(), ProfileError> {
        self.time.push(r.time);
        self.profile_type.append_value(r.profile_type);
        self.service.append_value(r.service_name);
        match r.span_id {
            Some(id) => self.span_id.append_value(id)?,
            None => self.span_id.append_null(),
        }
        self.span_name.append_option(r.span_name);
        match r.trace_id {
            Some(id) => self.trace_id.append_value(id)?,
            None => self.trace_id.append_null(),
        }
        for (k, v) in r.labels {
            self.bytes += k.len() + v.len();
            self.label_keys.push(k.to_string());
            self.label_values.push(v.to_string());
        }
        let n = i32::try_from(self.label_keys.len())
            .map_err(|_| ProfileError::Internal("too many labels in one head batch".into()))?;
        self.label_offsets.push(n);
        self.stack_id.push(r.stack_id);
        self.value.push(r.value);
        self.bytes += 64;
        Ok(())
    }

    /// Takes the accumulated rows as a batch and starts over.
    pub fn finish(&mut self) -> Result<RecordBatch, ProfileError> {
        let n = self.time.len();
        let tenant = DictionaryArray::<Int32Type>::try_new(
            arrow::array::Int32Array::from(vec![0; n]),
            Arc::new(StringArray::from(vec![self.tenant.as_str()])),
        )?;
        let labels = StructArray::try_new(
            label_fields(),
            vec![
                Arc::new(StringArray::from(std::mem::take(&mut self.label_keys))) as ArrayRef,
                Arc::new(StringArray::from(std::mem::take(&mut self.label_values))),
            ],
            None,
        )?;
        let offsets = std::mem::replace(&mut self.label_offsets, vec![0]);
        let labels = ListArray::try_new(
            labels_item(),
            OffsetBuffer::new(offsets.into()),
            Arc::new(labels),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(tenant),
            Arc::new(Int64Array::from(std::mem::take(&mut self.time))),
            Arc::new(self.profile_type.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.span_name.finish()),
            Arc::new(self.trace_id.finish()),
            Arc::new(labels),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.stack_id))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.value))),
        ];
        self.bytes = 0;
        Ok(RecordBatch::try_new(samples_schema(), columns)?)
    }
}

/// Typed access to the columns of one samples batch.
pub struct BatchView<'a> {
    pub time: &'a Int64Array,
    profile_type: (&'a DictionaryArray<Int32Type>, &'a StringArray),
    service: (&'a DictionaryArray<Int32Type>, &'a StringArray),
    span_id: &'a FixedSizeBinaryArray,
    span_name: (&'a DictionaryArray<Int32Type>, &'a StringArray),
    trace_id: &'a FixedSizeBinaryArray,
    labels: &'a ListArray,
    label_keys: &'a StringArray,
    label_values: &'a StringArray,
    pub stack_id: &'a UInt64Array,
    pub value: &'a Int64Array,
}

fn bad_schema(what: &str) -> ProfileError {
    ProfileError::Internal(format!("samples batch: column {what} missing or of the wrong type"))
}

fn dict_col<'a>(
    b: &'a RecordBatch,
    name: &str,
) -> Result<(&'a DictionaryArray<Int32Type>, &'a StringArray), ProfileError> {
    let d = b
        .column_by_name(name)
        .and_then(|c| c.as_dictionary_opt::<Int32Type>())
        .ok_or_else(|| bad_schema(name))?;
    let v = d.values().as_string_opt::<i32>().ok_or_else(|| bad_schema(name))?;
    Ok((d, v))
}

fn dict_value<'a>(
    d: &(&'a DictionaryArray<Int32Type>, &'a StringArray),
    row: usize,
) -> Option<&'a str> {
    if d.0.is_null(row) {
        return None;
    }
    let k = usize::try_from(d.0.keys().value(row)).ok()?;
    (k < d.1.len()).then(|| d.1.value(k))
}

impl<'a> BatchView<'a> {
    pub fn new(b: &'a RecordBatch) -> Result<BatchView<'a>, ProfileError> {
        let fsb = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_fixed_size_binary_opt())
                .ok_or_else(|| bad_schema(name))
        };
        let prim = |name: &str| b.column_by_name(name).ok_or_else(|| bad_schema(name));
        let labels =
            prim(col::LABELS)?.as_list_opt::<i32>().ok_or_else(|| bad_schema(col::LABELS))?;
        let entries = labels.values().as_struct_opt().ok_or_else(|| bad_schema(col::LABELS))?;
        let field = |name: &str| {
            entries
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad_schema(col::LABELS))
        };
        Ok(BatchView {
            time: prim(col::TIME)?.as_primitive_opt().ok_or_else(|| bad_schema(col::TIME))?,
            profile_type: dict_col(b, col::PROFILE_TYPE)?,
            service: dict_col(b, col::SERVICE)?,
            span_id: fsb(col::SPAN_ID)?,
            span_name: dict_col(b, col::SPAN_NAME)?,
            trace_id: fsb(col::TRACE_ID)?,
            labels,
            label_keys: field(label_field::KEY)?,
            label_values: field(label_field::VALUE)?,
            stack_id: prim(col::STACK_ID)?
                .as_primitive_opt()
                .ok_or_else(|| bad_schema(col::STACK_ID))?,
            value: prim(col::VALUE)?.as_primitive_opt().ok_or_else(|| bad_schema(col::VALUE))?,
        })
    }

    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    pub fn profile_type(&self, row: usize) -> &'a str {
        dict_value(&self.profile_type, row).unwrap_or("")
    }

    pub fn service_name(&self, row: usize) -> &'a str {
        dict_value(&self.service, row).unwrap_or("")
    }

    pub fn span_id(&self, row: usize) -> Option<&'a [u8]> {
        self.span_id.is_valid(row).then(|| self.span_id.value(row))
    }

    /// Generic labels of a row as (key, value) pairs.
    pub fn labels(&self, row: usize) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let offsets = self.labels.value_offsets();
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        let (keys, values) = (self.label_keys, self.label_values);
        (start..end).map(move |i| (keys.value(i), values.value(i)))
    }

    /// The value of any label of a row, including the ones with their own column and those
    /// derived from the profile type (`__name__`, `__type__`, `__unit__`, `__period_type__`,
    /// `__period_unit__`, `__profile_type__`).
    pub fn label(&self, row: usize, name: &str) -> Option<Cow<'a, str>> {
        match name {
            col::SERVICE => Some(Cow::Borrowed(self.service_name(row))),
            col::SPAN_NAME => dict_value(&self.span_name, row).map(Cow::Borrowed),
            col::SPAN_ID if self.span_id.is_valid(row) => {
                Some(Cow::Owned(hex::encode(self.span_id.value(row))))
            }
            col::TRACE_ID if self.trace_id.is_valid(row) => {
                Some(Cow::Owned(hex::encode(self.trace_id.value(row))))
            }
            "__profile_type__" => Some(Cow::Borrowed(self.profile_type(row))),
            _ => match derived_index(name) {
                Some(i) => self.profile_type(row).split(':').nth(i).map(Cow::Borrowed),
                // Includes span_id / trace_id values that were not hex.
                None => self.generic(row, name).map(Cow::Borrowed),
            },
        }
    }

    fn generic(&self, row: usize, name: &str) -> Option<&'a str> {
        self.labels(row).find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Names of the labels a row has (derived ones excluded).
    pub fn label_names(&self, row: usize, out: &mut dyn FnMut(&str)) {
        out(col::SERVICE);
        if self.span_name.0.is_valid(row) {
            out(col::SPAN_NAME);
        }
        if self.span_id.is_valid(row) {
            out(col::SPAN_ID);
        }
        if self.trace_id.is_valid(row) {
            out(col::TRACE_ID);
        }
        for (k, _) in self.labels(row) {
            out(k);
        }
    }
}

/// Labels every row has, derived from its profile type.
pub const DERIVED_LABELS: [&str; 6] =
    ["__name__", "__type__", "__unit__", "__period_type__", "__period_unit__", "__profile_type__"];

/// Position in the profile type id of a derived label.
fn derived_index(name: &str) -> Option<usize> {
    DERIVED_LABELS[..5].iter().position(|n| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_batch_with_all_label_kinds() {
        let mut b = RowsBuilder::new("t");
        b.push(&Row {
            time: 5,
            profile_type: "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
            service_name: "shop",
            span_id: Some([1, 2, 3, 4, 5, 6, 7, 8]),
            span_name: Some("GET /"),
            trace_id: None,
            labels: &[("env", "prod"), ("thread", "main")],
            stack_id: 9,
            value: 10,
        })
        .unwrap();
        b.push(&Row {
            time: 6,
            profile_type: "memory:alloc_space:bytes::",
            service_name: "db",
            span_id: None,
            span_name: None,
            trace_id: Some([0xab; 16]),
            labels: &[],
            stack_id: 1,
            value: 2,
        })
        .unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(b.rows(), 0);
        let v = BatchView::new(&batch).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v.label(0, "span_id").as_deref(), Some("0102030405060708"));
        assert_eq!(v.label(0, "thread").as_deref(), Some("main"));
        assert_eq!(v.label(0, "__name__").as_deref(), Some("process_cpu"));
        assert_eq!(v.label(1, "__unit__").as_deref(), Some("bytes"));
        assert_eq!(v.label(1, "span_name"), None);
        assert_eq!(v.label(1, "trace_id").as_deref(), Some("abababababababababababababababab"));
        let mut names = Vec::new();
        v.label_names(0, &mut |n| names.push(n.to_string()));
        assert_eq!(names, vec!["service_name", "span_name", "span_id", "env", "thread"]);
    }
}
