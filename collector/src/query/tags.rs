//! Tag names (from head and block metadata, no scan) and tag values (a DISTINCT query,
//! optionally narrowed by a TraceQL filter).

use std::collections::BTreeSet;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::prelude::{Expr, cast, col, ident, lit};
use serde::Serialize;

use super::compile::filter_expr;
use super::tables::span_tables;
use super::traceql::{Attribute, Filter, Intrinsic, Scope};
use super::udf::{Slot, attr_udf};
use super::{QueryEngine, QueryError};
use crate::spanrows::{DedicatedColumns, SERVICE_NAME_KEY, col as c, column};

/// Intrinsics offered for autocomplete.
pub const INTRINSICS: [&str; 8] = [
    "duration",
    "kind",
    "name",
    "rootName",
    "rootServiceName",
    "status",
    "statusMessage",
    "traceDuration",
];

#[derive(Debug, Serialize)]
pub struct TagScope {
    pub name: String,
    pub tags: Vec<String>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TagValue {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
}

const MAX_VALUES: usize = 1000;

/// The column the distinct values are selected as.
const VALUE: &str = "v";

/// Attribute keys per scope (`resource`, `span`, `intrinsic`), optionally one scope.
pub(super) async fn tag_scopes(
    engine: &QueryEngine,
    tenant: &str,
    scope: Option<&str>,
) -> Result<Vec<TagScope>, QueryError> {
    let mut tags = engine.store.tag_keys(tenant);
    tags.extend(&engine.head.tag_keys(tenant)?);
    tags.extend(&super::peer::peer_tags(engine, tenant).await);
    let mut out = Vec::new();
    let want = |s: &str| scope.is_none_or(|x| x == s || x == "all" || x.is_empty());
    if want("resource") {
        out.push(TagScope { name: "resource".into(), tags: tags.resource.into_iter().collect() });
    }
    if want("span") {
        out.push(TagScope { name: "span".into(), tags: tags.span.into_iter().collect() });
    }
    if want("intrinsic") {
        out.push(TagScope {
            name: "intrinsic".into(),
            tags: INTRINSICS.iter().map(|s| s.to_string()).collect(),
        });
    }
    Ok(out)
}

/// Distinct values of `tag` among spans matching `filter` within `range`.
pub(super) async fn tag_values(
    engine: &QueryEngine,
    tenant: &str,
    tag: &Attribute,
    filter: Option<&Filter>,
    range: Option<(i64, i64)>,
) -> Result<Vec<TagValue>, QueryError> {
    let started = std::time::Instant::now();
    let keyword = |vals: &[&str]| {
        vals.iter().map(|v| TagValue { kind: "keyword", value: v.to_string() }).collect()
    };
    let source: Vec<(Expr, &'static str)> = match tag {
        Attribute::Intrinsic(Intrinsic::Status) => {
            return Ok(keyword(&["error", "ok", "unset"]));
        }
        Attribute::Intrinsic(Intrinsic::Kind) => {
            return Ok(keyword(&[
                "client",
                "consumer",
                "internal",
                "producer",
                "server",
                "unspecified",
            ]));
        }
        Attribute::Intrinsic(Intrinsic::Name) => {
            vec![(cast(col(c::NAME), DataType::Utf8), "string")]
        }
        Attribute::Intrinsic(Intrinsic::StatusMessage) => {
            vec![(col(c::STATUS_MESSAGE), "string")]
        }
        Attribute::Intrinsic(Intrinsic::RootServiceName) => {
            vec![(cast(col(c::SERVICE), DataType::Utf8), "string")]
        }
        Attribute::Intrinsic(Intrinsic::RootName) => {
            vec![(cast(col(c::NAME), DataType::Utf8), "string")]
        }
        Attribute::Intrinsic(Intrinsic::Duration | Intrinsic::TraceDuration) => {
            return Ok(Vec::new());
        }
        Attribute::Scoped { scope, name } => {
            let mut v = Vec::new();
            for resource in [true, false] {
                let in_scope = match scope {
                    Scope::Resource => resource,
                    Scope::Span => !resource,
                    Scope::Any => true,
                };
                if in_scope {
                    v.extend(scoped_sources(resource, name, engine.store.dedicated()));
                }
            }
            v
        }
    };
    let root_only =
        matches!(tag, Attribute::Intrinsic(Intrinsic::RootServiceName | Intrinsic::RootName));
    let peers = crate::cluster::SpanScope {
        traceql: filter.map(|f| super::traceql::Query::Filter(f.clone()).to_string()),
        range,
        ..Default::default()
    };
    let tables = span_tables(
        engine,
        tenant,
        |b| range.is_none_or(|(s, e)| b.meta.max_time >= s && b.meta.min_time <= e),
        &peers,
    )
    .await?;
    let mut df = tables.spans.clone();
    if let Some((s, e)) = range {
        df = df.filter(col(c::START).gt_eq(lit(s)).and(col(c::START).lt_eq(lit(e))))?;
    }
    if root_only {
        df = df.filter(col(c::PARENT_SPAN_ID).is_null().and(col(c::PARENT_OFFSET).is_null()))?;
    }
    if let Some(f) = filter
        && let Some(expr) = filter_expr(f, &tables.dedicated)?
    {
        df = df.filter(expr)?;
    }
    let mut values: BTreeSet<TagValue> = BTreeSet::new();
    for (expr, kind) in source {
        let batches = df
            .clone()
            .select(vec![expr.alias(VALUE)])?
            .filter(col(VALUE).is_not_null())?
            .distinct()?
            .limit(0, Some(MAX_VALUES))?
            .collect()
            .await?;
        for b in batches {
            let a = column(&b, VALUE)?;
            for i in 0..a.len() {
                let value = match a.data_type() {
                    DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
                    DataType::Float64 => a.as_primitive::<Float64Type>().value(i).to_string(),
                    DataType::Boolean => a.as_boolean().value(i).to_string(),
                    _ => arrow::compute::cast(a, &DataType::Utf8)?
                        .as_string::<i32>()
                        .value(i)
                        .to_string(),
                };
                values.insert(TagValue { kind, value });
            }
        }
        if values.len() >= MAX_VALUES {
            break;
        }
    }
    engine.observe("tag_values", started);
    Ok(values.into_iter().take(MAX_VALUES).collect())
}

fn scoped_sources(
    resource: bool,
    key: &str,
    dedicated: &DedicatedColumns,
) -> Vec<(Expr, &'static str)> {
    let list = if resource { c::RESOURCE_ATTRS } else { c::SPAN_ATTRS };
    let a = |slot| attr_udf(slot).call(vec![col(list), lit(key.to_string())]);
    let mut string = a(Slot::Str);
    if resource && key == SERVICE_NAME_KEY {
        string = cast(col(c::SERVICE), DataType::Utf8);
    } else if resource && dedicated.resource.iter().any(|k| k == key) {
        string = datafusion::prelude::coalesce(vec![
            cast(ident(DedicatedColumns::resource_column(key)), DataType::Utf8),
            string,
        ]);
    } else if !resource && dedicated.span.iter().any(|k| k == key) {
        string = datafusion::prelude::coalesce(vec![
            cast(ident(DedicatedColumns::span_column(key)), DataType::Utf8),
            string,
        ]);
    }
    vec![
        (string, "string"),
        (a(Slot::Int), "int"),
        (a(Slot::Float), "float"),
        (a(Slot::Bool), "bool"),
    ]
}
