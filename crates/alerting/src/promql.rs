//! The PromQL subset over the metrics history, parsed by `promql-parser`.
//!
//! Supported: selectors with `=`, `!=`, `=~`, `!~` matchers and `offset`;
//! range vectors; `rate`, `irate`, `increase`, `delta`, `idelta`, `deriv`,
//! `predict_linear`, `histogram_quantile`, `absent`, `*_over_time` (avg, min,
//! max, sum, count, last, stddev, stdvar, present, quantile), `abs`, `ceil`,
//! `floor`, `sqrt`, `exp`, `ln`, `clamp_min`, `clamp_max`, `time`, `vector`,
//! `scalar`, and the anomaly functions of [`crate::anomaly_fn`]
//! (`anomaly_score` & co.); aggregations `sum`, `avg`, `min`, `max`, `count`, `group`,
//! `stddev`, `stdvar` with `by`/`without`; arithmetic (`+ - * / % ^`),
//! comparison (with `bool`) and set (`and or unless`) operators with
//! one-to-one `on`/`ignoring` matching. Anything else — subqueries, `@`,
//! `group_left`/`group_right`, `topk` & co., other functions — is refused
//! by [`parse`] with [`QueryError::Unsupported`] naming the part.

use std::collections::BTreeMap;

use promql_parser::label::MatchOp;
use promql_parser::parser::{self as pp, Expr, LabelModifier, Offset, VectorMatchCardinality};

use crate::tsdb::{Labels, Tsdb};

/// Default lookback of an instant selector (Prometheus's 5 minutes).
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// Most points per series a range query may return (Prometheus's bound).
pub const MAX_RANGE_POINTS: i64 = 11_000;

/// A query that cannot be run.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QueryError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("unsupported PromQL: {0} (see docs/alerting.md for the supported subset)")]
    Unsupported(String),
    #[error("evaluation: {0}")]
    Eval(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// A query result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<RangeSeries>),
}

const SUPPORTED_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "histogram_quantile",
    "absent",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "present_over_time",
    "quantile_over_time",
    "abs",
    "ceil",
    "floor",
    "sqrt",
    "exp",
    "ln",
    "clamp_min",
    "clamp_max",
    "time",
    "vector",
    "scalar",
];
const SUPPORTED_AGGREGATIONS: &[&str] = &[
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
];

/// Parse `q` and check it stays within the supported subset.
pub fn parse(q: &str) -> Result<Expr, QueryError> {
    crate::anomaly_fn::register();
    let e = pp::parse(q).map_err(QueryError::Parse)?;
    check(&e)?;
    Ok(e)
}

fn check_selector(vs: &pp::VectorSelector) -> Result<(), QueryError> {
    if vs.at.is_some() {
        return Err(QueryError::Unsupported(format!(
            "the `@` modifier in `{vs}`"
        )));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::Unsupported(format!(
            "`or` inside the selector `{vs}`"
        )));
    }
    Ok(())
}

