//! `POST /skein/api/sql[?start&end]`: one read-only SQL query (DataFusion's dialect) over the
//! tenant's spans in the window (default: the last hour). The body is the SQL text, or JSON
//! `{"query": "..."}`. Anything but a single `SELECT`/`WITH` query is refused with 400; at most
//! [`MAX_ROWS`] rows are returned (`"truncated": true` when there were more). The query runs
//! in the engine's bounded memory pool, without spilling (too big a query fails with 422),
//! within `--query-timeout` (503); too deeply nested queries and functions that allocate
//! outside the pool (`repeat`, `generate_series`, …; see `query::sql`) are refused with 400,
//! and recursive CTEs are off. Answer: `{"columns": [...], "rows": [[...], ...], "truncated": false}`;
//! numbers and booleans as JSON, everything else (ids, lists, maps) as its display string,
//! binary ids as lowercase hex.
//!
//! Table `spans`, one row per span, columns:
//! - `trace_id` (16 bytes), `span_id` (8 bytes), `parent_span_id` (8 bytes; NULL for roots,
//!   and for spans read from a block, which store `parent_offset` — the distance to the parent
//!   row — instead), `parent_offset`, `trace_state`, `flags`;
//! - `name`, `kind` (OTLP number: 1 internal, 2 server, 3 client, 4 producer, 5 consumer),
//!   `start_time` (Unix ns), `duration` (ns), `status_code` (0 unset, 1 ok, 2 error),
//!   `status_message`;
//! - `service_name`, `scope_name`, `scope_version`, `scope_attrs`, `scope_schema_url`,
//!   `resource_schema_url`, `resource_attrs` (encoded), `span_attrs` (list of
//!   `{key, str, int, dbl, bool, raw}`), `events`, `links`, `dropped_attrs`,
//!   `dropped_events`, `dropped_links`;
//! - dedicated attribute columns `"span.<key>"` / `"resource.<key>"` as configured.
//!
//! Attributes are read with `attr_str(span_attrs, 'key')`, `attr_int`, `attr_float`,
//! `attr_bool` (also on `resource_attrs`), e.g.
//! `SELECT service_name, count(*) FROM spans WHERE attr_str(span_attrs, 'db.system') = 'postgres' GROUP BY 1`.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{col, lit};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{NativeError, params, range_ns};
use crate::api::AppState;
use crate::query::QueryError;
use crate::spanrows::col as c;
use crate::tenant::{Tenant, TenantError};

/// Rows returned at most.
pub const MAX_ROWS: usize = 10_000;
/// Query text accepted at most.
const MAX_QUERY_BYTES: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
pub struct SqlParams {
    pub start: Option<f64>,
    pub end: Option<f64>,
}

#[derive(Deserialize)]
struct JsonBody {
    query: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct SqlResponse {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub truncated: bool,
}

/// The query text of a body: JSON `{"query": ...}` or the SQL itself.
pub fn query_text(body: &[u8]) -> Result<String, NativeError> {
    if body.len() > MAX_QUERY_BYTES {
        return Err(NativeError::BadRequest(format!("query longer than {MAX_QUERY_BYTES} bytes")));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| NativeError::BadRequest("the query is not UTF-8".into()))?;
    let text = if text.trim_start().starts_with('{') {
        serde_json::from_str::<JsonBody>(text)
            .map_err(|e| NativeError::BadRequest(format!("body: {e}")))?
            .query
    } else {
        text.to_string()
    };
    if text.trim().is_empty() {
        return Err(NativeError::BadRequest("no query given".into()));
    }
    Ok(text)
}

/// Accepts exactly one `SELECT`/`WITH` query.
pub fn check_read_only(sql: &str) -> Result<(), NativeError> {
    let stmts = DFParser::parse_sql(sql)
        .map_err(|e| NativeError::BadRequest(format!("invalid SQL: {e}")))?;
    if stmts.len() != 1 {
        return Err(NativeError::BadRequest(format!(
            "one query expected, got {} statements",
            stmts.len()
        )));
    }
    match stmts.front() {
        Some(Statement::Statement(s)) if matches!(**s, SqlStatement::Query(_)) => Ok(()),
        Some(other) => {
            let text = other.to_string();
            let verb = text.split_whitespace().next().unwrap_or("this statement");
            Err(NativeError::BadRequest(format!(
                "only read-only SELECT/WITH queries are allowed, not {verb}"
            )))
        }
        None => Err(NativeError::BadRequest("no query given".into())),
    }
}

fn json_value(a: &ArrayRef, f: &ArrayFormatter<'_>, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Float64 => serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(i))
            .map_or(Value::Null, Value::Number),
        DataType::Int64 => Value::from(a.as_primitive::<Int64Type>().value(i)),
        _ => Value::String(f.value(i).to_string()),
    }
}

