//! One upstream endpoint and its live state (in-flight count, active health,
//! passive ejection, slow start, peak EWMA latency, draining).
//!
//! Availability is `healthy && !ejected(now) && !removed`:
//!
//! ```text
//!  Healthy ──fall failed checks──▶ Unhealthy ──rise good checks──▶ Healthy
//!     │                                ▲
//!     └──outlier ejection (passive)────┘  (when active checks are configured the
//!                                          endpoint needs `rise` good checks to return;
//!                                          otherwise it returns when the ejection expires)
//!  any ──removed from config──▶ Draining (never selected; in-flight requests finish)
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{EndpointLabels, Metrics};

/// Milliseconds since process start (monotonic), never 0.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let s = START.get_or_init(Instant::now);
    s.elapsed().as_millis() as u64 + 1
}

const OUTCOME_CLASSES: [&str; 8] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "connect_error",
    "timeout",
    "reset",
];

/// Cached metric handles of one endpoint.
pub(crate) struct EndpointMetrics {
    pub active: Gauge,
    pub healthy: Gauge,
    pub ejections: Counter,
    pub latency: Histogram,
    outcomes: [OnceLock<Counter>; 8],
    labels: EndpointLabels,
    metrics: Arc<Metrics>,
}

/// An upstream endpoint.
pub struct Endpoint {
    /// Socket address.
    pub addr: SocketAddr,
    pub(crate) authority: http::uri::Authority,
    pub(crate) pool_name: String,
    weight: AtomicU32,
    active: AtomicUsize,
    healthy: AtomicBool,
    pub(crate) hc_successes: AtomicU32,
    pub(crate) hc_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    last_ejection_ms: AtomicU64,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_connect: AtomicU32,
    pub(crate) consecutive_timeouts: AtomicU32,
    up_since_ms: AtomicU64,
    removed: AtomicBool,
    ewma: Mutex<(f64, u64)>,
    /// Bumped on every availability change of any endpoint of the pool.
    pub(crate) epoch: Arc<AtomicU64>,
    pub(crate) metrics: EndpointMetrics,
    /// Idle keep-alive connections of the upstream fast path.
    pub(crate) idle: crate::upstream_h1::IdleConns,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(
        pool: &str,
        addr: SocketAddr,
        weight: u32,
        epoch: Arc<AtomicU64>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Self> {
        let labels = EndpointLabels {
            pool: pool.to_string(),
            endpoint: addr.to_string(),
        };
        let em = EndpointMetrics {
            active: metrics.endpoint_active.get_or_create(&labels).clone(),
            healthy: metrics.endpoint_healthy.get_or_create(&labels).clone(),
            ejections: metrics.endpoint_ejections.get_or_create(&labels).clone(),
            latency: metrics.upstream_latency.get_or_create(&labels).clone(),
            outcomes: Default::default(),
            labels,
            metrics: metrics.clone(),
        };
        em.healthy.set(1);
        Arc::new(Endpoint {
            addr,
            authority: addr
                .to_string()
                .parse()
                .expect("socket address is a valid authority"),
            pool_name: pool.to_string(),
            weight: AtomicU32::new(weight),
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            hc_successes: AtomicU32::new(0),
            hc_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_ejection_ms: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            consecutive_timeouts: AtomicU32::new(0),
            up_since_ms: AtomicU64::new(now_ms()),
            removed: AtomicBool::new(false),
            ewma: Mutex::new((0.0, 0)),
            epoch,
            metrics: em,
            idle: Default::default(),
        })
    }

    /// Configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
    pub(crate) fn set_weight(&self, w: u32) {
        self.weight.store(w, Ordering::Relaxed);
    }
    /// In-flight requests.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// Active health state.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    /// Currently ejected by outlier detection.
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now
    }
    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }
    /// Removed from the configuration (draining).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
    /// Selectable for new requests.
    pub fn is_available(&self, now: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now) && !self.is_removed()
    }
    /// Number of passive ejections so far.
    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
        let up = self.is_available(now_ms());
        self.metrics.healthy.set(up as i64);
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
        self.idle.clear();
        self.bump();
    }

    pub(crate) fn set_healthy(&self, h: bool) {
        let was = self.healthy.swap(h, Ordering::AcqRel);
        if h {
            // Active checks override passive ejection.
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
        if was != h {
            if h {
                self.up_since_ms.store(now_ms(), Ordering::Relaxed);
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_connect.store(0, Ordering::Relaxed);
                self.consecutive_timeouts.store(0, Ordering::Relaxed);
            }
            tracing::info!(pool = %self.pool_name, endpoint = %self.addr, healthy = h, "health state changed");
        }
        self.bump();
    }

    /// Eject for a growing time. `has_active_checks`: also mark unhealthy so
    /// `rise` good checks are needed to return.
    pub(crate) fn eject(&self, base_ms: u64, max_ms: u64, has_active_checks: bool) {
        let now = now_ms();
        // Forget old ejections after a quiet period of max_ms.
        let last = self.last_ejection_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) > max_ms.saturating_mul(2) {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        let dur = base_ms.saturating_mul(n).min(max_ms);
        self.ejected_until_ms.store(now + dur, Ordering::Relaxed);
        self.last_ejection_ms.store(now, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_connect.store(0, Ordering::Relaxed);
        self.consecutive_timeouts.store(0, Ordering::Relaxed);
        self.metrics.ejections.inc();
        if has_active_checks {
            self.hc_successes.store(0, Ordering::Relaxed);
            self.healthy.store(false, Ordering::Relaxed);
        }
        tracing::warn!(pool = %self.pool_name, endpoint = %self.addr, duration_ms = dur, "endpoint ejected");
        self.bump();
    }

    /// Slow-start factor in (0, 1].
    pub(crate) fn slow_start_factor(&self, slow_start_ms: u64, now: u64) -> f64 {
        if slow_start_ms == 0 {
            return 1.0;
        }
        let up = self.up_since_ms.load(Ordering::Relaxed);
        let el = now.saturating_sub(up) as f64;
        (el / slow_start_ms as f64).clamp(0.1, 1.0)
    }

    /// Peak-EWMA latency estimate in milliseconds (decayed to `now`).
    pub(crate) fn ewma_ms(&self, decay_ms: u64, now: u64) -> f64 {
        let g = self.ewma.lock().unwrap();
        let (v, t) = *g;
        if t == 0 {
            return 0.0;
        }
        let dt = now.saturating_sub(t) as f64;
        v * (-dt / decay_ms.max(1) as f64).exp()
    }

    pub(crate) fn observe_latency(&self, ms: f64, decay_ms: u64) {
        let now = now_ms();
        let mut g = self.ewma.lock().unwrap();
        let (v, t) = *g;
        let nv = if ms > v || t == 0 {
            ms // peak sensitivity
        } else {
            let w = (-(now.saturating_sub(t) as f64) / decay_ms.max(1) as f64).exp();
            v * w + ms * (1.0 - w)
        };
        *g = (nv, now);
    }

    /// Count a request as in flight until the guard drops.
    pub(crate) fn start_request(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        InFlight(self.clone())
    }

    pub(crate) fn record_outcome(&self, class: &'static str) {
        let i = OUTCOME_CLASSES
            .iter()
            .position(|c| *c == class)
            .unwrap_or(4);
        self.metrics.outcomes[i]
            .get_or_init(|| {
                let labels = crate::metrics::EndpointClassLabels {
                    pool: self.metrics.labels.pool.clone(),
                    endpoint: self.metrics.labels.endpoint.clone(),
                    class: OUTCOME_CLASSES[i].to_string(),
                };
                self.metrics
                    .metrics
                    .upstream_requests
                    .get_or_create(&labels)
                    .clone()
            })
            .inc();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if self.is_removed() {
            let m = &self.metrics.metrics;
            let l = &self.metrics.labels;
            m.endpoint_active.remove(l);
            m.endpoint_healthy.remove(l);
        }
    }
}

/// In-flight guard.
pub(crate) struct InFlight(pub Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.active.dec();
    }
}
