//! Active health checking: one task per endpoint.
//!
//! ```text
//!           fall consecutive failed checks
//!  Healthy ───────────────────────────────▶ Unhealthy
//!     ▲                                        │
//!     └────── rise consecutive good checks ────┘  (also clears a passive ejection)
//! ```
//! A check is an HTTP `GET path` expecting `expected_status`, or a TCP
//! connect, bounded by `timeout_ms`. Checks run every `interval_ms` plus a
//! random `jitter_percent` of it; the first check runs right away. Endpoints
//! start healthy (optimistic); the task ends when the endpoint is removed.
//! When a pool has no `health_check`, endpoints are considered healthy and
//! only passive outlier detection applies.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rand::Rng;

use crate::config::{HealthCheckConfig, HealthCheckKind};
use crate::endpoint::Endpoint;
use crate::upstream::UpstreamClient;

/// What a health checker needs from its pool: the current check settings
/// (None: checks are off) and the upstream client. Implemented by `Pool`.
pub(crate) trait CheckTarget: Send + Sync {
    fn health_check(&self) -> Option<HealthCheckConfig>;
    fn client(&self) -> Arc<UpstreamClient>;
}

pub(crate) fn spawn_checker(pool: Weak<dyn CheckTarget>, ep: Arc<Endpoint>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut first = true;
        loop {
            if ep.is_removed() {
                return;
            }
            let (cfg, client) = match pool.upgrade() {
                Some(p) => (p.health_check(), p.client()),
                None => return,
            };
            let Some(hc) = cfg else {
                if !ep.is_healthy() {
                    ep.set_healthy(true);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                first = true;
                continue;
            };
            if !first {
                let jitter = if hc.jitter_percent > 0 {
                    rand::thread_rng()
                        .gen_range(0..=hc.interval_ms * hc.jitter_percent as u64 / 100)
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(hc.interval_ms + jitter)).await;
                if ep.is_removed() {
                    return;
                }
            }
            first = false;
            let ok = check(&hc, &ep, &client).await;
            record(&hc, &ep, ok);
        }
    });
}

fn record(hc: &HealthCheckConfig, ep: &Endpoint, ok: bool) {
    if ok {
        ep.hc_failures.store(0, Ordering::Relaxed);
        let s = ep.hc_successes.fetch_add(1, Ordering::Relaxed) + 1;
        if !ep.is_healthy() && s >= hc.rise {
            ep.set_healthy(true);
        }
    } else {
        ep.hc_successes.store(0, Ordering::Relaxed);
        let f = ep.hc_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if ep.is_healthy() && f >= hc.fall {
            ep.set_healthy(false);
        }
    }
}

async fn check(hc: &HealthCheckConfig, ep: &Endpoint, client: &UpstreamClient) -> bool {
    let t = Duration::from_millis(hc.timeout_ms);
    match hc.kind {
        HealthCheckKind::Tcp => {
            matches!(
                tokio::time::timeout(t, tokio::net::TcpStream::connect(ep.addr)).await,
                Ok(Ok(_))
            )
        }
        HealthCheckKind::Http => {
            let uri = format!("http://{}{}", ep.addr, hc.path);
            let Ok(req) = http::Request::get(uri)
                .header(http::header::HOST, ep.authority.as_str())
                .header(http::header::USER_AGENT, "phalanx-health-check")
                .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync())
            else {
                return false;
            };
            let fut = async {
                let resp = client.request(req).await.ok()?;
                let status = resp.status().as_u16();
                // Drain the body so the connection can be reused.
                let _ = resp.into_body().collect().await;
                Some(status)
            };
            matches!(tokio::time::timeout(t, fut).await, Ok(Some(s)) if s == hc.expected_status)
        }
    }
}
