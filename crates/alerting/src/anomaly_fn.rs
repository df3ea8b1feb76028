//! PromQL anomaly functions over the metrics history (docs/anomaly.md,
//! "Anomaly alerts"), backed by the `anomaly` crate's streaming detectors.
//!
//! * `anomaly_score(v, "method")` — for each series of the instant-vector
//!   expression `v`, the detector `method` (see [`anomaly::METHODS`]) is run
//!   online over `v` evaluated on the step grid (`step_ms`, the history's
//!   resolution: the scrape interval) over at most
//!   [`AnomalySettings::anomaly_lookback_samples`] past points; the result is
//!   the score in `[0, 1]` at the last grid point at or before the evaluation
//!   time — more exactly the highest score of the grid points fed since the
//!   previous evaluation of the same expression (so a spike between two
//!   evaluations is not lost; detectors such as `ensemble` suppress repeated
//!   alarms), or the last point's score when the state was (re)built.
//! * `anomaly_observed(v, "method")` — the value of `v` the score was
//!   computed for; `anomaly_expected(v, "method")`, `anomaly_lower(v, …)`,
//!   `anomaly_upper(v, …)` — the expected band before that value: the median
//!   of the last [`AnomalySettings::band_window`] values and median ∓ 3 robust
//!   standard deviations (1.4826 × MAD).
//! * `anomaly_alert(v, "method", threshold)` — for alert rules: the series
//!   whose score is above `threshold` (a number literal in `[0, 1]`), valued
//!   at the observed value, carrying the band as internal labels
//!   ([`LABEL_LOWER`] & co., `__`-prefixed like `__name__`) that annotation
//!   templates read (`{{ $labels.__anomaly_lower__ | humanize }}`) and that
//!   are not part of an alert's identity (see `rules`), so a moving band does
//!   not make a new alert. It shares the detector state of `anomaly_score`
//!   with the same expression and method.
//!
//! Work is bounded by a cache of detector state per (inner expression and
//! method, series): each evaluation feeds only the grid points after the
//! ones already fed; a new series (or one whose state is older than the
//! lookback) replays at most `anomaly_lookback_samples` points. At most
//! [`AnomalySettings::max_cached_series`] series are cached; a new series past
//! it gets no result and is counted in [`AnomalyCache::refused_total`].
//! Results are deterministic: they depend only on the history and the
//! sequence of evaluation times.
//!
//! A query at a time before the cached states (ad-hoc or range queries in
//! the past) uses a per-thread scratch cache instead, so rule evaluations'
//! states are never rewound.
//!
//! The cache used is the one installed on the current thread by
//! [`with_cache`], otherwise the process-wide one ([`global_cache`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Once, OnceLock};

use promql_parser::parser::function::{register_extra_functions, Function};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self as pp, Expr};

use crate::promql::{self, Engine, QueryError, Sample, Value};
use crate::tsdb::Labels;

/// The anomaly functions the PromQL subset accepts.
pub const ANOMALY_FUNCTIONS: &[&str] = &[
    "anomaly_score",
    "anomaly_observed",
    "anomaly_expected",
    "anomaly_lower",
    "anomaly_upper",
    "anomaly_alert",
];

/// Internal labels `anomaly_alert` attaches to each series it returns, for
/// annotation templates (values formatted as PromQL numbers; labels starting
/// with `__` are not part of an alert's identity). The series' own labels,
/// as PromQL writes them: `{member="a", pool="p"}`.
pub const LABEL_SERIES: &str = "__anomaly_series__";
/// The method (`robust`, `ensemble`, …).
pub const LABEL_METHOD: &str = "__anomaly_method__";
/// The detector's score in `[0, 1]`, to 4 decimals (for reading; the
/// other values are exact).
pub const LABEL_SCORE: &str = "__anomaly_score__";
/// The value scored (also the sample's value).
pub const LABEL_OBSERVED: &str = "__anomaly_observed__";
/// The expected value: the median of the band window before it.
pub const LABEL_EXPECTED: &str = "__anomaly_expected__";
/// Lower end of the expected band (median − 3 robust standard deviations).
pub const LABEL_LOWER: &str = "__anomaly_lower__";
/// Upper end of the expected band (median + 3 robust standard deviations).
pub const LABEL_UPPER: &str = "__anomaly_upper__";

