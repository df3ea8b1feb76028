//! Admission (overload) layer: bounds concurrent and pending requests per pool.
//!
//! ```text
//! arrive ─▶ in_flight < max_concurrent_requests ? ──yes──▶ Admitted (slot held until the
//!                 │ no                                      response body ends)
//!                 ▼
//!           pending < max_pending_requests ? ──no──▶ Rejected: 503 + Retry-After, at once
//!                 │ yes
//!                 ▼
//!           Pending ──slot freed──▶ Admitted
//!                 └──pending_timeout_ms──▶ Rejected: 503 + Retry-After
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Too many pending requests.
    QueueFull,
    /// Waited `pending_timeout_ms` without a slot.
    PendingTimeout,
}

/// Concurrency limiter.
#[derive(Debug, Default)]
pub struct Admission {
    in_flight: AtomicUsize,
    pending: AtomicUsize,
    notify: Notify,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct Permit(Arc<Admission>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.notify.notify_one();
    }
}

impl Admission {
    fn try_take(self: &Arc<Self>, max: usize) -> Option<Permit> {
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= max {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(c) => cur = c,
            }
        }
    }

    /// Admit a request, waiting as pending if allowed.
    pub async fn admit(
        self: &Arc<Self>,
        max_concurrent: usize,
        max_pending: usize,
        pending_timeout: Duration,
    ) -> Result<Permit, Rejection> {
        if let Some(p) = self.try_take(max_concurrent) {
            return Ok(p);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::QueueFull);
        }
        struct Dec<'a>(&'a AtomicUsize);
        impl Drop for Dec<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _dec = Dec(&self.pending);
        let wait = async {
            loop {
                let n = self.notify.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if let Some(p) = self.try_take(max_concurrent) {
                    return p;
                }
                n.await;
            }
        };
        match tokio::time::timeout(pending_timeout, wait).await {
            Ok(p) => Ok(p),
            Err(_) => Err(Rejection::PendingTimeout),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Requests waiting.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}
