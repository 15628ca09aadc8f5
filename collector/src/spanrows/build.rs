//! OTLP → Arrow: the builder that turns OTLP spans into span rows (see [`super::schema`]).
//!
//! Every variable-length column of a batch (strings, binary, dictionary values, list entries)
//! has i32 offsets: past 2 GiB of values Arrow panics. The builder therefore knows, before it
//! appends a span, an upper bound of what the span adds to any one of those columns (its
//! *cost*, see [`resource_spans_cost`]); the head seals batches by that cost, and a
//! builder asked to can finish a batch in the middle of a request.

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
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use super::schema::{
    DedicatedColumns, SERVICE_NAME_KEY, attr_fields, event_fields, link_fields, span_schema,
};
use super::truncate::ValueLimit;

/// Cost of each row and each list entry beyond its value bytes: keeps entry counts (list
/// offsets) bounded by the cost too, and makes the cost a fair estimate of memory.
const ROW_COST: usize = 64;
const ENTRY_COST: usize = 16;
/// Protobuf framing of one encoded attribute in a resource blob (tag + length varint), at most.
const FRAME_COST: usize = 11;

/// Limits that shape what a builder stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Attribute values (strings and bytes, also inside arrays and kvlists) longer than this are
    /// cut; 0 keeps them whole.
    pub max_attribute_bytes: usize,
}

/// OpenTelemetry's attribute value length limit as most backends configure it.
pub const DEFAULT_MAX_ATTRIBUTE_BYTES: usize = 64 * 1024;

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits { max_attribute_bytes: DEFAULT_MAX_ATTRIBUTE_BYTES }
    }
}

/// What appending one `ResourceSpans` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub rows: usize,
    /// Attribute values cut to [`BuildLimits::max_attribute_bytes`].
    pub truncated: usize,
}

/// One attribute ready to append: its key and the one typed slot its (cut) value occupies.
#[derive(Default)]
struct Attr<'a> {
    key: &'a str,
    str: Option<&'a str>,
    int: Option<i64>,
    dbl: Option<f64>,
    bool: Option<bool>,
    raw: Option<Vec<u8>>,
}

impl<'a> Attr<'a> {
    fn new(kv: &'a KeyValue, limit: ValueLimit, truncated: &mut usize) -> Self {
        let mut a = Attr { key: &kv.key, ..Default::default() };
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => {
                let (s, cut) = limit.cut_str(s);
                *truncated += usize::from(cut);
                a.str = Some(s);
            }
            Some(Value::IntValue(i)) => a.int = Some(*i),
            Some(Value::DoubleValue(d)) => a.dbl = Some(*d),
            Some(Value::BoolValue(b)) => a.bool = Some(*b),
            Some(other) => {
                let mut v = other.clone();
                *truncated += limit.cut_value(&mut v);
                a.raw = Some(AnyValue { value: Some(v) }.encode_to_vec());
            }
            None => {}
        }
        a
    }
}

/// Upper bound of what one attribute adds to any column it touches: key and value bytes (a
/// kvlist or array is stored encoded, never longer than uncut), plus the entry.
fn attr_cost(kv: &KeyValue, limit: ValueLimit) -> usize {
    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => limit.kept(s.len()),
        Some(Value::IntValue(_) | Value::DoubleValue(_) | Value::BoolValue(_)) | None => 0,
        Some(other) => other.encoded_len(),
    };
    ENTRY_COST.saturating_add(kv.key.len()).saturating_add(value)
}

fn attrs_cost(attrs: &[KeyValue], limit: ValueLimit) -> usize {
    attrs.iter().fold(0usize, |n, kv| n.saturating_add(attr_cost(kv, limit)))
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

    fn push_attr(&mut self, a: &Attr<'_>) {
        self.key.append_value(a.key);
        self.str.append_option(a.str);
        self.int.append_option(a.int);
        self.dbl.append_option(a.dbl);
        self.bool.append_option(a.bool);
        self.raw.append_option(a.raw.as_deref());
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
    limit: ValueLimit,
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
    /// Cost of the rows appended since the last finish: an upper bound of the bytes (and
    /// entries) of every variable-length column, and a rough estimate of their heap size.
    cost: usize,
}

/// Resource-level values of one `ResourceSpans`, the same on each of its span rows.
struct ResourceRow<'a> {
    service: Option<&'a str>,
    ded: Vec<Option<&'a str>>,
    blob: Vec<u8>,
    schema_url: Option<&'a str>,
    /// What these values add to a batch the first time they are appended to it.
    cost: usize,
}

