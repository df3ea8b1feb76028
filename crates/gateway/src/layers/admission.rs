//! Admission (overload) layer: bounds concurrent and pending requests per
//! pool, serving waiters by priority (see [`crate::layers::shedding`] for
//! the priority rules and the queue's state machine).
//!
//! ```text
//! arrive(p) ─▶ in_flight < max_concurrent_requests and nobody of priority ≥ p waits?
//!                 │ no                                    └─yes─▶ Admitted (slot held until
//!                 ▼                                               the response body ends)
//!           room in the queue (pending < max_pending_requests, or a
//!           lower-priority waiter to displace)? ──no──▶ Rejected(QueueFull): 503 + Retry-After, at once
//!                 │ yes
//!                 ▼
//!           Pending(p) ──slot released, p first in line──▶ Admitted
//!                 ├──the wait ends (pending_timeout_ms)──▶ Rejected(PendingTimeout)
//!                 └──displaced by a higher priority─────▶ Rejected(Displaced)
//! ```
//!
//! A released slot is handed directly to the chosen waiter (critical, then
//! default, then sheddable; oldest first), so it never goes to a newcomer
//! that arrived later.
//!
//! With `adaptive_concurrency` the limit is `min(max_concurrent_requests,
//! the gradient's estimate)` ([`crate::layers::adaptive`]), the estimate
//! being updated with the time each slot was held when it is released.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::AdaptiveConcurrencyConfig;
use crate::layers::adaptive::Gradient;
use crate::layers::shedding::{Enqueued, Priority, PriorityQueue};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Too many pending requests.
    QueueFull,
    /// Waited `pending_timeout_ms` without a slot.
    PendingTimeout,
    /// Lost its place in a full queue to a request of higher priority.
    Displaced,
}

/// What wakes a waiter: its slot, or the reason it was refused.
type Waiter = oneshot::Sender<Result<Permit, Rejection>>;

/// Concurrency limiter with a priority-ordered pending queue.
#[derive(Debug, Default)]
pub struct Admission {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: PriorityQueue<Waiter>,
    adaptive: Option<Adaptive>,
}

/// The adaptive limit's settings as last given, and its state.
#[derive(Debug)]
struct Adaptive {
    cfg: AdaptiveConcurrencyConfig,
    max_concurrent: usize,
    gradient: Gradient,
}

impl Inner {
    /// The limit in force for this arrival: the static one, or below it the
    /// adaptive one (its state is reset when its settings change).
    fn limit(
        &mut self,
        adaptive: Option<&AdaptiveConcurrencyConfig>,
        max_concurrent: usize,
    ) -> usize {
        let Some(cfg) = adaptive else {
            self.adaptive = None;
            return max_concurrent;
        };
        match &mut self.adaptive {
            Some(a) if a.cfg == *cfg => a.max_concurrent = max_concurrent,
            _ => {
                self.adaptive = Some(Adaptive {
                    cfg: cfg.clone(),
                    max_concurrent,
                    gradient: Gradient::new(cfg, max_concurrent),
                })
            }
        }
        let a = self.adaptive.as_ref().expect("just set");
        a.gradient.limit().min(max_concurrent)
    }
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    /// When the slot was taken (the adaptive limit's latency sample).
    started: Instant,
}

impl Permit {
    fn new(admission: &Arc<Admission>) -> Permit {
        Permit {
            admission: admission.clone(),
            started: Instant::now(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (next, more) = {
            let mut g = self.admission.inner.lock().unwrap();
            let Inner { queue, adaptive } = &mut *g;
            if let Some(a) = adaptive {
                let rtt_ms = self.started.elapsed().as_secs_f64() * 1000.0;
                a.gradient
                    .on_sample(&a.cfg, a.max_concurrent, rtt_ms, queue.in_flight());
                queue.set_max_concurrent(a.gradient.limit().min(a.max_concurrent));
            }
            let next = queue.release();
            (next, queue.fill_free_slots())
        };
        // Woken outside the lock: a waiter that went away gives its slot
        // back through this very drop.
        if let Some(w) = next {
            let _ = w.send(Ok(Permit::new(&self.admission)));
        }
        self.admission.wake(more);
    }
}

/// Takes a waiter out of the queue when its wait ends early (the request
/// future was dropped): a slot already handed to it is returned when the
/// channel holding it is dropped.
struct CancelOnDrop<'a> {
    admission: &'a Admission,
    id: u64,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        let w = self.admission.inner.lock().unwrap().queue.cancel(self.id);
        drop(w);
    }
}

impl Admission {
    /// Admit a request of default priority, waiting as pending if allowed.
    pub async fn admit(
        self: &Arc<Self>,
        max_concurrent: usize,
        max_pending: usize,
        pending_timeout: Duration,
    ) -> Result<Permit, Rejection> {
        self.admit_priority(
            Priority::Default,
            max_concurrent,
            None,
            max_pending,
            pending_timeout,
        )
        .await
    }

