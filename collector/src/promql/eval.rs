//! The PromQL evaluator: walks promql-parser's AST at one evaluation time. A range query
//! evaluates every step; series for each selector are fetched from storage once per query
//! (covering all steps) and sliced per step.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use promql_parser::label::Matcher;
use promql_parser::parser::token;
use promql_parser::parser::{AtModifier, Call, Expr, MatrixSelector, Offset, VectorSelector};

use super::aggregate::aggregate;
use super::binary::binary;
use super::functions::{self, Window};
use super::labels::{Labels, METRIC_NAME};
use super::time_range::MILLIS;
use super::value::{Sample, Series, Value};
use super::{PromqlError, Storage, depth};

/// Each series' points in a range selector's window, and the window.
type RangeVector<'s> = (Vec<(&'s Labels, &'s [(i64, f64)])>, Window);

pub struct Evaluator<'a> {
    storage: &'a dyn Storage,
    /// First and last evaluation time (ms); equal for an instant query.
    start: i64,
    end: i64,
    lookback: i64,
    /// Series of each selector, keyed by the selector's address in the AST.
    selected: HashMap<usize, Vec<Series>>,
}

fn key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A selector's offset in ms (positive: into the past); refused beyond the epoch.
fn offset_ms(vs: &VectorSelector) -> Result<i64, PromqlError> {
    Ok(match &vs.offset {
        Some(Offset::Pos(d)) => MILLIS.span("offset", *d)?,
        // `span` is at most `max_abs`, so its negation fits.
        Some(Offset::Neg(d)) => MILLIS.span("offset", *d)?.saturating_neg(),
        None => 0,
    })
}

/// A range selector's window in ms; refused beyond the epoch (`x[1000000y]`).
fn range_ms(ms: &MatrixSelector) -> Result<i64, PromqlError> {
    Ok(MILLIS.span("range", ms.range)?)
}