/// Scope-level values of one `ScopeSpans`, the same on each of its span rows.
struct ScopeRow<'a> {
    name: Option<&'a str>,
    version: Option<&'a str>,
    attrs: Vec<Attr<'a>>,
    schema_url: Option<&'a str>,
    /// Added the first time the scope's dictionary values are appended to a batch ...
    cost: usize,
    /// ... and on every span row (its attribute list is repeated on each).
    per_span: usize,
}

/// Per-row facts the head keeps beside the Arrow data (trace index, time range).
pub struct RowInfo {
    pub trace_id: [u8; 16],
    pub start: i64,
    pub end: i64,
}

/// Upper bound of what the resource-level values of `rs` add to a batch: the encoded blob of
/// its attributes plus the string values of those that get a column of their own.
fn resource_cost(rs: &ResourceSpans) -> usize {
    let attrs = rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
    let blob = attrs
        .iter()
        .fold(FRAME_COST, |n, kv| n.saturating_add(kv.encoded_len()).saturating_add(FRAME_COST));
    let strings =
        attrs.iter().filter_map(string_value).fold(0usize, |n, s| n.saturating_add(s.len()));
    blob.saturating_add(strings).saturating_add(rs.schema_url.len())
}

/// What the scope of `ss` adds once per batch, and on every span row.
fn scope_cost(ss: &ScopeSpans, limit: ValueLimit) -> (usize, usize) {
    let Some(scope) = ss.scope.as_ref() else { return (ss.schema_url.len(), 0) };
    let once =
        scope.name.len().saturating_add(scope.version.len()).saturating_add(ss.schema_url.len());
    (once, attrs_cost(&scope.attributes, limit))
}

/// Upper bound of what one span's own fields add to a batch.
fn span_cost(span: &Span, limit: ValueLimit) -> usize {
    let mut n = ROW_COST
        .saturating_add(span.trace_state.len())
        .saturating_add(span.name.len())
        .saturating_add(span.status.as_ref().map_or(0, |s| s.message.len()))
        .saturating_add(attrs_cost(&span.attributes, limit));
    for e in &span.events {
        n = n
            .saturating_add(ENTRY_COST)
            .saturating_add(e.name.len())
            .saturating_add(attrs_cost(&e.attributes, limit));
    }
    for l in &span.links {
        n = n
            .saturating_add(ENTRY_COST)
            .saturating_add(l.trace_id.len())
            .saturating_add(l.span_id.len())
            .saturating_add(l.trace_state.len())
            .saturating_add(attrs_cost(&l.attributes, limit));
    }
    n
}

/// Upper bound of the cost `rs` adds when appended to one batch under `limits`, computed
/// without building anything (saturating: a request can claim any size).
pub fn resource_spans_cost(rs: &ResourceSpans, limits: BuildLimits) -> usize {
    let limit = ValueLimit::new(limits.max_attribute_bytes);
    let mut n = resource_cost(rs);
    for ss in &rs.scope_spans {
        let (once, per_span) = scope_cost(ss, limit);
        n = n.saturating_add(once);
        for span in &ss.spans {
            n = n.saturating_add(per_span).saturating_add(span_cost(span, limit));
        }
    }
    n
}

impl SpanBatchBuilder {
    pub fn new(dedicated: &DedicatedColumns) -> Self {
        Self::with_limits(dedicated, BuildLimits::default())
    }

