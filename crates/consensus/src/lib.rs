//! Consensus: a Phalanx member's Raft replication (openraft 0.9) over durable
//! storage (redb), and the operations the client API builds on.
//!
//! Main types:
//! - [`Node`]: a running member. [`Node::propose`] replicates an
//!   `mvcc::Command` and returns its outcome once applied;
//!   [`Node::read_barrier`] is the ReadIndex barrier for linearizable reads;
//!   lease and membership operations are routed to the leader.
//! - [`LogStore`]: the Raft log + vote in `raft.redb`, checksummed records,
//!   fsynced before an append is acknowledged.
//! - [`Applier`]: the state machine, applying committed batches to the
//!   `mvcc::Store` in one transaction with Raft's bookkeeping, and
//!   publishing watch events ([`StoreChange`]).
//! - [`Lessor`]: leader-side lease clocks.
//! - [`runtime`]: the async runtime openraft runs on (tokio, plus per-member
//!   clocks and a seedable RNG for the simulator).
//! - [`network`]: the peer transport, behind openraft's `RaftNetworkFactory`
//!   (a simulator substitutes its own).
//!
//! Invariants: nothing is acknowledged to a client before its entry is
//! committed, i.e. fsynced by a quorum; entries are applied in log order
//! exactly once (asserted); corrupted records stop the member.

pub mod faults;
pub mod identity;
pub mod lessor;
pub mod log_store;
pub mod network;
pub mod node;
pub mod runtime;
pub mod state_machine;
pub mod types;

pub use faults::{Faults, NetworkFaults, PlantedBug};
pub use lessor::Lessor;
pub use log_store::{IoMode, LogStore, LogStoreOptions};
pub use node::{
    ClusterState, Node, NodeConfig, NodeError, NodeParts, NodeStatus, StartError, WriteBatchStats,
};
pub use state_machine::{Applier, StoreChange};
pub use types::{ApplyOutcome, Member, NodeId, TypeConfig};
