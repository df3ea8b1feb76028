//! The upstream HTTP client of a pool (hyper's pooled client) and the body
//! types that cross the proxy. Shared by pools, health checks and the proxy.
//!
//! The client's connector dials TCP and, for a pool with `tls`, does the TLS
//! handshake (CA, optional client certificate, SNI `server_name` or the
//! endpoint's IP) before handing the connection to hyper; ALPN offers
//! `http/1.1` (pool protocol `http1`) or `h2` (`h2c`, which over TLS is
//! plain HTTP/2). Requests keep `http://` URIs: the pool decides TLS.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{PoolConfig, UpstreamProtocol};

/// Boxed error type used for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type sent upstream and to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// Upstream HTTP client.
pub(crate) type UpstreamClient = Client<UpstreamConnector, ProxyBody>;

/// A pool's TLS, ready to connect (or the reason it cannot: the files
/// changed into something unusable after validation).
#[derive(Clone)]
struct UpstreamTls {
    connector: Result<tokio_rustls::TlsConnector, Arc<str>>,
    server_name: Option<ServerName<'static>>,
}

/// TCP, then TLS when the pool has `tls`.
#[derive(Clone)]
pub(crate) struct UpstreamConnector {
    http: HttpConnector,
    tls: Option<UpstreamTls>,
}

/// A connection to an endpoint.
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(s) => s.connected(),
            UpstreamStream::Tls(s) => {
                let (tcp, conn) = s.get_ref();
                let c = tcp.connected();
                if conn.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = tower_service::Service::<Uri>::call(&mut self.http, uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            let Some(tls) = tls else {
                return Ok(TokioIo::new(UpstreamStream::Plain(tcp)));
            };
            let connector = tls
                .connector
                .map_err(|e| -> BoxError { e.to_string().into() })?;
            let name = match tls.server_name {
                Some(n) => n,
                None => {
                    let host = uri
                        .host()
                        .unwrap_or_default()
                        .trim_matches(|c| c == '[' || c == ']');
                    ServerName::try_from(host.to_string())
                        .map_err(|e| -> BoxError { format!("endpoint {uri}: {e}").into() })?
                }
            };
            let s = connector
                .connect(name, tcp)
                .await
                .map_err(|e| -> BoxError {
                    format!("TLS handshake with endpoint {uri} failed: {e}").into()
                })?;
            Ok(TokioIo::new(UpstreamStream::Tls(Box::new(s))))
        })
    }
}

pub(crate) fn build_client(cfg: &PoolConfig) -> UpstreamClient {
    let mut conn = HttpConnector::new();
    conn.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
    conn.set_nodelay(true);
    conn.enforce_http(true);
    let tls = cfg.tls.as_ref().map(|t| {
        let alpn: &[&[u8]] = match cfg.protocol {
            UpstreamProtocol::Http1 => &[b"http/1.1"],
            UpstreamProtocol::H2c => &[b"h2"],
        };
        let connector = crate::tls::load_client_config(t, alpn)
            .map(tokio_rustls::TlsConnector::from)
            .map_err(|(field, reason)| {
                let msg = format!("pool `{}`: tls.{field}: {reason}", cfg.name);
                tracing::error!("{msg}");
                Arc::<str>::from(msg)
            });
        UpstreamTls {
            connector,
            server_name: t
                .server_name
                .as_deref()
                .and_then(|n| ServerName::try_from(n.to_string()).ok()),
        }
    });
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_millis(cfg.idle_connection_timeout_ms))
        .pool_max_idle_per_host(cfg.max_idle_connections_per_endpoint)
        .set_host(false);
    if cfg.protocol == UpstreamProtocol::H2c {
        b.http2_only(true);
    }
    b.build(UpstreamConnector { http: conn, tls })
}
