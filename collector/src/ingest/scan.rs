//! Pre-decode census of an OTLP trace export: counts spans and estimates the bytes the decoded
//! request would occupy, from the protobuf wire format or the JSON text, without materialising
//! anything. A body of empty spans is two bytes per span on the wire but hundreds of bytes per
//! span decoded (16 MiB → several GB), so the limits must be checked before prost or serde
//! runs. See `ingest/DESIGN.md` for what is counted.
#![deny(clippy::arithmetic_side_effects)]

use std::mem::size_of;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use crate::error::{Coded, ErrorCode};

/// Deepest nesting of attribute values (arrays and kvlists) accepted; real attributes nest a
/// few levels, and the bound keeps the scanner's recursion small.
pub const MAX_VALUE_DEPTH: usize = 32;

/// Deepest JSON nesting accepted (serde_json itself stops at 128).
pub const MAX_JSON_DEPTH: usize = 64;

/// What one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    pub max_spans: usize,
    pub max_decoded_bytes: usize,
}

/// What a request holds, as far as the scan got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub spans: usize,
    /// Repeated elements (resources, scopes, spans, events, links, attributes, values).
    pub elements: usize,
    /// Estimated heap bytes of the decoded request: element structs plus string/bytes payloads.
    pub decoded_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request holds more than {limit} spans (--max-spans-per-request)")]
    TooManySpans { limit: usize },
    #[error("request would decode to more than {limit} bytes (--max-decoded-bytes)")]
    TooManyBytes { limit: usize },
}

impl Coded for ScanError {
    fn code(&self) -> ErrorCode {
        match self {
            ScanError::Malformed(_) => ErrorCode::InvalidArgument,
            ScanError::TooManySpans { .. } | ScanError::TooManyBytes { .. } => ErrorCode::TooLarge,
        }
    }
}

type Result<T> = std::result::Result<T, ScanError>;

struct Tally {
    limits: ScanLimits,
    census: Census,
}

impl Tally {
    fn new(limits: ScanLimits) -> Self {
        Tally { limits, census: Census::default() }
    }

    /// One repeated element of `bytes` decoded bytes.
    fn element(&mut self, bytes: usize) -> Result<()> {
        self.census.elements = self.census.elements.saturating_add(1);
        self.bytes(bytes)
    }

    fn bytes(&mut self, bytes: usize) -> Result<()> {
        self.census.decoded_bytes = self.census.decoded_bytes.saturating_add(bytes);
        if self.census.decoded_bytes > self.limits.max_decoded_bytes {
            return Err(ScanError::TooManyBytes { limit: self.limits.max_decoded_bytes });
        }
        Ok(())
    }

    fn span(&mut self) -> Result<()> {
        self.census.spans = self.census.spans.saturating_add(1);
        if self.census.spans > self.limits.max_spans {
            return Err(ScanError::TooManySpans { limit: self.limits.max_spans });
        }
        self.element(size_of::<Span>())
    }

    /// A string or bytes field: its payload (the `String`/`Vec` itself is inside its struct).
    fn payload(&mut self, len: usize) -> Result<()> {
        self.bytes(len)
    }
}

// ---------------------------------------------------------------------------------------------
// Protobuf

/// One field of a message on the wire; only length-delimited payloads are kept.
enum Field<'a> {
    Len(u32, &'a [u8]),
    Scalar,
}

struct Wire<'a> {
    buf: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err(ScanError::Malformed("truncated varint"));
            };
            self.buf = rest;
            let shift = i.saturating_mul(7);
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ScanError::Malformed("varint longer than 10 bytes"))
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        match self.buf.get(n..) {
            Some(rest) => {
                self.buf = rest;
                Ok(())
            }
            None => Err(ScanError::Malformed("truncated field")),
        }
    }

    fn next(&mut self) -> Result<Option<Field<'a>>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| ScanError::Malformed("field number"))?;
        if number == 0 {
            return Err(ScanError::Malformed("field number 0"));
        }
        match key & 7 {
            0 => {
                self.varint()?;
                Ok(Some(Field::Scalar))
            }
            1 => self.skip(8).map(|()| Some(Field::Scalar)),
            5 => self.skip(4).map(|()| Some(Field::Scalar)),
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| ScanError::Malformed("length"))?;
                let Some((payload, rest)) = self.buf.split_at_checked(len) else {
                    return Err(ScanError::Malformed("length beyond the end of the message"));
                };
                self.buf = rest;
                Ok(Some(Field::Len(number, payload)))
            }
            // Groups (3, 4) are not used by OTLP; prost refuses other wire types.
            _ => Err(ScanError::Malformed("unsupported wire type")),
        }
    }
}

