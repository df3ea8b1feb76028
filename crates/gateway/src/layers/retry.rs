//! Retry layer: the decision to try a request again, its backoff and the
//! per-pool retry budget. Sans-I/O: [`RetryState`] is told the time, the
//! try's result and the budget's answer, and returns what to do next, so
//! every path below is tested with a synthetic clock (no sleeps);
//! [`crate::proxy`] drives it.
//!
//! ```text
//!   Ready(n) ──try_budget(now) = None: deadline passed──────────────────────▶ End
//!      │       (the proxy also ends here when no endpoint is left untried)
//!      │ per-try time = min(per_try_timeout, deadline − now)
//!      ▼
//!   Trying(n) ──after_try(result)──▶ Deciding
//!
//!   Deciding:
//!     success, or a result not retryable (status not in retry_on_status;
//!       reset/timeout with retry_on_reset/_timeout off; a non-idempotent
//!       method without retry_non_idempotent; an upgrade)    ─▶ End(Final)
//!     n == max_retries (attempts)                            ─▶ End(Final)
//!     body streamed, not replayable                          ─▶ End(Final)
//!     not a connect failure and budget.withdraw() denied     ─▶ End(BudgetExhausted)
//!     otherwise                                              ─▶ Retry(backoff) ─▶ Ready(n+1)
//!
//!   backoff: zero after a connect failure (nothing reached a server: try
//!   the next endpoint at once, budget untouched); else full jitter,
//!   uniform in [cap/2, cap] with cap = min(base × 2^n, max), cut to the
//!   time left before the deadline.
//! ```
//! A connect failure is retryable whatever the method (the request never
//! left). A retry never goes to an endpoint already tried for this request
//! (the balancer excludes them); when none is left, or the loop ends, the
//! last result is returned.
//!
//! The budget (per pool) allows, over a sliding window of `window_ms`,
//! `ratio × requests + min_retries_per_s × window_s` retries. Retries of
//! connect failures are not counted against it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use rand::Rng;

use crate::config::{RetryBudgetConfig, RetryConfig};
use crate::endpoint::now_ms;
use crate::layers::outlier::TryOutcome;
use crate::layers::timeout;

/// Whether a method may be replayed safely.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Full-jitter exponential backoff for retry number `n` (1-based).
pub fn backoff(n: u32, base_ms: u64, max_ms: u64) -> Duration {
    backoff_with(&mut rand::thread_rng(), n, base_ms, max_ms)
}

/// [`backoff`] drawing its jitter from `rng` (a seeded one in tests).
pub fn backoff_with(rng: &mut impl Rng, n: u32, base_ms: u64, max_ms: u64) -> Duration {
    if base_ms == 0 {
        return Duration::ZERO;
    }
    let cap = base_ms
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(20))
        .min(max_ms);
    Duration::from_millis(rng.gen_range(cap / 2..=cap))
}

/// What the retry layer decided after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This try's result goes to the client.
    Final,
    /// A retry was due but the pool's budget refused it: this try's result
    /// goes to the client (`retry_budget_exhausted`).
    BudgetExhausted,
    /// Wait `backoff`, then try an endpoint not yet tried.
    Retry {
        /// Zero after a connect failure; never past the deadline.
        backoff: Duration,
    },
}

/// The retry state of one request: how many retries it has had, whether
/// its method and shape allow replaying it, and its deadline.
#[derive(Debug)]
pub struct RetryState<'a> {
    cfg: &'a RetryConfig,
    /// The method may be replayed (idempotent, or `retry_non_idempotent`)
    /// and the request is not an upgrade (a 101 cannot be replayed).
    may_replay: bool,
    /// The route's overall deadline (`timeout_ms`), bounding tries and backoffs.
    deadline: Option<Instant>,
    retries: u32,
}

