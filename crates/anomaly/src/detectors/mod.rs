//! The detection methods. Every method is online: `observe` scores a sample
//! from the samples before it (the sample itself is learned *after* it has
//! been scored), keeps a bounded state ([`MAX_BYTES_PER_SERIES`]) and costs
//! O(1) or O(window) per sample.
//!
//! Scores are in `[0, 1]`. The single-model detectors map their deviation
//! `z` (in robust standard deviations) to `z² / (z² + 9)`, so 0.5 means
//! "3 sigma"; while warming up they return 0 ("no evidence").

mod cad;
mod changepoint;
mod ensemble;
mod forecast;
mod robust;
mod seasonal;
pub mod window;

pub use cad::{
    Cad, CadParams, CAD_MAX_BYTES, MAX_ACTIVE_NEURONS_LIMIT, MAX_CONTEXTS, NEURON_SLOTS,
    WITHIN_CACHE_ENTRIES,
};
pub use changepoint::{ChangePoint, ChangePointParams};
pub use ensemble::{Ensemble, EnsembleParams};
pub use forecast::{Forecast, ForecastParams};
pub use robust::{Robust, RobustParams};
pub use seasonal::{Seasonal, SeasonalParams};

use crate::Error;

/// Upper bound on the memory one detector instance (one series) uses, in
/// bytes, for every method with its default parameters (checked by tests via
/// [`Detector::memory_bytes`]). The largest parts are the CAD context
/// memory ([`CAD_MAX_BYTES`], at most [`MAX_CONTEXTS`] contexts) and the
/// seasonal buffer (33 KB).
pub const MAX_BYTES_PER_SERIES: usize = 192 * 1024;

/// An online anomaly detector for one series.
pub trait Detector: Send {
    /// Feeds the next sample (`ts_unix_s`: seconds since the epoch, normally
    /// non-decreasing; `value`: the measurement) and returns its anomaly
    /// score in `[0, 1]`, computed from this sample and earlier ones only.
    /// Non-finite values are not learned and score 0.
    fn observe(&mut self, ts_unix_s: i64, value: f64) -> f64;
    /// The method name (as accepted by [`by_name`]).
    fn name(&self) -> &'static str;
    /// Bytes used by this instance (inline plus heap); bounded by
    /// [`MAX_BYTES_PER_SERIES`] for the default parameters.
    fn memory_bytes(&self) -> usize;
}

/// The method [`by_name`] builds when none is asked for.
pub const DEFAULT_METHOD: &str = "ensemble";

/// The method names [`by_name`] accepts.
pub const METHODS: &[&str] = &[
    "ensemble",
    "robust",
    "seasonal",
    "forecast",
    "changepoint",
    "cad",
];

/// Builds a detector with default parameters by name (see [`METHODS`]).
pub fn by_name(name: &str) -> Result<Box<dyn Detector>, Error> {
    Ok(match name {
        "ensemble" | "default" => Box::new(Ensemble::default()),
        "robust" => Box::new(Robust::default()),
        "seasonal" => Box::new(Seasonal::default()),
        "forecast" => Box::new(Forecast::default()),
        "changepoint" => Box::new(ChangePoint::default()),
        "cad" => Box::new(Cad::default()),
        other => return Err(Error::UnknownMethod(other.to_string())),
    })
}

/// Maps a deviation in standard deviations to a score: `z²/(z²+9)`.
pub fn z_to_score(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    let z2 = z * z;
    if z2.is_infinite() {
        1.0
    } else {
        z2 / (z2 + 9.0)
    }
}

/// A robust scale floor so a perfectly flat history does not turn the
/// smallest wiggle into an infinite z: a fraction of the value's magnitude
/// plus a tiny absolute term.
pub(crate) fn scale_floor(level: f64) -> f64 {
    1e-3 * level.abs() + 1e-9
}

/// Estimates the typical sampling interval: the median of the last few
/// positive timestamp steps.
#[derive(Debug, Clone)]
pub(crate) struct Interval {
    last_ts: Option<i64>,
    steps: window::RollingWindow,
}

impl Interval {
    pub(crate) fn new() -> Interval {
        Interval {
            last_ts: None,
            steps: window::RollingWindow::new(15),
        }
    }
    pub(crate) fn update(&mut self, ts: i64) {
        if let Some(p) = self.last_ts {
            if ts > p {
                self.steps.push((ts - p) as f64);
            }
        }
        self.last_ts = Some(self.last_ts.map_or(ts, |p| p.max(ts)));
    }
    /// Typical step in seconds, once known.
    pub(crate) fn step(&self) -> Option<f64> {
        (!self.steps.is_empty()).then(|| self.steps.median())
    }
    pub(crate) fn heap_bytes(&self) -> usize {
        self.steps.heap_bytes()
    }
}
