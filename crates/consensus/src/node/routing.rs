//! Leader routing: requests a follower forwards to the leader, the leader's
//! side of them, and the peer handler that admits and serves peer messages.

#[allow(unused_imports)]
use super::*;

pub(super) fn is_not_leader(
    e: &RaftError<NodeId, ClientWriteError<NodeId, Member>>,
) -> Option<Option<(NodeId, Member)>> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Some(f.leader_id.zip(f.leader_node.clone()))
        }
        _ => None,
    }
}

#[tonic::async_trait]
impl PeerHandler for Node {
    fn admit(&self, from: NodeId, cluster: u64, req: &PeerRequest) -> Result<(), Refusal> {
        // "Which member am I?" comes from members that know neither their
        // id nor the cluster's yet; the answer only describes the membership.
        if matches!(req, PeerRequest::Join { .. }) {
            return Ok(());
        }
        if cluster != self.cluster_id {
            return Err(self.refuse(
                "foreign_cluster",
                format!(
                    "message from member {from:x} of cluster {cluster:x}; this is member {:x} of cluster {:x}",
                    self.id, self.cluster_id
                ),
            ));
        }
        {
            let h = self
                .membership_history
                .lock()
                .expect("membership history poisoned");
            if h.removed.contains(&from) {
                drop(h);
                self.count_rejection("removed");
                return Err(Refusal::Removed(format!(
                    "member {from:x} was removed from cluster {:x} (member {:x} {:?} applied its removal)",
                    self.cluster_id, self.id, self.config.name
                )));
            }
        }
        let (known, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let members = m.membership_config.membership();
            // A member that has not received any membership yet (a joining
            // learner) cannot tell members apart; the cluster id still counts.
            let known = members.nodes().next().is_none() || members.get_node(&from).is_some();
            (known, m.current_leader)
        };
        if !known {
            return Err(self.refuse(
                "not_member",
                format!("{from:x} is not a member of cluster {:x}", self.cluster_id),
            ));
        }
        if let PeerRequest::Removed { member, .. } = req {
            if leader != Some(from) || *member != self.id {
                return Err(self.refuse(
                    "control_not_from_leader",
                    format!(
                        "removal notice for member {member:x} from member {from:x} (leader: {leader:?}, this member: {:x})",
                        self.id
                    ),
                ));
            }
        }
        if matches!(
            req,
            PeerRequest::PauseElections { .. } | PeerRequest::ElectAfter { .. }
        ) {
            if leader != Some(from) {
                return Err(self.refuse(
                    "control_not_from_leader",
                    format!(
                        "leadership-transfer message from member {from:x}, which is not the leader (leader: {leader:?})"
                    ),
                ));
            }
            if !self.take_control_token() {
                return Err(self.refuse(
                    "control_rate_limited",
                    format!(
                        "more than max_control_messages_per_s={} leadership-transfer messages per second",
                        self.config.max_control_messages_per_s
                    ),
                ));
            }
        }
        Ok(())
    }

    fn sender_name(&self, from: NodeId) -> Option<crate::network::identity::SenderName> {
        if !self.config.peer_cert_identity {
            return None;
        }
        let m = self.raft.metrics();
        let m = m.borrow();
        Some(crate::network::identity::sender_name(
            m.membership_config.membership().nodes(),
            from,
            &self.config.name,
            &self.config.initial_cluster,
        ))
    }

    fn count_refusal(&self, reason: &'static str) {
        self.count_rejection(reason);
    }

