//! OTLP → Arrow: the builder that turns OTLP spans into span rows (see [`super::schema`]).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BinaryDictionaryBuilder, BooleanBuilder, FixedSizeBinaryBuilder,
    Float64Builder, Int8Builder, Int32Builder, Int64Builder, ListArray, RecordBatch, StringBuilder,
    StringDictionaryBuilder, StructArray, UInt32Builder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Int32Type, SchemaRef};
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;

use super::schema::{
    DedicatedColumns, SERVICE_NAME_KEY, attr_fields, event_fields, link_fields, span_schema,
};

/// The one typed slot an attribute value occupies.
#[derive(Default)]
struct Slots<'a> {
    str: Option<&'a str>,
    int: Option<i64>,
    dbl: Option<f64>,
    bool: Option<bool>,
    raw: Option<Vec<u8>>,
}

/// Builds the attribute list column.
#[derive(Default)]
struct AttrListBuilder {
    offsets: Vec<i32>,
    key: StringDictionaryBuilder<Int32Type>,
    str: StringBuilder,
    int: Int64Builder,
    dbl: Float64Builder,
    bool: BooleanBuilder,
    raw: BinaryBuilder,
    len: i32,
}

impl AttrListBuilder {
    fn new() -> Self {
        AttrListBuilder { offsets: vec![0], ..Default::default() }
    }

    fn push_attr(&mut self, kv: &KeyValue) {
        self.key.append_value(&kv.key);
        let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
        let mut slots = Slots::default();
        match value {
            Some(Value::StringValue(s)) => slots.str = Some(s),
            Some(Value::IntValue(i)) => slots.int = Some(*i),
            Some(Value::DoubleValue(d)) => slots.dbl = Some(*d),
            Some(Value::BoolValue(b)) => slots.bool = Some(*b),
            Some(other) => {
                slots.raw = Some(AnyValue { value: Some(other.clone()) }.encode_to_vec());
            }
            None => {}
        }
        let Slots { str: s, int: i, dbl: d, bool: b, raw: r } = slots;
        self.str.append_option(s);
        self.int.append_option(i);
        self.dbl.append_option(d);
        self.bool.append_option(b);
        self.raw.append_option(r);
        self.len += 1;
    }

    /// Closes the current row's list.
    fn close_row(&mut self) {
        self.offsets.push(self.len);
    }

    fn finish(&mut self) -> Result<ListArray, ArrowError> {
        let values = StructArray::try_new(
            attr_fields(),
            vec![
                Arc::new(self.key.finish()) as ArrayRef,
                Arc::new(self.str.finish()),
                Arc::new(self.int.finish()),
                Arc::new(self.dbl.finish()),
                Arc::new(self.bool.finish()),
                Arc::new(self.raw.finish()),
            ],
            None,
        )?;
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        self.len = 0;
        let field = Arc::new(Field::new("item", DataType::Struct(attr_fields()), false));
        ListArray::try_new(field, OffsetBuffer::new(offsets.into()), Arc::new(values), None)
    }
}

#[derive(Default)]
struct EventListBuilder {
    offsets: Vec<i32>,
    time: Int64Builder,
    name: StringBuilder,
    attrs: Option<AttrListBuilder>,
    dropped: UInt32Builder,
    len: i32,
}

#[derive(Default)]
struct LinkListBuilder {
    offsets: Vec<i32>,
    trace_id: BinaryBuilder,
    span_id: BinaryBuilder,
    trace_state: StringBuilder,
    attrs: Option<AttrListBuilder>,
    dropped: UInt32Builder,
    flags: UInt32Builder,
    len: i32,
}

fn list_of(
    fields: Fields,
    arrays: Vec<ArrayRef>,
    offsets: Vec<i32>,
) -> Result<ListArray, ArrowError> {
    let values = StructArray::try_new(fields.clone(), arrays, None)?;
    let field = Arc::new(Field::new("item", DataType::Struct(fields), false));
    ListArray::try_new(field, OffsetBuffer::new(offsets.into()), Arc::new(values), None)
}