impl<'a> RetryState<'a> {
    /// The state of a request with `method` before its first try; `upgrade`:
    /// it asks for a protocol upgrade; `deadline`: the route's overall one.
    pub fn new(
        cfg: &'a RetryConfig,
        method: &Method,
        upgrade: bool,
        deadline: Option<Instant>,
    ) -> RetryState<'a> {
        RetryState {
            cfg,
            may_replay: (is_idempotent(method) || cfg.retry_non_idempotent) && !upgrade,
            deadline,
            retries: 0,
        }
    }

    /// Retries granted so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Before a try, at `now`: how long it may take (`None` inside: no
    /// bound), or `None` when the deadline has passed and the loop ends.
    pub fn try_budget(&self, now: Instant) -> Option<Option<Duration>> {
        timeout::try_budget_at(self.cfg.per_try_timeout_ms, self.deadline, now)
    }

    /// After a try that ended at `now` with `outcome` (and the response
    /// status, if a response came): end or retry. `body_replayable`: the
    /// request body can be sent again. `withdraw` asks the pool's budget
    /// for one retry; it is called only when a retry that counts against
    /// the budget is otherwise due. `rng` draws the backoff's jitter.
    pub fn after_try(
        &mut self,
        outcome: TryOutcome,
        status: Option<u16>,
        body_replayable: bool,
        withdraw: impl FnOnce() -> bool,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Decision {
        let cfg = self.cfg;
        let retryable = match outcome {
            TryOutcome::ConnectFailure => true,
            TryOutcome::Reset => self.may_replay && cfg.retry_on_reset,
            TryOutcome::Timeout => self.may_replay && cfg.retry_on_timeout,
            TryOutcome::Success | TryOutcome::ServerError => {
                self.may_replay && status.is_some_and(|s| cfg.retry_on_status.contains(&s))
            }
        };
        if !retryable || self.retries >= cfg.max_retries || !body_replayable {
            return Decision::Final;
        }
        let connect_failure = outcome == TryOutcome::ConnectFailure;
        if !connect_failure && !withdraw() {
            return Decision::BudgetExhausted;
        }
        self.retries += 1;
        let backoff = if connect_failure {
            Duration::ZERO
        } else {
            let d = backoff_with(rng, self.retries, cfg.backoff_base_ms, cfg.backoff_max_ms);
            match self.deadline {
                Some(dl) => d.min(dl.saturating_duration_since(now)),
                None => d,
            }
        };
        Decision::Retry { backoff }
    }
}

const BUCKETS: usize = 10;

/// Sliding-window retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// (bucket start ms, requests, retries)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            inner: Mutex::new(Window {
                buckets: [(0, 0, 0); BUCKETS],
            }),
        }
    }
}

impl Window {
    fn slot(&mut self, now: u64, window_ms: u64) -> usize {
        let width = (window_ms / BUCKETS as u64).max(1);
        let start = now / width * width;
        let i = ((now / width) as usize) % BUCKETS;
        if self.buckets[i].0 != start {
            self.buckets[i] = (start, 0, 0);
        }
        i
    }
    fn totals(&self, now: u64, window_ms: u64) -> (u64, u64) {
        let mut r = (0, 0);
        for b in &self.buckets {
            if now.saturating_sub(b.0) < window_ms {
                r.0 += b.1;
                r.1 += b.2;
            }
        }
        r
    }
}

impl RetryBudget {
    /// Record an original request.
    pub fn deposit(&self, cfg: &RetryBudgetConfig) {
        self.deposit_at(cfg, now_ms());
    }

    /// Try to spend one retry.
    pub fn withdraw(&self, cfg: &RetryBudgetConfig) -> bool {
        self.withdraw_at(cfg, now_ms())
    }

    /// [`RetryBudget::deposit`] at `now` (ms on the [`now_ms`] clock).
    pub fn deposit_at(&self, cfg: &RetryBudgetConfig, now: u64) {
        let mut w = self.inner.lock().unwrap();
        let i = w.slot(now, cfg.window_ms);
        w.buckets[i].1 += 1;
    }

    /// [`RetryBudget::withdraw`] at `now` (ms on the [`now_ms`] clock).
    pub fn withdraw_at(&self, cfg: &RetryBudgetConfig, now: u64) -> bool {
        let mut w = self.inner.lock().unwrap();
        let (reqs, retries) = w.totals(now, cfg.window_ms);
        let allowed =
            cfg.ratio * reqs as f64 + cfg.min_retries_per_s as f64 * cfg.window_ms as f64 / 1000.0;
        if (retries + 1) as f64 <= allowed {
            let i = w.slot(now, cfg.window_ms);
            w.buckets[i].2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_retries: 2,
            per_try_timeout_ms: 0,
            retry_on_status: vec![503],
            retry_on_reset: true,
            retry_on_timeout: true,
            retry_non_idempotent: false,
            backoff_base_ms: 100,
            backoff_max_ms: 150,
            ..RetryConfig::default()
        }
    }

