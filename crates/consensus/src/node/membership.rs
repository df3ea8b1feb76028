//! Membership: add, remove, promote, update, leadership transfer, the
//! history of removed members (answered "removed"), and promotion of
//! caught-up learners.

#[allow(unused_imports)]
use super::*;

#[derive(Default)]
pub(super) struct MembershipHistory {
    pub(super) ever: BTreeSet<NodeId>,
    pub(super) removed: BTreeSet<NodeId>,
}

/// File in `<data-dir>/member` listing (one hex id per line) every member
/// this member has seen in an applied configuration, so that after a
/// restart it still answers a member removed long ago "removed" (the
/// membership in its log and snapshot only holds the current members).
pub const MEMBERS_EVER_FILE: &str = "members-ever";

impl MembershipHistory {
    /// The history kept in `dir/member/members-ever` (empty if there is none;
    /// a damaged file is reported and ignored: it only sharpens refusals).
    pub(super) fn load(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join("member").join(MEMBERS_EVER_FILE);
        let mut h = MembershipHistory::default();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return h;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match u64::from_str_radix(line.trim(), 16) {
                Ok(id) => {
                    h.ever.insert(id);
                }
                Err(_) => {
                    tracing::warn!(file = %path.display(), line, "ignoring a damaged member history; removed members are recognised again as they are seen");
                    return MembershipHistory::default();
                }
            }
        }
        h
    }

    /// Write `ever` to `dir/member/members-ever` (atomically: temp + rename).
    fn save(&self, data_dir: &std::path::Path) {
        let dir = data_dir.join("member");
        let path = dir.join(MEMBERS_EVER_FILE);
        let tmp = dir.join(format!("{MEMBERS_EVER_FILE}.tmp"));
        let text: String = self.ever.iter().map(|id| format!("{id:x}\n")).collect();
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::warn!(file = %path.display(), error = %e, "cannot record the member history");
        }
    }
}

/// File in `<data-dir>/member` recording that this member learned it was
/// removed from the cluster; a member finding it refuses to start.
pub const REMOVED_MARKER_FILE: &str = "removed";

/// Upper bound on an election pause or delayed campaign a peer may ask for.
pub const MAX_ELECTION_PAUSE_MS: u64 = 10_000;

/// Bound on the leader's notice to a member it removed (best effort: a
/// member that misses it learns when its next election is refused).
pub const REMOVAL_NOTICE_TIMEOUT_MS: u64 = 500;

impl Node {
    /// Track applied membership: which members were removed (peers answer
    /// them "removed"), and whether this member itself was.
    pub(super) fn observe_membership(&self, m: &openraft::RaftMetrics<NodeId, Member>) {
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
            let before = h.ever.len();
            h.ever.extend(current.iter().copied());
            if h.ever.len() != before {
                h.save(&self.config.data_dir);
            }
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
    pub(super) async fn transfer_leadership(
        &self,
        target: NodeId,
    ) -> Result<LeaderResponse, LeaderError> {
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
                return Err(LeaderError::Rejected(format!(
                    "member {target:x} is {} entries behind; retry once it has caught up",
                    last - matched
                )));
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

    pub(super) fn transferring(&self) -> bool {
        self.transferring
            .lock()
            .expect("transfer flag poisoned")
            .is_some_and(|d| Instant::now() < d)
    }

    /// `change_membership`, waiting out another change still in progress
    /// (only one may be uncommitted at a time), until `request_timeout_ms`.
    pub(super) async fn change_membership(
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
        // Settled means applied here, whatever this member's role: a member's
        // published role lags its Raft core, so "not leader" is no proof (a
        // member just elected still reports Candidate, tries at once and is
        // refused while the inherited configuration is uncommitted).
        let settled = |m: &openraft::RaftMetrics<NodeId, Member>| {
            let pending = m.membership_config.log_id().map(|l| l.index);
            m.last_applied.map(|l| l.index) >= pending
        };
        let _ = tokio::time::timeout_at(deadline, metrics.wait_for(settled)).await;
        loop {
            // Leadership may have moved while we waited (bootstrap elections
            // often split a vote): a non-leader answers "forward" itself
            // instead of asking openraft, which logs each refusal at ERROR.
            let now = metrics.borrow().clone();
            if now.state != openraft::ServerState::Leader {
                let leader_node = now
                    .current_leader
                    .and_then(|l| now.membership_config.membership().get_node(&l).cloned());
                return Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                    openraft::error::ForwardToLeader {
                        leader_id: now.current_leader,
                        leader_node,
                    },
                )));
            }
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
    pub(super) fn caught_up(&self, id: NodeId) -> bool {
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
    pub(super) async fn promote_caught_up_learners(&self) {
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
}