/// Visits the length-delimited fields of `msg`.
fn fields(msg: &[u8], mut f: impl FnMut(u32, &[u8]) -> Result<()>) -> Result<()> {
    let mut w = Wire { buf: msg };
    while let Some(field) = w.next()? {
        if let Field::Len(n, payload) = field {
            f(n, payload)?;
        }
    }
    Ok(())
}

/// Counts an `ExportTraceServiceRequest` in protobuf, refusing it as soon as a limit is passed.
pub fn scan_protobuf(body: &[u8], limits: ScanLimits) -> Result<Census> {
    let mut t = Tally::new(limits);
    t.bytes(size_of::<ExportTraceServiceRequest>())?;
    fields(body, |n, b| match n {
        1 => {
            t.element(size_of::<ResourceSpans>())?;
            resource_spans(&mut t, b)
        }
        _ => t.payload(b.len()),
    })?;
    Ok(t.census)
}

fn resource_spans(t: &mut Tally, msg: &[u8]) -> Result<()> {
    fields(msg, |n, b| match n {
        1 => resource(t, b),
        2 => {
            t.element(size_of::<ScopeSpans>())?;
            scope_spans(t, b)
        }
        _ => t.payload(b.len()),
    })
}

fn resource(t: &mut Tally, msg: &[u8]) -> Result<()> {
    fields(msg, |n, b| match n {
        1 => key_value(t, b, 0),
        3 => {
            t.element(size_of::<EntityRef>())?;
            // Its key lists are repeated strings: each is a `String` of its own.
            fields(b, |_, s| t.payload(s.len().saturating_add(size_of::<String>())))
        }
        _ => t.payload(b.len()),
    })
}

fn scope_spans(t: &mut Tally, msg: &[u8]) -> Result<()> {
    fields(msg, |n, b| match n {
        // The scope: name, version, attributes.
        1 => fields(b, |n, b| if n == 3 { key_value(t, b, 0) } else { t.payload(b.len()) }),
        2 => {
            t.span()?;
            span(t, b)
        }
        _ => t.payload(b.len()),
    })
}

fn span(t: &mut Tally, msg: &[u8]) -> Result<()> {
    fields(msg, |n, b| match n {
        9 => key_value(t, b, 0),
        11 => {
            t.element(size_of::<Event>())?;
            fields(b, |n, b| if n == 3 { key_value(t, b, 0) } else { t.payload(b.len()) })
        }
        13 => {
            t.element(size_of::<Link>())?;
            fields(b, |n, b| if n == 4 { key_value(t, b, 0) } else { t.payload(b.len()) })
        }
        // Status (15) holds one string; ids, names and trace state are payloads.
        _ => t.payload(b.len()),
    })
}

/// One `KeyValue` element (of an attribute list or a kvlist value).
fn key_value(t: &mut Tally, msg: &[u8], depth: usize) -> Result<()> {
    t.element(size_of::<KeyValue>())?;
    fields(msg, |n, b| if n == 2 { any_value(t, b, depth) } else { t.payload(b.len()) })
}

fn any_value(t: &mut Tally, msg: &[u8], depth: usize) -> Result<()> {
    if depth >= MAX_VALUE_DEPTH {
        return Err(ScanError::Malformed("attribute values nested too deeply"));
    }
    let deeper = depth.saturating_add(1);
    fields(msg, |n, b| match n {
        // ArrayValue: repeated AnyValue.
        5 => fields(b, |n, b| {
            if n == 1 {
                t.element(size_of::<AnyValue>())?;
                any_value(t, b, deeper)
            } else {
                t.payload(b.len())
            }
        }),
        // KeyValueList: repeated KeyValue.
        6 => fields(b, |n, b| if n == 1 { key_value(t, b, deeper) } else { t.payload(b.len()) }),
        _ => t.payload(b.len()),
    })
}

// ---------------------------------------------------------------------------------------------
// JSON

/// Decoded size of one element of the array under `key` (OTLP/JSON uses lowerCamelCase; the
/// proto names are accepted too). Unknown arrays are charged as the largest element.
fn json_element_size(key: &[u8]) -> usize {
    match key {
        b"resourceSpans" | b"resource_spans" => size_of::<ResourceSpans>(),
        b"scopeSpans" | b"scope_spans" => size_of::<ScopeSpans>(),
        b"spans" => size_of::<Span>(),
        b"events" => size_of::<Event>(),
        b"links" => size_of::<Link>(),
        b"attributes" => size_of::<KeyValue>(),
        b"entityRefs" | b"entity_refs" => size_of::<EntityRef>(),
        _ => size_of::<Span>().max(size_of::<KeyValue>()).max(size_of::<AnyValue>()),
    }
}

