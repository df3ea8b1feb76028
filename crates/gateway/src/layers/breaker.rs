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
//!
//! Time comes in as an argument (`now_ms`, the gateway's monotonic
//! milliseconds from `endpoint::now_ms` in production), so the state machine
//! is tested alone on a synthetic clock, without sleeping.

use std::sync::Mutex;

use crate::config::BreakerConfig;

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
    pub fn admit(&self, cfg: &BreakerConfig, now_ms: u64) -> Option<Ticket> {
        let mut s = self.state.lock().unwrap();
        match *s {
            State::Closed { .. } => Some(Ticket { probe: false }),
            State::Open { until_ms } => {
                if now_ms >= until_ms {
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
    pub fn record(&self, cfg: &BreakerConfig, t: Ticket, success: bool, now_ms: u64) {
        let mut s = self.state.lock().unwrap();
        match (*s, success) {
            (State::Closed { .. }, true) => *s = State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                if failures + 1 >= cfg.consecutive_failures {
                    tracing::warn!("circuit breaker opened");
                    *s = State::Open {
                        until_ms: now_ms + cfg.open_ms,
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
                    until_ms: now_ms + cfg.open_ms,
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

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 2,
            open_ms: 1_000,
            half_open_max_requests: 1,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let (cfg, b) = (cfg(), Breaker::default());
        let t = b.admit(&cfg, 0).unwrap();
        b.record(&cfg, t, false, 10);
        assert_eq!(b.state_name(), "closed");
        b.record(&cfg, t, false, 20);
        assert_eq!(b.state_name(), "open");
        assert!(b.admit(&cfg, 500).is_none(), "open until 1,020 ms");
        assert!(b.admit(&cfg, 1_019).is_none());
        let p = b.admit(&cfg, 1_020).expect("half-open probe");
        assert_eq!(b.state_name(), "half_open");
        assert!(b.admit(&cfg, 1_021).is_none(), "one probe at a time");
        b.record(&cfg, p, true, 1_030);
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_open_period() {
        let (cfg, b) = (cfg(), Breaker::default());
        let t = b.admit(&cfg, 0).unwrap();
        b.record(&cfg, t, false, 0);
        b.record(&cfg, t, false, 0);
        let p = b.admit(&cfg, 1_000).unwrap();
        b.record(&cfg, p, false, 1_500);
        assert_eq!(b.state_name(), "open");
        assert!(b.admit(&cfg, 2_499).is_none());
        assert!(b.admit(&cfg, 2_500).is_some());
    }

    #[test]
    fn a_success_resets_the_failure_count_and_neutral_releases_a_probe() {
        let (cfg, b) = (cfg(), Breaker::default());
        let t = b.admit(&cfg, 0).unwrap();
        b.record(&cfg, t, false, 0);
        b.record(&cfg, t, true, 0);
        b.record(&cfg, t, false, 0);
        assert_eq!(b.state_name(), "closed", "failures were not consecutive");
        b.record(&cfg, t, false, 0);
        let p = b.admit(&cfg, 1_000).unwrap();
        b.record_neutral(&cfg, p);
        assert!(
            b.admit(&cfg, 1_001).is_some(),
            "the released probe slot is free"
        );
    }
}
