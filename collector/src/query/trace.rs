//! Trace by id: bloom-pruned blocks + head, then Arrow rows back into OTLP `TracesData`.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Int8Type, Int64Type, UInt32Type};
use datafusion::common::ScalarValue;
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionContext, col, lit};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, TracesData, span::Event, span::Link,
};
use prost::Message;

use super::{QueryEngine, QueryError};
use crate::store::block::{align, decode_parents};
use crate::spanrows::schema::{Dedicated, SERVICE_NAME_KEY, col as c, decode_resource, span_schema};

impl QueryEngine {
    /// All spans of one trace, without needing a time range. `range` (unix nanos) only
    /// narrows the blocks read.
    pub async fn trace_by_id(
        &self,
        tenant: &str,
        id: [u8; 16],
        range: Option<(i64, i64)>,
    ) -> Result<TracesData, QueryError> {
        let started = std::time::Instant::now();
        let (blocks, head) = self.view(tenant, |b| {
            b.bloom.contains(&id)
                && range.is_none_or(|(s, e)| b.meta.max_time >= s && b.meta.min_time <= e)
        })?;
        let layout = self.store.layout(&blocks);
        let schema = span_schema(&layout);
        let id_eq =
            || col(c::TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec()))));
        // Each block is read on its own, in file order, so parent offsets can be resolved.
        let per_block = futures::future::try_join_all(
            blocks.iter().map(|b| self.block_rows(b, schema.clone(), id_eq())),
        )
        .await?;
        let mut batches = Vec::new();
        for rows in per_block {
            batches.extend(decode_parents(&rows)?);
        }
        if !head.is_empty() {
            let ctx = SessionContext::new();
            let mem = Arc::new(MemTable::try_new(head[0].schema(), vec![head])?);
            for b in ctx.read_table(mem)?.filter(id_eq())?.collect().await? {
                batches.push(align(&b, &schema)?);
            }
        }
        let data = to_traces_data(&batches, &layout)?;
        self.observe("trace_by_id", started);
        if data.resource_spans.is_empty() {
            return Err(QueryError::NotFound);
        }
        Ok(data)
    }
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, QueryError> {
    b.column_by_name(name).ok_or_else(|| QueryError::Internal(format!("missing column {name}")))
}

fn utf8(b: &RecordBatch, name: &str) -> Result<ArrayRef, QueryError> {
    Ok(arrow::compute::cast(column(b, name)?, &DataType::Utf8)?)
}

fn opt_str(a: &ArrayRef, i: usize) -> Option<String> {
    let s = a.as_string::<i32>();
    s.is_valid(i).then(|| s.value(i).to_string())
}

/// Decodes entry `i` of an attribute struct array into an OTLP `KeyValue`.
fn attr_at(entries: &StructArray, keys: &ArrayRef, i: usize) -> KeyValue {
    let key = opt_str(keys, i).unwrap_or_default();
    let value = if let Some(s) = entries.column_by_name("str").filter(|a| a.is_valid(i)) {
        Some(Value::StringValue(s.as_string::<i32>().value(i).to_string()))
    } else if let Some(v) = entries.column_by_name("int").filter(|a| a.is_valid(i)) {
        Some(Value::IntValue(v.as_primitive::<Int64Type>().value(i)))
    } else if let Some(v) = entries.column_by_name("dbl").filter(|a| a.is_valid(i)) {
        Some(Value::DoubleValue(v.as_primitive::<arrow::datatypes::Float64Type>().value(i)))
    } else if let Some(v) = entries.column_by_name("bool").filter(|a| a.is_valid(i)) {
        Some(Value::BoolValue(v.as_boolean().value(i)))
    } else if let Some(v) = entries.column_by_name("raw").filter(|a| a.is_valid(i)) {
        AnyValue::decode(v.as_binary::<i32>().value(i)).ok().and_then(|a| a.value)
    } else {
        None
    };
    KeyValue { key, value: Some(AnyValue { value }), ..Default::default() }
}

/// Attribute lists decoded per row.
struct AttrReader<'a> {
    list: &'a ListArray,
    keys: ArrayRef,
}

