//! Arrow schema of the span table: column names, field names inside nested columns, and the
//! dedicated attribute columns.
//!
//! One row per span. Ids are fixed-size binary, times are i64 nanoseconds (delta-friendly),
//! names and services are dictionary-encoded. Attributes are a typed generic list
//! `List<Struct{key, str, int, dbl, bool, raw}>` with exactly one value slot set (`raw` holds
//! arrays, kvlists and bytes as an encoded OTLP `AnyValue`). A few configurable string
//! attributes get dedicated columns named `span.<key>` / `resource.<key>`; `service.name` is
//! always the `service_name` column.
//! Resource attributes (other than `service.name` and dedicated ones) are one encoded OTLP
//! `Resource` per span in a `Dictionary(Int32, Binary)` column: a batch holds each distinct
//! resource once, a span only a 4-byte key, and predicates run once per distinct resource.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

/// Column names, shared by the builder, the decoder, the block writer and the query compiler.
pub mod col {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const PARENT_SPAN_ID: &str = "parent_span_id";
    /// In blocks: distance (row - parent row) to the parent within the block's sorted rows;
    /// `parent_span_id` is then NULL. Always NULL in the head.
    pub const PARENT_OFFSET: &str = "parent_offset";
    pub const TRACE_STATE: &str = "trace_state";
    pub const FLAGS: &str = "flags";
    pub const NAME: &str = "name";
    pub const KIND: &str = "kind";
    pub const START: &str = "start_time";
    pub const DURATION: &str = "duration";
    pub const STATUS_CODE: &str = "status_code";
    pub const STATUS_MESSAGE: &str = "status_message";
    pub const SERVICE: &str = "service_name";
    pub const SCOPE_NAME: &str = "scope_name";
    pub const SCOPE_VERSION: &str = "scope_version";
    pub const SCOPE_ATTRS: &str = "scope_attrs";
    pub const SCOPE_SCHEMA_URL: &str = "scope_schema_url";
    pub const RESOURCE_SCHEMA_URL: &str = "resource_schema_url";
    pub const RESOURCE_ATTRS: &str = "resource_attrs";
    pub const SPAN_ATTRS: &str = "span_attrs";
    pub const EVENTS: &str = "events";
    pub const LINKS: &str = "links";
    pub const DROPPED_ATTRS: &str = "dropped_attrs";
    pub const DROPPED_EVENTS: &str = "dropped_events";
    pub const DROPPED_LINKS: &str = "dropped_links";
}

pub const SERVICE_NAME_KEY: &str = "service.name";

/// Fields of an attribute entry (`List<Struct{key, str, int, dbl, bool, raw}>`).
pub mod attr_field {
    pub const KEY: &str = "key";
    pub const STR: &str = "str";
    pub const INT: &str = "int";
    pub const DBL: &str = "dbl";
    pub const BOOL: &str = "bool";
    /// Arrays, kvlists and bytes as an encoded OTLP `AnyValue`.
    pub const RAW: &str = "raw";
}

/// Fields of an entry of the `events` column.
pub mod event_field {
    pub const TIME: &str = "time";
    pub const NAME: &str = "name";
    pub const ATTRS: &str = "attrs";
    pub const DROPPED_ATTRS: &str = "dropped_attrs";
}

/// Fields of an entry of the `links` column.
pub mod link_field {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const TRACE_STATE: &str = "trace_state";
    pub const ATTRS: &str = "attrs";
    pub const DROPPED_ATTRS: &str = "dropped_attrs";
    pub const FLAGS: &str = "flags";
}

/// Which string attributes get their own column (`span.<key>` / `resource.<key>`); part of
/// every block's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DedicatedColumns {
    pub span: Vec<String>,
    pub resource: Vec<String>,
}

impl DedicatedColumns {
    pub fn span_column(key: &str) -> String {
        format!("span.{key}")
    }
    pub fn resource_column(key: &str) -> String {
        format!("resource.{key}")
    }
    /// Union of two sets, keeping order (used to build one table schema over many blocks).
    pub fn union(&self, other: &DedicatedColumns) -> DedicatedColumns {
        let mut out = self.clone();
        for k in &other.span {
            if !out.span.contains(k) {
                out.span.push(k.clone());
            }
        }
        for k in &other.resource {
            if !out.resource.contains(k) {
                out.resource.push(k.clone());
            }
        }
        out
    }
}

