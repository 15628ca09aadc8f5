//! Tempo-compatible HTTP API, as Grafana's Tempo datasource calls it.

mod traceql_metrics;

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use serde_json::json;

use super::AppState;
use crate::query::search::SearchRequest;
use crate::query::traceql::{
    self, Attribute, CmpOp, Comparison, FieldExpr, Filter, Intrinsic, Literal, Query, Scope,
};
use crate::query::{QueryError, parse_trace_id, secs_to_nanos};
use crate::tenant::Tenant;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(buildinfo))
        .route("/api/traces/{id}", get(trace_v1))
        .route("/api/v2/traces/{id}", get(trace_v2))
        .route("/api/search", get(search))
        .route("/api/v2/search/tags", get(tags_v2))
        .route("/api/search/tags", get(tags_v1))
        .route("/api/v2/search/tag/{tag}/values", get(tag_values_v2))
        .route("/api/search/tag/{tag}/values", get(tag_values_v1))
        .route("/api/metrics/query_range", get(traceql_metrics::query_range))
        .route("/api/metrics/query", get(traceql_metrics::query_instant))
}

type Params = QueryParams<HashMap<String, String>>;

async fn buildinfo() -> Json<serde_json::Value> {
    // Grafana reads `version` as semver; 2.x enables the features skein implements.
    Json(json!({
        "version": "2.7.0",
        "revision": env!("CARGO_PKG_VERSION"),
        "branch": "skein",
        "buildDate": "",
        "buildUser": "skein",
        "goVersion": "none (skein is written in Rust)",
    }))
}

fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/protobuf") || a.contains("application/x-protobuf"))
}

fn int_param(p: &HashMap<String, String>, key: &str) -> Result<Option<i64>, QueryError> {
    match p.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| QueryError::BadRequest(format!("invalid {key}: {v:?} is not an integer"))),
    }
}

/// `start`/`end` in unix seconds → inclusive nanosecond range. `0` means unset (Grafana sends
/// zeros when the time shift is off).
fn range(p: &HashMap<String, String>) -> Result<Option<(i64, i64)>, QueryError> {
    let start = int_param(p, "start")?.filter(|v| *v > 0);
    let end = int_param(p, "end")?.filter(|v| *v > 0);
    Ok(match (start, end) {
        (None, None) => None,
        (s, e) => {
            let s = s.map(secs_to_nanos).unwrap_or(0);
            let e = e.map(|e| secs_to_nanos(e).saturating_add(999_999_999)).unwrap_or(i64::MAX);
            if s > e {
                return Err(QueryError::BadRequest("start must not be after end".into()));
            }
            Some((s, e))
        }
    })
}

#[derive(Clone, PartialEq, Message)]
struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    trace: Option<TracesData>,
    #[prost(int32, tag = "3")]
    status: i32,
    #[prost(string, tag = "4")]
    message: String,
}

async fn load_trace(
    s: &AppState,
    tenant: &str,
    id: &str,
    p: &HashMap<String, String>,
) -> Result<TracesData, QueryError> {
    let id = parse_trace_id(id)?;
    s.engine.trace_by_id(tenant, id, range(p)?).await
}

fn protobuf(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/protobuf")], body).into_response()
}

