//! A running member: Raft core + log store + state machine + peer transport +
//! lease clocks, and the operations the client API needs (propose, ReadIndex,
//! leases, membership), each routed to the leader when this member is not it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mvcc::{Command, Store};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::faults::{Faults, PlantedBug};
use crate::identity::{self, Identity};
use crate::lessor::Lessor;
use crate::log_store::LogStore;
use crate::network::{
    encode, peer_call, JoinAnswer, LeaderError, LeaderRequest, LeaderResponse, PeerCallError,
    PeerClient, PeerHandler, PeerNetwork, PeerRequest, PeerService, PeerTimeouts, PeerTransport,
};
use crate::state_machine::Applier;
use crate::types::{cluster_id, initial_member_id, ApplyOutcome, Member, NodeId, Raft};

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
        }
    }
}

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

/// See [`Node::changes`].
pub struct Changes(tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>);

impl Changes {
    /// Waits for the next change. False when the Raft core has stopped: no
    /// change will ever come, so a caller must not wait again.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
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

/// Status figures for `Maintenance.Status`.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub is_learner: bool,
    /// Last log index covered by this member's latest snapshot.
    pub snapshot_index: u64,
    /// Log entries up to this index have been compacted away.
    pub purged_index: u64,
}

/// A running member.
pub struct Node {
    id: NodeId,
    cluster_id: u64,
    config: NodeConfig,
    raft: Raft,
    applier: Applier,
    lessor: Arc<Lessor>,
    transport: Arc<dyn PeerTransport>,
    faults: Arc<Faults>,
    read_batch: std::sync::Mutex<ReadBatch>,
    write_batch: std::sync::Mutex<WriteBatch>,
    /// Serialises membership decisions on the leader.
    membership_lock: tokio::sync::Mutex<()>,
    /// Set while handing leadership over (until the deadline).
    transferring: std::sync::Mutex<Option<Instant>>,
    shutdown_tx: watch::Sender<bool>,
    /// Set once this member stops for good; see [`Node::halted`].
    fatal: watch::Sender<Option<Fatal>>,
    /// Members seen in applied membership configurations, to tell a
    /// removed member (answered "removed") from one added by an entry this
    /// member has not applied yet (served normally).
    membership_history: std::sync::Mutex<MembershipHistory>,
    /// Identity to write once the Raft log holds something (see
    /// [`Node::start`]), with the member dir.
    pending_identity: std::sync::Mutex<Option<(PathBuf, Identity)>>,
}

#[derive(Default)]
struct MembershipHistory {
    ever: BTreeSet<NodeId>,
    removed: BTreeSet<NodeId>,
}

/// File in `<data-dir>/member` recording that this member learned it was
/// removed from the cluster; a member finding it refuses to start.
pub const REMOVED_MARKER_FILE: &str = "removed";

/// What [`Node::from_parts`] assembles a member from.
pub struct NodeParts {
    pub id: NodeId,
    pub cluster_id: u64,
    pub config: NodeConfig,
    pub raft: Raft,
    pub applier: Applier,
    pub lessor: Arc<Lessor>,
    pub transport: Arc<dyn PeerTransport>,
    pub faults: Arc<Faults>,
}

/// Upper bound on an election pause or delayed campaign a peer may ask for.
pub const MAX_ELECTION_PAUSE_MS: u64 = 10_000;

/// Bound on asking one peer, at a first start, whether it already knows
/// this member as bootstrapped (see `Node::refuse_if_bootstrapped`).
pub const BOOTSTRAP_PROBE_TIMEOUT_MS: u64 = 1_000;

/// How this member's proposals were batched (see [`Node::write_batch_stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteBatchStats {
    /// Raft entries this member proposed for client writes.
    pub entries: u64,
    /// Client writes those entries carried (`commands / entries` is the mean batch size).
    pub commands: u64,
    /// The most writes one entry carried.
    pub largest: u64,
}

/// Client writes waiting on this member to be proposed as one batch.
#[derive(Default)]
struct WriteBatch {
    stats: WriteBatchStats,
    /// Proposer tasks running (at most `max_write_batches_in_flight`).
    proposers: usize,
    waiting: std::collections::VecDeque<(
        Command,
        tokio::sync::oneshot::Sender<Result<ApplyOutcome, NodeError>>,
    )>,
}

/// Readers waiting for the next ReadIndex round.
#[derive(Default)]
struct ReadBatch {
    in_flight: bool,
    waiting: Vec<tokio::sync::oneshot::Sender<Result<Option<u64>, NodeError>>>,
}

fn is_not_leader<E>(
    e: &RaftError<NodeId, ClientWriteError<NodeId, Member>>,
) -> Option<Option<(NodeId, Member)>> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Some(f.leader_id.zip(f.leader_node.clone()))
        }
        _ => None,
    }
}

