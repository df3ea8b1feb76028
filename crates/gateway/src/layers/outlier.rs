//! Passive outlier detection layer: every try's outcome updates the
//! endpoint's consecutive counters.
//!
//! ```text
//! success (non-5xx) ─▶ reset all counters
//! 5xx               ─▶ c5xx += 1      ┐
//! connect failure   ─▶ cconnect += 1  ├─ counter reaches its threshold and ejected
//! timeout           ─▶ ctimeout += 1  ┘  share < max_ejection_percent ─▶ Ejected
//! Ejected ─ n-th ejection lasts min(n × base_ejection_ms, max_ejection_ms) ─▶ back
//!         (or earlier: `rise` good active checks re-admit it)
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::OutlierConfig;
use crate::endpoint::{now_ms, Endpoint};

/// Outcome of one try, as seen by outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// A response that is not a 5xx.
    Success,
    /// A 5xx response.
    ServerError,
    /// TCP connect failed or timed out.
    ConnectFailure,
    /// The try timed out.
    Timeout,
    /// The connection broke after connect.
    Reset,
}

/// Record `o` for `ep`; may eject it. `peers` are the pool's endpoints.
pub fn record(
    cfg: &OutlierConfig,
    has_active_checks: bool,
    ep: &Arc<Endpoint>,
    peers: &[Arc<Endpoint>],
    o: TryOutcome,
) {
    if !cfg.enabled {
        return;
    }
    let (counter, threshold) = match o {
        TryOutcome::Success => {
            ep.consecutive_5xx.store(0, Ordering::Relaxed);
            ep.consecutive_connect.store(0, Ordering::Relaxed);
            ep.consecutive_timeouts.store(0, Ordering::Relaxed);
            return;
        }
        TryOutcome::ServerError => (&ep.consecutive_5xx, cfg.consecutive_5xx),
        TryOutcome::ConnectFailure => (&ep.consecutive_connect, cfg.consecutive_connect_failures),
        TryOutcome::Timeout => (&ep.consecutive_timeouts, cfg.consecutive_timeouts),
        TryOutcome::Reset => (&ep.consecutive_connect, cfg.consecutive_connect_failures),
    };
    if threshold == 0 {
        return;
    }
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    if n < threshold {
        return;
    }
    let now = now_ms();
    if ep.is_ejected(now) || !ep.is_healthy() {
        counter.store(0, Ordering::Relaxed);
        return;
    }
    let total = peers.len().max(1);
    let ejected = peers.iter().filter(|p| p.is_ejected(now)).count();
    if (ejected + 1) * 100 > cfg.max_ejection_percent as usize * total {
        counter.store(0, Ordering::Relaxed);
        return;
    }
    ep.eject(cfg.base_ejection_ms, cfg.max_ejection_ms, has_active_checks);
}
