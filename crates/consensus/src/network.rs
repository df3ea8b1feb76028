//! Member-to-member transport: openraft RPCs and leader-bound requests
//! (forwarded writes, ReadIndex, lease keep-alives, membership changes) over
//! one gRPC method carrying postcard-encoded [`PeerRequest`]s.
//!
//! The Raft core only sees [`PeerNetwork`] through openraft's
//! `RaftNetworkFactory` trait, so a simulator can substitute its own network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mvcc::Command;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::faults::Faults;
use crate::types::{ApplyOutcome, LogId, Member, NodeId, TypeConfig};

pub mod identity;

pub mod pb {
    tonic::include_proto!("phalanx.peer");
}

/// Every request one member sends another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Must be served by the current leader; a non-leader answers
    /// [`LeaderError::NotLeader`] so the sender can retry at the right member.
    Leader(LeaderRequest),
    /// "Which member am I?": asked by a member started with
    /// `--initial-cluster-state existing`, with its own peer URLs.
    Join {
        peer_urls: Vec<String>,
    },
    /// Leadership transfer: stop starting elections for `ms` (the member
    /// re-enables them by itself afterwards, so a lost message cannot leave
    /// it passive).
    PauseElections {
        ms: u64,
    },
    /// Leadership transfer: start an election after `ms` (once the old
    /// leader's lease has run out everywhere).
    ElectAfter {
        ms: u64,
    },
    /// From the leader to a member it has just removed: the leader stops
    /// replicating to a removed member, so without this it would learn of
    /// its removal only when its next election is refused. `member` guards
    /// against a peer URL reused by another member. (Last in the enum, so
    /// every earlier variant keeps its encoding.)
    Removed {
        member: NodeId,
        log_index: u64,
    },
}

/// Requests only the leader can serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderRequest {
    Write(Command),
    /// ReadIndex: the leader confirms its leadership with a quorum and
    /// returns the log index a linearizable read must wait for.
    ReadIndex,
    LeaseKeepAlive {
        id: i64,
    },
    LeaseTimeToLive {
        id: i64,
    },
    AddMember {
        id: NodeId,
        member: Member,
        learner: bool,
    },
    RemoveMember {
        id: NodeId,
    },
    PromoteMember {
        id: NodeId,
    },
    UpdateMember {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    PublishClientUrls {
        id: NodeId,
        name: String,
        client_urls: Vec<String>,
    },
    MoveLeader {
        target: NodeId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderResponse {
    Written(ApplyOutcome),
    ReadIndex(Option<LogId>),
    /// TTL granted by a keep-alive; `None`: lease not found.
    LeaseTtl(Option<i64>),
    /// (granted TTL, remaining seconds); `None`: lease not found.
    LeaseRemaining(Option<(i64, i64)>),
    Done,
}

/// Why a leader-bound request failed on the member that received it.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum LeaderError {
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<(NodeId, Member)> },
    #[error("{0}")]
    Rejected(String),
    #[error("member {0} not found")]
    MemberNotFound(NodeId),
    #[error("member {0} is not a learner")]
    MemberNotLearner(NodeId),
    #[error("peer URLs already in use by member {0}")]
    PeerUrlExists(NodeId),
    #[error("the learner is not yet in sync with the leader; retry later")]
    LearnerNotReady,
    #[error("{0}")]
    Stopped(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub cluster_id: u64,
    pub member_id: NodeId,
    pub members: Vec<(NodeId, Member)>,
}

/// Why a peer message was not served (see [`PeerHandler::admit`]).
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The sender was removed from the cluster: answered with
    /// [`REMOVED_MARKER`], so it stops rather than campaigning with
    /// ever-higher terms.
    Removed(String),
    /// Any other refusal (foreign cluster, not a member, a control message
    /// not from the leader or over the rate limit): answered with
    /// [`REFUSED_MARKER`] and code `PermissionDenied`. `reason` is the
    /// `phalanx_peer_rejected_total{reason}` label.
    Refused {
        reason: &'static str,
        detail: String,
    },
}

