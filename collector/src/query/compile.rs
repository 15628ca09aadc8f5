//! Compiles a TraceQL spanset filter into a DataFusion predicate over span rows.
//!
//! Trace-level intrinsics (`rootName`, `rootServiceName`, `traceDuration`) refer to columns
//! `t_root_name`, `t_root_service`, `t_duration` that the caller joins in from the trace
//! summaries when [`needs_trace`] says so. Attribute comparisons follow TraceQL: a missing
//! attribute never matches (SQL NULL), an unscoped `.x` matches span or resource attributes,
//! and regexes are anchored at both ends.

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Operator};
use datafusion::prelude::{Expr, cast, coalesce, col, ident, lit};

use super::QueryError;
use super::traceql::{
    Attribute, CmpOp, Comparison, FieldExpr, Filter, Intrinsic, KindLit, Literal, Scope, StatusLit,
};
use super::udf::{Slot, attr_udf};
use crate::spanrows::{DedicatedColumns, SERVICE_NAME_KEY, col as c};

// Trace-level columns: merged per-trace summaries (see `tables::trace_summaries`), joined to
// span rows where a filter needs them.
pub const T_START: &str = "t_start";
pub const T_END: &str = "t_end";
pub const T_ROOT_NAME: &str = "t_root_name";
pub const T_ROOT_SERVICE: &str = "t_root_service";
pub const T_SPAN_COUNT: &str = "t_span_count";
pub const T_DURATION: &str = "t_duration";
/// The summaries' trace id, renamed for the join.
pub const T_TRACE_ID: &str = "t_trace_id";

fn binary(l: Expr, op: CmpOp, r: Expr) -> Expr {
    let op = match op {
        CmpOp::Eq => Operator::Eq,
        CmpOp::Ne => Operator::NotEq,
        CmpOp::Gt => Operator::Gt,
        CmpOp::Ge => Operator::GtEq,
        CmpOp::Lt => Operator::Lt,
        CmpOp::Le => Operator::LtEq,
        CmpOp::Match => Operator::RegexMatch,
        CmpOp::NotMatch => Operator::RegexNotMatch,
    };
    Expr::BinaryExpr(BinaryExpr::new(Box::new(l), op, Box::new(r)))
}

/// True when the filter uses trace-level intrinsics.
pub fn needs_trace(f: &Filter) -> bool {
    fn walk(e: &FieldExpr) -> bool {
        match e {
            FieldExpr::And(a, b) | FieldExpr::Or(a, b) => walk(a) || walk(b),
            FieldExpr::Not(a) => walk(a),
            FieldExpr::Cmp(c) => matches!(
                c.attr,
                Attribute::Intrinsic(
                    Intrinsic::RootName | Intrinsic::RootServiceName | Intrinsic::TraceDuration
                )
            ),
        }
    }
    f.expr.as_ref().is_some_and(walk)
}

/// The predicate for a spanset filter; `None` for `{}`.
pub fn filter_expr(f: &Filter, dedicated: &DedicatedColumns) -> Result<Option<Expr>, QueryError> {
    f.expr.as_ref().map(|e| field_expr(e, dedicated)).transpose()
}

fn field_expr(e: &FieldExpr, dedicated: &DedicatedColumns) -> Result<Expr, QueryError> {
    Ok(match e {
        FieldExpr::And(a, b) => field_expr(a, dedicated)?.and(field_expr(b, dedicated)?),
        FieldExpr::Or(a, b) => field_expr(a, dedicated)?.or(field_expr(b, dedicated)?),
        FieldExpr::Not(a) => Expr::Not(Box::new(field_expr(a, dedicated)?)),
        FieldExpr::Cmp(cmp) => comparison(cmp, dedicated)?,
    })
}

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::BadRequest(msg.into())
}

