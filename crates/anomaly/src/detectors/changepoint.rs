use super::window::Ring;
use super::{scale_floor, z_to_score, Detector};

/// Parameters of [`ChangePoint`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangePointParams {
    /// Samples in the recent window (default 12).
    pub recent: usize,
    /// Samples in the reference window just before it (default 288).
    pub reference: usize,
    /// Multiplier of the level effect size `(mean_recent − mean_ref)/sd_ref`
    /// (default 2: a 1.5-sd shift gives z = 3).
    pub level_gain: f64,
    /// Multiplier of `|ln(sd_recent / sd_ref)|` (default 3).
    pub var_gain: f64,
}

impl Default for ChangePointParams {
    fn default() -> Self {
        ChangePointParams {
            recent: 12,
            reference: 288,
            level_gain: 2.0,
            var_gain: 3.0,
        }
    }
}

/// Running sum and sum of squares over a ring, recomputed exactly every
/// `cap` evictions to bound floating-point drift.
#[derive(Debug, Clone)]
struct Moments {
    ring: Ring,
    sum: f64,
    sq: f64,
    evictions: usize,
}

impl Moments {
    fn new(cap: usize) -> Moments {
        Moments {
            ring: Ring::new(cap),
            sum: 0.0,
            sq: 0.0,
            evictions: 0,
        }
    }
    fn push(&mut self, v: f64) -> Option<f64> {
        let old = self.ring.push(v);
        self.sum += v;
        self.sq += v * v;
        if let Some(o) = old {
            self.sum -= o;
            self.sq -= o * o;
            self.evictions += 1;
            if self.evictions >= self.ring.cap() {
                self.evictions = 0;
                self.sum = self.ring.iter().sum();
                self.sq = self.ring.iter().map(|x| x * x).sum();
            }
        }
        old
    }
    fn full(&self) -> bool {
        self.ring.len() == self.ring.cap()
    }
    fn mean(&self) -> f64 {
        self.sum / self.ring.len().max(1) as f64
    }
    fn sd(&self) -> f64 {
        let n = self.ring.len().max(1) as f64;
        let m = self.sum / n;
        (self.sq / n - m * m).max(0.0).sqrt()
    }
}

/// Change-point detector: a two-window test comparing the last `recent`
/// samples (including the current one) with the `reference` samples before
/// them — the level shift as an effect size in reference standard
/// deviations, and the variance shift as the log ratio of standard
/// deviations; the larger of the two (after their gains) is the z.
///
/// Catches: sustained level shifts (steps up/down), a series going flat or
/// becoming noisy; these are flagged a few samples after the change and for
/// as long as the recent window differs from the reference. Warm-up: score 0
/// until both windows are full (`recent + reference` samples). Memory: two
/// rings (≈ 2.4 KB by default); O(1) per sample.
#[derive(Debug, Clone)]
pub struct ChangePoint {
    p: ChangePointParams,
    recent: Moments,
    reference: Moments,
}

impl Default for ChangePoint {
    fn default() -> Self {
        ChangePoint::new(ChangePointParams::default())
    }
}

impl ChangePoint {
    /// A detector with these parameters.
    pub fn new(p: ChangePointParams) -> ChangePoint {
        ChangePoint {
            p,
            recent: Moments::new(p.recent.max(2)),
            reference: Moments::new(p.reference.max(4)),
        }
    }
    /// Learns `x` and returns the signed z (sign of the level shift).
    pub fn update(&mut self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        if let Some(old) = self.recent.push(x) {
            self.reference.push(old);
        }
        if !(self.recent.full() && self.reference.full()) {
            return None;
        }
        let mref = self.reference.mean();
        let floor = scale_floor(mref);
        let sref = self.reference.sd().max(floor);
        let d = (self.recent.mean() - mref) / sref;
        let v = (self.recent.sd().max(floor) / sref).ln().abs();
        let zl = d * self.p.level_gain;
        let zv = v * self.p.var_gain;
        Some(if zl.abs() >= zv { zl } else { zv })
    }
    pub(crate) fn heap_bytes(&self) -> usize {
        self.recent.ring.heap_bytes() + self.reference.ring.heap_bytes()
    }
}

impl Detector for ChangePoint {
    fn observe(&mut self, _ts: i64, value: f64) -> f64 {
        self.update(value).map_or(0.0, z_to_score)
    }
    fn name(&self) -> &'static str {
        "changepoint"
    }
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.heap_bytes()
    }
}
