//! Binary operators: arithmetic, comparison (with and without `bool`) and the set operators
//! `and`/`or`/`unless`, with `on`/`ignoring` and `group_left`/`group_right` vector matching as
//! Prometheus' `VectorBinop` defines it.

use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{BinModifier, LabelModifier, VectorMatchCardinality};

use super::PromqlError;
use super::labels::Labels;
use super::value::{Sample, Value};

fn is_comparison(op: TokenId) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

fn is_set(op: TokenId) -> bool {
    matches!(op, token::T_LAND | token::T_LOR | token::T_LUNLESS)
}

/// Arithmetic results drop the metric name: `a + b` is no longer an `a`.
fn drops_name(op: TokenId) -> bool {
    !is_comparison(op) && !is_set(op)
}

/// `(value, keep)`: comparisons keep the left value when true; arithmetic always keeps.
fn elem(op: TokenId, l: f64, r: f64) -> Result<(f64, bool), PromqlError> {
    Ok(match op {
        token::T_ADD => (l + r, true),
        token::T_SUB => (l - r, true),
        token::T_MUL => (l * r, true),
        token::T_DIV => (l / r, true),
        token::T_MOD => (l % r, true),
        token::T_POW => (l.powf(r), true),
        token::T_ATAN2 => (l.atan2(r), true),
        token::T_EQLC => (l, l == r),
        token::T_NEQ => (l, l != r),
        token::T_GTR => (l, l > r),
        token::T_LSS => (l, l < r),
        token::T_GTE => (l, l >= r),
        token::T_LTE => (l, l <= r),
        other => {
            return Err(PromqlError::Unsupported(format!(
                "binary operator {:?}",
                token::TokenType::new(other).to_string()
            )));
        }
    })
}