impl<'a> AttrReader<'a> {
    fn new(list: &'a ListArray) -> Result<Self, QueryError> {
        let entries = list.values().as_struct();
        let keys = entries
            .column_by_name("key")
            .ok_or_else(|| QueryError::Internal("attribute list without key".into()))?;
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

/// Rebuilds OTLP resource → scope → span nesting from span rows.
pub fn to_traces_data(
    batches: &[RecordBatch],
    layout: &Dedicated,
) -> Result<TracesData, QueryError> {
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
            .as_dictionary_opt::<arrow::datatypes::Int32Type>()
            .ok_or_else(|| QueryError::Internal("resource column is not a dictionary".into()))?;
        let res_blobs = res_attrs.values().as_binary::<i32>();
        let res_decoded: Vec<Vec<KeyValue>> =
            (0..res_blobs.len()).map(|i| decode_resource(res_blobs.value(i))).collect();
        let span_attrs = AttrReader::new(column(b, c::SPAN_ATTRS)?.as_list::<i32>())?;
        let events = column(b, c::EVENTS)?.as_list::<i32>();
        let ev = events.values().as_struct();
        let ev_time = ev.column(0).as_primitive::<Int64Type>();
        let ev_name = ev.column(1).clone();
        let ev_attrs = AttrReader::new(ev.column(2).as_list::<i32>())?;
        let ev_dropped = ev.column(3).as_primitive::<UInt32Type>();
        let links = column(b, c::LINKS)?.as_list::<i32>();
        let lk = links.values().as_struct();
        let lk_tid = lk.column(0).as_binary::<i32>();
        let lk_sid = lk.column(1).as_binary::<i32>();
        let lk_state = lk.column(2).clone();
        let lk_attrs = AttrReader::new(lk.column(3).as_list::<i32>())?;
        let lk_dropped = lk.column(4).as_primitive::<UInt32Type>();
        let lk_flags = lk.column(5).as_primitive::<UInt32Type>();
        let dropped_attrs = column(b, c::DROPPED_ATTRS)?.as_primitive::<UInt32Type>();
        let dropped_events = column(b, c::DROPPED_EVENTS)?.as_primitive::<UInt32Type>();
        let dropped_links = column(b, c::DROPPED_LINKS)?.as_primitive::<UInt32Type>();
        let ded_span: Vec<(String, ArrayRef)> = layout
            .span
            .iter()
            .filter_map(|k| {
                let a = b.column_by_name(&Dedicated::span_column(k))?;
                Some((k.clone(), arrow::compute::cast(a, &DataType::Utf8).ok()?))
            })
            .collect();
        let ded_res: Vec<(String, ArrayRef)> = layout
            .resource
            .iter()
            .filter_map(|k| {
                let a = b.column_by_name(&Dedicated::resource_column(k))?;
                Some((k.clone(), arrow::compute::cast(a, &DataType::Utf8).ok()?))
            })
            .collect();

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
            let eo = events.value_offsets();
            let events_out = (eo[i] as usize..eo[i + 1] as usize)
                .map(|e| Event {
                    time_unix_nano: ev_time.value(e) as u64,
                    name: opt_str(&ev_name, e).unwrap_or_default(),
                    attributes: ev_attrs.row(e),
                    dropped_attributes_count: ev_dropped.value(e),
                })
                .collect();
            let lo = links.value_offsets();
            let links_out = (lo[i] as usize..lo[i + 1] as usize)
                .map(|l| Link {
                    trace_id: lk_tid.value(l).to_vec(),
                    span_id: lk_sid.value(l).to_vec(),
                    trace_state: opt_str(&lk_state, l).unwrap_or_default(),
                    attributes: lk_attrs.row(l),
                    dropped_attributes_count: lk_dropped.value(l),
                    flags: lk_flags.value(l),
                })
                .collect();
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
                events: events_out,
                dropped_events_count: dropped_events.value(i),
                links: links_out,
                dropped_links_count: dropped_links.value(i),
                status: (code != 0 || !msg.is_empty())
                    .then(|| Status { code: i32::from(code), message: msg }),
            };
            out[ri].scope_spans[si].spans.push(span);
        }
    }
    Ok(TracesData { resource_spans: out })
}
