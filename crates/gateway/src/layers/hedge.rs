//! Hedging layer: when a try of an idempotent request has not answered
//! after a delay, send another try to a different endpoint; the first
//! good answer wins and the others are cancelled (dropping a hyper client
//! future closes its connection).
//!
//! Sans-I/O: [`HedgeState`] is told what happened (the delay elapsed, a try
//! ended) and the budget's answer, and says what to do; [`LatencyWindow`]
//! keeps the route's recent try latencies for a percentile delay.
//! [`crate::proxy`] does the racing.
//!
//! ```text
//!   Racing(in_flight = 1, sent = 0)
//!     ── delay elapsed, sent < max_hedges_per_request, an untried endpoint,
//!        budget.withdraw() granted ──▶ Hedge: start one more try; sent += 1
//!                                      (the delay timer restarts for the next)
//!     ── delay elapsed, budget refused ─▶ no more hedges (`denied`)
//!     ── a try answers with a status not in retry_on_status ─▶ Won: that answer;
//!                                      the other tries are cancelled
//!     ── a try fails (error or retryable status), others in flight ─▶ keep racing
//!     ── the last try in flight fails ─▶ Lost: its result goes to the retry layer
//! ```
//!
//! Each hedge spends one retry from the pool's [`super::retry::RetryBudget`],
//! so hedging can never add more load than retries could. The delay is
//! `after_ms`, or, with `percentile > 0` and at least `min_samples`
//! latencies seen, that percentile of the last `window_samples` completed
//! try latencies (never less than `min_delay_ms`). Only completed tries are
//! recorded: a cancelled slow try is not, which pulls the percentile down
//! while one endpoint is slow — hedging grows more eager exactly then,
//! bounded by the budget.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::HedgeConfig;

/// Recompute the cached percentile after this many new samples, so a
/// request does not sort the whole window.
const RECOMPUTE_EVERY_SAMPLES: usize = 16;

/// The route's recent try latencies (bounded ring).
#[derive(Debug, Default)]
pub struct LatencyWindow {
    inner: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    samples_us: VecDeque<u64>,
    since_recompute: usize,
    cached: Option<(u64, f64)>,
}

impl LatencyWindow {
    /// Record one completed try's latency; keeps the last `cap` samples.
    pub fn record(&self, d: Duration, cap: usize) {
        let mut w = self.inner.lock().unwrap();
        while w.samples_us.len() >= cap.max(1) {
            w.samples_us.pop_front();
        }
        w.samples_us.push_back(d.as_micros() as u64);
        w.since_recompute += 1;
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().samples_us.len()
    }

    /// True when no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `p`-th percentile (nearest rank) of the samples, or None with
    /// fewer than `min_samples`.
    pub fn percentile(&self, p: f64, min_samples: usize) -> Option<Duration> {
        let mut w = self.inner.lock().unwrap();
        let n = w.samples_us.len();
        if n == 0 || n < min_samples {
            return None;
        }
        if let Some((v, cp)) = w.cached {
            if cp == p && w.since_recompute < RECOMPUTE_EVERY_SAMPLES {
                return Some(Duration::from_micros(v));
            }
        }
        let mut s: Vec<u64> = w.samples_us.iter().copied().collect();
        s.sort_unstable();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let v = s[rank.clamp(1, n) - 1];
        w.cached = Some((v, p));
        w.since_recompute = 0;
        Some(Duration::from_micros(v))
    }
}

/// How long the first try runs alone before a hedge.
pub fn delay(cfg: &HedgeConfig, window: &LatencyWindow) -> Duration {
    if cfg.percentile > 0.0 {
        if let Some(p) = window.percentile(cfg.percentile, cfg.min_samples) {
            return p.max(Duration::from_millis(cfg.min_delay_ms));
        }
    }
    Duration::from_millis(cfg.after_ms)
}

/// What the racing loop should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start one more try (the budget has been charged).
    Hedge,
    /// Keep waiting for the tries in flight (no timer needed any more).
    Wait,
    /// This try's answer is the result; cancel the others.
    Won,
    /// Every try failed; this last failure goes to the retry layer.
    Lost,
}

/// Why no hedge was sent when the delay elapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// `max_hedges_per_request` reached.
    Limit,
    /// The retry budget refused.
    Budget,
    /// No untried endpoint.
    NoEndpoint,
}

/// The hedging state of one attempt (a first try and its hedges).
#[derive(Debug)]
pub struct HedgeState {
    max_hedges: u32,
    in_flight: u32,
    sent: u32,
    done: bool,
}