/// Check that `e` uses only the supported subset; the error names the first unsupported part.
pub fn check(e: &Expr) -> Result<(), QueryError> {
    match e {
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !SUPPORTED_AGGREGATIONS.contains(&op.as_str()) {
                return Err(QueryError::Unsupported(format!(
                    "aggregation `{op}` (supported: {})",
                    SUPPORTED_AGGREGATIONS.join(", ")
                )));
            }
            check(&a.expr)
        }
        Expr::Unary(u) => check(&u.expr),
        Expr::Binary(b) => {
            let op = b.op.to_string();
            if op == "atan2" {
                return Err(QueryError::Unsupported("operator `atan2`".into()));
            }
            if let Some(m) = &b.modifier {
                match &m.card {
                    VectorMatchCardinality::ManyToOne(_) => {
                        return Err(QueryError::Unsupported(format!("`group_left` in `{e}`")))
                    }
                    VectorMatchCardinality::OneToMany(_) => {
                        return Err(QueryError::Unsupported(format!("`group_right` in `{e}`")))
                    }
                    _ => {}
                }
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err(QueryError::Unsupported(format!(
                        "`fill` modifiers in `{e}`"
                    )));
                }
            }
            check(&b.lhs)?;
            check(&b.rhs)
        }
        Expr::Paren(p) => check(&p.expr),
        Expr::Subquery(s) => Err(QueryError::Unsupported(format!("subquery `{s}`"))),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(vs) => check_selector(vs),
        Expr::MatrixSelector(m) => check_selector(&m.vs),
        Expr::Call(c) if crate::anomaly_fn::is_anomaly_fn(c.func.name) => {
            crate::anomaly_fn::check_call(c)?;
            check(&c.args.args[0])
        }
        Expr::Call(c) => {
            if !SUPPORTED_FUNCTIONS.contains(&c.func.name) {
                return Err(QueryError::Unsupported(format!(
                    "function `{}`",
                    c.func.name
                )));
            }
            c.args.args.iter().try_for_each(|a| check(a))
        }
        Expr::Extension(_) => Err(QueryError::Unsupported("extension expressions".into())),
    }
}

/// A function of one series' points in a range (and the range, ms).
type RangeFn<'a> = dyn Fn(&[(i64, f64)], i64) -> Option<f64> + 'a;

/// Evaluates parsed expressions against a history.
pub struct Engine<'a> {
    pub db: &'a Tsdb,
    pub lookback_ms: i64,
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

fn matches(vs: &pp::VectorSelector, l: &Labels) -> bool {
    if let Some(n) = &vs.name {
        if l.get("__name__") != Some(n) {
            return false;
        }
    }
    vs.matchers
        .matchers
        .iter()
        .all(|m| m.is_match(l.get(&m.name).map(String::as_str).unwrap_or("")))
}

fn drop_name(mut l: Labels) -> Labels {
    l.remove("__name__");
    l
}

fn err<T>(s: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::Eval(s.into()))
}