/// Default sensitivity of the default anomaly rules: the score threshold.
pub const DEFAULT_ANOMALY_SENSITIVITY: f64 = 0.9;

/// Default anomaly rules (latency and error ratio), as a Prometheus rule
/// file, switched on, with the sensitivity [`DEFAULT_ANOMALY_SENSITIVITY`]
/// (score `> 0.9`; see [`anomaly_rules_with_sensitivity`]). Written with
/// `anomaly_alert`, so `$value` is the observed value and the annotations
/// state the series, the observed value and the expected band.
/// Method `robust` (rolling median + MAD: 0.9 ⇔ more than 9 robust standard
/// deviations off): `ensemble` alarms score in [0.5, 1] and are suppressed
/// after the first, so a fixed `> 0.9` on it can miss a level shift.
pub const DEFAULT_ANOMALY_RULES: &str = r#"groups:
- name: phalanx-anomaly
  rules:
  - alert: PhalanxLatencyAnomaly
    expr: anomaly_alert(histogram_quantile(0.99, rate(phalanx_server_proposal_duration_seconds_bucket[5m])), "robust", 0.9, "above")
    keep_firing_for: 5m
    labels:
      severity: warning
      kind: anomaly
    annotations:
      summary: "99th percentile commit latency of {{ $labels.member }} is anomalous: {{ $value | humanize }}s, expected {{ $labels.__anomaly_lower__ | humanize }}s to {{ $labels.__anomaly_upper__ | humanize }}s"
      description: "Series {{ $labels.__anomaly_series__ }} of histogram_quantile(0.99, rate(phalanx_server_proposal_duration_seconds_bucket[5m])): observed {{ $labels.__anomaly_observed__ | humanize }}s; expected {{ $labels.__anomaly_expected__ | humanize }}s, band {{ $labels.__anomaly_lower__ | humanize }}s to {{ $labels.__anomaly_upper__ | humanize }}s (median and 3 robust standard deviations of the values before); anomaly score {{ $labels.__anomaly_score__ }} (method {{ $labels.__anomaly_method__ }}) is above 0.9."
  - alert: PhalanxGatewayLatencyAnomaly
    expr: anomaly_alert(histogram_quantile(0.99, sum by (member, pool, le) (rate(gateway_downstream_latency_seconds_bucket[1m]))), "robust", 0.9, "above")
    keep_firing_for: 5m
    labels:
      severity: warning
      kind: anomaly
    annotations:
      summary: "Gateway on {{ $labels.member }}: 99th percentile latency of pool {{ $labels.pool }} is anomalous: {{ $value | humanize }}s, expected {{ $labels.__anomaly_lower__ | humanize }}s to {{ $labels.__anomaly_upper__ | humanize }}s"
      description: "Series {{ $labels.__anomaly_series__ }} of histogram_quantile(0.99, sum by (member, pool, le) (rate(gateway_downstream_latency_seconds_bucket[1m]))): observed {{ $labels.__anomaly_observed__ | humanize }}s; expected {{ $labels.__anomaly_expected__ | humanize }}s, band {{ $labels.__anomaly_lower__ | humanize }}s to {{ $labels.__anomaly_upper__ | humanize }}s (median and 3 robust standard deviations of the values before); anomaly score {{ $labels.__anomaly_score__ }} (method {{ $labels.__anomaly_method__ }}) is above 0.9."
  - alert: PhalanxGatewayErrorRatioAnomaly
    expr: anomaly_alert(sum by (member, pool) (rate(gateway_downstream_responses_total{class="5xx"}[1m])) / sum by (member, pool) (rate(gateway_downstream_responses_total[1m])), "robust", 0.9, "above")
    keep_firing_for: 5m
    labels:
      severity: warning
      kind: anomaly
    annotations:
      summary: "Gateway on {{ $labels.member }}: 5xx ratio of pool {{ $labels.pool }} is anomalous: {{ $value | humanizePercentage }}, expected {{ $labels.__anomaly_lower__ | humanizePercentage }} to {{ $labels.__anomaly_upper__ | humanizePercentage }}"
      description: "Series {{ $labels.__anomaly_series__ }} of the 5xx ratio (rate over 1m): observed {{ $labels.__anomaly_observed__ | humanizePercentage }}; expected {{ $labels.__anomaly_expected__ | humanizePercentage }}, band {{ $labels.__anomaly_lower__ | humanizePercentage }} to {{ $labels.__anomaly_upper__ | humanizePercentage }} (median and 3 robust standard deviations of the values before); anomaly score {{ $labels.__anomaly_score__ }} (method {{ $labels.__anomaly_method__ }}) is above 0.9."