    pub fn with_limits(dedicated: &DedicatedColumns, limits: BuildLimits) -> Self {
        SpanBatchBuilder {
            schema: span_schema(dedicated),
            dedicated: dedicated.clone(),
            limit: ValueLimit::new(limits.max_attribute_bytes),
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
            cost: 0,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rough heap size of the appended data, for metrics.
    pub fn bytes(&self) -> usize {
        self.cost
    }

    /// Cost of the rows appended since the last finish: no variable-length column of the batch
    /// [`finish`](Self::finish) would build holds more bytes or entries than this.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Appends every span of `rs`. Ids must already be validated (16 / 8 bytes).
    pub fn append_resource_spans(
        &mut self,
        rs: &ResourceSpans,
        on_row: impl FnMut(RowInfo),
    ) -> Appended {
        // Without a place for finished batches the builder never finishes one, so never fails.
        self.append(rs, on_row, None).unwrap_or_default()
    }

    /// Appends every span of `rs`, first finishing the rows so far into `sealed` whenever the
    /// next span would take the cost past `seal_cost` (a span never shares a batch whose cost
    /// it would take past that, but a span costing more on its own gets a batch to itself).
    /// On error the rows appended by this call may be in `sealed` or the builder.
    pub fn append_resource_spans_sealing(
        &mut self,
        rs: &ResourceSpans,
        on_row: impl FnMut(RowInfo),
        seal_cost: usize,
        sealed: &mut Vec<RecordBatch>,
    ) -> Result<Appended, ArrowError> {
        self.append(rs, on_row, Some((seal_cost, sealed)))
    }

    fn append(
        &mut self,
        rs: &ResourceSpans,
        mut on_row: impl FnMut(RowInfo),
        mut seal: Option<(usize, &mut Vec<RecordBatch>)>,
    ) -> Result<Appended, ArrowError> {
        let mut done = Appended::default();
        let res = self.resource_row(rs, &mut done.truncated);
        // Resource- and scope-level values are dictionary-encoded and the same on a run of
        // consecutive rows: each run is appended once, with its length, when it ends (hashing
        // a large value once per span would cost as much as a request can repeat it).
        let mut res_run = 0usize;
        for ss in &rs.scope_spans {
            let scope = self.scope_row(ss, &mut done.truncated);
            let mut scope_run = 0usize;
            for span in &ss.spans {
                let own = span_cost(span, self.limit).saturating_add(scope.per_span);
                if let Some((limit, sealed)) = seal.as_mut() {
                    let need = own
                        .saturating_add(if res_run == 0 { res.cost } else { 0 })
                        .saturating_add(if scope_run == 0 { scope.cost } else { 0 });
                    if self.rows > 0 && self.cost.saturating_add(need) > *limit {
                        self.end_scope_run(&scope, scope_run);
                        self.end_resource_run(&res, res_run);
                        (res_run, scope_run) = (0, 0);
                        sealed.push(self.finish()?);
                    }
                }
                if res_run == 0 {
                    self.cost = self.cost.saturating_add(res.cost);
                }
                if scope_run == 0 {
                    self.cost = self.cost.saturating_add(scope.cost);
                }
                self.cost = self.cost.saturating_add(own);
                self.append_span(span, &scope.attrs, &mut done.truncated);
                res_run += 1;
                scope_run += 1;
                done.rows += 1;
                on_row(RowInfo {
                    trace_id: span.trace_id.as_slice().try_into().unwrap_or([0; 16]),
                    start: clamp_i64(span.start_time_unix_nano),
                    end: clamp_i64(span.end_time_unix_nano),
                });
            }
            self.end_scope_run(&scope, scope_run);
        }
        self.end_resource_run(&res, res_run);
        Ok(done)
    }

    fn resource_row<'a>(&self, rs: &'a ResourceSpans, truncated: &mut usize) -> ResourceRow<'a> {
        let attrs: &[KeyValue] =
            rs.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        let mut service: Option<&str> = None;
        let mut generic: Vec<KeyValue> = Vec::with_capacity(attrs.len());
        let mut ded: Vec<Option<&str>> = vec![None; self.dedicated.resource.len()];
        for kv in attrs {
            let s = string_value(kv).map(|s| {
                let (s, cut) = self.limit.cut_str(s);
                (s, usize::from(cut))
            });
            if kv.key == SERVICE_NAME_KEY
                && service.is_none()
                && let Some((s, cut)) = s
            {
                service = Some(s);
                *truncated += cut;
                continue;
            }
            if let (Some((s, cut)), Some(i)) =
                (s, self.dedicated.resource.iter().position(|k| *k == kv.key))
                && ded[i].is_none()
            {
                ded[i] = Some(s);
                *truncated += cut;
                continue;
            }
            let mut kv = kv.clone();
            if let Some(v) = kv.value.as_mut().and_then(|v| v.value.as_mut()) {
                *truncated += self.limit.cut_value(v);
            }
            generic.push(kv);
        }
        let blob = Resource {
            attributes: generic,
            dropped_attributes_count: rs
                .resource
                .as_ref()
                .map_or(0, |r| r.dropped_attributes_count),
            ..Default::default()
        }
        .encode_to_vec();
        ResourceRow {
            service,
            ded,
            blob,
            schema_url: (!rs.schema_url.is_empty()).then_some(rs.schema_url.as_str()),
            cost: resource_cost(rs),
        }
    }

