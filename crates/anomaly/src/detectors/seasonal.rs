use super::window::Ring;
use super::{scale_floor, z_to_score, Detector, Interval};

/// Parameters of [`Seasonal`].
#[derive(Debug, Clone, PartialEq)]
pub struct SeasonalParams {
    /// Samples kept for period detection and phase look-ups (default 4096:
    /// two weeks of 5-minute data, 32 KB).
    pub buffer: usize,
    /// Candidate periods in seconds (default: a day and a week).
    pub periods_s: Vec<i64>,
    /// Minimum autocorrelation at the period's lag to use it (default 0.3).
    pub min_acf: f64,
    /// Re-run period detection every this many samples (default 144).
    pub recheck: usize,
    /// Previous cycles used for the same-phase prediction (default 3).
    pub cycles: usize,
    /// Smoothing of the residual scale (default 0.01).
    pub scale_alpha: f64,
    /// Residuals needed before scoring once a period is found (default 24).
    pub warmup: usize,
}

impl Default for SeasonalParams {
    fn default() -> Self {
        SeasonalParams {
            buffer: 4096,
            periods_s: vec![86_400, 7 * 86_400],
            min_acf: 0.3,
            recheck: 144,
            cycles: 3,
            scale_alpha: 0.01,
            warmup: 24,
        }
    }
}

/// Seasonal detector: finds a daily or weekly period from the data (the
/// autocorrelation of a bounded buffer at the lag of each candidate period,
/// using the median sampling interval) and scores the residual of a sample
/// against the median of the same phase (±1 sample) in the previous
/// `cycles` periods, scaled by a smoothed mean absolute residual.
///
/// Catches: anomalies that stay in the normal range but at the wrong time
/// (a missing daily peak, a flat stretch where a cycle is expected, a peak
/// at night). Needs two periods of history to detect a period (two days for
/// a daily one); until a period is found, and for `warmup` samples after,
/// the score is 0. Memory: the `buffer` ring (32 KB by default); cost O(1)
/// per sample plus O(buffer) every `recheck` samples.
#[derive(Debug, Clone)]
pub struct Seasonal {
    p: SeasonalParams,
    buf: Ring,
    interval: Interval,
    period: Option<usize>,
    since_check: usize,
    mae: f64,
    n_resid: usize,
}

impl Default for Seasonal {
    fn default() -> Self {
        Seasonal::new(SeasonalParams::default())
    }
}

impl Seasonal {
    /// A detector with these parameters.
    pub fn new(p: SeasonalParams) -> Seasonal {
        Seasonal {
            buf: Ring::new(p.buffer.max(16)),
            p,
            interval: Interval::new(),
            period: None,
            since_check: 0,
            mae: 0.0,
            n_resid: 0,
        }
    }

    /// The detected period in samples, if any.
    pub fn period(&self) -> Option<usize> {
        self.period
    }

    fn detect_period(&mut self) {
        let Some(step) = self.interval.step() else {
            return;
        };
        let n = self.buf.len();
        let vals: Vec<f64> = self.buf.iter().collect();
        let mean = vals.iter().sum::<f64>() / n as f64;
        let var: f64 = vals.iter().map(|v| (v - mean) * (v - mean)).sum();
        if var <= 0.0 {
            self.set_period(None);
            return;
        }
        let mut best: Option<(usize, f64)> = None;
        for &ps in &self.p.periods_s {
            let lag = (ps as f64 / step).round() as usize;
            if lag < 4 || 2 * lag > n {
                continue;
            }
            let c: f64 = (lag..n)
                .map(|i| (vals[i] - mean) * (vals[i - lag] - mean))
                .sum();
            let acf = c / var;
            if acf >= self.p.min_acf && best.is_none_or(|(_, b)| acf > b) {
                best = Some((lag, acf));
            }
        }
        self.set_period(best.map(|b| b.0));
    }

    fn set_period(&mut self, p: Option<usize>) {
        if p != self.period {
            self.period = p;
            self.n_resid = 0;
            self.mae = 0.0;
        }
    }

    /// Same-phase prediction from the buffer (before `x` is pushed).
    fn predict(&self, period: usize) -> Option<f64> {
        let mut v = [0.0f64; 48];
        let mut k = 0;
        for c in 1..=self.p.cycles.min(16) {
            for j in [0usize, 1, 2] {
                // back(c·P − 1) is the sample one period ago; ±1 around it.
                let back = (c * period + j).checked_sub(2);
                if let Some(x) = back.and_then(|b| self.buf.back(b)) {
                    v[k] = x;
                    k += 1;
                }
            }
        }
        if k == 0 {
            return None;
        }
        let s = &mut v[..k];
        // At most 9 values here (3 cycles × 3 phases by default): an
        // insertion sort (by the same total order) is faster than the
        // general sort at this size.
        for i in 1..k {
            let x = s[i];
            let mut j = i;
            while j > 0 && s[j - 1].total_cmp(&x).is_gt() {
                s[j] = s[j - 1];
                j -= 1;
            }
            s[j] = x;
        }
        Some(if k % 2 == 1 {
            s[k / 2]
        } else {
            0.5 * (s[k / 2 - 1] + s[k / 2])
        })
    }

    /// Scores `x` (signed z of the same-phase residual), then learns it.
    /// `None` while no period is known or warming up.
    pub fn update(&mut self, ts: i64, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        self.interval.update(ts);
        self.since_check += 1;
        if self.since_check >= self.p.recheck.max(1) {
            self.since_check = 0;
            self.detect_period();
        }
        let mut z = None;
        if let Some(period) = self.period {
            if let Some(pred) = self.predict(period) {
                let r = x - pred;
                let scale = (1.25 * self.mae).max(scale_floor(pred));
                if self.n_resid >= self.p.warmup {
                    z = Some(r / scale);
                }
                self.n_resid += 1;
                let a = self.p.scale_alpha.max(1.0 / self.n_resid as f64);
                let clipped = if self.n_resid > 10 {
                    r.abs().min(6.0 * self.mae)
                } else {
                    r.abs()
                };
                self.mae += a * (clipped - self.mae);
            }
        }
        self.buf.push(x);
        z
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.heap_bytes() + self.interval.heap_bytes() + self.p.periods_s.capacity() * 8
    }
}

impl Detector for Seasonal {
    fn observe(&mut self, ts: i64, value: f64) -> f64 {
        self.update(ts, value).map_or(0.0, z_to_score)
    }
    fn name(&self) -> &'static str {
        "seasonal"
    }
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.heap_bytes()
    }
}