/// Accumulates spans as Arrow rows. Not thread-safe; the head owns one per tenant.
pub struct SpanBatchBuilder {
    schema: SchemaRef,
    dedicated: DedicatedColumns,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent: FixedSizeBinaryBuilder,
    parent_offset: Int32Builder,
    trace_state: StringBuilder,
    flags: UInt32Builder,
    name: StringDictionaryBuilder<Int32Type>,
    kind: Int8Builder,
    start: Int64Builder,
    duration: Int64Builder,
    status_code: Int8Builder,
    status_message: StringBuilder,
    service: StringDictionaryBuilder<Int32Type>,
    scope_name: StringDictionaryBuilder<Int32Type>,
    scope_version: StringDictionaryBuilder<Int32Type>,
    scope_attrs: AttrListBuilder,
    scope_schema_url: StringDictionaryBuilder<Int32Type>,
    resource_schema_url: StringDictionaryBuilder<Int32Type>,
    res_attrs: BinaryDictionaryBuilder<Int32Type>,
    span_attrs: AttrListBuilder,
    events: EventListBuilder,
    links: LinkListBuilder,
    dropped_attrs: UInt32Builder,
    dropped_events: UInt32Builder,
    dropped_links: UInt32Builder,
    ded_span: Vec<StringDictionaryBuilder<Int32Type>>,
    ded_res: Vec<StringDictionaryBuilder<Int32Type>>,
    rows: usize,
    /// Rough heap size of appended data, for flush decisions and metrics.
    bytes: usize,
}

/// Scope-level values repeated on each span row of a scope.
struct ScopeRef<'a> {
    name: Option<&'a str>,
    version: Option<&'a str>,
    attrs: &'a [KeyValue],
    schema_url: Option<&'a str>,
    resource_schema_url: Option<&'a str>,
}

/// Per-row facts the head keeps beside the Arrow data (trace index, time range).
pub struct RowInfo {
    pub trace_id: [u8; 16],
    pub start: i64,
    pub end: i64,
}

