//! Listeners: accept loops for `http` (HTTP/1.1 + h2c), `https` (TLS with
//! ALPN h2/http1.1) and `tcp` (L4 proxy), plus connection tracking used for
//! graceful draining.
//!
//! ```text
//! Accepting ──stop (shutdown or listener removed)──▶ Draining: no accept;
//!     each HTTP connection finishes its in-flight requests (h1: closes after the
//!     current response; h2: GOAWAY) ──all closed or drain timeout──▶ Stopped
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::config::{ListenerConfig, ListenerProtocol};
use crate::endpoint::now_ms;
use crate::layers::outlier::{self, TryOutcome};
use crate::metrics::ListenerLabels;
use crate::proxy::{handle, ConnCtx, Shared};

/// Resolves once the watch value is `true` (or the sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Counts open connections; `wait_idle` resolves when none is left.
#[derive(Default)]
pub(crate) struct Tracker {
    n: AtomicUsize,
    idle: Notify,
}

pub(crate) struct TrackGuard(Arc<Tracker>);

impl Tracker {
    pub fn track(self: &Arc<Self>) -> TrackGuard {
        self.n.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.clone())
    }
    pub fn count(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }
    pub async fn wait_idle(&self) {
        loop {
            let n = self.idle.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            n.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A running listener.
pub(crate) struct ListenerHandle {
    pub cfg: Arc<RwLock<ListenerConfig>>,
    pub local_addr: SocketAddr,
    pub stop: watch::Sender<bool>,
}

/// Context handed to each accept loop.
#[derive(Clone)]
pub(crate) struct ServeCtx {
    pub shared: Arc<Shared>,
    pub tracker: Arc<Tracker>,
    pub hard_stop: watch::Receiver<bool>,
}

/// Bind a listener socket (synchronously, so errors surface before any change).
pub(crate) fn bind(cfg: &ListenerConfig) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(cfg.address)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Start the accept loop of a bound listener.
pub(crate) fn start(
    cfg: ListenerConfig,
    std_l: std::net::TcpListener,
    sc: ServeCtx,
) -> std::io::Result<ListenerHandle> {
    let l = TcpListener::from_std(std_l)?;
    let local_addr = l.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tls = match cfg.protocol {
        ListenerProtocol::Https => {
            let c = crate::tls::load_server_config(
                cfg.tls_cert_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
                cfg.tls_key_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
            )
            .map_err(std::io::Error::other)?;
            Some(tokio_rustls::TlsAcceptor::from(c))
        }
        _ => None,
    };
    let shared_cfg = Arc::new(RwLock::new(cfg));
    let handle = ListenerHandle {
        cfg: shared_cfg.clone(),
        local_addr,
        stop: stop_tx,
    };
    tokio::spawn(accept_loop(l, shared_cfg, tls, sc, stop_rx));
    Ok(handle)
}

async fn accept_loop(
    l: TcpListener,
    cfg: Arc<RwLock<ListenerConfig>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    sc: ServeCtx,
    mut stop: watch::Receiver<bool>,
) {
    let name = cfg.read().unwrap().name.clone();
    let labels = ListenerLabels {
        listener: name.clone(),
    };
    let open_g = sc
        .shared
        .metrics
        .listener_connections
        .get_or_create(&labels)
        .clone();
    let accepted = sc
        .shared
        .metrics
        .listener_accepted
        .get_or_create(&labels)
        .clone();
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            _ = crate::listener::stopped(&mut stop) => break,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    // EMFILE and friends: back off briefly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        let lcfg = cfg.read().unwrap().clone();
        if open.load(Ordering::Acquire) >= lcfg.max_connections {
            sc.shared
                .metrics
                .overload_rejections
                .get_or_create(&crate::metrics::PoolClassLabels {
                    pool: String::new(),
                    class: "connections".into(),
                })
                .inc();
            if lcfg.protocol == ListenerProtocol::Http {
                tokio::spawn(async move {
                    let mut s = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\ntoo many connections, try again\n",
                    )).await;
                    let _ = s.shutdown().await;
                });
            }
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        open_g.inc();
        let guard = sc.tracker.track();
        let sc2 = sc.clone();
        let stop2 = stop.clone();
        let open2 = open.clone();
        let open_g2 = open_g.clone();
        let tls2 = tls.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut hard = sc2.hard_stop.clone();
            let work = async {
                match lcfg.protocol {
                    ListenerProtocol::Http => {
                        serve_http(stream, &lcfg, ConnCtx { peer, tls: false }, &sc2, stop2).await
                    }
                    ListenerProtocol::Https => {
                        let acc = tls2.expect("tls acceptor");
                        let hs = tokio::time::timeout(
                            Duration::from_millis(lcfg.header_read_timeout_ms),
                            acc.accept(stream),
                        )
                        .await;
                        if let Ok(Ok(s)) = hs {
                            serve_http(s, &lcfg, ConnCtx { peer, tls: true }, &sc2, stop2).await
                        }
                    }
                    ListenerProtocol::Tcp => serve_tcp(stream, peer, &lcfg, &sc2).await,
                }
            };
            tokio::select! {
                _ = work => {}
                _ = crate::listener::stopped(&mut hard) => {}
            }
            open2.fetch_sub(1, Ordering::AcqRel);
            open_g2.dec();
        });
    }
}

async fn serve_http<I>(
    io: I,
    lcfg: &ListenerConfig,
    ctx: ConnCtx,
    sc: &ServeCtx,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(lcfg.header_read_timeout_ms))
        .max_buf_size(lcfg.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(lcfg.http2_max_concurrent_streams);
    let shared = sc.shared.clone();
    let svc = service_fn(move |req| handle(shared.clone(), ctx, req));
    let conn = b.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %ctx.peer, error = %e, "client connection error");
            }
        }
        _ = crate::listener::stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn serve_tcp(mut client: TcpStream, peer: SocketAddr, lcfg: &ListenerConfig, sc: &ServeCtx) {
    let rt = sc.shared.runtime();
    let Some(pool) = lcfg.pool.as_deref() else {
        return;
    };
    let Some(tiers) = rt.tiers_for(pool) else {
        return;
    };
    let key = crate::balance::hash64(peer.ip().to_string().as_bytes(), 0);
    let mut tried = Vec::new();
    let max_tries = 1 + tiers[0].cfg().endpoints.len().min(3);
    for _ in 0..max_tries {
        let Some(sel) = crate::pool::select(&tiers, key, &tried) else {
            return;
        };
        let ep = sel.endpoint.clone();
        tried.push(ep.clone());
        let pcfg = sel.pool.cfg();
        let t = Duration::from_millis(lcfg.tcp_connect_timeout_ms.min(pcfg.connect_timeout_ms));
        let peers = sel.pool.members();
        let has_hc = pcfg.health_check.is_some();
        match tokio::time::timeout(t, TcpStream::connect(ep.addr)).await {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                outlier::record(
                    &pcfg.outlier_detection,
                    has_hc,
                    &ep,
                    &peers,
                    TryOutcome::Success,
                );
                let _inflight = ep.start_request();
                ep.record_outcome("2xx");
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                return;
            }
            _ => {
                ep.record_outcome("connect_error");
                outlier::record(
                    &pcfg.outlier_detection,
                    has_hc,
                    &ep,
                    &peers,
                    TryOutcome::ConnectFailure,
                );
                let _ = now_ms();
            }
        }
    }
}
