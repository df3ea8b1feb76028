//! Retry layer: policy, backoff and budget.
//!
//! ```text
//!             ┌────────────────────────────── success / non-retryable ──▶ Done
//! Try(n) ─────┤
//!             └─ retryable failure ─▶ n < max_retries? ─no─▶ Done (last result)
//!                                       │ yes
//!                                       ▼
//!                    connect failure? ─yes─▶ Try(n+1) on another endpoint (no backoff,
//!                                       │                                  no budget)
//!                                       │ no (5xx listed / reset / timeout)
//!                                       ▼
//!                  idempotent (or retry_non_idempotent) and body replayable? ─no─▶ Done
//!                                       │ yes
//!                                       ▼
//!                  budget.withdraw() ─denied─▶ Done (`retry_budget_exhausted`)
//!                                       │ granted
//!                                       ▼
//!                  Backoff(full jitter, ≤ deadline) ─▶ Try(n+1) on an endpoint not yet tried
//! ```
//! A retry never goes to an endpoint already tried for this request; when
//! none is left the last result is returned.
//!
//! The budget (per pool) allows, over a sliding window of `window_ms`,
//! `ratio × requests + min_retries_per_s × window_s` retries. Retries of
//! connect failures are not counted against it (nothing reached a server).

use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use rand::Rng;

use crate::config::RetryBudgetConfig;
use crate::endpoint::now_ms;

/// Whether a method may be replayed safely.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Full-jitter exponential backoff for retry number `n` (1-based).
pub fn backoff(n: u32, base_ms: u64, max_ms: u64) -> Duration {
    if base_ms == 0 {
        return Duration::ZERO;
    }
    let cap = base_ms
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(20))
        .min(max_ms);
    Duration::from_millis(rand::thread_rng().gen_range(cap / 2..=cap))
}

const BUCKETS: usize = 10;

/// Sliding-window retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// (bucket start ms, requests, retries)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            inner: Mutex::new(Window {
                buckets: [(0, 0, 0); BUCKETS],
            }),
        }
    }
}

impl Window {
    fn slot(&mut self, now: u64, window_ms: u64) -> usize {
        let width = (window_ms / BUCKETS as u64).max(1);
        let start = now / width * width;
        let i = ((now / width) as usize) % BUCKETS;
        if self.buckets[i].0 != start {
            self.buckets[i] = (start, 0, 0);
        }
        i
    }
    fn totals(&self, now: u64, window_ms: u64) -> (u64, u64) {
        let mut r = (0, 0);
        for b in &self.buckets {
            if now.saturating_sub(b.0) < window_ms {
                r.0 += b.1;
                r.1 += b.2;
            }
        }
        r
    }
}

impl RetryBudget {
    /// Record an original request.
    pub fn deposit(&self, cfg: &RetryBudgetConfig) {
        let now = now_ms();
        let mut w = self.inner.lock().unwrap();
        let i = w.slot(now, cfg.window_ms);
        w.buckets[i].1 += 1;
    }

    /// Try to spend one retry.
    pub fn withdraw(&self, cfg: &RetryBudgetConfig) -> bool {
        let now = now_ms();
        let mut w = self.inner.lock().unwrap();
        let (reqs, retries) = w.totals(now, cfg.window_ms);
        let allowed =
            cfg.ratio * reqs as f64 + cfg.min_retries_per_s as f64 * cfg.window_ms as f64 / 1000.0;
        if (retries + 1) as f64 <= allowed {
            let i = w.slot(now, cfg.window_ms);
            w.buckets[i].2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn budget_bounds_retries() {
        let cfg = RetryBudgetConfig {
            ratio: 0.1,
            min_retries_per_s: 0,
            window_ms: 10_000,
        };
        let b = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..100 {
            b.deposit(&cfg);
            if b.withdraw(&cfg) {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
    }
}