"#;

/// [`DEFAULT_ANOMALY_RULES`] with the score threshold `sensitivity` (in
/// `(0, 1)`; higher alerts less) instead of 0.9.
pub fn anomaly_rules_with_sensitivity(sensitivity: f64) -> String {
    DEFAULT_ANOMALY_RULES
        .replace("\"robust\", 0.9,", &format!("\"robust\", {sensitivity},"))
        .replace("is above 0.9", &format!("is above {sensitivity}"))
}

/// Bounds of the anomaly functions.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalySettings {
    /// The grid the inner expression is evaluated on (the history's
    /// resolution; the scrape interval).
    pub step_ms: i64,
    /// Most grid points fed to a detector in one evaluation (the replay of a
    /// new series).
    pub anomaly_lookback_samples: usize,
    /// Most (expression, series) detector states kept; new ones past it are
    /// refused and counted.
    pub max_cached_series: usize,
    /// Values the expected band is computed from.
    pub band_window: usize,
    /// `anomaly_alert` returns a series only when its value is also at least
    /// `1 + this` times the expected value, or at most the expected value
    /// divided by it (1.0: at least double or at most half; no floor when the
    /// expected value is 0 or less). A p99 latency that moves
    /// by tens of percent on a busy machine is statistically unusual but no
    /// incident; scores are unaffected.
    pub alert_min_relative_change: f64,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        AnomalySettings {
            step_ms: 5_000,
            anomaly_lookback_samples: 2_000,
            max_cached_series: 256,
            band_window: 120,
            alert_min_relative_change: 1.0,
        }
    }
}

struct Entry {
    det: Box<dyn anomaly::Detector>,
    /// Last grid point fed.
    last_ms: i64,
    /// Score and value at the last grid point with a value.
    score: f64,
    value: f64,
    /// The last `band_window + 1` values (the newest last).
    recent: VecDeque<f64>,
}

/// Detector states per (inner expression and method, series).
pub struct AnomalyCache {
    settings: AnomalySettings,
    entries: BTreeMap<(String, Labels), Entry>,
    /// Series refused because `max_cached_series` was reached (running total).
    pub refused_total: u64,
    /// Grid points fed to detectors (running total).
    pub samples_fed_total: u64,
}

impl AnomalyCache {
    pub fn new(settings: AnomalySettings) -> Self {
        AnomalyCache {
            settings,
            entries: BTreeMap::new(),
            refused_total: 0,
            samples_fed_total: 0,
        }
    }

    pub fn settings(&self) -> &AnomalySettings {
        &self.settings
    }

    /// Cached series.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The process-wide cache (used unless [`with_cache`] installed another).
pub fn global_cache() -> &'static Arc<Mutex<AnomalyCache>> {
    static G: OnceLock<Arc<Mutex<AnomalyCache>>> = OnceLock::new();
    G.get_or_init(|| Arc::new(Mutex::new(AnomalyCache::new(AnomalySettings::default()))))
}

/// Replace the process-wide cache's settings (drops its state).
pub fn configure_global(settings: AnomalySettings) {
    *lock(global_cache()) = AnomalyCache::new(settings);
}

thread_local! {
    static SCOPED: RefCell<Option<Arc<Mutex<AnomalyCache>>>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Option<Arc<Mutex<AnomalyCache>>>> = const { RefCell::new(None) };
}

/// Run `f` with `cache` as the anomaly functions' cache on this thread.
pub fn with_cache<R>(cache: &Arc<Mutex<AnomalyCache>>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Mutex<AnomalyCache>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            SCOPED.with(|s| *s.borrow_mut() = prev);
        }
    }
    let prev = SCOPED.with(|s| s.borrow_mut().replace(cache.clone()));
    let _restore = Restore(prev);
    f()
}