impl Node {
    /// Open (or create) the member's data, start Raft and serve peers on
    /// `peer_listener`. For a new cluster, the initial membership is set up;
    /// for an existing one, the member learns its id from a peer.
    pub async fn start(
        config: NodeConfig,
        peer_listener: tokio::net::TcpListener,
    ) -> Result<Arc<Node>, StartError> {
        let member_dir = config.data_dir.join("member");
        std::fs::create_dir_all(&member_dir).map_err(|source| StartError::DataDir {
            path: member_dir.clone(),
            source,
        })?;

        let existing_identity = identity::load(&member_dir)?;
        let timeouts = PeerTimeouts {
            connect_timeout_ms: config.peer_connect_timeout_ms,
            request_timeout_ms: config.request_timeout_ms,
            raft_rpc_min_timeout_ms: config.raft_rpc_min_timeout_ms,
        };
        let faults = Arc::new(Faults::new(config.enable_fault_injection));

        // Decide who we are.
        let mut initial_members: Option<BTreeMap<NodeId, Member>> = None;
        let identity = match (&existing_identity, config.initial_cluster_state) {
            (Some(found), _) => {
                if found.cluster_token != config.initial_cluster_token {
                    return Err(StartError::OtherCluster {
                        data_dir: config.data_dir.clone(),
                        found_cluster: found.cluster_id,
                        found_token: found.cluster_token.clone(),
                        wanted_token: config.initial_cluster_token.clone(),
                    });
                }
                let wanted_id = if config.initial_cluster_state == ClusterState::New
                    && !config.advertise_peer_urls.is_empty()
                {
                    initial_member_id(&config.advertise_peer_urls, &config.initial_cluster_token)
                } else {
                    found.member_id
                };
                if found.name != config.name || wanted_id != found.member_id {
                    return Err(StartError::OtherMember {
                        data_dir: config.data_dir.clone(),
                        found_name: found.name.clone(),
                        found_id: found.member_id,
                        wanted_name: config.name.clone(),
                        wanted_id,
                    });
                }
                found.clone()
            }
            (None, ClusterState::New) => {
                let me = config
                    .initial_cluster
                    .iter()
                    .find(|(n, _)| *n == config.name)
                    .ok_or_else(|| StartError::NotInInitialCluster {
                        name: config.name.clone(),
                    })?;
                let mut listed = me.1.clone();
                let mut advertised = config.advertise_peer_urls.clone();
                listed.sort();
                advertised.sort();
                if listed != advertised {
                    return Err(StartError::PeerUrlMismatch {
                        name: config.name.clone(),
                        listed,
                        advertised,
                    });
                }
                let mut members = BTreeMap::new();
                for (name, urls) in &config.initial_cluster {
                    let id = initial_member_id(urls, &config.initial_cluster_token);
                    // Identical on every member (client URLs are published
                    // by each member once a leader exists), so the initial
                    // membership entries agree.
                    members.insert(
                        id,
                        Member {
                            name: name.clone(),
                            peer_urls: urls.clone(),
                            client_urls: Vec::new(),
                            auto_promote: false,
                        },
                    );
                }
                let ids: Vec<NodeId> = members.keys().copied().collect();
                let identity = Identity {
                    cluster_id: cluster_id(&ids, &config.initial_cluster_token),
                    member_id: initial_member_id(
                        &config.advertise_peer_urls,
                        &config.initial_cluster_token,
                    ),
                    name: config.name.clone(),
                    cluster_token: config.initial_cluster_token.clone(),
                };
                initial_members = Some(members);
                identity
            }
            (None, ClusterState::Existing) => Self::join(&config, faults.clone()).await?,
        };
        let network = PeerNetwork::new(identity.member_id, timeouts, faults.clone());

        let marker = member_dir.join(REMOVED_MARKER_FILE);
        if marker.exists() {
            return Err(StartError::WasRemoved {
                name: config.name.clone(),
                data_dir: config.data_dir.clone(),
                marker,
            });
        }
        let raft_path = member_dir.join("raft.redb");
        let log = LogStore::open(
            &raft_path,
            PlantedBug::AckBeforeFsync.is_active(config.planted_bug),
        )?;
        let durable = log.durable_state()?;
        if existing_identity.is_some() {
            // The identity is written only once the log holds an entry (see
            // below), so an identity without a log means the log was lost.
            let lost = match durable.last_log_id {
                None => Some("holds no Raft log"),
                // Entries of a term above 0 came from an elected leader, and
                // a member saves the leader's vote before accepting them.
                Some(l) if l.leader_id.term > 0 && !durable.has_vote => Some("holds no saved vote"),
                _ => None,
            };
            if let Some(what) = lost {
                return Err(StartError::LostState {
                    data_dir: config.data_dir.clone(),
                    name: identity.name.clone(),
                    id: identity.member_id,
                    file: raft_path,
                    what,
                });
            }
            // kv.redb is created (and its tables committed durably) before
            // the identity is written, so it must exist. A missing one would
            // be rebuilt from a log whose head may have been purged.
            let kv_path = member_dir.join("kv.redb");
            if std::fs::metadata(&kv_path).map(|m| m.len()).unwrap_or(0) == 0 {
                return Err(StartError::LostState {
                    data_dir: config.data_dir.clone(),
                    name: identity.name.clone(),
                    id: identity.member_id,
                    file: kv_path,
                    what: "is missing or empty",
                });
            }
        } else if durable.last_log_id.is_none() {
            // A fresh data dir: if the cluster already runs and knows this
            // member as started, its state was lost.
            Self::refuse_if_bootstrapped(&config, &identity, faults.clone()).await?;
        }
        let log_failure = log.write_failure();
        let removed_signal = network.removed_signal();
        let kv_path = member_dir.join("kv.redb");
        let store = Arc::new(Store::open(&kv_path).map_err(|e| StartError::Store {
            path: kv_path.clone(),
            detail: e.to_string(),
        })?);
        let lessor = Arc::new(Lessor::new());
        lessor.reload(&store);
        let applier = Applier::new(store, lessor.clone());

        let raft_config = openraft::Config {
            cluster_name: format!("{:x}", identity.cluster_id),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_ms,
            // openraft's leader lease is election_timeout_max: a follower
            // refuses votes for that long after the last heartbeat, so a
            // narrow spread (1.5×) shortens failover; the randomisation that
            // prevents split votes keeps half the minimum.
            election_timeout_max: config.election_timeout_ms * 3 / 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: config.snapshot_count.min(1000),
            install_snapshot_timeout: 10_000,
            max_payload_entries: 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(format!("invalid raft settings: {e}")))?;

        let raft = Raft::new(
            identity.member_id,
            Arc::new(raft_config),
            network.clone(),
            log,
            applier.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let node = Node::assemble(NodeParts {
            id: identity.member_id,
            cluster_id: identity.cluster_id,
            config: config.clone(),
            raft,
            applier,
            lessor,
            transport: Arc::new(network),
            faults,
        });

        if let Some(members) = initial_members {
            if !node
                .raft
                .is_initialized()
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?
            {
                // Every initial member initializes with the same membership;
                // openraft accepts this (the entries are identical). Before
                // peers are served: a peer's vote request handled between
                // the check above and `initialize` would make openraft
                // refuse it and log an ERROR on a normal bootstrap. Peers
                // connecting meanwhile wait in the listen backlog.
                if let Err(e) = node.raft.initialize(members).await {
                    tracing::info!("initialize: {e} (another member initialized first)");
                }
            }
        }

        // Serve peers (the listener is bound already).
        let service = PeerService::new(node.clone(), node.faults.clone());
        let mut shutdown_rx = node.shutdown_tx.subscribe();
        let incoming = tokio_stream_listener(peer_listener);
        tokio::spawn(async move {
            let res = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown_rx.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = res {
                tracing::error!("peer server stopped: {e}");
            }
        });

        // The identity is written once the Raft log holds an entry (at
        // once after `initialize`; for a joining member, once the leader
        // has replicated to it): so a data dir with an identity always has
        // a log, and a missing log is detected as lost state above.
        *node
            .pending_identity
            .lock()
            .expect("pending identity poisoned") = Some((member_dir.clone(), identity));
        node.store_identity_if_logged()?;

        // Stop for good when the log cannot be written or a peer says this
        // member was removed.
        {
            let n = node.clone();
            let mut log_failure = log_failure;
            let mut removed_signal = removed_signal;
            tokio::spawn(async move {
                tokio::select! {
                    r = log_failure.wait_for(|f| f.is_some()) => {
                        if let Ok(f) = r {
                            let what = f.clone().unwrap_or_default();
                            n.halt(Fatal::Storage { name: n.config.name.clone(), id: n.id, what });
                        }
                    }
                    r = removed_signal.wait_for(|f| f.is_some()) => {
                        if let Ok(f) = r {
                            let how = format!("(a peer refused it: {})", f.clone().unwrap_or_default());
                            n.halt_removed(how);
                        }
                    }
                }
            });
        }
        {
            // Corruption found by a read at run time stops the member too.
            let n = Arc::downgrade(&node);
            node.store().on_corruption(Box::new(move |what: String| {
                if let Some(n) = n.upgrade() {
                    n.halt(Fatal::Storage {
                        name: n.config.name.clone(),
                        id: n.id,
                        what,
                    });
                }
            }));
        }

        node.clone().spawn_background();
        Ok(node)
    }

    fn assemble(parts: NodeParts) -> Arc<Node> {
        let NodeParts {
            id,
            cluster_id,
            config,
            raft,
            applier,
            lessor,
            transport,
            faults,
        } = parts;
        let (shutdown_tx, _) = watch::channel(false);
        Arc::new(Node {
            id,
            cluster_id,
            config,
            raft,
            applier,
            lessor,
            transport,
            faults,
            read_batch: Default::default(),
            write_batch: Default::default(),
            transferring: Default::default(),
            membership_lock: Default::default(),
            shutdown_tx,
            fatal: watch::channel(None).0,
            membership_history: Default::default(),
            pending_identity: Default::default(),
        })
    }

    /// A member from parts the caller built — the simulator, whose Raft runs
    /// on simulated disks and network and whose peers are reached through
    /// its own [`PeerTransport`]. No listener, no data dir: the caller serves
    /// peer requests by calling [`PeerHandler::handle`]. Starts the
    /// background duties (lease expiry, learner promotion) like
    /// [`Node::start`].
    pub fn from_parts(parts: NodeParts) -> Arc<Node> {
        let node = Node::assemble(parts);
        node.clone().spawn_background();
        node
    }

    /// Write the identity if it is pending and the Raft log holds an entry.
    fn store_identity_if_logged(&self) -> Result<(), identity::IdentityError> {
        let mut pending = self
            .pending_identity
            .lock()
            .expect("pending identity poisoned");
        if pending.is_some() && self.raft.metrics().borrow().last_log_index.is_some() {
            let (dir, id) = pending.take().expect("checked above");
            identity::store(&dir, &id)?;
        }
        Ok(())
    }

    /// etcd's `isMemberBootstrapped`: a member with an empty data dir asks
    /// its peers (once each, briefly: at a first bootstrap they may not run
    /// yet) whether they know it as a started member, i.e. one that has
    /// published its client URLs. If one does, its state was lost.
    async fn refuse_if_bootstrapped(
        config: &NodeConfig,
        me: &Identity,
        faults: Arc<Faults>,
    ) -> Result<(), StartError> {
        let timeouts = PeerTimeouts {
            connect_timeout_ms: config
                .peer_connect_timeout_ms
                .min(BOOTSTRAP_PROBE_TIMEOUT_MS),
            request_timeout_ms: BOOTSTRAP_PROBE_TIMEOUT_MS,
            raft_rpc_min_timeout_ms: config.raft_rpc_min_timeout_ms,
        };
        let probes = config
            .initial_cluster
            .iter()
            .filter(|(n, _)| *n != config.name)
            .flat_map(|(_, urls)| urls.first().cloned())
            .map(|url| {
                let faults = faults.clone();
                let req = PeerRequest::Join {
                    peer_urls: config.advertise_peer_urls.clone(),
                };
                async move {
                    let client = PeerClient::new(0, 0, &url, timeouts, faults).ok()?;
                    let answer = client
                        .call::<Result<JoinAnswer, String>>(&req, None)
                        .await
                        .ok()?
                        .ok()?;
                    Some((url, answer))
                }
            });
        for (url, answer) in futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
        {
            let started = answer
                .members
                .iter()
                .any(|(id, m)| *id == me.member_id && !m.client_urls.is_empty());
            if started {
                return Err(StartError::AlreadyBootstrapped {
                    name: config.name.clone(),
                    id: me.member_id,
                    cluster: answer.cluster_id,
                    peer: url,
                    data_dir: config.data_dir.clone(),
                });
            }
        }
        Ok(())
    }

    /// Stop serving for good: every later request fails at once with
    /// `f`, Raft stops, and [`Node::halted`] resolves (the binary exits).
    pub fn halt(&self, f: Fatal) {
        let first = self.fatal.send_if_modified(|cur| {
            let first = cur.is_none();
            if first {
                *cur = Some(f.clone());
            }
            first
        });
        if !first {
            return;
        }
        tracing::error!("{f}");
        if let Fatal::Removed { .. } = f {
            // A restart must not bring the removed member back silently.
            let marker = self
                .config
                .data_dir
                .join("member")
                .join(REMOVED_MARKER_FILE);
            if let Err(e) = std::fs::write(&marker, f.to_string()) {
                tracing::error!("cannot write {}: {e}", marker.display());
            }
        }
        let _ = self.shutdown_tx.send(true);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            let _ = raft.shutdown().await;
        });
    }

    fn halt_removed(&self, how: String) {
        self.halt(Fatal::Removed {
            name: self.config.name.clone(),
            id: self.id,
            cluster: self.cluster_id,
            how,
        });
    }

    /// Why this member stopped for good, if it did.
    pub fn fatal(&self) -> Option<Fatal> {
        self.fatal.borrow().clone()
    }

    /// Resolves once this member stopped for good (removed, storage fault,
    /// Raft core stopped); the caller should exit non-zero.
    pub async fn halted(&self) -> Fatal {
        let mut rx = self.fatal.subscribe();
        let f = rx
            .wait_for(|f| f.is_some())
            .await
            .expect("the sender lives as long as the node")
            .clone();
        f.expect("waited for Some")
    }

    /// `Err` once this member stopped for good.
    pub fn check_serving(&self) -> Result<(), NodeError> {
        match &*self.fatal.borrow() {
            Some(f) => Err(NodeError::Halted(f.clone())),
            None => Ok(()),
        }
    }

    /// Track applied membership: which members were removed (peers answer
    /// them "removed"), and whether this member itself was.
    fn observe_membership(&self, m: &openraft::RaftMetrics<NodeId, Member>) {
        let cfg = &m.membership_config;
        // Only an applied (so committed) configuration counts: an
        // uncommitted one may still be truncated away.
        if cfg.log_id().is_none() || m.last_applied < *cfg.log_id() {
            return;
        }
        let current: BTreeSet<NodeId> = cfg.membership().nodes().map(|(id, _)| *id).collect();
        let self_removed = {
            let mut h = self
                .membership_history
                .lock()
                .expect("membership history poisoned");
            let was_member = h.ever.contains(&self.id);
            h.ever.extend(current.iter().copied());
            let removed: BTreeSet<NodeId> = h.ever.difference(&current).copied().collect();
            h.removed = removed;
            was_member && !current.contains(&self.id)
        };
        if self_removed {
            self.halt_removed(format!(
                "(it applied the membership change at log index {} that removes it)",
                cfg.log_id().map(|l| l.index).unwrap_or(0)
            ));
        }
    }

    async fn join(config: &NodeConfig, faults: Arc<Faults>) -> Result<Identity, StartError> {
        let peers: Vec<String> = config
            .initial_cluster
            .iter()
            .filter(|(n, _)| *n != config.name)
            .flat_map(|(_, urls)| urls.clone())
            .collect();
        let deadline = Instant::now() + Duration::from_millis(config.request_timeout_ms.max(5_000));
        let mut last_err = String::from("no peers listed in --initial-cluster");
        while Instant::now() < deadline {
            for url in &peers {
                let timeouts = PeerTimeouts {
                    connect_timeout_ms: config.peer_connect_timeout_ms,
                    request_timeout_ms: 2_000,
                    raft_rpc_min_timeout_ms: config.raft_rpc_min_timeout_ms,
                };
                let client = match PeerClient::new(0, 0, url, timeouts, faults.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        last_err = e.to_string();
                        continue;
                    }
                };
                let req = PeerRequest::Join {
                    peer_urls: config.advertise_peer_urls.clone(),
                };
                match client.call::<Result<JoinAnswer, String>>(&req, None).await {
                    Ok(Ok(answer)) => {
                        return Ok(Identity {
                            cluster_id: answer.cluster_id,
                            member_id: answer.member_id,
                            name: config.name.clone(),
                            cluster_token: config.initial_cluster_token.clone(),
                        })
                    }
                    Ok(Err(e)) => last_err = e,
                    Err(e) => last_err = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(StartError::Join {
            name: config.name.clone(),
            peers,
            detail: last_err,
        })
    }

    fn spawn_background(self: Arc<Self>) {
        // Leadership watcher: restart lease clocks on promotion; publish our
        // client URLs into the membership once a leader exists.
        let node = self.clone();
        tokio::spawn(async move {
            let mut metrics = node.raft.metrics();
            let mut leading_term: Option<u64> = None;
            let mut published = false;
            let mut last_publish: Option<Instant> = None;
            let mut shutdown = node.shutdown_tx.subscribe();
            loop {
                {
                    let m = metrics.borrow_and_update().clone();
                    if let Err(f) = &m.running_state {
                        node.halt(Fatal::Storage {
                            name: node.config.name.clone(),
                            id: node.id,
                            what: format!("the Raft core stopped: {f}"),
                        });
                        return;
                    }
                    node.observe_membership(&m);
                    if let Err(e) = node.store_identity_if_logged() {
                        node.halt(Fatal::Storage {
                            name: node.config.name.clone(),
                            id: node.id,
                            what: e.to_string(),
                        });
                        return;
                    }
                }
                let (state, term, leader, my_urls) = {
                    let m = metrics.borrow_and_update();
                    let me = m.membership_config.membership().get_node(&node.id).cloned();
                    let mine = me.map(|m| {
                        if m.name == node.config.name {
                            m.client_urls
                        } else {
                            Vec::new()
                        }
                    });
                    (m.state, m.current_term, m.current_leader, mine)
                };
                if state == ServerState::Leader && leading_term != Some(term) {
                    node.lessor.promote();
                    leading_term = Some(term);
                } else if state != ServerState::Leader {
                    leading_term = None;
                }
                if !published
                    && leader.is_some()
                    && last_publish
                        .map_or(true, |t: Instant| t.elapsed() >= Duration::from_millis(500))
                {
                    last_publish = Some(Instant::now());
                    if my_urls.as_ref() == Some(&node.config.advertise_client_urls) {
                        published = true;
                    } else if my_urls.is_some() {
                        let req = LeaderRequest::PublishClientUrls {
                            id: node.id,
                            name: node.config.name.clone(),
                            client_urls: node.config.advertise_client_urls.clone(),
                        };
                        published = node.leader_call(req).await.is_ok();
                    }
                }
                tokio::select! {
                    r = metrics.changed() => if r.is_err() {
                        // The Raft core ended without being asked to.
                        if !*node.shutdown_tx.borrow() {
                            node.halt(Fatal::Storage {
                                name: node.config.name.clone(),
                                id: node.id,
                                what: "the Raft core stopped unexpectedly".into(),
                            });
                        }
                        return
                    },
                    _ = shutdown.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)), if !published => {}
                }
            }
        });

        // Leader duties: lease expiry (only the leader revokes, through
        // consensus) and promotion of caught-up learners added as voters.
        let node = self;
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(node.config.lease_check_interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut shutdown = node.shutdown_tx.subscribe();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                if node.raft.metrics().borrow().state != ServerState::Leader {
                    continue;
                }
                node.promote_caught_up_learners().await;
                for id in node.lessor.expired(node.config.max_lease_revokes_per_pass) {
                    if let Err(e) = node.raft.client_write(Command::LeaseRevoke { id }).await {
                        tracing::debug!("revoking expired lease {id:x}: {e}");
                        break;
                    }
                }
            }
        });
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }
    pub fn name(&self) -> &str {
        &self.config.name
    }
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }
    pub fn store(&self) -> &Arc<Store> {
        self.applier.store()
    }
    pub fn applier(&self) -> &Applier {
        &self.applier
    }
    /// Wakes on every change of this member's view of the cluster (leader,
    /// term, membership, applied index): what callers that wait for a
    /// membership change to reach this member need, without reaching into
    /// Raft.
    pub fn changes(&self) -> Changes {
        Changes(self.raft.metrics())
    }
    /// Fault injection state (inert unless enabled at start).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The lease clocks of this member (authoritative only on the leader).
    pub fn lessor(&self) -> &Lessor {
        &self.lessor
    }

    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id);
        let halted = self.fatal.borrow().is_some() || m.running_state.is_err();
        NodeStatus {
            // A stopped Raft core's metrics are frozen: never report a
            // leader (least of all itself) from them.
            leader: if halted { None } else { m.current_leader },
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            is_learner,
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
        }
    }

    /// Current raft term (for response headers).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Members: (id, member, is_learner).
    pub fn members(&self) -> Vec<(NodeId, Member, bool)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone(), !voters.contains(id)))
            .collect()
    }

    /// Replicate `cmd` and wait until it is applied here; returns the outcome.
    ///
    /// Concurrent proposals on this member are batched (see
    /// [`Node::write_batched`]): one leader round trip and one Raft entry
    /// carry them all, each still applied at its own revision.
    pub async fn propose(self: &Arc<Self>, cmd: Command) -> Result<ApplyOutcome, NodeError> {
        self.check_serving()?;
        let outcome = self.write_batched(cmd).await?;
        // The write is applied on the leader; make it visible here too
        // before answering, so a client reading from this member next sees
        // its own write.
        self.wait_applied_revision(outcome.revision).await?;
        Ok(outcome)
    }

    /// How the client writes proposed on this member were batched so far.
    pub fn write_batch_stats(&self) -> WriteBatchStats {
        self.write_batch.lock().expect("write batch poisoned").stats
    }

    /// Send one entry (a command or a batch) to the leader.
    async fn propose_entry(&self, entry: Command) -> Result<ApplyOutcome, NodeError> {
        match self.leader_call(LeaderRequest::Write(entry)).await? {
            LeaderResponse::Written(outcome) => Ok(outcome),
            other => Err(NodeError::Internal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    async fn wait_applied_revision(&self, revision: i64) -> Result<(), NodeError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let mut metrics = self.raft.metrics();
        while self.store().current_revision() < revision {
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Err(_) => return Err(NodeError::Timeout),
                // The Raft core stopped: its metrics never change again, and
                // `changed()` would return at once forever (a busy loop).
                Ok(Err(_)) => return Err(NodeError::Stopped),
            }
        }
        Ok(())
    }

    /// Linearizable read barrier (ReadIndex): when this returns, every write
    /// acknowledged before the call is applied on this member.
    ///
    /// Concurrent callers share leader round trips: a caller joins the next
    /// round to *start* (never one already in flight, whose read index may
    /// predate the call), so at most one round per member is in flight and
    /// a burst of N reads costs two rounds, not N.
    pub async fn read_barrier(self: &Arc<Self>) -> Result<(), NodeError> {
        self.check_serving()?;
        if PlantedBug::SkipReadIndex.is_active(self.config.planted_bug) {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start_round = {
            let mut b = self.read_batch.lock().expect("read batch poisoned");
            b.waiting.push(tx);
            !std::mem::replace(&mut b.in_flight, true)
        };
        if start_round {
            let node = self.clone();
            tokio::spawn(async move { node.run_read_rounds().await });
        }
        let index = rx.await.map_err(|_| NodeError::Stopped)??;
        let Some(index) = index else { return Ok(()) };
        tracing::debug!("read barrier: waiting to apply index {index}");
        self.raft
            .wait(Some(Duration::from_millis(self.config.request_timeout_ms)))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => NodeError::Timeout,
                openraft::metrics::WaitError::ShuttingDown => NodeError::Stopped,
            })
    }

    /// Serve ReadIndex rounds until no reader is waiting.
    async fn run_read_rounds(&self) {
        loop {
            let waiting = {
                let mut b = self.read_batch.lock().expect("read batch poisoned");
                if b.waiting.is_empty() {
                    b.in_flight = false;
                    return;
                }
                std::mem::take(&mut b.waiting)
            };
            let started = Instant::now();
            let result = match self.leader_call(LeaderRequest::ReadIndex).await {
                Ok(LeaderResponse::ReadIndex(log_id)) => Ok(log_id.map(|l| l.index)),
                Ok(other) => Err(NodeError::Internal(format!(
                    "unexpected leader answer {other:?}"
                ))),
                Err(e) => Err(e),
            };
            tracing::debug!(
                "read index round for {} readers: {result:?} in {} ms",
                waiting.len(),
                started.elapsed().as_millis()
            );
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }

    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, NodeError> {
        match self
            .leader_call(LeaderRequest::LeaseKeepAlive { id })
            .await?
        {
            LeaderResponse::LeaseTtl(t) => Ok(t),
            other => Err(NodeError::Internal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>, NodeError> {
        match self
            .leader_call(LeaderRequest::LeaseTimeToLive { id })
            .await?
        {
            LeaderResponse::LeaseRemaining(t) => Ok(t),
            other => Err(NodeError::Internal(format!(
                "unexpected leader answer {other:?}"
            ))),
        }
    }

    pub async fn member_add(
        &self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<NodeId, NodeError> {
        let id = crate::types::random_member_id();
        let member = Member {
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            auto_promote: !learner,
        };
        self.leader_call(LeaderRequest::AddMember {
            id,
            member,
            learner,
        })
        .await?;
        Ok(id)
    }
    pub async fn member_remove(&self, id: NodeId) -> Result<(), NodeError> {
        self.leader_call(LeaderRequest::RemoveMember { id })
            .await
            .map(|_| ())
    }
    pub async fn member_promote(&self, id: NodeId) -> Result<(), NodeError> {
        self.leader_call(LeaderRequest::PromoteMember { id })
            .await
            .map(|_| ())
    }
    /// Move leadership to member `target` (etcd MoveLeader).
    pub async fn move_leader(&self, target: NodeId) -> Result<(), NodeError> {
        self.leader_call(LeaderRequest::MoveLeader { target })
            .await
            .map(|_| ())
    }
    pub async fn member_update(&self, id: NodeId, peer_urls: Vec<String>) -> Result<(), NodeError> {
        self.leader_call(LeaderRequest::UpdateMember { id, peer_urls })
            .await
            .map(|_| ())
    }

    /// Run `req` on the leader: here if we lead, else over the peer
    /// transport. Retries only where the request certainly did not take
    /// effect (the receiver was not the leader, or the connection was never
    /// made), until `request_timeout_ms`.
    async fn leader_call(&self, req: LeaderRequest) -> Result<LeaderResponse, NodeError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let mut metrics = self.raft.metrics();
        let mut hint: Option<(NodeId, Member)> = None;
        let mut halted = self.fatal.subscribe();
        loop {
            self.check_serving()?;
            let leader = {
                let m = metrics.borrow_and_update();
                match m.current_leader {
                    Some(l) if l == self.id => Some((l, None)),
                    Some(l) => m
                        .membership_config
                        .membership()
                        .get_node(&l)
                        .cloned()
                        .map(|n| (l, Some(n))),
                    None => hint.take().map(|(l, n)| (l, Some(n))),
                }
            };
            let result = match &leader {
                None => None,
                Some((_, None)) => Some(self.serve_leader(req.clone()).await),
                Some((l, Some(member))) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let call = PeerRequest::Leader(req.clone());
                    match peer_call::<Result<LeaderResponse, LeaderError>>(
                        &*self.transport,
                        *l,
                        member,
                        &call,
                        Some(remaining),
                    )
                    .await
                    {
                        Ok(r) => Some(r),
                        Err(PeerCallError::NotSent { .. }) => None,
                        Err(PeerCallError::Unreachable { detail, .. }) => {
                            tracing::warn!(
                                "leader {l:x} unreachable for {}: {detail}",
                                req_kind(&req)
                            );
                            // A write that may have reached the leader must not be
                            // sent twice; report it as indeterminate.
                            if matches!(req, LeaderRequest::Write(_)) && !detail.contains("onnect")
                            {
                                return Err(NodeError::LeaderChanged);
                            }
                            None
                        }
                        Err(PeerCallError::Decode { detail, .. }) => {
                            return Err(NodeError::Internal(detail))
                        }
                        Err(PeerCallError::Removed { detail, .. }) => {
                            self.halt_removed(format!("(a peer refused it: {detail})"));
                            self.check_serving()?;
                            return Err(NodeError::Stopped);
                        }
                    }
                }
            };
            match result {
                Some(Ok(resp)) => return Ok(resp),
                Some(Err(LeaderError::NotLeader { leader })) => hint = leader,
                Some(Err(LeaderError::MemberNotFound(_))) => return Err(NodeError::MemberNotFound),
                Some(Err(LeaderError::MemberNotLearner(_))) => {
                    return Err(NodeError::MemberNotLearner)
                }
                Some(Err(LeaderError::LearnerNotReady)) => return Err(NodeError::LearnerNotReady),
                Some(Err(LeaderError::PeerUrlExists(_))) => return Err(NodeError::PeerUrlExists),
                Some(Err(LeaderError::Stopped(_))) => return Err(NodeError::Stopped),
                Some(Err(LeaderError::Rejected(e))) => return Err(NodeError::Internal(e)),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(if leader.is_none() {
                    NodeError::NoLeader
                } else {
                    NodeError::Timeout
                });
            }
            if hint.is_none() {
                // Wait for a leader change (or a short back-off), bounded by the deadline.
                let wait = deadline.min(Instant::now() + Duration::from_millis(20));
                tokio::select! {
                    r = tokio::time::timeout_at(wait, metrics.changed()) => {
                        if let Ok(Err(_)) = r {
                            self.check_serving()?;
                            return Err(NodeError::Stopped);
                        }
                    }
                    _ = halted.wait_for(|f| f.is_some()) => {}
                }
            }
        }
    }

    fn not_leader(&self) -> LeaderError {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.filter(|l| *l != self.id).and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .cloned()
                .map(|n| (l, n))
        });
        LeaderError::NotLeader { leader }
    }

    fn write_err(&self, e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> LeaderError {
        if let Some(leader) = is_not_leader::<()>(&e) {
            return LeaderError::NotLeader { leader };
        }
        match e {
            RaftError::Fatal(f) => LeaderError::Stopped(f.to_string()),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                LeaderError::Rejected(c.to_string())
            }
            other => LeaderError::Rejected(other.to_string()),
        }
    }

    /// Propose `cmd`, batched with the writes proposed concurrently on this
    /// member.
    ///
    /// State machine: a write joins the queue; if fewer than
    /// `max_write_batches_in_flight` proposer tasks run, one more starts.
    /// A proposer takes everything queued (up to the batch limits) as one
    /// Raft entry (a lone command stays a plain entry), waits for it to be
    /// applied, hands each writer its own outcome, and repeats until the
    /// queue is empty, then ends. So a lone write is proposed at once, and
    /// under load each entry carries every write that arrived while the
    /// previous ones were in flight.
    async fn write_batched(self: &Arc<Self>, cmd: Command) -> Result<ApplyOutcome, NodeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut b = self.write_batch.lock().expect("write batch poisoned");
            b.waiting.push_back((cmd, tx));
            let start = b.proposers < self.config.max_write_batches_in_flight.max(1);
            if start {
                b.proposers += 1;
            }
            start
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.propose_write_batches().await });
        }
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// One proposer task of [`Node::write_batched`].
    async fn propose_write_batches(self: Arc<Self>) {
        loop {
            let batch: Vec<_> = {
                let mut b = self.write_batch.lock().expect("write batch poisoned");
                let mut bytes = 0;
                let mut n = 0;
                for (cmd, _) in &b.waiting {
                    if n == self.config.max_write_batch_commands.max(1)
                        || (n > 0 && bytes + cmd.approx_len() > self.config.max_write_batch_bytes)
                    {
                        break;
                    }
                    bytes += cmd.approx_len();
                    n += 1;
                }
                if n == 0 {
                    b.proposers -= 1;
                    return;
                }
                b.stats.entries += 1;
                b.stats.commands += n as u64;
                b.stats.largest = b.stats.largest.max(n as u64);
                b.waiting.drain(..n).collect()
            };
            let (cmds, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let single = cmds.len() == 1;
            let entry = if single {
                cmds.into_iter().next().expect("one command")
            } else {
                Command::Batch(cmds)
            };
            match self.propose_entry(entry).await {
                Ok(outcome) if single => {
                    let _ = replies
                        .into_iter()
                        .next()
                        .expect("one writer")
                        .send(Ok(outcome));
                }
                Ok(outcome) => {
                    assert_eq!(
                        outcome.batch.len(),
                        replies.len(),
                        "an outcome per batched write"
                    );
                    for (reply, outcome) in replies.into_iter().zip(outcome.batch) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Serve a leader-bound request on this member.
    async fn serve_leader(&self, req: LeaderRequest) -> Result<LeaderResponse, LeaderError> {
        let is_leader = self.raft.metrics().borrow().state == ServerState::Leader;
        if !is_leader {
            return Err(self.not_leader());
        }
        // Membership changes are decided from the current membership, so
        // they run one at a time (with learner promotion too): a decision is
        // never made on a configuration another change is replacing.
        let _membership_guard = match req {
            LeaderRequest::AddMember { .. }
            | LeaderRequest::RemoveMember { .. }
            | LeaderRequest::PromoteMember { .. }
            | LeaderRequest::UpdateMember { .. }
            | LeaderRequest::PublishClientUrls { .. } => Some(self.membership_lock.lock().await),
            _ => None,
        };
        if self.transferring() && matches!(req, LeaderRequest::Write(_) | LeaderRequest::ReadIndex)
        {
            // Handing leadership over: the caller retries at the new leader.
            return Err(LeaderError::NotLeader { leader: None });
        }
        match req {
            LeaderRequest::Write(cmd) => match self.raft.client_write(cmd).await {
                Ok(r) => Ok(LeaderResponse::Written(r.data)),
                Err(e) => Err(self.write_err(e)),
            },
            LeaderRequest::ReadIndex => match self.raft.get_read_log_id().await {
                Ok((read, _applied)) => Ok(LeaderResponse::ReadIndex(read)),
                Err(RaftError::APIError(e)) => {
                    tracing::debug!("read index refused: {e}");
                    Err(self.not_leader())
                }
                Err(RaftError::Fatal(f)) => Err(LeaderError::Stopped(f.to_string())),
            },
            LeaderRequest::LeaseKeepAlive { id } => {
                Ok(LeaderResponse::LeaseTtl(self.lessor.keep_alive(id)))
            }
            LeaderRequest::LeaseTimeToLive { id } => {
                Ok(LeaderResponse::LeaseRemaining(self.lessor.remaining(id)))
            }
            LeaderRequest::AddMember {
                id,
                member,
                learner,
            } => {
                let existing = self.members();
                if let Some((other, _, _)) = existing
                    .iter()
                    .find(|(_, m, _)| m.peer_urls.iter().any(|u| member.peer_urls.contains(u)))
                {
                    return Err(LeaderError::PeerUrlExists(*other));
                }
                // A voter joins as a learner first (`auto_promote`), see
                // `promote_caught_up_learners`; `learner` is implied by the member.
                debug_assert_eq!(member.auto_promote, !learner);
                self.change_membership(
                    ChangeMembers::AddNodes(BTreeMap::from([(id, member)])),
                    false,
                )
                .await
                .map_err(|e| self.write_err(e))?;
                Ok(LeaderResponse::Done)
            }
            LeaderRequest::RemoveMember { id } => {
                let Some((_, _, learner)) = self.members().into_iter().find(|(m, _, _)| *m == id)
                else {
                    return Err(LeaderError::MemberNotFound(id));
                };
                let change = if learner {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                };
                self.change_membership(change, false)
                    .await
                    .map_err(|e| self.write_err(e))?;
                Ok(LeaderResponse::Done)
            }
            LeaderRequest::PromoteMember { id } => {
                let Some((_, _, learner)) = self.members().into_iter().find(|(m, _, _)| *m == id)
                else {
                    return Err(LeaderError::MemberNotFound(id));
                };
                if !learner {
                    return Err(LeaderError::MemberNotLearner(id));
                }
                if !self.caught_up(id) {
                    return Err(LeaderError::LearnerNotReady);
                }
                self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| self.write_err(e))?;
                Ok(LeaderResponse::Done)
            }
            LeaderRequest::UpdateMember { id, peer_urls } => {
                let Some((_, mut member, _)) =
                    self.members().into_iter().find(|(m, _, _)| *m == id)
                else {
                    return Err(LeaderError::MemberNotFound(id));
                };
                member.peer_urls = peer_urls;
                self.change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                    false,
                )
                .await
                .map_err(|e| self.write_err(e))?;
                Ok(LeaderResponse::Done)
            }
            LeaderRequest::PublishClientUrls {
                id,
                name,
                client_urls,
            } => {
                let Some((_, mut member, _)) =
                    self.members().into_iter().find(|(m, _, _)| *m == id)
                else {
                    return Err(LeaderError::MemberNotFound(id));
                };
                if member.client_urls == client_urls && member.name == name {
                    return Ok(LeaderResponse::Done);
                }
                member.client_urls = client_urls;
                // A member added by MemberAdd is nameless until it starts.
                member.name = name;
                self.change_membership(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                    false,
                )
                .await
                .map_err(|e| self.write_err(e))?;
                Ok(LeaderResponse::Done)
            }
            LeaderRequest::MoveLeader { target } => self.transfer_leadership(target).await,
        }
    }

    /// Hand leadership to `target` (etcd's MoveLeader). openraft 0.9 has no
    /// transfer primitive, so it is built from its switches:
    ///
    /// 1. refuse new writes and reads here (callers retry at the new leader)
    ///    and stop heartbeats, so every follower's leader lease runs out;
    /// 2. tell the other voters to pause their own election timers, so the
    ///    target wins the race;
    /// 3. tell the target to campaign once the lease has expired;
    /// 4. wait (bounded by `request_timeout_ms`) until the target leads, then
    ///    restore heartbeats. If it did not work, this member simply goes on
    ///    leading.
    async fn transfer_leadership(&self, target: NodeId) -> Result<LeaderResponse, LeaderError> {
        if target == self.id {
            return Ok(LeaderResponse::Done);
        }
        let members = self.members();
        let Some((_, target_member, learner)) =
            members.iter().find(|(id, _, _)| *id == target).cloned()
        else {
            return Err(LeaderError::MemberNotFound(target));
        };
        if learner {
            return Err(LeaderError::Rejected(
                "cannot transfer leadership to a learner".into(),
            ));
        }
        {
            let m = self.raft.metrics().borrow().clone();
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).cloned().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            if last.saturating_sub(matched) > self.config.max_learner_lag_entries {
                return Err(LeaderError::Rejected(format!("member {target:x} is {} entries behind; retry once it has caught up", last - matched)));
            }
        }
        let lease_ms = self.config.election_timeout_ms * 3 / 2;
        let pause_ms = lease_ms * 4 + 1_000;
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        *self.transferring.lock().expect("transfer flag poisoned") = Some(deadline);
        self.raft.runtime_config().heartbeat(false);
        for (id, member, learner) in &members {
            if *id == self.id || *id == target || *learner {
                continue;
            }
            let pause = PeerRequest::PauseElections { ms: pause_ms };
            let _ = peer_call::<()>(
                &*self.transport,
                *id,
                member,
                &pause,
                Some(Duration::from_millis(500)),
            )
            .await;
        }
        let mut result = Err(LeaderError::Rejected(format!(
            "leadership transfer to {target:x} timed out"
        )));
        let elect = PeerRequest::ElectAfter { ms: lease_ms + 50 };
        if peer_call::<()>(
            &*self.transport,
            target,
            &target_member,
            &elect,
            Some(Duration::from_millis(500)),
        )
        .await
        .is_ok()
        {
            let mut metrics = self.raft.metrics();
            loop {
                if metrics.borrow_and_update().current_leader == Some(target) {
                    result = Ok(LeaderResponse::Done);
                    break;
                }
                if !matches!(
                    tokio::time::timeout_at(deadline, metrics.changed()).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
        }
        self.raft.runtime_config().heartbeat(true);
        *self.transferring.lock().expect("transfer flag poisoned") = None;
        result
    }

    fn transferring(&self) -> bool {
        self.transferring
            .lock()
            .expect("transfer flag poisoned")
            .is_some_and(|d| Instant::now() < d)
    }

    /// `change_membership`, waiting out another change still in progress
    /// (only one may be uncommitted at a time), until `request_timeout_ms`.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, Member>,
        retain: bool,
    ) -> Result<
        openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    > {
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let mut metrics = self.raft.metrics();
        // Every change waits until the last one has been applied (so it is
        // committed): openraft refuses a change while one is uncommitted and
        // logs each refusal at ERROR ("the cluster is already undergoing a
        // configuration change"). Before this wait also preceded the first
        // attempt, every normal bootstrap logged one: members publish their
        // client URLs as soon as a leader is elected, before the leader has
        // committed the configuration it inherited.
        let settled = |m: &openraft::RaftMetrics<NodeId, Member>| {
            let pending = m.membership_config.log_id().map(|l| l.index);
            m.last_applied.map(|l| l.index) >= pending || m.state != openraft::ServerState::Leader
        };
        let _ = tokio::time::timeout_at(deadline, metrics.wait_for(settled)).await;
        loop {
            match self.raft.change_membership(change.clone(), retain).await {
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    // Refused all the same (the metrics lag the Raft core):
                    // retry once the change in progress has been applied, not
                    // on every metrics tick, so the ERROR lines stay rare.
                    let _ = tokio::time::timeout_at(deadline, metrics.wait_for(settled)).await;
                    // And at least one metrics change between attempts, so a
                    // refusal that outlives the condition above cannot spin.
                    let _ = tokio::time::timeout_at(
                        deadline.min(Instant::now() + Duration::from_millis(50)),
                        metrics.changed(),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }

    /// Whether learner `id` lags the leader by at most `max_learner_lag_entries`.
    fn caught_up(&self, id: NodeId) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map(|l| l.index);
        matched.is_some_and(|matched| {
            last.saturating_sub(matched) <= self.config.max_learner_lag_entries
        })
    }

    /// On the leader: promote learners that were added as voters once they
    /// have caught up.
    async fn promote_caught_up_learners(&self) {
        let _membership_guard = self.membership_lock.lock().await;
        let ready: BTreeSet<NodeId> = self
            .members()
            .into_iter()
            .filter(|(id, m, learner)| *learner && m.auto_promote && self.caught_up(*id))
            .map(|(id, _, _)| id)
            .collect();
        if ready.is_empty() {
            return;
        }
        match self
            .change_membership(ChangeMembers::AddVoterIds(ready.clone()), false)
            .await
        {
            Ok(_) => tracing::info!("promoted caught-up members {ready:x?} to voters"),
            Err(e) => tracing::debug!("promoting {ready:x?}: {e}"),
        }
    }

    /// Stop serving: Raft, peer server and background tasks.
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.raft.shutdown().await;
    }
}

#[tonic::async_trait]
impl PeerHandler for Node {
    fn admit(&self, from: NodeId) -> Result<(), String> {
        let h = self
            .membership_history
            .lock()
            .expect("membership history poisoned");
        if h.removed.contains(&from) {
            return Err(format!(
                "member {from:x} was removed from cluster {:x} (member {:x} {:?} applied its removal)",
                self.cluster_id, self.id, self.config.name
            ));
        }
        Ok(())
    }

    async fn handle(&self, req: PeerRequest) -> Vec<u8> {
        match req {
            PeerRequest::AppendEntries(r) => encode(&self.raft.append_entries(r).await),
            PeerRequest::Vote(r) => encode(&self.raft.vote(r).await),
            PeerRequest::InstallSnapshot(r) => encode(&self.raft.install_snapshot(r).await),
            PeerRequest::Leader(r) => encode(&self.serve_leader(r).await),
            PeerRequest::PauseElections { ms } => {
                self.raft.runtime_config().elect(false);
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms.min(MAX_ELECTION_PAUSE_MS))).await;
                    raft.runtime_config().elect(true);
                });
                encode(&())
            }
            PeerRequest::ElectAfter { ms } => {
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms.min(MAX_ELECTION_PAUSE_MS))).await;
                    let _ = raft.trigger().elect().await;
                });
                encode(&())
            }
            PeerRequest::Join { peer_urls } => {
                let found = self
                    .members()
                    .into_iter()
                    .find(|(_, m, _)| m.peer_urls.iter().any(|u| peer_urls.contains(u)));
                let answer: Result<JoinAnswer, String> = match found {
                    Some((id, _, _)) => Ok(JoinAnswer {
                        cluster_id: self.cluster_id,
                        member_id: id,
                        members: self.members().into_iter().map(|(i, m, _)| (i, m)).collect(),
                    }),
                    None => Err(format!(
                        "no member with peer URLs {peer_urls:?} in cluster {:x}",
                        self.cluster_id
                    )),
                };
                encode(&answer)
            }
        }
    }
}

fn req_kind(r: &LeaderRequest) -> &'static str {
    match r {
        LeaderRequest::Write(_) => "write",
        LeaderRequest::ReadIndex => "read index",
        LeaderRequest::LeaseKeepAlive { .. } => "lease keep-alive",
        LeaderRequest::LeaseTimeToLive { .. } => "lease time-to-live",
        LeaderRequest::AddMember { .. } => "member add",
        LeaderRequest::RemoveMember { .. } => "member remove",
        LeaderRequest::PromoteMember { .. } => "member promote",
        LeaderRequest::UpdateMember { .. } => "member update",
        LeaderRequest::PublishClientUrls { .. } => "publish client URLs",
        LeaderRequest::MoveLeader { .. } => "move leader",
    }
}

/// Accepted connections of a listener as a stream for tonic.
pub fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}
