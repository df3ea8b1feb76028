//! # sim — a seeded, in-process cluster simulator for Phalanx
//!
//! Runs a whole 3–5 member cluster inside one process, built from the real
//! consensus pieces (`openraft::Raft<TypeConfig>` over `consensus::LogStore`
//! and `consensus::Applier` on `mvcc::Store`, both redb databases on a
//! simulated disk, [`disk::SimFile`], that loses unsynced writes on a crash),
//! connected by a simulated network with injected faults, under a seeded
//! client workload whose history is checked for linearizability.
//!
//! ## Main types
//! * [`SimConfig`] — one run: seed, member count, simulated duration (ms),
//!   workload size, faults on/off, and a planted bug
//!   ([`consensus::PlantedBug`], the same switch `phalanx node` has).
//! * [`run`] — runs one seed on a fresh current-thread tokio runtime with
//!   paused (auto-advancing) time and returns a [`SimReport`].
//! * [`SimReport`] — the fault schedule, operation counts, the
//!   linearizability [`Verdict`], lost acknowledged writes, and the history
//!   (JSON lines, `docs/history-format.md`). Its `Display` is the one-line
//!   verdict `sim seed=N members=M faults=[...] ops=.. linearizable=PASS lost=0 trace=…`,
//!   where `trace` is a digest of everything the run did.
//! * [`FaultSchedule`] / [`Episode`] — the seeded fault plan: a base message
//!   loss and delay, then non-overlapping episodes (symmetric, one-way and
//!   bridge partitions, crash + restart of one member, power loss of all,
//!   loss bursts, clock jumps of one member).
//! * [`SimNetwork`] — the `RaftNetworkFactory` that hands RPCs straight to the
//!   target member's `Raft` handle through the fault layer.
//! * [`SimError`] — why a run could not be carried out (I/O, a member that
//!   failed to start, an unparsable history). A linearizability violation is
//!   *not* an error: it is a [`Verdict::Fail`] in the report.
//!
//! ## Determinism
//! A seed reproduces a run exactly: same fault schedule, same elections, same
//! messages lost, same history, same `trace` digest. Everything runs on one
//! thread — a current-thread tokio runtime with paused, auto-advancing time,
//! whose `select!` fairness RNG is seeded (`--cfg tokio_unstable`, set in
//! `.cargo/config.toml`); openraft's election timeouts come from
//! `consensus::runtime`'s thread RNG, seeded per run; storage runs inline
//! ([`consensus::IoMode::Inline`]) on the in-memory disk, so no OS thread or
//! file system timing enters. See `docs/simulation.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consensus::network::{
    decode_request, encode, PeerCallError, PeerHandler, PeerRequest, PeerTransport,
};
use consensus::runtime::MemberClock;
use consensus::types::Raft;
use consensus::{
    Applier, Faults, IoMode, Lessor, LogStore, LogStoreOptions, Member, Node, NodeConfig,
    NodeError, NodeId, NodeParts, PlantedBug, TypeConfig, WriteBatchStats,
};
use etcd_client::proto::PbTargetUnion;
use linearizability::{Event, EventType, Function};
use mvcc::{
    consts, ApplyResponse, Command, PbCompare, PbPutRequest, PbRangeRequest, PbTxnOpRequest,
    PbTxnRequest, PbTxnRequestOp, Store,
};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::ServerState;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

pub mod disk;
use disk::SimFile;

/// Leader heartbeat period, in simulated milliseconds (as the real node's default).
pub const HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Minimum election timeout, simulated ms; the maximum is 1.5× (as the real node).
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 150;
/// Floor for a simulated RPC's deadline, simulated ms. A dropped message
/// costs the sender this long (or openraft's own deadline, if longer) before
/// it sees `Unreachable`.
pub const RPC_MIN_TIMEOUT_MS: u64 = 300;
/// How long a client waits for a write or a read barrier, simulated ms.
pub const OP_TIMEOUT_MS: u64 = 2_000;
/// Applied entries between snapshots (small, so restarted members catch up by snapshot).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 300;
/// After the workload, how long the healed cluster has to elect a leader
/// that passes a read barrier, simulated ms.
pub const FINAL_CONVERGE_MS: u64 = 20_000;
/// Wall-clock budget of the linearizability check, per run.
pub const CHECK_WALL_TIMEOUT_MS: u64 = 30_000;
/// Range of a clock jump, simulated ms forward.
pub const CLOCK_JUMP_MIN_MS: u64 = 200;
pub const CLOCK_JUMP_MAX_MS: u64 = 3_000;
/// Cluster id the simulated members report.
pub const SIM_CLUSTER_ID: u64 = 0x5151;
/// Largest supported cluster.
pub const MAX_MEMBERS: usize = 5;

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Voting members, 3..=[`MAX_MEMBERS`].
    pub members: usize,
    /// Simulated length of the workload phase, ms.
    pub duration_ms: u64,
    /// Concurrent sequential clients.
    pub clients: usize,
    /// Keys the clients share (few keys = many conflicts).
    pub keys: usize,
    /// Upper bound of a client's pause between operations, simulated ms.
    pub max_think_ms: u64,
    /// Inject faults at all (base loss/delay and episodes).
    pub faults: bool,
    /// A deliberate bug, to show the checks catch it:
    /// `SkipReadIndex` — each member's `Node::read_barrier` returns at once,
    /// so a read is served from whichever member the client reached (a
    /// lagging follower, a deposed leader): the very switch of
    /// `phalanx node --unsafe-planted-bug skip-read-index`;
    /// `AckBeforeFsync` — the members' `LogStore`s report appends (and votes)
    /// durable without syncing them, as the node's switch of that name.
    pub planted: Option<PlantedBug>,
}

impl SimConfig {
    /// The CI shape: 3–5 members (from the seed), 20 simulated seconds, faults on.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            members: 3 + (seed % 3) as usize,
            duration_ms: 20_000,
            clients: 4,
            keys: 3,
            max_think_ms: 40,
            faults: true,
            planted: None,
        }
    }
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulation config: {0}")]
    Config(String),
    #[error("simulation runtime: {0}")]
    Runtime(std::io::Error),
    #[error("member {id} failed to start: {detail}")]
    Start { id: NodeId, detail: String },
    #[error("recorded history does not parse (simulator bug): {0}")]
    History(#[from] linearizability::HistoryError),
}

