//! Raw unary gRPC calls to a member with an optional auth `token` metadata
//! entry (what etcd clients send), for the auth tests that need to choose
//! the member and the token of each call.

use etcd_client::proto::PbRangeRequest;

pub const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";
pub const RANGE: &str = "/etcdserverpb.KV/Range";
pub const PUT: &str = "/etcdserverpb.KV/Put";

/// One unary call to `url` (a new connection).
pub async fn call<Req, Resp>(
    url: &str,
    path: &'static str,
    req: Req,
    token: Option<&str>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    call_on(ch, path, req, token).await
}

/// One unary call on an open channel.
pub async fn call_on<Req, Resp>(
    ch: tonic::transport::Channel,
    path: &'static str,
    req: Req,
    token: Option<&str>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut r = tonic::Request::new(req);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(r, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(|r| r.into_inner())
}

/// A Range of one key.
pub fn range(key: &str) -> PbRangeRequest {
    PbRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}
