//! HTTP/1.1 beside HTTP/2 gRPC on the client port, as etcd serves it.
//!
//! [`split_incoming`] looks at the first bytes of every accepted connection
//! (after TLS termination): the HTTP/2 connection preface (`PRI * HTTP/2.0`)
//! goes to the gRPC server with the sniffed bytes replayed ([`Rewind`]);
//! anything else is served here as HTTP/1.1:
//!
//! * `GET /health` — `{"health":"true","reason":""}` (503 and `"false"` with
//!   a reason when this member cannot serve a linearizable read);
//! * `GET /version` — `{"etcdserver":"3.4.0","etcdcluster":"3.4.0","phalanx":"<version>"}`:
//!   the etcd API version Phalanx implements, and its own version in a
//!   field of its own;
//! * `GET /metrics` — Prometheus text, as on the metrics listener;
//! * `POST /v3/...` (and `/v3beta/...`) — etcd's gRPC-gateway JSON API:
//!   kv/range, kv/put, kv/deleterange, kv/txn, kv/compaction, lease/grant,
//!   lease/revoke, lease/timetolive, lease/leases, watch (a streamed
//!   response, one `{"result":{...}}` per line), cluster/member/list,
//!   maintenance/status, auth/authenticate, auth/status. etcd's JSON
//!   mapping: proto field names, 64-bit integers as strings, bytes as
//!   base64, defaults omitted, enums by name. Requests go through the same
//!   service code as gRPC (limits, auth checks): the token is the
//!   `Authorization` header, as with etcd's gateway. Errors are
//!   `{"error","message","code"}` with etcd's (grpc-gateway v1's) HTTP status.
//!
//! Bounds: request bodies at `max_request_bytes`, at most
//! [`MAX_HTTP1_CONNECTIONS`] HTTP/1.1 connections, [`SNIFF_TIMEOUT`] to send
//! the first bytes.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use etcd_client::proto::*;
use futures::{Stream, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, StatusCode};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tonic::metadata::MetadataMap;
use tonic::transport::server::Connected;

use crate::EtcdApi;