/// Errors the simulated network hands to openraft (wrapped in `Unreachable`).
#[derive(Debug, thiserror::Error)]
pub enum SimNetError {
    #[error(
        "message {from}->{to} dropped (loss or partition); sender timed out after {waited_ms} ms"
    )]
    Dropped {
        from: NodeId,
        to: NodeId,
        waited_ms: u64,
    },
    #[error("member {to} is down")]
    Down { to: NodeId },
    #[error("rpc {from}->{to} timed out after {waited_ms} ms")]
    Timeout {
        from: NodeId,
        to: NodeId,
        waited_ms: u64,
    },
}

// ---------------------------------------------------------------- faults

/// Which member a fault hits: fixed by the seed, or whoever leads when the
/// episode starts (resolved at run time, printed in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Node(NodeId),
    Leader,
}

impl fmt::Display for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pick::Node(id) => write!(f, "n{id}"),
            Pick::Leader => write!(f, "leader"),
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `pick` plus the first `size - 1` members of `order` (excluding it) are
    /// cut off from the rest, both ways.
    Partition { pick: Pick, size: usize },
    /// `pick`'s outgoing messages are dropped (`outgoing`), or its incoming ones.
    OneWay { pick: Pick, outgoing: bool },
    /// `pick` is the bridge: the others are split in two halves that cannot
    /// talk to each other, but both talk to the bridge.
    Bridge { pick: Pick },
    /// Power cut of one member: its unsynced writes are lost; restarted
    /// from what was synced when the episode ends.
    Crash { pick: Pick },
    /// Power cut of every member at once; all restart when the episode ends.
    PowerLoss,
    /// Message loss raised to this many percent for the episode.
    LossBurst { percent: u32 },
    /// The member's clock steps forward by `ms`: its election timer and its
    /// view of the leader's lease expire early (openraft reads time through
    /// `consensus::runtime`'s member clock).
    ClockJump { pick: Pick, ms: u64 },
}

/// A fault active from `at_ms` for `len_ms` (simulated, from the start of the workload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub at_ms: u64,
    pub len_ms: u64,
    pub fault: Fault,
}

/// The seeded fault plan of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSchedule {
    /// Probability (percent) that any one message (request or response) is lost.
    pub loss_percent: u32,
    /// Per-message one-way delay, uniform in `[min_delay_ms, max_delay_ms]`
    /// (reordering follows from unequal delays).
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Seeded permutation of the member ids, used to grow partition sides.
    pub order: Vec<NodeId>,
    pub episodes: Vec<Episode>,
}