fn current_cache() -> Arc<Mutex<AnomalyCache>> {
    SCOPED
        .with(|s| s.borrow().clone())
        .unwrap_or_else(|| global_cache().clone())
}

fn lock(m: &Mutex<AnomalyCache>) -> std::sync::MutexGuard<'_, AnomalyCache> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Make the parser accept the anomaly functions (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let funcs = ANOMALY_FUNCTIONS
            .iter()
            .map(|n| {
                let mut args = vec![ValueType::Vector, ValueType::String];
                let mut optional = 0;
                if *n == "anomaly_alert" {
                    // threshold, then an optional direction
                    args.extend([ValueType::Scalar, ValueType::String]);
                    optional = 1;
                }
                Function::new(n, args, optional, ValueType::Vector, false)
            })
            .collect();
        register_extra_functions(funcs).expect("anomaly function names are not built-in");
    });
}

/// Whether `name` is one of [`ANOMALY_FUNCTIONS`].
pub fn is_anomaly_fn(name: &str) -> bool {
    ANOMALY_FUNCTIONS.contains(&name)
}

/// Parse-time check: two arguments, the method a string literal naming a
/// known method (`anomaly_alert`: and a threshold, a number in `[0, 1]`).
pub fn check_call(c: &pp::Call) -> Result<(), QueryError> {
    match method_of(c)
        .and_then(|_| threshold_of(c))
        .and_then(|_| direction_of(c))
    {
        Ok(_) => Ok(()),
        Err(QueryError::Eval(m)) => Err(QueryError::Parse(m)),
        Err(e) => Err(e),
    }
}

fn method_of(c: &pp::Call) -> Result<String, QueryError> {
    let name = c.func.name;
    let args = &c.args.args;
    let (want, usage) = if name == "anomaly_alert" {
        (
            3..=4,
            "(expression, \"method\", threshold[, \"above\"|\"below\"|\"both\"])",
        )
    } else {
        (2..=2, "(expression, \"method\")")
    };
    if !want.contains(&args.len()) {
        let want = if want.start() == want.end() {
            want.start().to_string()
        } else {
            format!("{} or {}", want.start(), want.end())
        };
        return Err(QueryError::Eval(format!(
            "{name}: expected {want} arguments {usage}, got {}",
            args.len()
        )));
    }
    let method = match args[1].as_ref() {
        Expr::StringLiteral(s) => s.val.clone(),
        other => {
            return Err(QueryError::Eval(format!(
                "{name}: the method must be a string literal, got `{other}`"
            )))
        }
    };
    anomaly::by_name(&method).map_err(|e| QueryError::Eval(format!("{name}: {e}")))?;
    Ok(method)
}

/// Which side of the expected value an `anomaly_alert` fires on: a latency
/// or error ratio that *drops* is unusual but no incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Above,
    Below,
    Both,
}

/// `anomaly_alert`'s optional fourth argument (default `both`).
fn direction_of(c: &pp::Call) -> Result<Direction, QueryError> {
    match c.args.args.get(3).map(|a| a.as_ref()) {
        None => Ok(Direction::Both),
        Some(Expr::StringLiteral(s)) => match s.val.as_str() {
            "above" => Ok(Direction::Above),
            "below" => Ok(Direction::Below),
            "both" => Ok(Direction::Both),
            other => Err(QueryError::Eval(format!(
                "anomaly_alert: the direction must be \"above\", \"below\" or \"both\", got {other:?}"
            ))),
        },
        Some(other) => Err(QueryError::Eval(format!(
            "anomaly_alert: the direction must be a string literal, got `{other}`"
        ))),
    }
}

/// `anomaly_alert`'s threshold: a number literal in `[0, 1]` (None for the
/// other functions).
fn threshold_of(c: &pp::Call) -> Result<Option<f64>, QueryError> {
    if c.func.name != "anomaly_alert" {
        return Ok(None);
    }
    match c.args.args.get(2).map(|a| a.as_ref()) {
        Some(Expr::NumberLiteral(n)) if (0.0..=1.0).contains(&n.val) => Ok(Some(n.val)),
        Some(other) => Err(QueryError::Eval(format!(
            "anomaly_alert: the threshold must be a number in [0, 1] (a score), got `{other}`"
        ))),
        None => Err(QueryError::Eval(
            "anomaly_alert: missing the threshold".into(),
        )),
    }
}

