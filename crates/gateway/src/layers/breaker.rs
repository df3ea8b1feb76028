//! Circuit breaker layer (per pool).
//!
//! ```text
//!            consecutive_failures failed tries
//!  Closed ───────────────────────────────────▶ Open ──open_ms elapsed──▶ HalfOpen
//!    ▲                                          ▲                          │
//!    │           a probe succeeds               │   a probe fails          │
//!    └──────────────────────────────────────────┼──────────────────────────┘
//!                                               └──────────────────────────┘
//! ```
//! Closed: everything passes; a success resets the failure count.
//! Open: requests are rejected at once with 503 (`breaker_rejections`).
//! HalfOpen: up to `half_open_max_requests` probes in flight; others rejected.

use std::sync::Mutex;

use crate::config::BreakerConfig;
use crate::endpoint::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until_ms: u64 },
    HalfOpen { probes: u32 },
}

/// Circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

/// Admission ticket: whether this request is a half-open probe.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    probe: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }
}

impl Breaker {
    /// Ask to pass; None = rejected.
    pub fn admit(&self, cfg: &BreakerConfig) -> Option<Ticket> {
        let mut s = self.state.lock().unwrap();
        match *s {
            State::Closed { .. } => Some(Ticket { probe: false }),
            State::Open { until_ms } => {
                if now_ms() >= until_ms {
                    *s = State::HalfOpen { probes: 1 };
                    Some(Ticket { probe: true })
                } else {
                    None
                }
            }
            State::HalfOpen { probes } => {
                if probes < cfg.half_open_max_requests {
                    *s = State::HalfOpen { probes: probes + 1 };
                    Some(Ticket { probe: true })
                } else {
                    None
                }
            }
        }
    }

    /// Record the final outcome of an admitted request.
    pub fn record(&self, cfg: &BreakerConfig, t: Ticket, success: bool) {
        let mut s = self.state.lock().unwrap();
        match (*s, success) {
            (State::Closed { .. }, true) => *s = State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                if failures + 1 >= cfg.consecutive_failures {
                    tracing::warn!("circuit breaker opened");
                    *s = State::Open {
                        until_ms: now_ms() + cfg.open_ms,
                    };
                } else {
                    *s = State::Closed {
                        failures: failures + 1,
                    };
                }
            }
            (State::HalfOpen { .. }, true) if t.probe => *s = State::Closed { failures: 0 },
            (State::HalfOpen { .. }, false) if t.probe => {
                *s = State::Open {
                    until_ms: now_ms() + cfg.open_ms,
                }
            }
            (State::HalfOpen { probes }, _) if t.probe => {
                *s = State::HalfOpen {
                    probes: probes.saturating_sub(1),
                }
            }
            _ => {}
        }
    }

    /// Release an admitted request that never reached an endpoint.
    pub fn record_neutral(&self, _cfg: &BreakerConfig, t: Ticket) {
        let mut s = self.state.lock().unwrap();
        if let (State::HalfOpen { probes }, true) = (*s, t.probe) {
            *s = State::HalfOpen {
                probes: probes.saturating_sub(1),
            };
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn state_name(&self) -> &'static str {
        match *self.state.lock().unwrap() {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn opens_and_recovers() {
        let cfg = BreakerConfig {
            consecutive_failures: 2,
            open_ms: 1,
            half_open_max_requests: 1,
        };
        let b = Breaker::default();
        let t = b.admit(&cfg).unwrap();
        b.record(&cfg, t, false);
        b.record(&cfg, t, false);
        assert_eq!(b.state_name(), "open");
        std::thread::sleep(std::time::Duration::from_millis(3));
        let p = b.admit(&cfg).unwrap();
        assert!(b.admit(&cfg).is_none());
        b.record(&cfg, p, true);
        assert_eq!(b.state_name(), "closed");
    }
}