impl Engine<'_> {
    pub fn new(db: &Tsdb) -> Engine<'_> {
        Engine {
            db,
            lookback_ms: DEFAULT_LOOKBACK_MS,
        }
    }

    /// Evaluate at `t_ms`.
    pub fn instant(&self, e: &Expr, t_ms: i64) -> Result<Value, QueryError> {
        self.eval(e, t_ms)
    }

    /// Evaluate at `start, start+step, … ≤ end` into a matrix.
    pub fn range(
        &self,
        e: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<RangeSeries>, QueryError> {
        if step_ms <= 0 {
            return err("step must be positive");
        }
        if end_ms < start_ms {
            return err("end is before start");
        }
        let points = (end_ms - start_ms) / step_ms + 1;
        if points > MAX_RANGE_POINTS {
            return err(format!("query_range would return {points} points per series (max {MAX_RANGE_POINTS}): raise step"));
        }
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        let mut t = start_ms;
        while t <= end_ms {
            match self.eval(e, t)? {
                Value::Scalar(v) => out.entry(Labels::new()).or_default().push((t, v)),
                Value::Vector(v) => {
                    for s in v {
                        out.entry(s.labels).or_default().push((t, s.value));
                    }
                }
                _ => {
                    return err("query_range needs an expression of type scalar or instant vector")
                }
            }
            t += step_ms;
        }
        Ok(out
            .into_iter()
            .map(|(labels, points)| RangeSeries { labels, points })
            .collect())
    }

    fn vector(&self, e: &Expr, t: i64) -> Result<Vec<Sample>, QueryError> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            other => err(format!(
                "expected an instant vector, got {} in `{e}`",
                kind(&other)
            )),
        }
    }

    fn matrix(&self, e: &Expr, t: i64) -> Result<Vec<RangeSeries>, QueryError> {
        match self.eval(e, t)? {
            Value::Matrix(v) => Ok(v),
            other => err(format!(
                "expected a range vector, got {} in `{e}`",
                kind(&other)
            )),
        }
    }

    fn scalar(&self, e: &Expr, t: i64) -> Result<f64, QueryError> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            other => err(format!("expected a scalar, got {} in `{e}`", kind(&other))),
        }
    }

    fn eval(&self, e: &Expr, t: i64) -> Result<Value, QueryError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::VectorSelector(vs) => {
                check_selector(vs)?;
                let at = t - offset_ms(&vs.offset);
                let from = at - self.lookback_ms;
                let mut out = Vec::new();
                for (l, samples) in self.db.select(|l| matches(vs, l)) {
                    let end = samples.partition_point(|(ts, _)| *ts <= at);
                    if end == 0 {
                        continue;
                    }
                    let (ts, v) = samples[end - 1];
                    if ts > from {
                        out.push(Sample {
                            labels: l.clone(),
                            value: v,
                        });
                    }
                }
                Ok(Value::Vector(out))
            }
            Expr::MatrixSelector(m) => {
                check_selector(&m.vs)?;
                let at = t - offset_ms(&m.vs.offset);
                let from = at - m.range.as_millis() as i64;
                let out = self
                    .db
                    .select(|l| matches(&m.vs, l))
                    .map(|(l, s)| RangeSeries {
                        labels: l.clone(),
                        points: Tsdb::range(s, from, at),
                    })
                    .filter(|r| !r.points.is_empty())
                    .collect();
                Ok(Value::Matrix(out))
            }
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: drop_name(s.labels),
                            value: -s.value,
                        })
                        .collect(),
                )),
                other => err(format!("unary minus on {}", kind(&other))),
            },
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Subquery(_) | Expr::Extension(_) => check(e).map(|_| Value::Scalar(f64::NAN)),
        }
    }

    fn aggregate(&self, a: &pp::AggregateExpr, t: i64) -> Result<Value, QueryError> {
        let op = a.op.to_string();
        if !SUPPORTED_AGGREGATIONS.contains(&op.as_str()) {
            return Err(QueryError::Unsupported(format!("aggregation `{op}`")));
        }
        let v = self.vector(&a.expr, t)?;
        let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
        for s in v {
            let key: Labels = match &a.modifier {
                None => Labels::new(),
                Some(LabelModifier::Include(ls)) => s
                    .labels
                    .iter()
                    .filter(|(k, _)| ls.labels.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                Some(LabelModifier::Exclude(ls)) => s
                    .labels
                    .iter()
                    .filter(|(k, _)| !ls.labels.contains(k) && *k != "__name__")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            };
            groups.entry(key).or_default().push(s.value);
        }
        let out = groups
            .into_iter()
            .map(|(labels, vals)| {
                let n = vals.len() as f64;
                let mean = vals.iter().sum::<f64>() / n;
                let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                let value = match op.as_str() {
                    "sum" => vals.iter().sum(),
                    "avg" => mean,
                    "min" => vals.iter().copied().fold(f64::INFINITY, f64::min),
                    "max" => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "count" => n,
                    "group" => 1.0,
                    "stddev" => var.sqrt(),
                    _ => var,
                };
                Sample { labels, value }
            })
            .collect();
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &pp::BinaryExpr, t: i64) -> Result<Value, QueryError> {
        let op = b.op.to_string();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let comparison = b.op.is_comparison_operator();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                let r = apply(&op, x, y)?;
                Ok(Value::Scalar(if comparison {
                    r.map_or(0.0, |_| 1.0)
                } else {
                    r.unwrap_or(f64::NAN)
                }))
            }
            (Value::Vector(v), Value::Scalar(y)) => Ok(Value::Vector(vector_scalar(
                &op,
                v,
                y,
                false,
                comparison,
                return_bool,
            )?)),
            (Value::Scalar(x), Value::Vector(v)) => Ok(Value::Vector(vector_scalar(
                &op,
                v,
                x,
                true,
                comparison,
                return_bool,
            )?)),
            (Value::Vector(l), Value::Vector(r)) => {
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                let sig = |labels: &Labels| -> Labels {
                    match &matching {
                        Some(LabelModifier::Include(on)) => labels
                            .iter()
                            .filter(|(k, _)| on.labels.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        Some(LabelModifier::Exclude(ign)) => labels
                            .iter()
                            .filter(|(k, _)| !ign.labels.contains(k) && *k != "__name__")
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        None => drop_name(labels.clone()),
                    }
                };
                if b.op.is_set_operator() {
                    let rsigs: std::collections::BTreeSet<Labels> =
                        r.iter().map(|s| sig(&s.labels)).collect();
                    return Ok(Value::Vector(match op.as_str() {
                        "and" => l
                            .into_iter()
                            .filter(|s| rsigs.contains(&sig(&s.labels)))
                            .collect(),
                        "unless" => l
                            .into_iter()
                            .filter(|s| !rsigs.contains(&sig(&s.labels)))
                            .collect(),
                        _ => {
                            let lsigs: std::collections::BTreeSet<Labels> =
                                l.iter().map(|s| sig(&s.labels)).collect();
                            let mut out = l;
                            out.extend(r.into_iter().filter(|s| !lsigs.contains(&sig(&s.labels))));
                            out
                        }
                    }));
                }
                let mut rmap: BTreeMap<Labels, Sample> = BTreeMap::new();
                for s in r {
                    let k = sig(&s.labels);
                    if rmap.insert(k.clone(), s).is_some() {
                        return err(format!("many-to-many matching not allowed: found duplicate series for the match group {k:?} on the right-hand side of `{op}`"));
                    }
                }
                let mut seen = std::collections::BTreeSet::new();
                let mut out = Vec::new();
                for s in l {
                    let k = sig(&s.labels);
                    let Some(rs) = rmap.get(&k) else { continue };
                    if !seen.insert(k.clone()) {
                        return err(format!("many-to-many matching not allowed: found duplicate series for the match group {k:?} on the left-hand side of `{op}`"));
                    }
                    let res = apply(&op, s.value, rs.value)?;
                    let labels = match &matching {
                        Some(LabelModifier::Include(_)) if !comparison || return_bool => k.clone(),
                        _ if !comparison || return_bool => drop_name(s.labels.clone()),
                        _ => s.labels.clone(),
                    };
                    match (comparison, return_bool, res) {
                        (true, true, r) => out.push(Sample {
                            labels,
                            value: r.map_or(0.0, |_| 1.0),
                        }),
                        (true, false, Some(_)) => out.push(Sample {
                            labels,
                            value: s.value,
                        }),
                        (true, false, None) => {}
                        (false, _, r) => out.push(Sample {
                            labels,
                            value: r.unwrap_or(f64::NAN),
                        }),
                    }
                }
                Ok(Value::Vector(out))
            }
            (l, r) => err(format!(
                "operator `{op}` between {} and {}",
                kind(&l),
                kind(&r)
            )),
        }
    }

    fn call(&self, c: &pp::Call, t: i64) -> Result<Value, QueryError> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr, QueryError> {
            args.get(i)
                .map(|b| b.as_ref())
                .ok_or_else(|| QueryError::Eval(format!("{name}: missing argument {}", i + 1)))
        };
        let per_range = |f: &RangeFn, keep_name: bool| -> Result<Value, QueryError> {
            let m = self.matrix(arg(0)?, t)?;
            let range_ms = match arg(0)? {
                Expr::MatrixSelector(ms) => ms.range.as_millis() as i64,
                _ => 0,
            };
            Ok(Value::Vector(
                m.into_iter()
                    .filter_map(|r| {
                        f(&r.points, range_ms).map(|value| Sample {
                            labels: if keep_name {
                                r.labels
                            } else {
                                drop_name(r.labels)
                            },
                            value,
                        })
                    })
                    .collect(),
            ))
        };
        let map = |f: &dyn Fn(f64) -> f64| -> Result<Value, QueryError> {
            Ok(Value::Vector(
                self.vector(arg(0)?, t)?
                    .into_iter()
                    .map(|s| Sample {
                        labels: drop_name(s.labels),
                        value: f(s.value),
                    })
                    .collect(),
            ))
        };
        match name {
            "rate" => per_range(&|p, r| extrapolated(p, t, r, true, true), false),
            "increase" => per_range(&|p, r| extrapolated(p, t, r, true, false), false),
            "delta" => per_range(&|p, r| extrapolated(p, t, r, false, false), false),
            "irate" | "idelta" => per_range(
                &|p, _| {
                    if p.len() < 2 {
                        return None;
                    }
                    let (t1, v1) = p[p.len() - 2];
                    let (t2, v2) = p[p.len() - 1];
                    let d = if name == "irate" && v2 < v1 {
                        v2
                    } else {
                        v2 - v1
                    };
                    Some(if name == "irate" {
                        d / ((t2 - t1) as f64 / 1000.0)
                    } else {
                        d
                    })
                },
                false,
            ),
            "deriv" => per_range(
                &|p, _| (p.len() >= 2).then(|| linear_regression(p, p[0].0).0),
                false,
            ),
            "predict_linear" => {
                let secs = self.scalar(arg(1)?, t)?;
                per_range(
                    &|p, _| {
                        (p.len() >= 2).then(|| {
                            let (slope, intercept) = linear_regression(p, t);
                            intercept + slope * secs
                        })
                    },
                    false,
                )
            }
            "avg_over_time" => per_range(
                &|p, _| Some(p.iter().map(|x| x.1).sum::<f64>() / p.len() as f64),
                false,
            ),
            "sum_over_time" => per_range(&|p, _| Some(p.iter().map(|x| x.1).sum::<f64>()), false),
            "min_over_time" => per_range(
                &|p, _| Some(p.iter().map(|x| x.1).fold(f64::INFINITY, f64::min)),
                false,
            ),
            "max_over_time" => per_range(
                &|p, _| Some(p.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max)),
                false,
            ),
            "count_over_time" => per_range(&|p, _| Some(p.len() as f64), false),
            "present_over_time" => per_range(&|_, _| Some(1.0), false),
            "last_over_time" => per_range(&|p, _| p.last().map(|x| x.1), true),
            "stddev_over_time" | "stdvar_over_time" => per_range(
                &|p, _| {
                    let n = p.len() as f64;
                    let mean = p.iter().map(|x| x.1).sum::<f64>() / n;
                    let var = p.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / n;
                    Some(if name == "stddev_over_time" {
                        var.sqrt()
                    } else {
                        var
                    })
                },
                false,
            ),
            "quantile_over_time" => {
                let q = self.scalar(arg(0)?, t)?;
                let m = self.matrix(arg(1)?, t)?;
                Ok(Value::Vector(
                    m.into_iter()
                        .map(|r| {
                            let mut vals: Vec<f64> = r.points.iter().map(|x| x.1).collect();
                            Sample {
                                labels: drop_name(r.labels),
                                value: quantile(q, &mut vals),
                            }
                        })
                        .collect(),
                ))
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?, t)?;
                let v = self.vector(arg(1)?, t)?;
                let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
                for s in v {
                    let Some(le) = s.labels.get("le").and_then(|x| crate::tsdb::parse_float(x))
                    else {
                        continue;
                    };
                    let mut l = drop_name(s.labels);
                    l.remove("le");
                    groups.entry(l).or_default().push((le, s.value));
                }
                Ok(Value::Vector(
                    groups
                        .into_iter()
                        .map(|(labels, b)| Sample {
                            labels,
                            value: bucket_quantile(q, b),
                        })
                        .collect(),
                ))
            }
            "absent" => {
                let v = self.vector(arg(0)?, t)?;
                if !v.is_empty() {
                    return Ok(Value::Vector(vec![]));
                }
                let mut labels = Labels::new();
                if let Expr::VectorSelector(vs) = arg(0)? {
                    for m in &vs.matchers.matchers {
                        if matches!(m.op, MatchOp::Equal) && m.name != "__name__" {
                            labels.insert(m.name.clone(), m.value.clone());
                        }
                    }
                }
                Ok(Value::Vector(vec![Sample { labels, value: 1.0 }]))
            }
            "abs" => map(&f64::abs),
            "ceil" => map(&f64::ceil),
            "floor" => map(&f64::floor),
            "sqrt" => map(&f64::sqrt),
            "exp" => map(&f64::exp),
            "ln" => map(&f64::ln),
            "clamp_min" | "clamp_max" => {
                let bound = self.scalar(arg(1)?, t)?;
                if name == "clamp_min" {
                    map(&|x| x.max(bound))
                } else {
                    map(&|x| x.min(bound))
                }
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "vector" => Ok(Value::Vector(vec![Sample {
                labels: Labels::new(),
                value: self.scalar(arg(0)?, t)?,
            }])),
            "scalar" => {
                let v = self.vector(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 {
                    v[0].value
                } else {
                    f64::NAN
                }))
            }
            n if crate::anomaly_fn::is_anomaly_fn(n) => crate::anomaly_fn::eval_call(self, c, t),
            other => Err(QueryError::Unsupported(format!("function `{other}`"))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Scalar(_) => "a scalar",
        Value::String(_) => "a string",
        Value::Vector(_) => "an instant vector",
        Value::Matrix(_) => "a range vector",
    }
}