/// Integers as Int64 and floats as Float64 (so they become JSON numbers); other types as is.
fn normalise(a: &ArrayRef) -> ArrayRef {
    let to = match a.data_type() {
        t if t.is_integer() => DataType::Int64,
        t if t.is_floating() => DataType::Float64,
        _ => return a.clone(),
    };
    arrow::compute::cast(a, &to).unwrap_or_else(|_| a.clone())
}

/// Columns and JSON rows of record batches, at most `limit` rows.
pub fn to_json(
    batches: &[RecordBatch],
    limit: usize,
) -> Result<(Vec<Vec<Value>>, bool), QueryError> {
    let mut rows = Vec::new();
    let opts = FormatOptions::default().with_null("");
    for b in batches {
        let cols: Vec<ArrayRef> = b.columns().iter().map(normalise).collect();
        let fmts = cols
            .iter()
            .map(|a| ArrayFormatter::try_new(a.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..b.num_rows() {
            if rows.len() == limit {
                return Ok((rows, true));
            }
            rows.push(cols.iter().zip(&fmts).map(|(a, f)| json_value(a, f, i)).collect());
        }
    }
    Ok((rows, false))
}

pub async fn handler(
    State(state): State<AppState>,
    tenant: Result<Tenant, TenantError>,
    q: Result<Query<SqlParams>, QueryRejection>,
    body: Bytes,
) -> Result<Json<SqlResponse>, NativeError> {
    let p = params(q)?;
    let Tenant(tenant) = tenant?;
    let sql = query_text(&body)?;
    // Before anything parses it: parsing a deeply nested query can overflow the stack.
    if let Err(r) = crate::query::sql::check(&sql) {
        state.engine.runner.refused(r.reason);
        return Err(r.error.into());
    }
    check_read_only(&sql)?;
    let (start, end) = range_ns(p.start, p.end, std::time::Duration::from_secs(3600))?;
    let started = std::time::Instant::now();
    let tables = state
        .engine
        .span_tables(&tenant, |b| b.meta.max_time >= start && b.meta.min_time <= end, (start, end))
        .await?;
    let spans = tables
        .spans
        .filter(col(c::START).gt_eq(lit(start)).and(col(c::START).lt_eq(lit(end))))
        .map_err(QueryError::from)?;
    tables.ctx.register_table("spans", spans.into_view()).map_err(QueryError::from)?;
    crate::query::sql::restrict(&tables.ctx);
    let opts =
        SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let df = tables
        .ctx
        .sql_with_options(&sql, opts)
        .await
        .map_err(|e| NativeError::BadRequest(e.strip_backtrace()))?;
    let optimized = df.clone().into_optimized_plan().map_err(QueryError::from)?;
    if let Err(r) = crate::query::sql::check_plan(&optimized) {
        state.engine.runner.refused(r.reason);
        return Err(r.error.into());
    }
    let columns: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    // The API's query runner bounds the time; memory is the engine pool's.
    let batches = match df.limit(0, Some(MAX_ROWS + 1)).map_err(QueryError::from)?.collect().await {
        Ok(b) => b,
        Err(e) => {
            let e = QueryError::from(e);
            if matches!(e, QueryError::ResourcesExhausted(_)) {
                state.engine.runner.refused("memory");
            }
            return Err(e.into());
        }
    };
    let (rows, truncated) = to_json(&batches, MAX_ROWS)?;
    state.engine.observe("sql", started);
    Ok(Json(SqlResponse { columns, rows, truncated }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_queries_are_accepted() {
        assert!(check_read_only("SELECT 1").is_ok());
        assert!(check_read_only("WITH x AS (SELECT 1 AS a) SELECT a FROM x").is_ok());
        for bad in [
            "DELETE FROM spans",
            "CREATE TABLE t (a INT)",
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/tmp'",
            "COPY spans TO '/tmp/x.parquet'",
            "SELECT 1; SELECT 2",
            "INSERT INTO spans VALUES (1)",
            "SET datafusion.execution.batch_size = 1",
            "EXPLAIN SELECT 1",
            "DROP TABLE spans",
            "not sql",
            "",
        ] {
            assert!(check_read_only(bad).is_err(), "{bad}");
        }
        assert_eq!(query_text(br#"{"query": "SELECT 1"}"#).unwrap(), "SELECT 1");
        assert_eq!(query_text(b"SELECT 2").unwrap(), "SELECT 2");
        assert!(query_text(b"  ").is_err());
        assert!(query_text(br#"{"q": 1}"#).is_err());
    }
}
