//! Timeout layer.
//!
//! ```text
//! Start ──response headers before min(per_try, deadline − now)──▶ Done
//!   └────────────timer fires────────────────────────────────────▶ TimedOut (retryable)
//! ```
//! The overall deadline (`routes.timeout_ms`) bounds all tries and backoffs;
//! the per-try timeout (`routes.retry.per_try_timeout_ms`) bounds one try.

use std::time::{Duration, Instant};

/// Time budget of one try starting at `now` (`None` inside: unbounded), or
/// None when the deadline has passed.
pub fn try_budget_at(
    per_try_ms: u64,
    deadline: Option<Instant>,
    now: Instant,
) -> Option<Option<Duration>> {
    let per_try = (per_try_ms > 0).then(|| Duration::from_millis(per_try_ms));
    match deadline {
        None => Some(per_try),
        Some(d) => {
            let left = d.checked_duration_since(now)?;
            if left.is_zero() {
                return None;
            }
            Some(Some(per_try.map_or(left, |p| p.min(left))))
        }
    }
}

/// Run `fut` under an optional timeout; `Err(())` when it expired.
pub async fn with_timeout<F: std::future::Future>(
    t: Option<Duration>,
    fut: F,
) -> Result<F::Output, ()> {
    match t {
        None => Ok(fut.await),
        Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| ()),
    }
}
