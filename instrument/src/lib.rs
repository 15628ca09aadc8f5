//! skein-instrument: trace context in RPC metadata, cheap spans, OTLP export.
//!
//! So far: [`propagation`] — W3C Trace Context, W3C Baggage and B3 codecs as pure functions
//! over header values, the `OTEL_PROPAGATORS` composite, and carriers for `http::HeaderMap`
//! and tonic `MetadataMap`.

pub mod propagation;
