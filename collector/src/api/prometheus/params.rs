//! Request parameters of the Prometheus API: merged from the query string and, for POST, an
//! `application/x-www-form-urlencoded` body (Grafana's default); times as float seconds or
//! RFC 3339, steps as float seconds or PromQL/Go durations (`15`, `15s`, `1m0s`).

use axum::http::{HeaderMap, header};

use crate::promql::PromqlError;
use crate::promql::time_range::MILLIS;

pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Params {
        let mut v: Vec<(String, String)> = query
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if form {
            v.extend(url::form_urlencoded::parse(body).into_owned());
        }
        Params(v)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    pub fn required(&self, key: &str) -> Result<&str, PromqlError> {
        self.get(key).ok_or_else(|| PromqlError::BadData(format!("missing parameter {key:?}")))
    }

    /// A time in ms, or `default` when absent.
    pub fn time(&self, key: &str, default: i64) -> Result<i64, PromqlError> {
        match self.get(key) {
            None => Ok(default),
            Some(s) => parse_time(s).ok_or_else(|| {
                PromqlError::BadData(format!(
                    "invalid parameter {key:?}: cannot parse {s:?} to a valid timestamp"
                ))
            }),
        }
    }

    pub fn limit(&self) -> Result<Option<usize>, PromqlError> {
        match self.get("limit") {
            None => Ok(None),
            Some(s) => match s.parse::<usize>() {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(PromqlError::BadData(format!("invalid parameter \"limit\": {s:?}"))),
            },
        }
    }
}

/// Float seconds (`1435781451.781`) or RFC 3339; in ms, within [`MILLIS`] bounds.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(f) = s.parse::<f64>() {
        return MILLIS.from_seconds("time", f).ok();
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Float seconds or a duration string; in ms.
pub fn parse_step(s: &str) -> Result<i64, PromqlError> {
    if let Ok(f) = s.parse::<f64>() {
        return MILLIS
            .from_seconds("step", f)
            .map_err(|_| PromqlError::BadData(format!("invalid parameter \"step\": {s:?}")));
    }
    let d = promql_parser::util::parse_duration(s)
        .map_err(|e| PromqlError::BadData(format!("invalid parameter \"step\": {e}")))?;
    Ok(MILLIS.span("step", d)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps_in_every_form_grafana_sends() {
        assert_eq!(parse_time("4"), Some(4000));
        assert_eq!(parse_time("1435781451.781"), Some(1435781451781));
        assert_eq!(parse_time("2015-07-01T20:10:51.781Z"), Some(1435781451781));
        assert_eq!(parse_time("nope"), None);
        assert_eq!(parse_step("15").unwrap(), 15_000);
        assert_eq!(parse_step("1m0s").unwrap(), 60_000);
        assert_eq!(parse_step("0.5").unwrap(), 500);
        assert!(parse_step("x").is_err());
    }

    #[test]
    fn out_of_range_times_and_steps_are_refused_not_saturated() {
        assert_eq!(parse_time("-1e300"), None);
        assert_eq!(parse_time("1e300"), None);
        assert_eq!(parse_time("NaN"), None);
        assert!(parse_step("1e300").is_err());
        assert!(parse_step("Inf").is_err());
        assert!(parse_step("2562047788015215y").is_err());
    }

    #[test]
    fn form_body_and_query_string_are_merged() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
        let p = Params::new(Some("match[]=a&x="), &h, b"query=sum%28x%29&match[]=b");
        assert_eq!(p.get("query"), Some("sum(x)"));
        assert_eq!(p.all("match[]"), vec!["a", "b"]);
        assert_eq!(p.get("x"), None);
    }
}