/// Most HTTP/1.1 connections served at once per listener.
pub const MAX_HTTP1_CONNECTIONS: usize = 1024;
/// Time a new connection has to send its first bytes.
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections sniffed but not yet taken by the gRPC server.
const GRPC_QUEUE: usize = 128;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The etcd API version reported on `/version` (see also
/// `maintenance::REPORTED_VERSION`, reported by Status).
pub const ETCD_VERSION: &str = crate::maintenance::REPORTED_VERSION;
/// etcd's cluster version field: the API level every member speaks.
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// A connection whose first bytes were read, replayed before the rest.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for Rewind<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Whether `buf` (at least one byte) starts like the HTTP/2 preface.
fn is_h2(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}

/// Sniff each accepted connection: HTTP/2 goes on (rewound) to the gRPC
/// server, HTTP/1.1 is served here. See the module docs.
pub fn split_incoming<S>(
    api: EtcdApi,
    incoming: impl Stream<Item = io::Result<S>> + Send + 'static,
) -> impl Stream<Item = io::Result<Rewind<S>>> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Rewind<S>>>(GRPC_QUEUE);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP1_CONNECTIONS));
    tokio::spawn(async move {
        let mut incoming = Box::pin(incoming);
        while let Some(conn) = incoming.next().await {
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let tx = tx.clone();
            let api = api.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                // Read until HTTP/2 vs HTTP/1 is decided: one byte tells
                // unless it is 'P' (the preface, or an HTTP/1 PATCH/POST/PUT).
                let mut buf = Vec::with_capacity(H2_PREFACE.len());
                let mut chunk = [0u8; 24];
                let decided = tokio::time::timeout(SNIFF_TIMEOUT, async {
                    loop {
                        let n = conn.read(&mut chunk).await?;
                        if n == 0 {
                            return Ok::<_, io::Error>(None);
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if !is_h2(&buf) {
                            return Ok(Some(false));
                        }
                        if buf.len() >= 4 {
                            // "PRI " is no HTTP/1.1 method.
                            return Ok(Some(true));
                        }
                    }
                })
                .await;
                let h2 = match decided {
                    Ok(Ok(Some(h2))) => h2,
                    _ => return, // closed, failed or silent: drop it
                };
                let conn = Rewind {
                    prefix: Bytes::from(buf),
                    inner: conn,
                };
                if h2 {
                    let _ = tx.send(Ok(conn)).await;
                    return;
                }
                let Ok(_slot) = slots.try_acquire_owned() else {
                    tracing::warn!(
                        "refusing an HTTP/1.1 connection: {MAX_HTTP1_CONNECTIONS} already open"
                    );
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(handle(api, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await
                {
                    tracing::debug!("HTTP/1.1 connection ended: {e}");
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()).boxed_unsync())
        .expect("static response parts are valid")
}

fn json_reply(status: StatusCode, v: &Value) -> hyper::Response<Body> {
    full(status, "application/json", v.to_string())
}

/// grpc-gateway v1's HTTP status for a gRPC code (etcd 3.4's gateway).
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::Cancelled => StatusCode::REQUEST_TIMEOUT,
        C::InvalidArgument | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted => StatusCode::CONFLICT,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::Unknown | C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_reply(st: &tonic::Status) -> hyper::Response<Body> {
    json_reply(
        http_status(st.code()),
        &json!({"error": st.message(), "message": st.message(), "code": st.code() as i32}),
    )
}

fn bad_request(msg: impl Into<String>) -> tonic::Status {
    tonic::Status::invalid_argument(msg.into())
}

async fn handle(api: EtcdApi, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
    let path = req.uri().path().to_string();
    let path = match path.strip_prefix("/v3beta/") {
        Some(rest) => format!("/v3/{rest}"),
        None => path,
    };
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => {
            let node = api.node();
            if let Some(f) = node.fatal() {
                return json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"health": "false", "reason": f.to_string()}),
                );
            }
            let r = tokio::time::timeout(
                Duration::from_millis(crate::admin::HEALTH_READ_TIMEOUT_MS),
                node.read_barrier(),
            )
            .await;
            match r {
                Ok(Ok(())) => json_reply(StatusCode::OK, &json!({"health": "true", "reason": ""})),
                Ok(Err(e)) => json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"health": "false", "reason": e.to_string()}),
                ),
                Err(_) => json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"health": "false", "reason": "timed out"}),
                ),
            }
        }
        (&Method::GET, "/version") => json_reply(
            StatusCode::OK,
            &json!({
                "etcdserver": ETCD_VERSION,
                "etcdcluster": ETCD_CLUSTER_VERSION,
                "phalanx": env!("CARGO_PKG_VERSION"),
            }),
        ),
        (&Method::GET, "/metrics") => full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            api.metrics().render(api.node()),
        ),
        (&Method::POST, p) if p.starts_with("/v3/") => {
            let p = p.to_string();
            match gateway(&api, &p, req).await {
                Ok(r) => r,
                Err(st) => error_reply(&st),
            }
        }
        _ => full(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n"),
    }
}

/// The caller's token, as gRPC metadata (`authorization`, as etcd's gateway forwards it).
fn metadata(req: &hyper::Request<Incoming>) -> MetadataMap {
    let mut md = MetadataMap::new();
    if let Some(v) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        if let Ok(v) = v.parse() {
            md.insert("authorization", v);
        }
    }
    md
}

fn request<T>(md: &MetadataMap, msg: T) -> tonic::Request<T> {
    tonic::Request::from_parts(md.clone(), Default::default(), msg)
}