    /// Admit a request of priority `p`: at once if a slot is free and
    /// nobody of priority ≥ `p` waits, else wait up to `max_wait` in a queue
    /// of `max_pending` (0: never wait). `adaptive`: the pool's adaptive
    /// limit, which may hold the limit below `max_concurrent`.
    pub async fn admit_priority(
        self: &Arc<Self>,
        p: Priority,
        max_concurrent: usize,
        adaptive: Option<&AdaptiveConcurrencyConfig>,
        max_pending: usize,
        max_wait: Duration,
    ) -> Result<Permit, Rejection> {
        let (tx, mut rx) = oneshot::channel();
        let (id, displaced, admitted) = {
            let mut g = self.inner.lock().unwrap();
            let limit = g.limit(adaptive, max_concurrent);
            let q = &mut g.queue;
            if q.try_admit(p, limit) {
                return Ok(Permit::new(self));
            }
            // The limit may have been raised live while requests waited.
            let admitted = q.fill_free_slots();
            match q.enqueue(p, max_pending, tx) {
                Enqueued::Waiting { id, displaced } => (id, displaced, admitted),
                Enqueued::Full(_) => {
                    drop(g);
                    self.wake(admitted);
                    return Err(Rejection::QueueFull);
                }
            }
        };
        self.wake(admitted);
        if let Some(d) = displaced {
            let _ = d.send(Err(Rejection::Displaced));
        }
        let cancel = CancelOnDrop {
            admission: self,
            id,
        };
        match tokio::time::timeout(max_wait, &mut rx).await {
            Ok(Ok(answer)) => {
                std::mem::forget(cancel);
                answer
            }
            // The sender went away without an answer: only a cancel does that.
            Ok(Err(_)) => Err(Rejection::PendingTimeout),
            Err(_) => {
                drop(cancel);
                // Answered between the timeout and the cancel: take the answer.
                rx.try_recv().unwrap_or(Err(Rejection::PendingTimeout))
            }
        }
    }

    fn wake(self: &Arc<Self>, admitted: Vec<Waiter>) {
        for w in admitted {
            let _ = w.send(Ok(Permit::new(self)));
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().unwrap().queue.in_flight()
    }
    /// Requests waiting.
    pub fn pending(&self) -> usize {
        self.inner.lock().unwrap().queue.pending()
    }
    /// The adaptive limit in force (None: the pool has no adaptive limit).
    pub fn adaptive_limit(&self) -> Option<usize> {
        let g = self.inner.lock().unwrap();
        g.adaptive
            .as_ref()
            .map(|a| a.gradient.limit().min(a.max_concurrent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn waiters_are_served_critical_first() {
        let a = Arc::new(Admission::default());
        let held = a.admit(1, 10, LONG).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, p) in [Priority::Sheddable, Priority::Default, Priority::Critical]
            .into_iter()
            .enumerate()
        {
            let (a2, order) = (a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = a2.admit_priority(p, 1, None, 10, LONG).await.unwrap();
                order.lock().unwrap().push(p);
                drop(permit);
            }));
            // Let each one enqueue in this order.
            while a.pending() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![Priority::Critical, Priority::Default, Priority::Sheddable]
        );
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.pending(), 0);
    }

    #[tokio::test]
    async fn pending_timeout_queue_full_and_displacement() {
        let a = Arc::new(Admission::default());
        let _held = a.admit(1, 1, LONG).await.unwrap();
        assert_eq!(
            a.admit_priority(Priority::Sheddable, 1, None, 0, LONG)
                .await
                .unwrap_err(),
            Rejection::QueueFull
        );
        let a2 = a.clone();
        let sheddable = tokio::spawn(async move {
            a2.admit_priority(Priority::Sheddable, 1, None, 1, LONG)
                .await
        });
        while a.pending() < 1 {
            tokio::task::yield_now().await;
        }
        let a3 = a.clone();
        let critical = tokio::spawn(async move {
            a3.admit_priority(Priority::Critical, 1, None, 1, Duration::from_millis(50))
                .await
        });
        assert_eq!(sheddable.await.unwrap().unwrap_err(), Rejection::Displaced);
        // The critical one waits its 50 ms for the held slot, then gives up.
        assert_eq!(
            critical.await.unwrap().unwrap_err(),
            Rejection::PendingTimeout
        );
        assert_eq!(a.pending(), 0);
        assert_eq!(a.in_flight(), 1);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue_and_loses_no_slot() {
        let a = Arc::new(Admission::default());
        let held = a.admit(1, 10, LONG).await.unwrap();
        let a2 = a.clone();
        let w = tokio::spawn(async move { a2.admit(1, 10, LONG).await.map(|_| ()) });
        while a.pending() < 1 {
            tokio::task::yield_now().await;
        }
        w.abort();
        let _ = w.await;
        assert_eq!(a.pending(), 0);
        drop(held);
        assert_eq!(a.in_flight(), 0);
        let _p = a.admit(1, 10, LONG).await.unwrap();
        assert_eq!(a.in_flight(), 1);
    }
}
