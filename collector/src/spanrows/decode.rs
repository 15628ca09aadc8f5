//! Arrow → OTLP: span rows back into `TracesData`, resource → scope → span nesting rebuilt.
//!
//! Every column and nested field is looked up by name once per batch, so the decoder does not
//! depend on column order (blocks written under other dedicated columns are aligned first).

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Float64Type, Int8Type, Int32Type, Int64Type, UInt32Type};
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, TracesData, span::Event, span::Link,
};
use prost::Message;

use super::schema::{
    DedicatedColumns, SERVICE_NAME_KEY, attr_field, col as c, event_field, link_field,
};

/// Attributes of an encoded resource (see [`super::schema::resource_type`]); undecodable bytes
/// give none.
pub fn decode_resource(blob: &[u8]) -> Vec<KeyValue> {
    Resource::decode(blob).map(|r| r.attributes).unwrap_or_default()
}

fn missing(name: &str) -> ArrowError {
    ArrowError::SchemaError(format!("missing column {name}"))
}

/// Column `name` of `b`; an error if the batch lacks it.
pub fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    b.column_by_name(name).ok_or_else(|| missing(name))
}

fn field<'a>(s: &'a StructArray, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    s.column_by_name(name).ok_or_else(|| missing(name))
}

fn utf8(b: &RecordBatch, name: &str) -> Result<ArrayRef, ArrowError> {
    arrow::compute::cast(column(b, name)?, &DataType::Utf8)
}

fn opt_str(a: &ArrayRef, i: usize) -> Option<String> {
    let s = a.as_string::<i32>();
    s.is_valid(i).then(|| s.value(i).to_string())
}

/// Decodes entry `i` of an attribute struct array into an OTLP `KeyValue`.
fn attr_at(entries: &StructArray, keys: &ArrayRef, i: usize) -> KeyValue {
    let slot = |name: &str| entries.column_by_name(name).filter(|a| a.is_valid(i));
    let value = if let Some(s) = slot(attr_field::STR) {
        Some(Value::StringValue(s.as_string::<i32>().value(i).to_string()))
    } else if let Some(v) = slot(attr_field::INT) {
        Some(Value::IntValue(v.as_primitive::<Int64Type>().value(i)))
    } else if let Some(v) = slot(attr_field::DBL) {
        Some(Value::DoubleValue(v.as_primitive::<Float64Type>().value(i)))
    } else if let Some(v) = slot(attr_field::BOOL) {
        Some(Value::BoolValue(v.as_boolean().value(i)))
    } else if let Some(v) = slot(attr_field::RAW) {
        AnyValue::decode(v.as_binary::<i32>().value(i)).ok().and_then(|a| a.value)
    } else {
        None
    };
    let key = opt_str(keys, i).unwrap_or_default();
    KeyValue { key, value: Some(AnyValue { value }), ..Default::default() }
}

/// Attribute lists decoded per row.
struct AttrReader<'a> {
    list: &'a ListArray,
    keys: ArrayRef,
}

impl<'a> AttrReader<'a> {
    fn new(list: &'a ListArray) -> Result<Self, ArrowError> {
        let keys = field(list.values().as_struct(), attr_field::KEY)?;
        let keys = arrow::compute::cast(keys, &DataType::Utf8)?;
        Ok(AttrReader { list, keys })
    }

    fn row(&self, row: usize) -> Vec<KeyValue> {
        let entries = self.list.values().as_struct();
        let o = self.list.value_offsets();
        (o[row] as usize..o[row + 1] as usize).map(|i| attr_at(entries, &self.keys, i)).collect()
    }
}

fn str_kv(key: &str, v: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(Value::StringValue(v)) }),
        ..Default::default()
    }
}

/// Dedicated columns of `b` present in it, as (attribute key, UTF-8 values).
fn dedicated_of(
    b: &RecordBatch,
    keys: &[String],
    column_name: fn(&str) -> String,
) -> Vec<(String, ArrayRef)> {
    keys.iter()
        .filter_map(|k| {
            let a = b.column_by_name(&column_name(k))?;
            Some((k.clone(), arrow::compute::cast(a, &DataType::Utf8).ok()?))
        })
        .collect()
}

/// The `events` column of one batch.
struct EventsReader<'a> {
    list: &'a ListArray,
    time: &'a arrow::array::Int64Array,
    name: ArrayRef,
    attrs: AttrReader<'a>,
    dropped: &'a arrow::array::UInt32Array,
}

