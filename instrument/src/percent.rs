//! Percent-decoding (`%XX` escapes of UTF-8 bytes), as W3C Baggage values, the
//! `OTEL_RESOURCE_ATTRIBUTES` variable and gRPC's `grpc-message` header use it.

/// Decodes every `%XX` escape; also says whether some `%` did not start one (it is kept as
/// it is).
fn decode_bytes(s: &str) -> (Vec<u8>, bool) {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut malformed = false;
    let mut i = 0;
    while i < b.len() {
        match (b[i], s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                malformed |= c == b'%';
                out.push(c);
                i += 1;
            }
        }
    }
    (out, malformed)
}

/// Lenient: a `%` that starts no escape is kept, invalid UTF-8 becomes U+FFFD.
pub(crate) fn decode_lossy(s: &str) -> String {
    String::from_utf8_lossy(&decode_bytes(s).0).into_owned()
}

/// Strict: `None` when a `%` starts no escape or the result is not UTF-8.
pub(crate) fn decode_strict(s: &str) -> Option<String> {
    match decode_bytes(s) {
        (_, true) => None,
        (bytes, false) => String::from_utf8(bytes).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(decode_lossy("out%20of%20stock"), "out of stock");
        assert_eq!(decode_lossy("100%"), "100%");
    }

    #[test]
    fn strict_decoding_rejects_what_lenient_decoding_keeps() {
        assert_eq!(decode_strict("DF%2028").as_deref(), Some("DF 28"));
        assert_eq!(decode_strict("100%"), None);
        assert_eq!(decode_strict("%zz"), None);
        assert_eq!(decode_strict("%C3"), None);
        assert_eq!(decode_lossy("%C3"), "\u{FFFD}");
        assert_eq!(decode_strict("h%C3%A9").as_deref(), Some("hé"));
    }
}
