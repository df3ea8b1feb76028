//! The simulated network: per-link faults (loss, delay, partitions), the
//! `RaftNetworkFactory` that hands RPCs to the target member, and the
//! `PeerTransport` for a `Node`'s own requests.

#[allow(unused_imports)]
use super::*;

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

/// A live member as the network and the clients see it.
#[derive(Clone)]
pub(crate) struct Live {
    /// The member's API layer: leader routing, forwarding, ReadIndex.
    pub(crate) node: Arc<Node>,
    pub(crate) raft: Raft,
    pub(crate) store: Arc<Store>,
}

pub(crate) struct NetFaults {
    /// Directed links that drop every message: (from, to).
    pub(crate) blocked: BTreeSet<(NodeId, NodeId)>,
    pub(crate) loss_percent: u32,
    pub(crate) min_delay_ms: u64,
    pub(crate) max_delay_ms: u64,
    pub(crate) rng: StdRng,
}

/// The simulated network shared by all members.
pub struct Net {
    pub(crate) live: Mutex<BTreeMap<NodeId, Live>>,
    pub(crate) faults: Mutex<NetFaults>,
    /// Write batching of every member incarnation stopped so far.
    pub(crate) batches: Mutex<WriteBatchStats>,
}

impl Net {
    /// Stop a member incarnation, keeping its batching figures.
    pub(crate) async fn retire(&self, live: &Live) {
        let b = live.node.write_batch_stats();
        {
            let mut total = self.batches.lock().expect("batches poisoned");
            total.entries += b.entries;
            total.commands += b.commands;
            total.largest = total.largest.max(b.largest);
        }
        live.node.shutdown().await;
    }

    pub(crate) fn new(schedule: &FaultSchedule, seed: u64) -> Arc<Net> {
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
    pub(crate) fn fate(&self, from: NodeId, to: NodeId) -> Option<Duration> {
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

    pub(crate) fn get(&self, id: NodeId) -> Option<Live> {
        self.live
            .lock()
            .expect("net live poisoned")
            .get(&id)
            .cloned()
    }

    pub(crate) fn all(&self) -> Vec<(NodeId, Live)> {
        self.live
            .lock()
            .expect("net live poisoned")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    pub(crate) fn leaders(&self) -> Vec<(NodeId, Live)> {
        self.all()
            .into_iter()
            .filter(|(_, l)| l.raft.metrics().borrow().state == ServerState::Leader)
            .collect()
    }

    pub(crate) fn block(&self, from: NodeId, to: NodeId) {
        self.faults
            .lock()
            .expect("net faults poisoned")
            .blocked
            .insert((from, to));
    }

    pub(crate) fn heal(&self) {
        self.faults
            .lock()
            .expect("net faults poisoned")
            .blocked
            .clear();
    }

    pub(crate) fn set_loss(&self, percent: u32) {
        self.faults
            .lock()
            .expect("net faults poisoned")
            .loss_percent = percent;
    }
}

/// openraft's network factory for one member of the simulated cluster.
pub struct SimNetwork {
    pub(crate) from: NodeId,
    pub(crate) net: Arc<Net>,
}

/// openraft's view of one peer over the simulated network.
pub struct SimPeer {
    pub(crate) from: NodeId,
    pub(crate) target: NodeId,
    pub(crate) net: Arc<Net>,
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

pub(crate) type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl SimPeer {
    /// Request: lost or delayed; the call itself bounded by the deadline;
    /// response: lost or delayed. A lost message costs the sender the whole
    /// deadline, like a real timeout, so retries never spin in zero simulated time.
    pub(crate) async fn deliver<T, E, F, Fut>(&self, option: &RPCOption, call: F) -> RpcResult<T, E>
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
pub(crate) struct SimTransport {
    pub(crate) from: NodeId,
    pub(crate) net: Arc<Net>,
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

pub(crate) fn member_desc(id: NodeId) -> Member {
    Member {
        name: format!("n{id}"),
        peer_urls: vec![format!("sim://n{id}")],
        client_urls: Vec::new(),
        auto_promote: false,
    }
}