    fn scope_row<'a>(&self, ss: &'a ScopeSpans, truncated: &mut usize) -> ScopeRow<'a> {
        let scope = ss.scope.as_ref();
        let attrs = scope.map(|s| s.attributes.as_slice()).unwrap_or(&[]);
        let (cost, per_span) = scope_cost(ss, self.limit);
        ScopeRow {
            name: scope.map(|s| s.name.as_str()),
            version: scope.map(|s| s.version.as_str()),
            attrs: attrs.iter().map(|kv| Attr::new(kv, self.limit, truncated)).collect(),
            schema_url: (!ss.schema_url.is_empty()).then_some(ss.schema_url.as_str()),
            cost,
            per_span,
        }
    }

    /// Appends the resource-level values of the last `n` rows.
    fn end_resource_run(&mut self, res: &ResourceRow<'_>, n: usize) {
        if n == 0 {
            return;
        }
        self.service.append_options(res.service, n);
        self.resource_schema_url.append_options(res.schema_url, n);
        self.res_attrs.append_values(&res.blob, n);
        for (b, v) in self.ded_res.iter_mut().zip(&res.ded) {
            b.append_options(*v, n);
        }
    }

    /// Appends the scope-level dictionary values of the last `n` rows.
    fn end_scope_run(&mut self, scope: &ScopeRow<'_>, n: usize) {
        if n == 0 {
            return;
        }
        self.scope_name.append_options(scope.name, n);
        self.scope_version.append_options(scope.version, n);
        self.scope_schema_url.append_options(scope.schema_url, n);
    }

    /// Appends a span's own columns and its scope's attribute list; the resource- and
    /// scope-level dictionary columns are appended per run.
    fn append_span(&mut self, span: &Span, scope_attrs: &[Attr<'_>], truncated: &mut usize) {
        let limit = self.limit;
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
        for a in scope_attrs {
            self.scope_attrs.push_attr(a);
        }
        self.scope_attrs.close_row();

        let mut ded_span: [Option<&str>; 16] = [None; 16];
        for kv in &span.attributes {
            if let Some(s) = string_value(kv)
                && let Some(i) = self.dedicated.span.iter().position(|k| *k == kv.key)
                && i < ded_span.len()
                && ded_span[i].is_none()
            {
                let (s, cut) = limit.cut_str(s);
                *truncated += usize::from(cut);
                ded_span[i] = Some(s);
                continue;
            }
            self.span_attrs.push_attr(&Attr::new(kv, limit, truncated));
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
                    a.push_attr(&Attr::new(kv, limit, truncated));
                }
                a.close_row();
            }
            ev.dropped.append_value(e.dropped_attributes_count);
            ev.len += 1;
        }
        ev.offsets.push(ev.len);

        let lk = &mut self.links;
        for l in &span.links {
            lk.trace_id.append_value(&l.trace_id);
            lk.span_id.append_value(&l.span_id);
            lk.trace_state.append_option((!l.trace_state.is_empty()).then_some(&l.trace_state));
            if let Some(a) = lk.attrs.as_mut() {
                for kv in &l.attributes {
                    a.push_attr(&Attr::new(kv, limit, truncated));
                }
                a.close_row();
            }
            lk.dropped.append_value(l.dropped_attributes_count);
            lk.flags.append_value(l.flags);
            lk.len += 1;
        }
        lk.offsets.push(lk.len);

        self.dropped_attrs.append_value(span.dropped_attributes_count);
        self.dropped_events.append_value(span.dropped_events_count);
        self.dropped_links.append_value(span.dropped_links_count);
        self.rows += 1;
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
        self.cost = 0;
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

/// The most value bytes or list entries any variable-length column of `batch` holds, nested
/// columns and dictionary values included: what must stay below 2 GiB.
#[cfg(test)]
pub(crate) fn largest_column(batch: &RecordBatch) -> usize {
    use arrow::array::{Array, AsArray};
    fn largest(a: &dyn Array) -> usize {
        match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().values().len(),
            DataType::Binary => a.as_binary::<i32>().values().len(),
            DataType::List(_) => {
                let l = a.as_list::<i32>();
                l.values().len().max(largest(l.values().as_ref()))
            }
            DataType::Struct(_) => {
                a.as_struct().columns().iter().map(|c| largest(c.as_ref())).max().unwrap_or(0)
            }
            DataType::Dictionary(..) => largest(a.as_any_dictionary().values().as_ref()),
            _ => 0,
        }
    }
    batch.columns().iter().map(|c| largest(c.as_ref())).max().unwrap_or(0)
}
