//! A member's settings (`NodeConfig`) and how it joins (`ClusterState`).

#[allow(unused_imports)]
use super::*;

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// Everything a member needs to start. Mirrors etcd's flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// (name, peer URLs) of every initial member, from `--initial-cluster`.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub advertise_peer_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    /// Leader heartbeat period (`--heartbeat-interval`, ms).
    pub heartbeat_interval_ms: u64,
    /// Minimum election timeout (`--election-timeout`, ms); the maximum is 1.5× this.
    pub election_timeout_ms: u64,
    /// Applied entries between two snapshots (`--snapshot-count`); the log
    /// before a snapshot is compacted, and members that lag further behind
    /// catch up by snapshot.
    pub snapshot_count: u64,
    /// How long a client request may wait for a leader, a commit, or a read index.
    pub request_timeout_ms: u64,
    /// How often the leader looks for expired leases.
    pub lease_check_interval_ms: u64,
    /// Most leases revoked per expiry pass (bounds the burst of proposals).
    pub max_lease_revokes_per_pass: usize,
    /// Peer connect timeout.
    pub peer_connect_timeout_ms: u64,
    /// Floor for Raft RPC deadlines (see `network::PeerTimeouts`).
    pub raft_rpc_min_timeout_ms: u64,
    /// A learner may be promoted only when it lags the leader by at most this many entries.
    pub max_learner_lag_entries: u64,
    /// Most client writes a member folds into one Raft entry. Concurrent
    /// writes are batched: under load one forwarding round trip, one entry,
    /// one log append and one replication slot carry many writes; a lone
    /// write goes alone at once.
    pub max_write_batch_commands: usize,
    /// Most bytes of commands in one batched entry (a single larger command
    /// still goes, alone).
    pub max_write_batch_bytes: usize,
    /// Batched entries a member keeps proposed but not yet answered; writes
    /// arriving while this many are in flight wait and form the next batch.
    pub max_write_batches_in_flight: usize,
    /// Serve the fault-injection admin API (drills only).
    pub enable_fault_injection: bool,
    /// A deliberate bug, for proving the checkers catch it. Never in production.
    pub planted_bug: Option<PlantedBug>,
    /// TLS of the peer listener (`https://` in `--listen-peer-urls`).
    pub peer_server_tls: Option<tls::ServerTls>,
    /// TLS of this member's peer client (for `https://` peer URLs).
    pub peer_client_tls: Option<tls::ClientTls>,
    /// Most leadership-transfer control messages (`PauseElections`,
    /// `ElectAfter`) this member obeys per second, even from the leader.
    pub max_control_messages_per_s: u32,
    /// `--peer-cert-identity`: serve a peer message only if the member id it
    /// claims is the member named by its connection's verified certificate
    /// (`network::identity`).
    pub peer_cert_identity: bool,
}

impl NodeConfig {
    pub fn with_defaults(name: &str, data_dir: PathBuf) -> Self {
        NodeConfig {
            name: name.to_string(),
            data_dir,
            initial_cluster: Vec::new(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            advertise_peer_urls: Vec::new(),
            advertise_client_urls: Vec::new(),
            // Measured with bench/failover-gap.sh (BENCHMARKS.md): with the
            // dead-leader detector, 50/150 replaces a killed leader in about
            // 240 ms. 30/100 did it in ~150 ms but caused 4 elections during
            // a 1M-key bulk fill on a loaded 2-core machine; 50/150 none.
            heartbeat_interval_ms: 50,
            election_timeout_ms: 150,
            snapshot_count: 10_000,
            request_timeout_ms: 5_000,
            lease_check_interval_ms: 100,
            max_lease_revokes_per_pass: 64,
            peer_connect_timeout_ms: 1_000,
            raft_rpc_min_timeout_ms: 2_000,
            max_learner_lag_entries: 1_000,
            max_write_batch_commands: 256,
            max_write_batch_bytes: 1024 * 1024,
            max_write_batches_in_flight: 2,
            enable_fault_injection: false,
            planted_bug: None,
            peer_server_tls: None,
            peer_client_tls: None,
            max_control_messages_per_s: 10,
            peer_cert_identity: false,
        }
    }
}
