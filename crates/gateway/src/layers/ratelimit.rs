//! Per-client-IP token bucket (route option `rate_limit`).
//!
//! ```text
//! per client: tokens = min(burst, tokens + elapsed_s × requests_per_s)
//!   tokens ≥ 1 ──▶ Allow (tokens −= 1)
//!   tokens < 1 ──▶ Deny → 429 with Retry-After
//! ```
//! Buckets idle long enough to be full are forgotten when the table grows
//! past 65,536 clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Token buckets keyed by client IP.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// Take one token for `ip`; Err(seconds until a token is available).
    pub fn check(&self, cfg: &RateLimitConfig, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut m = self.buckets.lock().unwrap();
        if m.len() > 65_536 {
            let full = cfg.burst as f64 / cfg.requests_per_s;
            m.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < full);
        }
        let e = m.entry(ip).or_insert((cfg.burst as f64, now));
        let el = now.duration_since(e.1).as_secs_f64();
        e.0 = (e.0 + el * cfg.requests_per_s).min(cfg.burst as f64);
        e.1 = now;
        if e.0 >= 1.0 {
            e.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - e.0) / cfg.requests_per_s).ceil().max(1.0) as u64)
        }
    }
}
