//! Scalar functions that read one attribute out of the generic attribute list column:
//! `attr_str(attrs, 'key')`, `attr_int`, `attr_float`, `attr_bool`. Each returns the value of
//! the first entry with that key whose value has the function's type, else NULL.
//!
//! The first argument is either an attribute list column (span, event, link attributes) or
//! the dictionary-encoded resource column; for the latter the lookup runs once per distinct
//! resource and the result is mapped through the dictionary keys.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, ListArray,
    StringBuilder, StructArray,
};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::spanrows::{attr_field, decode_resource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Str,
    Int,
    Float,
    Bool,
}

impl Slot {
    fn fn_name(self) -> &'static str {
        match self {
            Slot::Str => "attr_str",
            Slot::Int => "attr_int",
            Slot::Float => "attr_float",
            Slot::Bool => "attr_bool",
        }
    }
    fn field(self) -> &'static str {
        match self {
            Slot::Str => attr_field::STR,
            Slot::Int => attr_field::INT,
            Slot::Float => attr_field::DBL,
            Slot::Bool => attr_field::BOOL,
        }
    }
    fn data_type(self) -> DataType {
        match self {
            Slot::Str => DataType::Utf8,
            Slot::Int => DataType::Int64,
            Slot::Float => DataType::Float64,
            Slot::Bool => DataType::Boolean,
        }
    }
}

impl Slot {
    /// The slot whose lookup function is named `name`.
    pub fn of_fn(name: &str) -> Option<Slot> {
        [Slot::Str, Slot::Int, Slot::Float, Slot::Bool].into_iter().find(|s| s.fn_name() == name)
    }