    async fn handle(&self, req: PeerRequest) -> Vec<u8> {
        match req {
            PeerRequest::AppendEntries(r) => {
                self.note_leader_contact();
                encode(&self.raft.append_entries(r).await)
            }
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
            PeerRequest::Removed { log_index, .. } => {
                self.halt_removed(format!(
                    "(the leader told it that the membership change at log index {log_index} removed it)"
                ));
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

impl Node {
    fn count_rejection(&self, reason: &'static str) {
        *self
            .peer_rejections
            .lock()
            .expect("peer rejections poisoned")
            .entry(reason)
            .or_default() += 1;
    }

    fn refuse(&self, reason: &'static str, detail: String) -> Refusal {
        self.count_rejection(reason);
        tracing::debug!("peer message refused ({reason}): {detail}");
        Refusal::Refused { reason, detail }
    }

    /// Take one control-message token; the bucket holds at most
    /// `max_control_messages_per_s` and refills at that rate.
    fn take_control_token(&self) -> bool {
        let rate = f64::from(self.config.max_control_messages_per_s);
        let now = Instant::now();
        let mut b = self.control_tokens.lock().expect("control tokens poisoned");
        let (tokens, last) = b.get_or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Peer messages refused so far, by reason.
    pub fn peer_rejections(&self) -> Vec<(&'static str, u64)> {
        self.peer_rejections
            .lock()
            .expect("peer rejections poisoned")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

pub(super) fn req_kind(r: &LeaderRequest) -> &'static str {
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

impl Node {
    /// Run `req` on the leader: here if we lead, else over the peer
    /// transport. Retries only where the request certainly did not take
    /// effect (the receiver was not the leader, or the connection was never
    /// made), until `request_timeout_ms`.
    pub(super) async fn leader_call(
        &self,
        req: LeaderRequest,
    ) -> Result<LeaderResponse, NodeError> {
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
                            if matches!(req, LeaderRequest::Write(_)) && !never_connected(&detail) {
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

    pub(super) fn not_leader(&self) -> LeaderError {
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

    pub(super) fn write_err(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    ) -> LeaderError {
        if let Some(leader) = is_not_leader(&e) {
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

    /// Serve a leader-bound request on this member.
    pub(super) async fn serve_leader(
        &self,
        req: LeaderRequest,
    ) -> Result<LeaderResponse, LeaderError> {
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
                // Confirm leadership with a quorum first (etcd 3.5's
                // ensureLeadership): a leader cut off from the others still
                // believes it leads until it notices, and a keep-alive it
                // acknowledged alone would be unknown to the new leader,
                // which expires the lease while the client holds it alive.
                match self.raft.get_read_log_id().await {
                    Ok(_) => Ok(LeaderResponse::LeaseTtl(self.lessor.keep_alive(id))),
                    Err(RaftError::APIError(e)) => {
                        tracing::debug!("lease keep-alive refused: {e}");
                        Err(self.not_leader())
                    }
                    Err(RaftError::Fatal(f)) => Err(LeaderError::Stopped(f.to_string())),
                }
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
                let Some((_, member, learner)) =
                    self.members().into_iter().find(|(m, _, _)| *m == id)
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
                // Tell it now (best effort, bounded): it gets no more
                // replication, so it would otherwise wait for its next
                // election to be refused.
                let log_index = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .log_id()
                    .map_or(0, |l| l.index);
                let transport = self.transport.clone();
                tokio::spawn(async move {
                    let notice = PeerRequest::Removed {
                        member: id,
                        log_index,
                    };
                    let _ = peer_call::<()>(
                        &*transport,
                        id,
                        &member,
                        &notice,
                        Some(Duration::from_millis(REMOVAL_NOTICE_TIMEOUT_MS)),
                    )
                    .await;
                });
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
}

/// Did a peer call fail before any connection to the peer existed (so the
/// request certainly was not sent)? Only then may a write be retried
/// elsewhere. A connection that broke after the request went out
/// (`connection error: connection reset`, `broken pipe`, a closed stream) is
/// not this: the leader may have committed the write, and sending it again
/// would apply it twice (the secure drill caught exactly that when a killed
/// leader's TLS connection was reset: one put applied at two revisions).
fn never_connected(detail: &str) -> bool {
    detail.contains("Connection refused")
        || detail.contains("TLS handshake with")
        || detail.contains("tcp connect error")
        || detail.contains("error trying to connect")
}

#[cfg(test)]
mod never_connected_tests {
    use super::never_connected;

    #[test]
    fn only_failures_to_connect_allow_a_retry() {
        assert!(never_connected(
            "The service is currently unavailable: Connection refused (os error 111): transport error"
        ));
        assert!(never_connected("The service is currently unavailable: TLS handshake with https://127.0.0.1:1 failed: Connection reset by peer (os error 104): is the peer serving TLS on this URL?: transport error"));
        assert!(!never_connected(
            "Unknown error: transport error: connection error: connection reset"
        ));
        assert!(!never_connected("h2 protocol error: connection closed"));
        assert!(!never_connected("broken pipe"));
    }
}