async fn gateway(
    api: &EtcdApi,
    path: &str,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Body>, tonic::Status> {
    use crate::pb::etcdserverpb::auth_server::Auth;
    let md = metadata(&req);
    // A simple token from another member may be in an entry not applied here yet.
    api.catch_up_token(md.get("authorization").and_then(|v| v.to_str().ok()))
        .await;
    let limit = api.limits().max_request_bytes;
    let body = http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|_| tonic::Status::invalid_argument(crate::ERR_REQUEST_TOO_LARGE))?
        .to_bytes();
    let v: Value = if body.iter().all(|b| b.is_ascii_whitespace()) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))?
    };
    if !v.is_object() {
        return Err(bad_request("the JSON body must be an object"));
    }
    let ok = |v: Value| Ok(json_reply(StatusCode::OK, &v));
    match path {
        "/v3/kv/range" => {
            let r = PbKvService::range(api, request(&md, range_req(&v)?)).await?;
            ok(range_resp(r.get_ref()))
        }
        "/v3/kv/put" => {
            let r = PbKvService::put(api, request(&md, put_req(&v)?)).await?;
            let r = r.get_ref();
            ok(obj([
                ("header", header(&r.header)),
                ("prev_kv", opt_kv(&r.prev_kv)),
            ]))
        }
        "/v3/kv/deleterange" => {
            let r = PbKvService::delete_range(api, request(&md, delete_req(&v)?)).await?;
            ok(delete_resp(r.get_ref()))
        }
        "/v3/kv/txn" => {
            let r = PbKvService::txn(api, request(&md, txn_req(&v, 0)?)).await?;
            ok(txn_resp(r.get_ref()))
        }
        "/v3/kv/compaction" => {
            let req = PbCompactionRequest {
                revision: i64_of(&v, "revision")?,
                physical: bool_of(&v, "physical"),
            };
            let r = PbKvService::compact(api, request(&md, req)).await?;
            ok(obj([("header", header(&r.get_ref().header))]))
        }
        "/v3/lease/grant" => {
            let req = PbLeaseGrantRequest {
                ttl: i64_of(&v, "TTL")?,
                id: i64_of(&v, "ID")?,
            };
            let r = PbLeaseService::lease_grant(api, request(&md, req)).await?;
            let r = r.get_ref();
            ok(obj([
                ("header", header(&r.header)),
                ("ID", int(r.id)),
                ("TTL", int(r.ttl)),
                ("error", string(&r.error)),
            ]))
        }
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => {
            let req = PbLeaseRevokeRequest {
                id: i64_of(&v, "ID")?,
            };
            let r = PbLeaseService::lease_revoke(api, request(&md, req)).await?;
            ok(obj([("header", header(&r.get_ref().header))]))
        }
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => {
            let req = PbLeaseTimeToLiveRequest {
                id: i64_of(&v, "ID")?,
                keys: bool_of(&v, "keys"),
            };
            let r = PbLeaseService::lease_time_to_live(api, request(&md, req)).await?;
            let r = r.get_ref();
            ok(obj([
                ("header", header(&r.header)),
                ("ID", int(r.id)),
                ("TTL", int(r.ttl)),
                ("grantedTTL", int(r.granted_ttl)),
                ("keys", list(r.keys.iter().map(|k| bytes_v(k)).collect())),
            ]))
        }
        "/v3/lease/leases" | "/v3/kv/lease/leases" => {
            let r =
                PbLeaseService::lease_leases(api, request(&md, PbLeaseLeasesRequest {})).await?;
            let r = r.get_ref();
            ok(obj([
                ("header", header(&r.header)),
                (
                    "leases",
                    list(r.leases.iter().map(|l| obj([("ID", int(l.id))])).collect()),
                ),
            ]))
        }
        "/v3/cluster/member/list" => {
            let req = PbMemberListRequest {
                linearizable: bool_of(&v, "linearizable"),
            };
            let r = PbClusterService::member_list(api, request(&md, req)).await?;
            let r = r.get_ref();
            let members = r
                .members
                .iter()
                .map(|m| {
                    obj([
                        ("ID", uint(m.id)),
                        ("name", string(&m.name)),
                        (
                            "peerURLs",
                            list(m.peer_ur_ls.iter().map(|u| json!(u)).collect()),
                        ),
                        (
                            "clientURLs",
                            list(m.client_ur_ls.iter().map(|u| json!(u)).collect()),
                        ),
                        ("isLearner", boolean(m.is_learner)),
                    ])
                })
                .collect();
            ok(obj([
                ("header", header(&r.header)),
                ("members", list(members)),
            ]))
        }
        "/v3/maintenance/status" => {
            let r = PbMaintenanceService::status(api, request(&md, PbStatusRequest {})).await?;
            let r = r.get_ref();
            ok(obj([
                ("header", header(&r.header)),
                ("version", string(&r.version)),
                ("dbSize", int(r.db_size)),
                ("leader", uint(r.leader)),
                ("raftIndex", uint(r.raft_index)),
                ("raftTerm", uint(r.raft_term)),
                ("raftAppliedIndex", uint(r.raft_applied_index)),
                ("errors", list(r.errors.iter().map(|e| json!(e)).collect())),
                ("dbSizeInUse", int(r.db_size_in_use)),
                ("isLearner", boolean(r.is_learner)),
            ]))
        }
        "/v3/auth/authenticate" => {
            let req = crate::pb::etcdserverpb::AuthenticateRequest {
                name: str_of(&v, "name")?,
                password: str_of(&v, "password")?,
            };
            let r = Auth::authenticate(api, request(&md, req)).await?;
            let r = r.get_ref();
            ok(obj([
                ("header", header(&r.header)),
                ("token", string(&r.token)),
            ]))
        }
        "/v3/auth/status" => {
            let r = Auth::auth_status(
                api,
                request(&md, crate::pb::etcdserverpb::AuthStatusRequest {}),
            )
            .await?;
            let r = r.get_ref();
            ok(obj([
                ("header", header(&r.header)),
                ("enabled", boolean(r.enabled)),
                ("authRevision", uint(r.auth_revision)),
            ]))
        }
        "/v3/watch" => watch(api, md, &v),
        _ => Err(tonic::Status::not_found(format!(
            "no JSON gateway route {path}"
        ))),
    }
}

