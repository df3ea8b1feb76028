//! Adaptive concurrency limit (opt-in per pool, `adaptive_concurrency`): a
//! gradient limiter after Netflix's concurrency-limits `Gradient2Limit`
//! (the algorithm Envoy's adaptive concurrency filter also follows).
//!
//! The pool's concurrency limit becomes `min(max_concurrent_requests,
//! estimated_limit)`, where the estimate follows the latency of the
//! requests themselves, measured from admission to the end of the response
//! (the time a concurrency slot is held). Latency that grows with
//! concurrency means requests queue somewhere upstream; the limit then
//! shrinks so the excess is refused (or waits, by priority) at the gateway
//! instead of piling up in the backend. Sans-I/O: [`Gradient::on_sample`]
//! is given each latency and the in-flight count, so the behaviour is tested
//! with synthetic numbers.
//!
//! On every completed request, with `rtt` its latency and `in_flight` the
//! requests holding a slot when it completed:
//!
//! ```text
//! long_rtt  ← exponential average of rtt over long_window_samples
//!             (a plain mean over the first 10 samples); when
//!             long_rtt > 2 × rtt (load fell away) it decays by 5 %
//! in_flight < limit / 2          ─▶ limit unchanged (the pool is not using
//!                                   its limit: no evidence to grow on)
//! gradient  = clamp(rtt_tolerance × long_rtt / rtt, 0.5, 1.0)
//! target    = limit × gradient + queue_allowance, queue_allowance = √limit
//! limit     ← limit × (1 − smoothing) + target × smoothing,
//!             clamped to [min_limit, max_concurrent_requests]
//! ```
//!
//! While latency stays within `rtt_tolerance` of its long-term average the
//! gradient is 1 and the limit creeps up by `smoothing × √limit` per
//! request; when latency rises above it the gradient falls (at most halving
//! the target) and the limit shrinks towards what the upstream serves
//! without queueing. The long-term average then follows the new latency
//! slowly, so a lasting change in the upstream's speed is accepted.

use crate::config::AdaptiveConcurrencyConfig;

/// Samples averaged plainly before the exponential average takes over.
const WARMUP_SAMPLES: u32 = 10;

/// State of one pool's adaptive limit.
#[derive(Debug, Clone)]
pub struct Gradient {
    limit: f64,
    long_rtt_ms: f64,
    samples: u32,
}

impl Gradient {
    /// The state before any sample: `initial_limit`.
    pub fn new(cfg: &AdaptiveConcurrencyConfig, max_limit: usize) -> Gradient {
        Gradient {
            limit: (cfg.initial_limit as f64).clamp(cfg.min_limit as f64, max_limit.max(1) as f64),
            long_rtt_ms: 0.0,
            samples: 0,
        }
    }

    /// The current limit (at least 1).
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).max(1)
    }

    /// The long-term latency average, in ms.
    pub fn long_rtt_ms(&self) -> f64 {
        self.long_rtt_ms
    }

    /// A request completed after `rtt_ms` with `in_flight` requests holding
    /// a slot; `max_limit` is the pool's `max_concurrent_requests`.
    pub fn on_sample(
        &mut self,
        cfg: &AdaptiveConcurrencyConfig,
        max_limit: usize,
        rtt_ms: f64,
        in_flight: usize,
    ) {
        let rtt = rtt_ms.max(0.001);
        self.samples = self.samples.saturating_add(1);
        if self.samples <= WARMUP_SAMPLES {
            self.long_rtt_ms += (rtt - self.long_rtt_ms) / f64::from(self.samples);
        } else {
            let k = 2.0 / (cfg.long_window_samples as f64 + 1.0);
            self.long_rtt_ms += (rtt - self.long_rtt_ms) * k;
        }
        if self.long_rtt_ms > 2.0 * rtt {
            self.long_rtt_ms *= 0.95;
        }
        let (min, max) = (
            cfg.min_limit as f64,
            (max_limit.max(1) as f64).max(cfg.min_limit as f64),
        );
        if (in_flight as f64) < self.limit / 2.0 {
            self.limit = self.limit.clamp(min, max);
            return;
        }
        let tolerance = f64::from(cfg.rtt_tolerance_percent) / 100.0;
        let gradient = (tolerance * self.long_rtt_ms / rtt).clamp(0.5, 1.0);
        let target = self.limit * gradient + self.limit.sqrt();
        let s = f64::from(cfg.smoothing_percent) / 100.0;
        self.limit = (self.limit * (1.0 - s) + target * s).clamp(min, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdaptiveConcurrencyConfig {
        AdaptiveConcurrencyConfig::default()
    }

    #[test]
    fn steady_latency_grows_the_limit_to_the_maximum() {
        let c = cfg();
        let mut g = Gradient::new(&c, 200);
        assert_eq!(g.limit(), c.initial_limit);
        for _ in 0..2_000 {
            let busy = g.limit();
            g.on_sample(&c, 200, 10.0, busy);
        }
        assert_eq!(g.limit(), 200);
    }

    #[test]
    fn queueing_latency_shrinks_the_limit_then_it_recovers() {
        let c = cfg();
        let mut g = Gradient::new(&c, 1_000);
        for _ in 0..500 {
            let busy = g.limit();
            g.on_sample(&c, 1_000, 10.0, busy);
        }
        let high = g.limit();
        // Latency quadruples (requests queue upstream): the limit drops fast.
        for _ in 0..30 {
            let busy = g.limit();
            g.on_sample(&c, 1_000, 40.0, busy);
        }
        let low = g.limit();
        assert!(low < high / 2, "limit {high} → {low}");
        assert!(low >= c.min_limit);
        // Back to the old latency: it grows again.
        for _ in 0..2_000 {
            let busy = g.limit();
            g.on_sample(&c, 1_000, 10.0, busy);
        }
        assert!(g.limit() > low * 2, "{low} → {}", g.limit());
    }

    #[test]
    fn latency_within_tolerance_is_not_queueing() {
        let c = cfg();
        let mut g = Gradient::new(&c, 100);
        for i in 0..3_000 {
            // ±20 % jitter around 10 ms: within the 150 % tolerance.
            let rtt = if i % 2 == 0 { 8.0 } else { 12.0 };
            let busy = g.limit();
            g.on_sample(&c, 100, rtt, busy);
        }
        assert_eq!(g.limit(), 100);
    }

    #[test]
    fn an_idle_pool_does_not_grow_its_limit() {
        let c = cfg();
        let mut g = Gradient::new(&c, 1_000);
        for _ in 0..1_000 {
            g.on_sample(&c, 1_000, 10.0, 1);
        }
        assert_eq!(g.limit(), c.initial_limit);
    }

    #[test]
    fn limit_stays_within_min_and_max() {
        // With the gradient at its floor of 0.5 the limit tends to 4
        // (limit = 0.5 × limit + √limit); a higher minimum holds it.
        let c = AdaptiveConcurrencyConfig {
            min_limit: 6,
            ..cfg()
        };
        let mut g = Gradient::new(&c, 8);
        assert_eq!(
            g.limit(),
            8,
            "the initial limit is capped by the pool's maximum"
        );
        for i in 0..200 {
            g.on_sample(&c, 8, 10.0 * (i + 1) as f64, 8);
        }
        assert_eq!(g.limit(), 6);
        assert!(g.long_rtt_ms() > 0.0);
    }
}
