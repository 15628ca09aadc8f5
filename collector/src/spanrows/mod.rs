//! Span rows: the Arrow layout of the span table and the codec between OTLP and it.
//!
//! This module stands at the bottom of the crate (it uses nothing else of the collector):
//! `head` builds rows with [`SpanBatchBuilder`] (cutting attribute values to a limit,
//! [`truncate`]), `store` writes them to blocks, `query` reads
//! them back and turns them into OTLP with [`to_traces_data`].

pub mod build;
pub mod decode;
pub mod schema;
pub mod sealed;
pub mod tags;
pub mod truncate;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use build::{
    Appended, BuildLimits, DEFAULT_MAX_ATTRIBUTE_BYTES, RowInfo, SpanBatchBuilder, clamp_i64,
    resource_spans_cost,
};
pub use decode::{column, decode_resource, to_traces_data};
pub use schema::{
    DedicatedColumns, SERVICE_NAME_KEY, attr_field, attr_fields, attr_list_type, col, dict_utf8,
    event_field, link_field, resource_type, span_schema,
};
pub use sealed::SealedRows;
pub use tags::{TagKeys, tag_keys_of};