/// `POST /v3/watch` with `{"create_request": {...}}`: a chunked response,
/// one `{"result": WatchResponse}` per line, until the client goes away.
fn watch(
    api: &EtcdApi,
    md: MetadataMap,
    v: &Value,
) -> Result<hyper::Response<Body>, tonic::Status> {
    let c = v
        .get("create_request")
        .ok_or_else(|| bad_request("the JSON gateway's watch takes a create_request"))?;
    let mut opts = etcd_client::WatchOptions::new()
        .with_start_revision(i64_of(c, "start_revision")?)
        .with_watch_id(i64_of(c, "watch_id")?);
    let end = bytes_of(c, "range_end")?;
    if !end.is_empty() {
        opts = opts.with_range(end);
    }
    if bool_of(c, "prev_kv") {
        opts = opts.with_prev_key();
    }
    if bool_of(c, "progress_notify") {
        opts = opts.with_progress_notify();
    }
    let mut filters = Vec::new();
    if let Some(fs) = c.get("filters").and_then(Value::as_array) {
        for f in fs {
            filters.push(match f {
                Value::String(s) if s == "NOPUT" => etcd_client::WatchFilterType::NoPut,
                Value::String(s) if s == "NODELETE" => etcd_client::WatchFilterType::NoDelete,
                Value::Number(n) if n.as_i64() == Some(0) => etcd_client::WatchFilterType::NoPut,
                Value::Number(n) if n.as_i64() == Some(1) => etcd_client::WatchFilterType::NoDelete,
                other => return Err(bad_request(format!("invalid watch filter {other}"))),
            });
        }
    }
    if !filters.is_empty() {
        opts = opts.with_filters(filters);
    }
    let mut req: PbWatchRequest = opts.into();
    if let Some(PbWatchRequestUnion::CreateRequest(cr)) = req.request_union.as_mut() {
        cr.key = bytes_of(c, "key")?;
    }
    // One request, then wait: the session ends when the client goes away.
    let input =
        futures::stream::once(futures::future::ready(Ok(req))).chain(futures::stream::pending());
    let responses = api.watch_session(md, Box::pin(input));
    let lines = responses.map(|r| {
        let v = match r {
            Ok(w) => json!({ "result": watch_resp(&w) }),
            Err(st) => json!({"error": {"grpc_code": st.code() as i32, "http_code": http_status(st.code()).as_u16(), "message": st.message(), "http_status": http_status(st.code()).canonical_reason().unwrap_or("")}}),
        };
        let mut line = v.to_string();
        line.push('\n');
        Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
    });
    Ok(hyper::Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(StreamBody::new(lines)))
        .expect("static response parts are valid"))
}

