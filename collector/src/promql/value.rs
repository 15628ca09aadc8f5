//! Query values (scalar, string, instant vector, range vector) and their JSON form, exactly as
//! Prometheus' HTTP API writes them: timestamps as float seconds, values as strings.

use serde_json::{Value as Json, json};

use super::labels::Labels;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub v: f64,
}

/// One series of a range vector (or of a range query result); points are (ms, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// Prometheus formats values with Go's `strconv.FormatFloat(v, 'f', -1, 64)`: shortest exact
/// decimal, no exponent; Rust's `Display` for f64 does the same.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Milliseconds → JSON seconds: whole seconds as integers (`4`, as Prometheus prints them),
/// others with millisecond precision.
pub fn format_time(ms: i64) -> Json {
    if ms % 1000 == 0 { json!(ms / 1000) } else { json!(ms as f64 / 1000.0) }
}

fn point(t: i64, v: f64) -> Json {
    json!([format_time(t), format_value(v)])
}

/// The `data` object of a query answer evaluated at `t` (ms).
pub fn to_json(value: &Value, t: i64) -> Json {
    let result = match value {
        Value::Scalar(v) => point(t, *v),
        Value::String(s) => json!([format_time(t), s]),
        Value::Vector(samples) => Json::Array(
            samples
                .iter()
                .map(|s| json!({"metric": s.labels.to_json(), "value": point(t, s.v)}))
                .collect(),
        ),
        Value::Matrix(series) => Json::Array(
            series
                .iter()
                .map(|s| {
                    json!({
                        "metric": s.labels.to_json(),
                        "values": s.points.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ),
    };
    json!({"resultType": value.type_name(), "result": result})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_like_go_strconv() {
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn scalar_result_matches_grafanas_health_check_answer() {
        let j = to_json(&Value::Scalar(2.0), 4000);
        assert_eq!(j.to_string(), r#"{"result":[4,"2"],"resultType":"scalar"}"#);
        assert_eq!(format_time(1435781430781).to_string(), "1435781430.781");
    }
}