    /// The attribute-struct field the slot's values are in.
    pub fn value_field(self) -> &'static str {
        self.field()
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AttrLookup {
    slot: Slot,
    signature: Signature,
}

pub fn attr_udf(slot: Slot) -> ScalarUDF {
    ScalarUDF::from(AttrLookup { slot, signature: Signature::any(2, Volatility::Immutable) })
}

pub fn all_udfs() -> Vec<ScalarUDF> {
    [Slot::Str, Slot::Int, Slot::Float, Slot::Bool].into_iter().map(attr_udf).collect()
}

fn exec_err(msg: String) -> DataFusionError {
    DataFusionError::Execution(msg)
}

/// Index of each list entry whose key equals `key` (first match per row), resolved through the
/// dictionary once per batch instead of comparing strings per entry.
fn matching_rows(list: &ListArray, key: &str) -> Result<Vec<Option<usize>>> {
    let entries: &StructArray = list.values().as_struct();
    let keys = entries
        .column_by_name(attr_field::KEY)
        .ok_or_else(|| exec_err("attribute list without key".into()))?;
    let mut out = vec![None; list.len()];
    let is_key: Box<dyn Fn(usize) -> bool> = match keys.data_type() {
        DataType::Dictionary(_, _) => {
            let dict = keys.as_dictionary::<Int32Type>();
            let values = dict.values().as_string::<i32>();
            let wanted: Vec<bool> = (0..values.len()).map(|i| values.value(i) == key).collect();
            if !wanted.iter().any(|w| *w) {
                return Ok(out);
            }
            let k = dict.keys().clone();
            Box::new(move |i| {
                !k.is_null(i) && wanted.get(k.value(i) as usize).copied().unwrap_or(false)
            })
        }
        DataType::Utf8 => {
            let s = keys.as_string::<i32>().clone();
            let key = key.to_string();
            Box::new(move |i| s.value(i) == key)
        }
        other => return Err(exec_err(format!("unexpected attribute key type {other}"))),
    };
    let offsets = list.value_offsets();
    for (row, o) in out.iter_mut().enumerate() {
        if list.is_null(row) {
            continue;
        }
        let (lo, hi) = (offsets[row] as usize, offsets[row + 1] as usize);
        *o = (lo..hi).find(|i| is_key(*i));
    }
    Ok(out)
}

impl AttrLookup {
    /// The attribute's value for each encoded resource.
    fn lookup_resources(&self, blobs: &ArrayRef, key: &str) -> Result<ArrayRef> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let blobs = blobs
            .as_binary_opt::<i32>()
            .ok_or_else(|| exec_err(format!("{}: resource values must be binary", self.name())))?;
        let values: Vec<Option<Value>> = (0..blobs.len())
            .map(|i| {
                decode_resource(blobs.value(i))
                    .into_iter()
                    .filter(|kv| kv.key == key)
                    .find_map(|kv| kv.value.and_then(|v| v.value))
            })
            .collect();
        Ok(match self.slot {
            Slot::Str => Arc::new(
                values
                    .iter()
                    .map(|v| match v {
                        Some(Value::StringValue(s)) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect::<arrow::array::StringArray>(),
            ),
            Slot::Int => Arc::new(
                values
                    .iter()
                    .map(|v| match v {
                        Some(Value::IntValue(i)) => Some(*i),
                        _ => None,
                    })
                    .collect::<arrow::array::Int64Array>(),
            ),
            Slot::Float => Arc::new(
                values
                    .iter()
                    .map(|v| match v {
                        Some(Value::DoubleValue(d)) => Some(*d),
                        _ => None,
                    })
                    .collect::<arrow::array::Float64Array>(),
            ),
            Slot::Bool => Arc::new(
                values
                    .iter()
                    .map(|v| match v {
                        Some(Value::BoolValue(b)) => Some(*b),
                        _ => None,
                    })
                    .collect::<arrow::array::BooleanArray>(),
            ),
        })
    }
}

impl ScalarUDFImpl for AttrLookup {
    fn name(&self) -> &str {
        self.slot.fn_name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.slot.data_type())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [list, key] = args.args.as_slice() else {
            return Err(exec_err(format!("{} takes 2 arguments", self.name())));
        };
        let key = match key {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(k)))
            | ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(k)))
            | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(k))) => k.clone(),
            _ => return Err(exec_err(format!("{}: key must be a string literal", self.name()))),
        };
        let list = list.to_array(args.number_rows)?;
        if let Some(dict) = list.as_dictionary_opt::<Int32Type>() {
            let per_resource = self.lookup_resources(dict.values(), &key)?;
            return Ok(ColumnarValue::Array(arrow::compute::take(
                &per_resource,
                dict.keys(),
                None,
            )?));
        }
        let list = list
            .as_list_opt::<i32>()
            .ok_or_else(|| exec_err(format!("{}: first argument must be a list", self.name())))?;
        let rows = matching_rows(list, &key)?;
        let entries: &StructArray = list.values().as_struct();
        let values = entries
            .column_by_name(self.slot.field())
            .ok_or_else(|| exec_err("attribute list without value slot".into()))?;
        let out: ArrayRef = match self.slot {
            Slot::Str => {
                let mut b = StringBuilder::with_capacity(rows.len(), 0);
                // Search reads string values as dictionaries (`span_scan.rs`).
                if let Some(d) = values.as_dictionary_opt::<Int32Type>() {
                    let (k, v) = (d.keys(), d.values().as_string::<i32>());
                    for r in &rows {
                        let at = r.filter(|i| k.is_valid(*i)).and_then(|i| {
                            usize::try_from(k.value(i)).ok().filter(|x| *x < v.len())
                        });
                        b.append_option(at.map(|x| v.value(x)));
                    }
                } else {
                    let v = values.as_string::<i32>();
                    for r in &rows {
                        b.append_option(r.filter(|i| v.is_valid(*i)).map(|i| v.value(i)));
                    }
                }
                Arc::new(b.finish())
            }
            Slot::Int => {
                let v = values.as_primitive::<Int64Type>();
                let mut b = Int64Builder::with_capacity(rows.len());
                for r in &rows {
                    b.append_option(r.filter(|i| v.is_valid(*i)).map(|i| v.value(i)));
                }
                Arc::new(b.finish())
            }
            Slot::Float => {
                let v = values.as_primitive::<Float64Type>();
                let mut b = Float64Builder::with_capacity(rows.len());
                for r in &rows {
                    b.append_option(r.filter(|i| v.is_valid(*i)).map(|i| v.value(i)));
                }
                Arc::new(b.finish())
            }
            Slot::Bool => {
                let v = values.as_boolean();
                let mut b = BooleanBuilder::with_capacity(rows.len());
                for r in &rows {
                    b.append_option(r.filter(|i| v.is_valid(*i)).map(|i| v.value(i)));
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}
