//! Consensus: a Phalanx member's Raft replication (openraft 0.9) over durable
//! storage (redb), and the operations the client API builds on.
//!
//! Main types:
//! - [`Node`]: a running member. [`Node::propose`] replicates an
//!   `mvcc::Command` and returns its outcome once applied;
//!   [`Node::read_barrier`] is the ReadIndex barrier for linearizable reads;
//!   lease and membership operations are routed to the leader.
//! - [`LogStore`]: the Raft log + vote in a segmented write-ahead log
//!   (`member/wal/`, crate `wal`), checksummed records, one fdatasync per
//!   group commit before an append is acknowledged; a `raft.redb` of older
//!   releases is upgraded in place (docs/storage.md).
//! - [`Applier`]: the state machine, applying committed batches to the
//!   `mvcc::Store` in one transaction with Raft's bookkeeping, and
//!   publishing watch events ([`StoreChange`]).
//! - [`Lessor`]: leader-side lease clocks.
//! - [`runtime`]: the async runtime openraft runs on (tokio, plus per-member
//!   clocks and a seedable RNG for the simulator).
//! - [`network`]: the peer transport, behind openraft's `RaftNetworkFactory`
//!   (a simulator substitutes its own).
//! - [`log_limit::RepeatLimiter`]: the binary's log filter that keeps
//!   openraft's per-RPC warnings and errors to one line per call site per
//!   10 s.
//!
//! Invariants: nothing is acknowledged to a client before its entry is
//! committed, i.e. fsynced by a quorum; entries are applied in log order
//! exactly once (asserted); corrupted records stop the member.

pub mod faults;
pub mod identity;
pub mod lessor;
pub mod log_limit;
pub mod log_store;
pub mod network;
pub mod node;
pub mod runtime;
pub mod state_machine;
pub mod types;

pub use faults::{Faults, NetworkFaults, PlantedBug, PLANTED_BUGS_COMPILED};
pub use lessor::Lessor;
pub use log_store::LogStoreError;
pub use log_store::{IoMode, LogStore, LogStoreOptions};

/// Largest Raft log record, in bytes: one entry (a client request, or a
/// batch of them) must fit in one WAL record, or the member fail-stops.
pub const MAX_LOG_RECORD_BYTES: u32 = wal::DEFAULT_MAX_RECORD_BYTES;
pub use node::{
    Changes, ClusterState, Fatal, Node, NodeConfig, NodeError, NodeParts, NodeStatus, StartError,
    WriteBatchStats,
};
pub use state_machine::{Applier, AuthObserver, StoreChange};
pub use types::{ApplyOutcome, Member, NodeId, TypeConfig};

/// Make every panic outside a guarded section ([`mvcc::guard`]) stop the
/// process with exit code [`PANIC_EXIT_CODE`]: a panic is a broken
/// invariant or a storage engine that hit damaged data, and a member that
/// lost one of its tasks to it must not go on serving. The default hook
/// runs first, so the message and location are printed.
pub fn install_fail_stop_panic_hook(member: &str) {
    let member = member.to_string();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if mvcc::guard::in_guarded_section() {
            // Caught by the caller and reported as an error naming the file.
            return;
        }
        default(info);
        tracing::error!("member {member:?}: a panic stops this member: {info}");
        eprintln!("phalanx node {member}: stopping after a panic (exit code {PANIC_EXIT_CODE})");
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// Exit code of a member stopped by a panic.
pub const PANIC_EXIT_CODE: i32 = 70;
