//! Fault injection for drills and tests. Off unless the member was started
//! with `--enable-fault-injection`; then the admin API can cut this member off
//! from chosen peers (both directions of the peer transport) and delay its
//! outgoing peer messages. Client traffic is never touched: a partitioned
//! leader still accepts client connections, as a real one would.
//!
//! Planted bugs ([`PlantedBug`]) exist only so the proof-under-failure suite
//! can show that its checks catch real violations; they are set at start-up
//! by a hidden flag and never by the API, and they are compiled only into
//! test builds: the cargo feature `planted-bugs`, which the test suites turn
//! on through their dev-dependencies and a release build never does
//! ([`PLANTED_BUGS_COMPILED`]).

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// A deliberate violation, for testing the checkers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantedBug {
    /// Serve "linearizable" reads from local state without ReadIndex.
    SkipReadIndex,
    /// Report log appends flushed before (in fact without) the WAL's
    /// fdatasync, and save the vote without a sync.
    AckBeforeFsync,
    /// At start-up, accept a torn record at the WAL's tail (its checksum
    /// fails) as whole instead of truncating it.
    TornRecordAccepted,
}

/// Whether this build carries the planted bugs (cargo feature
/// `planted-bugs`). False in release builds, where every
/// [`PlantedBug::is_active`] is a constant false and the bugs' code paths
/// are compiled out.
pub const PLANTED_BUGS_COMPILED: bool = cfg!(feature = "planted-bugs");

impl PlantedBug {
    /// True when `planted` is this bug and this build carries planted bugs.
    pub fn is_active(self, planted: Option<PlantedBug>) -> bool {
        PLANTED_BUGS_COMPILED && planted == Some(self)
    }
}

impl std::str::FromStr for PlantedBug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !PLANTED_BUGS_COMPILED {
            return Err(format!(
                "planted bug {s:?}: this build has no planted bugs; they exist only in test \
                 builds (cargo feature `planted-bugs` of the consensus crate, which `cargo test` turns on)"
            ));
        }
        match s {
            "skip-read-index" => Ok(PlantedBug::SkipReadIndex),
            "ack-before-fsync" => Ok(PlantedBug::AckBeforeFsync),
            "torn-record-accepted" => Ok(PlantedBug::TornRecordAccepted),
            other => Err(format!(
                "unknown planted bug {other:?}: expected skip-read-index, ack-before-fsync or torn-record-accepted"
            )),
        }
    }
}

/// The network faults in force on this member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFaults {
    /// Peers this member can neither reach nor be reached by.
    #[serde(default)]
    pub isolated_from: BTreeSet<NodeId>,
    /// Added to every outgoing peer message, in ms.
    #[serde(default)]
    pub delay_ms: u64,
    /// Each outgoing peer message is delayed by a uniform random amount in
    /// `[delay_ms, delay_ms + jitter_ms]`, so messages overtake each other.
    #[serde(default)]
    pub jitter_ms: u64,
}

/// Largest injectable delay, so a typo cannot wedge a member for hours.
pub const MAX_INJECTED_DELAY_MS: u64 = 60_000;

/// Largest injectable jitter (on top of the delay), in ms.
pub const MAX_INJECTED_JITTER_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("fault injection is disabled on this member: start it with --enable-fault-injection")]
    Disabled,
    #[error("delay_ms {0} exceeds the limit of {MAX_INJECTED_DELAY_MS} ms")]
    DelayTooLarge(u64),
    #[error("jitter_ms {0} exceeds the limit of {MAX_INJECTED_JITTER_MS} ms")]
    JitterTooLarge(u64),
}

#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    network: RwLock<NetworkFaults>,
}

impl Faults {
    pub fn new(enabled: bool) -> Self {
        Faults {
            enabled,
            network: RwLock::new(NetworkFaults::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn get(&self) -> NetworkFaults {
        self.network.read().expect("faults poisoned").clone()
    }

    pub fn set(&self, f: NetworkFaults) -> Result<(), FaultError> {
        if !self.enabled {
            return Err(FaultError::Disabled);
        }
        if f.delay_ms > MAX_INJECTED_DELAY_MS {
            return Err(FaultError::DelayTooLarge(f.delay_ms));
        }
        if f.jitter_ms > MAX_INJECTED_JITTER_MS {
            return Err(FaultError::JitterTooLarge(f.jitter_ms));
        }
        *self.network.write().expect("faults poisoned") = f;
        Ok(())
    }

    pub fn blocks(&self, peer: NodeId) -> bool {
        self.enabled
            && self
                .network
                .read()
                .expect("faults poisoned")
                .isolated_from
                .contains(&peer)
    }

    /// The delay of the next outgoing peer message: uniform in
    /// `[delay_ms, delay_ms + jitter_ms]`; `None` when both are 0.
    pub fn delay(&self) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let (d, j) = {
            let f = self.network.read().expect("faults poisoned");
            (f.delay_ms, f.jitter_ms)
        };
        let ms = if j > 0 {
            rand::Rng::gen_range(&mut rand::thread_rng(), d..=d + j)
        } else {
            d
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}
