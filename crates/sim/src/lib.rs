//! # sim — a seeded, in-process cluster simulator for Phalanx
//!
//! Runs a whole 3–5 member cluster inside one process, built from the real
//! consensus pieces (`openraft::Raft<TypeConfig>` over `consensus::LogStore`,
//! a write-ahead log in a [`disk::SimDir`], and `consensus::Applier` on
//! `mvcc::Store`, a redb database in a [`disk::SimFile`]: a simulated disk
//! that loses unsynced writes on a crash and may tear unsynced appends),
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
//! * [`AuthOutcomes`] — with [`SimConfig::auth`]: logins, refused writes,
//!   stale-revision refusals and auth-rule violations (any fails the run).
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
    /// Run with etcd auth on (`phalanx sim --auth`, docs/simulation.md):
    /// users, roles and `auth enable` through the log before the workload;
    /// clients log in and act as a permitted user, the last one as a user
    /// whose writes must be refused on every member; root changes auth
    /// during the run. See [`AuthOutcomes`].
    pub auth: bool,
    /// With `auth`, a planted bug the auth checks must catch: the denied
    /// user's writes are proposed as plain entries, which no apply-time
    /// check judges — what a member without that check would let through.
    pub planted_auth_bypass: bool,
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
            auth: false,
            planted_auth_bypass: false,
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

mod cluster;
mod network;
mod report;
mod schedule;
mod workload;

#[allow(unused_imports)]
use cluster::*;
pub use network::*;
pub use report::*;
pub use schedule::*;
pub use workload::*;

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
        disk_seed: cfg.seed,
        power_cuts: Default::default(),
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

    let auth_run = if cfg.auth {
        setup_auth(&net, cfg.seed).await?;
        Some(Arc::new(AuthRun::new(cfg.clients, cfg.planted_auth_bypass)))
    } else {
        None
    };
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
        auth: auth_run.clone(),
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
        .chain(
            auth_run
                .clone()
                .map(|run| tokio::spawn(auth_churn(ctx.clone(), run, cfg.seed))),
        )
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
    if let (Some(run), Some(l)) = (&auth_run, &leader) {
        auth_final_checks(&net, l, run).await;
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
        auth: auth_run.map(|r| r.outcomes.lock().expect("auth outcomes poisoned").clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fault-free 3-member simulated cluster (each member on its own
    /// clock) with an elected leader, for the tests below. Runs in a paused
    /// tokio runtime: waiting for the leader costs simulated time only.
    async fn three_members(seed: u64) -> (Arc<Net>, Cluster, [NodeId; 3], NodeId) {
        let schedule = FaultSchedule::generate(&SimConfig {
            faults: false,
            ..SimConfig::new(seed)
        });
        let net = Net::new(&schedule, seed);
        let ids = [1u64, 2, 3];
        let cluster = Cluster {
            net: net.clone(),
            planted: None,
            disks: Mutex::new(BTreeMap::new()),
            clocks: ids.iter().map(|&id| (id, MemberClock::new())).collect(),
            disk_seed: 0,
            power_cuts: Default::default(),
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
        (net, cluster, ids, leader)
    }

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
            let (net, cluster, ids, leader) = three_members(1).await;
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

    /// Leases expire by the leader's member clock, and a jump of that clock
    /// within the simulator's bounds (at most `CLOCK_JUMP_MAX_MS`) never
    /// expires a lease that is kept alive: the remaining TTL drops by the
    /// jump, the next keep-alive restores it. Once keep-alives stop, the
    /// lease does expire, through consensus.
    #[test]
    fn a_leader_clock_jump_expires_no_live_lease() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (net, cluster, _ids, leader) = three_members(2).await;
            let node = net.get(leader).unwrap().node.clone();
            const LEASE: i64 = 0x1ea5e;
            const TTL_S: i64 = 5;
            node.propose(Command::LeaseGrant {
                id: LEASE,
                ttl_seconds: TTL_S,
            })
            .await
            .expect("lease granted");
            let exists = || net.get(leader).unwrap().store.lease(LEASE).is_some();
            // Keep the lease alive every second for 20 s; the leader's clock
            // jumps by the simulator's largest jump three times meanwhile.
            for second in 0..20u64 {
                if second % 6 == 3 {
                    cluster.clocks[&leader].jump_forward(Duration::from_millis(CLOCK_JUMP_MAX_MS));
                    let (_, left) = node.lease_time_to_live(LEASE).await.unwrap().unwrap();
                    assert!(
                        left <= TTL_S - (CLOCK_JUMP_MAX_MS / 1000) as i64,
                        "the jump did not reach the lease clock: {left} s left"
                    );
                }
                assert_eq!(node.lease_keep_alive(LEASE).await.unwrap(), Some(TTL_S));
                tokio::time::sleep(Duration::from_secs(1)).await;
                assert!(exists(), "a kept-alive lease expired at second {second}");
            }
            // No keep-alives: it expires within its TTL plus a revoke pass.
            tokio::time::sleep(Duration::from_secs(TTL_S as u64 + 2)).await;
            assert!(!exists(), "the lease outlived its TTL without keep-alives");
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
