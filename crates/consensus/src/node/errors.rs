//! What a member's operations can fail with, why a member stops for good,
//! and why it cannot start. Messages are plain; `etcd-api` adds etcd's
//! gRPC codes and `etcdserver:` prefix.

#[allow(unused_imports)]
use super::*;

/// Errors a client request can end with. The messages are etcd's, because
/// clients match on them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("leader changed")]
    LeaderChanged,
    #[error("server stopped")]
    Stopped,
    #[error("member not found")]
    MemberNotFound,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("{0}")]
    Internal(String),
    /// This member stopped for good (removed from the cluster, or a
    /// storage fault): answered at once instead of after a timeout.
    #[error("{0}")]
    Halted(Fatal),
}

/// Why a member stopped serving for good. The process exits on it (see
/// [`Node::halted`]); until then every client request is answered with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fatal {
    #[error("the member has been permanently removed from the cluster: member {name:?} (id {id:x}) of cluster {cluster:x} {how}. It stops for good; to bring it back, run `etcdctl member add` and start it with an empty --data-dir and --initial-cluster-state existing")]
    Removed {
        name: String,
        id: NodeId,
        cluster: u64,
        how: String,
    },
    #[error("server stopped: member {name:?} (id {id:x}) hit a storage fault and stops rather than serve from a store it cannot trust: {what}. Fix the fault (free disk space, replace the disk) and restart the member; if a file is corrupted, remove the member with `etcdctl member remove` and re-add it with an empty --data-dir")]
    Storage {
        name: String,
        id: NodeId,
        what: String,
    },
}

/// Why a member refused to start. Each says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("data dir {data_dir} belongs to cluster {found_cluster:x} (token {found_token:?}), but this member was started with --initial-cluster-token {wanted_token:?}: use the data dir of this cluster, or an empty one")]
    OtherCluster {
        data_dir: PathBuf,
        found_cluster: u64,
        found_token: String,
        wanted_token: String,
    },
    #[error("data dir {data_dir} belongs to member {found_name:?} (id {found_id:x}), but this member was started as {wanted_name:?} (id {wanted_id:x}): a data dir serves exactly one member; use its own --name and peer URLs, or an empty data dir")]
    OtherMember {
        data_dir: PathBuf,
        found_name: String,
        found_id: NodeId,
        wanted_name: String,
        wanted_id: NodeId,
    },
    #[error("--initial-cluster does not list this member's name {name:?}; add `{name}=<peer-url>` to it")]
    NotInInitialCluster { name: String },
    #[error("--initial-cluster lists {name:?} with peer URLs {listed:?}, but --initial-advertise-peer-urls is {advertised:?}; they must match")]
    PeerUrlMismatch {
        name: String,
        listed: Vec<String>,
        advertised: Vec<String>,
    },
    #[error("could not join the existing cluster through any of {peers:?}: {detail}. Add this member first with `etcdctl member add {name} --peer-urls=...`, and check the peers are reachable")]
    Join {
        name: String,
        peers: Vec<String>,
        detail: String,
    },
    #[error(transparent)]
    Log(#[from] crate::log_store::LogStoreError),
    #[error("key-value store {path}: {detail}")]
    Store { path: PathBuf, detail: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("data dir {data_dir} holds the identity of member {name:?} (id {id:x}) but {file} {what}: this member's state was lost, and starting would let it vote twice in a term or forget acknowledged writes. Remove the member with `etcdctl member remove {id:x}`, then `etcdctl member add {name} --peer-urls=...`, and start it with an empty --data-dir and --initial-cluster-state existing")]
    LostState {
        data_dir: PathBuf,
        name: String,
        id: NodeId,
        file: PathBuf,
        what: &'static str,
    },
    #[error("member {name:?} (id {id:x}) has already been bootstrapped: peer {peer} knows it as a started member of cluster {cluster:x}, but its data dir {data_dir} is empty, so its Raft log and vote were lost. A member must never rejoin under its old id without its state (it could vote twice in a term). Remove it with `etcdctl member remove {id:x}`, then `etcdctl member add {name} --peer-urls=...`, and start it with an empty --data-dir and --initial-cluster-state existing")]
    AlreadyBootstrapped {
        name: String,
        id: NodeId,
        cluster: u64,
        peer: String,
        data_dir: PathBuf,
    },
    #[error("member {name:?} (data dir {data_dir}) was removed from the cluster earlier ({marker} exists): a removed member never rejoins under its old id. Run `etcdctl member add` and start it with an empty --data-dir and --initial-cluster-state existing")]
    WasRemoved {
        name: String,
        data_dir: PathBuf,
        marker: PathBuf,
    },
}
