//! The etcd v3 gRPC API over a [`consensus::Node`], plus the HTTP admin
//! listener (`/metrics`, `/health`, `/ready`).
//!
//! Main types:
//! - [`EtcdApi`]: implements etcd's KV, Watch, Lease, Cluster and Maintenance
//!   services. Writes become `mvcc::Command`s proposed through Raft; reads are
//!   served from the local store, after a ReadIndex barrier unless the client
//!   asked for a serializable read.
//! - [`ApiLimits`]: every request-facing limit, with units in its name.
//! - [`serve`]: runs the gRPC server on a listener until shutdown.
//! - [`admin::serve_admin`]: the admin HTTP listener.
//!
//! Boundaries: this crate does no consensus and no storage of its own; it
//! validates, routes and translates. Errors reaching clients carry etcd's
//! exact gRPC codes and messages, since clients match on them.

pub mod admin;
pub mod auth;
pub mod authority_fix;
mod cluster;
mod election;
pub mod grpc_metrics;
pub mod http1;
mod kv;
mod lease;
mod lock;
mod maintenance;
pub mod metrics;
mod pb;
pub mod status;
mod watch;

use crate::status::ToStatus;
use std::sync::Arc;

use consensus::{Node, NodeError};
use etcd_client::proto::PbResponseHeader;
use tonic::Status;

/// Request-facing limits. Defaults are etcd's.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest client request (`--max-request-bytes`), 1.5 MiB by default.
    pub max_request_bytes: usize,
    /// Most operations in one transaction (`--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Backend size at which the NOSPACE alarm goes off (`--quota-backend-bytes`).
    pub quota_backend_bytes: u64,
    /// Most watches one Watch stream may hold.
    pub max_watches_per_stream: usize,
    /// Responses buffered per Watch stream before the stream applies back-pressure.
    pub watch_stream_buffer_responses: usize,
    /// Events read from history per catch-up step of a watch.
    pub watch_catchup_batch_events: usize,
    /// Period of progress notifications for watches that asked for them.
    pub watch_progress_notify_interval_ms: u64,
    /// Bytes per message of the Snapshot stream.
    pub snapshot_chunk_bytes: usize,
    /// Concurrent requests served per client connection.
    pub max_concurrent_requests_per_connection: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            max_watches_per_stream: 10_000,
            watch_stream_buffer_responses: 1024,
            watch_catchup_batch_events: 1000,
            watch_progress_notify_interval_ms: 600_000,
            snapshot_chunk_bytes: 64 * 1024,
            max_concurrent_requests_per_connection: 1024,
        }
    }
}

/// gRPC overhead allowed on top of `max_request_bytes` at the transport, as
/// etcd does; the precise limit is then checked per request.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The etcd API, shared by every service.
#[derive(Clone)]
pub struct EtcdApi {
    inner: Arc<Inner>,
}

struct Inner {
    node: Arc<Node>,
    limits: ApiLimits,
    metrics: Arc<metrics::Metrics>,
    auth: auth::AuthRuntime,
}

pub(crate) const ALARM_NOSPACE: i32 = 1;
pub(crate) const ALARM_ACTIVATE: i32 = 1;
pub(crate) const ERR_REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";

impl EtcdApi {
    pub fn new(node: Arc<Node>, limits: ApiLimits, metrics: Arc<metrics::Metrics>) -> Self {
        Self::with_auth(node, limits, metrics, &auth::AuthSettings::default())
            .expect("the default auth settings are valid")
    }

