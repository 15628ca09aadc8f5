//! Headers sent with every export request (`OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, `SKEIN_PROFILING_HEADERS`, or set in code): the
//! OpenTelemetry list format, and a type that keeps the values out of logs.
//!
//! Values are usually credentials (`authorization=Bearer …`), so [`Headers`]' `Debug` shows
//! names only, every value is marked sensitive (HTTP/2 never indexes it in HPACK tables), and
//! a malformed entry is reported by its key or position, never by its text.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::percent::decode_strict;

/// Request headers for an exporter. Later entries replace earlier ones of the same name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(HeaderName, HeaderValue)>,
    /// Entries of the parsed lists that were skipped, described without their values; warned
    /// about once, when the pipeline is installed.
    skipped: Vec<String>,
}

/// A header name or value that cannot be sent. Says which name, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid header {name:?}: {reason}")]
pub struct HeaderError {
    pub name: String,
    pub reason: &'static str,
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (name, _) in &self.entries {
            m.entry(&name.as_str(), &format_args!("<redacted>"));
        }
        m.finish()
    }
}

/// Validates one header; the value is marked sensitive.
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), HeaderError> {
    let err = |reason| HeaderError { name: name.to_string(), reason };
    if name.is_empty() {
        return Err(err("the name is empty"));
    }
    let name_ok = HeaderName::from_bytes(name.as_bytes()).map_err(|_| err("not a header name"))?;
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| err("the value has characters a header cannot carry"))?;
    v.set_sensitive(true);
    Ok((name_ok, v))
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds (or replaces) one header.
    pub fn insert(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        let (name, value) = header(name, value)?;
        self.put(name, value);
        Ok(())
    }

    /// Removes the header `name` (any case), if present.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.as_str().eq_ignore_ascii_case(name));
    }

    fn put(&mut self, name: HeaderName, value: HeaderValue) {
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, value));
    }

    /// Parses the OpenTelemetry list format: comma-separated `key=value`, whitespace around
    /// keys and values trimmed, both percent-decoded. A malformed entry is skipped and
    /// remembered (see [`Headers::skipped`]); `source` names the list in that description.
    pub fn parse(list: &str, source: &str) -> Headers {
        let mut h = Headers::default();
        for (i, entry) in list.split(',').enumerate() {
            if entry.trim().is_empty() {
                continue;
            }
            let position = i.saturating_add(1);
            // Without `=` the entry may be a bare secret (`Bearer abc`): never name it.
            let Some((k, v)) = entry.split_once('=') else {
                h.skipped.push(format!("entry {position} of {source} (no '=')"));
                continue;
            };
            let Some(key) = decode_strict(k.trim()) else {
                h.skipped.push(format!("entry {position} of {source} (key not percent-encoded)"));
                continue;
            };
            let Some(value) = decode_strict(v.trim()) else {
                h.skipped.push(format!("{key:?} in {source} (value not percent-encoded)"));
                continue;
            };
            match header(&key, &value) {
                Ok((name, value)) => h.put(name, value),
                Err(e) => h.skipped.push(format!("{:?} in {source} ({})", e.name, e.reason)),
            }
        }
        h
    }

    /// These headers with `over`'s replacing those of the same name (a signal-specific list
    /// over the general one).
    pub fn merged(&self, over: &Headers) -> Headers {
        let mut out = self.clone();
        for (name, value) in &over.entries {
            out.put(name.clone(), value.clone());
        }
        out.skipped.extend(over.skipped.iter().cloned());
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// The value of `name`, for callers that need it (e.g. tests); it is a secret.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.entries.iter().find(|(n, _)| n.as_str().eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Descriptions (keys or positions, no values) of the entries parsing skipped.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Warns once about skipped entries, naming them without their values.
    pub(crate) fn warn_skipped(&self) {
        if !self.skipped.is_empty() {
            tracing::warn!(
                target: "skein_instrument",
                skipped = self.skipped.join("; "),
                "malformed header entries are not sent"
            );
        }
    }

    pub(crate) fn to_header_map(&self) -> HeaderMap {
        let mut m = HeaderMap::with_capacity(self.entries.len());
        for (name, value) in &self.entries {
            m.insert(name.clone(), value.clone());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(h: &Headers) -> Vec<(String, String)> {
        h.entries
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect()
    }

    #[test]
    fn parses_comma_separated_pairs_trimmed_and_percent_decoded() {
        let h = Headers::parse(
            " Authorization = Bearer%20abc%3D%3D ,x-scope-orgid=team-a,, api%2Dkey=k=v== ",
            "OTEL_EXPORTER_OTLP_HEADERS",
        );
        assert_eq!(
            pairs(&h),
            vec![
                ("authorization".into(), "Bearer abc==".into()),
                ("x-scope-orgid".into(), "team-a".into()),
                ("api-key".into(), "k=v==".into()),
            ]
        );
        assert!(h.skipped().is_empty());
        assert_eq!(h.get("AUTHORIZATION").map(HeaderValue::is_sensitive), Some(true));
        // `+` is a plus, not a space; an empty value is a value.
        let h = Headers::parse("a=x+y,b=", "V");
        assert_eq!(pairs(&h), vec![("a".into(), "x+y".into()), ("b".into(), String::new())]);
    }

    #[test]
    fn a_later_entry_and_the_signal_specific_list_win_per_key() {
        let general = Headers::parse("authorization=old,x-a=1,authorization=general", "G");
        assert_eq!(general.get("authorization").and_then(|v| v.to_str().ok()), Some("general"));
        let traces = Headers::parse("Authorization=traces,x-b=2", "T");
        let m = general.merged(&traces);
        assert_eq!(
            pairs(&m),
            vec![
                ("x-a".into(), "1".into()),
                ("authorization".into(), "traces".into()),
                ("x-b".into(), "2".into()),
            ]
        );
    }

    #[test]
    fn malformed_entries_are_skipped_and_named_without_their_values() {
        let h = Headers::parse(
            "Bearer s3cret-bare,ok=1,bad key=s3cret-a,k=%zzs3cret-b,inj=s3cret%0Aevil,=s3cret-c,\
             %zz=x,h=%C3",
            "OTEL_EXPORTER_OTLP_HEADERS",
        );
        assert_eq!(pairs(&h), vec![("ok".into(), "1".into())]);
        let skipped = h.skipped().join("\n");
        assert_eq!(h.skipped().len(), 7, "{skipped}");
        assert!(!skipped.contains("s3cret"), "{skipped}");
        assert!(skipped.contains("entry 1 of OTEL_EXPORTER_OTLP_HEADERS (no '=')"), "{skipped}");
        for key in ["\"bad key\"", "\"k\"", "\"inj\"", "\"\"", "entry 7", "\"h\""] {
            assert!(skipped.contains(key), "{key} in {skipped}");
        }
        let mut h = Headers::new();
        assert_eq!(h.insert("x", "a\r\nb").map_err(|e| e.name), Err("x".to_string()));
        assert!(h.insert("", "v").is_err());
        assert!(h.insert("authorization", "Bearer t").is_ok());
        assert!(!format!("{:?}", h.insert("x", "s3cret\n")).contains("s3cret"));
    }

    #[test]
    fn debug_shows_names_never_values() {
        let h = Headers::parse("authorization=Bearer%20s3cret,x-scope-orgid=t", "V");
        let d = format!("{h:?}");
        assert_eq!(d, r#"{"authorization": <redacted>, "x-scope-orgid": <redacted>}"#);
        let map = h.to_header_map();
        assert!(!format!("{map:?}").contains("s3cret"), "{map:?}");
    }
}
