use super::{scale_floor, z_to_score, Detector};

/// Parameters of [`Forecast`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastParams {
    /// Level smoothing (EWMA weight of the new sample).
    pub alpha: f64,
    /// Trend smoothing (0 = plain EWMA).
    pub beta: f64,
    /// Smoothing of the residual scale (mean absolute error).
    pub scale_alpha: f64,
    /// Samples before scoring.
    pub warmup: usize,
}

impl Default for ForecastParams {
    fn default() -> Self {
        ForecastParams {
            alpha: 0.3,
            beta: 0.01,
            scale_alpha: 0.01,
            warmup: 48,
        }
    }
}

/// Forecasting band (Holt's linear exponential smoothing): forecasts the
/// next value from a smoothed level and trend and scores the forecast error
/// against a smoothed mean absolute error (`z = e / (1.25 · MAE)`, errors
/// winsorised at 6 MAE when learning the scale so one spike does not widen
/// the band much).
///
/// Catches: sudden jumps, spikes and drops relative to the recent level,
/// also in drifting series. Adapts within a few samples, so a level shift is
/// flagged only at its start. Warm-up: score 0 for `warmup` samples.
/// Memory: a few f64 (O(1)); cost O(1) per sample.
#[derive(Debug, Clone)]
pub struct Forecast {
    p: ForecastParams,
    n: usize,
    level: f64,
    trend: f64,
    mae: f64,
}

impl Default for Forecast {
    fn default() -> Self {
        Forecast::new(ForecastParams::default())
    }
}

impl Forecast {
    /// A detector with these parameters.
    pub fn new(p: ForecastParams) -> Forecast {
        Forecast {
            p,
            n: 0,
            level: 0.0,
            trend: 0.0,
            mae: 0.0,
        }
    }
    /// Scores `x` (signed z of the forecast error), then learns it.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        self.n += 1;
        if self.n == 1 {
            self.level = x;
            return None;
        }
        let f = self.level + self.trend;
        let e = x - f;
        let scale = (1.25 * self.mae).max(scale_floor(self.level));
        let z = (self.n > self.p.warmup).then(|| e / scale);
        // learn
        let a = if self.n < 10 {
            0.5
        } else {
            self.p.scale_alpha.max(1.0 / self.n as f64)
        };
        let clipped = if self.n > 10 {
            e.abs().min(6.0 * self.mae.max(1e-300))
        } else {
            e.abs()
        };
        self.mae += a * (clipped - self.mae);
        let prev = self.level;
        self.level = self.p.alpha * x + (1.0 - self.p.alpha) * f;
        self.trend = self.p.beta * (self.level - prev) + (1.0 - self.p.beta) * self.trend;
        z
    }
}

impl Detector for Forecast {
    fn observe(&mut self, _ts: i64, value: f64) -> f64 {
        self.update(value).map_or(0.0, z_to_score)
    }
    fn name(&self) -> &'static str {
        "forecast"
    }
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}
