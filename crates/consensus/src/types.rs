//! The Raft type configuration and the small value types shared by the
//! consensus layer: member descriptions, apply outcomes, identities.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A member id, as etcd shows it (`etcdctl member list` prints it in hex).
pub type NodeId = u64;

/// What the cluster knows about one member. Stored inside Raft membership
/// entries, so every member agrees on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human name (`--name`).
    pub name: String,
    /// URLs other members reach this one on (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    /// URLs clients reach this one on (`--advertise-client-urls`); empty
    /// until the member has started and published them.
    pub client_urls: Vec<String>,
    /// Added as a voter (`MemberAdd` without `--learner`): it joins as a
    /// learner and whichever member leads promotes it once it has caught up,
    /// so adding a member never blocks the cluster on an unstarted process.
    #[serde(default)]
    pub auto_promote: bool,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// The result of applying one committed command, shipped back to the member
/// that proposed it (possibly across the network when a follower forwarded
/// the write). `response` is `mvcc::ApplyResponse::encode()`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// Store revision right after this command was applied.
    pub revision: i64,
    /// Encoded `mvcc::ApplyResponse`; empty for entries that carry no command.
    #[serde(with = "serde_bytes")]
    pub response: Vec<u8>,
    /// For an entry carrying `mvcc::Command::Batch`: one outcome per command
    /// of the batch, in order (`response` is then empty). Empty otherwise.
    pub batch: Vec<ApplyOutcome>,
}

openraft::declare_raft_types!(
    /// Phalanx's Raft types: log entries carry `mvcc::Command`s.
    pub TypeConfig:
        D = mvcc::Command,
        R = ApplyOutcome,
        NodeId = NodeId,
        Node = Member,
        AsyncRuntime = crate::runtime::PhalanxRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Member id for a member of an initial cluster: derived from its peer URLs
/// and the cluster token, so every member computes the same ids from the same
/// `--initial-cluster` line without talking to each other.
pub fn initial_member_id(peer_urls: &[String], cluster_token: &str) -> NodeId {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha256::new();
    for u in &urls {
        h.update(u.as_bytes());
        h.update([0]);
    }
    h.update(cluster_token.as_bytes());
    let d = h.finalize();
    // Never 0: etcd treats id 0 as "none".
    u64::from_be_bytes(d[..8].try_into().expect("sha256 is 32 bytes")).max(1)
}

/// Cluster id from the initial member ids and the token (etcd derives it the
/// same way: from the members it started with).
pub fn cluster_id(member_ids: &[NodeId], cluster_token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha256::new();
    for id in &ids {
        h.update(id.to_be_bytes());
    }
    h.update(cluster_token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("sha256 is 32 bytes")).max(1)
}

/// Member id for a member added at runtime (`MemberAdd`): random, as etcd's.
pub fn random_member_id() -> NodeId {
    rand::random::<u64>().max(1)
}
