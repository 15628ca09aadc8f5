//! skein-instrument: trace context in RPC metadata, cheap spans, OTLP export.
//!
//! So far: [`propagation`] — W3C Trace Context, W3C Baggage and B3 codecs as pure functions
//! over header values, the `OTEL_PROPAGATORS` composite, and carriers for `http::HeaderMap`
//! and tonic `MetadataMap`; [`config`] from the OTel environment variables; [`sampler`].

pub mod config;
pub mod propagation;
pub mod sampler;
