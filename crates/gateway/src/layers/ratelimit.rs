//! Per-client-IP token bucket (route option `rate_limit`).
//!
//! ```text
//! per client: tokens = min(burst, tokens + elapsed_s × requests_per_s)
//!   tokens ≥ 1 ──▶ Allow (tokens −= 1)
//!   tokens < 1 ──▶ Deny → 429 with Retry-After
//! ```
//! Buckets idle long enough to be full are forgotten when the table grows
//! past [`MAX_TRACKED_CLIENTS`] clients.
//!
//! Time comes in as an argument (`now_ms`, monotonic milliseconds), so the
//! bucket is tested alone on a synthetic clock, without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::RateLimitConfig;

/// Clients tracked before idle full buckets are forgotten.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// Token buckets keyed by client IP: (tokens, last refill in ms).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, u64)>>,
}

impl RateLimiter {
    /// Take one token for `ip`; Err(seconds until a token is available).
    pub fn check(&self, cfg: &RateLimitConfig, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        let elapsed_s = |since: u64| now_ms.saturating_sub(since) as f64 / 1000.0;
        let mut m = self.buckets.lock().unwrap();
        if m.len() > MAX_TRACKED_CLIENTS {
            let full = cfg.burst as f64 / cfg.requests_per_s;
            m.retain(|_, (_, t)| elapsed_s(*t) < full);
        }
        let e = m.entry(ip).or_insert((cfg.burst as f64, now_ms));
        e.0 = (e.0 + elapsed_s(e.1) * cfg.requests_per_s).min(cfg.burst as f64);
        e.1 = now_ms;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - e.0) / cfg.requests_per_s).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let cfg = RateLimitConfig {
            requests_per_s: 10.0,
            burst: 3,
        };
        let (rl, ip) = (RateLimiter::default(), IpAddr::from([10, 0, 0, 1]));
        for _ in 0..3 {
            assert!(rl.check(&cfg, ip, 0).is_ok());
        }
        assert_eq!(
            rl.check(&cfg, ip, 0),
            Err(1),
            "burst spent: retry after 1 s"
        );
        assert!(rl.check(&cfg, ip, 50).is_err(), "half a token after 50 ms");
        assert!(rl.check(&cfg, ip, 100).is_ok(), "one token after 100 ms");
        assert!(rl.check(&cfg, ip, 100).is_err());
        // A long pause refills up to the burst, not beyond.
        for _ in 0..3 {
            assert!(rl.check(&cfg, ip, 60_000).is_ok());
        }
        assert!(rl.check(&cfg, ip, 60_000).is_err());
        // Clients have their own buckets.
        assert!(rl.check(&cfg, IpAddr::from([10, 0, 0, 2]), 60_000).is_ok());
    }
}
