//! Label sets of series: sorted by name, names and values shared (`Arc<str>`) so that the
//! evaluator can copy them per step without allocating.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The label holding a series' metric name.
pub const METRIC_NAME: &str = "__name__";

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(Arc<str>, Arc<str>)>);

impl Labels {
    /// Builds a label set; empty values are dropped (in Prometheus an empty value means absent).
    pub fn new<N: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        Labels(v)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(n, _)| n.as_ref().cmp(name)).ok().map(|i| self.0[i].1.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets (or, with an empty value, removes) one label.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|(n, _)| n.as_ref().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = value.into(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, (name.into(), value.into())),
        }
    }

    pub fn without_name(&self) -> Labels {
        self.retain(|n| n != METRIC_NAME)
    }

    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Labels {
        Labels(self.0.iter().filter(|(n, _)| keep(n)).cloned().collect())
    }

    /// Only the named labels.
    pub fn keep(&self, names: &[String]) -> Labels {
        self.retain(|n| names.iter().any(|k| k == n))
    }

    /// All labels except the named ones and the metric name.
    pub fn drop(&self, names: &[String]) -> Labels {
        self.retain(|n| n != METRIC_NAME && !names.iter().any(|k| k == n))
    }

    pub fn hash64(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.iter().map(|(n, v)| (n.to_string(), serde_json::Value::from(v))).collect(),
        )
    }
}

/// `{a="1", b="2"}`, as Prometheus prints label sets (name first when present).
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = self.get(METRIC_NAME) {
            f.write_str(name)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for (n, v) in self.iter().filter(|(n, _)| *n != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n}=\"{}\"", escape_value(v))?;
        }
        f.write_str("}")
    }
}

/// Escapes a label value for the text exposition format and PromQL strings.
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Turns an attribute key into a valid label name (`http.route` → `http_route`).
pub fn sanitize_name(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_deduplicated_and_empty_values_are_absent() {
        let l = Labels::new([("b", "2"), ("a", "1"), ("c", ""), ("a", "x")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "2")]);
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn set_inserts_replaces_and_removes() {
        let mut l = Labels::new([("b", "2")]);
        l.set("a", "1");
        l.set("b", "3");
        assert_eq!(l.to_string(), "{a=\"1\", b=\"3\"}");
        l.set("a", "");
        assert_eq!(l.to_string(), "{b=\"3\"}");
    }

    #[test]
    fn attribute_keys_become_label_names() {
        assert_eq!(sanitize_name("http.route"), "http_route");
        assert_eq!(sanitize_name("1x"), "_1x");
    }
}
