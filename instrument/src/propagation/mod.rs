//! Trace context propagation formats as pure functions over header values.
//!
//! Decoders never panic and treat anything invalid (wrong length, non-lowercase hex, all-zero
//! ids, forbidden versions) as "absent", as the W3C and B3 specifications require.

pub mod b3;
pub mod baggage;
pub mod composite;
pub mod w3c;

/// A 16-byte trace id; all-zero is invalid and never produced by a decoder.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; all-zero is invalid and never produced by a decoder.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SpanId(pub [u8; 8]);

/// The remote parent carried by a request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// B3 debug flag (`d` / `x-b3-flags: 1`): sample regardless of local policy.
    pub debug: bool,
    /// W3C `tracestate`, validated, in order; empty for B3.
    pub trace_state: Vec<(String, String)>,
}

#[cfg(feature = "opentelemetry")]
mod otel {
    //! Conversions from and to the OpenTelemetry API's span context.

    use opentelemetry::trace::{self as ot, TraceFlags, TraceState};

    use super::{SpanContext, SpanId, TraceId};

    impl From<&ot::SpanContext> for SpanContext {
        fn from(sc: &ot::SpanContext) -> SpanContext {
            SpanContext {
                trace_id: TraceId(sc.trace_id().to_bytes()),
                span_id: SpanId(sc.span_id().to_bytes()),
                sampled: sc.is_sampled(),
                debug: false,
                trace_state: sc
                    .trace_state()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }
        }
    }

    impl From<ot::SpanContext> for SpanContext {
        fn from(sc: ot::SpanContext) -> SpanContext {
            SpanContext::from(&sc)
        }
    }

    impl SpanContext {
        /// This context as the OpenTelemetry API's (`remote`: whether it came from another
        /// process).
        pub fn to_otel(&self, remote: bool) -> ot::SpanContext {
            let state = if self.trace_state.is_empty() {
                TraceState::default()
            } else {
                // Already validated when it was extracted; an entry OpenTelemetry refuses
                // drops the state rather than the context.
                TraceState::from_key_value(
                    self.trace_state.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .unwrap_or_default()
            };
            ot::SpanContext::new(
                ot::TraceId::from_bytes(self.trace_id.0),
                ot::SpanId::from_bytes(self.span_id.0),
                if self.sampled || self.debug {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                remote,
                state,
            )
        }
    }
}

/// Decodes exactly `N` bytes of lowercase hex; `None` on any other input.
pub(crate) fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl TraceId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl SpanId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

#[cfg(test)]
pub(crate) mod fuzz {
    //! A tiny deterministic generator for "never panics" tests over many inputs.

    pub struct Gen(u64);

    impl Gen {
        pub fn new(seed: u64) -> Self {
            Gen(seed)
        }
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        /// Strings mixing valid-looking fragments with random (incl. multi-byte) characters.
        pub fn string(&mut self, fragments: &[&str]) -> String {
            let mut s = String::new();
            for _ in 0..(self.next() % 12) {
                match self.next() % 4 {
                    0 | 1 => s.push_str(fragments[(self.next() as usize) % fragments.len()]),
                    2 => s.push(
                        ['-', '=', ',', ';', ' ', '0', 'f', 'F', 'z', 'é', '\u{1F600}', '%']
                            [(self.next() % 12) as usize],
                    ),
                    _ => {
                        let len = s.len();
                        let cut = (self.next() as usize) % (len + 1);
                        if s.is_char_boundary(cut) {
                            s.truncate(cut);
                        }
                    }
                }
            }
            s
        }
    }
}