// The tenant is extracted after the path and query, so their rejections come first.
async fn trace_v2(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Response, QueryError> {
    let trace = load_trace(&s, &tenant, &id, &p).await?;
    Ok(if wants_protobuf(&headers) {
        protobuf(
            TraceByIdResponse { trace: Some(trace), status: 0, message: String::new() }
                .encode_to_vec(),
        )
    } else {
        Json(json!({ "trace": protojson(&trace) })).into_response()
    })
}

async fn trace_v1(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Response, QueryError> {
    let trace = load_trace(&s, &tenant, &id, &p).await?;
    Ok(if wants_protobuf(&headers) {
        protobuf(trace.encode_to_vec())
    } else {
        Json(json!({ "batches": protojson(&trace)["resourceSpans"] })).into_response()
    })
}

const ANY_VALUE_KEYS: [&str; 7] = [
    "stringValue",
    "boolValue",
    "intValue",
    "doubleValue",
    "arrayValue",
    "kvlistValue",
    "bytesValue",
];

/// Drops default values the serde encoding of the OTLP types writes (nulls, zeros, empty
/// strings and lists), as protojson does, except the set member of an `AnyValue` oneof.
/// Returns true when `v` itself is a default and should be dropped.
fn prune_defaults(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !*b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => {
            for x in a.iter_mut() {
                if let Value::Object(_) = x {
                    prune_defaults(x);
                }
            }
            a.is_empty()
        }
        Value::Object(m) => {
            let any_value = !m.is_empty() && m.keys().all(|k| ANY_VALUE_KEYS.contains(&k.as_str()));
            if any_value {
                for x in m.values_mut() {
                    if x.is_object() {
                        prune_defaults(x);
                    }
                }
                return false;
            }
            m.retain(|_, x| !prune_defaults(x));
            m.is_empty()
        }
    }
}

/// OTLP JSON of a trace, as protojson.
fn protojson(trace: &TracesData) -> serde_json::Value {
    let mut v = serde_json::to_value(trace).unwrap_or_default();
    prune_defaults(&mut v);
    if v.is_null() || !v.is_object() {
        v = json!({});
    }
    v
}

/// Splits logfmt `a=b c="d e"` into pairs.
fn logfmt(s: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if chars.next() != Some('=') {
            return Err(QueryError::BadRequest(format!(
                "invalid tags: expected key=value after {key:?}"
            )));
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('"') => break v,
                    Some('\\') => v.extend(chars.next()),
                    Some(c) => v.push(c),
                    None => {
                        return Err(QueryError::BadRequest(
                            "invalid tags: unterminated quote".into(),
                        ));
                    }
                }
            }
        } else {
            std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect()
        };
        out.push((key, value));
    }
}

fn and(a: Option<FieldExpr>, b: FieldExpr) -> Option<FieldExpr> {
    Some(match a {
        Some(a) => FieldExpr::And(Box::new(a), Box::new(b)),
        None => b,
    })
}

/// Legacy `tags=` pairs at most: each is one `&&` operand.
const MAX_LEGACY_TAGS: usize = 64;

/// `a && b && …` as a balanced tree: depth grows with log2 of the operands, not with each.
fn and_all(mut v: Vec<FieldExpr>) -> Option<FieldExpr> {
    if v.len() <= 1 {
        return v.pop();
    }
    let right = v.split_off(v.len() / 2);
    match (and_all(v), and_all(right)) {
        (Some(a), Some(b)) => Some(FieldExpr::And(Box::new(a), Box::new(b))),
        (a, b) => a.or(b),
    }
}

fn cmp(attr: Attribute, op: CmpOp, value: Literal) -> FieldExpr {
    FieldExpr::Cmp(Comparison { attr, op, value })
}

/// The legacy `tags` / `minDuration` / `maxDuration` parameters as a spanset filter.
fn legacy_filter(p: &HashMap<String, String>) -> Result<Option<Filter>, QueryError> {
    let mut expr = None;
    if let Some(tags) = p.get("tags") {
        let pairs = logfmt(tags)?;
        if pairs.len() > MAX_LEGACY_TAGS {
            return Err(QueryError::BadRequest(format!(
                "invalid tags: {} pairs, at most {MAX_LEGACY_TAGS} are allowed",
                pairs.len()
            )));
        }
        let mut all = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let attr = match k.as_str() {
                "service.name" => Attribute::Scoped { scope: Scope::Resource, name: k },
                "name" => Attribute::Intrinsic(Intrinsic::Name),
                _ => Attribute::Scoped { scope: Scope::Any, name: k },
            };
            let mut e = cmp(attr.clone(), CmpOp::Eq, Literal::String(v.clone()));
            if let (Attribute::Scoped { .. }, Ok(n)) = (&attr, v.parse::<i64>()) {
                e = FieldExpr::Or(Box::new(e), Box::new(cmp(attr, CmpOp::Eq, Literal::Int(n))));
            }
            all.push(e);
        }
        expr = and_all(all);
    }
    for (key, op) in [("minDuration", CmpOp::Ge), ("maxDuration", CmpOp::Le)] {
        if let Some(v) = p.get(key).filter(|v| !v.is_empty()) {
            let d = traceql::parse_duration(v)
                .ok_or_else(|| QueryError::BadRequest(format!("invalid {key}: {v:?}")))?;
            expr = and(
                expr,
                cmp(Attribute::Intrinsic(Intrinsic::TraceDuration), op, Literal::Duration(d)),
            );
        }
    }
    Ok(expr.map(|e| Filter { expr: Some(e) }))
}

