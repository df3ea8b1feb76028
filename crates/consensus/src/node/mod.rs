//! A running member: Raft core + log store + state machine + peer transport +
//! lease clocks, and the operations the client API needs (propose, ReadIndex,
//! leases, membership), each routed to the leader when this member is not it.
//!
//! Modules, one per job: [`config`] (settings), [`errors`], [`start`]
//! (bootstrap, join, background tasks), [`batching`] (write batches),
//! [`failover`] (fast failover when the leader's process is gone),
//! [`reads`] (ReadIndex, leases), [`routing`] (leader routing and the peer
//! handler), [`membership`].

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
    Refusal,
};
use crate::state_machine::Applier;
use crate::types::{cluster_id, initial_member_id, ApplyOutcome, Member, NodeId, Raft};

mod batching;
mod config;
mod errors;
mod failover;
mod membership;
mod reads;
mod routing;
mod start;

pub use batching::*;
pub use config::*;
pub use errors::*;
pub use failover::SUSPECT_AFTER_HEARTBEATS;
pub use membership::*;
#[allow(unused_imports)]
use reads::*;
#[allow(unused_imports)]
use routing::*;
pub use start::*;

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
    /// Peer messages refused, by reason (`phalanx_peer_rejected_total`).
    peer_rejections: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    /// Token bucket of control messages: (tokens, last refill).
    control_tokens: std::sync::Mutex<Option<(f64, Instant)>>,
    /// When the last AppendEntries arrived (see `failover`).
    leader_contact: std::sync::Mutex<Option<Instant>>,
    /// Leaders found dead by `failover` (`phalanx_raft_dead_leader_detections_total`).
    dead_leader_detections: std::sync::atomic::AtomicU64,
    /// Leaderships (a leader in a new term) this member saw
    /// (`phalanx_server_leader_changes_seen_total`).
    leader_changes_seen: std::sync::atomic::AtomicU64,
}

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

/// See [`Node::changes`].
pub struct Changes(tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>);

impl Changes {
    /// Waits for the next change. False when the Raft core has stopped: no
    /// change will ever come, so a caller must not wait again.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

impl Node {
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
        let membership_history = MembershipHistory::load(&config.data_dir);
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
            membership_history: std::sync::Mutex::new(membership_history),
            pending_identity: Default::default(),
            peer_rejections: Default::default(),
            control_tokens: Default::default(),
            leader_contact: Default::default(),
            dead_leader_detections: Default::default(),
            leader_changes_seen: Default::default(),
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

    /// Register the per-member half of auth: told about every auth change
    /// this member applies from now on ([`crate::AuthObserver`]).
    pub fn set_auth_observer(&self, observer: Arc<dyn crate::AuthObserver>) {
        self.applier.set_auth_observer(observer);
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

    /// How many leaderships (a leader in a new term) this member has seen
    /// since it started, as etcd's `leader_changes_seen_total` counts them.
    pub fn leader_changes_seen(&self) -> u64 {
        self.leader_changes_seen
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// Stop serving: Raft, peer server and background tasks.
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.raft.shutdown().await;
    }
}