/// Serves peer requests; implemented by `Node`.
#[tonic::async_trait]
pub trait PeerHandler: Send + Sync + 'static {
    /// Returns the postcard-encoded response matching the request variant.
    async fn handle(&self, req: PeerRequest) -> Vec<u8>;

    /// Whether `req` from member `from` (0: a member that does not know its
    /// id yet) of cluster `cluster` (0: unknown yet) is served at all.
    fn admit(&self, _from: NodeId, _cluster: u64, _req: &PeerRequest) -> Result<(), Refusal> {
        Ok(())
    }

    /// With `--peer-cert-identity`: what this member knows of member
    /// `from`, to bind its messages to its certificate ([`identity`]).
    /// `None` (the default): messages are not bound to certificates.
    fn sender_name(&self, _from: NodeId) -> Option<identity::SenderName> {
        None
    }

    /// Count a refusal made by [`PeerService`] itself (before `admit`)
    /// under `phalanx_peer_rejected_total{reason}`.
    fn count_refusal(&self, _reason: &'static str) {}
}

/// Prefix of the gRPC status message a member sends to a member it knows
/// was removed from the cluster (code `FailedPrecondition`).
pub const REMOVED_MARKER: &str = "phalanx: sender removed from cluster";

/// Prefix of the gRPC status message (code `PermissionDenied`) refusing a
/// peer message for any other reason ([`Refusal::Refused`]).
pub const REFUSED_MARKER: &str = "phalanx: peer message refused";

/// The tonic service wrapping a [`PeerHandler`].
pub struct PeerService<H> {
    handler: Arc<H>,
    faults: Arc<Faults>,
}

/// gRPC metadata naming the sending member (fault injection, admission).
const FROM_HEADER: &str = "x-phalanx-from";
/// gRPC metadata naming the sender's cluster (hex; absent or 0: unknown yet).
const CLUSTER_HEADER: &str = "x-phalanx-cluster";

impl<H: PeerHandler> PeerService<H> {
    pub fn new(handler: Arc<H>, faults: Arc<Faults>) -> pb::peer_server::PeerServer<Self> {
        pb::peer_server::PeerServer::new(PeerService { handler, faults })
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
    }
}

/// Largest peer message (a batch of entries or a snapshot chunk).
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[tonic::async_trait]
impl<H: PeerHandler> pb::peer_server::Peer for PeerService<H> {
    async fn call(
        &self,
        request: tonic::Request<pb::Envelope>,
    ) -> Result<tonic::Response<pb::Envelope>, tonic::Status> {
        let from = request
            .metadata()
            .get(FROM_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok());
        let cluster = request
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0);
        if self.faults.enabled() && from.is_some_and(|f| self.faults.blocks(f)) {
            return Err(tonic::Status::unavailable("injected partition"));
        }
        // The verified client certificate, put there by the TLS accept loop.
        let conn = request.extensions().get::<tls::ConnInfo>().cloned();
        let env = request.into_inner();
        let req: PeerRequest = postcard::from_bytes(&env.payload).map_err(|e| {
            tonic::Status::invalid_argument(format!("undecodable peer request: {e}"))
        })?;
        let from = from.unwrap_or(0);
        // Before `admit`: a message refused here changes nothing (`admit`
        // spends a control-message token on a leader's control message).
        if let Some(sender) = self.handler.sender_name(from) {
            if let Err(detail) = identity::check(&sender, from, &req, conn.as_ref()) {
                let reason = identity::CERT_IDENTITY_REASON;
                self.handler.count_refusal(reason);
                tracing::debug!("peer message refused ({reason}): {detail}");
                return Err(tonic::Status::permission_denied(format!(
                    "{REFUSED_MARKER} ({reason}): {detail}"
                )));
            }
        }
        match self.handler.admit(from, cluster, &req) {
            Ok(()) => {}
            Err(Refusal::Removed(why)) => {
                return Err(tonic::Status::failed_precondition(format!(
                    "{REMOVED_MARKER}: {why}"
                )))
            }
            Err(Refusal::Refused { reason, detail }) => {
                return Err(tonic::Status::permission_denied(format!(
                    "{REFUSED_MARKER} ({reason}): {detail}"
                )))
            }
        }
        let payload = self.handler.handle(req).await;
        Ok(tonic::Response::new(pb::Envelope {
            kind: env.kind,
            payload,
        }))
    }
}

/// Encode a handler's answer.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("encoding an in-memory value cannot fail")
}

