use super::window::RollingWindow;
use super::{scale_floor, z_to_score, Detector};

/// Parameters of [`Robust`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RobustParams {
    /// Samples in the rolling window (default 288: a day of 5-minute data).
    pub window: usize,
    /// Samples needed before scoring (default 48).
    pub warmup: usize,
}

impl Default for RobustParams {
    fn default() -> Self {
        RobustParams {
            window: 288,
            warmup: 48,
        }
    }
}

/// Robust baseline: `z = (x − median) / (1.4826 · MAD)` over a rolling
/// window of the last `window` samples.
///
/// Catches: spikes and dips, and the first samples of a level shift, in
/// series without strong seasonality. Misses anomalies inside the normal
/// range (e.g. a missing daily peak). Warm-up: score 0 until `warmup`
/// samples were seen. Memory: two buffers of `window` f64 (≈ 4.6 KB by
/// default); cost O(window) per sample.
#[derive(Debug, Clone)]
pub struct Robust {
    p: RobustParams,
    win: RollingWindow,
}

impl Default for Robust {
    fn default() -> Self {
        Robust::new(RobustParams::default())
    }
}

impl Robust {
    /// A detector with these parameters.
    pub fn new(p: RobustParams) -> Robust {
        Robust {
            p,
            win: RollingWindow::new(p.window.max(3)),
        }
    }
    /// Scores `x` against the window (signed z), then learns it. `None`
    /// while warming up.
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        let z = (self.win.len() >= self.p.warmup.max(3)).then(|| {
            let m = self.win.median();
            let mut s = 1.4826 * self.win.mad(m);
            if s <= scale_floor(m) {
                // More than half the window equals the median (a flat series
                // with spikes): fall back to the mean absolute deviation.
                s = 1.2533 * self.win.mean_abs_dev(m);
            }
            let s = s.max(scale_floor(m));
            (x - m) / s
        });
        self.win.push(x);
        z
    }
    pub(crate) fn heap_bytes(&self) -> usize {
        self.win.heap_bytes()
    }
}

impl Detector for Robust {
    fn observe(&mut self, _ts: i64, value: f64) -> f64 {
        self.update(value).map_or(0.0, z_to_score)
    }
    fn name(&self) -> &'static str {
        "robust"
    }
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.heap_bytes()
    }
}