/// A series' labels as PromQL writes them: `{a="x", b="y"}`.
fn series_text(l: &Labels) -> String {
    let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn drop_name(mut l: Labels) -> Labels {
    l.remove("__name__");
    l
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (lower, expected, upper) from the values before the newest one.
fn band(e: &Entry) -> (f64, f64, f64) {
    let n = e.recent.len();
    if n < 2 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut past: Vec<f64> = e
        .recent
        .iter()
        .take(n - 1)
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if past.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let med = median(&mut past);
    let mut dev: Vec<f64> = past.iter().map(|x| (x - med).abs()).collect();
    let sigma = 1.4826 * median(&mut dev);
    (med - 3.0 * sigma, med, med + 3.0 * sigma)
}

fn vector_at(engine: &Engine, inner: &Expr, t: i64, name: &str) -> Result<Vec<Sample>, QueryError> {
    match engine.instant(inner, t)? {
        Value::Vector(v) => Ok(v),
        Value::Scalar(x) => Ok(vec![Sample {
            labels: Labels::new(),
            value: x,
        }]),
        _ => Err(QueryError::Eval(format!(
            "{name}: the first argument must be an instant vector expression, got `{inner}`"
        ))),
    }
}

/// Evaluate one anomaly function call at `t` (ms).
pub fn eval_call(engine: &Engine, c: &pp::Call, t: i64) -> Result<Value, QueryError> {
    let name = c.func.name;
    let method = method_of(c)?;
    let threshold = threshold_of(c)?;
    let direction = direction_of(c)?;
    let inner: &Expr = c.args.args[0].as_ref();
    let key = format!("{inner}|{method}");
    let mut cache = current_cache();
    let (step, lookback, min_change) = {
        let g = lock(&cache);
        (
            g.settings.step_ms.max(1),
            g.settings.anomaly_lookback_samples.max(1) as i64,
            g.settings.alert_min_relative_change.max(0.0),
        )
    };
    let end = t.div_euclid(step) * step;
    let earliest = end - (lookback - 1) * step;
    // A query at a time before the cached states (an ad-hoc or range query
    // in the past) must not rewind them: it uses this thread's scratch
    // cache (same settings), which a range query then feeds incrementally.
    let in_past = lock(&cache)
        .entries
        .range((key.clone(), Labels::new())..)
        .take_while(|((k, _), _)| *k == key)
        .any(|(_, e)| e.last_ms > end);
    if in_past {
        let settings = lock(&cache).settings.clone();
        cache = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let fresh = s.as_ref().is_none_or(|c| lock(c).settings != settings);
            if fresh {
                *s = Some(Arc::new(Mutex::new(AnomalyCache::new(settings))));
            }
            s.as_ref().expect("set above").clone()
        });
    }
    let now = vector_at(engine, inner, end, name)?;
    let series: BTreeMap<Labels, f64> = now
        .into_iter()
        .map(|s| (drop_name(s.labels), s.value))
        .collect();

    // Where each series starts being fed (None: refused).
    let mut from: BTreeMap<Labels, Option<i64>> = BTreeMap::new();
    let mut pending = 0;
    {
        let mut g = lock(&cache);
        for l in series.keys() {
            let k = (key.clone(), l.clone());
            let f = match g.entries.get(&k) {
                Some(e) if e.last_ms == end => None,
                Some(e) if e.last_ms > end => Some(earliest),
                Some(e) => Some((e.last_ms + step).max(earliest)),
                None => {
                    if g.entries.len() + pending >= g.settings.max_cached_series {
                        // Drop states older than any lookback first.
                        g.entries.retain(|_, e| e.last_ms >= earliest - step);
                    }
                    if g.entries.len() + pending >= g.settings.max_cached_series {
                        g.refused_total += 1;
                        from.insert(l.clone(), None);
                        continue;
                    }
                    pending += 1;
                    Some(earliest)
                }
            };
            if let Some(f) = f {
                from.insert(l.clone(), Some(f));
            }
        }
    }

    // Evaluate the inner expression on the grid without holding the lock.
    let first = from.values().flatten().copied().min();
    let mut points: Vec<(i64, BTreeMap<Labels, f64>)> = Vec::new();
    if let Some(first) = first {
        let mut g = first;
        while g < end {
            let v = vector_at(engine, inner, g, name)?
                .into_iter()
                .map(|s| (drop_name(s.labels), s.value))
                .collect();
            points.push((g, v));
            g += step;
        }
        points.push((end, series.clone()));
    }

    let mut g = lock(&cache);
    let band_window = g.settings.band_window.max(1);
    let mut fed = 0u64;
    let mut out = Vec::new();
    for (l, _) in series.iter() {
        let k = (key.clone(), l.clone());
        match from.get(l) {
            Some(None) => continue,
            Some(Some(f)) => {
                let f = *f;
                let reset = g
                    .entries
                    .get(&k)
                    .is_none_or(|e| e.last_ms + step < f || e.last_ms >= f);
                if reset {
                    let det = anomaly::by_name(&method)
                        .map_err(|e| QueryError::Eval(format!("{name}: {e}")))?;
                    g.entries.insert(
                        k.clone(),
                        Entry {
                            det,
                            last_ms: f - step,
                            score: 0.0,
                            value: f64::NAN,
                            recent: VecDeque::new(),
                        },
                    );
                }
                let e = g.entries.get_mut(&k).expect("inserted above");
                let mut batch_max = f64::NEG_INFINITY;
                for (ts, vals) in points.iter().filter(|(ts, _)| *ts >= f) {
                    if let Some(v) = vals.get(l) {
                        let score = e.det.observe(ts.div_euclid(1000), *v);
                        // Incrementally: the highest score since the
                        // previous evaluation (a spike between two
                        // evaluations is not lost); on a replay: the last.
                        e.score = if reset { score } else { batch_max.max(score) };
                        batch_max = batch_max.max(score);
                        e.value = *v;
                        e.recent.push_back(*v);
                        while e.recent.len() > band_window + 1 {
                            e.recent.pop_front();
                        }
                        fed += 1;
                    }
                    e.last_ms = *ts;
                }
            }
            None => {}
        }
        let Some(e) = g.entries.get(&k) else { continue };
        if let Some(threshold) = threshold {
            // anomaly_alert: the series above the threshold, at the
            // observed value, with the band for the annotations.
            let (lo, mid, hi) = band(e);
            // The change floor is a ratio (×(1 + c) up, ÷(1 + c) down) of a
            // positive expected value; none for an expected value <= 0.
            let (up, down) = if mid > 0.0 {
                (mid * (1.0 + min_change), mid / (1.0 + min_change))
            } else {
                (mid, mid)
            };
            let above = e.value > hi.max(up);
            let below = e.value < lo.min(down);
            let on_side = match direction {
                Direction::Both => above || below,
                Direction::Above => above,
                Direction::Below => below,
            };
            if e.score > threshold && on_side {
                let mut labels = l.clone();
                for (k, v) in [
                    (LABEL_SERIES, series_text(l)),
                    (LABEL_METHOD, method.clone()),
                    (
                        LABEL_SCORE,
                        promql::format_value((e.score * 1e4).round() / 1e4),
                    ),
                    (LABEL_OBSERVED, promql::format_value(e.value)),
                    (LABEL_EXPECTED, promql::format_value(mid)),
                    (LABEL_LOWER, promql::format_value(lo)),
                    (LABEL_UPPER, promql::format_value(hi)),
                ] {
                    labels.insert(k.to_string(), v);
                }
                out.push(Sample {
                    labels,
                    value: e.value,
                });
            }
            continue;
        }
        let value = match name {
            "anomaly_score" => e.score,
            "anomaly_observed" => e.value,
            _ => {
                let (lo, mid, hi) = band(e);
                match name {
                    "anomaly_lower" => lo,
                    "anomaly_upper" => hi,
                    _ => mid,
                }
            }
        };
        out.push(Sample {
            labels: l.clone(),
            value,
        });
    }
    g.samples_fed_total += fed;
    Ok(Value::Vector(out))
}