    fn granted() -> bool {
        true
    }

    fn budget_must_not_be_asked() -> bool {
        panic!("the budget was asked although no counted retry was due")
    }

    /// `r.after_try` for a replayable body, without a deadline in play:
    /// the time is only an origin for the synthetic clock, and the jitter
    /// comes from a fixed seed.
    fn decide(
        r: &mut RetryState<'_>,
        outcome: TryOutcome,
        status: Option<u16>,
        budget: impl FnOnce() -> bool,
    ) -> Decision {
        let mut rng = StdRng::seed_from_u64(u64::from(r.retries()));
        r.after_try(outcome, status, true, budget, Instant::now(), &mut rng)
    }

    fn backoff_of(d: Decision) -> Duration {
        match d {
            Decision::Retry { backoff } => backoff,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn a_retryable_status_retries_with_growing_jittered_backoff_until_attempts_run_out() {
        let c = cfg();
        let mut r = RetryState::new(&c, &Method::GET, false, None);
        let first = backoff_of(decide(&mut r, TryOutcome::ServerError, Some(503), granted));
        assert!(first >= ms(50) && first <= ms(100), "{first:?}");
        // cap = min(base × 2, max) = 150.
        let second = backoff_of(decide(&mut r, TryOutcome::ServerError, Some(503), granted));
        assert!(second >= ms(75) && second <= ms(150), "{second:?}");
        assert_eq!(r.retries(), 2);
        let third = decide(
            &mut r,
            TryOutcome::ServerError,
            Some(503),
            budget_must_not_be_asked,
        );
        assert_eq!(third, Decision::Final, "max_retries reached");
    }

    #[test]
    fn success_and_unlisted_statuses_are_final() {
        let c = cfg();
        let mut r = RetryState::new(&c, &Method::GET, false, None);
        for (outcome, status) in [
            (TryOutcome::Success, Some(200)),
            (TryOutcome::Success, Some(404)),
            (TryOutcome::ServerError, Some(500)),
        ] {
            let d = decide(&mut r, outcome, status, budget_must_not_be_asked);
            assert_eq!(d, Decision::Final, "{outcome:?} {status:?}");
        }
        assert_eq!(r.retries(), 0);
    }

    #[test]
    fn non_idempotent_methods_and_upgrades_retry_only_connect_failures() {
        let c = cfg();
        for (method, upgrade) in [(Method::POST, false), (Method::GET, true)] {
            let mut r = RetryState::new(&c, &method, upgrade, None);
            for (outcome, status) in [
                (TryOutcome::ServerError, Some(503)),
                (TryOutcome::Reset, None),
                (TryOutcome::Timeout, None),
            ] {
                let d = decide(&mut r, outcome, status, budget_must_not_be_asked);
                assert_eq!(d, Decision::Final, "{method} upgrade={upgrade} {outcome:?}");
            }
            // The request never reached a server: another endpoint gets it
            // at once, outside the budget.
            let d = decide(
                &mut r,
                TryOutcome::ConnectFailure,
                None,
                budget_must_not_be_asked,
            );
            assert_eq!(d, Decision::Retry { backoff: ms(0) });
        }
        let c = RetryConfig {
            retry_non_idempotent: true,
            ..cfg()
        };
        let mut r = RetryState::new(&c, &Method::POST, false, None);
        backoff_of(decide(&mut r, TryOutcome::ServerError, Some(503), granted));
    }

    #[test]
    fn reset_and_timeout_retry_only_when_configured() {
        let off = RetryConfig {
            retry_on_reset: false,
            retry_on_timeout: false,
            ..cfg()
        };
        let on = cfg();
        for o in [TryOutcome::Reset, TryOutcome::Timeout] {
            let mut r = RetryState::new(&off, &Method::GET, false, None);
            assert_eq!(
                decide(&mut r, o, None, budget_must_not_be_asked),
                Decision::Final
            );
            let mut r = RetryState::new(&on, &Method::GET, false, None);
            backoff_of(decide(&mut r, o, None, granted));
        }
    }

    #[test]
    fn a_streamed_body_is_never_replayed() {
        let c = cfg();
        let mut rng = StdRng::seed_from_u64(4);
        let mut r = RetryState::new(&c, &Method::PUT, false, None);
        for (outcome, status) in [
            (TryOutcome::ServerError, Some(503)),
            (TryOutcome::ConnectFailure, None),
        ] {
            let replayable = false;
            let d = r.after_try(
                outcome,
                status,
                replayable,
                budget_must_not_be_asked,
                Instant::now(),
                &mut rng,
            );
            assert_eq!(d, Decision::Final, "{outcome:?}");
        }
    }

    #[test]
    fn a_refused_budget_ends_the_loop_without_counting_a_retry() {
        let c = cfg();
        let mut r = RetryState::new(&c, &Method::GET, false, None);
        let d = decide(&mut r, TryOutcome::Timeout, None, || false);
        assert_eq!(d, Decision::BudgetExhausted);
        assert_eq!(r.retries(), 0);
    }

    #[test]
    fn the_deadline_cuts_the_backoff_and_then_ends_the_loop() {
        let c = RetryConfig {
            per_try_timeout_ms: 300,
            backoff_base_ms: 1_000,
            backoff_max_ms: 1_000,
            ..cfg()
        };
        // The synthetic clock: every instant below is an offset from this
        // origin; nothing reads the clock again or sleeps.
        let start = Instant::now();
        let deadline = start + ms(1_000);
        let mut rng = StdRng::seed_from_u64(6);
        let mut r = RetryState::new(&c, &Method::GET, false, Some(deadline));
        // Far from the deadline the per-try timeout bounds a try; near it,
        // the time left does.
        assert_eq!(r.try_budget(start), Some(Some(ms(300))));
        assert_eq!(r.try_budget(start + ms(900)), Some(Some(ms(100))));
        // A backoff of at least 500 ms, 960 ms into a 1 s deadline: 40 ms.
        let late = start + ms(960);
        let d = r.after_try(TryOutcome::Timeout, None, true, granted, late, &mut rng);
        assert_eq!(d, Decision::Retry { backoff: ms(40) });
        assert_eq!(r.try_budget(deadline), None);
        assert_eq!(r.try_budget(deadline + ms(1)), None);
        // Without a deadline or a per-try timeout a try is unbounded.
        let unbounded = cfg();
        let r = RetryState::new(&unbounded, &Method::GET, false, None);
        assert_eq!(r.try_budget(start), Some(None));
    }

    #[test]
    fn backoff_stays_within_full_jitter_bounds() {
        let mut rng = StdRng::seed_from_u64(8);
        for n in 1..=30 {
            let cap = (10u64 << (n - 1).min(20)).min(5_000);
            for _ in 0..20 {
                let d = backoff_with(&mut rng, n, 10, 5_000);
                assert!(
                    d >= ms(cap / 2) && d <= ms(cap),
                    "retry {n}: {d:?} not in [{}, {cap}] ms",
                    cap / 2
                );
            }
        }
        assert_eq!(backoff_with(&mut rng, 3, 0, 5_000), Duration::ZERO);
    }

    #[test]
    fn budget_bounds_retries() {
        let cfg = RetryBudgetConfig {
            ratio: 0.1,
            min_retries_per_s: 0,
            window_ms: 10_000,
        };
        let b = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..100 {
            b.deposit(&cfg);
            if b.withdraw(&cfg) {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
    }

    #[test]
    fn the_budget_refills_as_its_window_slides() {
        let cfg = RetryBudgetConfig {
            ratio: 0.5,
            min_retries_per_s: 0,
            window_ms: 1_000,
        };
        let b = RetryBudget::default();
        // Times on a synthetic ms clock.
        let start = 5_000;
        for _ in 0..4 {
            b.deposit_at(&cfg, start);
        }
        assert!(b.withdraw_at(&cfg, start + 10));
        assert!(b.withdraw_at(&cfg, start + 20));
        assert!(!b.withdraw_at(&cfg, start + 30), "0.5 × 4 requests spent");
        // A window later, those requests and retries have aged out; new
        // requests earn new retries.
        let later = start + 1_100;
        assert!(!b.withdraw_at(&cfg, later), "no requests in the window");
        b.deposit_at(&cfg, later);
        b.deposit_at(&cfg, later);
        assert!(b.withdraw_at(&cfg, later));
        assert!(!b.withdraw_at(&cfg, later));
    }
}