/// Timeouts of the peer transport.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimeouts {
    pub connect_timeout_ms: u64,
    /// Per-request bound for requests other than Raft RPCs.
    pub request_timeout_ms: u64,
    /// Floor for Raft RPC deadlines. openraft bounds AppendEntries by the
    /// heartbeat interval (50 ms), shorter than a follower's fsync of a large
    /// batch on a busy disk; timing those out would stall replication in
    /// back-off. Dead peers still fail fast (connection refused).
    pub raft_rpc_min_timeout_ms: u64,
}

/// A client for one peer, reconnecting lazily.
#[derive(Clone)]
pub struct PeerClient {
    target: NodeId,
    /// This member's id, sent along for admission and fault injection (0: unknown yet).
    from: NodeId,
    /// This member's cluster, sent along for admission (0: unknown yet).
    cluster_id: u64,
    channel: Channel,
    timeouts: PeerTimeouts,
    faults: Arc<Faults>,
    /// Set (with the peer's explanation) when a peer answers that this
    /// member was removed from the cluster.
    removed: Arc<watch::Sender<Option<String>>>,
    /// Whether this client speaks TLS to the peer (an https:// peer URL).
    over_tls: bool,
}

/// What a peer that refused this member's client certificate looks like
/// from this side: under TLS 1.3 the client finishes its handshake first and
/// learns of the refusal only as a closed connection, so say what it means.
fn tls_refusal_hint(detail: &str) -> Option<&'static str> {
    let closed = ["connection closed", "broken pipe", "connection reset"];
    closed
        .iter()
        .any(|c| detail.to_lowercase().contains(c))
        .then_some(
            "over TLS, a connection the peer closes right after the handshake is how a peer that \
         refused this member's certificate looks: check that the peer's --peer-trusted-ca-file \
         trusts this member's --peer-cert-file and that its CN is allowed (--peer-cert-allowed-cn)",
        )
}

#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// The request certainly never left this member (no usable peer URL, or
    /// the simulator knows the target is down): safe to retry anywhere.
    #[error("no route to member {target}: {detail}")]
    NotSent { target: NodeId, detail: String },
    #[error("member {target} unreachable: {detail}")]
    Unreachable { target: NodeId, detail: String },
    #[error("member {target} sent an undecodable answer: {detail}")]
    Decode { target: NodeId, detail: String },
    /// The peer knows this member was removed from the cluster.
    #[error("member {target} refused this member: {detail}")]
    Removed { target: NodeId, detail: String },
}

impl PeerClient {
    /// A client for the peer at `url`; `https://` URLs need `tls` (the peer
    /// client's CA and certificate).
    pub fn new(
        from: NodeId,
        target: NodeId,
        url: &str,
        timeouts: PeerTimeouts,
        faults: Arc<Faults>,
        tls: Option<&tls::ClientTls>,
    ) -> Result<Self, PeerCallError> {
        Self::with_removed_signal(
            from,
            target,
            url,
            timeouts,
            faults,
            Arc::new(watch::channel(None).0),
            tls,
        )
    }

    /// Send `cluster_id` along with every request (a member that knows its cluster).
    pub fn with_cluster(mut self, cluster_id: u64) -> Self {
        self.cluster_id = cluster_id;
        self
    }