impl FaultSchedule {
    /// The schedule for `cfg` — a function of `seed`, `members`, `duration_ms` and `faults` only.
    pub fn generate(cfg: &SimConfig) -> FaultSchedule {
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed_fa17_0000_0001);
        let mut order: Vec<NodeId> = (1..=cfg.members as u64).collect();
        order.shuffle(&mut rng);
        if !cfg.faults {
            return FaultSchedule {
                loss_percent: 0,
                min_delay_ms: 0,
                max_delay_ms: 1,
                order,
                episodes: Vec::new(),
            };
        }
        let loss_percent = rng.gen_range(0..=5);
        let min_delay_ms = rng.gen_range(0..=2);
        let max_delay_ms = min_delay_ms + rng.gen_range(1..=30);
        let mut episodes = Vec::new();
        let mut t = rng.gen_range(800..=1_500);
        let n = cfg.members;
        loop {
            let len_ms = rng.gen_range(500..=4_000);
            if t + len_ms + 500 > cfg.duration_ms {
                break;
            }
            let pick = if rng.gen_bool(0.5) {
                Pick::Leader
            } else {
                Pick::Node(rng.gen_range(1..=n as u64))
            };
            let fault = match rng.gen_range(0..7) {
                0 => Fault::Partition {
                    pick,
                    size: rng.gen_range(1..=n / 2),
                },
                1 => Fault::OneWay {
                    pick,
                    outgoing: rng.gen_bool(0.5),
                },
                2 => Fault::Bridge { pick },
                3 => Fault::Crash { pick },
                4 => Fault::LossBurst {
                    percent: rng.gen_range(20..=50),
                },
                5 => Fault::PowerLoss,
                _ => Fault::ClockJump {
                    pick,
                    ms: rng.gen_range(CLOCK_JUMP_MIN_MS..=CLOCK_JUMP_MAX_MS),
                },
            };
            let len_ms = if matches!(fault, Fault::ClockJump { .. }) {
                0
            } else {
                len_ms
            };
            episodes.push(Episode {
                at_ms: t,
                len_ms,
                fault,
            });
            t += len_ms + rng.gen_range(200..=1_500);
        }
        FaultSchedule {
            loss_percent,
            min_delay_ms,
            max_delay_ms,
            order,
            episodes,
        }
    }
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.fault {
            Fault::Partition { pick, size } => write!(f, "partition({pick}+{})", size - 1)?,
            Fault::OneWay {
                pick,
                outgoing: true,
            } => write!(f, "mute({pick}->*)")?,
            Fault::OneWay {
                pick,
                outgoing: false,
            } => write!(f, "deaf(*->{pick})")?,
            Fault::Bridge { pick } => write!(f, "bridge({pick})")?,
            Fault::Crash { pick } => write!(f, "crash({pick})")?,
            Fault::PowerLoss => write!(f, "powerloss(all)")?,
            Fault::LossBurst { percent } => write!(f, "loss({percent}%)")?,
            Fault::ClockJump { pick, ms } => write!(f, "clockjump({pick}+{ms}ms)")?,
        }
        write!(f, "@{}+{}ms", self.at_ms, self.len_ms)
    }
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={}% delay={}..{}ms",
            self.loss_percent, self.min_delay_ms, self.max_delay_ms
        )?;
        for e in &self.episodes {
            write!(f, " {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- network

/// A live member as the network and the clients see it.
#[derive(Clone)]
struct Live {
    /// The member's API layer: leader routing, forwarding, ReadIndex.
    node: Arc<Node>,
    raft: Raft,
    store: Arc<Store>,
}

struct NetFaults {
    /// Directed links that drop every message: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    loss_percent: u32,
    min_delay_ms: u64,
    max_delay_ms: u64,
    rng: StdRng,
}

/// The simulated network shared by all members.
pub struct Net {
    live: Mutex<BTreeMap<NodeId, Live>>,
    faults: Mutex<NetFaults>,
    /// Write batching of every member incarnation stopped so far.
    batches: Mutex<WriteBatchStats>,
}

impl Net {
    /// Stop a member incarnation, keeping its batching figures.
    async fn retire(&self, live: &Live) {
        let b = live.node.write_batch_stats();
        {
            let mut total = self.batches.lock().expect("batches poisoned");
            total.entries += b.entries;
            total.commands += b.commands;
            total.largest = total.largest.max(b.largest);
        }
        live.node.shutdown().await;
    }

    fn new(schedule: &FaultSchedule, seed: u64) -> Arc<Net> {
        Arc::new(Net {
            live: Mutex::new(BTreeMap::new()),
            batches: Mutex::new(WriteBatchStats::default()),
            faults: Mutex::new(NetFaults {
                blocked: BTreeSet::new(),
                loss_percent: schedule.loss_percent,
                min_delay_ms: schedule.min_delay_ms,
                max_delay_ms: schedule.max_delay_ms,
                rng: StdRng::seed_from_u64(seed ^ 0x0e7_0000_0002),
            }),
        })
    }

    /// Fate of one message: `None` = lost, else its delay.
    fn fate(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        let mut f = self.faults.lock().expect("net faults poisoned");
        if f.blocked.contains(&(from, to)) {
            return None;
        }
        let loss = f.loss_percent;
        if loss > 0 && f.rng.gen_range(0..100) < loss {
            return None;
        }
        let (lo, hi) = (f.min_delay_ms, f.max_delay_ms.max(f.min_delay_ms));
        Some(Duration::from_millis(f.rng.gen_range(lo..=hi)))
    }

    fn get(&self, id: NodeId) -> Option<Live> {
        self.live
            .lock()
            .expect("net live poisoned")
            .get(&id)
            .cloned()
    }

    fn all(&self) -> Vec<(NodeId, Live)> {
        self.live
            .lock()
            .expect("net live poisoned")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    fn leaders(&self) -> Vec<(NodeId, Live)> {
        self.all()
            .into_iter()
            .filter(|(_, l)| l.raft.metrics().borrow().state == ServerState::Leader)
            .collect()
    }

    fn block(&self, from: NodeId, to: NodeId) {
        self.faults
            .lock()
            .expect("net faults poisoned")
            .blocked
            .insert((from, to));
    }

    fn heal(&self) {
        self.faults
            .lock()
            .expect("net faults poisoned")
            .blocked
            .clear();
    }

    fn set_loss(&self, percent: u32) {
        self.faults
            .lock()
            .expect("net faults poisoned")
            .loss_percent = percent;
    }
}

/// openraft's network factory for one member of the simulated cluster.
pub struct SimNetwork {
    from: NodeId,
    net: Arc<Net>,
}

/// openraft's view of one peer over the simulated network.
pub struct SimPeer {
    from: NodeId,
    target: NodeId,
    net: Arc<Net>,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> SimPeer {
        SimPeer {
            from: self.from,
            target,
            net: self.net.clone(),
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl SimPeer {
    /// Request: lost or delayed; the call itself bounded by the deadline;
    /// response: lost or delayed. A lost message costs the sender the whole
    /// deadline, like a real timeout, so retries never spin in zero simulated time.
    async fn deliver<T, E, F, Fut>(&self, option: &RPCOption, call: F) -> RpcResult<T, E>
    where
        E: std::error::Error,
        F: FnOnce(Raft) -> Fut,
        Fut: std::future::Future<Output = Result<T, RaftError<NodeId, E>>>,
    {
        let ttl = option
            .hard_ttl()
            .max(Duration::from_millis(RPC_MIN_TIMEOUT_MS));
        let deadline = Instant::now() + ttl;
        let waited_ms = ttl.as_millis() as u64;
        let (from, to) = (self.from, self.target);
        let dropped = || {
            RPCError::Unreachable(Unreachable::new(&SimNetError::Dropped {
                from,
                to,
                waited_ms,
            }))
        };
        match self.net.fate(from, to) {
            None => {
                tokio::time::sleep_until(deadline).await;
                return Err(dropped());
            }
            Some(d) => tokio::time::sleep(d).await,
        }
        let Some(live) = self.net.get(to) else {
            tokio::time::sleep_until(deadline).await;
            return Err(RPCError::Unreachable(Unreachable::new(
                &SimNetError::Down { to },
            )));
        };
        let answer = match tokio::time::timeout_at(deadline, call(live.raft)).await {
            Ok(a) => a,
            Err(_) => {
                let e = SimNetError::Timeout {
                    from,
                    to,
                    waited_ms,
                };
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        match self.net.fate(to, from) {
            None => {
                tokio::time::sleep_until(deadline).await;
                Err(dropped())
            }
            Some(d) => {
                tokio::time::sleep(d).await;
                answer.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.deliver(
            &option,
            |raft| async move { raft.append_entries(rpc).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.deliver(
            &option,
            |raft| async move { raft.install_snapshot(rpc).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.deliver(&option, |raft| async move { raft.vote(rpc).await })
            .await
    }
}

/// The members' own requests (forwarded writes and ReadIndex, leadership
/// transfer) over the same faulty network: encoded and decoded as on the
/// wire, handed to the target's `Node`.
struct SimTransport {
    from: NodeId,
    net: Arc<Net>,
}

impl PeerTransport for SimTransport {
    fn call_raw<'a>(
        &'a self,
        target: NodeId,
        _member: &'a Member,
        req: &'a PeerRequest,
        timeout: Option<Duration>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, PeerCallError>> {
        Box::pin(async move {
            let ttl = timeout
                .unwrap_or(Duration::from_millis(OP_TIMEOUT_MS))
                .max(Duration::from_millis(RPC_MIN_TIMEOUT_MS));
            let deadline = Instant::now() + ttl;
            let from = self.from;
            let lost = |what: &str| PeerCallError::Unreachable {
                target,
                detail: format!("{what} {from}->{target} lost (loss or partition)"),
            };
            let bytes = encode(req);
            match self.net.fate(from, target) {
                None => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(lost("request"));
                }
                Some(d) => tokio::time::sleep(d).await,
            }
            let Some(live) = self.net.get(target) else {
                // Connection refused: certainly not delivered.
                return Err(PeerCallError::NotSent {
                    target,
                    detail: "member is down".into(),
                });
            };
            let req = decode_request(&bytes).expect("a request encoded here decodes");
            let answer = match tokio::time::timeout_at(deadline, live.node.handle(req)).await {
                Ok(a) => a,
                Err(_) => {
                    return Err(PeerCallError::Unreachable {
                        target,
                        detail: format!("timed out after {} ms", ttl.as_millis()),
                    })
                }
            };
            match self.net.fate(target, from) {
                None => {
                    tokio::time::sleep_until(deadline).await;
                    Err(lost("answer"))
                }
                Some(d) => {
                    tokio::time::sleep(d).await;
                    Ok(answer)
                }
            }
        })
    }
}

// ---------------------------------------------------------------- members

fn member_desc(id: NodeId) -> Member {
    Member {
        name: format!("n{id}"),
        peer_urls: vec![format!("sim://n{id}")],
        client_urls: Vec::new(),
        auto_promote: false,
    }
}

/// A member's two files on the simulated disk.
#[derive(Clone, Default)]
struct MemberDisks {
    log: SimFile,
    kv: SimFile,
}

impl MemberDisks {
    /// What a power cut leaves: the synced images, as fresh files.
    fn after_crash(&self) -> MemberDisks {
        MemberDisks {
            log: self.log.after_crash(),
            kv: self.kv.after_crash(),
        }
    }
}

/// Start member `id` on `disks` (formatted if empty), on its own `clock`.
async fn start_member(
    id: NodeId,
    disks: &MemberDisks,
    clock: &MemberClock,
    net: &Arc<Net>,
    planted: Option<PlantedBug>,
) -> Result<Live, SimError> {
    let start_err = |detail: String| SimError::Start { id, detail };
    let options = LogStoreOptions {
        io: IoMode::Inline,
        unsafe_no_fsync: PlantedBug::AckBeforeFsync.is_active(planted),
    };
    let log = LogStore::open_backend(
        disks.log.clone(),
        &format!("sim://n{id}/raft.redb"),
        options,
    )
    .map_err(|e| start_err(e.to_string()))?;
    let kv_label = format!("sim://n{id}/kv.redb");
    let store = Arc::new(
        Store::open_backend(disks.kv.clone(), Path::new(&kv_label))
            .map_err(|e| start_err(e.to_string()))?,
    );
    let lessor = Arc::new(Lessor::new());
    lessor.reload(&store);
    let applier = Applier::new(store.clone(), lessor.clone()).with_io(IoMode::Inline);
    let config = openraft::Config {
        cluster_name: "sim".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MIN_MS * 3 / 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        max_in_snapshot_log_to_keep: SNAPSHOT_EVERY_ENTRIES / 3,
        install_snapshot_timeout: 2_000,
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| start_err(format!("raft config: {e}")))?;
    let network = SimNetwork {
        from: id,
        net: net.clone(),
    };
    // Every task openraft spawns for this member inherits its clock.
    let raft = clock
        .clone()
        .scope(Raft::new(
            id,
            Arc::new(config),
            network,
            log,
            applier.clone(),
        ))
        .await
        .map_err(|e| start_err(e.to_string()))?;
    let mut node_config =
        NodeConfig::with_defaults(&format!("n{id}"), format!("sim://n{id}").into());
    node_config.request_timeout_ms = OP_TIMEOUT_MS;
    node_config.planted_bug = planted;
    let node = Node::from_parts(NodeParts {
        id,
        cluster_id: SIM_CLUSTER_ID,
        config: node_config,
        raft: raft.clone(),
        applier,
        lessor,
        transport: Arc::new(SimTransport {
            from: id,
            net: net.clone(),
        }),
        faults: Arc::new(Faults::new(false)),
    });
    Ok(Live { node, raft, store })
}

struct Cluster {
    net: Arc<Net>,
    planted: Option<PlantedBug>,
    disks: Mutex<BTreeMap<NodeId, MemberDisks>>,
    /// One clock per machine: it keeps its jumps across restarts.
    clocks: BTreeMap<NodeId, MemberClock>,
}

impl Cluster {
    async fn start(&self, id: NodeId) -> Result<(), SimError> {
        let disks = self
            .disks
            .lock()
            .expect("disks poisoned")
            .entry(id)
            .or_default()
            .clone();
        let live = start_member(id, &disks, &self.clocks[&id], &self.net, self.planted).await?;
        self.net
            .live
            .lock()
            .expect("net live poisoned")
            .insert(id, live);
        Ok(())
    }

    /// Power cut: the member vanishes from the network and its disks keep
    /// only what was synced at this instant.
    async fn crash(&self, id: NodeId) -> bool {
        let Some(live) = self.net.live.lock().expect("net live poisoned").remove(&id) else {
            return false;
        };
        {
            let mut disks = self.disks.lock().expect("disks poisoned");
            let d = disks.get_mut(&id).expect("a live member has disks");
            *d = d.after_crash();
        }
        // Stop the dead member's tasks; whatever they still write goes to the
        // old files, which nothing reads again.
        self.net.retire(&live).await;
        true
    }

    fn resolve(&self, pick: Pick, rng: &mut StdRng, members: usize) -> NodeId {
        match pick {
            Pick::Node(id) => id,
            Pick::Leader => match self.net.leaders().first() {
                Some((id, _)) => *id,
                None => rng.gen_range(1..=members as u64),
            },
        }
    }
}

/// Applies the schedule; returns the episodes as applied (with `leader` resolved).
async fn run_faults(
    cluster: Arc<Cluster>,
    schedule: FaultSchedule,
    members: usize,
    seed: u64,
    t0: Instant,
) -> Result<Vec<String>, SimError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7e50_1e00_0003);
    let mut applied = Vec::new();
    let ids: Vec<NodeId> = (1..=members as u64).collect();
    for ep in &schedule.episodes {
        tokio::time::sleep_until(t0 + Duration::from_millis(ep.at_ms)).await;
        let pick = match &ep.fault {
            Fault::Partition { pick, .. }
            | Fault::OneWay { pick, .. }
            | Fault::Bridge { pick }
            | Fault::Crash { pick }
            | Fault::ClockJump { pick, .. } => Some(*pick),
            Fault::LossBurst { .. } | Fault::PowerLoss => None,
        };
        let target = pick.map(|p| cluster.resolve(p, &mut rng, members));
        let t = target.unwrap_or(0);
        let others: Vec<NodeId> = schedule.order.iter().copied().filter(|&o| o != t).collect();
        let mut crashed = Vec::new();
        match &ep.fault {
            Fault::Partition { size, .. } => {
                let side: BTreeSet<NodeId> = std::iter::once(t)
                    .chain(others.iter().copied().take(size - 1))
                    .collect();
                for &a in &ids {
                    for &b in &ids {
                        if side.contains(&a) != side.contains(&b) {
                            cluster.net.block(a, b);
                        }
                    }
                }
            }
            Fault::OneWay { outgoing, .. } => {
                for &o in &others {
                    if *outgoing {
                        cluster.net.block(t, o)
                    } else {
                        cluster.net.block(o, t)
                    }
                }
            }
            Fault::Bridge { .. } => {
                let (a, b) = others.split_at(others.len() / 2);
                for &x in a {
                    for &y in b {
                        cluster.net.block(x, y);
                        cluster.net.block(y, x);
                    }
                }
            }
            Fault::Crash { .. } => {
                if cluster.crash(t).await {
                    crashed.push(t);
                }
            }
            Fault::PowerLoss => {
                // Every disk is cut at the same simulated instant, before any
                // member gets to run again.
                let live: Vec<NodeId> = cluster.net.all().into_iter().map(|(id, _)| id).collect();
                for id in live {
                    if cluster.crash(id).await {
                        crashed.push(id);
                    }
                }
            }
            Fault::LossBurst { percent } => cluster.net.set_loss(*percent),
            Fault::ClockJump { ms, .. } => {
                cluster.clocks[&t].jump_forward(Duration::from_millis(*ms))
            }
        }
        applied.push(match target {
            Some(t) => format!("{ep}=n{t}"),
            None => ep.to_string(),
        });
        tokio::time::sleep_until(t0 + Duration::from_millis(ep.at_ms + ep.len_ms)).await;
        cluster.net.heal();
        cluster.net.set_loss(schedule.loss_percent);
        for id in crashed {
            cluster.start(id).await?;
        }
    }
    Ok(applied)
}

// ---------------------------------------------------------------- workload

/// Shared recorder of the history (JSON lines) and of acknowledged writes.
struct Recorder {
    t0: Instant,
    lines: Mutex<Vec<String>>,
    /// (key, value, revision) of every acknowledged write / successful cas.
    acked: Mutex<Vec<(String, String, i64)>>,
    counts: Mutex<Counts>,
}

/// Completed operations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

impl Recorder {
    fn now_us(&self) -> i64 {
        (Instant::now() - self.t0).as_micros() as i64
    }

    fn event(&self, process: u64, ty: EventType, f: Function, key: &str, value: serde_json::Value) {
        let line = Event::new(process as i64, ty, f, key, value, self.now_us()).to_line();
        self.lines.lock().expect("recorder poisoned").push(line);
        let mut c = self.counts.lock().expect("recorder poisoned");
        match ty {
            EventType::Ok => c.ok += 1,
            EventType::Fail => c.fail += 1,
            EventType::Info => c.info += 1,
            EventType::Invoke => {}
        }
    }
}

enum OpKind {
    Read,
    Write,
    Cas,
}

enum WriteOutcome {
    Applied(ApplyResponse),
    /// Certainly not proposed: no leader could be found to send it to.
    NotSent,
    /// May or may not take effect.
    Unknown,
}

/// A write through the member's API layer (forwarded to the leader if
/// needed), as the etcd KV service does it.
async fn propose(node: &Arc<Node>, cmd: Command) -> WriteOutcome {
    match node.propose(cmd).await {
        Ok(outcome) => match ApplyResponse::decode(&outcome.response) {
            Ok(r) => WriteOutcome::Applied(r),
            Err(_) => WriteOutcome::Unknown,
        },
        Err(NodeError::NoLeader) => WriteOutcome::NotSent,
        Err(_) => WriteOutcome::Unknown,
    }
}

fn read_value(store: &Store, key: &str, revision: i64) -> Option<(String, i64)> {
    let req = PbRangeRequest {
        key: key.as_bytes().to_vec(),
        revision,
        ..Default::default()
    };
    let resp = store.range(&req).ok()?;
    resp.kvs.first().map(|kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision,
        )
    })
}

struct ClientCtx {
    net: Arc<Net>,
    rec: Arc<Recorder>,
    keys: Vec<String>,
    end: Instant,
    max_think_ms: u64,
}

async fn client(ctx: Arc<ClientCtx>, pid: u64, seed: u64) {
    // The workload rng draws only the op, key and think time: a function of the seed.
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (pid + 1));
    let mut route = StdRng::seed_from_u64(seed ^ (pid << 32) ^ 0x4047e);
    let mut seq = 0u64;
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    while Instant::now() < ctx.end {
        let kind = match rng.gen_range(0..100) {
            0..=39 => OpKind::Read,
            40..=79 => OpKind::Write,
            _ => OpKind::Cas,
        };
        let key = ctx.keys[rng.gen_range(0..ctx.keys.len())].clone();
        let think = Duration::from_millis(rng.gen_range(0..=ctx.max_think_ms));
        seq += 1;
        let value = format!("{pid}.{seq}");
        let expect_absent = rng.gen_bool(0.2);
        // Route: half the operations to a member that believes it leads (a
        // client following leader hints), half to any live member (a client
        // with several endpoints), whose Node forwards to the leader.
        let target = loop {
            if Instant::now() >= ctx.end {
                return;
            }
            let to_leader = route.gen_bool(0.5);
            let leaders = if to_leader {
                ctx.net.leaders()
            } else {
                Vec::new()
            };
            let pool = if leaders.is_empty() {
                ctx.net.all()
            } else {
                leaders
            };
            if let Some(t) = pool.choose(&mut route) {
                break t.1.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match kind {
            OpKind::Read => {
                ctx.rec.event(
                    pid,
                    EventType::Invoke,
                    Function::Read,
                    &key,
                    serde_json::Value::Null,
                );
                // The etcd KV service's linearizable read: the member's
                // ReadIndex barrier (skipped by the planted SkipReadIndex),
                // then its own store.
                let ok = target.node.read_barrier().await.is_ok();
                match ok.then(|| {
                    target.store.range(&PbRangeRequest {
                        key: key.as_bytes().to_vec(),
                        ..Default::default()
                    })
                }) {
                    Some(Ok(resp)) => {
                        let v = resp
                            .kvs
                            .first()
                            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                        ctx.rec.event(
                            pid,
                            EventType::Ok,
                            Function::Read,
                            &key,
                            v.clone().map_or(serde_json::Value::Null, Into::into),
                        );
                        seen.insert(key.clone(), v);
                    }
                    _ => ctx.rec.event(
                        pid,
                        EventType::Fail,
                        Function::Read,
                        &key,
                        serde_json::Value::Null,
                    ),
                }
            }
            OpKind::Write => {
                ctx.rec.event(
                    pid,
                    EventType::Invoke,
                    Function::Write,
                    &key,
                    value.clone().into(),
                );
                let put = PbPutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                match propose(&target.node, Command::put(&put)).await {
                    WriteOutcome::Applied(ApplyResponse::Put(r)) => {
                        ctx.rec.event(
                            pid,
                            EventType::Ok,
                            Function::Write,
                            &key,
                            value.clone().into(),
                        );
                        let rev = r.header.map_or(0, |h| h.revision);
                        ctx.rec.acked.lock().expect("recorder poisoned").push((
                            key.clone(),
                            value.clone(),
                            rev,
                        ));
                        seen.insert(key.clone(), Some(value));
                    }
                    WriteOutcome::NotSent => {
                        ctx.rec
                            .event(pid, EventType::Fail, Function::Write, &key, value.into())
                    }
                    _ => ctx
                        .rec
                        .event(pid, EventType::Info, Function::Write, &key, value.into()),
                }
            }
            OpKind::Cas => {
                let expected = if expect_absent {
                    None
                } else {
                    seen.get(&key).cloned().flatten()
                };
                let args = Event::cas_value(expected.as_deref(), &value);
                ctx.rec
                    .event(pid, EventType::Invoke, Function::Cas, &key, args.clone());
                let compare = match &expected {
                    Some(v) => PbCompare {
                        result: consts::CMP_EQUAL,
                        target: consts::TARGET_VALUE,
                        key: key.as_bytes().to_vec(),
                        target_union: Some(PbTargetUnion::Value(v.as_bytes().to_vec())),
                        ..Default::default()
                    },
                    None => PbCompare {
                        result: consts::CMP_EQUAL,
                        target: consts::TARGET_VERSION,
                        key: key.as_bytes().to_vec(),
                        target_union: Some(PbTargetUnion::Version(0)),
                        ..Default::default()
                    },
                };
                let put = PbPutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                let txn = PbTxnRequest {
                    compare: vec![compare],
                    success: vec![PbTxnRequestOp {
                        request: Some(PbTxnOpRequest::RequestPut(put)),
                    }],
                    failure: vec![],
                };
                match propose(&target.node, Command::txn(&txn)).await {
                    WriteOutcome::Applied(ApplyResponse::Txn(r)) if r.succeeded => {
                        ctx.rec.event(pid, EventType::Ok, Function::Cas, &key, args);
                        let rev = r.header.map_or(0, |h| h.revision);
                        ctx.rec.acked.lock().expect("recorder poisoned").push((
                            key.clone(),
                            value.clone(),
                            rev,
                        ));
                        seen.insert(key.clone(), Some(value));
                    }
                    WriteOutcome::Applied(ApplyResponse::Txn(_)) => {
                        ctx.rec
                            .event(pid, EventType::Fail, Function::Cas, &key, args)
                    }
                    // A cas that certainly did not run still cannot be `fail`:
                    // in the history format that asserts the comparison failed.
                    _ => ctx
                        .rec
                        .event(pid, EventType::Info, Function::Cas, &key, args),
                }
            }
        }
        tokio::time::sleep(think).await;
    }
}

// ---------------------------------------------------------------- run

/// The linearizability verdict of one run.
#[derive(Debug, Clone)]
pub enum Verdict {
    Pass,
    /// The violations, rendered.
    Fail(String),
    /// The checker's wall-clock budget ran out.
    Unknown,
}

impl Verdict {
    pub fn is_fail(&self) -> bool {
        matches!(self, Verdict::Fail(_))
    }
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub members: usize,
    pub planted: Option<PlantedBug>,
    pub schedule: FaultSchedule,
    /// Episodes as applied, `leader` resolved to a member (`...=n2`).
    pub applied_faults: Vec<String>,
    pub counts: Counts,
    /// How the members batched client writes into Raft entries.
    pub batches: WriteBatchStats,
    pub verdict: Verdict,
    /// Acknowledged writes whose value is not in the healed leader's store
    /// at the revision they were acknowledged with.
    pub lost: Vec<String>,
    /// Acknowledged writes (ok write / ok cas).
    pub acked_writes: usize,
    /// Whether the healed cluster elected a leader that passed a read barrier
    /// within [`FINAL_CONVERGE_MS`]. If not, the run fails: a cluster that
    /// cannot recover once every fault is healed has lost availability for
    /// good (and `lost` could not be checked).
    pub final_check: bool,
    /// Panics inside the simulated cluster (a member's Raft core or storage
    /// tripping an invariant assertion), in order. Any panic fails the run.
    pub panics: Vec<String>,
    /// Whether this build can replay the run exactly (it needs
    /// `--cfg tokio_unstable` for a seeded `select!`).
    pub reproducible: bool,
    /// Simulated milliseconds the run covered (workload + final phase).
    pub simulated_ms: u64,
    /// The history, JSON lines (`docs/history-format.md`).
    pub history: String,
}

impl SimReport {
    /// Correct: linearizable (or undecided), recovered after the faults were
    /// healed, and nothing acknowledged lost.
    pub fn passed(&self) -> bool {
        !self.verdict.is_fail()
            && self.final_check
            && self.lost.is_empty()
            && self.panics.is_empty()
    }

    /// Digest of everything the run did (applied faults, the whole history
    /// with its timestamps, acknowledged writes, simulated length): two runs
    /// of one seed print the same `trace` exactly when they were the same run.
    pub fn trace(&self) -> u64 {
        // FNV-1a, 64 bit: stable across builds and platforms.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for f in &self.applied_faults {
            feed(f.as_bytes());
            feed(b"\n");
        }
        feed(self.history.as_bytes());
        feed(&(self.acked_writes as u64).to_le_bytes());
        feed(&self.simulated_ms.to_le_bytes());
        for p in &self.panics {
            feed(p.as_bytes());
        }
        h
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match &self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::Unknown => "UNKNOWN",
        };
        write!(
            f,
            "sim seed={} members={}{} faults=[{}] ops={} ok={} fail={} info={} batched={}/{}(max {}) linearizable={} lost={}{} trace={:016x}{}",
            self.seed,
            self.members,
            match self.planted {
                Some(PlantedBug::SkipReadIndex) => " planted=skip-read-index",
                Some(PlantedBug::AckBeforeFsync) => " planted=ack-before-fsync",
                None => "",
            },
            self.applied_faults.join(" "),
            self.counts.ok + self.counts.fail + self.counts.info,
            self.counts.ok,
            self.counts.fail,
            self.counts.info,
            self.batches.commands,
            self.batches.entries,
            self.batches.largest,
            verdict,
            if self.final_check { self.lost.len().to_string() } else { "unchecked(NOT RECOVERED: no leader after heal)".into() },
            if self.panics.is_empty() { String::new() } else { format!(" PANICS={}", self.panics.len()) },
            self.trace(),
            if self.reproducible { "" } else { " (not reproducible: built without --cfg tokio_unstable)" },
        )
    }
}

/// Run one seed. Builds its own current-thread runtime with paused time, so
/// call it from a plain thread (not from inside a tokio runtime).
pub fn run(cfg: &SimConfig) -> Result<SimReport, SimError> {
    if !(3..=MAX_MEMBERS).contains(&cfg.members) {
        return Err(SimError::Config(format!(
            "members must be 3..={MAX_MEMBERS}, got {}",
            cfg.members
        )));
    }
    if cfg.clients == 0 || cfg.keys == 0 {
        return Err(SimError::Config(
            "need at least one client and one key".into(),
        ));
    }
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&cfg.seed.to_le_bytes()));
    let rt = builder.build().map_err(SimError::Runtime)?;
    // openraft's election timeouts: drawn on this thread, from the seed.
    consensus::runtime::seed_thread_rng(cfg.seed ^ 0xe1ec_7100_0000_0004);
    capture_panics_on_this_thread(true);
    let res = rt.block_on(run_cluster(cfg));
    drop(rt);
    let panics = capture_panics_on_this_thread(false);
    res.map(|mut r| {
        r.panics = panics;
        r
    })
}

thread_local! {
    /// Panic messages of this thread while a run is in progress (`None`: not capturing).
    static PANICS: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Start (`true`) or stop capturing panics raised on this thread — the run's
/// only thread, so every member task — into the report instead of stderr;
/// returns what was captured. The process-wide hook is installed once and
/// hands panics on other threads to the previous hook.
fn capture_panics_on_this_thread(on: bool) -> Vec<String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = PANICS.with(|p| match p.borrow_mut().as_mut() {
                Some(v) => {
                    v.push(info.to_string().replace('\n', " "));
                    true
                }
                None => false,
            });
            if !captured {
                previous(info);
            }
        }));
    });
    PANICS
        .with(|p| std::mem::replace(&mut *p.borrow_mut(), on.then(Vec::new)))
        .unwrap_or_default()
}

async fn run_cluster(cfg: &SimConfig) -> Result<SimReport, SimError> {
    let schedule = FaultSchedule::generate(cfg);
    let net = Net::new(&schedule, cfg.seed);
    let ids: Vec<NodeId> = (1..=cfg.members as u64).collect();
    let cluster = Arc::new(Cluster {
        net: net.clone(),
        planted: cfg.planted,
        disks: Mutex::new(BTreeMap::new()),
        clocks: ids.iter().map(|&id| (id, MemberClock::new())).collect(),
    });
    for &id in &ids {
        cluster.start(id).await?;
    }
    let membership: BTreeMap<NodeId, Member> =
        ids.iter().map(|&id| (id, member_desc(id))).collect();
    for (_, live) in net.all() {
        // Identical membership on every member; losing races is fine.
        let _ = live.raft.initialize(membership.clone()).await;
    }

    let t0 = Instant::now();
    let rec = Arc::new(Recorder {
        t0,
        lines: Mutex::new(Vec::new()),
        acked: Mutex::new(Vec::new()),
        counts: Mutex::default(),
    });
    let keys: Vec<String> = (0..cfg.keys).map(|k| format!("k{k}")).collect();
    let ctx = Arc::new(ClientCtx {
        net: net.clone(),
        rec: rec.clone(),
        keys: keys.clone(),
        end: t0 + Duration::from_millis(cfg.duration_ms),
        max_think_ms: cfg.max_think_ms,
    });
    let faults = tokio::spawn(run_faults(
        cluster.clone(),
        schedule.clone(),
        cfg.members,
        cfg.seed,
        t0,
    ));
    let clients: Vec<_> = (0..cfg.clients as u64)
        .map(|pid| tokio::spawn(client(ctx.clone(), pid, cfg.seed)))
        .collect();
    for c in clients {
        let _ = c.await;
    }
    let applied_faults = match faults.await {
        Ok(r) => r?,
        Err(e) => vec![format!("fault task panicked: {e}")],
    };

    // Heal everything (the fault task restarted any crashed member) and find
    // a leader that passes a read barrier.
    net.heal();
    net.set_loss(0);
    let final_deadline = Instant::now() + Duration::from_millis(FINAL_CONVERGE_MS);
    let mut leader: Option<Live> = None;
    while leader.is_none() && Instant::now() < final_deadline {
        for (_, l) in net.leaders() {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(1_000), l.raft.ensure_linearizable())
                    .await
            {
                leader = Some(l);
                break;
            }
        }
        if leader.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut lost = Vec::new();
    let acked = rec.acked.lock().expect("recorder poisoned").clone();
    if let Some(l) = &leader {
        // Final reads, recorded as one more client.
        let final_pid = cfg.clients as u64 + 1_000;
        for key in &keys {
            rec.event(
                final_pid,
                EventType::Invoke,
                Function::Read,
                key,
                serde_json::Value::Null,
            );
            let v = read_value(&l.store, key, 0).map(|(v, _)| v);
            rec.event(
                final_pid,
                EventType::Ok,
                Function::Read,
                key,
                v.map_or(serde_json::Value::Null, Into::into),
            );
        }
        // No compaction ever runs, so every acknowledged write must be
        // readable at the revision it was acknowledged with.
        for (key, value, rev) in &acked {
            match read_value(&l.store, key, *rev) {
                Some((v, mr)) if v == *value && mr == *rev => {}
                other => lost.push(format!("{key}={value}@{rev} (found {other:?})")),
            }
        }
    }
    let simulated_ms = (Instant::now() - t0).as_millis() as u64;
    for (_, l) in net.all() {
        net.retire(&l).await;
    }
    let batches = *net.batches.lock().expect("batches poisoned");
    net.live.lock().expect("net live poisoned").clear();

    let history = rec.lines.lock().expect("recorder poisoned").join("\n");
    let parsed = linearizability::History::parse_str(&history)?;
    let limits = linearizability::Limits {
        timeout: Some(Duration::from_millis(CHECK_WALL_TIMEOUT_MS)),
    };
    let verdict = match linearizability::check(&parsed, &limits) {
        linearizability::Outcome::Linearizable => Verdict::Pass,
        linearizability::Outcome::NotLinearizable(v) => {
            Verdict::Fail(v.iter().map(|v| v.to_string()).collect())
        }
        linearizability::Outcome::Unknown { .. } => Verdict::Unknown,
    };
    let counts = *rec.counts.lock().expect("recorder poisoned");
    Ok(SimReport {
        seed: cfg.seed,
        members: cfg.members,
        planted: cfg.planted,
        schedule,
        applied_faults,
        counts,
        batches,
        verdict,
        lost,
        acked_writes: acked.len(),
        final_check: leader.is_some(),
        panics: Vec::new(),
        reproducible: cfg!(tokio_unstable),
        simulated_ms,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock jump reaches openraft: the jumped follower's election timer
    /// fires at once (it campaigns, raising the term) although the leader's
    /// heartbeats never stopped.
    #[test]
    fn a_clock_jump_makes_that_member_campaign() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let schedule = FaultSchedule::generate(&SimConfig {
                faults: false,
                ..SimConfig::new(1)
            });
            let net = Net::new(&schedule, 1);
            let ids = [1u64, 2, 3];
            let cluster = Cluster {
                net: net.clone(),
                planted: None,
                disks: Mutex::new(BTreeMap::new()),
                clocks: ids.iter().map(|&id| (id, MemberClock::new())).collect(),
            };
            for id in ids {
                cluster.start(id).await.unwrap();
            }
            let membership: BTreeMap<NodeId, Member> =
                ids.iter().map(|&id| (id, member_desc(id))).collect();
            for (_, live) in net.all() {
                let _ = live.raft.initialize(membership.clone()).await;
            }
            let leader = loop {
                if let Some((id, _)) = net.leaders().first() {
                    break *id;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            // Quiet for a while: nobody campaigns while heartbeats flow.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let term = |id: NodeId| net.get(id).unwrap().raft.metrics().borrow().current_term;
            let follower = ids.into_iter().find(|&i| i != leader).unwrap();
            let before = term(follower);
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(
                term(follower),
                before,
                "follower campaigned without a clock jump"
            );
            cluster.clocks[&follower].jump_forward(Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(2 * HEARTBEAT_INTERVAL_MS)).await;
            assert!(
                term(follower) > before,
                "the jumped follower did not campaign (term still {before})"
            );
            for (_, l) in net.all() {
                l.node.shutdown().await;
            }
        });
    }

    #[test]
    fn schedule_is_a_function_of_the_seed() {
        let a = FaultSchedule::generate(&SimConfig::new(7));
        let b = FaultSchedule::generate(&SimConfig::new(7));
        assert_eq!(a, b);
        assert!(!a.episodes.is_empty());
        for w in a.episodes.windows(2) {
            assert!(
                w[0].at_ms + w[0].len_ms < w[1].at_ms,
                "episodes overlap: {a}"
            );
        }
        assert!(a
            .episodes
            .last()
            .is_some_and(|e| e.at_ms + e.len_ms <= 20_000));
    }
}