struct Frame<'a> {
    /// Arrays: the key they are the value of (None inside arrays or at the top).
    array: Option<Option<&'a [u8]>>,
}

/// Counts an `ExportTraceServiceRequest` in OTLP/JSON: every object or scalar in an array is
/// an element, spans are the objects of a `spans` array, strings are payloads. Only the
/// structure is checked (balanced brackets, terminated strings); serde checks the rest.
pub fn scan_json(body: &[u8], limits: ScanLimits) -> Result<Census> {
    let mut t = Tally::new(limits);
    t.bytes(size_of::<ExportTraceServiceRequest>())?;
    let mut stack: Vec<Frame<'_>> = Vec::new();
    // The key whose value comes next, once its `:` has been seen.
    let mut key: Option<&[u8]> = None;
    let mut expect_key = false;
    // Whether the last structural byte was one after which a value starts.
    let mut value_next = false;
    let mut i = 0usize;
    while let Some(&c) = body.get(i) {
        i = i.saturating_add(1);
        match c {
            b'"' => {
                let start = i;
                loop {
                    match body.get(i) {
                        None => return Err(ScanError::Malformed("unterminated JSON string")),
                        Some(b'\\') => i = i.saturating_add(2),
                        Some(b'"') => break,
                        Some(_) => i = i.saturating_add(1),
                    }
                }
                let s = body.get(start..i).unwrap_or_default();
                i = i.saturating_add(1);
                if expect_key {
                    key = Some(s);
                    expect_key = false;
                } else {
                    array_element(&mut t, &stack)?;
                    t.payload(s.len())?;
                }
            }
            b'{' | b'[' => {
                array_element(&mut t, &stack)?;
                if stack.len() >= MAX_JSON_DEPTH {
                    return Err(ScanError::Malformed("JSON nested too deeply"));
                }
                let in_object = matches!(stack.last(), Some(Frame { array: None }));
                let owner = if in_object { key.take() } else { None };
                if c == b'{' {
                    stack.push(Frame { array: None });
                    expect_key = true;
                } else {
                    stack.push(Frame { array: Some(owner) });
                }
            }
            b'}' | b']' => {
                let closes_array = c == b']';
                match stack.pop() {
                    Some(f) if f.array.is_some() == closes_array => {}
                    _ => return Err(ScanError::Malformed("unbalanced JSON brackets")),
                }
                expect_key = false;
            }
            b',' => expect_key = matches!(stack.last(), Some(Frame { array: None })),
            b' ' | b'\t' | b'\n' | b'\r' => continue,
            b':' => {}
            // A number or literal: one element, counted at its first byte.
            _ if value_next => array_element(&mut t, &stack)?,
            _ => {}
        }
        value_next = matches!(c, b'[' | b',' | b':');
    }
    if !stack.is_empty() {
        return Err(ScanError::Malformed("unbalanced JSON brackets"));
    }
    Ok(t.census)
}