pub fn binary(
    op: TokenId,
    lhs: Value,
    rhs: Value,
    modifier: Option<&BinModifier>,
) -> Result<Value, PromqlError> {
    let return_bool = modifier.is_some_and(|m| m.return_bool);
    if let Some(m) = modifier
        && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
    {
        return Err(PromqlError::Unsupported("fill modifiers".into()));
    }
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => {
            let (v, keep) = elem(op, l, r)?;
            Ok(Value::Scalar(if is_comparison(op) { f64::from(u8::from(keep)) } else { v }))
        }
        (Value::Vector(v), Value::Scalar(s)) => vector_scalar(op, v, s, false, return_bool),
        (Value::Scalar(s), Value::Vector(v)) => vector_scalar(op, v, s, true, return_bool),
        (Value::Vector(l), Value::Vector(r)) => {
            let matching = modifier.and_then(|m| m.matching.as_ref());
            if is_set(op) {
                return Ok(Value::Vector(set_op(op, l, r, matching)));
            }
            let card = modifier.map(|m| &m.card).unwrap_or(&VectorMatchCardinality::OneToOne);
            vector_vector(op, l, r, card, matching, return_bool).map(Value::Vector)
        }
        (l, r) => Err(PromqlError::BadData(format!(
            "binary operation between {} and {} is not allowed",
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn vector_scalar(
    op: TokenId,
    v: Vec<Sample>,
    s: f64,
    scalar_left: bool,
    return_bool: bool,
) -> Result<Value, PromqlError> {
    let mut out = Vec::with_capacity(v.len());
    for mut sample in v {
        let (l, r) = if scalar_left { (s, sample.v) } else { (sample.v, s) };
        let (mut value, mut keep) = elem(op, l, r)?;
        // A comparison keeps the vector's value even when the scalar is on the left.
        if is_comparison(op) && scalar_left {
            value = r;
        }
        if return_bool {
            value = f64::from(u8::from(keep));
            keep = true;
        }
        if keep {
            sample.v = value;
            if drops_name(op) || return_bool {
                sample.labels = sample.labels.without_name();
            }
            out.push(sample);
        }
    }
    Ok(Value::Vector(out))
}

/// The matching key of a sample: its `on` labels, or all but the `ignoring` ones (and the name).
fn signature(l: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(LabelModifier::Include(ls)) => l.keep(&ls.labels),
        Some(LabelModifier::Exclude(ls)) => l.drop(&ls.labels),
        None => l.drop(&[]),
    }
}

fn set_op(
    op: TokenId,
    l: Vec<Sample>,
    r: Vec<Sample>,
    matching: Option<&LabelModifier>,
) -> Vec<Sample> {
    let right: HashSet<Labels> = r.iter().map(|s| signature(&s.labels, matching)).collect();
    match op {
        token::T_LAND => {
            l.into_iter().filter(|s| right.contains(&signature(&s.labels, matching))).collect()
        }
        token::T_LUNLESS => {
            l.into_iter().filter(|s| !right.contains(&signature(&s.labels, matching))).collect()
        }
        _ => {
            let left: HashSet<Labels> = l.iter().map(|s| signature(&s.labels, matching)).collect();
            let mut out = l;
            out.extend(r.into_iter().filter(|s| !left.contains(&signature(&s.labels, matching))));
            out
        }
    }
}

fn vector_vector(
    op: TokenId,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
    return_bool: bool,
) -> Result<Vec<Sample>, PromqlError> {
    let (include, swapped) = match card {
        VectorMatchCardinality::OneToOne => (None, false),
        VectorMatchCardinality::ManyToOne(ls) => (Some(&ls.labels), false),
        VectorMatchCardinality::OneToMany(ls) => (Some(&ls.labels), true),
        VectorMatchCardinality::ManyToMany => {
            return Err(PromqlError::BadData("many-to-many matching for arithmetic".into()));
        }
    };
    // After swapping, `many` is the side with possibly several series per match group.
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_side: HashMap<Labels, &Sample> = HashMap::with_capacity(one.len());
    for s in &one {
        let sig = signature(&s.labels, matching);
        if let Some(dup) = one_side.get(&sig) {
            let side = if swapped { "left" } else { "right" };
            return Err(PromqlError::Execution(format!(
                "found duplicate series for the match group {sig} on the {side} hand-side of the \
                 operation: [{}, {}];many-to-many matching not allowed: matching labels must be \
                 unique on one side",
                s.labels, dup.labels
            )));
        }
        one_side.insert(sig, s);
    }
    let mut matched: HashMap<Labels, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for m in &many {
        let sig = signature(&m.labels, matching);
        let Some(o) = one_side.get(&sig) else { continue };
        let (l, r) = if swapped { (o.v, m.v) } else { (m.v, o.v) };
        let (mut value, keep) = elem(op, l, r)?;
        if return_bool {
            value = f64::from(u8::from(keep));
        } else if !keep {
            continue;
        }
        let mut labels =
            if drops_name(op) || return_bool { m.labels.without_name() } else { m.labels.clone() };
        match (include, matching) {
            (None, Some(LabelModifier::Include(on))) => labels = labels.keep(&on.labels),
            (None, Some(LabelModifier::Exclude(ign))) => {
                labels = labels.retain(|n| !ign.labels.iter().any(|i| i == n))
            }
            _ => {}
        }
        if let Some(include) = include {
            // `group_x(labels)` copies these labels from the "one" side.
            for name in include {
                labels.set(name, o.labels.get(name).unwrap_or(""));
            }
        }
        let seen = matched.entry(sig).or_default();
        if include.is_none() && !seen.is_empty() {
            return Err(PromqlError::Execution(
                "multiple matches for labels: many-to-one matching must be explicit \
                 (group_left/group_right)"
                    .into(),
            ));
        }
        if !seen.insert(labels.clone()) {
            return Err(PromqlError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        out.push(Sample { labels, v: value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)], v: f64) -> Sample {
        Sample { labels: Labels::new(pairs.iter().copied()), v }
    }

    fn modifier(text: &str) -> promql_parser::parser::BinaryExpr {
        match promql_parser::parser::parse(text).unwrap() {
            promql_parser::parser::Expr::Binary(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_ratio_matches_series_by_their_labels_and_drops_the_name() {
        let b = modifier("a / b");
        let l = vec![
            s(&[("__name__", "a"), ("svc", "x")], 1.0),
            s(&[("__name__", "a"), ("svc", "y")], 3.0),
        ];
        let r = vec![s(&[("__name__", "b"), ("svc", "x")], 4.0)];
        let out =
            binary(b.op.id(), Value::Vector(l), Value::Vector(r), b.modifier.as_ref()).unwrap();
        assert_eq!(out, Value::Vector(vec![s(&[("svc", "x")], 0.25)]));
    }

    #[test]
    fn group_left_copies_labels_from_the_one_side() {
        let b = modifier("a * on(svc) group_left(team) b");
        let l = vec![s(&[("svc", "x"), ("op", "1")], 2.0), s(&[("svc", "x"), ("op", "2")], 3.0)];
        let r = vec![s(&[("svc", "x"), ("team", "t")], 10.0)];
        let out =
            binary(b.op.id(), Value::Vector(l), Value::Vector(r), b.modifier.as_ref()).unwrap();
        assert_eq!(
            out,
            Value::Vector(vec![
                s(&[("svc", "x"), ("op", "1"), ("team", "t")], 20.0),
                s(&[("svc", "x"), ("op", "2"), ("team", "t")], 30.0)
            ])
        );
    }

    #[test]
    fn one_to_one_with_several_matches_is_an_error_not_a_guess() {
        let b = modifier("a + on(svc) b");
        let l = vec![s(&[("svc", "x"), ("op", "1")], 2.0), s(&[("svc", "x"), ("op", "2")], 3.0)];
        let r = vec![s(&[("svc", "x")], 10.0)];
        let err = binary(b.op.id(), Value::Vector(l), Value::Vector(r), b.modifier.as_ref());
        assert!(matches!(err, Err(PromqlError::Execution(_))), "{err:?}");
    }

    #[test]
    fn comparisons_filter_or_return_bool() {
        let v = || {
            vec![s(&[("__name__", "a"), ("k", "1")], 1.0), s(&[("__name__", "a"), ("k", "2")], 5.0)]
        };
        let b = modifier("a > 2");
        let out = binary(b.op.id(), Value::Vector(v()), Value::Scalar(2.0), b.modifier.as_ref());
        assert_eq!(out.unwrap(), Value::Vector(vec![s(&[("__name__", "a"), ("k", "2")], 5.0)]));
        let b = modifier("2 < bool a");
        let out = binary(b.op.id(), Value::Scalar(2.0), Value::Vector(v()), b.modifier.as_ref());
        assert_eq!(out.unwrap(), Value::Vector(vec![s(&[("k", "1")], 0.0), s(&[("k", "2")], 1.0)]));
    }

    #[test]
    fn set_operators_match_on_all_labels_but_the_name() {
        let l = vec![
            s(&[("__name__", "a"), ("k", "1")], 1.0),
            s(&[("__name__", "a"), ("k", "2")], 2.0),
        ];
        let r = vec![
            s(&[("__name__", "b"), ("k", "2")], 9.0),
            s(&[("__name__", "b"), ("k", "3")], 9.0),
        ];
        let run = |q: &str| {
            let b = modifier(q);
            match binary(
                b.op.id(),
                Value::Vector(l.clone()),
                Value::Vector(r.clone()),
                b.modifier.as_ref(),
            )
            .unwrap()
            {
                Value::Vector(v) => v.iter().map(|s| s.v).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(run("a and b"), vec![2.0]);
        assert_eq!(run("a unless b"), vec![1.0]);
        assert_eq!(run("a or b"), vec![1.0, 2.0, 9.0]);
    }
}