// ---------------------------------------------------------------------------
// etcd's JSON mapping (grpc-gateway JSONPb, OrigName): field names as in the
// .proto, 64-bit integers as strings, bytes as base64, zero values omitted.
// ---------------------------------------------------------------------------

fn obj<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}
fn int(v: i64) -> Option<Value> {
    (v != 0).then(|| Value::String(v.to_string()))
}
fn uint(v: u64) -> Option<Value> {
    (v != 0).then(|| Value::String(v.to_string()))
}
fn boolean(v: bool) -> Option<Value> {
    v.then_some(Value::Bool(true))
}
fn string(v: &str) -> Option<Value> {
    (!v.is_empty()).then(|| Value::String(v.to_string()))
}
fn bytes_v(v: &[u8]) -> Value {
    Value::String(B64.encode(v))
}
fn bytes(v: &[u8]) -> Option<Value> {
    (!v.is_empty()).then(|| bytes_v(v))
}
fn list(v: Vec<Value>) -> Option<Value> {
    (!v.is_empty()).then_some(Value::Array(v))
}
fn header(h: &Option<PbResponseHeader>) -> Option<Value> {
    let h = h.as_ref()?;
    Some(obj([
        ("cluster_id", uint(h.cluster_id)),
        ("member_id", uint(h.member_id)),
        ("revision", int(h.revision)),
        ("raft_term", uint(h.raft_term)),
    ]))
}
fn kv(k: &PbKeyValue) -> Value {
    obj([
        ("key", bytes(&k.key)),
        ("create_revision", int(k.create_revision)),
        ("mod_revision", int(k.mod_revision)),
        ("version", int(k.version)),
        ("value", bytes(&k.value)),
        ("lease", int(k.lease)),
    ])
}
fn opt_kv(k: &Option<PbKeyValue>) -> Option<Value> {
    k.as_ref().map(kv)
}
fn kvs(v: &[PbKeyValue]) -> Option<Value> {
    list(v.iter().map(kv).collect())
}

