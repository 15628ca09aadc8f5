//! The attribute value length limit: string and bytes values longer than the limit are cut
//! when rows are built, as OpenTelemetry SDKs do with `AttributeValueLengthLimit`.
//!
//! Strings are cut at a UTF-8 character boundary, so the kept prefix may be up to three bytes
//! shorter than the limit. Arrays and kvlists are walked: every string or bytes value inside
//! them is cut on its own. Keys are never cut.

use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// How long one attribute value may be, in bytes; `None` keeps every value whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueLimit(Option<usize>);

impl ValueLimit {
    /// `0` means no limit.
    pub fn new(max_bytes: usize) -> Self {
        ValueLimit((max_bytes > 0).then_some(max_bytes))
    }

    /// The bytes of a value of `len` bytes that are kept.
    pub fn kept(self, len: usize) -> usize {
        self.0.map_or(len, |max| len.min(max))
    }

    /// `s` cut to the limit at a character boundary, and whether it was cut.
    pub fn cut_str(self, s: &str) -> (&str, bool) {
        match self.0 {
            Some(max) if s.len() > max => (&s[..s.floor_char_boundary(max)], true),
            _ => (s, false),
        }
    }

    /// `b` cut to the limit, and whether it was cut.
    pub fn cut_bytes(self, b: &[u8]) -> (&[u8], bool) {
        match self.0 {
            Some(max) if b.len() > max => (&b[..max], true),
            _ => (b, false),
        }
    }

    /// Cuts every string and bytes value in `v` (nested ones included) in place; returns how
    /// many were cut.
    pub fn cut_value(self, v: &mut Value) -> usize {
        let Some(max) = self.0 else { return 0 };
        match v {
            Value::StringValue(s) if s.len() > max => {
                s.truncate(s.floor_char_boundary(max));
                1
            }
            Value::BytesValue(b) if b.len() > max => {
                b.truncate(max);
                1
            }
            Value::ArrayValue(a) => a
                .values
                .iter_mut()
                .filter_map(|v| v.value.as_mut())
                .map(|v| self.cut_value(v))
                .sum(),
            Value::KvlistValue(l) => l
                .values
                .iter_mut()
                .filter_map(|kv| kv.value.as_mut().and_then(|v| v.value.as_mut()))
                .map(|v| self.cut_value(v))
                .sum(),
            _ => 0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, KeyValueList};

    #[test]
    fn strings_are_cut_at_a_character_boundary() {
        let l = ValueLimit::new(4);
        // "é" is two bytes: cutting at byte 4 would split the second one.
        assert_eq!(l.cut_str("aéé"), ("aé", true));
        assert_eq!(l.cut_str("abcd"), ("abcd", false));
        assert_eq!(l.cut_str("abcde"), ("abcd", true));
        // A four-byte character longer than the limit leaves nothing.
        assert_eq!(ValueLimit::new(3).cut_str("😀"), ("", true));
        assert!(!ValueLimit::new(0).cut_str(&"x".repeat(1 << 20)).1, "0: no limit");
        assert_eq!(l.cut_bytes(&[1, 2, 3, 4, 5]), (&[1, 2, 3, 4][..], true));
        assert_eq!(l.kept(10), 4);
        assert_eq!(ValueLimit::new(0).kept(10), 10);
    }

    #[test]
    fn values_inside_arrays_and_kvlists_are_cut_and_counted_one_by_one() {
        let any = |v: Value| AnyValue { value: Some(v) };
        let mut v = Value::ArrayValue(ArrayValue {
            values: vec![
                any(Value::StringValue("long string".into())),
                any(Value::StringValue("ok".into())),
                any(Value::BytesValue(vec![9; 10])),
                any(Value::IntValue(123_456_789)),
                any(Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue {
                        key: "a key longer than the limit".into(),
                        value: Some(any(Value::StringValue("ünïcödé".into()))),
                        ..Default::default()
                    }],
                })),
            ],
        });
        assert_eq!(ValueLimit::new(4).cut_value(&mut v), 3);
        let Value::ArrayValue(a) = &v else { unreachable!() };
        let got: Vec<Option<Value>> = a.values.iter().map(|v| v.value.clone()).collect();
        assert_eq!(got[0], Some(Value::StringValue("long".into())));
        assert_eq!(got[1], Some(Value::StringValue("ok".into())));
        assert_eq!(got[2], Some(Value::BytesValue(vec![9; 4])));
        assert_eq!(got[3], Some(Value::IntValue(123_456_789)));
        let Some(Value::KvlistValue(l)) = &got[4] else { unreachable!() };
        assert_eq!(l.values[0].key, "a key longer than the limit", "keys are kept");
        assert_eq!(l.values[0].value, Some(any(Value::StringValue("ün".into()))));
        assert_eq!(ValueLimit::new(0).cut_value(&mut v), 0);
    }
}