/// A value starting inside an array is one element of it.
fn array_element(t: &mut Tally, stack: &[Frame<'_>]) -> Result<()> {
    match stack.last() {
        Some(Frame { array: Some(owner) }) => {
            let owner = owner.unwrap_or_default();
            if owner == b"spans" { t.span() } else { t.element(json_element_size(owner)) }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};
    use prost::Message;

    const ROOMY: ScanLimits = ScanLimits { max_spans: usize::MAX, max_decoded_bytes: usize::MAX };

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn full_span(i: u8) -> Span {
        Span {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            name: format!("span-{i}"),
            attributes: vec![kv("a", "b"), kv("http.route", "/x")],
            events: vec![Event {
                name: "e".into(),
                attributes: vec![kv("x", "y")],
                ..Default::default()
            }],
            links: vec![Link { trace_id: vec![1; 16], ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn counts_spans_and_elements_of_a_real_request() {
        let req = request((1..=3).map(full_span).collect());
        let c = scan_protobuf(&req.encode_to_vec(), ROOMY).unwrap();
        assert_eq!(c.spans, 3);
        // 1 resource + 1 scope + 3 × (span + 2 attributes + event + its attribute + link).
        assert_eq!(c.elements, 2 + 3 * 6);
        assert!(c.decoded_bytes >= 3 * size_of::<Span>(), "{c:?}");
    }

    #[test]
    fn a_body_of_empty_spans_is_refused_by_count_before_decoding() {
        // Two bytes per span on the wire.
        let req = request(vec![Span::default(); 200_001]);
        let body = req.encode_to_vec();
        assert!(body.len() < 500_000);
        let limits = ScanLimits { max_spans: 100_000, max_decoded_bytes: usize::MAX };
        assert_eq!(scan_protobuf(&body, limits), Err(ScanError::TooManySpans { limit: 100_000 }));
        let limits = ScanLimits { max_spans: usize::MAX, max_decoded_bytes: 8 << 20 };
        assert_eq!(scan_protobuf(&body, limits), Err(ScanError::TooManyBytes { limit: 8 << 20 }));
        assert_eq!(scan_protobuf(&body, ROOMY).unwrap().spans, 200_001);
    }

    #[test]
    fn empty_attributes_count_towards_decoded_bytes() {
        let span = Span { attributes: vec![KeyValue::default(); 100_000], ..Default::default() };
        let body = request(vec![span]).encode_to_vec();
        let limits = ScanLimits { max_spans: 10, max_decoded_bytes: body.len() * 8 };
        assert!(matches!(scan_protobuf(&body, limits), Err(ScanError::TooManyBytes { .. })));
    }

    #[test]
    fn malformed_wire_is_refused() {
        let body = request(vec![full_span(1)]).encode_to_vec();
        for cut in [1, body.len() / 2, body.len() - 1] {
            assert!(
                matches!(scan_protobuf(&body[..cut], ROOMY), Err(ScanError::Malformed(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(scan_protobuf(&[0x0b], ROOMY), Err(ScanError::Malformed(_))), "group");
        assert!(matches!(scan_protobuf(&[0xff; 11], ROOMY), Err(ScanError::Malformed(_))));
        assert!(scan_protobuf(&[], ROOMY).is_ok());
    }

    #[test]
    fn deeply_nested_values_are_refused() {
        let mut v = AnyValue { value: Some(any_value::Value::StringValue("x".into())) };
        for _ in 0..MAX_VALUE_DEPTH + 1 {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let span = Span {
            attributes: vec![KeyValue { key: "k".into(), value: Some(v), ..Default::default() }],
            ..Default::default()
        };
        let body = request(vec![span]).encode_to_vec();
        assert!(matches!(scan_protobuf(&body, ROOMY), Err(ScanError::Malformed(_))));
    }

    #[test]
    fn json_spans_and_elements_are_counted() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}}]},"scopeSpans":[{"spans":[{"traceId":"01","name":"a","attributes":[{"key":"k","value":{"arrayValue":{"values":[{"intValue":"1"},{"intValue":2}]}}}]},{}]}]}]}"#;
        let c = scan_json(body, ROOMY).unwrap();
        assert_eq!(c.spans, 2);
        // resource, scope, 2 spans, 2 attributes, 2 array values.
        assert_eq!(c.elements, 8);
        assert!(c.decoded_bytes > 2 * size_of::<Span>());
    }

    #[test]
    fn json_arrays_of_empty_objects_are_refused() {
        let mut body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":["#.to_vec();
        body.extend(std::iter::repeat_n(&b"{},"[..], 1000).flatten());
        body.extend_from_slice(b"{}]}]}]}");
        let limits = ScanLimits { max_spans: 1000, max_decoded_bytes: usize::MAX };
        assert_eq!(scan_json(&body, limits), Err(ScanError::TooManySpans { limit: 1000 }));
        let limits = ScanLimits { max_spans: usize::MAX, max_decoded_bytes: body.len() * 8 };
        assert!(matches!(scan_json(&body, limits), Err(ScanError::TooManyBytes { .. })));
        assert_eq!(scan_json(&body, ROOMY).unwrap().spans, 1001);
    }

    #[test]
    fn json_structure_is_checked() {
        for bad in [&br#"{"a":["#[..], br#"{"a":"x}"#, b"[}", b"]"] {
            assert!(matches!(scan_json(bad, ROOMY), Err(ScanError::Malformed(_))), "{bad:?}");
        }
        let deep = "[".repeat(MAX_JSON_DEPTH + 1) + &"]".repeat(MAX_JSON_DEPTH + 1);
        assert!(matches!(scan_json(deep.as_bytes(), ROOMY), Err(ScanError::Malformed(_))));
        assert!(scan_json(br#"{"s":"a\"]["}"#, ROOMY).is_ok(), "escapes stay inside strings");
    }
}
