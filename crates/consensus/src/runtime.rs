//! The async runtime openraft runs on: tokio, plus two seams a simulator needs.
//!
//! * **Member clocks.** [`MemberInstant::now`] is tokio's clock plus the
//!   offset of the [`MemberClock`] the calling task runs under (none: zero).
//!   Every task openraft spawns inherits its spawner's clock, so running
//!   `Raft::new` inside [`MemberClock::scope`] puts the whole member — core,
//!   tick loop, replication streams — on that clock. A simulator jumps one
//!   member's clock forward ([`MemberClock::jump_forward`]) to make its
//!   election timer and leader lease expire early, as a stepped clock would.
//!   In production no task has a clock and this is exactly tokio's clock.
//! * **A seedable RNG.** openraft draws election timeouts from
//!   [`PhalanxRuntime::thread_rng`]. It is seeded from the OS unless the
//!   thread called [`seed_thread_rng`], which a simulator does so that a seed
//!   reproduces a run exactly.
//!
//! Invariant: a member clock only moves forward (`Instant` is monotonic).

use std::cell::RefCell;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

tokio::task_local! {
    static CLOCK: MemberClock;
}

/// Shortest deadline openraft may put on anything it bounds with
/// `AsyncRuntime::timeout` (Raft RPCs), in ms; 0 = no floor.
///
/// Why: openraft 0.9 bounds every AppendEntries by the heartbeat interval
/// (50 ms). A follower that takes longer to fsync a large batch (a bulk
/// load, a busy disk) makes the leader time the request out, back off and
/// send the same entries again: replication stalls exactly when it is
/// loaded, and the stall can cost the leadership. A dead peer still fails
/// fast (connection refused), and a partitioned one is bounded by the floor.
/// Process-wide because openraft's runtime is a type, not a value: set once
/// by `Node::start` (production); the simulator leaves it at 0.
static RPC_TIMEOUT_FLOOR_MS: AtomicU64 = AtomicU64::new(0);

/// Set the floor of openraft's RPC deadlines (see [`RPC_TIMEOUT_FLOOR_MS`]).
pub fn set_rpc_timeout_floor(floor: Duration) {
    RPC_TIMEOUT_FLOOR_MS.store(floor.as_millis() as u64, Ordering::Relaxed);
}

fn rpc_timeout_floor() -> Duration {
    Duration::from_millis(RPC_TIMEOUT_FLOOR_MS.load(Ordering::Relaxed))
}

/// How far one member's clock runs ahead of the process clock. Cheap to
/// clone; clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct MemberClock {
    ahead_us: Arc<AtomicU64>,
}

impl MemberClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Step this member's clock forward by `by`.
    pub fn jump_forward(&self, by: Duration) {
        self.ahead_us
            .fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    /// Current offset from the process clock.
    pub fn ahead(&self) -> Duration {
        Duration::from_micros(self.ahead_us.load(Ordering::SeqCst))
    }

    /// Run `fut` (and every task openraft spawns from it) on this clock.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CLOCK.scope(self, fut).await
    }
}

fn current_ahead() -> Duration {
    CLOCK.try_with(|c| c.ahead()).unwrap_or(Duration::ZERO)
}

/// An instant on the calling task's member clock (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberInstant(tokio::time::Instant);

impl MemberInstant {
    /// The process-clock instant at which the calling task's member clock reads `self`.
    fn on_process_clock(self) -> tokio::time::Instant {
        self.0.checked_sub(current_ahead()).unwrap_or(self.0)
    }
}

impl Add<Duration> for MemberInstant {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        MemberInstant(self.0 + d)
    }
}

impl AddAssign<Duration> for MemberInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for MemberInstant {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        MemberInstant(self.0 - d)
    }
}

impl SubAssign<Duration> for MemberInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl Sub<MemberInstant> for MemberInstant {
    type Output = Duration;
    /// Saturates at zero, as `std::time::Instant` does.
    fn sub(self, earlier: MemberInstant) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }
}

impl openraft::Instant for MemberInstant {
    fn now() -> Self {
        MemberInstant(tokio::time::Instant::now() + current_ahead())
    }
}

thread_local! {
    static RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Seed this thread's [`PhalanxRuntime::thread_rng`] (a simulator calls this
/// on its single runtime thread before starting members).
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Handle to this thread's RNG (seeded from the OS on first use unless
/// [`seed_thread_rng`] was called).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRng;

impl ThreadRng {
    fn with<T>(f: impl FnOnce(&mut StdRng) -> T) -> T {
        RNG.with(|r| f(r.borrow_mut().get_or_insert_with(StdRng::from_entropy)))
    }
}

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        Self::with(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        Self::with(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        Self::with(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        Self::with(|r| r.try_fill_bytes(dest))
    }
}

/// tokio, with member clocks and a seedable RNG.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PhalanxRuntime;

impl AsyncRuntime for PhalanxRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = MemberInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match CLOCK.try_with(|c| c.clone()) {
            Ok(clock) => tokio::spawn(CLOCK.scope(clock, future)),
            Err(_) => tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline.on_process_clock())
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration.max(rpc_timeout_floor()), future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline.on_process_clock(), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Instant as _;
    use rand::Rng;

    #[tokio::test(start_paused = true)]
    async fn a_member_clock_runs_ahead_only_inside_its_scope() {
        let clock = MemberClock::new();
        let outside = MemberInstant::now();
        clock.jump_forward(Duration::from_secs(5));
        let inside = clock.clone().scope(async { MemberInstant::now() }).await;
        assert!(inside - outside >= Duration::from_secs(5));
        // Spawned tasks inherit the clock.
        let spawned = clock
            .scope(async {
                PhalanxRuntime::spawn(async { MemberInstant::now() })
                    .await
                    .expect("task")
            })
            .await;
        assert!(spawned - outside >= Duration::from_secs(5));
        assert!(MemberInstant::now() - outside < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_converts_member_time_to_process_time() {
        let clock = MemberClock::new();
        clock.jump_forward(Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        clock
            .scope(async {
                let deadline = MemberInstant::now() + Duration::from_millis(200);
                PhalanxRuntime::sleep_until(deadline).await;
            })
            .await;
        let slept = start.elapsed();
        assert!(
            slept >= Duration::from_millis(200) && slept < Duration::from_millis(300),
            "slept {slept:?}"
        );
    }

    #[test]
    fn seeded_rng_repeats() {
        seed_thread_rng(42);
        let a: Vec<u64> = (0..4).map(|_| PhalanxRuntime::thread_rng().gen()).collect();
        seed_thread_rng(42);
        let b: Vec<u64> = (0..4).map(|_| PhalanxRuntime::thread_rng().gen()).collect();
        assert_eq!(a, b);
    }
}