/// A literal as the value to compare against, regexes anchored.
fn value(op: CmpOp, v: &Literal) -> Result<Expr, QueryError> {
    Ok(match v {
        Literal::String(s) if matches!(op, CmpOp::Match | CmpOp::NotMatch) => {
            lit(format!("^(?:{s})$"))
        }
        Literal::String(s) => lit(s.clone()),
        Literal::Int(i) => lit(*i),
        Literal::Float(f) => lit(*f),
        Literal::Bool(b) => lit(*b),
        Literal::Duration(d) => lit(*d),
        other => return Err(bad(format!("cannot compare with {other:?} here"))),
    })
}

/// A dictionary-encoded string column, for comparison with `op`. Equality compares the
/// dictionary directly (DataFusion matches the literal against the dictionary once, then keys);
/// other operators need plain strings.
fn string_col(name: &str, op: CmpOp) -> Expr {
    match op {
        CmpOp::Eq | CmpOp::Ne => col(name),
        _ => cast(col(name), DataType::Utf8),
    }
}

fn comparison(cmp: &Comparison, dedicated: &DedicatedColumns) -> Result<Expr, QueryError> {
    let op = cmp.op;
    match &cmp.attr {
        Attribute::Intrinsic(i) => intrinsic(*i, op, &cmp.value),
        Attribute::Scoped { scope, name } => {
            let span = || scoped(false, name, op, &cmp.value, dedicated);
            let res = || scoped(true, name, op, &cmp.value, dedicated);
            match scope {
                Scope::Span => span(),
                Scope::Resource => res(),
                Scope::Any => Ok(span()?.or(res()?)),
            }
        }
    }
}

fn intrinsic(i: Intrinsic, op: CmpOp, v: &Literal) -> Result<Expr, QueryError> {
    let nil_check = |e: Expr| match op {
        CmpOp::Eq => Ok(e.is_null()),
        CmpOp::Ne => Ok(e.is_not_null()),
        _ => Err(bad("nil can only be compared with = or !=")),
    };
    match i {
        Intrinsic::Status => {
            let code = match v {
                Literal::Status(StatusLit::Unset) => 0i8,
                Literal::Status(StatusLit::Ok) => 1,
                Literal::Status(StatusLit::Error) => 2,
                Literal::Int(n) => i8::try_from(*n).map_err(|_| bad("status code out of range"))?,
                other => {
                    return Err(bad(format!(
                        "status compares with error, ok or unset, not {other:?}"
                    )));
                }
            };
            Ok(binary(col(c::STATUS_CODE), op, lit(code)))
        }
        Intrinsic::Kind => {
            let code = match v {
                Literal::Kind(k) => match k {
                    KindLit::Unspecified => 0i8,
                    KindLit::Internal => 1,
                    KindLit::Server => 2,
                    KindLit::Client => 3,
                    KindLit::Producer => 4,
                    KindLit::Consumer => 5,
                },
                other => return Err(bad(format!("kind compares with a span kind, not {other:?}"))),
            };
            Ok(binary(col(c::KIND), op, lit(code)))
        }
        Intrinsic::Duration | Intrinsic::TraceDuration => {
            let column = if i == Intrinsic::Duration { col(c::DURATION) } else { col(T_DURATION) };
            match v {
                Literal::Duration(d) | Literal::Int(d) => Ok(binary(column, op, lit(*d))),
                Literal::Float(f) => Ok(binary(cast(column, DataType::Float64), op, lit(*f))),
                other => {
                    Err(bad(format!("duration compares with a duration like 100ms, not {other:?}")))
                }
            }
        }
        Intrinsic::Name
        | Intrinsic::StatusMessage
        | Intrinsic::RootName
        | Intrinsic::RootServiceName => {
            let column = match i {
                Intrinsic::Name => string_col(c::NAME, op),
                Intrinsic::StatusMessage => col(c::STATUS_MESSAGE),
                Intrinsic::RootName => col(T_ROOT_NAME),
                _ => col(T_ROOT_SERVICE),
            };
            match v {
                Literal::String(_) => Ok(binary(column, op, value(op, v)?)),
                Literal::Nil => nil_check(column),
                other => Err(bad(format!("{i:?} compares with a string, not {other:?}"))),
            }
        }
    }
}

