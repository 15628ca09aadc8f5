//! Aggregation operators over an instant vector, grouped `by` or `without` labels.

use std::collections::HashMap;

use promql_parser::parser::LabelModifier;
use promql_parser::parser::token::{self, TokenId};

use super::PromqlError;
use super::functions::quantile;
use super::labels::Labels;
use super::value::Sample;

fn group_labels(l: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        Some(LabelModifier::Include(ls)) => l.keep(&ls.labels),
        Some(LabelModifier::Exclude(ls)) => l.drop(&ls.labels),
        None => Labels::default(),
    }
}

/// `param` is k of `topk`/`bottomk` or φ of `quantile`.
pub fn aggregate(
    op: TokenId,
    param: Option<f64>,
    modifier: Option<&LabelModifier>,
    input: Vec<Sample>,
) -> Result<Vec<Sample>, PromqlError> {
    // Groups in order of first appearance, so results are stable from step to step.
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: HashMap<Labels, Vec<Sample>> = HashMap::new();
    for s in input {
        let key = group_labels(&s.labels, modifier);
        groups
            .entry(key)
            .or_insert_with_key(|k| {
                order.push(k.clone());
                Vec::new()
            })
            .push(s);
    }
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let Some(members) = groups.remove(&key) else { continue };
        let values = || members.iter().map(|s| s.v);
        let n = members.len() as f64;
        let v = match op {
            token::T_SUM => values().sum(),
            token::T_AVG => values().sum::<f64>() / n,
            token::T_COUNT => n,
            token::T_GROUP => 1.0,
            // A NaN is replaced by any number, as Prometheus does.
            token::T_MIN => values().fold(f64::NAN, |a, b| if b < a || a.is_nan() { b } else { a }),
            token::T_MAX => values().fold(f64::NAN, |a, b| if b > a || a.is_nan() { b } else { a }),
            token::T_STDDEV | token::T_STDVAR => {
                let mean = values().sum::<f64>() / n;
                let var = values().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                if op == token::T_STDDEV { var.sqrt() } else { var }
            }
            token::T_QUANTILE => quantile(param.unwrap_or(f64::NAN), values().collect()),
            token::T_TOPK | token::T_BOTTOMK => {
                out.extend(top(op == token::T_TOPK, param.unwrap_or(0.0), members));
                continue;
            }
            other => {
                return Err(PromqlError::Unsupported(format!(
                    "aggregation {}",
                    token::TokenType::new(other)
                )));
            }
        };
        out.push(Sample { labels: key, v });
    }
    Ok(out)
}

/// The k largest (or smallest) samples with their own labels; NaN counts as the smallest.
fn top(largest: bool, k: f64, mut members: Vec<Sample>) -> Vec<Sample> {
    // Also refuses NaN.
    if k.is_nan() || k < 1.0 {
        return Vec::new();
    }
    let k = if k >= members.len() as f64 { members.len() } else { k as usize };
    members.sort_by(|a, b| {
        let (a, b) = (a.v, b.v);
        match (a.is_nan(), b.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) if largest => b.total_cmp(&a),
            (false, false) => a.total_cmp(&b),
        }
    });
    members.truncate(k);
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(svc: &str, op: &str, v: f64) -> Sample {
        Sample { labels: Labels::new([("__name__", "m"), ("svc", svc), ("op", op)]), v }
    }

    fn agg(q: &str, input: Vec<Sample>) -> Vec<Sample> {
        let promql_parser::parser::Expr::Aggregate(a) = promql_parser::parser::parse(q).unwrap()
        else {
            panic!("not an aggregation")
        };
        let param = a.param.as_deref().and_then(|p| match p {
            promql_parser::parser::Expr::NumberLiteral(n) => Some(n.val),
            _ => None,
        });
        aggregate(a.op.id(), param, a.modifier.as_ref(), input).unwrap()
    }

    #[test]
    fn sum_by_keeps_only_the_grouping_labels() {
        let out =
            agg("sum by (svc) (m)", vec![s("a", "1", 1.0), s("a", "2", 2.0), s("b", "1", 5.0)]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Sample { labels: Labels::new([("svc", "a")]), v: 3.0 });
        assert_eq!(out[1].v, 5.0);
    }

    #[test]
    fn without_drops_the_named_labels_and_the_metric_name() {
        let out = agg("max without (op) (m)", vec![s("a", "1", 1.0), s("a", "2", 2.0)]);
        assert_eq!(out, vec![Sample { labels: Labels::new([("svc", "a")]), v: 2.0 }]);
    }

    #[test]
    fn topk_keeps_the_original_series() {
        let out = agg(
            "topk(2, m)",
            vec![s("a", "1", 1.0), s("a", "2", f64::NAN), s("b", "1", 5.0), s("c", "1", 3.0)],
        );
        assert_eq!(out.iter().map(|s| s.v).collect::<Vec<_>>(), vec![5.0, 3.0]);
        assert_eq!(out[0].labels.get("__name__"), Some("m"));
        let out = agg("bottomk(1, m)", vec![s("a", "1", 1.0), s("b", "1", 5.0)]);
        assert_eq!(out[0].v, 1.0);
    }

    #[test]
    fn avg_count_group_quantile_stddev() {
        let input = || vec![s("a", "1", 1.0), s("a", "2", 2.0), s("a", "3", 3.0), s("a", "4", 4.0)];
        assert_eq!(agg("avg(m)", input())[0].v, 2.5);
        assert_eq!(agg("count(m)", input())[0].v, 4.0);
        assert_eq!(agg("group(m)", input())[0].v, 1.0);
        assert_eq!(agg("quantile(0.5, m)", input())[0].v, 2.5);
        assert_eq!(agg("stdvar(m)", input())[0].v, 1.25);
        assert_eq!(agg("min(m)", input())[0].v, 1.0);
    }
}