    /// [`EtcdApi::new`] with auth settings (`--auth-token`, `--bcrypt-cost`);
    /// fails on a bad setting or an unreadable JWT key, naming it.
    pub fn with_auth(
        node: Arc<Node>,
        limits: ApiLimits,
        metrics: Arc<metrics::Metrics>,
        auth: &auth::AuthSettings,
    ) -> Result<Self, String> {
        let auth = auth::AuthRuntime::new(auth)?;
        // Simple tokens are installed (and invalidated) as this member
        // applies auth changes, whichever member proposed them.
        node.set_auth_observer(auth.token_observer());
        Ok(EtcdApi {
            inner: Arc::new(Inner {
                node,
                limits,
                metrics,
                auth,
            }),
        })
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.inner.node
    }
    pub(crate) fn limits(&self) -> &ApiLimits {
        &self.inner.limits
    }
    pub(crate) fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// The header every response carries.
    pub(crate) fn header(&self, revision: i64) -> PbResponseHeader {
        let node = self.node();
        PbResponseHeader {
            cluster_id: node.cluster_id(),
            member_id: node.id(),
            revision,
            raft_term: node.term(),
        }
    }

    pub(crate) fn current_header(&self) -> PbResponseHeader {
        self.header(self.node().store().current_revision())
    }

    pub(crate) fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        if encoded_len > self.limits().max_request_bytes {
            return Err(Status::invalid_argument(ERR_REQUEST_TOO_LARGE));
        }
        Ok(())
    }

    /// Refuse writes that add data while the NOSPACE alarm is on, raising it
    /// (through consensus, so every member refuses alike) when this member's
    /// backend has outgrown the quota.
    pub(crate) async fn check_quota(&self) -> Result<(), Status> {
        let store = self.node().store();
        let alarms = store
            .alarms()
            .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
        if alarms.iter().any(|(_, a)| *a == ALARM_NOSPACE) {
            return Err(mvcc::EtcdError::NoSpace.to_status());
        }
        if store.db_size_bytes() > self.limits().quota_backend_bytes {
            tracing::warn!(
                "backend exceeds quota_backend_bytes={}: raising NOSPACE",
                self.limits().quota_backend_bytes
            );
            let cmd = mvcc::Command::Alarm {
                action: ALARM_ACTIVATE,
                member_id: self.node().id(),
                alarm: ALARM_NOSPACE,
            };
            self.propose(cmd).await?;
            return Err(mvcc::EtcdError::NoSpace.to_status());
        }
        Ok(())
    }

    /// Serve a gRPC request that needs a linearizable view.
    pub(crate) async fn barrier(&self, serializable: bool) -> Result<(), Status> {
        // A serializable read is local, but a member that stopped for good
        // (removed, storage fault) must not serve even that: its data is stale.
        self.node().check_serving().map_err(node_status)?;
        if !serializable {
            self.node().read_barrier().await.map_err(node_status)?;
        }
        Ok(())
    }
}

pub(crate) fn node_status(e: NodeError) -> Status {
    status::node_status(&e)
}

/// Serve the etcd API on `listener` (plain TCP) until `shutdown` resolves.
pub async fn serve(
    api: EtcdApi,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_incoming(api, tls::incoming(listener, None), shutdown).await
}