impl SpanBatchBuilder {
    pub fn new(dedicated: &DedicatedColumns) -> Self {
        SpanBatchBuilder {
            schema: span_schema(dedicated),
            dedicated: dedicated.clone(),
            trace_id: FixedSizeBinaryBuilder::new(16),
            span_id: FixedSizeBinaryBuilder::new(8),
            parent: FixedSizeBinaryBuilder::new(8),
            parent_offset: Int32Builder::new(),
            trace_state: StringBuilder::new(),
            flags: UInt32Builder::new(),
            name: StringDictionaryBuilder::new(),
            kind: Int8Builder::new(),
            start: Int64Builder::new(),
            duration: Int64Builder::new(),
            status_code: Int8Builder::new(),
            status_message: StringBuilder::new(),
            service: StringDictionaryBuilder::new(),
            scope_name: StringDictionaryBuilder::new(),
            scope_version: StringDictionaryBuilder::new(),
            scope_attrs: AttrListBuilder::new(),
            scope_schema_url: StringDictionaryBuilder::new(),
            resource_schema_url: StringDictionaryBuilder::new(),
            res_attrs: BinaryDictionaryBuilder::new(),
            span_attrs: AttrListBuilder::new(),
            events: EventListBuilder {
                offsets: vec![0],
                attrs: Some(AttrListBuilder::new()),
                ..Default::default()
            },
            links: LinkListBuilder {
                offsets: vec![0],
                attrs: Some(AttrListBuilder::new()),
                ..Default::default()
            },
            dropped_attrs: UInt32Builder::new(),
            dropped_events: UInt32Builder::new(),
            dropped_links: UInt32Builder::new(),
            ded_span: dedicated.span.iter().map(|_| StringDictionaryBuilder::new()).collect(),
            ded_res: dedicated.resource.iter().map(|_| StringDictionaryBuilder::new()).collect(),
            rows: 0,
            bytes: 0,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends every span of `rs`. Ids must already be validated (16 / 8 bytes).
    pub fn append_resource_spans(&mut self, rs: &ResourceSpans, mut on_row: impl FnMut(RowInfo)) {
        let attrs: &[KeyValue] =
            rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        let mut service: Option<&str> = None;
        let mut generic: Vec<&KeyValue> = Vec::with_capacity(attrs.len());
        let mut ded_res: Vec<Option<&str>> = vec![None; self.dedicated.resource.len()];
        for kv in attrs {
            let s = string_value(kv);
            if kv.key == SERVICE_NAME_KEY && service.is_none() && s.is_some() {
                service = s;
                continue;
            }
            if let (Some(s), Some(i)) =
                (s, self.dedicated.resource.iter().position(|k| *k == kv.key))
                && ded_res[i].is_none()
            {
                ded_res[i] = Some(s);
                continue;
            }
            generic.push(kv);
        }
        let resource_blob = Resource {
            attributes: generic.iter().map(|kv| (*kv).clone()).collect(),
            dropped_attributes_count: rs
                .resource
                .as_ref()
                .map_or(0, |r| r.dropped_attributes_count),
            ..Default::default()
        }
        .encode_to_vec();
        let resource_schema_url = (!rs.schema_url.is_empty()).then_some(rs.schema_url.as_str());
        for ss in &rs.scope_spans {
            let scope = ScopeRef {
                name: ss.scope.as_ref().map(|s| s.name.as_str()),
                version: ss.scope.as_ref().map(|s| s.version.as_str()),
                attrs: ss.scope.as_ref().map(|s| s.attributes.as_slice()).unwrap_or(&[]),
                schema_url: (!ss.schema_url.is_empty()).then_some(ss.schema_url.as_str()),
                resource_schema_url,
            };
            for span in &ss.spans {
                self.append_span(span, service, &resource_blob, &ded_res, &scope);
                on_row(RowInfo {
                    trace_id: span.trace_id.as_slice().try_into().unwrap_or([0; 16]),
                    start: clamp_i64(span.start_time_unix_nano),
                    end: clamp_i64(span.end_time_unix_nano),
                });
            }
        }
    }

    fn append_span(
        &mut self,
        span: &Span,
        service: Option<&str>,
        resource_blob: &[u8],
        ded_res: &[Option<&str>],
        scope: &ScopeRef<'_>,
    ) {
        // Ids were validated by ingest; a failure here would only mean a bug, so pad instead of
        // panicking on the request path.
        let _ = self.trace_id.append_value(fixed::<16>(&span.trace_id));
        let _ = self.span_id.append_value(fixed::<8>(&span.span_id));
        if span.parent_span_id.len() == 8 && span.parent_span_id.iter().any(|b| *b != 0) {
            let _ = self.parent.append_value(&span.parent_span_id);
        } else {
            self.parent.append_null();
        }
        self.parent_offset.append_null();
        self.trace_state.append_option((!span.trace_state.is_empty()).then_some(&span.trace_state));
        self.flags.append_value(span.flags);
        self.name.append_value(&span.name);
        self.kind.append_value(span.kind.clamp(0, 127) as i8);
        let start = clamp_i64(span.start_time_unix_nano);
        self.start.append_value(start);
        self.duration.append_value(clamp_i64(span.end_time_unix_nano).wrapping_sub(start));
        let (code, msg) = match &span.status {
            Some(s) => {
                (s.code.clamp(0, 127) as i8, (!s.message.is_empty()).then_some(s.message.as_str()))
            }
            None => (0, None),
        };
        self.status_code.append_value(code);
        self.status_message.append_option(msg);
        self.service.append_option(service);
        self.scope_name.append_option(scope.name);
        self.scope_version.append_option(scope.version);
        for kv in scope.attrs {
            self.scope_attrs.push_attr(kv);
        }
        self.scope_attrs.close_row();
        self.scope_schema_url.append_option(scope.schema_url);
        self.resource_schema_url.append_option(scope.resource_schema_url);
        self.res_attrs.append_value(resource_blob);
        for (b, v) in self.ded_res.iter_mut().zip(ded_res) {
            b.append_option(*v);
        }

        let mut ded_span: [Option<&str>; 16] = [None; 16];
        let mut bytes = 64 + span.name.len();
        for kv in &span.attributes {
            bytes += kv.key.len() + 16;
            if let Some(s) = string_value(kv)
                && let Some(i) = self.dedicated.span.iter().position(|k| *k == kv.key)
                && i < ded_span.len()
                && ded_span[i].is_none()
            {
                ded_span[i] = Some(s);
                bytes += s.len();
                continue;
            }
            self.span_attrs.push_attr(kv);
        }
        self.span_attrs.close_row();
        for (i, b) in self.ded_span.iter_mut().enumerate() {
            b.append_option(ded_span.get(i).copied().flatten());
        }

        let ev = &mut self.events;
        for e in &span.events {
            ev.time.append_value(clamp_i64(e.time_unix_nano));
            ev.name.append_value(&e.name);
            if let Some(a) = ev.attrs.as_mut() {
                for kv in &e.attributes {
                    a.push_attr(kv);
                }
                a.close_row();
            }
            ev.dropped.append_value(e.dropped_attributes_count);
            ev.len += 1;
            bytes += 32 + e.name.len() + e.attributes.len() * 24;
        }
        ev.offsets.push(ev.len);

        let lk = &mut self.links;
        for l in &span.links {
            lk.trace_id.append_value(&l.trace_id);
            lk.span_id.append_value(&l.span_id);
            lk.trace_state.append_option((!l.trace_state.is_empty()).then_some(&l.trace_state));
            if let Some(a) = lk.attrs.as_mut() {
                for kv in &l.attributes {
                    a.push_attr(kv);
                }
                a.close_row();
            }
            lk.dropped.append_value(l.dropped_attributes_count);
            lk.flags.append_value(l.flags);
            lk.len += 1;
            bytes += 48 + l.attributes.len() * 24;
        }
        lk.offsets.push(lk.len);

        self.dropped_attrs.append_value(span.dropped_attributes_count);
        self.dropped_events.append_value(span.dropped_events_count);
        self.dropped_links.append_value(span.dropped_links_count);
        self.rows += 1;
        self.bytes += bytes;
    }

    /// Turns the accumulated rows into a batch and resets the builder.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let ev = &mut self.events;
        let ev_attrs = match ev.attrs.as_mut() {
            Some(a) => a.finish()?,
            None => AttrListBuilder::new().finish()?,
        };
        let events = list_of(
            event_fields(),
            vec![
                Arc::new(ev.time.finish()),
                Arc::new(ev.name.finish()),
                Arc::new(ev_attrs),
                Arc::new(ev.dropped.finish()),
            ],
            std::mem::replace(&mut ev.offsets, vec![0]),
        )?;
        ev.len = 0;
        let lk = &mut self.links;
        let lk_attrs = match lk.attrs.as_mut() {
            Some(a) => a.finish()?,
            None => AttrListBuilder::new().finish()?,
        };
        let links = list_of(
            link_fields(),
            vec![
                Arc::new(lk.trace_id.finish()),
                Arc::new(lk.span_id.finish()),
                Arc::new(lk.trace_state.finish()),
                Arc::new(lk_attrs),
                Arc::new(lk.dropped.finish()),
                Arc::new(lk.flags.finish()),
            ],
            std::mem::replace(&mut lk.offsets, vec![0]),
        )?;
        lk.len = 0;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent.finish()),
            Arc::new(self.parent_offset.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.flags.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
            Arc::new(self.scope_attrs.finish()?),
            Arc::new(self.scope_schema_url.finish()),
            Arc::new(self.resource_schema_url.finish()),
            Arc::new(self.res_attrs.finish()),
            Arc::new(self.span_attrs.finish()?),
            Arc::new(events),
            Arc::new(links),
            Arc::new(self.dropped_attrs.finish()),
            Arc::new(self.dropped_events.finish()),
            Arc::new(self.dropped_links.finish()),
        ];
        for b in &mut self.ded_span {
            columns.push(Arc::new(b.finish()));
        }
        for b in &mut self.ded_res {
            columns.push(Arc::new(b.finish()));
        }
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

pub(super) fn string_value(kv: &KeyValue) -> Option<&str> {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// OTLP times are u64 nanoseconds; i64 covers them until 2262.
pub fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