    fn with_removed_signal(
        from: NodeId,
        target: NodeId,
        url: &str,
        timeouts: PeerTimeouts,
        faults: Arc<Faults>,
        removed: Arc<watch::Sender<Option<String>>>,
        tls: Option<&tls::ClientTls>,
    ) -> Result<Self, PeerCallError> {
        // The connector does TLS itself (by the URL's scheme), so tonic is
        // always given http://.
        let (plain_url, tls) = match url.strip_prefix("https://") {
            Some(rest) => match tls {
                Some(t) => (format!("http://{rest}"), Some(t.clone())),
                None => {
                    return Err(PeerCallError::NotSent {
                        target,
                        detail: format!("peer URL {url} is https:// but this member has no peer TLS settings (--peer-trusted-ca-file with --peer-cert-file/--peer-key-file, or --peer-auto-tls)"),
                    })
                }
            },
            None => (url.to_string(), None),
        };
        let endpoint = Endpoint::from_shared(plain_url)
            .map_err(|e| PeerCallError::Unreachable {
                target,
                detail: format!("bad peer URL {url}: {e}"),
            })?
            .connect_timeout(Duration::from_millis(timeouts.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let over_tls = tls.is_some();
        let channel = endpoint.connect_with_connector_lazy(tls::Connector::new(url, tls));
        Ok(PeerClient {
            target,
            from,
            cluster_id: 0,
            channel,
            timeouts,
            faults,
            removed,
            over_tls,
        })
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        req: &PeerRequest,
        timeout: Option<Duration>,
    ) -> Result<T, PeerCallError> {
        let answer = self.call_raw(req, timeout).await?;
        decode_answer(self.target, &answer)
    }

    /// Send `req`; the encoded answer.
    pub async fn call_raw(
        &self,
        req: &PeerRequest,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, PeerCallError> {
        if self.faults.blocks(self.target) {
            return Err(PeerCallError::Unreachable {
                target: self.target,
                detail: "injected partition (connect refused)".into(),
            });
        }
        let payload = encode(req);
        let timeout = timeout.unwrap_or(Duration::from_millis(self.timeouts.request_timeout_ms));
        let answer = match self.faults.delay() {
            None => self.send(payload, timeout).await?,
            Some(d) => {
                // An injected delay puts the message "in flight": it is sent
                // after `d` even if the caller stops waiting (openraft bounds
                // AppendEntries by one heartbeat interval), as on a real
                // network. Sleeping in the caller would drop it instead.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.send(this.send(payload, timeout).await);
                });
                rx.await.map_err(|_| PeerCallError::Unreachable {
                    target: self.target,
                    detail: "delayed send abandoned".into(),
                })??
            }
        };
        Ok(answer)
    }

    async fn send(&self, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, PeerCallError> {
        let mut client = pb::peer_client::PeerClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let mut request = tonic::Request::new(pb::Envelope { kind: 0, payload });
        request.set_timeout(timeout);
        request.metadata_mut().insert(
            FROM_HEADER,
            self.from
                .to_string()
                .parse()
                .expect("digits are valid metadata"),
        );
        if self.cluster_id != 0 {
            request.metadata_mut().insert(
                CLUSTER_HEADER,
                format!("{:x}", self.cluster_id)
                    .parse()
                    .expect("hex digits are valid metadata"),
            );
        }
        let target = self.target;
        let resp = client.call(request).await.map_err(|s| {
            if s.code() == tonic::Code::FailedPrecondition
                && s.message().starts_with(REMOVED_MARKER)
            {
                let detail = format!("member {target:x} answered: {}", s.message());
                self.removed.send_if_modified(|r| {
                    let first = r.is_none();
                    if first {
                        *r = Some(detail.clone());
                    }
                    first
                });
                PeerCallError::Removed { target, detail }
            } else {
                // The transport's own errors (a TLS handshake refused, a
                // connection reset) are in the source chain, not the message.
                let mut detail = format!("{}: {}", s.code(), s.message());
                let mut src = std::error::Error::source(&s);
                while let Some(e) = src {
                    let text = e.to_string();
                    if !detail.contains(&text) {
                        detail.push_str(": ");
                        detail.push_str(&text);
                    }
                    src = e.source();
                }
                if self.over_tls {
                    if let Some(hint) = tls_refusal_hint(&detail) {
                        detail.push_str(": ");
                        detail.push_str(hint);
                    }
                }
                PeerCallError::Unreachable { target, detail }
            }
        })?;
        Ok(resp.into_inner().payload)
    }
}

/// Decode a peer's answer.
pub fn decode_answer<T: DeserializeOwned>(
    target: NodeId,
    bytes: &[u8],
) -> Result<T, PeerCallError> {
    postcard::from_bytes(bytes).map_err(|e| PeerCallError::Decode {
        target,
        detail: e.to_string(),
    })
}

/// Decode a request as [`PeerService`] does (the simulator's transport
/// sends every request through the same encoding).
pub fn decode_request(bytes: &[u8]) -> Result<PeerRequest, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// How a member sends its own peer requests (work forwarded to the leader,
/// leadership transfer): gRPC in production ([`PeerNetwork`]), in memory in
/// the simulator. Resolves to the encoded answer.
pub trait PeerTransport: Send + Sync + 'static {
    fn call_raw<'a>(
        &'a self,
        target: NodeId,
        member: &'a Member,
        req: &'a PeerRequest,
        timeout: Option<Duration>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, PeerCallError>>;
}

/// Send `req` to `target` over `transport` and decode its answer.
pub async fn peer_call<T: DeserializeOwned>(
    transport: &dyn PeerTransport,
    target: NodeId,
    member: &Member,
    req: &PeerRequest,
    timeout: Option<Duration>,
) -> Result<T, PeerCallError> {
    let answer = transport.call_raw(target, member, req, timeout).await?;
    decode_answer(target, &answer)
}

impl PeerTransport for PeerNetwork {
    fn call_raw<'a>(
        &'a self,
        target: NodeId,
        member: &'a Member,
        req: &'a PeerRequest,
        timeout: Option<Duration>,
    ) -> futures::future::BoxFuture<'a, Result<Vec<u8>, PeerCallError>> {
        Box::pin(async move {
            let client = self
                .client(target, member)
                .map_err(|e| PeerCallError::NotSent {
                    target,
                    detail: e.to_string(),
                })?;
            client.call_raw(req, timeout).await
        })
    }
}

