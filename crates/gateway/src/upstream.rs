//! The upstream HTTP client of a pool (hyper's pooled client) and the body
//! types that cross the proxy. Shared by pools, health checks and the proxy.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{PoolConfig, UpstreamProtocol};

/// Boxed error type used for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type sent upstream and to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// Upstream HTTP client.
pub(crate) type UpstreamClient = Client<HttpConnector, ProxyBody>;

pub(crate) fn build_client(cfg: &PoolConfig) -> UpstreamClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
    conn.set_nodelay(true);
    conn.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(cfg.idle_connection_timeout_ms))
        .pool_max_idle_per_host(cfg.max_idle_connections_per_endpoint)
        .set_host(false);
    if cfg.protocol == UpstreamProtocol::H2c {
        b.http2_only(true);
    }
    b.build(conn)
}