/// Whether a series satisfies a selector: name, all matchers, and one `or` group if any.
pub fn selector_matches(vs: &VectorSelector, l: &Labels) -> bool {
    if let Some(name) = &vs.name
        && l.get(METRIC_NAME) != Some(name.as_str())
    {
        return false;
    }
    let all = |ms: &[Matcher]| ms.iter().all(|m| m.is_match(l.get(&m.name).unwrap_or("")));
    all(&vs.matchers.matchers)
        && (vs.matchers.or_matchers.is_empty() || vs.matchers.or_matchers.iter().any(|g| all(g)))
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        e => e,
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(
        storage: &'a dyn Storage,
        expr: &Expr,
        start: i64,
        end: i64,
        lookback: i64,
    ) -> Result<Self, PromqlError> {
        // Every walk below recurses per level: only bounded trees get here.
        depth::check_expr(expr)?;
        let start = MILLIS.time("start", start)?;
        let end = MILLIS.time("end", end)?;
        let mut ev = Evaluator { storage, start, end, lookback, selected: HashMap::new() };
        ev.prepare(expr)?;
        Ok(ev)
    }

    /// The time a selector reads at when the query is evaluated at `t`.
    fn read_time(&self, vs: &VectorSelector, t: i64) -> Result<i64, PromqlError> {
        let base = match &vs.at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(at)) => match at.duration_since(UNIX_EPOCH) {
                Ok(d) => MILLIS.span("@ time", d)?,
                Err(e) => MILLIS.span("@ time", e.duration())?.saturating_neg(),
            },
        };
        Ok(MILLIS.back("offset", base, offset_ms(vs)?)?)
    }

    /// Fetches every selector's series once, over the span all steps will read.
    fn prepare(&mut self, e: &Expr) -> Result<(), PromqlError> {
        match e {
            Expr::VectorSelector(vs) => self.fetch(vs, self.lookback),
            Expr::MatrixSelector(ms) => self.fetch(&ms.vs, range_ms(ms)?),
            Expr::Paren(p) => self.prepare(&p.expr),
            Expr::Unary(u) => self.prepare(&u.expr),
            Expr::Binary(b) => {
                self.prepare(&b.lhs)?;
                self.prepare(&b.rhs)
            }
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.prepare(p)?;
                }
                self.prepare(&a.expr)
            }
            Expr::Call(c) => c.args.args.iter().try_for_each(|a| self.prepare(a)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
            Expr::Subquery(_) => Err(PromqlError::Unsupported("subqueries".into())),
            Expr::Extension(_) => Err(PromqlError::Unsupported("extension expressions".into())),
        }
    }

    fn fetch(&mut self, vs: &VectorSelector, range: i64) -> Result<(), PromqlError> {
        let first = self.read_time(vs, self.start)?;
        let last = self.read_time(vs, self.end)?;
        let (from, to) = (MILLIS.back("range", first.min(last), range)?, first.max(last));
        let series = self.storage.select(&|l| selector_matches(vs, l), from, to)?;
        self.selected.insert(key(vs), series);
        Ok(())
    }

    fn series(&self, vs: &VectorSelector) -> Result<&[Series], PromqlError> {
        self.selected
            .get(&key(vs))
            .map(Vec::as_slice)
            .ok_or_else(|| PromqlError::Internal("selector was not prepared".into()))
    }

    /// Latest sample of each series in `(t - lookback, t]`.
    fn instant_vector(&self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>, PromqlError> {
        let t = self.read_time(vs, t)?;
        let since = MILLIS.back("lookback", t, self.lookback)?;
        let mut out = Vec::new();
        for s in self.series(vs)? {
            let i = s.points.partition_point(|p| p.0 <= t);
            if i > 0 && s.points[i - 1].0 > since {
                out.push(Sample { labels: s.labels.clone(), v: s.points[i - 1].1 });
            }
        }
        Ok(out)
    }

    /// Points of each series in `(t - range, t]`, and that window.
    fn range_vector(&self, ms: &MatrixSelector, t: i64) -> Result<RangeVector<'_>, PromqlError> {
        let end = self.read_time(&ms.vs, t)?;
        let w = Window { start: MILLIS.back("range", end, range_ms(ms)?)?, end };
        let mut out = Vec::new();
        for s in self.series(&ms.vs)? {
            let lo = s.points.partition_point(|p| p.0 <= w.start);
            let hi = s.points.partition_point(|p| p.0 <= w.end);
            if hi > lo {
                out.push((&s.labels, &s.points[lo..hi]));
            }
        }
        Ok((out, w))
    }

    pub fn eval(&self, e: &Expr, t: i64) -> Result<Value, PromqlError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample { labels: s.labels.without_name(), v: -s.v })
                        .collect(),
                )),
                other => Err(PromqlError::BadData(format!(
                    "unary minus on a {} is not allowed",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => self.instant_vector(vs, t).map(Value::Vector),
            Expr::MatrixSelector(ms) => {
                let (series, _) = self.range_vector(ms, t)?;
                Ok(Value::Matrix(
                    series
                        .into_iter()
                        .map(|(l, p)| Series { labels: l.clone(), points: p.to_vec() })
                        .collect(),
                ))
            }
            Expr::Binary(b) => {
                let lhs = self.eval(&b.lhs, t)?;
                let rhs = self.eval(&b.rhs, t)?;
                binary(b.op.id(), lhs, rhs, b.modifier.as_ref())
            }
            Expr::Aggregate(a) => {
                let op = a.op.id();
                if matches!(op, token::T_COUNT_VALUES | token::T_LIMITK | token::T_LIMIT_RATIO) {
                    return Err(PromqlError::Unsupported(format!("aggregation {}", a.op)));
                }
                let param = match &a.param {
                    Some(p) => Some(self.scalar(p, t)?),
                    None => None,
                };
                let input = self.vector(&a.expr, t)?;
                aggregate(a.op.id(), param, a.modifier.as_ref(), input).map(Value::Vector)
            }
            Expr::Call(c) => self.call(c, t),
            Expr::Subquery(_) => Err(PromqlError::Unsupported("subqueries".into())),
            Expr::Extension(_) => Err(PromqlError::Unsupported("extension expressions".into())),
        }
    }

    fn scalar(&self, e: &Expr, t: i64) -> Result<f64, PromqlError> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            other => {
                Err(PromqlError::BadData(format!("expected scalar, got {}", other.type_name())))
            }
        }
    }

    fn vector(&self, e: &Expr, t: i64) -> Result<Vec<Sample>, PromqlError> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            other => Err(PromqlError::BadData(format!(
                "expected instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    fn string(&self, e: &Expr) -> Result<String, PromqlError> {
        match strip(e) {
            Expr::StringLiteral(s) => Ok(s.val.clone()),
            _ => Err(PromqlError::BadData("expected string literal".into())),
        }
    }

    fn arg<'e>(&self, c: &'e Call, i: usize) -> Result<&'e Expr, PromqlError> {
        c.args.args.get(i).map(|b| b.as_ref()).ok_or_else(|| {
            PromqlError::BadData(format!("missing argument {} of {}", i + 1, c.func.name))
        })
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value, PromqlError> {
        let name = c.func.name;
        if functions::is_range_function(name) {
            let (param, m) = if name == "quantile_over_time" {
                (self.scalar(self.arg(c, 0)?, t)?, self.arg(c, 1)?)
            } else {
                (0.0, self.arg(c, 0)?)
            };
            let Expr::MatrixSelector(ms) = strip(m) else {
                return Err(PromqlError::Unsupported(format!(
                    "{name}() over anything but a range selector (e.g. subqueries)"
                )));
            };
            let (series, w) = self.range_vector(ms, t)?;
            // Prometheus keeps the metric name only for last_over_time.
            let keep_name = name == "last_over_time";
            let out = series
                .into_iter()
                .filter_map(|(l, pts)| {
                    functions::range_function(name, pts, w, param).map(|v| Sample {
                        labels: if keep_name { l.clone() } else { l.without_name() },
                        v,
                    })
                })
                .collect();
            return Ok(Value::Vector(out));
        }
        if let Some(f) = functions::math_function(name) {
            return self.map(c, t, f);
        }
        match name {
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Sample {
                labels: Labels::default(),
                v: self.scalar(self.arg(c, 0)?, t)?,
            }])),
            "scalar" => {
                let v = self.vector(self.arg(c, 0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "round" => {
                let to = match c.args.args.get(1) {
                    Some(a) => self.scalar(a, t)?,
                    None => 1.0,
                };
                self.map(c, t, move |v| functions::round(v, to))
            }
            "clamp" => {
                let (lo, hi) = (self.scalar(self.arg(c, 1)?, t)?, self.scalar(self.arg(c, 2)?, t)?);
                if lo > hi {
                    return Ok(Value::Vector(Vec::new()));
                }
                self.map(c, t, move |v| v.max(lo).min(hi))
            }
            "clamp_min" => {
                let lo = self.scalar(self.arg(c, 1)?, t)?;
                self.map(c, t, move |v| v.max(lo))
            }
            "clamp_max" => {
                let hi = self.scalar(self.arg(c, 1)?, t)?;
                self.map(c, t, move |v| v.min(hi))
            }
            "histogram_quantile" => {
                let q = self.scalar(self.arg(c, 0)?, t)?;
                let v = self.vector(self.arg(c, 1)?, t)?;
                Ok(Value::Vector(histogram_quantile(q, v)))
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector(self.arg(c, 0)?, t)?;
                v.sort_by(|a, b| a.v.total_cmp(&b.v));
                if name == "sort_desc" {
                    v.reverse();
                }
                Ok(Value::Vector(v))
            }
            "absent" => {
                let e = self.arg(c, 0)?;
                if !self.vector(e, t)?.is_empty() {
                    return Ok(Value::Vector(Vec::new()));
                }
                let labels = match strip(e) {
                    Expr::VectorSelector(vs) => Labels::new(
                        vs.matchers
                            .matchers
                            .iter()
                            .filter(|m| {
                                m.op == promql_parser::label::MatchOp::Equal
                                    && m.name != METRIC_NAME
                            })
                            .map(|m| (m.name.as_str(), m.value.as_str())),
                    ),
                    _ => Labels::default(),
                };
                Ok(Value::Vector(vec![Sample { labels, v: 1.0 }]))
            }
            "label_replace" => {
                let v = self.vector(self.arg(c, 0)?, t)?;
                let dst = self.string(self.arg(c, 1)?)?;
                let repl = self.string(self.arg(c, 2)?)?;
                let src = self.string(self.arg(c, 3)?)?;
                let re = self.string(self.arg(c, 4)?)?;
                let re = regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| {
                    PromqlError::BadData(format!("invalid regular expression: {e}"))
                })?;
                let out = v
                    .into_iter()
                    .map(|mut s| {
                        let value = s.labels.get(&src).unwrap_or("").to_string();
                        if let Some(caps) = re.captures(&value) {
                            let mut res = String::new();
                            caps.expand(&repl, &mut res);
                            s.labels.set(&dst, &res);
                        }
                        s
                    })
                    .collect();
                Ok(Value::Vector(out))
            }
            "label_join" => {
                let v = self.vector(self.arg(c, 0)?, t)?;
                let dst = self.string(self.arg(c, 1)?)?;
                let sep = self.string(self.arg(c, 2)?)?;
                let srcs = c.args.args[3.min(c.args.args.len())..]
                    .iter()
                    .map(|a| self.string(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let out = v
                    .into_iter()
                    .map(|mut s| {
                        let joined = srcs
                            .iter()
                            .map(|n| s.labels.get(n).unwrap_or(""))
                            .collect::<Vec<_>>()
                            .join(&sep);
                        s.labels.set(&dst, &joined);
                        s
                    })
                    .collect();
                Ok(Value::Vector(out))
            }
            other => Err(PromqlError::Unsupported(format!("function {other}()"))),
        }
    }

    /// Applies `f` to each sample of the first argument; the result is no longer the metric.
    fn map(&self, c: &Call, t: i64, f: impl Fn(f64) -> f64) -> Result<Value, PromqlError> {
        let v = self.vector(self.arg(c, 0)?, t)?;
        Ok(Value::Vector(
            v.into_iter().map(|s| Sample { labels: s.labels.without_name(), v: f(s.v) }).collect(),
        ))
    }
}

/// Groups `_bucket` samples by all labels but `le` (and the name) and interpolates each group.
fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
    for s in v {
        let Some(le) = s.labels.get("le").and_then(|le| le.parse::<f64>().ok()) else { continue };
        let key = s.labels.retain(|n| n != "le" && n != METRIC_NAME);
        groups
            .entry(key)
            .or_insert_with_key(|k| {
                order.push(k.clone());
                Vec::new()
            })
            .push((le, s.v));
    }
    order
        .into_iter()
        .filter_map(|k| {
            let b = groups.remove(&k)?;
            Some(Sample { labels: k, v: functions::bucket_quantile(q, b) })
        })
        .collect()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}