/// Clients to every peer, by member id, reused across openraft's requests.
#[derive(Clone)]
pub struct PeerNetwork {
    local_id: NodeId,
    cluster_id: u64,
    tls: Option<tls::ClientTls>,
    clients: Arc<Mutex<HashMap<(NodeId, String), PeerClient>>>,
    timeouts: PeerTimeouts,
    faults: Arc<Faults>,
    removed: Arc<watch::Sender<Option<String>>>,
}

impl PeerNetwork {
    pub fn new(
        local_id: NodeId,
        cluster_id: u64,
        timeouts: PeerTimeouts,
        faults: Arc<Faults>,
        tls: Option<tls::ClientTls>,
    ) -> Self {
        PeerNetwork {
            local_id,
            cluster_id,
            tls,
            clients: Arc::new(Mutex::new(HashMap::new())),
            timeouts,
            faults,
            removed: Arc::new(watch::channel(None).0),
        }
    }

    /// Becomes `Some(explanation)` once a peer answers that this member was
    /// removed from the cluster.
    pub fn removed_signal(&self) -> watch::Receiver<Option<String>> {
        self.removed.subscribe()
    }

    pub fn client(&self, target: NodeId, member: &Member) -> Result<PeerClient, PeerCallError> {
        let url = member
            .peer_urls
            .first()
            .cloned()
            .ok_or_else(|| PeerCallError::Unreachable {
                target,
                detail: "member has no peer URL".into(),
            })?;
        let mut clients = self.clients.lock().expect("peer clients poisoned");
        if let Some(c) = clients.get(&(target, url.clone())) {
            return Ok(c.clone());
        }
        let c = PeerClient::with_removed_signal(
            self.local_id,
            target,
            &url,
            self.timeouts,
            self.faults.clone(),
            self.removed.clone(),
            self.tls.as_ref(),
        )?
        .with_cluster(self.cluster_id);
        clients.insert((target, url), c.clone());
        Ok(c)
    }
}

/// openraft's view of one peer.
pub struct RaftPeer {
    target: NodeId,
    client: Result<PeerClient, String>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> RaftPeer {
        RaftPeer {
            target,
            client: self.client(target, node).map_err(|e| e.to_string()),
        }
    }
}

impl RaftPeer {
    async fn rpc<T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        req: PeerRequest,
        option: &RPCOption,
    ) -> Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
        let client = match &self.client {
            Ok(c) => c,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e.clone()),
                )))
            }
        };
        let answer: Result<T, RaftError<NodeId, E>> = client
            .call(
                &req,
                Some(option.hard_ttl().max(Duration::from_millis(
                    client.timeouts.raft_rpc_min_timeout_ms,
                ))),
            )
            .await
            .map_err(|e| match e {
                PeerCallError::Unreachable { .. }
                | PeerCallError::NotSent { .. }
                | PeerCallError::Removed { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                PeerCallError::Decode { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(PeerRequest::AppendEntries(rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(PeerRequest::InstallSnapshot(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(PeerRequest::Vote(rpc), &option).await
    }
}