fn usize_param(
    p: &HashMap<String, String>,
    key: &str,
    default: usize,
    max: usize,
) -> Result<usize, QueryError> {
    Ok(match int_param(p, key)? {
        None | Some(0) => default,
        Some(n) if n < 0 => {
            return Err(QueryError::BadRequest(format!("invalid {key}: must be positive")));
        }
        Some(n) => (n as usize).min(max),
    })
}

async fn search(
    State(s): State<AppState>,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Json<crate::query::search::SearchResponse>, QueryError> {
    let q = p.get("q").map(|q| q.trim()).filter(|q| !q.is_empty());
    let mut query = match q {
        Some(q) => Some(traceql::parse(q)?),
        None => None,
    };
    if let Some(f) = legacy_filter(&p)? {
        let legacy = Query::Filter(f);
        query = Some(match query {
            Some(q) => Query::And(Box::new(q), Box::new(legacy)),
            None => legacy,
        });
    }
    let req = SearchRequest {
        query: query.unwrap_or(Query::Filter(Filter { expr: None })),
        limit: usize_param(&p, "limit", 20, 10_000)?,
        spss: usize_param(&p, "spss", 3, 1_000)?,
        range: range(&p)?,
    };
    Ok(Json(s.engine.search(&tenant, req).await?))
}

async fn tags_v2(
    State(s): State<AppState>,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Json<serde_json::Value>, QueryError> {
    let scopes = s.engine.tag_scopes(&tenant, p.get("scope").map(|x| x.as_str())).await?;
    Ok(Json(json!({ "scopes": scopes })))
}

async fn tags_v1(
    State(s): State<AppState>,
    Tenant(tenant): Tenant,
) -> Result<Json<serde_json::Value>, QueryError> {
    let scopes = s.engine.tag_scopes(&tenant, None).await?;
    let mut names: Vec<String> =
        scopes.into_iter().filter(|sc| sc.name != "intrinsic").flat_map(|sc| sc.tags).collect();
    names.sort();
    names.dedup();
    Ok(Json(json!({ "tagNames": names })))
}

/// A tag name as Grafana sends it: scoped (`resource.x`, `span.x`, `.x`), an intrinsic
/// (either spelling), or an unscoped v1 name. One level of percent-encoding survives axum's
/// decoding because the frontend double-encodes.
pub fn parse_tag(raw: &str) -> Attribute {
    let decoded = if raw.contains('%') {
        url::form_urlencoded::parse(format!("x={raw}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| raw.to_string())
    } else {
        raw.to_string()
    };
    let intrinsic = match decoded.as_str() {
        "name" | "span:name" => Some(Intrinsic::Name),
        "status" | "span:status" => Some(Intrinsic::Status),
        "statusMessage" | "span:statusMessage" => Some(Intrinsic::StatusMessage),
        "kind" | "span:kind" => Some(Intrinsic::Kind),
        "duration" | "span:duration" => Some(Intrinsic::Duration),
        "rootName" | "trace:rootName" => Some(Intrinsic::RootName),
        "rootServiceName" | "trace:rootService" => Some(Intrinsic::RootServiceName),
        "traceDuration" | "trace:duration" => Some(Intrinsic::TraceDuration),
        _ => None,
    };
    if let Some(i) = intrinsic {
        return Attribute::Intrinsic(i);
    }
    for (prefix, scope) in
        [("resource.", Scope::Resource), ("span.", Scope::Span), (".", Scope::Any)]
    {
        if let Some(name) = decoded.strip_prefix(prefix) {
            return Attribute::Scoped { scope, name: name.to_string() };
        }
    }
    Attribute::Scoped { scope: Scope::Any, name: decoded }
}

/// The first spanset filter of `q`, if it parses: autocomplete sends half-typed queries, and
/// values without the narrowing are more useful than an error.
fn values_filter(p: &HashMap<String, String>) -> Option<Filter> {
    let q = p.get("q").map(|q| q.trim()).filter(|q| !q.is_empty())?;
    let mut query = traceql::parse(q).ok()?;
    loop {
        match query {
            Query::Filter(f) => return Some(f),
            Query::And(a, _) | Query::Or(a, _) => query = *a,
        }
    }
}

async fn values(
    s: &AppState,
    tenant: &str,
    tag: &str,
    p: &HashMap<String, String>,
) -> Result<Vec<crate::query::tags::TagValue>, QueryError> {
    let attr = parse_tag(tag);
    let filter = values_filter(p);
    s.engine.tag_values(tenant, &attr, filter.as_ref(), range(p)?).await
}

async fn tag_values_v2(
    State(s): State<AppState>,
    Path(tag): Path<String>,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Json<serde_json::Value>, QueryError> {
    let v = values(&s, &tenant, &tag, &p).await?;
    Ok(Json(if v.is_empty() { json!({}) } else { json!({ "tagValues": v }) }))
}

async fn tag_values_v1(
    State(s): State<AppState>,
    Path(tag): Path<String>,
    QueryParams(p): Params,
    Tenant(tenant): Tenant,
) -> Result<Json<serde_json::Value>, QueryError> {
    let mut names: Vec<String> =
        values(&s, &tenant, &tag, &p).await?.into_iter().map(|t| t.value).collect();
    names.sort();
    names.dedup();
    Ok(Json(json!({ "tagValues": names })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names_accept_both_spellings_and_double_encoding() {
        assert_eq!(
            parse_tag("resource.service.name"),
            Attribute::Scoped { scope: Scope::Resource, name: "service.name".into() }
        );
        assert_eq!(
            parse_tag("resource%2Eservice%2Ename"),
            Attribute::Scoped { scope: Scope::Resource, name: "service.name".into() }
        );
        assert_eq!(
            parse_tag("trace:rootService"),
            Attribute::Intrinsic(Intrinsic::RootServiceName)
        );
        assert_eq!(
            parse_tag(".http.method"),
            Attribute::Scoped { scope: Scope::Any, name: "http.method".into() }
        );
        assert_eq!(
            parse_tag("service.name"),
            Attribute::Scoped { scope: Scope::Any, name: "service.name".into() }
        );
    }

    #[test]
    fn otlp_json_omits_defaults_but_keeps_set_any_values() {
        let mut v = json!({"a": 0, "b": "", "c": null, "d": [], "e": {"f": false},
            "value": {"stringValue": ""}, "g": {"intValue": "0"}, "h": 1});
        prune_defaults(&mut v);
        assert_eq!(v, json!({"value": {"stringValue": ""}, "g": {"intValue": "0"}, "h": 1}));
    }

    #[test]
    fn logfmt_tags_parse_quoted_values() {
        let v = logfmt(r#"service.name=shop http.route="/a b" x=1"#).unwrap();
        assert_eq!(
            v,
            vec![
                ("service.name".into(), "shop".into()),
                ("http.route".into(), "/a b".into()),
                ("x".into(), "1".into())
            ]
        );
        assert!(logfmt("novalue").is_err());
    }

    #[test]
    fn legacy_tags_are_capped_and_combined_as_a_shallow_tree() {
        fn depth(e: &FieldExpr) -> usize {
            match e {
                FieldExpr::And(a, b) | FieldExpr::Or(a, b) => 1 + depth(a).max(depth(b)),
                FieldExpr::Not(e) => 1 + depth(e),
                _ => 0,
            }
        }
        let tags = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(" ");
        let p: HashMap<String, String> = [("tags".to_string(), tags(64))].into();
        let f = legacy_filter(&p).unwrap().unwrap();
        assert_eq!(depth(f.expr.as_ref().unwrap()), 6, "64 operands, log2 deep");
        let p: HashMap<String, String> = [("tags".to_string(), tags(10_000))].into();
        assert!(matches!(legacy_filter(&p), Err(QueryError::BadRequest(_))));
    }
}