/// `Some(result)`; for comparisons `None` means false.
fn apply(op: &str, x: f64, y: f64) -> Result<Option<f64>, QueryError> {
    let cmp = |b: bool| if b { Some(x) } else { None };
    Ok(match op {
        "+" => Some(x + y),
        "-" => Some(x - y),
        "*" => Some(x * y),
        "/" => Some(x / y),
        "%" => Some(x % y),
        "^" => Some(x.powf(y)),
        "==" => cmp(x == y),
        "!=" => cmp(x != y),
        ">" => cmp(x > y),
        "<" => cmp(x < y),
        ">=" => cmp(x >= y),
        "<=" => cmp(x <= y),
        other => return Err(QueryError::Unsupported(format!("operator `{other}` here"))),
    })
}

fn vector_scalar(
    op: &str,
    v: Vec<Sample>,
    s: f64,
    scalar_left: bool,
    comparison: bool,
    return_bool: bool,
) -> Result<Vec<Sample>, QueryError> {
    let mut out = Vec::new();
    for smp in v {
        let (x, y) = if scalar_left {
            (s, smp.value)
        } else {
            (smp.value, s)
        };
        let r = apply(op, x, y)?;
        if comparison {
            if return_bool {
                out.push(Sample {
                    labels: drop_name(smp.labels),
                    value: r.map_or(0.0, |_| 1.0),
                });
            } else if r.is_some() {
                out.push(smp);
            }
        } else {
            out.push(Sample {
                labels: drop_name(smp.labels),
                value: r.unwrap_or(f64::NAN),
            });
        }
    }
    Ok(out)
}

