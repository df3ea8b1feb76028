//! Starting a member: bootstrap or join, the identity and lost-state checks,
//! and the background tasks (metrics watcher, write batches, read rounds).

#[allow(unused_imports)]
use super::*;

/// Bound on asking one peer, at a first start, whether it already knows
/// this member as bootstrapped (see `Node::refuse_if_bootstrapped`).
pub const BOOTSTRAP_PROBE_TIMEOUT_MS: u64 = 1_000;

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
        crate::runtime::set_rpc_timeout_floor(Duration::from_millis(
            config.raft_rpc_min_timeout_ms,
        ));
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
        let network = PeerNetwork::new(
            identity.member_id,
            identity.cluster_id,
            timeouts,
            faults.clone(),
            config.peer_client_tls.clone(),
        );

        let marker = member_dir.join(REMOVED_MARKER_FILE);
        if marker.exists() {
            return Err(StartError::WasRemoved {
                name: config.name.clone(),
                data_dir: config.data_dir.clone(),
                marker,
            });
        }
        let raft_path = member_dir.join("raft.redb");
        let log = LogStore::open_with(
            &raft_path,
            crate::log_store::LogStoreOptions {
                unsafe_no_fsync: PlantedBug::AckBeforeFsync.is_active(config.planted_bug),
                unsafe_accept_torn_records: PlantedBug::TornRecordAccepted
                    .is_active(config.planted_bug),
                ..Default::default()
            },
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
                    // The log is the WAL directory beside the (upgraded) raft.redb.
                    file: member_dir.join("wal"),
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
        // Production members run on the process clock (no offset).
        let lessor = Arc::new(Lessor::new(crate::runtime::MemberClock::new()));
        lessor.reload(&store);
        // Entries already in the log are re-applied after a restart; the
        // auth observer must know them (simple tokens are not restored).
        let applier = Applier::new(store, lessor.clone())
            .with_replay_floor(durable.last_log_id.map(|l| l.index).unwrap_or(0));

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

        // The Raft core runs on its own member clock, which the leader-death
        // detector may step forward (see `failover`).
        let raft_clock = crate::runtime::MemberClock::new();
        let raft = raft_clock
            .clone()
            .scope(Raft::new(
                identity.member_id,
                Arc::new(raft_config),
                network.clone(),
                log,
                applier.clone(),
            ))
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
        let incoming = tls::incoming(peer_listener, config.peer_server_tls.clone());
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
        node.clone().spawn_leader_death_detector(raft_clock);
        Ok(node)
    }

    /// Write the identity if it is pending and the Raft log holds an entry.
    pub(super) fn store_identity_if_logged(&self) -> Result<(), identity::IdentityError> {
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
    pub(super) async fn refuse_if_bootstrapped(
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
                let tls = config.peer_client_tls.clone();
                let req = PeerRequest::Join {
                    peer_urls: config.advertise_peer_urls.clone(),
                };
                async move {
                    let client =
                        PeerClient::new(0, 0, &url, timeouts, faults, tls.as_ref()).ok()?;
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

    pub(super) async fn join(
        config: &NodeConfig,
        faults: Arc<Faults>,
    ) -> Result<Identity, StartError> {
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
                let client = match PeerClient::new(
                    0,
                    0,
                    url,
                    timeouts,
                    faults.clone(),
                    config.peer_client_tls.as_ref(),
                ) {
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

    pub(super) fn spawn_background(self: Arc<Self>) {
        // Leadership watcher: restart lease clocks on promotion; publish our
        // client URLs into the membership once a leader exists.
        let node = self.clone();
        tokio::spawn(async move {
            let mut metrics = node.raft.metrics();
            let mut leading_term: Option<u64> = None;
            // The (term, leader) last seen, for the leader-change count.
            let mut seen_leader: Option<(u64, NodeId)> = None;
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
                if let Some(l) = leader.filter(|l| seen_leader != Some((term, *l))) {
                    seen_leader = Some((term, l));
                    node.leader_changes_seen
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if state == ServerState::Leader && leading_term != Some(term) {
                    node.lessor.promote();
                    leading_term = Some(term);
                } else if state != ServerState::Leader {
                    leading_term = None;
                }
                if !published
                    && leader.is_some()
                    && last_publish
                        .is_none_or(|t: Instant| t.elapsed() >= Duration::from_millis(500))
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
}