fn range_resp(r: &PbRangeResponse) -> Value {
    obj([
        ("header", header(&r.header)),
        ("kvs", kvs(&r.kvs)),
        ("more", boolean(r.more)),
        ("count", int(r.count)),
    ])
}
fn delete_resp(r: &PbDeleteResponse) -> Value {
    obj([
        ("header", header(&r.header)),
        ("deleted", int(r.deleted)),
        ("prev_kvs", kvs(&r.prev_kvs)),
    ])
}
fn txn_resp(r: &PbTxnResponse) -> Value {
    let responses = r
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(PbTxnOpResponse::ResponseRange(x)) => json!({ "response_range": range_resp(x) }),
            Some(PbTxnOpResponse::ResponsePut(x)) => json!({
                "response_put": obj([("header", header(&x.header)), ("prev_kv", opt_kv(&x.prev_kv))])
            }),
            Some(PbTxnOpResponse::ResponseDeleteRange(x)) => {
                json!({ "response_delete_range": delete_resp(x) })
            }
            Some(PbTxnOpResponse::ResponseTxn(x)) => json!({ "response_txn": txn_resp(x) }),
            None => json!({}),
        })
        .collect();
    obj([
        ("header", header(&r.header)),
        ("succeeded", boolean(r.succeeded)),
        ("responses", list(responses)),
    ])
}
fn watch_resp(w: &PbWatchResponse) -> Value {
    let events = w
        .events
        .iter()
        .map(|e| {
            obj([
                (
                    "type",
                    (e.r#type == mvcc::consts::EVENT_DELETE).then(|| json!("DELETE")),
                ),
                ("kv", opt_kv(&e.kv)),
                ("prev_kv", opt_kv(&e.prev_kv)),
            ])
        })
        .collect();
    obj([
        ("header", header(&w.header)),
        ("watch_id", int(w.watch_id)),
        ("created", boolean(w.created)),
        ("canceled", boolean(w.canceled)),
        ("compact_revision", int(w.compact_revision)),
        ("cancel_reason", string(&w.cancel_reason)),
        ("fragment", boolean(w.fragment)),
        ("events", list(events)),
    ])
}

// --- reading requests: JSONPb accepts numbers or strings for 64-bit
// integers, enum names or numbers, and base64 for bytes.

fn i64_of(v: &Value, k: &str) -> Result<i64, tonic::Status> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| bad_request(format!("{k}: not a 64-bit integer"))),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| bad_request(format!("{k}: not a 64-bit integer: {s:?}"))),
        Some(other) => Err(bad_request(format!("{k}: not an integer: {other}"))),
    }
}
fn bool_of(v: &Value, k: &str) -> bool {
    matches!(v.get(k), Some(Value::Bool(true)))
}
fn str_of(v: &Value, k: &str) -> Result<String, tonic::Status> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad_request(format!("{k}: not a string: {other}"))),
    }
}
fn bytes_of(v: &Value, k: &str) -> Result<Vec<u8>, tonic::Status> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .map_err(|e| bad_request(format!("{k}: invalid base64: {e}"))),
        Some(other) => Err(bad_request(format!("{k}: not a base64 string: {other}"))),
    }
}
fn enum_of(v: &Value, k: &str, names: &[&str]) -> Result<i32, tonic::Status> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|&i| i >= 0 && (i as usize) < names.len())
            .map(|i| i as i32)
            .ok_or_else(|| bad_request(format!("{k}: invalid value {n}"))),
        Some(Value::String(s)) => names
            .iter()
            .position(|n| n == s)
            .map(|i| i as i32)
            .ok_or_else(|| bad_request(format!("{k}: invalid value {s:?}"))),
        Some(other) => Err(bad_request(format!("{k}: invalid value {other}"))),
    }
}

fn range_req(v: &Value) -> Result<PbRangeRequest, tonic::Status> {
    Ok(PbRangeRequest {
        key: bytes_of(v, "key")?,
        range_end: bytes_of(v, "range_end")?,
        limit: i64_of(v, "limit")?,
        revision: i64_of(v, "revision")?,
        sort_order: enum_of(v, "sort_order", &["NONE", "ASCEND", "DESCEND"])?,
        sort_target: enum_of(
            v,
            "sort_target",
            &["KEY", "VERSION", "CREATE", "MOD", "VALUE"],
        )?,
        serializable: bool_of(v, "serializable"),
        keys_only: bool_of(v, "keys_only"),
        count_only: bool_of(v, "count_only"),
        min_mod_revision: i64_of(v, "min_mod_revision")?,
        max_mod_revision: i64_of(v, "max_mod_revision")?,
        min_create_revision: i64_of(v, "min_create_revision")?,
        max_create_revision: i64_of(v, "max_create_revision")?,
    })
}
fn put_req(v: &Value) -> Result<PbPutRequest, tonic::Status> {
    Ok(PbPutRequest {
        key: bytes_of(v, "key")?,
        value: bytes_of(v, "value")?,
        lease: i64_of(v, "lease")?,
        prev_kv: bool_of(v, "prev_kv"),
        ignore_value: bool_of(v, "ignore_value"),
        ignore_lease: bool_of(v, "ignore_lease"),
    })
}
fn delete_req(v: &Value) -> Result<PbDeleteRequest, tonic::Status> {
    Ok(PbDeleteRequest {
        key: bytes_of(v, "key")?,
        range_end: bytes_of(v, "range_end")?,
        prev_kv: bool_of(v, "prev_kv"),
    })
}
/// Nesting bound for txns in JSON (etcd's max_txn_ops bounds the width).
const MAX_JSON_TXN_DEPTH: usize = 8;