pub(super) fn attr(slot: Slot, resource: bool, key: &str) -> Expr {
    let list = if resource { c::RESOURCE_ATTRS } else { c::SPAN_ATTRS };
    attr_udf(slot).call(vec![col(list), lit(key.to_string())])
}

/// The string value of an attribute, looking in its dedicated column first.
pub(super) fn string_attr(
    resource: bool,
    key: &str,
    dedicated: &DedicatedColumns,
    op: CmpOp,
) -> Expr {
    if resource && key == SERVICE_NAME_KEY {
        return string_col(c::SERVICE, op);
    }
    let dedicated = if resource {
        dedicated.resource.iter().any(|k| k == key).then(|| DedicatedColumns::resource_column(key))
    } else {
        dedicated.span.iter().any(|k| k == key).then(|| DedicatedColumns::span_column(key))
    };
    match dedicated {
        Some(column) => {
            coalesce(vec![cast(ident(&column), DataType::Utf8), attr(Slot::Str, resource, key)])
        }
        None => attr(Slot::Str, resource, key),
    }
}

fn scoped(
    resource: bool,
    key: &str,
    op: CmpOp,
    v: &Literal,
    dedicated: &DedicatedColumns,
) -> Result<Expr, QueryError> {
    Ok(match v {
        Literal::String(_) => binary(string_attr(resource, key, dedicated, op), op, value(op, v)?),
        _ if matches!(op, CmpOp::Match | CmpOp::NotMatch) => {
            return Err(bad("=~ and !~ need a string"));
        }
        Literal::Int(i) | Literal::Duration(i) => binary(
            attr(Slot::Int, resource, key),
            op,
            lit(*i),
        )
        .or(binary(attr(Slot::Float, resource, key), op, lit(*i as f64))),
        Literal::Float(f) => binary(attr(Slot::Float, resource, key), op, lit(*f)).or(binary(
            cast(attr(Slot::Int, resource, key), DataType::Float64),
            op,
            lit(*f),
        )),
        Literal::Bool(b) => binary(attr(Slot::Bool, resource, key), op, lit(*b)),
        Literal::Nil => {
            let present = string_attr(resource, key, dedicated, op)
                .is_not_null()
                .or(attr(Slot::Int, resource, key).is_not_null())
                .or(attr(Slot::Float, resource, key).is_not_null())
                .or(attr(Slot::Bool, resource, key).is_not_null());
            match op {
                CmpOp::Ne => present,
                CmpOp::Eq => Expr::Not(Box::new(present)),
                _ => return Err(bad("nil can only be compared with = or !=")),
            }
        }
        Literal::Status(_) | Literal::Kind(_) => {
            return Err(bad(format!("attribute {key} cannot be compared with {v:?}")));
        }
    })
}

/// `trace_id = X` for a fixed-size binary id.
pub fn trace_id_eq(id: &[u8; 16]) -> Expr {
    col(c::TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec()))))
}

/// `trace_id IN (...)`.
pub fn trace_id_in(ids: &[[u8; 16]]) -> Expr {
    let list =
        ids.iter().map(|id| lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))).collect();
    col(c::TRACE_ID).in_list(list, false)
}

/// `expr` as a physical expression over batches of `schema`, for reads without a plan: type
/// coercion and simplification first, as the planner would (functions such as `coalesce` are
/// only executable once simplified).
pub fn physical(
    ctx: &datafusion::prelude::SessionContext,
    expr: Expr,
    schema: &arrow::datatypes::Schema,
) -> Result<std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>, QueryError> {
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    let df = std::sync::Arc::new(datafusion::common::DFSchema::try_from(schema.clone())?);
    let simplifier =
        ExprSimplifier::new(SimplifyContext::builder().with_schema(df.clone()).build());
    let expr = simplifier.simplify(simplifier.coerce(expr, &df)?)?;
    Ok(ctx.create_physical_expr(expr, &df)?)
}