impl<'a> EventsReader<'a> {
    fn new(b: &'a RecordBatch) -> Result<Self, ArrowError> {
        let list = column(b, c::EVENTS)?.as_list::<i32>();
        let ev = list.values().as_struct();
        Ok(EventsReader {
            list,
            time: field(ev, event_field::TIME)?.as_primitive::<Int64Type>(),
            name: field(ev, event_field::NAME)?.clone(),
            attrs: AttrReader::new(field(ev, event_field::ATTRS)?.as_list::<i32>())?,
            dropped: field(ev, event_field::DROPPED_ATTRS)?.as_primitive::<UInt32Type>(),
        })
    }

    fn row(&self, row: usize) -> Vec<Event> {
        let o = self.list.value_offsets();
        (o[row] as usize..o[row + 1] as usize)
            .map(|e| Event {
                time_unix_nano: self.time.value(e) as u64,
                name: opt_str(&self.name, e).unwrap_or_default(),
                attributes: self.attrs.row(e),
                dropped_attributes_count: self.dropped.value(e),
            })
            .collect()
    }
}

/// The `links` column of one batch.
struct LinksReader<'a> {
    list: &'a ListArray,
    trace_id: &'a arrow::array::BinaryArray,
    span_id: &'a arrow::array::BinaryArray,
    trace_state: ArrayRef,
    attrs: AttrReader<'a>,
    dropped: &'a arrow::array::UInt32Array,
    flags: &'a arrow::array::UInt32Array,
}

impl<'a> LinksReader<'a> {
    fn new(b: &'a RecordBatch) -> Result<Self, ArrowError> {
        let list = column(b, c::LINKS)?.as_list::<i32>();
        let lk = list.values().as_struct();
        Ok(LinksReader {
            list,
            trace_id: field(lk, link_field::TRACE_ID)?.as_binary::<i32>(),
            span_id: field(lk, link_field::SPAN_ID)?.as_binary::<i32>(),
            trace_state: field(lk, link_field::TRACE_STATE)?.clone(),
            attrs: AttrReader::new(field(lk, link_field::ATTRS)?.as_list::<i32>())?,
            dropped: field(lk, link_field::DROPPED_ATTRS)?.as_primitive::<UInt32Type>(),
            flags: field(lk, link_field::FLAGS)?.as_primitive::<UInt32Type>(),
        })
    }

    fn row(&self, row: usize) -> Vec<Link> {
        let o = self.list.value_offsets();
        (o[row] as usize..o[row + 1] as usize)
            .map(|l| Link {
                trace_id: self.trace_id.value(l).to_vec(),
                span_id: self.span_id.value(l).to_vec(),
                trace_state: opt_str(&self.trace_state, l).unwrap_or_default(),
                attributes: self.attrs.row(l),
                dropped_attributes_count: self.dropped.value(l),
                flags: self.flags.value(l),
            })
            .collect()
    }
}