fn txn_req(v: &Value, depth: usize) -> Result<PbTxnRequest, tonic::Status> {
    if depth > MAX_JSON_TXN_DEPTH {
        return Err(bad_request("txn nested too deeply"));
    }
    let arr = |k: &str| -> Vec<Value> {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut compare = Vec::new();
    for c in arr("compare") {
        let target = enum_of(
            &c,
            "target",
            &["VERSION", "CREATE", "MOD", "VALUE", "LEASE"],
        )?;
        let union = if c.get("version").is_some() {
            Some(PbTargetUnion::Version(i64_of(&c, "version")?))
        } else if c.get("create_revision").is_some() {
            Some(PbTargetUnion::CreateRevision(i64_of(
                &c,
                "create_revision",
            )?))
        } else if c.get("mod_revision").is_some() {
            Some(PbTargetUnion::ModRevision(i64_of(&c, "mod_revision")?))
        } else if c.get("value").is_some() {
            Some(PbTargetUnion::Value(bytes_of(&c, "value")?))
        } else if c.get("lease").is_some() {
            Some(PbTargetUnion::Lease(i64_of(&c, "lease")?))
        } else {
            // An absent oneof means the zero value of the target's type.
            Some(match target {
                0 => PbTargetUnion::Version(0),
                1 => PbTargetUnion::CreateRevision(0),
                2 => PbTargetUnion::ModRevision(0),
                3 => PbTargetUnion::Value(Vec::new()),
                _ => PbTargetUnion::Lease(0),
            })
        };
        compare.push(PbCompare {
            result: enum_of(&c, "result", &["EQUAL", "GREATER", "LESS", "NOT_EQUAL"])?,
            target,
            key: bytes_of(&c, "key")?,
            range_end: bytes_of(&c, "range_end")?,
            target_union: union,
        });
    }
    let ops = |k: &str| -> Result<Vec<PbTxnRequestOp>, tonic::Status> {
        arr(k)
            .iter()
            .map(|op| {
                let request = if let Some(r) = op.get("request_range") {
                    Some(PbTxnOpRequest::RequestRange(range_req(r)?))
                } else if let Some(r) = op.get("request_put") {
                    Some(PbTxnOpRequest::RequestPut(put_req(r)?))
                } else if let Some(r) = op.get("request_delete_range") {
                    Some(PbTxnOpRequest::RequestDeleteRange(delete_req(r)?))
                } else if let Some(r) = op.get("request_txn") {
                    Some(PbTxnOpRequest::RequestTxn(txn_req(r, depth + 1)?))
                } else {
                    None
                };
                Ok(PbTxnRequestOp { request })
            })
            .collect()
    };
    Ok(PbTxnRequest {
        compare,
        success: ops("success")?,
        failure: ops("failure")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_and_json_mapping() {
        assert!(is_h2(b"P"));
        assert!(is_h2(b"PRI "));
        assert!(!is_h2(b"POST /v3/kv/put HTTP/1.1"));
        assert!(!is_h2(b"GET /health"));
        let v = json!({"key": B64.encode("a"), "limit": "5", "sort_order": "DESCEND"});
        let r = range_req(&v).unwrap();
        assert_eq!((r.key.as_slice(), r.limit, r.sort_order), (&b"a"[..], 5, 2));
        let resp = range_resp(&PbRangeResponse {
            header: Some(PbResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            kvs: vec![PbKeyValue {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                create_revision: 7,
                ..Default::default()
            }],
            count: 1,
            ..Default::default()
        });
        assert_eq!(
            resp,
            json!({"header":{"revision":"7"},"kvs":[{"key":"YQ==","create_revision":"7","value":"MQ=="}],"count":"1"})
        );
    }
}
