//! Lease expiry clocks. The replicated store knows which leases exist and
//! which keys they hold; *when* a lease expires is decided only by the
//! leader's clock, as in etcd: keep-alives reach the leader and refresh its
//! deadline; the leader proposes `LeaseRevoke` once a deadline passes, so
//! expiry deletes keys through consensus.
//!
//! Safety rule ("a leader change never expires a live lease early"): when a
//! member becomes leader it does not trust deadlines it merely replicated — it
//! restarts every lease's full TTL from the moment it took over
//! ([`Lessor::promote`]). A client that kept its lease alive on the old
//! leader therefore always gets at least one full TTL on the new one.
//!
//! Time is the member's own clock ([`MemberClock`]: tokio's clock plus the
//! member's offset), the same clock openraft's timers run on, so a simulator
//! that pauses tokio's clock or jumps one member's clock drives lease expiry
//! too.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

use crate::runtime::MemberClock;

#[derive(Debug, Clone, Copy)]
struct Clock {
    ttl_seconds: i64,
    deadline: Instant,
}

/// Per-member lease clocks.
#[derive(Default)]
pub struct Lessor {
    clocks: Mutex<BTreeMap<i64, Clock>>,
    member_clock: MemberClock,
}

/// Leases are granted with at least this TTL, as etcd's minimum
/// (`minLeaseTTL` is derived from the election timeout there).
pub const MIN_LEASE_TTL_SECONDS: i64 = 2;

fn ttl(ttl_seconds: i64) -> Duration {
    Duration::from_secs(ttl_seconds.max(0) as u64)
}

impl Lessor {
    /// Lease clocks on `member_clock` (production: a clock that never
    /// jumps, `MemberClock::new()`; the simulator passes each member's own).
    pub fn new(member_clock: MemberClock) -> Self {
        Lessor {
            clocks: Mutex::default(),
            member_clock,
        }
    }

    /// Now, on this member's clock.
    fn now(&self) -> Instant {
        Instant::now() + self.member_clock.ahead()
    }

    /// A grant was applied: the lease runs for its full TTL from now.
    pub fn on_grant(&self, id: i64, ttl_seconds: i64) {
        let clock = Clock {
            ttl_seconds,
            deadline: self.now() + ttl(ttl_seconds),
        };
        self.clocks
            .lock()
            .expect("lessor poisoned")
            .insert(id, clock);
    }

    /// A revoke was applied (explicitly or by expiry).
    pub fn on_revoke(&self, id: i64) {
        self.clocks.lock().expect("lessor poisoned").remove(&id);
    }

    /// Rebuild the clocks from the store after a snapshot install or restart;
    /// every lease gets its full TTL (never shorter than what it had).
    pub fn reload(&self, store: &mvcc::Store) {
        let now = self.now();
        let mut clocks = self.clocks.lock().expect("lessor poisoned");
        clocks.clear();
        for l in store.leases() {
            clocks.insert(
                l.id,
                Clock {
                    ttl_seconds: l.ttl_seconds,
                    deadline: now + ttl(l.ttl_seconds),
                },
            );
        }
    }

    /// This member just became leader: restart every TTL from now.
    pub fn promote(&self) {
        let now = self.now();
        for c in self.clocks.lock().expect("lessor poisoned").values_mut() {
            c.deadline = now + ttl(c.ttl_seconds);
        }
    }

    /// Keep-alive on the leader. Returns the TTL granted, or `None` if the
    /// lease does not exist (any more).
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let mut clocks = self.clocks.lock().expect("lessor poisoned");
        let c = clocks.get_mut(&id)?;
        c.deadline = self.now() + ttl(c.ttl_seconds);
        Some(c.ttl_seconds)
    }

    /// (granted TTL, remaining seconds) of a lease, by this member's clock.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let clocks = self.clocks.lock().expect("lessor poisoned");
        let c = clocks.get(&id)?;
        let left = c.deadline.saturating_duration_since(self.now());
        // etcd rounds the remaining TTL up to whole seconds.
        let secs = left.as_millis().div_ceil(1000) as i64;
        Some((c.ttl_seconds, secs))
    }

    /// Up to `max` leases whose deadline has passed.
    pub fn expired(&self, max: usize) -> Vec<i64> {
        let now = self.now();
        let clocks = self.clocks.lock().expect("lessor poisoned");
        let mut ids: Vec<i64> = clocks
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(max);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_runs_on_the_member_clock() {
        let clock = MemberClock::new();
        let lessor = Lessor::new(clock.clone());
        lessor.on_grant(7, 10);
        assert_eq!(lessor.remaining(7), Some((10, 10)));
        clock.jump_forward(Duration::from_secs(3));
        assert_eq!(
            lessor.remaining(7),
            Some((10, 7)),
            "the jump reaches the lease"
        );
        assert!(lessor.expired(10).is_empty());
        assert_eq!(lessor.keep_alive(7), Some(10));
        assert_eq!(
            lessor.remaining(7),
            Some((10, 10)),
            "a keep-alive restarts the TTL"
        );
        clock.jump_forward(Duration::from_secs(11));
        assert_eq!(lessor.expired(10), vec![7]);
        lessor.promote();
        assert!(
            lessor.expired(10).is_empty(),
            "a new leader restarts every TTL"
        );
    }
}