/// Prometheus's `extrapolatedRate` (rate, increase, delta).
fn extrapolated(
    p: &[(i64, f64)],
    t: i64,
    range_ms: i64,
    counter: bool,
    per_second: bool,
) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let range_start = t - range_ms;
    let (first_t, first_v) = p[0];
    let (last_t, last_v) = p[p.len() - 1];
    let mut result = last_v - first_v;
    if counter {
        let mut prev = first_v;
        for &(_, v) in &p[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let to_end = (t - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_step = sampled / (p.len() - 1) as f64;
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    let mut r = result * (interval / sampled);
    if per_second {
        r /= range_ms as f64 / 1000.0;
    }
    Some(r)
}

/// Least squares over `(t, v)` with x = seconds relative to `intercept_ms`: (slope, intercept).
fn linear_regression(p: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
    let n = p.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0);
    for &(ts, v) in p {
        let x = (ts - intercept_ms) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = if var == 0.0 { 0.0 } else { cov / var };
    (slope, sy / n - slope * sx / n)
}

fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| a.total_cmp(b));
    let rank = q * (vals.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(vals.len() - 1);
    let w = rank - lo as f64;
    vals[lo] * (1.0 - w) + vals[hi] * w
}

/// Prometheus's `bucketQuantile` over `(upper bound, cumulative count)`.
fn bucket_quantile(q: f64, mut b: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    if b.last().is_none_or(|x| x.0 != f64::INFINITY) || b.len() < 2 {
        return f64::NAN;
    }
    for i in 1..b.len() {
        if b[i].1 < b[i - 1].1 {
            b[i].1 = b[i - 1].1;
        }
    }
    let total = b[b.len() - 1].1;
    if total == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * total;
    let idx = b.iter().position(|x| x.1 >= rank).unwrap_or(b.len() - 1);
    if idx == b.len() - 1 {
        return b[b.len() - 2].0;
    }
    if idx == 0 && b[0].0 <= 0.0 {
        return b[0].0;
    }
    let (mut start, end, mut count) = (0.0, b[idx].0, b[idx].1);
    if idx > 0 {
        start = b[idx - 1].0;
        count -= b[idx - 1].1;
        rank -= b[idx - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// A float as Prometheus's JSON writes it.
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

fn ts(t_ms: i64) -> serde_json::Value {
    serde_json::json!(t_ms as f64 / 1000.0)
}

/// The `data` object of Prometheus's `/api/v1/query` answer.
pub fn value_json(v: &Value, t_ms: i64) -> serde_json::Value {
    match v {
        Value::Scalar(x) => {
            serde_json::json!({"resultType": "scalar", "result": [ts(t_ms), format_value(*x)]})
        }
        Value::String(s) => serde_json::json!({"resultType": "string", "result": [ts(t_ms), s]}),
        Value::Vector(v) => {
            serde_json::json!({"resultType": "vector", "result": v.iter().map(|s| serde_json::json!({"metric": s.labels, "value": [ts(t_ms), format_value(s.value)]})).collect::<Vec<_>>()})
        }
        Value::Matrix(m) => matrix_json(m),
    }
}

/// The `data` object of a matrix answer (`/api/v1/query_range`).
pub fn matrix_json(m: &[RangeSeries]) -> serde_json::Value {
    serde_json::json!({"resultType": "matrix", "result": m.iter().map(|r| serde_json::json!({
        "metric": r.labels,
        "values": r.points.iter().map(|(t, v)| serde_json::json!([ts(*t), format_value(*v)])).collect::<Vec<_>>()
    })).collect::<Vec<_>>()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::TsdbSettings;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn db() -> Tsdb {
        let mut db = Tsdb::new(TsdbSettings::default());
        for i in 0..=60 {
            let t = i * 1000;
            db.append(
                t,
                [
                    (
                        l(&[("__name__", "c_total"), ("member", "a")]),
                        i as f64 * 2.0,
                    ),
                    (l(&[("__name__", "c_total"), ("member", "b")]), i as f64),
                    (l(&[("__name__", "up"), ("member", "a")]), 1.0),
                    (
                        l(&[("__name__", "up"), ("member", "b")]),
                        if i > 30 { 0.0 } else { 1.0 },
                    ),
                    (
                        l(&[("__name__", "h_bucket"), ("le", "0.1")]),
                        i as f64 * 5.0,
                    ),
                    (l(&[("__name__", "h_bucket"), ("le", "1")]), i as f64 * 9.0),
                    (
                        l(&[("__name__", "h_bucket"), ("le", "+Inf")]),
                        i as f64 * 10.0,
                    ),
                ],
            );
        }
        db
    }

    fn q(db: &Tsdb, s: &str, t: i64) -> Vec<(Labels, f64)> {
        match Engine::new(db).instant(&parse(s).unwrap(), t).unwrap() {
            Value::Vector(v) => v.into_iter().map(|s| (s.labels, s.value)).collect(),
            Value::Scalar(x) => vec![(Labels::new(), x)],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selectors_rates_aggregations() {
        let db = db();
        assert_eq!(
            q(&db, "up{member=~\"a|b\"} == 0", 60_000),
            vec![(l(&[("__name__", "up"), ("member", "b")]), 0.0)]
        );
        let r = q(&db, "rate(c_total{member=\"a\"}[10s])", 60_000);
        assert!((r[0].1 - 2.0).abs() < 1e-9, "{r:?}");
        let r = q(&db, "increase(c_total[10s])", 60_000);
        assert!(
            (r[0].1 - 20.0).abs() < 1e-9 && (r[1].1 - 10.0).abs() < 1e-9,
            "{r:?}"
        );
        assert_eq!(q(&db, "sum(c_total)", 60_000)[0].1, 180.0);
        assert_eq!(
            q(&db, "count(up == 1) < count(up) / 2 + 1", 60_000).len(),
            1
        );
        assert_eq!(
            q(&db, "sum by (member) (c_total)", 60_000)[1],
            (l(&[("member", "b")]), 60.0)
        );
        assert_eq!(q(&db, "max without (member) (c_total)", 60_000)[0].1, 120.0);
        let p = q(
            &db,
            "predict_linear(c_total{member=\"b\"}[30s], 100)",
            60_000,
        );
        assert!((p[0].1 - 160.0).abs() < 1e-6, "{p:?}");
        let h = q(&db, "histogram_quantile(0.9, rate(h_bucket[10s]))", 60_000);
        assert!((h[0].1 - 1.0).abs() < 1e-9, "{h:?}");
        assert_eq!(
            q(&db, "absent(nope{member=\"x\"})", 60_000),
            vec![(l(&[("member", "x")]), 1.0)]
        );
        assert!(q(&db, "absent(up)", 60_000).is_empty());
        assert_eq!(
            q(&db, "max_over_time(up{member=\"b\"}[40s])", 60_000)[0].1,
            1.0
        );
        assert_eq!(q(&db, "c_total / on(member) c_total", 60_000).len(), 2);
        assert_eq!(
            q(&db, "up == bool 1", 60_000)
                .iter()
                .map(|x| x.1)
                .sum::<f64>(),
            1.0
        );
        assert_eq!(q(&db, "up offset 40s == 0", 60_000).len(), 0);
        // stale after the lookback
        assert!(q(&db, "up", 60_000 + DEFAULT_LOOKBACK_MS + 1).is_empty());
    }

    #[test]
    fn unsupported_parts_are_named() {
        for (expr, part) in [
            ("topk(3, up)", "aggregation `topk`"),
            (
                "label_replace(up, \"a\", \"b\", \"c\", \"d\")",
                "function `label_replace`",
            ),
            ("rate(up[5m:1m])", "subquery"),
            ("up @ 100", "`@` modifier"),
            ("up * on(member) group_left up", "group_left"),
        ] {
            let e = parse(expr).unwrap_err();
            assert!(matches!(e, QueryError::Unsupported(_)), "{expr}: {e}");
            assert!(e.to_string().contains(part), "{expr}: {e}");
        }
        assert!(matches!(parse("up{").unwrap_err(), QueryError::Parse(_)));
    }

    #[test]
    fn range_query() {
        let db = db();
        let m = Engine::new(&db)
            .range(&parse("up").unwrap(), 0, 60_000, 10_000)
            .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].points.len(), 7);
        assert!(Engine::new(&db)
            .range(&parse("up").unwrap(), 0, 60_000_000, 1)
            .is_err());
    }
}
