//! Span rows: the Arrow layout of the span table and the codec between OTLP and it.

pub mod schema;