/// Serve the etcd API on accepted connections, plain or TLS (the seam for a
/// client port: `tls::incoming(listener, Some(server_tls))` for an
/// `https://` listener; each connection's [`tls::ConnInfo`] — TLS or not,
/// the client certificate's CN — is in the requests' extensions).
pub async fn serve_incoming(
    api: EtcdApi,
    incoming: impl futures::Stream<Item = std::io::Result<tls::TlsOrPlain>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    use etcd_client::proto::{
        PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
    };
    use futures::StreamExt;
    let max = api.limits().max_request_bytes + GRPC_OVERHEAD_BYTES;
    let per_conn = api.limits().max_concurrent_requests_per_connection;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(per_conn)
        // Client-certificate CN as the user (auth.rs): before every service.
        .layer(tonic::service::InterceptorLayer::new(
            auth::cert_user_interceptor,
        ))
        // Each service behind `TokenCatchUp` (auth.rs): a simple token
        // issued by another member is known here once its entry is applied;
        // and `Metered` (grpc_metrics.rs): etcd's per-method gRPC series.
        .add_service(metered(
            &api,
            PbKvServer::new(api.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
        ))
        .add_service(metered(
            &api,
            PbWatchServer::new(api.clone()).max_decoding_message_size(max),
        ))
        .add_service(metered(
            &api,
            PbLeaseServer::new(api.clone()).max_decoding_message_size(max),
        ))
        .add_service(metered(
            &api,
            PbClusterServer::new(api.clone()).max_decoding_message_size(max),
        ))
        .add_service(metered(
            &api,
            PbMaintenanceServer::new(api.clone()).max_decoding_message_size(max),
        ))
        // Auth, Lock and Election services (auth.rs, lock.rs, election.rs).
        .add_service(metered(
            &api,
            pb::etcdserverpb::auth_server::AuthServer::new(api.clone())
                .max_decoding_message_size(max),
        ))
        .add_service(metered(
            &api,
            pb::v3lockpb::lock_server::LockServer::new(api.clone()).max_decoding_message_size(max),
        ))
        .add_service(metered(
            &api,
            pb::v3electionpb::election_server::ElectionServer::new(api.clone())
                .max_decoding_message_size(max),
        ))
        .serve_with_incoming_shutdown(
            // HTTP/1.1 beside gRPC on the same port (http1.rs): each
            // connection's first bytes, read after TLS termination, send
            // HTTP/2 (the preface) on to tonic, replayed, and serve anything
            // else as HTTP/1.1 (/health, /version, /metrics, /v3/... JSON).
            http1::split_incoming(api.clone(), incoming)
                .map(|c| c.map(authority_fix::AuthorityFix::new)),
            shutdown,
        )
        .await
}

/// A served gRPC service: metered, behind the token catch-up.
fn metered<S>(api: &EtcdApi, service: S) -> auth::TokenCatchUp<grpc_metrics::Metered<S>> {
    auth::TokenCatchUp::new(
        api.clone(),
        grpc_metrics::Metered::new(api.metrics().grpc().clone(), service),
    )
}

/// Member-internal connections waiting for the in-process server.
const INTERNAL_ACCEPT_QUEUE_CONNECTIONS: usize = 16;

/// A gRPC channel to this member's own etcd API that never leaves the
/// process: each connection is an in-memory pipe ([`tls::local_pair`])
/// served by [`serve_incoming`] like a network connection, with the same
/// services, limits and checks. It needs no TLS material and no password:
/// its requests act as the member itself (auth's `root` rights; see
/// `auth.rs`), which only code in this process can claim. For the member's
/// own services (alerting, scheduled backups, the store-backed gateway),
/// whatever the client listeners require (`https://` only,
/// `--client-cert-auth`, auth enabled). The server runs until every clone
/// of the channel is dropped.
pub fn internal_channel(api: EtcdApi) -> InternalChannel {
    let (tx, rx) = tokio::sync::mpsc::channel::<tls::TlsOrPlain>(INTERNAL_ACCEPT_QUEUE_CONNECTIONS);
    let incoming =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
        );
    tokio::spawn(async move {
        if let Err(e) = serve_incoming(api, incoming, std::future::pending()).await {
            tracing::warn!("member-internal etcd API stopped: {e}");
        }
    });
    // The URI only names the endpoint; the connector ignores it.
    etcd_client::Channel::Tonic(
        tonic::transport::Endpoint::from_static("http://member-internal.invalid")
            .connect_with_connector_lazy(LocalConnector { tx }),
    )
}

/// What [`internal_channel`] returns: for `etcd_client::Client::from_channel`.
pub type InternalChannel = etcd_client::Channel;

/// Opens member-internal connections for [`internal_channel`].
#[derive(Clone)]
struct LocalConnector {
    tx: tokio::sync::mpsc::Sender<tls::TlsOrPlain>,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for LocalConnector {
    type Response = hyper_util::rt::TokioIo<tokio::io::DuplexStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (client, server) = tls::local_pair();
            tx.send(server)
                .await
                .map_err(|_| std::io::Error::other("the member-internal etcd API has stopped"))?;
            Ok(hyper_util::rt::TokioIo::new(client))
        })
    }
}