pub fn dict_utf8() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

pub fn attr_fields() -> Fields {
    Fields::from(vec![
        Field::new(attr_field::KEY, dict_utf8(), false),
        Field::new(attr_field::STR, DataType::Utf8, true),
        Field::new(attr_field::INT, DataType::Int64, true),
        Field::new(attr_field::DBL, DataType::Float64, true),
        Field::new(attr_field::BOOL, DataType::Boolean, true),
        Field::new(attr_field::RAW, DataType::Binary, true),
    ])
}

/// Encoded OTLP `Resource` (generic attributes only), dictionary-encoded.
pub fn resource_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Binary))
}

pub fn attr_list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Struct(attr_fields()), false)))
}

pub(super) fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new(event_field::TIME, DataType::Int64, false),
        Field::new(event_field::NAME, DataType::Utf8, false),
        Field::new(event_field::ATTRS, attr_list_type(), false),
        Field::new(event_field::DROPPED_ATTRS, DataType::UInt32, false),
    ])
}

pub(super) fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new(link_field::TRACE_ID, DataType::Binary, false),
        Field::new(link_field::SPAN_ID, DataType::Binary, false),
        Field::new(link_field::TRACE_STATE, DataType::Utf8, true),
        Field::new(link_field::ATTRS, attr_list_type(), false),
        Field::new(link_field::DROPPED_ATTRS, DataType::UInt32, false),
        Field::new(link_field::FLAGS, DataType::UInt32, false),
    ])
}

/// The span table schema with the given dedicated columns.
pub fn span_schema(dedicated: &DedicatedColumns) -> SchemaRef {
    let mut fields = vec![
        Field::new(col::TRACE_ID, DataType::FixedSizeBinary(16), false),
        Field::new(col::SPAN_ID, DataType::FixedSizeBinary(8), false),
        Field::new(col::PARENT_SPAN_ID, DataType::FixedSizeBinary(8), true),
        Field::new(col::PARENT_OFFSET, DataType::Int32, true),
        Field::new(col::TRACE_STATE, DataType::Utf8, true),
        Field::new(col::FLAGS, DataType::UInt32, false),
        Field::new(col::NAME, dict_utf8(), false),
        Field::new(col::KIND, DataType::Int8, false),
        Field::new(col::START, DataType::Int64, false),
        Field::new(col::DURATION, DataType::Int64, false),
        Field::new(col::STATUS_CODE, DataType::Int8, false),
        Field::new(col::STATUS_MESSAGE, DataType::Utf8, true),
        Field::new(col::SERVICE, dict_utf8(), true),
        Field::new(col::SCOPE_NAME, dict_utf8(), true),
        Field::new(col::SCOPE_VERSION, dict_utf8(), true),
        Field::new(col::SCOPE_ATTRS, attr_list_type(), false),
        Field::new(col::SCOPE_SCHEMA_URL, dict_utf8(), true),
        Field::new(col::RESOURCE_SCHEMA_URL, dict_utf8(), true),
        Field::new(col::RESOURCE_ATTRS, resource_type(), false),
        Field::new(col::SPAN_ATTRS, attr_list_type(), false),
        Field::new(
            col::EVENTS,
            DataType::List(Arc::new(Field::new("item", DataType::Struct(event_fields()), false))),
            false,
        ),
        Field::new(
            col::LINKS,
            DataType::List(Arc::new(Field::new("item", DataType::Struct(link_fields()), false))),
            false,
        ),
        Field::new(col::DROPPED_ATTRS, DataType::UInt32, false),
        Field::new(col::DROPPED_EVENTS, DataType::UInt32, false),
        Field::new(col::DROPPED_LINKS, DataType::UInt32, false),
    ];
    for k in &dedicated.span {
        fields.push(Field::new(DedicatedColumns::span_column(k), dict_utf8(), true));
    }
    for k in &dedicated.resource {
        fields.push(Field::new(DedicatedColumns::resource_column(k), dict_utf8(), true));
    }
    Arc::new(Schema::new(fields))
}