/// Rebuilds OTLP resource → scope → span nesting from span rows. `batches` must carry parent
/// ids (blocks' parent offsets already decoded).
pub fn to_traces_data(
    batches: &[RecordBatch],
    dedicated: &DedicatedColumns,
) -> Result<TracesData, ArrowError> {
    let mut out: Vec<ResourceSpans> = Vec::new();
    let mut by_resource: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut by_scope: HashMap<(usize, Vec<u8>, Option<String>), usize> = HashMap::new();
    for b in batches {
        let tid = column(b, c::TRACE_ID)?.as_fixed_size_binary();
        let sid = column(b, c::SPAN_ID)?.as_fixed_size_binary();
        let parent = column(b, c::PARENT_SPAN_ID)?.as_fixed_size_binary();
        let trace_state = column(b, c::TRACE_STATE)?.clone();
        let flags = column(b, c::FLAGS)?.as_primitive::<UInt32Type>();
        let name = utf8(b, c::NAME)?;
        let kind = column(b, c::KIND)?.as_primitive::<Int8Type>();
        let start = column(b, c::START)?.as_primitive::<Int64Type>();
        let dur = column(b, c::DURATION)?.as_primitive::<Int64Type>();
        let status_code = column(b, c::STATUS_CODE)?.as_primitive::<Int8Type>();
        let status_msg = column(b, c::STATUS_MESSAGE)?.clone();
        let service = utf8(b, c::SERVICE)?;
        let scope_name = utf8(b, c::SCOPE_NAME)?;
        let scope_version = utf8(b, c::SCOPE_VERSION)?;
        let scope_attrs = AttrReader::new(column(b, c::SCOPE_ATTRS)?.as_list::<i32>())?;
        let scope_schema_url = utf8(b, c::SCOPE_SCHEMA_URL)?;
        let resource_schema_url = utf8(b, c::RESOURCE_SCHEMA_URL)?;
        let res_attrs = column(b, c::RESOURCE_ATTRS)?
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| ArrowError::SchemaError("resource column is not a dictionary".into()))?;
        let res_blobs = res_attrs.values().as_binary::<i32>();
        let res_decoded: Vec<Vec<KeyValue>> =
            (0..res_blobs.len()).map(|i| decode_resource(res_blobs.value(i))).collect();
        let span_attrs = AttrReader::new(column(b, c::SPAN_ATTRS)?.as_list::<i32>())?;
        let events = EventsReader::new(b)?;
        let links = LinksReader::new(b)?;
        let dropped_attrs = column(b, c::DROPPED_ATTRS)?.as_primitive::<UInt32Type>();
        let dropped_events = column(b, c::DROPPED_EVENTS)?.as_primitive::<UInt32Type>();
        let dropped_links = column(b, c::DROPPED_LINKS)?.as_primitive::<UInt32Type>();
        let ded_span = dedicated_of(b, &dedicated.span, DedicatedColumns::span_column);
        let ded_res = dedicated_of(b, &dedicated.resource, DedicatedColumns::resource_column);

        for i in 0..b.num_rows() {
            let mut rattrs = Vec::new();
            if let Some(s) = opt_str(&service, i) {
                rattrs.push(str_kv(SERVICE_NAME_KEY, s));
            }
            if res_attrs.is_valid(i)
                && let Some(kvs) = res_decoded.get(res_attrs.keys().value(i) as usize)
            {
                rattrs.extend(kvs.iter().cloned());
            }
            for (k, a) in &ded_res {
                if let Some(v) = opt_str(a, i) {
                    rattrs.push(str_kv(k, v));
                }
            }
            let resource = Resource { attributes: rattrs, ..Default::default() };
            let rs_url = opt_str(&resource_schema_url, i).unwrap_or_default();
            let mut rkey = resource.encode_to_vec();
            rkey.extend_from_slice(rs_url.as_bytes());
            let ri = *by_resource.entry(rkey).or_insert_with(|| {
                out.push(ResourceSpans {
                    resource: Some(resource),
                    schema_url: rs_url,
                    ..Default::default()
                });
                out.len() - 1
            });
            let (sn, sv) = (opt_str(&scope_name, i), opt_str(&scope_version, i));
            let scope = (sn.is_some() || sv.is_some()).then(|| InstrumentationScope {
                name: sn.unwrap_or_default(),
                version: sv.unwrap_or_default(),
                attributes: scope_attrs.row(i),
                ..Default::default()
            });
            let ss_url = opt_str(&scope_schema_url, i);
            let skey = scope.as_ref().map(|s| s.encode_to_vec()).unwrap_or_default();
            let si = *by_scope.entry((ri, skey, ss_url.clone())).or_insert_with(|| {
                out[ri].scope_spans.push(ScopeSpans {
                    scope,
                    schema_url: ss_url.unwrap_or_default(),
                    ..Default::default()
                });
                out[ri].scope_spans.len() - 1
            });

            let mut attributes = span_attrs.row(i);
            for (k, a) in &ded_span {
                if let Some(v) = opt_str(a, i) {
                    attributes.push(str_kv(k, v));
                }
            }
            let st = start.value(i);
            let code = status_code.value(i);
            let msg = opt_str(&status_msg, i).unwrap_or_default();
            let span = Span {
                trace_id: tid.value(i).to_vec(),
                span_id: sid.value(i).to_vec(),
                trace_state: opt_str(&trace_state, i).unwrap_or_default(),
                parent_span_id: if parent.is_valid(i) {
                    parent.value(i).to_vec()
                } else {
                    Vec::new()
                },
                flags: flags.value(i),
                name: opt_str(&name, i).unwrap_or_default(),
                kind: i32::from(kind.value(i)),
                start_time_unix_nano: st as u64,
                end_time_unix_nano: st.wrapping_add(dur.value(i)) as u64,
                attributes,
                dropped_attributes_count: dropped_attrs.value(i),
                events: events.row(i),
                dropped_events_count: dropped_events.value(i),
                links: links.row(i),
                dropped_links_count: dropped_links.value(i),
                status: (code != 0 || !msg.is_empty())
                    .then(|| Status { code: i32::from(code), message: msg }),
            };
            out[ri].scope_spans[si].spans.push(span);
        }
    }
    Ok(TracesData { resource_spans: out })
}