impl HedgeState {
    /// An attempt whose first try has just started.
    pub fn new(cfg: &HedgeConfig) -> HedgeState {
        HedgeState {
            max_hedges: cfg.max_hedges_per_request,
            in_flight: 1,
            sent: 0,
            done: false,
        }
    }

    /// Hedges sent so far.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Whether the delay timer should run (a hedge may still be sent).
    pub fn timer_armed(&self) -> bool {
        !self.done && self.sent < self.max_hedges
    }

    /// The delay elapsed. `endpoint_available`: an untried endpoint exists;
    /// `withdraw` asks the budget (only when a hedge is otherwise due).
    pub fn on_delay(
        &mut self,
        endpoint_available: bool,
        withdraw: impl FnOnce() -> bool,
    ) -> Result<Step, Skipped> {
        if self.sent >= self.max_hedges {
            return Err(Skipped::Limit);
        }
        if !endpoint_available {
            self.done = true;
            return Err(Skipped::NoEndpoint);
        }
        if !withdraw() {
            self.done = true;
            return Err(Skipped::Budget);
        }
        self.sent += 1;
        self.in_flight += 1;
        Ok(Step::Hedge)
    }

    /// A try ended; `good`: it answered with a status the retry layer would
    /// not retry.
    pub fn on_try_end(&mut self, good: bool) -> Step {
        self.in_flight = self.in_flight.saturating_sub(1);
        if good {
            self.done = true;
            Step::Won
        } else if self.in_flight == 0 {
            self.done = true;
            Step::Lost
        } else {
            Step::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HedgeConfig {
        HedgeConfig {
            max_hedges_per_request: 2,
            ..HedgeConfig::default()
        }
    }

    #[test]
    fn the_first_good_answer_wins_and_failures_wait_for_the_others() {
        let mut s = HedgeState::new(&cfg());
        assert!(s.timer_armed());
        assert_eq!(s.on_delay(true, || true), Ok(Step::Hedge));
        assert_eq!(s.on_delay(true, || true), Ok(Step::Hedge));
        assert!(!s.timer_armed(), "max_hedges_per_request = 2 reached");
        assert_eq!(
            s.on_delay(true, || panic!("not asked")),
            Err(Skipped::Limit)
        );
        assert_eq!(s.on_try_end(false), Step::Wait);
        assert_eq!(s.on_try_end(true), Step::Won);
        assert_eq!(s.sent(), 2);
    }

    #[test]
    fn the_last_failure_loses_and_a_refused_budget_stops_hedging() {
        let mut s = HedgeState::new(&cfg());
        assert_eq!(s.on_delay(true, || false), Err(Skipped::Budget));
        assert!(!s.timer_armed());
        assert_eq!(s.on_try_end(false), Step::Lost);
        let mut s = HedgeState::new(&cfg());
        assert_eq!(
            s.on_delay(false, || panic!("budget not asked without an endpoint")),
            Err(Skipped::NoEndpoint)
        );
        assert_eq!(s.sent(), 0);
    }

    #[test]
    fn percentile_delay_needs_samples_and_has_a_floor() {
        let c = HedgeConfig {
            after_ms: 70,
            percentile: 95.0,
            min_samples: 20,
            min_delay_ms: 3,
            window_samples: 100,
            ..HedgeConfig::default()
        };
        let w = LatencyWindow::default();
        for ms in 1..=19 {
            w.record(Duration::from_millis(ms), c.window_samples);
        }
        assert_eq!(delay(&c, &w), Duration::from_millis(70), "19 < min_samples");
        w.record(Duration::from_millis(20), c.window_samples);
        assert_eq!(delay(&c, &w), Duration::from_millis(19), "p95 of 1..=20");
        let fast = LatencyWindow::default();
        for _ in 0..50 {
            fast.record(Duration::from_micros(100), c.window_samples);
        }
        assert_eq!(delay(&c, &fast), Duration::from_millis(3), "min_delay_ms");
    }

    #[test]
    fn the_window_is_bounded_and_forgets_old_latencies() {
        let w = LatencyWindow::default();
        for _ in 0..100 {
            w.record(Duration::from_millis(500), 10);
        }
        assert_eq!(w.len(), 10);
        for _ in 0..10 {
            w.record(Duration::from_millis(2), 10);
        }
        // The cached value is recomputed after RECOMPUTE_EVERY_SAMPLES new
        // samples at the latest; 10 + the first call's recompute suffice here.
        assert_eq!(w.percentile(50.0, 1), Some(Duration::from_millis(2)));
    }
}
